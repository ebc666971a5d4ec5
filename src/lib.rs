#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod api;
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
mod task;
mod transport;
mod worker;

pub use api::AsyncWorkerPool;
pub use async_trait::async_trait;
pub use config::{MAX_CAPACITY, Mode, PoolConfig, RestartPolicy};
pub use endpoint::{Endpoint, EndpointKind};
pub use error::{BoxError, BuildError, ConfigError, OpsError, PoolError, ReadyError};
pub use in_process::{InProcessLauncher, InProcessWorker};
pub use launcher::{LaunchError, Launcher, WorkerExit, WorkerProcess};
pub use pool::{Pool, PoolBuilder};
#[cfg(feature = "process")]
pub use process::{Lifespan, ProcessLauncher, ProcessLauncherBuilder, ProcessWorker};
#[cfg(feature = "tower")]
pub use service::{PoolService, PoolServiceFuture};
pub use slot::{OwnedSlot, Slot};
pub use stats::{
    AllocationStats, ConnectionRestartStats, EventStats, RestartReasons, SlotState, Stats,
    WorkerState, WorkerStats,
};
pub use transport::{Transport, is_disconnect_io};
pub use worker::{Attachments, WorkerId, WorkerInfo};
