//! Activities, alerts and their sinks in the daemon: wiring only; the record, the policy
//! engine, the formats and the sinks are `tollgate_activity`'s.
//!
//! Data flows one way. The session proxy knows nothing of activities: it hands a copy of each
//! audit record (every decision it takes: blocks, audited transfers, TLS failures) to a
//! bounded channel the daemon owns ([`tollgate_proxy::StartOptions::audit_tap`]; a full
//! channel drops and counts, `proxy.activity_tap_dropped`), and the core task turns each one
//! into an [`Activity`] here ([`from_proxy`]), feeds it to the engine, the activity log and
//! the sinks. Nothing here ever waits on a sink or the disk: the log is one more sink (a file
//! task behind a bounded queue), the alert book is written to `state_dir/alerts.json` at most
//! every two seconds when it changed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use tollgate_activity::anomaly::AppStanding;
use tollgate_activity::discovery_policy::{AppFacts, DiscoveryFinding};
use tollgate_activity::sink::Send as SinkSend;
use tollgate_activity::{
    Activity, ActivityType, Alert, AlertBook, AlertStatus, AppDiscovery, Engine, Format, Outcome,
    PolicyActions, SinkConfig, SinkKind, Sinks, Source,
};
use tollgate_proxy::audit::AuditRecord;

use crate::config::Config;

pub const ALERTS_FILE: &str = "alerts.json";
pub const ACTIVITY_DIR: &str = "activity";
pub const ACTIVITY_LOG: &str = "activity.jsonl";
/// Where webhooks keep what they have not delivered (one file per address).
pub const SPOOL_DIR: &str = "alert-spool";
/// Records the proxy may have queued for the core before it drops (and counts) more.
pub const TAP_QUEUE: usize = 8192;
/// How often a changed alert book is written.
const SAVE_EVERY: Duration = Duration::from_secs(2);
/// Longest object (host and path) kept in an activity.
const MAX_OBJECT: usize = 2048;

/// The gateway's name in alerts and syslog headers.
pub fn gateway_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "tollgate".into())
}

/// One proxy audit record as an activity: a block is `blocked`; an upload or a download
/// audited by a session policy is `upload`/`download`; access and activity decisions are
/// `app_used`; anything else is `other`.
pub fn from_proxy(id: u64, rec: &AuditRecord, gateway: &str) -> Activity {
    let blocked = rec.action == "block";
    let activity = if blocked {
        ActivityType::Blocked
    } else {
        match rec.stage.as_str() {
            "upload" => ActivityType::Upload,
            "download" => ActivityType::Download,
            "access" | "activity" => ActivityType::AppUsed,
            _ => ActivityType::Other,
        }
    };
    let time = DateTime::parse_from_rfc3339(&rec.time)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now());
    let mut a = Activity::new(id, time, rec.app.clone(), activity, Source::Proxy);
    a.user = rec.user.clone();
    a.ip = Some(rec.src_ip);
    let mut object = format!("{}{}", rec.host, rec.path);
    tollgate_activity::alert::truncate(&mut object, MAX_OBJECT);
    a.object = Some(object);
    a.result = if blocked {
        Outcome::Blocked
    } else {
        Outcome::Success
    };
    a.policy = (!rec.policy.is_empty()).then(|| rec.policy.clone());
    a.gateway = Some(gateway.to_string());
    a
}

/// The activity log's sink: JSON lines in `state_dir/activity/`, rotated at half the bound.
fn log_sink(cfg: &Config) -> SinkConfig {
    SinkConfig {
        kind: SinkKind::File,
        name: Some("activity log".into()),
        address: None,
        path: Some(cfg.state_dir.join(ACTIVITY_DIR).join(ACTIVITY_LOG)),
        format: Some(Format::Json),
        send: vec![SinkSend::Activities],
        min_severity: tollgate_activity::Severity::Low,
        ca_file: None,
        server_name: None,
        rate_per_sec: 1,
        burst: 1,
        queue: 65_536,
        max_mb: (cfg.activity.max_mb / 2).max(1),
    }
}

