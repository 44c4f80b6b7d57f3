//! Connection handling: accept a redirected connection, recover its original destination,
//! read the ClientHello, and either splice the raw bytes to the destination (never
//! decrypted) or intercept: verify the origin first, then complete the client handshake
//! with a leaf from our CA and serve HTTP/1.1 or HTTP/2 with the policy service.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::audit::{AuditRecord, AuditSink, now_rfc3339};
use crate::budget::Budget;
use crate::ca::CertAuthority;
use crate::config::{ProxyConfig, Uninspectable};
use crate::guard::H1Guard;
use crate::http::ConnCtx;
use crate::policy::Policies;
use crate::upstream::{Key, Pool, UpstreamFailure, UpstreamTls};
use crate::{AppInfo, AppLookup, Destination};

/// Most ClientHello bytes read before giving up on finding one (then: splice).
const MAX_HELLO_BYTES: usize = 64 * 1024;
/// Entries kept in the "client rejected our CA" memory.
const MAX_REJECTED: usize = 65_536;

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
    allow_loopback: bool,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    /// The host's own addresses, re-read every few seconds.
    local: Mutex<LocalCache>,
    server_h2: Arc<ServerConfig>,
    server_h1: Arc<ServerConfig>,
    trust: Mutex<HashMap<(IpAddr, String), Trust>>,
}

/// What a client did with our certificate for one server name.
#[derive(Debug, Default, Clone, Copy)]
struct Trust {
    /// Last completed handshake.
    accepted: Option<Instant>,
    /// Handshakes that ended without a word (EOF / reset) since the last completed one.
    silent_drops: u8,
    /// When the client was judged to reject our CA.
    rejected: Option<Instant>,
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
const LOCAL_ADDRS_TTL: Duration = Duration::from_secs(5);

/// Silent drops (without any completed handshake in between) that count as a rejection.
const SILENT_DROPS_TO_REJECT: u8 = 2;

#[derive(Debug)]
struct LeafResolver(Arc<CertAuthority>);

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
        let cfg_budget = cfg.max_buffered_bytes.0;
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
            budget: Budget::new(cfg_budget),
            allow_loopback,
            per_client: Mutex::new(HashMap::new()),
            local: Mutex::new((None, Arc::new(Vec::new()))),
            trust: Mutex::new(HashMap::new()),
        })
    }

    fn rejected_recently(&self, ip: IpAddr, sni: &str) -> bool {
        let sni = &normalize_name(sni);
        let ttl = Duration::from_secs(self.cfg.client_reject_bypass_secs);
        let Ok(m) = self.trust.lock() else {
            return false;
        };
        m.get(&(ip, sni.to_string()))
            .and_then(|t| t.rejected)
            .is_some_and(|at| at.elapsed() < ttl)
    }

    fn trust_entry(&self, ip: IpAddr, sni: &str, f: impl FnOnce(&mut Trust)) {
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
    fn handshake_ok(&self, ip: IpAddr, sni: &str) {
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
    fn handshake_failed(&self, ip: IpAddr, sni: &str, how: HandshakeEnd) -> bool {
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
    fn reject_bypass_allowed(&self, app: &str, name: &str) -> bool {
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
    fn client_slot(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
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

    fn user_of(&self, ip: IpAddr) -> Option<String> {
        self.cfg
            .users
            .iter()
            .find(|(_, nets)| nets.iter().any(|n| n.contains(&ip)))
            .map(|(u, _)| u.clone())
    }

    fn managed(&self, ip: IpAddr) -> bool {
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
fn domain_listed(domains: &[String], name: &str) -> bool {
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
struct ClientSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
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
fn mac_of(ip: IpAddr) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    let want = ip.to_string();
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&want.as_str()))
            .then(|| f.get(3).map(|m| m.to_string()))
            .flatten()
    })
}

/// The accept loop; ends when `shutdown` turns true. Connections are accepted first and
/// closed at once when over a limit, so that the kernel's accept queue (shared by every
/// steered SYN) never fills up.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(shared.cfg.max_connections.max(1)));
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            shared
                .stats
                .connection_limit_hits
                .fetch_add(1, Ordering::Relaxed);
            drop(tcp);
            continue;
        };
        // A dual-stack listener sees IPv4 clients as v4-mapped IPv6; policies match plain IPv4.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let Some(slot) = shared.client_slot(peer.ip()) else {
            shared
                .stats
                .client_limit_hits
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("{peer}: too many connections from this client");
            drop(tcp);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            handle(shared, tcp, peer).await;
            drop(slot);
            drop(permit);
        });
    }
}

