//! Load beyond what the bus can deliver: memory stays bounded while the server never comes
//! up, and eight producers on a tiny ring with a slow drain lose no event unseen.
//!
//! The tests of this file take one lock, so they run one after another: each is heavy on a
//! small machine, and the memory test reads the resident size of the whole process, which a
//! test running beside it would disturb.

mod common;
#[path = "../benches/reference/mod.rs"]
mod reference;

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::StorageType;
use common::NatsServer;
use jetring::{Bus, Config, DropReason, Overflow};

const STREAM: &str = "EVENTS";
const FLUSH: Duration = Duration::from_secs(30);

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------
// Bounded memory
// ---------------------------------------------------------------------------------------

/// Resident set size of this process, from `VmRSS` in `/proc/self/status`.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|number| number.trim().parse().ok())
        .expect("a VmRSS line in kB");
    kib * 1024
}

const MIB: u64 = 1024 * 1024;

/// Publishes `EVENTS` reference events to a bus whose server never answers and checks that
/// the resident size stops growing once the ring is full.
fn memory_stays_bounded_with(overflow: Overflow) {
    const CAPACITY: usize = 16_384;
    const EVENTS: u64 = 600_000;
    const FILLED: u64 = 100_000;
    const HALF: u64 = EVENTS / 2;

    let _heavy = one_at_a_time();

    // Nothing listens on this port: the drain keeps trying to connect, and never takes an
    // event out of the ring.
    let url = format!("nats://127.0.0.1:{}", common::free_port());
    let config = Config::new(1)
        .servers([url])
        .ring_capacity(CAPACITY)
        .overflow(overflow)
        .drop_timeouts(Duration::from_millis(100), Duration::from_millis(200));
    let bus = Bus::new(config).expect("an unreachable server is not an error");

    let started = Instant::now();
    let mut samples = Vec::new();
    for index in 0..EVENTS {
        // The reference body with a number, about 400 bytes encoded.
        bus.publish_with_request_id(
            "priceEstimate",
            reference::REQUEST_ID,
            &(index, reference::BODY),
        );
        if index + 1 == FILLED || index + 1 == HALF || index + 1 == EVENTS {
            samples.push((index + 1, rss_bytes()));
        }
    }
    let elapsed = started.elapsed();

    let stats = bus.stats();
    println!(
        "{overflow:?}: {EVENTS} publishes in {elapsed:?}; RSS (events, MiB): {:?}; {}",
        samples
            .iter()
            .map(|&(events, rss)| (events, rss / MIB))
            .collect::<Vec<_>>(),
        common::summary(&stats)
    );

    assert!(!stats.connected);
    assert_eq!(stats.queue_depth, CAPACITY as u64, "{stats:?}");
    assert_eq!(stats.publish_calls(), EVENTS);
    assert_eq!(
        stats.dropped(DropReason::QueueFull),
        EVENTS - CAPACITY as u64
    );

    // The ring holds 16,384 events of about 420 bytes (7 MiB) and each producer thread keeps
    // at most 33 arena blocks of 64 KiB (2 MiB). Growing linearly, the 500,000 events after
    // the ring filled would add about 200 MiB, and the last 300,000 about 120 MiB.
    let [(_, filled), (_, half), (_, end)] = samples[..] else {
        unreachable!("three samples are taken")
    };
    assert!(
        end.saturating_sub(filled) < 64 * MIB,
        "RSS grew by {} MiB after the ring filled",
        end.saturating_sub(filled) / MIB
    );
    assert!(
        end.saturating_sub(half) < 16 * MIB,
        "RSS grew by {} MiB over the second half of the events",
        end.saturating_sub(half) / MIB
    );

    let stats = bus.shutdown(Duration::from_secs(1));
    assert_eq!(stats.accepted, stats.dropped_after_accept.total());
    assert_eq!(stats.pending(), 0);
}

#[test]
fn memory_stays_bounded_with_drop_newest_while_the_server_never_comes_up() {
    memory_stays_bounded_with(Overflow::DropNewest);
}

#[test]
fn memory_stays_bounded_with_drop_oldest_while_the_server_never_comes_up() {
    memory_stays_bounded_with(Overflow::DropOldest);
}

// ---------------------------------------------------------------------------------------
// Many producers, a tiny ring, a slow drain
// ---------------------------------------------------------------------------------------

/// Eight threads publish 20,000 events each into a ring of eight, drained at most two events
/// in flight and one per batch. Checks the conservation law against the stream, and that each
/// thread's events were stored in the order it published them.
fn many_producers_on_a_tiny_ring_with(overflow: Overflow) {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 20_000;

    let _heavy = one_at_a_time();

    let server = NatsServer::start();
    common::create_stream_blocking(&server.url(), STREAM, &["event.>"], StorageType::Memory, 1);
    let config = Config::new(1)
        .servers([server.url()])
        .stream(STREAM)
        .ring_capacity(8)
        .overflow(overflow)
        .max_in_flight(2)
        .batch_size(1);
    let bus = Bus::new(config).expect("valid config");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bus.stats().connected {
        assert!(Instant::now() < deadline, "the bus did not connect");
        thread::sleep(Duration::from_millis(10));
    }

    let started = Instant::now();
    thread::scope(|scope| {
        for thread in 0..THREADS {
            let bus = &bus;
            scope.spawn(move || {
                for index in 0..PER_THREAD {
                    bus.publish("stress", &(thread, index));
                }
            });
        }
    });
    let elapsed = started.elapsed();
    bus.flush(FLUSH).expect("flush");

    let stats = bus.stats();
    println!(
        "{overflow:?}: {} publishes in {elapsed:?}: {}",
        THREADS * PER_THREAD,
        common::summary(&stats)
    );
    let stored = common::stream_messages_blocking(&server.url(), STREAM);
    let bodies = common::assert_conserved(THREADS * PER_THREAD, &stats, &stored);

    assert!(stats.acked > 0, "{stats:?}");
    assert!(stats.dropped(DropReason::QueueFull) > 0, "{stats:?}");
    assert_eq!(
        stats.dropped_total(),
        stats.dropped(DropReason::QueueFull),
        "a full ring is the only reason to drop here: {stats:?}"
    );

    let mut last: Vec<Option<u64>> = vec![None; THREADS as usize];
    for body in &bodies {
        let (thread, index): (u64, u64) =
            serde_json::from_value(body.clone()).expect("a (thread, index) body");
        let previous = last[thread as usize].replace(index);
        assert!(
            previous < Some(index),
            "thread {thread}: event {index} stored after event {previous:?}"
        );
    }
}

#[test]
fn eight_producers_on_a_ring_of_eight_with_a_slow_drain_conserve_every_event() {
    many_producers_on_a_tiny_ring_with(Overflow::DropNewest);
}

#[test]
fn eight_producers_on_a_ring_of_eight_with_drop_oldest_conserve_every_event() {
    many_producers_on_a_tiny_ring_with(Overflow::DropOldest);
}
