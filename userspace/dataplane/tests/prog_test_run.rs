//! The kernel programs on crafted packets, through BPF_PROG_TEST_RUN (needs root; skips with a
//! message otherwise). Payloads come from real captures (testdata/README.md).

use std::net::IpAddr;

use tollgate_dataplane::{
    Direction, L4Proto, PayloadEvent, PayloadKind, abi,
    testing::{PacketSpec, ProbeHarness, TC_ACT_UNSPEC, hex, is_root, tcp_flags},
};

fn harness() -> Option<ProbeHarness> {
    if !is_root() {
        eprintln!("skipping: BPF_PROG_TEST_RUN needs root");
        return None;
    }
    Some(ProbeHarness::load().expect("probes load and pass the verifier"))
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture present");
    hex(&text).expect("fixture is hex")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

const USER4: &str = "192.0.2.10";
const REMOTE4: &str = "198.51.100.20";
const USER6: &str = "2001:db8:1::10";
const REMOTE6: &str = "2001:db8:2::20";

fn tcp(src: &str, dst: &str, sport: u16, dport: u16, seq: u32, payload: &[u8]) -> PacketSpec {
    let flags = tcp_flags::ACK | tcp_flags::PSH;
    PacketSpec::tcp(ip(src), ip(dst), sport, dport, seq, flags, payload)
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16, payload: &[u8]) -> PacketSpec {
    PacketSpec::udp(ip(src), ip(dst), sport, dport, payload)
}

fn run(h: &ProbeHarness, prog: &'static str, p: &PacketSpec) {
    let r = h.run(prog, &p.frame(), 1).expect("test run");
    assert_eq!(r.action, TC_ACT_UNSPEC, "monitor mode passes every packet");
}

/// Concatenates TLS event payloads in sequence order from `start`, checking they are contiguous.
fn reassemble(events: &[PayloadEvent], start: u32) -> Vec<u8> {
    let mut evs: Vec<&PayloadEvent> = events
        .iter()
        .filter(|e| e.kind == PayloadKind::Tls)
        .collect();
    evs.sort_by_key(|e| e.tcp_seq.wrapping_sub(start));
    let mut out = Vec::new();
    for e in evs {
        let off = e.tcp_seq.wrapping_sub(start) as usize;
        assert!(off <= out.len(), "gap before seq offset {off}");
        let skip = out.len() - off;
        if skip < e.payload.len() {
            out.extend_from_slice(&e.payload[skip..]);
        }
    }
    out
}

#[test]
fn all_programs_verify_and_noop_passes() {
    let Some(h) = harness() else { return };
    let p = tcp(USER4, REMOTE4, 40000, 80, 1, b"hello");
    let r = h.run(abi::PROG_NOOP, &p.frame(), 1).unwrap();
    assert_eq!(r.action, TC_ACT_UNSPEC);
}

/// The programs use `skb->cb` as scratch (`opaque`) and put back what was there: a program
/// before Tollgate's in the TCX chain may pass values in it to one after.
#[test]
fn the_control_block_passes_through_unchanged() {
    let Some(h) = harness() else { return };
    let hello = fixture("tls_clienthello_chrome.hex");
    let packets = [
        udp(USER4, REMOTE4, 40001, 9000, &[7u8; 64]),
        udp(USER6, REMOTE6, 40002, 53, &[0u8; 40]),
        tcp(USER4, REMOTE4, 40003, 443, 1, &hello),
        tcp(
            USER6,
            REMOTE6,
            40004,
            8080,
            1,
            b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
        ),
    ];
    let cb = [0xdead_beef, 0x0102_0304, 7, 0xffff_ffff, 42];
    for p in &packets {
        for prog in [abi::PROG_LAN_INGRESS, abi::PROG_LAN_EGRESS] {
            let r = h.run_with_cb(prog, &p.frame(), cb).expect("test run");
            assert_eq!(r.cb, cb, "{prog}");
        }
    }
}

#[test]
fn whole_clienthello_gives_one_event_and_counters() {
    let Some(mut h) = harness() else { return };
    let hello = fixture("tls_clienthello_chrome.hex");
    let p = tcp(USER4, REMOTE4, 40001, 443, 1000, &hello);
    run(&h, abi::PROG_LAN_INGRESS, &p);
    let evs = h.drain_events();
    assert_eq!(evs.len(), 1, "{evs:?}");
    let e = &evs[0];
    assert_eq!(e.kind, PayloadKind::Tls);
    assert_eq!(e.direction, Direction::Up);
    assert_eq!((e.flow.user_ip, e.flow.user_port), (ip(USER4), 40001));
    assert_eq!((e.flow.remote_ip, e.flow.remote_port), (ip(REMOTE4), 443));
    assert_eq!(e.flow.proto, L4Proto::Tcp);
    assert_eq!(e.tcp_seq, 1000);
    assert_eq!(e.orig_len as usize, hello.len());
    assert_eq!(&e.payload[..], &hello[..]);
    assert!(!e.continuation);

    let flows = h.flows().unwrap();
    assert_eq!(flows.len(), 1);
    let f = &flows[0];
    assert_eq!(f.packets_up, 1);
    assert_eq!(f.packets_down, 0);
    assert_eq!(f.bytes_up as usize, 20 + 20 + hello.len());
    assert_eq!(f.tcp_flags_up, tcp_flags::ACK | tcp_flags::PSH);
    assert!(f.first_seen <= f.last_seen);
    let s = h.stats().unwrap();
    assert_eq!(s.events, 1);
    assert_eq!(s.packets, 1);
}

#[test]
fn clienthello_split_at_every_offset_is_sent_whole() {
    let Some(mut h) = harness() else { return };
    for name in ["tls_clienthello_chrome.hex", "tls_clienthello_ech.hex"] {
        let hello = fixture(name);
        for k in 1..hello.len() {
            h.clear_flows().unwrap();
            let start = 0xffff_ff00u32; // sequence numbers wrap inside the hello
            let a = tcp(USER4, REMOTE4, 40002, 443, start, &hello[..k]);
            let b = tcp(
                USER4,
                REMOTE4,
                40002,
                443,
                start.wrapping_add(k as u32),
                &hello[k..],
            );
            run(&h, abi::PROG_LAN_INGRESS, &a);
            run(&h, abi::PROG_LAN_INGRESS, &b);
            let evs = h.drain_events();
            assert_eq!(evs.len(), 2, "{name} split at {k}: {} events", evs.len());
            assert!(evs[1].continuation, "{name} split at {k}");
            assert_eq!(reassemble(&evs, start), hello, "{name} split at {k}");
        }
    }
}

#[test]
fn clienthello_in_three_segments_and_a_retransmission() {
    let Some(mut h) = harness() else { return };
    let hello = fixture("tls_clienthello_ech.hex");
    let (k1, k2) = (200, 400);
    let start = 77;
    let segs = [
        tcp(USER4, REMOTE4, 40003, 443, start, &hello[..k1]),
        tcp(
            USER4,
            REMOTE4,
            40003,
            443,
            start + k1 as u32,
            &hello[k1..k2],
        ),
        tcp(USER4, REMOTE4, 40003, 443, start + k2 as u32, &hello[k2..]),
    ];
    // Out of order: 1, 3, 2.
    run(&h, abi::PROG_LAN_INGRESS, &segs[0]);
    run(&h, abi::PROG_LAN_INGRESS, &segs[2]);
    run(&h, abi::PROG_LAN_INGRESS, &segs[1]);
    let evs = h.drain_events();
    assert_eq!(evs.len(), 3);
    assert_eq!(reassemble(&evs, start), hello);
    assert_eq!(h.stats().unwrap().hello_continuations, 2);
}

#[test]
fn data_after_the_hello_is_not_sent() {
    let Some(mut h) = harness() else { return };
    let hello = fixture("tls_clienthello_chrome.hex");
    run(
        &h,
        abi::PROG_LAN_INGRESS,
        &tcp(USER4, REMOTE4, 40004, 443, 1, &hello),
    );
    // Application data records after the handshake.
    let appdata = [0x17u8, 0x03, 0x03, 0x00, 0x20].repeat(20);
    for i in 0..20u32 {
        let seq = 1 + hello.len() as u32 + i * appdata.len() as u32;
        run(
            &h,
            abi::PROG_LAN_INGRESS,
            &tcp(USER4, REMOTE4, 40004, 443, seq, &appdata),
        );
        run(
            &h,
            abi::PROG_LAN_EGRESS,
            &tcp(REMOTE4, USER4, 443, 40004, seq, &appdata),
        );
    }
    let evs = h.drain_events();
    assert_eq!(evs.len(), 1);
    let f = &h.flows().unwrap()[0];
    assert_eq!((f.packets_up, f.packets_down), (21, 20));
    assert_eq!(f.bytes_down, 20 * (40 + appdata.len() as u64));
}

#[test]
fn tls_on_any_port_vlan_and_ipv6() {
    let Some(mut h) = harness() else { return };
    let hello = fixture("tls_clienthello_chrome.hex");
    let mut v = tcp(USER4, REMOTE4, 40005, 8443, 5, &hello);
    v.vlan = Some(42);
    run(&h, abi::PROG_LAN_INGRESS, &v);
    run(
        &h,
        abi::PROG_LAN_INGRESS,
        &tcp(USER6, REMOTE6, 40006, 5000, 9, &hello),
    );
    let mut evs = h.drain_events();
    evs.sort_by_key(|e| e.flow.user_port);
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[0].vlan, 42);
    assert_eq!(evs[0].flow.remote_port, 8443);
    assert_eq!(&evs[0].payload[..], &hello[..]);
    assert_eq!(
        (evs[1].flow.user_ip, evs[1].flow.remote_ip),
        (ip(USER6), ip(REMOTE6))
    );
    assert_eq!(&evs[1].payload[..], &hello[..]);
    let flows = h.flows().unwrap();
    let v6 = flows.iter().find(|f| f.flow.user_port == 40006).unwrap();
    assert_eq!(v6.bytes_up as usize, 40 + 20 + hello.len());
}

