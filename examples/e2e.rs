//! End-to-end throughput into JetStream: jetring against the plain async-nats clients, on one
//! server, in one run, with the reference `priceEstimate` event (`benches/reference/mod.rs`).
//!
//! ```text
//! cargo run --release --example e2e [-- --events 1000000] [--ring-capacity 16384]
//! ```
//!
//! The example starts its own `nats-server -js` on a free port with a temporary store (the
//! binary comes from `NATS_SERVER_BIN`, then `PATH`, then `/usr/sbin`) and creates a memory
//! stream on `event.>`. It never uses a server that already runs on the machine. Then, one
//! phase after another, purging the stream in between:
//!
//! - **(a) jetring**, a bus with the default ring (16,384 events, or `--ring-capacity`) and
//!   window (4,096 acknowledgements in flight), published from one thread:
//!   - *lossless*: the producer backs off while the ring is nearly full, so nothing is
//!     dropped; its acknowledged events per second are the headline figure;
//!   - *tight loop*: the producer never waits; events that find the ring full are dropped
//!     and counted as `queue_full`.
//!
//!   Each `publish()` call is timed on the producer thread (`Instant::now` before and after,
//!   so each figure includes one clock read, about 20 ns) into an HDR histogram, while the
//!   drain delivers at full speed.
//! - **(b) async-nats JetStream**: `jetstream::Context::publish` with up to 4,096 acks in
//!   flight, the oldest awaited when 4,096 are outstanding; then the same with a
//!   `Nats-Msg-Id` header on every message, as jetring sends.
//! - **(c) core NATS**: `Client::publish` without acks, then `flush`, timed until the stream
//!   holds every message: the ceiling of what the server ingests from one connection; then
//!   the same with a unique `Nats-Msg-Id` header on every message (c'), the ceiling for
//!   messages the stream must de-duplicate, which is what jetring sends.
//!
//! Every phase publishes the same subject and the same payload bytes, and checks what the
//! stream stored. The table gives events per second, and the ratios to (b) without the header
//! and to (c); below it, the latency of `publish()` and the peak RSS of this process after the
//! jetring phase. Compare jetring with the (b) row that sends `Nats-Msg-Id` too: the stream's
//! duplicate detection is work the server does for every message that carries one.
//!
//! The figures depend on the machine and on what else runs on it: the server, the drain
//! thread and the producer compete for the same cores.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../benches/reference/mod.rs"]
mod reference;

use std::collections::VecDeque;
use std::hint::black_box;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage, stream::StorageType};
use async_nats::Subject;
use bytes::Bytes;
use hdrhistogram::Histogram;

use reference::{BODY, CHAIN_ID, NAME, REQUEST_ID, SUBJECT};

/// The stream every phase publishes into.
const STREAM: &str = "E2E";

/// Ring capacity of the bus under test unless `--ring-capacity` says otherwise (jetring's
/// default).
const RING_CAPACITY: usize = 16_384;

/// Acknowledgements the async-nats phases keep in flight, as many as jetring's default
/// `max-in-flight`.
const ACK_WINDOW: usize = 4_096;

/// The lossless producer looks at the ring's depth once per this many events.
const CHECK_EVERY: u64 = 64;

/// How long a phase may go without progress before it is reported as stuck.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);

struct Options {
    events: u64,
    ring_capacity: usize,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        events: 1_000_000,
        ring_capacity: RING_CAPACITY,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--events" => {
                let value = args.next().ok_or("--events needs a value")?;
                options.events = value
                    .replace('_', "")
                    .parse()
                    .map_err(|e| format!("--events {value}: {e}"))?;
            }
            "--ring-capacity" => {
                let value = args.next().ok_or("--ring-capacity needs a value")?;
                options.ring_capacity = value
                    .replace('_', "")
                    .parse()
                    .map_err(|e| format!("--ring-capacity {value}: {e}"))?;
            }
            "-h" | "--help" => {
                return Err(
                    "usage: cargo run --release --example e2e [-- --events N] [--ring-capacity N]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other}; try --help")),
        }
    }
    if options.events == 0 {
        return Err("--events must be at least 1".into());
    }
    Ok(options)
}

/// One row of the result table.
struct Row {
    phase: &'static str,
    /// Events the stream acknowledged (or, for core NATS, stored).
    events: u64,
    seconds: f64,
    note: String,
}

impl Row {
    fn rate(&self) -> f64 {
        self.events as f64 / self.seconds
    }
}

/// What a jetring run measured besides its row.
struct JetringRun {
    row: Row,
    latency: Histogram<u64>,
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    let n = options.events;
    let payload = Bytes::from(reference::jetring_payload());
    let event_size = SUBJECT.len() + payload.len();

    let server = common::NatsServer::start();
    let url = server.url();
    common::create_stream_blocking(&url, STREAM, &["event.>"], StorageType::Memory, 1);
    println!(
        "nats-server on {url}, memory stream {STREAM} on event.>; {n} events of {} payload bytes \
         per phase",
        payload.len()
    );

    let rss_before = proc_status_kib("VmRSS");

