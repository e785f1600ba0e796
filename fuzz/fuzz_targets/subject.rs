//! Fuzzes event-name validation against a reference model.
//!
//! [`jetring::check_name`] must accept exactly the names that [`is_valid_name`] accepts: 1 to
//! 256 bytes, no empty dot-separated token, no white space, no control character, no `*` or
//! `>`. It must never panic, and its error must describe the problem.

#![no_main]

use libfuzzer_sys::fuzz_target;

/// The rule a name follows, written for clarity rather than speed.
fn is_valid_name(name: &str) -> bool {
    let length_ok = (1..=jetring::MAX_NAME_LEN).contains(&name.len());
    let tokens_ok = name.split('.').all(|token| !token.is_empty());
    let chars_ok = !name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>');

    length_ok && tokens_ok && chars_ok
}

fuzz_target!(|data: &[u8]| {
    let name = String::from_utf8_lossy(data);

    let result = jetring::check_name(&name);
    assert_eq!(
        result.is_ok(),
        is_valid_name(&name),
        "check_name({name:?}) returned {result:?}"
    );

    if let Err(err) = result {
        let message = err.to_string();
        assert!(message.contains("invalid event name"), "{message}");
    }
});
