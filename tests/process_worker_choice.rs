//! The worker choice with real Python workers: while one worker's loop is
//! held by a handler that computes for 300 ms, light events sent from three
//! concurrent tasks go to the other worker, and none waits out the block;
//! with `stall_after` off, free slots alone send some of them behind it.

mod support;

use std::time::Duration;

use async_worker_pool::net::Event;
use support::real::{RealPool, python_pool, returned_body};
use support::stats::until_full;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

const SPIN: Duration = Duration::from_millis(300);
/// Light events sent this long after the spin began: the worker has read it
/// and is computing, and `stall_after` (1 ms) has passed.
const SETTLE: Duration = Duration::from_millis(30);
/// A light event that took longer waited behind the spin.
const BEHIND: Duration = Duration::from_millis(150);

/// Light events from three tasks for as long as the spin runs; how many of
/// them took longer than `BEHIND`, and how many were sent.
async fn lights_beside_a_spin(pool: RealPool) -> (usize, usize) {
    until_full(&pool).await;
    let spin = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let body = format!("spin:{}", SPIN.as_secs_f64());
            returned_body(pool.dispatch(Event::plain(body)).await.unwrap())
        })
    };
    sleep(SETTLE).await;
    let until = Instant::now() + SPIN - SETTLE * 2;
    let mut lanes = JoinSet::new();
    for _ in 0..3 {
        let pool = pool.clone();
        lanes.spawn(async move {
            let (mut sent, mut behind) = (0, 0);
            while Instant::now() < until {
                let started = Instant::now();
                pool.dispatch(Event::plain("light")).await.unwrap();
                sent += 1;
                behind += usize::from(started.elapsed() > BEHIND);
            }
            (sent, behind)
        });
    }
    let (mut sent, mut behind) = (0, 0);
    while let Some(lane) = lanes.join_next().await {
        let (s, b) = lane.unwrap();
        sent += s;
        behind += b;
    }
    spin.await.unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
    (behind, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_events_stay_off_a_worker_whose_loop_computes() {
    let pool = python_pool("spin:handler", 2, 16, |b| b);
    let (behind, sent) = lights_beside_a_spin(pool).await;
    assert!(sent > 30, "only {sent} light events were sent");
    assert_eq!(
        behind, 0,
        "{behind} of {sent} light events waited behind the spin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_free_slots_alone_some_light_events_wait_behind_it() {
    let pool = python_pool("spin:handler", 2, 16, |b| b.stall_after(None));
    let (behind, sent) = lights_beside_a_spin(pool).await;
    assert!(
        behind > 0,
        "none of {sent} light events waited behind the spin"
    );
}
