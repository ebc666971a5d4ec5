//! The gateways' signals, as gunicorn's operators know them: TERM and INT
//! drain and stop; HUP reloads every worker (new before old, no request
//! fails); TTIN adds a worker and TTOU removes one.

use std::future::Future;

use async_worker_pool::{Pool, Transport};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

/// What an operator's signal asks of the pool.
#[derive(Debug, Clone, Copy)]
enum Operation {
    Reload,
    SetWorkers(usize),
}

/// Ctrl-C or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled, so that a signal sent as soon as the
/// gateway says it listens is not lost to the default action.
pub fn stop_signal() -> impl Future<Output = ()> {
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        let (Ok(mut term), Ok(mut interrupt)) = (term, interrupt) else {
            tracing::warn!("cannot listen for SIGTERM or SIGINT; only Ctrl-C stops the gateway");
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    }
}

/// Installs the handlers for HUP, TTIN and TTOU now, and serves them on a
/// task: each signal becomes one operation, run in the order the signals came
/// (the pool runs one operation at a time anyway). `workers` is the number
/// the gateway started with.
pub fn serve_operator_signals<T: Transport>(
    pool: Pool<T>,
    workers: usize,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let install = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|error| format!("cannot listen for {name}: {error}"))
    };
    let mut hangup = install(SignalKind::hangup(), "SIGHUP")?;
    let mut more = install(
        SignalKind::from_raw(nix::sys::signal::Signal::SIGTTIN as i32),
        "SIGTTIN",
    )?;
    let mut fewer = install(
        SignalKind::from_raw(nix::sys::signal::Signal::SIGTTOU as i32),
        "SIGTTOU",
    )?;
    let (queue, mut queued) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(operation) = queued.recv().await {
            run(&pool, operation).await;
        }
    });
    Ok(tokio::spawn(async move {
        let mut target = workers;
        loop {
            let operation = tokio::select! {
                Some(()) = recv(&mut hangup) => Operation::Reload,
                Some(()) = recv(&mut more) => {
                    target += 1;
                    Operation::SetWorkers(target)
                }
                Some(()) = recv(&mut fewer) => {
                    if target == 1 {
                        tracing::warn!("SIGTTOU: one worker left; keeping it");
                        continue;
                    }
                    target -= 1;
                    Operation::SetWorkers(target)
                }
                else => return,
            };
            if queue.send(operation).is_err() {
                return;
            }
        }
    }))
}

async fn recv(signal: &mut Signal) -> Option<()> {
    signal.recv().await
}

async fn run<T: Transport>(pool: &Pool<T>, operation: Operation) {
    let result = match operation {
        Operation::Reload => {
            tracing::info!("SIGHUP: reloading every worker");
            pool.reload().await
        }
        Operation::SetWorkers(n) => {
            tracing::info!(workers = n, "SIGTTIN/SIGTTOU: resizing the pool");
            pool.set_num_workers(n).await
        }
    };
    match result {
        Ok(()) => tracing::info!(?operation, "done"),
        Err(error) => tracing::warn!(?operation, %error, "operation failed"),
    }
}
