//! Groups `contended` and `concurrency`: tasks that each take a slot, yield once
//! while holding it, and give it back, 100 times, on a multi-thread runtime with
//! two worker threads and 16 slots.
//!
//! `contended` is 64 tasks; `concurrency` repeats the round for 1, 4, 16 and 64
//! tasks, to chart the cost of one acquire as contention grows.

mod support;

use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
    measurement::WallTime,
};
use support::{BareSemaphore, Bb8Pool, Contender, DeadPool, WorkerPool};

const SLOTS: usize = 16;
const ROUNDS: usize = 100;

fn contended_rounds<C: Contender>(group: &mut BenchmarkGroup<'_, WallTime>, tasks: usize) {
    let runtime = support::two_threads();
    let pool = runtime.block_on(C::build(1, SLOTS));
    group.throughput(Throughput::Elements((tasks * ROUNDS) as u64));
    group.bench_function(BenchmarkId::new(C::NAME, tasks), |b| {
        b.to_async(&runtime)
            .iter(|| support::contend(&pool, tasks, ROUNDS));
    });
}

fn contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("contended");
    support::configure(&mut group);
    contended_rounds::<WorkerPool>(&mut group, 64);
    contended_rounds::<BareSemaphore>(&mut group, 64);
    contended_rounds::<DeadPool>(&mut group, 64);
    contended_rounds::<Bb8Pool>(&mut group, 64);
    group.finish();
}

fn concurrency(c: &mut Criterion) {
    let mut group = c.benchmark_group("concurrency");
    support::configure(&mut group);
    for tasks in [1, 4, 16, 64] {
        contended_rounds::<WorkerPool>(&mut group, tasks);
        contended_rounds::<BareSemaphore>(&mut group, tasks);
        contended_rounds::<DeadPool>(&mut group, tasks);
        contended_rounds::<Bb8Pool>(&mut group, tasks);
    }
    group.finish();
}

criterion_group!(benches, contended, concurrency);
criterion_main!(benches);
