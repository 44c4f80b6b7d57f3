//! Session-control steering in the kernel programs (issue 6) through BPF_PROG_TEST_RUN: which
//! packets get `STEER_MARK`, the per-flow decision at the SYN, QUIC refusal toward steered
//! destinations, and that everything else passes untouched. The assignment of a SYN to the
//! proxy's listener (`bpf_sk_assign`) needs a real TC ingress, which a test run is not; it is
//! exercised end to end by tests/tests/session_control.rs. Needs root.

use std::{net::IpAddr, time::Duration};

use tollgate_dataplane::{
    EnforceOptions, abi, flow_key,
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
    let key = flow_key(abi::PROTO_TCP, ip(user), sport, ip(remote), 443, 0)?;
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
        let key = flow_key(abi::PROTO_TCP, ip(USER4), 41000, ip(STEERED4), 443, 0).unwrap();
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
