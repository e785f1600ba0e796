//! Per-thread arenas: where producers write events without allocating.
//!
//! Each producer thread owns a few 64 KiB blocks. An event is written at the front of the
//! current block's free space and split off as a frozen [`Bytes`] that shares the block
//! (one reference-count increment, no copy, no allocation). The drain drops that `Bytes`
//! once JetStream has acknowledged the event, or once it is dropped.
//!
//! ```text
//!  current block   [ sent+acked | in ring | in flight | free space ......... ]
//!                                                      ^ next event is written here
//!  retired blocks  oldest ─► [ all released ]  [ some in flight ]  ...  newest
//!                            └─ reclaimed in place when the current block runs out
//! ```
//!
//! When the current block has less than [`HEADROOM`] left, the thread retires it. Retired
//! blocks are checked oldest first: one whose events have all been released (its reference
//! count is down to the arena's own handle) is reclaimed in place and moves to a free stack.
//! The next block comes from the top of that stack, the most recently used free block, so a
//! thread that the drain keeps up with cycles through a few cache-warm blocks. Only when no
//! block is free, because the drain lags the thread by all of its blocks, does the arena
//! allocate one. In steady state no allocation happens at all.
//!
//! Two limits keep this bounded. The free stack holds at most [`MAX_BLOCKS`] (4 MiB); once
//! it is full, each rotation frees one released block instead, so the surplus of a deep lag
//! that has cleared goes back a block at a time, never in one long call. The retired queue
//! follows at most [`MAX_RETIRED`] blocks: a thread the drain lags by more than that (32 MiB
//! of its events queued or in flight) lets the oldest go, to be freed by whoever releases
//! its last event, rather than track an unbounded queue behind an event that is being
//! retried. Between the two, a lag as deep as a default ring and window (about 130 blocks of
//! reference events) gets its blocks back instead of allocating new ones as it clears.
//!
//! The price: a thread that stops publishing right after a deep lag keeps the blocks that
//! lag filled (at most its share of the ring and window) until it publishes again.
//!
//! An event larger than the free space makes `BytesMut` grow the current block, which
//! allocates; such events are rare by design and cost no more than a plain `Vec`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use bytes::BytesMut;

use crate::envelope::Clock;

/// Size of one arena block.
pub(crate) const BLOCK_SIZE: usize = 64 * 1024;

/// A block with less free space than this is retired before the next event is written.
/// Events larger than this may make the block grow (and allocate).
pub(crate) const HEADROOM: usize = 4 * 1024;

/// Most free blocks a thread keeps for reuse: 4 MiB, about 10,000 reference events. A
/// thread holds this many only after the drain has lagged that far behind it; a thread that
/// publishes at a pace the drain follows cycles through a few.
pub(crate) const MAX_BLOCKS: usize = 64;

/// Most retired blocks a thread follows until their events are released: 32 MiB, about
/// 80,000 reference events, well beyond a default ring and window.
pub(crate) const MAX_RETIRED: usize = 512;

/// What each producer thread keeps for itself.
pub(crate) struct Local {
    pub(crate) arena: Arena,
    pub(crate) clock: Clock,
    /// Stripe of the accepted-events counter this thread adds to.
    pub(crate) stripe: usize,
    /// The bus (its address, as an id) whose ring refused this thread's last event, or 0.
    /// While that ring stays full, `publish` does not encode for it.
    pub(crate) full_ring: usize,
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::new());
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

impl Local {
    fn new() -> Self {
        Local {
            arena: Arena::new(),
            clock: Clock::new(),
            stripe: NEXT_STRIPE.fetch_add(1, Relaxed),
            full_ring: 0,
        }
    }
}

