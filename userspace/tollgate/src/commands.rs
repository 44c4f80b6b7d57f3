//! What each subcommand does, callable from tests. Each returns a [`Failure`] that says
//! whether the config or the usage was wrong (exit 64) or something failed at run time.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tollgate_catalog::{AppOverride, Catalog};
use tollgate_discovery::users::Users;
use tollgate_policy::{BlocklistFormat, TagBook, TagStore};

use crate::config::{Config, ConfigError};
use crate::control::{self, Request};
use crate::view;

/// sysexits' EX_USAGE: the config or the command line is wrong.
pub const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Runtime(#[from] anyhow::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

/// The config at `path`, or the embedded default.
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Config::embedded_default(),
    }
}

/// A config error that is about a semantic check done after parsing (unknown app id in
/// `[apps.x]`, bad custom app): it names the file and the section, exit 64.
fn semantic(file: Option<&Path>, key: &str, message: String) -> Failure {
    Failure::Config(ConfigError::Invalid {
        file: file.map_or("<embedded default config>".into(), |p| {
            p.display().to_string()
        }),
        line: 0,
        column: 0,
        key: format!("{key}: "),
        message,
    })
}

/// The catalog the config describes: shipped apps, custom apps, weights, score overrides.
pub fn load_catalog(cfg: &Config, file: Option<&Path>) -> Result<Catalog, Failure> {
    let mut catalog = Catalog::from_config(&cfg.catalog, &cfg.custom_apps, chrono::Utc::now())
        .map_err(|e| semantic(file, "catalog/custom_apps", e.to_string()))?;
    let overrides: Vec<(String, AppOverride)> = cfg
        .apps
        .iter()
        .map(|(id, s)| {
            (
                id.clone(),
                AppOverride {
                    risk_score: s.risk_score,
                    risk_note: s.risk_note.clone(),
                },
            )
        })
        .collect();
    catalog
        .apply_overrides(overrides.iter().map(|(id, o)| (id.as_str(), o)))
        .map_err(|e| semantic(file, "apps", e.to_string()))?;
    Ok(catalog)
}

/// What parsing alone cannot check: the session and access policies compile (regexes,
/// `ip_tags` names, time windows) and every app id they name is in the catalog (a typo there
/// would silently leave the app without its policy). Errors name the file and the key.
pub fn check_references(
    cfg: &Config,
    file: Option<&Path>,
    catalog: &Catalog,
) -> Result<(), Failure> {
    let lists = cfg
        .session_policies
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("session_policies[{i}].apps"), &p.name, &p.apps))
        .chain(
            cfg.access_policies
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("access_policies[{i}].apps"), &p.name, &p.apps)),
        )
        .chain(
            cfg.activity_policies
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("activity_policies[{i}].apps"), &p.name, &p.apps)),
        )
        .chain(cfg.app_discovery_policies.iter().enumerate().map(|(i, p)| {
            (
                format!("app_discovery_policies[{i}].apps"),
                &p.name,
                &p.apps,
            )
        }));
    for (key, name, apps) in lists {
        if let Some(id) = apps
            .iter()
            .find(|id| *id != "*" && catalog.app(id).is_none())
        {
            let hint = tollgate_catalog::views::search(catalog, id);
            let hint = match hint.first() {
                Some(a) => format!(" (did you mean {:?}?)", a.id),
                None => String::new(),
            };
            return Err(semantic(
                file,
                &key,
                format!("policy {name:?} names app {id:?}, which is not in the catalog{hint}"),
            ));
        }
    }
    let set = tollgate_proxy::PolicySet {
        session_policies: cfg.session_policies.clone(),
        access_policies: cfg.access_policies.clone(),
    };
    tollgate_proxy::Policies::compile(&set, &cfg.proxy.ip_tags)
        .map_err(|e| semantic(file, "session_policies/access_policies", e.to_string()))?;
    Ok(())
}

