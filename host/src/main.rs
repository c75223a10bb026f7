//! The `wasmhook` binary: parse the command line, set up logging, run the
//! command, report an error once.

use clap::Parser;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use wasmhook::cli::{Cli, Command};

/// mimalloc instead of glibc's malloc: under load, glibc's allocator took
/// about 17 % of the server's samples (`_int_malloc`, consolidation), with
/// its arena locks among the futex waits (BENCHMARKS.md, issue 13).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `serve` logs at info (text or JSON per its config), and exports traces
    // when an OTLP endpoint is configured; the tools stay quiet.
    let config = match &cli.command {
        Command::Serve(args) => args.config().ok(),
        _ => None,
    };
    let default_level = if config.is_some() { "info" } else { "warn" };
    let json = config.as_ref().is_some_and(|c| c.json_logs);
    // lapin logs a returned (unroutable) message whole, body and signature
    // headers included: its errors only, whatever RUST_LOG says. The spans
    // kept for traces are never logs.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level))
        .add_directive("lapin=error".parse().expect("a valid directive"))
        .add_directive(
            format!("{}=off", wasmhook::traces::TARGET)
                .parse()
                .expect("a valid directive"),
        );
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        logs.json().with_filter(filter).boxed()
    } else {
        logs.with_filter(filter).boxed()
    };
    let (traces, exporter) = match config.as_ref().and_then(|c| {
        c.otlp_endpoint
            .as_deref()
            .map(|e| wasmhook::traces::layer(e, &c.service_name, c.sample_percent))
    }) {
        Some(Ok((layer, exporter))) => {
            let only_traces = tracing_subscriber::filter::Targets::new()
                .with_target(wasmhook::traces::TARGET, tracing::Level::TRACE);
            (Some(layer.with_filter(only_traces)), Some(exporter))
        }
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    let result = wasmhook::cli::run(cli).await;
    if let Some(exporter) = exporter {
        // The spans of the last moments, sent before the process ends.
        tokio::task::spawn_blocking(move || exporter.shutdown())
            .await
            .ok();
    }
    match result {
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
