//! Session control in the daemon: starts the session proxy when any app has
//! `session_control = true`, and steers only those apps' flows into it, in the kernel: the
//! LAN ingress program assigns each new tcp/443 flow toward a steered address to the proxy's
//! (IP_TRANSPARENT) listener with `bpf_sk_assign` and marks its packets with
//! [`abi::STEER_MARK`]; a policy route ([`PolicyRoute`]) delivers marked packets locally.
//! QUIC toward a steered address gets an ICMP unreachable, so browsers fall back to TCP.
//! Clients need no proxy settings; every other flow is forwarded untouched, never decrypted.
//!
//! Steered addresses come from DNS answers (and SNIs) that name an app under session control
//! and expire after [`STEER_TIMEOUT`] without a fresh answer. The decision is made per flow at
//! its SYN, so adding or removing an address never breaks a connection already running. The
//! proxy splices (never decrypts) any connection whose SNI turns out to belong to another app
//! that shares the address.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::watch;
use tollgate_catalog::Catalog;
use tollgate_dataplane::{Dataplane, ListenerFamilies, PolicyRoute, abi};
use tollgate_proxy::{AppInfo, PolicySet, ProxyConfig, ProxyHandle, SessionProxy};

use crate::config::Config;

/// How long a steered address stays steered without a fresh DNS answer or SNI.
pub const STEER_TIMEOUT: Duration = Duration::from_secs(3600);

/// The proxy config with the daemon's defaults filled in: the CA lives in state_dir, and the
/// listener is IP_TRANSPARENT (kernel steering hands it connections to the origins' addresses).
pub fn proxy_config(cfg: &Config) -> ProxyConfig {
    let mut p = cfg.proxy.clone();
    if p.ca_dir == ProxyConfig::default().ca_dir {
        p.ca_dir = cfg.state_dir.join("ca");
    }
    p.tproxy = true;
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
    /// Addresses in the kernel's steer tries, and when they were last written (entries
    /// expire after [`STEER_TIMEOUT`]).
    steered: HashMap<IpAddr, Instant>,
}

impl SessionControl {
    /// Starts the proxy and the kernel steering; `None` when no app is under session control.
    pub async fn start(
        cfg: &Config,
        catalog: Arc<Catalog>,
        dp: &mut Dataplane,
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
        let lookup_catalog = catalog.clone();
        let lookup: tollgate_proxy::AppLookup = Arc::new(move |name: &str| {
            lookup_catalog.classify_name(name).map(|m| AppInfo {
                id: m.app.id.clone(),
                category: Some(m.app.category.clone()),
            })
        });
        let (apps_tx, apps_rx) = watch::channel(apps.clone());
        let handle = SessionProxy::start(pcfg, &policies, lookup, apps_rx)
            .await
            .context("starting the session proxy")?;
        let route = PolicyRoute::install().context("installing the steering policy route")?;
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
            steered: HashMap::new(),
        }))
    }

    /// A name was seen for `ip` (DNS answer or SNI): steer the address when the name is an
    /// app under session control.
    pub fn on_name(&mut self, dp: &mut Dataplane, catalog: &Catalog, name: &str, ip: IpAddr) {
        let Some(m) = catalog.classify_name(name) else {
            return;
        };
        if !self.apps.contains(&m.app.id) {
            return;
        }
        let fresh = self
            .steered
            .get(&ip)
            .is_some_and(|t| t.elapsed() < STEER_TIMEOUT / 2);
        if fresh {
            return;
        }
        self.steered.insert(ip, Instant::now());
        let full = if ip.is_ipv4() { 32 } else { 128 };
        if let Err(e) = dp.steering().add(ip, full, 0, Some(STEER_TIMEOUT)) {
            tracing::warn!("steering {ip} ({name}) to the session proxy: {e}");
            self.steered.remove(&ip);
        } else {
            tracing::info!(app = %m.app.id, %ip, name, "steering to the session proxy");
        }
    }

    pub fn stats(&self) -> tollgate_proxy::StatsSnapshot {
        self.handle.stats()
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

    /// Forgets expired steered addresses (the kernel already ignores them).
    pub fn housekeeping(&mut self, dp: &mut Dataplane) {
        self.steered.retain(|_, t| t.elapsed() < STEER_TIMEOUT);
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
