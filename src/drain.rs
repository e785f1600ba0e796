//! The drain: one OS thread, with a tokio runtime of its own, that takes events out of the
//! ring and delivers them to JetStream.
//!
//! The drain publishes with core NATS, each event with a reply subject under one wildcard
//! inbox subscription (`_INBOX.<id>.<seq>`), and parses JetStream's acknowledgements itself.
//! That keeps many acknowledgements in flight on one subscription, without a channel or a
//! timer per message.
//!
//! Every event popped gets a sequence number; its `Nats-Msg-Id` header is the bus's id
//! followed by that number, and stays the same across retries, so the stream's duplicate
//! window stores a retried event once. The window of unresolved events is a deque indexed by
//! sequence number:
//!
//! ```text
//!   base = resolved_below                                   next_seq
//!    │                                                         │
//!    ▼                                                         ▼
//!   [ awaiting ack | acked (hole) | waiting to retry | ready | ... ]
//!    └────────────────── at most max-in-flight ─────────────────┘
//! ```
//!
//! Acknowledged and dropped events leave holes; the front advances past them, and `flush`
//! waits for it to pass the events it cares about. Acknowledgement deadlines are kept in send
//! order (they are monotonic, as the timeout is fixed), retries in a heap by due time.
//!
//! The drain never stops trying to connect while the bus lives; once connected, the NATS
//! client reconnects by itself, and events whose acknowledgement is lost with the connection
//! time out and are retried.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, HeaderMap, Message, StatusCode, Subject, Subscriber};
use futures_util::{FutureExt, StreamExt};
use tracing::{debug, info, warn};

use crate::bus::{Event, Shared};
use crate::config::Auth;
use crate::stats::{DropReason, Stage};

/// Where a bus's events go.
pub(crate) enum Sink {
    /// To JetStream over NATS.
    Nats,
    /// Into memory, for tests.
    #[cfg(feature = "testing")]
    Capture(crate::Capture),
}

/// The bus's hold on its drain thread.
pub(crate) struct Handle {
    thread: thread::JoinHandle<()>,
    done: mpsc::Receiver<()>,
}

impl Handle {
    /// Waits until the drain thread has ended, or until `deadline`.
    pub(crate) fn join_until(self, deadline: Instant) {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.done.recv_timeout(wait) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = self.thread.join();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                warn!(
                    "jetring drain did not stop before the shutdown deadline; leaving it to finish"
                );
            }
        }
    }
}

/// Starts the drain thread.
pub(crate) fn spawn(shared: Arc<Shared>, sink: Sink) -> io::Result<Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done_tx, done) = mpsc::channel();

    let thread = thread::Builder::new()
        .name("jetring-drain".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                match sink {
                    Sink::Nats => Drain::new(shared).run().await,
                    #[cfg(feature = "testing")]
                    Sink::Capture(capture) => Drain::new(shared).capture(capture).await,
                }
            });
            let _ = done_tx.send(());
        })?;

    Ok(Handle { thread, done })
}

/// An event taken from the ring and not yet acknowledged or dropped.
struct Pending {
    event: Event,
    /// Publish attempts made so far.
    attempts: u32,
    /// When the latest attempt was handed to the client.
    sent_at: Instant,
    /// Sent, and waiting for its acknowledgement (counted in the in-flight gauge).
    awaiting: bool,
    /// The reason to drop it with if the retries run out.
    last_failure: DropReason,
}

/// Why delivery on one connection ended.
enum Exit {
    /// The bus is shutting down.
    Closed,
    /// The connection is unusable; connect again.
    Lost,
}

/// How often a lingering drain looks at the ring (tokio's timers tick in milliseconds).
const LINGER_POLL: Duration = Duration::from_millis(1);

/// How many events may be handed to the client in one turn before the drain yields to the
/// connection task, which runs on the same thread.
const SEND_BURST: usize = 1024;

