//! The `dbkeep` binary: parse the command line, run it, map the outcome to an exit code.
//! Exit codes: 0 success, 1 operation failed, 2 bad usage or configuration.

fn main() -> std::process::ExitCode {
    dbkeep::cli::main()
}
