//! Activity policies as the admin writes them (`[[activity_policies]]`), their validation and
//! the compiled form the engine evaluates.

use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::record::{Activity, ActivityType, Outcome, Source};

/// How bad an alert is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
    /// CEF severity (0-10): low 3, medium 6, high 8.
    pub fn cef(self) -> u8 {
        match self {
            Severity::Low => 3,
            Severity::Medium => 6,
            Severity::High => 8,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One value or a list of them (`activity = "download"` or `activity = ["download", "share"]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `repeated = { count = 50, within_secs = 60, per_user = true }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repeated {
    /// Matching activities that make an alert.
    pub count: u32,
    /// ... within this many seconds.
    pub within_secs: u64,
    /// Count each user (else the device address) apart.
    #[serde(default)]
    pub per_user: bool,
    /// Count each app apart.
    #[serde(default)]
    pub per_app: bool,
}

/// `[[activity_policies]]`: filters on the record's fields (all given ones must match; a list
/// matches when any of its entries does), and a single activity or a repeated one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivityPolicy {
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub severity: Severity,
    /// Activity types (absent: any).
    #[serde(default)]
    pub activity: Option<OneOrMany<ActivityType>>,
    /// App ids (empty: any).
    #[serde(default)]
    pub apps: Vec<String>,
    /// User names, compared without case (empty: any).
    #[serde(default)]
    pub users: Vec<String>,
    /// Device addresses or CIDRs (empty: any).
    #[serde(default)]
    pub ips: Vec<IpNet>,
    /// The object (file name, URL) contains this (ASCII letters compared without case).
    #[serde(default)]
    pub object_contains: Option<String>,
    /// At least this many bytes.
    #[serde(default)]
    pub min_bytes: Option<u64>,
    #[serde(default)]
    pub result: Option<Outcome>,
    /// Sources (empty: any).
    #[serde(default)]
    pub sources: Vec<Source>,
    /// N matching within a window; absent: every matching activity alerts.
    #[serde(default)]
    pub repeated: Option<Repeated>,
    /// Governance: when the policy alerts, the session proxy refuses the alert's user (or,
    /// without a user, its device) any session to the alert's app (for a policy not per app,
    /// the app of the activity that fired it) for this many seconds. Needs a per-user policy
    /// (a single activity, or `repeated.per_user`); applies to apps under session control;
    /// each block and each refused request is an audit record.
    #[serde(default)]
    pub block_sessions_secs: Option<u64>,
    /// Governance: when the policy opens an alert for a user, each of these calls is made
    /// through the named connector's admin API (Okta: suspend the user, revoke their sessions;
    /// GitHub Enterprise Server: suspend). Made where the connector runs (a gateway's
    /// `run_on = "gateway"` connectors, the hub's others), once per alert opened; each call
    /// and its outcome is an audit record.
    #[serde(default)]
    pub connector_actions: Vec<ConnectorAction>,
    /// Governance: when the policy opens an alert, it goes to these `[[alert_sinks]]` (by
    /// their `name`) even where their `send` or `min_severity` would leave it out: a webhook
    /// to the team's chat or paging tool with `send = []` hears only from the policies that
    /// name it. Each notification is an audit record.
    #[serde(default)]
    pub notify: Vec<String>,
}

/// `connector_actions = [{ connector = "okta", action = "suspend_user" }]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorAction {
    /// The connector's `name`.
    pub connector: String,
    pub action: GovernanceCall,
}

/// A governance call a policy may ask of a connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GovernanceCall {
    /// Okta: `POST /api/v1/users/{id}/lifecycle/suspend`; GitHub Enterprise Server:
    /// `PUT /users/{username}/suspended`.
    SuspendUser,
    /// Okta: `DELETE /api/v1/users/{id}/sessions`.
    RevokeSessions,
}

impl GovernanceCall {
    pub fn as_str(self) -> &'static str {
        match self {
            GovernanceCall::SuspendUser => "suspend_user",
            GovernanceCall::RevokeSessions => "revoke_sessions",
        }
    }
}

