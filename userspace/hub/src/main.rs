//! `tollgate-hub`: enrolls gateways, publishes signed policy bundles to them and collects what
//! they discovered. Every command takes `--config F`; the CLI commands open the hub's database
//! directly, so they work next to a running hub (SQLite in WAL mode) or against PostgreSQL.

mod alerting;
mod config;
mod connectors;
mod console;
mod db;
mod pki;
mod server;
mod writer;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::db::Db;

/// The top-level sections a bundle may set; the rest of a gateway's config stays local.
pub const BUNDLE_SECTIONS: &[&str] = &[
    "apps",
    "tag_rules",
    "session_policies",
    "access_policies",
    "custom_apps",
    "activity_policies",
    "app_discovery_policies",
    "connectors",
];

#[derive(Parser)]
#[command(name = "tollgate-hub", version, about = "Tollgate's management hub")]
struct Cli {
    /// The hub's TOML config (default: the embedded one).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gateways and the admin API.
    Run {
        /// Log lines as text (no colours unless on a terminal: journald-friendly) or JSON.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Enrollment tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Publish a policy bundle (the gateway config's TOML) for every site or one.
    Publish {
        file: PathBuf,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The fleet: site, version, last seen, bundle revision and outcome, health.
    Gateways {
        #[arg(long)]
        json: bool,
    },
    /// One gateway.
    Gateway {
        #[command(subcommand)]
        command: GatewayCommand,
    },
    /// Fleet-wide discovered apps with the per-gateway breakdown.
    Apps {
        #[arg(long)]
        json: bool,
    },
    /// Published bundles, newest first.
    Bundles {
        #[arg(long)]
        json: bool,
    },
    /// The audit trail, newest first.
    Audit {
        #[arg(long)]
        json: bool,
    },
    /// App connectors (`[[connectors]]`): list, status (the default), or run one poll now.
    Connectors {
        #[command(subcommand)]
        command: Option<ConnectorsCommand>,
        #[arg(long, global = true)]
        json: bool,
    },
    /// Web console accounts (`/console/` on the hub's HTTPS port).
    User {
        #[command(subcommand)]
        command: UserCommand,
        #[arg(long, global = true)]
        json: bool,
    },
    /// API tokens for scripts: each belongs to a console account and acts on the admin API
    /// (`/v1/admin/*`) with its role (`read-only`: GET only).
    ApiToken {
        #[command(subcommand)]
        command: ApiTokenCommand,
        #[arg(long, global = true)]
        json: bool,
    },
    /// Alerts: those the hub's `[[activity_policies]]` raised over the connectors'
    /// activities (`ID`), and those the gateways sent up (`GATEWAY:ID`), newest first.
    Alerts {
        #[command(subcommand)]
        command: Option<AlertsCommand>,
        #[arg(long, global = true)]
        json: bool,
    },
    /// Activity records the connectors brought in, newest first, each with the vendor's
    /// event id (`vendor_id`).
    Activity {
        #[arg(long)]
        json: bool,
        /// Only this connector's records.
        #[arg(long)]
        source: Option<String>,
        /// At most this many records.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
}

#[derive(Subcommand)]
enum ConnectorsCommand {
    /// The configured connectors (never their secrets).
    List,
    /// Health, last success, cursor position, lag, events today, throttled count, errors.
    Status,
    /// One poll of connector NAME now, from this process.
    Run { name: String },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Adds an account (or sets its password and role); the password is read from the first
    /// line of standard input, or of `--password-file`. Its sessions end.
    Add {
        name: String,
        /// `admin` (changes tags, policies, alerts) or `read-only`.
        #[arg(long, default_value = "read-only")]
        role: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// The accounts and their roles.
    List,
    /// Removes an account and ends its sessions.
    Remove { name: String },
}

#[derive(Subcommand)]
enum ApiTokenCommand {
    /// A new token for account USER, printed once (the database keeps only its SHA-256).
    Create {
        #[arg(long)]
        user: String,
        /// A label to tell tokens apart (at most 64 characters).
        #[arg(long, default_value = "")]
        name: String,
        /// Days until it expires (1..=3650); without it, it lasts until revoked.
        #[arg(long)]
        expires_days: Option<i64>,
    },
    /// Every token: id, account, label, state, created, expires, last used (never the secret).
    List,
    /// Refuse token ID from now on.
    Revoke { id: i64 },
}

#[derive(Subcommand)]
enum AlertsCommand {
    /// Every alert, newest first (the default).
    List,
    /// One alert: `ID` (the hub's) or `GATEWAY:ID` (a gateway's).
    Show { alert: String },
    /// Marks an alert resolved at the hub.
    Resolve {
        alert: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Marks an alert dismissed (a false positive) at the hub.
    Dismiss {
        alert: String,
        #[arg(long)]
        comment: Option<String>,
    },
}

impl From<Option<AlertsCommand>> for alerting::AlertsAction {
    fn from(c: Option<AlertsCommand>) -> Self {
        match c {
            None | Some(AlertsCommand::List) => alerting::AlertsAction::List,
            Some(AlertsCommand::Show { alert }) => alerting::AlertsAction::Show(alert),
            Some(AlertsCommand::Resolve { alert, comment }) => alerting::AlertsAction::Set(
                alert,
                tollgate_activity::AlertStatus::Resolved,
                comment,
            ),
            Some(AlertsCommand::Dismiss { alert, comment }) => alerting::AlertsAction::Set(
                alert,
                tollgate_activity::AlertStatus::Dismissed,
                comment,
            ),
        }
    }
}

#[derive(Subcommand)]
enum TokenCommand {
    /// A one-time enrollment token for a site; it also pins the hub's CA.
    Create {
        #[arg(long)]
        site: String,
        /// How long it stays valid: `30m`, `24h`, `7d`.
        #[arg(long, default_value = "24h")]
        ttl: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum GatewayCommand {
    /// Refuse this gateway from now on.
    Revoke { id: String },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Text without colours unless on a terminal (journald-friendly), or JSON lines.
    let json = matches!(
        cli.command,
        Command::Run {
            log_format: LogFormat::Json
        }
    );
    tollgate_metrics::logging::init("TOLLGATE_HUB_LOG", json, true);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate-hub: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(real_main(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-hub: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    make_private_dir(&config.state_dir)?;
    let db = Db::open(&config.database).await?;
    match cli.command {
        Command::Run { .. } => {
            raise_fd_limit();
            let keys = pki::load_or_create(&db).await?;
            let admin_token = admin_token(&config.admin_token_file)?;
            let registry = tollgate_connectors::Registry::default();
            let _connectors = connectors::spawn(&db, &config.connectors, &registry);
            let _bundled = tokio::spawn(connectors::supervise_bundled(
                db.clone(),
                config.connectors.clone(),
                registry.clone(),
            ));
            let _alerting = alerting::spawn(
                &db,
                registry,
                &config.state_dir,
                &config.activity_policies,
                &config.alert_sinks,
                &config.anomaly,
                &config.geoip,
            )?;
            server::run(config, db, keys, admin_token).await
        }
        Command::Token {
            command: TokenCommand::Create { site, ttl, json },
        } => {
            if site.trim().is_empty() {
                bail!("--site must not be empty");
            }
            let ttl = parse_duration(&ttl)?;
            let keys = pki::load_or_create(&db).await?;
            let token = tollgate_sync::token::EnrollmentToken::generate(&keys.ca_der)?;
            let expires_at = db::now().saturating_add(ttl);
            db.create_token(&token.secret_hash(), &site, expires_at)
                .await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "token": token.to_string(),
                        "site": site,
                        "expires_at": rfc3339(expires_at),
                    })
                );
            } else {
                println!("{token}");
                eprintln!("site {site}, valid until {}", rfc3339(expires_at));
            }
            Ok(())
        }
        Command::Publish { file, site, json } => {
            let policy = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            validate_policy(&policy).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let keys = pki::load_or_create(&db).await?;
            let revision = db.publish(&keys.signer, site.as_deref(), &policy).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "revision": revision, "site": site })
                );
            } else {
                println!(
                    "published revision {revision} for {}",
                    site.map_or("every site".to_string(), |s| format!("site {s}"))
                );
            }
            Ok(())
        }
        Command::Gateways { json } => {
            let gateways = db.gateways().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&gateways)?);
                return Ok(());
            }
            println!(
                "{:<20} {:<12} {:<20} {:<10} {:<20} {:>8}  BUNDLE",
                "ID", "SITE", "HOST", "VERSION", "LAST SEEN", "REVISION"
            );
            for g in gateways {
                let outcome = match (&g.revoked_at, &g.report_outcome, &g.report_reason) {
                    (Some(at), _, _) => format!("revoked {}", rfc3339(*at)),
                    (None, Some(o), Some(r)) => {
                        format!("{o} r{}: {r}", g.report_revision.unwrap_or_default())
                    }
                    (None, Some(o), None) => {
                        format!("{o} r{}", g.report_revision.unwrap_or_default())
                    }
                    _ => "-".into(),
                };
                println!(
                    "{:<20} {:<12} {:<20} {:<10} {:<20} {:>8}  {outcome}",
                    g.id,
                    g.site,
                    g.hostname,
                    g.version,
                    g.last_seen.map_or("never".into(), rfc3339),
                    g.applied_revision
                );
            }
            Ok(())
        }
        Command::Gateway {
            command: GatewayCommand::Revoke { id },
        } => {
            if db.revoke(&id).await? {
                println!("gateway {id} revoked");
                Ok(())
            } else {
                bail!("no gateway {id} (or already revoked)")
            }
        }
        Command::Apps { json } => {
            let catalog = tollgate_catalog::Catalog::builtin(chrono::Utc::now()).ok();
            let apps = db.apps(catalog.as_ref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&apps)?);
                return Ok(());
            }
            println!(
                "{:<24} {:>5} {:>14} {:>14} {:>8} {:>8} {:>6} {:>8}",
                "APP", "RISK", "BYTES UP", "BYTES DOWN", "FLOWS", "BLOCKED", "USERS", "GATEWAYS"
            );
            for a in apps {
                println!(
                    "{:<24} {:>5} {:>14} {:>14} {:>8} {:>8} {:>6} {:>8}",
                    a.app_id,
                    a.risk_score.map_or("-".into(), |s| format!("{s:.1}")),
                    a.bytes_up,
                    a.bytes_down,
                    a.flows,
                    a.blocked_flows,
                    a.users,
                    a.gateways
                );
            }
            Ok(())
        }
        Command::Bundles { json } => {
            let bundles = db.bundles().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&bundles)?);
                return Ok(());
            }
            println!(
                "{:>8} {:<16} {:<22} {:>8}",
                "REVISION", "SITE", "PUBLISHED", "BYTES"
            );
            for b in bundles {
                println!(
                    "{:>8} {:<16} {:<22} {:>8}",
                    b.revision,
                    b.site.as_deref().unwrap_or("*"),
                    rfc3339(b.published_at),
                    b.policy_bytes
                );
            }
            Ok(())
        }
        Command::Connectors { command, json } => {
            connectors_command(&config, &db, command, json).await
        }
        Command::Activity {
            json,
            source,
            limit,
        } => activity_command(&db, json, source.as_deref(), limit).await,
        Command::User { command, json } => user_command(&db, command, json).await,
        Command::ApiToken { command, json } => api_token_command(&db, command, json).await,
        Command::Alerts { command, json } => {
            alerting::alerts_command(&config.state_dir, &db, command.into(), json).await
        }
        Command::Audit { json } => {
            let audit = db.audit(1000).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&audit)?);
                return Ok(());
            }
            for a in audit {
                println!(
                    "{} {:<8} {:<20} {:<18} {}",
                    rfc3339(a.at),
                    a.source,
                    a.gateway_id.as_deref().unwrap_or("-"),
                    a.kind,
                    a.detail
                );
            }
            Ok(())
        }
    }
}

