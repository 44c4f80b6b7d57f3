//! Governance calls that activity policies ask of connectors (`connector_actions`): suspend a
//! user, revoke their sessions. A call goes through a connector that runs in this process (a
//! gateway's `run_on = "gateway"` connectors, the hub's others), with that connector's
//! settings, credentials, roots and tenant gate, so it takes turns with the connector's own
//! polling and obeys the same throttling.
//!
//! The process keeps a [`Registry`] of its running connectors; a policy's alert hands it
//! `(connector, call, user)`, and the outcome comes back on a channel for the caller's audit
//! trail. Bounds: [`MAX_PENDING`] calls waiting or in flight (more are refused at once, and the
//! refusal is an outcome like any other), [`CALL_TIMEOUT`] for each.
//!
//! Abuse: the user name comes from an activity record, so from a SaaS vendor's log or the
//! proxy's identity. It is one percent-encoded path segment ([`Connector::govern`]) and cannot
//! reach another endpoint; the policy layer refuses `suspend_user` on policies that failed
//! logins (which anyone can cause in a victim's name) could fire.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tollgate_activity::GovernanceCall;

use crate::connector::{Connector, Options};
use crate::settings::Settings;

/// Governance calls waiting or in flight at most.
pub const MAX_PENDING: usize = 64;
/// How long one call may take, retries included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// What became of one call.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub connector: String,
    pub call: GovernanceCall,
    pub user: String,
    /// The policy and alert that asked for it.
    pub policy: String,
    pub alert_id: u64,
    /// `Err` says why, in words for the audit trail.
    pub result: Result<(), String>,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {:?} through connector {:?} for alert {} of policy {:?}",
            self.call, self.user, self.connector, self.alert_id, self.policy
        )?;
        match &self.result {
            Ok(()) => f.write_str(": done"),
            Err(e) => write!(f, " failed: {e}"),
        }
    }
}

/// The connectors running in this process, by name.
#[derive(Clone)]
pub struct Registry {
    running: Arc<Mutex<HashMap<String, (Settings, Options)>>>,
    pending: Arc<Semaphore>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            running: Arc::default(),
            pending: Arc::new(Semaphore::new(MAX_PENDING)),
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Settings, Options)>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connector that runs from now on (replacing one of the same name).
    pub fn register(&self, settings: &Settings, options: &Options) {
        self.lock()
            .insert(settings.name.clone(), (settings.clone(), options.clone()));
    }

    /// No connector runs (before the set is started again).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// A connector that stopped.
    pub fn unregister(&self, name: &str) {
        self.lock().remove(name);
    }

    /// The names of the running connectors, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// Starts the call in a task; its [`Outcome`] goes to `done` (dropped if `done` is full or
    /// closed). A connector that does not run here, a full queue, a vendor without that call
    /// and every vendor failure come back as an `Err` outcome.
    pub fn spawn_call(
        &self,
        connector: &str,
        call: GovernanceCall,
        user: &str,
        policy: &str,
        alert_id: u64,
        done: mpsc::Sender<Outcome>,
    ) {
        let mut outcome = Outcome {
            connector: connector.to_string(),
            call,
            user: user.to_string(),
            policy: policy.to_string(),
            alert_id,
            result: Ok(()),
        };
        let found = self.lock().get(connector).cloned();
        let Some((settings, options)) = found else {
            outcome.result = Err(format!(
                "no connector named {connector:?} runs here (running: {})",
                self.names().join(", ")
            ));
            let _ = done.try_send(outcome);
            return;
        };
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            outcome.result = Err(format!(
                "{MAX_PENDING} governance calls are already waiting; this one was not made"
            ));
            let _ = done.try_send(outcome);
            return;
        };
        tokio::spawn(async move {
            let result = tokio::time::timeout(CALL_TIMEOUT, async {
                let mut c = Connector::new(settings, options).map_err(|e| e.to_string())?;
                c.govern(call, &outcome.user)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
            outcome.result = match result {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {} s", CALL_TIMEOUT.as_secs())),
            };
            drop(permit);
            let _ = done.send(outcome).await;
        });
    }
}
