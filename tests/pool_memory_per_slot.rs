//! An idle slot costs the host at most 256 heap bytes (zero-sized connections, so
//! the transport's own state is not counted). The one test of this binary: the
//! counting allocator sees the whole process, so nothing else may run beside it.

#[path = "../benches/support/heap.rs"]
mod heap;

#[test]
fn an_idle_slot_costs_at_most_256_heap_bytes() {
    let per_slot = heap::bytes_per_idle_slot(4, 1000);
    assert!(
        per_slot <= heap::MAX_BYTES_PER_SLOT,
        "{per_slot:.1} heap bytes per idle slot at 4x1000"
    );
}
