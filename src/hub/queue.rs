//! A session's bounded outbox: the queue a fan-out offers frames into and
//! the session's task drains.
//!
//! One fan-out touches one queue per recipient, each cold in the cache, so
//! what an offer touches is what a fan-out costs. Here that is one lock word
//! beside the queue's header and its waker (one cache line), plus the slot
//! written. A tokio `mpsc` channel touches its semaphore, its block list,
//! the block and its waker on separate lines, and a separate `Notify` was
//! needed to report overflow. Only the first offer after the session parked
//! pays for a wake; the rest find no waker and just queue.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use super::{Offer, Outbox, Outgoing};

/// Capacity kept by an emptied queue; a burst's larger buffer is released.
const KEEP_CAPACITY: usize = 64;

/// What the session should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// Frames are queued: take them with [`SessionQueue::take_batch`].
    Frames,
    /// An offer found the queue full: the session is too slow and must go.
    Overflow,
}

#[repr(align(64))]
pub struct SessionQueue {
    state: Mutex<State>,
    capacity: usize,
}

struct State {
    items: VecDeque<Outgoing>,
    waker: Option<Waker>,
    overflowed: bool,
}

impl SessionQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                waker: None,
                overflowed: false,
            }),
            capacity: capacity.max(1),
        }
    }

    /// Waits until there is something to do. Overflow comes first: a slow
    /// session is closed without writing what it still holds.
    pub async fn ready(&self) -> Ready {
        poll_fn(|cx| self.poll_ready(cx)).await
    }

    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Ready> {
        let mut st = self.state.lock();
        if st.overflowed {
            return Poll::Ready(Ready::Overflow);
        }
        if !st.items.is_empty() {
            return Poll::Ready(Ready::Frames);
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Moves up to `max` queued frames, oldest first, into `out`.
    pub fn take_batch(&self, max: usize, out: &mut Vec<Outgoing>) {
        let mut st = self.state.lock();
        let n = st.items.len().min(max);
        out.extend(st.items.drain(..n));
        if st.items.is_empty() && st.items.capacity() > KEEP_CAPACITY {
            st.items.shrink_to(KEEP_CAPACITY);
        }
    }
}

impl Outbox for SessionQueue {
    fn offer(&self, item: Outgoing) -> Offer {
        let (offer, waker) = {
            let mut st = self.state.lock();
            if st.items.len() >= self.capacity {
                st.overflowed = true;
                (Offer::Full, st.waker.take())
            } else {
                st.items.push_back(item);
                (Offer::Queued, st.waker.take())
            }
        };
        // Woken outside the lock, so the session never waits on it.
        if let Some(w) = waker {
            w.wake();
        }
        offer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Frame;
    use std::sync::Arc;
    use std::time::Duration;

    fn item(seq: u64) -> Outgoing {
        Outgoing::new(seq, Frame::from(format!("{{\"seq\":{seq}}}")))
    }

    #[tokio::test]
    async fn frames_come_out_in_order_in_batches() {
        let q = SessionQueue::new(16);
        for seq in 1..=10 {
            assert_eq!(q.offer(item(seq)), Offer::Queued);
        }
        assert_eq!(q.ready().await, Ready::Frames);
        let mut out = Vec::new();
        q.take_batch(4, &mut out);
        q.take_batch(100, &mut out);
        let seqs: Vec<u64> = out.iter().map(Outgoing::seq).collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        assert!(q.state.lock().items.is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_reports_overflow_first() {
        let q = SessionQueue::new(2);
        assert_eq!(q.offer(item(1)), Offer::Queued);
        assert_eq!(q.offer(item(2)), Offer::Queued);
        assert_eq!(q.offer(item(3)), Offer::Full);
        assert_eq!(
            q.state.lock().items.len(),
            2,
            "the refused frame is not queued"
        );
        assert_eq!(q.ready().await, Ready::Overflow);
    }

    #[tokio::test]
    async fn an_offer_wakes_the_waiting_session() {
        let q = Arc::new(SessionQueue::new(8));
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.ready().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        assert_eq!(q.offer(item(7)), Offer::Queued);
        let ready = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(ready, Ready::Frames);
    }

    #[test]
    fn a_drained_queue_gives_back_a_burst_buffer() {
        let q = SessionQueue::new(10_000);
        for seq in 0..5_000 {
            q.offer(item(seq));
        }
        let mut out = Vec::new();
        q.take_batch(usize::MAX, &mut out);
        assert!(q.state.lock().items.capacity() <= KEEP_CAPACITY);
    }
}
