//! The daemon's configuration: TOML, validated at load, with errors that name the file, the
//! line and the key. With no file, an embedded default runs monitor mode on the interface of
//! the default route with the shipped catalog.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tollgate_catalog::{CatalogConfig, CustomApp};
use tollgate_discovery::users::UsersConfig;
use tollgate_logs::CustomFormat;
use tollgate_policy::{AppSettings, TagRule};

/// The embedded default: what `tollgate run` does with no `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/default.toml");

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `monitor` observes and logs what would be blocked; `enforce` blocks.
    #[serde(default)]
    pub mode: Mode,
    /// Where live changes (tags), the CA and spools persist across restarts.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The root-only unix socket that `tollgate flows`, `apps`, `app tag`, `stop` talk to.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// Interfaces to attach to. Empty: the interface of the default route, as `wan`.
    #[serde(default)]
    pub interfaces: Vec<InterfaceConfig>,
    /// Seconds between the one-line status reports of `tollgate run` (0: none).
    #[serde(default = "default_status_interval")]
    pub status_interval_secs: u64,
    /// Flow table limits.
    #[serde(default)]
    pub flows: FlowsConfig,
    /// How the kernel programs attach (`[dataplane]`).
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    /// Risk weights (`[catalog]`, `[catalog.weights]`).
    #[serde(default)]
    pub catalog: CatalogConfig,
    /// The admin's own apps (`[[custom_apps]]`).
    #[serde(default)]
    pub custom_apps: Vec<CustomApp>,
    /// Per-app settings (`[apps.<id>]`: tag, session_control, risk_score, risk_note).
    #[serde(default)]
    pub apps: BTreeMap<String, AppSettings>,
    /// Tags by category or risk score (`[[tag_rules]]`), first match wins.
    #[serde(default)]
    pub tag_rules: Vec<TagRule>,
    /// Users and devices (`[users]`, `[[users.static]]`).
    #[serde(default)]
    pub users: UsersConfig,
    /// Custom log formats for `tollgate discover` (`[[log_formats]]`).
    #[serde(default)]
    pub log_formats: Vec<CustomFormat>,
    /// How decisions are enforced (`[enforcement]`).
    #[serde(default)]
    pub enforcement: crate::enforce::EnforcementConfig,
    /// The session proxy (`[proxy]`), started when an app has `session_control = true`.
    #[serde(default)]
    pub proxy: tollgate_proxy::ProxyConfig,
    /// Session policies for apps under session control (`[[session_policies]]`).
    #[serde(default)]
    pub session_policies: Vec<tollgate_proxy::SessionPolicy>,
    /// Access policies for apps under session control (`[[access_policies]]`).
    #[serde(default)]
    pub access_policies: Vec<tollgate_proxy::AccessPolicy>,
    /// How long the live daemon keeps per-hour discovery history (`[discovery]`).
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// The management hub (`[hub]`); the hub's address and keys come from `tollgate enroll`.
    #[serde(default)]
    pub hub: HubConfig,
    /// Policies that raise alerts (`[[activity_policies]]`).
    #[serde(default)]
    pub activity_policies: Vec<tollgate_activity::ActivityPolicy>,
    /// Where alerts and activities go (`[[alert_sinks]]`): syslog, a file, a webhook.
    #[serde(default)]
    pub alert_sinks: Vec<tollgate_activity::SinkConfig>,
    /// Policies over each app's use per day (`[[app_discovery_policies]]`): an alert, and
    /// optionally a sanction tag.
    #[serde(default)]
    pub app_discovery_policies: Vec<tollgate_activity::AppDiscoveryPolicy>,
    /// App connectors this gateway runs (`[[connectors]]` with `run_on = "gateway"`), for SaaS
    /// APIs only it can reach; a bundle's `run_on = "hub"` entries are the hub's.
    #[serde(default)]
    pub connectors: Vec<tollgate_connectors::ConnectorConfig>,
    /// The activity log in state_dir (`[activity]`).
    #[serde(default)]
    pub activity: ActivityConfig,
    /// Built-in anomaly detection (`[anomaly]`), on by default.
    #[serde(default)]
    pub anomaly: tollgate_activity::anomaly::AnomalyConfig,
    /// The GeoIP database activities are placed with (`[geoip] database`).
    #[serde(default)]
    pub geoip: tollgate_activity::geo::GeoIpConfig,
    /// The Prometheus `/metrics` listener (`[metrics]`), off unless `listen` is set.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The read-only local web console (`[console]`), off unless `listen` is set.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Continuous log collection (`[collect]`): syslog listeners and watched directories,
    /// run by `tollgate collect`.
    #[serde(default)]
    pub collect: Option<CollectConfig>,
}

