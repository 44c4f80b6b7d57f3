//! Naming a QUIC flow from its client Initials (decrypted, CRYPTO frames reassembled across
//! datagrams) or a gQUIC CHLO, and reading a named flow's later Initials again.
//!
//! QUIC flows are read again on later Initials. The flow table names a flow once, from its
//! first readable Initial; a client can send a decoy Initial first (with a bad UDP checksum,
//! so that the server drops it) that names an allowed app, get an Allow that ends the kernel's
//! hold, and then send the real Initial. Every later client Initial of a QUIC-named live flow
//! is read here on its own: when its ClientHello (reassembled across the datagrams of one
//! connection id) names another server, [`super::Observed::quic_renamed`] says so, and the
//! daemon decides the flow again with that name.

use std::collections::HashMap;

use tollgate_wire::reasm::CryptoReassembler;
use tollgate_wire::{quic, tls};

use super::{CanonKey, Evidence, FlowTable, Meta, new_inspect, set_client};
use crate::record::NameSource;

impl FlowTable {
    pub(super) fn udp_quic(&mut self, ck: CanonKey, side: usize, payload: &[u8]) {
        let limits = self.limits.clone();
        let live = self.flows.len();
        let Some(f) = self.flows.get_mut(&ck) else {
            return;
        };
        // Packets from a side known to be the server are not client Initials.
        if f.evidence >= Evidence::Payload && usize::from(f.client) != side {
            return;
        }
        let Some(version) = quic::sniff_version(payload) else {
            return;
        };
        let kind = quic::VersionKind::of(version);
        if matches!(
            kind,
            quic::VersionKind::Negotiation
                | quic::VersionKind::Grease
                | quic::VersionKind::Unknown(_)
        ) {
            return;
        }
        let insp = f.inspect.get_or_insert_with(new_inspect);
        let Some(s) = insp.sides.get_mut(side) else {
            return;
        };
        if s.inspected >= limits.max_inspect_packets {
            return;
        }
        s.inspected += 1;
        // Without `limits.meta` the parse still runs (it names the flow); what it tells
        // beyond the name goes to a scratch value that is dropped.
        let mut scratch = Meta::default();
        let meta = if limits.meta {
            f.meta.get_or_insert_with(Default::default)
        } else {
            &mut scratch
        };
        if meta.quic_version.is_none() {
            meta.quic_version = Some(version);
        }
        let d = match quic::parse_client_datagram_with(payload, insp.quic_dcid.as_deref()) {
            Ok(d) => {
                if insp.quic_dcid.is_none() && d.initials > 0 {
                    insp.quic_dcid = Some(d.dcid.clone());
                }
                d
            }
            Err(tollgate_wire::Error::Decrypt) => {
                self.stats.quic_undecryptable += 1;
                return;
            }
            Err(e) => {
                *self
                    .stats
                    .parse_errors
                    .entry(format!("quic:{}", e.kind()))
                    .or_default() += 1;
                return;
            }
        };
        let mut found: Option<String> = None;
        let mut client_hello: Option<tls::ClientHello> = None;
        let mut err: Option<String> = None;
        if let Some(chlo) = &d.chlo {
            found = chlo.sni.clone();
            if let Some(ua) = &chlo.user_agent {
                meta.extra().user_agent = Some(ua.as_str().into());
            }
        }
        let is_initial_sender = d.initials > 0 || d.chlo.is_some();
        if !d.crypto.is_empty() {
            let c = insp
                .crypto
                .get_or_insert_with(|| CryptoReassembler::new(limits.max_stream_bytes));
            let before = c.dropped_bytes;
            let held = c.buffered();
            let incoming: usize = d.crypto.iter().map(|f| f.data.len()).sum();
            if self.buffered + incoming > limits.max_buffered_bytes {
                self.stats.buffer_budget_drops += 1;
            } else {
                for fr in &d.crypto {
                    c.insert(fr.offset, &fr.data);
                }
            }
            self.buffered = (self.buffered + c.buffered()).saturating_sub(held);
            self.stats.reassembly_dropped_bytes += c.dropped_bytes - before;
            match tls::parse_handshake_stream(c.contiguous()) {
                Ok(tls::HelloStatus::Parsed(ch)) => client_hello = Some(ch),
                Ok(_) => {}
                Err(e) => err = Some(format!("quic-tls:{}", e.kind())),
            }
        }
        if let Some(e) = err {
            *self.stats.parse_errors.entry(e).or_default() += 1;
            if let Some(c) = insp.crypto.take() {
                self.buffered = self.buffered.saturating_sub(c.buffered());
            }
        }
        if let Some(ch) = client_hello {
            let grease = self.dns.ech_grease(ch.sni.as_deref(), ch.ech.is_some());
            meta.set_hello(&ch, tls::Transport::Quic, grease, self.limits.fingerprints);
            found = ch.sni;
            if let Some(c) = insp.crypto.take() {
                self.buffered = self.buffered.saturating_sub(c.buffered());
            }
            // The hello is done: nothing more to learn from this flow's Initials.
            if let Some(s) = insp.sides.get_mut(side) {
                s.inspected = limits.max_inspect_packets;
            }
        }
        if is_initial_sender {
            set_client(f, side, true, Evidence::Payload);
        }
        if let Some(n) = found.filter(|n| !n.is_empty())
            && f.name.is_none()
        {
            *self.stats.names_by_source.entry("quic").or_default() += 1;
            f.name = Some(self.names.get(&n, live));
            f.name_source = Some(NameSource::Quic);
        }
    }
}

/// Named QUIC flows followed at once; past this the table starts afresh (counted in
/// `forgotten`), so a flood of QUIC flows cannot grow the table's memory.
const MAX_FLOWS: usize = 4096;
/// CRYPTO bytes held per flow (a post-quantum ClientHello is about 2 KB).
const MAX_CRYPTO: usize = 16 * 1024;

