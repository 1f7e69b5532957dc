//! The `cairn` binary: a thin shell over [`cairn_cli`] so tests drive the real thing.

fn main() -> std::process::ExitCode {
    cairn_cli::main()
}