struct Drain {
    shared: Arc<Shared>,
    /// `<bus id>-`: the `Nats-Msg-Id` of an event is this followed by its sequence number.
    msg_id_prefix: String,
    /// Unresolved events by sequence number; `pending[0]` has sequence `base`.
    pending: VecDeque<Option<Pending>>,
    base: u64,
    next_seq: u64,
    /// Sequence numbers ready to be sent now: new events, and retries that are due.
    ready: VecDeque<u64>,
    /// Acknowledgement deadlines in send order: (deadline, sequence, attempt).
    deadlines: VecDeque<(Instant, u64, u32)>,
    /// Retries by due time: (due, sequence).
    retries: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Events sent and awaiting their acknowledgement.
    awaiting: usize,
    /// Whether the server answered "no responders" since the last acknowledgement.
    stream_missing: bool,
    /// Drop totals at the last log line, by reason.
    logged_drops: [u64; DropReason::ALL.len()],
    /// The last rejection the server gave, for the next drop log line.
    last_rejection: Option<String>,
    /// When the drain last took events from the ring; it lingers for a while after.
    last_taken: Instant,
}

impl Drain {
    fn new(shared: Arc<Shared>) -> Self {
        let max_in_flight = shared.settings.config.max_in_flight;
        Drain {
            shared,
            msg_id_prefix: format!("{}-", nuid::next()),
            pending: VecDeque::with_capacity(max_in_flight),
            base: 0,
            next_seq: 0,
            ready: VecDeque::with_capacity(max_in_flight),
            deadlines: VecDeque::with_capacity(max_in_flight),
            retries: BinaryHeap::new(),
            awaiting: 0,
            stream_missing: false,
            logged_drops: [0; DropReason::ALL.len()],
            last_rejection: None,
            last_taken: Instant::now(),
        }
    }

    async fn run(mut self) {
        while let Some(client) = self.connect().await {
            match self.deliver(&client).await {
                Exit::Closed => break,
                Exit::Lost => continue,
            }
        }
    }

