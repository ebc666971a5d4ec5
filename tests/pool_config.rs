//! Issue item 1: defaults, Sync mode, and invalid configurations refused at build.

mod support;

use std::time::Duration;

use async_worker_pool::{BuildError, Mode, Pool, PoolConfig, RestartPolicy};
use support::{FakeLauncher, MemTransport, harness};

#[test]
fn defaults_match_nuclio_and_the_design() {
    let config = PoolConfig::default();
    assert_eq!(config.num_workers, 1);
    assert_eq!(config.max_connections, 1000);
    assert_eq!(config.mode, Mode::Async);
    assert_eq!(config.acquire_timeout, Duration::from_secs(10));
    assert_eq!(config.event_timeout, None);
    assert_eq!(config.reconnect_attempts, 3);
    assert_eq!(config.establish_connection_timeout, Duration::from_secs(30));
    assert_eq!(config.max_waiters, None);
    assert_eq!(config.probe_timeout, Some(Duration::from_secs(1)));
    assert_eq!(config.probe_interval, Some(Duration::from_secs(5)));
    assert_eq!(config.max_events_per_worker, None);
    assert_eq!(config.max_worker_rss, None);
    assert_eq!(config.capacity(), 1000);
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn restart_policy_defaults_are_the_documented_ones() {
    let policy = RestartPolicy::default();
    assert_eq!(policy.initial_backoff, Duration::from_millis(100));
    assert_eq!(policy.max_backoff, Duration::from_secs(30));
    assert_eq!(policy.stable_after, Duration::from_secs(60));
    assert_eq!(policy.max_restarts, 5);
    assert_eq!(policy.restart_window, Duration::from_secs(60));
    assert_eq!(policy.terminate_grace, Duration::from_secs(5));
    assert_eq!(policy.unresponsive_grace, Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn sync_mode_gives_one_connection_per_worker() {
    let h = harness(|b| b.num_workers(3).mode(Mode::Sync)).await;
    let stats = h.pool.stats();
    assert_eq!(stats.capacity, 3);
    assert_eq!(stats.idle, 3);
    assert_eq!(h.pool.config().max_connections, 1);
    for worker in &stats.workers {
        assert_eq!(worker.idle, 1);
    }
}

#[tokio::test]
async fn sync_mode_with_more_than_one_connection_is_refused() {
    let mut config = PoolConfig::default();
    config.mode = Mode::Sync;
    config.max_connections = 2;
    assert_refused(config, "max_connections");
}

/// Makes one field of a config invalid.
type Breaker = Box<dyn Fn(&mut PoolConfig)>;

#[tokio::test]
async fn invalid_configs_fail_at_build_naming_the_field() {
    let cases: Vec<(&str, Breaker)> = vec![
        ("num_workers", Box::new(|c| c.num_workers = 0)),
        ("max_connections", Box::new(|c| c.max_connections = 0)),
        (
            "event_timeout",
            Box::new(|c| c.event_timeout = Some(Duration::ZERO)),
        ),
        ("reconnect_attempts", Box::new(|c| c.reconnect_attempts = 0)),
        (
            "establish_connection_timeout",
            Box::new(|c| c.establish_connection_timeout = Duration::ZERO),
        ),
        ("max_waiters", Box::new(|c| c.max_waiters = Some(0))),
        (
            "probe_timeout",
            Box::new(|c| c.probe_timeout = Some(Duration::ZERO)),
        ),
        (
            "probe_interval",
            Box::new(|c| c.probe_interval = Some(Duration::ZERO)),
        ),
        // A heartbeat with probes turned off is a contradiction.
        ("probe_interval", Box::new(|c| c.probe_timeout = None)),
        (
            "restart.max_backoff",
            Box::new(|c| c.restart.max_backoff = Duration::from_millis(1)),
        ),
        (
            "restart.restart_window",
            Box::new(|c| c.restart.restart_window = Duration::ZERO),
        ),
        (
            "max_connections",
            Box::new(|c| {
                c.num_workers = 1 << 16;
                c.max_connections = 1 << 16;
            }),
        ),
        (
            "max_events_per_worker",
            Box::new(|c| c.max_events_per_worker = Some(0)),
        ),
        ("max_worker_rss", Box::new(|c| c.max_worker_rss = Some(0))),
        // Nuclio's maxConnectionsNumber of 4e9 would allocate gigabytes.
        (
            "max_connections",
            Box::new(|c| c.max_connections = 4_000_000_000),
        ),
    ];
    for (field, break_it) in cases {
        let mut config = PoolConfig::default();
        break_it(&mut config);
        assert_refused(config, field);
    }
}

#[tokio::test(start_paused = true)]
async fn durations_too_long_to_represent_neither_panic_nor_fire() {
    let h = harness(|b| {
        let mut policy = RestartPolicy::default();
        policy.max_backoff = Duration::MAX;
        policy.stable_after = Duration::MAX;
        policy.restart_window = Duration::MAX;
        policy.terminate_grace = Duration::MAX;
        policy.unresponsive_grace = Duration::MAX;
        policy.reconnect_backoff = Duration::MAX;
        b.max_connections(2)
            .acquire_timeout(Duration::MAX)
            .event_timeout(Duration::MAX)
            .establish_connection_timeout(Duration::MAX)
            .probe_timeout(Duration::MAX)
            .probe_interval(Duration::MAX)
            .restart_policy(policy)
    })
    .await;
    let resp = h.pool.dispatch(support::Req::now(1)).await.unwrap();
    assert_eq!(resp.id, 1);
    tokio::time::sleep(Duration::from_secs(86_400)).await;
    assert_eq!(h.pool.stats().worker_restarts, 0);
    h.pool.shutdown(Duration::ZERO).await;
}

#[tokio::test(start_paused = true)]
async fn a_zero_availability_timeout_is_valid_and_means_do_not_wait() {
    let h = harness(|b| b.max_connections(1).acquire_timeout(Duration::ZERO)).await;
    let _held = h.pool.acquire().await.expect("the one slot is free");
    let error = h.pool.acquire().await.expect_err("no slot is free");
    assert!(
        matches!(error, async_worker_pool::PoolError::AcquireTimeout { waited } if waited.is_zero()),
        "{error:?}"
    );
}

#[test]
fn building_outside_a_runtime_is_a_typed_error() {
    let result = Pool::builder(MemTransport::default(), FakeLauncher::default()).build();
    assert!(matches!(result, Err(BuildError::NoRuntime)));
}

fn assert_refused(config: PoolConfig, field: &str) {
    let result = Pool::builder(MemTransport::default(), FakeLauncher::default())
        .config(config)
        .build();
    match result {
        Err(BuildError::Config(error)) => {
            assert_eq!(error.field(), field, "{error}");
            assert!(error.to_string().contains(field), "{error}");
        }
        Err(other) => panic!("expected a config error naming {field}, got {other}"),
        Ok(_) => panic!("expected a config error naming {field}, but the pool was built"),
    }
}
