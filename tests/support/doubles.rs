//! Test doubles for the pool core: an in-memory transport whose every connection
//! is served by a simulated worker task, and a scriptable fake launcher.
//!
//! The in-memory connection is a pair of channels, like a socket: a request that
//! was abandoned mid-call still gets its answer written to the connection later,
//! so a test can prove that such a connection is never read again.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_worker_pool::{
    Endpoint, LaunchError, Launcher, Pool, Stats, Transport, WorkerExit, WorkerId, WorkerInfo,
    WorkerProcess, async_trait,
};
use tokio::sync::{mpsc, watch};

use super::stats::{assert_slots_add_up, poll};

/// What the simulated worker does with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answer after this long.
    Reply(Duration),
    /// `call` fails at once with a transport error.
    Fail,
    /// Never answer.
    Hang,
    /// `call` panics.
    Panic,
    /// `call` refuses the event before sending it (`is_unsent`).
    Refuse,
}

/// One event: an id the answer echoes, and what the worker should do.
#[derive(Debug, Clone, Copy)]
pub struct Req {
    pub id: u64,
    pub action: Action,
}

impl Req {
    pub fn reply(id: u64, after: Duration) -> Self {
        Self {
            id,
            action: Action::Reply(after),
        }
    }

    pub fn now(id: u64) -> Self {
        Self::reply(id, Duration::ZERO)
    }
}

/// The simulated worker's answer: which event, and where it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resp {
    pub id: u64,
    pub worker: usize,
    pub generation: u64,
    pub conn: u64,
}

/// What a connect attempt does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRule {
    Ok,
    /// Succeeds after this long.
    After(Duration),
    Fail,
    /// Fails as opening a socket does when the host has no file descriptor
    /// left (EMFILE).
    OutOfFiles,
    Hang,
    Panic,
}

/// A connect rule for `(worker, generation)`; `None` matches any.
type ConnectRuleEntry = (Option<usize>, Option<u64>, ConnectRule);

#[derive(Default)]
pub struct MemState {
    /// `(worker, generation, rule)`, newest first; `None` matches any.
    connect_rules: Mutex<Vec<ConnectRuleEntry>>,
    /// Workers whose every event hangs, as if blocked.
    stuck: Mutex<Vec<usize>>,
    next_conn: AtomicU64,
    /// Connections open now (made and not yet dropped).
    pub live: AtomicUsize,
    /// Successful connects, in all.
    pub connects: AtomicUsize,
    /// Connect attempts, successful or not.
    pub connect_attempts: AtomicUsize,
    /// Connections dropped by the pool.
    pub dropped: AtomicUsize,
    /// Events the simulated workers received.
    pub received: AtomicUsize,
    /// Idle connections die after this long, as a server's keep-alive timeout
    /// closes them; `is_broken` tells.
    idle_death: Mutex<Option<Duration>>,
}

impl MemState {
    pub fn set_connect(&self, worker: Option<usize>, generation: Option<u64>, rule: ConnectRule) {
        self.connect_rules
            .lock()
            .unwrap()
            .insert(0, (worker, generation, rule));
    }

    fn connect_rule(&self, worker: usize, generation: u64) -> ConnectRule {
        self.connect_rules
            .lock()
            .unwrap()
            .iter()
            .find(|(w, g, _)| w.is_none_or(|w| w == worker) && g.is_none_or(|g| g == generation))
            .map_or(ConnectRule::Ok, |&(_, _, rule)| rule)
    }

    pub fn set_stuck(&self, worker: usize, stuck: bool) {
        let mut list = self.stuck.lock().unwrap();
        list.retain(|&w| w != worker);
        if stuck {
            list.push(worker);
        }
    }

    pub fn set_idle_death(&self, after: Option<Duration>) {
        *self.idle_death.lock().unwrap() = after;
    }

    fn is_stuck(&self, worker: usize) -> bool {
        self.stuck.lock().unwrap().contains(&worker)
    }
}

/// An in-memory transport; clones share one [`MemState`].
#[derive(Clone, Default)]
pub struct MemTransport {
    pub state: Arc<MemState>,
}

/// One simulated connection: requests go to a worker task, answers come back.
pub struct MemConn {
    pub id: u64,
    last_used: tokio::time::Instant,
    to_worker: mpsc::UnboundedSender<Req>,
    from_worker: mpsc::UnboundedReceiver<Resp>,
    state: Arc<MemState>,
}

impl Drop for MemConn {
    fn drop(&mut self) {
        self.state.live.fetch_sub(1, SeqCst);
        self.state.dropped.fetch_add(1, SeqCst);
    }
}

