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
                        let grease = self.ech.grease(ch.sni.as_deref(), ch.ech.is_some());
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
