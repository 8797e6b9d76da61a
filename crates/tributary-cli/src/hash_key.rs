//! Hash keys on the command line: `put --explicit-hash-key` and `shard split --at`.

/// A decimal integer from 0 to 2^128 - 1, digits only (no sign, no `0x`).
pub fn parse_hash_key(input: &str) -> Result<u128, String> {
    match input.parse::<u128>() {
        Ok(key) if input.bytes().all(|b| b.is_ascii_digit()) => Ok(key),
        _ => Err(format!(
            "'{input}' is not a decimal integer from 0 to 340282366920938463463374607431768211455"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys_are_decimal_u128() {
        assert_eq!(parse_hash_key("0"), Ok(0));
        assert_eq!(parse_hash_key(&u128::MAX.to_string()), Ok(u128::MAX));
        for bad in [
            "",
            "-1",
            "+1",
            "0x10",
            " 1",
            "340282366920938463463374607431768211456",
        ] {
            assert!(parse_hash_key(bad).is_err(), "{bad}");
        }
    }
}
