//! Configuration as admins write it (TOML): the `[proxy]` section, `[[session_policies]]` and
//! `[[access_policies]]`. Plain serde types with `deny_unknown_fields`; [`crate::policy`]
//! compiles them (regexes, CIDRs) into the form the proxy evaluates.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// The `[proxy]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address the proxy listens on for redirected (nft `redirect`, SO_ORIGINAL_DST) or
    /// TPROXY-delivered connections.
    pub listen: SocketAddr,
    /// Set IP_TRANSPARENT on the listener (connections delivered by a TPROXY rule).
    pub tproxy: bool,
    /// Directory holding the local CA (`ca.pem`, `ca.key` mode 0600); created on first start.
    pub ca_dir: PathBuf,
    /// Use an existing CA instead of the one in `ca_dir` (both must be set).
    pub ca_cert_file: Option<PathBuf>,
    pub ca_key_file: Option<PathBuf>,
    /// Extra PEM files of CAs trusted for upstream servers, on top of the system trust store
    /// (which honours SSL_CERT_FILE / SSL_CERT_DIR).
    pub upstream_ca_files: Vec<PathBuf>,
    /// Do not use the system trust store for upstream verification (only `upstream_ca_files`).
    pub upstream_no_system_roots: bool,
    /// Domains never decrypted (exact name or any subdomain of it), e.g. pinned apps.
    pub bypass_domains: Vec<String>,
    /// App ids never decrypted.
    pub bypass_apps: Vec<String>,
    /// App categories never decrypted (e.g. "health", "finance").
    pub bypass_categories: Vec<String>,
    /// How long a client that rejected our CA is spliced instead of intercepted, for the apps
    /// and hosts listed in `client_reject_bypass_apps` / `client_reject_bypass_domains` only.
    pub client_reject_bypass_secs: u64,
    /// App ids (pinning apps) whose clients are spliced for `client_reject_bypass_secs` after
    /// they rejected our CA. Any other app stays under session control whatever its clients
    /// do: a user must not be able to switch inspection off by refusing one handshake.
    pub client_reject_bypass_apps: Vec<String>,
    /// Server names (and their subdomains) treated like `client_reject_bypass_apps`.
    pub client_reject_bypass_domains: Vec<String>,
    /// What happens to a connection steered to the proxy that cannot be inspected: no SNI (or
    /// an ECH outer name), a ClientHello that does not parse or is larger than 64 KiB, or an
    /// SNI that is not an app under session control. `block` (default) closes it; `pass`
    /// splices it to its destination undecrypted. Either way it is audited and counted.
    pub uninspectable: Uninspectable,
    /// Destinations the proxy never connects to, on top of loopback, link-local, multicast,
    /// unspecified and the gateway's own addresses (the daemon adds `[enforcement]
    /// never_block`). A steered connection toward one is closed and counted.
    pub protected_destinations: Vec<IpNet>,
    /// Time allowed for the ClientHello plus the client-side TLS handshake.
    pub handshake_timeout_secs: u64,
    /// Time allowed to receive a request's headers (slowloris guard).
    pub header_read_timeout_secs: u64,
    /// Time allowed to connect (TCP + TLS) to the origin.
    pub upstream_connect_timeout_secs: u64,
    /// Time allowed to read a body that is being buffered for inspection.
    pub body_read_timeout_secs: u64,
    /// Largest request head accepted (bytes); larger heads get 431 / connection close.
    pub max_header_bytes: usize,
    /// Largest body buffered for content inspection.
    pub max_inspect_bytes: ByteSize,
    /// What to do with a body larger than `max_inspect_bytes` when a policy wants its content:
    /// `block` (default) or `allow` (pass it, inspect the first `max_inspect_bytes` only, and
    /// write an audit record saying so).
    pub over_limit_action: OverLimitAction,
    /// HTTP/1.1 connections to one origin (address + server name) at a time; requests beyond
    /// wait for a free one (up to `upstream_connect_timeout_secs`). 0 = unlimited.
    pub max_upstream_connections_per_origin: usize,
    /// Concurrent client connections; further connections are accepted and closed at once
    /// (counted), so that the accept queue never fills up for everyone.
    pub max_connections: usize,
    /// Concurrent connections from one source address; further ones are closed (counted).
    pub max_connections_per_client: usize,
    /// Memory for every body buffered or decoded for inspection, all connections together.
    /// A body that cannot get its share waits (up to `body_read_timeout_secs`) and is then
    /// refused with 503; the proxy never goes past this. A download whose content a policy
    /// scans takes its share (up to 1 MiB, then its length) before its request is sent.
    pub max_buffered_bytes: ByteSize,
    /// Of `max_buffered_bytes`, what the bodies of one source address may hold together; its
    /// further bodies wait for its own (then 503), while other clients' bodies go ahead.
    /// Default: a quarter of `max_buffered_bytes`, and at least twice `max_inspect_bytes` (a
    /// form body is held as sent and form-decoded). Raise
    /// it for a source address that many users share (a terminal server, a NAT).
    pub max_buffered_bytes_per_client: Option<ByteSize>,
    /// A client connection with response bytes waiting that takes none of them for this long
    /// is closed (as nginx's `send_timeout`), and so is an HTTP/2 connection with a stream
    /// whose window the client keeps shut that long while data waits for it: a client that
    /// stops reading would otherwise hold its responses' inspection memory (and their origin
    /// connections) for as long as its TCP connection lives.
    pub client_send_timeout_secs: u64,
    /// A connection (HTTP/1.1 or HTTP/2 without a request in flight, a splice, a WebSocket
    /// tunnel) with no traffic for this long is closed.
    pub idle_timeout_secs: u64,
    /// A streamed request or response body that makes no progress for this long is aborted.
    pub body_idle_timeout_secs: u64,
    /// Leaf certificates kept in memory (LRU).
    pub leaf_cache_size: usize,
    /// JSON-lines audit log; none = decisions are only traced.
    pub audit_log: Option<PathBuf>,
    /// Named IP ranges for access policies (`ip_tags = ["corporate"]`).
    pub ip_tags: BTreeMap<String, Vec<IpNet>>,
    /// Users by source address (`alice = ["10.1.2.3/32"]`).
    pub users: BTreeMap<String, Vec<IpNet>>,
    /// Which devices count as managed.
    pub managed_devices: ManagedDevices,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            // Both families (IPv4 as v4-mapped); IPv4 only on a host without IPv6.
            listen: SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 8443)),
            tproxy: false,
            ca_dir: PathBuf::from("/var/lib/tollgate/ca"),
            ca_cert_file: None,
            ca_key_file: None,
            upstream_ca_files: Vec::new(),
            upstream_no_system_roots: false,
            bypass_domains: Vec::new(),
            bypass_apps: Vec::new(),
            bypass_categories: Vec::new(),
            client_reject_bypass_secs: 3600,
            client_reject_bypass_apps: Vec::new(),
            client_reject_bypass_domains: Vec::new(),
            uninspectable: Uninspectable::Block,
            protected_destinations: Vec::new(),
            handshake_timeout_secs: 10,
            header_read_timeout_secs: 15,
            upstream_connect_timeout_secs: 10,
            body_read_timeout_secs: 60,
            max_header_bytes: 64 * 1024,
            max_inspect_bytes: ByteSize(16 * 1024 * 1024),
            over_limit_action: OverLimitAction::Block,
            max_upstream_connections_per_origin: 256,
            max_connections: 10_000,
            max_connections_per_client: 512,
            max_buffered_bytes: ByteSize(256 * 1024 * 1024),
            max_buffered_bytes_per_client: None,
            client_send_timeout_secs: 60,
            idle_timeout_secs: 300,
            body_idle_timeout_secs: 60,
            leaf_cache_size: 1024,
            audit_log: None,
            ip_tags: BTreeMap::new(),
            users: BTreeMap::new(),
            managed_devices: ManagedDevices::default(),
        }
    }
}

