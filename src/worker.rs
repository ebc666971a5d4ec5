//! [`WorkerId`]: which worker of a pool, the name every other part uses, and
//! [`WorkerInfo`]: one running generation of it, as a transport needs it, with
//! the [`Attachments`] its launcher gave that process.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::endpoint::Endpoint;

/// The index of a worker in its pool, from 0 to `num_workers - 1`.
///
/// It stays the same across restarts; [`WorkerInfo::generation`](crate::WorkerInfo::generation) tells the
/// processes apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(u32);

impl WorkerId {
    /// The worker with index `index`.
    pub const fn new(index: u32) -> Self {
        Self(index)
    }

    /// Its index in the pool.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One running generation of a worker, as the transport needs it to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Which worker.
    pub id: WorkerId,
    /// Which process of that worker: 1 for the first launch, one more per restart.
    pub generation: u64,
    /// Where it accepts connections.
    pub endpoint: Endpoint,
    /// Its operating-system process id, where it has one.
    pub pid: Option<u32>,
    /// What the launcher attached to this process for the transport: the
    /// [`WorkerProcess::attachments`](crate::WorkerProcess::attachments) of
    /// its handle.
    pub attachments: Attachments,
}

impl WorkerInfo {
    /// Generation `generation` of worker `id`, listening on `endpoint`, with
    /// process id `pid` where it has one. The pool builds these itself; this is
    /// for tests of a [`Transport`](crate::Transport) and for custom pools.
    pub fn new(id: WorkerId, generation: u64, endpoint: Endpoint, pid: Option<u32>) -> Self {
        Self {
            id,
            generation,
            endpoint,
            pid,
            attachments: Attachments::new(),
        }
    }

    /// The same, with `attachments` in place of none: what a transport finds
    /// when the launcher attached them to the process.
    #[must_use]
    pub fn with_attachments(mut self, attachments: Attachments) -> Self {
        self.attachments = attachments;
        self
    }
}

/// Values a launcher attaches to one worker process for the transport that
/// connects to it, one per type: the secret of its handshake, the state the
/// connections to one Nuclio wrapper share.
///
/// They travel with the process's handle
/// ([`WorkerProcess::attachments`](crate::WorkerProcess::attachments)) into
/// its [`WorkerInfo`], so they belong to that one process: two pools in one
/// process, or two generations of one worker, never see each other's. Cloning
/// is cheap (the values are shared).
///
/// # Examples
///
/// ```
/// use async_worker_pool::{Attachments, Endpoint, WorkerId, WorkerInfo};
///
/// #[derive(Debug, PartialEq)]
/// struct Token(&'static str);
///
/// let attachments = Attachments::new().with(Token("abc")).with(7_u16);
/// let info = WorkerInfo::new(WorkerId::new(0), 1, Endpoint::Named("w0".into()), None)
///     .with_attachments(attachments);
/// assert_eq!(info.attachments.get::<Token>(), Some(&Token("abc")));
/// assert_eq!(info.attachments.get::<u16>(), Some(&7));
/// assert_eq!(info.attachments.get::<String>(), None);
/// ```
#[derive(Clone, Default)]
pub struct Attachments {
    values: Vec<Arc<dyn Any + Send + Sync>>,
}

impl Attachments {
    /// No attachments.
    pub const fn new() -> Self {
        Self { values: Vec::new() }
    }

    /// These attachments and `value`, which replaces an earlier value of its type.
    #[must_use]
    pub fn with<V: Any + Send + Sync>(mut self, value: V) -> Self {
        self.insert(value);
        self
    }

    /// Attaches `value`, in place of an earlier value of its type.
    pub fn insert<V: Any + Send + Sync>(&mut self, value: V) {
        self.values.retain(|held| !held.is::<V>());
        self.values.push(Arc::new(value));
    }

    /// The attached value of type `V`, if there is one.
    pub fn get<V: Any + Send + Sync>(&self) -> Option<&V> {
        self.values.iter().find_map(|held| held.downcast_ref::<V>())
    }

    /// How many values are attached.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether nothing is attached.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl fmt::Debug for Attachments {
    /// The number of values only: an attachment may be a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Attachments({})", self.values.len())
    }
}

/// Two sets are equal when they hold the very same values (not copies).
impl PartialEq for Attachments {
    fn eq(&self, other: &Self) -> bool {
        self.values.len() == other.values.len()
            && self
                .values
                .iter()
                .zip(&other.values)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Eq for Attachments {}
