//! Answers to control-socket requests (apps, status, flows, tag changes) and the periodic
//! status line.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tollgate_dataplane::abi;
use tollgate_discovery::flow_table::FlowTableStats;
use tollgate_policy::Tag;

use crate::config::Mode;
use crate::control::{self, Request, Response};

use super::{Core, Next};

const NO_ALERTING: &str = "activity and alerts did not start on this gateway (see its log)";

impl Core {
    /// Every flow as a JSON array in pieces of about `FLOWS_PIECE` bytes, for the control
    /// socket's task to write: the core serialises (the flow table is its own) and goes
    /// back to its events at once, however slowly the client reads. The pieces are plain
    /// text, ~360 B a flow (a value tree took ~8x that); unordered, the CLI sorts.
    pub(super) fn flows_pieces(&self) -> Vec<Vec<u8>> {
        const FLOWS_PIECE: usize = 64 * 1024;
        let mut pieces = Vec::new();
        let mut piece = Vec::with_capacity(FLOWS_PIECE + 1024);
        piece.push(b'[');
        for (i, rec) in self.flows.records().enumerate() {
            if i > 0 {
                piece.push(b',');
            }
            if let Err(e) = serde_json::to_writer(&mut piece, &rec) {
                tracing::warn!("flow record not serialisable: {e}");
                piece.extend_from_slice(b"null");
            }
            if piece.len() >= FLOWS_PIECE {
                pieces.push(std::mem::replace(
                    &mut piece,
                    Vec::with_capacity(FLOWS_PIECE + 1024),
                ));
            }
        }
        piece.push(b']');
        pieces.push(piece);
        pieces
    }

    fn apps_json(&self) -> serde_json::Value {
        let mut agg = self.history.clone();
        for rec in self.flows.records() {
            agg.add(&rec, &self.catalog, &self.users);
        }
        let snap = agg.snapshot(&self.catalog, &|id| {
            self.tags.tag(&self.catalog, id).map(|(t, _)| t.to_string())
        });
        serde_json::json!({
            "apps": snap.apps,
            "users": snap.users,
            "unknown_domains": snap.unknown_domains,
            "totals": snap.totals,
        })
    }