pub struct Alerting {
    engine: Engine,
    sinks: Sinks,
    log: Sinks,
    gateway: String,
    next_id: u64,
    state_dir: PathBuf,
    retention_days: u32,
    dirty: bool,
    last_save: Instant,
    pub save_errors: u64,
    /// Alert changes not sent to the hub because [`MAX_FOR_HUB`] were waiting.
    pub hub_dropped: u64,
    /// Alerts opened or changed since the hub was last sent them (bounded: the hub gets the
    /// alert as it stands, so one id stands for any number of changes).
    for_hub: std::collections::BTreeSet<u64>,
    /// Governance: seconds of session block per policy name (`block_sessions_secs`).
    block_secs: std::collections::HashMap<String, u64>,
    /// Session blocks the alerts asked for, waiting for the daemon to hand them to the proxy
    /// (bounded like `for_hub`).
    governance: Vec<SessionBlock>,
    /// Governance: connector calls and notified sinks per policy name.
    actions: std::collections::HashMap<String, PolicyActions>,
    /// Connector calls the alerts asked for, waiting for the daemon to start them (bounded
    /// like `for_hub`).
    calls: Vec<ConnectorCall>,
}

/// A governance call through a connector (`connector_actions`) for the user of an alert.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorCall {
    pub policy: String,
    pub alert_id: u64,
    pub connector: String,
    pub call: tollgate_activity::GovernanceCall,
    pub user: String,
}

/// A governance action: refuse `user` (else the device `ip`) sessions to `app` for `secs`.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionBlock {
    pub policy: String,
    pub alert_id: u64,
    pub user: Option<String>,
    pub ip: Option<std::net::IpAddr>,
    pub app: String,
    pub secs: u64,
}

fn block_secs(
    policies: &[tollgate_activity::ActivityPolicy],
) -> std::collections::HashMap<String, u64> {
    policies
        .iter()
        .filter(|p| p.enabled)
        .filter_map(|p| Some((p.name.clone(), p.block_sessions_secs?)))
        .collect()
}

fn actions(
    policies: &[tollgate_activity::ActivityPolicy],
) -> std::collections::HashMap<String, PolicyActions> {
    let enabled: Vec<_> = policies.iter().filter(|p| p.enabled).cloned().collect();
    PolicyActions::by_policy(&enabled)
}

/// The alert's app, else (a policy not per app) the app of its newest proof.
fn alert_app(alert: &tollgate_activity::Alert) -> Option<String> {
    alert
        .entities
        .app
        .clone()
        .or_else(|| alert.activities.last().map(|a| a.app.clone()))
}

/// The audit record of a governance action taken for `alert`.
fn action_record(alert: &tollgate_activity::Alert, action: &str) -> Activity {
    let mut a = Activity::new(
        0,
        Utc::now(),
        alert_app(alert).unwrap_or_default(),
        ActivityType::AdminAction,
        Source::Audit,
    );
    a.user = alert.entities.user.clone();
    a.ip = alert.entities.ip;
    a.policy = Some(alert.policy.clone());
    a.action = Some(action.to_string());
    a
}

/// Alerts waiting for the hub at most; more are counted and not sent.
pub const MAX_FOR_HUB: usize = 10_000;

impl Alerting {
    /// Reads the alert book back and starts the sinks (inside the runtime).
    pub fn start(cfg: &Config) -> Result<Alerting> {
        let gateway = gateway_name();
        let dir = cfg.state_dir.join(ACTIVITY_DIR);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let book = match load_alerts(&cfg.state_dir) {
            Ok(alerts) => AlertBook::restore(alerts, tollgate_activity::alert::DEFAULT_MAX_ALERTS),
            Err(e) => {
                // Not silently empty: moved aside and said so.
                let path = cfg.state_dir.join(ALERTS_FILE);
                let aside = path.with_extension("json.corrupt");
                let _ = std::fs::rename(&path, &aside);
                crate::outln!(
                    "tollgate: {e:#}; moved to {} and starting with no alerts",
                    aside.display()
                );
                AlertBook::default()
            }
        };
        let geo = match &cfg.geoip.database {
            Some(path) => match tollgate_activity::geo::GeoIp::open(path) {
                Ok(g) => Some(std::sync::Arc::new(g)),
                // Alerts without countries rather than none.
                Err(e) => {
                    tracing::error!("[geoip] database: {e}; activities get no country");
                    crate::outln!("tollgate: [geoip] database: {e}; activities get no country");
                    None
                }
            },
            None => None,
        };
        let engine = Engine::new(&cfg.activity_policies)
            .with_anomaly(&cfg.anomaly, geo)
            .with_gateway(Some(gateway.clone()))
            .with_book(book);
        let spool = cfg.state_dir.join(SPOOL_DIR);
        std::fs::create_dir_all(&spool).with_context(|| format!("creating {}", spool.display()))?;
        let sinks = Sinks::start_durable(&cfg.alert_sinks, &gateway, Some(&spool))
            .map_err(anyhow::Error::msg)?;
        let log = Sinks::start(&[log_sink(cfg)], &gateway).map_err(anyhow::Error::msg)?;
        let next_id = (Utc::now().timestamp_micros().max(0) as u64) << 8;
        Ok(Alerting {
            engine,
            sinks,
            log,
            gateway,
            next_id,
            state_dir: cfg.state_dir.clone(),
            retention_days: cfg.activity.retention_days,
            dirty: false,
            last_save: Instant::now(),
            save_errors: 0,
            hub_dropped: 0,
            for_hub: std::collections::BTreeSet::new(),
            block_secs: block_secs(&cfg.activity_policies),
            governance: Vec::new(),
            actions: actions(&cfg.activity_policies),
            calls: Vec::new(),
        })
    }

