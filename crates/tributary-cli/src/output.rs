//! How `trib` prints: aligned tables for people, one compact JSON object per line for scripts.
//!
//! The JSON field names are a public interface (DESIGN.md §4): snake_case, 128-bit integers
//! (hash keys, sequence numbers) as decimal strings so no JSON parser rounds them, timestamps
//! in RFC 3339, absent values as `null`.

use std::io::{self, Write};
use std::time::Duration;

use base64::Engine as _;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tributary_client::proto::v1::{
    Consumer, ConsumerStatus, NodeStatus, Record, Shard, StreamSummary,
};

use crate::duration::format_retention;

/// The `--output` formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns with a header row.
    Table,
    /// One compact JSON object per line.
    Json,
}

/// A stream as `stream list` / `stream describe` print it.
#[derive(Debug, Serialize)]
pub struct StreamView {
    pub stream_name: String,
    pub status: String,
    pub shard_count: u32,
    pub open_shard_count: u32,
    /// In its most natural unit: `90m`, `24h`, `7d`.
    pub retention: String,
    pub created_at: Option<String>,
    /// Registered enhanced fan-out consumers.
    pub consumer_count: u32,
    /// Only `stream describe` fills this in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<ShardView>>,
}

impl StreamView {
    pub fn new(summary: &StreamSummary) -> StreamView {
        StreamView {
            stream_name: summary.stream_name.clone(),
            status: summary.status().as_str_name().to_owned(),
            shard_count: summary.shard_count,
            open_shard_count: summary.open_shard_count,
            retention: format_retention(Duration::from_secs(summary.retention_seconds)),
            created_at: summary.created_at.as_ref().and_then(rfc3339),
            consumer_count: summary.consumer_count,
            shards: None,
        }
    }
}

/// A shard as `shard list` prints it.
#[derive(Debug, Serialize)]
pub struct ShardView {
    pub shard_id: String,
    pub status: String,
    pub starting_hash_key: String,
    pub ending_hash_key: String,
    pub starting_sequence_number: String,
    pub ending_sequence_number: Option<String>,
    pub parent_shard_id: Option<String>,
    pub adjacent_parent_shard_id: Option<String>,
    /// `None` (null) while the shard has no known leader.
    pub leader_node_id: Option<u64>,
}

impl ShardView {
    pub fn new(shard: &Shard) -> ShardView {
        ShardView {
            shard_id: shard.shard_id.clone(),
            status: shard.status().as_str_name().to_owned(),
            starting_hash_key: shard.starting_hash_key.clone(),
            ending_hash_key: shard.ending_hash_key.clone(),
            starting_sequence_number: shard.starting_sequence_number.clone(),
            ending_sequence_number: shard.ending_sequence_number.clone(),
            parent_shard_id: shard.parent_shard_id.clone(),
            adjacent_parent_shard_id: shard.adjacent_parent_shard_id.clone(),
            leader_node_id: (shard.leader_node_id != 0).then_some(shard.leader_node_id),
        }
    }
}

/// An enhanced fan-out consumer as `consumer list` / `consumer describe` print it.
#[derive(Debug, Serialize)]
pub struct ConsumerView {
    pub consumer_name: String,
    pub consumer_id: String,
    /// CREATING, ACTIVE or DELETING.
    pub status: String,
    pub created_at: Option<String>,
    pub stream_name: String,
}

impl ConsumerView {
    pub fn new(consumer: &Consumer) -> ConsumerView {
        let status = match consumer.status() {
            ConsumerStatus::ConsumerCreating => "CREATING",
            ConsumerStatus::ConsumerActive => "ACTIVE",
            ConsumerStatus::ConsumerDeleting => "DELETING",
            ConsumerStatus::Unspecified => "UNSPECIFIED",
        };
        ConsumerView {
            consumer_name: consumer.consumer_name.clone(),
            consumer_id: consumer.consumer_id.clone(),
            status: status.to_owned(),
            created_at: consumer.created_at.as_ref().and_then(rfc3339),
            stream_name: consumer.stream_name.clone(),
        }
    }
}

/// A node as `cluster status` prints it.
#[derive(Debug, Serialize)]
pub struct NodeView {
    pub node_id: u64,
    pub address: String,
    pub az: String,
    pub state: String,
    pub metadata_role: String,
    pub shard_replicas: u32,
    pub shard_leaders: u32,
}

