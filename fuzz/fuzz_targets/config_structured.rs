//! Fuzzes config validation with TOML documents built from the known keys.
//!
//! Arbitrary text seldom makes it through the TOML parser and serde to
//! [`jetring::Config::validate`]; this target writes the documents itself, from the config's
//! keys with values near every limit (ranges, durations, names, server URLs with user
//! information, credentials, files that exist or not), plus a misspelled key now and then.
//! It runs the same model checks as the `config` target, and one more: no secret (a token,
//! a password, an NKey seed, the password part of a server URL) shows in the config's
//! `Debug` output or in a validation error. Every secret holds [`SECRET_MARK`], which no
//! other value contains, so any occurrence of the mark in that output is a leak.

#![no_main]

use std::fmt::Write as _;

use arbitrary::{Arbitrary, Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// Carried by every secret and by nothing else.
const SECRET_MARK: char = '§';

const SCHEMES: &[&str] = &[
    "", "nats://", "tls://", "http://", "ws://", "nats:/", "NATS://",
];
const USERS: &[&str] = &["alice", "", "a b", "al%40ice", "a:b", "u@"];
const PASSWORDS: &[&str] = &[
    "§",
    "hunter2§",
    "p@§",
    "p@ss@§word",
    "§:§",
    "pa%40§",
    "§/x",
    "§?q",
    "§#f",
    "§ §",
];
const HOSTS: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "[::1]",
    "nats.example",
    "",
    "h h",
    "xn--nxasmq6b",
    "0",
];
const PORTS: &[&str] = &["", ":4222", ":0", ":65535", ":65536", ":", ":x"];
const URL_TAILS: &[&str] = &["", "/", "/x://y", "?a=b", "#f", "@x", "/@x", " ", "://"];
const SUBJECT_PREFIXES: &[&str] = &[
    "event",
    "app.event",
    "a..b",
    ".a",
    "a.",
    "ev*",
    "a.>",
    "",
    " ",
    "größe",
    "a\u{a0}b",
    "a\u{85}",
];
const STREAMS: &[&str] = &[
    "EVENTS",
    "has space",
    "a.b",
    "",
    "x/y",
    "x\\y",
    "*",
    "ÉVÉNEMENTS",
];
const METRIC_PREFIXES: &[&str] = &["event_bus", "_x", "9bus", "event-bus", "", "é", "a:b"];
const OVERFLOWS: &[&str] = &[
    "drop-newest",
    "drop-oldest",
    "drop_newest",
    "DropOldest",
    "",
];
const PATHS: &[&str] = &[
    "/etc/passwd",
    "/dev/null",
    "/",
    "/nonexistent/x.pem",
    "",
    ".",
];
const DURATION_UNITS: &[&str] = &[
    "ns", "us", "ms", "s", "sec", "m", "min", "h", "d", "w", "M", "y", "", "x",
];
const COUNTS: &[i64] = &[
    0,
    1,
    2,
    65_535,
    65_536,
    65_537,
    1 << 20,
    (1 << 20) + 1,
    1 << 24,
    (1 << 24) + 1,
    u32::MAX as i64,
    u32::MAX as i64 + 1,
    -1,
    i64::MIN,
    i64::MAX,
];
const MISSPELLED_KEYS: &[&str] = &["chain_id", "server", "ringCapacity", "tls", "", "a.b"];

/// A TOML document assembled from known keys.
#[derive(Debug)]
struct Document(String);

impl<'a> Arbitrary<'a> for Document {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut doc = String::new();

        for &key in jetring_fuzz::CONFIG_KEYS {
            let present = if key == "chain-id" {
                !u.ratio(1, 16)?
            } else {
                u.ratio(1, 3)?
            };
            if !present {
                continue;
            }
            let value = value_for(u, key)?;
            let _ = writeln!(doc, "{key} = {value}");
        }

        if u.ratio(1, 16)? {
            let key = *u.choose(MISSPELLED_KEYS)?;
            let _ = writeln!(doc, "{} = 1", toml_string(key));
        }
        Ok(Document(doc))
    }
}

