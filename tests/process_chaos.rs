//! Chaos under load: real Python workers on real sockets, a steady flow of
//! events, and a fault injector that kills and freezes worker processes while
//! the handlers hang, raise, answer garbage or oversized frames, or close their
//! connections. At the end every event must have exactly one outcome, no event
//! may have read another's answer, the slots must come back, and nothing may be
//! left running.
//!
//! Runs for `CHAOS_SECS` seconds (default 20); the faults are drawn from a seed
//! printed at the start, which `CHAOS_SEED` replays:
//!
//! ```sh
//! CHAOS_SECS=300 CHAOS_SEED=1234 cargo test --test process_chaos -- --nocapture
//! ```
//!
//! `CHAOS_TCP=1` runs it over loopback TCP instead of Unix sockets.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_worker_pool::net::{Event, NetError, Reply};
use async_worker_pool::{EndpointKind, Pool, PoolError, ProcessLauncher, RestartPolicy};
use nix::sys::signal::Signal;
use support::real::{RealPool, is_alive, test_worker};
use support::stats::{until_full, wait_for};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

const WORKERS: usize = 2;
const CONNECTIONS: usize = 200;
/// The offered load, in events per second.
const TARGET_RATE: f64 = 2000.0;
/// The least answered rate accepted (see RELIABILITY.md for measured figures).
const ANSWERED_FLOOR: f64 = 1800.0;
const EVENT_TIMEOUT: Duration = Duration::from_secs(1);
/// Once the faults stop, the slots must all be idle again within this long.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);

/// Panics anywhere in the process, pool tasks included.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// What an event asks the chaos worker to do; see tests/workers/chaos_worker.py.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Act {
    Echo,
    Raise,
    Hang,
    Garbage,
    Huge,
    Close,
}

impl Act {
    fn name(self) -> &'static str {
        match self {
            Act::Echo => "echo",
            Act::Raise => "raise",
            Act::Hang => "hang",
            Act::Garbage => "garbage",
            Act::Huge => "huge",
            Act::Close => "close",
        }
    }

    /// Mostly echo; about 4 % of events carry a handler fault.
    fn draw(rng: &mut fastrand::Rng) -> Self {
        match rng.u32(0..1000) {
            0..=14 => Act::Raise,
            15..=18 => Act::Hang,
            19..=26 => Act::Garbage,
            27..=33 => Act::Huge,
            34..=41 => Act::Close,
            _ => Act::Echo,
        }
    }

    /// The outcome this act produces when no process fault gets in the way.
    fn own_outcome(self) -> &'static str {
        match self {
            Act::Echo => "ok",
            Act::Raise => "raised",
            Act::Hang => "event_timeout",
            Act::Garbage => "protocol_error",
            Act::Huge => "frame_too_large",
            Act::Close => "closed",
        }
    }
}

/// Outcomes any event may get from a killed or frozen worker, or a full pool.
/// A worker frozen longer than the probe timeout is rightly found unresponsive.
const PROCESS_FAULT_OUTCOMES: [&str; 6] = [
    "worker_exited",
    "worker_unresponsive",
    "event_timeout",
    "closed",
    "io_error",
    "acquire_timeout",
];

/// In the multiplexed mode, outcomes any event may also get from another
/// event's fault that takes their shared physical connection down.
const SHARED_CONNECTION_OUTCOMES: [&str; 2] = ["frame_too_large", "closed"];

/// Whether this run uses the multiplexed mode (see `support::real::transport`).
fn multiplexed() -> bool {
    support::real::transport()
        .connections_per_worker()
        .is_some()
}

