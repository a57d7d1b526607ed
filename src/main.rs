//! `distillery`: the command line. It parses arguments, builds the op
//! registry and calls the engine; the work happens in the library crates.

mod cli;

fn main() -> std::process::ExitCode {
    restore_default_sigpipe();
    keep_freed_memory();
    cli::main()
}

/// Rust ignores SIGPIPE, so printing to a pipe whose reader has gone (`| head`)
/// fails, and `println!` panics on that. With the default action the process
/// ends quietly instead, as Unix tools do. A stage being computed then is
/// killed like any interrupted stage: the store keeps only finished entries.
fn restore_default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL
    // is a valid action for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A forward pass allocates and frees buffers of tens to hundreds of MB
/// (activations, logits). glibc hands each one above its mmap threshold back
/// to the kernel when freed, and the next is faulted in and zeroed page by
/// page: 10-13% of a CPU forward went there. With the threshold and the
/// trim threshold at their maximum, freed buffers stay in the heap for the
/// next pass (measured: 1 x 512 forward 585 -> 757 tokens/s in f32, see
/// docs/BENCHMARKS.md). The cost: memory freed by one stage is kept by the
/// process for later ones rather than returned to the system.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing in main, before any allocation of note or
    // any other thread; mallopt only changes the allocator's parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, libc::c_int::MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}