    /// A proxy audit record: into the log, the sinks that want activities, and the engine.
    pub fn on_proxy(&mut self, rec: &AuditRecord) {
        self.next_id += 1;
        let a = from_proxy(self.next_id, rec, &self.gateway);
        self.observe(&a);
    }

    /// A record from another source of the box (discovery): numbered and signed with the
    /// gateway's name here.
    pub fn observe_new(&mut self, mut a: Activity) {
        self.next_id += 1;
        a.id = self.next_id;
        a.gateway = Some(self.gateway.clone());
        self.observe(&a);
    }

    /// Judges the day of app discovery: the alerts go into the book and to the sinks; the
    /// findings come back for their actions.
    pub fn judge_discovery(
        &mut self,
        d: &mut AppDiscovery,
        now: DateTime<Utc>,
        facts: &dyn Fn(&str) -> Option<AppFacts>,
    ) -> Vec<DiscoveryFinding> {
        let found = d.evaluate(now, facts, self.engine.book_mut(), Some(&self.gateway));
        for f in &found {
            tracing::warn!(
                alert = f.event.alert.id,
                policy = %f.policy,
                app = %f.app,
                count = f.event.alert.count,
                "app discovery alert: {}",
                f.event.alert.reason
            );
            self.sinks.alert(&f.event);
            self.dirty = true;
            self.mark_for_hub(f.event.alert.id);
        }
        found
    }

    /// What the gateway knows of an app (risk score, unsanctioned), for anomaly detection.
    pub fn set_app_standing(&mut self, app: &str, standing: AppStanding) {
        self.engine.set_app_standing(app, standing);
    }

    pub fn observe(&mut self, a: &Activity) {
        // The country, where GeoIP knows it, for the log, the sinks and the policies.
        let placed;
        let a = if a.country.is_none()
            && let Some(p) = self.engine.place(a)
        {
            let mut c = a.clone();
            c.country = Some(p.country);
            placed = c;
            &placed
        } else {
            a
        };
        self.log.activity(a);
        self.sinks.activity(a);
        for ev in self.engine.observe(a, Utc::now()) {
            tracing::warn!(
                alert = ev.alert.id,
                policy = %ev.alert.policy,
                severity = %ev.alert.severity,
                count = ev.alert.count,
                "alert {}",
                match ev.kind {
                    tollgate_activity::AlertEventKind::Opened => "opened",
                    tollgate_activity::AlertEventKind::Updated => "updated",
                }
            );
            let opened = ev.kind == tollgate_activity::AlertEventKind::Opened;
            match self.actions.get(&ev.alert.policy).filter(|_| opened) {
                Some(acts) => {
                    let acts = acts.clone();
                    let notified = self.sinks.alert_notifying(&ev, &acts.notify);
                    for (sink, queued) in notified {
                        self.record_notification(&ev.alert, &sink, queued);
                    }
                    self.ask_connectors(&ev.alert, &acts.connector_actions);
                }
                None => self.sinks.alert(&ev),
            }
            self.dirty = true;
            self.mark_for_hub(ev.alert.id);
            self.govern(&ev.alert);
        }
    }

