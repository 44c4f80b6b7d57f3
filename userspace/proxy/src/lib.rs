//! The inline session proxy: Conditional Access App Control at the edge.
//!
//! Connections of apps under session control are steered to the proxy's listening socket by
//! the daemon's eBPF programs (`bpf_sk_assign` of the SYN to this listener, which is then
//! `IP_TRANSPARENT` — `tproxy = true` — and the original destination is the accepted
//! socket's local address; see `tollgate-dataplane`'s steering), or by an nft `redirect`
//! someone else installs (the original destination then comes from `SO_ORIGINAL_DST`).
//! [`ProxyHandle::listener`] gives the daemon the listening socket to hand to the kernel.
//! For each connection:
//!
//! 1. read the ClientHello (rustls `Acceptor`) and look the SNI up with the daemon's
//!    `app_lookup`; when the app is not under session control, or is bypassed (domain, app,
//!    category, or a client that recently rejected our CA), the raw bytes are spliced to the
//!    original destination: never decrypted, the client sees the real certificate;
//! 2. otherwise connect to the origin first and verify its certificate against the system
//!    trust store (SSL_CERT_FILE / SSL_CERT_DIR honoured) plus `upstream_ca_files`. A failure
//!    is never hidden: the client handshake completes and every request gets a block page
//!    explaining it;
//! 3. complete the client handshake with a leaf for the SNI minted by the local CA
//!    ([`ca::CertAuthority`]), ALPN h2 or http/1.1 to match the origin, TLS session
//!    tickets for resumption;
//! 4. serve HTTP with hyper; every request passes framing checks (smuggling), access
//!    policies, activity rules, upload inspection; every response download inspection
//!    ([`policy`], [`dlp`]); block pages are HTML for `Accept: text/html`, JSON otherwise;
//!    every decision is an audit record ([`audit`]). HTTP/1.1 request framing is checked
//!    before hyper sees it ([`guard`]): Content-Length with Transfer-Encoding, double
//!    Content-Length and unknown codings get `400`, never forwarded. Only a body-less GET
//!    with `Upgrade: websocket` becomes a tunnel after the policies (frames are not
//!    inspected; a non-`101` answer is inspected like any response); other upgrade
//!    protocols (h2c) get `400`.
//!
//! Connections that cannot be inspected (no SNI, no parsable ClientHello, an SNI of no app
//! under session control) follow `uninspectable` (default: closed); every splice of a
//! steered connection is audited. The proxy never connects to loopback, link-local,
//! multicast, unspecified, its own or `protected_destinations` addresses. Bodies buffered or
//! decoded for inspection share one memory budget (`max_buffered_bytes`); a download whose
//! content a policy scans reserves its share before the request goes to the origin, so a
//! transfer waiting for memory holds no origin connection. Decoding and scanning run on the
//! blocking pool.
//!
//! # For the daemon
//!
//! ```ignore
//! let (apps_tx, apps_rx) = tokio::sync::watch::channel(HashSet::from(["dropbox".to_string()]));
//! let lookup: AppLookup = Arc::new(move |sni| catalog.classify_name(sni)
//!     .map(|m| AppInfo { id: m.app.id.clone(), category: Some(m.app.category.clone()) }));
//! let proxy = SessionProxy::start(cfg.proxy, &policy_set, lookup, apps_rx).await?;
//! dataplane.steering().set_proxy_listener(proxy.listener(), families)?; // kernel steering
//! proxy.update_policies(&new_policy_set)?;                       // on config reload
//! println!("{}", proxy.ca_pem());                                // `tollgate ca export`
//! // without a running proxy: tollgate_proxy::load_ca(&cfg.proxy)?.ca_pem()
//! ```
//!
//! Counters: [`ProxyHandle::stats`]. Bodies are buffered only when a policy needs their
//! content (up to `max_inspect_bytes`); everything else streams.
//!
//! # Configuration (TOML)
//!
//! ```toml
//! [proxy]
//! listen = "[::]:8443"                 # where steered connections arrive: both families
//!                                      # ("0.0.0.0:8443": IPv4 only; IPv6 SYNs to steered
//!                                      # addresses are then reset so clients use IPv4)
//! tproxy = false                       # set IP_TRANSPARENT on the listener (the daemon
//!                                      # always does: its eBPF steering needs it)
//! ca_dir = "/var/lib/tollgate/ca"      # ca.pem + ca.key (0600), created on first start
//! # ca_cert_file / ca_key_file          # use an existing CA instead (PKCS#8 key)
//! upstream_ca_files = []               # extra trust anchors for origins
//! upstream_no_system_roots = false
//! bypass_domains = ["bank.example"]    # the name and its subdomains are never decrypted
//! bypass_apps = []                     # app ids never decrypted (pinning apps)
//! bypass_categories = ["health", "finance"]
//! client_reject_bypass_secs = 3600     # a client that rejected our CA is spliced this long,
//! client_reject_bypass_apps = []       # only for these apps (pinning apps)
//! client_reject_bypass_domains = []    # and these names; never for any other app
//! uninspectable = "block"              # no SNI / bad hello / SNI of no session app: block | pass
//! protected_destinations = []          # CIDRs never connected to (the daemon adds never_block)
//! handshake_timeout_secs = 10          # ClientHello + client handshake
//! header_read_timeout_secs = 15        # slowloris guard
//! upstream_connect_timeout_secs = 10
//! body_read_timeout_secs = 60          # bodies buffered for inspection
//! max_header_bytes = 65536             # larger request heads: 431 / closed
//! max_inspect_bytes = "16MiB"          # largest body buffered for inspection
//! over_limit_action = "block"          # body above max_inspect_bytes: block, or allow =
//!                                      # inspect the first max_inspect_bytes, pass the rest,
//!                                      # and write an audit record saying so
//! max_upstream_connections_per_origin = 256  # h1 connections per origin; 0 = unlimited
//! max_connections = 10000              # more: accepted and closed at once (counted)
//! max_connections_per_client = 512
//! max_buffered_bytes = "256MiB"        # every body held for inspection together
//! max_buffered_bytes_per_client = "64MiB"  # one source address's bodies (default: a
//!                                      # quarter of max_buffered_bytes)
//! client_send_timeout_secs = 60        # a client that takes no response bytes is cut
//! idle_timeout_secs = 300              # idle h1/h2 connections, splices, tunnels
//! body_idle_timeout_secs = 60          # a streamed body that stops moving
//! leaf_cache_size = 1024
//! audit_log = "/var/log/tollgate/proxy-audit.jsonl"
//! ip_tags = { corporate = ["10.0.0.0/8"], risky = ["198.51.100.0/24"] }
//! users = { alice = ["10.1.2.3/32"] }  # user by source address
//! managed_devices = { ips = ["10.9.0.0/16"], macs = ["02:00:00:00:00:01"],
//!                     client_ca_file = "/etc/tollgate/device-ca.pem" }  # cert asked, not required
//!
//! [[session_policies]]
//! name = "no executables from cloud storage"
//! apps = ["dropbox"]                   # "*" = every app under session control
//! action = "block"                     # block | audit | allow
//! download = { file_extensions = ["exe", "msi"], mime_types = ["application/x-msdownload"], max_size = "100MB" }
//!
//! [[session_policies]]
//! name = "no card numbers out"
//! apps = ["dropbox"]
//! action = "block"
//! upload = { content = ["credit_card", "iban", "us_ssn", "email", "private_key", "cloud_api_key"],
//!            custom = ["(?i)project\\s+falcon"], min_matches = 1,
//!            file_extensions = ["pst"], mime_types = ["application/zip"], max_size = "50MB" }
//!
//! [[session_policies]]
//! name = "no public links"
//! apps = ["dropbox"]
//! action = "block"
//! activities = [{ method = "POST", host = "*.dropboxapi.com", path = "/2/sharing/*" }]
//!
//! [[session_policies]]
//! name = "monitor everything"          # no download/upload/activities: every request
//! apps = ["*"]
//! action = "audit"
//!
//! [[access_policies]]
//! name = "no access from risky networks on unmanaged devices"
//! apps = ["dropbox"]
//! action = "block"                     # allow | block | monitor
//! source_ips = ["198.18.0.0/15"]       # every condition given must hold
//! ip_tags = ["risky"]
//! device = "unmanaged"                 # managed | unmanaged
//! users = ["alice"]
//! user_agents = ["(?i)curl"]           # regexes
//! time = { from = "18:00", to = "08:00", days = ["sat", "sun"], utc_offset_minutes = 60 }
//! ```
//!
//! A transfer rule matches when any of its conditions holds (extension of the
//! Content-Disposition filename, a multipart part's filename, or the URL's last segment;
//! media type of the body or a part; size above `max_size`; at least `min_matches` validated
//! findings of the content detectors). The most restrictive matching policy wins
//! (block > audit > allow).
#![forbid(unsafe_code)]

