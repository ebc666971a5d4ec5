//! Which worker has the most idle slots, found in O(1).
//!
//! Late binding picks a worker only when a slot is free, and prefers the least
//! loaded one. Scanning the workers on every acquire would make the hottest path
//! grow with `num_workers`; instead workers sit in buckets by idle count (intrusive
//! doubly linked lists in flat arrays) and `top` names the highest non-empty
//! bucket. Every change is ±1, so `top` moves by at most one.

const NIL: u32 = u32::MAX;

#[derive(Debug)]
pub(crate) struct IdleIndex {
    /// Idle slots per worker.
    count: Box<[u32]>,
    /// Neighbours of a worker within its bucket.
    next: Box<[u32]>,
    prev: Box<[u32]>,
    /// First worker of each bucket `1..=max_connections` (bucket 0 is not tracked).
    head: Box<[u32]>,
    /// Highest bucket with a worker in it; 0 when no slot is idle.
    top: u32,
    /// With one worker there is nothing to choose between: only its count is
    /// kept, which takes a fifth of the instructions off acquire + release.
    single: bool,
}

impl IdleIndex {
    pub(crate) fn new(num_workers: usize, max_connections: usize) -> Self {
        Self {
            count: vec![0; num_workers].into(),
            next: vec![NIL; num_workers].into(),
            prev: vec![NIL; num_workers].into(),
            head: vec![NIL; max_connections + 1].into(),
            top: 0,
            single: num_workers == 1,
        }
    }

    /// The worker with the most idle slots, if any slot is idle.
    #[inline]
    pub(crate) fn most_idle(&self) -> Option<usize> {
        if self.single {
            return (self.count[0] != 0).then_some(0);
        }
        (self.top != 0).then(|| self.head[self.top as usize] as usize)
    }

    /// The idle slots of `worker` in the index (none while it is suspect).
    #[inline]
    pub(crate) fn idle(&self, worker: usize) -> u32 {
        self.count[worker]
    }

    /// Whether the pool has one worker, so that there is nothing to choose.
    #[inline]
    pub(crate) fn single(&self) -> bool {
        self.single
    }