#[test]
fn wan_programs_see_the_user_on_the_other_side() {
    let Some(mut h) = harness() else { return };
    let hello = fixture("tls_clienthello_chrome.hex");
    // On a WAN interface the user's packet leaves through egress.
    run(
        &h,
        abi::PROG_WAN_EGRESS,
        &tcp(USER4, REMOTE4, 40007, 443, 1, &hello),
    );
    let reply = tcp(REMOTE4, USER4, 443, 40007, 1, &[0u8; 100]);
    run(&h, abi::PROG_WAN_INGRESS, &reply);
    let evs = h.drain_events();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].flow.user_ip, ip(USER4));
    let f = &h.flows().unwrap()[0];
    assert_eq!((f.flow.user_ip, f.flow.remote_port), (ip(USER4), 443));
    assert_eq!((f.packets_up, f.packets_down), (1, 1));
}

#[test]
fn dns_query_and_response_udp_and_tcp() {
    let Some(mut h) = harness() else { return };
    let q = fixture("dns_query.hex");
    let r = fixture("dns_response.hex");
    run(
        &h,
        abi::PROG_LAN_INGRESS,
        &udp(USER4, REMOTE4, 5353, 53, &q),
    );
    run(&h, abi::PROG_LAN_EGRESS, &udp(REMOTE4, USER4, 53, 5353, &r));
    let mut tq = (q.len() as u16).to_be_bytes().to_vec();
    tq.extend_from_slice(&q);
    run(
        &h,
        abi::PROG_LAN_INGRESS,
        &tcp(USER6, REMOTE6, 41000, 53, 1, &tq),
    );
    let evs = h.drain_events();
    assert_eq!(evs.len(), 3);
    assert!(evs.iter().all(|e| e.kind == PayloadKind::Dns));
    assert_eq!(evs[0].direction, Direction::Up);
    assert_eq!(&evs[0].payload[..], &q[..]);
    assert_eq!(evs[1].direction, Direction::Down);
    assert_eq!((evs[1].flow.user_port, evs[1].flow.remote_port), (5353, 53));
    assert_eq!(&evs[1].payload[..], &r[..]);
    assert_eq!(&evs[2].payload[..], &tq[..]);
    assert_eq!(evs[2].flow.proto, L4Proto::Tcp);
}

