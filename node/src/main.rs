//! The `unitas` binary: see `unitas --help`.

/// mimalloc returns freed memory to the system more readily than glibc's allocator, whose
/// per-thread arenas kept the node's RSS well above its live data (README, "Performance").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    unitas::cli::main()
}
