//! Publish events from latency-critical code to NATS JetStream.
//!
//! # The contract
//!
//! - **Cost.** [`publish`] encodes the event on the caller's thread into a per-thread arena
//!   and pushes it into a bounded lock-free ring. It takes no lock, makes no syscall and, in
//!   steady state, does not allocate. It does not need a tokio runtime.
//! - **Never blocks, never fails, never panics.** When an event cannot be accepted (ring full,
//!   invalid name, a body that fails to serialize) `publish` counts it as a drop and returns.
//! - **Every accepted event is accounted for.** The drain thread delivers it to JetStream and
//!   waits for the acknowledgement, retrying transient failures with the same `Nats-Msg-Id` so
//!   that the stream stores it once. An event that still fails is counted as a drop with a
//!   typed [`DropReason`]. At quiescence `accepted = acked + dropped after acceptance`, and
//!   `publish calls = accepted + dropped before acceptance`.
//! - **Bounded.** The ring holds `ring-capacity` events; the in-flight window holds
//!   `max-in-flight`. Nothing grows with the server's troubles.
//! - **Before [`init`]** (or after a failed one) `publish` is a no-op costing one atomic load.
//!   An unreachable server does not fail `init`: the drain connects in the background, and
//!   events wait in the ring meanwhile.
//! - **Observable.** Drops by reason, queue depth, in-flight acknowledgements, connection
//!   state, acknowledgement latency and batch sizes are exported to Prometheus (see
//!   [`Metrics`]), computed only when scraped. Drops are logged through `tracing` at most
//!   once per reason per interval, never once per event.
//!
//! # Wire format
//!
//! Subject `<prefix>.<chain-id>.<name>` (prefix `event` by default), header `Nats-Msg-Id`,
//! payload:
//!
//! ```text
//! {"version":"v1","timestamp":"2026-05-22T12:00:00.123Z","requestId":"…","body":…}
//! ```
//!
//! `requestId` is omitted when there is none; the timestamp is UTC with milliseconds. The
//! body is written by jetring's own serializer, which produces the bytes `serde_json` writes
//! for the same value. A body that repeats can be encoded once as an [`EncodedBody`] and
//! published with [`publish_encoded`], which copies its JSON instead of serializing it.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! #[derive(serde::Serialize)]
//! #[serde(rename_all = "camelCase")]
//! struct PriceEstimate<'a> {
//!     estimator: &'a str,
//!     out_amount: &'a str,
//! }
//!
//! let config: jetring::Config = toml::from_str(r#"
//!     servers = ["localhost:4222"]
//!     chain-id = 1
//! "#)?;
//! jetring::init(config)?;
//!
//! // Anywhere, on any thread, in hot code:
//! jetring::publish("priceEstimate", &PriceEstimate { estimator: "Baseline", out_amount: "3841" });
//! jetring::with_request_id("4f1c7a5e-3b7d-4e55-9d0a-0c8f5f0e6a11", || {
//!     jetring::publish("priceEstimate", &PriceEstimate { estimator: "Oracle", out_amount: "3840" });
//! });
//!
//! // At exit:
//! let stats = jetring::shutdown(Duration::from_secs(5));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Where the pieces live
//!
//! - [`bus`](Bus): the producer path and the ring; the drain's sleep and wake-up protocol
//!   is in `src/wake.rs`, with its loom model;
//! - the drain (internal): connection, batching, acknowledgements, retries;
//! - [`Config`]: every setting, validated with errors that name the field;
//! - [`Stats`] and [`DropReason`]: the counters; [`Metrics`]: their Prometheus export.
//!
//! The per-thread arenas hold 64 KiB blocks, a few per producer thread; their memory is
//! bounded by the events the drain has not yet released, and is reused once it has.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod arena;
mod bus;
#[cfg(feature = "testing")]
mod capture;
mod config;
mod drain;
mod envelope;
mod json;
mod metrics;
mod scope;
mod stats;
#[cfg(feature = "testing")]
pub mod testing;
mod wake;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;

