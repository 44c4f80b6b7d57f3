//! What a flow's first flight told beyond its name: the public [`FlowMeta`] and the compact
//! form the table keeps per flow.

use tollgate_wire::{quic, tls};

/// What the first flight told beyond the name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowMeta {
    pub ja4: Option<String>,
    pub alpn: Vec<String>,
    /// The ClientHello carried an encrypted_client_hello extension.
    pub ech: bool,
    /// The ClientHello offered a post-quantum hybrid key share (X25519MLKEM768...).
    pub pq_key_share: bool,
    /// For a hello with ECH: `Some(true)` when it must be GREASE (a DNS HTTPS record for
    /// the name was seen and published no ECH config), `Some(false)` when it is real ECH
    /// (the outer SNI is the public_name of an ECH config seen in DNS), `None` when the
    /// table cannot tell (GREASE is built to look real).
    pub ech_grease: Option<bool>,
    /// QUIC version label ("V-1", "Draft-29", "Q046"...), for QUIC flows.
    pub quic_version: Option<String>,
    /// Every distinct question name seen on a DNS flow (queries and responses), up to
    /// [`MAX_DNS_QUERIES_KEPT`](super::MAX_DNS_QUERIES_KEPT); the flow's name is the first.
    pub dns_queries: Vec<String>,
    pub http_method: Option<String>,
    pub http_path: Option<String>,
    pub user_agent: Option<String>,
}

/// Compact per-flow storage of [`FlowMeta`] (a flow table holds many; the public form is
/// built on demand).
#[derive(Debug, Default)]
pub(super) struct Meta {
    pub(super) ja4: Option<[u8; 36]>,
    pub(super) alpn: Box<[Box<str>]>,
    /// 1: ECH extension present; 2: post-quantum key share.
    pub(super) bits: u8,
    pub(super) ech_grease: Option<bool>,
    pub(super) quic_version: Option<u32>,
    pub(super) extra: Option<Box<MetaExtra>>,
}

/// The rarer parts: HTTP and DNS flows.
#[derive(Debug, Default)]
pub(super) struct MetaExtra {
    pub(super) dns_queries: Vec<Box<str>>,
    pub(super) http_method: Option<Box<str>>,
    pub(super) http_path: Option<Box<str>>,
    pub(super) user_agent: Option<Box<str>>,
}

impl Meta {
    pub(super) fn set_hello(
        &mut self,
        ch: &tls::ClientHello,
        t: tls::Transport,
        grease: Option<bool>,
        with_ja4: bool,
    ) {
        if with_ja4 {
            self.ja4 = ch.ja4(t).as_bytes().try_into().ok();
        }
        self.alpn = ch.alpn.iter().map(|a| a.as_str().into()).collect();
        self.bits = u8::from(ch.ech.is_some()) | (u8::from(ch.has_pq_key_share()) << 1);
        self.ech_grease = grease;
    }

    pub(super) fn extra(&mut self) -> &mut MetaExtra {
        self.extra.get_or_insert_with(Default::default)
    }

    pub(super) fn to_public(&self) -> FlowMeta {
        let x = self.extra.as_deref();
        let s = |v: Option<&Box<str>>| v.map(|b| b.to_string());
        FlowMeta {
            ja4: self.ja4.map(|j| String::from_utf8_lossy(&j).into_owned()),
            alpn: self.alpn.iter().map(|a| a.to_string()).collect(),
            ech: self.bits & 1 != 0,
            pq_key_share: self.bits & 2 != 0,
            ech_grease: self.ech_grease,
            quic_version: self.quic_version.map(|v| quic::VersionKind::of(v).label()),
            dns_queries: x
                .map(|x| x.dns_queries.iter().map(|q| q.to_string()).collect())
                .unwrap_or_default(),
            http_method: s(x.and_then(|x| x.http_method.as_ref())),
            http_path: s(x.and_then(|x| x.http_path.as_ref())),
            user_agent: s(x.and_then(|x| x.user_agent.as_ref())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn naming_is_reported_once_and_meta_can_be_off() {
        for keep_meta in [true, false] {
            let mut t = FlowTable::new(FlowTableLimits {
                meta: keep_meta,
                ..FlowTableLimits::default()
            });
            let h = hello_with("once.example.org", true);
            let (a, b) = h.split_at(40);
            let mut named = Vec::new();
            // The second segment names the flow; a retransmission of it does not again.
            for (seq, part) in [(1u32, a), (41, b), (41, b)] {
                let got = t.observe_payload(&PayloadObservation {
                    flow: FlowTuple::of_packet(
                        L4Proto::Tcp,
                        (IpAddr::V4(Ipv4Addr::new(10, 1, 1, 1)), 40000),
                        (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 80)), 443),
                        Direction::Up,
                    ),
                    direction: Direction::Up,
                    ts: ts(0),
                    tcp_seq: seq,
                    tcp_flags: tcp_flags::ACK,
                    payload: part,
                });
                named.push(got.named.map(|(n, src)| (n.to_string(), src)));
            }
            assert_eq!(
                named,
                [
                    None,
                    Some(("once.example.org".to_string(), NameSource::Sni)),
                    None
                ]
            );
            let (rec, meta) = t.records_with_meta().next().expect("one flow");
            assert_eq!(rec.name.as_deref(), Some("once.example.org"));
            // The hello carried an ECH extension: only kept meta tells.
            assert_eq!(meta.ech, keep_meta, "meta kept: {keep_meta}");
        }
    }
}
