//! Delivery to a real JetStream stream: envelope shape, ordering, drop accounting and the
//! conservation law, checked against what the stream holds when read back.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::StorageType;
use common::{NatsServer, StoredMessage};
use jetring::{Bus, Config, DropReason};
use serde::ser::Error as _;
use serde::{Serialize, Serializer};

const STREAM: &str = "EVENTS";
const FLUSH: Duration = Duration::from_secs(30);

/// Starts a server with a memory stream on `event.>`.
fn server_with_stream() -> NatsServer {
    let server = NatsServer::start();
    common::create_stream_blocking(&server.url(), STREAM, &["event.>"], StorageType::Memory, 1);
    server
}

fn connected_bus(server: &NatsServer, config: Config) -> Bus {
    let bus = Bus::new(config.servers([server.url()]).stream(STREAM)).expect("valid config");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bus.stats().connected {
        assert!(
            Instant::now() < deadline,
            "the bus did not connect to {}",
            server.url()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    bus
}

fn read_stream(server: &NatsServer) -> Vec<StoredMessage> {
    common::block_on(common::stream_messages(&server.url(), STREAM))
}

/// Checks the envelope of one stored event field by field and returns its body.
fn check_envelope(message: &StoredMessage, request_id: Option<&str>) -> serde_json::Value {
    let text = message.payload_str();
    let value = message.json();
    let object = value.as_object().expect("the envelope is a JSON object");

    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    let expected_keys: &[&str] = match request_id {
        Some(_) => &["body", "requestId", "timestamp", "version"],
        None => &["body", "timestamp", "version"],
    };
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected_keys, "keys of {text}");

    // Key order on the wire, which a JSON object does not keep.
    let expected_prefix = r#"{"version":"v1","timestamp":""#;
    assert!(text.starts_with(expected_prefix), "{text}");
    let after_timestamp = &text[expected_prefix.len() + 24..];
    match request_id {
        Some(id) => assert!(
            after_timestamp.starts_with(&format!(r#"","requestId":"{id}","body":"#)),
            "{text}"
        ),
        None => assert!(after_timestamp.starts_with(r#"","body":"#), "{text}"),
    }

    let timestamp = object["timestamp"].as_str().expect("timestamp is a string");
    assert_eq!(timestamp.len(), 24, "{timestamp}");
    assert!(timestamp.ends_with('Z'), "{timestamp}");
    let parsed = chrono::DateTime::parse_from_rfc3339(timestamp).expect("RFC 3339 timestamp");
    let age = chrono::Utc::now().signed_duration_since(parsed);
    assert!(
        age >= chrono::Duration::zero() && age < chrono::Duration::minutes(5),
        "{timestamp}"
    );

    let msg_id = message
        .header("Nats-Msg-Id")
        .expect("every event has a Nats-Msg-Id");
    assert!(!msg_id.is_empty());

    object["body"].clone()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Numbered {
    thread: usize,
    index: usize,
    label: &'static str,
}

#[test]
fn events_from_several_threads_land_in_per_thread_order_with_the_exact_envelope() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 2_000;

    let server = server_with_stream();
    let bus = connected_bus(&server, Config::new(1));

    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let bus = &bus;
            scope.spawn(move || {
                for index in 0..PER_THREAD {
                    let body = Numbered {
                        thread,
                        index,
                        label: "quote \"α\"\n",
                    };
                    bus.publish_with_request_id("priceEstimate", &format!("req-{thread}"), &body);
                }
            });
        }
    });
    bus.flush(FLUSH).expect("flush");

    let messages = read_stream(&server);
    assert_eq!(messages.len(), THREADS * PER_THREAD);

    let mut next_index = vec![0usize; THREADS];
    let mut msg_ids = HashSet::new();
    for message in &messages {
        assert_eq!(message.subject, "event.1.priceEstimate");
        assert!(msg_ids.insert(message.header("Nats-Msg-Id").unwrap_or_default().to_owned()));

        let thread = message.json()["body"]["thread"].as_u64().expect("thread") as usize;
        let body = check_envelope(message, Some(&format!("req-{thread}")));
        assert_eq!(
            body["index"], next_index[thread],
            "thread {thread} out of order"
        );
        assert_eq!(body["label"], "quote \"α\"\n");
        next_index[thread] += 1;
    }
    assert_eq!(next_index, vec![PER_THREAD; THREADS]);

    let stats = bus.shutdown(Duration::from_secs(10));
    assert_eq!(stats.acked, (THREADS * PER_THREAD) as u64);
    assert_eq!(stats.dropped_total(), 0, "{stats:?}");
}

#[test]
fn envelope_with_request_id_has_exactly_four_keys_in_order() {
    let server = server_with_stream();
    let bus = connected_bus(&server, Config::new(7));

    jetring::with_request_id("0b7e4a5c-1f1d-4a8e-9f3e-2b6a7c8d9e0f", || {
        bus.publish(
            "quote",
            &serde_json::json!({"price": 1.5, "sides": ["buy", "sell"]}),
        );
    });
    bus.flush(FLUSH).expect("flush");

    let messages = read_stream(&server);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].subject, "event.7.quote");
    let body = check_envelope(&messages[0], Some("0b7e4a5c-1f1d-4a8e-9f3e-2b6a7c8d9e0f"));
    assert_eq!(
        body,
        serde_json::json!({"price": 1.5, "sides": ["buy", "sell"]})
    );
}