pub use crate::bus::{Bus, Error, FlushTimeout};
#[cfg(feature = "testing")]
pub use crate::capture::{Capture, CapturedEvent};
pub use crate::config::{Config, ConfigError, Overflow, Secret, MAX_RING_CAPACITY};
pub use crate::envelope::{check_name, InvalidName, MAX_NAME_LEN};
pub use crate::json::{EncodeError, EncodedBody};
pub use crate::metrics::Metrics;
pub use crate::scope::{current_request_id, in_request, with_request_id, RequestScoped};
pub use crate::stats::{DropCounts, DropReason, Stats};

/// The global bus, set once by a successful [`init`].
static GLOBAL: OnceLock<Bus> = OnceLock::new();

/// Serializes [`init`] calls, so that two threads never both build a bus.
static INIT: Mutex<()> = Mutex::new(());

/// Starts the global bus. Call it once at start-up; later calls after a success are cheap
/// no-ops, and calls after a failure try again.
///
/// An unreachable server is not an error: the bus connects in the background and events wait
/// in the ring meanwhile.
///
/// # Errors
///
/// [`Error::Config`] naming the field that is wrong (the bus stays disabled and `publish`
/// stays a no-op); [`Error::Spawn`] if the drain thread cannot start.
pub fn init(config: Config) -> Result<(), Error> {
    if GLOBAL.get().is_some() {
        return Ok(());
    }

    let _serialized = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if GLOBAL.get().is_some() {
        return Ok(());
    }

    let bus = Bus::new(config)?;
    // Cannot be set already: every setter holds `INIT` and checked above.
    let _ = GLOBAL.set(bus);
    Ok(())
}

/// The global bus, if [`init`] has succeeded.
pub fn global() -> Option<&'static Bus> {
    GLOBAL.get()
}

/// Publishes an event on the global bus; see [`Bus::publish`]. A no-op before [`init`].
#[inline]
pub fn publish<T: Serialize + ?Sized>(name: &str, body: &T) {
    if let Some(bus) = GLOBAL.get() {
        bus.publish(name, body);
    }
}

/// Publishes an event with an explicit request id on the global bus; see
/// [`Bus::publish_with_request_id`]. A no-op before [`init`].
#[inline]
pub fn publish_with_request_id<T: Serialize + ?Sized>(name: &str, request_id: &str, body: &T) {
    if let Some(bus) = GLOBAL.get() {
        bus.publish_with_request_id(name, request_id, body);
    }
}

/// Publishes an event with a body encoded beforehand on the global bus; see
/// [`Bus::publish_encoded`]. A no-op before [`init`].
#[inline]
pub fn publish_encoded(name: &str, body: &EncodedBody) {
    if let Some(bus) = GLOBAL.get() {
        bus.publish_encoded(name, body);
    }
}

/// Flushes the global bus; see [`Bus::flush`]. Returns `Ok` at once before [`init`].
///
/// # Errors
///
/// [`FlushTimeout`] if `timeout` passes with events still pending.
pub fn flush(timeout: Duration) -> Result<(), FlushTimeout> {
    match GLOBAL.get() {
        Some(bus) => bus.flush(timeout),
        None => Ok(()),
    }
}

/// Shuts the global bus down; see [`Bus::shutdown`]. Returns the final statistics, or `None`
/// before [`init`]. The global bus cannot be started again in the same process.
pub fn shutdown(timeout: Duration) -> Option<Stats> {
    GLOBAL.get().map(|bus| bus.shutdown(timeout))
}

/// A snapshot of the global bus's counters, or `None` before [`init`].
pub fn stats() -> Option<Stats> {
    GLOBAL.get().map(Bus::stats)
}

/// Registers the global bus's metrics with `registry`.
///
/// # Errors
///
/// An error before [`init`], or the registry's error if the names are taken.
pub fn register(registry: &prometheus::Registry) -> prometheus::Result<()> {
    match GLOBAL.get() {
        Some(bus) => bus.register(registry),
        None => Err(prometheus::Error::Msg(
            "jetring::register called before a successful jetring::init".to_owned(),
        )),
    }
}
