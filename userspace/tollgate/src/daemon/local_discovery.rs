//! Discovery on the box itself, every `[discovery] interval_secs`: each interval's use per
//! user and app becomes an `app_used` activity (source `discovery`) for the activity policies,
//! the activity log and the sinks, and is counted into the day that
//! `[[app_discovery_policies]]` judge. A policy that fires raises an alert and may tag the
//! app: `unsanctioned` blocks it in the kernel at once, as `tollgate app tag` does, and the
//! change is an audit record like any other.
//!
//! This meter is the box's own, apart from the hub's (which runs at the hub's upload interval
//! and only while enrolled). Its state and the day's counts are written together
//! ([`LOCAL_DISCOVERY_FILE`]) after each interval, so a restart neither reports a flow still
//! in the kernel's map twice nor forgets the day.

use std::net::IpAddr;
use std::path::Path;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tollgate_activity::anomaly::AppStanding;
use tollgate_activity::discovery_policy::{AppFacts, DiscoveryState};
use tollgate_activity::{Activity, ActivityType, AppDiscovery, DiscoveredUse, Outcome, Source};
use tollgate_discovery::interval::{IntervalMeter, MeterCheckpoint};

use super::Core;

/// The local meter and the app discovery day, in `state_dir`.
pub const LOCAL_DISCOVERY_FILE: &str = "discovery-local.bin";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    meter: MeterCheckpoint,
    policies: DiscoveryState,
}

/// The meter and the evaluator of the last run; fresh ones when the file is missing or
/// unreadable (said so: the day's counts then start again).
pub fn load(state_dir: &Path, cfg: &crate::config::Config) -> (IntervalMeter, AppDiscovery) {
    let path = state_dir.join(LOCAL_DISCOVERY_FILE);
    let saved = match std::fs::read(&path) {
        Ok(bytes) => postcard::from_bytes::<Saved>(&bytes).unwrap_or_else(|e| {
            tracing::warn!(
                "{}: {e}; local discovery counts start again",
                path.display()
            );
            Saved::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
        Err(e) => {
            tracing::warn!(
                "{}: {e}; local discovery counts start again",
                path.display()
            );
            Saved::default()
        }
    };
    let meter = if saved.meter.start == 0 {
        IntervalMeter::new(Utc::now())
    } else {
        IntervalMeter::restore(saved.meter)
    };
    (
        meter,
        AppDiscovery::new(&cfg.app_discovery_policies, saved.policies),
    )
}

impl Core {
    /// Ends a local discovery interval: activities out, the day counted, policies judged, the
    /// state written.
    pub(super) fn local_discovery_interval(&mut self) {
        let now = Utc::now();
        let usage = self
            .local_meter
            .take(self.flows.records(), now, &self.catalog, &self.users);
        let catalog = self.catalog.clone();
        let tags = &self.tags;
        let facts = |id: &str| {
            let app = catalog.app(id)?;
            Some(AppFacts {
                name: app.name.clone(),
                category: app.category.clone(),
                risk_score: catalog.risk_score(id),
                tag: tags.tag(&catalog, id).map(|(t, _)| t.to_string()),
            })
        };
        for row in &usage.apps {
            let ip = row.device.parse::<IpAddr>().ok();
            self.app_discovery.observe(&DiscoveredUse {
                time: usage.end,
                app: &row.app_id,
                user: &row.user,
                ip,
                bytes_up: row.bytes_up,
                bytes_down: row.bytes_down,
                transactions: row.flows,
            });
            if let Some(al) = &mut self.alerting {
                // The anomaly detections about unsanctioned and risky apps judge with these.
                if let Some(f) = facts(&row.app_id) {
                    al.set_app_standing(
                        &row.app_id,
                        AppStanding {
                            risk_score: f.risk_score,
                            unsanctioned: f.tag.as_deref() == Some("unsanctioned"),
                        },
                    );
                }
                let mut a = Activity::new(
                    0,
                    usage.end,
                    row.app_id.clone(),
                    ActivityType::AppUsed,
                    Source::Discovery,
                );
                a.user = (row.user != row.device).then(|| row.user.clone());
                a.ip = ip;
                a.device = ip.is_none().then(|| row.device.clone());
                a.bytes = Some(row.bytes_up.saturating_add(row.bytes_down));
                a.bytes_up = Some(row.bytes_up);
                if row.flows > 0 && row.blocked_flows == row.flows {
                    a.result = Outcome::Blocked;
                }
                al.observe_new(a);
            }
        }
        let findings = match &mut self.alerting {
            Some(al) => al.judge_discovery(&mut self.app_discovery, now, &facts),
            // Alerts could not start: the policies' actions still hold.
            None => self.app_discovery.evaluate(
                now,
                &facts,
                &mut tollgate_activity::AlertBook::default(),
                None,
            ),
        };
        for f in findings {
            let Some(tag) = f.tag else { continue };
            let by = format!("app discovery policy {:?}", f.policy);
            let resp = self.set_tag_by(&f.app, &tag, &by);
            if !resp.ok {
                tracing::warn!(
                    app = %f.app,
                    policy = %f.policy,
                    "the policy's tag was not set: {}",
                    resp.error.as_deref().unwrap_or("?")
                );
            }
        }
        self.save_local_discovery();
    }

    /// Writes the meter and the day together, when the day changed.
    fn save_local_discovery(&mut self) {
        let Some(policies) = self.app_discovery.take_changed() else {
            return;
        };
        let saved = SavedRef {
            meter: &self.local_meter.checkpoint(),
            policies,
        };
        let path = self.cfg.state_dir.join(LOCAL_DISCOVERY_FILE);
        match postcard::to_allocvec(&saved) {
            Ok(body) => {
                if let Err(e) = crate::hub::write_private(&path, &body) {
                    tracing::warn!("{e:#}");
                }
            }
            Err(e) => tracing::warn!("encoding {}: {e}", path.display()),
        }
    }
}

/// [`Saved`] by reference, for writing.
#[derive(Serialize)]
struct SavedRef<'a> {
    meter: &'a MeterCheckpoint,
    policies: &'a DiscoveryState,
}
