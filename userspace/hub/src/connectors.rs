//! The hub runs `[[connectors]]`: one task per connector polls its vendor and commits records
//! and cursor to the database (the records' unique key `(source, vendor_id)` and the cursor in
//! the same transaction make a kill -9 at any point lose and double nothing); after each poll
//! the task saves the connector's status (no secret in it) for `tollgate-hub connectors`.

use std::time::Duration;

use serde::Serialize;
use tollgate_connectors::{
    Connector, ConnectorStatus, Options, PollReport, Registry, Secret, Settings,
};

use crate::db::Db;

/// One set of tenant gates for every connector of the process: connectors of one tenant take
/// turns, whether they come from the config or a bundle.
static GATES: std::sync::LazyLock<tollgate_connectors::TenantGates> =
    std::sync::LazyLock::new(tollgate_connectors::TenantGates::default);

/// The `[[connectors]]` of a bundle's policy, checked (no inline secret); an absent section is
/// none.
pub fn from_bundle(policy: &str) -> Result<Vec<Settings>, String> {
    #[derive(serde::Deserialize)]
    struct Only {
        #[serde(default)]
        connectors: Vec<tollgate_connectors::ConnectorConfig>,
    }
    #[derive(serde::Deserialize)]
    struct Loose {
        #[serde(default)]
        connectors: Option<toml::Value>,
    }
    // Other sections are the gateway's to check; only `connectors` is read here.
    let loose: Loose =
        toml::from_str(policy).map_err(|e| format!("not valid TOML: {}", e.message()))?;
    let Some(value) = loose.connectors else {
        return Ok(Vec::new());
    };
    let only: Only =
        toml::Value::Table(toml::Table::from_iter([("connectors".to_string(), value)]))
            .try_into()
            .map_err(|e: toml::de::Error| format!("[[connectors]]: {}", e.message()))?;
    let mut out: Vec<Settings> = Vec::new();
    for (i, c) in only.connectors.iter().enumerate() {
        let s = Settings::from_bundle(c).map_err(|m| format!("[[connectors]] #{}: {m}", i + 1))?;
        if out.iter().any(|o| o.name == s.name) {
            return Err(format!(
                "[[connectors]] #{}: name {:?} is used twice",
                i + 1,
                s.name
            ));
        }
        out.push(s);
    }
    Ok(out)
}