async fn connectors_command(
    config: &Config,
    db: &Db,
    command: Option<ConnectorsCommand>,
    json: bool,
) -> anyhow::Result<()> {
    use crate::connectors::term;
    match command {
        Some(ConnectorsCommand::List) => {
            let views: Vec<_> = config
                .connectors
                .iter()
                .map(connectors::list_view)
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
                return Ok(());
            }
            println!(
                "{:<24} {:<7} {:>6}  {:<10} BASE URL",
                "NAME", "KIND", "EVERY", "SECRET"
            );
            for v in views {
                println!(
                    "{:<24} {:<7} {:>5}s  {:<10} {}",
                    v.name,
                    v.kind,
                    v.poll_interval_secs,
                    v.token_file
                        .as_deref()
                        .map_or(v.secret.clone(), |f| format!("file {f}")),
                    v.base_url
                );
            }
            Ok(())
        }
        None | Some(ConnectorsCommand::Status) => {
            let views = connectors::status_views(db, &config.connectors).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
                return Ok(());
            }
            println!(
                "{:<24} {:<7} {:<13} {:<21} {:>8} {:>8} {:>9} {:>7}  LAST ERROR / CURSOR",
                "NAME", "KIND", "HEALTH", "LAST SUCCESS", "LAG S", "TODAY", "THROTTLED", "ERRORS"
            );
            for v in views {
                println!(
                    "{:<24} {:<7} {:<13} {:<21} {:>8} {:>8} {:>9} {:>7}  {}",
                    v.name,
                    v.kind,
                    v.health,
                    v.last_success.as_deref().unwrap_or("never"),
                    v.lag_secs.map_or("-".into(), |l| l.to_string()),
                    v.events_today,
                    v.throttled,
                    v.errors,
                    term(
                        v.last_error
                            .as_deref()
                            .or(v.cursor.as_deref())
                            .unwrap_or("-")
                    )
                );
            }
            Ok(())
        }
        Some(ConnectorsCommand::Run { name }) => {
            let Some(s) = config.connectors.iter().find(|s| s.name == name) else {
                bail!("no connector {name:?} in the config");
            };
            let (report, status) = connectors::run_once(db, s.clone()).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "name": name,
                        "pages": report.pages,
                        "new": report.new,
                        "duplicates": report.duplicates,
                        "dropped": report.dropped,
                        "throttled": report.throttled,
                        "caught_up": report.caught_up,
                        "cursor": status.cursor,
                    })
                );
            } else {
                println!(
                    "{name}: {} new records, {} read again, {} dropped, {} pages{}",
                    report.new,
                    report.duplicates,
                    report.dropped,
                    report.pages,
                    if report.caught_up {
                        ", caught up"
                    } else {
                        ", more to read"
                    }
                );
            }
            Ok(())
        }
    }
}

