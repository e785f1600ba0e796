//! Faults of a single server, injected by the tests themselves: a server that is down when the
//! bus starts, killed and restarted mid-stream, paused, a stream that is missing or deleted,
//! and a shutdown with nothing to deliver to.
//!
//! Every test ends by checking the conservation law against what the stream really holds,
//! read back message by message: every publish call is accepted or dropped before acceptance,
//! every accepted event is acknowledged or dropped after acceptance, and the acknowledged
//! events are exactly the distinct events stored, none of them twice.

mod common;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, Once, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::StorageType;
use common::NatsServer;
use jetring::{Bus, Config, DropReason, Overflow, Stats};
use serde_json::json;

const STREAM: &str = "EVENTS";

/// Long enough for any flush here to finish on a loaded machine; a flush that needs it has
/// found a bug.
const FLUSH: Duration = Duration::from_secs(30);

/// Events per burst of [`publish_steadily`], and the pause after each burst: about 2,500
/// events a second, a pace a debug build delivers with room to spare.
const BURST: u64 = 25;
const PAUSE: Duration = Duration::from_millis(10);

/// A configuration for `server` that reconnects quickly and retries for long enough to ride
/// over a restart of a few seconds: 20 retries, 500 ms ack timeout, 50 ms to 500 ms backoff.
fn patient_config(server: &NatsServer) -> Config {
    Config::new(1)
        .servers([server.url()])
        .stream(STREAM)
        .ack_timeout(Duration::from_millis(500))
        .retries(20, Duration::from_millis(50), Duration::from_millis(500))
        .connect_backoff(Duration::from_millis(50), Duration::from_millis(500))
}

