//! Pool configuration: the knobs of Nuclio's asynchronous mode, their defaults,
//! and the checks that reject a configuration before any worker is started.

use std::time::Duration;

use crate::error::ConfigError;

/// How a worker's connections are used (Nuclio's trigger `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// Many connections per worker (`max_connections`), one event on each at a time.
    #[default]
    Async,
    /// Exactly one connection per worker, so one event per worker at a time.
    Sync,
}

/// What the supervisor does when connections or worker processes fail.
///
/// The ladder: a connection marked for restart is re-established up to
/// [`PoolConfig::reconnect_attempts`] times; when that fails the worker process is
/// terminated (with [`terminate_grace`](Self::terminate_grace)) and relaunched after
/// an exponential backoff; a worker restarted more than
/// [`max_restarts`](Self::max_restarts) times within
/// [`restart_window`](Self::restart_window) is reported
/// [`WorkerState::Failed`](crate::WorkerState::Failed) and left down.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestartPolicy {
    /// Pause before the second connect attempt of a slot; doubled before each later one.
    /// Default 100 ms.
    pub reconnect_backoff: Duration,
    /// Delay before the first relaunch of a worker; doubled for each consecutive
    /// relaunch. Default 100 ms.
    pub initial_backoff: Duration,
    /// Cap on the relaunch delay. Default 30 s.
    pub max_backoff: Duration,
    /// A worker generation that served this long resets the backoff. Default 60 s.
    pub stable_after: Duration,
    /// Restarts allowed within [`restart_window`](Self::restart_window) before the
    /// worker is reported failed. Default 5.
    pub max_restarts: u32,
    /// The window in which restarts are counted. Default 60 s.
    pub restart_window: Duration,
    /// Time a worker gets to exit after it is asked to terminate for a restart,
    /// before it is killed. Default 5 s.
    pub terminate_grace: Duration,
    /// Time an unresponsive worker (one that failed its liveness probe) gets to
    /// exit before it is killed. Short, because a blocked event loop cannot
    /// drain. Default 500 ms.
    pub unresponsive_grace: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            reconnect_backoff: Duration::from_millis(100),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            terminate_grace: Duration::from_secs(5),
            unresponsive_grace: Duration::from_millis(500),
        }
    }
}

impl RestartPolicy {
    /// The delay before the `n`th consecutive relaunch (`n` from 1).
    pub(crate) fn relaunch_delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .map_or(self.max_backoff, |d| d.min(self.max_backoff))
    }

    /// The pause before connect attempt `n` (`n` from 1; none before the first).
    pub(crate) fn reconnect_delay(&self, n: u32) -> Duration {
        if n <= 1 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(n - 2).unwrap_or(u32::MAX);
        self.reconnect_backoff.saturating_mul(factor)
    }
}

/// The default `min_worker_uptime`: a worker replaced at most
/// once a minute for its bounds costs little.
const DEFAULT_MIN_WORKER_UPTIME: Duration = Duration::from_secs(60);

/// The largest [`PoolConfig::min_worker_uptime`] `validate` accepts.
const MAX_MIN_WORKER_UPTIME: Duration = Duration::from_secs(86_400);

