//! The bus: the producer side of the ring, and the handle that owns the drain thread.
//!
//! ```text
//!  producer threads                       drain thread (own tokio runtime)
//!  ────────────────                       ────────────────────────────────
//!  publish(name, &body)
//!   ├─ validate name ──► invalid_subject
//!   ├─ encode into the thread's arena ─► serialize
//!   ├─ ring.push(event) ─► queue_full     pop a batch ─► publish with reply ─► JetStream
//!   └─ drain asleep? wake it  ─────────►  (sleeps after `linger` of no events)   │
//!                                         acks on one inbox ◄────────────────────┘
//!                                          ├─ ack: release the event's bytes
//!                                          └─ timeout / no responders: retry, same
//!                                             Nats-Msg-Id, or drop with a reason
//! ```
//!
//! Producers wake the drain only when it sleeps; the protocol that makes this safe lives in
//! `wake.rs`, next to its loom model.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_queue::ArrayQueue;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::arena::with_local;
use crate::config::{Config, ConfigError, Overflow, Settings};
use crate::drain::{self, Sink};
use crate::envelope::{encode_with, validate_name};
use crate::json::{self, EncodeError, EncodedBody};
use crate::metrics::Metrics;
use crate::scope;
use crate::stats::{Counters, DropReason, Stage, Stats};
use crate::wake::WakeState;

/// One encoded event: its subject followed by its envelope, in one buffer.
pub(crate) struct Event {
    pub(crate) bytes: Bytes,
    pub(crate) subject_len: u32,
}

impl Event {
    pub(crate) fn subject(&self) -> Bytes {
        self.bytes.slice(..self.subject_len as usize)
    }

    pub(crate) fn payload(&self) -> Bytes {
        self.bytes.slice(self.subject_len as usize..)
    }
}

/// What the producer side made of one `publish` call.
enum Encoded {
    /// Ready to push, with the thread's counter stripe.
    Event(Event, usize),
    /// The body could not be serialized.
    Failed,
    /// The ring is still full since this thread's last refused push; not encoded.
    RingFull,
}

/// Everything producers, the drain and metric readers share.
pub(crate) struct Shared {
    pub(crate) ring: ArrayQueue<Event>,
    /// Whether the drain sleeps, and whether the bus is closed.
    pub(crate) state: WakeState,
    /// Wakes the drain; holds a permit if notified while the drain is between checks.
    pub(crate) wake: tokio::sync::Notify,
    pub(crate) counters: Counters,
    /// Publish-to-acknowledgement latency in microseconds, recorded by the drain.
    pub(crate) latency: Mutex<Histogram<u64>>,
    pub(crate) settings: Settings,
}

impl Shared {
    fn new(settings: Settings) -> Self {
        let latency = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .expect("1 µs to 1 hour at 3 significant figures is a valid histogram range");

        Shared {
            ring: ArrayQueue::new(settings.config.ring_capacity),
            state: WakeState::new(),
            wake: tokio::sync::Notify::new(),
            counters: Counters::new(),
            latency: Mutex::new(latency),
            settings,
        }
    }

    #[inline]
    fn publish<T: Serialize + ?Sized>(&self, name: &str, request_id: Option<&str>, body: &T) {
        self.publish_with(name, request_id, |buf| json::write(buf, body));
    }

    #[inline]
    fn publish_encoded(&self, name: &str, request_id: Option<&str>, body: &EncodedBody) {
        self.publish_with(name, request_id, |buf| {
            buf.extend_from_slice(body.as_str().as_bytes());
            Ok(())
        });
    }

    /// Publishes one event whose body `write_body` appends as one JSON value.
    #[inline]
    fn publish_with(
        &self,
        name: &str,
        request_id: Option<&str>,
        write_body: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
    ) {
        if validate_name(name).is_err() {
            self.counters
                .drop_event(DropReason::InvalidSubject, Stage::BeforeAccept, 1);
            return;
        }

        // This bus, as the arena's "last refused by a full ring" hint knows it.
        let ring_id = self as *const Shared as usize;

        let encoded = with_local(|local| {
            // After a push from this thread found the ring full, skip encoding while it stays
            // full: a server that is away costs producers one load per event, not an encoding.
            if local.full_ring == ring_id {
                if self.ring.is_full() {
                    return Encoded::RingFull;
                }
                local.full_ring = 0;
            }

            let timestamp = local.clock.now();
            let buf = local.arena.buffer();
            let head = &self.settings.subject_head;

            // A `Serialize` impl that panics costs the event, never the caller.
            let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                encode_with(buf, head, name, timestamp, request_id, write_body)
            }));

