//! Retention durations on the command line (`24h`, `7d`, `120m`).
//!
//! The server keeps retention in whole hours, so anything that is not a whole number of hours
//! is refused here rather than silently rounded.

/// Parses `Nh`, `Nd` or `Nm` (a multiple of 60) into whole hours, at least 1.
pub fn parse_retention_hours(input: &str) -> Result<u32, String> {
    const ALLOWED: &str = "use whole hours or days, e.g. 24h or 7d";
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
    let number: u64 = number
        .parse()
        .map_err(|_| format!("retention '{input}' is too large; {ALLOWED}"))?;
    let hours = match unit {
        "h" => number,
        "d" => number.saturating_mul(24),
        "m" if number.is_multiple_of(60) => number / 60,
        "m" => {
            return Err(format!(
                "retention '{input}' is not a whole number of hours; {ALLOWED}"
            ))
        }
        "" => return Err(format!("retention '{input}' has no unit; {ALLOWED}")),
        _ => {
            return Err(format!(
                "retention '{input}' has an unknown unit '{unit}'; {ALLOWED}"
            ))
        }
    };
    if hours == 0 {
        return Err(format!(
            "retention '{input}' is shorter than the minimum of 1h"
        ));
    }
    u32::try_from(hours).map_err(|_| format!("retention '{input}' is too large; {ALLOWED}"))
}

/// Renders whole hours the way `stream list` shows retention: `24h`.
pub fn format_retention_hours(hours: u32) -> String {
    format!("{hours}h")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_durations() {
        let cases = [
            ("1h", 1),
            ("24h", 24),
            ("7d", 168),
            ("120m", 2),
            ("60m", 1),
            (" 48h ", 48),
            ("8760h", 8760),
        ];
        for (input, hours) in cases {
            assert_eq!(parse_retention_hours(input), Ok(hours), "{input}");
        }
    }

    #[test]
    fn rejected_durations_say_why() {
        let cases = [
            ("90m", "not a whole number of hours"),
            ("30m", "not a whole number of hours"),
            ("0h", "minimum of 1h"),
            ("0d", "minimum of 1h"),
            ("24", "no unit"),
            ("h", "does not start with a number"),
            ("", "does not start with a number"),
            ("-1h", "does not start with a number"),
            ("1.5h", "unknown unit"),
            ("3w", "unknown unit"),
            ("10s", "unknown unit"),
            ("99999999999999999999h", "too large"),
            ("200000000d", "too large"),
        ];
        for (input, expected) in cases {
            let error = parse_retention_hours(input).expect_err(input);
            assert!(error.contains(expected), "{input}: {error}");
        }
    }

    #[test]
    fn retention_renders_in_hours() {
        assert_eq!(format_retention_hours(24), "24h");
        assert_eq!(format_retention_hours(168), "168h");
    }
}