async fn activity_command(
    db: &Db,
    json: bool,
    source: Option<&str>,
    limit: i64,
) -> anyhow::Result<()> {
    use crate::connectors::term;
    let records = db.activities(source, limit.clamp(1, 1_000_000)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<16} {:<28} {:<16} {:<24} {:<8} {:<24} VENDOR ID",
        "TIME", "SOURCE", "USER", "IP", "ACTION", "RESULT", "OBJECT"
    );
    for a in records {
        println!(
            "{:<20} {:<16} {:<28} {:<16} {:<24} {:<8} {:<24} {}",
            a.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            term(a.connector.as_deref().unwrap_or("-")),
            term(a.user.as_deref().unwrap_or("-")),
            a.ip.map_or("-".into(), |ip| ip.to_string()),
            term(a.action.as_deref().unwrap_or(a.activity.as_str())),
            a.result.as_str(),
            term(a.object.as_deref().unwrap_or("-")),
            term(a.vendor_id.as_deref().unwrap_or("-"))
        );
    }
    Ok(())
}

/// Every held long poll is a connection: lift the soft descriptor limit (often 1024) to the
/// hard one so a hub can hold tens of thousands of gateways.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "cannot raise the descriptor limit");
    }
}

/// Refuses a bundle that sets anything but the sections a bundle may set; the gateway checks
/// the rest when it compiles the bundle.
pub fn validate_policy(policy: &str) -> Result<(), String> {
    let table: toml::Table = policy
        .parse()
        .map_err(|e: toml::de::Error| format!("not valid TOML: {}", e.message()))?;
    for key in table.keys() {
        if !BUNDLE_SECTIONS.contains(&key.as_str()) {
            return Err(format!(
                "section `{key}` cannot be set by a bundle (a bundle may set: {})",
                BUNDLE_SECTIONS.join(", ")
            ));
        }
    }
    connectors::from_bundle(policy)?;
    Ok(())
}

