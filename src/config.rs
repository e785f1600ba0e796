//! Configuration: the section a service reads from its TOML file, or builds in code.
//!
//! [`Config`] deserializes with kebab-case keys and rejects unknown keys, so a typo in a
//! config file is an error instead of a silently ignored setting. [`Config::validate`] (run by
//! [`Bus::new`](crate::Bus::new) and [`init`](crate::init)) checks every field and turns the
//! server list and the credentials into what the drain needs; each error names the field and
//! says how to fix it.
//!
//! Secrets (token, password, NKey seed, passwords embedded in server URLs) never appear in
//! `Debug` output or in logs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_nats::ServerAddr;
use serde::Deserialize;

use crate::envelope::validate_subject_tokens;

/// What to do with a new event when the ring is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// Refuse the new event and count it as a `queue_full` drop. The events already queued,
    /// which are older, keep their place.
    #[default]
    DropNewest,
    /// Push the oldest queued event out to make room for the new one, and count the displaced
    /// one as a `queue_full` drop. Favors fresh data when the server is slow or away.
    DropOldest,
}

/// A string that never shows itself in `Debug` output.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Keep it out of logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

/// The configuration of one bus.
///
/// Build it in code with [`Config::new`] and the chained setters, or deserialize it from a
/// config file section. Every key except `chain-id` has a default; the README lists them all.
///
/// ```
/// let config: jetring::Config = toml::from_str(r#"
///     servers = ["localhost:4222"]
///     chain-id = 1
///     stream = "EVENTS"
///     ack-timeout = "2s"
/// "#).unwrap();
///
/// assert_eq!(config.chain_id, 1);
/// assert!(config.validate().is_ok());
///
/// let built = jetring::Config::new(1).servers(["localhost:4222"]).stream("EVENTS");
/// assert_eq!(built.stream.as_deref(), Some("EVENTS"));
/// ```
#[derive(Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// NATS server URLs; several for a cluster. `host:port` without a scheme means
    /// `nats://host:port`; `nats://user:pass@host` authenticates with that user and password.
    #[serde(default = "defaults::servers")]
    pub servers: Vec<String>,

    /// Chain id, the second token of every subject: `<prefix>.<chain-id>.<name>`.
    pub chain_id: u64,

    /// First token(s) of every subject.
    #[serde(default = "defaults::subject_prefix")]
    pub subject_prefix: String,

    /// A stream to look up at connect. When it is missing, a warning is logged (once per
    /// connection) and events are dropped as `no_stream` until it exists. jetring never
    /// creates or changes streams.
    #[serde(default)]
    pub stream: Option<String>,

    /// Number of events the ring holds. Memory in use is bounded by this times the size of an
    /// encoded event (plus the per-thread arenas, see the crate docs).
    #[serde(default = "defaults::ring_capacity")]
    pub ring_capacity: usize,

    /// What happens when the ring is full.
    #[serde(default)]
    pub overflow: Overflow,

    /// Most events the drain pops from the ring in one go.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,

    /// Most events sent and not yet acknowledged or dropped at any moment.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,

    /// How long to wait for an acknowledgement before retrying (or, after the last retry,
    /// dropping as `ack`).
    #[serde(default = "defaults::ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,

    /// Retries after an event's first attempt, for transient failures (ack timeout,
    /// disconnect, no responders, the server asking to retry).
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,

    /// Delay before the first retry; doubles each retry up to `retry-backoff-max`.
    #[serde(default = "defaults::retry_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,

    /// Longest delay between retries.
    #[serde(default = "defaults::retry_backoff_max", with = "humantime_serde")]
    pub retry_backoff_max: Duration,

    /// Delay before the second connection attempt; doubles each attempt up to
    /// `connect-backoff-max`. The drain never stops trying while the bus lives.
    #[serde(default = "defaults::connect_backoff", with = "humantime_serde")]
    pub connect_backoff: Duration,

    /// Longest delay between connection attempts.
    #[serde(default = "defaults::connect_backoff_max", with = "humantime_serde")]
    pub connect_backoff_max: Duration,

    /// How long dropping a [`Bus`](crate::Bus) waits for pending events to be acknowledged.
    #[serde(default = "defaults::flush_timeout", with = "humantime_serde")]
    pub flush_timeout: Duration,

    /// How long dropping a [`Bus`](crate::Bus) waits, in all, before counting what is left
    /// as `shutdown` drops. Includes `flush-timeout`.
    #[serde(default = "defaults::shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,

    /// Drops are logged at most once per reason per this interval, with the count since the
    /// previous line.
    #[serde(default = "defaults::drop_log_interval", with = "humantime_serde")]
    pub drop_log_interval: Duration,

    /// How long the drain keeps looking at the ring, once a millisecond, after it runs dry,
    /// before it goes to sleep. Producers make a syscall only to wake a sleeping drain, so
    /// while events keep coming at least once per linger, `publish` never makes one; the price
    /// is up to a millisecond more before an event is sent, and a thousand cheap wake-ups a
    /// second while lingering. Zero puts the drain to sleep as soon as the ring is empty.
    #[serde(default = "defaults::linger", with = "humantime_serde")]
    pub linger: Duration,

    /// Prefix of every metric name: `<prefix>_dropped_events` and so on.
    #[serde(default = "defaults::metrics_prefix")]
    pub metrics_prefix: String,

    /// Connection name reported to the server.
    #[serde(default = "defaults::connection_name")]
    pub connection_name: String,

    /// Token authentication.
    #[serde(default)]
    pub token: Option<Secret>,

    /// User for user-and-password authentication; needs `password`.
    #[serde(default)]
    pub user: Option<String>,

    /// Password for user-and-password authentication; needs `user`.
    #[serde(default)]
    pub password: Option<Secret>,

    /// NKey seed (`SU…`) for NKey authentication.
    #[serde(default)]
    pub nkey_seed: Option<Secret>,

    /// Path of a `.creds` file (JWT and NKey seed).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,

    /// PEM file of CA certificates to trust, in addition to the system roots.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate for mutual TLS; needs `tls-key`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of the client certificate; needs `tls-cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,

    /// Refuse to connect without TLS.
    #[serde(default)]
    pub require_tls: bool,
}