/// Starts a server with a file stream on `event.>`.
fn server_with_file_stream() -> NatsServer {
    let server = NatsServer::start();
    common::create_stream_blocking(&server.url(), STREAM, &["event.>"], StorageType::File, 1);
    server
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn connected_bus(config: Config) -> Bus {
    let bus = Bus::new(config).expect("valid config");
    wait_until("the bus connects", Duration::from_secs(20), || {
        bus.stats().connected
    });
    bus
}

fn read_stream(server: &NatsServer) -> Vec<common::StoredMessage> {
    common::stream_messages_blocking(&server.url(), STREAM)
}

/// Publishes events whose bodies are the numbers of `range`, and returns the slowest call.
fn publish_numbered(bus: &Bus, range: std::ops::Range<u64>) -> Duration {
    let mut slowest = Duration::ZERO;
    for index in range {
        let started = Instant::now();
        bus.publish("numbered", &index);
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// Publishes events numbered from 0, [`BURST`] at a time with a [`PAUSE`] after each burst,
/// until `stop` is set. Keeps `published` current after each burst and returns the slowest
/// call.
fn publish_steadily(bus: &Bus, stop: &AtomicBool, published: &AtomicU64) -> Duration {
    let mut slowest = Duration::ZERO;
    let mut index = 0;
    while !stop.load(Relaxed) {
        slowest = slowest.max(publish_numbered(bus, index..index + BURST));
        index += BURST;
        published.store(index, Relaxed);
        thread::sleep(PAUSE);
    }
    slowest
}

fn numbers(range: std::ops::Range<u64>) -> Vec<serde_json::Value> {
    range.map(|index| json!(index)).collect()
}

// ---------------------------------------------------------------------------------------
// Server down at start
// ---------------------------------------------------------------------------------------

/// Starts a server, creates a file stream on `event.>` and stops the server again. The port
/// and store stay reserved for it, and the stream is there the moment it restarts, so the
/// bus's first connection meets a stream rather than racing its creation.
fn stopped_server_with_stream() -> NatsServer {
    let mut server = server_with_file_stream();
    server.stop();
    server
}

#[test]
fn server_down_at_start_events_wait_in_the_ring_and_the_excess_is_dropped_newest() {
    const CAPACITY: usize = 1_000;
    const EVENTS: u64 = 3_000;

    let mut server = stopped_server_with_stream();
    let bus = Bus::new(patient_config(&server).ring_capacity(CAPACITY))
        .expect("an unreachable server is not an error");

    let slowest = publish_numbered(&bus, 0..EVENTS);
    println!("slowest of {EVENTS} publishes with the server down: {slowest:?}");

    let stats = bus.stats();
    assert!(!stats.connected);
    assert_eq!(stats.queue_depth, CAPACITY as u64, "{stats:?}");
    assert_eq!(stats.accepted, CAPACITY as u64, "{stats:?}");
    assert_eq!(
        stats.dropped_before_accept.get(DropReason::QueueFull),
        EVENTS - CAPACITY as u64,
        "{stats:?}"
    );

    server.restart();
    bus.flush(FLUSH).expect("flush once the server is up");

    let stats = bus.stats();
    println!("{}", common::summary(&stats));
    let bodies = common::assert_conserved(EVENTS, &stats, &read_stream(&server));
    assert_eq!(
        bodies,
        numbers(0..CAPACITY as u64),
        "the oldest events are kept"
    );
    assert_eq!(stats.dropped_total(), EVENTS - CAPACITY as u64);
}

#[test]
fn server_down_at_start_with_drop_oldest_delivers_the_newest_ring_full() {
    const CAPACITY: usize = 1_000;
    const EVENTS: u64 = 3_000;

    let mut server = stopped_server_with_stream();
    let config = patient_config(&server)
        .ring_capacity(CAPACITY)
        .overflow(Overflow::DropOldest);
    let bus = Bus::new(config).expect("an unreachable server is not an error");

    let slowest = publish_numbered(&bus, 0..EVENTS);
    println!("slowest of {EVENTS} publishes with the server down: {slowest:?}");

    let stats = bus.stats();
    assert!(!stats.connected);
    assert_eq!(stats.queue_depth, CAPACITY as u64, "{stats:?}");
    assert_eq!(stats.accepted, EVENTS, "drop-oldest accepts every event");
    assert_eq!(
        stats.dropped_after_accept.get(DropReason::QueueFull),
        EVENTS - CAPACITY as u64,
        "the displaced events are dropped after acceptance: {stats:?}"
    );

    server.restart();
    bus.flush(FLUSH).expect("flush once the server is up");

    let stats = bus.stats();
    println!("{}", common::summary(&stats));
    let bodies = common::assert_conserved(EVENTS, &stats, &read_stream(&server));
    assert_eq!(
        bodies,
        numbers(EVENTS - CAPACITY as u64..EVENTS),
        "the newest events are kept"
    );
    assert_eq!(stats.dropped_total(), EVENTS - CAPACITY as u64);
}

// ---------------------------------------------------------------------------------------
// Server killed and restarted
// ---------------------------------------------------------------------------------------

#[test]
fn server_sigkilled_mid_stream_and_restarted_loses_no_event_and_stores_none_twice() {
    let mut server = server_with_file_stream();
    let bus = connected_bus(patient_config(&server));
    let stop = AtomicBool::new(false);
    let published = AtomicU64::new(0);

    let slowest = thread::scope(|scope| {
        let publisher = scope.spawn(|| publish_steadily(&bus, &stop, &published));

        wait_until("events flow", FLUSH, || bus.stats().acked >= 2_000);
        server.kill();
        let killed_at = published.load(Relaxed);
        thread::sleep(Duration::from_secs(1));
        server.restart();
        println!(
            "killed after {killed_at} events, back after {}",
            published.load(Relaxed)
        );

        // Keep publishing until events sent after the restart are acknowledged too.
        let after_restart = published.load(Relaxed) + 2_000;
        wait_until("delivery resumes", FLUSH, || {
            bus.stats().acked >= after_restart
        });
        stop.store(true, Relaxed);
        publisher.join().expect("the publisher does not panic")
    });
    bus.flush(FLUSH).expect("flush after the restart");
    println!("slowest publish: {slowest:?}");

    let calls = published.load(Relaxed);
    let stats = bus.stats();
    println!("{}", common::summary(&stats));
    let bodies = common::assert_conserved(calls, &stats, &read_stream(&server));

    assert!(stats.retried > 0, "the restart forces retries: {stats:?}");
    assert_eq!(
        stats.dropped_total(),
        0,
        "the ring and the retries cover a restart of a few seconds: {stats:?}"
    );
    let mut stored: Vec<u64> = bodies.iter().filter_map(|body| body.as_u64()).collect();
    stored.sort_unstable();
    assert_eq!(
        stored,
        (0..calls).collect::<Vec<_>>(),
        "every event is stored"
    );
}

// ---------------------------------------------------------------------------------------
// Missing stream
// ---------------------------------------------------------------------------------------

/// Everything the `tracing` subscriber of this test binary has written.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends the `tracing` output of every thread, the drain threads included, to [`LOG`].
fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
            .with_writer(|| LogWriter)
            .try_init()
            .expect("no other subscriber is installed in this test binary");
    });
}

