//! The `vlsbench-host` binary.

use std::process::ExitCode;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VLSBENCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,wasmtime=warn,cranelift=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(vlsbench_host::secrets::RedactingStderr)
        .with_target(false)
        .init();
    vlsbench_host::cli::main()
}
