//! The [`Slot`] guard: one connection, held by one event, given back on drop;
//! borrowed from the pool ([`Slot`]) or holding it ([`OwnedSlot`]).

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

use crate::error::PoolError;
use crate::shared::{Begin, Ended, Shared, SlotId, Taken};
use crate::transport::Transport;
use crate::worker::WorkerId;

/// How long a failed exchange waits to learn whether its worker process exited,
/// which decides between [`PoolError::WorkerExited`] and [`PoolError::Transport`].
const EXIT_NOTICE: Duration = Duration::from_millis(200);

/// One connection to a worker, held for one event.
///
/// Dropping the guard gives the slot back. If the last exchange finished cleanly
/// the connection goes to the oldest waiting event, or back to the idle slots;
/// otherwise (an error, a timeout, a call that was dropped mid-flight, or
/// [`mark_for_restart`](Self::mark_for_restart)) the connection is closed and a new
/// one is established in the background, so that no event can ever read an answer
/// meant for another.
///
/// [`Pool::acquire`](crate::Pool::acquire) lends a `Slot<'_, T>` that borrows the
/// pool; [`Pool::acquire_owned`](crate::Pool::acquire_owned) hands out an
/// [`OwnedSlot`], the same guard holding its own reference to the pool, which can
/// move into a spawned task.
///
/// # Examples
///
/// A host that drives the connection itself, or sends several events on one
/// connection in a row:
///
/// ```
/// use std::time::Duration;
/// use async_worker_pool::{InProcessLauncher, InProcessTransport, Pool};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let echo = InProcessTransport::new(|worker, event: String| async move {
///     Ok::<_, std::io::Error>(format!("{worker}:{event}"))
/// });
/// let pool = Pool::builder(echo, InProcessLauncher).max_connections(2).build()?;
/// pool.ready(Duration::from_secs(5)).await?;
/// {
///     let mut slot = pool.acquire().await?;
///     assert_eq!(slot.worker().index(), 0);
///     assert_eq!(slot.call("one".into()).await?, "0:one");
///     assert_eq!(slot.call("two".into()).await?, "0:two");
///     assert_eq!(pool.stats().busy, 1);
/// } // Dropped: the connection is free again.
/// assert_eq!(pool.stats().idle, 2);
/// # Ok(())
/// # }
/// ```
pub struct Slot<'a, T: Transport> {
    shared: PoolRef<'a, T>,
    slot: SlotId,
    generation: u64,
    /// `Some` until the guard is dropped.
    conn: Option<T::Conn>,
    /// Whether every exchange on the connection so far has finished.
    clean: bool,
}

/// A slot that holds its own reference to the pool's state, so that it is
/// `'static` and can move into [`tokio::spawn`]. It is the [`Slot`] guard with
/// the same methods and the same release on drop.
///
/// It does not keep the pool running: once every [`Pool`](crate::Pool) handle
/// is dropped the workers are stopped, and a call on the slot then fails.
pub type OwnedSlot<T> = Slot<'static, T>;

/// How a slot reaches the pool's state: borrowed for the lifetime of the
/// [`Pool`](crate::Pool) handle, or shared for as long as the slot lives.
enum PoolRef<'a, T: Transport> {
    Borrowed(&'a Shared<T>),
    Owned(Arc<Shared<T>>),
}

impl<T: Transport> Deref for PoolRef<'_, T> {
    type Target = Shared<T>;

    fn deref(&self) -> &Shared<T> {
        match self {
            Self::Borrowed(shared) => shared,
            Self::Owned(shared) => shared,
        }
    }
}

impl<'a, T: Transport> Slot<'a, T> {
    fn new(shared: PoolRef<'a, T>, taken: Taken<T::Conn>) -> Self {
        Self {
            shared,
            slot: taken.slot,
            generation: taken.generation,
            conn: Some(taken.conn),
            clean: true,
        }
    }