#[test]
fn envelope_without_request_id_omits_the_key() {
    let server = server_with_stream();
    let bus = connected_bus(&server, Config::new(1));

    bus.publish("heartbeat", &42u32);
    bus.flush(FLUSH).expect("flush");

    let messages = read_stream(&server);
    assert_eq!(messages.len(), 1);
    assert!(!messages[0].payload_str().contains("requestId"));
    assert_eq!(check_envelope(&messages[0], None), serde_json::json!(42));
}

#[test]
fn pre_encoded_bodies_land_as_the_same_envelope_as_serialized_ones() {
    let server = server_with_stream();
    let bus = connected_bus(&server, Config::new(3));

    let body = serde_json::json!({"estimator": "Baseline", "gas": 186532, "note": "a \"quote\""});
    let encoded = jetring::EncodedBody::new(&body).expect("a JSON value encodes");
    let from_text = jetring::EncodedBody::from_json(r#"[1, {"spaced": true}]"#)
        .expect("valid JSON text is taken as it is");

    bus.publish_encoded_with_request_id("quote", "r-1", &encoded);
    jetring::with_request_id("r-2", || bus.publish_encoded("quote", &from_text));
    bus.publish("quote", &body);
    bus.publish_encoded("bad name", &encoded);
    bus.flush(FLUSH).expect("flush");

    let messages = read_stream(&server);
    assert_eq!(messages.len(), 3);
    assert_eq!(check_envelope(&messages[0], Some("r-1")), body);
    assert_eq!(
        check_envelope(&messages[1], Some("r-2")),
        serde_json::json!([1, {"spaced": true}])
    );
    // The text given is kept byte for byte, white space included.
    assert!(messages[1]
        .payload_str()
        .ends_with(r#","body":[1, {"spaced": true}]}"#));
    // The pre-encoded body is exactly what `publish` writes for the same value.
    let serialized = messages[2].payload_str();
    let body_of = |text: &str| text[text.find(r#""body":"#).unwrap()..].to_owned();
    assert_eq!(body_of(messages[0].payload_str()), body_of(serialized));

    let stats = bus.stats();
    assert_eq!(stats.accepted, 3);
    assert_eq!(
        stats.dropped_before_accept.get(DropReason::InvalidSubject),
        1
    );
}

#[test]
fn text_that_is_not_one_json_value_is_refused_as_a_pre_encoded_body() {
    for bad in ["", "{", "1 2", "{\"a\":}", "nul", "\"open", "[1,]"] {
        let err = jetring::EncodedBody::from_json(bad).expect_err(bad);
        assert!(
            err.to_string().contains("not one valid JSON value"),
            "{err}"
        );
    }
    let err = jetring::EncodedBody::new(&Unserializable).expect_err("refused");
    assert!(err.to_string().contains("refuses"), "{err}");
}

/// A body whose serialization always fails.
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(S::Error::custom("this body refuses to serialize"))
    }
}

/// A body whose serialization panics.
struct Panicking;

impl Serialize for Panicking {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("a buggy Serialize impl");
    }
}

#[test]
fn bad_names_and_bodies_are_counted_not_panicked_on() {
    let server = server_with_stream();
    let bus = connected_bus(&server, Config::new(1));

    for name in [
        "",
        "a..b",
        "has space",
        "tab\there",
        "wild*",
        "tail.>",
        ".lead",
        "trail.",
    ] {
        bus.publish(name, &1);
    }
    bus.publish(&"x".repeat(jetring::MAX_NAME_LEN + 1), &1);

    bus.publish("bad", &Unserializable);
    bus.publish("bad", &Panicking);
    let mut non_string_keys = BTreeMap::new();
    non_string_keys.insert((1, 2), "tuple keys have no JSON form");
    bus.publish("bad", &non_string_keys);

    bus.publish("good", &"still delivered");
    bus.flush(FLUSH).expect("flush");

    let stats = bus.stats();
    assert_eq!(
        stats.dropped_before_accept.get(DropReason::InvalidSubject),
        9
    );
    assert_eq!(stats.dropped_before_accept.get(DropReason::Serialize), 3);
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.acked, 1);
    assert_eq!(stats.publish_calls(), 13);

    let messages = read_stream(&server);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].subject, "event.1.good");
}

