//! Drop reasons, the atomic counters behind every metric, and the [`Stats`] snapshot.
//!
//! Every outcome of every event is recorded here, by whoever observes it: producers count the
//! events they accept and the ones they refuse, the drain counts what it sends, what the
//! server acknowledges and what it gives up on. Nothing here is read on the hot path; readers
//! (a [`Stats`] snapshot, a Prometheus scrape) load the counters when they ask.
//!
//! Drops are split by *stage*. A drop **before acceptance** is an event that never entered the
//! ring (its `publish` call returned without queueing it); a drop **after acceptance** is an
//! event that was queued and later given up on. The split is what makes the conservation law
//! checkable:
//!
//! ```text
//! publish calls = accepted + dropped before acceptance
//! accepted      = acknowledged + dropped after acceptance + still pending
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crossbeam_utils::CachePadded;

/// Why an event did not reach JetStream.
///
/// Each variant is one value of the `reason` label of the `…_dropped_events` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// The ring was full. Under the default drop-newest policy the new event is refused;
    /// under drop-oldest the oldest queued event is pushed out to make room.
    QueueFull,
    /// The body's `Serialize` implementation failed (or panicked), or produced something JSON
    /// cannot represent, such as a map with non-string keys.
    Serialize,
    /// The event name is not a valid subject token sequence: empty, an empty token, white
    /// space or control characters, a `*` or `>` wildcard, or longer than
    /// [`MAX_NAME_LEN`](crate::MAX_NAME_LEN) bytes.
    InvalidSubject,
    /// Subject, headers and payload together exceed the maximum payload the server announces.
    TooLarge,
    /// The client could not hand the message to the connection in time, after every retry.
    Publish,
    /// The server rejected the message, or no acknowledgement arrived within the ack timeout,
    /// after every retry.
    Ack,
    /// No stream is bound to the subject (the server answered "no responders"), after every
    /// retry.
    NoStream,
    /// The event was still pending when the bus shut down, or was published after it did.
    Shutdown,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 8] = [
        DropReason::QueueFull,
        DropReason::Serialize,
        DropReason::InvalidSubject,
        DropReason::TooLarge,
        DropReason::Publish,
        DropReason::Ack,
        DropReason::NoStream,
        DropReason::Shutdown,
    ];

    pub(crate) const COUNT: usize = Self::ALL.len();

    /// The Prometheus label value, such as `queue_full`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Serialize => "serialize",
            DropReason::InvalidSubject => "invalid_subject",
            DropReason::TooLarge => "too_large",
            DropReason::Publish => "publish",
            DropReason::Ack => "ack",
            DropReason::NoStream => "no_stream",
            DropReason::Shutdown => "shutdown",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a drop happened before the event entered the ring or after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    BeforeAccept,
    AfterAccept,
}

/// Number of stripes of the accepted-events counter. Producers on different threads add to
/// different cache lines, so accepting an event never contends with another core.
const STRIPES: usize = 16;

/// A counter that many threads add to and few read.
///
/// Each thread adds to its own stripe (chosen once per thread), so the hot path is one
/// uncontended atomic add. A read sums the stripes; while writers are active the sum is a
/// moment's approximation, and at quiescence it is exact.
pub(crate) struct StripedCounter {
    stripes: [CachePadded<AtomicU64>; STRIPES],
}

impl StripedCounter {
    pub(crate) fn new() -> Self {
        StripedCounter {
            stripes: std::array::from_fn(|_| CachePadded::new(AtomicU64::new(0))),
        }
    }

    #[inline]
    pub(crate) fn add(&self, stripe: usize, n: u64) {
        self.stripes[stripe % STRIPES].fetch_add(n, Relaxed);
    }

    #[inline]
    pub(crate) fn sub(&self, stripe: usize, n: u64) {
        self.stripes[stripe % STRIPES].fetch_sub(n, Relaxed);
    }

    pub(crate) fn sum(&self) -> u64 {
        self.stripes.iter().fold(0u64, |total, stripe| {
            total.wrapping_add(stripe.load(Relaxed))
        })
    }
}

