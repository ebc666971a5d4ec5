#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod api;
mod config;
mod error;
mod idle_index;
mod in_process;
mod launcher;
#[cfg(feature = "net")]
pub mod net;
#[cfg(feature = "nuclio")]
pub mod nuclio;
mod ops;
mod pool;
#[cfg(feature = "process")]
pub mod process;
#[cfg(feature = "prometheus")]
pub mod prometheus;
mod shared;
mod slot;
mod stats;
mod supervisor;
mod task;
mod transport;
mod wait_queue;
mod worker_id;

pub use api::AsyncWorkerPool;
pub use async_trait::async_trait;
pub use config::{MAX_CAPACITY, Mode, PoolConfig, RestartPolicy};
pub use error::{BoxError, BuildError, ConfigError, OpsError, PoolError, ReadyError};
pub use in_process::{InProcessLauncher, InProcessWorker};
pub use launcher::{
    Endpoint, LaunchError, Launcher, WorkerExit, WorkerId, WorkerInfo, WorkerProcess,
};
pub use pool::{Pool, PoolBuilder};
#[cfg(feature = "process")]
pub use process::{EndpointKind, Lifespan, ProcessLauncher, ProcessLauncherBuilder, ProcessWorker};
pub use slot::Slot;
pub use stats::{
    AllocationStats, ConnectionRestartStats, EventStats, RestartReasons, SlotState, Stats,
    WorkerState, WorkerStats,
};
pub use transport::{Transport, is_disconnect_io};
