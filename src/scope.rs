//! Request correlation: the request id that `publish` puts into the envelope.
//!
//! A request id is given explicitly ([`Bus::publish_with_request_id`](crate::Bus)) or taken
//! from the scope the caller is in. A scope is per thread: [`with_request_id`] sets it for
//! the length of a closure, and [`RequestScoped`] (made by [`in_request`]) sets it around
//! every poll of a future, so it follows a task across `.await` points and executor threads.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

thread_local! {
    static CURRENT: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
}

/// Restores the previous scope when dropped, also when the closure or poll panics.
struct Restore(Option<Arc<str>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        let _ = CURRENT.try_with(|cell| {
            if let Ok(mut current) = cell.try_borrow_mut() {
                *current = previous;
            }
        });
    }
}

fn enter(id: Option<Arc<str>>) -> Restore {
    let previous = CURRENT
        .try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut current) => std::mem::replace(&mut *current, id),
            // Entered from inside a `publish` that is reading the scope: leave it as is.
            Err(_) => None,
        })
        .unwrap_or(None);
    Restore(previous)
}

/// Runs `f` with `request_id` as the request id of every event published on this thread
/// meanwhile, unless an event names its own. Scopes nest; the innermost wins.
///
/// ```
/// # let bus = jetring::Bus::capture(jetring::Config::new(1)).unwrap().0;
/// jetring::with_request_id("4f1c7a5e-3b7d-4e55-9d0a-0c8f5f0e6a11", || {
///     bus.publish("priceEstimate", &42);
/// });
/// ```
pub fn with_request_id<R>(request_id: impl Into<Arc<str>>, f: impl FnOnce() -> R) -> R {
    let _restore = enter(Some(request_id.into()));
    f()
}

/// The request id of the current scope, if any.
pub fn current_request_id() -> Option<Arc<str>> {
    CURRENT
        .try_with(|cell| cell.try_borrow().ok().and_then(|id| id.clone()))
        .ok()
        .flatten()
}

/// Calls `f` with the current scope's request id, without cloning it.
#[inline]
pub(crate) fn with_current<R>(f: impl FnOnce(Option<&str>) -> R) -> R {
    let mut f = Some(f);
    let result = CURRENT.try_with(|cell| match cell.try_borrow() {
        Ok(id) => f.take().map(|f| f(id.as_deref())),
        Err(_) => None,
    });

    match (result, f) {
        (Ok(Some(value)), _) => value,
        (_, Some(f)) => f(None),
        (_, None) => unreachable!("with_current: closure consumed without a result"),
    }
}

/// Wraps `future` so that every event it publishes carries `request_id`.
///
/// ```
/// # async fn estimate() {}
/// # async fn handler() {
/// jetring::in_request("4f1c7a5e-3b7d-4e55-9d0a-0c8f5f0e6a11", estimate()).await;
/// # }
/// ```
pub fn in_request<F: Future>(request_id: impl Into<Arc<str>>, future: F) -> RequestScoped<F> {
    RequestScoped {
        request_id: request_id.into(),
        future: Box::pin(future),
    }
}

/// A future that runs inside a request scope. Made by [`in_request`].
#[must_use = "futures do nothing unless polled"]
pub struct RequestScoped<F> {
    request_id: Arc<str>,
    future: Pin<Box<F>>,
}

impl<F: Future> Future for RequestScoped<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _restore = enter(Some(self.request_id.clone()));
        self.future.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_restore() {
        assert_eq!(current_request_id(), None);
        with_request_id("outer", || {
            assert_eq!(current_request_id().as_deref(), Some("outer"));
            with_request_id("inner", || {
                assert_eq!(current_request_id().as_deref(), Some("inner"));
            });
            assert_eq!(current_request_id().as_deref(), Some("outer"));
        });
        assert_eq!(current_request_id(), None);
    }

    #[test]
    fn a_panic_inside_the_scope_restores_the_previous_one() {
        let result = std::panic::catch_unwind(|| with_request_id("doomed", || panic!("boom")));
        assert!(result.is_err());
        assert_eq!(current_request_id(), None);
    }

    #[test]
    fn the_scope_follows_a_future_across_polls() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();

        let seen = runtime.block_on(in_request("req-9", async {
            let before = current_request_id();
            tokio::task::yield_now().await;
            (before, current_request_id())
        }));

        assert_eq!(seen.0.as_deref(), Some("req-9"));
        assert_eq!(seen.1.as_deref(), Some("req-9"));
        assert_eq!(current_request_id(), None);
    }
}
