//! The [`Stats`] snapshot as Prometheus metrics, for a host's `/metrics`
//! endpoint: under the crate's own names ([`render`]) or Nuclio's
//! ([`render_nuclio`]), as text; or, with the `prometheus-client` feature, as a
//! collector registered in the host's own `prometheus_client` registry beside
//! its other metrics (`PoolCollector`).
//!
//! The metrics are described once, as families built from one snapshot
//! (`families.rs`); the text writer and the collector only encode them. A
//! scrape takes one consistent snapshot, and the pool keeps its counters
//! itself, so it needs no metrics dependency of its own.

#[cfg(feature = "prometheus-client")]
mod collector;
mod families;
mod text;

use crate::stats::Stats;

#[cfg(feature = "prometheus-client")]
pub use collector::PoolCollector;

/// The prefix of every metric name.
pub const PREFIX: &str = "async_worker_pool";

/// Renders `stats` as Prometheus text (format version 0.0.4), every metric with
/// its `# HELP` and `# TYPE` lines. Serve it with the content type
/// `text/plain; version=0.0.4`.
///
/// `async_worker_pool_allocations_total` counts by `result`:
/// `success_immediate`, `success_after_wait`, and the failures under their
/// [`PoolError::kind`](crate::PoolError::kind): `acquire_timeout` (after
/// `acquire_timeout`, or a call's own bound) and `queue_full`.
pub fn render(stats: &Stats) -> String {
    text::write(&families::pool(stats))
}

/// Renders `stats` as Prometheus text under the metric names of Nuclio's
/// processor, for dashboards and alerts built for Nuclio:
///
/// | metric | from |
/// |---|---|
/// | `nuclio_processor_worker_allocation_total{result="success_immediate"}` | allocations that found a free slot |
/// | `…{result="success_after_wait"}` | allocations that waited |
/// | `…{result="error_timeout"}` | allocations that timed out |
/// | `…{result="error_queue_full"}` | refused by `max_waiters` (not in Nuclio) |
/// | `nuclio_processor_worker_allocation_wait_duration_milliseconds_sum` | time waited by `success_after_wait` |
/// | `nuclio_processor_worker_allocation_workers_available_percentage` | idle slots as a percentage of all |
/// | `nuclio_processor_handled_events_total{result="success"}` | events answered by a worker |
/// | `…{result="failure"}` | events that failed, timeouts included |
///
/// Nuclio adds labels for the function and trigger; a host that wants them
/// relabels at scrape time. The crate's own names come from [`render`]; a
/// `/metrics` endpoint may serve both.
pub fn render_nuclio(stats: &Stats) -> String {
    text::write(&families::nuclio(stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{AllocationStats, WorkerState, WorkerStats};
    use crate::worker::WorkerId;

    fn sample_stats() -> Stats {
        Stats {
            capacity: 4,
            idle: 2,
            busy: 1,
            reconnecting: 1,
            down: 0,
            closed: 0,
            waiters: 3,
            allocations: AllocationStats {
                count: 10,
                immediate: 7,
                after_wait: 2,
                timeout: 1,
                queue_full: 0,
                wait_duration_sum: std::time::Duration::from_millis(1500),
            },
            events: crate::stats::EventStats {
                ok: 8,
                error: 1,
                timed_out: 1,
            },
            websockets: crate::stats::WebSocketStats {
                open: 2,
                opened: 5,
                messages_to_worker: 40,
                messages_from_worker: 41,
            },
            connection_restarts: crate::stats::ConnectionRestartStats { ok: 2, failed: 0 },
            worker_restarts: 1,
            restart_reasons: crate::stats::RestartReasons {
                exited: 1,
                unresponsive: 2,
                recycled_events: 3,
                recycled_rss: 4,
                ..Default::default()
            },
            workers: vec![WorkerStats {
                id: WorkerId::new(0),
                state: WorkerState::Running,
                generation: 2,
                pid: Some(42),
                idle: 2,
                busy: 1,
                stalled: true,
                restarts: 1,
                last_error: None,
            }],
        }
    }

    #[test]
    fn renders_every_counter_with_its_value() {
        let text = render(&sample_stats());
        for line in [
            "async_worker_pool_capacity 4",
            "async_worker_pool_slots{state=\"reconnecting\"} 1",
            "async_worker_pool_waiters 3",
            "async_worker_pool_worker_stalled{worker=\"0\"} 1",
            "async_worker_pool_allocations_total{result=\"success_immediate\"} 7",
            "async_worker_pool_allocations_total{result=\"success_after_wait\"} 2",
            "async_worker_pool_allocations_total{result=\"acquire_timeout\"} 1",
            "async_worker_pool_allocation_wait_seconds_sum 1.5",
            "async_worker_pool_events_total{result=\"timeout\"} 1",
            "async_worker_pool_websockets_open 2",
            "async_worker_pool_websockets_opened_total 5",
            "async_worker_pool_websocket_messages_total{direction=\"to_worker\"} 40",
            "async_worker_pool_websocket_messages_total{direction=\"from_worker\"} 41",
            "async_worker_pool_connection_restarts_total{result=\"ok\"} 2",
            "async_worker_pool_worker_restarts_total 1",
            "async_worker_pool_worker_restart_reasons_total{reason=\"exited\"} 1",
            "async_worker_pool_worker_restart_reasons_total{reason=\"unresponsive\"} 2",
            "async_worker_pool_worker_restart_reasons_total{reason=\"reconnect_failed\"} 0",
            "async_worker_pool_worker_restart_reasons_total{reason=\"recycled_events\"} 3",
            "async_worker_pool_worker_restart_reasons_total{reason=\"recycled_rss\"} 4",
            "async_worker_pool_worker_restart_reasons_total{reason=\"reloaded\"} 0",
            "async_worker_pool_worker_restart_reasons_total{reason=\"recycled_event_timeout\"} 0",
            "async_worker_pool_worker_state{worker=\"0\",state=\"suspect\"} 0",
            "async_worker_pool_worker_state{worker=\"0\",state=\"draining\"} 0",
            "async_worker_pool_worker_state{worker=\"0\",state=\"running\"} 1",
            "async_worker_pool_worker_state{worker=\"0\",state=\"failed\"} 0",
            "async_worker_pool_worker_generation{worker=\"0\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn every_sample_follows_its_help_and_type_lines() {
        let text = render(&sample_stats());
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(declared.last().map(String::as_str), Some(name), "{line}");
            }
        }
        assert_eq!(declared.len(), 16);
    }

    #[test]
    fn renders_nuclios_names() {
        let text = render_nuclio(&sample_stats());
        for line in [
            "# TYPE nuclio_processor_worker_allocation_total counter",
            "nuclio_processor_worker_allocation_total{result=\"success_immediate\"} 7",
            "nuclio_processor_worker_allocation_total{result=\"success_after_wait\"} 2",
            "nuclio_processor_worker_allocation_total{result=\"error_timeout\"} 1",
            "nuclio_processor_worker_allocation_wait_duration_milliseconds_sum 1500",
            "nuclio_processor_worker_allocation_workers_available_percentage 50",
            "nuclio_processor_handled_events_total{result=\"success\"} 8",
            "nuclio_processor_handled_events_total{result=\"failure\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