    /// Connects, retrying with backoff until it succeeds or the bus closes.
    async fn connect(&mut self) -> Option<Client> {
        let shared = self.shared.clone();
        let config = &shared.settings.config;
        let mut backoff = config.connect_backoff;
        let mut failures = 0u64;

        loop {
            if self.shared.is_closed() {
                return None;
            }

            let attempt = tokio::select! {
                result = connect_options(&self.shared) => match result {
                    Ok(options) => {
                        let servers = self.shared.settings.servers.clone();
                        tokio::select! {
                            result = options.connect(servers) => result.map_err(|e| e.to_string()),
                            _ = self.shared.wake.notified() => continue,
                        }
                    }
                    Err(e) => Err(e.to_string()),
                },
                _ = self.shared.wake.notified() => continue,
            };

            match attempt {
                Ok(client) => {
                    self.shared.counters.connected.store(1, SeqCst);
                    info!(failed_attempts = failures, "jetring connected to NATS");
                    return Some(client);
                }
                Err(error) if failures == 0 => {
                    warn!(%error, "jetring cannot reach NATS; events wait in the ring while it retries");
                }
                Err(error) => {
                    debug!(%error, attempt = failures + 1, "jetring connection attempt failed")
                }
            }
            failures += 1;

            self.log_drops();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.shared.wake.notified() => {}
            }
            backoff = (backoff * 2).min(config.connect_backoff_max);
        }
    }

    /// Delivers events over one connection until the bus closes or the connection is lost.
    async fn deliver(&mut self, client: &Client) -> Exit {
        let inbox = format!("_INBOX.{}", nuid::next());
        let mut acks = match client.subscribe(format!("{inbox}.*")).await {
            Ok(subscriber) => subscriber,
            Err(error) => {
                warn!(%error, "jetring cannot subscribe to its acknowledgement inbox");
                return Exit::Lost;
            }
        };

        if let Some(stream) = self.shared.settings.config.stream.clone() {
            self.check_stream(client, &stream).await;
        }

        let log_interval = self.shared.settings.config.drop_log_interval;
        let mut next_log = Instant::now() + log_interval;

        loop {
            if self.shared.is_closed() {
                return Exit::Closed;
            }

            // Acknowledgements that have arrived already.
            while let Some(reply) = acks.next().now_or_never() {
                match reply {
                    Some(message) => self.on_reply(&message, &inbox),
                    None => return Exit::Lost,
                }
            }

            let now = Instant::now();
            self.expire(now);
            self.take_due_retries(now);
            self.take_from_ring();
            let sent = self.send(client, &inbox).await;
            self.publish_progress();

            if now >= next_log {
                self.log_drops();
                next_log = now + log_interval;
            }

            if sent > 0 {
                // Let the connection task, which shares this thread, write what was sent.
                tokio::task::yield_now().await;
                continue;
            }

            match self.idle(&mut acks, &inbox, next_log).await {
                Some(exit) => return exit,
                None => continue,
            }
        }
    }

    /// Waits for something to do: an acknowledgement, a producer's wake-up, or a deadline.
    async fn idle(
        &mut self,
        acks: &mut Subscriber,
        inbox: &str,
        next_log: Instant,
    ) -> Option<Exit> {
        let config = &self.shared.settings.config;
        let window_open = self.pending.len() < config.max_in_flight;
        let mut deadline = next_log;

        if window_open && self.ready.is_empty() {
            let now = Instant::now();
            if now < self.last_taken + config.linger {
                // Lingering: look at the ring again in a millisecond, without asking
                // producers for a wake-up.
                deadline = deadline.min(now + LINGER_POLL);
            } else {
                // Ask producers to wake us, unless an event slipped in meanwhile.
                if !self
                    .shared
                    .state
                    .prepare_sleep(|| self.shared.ring.is_empty())
                {
                    return None;
                }
            }
        }

        if let Some(&(at, _, _)) = self.deadlines.front() {
            deadline = deadline.min(at);
        }
        if let Some(Reverse((at, _))) = self.retries.peek() {
            deadline = deadline.min(*at);
        }

        let exit = tokio::select! {
            biased;
            reply = acks.next() => match reply {
                Some(message) => {
                    self.on_reply(&message, inbox);
                    None
                }
                None => Some(Exit::Lost),
            },
            _ = self.shared.wake.notified() => None,
            _ = tokio::time::sleep_until(deadline.into()) => None,
        };

        self.shared.state.awake();
        exit
    }

    /// Pops events from the ring while the window has room, up to one batch.
    fn take_from_ring(&mut self) {
        let config = &self.shared.settings.config;
        let room = config.max_in_flight.saturating_sub(self.pending.len());
        let want = room.min(config.batch_size);

        let counters = &self.shared.counters;
        counters.taking.fetch_add(1, SeqCst);
        let mut popped = 0;
        while popped < want {
            let Some(event) = self.shared.ring.pop() else {
                break;
            };
            self.pending.push_back(Some(Pending {
                event,
                attempts: 0,
                sent_at: Instant::now(),
                awaiting: false,
                last_failure: DropReason::Publish,
            }));
            self.ready.push_back(self.next_seq);
            self.next_seq += 1;
            popped += 1;
        }

        if popped > 0 {
            counters.taken.fetch_add(popped as u64, SeqCst);
        }
        counters.taking.fetch_sub(1, SeqCst);
        if popped > 0 {
            counters.record_batch(popped);
            self.last_taken = Instant::now();
        }
    }

    fn take_due_retries(&mut self, now: Instant) {
        while let Some(&Reverse((due, seq))) = self.retries.peek() {
            if due > now {
                break;
            }
            self.retries.pop();
            if self.slot(seq).is_some_and(|p| !p.awaiting) {
                self.ready.push_back(seq);
            }
        }
    }

    /// Hands ready events to the client. Returns how many were sent.
    async fn send(&mut self, client: &Client, inbox: &str) -> usize {
        let mut sent = 0;
        while sent < SEND_BURST {
            let Some(seq) = self.ready.pop_front() else {
                break;
            };
            match self.attempt(client, inbox, seq).await {
                Attempt::Sent => sent += 1,
                Attempt::Resolved => {}
                Attempt::Stuck => break,
            }
        }
        sent
    }

    async fn attempt(&mut self, client: &Client, inbox: &str, seq: u64) -> Attempt {
        let ack_timeout = self.shared.settings.config.ack_timeout;
        let msg_id = format!("{}{seq}", self.msg_id_prefix);
        let reply = format!("{inbox}.{seq}");

        let Some(pending) = self.slot_mut(seq) else {
            return Attempt::Resolved;
        };
        let Ok(subject) = Subject::from_utf8(pending.event.subject()) else {
            // Subjects are written from `&str`s, so this is unreachable in practice; still,
            // an event that cannot be sent is counted, not lost.
            self.resolve(seq, Some(DropReason::InvalidSubject));
            return Attempt::Resolved;
        };
        let payload = pending.event.payload();
        pending.attempts += 1;
        let attempts = pending.attempts;

        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);

        // The client takes the message at once unless its queue is full (the connection is
        // down). Wait for room at most an ack timeout, and not at all once the bus closes.
        let shared = self.shared.clone();
        let publish = client.publish_with_reply_and_headers(subject, reply, headers, payload);
        let publish = tokio::time::timeout(ack_timeout, publish);
        tokio::pin!(publish);
        let outcome = loop {
            tokio::select! {
                outcome = &mut publish => break Some(outcome),
                _ = shared.wake.notified() => {
                    if shared.is_closed() {
                        break None;
                    }
                }
            }
        };

        let counters = &self.shared.counters;
        match outcome {
            Some(Ok(Ok(()))) => {
                let now = Instant::now();
                counters.published.fetch_add(1, Relaxed);
                if attempts > 1 {
                    counters.retried.fetch_add(1, Relaxed);
                }
                if let Some(pending) = self.slot_mut(seq) {
                    pending.sent_at = now;
                    pending.awaiting = true;
                }
                self.awaiting += 1;
                self.deadlines.push_back((now + ack_timeout, seq, attempts));
                Attempt::Sent
            }
            Some(Ok(Err(error))) => match error.kind() {
                async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                    self.resolve(seq, Some(DropReason::TooLarge));
                    Attempt::Resolved
                }
                async_nats::client::PublishErrorKind::InvalidSubject => {
                    self.resolve(seq, Some(DropReason::InvalidSubject));
                    Attempt::Resolved
                }
                _ => {
                    self.fail(seq, DropReason::Publish);
                    Attempt::Stuck
                }
            },
            Some(Err(_elapsed)) => {
                // The client's queue stayed full for a whole ack timeout: the connection is
                // down. Everything still ready waits for the next turn.
                self.fail(seq, DropReason::Publish);
                Attempt::Stuck
            }
            None => {
                // Closing: the event stays pending and is counted when the drain stops.
                Attempt::Stuck
            }
        }
    }

    /// Handles one message on the acknowledgement inbox.
    fn on_reply(&mut self, message: &Message, inbox: &str) {
        let Some(seq) = reply_seq(message.subject.as_str(), inbox) else {
            return;
        };
        if self.slot(seq).is_none() {
            // A late answer to an attempt already resolved by another one.
            return;
        }

        if message.status == Some(StatusCode::NO_RESPONDERS) {
            if !self.stream_missing {
                self.stream_missing = true;
                warn!(
                    subject_prefix = %self.shared.settings.config.subject_prefix,
                    "no JetStream stream is bound to the event subjects; events are retried, then dropped as no_stream"
                );
            }
            self.fail_if_awaiting(seq, DropReason::NoStream);
            return;
        }
        if message
            .status
            .is_some_and(|status| status != StatusCode::OK)
        {
            self.fail_if_awaiting(seq, DropReason::Ack);
            return;
        }

        match parse_ack(&message.payload) {
            Ack::Stored { duplicate } => {
                if duplicate {
                    self.shared.counters.duplicates.fetch_add(1, Relaxed);
                }
                if self.stream_missing {
                    self.stream_missing = false;
                    info!("a JetStream stream acknowledges events again");
                }
                self.resolve(seq, None);
            }
            Ack::Retry(description) => {
                self.last_rejection = Some(description);
                self.fail_if_awaiting(seq, DropReason::Ack);
            }
            Ack::Rejected {
                reason,
                description,
            } => {
                self.last_rejection = Some(description);
                self.resolve(seq, Some(reason));
            }
        }
    }

    /// Gives up on acknowledgements whose deadline has passed.
    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, seq, attempt)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let current = self
                .slot(seq)
                .is_some_and(|p| p.awaiting && p.attempts == attempt);
            if current {
                self.fail(seq, DropReason::Ack);
            }
        }
    }

    fn fail_if_awaiting(&mut self, seq: u64, reason: DropReason) {
        if self.slot(seq).is_some_and(|p| p.awaiting) {
            self.fail(seq, reason);
        }
    }

    /// Records a failed attempt: schedules a retry, or drops the event once retries run out.
    fn fail(&mut self, seq: u64, reason: DropReason) {
        let config = &self.shared.settings.config;
        let (max_retries, backoff, backoff_max) = (
            config.max_retries,
            config.retry_backoff,
            config.retry_backoff_max,
        );

        let Some(pending) = self.slot_mut(seq) else {
            return;
        };
        let was_awaiting = std::mem::replace(&mut pending.awaiting, false);
        pending.last_failure = reason;
        let attempts = pending.attempts;

        if was_awaiting {
            self.awaiting -= 1;
        }

        if attempts > max_retries {
            self.resolve(seq, Some(reason));
            return;
        }

        let doublings = attempts.saturating_sub(1).min(20);
        let delay = backoff.saturating_mul(1 << doublings).min(backoff_max);
        self.retries.push(Reverse((Instant::now() + delay, seq)));
    }

    /// Ends an event's life: acknowledged (`None`) or dropped with a reason.
    fn resolve(&mut self, seq: u64, dropped: Option<DropReason>) {
        let Some(index) = self.index(seq) else { return };
        let Some(pending) = self.pending[index].take() else {
            return;
        };

        if pending.awaiting {
            self.awaiting -= 1;
        }

        let counters = &self.shared.counters;
        match dropped {
            None => {
                counters.acked.fetch_add(1, Relaxed);
                let micros = pending.sent_at.elapsed().as_micros().min(u64::MAX as u128) as u64;
                if let Ok(mut latency) = self.shared.latency.lock() {
                    latency.saturating_record(micros.max(1));
                }
            }
            Some(reason) => counters.drop_event(reason, Stage::AfterAccept, 1),
        }

        while let Some(None) = self.pending.front() {
            self.pending.pop_front();
            self.base += 1;
        }
    }

    /// Publishes the window's state for `flush` and the gauges.
    fn publish_progress(&self) {
        let counters = &self.shared.counters;
        counters.in_flight.store(self.awaiting as u64, Relaxed);
        counters.resolved_below.store(self.base, SeqCst);
    }

    fn index(&self, seq: u64) -> Option<usize> {
        let offset = seq.checked_sub(self.base)?;
        let index = usize::try_from(offset).ok()?;
        (index < self.pending.len()).then_some(index)
    }

    fn slot(&self, seq: u64) -> Option<&Pending> {
        self.index(seq).and_then(|i| self.pending[i].as_ref())
    }

    fn slot_mut(&mut self, seq: u64) -> Option<&mut Pending> {
        self.index(seq).and_then(|i| self.pending[i].as_mut())
    }

    async fn check_stream(&self, client: &Client, stream: &str) {
        let context = async_nats::jetstream::new(client.clone());
        let lookup = tokio::time::timeout(
            self.shared.settings.config.ack_timeout,
            context.get_stream(stream),
        );
        match lookup.await {
            Ok(Ok(_)) => info!(stream, "jetring found its JetStream stream"),
            Ok(Err(error)) => warn!(
                stream, %error,
                "jetring's JetStream stream is missing; events will be dropped as no_stream until it exists"
            ),
            Err(_) => warn!(
                stream,
                "jetring could not look up its JetStream stream in time"
            ),
        }
    }

    /// Logs one line per reason whose drop count grew since the last line.
    fn log_drops(&mut self) {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            let total = self.shared.counters.dropped(*reason);
            let since = total.saturating_sub(self.logged_drops[i]);
            if since > 0 {
                let rejection = self.last_rejection.as_deref().unwrap_or("");
                warn!(
                    reason = reason.as_str(),
                    count = since,
                    total,
                    last_rejection = rejection,
                    "jetring dropped events"
                );
                self.logged_drops[i] = total;
            }
        }
        self.last_rejection = None;
    }

    /// Delivers events into a capture instead of a server, acknowledging each at once.
    #[cfg(feature = "testing")]
    async fn capture(mut self, capture: crate::Capture) {
        let shared = self.shared.clone();
        let config = &shared.settings.config;
        let counters = &shared.counters;
        let mut next_log = Instant::now() + config.drop_log_interval;

        loop {
            if self.shared.is_closed() {
                break;
            }

            counters.taking.fetch_add(1, SeqCst);
            let mut taken = 0u64;
            while (taken as usize) < config.batch_size {
                let Some(event) = self.shared.ring.pop() else {
                    break;
                };
                capture.push(&event, &format!("{}{}", self.msg_id_prefix, self.next_seq));
                self.next_seq += 1;
                taken += 1;
            }
            if taken > 0 {
                counters.taken.fetch_add(taken, SeqCst);
            }
            counters.taking.fetch_sub(1, SeqCst);

            if taken > 0 {
                counters.record_batch(taken as usize);
                counters.published.fetch_add(taken, Relaxed);
                counters.acked.fetch_add(taken, Relaxed);
                self.base = self.next_seq;
                self.publish_progress();
                continue;
            }

            if Instant::now() >= next_log {
                self.log_drops();
                next_log = Instant::now() + config.drop_log_interval;
            }

            if self
                .shared
                .state
                .prepare_sleep(|| self.shared.ring.is_empty())
            {
                tokio::select! {
                    _ = self.shared.wake.notified() => {}
                    _ = tokio::time::sleep_until(next_log.into()) => {}
                }
                self.shared.state.awake();
            }
        }
    }
}

