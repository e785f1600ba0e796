//! The drain's sleep and wake-up protocol, in one state word.
//!
//! Producers must never pay a syscall while the drain is awake, and the drain must never
//! sleep past an event. Both sides follow a store-fence-load pattern (Dekker's):
//!
//! ```text
//!  producer                              drain, going to sleep
//!  ────────                              ─────────────────────
//!  ring.push(event)                      state |= SLEEPING
//!  fence(SeqCst)                         fence(SeqCst)
//!  if state has SLEEPING:                if ring is not empty:
//!      clear it; wake the drain              clear SLEEPING; don't sleep
//! ```
//!
//! With both fences sequentially consistent, at least one side sees the other's write: either
//! the drain finds the event on its last look, or the producer finds `SLEEPING` and wakes it.
//! Whoever clears `SLEEPING` first owns the wake-up, so a sleeping drain is woken once. The
//! wake-up itself is a `tokio::sync::Notify` permit, which is kept if it arrives before the
//! drain waits, so it cannot be lost either.
//!
//! The same word carries `CLOSED`. A producer that sees it after pushing takes the ring's
//! contents out itself (see `Shared::reap`), so nothing published during or after shutdown
//! waits in the ring unseen.
//!
//! The protocol is model-checked with loom by the `loom/` crate, which compiles this file on
//! its own: `cd loom && RUSTFLAGS="--cfg jetring_loom" cargo test --release`.

#[cfg(jetring_loom)]
use loom::sync::atomic::{fence, AtomicU32};
#[cfg(not(jetring_loom))]
use std::sync::atomic::{fence, AtomicU32};

use std::sync::atomic::Ordering::{Relaxed, SeqCst};

/// The drain is waiting for a producer to wake it.
const SLEEPING: u32 = 1;
/// The bus is shut down: nothing more is delivered.
const CLOSED: u32 = 2;

/// What a producer must do after pushing an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AfterPush {
    /// Wake the drain: it was asleep and this producer cleared its flag.
    pub(crate) wake: bool,
    /// The bus is closed: take the ring's contents out and count them.
    pub(crate) reap: bool,
}

/// The state word shared by producers and the drain.
pub(crate) struct WakeState {
    word: AtomicU32,
}

impl WakeState {
    pub(crate) fn new() -> Self {
        WakeState {
            word: AtomicU32::new(0),
        }
    }

    /// Called by a producer right after a successful push.
    #[inline]
    pub(crate) fn after_push(&self) -> AfterPush {
        // Pairs with the fence in `prepare_sleep`.
        fence(SeqCst);
        let state = self.word.load(Relaxed);
        if state == 0 {
            return AfterPush {
                wake: false,
                reap: false,
            };
        }
        self.after_push_slow(state)
    }

    #[cold]
    fn after_push_slow(&self, state: u32) -> AfterPush {
        let wake = state & SLEEPING != 0 && self.word.fetch_and(!SLEEPING, SeqCst) & SLEEPING != 0;
        AfterPush {
            wake,
            reap: state & CLOSED != 0,
        }
    }

    /// Called by the drain before it sleeps. Returns whether it may sleep: `false` when
    /// `ring_is_empty` says an event slipped in, in which case the flag is cleared again.
    pub(crate) fn prepare_sleep(&self, ring_is_empty: impl FnOnce() -> bool) -> bool {
        self.word.fetch_or(SLEEPING, SeqCst);

        // Pairs with the fence in `after_push`.
        fence(SeqCst);
        if ring_is_empty() {
            true
        } else {
            self.word.fetch_and(!SLEEPING, SeqCst);
            false
        }
    }

    /// Called by the drain once it is awake again, whatever woke it.
    pub(crate) fn awake(&self) {
        self.word.fetch_and(!SLEEPING, SeqCst);
    }

    /// Marks the bus closed.
    pub(crate) fn close(&self) {
        self.word.fetch_or(CLOSED, SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.word.load(SeqCst) & CLOSED != 0
    }
}

/// Checks of the protocol over the interleavings loom produces, with the ring modelled as a
/// counter updated with the same orderings as `ArrayQueue`'s push (a `SeqCst` read-modify-
/// write) and `is_empty` (`SeqCst` loads).
#[cfg(all(test, jetring_loom))]
mod model {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::{Arc, Notify};
    use loom::thread;

    /// One drain and `producers` producers each pushing one event: the drain takes every
    /// event and never waits forever (loom reports a deadlock if it could). The wake-up is
    /// loom's `Notify`, a permit kept until waited for, as `tokio::sync::Notify::notify_one`.
    fn run(producers: usize, preemption_bound: Option<usize>) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = preemption_bound;

        builder.check(move || {
            let state = Arc::new(WakeState::new());
            let ring = Arc::new(AtomicUsize::new(0));
            let wake = Arc::new(Notify::new());

            let handles: Vec<_> = (0..producers)
                .map(|_| {
                    let (state, ring, wake) = (state.clone(), ring.clone(), wake.clone());
                    thread::spawn(move || {
                        ring.fetch_add(1, SeqCst);
                        if state.after_push().wake {
                            wake.notify();
                        }
                    })
                })
                .collect();

            let mut taken = 0;
            while taken < producers {
                let available = ring.swap(0, SeqCst);
                if available > 0 {
                    taken += available;
                    continue;
                }
                if state.prepare_sleep(|| ring.load(SeqCst) == 0) {
                    wake.wait();
                    state.awake();
                }
            }

            for handle in handles {
                handle.join().unwrap();
            }
            assert_eq!(taken, producers);
        });
    }

    #[test]
    fn one_producer_never_loses_a_wake_up() {
        run(1, None);
    }

    /// Every interleaving with up to three preemptions (loom's usual bound for such models;
    /// unbounded, two producers take hours).
    #[test]
    fn two_producers_never_lose_a_wake_up() {
        run(2, Some(3));
    }

    #[test]
    fn a_producer_that_pushes_after_close_is_told_to_reap() {
        loom::model(|| {
            let state = Arc::new(WakeState::new());
            let ring = Arc::new(AtomicUsize::new(0));

            let producer = {
                let (state, ring) = (state.clone(), ring.clone());
                thread::spawn(move || {
                    ring.fetch_add(1, SeqCst);
                    if state.after_push().reap {
                        ring.swap(0, SeqCst);
                    }
                })
            };

            // Shutdown: close, then take what is in the ring.
            state.close();
            ring.swap(0, SeqCst);

            producer.join().unwrap();
            assert_eq!(
                ring.load(SeqCst),
                0,
                "an event stayed in the ring after shutdown"
            );
        });
    }
}

#[cfg(all(test, not(jetring_loom)))]
mod tests {
    use super::*;

    #[test]
    fn an_awake_drain_costs_producers_nothing() {
        let state = WakeState::new();
        assert_eq!(
            state.after_push(),
            AfterPush {
                wake: false,
                reap: false
            }
        );
    }

    #[test]
    fn only_the_first_producer_after_sleep_wakes_the_drain() {
        let state = WakeState::new();
        assert!(state.prepare_sleep(|| true));
        assert!(state.after_push().wake);
        assert!(!state.after_push().wake);
    }

    #[test]
    fn a_drain_that_sees_an_event_does_not_sleep_or_ask_for_a_wake_up() {
        let state = WakeState::new();
        assert!(!state.prepare_sleep(|| false));
        assert!(!state.after_push().wake);
    }

    #[test]
    fn producers_reap_once_closed() {
        let state = WakeState::new();
        state.close();
        assert!(state.is_closed());
        assert!(state.after_push().reap);
    }
}
