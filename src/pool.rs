//! [`Pool`] and its [`PoolBuilder`]: the front door that hands out slots and
//! dispatches events, and starts and stops the supervisors behind it.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::task::AbortOnDropHandle;
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::api::AsyncWorkerPool;
use crate::config::{Mode, PoolConfig, RestartPolicy};
use crate::error::{BuildError, PoolError, ReadyError};
use crate::launcher::{Launcher, WorkerId};
use crate::shared::Shared;
use crate::slot::{Slot, acquire};
use crate::stats::Stats;
use crate::supervisor::Supervisor;
use crate::transport::Transport;

/// A pool of `num_workers` worker processes with `max_connections` connections
/// (slots) to each, serving one event per connection at a time.
///
/// Cloning is cheap and every clone drives the same pool. When the last clone is
/// dropped without [`shutdown`](Self::shutdown), the supervisors are aborted and
/// every worker process is dropped, which kills it.
///
/// The launcher is not part of the type: only the supervisors use it, and they
/// own it, so a `Pool<MyTransport>` can be named and stored whatever starts its
/// workers.
pub struct Pool<T: Transport> {
    inner: Arc<Inner<T>>,
}

struct Inner<T: Transport> {
    shared: Arc<Shared<T>>,
    supervisors: Mutex<Vec<AbortOnDropHandle<()>>>,
    /// Fails waiters whose `connection_availability_timeout` is up; ends on close.
    _sweeper: AbortOnDropHandle<()>,
    shutdown: CancellationToken,
}

impl<T: Transport> Drop for Inner<T> {
    fn drop(&mut self) {
        // Dropping the handles aborts the supervisors; their connect tasks and
        // processes are dropped with them.
        self.shutdown.cancel();
    }
}

impl<T: Transport> Clone for Pool<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Transport> fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.inner.shared.config)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Pool<T> {
    /// Starts configuring a pool that connects with `transport` to processes
    /// started by `launcher`.
    pub fn builder<L: Launcher>(transport: T, launcher: L) -> PoolBuilder<T, L> {
        PoolBuilder {
            transport,
            launcher,
            config: PoolConfig::default(),
        }
    }

    /// Takes a free slot, waiting first come first served for up to
    /// `connection_availability_timeout` when every slot is busy.
    ///
    /// The slot goes to the worker with the most idle connections at the moment
    /// one is free, never to a worker chosen in advance.
    ///
    /// # Errors
    ///
    /// [`PoolError::AcquireTimeout`], [`PoolError::QueueFull`],
    /// [`PoolError::NoWorkerAvailable`] or [`PoolError::Closed`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future gives up its place in the queue, and a
    /// slot granted to it in the meantime goes to the next waiter.
    pub async fn acquire(&self) -> Result<Slot<'_, T>, PoolError> {
        acquire(&self.inner.shared).await
    }

    /// Sends one event through a free slot and returns the worker's answer.
    ///
    /// # Tracing
    ///
    /// Each event runs in a `debug` span named `event`, with the fields
    /// `worker`, `generation`, `waited_us` (the time it waited for a slot) and
    /// `outcome` (`ok`, or the error's kind such as `event_timeout`), so that a
    /// host's tracing or OpenTelemetry pipeline sees waiting apart from
    /// running. With no subscriber interested in it, the span costs nothing.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future loses no slot; a connection whose exchange was cut
    /// short is restarted instead of reused.
    pub async fn dispatch(&self, request: T::Request) -> Result<T::Response, PoolError> {
        use tracing::Instrument;
        let span = tracing::debug_span!(
            "event",
            worker = tracing::field::Empty,
            generation = tracing::field::Empty,
            waited_us = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        if span.is_disabled() {
            return self.acquire().await?.call(request).await;
        }
        let traced = async {
            let started = tokio::time::Instant::now();
            let result = match self.acquire().await {
                Ok(mut slot) => {
                    let span = tracing::Span::current();
                    span.record("worker", slot.worker().index());
                    span.record("generation", slot.generation());
                    span.record("waited_us", started.elapsed().as_micros() as u64);
                    slot.call(request).await
                }
                Err(error) => Err(error),
            };
            let outcome = match &result {
                Ok(_) => "ok",
                Err(error) => error.kind(),
            };
            tracing::Span::current().record("outcome", outcome);
            result
        };
        traced.instrument(span).await
    }

    /// Waits until every connection of every worker is up, for at most
    /// `timeout`.
    ///
    /// A pool starts its workers in the background, so `build` succeeds even
    /// when a worker cannot start; this is the place to find out, at start-up
    /// rather than on the first event.
    ///
    /// # Errors
    ///
    /// As soon as it knows that full capacity will not come:
    /// [`ReadyError::LaunchFailed`] when a worker's first launch failed (the
    /// launcher's error, with the stderr tail of a process that died),
    /// [`ReadyError::WorkerFailed`] when a worker restarted too often,
    /// [`ReadyError::Closed`] when the pool was shut down; otherwise
    /// [`ReadyError::Timeout`] once `timeout` is up.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only watches.
    pub async fn ready(&self, timeout: Duration) -> Result<(), ReadyError> {
        self.inner.shared.ready(timeout).await
    }

    /// A consistent snapshot of slots, waiters, counters and workers.
    pub fn stats(&self) -> Stats {
        self.inner.shared.stats()
    }

    /// The configuration the pool runs with.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.shared.config
    }

    /// Shuts the pool down: new events and waiting ones fail with
    /// [`PoolError::Closed`]; events in flight get up to `grace` to finish (later
    /// ones fail with `Closed`); then every connection is closed and every worker
    /// process is terminated with `grace` and reaped.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future part way aborts the remaining supervisors, which kills
    /// their worker processes without the grace period.
    pub async fn shutdown(&self, grace: Duration) {
        let shared = &self.inner.shared;
        shared.close();
        let _ = shared.shutdown_grace.set(grace);
        let _ = tokio::time::timeout(grace, shared.drained()).await;
        self.inner.shutdown.cancel();
        let supervisors = std::mem::take(
            &mut *self
                .inner
                .supervisors
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for supervisor in supervisors {
            // A supervisor that panicked has already dropped its process.
            let _ = supervisor.await;
        }
        shared.close_slots();
    }
}

