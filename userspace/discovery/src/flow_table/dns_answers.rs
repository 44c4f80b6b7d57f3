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
                self.dns.learn(ip, &name, ttl, ts);
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
                        self.dns
                            .learn_ech(q, svcb.ech_config, &svcb.ech_public_names);
                    }
                }
            }
        }
    }

    /// A record's TTL, at most [`FlowTableLimits::dns_max_ttl`] (counted when capped).
    ///
    /// [`FlowTableLimits::dns_max_ttl`]: super::FlowTableLimits::dns_max_ttl
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn unsolicited_dns_answer_teaches_nothing() {
        let mut answers = Vec::new();
        let mut t = strict();
        let ans = dns_msg(7, "www.dropbox.com", Some((INNOCENT, 300)));
        answers.extend(
            t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &ans, 0))
                .dns_answers,
        );
        assert!(std::mem::take(&mut answers).is_empty());
        assert_eq!(t.dns_entries().count(), 0);
        assert_eq!(t.stats().dns_answers_unmatched, 1);
        // Nor does it name the DNS flow it came on.
        assert_eq!(
            t.own_name(&FlowTuple::new(
                L4Proto::Udp,
                (IpAddr::V4(Ipv4Addr::from(CLIENT.0)), CLIENT.1),
                (IpAddr::V4(Ipv4Addr::from(RESOLVER.0)), RESOLVER.1)
            )),
            None
        );
    }

    #[test]
    fn dns_answer_must_match_txid_question_and_tuple() {
        let mut answers = Vec::new();
        let mut t = strict();
        let q = dns_msg(7, "www.dropbox.com", None);
        answers.extend(
            t.observe_payload(&live_dns(CLIENT, RESOLVER, Direction::Up, &q, 0))
                .dns_answers,
        );
        assert_eq!(t.stats().dns_queries_pending, 1);
        // Wrong transaction id.
        let a = dns_msg(8, "www.dropbox.com", Some((INNOCENT, 300)));
        answers.extend(
            t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &a, 0))
                .dns_answers,
        );
        // Right id, other question.
        let a = dns_msg(7, "dropbox.com", Some((INNOCENT, 300)));
        answers.extend(
            t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &a, 0))
                .dns_answers,
        );
        // Right id and question, from another server.
        let a = dns_msg(7, "www.dropbox.com", Some((INNOCENT, 300)));
        answers.extend(
            t.observe_payload(&live_dns(
                ([10, 0, 0, 9], 53),
                CLIENT,
                Direction::Down,
                &a,
                0,
            ))
            .dns_answers,
        );
        // To another client port.
        answers.extend(
            t.observe_payload(&live_dns(
                RESOLVER,
                (CLIENT.0, 40001),
                Direction::Down,
                &a,
                0,
            ))
            .dns_answers,
        );
        assert!(std::mem::take(&mut answers).is_empty());
        let st = t.stats();
        assert_eq!(st.dns_answers_unmatched, 3, "{st:?}");
        assert_eq!(st.dns_answers_wrong_question, 1, "{st:?}");
        assert_eq!(st.dns_answers_matched, 0);
        // The real answer (case of the name may differ) still matches, once.
        let a = dns_msg(7, "WWW.Dropbox.com", Some(([162, 125, 1, 1], 300)));
        answers.extend(
            t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &a, 1))
                .dns_answers,
        );
        let got = std::mem::take(&mut answers);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].ip, IpAddr::V4(Ipv4Addr::new(162, 125, 1, 1)));
        assert_eq!(got[0].name, "www.dropbox.com");
        assert_eq!(got[0].client, IpAddr::V4(Ipv4Addr::from(CLIENT.0)));
        answers.extend(
            t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &a, 1))
                .dns_answers,
        );
        assert!(
            std::mem::take(&mut answers).is_empty(),
            "a second answer is not matched"
        );
        assert_eq!(t.stats().dns_queries_pending, 0);
    }

    #[test]
    fn dns_query_from_the_internet_side_is_not_pending() {
        let mut answers = Vec::new();
        let mut t = strict();
        // A "query" sent toward the client does not make its answer trusted.
        let q = dns_msg(7, "www.dropbox.com", None);
        answers.extend(
            t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &q, 0))
                .dns_answers,
        );
        let a = dns_msg(7, "www.dropbox.com", Some((INNOCENT, 300)));
        answers.extend(
            t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &a, 0))
                .dns_answers,
        );
        assert!(std::mem::take(&mut answers).is_empty());
        assert_eq!(t.stats().dns_queries_pending, 0);
    }

    #[test]
    fn dns_queries_expire_and_are_bounded() {
        let mut answers = Vec::new();
        let mut t = FlowTable::new(FlowTableLimits {
            dns_answers_need_query: true,
            max_pending_dns: 4,
            dns_query_timeout: Duration::from_secs(5),
            ..FlowTableLimits::default()
        });
        let q = dns_msg(7, "a.example", None);
        answers.extend(
            t.observe_payload(&live_dns(CLIENT, RESOLVER, Direction::Up, &q, 0))
                .dns_answers,
        );
        let a = dns_msg(7, "a.example", Some((INNOCENT, 300)));
        // Past the timeout: the answer is late, refused.
        answers.extend(
            t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &a, 6))
                .dns_answers,
        );
        assert!(std::mem::take(&mut answers).is_empty());
        assert_eq!(t.stats().dns_answers_unmatched, 1);
        // Ten queries from ten ports: only four wait, the oldest six were evicted.
        for port in 0..10u16 {
            let q = dns_msg(port, "b.example", None);
            answers.extend(
                t.observe_payload(&live_dns(
                    (CLIENT.0, 50000 + port),
                    RESOLVER,
                    Direction::Up,
                    &q,
                    7,
                ))
                .dns_answers,
            );
        }
        let st = t.stats();
        assert_eq!(st.dns_queries_pending, 4);
        assert_eq!(st.dns_queries_evicted, 6);
        let a = dns_msg(9, "b.example", Some((INNOCENT, 300)));
        answers.extend(
            t.observe_payload(&live_dns(
                RESOLVER,
                (CLIENT.0, 50009),
                Direction::Down,
                &a,
                7,
            ))
            .dns_answers,
        );
        assert_eq!(
            std::mem::take(&mut answers).len(),
            1,
            "the newest query still matches"
        );
    }

    #[test]
    fn dns_over_tcp_answer_split_across_segments_matches_its_query() {
        let mut answers = Vec::new();
        let mut t = strict();
        fn seg(
            src: ([u8; 4], u16),
            dst: ([u8; 4], u16),
            direction: Direction,
            tcp_seq: u32,
            payload: &[u8],
        ) -> PayloadObservation<'_> {
            PayloadObservation {
                flow: FlowTuple::of_packet(
                    L4Proto::Tcp,
                    (IpAddr::V4(Ipv4Addr::from(src.0)), src.1),
                    (IpAddr::V4(Ipv4Addr::from(dst.0)), dst.1),
                    direction,
                ),
                direction,
                ts: ts(0),
                tcp_seq,
                tcp_flags: tcp_flags::ACK | tcp_flags::PSH,
                payload,
            }
        }
        let framed = |m: Vec<u8>| {
            let mut v = (m.len() as u16).to_be_bytes().to_vec();
            v.extend_from_slice(&m);
            v
        };
        let q = framed(dns_msg(9, "www.dropbox.com", None));
        answers.extend(
            t.observe_payload(&seg(CLIENT, RESOLVER, Direction::Up, 1001, &q))
                .dns_answers,
        );
        let a = framed(dns_msg(9, "www.dropbox.com", Some(([162, 125, 1, 1], 60))));
        let (x, y) = a.split_at(20);
        answers.extend(
            t.observe_payload(&seg(RESOLVER, CLIENT, Direction::Down, 5001, x))
                .dns_answers,
        );
        assert!(
            std::mem::take(&mut answers).is_empty(),
            "half an answer teaches nothing"
        );
        answers.extend(
            t.observe_payload(&seg(RESOLVER, CLIENT, Direction::Down, 5021, y))
                .dns_answers,
        );
        let got = std::mem::take(&mut answers);
        assert_eq!(got.len(), 1, "{:?}", t.stats());
        assert_eq!(got[0].ip, IpAddr::V4(Ipv4Addr::new(162, 125, 1, 1)));
    }

    #[test]
    fn dns_ttl_is_capped() {
        let mut answers = Vec::new();
        let mut t = strict();
        let q = dns_msg(7, "a.example", None);
        answers.extend(
            t.observe_payload(&live_dns(CLIENT, RESOLVER, Direction::Up, &q, 0))
                .dns_answers,
        );
        let a = dns_msg(7, "a.example", Some((INNOCENT, 4_000_000_000)));
        answers.extend(
            t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &a, 0))
                .dns_answers,
        );
        let got = std::mem::take(&mut answers);
        assert_eq!(got[0].ttl, Duration::from_secs(86_400));
        assert_eq!(t.stats().dns_ttl_capped, 1);
        let (_, _, expires) = t.dns_entries().next().unwrap();
        assert_eq!(expires, ts(86_400));
    }

    #[test]
    fn observed_the_dns_answers_of_a_copy() {
        let mut t = strict();
        let q = dns_msg(7, "www.dropbox.com", None);
        let seen = t.observe_payload(&live_dns(CLIENT, RESOLVER, Direction::Up, &q, 0));
        assert_eq!(
            seen.named,
            Some((Arc::from("www.dropbox.com"), NameSource::Dns))
        );
        assert!(seen.dns_answers.is_empty());
        let a = dns_msg(7, "www.dropbox.com", Some(([162, 125, 1, 1], 300)));
        let seen = t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &a, 1));
        assert_eq!(
            seen.dns_answers,
            [DnsAnswer {
                client: IpAddr::V4(Ipv4Addr::from(CLIENT.0)),
                name: "www.dropbox.com".into(),
                ip: IpAddr::V4(Ipv4Addr::new(162, 125, 1, 1)),
                ttl: Duration::from_secs(300),
            }]
        );
        // A copy carries its own answers only: nothing is held for the next one.
        let seen = t.observe_payload(&live_dns(CLIENT, RESOLVER, Direction::Up, &q, 2));
        assert!(seen.dns_answers.is_empty());
    }
}