    /// The worker this slot's connection goes to.
    pub fn worker(&self) -> WorkerId {
        self.shared.worker_of(self.slot)
    }

    /// The generation of the worker process the connection was made to.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Sends one event on this slot's connection and waits for its answer, within
    /// `event_timeout` if one is configured and the transport does not call
    /// the event long-lived ([`Transport::is_long_lived`], a WebSocket).
    ///
    /// A failure of any kind marks the connection for restart; further calls on this
    /// guard then fail with [`PoolError::ConnectionUnusable`].
    ///
    /// A disconnect (see [`Transport::is_disconnect`]) is reported up to 200 ms
    /// after it happened: a worker process that dies closes its connections before
    /// the pool can see it exit, so the call waits that long for the exit, and
    /// reports [`PoolError::WorkerExited`] if it comes, [`PoolError::Transport`] if
    /// not. Other transport errors are reported at once.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, by design: if the future is dropped before it completes, the
    /// event's answer may still arrive on the connection, so the connection is
    /// marked for restart and the slot is re-established rather than reused.
    pub async fn call(&mut self, request: T::Request) -> Result<T::Response, PoolError> {
        let worker = self.worker();
        let (Some(conn), true) = (self.conn.as_mut(), self.clean) else {
            self.shared.events.error();
            return Err(PoolError::ConnectionUnusable { worker });
        };
        // Armed before the first await: a call dropped midway leaves it unclean.
        self.clean = false;
        let shared: &Shared<T> = &self.shared;
        let mut ended = shared.ended(worker);
        let generation = self.generation;
        // A WebSocket, say: bounded by its host, counted by its transport.
        let long_lived = shared.transport.is_long_lived(&request);
        let events = Counting {
            events: &shared.events,
            on: !long_lived,
        };
        let limit = shared.config.event_timeout.filter(|_| !long_lived);
        let exchange = async {
            match limit {
                None => Ok(shared.transport.call(conn, request).await),
                Some(limit) => tokio::time::timeout(limit, shared.transport.call(conn, request))
                    .await
                    .map_err(|_| PoolError::EventTimeout {
                        worker,
                        timeout: limit,
                    }),
            }
        };
        let gone = async {
            // An error here means the pool itself is gone; either way stop waiting.
            let _ = ended.wait_for(|last| last.generation >= generation).await;
        };
        let result = tokio::select! {
            biased;
            result = exchange => result,
            () = gone => Err(self.worker_gone(worker, *ended.borrow())),
        };
        match result {
            Ok(Ok(response)) => {
                self.clean = true;
                events.ok();
                Ok(response)
            }
            Ok(Err(source)) if shared.transport.is_unsent(&source) => {
                // Refused before a byte went out: the connection is as good as before.
                self.clean = true;
                events.error();
                Err(PoolError::Transport {
                    worker,
                    source: source.into(),
                })
            }
            Ok(Err(source)) => {
                // A dying process closes its sockets before its exit can be seen,
                // so a disconnect is often the first sign of the exit: give the
                // supervisor a moment to notice before blaming the connection.
                // Other errors (a broken frame, say) are reported at once.
                let exited = ended.borrow().generation >= generation
                    || (shared.transport.is_disconnect(&source)
                        && tokio::time::timeout(
                            EXIT_NOTICE,
                            ended.wait_for(|last| last.generation >= generation),
                        )
                        .await
                        .is_ok_and(|seen| seen.is_ok()));
                let error = if exited {
                    self.worker_gone(worker, *ended.borrow())
                } else {
                    PoolError::Transport {
                        worker,
                        source: source.into(),
                    }
                };
                events.error();
                Err(error)
            }
            Err(error @ PoolError::EventTimeout { .. }) => {
                events.timed_out();
                // A blocked event loop shows first as an event that never ends.
                shared.suspect_after_timeout(worker, generation);
                if shared.config.recycle_after_event_timeout {
                    shared.recycle_after_timeout(worker, generation);
                }
                Err(error)
            }
            Err(error) => {
                events.error();
                Err(error)
            }
        }
    }