    /// A notification a policy asked for, as an audit record.
    fn record_notification(&mut self, alert: &tollgate_activity::Alert, sink: &str, queued: bool) {
        let mut a = action_record(alert, "notify");
        a.object = Some(if queued {
            format!(
                "alert {} of policy {:?} sent to sink {sink:?}",
                alert.id, alert.policy
            )
        } else {
            format!(
                "alert {} of policy {:?} not sent to sink {sink:?}: its rate limit or queue is full",
                alert.id, alert.policy
            )
        });
        a.result = if queued {
            tollgate_activity::Outcome::Success
        } else {
            tollgate_activity::Outcome::Failure
        };
        self.record_action(a);
    }

    /// The connector calls of the alert's policy, for its user (none without a user: a
    /// device address names nobody at the vendor).
    fn ask_connectors(
        &mut self,
        alert: &tollgate_activity::Alert,
        wanted: &[tollgate_activity::ConnectorAction],
    ) {
        let Some(user) = alert.entities.user.clone() else {
            return;
        };
        for w in wanted {
            if self.calls.len() >= MAX_FOR_HUB {
                self.hub_dropped += 1;
                continue;
            }
            self.calls.push(ConnectorCall {
                policy: alert.policy.clone(),
                alert_id: alert.id,
                connector: w.connector.clone(),
                call: w.action,
                user: user.clone(),
            });
        }
    }

    /// The connector calls asked for since the last call.
    pub fn take_connector_calls(&mut self) -> Vec<ConnectorCall> {
        std::mem::take(&mut self.calls)
    }

    /// The governance action of the alert's policy, if it has one, for the daemon to apply.
    fn govern(&mut self, alert: &tollgate_activity::Alert) {
        let Some(&secs) = self.block_secs.get(&alert.policy) else {
            return;
        };
        let Some(app) = alert_app(alert) else {
            return;
        };
        if alert.entities.user.is_none() && alert.entities.ip.is_none() {
            return;
        }
        if self.governance.len() < MAX_FOR_HUB {
            self.governance.push(SessionBlock {
                policy: alert.policy.clone(),
                alert_id: alert.id,
                user: alert.entities.user.clone(),
                ip: alert.entities.ip,
                app,
                secs,
            });
        }
    }

    /// The session blocks asked for since the last call.
    pub fn take_governance(&mut self) -> Vec<SessionBlock> {
        std::mem::take(&mut self.governance)
    }

    /// What became of a connector call (`detail` says it in words), as an audit record.
    pub fn record_connector_outcome(
        &mut self,
        o: &tollgate_connectors::governance::Outcome,
        detail: String,
    ) {
        // The action happened at the connector's vendor.
        let mut a = Activity::new(
            0,
            Utc::now(),
            o.connector.clone(),
            ActivityType::AdminAction,
            Source::Audit,
        );
        a.user = Some(o.user.clone());
        a.policy = Some(o.policy.clone());
        a.action = Some(o.call.as_str().to_string());
        a.object = Some(detail);
        a.result = if o.result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        self.record_action(a);
    }

    /// An action the gateway took (a governance block): into the activity log and the sinks
    /// that want activities, not through the policies (an action never triggers another).
    pub fn record_action(&mut self, mut a: Activity) {
        self.next_id += 1;
        a.id = self.next_id;
        a.gateway = Some(self.gateway.clone());
        self.log.activity(&a);
        self.sinks.activity(&a);
    }

    fn mark_for_hub(&mut self, id: u64) {
        if self.for_hub.len() < MAX_FOR_HUB || self.for_hub.contains(&id) {
            self.for_hub.insert(id);
        } else {
            self.hub_dropped += 1;
        }
    }

    /// The alerts opened or changed since the last call, as they stand, for the hub.
    pub fn take_for_hub(&mut self) -> Vec<tollgate_sync::protocol::AlertReport> {
        let ids = std::mem::take(&mut self.for_hub);
        ids.into_iter()
            .filter_map(|id| self.engine.book().get(id))
            .map(|a| tollgate_sync::protocol::AlertReport {
                alert_id: a.id,
                opened: a.time.timestamp(),
                last_seen: a.last_seen.timestamp(),
                severity: a.severity.as_str().to_string(),
                policy: a.policy.clone(),
                user: a.entities.user.clone(),
                ip: a.entities.ip.map(|i| i.to_string()),
                app_id: a.entities.app.clone(),
                reason: a.reason.clone(),
                status: a.status.as_str().to_string(),
                count: a.count,
                comment: a.comment.clone(),
            })
            .collect()
    }