/// `[collect]`: the continuous log collector (`tollgate collect`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectConfig {
    /// The journal and the offsets of watched files; default `<state_dir>/collect`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Where the reports and `status.json` go; default `<state_dir>/collect/reports`.
    #[serde(default)]
    pub output_dir: Option<PathBuf>,
    /// Seconds between two reports.
    #[serde(default = "default_collect_report_interval")]
    pub report_interval_secs: u64,
    /// Report formats written each time: `json`, `csv`, `html`, `table`.
    #[serde(default = "default_collect_report_formats")]
    pub report_formats: Vec<String>,
    /// Milliseconds between two looks at the watched directories.
    #[serde(default = "default_collect_poll_ms")]
    pub poll_interval_ms: u64,
    /// TCP and TLS connections served at once.
    #[serde(default = "default_collect_max_connections")]
    pub max_connections: usize,
    /// Seconds of silence after which a TCP/TLS connection is closed.
    #[serde(default = "default_collect_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Seconds a TLS client has to finish its handshake.
    #[serde(default = "default_collect_handshake_timeout")]
    pub handshake_timeout_secs: u64,
    /// Syslog messages queued between the listeners and the parsers; more are dropped and
    /// counted.
    #[serde(default = "default_collect_queue")]
    pub queue: usize,
    /// Distinct syslog sources (listener, sender, app name) kept apart; more share one.
    #[serde(default = "default_collect_max_sources")]
    pub max_sources: usize,
    /// Syslog over UDP (`[collect.udp]`).
    #[serde(default)]
    pub udp: Option<SyslogListenerConfig>,
    /// Syslog over TCP, octet counting or newline framing (`[collect.tcp]`).
    #[serde(default)]
    pub tcp: Option<SyslogListenerConfig>,
    /// Syslog over TLS (`[collect.tls]`).
    #[serde(default)]
    pub tls: Option<TlsListenerConfig>,
    /// Watched directories (`[[collect.watch]]`).
    #[serde(default)]
    pub watch: Vec<WatchConfig>,
}

/// `[collect.udp]`, `[collect.tcp]`: a syslog listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogListenerConfig {
    /// `ADDR:PORT` to listen on.
    pub listen: std::net::SocketAddr,
    /// Senders allowed, as addresses or CIDR blocks. UDP requires the list (UDP syslog has
    /// no sender authentication); for TCP an empty list lets anyone connect.
    #[serde(default)]
    pub allow: Vec<String>,
    /// `auto` (detected per sender) or a format name.
    #[serde(default = "default_auto")]
    pub format: String,
}

/// `[collect.tls]`: syslog over TLS (RFC 5425 framing: octet counting).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    pub listen: std::net::SocketAddr,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default = "default_auto")]
    pub format: String,
    /// PEM certificate chain of the listener.
    pub cert: PathBuf,
    /// PEM private key of the listener.
    pub key: PathBuf,
}

/// `[[collect.watch]]`: a directory of log files.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    pub dir: PathBuf,
    /// File name pattern (`*`, `?`).
    #[serde(default = "default_watch_pattern")]
    pub pattern: String,
    #[serde(default = "default_auto")]
    pub format: String,
}

fn default_auto() -> String {
    "auto".into()
}
fn default_watch_pattern() -> String {
    "*.log*".into()
}
fn default_collect_report_interval() -> u64 {
    60
}
fn default_collect_report_formats() -> Vec<String> {
    vec!["json".into()]
}
fn default_collect_poll_ms() -> u64 {
    1000
}
fn default_collect_max_connections() -> usize {
    256
}
fn default_collect_idle_timeout() -> u64 {
    300
}
fn default_collect_handshake_timeout() -> u64 {
    10
}
fn default_collect_queue() -> usize {
    65_536
}
fn default_collect_max_sources() -> usize {
    1024
}

/// `[activity]`: the on-disk activity log (`state_dir/activity/`) that `tollgate activity`
/// reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivityConfig {
    /// Days an activity is kept (older ones are not shown, and a rotated file whose newest
    /// record is older is removed).
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// The log's bound on disk, in MiB (the live file and one rotated file, half each).
    #[serde(default = "default_activity_max_mb")]
    pub max_mb: u64,
}

impl Default for ActivityConfig {
    fn default() -> Self {
        Self {
            retention_days: default_retention_days(),
            max_mb: default_activity_max_mb(),
        }
    }
}

fn default_retention_days() -> u32 {
    30
}
fn default_activity_max_mb() -> u64 {
    256
}

/// `[dataplane]`: how the kernel programs attach.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// `auto`: TCX on Linux 6.6 and later, tc clsact (netlink) before; `tcx` or `tc` force
    /// one. The environment variable `TOLLGATE_ATTACH` overrides it.
    #[serde(default)]
    pub attach: AttachSetting,
}

/// `[dataplane] attach`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachSetting {
    #[default]
    Auto,
    Tcx,
    Tc,
}

impl From<AttachSetting> for tollgate_dataplane::AttachRequest {
    fn from(a: AttachSetting) -> Self {
        match a {
            AttachSetting::Auto => Self::Auto,
            AttachSetting::Tcx => Self::Tcx,
            AttachSetting::Tc => Self::Tc,
        }
    }
}

/// `[metrics]`: where `GET /metrics` is served in the Prometheus text format.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `ADDR:PORT` of the plain-HTTP listener (e.g. `"127.0.0.1:9464"`); none: no listener.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

