//! Workers that live inside the host, with no process to start
//! ([`InProcessLauncher`]) and, where no connection needs opening either, no
//! socket ([`InProcessTransport`]). For transports whose "worker" is a task or
//! an in-memory service, for examples, and for tests and benchmarks of the
//! pool itself.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::endpoint::Endpoint;
use crate::error::BoxError;
use crate::launcher::LaunchError;
use crate::launcher::{Launcher, WorkerExit, WorkerProcess};
use crate::transport::Transport;
use crate::worker::{WorkerId, WorkerInfo};

/// A [`Launcher`] whose workers are not processes: launching one always succeeds
/// at once, and the "process" only ends when the pool terminates it.
///
/// Its endpoint is [`Endpoint::Named`] `in-process/N`, for a transport that
/// routes by worker id.
#[derive(Debug, Clone, Copy, Default)]
pub struct InProcessLauncher;

/// The handle [`InProcessLauncher`] returns: it never exits by itself.
#[derive(Debug)]
pub struct InProcessWorker {
    worker: WorkerId,
    stopped: CancellationToken,
}

#[async_trait]
impl Launcher for InProcessLauncher {
    type Process = InProcessWorker;

    async fn launch(&self, worker: WorkerId) -> Result<InProcessWorker, LaunchError> {
        Ok(InProcessWorker {
            worker,
            stopped: CancellationToken::new(),
        })
    }
}

#[async_trait]
impl WorkerProcess for InProcessWorker {
    fn endpoint(&self) -> Endpoint {
        Endpoint::Named(format!("in-process/{}", self.worker))
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    /// Cancel safe: it only waits on a cancellation token.
    async fn wait(&mut self) -> WorkerExit {
        self.stopped.cancelled().await;
        WorkerExit::code(0)
    }

    /// Stops it at once; there is nothing to drain.
    async fn terminate(&mut self, _grace: Duration) -> WorkerExit {
        self.stopped.cancel();
        WorkerExit::code(0)
    }
}

/// A [`Transport`] whose workers answer inside the host: a connection is the
/// worker's id, and `handler(worker, event)` answers each event. With
/// [`InProcessLauncher`], a pool with no process and no socket.
///
/// A host that talks to real workers writes its own [`Transport`]; this one is
/// for examples, and for tests that exercise the pool rather than a wire.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use async_worker_pool::{InProcessLauncher, InProcessTransport, Pool};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Each worker answers with its index and the event.
/// let echo = InProcessTransport::new(|worker, event: String| async move {
///     Ok::<_, std::io::Error>(format!("{worker}:{event}"))
/// });
/// let pool = Pool::builder(echo, InProcessLauncher).max_connections(2).build()?;
/// pool.ready(Duration::from_secs(5)).await?;
/// assert_eq!(pool.dispatch("hello".into()).await?, "0:hello");
/// # Ok(())
/// # }
/// ```
pub struct InProcessTransport<F, Req> {
    handler: F,
    // `fn(Req)`: the transport takes events, it holds none, so it is `Send`
    // and `Sync` whatever the event type.
    request: PhantomData<fn(Req)>,
}

impl<F, Req> InProcessTransport<F, Req> {
    /// A transport that answers each event with `handler(worker, event)`.
    pub fn new<Fut>(handler: F) -> Self
    where
        F: Fn(WorkerId, Req) -> Fut,
    {
        Self {
            handler,
            request: PhantomData,
        }
    }
}

impl<F: Clone, Req> Clone for InProcessTransport<F, Req> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            request: PhantomData,
        }
    }
}

impl<F, Req> fmt::Debug for InProcessTransport<F, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessTransport").finish_non_exhaustive()
    }
}

#[async_trait]
impl<F, Req, Fut, Resp, E> Transport for InProcessTransport<F, Req>
where
    F: Fn(WorkerId, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, E>> + Send,
    Req: Send + 'static,
    Resp: Send + 'static,
    E: Into<BoxError> + Send + 'static,
{
    type Conn = WorkerId;
    type Request = Req;
    type Response = Resp;
    type Error = E;

    async fn connect(&self, worker: &WorkerInfo) -> Result<WorkerId, E> {
        Ok(worker.id)
    }

    async fn call(&self, worker: &mut WorkerId, event: Req) -> Result<Resp, E> {
        (self.handler)(*worker, event).await
    }
}
