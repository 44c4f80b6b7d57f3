//! Alerts and the book that keeps them: one open alert per policy and entity (a new match
//! raises its count), status changes with a comment, and a bound on how many are kept.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::policy::Severity;
use crate::record::Activity;

/// Activities kept in an alert as its proof (the newest).
pub const MAX_PROOF: usize = 10;
/// Alerts kept by default; past it the oldest closed ones go first, then the oldest.
pub const DEFAULT_MAX_ALERTS: usize = 10_000;
/// Longest comment kept.
pub const MAX_COMMENT: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Open,
    Resolved,
    Dismissed,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Open => "open",
            AlertStatus::Resolved => "resolved",
            AlertStatus::Dismissed => "dismissed",
        }
    }
}

/// Who and what the alert is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entities {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: u64,
    /// When it was opened.
    pub time: DateTime<Utc>,
    /// When it last matched.
    pub last_seen: DateTime<Utc>,
    pub severity: Severity,
    pub policy: String,
    pub entities: Entities,
    /// Why: `50 download within 60 s`, or `download matched`.
    pub reason: String,
    /// The newest activities that prove it (at most [`MAX_PROOF`]).
    pub activities: Vec<Activity>,
    pub status: AlertStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// How many times the policy matched for this entity while the alert was open.
    pub count: u64,
}

/// The dedup key: one open alert per policy and entity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OpenKey {
    pub policy: String,
    pub actor: Option<String>,
    pub app: Option<String>,
}

/// Why a status change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlertError {
    #[error("no alert {0}")]
    NotFound(u64),
}

/// Every alert kept, by id.
#[derive(Debug, Clone)]
pub struct AlertBook {
    alerts: BTreeMap<u64, Alert>,
    open: HashMap<OpenKey, u64>,
    /// The key each alert was opened under, by id. A caller may dedup under a key that is not
    /// [`key_of`] the alert (the anomaly detections key per user, or per app, while the alert
    /// names both): closing or evicting the alert must free the key it was opened under, or
    /// the next match would be counted into the closed alert.
    keys: HashMap<u64, OpenKey>,
    next_id: u64,
    max: usize,
    /// Alerts forgotten to stay within the bound.
    pub evicted: u64,
}

impl Default for AlertBook {
    fn default() -> Self {
        AlertBook::new(DEFAULT_MAX_ALERTS)
    }
}

impl AlertBook {
    pub fn new(max: usize) -> AlertBook {
        AlertBook {
            alerts: BTreeMap::new(),
            open: HashMap::new(),
            keys: HashMap::new(),
            next_id: 1,
            max: max.max(1),
            evicted: 0,
        }
    }

    /// A book holding `alerts` (read back from disk); the open ones take their dedup keys again.
    pub fn restore(alerts: Vec<Alert>, max: usize) -> AlertBook {
        let mut book = AlertBook::new(max);
        for a in alerts {
            book.next_id = book.next_id.max(a.id + 1);
            let key = key_of(&a);
            if a.status == AlertStatus::Open {
                book.open.insert(key.clone(), a.id);
            }
            book.keys.insert(a.id, key);
            book.alerts.insert(a.id, a);
        }
        book.trim();
        book
    }

    pub fn len(&self) -> usize {
        self.alerts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
    }

    pub fn get(&self, id: u64) -> Option<&Alert> {
        self.alerts.get(&id)
    }

