//! `publish` makes no heap allocation in steady state, counted by a global allocator that
//! counts the allocations of the threads that ask it to.
//!
//! The bus runs against a real server, so the drain really sends, acknowledgements really
//! arrive and arena blocks are really released and reclaimed.

mod common;
#[path = "../benches/reference/mod.rs"]
mod reference;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::StorageType;
use common::NatsServer;

/// Counts allocations (and reallocations) made by threads whose `COUNTING` flag is set, and
/// hands every request to the system allocator. Counts are per thread, so tests running in
/// parallel do not see each other's allocations.
struct CountingAllocator;

thread_local! {
    // `const` initialisation: using these never allocates, so the allocator can.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds exactly as it does for `System`; counting touches only
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Counts the allocations `f` makes on this thread.
fn count_allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get) - before
}

fn connected_bus(server: &NatsServer) -> jetring::Bus {
    common::create_stream_blocking(
        &server.url(),
        "EVENTS",
        &["event.>"],
        StorageType::Memory,
        1,
    );
    let config = jetring::Config::new(1)
        .servers([server.url()])
        .stream("EVENTS");
    let bus = jetring::Bus::new(config).expect("valid config");

    let deadline = Instant::now() + Duration::from_secs(20);
    while !bus.stats().connected {
        assert!(Instant::now() < deadline, "the bus did not connect");
        std::thread::sleep(Duration::from_millis(10));
    }
    bus
}

#[test]
fn publish_allocates_nothing_in_steady_state() {
    const CHUNK: u64 = 1_000;
    const WARM_UP_CHUNKS: u64 = 100;
    const MEASURED_CHUNKS: u64 = 300;

    let mut server = NatsServer::start();
    let bus = connected_bus(&server);
    let body = reference::BODY;

    // A thread's arena keeps the blocks it needed most. Two chunks published while the server
    // is paused, so that the drain releases none of their bytes, make it keep enough for any
    // chunk however far the drain lags during it; otherwise the count would depend on how
    // the drain and the server were scheduled during warm-up.
    server.pause();
    let mut warm_up = count_allocations(|| {
        for _ in 0..2 * CHUNK {
            bus.publish_with_request_id("priceEstimate", reference::REQUEST_ID, &body);
        }
    });
    server.resume();
    bus.flush(Duration::from_secs(30))
        .expect("the drain delivers the paused chunks");

    // A chunk (about 400 KB) fits in the ring and in the blocks an arena keeps; between
    // chunks the drain catches up, so every block the arena retired has been released by the
    // time it is needed again.
    let run_chunks = |chunks: u64| -> u64 {
        let mut allocations = 0;
        for _ in 0..chunks {
            let n = count_allocations(|| {
                for _ in 0..CHUNK {
                    bus.publish_with_request_id("priceEstimate", reference::REQUEST_ID, &body);
                }
            });
            allocations += n;
            bus.flush(Duration::from_secs(30))
                .expect("the drain keeps up between chunks");
        }
        allocations
    };

    warm_up += run_chunks(WARM_UP_CHUNKS);
    let measured = run_chunks(MEASURED_CHUNKS);
    let publishes = MEASURED_CHUNKS * CHUNK;
    println!(
        "allocations: {warm_up} while warming up, {measured} in {publishes} steady-state publishes"
    );

    let stats = bus.shutdown(Duration::from_secs(10));
    assert_eq!(
        stats.acked,
        (2 + WARM_UP_CHUNKS + MEASURED_CHUNKS) * CHUNK,
        "{stats:?}"
    );
    assert_eq!(measured, 0, "publish allocated in steady state");
}

#[test]
fn continuous_publishing_allocates_at_most_one_block_per_block_of_events() {
    const EVENTS: u64 = 60_000;
    const BURST: u64 = 500;

    let server = NatsServer::start();
    let bus = connected_bus(&server);
    let body = reference::BODY;

    // No waiting for the drain, only a steady pace of about 20,000 events a second (a pace
    // even an unoptimised test build delivers): blocks are reclaimed only if the drain has
    // released them by the time the arena cycles back to them.
    let allocations = count_allocations(|| {
        for i in 0..EVENTS {
            bus.publish_with_request_id("priceEstimate", reference::REQUEST_ID, &body);
            if i % BURST == BURST - 1 {
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    });

    bus.flush(Duration::from_secs(60)).expect("flush");
    let stats = bus.shutdown(Duration::from_secs(10));
    let per_million = allocations as f64 * 1e6 / EVENTS as f64;
    println!(
        "allocations: {allocations} in {EVENTS} continuous publishes ({per_million:.0} per \
         million); acked {}, queue_full {}",
        stats.acked,
        stats.dropped(jetring::DropReason::QueueFull)
    );

    // An event here is about 420 bytes, so a 64 KiB block holds at least 128 of them.
    // Allocating a block costs two allocations (the buffer, and its shared header on the
    // first split). The bound is what an arena that never reused a block would allocate.
    let events_per_block = 64 * 1024 / 512;
    let bound = 2 * EVENTS / events_per_block;
    assert!(
        allocations <= bound,
        "{allocations} allocations, bound {bound}"
    );
    assert_eq!(stats.publish_calls(), EVENTS);
    assert_eq!(
        stats.accepted,
        stats.acked + stats.dropped_after_accept.total()
    );
}
