//! What one `publish` costs the calling thread: jetring against the known design it replaces,
//! and the pieces either is made of, all with the same reference `priceEstimate` event
//! (`benches/reference/mod.rs`, an envelope of about 390 bytes).
//!
//! ```text
//! cargo bench --bench publish                       # everything, under two minutes
//! cargo bench --bench publish -- seed               # one group
//! cargo bench --bench publish -- --warm-up-time 1 --measurement-time 2   # a quick look
//! ```
//!
//! Every group reports time per event (`Throughput::Elements(1)`). What one iteration does:
//!
//! - `seed`: the known design. A `format!` subject, a chrono timestamp, `serde_json::to_vec`
//!   of the envelope, `Bytes::from`, then `try_send` into a bounded(1000) tokio mpsc channel
//!   drained by a task on another thread.
//! - `serde_json_alone`: `serde_json::to_writer` of the same envelope into a reused `Vec`,
//!   with the timestamp formatted beforehand; and the same with jetring's serializer
//!   (`jetring::testing::write_json`, into a reused `BytesMut`) and with `simd_json::to_writer`.
//! - `channel`: as `seed`, but `try_send` into a bounded(1000) crossbeam channel drained by
//!   another thread.
//! - `jetring_publish`: `Bus::publish_with_request_id` on a bus connected to a real
//!   `nats-server`; and `Bus::publish_encoded_with_request_id` of the same body encoded
//!   beforehand (`EncodedBody`), which copies the body's JSON instead of serializing it.
//! - `jetring_publish_before_init`: the global `jetring::publish` before any `init`.
//! - `encode_only`: `jetring::testing::encode_envelope`, the encoder `publish` runs plus the
//!   allocations of that test helper (a fresh buffer, a `String` subject, a `Vec` payload),
//!   next to `serde_json::to_vec` of the same envelope.
//! - `timestamp`: chrono's `Utc::now().to_rfc3339_opts(..)` as the known design calls it,
//!   and the clock reads alone.
//!
//! `seed`, `channel` and `jetring_publish` measure the cost of an *accepted* event, with the
//! consumer running on another thread: each times bursts that fit in its channel or ring, and
//! waits outside the timed part, between bursts, until the consumer has caught up. A burst
//! therefore never finds the queue full, and each group prints, after it runs, how many calls
//! were refused anyway (expected: none).
//!
//! `jetring_publish` starts its own `nats-server` (binary from `NATS_SERVER_BIN`, `PATH` or
//! `/usr/sbin`) with a memory stream on `event.>`, and waits between bursts with
//! `Bus::flush`. Since every timed event is also delivered, that group's wall time is set by
//! the drain's rate, so it measures for less time than the others ([`JETRING_MEASUREMENT`],
//! fixed, not changed by `--measurement-time`). The drain and the server work while a burst
//! is timed; on a machine with fewer than four cores they take turns with the bench thread,
//! and the figure includes the time the bench thread spends preempted.

#[path = "../tests/common/mod.rs"]
mod common;
mod reference;

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream;
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

use reference::{SeedEnvelope, BODY, CHAIN_ID, NAME, PREFIX, REQUEST_ID, SUBJECT_HEAD};

/// Capacity of the ring of the bus under test.
const RING_CAPACITY: usize = 16_384;

/// Most events timed between two flushes; a quarter of the ring, and within what a thread's
/// arena keeps for reuse, so a burst neither fills the ring nor allocates arena blocks.
const BURST: u64 = 4_096;

/// Capacity of the known design's channel.
const SEED_CHANNEL: usize = 1_000;

/// Measurement time of `jetring_publish`, whose wall time is bounded by the drain's rate.
const JETRING_MEASUREMENT: Duration = Duration::from_secs(2);

/// Warm-up time of `jetring_publish`.
const JETRING_WARM_UP: Duration = Duration::from_secs(1);

/// Messages the bench stream keeps, so that its memory stays bounded however long it runs.
const STREAM_MAX_MESSAGES: i64 = 100_000;

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    group
}

/// The known design's timestamp.
fn chrono_timestamp() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The known design's encoding, from name and body to subject and payload.
#[inline]
fn seed_encode(body: &reference::PriceEstimate<'_>) -> (String, Bytes) {
    let subject = format!("{PREFIX}.{CHAIN_ID}.{NAME}");
    let timestamp = chrono_timestamp();
    let envelope = SeedEnvelope {
        version: "v1",
        timestamp: &timestamp,
        request_id: Some(REQUEST_ID),
        body,
    };
    let payload = serde_json::to_vec(&envelope).expect("the reference event serializes");
    (subject, Bytes::from(payload))
}

