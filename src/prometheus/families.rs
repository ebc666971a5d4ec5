//! What the metrics are: families of samples built from one [`Stats`]
//! snapshot, under the crate's names and under Nuclio's. Encoders (text, the
//! `prometheus_client` collector) only write these out.

use std::fmt;

use super::PREFIX;
use crate::stats::{Stats, WorkerState};

/// Whether a family only grows, or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Counter,
    Gauge,
}

/// A sample's value: a count, or a float (seconds, a percentage).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Value {
    Count(u64),
    Float(f64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(n) => n.fmt(f),
            Self::Float(x) => x.fmt(f),
        }
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Self::Count(n)
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Self {
        Self::Count(n as u64)
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Self::Float(x)
    }
}

/// One sample: its labels, in order, and its value.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Sample {
    pub(super) labels: Vec<(&'static str, String)>,
    pub(super) value: Value,
}

/// One metric family, named as in the text format (counters with their
/// `_total` where they have one).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Family {
    pub(super) name: String,
    pub(super) help: &'static str,
    pub(super) kind: Kind,
    pub(super) samples: Vec<Sample>,
}

impl Family {
    fn new(name: String, kind: Kind, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    /// A family under the crate's prefix.
    fn pool(name: &str, kind: Kind, help: &'static str) -> Self {
        Self::new(format!("{PREFIX}_{name}"), kind, help)
    }

    fn sample(mut self, value: impl Into<Value>) -> Self {
        self.samples.push(Sample {
            labels: Vec::new(),
            value: value.into(),
        });
        self
    }

    /// One sample per `(label value, value)`, under the label `key`.
    fn by<V: Into<Value>>(
        mut self,
        key: &'static str,
        samples: impl IntoIterator<Item = (String, V)>,
    ) -> Self {
        for (label, value) in samples {
            self.samples.push(Sample {
                labels: vec![(key, label)],
                value: value.into(),
            });
        }
        self
    }
}

/// Label values from fixed names.
fn named<V>(pairs: impl IntoIterator<Item = (&'static str, V)>) -> Vec<(String, V)> {
    pairs
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

/// Allocations by result: the successes under Nuclio's labels, the failures
/// under the names of their [`PoolError::kind`](crate::PoolError::kind)
/// (`acquire_timeout`, `queue_full`), as the event span's outcome has them.
fn allocation_results(a: &crate::stats::AllocationStats) -> Vec<(String, u64)> {
    named([
        ("success_immediate", a.immediate),
        ("success_after_wait", a.after_wait),
        ("acquire_timeout", a.timeout),
        ("queue_full", a.queue_full),
    ])
}

/// Allocations by result under Nuclio's own labels, kept as they are so that
/// dashboards and alerts built for Nuclio's processor work unchanged.
fn nuclio_allocation_results(a: &crate::stats::AllocationStats) -> Vec<(String, u64)> {
    named([
        ("success_immediate", a.immediate),
        ("success_after_wait", a.after_wait),
        ("error_timeout", a.timeout),
        ("error_queue_full", a.queue_full),
    ])
}

/// The crate's own metrics.
pub(super) fn pool(stats: &Stats) -> Vec<Family> {
    use Kind::{Counter, Gauge};
    let a = &stats.allocations;
    let reasons = &stats.restart_reasons;
    let mut families = vec![
        Family::pool(
            "capacity",
            Gauge,
            "Slots in the pool: workers times connections.",
        )
        .sample(stats.capacity),
        Family::pool("slots", Gauge, "Slots by state.").by(
            "state",
            named([
                ("idle", stats.idle),
                ("busy", stats.busy),
                ("reconnecting", stats.reconnecting),
                ("down", stats.down),
                ("closed", stats.closed),
            ]),
        ),
        Family::pool("waiters", Gauge, "Events waiting for a free slot.").sample(stats.waiters),
        Family::pool(
            "allocations_total",
            Counter,
            "Slot allocations by result, as Nuclio counts worker allocations.",
        )
        .by("result", allocation_results(a)),
        Family::pool(
            "allocation_wait_seconds_sum",
            Counter,
            "Total time waited by allocations that got a slot after waiting.",
        )
        .sample(a.wait_duration_sum.as_secs_f64()),
        Family::pool("events_total", Counter, "Events by outcome.").by(
            "result",
            named([
                ("ok", stats.events.ok),
                ("error", stats.events.error),
                ("timeout", stats.events.timed_out),
            ]),
        ),
        Family::pool(
            "websockets_open",
            Gauge,
            "WebSocket exchanges open now; each holds one busy slot.",
        )
        .sample(stats.websockets.open),
        Family::pool(
            "websockets_opened_total",
            Counter,
            "WebSocket exchanges opened.",
        )
        .sample(stats.websockets.opened),
        Family::pool(
            "websocket_messages_total",
            Counter,
            "WebSocket messages by direction: from clients to the workers' apps, and back.",
        )
        .by(
            "direction",
            named([
                ("to_worker", stats.websockets.messages_to_worker),
                ("from_worker", stats.websockets.messages_from_worker),
            ]),
        ),
        Family::pool(
            "connection_restarts_total",
            Counter,
            "Connections marked for restart, by whether re-establishing them succeeded.",
        )
        .by(
            "result",
            named([
                ("ok", stats.connection_restarts.ok),
                ("failed", stats.connection_restarts.failed),
            ]),
        ),
        Family::pool(
            "worker_restarts_total",
            Counter,
            "Worker process relaunches, all workers together.",
        )
        .sample(stats.worker_restarts),
        Family::pool(
            "worker_restart_reasons_total",
            Counter,
            "Why worker processes stopped serving: exited, reconnect_failed, unresponsive \
             (failed a liveness probe), launch_failed, recycled_events (served max events), \
             recycled_rss (passed the memory bound), reloaded or recycled_event_timeout \
             (an event ran past its timeout).",
        )
        .by(
            "reason",
            named([
                ("exited", reasons.exited),
                ("reconnect_failed", reasons.reconnect_failed),
                ("unresponsive", reasons.unresponsive),
                ("launch_failed", reasons.launch_failed),
                ("recycled_events", reasons.recycled_events),
                ("recycled_rss", reasons.recycled_rss),
                ("reloaded", reasons.reloaded),
                ("recycled_event_timeout", reasons.recycled_event_timeout),
            ]),
        ),
    ];
    let mut states = Family::pool(
        "worker_state",
        Gauge,
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
            states.samples.push(Sample {
                labels: vec![
                    ("worker", worker.id.to_string()),
                    ("state", state_name(state).to_owned()),
                ],
                value: u64::from(worker.state == state).into(),
            });
        }
    }
    families.push(states);
    let per_worker = |value: fn(&crate::WorkerStats) -> u64| {
        stats
            .workers
            .iter()
            .map(move |worker| (worker.id.to_string(), value(worker)))
    };
    families.push(
        Family::pool(
            "worker_generation",
            Gauge,
            "Each worker's process generation: 1 for the first launch, one more per restart.",
        )
        .by("worker", per_worker(|w| w.generation)),
    );
    families.push(
        Family::pool("worker_busy_slots", Gauge, "Busy slots per worker.")
            .by("worker", per_worker(|w| w.busy as u64)),
    );
    families.push(
        Family::pool(
            "worker_stalled",
            Gauge,
            "1 while a worker with events in flight has answered none for stall_after and gets no new events.",
        )
        .by("worker", per_worker(|w| u64::from(w.stalled))),
    );
    families
}

/// The same snapshot under the names of Nuclio's processor.
pub(super) fn nuclio(stats: &Stats) -> Vec<Family> {
    use Kind::{Counter, Gauge};
    let a = &stats.allocations;
    let e = &stats.events;
    let available = if stats.capacity == 0 {
        0.0
    } else {
        stats.idle as f64 * 100.0 / stats.capacity as f64
    };
    vec![
        Family::new(
            "nuclio_processor_worker_allocation_total".into(),
            Counter,
            "Worker (connection) allocations by result.",
        )
        .by("result", nuclio_allocation_results(a)),
        Family::new(
            "nuclio_processor_worker_allocation_wait_duration_milliseconds_sum".into(),
            Counter,
            "Total time waited by allocations that succeeded after waiting, in milliseconds.",
        )
        .sample(a.wait_duration_sum.as_secs_f64() * 1000.0),
        Family::new(
            "nuclio_processor_worker_allocation_workers_available_percentage".into(),
            Gauge,
            "Idle connections as a percentage of all connections.",
        )
        .sample(available),
        Family::new(
            "nuclio_processor_handled_events_total".into(),
            Counter,
            "Events handled, by result.",
        )
        .by(
            "result",
            named([("success", e.ok), ("failure", e.error + e.timed_out)]),
        ),
    ]
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