/// Upper bounds of the batch-size histogram buckets: 1, 2, 4, … 4096, then `+Inf`.
pub(crate) const BATCH_BUCKETS: [u64; 13] =
    [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Every counter and gauge of one bus.
///
/// Writers: producers (`accepted`, drops before acceptance, drop-oldest displacement), the
/// drain thread (everything else). Readers: [`Counters::snapshot`] and the metrics collector.
pub(crate) struct Counters {
    /// Events that entered the ring, striped by producer thread.
    pub(crate) accepted: StripedCounter,
    /// Drops by reason of events that never entered the ring.
    dropped_before: [AtomicU64; DropReason::COUNT],
    /// Drops by reason of events that had entered the ring.
    dropped_after: [AtomicU64; DropReason::COUNT],
    /// Events popped from the ring by the drain (or by shutdown reaping). Also the sequence
    /// number the drain gives the next event it pops.
    pub(crate) taken: AtomicU64,
    /// Takers at work: raised before events are popped from the ring and lowered once they
    /// are counted in `taken`, so that `flush` never takes an empty ring for events already
    /// accounted for while they are still in a taker's hands.
    pub(crate) taking: AtomicU64,
    /// Events removed from the ring by producers under the drop-oldest policy.
    pub(crate) displaced: AtomicU64,
    /// Publish attempts handed to the client, first tries and retries alike.
    pub(crate) published: AtomicU64,
    /// Events acknowledged by JetStream.
    pub(crate) acked: AtomicU64,
    /// Of those, acknowledgements that JetStream marked as duplicates: a retry of an event
    /// the stream already held, recognised by its `Nats-Msg-Id`.
    pub(crate) duplicates: AtomicU64,
    /// Publish attempts beyond the first.
    pub(crate) retried: AtomicU64,
    /// Events sent and awaiting their acknowledgement (gauge).
    pub(crate) in_flight: AtomicU64,
    /// 1 while the drain holds a live connection, 0 otherwise (gauge).
    pub(crate) connected: AtomicU64,
    /// Every popped event with a sequence number below this one is acknowledged or dropped.
    /// `flush` waits on it.
    pub(crate) resolved_below: AtomicU64,
    /// Batch sizes popped by the drain: one counter per bucket of [`BATCH_BUCKETS`], plus
    /// `+Inf`, not cumulative.
    pub(crate) batch_buckets: [AtomicU64; BATCH_BUCKETS.len() + 1],
    /// Sum of all batch sizes.
    pub(crate) batch_sum: AtomicU64,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Counters {
            accepted: StripedCounter::new(),
            dropped_before: std::array::from_fn(|_| AtomicU64::new(0)),
            dropped_after: std::array::from_fn(|_| AtomicU64::new(0)),
            taken: AtomicU64::new(0),
            taking: AtomicU64::new(0),
            displaced: AtomicU64::new(0),
            published: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            resolved_below: AtomicU64::new(0),
            batch_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            batch_sum: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn drop_event(&self, reason: DropReason, stage: Stage, n: u64) {
        let counters = match stage {
            Stage::BeforeAccept => &self.dropped_before,
            Stage::AfterAccept => &self.dropped_after,
        };
        counters[reason.index()].fetch_add(n, Relaxed);
    }

    pub(crate) fn record_batch(&self, size: usize) {
        let size = size as u64;
        let bucket = BATCH_BUCKETS
            .iter()
            .position(|&bound| size <= bound)
            .unwrap_or(BATCH_BUCKETS.len());

        self.batch_buckets[bucket].fetch_add(1, Relaxed);
        self.batch_sum.fetch_add(size, Relaxed);
    }

    /// Drops of one reason, both stages together.
    pub(crate) fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped_before[reason.index()].load(Relaxed)
            + self.dropped_after[reason.index()].load(Relaxed)
    }

    pub(crate) fn snapshot(&self, queue_depth: usize, queue_capacity: usize) -> Stats {
        let load = |counters: &[AtomicU64; DropReason::COUNT]| DropCounts {
            counts: std::array::from_fn(|i| counters[i].load(Relaxed)),
        };

        Stats {
            accepted: self.accepted.sum(),
            published: self.published.load(Relaxed),
            acked: self.acked.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            retried: self.retried.load(Relaxed),
            dropped_before_accept: load(&self.dropped_before),
            dropped_after_accept: load(&self.dropped_after),
            queue_depth: queue_depth as u64,
            queue_capacity: queue_capacity as u64,
            in_flight: self.in_flight.load(Relaxed),
            connected: self.connected.load(Relaxed) == 1,
        }
    }
}

/// Drop counts, one per [`DropReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    counts: [u64; DropReason::COUNT],
}

