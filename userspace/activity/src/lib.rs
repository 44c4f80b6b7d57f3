//! Tollgate's activity layer, shared by the gateway and the hub: the normalised activity
//! record ([`Activity`]) every source writes (discovery, the session proxy, connectors, the
//! audit trail), activity policies (`[[activity_policies]]`) and the pure engine that
//! evaluates them ([`Engine::observe`]), alerts with de-duplication and status
//! ([`AlertBook`]), the formats other tools ingest (CEF in the layout of Defender for Cloud
//! Apps' SIEM agent, RFC 5424, JSON) and the sinks that carry them (`[[alert_sinks]]`:
//! syslog over UDP/TCP/TLS, a file, a webhook), and app discovery policies
//! (`[[app_discovery_policies]]`, [`AppDiscovery`]): each app's use in a day judged against
//! facts and lines, with an optional sanction tag the caller applies.
//!
//! ```text
//! source ──Activity──▶ Engine::observe(&a, now) ──AlertEvent──▶ Sinks::alert (bounded, rate-limited)
//!                        │ filters per activity type,                │ one task per sink
//!                        │ sliding windows (bounded table)           ▼
//!                        ▼                                          syslog / file / webhook
//!                      AlertBook (one open alert per policy and entity, count, status)
//! ```
//!
//! The engine does no I/O and reads no clock: the caller passes `now`, so replays and tests
//! are exact. The sinks are the only part that touches the network.
//!
//! # Config keys
//!
//! ```toml
//! [[activity_policies]]
//! name = "mass download"
//! severity = "high"                  # low | medium | high
//! activity = "download"              # or a list; absent: any
//! apps = ["box"]                     # optional filters: users, ips (CIDRs), object_contains,
//! repeated = { count = 50, within_secs = 60, per_user = true }   # min_bytes, result, sources
//! # enabled = true; repeated.per_app = false
//! # governance: block_sessions_secs = 600; notify = ["SINK NAME"];
//! # connector_actions = [{ connector = "okta", action = "suspend_user" | "revoke_sessions" }]
//!
//! [[alert_sinks]]
//! kind = "syslog"                    # syslog | file | webhook
//! address = "tcp://127.0.0.1:6514"   # udp://, tcp://, tls:// (webhook: https://host/path)
//! format = "cef"                     # cef | rfc5424 | json
//! send = ["alerts"]                  # alerts and/or activities
//! min_severity = "low"
//! # ca_file, server_name (tls), path and max_mb (file), rate_per_sec, burst, queue
//! ```
#![forbid(unsafe_code)]

pub mod alert;
pub mod anomaly;
pub mod discovery_policy;
pub mod engine;
pub mod format;
pub mod geo;
pub mod policy;
pub mod record;
pub mod sink;

pub use alert::{Alert, AlertBook, AlertError, AlertStatus, Entities};
pub use discovery_policy::{AppDiscovery, AppDiscoveryPolicy, DiscoveredUse};
pub use engine::{AlertEvent, AlertEventKind, Engine, EngineStats};
pub use format::{Format, Record};
pub use policy::{
    ActivityPolicy, ConnectorAction, GovernanceCall, PolicyActions, PolicyError, Repeated,
    Severity, validate, validate_notify,
};
pub use record::{Activity, ActivityType, Outcome, Source};
pub use sink::{SinkConfig, SinkError, SinkKind, SinkStatsSnapshot, Sinks};
