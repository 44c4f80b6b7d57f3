//! L2/L3/L4 decoding of captured frames into [`PacketView`]s for the flow table.
//!
//! etherparse does the header work (Ethernet II, 802.1Q/802.1ad VLAN tags, Linux SLL,
//! IPv4 with options, IPv6 with extension headers, TCP, UDP) in its lax mode, so frames cut
//! by a capture's snap length still yield their headers. This module adds what the corpus
//! needs on top: Linux SLL2, BSD loopback, IPv4-in-IPv6 / IPv6-in-IPv4 tunnels, and the
//! first fragment of a fragmented datagram (its transport header is there; later fragments
//! are counted, not decoded).

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use etherparse::{EtherType, IpNumber, LaxNetSlice, LaxSlicedPacket, TransportSlice};

use crate::record::L4Proto;

/// Link layers we decode (pcap LINKTYPE_* values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    Ethernet,
    /// Linux cooked capture v1 (LINKTYPE_LINUX_SLL, 113).
    LinuxSll,
    /// Linux cooked capture v2 (LINKTYPE_LINUX_SLL2, 276).
    LinuxSll2,
    /// Raw IPv4 or IPv6 (LINKTYPE_RAW 101, IPV4 228, IPV6 229, DLT_RAW 12/14).
    RawIp,
    /// BSD loopback (LINKTYPE_NULL 0, LOOP 108): 4-byte address family.
    Null,
    Other(u32),
}

impl LinkType {
    pub fn from_linktype(v: u32) -> Self {
        match v {
            1 => LinkType::Ethernet,
            113 => LinkType::LinuxSll,
            276 => LinkType::LinuxSll2,
            101 | 228 | 229 | 12 | 14 => LinkType::RawIp,
            0 | 108 => LinkType::Null,
            v => LinkType::Other(v),
        }
    }
}

/// TCP flag bits as on the wire (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10), defined
/// once in the kernel/user ABI.
pub use tollgate_common::tcp_flags;

/// One decoded TCP or UDP packet, borrowing its payload from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketView<'a> {
    pub ts: DateTime<Utc>,
    pub proto: L4Proto,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// Bytes counted for the flow: the IP packet's length (header included) as declared in
    /// its header (not the captured length, which a snap length may cut).
    pub ip_len: u32,
    pub tcp_seq: u32,
    pub tcp_flags: u8,
    pub payload: &'a [u8],
    /// Sender's MAC address, where the link layer carries one.
    pub src_mac: Option<[u8; 6]>,
}

/// Result of decoding one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    Packet(PacketView<'a>),
    /// A non-first IP fragment (or a fragment of a protocol we do not follow).
    Fragment,
    /// Not TCP/UDP over IP (ARP, ICMP, unknown link layer ...).
    Other,
    /// Headers that do not parse.
    Malformed,
}

/// Decode one captured frame.
pub fn decode(link: LinkType, frame: &[u8], ts: DateTime<Utc>) -> Decoded<'_> {
    let (sliced, mac) = match link {
        LinkType::Ethernet => match LaxSlicedPacket::from_ethernet(frame) {
            Ok(p) => {
                let mac = match &p.link {
                    Some(etherparse::LinkSlice::Ethernet2(e)) => Some(e.source()),
                    _ => None,
                };
                (p, mac)
            }
            Err(_) => return Decoded::Malformed,
        },
        LinkType::LinuxSll => {
            let (Some(hdr), Some(rest)) = (frame.get(..16), frame.get(16..)) else {
                return Decoded::Malformed;
            };
            let proto = u16::from_be_bytes([hdr[14], hdr[15]]);
            (
                LaxSlicedPacket::from_ether_type(EtherType(proto), rest),
                None,
            )
        }
        LinkType::LinuxSll2 => {
            let (Some(hdr), Some(rest)) = (frame.get(..20), frame.get(20..)) else {
                return Decoded::Malformed;
            };
            let proto = u16::from_be_bytes([hdr[0], hdr[1]]);
            (
                LaxSlicedPacket::from_ether_type(EtherType(proto), rest),
                None,
            )
        }
        LinkType::RawIp => match LaxSlicedPacket::from_ip(frame) {
            Ok(p) => (p, None),
            Err(_) => return Decoded::Malformed,
        },
        LinkType::Null => {
            let (Some(hdr), Some(rest)) = (frame.get(..4), frame.get(4..)) else {
                return Decoded::Malformed;
            };
            // The family is in host order of the capturing machine: accept both.
            let fam = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let fam = if fam > 0xffff { fam.swap_bytes() } else { fam };
            let et = match fam {
                2 => EtherType::IPV4,
                24 | 28 | 30 => EtherType::IPV6,
                _ => return Decoded::Other,
            };
            (LaxSlicedPacket::from_ether_type(et, rest), None)
        }
        LinkType::Other(_) => return Decoded::Other,
    };
    if sliced.net.is_none() {
        // PPPoE session frames carry IP behind a 6-byte PPPoE and a 2-byte PPP header.
        if let Some(ep) = sliced.ether_payload()
            && ep.ether_type == EtherType(0x8864)
        {
            return match pppoe_inner(ep.payload).map(LaxSlicedPacket::from_ip) {
                Some(Ok(inner)) => from_sliced(&inner, mac, ts, 1),
                _ => Decoded::Malformed,
            };
        }
    }
    from_sliced(&sliced, mac, ts, 0)
}

