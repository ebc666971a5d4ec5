//! The pool's one fair queue of events waiting for a slot.
//!
//! Nodes live in a slab (a `Vec` with a free list) so that waiting reuses memory
//! instead of allocating per event once the queue has grown, and a waiter that
//! gives up unlinks itself in O(1). A node outlives its place in the queue: the
//! releaser unlinks it and writes the outcome, and the waiter frees it when it
//! reads the outcome (or when it is dropped).
//!
//! Each node remembers when its waiter joined. The queue is first come first
//! served and every waiter has the same timeout, so deadlines rise from front
//! to back: one timer for the whole queue, on the front waiter, is enough.
//!
//! The queue also keeps the latest time read under the pool's lock, and
//! numbers the outcomes it hands out, so that a served waiter can tell
//! whether a time was read after its grant: if so, that time ends its wait
//! and it reads no clock of its own. Under contention a clock read after
//! each grant is the rule (the next acquire to join reads one), and with the
//! runtime's threads taking turns on one core the second read of each waited
//! acquire was about a tenth of the pool's time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::Waker;

use tokio::time::Instant;

use super::SlotId;

const NIL: u32 = u32::MAX;

/// What a waiter was told when it left the queue.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome<C> {
    /// This slot, with its connection of worker generation `generation`, is now the waiter's.
    Granted {
        slot: SlotId,
        generation: u64,
        conn: C,
    },
    /// The pool closed.
    Closed,
    /// Every worker failed.
    NoWorker,
    /// It waited `acquire_timeout` in vain.
    TimedOut,
}

#[derive(Debug)]
struct Node<C> {
    prev: u32,
    next: u32,
    linked: bool,
    /// When the waiter joined; meaningless once the node is vacant.
    since: Instant,
    /// The number of the outcome it was given (see `WaitQueue::given`).
    given: u64,
    waker: Option<Waker>,
    outcome: Option<Outcome<C>>,
}

impl<C> Node<C> {
    fn vacant(since: Instant) -> Self {
        Node {
            prev: NIL,
            next: NIL,
            linked: false,
            since,
            given: 0,
            waker: None,
            outcome: None,
        }
    }
}

#[derive(Debug)]
pub(crate) struct WaitQueue<C> {
    nodes: Vec<Node<C>>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    len: usize,
    /// Whether anyone waits, for `Shared::begin_acquire` to read without the
    /// lock. Written only when the queue turns empty or non-empty.
    waiting: Arc<AtomicBool>,
    /// Outcomes handed out so far; each node keeps the number of its own.
    given: u64,
    /// The latest time read under the lock (see [`Self::read_clock`]), and
    /// how many outcomes had been handed out then: it is no earlier than any
    /// of those.
    clock: Option<(Instant, u64)>,
}

impl<C> WaitQueue<C> {
    pub(crate) fn new(waiting: Arc<AtomicBool>) -> Self {
        Self {
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            len: 0,
            waiting,
            given: 0,
            clock: None,
        }
    }

    /// Reads the clock, under the pool's lock, and keeps the time for the
    /// waiters whose outcome was handed out before it (see
    /// [`Self::time_after_outcome`]).
    #[inline]
    pub(crate) fn read_clock(&mut self) -> Instant {
        let now = Instant::now();
        self.clock = Some((now, self.given));
        now
    }

    /// A time read after the waiter was given its outcome, if the pool read
    /// one since: it was read no later than now, so a wait that ends there
    /// ends between the grant and the waiter's taking it.
    #[inline]
    pub(crate) fn time_after_outcome(&self, key: u32) -> Option<Instant> {
        let node = &self.nodes[key as usize];
        match self.clock {
            Some((time, given)) if node.outcome.is_some() && node.given < given => Some(time),
            _ => None,
        }
    }

    /// Waiters still in the queue.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// When the oldest waiter still queued joined.
    #[inline]
    pub(crate) fn front_since(&self) -> Option<Instant> {
        (self.head != NIL).then(|| self.nodes[self.head as usize].since)
    }

    /// Queues a new waiter, which joined at `since` and is woken with `waker`, at
    /// the back and returns its key.
    ///
    /// A `since` read before the lock may be earlier than that of a waiter
    /// that was quicker to the lock; it is then taken as that one's, so that
    /// arrival times still rise along the queue.
    pub(crate) fn push_back(&mut self, since: Instant, waker: Option<Waker>) -> u32 {
        let since = match self.tail {
            NIL => since,
            tail => since.max(self.nodes[tail as usize].since),
        };
        let key = match self.free.pop() {
            Some(key) => key,
            None => {
                self.nodes.push(Node::vacant(since));
                (self.nodes.len() - 1) as u32
            }
        };
        let node = &mut self.nodes[key as usize];
        *node = Node {
            prev: self.tail,
            next: NIL,
            linked: true,
            since,
            given: 0,
            waker,
            outcome: None,
        };
        if self.tail == NIL {
            self.head = key;
        } else {
            self.nodes[self.tail as usize].next = key;
        }
        self.tail = key;
        self.len += 1;
        if self.len == 1 {
            self.waiting.store(true, Relaxed);
        }
        key
    }

    /// Takes the oldest waiter out of the queue, gives it `outcome`, and returns the
    /// waker to wake once the lock is released.
    ///
    /// The caller checks [`is_empty`](Self::is_empty) first: with no waiter,
    /// `outcome` (and the connection in it) is handed back.
    pub(crate) fn pop_front(&mut self, outcome: Outcome<C>) -> Result<Option<Waker>, Outcome<C>> {
        let key = self.head;
        if key == NIL {
            return Err(outcome);
        }
        self.unlink(key);
        let node = &mut self.nodes[key as usize];
        node.outcome = Some(outcome);
        node.given = self.given;
        self.given += 1;
        Ok(node.waker.take())
    }

