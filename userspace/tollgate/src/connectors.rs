//! App connectors the gateway runs (`[[connectors]]` with `run_on = "gateway"`): for a SaaS
//! API only this box can reach (an on-premises Okta, a tenant allow-listed to the branch's
//! address). The connector is `tollgate_connectors`' own, with this module's [`GatewayStore`].
//!
//! Where the records go, and when the cursor moves:
//! - to the core, as activities for the gateway's policies, log and sinks (a bounded channel;
//!   a full one fails the commit, so the cursor stays and the page is read again);
//! - when enrolled, up to the hub through the spool (`RecordBody::Activities`); the cursor is
//!   written only after the spool holds the records durably, and the hub stores each
//!   `(GATEWAY/CONNECTOR, vendor_id)` once, so the hub sees every event exactly once through
//!   crashes and restarts;
//! - when not enrolled, the cursor is written at once.
//!
//! Locally, the last [`RECENT_IDS`] vendor ids are kept with the cursor, so events read again
//! (an overlap re-read, a page after a restart) are not fed to the core twice. A crash between
//! the spool and the cursor file can feed the core a page again: locally at least once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tollgate_activity::Activity;
use tollgate_connectors::{
    Connector, ConnectorStatus, Options, RunOn, Settings, Store, StoreError,
};
use tollgate_sync::protocol::{ConnectorRecords, RecordBody};

use crate::hub::HubSender;

/// Vendor ids remembered per connector.
pub const RECENT_IDS: usize = 50_000;
/// Pages of records waiting for the core at most.
pub const CORE_QUEUE: usize = 64;

/// What `state_dir/connectors/NAME.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    cursor: Option<String>,
    recent: Vec<String>,
}

#[derive(Default)]
struct Recent {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Recent {
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= RECENT_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

/// The gateway's [`Store`]: the core and the spool, with the cursor in `dir`.
pub struct GatewayStore {
    dir: PathBuf,
    hub: Option<HubSender>,
    core: mpsc::Sender<Vec<Activity>>,
    recent: Mutex<HashMap<String, Recent>>,
}

impl GatewayStore {
    pub fn new(
        dir: PathBuf,
        hub: Option<HubSender>,
        core: mpsc::Sender<Vec<Activity>>,
    ) -> GatewayStore {
        GatewayStore {
            dir,
            hub,
            core,
            recent: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }
}

impl Store for GatewayStore {
    async fn load_cursor(&self, name: &str) -> Result<Option<String>, StoreError> {
        let saved: Saved = match std::fs::read(self.path(name)) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| StoreError(format!("{}: {e}", self.path(name).display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(StoreError(format!("{}: {e}", self.path(name).display()))),
        };
        if let Ok(mut r) = self.recent.lock() {
            let recent = r.entry(name.to_string()).or_default();
            for id in &saved.recent {
                recent.insert(id);
            }
        }
        Ok(saved.cursor)
    }

    async fn commit(
        &self,
        name: &str,
        records: &[Activity],
        cursor: &str,
    ) -> Result<usize, StoreError> {
        let (fresh, recent) = {
            let mut r = self
                .recent
                .lock()
                .map_err(|_| StoreError("poisoned".into()))?;
            let recent = r.entry(name.to_string()).or_default();
            let fresh: Vec<Activity> = records
                .iter()
                .filter(|a| a.vendor_id.as_deref().is_some_and(|id| recent.insert(id)))
                .cloned()
                .collect();
            (fresh, recent.order.iter().cloned().collect::<Vec<_>>())
        };
        if !fresh.is_empty() && self.core.try_send(fresh.clone()).is_err() {
            // Not handed on: forget them, so the page read again counts them.
            if let Ok(mut r) = self.recent.lock()
                && let Some(recent) = r.get_mut(name)
            {
                for a in &fresh {
                    if let Some(id) = &a.vendor_id {
                        recent.set.remove(id);
                    }
                }
                recent.order.retain(|id| recent.set.contains(id));
            }
            return Err(StoreError("the core's queue is full".into()));
        }
        let saved = serde_json::to_vec(&Saved {
            cursor: Some(cursor.to_string()),
            recent,
        })
        .map_err(|e| StoreError(e.to_string()))?;
        std::fs::create_dir_all(&self.dir).map_err(|e| StoreError(e.to_string()))?;
        match &self.hub {
            Some(hub) => {
                let body = RecordBody::Activities(ConnectorRecords {
                    connector: name.to_string(),
                    records: fresh
                        .iter()
                        .filter_map(|a| serde_json::to_string(a).ok())
                        .collect(),
                });
                if !hub.send_then(body, (self.path(name), saved)) {
                    return Err(StoreError("the hub's spool queue is full".into()));
                }
            }
            None => crate::hub::write_private(&self.path(name), &saved)
                .map_err(|e| StoreError(format!("{e:#}")))?,
        }
        Ok(fresh.len())
    }
}

/// The running connectors' statuses, for `tollgate status --json`.
pub type Statuses = Arc<Mutex<HashMap<String, ConnectorStatus>>>;

/// The channel the connectors hand their records to the core through.
pub fn channel() -> (mpsc::Sender<Vec<Activity>>, mpsc::Receiver<Vec<Activity>>) {
    mpsc::channel(CORE_QUEUE)
}

/// Starts the `run_on = "gateway"` connectors of `configs`; each task runs until it is
/// aborted (a reload that changes the connectors starts them again) or the daemon stops.
pub fn start(
    configs: &[tollgate_connectors::ConnectorConfig],
    state_dir: &std::path::Path,
    hub: Option<HubSender>,
    tx: mpsc::Sender<Vec<Activity>>,
    registry: &tollgate_connectors::Registry,
) -> (Statuses, Vec<tokio::task::JoinHandle<()>>) {
    registry.clear();
    let statuses: Statuses = Arc::default();
    let store = Arc::new(GatewayStore::new(state_dir.join("connectors"), hub, tx));
    let gates = tollgate_connectors::TenantGates::default();
    let mut tasks = Vec::new();
    for c in configs {
        let settings = match Settings::from_config(c) {
            Ok(s) if s.run_on == RunOn::Gateway => s,
            Ok(_) => continue,
            Err(e) => {
                // The config was checked at load; a bundle's too. Said, not fatal.
                tracing::error!("connector {:?} not started: {e}", c.name);
                continue;
            }
        };
        let options = Options {
            gates: gates.clone(),
            ..Options::default()
        };
        registry.register(&settings, &options);
        let store = store.clone();
        let statuses = statuses.clone();
        tasks.push(tokio::spawn(run(settings, options, store, statuses)));
    }
    (statuses, tasks)
}

async fn run(s: Settings, options: Options, store: Arc<GatewayStore>, statuses: Statuses) {
    let name = s.name.clone();
    let mut c = loop {
        match Connector::new(s.clone(), options.clone()) {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(connector = %name, "connector cannot start: {e}; retrying in 30 s");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    };
    tracing::info!(connector = %name, kind = %s.kind, "connector started on the gateway");
    loop {
        let result = c.poll(store.as_ref()).await;
        if let Ok(mut st) = statuses.lock() {
            st.insert(name.clone(), c.status().clone());
        }
        let mut wait = s.poll_interval.max(c.circuit_wait());
        match &result {
            Ok(report) if !report.caught_up => wait = Duration::ZERO,
            Ok(_) => {}
            Err(e) => tracing::warn!(connector = %name, "connector poll: {e}"),
        }
        tokio::time::sleep(wait).await;
    }
}