impl NodeView {
    pub fn new(node: &NodeStatus) -> NodeView {
        NodeView {
            node_id: node.node_id,
            address: node.address.clone(),
            az: node.az.clone(),
            state: node.state.clone(),
            metadata_role: node.metadata_role.clone(),
            shard_replicas: node.shard_replicas,
            shard_leaders: node.shard_leaders,
        }
    }
}

/// A record as `get` prints it.
#[derive(Debug, Serialize)]
pub struct RecordView {
    pub shard_id: String,
    pub sequence_number: String,
    pub partition_key: String,
    /// Base64 (standard alphabet, padded).
    pub data: String,
    pub approximate_arrival_timestamp: Option<String>,
}

impl RecordView {
    pub fn new(shard_id: &str, record: &Record) -> RecordView {
        RecordView {
            shard_id: shard_id.to_owned(),
            sequence_number: record.sequence_number.clone(),
            partition_key: record.partition_key.clone(),
            data: base64::engine::general_purpose::STANDARD.encode(&record.data),
            approximate_arrival_timestamp: record
                .approximate_arrival_timestamp
                .as_ref()
                .and_then(rfc3339),
        }
    }
}

/// A tag as `stream tags` prints it.
#[derive(Debug, Serialize)]
pub struct TagView<'a> {
    pub key: &'a str,
    pub value: &'a str,
}

/// Where one `put` record landed.
#[derive(Debug, Serialize)]
pub struct PutResultView<'a> {
    pub shard_id: &'a str,
    pub sequence_number: &'a str,
}

/// Writes `value` as one compact JSON line.
pub fn write_json_line(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// The table-mode line of a record: `shard_id  sequence_number  partition_key  data`, with
/// data as text when it is printable UTF-8 and base64 otherwise.
pub fn record_line(shard_id: &str, record: &Record) -> String {
    format!(
        "{shard_id}  {}  {}  {}",
        record.sequence_number,
        record.partition_key,
        display_data(&record.data)
    )
}

/// Data as text when it is UTF-8 without control characters (which would break the
/// one-line-per-record layout or the terminal), base64 otherwise.
pub fn display_data(data: &[u8]) -> String {
    match std::str::from_utf8(data) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_owned(),
        _ => base64::engine::general_purpose::STANDARD.encode(data),
    }
}

