//! One task per worker that keeps it serving: launches its process, connects its
//! slots, re-establishes connections marked for restart, and restarts the process
//! when it exits or when its connections cannot be re-established.
//!
//! The ladder, from cheap to drastic: reconnect one slot (with backoff, up to
//! `reconnect_attempts` tries) → terminate the process with a grace period and
//! relaunch it (exponential backoff that resets after a stable run) → after more
//! than `max_restarts` within `restart_window`, report the worker failed and stop.
//!
//! Beside the ladder, the supervisor probes its worker's liveness (see
//! [`Transport::probe`]) after an event timeout and on a heartbeat; a worker
//! that does not answer in time is terminated with a short grace and relaunched
//! the same way.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::abort_on_drop::AbortOnDropHandle;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::launcher::{Launcher, WorkerExit, WorkerProcess};

use crate::error::Cause;
use crate::shared::{EndReason, Replacement, Request, Shared};
use crate::stats::WorkerState;
use crate::transport::Transport;
use crate::worker::{WorkerId, WorkerInfo};

/// Why a generation of the worker stopped serving.
enum End {
    Exited(WorkerExit),
    /// A connection could not be re-established; why its last attempt
    /// failed, and the error behind that where there is one.
    ReconnectFailed(String, Option<Cause>),
    /// Its liveness probe failed, for the reason given.
    Unresponsive(String),
    /// Asked to make way for a new generation: a reload, or a recycle.
    Replace {
        why: Replacement,
    },
    /// The worker is being removed.
    Retire,
    Shutdown,
}

/// How a drain ended.
enum Drained {
    /// No event of the generation is left in flight, or the grace ran out.
    Done,
    Exited(WorkerExit),
    Shutdown,
}

/// How often a worker's resident memory is read for `max_worker_rss`.
const RSS_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A liveness probe in progress.
type Probe = Pin<Box<dyn Future<Output = Probed> + Send>>;

/// What a liveness probe found.
enum Probed {
    /// The worker answered.
    Answered,
    /// It did not in time, for the reason given.
    Unresponsive(String),
    /// The host had no file descriptor to probe with: nothing is known about
    /// the worker, which keeps serving on the connections it has.
    HostOutOfFiles,
}

/// How soon a probe the host had no descriptor for is tried again, and how
/// often a connect is while the host is out of descriptors: recovery follows
/// within this of a descriptor coming free.
const OUT_OF_FILES_RETRY: Duration = Duration::from_millis(50);

/// How long a failed probe attempt waits before the next one, within the
/// probe's time: a refused connect is retried rather than believed at once.
const PROBE_RETRY: Duration = Duration::from_millis(20);

/// What a connect task reports: a connection, or `None` once every attempt
/// failed, and then why the last one did.
struct Connected<C> {
    slot: u32,
    conn: Option<C>,
    was_restart: bool,
    failure: String,
    cause: Option<Cause>,
}

pub(crate) struct Supervisor<T: Transport, L: Launcher> {
    pub(crate) shared: Arc<Shared<T>>,
    pub(crate) launcher: Arc<L>,
    pub(crate) worker: WorkerId,
    pub(crate) requests: mpsc::UnboundedReceiver<Request>,
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the worker is removed from the pool.
    pub(crate) retire: CancellationToken,
}

