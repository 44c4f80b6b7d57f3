//! The QUIC hold through BPF_PROG_TEST_RUN: in enforce mode, packets toward the user of a
//! flow whose client sent a QUIC Initial are dropped until userspace writes a flow verdict, or
//! until the hold times out (fail-open); monitor mode never holds. The client Initial is a real
//! one (nDPI capture, see testdata/README.md). Runs in a private network namespace. Needs root.

use std::{net::IpAddr, time::Duration};

use tollgate_dataplane::{
    Action, FlowTuple, L4Proto, Mode, abi, flow_key,
    testing::{L4, PacketSpec, ProbeHarness, TC_ACT_SHOT, TC_ACT_UNSPEC},
};

mod common;
use common::with_harness;

const USER: &str = "192.0.2.10";
const REMOTE: &str = "198.51.100.20";
const USER6: &str = "2001:db8:1::10";
const REMOTE6: &str = "2001:db8:2::20";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

fn initial() -> Vec<u8> {
    let path = format!(
        "{}/testdata/quic_v1_initial.hex",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("fixture present");
    tollgate_dataplane::testing::hex(&text).expect("fixture is hex")
}

/// The client's Initial (user -> remote:443).
fn up(user: &str, remote: &str, port: u16) -> Vec<u8> {
    PacketSpec {
        src: ip(user),
        dst: ip(remote),
        sport: port,
        dport: 443,
        l4: L4::Udp,
        vlan: None,
        payload: initial(),
    }
    .frame()
}

/// A server answer (remote:443 -> user): a long-header packet like a server Initial.
fn down(user: &str, remote: &str, port: u16) -> Vec<u8> {
    let mut payload = vec![0u8; 1200];
    payload[..5].copy_from_slice(&[0xc0, 0, 0, 0, 1]);
    PacketSpec {
        src: ip(remote),
        dst: ip(user),
        sport: 443,
        dport: port,
        l4: L4::Udp,
        vlan: None,
        payload,
    }
    .frame()
}

fn key(user: &str, remote: &str, port: u16) -> abi::FlowKey {
    flow_key(
        &FlowTuple::new(L4Proto::Udp, (ip(user), port), (ip(remote), 443)),
        0,
    )
    .expect("flow key")
}

fn action(h: &ProbeHarness, prog: &'static str, frame: &[u8]) -> i32 {
    h.run(prog, frame, 1).expect("test run").action
}

#[test]
fn held_until_an_allow_verdict() {
    with_harness(|h| {
        h.set_mode(Mode::Enforce).unwrap();
        for (user, remote, port) in [(USER, REMOTE, 50000), (USER6, REMOTE6, 50001)] {
            assert_eq!(
                action(h, abi::PROG_LAN_INGRESS, &up(user, remote, port)),
                TC_ACT_UNSPEC,
                "the client's Initial goes out"
            );
            let d = down(user, remote, port);
            assert_eq!(action(h, abi::PROG_LAN_EGRESS, &d), TC_ACT_SHOT, "held");
            assert_eq!(action(h, abi::PROG_WAN_INGRESS, &d), TC_ACT_SHOT, "held");
            // Allowed: no commit needed, the hold reads the flow verdict map.
            h.verdicts()
                .set_flow(&key(user, remote, port), Action::Allow, 7, None)
                .unwrap();
            assert_eq!(action(h, abi::PROG_LAN_EGRESS, &d), TC_ACT_UNSPEC);
            assert_eq!(action(h, abi::PROG_LAN_EGRESS, &d), TC_ACT_UNSPEC);
            // A retransmitted Initial does not hold the flow again.
            assert_eq!(
                action(h, abi::PROG_LAN_INGRESS, &up(user, remote, port)),
                TC_ACT_UNSPEC
            );
            assert_eq!(action(h, abi::PROG_LAN_EGRESS, &d), TC_ACT_UNSPEC);
        }
        let st = h.stats().unwrap();
        assert_eq!(st.quic_held, 4);
        assert_eq!(st.quic_hold_expired, 0);
    });
}

#[test]
fn a_block_verdict_answers_the_next_initial_with_icmp() {
    with_harness(|h| {
        h.set_mode(Mode::Enforce).unwrap();
        let d = down(USER, REMOTE, 50010);
        assert_eq!(
            action(h, abi::PROG_LAN_INGRESS, &up(USER, REMOTE, 50010)),
            TC_ACT_UNSPEC
        );
        assert_eq!(action(h, abi::PROG_LAN_EGRESS, &d), TC_ACT_SHOT);
        h.verdicts()
            .set_flow(&key(USER, REMOTE, 50010), Action::Block, 3, None)
            .unwrap();
        // The client retransmits its Initial: refused with an ICMP port unreachable.
        let r = h
            .run(abi::PROG_LAN_INGRESS, &up(USER, REMOTE, 50010), 1)
            .unwrap();
        assert_eq!(r.action, TC_ACT_SHOT);
        let icmp = r.data_out.get(34..36).expect("an ICMP message");
        assert_eq!(r.data_out.get(23), Some(&1), "IPv4 protocol ICMP");
        assert_eq!(icmp, &[3, 3], "port unreachable");
        // Server packets stay dropped (by the verdict now, not the hold).
        assert_eq!(action(h, abi::PROG_LAN_EGRESS, &d), TC_ACT_SHOT);
        let st = h.stats().unwrap();
        assert_eq!(st.quic_held, 1);
        assert_eq!(st.icmp_sent, 1);
    });
}

#[test]
fn released_after_the_hold_timeout() {
    with_harness(|h| {
        h.set_mode(Mode::Enforce).unwrap();
        let d = down(USER, REMOTE, 50020);
        assert_eq!(
            action(h, abi::PROG_LAN_INGRESS, &up(USER, REMOTE, 50020)),
            TC_ACT_UNSPEC
        );
        assert_eq!(action(h, abi::PROG_LAN_EGRESS, &d), TC_ACT_SHOT);
        // Well past QUIC_HOLD_NS (the probes' clock has jiffy resolution).
        std::thread::sleep(Duration::from_nanos(abi::QUIC_HOLD_NS) + Duration::from_millis(100));
        assert_eq!(action(h, abi::PROG_LAN_EGRESS, &d), TC_ACT_UNSPEC);
        assert_eq!(action(h, abi::PROG_LAN_EGRESS, &d), TC_ACT_UNSPEC);
        let st = h.stats().unwrap();
        assert_eq!(st.quic_held, 1);
        assert_eq!(st.quic_hold_expired, 1);
    });
}

#[test]
fn never_held_in_monitor_mode_or_when_switched_off() {
    with_harness(|h| {
        h.set_mode(Mode::Monitor).unwrap();
        assert_eq!(
            action(h, abi::PROG_LAN_INGRESS, &up(USER, REMOTE, 50030)),
            TC_ACT_UNSPEC
        );
        assert_eq!(
            action(h, abi::PROG_LAN_EGRESS, &down(USER, REMOTE, 50030)),
            TC_ACT_UNSPEC
        );
        h.set_mode(Mode::Enforce).unwrap();
        h.verdicts().set_quic_hold(false).unwrap();
        assert_eq!(
            action(h, abi::PROG_LAN_INGRESS, &up(USER, REMOTE, 50031)),
            TC_ACT_UNSPEC
        );
        assert_eq!(
            action(h, abi::PROG_LAN_EGRESS, &down(USER, REMOTE, 50031)),
            TC_ACT_UNSPEC
        );
        // Switched back on: a new QUIC flow is held; a plain UDP flow (no Initial) is not.
        h.verdicts().set_quic_hold(true).unwrap();
        assert_eq!(
            action(h, abi::PROG_LAN_INGRESS, &up(USER, REMOTE, 50032)),
            TC_ACT_UNSPEC
        );
        assert_eq!(
            action(h, abi::PROG_LAN_EGRESS, &down(USER, REMOTE, 50032)),
            TC_ACT_SHOT
        );
        let plain = PacketSpec {
            src: ip(USER),
            dst: ip(REMOTE),
            sport: 50033,
            dport: 443,
            l4: L4::Udp,
            vlan: None,
            payload: vec![0x40; 100],
        }
        .frame();
        assert_eq!(action(h, abi::PROG_LAN_INGRESS, &plain), TC_ACT_UNSPEC);
        assert_eq!(
            action(h, abi::PROG_LAN_EGRESS, &down(USER, REMOTE, 50033)),
            TC_ACT_UNSPEC
        );
        assert_eq!(h.stats().unwrap().quic_held, 1);
    });
}