/// A TOML value for `key`: mostly of the right type, near the limits `validate` checks.
fn value_for(u: &mut Unstructured<'_>, key: &str) -> Result<String> {
    // Now and then a value of any type, to exercise the deserializer's errors.
    if u.ratio(1, 32)? {
        return any_value(u);
    }

    Ok(match key {
        "servers" => {
            if u.ratio(1, 16)? {
                return Ok(toml_string(&server(u)?));
            }
            let count = u.int_in_range(0..=3)?;
            let servers = (0..count)
                .map(|_| Ok(toml_string(&server(u)?)))
                .collect::<Result<Vec<_>>>()?;
            format!("[{}]", servers.join(", "))
        }
        "chain-id" => count(u)?,
        "subject-prefix" => toml_string(&pick_or_text(u, SUBJECT_PREFIXES)?),
        "stream" => toml_string(&pick_or_text(u, STREAMS)?),
        "ring-capacity" | "batch-size" | "max-in-flight" | "max-retries" => count(u)?,
        "overflow" => toml_string(&pick_or_text(u, OVERFLOWS)?),
        "metrics-prefix" => toml_string(&pick_or_text(u, METRIC_PREFIXES)?),
        "connection-name" => toml_string(&plain_text(u)?),
        "token" | "password" | "nkey-seed" => toml_string(&secret(u)?),
        "user" => toml_string(&pick_or_text(u, USERS)?),
        "credentials-file" | "tls-ca" | "tls-cert" | "tls-key" => {
            toml_string(&pick_or_text(u, PATHS)?)
        }
        "require-tls" => u.arbitrary::<bool>()?.to_string(),
        "linger" => toml_string(&duration(u)?),
        _ if key.ends_with("-timeout") || key.contains("backoff") || key.ends_with("-interval") => {
            toml_string(&duration(u)?)
        }
        _ => any_value(u)?,
    })
}

fn count(u: &mut Unstructured<'_>) -> Result<String> {
    let n: i64 = if u.ratio(3, 4)? {
        *u.choose(COUNTS)?
    } else {
        u.arbitrary()?
    };
    Ok(n.to_string())
}

/// A humantime duration: one to three `<number><unit>` parts, with numbers near zero, near
/// each other and past `u64::MAX`.
fn duration(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(1, 16)? {
        return plain_text(u);
    }
    let parts = u.int_in_range(1..=3)?;
    let mut out = String::new();
    for i in 0..parts {
        if i > 0 {
            out.push(' ');
        }
        let number: u64 = match u.int_in_range(0..=3)? {
            0 => u.int_in_range(0..=3)?,
            1 => u.int_in_range(0..=10_000)?,
            2 => *u.choose(&[u32::MAX as u64, u64::MAX / 1000, u64::MAX])?,
            _ => u.arbitrary()?,
        };
        let _ = write!(out, "{number}{}", u.choose(DURATION_UNITS)?);
        if u.ratio(1, 16)? {
            out.push_str("99999999999999999999");
        }
    }
    Ok(out)
}

/// A server URL from parts: scheme, user information, host, port and tail.
fn server(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(1, 16)? {
        return plain_text(u);
    }
    let mut out = String::new();
    out.push_str(u.choose(SCHEMES)?);
    match u.int_in_range(0..=3)? {
        0 => {
            let _ = write!(out, "{}:{}@", u.choose(USERS)?, secret(u)?);
        }
        1 => {
            let _ = write!(out, "{}@", u.choose(USERS)?);
        }
        _ => {}
    }
    out.push_str(u.choose(HOSTS)?);
    out.push_str(u.choose(PORTS)?);
    out.push_str(u.choose(URL_TAILS)?);
    Ok(out)
}

/// A secret: always holds the mark.
fn secret(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(3, 4)? {
        return Ok((*u.choose(PASSWORDS)?).to_owned());
    }
    let mut text = plain_text(u)?;
    let at = u.int_in_range(0..=text.len())?;
    let at = (0..=at)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    text.insert(at, SECRET_MARK);
    Ok(text)
}

fn pick_or_text(u: &mut Unstructured<'_>, choices: &[&str]) -> Result<String> {
    if u.ratio(3, 4)? {
        Ok((*u.choose(choices)?).to_owned())
    } else {
        plain_text(u)
    }
}

/// Arbitrary text without the secret mark.
fn plain_text(u: &mut Unstructured<'_>) -> Result<String> {
    let text: String = u.arbitrary()?;
    Ok(text.replace(SECRET_MARK, ""))
}

fn any_value(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(match u.int_in_range(0..=5)? {
        0 => u.arbitrary::<i64>()?.to_string(),
        1 => u.arbitrary::<bool>()?.to_string(),
        2 => format!("{:?}", u.arbitrary::<f64>()?),
        3 => "[]".to_owned(),
        4 => "{}".to_owned(),
        _ => toml_string(&plain_text(u)?),
    })
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{0}'..='\u{1f}' | '\u{7f}' => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

fuzz_target!(|doc: Document| {
    let config = match toml::from_str::<jetring::Config>(&doc.0) {
        Ok(config) => config,
        Err(_) => return,
    };

    let message = jetring_fuzz::check_config(&config);

    let debug = format!("{config:?}");
    assert!(
        !debug.contains(SECRET_MARK),
        "a secret shows in Debug output: {debug}\nfrom:\n{}",
        doc.0
    );
    if let Some(message) = message {
        assert!(
            !message.contains(SECRET_MARK),
            "a secret shows in a validation error: {message}\nfrom:\n{}",
            doc.0
        );
    }
});