impl ProxyConfig {
    /// Checks what types alone cannot. `Err` names the key.
    pub fn validate(&self) -> Result<(), crate::ProxyError> {
        let bad = |key: &str, message: &str| {
            Err(crate::ProxyError::Config {
                key: key.into(),
                message: message.into(),
            })
        };
        if self.listen.port() == 443 {
            // Under TPROXY a steered connection's local address is its destination: with the
            // proxy on 443 every steered connection would look like one to the proxy itself.
            return bad(
                "listen",
                "port 443 cannot be the proxy's port: steered connections arrive for port 443",
            );
        }
        for (key, v) in [
            ("max_connections", self.max_connections),
            (
                "max_connections_per_client",
                self.max_connections_per_client,
            ),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1");
            }
        }
        for (key, v) in [
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("body_idle_timeout_secs", self.body_idle_timeout_secs),
            ("body_read_timeout_secs", self.body_read_timeout_secs),
            ("client_send_timeout_secs", self.client_send_timeout_secs),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1");
            }
        }
        if self.max_buffered_bytes.0 < self.max_inspect_bytes.0 {
            return bad(
                "max_buffered_bytes",
                "must be at least max_inspect_bytes (one body must fit)",
            );
        }
        if self.max_buffered_bytes.0 > (usize::MAX >> 4) as u64 {
            return bad("max_buffered_bytes", "too large");
        }
        if let Some(per_client) = self.max_buffered_bytes_per_client {
            if per_client.0 < self.max_inspect_bytes.0 {
                return bad(
                    "max_buffered_bytes_per_client",
                    "must be at least max_inspect_bytes (one body must fit)",
                );
            }
            if per_client.0 > self.max_buffered_bytes.0 {
                return bad(
                    "max_buffered_bytes_per_client",
                    "must be at most max_buffered_bytes",
                );
            }
        }
        Ok(())
    }

    /// What one source address's bodies may hold (see `max_buffered_bytes_per_client`).
    pub fn buffered_bytes_per_client(&self) -> u64 {
        self.max_buffered_bytes_per_client
            .map(|b| b.0)
            // A form body is held twice (as sent, and form-decoded).
            .unwrap_or(
                (self.max_buffered_bytes.0 / 4).max(self.max_inspect_bytes.0.saturating_mul(2)),
            )
            .min(self.max_buffered_bytes.0)
    }
}

