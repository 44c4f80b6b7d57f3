//! Session control in the daemon: starts the session proxy when any app has
//! `session_control = true`, and steers only those apps' flows into it. Steering is an nft
//! redirect of tcp/443 from the LAN interfaces to addresses in a set; the set is filled from
//! DNS answers (and SNIs) that name an app under session control, with the answer's TTL. The
//! proxy splices (never decrypts) any connection whose SNI turns out to belong to another app
//! that shares the address.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::watch;
use tollgate_catalog::Catalog;
use tollgate_proxy::{AppInfo, PolicySet, ProxyConfig, ProxyHandle, SessionProxy, Steering};

use crate::config::{Config, Role};

/// How long a steered address stays in the set without a fresh DNS answer or SNI.
const STEER_TIMEOUT: Duration = Duration::from_secs(3600);

/// The proxy config with the daemon's defaults filled in: the CA lives in state_dir.
pub fn proxy_config(cfg: &Config) -> ProxyConfig {
    let mut p = cfg.proxy.clone();
    if p.ca_dir == ProxyConfig::default().ca_dir {
        p.ca_dir = cfg.state_dir.join("ca");
    }
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
    steering: Steering,
    apps: HashSet<String>,
    _apps_tx: watch::Sender<HashSet<String>>,
    /// Addresses in the steering set, and when they were last added (elements time out).
    steered: HashMap<IpAddr, Instant>,
}

impl SessionControl {
    /// Starts the proxy and installs steering; `None` when no app is under session control.
    pub async fn start(cfg: &Config, catalog: Arc<Catalog>) -> Result<Option<SessionControl>> {
        let apps = session_apps(cfg);
        if apps.is_empty() {
            return Ok(None);
        }
        let pcfg = proxy_config(cfg);
        let port = pcfg.listen.port();
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
        let lan: Vec<String> = cfg
            .interfaces
            .iter()
            .filter(|i| i.role == Role::Lan)
            .map(|i| i.name.clone())
            .collect();
        let steering = Steering::install(port, &lan, STEER_TIMEOUT)
            .context("installing the nft redirect for session control")?;
        let mut ids: Vec<&String> = apps.iter().collect();
        ids.sort();
        crate::outln!(
            "  session proxy on {} for {} (steering tcp/443 from {})",
            handle.local_addr(),
            ids.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if lan.is_empty() {
                "every interface".to_string()
            } else {
                lan.join(", ")
            }
        );
        Ok(Some(SessionControl {
            handle,
            steering,
            apps,
            _apps_tx: apps_tx,
            steered: HashMap::new(),
        }))
    }

    /// A name was seen for `ip` (DNS answer or SNI): steer the address when the name is an
    /// app under session control.
    pub fn on_name(&mut self, catalog: &Catalog, name: &str, ip: IpAddr) {
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
        if let Err(e) = self.steering.add_ips(&[ip]) {
            tracing::warn!("steering {ip} ({name}) to the session proxy: {e}");
            self.steered.remove(&ip);
        } else {
            tracing::info!(app = %m.app.id, %ip, name, "steering to the session proxy");
        }
    }

    pub fn stats(&self) -> tollgate_proxy::StatsSnapshot {
        self.handle.stats()
    }

    pub async fn shutdown(mut self) {
        if let Err(e) = self.steering.remove() {
            tracing::warn!("removing the session steering: {e}");
        }
        self.handle.shutdown().await;
    }
}
