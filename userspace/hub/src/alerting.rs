//! Activity policies at the hub: the connectors' activity records (SaaS admin APIs) go
//! through the same engine as the gateway's (`tollgate_activity::Engine`), and the alerts it
//! raises go to the hub's `[[alert_sinks]]` and to `tollgate-hub alerts`.
//!
//! The task tails the `activities` table by its id. What it has fed to the engine and the
//! alert book are saved together, in one file written atomically (`hub-alerts.json`): a hub
//! killed at any point restarts from the last save with the book of that moment, so every
//! record counts once in the alerts. A sink may get an alert event again after such a
//! restart (at least once, as syslog delivery is anyway).
//!
//! An admin resolves or dismisses an alert with `tollgate-hub alerts resolve|dismiss`, which
//! writes the status into the database (`alert_status`), not into the file the running task
//! owns: the task applies it to its book at its next step (so the next match of a closed
//! alert's policy and entity opens a new one), and every hub on the database sees it. The
//! gateways' alerts come up through their spools (`gateway_alerts`, the newest report of each
//! alert wins); an admin's status for one is kept beside the gateway's own.
//!
//! On PostgreSQL, rows of concurrent transactions can commit out of id order; the tail reads
//! back [`LOOKBACK`] ids below the highest it has seen and skips what it already fed, so a
//! row that committed late is still seen. Several hub processes on one database each run
//! their own engine: configure `[[activity_policies]]` on one of them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tollgate_activity::{ActivityPolicy, Alert, AlertBook, AlertStatus, Engine, SinkConfig, Sinks};

use crate::db::{AlertStatusRow, Db, HUB_SCOPE};

/// The alert book and how far the activities were read.
pub const ALERTS_FILE: &str = "hub-alerts.json";
/// Where webhooks keep what they have not delivered.
const SPOOL_DIR: &str = "alert-spool";
/// Ids below the highest seen that are read again (late commits on PostgreSQL).
pub const LOOKBACK: i64 = 1000;
/// Rows read per step.
const BATCH: i64 = 5000;
/// How often the table is read when it had nothing new.
const IDLE: Duration = Duration::from_secs(1);
/// The name alerts and syslog headers carry.
const HUB_NAME: &str = "tollgate-hub";

/// What `hub-alerts.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    /// Every activity id at or below this was fed to the engine (or lies below the lookback
    /// of a previous run).
    pub watermark: i64,
    pub alerts: Vec<Alert>,
}

