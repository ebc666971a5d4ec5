//! [`HandlerDurations`]: the handler durations the wrapper reports in its `m`
//! packets, summed per transport.
//!
//! [`Stats`](crate::Stats) describes the pool, which knows nothing of what a
//! worker measures inside itself, so these live beside it: a count and a sum,
//! enough for a Prometheus summary without quantiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The handler durations a [`NuclioTransport`](super::NuclioTransport) and its
/// clones have seen, shared; cloning shares the counters.
#[derive(Debug, Clone, Default)]
pub struct HandlerDurations(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// A snapshot of [`HandlerDurations`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandlerDurationStats {
    /// Durations reported.
    pub count: u64,
    /// Their sum, to the microsecond.
    pub sum: Duration,
}

impl HandlerDurations {
    pub(crate) fn record(&self, duration: Duration) {
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.0.count.fetch_add(1, Relaxed);
        self.0.sum_micros.fetch_add(micros, Relaxed);
    }

    /// The count and sum so far.
    pub fn snapshot(&self) -> HandlerDurationStats {
        HandlerDurationStats {
            count: self.0.count.load(Relaxed),
            sum: Duration::from_micros(self.0.sum_micros.load(Relaxed)),
        }
    }
}

impl HandlerDurationStats {
    /// The two samples in the Prometheus text format, as a summary without
    /// quantiles named `nuclio_function_duration_seconds` (`_sum`, `_count`),
    /// a name chosen here in the style of Nuclio's, with `# HELP` and `# TYPE`
    /// lines; append it to
    /// `prometheus::render_nuclio` (feature `prometheus`).
    pub fn render_prometheus(&self) -> String {
        format!(
            "# HELP nuclio_function_duration_seconds Handler run time, as the wrapper measured it.\n\
             # TYPE nuclio_function_duration_seconds summary\n\
             nuclio_function_duration_seconds_sum {}\n\
             nuclio_function_duration_seconds_count {}\n",
            self.sum.as_secs_f64(),
            self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_counters() {
        let durations = HandlerDurations::default();
        durations.clone().record(Duration::from_millis(250));
        durations.record(Duration::from_micros(1500));
        let stats = durations.snapshot();
        assert_eq!(stats.count, 2);
        assert_eq!(stats.sum, Duration::from_micros(251_500));
        assert!(
            stats
                .render_prometheus()
                .contains("nuclio_function_duration_seconds_count 2\n")
        );
    }
}
