//! The errors the pool reports: one typed outcome for every way an event can fail.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::worker::WorkerId;

/// An error kept as the cause of another, shared by every copy of it.
pub(crate) type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Whether two causes are the same error (not a copy of it): what equality of
/// the errors that carry them compares.
fn same_cause(a: &Option<Cause>, b: &Option<Cause>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// A boxed error from a [`Transport`](crate::Transport) or [`Launcher`](crate::Launcher),
/// kept as the `source` of the pool's own error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why an event (or an [`acquire`](crate::Pool::acquire)) failed.
///
/// A front end maps these to its own answers; an HTTP gateway would use 503 for
/// [`AcquireTimeout`](Self::AcquireTimeout) and [`QueueFull`](Self::QueueFull), 504 for
/// [`EventTimeout`](Self::EventTimeout) and 502 for the worker-side failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// Every slot stayed busy for `acquire_timeout`.
    #[error("no connection became free within {waited:?}")]
    AcquireTimeout {
        /// How long the event waited.
        waited: Duration,
    },
    /// `max_waiters` events were already waiting for a slot.
    #[error("the wait queue is full ({max_waiters} events already waiting)")]
    QueueFull {
        /// The configured limit.
        max_waiters: usize,
    },
    /// The event ran past `event_timeout`; its connection is being restarted.
    #[error("the event on worker {worker} ran past the event timeout of {timeout:?}")]
    EventTimeout {
        /// The worker the event ran on.
        worker: WorkerId,
        /// The configured limit.
        timeout: Duration,
    },
    /// The worker process exited (or was restarted) while the event was in flight.
    #[error("worker {worker} (generation {generation}) went away while the event was in flight")]
    WorkerExited {
        /// The worker the event ran on.
        worker: WorkerId,
        /// The process generation that went away.
        generation: u64,
    },
    /// The worker stopped answering its liveness probe (its event loop was
    /// blocked or wedged) while the event was in flight, and is being restarted.
    /// See [Liveness](crate::PoolConfig#liveness).
    #[error(
        "worker {worker} (generation {generation}) stopped answering its liveness probe \
         and was restarted while the event was in flight"
    )]
    WorkerUnresponsive {
        /// The worker the event ran on.
        worker: WorkerId,
        /// The process generation that was found unresponsive.
        generation: u64,
    },
    /// The transport failed the exchange; the connection is being restarted
    /// (unless the transport refused the event before sending any of it). See
    /// [`PoolError::transport_error`] to read the transport's own error.
    #[error("transport error on worker {worker}")]
    Transport {
        /// The worker the event ran on.
        worker: WorkerId,
        /// The transport's own error.
        #[source]
        source: BoxError,
    },
    /// A previous exchange on this slot did not finish cleanly, so the connection
    /// must not carry another event. Drop the [`Slot`](crate::Slot) and acquire again.
    #[error(
        "the connection to worker {worker} is marked for restart and cannot carry another event"
    )]
    ConnectionUnusable {
        /// The worker the slot belongs to.
        worker: WorkerId,
    },
    /// Every worker has failed (restarted too often) and none is left to serve.
    #[error("no worker is available: every worker has failed")]
    NoWorkerAvailable,
    /// The pool is shutting down or shut down.
    #[error("the pool is closed")]
    Closed,
}

/// Why [`Pool::ready`](crate::Pool::ready) gave up waiting for full capacity.
///
/// The message quotes the reason in full, causes included, for a log line;
/// [`source`](std::error::Error::source) hands the cause over as a value (a
/// [`LaunchError`](crate::LaunchError), the transport's connect error), for a
/// host that inspects it. Two errors are equal when their causes are the same
/// error, not copies.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ReadyError {
    /// A worker's first launch failed: its program is missing, its handler does
    /// not import, it exited during start-up, and so on.
    #[non_exhaustive]
    LaunchFailed {
        /// The worker.
        worker: WorkerId,
        /// The launcher's error, with the stderr tail where it has one.
        reason: String,
        /// The launcher's error as a value, where there is one.
        source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// A worker restarted too often and was left failed.
    #[non_exhaustive]
    WorkerFailed {
        /// The worker.
        worker: WorkerId,
        /// Why its last process ended or its last launch failed.
        reason: String,
        /// The error behind `reason` as a value, where there is one (a process
        /// that exited has none).
        source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// Not every connection was up in time.
    #[non_exhaustive]
    Timeout {
        /// Connections up (idle or busy) when the time ran out.
        connected: usize,
        /// `num_workers × max_connections`.
        capacity: usize,
        /// How long it waited.
        waited: Duration,
    },
    /// The pool was shut down.
    Closed,
}

/// Why [`Pool::reload`](crate::Pool::reload),
/// [`Pool::set_num_workers`](crate::Pool::set_num_workers) or
/// [`Pool::set_max_connections`](crate::Pool::set_max_connections) failed.
///
/// As with [`ReadyError`], the message quotes the reason in full and
/// [`source`](std::error::Error::source) hands its cause over as a value.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum OpsError {
    /// The new size is invalid; nothing was changed.
    Config(ConfigError),
    /// A new process did not come up: the spare worker of a reload (the pool
    /// is left as it was), or a replaced worker (the reload stops there; the
    /// worker keeps restarting under its restart policy).
    #[non_exhaustive]
    WorkerDidNotStart {
        /// The worker.
        worker: WorkerId,
        /// Why its launch failed or its last process ended.
        reason: String,
        /// The error behind `reason` as a value, where there is one.
        source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// The pool is shutting down or shut down.
    Closed,
}

impl fmt::Display for ReadyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LaunchFailed { worker, reason, .. } => {
                write!(f, "worker {worker} could not be launched: {reason}")
            }
            Self::WorkerFailed { worker, reason, .. } => {
                write!(f, "worker {worker} failed: {reason}")
            }
            Self::Timeout {
                connected,
                capacity,
                waited,
            } => write!(
                f,
                "{connected} of {capacity} connections were up after {waited:?}"
            ),
            Self::Closed => f.write_str("the pool is closed"),
        }
    }
}