/// `uninspectable`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Uninspectable {
    Block,
    Pass,
}

/// `[proxy.managed_devices]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ManagedDevices {
    /// Source ranges of managed devices.
    pub ips: Vec<IpNet>,
    /// MAC addresses of managed devices (looked up in the neighbour table, /proc/net/arp).
    pub macs: Vec<String>,
    /// A device presenting a client certificate issued by this CA counts as managed. Setting
    /// it makes the proxy ask for (but not require) a client certificate.
    pub client_ca_file: Option<PathBuf>,
}

/// `over_limit_action`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OverLimitAction {
    Block,
    Allow,
}

/// A policy's action, ordered from least to most restrictive.
#[derive(
    Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    /// Record and let pass. `monitor` is accepted as a synonym.
    #[serde(alias = "monitor")]
    Audit,
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Audit => "audit",
            Action::Block => "block",
        }
    }
}

/// Everything policy-related that can be reloaded at run time.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PolicySet {
    pub session_policies: Vec<SessionPolicy>,
    pub access_policies: Vec<AccessPolicy>,
}

/// `[[session_policies]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SessionPolicy {
    pub name: String,
    /// App ids; `"*"` = every app under session control.
    pub apps: Vec<String>,
    pub action: Action,
    #[serde(default)]
    pub download: Option<TransferRule>,
    #[serde(default)]
    pub upload: Option<TransferRule>,
    #[serde(default)]
    pub activities: Vec<ActivityRule>,
}