/// `tollgate-hub user add|list|remove`.
async fn user_command(db: &Db, command: UserCommand, json: bool) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            name,
            role,
            password_file,
        } => {
            let Some(role) = console::store::Role::parse(&role) else {
                bail!("--role must be admin or read-only, not {role:?}");
            };
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
            {
                bail!("an account name is 1-64 of a-z A-Z 0-9 . _ @ -");
            }
            let text = match &password_file {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("reading the password from standard input")?;
                    line
                }
            };
            let password = text.lines().next().unwrap_or("").to_string();
            if password.chars().count() < 12 {
                bail!("the password must have at least 12 characters");
            }
            let hash = console::hash_password(&password)?;
            db.console_user_put(&name, role, &hash).await?;
            db.audit_hub(
                "console_user",
                None,
                &format!("account {name} set with role {}", role.as_str()),
            )
            .await?;
            println!("account {name}: {}", role.as_str());
        }
        UserCommand::List => {
            let users = db.console_users().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                for u in users {
                    println!(
                        "{:<32} {:<10} {}",
                        u.name,
                        u.role.as_str(),
                        rfc3339(u.created_at)
                    );
                }
            }
        }
        UserCommand::Remove { name } => {
            if !db.console_user_remove(&name).await? {
                bail!("no account {name:?}");
            }
            db.audit_hub("console_user", None, &format!("account {name} removed"))
                .await?;
            println!("account {name} removed");
        }
    }
    Ok(())
}