mod defaults {
    use std::time::Duration;

    pub(super) fn servers() -> Vec<String> {
        vec!["nats://127.0.0.1:4222".to_owned()]
    }
    pub(super) fn subject_prefix() -> String {
        "event".to_owned()
    }
    pub(super) fn ring_capacity() -> usize {
        16_384
    }
    pub(super) fn batch_size() -> usize {
        256
    }
    pub(super) fn max_in_flight() -> usize {
        4096
    }
    pub(super) fn ack_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn max_retries() -> u32 {
        3
    }
    pub(super) fn retry_backoff() -> Duration {
        Duration::from_millis(100)
    }
    pub(super) fn retry_backoff_max() -> Duration {
        Duration::from_secs(2)
    }
    pub(super) fn connect_backoff() -> Duration {
        Duration::from_millis(100)
    }
    pub(super) fn connect_backoff_max() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn flush_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn shutdown_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn drop_log_interval() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn linger() -> Duration {
        Duration::from_millis(20)
    }
    pub(super) fn metrics_prefix() -> String {
        "event_bus".to_owned()
    }
    pub(super) fn connection_name() -> String {
        "jetring".to_owned()
    }
}

/// Most events a ring may hold; beyond this, memory use is more likely a mistake than a plan.
pub const MAX_RING_CAPACITY: usize = 1 << 24;

impl Config {
    /// A configuration with every default and the given chain id.
    pub fn new(chain_id: u64) -> Self {
        Config {
            servers: defaults::servers(),
            chain_id,
            subject_prefix: defaults::subject_prefix(),
            stream: None,
            ring_capacity: defaults::ring_capacity(),
            overflow: Overflow::default(),
            batch_size: defaults::batch_size(),
            max_in_flight: defaults::max_in_flight(),
            ack_timeout: defaults::ack_timeout(),
            max_retries: defaults::max_retries(),
            retry_backoff: defaults::retry_backoff(),
            retry_backoff_max: defaults::retry_backoff_max(),
            connect_backoff: defaults::connect_backoff(),
            connect_backoff_max: defaults::connect_backoff_max(),
            flush_timeout: defaults::flush_timeout(),
            shutdown_timeout: defaults::shutdown_timeout(),
            drop_log_interval: defaults::drop_log_interval(),
            linger: defaults::linger(),
            metrics_prefix: defaults::metrics_prefix(),
            connection_name: defaults::connection_name(),
            token: None,
            user: None,
            password: None,
            nkey_seed: None,
            credentials_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            require_tls: false,
        }
    }

