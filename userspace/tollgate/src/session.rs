//! Session control in the daemon: starts the session proxy when any app has
//! `session_control = true`, and steers only those apps' flows into it, in the kernel: the
//! LAN ingress program assigns each new tcp/443 flow toward a steered address to the proxy's
//! (IP_TRANSPARENT) listener with `bpf_sk_assign` and marks its packets with
//! [`abi::STEER_MARK`]; a policy route ([`PolicyRoute`]) delivers marked packets locally.
//! QUIC toward a steered address gets an ICMP unreachable, so browsers fall back to TCP.
//! Clients need no proxy settings; every other flow is forwarded untouched, never decrypted.
//!
//! Who steers what:
//! - **For everyone**: only addresses from DNS answers that name an app under session
//!   control, and never a protected address ([`ProtectedAddrs`]: loopback, unspecified,
//!   link-local, multicast, broadcast, private unless allowed, `never_block` CIDRs and the
//!   gateway's own addresses).
//!   Each client (the user the answer went to) may add at most [`MAX_STEER_ADDS`] new
//!   addresses per [`STEER_ADD_WINDOW`]. Entries expire after `[enforcement]
//!   steer_timeout_secs` without a fresh answer; the kernel keeps applying expired ones while
//!   the daemon is gone and `fail_open = false`. Such answers are held in the kernel until the
//!   steer entries are written ([`SessionControl::release_held`]), so the first SYN after an
//!   answer is already steered.
//! - **For one client**: a flow whose own first flight names the app (ClientHello SNI, QUIC
//!   Initial) toward an address nobody steered (DoH, a cached or hard-coded address) is refused
//!   and only that client's later flows to that address are steered (the probes do it for TLS
//!   in the kernel; the daemon for QUIC, which it decrypts). A client naming an app toward any
//!   address it likes thus steers nobody else's traffic; the proxy only ever connects to the
//!   original destination and verifies its certificate, so a lying client only hurts itself.
//!
//! The decision is made per flow at its SYN, so adding or removing an address never breaks a
//! connection already running. The proxy splices (never decrypts) any connection whose SNI
//! turns out to belong to another app that shares the address.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::watch;
use tollgate_catalog::{Catalog, Match};
use tollgate_dataplane::{Dataplane, ListenerFamilies, PayloadEvent, PolicyRoute, abi};
use tollgate_policy::ProtectedAddrs;
use tollgate_proxy::{AppInfo, PolicySet, ProxyConfig, ProxyHandle, SessionProxy};

use crate::config::Config;

/// New addresses one client may have steered for everyone within [`STEER_ADD_WINDOW`]: a
/// client with a DNS server of its own cannot fill the steer tries (65,536 entries) for
/// everyone. Hits are counted in `dns_steer_capped`.
pub const MAX_STEER_ADDS: u32 = 256;
/// The window of [`MAX_STEER_ADDS`].
pub const STEER_ADD_WINDOW: Duration = Duration::from_secs(60);
/// Clients whose additions are tracked at once; beyond it a new client's additions are
/// refused (and counted) until the window of the others passes.
const MAX_TRACKED_SOURCES: usize = 65_536;
/// How often the gateway's own addresses are read again.
const OWN_ADDRS_REFRESH: Duration = Duration::from_secs(30);

/// What session control decided, for `tollgate status --json` (`session`).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct SteerCounts {
    /// Addresses from DNS answers newly steered for everyone.
    pub dns_steered: u64,
    /// Addresses from DNS answers not steered because they are protected (loopback,
    /// link-local, multicast, private, `never_block`, the gateway's own, ...).
    pub dns_steer_refused: u64,
    /// New addresses from DNS answers not steered because their client hit
    /// [`MAX_STEER_ADDS`].
    pub dns_steer_capped: u64,
    /// Steer-trie writes that failed (a full trie).
    pub steer_errors: u64,
    /// QUIC flows naming an app under session control toward an address not steered:
    /// refused (in every mode) so that the browser falls back to TCP.
    pub quic_refused: u64,
    /// Held DNS answers sent on to their user after steering.
    pub dns_released: u64,
    /// Held DNS answers that could not be sent on.
    pub dns_release_errors: u64,
}

