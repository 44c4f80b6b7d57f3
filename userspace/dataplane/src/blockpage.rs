//! A block page for plain HTTP. In enforce mode the probes match the Host of an HTTP/1 request
//! head against the name verdicts; a blocked request is not forwarded (it becomes a reset to
//! the server). The daemon then answers the client in the server's place with
//! [`send_block_page`]: one TCP segment from the gateway toward the user, spoofing the server
//! (seq = the request's ack, ack = request seq + length, PSH|ACK|FIN) that carries an
//! `HTTP/1.1 403 Forbidden` response. The segment is sent through a raw socket with the
//! [`abi::BLOCK_PAGE_MARK`] mark, which the probes let through untouched (the flow itself is
//! blocked, so anything else of it toward the user would be turned into a reset).

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tollgate_common as abi;

use crate::{DataplaneError, PayloadEvent, PayloadKind};

/// Largest TCP payload of the block page segment: fits the IPv6 minimum MTU (1280) with
/// IPv6 and TCP headers.
pub const BLOCK_PAGE_MAX: usize = 1280 - 40 - 20;

/// Escapes text for HTML element content and attribute values.
fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A short HTML page that names the app and says why it is blocked (both escaped).
pub fn block_page_html(app: &str, reason: &str) -> String {
    let (app, reason) = (escape(app), escape(reason));
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Blocked: {app}</title></head>\
         <body><h1>{app} is blocked</h1><p>{reason}</p>\
         <p>This network's policy does not allow this application.</p></body></html>\n"
    )
}

/// The HTTP response carried by the block page segment (cut to fit [`BLOCK_PAGE_MAX`]).
pub fn block_page_response(html: &str) -> Vec<u8> {
    let head_len = |n: usize| {
        format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/html; charset=utf-8\r\n\
             Content-Length: {n}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
    };
    let mut body = html.as_bytes();
    let room = BLOCK_PAGE_MAX.saturating_sub(head_len(body.len()).len());
    if body.len() > room {
        body = body.get(..room).unwrap_or(body);
    }
    let mut out = head_len(body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

fn csum_add(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The IP packet (header included) of the block page for `ev`, an HTTP request event from the
/// user; `None` when the event is not one (wrong kind or direction, not TCP).
pub fn block_page_packet(ev: &PayloadEvent, html: &str) -> Option<Vec<u8>> {
    if ev.kind != PayloadKind::Http || ev.proto != abi::PROTO_TCP {
        return None;
    }
    let payload = block_page_response(html);
    let mut tcp = Vec::with_capacity(20 + payload.len());
    tcp.extend_from_slice(&ev.remote_port.to_be_bytes());
    tcp.extend_from_slice(&ev.user_port.to_be_bytes());
    tcp.extend_from_slice(&ev.tcp_ack.to_be_bytes());
    tcp.extend_from_slice(&ev.tcp_seq.wrapping_add(ev.orig_len).to_be_bytes());
    tcp.push(5 << 4);
    tcp.push(0x01 | 0x08 | 0x10); // FIN | PSH | ACK
    tcp.extend_from_slice(&65535u16.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    tcp.extend_from_slice(&payload);
    ip_packet(ev.remote_ip, ev.user_ip, abi::PROTO_TCP, tcp, 16)
}

/// An IP packet (IPv4 without options, DF, TTL 64; or IPv6, hop limit 64) from `src` to `dst`
/// carrying `l4` (a TCP or UDP header and payload) of `proto`, with the transport checksum
/// (at `csum_at` in `l4`) filled in over the pseudo-header. `None` for mixed families or an
/// oversized payload.
fn ip_packet(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    mut l4: Vec<u8>,
    csum_at: usize,
) -> Option<Vec<u8>> {
    let l4_len = u16::try_from(l4.len()).ok()?;
    let mut pkt = Vec::with_capacity(40 + l4.len());
    let pseudo_sum = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = l4_len.checked_add(20)?;
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[6] = 0x40; // DF
            ip[8] = 64;
            ip[9] = proto;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let c = csum_fold(csum_add(0, &ip)).to_be_bytes();
            ip[10..12].copy_from_slice(&c);
            pkt.extend_from_slice(&ip);
            let mut p = Vec::with_capacity(12);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&l4_len.to_be_bytes());
            csum_add(0, &p)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&l4_len.to_be_bytes());
            ip[6] = proto;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            pkt.extend_from_slice(&ip);
            let mut p = Vec::with_capacity(40);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&u32::from(l4_len).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
            csum_add(0, &p)
        }
        _ => return None,
    };
    let mut c = csum_fold(csum_add(pseudo_sum, &l4));
    if proto == abi::PROTO_UDP && c == 0 {
        // UDP: a computed zero is sent as all ones (zero means "no checksum").
        c = 0xffff;
    }
    l4.get_mut(csum_at..csum_at + 2)?
        .copy_from_slice(&c.to_be_bytes());
    pkt.extend_from_slice(&l4);
    Some(pkt)
}