    /// Sets the server URLs.
    pub fn servers<S: Into<String>>(mut self, servers: impl IntoIterator<Item = S>) -> Self {
        self.servers = servers.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the subject prefix.
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = prefix.into();
        self
    }

    /// Sets the stream to look up at connect.
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = Some(stream.into());
        self
    }

    /// Sets the ring capacity.
    pub fn ring_capacity(mut self, capacity: usize) -> Self {
        self.ring_capacity = capacity;
        self
    }

    /// Sets the overflow policy.
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// Sets the drain's batch size.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Sets the most events in flight.
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// Sets the acknowledgement timeout.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// Sets the retry limit and the first and longest retry delays.
    pub fn retries(mut self, max_retries: u32, backoff: Duration, backoff_max: Duration) -> Self {
        self.max_retries = max_retries;
        self.retry_backoff = backoff;
        self.retry_backoff_max = backoff_max;
        self
    }

    /// Sets the first and longest delays between connection attempts.
    pub fn connect_backoff(mut self, backoff: Duration, backoff_max: Duration) -> Self {
        self.connect_backoff = backoff;
        self.connect_backoff_max = backoff_max;
        self
    }

    /// Sets the timeouts that dropping a [`Bus`](crate::Bus) uses.
    pub fn drop_timeouts(mut self, flush: Duration, shutdown: Duration) -> Self {
        self.flush_timeout = flush;
        self.shutdown_timeout = shutdown;
        self
    }

    /// Sets the interval between drop summaries in the log.
    pub fn drop_log_interval(mut self, interval: Duration) -> Self {
        self.drop_log_interval = interval;
        self
    }

    /// Sets how long the drain polls an empty ring before it sleeps.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Sets the metric name prefix.
    pub fn metrics_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.metrics_prefix = prefix.into();
        self
    }

    /// Authenticates with a token.
    pub fn token(mut self, token: impl Into<Secret>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Authenticates with a user and password.
    pub fn user_and_password(mut self, user: impl Into<String>, pass: impl Into<Secret>) -> Self {
        self.user = Some(user.into());
        self.password = Some(pass.into());
        self
    }

    /// Authenticates with an NKey seed.
    pub fn nkey_seed(mut self, seed: impl Into<Secret>) -> Self {
        self.nkey_seed = Some(seed.into());
        self
    }

    /// Authenticates with a `.creds` file.
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials_file = Some(path.into());
        self
    }

    /// Trusts the CA certificates in a PEM file.
    pub fn tls_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca = Some(path.into());
        self
    }

    /// Presents a client certificate.
    pub fn tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_cert = Some(cert.into());
        self.tls_key = Some(key.into());
        self
    }

    /// Refuses to connect without TLS.
    pub fn require_tls(mut self, required: bool) -> Self {
        self.require_tls = required;
        self
    }

    /// Checks every field.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field that is wrong and how to fix it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Settings::from_config(self).map(|_| ())
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let servers: Vec<String> = self.servers.iter().map(|s| redact_url(s)).collect();
        f.debug_struct("Config")
            .field("servers", &servers)
            .field("chain_id", &self.chain_id)
            .field("subject_prefix", &self.subject_prefix)
            .field("stream", &self.stream)
            .field("ring_capacity", &self.ring_capacity)
            .field("overflow", &self.overflow)
            .field("batch_size", &self.batch_size)
            .field("max_in_flight", &self.max_in_flight)
            .field("ack_timeout", &self.ack_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_backoff", &self.retry_backoff)
            .field("retry_backoff_max", &self.retry_backoff_max)
            .field("connect_backoff", &self.connect_backoff)
            .field("connect_backoff_max", &self.connect_backoff_max)
            .field("flush_timeout", &self.flush_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("drop_log_interval", &self.drop_log_interval)
            .field("linger", &self.linger)
            .field("metrics_prefix", &self.metrics_prefix)
            .field("connection_name", &self.connection_name)
            .field("token", &self.token)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("nkey_seed", &self.nkey_seed)
            .field("credentials_file", &self.credentials_file)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("require_tls", &self.require_tls)
            .finish()
    }
}

