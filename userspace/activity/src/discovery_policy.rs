//! App discovery policies (`[[app_discovery_policies]]`): an alert, and optionally a sanction
//! tag, when an app that fits the policy's filters on catalog facts (app, category, risk score,
//! tag, newness) crosses one of its lines for one day (users, addresses, traffic, upload,
//! transactions). Defender for Cloud Apps' example: "a new app with risk score below 6 used by
//! more than 50 users or 50 MB a day".
//!
//! The input is discovery's per-interval usage ([`DiscoveredUse`]); days are UTC days. Users
//! and addresses are counted as keyed hashes, at most [`MAX_DISTINCT`] per app and day (a
//! count that reached it stays there), so a LAN host that sprays user names or source
//! addresses costs bounded memory. At most [`MAX_APPS`] apps are tracked per day, and
//! remembered as seen; more are counted in [`DiscoveryStats::apps_dropped`].
//!
//! A policy fires once per app and day. Its alert is the book's open alert for (policy, app):
//! a later day's match raises its count. The caller applies the policy's `tag`; the finding
//! says whether the app already carried it.
//!
//! The state ([`DiscoveryState`]) is plain data the caller writes to disk, so that a restart
//! in the middle of a day neither forgets nor doubles the day's counts, nor makes every app
//! new again.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::alert::{Alert, AlertBook, AlertStatus, Entities, OpenKey};
use crate::engine::AlertEvent;
#[cfg(test)]
use crate::engine::AlertEventKind;
use crate::policy::Severity;
use crate::record::{Activity, ActivityType, Source};

/// Distinct users (and, apart, addresses) counted per app and day.
pub const MAX_DISTINCT: usize = 4096;
/// Apps tracked per day and remembered as seen.
pub const MAX_APPS: usize = 50_000;
/// Days an app stays "new" when a policy sets `new_app = true` without `new_within_days`.
pub const DEFAULT_NEW_WITHIN_DAYS: u32 = 7;
/// The tags a policy may filter on (`untagged`: no tag) and the ones it may set.
pub const FILTER_TAGS: &[&str] = &["sanctioned", "unsanctioned", "monitored", "untagged"];
pub const ACTION_TAGS: &[&str] = &["sanctioned", "unsanctioned", "monitored"];

/// Whether one of the day's lines is enough, or all of them are needed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Require {
    #[default]
    Any,
    All,
}

/// One day's lines; each is crossed when the day's figure is above it. None set: any use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DailyConditions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_above: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ips_above: Option<u64>,
    /// Bytes both ways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_above: Option<u64>,
    /// Bytes from the users to the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_bytes_above: Option<u64>,
    /// Flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transactions_above: Option<u64>,
    #[serde(default)]
    pub require: Require,
}

/// One `[[app_discovery_policies]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppDiscoveryPolicy {
    pub name: String,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    #[serde(default = "default_severity")]
    pub severity: Severity,
    /// Only these app ids (empty: any).
    #[serde(default)]
    pub apps: Vec<String>,
    /// Only apps of these catalog categories, without case (empty: any).
    #[serde(default)]
    pub categories: Vec<String>,
    /// Only apps whose risk score (0–10, 10 safest) is below this; an unscored app never is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_below: Option<f64>,
    /// Only apps with one of these tags (`untagged` for none; empty: any).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Only apps this box first saw within the last `new_within_days` days.
    #[serde(default)]
    pub new_app: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_within_days: Option<u32>,
    #[serde(default)]
    pub daily: DailyConditions,
    /// The governance action: the tag the app gets when the policy fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

fn default_enabled() -> bool {
    true
}
fn default_severity() -> Severity {
    Severity::Medium
}

/// A policy that cannot be used: which one, which key, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("app_discovery_policies[{index}].{key}: {message}")]
pub struct DiscoveryPolicyError {
    pub index: usize,
    pub key: &'static str,
    pub message: String,
}

