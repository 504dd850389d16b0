use std::process::ExitCode;

use clap::Parser;
use paydedup_processor::cli::{Cli, Command};
use paydedup_processor::config::Settings;
use paydedup_processor::{consumer, health, metrics, reconcile, shutdown, state_cmd};

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::State(args) => {
            print!("{}", state_cmd::run(&args)?);
            Ok(())
        }
        Command::Reconcile(args) => {
            let (table, ok) = reconcile::run(&args)?;
            print!("{table}");
            if !ok {
                anyhow::bail!("reconciliation failed");
            }
            Ok(())
        }
        Command::Run(args) => {
            let settings = Settings::resolve(&args)?;
            init_logging(&settings.log_format);
            let shutdown = shutdown::Shutdown::install()?;
            let metrics = metrics::Metrics::new();
            let ready = health::Readiness::default();
            let addr = health::serve(settings.metrics_addr, metrics.clone(), ready.clone())?;
            tracing::info!(metrics = %addr, brokers = %settings.brokers, topic = %settings.topic, "Processor starting.");
            let exit = consumer::run(&settings, metrics, ready, shutdown)?;
            tracing::info!(reason = ?exit, "Processor stopped cleanly.");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
