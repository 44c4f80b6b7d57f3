//! Session-control steering in the kernel programs through BPF_PROG_TEST_RUN: which
//! packets get `STEER_MARK`, the per-flow decision at the SYN, QUIC refusal toward steered
//! destinations, and that everything else passes untouched. The assignment of a SYN to the
//! proxy's listener (`bpf_sk_assign`) needs a real TC ingress, which a test run is not; it is
//! exercised end to end by tests/tests/session_control.rs. Needs root.

use std::{net::IpAddr, time::Duration};

use tollgate_dataplane::{
    Action, EnforceOptions, FlowTuple, L4Proto, NameRule, abi, flow_key,
    testing::{L4, PacketSpec, ProbeHarness, TC_ACT_SHOT, TC_ACT_UNSPEC, tcp_flags},
};

mod common;
use common::with_harness;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

const USER4: &str = "192.0.2.10";
const STEERED4: &str = "198.51.100.20";
const OTHER4: &str = "203.0.113.9";
const THIRD4: &str = "203.0.113.10";
const USER6: &str = "2001:db8:1::10";
const STEERED6: &str = "2001:db8:2::20";

fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    PacketSpec {
        src: ip(src),
        dst: ip(dst),
        sport,
        dport,
        l4: L4::Tcp { seq: 1000, flags },
        vlan: None,
        payload: Vec::new(),
    }
    .frame()
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    PacketSpec {
        src: ip(src),
        dst: ip(dst),
        sport,
        dport,
        l4: L4::Udp,
        vlan: None,
        payload: payload.to_vec(),
    }
    .frame()
}

fn steered_flag(h: &ProbeHarness, user: &str, sport: u16, remote: &str) -> Option<bool> {
    let key = flow_key(
        &FlowTuple::new(L4Proto::Tcp, (ip(user), sport), (ip(remote), 443)),
        0,
    )?;
    h.flow_value(&key)
        .expect("flow map")
        .map(|v| v.flags & abi::FLOW_F_STEERED != 0)
}

const SYN: u8 = tcp_flags::SYN;
const ACK: u8 = tcp_flags::ACK;