#[derive(Debug)]
struct Followed {
    /// The name the flow was last decided on.
    name: String,
    /// Destination connection id of the Initials being reassembled.
    dcid: Vec<u8>,
    crypto: CryptoReassembler,
}

/// The followed flows and what happened to them.
#[derive(Debug, Default)]
pub(super) struct QuicRecheck {
    flows: HashMap<CanonKey, Followed>,
    /// Flows renamed by a later Initial.
    pub renamed: u64,
    /// Flows forgotten because the table was full.
    pub forgotten: u64,
}

impl QuicRecheck {
    /// The flow table named `key` as `name` from its own Initial.
    pub fn named(&mut self, key: CanonKey, name: &str) {
        if self.flows.len() >= MAX_FLOWS && !self.flows.contains_key(&key) {
            self.forgotten += self.flows.len() as u64;
            self.flows.clear();
        }
        self.flows.insert(
            key,
            Followed {
                name: name.to_string(),
                dcid: Vec::new(),
                crypto: CryptoReassembler::new(MAX_CRYPTO),
            },
        );
    }

    /// A later client datagram of a named flow: the new name when its Initials complete a
    /// ClientHello that names another server than the one the flow was decided on.
    pub fn initial(&mut self, key: &CanonKey, dgram: &[u8]) -> Option<String> {
        let f = self.flows.get_mut(key)?;
        // Its own connection id: a new connection attempt on the same ports (the decoy's
        // successor). Later Initials of the connection itself use the server's id and do not
        // decrypt with it; they carry no new hello anyway.
        let d = quic::parse_client_datagram(dgram).ok()?;
        if d.initials == 0 || d.crypto.is_empty() {
            return None;
        }
        if f.dcid != d.dcid {
            f.dcid = d.dcid.clone();
            f.crypto = CryptoReassembler::new(MAX_CRYPTO);
        }
        for fr in &d.crypto {
            f.crypto.insert(fr.offset, &fr.data);
        }
        let Ok(tls::HelloStatus::Parsed(ch)) = tls::parse_handshake_stream(f.crypto.contiguous())
        else {
            return None;
        };
        f.crypto = CryptoReassembler::new(MAX_CRYPTO);
        let sni = ch.sni.filter(|s| !s.is_empty())?;
        if sni.eq_ignore_ascii_case(&f.name) {
            return None;
        }
        f.name = sni.clone();
        self.renamed += 1;
        Some(sni)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::*;
    use std::net::Ipv4Addr;

    fn capture(name: &str) -> Vec<u8> {
        let path = format!("{}/../wire/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).expect("capture present")
    }

    fn key() -> CanonKey {
        key_with_port(50000)
    }

    fn key_with_port(port: u16) -> CanonKey {
        let ip = std::net::IpAddr::from([10, 0, 0, 2]);
        CanonKey::of(
            crate::record::L4Proto::Udp,
            (ip, port),
            (std::net::IpAddr::from([192, 0, 2, 1]), 443),
        )
        .0
    }

    #[test]
    fn a_later_initial_naming_another_server_renames_the_flow() {
        let mut r = QuicRecheck::default();
        let k = key();
        // Not followed before the flow table named it.
        assert_eq!(r.initial(&k, &capture("quic_v2_initial.bin")), None);
        // The decoy named the flow "allowed.example"; the real Initial names "test".
        r.named(k, "allowed.example");
        assert_eq!(
            r.initial(&k, &capture("quic_v2_initial.bin")).as_deref(),
            Some("test")
        );
        assert_eq!(r.renamed, 1);
        // The same hello again (a retransmission) changes nothing; another one does.
        assert_eq!(r.initial(&k, &capture("quic_v2_initial.bin")), None);
        assert_eq!(
            r.initial(&k, &capture("quic_draft29_initial.bin"))
                .as_deref(),
            Some("localhost")
        );
        // Not QUIC, or undecryptable: nothing.
        assert_eq!(r.initial(&k, &[0xc3, 0, 0, 0, 1, 0, 0]), None);
        assert_eq!(r.renamed, 2);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut r = QuicRecheck::default();
        for p in 0..=MAX_FLOWS {
            r.named(key_with_port(p as u16), "x");
        }
        assert!(r.flows.len() <= MAX_FLOWS);
        assert_eq!(r.forgotten, MAX_FLOWS as u64);
    }

    #[test]
    fn observed_a_quic_flow_renamed_by_a_later_initial() {
        let mut t = FlowTable::new(FlowTableLimits::default());
        let decoy = capture("quic_draft29_initial.bin");
        let real = capture("quic_v2_initial.bin");
        let seen = t.observe_payload(&live(L4Proto::Udp, Direction::Up, 0, &decoy));
        assert_eq!(seen.named, Some((Arc::from("localhost"), NameSource::Quic)));
        assert_eq!(seen.quic_renamed, None);
        // The real Initial names another server: reported, once; the flow keeps its name.
        let seen = t.observe_payload(&live(L4Proto::Udp, Direction::Up, 0, &real));
        assert_eq!(seen.named, None);
        assert_eq!(seen.quic_renamed.as_deref(), Some("test"));
        let seen = t.observe_payload(&live(L4Proto::Udp, Direction::Up, 0, &real));
        assert_eq!(seen.quic_renamed, None);
        assert_eq!(t.stats().quic_renamed, 1);
        let user = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let server = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 80));
        assert_eq!(
            t.own_name(&FlowTuple::new(L4Proto::Udp, (user, 40000), (server, 443))),
            Some(("localhost", NameSource::Quic))
        );
    }
}