#[test]
fn quic_initials_of_each_version_on_any_port() {
    let Some(mut h) = harness() else { return };
    for (i, name) in [
        "quic_v1_initial.hex",
        "quic_v2_initial.hex",
        "quic_draft34_initial.hex",
    ]
    .into_iter()
    .enumerate()
    {
        let pkt = fixture(name);
        let port = if i == 0 { 443 } else { 4433 + i as u16 };
        run(
            &h,
            abi::PROG_LAN_INGRESS,
            &udp(USER4, REMOTE4, 50000 + i as u16, port, &pkt),
        );
        let evs = h.drain_events();
        assert_eq!(evs.len(), 1, "{name}");
        assert_eq!(evs[0].kind, PayloadKind::Quic);
        assert_eq!(&evs[0].payload[..], &pkt[..], "{name}");
    }
    // A short-header (1-RTT) packet and a Handshake packet are not Initials.
    let mut short = fixture("quic_v1_initial.hex");
    short[0] = 0x40;
    run(
        &h,
        abi::PROG_LAN_INGRESS,
        &udp(USER4, REMOTE4, 50010, 443, &short),
    );
    let mut hs = fixture("quic_v1_initial.hex");
    hs[0] = 0xe0; // long header, type Handshake (v1)
    run(
        &h,
        abi::PROG_LAN_INGRESS,
        &udp(USER4, REMOTE4, 50011, 443, &hs),
    );
    assert!(h.drain_events().is_empty());
}

