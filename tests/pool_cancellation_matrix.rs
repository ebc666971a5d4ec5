//! The cancellation matrix: every operation that can wait is cut at each of its
//! polls in turn, from the first (dropped before it ever ran) to one past the
//! poll that completes it, and after each cut the pool must be whole: the slot
//! states add up to capacity, every slot comes back idle, nobody is left
//! waiting, and the next event gets its own answer.
//!
//! Runs on the in-memory transport and the paused clock, so every run is
//! deterministic. The simulated worker still answers an abandoned event, later,
//! on its old connection: had that connection been reused, the next event
//! would read the wrong answer.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::SeqCst;
use std::task::{Context, Poll};
use std::time::Duration;

use async_worker_pool::{PoolError, WorkerExit};
use support::{Harness, Req, harness, settle};
use tokio::time::sleep;

/// Polls `inner` until it completes, except that at its `cut_at`th poll it is
/// dropped instead (so `cut_at == 1` drops it before it ever ran).
struct CutAt<F> {
    inner: Option<Pin<Box<F>>>,
    polls: usize,
    cut_at: usize,
}

/// How a [`CutAt`] ended.
#[derive(Debug)]
enum Ran<T> {
    /// The operation completed, at this poll.
    Completed(T, usize),
    /// The operation was dropped instead of being polled again.
    Cut,
}