impl<T: Transport, L: Launcher> Supervisor<T, L> {
    pub(crate) async fn run(mut self) {
        let policy = self.shared.config.restart.clone();
        let worker = self.worker;
        let mut generation = 0;
        let mut recent_restarts = VecDeque::new();
        let mut consecutive = 0;
        let mut first_launch = true;
        // A replaced generation is relaunched at once, outside the ladder: it
        // did not fail.
        let mut replaced = false;
        loop {
            if !std::mem::take(&mut first_launch) && !std::mem::take(&mut replaced) {
                if !admit_restart(&mut recent_restarts, &policy) {
                    tracing::error!(
                        %worker,
                        max_restarts = policy.max_restarts,
                        window = ?policy.restart_window,
                        "worker restarted too often; leaving it failed"
                    );
                    self.shared.worker_failed(worker);
                    return;
                }
                consecutive += 1;
                let delay = policy.relaunch_delay(consecutive);
                self.shared.count_worker_restart(worker);
                tracing::info!(%worker, ?delay, "relaunching worker");
                tokio::select! {
                    () = sleep(delay) => {}
                    () = self.shutdown.cancelled() => break,
                    () = self.retire.cancelled() => break,
                }
                self.shared.set_worker_state(worker, WorkerState::Starting);
            }
            let launched = tokio::select! {
                launched = self.launch() => launched,
                () = self.shutdown.cancelled() => break,
                () = self.retire.cancelled() => break,
            };
            let Some(mut process) = launched else {
                // The next try counts as a restart like any other, so a launcher
                // that always fails ends in Failed, not in a tight loop.
                self.shared.count_launch_failed(worker);
                self.shared
                    .set_worker_state(worker, WorkerState::Restarting);
                continue;
            };
            generation += 1;
            let started = Instant::now();
            let end = self.serve(&mut process, generation).await;
            if started.elapsed() >= policy.stable_after {
                consecutive = 0;
            }
            match end {
                End::Replace { why } => {
                    let drained = self.drain(&mut process, generation).await;
                    self.shared.end_generation(
                        worker,
                        WorkerState::Starting,
                        EndReason::Replaced(why),
                    );
                    let exit = match drained {
                        Drained::Exited(exit) => exit,
                        Drained::Done => process.terminate(policy.terminate_grace).await,
                        Drained::Shutdown => {
                            process.terminate(self.shared.shutdown_grace()).await;
                            break;
                        }
                    };
                    tracing::info!(%worker, generation, %exit, ?why, "worker replaced; relaunching");
                    replaced = true;
                }
                End::Retire => {
                    let drained = self.drain(&mut process, generation).await;
                    self.shared
                        .end_generation(worker, WorkerState::Draining, EndReason::Shutdown);
                    let grace = match drained {
                        Drained::Shutdown => self.shared.shutdown_grace(),
                        _ => policy.terminate_grace,
                    };
                    if !matches!(drained, Drained::Exited(_)) {
                        process.terminate(grace).await;
                    }
                    tracing::info!(%worker, generation, "worker removed");
                    break;
                }
                End::Shutdown => {
                    self.shared
                        .end_generation(worker, WorkerState::Stopped, EndReason::Shutdown);
                    process.terminate(self.shared.shutdown_grace()).await;
                    return;
                }
                End::ReconnectFailed(cause, error) => {
                    self.shared.end_generation(
                        worker,
                        WorkerState::Restarting,
                        EndReason::ReconnectFailed,
                    );
                    let exit = process.terminate(policy.terminate_grace).await;
                    tracing::warn!(%worker, generation, %exit, cause, "connections could not be re-established; worker terminated");
                    self.shared.set_last_error_caused(
                        worker,
                        format!(
                            "connections could not be re-established ({cause}); process terminated ({exit})"
                        ),
                        error,
                    );
                }
                End::Unresponsive(reason) => {
                    // Its events in flight fail now: a blocked loop will not answer them.
                    self.shared.end_generation(
                        worker,
                        WorkerState::Restarting,
                        EndReason::Unresponsive,
                    );
                    let exit = process.terminate(policy.unresponsive_grace).await;
                    tracing::warn!(%worker, generation, %exit, reason, "worker unresponsive; terminated");
                    self.shared.set_last_error(
                        worker,
                        format!("unresponsive: {reason}; process terminated ({exit})"),
                    );
                }
                End::Exited(exit) => {
                    self.shared
                        .end_generation(worker, WorkerState::Restarting, EndReason::Exited);
                    tracing::warn!(%worker, generation, %exit, "worker process exited");
                    self.shared
                        .set_last_error(worker, format!("process exited ({exit})"));
                }
            }
        }
        self.shared.set_worker_state(worker, WorkerState::Stopped);
    }

