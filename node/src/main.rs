//! The `unitas` binary: see `unitas --help`.

fn main() -> std::process::ExitCode {
    unitas::cli::main()
}
