//! Group `acquire_release`: one uncontended acquire and release of a slot, on a
//! current-thread runtime, in a pool of 16 slots (one worker with 16 connections
//! for this crate), against a bare semaphore, deadpool and bb8.

mod support;

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use support::{BareSemaphore, Bb8Pool, Contender, DeadPool, WorkerPool};

fn acquire_and_release<C: Contender>(group: &mut BenchmarkGroup<'_, WallTime>) {
    let runtime = support::one_thread();
    let pool = runtime.block_on(C::build(1, 16));
    group.bench_function(C::NAME, |b| {
        b.to_async(&runtime)
            .iter(|| async { drop(pool.acquire().await) });
    });
}

fn acquire_release(c: &mut Criterion) {
    let mut group = c.benchmark_group("acquire_release");
    support::configure(&mut group);
    acquire_and_release::<WorkerPool>(&mut group);
    acquire_and_release::<BareSemaphore>(&mut group);
    acquire_and_release::<DeadPool>(&mut group);
    acquire_and_release::<Bb8Pool>(&mut group);
    group.finish();
}

criterion_group!(benches, acquire_release);
criterion_main!(benches);