/// The IP packet of a DNS answer the probes held ([`PayloadEvent::held`]): the event's UDP
/// payload from the DNS server's address and port to the user's, as the server sent it.
/// `None` when the event is not a whole held UDP DNS answer.
pub fn held_dns_packet(ev: &PayloadEvent) -> Option<Vec<u8>> {
    if !ev.held
        || ev.kind != PayloadKind::Dns
        || ev.proto != abi::PROTO_UDP
        || ev.payload.len() != usize::try_from(ev.orig_len).ok()?
    {
        return None;
    }
    let len = u16::try_from(ev.payload.len().checked_add(8)?).ok()?;
    let mut udp = Vec::with_capacity(usize::from(len));
    udp.extend_from_slice(&ev.remote_port.to_be_bytes());
    udp.extend_from_slice(&ev.user_port.to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&ev.payload);
    ip_packet(ev.remote_ip, ev.user_ip, abi::PROTO_UDP, udp, 6)
}

/// Sends a DNS answer the probes held on to the user (after the daemon steered its
/// addresses), as the server sent it, marked so that the probes let it pass.
pub fn send_held_dns(ev: &PayloadEvent) -> Result<(), DataplaneError> {
    let pkt = held_dns_packet(ev).ok_or_else(|| {
        DataplaneError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a held DNS answer",
        ))
    })?;
    send_raw(ev.user_ip, &pkt)
}

/// Sends a whole IP packet (header included) toward `dst` from this host with
/// [`abi::BLOCK_PAGE_MARK`], which the probes let through untouched.
fn send_raw(dst: IpAddr, pkt: &[u8]) -> Result<(), DataplaneError> {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    // IPPROTO_RAW: we write the IP header ourselves (IP_HDRINCL / IPV6_HDRINCL are implied
    // and set again explicitly).
    let sock = Socket::new(domain, Type::RAW, Some(Protocol::from(255)))?;
    if dst.is_ipv4() {
        sock.set_header_included_v4(true)?;
    } else {
        sock.set_header_included_v6(true)?;
    }
    sock.set_mark(abi::BLOCK_PAGE_MARK)?;
    sock.send_to(pkt, &SockAddr::from(SocketAddr::new(dst, 0)))?;
    Ok(())
}

/// Answers a blocked HTTP request (`ev`, its event) with a 403 page in the server's place,
/// from this host toward the user (call it in the network namespace of the gateway's
/// interfaces, as the daemon runs). `html`: see [`block_page_html`].
pub fn send_block_page(ev: &PayloadEvent, html: &str) -> Result<(), DataplaneError> {
    let pkt = block_page_packet(ev, html).ok_or_else(|| {
        DataplaneError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an HTTP request event",
        ))
    })?;
    send_raw(ev.user_ip, &pkt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_fits() {
        let html = block_page_html("<Drop>box", "unsanctioned & risky");
        assert!(html.contains("&lt;Drop&gt;box"));
        assert!(html.contains("unsanctioned &amp; risky"));
        let r = block_page_response(&"x".repeat(5000));
        assert!(r.len() <= BLOCK_PAGE_MAX);
        assert!(r.starts_with(b"HTTP/1.1 403 Forbidden\r\n"));
        let text = String::from_utf8_lossy(&r);
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
