//! Builders shared by the flow table's tests: packets, hellos, DNS messages, captures.

use super::*;
use std::net::Ipv4Addr;

pub(super) fn ts(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap_or_default()
}

#[allow(
    clippy::too_many_arguments,
    reason = "test helper spelling out every header field"
)]
pub(super) fn pkt<'a>(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    proto: L4Proto,
    seq: u32,
    flags: u8,
    payload: &'a [u8],
    t: i64,
) -> PacketView<'a> {
    PacketView {
        ts: ts(t),
        proto,
        src: IpAddr::V4(Ipv4Addr::from(src)),
        sport,
        dst: IpAddr::V4(Ipv4Addr::from(dst)),
        dport,
        ip_len: 40 + payload.len() as u32,
        tcp_seq: seq,
        tcp_flags: flags,
        payload,
        src_mac: None,
    }
}

pub(super) fn hello(sni: &str) -> Vec<u8> {
    hello_with(sni, false)
}

pub(super) fn hello_with(sni: &str, ech: bool) -> Vec<u8> {
    // A ClientHello with an SNI extension (and an outer ECH one), in one TLS record.
    let name = sni.as_bytes();
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
    ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    ext.extend_from_slice(name);
    if ech {
        // outer, HKDF-SHA256, AES-128-GCM, config 7, enc 32 bytes, payload 16 bytes
        let mut e = vec![0, 0, 1, 0, 1, 7, 0, 32];
        e.extend_from_slice(&[9u8; 32]);
        e.extend_from_slice(&[0, 16]);
        e.extend_from_slice(&[5u8; 16]);
        ext.extend_from_slice(&[0xfe, 0x0d]);
        ext.extend_from_slice(&(e.len() as u16).to_be_bytes());
        ext.extend_from_slice(&e);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1, 0];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// A DNS message: a query (`answer: None`) or a response with one A record.
pub(super) fn dns_msg(id: u16, q: &str, answer: Option<([u8; 4], u32)>) -> Vec<u8> {
    let an = u8::from(answer.is_some());
    let flags = if answer.is_some() {
        [0x81, 0x80]
    } else {
        [0x01, 0x00]
    };
    let mut m = vec![
        (id >> 8) as u8,
        id as u8,
        flags[0],
        flags[1],
        0,
        1,
        0,
        an,
        0,
        0,
        0,
        0,
    ];
    for l in q.split('.') {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    if let Some((ip, ttl)) = answer {
        m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        m.extend_from_slice(&ttl.to_be_bytes());
        m.extend_from_slice(&[0, 4]);
        m.extend_from_slice(&ip);
    }
    m
}

pub(super) fn live_dns(
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    direction: Direction,
    payload: &[u8],
    t: i64,
) -> PayloadObservation<'_> {
    PayloadObservation {
        flow: FlowTuple::of_packet(
            L4Proto::Udp,
            (IpAddr::V4(Ipv4Addr::from(src.0)), src.1),
            (IpAddr::V4(Ipv4Addr::from(dst.0)), dst.1),
            direction,
        ),
        direction,
        ts: ts(t),
        tcp_seq: 0,
        tcp_flags: 0,
        payload,
    }
}

pub(super) fn strict() -> FlowTable {
    FlowTable::new(FlowTableLimits {
        dns_answers_need_query: true,
        ..FlowTableLimits::default()
    })
}

pub(super) const CLIENT: ([u8; 4], u16) = ([10, 0, 0, 2], 40000);

pub(super) const RESOLVER: ([u8; 4], u16) = ([10, 0, 0, 1], 53);

pub(super) const INNOCENT: [u8; 4] = [93, 184, 216, 34];

/// A DNS response for `q` with one HTTPS record, with or without an ECH config whose
/// public_name is `public`.
pub(super) fn https_response(q: &str, public: Option<&str>) -> Vec<u8> {
    let mut m = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    for l in q.split('.') {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 65, 0, 1]);
    let mut rd = vec![0, 1, 0, 0, 1, 0, 3, 2, b'h', b'2'];
    if let Some(pn) = public {
        let mut cfg = vec![7, 0, 0x20, 0, 1, 0xaa, 0, 4, 0, 1, 0, 1, 0, pn.len() as u8];
        cfg.extend_from_slice(pn.as_bytes());
        cfg.extend_from_slice(&[0, 0]);
        let mut one = vec![0xfe, 0x0d];
        one.extend_from_slice(&(cfg.len() as u16).to_be_bytes());
        one.extend_from_slice(&cfg);
        let mut list = (one.len() as u16).to_be_bytes().to_vec();
        list.extend_from_slice(&one);
        rd.extend_from_slice(&[0, 5]);
        rd.extend_from_slice(&(list.len() as u16).to_be_bytes());
        rd.extend_from_slice(&list);
    }
    m.extend_from_slice(&[0xc0, 12, 0, 65, 0, 1, 0, 0, 1, 0]);
    m.extend_from_slice(&(rd.len() as u16).to_be_bytes());
    m.extend_from_slice(&rd);
    m
}

pub(super) fn live(
    proto: L4Proto,
    direction: Direction,
    tcp_seq: u32,
    payload: &[u8],
) -> PayloadObservation<'_> {
    PayloadObservation {
        flow: FlowTuple {
            proto,
            user_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            user_port: 40000,
            remote_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 80)),
            remote_port: 443,
        },
        direction,
        ts: ts(0),
        tcp_seq,
        tcp_flags: tcp_flags::ACK | tcp_flags::PSH,
        payload,
    }
}