/// Log lines that contain every one of `needles`.
fn log_lines_with(needles: &[&str]) -> Vec<String> {
    let log = LOG.lock().unwrap_or_else(PoisonError::into_inner);
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|line| needles.iter().all(|needle| line.contains(needle)))
        .map(str::to_owned)
        .collect()
}

/// A bus on `server` publishing under `prefix`, giving up quickly on a missing stream.
fn bus_without_patience(server: &NatsServer, prefix: &str) -> Bus {
    let config = Config::new(1)
        .servers([server.url()])
        .subject_prefix(prefix)
        .retries(2, Duration::from_millis(20), Duration::from_millis(20));
    connected_bus(config)
}

const NO_STREAM_WARNING: &str = "no JetStream stream is bound to the event subjects";

#[test]
fn stream_missing_at_start_drops_as_no_stream_then_delivery_resumes_once_created() {
    const PREFIX: &str = "missing";
    const PHASE: u64 = 50;

    capture_logs();
    let server = NatsServer::start();
    let bus = bus_without_patience(&server, PREFIX);

    publish_numbered(&bus, 0..PHASE);
    bus.flush(FLUSH).expect("flush without a stream");
    let stats = bus.stats();
    assert_eq!(
        stats.dropped_after_accept.get(DropReason::NoStream),
        PHASE,
        "{stats:?}"
    );
    assert_eq!(stats.acked, 0);

    common::create_stream_blocking(
        &server.url(),
        STREAM,
        &[&format!("{PREFIX}.>")],
        StorageType::File,
        1,
    );
    publish_numbered(&bus, PHASE..2 * PHASE);
    bus.flush(FLUSH).expect("flush once the stream exists");

    let stats = bus.stats();
    println!("{}", common::summary(&stats));
    let bodies = common::assert_conserved(2 * PHASE, &stats, &read_stream(&server));
    assert_eq!(bodies, numbers(PHASE..2 * PHASE));
    assert_eq!(stats.dropped(DropReason::NoStream), PHASE);
    assert_eq!(stats.dropped_total(), PHASE);

    let warnings = log_lines_with(&[NO_STREAM_WARNING, &format!("subject_prefix={PREFIX}")]);
    assert_eq!(
        warnings.len(),
        1,
        "one warning for one missing stream, not one per event: {warnings:#?}"
    );
}

