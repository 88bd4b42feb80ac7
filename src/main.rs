//! The `mcp-alertd` binary: parses the command line, sets up logging, runs
//! the command and maps failures to exit codes (DESIGN §10): 0 success,
//! 2 usage (clap), 78 invalid configuration or rules, 1 anything else.

use std::process::ExitCode;

use clap::Parser;
use mcp_alertd::cli::{self, Cli, EXIT_CONFIG};
use mcp_alertd::config::ConfigError;
use mcp_alertd::engine::RuleSetError;
use mcp_alertd::telemetry;

/// mimalloc: the engine's state is millions of small keys and strings made
/// and dropped per event; glibc's allocator spent a quarter of `replay`'s
/// time consolidating them (README "Performance").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format == cli::LogFormat::Json);
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("panic: {info}");
    }));
    match cli::run(cli, mcp_alertd::app::run) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            if let Some(rules) = err.downcast_ref::<RuleSetError>() {
                eprintln!("mcp-alertd: {rules}");
                return ExitCode::from(EXIT_CONFIG);
            }
            if let Some(formats) = err.downcast_ref::<mcp_alertd::decode::FormatSetError>() {
                eprintln!("mcp-alertd: invalid formats:\n{formats}");
                return ExitCode::from(EXIT_CONFIG);
            }
            if let Some(config) = err.downcast_ref::<ConfigError>() {
                eprintln!("mcp-alertd: {config}");
                return ExitCode::from(EXIT_CONFIG);
            }
            // A closed stdout (`| head`) ends the output, not in failure.
            let broken_pipe = err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("mcp-alertd: {err:#}");
            ExitCode::FAILURE
        }
    }
}
