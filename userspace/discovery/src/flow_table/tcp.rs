//! Naming a TCP flow from one side's reassembled stream: a TLS ClientHello's SNI, an HTTP
//! request head's Host, or DNS over TCP.

use chrono::{DateTime, Utc};
use tollgate_wire::{dns, http, tls};

use super::{CanonKey, Evidence, FlowTable, Meta, StreamKind, set_client, source_label};
use crate::record::NameSource;

impl FlowTable {
    /// Try to name a TCP flow from one side's contiguous stream.
    pub(super) fn tcp_stream(&mut self, ck: CanonKey, side: usize, ts: DateTime<Utc>) {
        let Some(f) = self.flows.get_mut(&ck) else {
            return;
        };
        let Some(insp) = f.inspect.as_deref_mut() else {
            return;
        };
        let Some(s) = insp.sides.get_mut(side) else {
            return;
        };
        let Some(r) = s.stream.as_ref() else { return };
        let buf = r.contiguous();
        let full = r.is_full();
        // This side's stream has told all it will (a hello or head parsed, not one, or
        // the buffer full): its parse state can go.
        let mut side_judged = false;
        let mut found: Option<(String, NameSource)> = None;
        let mut sender_is_client: Option<bool> = None;
        let mut meta: Option<Meta> = None;
        let mut errs: Vec<String> = Vec::new();
        let mut dns_msgs: Vec<dns::Message> = Vec::new();
        if s.kind == StreamKind::Dns
            || (s.kind == StreamKind::Unknown && (ck.a.1 == 53 || ck.b.1 == 53))
        {
            s.kind = StreamKind::Dns;
            loop {
                let rest = buf.get(s.dns_parsed..).unwrap_or(&[]);
                match dns::parse_tcp_stream(rest) {
                    Ok(dns::TcpStatus::Parsed(m, n)) => {
                        s.dns_parsed += n;
                        dns_msgs.push(m);
                    }
                    Ok(dns::TcpStatus::NeedMore(_)) => {
                        side_judged = full;
                        break;
                    }
                    Err(e) => {
                        errs.push(format!("dns:{}", e.kind()));
                        side_judged = true;
                        break;
                    }
                }
            }
        } else {
            match tls::parse_record_stream(buf) {
                Ok(tls::HelloStatus::Parsed(ch)) => {
                    side_judged = true;
                    sender_is_client = Some(true);
                    if self.limits.meta {
                        let mut m = Meta::default();
                        let grease = self.dns.ech_grease(ch.sni.as_deref(), ch.ech.is_some());
                        m.set_hello(&ch, tls::Transport::Tcp, grease, self.limits.fingerprints);
                        meta = Some(m);
                    }
                    if let Some(sni) = ch.sni {
                        found = Some((sni, NameSource::Sni));
                    }
                }
                Ok(tls::HelloStatus::NeedMore(_)) => side_judged = full,
                Err(e) => {
                    errs.push(format!("tls:{}", e.kind()));
                    side_judged = true;
                }
                Ok(tls::HelloStatus::NotTls) => match http::parse_request_head(buf) {
                    Ok(http::HttpStatus::Parsed(h)) => {
                        side_judged = true;
                        sender_is_client = Some(true);
                        if let Some(host) = h.host_name() {
                            found = Some((host.to_string(), NameSource::Http));
                        }
                        if self.limits.meta {
                            let mut m = Meta::default();
                            let x = m.extra();
                            x.http_method = Some(h.method.as_str().into());
                            x.http_path = Some(h.path.as_str().into());
                            x.user_agent = h.user_agent.as_deref().map(Into::into);
                            meta = Some(m);
                        }
                    }
                    Ok(http::HttpStatus::NeedMore(_)) => {
                        if full {
                            side_judged = true;
                        }
                        // A head cut by the cap or by the end of the capture still names the
                        // flow by its Host line; a later complete parse cannot disagree.
                        if let Some(h) = http::partial_host(buf) {
                            sender_is_client = Some(true);
                            let probe = http::RequestHead {
                                method: String::new(),
                                path: String::new(),
                                version: 1,
                                host: Some(h),
                                user_agent: None,
                                head_len: 0,
                            };
                            if let Some(n) = probe.host_name() {
                                found = Some((n.to_string(), NameSource::Http));
                            }
                        }
                    }
                    Ok(http::HttpStatus::NotHttp) => side_judged = true,
                    Err(e) => {
                        errs.push(format!("http:{}", e.kind()));
                        side_judged = true;
                    }
                },
            }
        }
        if side_judged {
            s.kind = StreamKind::Done;
            if let Some(r) = s.stream.take() {
                self.buffered = self.buffered.saturating_sub(r.buffered());
            }
            // Both directions judged: the per-flow parse state is no longer needed.
            if insp.sides.iter().all(|x| x.kind == StreamKind::Done) {
                f.inspect = None;
            }
        }
        for e in errs {
            *self.stats.parse_errors.entry(e).or_default() += 1;
        }
        for m in dns_msgs {
            self.dns_message(ck, side, ts, &m);
        }
        let live = self.flows.len();
        let Some(f) = self.flows.get_mut(&ck) else {
            return;
        };
        if let Some(c) = sender_is_client {
            set_client(f, side, c, Evidence::Payload);
        }
        if let Some(m) = meta
            && f.meta.is_none()
        {
            f.meta = Some(Box::new(m));
        }
        if let Some((name, src)) = found
            && f.name.is_none()
        {
            *self
                .stats
                .names_by_source
                .entry(source_label(src))
                .or_default() += 1;
            f.name = Some(self.names.get(&name, live));
            f.name_source = Some(src);
            // Named: the buffers are no longer needed.
            if ck.a.1 != 53 && ck.b.1 != 53 {
                let insp = f.inspect.take();
                self.release(insp.as_deref());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn sni_split_over_segments_out_of_order_with_retransmit() {
        let mut t = FlowTable::new(FlowTableLimits::default());
        let c = [10, 0, 0, 2];
        let s = [93, 184, 216, 34];
        let h = hello("www.example.com");
        t.observe_packet(&pkt(
            s,
            443,
            c,
            50000,
            L4Proto::Tcp,
            7000,
            tcp_flags::SYN | tcp_flags::ACK,
            &[],
            0,
        ));
        t.observe_packet(&pkt(
            c,
            50000,
            s,
            443,
            L4Proto::Tcp,
            1000,
            tcp_flags::SYN,
            &[],
            0,
        ));
        let (a, rest) = h.split_at(20);
        let (b, d) = rest.split_at(30);
        t.observe_packet(&pkt(
            c,
            50000,
            s,
            443,
            L4Proto::Tcp,
            1001 + 50,
            tcp_flags::ACK,
            d,
            1,
        ));
        t.observe_packet(&pkt(
            c,
            50000,
            s,
            443,
            L4Proto::Tcp,
            1001,
            tcp_flags::ACK,
            a,
            1,
        ));
        t.observe_packet(&pkt(
            c,
            50000,
            s,
            443,
            L4Proto::Tcp,
            1001,
            tcp_flags::ACK,
            a,
            1,
        ));
        assert_eq!(t.records().next().and_then(|r| r.name), None);
        t.observe_packet(&pkt(
            c,
            50000,
            s,
            443,
            L4Proto::Tcp,
            1021,
            tcp_flags::ACK,
            b,
            2,
        ));
        let r: Vec<FlowRecord> = t.records().collect();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].name.as_deref(), Some("www.example.com"));
        assert_eq!(r[0].name_source, Some(NameSource::Sni));
        assert_eq!(r[0].src, IpAddr::V4(Ipv4Addr::from(c)));
        assert_eq!(r[0].packets_up, 5);
        assert_eq!(r[0].packets_down, 1);
        assert_eq!(t.stats().names_by_source.get("sni"), Some(&1));
    }

    #[test]
    fn http_host_and_idle_expiry() {
        let mut t = FlowTable::new(FlowTableLimits {
            idle_timeout: Duration::from_secs(10),
            ..Default::default()
        });
        let req = b"GET /x HTTP/1.1\r\nHost: example.org\r\nUser-Agent: t\r\n\r\n";
        t.observe_packet(&pkt(
            [10, 0, 0, 2],
            5555,
            [1, 1, 1, 1],
            80,
            L4Proto::Tcp,
            9,
            tcp_flags::ACK,
            req,
            0,
        ));
        t.expire(ts(100));
        let s = t.stats();
        assert_eq!((s.flows, s.finished_flows, s.flows_expired), (0, 1, 1));
        let r: Vec<FlowRecord> = t.records().collect();
        assert_eq!(r[0].name.as_deref(), Some("example.org"));
        assert_eq!(r[0].name_source, Some(NameSource::Http));
        assert_eq!(t.drain_finished().len(), 1);
        assert_eq!(t.records().count(), 0);
    }

    #[test]
    fn observed_a_later_host_on_a_named_connection() {
        let mut t = FlowTable::new(FlowTableLimits::default());
        let first = b"GET / HTTP/1.1\r\nHost: allowed.example\r\n\r\n";
        let seen = t.observe_payload(&live(L4Proto::Tcp, Direction::Up, 1, first));
        assert_eq!(
            seen.named,
            Some((Arc::from("allowed.example"), NameSource::Http))
        );
        assert_eq!(seen.later_http_host, None);
        // The connection is kept alive and reused for another Host: the flow keeps its name,
        // and the later head's Host is reported.
        let later = b"GET /x HTTP/1.1\r\nHost: Blocked.Example:8080\r\n\r\n";
        let seq = 1 + first.len() as u32;
        let seen = t.observe_payload(&live(L4Proto::Tcp, Direction::Up, seq, later));
        assert_eq!(seen.named, None);
        assert_eq!(seen.later_http_host.as_deref(), Some("Blocked.Example"));
        // Not a request head, or from the server: nothing.
        let seen = t.observe_payload(&live(L4Proto::Tcp, Direction::Up, 999, b"\x16\x03\x01"));
        assert_eq!(seen, Observed::default());
        let answer = b"GET / HTTP/1.1\r\nHost: from.server\r\n\r\n";
        let seen = t.observe_payload(&live(L4Proto::Tcp, Direction::Down, 5, answer));
        assert_eq!(seen.later_http_host, None);
    }
}