impl<F: Future> Future for CutAt<F> {
    type Output = Ran<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.polls += 1;
        let polls = self.polls;
        if polls == self.cut_at {
            self.inner = None;
            return Poll::Ready(Ran::Cut);
        }
        let inner = self.inner.as_mut().expect("polled after completion");
        match inner.as_mut().poll(cx) {
            Poll::Ready(output) => {
                self.inner = None;
                Poll::Ready(Ran::Completed(output, polls))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

fn cut_at<F: Future>(cut_at: usize, inner: F) -> CutAt<F> {
    CutAt {
        inner: Some(Box::pin(inner)),
        polls: 0,
        cut_at,
    }
}

/// What one run of a scenario reports to the matrix: at which poll it
/// completed, or `None` if it was cut.
type Report = Option<usize>;

fn report<T>(ran: &Ran<T>) -> Report {
    match ran {
        Ran::Completed(_, polls) => Some(*polls),
        Ran::Cut => None,
    }
}

/// The checks after every run: accounting whole (checked on every snapshot by
/// `until`), every slot idle again, no waiter, and the next events answered
/// with their own ids, after any late answer to an abandoned event is in.
async fn assert_whole(h: &Harness, case: &str) {
    let stats = h
        .until("every slot idle again", |s| s.idle == s.capacity)
        .await;
    assert_eq!((stats.busy, stats.waiters), (0, 0), "{case}: {stats:?}");
    // Every abandoned event in these scenarios is answered within 200 ms.
    sleep(Duration::from_millis(300)).await;
    for id in [1_000, 1_001, 1_002] {
        let resp = h.pool.dispatch(Req::now(id)).await.unwrap();
        assert_eq!(resp.id, id, "{case}: got another event's answer {resp:?}");
    }
    let stats = h
        .until("idle after the checks", |s| s.idle == s.capacity)
        .await;
    assert_eq!(stats.waiters, 0, "{case}");
    assert_eq!(
        h.transport.live.load(SeqCst),
        stats.capacity,
        "{case}: every replaced connection is closed"
    );
}

/// Runs `scenario` uncut to learn how many polls it needs, then cut at every
/// poll from the first to one past the last; checks that exactly the runs cut
/// before completion were cut.
async fn matrix<Fut: Future<Output = Report>>(name: &str, scenario: impl Fn(usize) -> Fut) {
    let needed = scenario(usize::MAX)
        .await
        .unwrap_or_else(|| panic!("{name}: the uncut run did not complete"));
    for n in 1..=needed + 1 {
        let ran = scenario(n).await;
        if n <= needed {
            assert_eq!(ran, None, "{name}: cut at poll {n} of {needed} did not cut");
        } else {
            assert_eq!(ran, Some(needed), "{name}: the run past the cut differs");
        }
    }
    println!("{name}: cut at polls 1..={needed}; completes at poll {needed} when not cut");
}

#[tokio::test(start_paused = true)]
async fn acquire_with_a_free_slot_cut_at_every_poll() {
    matrix("acquire, slot free", |n| async move {
        let h = harness(|b| b.num_workers(2).max_connections(2)).await;
        let ran = cut_at(n, h.pool.acquire()).await;
        let report = report(&ran);
        if let Ran::Completed(slot, _) = ran {
            drop(slot.unwrap());
        }
        assert_whole(&h, &format!("acquire, slot free, cut at {n}")).await;
        report
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn acquire_that_waits_for_a_busy_slot_cut_at_every_poll() {
    matrix("acquire, all busy", |n| async move {
        let h = harness(|b| b.num_workers(2).max_connections(1)).await;
        // Both slots held; one is given back after 20 ms, the other after 40 ms.
        let holders: Vec<_> = [20, 40]
            .into_iter()
            .map(|ms| {
                let pool = h.pool.clone();
                tokio::spawn(async move {
                    let slot = pool.acquire().await.unwrap();
                    sleep(Duration::from_millis(ms)).await;
                    drop(slot);
                })
            })
            .collect();
        settle().await;
        assert_eq!(h.pool.stats().busy, 2);
        let ran = cut_at(n, h.pool.acquire()).await;
        let report = report(&ran);
        if let Ran::Completed(slot, _) = ran {
            let slot = slot.unwrap();
            // Held a while, so the grant is not just handed straight back.
            sleep(Duration::from_millis(5)).await;
            drop(slot);
        }
        for holder in holders {
            holder.await.unwrap();
        }
        assert_whole(&h, &format!("acquire, all busy, cut at {n}")).await;
        report
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn dispatch_queued_behind_another_waiter_cut_at_every_poll() {
    // A waiter queued first must still get the first freed slot, whatever
    // happens to the one queued after it.
    matrix("dispatch, second in the queue", |n| async move {
        let h = harness(|b| b.max_connections(1)).await;
        let holder = {
            let pool = h.pool.clone();
            tokio::spawn(async move {
                let slot = pool.acquire().await.unwrap();
                sleep(Duration::from_millis(20)).await;
                drop(slot);
            })
        };
        settle().await;
        let first = {
            let pool = h.pool.clone();
            tokio::spawn(async move {
                pool.dispatch(Req::reply(1, Duration::from_millis(10)))
                    .await
            })
        };
        settle().await;
        assert_eq!(h.pool.stats().waiters, 1);
        let ran = cut_at(n, h.pool.dispatch(Req::reply(2, Duration::from_millis(10)))).await;
        if let Ran::Completed(result, _) = &ran {
            assert_eq!(result.as_ref().unwrap().id, 2);
        }
        assert_eq!(first.await.unwrap().unwrap().id, 1);
        holder.await.unwrap();
        assert_whole(&h, &format!("second waiter, cut at {n}")).await;
        report(&ran)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn dispatch_on_a_free_slot_cut_at_every_poll() {
    matrix("dispatch, slot free", |n| async move {
        let h = harness(|b| b.max_connections(1)).await;
        let ran = cut_at(n, h.pool.dispatch(Req::reply(7, Duration::from_millis(50)))).await;
        if let Ran::Completed(result, _) = &ran {
            assert_eq!(result.as_ref().unwrap().id, 7);
        }
        assert_whole(&h, &format!("dispatch, slot free, cut at {n}")).await;
        report(&ran)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn dispatch_that_waits_for_a_busy_slot_cut_at_every_poll() {
    matrix("dispatch, slot busy then freed", |n| async move {
        let h = harness(|b| b.max_connections(1)).await;
        let busy = {
            let pool = h.pool.clone();
            tokio::spawn(async move {
                pool.dispatch(Req::reply(1, Duration::from_millis(30)))
                    .await
            })
        };
        settle().await;
        assert_eq!(h.pool.stats().busy, 1);
        let ran = cut_at(n, h.pool.dispatch(Req::reply(2, Duration::from_millis(50)))).await;
        if let Ran::Completed(result, _) = &ran {
            assert_eq!(result.as_ref().unwrap().id, 2);
        }
        assert_eq!(busy.await.unwrap().unwrap().id, 1);
        assert_whole(&h, &format!("dispatch, slot busy, cut at {n}")).await;
        report(&ran)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn dispatch_mid_call_with_an_event_timeout_cut_at_every_poll() {
    // The worker answers after 150 ms, past the 100 ms event timeout: the uncut
    // run ends in EventTimeout, and the late answer lands on a connection the
    // pool must never read again.
    matrix("dispatch, mid-call, event timeout", |n| async move {
        let h = harness(|b| {
            b.max_connections(1)
                .event_timeout(Duration::from_millis(100))
        })
        .await;
        let ran = cut_at(
            n,
            h.pool.dispatch(Req::reply(3, Duration::from_millis(150))),
        )
        .await;
        if let Ran::Completed(result, _) = &ran {
            assert!(
                matches!(result, Err(PoolError::EventTimeout { .. })),
                "{result:?}"
            );
        }
        assert_whole(&h, &format!("dispatch, event timeout, cut at {n}")).await;
        report(&ran)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn slot_call_cut_at_every_poll() {
    // The host drives the slot itself: acquire completes, then only the call is cut.
    matrix("slot call", |n| async move {
        let h = harness(|b| b.num_workers(2).max_connections(1)).await;
        let mut slot = h.pool.acquire().await.unwrap();
        let ran = cut_at(n, slot.call(Req::reply(4, Duration::from_millis(40)))).await;
        if let Ran::Completed(result, _) = &ran {
            assert_eq!(result.as_ref().unwrap().id, 4);
        }
        let report = report(&ran);
        if n == 1 {
            // Dropped before it ran: nothing was sent, the connection is clean.
            assert_eq!(slot.call(Req::now(5)).await.unwrap().id, 5);
        } else if report.is_none() {
            // Cut mid-exchange: the guard refuses to send on that connection again.
            assert!(matches!(
                slot.call(Req::now(5)).await,
                Err(PoolError::ConnectionUnusable { .. })
            ));
        }
        drop(slot);
        assert_whole(&h, &format!("slot call, cut at {n}")).await;
        report
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn dispatch_whose_worker_exits_mid_call_cut_at_every_poll() {
    // The worker process dies 10 ms into a 1 s event: the uncut run ends in
    // WorkerExited, and the cuts land before, during and after the exit.
    matrix("dispatch, worker exits mid-call", |n| async move {
        let h = harness(|b| b.num_workers(2).max_connections(1)).await;
        let killer = {
            let (pool, launcher) = (h.pool.clone(), h.launcher.clone());
            tokio::spawn(async move {
                sleep(Duration::from_millis(10)).await;
                let stats = pool.stats();
                if let Some(busy) = stats.workers.iter().position(|w| w.busy == 1) {
                    launcher.kill(busy, WorkerExit::signal(9));
                }
            })
        };
        let ran = cut_at(n, h.pool.dispatch(Req::reply(6, Duration::from_secs(1)))).await;
        if let Ran::Completed(result, _) = &ran {
            assert!(
                matches!(result, Err(PoolError::WorkerExited { .. })),
                "{result:?}"
            );
        }
        killer.await.unwrap();
        assert_whole(&h, &format!("dispatch, worker exits, cut at {n}")).await;
        report(&ran)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_cut_at_every_poll_still_stops_everything() {
    // A cut shutdown aborts the supervisors, which drops their processes; a
    // second, uncut shutdown then closes every slot. Nothing may be left.
    matrix("shutdown", |n| async move {
        let h = harness(|b| b.num_workers(2).max_connections(2)).await;
        let in_flight = {
            let pool = h.pool.clone();
            tokio::spawn(async move {
                pool.dispatch(Req::reply(8, Duration::from_millis(50)))
                    .await
            })
        };
        settle().await;
        let ran = cut_at(n, h.pool.shutdown(Duration::from_secs(1))).await;
        let stats = h.pool.stats();
        assert_eq!(
            stats.idle + stats.busy + stats.reconnecting + stats.down + stats.closed,
            stats.capacity,
            "shutdown cut at {n}: {stats:?}"
        );
        match in_flight.await.unwrap() {
            Ok(resp) => assert_eq!(resp.id, 8),
            Err(error) => assert!(matches!(error, PoolError::Closed), "{error:?}"),
        }
        if n > 1 {
            // Shutdown began: no new event is admitted.
            assert!(matches!(
                h.pool.dispatch(Req::now(9)).await,
                Err(PoolError::Closed)
            ));
        }
        h.pool.shutdown(Duration::from_secs(1)).await;
        settle().await;
        let stats = h.pool.stats();
        assert_eq!(
            stats.closed, stats.capacity,
            "shutdown cut at {n}: {stats:?}"
        );
        assert_eq!(stats.waiters, 0);
        assert_eq!(
            h.launcher.alive.load(SeqCst),
            0,
            "a process outlived the pool"
        );
        assert_eq!(
            h.transport.live.load(SeqCst),
            0,
            "a connection outlived the pool"
        );
        report(&ran)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn dispatch_on_a_worker_being_reloaded_cut_at_every_poll() {
    matrix("dispatch, worker draining", |n| async move {
        let h = harness(|b| b.max_connections(2)).await;
        // The spare takes 10 ms to connect, so the event starts on the old
        // process and is in flight (or cut) while that process drains.
        h.transport.set_connect(
            Some(1),
            None,
            support::ConnectRule::After(Duration::from_millis(10)),
        );
        let reload = {
            let pool = h.pool.clone();
            tokio::spawn(async move { pool.reload().await })
        };
        let ran = cut_at(n, h.pool.dispatch(Req::reply(1, Duration::from_millis(50)))).await;
        if let Ran::Completed(result, _) = &ran {
            let resp = result.as_ref().unwrap();
            assert_eq!((resp.id, resp.worker, resp.generation), (1, 0, 1));
        }
        reload.await.unwrap().unwrap();
        let stats = h.pool.stats();
        assert_eq!((stats.workers.len(), stats.workers[0].generation), (1, 2));
        assert_whole(&h, &format!("dispatch, worker draining, cut at {n}")).await;
        report(&ran)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn reload_cut_at_every_poll_still_replaces_the_worker() {
    matrix("reload", |n| async move {
        let h = harness(|b| b.max_connections(2)).await;
        let ran = cut_at(n, h.pool.reload()).await;
        if let Ran::Completed(result, _) = &ran {
            result.as_ref().unwrap();
        }
        let report = report(&ran);
        // Polled at least once, the reload goes on without its caller.
        if n > 1 {
            h.until("the reload finished", |s| {
                s.restart_reasons.reloaded == 1 && s.workers.len() == 1
            })
            .await;
        }
        assert_whole(&h, &format!("reload, cut at {n}")).await;
        report
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn acquire_owned_that_waits_for_a_busy_slot_cut_at_every_poll() {
    matrix("acquire_owned, all busy", |n| async move {
        let h = harness(|b| b.max_connections(1)).await;
        let holder = {
            let pool = h.pool.clone();
            tokio::spawn(async move {
                let slot = pool.acquire_owned().await.unwrap();
                sleep(Duration::from_millis(20)).await;
                drop(slot);
            })
        };
        settle().await;
        assert_eq!(h.pool.stats().busy, 1);
        let ran = cut_at(n, h.pool.acquire_owned()).await;
        let report = report(&ran);
        if let Ran::Completed(slot, _) = ran {
            let slot = slot.unwrap();
            sleep(Duration::from_millis(5)).await;
            drop(slot);
        }
        holder.await.unwrap();
        assert_whole(&h, &format!("acquire_owned, all busy, cut at {n}")).await;
        report
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn owned_slot_call_in_a_spawned_task_cut_at_every_poll() {
    // The owned slot moves into a task; the call inside it is cut, and the
    // task (with the slot) ends there.
    matrix("owned slot call, spawned", |n| async move {
        let h = harness(|b| b.num_workers(2).max_connections(1)).await;
        let mut slot = h.pool.acquire_owned().await.unwrap();
        let ran = tokio::spawn(async move {
            let ran = cut_at(n, slot.call(Req::reply(4, Duration::from_millis(40)))).await;
            if let Ran::Completed(result, _) = &ran {
                assert_eq!(result.as_ref().unwrap().id, 4);
            }
            report(&ran)
        })
        .await
        .unwrap();
        assert_whole(&h, &format!("owned slot call, cut at {n}")).await;
        ran
    })
    .await;
}