#[test]
fn stream_deleted_mid_run_drops_as_no_stream_then_delivery_resumes_once_recreated() {
    const PREFIX: &str = "deleted";
    const PHASE: u64 = 50;

    capture_logs();
    let server = NatsServer::start();
    let subjects = [format!("{PREFIX}.>")];
    let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
    common::create_stream_blocking(&server.url(), STREAM, &subjects, StorageType::File, 1);
    let bus = bus_without_patience(&server, PREFIX);

    publish_numbered(&bus, 0..PHASE);
    bus.flush(FLUSH).expect("flush with the stream");
    let before_delete = read_stream(&server);
    assert_eq!(bus.stats().acked, PHASE);

    common::delete_stream_blocking(&server.url(), STREAM);
    publish_numbered(&bus, PHASE..2 * PHASE);
    bus.flush(FLUSH).expect("flush without the stream");
    let stats = bus.stats();
    assert_eq!(
        stats.dropped_after_accept.get(DropReason::NoStream),
        PHASE,
        "{stats:?}"
    );

    common::create_stream_blocking(&server.url(), STREAM, &subjects, StorageType::File, 1);
    publish_numbered(&bus, 2 * PHASE..3 * PHASE);
    bus.flush(FLUSH).expect("flush once the stream is back");
    let after_recreate = read_stream(&server);

    let stats = bus.stats();
    println!("{}", common::summary(&stats));
    let stored: Vec<_> = before_delete.into_iter().chain(after_recreate).collect();
    let bodies = common::assert_conserved(3 * PHASE, &stats, &stored);
    let expected: Vec<_> = numbers(0..PHASE)
        .into_iter()
        .chain(numbers(2 * PHASE..3 * PHASE))
        .collect();
    assert_eq!(bodies, expected);
    assert_eq!(stats.dropped_total(), PHASE);

    let warnings = log_lines_with(&[NO_STREAM_WARNING, &format!("subject_prefix={PREFIX}")]);
    assert_eq!(
        warnings.len(),
        1,
        "one warning for one deletion, not one per event: {warnings:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Stalled server
// ---------------------------------------------------------------------------------------

/// The largest in-flight gauge and queue depth seen while sampling a bus.
#[derive(Debug, Default)]
struct Peaks {
    in_flight: u64,
    queue_depth: u64,
}

fn sample_peaks(bus: &Bus, stop: &AtomicBool) -> Peaks {
    let mut peaks = Peaks::default();
    while !stop.load(Relaxed) {
        let stats = bus.stats();
        peaks.in_flight = peaks.in_flight.max(stats.in_flight);
        peaks.queue_depth = peaks.queue_depth.max(stats.queue_depth);
        thread::sleep(Duration::from_millis(1));
    }
    peaks
}

#[test]
fn stalled_server_fills_the_ring_never_blocks_publish_and_loses_nothing_accepted() {
    const CAPACITY: usize = 1_024;
    const MAX_IN_FLIGHT: usize = 128;
    const STALL: Duration = Duration::from_secs(3);

    let mut server = server_with_file_stream();
    let config = patient_config(&server)
        .ring_capacity(CAPACITY)
        .max_in_flight(MAX_IN_FLIGHT)
        .batch_size(32)
        .ack_timeout(Duration::from_secs(1));
    let bus = connected_bus(config);
    let stop_publisher = AtomicBool::new(false);
    let stop_sampler = AtomicBool::new(false);
    let published = AtomicU64::new(0);

    let (slowest, peaks, stall_stats) = thread::scope(|scope| {
        let sampler = scope.spawn(|| sample_peaks(&bus, &stop_sampler));
        let publisher = scope.spawn(|| publish_steadily(&bus, &stop_publisher, &published));

        wait_until("events flow", FLUSH, || bus.stats().acked >= 1_000);
        server.pause();
        let paused_at = Instant::now();
        wait_until("the ring overflows during the stall", FLUSH, || {
            let stats = bus.stats();
            stats.queue_depth == CAPACITY as u64
                && stats.dropped_before_accept.get(DropReason::QueueFull) > 0
        });
        thread::sleep(STALL.saturating_sub(paused_at.elapsed()));
        let stall_stats = bus.stats();
        server.resume();

        let after_resume = published.load(Relaxed) + 1_000;
        wait_until("delivery resumes", FLUSH, || {
            bus.stats().acked >= after_resume
        });
        stop_publisher.store(true, Relaxed);
        let slowest = publisher.join().expect("the publisher does not panic");
        stop_sampler.store(true, Relaxed);
        let peaks = sampler.join().expect("the sampler does not panic");
        (slowest, peaks, stall_stats)
    });
    bus.flush(FLUSH).expect("flush after the stall");

    println!("slowest publish: {slowest:?}; peaks {peaks:?}");
    println!("at the end of the stall: {}", common::summary(&stall_stats));
    assert!(
        peaks.in_flight <= MAX_IN_FLIGHT as u64,
        "the in-flight window is bounded: {peaks:?}"
    );
    assert!(peaks.queue_depth <= CAPACITY as u64, "{peaks:?}");
    assert_eq!(
        stall_stats.queue_depth, CAPACITY as u64,
        "the ring fills during the stall: {stall_stats:?}"
    );
    assert!(stall_stats.dropped_before_accept.get(DropReason::QueueFull) > 0);

    let calls = published.load(Relaxed);
    let stats = bus.stats();
    println!("{}", common::summary(&stats));
    common::assert_conserved(calls, &stats, &read_stream(&server));
    assert_eq!(
        stats.dropped_total(),
        stats.dropped_before_accept.get(DropReason::QueueFull),
        "a stall shorter than the retries loses only what the ring could not hold: {stats:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Shutdown with the server gone
// ---------------------------------------------------------------------------------------

/// Kills the server under a connected bus, publishes `events` more, and shuts down within
/// two seconds. Checks the deadline and the accounting against the stream, read back after a
/// restart, and returns the final statistics.
fn shutdown_after_kill(config: Config, server: &mut NatsServer, events: u64) -> Stats {
    const DELIVERED: u64 = 100;
    const DEADLINE: Duration = Duration::from_secs(2);
    const SLACK: Duration = Duration::from_secs(1);

    let bus = connected_bus(config);
    publish_numbered(&bus, 0..DELIVERED);
    bus.flush(FLUSH).expect("flush while the server is up");

    server.kill();
    publish_numbered(&bus, DELIVERED..DELIVERED + events);

    let started = Instant::now();
    let stats = bus.shutdown(DEADLINE);
    let elapsed = started.elapsed();
    println!("shutdown took {elapsed:?}: {}", common::summary(&stats));
    assert!(
        elapsed < DEADLINE + SLACK,
        "shutdown took {elapsed:?}, deadline {DEADLINE:?}"
    );
    assert_eq!(
        stats.pending(),
        0,
        "shutdown returned with events neither acknowledged nor counted: {stats:?}"
    );

    // Published after shutdown: counted, not lost.
    publish_numbered(&bus, DELIVERED + events..DELIVERED + events + 10);
    let stats_after = bus.stats();
    assert_eq!(
        stats_after.dropped(DropReason::Shutdown),
        stats.dropped(DropReason::Shutdown) + 10,
        "{stats_after:?}"
    );

    server.restart();
    let bodies =
        common::assert_conserved(DELIVERED + events + 10, &stats_after, &read_stream(server));
    assert_eq!(bodies, numbers(0..DELIVERED));
    stats
}

#[test]
fn shutdown_with_the_server_killed_returns_by_its_deadline_and_counts_the_rest_as_shutdown() {
    const EVENTS: u64 = 1_000;

    let mut server = server_with_file_stream();
    let config = Config::new(1).servers([server.url()]).stream(STREAM);
    let stats = shutdown_after_kill(config, &mut server, EVENTS);

    assert_eq!(
        stats.dropped_after_accept.get(DropReason::Shutdown),
        EVENTS,
        "every event published after the kill is a shutdown drop: {stats:?}"
    );
    assert_eq!(stats.dropped_total(), EVENTS);
}

#[test]
fn shutdown_with_sends_waiting_on_a_dead_connection_still_counts_every_event_by_its_deadline() {
    const EVENTS: u64 = 10_000;

    // The first attempts of a full window fill the client's buffer while the connection is
    // down; the retries that follow an ack timeout then wait on that buffer for up to an ack
    // timeout each. Shutdown begins while one waits.
    let mut server = server_with_file_stream();
    let config = patient_config(&server).ack_timeout(Duration::from_millis(1_500));
    let stats = shutdown_after_kill(config, &mut server, EVENTS);

    assert_eq!(
        stats.dropped_after_accept.get(DropReason::Shutdown),
        EVENTS,
        "every event published after the kill is a shutdown drop: {stats:?}"
    );
}
