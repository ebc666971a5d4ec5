//! One event's life as the host's tracing sees it: the `event` span, with the
//! time spent waiting for a slot apart from the time spent running.

use std::future::Future;
use std::time::Duration;

use tracing::Instrument;

use crate::error::PoolError;
use crate::slot::Slot;
use crate::transport::Transport;

/// Runs one event: waits for `acquire` (a slot and how long it was waited
/// for), then sends `request` on that slot, inside a `debug` span named
/// `event` with the fields `worker`, `generation`, `waited_us`, `run_us` and
/// `outcome`. With no subscriber interested in the span, it costs nothing.
pub(crate) async fn run<'a, T, A>(acquire: A, request: T::Request) -> Result<T::Response, PoolError>
where
    T: Transport,
    A: Future<Output = Result<(Slot<'a, T>, Duration), PoolError>>,
{
    let span = tracing::debug_span!(
        "event",
        worker = tracing::field::Empty,
        generation = tracing::field::Empty,
        waited_us = tracing::field::Empty,
        run_us = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    if span.is_disabled() {
        let (mut slot, _) = acquire.await?;
        return slot.call(request).await;
    }
    let traced = async {
        let result = match acquire.await {
            Ok((mut slot, waited)) => {
                let span = tracing::Span::current();
                span.record("worker", slot.worker().index());
                span.record("generation", slot.generation());
                span.record("waited_us", micros(waited));
                let started = tokio::time::Instant::now();
                let result = slot.call(request).await;
                span.record("run_us", micros(started.elapsed()));
                result
            }
            Err(error) => Err(error),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => error.kind(),
        };
        tracing::Span::current().record("outcome", outcome);
        result
    };
    traced.instrument(span).await
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