/// The pool's configuration. Field names follow Nuclio's where it has one.
///
/// | field | Nuclio | default |
/// |---|---|---|
/// | `num_workers` | `numWorkers` | 1 |
/// | `max_connections` | `async.maxConnectionsNumber` | 1000 |
/// | `mode` | trigger `mode` | [`Mode::Async`] |
/// | `acquire_timeout` | `async.connectionAvailabilityTimeout` | 10 s |
/// | `event_timeout` | `spec.eventTimeout` | none |
/// | `reconnect_attempts` | (3, fixed) | 3 |
/// | `establish_connection_timeout` | `async.establishConnectionTimeout` | 30 s |
/// | `max_waiters` | — | none (unbounded) |
/// | `probe_timeout` | — | 1 s |
/// | `probe_interval` | — | 5 s |
/// | `max_events_per_worker` | — | none |
/// | `max_worker_rss` | — | none |
/// | `min_worker_uptime` | — | 60 s |
/// | `recycle_after_event_timeout` | — | false |
/// | `stall_after` | — | 1 ms |
///
/// # Liveness
///
/// A worker whose event loop is blocked (a handler that calls `time.sleep`, a
/// CPU-bound loop) stalls every connection to it, and Nuclio only notices after
/// its reconnects time out, about 90 s later. The pool probes the worker instead
/// (see [`Transport::probe`](crate::Transport::probe)): at once when one of its
/// events runs past `event_timeout`, and every `probe_interval` otherwise. While a
/// probe triggered by a timeout is outstanding, or a heartbeat probe is overdue,
/// the worker is [`WorkerState::Suspect`](crate::WorkerState::Suspect) and gets
/// no new events. A probe that fails or takes longer than `probe_timeout` makes
/// the worker *unresponsive*: it is terminated with
/// [`RestartPolicy::unresponsive_grace`], killed, and relaunched like a worker
/// that exited, and its events in flight fail with
/// [`PoolError::WorkerUnresponsive`](crate::PoolError::WorkerUnresponsive).
///
/// The trade-off: a loop that lags longer than `probe_timeout` is treated as
/// blocked. The defaults find a blocked worker within about 1 s of an event
/// timeout (within about 6 s with no event timeout configured) and give a loop
/// busy with a thousand events a full second to accept one more connection.
/// Raise `probe_timeout` for handlers that hold the loop for long stretches on
/// purpose; `None` turns probing off.
///
/// A probe, or a reconnect of a worker that has served, that fails because the
/// host itself is out of file descriptors (EMFILE, ENFILE) says nothing about
/// the worker: it is tried again every 50 ms, without counting against the
/// worker or against `reconnect_attempts`, so that a flood of clients that
/// takes every descriptor does not cost the worker its connections, and they
/// are back as soon as a descriptor is free.
///
/// # Recycling
///
/// Long-running handlers leak: a cache that only grows, a library that keeps
/// every response. As gunicorn's `max_requests` does, the pool can replace a
/// worker process before the leak matters: after `max_events_per_worker`
/// events (plus a jitter of up to a tenth, drawn per worker and generation, so
/// that workers started together are not all replaced together), or once its
/// resident memory passes `max_worker_rss` bytes (asked of its handle every
/// second, [`WorkerProcess::resident_bytes`](crate::WorkerProcess::resident_bytes):
/// the process launcher reads `/proc/PID/status`, so on systems without
/// `/proc`, and for launchers that cannot tell, this limit is not checked). The
/// replacement is the rolling one of [`Pool::reload`](crate::Pool::reload):
/// a spare worker comes up first, the old process finishes its events in
/// flight, and no event fails. Counted by bound in
/// [`RestartReasons::recycled_events`](crate::RestartReasons::recycled_events)
/// and [`RestartReasons::recycled_rss`](crate::RestartReasons::recycled_rss).
///
/// A worker is never recycled before it has served `min_worker_uptime`
/// (60 s by default): one that comes due sooner is recycled once it has.
/// Without it, a handler already past `max_worker_rss` when it is imported
/// would have each new process replaced a second after it started, and the
/// fleet would restart in a loop; with it, such a worker is replaced at most
/// once per `min_worker_uptime`. Reloads, crashes and failed probes do not
/// wait for it.
///
/// With `recycle_after_event_timeout`, a worker one of whose events ran past
/// `event_timeout` is replaced the same way, at once (`min_worker_uptime`
/// does not hold it back): the event that timed out may still run in the
/// worker, where nothing can stop it (a WSGI app's view, in a thread), and
/// ending its process is the only way to get that thread back. As gunicorn's
/// `timeout` does, but without failing the worker's other events: they finish
/// (within [`RestartPolicy::terminate_grace`]) while the spare serves the new
/// ones. Counted in
/// [`RestartReasons::recycled_event_timeout`](crate::RestartReasons::recycled_event_timeout).
/// A worker whose loop is blocked is not recycled but found by its liveness
/// probe and restarted, as always.
///
/// # Worker choice
///
/// An event that finds a free slot goes to the worker with the most free
/// slots (join the shortest queue); among equals, to the one that progressed
/// most recently. Free slots alone cannot tell a worker whose loop is running
/// one CPU-bound handler (or whose GIL a WSGI view holds) from one that is
/// only waiting on I/O: both show one event in flight, and a light event sent
/// to the first waits out the whole block. Prompt answers can: an answer that
/// came within `stall_after` of its event's start is progress, and so is a
/// worker's first event after it had none; a later answer (a long event, or a
/// short one that waited behind a block) is not. A worker with events in
/// flight and no progress for `stall_after` is *stalled*, and the next event
/// goes to another worker with a free slot that progressed later (one that is
/// not stalled first), as long as that worker then holds at most three events
/// more than the stalled one, or a sixteenth of `max_connections` if that is
/// more. When no other worker has a free slot but one that progressed later
/// has events in flight (it will free a slot soon), and fewer events wait
/// than it has in flight, the event waits for that slot instead (a WSGI
/// worker whose threads are all busy for a moment, beside one whose GIL a
/// view holds). Once it has waited `stall_after`, it takes the stalled
/// worker's free slot after all, unless such a worker still has events in
/// flight: then it waits for that worker's next free slot up to eight
/// times `stall_after` in all, since the stalled worker's slot would most
/// likely mean waiting out the rest of the stall. The stalled worker gets
/// events again with its next prompt answer, or once its events in flight
/// are done, so no worker is starved, and no event waits more than eight
/// times `stall_after` while a slot is free.
/// [`WorkerStats::stalled`](crate::WorkerStats::stalled) shows it.
///
/// The trade-off: a worker whose events are long but light on its loop (a
/// handler that awaits a slow call) looks stalled too, and when its peers
/// progressed later they get up to that bound of events more than it while
/// it does, and an event may wait up to eight times `stall_after` for their
/// slot while it has a free one. Events that wait for a slot (every slot
/// busy) are not chosen for: the first slot freed is theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Worker processes in the pool.
    pub num_workers: usize,
    /// Connections (slots) per worker. Must be 1 in [`Mode::Sync`].
    pub max_connections: usize,
    /// Async (many connections per worker) or sync (one).
    pub mode: Mode,
    /// How long an event waits for a free slot when every slot is busy, after
    /// which it fails with
    /// [`PoolError::AcquireTimeout`](crate::PoolError::AcquireTimeout) (the
    /// `acquire_timeout` outcome and metric label). Zero means it does not wait
    /// at all. Nuclio calls it `connectionAvailabilityTimeout`;
    /// [`Pool::acquire_within`](crate::Pool::acquire_within) bounds one call.
    #[doc(alias = "connection_availability_timeout")]
    pub acquire_timeout: Duration,
    /// An event running longer fails with
    /// [`PoolError::EventTimeout`](crate::PoolError::EventTimeout) and its
    /// connection is restarted. `None` means no limit.
    pub event_timeout: Option<Duration>,
    /// Tries to re-establish a connection marked for restart before the worker
    /// process is restarted.
    pub reconnect_attempts: u32,
    /// Bound on one connect attempt, and on launching a worker process.
    pub establish_connection_timeout: Duration,
    /// At most this many events wait for a slot; beyond it an event fails at once
    /// with [`PoolError::QueueFull`](crate::PoolError::QueueFull).
    pub max_waiters: Option<usize>,
    /// Backoff and limits for reconnects and worker restarts.
    pub restart: RestartPolicy,
    /// How long a liveness probe may take before the worker is declared
    /// unresponsive. `None` turns liveness probes off altogether (including the
    /// heartbeat). See [Liveness](#liveness).
    pub probe_timeout: Option<Duration>,
    /// How often each running worker is probed when nothing else gave reason
    /// to: the heartbeat that finds a blocked worker when no `event_timeout` is
    /// set. `None` probes only after an event timeout.
    pub probe_interval: Option<Duration>,
    /// Replace a worker process after about this many events (see
    /// [Recycling](#recycling)). `None` never does.
    pub max_events_per_worker: Option<u64>,
    /// Replace a worker process whose resident memory passes this many bytes
    /// (where its launcher can tell: Linux for the process launcher; see
    /// [Recycling](#recycling)). `None` never does.
    pub max_worker_rss: Option<u64>,
    /// The least time a worker process serves before it is recycled for
    /// either bound (see [Recycling](#recycling)). At most a day.
    pub min_worker_uptime: Duration,
    /// Replace a worker process, new before old, once one of its events has
    /// run past `event_timeout` (see [Recycling](#recycling)): for workers
    /// that cannot stop such an event, as a WSGI app's threads cannot.
    pub recycle_after_event_timeout: bool,
    /// A worker with events in flight that has given no prompt answer (one
    /// within this long of its event's start) for this long is stalled, and
    /// passed over for new events while a worker that progressed later has a
    /// free slot (see [Worker choice](#worker-choice)). `None` chooses by
    /// free slots alone.
    pub stall_after: Option<Duration>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            num_workers: 1,
            max_connections: 1000,
            mode: Mode::Async,
            acquire_timeout: Duration::from_secs(10),
            event_timeout: None,
            reconnect_attempts: 3,
            establish_connection_timeout: Duration::from_secs(30),
            max_waiters: None,
            restart: RestartPolicy::default(),
            probe_timeout: Some(DEFAULT_PROBE_TIMEOUT),
            probe_interval: Some(DEFAULT_PROBE_INTERVAL),
            max_events_per_worker: None,
            max_worker_rss: None,
            min_worker_uptime: DEFAULT_MIN_WORKER_UPTIME,
            recycle_after_event_timeout: false,
            stall_after: Some(DEFAULT_STALL_AFTER),
        }
    }
}

