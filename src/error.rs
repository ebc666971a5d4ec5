//! The errors the pool reports: one typed outcome for every way an event can fail.

use std::time::Duration;

use crate::launcher::WorkerId;

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
    /// Every slot stayed busy for `connection_availability_timeout`.
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
    /// The transport failed the exchange; the connection is being restarted.
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

/// A [`Launcher`](crate::Launcher) could not start a worker process.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LaunchError {
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl LaunchError {
    /// A launch error that says what went wrong.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// A launch error caused by `source`.
    pub fn with_source(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}