impl Drop for Drain {
    /// Counts everything still pending as a `shutdown` drop. Runs when the drain stops, and
    /// also if it panics, so no event disappears uncounted.
    fn drop(&mut self) {
        let counters = &self.shared.counters;
        let left = self.pending.iter().flatten().count() as u64;
        if left > 0 {
            counters.drop_event(DropReason::Shutdown, Stage::AfterAccept, left);
        }
        self.pending.clear();
        self.shared.reap();

        counters.in_flight.store(0, Relaxed);
        counters.connected.store(0, SeqCst);
        counters.resolved_below.store(u64::MAX, SeqCst);
        self.log_drops();
    }
}

enum Attempt {
    /// Handed to the client; now awaiting its acknowledgement.
    Sent,
    /// Dropped, or already resolved: nothing to wait for.
    Resolved,
    /// The client could not take it; stop sending for this turn.
    Stuck,
}

/// The sequence number at the end of a reply subject `<inbox>.<seq>`.
fn reply_seq(subject: &str, inbox: &str) -> Option<u64> {
    let digits = subject.strip_prefix(inbox)?.strip_prefix('.')?;
    digits.parse().ok()
}

/// What a JetStream publish acknowledgement says.
#[derive(Debug, PartialEq, Eq)]
enum Ack {
    /// Stored; `duplicate` if the stream had it already (a retry recognised by its id).
    Stored { duplicate: bool },
    /// A transient refusal worth retrying.
    Retry(String),
    /// A refusal that retrying will not change.
    Rejected {
        reason: DropReason,
        description: String,
    },
}