#[async_trait]
impl Transport for MemTransport {
    type Conn = MemConn;
    type Request = Req;
    type Response = Resp;
    type Error = io::Error;

    async fn connect(&self, info: &WorkerInfo) -> Result<MemConn, io::Error> {
        let (worker, generation) = (info.id.index(), info.generation);
        self.state.connect_attempts.fetch_add(1, SeqCst);
        // A blocked worker answers no connect either: its loop cannot say ready.
        if self.state.is_stuck(worker) {
            std::future::pending::<()>().await;
        }
        match self.state.connect_rule(worker, generation) {
            ConnectRule::Ok => {}
            ConnectRule::After(delay) => tokio::time::sleep(delay).await,
            ConnectRule::Fail => return Err(io::Error::other("connection refused (scripted)")),
            ConnectRule::OutOfFiles => return Err(io::Error::from_raw_os_error(24)),
            ConnectRule::Hang => std::future::pending::<()>().await,
            ConnectRule::Panic => panic!("connect panicked (scripted)"),
        }
        let id = self.state.next_conn.fetch_add(1, SeqCst);
        let (to_worker, mut requests) = mpsc::unbounded_channel::<Req>();
        let (answers, from_worker) = mpsc::unbounded_channel();
        let state = self.state.clone();
        tokio::spawn(async move {
            while let Some(req) = requests.recv().await {
                state.received.fetch_add(1, SeqCst);
                let serve = async {
                    match req.action {
                        Action::Reply(after) if !state.is_stuck(worker) => {
                            tokio::time::sleep(after).await
                        }
                        _ => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = serve => {}
                    // The host closed the connection: the worker task ends.
                    () = answers.closed() => return,
                }
                let resp = Resp {
                    id: req.id,
                    worker,
                    generation,
                    conn: id,
                };
                if answers.send(resp).is_err() {
                    return;
                }
            }
        });
        self.state.live.fetch_add(1, SeqCst);
        self.state.connects.fetch_add(1, SeqCst);
        Ok(MemConn {
            id,
            last_used: tokio::time::Instant::now(),
            to_worker,
            from_worker,
            state: self.state.clone(),
        })
    }

    async fn call(&self, conn: &mut MemConn, req: Req) -> Result<Resp, io::Error> {
        match req.action {
            Action::Fail => return Err(io::Error::other("broken pipe (scripted)")),
            Action::Panic => panic!("call panicked (scripted)"),
            Action::Refuse => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
            Action::Reply(_) | Action::Hang => {}
        }
        if self.idle_dead(conn) {
            return Err(io::Error::from(io::ErrorKind::ConnectionReset));
        }
        conn.to_worker
            .send(req)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        let resp = conn
            .from_worker
            .recv()
            .await
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof));
        conn.last_used = tokio::time::Instant::now();
        resp
    }

    fn is_broken(&self, conn: &mut MemConn) -> bool {
        self.idle_dead(conn)
    }

    fn is_unsent(&self, error: &io::Error) -> bool {
        error.kind() == io::ErrorKind::InvalidInput
    }
}

impl MemTransport {
    fn idle_dead(&self, conn: &MemConn) -> bool {
        let after = *self.state.idle_death.lock().unwrap();
        after.is_some_and(|after| conn.last_used.elapsed() >= after)
    }
}

/// What a launch does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchRule {
    Ok,
    Fail,
    Hang,
    Panic,
}

#[derive(Default)]
pub struct LaunchState {
    /// Per worker, the rules for its next launches; `Ok` once the list is empty.
    script: Mutex<HashMap<usize, VecDeque<LaunchRule>>>,
    /// Per worker, how to end its current process.
    exits: Mutex<HashMap<usize, watch::Sender<Option<WorkerExit>>>>,
    next_pid: AtomicU64,
    /// Launch attempts per worker.
    pub attempts: Mutex<HashMap<usize, usize>>,
    /// Processes launched and not yet dropped.
    pub alive: AtomicUsize,
    /// `(pid, grace)` for every terminate call.
    pub terminated: Mutex<Vec<(u32, Duration)>>,
    /// Processes that ignore the polite stop and must be killed after the grace.
    pub ignore_term: AtomicBool,
}

impl LaunchState {
    pub fn script(&self, worker: usize, rules: impl IntoIterator<Item = LaunchRule>) {
        self.script
            .lock()
            .unwrap()
            .entry(worker)
            .or_default()
            .extend(rules);
    }

    /// Makes the worker's current process exit as `exit`.
    pub fn kill(&self, worker: usize, exit: WorkerExit) {
        if let Some(sender) = self.exits.lock().unwrap().get(&worker) {
            sender.send_replace(Some(exit));
        }
    }

