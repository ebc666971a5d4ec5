//! Host-side heap per idle slot, counted by a global allocator that keeps a
//! running total of live bytes.
//!
//! Included (by path) by `benches/memory.rs` and `tests/pool_memory_per_slot.rs`:
//! each is a crate of its own, so the counting allocator serves only those two
//! binaries, and the library keeps `#![forbid(unsafe_code)]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use async_worker_pool::{InProcessLauncher, Pool, Transport, WorkerInfo, async_trait};

/// The ceiling the issue sets for one idle slot.
pub const MAX_BYTES_PER_SLOT: f64 = 256.0;

/// `System`, keeping count of the bytes currently allocated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed straight to `System`, which upholds the
// `GlobalAlloc` contract; the counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees about `layout` hold for `System` too.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and `new_size` is valid by the caller's contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated and not yet freed, by anyone in this process.
pub fn live_bytes() -> isize {
    LIVE.load(Relaxed)
}

/// A transport whose connections are zero-sized, so that what is counted is the
/// pool's own state per slot and none of the transport's.
struct ZeroSized;

#[async_trait]
impl Transport for ZeroSized {
    type Conn = ();
    type Request = ();
    type Response = ();
    type Error = std::io::Error;

    async fn connect(&self, _worker: &WorkerInfo) -> Result<(), std::io::Error> {
        Ok(())
    }

    async fn call(&self, _conn: &mut (), _request: ()) -> Result<(), std::io::Error> {
        Ok(())
    }
}

/// Heap bytes that a pool of `workers` x `connections` slots keeps alive once
/// every slot is connected and idle, divided by the number of slots.
///
/// The runtime is built, and a pool of the same shape built and dropped, before
/// the first count: what the runtime keeps for itself after that (its task
/// queues grown by the first connects, its timer wheel) is the runtime's, not the
/// pool's, and would be there for any pool.
pub fn bytes_per_idle_slot(workers: usize, connections: usize) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let build = || async {
        let pool = Pool::builder(ZeroSized, InProcessLauncher)
            .num_workers(workers)
            .max_connections(connections)
            .build()
            .expect("a valid configuration inside a runtime");
        loop {
            let stats = pool.stats();
            if stats.idle == stats.capacity {
                return pool;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    runtime.block_on(async {
        drop(build().await);
        // Let the dropped pool's aborted tasks finish and free their state.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let before = live_bytes();
        let pool = build().await;
        let after = live_bytes();
        let per_slot = (after - before) as f64 / (workers * connections) as f64;
        drop(pool);
        per_slot
    })
}