    /// New policies and sinks (SIGHUP, a bundle). The sinks are restarted only when they
    /// changed; what their old tasks still hold is written by them before they end.
    pub fn reload(&mut self, old: &Config, new: &Config) -> Result<(), String> {
        if new.alert_sinks != old.alert_sinks {
            let spool = self.state_dir.join(SPOOL_DIR);
            self.sinks = Sinks::start_durable(&new.alert_sinks, &self.gateway, Some(&spool))
                .map_err(|e| e.to_string())?;
        }
        if new.activity_policies != old.activity_policies {
            self.engine.set_policies(&new.activity_policies);
            self.block_secs = block_secs(&new.activity_policies);
            self.actions = actions(&new.activity_policies);
        }
        if new.anomaly != old.anomaly {
            self.engine.set_anomaly(&new.anomaly);
        }
        Ok(())
    }

    /// Every poll: idle windows forgotten, the alert book written when it changed, the rotated
    /// activity log removed when all of it is past the retention.
    pub fn housekeeping(&mut self) {
        self.engine.expire(Utc::now());
        if self.dirty && self.last_save.elapsed() >= SAVE_EVERY {
            self.save();
        }
        let rotated = self
            .state_dir
            .join(ACTIVITY_DIR)
            .join(format!("{ACTIVITY_LOG}.1"));
        if let Ok(m) = std::fs::metadata(&rotated).and_then(|m| m.modified())
            && m.elapsed()
                .is_ok_and(|age| age > Duration::from_secs(86_400 * u64::from(self.retention_days)))
        {
            let _ = std::fs::remove_file(&rotated);
        }
    }

    pub fn save(&mut self) {
        let alerts: Vec<&Alert> = self.engine.book().iter().collect();
        match tollgate_activity::alert::write_json_atomic(&self.state_dir, ALERTS_FILE, &alerts) {
            Ok(()) => self.dirty = false,
            Err(e) => {
                self.save_errors += 1;
                tracing::warn!("writing {ALERTS_FILE}: {e}");
            }
        }
        self.last_save = Instant::now();
    }

    pub fn alerts(&self) -> Vec<Alert> {
        self.engine.book().iter().cloned().collect()
    }

    pub fn alert(&self, id: u64) -> Option<Alert> {
        self.engine.book().get(id).cloned()
    }

    pub fn set_status(
        &mut self,
        id: u64,
        status: AlertStatus,
        comment: Option<String>,
    ) -> Result<Alert, String> {
        let a = self
            .engine
            .book_mut()
            .set_status(id, status, comment)
            .map_err(|e| e.to_string())?
            .clone();
        self.dirty = true;
        self.save();
        self.mark_for_hub(id);
        Ok(a)
    }

    pub fn stats_json(&self) -> serde_json::Value {
        serde_json::json!({
            "policies": self.engine.policies(),
            "engine": self.engine.stats(),
            "anomaly": self.engine.anomaly_stats(),
            "alerts": self.engine.book().len(),
            "alerts_open": self.engine.book().iter().filter(|a| a.status == AlertStatus::Open).count(),
            "sinks": self.sinks.stats(),
            "log": self.log.stats(),
            "save_errors": self.save_errors,
            "hub_pending": self.for_hub.len(),
            "hub_dropped": self.hub_dropped,
        })
    }
}

