//! What every connection of the proxy shares: the configuration, the policies, the CA, the
//! upstream pool, the memory budget, the counters, and the decisions made from a server name
//! alone (intercept, bypass, uninspectable) and from a destination (the gateway's own
//! addresses and protected networks are refused).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::audit::{AuditRecord, AuditSink, now_rfc3339};
use crate::budget::Budget;
use crate::ca::CertAuthority;
use crate::config::ProxyConfig;
use crate::policy::Policies;
use crate::upstream::{Pool, UpstreamTls};
use crate::{AppInfo, AppLookup, Destination};
/// Most ClientHello bytes read before giving up on finding one (then: splice).
pub(crate) const MAX_HELLO_BYTES: usize = 64 * 1024;
/// Entries kept in the "client rejected our CA" memory.
pub(crate) const MAX_REJECTED: usize = 65_536;

/// Counters, readable through [`crate::ProxyHandle::stats`].
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub intercepted: AtomicU64,
    pub spliced: AtomicU64,
    pub client_rejected_ca: AtomicU64,
    pub upstream_cert_failures: AtomicU64,
    pub rejected_requests: AtomicU64,
    /// Requests answered 502 because the origin could not be reached or failed mid-request.
    pub upstream_request_failures: AtomicU64,
    /// Client handshakes that failed for reasons other than rejecting our CA.
    pub client_handshake_failures: AtomicU64,
    /// Connections spliced because their client had rejected our CA (listed apps only).
    pub client_reject_bypasses: AtomicU64,
    /// Steered connections that could not be inspected and were closed (`uninspectable`).
    pub uninspectable_blocked: AtomicU64,
    /// Steered connections spliced undecrypted (bypass lists, `uninspectable = "pass"`).
    pub steered_splices: AtomicU64,
    /// Connections toward loopback, link-local, multicast, unspecified, the gateway's own or
    /// protected addresses, closed without connecting.
    pub refused_destinations: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub connection_limit_hits: AtomicU64,
    /// Connections closed at once because their source had `max_connections_per_client` open.
    pub client_limit_hits: AtomicU64,
    /// Connections, splices and tunnels closed after `idle_timeout_secs` without traffic.
    pub idle_closed: AtomicU64,
    /// Client connections closed because they took no response bytes for
    /// `client_send_timeout_secs`.
    pub client_send_timeouts: AtomicU64,
    /// From a request's head to its response's head (policy, inspection of an upload,
    /// the origin's answer): what the proxy adds to a user's wait, and what the origin takes.
    pub request_seconds: Latency,
}

/// Upper bounds (seconds) of [`Latency`]'s buckets: Prometheus' defaults, from 5 ms to 10 s.
pub const LATENCY_BOUNDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of durations in fixed buckets; lock-free (a few relaxed atomics a request).
#[derive(Debug, Default)]
pub struct Latency {
    /// Per bucket, and one past the last bound (`+Inf`).
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// What a [`Latency`] holds: per-bucket counts (not cumulative) with their upper bounds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LatencySnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Latency {
    pub fn observe(&self, d: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let secs = d.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        use std::sync::atomic::Ordering::Relaxed;
        LatencySnapshot {
            buckets: LATENCY_BOUNDS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(self.buckets.iter().map(|b| b.load(Relaxed)))
                .collect(),
            sum: self.sum_micros.load(Relaxed) as f64 / 1e6,
            count: self.count.load(Relaxed),
        }
    }
}

/// State shared by all connections.
pub struct Shared {
    pub cfg: ProxyConfig,
    pub ca: Arc<CertAuthority>,
    pub upstream: UpstreamTls,
    pub pool: Pool,
    pub audit: AuditSink,
    pub policies: watch::Receiver<Arc<Policies>>,
    pub session_apps: watch::Receiver<HashSet<String>>,
    pub app_lookup: AppLookup,
    pub destination: Destination,
    pub stats: Stats,
    /// Memory for bodies under inspection, all connections together.
    pub budget: Arc<Budget>,
    /// Tests and benches whose origins listen on loopback.
    pub(crate) allow_loopback: bool,
    pub(crate) per_client: Mutex<HashMap<IpAddr, usize>>,
    /// The host's own addresses, re-read every few seconds.
    pub(crate) local: Mutex<LocalCache>,
    pub(crate) server_h2: Arc<ServerConfig>,
    pub(crate) server_h1: Arc<ServerConfig>,
    pub(crate) trust: Mutex<HashMap<(IpAddr, String), Trust>>,
    /// Users' and devices' sessions to an app refused for a time (governance actions).
    pub session_blocks: crate::governance::SessionBlocks,
}

