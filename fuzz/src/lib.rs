//! Checks shared by the fuzz targets.
//!
//! [`check_config`] holds a reference model of [`Config::validate`]: the rule of every field,
//! in the order `validate` applies them. The server list is only partly modelled (URL parsing
//! belongs to `url` and async-nats), so where the model cannot tell, it accepts either answer.

use std::path::Path;
use std::time::Duration;

use jetring::{Config, MAX_RING_CAPACITY};

/// Every key of the config section, as written in a TOML file.
pub const CONFIG_KEYS: &[&str] = &[
    "servers",
    "chain-id",
    "subject-prefix",
    "stream",
    "ring-capacity",
    "overflow",
    "batch-size",
    "max-in-flight",
    "ack-timeout",
    "max-retries",
    "retry-backoff",
    "retry-backoff-max",
    "connect-backoff",
    "connect-backoff-max",
    "flush-timeout",
    "shutdown-timeout",
    "drop-log-interval",
    "linger",
    "metrics-prefix",
    "connection-name",
    "token",
    "user",
    "password",
    "nkey-seed",
    "credentials-file",
    "tls-ca",
    "tls-cert",
    "tls-key",
    "require-tls",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Good,
    Bad,
    /// The model cannot tell: `validate` may or may not object.
    Maybe,
}

/// One rule of the model: the fields `validate` may blame when it is broken.
#[derive(Debug)]
struct Rule {
    fields: Vec<&'static str>,
    verdict: Verdict,
}

fn rule(field: &'static str, broken: bool) -> Rule {
    Rule {
        fields: vec![field],
        verdict: if broken { Verdict::Bad } else { Verdict::Good },
    }
}

fn maybe(fields: Vec<&'static str>, possible: bool) -> Rule {
    Rule {
        fields,
        verdict: if possible {
            Verdict::Maybe
        } else {
            Verdict::Good
        },
    }
}

/// Dot-separated tokens, none empty, without white space, control characters or wildcards.
pub fn is_subject_tokens(text: &str) -> bool {
    !text.is_empty()
        && text.split('.').all(|token| !token.is_empty())
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
}

fn is_stream_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c))
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_');
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn missing_file(path: Option<&Path>) -> bool {
    path.is_some_and(|p| !p.is_file())
}