/// Names the outcome of one event and checks that a response is its own: an
/// echo must carry the event's own body, a raised reply the event's own message.
fn classify(
    body: &str,
    result: Result<Reply, PoolError>,
    pids: &Mutex<HashSet<u32>>,
) -> &'static str {
    match result {
        Ok(Reply::Returned {
            status,
            headers,
            body: echoed,
        }) => {
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                echoed,
                body.as_bytes(),
                "an answer that belongs to another event"
            );
            for (name, value) in headers {
                if name == "x-pid" {
                    pids.lock().unwrap().insert(value.parse().unwrap());
                }
            }
            "ok"
        }
        Ok(Reply::Raised { message, .. }) => {
            assert_eq!(
                message, body,
                "a raised reply that belongs to another event"
            );
            "raised"
        }
        Ok(other) => panic!("{body}: an unknown reply {other:?}"),
        Err(PoolError::EventTimeout { .. }) => "event_timeout",
        Err(PoolError::WorkerExited { .. }) => "worker_exited",
        Err(PoolError::WorkerUnresponsive { .. }) => "worker_unresponsive",
        Err(PoolError::AcquireTimeout { .. }) => "acquire_timeout",
        Err(PoolError::Transport { source, .. }) => match source.downcast_ref::<NetError>() {
            Some(NetError::Protocol(_)) => "protocol_error",
            Some(NetError::FrameTooLarge { .. }) => "frame_too_large",
            Some(NetError::Closed) => "closed",
            Some(NetError::Io(_)) => "io_error",
            _ => panic!("{body}: an unexpected transport error {source:?}"),
        },
        Err(other) => panic!("{body}: an unexpected error {other:?}"),
    }
}

/// Counts one event's outcome, after checking that its act explains it.
fn record(
    outcomes: &mut BTreeMap<&'static str, u64>,
    joined: Result<(Act, &'static str), tokio::task::JoinError>,
) {
    let (act, outcome) = joined.expect("an event task panicked");
    assert!(
        outcome == act.own_outcome()
            || PROCESS_FAULT_OUTCOMES.contains(&outcome)
            || (multiplexed() && SHARED_CONNECTION_OUTCOMES.contains(&outcome)),
        "a {} event ended as {outcome}",
        act.name()
    );
    *outcomes.entry(outcome).or_default() += 1;
}

fn chaos_pool() -> RealPool {
    // Unix sockets by default, as the pool's own default; CHAOS_TCP=1 runs the
    // same chaos over loopback TCP, where a killed worker resets connections.
    let endpoints = if std::env::var_os("CHAOS_TCP").is_some() {
        EndpointKind::Tcp
    } else {
        EndpointKind::Unix
    };
    let launcher = ProcessLauncher::builder("python3")
        .arg(test_worker("chaos_worker.py"))
        .connections(CONNECTIONS)
        .endpoint_kind(endpoints)
        .build()
        .unwrap();
    // Restart quickly and without limit: the injector kills a worker every few
    // seconds on purpose, which the default intensity limit would (rightly) end
    // by leaving it failed.
    let mut policy = RestartPolicy::default();
    policy.initial_backoff = Duration::from_millis(50);
    policy.max_backoff = Duration::from_millis(500);
    policy.stable_after = Duration::from_secs(2);
    policy.max_restarts = 1000;
    policy.terminate_grace = Duration::from_millis(500);
    Pool::builder(
        support::real::transport().max_frame_bytes(1024 * 1024),
        launcher,
    )
    .num_workers(WORKERS)
    .max_connections(CONNECTIONS)
    .event_timeout(EVENT_TIMEOUT)
    .acquire_timeout(Duration::from_secs(2))
    // Longer than the longest SIGSTOP, so that a frozen worker's reconnects
    // wait for it instead of failing.
    .establish_connection_timeout(Duration::from_secs(5))
    .restart_policy(policy)
    .build()
    .unwrap()
}

/// Sends `signal`; the process may already be gone (the pool restarted it).
fn try_signal(pid: u32, signal: Signal) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).is_ok()
}