#[test]
fn syn_to_a_steered_destination_is_decided_and_others_pass_unmarked() {
    with_harness(|h| {
        h.steering()
            .add(ip(STEERED4), 32, 7, Some(Duration::from_secs(600)))
            .unwrap();
        h.steering().add(ip(STEERED6), 128, 7, None).unwrap();
        let prog = abi::PROG_LAN_INGRESS;

        // A SYN toward a destination nobody steers: passes, unmarked, not counted.
        let r = h
            .run(prog, &tcp(USER4, OTHER4, 40000, 443, SYN), 1)
            .unwrap();
        assert_eq!((r.action, r.mark), (TC_ACT_UNSPEC, 0));
        assert_eq!(steered_flag(h, USER4, 40000, OTHER4), Some(false));

        // A SYN toward a steered destination on another port: untouched.
        let r = h
            .run(prog, &tcp(USER4, STEERED4, 40001, 80, SYN), 1)
            .unwrap();
        assert_eq!((r.action, r.mark), (TC_ACT_UNSPEC, 0));

        // A SYN toward a steered destination, but no proxy listener in the sockmap (a test
        // run cannot assign one either): refused with a reset (in monitor mode too), never
        // passed direct, which would bypass session control. Both families.
        let before = h.stats().unwrap().raw[abi::STAT_STEER_NO_PROXY];
        let r = h
            .run(prog, &tcp(USER4, STEERED4, 40002, 443, SYN), 1)
            .unwrap();
        assert_eq!((r.action, r.mark), (TC_ACT_SHOT, 0));
        assert_eq!(steered_flag(h, USER4, 40002, STEERED4), Some(false));
        let r = h
            .run(prog, &tcp(USER6, STEERED6, 40003, 443, SYN), 1)
            .unwrap();
        assert_eq!((r.action, r.mark), (TC_ACT_SHOT, 0));
        let after = h.stats().unwrap().raw[abi::STAT_STEER_NO_PROXY];
        assert_eq!(after - before, 2);
        assert_eq!(
            h.stats().unwrap().raw[abi::STAT_RST_SENT],
            2,
            "no reset sent"
        );
        assert_eq!(h.stats().unwrap().raw[abi::STAT_STEERED], 0);

        // An expired entry steers nothing (not even counted as a miss).
        h.steering()
            .add(ip(OTHER4), 32, 7, Some(Duration::from_nanos(1)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let r = h
            .run(prog, &tcp(USER4, OTHER4, 40004, 443, SYN), 1)
            .unwrap();
        assert_eq!(r.mark, 0);
        assert_eq!(
            h.stats().unwrap().raw[abi::STAT_STEER_NO_PROXY],
            after,
            "an expired entry was looked at as live"
        );
        assert_eq!(h.steering().expire().unwrap(), 1);
        assert_eq!(h.steering().entries().unwrap().len(), 2);

        // Fail-open chosen and the daemon (with its proxy) gone for good: users keep working,
        // unproxied; while its heartbeat is fresh, the reset stays.
        h.verdicts()
            .set_enforce_options(EnforceOptions {
                fail_open: true,
                heartbeat_timeout: Duration::from_millis(50),
                block_quic: false,
                refuse_dns: false,
            })
            .unwrap();
        h.verdicts().heartbeat().unwrap();
        let syn = tcp(USER4, STEERED4, 40005, 443, SYN);
        assert_eq!(h.run(prog, &syn, 1).unwrap().action, TC_ACT_SHOT);
        std::thread::sleep(Duration::from_millis(200));
        let r = h.run(prog, &syn, 1).unwrap();
        assert_eq!((r.action, r.mark), (TC_ACT_UNSPEC, 0), "fail-open: direct");
    });
}

#[test]
fn a_steered_flow_is_marked_on_every_packet_until_a_new_syn_decides_again() {
    with_harness(|h| {
        let prog = abi::PROG_LAN_INGRESS;
        h.steering().add(ip(STEERED4), 32, 7, None).unwrap();
        // A flow the probes steered at its SYN (assignment needs a real ingress; see above).
        let key = flow_key(
            &FlowTuple::new(L4Proto::Tcp, (ip(USER4), 41000), (ip(STEERED4), 443)),
            0,
        )
        .unwrap();
        let v = abi::FlowValue {
            flags: abi::FLOW_F_STEERED,
            ..abi::FlowValue::default()
        };
        h.set_flow_value(&key, &v).unwrap();
        for flags in [ACK, ACK | tcp_flags::PSH, ACK | tcp_flags::FIN] {
            let r = h
                .run(prog, &tcp(USER4, STEERED4, 41000, 443, flags), 1)
                .unwrap();
            assert_eq!(
                (r.action, r.mark),
                (TC_ACT_UNSPEC, abi::STEER_MARK),
                "flags {flags:#x}"
            );
        }
        // Removing the destination does not break the proxied connection: still marked.
        h.steering().remove(ip(STEERED4), 32).unwrap();
        h.steering().remove(ip(STEERED4), 32).unwrap(); // absent: nothing to do
        let r = h
            .run(prog, &tcp(USER4, STEERED4, 41000, 443, ACK), 1)
            .unwrap();
        assert_eq!(r.mark, abi::STEER_MARK);
        // Only the LAN ingress hook steers: the same packet on other hooks is not marked.
        for other in [abi::PROG_WAN_EGRESS, abi::PROG_LAN_EGRESS] {
            let r = h
                .run(other, &tcp(USER4, STEERED4, 41000, 443, ACK), 1)
                .unwrap();
            assert_eq!(r.mark, 0, "{other}");
        }
        // A new SYN on the same 4-tuple (port reuse) toward an unsteered destination decides
        // again: direct, and its later packets are no longer marked.
        let r = h
            .run(prog, &tcp(USER4, STEERED4, 41000, 443, SYN), 1)
            .unwrap();
        assert_eq!(r.mark, 0);
        assert_eq!(steered_flag(h, USER4, 41000, STEERED4), Some(false));
        let r = h
            .run(prog, &tcp(USER4, STEERED4, 41000, 443, ACK), 1)
            .unwrap();
        assert_eq!(r.mark, 0);

        // Adding a destination never diverts a direct connection already running: its
        // packets after the add stay unmarked (only a SYN decides).
        let r = h
            .run(prog, &tcp(USER4, OTHER4, 41001, 443, SYN), 1)
            .unwrap();
        assert_eq!(r.mark, 0);
        h.steering().add(ip(OTHER4), 32, 7, None).unwrap();
        let r = h
            .run(prog, &tcp(USER4, OTHER4, 41001, 443, ACK), 1)
            .unwrap();
        assert_eq!((r.action, r.mark), (TC_ACT_UNSPEC, 0));
        assert_eq!(steered_flag(h, USER4, 41001, OTHER4), Some(false));
    });
}

#[test]
fn quic_initials_toward_a_steered_destination_are_refused_in_every_mode() {
    with_harness(|h| {
        h.steering().add(ip(STEERED4), 32, 7, None).unwrap();
        h.steering().add(ip(STEERED6), 128, 7, None).unwrap();
        let prog = abi::PROG_LAN_INGRESS;
        // A long-header packet (first byte 0xc0 | type): an Initial.
        let mut initial = vec![0xc3, 0, 0, 0, 1];
        initial.resize(1200, 0);
        // The harness starts in monitor mode: session control applies anyway.
        let r = h
            .run(prog, &udp(USER4, STEERED4, 50000, 443, &initial), 1)
            .unwrap();
        assert_eq!(r.action, TC_ACT_SHOT);
        let r = h
            .run(prog, &udp(USER6, STEERED6, 50001, 443, &initial), 1)
            .unwrap();
        assert_eq!(r.action, TC_ACT_SHOT);
        let s = h.stats().unwrap();
        assert_eq!(s.raw[abi::STAT_STEER_QUIC_REFUSED], 2);
        assert_eq!(s.raw[abi::STAT_ICMP_SENT], 2, "no ICMP unreachable sent");
        // A short-header packet of a QUIC connection already running passes.
        let short = [0x43u8, 1, 2, 3, 4, 5, 6, 7, 8];
        let r = h
            .run(prog, &udp(USER4, STEERED4, 50002, 443, &short), 1)
            .unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC);
        // Initials toward other destinations, or other ports, pass.
        let r = h
            .run(prog, &udp(USER4, OTHER4, 50003, 443, &initial), 1)
            .unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC);
        let r = h
            .run(prog, &udp(USER4, STEERED4, 50004, 8443, &initial), 1)
            .unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC);
        assert_eq!(h.stats().unwrap().raw[abi::STAT_STEER_QUIC_REFUSED], 2);
    });
}