/// `[console]`: the gateway's read-only local web console (users' names and activity, so
/// loopback only: admins reach it over `ssh -L`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// `127.0.0.1:PORT` (or `[::1]:PORT`) of the plain-HTTP console; none: no console. A
    /// non-loopback address is refused.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

/// `[hub]`: how the gateway talks to the management hub it is enrolled with.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Seconds between two uploads of discovery to the hub (each one interval's usage).
    #[serde(default = "default_upload_interval")]
    pub upload_interval_secs: u64,
    /// The upload spool's bound on disk, in MiB; when full the oldest records go first.
    #[serde(default = "default_spool_max_mb")]
    pub spool_max_mb: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            upload_interval_secs: default_upload_interval(),
            spool_max_mb: default_spool_max_mb(),
        }
    }
}

fn default_upload_interval() -> u64 {
    60
}
fn default_spool_max_mb() -> u64 {
    64
}

/// The sections a central policy bundle may set. Everything else (interfaces, mode, the
/// proxy, enforcement limits, users, paths) belongs to the box and stays in its own file.
/// Alert sinks stay local too: a sink is where the box's records leave it, so the hub may
/// not point them elsewhere.
pub const BUNDLE_SECTIONS: &[&str] = &[
    "apps",
    "tag_rules",
    "custom_apps",
    "session_policies",
    "access_policies",
    "activity_policies",
    "app_discovery_policies",
    "connectors",
];

/// What a policy bundle holds: the gateway config's own sections, in its own TOML.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundlePolicy {
    #[serde(default)]
    pub apps: BTreeMap<String, AppSettings>,
    #[serde(default)]
    pub tag_rules: Vec<TagRule>,
    #[serde(default)]
    pub custom_apps: Vec<CustomApp>,
    #[serde(default)]
    pub session_policies: Vec<tollgate_proxy::SessionPolicy>,
    #[serde(default)]
    pub access_policies: Vec<tollgate_proxy::AccessPolicy>,
    #[serde(default)]
    pub activity_policies: Vec<tollgate_activity::ActivityPolicy>,
    #[serde(default)]
    pub app_discovery_policies: Vec<tollgate_activity::AppDiscoveryPolicy>,
    #[serde(default)]
    pub connectors: Vec<tollgate_connectors::ConnectorConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Hours of per-hour history `tollgate apps` keeps; older hours are forgotten so a
    /// long-running daemon's memory stays bounded.
    #[serde(default = "default_history_hours")]
    pub history_hours: u32,
    /// Seconds between discovery's local intervals: each one's per-user, per-app use becomes
    /// `app_used` activities (source `discovery`) and is counted into the day that
    /// `[[app_discovery_policies]]` judge.
    #[serde(default = "default_discovery_interval")]
    pub interval_secs: u64,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            history_hours: default_history_hours(),
            interval_secs: default_discovery_interval(),
        }
    }
}

fn default_discovery_interval() -> u64 {
    60
}

fn default_history_hours() -> u32 {
    24 * 7
}

/// `monitor` or `enforce`; `role = "lan" | "wan"` (the ABI crate defines both once).
pub use tollgate_common::{Mode, Role};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowsConfig {
    /// Flows tracked at once; the oldest idle flows are evicted beyond it.
    #[serde(default = "default_max_flows")]
    pub max_flows: usize,
    /// Seconds without packets after which a flow leaves the live table.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        Self {
            max_flows: default_max_flows(),
            idle_timeout_secs: default_idle_timeout(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/tollgate")
}
fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/tollgate/control.sock")
}
fn default_status_interval() -> u64 {
    10
}
fn default_max_flows() -> usize {
    262_144
}
fn default_idle_timeout() -> u64 {
    300
}

/// A config that could not be used: where and why. Exit code 64 (EX_USAGE) at the binary.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {key}{message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        /// `key: ` prefix, or empty when the error is not about one key (syntax).
        key: String,
        message: String,
    },
}