/// `download = {..}` / `upload = {..}`: the policy matches a transfer when any listed
/// condition holds (extension, MIME type, size above `max_size`, or at least `min_matches`
/// findings of the listed content detectors and custom regexes). An empty table matches
/// every transfer that has a body.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TransferRule {
    /// Without the dot, case-insensitive; checked against the Content-Disposition filename,
    /// multipart part filenames and the last path segment of the URL.
    pub file_extensions: Vec<String>,
    /// `type/subtype` or `type/*`; checked against Content-Type and multipart part types.
    pub mime_types: Vec<String>,
    /// Bodies larger than this match.
    pub max_size: Option<ByteSize>,
    /// Built-in detectors: credit_card, iban, us_ssn, email, private_key, cloud_api_key.
    pub content: Vec<ContentKind>,
    /// Custom regular expressions (Rust regex syntax), counted like detectors.
    pub custom: Vec<String>,
    /// Findings needed for the content condition to match (default 1).
    pub min_matches: Option<u32>,
}

/// Built-in sensitive-data detectors.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ContentKind {
    CreditCard,
    Iban,
    UsSsn,
    Email,
    PrivateKey,
    CloudApiKey,
}

/// `activities = [{ method = "POST", host = "*.example.com", path = "/share/*" }]`. Patterns
/// use `*` as a wildcard (any run of characters); absent fields match anything.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ActivityRule {
    pub method: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
}

/// `[[access_policies]]`: every condition given must hold (lists match when any entry does).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessPolicy {
    pub name: String,
    /// App ids; `"*"` = every app under session control.
    pub apps: Vec<String>,
    /// allow | block | monitor (= audit).
    pub action: Action,
    #[serde(default)]
    pub source_ips: Vec<IpNet>,
    /// Names from `[proxy.ip_tags]`.
    #[serde(default)]
    pub ip_tags: Vec<String>,
    /// managed | unmanaged.
    #[serde(default)]
    pub device: Option<DeviceState>,
    /// Names from `[proxy.users]` (or a client certificate's common name).
    #[serde(default)]
    pub users: Vec<String>,
    /// Regexes matched against User-Agent.
    #[serde(default)]
    pub user_agents: Vec<String>,
    /// Time-of-day window.
    #[serde(default)]
    pub time: Option<TimeWindow>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    Managed,
    Unmanaged,
}

/// `time = { from = "08:00", to = "18:00", days = ["mon", "tue"], utc_offset_minutes = 60 }`.
/// `from > to` wraps past midnight. Times are local to `utc_offset_minutes` (default 0 = UTC).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub days: Vec<String>,
    #[serde(default)]
    pub utc_offset_minutes: i32,
}