/// `tollgate check-config`: everything `tollgate run` checks before it touches the system
/// (the file, the catalog with custom apps and overrides, tags and tag rules, users, the
/// policies and the app ids they name), so "ok" means the daemon will accept it.
pub fn check_config(path: &Path) -> Result<(), Failure> {
    let cfg = Config::load(path)?;
    let catalog = load_catalog(&cfg, Some(path))?;
    check_references(&cfg, Some(path), &catalog)?;
    TagBook::new(
        &catalog,
        &cfg.apps,
        cfg.tag_rules.clone(),
        Default::default(),
    )
    .map_err(|e| semantic(Some(path), "apps/tag_rules", e.to_string()))?;
    Users::from_config(&cfg.users).map_err(|e| semantic(Some(path), "users", e.to_string()))?;
    crate::outln!(
        "{}: ok ({} mode, {} interface(s), {} app setting(s), {} custom app(s), {} session, {} access and {} activity polic(ies), {} alert sink(s))",
        path.display(),
        cfg.mode,
        cfg.interfaces.len(),
        cfg.apps.len(),
        cfg.custom_apps.len(),
        cfg.session_policies.len(),
        cfg.access_policies.len(),
        cfg.activity_policies.len(),
        cfg.alert_sinks.len(),
    );
    Ok(())
}

/// Tags from the config and the live tags persisted in state_dir, for commands that only
/// look at them (`discover`, `export blocklist`): the tag file is read, never moved.
pub fn load_tags(cfg: &Config, file: Option<&Path>, catalog: &Catalog) -> Result<TagBook, Failure> {
    let store = TagStore::new(&cfg.state_dir);
    let live = store.read().map_err(|e| unreadable_tags(&store, &e))?;
    TagBook::new(catalog, &cfg.apps, cfg.tag_rules.clone(), live)
        .map_err(|e| semantic(file, "apps/tag_rules", e.to_string()))
}

/// Live tags that cannot be read stop the command: going on without them would quietly
/// allow every app tagged unsanctioned with `tollgate app tag`.
fn unreadable_tags(store: &TagStore, e: &tollgate_policy::TagStoreError) -> Failure {
    Failure::Runtime(anyhow::anyhow!(
        "the live tags cannot be read: {e}. Refusing to go on without them (apps tagged with \
         `tollgate app tag` would lose their tag). Repair or restore {} (or remove it to \
         start over from the config's tags)",
        store.path().display()
    ))
}

fn socket_path(config: Option<&Path>, control: Option<&Path>) -> Result<PathBuf, Failure> {
    if let Some(c) = control {
        return Ok(c.to_path_buf());
    }
    Ok(load_config(config)?.control_socket)
}

fn ask(
    config: Option<&Path>,
    control: Option<&Path>,
    req: Request,
) -> Result<serde_json::Value, Failure> {
    let path = socket_path(config, control)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    Ok(rt.block_on(control::request(&path, &req))?)
}

fn print_json(v: &impl serde::Serialize) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).context("writing JSON")?;
    writeln!(out).context("writing JSON")?;
    Ok(())
}