/// Times `iters` calls of `publish`, in bursts of at most `burst`, calling `catch_up` before
/// each burst, outside the timed part.
fn timed_bursts(
    iters: u64,
    burst: u64,
    mut catch_up: impl FnMut(),
    mut publish: impl FnMut(),
) -> Duration {
    let mut timed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let this_burst = left.min(burst);
        catch_up();

        let start = Instant::now();
        for _ in 0..this_burst {
            publish();
        }
        timed += start.elapsed();
        left -= this_burst;
    }
    timed
}

fn report_refused(group: &str, refused: u64, calls: u64) {
    eprintln!("{group}: {refused} of {calls} calls found the queue full");
}

fn seed(c: &mut Criterion) {
    // A runtime of one worker thread: the receiving task never runs on the bench thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("build the drain runtime");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Bytes)>(SEED_CHANNEL);
    runtime.spawn(async move {
        while let Some(event) = rx.recv().await {
            drop(event);
        }
    });

    let (mut refused, mut calls) = (0u64, 0u64);
    let mut group = group(c, "seed");
    group.bench_function("tokio_mpsc", |b| {
        b.iter_custom(|iters| {
            timed_bursts(
                iters,
                SEED_CHANNEL as u64,
                || {
                    while tx.capacity() < tx.max_capacity() {
                        thread::yield_now();
                    }
                },
                || {
                    let event = seed_encode(black_box(&BODY));
                    if tx.try_send(event).is_err() {
                        refused += 1;
                    }
                    calls += 1;
                },
            )
        })
    });
    group.finish();

    report_refused("seed", refused, calls);
    drop(tx);
    runtime.shutdown_timeout(Duration::from_secs(1));
}

fn serde_json_alone(c: &mut Criterion) {
    let timestamp = chrono_timestamp();
    let mut buf = Vec::with_capacity(1024);

    let mut group = group(c, "serde_json_alone");
    group.bench_function("to_writer_reused_vec", |b| {
        b.iter(|| {
            buf.clear();
            let envelope = SeedEnvelope {
                version: "v1",
                timestamp: &timestamp,
                request_id: Some(REQUEST_ID),
                body: black_box(&BODY),
            };
            serde_json::to_writer(&mut buf, &envelope).expect("the reference event serializes");
            black_box(&buf);
        })
    });
    // The same envelope through jetring's serializer, which writes the same bytes.
    let mut bytes = bytes::BytesMut::with_capacity(1024);
    group.bench_function("jetring_json_reused_buffer", |b| {
        b.iter(|| {
            bytes.clear();
            let envelope = SeedEnvelope {
                version: "v1",
                timestamp: &timestamp,
                request_id: Some(REQUEST_ID),
                body: black_box(&BODY),
            };
            jetring::testing::write_json(&mut bytes, &envelope)
                .expect("the reference event serializes");
            black_box(&bytes);
        })
    });
    // The same envelope through simd-json's serde serializer.
    group.bench_function("simd_json_to_writer_reused_vec", |b| {
        b.iter(|| {
            buf.clear();
            let envelope = SeedEnvelope {
                version: "v1",
                timestamp: &timestamp,
                request_id: Some(REQUEST_ID),
                body: black_box(&BODY),
            };
            simd_json::to_writer(&mut buf, &envelope).expect("the reference event serializes");
            black_box(&buf);
        })
    });
    group.finish();
}

fn channel(c: &mut Criterion) {
    let (tx, rx) = crossbeam_channel::bounded::<(String, Bytes)>(SEED_CHANNEL);
    let drain = thread::spawn(move || {
        for event in rx {
            drop(event);
        }
    });

    let (mut refused, mut calls) = (0u64, 0u64);
    let mut group = group(c, "channel");
    group.bench_function("crossbeam_bounded", |b| {
        b.iter_custom(|iters| {
            timed_bursts(
                iters,
                SEED_CHANNEL as u64,
                || {
                    while !tx.is_empty() {
                        thread::yield_now();
                    }
                },
                || {
                    let event = seed_encode(black_box(&BODY));
                    if tx.try_send(event).is_err() {
                        refused += 1;
                    }
                    calls += 1;
                },
            )
        })
    });
    group.finish();

    report_refused("channel", refused, calls);
    drop(tx);
    let _ = drain.join();
}

