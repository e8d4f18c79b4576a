//! `microvm-agent`: everything is in the library (`microvm_agent::cli`), so that tests and the
//! simulator run exactly what this binary runs.

fn main() -> std::process::ExitCode {
    microvm_agent::cli::main(std::env::args_os().skip(1))
}
