#![doc = include_str!("../README.md")]
// docs.rs builds with `--cfg docsrs` on nightly, where `doc_cfg` marks each
// item with the features it needs (`doc_auto_cfg` was merged into it).
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(rustdoc::broken_intra_doc_links)]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod abort_on_drop;
mod config;
mod endpoint;
mod error;
mod event;
#[cfg(feature = "http")]
pub mod http;
mod in_process;
mod launcher;
#[cfg(feature = "net")]
pub mod net;
#[cfg(feature = "nuclio")]
pub mod nuclio;
mod operations;
mod pool;
#[cfg(feature = "process")]
pub mod process;
#[cfg(feature = "prometheus")]
pub mod prometheus;
#[cfg(feature = "tower")]
mod service;
mod shared;
mod slot;
mod stats;
mod supervisor;
mod trace_context;
mod transport;
mod worker;
mod worker_pool;

/// The attribute macro that [`Transport`], [`Launcher`] and [`WorkerProcess`]
/// are written with, for hosts that implement them.
///
/// Kept on purpose: an implementation must expand `async fn` exactly as the
/// trait declares it, so using the crate's own macro means a host needs no
/// `async-trait` dependency of its own and cannot pick a version that
/// disagrees.
pub use async_trait::async_trait;
pub use config::{MAX_CAPACITY, Mode, PoolConfig, RestartPolicy};
pub use endpoint::{Endpoint, EndpointKind};
pub use error::{BoxError, BuildError, ConfigError, OpsError, PoolError, ReadyError};
pub use in_process::{InProcessLauncher, InProcessTransport, InProcessWorker};
pub use launcher::{LaunchError, Launcher, WorkerExit, WorkerProcess};
pub use pool::{Pool, PoolBuilder};
#[cfg(feature = "process")]
pub use process::builder::ProcessLauncherBuilder;
#[cfg(feature = "process")]
pub use process::launcher::ProcessLauncher;
#[cfg(feature = "process")]
pub use process::worker::ProcessWorker;
/// The `prometheus-client` crate, at the version [`prometheus::PoolCollector`]
/// implements its `Collector` trait for: register the collector in a registry
/// of this crate's (`async_worker_pool::prometheus_client::registry::Registry`)
/// and a host on another version of `prometheus-client` gets no trait mismatch.
#[cfg(feature = "prometheus-client")]
pub use prometheus_client;
#[cfg(feature = "tower")]
pub use service::{PoolService, PoolServiceFuture};
pub use slot::{OwnedSlot, Slot};
pub use stats::{
    AllocationStats, ConnectionRestartStats, EventStats, RestartReasons, SlotState, Stats,
    WebSocketStats, WorkerState, WorkerStats,
};
pub use trace_context::{InvalidTraceContext, MAX_TRACESTATE_LEN, TraceContext};
pub use transport::{Transport, is_disconnect_io};
pub use worker::{Attachments, WorkerId, WorkerInfo};
pub use worker_pool::AsyncWorkerPool;