    /// Every alert, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.values()
    }

    pub fn alert_mut(&mut self, id: u64) -> Option<&mut Alert> {
        self.alerts.get_mut(&id)
    }

    /// The open alert for `key`, if any.
    pub fn open_mut(&mut self, key: &OpenKey) -> Option<&mut Alert> {
        let id = *self.open.get(key)?;
        self.alerts.get_mut(&id)
    }

    /// Stores a new open alert (its id is assigned here) and returns its id.
    pub fn insert_open(&mut self, key: OpenKey, mut alert: Alert) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        alert.id = id;
        alert.status = AlertStatus::Open;
        self.open.insert(key.clone(), id);
        self.keys.insert(id, key);
        self.alerts.insert(id, alert);
        self.trim();
        id
    }

    /// Opens `alert` under `key`, or, when one is open for it, raises that one's count and
    /// takes the new one's reason, severity and proof.
    pub fn raise(&mut self, key: OpenKey, alert: Alert) -> crate::engine::AlertEvent {
        use crate::engine::{AlertEvent, AlertEventKind};
        if let Some(a) = self.open_mut(&key) {
            a.count += 1;
            a.last_seen = alert.last_seen;
            a.reason = alert.reason;
            a.severity = alert.severity;
            for p in alert.activities {
                if a.activities.len() >= MAX_PROOF {
                    a.activities.remove(0);
                }
                a.activities.push(p);
            }
            return AlertEvent {
                kind: AlertEventKind::Updated,
                alert: a.clone(),
            };
        }
        let id = self.insert_open(key, alert.clone());
        AlertEvent {
            kind: AlertEventKind::Opened,
            alert: self.get(id).cloned().unwrap_or(Alert { id, ..alert }),
        }
    }

    /// Resolves or dismisses an alert (or opens it again); the next match of a closed one's
    /// policy and entity opens a new alert.
    pub fn set_status(
        &mut self,
        id: u64,
        status: AlertStatus,
        comment: Option<String>,
    ) -> Result<&Alert, AlertError> {
        let a = self.alerts.get_mut(&id).ok_or(AlertError::NotFound(id))?;
        let key = self.keys.get(&id).cloned().unwrap_or_else(|| key_of(a));
        if a.status == AlertStatus::Open && status != AlertStatus::Open {
            if self.open.get(&key) == Some(&id) {
                self.open.remove(&key);
            }
        } else if status == AlertStatus::Open && a.status != AlertStatus::Open {
            // Another alert may have opened for the key meanwhile: that one stays the open one.
            self.open.entry(key).or_insert(id);
        }
        a.status = status;
        if let Some(mut c) = comment {
            truncate(&mut c, MAX_COMMENT);
            a.comment = Some(c);
        }
        Ok(a)
    }

    fn trim(&mut self) {
        while self.alerts.len() > self.max {
            let victim = self
                .alerts
                .values()
                .find(|a| a.status != AlertStatus::Open)
                .or_else(|| self.alerts.values().next())
                .map(|a| a.id);
            let Some(id) = victim else { break };
            let key = self.keys.remove(&id);
            if let Some(a) = self.alerts.remove(&id)
                && a.status == AlertStatus::Open
            {
                let key = key.unwrap_or_else(|| key_of(&a));
                if self.open.get(&key) == Some(&id) {
                    self.open.remove(&key);
                }
            }
            self.evicted += 1;
        }
    }
}

/// The dedup key an alert was opened under.
pub fn key_of(a: &Alert) -> OpenKey {
    OpenKey {
        policy: a.policy.clone(),
        actor: actor_key(a.entities.user.as_deref(), a.entities.ip),
        app: a.entities.app.clone(),
    }
}

/// The actor part of a dedup key: the user (without case), else the address.
pub fn actor_key(user: Option<&str>, ip: Option<std::net::IpAddr>) -> Option<String> {
    user.map(str::to_lowercase)
        .or_else(|| ip.map(|i| i.to_string()))
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Writes `name` in `dir` durably: a fresh temporary file (never opened through an existing
/// path or symlink), fsynced, renamed over the old one, the directory fsynced.
pub fn write_json_atomic<T: serde::Serialize>(
    dir: &std::path::Path,
    name: &str,
    value: &T,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    write_atomic(dir, name, &body)
}

/// Writes `body` as `name` in `dir` the same way, mode 0600.
pub fn write_atomic(dir: &std::path::Path, name: &str, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
