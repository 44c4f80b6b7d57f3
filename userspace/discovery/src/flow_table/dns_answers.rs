//! DNS messages: queries remembered until their answer, answers matched to a query of their
//! client (with `dns_answers_need_query`), and what a trusted answer teaches (the flow's name,
//! the IP-to-name cache, ECH hints, [`super::Observed::dns_answers`]).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tollgate_wire::dns;

use super::{CanonKey, DnsAnswer, Endpoint, Evidence, FlowTable, MAX_DNS_QUERIES_KEPT, set_client};
use crate::record::{L4Proto, NameSource};

/// A query waiting for its answer: who asked whom, over what, with which id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct PendingKey {
    pub(super) proto: L4Proto,
    pub(super) client: Endpoint,
    pub(super) server: Endpoint,
    pub(super) id: u16,
}

#[derive(Debug, Clone)]
pub(super) struct PendingQuery {
    /// Lower case, no trailing dot.
    pub(super) name: Box<str>,
    pub(super) qtype: u16,
    pub(super) qclass: u16,
    pub(super) sent: DateTime<Utc>,
}

impl FlowTable {
    /// Forgets queries whose answer is overdue.
    pub(super) fn expire_queries(&mut self, now: DateTime<Utc>) {
        let timeout = TimeDelta::from_std(self.limits.dns_query_timeout).unwrap_or(TimeDelta::MAX);
        while let Some((k, sent)) = self.pending_order.front().copied() {
            if sent + timeout >= now {
                break;
            }
            self.pending_order.pop_front();
            if self.pending_dns.get(&k).is_some_and(|q| q.sent == sent) {
                self.pending_dns.remove(&k);
            }
        }
    }

    /// Remembers a query the client sent, within the pending-query bound.
    fn remember_query(&mut self, key: PendingKey, m: &dns::Message, ts: DateTime<Utc>) {
        let Some(q) = m.questions.first() else { return };
        if m.questions.len() != 1 || self.limits.max_pending_dns == 0 {
            return;
        }
        self.expire_queries(self.now);
        while self.pending_dns.len() >= self.limits.max_pending_dns {
            let Some((k, sent)) = self.pending_order.pop_front() else {
                break;
            };
            if self.pending_dns.get(&k).is_some_and(|q| q.sent == sent) {
                self.pending_dns.remove(&k);
                self.stats.dns_queries_evicted += 1;
            }
        }
        // Keys of answered queries linger in the order until they come up: keep it from
        // growing past twice the bound under a fast stream of answered queries.
        if self.pending_order.len() >= self.limits.max_pending_dns.saturating_mul(2) {
            let live = &self.pending_dns;
            self.pending_order
                .retain(|(k, sent)| live.get(k).is_some_and(|q| q.sent == *sent));
        }
        self.pending_dns.insert(
            key,
            PendingQuery {
                name: normalize_qname(&q.name).into(),
                qtype: q.qtype,
                qclass: q.qclass,
                sent: ts,
            },
        );
        self.pending_order.push_back((key, ts));
    }

    /// Whether an answer matches a pending query (consumed when it does); counts refusals.
    fn match_answer(&mut self, key: PendingKey, m: &dns::Message) -> bool {
        self.expire_queries(self.now);
        let Some(pending) = self.pending_dns.get(&key) else {
            self.stats.dns_answers_unmatched += 1;
            return false;
        };
        let same = m.questions.len() == 1
            && m.questions.first().is_some_and(|q| {
                q.qtype == pending.qtype
                    && q.qclass == pending.qclass
                    && normalize_qname(&q.name) == *pending.name
            });
        if !same {
            // The query stays pending: the real answer may still come.
            self.stats.dns_answers_wrong_question += 1;
            return false;
        }
        self.pending_dns.remove(&key);
        self.stats.dns_answers_matched += 1;
        true
    }

    pub(super) fn udp_dns(&mut self, ck: CanonKey, side: usize, ts: DateTime<Utc>, payload: &[u8]) {
        match dns::parse_message(payload) {
            Ok(m) => self.dns_message(ck, side, ts, &m),
            Err(e) => {
                *self
                    .stats
                    .parse_errors
                    .entry(format!("dns:{}", e.kind()))
                    .or_default() += 1
            }
        }
    }

    pub(super) fn dns_message(
        &mut self,
        ck: CanonKey,
        side: usize,
        ts: DateTime<Utc>,
        m: &dns::Message,
    ) {
        if m.opcode() != 0 {
            return;
        }
        let response = m.is_response();
        let live = self.flows.len();
        let Some(f) = self.flows.get_mut(&ck) else {
            return;
        };
        // A query is sent by the client; a response by the server.
        set_client(f, side, !response, Evidence::Payload);
        let client_side = usize::from(f.client);
        let (sender, receiver) = if side == 0 {
            (ck.a, ck.b)
        } else {
            (ck.b, ck.a)
        };
        // Whether this message may name the flow and teach addresses.
        let trusted = if !self.limits.dns_answers_need_query {
            true
        } else if !response {
            // Only the client's own queries are remembered: a "query" sent toward the
            // client (from the internet side) asks nothing on its behalf.
            if side == client_side {
                let key = PendingKey {
                    proto: ck.proto,
                    client: sender,
                    server: receiver,
                    id: m.id,
                };
                self.remember_query(key, m, ts);
                true
            } else {
                false
            }
        } else if side != client_side {
            let key = PendingKey {
                proto: ck.proto,
                client: receiver,
                server: sender,
                id: m.id,
            };
            self.match_answer(key, m)
        } else {
            self.stats.dns_answers_unmatched += 1;
            false
        };
        if !trusted {
            return;
        }
        if let Some(f) = self.flows.get_mut(&ck) {
            if let Some(q) = m.query_name().filter(|q| !q.is_empty())
                && self.limits.meta
            {
                let x = f.meta.get_or_insert_with(Default::default).extra();
                if x.dns_queries.len() < MAX_DNS_QUERIES_KEPT
                    && !x.dns_queries.iter().any(|e| &**e == q)
                {
                    x.dns_queries.push(q.into());
                }
            }
            if f.name.is_none()
                && let Some(q) = m.query_name().filter(|q| !q.is_empty())
            {
                *self.stats.names_by_source.entry("dns").or_default() += 1;
                f.name = Some(self.names.get(q, live));
                f.name_source = Some(NameSource::Dns);
            }
        }
        if response {
            for (ip, name, ttl) in m.address_map() {
                let ttl = self.cap_ttl(ttl);
                self.dns_learn(ip, &name, ttl, ts);
                if let Some(answers) = self.dns_answers.as_mut() {
                    answers.push(DnsAnswer {
                        client: receiver.0,
                        name: name.to_ascii_lowercase(),
                        ip,
                        ttl,
                    });
                }
            }
            if let Some(q) = m.query_name() {
                for rec in &m.answers {
                    if let dns::RData::Svcb(svcb) = &rec.data {
                        let cap = self.limits.max_dns_cache;
                        self.ech
                            .learn(cap, q, svcb.ech_config, &svcb.ech_public_names);
                    }
                }
            }
        }
    }

    /// A record's TTL, at most [`FlowTableLimits::dns_max_ttl`] (counted when capped).
    fn cap_ttl(&mut self, ttl: u32) -> Duration {
        let ttl = Duration::from_secs(u64::from(ttl));
        if ttl > self.limits.dns_max_ttl {
            self.stats.dns_ttl_capped += 1;
            self.limits.dns_max_ttl
        } else {
            ttl
        }
    }
}

/// A question name as compared between a query and its answer: lower case, no trailing dot.
fn normalize_qname(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}
