use std::process::ExitCode;

use clap::Parser;
use paydedup_processor::cli::{Cli, Command};
use paydedup_processor::config::{LogFormat, RunConfig};
use paydedup_processor::{reconcile, state_cmd, wiring};

/// mimalloc instead of glibc's allocator: a batch's buffers are allocated on the loop's
/// thread and freed on the commit thread, and glibc's malloc, free and arena
/// consolidation were 15–17 % of the samples on the peers' input (`perf record`,
/// docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::State(args) => {
            print!("{}", state_cmd::run(&args)?);
            Ok(())
        }
        Command::Reconcile(_) => {
            // Parsed again on its own so the config file is layered under the flags, as
            // for `run`. Its exit code tells a wrong output (1) from one it could not
            // check (2), which `run`'s error path cannot.
            std::process::exit(i32::from(reconcile::main(std::env::args_os().skip(2))))
        }
        Command::Healthcheck(args) => paydedup_processor::health::probe(&args),
        Command::Restore(_) => {
            let config = RunConfig::parse_layered(std::env::args_os().skip(2))?;
            init_logging(config.process.log_format);
            let report = wiring::restore(&config)?;
            println!("{report}");
            Ok(())
        }
        Command::Run(_) => {
            // Parsed again on its own so the config file can be layered under the flags.
            let config = RunConfig::parse_layered(std::env::args_os().skip(2))?;
            init_logging(config.process.log_format);
            let exit = wiring::run(&config)?;
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