pub mod audit;
pub mod budget;
pub mod ca;
pub mod config;
pub mod decode;
pub mod dlp;
mod error;
pub mod governance;
pub mod guard;
pub mod http;
pub mod idle;
pub mod policy;
pub mod server;
pub mod shared;
pub mod upstream;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use ca::CertAuthority;
pub use config::{AccessPolicy, Action, PolicySet, ProxyConfig, SessionPolicy};
pub use error::{ProxyError, Result};
pub use policy::Policies;

/// What the daemon's catalog says about a server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppInfo {
    pub id: String,
    pub category: Option<String>,
}

/// Server name (lower case, no trailing dot) -> app.
pub type AppLookup = Arc<dyn Fn(&str) -> Option<AppInfo> + Send + Sync>;

/// How a connection's origin is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// SO_ORIGINAL_DST (nft redirect), else the local address (TPROXY). The normal mode.
    Original,
    /// Every connection goes to this address (reverse-proxy use and loopback tests).
    Fixed(SocketAddr),
}

/// Extra start options; [`SessionProxy::start`] uses the defaults.
#[derive(Clone)]
pub struct StartOptions {
    pub destination: Destination,
    /// Use this CA instead of loading / creating one from the config.
    pub ca: Option<Arc<CertAuthority>>,
    /// Let the proxy connect to loopback origins (tests and benches whose origin runs on
    /// the same host). Never set by the daemon: a steered connection toward loopback would
    /// reach the gateway's own services.
    pub allow_loopback_destinations: bool,
    /// A copy of every audit record goes here (the daemon turns them into activities; the
    /// proxy knows nothing of what happens to them). Bounded by the sender's channel.
    pub audit_tap: Option<tokio::sync::mpsc::Sender<audit::AuditRecord>>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            destination: Destination::Original,
            ca: None,
            allow_loopback_destinations: false,
            audit_tap: None,
        }
    }
}