    // (a) jetring.
    let config = jetring::Config::new(CHAIN_ID)
        .servers([url.as_str()])
        .stream(STREAM)
        .ring_capacity(options.ring_capacity);
    let bus = jetring::Bus::new(config).expect("a valid e2e configuration");
    bus.publish_with_request_id(NAME, REQUEST_ID, &BODY);
    bus.flush(Duration::from_secs(20))
        .expect("the bus connects to the e2e nats-server");
    let rss_connected = proc_status_kib("VmRSS");
    purge(&url);

    let lossless = jetring_run(&bus, n, true);
    let peak_rss_lossless = proc_status_kib("VmHWM");
    check_stored(&url, lossless.row.events, lossless.row.phase);
    purge(&url);

    let tight = jetring_run(&bus, n, false);
    check_stored(&url, tight.row.events, tight.row.phase);
    purge(&url);

    let peak_rss = proc_status_kib("VmHWM");
    let stats = bus.shutdown(Duration::from_secs(10));

    // (b) and (c), on a runtime of their own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build a multi-thread runtime");

    let js = runtime.block_on(jetstream_run(&url, n, payload.clone(), false));
    check_stored(&url, js.events, js.phase);
    purge(&url);

    let js_msg_id = runtime.block_on(jetstream_run(&url, n, payload.clone(), true));
    check_stored(&url, js_msg_id.events, js_msg_id.phase);
    purge(&url);

    let core = runtime.block_on(core_run(&url, n, payload.clone(), false));
    check_stored(&url, core.events, core.phase);
    purge(&url);

    let core_msg_id = runtime.block_on(core_run(&url, n, payload.clone(), true));

    print_table(
        &[
            &lossless.row,
            &tight.row,
            &js,
            &js_msg_id,
            &core,
            &core_msg_id,
        ],
        &js,
        &core,
    );
    println!();
    print_latency(&lossless);
    print_latency(&tight);
    println!();
    println!(
        "memory: peak RSS {} after the jetring phase, {} after its lossless run; RSS {} before \
         the bus, {} once it connected; the ring holds at most {} events x \
         {event_size} bytes (subject and payload) = {:.1} MiB",
        kib(peak_rss),
        kib(peak_rss_lossless),
        kib(rss_before),
        kib(rss_connected),
        options.ring_capacity,
        (options.ring_capacity * event_size) as f64 / (1024.0 * 1024.0)
    );
    println!(
        "jetring totals: {} accepted, {} acknowledged, {} duplicates, {} retried, {} dropped \
         ({} queue_full)",
        stats.accepted,
        stats.acked,
        stats.duplicates,
        stats.retried,
        stats.dropped_total(),
        stats.dropped(jetring::DropReason::QueueFull)
    );
    ExitCode::SUCCESS
}

/// Publishes `n` reference events from this thread and waits until they are all
/// acknowledged or dropped. With `lossless`, the producer waits while the ring is nearly full.
fn jetring_run(bus: &jetring::Bus, n: u64, lossless: bool) -> JetringRun {
    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds");
    let capacity = bus.stats().queue_capacity;
    // Room for the events published between two looks at the depth, and some slack.
    let high_water = capacity.saturating_sub(4 * CHECK_EVERY);
    let low_water = capacity / 2;
    let mut backoffs = 0u64;

    let before = bus.stats();
    let start = Instant::now();
    for i in 0..n {
        if lossless && i % CHECK_EVERY == 0 && bus.stats().queue_depth >= high_water {
            backoffs += 1;
            while bus.stats().queue_depth > low_water {
                thread::sleep(Duration::from_micros(50));
            }
        }

        let called = Instant::now();
        bus.publish_with_request_id(NAME, REQUEST_ID, black_box(&BODY));
        latency.saturating_record(called.elapsed().as_nanos() as u64);
    }
    let publishing = start.elapsed();

    let timeout = STALL_TIMEOUT + Duration::from_micros(20 * n);
    if let Err(error) = bus.flush(timeout) {
        eprintln!("jetring: {error}");
    }
    let seconds = start.elapsed().as_secs_f64();
    let after = bus.stats();

    let acked = after.acked - before.acked;
    let full = after.dropped(jetring::DropReason::QueueFull)
        - before.dropped(jetring::DropReason::QueueFull);
    let other_drops = (after.dropped_total() - before.dropped_total()) - full;
    let note = if lossless {
        format!(
            "{full} queue_full, {other_drops} other drops; backed off {backoffs} times; \
             publish loop {:.2} s",
            publishing.as_secs_f64()
        )
    } else {
        format!(
            "{full} queue_full ({:.1}%), {other_drops} other drops; publish loop {:.2} s \
             ({:.0} calls/s)",
            full as f64 * 100.0 / n as f64,
            publishing.as_secs_f64(),
            n as f64 / publishing.as_secs_f64()
        )
    };

    JetringRun {
        row: Row {
            phase: if lossless {
                "(a) jetring, lossless"
            } else {
                "(a) jetring, tight loop"
            },
            events: acked,
            seconds,
            note,
        },
        latency,
    }
}

