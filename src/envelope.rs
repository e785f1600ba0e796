//! The wire format: subjects, timestamps and the JSON envelope.
//!
//! An event travels as one buffer holding its subject followed by its payload:
//!
//! ```text
//! event.1.priceEstimate{"version":"v1","timestamp":"2026-05-22T12:00:00.123Z","requestId":"…","body":{…}}
//! └──── subject ──────┘└──────────────────────────── payload ────────────────────────────────┘
//! ```
//!
//! The envelope keys are fixed and never need escaping, so they are copied as literal bytes;
//! only the request id and the body go through a JSON serializer. The timestamp is formatted
//! at most once per millisecond per thread (see [`Clock`]).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};

use crate::json::{self, EncodeError};

/// Longest event name accepted, in bytes. A longer name is dropped as `invalid_subject`.
pub const MAX_NAME_LEN: usize = 256;

/// Checks that `bytes` is a sequence of dot-separated subject tokens that a publisher may use:
/// not empty, no empty token, no white space or control characters, no `*` or `>` wildcard.
pub(crate) fn validate_subject_tokens(bytes: &[u8]) -> Result<(), &'static str> {
    if is_one_plain_token(bytes) {
        return Ok(());
    }
    if bytes.is_empty() {
        return Err("is empty");
    }

    let mut token_len = 0;
    let mut non_ascii = false;
    for &b in bytes {
        match b {
            b'.' if token_len == 0 => {
                return Err("has an empty token (a leading, trailing or double '.')")
            }
            b'.' => token_len = 0,
            b'*' | b'>' => return Err("contains a wildcard ('*' or '>')"),
            0..=b' ' | 0x7f => return Err("contains white space or a control character"),
            _ => {
                non_ascii |= b >= 0x80;
                token_len += 1;
            }
        }
    }
    if token_len == 0 {
        return Err("has an empty token (a leading, trailing or double '.')");
    }

    // Rare: a non-ASCII name. Unicode white space is refused too.
    if non_ascii {
        let text = std::str::from_utf8(bytes).map_err(|_| "is not valid UTF-8")?;
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("contains white space or a control character");
        }
    }
    Ok(())
}

/// The common case, checked eight bytes at a time: one non-empty token of printable ASCII
/// without `.`, `*` or `>`. `false` sends the name to the byte-by-byte check, which accepts
/// the other valid names (several tokens, non-ASCII) and says what is wrong with the rest.
#[inline]
fn is_one_plain_token(bytes: &[u8]) -> bool {
    const fn splat(byte: u8) -> u64 {
        u64::from_ne_bytes([byte; 8])
    }
    /// Non-zero if any byte of `word` is zero.
    fn any_zero(word: u64) -> u64 {
        word.wrapping_sub(splat(1)) & !word & splat(0x80)
    }
    let refused = |word: u64| {
        // Below 0x21 (control characters and space), non-ASCII, DEL, or one of `.*>`.
        (word.wrapping_sub(splat(0x21)) & !word & splat(0x80))
            | (word & splat(0x80))
            | any_zero(word ^ splat(0x7f))
            | any_zero(word ^ splat(b'.'))
            | any_zero(word ^ splat(b'*'))
            | any_zero(word ^ splat(b'>'))
    };

    let len = bytes.len();
    if len == 0 {
        return false;
    }
    // Short names are padded with a letter; longer ones end with an overlapping word.
    let mut word = [b'a'; 8];
    if len < 8 {
        word[..len].copy_from_slice(bytes);
        return refused(u64::from_le_bytes(word)) == 0;
    }
    let mut at = 0;
    while at < len {
        let from = at.min(len - 8);
        word.copy_from_slice(&bytes[from..from + 8]);
        if refused(u64::from_le_bytes(word)) != 0 {
            return false;
        }
        at += 8;
    }
    true
}

/// Checks an event name: valid subject tokens, at most [`MAX_NAME_LEN`] bytes.
#[inline]
pub(crate) fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.len() > MAX_NAME_LEN {
        return Err("is longer than MAX_NAME_LEN (256 bytes)");
    }
    validate_subject_tokens(name.as_bytes())
}

/// An event name that `publish` would drop as `invalid_subject`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid event name {name:?}: it {problem}; use dot-separated tokens without spaces, \
         '*' or '>', such as \"priceEstimate\""
)]
pub struct InvalidName {
    name: String,
    problem: &'static str,
}