    /// Lets the events in flight on `generation` finish, within
    /// `terminate_grace`, while it gets no new ones.
    async fn drain(&mut self, process: &mut L::Process, generation: u64) -> Drained {
        self.shared.begin_drain(self.worker, generation);
        let grace = self.shared.config.restart.terminate_grace;
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Drained::Shutdown,
            exit = process.wait() => Drained::Exited(exit),
            () = self.shared.worker_idle(self.worker) => Drained::Done,
            () = sleep(grace) => {
                tracing::warn!(worker = %self.worker, generation, ?grace, "events still in flight after the grace; stopping the worker anyway");
                Drained::Done
            }
        }
    }

    /// Launches a process in a task of its own, so that a launcher that panics or
    /// hangs costs one attempt and nothing else.
    async fn launch(&self) -> Option<L::Process> {
        let (launcher, worker) = (self.launcher.clone(), self.worker);
        let limit = self.shared.config.establish_connection_timeout;
        let task =
            AbortOnDropHandle::new(tokio::spawn(async move { launcher.launch(worker).await }));
        match timeout(limit, task).await {
            Ok(Ok(Ok(process))) => Some(process),
            Ok(Ok(Err(error))) => {
                let message = format!("launch failed: {}", error.chain());
                let cause: Cause = Arc::new(error);
                let error: &dyn std::error::Error = &*cause;
                tracing::warn!(%worker, error, "worker launch failed");
                self.shared
                    .set_last_error_caused(worker, message, Some(cause.clone()));
                None
            }
            Ok(Err(_panic)) => {
                tracing::error!(%worker, "worker launcher panicked");
                self.shared
                    .set_last_error(worker, "launch failed: the launcher panicked".into());
                None
            }
            Err(_elapsed) => {
                tracing::warn!(%worker, ?limit, "worker launch timed out");
                self.shared.set_last_error(
                    worker,
                    format!(
                        "launch failed: not ready within establish_connection_timeout ({limit:?})"
                    ),
                );
                None
            }
        }
    }

    /// Serves one generation until its process exits, a connection cannot be
    /// re-established, or the pool shuts down.
    async fn serve(&mut self, process: &mut L::Process, generation: u64) -> End {
        let info = Arc::new(WorkerInfo {
            id: self.worker,
            generation,
            endpoint: process.endpoint(),
            pid: process.pid(),
            attachments: process.attachments(),
        });
        let slots = self
            .shared
            .begin_generation(self.worker, generation, info.pid);
        let connector = Connector {
            transport: self.shared.transport.clone(),
            info: info.clone(),
            attempts: self.shared.config.reconnect_attempts,
            per_attempt: self.shared.config.establish_connection_timeout,
            backoff: self.shared.config.restart.clone(),
            established: Arc::default(),
        };
        // Dropping the set when this generation ends aborts its pending connects.
        let mut connects = JoinSet::new();
        for slot in slots {
            connects.spawn(connector.clone().connect(slot, false));
        }
        let (probe_timeout, probe_interval) = (
            self.shared.config.probe_timeout,
            self.shared.config.probe_interval,
        );
        let mut probe: Option<Probe> = None;
        // An interval too long to represent means no heartbeat.
        let heartbeat_after =
            |from: Instant| probe_interval.and_then(|every| from.checked_add(every));
        let mut next_heartbeat = heartbeat_after(Instant::now());
        // A deadline that never comes, for a disabled heartbeat branch.
        let never = Instant::now() + Duration::from_secs(86_400 * 365);
        let mut max_rss = self.shared.config.max_worker_rss;
        // The first reading a second in: a process just started has not grown yet.
        let mut rss_check =
            tokio::time::interval_at(Instant::now() + RSS_CHECK_INTERVAL, RSS_CHECK_INTERVAL);
        rss_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return End::Shutdown,
                () = self.retire.cancelled() => return End::Retire,
                exit = process.wait() => return End::Exited(exit),
                Some(outcome) = async {
                    match probe.as_mut() {
                        Some(probe) => Some(probe.await),
                        None => None,
                    }
                } => {
                    probe = None;
                    match outcome {
                        Probed::Answered => {
                            self.shared.clear_suspect(self.worker, generation);
                            next_heartbeat = heartbeat_after(Instant::now());
                        }
                        Probed::Unresponsive(reason) => return End::Unresponsive(reason),
                        Probed::HostOutOfFiles => {
                            tracing::debug!(worker = %self.worker, generation, "the host is out of file descriptors; probing again shortly");
                            next_heartbeat = Some(Instant::now() + OUT_OF_FILES_RETRY);
                        }
                    }
                }
                () = sleep_until(next_heartbeat.unwrap_or(never)), if probe.is_none() && next_heartbeat.is_some() => {
                    if let Some(limit) = probe_timeout {
                        probe = Some(self.probe(&info, limit));
                    }
                    next_heartbeat = None;
                }
                Some(request) = self.requests.recv() => match request {
                    // Requests for an older generation are stale: its slots went
                    // down with it and this generation connects them afresh.
                    Request::Reconnect { slot, generation: of } if of == generation => {
                        connects.spawn(connector.clone().connect(slot, true));
                    }
                    Request::Connect { slot, generation: of } if of == generation => {
                        connects.spawn(connector.clone().connect(slot, false));
                    }
                    Request::Replace { generation: of, why } if of == generation => {
                        return End::Replace { why };
                    }
                    // The worker is suspect already; a probe in progress decides.
                    Request::Probe { generation: of } if of == generation && probe.is_none() => {
                        if let Some(limit) = probe_timeout {
                            probe = Some(self.probe(&info, limit));
                        }
                    }
                    _ => {}
                },
                _ = rss_check.tick(), if max_rss.is_some() => {
                    // The launcher's handle knows how to read its process's
                    // memory (the process layer reads /proc); the core does not.
                    let over = max_rss.and_then(|limit| {
                        process.resident_bytes().filter(|&rss| rss > limit).map(|rss| (rss, limit))
                    });
                    if let Some((rss, limit)) = over {
                        tracing::info!(worker = %self.worker, generation, rss, limit, "worker past max_worker_rss; recycling it");
                        self.shared.request_recycle(self.worker, generation);
                        // Asked once per generation: the replacement ends it.
                        max_rss = None;
                    }
                }
                Some(joined) = connects.join_next() => match joined {
                    Ok(Connected { slot, conn: Some(conn), was_restart, .. }) => {
                        self.shared.install(self.worker, slot, generation, conn, was_restart);
                    }
                    Ok(Connected { was_restart, failure, cause, .. }) => {
                        if was_restart {
                            self.shared.count_reconnect_failed();
                        }
                        return End::ReconnectFailed(failure, cause);
                    }
                    Err(_join_error) => return End::ReconnectFailed("the connect task ended".into(), None),
                },
            }
        }
    }
}