fn jetring_publish(c: &mut Criterion) {
    let server = common::NatsServer::start();
    let url = server.url();
    common::create_stream_with_blocking(
        &url,
        stream::Config {
            name: "EVENTS".to_owned(),
            subjects: vec!["event.>".to_owned()],
            storage: stream::StorageType::Memory,
            max_messages: STREAM_MAX_MESSAGES,
            ..Default::default()
        },
    );

    let config = jetring::Config::new(CHAIN_ID)
        .servers([url.as_str()])
        .stream("EVENTS")
        .ring_capacity(RING_CAPACITY);
    let bus = jetring::Bus::new(config).expect("a valid bench configuration");

    // The first event waits for the connection; after it, the bus is in its steady state.
    bus.publish_with_request_id(NAME, REQUEST_ID, &BODY);
    bus.flush(Duration::from_secs(20))
        .expect("the bench bus connects to its nats-server");

    let mut group = group(c, "jetring_publish");
    group
        .warm_up_time(JETRING_WARM_UP)
        .measurement_time(JETRING_MEASUREMENT)
        .sample_size(20);
    group.bench_function("bus_publish_with_request_id", |b| {
        b.iter_custom(|iters| {
            timed_bursts(
                iters,
                BURST,
                || {
                    bus.flush(Duration::from_secs(30))
                        .expect("the drain delivers a burst within 30 s")
                },
                || bus.publish_with_request_id(NAME, REQUEST_ID, black_box(&BODY)),
            )
        })
    });
    // The same event with its body encoded once, before the loop.
    let encoded = jetring::EncodedBody::new(&BODY).expect("the reference body encodes");
    group.bench_function("bus_publish_encoded_with_request_id", |b| {
        b.iter_custom(|iters| {
            timed_bursts(
                iters,
                BURST,
                || {
                    bus.flush(Duration::from_secs(30))
                        .expect("the drain delivers a burst within 30 s")
                },
                || bus.publish_encoded_with_request_id(NAME, REQUEST_ID, black_box(&encoded)),
            )
        })
    });
    group.finish();

    let _ = bus.flush(Duration::from_secs(30));
    let stats = bus.shutdown(Duration::from_secs(10));
    report_refused(
        "jetring_publish",
        stats.dropped(jetring::DropReason::QueueFull),
        stats.publish_calls(),
    );
    eprintln!(
        "jetring_publish: {} accepted, {} acknowledged, {} dropped",
        stats.accepted,
        stats.acked,
        stats.dropped_total()
    );
}

fn jetring_publish_before_init(c: &mut Criterion) {
    assert!(
        jetring::global().is_none(),
        "this bench never calls jetring::init"
    );

    let mut group = group(c, "jetring_publish_before_init");
    group.bench_function("global_publish", |b| {
        b.iter(|| jetring::publish(black_box(NAME), black_box(&BODY)))
    });
    group.finish();
}

fn encode_only(c: &mut Criterion) {
    let millis = Utc::now().timestamp_millis() as u64;
    let timestamp = chrono_timestamp();

    let mut group = group(c, "encode_only");
    group.bench_function("jetring_encode_envelope", |b| {
        b.iter(|| {
            jetring::testing::encode_envelope(
                SUBJECT_HEAD,
                black_box(NAME),
                millis,
                Some(REQUEST_ID),
                black_box(&BODY),
            )
        })
    });
    group.bench_function("serde_json_to_vec", |b| {
        b.iter(|| {
            let envelope = SeedEnvelope {
                version: "v1",
                timestamp: &timestamp,
                request_id: Some(REQUEST_ID),
                body: black_box(&BODY),
            };
            serde_json::to_vec(&envelope)
        })
    });
    group.finish();
}

fn timestamp(c: &mut Criterion) {
    let mut group = group(c, "timestamp");
    group.bench_function("chrono_to_rfc3339_opts", |b| b.iter(chrono_timestamp));
    group.bench_function("chrono_utc_now", |b| b.iter(Utc::now));
    group.bench_function("system_time_now", |b| b.iter(std::time::SystemTime::now));
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = benches;
    config = config();
    targets = seed, serde_json_alone, channel, jetring_publish, jetring_publish_before_init,
        encode_only, timestamp
}
criterion_main!(benches);
