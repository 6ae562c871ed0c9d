//! The `seks` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    seks::cli::main()
}
