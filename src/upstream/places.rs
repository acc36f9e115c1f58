//! An upstream's `max-concurrency` places, handed out fairly: when all are taken, callers wait
//! in the scheduler's [`FairQueue`] (one FIFO per uid, served round-robin), so that one user
//! with many requests cannot take every place of a shared upstream while others wait. At most
//! `queue-size` wait; a waiter whose client left is skipped.

use crate::engine::scheduler::FairQueue;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The places of one upstream.
#[derive(Debug)]
pub struct Places {
    state: Mutex<State>,
    max: u32,
    queue_size: usize,
}

#[derive(Debug)]
struct State {
    free: u32,
    waiting: FairQueue<oneshot::Sender<Place>>,
}

/// One place, given back when dropped (to the next caller in turn, if any waits).
#[derive(Debug)]
pub struct Place {
    places: Option<Arc<Places>>,
}

/// All places are taken and `queue-size` callers wait already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full(pub usize);

impl Places {
    /// `max` places, at most `queue_size` callers waiting.
    pub fn new(max: u32, queue_size: usize) -> Arc<Places> {
        Arc::new(Places {
            state: Mutex::new(State {
                free: max,
                waiting: FairQueue::default(),
            }),
            max,
            queue_size,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for `uid`: at once when one is free and nobody waits, else after the callers
    /// ahead in turn. Dropping the future gives up its turn.
    pub async fn acquire(self: &Arc<Self>, uid: u32) -> Result<Place, Full> {
        let rx = {
            let mut s = self.state();
            if s.free > 0 && s.waiting.is_empty() {
                s.free -= 1;
                return Ok(Place {
                    places: Some(self.clone()),
                });
            }
            if s.waiting.len() >= self.queue_size {
                s.waiting.retain(|tx| !tx.is_closed());
                if s.waiting.len() >= self.queue_size {
                    return Err(Full(s.waiting.len()));
                }
            }
            let (tx, rx) = oneshot::channel();
            s.waiting.push(uid, tx);
            rx
        };
        // The sender is only dropped unsent while the places themselves are.
        rx.await.map_err(|_| Full(0))
    }

    /// Places taken now.
    pub fn in_flight(&self) -> u32 {
        self.max - self.state().free
    }

    /// Callers waiting now (some may have left; they are skipped when their turn comes).
    pub fn waiting(&self) -> usize {
        self.state().waiting.len()
    }

    /// Gives a place back: to the next waiter in turn that is still there, else to the pool.
    fn release(self: Arc<Self>) {
        let mut place = Place {
            places: Some(self.clone()),
        };
        loop {
            let next = self.state().waiting.pop();
            let Some((_, tx)) = next else {
                place.places = None;
                self.state().free += 1;
                return;
            };
            match tx.send(place) {
                Ok(()) => return,
                // That caller left: the next one.
                Err(back) => place = back,
            }
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(places) = self.places.take() {
            places.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn places_go_round_robin_across_uids_and_skip_those_who_left() {
        let places = Places::new(1, 8);
        let first = places.acquire(1).await.unwrap();
        assert_eq!(places.in_flight(), 1);
        // uid 1 queues three more, then uid 2 one: uid 2 must not wait behind all of uid 1's.
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, uid) in [1, 1, 1, 2].into_iter().enumerate() {
            let (places, order) = (places.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let p = places.acquire(uid).await.unwrap();
                order.lock().unwrap().push((uid, i));
                tokio::task::yield_now().await;
                drop(p);
            }));
            tokio::task::yield_now().await;
        }
        // One waiter gives up before its turn.
        let gone = {
            let places = places.clone();
            tokio::spawn(async move { places.acquire(3).await })
        };
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        assert_eq!(places.waiting(), 5);
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        let uids: Vec<u32> = order.iter().map(|(u, _)| *u).collect();
        assert_eq!(uids, vec![1, 2, 1, 1], "{order:?}");
        assert_eq!((places.in_flight(), places.waiting()), (0, 0));
        // Everything came back: a place is free at once.
        let again = places.acquire(9).await.unwrap();
        assert_eq!(places.in_flight(), 1);
        drop(again);
    }

    #[tokio::test]
    async fn at_most_queue_size_wait() {
        let places = Places::new(1, 1);
        let _held = places.acquire(1).await.unwrap();
        let waiter = {
            let places = places.clone();
            tokio::spawn(async move { places.acquire(2).await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert_eq!(places.acquire(3).await.unwrap_err(), Full(1));
        waiter.abort();
    }
}