/// The most slots a pool may have: 2^20, the default per-process limit on open
/// files in Linux (`fs.nr_open`), since every slot is a connection. The slot
/// table is allocated when the pool is built, so a larger value would only
/// allocate memory that no connection could use (or fail to allocate it).
pub const MAX_CAPACITY: usize = 1 << 20;

/// The default [`PoolConfig::probe_timeout`].
const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The default [`PoolConfig::stall_after`]: well above what a light event
/// holds a Python loop for (tens to hundreds of µs), well below a CPU-bound
/// handler's step or the interpreter's 5 ms GIL switch interval.
const DEFAULT_STALL_AFTER: Duration = Duration::from_millis(1);

/// The default [`PoolConfig::probe_interval`].
const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(5);

impl PoolConfig {
    /// Total slots: `num_workers × max_connections`, the most events in flight at once.
    pub fn capacity(&self) -> usize {
        self.num_workers.saturating_mul(self.max_connections)
    }

    /// The event count at which generation `generation` of worker `worker` is
    /// recycled: `max_events_per_worker` plus a jitter below a tenth of it,
    /// the same for the same worker and generation.
    pub(crate) fn recycle_threshold(&self, worker: usize, generation: u64) -> u64 {
        let Some(max) = self.max_events_per_worker else {
            return u64::MAX;
        };
        let span = max / 10;
        if span == 0 {
            return max;
        }
        // splitmix64: a cheap, well-spread mix of the two numbers.
        let mut z = ((worker as u64) << 40 ^ generation).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        max.saturating_add(z % span)
    }

