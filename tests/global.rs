//! The global facade: `publish` before `init`, a failed `init` followed by a successful one,
//! a second `init`, and `shutdown`.
//!
//! The global bus is process state, so this file holds a single test that walks through the
//! lifecycle in order (each test file is its own process).

mod common;

use std::time::Duration;

use async_nats::jetstream::stream::StorageType;
use common::NatsServer;
use jetring::{Config, DropReason};

#[test]
fn global_bus_lifecycle_from_no_op_to_shutdown() {
    let server = NatsServer::start();
    common::create_stream_blocking(
        &server.url(),
        "EVENTS",
        &["event.>"],
        StorageType::Memory,
        1,
    );

    // Before init: publishing is a no-op, nothing is counted, flush returns at once.
    jetring::publish("early", &1);
    jetring::publish_with_request_id("early", "r-0", &2);
    let encoded = jetring::EncodedBody::new(&5).expect("a number encodes");
    jetring::publish_encoded("early", &encoded);
    assert!(jetring::global().is_none());
    assert!(jetring::stats().is_none());
    assert!(jetring::flush(Duration::from_millis(1)).is_ok());
    assert!(jetring::register(&prometheus::Registry::new()).is_err());

    // A failed init leaves the bus disabled and names the field.
    let error = jetring::init(Config::new(1).servers([server.url()]).ring_capacity(0))
        .expect_err("ring-capacity 0 is invalid");
    assert!(error.to_string().contains("ring-capacity"), "{error}");
    jetring::publish("still-early", &3);
    assert!(jetring::global().is_none());

    // Then a successful one.
    jetring::init(Config::new(1).servers([server.url()]).stream("EVENTS")).expect("init");
    jetring::publish("priceEstimate", &serde_json::json!({"n": 1}));
    jetring::with_request_id("r-1", || jetring::publish("priceEstimate", &2));
    jetring::flush(Duration::from_secs(30)).expect("flush");

    // A second init, even with another config, is a no-op: the first bus stays.
    jetring::init(Config::new(2).servers(["nats://127.0.0.1:1"])).expect("second init");
    jetring::init(Config::new(3).ring_capacity(0)).expect("second init ignores its config");
    jetring::publish("priceEstimate", &3);
    jetring::publish_encoded("priceEstimate", &encoded);
    jetring::flush(Duration::from_secs(30)).expect("flush");

    let stats = jetring::stats().expect("initialised");
    assert_eq!(
        stats.publish_calls(),
        4,
        "events before init are not counted: {stats:?}"
    );
    assert_eq!(stats.acked, 4);

    let messages = common::block_on(common::stream_messages(&server.url(), "EVENTS"));
    let subjects: Vec<&str> = messages.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(subjects, ["event.1.priceEstimate"; 4]);
    assert_eq!(messages[1].json()["requestId"], "r-1");
    assert_eq!(messages[3].json()["body"], 5);

    let registry = prometheus::Registry::new();
    jetring::register(&registry).expect("register after init");
    assert!(!registry.gather().is_empty());

    // Shutdown returns the final stats; later events are counted as shutdown drops.
    let final_stats = jetring::shutdown(Duration::from_secs(10)).expect("initialised");
    assert_eq!(final_stats.acked, 4);
    jetring::publish("late", &4);
    let stats = jetring::stats().expect("initialised");
    assert_eq!(stats.dropped(DropReason::Shutdown), 1);
    assert_eq!(
        stats.accepted,
        stats.acked + stats.dropped_after_accept.total()
    );
    assert_eq!(common::stream_len_blocking(&server.url(), "EVENTS"), 4);
}