/// What a client did with our certificate for one server name.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Trust {
    /// Last completed handshake.
    pub(crate) accepted: Option<Instant>,
    /// Handshakes that ended without a word (EOF / reset) since the last completed one.
    pub(crate) silent_drops: u8,
    /// When the client was judged to reject our CA.
    pub(crate) rejected: Option<Instant>,
}

/// How a client handshake ended badly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeEnd {
    /// The client said so (alert unknown_ca, bad_certificate, ...).
    RejectedCertificate,
    /// The client closed or reset the connection during the handshake: a rejection by a
    /// client that sends no alert, or just a client going away.
    Silent,
    Other,
}

/// When the host's addresses were read, and what they were.
type LocalCache = (Option<Instant>, Arc<Vec<ipnet::IpNet>>);

/// How long the host's own addresses are cached.
pub(crate) const LOCAL_ADDRS_TTL: Duration = Duration::from_secs(5);

/// Silent drops (without any completed handshake in between) that count as a rejection.
pub(crate) const SILENT_DROPS_TO_REJECT: u8 = 2;

#[derive(Debug)]
pub(crate) struct LeafResolver(Arc<CertAuthority>);

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        match self.0.leaf(name) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!("no leaf for {name}: {e}");
                None
            }
        }
    }
}

impl Shared {
    pub fn new(
        cfg: ProxyConfig,
        ca: Arc<CertAuthority>,
        audit: AuditSink,
        policies: watch::Receiver<Arc<Policies>>,
        session_apps: watch::Receiver<HashSet<String>>,
        app_lookup: AppLookup,
        opts: &crate::StartOptions,
    ) -> Result<Shared, crate::ProxyError> {
        let (destination, allow_loopback) = (opts.destination, opts.allow_loopback_destinations);
        let upstream = UpstreamTls::new(&cfg.upstream_ca_files, cfg.upstream_no_system_roots)?;
        tracing::info!("upstream trust anchors: {}", upstream.anchors);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ticketer = rustls::crypto::ring::Ticketer::new()?;
        let cache = rustls::server::ServerSessionMemoryCache::new(8192);
        let resolver = Arc::new(LeafResolver(ca.clone()));
        // Managed devices may prove themselves with a client certificate: asked for, never
        // required (opt-in: some browsers show a certificate picker when asked).
        let client_verifier = match &cfg.managed_devices.client_ca_file {
            None => None,
            Some(path) => {
                use rustls::pki_types::pem::PemObject;
                let bad = |m: String| crate::ProxyError::Config {
                    key: "managed_devices.client_ca_file".into(),
                    message: m,
                };
                let data = std::fs::read(path).map_err(|e| crate::ProxyError::io(path, e))?;
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls::pki_types::CertificateDer::pem_slice_iter(&data) {
                    let c = c.map_err(|e| bad(format!("{}: {e}", path.display())))?;
                    roots
                        .add(c)
                        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
                }
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| bad(format!("{}: {e}", path.display())))?;
                Some(v)
            }
        };
        let build = |alpn: Vec<Vec<u8>>| -> Result<Arc<ServerConfig>, crate::ProxyError> {
            let b = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?;
            let b = match &client_verifier {
                Some(v) => b.with_client_cert_verifier(v.clone()),
                None => b.with_no_client_auth(),
            };
            let mut c = b.with_cert_resolver(resolver.clone());
            c.alpn_protocols = alpn;
            c.ticketer = ticketer.clone();
            c.session_storage = cache.clone();
            c.send_tls13_tickets = 2;
            Ok(Arc::new(c))
        };
        let budget = Budget::new(cfg.max_buffered_bytes.0, cfg.buffered_bytes_per_client());
        Ok(Shared {
            server_h2: build(vec![b"h2".to_vec(), b"http/1.1".to_vec()])?,
            server_h1: build(vec![b"http/1.1".to_vec()])?,
            upstream,
            pool: Pool::new(cfg.max_upstream_connections_per_origin),
            cfg,
            ca,
            audit,
            policies,
            session_apps,
            app_lookup,
            destination,
            stats: Stats::default(),
            budget,
            allow_loopback,
            per_client: Mutex::new(HashMap::new()),
            local: Mutex::new((None, Arc::new(Vec::new()))),
            trust: Mutex::new(HashMap::new()),
            session_blocks: Default::default(),
        })
    }

    pub(crate) fn rejected_recently(&self, ip: IpAddr, sni: &str) -> bool {
        let sni = &normalize_name(sni);
        let ttl = Duration::from_secs(self.cfg.client_reject_bypass_secs);
        let Ok(m) = self.trust.lock() else {
            return false;
        };
        m.get(&(ip, sni.to_string()))
            .and_then(|t| t.rejected)
            .is_some_and(|at| at.elapsed() < ttl)
    }

    pub(crate) fn trust_entry(&self, ip: IpAddr, sni: &str, f: impl FnOnce(&mut Trust)) {
        let sni = &normalize_name(sni);
        let Ok(mut m) = self.trust.lock() else { return };
        if m.len() >= MAX_REJECTED && !m.contains_key(&(ip, sni.to_string())) {
            let ttl = Duration::from_secs(self.cfg.client_reject_bypass_secs);
            m.retain(|_, t| t.rejected.is_some_and(|at| at.elapsed() < ttl));
            if m.len() >= MAX_REJECTED {
                m.clear();
            }
        }
        f(m.entry((ip, sni.to_string())).or_default());
    }

    /// A client completed a handshake with our certificate.
    pub(crate) fn handshake_ok(&self, ip: IpAddr, sni: &str) {
        let sni = &normalize_name(sni);
        // Cheap path for the common case: nothing to update but the time, rarely.
        if let Ok(m) = self.trust.lock()
            && let Some(t) = m.get(&(ip, sni.clone()))
            && t.silent_drops == 0
            && t.rejected.is_none()
            && t.accepted
                .is_some_and(|a| a.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        self.trust_entry(ip, sni, |t| {
            t.accepted = Some(Instant::now());
            t.silent_drops = 0;
            t.rejected = None;
        });
    }

    /// A client handshake failed; returns true when the client is now bypassed.
    pub(crate) fn handshake_failed(&self, ip: IpAddr, sni: &str, how: HandshakeEnd) -> bool {
        let ttl = Duration::from_secs(self.cfg.client_reject_bypass_secs);
        let mut now_rejected = false;
        self.trust_entry(ip, sni, |t| {
            let trusted_before = t.accepted.is_some_and(|a| a.elapsed() < ttl);
            match how {
                HandshakeEnd::RejectedCertificate => now_rejected = true,
                // A client that accepted our certificate before and now goes away mid-handshake
                // is not rejecting it (load generators, timeouts, closed tabs).
                HandshakeEnd::Silent if !trusted_before => {
                    t.silent_drops = t.silent_drops.saturating_add(1);
                    now_rejected = t.silent_drops >= SILENT_DROPS_TO_REJECT;
                }
                _ => {}
            }
            if now_rejected {
                t.rejected = Some(Instant::now());
            }
        });
        if now_rejected {
            self.stats
                .client_rejected_ca
                .fetch_add(1, Ordering::Relaxed);
        }
        now_rejected
    }

    /// What to do with a connection to `sni` from `src`.
    pub fn intercept_decision(&self, src: IpAddr, sni: &str) -> Verdict {
        let cfg = &self.cfg;
        let name = normalize_name(sni);
        if domain_listed(&cfg.bypass_domains, &name) {
            return Verdict::Bypass("bypass_domains".into());
        }
        let Some(app) = (self.app_lookup)(&name) else {
            return Verdict::Uninspectable(format!("{name} is not an app under session control"));
        };
        if !self.session_apps.borrow().contains(&app.id) {
            return Verdict::Uninspectable(format!(
                "{name} is app {:?}, not under session control",
                app.id
            ));
        }
        if cfg.bypass_apps.contains(&app.id) {
            return Verdict::Bypass(format!("bypass_apps ({})", app.id));
        }
        if let Some(c) = &app.category
            && cfg
                .bypass_categories
                .iter()
                .any(|b| b.eq_ignore_ascii_case(c))
        {
            return Verdict::Bypass(format!("bypass_categories ({c})"));
        }
        if self.reject_bypass_allowed(&app.id, &name) && self.rejected_recently(src, &name) {
            return Verdict::RejectBypass(app);
        }
        Verdict::Intercept(app)
    }

    /// May clients of this app be spliced after rejecting our CA? Only when an admin says so.
    pub(crate) fn reject_bypass_allowed(&self, app: &str, name: &str) -> bool {
        self.cfg.client_reject_bypass_secs > 0
            && (self.cfg.client_reject_bypass_apps.iter().any(|a| a == app)
                || domain_listed(&self.cfg.client_reject_bypass_domains, name))
    }

    /// An audit record about a whole connection (no HTTP request was seen).
    pub fn audit_connection(
        &self,
        src: IpAddr,
        app: &str,
        host: &str,
        policy: &str,
        action: &str,
        reason: String,
    ) {
        self.audit.record(AuditRecord {
            time: now_rfc3339(),
            app: app.to_string(),
            user: self.user_of(src),
            src_ip: src,
            host: host.to_string(),
            method: "-".into(),
            path: "-".into(),
            stage: "tls".into(),
            policy: policy.to_string(),
            action: action.to_string(),
            reason,
            evidence: Vec::new(),
        });
    }

    /// Why the proxy must not connect to `dst`, if it must not.
    pub fn destination_refused(&self, dst: IpAddr) -> Option<String> {
        let local = {
            let Ok(mut cache) = self.local.lock() else {
                return Some("internal error (address cache)".into());
            };
            if cache.0.is_none_or(|at| at.elapsed() > LOCAL_ADDRS_TTL) {
                *cache = (Some(Instant::now()), Arc::new(local_nets()));
            }
            cache.1.clone()
        };
        refused_destination(
            dst,
            &self.cfg.protected_destinations,
            self.allow_loopback,
            |ip| local.iter().any(|n| n.contains(&ip)),
        )
    }

    /// Count a connection from `ip`; `None` when it has too many open already.
    pub(crate) fn client_slot(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let mut m = self.per_client.lock().ok()?;
        let n = m.entry(ip).or_insert(0);
        if *n >= self.cfg.max_connections_per_client.max(1) {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            shared: self.clone(),
            ip,
        })
    }

    pub(crate) fn user_of(&self, ip: IpAddr) -> Option<String> {
        self.cfg
            .users
            .iter()
            .find(|(_, nets)| nets.iter().any(|n| n.contains(&ip)))
            .map(|(u, _)| u.clone())
    }

    pub(crate) fn managed(&self, ip: IpAddr) -> bool {
        let md = &self.cfg.managed_devices;
        if md.ips.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        if md.macs.is_empty() {
            return false;
        }
        let Some(mac) = mac_of(ip) else { return false };
        md.macs.iter().any(|m| m.eq_ignore_ascii_case(&mac))
    }
}

