//! Input limits shared by every API entry point. Each check returns an `ApiError` whose
//! message names the value, the limit and what is allowed.

use crate::error::ApiError;

/// Stream names are `[a-zA-Z0-9_.-]{1,128}` (Kinesis rule).
pub const STREAM_NAME_MAX: usize = 128;
/// Partition keys are 1–256 Unicode characters.
pub const PARTITION_KEY_MAX_CHARS: usize = 256;
/// Default largest record data (1 MiB).
pub const DEFAULT_MAX_RECORD_BYTES: u32 = 1024 * 1024;
/// Largest record data a stream may be configured for (10 MiB).
pub const MAX_RECORD_BYTES_LIMIT: u32 = 10 * 1024 * 1024;
/// PutRecords entries per call.
pub const PUT_RECORDS_MAX_ENTRIES: usize = 500;
/// PutRecords payload (data + partition keys) per call.
pub const PUT_RECORDS_MAX_BYTES: usize = 5 * 1024 * 1024;
/// GetRecords returns at most this many records.
pub const GET_RECORDS_MAX_LIMIT: u32 = 10_000;
/// GetRecords returns at most this many bytes of record data.
pub const GET_RECORDS_MAX_BYTES: usize = 10 * 1024 * 1024;
/// Default retention: 24 hours.
pub const DEFAULT_RETENTION_SECS: u64 = 24 * 3600;
/// Shortest retention: 1 minute (a self-hosted convenience; Kinesis's floor is 24 hours).
pub const MIN_RETENTION_SECS: u64 = 60;
/// Longest retention: 365 days.
pub const MAX_RETENTION_SECS: u64 = 365 * 24 * 3600;
/// Tags per stream.
pub const MAX_TAGS: usize = 50;
/// Tag key length in characters.
pub const TAG_KEY_MAX_CHARS: usize = 128;
/// Tag value length in characters.
pub const TAG_VALUE_MAX_CHARS: usize = 256;

/// Checks a stream name.
pub fn stream_name(name: &str) -> Result<(), ApiError> {
    resource_name("stream", name)
}

/// Checks an enhanced fan-out consumer name (the stream name rule).
pub fn consumer_name(name: &str) -> Result<(), ApiError> {
    resource_name("consumer", name)
}

/// Checks a consumer-group application name (the stream name rule).
pub fn application_name(name: &str) -> Result<(), ApiError> {
    resource_name("application", name)
}

/// Longest lease owner (worker id) in characters.
pub const LEASE_OWNER_MAX_CHARS: usize = 256;
/// Shortest lease duration.
pub const LEASE_MIN_MS: u64 = 500;
/// Longest lease duration.
pub const LEASE_MAX_MS: u64 = 600_000;

/// Checks a lease owner (worker id): 1-256 printable ASCII characters.
pub fn lease_owner(owner: &str) -> Result<(), ApiError> {
    if owner.is_empty() || owner.len() > LEASE_OWNER_MAX_CHARS {
        return Err(ApiError::invalid(format!(
            "lease owner is {} characters; it must be 1-{LEASE_OWNER_MAX_CHARS} printable ASCII characters",
            owner.chars().count()
        )));
    }
    if let Some(bad) = owner.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(ApiError::invalid(format!(
            "lease owner {owner:?} contains {bad:?}; only printable ASCII without spaces is allowed"
        )));
    }
    Ok(())
}

/// Checks a lease duration.
pub fn lease_ms(ms: u64) -> Result<u64, ApiError> {
    if !(LEASE_MIN_MS..=LEASE_MAX_MS).contains(&ms) {
        return Err(ApiError::invalid(format!(
            "lease duration {ms} ms is outside {LEASE_MIN_MS}-{LEASE_MAX_MS} ms"
        )));
    }
    Ok(ms)
}