pub fn flows(
    config: Option<&Path>,
    control: Option<&Path>,
    fmt: OutputFormat,
) -> Result<(), Failure> {
    let mut data = ask(config, control, Request::Flows)?;
    // The daemon streams flows unordered: most recent first here.
    if let Some(flows) = data.as_array_mut() {
        let seen = |f: &serde_json::Value| {
            f["last_seen"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        };
        flows.sort_by_cached_key(|f| std::cmp::Reverse(seen(f)));
    }
    match fmt {
        OutputFormat::Json => print_json(&data),
        OutputFormat::Table => {
            crate::out!("{}", view::flows_table(&data));
            Ok(())
        }
    }
}

pub fn apps(
    config: Option<&Path>,
    control: Option<&Path>,
    fmt: OutputFormat,
) -> Result<(), Failure> {
    let data = ask(config, control, Request::Apps)?;
    match fmt {
        OutputFormat::Json => print_json(&data["apps"]),
        OutputFormat::Table => {
            crate::out!("{}", view::apps_table(&data));
            Ok(())
        }
    }
}

pub fn status(
    config: Option<&Path>,
    control: Option<&Path>,
    fmt: OutputFormat,
) -> Result<(), Failure> {
    let data = ask(config, control, Request::Status)?;
    match fmt {
        OutputFormat::Json => print_json(&data),
        OutputFormat::Table => {
            if let Some(obj) = data.as_object() {
                for (k, v) in obj {
                    crate::outln!("{k}: {v}");
                }
            }
            Ok(())
        }
    }
}

/// Stops the daemon; when none answers (it was killed), removes the instance's pins, which
/// detaches its programs.
pub fn stop(
    config: Option<&Path>,
    control: Option<&Path>,
    netns: Option<&str>,
) -> Result<(), Failure> {
    // The name picks the directory removed below when no daemon answers.
    if let Some(ns) = netns {
        crate::netns::validate_name(ns).map_err(|e| Failure::Usage(e.to_string()))?;
    }
    match ask(config, control, Request::Stop) {
        Ok(_) => {
            crate::outln!("stopped: programs detached, pins removed");
            Ok(())
        }
        Err(Failure::Runtime(e)) => {
            let pins = crate::daemon::pin_dir(netns);
            if !pins.exists() {
                return Err(Failure::Runtime(e.context(format!(
                    "no daemon answered and there are no pins under {}",
                    pins.display()
                ))));
            }
            // tc filters (the fallback before Linux 6.6) have no pin: they are deleted in the
            // instance's namespace. When it cannot be entered (gone, and its interfaces and
            // filters with it), none are touched: the host's are another instance's.
            let in_ns = match netns {
                Some(ns) => match crate::netns::enter(ns) {
                    Ok(()) => true,
                    Err(e) => {
                        crate::outln!("tollgate: no tc filters deleted: {e:#}");
                        false
                    }
                },
                None => true,
            };
            let filters = tollgate_dataplane::remove_instance(&pins, in_ns)
                .with_context(|| format!("removing the pins under {}", pins.display()))?;
            crate::outln!(
                "no daemon answered; removed the pins under {} and {filters} tc filter(s) (programs detached)",
                pins.display()
            );
            Ok(())
        }
        Err(other) => Err(other),
    }
}

pub fn tag(
    config: Option<&Path>,
    control: Option<&Path>,
    app: &str,
    tag: &str,
) -> Result<(), Failure> {
    // Check the tag here too, so a typo is a usage error even without a daemon.
    tag.parse::<tollgate_policy::Tag>()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let data = ask(
        config,
        control,
        Request::Tag {
            app: app.to_string(),
            tag: tag.to_string(),
        },
    )?;
    crate::outln!("{app}: {}", data["tag"].as_str().unwrap_or(tag));
    Ok(())
}

pub fn catalog_list(config: Option<&Path>, fmt: OutputFormat) -> Result<(), Failure> {
    let cfg = load_config(config)?;
    let cat = load_catalog(&cfg, config)?;
    let rows = tollgate_catalog::views::list(&cat);
    match fmt {
        OutputFormat::Json => print_json(&rows),
        OutputFormat::Table => {
            crate::out!("{}", tollgate_catalog::views::render_table(&rows));
            Ok(())
        }
    }
}

pub fn catalog_search(config: Option<&Path>, text: &str, fmt: OutputFormat) -> Result<(), Failure> {
    let cfg = load_config(config)?;
    let cat = load_catalog(&cfg, config)?;
    let rows = tollgate_catalog::views::search(&cat, text);
    match fmt {
        OutputFormat::Json => print_json(&rows),
        OutputFormat::Table => {
            if rows.is_empty() {
                crate::outln!("no app matches {text:?}");
            } else {
                crate::out!("{}", tollgate_catalog::views::render_table(&rows));
            }
            Ok(())
        }
    }
}

pub fn catalog_show(config: Option<&Path>, id: &str, fmt: OutputFormat) -> Result<(), Failure> {
    let cfg = load_config(config)?;
    let cat = load_catalog(&cfg, config)?;
    let Some(v) = tollgate_catalog::views::show(&cat, id) else {
        let hint = tollgate_catalog::views::search(&cat, id);
        let hint = if hint.is_empty() {
            String::new()
        } else {
            let ids: Vec<&str> = hint.iter().take(5).map(|a| a.id.as_str()).collect();
            format!(" (did you mean: {}?)", ids.join(", "))
        };
        return Err(Failure::Usage(format!(
            "no app with id {id:?} in the catalog{hint}"
        )));
    };
    match fmt {
        OutputFormat::Json => print_json(&v),
        OutputFormat::Table => {
            crate::out!("{}", tollgate_catalog::views::render_detail(&v));
            Ok(())
        }
    }
}

pub fn export_blocklist(config: Option<&Path>, format: BlocklistFormat) -> Result<(), Failure> {
    let cfg = load_config(config)?;
    let cat = load_catalog(&cfg, config)?;
    let tags = load_tags(&cfg, config, &cat)?;
    let apps = tags.unsanctioned(&cat);
    let learned = crate::daemon::load_learned_ips(&cfg.state_dir);
    crate::out!(
        "{}",
        tollgate_policy::export_blocklist(format, &apps, &learned)
    );
    Ok(())
}

/// `tollgate ca export`: the session proxy's CA certificate, created on first use (its key
/// stays in the CA directory, mode 0600).
pub fn ca_export(config: Option<&Path>) -> Result<(), Failure> {
    let cfg = load_config(config)?;
    let pcfg = crate::session::proxy_config(&cfg);
    let ca = tollgate_proxy::load_ca(&pcfg)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("the session proxy's CA: {e}")))?;
    crate::out!("{}", ca.ca_pem());
    Ok(())
}