/// The saved book and watermark; a missing file is an empty book.
pub fn load(state_dir: &Path) -> anyhow::Result<Saved> {
    let path = state_dir.join(ALERTS_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Saved::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Starts the task when there are policies or an anomaly detection is on (the default); it
/// runs until the hub stops.
pub fn spawn(
    db: &Db,
    registry: tollgate_connectors::Registry,
    state_dir: &Path,
    policies: &[ActivityPolicy],
    sinks: &[SinkConfig],
    anomaly: &tollgate_activity::anomaly::AnomalyConfig,
    geoip: &tollgate_activity::geo::GeoIpConfig,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let detecting = anomaly.any_enabled();
    if policies.is_empty() && !detecting {
        return Ok(None);
    }
    let geo = match &geoip.database {
        Some(path) => Some(std::sync::Arc::new(
            tollgate_activity::geo::GeoIp::open(path).map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    let saved = match load(state_dir) {
        Ok(s) => s,
        Err(e) => {
            // Not silently empty: moved aside and said so. The watermark is lost with it, so
            // the activities are read again from the start.
            let path = state_dir.join(ALERTS_FILE);
            let aside = path.with_extension("json.corrupt");
            let _ = std::fs::rename(&path, &aside);
            tracing::error!(error = %format!("{e:#}"), moved_to = %aside.display(), "the alert book did not read back; starting with none");
            Saved::default()
        }
    };
    let spool = state_dir.join(SPOOL_DIR);
    std::fs::create_dir_all(&spool).with_context(|| format!("creating {}", spool.display()))?;
    let sinks = Sinks::start_durable(sinks, HUB_NAME, Some(&spool)).map_err(anyhow::Error::msg)?;
    let engine = Engine::new(policies)
        .with_anomaly(anomaly, geo)
        .with_gateway(Some(HUB_NAME.to_string()))
        .with_book(AlertBook::restore(
            saved.alerts,
            tollgate_activity::alert::DEFAULT_MAX_ALERTS,
        ));
    let tail = Tail::new(saved.watermark);
    let governance = Governance {
        actions: tollgate_activity::PolicyActions::by_policy(
            &policies
                .iter()
                .filter(|p| p.enabled)
                .cloned()
                .collect::<Vec<_>>(),
        ),
        registry,
    };
    let dir = state_dir.to_path_buf();
    let db = db.clone();
    Ok(Some(tokio::spawn(async move {
        run(db, dir, engine, sinks, tail, governance).await;
    })))
}

/// Which activity ids were fed: everything at or below `floor`, and `seen` above it.
#[derive(Debug)]
struct Tail {
    /// Never read below this in this run (the watermark the run started from).
    start: i64,
    highest: i64,
    seen: BTreeSet<i64>,
}

impl Tail {
    fn new(watermark: i64) -> Tail {
        Tail {
            start: watermark,
            highest: watermark,
            seen: BTreeSet::new(),
        }
    }

    /// The id to read above.
    fn from(&self) -> i64 {
        self.start.max(self.highest - LOOKBACK)
    }

    /// Whether `id` is new; marks it fed.
    fn take(&mut self, id: i64) -> bool {
        if id <= self.start || !self.seen.insert(id) {
            return false;
        }
        self.highest = self.highest.max(id);
        true
    }

    /// Forgets ids below the lookback.
    fn trim(&mut self) {
        let from = self.from();
        self.seen = self.seen.split_off(&(from + 1));
    }
}

/// What the policies ask beyond their alerts (`notify`, `connector_actions`), and the
/// connectors that can be asked.
struct Governance {
    actions: std::collections::HashMap<String, tollgate_activity::PolicyActions>,
    registry: tollgate_connectors::Registry,
}

async fn run(
    db: Db,
    dir: PathBuf,
    mut engine: Engine,
    mut sinks: Sinks,
    mut tail: Tail,
    governance: Governance,
) {
    let mut statuses_since = 0i64;
    let (outcome_tx, mut outcome_rx) = tokio::sync::mpsc::channel::<
        tollgate_connectors::governance::Outcome,
    >(tollgate_connectors::governance::MAX_PENDING);
    loop {
        // What the connector calls came to: the hub's audit trail.
        while let Ok(o) = outcome_rx.try_recv() {
            audit(&db, "connector_action", &o.to_string()).await;
        }
        // Admins' status changes first, so that a match right after a resolve opens anew.
        let mut changed = false;
        match db.alert_statuses(Some(HUB_SCOPE), statuses_since).await {
            Ok(rows) => {
                for r in rows {
                    statuses_since = statuses_since.max(r.updated_at);
                    changed |= apply_status(engine.book_mut(), &r);
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading alert statuses"),
        }
        let rows = match db.activity_rows_after(tail.from(), BATCH).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "reading activities for the policies");
                tokio::time::sleep(IDLE * 5).await;
                continue;
            }
        };
        let full = rows.len() as i64 >= BATCH;
        let mut fed = 0u64;
        for (id, text) in rows {
            if !tail.take(id) {
                continue;
            }
            // A row that does not read back is skipped (the connectors wrote it).
            let Ok(mut a) = serde_json::from_str::<tollgate_activity::Activity>(&text) else {
                continue;
            };
            if a.country.is_none() {
                a.country = engine.place(&a).map(|p| p.country);
            }
            sinks.activity(&a);
            for ev in engine.observe(&a, Utc::now()) {
                tracing::warn!(alert = ev.alert.id, policy = %ev.alert.policy, count = ev.alert.count, "alert");
                let acts = governance
                    .actions
                    .get(&ev.alert.policy)
                    .filter(|_| ev.kind == tollgate_activity::AlertEventKind::Opened);
                let Some(acts) = acts else {
                    sinks.alert(&ev);
                    continue;
                };
                for (sink, queued) in sinks.alert_notifying(&ev, &acts.notify) {
                    let detail = format!(
                        "alert {} of policy {:?} {} sink {sink:?}",
                        ev.alert.id,
                        ev.alert.policy,
                        if queued {
                            "sent to"
                        } else {
                            "not sent (rate limit or queue full) to"
                        }
                    );
                    audit(&db, "notify", &detail).await;
                }
                if let Some(user) = &ev.alert.entities.user {
                    for w in &acts.connector_actions {
                        tracing::warn!(connector = %w.connector, %user, policy = %ev.alert.policy, "governance: {} asked of the connector", w.action);
                        governance.registry.spawn_call(
                            &w.connector,
                            w.action,
                            user,
                            &ev.alert.policy,
                            ev.alert.id,
                            outcome_tx.clone(),
                        );
                    }
                }
            }
            fed += 1;
        }
        tail.trim();
        engine.expire(Utc::now());
        if fed > 0 || changed {
            let saved = SavedRef {
                watermark: tail.highest,
                alerts: engine.book().iter().collect(),
            };
            if let Err(e) = tollgate_activity::alert::write_json_atomic(&dir, ALERTS_FILE, &saved) {
                tracing::warn!(error = %e, "writing {ALERTS_FILE}");
            }
        }
        if !full {
            tokio::time::sleep(IDLE).await;
        }
    }
}

async fn audit(db: &Db, kind: &str, detail: &str) {
    if let Err(e) = db.audit_hub(kind, None, detail).await {
        tracing::warn!(error = %e, "cannot write the audit record: {detail}");
    }
}

/// An admin's status applied to the book; whether it changed anything.
fn apply_status(book: &mut AlertBook, r: &AlertStatusRow) -> bool {
    let Some(status) = parse_status(&r.status) else {
        return false;
    };
    let Some(a) = book.get(r.alert_id) else {
        return false;
    };
    if a.status == status && a.comment == r.comment {
        return false;
    }
    book.set_status(r.alert_id, status, r.comment.clone())
        .is_ok()
}

fn parse_status(s: &str) -> Option<AlertStatus> {
    match s {
        "open" => Some(AlertStatus::Open),
        "resolved" => Some(AlertStatus::Resolved),
        "dismissed" => Some(AlertStatus::Dismissed),
        _ => None,
    }
}

/// What `tollgate-hub alerts` does.
pub enum AlertsAction {
    List,
    Show(String),
    Set(String, AlertStatus, Option<String>),
}

/// An alert named on the command line: the hub's own (`ID`, or `hub:ID`) or a gateway's
/// (`GATEWAY:ID`).
fn parse_ref(text: &str) -> anyhow::Result<(String, u64)> {
    let (scope, id) = match text.rsplit_once(':') {
        Some((scope, id)) => (scope.to_string(), id),
        None => (HUB_SCOPE.to_string(), text),
    };
    let id: u64 = id
        .parse()
        .with_context(|| format!("{text:?} is not ID or GATEWAY:ID"))?;
    if scope.is_empty() || scope.len() > 128 || scope.chars().any(char::is_control) {
        anyhow::bail!("{text:?} is not ID or GATEWAY:ID");
    }
    Ok((scope, id))
}

/// Every alert as `alerts --json` prints it: the hub's, then the gateways', each with its
/// `ref` and `scope`; an admin's status at the hub overrides the one reported (the gateway's
/// own stays in `gateway_status`).
pub(crate) async fn all_alerts(
    state_dir: &Path,
    db: &Db,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let overrides: std::collections::HashMap<(String, u64), AlertStatusRow> = db
        .alert_statuses(None, 0)
        .await?
        .into_iter()
        .map(|r| ((r.scope.clone(), r.alert_id), r))
        .collect();
    let mut out = Vec::new();
    for a in load(state_dir)?.alerts {
        let mut v = serde_json::to_value(&a)?;
        if let Some(o) = overrides.get(&(HUB_SCOPE.to_string(), a.id)) {
            v["status"] = o.status.clone().into();
            v["comment"] = o.comment.clone().into();
        }
        v["ref"] = a.id.to_string().into();
        v["scope"] = HUB_SCOPE.into();
        out.push(v);
    }
    for g in db.gateway_alerts(10_000).await? {
        let r = &g.report;
        let time = |t: i64| chrono::DateTime::from_timestamp(t, 0).unwrap_or_default();
        let mut v = serde_json::json!({
            "ref": format!("{}:{}", g.gateway_id, r.alert_id),
            "scope": g.gateway_id,
            "id": r.alert_id,
            "time": time(r.opened),
            "last_seen": time(r.last_seen),
            "severity": r.severity,
            "policy": r.policy,
            "entities": {
                "user": r.user,
                "ip": r.ip,
                "app": r.app_id,
                "gateway": g.hostname,
            },
            "reason": r.reason,
            "status": r.status,
            "gateway_status": r.status,
            "comment": r.comment,
            "count": r.count,
        });
        if let Some(o) = overrides.get(&(g.gateway_id.clone(), r.alert_id)) {
            v["status"] = o.status.clone().into();
            v["comment"] = o.comment.clone().into();
        }
        out.push(v);
    }
    out.sort_by(|a, b| {
        b["last_seen"]
            .as_str()
            .cmp(&a["last_seen"].as_str())
            .then_with(|| a["ref"].as_str().cmp(&b["ref"].as_str()))
    });
    Ok(out)
}

/// Sets an admin's status for the alert `text` names (`ID` or `GATEWAY:ID`), audited with
/// who did it; the alert as it was.
pub(crate) async fn set_status(
    state_dir: &Path,
    db: &Db,
    text: &str,
    status: AlertStatus,
    comment: Option<&str>,
    by: &str,
) -> anyhow::Result<serde_json::Value> {
    let (scope, id) = parse_ref(text)?;
    let wanted = if scope == HUB_SCOPE {
        id.to_string()
    } else {
        format!("{scope}:{id}")
    };
    let a = all_alerts(state_dir, db)
        .await?
        .into_iter()
        .find(|a| a["ref"].as_str() == Some(wanted.as_str()))
        .with_context(|| format!("no alert {text}"))?;
    db.set_alert_status(&scope, id, status.as_str(), comment)
        .await?;
    db.audit_hub(
        "alert_status",
        None,
        &format!(
            "alert {} ({}) set {} at the hub by {by}",
            a["ref"].as_str().unwrap_or(""),
            a["policy"].as_str().unwrap_or(""),
            status.as_str()
        ),
    )
    .await?;
    Ok(a)
}

/// `tollgate-hub alerts [list|show REF|resolve REF|dismiss REF] [--json]`.
pub async fn alerts_command(
    state_dir: &Path,
    db: &Db,
    action: AlertsAction,
    json: bool,
) -> anyhow::Result<()> {
    use crate::connectors::term;
    let find = |all: Vec<serde_json::Value>, text: &str| -> anyhow::Result<serde_json::Value> {
        let (scope, id) = parse_ref(text)?;
        let wanted = if scope == HUB_SCOPE {
            id.to_string()
        } else {
            format!("{scope}:{id}")
        };
        all.into_iter()
            .find(|a| a["ref"].as_str() == Some(wanted.as_str()))
            .with_context(|| format!("no alert {text}"))
    };
    match action {
        AlertsAction::List => {
            let all = all_alerts(state_dir, db).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            for a in all {
                let s = |k: &str| a[k].as_str().unwrap_or("").to_string();
                println!(
                    "{:<24} {} {:<8} {:<9} {:<28} count {:<6} {}",
                    term(&s("ref")),
                    s("last_seen"),
                    s("severity"),
                    s("status"),
                    term(&s("policy")),
                    a["count"].as_u64().unwrap_or(0),
                    term(&s("reason")),
                );
            }
            Ok(())
        }
        AlertsAction::Show(text) => {
            let a = find(all_alerts(state_dir, db).await?, &text)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&a)?);
            } else {
                // Every string in it may come from the network: escaped for the terminal.
                println!("{}", term(&serde_json::to_string_pretty(&a)?));
            }
            Ok(())
        }
        AlertsAction::Set(text, status, comment) => {
            let a = set_status(state_dir, db, &text, status, comment.as_deref(), "the CLI").await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ref": a["ref"], "status": status.as_str(), "comment": comment})
                );
            } else {
                println!(
                    "{} {}",
                    term(a["ref"].as_str().unwrap_or("")),
                    status.as_str()
                );
            }
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct SavedRef<'a> {
    watermark: i64,
    alerts: Vec<&'a Alert>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_feeds_each_id_once_and_sees_late_commits_within_the_lookback() {
        let mut t = Tail::new(10);
        assert!(!t.take(10), "at or below the watermark it started from");
        assert!(t.take(12));
        assert!(!t.take(12), "twice");
        // 11 committed after 12 (PostgreSQL): still new.
        assert!(t.take(11));
        assert_eq!(t.from(), 10);
        for id in 13..=3000 {
            assert!(t.take(id));
        }
        t.trim();
        assert_eq!(t.from(), 3000 - LOOKBACK);
        assert!(t.take(3001));
        assert!(!t.take(2500), "within the lookback and already fed");
        assert!(t.seen.len() as i64 <= LOOKBACK + 1);
    }
}
