//! The gateways' tokio runtime, sized beside the Python workers.
//!
//! Each worker process keeps a core busy under load, and the gateway's own
//! work per event is small, so a runtime thread per core only makes the
//! gateway's threads and the workers take turns on the same cores: on two
//! cores with one worker, one runtime thread cut the gateway process's CPU per
//! request by 14 to 19 % against two, and with two workers it was even
//! (BENCHMARKS.md, "The allocator and the runtime's threads"). The default
//! therefore leaves a core to each worker and gives the gateway the rest, at
//! least one.

use std::num::NonZeroUsize;

/// The runtime's command-line flag, shared by both gateways.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Threads of the gateway's async runtime. By default the cores the
    /// worker processes leave free, at least one.
    #[arg(long, env = "GATEWAY_THREADS")]
    pub threads: Option<NonZeroUsize>,
}

/// Runs `main` to its end on a multi-threaded runtime (I/O and timers on)
/// with [`threads`] worker threads for `workers` worker processes: the count
/// is fixed at start, so workers added later by a signal do not change it.
pub fn block_on(
    requested: Option<NonZeroUsize>,
    workers: usize,
    main: impl Future<Output = Result<(), String>>,
) -> Result<(), String> {
    let threads = threads(requested, workers, cores());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))?;
    tracing::info!(threads, "async runtime");
    runtime.block_on(main)
}

/// The runtime threads for `workers` worker processes on `cores` cores,
/// unless `requested` names a number.
pub fn threads(requested: Option<NonZeroUsize>, workers: usize, cores: usize) -> usize {
    match requested {
        Some(threads) => threads.get(),
        None => cores.saturating_sub(workers).max(1),
    }
}

/// The cores this process may run on (its CPU affinity and cgroup quota, as
/// the standard library reads them); one if that cannot be read.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::threads;

    #[test]
    fn workers_keep_a_core_each_and_the_gateway_at_least_one() {
        assert_eq!(threads(None, 1, 2), 1);
        assert_eq!(threads(None, 2, 2), 1);
        assert_eq!(threads(None, 4, 2), 1);
        assert_eq!(threads(None, 2, 8), 6);
        assert_eq!(threads(None, 0, 4), 4);
    }

    #[test]
    fn a_requested_number_wins() {
        let three = NonZeroUsize::new(3);
        assert_eq!(threads(three, 1, 2), 3);
        assert_eq!(threads(three, 8, 64), 3);
    }
}
