//! `distillery`: the command line. It parses arguments, builds the op
//! registry and calls the engine; the work happens in the library crates.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
