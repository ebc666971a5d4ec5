//! [`Pool`] and its [`PoolBuilder`]: the front door that hands out slots and
//! dispatches events, and starts and stops the supervisors behind it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::abort_on_drop::AbortOnDropHandle;
use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{MAX_CAPACITY, Mode, PoolConfig, RestartPolicy};
use crate::error::{BuildError, ConfigError, OpsError, PoolError, ReadyError};
use crate::launcher::Launcher;
use crate::operations::{Command, Ops, Spawn, Supervisors};
use crate::shared::Shared;
use crate::slot::{OwnedSlot, Slot, acquire, acquire_owned, acquire_within};
use crate::stats::Stats;
use crate::supervisor::Supervisor;
use crate::transport::Transport;
use crate::worker_pool::AsyncWorkerPool;

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
///
/// # Examples
///
/// Two in-process workers of 10 connections each, answering through an
/// [`InProcessTransport`](crate::InProcessTransport) that echoes (a host brings
/// its own [`Transport`], or the built-in socket one):
///
/// ```
/// use std::time::Duration;
/// use async_worker_pool::{InProcessLauncher, InProcessTransport, Pool};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let echo = InProcessTransport::new(|worker, event: String| async move {
///     Ok::<_, std::io::Error>(format!("{worker}:{event}"))
/// });
/// let pool = Pool::builder(echo, InProcessLauncher)
///     .num_workers(2)
///     .max_connections(10)
///     .build()?;
/// pool.ready(Duration::from_secs(5)).await?;
/// let answer = pool.dispatch("ping".to_string()).await?;
/// assert!(answer.ends_with(":ping"));
/// // A bound for this call's wait for a slot, below the pool's own.
/// let answer = pool.dispatch_within("pong".into(), Duration::from_millis(50)).await?;
/// assert!(answer.ends_with(":pong"));
/// pool.shutdown(Duration::from_secs(1)).await;
/// # Ok(())
/// # }
/// ```
pub struct Pool<T: Transport> {
    inner: Arc<Inner<T>>,
}

struct Inner<T: Transport> {
    shared: Arc<Shared<T>>,
    /// Shared with the operations task, which adds and removes workers.
    supervisors: Supervisors,
    /// Fails waiters whose `acquire_timeout` is up; ends on close.
    _sweeper: AbortOnDropHandle<()>,
    /// Runs reloads, recycles and resizes one at a time; ends on close.
    _ops: AbortOnDropHandle<()>,
    commands: mpsc::UnboundedSender<Command>,
    shutdown: CancellationToken,
    /// Held by a running `shutdown`, so that a second call waits for it.
    stopping: tokio::sync::Mutex<()>,
    /// The launcher's [`Launcher::check_pool_size`], for resizes.
    check_pool_size: PoolSizeCheck,
}