#[test]
fn conservation_law_holds_against_the_stream() {
    const EVENTS: u64 = 20_000;

    let server = server_with_stream();
    // A small ring, so that some events are refused while most are delivered.
    let bus = connected_bus(&server, Config::new(1).ring_capacity(512));

    std::thread::scope(|scope| {
        for thread in 0..2 {
            let bus = &bus;
            scope.spawn(move || {
                for index in 0..EVENTS / 2 {
                    bus.publish("conservation", &(thread, index));
                    if index % 256 == 0 {
                        std::thread::sleep(Duration::from_micros(500));
                    }
                }
                bus.publish("bad name", &thread);
            });
        }
    });
    bus.flush(FLUSH).expect("flush");

    let stats = bus.stats();
    let stored = common::stream_len_blocking(&server.url(), STREAM);

    assert_eq!(stats.publish_calls(), EVENTS + 2);
    assert_eq!(
        stats.publish_calls(),
        stats.accepted + stats.dropped_before_accept.total()
    );
    assert_eq!(
        stats.accepted,
        stats.acked + stats.dropped_after_accept.total(),
        "{stats:?}"
    );
    assert_eq!(stats.pending(), 0);
    assert_eq!(
        stats.acked, stored,
        "acknowledged events and stored events differ"
    );
    assert_eq!(stats.dropped(DropReason::InvalidSubject), 2);
    assert!(stats.acked > 0);
    println!(
        "published {}, accepted {}, stored {stored}, queue_full {}",
        stats.publish_calls(),
        stats.accepted,
        stats.dropped(DropReason::QueueFull)
    );
}