    /// Why the worker went away, from the last end of a generation that the
    /// call's own watch saw.
    fn worker_gone(&self, worker: WorkerId, ended: Ended) -> PoolError {
        if self.shared.is_closing() {
            PoolError::Closed
        } else if ended.unresponsive && ended.generation == self.generation {
            PoolError::WorkerUnresponsive {
                worker,
                generation: self.generation,
            }
        } else {
            PoolError::WorkerExited {
                worker,
                generation: self.generation,
            }
        }
    }

    /// Resolves once the worker process this slot's connection goes to begins
    /// to drain (it is being replaced by a reload or a recycle, or removed)
    /// or has gone: the moment for a long-lived exchange, such as a
    /// WebSocket, to wind down before the drain's grace is up. The future
    /// does not borrow the slot.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only watches.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use async_worker_pool::{InProcessLauncher, InProcessTransport, Pool};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let echo = InProcessTransport::new(|_, event: String| async move {
    ///     Ok::<_, std::io::Error>(event)
    /// });
    /// let pool = Pool::builder(echo, InProcessLauncher).max_connections(1).build()?;
    /// pool.ready(Duration::from_secs(5)).await?;
    /// let slot = pool.acquire_owned().await?;
    /// let draining = slot.draining();
    /// let reload = tokio::spawn({
    ///     let pool = pool.clone();
    ///     async move { pool.reload().await }
    /// });
    /// draining.await; // the reload began to drain this slot's worker
    /// drop(slot); // its exchange is done: the drain goes on
    /// reload.await??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        let worker = self.worker();
        let generation = self.generation;
        let mut draining = self.shared.draining(worker);
        let mut ended = self.shared.ended(worker);
        async move {
            // An error means the pool is gone: nothing is left to wait for.
            tokio::select! {
                _ = draining.wait_for(|drained| *drained >= generation) => {}
                _ = ended.wait_for(|last| last.generation >= generation) => {}
            }
        }
    }

    /// The connection, for a host that drives the exchange itself instead of
    /// calling [`call`](Self::call).
    ///
    /// From here on the slot counts as mid-exchange: unless the host calls
    /// [`mark_clean`](Self::mark_clean) once its exchange has finished, the
    /// connection is restarted when the guard is dropped.
    pub fn conn_mut(&mut self) -> Option<&mut T::Conn> {
        self.clean = false;
        self.conn.as_mut()
    }

    /// Declares that the host's own exchange on [`conn_mut`](Self::conn_mut)
    /// finished cleanly, so the connection may carry the next event.
    pub fn mark_clean(&mut self) {
        self.clean = true;
    }

    /// Marks the connection for restart: it is closed when the guard is dropped and
    /// a new one is established in the background.
    pub fn mark_for_restart(&mut self) {
        self.clean = false;
    }
}

/// The pool's event counters, or none for a long-lived exchange (see
/// [`Transport::is_long_lived`]).
struct Counting<'a> {
    events: &'a crate::stats::EventCounters,
    on: bool,
}

impl Counting<'_> {
    fn ok(&self) {
        if self.on {
            self.events.ok();
        }
    }

    fn error(&self) {
        if self.on {
            self.events.error();
        }
    }

    fn timed_out(&self) {
        if self.on {
            self.events.timed_out();
        }
    }
}

impl<T: Transport> Drop for Slot<'_, T> {
    fn drop(&mut self) {
        self.shared
            .release(self.slot, self.generation, self.conn.take(), self.clean);
    }
}

impl<T: Transport> fmt::Debug for Slot<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("slot", &self.slot)
            .field("worker", &self.worker())
            .field("generation", &self.generation)
            .field("clean", &self.clean)
            .finish()
    }
}

