//! Hooks for testing jetring itself and code that uses it (feature `testing`).
//!
//! [`encode_envelope`] runs the exact encoder that `publish` runs, without a bus, and
//! [`write_json`] the JSON serializer alone, so that fuzzers, property tests and benchmarks can
//! compare them with a reference.

use bytes::BytesMut;
use serde::Serialize;

use crate::envelope::{encode, format_timestamp};
use crate::json::EncodeError;

/// Encodes one event as `publish` would: returns its subject and its JSON envelope, with the
/// timestamp taken from `unix_millis` instead of the clock.
///
/// # Errors
///
/// The serializer's error when `body` cannot be represented as JSON (the event `publish`
/// would count as a `serialize` drop).
///
/// ```
/// let (subject, payload) =
///     jetring::testing::encode_envelope("event.1.", "quote", 0, Some("r-1"), &7).unwrap();
/// assert_eq!(subject, "event.1.quote");
/// assert_eq!(
///     payload,
///     br#"{"version":"v1","timestamp":"1970-01-01T00:00:00.000Z","requestId":"r-1","body":7}"#
/// );
/// ```
pub fn encode_envelope<T: Serialize + ?Sized>(
    subject_head: &str,
    name: &str,
    unix_millis: u64,
    request_id: Option<&str>,
    body: &T,
) -> Result<(String, Vec<u8>), EncodeError> {
    let mut buf = BytesMut::new();
    let timestamp = format_timestamp(unix_millis);
    let subject_len = encode(
        &mut buf,
        subject_head.as_bytes(),
        name,
        &timestamp,
        request_id,
        body,
    )?;

    let subject = String::from_utf8_lossy(&buf[..subject_len]).into_owned();
    Ok((subject, buf[subject_len..].to_vec()))
}

/// Appends `value` to `buf` as compact JSON, with the serializer `publish` uses for event
/// bodies. The bytes are those `serde_json::to_writer` writes for the same value.
///
/// # Errors
///
/// [`EncodeError`] where `serde_json` fails too: a map key that is not a string, a float key
/// that is not finite, or an error from the value's own `Serialize`. On error `buf` holds a
/// partial value.
///
/// ```
/// let mut buf = bytes::BytesMut::new();
/// jetring::testing::write_json(&mut buf, &serde_json::json!({"a": [1, "x\n"]})).unwrap();
/// assert_eq!(&buf[..], br#"{"a":[1,"x\n"]}"#);
/// ```
pub fn write_json<T: Serialize + ?Sized>(buf: &mut BytesMut, value: &T) -> Result<(), EncodeError> {
    crate::json::write(buf, value)
}
