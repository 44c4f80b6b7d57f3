//! Timer work: the kernel's flow counters read into the flow table in steps, idle flows
//! retired into the discovery history, the fail-open heartbeat, learned-address expiry and
//! persistence.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::mpsc;
use tollgate_dataplane::{FlowWalk, PayloadEvent};
use tollgate_discovery::flow_table;
use tollgate_sync::protocol::{AppUsage, AuditEvent, DiscoveryInterval, DomainUsage, RecordBody};

use super::{Core, EVENT_BATCH, LEARNED_IPS_FILE, WALK_STEP, save_learned};

impl Core {
    /// Heartbeat for the kernel's fail-open rule and expiry of learned addresses (persisted
    /// by [`Core::save_learned`] after it).
    pub(super) fn housekeeping(&mut self) {
        if let Err(e) = self.dp.verdicts().heartbeat() {
            tracing::warn!("heartbeat: {e}");
        }
        self.enforcer.expire(&mut self.dp);
        if let Some(s) = &mut self.session {
            s.housekeeping(&mut self.dp);
        }
        // Flows re-check verdicts (and so their TTLs) only when the generation changes.
        if self.enforcer.learned_len() > 0
            && let Err(e) = self.dp.verdicts().commit()
        {
            tracing::warn!("committing verdicts: {e}");
        }
        let keep = TimeDelta::hours(i64::from(self.cfg.discovery.history_hours));
        self.history.forget_hours_before(Utc::now() - keep);
    }

    /// Persists the learned addresses when the set (or an expiry, to the minute) changed.
    pub(super) fn save_learned(&mut self) {
        let learned = self.enforcer.learned_records();
        let mut seen = learned.clone();
        for r in &mut seen {
            r.expires /= 60;
        }
        if self.learned_saved.as_ref() != Some(&seen) {
            match save_learned(&self.cfg.state_dir, &learned) {
                Ok(()) => self.learned_saved = Some(seen),
                Err(e) => tracing::warn!("saving {LEARNED_IPS_FILE}: {e}"),
            }
        }
    }

    /// Reads the next step of a walk of the kernel's flow counters into the flow table.
    fn poll_step(&mut self, walk: &mut FlowWalk) {
        let Core {
            dp, flows, retired, ..
        } = self;
        let result = dp.walk_flow_counters(walk, WALK_STEP, |c| {
            let key = c.flow;
            let last_seen: DateTime<Utc> = c.last_seen.into();
            if let Some(seen) = retired.get(&key) {
                if *seen >= last_seen {
                    return;
                }
                // The same 5-tuple came back to life: a new flow.
                retired.remove(&key);
            }
            flows.update_counters(
                key,
                flow_table::Counters {
                    packets_up: c.packets_up,
                    packets_down: c.packets_down,
                    bytes_up: c.bytes_up,
                    bytes_down: c.bytes_down,
                    first_seen: c.first_seen.into(),
                    last_seen,
                    tcp_flags: c.tcp_flags,
                },
            );
        });
        if let Err(e) = result {
            tracing::warn!("reading flow counters: {e}");
        }
    }

    /// A whole walk of the kernel's flow counters in steps, with the ring buffer drained
    /// between steps (so a large table does not make the ring overflow), then the idle flows
    /// retired. Returns the time spent walking (without the events).
    pub(super) fn poll_counters(&mut self, events: &mut mpsc::Receiver<PayloadEvent>) -> Duration {
        let mut walk = FlowWalk::new();
        let mut walking = Duration::ZERO;
        while !walk.is_done() {
            let t = Instant::now();
            self.poll_step(&mut walk);
            walking += t.elapsed();
            self.drain_events(events, EVENT_BATCH);
        }
        self.retire_idle();
        self.watch_pressure();
        walking
    }