impl DropCounts {
    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason.index()]
    }

    /// The sum over every reason.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Every reason with its count, in label order, zeros included.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|&reason| (reason, self.get(reason)))
    }
}

/// A snapshot of every counter and gauge of a bus.
///
/// The fields are read one after another without a lock, so while events are moving the
/// snapshot can be off by the few events that moved during the read. Once the bus is quiet
/// (after [`Bus::flush`](crate::Bus::flush) returns `Ok` with no concurrent publishers, or
/// after shutdown) it is exact, and the conservation law holds:
///
/// ```text
/// publish_calls() == accepted + dropped_before_accept.total()
/// accepted        == acked + dropped_after_accept.total() + pending()
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Events that entered the ring.
    pub accepted: u64,
    /// Publish attempts handed to the NATS client, retries included.
    pub published: u64,
    /// Events acknowledged by JetStream (each event counts once, however many attempts it
    /// took).
    pub acked: u64,
    /// Acknowledgements that JetStream flagged as duplicates: proof that a retried event was
    /// already stored and was not stored twice. Included in `acked`.
    pub duplicates: u64,
    /// Publish attempts beyond each event's first.
    pub retried: u64,
    /// Events refused by `publish`, by reason. They never entered the ring.
    pub dropped_before_accept: DropCounts,
    /// Events accepted into the ring and later given up on, by reason.
    pub dropped_after_accept: DropCounts,
    /// Events waiting in the ring.
    pub queue_depth: u64,
    /// Capacity of the ring.
    pub queue_capacity: u64,
    /// Events sent to the server and awaiting their acknowledgement.
    pub in_flight: u64,
    /// Whether the drain currently holds a live connection.
    pub connected: bool,
}

impl Stats {
    /// Every call to `publish` that reached the bus: accepted or refused.
    pub fn publish_calls(&self) -> u64 {
        self.accepted + self.dropped_before_accept.total()
    }

    /// Drops of one reason, before and after acceptance together.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped_before_accept.get(reason) + self.dropped_after_accept.get(reason)
    }

    /// Every drop, of every reason and stage.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_before_accept.total() + self.dropped_after_accept.total()
    }

    /// Accepted events not yet acknowledged or dropped: in the ring, in flight, or waiting
    /// for a retry. Zero after a successful flush with no concurrent publishers.
    pub fn pending(&self) -> u64 {
        self.accepted
            .saturating_sub(self.acked)
            .saturating_sub(self.dropped_after_accept.total())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_snake_case() {
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert!(labels
            .iter()
            .all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));

        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::COUNT);
    }

    #[test]
    fn reason_index_matches_position_in_all() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
    }

    #[test]
    fn batch_sizes_fall_into_the_smallest_fitting_bucket() {
        let counters = Counters::new();
        for size in [1, 2, 3, 4096, 4097] {
            counters.record_batch(size);
        }

        let buckets: Vec<u64> = counters
            .batch_buckets
            .iter()
            .map(|b| b.load(Relaxed))
            .collect();
        assert_eq!(buckets[0], 1); // 1
        assert_eq!(buckets[1], 1); // 2
        assert_eq!(buckets[2], 1); // 3 -> le 4
        assert_eq!(buckets[12], 1); // 4096
        assert_eq!(buckets[13], 1); // +Inf
        assert_eq!(counters.batch_sum.load(Relaxed), 1 + 2 + 3 + 4096 + 4097);
    }

    #[test]
    fn stages_are_counted_apart_and_summed_by_reason() {
        let counters = Counters::new();
        counters.drop_event(DropReason::QueueFull, Stage::BeforeAccept, 3);
        counters.drop_event(DropReason::QueueFull, Stage::AfterAccept, 2);
        counters.accepted.add(5, 10);

        let stats = counters.snapshot(0, 8);
        assert_eq!(stats.dropped(DropReason::QueueFull), 5);
        assert_eq!(stats.dropped_before_accept.total(), 3);
        assert_eq!(stats.publish_calls(), 13);
        assert_eq!(stats.pending(), 8);
        assert_eq!(counters.dropped(DropReason::QueueFull), 5);
    }
}
