//! A block page for plain HTTP. In enforce mode the probes match the Host of an HTTP/1 request
//! head against the name verdicts; a blocked request is not forwarded (it becomes a reset to
//! the server). The daemon then answers the client in the server's place with
//! [`send_block_page`]: one TCP segment from the gateway toward the user, spoofing the server
//! (seq = the request's ack, ack = request seq + length, PSH|ACK|FIN) that carries an
//! `HTTP/1.1 403 Forbidden` response. The segment is sent through a raw socket with the
//! [`abi::BLOCK_PAGE_MARK`] mark, which the probes let through untouched (the flow itself is
//! blocked, so anything else of it toward the user would be turned into a reset).

use std::net::{IpAddr, SocketAddr};

use etherparse::{IpHeaders, PacketBuilder, PacketBuilderStep};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tollgate_common as abi;

use crate::{
    error::DataplaneError,
    event::{L4Proto, PayloadEvent, PayloadKind},
};

/// Largest TCP payload of the block page segment: fits the IPv6 minimum MTU (1280) with
/// IPv6 and TCP headers.
pub const BLOCK_PAGE_MAX: usize = 1280 - 40 - 20;

/// A short HTML page that names the app and says why it is blocked (both escaped).
pub fn block_page_html(app: &str, reason: &str) -> String {
    let (app, reason) = (
        html_escape::encode_quoted_attribute(app),
        html_escape::encode_quoted_attribute(reason),
    );
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

/// The IP packet (header included) of the block page for `ev`, an HTTP request event from the
/// user; `None` when the event is not one (wrong kind or direction, not TCP).
pub fn block_page_packet(ev: &PayloadEvent, html: &str) -> Option<Vec<u8>> {
    if ev.kind != PayloadKind::Http || ev.flow.proto != L4Proto::Tcp {
        return None;
    }
    let payload = block_page_response(html);
    let builder = ip_from_server(ev)?
        .tcp(ev.flow.remote_port, ev.flow.user_port, ev.tcp_ack, u16::MAX)
        .ack(ev.tcp_seq.wrapping_add(ev.orig_len))
        .psh()
        .fin();
    let mut pkt = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut pkt, &payload).ok()?;
    Some(pkt)
}

/// The IP header of a packet from the event's remote (the server) to its user: IPv4 with DF
/// and TTL 64, or IPv6 with hop limit 64; lengths and checksums are filled in by the builder.
fn ip_from_server(ev: &PayloadEvent) -> Option<PacketBuilderStep<IpHeaders>> {
    match (ev.flow.remote_ip, ev.flow.user_ip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some(PacketBuilder::ipv4(s.octets(), d.octets(), 64)),
        (IpAddr::V6(s), IpAddr::V6(d)) => Some(PacketBuilder::ipv6(s.octets(), d.octets(), 64)),
        _ => None,
    }
}

/// The IP packet of a DNS answer the probes held ([`PayloadEvent::held`]): the event's UDP
/// payload from the DNS server's address and port to the user's, as the server sent it.
/// `None` when the event is not a whole held UDP DNS answer.
pub fn held_dns_packet(ev: &PayloadEvent) -> Option<Vec<u8>> {
    if !ev.held
        || ev.kind != PayloadKind::Dns
        || ev.flow.proto != L4Proto::Udp
        || ev.payload.len() != usize::try_from(ev.orig_len).ok()?
    {
        return None;
    }
    let builder = ip_from_server(ev)?.udp(ev.flow.remote_port, ev.flow.user_port);
    let mut pkt = Vec::with_capacity(builder.size(ev.payload.len()));
    builder.write(&mut pkt, &ev.payload).ok()?;
    Some(pkt)
}

/// Sends a DNS answer the probes held on to the user (after the daemon steered its
/// addresses), as the server sent it, marked so that the probes let it pass.
pub fn send_held_dns(ev: &PayloadEvent) -> Result<(), DataplaneError> {
    let pkt = held_dns_packet(ev).ok_or(DataplaneError::WrongEvent {
        expected: "a held DNS answer",
    })?;
    send_raw(ev.flow.user_ip, &pkt)
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
    let pkt = block_page_packet(ev, html).ok_or(DataplaneError::WrongEvent {
        expected: "an HTTP request",
    })?;
    send_raw(ev.flow.user_ip, &pkt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FlowTuple;

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

    fn http_event(user: &str, remote: &str) -> PayloadEvent {
        PayloadEvent {
            kind: PayloadKind::Http,
            flow: FlowTuple {
                proto: L4Proto::Tcp,
                user_ip: user.parse().unwrap(),
                user_port: 40000,
                remote_ip: remote.parse().unwrap(),
                remote_port: 80,
            },
            direction: crate::event::Direction::Up,
            timestamp: std::time::SystemTime::UNIX_EPOCH,
            tcp_seq: 1000,
            tcp_ack: 5000,
            tcp_flags: 0x18,
            ifindex: 1,
            vlan: 0,
            orig_len: 77,
            continuation: false,
            last_for_flow: false,
            held: false,
            payload: bytes::Bytes::new(),
        }
    }

    #[test]
    fn block_page_segment_answers_the_request_with_valid_checksums() {
        for (user, remote) in [
            ("192.0.2.10", "198.51.100.7"),
            ("2001:db8::10", "2001:db8:1::7"),
        ] {
            let ev = http_event(user, remote);
            let pkt = block_page_packet(&ev, &block_page_html("Box", "unsanctioned")).unwrap();
            let parsed = etherparse::SlicedPacket::from_ip(&pkt).expect("a valid IP packet");
            let Some(etherparse::TransportSlice::Tcp(tcp)) = parsed.transport else {
                panic!("not TCP");
            };
            assert_eq!((tcp.source_port(), tcp.destination_port()), (80, 40000));
            assert_eq!(tcp.sequence_number(), 5000);
            assert_eq!(tcp.acknowledgment_number(), 1077);
            assert!(tcp.fin() && tcp.psh() && tcp.ack());
            assert!(tcp.payload().starts_with(b"HTTP/1.1 403 Forbidden\r\n"));
            let ok = match parsed.net {
                Some(etherparse::NetSlice::Ipv4(ip)) => {
                    assert!(ip.header().dont_fragment());
                    tcp.to_header()
                        .calc_checksum_ipv4(&ip.header().to_header(), tcp.payload())
                        .unwrap()
                        == tcp.checksum()
                }
                Some(etherparse::NetSlice::Ipv6(ip)) => {
                    tcp.to_header()
                        .calc_checksum_ipv6(&ip.header().to_header(), tcp.payload())
                        .unwrap()
                        == tcp.checksum()
                }
                _ => false,
            };
            assert!(ok, "bad TCP checksum for {user}");
        }
        // Mixed families: no packet.
        assert!(block_page_packet(&http_event("192.0.2.10", "2001:db8::7"), "x").is_none());
    }
}