/// Arguments of `tollgate discover`.
pub struct DiscoverArgs<'a> {
    pub format: &'a str,
    pub flows: bool,
    pub summary: bool,
    pub output: Option<&'a Path>,
    pub config: Option<&'a Path>,
    pub threads: usize,
    pub files: &'a [PathBuf],
}

pub fn discover(args: &DiscoverArgs<'_>) -> Result<(), Failure> {
    use tollgate_discovery::report::{ReportFormat, render};
    use tollgate_logs::discover::{DiscoverOptions, discover};

    let cfg = load_config(args.config)?;
    let catalog = load_catalog(&cfg, args.config)?;
    let tags = load_tags(&cfg, args.config, &catalog)?;
    let users = Users::from_config(&cfg.users)
        .map_err(|e| semantic(args.config, "users", e.to_string()))?;
    let format: ReportFormat = args.format.parse().map_err(Failure::Usage)?;
    let mut opts = DiscoverOptions {
        format,
        // `--summary` counts from the totals: it keeps no row per record.
        include_flows: args.flows,
        threads: args.threads,
        ..Default::default()
    };
    opts.logs.custom = cfg.log_formats.clone();
    opts.tags = catalog
        .apps()
        .filter_map(|a| {
            tags.tag(&catalog, &a.id)
                .map(|(t, _)| (a.id.clone(), t.to_string()))
        })
        .collect();
    let started = std::time::Instant::now();
    let report = discover(args.files, &opts, &catalog, &users);
    let proc_ms = started.elapsed().as_secs_f64() * 1000.0;
    for failed in report.failed_inputs() {
        eprintln!(
            "tollgate: {}",
            failed.error.as_deref().unwrap_or("input failed")
        );
    }
    if let Some(e) = report.flows.as_ref().and_then(|f| f.spill_error()) {
        eprintln!(
            "tollgate: the flow list stays in memory: no temporary file for it under {} ({e})",
            std::env::temp_dir().display()
        );
    }
    if args.summary {
        let flows = report.totals.transactions;
        let named = report.totals.named_transactions;
        crate::outln!("flows={flows}\nsni_flows={named}\nproc_ms={proc_ms:.3}");
    } else {
        let mut sink: Box<dyn Write> = match args.output {
            Some(p) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            )),
            None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
        };
        render(&report, format, &mut sink).context("writing the report")?;
        sink.flush().context("writing the report")?;
    }
    if report.failed_inputs().count() == args.files.len() {
        return Err(Failure::Runtime(anyhow::anyhow!("no input could be read")));
    }
    Ok(())
}

