//! The [`Stats`] snapshot in the Prometheus text exposition format, for a host's
//! `/metrics` endpoint: under the crate's own names ([`render`]) or Nuclio's
//! ([`render_nuclio`]).
//!
//! Rendering a snapshot (rather than keeping a registry) keeps the pool free of
//! a metrics dependency: the counters already live in the pool, and a scrape
//! takes one consistent snapshot of them.

use std::fmt::Write;

use crate::stats::{Stats, WorkerState};

/// The prefix of every metric name.
pub const PREFIX: &str = "async_worker_pool";

/// Renders `stats` as Prometheus text (format version 0.0.4), every metric with
/// its `# HELP` and `# TYPE` lines. Serve it with the content type
/// `text/plain; version=0.0.4`.
pub fn render(stats: &Stats) -> String {
    let mut out = String::with_capacity(4096);
    let mut metric = Metric { out: &mut out };

    metric.header(
        "capacity",
        "gauge",
        "Slots in the pool: workers times connections.",
    );
    metric.sample("capacity", "", stats.capacity);
    metric.header("slots", "gauge", "Slots by state.");
    for (state, count) in [
        ("idle", stats.idle),
        ("busy", stats.busy),
        ("reconnecting", stats.reconnecting),
        ("down", stats.down),
        ("closed", stats.closed),
    ] {
        metric.sample("slots", &format!("state=\"{state}\""), count);
    }
    metric.header("waiters", "gauge", "Events waiting for a free slot.");
    metric.sample("waiters", "", stats.waiters);

    let a = &stats.allocations;
    metric.header(
        "allocations_total",
        "counter",
        "Slot allocations by result, as Nuclio counts worker allocations.",
    );
    for (result, count) in [
        ("success_immediate", a.immediate),
        ("success_after_wait", a.after_wait),
        ("error_timeout", a.timeout),
        ("error_queue_full", a.queue_full),
    ] {
        metric.sample("allocations_total", &format!("result=\"{result}\""), count);
    }
    metric.header(
        "allocation_wait_seconds_sum",
        "counter",
        "Total time waited by allocations that got a slot after waiting.",
    );
    metric.sample(
        "allocation_wait_seconds_sum",
        "",
        a.wait_duration_sum.as_secs_f64(),
    );

    metric.header("events_total", "counter", "Events by outcome.");
    for (result, count) in [
        ("ok", stats.events.ok),
        ("error", stats.events.error),
        ("timeout", stats.events.timed_out),
    ] {
        metric.sample("events_total", &format!("result=\"{result}\""), count);
    }
    metric.header(
        "connection_restarts_total",
        "counter",
        "Connections marked for restart, by whether re-establishing them succeeded.",
    );
    for (result, count) in [
        ("ok", stats.connection_restarts.ok),
        ("failed", stats.connection_restarts.failed),
    ] {
        metric.sample(
            "connection_restarts_total",
            &format!("result=\"{result}\""),
            count,
        );
    }
    metric.header(
        "worker_restarts_total",
        "counter",
        "Worker process relaunches, all workers together.",
    );
    metric.sample("worker_restarts_total", "", stats.worker_restarts);
    metric.header(
        "worker_restart_reasons_total",
        "counter",
        "Why worker processes stopped serving: exited, reconnect_failed, unresponsive \
         (failed a liveness probe), launch_failed, recycled (max events or memory) or \
         reloaded.",
    );
    let reasons = &stats.restart_reasons;
    for (reason, count) in [
        ("exited", reasons.exited),
        ("reconnect_failed", reasons.reconnect_failed),
        ("unresponsive", reasons.unresponsive),
        ("launch_failed", reasons.launch_failed),
        ("recycled", reasons.recycled),
        ("reloaded", reasons.reloaded),
    ] {
        metric.sample(
            "worker_restart_reasons_total",
            &format!("reason=\"{reason}\""),
            count,
        );
    }

    metric.header(
        "worker_state",
        "gauge",
        "1 for each worker's current state, 0 for the others.",
    );
    for worker in &stats.workers {
        for state in [
            WorkerState::Starting,
            WorkerState::Running,
            WorkerState::Suspect,
            WorkerState::Restarting,
            WorkerState::Draining,
            WorkerState::Failed,
            WorkerState::Stopped,
        ] {
            let labels = format!("worker=\"{}\",state=\"{}\"", worker.id, state_name(state));
            metric.sample("worker_state", &labels, u8::from(worker.state == state));
        }
    }
    metric.header(
        "worker_generation",
        "gauge",
        "Each worker's process generation: 1 for the first launch, one more per restart.",
    );
    for worker in &stats.workers {
        let labels = format!("worker=\"{}\"", worker.id);
        metric.sample("worker_generation", &labels, worker.generation);
    }
    metric.header("worker_busy_slots", "gauge", "Busy slots per worker.");
    for worker in &stats.workers {
        let labels = format!("worker=\"{}\"", worker.id);
        metric.sample("worker_busy_slots", &labels, worker.busy);
    }
    out
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
    let mut out = String::with_capacity(2048);
    let mut sample = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = if labels.is_empty() {
                writeln!(out, "{name} {value}")
            } else {
                writeln!(out, "{name}{{{labels}}} {value}")
            };
        }
    };
    let a = &stats.allocations;
    sample(
        "nuclio_processor_worker_allocation_total",
        "counter",
        "Worker (connection) allocations by result.",
        &[
            (r#"result="success_immediate""#, a.immediate.to_string()),
            (r#"result="success_after_wait""#, a.after_wait.to_string()),
            (r#"result="error_timeout""#, a.timeout.to_string()),
            (r#"result="error_queue_full""#, a.queue_full.to_string()),
        ],
    );
    sample(
        "nuclio_processor_worker_allocation_wait_duration_milliseconds_sum",
        "counter",
        "Total time waited by allocations that succeeded after waiting, in milliseconds.",
        &[("", (a.wait_duration_sum.as_secs_f64() * 1000.0).to_string())],
    );
    let available = if stats.capacity == 0 {
        0.0
    } else {
        stats.idle as f64 * 100.0 / stats.capacity as f64
    };
    sample(
        "nuclio_processor_worker_allocation_workers_available_percentage",
        "gauge",
        "Idle connections as a percentage of all connections.",
        &[("", available.to_string())],
    );
    let e = &stats.events;
    sample(
        "nuclio_processor_handled_events_total",
        "counter",
        "Events handled, by result.",
        &[
            (r#"result="success""#, e.ok.to_string()),
            (r#"result="failure""#, (e.error + e.timed_out).to_string()),
        ],
    );
    out
}

fn state_name(state: WorkerState) -> &'static str {
    match state {
        WorkerState::Starting => "starting",
        WorkerState::Running => "running",
        WorkerState::Suspect => "suspect",
        WorkerState::Restarting => "restarting",
        WorkerState::Draining => "draining",
        WorkerState::Failed => "failed",
        WorkerState::Stopped => "stopped",
    }
}

struct Metric<'a> {
    out: &'a mut String,
}

impl Metric<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {PREFIX}_{name} {help}");
        let _ = writeln!(self.out, "# TYPE {PREFIX}_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = if labels.is_empty() {
            writeln!(self.out, "{PREFIX}_{name} {value}")
        } else {
            writeln!(self.out, "{PREFIX}_{name}{{{labels}}} {value}")
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::WorkerId;
    use crate::stats::{AllocationStats, WorkerStats};

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
            connection_restarts: crate::stats::ConnectionRestartStats { ok: 2, failed: 0 },
            worker_restarts: 1,
            restart_reasons: crate::stats::RestartReasons {
                exited: 1,
                unresponsive: 2,
                recycled: 3,
                ..Default::default()
            },
            workers: vec![WorkerStats {
                id: WorkerId::new(0),
                state: WorkerState::Running,
                generation: 2,
                pid: Some(42),
                idle: 2,
                busy: 1,
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
            "async_worker_pool_allocations_total{result=\"success_immediate\"} 7",
            "async_worker_pool_allocations_total{result=\"success_after_wait\"} 2",
            "async_worker_pool_allocations_total{result=\"error_timeout\"} 1",
            "async_worker_pool_allocation_wait_seconds_sum 1.5",
            "async_worker_pool_events_total{result=\"timeout\"} 1",
            "async_worker_pool_connection_restarts_total{result=\"ok\"} 2",
            "async_worker_pool_worker_restarts_total 1",
            "async_worker_pool_worker_restart_reasons_total{reason=\"exited\"} 1",
            "async_worker_pool_worker_restart_reasons_total{reason=\"unresponsive\"} 2",
            "async_worker_pool_worker_restart_reasons_total{reason=\"reconnect_failed\"} 0",
            "async_worker_pool_worker_restart_reasons_total{reason=\"recycled\"} 3",
            "async_worker_pool_worker_restart_reasons_total{reason=\"reloaded\"} 0",
            "async_worker_pool_worker_state{worker=\"0\",state=\"suspect\"} 0",
            "async_worker_pool_worker_state{worker=\"0\",state=\"running\"} 1",
            "async_worker_pool_worker_state{worker=\"0\",state=\"failed\"} 0",
            "async_worker_pool_worker_state{worker=\"0\",state=\"draining\"} 0",
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
        assert_eq!(declared.len(), 12);
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