// ---- session control without a steering DNS answer: per-client steering ----

const USER4_B: &str = "192.0.2.11";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture present");
    tollgate_dataplane::testing::hex(&text).expect("fixture is hex")
}

fn tcp_payload(src: &str, dst: &str, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    // The first data byte follows the SYN's sequence number (`tcp` sends SYNs with seq 1000):
    // the probes read a stream from where its SYN placed it.
    PacketSpec::tcp(ip(src), ip(dst), sport, dport, 1001, flags, payload).frame()
}

/// Session control on, with `cnr.it` and its subdomains an app under session control (the
/// fixture's ClientHello names www.iit.cnr.it).
fn session_names(h: &mut ProbeHarness) {
    let mut v = h.verdicts();
    v.set_session_control(true).unwrap();
    v.set_name_rule(
        "cnr.it",
        NameRule {
            action: None,
            app_id: 9,
            subdomains: true,
            refuse_dns: false,
            session: true,
        },
    )
    .unwrap();
    v.commit().unwrap();
}

/// SYN from the user, SYN-ACK from the server: a flow the server answered.
fn handshake(h: &ProbeHarness, user: &str, sport: u16, remote: &str) {
    let r = h
        .run(
            abi::PROG_LAN_INGRESS,
            &tcp(user, remote, sport, 443, SYN),
            1,
        )
        .unwrap();
    assert_eq!(
        (r.action, r.mark),
        (TC_ACT_UNSPEC, 0),
        "SYN of a direct flow"
    );
    let r = h
        .run(
            abi::PROG_LAN_EGRESS,
            &tcp(remote, user, 443, sport, SYN | ACK),
            1,
        )
        .unwrap();
    assert_eq!(r.action, TC_ACT_UNSPEC);
}

