//! Group `scaling`: one uncontended acquire and release, on a current-thread
//! runtime, as the pool grows from 1 x 1 to 16 x 1000 slots (workers x
//! connections), with half of the slots held busy throughout so the idle
//! bookkeeping works on a part-full pool. At 1 x 1 no slot is held, or there
//! would be none to take.

mod support;

use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use support::{BareSemaphore, Bb8Pool, Contender, DeadPool, WorkerPool};

const SHAPES: [(usize, usize); 4] = [(1, 1), (1, 1000), (4, 1000), (16, 1000)];

fn with_half_busy<C: Contender>(group: &mut BenchmarkGroup<'_, WallTime>) {
    let runtime = support::one_thread();
    for (workers, connections) in SHAPES {
        let pool = runtime.block_on(C::build(workers, connections));
        let busy = runtime.block_on(support::hold(&pool, workers * connections / 2));
        let id = BenchmarkId::new(C::NAME, format!("{workers}x{connections}"));
        group.bench_function(id, |b| {
            b.to_async(&runtime)
                .iter(|| async { drop(pool.acquire().await) });
        });
        drop(busy);
    }
}

fn scaling(c: &mut Criterion) {
    let mut group = c.benchmark_group("scaling");
    support::configure(&mut group);
    with_half_busy::<WorkerPool>(&mut group);
    with_half_busy::<BareSemaphore>(&mut group);
    with_half_busy::<DeadPool>(&mut group);
    with_half_busy::<Bb8Pool>(&mut group);
    group.finish();
}

criterion_group!(benches, scaling);
criterion_main!(benches);