/// The alerts of the last run; a missing file is none, a corrupt one an error.
pub fn load_alerts(state_dir: &Path) -> Result<Vec<Alert>> {
    let path = state_dir.join(ALERTS_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// What `tollgate activity` asks for.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActivityQuery {
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub app: Option<String>,
    /// The newest this many (default 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Most activities one query answers.
pub const MAX_QUERY: usize = 100_000;

/// Reads the activity log (rotated file, then the live one) and keeps the newest matching
/// records. Runs off the core task (it reads up to `[activity] max_mb`). Lines that do not
/// parse (a torn last line) are skipped and counted.
pub fn query_log(state_dir: &Path, retention_days: u32, q: &ActivityQuery) -> (Vec<Activity>, u64) {
    use std::io::BufRead;
    let dir = state_dir.join(ACTIVITY_DIR);
    let limit = q.limit.unwrap_or(1000).clamp(1, MAX_QUERY);
    let horizon = Utc::now() - chrono::TimeDelta::days(i64::from(retention_days));
    let since = q.since.map_or(horizon, |s| s.max(horizon));
    let mut out = std::collections::VecDeque::with_capacity(limit.min(4096));
    let mut bad = 0u64;
    #[derive(serde::Deserialize)]
    struct Line {
        activity: Activity,
    }
    for name in [format!("{ACTIVITY_LOG}.1"), ACTIVITY_LOG.to_string()] {
        let Ok(f) = std::fs::File::open(dir.join(name)) else {
            continue;
        };
        for line in std::io::BufReader::new(f).lines() {
            let Ok(line) = line else {
                bad += 1;
                break;
            };
            let Ok(Line { activity: a }) = serde_json::from_str::<Line>(&line) else {
                bad += 1;
                continue;
            };
            if a.time < since {
                continue;
            }
            if let Some(u) = &q.user
                && !a.user.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(u))
            {
                continue;
            }
            if let Some(app) = &q.app
                && !a.app.eq_ignore_ascii_case(app)
            {
                continue;
            }
            if out.len() == limit {
                out.pop_front();
            }
            out.push_back(a);
        }
    }
    (out.into(), bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(stage: &str, action: &str) -> AuditRecord {
        AuditRecord {
            time: "2026-12-03T08:00:00Z".into(),
            app: "dropbox".into(),
            user: Some("alice".into()),
            src_ip: [10, 0, 0, 2].into(),
            host: "www.dropbox.com".into(),
            method: "POST".into(),
            path: "/upload/x.pdf".into(),
            stage: stage.into(),
            policy: "watch uploads".into(),
            action: action.into(),
            reason: "r".into(),
            evidence: Vec::new(),
        }
    }

    #[test]
    fn proxy_records_become_activities() {
        let a = from_proxy(1, &rec("upload", "audit"), "gw");
        assert_eq!(a.activity, ActivityType::Upload);
        assert_eq!(a.result, Outcome::Success);
        assert_eq!(a.object.as_deref(), Some("www.dropbox.com/upload/x.pdf"));
        assert_eq!(a.policy.as_deref(), Some("watch uploads"));
        assert_eq!(a.time.to_rfc3339(), "2026-12-03T08:00:00+00:00");
        let b = from_proxy(2, &rec("download", "block"), "gw");
        assert_eq!(b.activity, ActivityType::Blocked);
        assert_eq!(b.result, Outcome::Blocked);
        assert_eq!(
            from_proxy(3, &rec("access", "audit"), "gw").activity,
            ActivityType::AppUsed
        );
        assert_eq!(
            from_proxy(4, &rec("tls", "splice"), "gw").activity,
            ActivityType::Other
        );
    }

    #[test]
    fn the_log_query_filters_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join(ACTIVITY_DIR);
        std::fs::create_dir_all(&d).unwrap();
        let mut text = String::new();
        let now = Utc::now();
        for i in 0..50u64 {
            let mut a = Activity::new(
                i,
                now - chrono::TimeDelta::minutes(50 - i as i64),
                if i % 2 == 0 { "box" } else { "dropbox" },
                ActivityType::Upload,
                Source::Proxy,
            );
            a.user = Some(format!("u{}", i % 3));
            text.push_str(&tollgate_activity::format::json(
                &tollgate_activity::Record::Activity(Box::new(a)),
            ));
            text.push('\n');
        }
        // An old record past the retention, and a torn line.
        let old = Activity::new(
            99,
            now - chrono::TimeDelta::days(40),
            "box",
            ActivityType::Upload,
            Source::Proxy,
        );
        std::fs::write(
            d.join(format!("{ACTIVITY_LOG}.1")),
            tollgate_activity::format::json(&tollgate_activity::Record::Activity(Box::new(old)))
                + "\n",
        )
        .unwrap();
        text.push_str("{\"activity\":{\"id\":");
        std::fs::write(d.join(ACTIVITY_LOG), text).unwrap();
        let (all, bad) = query_log(dir.path(), 30, &ActivityQuery::default());
        assert_eq!(all.len(), 50);
        assert_eq!(bad, 1);
        let q = ActivityQuery {
            app: Some("box".into()),
            user: Some("U0".into()),
            limit: Some(3),
            since: Some(now - chrono::TimeDelta::minutes(45)),
        };
        let (some, _) = query_log(dir.path(), 30, &q);
        let ids: Vec<u64> = some.iter().map(|a| a.id).collect();
        assert_eq!(ids, [36, 42, 48], "the newest three of u0 on box");
        assert!(some.iter().all(|a| a.app == "box"));
    }
}