/// Takes a slot that borrows the pool; see [`acquire_with`].
#[inline]
pub(crate) async fn acquire<T: Transport>(shared: &Shared<T>) -> Result<Slot<'_, T>, PoolError> {
    acquire_with(PoolRef::Borrowed(shared)).await
}

/// Takes a slot that holds its own reference to the pool; see [`acquire_with`].
pub(crate) async fn acquire_owned<T: Transport>(
    shared: Arc<Shared<T>>,
) -> Result<OwnedSlot<T>, PoolError> {
    acquire_with(PoolRef::Owned(shared)).await
}

/// Takes a slot, waiting for one up to `acquire_timeout`.
///
/// The first poll takes a free slot or joins the queue with its waker, in one
/// trip through the pool's lock; a waiter's next poll finds its outcome. A
/// connection the transport reports broken ([`Transport::is_broken`]) is
/// restarted, and the acquire tries again.
#[inline]
async fn acquire_with<T: Transport>(pool: PoolRef<'_, T>) -> Result<Slot<'_, T>, PoolError> {
    let mut first_try = true;
    loop {
        let shared: &Shared<T> = &pool;
        let mut taken = take(shared, first_try).await?;
        if !shared.transport.is_broken(&mut taken.conn) {
            // Moved, not cloned: an owned slot costs one reference count, taken
            // by `Pool::acquire_owned`.
            return Ok(Slot::new(pool, taken));
        }
        let worker = shared.worker_of(taken.slot);
        tracing::debug!(%worker, "connection broken before use; restarting it");
        shared.retract_allocation(taken.waited);
        shared.release(taken.slot, taken.generation, Some(taken.conn), false);
        first_try = false;
    }
}

/// [`acquire`], given up after `limit`, which then counts as an acquire timeout.
pub(crate) async fn acquire_within<T: Transport>(
    shared: &Shared<T>,
    limit: Duration,
) -> Result<Slot<'_, T>, PoolError> {
    let started = Instant::now();
    // `timeout` polls the acquire before it looks at the clock, so a free slot
    // is taken even with a zero limit; when it fires, dropping the acquire
    // gives up its place in the queue.
    match tokio::time::timeout(limit, acquire(shared)).await {
        Ok(result) => result,
        Err(_elapsed) => {
            shared.count_acquire_timeout();
            Err(PoolError::AcquireTimeout {
                waited: started.elapsed(),
            })
        }
    }
}

/// One try at a slot.
#[inline]
async fn take<T: Transport>(
    shared: &Shared<T>,
    first_try: bool,
) -> Result<Taken<T::Conn>, PoolError> {
    // The pool's sweeper fails the waiter once its time is up (see
    // `Shared::expire_waiters`), so no timer is set per waiter.
    let mut waiter: Option<Waiter<'_, T>> = None;
    std::future::poll_fn(|cx| match &mut waiter {
        None => match shared.begin_acquire(cx.waker(), first_try) {
            Begin::Taken(taken) => Poll::Ready(Ok(taken)),
            Begin::Refused(error) => Poll::Ready(Err(error)),
            Begin::Wait(key, since) => {
                waiter = Some(Waiter {
                    shared,
                    key,
                    since,
                    done: false,
                });
                Poll::Pending
            }
        },
        Some(waiter) => waiter.poll(cx),
    })
    .await
}

/// A place in the wait queue. Dropping it before it is served leaves the queue
/// (and passes on a slot granted meanwhile), so no slot is lost to a caller that
/// gave up.
struct Waiter<'a, T: Transport> {
    shared: &'a Shared<T>,
    key: u32,
    since: Instant,
    done: bool,
}

impl<T: Transport> Waiter<'_, T> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Taken<T::Conn>, PoolError>> {
        let poll = self.shared.poll_waiter(self.key, self.since, cx);
        if poll.is_ready() {
            self.done = true;
        }
        poll
    }
}

impl<T: Transport> Drop for Waiter<'_, T> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.abandon_waiter(self.key);
        }
    }
}