/// A flow's key read straight from a plain frame: `(proto, sender, receiver)`.
pub type FlowKey = (L4Proto, (IpAddr, u16), (IpAddr, u16));

/// The flow of a frame in the plainest case, without [`decode`]'s work: Ethernet II (or raw
/// IP) carrying an unfragmented IPv4 or IPv6 packet whose declared lengths fit the frame,
/// with TCP or UDP right after the IP header and its whole header present. For such a frame
/// [`decode`] gives a [`Decoded::Packet`] with this key (`tests/packet_peek.rs` checks this
/// on every frame of the captures and on mutated ones); anything else (VLAN tags, fragments,
/// tunnels, GTP, lengths the lax parser would trim, other link types) is `None`, and only
/// [`decode`] tells. A sharded capture import reads every frame's flow this way and decodes
/// only its own.
pub fn peek_flow(link: LinkType, frame: &[u8]) -> Option<FlowKey> {
    let ip = match link {
        LinkType::Ethernet => match frame.get(12..14)? {
            [0x08, 0x00] | [0x86, 0xdd] => frame.get(14..)?,
            _ => return None,
        },
        LinkType::RawIp => frame,
        _ => return None,
    };
    let (proto, src, dst, l4) = match ip.first()? >> 4 {
        4 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
            if ihl < 20 || total < ihl || frag & 0x3fff != 0 {
                return None;
            }
            let a: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let b: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (
                *ip.get(9)?,
                IpAddr::from(a),
                IpAddr::from(b),
                ip.get(ihl..total)?,
            )
        }
        6 => {
            let len = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            if len == 0 {
                return None;
            }
            let a: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let b: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (
                *ip.get(6)?,
                IpAddr::from(a),
                IpAddr::from(b),
                ip.get(40..40 + len)?,
            )
        }
        _ => return None,
    };
    let sport = u16::from_be_bytes([*l4.first()?, *l4.get(1)?]);
    let dport = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
    let proto = match proto {
        6 => {
            let offset = usize::from(l4.get(12)? >> 4) * 4;
            if offset < 20 || offset > l4.len() {
                return None;
            }
            L4Proto::Tcp
        }
        17 => {
            let len = usize::from(u16::from_be_bytes([*l4.get(4)?, *l4.get(5)?]));
            if len != l4.len() || len < 8 || sport == GTP_U_PORT || dport == GTP_U_PORT {
                return None;
            }
            L4Proto::Udp
        }
        _ => return None,
    };
    Some((proto, (src, sport), (dst, dport)))
}

/// The IP packet inside a PPPoE session payload.
fn pppoe_inner(p: &[u8]) -> Option<&[u8]> {
    let proto = u16::from_be_bytes([*p.get(6)?, *p.get(7)?]);
    matches!(proto, 0x0021 | 0x0057)
        .then(|| p.get(8..))
        .flatten()
}

/// GTP-U port (3GPP TS 29.281): mobile-core captures tunnel user traffic in UDP 2152.
const GTP_U_PORT: u16 = 2152;

/// The user IP packet inside a GTP-U G-PDU.
fn gtp_inner(p: &[u8]) -> Option<&[u8]> {
    let flags = *p.first()?;
    if flags >> 5 != 1 || flags & 0x10 == 0 || *p.get(1)? != 0xff {
        return None;
    }
    let mut off = 8usize;
    if flags & 0x07 != 0 {
        let mut next = *p.get(11)?;
        off = 12;
        let mut hops = 0;
        while flags & 0x04 != 0 && next != 0 && hops < 8 {
            let len = usize::from(*p.get(off)?) * 4;
            if len == 0 {
                return None;
            }
            next = *p.get(off + len - 1)?;
            off += len;
            hops += 1;
        }
    }
    let inner = p.get(off..)?;
    matches!(inner.first().map(|b| b >> 4), Some(4 | 6)).then_some(inner)
}