/// RFC 3339 text of a protobuf timestamp; `None` when it is out of range.
pub fn rfc3339(timestamp: &prost_types::Timestamp) -> Option<String> {
    let nanos = i128::from(timestamp.seconds) * 1_000_000_000 + i128::from(timestamp.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// Columns padded to their widest cell, two spaces apart, under an upper-case header.
#[derive(Debug)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: Vec<&'static str>) -> Table {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header = self
            .header
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>();
        let mut text = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (index, cell) in row.iter().enumerate().take(columns) {
                if index + 1 == columns {
                    line.push_str(cell);
                } else {
                    let pad = widths[index].saturating_sub(cell.chars().count());
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad + 2));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// `-` for an absent value in a table cell.
pub fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}

pub fn streams_table(streams: &[StreamView]) -> Table {
    let mut table = Table::new(vec![
        "STREAM",
        "STATUS",
        "SHARDS",
        "OPEN_SHARDS",
        "RETENTION",
        "CONSUMERS",
        "CREATED_AT",
    ]);
    for stream in streams {
        table.push(vec![
            stream.stream_name.clone(),
            stream.status.clone(),
            stream.shard_count.to_string(),
            stream.open_shard_count.to_string(),
            stream.retention.clone(),
            stream.consumer_count.to_string(),
            or_dash(stream.created_at.as_ref()),
        ]);
    }
    table
}

pub fn tags_table(tags: &[TagView]) -> Table {
    let mut table = Table::new(vec!["KEY", "VALUE"]);
    for tag in tags {
        table.push(vec![tag.key.to_owned(), tag.value.to_owned()]);
    }
    table
}

pub fn shards_table(shards: &[ShardView]) -> Table {
    let mut table = Table::new(vec![
        "SHARD_ID",
        "STATUS",
        "LEADER",
        "STARTING_HASH_KEY",
        "ENDING_HASH_KEY",
        "STARTING_SEQUENCE_NUMBER",
        "ENDING_SEQUENCE_NUMBER",
        "PARENTS",
    ]);
    for shard in shards {
        let parents: Vec<&str> = [&shard.parent_shard_id, &shard.adjacent_parent_shard_id]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        table.push(vec![
            shard.shard_id.clone(),
            shard.status.clone(),
            or_dash(shard.leader_node_id),
            shard.starting_hash_key.clone(),
            shard.ending_hash_key.clone(),
            shard.starting_sequence_number.clone(),
            or_dash(shard.ending_sequence_number.as_ref()),
            if parents.is_empty() {
                "-".to_owned()
            } else {
                parents.join(",")
            },
        ]);
    }
    table
}

pub fn consumers_table(consumers: &[ConsumerView]) -> Table {
    let mut table = Table::new(vec![
        "CONSUMER",
        "STATUS",
        "CONSUMER_ID",
        "STREAM",
        "CREATED_AT",
    ]);
    for consumer in consumers {
        table.push(vec![
            consumer.consumer_name.clone(),
            consumer.status.clone(),
            consumer.consumer_id.clone(),
            consumer.stream_name.clone(),
            or_dash(consumer.created_at.as_ref()),
        ]);
    }
    table
}

pub fn nodes_table(nodes: &[NodeView]) -> Table {
    let mut table = Table::new(vec![
        "NODE_ID",
        "ADDRESS",
        "AZ",
        "STATE",
        "METADATA_ROLE",
        "SHARD_REPLICAS",
        "SHARD_LEADERS",
    ]);
    for node in nodes {
        table.push(vec![
            node.node_id.to_string(),
            node.address.clone(),
            node.az.clone(),
            node.state.clone(),
            node.metadata_role.clone(),
            node.shard_replicas.to_string(),
            node.shard_leaders.to_string(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use tributary_client::proto::v1::{ShardStatus, StreamStatus};

    fn json_of(value: &impl Serialize) -> Value {
        let mut line = Vec::new();
        write_json_line(&mut line, value).expect("writing to a Vec");
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        assert_eq!(line.last(), Some(&b'\n'));
        serde_json::from_slice(&line).expect("valid JSON")
    }

    #[test]
    fn record_json_has_exactly_the_documented_fields() {
        let record = Record {
            sequence_number: "340282366920938463463374607431768211455".into(),
            approximate_arrival_timestamp: Some(prost_types::Timestamp {
                seconds: 1_714_564_800,
                nanos: 250_000_000,
            }),
            data: tributary_client::Bytes::from_static(b"hello\n"),
            partition_key: "user-1".into(),
        };
        let value = json_of(&RecordView::new("shardId-000000000001", &record));
        assert_eq!(
            value,
            json!({
                "shard_id": "shardId-000000000001",
                "sequence_number": "340282366920938463463374607431768211455",
                "partition_key": "user-1",
                "data": "aGVsbG8K",
                "approximate_arrival_timestamp": "2024-05-01T12:00:00.25Z",
            })
        );
    }

    #[test]
    fn shard_json_has_exactly_the_documented_fields() {
        let mut shard = Shard {
            shard_id: "shardId-000000000000".into(),
            starting_hash_key: "0".into(),
            ending_hash_key: u128::MAX.to_string(),
            starting_sequence_number: "1".into(),
            ending_sequence_number: None,
            parent_shard_id: None,
            adjacent_parent_shard_id: None,
            leader_node_id: 2,
            last_sequence_number: Some("5".into()),
            ..Default::default()
        };
        shard.set_status(ShardStatus::Open);
        assert_eq!(
            json_of(&ShardView::new(&shard)),
            json!({
                "shard_id": "shardId-000000000000",
                "status": "OPEN",
                "starting_hash_key": "0",
                "ending_hash_key": "340282366920938463463374607431768211455",
                "starting_sequence_number": "1",
                "ending_sequence_number": null,
                "parent_shard_id": null,
                "adjacent_parent_shard_id": null,
                "leader_node_id": 2,
            })
        );
        shard.set_status(ShardStatus::Closed);
        shard.ending_sequence_number = Some("9".into());
        shard.parent_shard_id = Some("shardId-000000000007".into());
        shard.leader_node_id = 0;
        let value = json_of(&ShardView::new(&shard));
        assert_eq!(value["status"], "CLOSED");
        assert_eq!(value["ending_sequence_number"], "9");
        assert_eq!(value["parent_shard_id"], "shardId-000000000007");
        assert_eq!(value["leader_node_id"], Value::Null);
    }

    #[test]
    fn stream_json_has_exactly_the_documented_fields() {
        let mut summary = StreamSummary {
            stream_name: "orders".into(),
            shard_count: 4,
            open_shard_count: 4,
            retention_seconds: 86_400,
            consumer_count: 2,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_714_564_800,
                nanos: 0,
            }),
            ..Default::default()
        };
        summary.set_status(StreamStatus::Active);
        assert_eq!(
            json_of(&StreamView::new(&summary)),
            json!({
                "stream_name": "orders",
                "status": "ACTIVE",
                "shard_count": 4,
                "open_shard_count": 4,
                "retention": "24h",
                "created_at": "2024-05-01T12:00:00Z",
                "consumer_count": 2,
            })
        );
        summary.retention_seconds = 7 * 86_400;
        assert_eq!(json_of(&StreamView::new(&summary))["retention"], "7d");
    }

    #[test]
    fn consumer_json_has_exactly_the_documented_fields() {
        let mut consumer = Consumer {
            consumer_name: "audit".into(),
            consumer_id: "audit-1714564800".into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_714_564_800,
                nanos: 0,
            }),
            stream_name: "orders".into(),
            ..Default::default()
        };
        consumer.set_status(ConsumerStatus::ConsumerActive);
        assert_eq!(
            json_of(&ConsumerView::new(&consumer)),
            json!({
                "consumer_name": "audit",
                "consumer_id": "audit-1714564800",
                "status": "ACTIVE",
                "created_at": "2024-05-01T12:00:00Z",
                "stream_name": "orders",
            })
        );
        for (status, name) in [
            (ConsumerStatus::ConsumerCreating, "CREATING"),
            (ConsumerStatus::ConsumerDeleting, "DELETING"),
        ] {
            consumer.set_status(status);
            assert_eq!(json_of(&ConsumerView::new(&consumer))["status"], name);
        }
        consumer.created_at = None;
        assert_eq!(
            json_of(&ConsumerView::new(&consumer))["created_at"],
            Value::Null
        );
        assert_eq!(
            consumers_table(&[ConsumerView::new(&consumer)]).render(),
            "CONSUMER  STATUS    CONSUMER_ID       STREAM  CREATED_AT\n\
             audit     DELETING  audit-1714564800  orders  -\n"
        );
    }

    #[test]
    fn tag_json_is_key_and_value() {
        assert_eq!(
            json_of(&TagView {
                key: "team",
                value: "data"
            }),
            json!({"key": "team", "value": "data"})
        );
        let table = tags_table(&[TagView {
            key: "team",
            value: "data",
        }]);
        assert_eq!(table.render(), "KEY   VALUE\nteam  data\n");
    }

    #[test]
    fn node_json_has_exactly_the_documented_fields() {
        let node = NodeStatus {
            node_id: 1,
            address: "127.0.0.1:7101".into(),
            az: "az-a".into(),
            state: "up".into(),
            metadata_role: "leader".into(),
            shard_replicas: 3,
            shard_leaders: 1,
            quiet_shards: 2,
        };
        assert_eq!(
            json_of(&NodeView::new(&node)),
            json!({
                "node_id": 1,
                "address": "127.0.0.1:7101",
                "az": "az-a",
                "state": "up",
                "metadata_role": "leader",
                "shard_replicas": 3,
                "shard_leaders": 1,
            })
        );
    }

    #[test]
    fn data_prints_as_text_only_when_printable() {
        let cases: [(&[u8], &str); 5] = [
            (b"hello world", "hello world"),
            ("naïve ☃".as_bytes(), "naïve ☃"),
            (b"two\nlines", "dHdvCmxpbmVz"),
            (&[0xff, 0x00], "/wA="),
            (b"", ""),
        ];
        for (data, expected) in cases {
            assert_eq!(display_data(data), expected, "{data:?}");
        }
        let record = Record {
            sequence_number: "7".into(),
            partition_key: "k".into(),
            data: tributary_client::Bytes::from_static(b"v"),
            ..Default::default()
        };
        assert_eq!(record_line("shardId-1", &record), "shardId-1  7  k  v");
    }

    #[test]
    fn tables_align_columns_under_a_header() {
        let mut table = Table::new(vec!["A", "LONG_HEADER", "C"]);
        table.push(vec!["wide cell".into(), "x".into(), "last".into()]);
        table.push(vec!["y".into(), "z".into(), String::new()]);
        assert_eq!(
            table.render(),
            "A          LONG_HEADER  C\n\
             wide cell  x            last\n\
             y          z\n"
        );
    }
}