    /// Checks every field; the error names the first one that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason: String| Err(ConfigError::new(field, reason));
        if self.num_workers == 0 {
            return bad("num_workers", "must be at least 1".into());
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1".into());
        }
        if self.mode == Mode::Sync && self.max_connections != 1 {
            return bad(
                "max_connections",
                format!(
                    "must be 1 in Mode::Sync (got {}); use Mode::Async for more",
                    self.max_connections
                ),
            );
        }
        // The slot table is allocated up front, and every slot is a socket.
        if self.capacity() > MAX_CAPACITY {
            return bad(
                "max_connections",
                format!(
                    "num_workers × max_connections must be at most {MAX_CAPACITY} (got {} × {})",
                    self.num_workers, self.max_connections
                ),
            );
        }
        if self.event_timeout == Some(Duration::ZERO) {
            return bad(
                "event_timeout",
                "must be above zero; use None for no limit".into(),
            );
        }
        if self.reconnect_attempts == 0 {
            return bad("reconnect_attempts", "must be at least 1".into());
        }
        if self.establish_connection_timeout.is_zero() {
            return bad("establish_connection_timeout", "must be above zero".into());
        }
        if self.max_waiters == Some(0) {
            return bad(
                "max_waiters",
                "must be at least 1; use a zero acquire_timeout to never wait".into(),
            );
        }
        if self.probe_timeout == Some(Duration::ZERO) {
            return bad(
                "probe_timeout",
                "must be above zero; use None to turn liveness probes off".into(),
            );
        }
        if self.probe_interval == Some(Duration::ZERO) {
            return bad(
                "probe_interval",
                "must be above zero; use None for no heartbeat".into(),
            );
        }
        if self.probe_interval.is_some() && self.probe_timeout.is_none() {
            return bad(
                "probe_interval",
                "needs a probe_timeout; set probe_interval to None as well to turn probes off"
                    .into(),
            );
        }
        if self.max_events_per_worker == Some(0) {
            return bad(
                "max_events_per_worker",
                "must be at least 1; use None to never recycle".into(),
            );
        }
        if self.max_worker_rss == Some(0) {
            return bad(
                "max_worker_rss",
                "must be above zero bytes; use None for no memory limit".into(),
            );
        }
        if self.min_worker_uptime > MAX_MIN_WORKER_UPTIME {
            return bad(
                "min_worker_uptime",
                format!(
                    "must be at most {MAX_MIN_WORKER_UPTIME:?}; a worker kept past its bounds \
                     longer is not being recycled at all (use None for max_events_per_worker and \
                     max_worker_rss instead)"
                ),
            );
        }
        let policy = &self.restart;
        if policy.max_backoff < policy.initial_backoff {
            return bad(
                "restart.max_backoff",
                format!(
                    "must not be below restart.initial_backoff ({:?})",
                    policy.initial_backoff
                ),
            );
        }
        if policy.restart_window.is_zero() {
            return bad("restart.restart_window", "must be above zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_worker_uptime_defaults_to_a_minute_and_is_bounded_by_a_day() {
        assert_eq!(
            PoolConfig::default().min_worker_uptime,
            Duration::from_secs(60)
        );
        let day = PoolConfig {
            min_worker_uptime: Duration::from_secs(86_400),
            ..PoolConfig::default()
        };
        assert_eq!(day.validate(), Ok(()));
        let longer = PoolConfig {
            min_worker_uptime: Duration::from_secs(86_401),
            ..PoolConfig::default()
        };
        assert_eq!(longer.validate().unwrap_err().field(), "min_worker_uptime");
    }

    #[test]
    fn relaunch_delay_doubles_up_to_the_cap() {
        let policy = RestartPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            ..RestartPolicy::default()
        };
        let delays: Vec<_> = (1..=5)
            .map(|n| policy.relaunch_delay(n).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        assert_eq!(policy.relaunch_delay(200), Duration::from_secs(5));
    }

    #[test]
    fn recycle_thresholds_spread_over_a_tenth_above_the_limit() {
        let config = PoolConfig {
            max_events_per_worker: Some(200),
            ..PoolConfig::default()
        };
        let thresholds: Vec<u64> = (0..4)
            .flat_map(|w| (1..=8).map(move |g| (w, g)))
            .map(|(w, g)| config.recycle_threshold(w, g))
            .collect();
        assert!(thresholds.iter().all(|t| (200..220).contains(t)));
        let distinct: std::collections::HashSet<_> = thresholds.iter().collect();
        assert!(distinct.len() > 8, "{thresholds:?}");
        assert_eq!(
            config.recycle_threshold(1, 2),
            config.recycle_threshold(1, 2)
        );
        assert_eq!(PoolConfig::default().recycle_threshold(0, 1), u64::MAX);
    }

    #[test]
    fn reconnect_delay_is_zero_before_the_first_try_then_doubles() {
        let policy = RestartPolicy::default();
        let delays: Vec<_> = (1..=4)
            .map(|n| policy.reconnect_delay(n).as_millis())
            .collect();
        assert_eq!(delays, [0, 100, 200, 400]);
    }
}
