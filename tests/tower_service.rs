//! `PoolService`: readiness is a reserved slot, nothing leaks when a caller
//! walks away after `poll_ready`, and the service composes with tower's
//! timeout, load-shed and buffer middleware.

mod support;

use std::task::Poll;
use std::time::Duration;

use async_worker_pool::{PoolError, PoolService};
use support::{Harness, Req, harness, settle};
use tower::{BoxError, Service, ServiceExt};

/// One `poll_ready`, without waiting for it to finish.
async fn poll_ready_once(service: &mut PoolService<support::MemTransport>) -> Poll<bool> {
    std::future::poll_fn(|cx| Poll::Ready(service.poll_ready(cx).map(|ready| ready.is_ok()))).await
}

/// Every slot idle, nobody waiting, and the next event gets its own answer.
async fn assert_whole(h: &Harness) {
    let stats = h.until("every slot idle", |s| s.idle == s.capacity).await;
    assert_eq!((stats.busy, stats.waiters), (0, 0), "{stats:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.pool.dispatch(Req::now(900)).await.unwrap().id, 900);
}

#[tokio::test(start_paused = true)]
async fn second_service_is_not_ready_until_the_first_call_finishes() {
    let h = harness(|b| b.max_connections(1)).await;
    let mut first = PoolService::new(h.pool.clone());
    let mut second = PoolService::new(h.pool.clone());
    first.ready().await.unwrap();
    assert_eq!(h.pool.stats().busy, 1, "readiness reserves the slot");
    assert_eq!(poll_ready_once(&mut second).await, Poll::Pending);
    let call = first.call(Req::reply(1, Duration::from_millis(50)));
    settle().await;
    assert_eq!(poll_ready_once(&mut second).await, Poll::Pending);
    assert_eq!(call.await.unwrap().id, 1);
    // The freed slot went to the waiting service, not back to the idle slots.
    second.ready().await.unwrap();
    assert_eq!(h.pool.stats().busy, 1);
    assert_eq!(second.call(Req::now(2)).await.unwrap().id, 2);
    assert_whole(&h).await;
}

#[tokio::test(start_paused = true)]
async fn ready_service_dropped_without_a_call_gives_its_slot_back() {
    let h = harness(|b| b.max_connections(1)).await;
    let mut holder = PoolService::new(h.pool.clone());
    holder.ready().await.unwrap();
    let mut waiting = PoolService::new(h.pool.clone());
    assert_eq!(poll_ready_once(&mut waiting).await, Poll::Pending);
    assert_eq!(h.pool.stats().waiters, 1);
    // The waiting one walks away first: it leaves the queue.
    drop(waiting);
    assert_eq!(h.pool.stats().waiters, 0);
    // The ready one walks away: its slot comes back unused.
    drop(holder);
    assert_whole(&h).await;
}

#[tokio::test(start_paused = true)]
async fn a_clone_does_not_share_the_reservation() {
    let h = harness(|b| b.max_connections(1)).await;
    let mut ready = PoolService::new(h.pool.clone());
    ready.ready().await.unwrap();
    let mut clone = ready.clone();
    assert_eq!(poll_ready_once(&mut clone).await, Poll::Pending);
    drop(clone);
    assert_eq!(ready.call(Req::now(3)).await.unwrap().id, 3);
    drop(ready);
    assert_whole(&h).await;
}

#[tokio::test(start_paused = true)]
async fn acquire_timeout_comes_out_of_call_and_the_service_lives_on() {
    let h = harness(|b| {
        b.max_connections(1)
            .connection_availability_timeout(Duration::from_millis(100))
    })
    .await;
    let slot = h.pool.acquire().await.unwrap();
    let mut service = PoolService::new(h.pool.clone());
    service.ready().await.unwrap();
    let error = service.call(Req::now(4)).await.unwrap_err();
    assert!(
        matches!(error, PoolError::AcquireTimeout { .. }),
        "{error:?}"
    );
    drop(slot);
    let resp = service.ready().await.unwrap().call(Req::now(5)).await;
    assert_eq!(resp.unwrap().id, 5);
    drop(service);
    assert_whole(&h).await;
}

#[tokio::test(start_paused = true)]
async fn call_without_poll_ready_waits_for_its_own_slot() {
    let h = harness(|b| b.max_connections(1)).await;
    let mut service = PoolService::new(h.pool.clone());
    assert_eq!(service.call(Req::now(6)).await.unwrap().id, 6);
    assert_whole(&h).await;
}

#[tokio::test(start_paused = true)]
async fn a_closed_pool_fails_poll_ready() {
    let h = harness(|b| b.max_connections(1)).await;
    h.pool.shutdown(Duration::from_secs(1)).await;
    let mut service = PoolService::new(h.pool.clone());
    let error = service.ready().await.unwrap_err();
    assert!(matches!(error, PoolError::Closed), "{error:?}");
}

#[tokio::test(start_paused = true)]
async fn timeout_cuts_a_slow_event_and_the_slot_is_restarted_not_reused() {
    let h = harness(|b| b.max_connections(1)).await;
    let mut service =
        tower::timeout::Timeout::new(PoolService::new(h.pool.clone()), Duration::from_millis(20));
    let error = service
        .ready()
        .await
        .unwrap()
        .call(Req::reply(7, Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert!(error.is::<tower::timeout::error::Elapsed>(), "{error:?}");
    // The late answer to event 7 must not be read as the next event's.
    assert_whole(&h).await;
    let resp = service.ready().await.unwrap().call(Req::now(8)).await;
    assert_eq!(resp.unwrap().id, 8);
    assert!(h.pool.stats().connection_restarts.ok >= 1);
}

#[tokio::test(start_paused = true)]
async fn load_shed_refuses_at_once_while_the_slot_is_busy_and_leaves_no_waiter() {
    let h = harness(|b| b.max_connections(1)).await;
    let mut busy = PoolService::new(h.pool.clone());
    busy.ready().await.unwrap();
    let running = busy.call(Req::reply(9, Duration::from_millis(50)));
    let mut shed = tower::load_shed::LoadShed::new(PoolService::new(h.pool.clone()));
    let error = shed
        .ready()
        .await
        .unwrap()
        .call(Req::now(10))
        .await
        .unwrap_err();
    assert!(
        error.is::<tower::load_shed::error::Overloaded>(),
        "{error:?}"
    );
    // The shed service is dropped, as a front end drops a per-request clone:
    // its place in the queue goes with it.
    drop(shed);
    assert_eq!(h.pool.stats().waiters, 0);
    assert_eq!(running.await.unwrap().id, 9);
    let mut shed = tower::load_shed::LoadShed::new(PoolService::new(h.pool.clone()));
    let resp = shed.ready().await.unwrap().call(Req::now(11)).await;
    assert_eq!(resp.unwrap().id, 11);
    drop((busy, shed));
    assert_whole(&h).await;
}

#[tokio::test(start_paused = true)]
async fn buffer_in_front_serves_every_caller_and_holds_no_slot_when_idle() {
    let h = harness(|b| b.num_workers(2).max_connections(1)).await;
    let buffer = tower::buffer::Buffer::new(PoolService::new(h.pool.clone()), 4);
    // A caller that polls the buffer ready and then walks away (tower's
    // Buffer issue #408): neither the buffer's place nor a pool slot is lost.
    for _ in 0..8 {
        let mut walk_away = buffer.clone();
        walk_away.ready().await.unwrap();
        drop(walk_away);
    }
    let calls: Vec<_> = (0..12)
        .map(|id| {
            let mut buffer = buffer.clone();
            tokio::spawn(async move {
                let call = match buffer.ready().await {
                    Ok(ready) => ready.call(Req::reply(id, Duration::from_millis(10))),
                    Err(error) => return (id, Err(error)),
                };
                (id, call.await)
            })
        })
        .collect();
    let mut max_busy = 0;
    for call in calls {
        let (id, resp): (u64, Result<_, BoxError>) = call.await.unwrap();
        max_busy = max_busy.max(h.pool.stats().busy);
        assert_eq!(resp.unwrap().id, id);
    }
    assert!(max_busy <= 2, "never more events than slots: {max_busy}");
    // Every answer in, the buffer still alive: no slot is held for it.
    assert_whole(&h).await;
    drop(buffer);
}

#[test]
fn the_service_is_send_sync_and_clone_as_axum_asks() {
    fn axum_ready<S: Send + Sync + Clone + 'static>() {}
    axum_ready::<PoolService<support::MemTransport>>();
}
