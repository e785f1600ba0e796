//! A three-node JetStream cluster losing the leader of the bus's stream mid-run: delivery goes
//! on through the surviving nodes, and the conservation law holds against the stream as a
//! survivor reports it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::StorageType;
use common::NatsCluster;
use jetring::{Bus, Config};

const STREAM: &str = "EVENTS";

/// Cluster elections take seconds; a flush that needs more than this has found a bug.
const FLUSH: Duration = Duration::from_secs(60);

/// Events per burst and the pause after each burst: about 2,000 events a second.
const BURST: u64 = 20;
const PAUSE: Duration = Duration::from_millis(10);

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Publishes events numbered from 0, in bursts, until `stop` is set; keeps `published`
/// current after each burst.
fn publish_steadily(bus: &Bus, stop: &AtomicBool, published: &AtomicU64) {
    let mut index = 0;
    while !stop.load(Relaxed) {
        for _ in 0..BURST {
            bus.publish("numbered", &index);
            index += 1;
        }
        published.store(index, Relaxed);
        thread::sleep(PAUSE);
    }
}

#[test]
fn killing_the_stream_leader_mid_run_loses_no_event_and_stores_none_twice() {
    let mut cluster = NatsCluster::start(3);
    common::create_stream_blocking(&cluster.url(), STREAM, &["event.>"], StorageType::File, 3);

    let config = Config::new(1)
        .servers(cluster.urls())
        .stream(STREAM)
        .ack_timeout(Duration::from_secs(2))
        .retries(20, Duration::from_millis(100), Duration::from_secs(1))
        .connect_backoff(Duration::from_millis(50), Duration::from_millis(500));
    let bus = Bus::new(config).expect("valid config");
    let stop = AtomicBool::new(false);
    let published = AtomicU64::new(0);

    let leader = thread::scope(|scope| {
        let publisher = scope.spawn(|| publish_steadily(&bus, &stop, &published));

        wait_until("events flow", FLUSH, || bus.stats().acked >= 2_000);
        let leader = cluster.stream_leader(STREAM);
        cluster.node_mut(leader).kill();
        let killed_at = published.load(Relaxed);
        println!("killed leader n{leader} after {killed_at} events");

        // Keep publishing until events sent well after the kill are acknowledged too.
        thread::sleep(Duration::from_secs(2));
        let after_kill = published.load(Relaxed) + 2_000;
        wait_until("delivery continues", FLUSH, || {
            bus.stats().acked >= after_kill
        });
        stop.store(true, Relaxed);
        publisher.join().expect("the publisher does not panic");
        leader
    });
    bus.flush(FLUSH).expect("flush after the leader change");

    let new_leader = cluster.stream_leader(STREAM);
    assert_ne!(new_leader, leader, "a surviving node leads the stream");

    let calls = published.load(Relaxed);
    let stats = bus.stats();
    println!("new leader n{new_leader}: {}", common::summary(&stats));
    let stored = common::stream_messages_blocking(&cluster.running_url(), STREAM);
    let bodies = common::assert_conserved(calls, &stats, &stored);

    assert_eq!(
        stats.dropped_total(),
        0,
        "the ring and the retries cover an election: {stats:?}"
    );
    let mut numbers: Vec<u64> = bodies.iter().filter_map(|body| body.as_u64()).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (0..calls).collect::<Vec<_>>(),
        "every event is stored"
    );
}