impl Config {
    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The embedded default config.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Self::parse(DEFAULT_CONFIG, "<embedded default config>")
    }

    /// Parses `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = parse_toml(text, file)?;
        config.validate(text, file)?;
        // A gateway's own file names only connectors it runs; `run_on = "hub"` ones come in
        // bundles, for the hub.
        if let Some((i, c)) = config
            .connectors
            .iter()
            .enumerate()
            .find(|(_, c)| c.run_on != Some(tollgate_connectors::RunOn::Gateway))
        {
            let needle = c.name.as_deref().unwrap_or("connectors");
            let (line, column) = text.find(needle).map_or((1, 1), |o| line_column(text, o));
            return Err(ConfigError::Invalid {
                file: file.to_string(),
                line,
                column,
                key: format!("connectors[{i}].run_on: "),
                message: "a gateway runs only run_on = \"gateway\" connectors; the hub runs the others (its config or a bundle)".into(),
            });
        }
        Ok(config)
    }

    /// This (local) config with a central bundle's policy laid over it. The bundle sets only
    /// [`BUNDLE_SECTIONS`]; for each, the central entries come first and win: an app's
    /// settings in the bundle replace the local ones for that app, the bundle's tag rules and
    /// policies are matched before the local ones (first match wins), and a custom app of the
    /// bundle replaces a local one of the same id. What the bundle does not set stays local.
    pub fn with_bundle(&self, bundle_toml: &str, bundle_name: &str) -> Result<Config, ConfigError> {
        let policy: BundlePolicy = parse_toml(bundle_toml, bundle_name)?;
        let mut merged = self.clone();
        merged.apps.extend(policy.apps);
        merged.tag_rules = policy
            .tag_rules
            .into_iter()
            .chain(self.tag_rules.iter().cloned())
            .collect();
        let central_ids: Vec<String> = policy.custom_apps.iter().map(|a| a.id.clone()).collect();
        merged.custom_apps = policy
            .custom_apps
            .into_iter()
            .chain(
                self.custom_apps
                    .iter()
                    .filter(|a| !central_ids.contains(&a.id))
                    .cloned(),
            )
            .collect();
        merged.session_policies = policy
            .session_policies
            .into_iter()
            .chain(self.session_policies.iter().cloned())
            .collect();
        merged.access_policies = policy
            .access_policies
            .into_iter()
            .chain(self.access_policies.iter().cloned())
            .collect();
        // Central activity policies first; a local one of the same name gives way.
        let central: Vec<String> = policy
            .activity_policies
            .iter()
            .map(|p| p.name.clone())
            .collect();
        merged.activity_policies = policy
            .activity_policies
            .into_iter()
            .chain(
                self.activity_policies
                    .iter()
                    .filter(|p| !central.contains(&p.name))
                    .cloned(),
            )
            .collect();
        // Connectors: a bundle's may not carry a secret; central ones first, a local one of
        // the same name gives way.
        for (i, c) in policy.connectors.iter().enumerate() {
            if let Err(m) = tollgate_connectors::Settings::from_bundle(c) {
                return Err(ConfigError::Invalid {
                    file: bundle_name.to_string(),
                    line: 1,
                    column: 1,
                    key: format!("connectors[{i}]: "),
                    message: m,
                });
            }
        }
        let central: Vec<Option<String>> =
            policy.connectors.iter().map(|c| c.name.clone()).collect();
        merged.connectors = policy
            .connectors
            .into_iter()
            .chain(
                self.connectors
                    .iter()
                    .filter(|c| !central.contains(&c.name))
                    .cloned(),
            )
            .collect();
        // The same for app discovery policies.
        let central: Vec<String> = policy
            .app_discovery_policies
            .iter()
            .map(|p| p.name.clone())
            .collect();
        merged.app_discovery_policies = policy
            .app_discovery_policies
            .into_iter()
            .chain(
                self.app_discovery_policies
                    .iter()
                    .filter(|p| !central.contains(&p.name))
                    .cloned(),
            )
            .collect();
        merged.validate(bundle_toml, bundle_name)?;
        Ok(merged)
    }
}

/// Deserializes TOML into `T`, with errors that name the file, line, column and key.
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, file: &str) -> Result<T, ConfigError> {
    {
        let located = |offset: Option<usize>, key: String, message: String| {
            let (line, column) = offset.map_or((1, 1), |o| line_column(text, o));
            ConfigError::Invalid {
                file: file.to_string(),
                line,
                column,
                key,
                message,
            }
        };
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| located(e.span().map(|s| s.start), String::new(), e.message().into()))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let key = if path == "." || path.is_empty() {
                String::new()
            } else {
                format!("{path}: ")
            };
            located(inner.span().map(|s| s.start), key, inner.message().into())
        })
    }
}