/// `[a-zA-Z0-9_.-]{1,128}`, with `kind` naming the thing in the message.
fn resource_name(kind: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::invalid(format!(
            "{kind} name is empty; it must be 1-128 characters of [a-zA-Z0-9_.-]"
        )));
    }
    if name.len() > STREAM_NAME_MAX {
        return Err(ApiError::invalid(format!(
            "{kind} name is {} characters; the limit is {STREAM_NAME_MAX} characters of [a-zA-Z0-9_.-]",
            name.chars().count()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(ApiError::invalid(format!(
            "{kind} name {name:?} contains {bad:?}; only [a-zA-Z0-9_.-] is allowed"
        )));
    }
    Ok(())
}

/// Checks a partition key.
pub fn partition_key(key: &str) -> Result<(), ApiError> {
    let chars = key.chars().count();
    if chars == 0 {
        return Err(ApiError::invalid(
            "partition key is empty; it must be 1-256 characters",
        ));
    }
    if chars > PARTITION_KEY_MAX_CHARS {
        return Err(ApiError::invalid(format!(
            "partition key is {chars} characters; the limit is {PARTITION_KEY_MAX_CHARS}"
        )));
    }
    Ok(())
}

/// Parses an explicit hash key: a decimal integer in [0, 2^128 - 1].
pub fn explicit_hash_key(text: &str) -> Result<u128, ApiError> {
    if text.is_empty() || text.len() > 39 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::invalid(format!(
            "explicit hash key {text:?} is not a decimal integer between 0 and 2^128-1"
        )));
    }
    text.parse::<u128>().map_err(|_| {
        ApiError::invalid(format!(
            "explicit hash key {text} is above the largest hash key 2^128-1"
        ))
    })
}

/// Checks record data against the stream's limit.
pub fn record_data(len: usize, max: u32) -> Result<(), ApiError> {
    if len > max as usize {
        return Err(ApiError::invalid(format!(
            "record data is {len} bytes; this stream's limit is {max} bytes"
        )));
    }
    Ok(())
}

/// Checks a shard count for a new stream.
pub fn shard_count(count: u32, max: u32) -> Result<(), ApiError> {
    if count == 0 {
        return Err(ApiError::invalid(format!(
            "shard count is 0; it must be between 1 and {max}"
        )));
    }
    if count > max {
        return Err(ApiError::limit(format!(
            "shard count {count} is above this cluster's shard limit of {max}"
        )));
    }
    Ok(())
}

/// Resolves a requested retention in seconds (0 = default) and checks it; returns
/// milliseconds.
pub fn retention(seconds: u64, zero_is_default: bool) -> Result<u64, ApiError> {
    match seconds {
        0 if zero_is_default => Ok(DEFAULT_RETENTION_SECS * 1000),
        s if !(MIN_RETENTION_SECS..=MAX_RETENTION_SECS).contains(&s) => {
            Err(ApiError::invalid(format!(
                "retention is {s} seconds; it must be between {MIN_RETENTION_SECS} seconds (1 minute) and {MAX_RETENTION_SECS} seconds (365 days)"
            )))
        }
        s => Ok(s * 1000),
    }
}

/// Checks tags to add to a stream that already has `existing` (keys present in both are
/// overwritten, so they do not count twice).
pub fn tags(
    tags: &std::collections::HashMap<String, String>,
    existing: &std::collections::BTreeMap<String, String>,
) -> Result<(), ApiError> {
    for (key, value) in tags {
        tag_key(key)?;
        let chars = value.chars().count();
        if chars > TAG_VALUE_MAX_CHARS {
            return Err(ApiError::invalid(format!(
                "tag {key:?} has a value of {chars} characters; the limit is {TAG_VALUE_MAX_CHARS}"
            )));
        }
    }
    let total = existing.len() + tags.keys().filter(|k| !existing.contains_key(*k)).count();
    if total > MAX_TAGS {
        return Err(ApiError::limit(format!(
            "the stream would have {total} tags; the limit is {MAX_TAGS} per stream"
        )));
    }
    Ok(())
}

/// Checks a tag key.
pub fn tag_key(key: &str) -> Result<(), ApiError> {
    let chars = key.chars().count();
    if chars == 0 || chars > TAG_KEY_MAX_CHARS {
        return Err(ApiError::invalid(format!(
            "tag key {key:?} is {chars} characters; it must be 1-{TAG_KEY_MAX_CHARS}"
        )));
    }
    Ok(())
}

/// Resolves a requested record size limit (0 = default) and checks it.
pub fn max_record_bytes(bytes: u32) -> Result<u32, ApiError> {
    match bytes {
        0 => Ok(DEFAULT_MAX_RECORD_BYTES),
        b if b > MAX_RECORD_BYTES_LIMIT => Err(ApiError::invalid(format!(
            "max record size is {b} bytes; it must be at most {MAX_RECORD_BYTES_LIMIT} bytes (10 MiB)"
        ))),
        b => Ok(b),
    }
}