/// Runs `f` with this thread's arena and clock.
///
/// Falls back to a throw-away `Local` (which allocates) when the thread's own is unavailable:
/// during thread teardown, or when `f` itself publishes again (a `Serialize` impl that emits
/// an event).
#[inline]
pub(crate) fn with_local<R>(f: impl FnOnce(&mut Local) -> R) -> R {
    let mut f = Some(f);
    let fast = LOCAL.try_with(|cell| match cell.try_borrow_mut() {
        Ok(mut local) => f.take().map(|f| f(&mut local)),
        Err(_) => None,
    });

    match (fast, f) {
        (Ok(Some(result)), _) => result,
        (_, Some(f)) => f(&mut Local::new()),
        // `f` ran but returned through `None`: impossible, since `Some(f(..))` is returned
        // whenever `f` is taken.
        (_, None) => unreachable!("with_local: closure consumed without a result"),
    }
}

/// One thread's blocks.
pub(crate) struct Arena {
    /// The block events are written into.
    current: BytesMut,
    /// Full blocks, oldest first, some of whose events may still be queued or in flight.
    retired: VecDeque<BytesMut>,
    /// Reclaimed blocks, the most recently used on top.
    free: Vec<BytesMut>,
    /// Blocks allocated so far, for the tests.
    #[cfg(test)]
    allocated: u64,
}

impl Arena {
    pub(crate) fn new() -> Self {
        Arena {
            current: BytesMut::new(),
            retired: VecDeque::new(),
            free: Vec::with_capacity(MAX_BLOCKS),
            #[cfg(test)]
            allocated: 0,
        }
    }

    /// The buffer to write the next event into: empty, with at least [`HEADROOM`] bytes of
    /// capacity.
    #[inline]
    pub(crate) fn buffer(&mut self) -> &mut BytesMut {
        debug_assert!(
            self.current.is_empty(),
            "events are split off after writing"
        );
        if self.current.capacity() < HEADROOM {
            self.rotate();
        }
        &mut self.current
    }