    pub fn attempts(&self, worker: usize) -> usize {
        self.attempts
            .lock()
            .unwrap()
            .get(&worker)
            .copied()
            .unwrap_or(0)
    }
}

#[derive(Clone, Default)]
pub struct FakeLauncher {
    pub state: Arc<LaunchState>,
}

pub struct FakeProcess {
    worker: usize,
    pid: u32,
    exit: watch::Receiver<Option<WorkerExit>>,
    state: Arc<LaunchState>,
}

impl Drop for FakeProcess {
    fn drop(&mut self) {
        self.state.alive.fetch_sub(1, SeqCst);
    }
}

#[async_trait]
impl Launcher for FakeLauncher {
    type Process = FakeProcess;

    async fn launch(&self, worker: WorkerId) -> Result<FakeProcess, LaunchError> {
        let w = worker.index();
        *self.state.attempts.lock().unwrap().entry(w).or_default() += 1;
        let rule = self
            .state
            .script
            .lock()
            .unwrap()
            .get_mut(&w)
            .and_then(VecDeque::pop_front)
            .unwrap_or(LaunchRule::Ok);
        match rule {
            LaunchRule::Ok => {}
            LaunchRule::Fail => return Err(LaunchError::new("cannot start (scripted)")),
            LaunchRule::Hang => std::future::pending::<()>().await,
            LaunchRule::Panic => panic!("launch panicked (scripted)"),
        }
        let (sender, exit) = watch::channel(None);
        self.state.exits.lock().unwrap().insert(w, sender);
        self.state.alive.fetch_add(1, SeqCst);
        Ok(FakeProcess {
            worker: w,
            pid: 1000 + self.state.next_pid.fetch_add(1, SeqCst) as u32,
            exit,
            state: self.state.clone(),
        })
    }
}

#[async_trait]
impl WorkerProcess for FakeProcess {
    fn endpoint(&self) -> Endpoint {
        Endpoint::Named(format!("fake/{}", self.worker))
    }

    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    async fn wait(&mut self) -> WorkerExit {
        let exit = match self.exit.wait_for(Option::is_some).await {
            Ok(exit) => *exit,
            Err(_) => None,
        };
        match exit {
            Some(exit) => exit,
            // The launcher state is gone: the test is over; never exit.
            None => std::future::pending().await,
        }
    }

    async fn terminate(&mut self, grace: Duration) -> WorkerExit {
        self.state
            .terminated
            .lock()
            .unwrap()
            .push((self.pid, grace));
        if self.state.ignore_term.load(SeqCst) {
            tokio::time::sleep(grace).await;
            WorkerExit::signal(9)
        } else {
            WorkerExit::code(0)
        }
    }
}

pub type TestPool = Pool<MemTransport>;

/// A pool over the test doubles, and handles on both.
pub struct Harness {
    pub pool: TestPool,
    pub transport: Arc<MemState>,
    pub launcher: Arc<LaunchState>,
}

/// Builds a pool with `configure` applied to its builder, and waits until every
/// slot is idle.
pub async fn harness(
    configure: impl FnOnce(
        async_worker_pool::PoolBuilder<MemTransport, FakeLauncher>,
    ) -> async_worker_pool::PoolBuilder<MemTransport, FakeLauncher>,
) -> Harness {
    let (transport, launcher) = (MemTransport::default(), FakeLauncher::default());
    let (t, l) = (transport.state.clone(), launcher.state.clone());
    let pool = configure(Pool::builder(transport, launcher))
        .build()
        .expect("valid test config");
    let harness = Harness {
        pool,
        transport: t,
        launcher: l,
    };
    harness
        .until("every slot idle", |s| s.idle == s.capacity)
        .await;
    harness
}

impl Harness {
    /// Waits until `condition` holds, as [`until`] does.
    pub async fn until(&self, what: &str, condition: impl Fn(&Stats) -> bool) -> Stats {
        until(&self.pool, what, condition).await
    }
}

/// Waits (on the paused clock, so at no real cost) until `condition` holds,
/// checking on every snapshot that the slot states add up; fails the test with
/// the last snapshot if it does not hold within ten minutes of pool time.
pub async fn until(pool: &TestPool, what: &str, condition: impl Fn(&Stats) -> bool) -> Stats {
    // Every millisecond: the clock costs nothing, and a test that measures a
    // delay by waiting for its end reads it to the millisecond.
    let every = Duration::from_millis(1);
    poll(pool, what, Duration::from_secs(600), every, |stats| {
        assert_slots_add_up(stats);
        condition(stats)
    })
    .await
}

/// Lets every ready task run without moving the paused clock.
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}