/// Checks names (non-empty, unique), tags, the risk range and the counting bound.
pub fn validate(policies: &[AppDiscoveryPolicy]) -> Result<(), DiscoveryPolicyError> {
    let mut names = HashSet::new();
    for (index, p) in policies.iter().enumerate() {
        let err = |key: &'static str, message: String| DiscoveryPolicyError {
            index,
            key,
            message,
        };
        if p.name.trim().is_empty() || p.name.chars().any(char::is_control) {
            return Err(err("name", "needs a printable name".into()));
        }
        if !names.insert(p.name.as_str()) {
            return Err(err("name", format!("two policies are named {:?}", p.name)));
        }
        for t in &p.tags {
            if !FILTER_TAGS.contains(&t.as_str()) {
                return Err(err(
                    "tags",
                    format!("{t:?} is not one of {}", FILTER_TAGS.join(", ")),
                ));
            }
        }
        if let Some(t) = &p.tag
            && !ACTION_TAGS.contains(&t.as_str())
        {
            return Err(err(
                "tag",
                format!("{t:?} is not one of {}", ACTION_TAGS.join(", ")),
            ));
        }
        if let Some(r) = p.risk_below
            && !(r.is_finite() && (0.0..=10.0).contains(&r))
        {
            return Err(err("risk_below", "must be within 0-10".into()));
        }
        if p.new_within_days.is_some() && !p.new_app {
            return Err(err("new_within_days", "needs new_app = true".into()));
        }
        let d = &p.daily;
        for (key, v) in [
            ("daily.users_above", d.users_above),
            ("daily.ips_above", d.ips_above),
        ] {
            if v.is_some_and(|v| v >= MAX_DISTINCT as u64) {
                return Err(err(
                    key,
                    format!("must be below {MAX_DISTINCT}, the most counted per app and day"),
                ));
            }
        }
    }
    Ok(())
}

/// What the caller knows of an app (from its catalog and tags).
#[derive(Debug, Clone)]
pub struct AppFacts {
    pub name: String,
    pub category: String,
    pub risk_score: Option<f64>,
    /// `sanctioned`, `unsanctioned`, `monitored` (or an admin's own tag); `None` when untagged.
    pub tag: Option<String>,
}

/// One app's use by one user or device in one discovery interval.
#[derive(Debug, Clone)]
pub struct DiscoveredUse<'a> {
    pub time: DateTime<Utc>,
    pub app: &'a str,
    /// The user, or the device when no user is known.
    pub user: &'a str,
    pub ip: Option<IpAddr>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub transactions: u64,
}

/// A policy that fired for an app.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryFinding {
    pub event: AlertEvent,
    pub app: String,
    pub policy: String,
    /// The policy's `tag`, when the app does not carry it yet.
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryStats {
    pub observed: u64,
    pub fired: u64,
    /// Uses of apps past [`MAX_APPS`] in a day, not counted.
    pub apps_dropped: u64,
    /// Users or addresses past [`MAX_DISTINCT`] for an app in a day, not counted apart.
    pub distinct_saturated: u64,
}

/// One app's day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppDay {
    pub users: BTreeSet<u64>,
    pub ips: BTreeSet<u64>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub transactions: u64,
}

/// What survives a restart: the day's counts, the policies that fired today, when each app
/// was first seen, and the key the hashes were made with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryState {
    pub day: Option<NaiveDate>,
    pub key: (u64, u64),
    pub apps: BTreeMap<String, AppDay>,
    /// (policy, app) pairs that fired today.
    pub fired: BTreeSet<(String, String)>,
    pub first_seen: BTreeMap<String, DateTime<Utc>>,
    #[serde(default)]
    pub stats: DiscoveryStats,
}

/// Keyed SipHash with a key kept in the state, so that counts survive a restart.
#[derive(Clone, Copy)]
struct Keyed((u64, u64));

impl Keyed {
    fn hash(self, bytes: &[u8]) -> u64 {
        // `RandomState` cannot take a key; `DefaultHasher` is SipHash-1-3 with a zero key,
        // so the key is mixed in first. The hashes only count distinct values: an attacker
        // who found collisions could at most make two users count as one.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.0.hash(&mut h);
        bytes.hash(&mut h);
        h.finish()
    }
}

