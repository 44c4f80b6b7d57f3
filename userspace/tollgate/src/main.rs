//! Tollgate's binary: parses the command line, loads and validates the config, and calls
//! into the library crates. Exit codes: 0 ok, 1 runtime failure, 64 bad config or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate::config::{Config, ConfigError};

/// sysexits' EX_USAGE: the config or the command line is wrong.
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "tollgate", version, about = "Edge CASB for Linux gateways")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (monitor mode on the default-route interface without --config).
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Enter this network namespace (/run/netns/NAME) before anything else.
        #[arg(long)]
        netns: Option<String>,
    },
    /// Check a config file and print what it means.
    CheckConfig { config: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} mode, {} interfaces)",
                    config.display(),
                    c.mode,
                    c.interfaces.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => bad_config(e),
        },
        Command::Run { config, netns: _ } => {
            let _cfg = match load_config(config.as_deref()) {
                Ok(c) => c,
                Err(e) => return bad_config(e),
            };
            ExitCode::SUCCESS
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Config::embedded_default(),
    }
}

fn bad_config(e: ConfigError) -> ExitCode {
    eprintln!("tollgate: bad config: {e}");
    ExitCode::from(EXIT_BAD_CONFIG)
}