    fn status_json(&self) -> serde_json::Value {
        let st = self.flows.stats();
        let dp = self.dp.stats().unwrap_or_default();
        serde_json::json!({
            "mode": self.cfg.mode.to_string(),
            "attach_mode": self.dp.attach_mode().as_str(),
            "started_at": self.started_at,
            "uptime_secs": (chrono::Utc::now() - self.started_at).num_seconds().max(0),
            "hub": self.hub.as_ref().map(|h| h.status()),
            "flows": st.flows,
            "named_flows": st.named_flows,
            "events": self.events_total,
            "kernel_events": dp.events,
            "ring_drops": dp.ringbuf_full,
            "kernel_parse_errors": dp.parse_errors(),
            "flow_map_full": dp.flow_map_full,
            "hello_map_full": dp.hello_map_full,
            "pressure_warnings": self.pressure.warnings,
            "flows_dropped": st.flows_dropped,
            "event_decode_errors": self.reader_errors(),
            "packets": dp.packets,
            "bytes": dp.bytes,
            "verdicts": {
                "rst_sent": dp.rst_sent,
                "icmp_sent": dp.icmp_sent,
                "http_blocked": dp.http_blocked,
                "quic_held": dp.quic_held,
                "session_refused": dp.session_refused,
                "unreadable_blocked": dp.raw.get(abi::STAT_UNREADABLE_BLOCKED).copied().unwrap_or(0),
            },
            "drops": dp.drops,
            "would_drop": dp.would_drop,
            "flows_blocked_by_userspace": self.enforcer.flows_blocked,
            "dns_refused": dp.dns_refused,
            "control_clients_refused": control::clients_refused(),
            "audit_dropped": self.session.as_ref().map(|s| s.stats().audit_dropped),
            "dns_answers_matched": st.dns_answers_matched,
            "dns_answers_unmatched": st.dns_answers_unmatched,
            "dns_answers_wrong_question": st.dns_answers_wrong_question,
            "dns_answers_unsolicited_kernel": dp.dns_unsolicited,
            "dns_queries_pending": st.dns_queries_pending,
            "dns_queries_evicted": st.dns_queries_evicted,
            "dns_ttl_capped": st.dns_ttl_capped,
            "dns_answers_protected": self.enforcer.learn_stats.protected,
            "dns_learn_rate_limited": self.enforcer.learn_stats.rate_limited,
            "dns_learned": self.enforcer.learned_len(),
            "dns_learned_evicted": self.enforcer.learn_stats.evicted,
            "dns_learned_expired": self.enforcer.learn_stats.expired,
            "dns_learned_write_failed": self.enforcer.learn_stats.write_failed,
            "session": {
                "steered": dp.steered,
                "steer_no_proxy": dp.steer_no_proxy,
                "steer_quic_refused": dp.steer_quic_refused,
                "session_refused": dp.session_refused,
                "session_unproven": dp.session_unproven,
                "steer_client_added": dp.steer_client_added,
                "steer_by_client": dp.steer_by_client,
                "dns_held": dp.dns_held,
                "steer_kept_stale": dp.steer_kept_stale,
                "steer_lost_reset": dp.steer_lost_reset,
                "daemon": self.session.as_ref().map(|s| s.counts).unwrap_or_default(),
            },
            "evasion": self.evasion_json(&dp, &st),
            "proxy": self.session.as_ref().map(|s| s.stats_json()),
            "activity": self.alerting.as_ref().map(|a| a.stats_json()),
            "connectors": self.connector_statuses.as_ref().and_then(|s| {
                s.lock().ok().map(|m| serde_json::to_value(&*m).unwrap_or_default())
            }),
        })
    }

