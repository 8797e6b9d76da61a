//! Where a shard read starts: the typed form of `ShardIteratorType` plus its argument.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tributary_proto::v1::{
    GetShardIteratorRequest, ShardIteratorType, StartingPosition as WirePosition,
};

use crate::Error;

/// The position in a shard at which reading starts.
///
/// Parses from (and displays as) the CLI spellings `trim-horizon`, `latest`, `at:SEQ`,
/// `after:SEQ` and `time:RFC3339`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartingPosition {
    /// The oldest record still retained.
    TrimHorizon,
    /// Just after the newest record: only records written from now on.
    Latest,
    /// The record with this sequence number (decimal string).
    AtSequence(String),
    /// The record after this sequence number (decimal string).
    AfterSequence(String),
    /// The first record that arrived at or after this time.
    AtTimestamp(SystemTime),
}

impl StartingPosition {
    /// The wire form, as a `SubscribeToShard` request carries it.
    pub fn to_proto(&self) -> WirePosition {
        let mut position = WirePosition::default();
        let kind = match self {
            StartingPosition::TrimHorizon => ShardIteratorType::TrimHorizon,
            StartingPosition::Latest => ShardIteratorType::Latest,
            StartingPosition::AtSequence(sequence) => {
                position.sequence_number = Some(sequence.clone());
                ShardIteratorType::AtSequenceNumber
            }
            StartingPosition::AfterSequence(sequence) => {
                position.sequence_number = Some(sequence.clone());
                ShardIteratorType::AfterSequenceNumber
            }
            StartingPosition::AtTimestamp(at) => {
                position.timestamp = Some(prost_types::Timestamp::from(*at));
                ShardIteratorType::AtTimestamp
            }
        };
        position.set_type(kind);
        position
    }

    /// The `GetShardIterator` request that opens this position in `shard_id` of `stream`.
    pub fn to_request(&self, stream: &str, shard_id: &str) -> GetShardIteratorRequest {
        let position = self.to_proto();
        let mut request = GetShardIteratorRequest {
            stream_name: stream.to_owned(),
            shard_id: shard_id.to_owned(),
            starting_sequence_number: position.sequence_number.clone(),
            timestamp: position.timestamp,
            ..Default::default()
        };
        request.set_shard_iterator_type(position.r#type());
        request
    }
}

impl FromStr for StartingPosition {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        const ALLOWED: &str = "expected trim-horizon, latest, at:SEQUENCE, after:SEQUENCE \
                               or time:RFC3339 (e.g. time:2024-05-01T12:00:00Z)";
        let invalid = |why: String| Error::InvalidInput(format!("{why}; {ALLOWED}"));
        match input {
            "trim-horizon" => return Ok(StartingPosition::TrimHorizon),
            "latest" => return Ok(StartingPosition::Latest),
            _ => {}
        }
        let Some((kind, value)) = input.split_once(':') else {
            return Err(invalid(format!("unknown starting position '{input}'")));
        };
        match kind {
            "at" => parse_sequence(value)
                .map(StartingPosition::AtSequence)
                .map_err(invalid),
            "after" => parse_sequence(value)
                .map(StartingPosition::AfterSequence)
                .map_err(invalid),
            "time" => OffsetDateTime::parse(value, &Rfc3339)
                .map(|at| StartingPosition::AtTimestamp(at.into()))
                .map_err(|error| invalid(format!("'{value}' is not an RFC 3339 time: {error}"))),
            _ => Err(invalid(format!("unknown starting position '{input}'"))),
        }
    }
}

impl fmt::Display for StartingPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartingPosition::TrimHorizon => f.write_str("trim-horizon"),
            StartingPosition::Latest => f.write_str("latest"),
            StartingPosition::AtSequence(sequence) => write!(f, "at:{sequence}"),
            StartingPosition::AfterSequence(sequence) => write!(f, "after:{sequence}"),
            StartingPosition::AtTimestamp(at) => {
                let at = OffsetDateTime::from(*at);
                match at.format(&Rfc3339) {
                    Ok(text) => write!(f, "time:{text}"),
                    Err(_) => write!(f, "time:{}", at.unix_timestamp()),
                }
            }
        }
    }
}

