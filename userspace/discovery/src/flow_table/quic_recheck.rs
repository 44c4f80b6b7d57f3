//! QUIC flows read again on later Initials. The flow table names a flow once, from its
//! first readable Initial; a client can send a decoy Initial first (with a bad UDP checksum,
//! so that the server drops it) that names an allowed app, get an Allow that ends the kernel's
//! hold, and then send the real Initial. Every later client Initial of a QUIC-named live flow
//! is read here on its own: when its ClientHello (reassembled across the datagrams of one
//! connection id) names another server, [`super::Observed::quic_renamed`] says so, and the
//! daemon decides the flow again with that name.

use std::collections::HashMap;

use tollgate_wire::{quic, reasm::CryptoReassembler, tls};

use super::CanonKey;

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
    use super::*;

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
}