/// The addresses of this host's interfaces (in the daemon's network namespace).
pub fn own_addresses() -> HashSet<IpAddr> {
    let mut out = HashSet::new();
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => {
            for a in addrs {
                let Some(sa) = a.address else { continue };
                if let Some(v4) = sa.as_sockaddr_in() {
                    out.insert(IpAddr::V4(v4.ip()));
                } else if let Some(v6) = sa.as_sockaddr_in6() {
                    out.insert(IpAddr::V6(v6.ip()));
                }
            }
        }
        Err(e) => tracing::warn!("reading the gateway's own addresses: {e}"),
    }
    out
}

/// The proxy config with the daemon's defaults filled in: the CA lives in state_dir, and the
/// listener is IP_TRANSPARENT (kernel steering hands it connections to the origins' addresses).
pub fn proxy_config(cfg: &Config) -> ProxyConfig {
    let mut p = cfg.proxy.clone();
    if p.ca_dir == ProxyConfig::default().ca_dir {
        p.ca_dir = cfg.state_dir.join("ca");
    }
    p.tproxy = true;
    // What DNS answers may never block or steer, the proxy may never connect to either.
    p.protected_destinations
        .extend(cfg.enforcement.never_block.iter().copied());
    p
}

/// The app ids under session control.
pub fn session_apps(cfg: &Config) -> HashSet<String> {
    cfg.apps
        .iter()
        .filter(|(_, s)| s.session_control)
        .map(|(id, _)| id.clone())
        .collect()
}

pub struct SessionControl {
    handle: ProxyHandle,
    route: PolicyRoute,
    apps: HashSet<String>,
    apps_tx: watch::Sender<HashSet<String>>,
    /// The catalog the proxy names apps by; replaced when a reload or bundle changes it.
    catalog_tx: watch::Sender<Arc<Catalog>>,
    /// Addresses in the kernel's steer tries, and when they were last written (entries
    /// expire after `timeout`).
    steered: HashMap<IpAddr, Instant>,
    /// How long an address stays steered without a fresh answer.
    timeout: Duration,
    /// New addresses per client in the current window: window start, count.
    adds: HashMap<IpAddr, (Instant, u32)>,
    /// Addresses never steered (with the gateway's own), and when its own were read.
    protected: ProtectedAddrs,
    own_read: Instant,
    pub counts: SteerCounts,
}

impl SessionControl {
    /// A governance block: the proxy refuses `actor`'s sessions to `app` for `dur`.
    pub fn block_sessions(
        &self,
        actor: tollgate_proxy::governance::Actor,
        app: &str,
        dur: Duration,
        policy: &str,
    ) -> bool {
        self.handle.block_sessions(actor, app, dur, policy)
    }

    /// Starts the proxy and the kernel steering; `None` when no app is under session control.
    /// `audit_tap` receives a copy of each of the proxy's audit records (the daemon's
    /// activity source).
    pub async fn start(
        cfg: &Config,
        catalog: Arc<Catalog>,
        dp: &mut Dataplane,
        audit_tap: Option<tokio::sync::mpsc::Sender<tollgate_proxy::audit::AuditRecord>>,
    ) -> Result<Option<SessionControl>> {
        let apps = session_apps(cfg);
        if apps.is_empty() {
            return Ok(None);
        }
        let pcfg = proxy_config(cfg);
        let policies = PolicySet {
            session_policies: cfg.session_policies.clone(),
            access_policies: cfg.access_policies.clone(),
        };
        let (catalog_tx, catalog_rx) = watch::channel(catalog);
        let lookup: tollgate_proxy::AppLookup = Arc::new(move |name: &str| {
            catalog_rx.borrow().classify_name(name).map(|m| AppInfo {
                id: m.app.id.clone(),
                category: Some(m.app.category.clone()),
            })
        });
        let (apps_tx, apps_rx) = watch::channel(apps.clone());
        let opts = tollgate_proxy::StartOptions {
            audit_tap,
            ..Default::default()
        };
        let handle = SessionProxy::start_with(pcfg, &policies, lookup, apps_rx, opts)
            .await
            .context("starting the session proxy")?;
        let route = PolicyRoute::install().context("installing the steering policy route")?;
        dp.verdicts()
            .set_session_control(true)
            .context("turning on session control in the kernel")?;
        let mut families =
            ListenerFamilies::of(handle.listener()).context("reading the proxy's listener")?;
        families.v6 &= route.ipv6();
        dp.steering()
            .set_proxy_listener(handle.listener(), families)
            .context("giving the proxy's listener to the kernel")?;
        let mut ids: Vec<&String> = apps.iter().collect();
        ids.sort();
        let fams = match (families.v4, families.v6) {
            (true, true) => "IPv4 and IPv6",
            (true, false) => "IPv4 only",
            (false, true) => "IPv6 only",
            (false, false) => "no family",
        };
        crate::outln!(
            "  session proxy on {} for {} (kernel steering of tcp/{} from the LAN interfaces, {fams}; fwmark {:#x} -> table {})",
            handle.local_addr(),
            ids.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            abi::STEER_TCP_PORT,
            abi::STEER_MARK,
            abi::STEER_ROUTE_TABLE,
        );
        Ok(Some(SessionControl {
            handle,
            route,
            apps,
            apps_tx,
            catalog_tx,
            steered: HashMap::new(),
            timeout: Duration::from_secs(cfg.enforcement.steer_timeout_secs.max(1)),
            adds: HashMap::new(),
            protected: {
                let mut p = ProtectedAddrs::new(Vec::new(), false);
                p.set_own(own_addresses());
                p
            },
            own_read: Instant::now(),
            counts: SteerCounts::default(),
        }))
    }