impl fmt::Display for GovernanceCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a policy asks to be done when it opens an alert, beyond the alert itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyActions {
    pub connector_actions: Vec<ConnectorAction>,
    pub notify: Vec<String>,
}

impl PolicyActions {
    /// The policies that ask for a connector call or a notification, by name.
    pub fn by_policy(
        policies: &[ActivityPolicy],
    ) -> std::collections::HashMap<String, PolicyActions> {
        policies
            .iter()
            .filter(|p| !p.connector_actions.is_empty() || !p.notify.is_empty())
            .map(|p| {
                (
                    p.name.clone(),
                    PolicyActions {
                        connector_actions: p.connector_actions.clone(),
                        notify: p.notify.clone(),
                    },
                )
            })
            .collect()
    }
}

/// Most connector actions or notified sinks one policy may name.
pub const MAX_POLICY_ACTIONS: usize = 8;

/// Checks that every sink a policy notifies is one of `sinks` by name.
pub fn validate_notify(
    policies: &[ActivityPolicy],
    sinks: &[crate::sink::SinkConfig],
) -> Result<(), PolicyError> {
    for (index, p) in policies.iter().enumerate() {
        for n in &p.notify {
            if !sinks.iter().any(|s| s.name.as_deref() == Some(n.as_str())) {
                return Err(PolicyError {
                    index,
                    key: "notify",
                    message: format!(
                        "no [[alert_sinks]] entry has name = {n:?} (name the sink to notify)"
                    ),
                });
            }
        }
    }
    Ok(())
}

fn yes() -> bool {
    true
}

/// Shortest governance block of a user's sessions.
pub const MIN_BLOCK_SECS: u64 = 60;
/// Most activities a repeated policy may ask for.
pub const MAX_REPEAT_COUNT: u32 = 1_000_000;
/// Longest window of a repeated policy (a week).
pub const MAX_WINDOW_SECS: u64 = 7 * 86_400;
/// Longest policy name (it goes into every alert line).
pub const MAX_NAME_LEN: usize = 128;

/// A policy that cannot be used: which one and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("activity_policies[{index}].{key}: {message}")]
pub struct PolicyError {
    pub index: usize,
    pub key: &'static str,
    pub message: String,
}

/// Checks a list of policies (names present, unique and printable; windows in range).
pub fn validate(policies: &[ActivityPolicy]) -> Result<(), PolicyError> {
    for (index, p) in policies.iter().enumerate() {
        let err = |key, message: String| PolicyError {
            index,
            key,
            message,
        };
        if p.name.trim().is_empty() || p.name.len() > MAX_NAME_LEN {
            return Err(err("name", format!("must be 1..={MAX_NAME_LEN} bytes")));
        }
        if p.name.chars().any(char::is_control) {
            return Err(err("name", "must not hold control characters".into()));
        }
        if policies[..index].iter().any(|o| o.name == p.name) {
            return Err(err("name", format!("{:?} is used twice", p.name)));
        }
        if let Some(OneOrMany::Many(v)) = &p.activity
            && v.is_empty()
        {
            return Err(err("activity", "an empty list matches nothing".into()));
        }
        if let Some(r) = &p.repeated {
            if !(1..=MAX_REPEAT_COUNT).contains(&r.count) {
                return Err(err(
                    "repeated.count",
                    format!("must be 1..={MAX_REPEAT_COUNT}"),
                ));
            }
            if !(1..=MAX_WINDOW_SECS).contains(&r.within_secs) {
                return Err(err(
                    "repeated.within_secs",
                    format!("must be 1..={MAX_WINDOW_SECS}"),
                ));
            }
        }
        if let Some(secs) = p.block_sessions_secs
            && !(MIN_BLOCK_SECS..=MAX_WINDOW_SECS).contains(&secs)
        {
            return Err(err(
                "block_sessions_secs",
                format!("must be {MIN_BLOCK_SECS}..={MAX_WINDOW_SECS} (a minute to a week)"),
            ));
        }
        if p.connector_actions.len() > MAX_POLICY_ACTIONS {
            return Err(err(
                "connector_actions",
                format!("at most {MAX_POLICY_ACTIONS}"),
            ));
        }
        for a in &p.connector_actions {
            if a.connector.trim().is_empty()
                || a.connector.len() > MAX_NAME_LEN
                || a.connector.chars().any(char::is_control)
            {
                return Err(err(
                    "connector_actions.connector",
                    format!("must be a connector's name, 1..={MAX_NAME_LEN} printable bytes"),
                ));
            }
        }
        if p.notify.len() > MAX_POLICY_ACTIONS {
            return Err(err("notify", format!("at most {MAX_POLICY_ACTIONS} sinks")));
        }
        if !p.connector_actions.is_empty() && p.repeated.as_ref().is_some_and(|r| !r.per_user) {
            return Err(err(
                "connector_actions",
                "acts on the alert's user: needs a single-activity policy or repeated.per_user = true".into(),
            ));
        }
        // Anyone on the internet can fail a login under a victim's name: a policy that such
        // events can fire must not suspend the named user (a lock-out on demand).
        let suspends = p
            .connector_actions
            .iter()
            .any(|a| a.action == GovernanceCall::SuspendUser);
        let types = p.activity.as_ref().map(OneOrMany::to_vec);
        if suspends
            && types
                .as_ref()
                .is_none_or(|t| t.contains(&ActivityType::FailedLogin))
        {
            return Err(err(
                "connector_actions",
                "suspend_user needs `activity` set, without failed_login: an outsider can fail logins in anyone's name (use revoke_sessions there)".into(),
            ));
        }
    }
    Ok(())
}