/// What the proxy does with a connection, from its SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Decrypt and apply the app's policies.
    Intercept(AppInfo),
    /// Splice: an admin listed the name, app or category as never decrypted.
    Bypass(String),
    /// Splice: the client rejected our CA recently and the app is listed for that.
    RejectBypass(AppInfo),
    /// Cannot be inspected (the name is no app under session control): `uninspectable`.
    Uninspectable(String),
}

/// A server name as matched everywhere: lower case, no trailing dot.
pub fn normalize_name(sni: &str) -> String {
    sni.trim_end_matches('.').to_ascii_lowercase()
}

/// Is `name` one of `domains` or a subdomain of one?
pub(crate) fn domain_listed(domains: &[String], name: &str) -> bool {
    domains.iter().any(|d| {
        let d = d
            .trim_start_matches("*.")
            .trim_end_matches('.')
            .to_ascii_lowercase();
        name == d
            || name
                .strip_suffix(&d)
                .is_some_and(|rest| rest.ends_with('.'))
    })
}

/// The host's own addresses (and local ranges, and subnet broadcast addresses) as the
/// kernel's local routing table lists them (`/proc/net/fib_trie`, `/proc/net/if_inet6`, of
/// the network namespace the proxy runs in). Read from the tables rather than by trying to
/// bind, which `ip_nonlocal_bind` would make succeed for every address.
pub fn local_nets() -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
        out.extend(parse_fib_trie(&trie));
    }
    if let Ok(v6) = std::fs::read_to_string("/proc/net/if_inet6") {
        for line in v6.lines() {
            let Some(hex) = line.split_whitespace().next() else {
                continue;
            };
            if let Ok(v) = u128::from_str_radix(hex, 16) {
                let a = std::net::Ipv6Addr::from(v);
                if let Ok(n) = ipnet::Ipv6Net::new(a, 128) {
                    out.push(ipnet::IpNet::V6(n));
                }
            }
        }
    }
    out
}