    /// Gives every waiter `outcome`; returns the wakers to wake.
    pub(crate) fn drain(&mut self, outcome: fn() -> Outcome<C>) -> Vec<Waker> {
        let mut wakers = Vec::with_capacity(self.len);
        while let Ok(waker) = self.pop_front(outcome()) {
            wakers.extend(waker);
        }
        wakers
    }

    /// Takes the waiter's outcome and frees its node, if it has one yet;
    /// otherwise remembers `waker`.
    pub(crate) fn poll_outcome(&mut self, key: u32, waker: &Waker) -> Option<Outcome<C>> {
        let node = &mut self.nodes[key as usize];
        if node.outcome.is_none() {
            match &mut node.waker {
                Some(old) if old.will_wake(waker) => {}
                slot => *slot = Some(waker.clone()),
            }
            return None;
        }
        self.remove(key)
    }

    /// Forgets a waiter: unlinks it if it is still queued and frees its node.
    /// Returns the outcome it had been given but not yet taken.
    pub(crate) fn remove(&mut self, key: u32) -> Option<Outcome<C>> {
        if self.nodes[key as usize].linked {
            self.unlink(key);
        }
        let since = self.nodes[key as usize].since;
        let node = std::mem::replace(&mut self.nodes[key as usize], Node::vacant(since));
        self.free.push(key);
        node.outcome
    }

    fn unlink(&mut self, key: u32) {
        let node = &mut self.nodes[key as usize];
        let (prev, next) = (node.prev, node.next);
        node.linked = false;
        node.prev = NIL;
        node.next = NIL;
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
        self.len -= 1;
        if self.len == 0 {
            self.waiting.store(false, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_leave_in_arrival_order_and_cancelled_ones_are_skipped() {
        let mut queue = WaitQueue::<&str>::new(Arc::default());
        let keys: Vec<u32> = (0..5)
            .map(|_| queue.push_back(Instant::now(), None))
            .collect();
        assert_eq!(queue.remove(keys[1]), None);
        assert_eq!(queue.remove(keys[3]), None);
        assert_eq!(queue.len(), 3);
        let waker = Waker::noop();
        for (slot, &key) in [keys[0], keys[2], keys[4]].iter().enumerate() {
            assert_eq!(queue.poll_outcome(key, waker), None);
            let grant = || Outcome::Granted {
                slot: SlotId::new(0, slot as u32),
                generation: 1,
                conn: "conn",
            };
            assert!(queue.pop_front(grant()).is_ok());
            assert_eq!(queue.poll_outcome(key, waker), Some(grant()));
        }
        assert!(queue.is_empty());
        assert!(matches!(
            queue.pop_front(Outcome::Closed),
            Err(Outcome::Closed)
        ));
    }

    #[test]
    fn arrival_times_rise_along_the_queue_and_the_flag_follows_it() {
        let waiting = Arc::new(AtomicBool::new(false));
        let mut queue = WaitQueue::<()>::new(waiting.clone());
        let later = Instant::now();
        let earlier = later - std::time::Duration::from_micros(1);
        let first = queue.push_back(later, None);
        assert!(waiting.load(Relaxed));
        queue.push_back(earlier, None);
        assert_eq!(queue.front_since(), Some(later));
        queue.remove(first);
        assert_eq!(queue.front_since(), Some(later), "taken as the first one's");
        assert!(waiting.load(Relaxed));
        assert!(queue.pop_front(Outcome::Closed).is_ok());
        assert!(!waiting.load(Relaxed));
    }

    #[test]
    fn only_a_time_read_after_the_outcome_ends_the_wait() {
        let mut queue = WaitQueue::<()>::new(Arc::default());
        let key = queue.push_back(Instant::now(), None);
        let before = queue.read_clock();
        assert_eq!(queue.time_after_outcome(key), None, "no outcome yet");
        assert!(queue.pop_front(Outcome::Closed).is_ok());
        assert_eq!(queue.time_after_outcome(key), None, "read before it");
        let after = queue.read_clock();
        assert!(after >= before);
        assert_eq!(queue.time_after_outcome(key), Some(after));
        assert_eq!(queue.remove(key), Some(Outcome::Closed));
    }

    #[test]
    fn freed_nodes_are_reused_instead_of_growing() {
        let mut queue = WaitQueue::<()>::new(Arc::default());
        for _ in 0..1000 {
            let a = queue.push_back(Instant::now(), None);
            let b = queue.push_back(Instant::now(), None);
            queue.remove(a);
            queue.remove(b);
        }
        assert_eq!(queue.nodes.len(), 2);
    }

    #[test]
    fn drain_hands_every_waiter_the_outcome() {
        let mut queue = WaitQueue::<()>::new(Arc::default());
        let keys: Vec<u32> = (0..3)
            .map(|_| queue.push_back(Instant::now(), None))
            .collect();
        let waker = Waker::noop();
        for &key in &keys {
            assert_eq!(queue.poll_outcome(key, waker), None);
        }
        assert_eq!(queue.drain(|| Outcome::Closed).len(), 3);
        for key in keys {
            assert_eq!(queue.remove(key), Some(Outcome::Closed));
        }
    }
}