            match written {
                Ok(Ok(subject_len)) => {
                    let bytes = buf.split().freeze();
                    let subject_len = subject_len as u32;
                    Encoded::Event(Event { bytes, subject_len }, local.stripe)
                }
                _ => {
                    buf.clear();
                    Encoded::Failed
                }
            }
        });

        match encoded {
            Encoded::Event(event, stripe) => {
                if !self.enqueue(event, stripe) {
                    with_local(|local| local.full_ring = ring_id);
                }
            }
            Encoded::Failed => {
                self.counters
                    .drop_event(DropReason::Serialize, Stage::BeforeAccept, 1);
            }
            Encoded::RingFull => {
                self.counters
                    .drop_event(DropReason::QueueFull, Stage::BeforeAccept, 1);
            }
        }
    }

    /// Puts an encoded event into the ring and wakes the drain if it sleeps. Returns `false`
    /// if the ring was full and the event was refused (drop-newest).
    #[inline]
    fn enqueue(&self, event: Event, stripe: usize) -> bool {
        // Counted before the push, so that `flush` never waits for fewer events than the ring
        // holds ahead of any event whose `publish` has returned.
        self.counters.accepted.add(stripe, 1);

        match self.settings.config.overflow {
            Overflow::DropNewest => {
                if self.ring.push(event).is_err() {
                    self.counters.accepted.sub(stripe, 1);
                    self.counters
                        .drop_event(DropReason::QueueFull, Stage::BeforeAccept, 1);
                    return false;
                }
            }
            Overflow::DropOldest => {
                if let Some(displaced) = self.ring.force_push(event) {
                    drop(displaced);
                    self.counters.displaced.fetch_add(1, Relaxed);
                    self.counters
                        .drop_event(DropReason::QueueFull, Stage::AfterAccept, 1);
                }
            }
        }

        let after = self.state.after_push();
        if after.wake {
            self.wake.notify_one();
        }
        if after.reap {
            self.reap();
        }
        true
    }

    /// Takes every event out of the ring and counts it as a `shutdown` drop. Used once the
    /// drain has stopped.
    pub(crate) fn reap(&self) {
        self.counters.taking.fetch_add(1, SeqCst);
        let mut reaped = 0;
        while let Some(event) = self.ring.pop() {
            drop(event);
            reaped += 1;
        }
        if reaped > 0 {
            self.counters.taken.fetch_add(reaped, SeqCst);
        }
        self.counters.taking.fetch_sub(1, SeqCst);
        if reaped > 0 {
            self.counters
                .drop_event(DropReason::Shutdown, Stage::AfterAccept, reaped);
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.is_closed()
    }

    pub(crate) fn stats(&self) -> Stats {
        self.counters
            .snapshot(self.ring.len(), self.ring.capacity())
    }
}

/// The events still pending when a [`Bus::flush`] deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "jetring flush timed out after {timeout:?} with {pending} events still pending; \
         check the server connection and the stream, or give flush more time"
)]
pub struct FlushTimeout {
    /// Accepted events not yet acknowledged or dropped when the deadline passed.
    pub pending: u64,
    /// The timeout that passed.
    pub timeout: Duration,
}

/// Why a bus could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration field is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The drain thread or its runtime could not be started.
    #[error("could not start the jetring drain thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// A bus: a ring that producers publish into, and a drain thread that delivers its events to
/// JetStream.
///
/// Most services use the global bus through [`init`](crate::init) and
/// [`publish`](crate::publish); a `Bus` of your own lets tests and libraries run several
/// side by side. Share it between threads by reference or in an `Arc`.
///
/// Dropping a `Bus` shuts it down, waiting at most `shutdown-timeout`.
pub struct Bus {
    shared: Arc<Shared>,
    drain: Mutex<Option<drain::Handle>>,
}