/// `host LOCAL` routes and `BROADCAST` addresses of a `/proc/net/fib_trie` dump.
pub fn parse_fib_trie(text: &str) -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    let mut last: Option<std::net::Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(a) = t.strip_prefix("|-- ") {
            last = a.trim().parse().ok();
        } else if let (Some(a), Some(rest)) = (last, t.strip_prefix('/')) {
            let mut f = rest.split_whitespace();
            let len: u8 = f.next().and_then(|l| l.parse().ok()).unwrap_or(32);
            let kind = f.nth(1).unwrap_or("");
            let net = match kind {
                // A default route of type local is not an address of the host: it is the
                // steering policy route (`local 0.0.0.0/0 dev lo table ...`) that delivers
                // steered flows to the proxy, and would make every destination look local.
                "LOCAL" if len == 0 => None,
                "LOCAL" => ipnet::Ipv4Net::new(a, len.min(32)).ok(),
                "BROADCAST" => ipnet::Ipv4Net::new(a, 32).ok(),
                _ => None,
            };
            if let Some(n) = net
                && !out.contains(&ipnet::IpNet::V4(n))
            {
                out.push(ipnet::IpNet::V4(n));
            }
        }
    }
    out
}

/// Why a connection to `dst` must not be made (pure but for `is_local`): loopback (unless
/// `allow_loopback`), unspecified, multicast, link-local, broadcast, the gateway's own
/// addresses, `protected` ranges. A steered connection to such an address would let a LAN
/// client reach the gateway's own services or networks it cannot route to.
pub fn refused_destination(
    dst: IpAddr,
    protected: &[ipnet::IpNet],
    allow_loopback: bool,
    is_local: impl Fn(IpAddr) -> bool,
) -> Option<String> {
    let dst = dst.to_canonical();
    if let Some(n) = protected.iter().find(|n| n.contains(&dst)) {
        return Some(format!("{dst} is in the protected range {n}"));
    }
    let why = match dst {
        IpAddr::V4(a) if a.is_loopback() => (!allow_loopback).then_some("loopback"),
        IpAddr::V6(a) if a.is_loopback() => (!allow_loopback).then_some("loopback"),
        a if a.is_unspecified() => Some("unspecified"),
        a if a.is_multicast() => Some("multicast"),
        IpAddr::V4(a) if a.is_link_local() => Some("link-local"),
        IpAddr::V4(a) if a.is_broadcast() => Some("broadcast"),
        IpAddr::V6(a) if a.is_unicast_link_local() => Some("link-local"),
        a if is_local(a) => Some("an address of the gateway itself"),
        _ => None,
    };
    why.map(|w| format!("{dst} is {w}"))
}