    /// A warning when the kernel lost work since the last one (see [`crate::pressure`]).
    fn watch_pressure(&mut self) {
        let Ok(dp) = self.dp.stats() else { return };
        if let Some(h) = &self.hub {
            use std::sync::atomic::Ordering::Relaxed;
            h.gauges
                .flows_active
                .store(self.flows.stats().flows as u64, Relaxed);
            h.gauges.ring_drops.store(dp.ringbuf_full, Relaxed);
        }
        if let Some(msg) = self.pressure.observe(
            Instant::now(),
            [dp.ringbuf_full, dp.flow_map_full, dp.hello_map_full],
        ) {
            tracing::warn!("{msg}");
        }
    }

    /// Ends an upload interval: its usage goes to the hub's spool (an empty one is skipped).
    pub(super) fn upload_interval(&mut self) {
        let (Some(meter), Some(hub)) = (&mut self.meter, &self.hub) else {
            return;
        };
        let usage = meter.take(self.flows.records(), Utc::now(), &self.catalog, &self.users);
        if usage.is_empty() {
            return;
        }
        if usage.rows_folded > 0 {
            tracing::warn!(
                folded = usage.rows_folded,
                "discovery interval over its row limit; the rest went to \"(other)\""
            );
        }
        let checkpoint = meter.checkpoint();
        hub.send_interval(
            RecordBody::Discovery(DiscoveryInterval {
                start: usage.start.timestamp(),
                end: usage.end.timestamp(),
                apps: usage
                    .apps
                    .into_iter()
                    .map(|r| AppUsage {
                        app_id: r.app_id,
                        user: r.user,
                        device: r.device,
                        bytes_up: r.bytes_up,
                        bytes_down: r.bytes_down,
                        flows: r.flows,
                        blocked_flows: r.blocked_flows,
                    })
                    .collect(),
                unknown_domains: usage
                    .unknown_domains
                    .into_iter()
                    .map(|d| DomainUsage {
                        domain: d.domain,
                        bytes_up: d.bytes_up,
                        bytes_down: d.bytes_down,
                        flows: d.flows,
                    })
                    .collect(),
            }),
            &checkpoint,
        );
    }

    /// Alerts opened or changed since the last poll, up to the hub through the spool (when
    /// not enrolled, the changes are let go: the hub gets an alert as it stands, once
    /// enrolled, at its next change).
    pub(super) fn alerts_to_hub(&mut self) {
        let Some(al) = &mut self.alerting else { return };
        let reports = al.take_for_hub();
        if let Some(h) = &self.hub {
            for r in reports {
                h.send(RecordBody::Alert(Box::new(r)));
            }
        }
    }

    /// An audit record for the hub (nothing when the gateway is not enrolled).
    pub(super) fn audit(&self, kind: &str, app_id: Option<&str>, detail: String) {
        if let Some(h) = &self.hub {
            h.send(RecordBody::Audit(AuditEvent {
                kind: kind.into(),
                app_id: app_id.map(str::to_string),
                detail,
            }));
        }
    }

    /// Moves idle flows out of the live table into the discovery history.
    fn retire_idle(&mut self) {
        let now = Utc::now();
        self.flows.expire(now);
        for rec in self.flows.drain_finished() {
            self.history.add(&rec, &self.catalog, &self.users);
            if let Some(m) = &mut self.meter {
                m.retire(&rec, &self.catalog, &self.users);
            }
            self.local_meter.retire(&rec, &self.catalog, &self.users);
            self.retired.insert(rec.tuple(), rec.last_seen);
        }
        // Other devices' logs: each record is one finished transaction.
        if let Some(c) = &self.collected {
            for rec in c.records.try_iter().take(200_000) {
                self.history.add(&rec, &self.catalog, &self.users);
                if let Some(m) = &mut self.meter {
                    m.add_logged(&rec, &self.catalog, &self.users);
                }
                self.local_meter
                    .add_logged(&rec, &self.catalog, &self.users);
            }
        }
        // Forget retirements the kernel's LRU map has surely evicted by now.
        if self.retired.len() > self.cfg.flows.max_flows {
            let idle = TimeDelta::seconds(
                i64::try_from(self.cfg.flows.idle_timeout_secs).unwrap_or(i64::MAX / 8),
            );
            let horizon = now - idle * 4;
            self.retired.retain(|_, seen| *seen > horizon);
        }
    }
}