/// Where was this connection going?
fn original_destination(shared: &Shared, tcp: &TcpStream) -> Option<SocketAddr> {
    let local = tcp.local_addr().ok()?;
    let dst = match shared.destination {
        Destination::Fixed(a) => return Some(a),
        Destination::Original => {
            let s = socket2::SockRef::from(tcp);
            let r = if local.is_ipv4() {
                s.original_dst_v4()
            } else {
                s.original_dst_v6()
            };
            // Not NATed: under TPROXY the local address is the original destination.
            r.ok().and_then(|a| a.as_socket()).unwrap_or(local)
        }
    };
    // A dual-stack listener sees IPv4 destinations as v4-mapped IPv6 addresses.
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    if dst.port() == shared.cfg.listen.port() && (dst == local || dst.ip().is_unspecified()) {
        // A client connected to the proxy port itself: forwarding would loop.
        return None;
    }
    Some(dst)
}

enum Hello {
    /// ClientHello parsed (rustls holds the bytes; `raw` is our copy for splicing).
    Tls {
        accepted: Box<rustls::server::Accepted>,
        raw: Vec<u8>,
    },
    /// Not TLS, or not parseable: splice what was read.
    Other { raw: Vec<u8> },
}

async fn read_hello(tcp: &mut TcpStream, timeout: Duration) -> std::io::Result<Hello> {
    let mut acceptor = Acceptor::default();
    let mut raw = Vec::with_capacity(2048);
    let mut tmp = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut tmp))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no ClientHello in time")
            })??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before ClientHello",
            ));
        }
        let chunk = tmp.get(..n).unwrap_or(&[]);
        raw.extend_from_slice(chunk);
        let mut rd: &[u8] = chunk;
        while !rd.is_empty() {
            match acceptor.read_tls(&mut rd) {
                Ok(0) | Err(_) => return Ok(Hello::Other { raw }),
                Ok(_) => {}
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                return Ok(Hello::Tls {
                    accepted: Box::new(accepted),
                    raw,
                });
            }
            Ok(None) if raw.len() < MAX_HELLO_BYTES => continue,
            Ok(None) => return Ok(Hello::Other { raw }),
            Err(_) => return Ok(Hello::Other { raw }),
        }
    }
}

async fn splice(shared: &Shared, client: TcpStream, dst: SocketAddr, raw: &[u8]) {
    shared.stats.spliced.fetch_add(1, Ordering::Relaxed);
    let timeout = Duration::from_secs(shared.cfg.upstream_connect_timeout_secs);
    let mut server = match tokio::time::timeout(timeout, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!("splice to {dst}: {e}");
            return;
        }
        Err(_) => return,
    };
    let _ = server.set_nodelay(true);
    if server.write_all(raw).await.is_err() {
        return;
    }
    let idle = Duration::from_secs(shared.cfg.idle_timeout_secs);
    if !crate::idle::copy_bidirectional_idle(client, server, idle).await {
        shared.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A per-connection secret (hex) for the framing guard's synthetic requests.
fn random_token() -> Option<String> {
    let mut b = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut b)
        .ok()?;
    Some(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Classify a failed client handshake (pure).
pub fn handshake_end(e: &std::io::Error) -> HandshakeEnd {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    ) {
        return HandshakeEnd::Silent;
    }
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied,
        )) => HandshakeEnd::RejectedCertificate,
        _ => HandshakeEnd::Other,
    }
}

/// A steered connection that will not be decrypted: spliced when an admin allowed it (bypass
/// lists, `uninspectable = "pass"`), else closed. Both are audited.
async fn not_inspected(
    shared: &Shared,
    tcp: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    raw: &[u8],
    name: &str,
    outcome: NotInspected,
) {
    let (pass, policy, app) = match &outcome {
        NotInspected::Bypass(why) => (true, why.clone(), "-".to_string()),
        NotInspected::Uninspectable(_) => (
            shared.cfg.uninspectable == Uninspectable::Pass,
            "uninspectable".to_string(),
            "-".to_string(),
        ),
    };
    let reason = match &outcome {
        NotInspected::Bypass(why) => format!("{name}: not decrypted ({why})"),
        NotInspected::Uninspectable(why) => {
            format!("connection to {dst} cannot be inspected: {why}")
        }
    };
    if pass {
        shared.stats.steered_splices.fetch_add(1, Ordering::Relaxed);
        shared.audit_connection(peer.ip(), &app, name, &policy, "splice", reason);
        splice(shared, tcp, dst, raw).await;
    } else {
        shared
            .stats
            .uninspectable_blocked
            .fetch_add(1, Ordering::Relaxed);
        shared.audit_connection(peer.ip(), &app, name, &policy, "block", reason);
        drop(tcp);
    }
}