#[test]
fn a_hello_naming_a_session_app_on_a_direct_flow_is_reset_and_steers_only_its_client() {
    with_harness(|h| {
        session_names(h);
        let hello = fixture("tls_clienthello_chrome.hex");
        let prog = abi::PROG_LAN_INGRESS;

        // Client A opens a direct flow to an address nobody steered (no DNS answer: DoH, a
        // hard-coded address) and names the app: the hello never reaches the origin, A gets a
        // reset (in monitor mode too), and A's connections to that address are steered.
        handshake(h, USER4, 42000, OTHER4);
        let r = h
            .run(
                prog,
                &tcp_payload(USER4, OTHER4, 42000, 443, ACK | tcp_flags::PSH, &hello),
                1,
            )
            .unwrap();
        assert_eq!(r.action, TC_ACT_SHOT, "the hello went on to the origin");
        let s = h.stats().unwrap();
        assert_eq!(
            (s.session_refused, s.steer_client_added, s.rst_sent),
            (1, 1, 1)
        );
        assert!(
            h.steering()
                .client_entry(ip(USER4), 0, ip(OTHER4))
                .unwrap()
                .is_some(),
            "no per-client steer entry"
        );
        assert!(
            h.steering().entries().unwrap().is_empty(),
            "steered for everyone"
        );
        // A's retry is steered (a test run has no proxy listener, so the steered SYN is
        // refused rather than passed direct; a real ingress assigns it to the proxy).
        let r = h
            .run(prog, &tcp(USER4, OTHER4, 42001, 443, SYN), 1)
            .unwrap();
        assert_eq!(r.action, TC_ACT_SHOT, "A's retry went direct");
        assert_eq!(h.stats().unwrap().steer_by_client, 1);
        // Client B's connections to the same address are not steered: they pass direct.
        let r = h
            .run(prog, &tcp(USER4_B, OTHER4, 42002, 443, SYN), 1)
            .unwrap();
        assert_eq!(
            (r.action, r.mark),
            (TC_ACT_UNSPEC, 0),
            "B was steered by A's hello"
        );
        assert_eq!(steered_flag(h, USER4_B, 42002, OTHER4), Some(false));
        assert_eq!(h.stats().unwrap().steer_by_client, 1);

        // A hello without a handshake (a crafted segment toward an address the client may
        // not even reach) is refused, but steers nothing, not even for its sender.
        let r = h
            .run(
                prog,
                &tcp_payload(USER4_B, STEERED4, 42003, 443, ACK, &hello),
                1,
            )
            .unwrap();
        assert_eq!(r.action, TC_ACT_SHOT);
        assert_eq!(h.stats().unwrap().session_unproven, 1);
        assert!(
            h.steering()
                .client_entry(ip(USER4_B), 0, ip(STEERED4))
                .unwrap()
                .is_none()
        );
        let r = h
            .run(prog, &tcp(USER4_B, STEERED4, 42004, 443, SYN), 1)
            .unwrap();
        assert_eq!((r.action, r.mark), (TC_ACT_UNSPEC, 0));

        // A hello on a flow the proxy already has passes (the proxy sees it).
        let key = flow_key(
            &FlowTuple::new(L4Proto::Tcp, (ip(USER4), 42005), (ip(OTHER4), 443)),
            0,
        )
        .unwrap();
        h.set_flow_value(
            &key,
            &abi::FlowValue {
                flags: abi::FLOW_F_STEERED,
                tcp_flags: u32::from(SYN),
                ..abi::FlowValue::default()
            },
        )
        .unwrap();
        let r = h
            .run(
                prog,
                &tcp_payload(USER4, OTHER4, 42005, 443, ACK, &hello),
                1,
            )
            .unwrap();
        assert_eq!((r.action, r.mark), (TC_ACT_UNSPEC, abi::STEER_MARK));

        // Session control off (no proxy running): the same hello passes.
        h.verdicts().set_session_control(false).unwrap();
        handshake(h, USER4_B, 42006, OTHER4);
        let r = h
            .run(
                prog,
                &tcp_payload(USER4_B, OTHER4, 42006, 443, ACK, &hello),
                1,
            )
            .unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC);
        assert_eq!(h.stats().unwrap().session_refused, 2);
    });
}

/// A DNS response for `name` (type A) with one answer `addr`.
fn dns_answer(id: u16, name: &str, addr: [u8; 4]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x81, 0x80]); // QR, RD, RA
    m.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0]);
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&[0, 1, 0, 1]);
    m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    m.extend_from_slice(&addr);
    m
}