/// The evaluator: feed it each interval's uses, then [`AppDiscovery::evaluate`].
#[derive(Debug, Clone)]
pub struct AppDiscovery {
    policies: Vec<AppDiscoveryPolicy>,
    state: DiscoveryState,
    /// Apps used since the last evaluation.
    touched: HashSet<String>,
    dirty: bool,
}

impl AppDiscovery {
    /// An evaluator with `state` read back from disk (or the default for a first start).
    pub fn new(policies: &[AppDiscoveryPolicy], mut state: DiscoveryState) -> AppDiscovery {
        if state.key == (0, 0) {
            let s = std::collections::hash_map::RandomState::new();
            state.key = (s.hash_one(1u8), s.hash_one(2u8));
        }
        AppDiscovery {
            policies: policies.iter().filter(|p| p.enabled).cloned().collect(),
            state,
            touched: HashSet::new(),
            dirty: true,
        }
    }

    pub fn set_policies(&mut self, policies: &[AppDiscoveryPolicy]) {
        self.policies = policies.iter().filter(|p| p.enabled).cloned().collect();
        // A new policy looks at what today already saw.
        self.touched.extend(self.state.apps.keys().cloned());
    }

    pub fn policies(&self) -> usize {
        self.policies.len()
    }

    pub fn stats(&self) -> DiscoveryStats {
        self.state.stats
    }

    /// The state to write, when it changed since the last call.
    pub fn take_changed(&mut self) -> Option<&DiscoveryState> {
        std::mem::take(&mut self.dirty).then_some(&self.state)
    }

    /// Today's figures for an app.
    pub fn day(&self, app: &str) -> Option<&AppDay> {
        self.state.apps.get(app)
    }

    fn roll(&mut self, day: NaiveDate) {
        if self.state.day != Some(day) {
            self.state.day = Some(day);
            self.state.apps.clear();
            self.state.fired.clear();
            self.touched.clear();
            self.dirty = true;
        }
    }

    /// Counts one use in its day (a use from an earlier day than the current one is counted
    /// in the current one: discovery reports late, never early).
    pub fn observe(&mut self, u: &DiscoveredUse<'_>) {
        let day = u.time.date_naive();
        if self.state.day.is_none_or(|d| day > d) {
            self.roll(day);
        }
        self.state.stats.observed += 1;
        if !self.state.apps.contains_key(u.app) && self.state.apps.len() >= MAX_APPS {
            self.state.stats.apps_dropped += 1;
            return;
        }
        if !self.state.first_seen.contains_key(u.app) {
            if self.state.first_seen.len() >= MAX_APPS {
                // The oldest memory goes: an app seen that long ago is not new anyway.
                if let Some(oldest) = self
                    .state
                    .first_seen
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(k, _)| k.clone())
                {
                    self.state.first_seen.remove(&oldest);
                }
            }
            self.state.first_seen.insert(u.app.to_string(), u.time);
        }
        let key = Keyed(self.state.key);
        let user = key.hash(u.user.to_lowercase().as_bytes());
        let ip = u.ip.map(|ip| match ip {
            IpAddr::V4(a) => key.hash(&a.octets()),
            IpAddr::V6(a) => key.hash(&a.octets()),
        });
        let stats = &mut self.state.stats;
        let d = self.state.apps.entry(u.app.to_string()).or_default();
        for (set, v) in [(&mut d.users, Some(user)), (&mut d.ips, ip)] {
            let Some(v) = v else { continue };
            if set.len() < MAX_DISTINCT {
                set.insert(v);
            } else if !set.contains(&v) {
                stats.distinct_saturated += 1;
            }
        }
        d.bytes_up = d.bytes_up.saturating_add(u.bytes_up);
        d.bytes_down = d.bytes_down.saturating_add(u.bytes_down);
        d.transactions = d.transactions.saturating_add(u.transactions);
        if !self.touched.contains(u.app) {
            self.touched.insert(u.app.to_string());
        }
        self.dirty = true;
    }

    /// Checks the apps used since the last call against every policy. Each policy fires at
    /// most once per app and day; its alert goes into `book` (opened, or the open one's count
    /// raised) and comes back as a finding.
    pub fn evaluate(
        &mut self,
        now: DateTime<Utc>,
        facts: &dyn Fn(&str) -> Option<AppFacts>,
        book: &mut AlertBook,
        gateway: Option<&str>,
    ) -> Vec<DiscoveryFinding> {
        let mut out = Vec::new();
        let mut touched: Vec<String> = self.touched.drain().collect();
        touched.sort();
        for app in touched {
            let Some(f) = facts(&app) else { continue };
            let Some(day) = self.state.apps.get(&app) else {
                continue;
            };
            let first = self.state.first_seen.get(&app).copied();
            for p in &self.policies {
                if self
                    .state
                    .fired
                    .contains(&(p.name.clone(), app.to_string()))
                {
                    continue;
                }
                let Some(why) = fits(p, &app, &f, first, now)
                    .and_then(|why| crossed(&p.daily, day).map(|lines| format!("{lines}; {why}")))
                else {
                    continue;
                };
                self.state.fired.insert((p.name.clone(), app.clone()));
                self.state.stats.fired += 1;
                self.dirty = true;
                let reason = format!(
                    "{} ({}) on {}: {why}",
                    f.name,
                    app,
                    self.state.day.map_or_else(String::new, |d| d.to_string())
                );
                let mut proof = Activity::new(
                    0,
                    now,
                    app.clone(),
                    ActivityType::AppUsed,
                    Source::Discovery,
                );
                proof.bytes = Some(day.bytes_up.saturating_add(day.bytes_down));
                proof.policy = Some(p.name.clone());
                proof.gateway = gateway.map(str::to_string);
                let event = raise(book, p, &app, reason, proof, now, gateway);
                let tag = p
                    .tag
                    .clone()
                    .filter(|t| f.tag.as_deref() != Some(t.as_str()));
                out.push(DiscoveryFinding {
                    event,
                    app: app.clone(),
                    policy: p.name.clone(),
                    tag,
                });
            }
        }
        out
    }
}