fn from_sliced<'a>(
    p: &LaxSlicedPacket<'a>,
    mac: Option<[u8; 6]>,
    ts: DateTime<Utc>,
    depth: u8,
) -> Decoded<'a> {
    let Some(net) = &p.net else {
        return if p.stop_err.is_some() {
            Decoded::Malformed
        } else {
            Decoded::Other
        };
    };
    let (src, dst, ip_len, first_fragment) = match net {
        LaxNetSlice::Ipv4(v4) => {
            let h = v4.header();
            let first = h.fragments_offset().value() == 0;
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                u32::from(h.total_len()),
                first,
            )
        }
        LaxNetSlice::Ipv6(v6) => {
            let h = v6.header();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                u32::from(h.payload_length()) + 40,
                // The first fragment is the one whose fragment header says offset 0.
                v6_first_fragment(v6.extensions().first_header(), v6.extensions().slice()),
            )
        }
        LaxNetSlice::Arp(_) => return Decoded::Other,
    };
    let Some(ipp) = net.ip_payload_ref() else {
        return Decoded::Other;
    };
    if !first_fragment {
        return Decoded::Fragment;
    }
    let mut view = PacketView {
        ts,
        proto: L4Proto::Udp,
        src,
        sport: 0,
        dst,
        dport: 0,
        ip_len,
        tcp_seq: 0,
        tcp_flags: 0,
        payload: &[],
        src_mac: mac,
    };
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            view.proto = L4Proto::Tcp;
            view.sport = t.source_port();
            view.dport = t.destination_port();
            view.tcp_seq = t.sequence_number();
            view.tcp_flags = tcp_flag_byte(t);
            view.payload = t.payload();
            return Decoded::Packet(view);
        }
        Some(TransportSlice::Udp(u)) => {
            if (u.source_port() == GTP_U_PORT || u.destination_port() == GTP_U_PORT)
                && depth < 2
                && let Some(Ok(inner)) = gtp_inner(u.payload()).map(LaxSlicedPacket::from_ip)
            {
                return from_sliced(&inner, mac, ts, depth + 1);
            }
            view.sport = u.source_port();
            view.dport = u.destination_port();
            view.payload = u.payload();
            return Decoded::Packet(view);
        }
        Some(_) => return Decoded::Other,
        None => {}
    }
    // Tunnels: IPv4 in IPv6 (4in6), IPv6 in IPv4 (6in4), IPv4 in IPv4.
    if !ipp.fragmented && (ipp.ip_number == IpNumber::IPV4 || ipp.ip_number == IpNumber::IPV6) {
        if depth >= 2 {
            return Decoded::Other;
        }
        return match LaxSlicedPacket::from_ip(ipp.payload) {
            Ok(inner) => from_sliced(&inner, mac, ts, depth + 1),
            Err(_) => Decoded::Malformed,
        };
    }
    if ipp.fragmented {
        if !first_fragment {
            return Decoded::Fragment;
        }
        // First fragment: the transport header is at the start of the payload.
        let pl = ipp.payload;
        if ipp.ip_number == IpNumber::UDP {
            let (Some(h), Some(rest)) = (pl.get(..8), pl.get(8..)) else {
                return Decoded::Fragment;
            };
            view.sport = u16::from_be_bytes([h[0], h[1]]);
            view.dport = u16::from_be_bytes([h[2], h[3]]);
            view.payload = rest;
            return Decoded::Packet(view);
        }
        if ipp.ip_number == IpNumber::TCP {
            return match etherparse::TcpSlice::from_slice(pl) {
                Ok(t) => {
                    view.proto = L4Proto::Tcp;
                    view.sport = t.source_port();
                    view.dport = t.destination_port();
                    view.tcp_seq = t.sequence_number();
                    view.tcp_flags = tcp_flag_byte(&t);
                    view.payload = t.payload();
                    Decoded::Packet(view)
                }
                Err(_) => Decoded::Fragment,
            };
        }
        return Decoded::Fragment;
    }
    if ipp.ip_number == IpNumber::TCP || ipp.ip_number == IpNumber::UDP {
        return Decoded::Malformed; // transport header did not parse
    }
    Decoded::Other
}