/// `tollgate collect --config F`: the `[collect]` section in the foreground.
pub fn collect(config: &Path) -> Result<(), Failure> {
    let cfg = load_config(Some(config))?;
    let Some(cc) = cfg.collect.clone() else {
        return Err(semantic(
            Some(config),
            "collect",
            "the config has no [collect] section".into(),
        ));
    };
    let catalog = load_catalog(&cfg, Some(config))?;
    let tags = load_tags(&cfg, Some(config), &catalog)?;
    let users = Users::from_config(&cfg.users)
        .map_err(|e| semantic(Some(config), "users", e.to_string()))?;
    let tags = crate::collect::tag_names(&catalog, &tags);
    let (opts, rc) =
        crate::collect::setup(&cfg, &cc, tags).map_err(|e| semantic(Some(config), "collect", e))?;
    crate::collect::run(opts, rc, &cc, &catalog, &users, Some(config)).map_err(Failure::Runtime)
}

/// `tollgate run`: enters the namespace, builds the runtime, runs the daemon.
pub fn run_daemon(
    config: Option<&Path>,
    netns: Option<&str>,
    json_logs: bool,
) -> Result<(), Failure> {
    // First, so that nothing said while starting is lost (it starts no thread).
    crate::daemon::init_logging(json_logs);
    let cfg = load_config(config)?;
    // Validate everything that can be wrong in the config before touching the system.
    let catalog = load_catalog(&cfg, config)?;
    check_references(&cfg, config, &catalog)?;
    let (cfg, catalog, hub) = with_hub_bundle(cfg, catalog);
    // The daemon's own read of the live tags: a file that is not valid tags is moved aside
    // (kept for the admin) and the start is refused; the next start goes on without it.
    let store = TagStore::new(&cfg.state_dir);
    let live_tags = store.load().map_err(|e| unreadable_tags(&store, &e))?;
    let tags = TagBook::new(
        &catalog,
        &cfg.apps,
        cfg.tag_rules.clone(),
        live_tags.clone(),
    )
    .map_err(|e| semantic(config, "apps/tag_rules", e.to_string()))?;
    let users =
        Users::from_config(&cfg.users).map_err(|e| semantic(config, "users", e.to_string()))?;
    if let Some(ns) = netns {
        // Before any thread exists: threads created later inherit the namespace.
        crate::netns::enter(ns).map_err(Failure::Runtime)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(crate::daemon::run(crate::daemon::DaemonParts {
        config: cfg,
        config_path: config.map(Path::to_path_buf),
        netns: netns.map(str::to_string),
        catalog,
        tags,
        live_tags,
        users,
        hub,
    }))
    .map_err(Failure::Runtime)
}

type HubParts = Option<(crate::hub::Identity, Option<tollgate_sync::bundle::Bundle>)>;

/// The enrollment, if any, and the last applied bundle laid over the (already valid) local
/// config. A bundle that no longer combines with the local config is left out, reported, and
/// the hub sends a newer one; an unreadable enrollment runs the gateway without its hub.
fn with_hub_bundle(cfg: Config, catalog: Catalog) -> (Config, Catalog, HubParts) {
    let identity = match crate::hub::load_identity(&cfg.state_dir) {
        Ok(Some(i)) => i,
        Ok(None) => return (cfg, catalog, None),
        Err(e) => {
            tracing::error!("hub enrollment unreadable, running without the hub: {e:#}");
            return (cfg, catalog, None);
        }
    };
    let Some(bundle) = crate::hub::load_applied_bundle(&cfg.state_dir, &identity) else {
        return (cfg, catalog, Some((identity, None)));
    };
    let name = format!("bundle revision {}", bundle.revision);
    let merged = cfg
        .with_bundle(&bundle.policy_toml, &name)
        .map_err(Failure::Config)
        .and_then(|m| {
            let catalog = load_catalog(&m, None)?;
            check_references(&m, None, &catalog)?;
            Ok((m, catalog))
        });
    match merged {
        Ok((m, c)) => (m, c, Some((identity, Some(bundle)))),
        Err(e) => {
            tracing::error!("{name} does not combine with the local config, left out: {e}");
            (cfg, catalog, Some((identity, None)))
        }
    }
}

/// `tollgate enroll URL TOKEN`: joins the hub at URL with a one-time token.
pub fn enroll(config: Option<&Path>, url: &str, token: &str) -> Result<(), Failure> {
    let cfg = load_config(config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let enrollment = rt.block_on(crate::hub::enroll(&cfg, url, token))?;
    crate::outln!(
        "tollgate: enrolled as gateway {} of site {} with {}; `tollgate run{}` connects to it",
        enrollment.gateway_id,
        enrollment.site,
        url,
        config.map_or(String::new(), |p| format!(" --config {}", p.display()))
    );
    Ok(())
}

/// `--since`: an RFC 3339 time, or an age (`90s`, `15m`, `2h`, `7d`).
pub fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, Failure> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let bad = || {
        Failure::Usage(format!(
            "--since {text:?}: expected an RFC 3339 time or an age like 90s, 15m, 2h, 7d"
        ))
    };
    let unit = text.chars().last().ok_or_else(bad)?;
    let n: i64 = text[..text.len() - unit.len_utf8()]
        .parse()
        .map_err(|_| bad())?;
    let secs = match unit {
        's' => n,
        'm' => n.checked_mul(60).ok_or_else(bad)?,
        'h' => n.checked_mul(3600).ok_or_else(bad)?,
        'd' => n.checked_mul(86_400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    let age = chrono::TimeDelta::try_seconds(secs).ok_or_else(bad)?;
    chrono::Utc::now().checked_sub_signed(age).ok_or_else(bad)
}

/// `tollgate activity`: the recent activity log of a running daemon, oldest first.
pub fn activity(
    config: Option<&Path>,
    control: Option<&Path>,
    query: crate::alerting::ActivityQuery,
    fmt: OutputFormat,
) -> Result<(), Failure> {
    let data = ask(config, control, Request::Activity { query })?;
    match fmt {
        OutputFormat::Json => print_json(&data["activities"]),
        OutputFormat::Table => {
            crate::out!("{}", view::activity_table(&data["activities"]));
            Ok(())
        }
    }
}

/// What `tollgate alerts` does.
pub enum AlertsAction {
    List,
    Show(u64),
    Set(u64, tollgate_activity::AlertStatus, Option<String>),
}

/// `tollgate alerts [list|show ID|resolve ID|dismiss ID]`.
pub fn alerts(
    config: Option<&Path>,
    control: Option<&Path>,
    action: AlertsAction,
    fmt: OutputFormat,
) -> Result<(), Failure> {
    match action {
        AlertsAction::List => {
            let data = ask(config, control, Request::Alerts)?;
            match fmt {
                OutputFormat::Json => print_json(&data["alerts"]),
                OutputFormat::Table => {
                    crate::out!("{}", view::alerts_table(&data["alerts"]));
                    Ok(())
                }
            }
        }
        AlertsAction::Show(id) => {
            let data = ask(config, control, Request::AlertShow { id })?;
            match fmt {
                OutputFormat::Json => print_json(&data["alert"]),
                OutputFormat::Table => {
                    crate::out!("{}", view::alert_detail(&data["alert"]));
                    Ok(())
                }
            }
        }
        AlertsAction::Set(id, status, comment) => {
            let data = ask(
                config,
                control,
                Request::AlertSet {
                    id,
                    status,
                    comment,
                },
            )?;
            match fmt {
                OutputFormat::Json => print_json(&data["alert"]),
                OutputFormat::Table => {
                    crate::outln!("alert {id}: {}", status.as_str());
                    Ok(())
                }
            }
        }
    }
}

/// `tollgate console`: the URL that logs a browser into the running daemon's read-only
/// console (`[console] listen` of the config, the token the daemon wrote to state_dir).
pub fn console(config: Option<&Path>) -> Result<(), Failure> {
    let cfg = load_config(config)?;
    let Some(listen) = cfg.console.listen else {
        return Err(Failure::Usage(format!(
            "{} has no [console] listen: the console is off (see docs/CONFIG.md, [console])",
            config.map_or("the embedded default config".into(), |p| p
                .display()
                .to_string())
        )));
    };
    let token = crate::console::read_token(&cfg.state_dir)?;
    crate::outln!("{}", crate::console::login_url(listen, &token));
    Ok(())
}