enum NotInspected {
    Bypass(String),
    Uninspectable(String),
}

async fn handle(shared: Arc<Shared>, mut tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let Some(dst) = original_destination(&shared, &tcp) else {
        tracing::debug!("{peer}: connection to the proxy itself refused");
        return;
    };
    if let Some(why) = shared.destination_refused(dst.ip()) {
        shared
            .stats
            .refused_destinations
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!("{peer} -> {dst}: refused: {why}");
        shared.audit_connection(peer.ip(), "-", "-", "destination", "block", why);
        return;
    }
    let hs_timeout = Duration::from_secs(shared.cfg.handshake_timeout_secs);
    let hello = match read_hello(&mut tcp, hs_timeout).await {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!("{peer} -> {dst}: {e}");
            return;
        }
    };
    let (accepted, raw) = match hello {
        Hello::Other { raw } => {
            let why =
                NotInspected::Uninspectable("no TLS ClientHello that parses within 64 KiB".into());
            return not_inspected(&shared, tcp, peer, dst, &raw, "-", why).await;
        }
        Hello::Tls { accepted, raw } => (accepted, raw),
    };
    let (sni, offer_h2) = {
        let ch = accepted.client_hello();
        let sni = ch.server_name().map(str::to_string);
        let h2 = ch.alpn().is_some_and(|mut a| a.any(|p| p == b"h2"));
        (sni, h2)
    };
    let Some(sni) = sni else {
        let why = NotInspected::Uninspectable("no server name (SNI)".into());
        return not_inspected(&shared, tcp, peer, dst, &raw, "-", why).await;
    };
    let app = match shared.intercept_decision(peer.ip(), &sni) {
        Verdict::Intercept(app) => app,
        Verdict::Bypass(why) => {
            return not_inspected(
                &shared,
                tcp,
                peer,
                dst,
                &raw,
                &sni,
                NotInspected::Bypass(why),
            )
            .await;
        }
        Verdict::Uninspectable(why) => {
            let why = NotInspected::Uninspectable(why);
            return not_inspected(&shared, tcp, peer, dst, &raw, &sni, why).await;
        }
        Verdict::RejectBypass(app) => {
            shared
                .stats
                .client_reject_bypasses
                .fetch_add(1, Ordering::Relaxed);
            shared.stats.steered_splices.fetch_add(1, Ordering::Relaxed);
            shared.audit_connection(
                peer.ip(),
                &app.id,
                &sni,
                "client_reject_bypass_apps",
                "splice",
                format!(
                    "the client rejected the gateway's certificate for {sni}; not decrypted for up to {}s",
                    shared.cfg.client_reject_bypass_secs
                ),
            );
            return splice(&shared, tcp, dst, &raw).await;
        }
    };
    shared.stats.intercepted.fetch_add(1, Ordering::Relaxed);
    let key = Key {
        dst,
        name: normalize_name(&sni),
        offer_h2,
    };

    // The origin first: its certificate and its protocol decide how we answer the client.
    // An idle connection, or an origin verified moments ago, lets the handshake go ahead.
    let (first, upstream_error, h2) = if let Some(c) = shared.pool.checkout(&key).await {
        let h2 = c.is_h2();
        (Some(c), None, h2)
    } else if let Some(h2) = shared.pool.known(&key) {
        (None, None, h2)
    } else {
        let timeout = Duration::from_secs(shared.cfg.upstream_connect_timeout_secs);
        match Box::pin(shared.pool.get(&shared.upstream, &key, timeout)).await {
            Ok((c, _)) => {
                let h2 = c.is_h2();
                (Some(c), None, h2)
            }
            Err(UpstreamFailure::Connect(e)) => {
                tracing::info!("{peer} -> {dst} ({sni}): origin unreachable: {e}");
                return; // as if the origin refused: the client sees a closed connection
            }
            Err(e) => {
                shared
                    .stats
                    .upstream_cert_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!("{peer} -> {dst} ({sni}): {e}");
                (None, Some(e), false)
            }
        }
    };
    // Make sure the leaf exists before the (synchronous) resolver runs.
    if let Err(e) = shared.ca.leaf(&sni) {
        tracing::warn!("{sni}: {e}");
        return;
    }
    let cfg = if h2 {
        shared.server_h2.clone()
    } else {
        shared.server_h1.clone()
    };
    let start = tokio_rustls::StartHandshake::from_parts(*accepted, tcp);
    let tls = match tokio::time::timeout(hs_timeout, start.into_stream(cfg)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            let how = handshake_end(&e);
            if how == HandshakeEnd::RejectedCertificate || how == HandshakeEnd::Silent {
                let listed = shared.reject_bypass_allowed(&app.id, &normalize_name(&sni));
                let rejected = shared.handshake_failed(peer.ip(), &sni, how);
                if rejected {
                    let then = if listed {
                        format!(
                            "its connections to {sni} are spliced for {}s (client_reject_bypass_apps)",
                            shared.cfg.client_reject_bypass_secs
                        )
                    } else {
                        "the app stays under session control".to_string()
                    };
                    tracing::info!("{peer} rejected our certificate for {sni} ({e}); {then}");
                    shared.audit_connection(
                        peer.ip(),
                        &app.id,
                        &sni,
                        "client certificate rejection",
                        "audit",
                        format!("the client rejected the gateway's certificate ({e}); {then}"),
                    );
                    return;
                }
            }
            shared
                .stats
                .client_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("{peer} ({sni}): client handshake: {e}");
            return;
        }
        Err(_) => return,
    };
    shared.handshake_ok(peer.ip(), &sni);
    let client_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let client_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|c| !c.is_empty());
    let Some(token) = random_token() else {
        tracing::warn!("no randomness for the connection secret; closing {peer}");
        return;
    };
    let verdict: Arc<std::sync::OnceLock<&'static str>> = Arc::default();
    let activity = crate::idle::Activity::new();
    activity.touch();
    let ctx = Arc::new(ConnCtx {
        guard_token: token.clone(),
        guard_verdict: verdict.clone(),
        user: shared.user_of(peer.ip()),
        // A verified client certificate (only asked for with managed_devices.client_ca_file).
        managed: client_cert || shared.managed(peer.ip()),
        shared: shared.clone(),
        app: app.id,
        src: peer,
        sni,
        key,
        upstream_error,
        first: Mutex::new(first),
        activity: activity.clone(),
    });
    let svc = service_fn(move |req| ctx.clone().handle(req));
    let cfg = &shared.cfg;
    let idle = Duration::from_secs(cfg.idle_timeout_secs);
    // A connection with no request in flight for `idle_timeout_secs` is closed gracefully
    // (h2 keep-alive pings do not count as use).
    let res = if client_h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(60)))
            .serve_connection(TokioIo::new(tls), svc);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = activity.expired(idle) => {
                shared.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                conn.as_mut().graceful_shutdown();
                tokio::time::timeout(Duration::from_secs(5), conn).await.unwrap_or(Ok(()))
            }
        }
    } else {
        let guard = H1Guard::new(
            Linger { io: Some(tls) },
            cfg.max_header_bytes.max(8192),
            token,
            verdict,
        );
        let conn = hyper::server::conn::http1::Builder::new()
            // One TLS record (and one write) per response head + small body, not one per part.
            .writev(false)
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(cfg.header_read_timeout_secs))
            .max_buf_size(cfg.max_header_bytes.max(8192))
            .serve_connection(TokioIo::new(guard), svc)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = activity.expired(idle) => {
                shared.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                conn.as_mut().graceful_shutdown();
                tokio::time::timeout(Duration::from_secs(5), conn).await.unwrap_or(Ok(()))
            }
        }
    };
    if let Err(e) = res {
        tracing::debug!("{peer}: connection ended: {e}");
    }
}