/// `tollgate-hub api-token create|list|revoke`.
async fn api_token_command(db: &Db, command: ApiTokenCommand, json: bool) -> anyhow::Result<()> {
    use crate::console::tokens;
    match command {
        ApiTokenCommand::Create {
            user,
            name,
            expires_days,
        } => {
            if !tokens::valid_label(&name) {
                bail!(
                    "--name is at most {} characters without control characters",
                    tokens::MAX_LABEL
                );
            }
            let expires_at = match expires_days {
                None => None,
                Some(d) if (1..=tokens::MAX_EXPIRES_DAYS).contains(&d) => {
                    Some(db::now().saturating_add(d.saturating_mul(86_400)))
                }
                Some(d) => bail!(
                    "--expires-days must be 1..={}, not {d}",
                    tokens::MAX_EXPIRES_DAYS
                ),
            };
            let Some((id, secret)) = db.api_token_create(&user, &name, expires_at).await? else {
                bail!("no account {user:?} (add it with `tollgate-hub user add`)");
            };
            let until = expires_at.map(rfc3339);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "id": id,
                        "token": secret,
                        "user": user,
                        "name": name,
                        "expires_at": until,
                    })
                );
            } else {
                println!("{secret}");
                eprintln!(
                    "API token {id} for account {user}, {}; it is shown only now",
                    until.map_or("valid until revoked".into(), |u| format!("valid until {u}"))
                );
            }
        }
        ApiTokenCommand::List => {
            let rows = db.api_tokens().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!(
                "{:>6} {:<24} {:<10} {:<10} {:<20} {:<20} {:<20} LABEL",
                "ID", "ACCOUNT", "ROLE", "STATE", "CREATED", "EXPIRES", "LAST USED"
            );
            for t in rows {
                println!(
                    "{:>6} {:<24} {:<10} {:<10} {:<20} {:<20} {:<20} {}",
                    t.id,
                    t.user,
                    t.role.map_or("-", console::store::Role::as_str),
                    t.state,
                    rfc3339(t.created_at),
                    t.expires_at.map_or("never".into(), rfc3339),
                    t.last_used.map_or("never".into(), rfc3339),
                    t.label
                );
            }
        }
        ApiTokenCommand::Revoke { id } => {
            if !db.api_token_revoke(id).await? {
                bail!("no API token {id} (or already revoked)");
            }
            println!("API token {id} revoked");
        }
    }
    Ok(())
}

/// `30s`, `30m`, `24h`, `7d` in seconds.
fn parse_duration(text: &str) -> anyhow::Result<i64> {
    let text = text.trim();
    let split = text.len().saturating_sub(1);
    let (number, unit) = (
        text.get(..split).unwrap_or(""),
        text.get(split..).unwrap_or(""),
    );
    let n: i64 = number
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .with_context(|| format!("bad duration {text:?} (expected e.g. 30m, 24h, 7d)"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("bad duration {text:?} (expected e.g. 30m, 24h, 7d)"),
    };
    Ok(n.saturating_mul(scale))
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).map_or_else(
        || unix.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

fn make_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// The admin token, made (0600) on the first run.
fn admin_token(path: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => bail!("{} is empty", path.display()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("reading {}", path.display()));
        }
        Err(_) => {}
    }
    let token = pki::random_hex(32)?;
    if let Some(parent) = path.parent() {
        make_private_dir(parent)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{token}")?;
    eprintln!("tollgate-hub: admin token written to {}", path.display());
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_policies() {
        assert_eq!(parse_duration("24h").unwrap(), 86_400);
        assert_eq!(parse_duration("30m").unwrap(), 1_800);
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        for bad in ["", "h", "0h", "-1h", "24", "24x", "1é"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(validate_policy("[apps.dropbox]\ntag = \"unsanctioned\"\n").is_ok());
        let e = validate_policy("[daemon]\nx = 1\n").unwrap_err();
        assert!(e.contains("`daemon`"), "{e}");
        assert!(validate_policy("[apps").is_err());
    }
}