    /// How the gateway met evasion attempts: every kernel counter of the unreadable and
    /// evasion cases by name, the `[enforcement] unreadable` setting, and the QUIC flows
    /// decided again after a decoy Initial.
    fn evasion_json(
        &self,
        dp: &tollgate_dataplane::DataplaneStats,
        flows: &FlowTableStats,
    ) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert(
            "unreadable".into(),
            self.enforcer.unreadable().as_str().into(),
        );
        for (id, name) in abi::STAT_NAMES {
            if (abi::STAT_FRAG_TINY..=abi::STAT_UNREADABLE_PASSED).contains(&id)
                || id == abi::STAT_FRAGMENTS
            {
                m.insert(name.into(), dp.raw.get(id).copied().unwrap_or(0).into());
            }
        }
        m.insert("quic_renamed".into(), flows.quic_renamed.into());
        m.insert(
            "quic_recheck_forgotten".into(),
            flows.quic_recheck_forgotten.into(),
        );
        serde_json::Value::Object(m)
    }

    pub(super) fn print_status(&mut self) {
        let st = self.flows.stats();
        let dp = self.dp.stats().unwrap_or_default();
        let secs = self.last_status.elapsed().as_secs_f64().max(0.001);
        let rate = (self.events_total - self.events_at_last_status) as f64 / secs;
        self.events_at_last_status = self.events_total;
        self.last_status = Instant::now();
        crate::outln!(
            "status: flows {} (named {}), events {} ({:.0}/s), ring drops {}, parse errors {}, {} {}",
            st.flows,
            st.named_flows,
            self.events_total,
            rate,
            dp.ringbuf_full,
            dp.parse_errors() + self.reader_errors(),
            if self.cfg.mode == Mode::Enforce {
                "dropped"
            } else {
                "would drop"
            },
            if self.cfg.mode == Mode::Enforce {
                dp.drops
            } else {
                dp.would_drop
            },
        );
    }

    /// Ring-buffer records lost in userspace: read errors and undecodable records.
    fn reader_errors(&self) -> u64 {
        self.reader.io_errors.load(Ordering::Relaxed)
            + self.reader.malformed.load(Ordering::Relaxed)
    }

    fn set_tag(&mut self, app: &str, tag: &str) -> Response {
        self.set_tag_by(app, tag, "the gateway")
    }

    /// Sets a live tag for `app`; `by` says who, in the audit record.
    pub(super) fn set_tag_by(&mut self, app: &str, tag: &str, by: &str) -> Response {
        if self.catalog.app(app).is_none() {
            return Response::err(format!("app {app:?} is not in the catalog"));
        }
        let tag: Tag = match tag.parse() {
            Ok(t) => t,
            Err(e) => return Response::err(e.to_string()),
        };
        let mut live = self.live_tags.clone();
        live.insert(app.to_string(), tag.clone());
        if let Err(e) = self.tag_store.save(&live) {
            return Response::err(format!("could not persist the tag: {e}"));
        }
        self.live_tags = live;
        self.tags = self.tags.with_live(self.live_tags.clone());
        self.apply_tags();
        tracing::info!(app, tag = %tag, "tag set");
        self.audit("tag_changed", Some(app), format!("tagged {tag} by {by}"));
        Response::ok(serde_json::json!({ "app": app, "tag": tag.to_string() }))
    }

    pub(super) fn on_control(&mut self, request: Request) -> (Response, Next) {
        match request {
            // Streamed by the control loop (`stream_flows`).
            Request::Flows => (Response::err("flows are streamed"), Next::Continue),
            Request::Apps => (Response::ok(self.apps_json()), Next::Continue),
            Request::Status => (Response::ok(self.status_json()), Next::Continue),
            Request::Tag { app, tag } => (self.set_tag(&app, &tag), Next::Continue),
            Request::Stop => (Response::ok(serde_json::Value::Null), Next::Stop),
            // Answered by the control handler, off the core task.
            Request::Activity { .. } => (
                Response::err("activity is answered by the control handler"),
                Next::Continue,
            ),
            Request::Alerts => (
                match &self.alerting {
                    Some(a) => Response::ok(serde_json::json!({ "alerts": a.alerts() })),
                    None => Response::err(NO_ALERTING),
                },
                Next::Continue,
            ),
            Request::AlertShow { id } => (
                match self.alerting.as_ref().map(|a| a.alert(id)) {
                    Some(Some(alert)) => Response::ok(serde_json::json!({ "alert": alert })),
                    Some(None) => Response::err(format!("no alert {id}")),
                    None => Response::err(NO_ALERTING),
                },
                Next::Continue,
            ),
            Request::AlertSet {
                id,
                status,
                comment,
            } => (self.set_alert(id, status, comment), Next::Continue),
        }
    }

    fn set_alert(
        &mut self,
        id: u64,
        status: tollgate_activity::AlertStatus,
        comment: Option<String>,
    ) -> Response {
        let Some(a) = &mut self.alerting else {
            return Response::err(NO_ALERTING);
        };
        match a.set_status(id, status, comment) {
            Ok(alert) => {
                self.audit(
                    "alert_status",
                    alert.entities.app.as_deref(),
                    format!("alert {id} {}", status.as_str()),
                );
                Response::ok(serde_json::json!({ "alert": alert }))
            }
            Err(e) => Response::err(e),
        }
    }

    /// One audit record of the session proxy, as an activity.
    pub(super) fn on_proxy_record(&mut self, rec: &tollgate_proxy::audit::AuditRecord) {
        if let Some(a) = &mut self.alerting {
            a.on_proxy(rec);
        }
    }

    /// Hands the session blocks the alerts asked for to the proxy; each becomes an audit
    /// record (the activity log, the sinks, the hub).
    pub(super) fn apply_governance(&mut self) {
        let Some(al) = &mut self.alerting else {
            return;
        };
        let calls = al.take_connector_calls();
        let blocks = al.take_governance();
        if let Some(tx) = &self.governance_tx {
            for c in calls {
                tracing::warn!(connector = %c.connector, user = %c.user, policy = %c.policy, "governance: {} asked of the connector", c.call);
                self.connector_registry.spawn_call(
                    &c.connector,
                    c.call,
                    &c.user,
                    &c.policy,
                    c.alert_id,
                    tx.clone(),
                );
            }
        }
        for b in blocks {
            let saved = super::session_blocks::SavedBlock {
                user: b.user.clone(),
                ip: b.ip,
                app: b.app.clone(),
                policy: b.policy.clone(),
                until: chrono::Utc::now()
                    .timestamp()
                    .saturating_add(i64::try_from(b.secs).unwrap_or(i64::MAX)),
            };
            let Some(actor) = saved.actor() else {
                continue;
            };
            let who = b
                .user
                .clone()
                .or(b.ip.map(|i| i.to_string()))
                .unwrap_or_default();
            let done = match &self.session {
                Some(s) => s.block_sessions(actor, &b.app, Duration::from_secs(b.secs), &b.policy),
                None => false,
            };
            if done
                && let Err(e) = self
                    .session_blocks
                    .add(saved, chrono::Utc::now().timestamp())
            {
                // In force now; a restart before the next write would lift it.
                tracing::error!(error = %e, "cannot write the session blocks; a restart would lift this one");
            }
            let detail = if done {
                format!(
                    "sessions of {who} to {} blocked for {} s by alert {} of policy {:?}",
                    b.app, b.secs, b.alert_id, b.policy
                )
            } else {
                format!(
                    "could not block sessions of {who} to {} for policy {:?}: {}",
                    b.app,
                    b.policy,
                    if self.session.is_some() {
                        "the proxy's table of blocks is full"
                    } else {
                        "no app is under session control"
                    }
                )
            };
            tracing::warn!(app = %b.app, policy = %b.policy, "{detail}");
            self.audit("session_blocked", Some(&b.app), detail.clone());
            let mut a = tollgate_activity::Activity::new(
                0,
                chrono::Utc::now(),
                b.app.clone(),
                tollgate_activity::ActivityType::AdminAction,
                tollgate_activity::Source::Audit,
            );
            a.user = b.user.clone();
            a.ip = b.ip;
            a.policy = Some(b.policy.clone());
            a.action = Some("block_sessions".into());
            a.object = Some(detail);
            a.result = if done {
                tollgate_activity::Outcome::Success
            } else {
                tollgate_activity::Outcome::Failure
            };
            if let Some(al) = &mut self.alerting {
                al.record_action(a);
            }
        }
    }

    /// What became of a governance call through a connector: the audit trail (the hub's,
    /// the activity log, the sinks).
    pub(super) fn on_governance_outcome(&mut self, o: &tollgate_connectors::governance::Outcome) {
        let detail = o.to_string();
        if o.result.is_ok() {
            tracing::warn!("governance: {detail}");
        } else {
            tracing::error!("governance: {detail}");
        }
        self.audit("connector_action", None, detail.clone());
        if let Some(al) = &mut self.alerting {
            al.record_connector_outcome(o, detail);
        }
    }

    /// Hands the proxy the governance blocks an earlier run set that are still in force.
    pub(super) fn restore_session_blocks(&mut self) {
        let Some(session) = &self.session else {
            return;
        };
        let now = chrono::Utc::now().timestamp();
        let mut restored = 0usize;
        for b in self.session_blocks.in_force(now) {
            let Some(actor) = b.actor() else { continue };
            let left = std::time::Duration::from_secs(u64::try_from(b.until - now).unwrap_or(0));
            if session.block_sessions(actor, &b.app, left, &b.policy) {
                restored += 1;
            }
        }
        if restored > 0 {
            tracing::warn!(
                restored,
                "governance session blocks of an earlier run restored"
            );
            crate::outln!("  {restored} governance session blocks still in force");
        }
    }
}