impl Bus {
    /// Validates `config`, then starts the drain thread, which connects in the background and
    /// keeps trying until it succeeds. Events published meanwhile wait in the ring.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the field that is wrong; [`Error::Spawn`] if the operating
    /// system refuses a thread. No thread is left behind on error.
    ///
    /// # Example
    ///
    /// ```no_run
    /// let bus = jetring::Bus::new(jetring::Config::new(1).servers(["localhost:4222"]))?;
    /// bus.publish("priceEstimate", &serde_json::json!({"estimator": "Baseline"}));
    /// bus.flush(std::time::Duration::from_secs(5))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(config: Config) -> Result<Bus, Error> {
        Self::with_sink(config, Sink::Nats)
    }

    /// A bus that keeps its events in memory instead of sending them, and acknowledges each
    /// one at once. The [`Capture`](crate::Capture) shows what was published, so unit tests
    /// can assert on the events their code emits without a server. The server and auth
    /// settings of `config` are checked but not used.
    ///
    /// # Errors
    ///
    /// As [`Bus::new`].
    ///
    /// # Example
    ///
    /// ```
    /// let (bus, capture) = jetring::Bus::capture(jetring::Config::new(7))?;
    /// bus.publish("quote", &serde_json::json!({"price": 1.5}));
    /// bus.flush(std::time::Duration::from_secs(1))?;
    ///
    /// let events = capture.events();
    /// assert_eq!(events[0].subject, "event.7.quote");
    /// assert_eq!(events[0].envelope()["body"]["price"], 1.5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "testing")]
    pub fn capture(config: Config) -> Result<(Bus, crate::Capture), Error> {
        let capture = crate::Capture::new();
        let bus = Self::with_sink(config, Sink::Capture(capture.clone()))?;
        Ok((bus, capture))
    }

    fn with_sink(config: Config, sink: Sink) -> Result<Bus, Error> {
        let settings = Settings::from_config(&config)?;
        let shared = Arc::new(Shared::new(settings));
        let handle = drain::spawn(shared.clone(), sink).map_err(Error::Spawn)?;

        Ok(Bus {
            shared,
            drain: Mutex::new(Some(handle)),
        })
    }

    /// Publishes one event named `name` (the subject's last tokens) with `body`, carrying the
    /// request id of the current scope if there is one.
    ///
    /// Never blocks, never panics, never fails: an event that cannot be accepted is counted
    /// as a drop with its reason. In steady state it makes no syscall, takes no lock and does
    /// not allocate.
    #[inline]
    pub fn publish<T: Serialize + ?Sized>(&self, name: &str, body: &T) {
        scope::with_current(|request_id| self.shared.publish(name, request_id, body));
    }

    /// Publishes one event with an explicit request id, which takes precedence over any scope.
    #[inline]
    pub fn publish_with_request_id<T: Serialize + ?Sized>(
        &self,
        name: &str,
        request_id: &str,
        body: &T,
    ) {
        self.shared.publish(name, Some(request_id), body);
    }

    /// Publishes one event whose body was encoded beforehand, carrying the request id of the
    /// current scope if there is one: the body's JSON is copied into the envelope as it is,
    /// with no serialization. For bodies that repeat, or that are built off the hot path.
    ///
    /// Behaves as [`Bus::publish`] otherwise: never blocks, panics or fails.
    ///
    /// ```
    /// # let (bus, capture) = jetring::Bus::capture(jetring::Config::new(7))?;
    /// let heartbeat = jetring::EncodedBody::new(&serde_json::json!({"alive": true}))?;
    /// bus.publish_encoded("heartbeat", &heartbeat);
    /// # bus.flush(std::time::Duration::from_secs(5))?;
    /// # assert_eq!(capture.events()[0].body()["alive"], true);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn publish_encoded(&self, name: &str, body: &EncodedBody) {
        scope::with_current(|request_id| self.shared.publish_encoded(name, request_id, body));
    }

    /// Publishes one event with a body encoded beforehand and an explicit request id; see
    /// [`Bus::publish_encoded`].
    #[inline]
    pub fn publish_encoded_with_request_id(
        &self,
        name: &str,
        request_id: &str,
        body: &EncodedBody,
    ) {
        self.shared.publish_encoded(name, Some(request_id), body);
    }

    /// Waits until every event accepted before this call is acknowledged or dropped.
    ///
    /// Events published concurrently from other threads are not waited for. Blocks the
    /// calling thread (polling, with sleeps of up to a millisecond), so call it from a
    /// blocking context, not from inside an async task.
    ///
    /// # Errors
    ///
    /// [`FlushTimeout`] if `timeout` passes first; the events stay pending and are still
    /// delivered later.
    pub fn flush(&self, timeout: Duration) -> Result<(), FlushTimeout> {
        let deadline = Instant::now() + timeout;
        let counters = &self.shared.counters;
        let target = counters.accepted.sum();

        // Phase 1: the drain has taken out of the ring every event accepted before now (the
        // ring is FIFO, so once it has taken `target` events, or the ring is empty, it has
        // taken them all). An empty ring counts only once no taker holds popped events not yet
        // in `taken`: takers raise `taking` before they pop, so a pop this thread sees is
        // either still marked there or already counted.
        let taken_all = || {
            let removed = counters.taken.load(SeqCst) + counters.displaced.load(SeqCst);
            removed >= target || (self.shared.ring.is_empty() && counters.taking.load(SeqCst) == 0)
        };
        self.wait_until(deadline, timeout, taken_all)?;

        // Phase 2: every event taken so far is resolved.
        let taken = counters.taken.load(SeqCst);
        self.wait_until(deadline, timeout, || {
            counters.resolved_below.load(SeqCst) >= taken
        })
    }

    fn wait_until(
        &self,
        deadline: Instant,
        timeout: Duration,
        mut done: impl FnMut() -> bool,
    ) -> Result<(), FlushTimeout> {
        let mut nap = Duration::from_micros(20);
        loop {
            if done() {
                return Ok(());
            }

            let now = Instant::now();
            if now >= deadline {
                return Err(FlushTimeout {
                    pending: self.shared.stats().pending(),
                    timeout,
                });
            }

            thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(1));
        }
    }

    /// Flushes for at most `timeout`, then stops the drain and counts every event still
    /// pending as a `shutdown` drop. Events published afterwards are dropped the same way.
    /// Returns the final statistics. A second call only returns the statistics.
    ///
    /// Never waits longer than `timeout` (plus scheduling noise): if the drain does not stop
    /// in time, it is left to finish on its own.
    pub fn shutdown(&self, timeout: Duration) -> Stats {
        // Leave the drain a tenth of the time to count what is left and stop.
        self.shutdown_within(timeout.mul_f64(0.9), timeout)
    }

    fn shutdown_within(&self, flush_timeout: Duration, timeout: Duration) -> Stats {
        let deadline = Instant::now() + timeout;
        let handle = match self.drain.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(handle) = handle else {
            return self.stats();
        };

        let _ = self.flush(flush_timeout.min(timeout));

        self.shared.state.close();
        self.shared.wake.notify_one();
        handle.join_until(deadline);

        // Whatever a producer slipped in while the drain stopped.
        self.shared.reap();
        self.stats()
    }

    /// A snapshot of every counter and gauge.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// A Prometheus collector of this bus's metrics. Metrics are computed from the counters
    /// when scraped; nothing on the publish path touches Prometheus.
    pub fn metrics(&self) -> Metrics {
        Metrics::new(self.shared.clone())
    }

    /// Registers this bus's metrics with `registry`.
    ///
    /// # Errors
    ///
    /// The registry's error if a metric of the same name is registered already, for example a
    /// second bus with the same `metrics-prefix`.
    pub fn register(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.metrics()))
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let config = &self.shared.settings.config;
        self.shutdown_within(config.flush_timeout, config.shutdown_timeout);
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("config", &self.shared.settings.config)
            .field("stats", &self.stats())
            .finish()
    }
}
