//! Retention durations on the command line (`90m`, `24h`, `7d`) and in output.
//!
//! The server keeps retention in seconds, from 1 minute up to 365 days. The range is checked
//! here too, so a typo fails before anything is sent, with a message that names the limit.

use std::time::Duration;

/// Shortest retention the server accepts.
pub const MIN_RETENTION: Duration = Duration::from_secs(60);

/// Longest retention the server accepts: 365 days.
pub const MAX_RETENTION: Duration = Duration::from_secs(365 * DAY);

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// Parses a whole number with one unit — `s`, `m`, `h` or `d` — from 1m up to 365d.
pub fn parse_retention(input: &str) -> Result<Duration, String> {
    const ALLOWED: &str = "use a whole number of minutes, hours or days from 1m to 365d, e.g. \
                           90m, 24h or 7d";
    let text = input.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "retention '{input}' does not start with a number; {ALLOWED}"
        ));
    }
    let too_long = || format!("retention '{input}' is longer than the maximum of 365d");
    let number: u64 = number.parse().map_err(|_| too_long())?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => MINUTE,
        "h" => HOUR,
        "d" => DAY,
        "" => return Err(format!("retention '{input}' has no unit; {ALLOWED}")),
        _ => {
            return Err(format!(
                "retention '{input}' has an unknown unit '{unit}'; {ALLOWED}"
            ))
        }
    };
    let seconds = number.checked_mul(unit_seconds).ok_or_else(too_long)?;
    let retention = Duration::from_secs(seconds);
    if retention < MIN_RETENTION {
        return Err(format!(
            "retention '{input}' is shorter than the minimum of 1m"
        ));
    }
    if retention > MAX_RETENTION {
        return Err(too_long());
    }
    Ok(retention)
}

/// Renders a retention in its most natural unit: `1m`, `90m`, `36h`, `7d`. Whole days show
/// as days, except one day, which shows as `24h` (the default, as people say it).
pub fn format_retention(retention: Duration) -> String {
    let seconds = retention.as_secs();
    match seconds {
        0 => "0s".to_owned(),
        s if s.is_multiple_of(DAY) && s != DAY => format!("{}d", s / DAY),
        s if s.is_multiple_of(HOUR) => format!("{}h", s / HOUR),
        s if s.is_multiple_of(MINUTE) => format!("{}m", s / MINUTE),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_durations() {
        let cases = [
            ("1m", 60),
            ("90m", 90 * 60),
            ("60s", 60),
            ("1h", 3600),
            ("24h", 86_400),
            (" 48h ", 2 * 86_400),
            ("7d", 7 * 86_400),
            ("365d", 365 * 86_400),
            ("8760h", 365 * 86_400),
            ("525600m", 365 * 86_400),
        ];
        for (input, seconds) in cases {
            assert_eq!(
                parse_retention(input),
                Ok(Duration::from_secs(seconds)),
                "{input}"
            );
        }
    }

    #[test]
    fn rejected_durations_say_why() {
        let cases = [
            ("30s", "minimum of 1m"),
            ("59s", "minimum of 1m"),
            ("0m", "minimum of 1m"),
            ("0d", "minimum of 1m"),
            ("366d", "maximum of 365d"),
            ("8761h", "maximum of 365d"),
            ("99999999999999999999h", "maximum of 365d"),
            ("999999999999999999d", "maximum of 365d"),
            ("24", "no unit"),
            ("h", "does not start with a number"),
            ("", "does not start with a number"),
            ("-1h", "does not start with a number"),
            ("1.5h", "unknown unit"),
            ("3w", "unknown unit"),
            ("1h30m", "unknown unit"),
        ];
        for (input, expected) in cases {
            let error = parse_retention(input).expect_err(input);
            assert!(error.contains(expected), "{input}: {error}");
        }
    }

    #[test]
    fn retention_renders_in_its_most_natural_unit() {
        let cases = [
            (60, "1m"),
            (90 * 60, "90m"),
            (3600, "1h"),
            (86_400, "24h"),
            (36 * 3600, "36h"),
            (2 * 86_400, "2d"),
            (7 * 86_400, "7d"),
            (365 * 86_400, "365d"),
            (61, "61s"),
            (0, "0s"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(
                format_retention(Duration::from_secs(seconds)),
                expected,
                "{seconds}s"
            );
        }
    }

    #[test]
    fn rendered_retention_parses_back() {
        for seconds in [60, 5400, 3600, 86_400, 129_600, 604_800, 31_536_000, 61] {
            let retention = Duration::from_secs(seconds);
            assert_eq!(parse_retention(&format_retention(retention)), Ok(retention));
        }
    }
}