/// A policy ready to evaluate: lists lower-cased, activity types as a bit set.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub name: String,
    pub severity: Severity,
    /// Bit `ActivityType::index()`; all ones when the policy names none.
    pub types: u16,
    pub apps: Vec<String>,
    pub users: Vec<String>,
    pub ips: Vec<IpNet>,
    pub object_contains: Option<String>,
    pub min_bytes: Option<u64>,
    pub result: Option<Outcome>,
    pub sources: Vec<Source>,
    pub repeated: Option<Repeated>,
}

impl Compiled {
    pub fn new(p: &ActivityPolicy) -> Compiled {
        let types = match &p.activity {
            None => u16::MAX,
            Some(a) => a.to_vec().iter().fold(0, |m, t| m | 1 << t.index()),
        };
        Compiled {
            name: p.name.clone(),
            severity: p.severity,
            types,
            apps: p.apps.iter().map(|a| a.to_ascii_lowercase()).collect(),
            users: p.users.iter().map(|u| u.to_lowercase()).collect(),
            ips: p.ips.clone(),
            object_contains: p.object_contains.as_ref().map(|o| o.to_ascii_lowercase()),
            min_bytes: p.min_bytes,
            result: p.result,
            sources: p.sources.clone(),
            repeated: p.repeated.clone(),
        }
    }

    /// Whether `a` passes every filter (cheapest first).
    pub fn matches(&self, a: &Activity) -> bool {
        if self.types & (1 << a.activity.index()) == 0 {
            return false;
        }
        if let Some(r) = self.result
            && r != a.result
        {
            return false;
        }
        if !self.sources.is_empty() && !self.sources.contains(&a.source) {
            return false;
        }
        if let Some(min) = self.min_bytes
            && a.bytes.unwrap_or(0) < min
        {
            return false;
        }
        if !self.apps.is_empty() && !self.apps.iter().any(|x| x.eq_ignore_ascii_case(&a.app)) {
            return false;
        }
        if !self.ips.is_empty() {
            match a.ip {
                Some(ip) if self.ips.iter().any(|n| n.contains(&ip)) => {}
                _ => return false,
            }
        }
        if !self.users.is_empty() {
            match &a.user {
                Some(u)
                    if self
                        .users
                        .iter()
                        .any(|x| x.chars().eq(u.chars().flat_map(char::to_lowercase))) => {}
                _ => return false,
            }
        }
        if let Some(needle) = &self.object_contains {
            match &a.object {
                Some(o) if contains_ignore_ascii_case(o.as_bytes(), needle.as_bytes()) => {}
                _ => return false,
            }
        }
        true
    }
}

/// Whether `hay` contains `needle` (already lower case), ASCII letters compared without case.
fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}
