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

use crate::task::AbortOnDropHandle;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::launcher::{Launcher, WorkerExit, WorkerProcess};
use crate::shared::{EndReason, Replacement, Request, Shared};
use crate::stats::WorkerState;
use crate::transport::Transport;
use crate::worker::{WorkerId, WorkerInfo};

/// Why a generation of the worker stopped serving.
enum End {
    Exited(WorkerExit),
    /// A connection could not be re-established; why its last attempt failed.
    ReconnectFailed(String),
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

/// A liveness probe in progress: `Err` says why the worker is unresponsive.
type Probe = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

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
                End::ReconnectFailed(cause) => {
                    self.shared.end_generation(
                        worker,
                        WorkerState::Restarting,
                        EndReason::ReconnectFailed,
                    );
                    let exit = process.terminate(policy.terminate_grace).await;
                    tracing::warn!(%worker, generation, %exit, cause, "connections could not be re-established; worker terminated");
                    self.shared.set_last_error(
                        worker,
                        format!(
                            "connections could not be re-established ({cause}); process terminated ({exit})"
                        ),
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
                let error: &dyn std::error::Error = &error;
                tracing::warn!(%worker, error, "worker launch failed");
                self.shared.set_last_error(worker, message);
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
        let mut max_rss = self
            .shared
            .config
            .max_worker_rss
            .filter(|_| info.pid.is_some());
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
                        Ok(()) => self.shared.clear_suspect(self.worker, generation),
                        Err(reason) => return End::Unresponsive(reason),
                    }
                    next_heartbeat = heartbeat_after(Instant::now());
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
                    let over = max_rss.zip(info.pid).and_then(|(limit, pid)| {
                        resident_bytes(pid).filter(|&rss| rss > limit).map(|rss| (rss, limit))
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
                    Ok(Connected { was_restart, failure, .. }) => {
                        if was_restart {
                            self.shared.count_reconnect_failed();
                        }
                        return End::ReconnectFailed(failure);
                    }
                    Err(_join_error) => return End::ReconnectFailed("the connect task ended".into()),
                },
            }
        }
    }
}

impl<T: Transport, L: Launcher> Supervisor<T, L> {
    /// Probes the worker until a probe succeeds or `limit` is up, taking it out
    /// of service (suspect) once a quarter of `limit` has passed without an
    /// answer. A probe triggered by an event timeout finds it suspect already.
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
                        Ok(Ok(())) => return,
                        Ok(Err(error)) => error.into().to_string(),
                        Err(_panic) => "the probe panicked".to_owned(),
                    };
                    tracing::debug!(worker = %info.id, error, "liveness probe attempt failed");
                    *last_error.lock() = Some(error);
                    sleep(PROBE_RETRY).await;
                }
            };
            tokio::pin!(attempts);
            let answered = tokio::select! {
                () = &mut attempts => true,
                () = sleep_until(overdue) => false,
            };
            if !answered {
                shared.mark_suspect(info.id, info.generation);
                let left = deadline.saturating_duration_since(Instant::now());
                if timeout(left, attempts).await.is_err() {
                    let reason = match last_error.lock().take() {
                        Some(error) => format!(
                            "no liveness probe succeeded within {limit:?} (last error: {error})"
                        ),
                        None => format!("no answer to a liveness probe within {limit:?}"),
                    };
                    return Err(reason);
                }
            }
            Ok(())
        })
    }
}

/// The resident memory of process `pid` in bytes, from `/proc/PID/status`
/// (`VmRSS`); `None` where there is no such file.
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
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
                    };
                }
                Ok(Ok(Err(error))) => {
                    let error: crate::BoxError = error.into();
                    failure = connect_failure(&*error);
                    let error: &dyn std::error::Error = &*error;
                    tracing::debug!(%worker, slot, attempt, error, "connect failed");
                }
                Ok(Err(_panic)) => {
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
        }
    }
}

/// A failed connect as `Stats::last_error`, `ready()` and the log say it: the
/// error and its causes, and what to do when the host ran out of descriptors.
fn connect_failure(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut out_of_files = false;
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            // EMFILE and ENFILE: this process's limit, or the system's.
            out_of_files |= matches!(io.raw_os_error(), Some(23 | 24));
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&current.to_string());
        cause = current.source();
    }
    if out_of_files {
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

    #[test]
    fn vm_rss_is_read_in_bytes_and_garbage_is_none() {
        let status = "Name:\tpython3\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("VmRSS: lots kB"), None);
        assert_eq!(parse_vm_rss(""), None);
    }

    #[test]
    fn this_process_has_a_resident_size_on_linux() {
        let rss = resident_bytes(std::process::id());
        if cfg!(target_os = "linux") {
            assert!(rss.is_some_and(|bytes| bytes > 0));
        }
    }
}
