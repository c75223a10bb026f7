//! The `wasmhook` binary: parse the command line, set up logging, run the
//! command, report an error once.

use clap::Parser;
use wasmhook::cli::{Cli, Command};

/// mimalloc instead of glibc's malloc: under load, glibc's allocator took
/// about 17 % of the server's samples (`_int_malloc`, consolidation), with
/// its arena locks among the futex waits (BENCHMARKS.md, issue 13).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `serve` logs at info (text or JSON per its config); the tools stay quiet.
    let (default_level, json) = match &cli.command {
        Command::Serve(args) => ("info", args.config().map(|c| c.json_logs).unwrap_or(false)),
        _ => ("warn", false),
    };
    // lapin logs a returned (unroutable) message whole, body and signature
    // headers included: its errors only, whatever RUST_LOG says.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level))
        .add_directive("lapin=error".parse().expect("a valid directive"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
    match wasmhook::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the whole context chain, outermost first.
            eprintln!("error: {e:#}");
            // The API commands say what failed by their exit code.
            match e.downcast_ref::<wasmhook::client::ClientError>() {
                Some(c) => std::process::ExitCode::from(c.exit_code()),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}