/// A configuration field that is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid jetring config `{field}`: {problem}")]
pub struct ConfigError {
    field: &'static str,
    problem: String,
}

impl ConfigError {
    fn new(field: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            field,
            problem: problem.into(),
        }
    }

    /// The kebab-case name of the field, as written in a config file.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// What is wrong with it and how to fix it.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

/// How the client proves who it is.
#[derive(Clone)]
pub(crate) enum Auth {
    None,
    Token(Secret),
    UserPassword(String, Secret),
    NKey(Secret),
    CredentialsFile(PathBuf),
}

/// A validated configuration, in the shape the bus and the drain use.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) servers: Vec<ServerAddr>,
    /// `<subject-prefix>.<chain-id>.`, ready to be copied in front of each event name.
    pub(crate) subject_head: Box<[u8]>,
    pub(crate) auth: Auth,
    pub(crate) config: Config,
}

impl Settings {
    pub(crate) fn from_config(config: &Config) -> Result<Settings, ConfigError> {
        let (servers, url_auth) = parse_servers(&config.servers)?;

        validate_subject_tokens(config.subject_prefix.as_bytes()).map_err(|why| {
            ConfigError::new(
                "subject-prefix",
                format!("{why}; use dot-separated tokens such as \"event\" or \"app.event\""),
            )
        })?;

        if let Some(stream) = &config.stream {
            let bad = |c: char| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c);
            if stream.is_empty() || stream.chars().any(bad) {
                return Err(ConfigError::new(
                    "stream",
                    format!(
                        "{stream:?} is not a stream name; use letters, digits, '-' and '_' \
                         (no spaces, '.', '*', '>', '/' or '\\'), or leave it out"
                    ),
                ));
            }
        }

        check_range("ring-capacity", config.ring_capacity, 1, MAX_RING_CAPACITY)?;
        check_range("batch-size", config.batch_size, 1, 65_536)?;
        check_range("max-in-flight", config.max_in_flight, 1, 1 << 20)?;
        check_positive("ack-timeout", config.ack_timeout)?;
        check_positive("retry-backoff", config.retry_backoff)?;
        check_positive("connect-backoff", config.connect_backoff)?;
        check_positive("drop-log-interval", config.drop_log_interval)?;
        if config.linger > Duration::from_secs(1) {
            return Err(ConfigError::new(
                "linger",
                format!(
                    "{:?} is too long; use at most \"1s\" (\"20ms\" is typical)",
                    config.linger
                ),
            ));
        }
        check_not_below(
            "retry-backoff-max",
            config.retry_backoff_max,
            "retry-backoff",
            config.retry_backoff,
        )?;
        check_not_below(
            "connect-backoff-max",
            config.connect_backoff_max,
            "connect-backoff",
            config.connect_backoff,
        )?;
        check_not_below(
            "shutdown-timeout",
            config.shutdown_timeout,
            "flush-timeout",
            config.flush_timeout,
        )?;

        if !is_metric_name(&config.metrics_prefix) {
            return Err(ConfigError::new(
                "metrics-prefix",
                format!(
                    "{:?} is not a Prometheus metric name; use letters, digits and '_', \
                     not starting with a digit, such as \"event_bus\"",
                    config.metrics_prefix
                ),
            ));
        }

        let auth = pick_auth(config, url_auth)?;
        check_tls(config)?;

        let subject_head = format!("{}.{}.", config.subject_prefix, config.chain_id);

        Ok(Settings {
            servers,
            subject_head: subject_head.into_bytes().into_boxed_slice(),
            auth,
            config: config.clone(),
        })
    }
}

fn check_range(
    field: &'static str,
    value: usize,
    min: usize,
    max: usize,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("{value} is out of range; use a value from {min} to {max}"),
        ))
    }
}

