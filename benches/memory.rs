//! Host-side heap per idle slot at 4 x 1000 slots, with zero-sized connections.
//! Prints the figure and fails when it is above the 256-byte ceiling.
//! `tests/pool_memory_per_slot.rs` checks the same on every `cargo test`.

#[path = "support/heap.rs"]
mod heap;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|arg| arg == "--list") {
        // Test runners (cargo-nextest with --all-targets) list targets first:
        // answer like criterion, as one benchmark and no test, so they skip it.
        if !args.iter().any(|arg| arg == "--ignored") {
            println!("memory/idle_slot: benchmark");
        }
        return;
    }
    // `cargo bench` passes `--bench`; there is nothing else to choose here.
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
