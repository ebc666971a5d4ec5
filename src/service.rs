//! [`PoolService`]: the pool as a [`tower::Service`], with the slot reserved in
//! `poll_ready` and the event sent in `call`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::PoolError;
use crate::pool::Pool;
use crate::slot::OwnedSlot;
use crate::transport::Transport;

/// A boxed future that is `Send` and `'static`.
type Boxed<O> = Pin<Box<dyn Future<Output = O> + Send>>;

/// The future `call` on a [`PoolService`] returns: the worker's answer or the
/// event's one error.
pub type PoolServiceFuture<R> = Boxed<Result<R, PoolError>>;

/// The pool as a [`tower::Service`]: `poll_ready` waits for a free slot and
/// reserves it, `call` sends the event on the reserved slot.
///
/// Readiness means a slot: two services over a one-slot pool are never ready
/// at once, and the second becomes ready when the first's event has finished.
///
/// # Waiting and its errors
///
/// `poll_ready` joins the pool's wait queue (first come first served, with
/// `connection_availability_timeout`, as [`Pool::acquire`] does). An error that
/// concerns this one event ([`PoolError::AcquireTimeout`],
/// [`PoolError::QueueFull`], [`PoolError::NoWorkerAvailable`]) does not fail
/// the service: `poll_ready` reports ready and the next `call` returns that
/// error, so that a [`Buffer`](https://docs.rs/tower/latest/tower/buffer/) in
/// front keeps working. Only [`PoolError::Closed`] comes out of `poll_ready`,
/// since a closed pool serves nothing again.
///
/// # What a reservation holds
///
/// A ready service holds its slot until `call` or until the service is
/// dropped; dropping it gives the slot straight back (to the oldest waiter),
/// and dropping it while it waits leaves the queue. So nothing leaks when a
/// caller polls ready and walks away, but a service that is kept ready
/// without being called keeps a slot from everyone else, and one that is kept
/// after a `Pending` keeps its place in the queue (and a slot granted to it)
/// until it is polled again: poll it or drop it. A clone is a fresh service
/// with no reservation. `call` without a ready `poll_ready` is not refused:
/// its future waits for a slot itself.
///
/// # Cancel safety
///
/// Dropping the service, or the future `call` returns, at any point loses no
/// slot; an event cut short mid-exchange restarts its connection, as with
/// [`Pool::dispatch`].
///
/// # Tracing
///
/// Each call runs in the `event` span described at [`Pool::dispatch`]; its
/// `waited_us` counts from the first `poll_ready` that waited.
///
/// # Examples
///
/// ```
/// use async_worker_pool::{InProcessLauncher, InProcessTransport, Pool, PoolService};
/// use tower::{Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let echo = InProcessTransport::new(|worker, event: String| async move {
///     Ok::<_, std::io::Error>(format!("{worker}:{event}"))
/// });
/// let pool = Pool::builder(echo, InProcessLauncher).max_connections(1).build()?;
/// let mut service = PoolService::new(pool);
/// // `ready` reserves the pool's one slot; `call` sends the event on it.
/// let answer = service.ready().await?.call("hello".to_owned()).await?;
/// assert_eq!(answer, "0:hello");
/// # Ok(())
/// # }
/// ```
pub struct PoolService<T: Transport> {
    pool: Pool<T>,
    /// Only ever reached through `&mut self` (`get_mut`, which takes no lock):
    /// the mutex is there to make the service `Sync`, as axum asks of a
    /// service, although a connection or a pending acquire need not be.
    reservation: Mutex<Reservation<T>>,
}

/// Where a service stands between `poll_ready` and `call`.
enum Reservation<T: Transport> {
    /// Nothing asked for yet.
    None,
    /// In the pool's wait queue since `since`.
    Waiting {
        acquire: Boxed<Result<OwnedSlot<T>, PoolError>>,
        since: Instant,
    },
    /// A slot is held for the next call.
    Ready {
        slot: OwnedSlot<T>,
        waited: Duration,
    },
    /// Acquiring failed; the next call returns the error.
    Failed(PoolError),
}

impl<T: Transport> PoolService<T> {
    /// A service over `pool` (a handle: the pool is shared, not copied).
    pub fn new(pool: Pool<T>) -> Self {
        Self {
            pool,
            reservation: Mutex::new(Reservation::None),
        }
    }

    /// The reservation, without locking: `&mut self` is proof enough, and the
    /// mutex is never locked, so never poisoned.
    fn reservation(&mut self) -> &mut Reservation<T> {
        self.reservation
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The pool behind the service.
    pub fn pool(&self) -> &Pool<T> {
        &self.pool
    }
}

impl<T: Transport> Clone for PoolService<T> {
    /// A fresh service over the same pool; the reservation stays with `self`.
    fn clone(&self) -> Self {
        Self::new(self.pool.clone())
    }
}

impl<T: Transport> fmt::Debug for PoolService<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reservation = match self.reservation.try_lock().as_deref() {
            Err(_) => "busy",
            Ok(Reservation::None) => "none",
            Ok(Reservation::Waiting { .. }) => "waiting",
            Ok(Reservation::Ready { .. }) => "ready",
            Ok(Reservation::Failed(_)) => "failed",
        };
        f.debug_struct("PoolService")
            .field("reservation", &reservation)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> tower::Service<T::Request> for PoolService<T> {
    type Response = T::Response;
    type Error = PoolError;
    type Future = PoolServiceFuture<T::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PoolError>> {
        let pool = &self.pool;
        let reservation = self
            .reservation
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if matches!(reservation, Reservation::None) {
            let pool = pool.clone();
            *reservation = Reservation::Waiting {
                acquire: Box::pin(async move { pool.acquire_owned().await }),
                since: Instant::now(),
            };
        }
        let Reservation::Waiting { acquire, since } = reservation else {
            // Ready, or failed with an error for the next call to return.
            return Poll::Ready(Ok(()));
        };
        let since = *since;
        let Poll::Ready(result) = acquire.as_mut().poll(cx) else {
            return Poll::Pending;
        };
        match result {
            Ok(slot) => {
                let waited = since.elapsed();
                *reservation = Reservation::Ready { slot, waited };
            }
            Err(PoolError::Closed) => {
                *reservation = Reservation::None;
                return Poll::Ready(Err(PoolError::Closed));
            }
            Err(error) => *reservation = Reservation::Failed(error),
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: T::Request) -> Self::Future {
        match std::mem::replace(self.reservation(), Reservation::None) {
            Reservation::Ready { slot, waited } => Box::pin(crate::event::run(
                std::future::ready(Ok((slot, waited))),
                request,
            )),
            Reservation::Failed(error) => Box::pin(std::future::ready(Err(error))),
            // Called without a ready poll_ready: the call waits for its slot,
            // keeping the place in the queue a pending poll_ready already took.
            Reservation::Waiting { acquire, since } => Box::pin(crate::event::run(
                async move { Ok((acquire.await?, since.elapsed())) },
                request,
            )),
            Reservation::None => {
                let pool = self.pool.clone();
                Box::pin(async move { pool.dispatch(request).await })
            }
        }
    }
}