/// Publishes `n` events through a JetStream context, keeping up to [`ACK_WINDOW`]
/// acknowledgements in flight; with `msg_id`, each carries a unique `Nats-Msg-Id`.
async fn jetstream_run(url: &str, n: u64, payload: Bytes, msg_id: bool) -> Row {
    let context = jetstream::new(common::connect(url).await);
    let subject = Subject::from_static(SUBJECT);
    let id_prefix = nuid::next();
    let mut acks = VecDeque::with_capacity(ACK_WINDOW);
    let (mut acked, mut failed) = (0u64, 0u64);

    let start = Instant::now();
    for i in 0..n {
        if acks.len() == ACK_WINDOW {
            if let Some(ack) = acks.pop_front() {
                match ack.await {
                    Ok(_) => acked += 1,
                    Err(_) => failed += 1,
                }
            }
        }

        let sent = if msg_id {
            let message = PublishMessage::build()
                .payload(payload.clone())
                .message_id(format!("{id_prefix}-{i}"));
            context.send_publish(subject.clone(), message).await
        } else {
            context.publish(subject.clone(), payload.clone()).await
        };
        match sent {
            Ok(ack) => acks.push_back(ack),
            Err(_) => failed += 1,
        }
    }
    for ack in acks {
        match ack.await {
            Ok(_) => acked += 1,
            Err(_) => failed += 1,
        }
    }
    let seconds = start.elapsed().as_secs_f64();

    Row {
        phase: if msg_id {
            "(b) async-nats JetStream + Nats-Msg-Id"
        } else {
            "(b) async-nats JetStream"
        },
        events: acked,
        seconds,
        note: format!("{failed} failed; {ACK_WINDOW} acks in flight"),
    }
}

/// Publishes `n` events with core NATS, no acknowledgements, and times until the stream
/// holds them all.
async fn core_run(url: &str, n: u64, payload: Bytes, msg_id: bool) -> Row {
    let client = common::connect(url).await;
    let context = common::jetstream(url).await;
    let mut stream = context
        .get_stream(STREAM)
        .await
        .expect("the e2e stream exists");
    let first = stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    let subject = Subject::from_static(SUBJECT);

    let prefix = format!("{}-", nuid::next());
    let start = Instant::now();
    for i in 0..n {
        if msg_id {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("{prefix}{i}").as_str(),
            );
            client
                .publish_with_headers(subject.clone(), headers, payload.clone())
                .await
                .expect("core publish");
        } else {
            client
                .publish(subject.clone(), payload.clone())
                .await
                .expect("core publish");
        }
    }
    client.flush().await.expect("core flush");
    let published = start.elapsed();

    // Wait for the stream to take in everything, or to stop making progress.
    let mut stored = 0;
    let mut last_progress = Instant::now();
    let mut seconds = start.elapsed().as_secs_f64();
    while stored < n {
        let last = stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence;
        let now_stored = last - first;
        seconds = start.elapsed().as_secs_f64();
        if now_stored > stored {
            stored = now_stored;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL_TIMEOUT {
            break;
        }
        if stored < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    Row {
        phase: if msg_id {
            "(c') core NATS + Nats-Msg-Id, no acks"
        } else {
            "(c) core NATS, no acks"
        },
        events: stored,
        seconds,
        note: format!(
            "{} not stored; publish + flush {:.2} s",
            n - stored,
            published.as_secs_f64()
        ),
    }
}

/// Deletes every message of the stream.
fn purge(url: &str) {
    common::block_on(async {
        let context = common::jetstream(url).await;
        let stream = context
            .get_stream(STREAM)
            .await
            .expect("the e2e stream exists");
        stream.purge().await.expect("purge the e2e stream");
    });
}

/// Warns when the stream holds a different number of messages than the phase counted.
fn check_stored(url: &str, expected: u64, phase: &str) {
    let stored = common::stream_len_blocking(url, STREAM);
    if stored != expected {
        eprintln!("{phase}: the stream holds {stored} messages, the phase counted {expected}");
    }
}

fn print_table(rows: &[&Row], js: &Row, core: &Row) {
    println!();
    println!(
        "{:<40} {:>10} {:>8} {:>11} {:>7} {:>7}",
        "phase", "events", "seconds", "events/s", "vs (b)", "vs (c)"
    );
    for row in rows {
        println!(
            "{:<40} {:>10} {:>8.2} {:>11.0} {:>7.2} {:>7.2}",
            row.phase,
            row.events,
            row.seconds,
            row.rate(),
            row.rate() / js.rate(),
            row.rate() / core.rate()
        );
    }
    println!();
    for row in rows {
        println!("{}: {}", row.phase, row.note);
    }
}

fn print_latency(run: &JetringRun) {
    let h = &run.latency;
    println!(
        "{} publish() ns: p50 {}, p99 {}, p99.9 {}, max {} ({} calls)",
        run.row.phase,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        h.len()
    );
}

/// A `kB` field of `/proc/self/status`, such as `VmHWM`; `None` where there is no procfs.
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|line| line.starts_with(field) && line[field.len()..].starts_with(':'))?;
    line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn kib(value: Option<u64>) -> String {
    match value {
        Some(kib) => format!("{:.1} MiB", kib as f64 / 1024.0),
        None => "unknown".to_owned(),
    }
}
