//! A fixed workload for counting instructions per event with callgrind, free of timing noise.
//!
//! ```text
//! cargo build --release --example instructions
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/instructions publish 100000
//! ```
//!
//! Run it twice, with two event counts, and divide the difference of the totals by the
//! difference of the counts: start-up cancels out. Modes, each with the reference event:
//!
//! - `publish`: `Bus::publish_with_request_id` into a ring large enough to hold every event,
//!   on a bus whose server does not exist, so that the drain does no work and only the
//!   producer's path is counted;
//! - `publish_encoded`: the same with the body encoded once beforehand
//!   (`Bus::publish_encoded_with_request_id`);
//! - `serde_json`: `serde_json::to_writer` of the envelope into a reused `Vec`;
//! - `jetring_json`: the same envelope through jetring's serializer
//!   (`jetring::testing::write_json`) into a reused `BytesMut`;
//! - `seed`: the known design's encoding (chrono timestamp, `format!` subject,
//!   `serde_json::to_vec`), without its channel.

use std::time::Duration;

#[path = "../benches/reference/mod.rs"]
mod reference;

use reference::{SeedEnvelope, BODY, NAME, REQUEST_ID};

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let events: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    if events == 0 {
        eprintln!(
            "usage: instructions publish|publish_encoded|serde_json|jetring_json|seed <events>"
        );
        std::process::exit(2);
    }

    match mode.as_str() {
        "publish" | "publish_encoded" => {
            // Port 1 on loopback refuses connections: the drain keeps retrying and never
            // takes an event, so only the producer's path runs per event.
            let config = jetring::Config::new(1)
                .servers(["nats://127.0.0.1:1"])
                .ring_capacity(events.min(jetring::MAX_RING_CAPACITY))
                .connect_backoff(Duration::from_secs(60), Duration::from_secs(60));
            let bus = jetring::Bus::new(config).expect("valid config");
            if mode == "publish" {
                for _ in 0..events {
                    bus.publish_with_request_id(NAME, REQUEST_ID, std::hint::black_box(&BODY));
                }
            } else {
                let body = jetring::EncodedBody::new(&BODY).expect("serializable");
                for _ in 0..events {
                    let body = std::hint::black_box(&body);
                    bus.publish_encoded_with_request_id(NAME, REQUEST_ID, body);
                }
            }
            let accepted = bus.stats().accepted;
            assert_eq!(accepted, events as u64, "every event fits in the ring");
            std::mem::forget(bus);
        }
        "serde_json" => {
            let timestamp = "2026-05-22T12:00:00.123Z";
            let mut buf = Vec::with_capacity(1024);
            for _ in 0..events {
                buf.clear();
                let envelope = SeedEnvelope {
                    version: "v1",
                    timestamp,
                    request_id: Some(REQUEST_ID),
                    body: std::hint::black_box(&BODY),
                };
                serde_json::to_writer(&mut buf, &envelope).expect("serializable");
            }
            std::hint::black_box(&buf);
        }
        "jetring_json" => {
            let timestamp = "2026-05-22T12:00:00.123Z";
            let mut buf = bytes::BytesMut::with_capacity(1024);
            for _ in 0..events {
                buf.clear();
                let envelope = SeedEnvelope {
                    version: "v1",
                    timestamp,
                    request_id: Some(REQUEST_ID),
                    body: std::hint::black_box(&BODY),
                };
                jetring::testing::write_json(&mut buf, &envelope).expect("serializable");
            }
            std::hint::black_box(&buf);
        }
        "seed" => {
            for _ in 0..events {
                let subject = format!("event.1.{NAME}");
                let timestamp =
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                let envelope = SeedEnvelope {
                    version: "v1",
                    timestamp: &timestamp,
                    request_id: Some(REQUEST_ID),
                    body: std::hint::black_box(&BODY),
                };
                let payload = serde_json::to_vec(&envelope).expect("serializable");
                std::hint::black_box((subject, bytes::Bytes::from(payload)));
            }
        }
        other => {
            eprintln!("unknown mode {other:?}: use publish, publish_encoded, serde_json, jetring_json or seed");
            std::process::exit(2);
        }
    }
}