/// Kills or freezes a random worker every 1 to 3 s until `until`; returns how
/// many of each it did. A frozen worker stays stopped for 1.5 to 2.5 s, longer
/// than the event timeout, and is always continued before the next fault.
async fn inject_process_faults(
    pool: RealPool,
    mut rng: fastrand::Rng,
    until: Instant,
    pids: Arc<Mutex<HashSet<u32>>>,
) -> BTreeMap<&'static str, u64> {
    let mut done = BTreeMap::from([("kill", 0), ("stop", 0)]);
    loop {
        sleep(Duration::from_millis(rng.u64(1000..3000))).await;
        if Instant::now() >= until {
            return done;
        }
        let worker = rng.usize(..WORKERS);
        let Some(pid) = pool.stats().workers[worker].pid else {
            continue; // being relaunched; try again later
        };
        pids.lock().unwrap().insert(pid);
        if rng.bool() {
            if try_signal(pid, Signal::SIGKILL) {
                *done.get_mut("kill").unwrap() += 1;
            }
        } else if try_signal(pid, Signal::SIGSTOP) {
            *done.get_mut("stop").unwrap() += 1;
            sleep(Duration::from_millis(rng.u64(1500..2500))).await;
            try_signal(pid, Signal::SIGCONT);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_lost_under_load_while_workers_are_killed_frozen_and_misbehave() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, SeqCst);
        default_hook(info);
    }));
    let secs: u64 = std::env::var("CHAOS_SECS").map_or(20, |s| s.parse().expect("CHAOS_SECS"));
    let seed: u64 = std::env::var("CHAOS_SEED")
        .map_or_else(|_| fastrand::u64(..), |s| s.parse().expect("CHAOS_SEED"));
    println!("chaos: seed {seed} (replay with CHAOS_SEED={seed}), {secs} s");
    let mut rng = fastrand::Rng::with_seed(seed);
    let duration = Duration::from_secs(secs);

    let pool = chaos_pool();
    let first = until_full(&pool).await;
    let pids: Arc<Mutex<HashSet<u32>>> = Arc::default();
    pids.lock()
        .unwrap()
        .extend(first.workers.iter().filter_map(|w| w.pid));
    // Every process that ever served, also the short-lived ones between replies.
    let watcher = tokio::spawn({
        let (pool, pids) = (pool.clone(), pids.clone());
        async move {
            loop {
                let seen = pool
                    .stats()
                    .workers
                    .iter()
                    .filter_map(|w| w.pid)
                    .collect::<Vec<_>>();
                pids.lock().unwrap().extend(seen);
                sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let started = Instant::now();
    let until = started + duration;
    let injector = tokio::spawn(inject_process_faults(
        pool.clone(),
        fastrand::Rng::with_seed(rng.u64(..)),
        until,
        pids.clone(),
    ));

    // Open loop: events go out at the target rate whatever the answers do.
    let mut events = JoinSet::new();
    let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut acts: BTreeMap<Act, u64> = BTreeMap::new();
    let mut sent: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while Instant::now() < until {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * TARGET_RATE) as u64;
        while sent < due {
            let act = Act::draw(&mut rng);
            *acts.entry(act).or_default() += 1;
            let body = format!("id={sent};act={}", act.name());
            let (pool, pids) = (pool.clone(), pids.clone());
            events.spawn(async move {
                let result = pool.dispatch(Event::plain(body.clone())).await;
                (act, classify(&body, result, &pids))
            });
            sent += 1;
        }
        while let Some(joined) = events.try_join_next() {
            record(&mut outcomes, joined);
        }
    }
    let offered_secs = started.elapsed().as_secs_f64();
    // Answered while the load ran, so that the tail of timeouts below does not
    // dilute the rate.
    let answered_in_time: u64 = outcomes
        .iter()
        .filter(|&(&kind, _)| kind != "acquire_timeout")
        .map(|(_, n)| n)
        .sum();
    let process_faults = injector.await.unwrap();
    // The injector continues its last frozen worker before it returns: from
    // here on there are no faults.
    let faults_stopped = Instant::now();
    // Each event ends within the acquire timeout plus the event timeout plus
    // the 200 ms exit notice; the bound is generous for a loaded machine.
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(joined) = events.join_next().await {
            record(&mut outcomes, joined);
        }
    })
    .await
    .expect("every event ends");

    // Every slot must come back: the recovery time counts from the end of the
    // faults, so it includes the hung events' timeouts and the last relaunch.
    let recovered = wait_for(
        &pool,
        "every slot idle after the faults",
        RECOVERY_BOUND.saturating_sub(faults_stopped.elapsed()),
        |s| s.idle == s.capacity && s.waiters == 0,
    )
    .await;
    let recovery = faults_stopped.elapsed();
    assert_eq!(
        recovered.idle
            + recovered.busy
            + recovered.reconnecting
            + recovered.down
            + recovered.closed,
        recovered.capacity
    );
    // And serve: a burst of clean events, each with its own answer.
    let mut clean = JoinSet::new();
    for n in 0..CONNECTIONS as u64 {
        let pool = pool.clone();
        let pids = pids.clone();
        clean.spawn(async move {
            let body = format!("id=clean{n};act=echo");
            classify(
                &body,
                pool.dispatch(Event::plain(body.clone())).await,
                &pids,
            )
        });
    }
    while let Some(joined) = clean.join_next().await {
        assert_eq!(
            joined.unwrap(),
            "ok",
            "a clean event after the recovery failed"
        );
    }

    // Exactly one outcome per event, and the pool's own counters agree.
    let total: u64 = outcomes.values().sum();
    assert_eq!(
        total, sent,
        "events without exactly one outcome: {outcomes:?}"
    );
    let stats = pool.stats();
    let clean_events = CONNECTIONS as u64;
    assert_eq!(stats.allocations.count, sent + clean_events);
    assert_eq!(
        stats.events.ok + stats.events.error + stats.events.timed_out + stats.allocations.timeout,
        sent + clean_events,
        "{stats:?}"
    );
    assert_eq!(
        stats.events.ok,
        outcomes.get("ok").copied().unwrap_or(0)
            + outcomes.get("raised").copied().unwrap_or(0)
            + clean_events
    );
    assert_eq!(
        stats.events.timed_out,
        outcomes.get("event_timeout").copied().unwrap_or(0)
    );
    assert_eq!(
        stats.allocations.timeout,
        outcomes.get("acquire_timeout").copied().unwrap_or(0)
    );
    // No false positive: hung handlers (whose loops run) are probed after
    // their event timeouts and must pass; only a SIGSTOP (a truly frozen
    // process, for longer than the probe timeout) may cost a worker its
    // process, once per freeze at most.
    assert!(
        stats.restart_reasons.unresponsive <= process_faults["stop"],
        "{} workers found unresponsive, but only {} were frozen: {stats:#?}",
        stats.restart_reasons.unresponsive,
        process_faults["stop"]
    );

    pool.shutdown(Duration::from_secs(2)).await;
    watcher.abort();
    let _ = watcher.await;
    drop(pool);

    // Nothing left: no worker process, no task.
    let pids: Vec<u32> = pids.lock().unwrap().iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&pid| is_alive(pid)).collect();
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        if alive.is_empty() && tasks == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left over after shutdown: worker processes {alive:?}, {tasks} tasks"
        );
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(PANICS.load(SeqCst), 0, "something panicked");

    let offered = sent as f64 / offered_secs;
    let answered = answered_in_time as f64 / offered_secs;
    let list = |map: &BTreeMap<&str, u64>| {
        map.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut faults = process_faults.clone();
    for (act, n) in &acts {
        if *act != Act::Echo {
            faults.insert(act.name(), *n);
        }
    }
    println!(
        "chaos summary: seed={seed} secs={secs} events={sent} offered={offered:.0}/s \
         answered={answered:.0}/s outcomes[{}] faults[{}] restarts[worker={} connection={} \
         reconnect_failed={} unresponsive={} exited={}] processes={} recovered_in={:.0?}",
        list(&outcomes),
        list(&faults),
        stats.worker_restarts,
        stats.connection_restarts.ok,
        stats.connection_restarts.failed,
        stats.restart_reasons.unresponsive,
        stats.restart_reasons.exited,
        pids.len(),
        recovery,
    );
    assert!(
        offered >= 0.95 * TARGET_RATE,
        "offered only {offered:.0} events/s"
    );
    assert!(
        answered >= ANSWERED_FLOOR,
        "answered only {answered:.0} events/s"
    );
    assert!(
        process_faults.values().sum::<u64>() >= (secs / 8).max(1),
        "too few process faults: {process_faults:?}"
    );
}