impl Config {
    /// Checks what types alone cannot: names that must not be empty or repeat.
    fn validate(&self, text: &str, file: &str) -> Result<(), ConfigError> {
        let fail = |key: &str, needle: &str, message: String| {
            let (line, column) = text.find(needle).map_or((1, 1), |o| line_column(text, o));
            Err(ConfigError::Invalid {
                file: file.to_string(),
                line,
                column,
                key: format!("{key}: "),
                message,
            })
        };
        for (i, iface) in self.interfaces.iter().enumerate() {
            let key = format!("interfaces[{i}].name");
            if iface.name.is_empty() || iface.name.len() > 15 || iface.name.contains('/') {
                return fail(
                    &key,
                    &iface.name,
                    format!("{:?} is not a valid interface name", iface.name),
                );
            }
            if self.interfaces[..i].iter().any(|o| o.name == iface.name) {
                return fail(
                    &key,
                    &iface.name,
                    format!("interface {:?} is listed twice", iface.name),
                );
            }
        }
        for (i, f) in self.log_formats.iter().enumerate() {
            if let Err(e) = f.validate() {
                return fail(&format!("log_formats[{i}]"), &f.name, e.to_string());
            }
        }
        if let Err(tollgate_proxy::ProxyError::Config { key, message }) = self.proxy.validate() {
            return fail(&format!("proxy.{key}"), &key, message);
        }
        // The console shows users' names and activity and has no accounts: only this host
        // may reach it (and, on it, only whoever can read the token file).
        if let Some(addr) = self.console.listen
            && !addr.ip().is_loopback()
        {
            return fail(
                "console.listen",
                &addr.to_string(),
                format!(
                    "{addr} is not a loopback address: the console shows users' names and \
                     activity and has no accounts, so it listens on 127.0.0.1 or [::1] only \
                     (reach it from elsewhere with `ssh -L`)"
                ),
            );
        }
        if self.flows.max_flows == 0 {
            return fail("flows.max_flows", "max_flows", "must be at least 1".into());
        }
        // Relative paths would depend on the directory the daemon happens to start in, and
        // `tollgate flows` run elsewhere would look for another socket.
        for (key, path) in [
            ("state_dir", &self.state_dir),
            ("control_socket", &self.control_socket),
        ] {
            if !path.is_absolute() {
                return fail(
                    key,
                    key,
                    format!("{:?} must be an absolute path", path.display().to_string()),
                );
            }
        }
        // Steering into the session proxy happens where users' traffic enters: on a LAN
        // interface. Without one the proxy would start and never see a connection.
        if !self.interfaces.iter().any(|i| i.role == Role::Lan)
            && let Some((id, _)) = self.apps.iter().find(|(_, a)| a.session_control)
        {
            return fail(
                &format!("apps.{id}.session_control"),
                "session_control",
                format!(
                    "session control of {id:?} needs a LAN interface (an [[interfaces]] entry \
                     with role = \"lan\"): it steers users' connections where they enter the \
                     gateway, and {}",
                    if self.interfaces.is_empty() {
                        "without [[interfaces]] the gateway watches only the default route's \
                         interface, as wan"
                            .to_string()
                    } else {
                        "every interface listed has role = \"wan\"".to_string()
                    }
                ),
            );
        }
        let e = &self.enforcement;
        if e.dns_max_ttl_secs == 0 {
            return fail(
                "enforcement.dns_max_ttl_secs",
                "dns_max_ttl_secs",
                "must be at least 1".into(),
            );
        }
        if e.dns_block_floor_secs > e.dns_max_ttl_secs {
            return fail(
                "enforcement.dns_block_floor_secs",
                "dns_block_floor_secs",
                format!(
                    "{} is above dns_max_ttl_secs ({})",
                    e.dns_block_floor_secs, e.dns_max_ttl_secs
                ),
            );
        }
        if e.dns_learned_max == 0 || e.dns_learned_max > crate::enforce::MAX_DNS_LEARNED {
            return fail(
                "enforcement.dns_learned_max",
                "dns_learned_max",
                format!(
                    "must be 1..={} (the block tries hold {} prefixes, shared with catalog ranges)",
                    crate::enforce::MAX_DNS_LEARNED,
                    tollgate_dataplane::abi::BLOCK_PREFIX_CAPACITY
                ),
            );
        }
        if e.dns_learn_per_client_per_min == 0 {
            return fail(
                "enforcement.dns_learn_per_client_per_min",
                "dns_learn_per_client_per_min",
                "must be at least 1".into(),
            );
        }
        if !(1..=86_400).contains(&self.hub.upload_interval_secs) {
            return fail(
                "hub.upload_interval_secs",
                "upload_interval_secs",
                "must be 1..=86400".into(),
            );
        }
        if !(1..=65_536).contains(&self.hub.spool_max_mb) {
            return fail(
                "hub.spool_max_mb",
                "spool_max_mb",
                "must be 1..=65536".into(),
            );
        }
        if let Err(e) = tollgate_activity::validate(&self.activity_policies).and_then(|()| {
            tollgate_activity::validate_notify(&self.activity_policies, &self.alert_sinks)
        }) {
            let needle = self
                .activity_policies
                .get(e.index)
                .map_or("activity_policies", |p| p.name.as_str());
            return fail(
                &format!("activity_policies[{}].{}", e.index, e.key),
                needle,
                e.message,
            );
        }
        if let Err(e) = tollgate_activity::discovery_policy::validate(&self.app_discovery_policies)
        {
            let needle = self
                .app_discovery_policies
                .get(e.index)
                .map_or("app_discovery_policies", |p| p.name.as_str());
            return fail(
                &format!("app_discovery_policies[{}].{}", e.index, e.key),
                needle,
                e.message,
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, c) in self.connectors.iter().enumerate() {
            let needle = c.name.as_deref().unwrap_or("connectors");
            let s = match tollgate_connectors::Settings::from_config(c) {
                Ok(s) => s,
                Err(m) => return fail(&format!("connectors[{i}]"), needle, m),
            };
            if !names.insert(s.name.clone()) {
                return fail(
                    &format!("connectors[{i}].name"),
                    needle,
                    format!("{:?} is used twice", s.name),
                );
            }
        }
        if !(1..=3600).contains(&self.discovery.interval_secs) {
            return fail(
                "discovery.interval_secs",
                "interval_secs",
                "must be 1..=3600".into(),
            );
        }
        for (i, sink) in self.alert_sinks.iter().enumerate() {
            if let Err(e) = sink.validate(i) {
                let needle = sink.address.as_deref().unwrap_or("alert_sinks");
                return fail(&format!("alert_sinks[{i}].{}", e.key), needle, e.message);
            }
        }
        if !(1..=3650).contains(&self.activity.retention_days) {
            return fail(
                "activity.retention_days",
                "retention_days",
                "must be 1..=3650".into(),
            );
        }
        if !(2..=65_536).contains(&self.activity.max_mb) {
            return fail("activity.max_mb", "max_mb", "must be 2..=65536".into());
        }
        if self.enforcement.steer_timeout_secs == 0 {
            return fail(
                "enforcement.steer_timeout_secs",
                "steer_timeout_secs",
                "must be at least 1".into(),
            );
        }
        Ok(())
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// The interface that carries the default route (IPv4 first, then IPv6), from /proc.
pub fn default_route_interface() -> Option<String> {
    if let Ok(routes) = std::fs::read_to_string("/proc/net/route") {
        for line in routes.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 2 && cols[1] == "00000000" && cols[2] != "00000000"
                || cols.len() > 7 && cols[1] == "00000000" && cols[7] == "00000000"
            {
                return Some(cols[0].to_string());
            }
        }
    }
    if let Ok(routes) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for line in routes.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() == 10 && cols[0] == "0".repeat(32) && cols[1] == "00" && cols[9] != "lo" {
                return Some(cols[9].to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = r#"
mode = "enforce"
[apps.dropbox]
tag = "sanctioned"
[apps.box]
tag = "monitored"
[[tag_rules]]
category = "Cloud storage"
tag = "monitored"
"#;

    #[test]
    fn a_bundle_is_laid_over_the_local_config_and_wins() {
        let local = Config::parse(LOCAL, "local.toml").unwrap();
        let merged = local
            .with_bundle(
                "[apps.dropbox]\ntag = \"unsanctioned\"\n[[tag_rules]]\nrisk_score_below = 3.0\ntag = \"unsanctioned\"\n",
                "bundle revision 7",
            )
            .unwrap();
        assert_eq!(merged.mode, Mode::Enforce, "the box's own settings stay");
        assert_eq!(
            merged.apps["dropbox"]
                .tag
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("unsanctioned"),
            "the bundle's setting for an app replaces the local one"
        );
        assert!(
            merged.apps.contains_key("box"),
            "apps the bundle does not name stay"
        );
        assert_eq!(merged.tag_rules.len(), 2);
        assert_eq!(
            merged.tag_rules[0].risk_score_below,
            Some(3.0),
            "central rules match first"
        );
    }

    #[test]
    fn the_console_listens_on_loopback_only() {
        let ok = Config::parse("[console]\nlisten = \"127.0.0.1:8080\"\n", "c.toml").unwrap();
        assert_eq!(ok.console.listen, Some("127.0.0.1:8080".parse().unwrap()));
        let v6 = Config::parse("[console]\nlisten = \"[::1]:8080\"\n", "c.toml").unwrap();
        assert!(v6.console.listen.is_some());
        assert_eq!(Config::parse("", "c.toml").unwrap().console.listen, None);
        for addr in [
            "0.0.0.0:8080",
            "[::]:8080",
            "192.168.1.1:8080",
            "10.0.0.1:80",
        ] {
            let text = format!(
                "[metrics]\nlisten = \"127.0.0.1:9464\"\n\n[console]\nlisten = \"{addr}\"\n"
            );
            let e = Config::parse(&text, "c.toml").unwrap_err().to_string();
            assert!(e.contains("console.listen"), "{addr}: {e}");
            assert!(e.contains("loopback"), "{addr}: {e}");
            assert!(e.starts_with("c.toml:5:"), "the line of the address: {e}");
        }
    }

    #[test]
    fn a_bundle_may_not_set_the_boxs_own_sections() {
        let local = Config::parse(LOCAL, "local.toml").unwrap();
        for (bundle, key) in [
            ("mode = \"monitor\"\n", "mode"),
            ("[enforcement]\nnever_block = []\n", "enforcement"),
            (
                "[[interfaces]]\nname = \"eth0\"\nrole = \"lan\"\n",
                "interfaces",
            ),
            ("state_dir = \"/tmp\"\n", "state_dir"),
            ("[console]\nlisten = \"127.0.0.1:8080\"\n", "console"),
        ] {
            let e = local
                .with_bundle(bundle, "bundle revision 9")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("bundle revision 9:1:"), "{e}");
            assert!(e.contains(key), "{e}");
        }
        // Not TOML at all.
        let e = local
            .with_bundle("[apps", "bundle revision 9")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bundle revision 9:"), "{e}");
    }

    #[test]
    fn activity_policies_and_sinks_are_checked_and_come_from_bundles() {
        let text = r#"
[[activity_policies]]
name = "mass download"
severity = "high"
activity = "download"
apps = ["box"]
repeated = { count = 50, within_secs = 60, per_user = true }

[[alert_sinks]]
kind = "syslog"
address = "tcp://127.0.0.1:6514"
format = "cef"

[activity]
retention_days = 7
"#;
        let c = Config::parse(text, "a.toml").unwrap();
        assert_eq!(c.activity_policies.len(), 1);
        assert_eq!(c.alert_sinks.len(), 1);
        assert_eq!(c.activity.retention_days, 7);
        for (bad, key, line) in [
            (
                "\n[[activity_policies]]\nname = \"x\"\nrepeated = { count = 0, within_secs = 1 }\n",
                "activity_policies[0].repeated.count",
                3,
            ),
            (
                "[[alert_sinks]]\nkind = \"syslog\"\naddress = \"smtp://x:25\"\n",
                "alert_sinks[0].address",
                3,
            ),
            (
                "[activity]\nretention_days = 0\n",
                "activity.retention_days",
                2,
            ),
            (
                "[[activity_policies]]\nname = \"x\"\nactivity = \"dance\"\n",
                "activity_policies[0].activity",
                3,
            ),
        ] {
            let e = Config::parse(bad, "a.toml").unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
            assert!(e.starts_with(&format!("a.toml:{line}:")), "{bad}: {e}");
        }
        // A bundle's activity policy wins over a local one of the same name; sinks stay local.
        let merged = c
            .with_bundle(
                "[[activity_policies]]\nname = \"mass download\"\nseverity = \"low\"\n",
                "bundle revision 3",
            )
            .unwrap();
        assert_eq!(merged.activity_policies.len(), 1);
        assert_eq!(
            merged.activity_policies[0].severity,
            tollgate_activity::Severity::Low
        );
        let e = c
            .with_bundle(
                "[[alert_sinks]]\nkind = \"webhook\"\naddress = \"https://evil:443/\"\n",
                "bundle revision 4",
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("alert_sinks"), "{e}");
    }

    #[test]
    fn app_discovery_policies_are_checked_and_come_from_bundles() {
        let text = r#"
[[app_discovery_policies]]
name = "new risky app"
new_app = true
risk_below = 6
daily = { users_above = 50, bytes_above = 50000000 }
tag = "unsanctioned"

[discovery]
interval_secs = 30
"#;
        let c = Config::parse(text, "a.toml").unwrap();
        assert_eq!(c.app_discovery_policies.len(), 1);
        assert_eq!(c.discovery.interval_secs, 30);
        for (bad, key) in [
            (
                "[[app_discovery_policies]]\nname = \"x\"\ntag = \"allow-all\"\n",
                "app_discovery_policies[0].tag",
            ),
            (
                "[[app_discovery_policies]]\nname = \"x\"\ndaily = { users_above = 100000 }\n",
                "app_discovery_policies[0].daily.users_above",
            ),
            (
                "[discovery]\ninterval_secs = 0\n",
                "discovery.interval_secs",
            ),
        ] {
            let e = Config::parse(bad, "a.toml").unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
        // A bundle's policy of the same name wins; a bad one is refused with its key.
        let merged = c
            .with_bundle(
                "[[app_discovery_policies]]\nname = \"new risky app\"\nrisk_below = 4\n",
                "bundle revision 3",
            )
            .unwrap();
        assert_eq!(merged.app_discovery_policies.len(), 1);
        assert_eq!(merged.app_discovery_policies[0].risk_below, Some(4.0));
        let e = c
            .with_bundle(
                "[[app_discovery_policies]]\nname = \"x\"\ntags = [\"everything\"]\n",
                "bundle revision 4",
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("app_discovery_policies[0].tags"), "{e}");
    }

    #[test]
    fn embedded_default_parses_as_monitor() {
        let c = Config::embedded_default().expect("embedded default must parse");
        assert_eq!(c.mode, Mode::Monitor);
        assert!(
            c.interfaces.is_empty(),
            "default picks the default-route interface"
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text =
            "mode = \"monitor\"\n\n[[interfaces]]\nname = \"eth0\"\nrole = \"lan\"\ncolour = 3\n";
        let err = Config::parse(text, "gw.toml").unwrap_err().to_string();
        assert!(err.starts_with("gw.toml:6:"), "{err}");
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn proxy_on_port_443_and_bad_uninspectable_are_refused() {
        let text = "mode = \"monitor\"\n\n[proxy]\nlisten = \"[::]:443\"\n";
        let err = Config::parse(text, "gw.toml").unwrap_err().to_string();
        assert!(err.starts_with("gw.toml:4:"), "{err}");
        assert!(err.contains("proxy.listen") && err.contains("443"), "{err}");
        let text = "[proxy]\nuninspectable = \"maybe\"\n";
        let err = Config::parse(text, "gw.toml").unwrap_err().to_string();
        assert!(err.starts_with("gw.toml:2:"), "{err}");
        assert!(err.contains("proxy.uninspectable"), "{err}");
        let text =
            "[proxy]\nuninspectable = \"pass\"\nprotected_destinations = [\"10.9.0.0/16\"]\n";
        assert!(Config::parse(text, "gw.toml").is_ok());
    }

    #[test]
    fn bad_enum_value_names_the_key_path() {
        let text = "[[interfaces]]\nname = \"eth0\"\nrole = \"dmz\"\n";
        let err = Config::parse(text, "gw.toml").unwrap_err().to_string();
        assert!(err.starts_with("gw.toml:3:"), "{err}");
        assert!(err.contains("interfaces[0].role"), "{err}");
        assert!(err.contains("dmz"), "{err}");
    }

    #[test]
    fn bad_mode_and_syntax_errors_are_located() {
        let err = Config::parse("\n\nmode = \"block\"\n", "a.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("a.toml:3:"), "{err}");
        assert!(err.contains("mode"), "{err}");
        let err = Config::parse("mode = \n", "b.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("b.toml:1:"), "{err}");
    }

    #[test]
    fn duplicate_interface_is_rejected() {
        let text = "[[interfaces]]\nname = \"eth0\"\nrole = \"lan\"\n[[interfaces]]\nname = \"eth0\"\nrole = \"wan\"\n";
        let err = Config::parse(text, "c.toml").unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn bad_custom_log_format_is_a_config_error() {
        let text = "[[log_formats]]\nname = \"x\"\nkind = \"csv\"\n";
        let err = Config::parse(text, "d.toml").unwrap_err().to_string();
        assert!(err.contains("d.toml:"), "{err}");
        assert!(err.contains("log_formats"), "{err}");
    }

    #[test]
    fn dns_learning_keys_are_checked() {
        let ok = Config::parse(
            "[enforcement]\ndns_max_ttl_secs = 3600\nnever_block = [\"203.0.113.0/24\", \"2001:db8::/32\"]\ndns_learn_private = true\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(ok.enforcement.dns_max_ttl_secs, 3600);
        assert_eq!(ok.enforcement.never_block.len(), 2);
        let d = Config::parse("", "t.toml").unwrap();
        assert_eq!(d.enforcement.dns_max_ttl_secs, 86_400);
        assert!(!d.enforcement.dns_learn_private);
        for (text, key) in [
            (
                "[enforcement]\nnever_block = [\"10.0.0.0/33\"]\n",
                "never_block",
            ),
            ("[enforcement]\ndns_max_ttl_secs = 0\n", "dns_max_ttl_secs"),
            (
                "[enforcement]\ndns_max_ttl_secs = 60\ndns_block_floor_secs = 300\n",
                "dns_block_floor_secs",
            ),
            (
                "[enforcement]\ndns_learned_max = 70000\n",
                "dns_learned_max",
            ),
            (
                "[enforcement]\ndns_learn_per_client_per_min = 0\n",
                "dns_learn_per_client_per_min",
            ),
        ] {
            let e = Config::parse(text, "t.toml").unwrap_err().to_string();
            assert!(e.contains("t.toml:") && e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn unreadable_takes_pass_or_block_and_names_a_bad_value() {
        let c = Config::parse("[enforcement]\nunreadable = \"block\"\n", "e.toml").unwrap();
        assert_eq!(
            c.enforcement.unreadable,
            crate::enforce::UnreadableAction::Block
        );
        let c = Config::parse("", "e.toml").unwrap();
        assert_eq!(
            c.enforcement.unreadable,
            crate::enforce::UnreadableAction::Pass
        );
        let err = Config::parse("[enforcement]\n\nunreadable = \"drop\"\n", "e.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("e.toml:3:"), "{err}");
        assert!(err.contains("enforcement.unreadable"), "{err}");
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn session_control_without_a_lan_interface_is_refused() {
        let text = "[[interfaces]]\nname = \"eth0\"\nrole = \"wan\"\n\n\
                    [apps.dropbox]\nsession_control = true\n";
        let err = Config::parse(text, "s.toml").unwrap_err().to_string();
        assert!(err.starts_with("s.toml:6:"), "{err}");
        assert!(err.contains("apps.dropbox.session_control"), "{err}");
        assert!(err.contains("LAN interface"), "{err}");
        // No [[interfaces]] at all: the default route's interface, as wan.
        let err = Config::parse("[apps.dropbox]\nsession_control = true\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("apps.dropbox.session_control"), "{err}");
        let ok = "[[interfaces]]\nname = \"eth1\"\nrole = \"lan\"\n\
                  [apps.dropbox]\nsession_control = true\n";
        Config::parse(ok, "s.toml").expect("with a LAN interface");
    }

    #[test]
    fn relative_state_paths_are_refused() {
        let err = Config::parse("state_dir = \"var/tg\"\n", "r.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("r.toml:1:") && err.contains("state_dir"),
            "{err}"
        );
        let err = Config::parse("\ncontrol_socket = \"tg.sock\"\n", "r.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("r.toml:2:") && err.contains("control_socket"),
            "{err}"
        );
    }
}