    /// The addresses never steered for everyone (the daemon's configured filter: `never_block`
    /// CIDRs, private learning); the gateway's own addresses are kept up to date here.
    pub fn set_protected(&mut self, protected: ProtectedAddrs) {
        self.protected = protected;
        self.protected.set_own(own_addresses());
        self.own_read = Instant::now();
    }

    /// A new catalog for the proxy's naming of apps (its next lookups use it).
    pub fn set_catalog(&self, catalog: Arc<Catalog>) {
        self.catalog_tx.send_replace(catalog);
    }

    /// The app under session control that `name` belongs to, if any.
    pub fn app_of<'c>(&self, catalog: &'c Catalog, name: &str) -> Option<&'c str> {
        self.app_of_match(catalog.classify_name(name).as_ref())
    }

    /// The app under session control of a classified name, if any.
    fn app_of_match<'c>(&self, classified: Option<&Match<'c>>) -> Option<&'c str> {
        let app = classified?.app;
        self.apps.contains(&app.id).then_some(app.id.as_str())
    }

    /// A DNS answer for `user` mapped `name` to `ip`: steer the address for everyone when the
    /// name is an app's under session control, the address can be an origin, and the user has
    /// not used up its additions.
    pub fn on_dns_answer(
        &mut self,
        dp: &mut Dataplane,
        catalog: &Catalog,
        name: &str,
        ip: IpAddr,
        user: IpAddr,
    ) {
        let Some(app) = self.app_of(catalog, name) else {
            return;
        };
        // An answer toward the gateway itself (its own lookups, or one seen on a WAN hook
        // before NAT is undone): the client's copy, seen on the LAN side, steers.
        if self.protected.own().any(|a| *a == user) {
            return;
        }
        if let Err(why) = self.protected.check(ip) {
            self.counts.dns_steer_refused += 1;
            tracing::info!(app, %ip, name, %user, why = why.label(), "not steering a protected address");
            return;
        }
        let known = self.steered.get(&ip).copied();
        if known.is_some_and(|t| t.elapsed() < self.timeout / 2) {
            return;
        }
        if known.is_none() && !self.may_add(user) {
            self.counts.dns_steer_capped += 1;
            tracing::warn!(app, %ip, name, %user, "steer additions of this client capped");
            return;
        }
        let full = if ip.is_ipv4() { 32 } else { 128 };
        if let Err(e) = dp.steering().add(ip, full, 0, Some(self.timeout)) {
            self.counts.steer_errors += 1;
            tracing::warn!("steering {ip} ({name}) to the session proxy: {e}");
            return;
        }
        self.steered.insert(ip, Instant::now());
        if known.is_none() {
            self.counts.dns_steered += 1;
            tracing::info!(app, %ip, name, "steering to the session proxy");
        }
    }

    /// Counts one new address against `user`'s window; `false` when it is used up.
    fn may_add(&mut self, user: IpAddr) -> bool {
        let now = Instant::now();
        if !self.adds.contains_key(&user) && self.adds.len() >= MAX_TRACKED_SOURCES {
            self.adds
                .retain(|_, (start, _)| now.duration_since(*start) < STEER_ADD_WINDOW);
            if self.adds.len() >= MAX_TRACKED_SOURCES {
                return false;
            }
        }
        let (start, n) = self.adds.entry(user).or_insert((now, 0));
        if now.duration_since(*start) >= STEER_ADD_WINDOW {
            *start = now;
            *n = 0;
        }
        if *n >= MAX_STEER_ADDS {
            return false;
        }
        *n += 1;
        true
    }

    /// A QUIC flow whose Initial names an app (`classified`): the app when it is one under
    /// session control, so the caller refuses the flow (the browser falls back to TCP, where
    /// the probes handle the hello). Nothing is steered: an Initial proves nothing about the
    /// address it was sent to. (Initials toward addresses DNS steered never get here: the
    /// probes refuse them.)
    pub fn on_quic_name<'c>(&mut self, classified: Option<&Match<'c>>) -> Option<&'c str> {
        let app = self.app_of_match(classified)?;
        self.counts.quic_refused += 1;
        Some(app)
    }

    /// Sends a DNS answer the kernel held on to its user (call it after the answer's
    /// addresses were steered).
    pub fn release_held(&mut self, ev: &PayloadEvent) {
        match tollgate_dataplane::send_held_dns(ev) {
            Ok(()) => self.counts.dns_released += 1,
            Err(e) => {
                self.counts.dns_release_errors += 1;
                tracing::warn!("sending a held DNS answer to {}: {e}", ev.flow.user_ip);
            }
        }
    }

    pub fn stats(&self) -> tollgate_proxy::StatsSnapshot {
        self.handle.stats()
    }

    /// The proxy's counters, with its request latency histogram as `request_seconds`.
    pub fn stats_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.handle.stats()).unwrap_or_default();
        v["request_seconds"] =
            serde_json::to_value(self.handle.request_seconds()).unwrap_or_default();
        v
    }

    /// A reloaded config: new session and access policies, and the apps under session control
    /// (an app taken out is spliced from its next connection; one added is steered from its
    /// next DNS answer). Nothing changes when the policies do not compile.
    pub fn reload(&mut self, cfg: &Config) -> Result<()> {
        self.handle
            .update_policies(&PolicySet {
                session_policies: cfg.session_policies.clone(),
                access_policies: cfg.access_policies.clone(),
            })
            .context("the new policies")?;
        let apps = session_apps(cfg);
        if apps != self.apps {
            self.apps = apps.clone();
            self.apps_tx.send_replace(apps);
        }
        Ok(())
    }

    /// Forgets expired steered addresses (the kernel already ignores them) and additions
    /// windows past, and reads the gateway's own addresses again now and then.
    pub fn housekeeping(&mut self, dp: &mut Dataplane) {
        let timeout = self.timeout;
        self.steered.retain(|_, t| t.elapsed() < timeout);
        self.adds
            .retain(|_, (start, _)| start.elapsed() < STEER_ADD_WINDOW);
        if self.own_read.elapsed() >= OWN_ADDRS_REFRESH {
            self.protected.set_own(own_addresses());
            self.own_read = Instant::now();
        }
        if let Err(e) = dp.steering().expire() {
            tracing::warn!("expiring steered addresses: {e}");
        }
    }

    /// Stops steering new flows (the listener leaves the sockmap, the policy route goes) and
    /// stops the proxy. The steered addresses stay in the pinned tries for the next run.
    pub async fn shutdown(mut self, dp: &mut Dataplane) {
        if let Err(e) = dp.steering().clear_proxy_listener() {
            tracing::warn!("removing the proxy's listener from the kernel: {e}");
        }
        self.route.remove();
        self.handle.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_knows_its_own_addresses() {
        // Every host has a loopback interface (and steering never takes it anyway).
        assert!(own_addresses().iter().any(|a| a.is_loopback()));
    }
}