#[test]
fn http_request_head_and_nothing_for_uninteresting_traffic() {
    let Some(mut h) = harness() else { return };
    let req = fixture("http_request.hex");
    run(
        &h,
        abi::PROG_LAN_INGRESS,
        &tcp(USER4, REMOTE4, 40100, 80, 1, &req),
    );
    let evs = h.drain_events();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].kind, PayloadKind::Http);
    assert_eq!(&evs[0].payload[..], &req[..]);
    // A response toward the user, random TCP data, random UDP, an SSH banner: no events.
    run(
        &h,
        abi::PROG_LAN_EGRESS,
        &tcp(REMOTE4, USER4, 80, 40100, 1, b"HTTP/1.1 200 OK\r\n\r\n"),
    );
    run(
        &h,
        abi::PROG_LAN_INGRESS,
        &tcp(USER4, REMOTE4, 40101, 443, 1, &[0xabu8; 1400]),
    );
    run(
        &h,
        abi::PROG_LAN_INGRESS,
        &udp(USER4, REMOTE4, 40102, 443, &[0x01u8; 1200]),
    );
    run(
        &h,
        abi::PROG_LAN_INGRESS,
        &tcp(USER4, REMOTE4, 40103, 22, 1, b"SSH-2.0-OpenSSH_9.2\r\n"),
    );
    assert!(h.drain_events().is_empty());
    assert_eq!(h.flows().unwrap().len(), 4);
}

#[test]
fn per_flow_event_cap() {
    let Some(mut h) = harness() else { return };
    let q = fixture("dns_query.hex");
    let hello = fixture("tls_clienthello_chrome.hex");
    // A TLS flow that keeps sending hellos: only the inspected packets can produce events,
    // and never more than the cap.
    for i in 0..40u32 {
        run(
            &h,
            abi::PROG_LAN_INGRESS,
            &tcp(USER4, REMOTE4, 40200, 443, i * 10_000, &hello),
        );
    }
    let tls = h.drain_events();
    assert_eq!(tls.len(), abi::DEFAULT_INSPECT_PACKETS as usize);
    // DNS is not limited by the inspection budget, only by its cap.
    for _ in 0..(abi::DEFAULT_MAX_DNS_EVENTS_PER_FLOW + 10) {
        run(
            &h,
            abi::PROG_LAN_INGRESS,
            &udp(USER4, REMOTE4, 5300, 53, &q),
        );
    }
    let dns = h.drain_events();
    assert_eq!(dns.len(), abi::DEFAULT_MAX_DNS_EVENTS_PER_FLOW as usize);
    assert!(dns.last().unwrap().last_for_flow);
    assert_eq!(h.stats().unwrap().events_capped, 10);
}

