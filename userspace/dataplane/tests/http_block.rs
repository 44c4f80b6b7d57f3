//! HTTP/1 Host name verdicts in the kernel through BPF_PROG_TEST_RUN: a request head whose
//! Host is blocked becomes a reset toward the server (the daemon answers the user with a block
//! page, `send_block_page`); an allowed Host passes untouched; monitor mode only counts. The
//! request is a real one (curl, nDPI capture, see testdata/README.md). Needs root.

use std::net::IpAddr;

use tollgate_dataplane::{
    Action, Mode, PayloadKind, abi, block_page_html, block_page_packet,
    testing::{PacketSpec, ProbeHarness, TC_ACT_UNSPEC, tcp_flags},
};

mod common;
use common::with_harness;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

fn request(host: &str, sport: u16) -> (Vec<u8>, Vec<u8>) {
    let path = format!("{}/testdata/http_request.hex", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture present");
    let real = tollgate_dataplane::testing::hex(&text).expect("fixture is hex");
    let real = String::from_utf8(real).expect("ascii request");
    let payload = real.replace("google.com", host).into_bytes();
    (segment(sport, 7000, &payload), payload)
}

/// A segment from the user to the web server.
fn segment(sport: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let flags = tcp_flags::ACK | tcp_flags::PSH;
    let (user, server) = (ip("192.0.2.10"), ip("198.51.100.20"));
    PacketSpec::tcp(user, server, sport, 80, seq, flags, payload).frame()
}

/// Enforce mode with blocked.example and its subdomains blocked by name.
fn block_blocked_example(h: &mut ProbeHarness) {
    h.set_mode(Mode::Enforce).unwrap();
    let mut v = h.verdicts();
    v.set_name("blocked.example", Action::Block, 4, true)
        .unwrap();
    v.commit().unwrap();
}

#[test]
fn blocked_host_becomes_a_reset_to_the_server() {
    with_harness(|h| {
        block_blocked_example(h);

        let (allowed, _) = request("www.allowed.example", 41000);
        let r = h.run(abi::PROG_LAN_INGRESS, &allowed, 1).unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC);
        assert_eq!(r.data_out, allowed, "an allowed request is untouched");

        // Host with a port and upper case: still the name.
        let (blocked, payload) = request("WWW.Blocked.Example:8080", 41001);
        let r = h.run(abi::PROG_LAN_INGRESS, &blocked, 1).unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC, "the reset goes on to the server");
        let o = &r.data_out;
        assert_eq!(o.len(), 14 + 20 + 20, "headers only");
        assert_eq!(&o[26..30], &[192, 0, 2, 10], "from the user");
        assert_eq!(&o[30..34], &[198, 51, 100, 20], "to the server");
        let tcp = &o[34..54];
        assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 41001);
        assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 80);
        assert_eq!(u32::from_be_bytes(tcp[4..8].try_into().unwrap()), 7000);
        assert_eq!(tcp[13], tcp_flags::RST | tcp_flags::ACK);
        let st = h.stats().unwrap();
        assert_eq!(st.http_host_found, 2);
        assert_eq!(st.http_blocked, 1);

        // The event carries what the block page needs.
        let ev = h
            .drain_events()
            .into_iter()
            .find(|e| e.kind == PayloadKind::Http && e.flow.user_port == 41001)
            .expect("the blocked request's event");
        assert_eq!(ev.tcp_seq, 7000);
        assert_eq!(ev.tcp_ack, 1, "PacketSpec sends ack 1");
        assert_eq!(ev.orig_len as usize, payload.len());
        let page = block_page_packet(&ev, &block_page_html("Blocked", "unsanctioned"))
            .expect("a block page");
        let tcp = &page[20..40];
        assert_eq!(&page[12..16], &[198, 51, 100, 20], "spoofs the server");
        assert_eq!(u32::from_be_bytes(tcp[4..8].try_into().unwrap()), 1);
        assert_eq!(
            u32::from_be_bytes(tcp[8..12].try_into().unwrap()),
            7000 + payload.len() as u32
        );
        assert_eq!(tcp[13], tcp_flags::FIN | tcp_flags::PSH | tcp_flags::ACK);

        // Later segments of the blocked flow are refused like any blocked flow.
        let (again, _) = request("www.blocked.example", 41001);
        let r = h.run(abi::PROG_LAN_INGRESS, &again, 1).unwrap();
        assert_ne!(r.action, TC_ACT_UNSPEC);

        // Monitor mode: counted, passed untouched.
        h.set_mode(Mode::Monitor).unwrap();
        let (m, _) = request("blocked.example", 41002);
        let r = h.run(abi::PROG_LAN_INGRESS, &m, 1).unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC);
        assert_eq!(r.data_out, m);
        assert!(h.stats().unwrap().would_drop >= 1);
    });
}

#[test]
fn later_request_on_a_kept_alive_connection_is_checked_too() {
    with_harness(|h| {
        block_blocked_example(h);
        let port = 41010;
        let segment = |seq: u32, payload: &[u8]| segment(port, seq, payload);
        let (_, first) = request("www.allowed.example", port);
        let mut seq = 7000u32;
        let f = segment(seq, &first);
        assert_eq!(
            h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap().action,
            TC_ACT_UNSPEC
        );
        seq += first.len() as u32;
        // More packets than the probes inspect per flow (an upload body, other requests).
        for _ in 0..2 * abi::DEFAULT_INSPECT_PACKETS {
            let body = segment(seq, &[b'x'; 100]);
            let r = h.run(abi::PROG_LAN_INGRESS, &body, 1).unwrap();
            assert_eq!(r.action, TC_ACT_UNSPEC);
            seq += 100;
            let (_, again) = request("www.allowed.example", port);
            let f = segment(seq, &again);
            assert_eq!(
                h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap().action,
                TC_ACT_UNSPEC
            );
            seq += again.len() as u32;
        }
        // Then a request for a blocked app on the same connection.
        let (_, blocked) = request("www.blocked.example", port);
        let r = h
            .run(abi::PROG_LAN_INGRESS, &segment(seq, &blocked), 1)
            .unwrap();
        assert_eq!(
            r.data_out.len(),
            14 + 20 + 20,
            "became a reset to the server"
        );
        assert_eq!(r.data_out[34 + 13], tcp_flags::RST | tcp_flags::ACK);
        assert_eq!(h.stats().unwrap().http_blocked, 1);
    });
}