/// Longest long-poll wait a GetRecords may ask for, in milliseconds.
pub const GET_RECORDS_MAX_WAIT_MS: u32 = 10_000;

/// The long-poll wait of a GetRecords call (unset = 0 = no wait).
pub fn get_records_wait(wait_ms: Option<u32>) -> Result<std::time::Duration, ApiError> {
    match wait_ms.unwrap_or(0) {
        w if w > GET_RECORDS_MAX_WAIT_MS => Err(ApiError::invalid(format!(
            "wait_ms is {w}; GetRecords waits at most {GET_RECORDS_MAX_WAIT_MS} ms for new records"
        ))),
        w => Ok(std::time::Duration::from_millis(u64::from(w))),
    }
}

/// Resolves a GetRecords limit (0 = the maximum) and checks it.
pub fn get_records_limit(limit: u32) -> Result<u32, ApiError> {
    match limit {
        0 => Ok(GET_RECORDS_MAX_LIMIT),
        l if l > GET_RECORDS_MAX_LIMIT => Err(ApiError::invalid(format!(
            "limit is {l}; GetRecords returns at most {GET_RECORDS_MAX_LIMIT} records"
        ))),
        l => Ok(l),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names() {
        for ok in ["a", "orders_v2.prod-1", &"x".repeat(128)] {
            assert!(stream_name(ok).is_ok(), "{ok}");
        }
        for (bad, needle) in [
            ("", "empty"),
            ("a b", "' '"),
            ("ü", "'ü'"),
            (&"x".repeat(129), "limit is 128"),
        ] {
            let err = stream_name(bad).expect_err(bad).message;
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn partition_keys_count_characters_not_bytes() {
        assert!(partition_key(&"é".repeat(256)).is_ok());
        let err = partition_key(&"é".repeat(257))
            .expect_err("too long")
            .message;
        assert_eq!(err, "partition key is 257 characters; the limit is 256");
        assert!(partition_key("").is_err());
    }

    #[test]
    fn explicit_hash_keys() {
        assert_eq!(explicit_hash_key("0").ok(), Some(0));
        assert_eq!(
            explicit_hash_key(&u128::MAX.to_string()).ok(),
            Some(u128::MAX)
        );
        for bad in [
            "",
            "-1",
            "1e5",
            "abc",
            "340282366920938463463374607431768211456",
            " 1",
        ] {
            assert!(explicit_hash_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits() {
        assert!(shard_count(0, 10).is_err());
        assert_eq!(
            shard_count(11, 10).expect_err("over").code,
            tributary_proto::v1::ErrorCode::LimitExceeded
        );
        assert_eq!(retention(0, true).ok(), Some(24 * 3600 * 1000));
        assert!(retention(0, false).is_err());
        assert_eq!(retention(60, true).ok(), Some(60_000));
        let short = retention(59, true).expect_err("under a minute").message;
        assert!(short.contains("between 60 seconds (1 minute)"), "{short}");
        assert!(retention(365 * 24 * 3600 + 1, true).is_err());
        assert_eq!(max_record_bytes(0).ok(), Some(1 << 20));
        assert!(max_record_bytes(10 * 1024 * 1024 + 1).is_err());
        assert!(get_records_limit(10_001).is_err());
        assert!(record_data(1 << 20, 1 << 20).is_ok());
        assert!(record_data((1 << 20) + 1, 1 << 20).is_err());
    }

    #[test]
    fn tag_limits() {
        let mut existing = std::collections::BTreeMap::new();
        for i in 0..49 {
            existing.insert(format!("k{i}"), String::new());
        }
        let one = |k: &str, v: &str| std::iter::once((k.to_string(), v.to_string())).collect();
        assert!(tags(&one("k0", "overwrite"), &existing).is_ok());
        assert!(tags(&one("new", "v"), &existing).is_ok());
        existing.insert("k49".into(), String::new());
        let err = tags(&one("new", "v"), &existing).expect_err("51 tags");
        assert_eq!(err.code, tributary_proto::v1::ErrorCode::LimitExceeded);
        assert!(err.message.contains("limit is 50"), "{}", err.message);
        assert!(tags(&one("", "v"), &existing).is_err());
        assert!(tags(&one(&"k".repeat(129), "v"), &Default::default()).is_err());
        assert!(tags(&one("k", &"v".repeat(257)), &Default::default()).is_err());
    }
}