/// A byte count written as an integer or a string with a unit ("10MB", "512 KiB").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Option<ByteSize> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let num: f64 = num.trim().parse().ok()?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1024,
            "m" | "mb" => 1000 * 1000,
            "mib" => 1024 * 1024,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gib" => 1024 * 1024 * 1024,
            _ => return None,
        };
        let v = num * mult as f64;
        if !(0.0..=(u64::MAX as f64)).contains(&v) {
            return None;
        }
        Some(ByteSize(v as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s)
                .ok_or_else(|| serde::de::Error::custom(format!("invalid size {s:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        proxy: ProxyConfig,
        #[serde(default)]
        session_policies: Vec<SessionPolicy>,
        #[serde(default)]
        access_policies: Vec<AccessPolicy>,
        #[serde(default)]
        #[allow(
            dead_code,
            reason = "the [apps] table belongs to the daemon; parsed to prove coexistence"
        )]
        apps: toml::Table,
    }

    #[test]
    fn issue_example_parses() {
        let doc: Doc = toml::from_str(
            r#"
[proxy]
listen = "127.0.0.1:8443"
ca_dir = "/tmp/ca"
bypass_categories = ["health", "finance"]
max_inspect_bytes = "8MiB"
over_limit_action = "allow"
ip_tags = { corporate = ["10.0.0.0/8"], risky = ["198.51.100.0/24"] }
users = { alice = ["10.1.2.3/32"] }
managed_devices = { ips = ["10.9.0.0/16"], macs = ["02:00:00:00:00:01"] }

[apps.dropbox]
session_control = true

[[session_policies]]
name = "no executables from cloud storage"
apps = ["dropbox"]
action = "block"
download = { file_extensions = ["exe", "msi"] }

[[session_policies]]
name = "no card numbers out"
apps = ["dropbox"]
action = "block"
upload = { content = ["credit_card"], min_matches = 1 }

[[session_policies]]
name = "no sharing"
apps = ["*"]
action = "audit"
activities = [{ method = "POST", path = "/2/sharing/*" }]

[[access_policies]]
name = "risky networks"
apps = ["dropbox"]
action = "block"
ip_tags = ["risky"]
device = "unmanaged"
time = { from = "18:00", to = "08:00", days = ["sat", "sun"] }
"#,
        )
        .unwrap();
        assert_eq!(doc.proxy.max_inspect_bytes, ByteSize(8 * 1024 * 1024));
        assert_eq!(doc.proxy.over_limit_action, OverLimitAction::Allow);
        assert_eq!(doc.session_policies.len(), 3);
        assert_eq!(
            doc.session_policies[1].upload.as_ref().unwrap().content,
            vec![ContentKind::CreditCard]
        );
        assert_eq!(doc.access_policies[0].device, Some(DeviceState::Unmanaged));
    }

    #[test]
    fn unknown_keys_rejected() {
        let r: Result<Doc, _> = toml::from_str("[proxy]\nlisten_port = 1\n");
        assert!(r.is_err());
        let r: Result<Doc, _> = toml::from_str(
            "[proxy]\n[[session_policies]]\nname='x'\napps=[]\naction='block'\ndownload={ extension=['exe'] }\n",
        );
        assert!(r.is_err());
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("10MB"), Some(ByteSize(10_000_000)));
        assert_eq!(ByteSize::parse("1.5 KiB"), Some(ByteSize(1536)));
        assert_eq!(ByteSize::parse("12"), Some(ByteSize(12)));
        assert_eq!(ByteSize::parse("ten"), None);
        assert_eq!(ByteSize::parse("5XB"), None);
    }

    #[test]
    fn a_clients_part_of_the_budget() {
        let mib = |n: u64| ByteSize(n << 20);
        let doc: Doc = toml::from_str("[proxy]\n").unwrap();
        let p = doc.proxy;
        assert_eq!(
            p.buffered_bytes_per_client(),
            64 << 20,
            "a quarter of 256 MiB"
        );
        let small = ProxyConfig {
            max_buffered_bytes: mib(40),
            ..p.clone()
        };
        assert_eq!(
            small.buffered_bytes_per_client(),
            32 << 20,
            "at least two bodies' worth"
        );
        let doc: Doc = toml::from_str(
            "[proxy]\nmax_buffered_bytes_per_client = \"100MiB\"\nclient_send_timeout_secs = 30\n",
        )
        .unwrap();
        assert_eq!(doc.proxy.buffered_bytes_per_client(), 100 << 20);
        assert_eq!(doc.proxy.client_send_timeout_secs, 30);
        for (bad, key) in [
            (
                ProxyConfig {
                    max_buffered_bytes_per_client: Some(mib(8)),
                    ..p.clone()
                },
                "max_buffered_bytes_per_client",
            ),
            (
                ProxyConfig {
                    max_buffered_bytes_per_client: Some(mib(512)),
                    ..p.clone()
                },
                "max_buffered_bytes_per_client",
            ),
            (
                ProxyConfig {
                    client_send_timeout_secs: 0,
                    ..p.clone()
                },
                "client_send_timeout_secs",
            ),
        ] {
            match bad.validate() {
                Err(crate::ProxyError::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        }
    }
}