#[test]
fn dns_answers_for_session_apps_are_held_for_the_daemon() {
    with_harness(|h| {
        session_names(h);
        let _ = h.drain_events();
        let prog = abi::PROG_LAN_EGRESS;
        let answer = dns_answer(7, "www.iit.cnr.it", [203, 0, 113, 9]);
        // The user's query first: the probes pass an answer to userspace only on a flow
        // whose user side sent through this interface (a spoofed answer is not even held).
        let mut query = answer[..answer.len() - 16].to_vec();
        query[2..4].copy_from_slice(&[0x01, 0x00]);
        query[6..8].copy_from_slice(&[0, 0]);
        let r = h
            .run(
                abi::PROG_LAN_INGRESS,
                &udp(USER4, STEERED4, 50100, 53, &query),
                1,
            )
            .unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC, "the query goes on");
        let frame = udp(STEERED4, USER4, 53, 50100, &answer);
        // No daemon heartbeat (nobody would send it on): the answer passes.
        let r = h.run(prog, &frame, 1).unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC, "held without a daemon");
        // With a live daemon: dropped, and handed over whole in a held record.
        h.verdicts().heartbeat().unwrap();
        let r = h.run(prog, &frame, 1).unwrap();
        assert_eq!(r.action, TC_ACT_SHOT, "the answer went on before steering");
        assert_eq!(h.stats().unwrap().dns_held, 1);
        let held: Vec<_> = h.drain_events().into_iter().filter(|e| e.held).collect();
        assert_eq!(held.len(), 1);
        assert_eq!(&held[0].payload[..], &answer[..]);
        assert_eq!(
            (
                held[0].flow.remote_ip,
                held[0].flow.remote_port,
                held[0].flow.user_ip,
                held[0].flow.user_port
            ),
            (ip(STEERED4), 53, ip(USER4), 50100)
        );
        // What the daemon sends on is the same datagram.
        let pkt = tollgate_dataplane::held_dns_packet(&held[0]).unwrap();
        assert_eq!(&pkt[28..], &answer[..]);
        // Forwarded from another attached interface (whose WAN ingress hook saw it before
        // NAT was undone): still held here, where it names its client. A WAN ingress hook
        // never holds.
        h.add_iface(7, false).unwrap();
        h.run(
            abi::PROG_LAN_INGRESS,
            &udp(USER4, STEERED4, 50102, 53, &query),
            1,
        )
        .unwrap();
        let r = h
            .run_forwarded(prog, &udp(STEERED4, USER4, 53, 50102, &answer), 7)
            .unwrap();
        assert_eq!(r.action, TC_ACT_SHOT, "a forwarded answer was not held");
        let r = h
            .run(
                abi::PROG_WAN_INGRESS,
                &udp(STEERED4, USER4, 53, 50103, &answer),
                1,
            )
            .unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC);
        assert_eq!(h.stats().unwrap().dns_held, 2);
        let _ = h.drain_events();
        // Other names pass.
        let other = dns_answer(8, "example.org", [203, 0, 113, 10]);
        let r = h
            .run(prog, &udp(STEERED4, USER4, 53, 50101, &other), 1)
            .unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC);
        assert_eq!(h.stats().unwrap().dns_held, 2);
    });
}

#[test]
fn steering_outlives_its_expiry_while_the_daemon_is_gone_and_fail_closed() {
    with_harness(|h| {
        let prog = abi::PROG_LAN_INGRESS;
        h.steering()
            .add(ip(STEERED4), 32, 7, Some(Duration::from_millis(50)))
            .unwrap();
        h.steering()
            .add_client(ip(USER4), 0, ip(OTHER4), 7, Duration::from_millis(50))
            .unwrap();
        let opts = |fail_open| EnforceOptions {
            fail_open,
            heartbeat_timeout: Duration::from_millis(100),
            block_quic: false,
            refuse_dns: false,
        };
        h.verdicts().set_enforce_options(opts(false)).unwrap();
        h.verdicts().heartbeat().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // Both entries expired and the daemon's heartbeat is stale: still steered (the SYN is
        // refused for want of a proxy), never direct.
        for (sport, dst) in [(43000, STEERED4), (43001, OTHER4)] {
            let r = h.run(prog, &tcp(USER4, dst, sport, 443, SYN), 1).unwrap();
            assert_eq!(r.action, TC_ACT_SHOT, "{dst}: an expired entry went direct");
        }
        assert!(h.stats().unwrap().steer_kept_stale >= 2);
        // A live daemon lets its entries expire (it renews what is still wanted).
        h.verdicts().heartbeat().unwrap();
        for (sport, dst) in [(43002, STEERED4), (43003, OTHER4)] {
            let r = h.run(prog, &tcp(USER4, dst, sport, 443, SYN), 1).unwrap();
            assert_eq!((r.action, r.mark), (TC_ACT_UNSPEC, 0), "{dst}");
        }
        // Fail-open chosen: a stale heartbeat lets them expire too.
        h.verdicts().set_enforce_options(opts(true)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let r = h
            .run(prog, &tcp(USER4, STEERED4, 43004, 443, SYN), 1)
            .unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC);
    });
}

