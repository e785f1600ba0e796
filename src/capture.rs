//! An in-process sink for tests (feature `testing`).
//!
//! A bus made by [`Bus::capture`](crate::Bus::capture) runs the same producer path as a real
//! one (validation, encoding, the ring, the drain thread, the counters) but its drain keeps
//! each event in a [`Capture`] and acknowledges it at once instead of sending it to NATS.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::bus::Event;

/// One event as it would have gone over the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CapturedEvent {
    /// `<prefix>.<chain-id>.<name>`.
    pub subject: String,
    /// The JSON envelope.
    pub payload: Bytes,
    /// The `Nats-Msg-Id` header it would have carried.
    pub message_id: String,
}

impl CapturedEvent {
    /// The envelope parsed as JSON. The encoder always produces valid JSON, so a parse
    /// failure here would be a bug in jetring; it shows as `Value::Null`.
    pub fn envelope(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }

    /// The envelope's `body`.
    pub fn body(&self) -> serde_json::Value {
        self.envelope()["body"].take()
    }

    /// The envelope's `requestId`, if present.
    pub fn request_id(&self) -> Option<String> {
        self.envelope()["requestId"].as_str().map(str::to_owned)
    }
}

/// The events a capture bus has delivered, in delivery order. Cheap to clone; clones share
/// the same events.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    inner: Arc<(Mutex<Vec<CapturedEvent>>, Condvar)>,
}

impl Capture {
    pub(crate) fn new() -> Self {
        Capture::default()
    }

    fn events_lock(&self) -> MutexGuard<'_, Vec<CapturedEvent>> {
        // A panic while holding the lock cannot leave the vector half-updated (`push` is the
        // only mutation), so a poisoned lock is safe to use.
        self.inner
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn push(&self, event: &Event, message_id: &str) {
        let captured = CapturedEvent {
            subject: String::from_utf8_lossy(&event.subject()).into_owned(),
            payload: event.payload(),
            message_id: message_id.to_owned(),
        };
        self.events_lock().push(captured);
        self.inner.1.notify_all();
    }

    /// A copy of every event delivered so far.
    pub fn events(&self) -> Vec<CapturedEvent> {
        self.events_lock().clone()
    }

    /// Removes and returns every event delivered so far.
    pub fn take(&self) -> Vec<CapturedEvent> {
        std::mem::take(&mut *self.events_lock())
    }

    /// Number of events delivered so far.
    pub fn len(&self) -> usize {
        self.events_lock().len()
    }

    /// Whether no event has been delivered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until at least `count` events are held, or `timeout` passes. Returns whether
    /// they arrived.
    pub fn wait_for(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut events = self.events_lock();
        while events.len() < count {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            events = match self.inner.1.wait_timeout(events, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }
}