#[test]
fn a_burst_beyond_the_ring_is_counted_as_queue_full_and_never_blocks() {
    const BURST: u64 = 50_000;

    let server = server_with_stream();
    let bus = connected_bus(&server, Config::new(1).ring_capacity(64));

    let started = Instant::now();
    for index in 0..BURST {
        bus.publish("burst", &index);
    }
    let elapsed = started.elapsed();
    bus.flush(FLUSH).expect("flush");

    let stats = bus.stats();
    let stored = common::stream_len_blocking(&server.url(), STREAM);
    println!(
        "{BURST} publishes in {elapsed:?}; queue_full {}, stored {stored}",
        stats.dropped(DropReason::QueueFull)
    );

    assert!(
        stats.dropped_before_accept.get(DropReason::QueueFull) > 0,
        "{stats:?}"
    );
    assert_eq!(stats.publish_calls(), BURST);
    assert_eq!(stats.accepted, stats.acked);
    assert_eq!(stats.acked, stored);
    assert_eq!(stats.dropped_total(), BURST - stored);
}

#[test]
fn prometheus_text_output_carries_every_metric_with_its_value() {
    let server = server_with_stream();
    let bus = connected_bus(
        &server,
        Config::new(1)
            .ring_capacity(128)
            .metrics_prefix("jetring_test"),
    );
    let registry = prometheus::Registry::new();
    bus.register(&registry).expect("register");

    for index in 0..100 {
        bus.publish("metrics", &index);
    }
    bus.publish("bad name", &0);
    bus.flush(FLUSH).expect("flush");

    let mut text = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&registry.gather(), &mut text)
        .expect("encode");
    println!("{text}");

    let value = |line_start: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(line_start)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {line_start} in\n{text}"))
            .parse()
            .expect("a number")
    };

    assert_eq!(value("jetring_test_accepted_events"), 100.0);
    assert_eq!(value("jetring_test_acked_events"), 100.0);
    assert_eq!(value("jetring_test_published_events"), 100.0);
    assert_eq!(value("jetring_test_retried_events"), 0.0);
    assert_eq!(value("jetring_test_duplicate_acks"), 0.0);
    assert_eq!(value("jetring_test_queue_depth"), 0.0);
    assert_eq!(value("jetring_test_queue_capacity"), 128.0);
    assert_eq!(value("jetring_test_in_flight"), 0.0);
    assert_eq!(value("jetring_test_connected"), 1.0);
    assert_eq!(
        value(r#"jetring_test_dropped_events{reason="invalid_subject"}"#),
        1.0
    );
    for reason in DropReason::ALL
        .iter()
        .filter(|r| **r != DropReason::InvalidSubject)
    {
        let sample = format!(
            r#"jetring_test_dropped_events{{reason="{}"}}"#,
            reason.as_str()
        );
        assert_eq!(value(&sample), 0.0, "{sample}");
    }
    assert_eq!(value("jetring_test_ack_latency_seconds_count"), 100.0);
    assert!(value(r#"jetring_test_ack_latency_seconds{quantile="0.99"}"#) > 0.0);
    assert_eq!(value("jetring_test_batch_size_sum"), 100.0);
    assert!(value("jetring_test_batch_size_count") >= 1.0);
    assert_eq!(
        value(r#"jetring_test_batch_size_bucket{le="+Inf"}"#),
        value("jetring_test_batch_size_count")
    );
    assert!(text.contains("# TYPE jetring_test_dropped_events counter"));
    assert!(text.contains("# TYPE jetring_test_ack_latency_seconds summary"));
    assert!(text.contains("# TYPE jetring_test_batch_size histogram"));

    // A second bus with the same prefix would publish the same names: refused, not doubled.
    let other = connected_bus(&server, Config::new(2).metrics_prefix("jetring_test"));
    assert!(other.register(&registry).is_err());
}

#[test]
fn an_event_over_the_servers_max_payload_is_counted_as_too_large() {
    let server = NatsServer::builder().max_payload(4096).start();
    common::create_stream_blocking(&server.url(), STREAM, &["event.>"], StorageType::Memory, 1);
    let bus = connected_bus(&server, Config::new(1));

    bus.publish("small", &"fits");
    bus.publish("large", &"x".repeat(8192));
    bus.publish("small", &"still fits");
    bus.flush(FLUSH).expect("flush");

    let stats = bus.stats();
    assert_eq!(
        stats.dropped_after_accept.get(DropReason::TooLarge),
        1,
        "{stats:?}"
    );
    assert_eq!(stats.acked, 2);
    assert_eq!(common::stream_len_blocking(&server.url(), STREAM), 2);
}

#[test]
fn events_without_a_stream_are_counted_as_no_stream() {
    let server = NatsServer::start();
    let config = Config::new(1).servers([server.url()]).retries(
        1,
        Duration::from_millis(10),
        Duration::from_millis(10),
    );
    let bus = Bus::new(config).expect("valid config");

    for index in 0..20 {
        bus.publish("orphan", &index);
    }
    bus.flush(FLUSH).expect("flush");

    let stats = bus.stats();
    assert_eq!(
        stats.dropped_after_accept.get(DropReason::NoStream),
        20,
        "{stats:?}"
    );
    assert_eq!(stats.retried, 20);
    assert_eq!(stats.acked, 0);
}

/// Publishes one event through a bus built from `config` and reads it back with `admin_url`.
fn deliver_one(config: Config, admin_url: &str) -> jetring::Stats {
    common::create_stream_blocking(admin_url, STREAM, &["event.>"], StorageType::Memory, 1);
    let bus = Bus::new(config).expect("valid config");
    bus.publish("authenticated", &true);
    bus.flush(FLUSH).expect("flush");
    assert_eq!(common::stream_len_blocking(admin_url, STREAM), 1);
    bus.shutdown(Duration::from_secs(5))
}

#[test]
fn user_and_password_in_the_url_authenticate() {
    let server = NatsServer::builder()
        .user_password("alice", "s3cret")
        .start();
    let url = server.url_with_credentials();
    let stats = deliver_one(Config::new(1).servers([url.as_str()]), &url);
    assert_eq!(stats.acked, 1);
}

#[test]
fn a_token_in_the_url_or_in_the_config_authenticates() {
    let server = NatsServer::builder().token("t0ken").start();
    let url = server.url_with_credentials();
    let stats = deliver_one(Config::new(1).servers([url.as_str()]), &url);
    assert_eq!(stats.acked, 1);

    common::delete_stream_blocking(&url, STREAM);
    let stats = deliver_one(Config::new(1).servers([server.url()]).token("t0ken"), &url);
    assert_eq!(stats.acked, 1);
}

#[test]
fn wrong_credentials_keep_events_in_the_ring_instead_of_failing() {
    let server = NatsServer::builder()
        .user_password("alice", "s3cret")
        .start();
    let config = Config::new(1)
        .servers([server.url()])
        .user_and_password("alice", "wrong")
        .connect_backoff(Duration::from_millis(20), Duration::from_millis(100));
    let bus = Bus::new(config).expect("the bus starts; the server refuses it later");

    bus.publish("refused", &1);
    assert!(bus.flush(Duration::from_millis(500)).is_err());

    let stats = bus.shutdown(Duration::from_secs(2));
    assert!(!stats.connected);
    assert_eq!(
        stats.dropped_after_accept.get(DropReason::Shutdown),
        1,
        "{stats:?}"
    );
}

/// `flush` must not take an empty ring for delivered events while the drain still holds the
/// events it has just popped. With a capture bus each event is resolved as soon as it is
/// popped, so every flush that returns must find the event captured.
#[test]
fn flush_never_returns_while_the_drain_holds_popped_events() {
    let (bus, capture) = Bus::capture(Config::new(1)).expect("valid config");
    for i in 1..=20_000 {
        bus.publish("tick", &i);
        bus.flush(FLUSH).expect("flush");
        assert_eq!(
            capture.len(),
            i,
            "flush returned before event {i} was delivered"
        );
    }
}