/// The cause itself, not the `Arc` around it, so that it downcasts to its type.
fn cause_of(cause: &Option<Cause>) -> Option<&(dyn std::error::Error + 'static)> {
    cause
        .as_deref()
        .map(|cause| cause as &(dyn std::error::Error + 'static))
}

impl std::error::Error for ReadyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::LaunchFailed { source, .. } | Self::WorkerFailed { source, .. } => {
                cause_of(source)
            }
            _ => None,
        }
    }
}

impl fmt::Display for OpsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(error) => error.fmt(f),
            Self::WorkerDidNotStart { worker, reason, .. } => {
                write!(f, "worker {worker} did not start: {reason}")
            }
            Self::Closed => f.write_str("the pool is closed"),
        }
    }
}

impl std::error::Error for OpsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(error) => error.source(),
            Self::WorkerDidNotStart { source, .. } => cause_of(source),
            Self::Closed => None,
        }
    }
}

impl From<ConfigError> for OpsError {
    fn from(error: ConfigError) -> Self {
        Self::Config(error)
    }
}

impl PartialEq for ReadyError {
    fn eq(&self, other: &Self) -> bool {
        use ReadyError::*;
        match (self, other) {
            (
                LaunchFailed {
                    worker: w1,
                    reason: r1,
                    source: s1,
                },
                LaunchFailed {
                    worker: w2,
                    reason: r2,
                    source: s2,
                },
            )
            | (
                WorkerFailed {
                    worker: w1,
                    reason: r1,
                    source: s1,
                },
                WorkerFailed {
                    worker: w2,
                    reason: r2,
                    source: s2,
                },
            ) => w1 == w2 && r1 == r2 && same_cause(s1, s2),
            (
                Timeout {
                    connected: c1,
                    capacity: k1,
                    waited: t1,
                },
                Timeout {
                    connected: c2,
                    capacity: k2,
                    waited: t2,
                },
            ) => c1 == c2 && k1 == k2 && t1 == t2,
            (Closed, Closed) => true,
            _ => false,
        }
    }
}

impl Eq for ReadyError {}

impl PartialEq for OpsError {
    fn eq(&self, other: &Self) -> bool {
        use OpsError::*;
        match (self, other) {
            (Config(a), Config(b)) => a == b,
            (
                WorkerDidNotStart {
                    worker: w1,
                    reason: r1,
                    source: s1,
                },
                WorkerDidNotStart {
                    worker: w2,
                    reason: r2,
                    source: s2,
                },
            ) => w1 == w2 && r1 == r2 && same_cause(s1, s2),
            (Closed, Closed) => true,
            _ => false,
        }
    }
}

impl Eq for OpsError {}

/// A configuration field with a value the pool cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pool config: `{field}` {reason}")]
pub struct ConfigError {
    field: &'static str,
    reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: String) -> Self {
        Self { field, reason }
    }

    /// The field at fault, as named in [`PoolConfig`](crate::PoolConfig).
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl PoolError {
    /// A short name for the kind of error, as the `outcome` of an event's
    /// tracing span or a metric label: `acquire_timeout`, `queue_full`,
    /// `event_timeout`, `worker_exited`, `worker_unresponsive`, `transport`,
    /// `connection_unusable`, `no_worker_available` or `closed`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AcquireTimeout { .. } => "acquire_timeout",
            Self::QueueFull { .. } => "queue_full",
            Self::EventTimeout { .. } => "event_timeout",
            Self::WorkerExited { .. } => "worker_exited",
            Self::WorkerUnresponsive { .. } => "worker_unresponsive",
            Self::Transport { .. } => "transport",
            Self::ConnectionUnusable { .. } => "connection_unusable",
            Self::NoWorkerAvailable => "no_worker_available",
            Self::Closed => "closed",
        }
    }

    /// The transport's own error, when this is [`PoolError::Transport`] and the
    /// transport's error type is `E`.
    ///
    /// `PoolError` stays one type whatever the transport, so that a host with
    /// several pools (and [`AsyncWorkerPool`](crate::AsyncWorkerPool) objects)
    /// handles errors in one place; this reads the typed error back without a
    /// downcast at every call site. With the socket transport `E` is
    /// `net::NetError`; with a host's own transport, its error type:
    ///
    /// ```
    /// use async_worker_pool::PoolError;
    ///
    /// /// The error of a host's own `Transport`.
    /// #[derive(Debug)]
    /// enum WireError {
    ///     TooLarge,
    ///     Refused,
    /// }
    ///
    /// impl std::fmt::Display for WireError {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str(match self {
    ///             Self::TooLarge => "event too large",
    ///             Self::Refused => "refused",
    ///         })
    ///     }
    /// }
    ///
    /// impl std::error::Error for WireError {}
    ///
    /// fn too_large(error: &PoolError) -> bool {
    ///     matches!(error.transport_error::<WireError>(), Some(WireError::TooLarge))
    /// }
    ///
    /// assert!(!too_large(&PoolError::Closed));
    /// ```
    pub fn transport_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Self::Transport { source, .. } => source.downcast_ref::<E>(),
            _ => None,
        }
    }
}

/// Why [`PoolBuilder::build`](crate::PoolBuilder::build) refused to start a pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `build` was called outside a tokio runtime, so the supervisors cannot run.
    #[error("the pool must be built inside a tokio runtime")]
    NoRuntime,
}