/// Walk the IPv6 extension headers (raw bytes, bounds-checked) to the fragment header and
/// tell whether this is the first fragment (offset 0), reading the offset by RFC 8200's
/// layout. Not etherparse's extension iterator: in 0.19 its lax-mode iterator reads past
/// the slice (found by the pcap_import fuzz target), and its Ipv6FragmentHeaderSlice reads
/// the offset from the wrong bits.
fn v6_first_fragment(first: Option<IpNumber>, exts: &[u8]) -> bool {
    let mut next = first.map(|n| n.0);
    let mut pos = 0usize;
    for _ in 0..8 {
        let len = match next {
            Some(44) => {
                return exts
                    .get(pos + 2..pos + 4)
                    .is_none_or(|b| u16::from_be_bytes([b[0], b[1]]) >> 3 == 0);
            }
            Some(0 | 43 | 60) => exts.get(pos + 1).map(|l| (usize::from(*l) + 1) * 8),
            Some(51) => exts.get(pos + 1).map(|l| (usize::from(*l) + 2) * 4),
            _ => return true,
        };
        let (Some(len), Some(&n)) = (len, exts.get(pos)) else {
            return true;
        };
        next = Some(n);
        pos += len;
    }
    true
}

fn tcp_flag_byte(t: &etherparse::TcpSlice<'_>) -> u8 {
    let mut f = 0;
    if t.fin() {
        f |= tcp_flags::FIN;
    }
    if t.syn() {
        f |= tcp_flags::SYN;
    }
    if t.rst() {
        f |= tcp_flags::RST;
    }
    if t.psh() {
        f |= tcp_flags::PSH;
    }
    if t.ack() {
        f |= tcp_flags::ACK;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
    }

    /// Ethernet + 802.1Q + IPv4 + UDP 53 (a DNS query header only).
    fn vlan_udp() -> Vec<u8> {
        let mut f = vec![
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x81, 0x00, 0x00, 0x0a, 0x08, 0x00,
        ];
        let payload = [0u8; 12];
        let total = 20 + 8 + payload.len();
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
        ]);
        f.extend_from_slice(&[10, 0, 0, 1, 8, 8, 8, 8]);
        f.extend_from_slice(&[0x30, 0x39, 0, 53, 0, 20, 0, 0]);
        f.extend_from_slice(&payload);
        f
    }

    #[test]
    fn vlan_ipv4_udp() {
        let f = vlan_udp();
        let Decoded::Packet(p) = decode(LinkType::Ethernet, &f, ts()) else {
            panic!("not decoded")
        };
        assert_eq!(p.proto, L4Proto::Udp);
        assert_eq!(p.sport, 12345);
        assert_eq!(p.dport, 53);
        assert_eq!(p.ip_len, 40);
        assert_eq!(p.payload.len(), 12);
        assert_eq!(p.src_mac, Some([6, 7, 8, 9, 10, 11]));
    }

    /// Raw IPv6 with a fragment header at `offset` (8-byte units) carrying UDP 5353 -> 53.
    fn v6_fragment(offset: u16, more: bool) -> Vec<u8> {
        let body = [0x14, 0xe9, 0, 53, 0, 20, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let plen = (8 + body.len()) as u16;
        let mut f = vec![0x60, 0, 0, 0];
        f.extend_from_slice(&plen.to_be_bytes());
        f.extend_from_slice(&[44, 64]);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let fo = (offset << 3) | u16::from(more);
        f.extend_from_slice(&[17, 0]);
        f.extend_from_slice(&fo.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 9]);
        f.extend_from_slice(&body);
        f
    }

    #[test]
    fn ipv6_fragments_first_decoded_later_counted() {
        let first = v6_fragment(0, true);
        let d = decode(LinkType::RawIp, &first, ts());
        let Decoded::Packet(p) = d else {
            panic!("first fragment: {d:?}")
        };
        assert_eq!(p.payload, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!((p.sport, p.dport), (5353, 53));
        assert_eq!(
            decode(LinkType::RawIp, &v6_fragment(185, false), ts()),
            Decoded::Fragment
        );
    }

    #[test]
    fn ipv4_fragments_first_decoded_later_counted() {
        let mut f = vlan_udp();
        // Set "more fragments" on the IPv4 header (after 14 + 4 bytes of link layer).
        f[18 + 6] = 0x20;
        let Decoded::Packet(p) = decode(LinkType::Ethernet, &f, ts()) else {
            panic!("first fragment")
        };
        assert_eq!(p.dport, 53);
        f[18 + 6] = 0x00;
        f[18 + 7] = 0x10; // offset 16 x 8 bytes
        assert_eq!(decode(LinkType::Ethernet, &f, ts()), Decoded::Fragment);
    }

    #[test]
    fn truncations_never_panic() {
        let f = vlan_udp();
        for cut in 0..f.len() {
            for lt in [
                LinkType::Ethernet,
                LinkType::LinuxSll,
                LinkType::LinuxSll2,
                LinkType::RawIp,
                LinkType::Null,
            ] {
                let _ = decode(lt, &f[..cut], ts());
            }
        }
    }
}
