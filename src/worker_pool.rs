//! [`AsyncWorkerPool`]: the interface a host programs against.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::PoolError;
use crate::stats::Stats;

/// A pool of worker processes that serves events.
///
/// [`Pool`](crate::Pool) implements it; a host that wants to swap pools (or fake
/// one in its own tests) programs against this trait.
#[async_trait]
pub trait AsyncWorkerPool: Send + Sync {
    /// An event.
    type Request: Send;
    /// A worker's answer.
    type Response: Send;

    /// Sends one event to a free connection (waiting for one if needed) and
    /// returns its answer, or exactly one error saying why there is none.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future loses no slot: a wait is left, and a connection whose
    /// exchange was cut short is restarted instead of reused. The event itself may
    /// or may not have reached the worker.
    async fn dispatch(&self, request: Self::Request) -> Result<Self::Response, PoolError>;

    /// A consistent snapshot of slots, waiters, counters and workers.
    fn stats(&self) -> Stats;

    /// Stops admitting events, lets those in flight finish within `grace`, then
    /// closes every connection and terminates and reaps every worker process.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future part way aborts the remaining supervisors, which
    /// kills their worker processes without the grace period.
    async fn shutdown(&self, grace: Duration);
}