/// The rules of `validate`, in the order it applies them.
fn rules(config: &Config) -> Vec<Rule> {
    let mut rules = Vec::new();

    // Servers: an empty list, a blank URL or a foreign scheme is certainly refused; anything
    // else depends on the URL parser.
    let servers_broken = config.servers.is_empty()
        || config.servers.iter().any(|raw| {
            let trimmed = raw.trim();
            let foreign_scheme = trimmed
                .split_once("://")
                .is_some_and(|(scheme, _)| scheme != "nats" && scheme != "tls");
            trimmed.is_empty() || foreign_scheme
        });
    rules.push(Rule {
        fields: vec!["servers"],
        verdict: if servers_broken {
            Verdict::Bad
        } else {
            Verdict::Maybe
        },
    });

    rules.push(rule(
        "subject-prefix",
        !is_subject_tokens(&config.subject_prefix),
    ));
    rules.push(rule(
        "stream",
        config.stream.as_deref().is_some_and(|s| !is_stream_name(s)),
    ));

    let in_range = |value: usize, max: usize| (1..=max).contains(&value);
    rules.push(rule(
        "ring-capacity",
        !in_range(config.ring_capacity, MAX_RING_CAPACITY),
    ));
    rules.push(rule("batch-size", !in_range(config.batch_size, 65_536)));
    rules.push(rule(
        "max-in-flight",
        !in_range(config.max_in_flight, 1 << 20),
    ));

    rules.push(rule("ack-timeout", config.ack_timeout.is_zero()));
    rules.push(rule("retry-backoff", config.retry_backoff.is_zero()));
    rules.push(rule("connect-backoff", config.connect_backoff.is_zero()));
    rules.push(rule(
        "drop-log-interval",
        config.drop_log_interval.is_zero(),
    ));
    rules.push(rule("linger", config.linger > Duration::from_secs(1)));
    rules.push(rule(
        "retry-backoff-max",
        config.retry_backoff_max < config.retry_backoff,
    ));
    rules.push(rule(
        "connect-backoff-max",
        config.connect_backoff_max < config.connect_backoff,
    ));
    rules.push(rule(
        "shutdown-timeout",
        config.shutdown_timeout < config.flush_timeout,
    ));
    rules.push(rule(
        "metrics-prefix",
        !is_metric_name(&config.metrics_prefix),
    ));

    // Authentication. A server URL may carry a user; whether it does is the URL parser's call.
    let user = config.user.is_some();
    let password = config.password.is_some();
    let explicit_user = user && password;
    let url_user = config.servers.iter().any(|s| s.contains('@'));
    rules.push(rule("password", user && !password));
    rules.push(rule("user", password && !user));
    rules.push(maybe(vec!["user"], explicit_user && url_user));
    rules.push(rule(
        "credentials-file",
        missing_file(config.credentials_file.as_deref()),
    ));

    let methods = |with_user: bool| {
        let mut names = Vec::new();
        if config.token.is_some() {
            names.push("token");
        }
        if with_user {
            names.push("user");
        }
        if config.nkey_seed.is_some() {
            names.push("nkey-seed");
        }
        if config.credentials_file.is_some() {
            names.push("credentials-file");
        }
        names
    };
    let certain = methods(explicit_user);
    let possible = methods(explicit_user || url_user);
    // A URL's credentials count as `user` (`user:password@`) or as `servers` (`token@`).
    let url_names: &[&'static str] = if url_user { &["servers"] } else { &[] };
    if certain.len() >= 2 {
        let mut blamed = vec![certain[1]];
        blamed.extend(possible.get(1));
        blamed.extend(url_names);
        rules.push(Rule {
            fields: blamed,
            verdict: Verdict::Bad,
        });
    } else {
        let mut blamed: Vec<&'static str> = possible.get(1).copied().into_iter().collect();
        blamed.extend(url_names);
        rules.push(maybe(blamed, possible.len() >= 2));
    }

    rules.push(rule(
        "tls-key",
        config.tls_cert.is_some() && config.tls_key.is_none(),
    ));
    rules.push(rule(
        "tls-cert",
        config.tls_key.is_some() && config.tls_cert.is_none(),
    ));
    rules.push(rule("tls-ca", missing_file(config.tls_ca.as_deref())));
    rules.push(rule("tls-cert", missing_file(config.tls_cert.as_deref())));
    rules.push(rule("tls-key", missing_file(config.tls_key.as_deref())));

    rules
}

/// Validates `config` and checks the answer against the model: an accepted config breaks no
/// rule, and a refused one names a key of the section, in `field()` and in its message, that
/// breaks a rule no later than the first rule the model knows is broken.
///
/// Returns the message of the error, if any, so that callers can check it further.
///
/// # Panics
///
/// When `validate` and the model disagree, or `validate` or `Debug` panics.
pub fn check_config(config: &Config) -> Option<String> {
    let _ = format!("{config:?}");
    let rules = rules(config);
    let first_broken = rules.iter().position(|r| r.verdict == Verdict::Bad);

    match config.validate() {
        Ok(()) => {
            if let Some(i) = first_broken {
                panic!(
                    "validate accepted a config that breaks {:?}",
                    rules[i].fields
                );
            }
            None
        }
        Err(err) => {
            let field = err.field();
            let message = err.to_string();
            assert!(
                CONFIG_KEYS.contains(&field),
                "unknown field {field:?}: {message}"
            );
            assert!(
                message.contains(field),
                "message does not name {field:?}: {message}"
            );
            assert!(!err.problem().is_empty(), "no problem stated for {field:?}");

            let candidates = &rules[..first_broken.map_or(rules.len(), |i| i + 1)];
            let plausible = candidates
                .iter()
                .any(|r| r.verdict != Verdict::Good && r.fields.contains(&field));
            assert!(
                plausible,
                "validate blamed `{field}` ({message}), the model expects one of {:?}",
                candidates
                    .iter()
                    .filter(|r| r.verdict != Verdict::Good)
                    .map(|r| &r.fields)
                    .collect::<Vec<_>>()
            );
            Some(message)
        }
    }
}
