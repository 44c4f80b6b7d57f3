//! Ring-buffer events: what the flow table learned from each payload copy decides flows
//! (enforcement, session control) and teaches addresses (DNS answers); a tag change decides
//! every live flow again.

use std::net::IpAddr;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tollgate_dataplane::{Direction, FlowWalk, PayloadEvent, PayloadKind, abi};
use tollgate_discovery::flow_table::{self, DnsAnswer};
use tollgate_discovery::record::NameSource;
use tollgate_policy::Decision;

use super::{Core, WALK_STEP};

impl Core {
    pub(super) fn on_event(&mut self, ev: &PayloadEvent) {
        self.events_total += 1;
        let seen = self.flows.observe_payload(&flow_table::PayloadObservation {
            flow: ev.flow,
            direction: ev.direction,
            ts: ev.timestamp.into(),
            tcp_seq: ev.tcp_seq,
            tcp_flags: ev.tcp_flags,
            payload: &ev.payload,
        });
        match ev.kind {
            PayloadKind::Dns => self.on_dns(ev, seen.dns_answers),
            PayloadKind::Tls | PayloadKind::Quic | PayloadKind::Http => {
                self.learn_dns(seen.dns_answers);
                // The flow table reports a flow's own name once, when its first flight gives
                // it: the flow is decided then (a tag change decides every named flow again,
                // apply_tags).
                if let Some((name, source)) = seen.named {
                    self.decide_flow(ev, &name, source);
                } else if ev.kind == PayloadKind::Http && ev.direction == Direction::Up {
                    // A request head on an HTTP connection that is already named (a
                    // kept-alive connection reused for another Host): the kernel checks every
                    // head's Host against the name verdicts, so when it blocked this one the
                    // user gets the block page for it.
                    if let Some(host) = seen.later_http_host
                        && self.enforcer.kernel_blocks_name(&host)
                    {
                        self.decide_flow(ev, &host, NameSource::Http);
                    }
                } else if ev.kind == PayloadKind::Quic && ev.direction == Direction::Up {
                    // A flow is named once; a later Initial naming another server (the real
                    // one after a decoy the server dropped) decides it again.
                    if let Some(name) = seen.quic_renamed {
                        tracing::info!(name = %name, user = %ev.flow.user_ip, "QUIC flow renamed by a later Initial");
                        self.decide_flow(ev, &name, NameSource::Quic);
                    }
                }
            }
        }
    }