/// Parses an acknowledgement: `{"stream":"S","seq":1}`, possibly with `"duplicate":true`, or
/// `{"error":{"code":503,"err_code":10077,"description":"…"}}`.
fn parse_ack(payload: &[u8]) -> Ack {
    #[derive(serde::Deserialize)]
    struct Reply {
        error: Option<ReplyError>,
        #[serde(default)]
        duplicate: bool,
        /// Only whether it is there matters.
        #[serde(default)]
        stream: Option<serde::de::IgnoredAny>,
    }
    #[derive(serde::Deserialize)]
    struct ReplyError {
        #[serde(default)]
        code: u16,
        #[serde(default)]
        err_code: u32,
        #[serde(default)]
        description: String,
    }

    // JetStream error code for "message size exceeds maximum allowed".
    const MESSAGE_SIZE_EXCEEDED: u32 = 10054;

    match serde_json::from_slice::<Reply>(payload) {
        Ok(Reply {
            error: Some(error), ..
        }) => {
            let description = format!("{} ({}/{})", error.description, error.code, error.err_code);
            if error.err_code == MESSAGE_SIZE_EXCEEDED {
                Ack::Rejected {
                    reason: DropReason::TooLarge,
                    description,
                }
            } else if error.code == 503 || error.code == 408 {
                Ack::Retry(description)
            } else {
                Ack::Rejected {
                    reason: DropReason::Ack,
                    description,
                }
            }
        }
        Ok(Reply {
            stream: Some(_),
            duplicate,
            ..
        }) => Ack::Stored { duplicate },
        _ => Ack::Retry(format!(
            "unrecognised acknowledgement: {}",
            String::from_utf8_lossy(&payload[..payload.len().min(200)])
        )),
    }
}

