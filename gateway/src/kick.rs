//! Wakes a shard's poller from any thread: the primitive both the shard
//! (its poller sleeps on it) and the cross-shard registry (a takeover
//! order kicks the shard that must close the old connection) build on.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, Waker};

use futures_lite::future;

/// Wakes the shard's poller from its idle sleep, from the shard's own
/// thread or another one (librdkafka's, when a routed message arrives;
/// the gateway's, on a stop, a drain or a takeover order; glommio wakers
/// may be woken from any thread).
#[derive(Debug, Default)]
pub(crate) struct Kick {
    kicked: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Kick {
    pub(crate) fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        let waker = self.waker.lock().ok().and_then(|mut waker| waker.take());
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Whether it was kicked since the last look (and forget it).
    #[cfg(test)]
    pub(crate) fn take(&self) -> bool {
        self.kicked.swap(false, Ordering::Acquire)
    }

    /// Drops the stored waker here, on the shard's thread, rather than
    /// wherever the last owner of this `Kick` ends up.
    pub(crate) fn forget(&self) {
        drop(self.waker.lock().ok().and_then(|mut waker| waker.take()));
    }

    /// Completes once kicked (at once if kicked since the last time).
    pub(crate) async fn kicked(&self) {
        future::poll_fn(|cx| {
            if self.kicked.swap(false, Ordering::Acquire) {
                return Poll::Ready(());
            }
            if let Ok(mut waker) = self.waker.lock() {
                *waker = Some(cx.waker().clone());
            }
            // A kick between the check and storing the waker found no
            // waker to wake: look again.
            if self.kicked.swap(false, Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}
