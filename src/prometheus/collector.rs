//! [`PoolCollector`]: the pool's metrics in a host's own `prometheus_client`
//! registry (feature `prometheus-client`).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::families::{self, Family, Kind, Value};
use crate::api::AsyncWorkerPool;
use crate::stats::Stats;

/// A `prometheus_client` [`Collector`] that takes one [`Stats`] snapshot per
/// scrape, so the pool's metrics sit in the host's registry beside its own:
///
/// ```
/// # async fn demo(pool: async_worker_pool::Pool<async_worker_pool::net::SocketTransport>) {
/// use async_worker_pool::prometheus::PoolCollector;
/// let mut registry = prometheus_client::registry::Registry::default();
/// registry.register_collector(Box::new(PoolCollector::new(pool)));
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// # }
/// ```
///
/// The families are those of [`render`](super::render) (and, with
/// [`with_nuclio_names`](Self::with_nuclio_names), of
/// [`render_nuclio`](super::render_nuclio)), named by OpenMetrics' rules: the
/// encoder adds `_total` to every counter, so a counter that [`render`](super::render)
/// names without it (`async_worker_pool_allocation_wait_seconds_sum`) gains it
/// here.
pub struct PoolCollector {
    stats: Box<dyn Fn() -> Stats + Send + Sync>,
    nuclio_names: bool,
}

impl PoolCollector {
    /// A collector for `pool` (a [`Pool`](crate::Pool), a clone of one, or any
    /// other [`AsyncWorkerPool`]).
    pub fn new<P: AsyncWorkerPool + 'static>(pool: P) -> Self {
        Self {
            stats: Box::new(move || pool.stats()),
            nuclio_names: false,
        }
    }

    /// A collector for whatever `stats` returns on each scrape: for a host that
    /// aggregates or filters snapshots itself.
    pub fn from_fn(stats: impl Fn() -> Stats + Send + Sync + 'static) -> Self {
        Self {
            stats: Box::new(stats),
            nuclio_names: false,
        }
    }

    /// Also collects the snapshot under Nuclio's processor metric names.
    #[must_use]
    pub fn with_nuclio_names(mut self) -> Self {
        self.nuclio_names = true;
        self
    }
}

impl fmt::Debug for PoolCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolCollector")
            .field("nuclio_names", &self.nuclio_names)
            .finish_non_exhaustive()
    }
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stats = (self.stats)();
        let mut all = families::pool(&stats);
        if self.nuclio_names {
            all.extend(families::nuclio(&stats));
        }
        for family in &all {
            encode_family(&mut encoder, family)?;
        }
        Ok(())
    }
}

fn encode_family(encoder: &mut DescriptorEncoder<'_>, family: &Family) -> fmt::Result {
    let (name, metric_type) = match family.kind {
        // OpenMetrics' encoder writes the `_total` itself.
        Kind::Counter => (
            family.name.strip_suffix("_total").unwrap_or(&family.name),
            MetricType::Counter,
        ),
        Kind::Gauge => (family.name.as_str(), MetricType::Gauge),
    };
    let mut metric = encoder.encode_descriptor(name, family.help, None, metric_type)?;
    for sample in &family.samples {
        let labels: Vec<(&str, &str)> = sample
            .labels
            .iter()
            .map(|(key, value)| (*key, value.as_str()))
            .collect();
        encode_value(metric.encode_family(&labels)?, family.kind, sample.value)?;
    }
    Ok(())
}

fn encode_value(encoder: MetricEncoder<'_>, kind: Kind, value: Value) -> fmt::Result {
    match (kind, value) {
        (Kind::Counter, Value::Count(n)) => ConstCounter::new(n).encode(encoder),
        (Kind::Counter, Value::Float(x)) => ConstCounter::new(x).encode(encoder),
        (Kind::Gauge, Value::Count(n)) => {
            ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(encoder)
        }
        (Kind::Gauge, Value::Float(x)) => ConstGauge::new(x).encode(encoder),
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::stats::{WorkerState, WorkerStats};
    use crate::worker::WorkerId;

    fn scrape(collector: PoolCollector) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    fn stats() -> Stats {
        let mut stats = Stats {
            capacity: 4,
            idle: 3,
            busy: 1,
            ..Stats::default()
        };
        stats.allocations.immediate = 7;
        stats.allocations.wait_duration_sum = std::time::Duration::from_millis(1500);
        stats.events.ok = 5;
        stats
            .workers
            .push(WorkerStats::new(WorkerId::new(0), WorkerState::Running));
        stats
    }

    #[test]
    fn the_pools_families_land_in_a_hosts_registry() {
        let text = scrape(PoolCollector::from_fn(stats));
        for line in [
            "# TYPE async_worker_pool_capacity gauge",
            "async_worker_pool_capacity 4",
            "async_worker_pool_slots{state=\"busy\"} 1",
            "# TYPE async_worker_pool_allocations counter",
            "async_worker_pool_allocations_total{result=\"success_immediate\"} 7",
            "async_worker_pool_allocation_wait_seconds_sum_total 1.5",
            "async_worker_pool_events_total{result=\"ok\"} 5",
            "async_worker_pool_worker_state{worker=\"0\",state=\"running\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("nuclio_processor"));
    }

    #[test]
    fn nuclios_names_on_request() {
        let text = scrape(PoolCollector::from_fn(stats).with_nuclio_names());
        assert!(
            text.lines()
                .any(|l| l
                    == "nuclio_processor_worker_allocation_total{result=\"success_immediate\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("nuclio_processor_worker_allocation_workers_available_percentage 75")
        );
    }
}