/// Checks an event name the way `publish` does, so that services can reject bad names at
/// start-up instead of finding `invalid_subject` drops later.
///
/// # Errors
///
/// [`InvalidName`] saying what is wrong: empty, an empty token, white space or a control
/// character, a `*` or `>` wildcard, or more than [`MAX_NAME_LEN`] bytes.
///
/// ```
/// assert!(jetring::check_name("priceEstimate").is_ok());
/// assert!(jetring::check_name("price estimate").is_err());
/// ```
pub fn check_name(name: &str) -> Result<(), InvalidName> {
    validate_name(name).map_err(|problem| InvalidName {
        name: name.chars().take(64).collect(),
        problem,
    })
}

/// Length of `2026-05-22T12:00:00.123Z`.
pub(crate) const TIMESTAMP_LEN: usize = 24;

/// A per-thread wall clock that formats its reading once per millisecond.
///
/// Formatting a timestamp costs tens of nanoseconds; reading the clock through the vDSO costs
/// about as much as a cache miss. Events published within the same millisecond on one thread
/// share the formatted text.
pub(crate) struct Clock {
    millis: u64,
    text: [u8; TIMESTAMP_LEN],
}

impl Clock {
    pub(crate) const fn new() -> Self {
        Clock {
            millis: u64::MAX,
            text: [0; TIMESTAMP_LEN],
        }
    }

    /// The current UTC time as RFC 3339 with milliseconds and a `Z` suffix.
    #[inline]
    pub(crate) fn now(&mut self) -> &[u8; TIMESTAMP_LEN] {
        let millis = unix_millis();
        if millis != self.millis {
            self.text = format_timestamp(millis);
            self.millis = millis;
        }
        &self.text
    }
}

#[inline]
fn unix_millis() -> u64 {
    // A clock set before 1970 reads as the epoch rather than failing the event.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Last millisecond that fits four year digits: 9999-12-31T23:59:59.999Z.
const MAX_MILLIS: u64 = 253_402_300_799_999;

/// Formats milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
///
/// The date conversion is Howard Hinnant's `civil_from_days`
/// (<https://howardhinnant.github.io/date_algorithms.html#civil_from_days>), restricted to
/// non-negative day counts since the input is unsigned.
pub(crate) fn format_timestamp(millis: u64) -> [u8; TIMESTAMP_LEN] {
    let millis = millis.min(MAX_MILLIS);
    let secs = millis / 1000;
    let days = secs / 86_400;
    let secs_of_day = secs % 86_400;

    // Shift the era to start on 0000-03-01, so that leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);

    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, secs_of_day / 3600);
    put(14, 2, secs_of_day / 60 % 60);
    put(17, 2, secs_of_day % 60);
    put(20, 3, millis % 1000);
    out
}

/// Appends subject and envelope of one event to `buf` and returns the subject's length.
///
/// On error `buf` holds a partial event; the caller discards it. `publish` itself goes through
/// [`encode_with`]; this form serves the `testing` hooks and the tests.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn encode<T: serde::Serialize + ?Sized>(
    buf: &mut BytesMut,
    subject_head: &[u8],
    name: &str,
    timestamp: &[u8; TIMESTAMP_LEN],
    request_id: Option<&str>,
    body: &T,
) -> Result<usize, EncodeError> {
    encode_with(buf, subject_head, name, timestamp, request_id, |buf| {
        json::write(buf, body)
    })
}

