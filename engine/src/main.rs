//! `btx`: the engine's command line (`btx::cli`).

fn main() -> std::process::ExitCode {
    btx::cli::main()
}
