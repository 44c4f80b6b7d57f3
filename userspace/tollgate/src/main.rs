//! Tollgate's binary: parses the command line, loads and validates the config, and calls
//! into the library. Exit codes: 0 ok, 1 runtime failure, 64 bad config or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tollgate::commands::{self, Failure, OutputFormat};

#[derive(Parser)]
#[command(name = "tollgate", version, about = "Edge CASB for Linux gateways")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a client command finds the daemon: the config's control_socket, or a socket path.
#[derive(Args, Clone)]
struct DaemonAddr {
    /// Config file whose control_socket to use (default: the embedded default's).
    #[arg(long, conflicts_with = "control")]
    config: Option<PathBuf>,
    /// The control socket path.
    #[arg(long)]
    control: Option<PathBuf>,
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
        /// Log lines as text (no colours unless on a terminal: journald-friendly) or JSON.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// The live flow table of a running daemon.
    Flows {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        daemon: DaemonAddr,
    },
    /// The cloud apps a running daemon discovered.
    Apps {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        daemon: DaemonAddr,
    },
    /// A running daemon's counters.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        daemon: DaemonAddr,
    },
    /// Stop a running daemon: detach its programs and remove its pins.
    Stop {
        #[command(flatten)]
        daemon: DaemonAddr,
        /// The instance's namespace (as given to `run --netns`), for removing the pins
        /// when no daemon answers.
        #[arg(long)]
        netns: Option<String>,
    },
    /// Change an app's settings on a running daemon.
    App {
        #[command(subcommand)]
        action: AppAction,
    },
    /// Offline Cloud Discovery from pcap/pcapng files and firewall/proxy logs.
    Discover {
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormatArg,
        /// List every flow / transaction too.
        #[arg(long)]
        flows: bool,
        /// Print only `flows=N`, `sni_flows=N` and `proc_ms=X` (for benchmark harnesses).
        #[arg(long)]
        summary: bool,
        /// Write the report here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Config with users, custom apps, tags and custom log formats.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Threads a large plain log file is read on, in parts, and a large capture's flows
        /// are followed on, in shards (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Continuous log collection in the foreground (the config's `[collect]` section):
    /// syslog over UDP/TCP/TLS and watched directories into periodic discovery reports.
    Collect {
        #[arg(long)]
        config: PathBuf,
    },
    /// The cloud app catalog.
    Catalog {
        #[command(subcommand)]
        action: CatalogAction,
        /// Config with custom apps, weights and overrides.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// Export decisions for other devices.
    Export {
        #[command(subcommand)]
        what: ExportWhat,
    },
    /// The session proxy's CA.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Check a config file and print what it means.
    CheckConfig { config: PathBuf },
    /// The recent activity log of a running daemon (oldest first).
    Activity {
        #[arg(long)]
        json: bool,
        /// From this time on: RFC 3339, or an age like 15m, 2h, 7d.
        #[arg(long)]
        since: Option<String>,
        /// Only this user (case-insensitive).
        #[arg(long)]
        user: Option<String>,
        /// Only this app id.
        #[arg(long)]
        app: Option<String>,
        /// The newest N matching records.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        daemon: DaemonAddr,
    },
    /// Alerts raised by activity policies: list, show, resolve, dismiss.
    Alerts {
        #[command(subcommand)]
        action: Option<AlertsCmd>,
        #[arg(long, global = true)]
        json: bool,
        /// Config file whose control_socket to use (default: the embedded default's).
        #[arg(long, global = true, conflicts_with = "control")]
        config: Option<PathBuf>,
        /// The control socket path.
        #[arg(long, global = true)]
        control: Option<PathBuf>,
    },
    /// Print the URL (with this run's token) of the daemon's read-only web console
    /// (`[console] listen`); from another machine, forward the port with `ssh -L` first.
    Console {
        /// The daemon's config (its [console] listen and state_dir).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Join a management hub with a one-time token from `tollgate-hub token create`.
    Enroll {
        /// The hub, e.g. https://hub.example.net:9443
        url: String,
        token: String,
        /// The config whose state_dir keeps the gateway's key and certificate.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AlertsCmd {
    /// Every alert kept (the default).
    List,
    /// One alert and the activities that prove it.
    Show { id: u64 },
    /// Mark an alert resolved; the next match opens a new one.
    Resolve {
        id: u64,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Mark an alert dismissed (a false positive); the next match opens a new one.
    Dismiss {
        id: u64,
        #[arg(long)]
        comment: Option<String>,
    },
}

#[derive(Subcommand)]
enum CaAction {
    /// Print the CA certificate (PEM) for clients to trust; creates the CA if there is none.
    Export {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AppAction {
    /// Tag an app (sanctioned, unsanctioned, monitored, or a custom tag); persists.
    Tag {
        app_id: String,
        tag: String,
        #[command(flatten)]
        daemon: DaemonAddr,
    },
}

#[derive(Subcommand)]
enum CatalogAction {
    /// Every app: id, name, category, domains, risk score.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One app, its risk score and how it was made.
    Show {
        app_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Apps whose name, id or domain contains TEXT.
    Search {
        text: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ExportWhat {
    /// The unsanctioned apps as a blocklist.
    Blocklist {
        #[arg(long, value_enum)]
        format: BlocklistFormatArg,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormatArg {
    Table,
    Json,
    Csv,
    Html,
}

#[derive(Clone, Copy, ValueEnum)]
enum BlocklistFormatArg {
    Nft,
    Squid,
    PaloaltoEdl,
    Domains,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Two glibc allocator settings, set before any other thread exists. An admin's
/// `MALLOC_MMAP_THRESHOLD_` or `MALLOC_ARENA_MAX` wins over each.
///
/// - The mmap threshold: glibc serves an allocation from the heap unless it is at least
///   `M_MMAP_THRESHOLD`, and raises that threshold (up to 32 MiB) each time a large block is
///   freed: after a while the session proxy's inspected bodies (up to a MiB each, freed when a
///   transfer ends) all live in the heap and leave it fragmented. Fixed at 256 KiB, they get
///   mappings of their own that go back to the kernel when freed: 1,000 concurrent inspected
///   1 MiB downloads peak at 73 MiB instead of 93 MiB (`tests/bench/proxy_memory.sh`, which
///   sets the same values).
/// - One arena: glibc gives each thread that allocates under contention an arena of its own
///   (up to eight per core), and the proxy's per-connection buffers, freed on one worker and
///   allocated on another, leave free memory stranded in each. One arena peaks about 3 MiB
///   lower in the same benchmark at the same request rate; small allocations still come from
///   each thread's cache without the lock. For the daemon only (`one_arena`): the offline
///   commands that work on every core (`discover`) allocate from all their threads at once,
///   and with one arena they wait on its lock (an 857 MB capture on two threads: 1.19 s
///   instead of 0.70 s, slower than on one).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator(one_arena: bool) {
    for (admin_var, param, value) in [
        ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 256 * 1024),
        ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 1),
    ] {
        if std::env::var_os(admin_var).is_none() && (one_arena || param != libc::M_ARENA_MAX) {
            // SAFETY: mallopt only sets an allocator parameter; this runs in main before
            // any other thread exists (parsing the command line starts none).
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator(_one_arena: bool) {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tune_allocator(matches!(cli.command, Command::Run { .. }));
    let result = match cli.command {
        Command::CheckConfig { config } => commands::check_config(&config),
        Command::Console { config } => commands::console(config.as_deref()),
        Command::Enroll { url, token, config } => commands::enroll(config.as_deref(), &url, &token),
        Command::Run {
            config,
            netns,
            log_format,
        } => commands::run_daemon(
            config.as_deref(),
            netns.as_deref(),
            log_format == LogFormat::Json,
        ),
        Command::Flows { json, daemon } => commands::flows(
            daemon.config.as_deref(),
            daemon.control.as_deref(),
            out(json),
        ),
        Command::Apps { json, daemon } => commands::apps(
            daemon.config.as_deref(),
            daemon.control.as_deref(),
            out(json),
        ),
        Command::Status { json, daemon } => commands::status(
            daemon.config.as_deref(),
            daemon.control.as_deref(),
            out(json),
        ),
        Command::Activity {
            json,
            since,
            user,
            app,
            limit,
            daemon,
        } => since
            .as_deref()
            .map(commands::parse_since)
            .transpose()
            .and_then(|since| {
                commands::activity(
                    daemon.config.as_deref(),
                    daemon.control.as_deref(),
                    tollgate::alerting::ActivityQuery {
                        since,
                        user,
                        app,
                        limit: Some(limit),
                    },
                    out(json),
                )
            }),
        Command::Alerts {
            action,
            json,
            config,
            control,
        } => {
            use tollgate_activity::AlertStatus;
            let action = match action.unwrap_or(AlertsCmd::List) {
                AlertsCmd::List => commands::AlertsAction::List,
                AlertsCmd::Show { id } => commands::AlertsAction::Show(id),
                AlertsCmd::Resolve { id, comment } => {
                    commands::AlertsAction::Set(id, AlertStatus::Resolved, comment)
                }
                AlertsCmd::Dismiss { id, comment } => {
                    commands::AlertsAction::Set(id, AlertStatus::Dismissed, comment)
                }
            };
            commands::alerts(config.as_deref(), control.as_deref(), action, out(json))
        }
        Command::Stop { daemon, netns } => commands::stop(
            daemon.config.as_deref(),
            daemon.control.as_deref(),
            netns.as_deref(),
        ),
        Command::App {
            action:
                AppAction::Tag {
                    app_id,
                    tag,
                    daemon,
                },
        } => commands::tag(
            daemon.config.as_deref(),
            daemon.control.as_deref(),
            &app_id,
            &tag,
        ),
        Command::Discover {
            format,
            flows,
            summary,
            output,
            config,
            threads,
            files,
        } => commands::discover(&commands::DiscoverArgs {
            format: match format {
                ReportFormatArg::Table => "table",
                ReportFormatArg::Json => "json",
                ReportFormatArg::Csv => "csv",
                ReportFormatArg::Html => "html",
            },
            flows,
            summary,
            output: output.as_deref(),
            config: config.as_deref(),
            threads,
            files: &files,
        }),
        Command::Collect { config } => commands::collect(&config),
        Command::Catalog { action, config } => match action {
            CatalogAction::List { json } => commands::catalog_list(config.as_deref(), out(json)),
            CatalogAction::Show { app_id, json } => {
                commands::catalog_show(config.as_deref(), &app_id, out(json))
            }
            CatalogAction::Search { text, json } => {
                commands::catalog_search(config.as_deref(), &text, out(json))
            }
        },
        Command::Ca {
            action: CaAction::Export { config },
        } => commands::ca_export(config.as_deref()),
        Command::Export {
            what: ExportWhat::Blocklist { format, config },
        } => commands::export_blocklist(
            config.as_deref(),
            match format {
                BlocklistFormatArg::Nft => tollgate_policy::BlocklistFormat::Nft,
                BlocklistFormatArg::Squid => tollgate_policy::BlocklistFormat::Squid,
                BlocklistFormatArg::PaloaltoEdl => tollgate_policy::BlocklistFormat::PaloaltoEdl,
                BlocklistFormatArg::Domains => tollgate_policy::BlocklistFormat::Domains,
            },
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("tollgate: bad config: {e}");
            ExitCode::from(commands::EXIT_BAD_CONFIG)
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("tollgate: {msg}");
            ExitCode::from(commands::EXIT_BAD_CONFIG)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("tollgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn out(json: bool) -> OutputFormat {
    if json {
        OutputFormat::Json
    } else {
        OutputFormat::Table
    }
}