/// As [`encode`], with the body written by `write_body`, which appends one JSON value.
#[inline]
pub(crate) fn encode_with(
    buf: &mut BytesMut,
    subject_head: &[u8],
    name: &str,
    timestamp: &[u8; TIMESTAMP_LEN],
    request_id: Option<&str>,
    write_body: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<usize, EncodeError> {
    buf.reserve(subject_head.len() + name.len() + 128);

    buf.put_slice(subject_head);
    buf.put_slice(name.as_bytes());
    let subject_len = buf.len();

    buf.put_slice(br#"{"version":"v1","timestamp":""#);
    buf.put_slice(timestamp);
    match request_id {
        Some(id) => {
            buf.put_slice(br#"","requestId":"#);
            json::write_str(buf, id);
            buf.put_slice(br#","body":"#);
        }
        None => buf.put_slice(br#"","body":"#),
    }

    write_body(buf)?;
    buf.put_u8(b'}');

    Ok(subject_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_known_instants() {
        assert_eq!(&format_timestamp(0), b"1970-01-01T00:00:00.000Z");
        assert_eq!(
            &format_timestamp(1_779_451_200_123),
            b"2026-05-22T12:00:00.123Z"
        );
        // Leap day, and the last millisecond of a leap year.
        assert_eq!(
            &format_timestamp(951_782_400_000),
            b"2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            &format_timestamp(1_735_689_599_999),
            b"2024-12-31T23:59:59.999Z"
        );
        assert_eq!(&format_timestamp(u64::MAX), b"9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn timestamps_agree_with_chrono_over_a_wide_range() {
        let mut millis = 0u64;
        while millis < MAX_MILLIS {
            let expected = chrono::DateTime::from_timestamp_millis(millis as i64)
                .expect("in range")
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            assert_eq!(
                std::str::from_utf8(&format_timestamp(millis)).unwrap(),
                expected
            );
            millis += 7_654_321_987;
        }
    }

    #[test]
    fn the_word_at_a_time_check_agrees_with_the_byte_by_byte_one() {
        // Every byte at several positions, in names shorter and longer than a word.
        for byte in 0..=0xff_u8 {
            for len in [1, 5, 8, 13, 16, 21] {
                for at in [0, len / 2, len - 1] {
                    let mut name = vec![b'x'; len];
                    name[at] = byte;
                    let plain = is_one_plain_token(&name);
                    let expected = (0x21..0x7f).contains(&byte) && !b".*>".contains(&byte);
                    assert_eq!(plain, expected, "{byte:#x} at {at} of {len}");
                    if plain {
                        assert_eq!(validate_subject_tokens(&name), Ok(()));
                    }
                }
            }
        }
        assert!(!is_one_plain_token(b""));
    }

    #[test]
    fn subject_tokens_are_checked() {
        for good in ["a", "priceEstimate", "a.b.c", "price-estimate_v2", "größe"] {
            assert_eq!(validate_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a b",
            "a\tb",
            "a\nb",
            "a*",
            ">",
            "a.>",
            "a\u{7f}",
            "a\u{a0}b",
            "a\u{2028}",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"x".repeat(MAX_NAME_LEN)).is_ok());
        assert!(validate_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn envelope_has_the_exact_key_order_and_subject() {
        let mut buf = BytesMut::new();
        let ts = format_timestamp(1_779_451_200_123);
        let body = serde_json::json!({"a": 1});

        let n = encode(
            &mut buf,
            b"event.1.",
            "priceEstimate",
            &ts,
            Some("req-1"),
            &body,
        )
        .unwrap();
        assert_eq!(&buf[..n], b"event.1.priceEstimate");
        assert_eq!(
            std::str::from_utf8(&buf[n..]).unwrap(),
            r#"{"version":"v1","timestamp":"2026-05-22T12:00:00.123Z","requestId":"req-1","body":{"a":1}}"#
        );

        buf.clear();
        let n = encode(&mut buf, b"event.1.", "x", &ts, None, &body).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[n..]).unwrap(),
            r#"{"version":"v1","timestamp":"2026-05-22T12:00:00.123Z","body":{"a":1}}"#
        );
    }

    #[test]
    fn request_ids_that_need_escaping_are_escaped() {
        let mut buf = BytesMut::new();
        let ts = format_timestamp(0);
        let id = "a\"b\\c\u{1}\u{7f}é";

        let n = encode(&mut buf, b"e.1.", "x", &ts, Some(id), &()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&buf[n..]).unwrap();
        assert_eq!(value["requestId"], id);
        assert_eq!(value["body"], serde_json::Value::Null);
    }

    #[test]
    fn clock_reuses_the_text_within_a_millisecond() {
        let mut clock = Clock::new();
        let first = *clock.now();
        let parsed = chrono::DateTime::parse_from_rfc3339(std::str::from_utf8(&first).unwrap());
        assert!(parsed.is_ok());
        assert_eq!(first[TIMESTAMP_LEN - 1], b'Z');
    }
}