    #[cold]
    fn rotate(&mut self) {
        // Retired blocks whose events are all released become free, oldest first.
        // With the free stack full, one released block per rotation is freed instead, so that
        // a deep lag that has cleared is given back a block at a time, never all in one call.
        let mut freed_one = false;
        while let Some(oldest) = self.retired.front_mut() {
            if !oldest.try_reclaim(BLOCK_SIZE / 2) {
                break;
            }
            if self.free.len() < MAX_BLOCKS {
                if let Some(block) = self.retired.pop_front() {
                    self.free.push(block);
                }
            } else if !freed_one {
                self.retired.pop_front();
                freed_one = true;
            } else {
                break;
            }
        }

        let next = self.free.pop().unwrap_or_else(|| {
            if self.retired.len() >= MAX_RETIRED {
                // Still referenced by queued events: freed when the last one is released.
                self.retired.pop_front();
            }
            #[cfg(test)]
            {
                self.allocated += 1;
            }
            BytesMut::with_capacity(BLOCK_SIZE)
        });

        let old = std::mem::replace(&mut self.current, next);
        if old.capacity() > 0 {
            self.retired.push_back(old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_blocks_are_reused_without_allocating_new_ones() {
        let mut arena = Arena::new();
        let mut block_starts = std::collections::HashSet::new();
        let mut rotations = 0;

        // Fill many blocks, releasing every event at once, as a drain that keeps up would.
        for _ in 0..(MAX_BLOCKS * 8 * BLOCK_SIZE / 1000) {
            let rotating = arena.current.capacity() < HEADROOM;
            let buf = arena.buffer();
            if rotating {
                rotations += 1;
                block_starts.insert(buf.as_ptr() as usize);
            }
            buf.extend_from_slice(&[7u8; 1000]);
            drop(buf.split().freeze());
        }

        assert!(rotations > 4 * MAX_BLOCKS, "only {rotations} rotations");
        assert!(
            block_starts.len() <= 2,
            "{} distinct blocks",
            block_starts.len()
        );
    }

    #[test]
    fn after_a_burst_the_arena_cycles_through_few_blocks_again() {
        let mut arena = Arena::new();

        // A burst the drain does not keep up with: forty blocks' worth held at once.
        let held: Vec<_> = (0..(40 * BLOCK_SIZE / 1000))
            .map(|_| {
                let buf = arena.buffer();
                buf.extend_from_slice(&[1u8; 1000]);
                buf.split().freeze()
            })
            .collect();
        drop(held);

        // Then a steady stream released at once: the free stack hands back the same few
        // cache-warm blocks instead of cycling through all forty.
        let mut block_starts = std::collections::HashSet::new();
        for _ in 0..(20 * BLOCK_SIZE / 1000) {
            let rotating = arena.current.capacity() < HEADROOM;
            let buf = arena.buffer();
            if rotating {
                block_starts.insert(buf.as_ptr() as usize);
            }
            buf.extend_from_slice(&[2u8; 1000]);
            drop(buf.split().freeze());
        }
        assert!(
            block_starts.len() <= 3,
            "{} distinct blocks",
            block_starts.len()
        );
    }

    #[test]
    fn blocks_still_in_use_are_never_written_over() {
        let mut arena = Arena::new();
        let mut held = Vec::new();

        // Keep every event alive, past the retired queue's limit: the arena must move on to
        // fresh blocks.
        for i in 0..((MAX_RETIRED + 8) * BLOCK_SIZE / 500) {
            let buf = arena.buffer();
            buf.extend_from_slice(&[i as u8; 500]);
            held.push((i as u8, buf.split().freeze()));
        }

        for (value, bytes) in &held {
            assert_eq!(bytes.len(), 500);
            assert!(bytes.iter().all(|b| b == value));
        }
        assert!(arena.retired.len() <= MAX_RETIRED);
        assert!(arena.free.is_empty());
    }

    #[test]
    fn a_steady_lag_deeper_than_max_blocks_allocates_nothing() {
        let mut arena = Arena::new();
        let lag = 2 * MAX_BLOCKS * BLOCK_SIZE / 1000;
        let mut held = VecDeque::new();
        let publish = |arena: &mut Arena, held: &mut VecDeque<bytes::Bytes>| {
            let buf = arena.buffer();
            buf.extend_from_slice(&[5u8; 1000]);
            held.push_back(buf.split().freeze());
            if held.len() > lag {
                held.pop_front();
            }
        };

        // The drain releases each event once the thread is `lag` events (twice MAX_BLOCKS
        // blocks) further on, as when the ring stays deep.
        for _ in 0..2 * lag {
            publish(&mut arena, &mut held);
        }
        let warmed_up = arena.allocated;
        for _ in 0..4 * lag {
            publish(&mut arena, &mut held);
        }
        assert_eq!(
            arena.allocated, warmed_up,
            "blocks allocated while the lag held"
        );

        // Once it clears, the surplus is freed one block per rotation, down to MAX_BLOCKS.
        held.clear();
        for _ in 0..((2 * MAX_BLOCKS + 8) * BLOCK_SIZE / 1000) {
            let buf = arena.buffer();
            buf.extend_from_slice(&[6u8; 1000]);
            drop(buf.split().freeze());
            assert!(arena.free.len() <= MAX_BLOCKS);
        }
        assert!(arena.retired.len() <= 2, "{} retired", arena.retired.len());
        assert_eq!(arena.allocated, warmed_up);
    }

    #[test]
    fn publishing_from_inside_the_closure_falls_back_instead_of_panicking() {
        let (outer, inner) = with_local(|outer| {
            let inner = with_local(|inner| {
                let buf = inner.arena.buffer();
                buf.extend_from_slice(b"inner");
                buf.split().freeze()
            });
            let buf = outer.arena.buffer();
            buf.extend_from_slice(b"outer");
            (buf.split().freeze(), inner)
        });
        assert_eq!(&outer[..], b"outer");
        assert_eq!(&inner[..], b"inner");
    }
}