#[test]
fn malformed_and_truncated_packets_pass_and_are_counted() {
    let Some(mut h) = harness() else { return };
    let hello = fixture("tls_clienthello_chrome.hex");
    let good = tcp(USER4, REMOTE4, 40300, 443, 1, &hello).frame();
    // Every truncation of the frame (the IP header then claims more than is there). The kernel
    // refuses to test-run frames shorter than Ethernet + IPv4 header, so those return errors.
    for n in 0..good.len() {
        let r = h.run(abi::PROG_LAN_INGRESS, &good[..n], 1);
        if let Ok(r) = r {
            assert_eq!(r.action, TC_ACT_UNSPEC, "cut at {n}");
        }
    }
    let s = h.stats().unwrap();
    assert!(s.err_tcp > 0 && s.err_payload > 0, "{s:?}");
    // Cut payloads still give their bytes, flagged by orig_len > payload length.
    let evs = h.drain_events();
    assert!(!evs.is_empty());
    assert!(evs.iter().all(|e| e.payload.len() <= e.orig_len as usize));
    assert!(evs.iter().all(|e| hello.starts_with(&e.payload)));

    let before = h.stats().unwrap();
    let mut bad_ver = good.clone();
    bad_ver[14] = 0x55; // IP version 5
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x43; // IHL 12 bytes
    let mut bad_doff = good.clone();
    bad_doff[14 + 20 + 12] = 0x20; // TCP data offset 8 bytes
    let mut arp = good.clone();
    arp[12] = 0x08;
    arp[13] = 0x06;
    let mut frag = good.clone();
    frag[14 + 6] = 0x00;
    frag[14 + 7] = 0x10; // fragment offset 16
    let mut huge_ihl = good.clone();
    huge_ihl[14] = 0x4f; // IHL 60 bytes: TCP header read from the payload
    for f in [&bad_ver, &bad_ihl, &bad_doff, &arp, &frag, &huge_ihl] {
        let r = h.run(abi::PROG_LAN_INGRESS, f, 1).unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC);
    }
    let after = h.stats().unwrap();
    assert_eq!(after.err_ipv4 - before.err_ipv4, 2);
    assert!(after.err_tcp - before.err_tcp >= 1);
    assert_eq!(after.non_ip - before.non_ip, 1);
    assert_eq!(after.fragments - before.fragments, 1);
}

#[test]
fn forwarded_packets_are_counted_once() {
    let Some(mut h) = harness() else { return };
    h.add_iface(7, true).unwrap();
    let p = tcp(USER4, REMOTE4, 40400, 443, 1, b"data").frame();
    // Seen at our ingress on interface 7 first, then leaving through a WAN egress hook.
    run(
        &h,
        abi::PROG_LAN_INGRESS,
        &tcp(USER4, REMOTE4, 40400, 443, 1, b"data"),
    );
    let r = h.run_forwarded(abi::PROG_WAN_EGRESS, &p, 7).unwrap();
    assert_eq!(r.action, TC_ACT_UNSPEC);
    // Forwarded from an interface we are not attached to: counted.
    let r = h.run_forwarded(abi::PROG_WAN_EGRESS, &p, 9).unwrap();
    assert_eq!(r.action, TC_ACT_UNSPEC);
    let f = &h.flows().unwrap()[0];
    assert_eq!(
        f.packets_up, 2,
        "once at ingress, once from the unattached interface"
    );
    assert_eq!(h.stats().unwrap().dedup, 1);
}