/// Entry point.
pub struct SessionProxy;

/// A running proxy. Dropping it does not stop it; call [`ProxyHandle::shutdown`].
pub struct ProxyHandle {
    local_addr: SocketAddr,
    /// A second descriptor of the listening socket, for the daemon's sockmap.
    listener_fd: OwnedFd,
    shared: Arc<shared::Shared>,
    policies_tx: watch::Sender<Arc<Policies>>,
    shutdown_tx: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Counter snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub accepted: u64,
    pub intercepted: u64,
    pub spliced: u64,
    pub client_rejected_ca: u64,
    pub upstream_cert_failures: u64,
    pub rejected_requests: u64,
    pub upstream_request_failures: u64,
    pub client_handshake_failures: u64,
    pub audit_dropped: u64,
    /// Audit records the daemon's activity tap could not take (it fell behind).
    pub activity_tap_dropped: u64,
    /// Connections spliced because their client rejected our CA (listed apps only).
    pub client_reject_bypasses: u64,
    /// Steered connections closed because they could not be inspected.
    pub uninspectable_blocked: u64,
    /// Steered connections spliced undecrypted (bypass lists, `uninspectable = "pass"`).
    pub steered_splices: u64,
    /// Connections toward loopback, link-local, gateway-own or protected addresses refused.
    pub refused_destinations: u64,
    /// Connections closed because `max_connections` were open.
    pub connection_limit_hits: u64,
    /// Connections closed because their client had `max_connections_per_client` open.
    pub client_limit_hits: u64,
    /// Connections, splices and tunnels closed for inactivity.
    pub idle_closed: u64,
    /// Client connections closed because they took no response bytes for
    /// `client_send_timeout_secs` (a client that stopped reading).
    pub client_send_timeouts: u64,
    /// Bytes of bodies held for inspection now, the most held at once, and the budget.
    pub buffered_bytes: u64,
    pub buffered_bytes_peak: u64,
    pub buffered_bytes_budget: u64,
    /// Bodies that waited for inspection memory, and bodies refused (503) for lack of it.
    pub budget_waits: u64,
    pub budget_refusals: u64,
    /// Bodies that waited because their client already held `max_buffered_bytes_per_client`.
    pub budget_client_waits: u64,
}