#[test]
fn a_steered_flow_whose_state_was_lost_is_reset_not_sent_direct() {
    with_harness(|h| {
        let prog = abi::PROG_LAN_INGRESS;
        h.verdicts().set_session_control(true).unwrap();
        h.steering().add(ip(STEERED4), 32, 7, None).unwrap();
        // Mid-flow packets of a flow whose state is gone (evicted): toward a steered
        // destination they are reset, whatever the flow was.
        let r = h
            .run(
                prog,
                &tcp(USER4, STEERED4, 44000, 443, ACK | tcp_flags::PSH),
                1,
            )
            .unwrap();
        assert_eq!(r.action, TC_ACT_SHOT, "a lost steered flow went on direct");
        assert_eq!(h.stats().unwrap().steer_lost_reset, 1);
        // Toward other destinations, and resets, they pass.
        let r = h
            .run(prog, &tcp(USER4, OTHER4, 44001, 443, ACK), 1)
            .unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC);
        let r = h
            .run(prog, &tcp(USER4, STEERED4, 44002, 443, tcp_flags::RST), 1)
            .unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC);
        // A flow whose SYN was seen and decided direct (before the address was steered)
        // keeps going direct.
        let r = h
            .run(prog, &tcp(USER4, OTHER4, 44003, 443, SYN), 1)
            .unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC);
        h.steering().add(ip(OTHER4), 32, 7, None).unwrap();
        let r = h
            .run(prog, &tcp(USER4, OTHER4, 44003, 443, ACK), 1)
            .unwrap();
        assert_eq!((r.action, r.mark), (TC_ACT_UNSPEC, 0));
        assert_eq!(h.stats().unwrap().steer_lost_reset, 1);
        // So does a flow whose SYN was not seen but whose first packet was found direct
        // (the steer tries are looked up once per such flow).
        let r = h
            .run(prog, &tcp(USER4, THIRD4, 44004, 443, ACK), 1)
            .unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC);
        h.steering().add(ip(THIRD4), 32, 7, None).unwrap();
        let r = h
            .run(prog, &tcp(USER4, THIRD4, 44004, 443, ACK), 1)
            .unwrap();
        assert_eq!((r.action, r.mark), (TC_ACT_UNSPEC, 0));
        assert_eq!(h.stats().unwrap().steer_lost_reset, 1);
    });
}

#[test]
fn a_quic_flow_refused_by_session_control_is_refused_in_monitor_mode_too() {
    with_harness(|h| {
        let prog = abi::PROG_LAN_INGRESS;
        let mut initial = vec![0xc3, 0, 0, 0, 1];
        initial.resize(1200, 0);
        // The daemon decrypted this flow's Initial: an app under session control, toward an
        // address no DNS answer steered. Its verdict refuses it although the mode is monitor.
        let key = flow_key(
            &FlowTuple::new(L4Proto::Udp, (ip(USER4), 50500), (ip(OTHER4), 443)),
            0,
        )
        .unwrap();
        let r = h
            .run(prog, &udp(USER4, OTHER4, 50500, 443, &initial), 1)
            .unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC, "no verdict yet");
        let mut v = h.verdicts();
        v.set_flow(&key, Action::Refuse, 0, None).unwrap();
        v.commit().unwrap();
        let r = h
            .run(prog, &udp(USER4, OTHER4, 50500, 443, &initial), 1)
            .unwrap();
        assert_eq!(r.action, TC_ACT_SHOT, "refused QUIC passed in monitor mode");
        assert_eq!(h.stats().unwrap().icmp_sent, 1, "no ICMP unreachable");
        // An unsanctioned app's block stays a "would drop" in monitor mode.
        let key = flow_key(
            &FlowTuple::new(L4Proto::Udp, (ip(USER4), 50501), (ip(OTHER4), 443)),
            0,
        )
        .unwrap();
        let mut v = h.verdicts();
        v.set_flow(&key, Action::Block, 0, None).unwrap();
        v.commit().unwrap();
        let r = h
            .run(prog, &udp(USER4, OTHER4, 50501, 443, &initial), 1)
            .unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC);
        // Nothing was steered by any of it.
        assert!(h.steering().entries().unwrap().is_empty());
        assert_eq!(h.steering().client_entries().unwrap(), 0);
    });
}
