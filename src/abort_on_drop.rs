//! [`AbortOnDropHandle`]: a spawned task that ends with its handle.
//!
//! tokio-util has one too, but only behind a feature that brings in
//! futures-util; the core keeps its dependencies to tokio's own.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle};

/// A [`JoinHandle`] that aborts its task when dropped; awaiting it yields the
/// task's output (or its panic or cancellation) as a `JoinHandle` does.
#[derive(Debug)]
pub(crate) struct AbortOnDropHandle<T>(JoinHandle<T>);

impl<T> AbortOnDropHandle<T> {
    pub(crate) fn new(handle: JoinHandle<T>) -> Self {
        Self(handle)
    }
}

impl<T> Drop for AbortOnDropHandle<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDropHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_the_handle_aborts_the_task_and_awaiting_it_yields_the_output() {
        let handle = AbortOnDropHandle::new(tokio::spawn(async { 7 }));
        assert_eq!(handle.await.unwrap(), 7);

        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = AbortOnDropHandle::new(tokio::spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        }));
        drop(handle);
        // The task was aborted, so its sender is dropped.
        assert!(rx.await.is_err());
    }
}
