//! `distillery`: the command line. It parses arguments, builds the op
//! registry and calls the engine; the work happens in the library crates.

mod cli;

fn main() -> std::process::ExitCode {
    restore_default_sigpipe();
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