    /// The workers after `worker` in its bucket: those with as many idle
    /// slots, most recently moved there first.
    #[inline]
    pub(crate) fn peers(&self, worker: usize) -> impl Iterator<Item = usize> + '_ {
        let mut at = if self.single { NIL } else { self.next[worker] };
        std::iter::from_fn(move || {
            (at != NIL).then(|| {
                let peer = at as usize;
                at = self.next[peer];
                peer
            })
        })
    }

    /// How many workers the index holds.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.count.len()
    }

    #[inline]
    pub(crate) fn increment(&mut self, worker: usize) {
        let count = self.count[worker];
        if self.single {
            self.count[worker] = count + 1;
            return;
        }
        self.unlink(worker, count);
        self.link(worker, count + 1);
        self.count[worker] = count + 1;
        self.top = self.top.max(count + 1);
    }

    #[inline]
    pub(crate) fn decrement(&mut self, worker: usize) {
        let count = self.count[worker];
        debug_assert!(count > 0, "decrement of a worker with no idle slot");
        if self.single {
            self.count[worker] = count - 1;
            return;
        }
        self.unlink(worker, count);
        self.link(worker, count - 1);
        self.count[worker] = count - 1;
        if count == self.top && self.head[count as usize] == NIL {
            // The worker just moved down a bucket, so that bucket is the new top.
            self.top = count - 1;
        }
    }

    /// Sets a worker's idle count to zero (its process went away).
    pub(crate) fn clear(&mut self, worker: usize) {
        let count = self.count[worker];
        if self.single {
            self.count[worker] = 0;
            return;
        }
        self.unlink(worker, count);
        self.count[worker] = 0;
        while self.top > 0 && self.head[self.top as usize] == NIL {
            self.top -= 1;
        }
    }

    /// Sets a worker's idle count to `count` (a suspect worker's connections
    /// come back into play).
    pub(crate) fn set(&mut self, worker: usize, count: u32) {
        if self.single {
            self.count[worker] = count;
            return;
        }
        let old = self.count[worker];
        self.unlink(worker, old);
        self.link(worker, count);
        self.count[worker] = count;
        self.top = self.top.max(count);
        while self.top > 0 && self.head[self.top as usize] == NIL {
            self.top -= 1;
        }
    }

    /// Rebuilds the index for `num_workers` workers of up to `max_connections`
    /// idle slots, keeping the counts of the workers that stay. A resize of the
    /// pool is rare, so this starts afresh instead of patching the lists.
    pub(crate) fn resize(&mut self, num_workers: usize, max_connections: usize) {
        // Buckets never shrink: a worker may still hold more idle slots than a
        // lowered `max_connections` until they are closed.
        let buckets = max_connections.max(self.head.len() - 1);
        let mut resized = Self::new(num_workers, buckets);
        for (worker, &count) in self.count.iter().enumerate().take(num_workers) {
            resized.set(worker, count);
        }
        *self = resized;
    }

    fn link(&mut self, worker: usize, bucket: u32) {
        if bucket == 0 {
            return;
        }
        let old_head = self.head[bucket as usize];
        self.next[worker] = old_head;
        self.prev[worker] = NIL;
        if old_head != NIL {
            self.prev[old_head as usize] = worker as u32;
        }
        self.head[bucket as usize] = worker as u32;
    }

    fn unlink(&mut self, worker: usize, bucket: u32) {
        if bucket == 0 {
            return;
        }
        let (prev, next) = (self.prev[worker], self.next[worker]);
        if prev == NIL {
            self.head[bucket as usize] = next;
        } else {
            self.next[prev as usize] = next;
        }
        if next != NIL {
            self.prev[next as usize] = prev;
        }
        self.next[worker] = NIL;
        self.prev[worker] = NIL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference answer: the highest count, by a scan.
    fn max_count(index: &IdleIndex) -> u32 {
        index.count.iter().copied().max().unwrap_or(0)
    }

    #[test]
    fn most_idle_always_names_a_worker_with_the_highest_count() {
        // One worker takes the single-worker path; the others the buckets.
        for workers in [1, 2, 5] {
            let conns = 4;
            let mut index = IdleIndex::new(workers, conns);
            let mut rng = fastrand::Rng::with_seed(7);
            for _ in 0..20_000 {
                let w = rng.usize(..workers);
                match rng.u8(..11) {
                    0 => index.clear(w),
                    10 => index.set(w, rng.u32(..=conns as u32)),
                    1..=5 if index.idle(w) < conns as u32 => index.increment(w),
                    _ if index.idle(w) > 0 => index.decrement(w),
                    _ => {}
                }
                match index.most_idle() {
                    None => assert_eq!(max_count(&index), 0),
                    Some(best) => {
                        assert!(index.idle(best) > 0);
                        assert_eq!(index.idle(best), max_count(&index));
                    }
                }
            }
        }
    }

    #[test]
    fn resize_keeps_the_counts_of_the_workers_that_stay() {
        let mut index = IdleIndex::new(1, 2);
        index.increment(0);
        index.resize(3, 4);
        assert_eq!(index.most_idle(), Some(0));
        for _ in 0..4 {
            index.increment(2);
        }
        assert_eq!(index.most_idle(), Some(2));
        index.resize(2, 1);
        assert_eq!(index.most_idle(), Some(0));
        assert_eq!(index.idle(0), 1);
        index.decrement(0);
        assert_eq!(index.most_idle(), None);
    }

    #[test]
    fn ties_alternate_between_workers() {
        let mut index = IdleIndex::new(2, 3);
        for w in [0, 1] {
            for _ in 0..3 {
                index.increment(w);
            }
        }
        let mut taken = [0, 0];
        for _ in 0..4 {
            let w = index.most_idle().unwrap();
            index.decrement(w);
            taken[w] += 1;
        }
        assert_eq!(taken, [2, 2]);
    }
}