fn check_positive(field: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        Err(ConfigError::new(
            field,
            "must be longer than zero; write a duration such as \"100ms\" or \"5s\"",
        ))
    } else {
        Ok(())
    }
}

fn check_not_below(
    field: &'static str,
    value: Duration,
    other_field: &'static str,
    other: Duration,
) -> Result<(), ConfigError> {
    if value < other {
        Err(ConfigError::new(
            field,
            format!("{value:?} is shorter than `{other_field}` ({other:?}); raise it"),
        ))
    } else {
        Ok(())
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_');
    first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Credentials taken from server URLs.
#[derive(Clone, PartialEq, Eq)]
enum UrlAuth {
    /// `nats://token@host`.
    Token(Secret),
    /// `nats://user:password@host`.
    User(String, Secret),
}

type UrlCredentials = Option<UrlAuth>;

/// Parses the server list. Returns the addresses without user information, and the user and
/// password found in them, if any.
fn parse_servers(servers: &[String]) -> Result<(Vec<ServerAddr>, UrlCredentials), ConfigError> {
    if servers.is_empty() {
        return Err(ConfigError::new(
            "servers",
            "is empty; list at least one server, such as [\"nats://127.0.0.1:4222\"]",
        ));
    }

    let mut addrs = Vec::with_capacity(servers.len());
    let mut url_auth: UrlCredentials = None;

    for raw in servers {
        let shown = redact_url(raw);
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(ConfigError::new(
                "servers",
                "contains an empty URL; write each as \"host:port\" or \"nats://host:port\"",
            ));
        }

        match scheme_of(trimmed) {
            Some("nats" | "tls") => {}
            Some(scheme) => {
                return Err(ConfigError::new(
                    "servers",
                    format!("{shown:?} has scheme {scheme:?}; use nats:// or tls://"),
                ));
            }
            None if trimmed.contains("://") => {
                return Err(ConfigError::new(
                    "servers",
                    format!("{shown:?} is not a server URL; write \"host:port\" or \"nats://host:port\""),
                ));
            }
            None => {}
        }

        let addr = ServerAddr::from_str(trimmed).map_err(|e| {
            ConfigError::new(
                "servers",
                format!("{shown:?} is not a server URL ({e}); write \"host:port\" or \"nats://host:port\""),
            )
        })?;

        let mut url = addr.into_inner();
        if url.host_str().is_none_or(str::is_empty) {
            return Err(ConfigError::new(
                "servers",
                format!("{shown:?} has no host; write \"host:port\" or \"nats://host:port\""),
            ));
        }

        if !url.username().is_empty() {
            // `user:password@host`, or `token@host` as NATS URLs write a token.
            let first = percent_decode(url.username());
            let found = match url.password() {
                Some(pass) => UrlAuth::User(first, Secret(percent_decode(pass))),
                None => UrlAuth::Token(Secret(first)),
            };
            match &url_auth {
                Some(earlier) if *earlier != found => {
                    return Err(ConfigError::new(
                        "servers",
                        "URLs carry different credentials; use the same in every URL, or move \
                         them to `user` and `password` (or `token`)",
                    ));
                }
                _ => url_auth = Some(found),
            }

            // Credentials travel in CONNECT, never in the address the client logs.
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }

        let addr =
            ServerAddr::from_url(url).map_err(|e| ConfigError::new("servers", e.to_string()))?;
        addrs.push(addr);
    }

    Ok((addrs, url_auth))
}

fn pick_auth(config: &Config, url_auth: UrlCredentials) -> Result<Auth, ConfigError> {
    let explicit_user = match (&config.user, &config.password) {
        (Some(user), Some(pass)) => Some((user.clone(), pass.clone())),
        (Some(_), None) => {
            return Err(ConfigError::new(
                "password",
                "is missing; `user` needs a `password`",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "user",
                "is missing; `password` needs a `user`",
            ));
        }
        (None, None) => None,
    };

    if explicit_user.is_some() && matches!(url_auth, Some(UrlAuth::User(..))) {
        return Err(ConfigError::new(
            "user",
            "is set and a server URL carries a user too; keep one of the two",
        ));
    }
    let (url_token, url_user) = match url_auth {
        Some(UrlAuth::Token(token)) => (Some(token), None),
        Some(UrlAuth::User(user, pass)) => (None, Some((user, pass))),
        None => (None, None),
    };

    if let Some(path) = &config.credentials_file {
        check_file("credentials-file", path)?;
    }

    let mut chosen = Vec::new();
    if let Some(token) = &config.token {
        chosen.push(("token", Auth::Token(token.clone())));
    }
    if let Some(token) = url_token {
        chosen.push(("servers", Auth::Token(token)));
    }
    if let Some((user, pass)) = explicit_user.or(url_user) {
        chosen.push(("user", Auth::UserPassword(user, pass)));
    }
    if let Some(seed) = &config.nkey_seed {
        chosen.push(("nkey-seed", Auth::NKey(seed.clone())));
    }
    if let Some(path) = &config.credentials_file {
        chosen.push(("credentials-file", Auth::CredentialsFile(path.clone())));
    }

    match chosen.len() {
        0 => Ok(Auth::None),
        1 => Ok(chosen.pop().map(|(_, auth)| auth).unwrap_or(Auth::None)),
        _ => {
            let names: Vec<&str> = chosen.iter().map(|(name, _)| *name).collect();
            Err(ConfigError::new(
                chosen[1].0,
                format!(
                    "conflicts with {}; choose one way to authenticate",
                    names.join(" and ")
                ),
            ))
        }
    }
}

fn check_tls(config: &Config) -> Result<(), ConfigError> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(_), None) => {
            return Err(ConfigError::new(
                "tls-key",
                "is missing; `tls-cert` needs a `tls-key`",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "tls-cert",
                "is missing; `tls-key` needs a `tls-cert`",
            ));
        }
        _ => {}
    }

    for (field, path) in [
        ("tls-ca", &config.tls_ca),
        ("tls-cert", &config.tls_cert),
        ("tls-key", &config.tls_key),
    ] {
        if let Some(path) = path {
            check_file(field, path)?;
        }
    }
    Ok(())
}

