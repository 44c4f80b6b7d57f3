//! Which side of a flow is the client: the evidence for it and how strong it is.

use tollgate_wire::{http, tls};

use super::{Endpoint, Flow};
use crate::packet::tcp_flags;
use crate::record::L4Proto;

/// Strength of the evidence for which side is the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Evidence {
    FirstPacket = 0,
    Port = 1,
    Payload = 2,
    Syn = 3,
    Given = 4,
}

pub(super) fn set_client(f: &mut Flow, side: usize, sender_is_client: bool, strength: Evidence) {
    // Only stronger evidence changes an earlier decision.
    if strength > f.evidence {
        f.client = u8::from((if sender_is_client { side } else { 1 - side }) == 1);
        f.evidence = strength;
    }
}

/// Ports that mark the server side of a flow when nothing better is known.
fn is_service_port(p: u16) -> bool {
    p < 1024
        || matches!(
            p,
            1080 | 1194
                | 1433
                | 1521
                | 1723
                | 1883
                | 3128
                | 3306
                | 3389
                | 3478
                | 4443
                | 5060
                | 5061
                | 5222
                | 5228
                | 5353
                | 5432
                | 5938
                | 6379
                | 8000
                | 8008
                | 8080
                | 8081
                | 8443
                | 8801
                | 8802
                | 8883
                | 8888
                | 9000
                | 9443
                | 19302
        )
}

/// Client evidence carried by one packet alone (no flow state): SYN flags, a payload that
/// only a client sends, or ports.
pub(super) fn packet_evidence(
    proto: L4Proto,
    sender: Endpoint,
    receiver: Endpoint,
    flags: u8,
    payload: &[u8],
) -> Option<(bool, Evidence)> {
    if proto == L4Proto::Tcp && flags & tcp_flags::SYN != 0 {
        return Some((flags & tcp_flags::ACK == 0, Evidence::Syn));
    }
    if !payload.is_empty() {
        match proto {
            L4Proto::Tcp => {
                // A TLS handshake record holding a ClientHello, or an HTTP request line.
                if tls::starts_client_hello_record(payload) {
                    return Some((true, Evidence::Payload));
                }
                if http::looks_like_request(payload) && payload.len() >= 4 {
                    return Some((true, Evidence::Payload));
                }
            }
            L4Proto::Udp => {
                if (sender.1 == 53 || receiver.1 == 53) && payload.len() >= 12 {
                    let qr = payload.get(2).is_some_and(|b| b & 0x80 != 0);
                    return Some((!qr, Evidence::Payload));
                }
            }
        }
    }
    let (s, r) = (is_service_port(sender.1), is_service_port(receiver.1));
    match (s, r) {
        (false, true) => Some((true, Evidence::Port)),
        (true, false) => Some((false, Evidence::Port)),
        (true, true) if sender.1 != receiver.1 => Some((sender.1 > receiver.1, Evidence::Port)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn client_mac_follows_the_client_side() {
        let mut t = FlowTable::new(FlowTableLimits::default());
        let (user, server) = ([192, 168, 1, 9], [203, 0, 113, 5]);
        // The server's packet comes first (a capture that starts mid-flow), then the user's
        // SYN settles who the client is.
        let mut p = pkt(
            server,
            443,
            user,
            50000,
            L4Proto::Tcp,
            7,
            tcp_flags::ACK,
            &[],
            0,
        );
        p.src_mac = Some([2, 0, 0, 0, 0, 2]);
        t.observe_packet(&p);
        let mut p = pkt(
            user,
            50000,
            server,
            443,
            L4Proto::Tcp,
            1,
            tcp_flags::SYN,
            &[],
            1,
        );
        p.src_mac = Some([2, 0, 0, 0, 0, 1]);
        t.observe_packet(&p);
        let r: Vec<FlowRecord> = t.records().collect();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].src, IpAddr::V4(Ipv4Addr::from(user)));
        assert_eq!(r[0].src_mac, Some([2, 0, 0, 0, 0, 1]));
    }
}