impl<T: Transport, L: Launcher> Supervisor<T, L> {
    /// Probes the worker until a probe succeeds or `limit` is up, taking it out
    /// of service (suspect) once a quarter of `limit` has passed without an
    /// answer. A probe triggered by an event timeout finds it suspect already.
    ///
    /// An attempt that fails because the host is out of file descriptors ends
    /// the probe without a verdict: a flood of clients that takes every
    /// descriptor says nothing about the worker, and restarting it would
    /// drop the connections it serves on.
    fn probe(&self, info: &Arc<WorkerInfo>, limit: Duration) -> Probe {
        let (shared, info) = (self.shared.clone(), info.clone());
        Box::pin(async move {
            let now = Instant::now();
            // A limit too long to represent is a year: nothing waits that long.
            let far = |after: Duration| {
                now.checked_add(after)
                    .unwrap_or(now + Duration::from_secs(365 * 86_400))
            };
            let (deadline, overdue) = (far(limit), far(limit / 4));
            let last_error = parking_lot::Mutex::new(None);
            let attempts = async {
                loop {
                    let (transport, target) = (shared.transport.clone(), info.clone());
                    // A task per attempt, so that a panicking probe is one failed attempt.
                    let task = AbortOnDropHandle::new(tokio::spawn(async move {
                        transport.probe(&target).await
                    }));
                    let error = match task.await {
                        Ok(Ok(())) => return Probed::Answered,
                        Ok(Err(error)) => {
                            let error = error.into();
                            if out_of_files(&*error) {
                                return Probed::HostOutOfFiles;
                            }
                            error.to_string()
                        }
                        Err(_panic) => "the probe panicked".to_owned(),
                    };
                    tracing::debug!(worker = %info.id, error, "liveness probe attempt failed");
                    *last_error.lock() = Some(error);
                    sleep(PROBE_RETRY).await;
                }
            };
            tokio::pin!(attempts);
            tokio::select! {
                probed = &mut attempts => return probed,
                () = sleep_until(overdue) => {}
            }
            shared.mark_suspect(info.id, info.generation);
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, attempts).await {
                Ok(probed) => probed,
                Err(_elapsed) => Probed::Unresponsive(match last_error.lock().take() {
                    Some(error) => {
                        format!(
                            "no liveness probe succeeded within {limit:?} (last error: {error})"
                        )
                    }
                    None => format!("no answer to a liveness probe within {limit:?}"),
                }),
            }
        })
    }
}

/// Restart intensity, OTP style: at most `max_restarts` within `restart_window`.
fn admit_restart(recent: &mut VecDeque<Instant>, policy: &crate::RestartPolicy) -> bool {
    let now = Instant::now();
    while recent
        .front()
        .is_some_and(|&at| now.duration_since(at) >= policy.restart_window)
    {
        recent.pop_front();
    }
    if recent.len() >= policy.max_restarts as usize {
        return false;
    }
    recent.push_back(now);
    true
}

/// Everything one connect task needs, cheap to clone.
struct Connector<T> {
    transport: Arc<T>,
    info: Arc<WorkerInfo>,
    attempts: u32,
    per_attempt: Duration,
    backoff: crate::RestartPolicy,
    /// Connections this generation has established so far, all slots together.
    established: Arc<AtomicU64>,
}