#[async_trait]
impl<T: Transport> AsyncWorkerPool for Pool<T> {
    type Request = T::Request;
    type Response = T::Response;

    async fn dispatch(&self, request: T::Request) -> Result<T::Response, PoolError> {
        Pool::dispatch(self, request).await
    }

    fn stats(&self) -> Stats {
        Pool::stats(self)
    }

    async fn shutdown(&self, grace: Duration) {
        Pool::shutdown(self, grace).await
    }
}

/// Configures and starts a [`Pool`].
#[must_use = "a builder does nothing until build() is called"]
pub struct PoolBuilder<T: Transport, L: Launcher> {
    transport: T,
    launcher: L,
    config: PoolConfig,
}

impl<T: Transport, L: Launcher> fmt::Debug for PoolBuilder<T, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<T: Transport, L: Launcher> PoolBuilder<T, L> {
    /// Replaces the whole configuration.
    pub fn config(mut self, config: PoolConfig) -> Self {
        self.config = config;
        self
    }

    /// See [`PoolConfig::num_workers`].
    pub fn num_workers(mut self, num_workers: usize) -> Self {
        self.config.num_workers = num_workers;
        self
    }

    /// See [`PoolConfig::max_connections`].
    pub fn max_connections(mut self, max_connections: usize) -> Self {
        self.config.max_connections = max_connections;
        self
    }

    /// See [`PoolConfig::mode`]. [`Mode::Sync`] also sets `max_connections` to 1.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.config.mode = mode;
        if mode == Mode::Sync {
            self.config.max_connections = 1;
        }
        self
    }

    /// See [`PoolConfig::connection_availability_timeout`].
    pub fn connection_availability_timeout(mut self, timeout: Duration) -> Self {
        self.config.connection_availability_timeout = timeout;
        self
    }

    /// See [`PoolConfig::event_timeout`].
    pub fn event_timeout(mut self, timeout: Duration) -> Self {
        self.config.event_timeout = Some(timeout);
        self
    }

    /// See [`PoolConfig::reconnect_attempts`].
    pub fn reconnect_attempts(mut self, attempts: u32) -> Self {
        self.config.reconnect_attempts = attempts;
        self
    }

    /// See [`PoolConfig::establish_connection_timeout`].
    pub fn establish_connection_timeout(mut self, timeout: Duration) -> Self {
        self.config.establish_connection_timeout = timeout;
        self
    }

    /// See [`PoolConfig::max_waiters`].
    pub fn max_waiters(mut self, max_waiters: usize) -> Self {
        self.config.max_waiters = Some(max_waiters);
        self
    }

    /// See [`PoolConfig::probe_timeout`]; `None` turns liveness probes off.
    pub fn probe_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.probe_timeout = timeout.into();
        self
    }

    /// See [`PoolConfig::probe_interval`]; `None` probes only after an event timeout.
    pub fn probe_interval(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.config.probe_interval = interval.into();
        self
    }

    /// See [`PoolConfig::restart`].
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.config.restart = policy;
        self
    }

    /// Checks the configuration and starts one supervisor per worker, which
    /// launches the worker's process and connects its slots in the background,
    /// and one task that times out waiting events.
    /// Events sent meanwhile wait for the first slots like any other waiter.
    ///
    /// # Errors
    ///
    /// [`BuildError::Config`] names the first invalid field;
    /// [`BuildError::NoRuntime`] if called outside a tokio runtime.
    pub fn build(self) -> Result<Pool<T>, BuildError> {
        self.config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let launcher = Arc::new(self.launcher);
        let (shared, receivers) = Shared::new(Arc::new(self.transport), self.config);
        let shutdown = CancellationToken::new();
        let supervisors = receivers
            .into_iter()
            .enumerate()
            .map(|(index, requests)| {
                let supervisor = Supervisor {
                    shared: shared.clone(),
                    launcher: launcher.clone(),
                    worker: WorkerId::new(index as u32),
                    requests,
                    shutdown: shutdown.clone(),
                };
                AbortOnDropHandle::new(runtime.spawn(supervisor.run()))
            })
            .collect();
        let sweeper = {
            let shared = shared.clone();
            AbortOnDropHandle::new(runtime.spawn(async move { shared.expire_waiters().await }))
        };
        Ok(Pool {
            inner: Arc::new(Inner {
                shared,
                supervisors: Mutex::new(supervisors),
                _sweeper: sweeper,
                shutdown,
            }),
        })
    }
}