/// Why an app fits a policy's filters, or `None`.
fn fits(
    p: &AppDiscoveryPolicy,
    app: &str,
    f: &AppFacts,
    first_seen: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<String> {
    let mut why = Vec::new();
    if !p.apps.is_empty() && !p.apps.iter().any(|a| a.eq_ignore_ascii_case(app)) {
        return None;
    }
    if !p.categories.is_empty() {
        if !p
            .categories
            .iter()
            .any(|c| c.eq_ignore_ascii_case(&f.category))
        {
            return None;
        }
        why.push(format!("category {}", f.category));
    }
    if let Some(max) = p.risk_below {
        let score = f.risk_score.filter(|s| *s < max)?;
        why.push(format!("risk score {score:.1} (below {max})"));
    }
    if !p.tags.is_empty() {
        let tag = f.tag.as_deref().unwrap_or("untagged");
        if !p.tags.iter().any(|t| t == tag) {
            return None;
        }
        why.push(format!("tag {tag}"));
    }
    if p.new_app {
        let days = p.new_within_days.unwrap_or(DEFAULT_NEW_WITHIN_DAYS);
        let first = first_seen?;
        if now - first > TimeDelta::days(i64::from(days)) {
            return None;
        }
        why.push(format!(
            "new: first seen {} (within {days} days)",
            first.format("%Y-%m-%d %H:%M UTC")
        ));
    }
    Some(why.join(", "))
}

/// The lines the day crossed, said with their values, or `None` when the policy's `require`
/// is not met.
fn crossed(d: &DailyConditions, day: &AppDay) -> Option<String> {
    let lines = [
        ("users", d.users_above, day.users.len() as u64),
        ("addresses", d.ips_above, day.ips.len() as u64),
        (
            "bytes",
            d.bytes_above,
            day.bytes_up.saturating_add(day.bytes_down),
        ),
        ("upload bytes", d.upload_bytes_above, day.bytes_up),
        ("transactions", d.transactions_above, day.transactions),
    ];
    let set: Vec<_> = lines.iter().filter(|(_, line, _)| line.is_some()).collect();
    if set.is_empty() {
        return (day.transactions > 0 || day.bytes_up > 0 || day.bytes_down > 0)
            .then(|| format!("used today ({} transactions)", day.transactions));
    }
    let over: Vec<String> = set
        .iter()
        .filter(|(_, line, v)| line.is_some_and(|l| *v > l))
        .map(|(what, line, v)| format!("{v} {what} today (above {})", line.unwrap_or(0)))
        .collect();
    let met = match d.require {
        Require::Any => !over.is_empty(),
        Require::All => over.len() == set.len(),
    };
    met.then(|| over.join(", "))
}

/// Opens the alert for (policy, app), or raises the open one's count.
fn raise(
    book: &mut AlertBook,
    p: &AppDiscoveryPolicy,
    app: &str,
    reason: String,
    proof: Activity,
    now: DateTime<Utc>,
    gateway: Option<&str>,
) -> AlertEvent {
    let key = OpenKey {
        policy: p.name.clone(),
        actor: None,
        app: Some(app.to_string()),
    };
    book.raise(
        key,
        Alert {
            id: 0,
            time: now,
            last_seen: now,
            severity: p.severity,
            policy: p.name.clone(),
            entities: Entities {
                user: None,
                ip: None,
                app: Some(app.to_string()),
                gateway: gateway.map(str::to_string),
            },
            reason,
            activities: vec![proof],
            status: AlertStatus::Open,
            comment: None,
            count: 1,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_text: &str) -> AppDiscoveryPolicy {
        toml::from_str(toml_text).unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn use_of<'a>(
        time: &str,
        app: &'a str,
        user: &'a str,
        up: u64,
        down: u64,
    ) -> DiscoveredUse<'a> {
        DiscoveredUse {
            time: t(time),
            app,
            user,
            ip: Some(IpAddr::from([10, 0, 0, (user.len() % 250) as u8 + 1])),
            bytes_up: up,
            bytes_down: down,
            transactions: 1,
        }
    }

    fn facts(app: &str) -> Option<AppFacts> {
        match app {
            "sketchy" => Some(AppFacts {
                name: "Sketchy Share".into(),
                category: "Cloud storage".into(),
                risk_score: Some(3.2),
                tag: None,
            }),
            "solid" => Some(AppFacts {
                name: "Solid Docs".into(),
                category: "Cloud storage".into(),
                risk_score: Some(8.9),
                tag: None,
            }),
            "unscored" => Some(AppFacts {
                name: "Unscored".into(),
                category: "Cloud storage".into(),
                risk_score: None,
                tag: None,
            }),
            _ => None,
        }
    }

    const NEW_RISKY: &str = r#"
        name = "new risky app"
        severity = "high"
        new_app = true
        risk_below = 6
        daily = { users_above = 2, bytes_above = 50000000 }
        tag = "unsanctioned"
    "#;

    #[test]
    fn a_new_risky_app_fires_once_a_day_on_either_line() {
        let p = policy(NEW_RISKY);
        validate(std::slice::from_ref(&p)).unwrap();
        let mut d = AppDiscovery::new(&[p], DiscoveryState::default());
        let mut book = AlertBook::default();
        // Two users: below the users line, and 20 MB: below the bytes line.
        d.observe(&use_of(
            "2026-12-01T09:00:00Z",
            "sketchy",
            "alice",
            10_000_000,
            0,
        ));
        d.observe(&use_of(
            "2026-12-01T09:01:00Z",
            "sketchy",
            "bob",
            10_000_000,
            0,
        ));
        d.observe(&use_of("2026-12-01T09:01:00Z", "solid", "a", 1, 0));
        d.observe(&use_of("2026-12-01T09:01:00Z", "solid", "bb", 1, 0));
        d.observe(&use_of("2026-12-01T09:01:00Z", "solid", "ccc", 1, 0));
        let now = t("2026-12-01T09:02:00Z");
        assert!(d.evaluate(now, &facts, &mut book, Some("gw")).is_empty());
        // The same user again (in capitals) is not a third user.
        d.observe(&use_of("2026-12-01T09:03:00Z", "sketchy", "ALICE", 1, 0));
        assert!(d.evaluate(now, &facts, &mut book, Some("gw")).is_empty());
        // A third user crosses the users line.
        d.observe(&use_of("2026-12-01T10:00:00Z", "sketchy", "carol", 1, 0));
        let found = d.evaluate(t("2026-12-01T10:01:00Z"), &facts, &mut book, Some("gw"));
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(
            (f.app.as_str(), f.tag.as_deref()),
            ("sketchy", Some("unsanctioned"))
        );
        assert_eq!(f.event.kind, AlertEventKind::Opened);
        let a = &f.event.alert;
        assert_eq!(a.severity, Severity::High);
        assert_eq!(a.entities.app.as_deref(), Some("sketchy"));
        assert!(a.reason.contains("3 users today (above 2)"), "{}", a.reason);
        assert!(
            a.reason.contains("risk score 3.2 (below 6)"),
            "{}",
            a.reason
        );
        assert!(
            a.reason.contains("new: first seen 2026-12-01 09:00"),
            "{}",
            a.reason
        );
        // More use the same day: no second finding.
        d.observe(&use_of(
            "2026-12-01T11:00:00Z",
            "sketchy",
            "dave",
            60_000_000,
            0,
        ));
        assert!(
            d.evaluate(t("2026-12-01T11:01:00Z"), &facts, &mut book, None)
                .is_empty()
        );
        // The next day it fires again, on the bytes line, into the same open alert.
        d.observe(&use_of(
            "2026-12-02T08:00:00Z",
            "sketchy",
            "erin",
            0,
            60_000_000,
        ));
        let next = d.evaluate(t("2026-12-02T08:01:00Z"), &facts, &mut book, None);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].event.kind, AlertEventKind::Updated);
        assert_eq!(next[0].event.alert.count, 2);
        assert!(next[0].event.alert.reason.contains("60000000 bytes today"));
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn filters_on_facts_hold_and_an_old_app_is_not_new() {
        let mut d = AppDiscovery::new(&[policy(NEW_RISKY)], DiscoveryState::default());
        let mut book = AlertBook::default();
        // First seen on the 1st; used by many on the 20th: no longer new.
        d.observe(&use_of("2026-12-01T09:00:00Z", "sketchy", "alice", 1, 0));
        d.evaluate(t("2026-12-01T09:00:00Z"), &facts, &mut book, None);
        for u in ["a", "b", "c", "d"] {
            d.observe(&use_of("2026-12-20T09:00:00Z", "sketchy", u, 1, 0));
            // A safe app and an unscored one never fit `risk_below`.
            d.observe(&use_of("2026-12-20T09:00:00Z", "solid", u, 1, 0));
            d.observe(&use_of("2026-12-20T09:00:00Z", "unscored", u, 1, 0));
            // An app the catalog does not know is skipped.
            d.observe(&use_of("2026-12-20T09:00:00Z", "ghost", u, 1, 0));
        }
        assert!(
            d.evaluate(t("2026-12-20T09:01:00Z"), &facts, &mut book, None)
                .is_empty()
        );
        assert_eq!(book.len(), 0);
    }

    #[test]
    fn all_lines_and_tag_filters() {
        let p = policy(
            r#"
            name = "heavy uploads to untagged storage"
            categories = ["cloud STORAGE"]
            tags = ["untagged"]
            daily = { users_above = 1, upload_bytes_above = 100, require = "all" }
        "#,
        );
        let mut d = AppDiscovery::new(&[p], DiscoveryState::default());
        let mut book = AlertBook::default();
        d.observe(&use_of("2026-12-01T09:00:00Z", "solid", "a", 0, 5000));
        d.observe(&use_of("2026-12-01T09:00:00Z", "solid", "bb", 50, 0));
        // Two users, but 50 bytes up: not all lines.
        assert!(
            d.evaluate(t("2026-12-01T09:00:00Z"), &facts, &mut book, None)
                .is_empty()
        );
        d.observe(&use_of("2026-12-01T09:00:00Z", "solid", "bb", 51, 0));
        let tagged = |app: &str| {
            facts(app).map(|f| AppFacts {
                tag: Some("sanctioned".into()),
                ..f
            })
        };
        assert!(
            d.evaluate(t("2026-12-01T09:00:00Z"), &tagged, &mut book, None)
                .is_empty()
        );
        d.observe(&use_of("2026-12-01T09:00:00Z", "solid", "bb", 0, 0));
        let found = d.evaluate(t("2026-12-01T09:00:00Z"), &facts, &mut book, None);
        assert_eq!(found.len(), 1);
        assert!(
            found[0]
                .event
                .alert
                .reason
                .contains("101 upload bytes today (above 100)")
        );
        assert_eq!(found[0].tag, None);
    }

    #[test]
    fn the_state_survives_a_restart_without_doubling_or_forgetting() {
        let p = policy(NEW_RISKY);
        let mut d = AppDiscovery::new(std::slice::from_ref(&p), DiscoveryState::default());
        let mut book = AlertBook::default();
        d.observe(&use_of("2026-12-01T09:00:00Z", "sketchy", "alice", 1, 0));
        d.observe(&use_of("2026-12-01T09:00:00Z", "sketchy", "bob", 1, 0));
        d.evaluate(t("2026-12-01T09:00:00Z"), &facts, &mut book, None);
        let saved: DiscoveryState =
            serde_json::from_str(&serde_json::to_string(d.take_changed().unwrap()).unwrap())
                .unwrap();
        assert!(d.take_changed().is_none(), "nothing changed since");
        let mut d = AppDiscovery::new(&[p], saved);
        // Alice again is still one of two users; carol makes three.
        d.observe(&use_of("2026-12-01T10:00:00Z", "sketchy", "alice", 1, 0));
        assert!(
            d.evaluate(t("2026-12-01T10:00:00Z"), &facts, &mut book, None)
                .is_empty()
        );
        d.observe(&use_of("2026-12-01T10:00:00Z", "sketchy", "carol", 1, 0));
        let found = d.evaluate(t("2026-12-01T10:00:00Z"), &facts, &mut book, None);
        assert_eq!(found.len(), 1);
        // Still new: first seen kept from before the restart.
        assert!(
            found[0]
                .event
                .alert
                .reason
                .contains("first seen 2026-12-01 09:00")
        );
    }

    #[test]
    fn sprayed_users_cost_bounded_memory() {
        let p = policy(
            r#"
            name = "many users"
            daily = { users_above = 4000 }
        "#,
        );
        let mut d = AppDiscovery::new(&[p], DiscoveryState::default());
        let names: Vec<String> = (0..20_000).map(|i| format!("spray{i}")).collect();
        for n in &names {
            d.observe(&use_of("2026-12-01T09:00:00Z", "sketchy", n, 1, 0));
        }
        let day = d.day("sketchy").unwrap();
        assert_eq!(day.users.len(), MAX_DISTINCT);
        assert!(d.stats().distinct_saturated >= 20_000 - MAX_DISTINCT as u64);
        let mut book = AlertBook::default();
        // The count saturated above the line: it still fires.
        assert_eq!(
            d.evaluate(t("2026-12-01T09:00:00Z"), &facts, &mut book, None)
                .len(),
            1
        );
    }

    #[test]
    fn bad_policies_are_refused() {
        for (text, needle) in [
            ("name = \"\"", "].name: needs a printable name"),
            ("name = \"x\"\ntag = \"blocked\"", "].tag:"),
            ("name = \"x\"\ntags = [\"evil\"]", "].tags:"),
            ("name = \"x\"\nrisk_below = 11.0", "risk_below"),
            ("name = \"x\"\nnew_within_days = 3", "new_app"),
            (
                "name = \"x\"\ndaily = { users_above = 5000 }",
                "users_above",
            ),
        ] {
            let p = policy(text);
            let e = validate(&[p]).unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
        let p = policy("name = \"x\"");
        assert!(
            validate(&[p.clone(), p])
                .unwrap_err()
                .message
                .contains("two")
        );
        assert!(toml::from_str::<AppDiscoveryPolicy>("name = \"x\"\nbogus = 1").is_err());
    }
}
