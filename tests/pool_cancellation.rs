//! Issue item 8: a caller that drops its acquire or dispatch future at any await
//! point leaks nothing, and an abandoned connection is never reused.

mod support;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use support::{Req, harness, settle};

#[tokio::test(start_paused = true)]
async fn dropping_a_waiting_acquire_leaves_the_queue_and_loses_no_slot() {
    let h = harness(|b| b.max_connections(1)).await;
    let held = h.pool.acquire().await.unwrap();
    let waiter = tokio::spawn({
        let pool = h.pool.clone();
        async move { pool.acquire().await.map(drop) }
    });
    settle().await;
    assert_eq!(h.pool.stats().waiters, 1);
    waiter.abort();
    settle().await;
    assert_eq!(h.pool.stats().waiters, 0);
    drop(held);
    let stats = h.pool.stats();
    assert_eq!(stats.idle, stats.capacity);
}

#[tokio::test(start_paused = true)]
async fn a_slot_granted_to_a_waiter_that_is_dropped_before_it_runs_goes_to_the_next() {
    let h = harness(|b| b.max_connections(1)).await;
    let held = h.pool.acquire().await.unwrap();
    let spawn_waiter = |id| {
        let pool = h.pool.clone();
        tokio::spawn(async move { pool.dispatch(Req::now(id)).await })
    };
    let first = spawn_waiter(1);
    settle().await;
    let second = spawn_waiter(2);
    settle().await;
    // The release grants the slot to `first`, which is aborted before it can run.
    drop(held);
    first.abort();
    assert_eq!(second.await.unwrap().unwrap().id, 2);
    let stats = h.pool.stats();
    assert_eq!((stats.idle, stats.waiters), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn dropping_dispatch_mid_call_restarts_the_connection_and_loses_no_slot() {
    let h = harness(|b| b.max_connections(3)).await;
    let calls: Vec<_> = (0..3)
        .map(|id| {
            let pool = h.pool.clone();
            tokio::spawn(
                async move { pool.dispatch(Req::reply(id, Duration::from_secs(10))).await },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        h.transport.received.load(SeqCst),
        3,
        "every event is mid-call"
    );
    for call in &calls {
        call.abort();
    }
    settle().await;
    assert_eq!(
        h.transport.dropped.load(SeqCst),
        3,
        "abandoned connections are closed"
    );
    let stats = h
        .until("reconnects finished", |s| s.idle == s.capacity)
        .await;
    assert_eq!(stats.connection_restarts.ok, 3);
    assert_eq!(stats.busy, 0);
}

#[tokio::test(start_paused = true)]
async fn the_next_event_cannot_read_an_abandoned_events_late_response() {
    let h = harness(|b| b.max_connections(1)).await;
    // The worker answers the first event after 2 s; its caller gives up after 1 s.
    let abandoned = tokio::time::timeout(
        Duration::from_secs(1),
        h.pool.dispatch(Req::reply(1, Duration::from_secs(2))),
    )
    .await;
    assert!(abandoned.is_err());
    // Had the connection been reused, the next read on it would return event 1's
    // answer, which arrives at 2 s; wait past that before sending event 2.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resp = h.pool.dispatch(Req::now(2)).await.unwrap();
    assert_eq!(resp.id, 2, "got another event's response: {resp:?}");
    assert_ne!(resp.conn, 0, "the abandoned connection (id 0) was reused");
}

/// Drops a dispatch after `cut` of pool time, for cuts that land in every await:
/// while it waits for a slot (busy for the first 50 ms), at the grant, and
/// during the 100 ms call. After each, the accounting is whole and the next
/// event gets its own answer.
#[tokio::test(start_paused = true)]
async fn dispatch_dropped_at_any_point_leaks_nothing() {
    let h = harness(|b| b.num_workers(2).max_connections(1)).await;
    let mut next_id = 100;
    for cut_ms in (0..=200).step_by(5) {
        let blockers: Vec<_> = (0..2)
            .map(|id| {
                let pool = h.pool.clone();
                tokio::spawn(async move {
                    pool.dispatch(Req::reply(id, Duration::from_millis(50)))
                        .await
                })
            })
            .collect();
        settle().await;
        let cut = Duration::from_millis(cut_ms);
        let _ = tokio::time::timeout(
            cut,
            h.pool.dispatch(Req::reply(99, Duration::from_millis(100))),
        )
        .await;
        for blocker in blockers {
            blocker.await.unwrap().unwrap();
        }
        let stats = h
            .until("every slot idle again", |s| s.idle == s.capacity)
            .await;
        assert_eq!((stats.waiters, stats.busy), (0, 0), "cut at {cut_ms} ms");
        for _ in 0..2 {
            next_id += 1;
            let resp = h.pool.dispatch(Req::now(next_id)).await.unwrap();
            assert_eq!(resp.id, next_id, "cut at {cut_ms} ms: {resp:?}");
        }
    }
    assert_eq!(
        h.transport.live.load(SeqCst),
        2,
        "every replaced connection was closed"
    );
}