/// A launcher's check of a pool size, kept apart from the erased launcher.
type PoolSizeCheck = Box<dyn Fn(usize, usize) -> Result<(), String> + Send + Sync>;

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
    /// `acquire_timeout` when every slot is busy
    /// ([`acquire_within`](Self::acquire_within) bounds one call).
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

    /// Takes a free slot as [`acquire`](Self::acquire) does, as an
    /// [`OwnedSlot`] that holds its own reference to the pool and so can move
    /// into a spawned task.
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`acquire`](Self::acquire): dropping the future gives up
    /// its place in the queue, and a slot granted to it in the meantime goes to
    /// the next waiter.
    ///
    /// # Examples
    ///
    /// ```
    /// use async_worker_pool::{InProcessLauncher, InProcessTransport, Pool};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let echo = InProcessTransport::new(|worker, event: String| async move {
    ///     Ok::<_, std::io::Error>(format!("{worker}:{event}"))
    /// });
    /// let pool = Pool::builder(echo, InProcessLauncher).max_connections(2).build()?;
    /// let mut slot = pool.acquire_owned().await?;
    /// let answer = tokio::spawn(async move { slot.call("hello".to_owned()).await }).await??;
    /// assert_eq!(answer, "0:hello");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn acquire_owned(&self) -> Result<OwnedSlot<T>, PoolError> {
        acquire_owned(self.inner.shared.clone()).await
    }

    /// Sends one event through a free slot and returns the worker's answer.
    ///
    /// # Tracing
    ///
    /// Each event runs in a `debug` span named `event`, with the fields
    /// `worker`, `generation`, `waited_us` (the time it waited for a slot),
    /// `run_us` (the time the worker took to answer) and `outcome` (`ok`, or
    /// the error's kind such as `event_timeout`), so that a host's tracing or
    /// OpenTelemetry pipeline sees waiting apart from running. With no
    /// subscriber interested in it, the span costs nothing.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future loses no slot; a connection whose exchange was cut
    /// short is restarted instead of reused.
    pub async fn dispatch(&self, request: T::Request) -> Result<T::Response, PoolError> {
        self.dispatch_bounded(request, None).await
    }

    /// Like [`acquire`](Self::acquire), but waits for at most `limit` (or the
    /// pool's `acquire_timeout`, if that is shorter): a bound for one call,
    /// such as what is left of a request's own deadline.
    ///
    /// A slot free at once is taken even with a zero `limit`. Giving up after
    /// `limit` counts as an acquire timeout in [`Stats`](crate::Stats), as the
    /// pool's own timeout does.
    ///
    /// # Errors
    ///
    /// [`PoolError::AcquireTimeout`] once `limit` is up, and those of
    /// [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`acquire`](Self::acquire).
    pub async fn acquire_within(&self, limit: Duration) -> Result<Slot<'_, T>, PoolError> {
        acquire_within(&self.inner.shared, limit).await
    }

    /// Like [`dispatch`](Self::dispatch), but waits for a slot for at most
    /// `limit` (see [`acquire_within`](Self::acquire_within)); the event's own
    /// run is bounded by `event_timeout` as usual.
    ///
    /// # Errors
    ///
    /// [`PoolError::AcquireTimeout`] once `limit` is up, and those of
    /// [`dispatch`](Self::dispatch).
    ///
    /// # Cancel safety
    ///
    /// As [`dispatch`](Self::dispatch).
    pub async fn dispatch_within(
        &self,
        request: T::Request,
        limit: Duration,
    ) -> Result<T::Response, PoolError> {
        self.dispatch_bounded(request, Some(limit)).await
    }

    /// `dispatch`, waiting for a slot up to `limit` if one is given.
    async fn dispatch_bounded(
        &self,
        request: T::Request,
        limit: Option<Duration>,
    ) -> Result<T::Response, PoolError> {
        let acquire = async {
            let started = tokio::time::Instant::now();
            let slot = match limit {
                None => self.acquire().await?,
                Some(limit) => self.acquire_within(limit).await?,
            };
            Ok((slot, started.elapsed()))
        };
        crate::event::run(acquire, request).await
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

    /// The configuration the pool was built with. After
    /// [`set_num_workers`](Self::set_num_workers) or
    /// [`set_max_connections`](Self::set_max_connections) the sizes it runs
    /// with are in [`stats`](Self::stats): `workers.len()` and `capacity`.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.shared.config
    }

    /// Replaces every worker process, one at a time, new before old, with no
    /// event failing: what a deploy of new handler code needs.
    ///
    /// First a spare worker is started and waited for until every one of
    /// its slots is connected. Then, for each worker in turn: it gets no new
    /// events, its events in flight finish (within
    /// [`RestartPolicy::terminate_grace`]; later ones fail with
    /// [`PoolError::WorkerExited`]), its process is terminated, and its next
    /// generation is launched and waited for until connected. Last, the spare
    /// is drained and removed. Capacity therefore never drops below
    /// `num_workers × max_connections` while a worker is replaced, and with a
    /// single worker the new process serves before the old one stops. A
    /// worker that is restarting when its turn comes is skipped (it comes
    /// back as a new process anyway), and so is a failed one. Counted in
    /// [`RestartReasons::reloaded`](crate::RestartReasons::reloaded).
    ///
    /// Reloads, recycles and resizes run one at a time: a second `reload`
    /// while one runs waits for it, then replaces every worker again.
    ///
    /// # Errors
    ///
    /// [`OpsError::WorkerDidNotStart`] when the spare's first launch fails
    /// (the pool is left as it was: a handler that does not import is caught
    /// before any worker is replaced) or a replaced worker fails under its
    /// restart policy (the reload stops there); [`OpsError::Closed`] when the
    /// pool shuts down.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not stop the reload: it goes on in the
    /// background, and only its outcome is lost.
    pub async fn reload(&self) -> Result<(), OpsError> {
        self.operate(Command::Reload).await
    }

    /// Changes the number of worker processes.
    ///
    /// Growing starts the new workers at once; this resolves once they are
    /// started (use [`ready`](Self::ready) to wait until they serve).
    /// Shrinking removes the highest-numbered workers: they get no new
    /// events, their events in flight finish (within
    /// [`RestartPolicy::terminate_grace`]), their processes are terminated,
    /// and this resolves once they are gone from the pool and from
    /// [`Stats`]. No event fails for it.
    ///
    /// # Errors
    ///
    /// [`OpsError::Config`] for zero workers or more than
    /// [`MAX_CAPACITY`] slots in all; [`OpsError::Closed`] when the pool shuts
    /// down.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not stop the change: it completes in the
    /// background.
    pub async fn set_num_workers(&self, num_workers: usize) -> Result<(), OpsError> {
        if num_workers == 0 {
            let reason = "must be at least 1".into();
            return Err(ConfigError::new("num_workers", reason).into());
        }
        self.check_capacity(num_workers, self.inner.shared.max_connections())?;
        self.operate(|reply| Command::SetNumWorkers(num_workers, reply))
            .await
    }

    /// Changes the number of connections (slots) to each worker.
    ///
    /// Growing adds slots to every worker, connected at once by the workers
    /// that serve. Shrinking closes each worker's highest slots: idle ones at
    /// once, busy ones when their event is done (they are never handed out
    /// again); this resolves once all of them are closed and removed. No event
    /// fails for it.
    ///
    /// # Errors
    ///
    /// [`OpsError::Config`] for zero, for anything but 1 in [`Mode::Sync`],
    /// for more than [`MAX_CAPACITY`] slots in all, or for more than the
    /// launcher's workers or the host can serve
    /// ([`Launcher::check_pool_size`]); [`OpsError::Closed`]
    /// when the pool shuts down.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not stop the change: it completes in the
    /// background.
    pub async fn set_max_connections(&self, max_connections: usize) -> Result<(), OpsError> {
        let bad = |reason: String| Err(ConfigError::new("max_connections", reason).into());
        if max_connections == 0 {
            return bad("must be at least 1".into());
        }
        if self.inner.shared.config.mode == Mode::Sync && max_connections != 1 {
            return bad(format!("must be 1 in Mode::Sync (got {max_connections})"));
        }
        self.check_capacity(self.inner.shared.worker_count(), max_connections)?;
        self.operate(|reply| Command::SetMaxConnections(max_connections, reply))
            .await
    }

    fn check_capacity(&self, workers: usize, connections: usize) -> Result<(), OpsError> {
        if workers.saturating_mul(connections) > MAX_CAPACITY {
            let reason = format!(
                "num_workers × max_connections must be at most {MAX_CAPACITY} (got {workers} × {connections})"
            );
            return Err(ConfigError::new("max_connections", reason).into());
        }
        (self.inner.check_pool_size)(workers, connections)
            .map_err(|reason| ConfigError::new("max_connections", reason).into())
    }

    /// Hands `command` to the operations task and waits for its outcome.
    async fn operate(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<(), OpsError>>) -> Command,
    ) -> Result<(), OpsError> {
        if self.inner.shared.is_closing() {
            return Err(OpsError::Closed);
        }
        let (reply, outcome) = oneshot::channel();
        self.inner
            .commands
            .send(command(reply))
            .map_err(|_| OpsError::Closed)?;
        outcome.await.unwrap_or(Err(OpsError::Closed))
    }

    /// Shuts the pool down: new events and waiting ones fail with
    /// [`PoolError::Closed`]; events in flight get up to `grace` to finish (later
    /// ones fail with `Closed`); then every connection is closed and every worker
    /// process is terminated with `grace` and reaped.
    ///
    /// A reload or resize still running ends with [`OpsError::Closed`]. A
    /// second call returns once the first has finished; the shortest grace
    /// asked for is the one the worker processes get.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future part way aborts the remaining supervisors, which kills
    /// their worker processes without the grace period.
    pub async fn shutdown(&self, grace: Duration) {
        let shared = &self.inner.shared;
        shared.close();
        shared.ask_shutdown_grace(grace);
        let _stopping = self.inner.stopping.lock().await;
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
///
/// # Examples
///
/// Settings go in one by one, or as a whole [`PoolConfig`]; a value the pool
/// cannot work with fails `build` with an error that names the field:
///
/// ```
/// use std::time::Duration;
/// use async_worker_pool::{BuildError, InProcessLauncher, InProcessTransport, Pool};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let echo = InProcessTransport::new(|worker, event: String| async move {
///     Ok::<_, std::io::Error>(format!("{worker}:{event}"))
/// });
/// let pool = Pool::builder(echo.clone(), InProcessLauncher)
///     .num_workers(4)
///     .max_connections(100)
///     .acquire_timeout(Duration::from_secs(2))
///     .event_timeout(Duration::from_secs(30))
///     .max_waiters(1000)
///     .build()?;
/// assert_eq!(pool.stats().capacity, 400);
///
/// let refused = Pool::builder(echo, InProcessLauncher).num_workers(0).build();
/// let Err(BuildError::Config(error)) = refused else { panic!("built") };
/// assert_eq!(error.field(), "num_workers");
/// # Ok(())
/// # }
/// ```
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

    /// See [`PoolConfig::acquire_timeout`].
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.config.acquire_timeout = timeout;
        self
    }

    /// [`acquire_timeout`](Self::acquire_timeout) under Nuclio's name
    /// (`async.connectionAvailabilityTimeout`).
    pub fn connection_availability_timeout(self, timeout: Duration) -> Self {
        self.acquire_timeout(timeout)
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

    /// See [`PoolConfig::max_events_per_worker`].
    pub fn max_events_per_worker(mut self, max: impl Into<Option<u64>>) -> Self {
        self.config.max_events_per_worker = max.into();
        self
    }

    /// See [`PoolConfig::max_worker_rss`] (bytes).
    pub fn max_worker_rss(mut self, bytes: impl Into<Option<u64>>) -> Self {
        self.config.max_worker_rss = bytes.into();
        self
    }

    /// See [`PoolConfig::min_worker_uptime`].
    pub fn min_worker_uptime(mut self, uptime: Duration) -> Self {
        self.config.min_worker_uptime = uptime;
        self
    }

    /// See [`PoolConfig::recycle_after_event_timeout`].
    pub fn recycle_after_event_timeout(mut self, on: bool) -> Self {
        self.config.recycle_after_event_timeout = on;
        self
    }

    /// See [`PoolConfig::stall_after`]; `None` chooses workers by free slots
    /// alone.
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
    /// // Handlers that hold the loop for up to 5 ms on purpose: only a longer
    /// // silence marks a worker as stalled.
    /// let pool = Pool::builder(echo, InProcessLauncher)
    ///     .num_workers(2)
    ///     .stall_after(Duration::from_millis(5))
    ///     .build()?;
    /// pool.ready(Duration::from_secs(5)).await?;
    /// assert!(pool.stats().workers.iter().all(|w| !w.stalled));
    /// # Ok(())
    /// # }
    /// ```
    pub fn stall_after(mut self, after: impl Into<Option<Duration>>) -> Self {
        self.config.stall_after = after.into();
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
        self.launcher
            .check_pool_size(self.config.num_workers, self.config.max_connections)
            .map_err(|reason| ConfigError::new("max_connections", reason))?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let launcher = Arc::new(self.launcher);
        // Weak: the launcher must go when the supervisors do, after shutdown
        // (a process launcher removes its socket directory then), not when
        // the last clone of the pool is dropped.
        let check_pool_size: PoolSizeCheck = {
            let launcher = Arc::downgrade(&launcher);
            Box::new(move |workers, connections| match launcher.upgrade() {
                Some(launcher) => launcher.check_pool_size(workers, connections),
                None => Ok(()),
            })
        };
        let (shared, workers, recycles) = Shared::new(Arc::new(self.transport), self.config);
        let shutdown = CancellationToken::new();
        // The operations task starts the supervisors of workers added later,
        // so the launcher stays behind this closure and out of the pool's type.
        let spawn: Spawn = {
            let (shared, shutdown, runtime) = (shared.clone(), shutdown.clone(), runtime.clone());
            Box::new(move |worker| {
                let supervisor = Supervisor {
                    shared: shared.clone(),
                    launcher: launcher.clone(),
                    worker: worker.id,
                    requests: worker.requests,
                    shutdown: shutdown.clone(),
                    retire: worker.retire,
                };
                AbortOnDropHandle::new(runtime.spawn(supervisor.run()))
            })
        };
        let supervisors: Supervisors = Arc::new(std::sync::Mutex::new(
            workers.into_iter().map(&spawn).collect(),
        ));
        let sweeper = {
            let shared = shared.clone();
            AbortOnDropHandle::new(runtime.spawn(async move { shared.expire_waiters().await }))
        };
        let (commands, received) = mpsc::unbounded_channel();
        let ops = Ops {
            shared: shared.clone(),
            spawn,
            supervisors: supervisors.clone(),
            shutdown: shutdown.clone(),
        };
        let ops = AbortOnDropHandle::new(runtime.spawn(ops.run(received, recycles)));
        Ok(Pool {
            inner: Arc::new(Inner {
                shared,
                supervisors,
                _sweeper: sweeper,
                _ops: ops,
                commands,
                shutdown,
                stopping: tokio::sync::Mutex::new(()),
                check_pool_size,
            }),
        })
    }
}