impl<T> Clone for Connector<T> {
    fn clone(&self) -> Self {
        Self {
            transport: self.transport.clone(),
            info: self.info.clone(),
            attempts: self.attempts,
            per_attempt: self.per_attempt,
            backoff: self.backoff.clone(),
            established: self.established.clone(),
        }
    }
}

impl<T: Transport> Connector<T> {
    async fn connect(self, slot: u32, was_restart: bool) -> Connected<T::Conn> {
        let worker = self.info.id;
        let mut attempt = 0;
        let mut retry_at_once = false;
        let mut failure = String::new();
        let mut cause: Option<Cause> = None;
        while attempt < self.attempts || retry_at_once {
            if !std::mem::take(&mut retry_at_once) {
                attempt += 1;
                let pause = self.backoff.reconnect_delay(attempt);
                if !pause.is_zero() {
                    sleep(pause).await;
                }
            }
            let established = self.established.load(Ordering::Relaxed);
            let (transport, info) = (self.transport.clone(), self.info.clone());
            // A task per attempt, so that a panicking connect is one failed attempt.
            let task =
                AbortOnDropHandle::new(tokio::spawn(async move { transport.connect(&info).await }));
            match timeout(self.per_attempt, task).await {
                Ok(Ok(Ok(conn))) => {
                    self.established.fetch_add(1, Ordering::Relaxed);
                    return Connected {
                        slot,
                        conn: Some(conn),
                        was_restart,
                        failure,
                        cause: None,
                    };
                }
                Ok(Ok(Err(error))) => {
                    let error: Cause = Arc::from(error.into());
                    // Once the worker has shown that it serves, a host out of
                    // descriptors is no fault of the worker's, and restarting
                    // it would take descriptors too: try again, without using
                    // up an attempt, until one comes free. A host that cannot
                    // open a first connection still fails, saying why.
                    if out_of_files(&*error) && self.established.load(Ordering::Relaxed) > 0 {
                        tracing::debug!(%worker, slot, "the host is out of file descriptors; connecting again shortly");
                        retry_at_once = true;
                        sleep(OUT_OF_FILES_RETRY).await;
                        continue;
                    }
                    failure = connect_failure(&*error);
                    let logged: &dyn std::error::Error = &*error;
                    tracing::debug!(%worker, slot, attempt, error = logged, "connect failed");
                    cause = Some(error);
                }
                Ok(Err(_panic)) => {
                    cause = None;
                    failure = "connect panicked".into();
                    tracing::warn!(%worker, slot, attempt, "connect panicked");
                }
                // A worker that accepts connections one at a time, slowly, has
                // the last of them wait long: while it keeps establishing
                // others, a wait that timed out is not held against the slot.
                Err(_elapsed) if self.established.load(Ordering::Relaxed) > established => {
                    tracing::debug!(%worker, slot, attempt, "connect timed out while the worker made progress; trying again");
                    retry_at_once = true;
                }
                Err(_elapsed) => {
                    cause = None;
                    failure = format!(
                        "connect timed out after {:?} (establish_connection_timeout)",
                        self.per_attempt
                    );
                    tracing::debug!(%worker, slot, attempt, "connect timed out");
                }
            }
        }
        tracing::warn!(%worker, slot, attempts = self.attempts, last_error = failure, "could not establish a connection");
        Connected {
            slot,
            conn: None,
            was_restart,
            failure,
            cause,
        }
    }
}

/// Whether `error`, or an error behind it, says this process (EMFILE) or the
/// system (ENFILE) has no file descriptor left.
fn out_of_files(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |current| current.source()).any(|current| {
        current
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| matches!(io.raw_os_error(), Some(23 | 24)))
    })
}

/// A failed connect as `Stats::last_error`, `ready()` and the log say it: the
/// error and its causes, and what to do when the host ran out of descriptors.
fn connect_failure(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    for current in std::iter::successors(Some(error), |current| current.source()) {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&current.to_string());
    }
    if out_of_files(error) {
        text.push_str(
            "; the host is out of file descriptors: each connection holds one, so raise the \
             open-file limit to num_workers × max_connections and some to spare \
             (process::raise_fd_limit, or `ulimit -n`)",
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_failure_names_its_causes_and_the_fd_limit_when_out_of_files() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot open the socket")]
        struct Wrapped(#[source] std::io::Error);
        let emfile = Wrapped(std::io::Error::from_raw_os_error(24));
        let text = connect_failure(&emfile);
        assert!(
            text.starts_with("cannot open the socket: Too many open files"),
            "{text}"
        );
        assert!(text.contains("process::raise_fd_limit"), "{text}");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(connect_failure(&refused), "connection refused");
    }
}