/// Builds the client options from the settings.
async fn connect_options(shared: &Arc<Shared>) -> io::Result<ConnectOptions> {
    let config = &shared.settings.config;
    let events = shared.clone();
    let reconnect_base = config.connect_backoff;
    let reconnect_max = config.connect_backoff_max;

    let mut options = ConnectOptions::new()
        .name(&config.connection_name)
        .connection_timeout(reconnect_max.clamp(Duration::from_secs(1), Duration::from_secs(5)))
        .client_capacity(config.max_in_flight.max(2048))
        .max_reconnects(None)
        // Every subject jetring sends is checked before it is accepted: the prefix by the
        // config, the event name by `publish`, and the reply subject is its own inbox.
        .skip_subject_validation(true)
        .reconnect_delay_callback(move |attempts| {
            let doublings = attempts.saturating_sub(1).min(20) as u32;
            reconnect_base
                .saturating_mul(1 << doublings)
                .min(reconnect_max)
        })
        .event_callback(move |event| {
            let shared = events.clone();
            async move { on_connection_event(&shared, event) }
        });

    options = match &shared.settings.auth {
        Auth::None => options,
        Auth::Token(token) => options.token(token.expose().to_owned()),
        Auth::UserPassword(user, pass) => {
            options.user_and_password(user.clone(), pass.expose().to_owned())
        }
        Auth::NKey(seed) => options.nkey(seed.expose().to_owned()),
        Auth::CredentialsFile(path) => options.credentials_file(path).await?,
    };

    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.require_tls {
        options = options.require_tls(true);
    }
    Ok(options)
}