/// Runs the `run_on = "hub"` connectors of the newest every-site bundle, next to the config's
/// (a config connector of the same name wins): started when a bundle brings one, restarted
/// when its settings change, stopped when a bundle drops it. Looks every 5 s, so every hub
/// on the database runs them; like `[[activity_policies]]`, publish connectors for a fleet
/// served by one hub process, or accept that each hub polls (the store drops what two read).
pub async fn supervise_bundled(db: Db, configured: Vec<Settings>, registry: Registry) {
    let mut running: std::collections::HashMap<String, (String, tokio::task::JoinHandle<()>)> =
        std::collections::HashMap::new();
    let mut seen_revision = None;
    loop {
        match db.latest_every_site_policy().await {
            Ok(latest) => {
                let revision = latest.as_ref().map(|(r, _)| *r);
                if revision != seen_revision {
                    seen_revision = revision;
                    let wanted = match latest.map(|(_, p)| from_bundle(&p)) {
                        Some(Ok(list)) => list,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "the newest bundle's connectors were not read");
                            Vec::new()
                        }
                        None => Vec::new(),
                    };
                    let wanted: Vec<Settings> = wanted
                        .into_iter()
                        .filter(|s| s.run_on == tollgate_connectors::RunOn::Hub)
                        .filter(|s| !configured.iter().any(|c| c.name == s.name))
                        .collect();
                    running.retain(|name, (key, task)| {
                        let keep = wanted
                            .iter()
                            .any(|s| &s.name == name && &format!("{s:?}") == key);
                        if !keep {
                            task.abort();
                            registry.unregister(name);
                            tracing::info!(connector = %name, "bundled connector stopped");
                        }
                        keep
                    });
                    for s in wanted {
                        if running.contains_key(&s.name) {
                            continue;
                        }
                        let key = format!("{s:?}");
                        let mut options = options(&db, &s);
                        options.gates = GATES.clone();
                        let name = s.name.clone();
                        registry.register(&s, &options);
                        let task = tokio::spawn(run(db.clone(), s, options));
                        tracing::info!(connector = %name, "bundled connector started");
                        running.insert(name, (key, task));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the newest bundle for its connectors")
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Starts every connector, each in `registry` for the policies' governance calls; the tasks
/// run until the hub stops.
pub fn spawn(
    db: &Db,
    connectors: &[Settings],
    registry: &Registry,
) -> Vec<tokio::task::JoinHandle<()>> {
    let gates = GATES.clone();
    connectors
        .iter()
        .cloned()
        .map(|s| {
            let db = db.clone();
            let mut options = options(&db, &s);
            options.gates = gates.clone();
            registry.register(&s, &options);
            tokio::spawn(async move { run(db, s, options).await })
        })
        .collect()
}

/// The hub's options: a throttle answer is saved at once (not only after the poll), so a
/// hub killed while it waits out a `Retry-After` still waits after its restart.
fn options(db: &Db, s: &Settings) -> Options {
    let db = db.clone();
    let kind = s.kind.as_str();
    Options {
        on_throttle: Some(std::sync::Arc::new(move |status: &ConnectorStatus| {
            let db = db.clone();
            let name = status.name.clone();
            let json = serde_json::to_string(status).unwrap_or_default();
            tokio::spawn(async move {
                let _ = db.connector_status_save(&name, kind, &json).await;
            });
        })),
        ..Options::default()
    }
}

/// Warns when a token file can be read by others than the hub's user.
pub fn check_token_file(s: &Settings) {
    use std::os::unix::fs::PermissionsExt;
    if let Secret::TokenFile(path) = &s.secret
        && let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            connector = %s.name,
            file = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "token_file is readable by group or others; make it 0600"
        );
    }
}

async fn new_connector(db: &Db, s: Settings, options: Options) -> anyhow::Result<Connector> {
    check_token_file(&s);
    let mut c = Connector::new(s, options)?;
    let name = c.settings().name.clone();
    if let Some(row) = db
        .connector_rows()
        .await?
        .into_iter()
        .find(|r| r.name == name)
        && let Some(Ok(status)) = row
            .status
            .as_deref()
            .map(serde_json::from_str::<ConnectorStatus>)
    {
        c.restore_status(status);
    }
    Ok(c)
}

async fn save(db: &Db, c: &Connector) {
    let status = serde_json::to_string(c.status()).unwrap_or_default();
    if let Err(e) = db
        .connector_status_save(&c.settings().name, c.settings().kind.as_str(), &status)
        .await
    {
        tracing::warn!(connector = %c.settings().name, error = %e, "cannot save the connector's status");
    }
}

async fn run(db: Db, s: Settings, options: Options) {
    let name = s.name.clone();
    let mut c = loop {
        match new_connector(&db, s.clone(), options.clone()).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(connector = %name, error = %format!("{e:#}"), "connector cannot start; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    tracing::info!(connector = %name, kind = %s.kind, base_url = %s.base_url, "connector started");
    loop {
        let result = c.poll(&db).await;
        save(&db, &c).await;
        let mut wait = s.poll_interval.max(c.circuit_wait());
        if let Ok(report) = &result {
            if report.new > 0 {
                tracing::info!(connector = %name, new = report.new, pages = report.pages, "connector stored records");
            }
            if !report.caught_up {
                // The page cap ended the poll, not the vendor: go on at once.
                wait = Duration::ZERO;
            }
        }
        tokio::time::sleep(wait).await;
    }
}

/// `tollgate-hub connectors run NAME`: one poll now, from this process.
pub async fn run_once(db: &Db, s: Settings) -> anyhow::Result<(PollReport, ConnectorStatus)> {
    let options = options(db, &s);
    let mut c = new_connector(db, s, options).await?;
    let result = c.poll(db).await;
    save(db, &c).await;
    Ok((result?, c.status().clone()))
}

/// One connector as `connectors list` shows it: settings, never the secret.
#[derive(Debug, Serialize)]
pub struct ListView {
    pub name: String,
    pub kind: String,
    pub base_url: String,
    pub poll_interval_secs: u64,
    /// `token` (inline, not shown) or `token_file`.
    pub secret: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

pub fn list_view(s: &Settings) -> ListView {
    ListView {
        name: s.name.clone(),
        kind: s.kind.as_str().into(),
        base_url: s.base_url.to_string(),
        poll_interval_secs: s.poll_interval.as_secs(),
        secret: match &s.secret {
            Secret::Token(_) => "token".into(),
            Secret::TokenFile(_) => "token_file".into(),
        },
        token_file: match &s.secret {
            Secret::TokenFile(p) => Some(p.display().to_string()),
            Secret::Token(_) => None,
        },
    }
}

/// One connector as `connectors status` shows it.
#[derive(Debug, Serialize)]
pub struct StatusView {
    pub name: String,
    pub kind: String,
    /// In the config (false: a connector that ran before and was removed).
    pub configured: bool,
    pub health: String,
    pub last_success: Option<String>,
    pub cursor: Option<String>,
    pub lag_secs: Option<i64>,
    pub events_today: i64,
    pub events_total: u64,
    pub throttled: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub requests: u64,
    pub retries: u64,
    pub duplicates: u64,
    pub dropped: u64,
    pub cursor_resets: u64,
    pub circuit: String,
}

fn t(d: Option<chrono::DateTime<chrono::Utc>>) -> Option<String> {
    d.map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

pub async fn status_views(db: &Db, configured: &[Settings]) -> anyhow::Result<Vec<StatusView>> {
    let rows = db.connector_rows().await?;
    let midnight = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp());
    let mut names: Vec<(String, String, bool)> = configured
        .iter()
        .map(|s| (s.name.clone(), s.kind.as_str().to_string(), true))
        .collect();
    for r in &rows {
        if !names.iter().any(|(n, _, _)| n == &r.name) {
            names.push((r.name.clone(), r.kind.clone(), false));
        }
    }
    let mut out = Vec::new();
    for (name, kind, configured) in names {
        let row = rows.iter().find(|r| r.name == name);
        let status: Option<ConnectorStatus> = row
            .and_then(|r| r.status.as_deref())
            .and_then(|s| serde_json::from_str(s).ok());
        let events_today = db.activities_since(&name, midnight).await?;
        let v = match status {
            Some(s) => StatusView {
                name,
                kind,
                configured,
                health: serde_json::to_value(s.health)?
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                last_success: t(s.last_success),
                cursor: s.cursor,
                lag_secs: s.lag_secs,
                events_today,
                events_total: s.events_total,
                throttled: s.throttled,
                errors: s.errors,
                last_error: s.last_error,
                last_error_at: t(s.last_error_at),
                requests: s.requests,
                retries: s.retries,
                duplicates: s.duplicates,
                dropped: s.dropped,
                cursor_resets: s.cursor_resets,
                circuit: serde_json::to_value(s.circuit)?
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            },
            None => StatusView {
                name,
                kind,
                configured,
                health: "idle".into(),
                last_success: None,
                cursor: None,
                lag_secs: None,
                events_today,
                events_total: 0,
                throttled: 0,
                errors: 0,
                last_error: None,
                last_error_at: None,
                requests: 0,
                retries: 0,
                duplicates: 0,
                dropped: 0,
                cursor_resets: 0,
                circuit: "closed".into(),
            },
        };
        out.push(v);
    }
    Ok(out)
}

/// A string from a vendor, safe on a terminal: control characters escaped.
pub fn term(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The connectors' saved statuses as metric samples (none when the database fails).
pub async fn metric_samples(db: &Db) -> Vec<tollgate_metrics::hub::ConnectorSample> {
    let Ok(rows) = db.connector_rows().await else {
        return Vec::new();
    };
    rows.into_iter()
        .filter_map(|r| {
            let s: ConnectorStatus = serde_json::from_str(r.status.as_deref()?).ok()?;
            Some(tollgate_metrics::hub::ConnectorSample {
                name: r.name,
                kind: r.kind,
                up: matches!(
                    s.health,
                    tollgate_connectors::Health::Ok | tollgate_connectors::Health::Throttled
                ),
                events: s.events_total,
                requests: s.requests,
                throttled: s.throttled,
                errors: s.errors,
                lag_seconds: s.lag_secs.map(|l| l as f64),
            })
        })
        .collect()
}
