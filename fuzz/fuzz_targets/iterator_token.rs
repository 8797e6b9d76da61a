//! Shard iterator tokens (`tributary-server` `iterator.rs`): what any client can send in
//! GetRecords. The input's first byte picks a mode (`tributary_fuzz::iterator_mode`).
//!
//! Asserts:
//! - any string decodes to `Ok` or an `ApiError`, never a panic, and a token that decodes is the
//!   one `encode` gives for its position (tokens are canonical: no second spelling is accepted);
//! - round trip: `decode(encode(p), now)` is `p` when `now - issued <= ttl`, else "expired";
//!   a token with one character changed, or one cut short, is refused;
//! - a correctly signed body of the wrong length or version is refused as malformed.
#![no_main]

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use tributary_fuzz::{iterator_mode, Cursor, ITERATOR_KEY, ITERATOR_NOW_MS, ITERATOR_TTL_MS};
use tributary_proto::v1::ErrorCode;
use tributary_server::iterator::{IteratorCodec, IteratorPosition};

/// `version u8 | stream u64 | shard u32 | log index u64 | slot u16 | issued i64`
const BODY_LEN: usize = 31;
const MAC_LEN: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let codec = IteratorCodec::new(
        ITERATOR_KEY.to_vec(),
        Duration::from_millis(ITERATOR_TTL_MS),
    );
    match mode % iterator_mode::COUNT {
        iterator_mode::TOKEN => {
            check_any_token(&codec, &String::from_utf8_lossy(rest), ITERATOR_NOW_MS);
        }
        iterator_mode::ROUND_TRIP => round_trip(rest),
        _ => signed_body(&codec, rest),
    }
});

fn check_any_token(codec: &IteratorCodec, token: &str, now_ms: i64) {
    match codec.decode(token, now_ms) {
        Ok(position) => assert_eq!(
            codec.encode(&position),
            token,
            "a token that is not the encoding of its position was accepted"
        ),
        Err(e) => assert!(
            matches!(
                e.code,
                ErrorCode::InvalidArgument | ErrorCode::ExpiredIterator
            ),
            "unexpected error code {:?}",
            e.code
        ),
    }
}

fn round_trip(rest: &[u8]) {
    let mut input = Cursor::new(rest);
    let position = IteratorPosition {
        stream_id: input.u64(),
        shard_index: input.u32(),
        log_index: input.u64(),
        slot: input.u16(),
        issued_at_ms: input.i64(),
    };
    let now_ms = input.i64();
    let ttl_ms = input.u64();
    let (cut_at, replacement) = (usize::from(input.u16()), input.u8());

    let codec = IteratorCodec::new(ITERATOR_KEY.to_vec(), Duration::from_millis(ttl_ms));
    let token = codec.encode(&position);
    let age = now_ms.saturating_sub(position.issued_at_ms);
    let ttl = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
    match codec.decode(&token, now_ms) {
        Ok(got) => {
            assert!(
                age <= ttl,
                "a token {age} ms old with a {ttl} ms lifetime was accepted"
            );
            assert_eq!(got, position);
        }
        Err(e) => {
            assert!(age > ttl, "a fresh token was refused: {}", e.message);
            assert_eq!(e.code, ErrorCode::ExpiredIterator, "{}", e.message);
        }
    }

    // One character changed (to another base64url character) must not verify.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut changed = token.clone().into_bytes();
    let at = cut_at % changed.len();
    changed[at] = alphabet[usize::from(replacement) % alphabet.len()];
    if changed != token.as_bytes() {
        let changed = String::from_utf8(changed).expect("base64url is ASCII");
        let result = codec.decode(&changed, position.issued_at_ms);
        assert!(
            result.is_err(),
            "token with character {at} changed was accepted"
        );
    }
    let cut = &token[..at];
    assert!(
        codec.decode(cut, position.issued_at_ms).is_err(),
        "a token cut to {at} characters was accepted"
    );
}

fn signed_body(codec: &IteratorCodec, body: &[u8]) {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(ITERATOR_KEY).expect("any key length");
    mac.update(body);
    let mut raw = body.to_vec();
    raw.extend_from_slice(&mac.finalize().into_bytes()[..MAC_LEN]);
    let token = URL_SAFE_NO_PAD.encode(&raw);
    let well_formed = body.len() == BODY_LEN && body.first() == Some(&1);
    match codec.decode(&token, ITERATOR_NOW_MS) {
        Ok(position) => {
            assert!(well_formed, "a {}-byte body was accepted", body.len());
            assert_eq!(codec.encode(&position), token);
        }
        Err(e) if e.code == ErrorCode::ExpiredIterator => assert!(well_formed),
        Err(e) => {
            assert!(
                !well_formed,
                "a well-formed signed body was refused: {}",
                e.message
            );
            assert_eq!(e.code, ErrorCode::InvalidArgument);
        }
    }
    check_any_token(codec, &token, ITERATOR_NOW_MS);
}