fn check_file(field: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("{} is not a readable file; check the path", path.display()),
        ))
    }
}

/// Decodes `%XX` escapes, as URLs carry them in user and password.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;

    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }

    String::from_utf8_lossy(&out).into_owned()
}

/// The scheme of `url`, if it starts with one: a letter, then letters, digits, `+`, `-` or
/// `.`, then `://`. Text before a `://` further in (inside a password, say) is not a scheme.
fn scheme_of(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once("://")?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    (first_ok && rest_ok).then_some(scheme)
}

/// A server URL with its credentials hidden, fit for error messages and logs: the password of
/// `user:password@`, or the whole of `token@`. The user information ends at the last `@`, so
/// a password containing `@` is hidden whole.
pub(crate) fn redact_url(url: &str) -> String {
    let (head, rest) = match scheme_of(url) {
        Some(scheme) => (&url[..scheme.len() + 3], &url[scheme.len() + 3..]),
        None => ("", url),
    };

    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{head}{user}:<redacted>@{host}"),
            None => format!("{head}<redacted>@{host}"),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(config: &Config) -> Settings {
        Settings::from_config(config).expect("config should be valid")
    }

    #[test]
    fn host_and_port_without_scheme_means_nats() {
        let s = settings(&Config::new(1).servers(["localhost:4222"]));
        assert_eq!(
            s.servers[0].clone().into_inner().as_str(),
            "nats://localhost:4222"
        );
    }

    #[test]
    fn user_and_password_in_url_become_credentials_and_leave_the_address() {
        let s = settings(&Config::new(1).servers(["nats://alice:s%40cret@127.0.0.1:4222"]));
        let url = s.servers[0].clone().into_inner();
        assert_eq!(url.username(), "");
        assert_eq!(url.password(), None);

        match s.auth {
            Auth::UserPassword(user, pass) => {
                assert_eq!(user, "alice");
                assert_eq!(pass.expose(), "s@cret");
            }
            _ => panic!("expected user and password"),
        }
    }

    #[test]
    fn debug_output_hides_every_secret() {
        let config = Config::new(1)
            .servers(["nats://alice:hunter2@127.0.0.1:4222"])
            .token("tok-abc")
            .nkey_seed("SUAAAA-seed");
        let text = format!("{config:?}");
        for secret in ["hunter2", "tok-abc", "SUAAAA-seed"] {
            assert!(!text.contains(secret), "{secret} leaked into {text}");
        }
        assert!(text.contains("alice"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(Config, &str)> = vec![
            (Config::new(1).servers(Vec::<String>::new()), "servers"),
            (Config::new(1).servers(["http://localhost:4222"]), "servers"),
            (Config::new(1).servers(["  "]), "servers"),
            (Config::new(1).subject_prefix("a..b"), "subject-prefix"),
            (Config::new(1).subject_prefix("ev*"), "subject-prefix"),
            (Config::new(1).subject_prefix(""), "subject-prefix"),
            (Config::new(1).stream("has space"), "stream"),
            (Config::new(1).ring_capacity(0), "ring-capacity"),
            (Config::new(1).batch_size(0), "batch-size"),
            (Config::new(1).max_in_flight(0), "max-in-flight"),
            (Config::new(1).ack_timeout(Duration::ZERO), "ack-timeout"),
            (
                Config::new(1).retries(3, Duration::from_secs(2), Duration::from_secs(1)),
                "retry-backoff-max",
            ),
            (Config::new(1).metrics_prefix("9bus"), "metrics-prefix"),
            (Config::new(1).metrics_prefix("event-bus"), "metrics-prefix"),
            (Config::new(1).token("t").nkey_seed("s"), "nkey-seed"),
            (
                Config::new(1)
                    .servers(["nats://a:b@localhost"])
                    .user_and_password("c", "d"),
                "user",
            ),
            (Config::new(1).tls_ca("/nonexistent/ca.pem"), "tls-ca"),
            (
                Config::new(1).credentials_file("/nonexistent/x.creds"),
                "credentials-file",
            ),
        ];

        for (config, field) in cases {
            let err = config.validate().expect_err(field);
            assert_eq!(err.field(), field, "{err}");
            assert!(err.to_string().contains(field));
        }
    }

    #[test]
    fn lone_user_or_password_is_rejected() {
        let mut config = Config::new(1);
        config.user = Some("alice".into());
        assert_eq!(config.validate().unwrap_err().field(), "password");

        let mut config = Config::new(1);
        config.password = Some("pw".into());
        assert_eq!(config.validate().unwrap_err().field(), "user");
    }

    #[test]
    fn subject_head_joins_prefix_and_chain() {
        let s = settings(&Config::new(42).subject_prefix("app.event"));
        assert_eq!(&*s.subject_head, b"app.event.42.");
    }

    #[test]
    fn redaction_keeps_user_and_host() {
        assert_eq!(redact_url("nats://u:p@h:1"), "nats://u:<redacted>@h:1");
        assert_eq!(redact_url("u:p@h:1"), "u:<redacted>@h:1");
        assert_eq!(redact_url("nats://tok@h:1"), "nats://<redacted>@h:1");
        assert_eq!(redact_url("nats://h:1"), "nats://h:1");
    }

    #[test]
    fn passwords_with_at_signs_or_colon_slashes_never_leak() {
        for url in [
            "alice:p@ss§@localhost:4222",
            "alice:hunter2§@localhost/x://y",
        ] {
            assert!(!redact_url(url).contains('§'), "{}", redact_url(url));
            let config = Config::new(1).servers([url]);
            assert!(!format!("{config:?}").contains('§'));
            if let Err(error) = config.validate() {
                assert!(!error.to_string().contains('§'), "{error}");
            }
        }
    }

    #[test]
    fn a_url_with_only_a_user_part_carries_a_token() {
        let s = settings(&Config::new(1).servers(["nats://s3cret@127.0.0.1:4222"]));
        match s.auth {
            Auth::Token(token) => assert_eq!(token.expose(), "s3cret"),
            _ => panic!("expected a token"),
        }
        let err = Config::new(1)
            .servers(["nats://a@h", "nats://b@h"])
            .validate()
            .unwrap_err();
        assert_eq!(err.field(), "servers");
    }

    #[test]
    fn percent_decoding_handles_escapes_and_stray_percent_signs() {
        assert_eq!(percent_decode("a%40b"), "a@b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