/// Wraps the client stream of an HTTP/1.1 connection so that, when hyper drops it, the
/// remaining client bytes are read for a moment before the socket closes ("lingering
/// close", as nginx does): closing with unread bytes makes the kernel send a reset, which
/// can destroy the response the client has not read yet.
struct Linger {
    io: Option<tokio_rustls::server::TlsStream<TcpStream>>,
}

/// How long a closed HTTP/1.1 connection keeps draining the client.
const LINGER: Duration = Duration::from_secs(2);

impl Linger {
    fn io(&mut self) -> std::io::Result<&mut tokio_rustls::server::TlsStream<TcpStream>> {
        self.io
            .as_mut()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected))
    }
}

impl Drop for Linger {
    fn drop(&mut self) {
        let (Some(mut io), Ok(rt)) = (self.io.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        rt.spawn(async move {
            let _ = tokio::time::timeout(LINGER, async {
                let mut buf = [0u8; 2048];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        });
    }
}

impl tokio::io::AsyncRead for Linger {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.io() {
            Ok(io) => std::pin::Pin::new(io).poll_read(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}

impl tokio::io::AsyncWrite for Linger {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.io() {
            Ok(io) => std::pin::Pin::new(io).poll_write(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.io() {
            Ok(io) => std::pin::Pin::new(io).poll_flush(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.io() {
            Ok(io) => std::pin::Pin::new(io).poll_shutdown(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
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