impl SessionProxy {
    /// Load or create the CA, compile `policies`, bind `cfg.listen` and start serving.
    /// `session_apps` holds the app ids under session control (the daemon updates it).
    pub async fn start(
        cfg: ProxyConfig,
        policies: &PolicySet,
        app_lookup: AppLookup,
        session_apps: watch::Receiver<HashSet<String>>,
    ) -> Result<ProxyHandle> {
        Self::start_with(
            cfg,
            policies,
            app_lookup,
            session_apps,
            StartOptions::default(),
        )
        .await
    }

    pub async fn start_with(
        cfg: ProxyConfig,
        policies: &PolicySet,
        app_lookup: AppLookup,
        session_apps: watch::Receiver<HashSet<String>>,
        opts: StartOptions,
    ) -> Result<ProxyHandle> {
        cfg.validate()?;
        let compiled = Arc::new(Policies::compile(policies, &cfg.ip_tags)?);
        let ca = match opts.ca.clone() {
            Some(ca) => ca,
            None => Arc::new(load_ca(&cfg)?),
        };
        let listener = bind(&cfg)?;
        let local_addr = listener.local_addr()?;
        let listener_fd = listener.as_fd().try_clone_to_owned()?;
        let audit = audit::AuditSink::open(cfg.audit_log.clone())
            .await?
            .with_tap(opts.audit_tap.clone());
        let (policies_tx, policies_rx) = watch::channel(compiled);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(shared::Shared::new(
            cfg,
            ca,
            audit,
            policies_rx,
            session_apps,
            app_lookup,
            &opts,
        )?);
        let task = tokio::spawn(server::serve(shared.clone(), listener, shutdown_rx));
        tracing::info!("session proxy listening on {local_addr}");
        Ok(ProxyHandle {
            local_addr,
            listener_fd,
            shared,
            policies_tx,
            shutdown_tx,
            task,
        })
    }
}

/// The CA named by the config: `ca_cert_file` + `ca_key_file`, else `ca_dir`.
pub fn load_ca(cfg: &ProxyConfig) -> Result<CertAuthority> {
    match (&cfg.ca_cert_file, &cfg.ca_key_file) {
        (Some(c), Some(k)) => CertAuthority::from_files(c, k, cfg.leaf_cache_size),
        (None, None) => CertAuthority::load_or_create(&cfg.ca_dir, cfg.leaf_cache_size),
        _ => Err(ProxyError::Config {
            key: "ca_cert_file".into(),
            message: "ca_cert_file and ca_key_file go together".into(),
        }),
    }
}

fn bind(cfg: &ProxyConfig) -> Result<TcpListener> {
    match bind_at(cfg, cfg.listen) {
        // The default `[::]` on a host without IPv6: IPv4 only.
        Err(ProxyError::Socket(e))
            if cfg.listen.ip() == std::net::IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
                && e.raw_os_error() == Some(EAFNOSUPPORT) =>
        {
            let v4 = SocketAddr::from(([0, 0, 0, 0], cfg.listen.port()));
            tracing::warn!("no IPv6 on this host: the session proxy listens on {v4} only");
            bind_at(cfg, v4)
        }
        r => r,
    }
}

