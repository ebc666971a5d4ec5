//! Host-side heap per idle slot at 4 x 1000 slots, with zero-sized connections.
//! Prints the figure and fails when it is above the 256-byte ceiling.
//! `tests/memory_per_slot.rs` checks the same on every `cargo test`.

#[path = "support/heap.rs"]
mod heap;

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter here.
    let (workers, connections) = (4, 1000);
    let per_slot = heap::bytes_per_idle_slot(workers, connections);
    println!(
        "memory/idle_slot: {per_slot:.1} heap bytes per idle slot at {workers}x{connections} \
         (ceiling {})",
        heap::MAX_BYTES_PER_SLOT
    );
    if per_slot > heap::MAX_BYTES_PER_SLOT {
        eprintln!("memory/idle_slot: above the ceiling");
        std::process::exit(1);
    }
}