    /// The flow table has just named the flow from its own payload: decide the flow. The
    /// name is classified here, once, for session control and enforcement both.
    fn decide_flow(&mut self, ev: &PayloadEvent, name: &str, source: NameSource) {
        let Some(key) = ev.flow_key() else { return };
        let classified = self.catalog.classify_name(name);
        // A flow's own name never steers its address for anyone (anyone can put any name in
        // a first flight toward any address). A QUIC flow naming an app under session control
        // toward an address no DNS answer steered is refused (in every mode), so the browser
        // falls back to TCP, where the kernel refuses the direct hello and steers that
        // client's retry (a TLS handshake proves the client reaches the address anyway).
        if ev.kind == PayloadKind::Quic
            && ev.direction == Direction::Up
            && let Some(s) = &mut self.session
            && let Some(app) = s.on_quic_name(classified.as_ref())
        {
            tracing::info!(app, name = %name, user = %ev.flow.user_ip, remote = %ev.flow.remote_ip,
                "QUIC to an app under session control refused");
            // Held flows read the verdict at once; the others at the next generation.
            let mut w = self.dp.verdicts();
            if let Err(e) = w
                .set_flow(&key, tollgate_dataplane::Action::Refuse, 0, None)
                .and_then(|()| w.commit())
            {
                tracing::warn!("writing a flow verdict: {e}");
            }
            return;
        }
        match self.enforcer.on_named_flow(
            &mut self.dp,
            &self.catalog,
            &self.tags,
            &key,
            classified.as_ref(),
        ) {
            Ok(Some((app, Decision::Block))) => {
                tracing::info!(app, name = %name, by = ?source, user = %ev.flow.user_ip, "blocked");
                if let Some(m) = &mut self.meter {
                    m.flow_blocked(ev.flow, Utc::now());
                }
                // Plain HTTP: the kernel reset the server side; tell the user why.
                if ev.kind == PayloadKind::Http
                    && ev.direction == Direction::Up
                    && self.enforcer.kernel_blocks_name(name)
                {
                    let page = tollgate_dataplane::block_page_html(
                        self.catalog.app(app).map_or(app, |a| a.name.as_str()),
                        "This application is unsanctioned on this network.",
                    );
                    if let Err(e) = tollgate_dataplane::send_block_page(ev, &page) {
                        tracing::warn!("sending the block page: {e}");
                    }
                }
            }
            Ok(Some((app, Decision::WouldBlock))) => tracing::info!(
                app, name = %name, by = ?source, user = %ev.flow.user_ip, "would block (monitor mode)"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("writing a flow verdict: {e}"),
        }
    }

    /// DNS answers the flow table matched to a query of their client: addresses of
    /// unsanctioned apps go into the kernel's block tries, those of apps under session
    /// control into the steer tries. Protected addresses and clients over their allowance are
    /// refused (counted). The flow table is the one place that parses DNS (UDP, and TCP
    /// reassembled). An answer the kernel held (it names an app under session control) is sent
    /// on to its user after that, whatever it holds, so the client's first connection finds
    /// its addresses steered.
    fn on_dns(&mut self, ev: &PayloadEvent, answers: Vec<DnsAnswer>) {
        self.learn_dns(answers);
        if ev.held {
            match &mut self.session {
                Some(s) => s.release_held(ev),
                // Session control is off (the flag outlived an earlier run): still deliver.
                None => {
                    if let Err(e) = tollgate_dataplane::send_held_dns(ev) {
                        tracing::warn!("sending a held DNS answer to {}: {e}", ev.flow.user_ip);
                    }
                }
            }
        }
    }

    fn learn_dns(&mut self, answers: Vec<DnsAnswer>) {
        for a in answers {
            if self.enforcer.protection(a.ip).is_some() {
                self.enforcer.learn_stats.protected += 1;
                continue;
            }
            if !self.enforcer.allow_learning(a.client, a.ip) {
                continue;
            }
            if let Some(s) = &mut self.session {
                s.on_dns_answer(&mut self.dp, &self.catalog, &a.name, a.ip, a.client);
            }
            if let Err(e) = self.enforcer.on_dns_answer(
                &mut self.dp,
                &self.catalog,
                &self.tags,
                &a.name,
                a.ip,
                a.ttl,
            ) {
                tracing::warn!("writing an address verdict: {e}");
            }
        }
    }

    /// After a tag change: bring the kernel in line, and cut the existing flows of apps
    /// that are now blocked (their addresses learned from DNS too).
    pub(super) fn apply_tags(&mut self) {
        match self.enforcer.sync(&mut self.dp, &self.catalog, &self.tags) {
            Ok(r) => {
                tracing::info!(
                    names_set = r.names_set,
                    names_removed = r.names_removed,
                    "verdicts synced"
                );
                if r.names_failed > 0 {
                    tracing::error!(
                        failed = r.names_failed,
                        "name verdicts not written (map full); the rest are in place"
                    );
                }
            }
            Err(e) => tracing::error!("syncing verdicts: {e}"),
        }
        if !self.enforcer.cut_existing_flows() {
            return;
        }
        let now = Utc::now();
        let cached: Vec<(IpAddr, String, Duration)> = self
            .flows
            .dns_entries()
            .filter_map(|(ip, name, expires)| {
                let left = (expires - now).to_std().ok()?;
                Some((ip, name.to_string(), left))
            })
            .collect();
        for (ip, name, left) in cached {
            let _ = self.enforcer.on_dns_answer(
                &mut self.dp,
                &self.catalog,
                &self.tags,
                &name,
                ip,
                left,
            );
        }
        // The live flows in steps, not as one snapshot (12 MiB at 100k flows): each step's
        // named flows are decided before the next step is read.
        let mut walk = FlowWalk::new();
        let mut named: Vec<(abi::FlowKey, String)> = Vec::new();
        while !walk.is_done() {
            named.clear();
            let Core { dp, flows, .. } = self;
            let step = dp.walk_flow_counters(&mut walk, WALK_STEP, |c| {
                let Some(key) = c.flow_key() else { return };
                let name = flows
                    .own_name(&c.flow)
                    .map(|(n, _)| n.to_string())
                    .or_else(|| {
                        flows
                            .dns_name(c.flow.remote_ip, c.first_seen.into())
                            .map(str::to_string)
                    });
                if let Some(name) = name {
                    named.push((key, name));
                }
            });
            if let Err(e) = step {
                tracing::warn!("reading flow counters: {e}");
            }
            for (key, name) in &named {
                let classified = self.catalog.classify_name(name);
                let _ = self.enforcer.on_named_flow(
                    &mut self.dp,
                    &self.catalog,
                    &self.tags,
                    key,
                    classified.as_ref(),
                );
            }
        }
        if let Err(e) = self.dp.verdicts().commit() {
            tracing::error!("committing verdicts: {e}");
        }
    }

    /// Handles the events waiting in the queue, at most `max`.
    pub(super) fn drain_events(&mut self, events: &mut mpsc::Receiver<PayloadEvent>, max: usize) {
        for _ in 0..max {
            match events.try_recv() {
                Ok(ev) => self.on_event(&ev),
                Err(_) => break,
            }
        }
    }
}