/// errno when the kernel has no IPv6 (Linux).
const EAFNOSUPPORT: i32 = 97;

fn bind_at(cfg: &ProxyConfig, addr: SocketAddr) -> Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // Both families on one socket, whatever net.ipv6.bindv6only says.
        s.set_only_v6(false)?;
    }
    if cfg.tproxy {
        if addr.is_ipv4() {
            s.set_ip_transparent_v4(true)?;
        } else {
            s.set_ip_transparent_v6(true)?;
        }
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(TcpListener::from_std(s.into())?)
}

impl ProxyHandle {
    /// Refuses `actor`'s sessions to `app` for `dur` (a governance action of an activity
    /// policy named `policy`). False when the table of blocks is full.
    pub fn block_sessions(
        &self,
        actor: governance::Actor,
        app: &str,
        dur: std::time::Duration,
        policy: &str,
    ) -> bool {
        self.shared.session_blocks.block(actor, app, dur, policy)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The listening socket (for kernel steering: the daemon puts it in the probes' sockmap).
    /// Valid until [`ProxyHandle::shutdown`].
    pub fn listener(&self) -> BorrowedFd<'_> {
        self.listener_fd.as_fd()
    }

    /// The CA certificate clients must trust (`tollgate ca export`).
    pub fn ca_pem(&self) -> &str {
        self.shared.ca.ca_pem()
    }

    /// Replace the policies (takes effect for the next request). Invalid policies leave the
    /// running set untouched.
    pub fn update_policies(&self, set: &PolicySet) -> Result<()> {
        let compiled = Policies::compile(set, &self.shared.cfg.ip_tags)?;
        self.policies_tx.send_replace(Arc::new(compiled));
        Ok(())
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.shared.stats;
        let b = &self.shared.budget;
        StatsSnapshot {
            accepted: s.accepted.load(Ordering::Relaxed),
            intercepted: s.intercepted.load(Ordering::Relaxed),
            spliced: s.spliced.load(Ordering::Relaxed),
            client_rejected_ca: s.client_rejected_ca.load(Ordering::Relaxed),
            upstream_cert_failures: s.upstream_cert_failures.load(Ordering::Relaxed),
            rejected_requests: s.rejected_requests.load(Ordering::Relaxed),
            upstream_request_failures: s.upstream_request_failures.load(Ordering::Relaxed),
            client_handshake_failures: s.client_handshake_failures.load(Ordering::Relaxed),
            audit_dropped: self.shared.audit.dropped(),
            activity_tap_dropped: self.shared.audit.tap_dropped(),
            client_reject_bypasses: s.client_reject_bypasses.load(Ordering::Relaxed),
            uninspectable_blocked: s.uninspectable_blocked.load(Ordering::Relaxed),
            steered_splices: s.steered_splices.load(Ordering::Relaxed),
            refused_destinations: s.refused_destinations.load(Ordering::Relaxed),
            connection_limit_hits: s.connection_limit_hits.load(Ordering::Relaxed),
            client_limit_hits: s.client_limit_hits.load(Ordering::Relaxed),
            idle_closed: s.idle_closed.load(Ordering::Relaxed),
            client_send_timeouts: s.client_send_timeouts.load(Ordering::Relaxed),
            buffered_bytes: b.in_use(),
            buffered_bytes_peak: b.peak(),
            buffered_bytes_budget: b.capacity(),
            budget_waits: b.waits.load(Ordering::Relaxed),
            budget_refusals: b.refusals.load(Ordering::Relaxed),
            budget_client_waits: b.client_waits.load(Ordering::Relaxed),
        }
    }

    /// How long requests took, head to head (see [`shared::Stats::request_seconds`]).
    pub fn request_seconds(&self) -> shared::LatencySnapshot {
        self.shared.stats.request_seconds.snapshot()
    }

    /// Stop accepting; connections in flight finish on their own.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.task.await;
    }
}