/// Keeps the connection gauge current and logs each change of state once.
fn on_connection_event(shared: &Shared, event: async_nats::Event) {
    let connected = &shared.counters.connected;
    match event {
        async_nats::Event::Connected => {
            if connected.swap(1, SeqCst) == 0 {
                info!("jetring connected to NATS");
            }
        }
        async_nats::Event::Disconnected | async_nats::Event::Closed => {
            if connected.swap(0, SeqCst) == 1 {
                warn!("jetring disconnected from NATS; reconnecting, events wait in the ring");
            }
        }
        async_nats::Event::SlowConsumer(_) => {
            warn!("jetring's acknowledgement inbox overflowed; lost acknowledgements will time out and be retried");
        }
        other => warn!(event = %other, "jetring NATS connection event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_parsed() {
        assert_eq!(
            parse_ack(br#"{"stream":"EVENTS","seq":12}"#),
            Ack::Stored { duplicate: false }
        );
        assert_eq!(
            parse_ack(br#"{"stream":"EVENTS","seq":12,"duplicate":true}"#),
            Ack::Stored { duplicate: true }
        );
        assert!(matches!(
            parse_ack(br#"{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}}"#),
            Ack::Rejected { reason: DropReason::TooLarge, .. }
        ));
        assert!(matches!(
            parse_ack(br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#),
            Ack::Retry(_)
        ));
        assert!(matches!(
            parse_ack(br#"{"error":{"code":400,"err_code":10060,"description":"expected stream does not match"}}"#),
            Ack::Rejected { reason: DropReason::Ack, .. }
        ));
        assert!(matches!(parse_ack(b"garbage"), Ack::Retry(_)));
    }

    #[test]
    fn reply_subjects_map_back_to_sequence_numbers() {
        assert_eq!(reply_seq("_INBOX.abc.42", "_INBOX.abc"), Some(42));
        assert_eq!(reply_seq("_INBOX.abc.x", "_INBOX.abc"), None);
        assert_eq!(reply_seq("_INBOX.other.42", "_INBOX.abc"), None);
        assert_eq!(reply_seq("_INBOX.abc42", "_INBOX.abc"), None);
    }
}