/// A sequence number is a decimal 128-bit integer.
fn parse_sequence(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("the sequence number is missing".into());
    }
    if !value.bytes().all(|byte| byte.is_ascii_digit()) || value.parse::<u128>().is_err() {
        return Err(format!(
            "sequence number '{value}' is not a decimal integer below 2^128"
        ));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cli_spellings_parse() {
        let cases = [
            ("trim-horizon", StartingPosition::TrimHorizon),
            ("latest", StartingPosition::Latest),
            ("at:42", StartingPosition::AtSequence("42".into())),
            ("after:170141183460469231731687303715884105727", {
                StartingPosition::AfterSequence("170141183460469231731687303715884105727".into())
            }),
            (
                "time:2024-05-01T12:00:00Z",
                StartingPosition::AtTimestamp(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800),
                ),
            ),
            (
                "time:2024-05-01T14:00:00.5+02:00",
                StartingPosition::AtTimestamp(
                    SystemTime::UNIX_EPOCH + Duration::from_millis(1_714_564_800_500),
                ),
            ),
        ];
        for (input, expected) in cases {
            let parsed: StartingPosition = input.parse().expect(input);
            assert_eq!(parsed, expected, "{input}");
        }
    }

    #[test]
    fn bad_spellings_say_what_is_allowed() {
        for input in [
            "",
            "TRIM_HORIZON",
            "at:",
            "at:-1",
            "at:12a",
            "after:1e5",
            "at:999999999999999999999999999999999999999999",
            "time:yesterday",
            "time:2024-05-01",
            "seq:12",
        ] {
            let error = input.parse::<StartingPosition>().expect_err(input);
            let text = error.to_string();
            assert!(text.contains("trim-horizon, latest"), "{input}: {text}");
        }
    }

    #[test]
    fn display_round_trips() {
        for input in [
            "trim-horizon",
            "latest",
            "at:7",
            "after:8",
            "time:2024-05-01T12:00:00Z",
        ] {
            let parsed: StartingPosition = input.parse().expect(input);
            assert_eq!(parsed.to_string(), input);
        }
    }

    #[test]
    fn requests_carry_the_argument() {
        let request = StartingPosition::AfterSequence("9".into()).to_request("s", "shardId-1");
        assert_eq!(
            request.shard_iterator_type(),
            ShardIteratorType::AfterSequenceNumber
        );
        assert_eq!(request.starting_sequence_number.as_deref(), Some("9"));
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let request = StartingPosition::AtTimestamp(at).to_request("s", "shardId-1");
        assert_eq!(
            request.shard_iterator_type(),
            ShardIteratorType::AtTimestamp
        );
        assert_eq!(request.timestamp.map(|t| t.seconds), Some(10));
    }

    #[test]
    fn subscriptions_carry_the_same_position_as_iterators() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let cases = [
            (
                StartingPosition::TrimHorizon,
                ShardIteratorType::TrimHorizon,
            ),
            (StartingPosition::Latest, ShardIteratorType::Latest),
            (
                StartingPosition::AtSequence("7".into()),
                ShardIteratorType::AtSequenceNumber,
            ),
            (
                StartingPosition::AfterSequence("8".into()),
                ShardIteratorType::AfterSequenceNumber,
            ),
            (
                StartingPosition::AtTimestamp(at),
                ShardIteratorType::AtTimestamp,
            ),
        ];
        for (position, kind) in cases {
            let wire = position.to_proto();
            let request = position.to_request("s", "shardId-1");
            assert_eq!(wire.r#type(), kind, "{position}");
            assert_eq!(request.shard_iterator_type(), kind, "{position}");
            assert_eq!(wire.sequence_number, request.starting_sequence_number);
            assert_eq!(wire.timestamp, request.timestamp);
        }
    }
}