/// One connection of a source address (see `max_connections_per_client`).
pub(crate) struct ClientSlot {
    pub(crate) shared: Arc<Shared>,
    pub(crate) ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.shared.per_client.lock()
            && let Some(n) = m.get_mut(&self.ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// MAC address of a neighbour from /proc/net/arp (IPv4 only).
pub(crate) fn mac_of(ip: IpAddr) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    let want = ip.to_string();
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&want.as_str()))
            .then(|| f.get(3).map(|m| m.to_string()))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_routes_and_refused_destinations() {
        let trie = "Local:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 host LOCAL\n     |-- 127.0.0.0\n        /8 host LOCAL\n     |-- 192.0.2.2\n        /32 host LOCAL\n     |-- 192.0.2.255\n        /32 link BROADCAST\n     |-- 192.0.2.0\n        /24 link UNICAST\n";
        let nets = parse_fib_trie(trie);
        let local = |ip: IpAddr| nets.iter().any(|n| n.contains(&ip));
        let refused = |s: &str, lo: bool| {
            refused_destination(
                s.parse().unwrap(),
                &["10.9.0.0/16".parse().unwrap()],
                lo,
                local,
            )
        };
        assert!(refused("192.0.2.2", false).is_some(), "own address");
        assert!(refused("192.0.2.255", false).is_some(), "subnet broadcast");
        assert!(refused("192.0.2.7", false).is_none(), "a neighbour");
        assert!(refused("127.0.0.1", false).is_some());
        assert!(
            refused("::ffff:127.0.0.1", false).is_some(),
            "v4-mapped loopback"
        );
        assert!(refused("127.0.0.1", true).is_none(), "allowed for tests");
        assert!(
            refused("169.254.169.254", false).is_some(),
            "link-local (metadata)"
        );
        assert!(refused("fe80::1", false).is_some());
        assert!(refused("224.0.0.1", false).is_some());
        assert!(refused("0.0.0.0", false).is_some());
        assert!(refused("10.9.3.4", false).unwrap().contains("protected"));
        assert!(refused("93.184.216.34", false).is_none());
    }
}
