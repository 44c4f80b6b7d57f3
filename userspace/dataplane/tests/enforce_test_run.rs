//! Enforcement in the kernel programs through BPF_PROG_TEST_RUN: verdicts from the
//! flow map and the LPM tries, TCP resets and ICMP unreachables built by the probes, monitor
//! mode and fail-open. Runs in a private network namespace (the probes send their resets with
//! bpf_clone_redirect; in a test run that is the namespace's loopback). Needs root.

use std::{net::IpAddr, time::Duration};

use tollgate_dataplane::{
    Action, EnforceOptions, Mode, NameRule, abi,
    testing::{L4, PacketSpec, ProbeHarness, TC_ACT_SHOT, TC_ACT_UNSPEC, tcp_flags},
};

mod common;
use common::with_harness;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

const USER4: &str = "192.0.2.10";
const REMOTE4: &str = "198.51.100.20";
const OTHER4: &str = "203.0.113.9";
const USER6: &str = "2001:db8:1::10";
const REMOTE6: &str = "2001:db8:2::20";

fn tcp(
    src: &str,
    dst: &str,
    sport: u16,
    dport: u16,
    seq: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    PacketSpec::tcp(ip(src), ip(dst), sport, dport, seq, flags, payload).frame()
}

fn csum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in bytes.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

struct Rst {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
}

/// Parses an Ethernet/IPv4|IPv6/TCP frame without options and checks both checksums.
fn parse_rst(f: &[u8]) -> Rst {
    let et = u16::from_be_bytes([f[12], f[13]]);
    let (src, dst, tcp, pseudo) = if et == 0x0800 {
        let ip_hdr = &f[14..34];
        assert_eq!(csum(ip_hdr), 0, "IPv4 header checksum");
        assert_eq!(u16::from_be_bytes([ip_hdr[2], ip_hdr[3]]), 40);
        assert_eq!(f.len(), 14 + 40, "trimmed to headers");
        let s: [u8; 4] = ip_hdr[12..16].try_into().unwrap();
        let d: [u8; 4] = ip_hdr[16..20].try_into().unwrap();
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&s);
        pseudo.extend_from_slice(&d);
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        (IpAddr::from(s), IpAddr::from(d), &f[34..54], pseudo)
    } else {
        assert_eq!(et, 0x86dd);
        let ip_hdr = &f[14..54];
        assert_eq!(f.len(), 14 + 60);
        let s: [u8; 16] = ip_hdr[8..24].try_into().unwrap();
        let d: [u8; 16] = ip_hdr[24..40].try_into().unwrap();
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&s);
        pseudo.extend_from_slice(&d);
        pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, 6]);
        (IpAddr::from(s), IpAddr::from(d), &f[54..74], pseudo)
    };
    let mut all = pseudo;
    all.extend_from_slice(tcp);
    assert_eq!(csum(&all), 0, "TCP checksum");
    Rst {
        src,
        dst,
        sport: u16::from_be_bytes([tcp[0], tcp[1]]),
        dport: u16::from_be_bytes([tcp[2], tcp[3]]),
        seq: u32::from_be_bytes(tcp[4..8].try_into().unwrap()),
        ack: u32::from_be_bytes(tcp[8..12].try_into().unwrap()),
        flags: tcp[13],
    }
}

fn enforce_mode(h: &mut ProbeHarness) {
    h.set_mode(Mode::Enforce).unwrap();
}

#[test]
fn blocked_prefix_resets_the_user_in_both_directions() {
    with_harness(|h| {
        enforce_mode(h);
        let mut v = h.verdicts();
        v.set_prefix(ip("198.51.100.0"), 24, Action::Block, 7, None)
            .unwrap();
        v.commit().unwrap();
        // From the user, data with ACK: dropped, and the copy became a reset from the remote.
        let payload = [0x16u8, 3, 1, 0, 4, 1, 0, 0, 0];
        let f = tcp(
            USER4,
            REMOTE4,
            40000,
            443,
            1000,
            tcp_flags::ACK | tcp_flags::PSH,
            &payload,
        );
        let r = h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap();
        assert_eq!(r.action, TC_ACT_SHOT);
        let rst = parse_rst(&r.data_out);
        assert_eq!((rst.src, rst.dst), (ip(REMOTE4), ip(USER4)));
        assert_eq!((rst.sport, rst.dport), (443, 40000));
        assert_eq!(rst.seq, 1, "the user's ack number");
        assert_eq!(rst.ack, 1000 + payload.len() as u32);
        assert_eq!(rst.flags, tcp_flags::RST | tcp_flags::ACK);
        // MACs swapped: the reset goes back where the packet came from.
        assert_eq!(&r.data_out[0..6], &f[6..12]);
        // A SYN: reset with ack = seq + 1 (connection refused at once).
        let syn = tcp(USER4, REMOTE4, 40001, 443, 5000, tcp_flags::SYN, &[]);
        let r = h.run(abi::PROG_LAN_INGRESS, &syn, 1).unwrap();
        assert_eq!(r.action, TC_ACT_SHOT);
        let rst = parse_rst(&r.data_out);
        assert_eq!((rst.seq, rst.ack), (0, 5001));
        // Toward the user: the packet itself becomes the reset and passes.
        let down = tcp(REMOTE4, USER4, 443, 40000, 777, tcp_flags::ACK, &[0u8; 300]);
        let r = h.run(abi::PROG_LAN_EGRESS, &down, 1).unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC);
        let rst = parse_rst(&r.data_out);
        assert_eq!((rst.src, rst.dst, rst.seq), (ip(REMOTE4), ip(USER4), 777));
        // Another remote is untouched.
        let other = tcp(USER4, OTHER4, 40002, 443, 1, tcp_flags::ACK, b"x");
        assert_eq!(
            h.run(abi::PROG_LAN_INGRESS, &other, 1).unwrap().action,
            TC_ACT_UNSPEC
        );
        let s = h.stats().unwrap();
        assert_eq!(s.drops, 3);
        assert_eq!(s.rst_sent, 3);
        // Resets from the user are dropped without an answer.
        let rst_in = tcp(USER4, REMOTE4, 40000, 443, 1, tcp_flags::RST, &[]);
        assert_eq!(
            h.run(abi::PROG_LAN_INGRESS, &rst_in, 1).unwrap().action,
            TC_ACT_SHOT
        );
        assert_eq!(h.stats().unwrap().rst_sent, 3);
    });
}

#[test]
fn ipv6_prefix_block_and_monitor_mode() {
    with_harness(|h| {
        let mut v = h.verdicts();
        v.set_prefix(ip("2001:db8:2::"), 48, Action::Block, 1, None)
            .unwrap();
        v.commit().unwrap();
        let f = tcp(USER6, REMOTE6, 41000, 443, 10, tcp_flags::ACK, b"hello");
        // Monitor mode (the default): passes, counted as would-drop.
        let r = h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap();
        assert_eq!(r.action, TC_ACT_UNSPEC);
        assert_eq!(r.data_out, f, "monitor mode leaves the packet alone");
        assert_eq!(h.stats().unwrap().would_drop, 1);
        enforce_mode(h);
        let r = h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap();
        assert_eq!(r.action, TC_ACT_SHOT);
        let rst = parse_rst(&r.data_out);
        assert_eq!(
            (rst.src, rst.dst, rst.sport, rst.dport),
            (ip(REMOTE6), ip(USER6), 443, 41000)
        );
    });
}

#[test]
fn flow_verdicts_apply_after_commit_and_can_be_lifted() {
    with_harness(|h| {
        enforce_mode(h);
        let f = tcp(USER4, REMOTE4, 42000, 8443, 1, tcp_flags::ACK, b"data");
        assert_eq!(
            h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap().action,
            TC_ACT_UNSPEC
        );
        let key = h.flows().unwrap()[0].flow_key().unwrap();
        h.verdicts().set_flow(&key, Action::Drop, 3, None).unwrap();
        // Before commit the flow keeps its cached verdict only if one was cached: generation
        // 0 means nothing was ever looked up, so the commit is what arms the flow.
        h.verdicts().commit().unwrap();
        let r = h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap();
        assert_eq!(r.action, TC_ACT_SHOT);
        assert_eq!(r.data_out, f, "a silent drop does not rewrite the packet");
        // Other flows of the same hosts are not affected.
        let g = tcp(USER4, REMOTE4, 42001, 8443, 1, tcp_flags::ACK, b"data");
        assert_eq!(
            h.run(abi::PROG_LAN_INGRESS, &g, 1).unwrap().action,
            TC_ACT_UNSPEC
        );
        h.verdicts().clear_flow(&key).unwrap();
        h.verdicts().commit().unwrap();
        assert_eq!(
            h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap().action,
            TC_ACT_UNSPEC
        );
        // An expired verdict does not apply.
        h.verdicts()
            .set_flow(&key, Action::Drop, 3, Some(Duration::from_nanos(1)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        h.verdicts().commit().unwrap();
        assert_eq!(
            h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap().action,
            TC_ACT_UNSPEC
        );
    });
}

#[test]
fn quic_refused_with_icmp_port_unreachable() {
    with_harness(|h| {
        enforce_mode(h);
        h.verdicts()
            .set_enforce_options(EnforceOptions {
                fail_open: false,
                heartbeat_timeout: Duration::ZERO,
                block_quic: true,
                refuse_dns: false,
            })
            .unwrap();
        let mut initial = vec![0u8; 1200];
        initial[..5].copy_from_slice(&[0xc3, 0, 0, 0, 1]);
        let f = PacketSpec {
            src: ip(USER4),
            dst: ip(REMOTE4),
            sport: 50000,
            dport: 443,
            l4: L4::Udp,
            vlan: None,
            payload: initial,
        }
        .frame();
        let r = h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap();
        assert_eq!(r.action, TC_ACT_SHOT);
        let o = &r.data_out;
        assert_eq!(o.len(), 14 + 20 + 8 + 28);
        assert_eq!(&o[0..6], &f[6..12], "MACs swapped");
        let iph = &o[14..34];
        assert_eq!(csum(iph), 0);
        assert_eq!(iph[9], 1, "ICMP");
        assert_eq!(
            IpAddr::from(<[u8; 4]>::try_from(&iph[12..16]).unwrap()),
            ip(REMOTE4)
        );
        assert_eq!(
            IpAddr::from(<[u8; 4]>::try_from(&iph[16..20]).unwrap()),
            ip(USER4)
        );
        let icmp = &o[34..];
        assert_eq!((icmp[0], icmp[1]), (3, 3), "port unreachable");
        assert_eq!(csum(icmp), 0);
        assert_eq!(
            &icmp[8..36],
            &f[14..42],
            "quotes the original IP + UDP headers"
        );
        assert_eq!(h.stats().unwrap().icmp_sent, 1);
        // Non-QUIC UDP passes.
        let dns = PacketSpec {
            src: ip(USER4),
            dst: ip(REMOTE4),
            sport: 50001,
            dport: 53,
            l4: L4::Udp,
            vlan: None,
            payload: vec![0u8; 40],
        }
        .frame();
        assert_eq!(
            h.run(abi::PROG_LAN_INGRESS, &dns, 1).unwrap().action,
            TC_ACT_UNSPEC
        );
    });
}

#[test]
fn fail_open_when_the_heartbeat_is_stale() {
    with_harness(|h| {
        enforce_mode(h);
        let mut v = h.verdicts();
        v.set_prefix(ip(REMOTE4), 32, Action::Drop, 1, None)
            .unwrap();
        v.set_enforce_options(EnforceOptions {
            fail_open: true,
            heartbeat_timeout: Duration::from_millis(50),
            block_quic: false,
            refuse_dns: false,
        })
        .unwrap();
        v.heartbeat().unwrap();
        let f = tcp(USER4, REMOTE4, 43000, 443, 1, tcp_flags::ACK, b"x");
        assert_eq!(
            h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap().action,
            TC_ACT_SHOT
        );
        std::thread::sleep(Duration::from_millis(200));
        // The daemon is gone: fail-open passes and counts.
        assert_eq!(
            h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap().action,
            TC_ACT_UNSPEC
        );
        assert_eq!(h.stats().unwrap().would_drop, 1);
        h.verdicts().heartbeat().unwrap();
        assert_eq!(
            h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap().action,
            TC_ACT_SHOT
        );
    });
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture present");
    tollgate_dataplane::testing::hex(&text).expect("fixture is hex")
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present")
}

#[test]
fn sni_name_verdicts_in_the_kernel() {
    with_harness(|h| {
        enforce_mode(h);
        let hello = fixture("tls_clienthello_chrome.hex"); // SNI www.iit.cnr.it
        let mut v = h.verdicts();
        v.set_name("cnr.it", Action::Block, 11, true).unwrap();
        v.set_name("iit.cnr.it", Action::Allow, 12, false).unwrap(); // exact only
        v.commit().unwrap();
        let f = tcp(
            USER4,
            REMOTE4,
            44000,
            443,
            100,
            tcp_flags::ACK | tcp_flags::PSH,
            &hello,
        );
        let r = h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap();
        assert_eq!(r.action, TC_ACT_SHOT, "hello for a blocked parent domain");
        let rst = parse_rst(&r.data_out);
        assert_eq!(
            (rst.src, rst.dst, rst.ack),
            (ip(REMOTE4), ip(USER4), 100 + hello.len() as u32)
        );
        let s = h.stats().unwrap();
        assert_eq!(
            (s.raw[abi::STAT_SNI_FOUND], s.raw[abi::STAT_NAME_VERDICTS]),
            (1, 1)
        );
        // Later packets of the flow are dropped by the recorded flow verdict.
        let later = tcp(
            USER4,
            REMOTE4,
            44000,
            443,
            100,
            tcp_flags::ACK,
            &[0x17, 3, 3, 0, 1, 0],
        );
        assert_eq!(
            h.run(abi::PROG_LAN_INGRESS, &later, 1).unwrap().action,
            TC_ACT_SHOT
        );
        // The event was still sent before the verdict (userspace sees what was blocked).
        assert_eq!(h.drain_events().len(), 1);

        // A more specific allow wins over the parent's block.
        h.verdicts()
            .set_name("www.iit.cnr.it", Action::Allow, 13, false)
            .unwrap();
        h.verdicts().commit().unwrap();
        let g = tcp(
            USER4,
            REMOTE4,
            44001,
            443,
            1,
            tcp_flags::ACK | tcp_flags::PSH,
            &hello,
        );
        assert_eq!(
            h.run(abi::PROG_LAN_INGRESS, &g, 1).unwrap().action,
            TC_ACT_UNSPEC
        );

        // Monitor mode: found and counted, not dropped.
        h.verdicts().remove_name("www.iit.cnr.it").unwrap();
        h.verdicts().commit().unwrap();
        h.set_mode(Mode::Monitor).unwrap();
        let m = tcp(
            USER4,
            REMOTE4,
            44002,
            443,
            1,
            tcp_flags::ACK | tcp_flags::PSH,
            &hello,
        );
        assert_eq!(
            h.run(abi::PROG_LAN_INGRESS, &m, 1).unwrap().action,
            TC_ACT_UNSPEC
        );
        assert!(h.stats().unwrap().would_drop >= 1);
    });
}

#[test]
fn sni_in_a_later_segment_blocks_that_segment_at_every_split() {
    with_harness(|h| {
        enforce_mode(h);
        let hello = fixture("tls_clienthello_ech.hex"); // SNI performance.radar.cloudflare.com
        let name = b"performance.radar.cloudflare.com";
        let sni_end = find(&hello, name) + name.len();
        h.verdicts()
            .set_name("cloudflare.com", Action::Block, 21, true)
            .unwrap();
        h.verdicts().commit().unwrap();
        for k in 1..hello.len() {
            h.clear_flows().unwrap();
            let start = 5000u32;
            let a = tcp(
                USER4,
                REMOTE4,
                45000,
                443,
                start,
                tcp_flags::ACK,
                &hello[..k],
            );
            let b = tcp(
                USER4,
                REMOTE4,
                45000,
                443,
                start + k as u32,
                tcp_flags::ACK,
                &hello[k..],
            );
            let ra = h.run(abi::PROG_LAN_INGRESS, &a, 1).unwrap().action;
            let rb = h.run(abi::PROG_LAN_INGRESS, &b, 1).unwrap().action;
            if k >= sni_end {
                assert_eq!((ra, rb), (TC_ACT_SHOT, TC_ACT_SHOT), "split at {k}");
            } else {
                assert_eq!((ra, rb), (TC_ACT_UNSPEC, TC_ACT_SHOT), "split at {k}");
            }
            h.drain_events();
        }
    });
}

#[test]
fn quic_over_ipv6_refused_with_icmpv6_port_unreachable() {
    with_harness(|h| {
        enforce_mode(h);
        h.verdicts()
            .set_enforce_options(EnforceOptions {
                fail_open: false,
                heartbeat_timeout: Duration::ZERO,
                block_quic: true,
                refuse_dns: false,
            })
            .unwrap();
        let mut initial = vec![0u8; 1200];
        initial[..5].copy_from_slice(&[0xc3, 0, 0, 0, 1]);
        let f = PacketSpec {
            src: ip(USER6),
            dst: ip(REMOTE6),
            sport: 50000,
            dport: 443,
            l4: L4::Udp,
            vlan: None,
            payload: initial,
        }
        .frame();
        let r = h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap();
        assert_eq!(r.action, TC_ACT_SHOT);
        let o = &r.data_out;
        assert_eq!(o.len(), 14 + 40 + 8 + 48);
        let iph = &o[14..54];
        assert_eq!(
            (iph[0] >> 4, iph[6], u16::from_be_bytes([iph[4], iph[5]])),
            (6, 58, 56)
        );
        assert_eq!(
            IpAddr::from(<[u8; 16]>::try_from(&iph[8..24]).unwrap()),
            ip(REMOTE6)
        );
        assert_eq!(
            IpAddr::from(<[u8; 16]>::try_from(&iph[24..40]).unwrap()),
            ip(USER6)
        );
        let icmp = &o[54..];
        assert_eq!(
            (icmp[0], icmp[1]),
            (1, 4),
            "destination unreachable, port unreachable"
        );
        let mut all = iph[8..40].to_vec();
        all.extend_from_slice(&[0, 0, 0, 56, 0, 0, 0, 58]);
        all.extend_from_slice(icmp);
        assert_eq!(csum(&all), 0, "ICMPv6 checksum");
        assert_eq!(
            &icmp[8..56],
            &f[14..62],
            "quotes the original IPv6 + UDP headers"
        );
        assert_eq!(h.stats().unwrap().icmp_sent, 1);
    });
}

/// A DNS query message: `flags`, one question for `name` (type A), and an EDNS OPT record.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x20]); // RD, AD
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]);
    m.extend_from_slice(&encoded_name(name));
    m.extend_from_slice(&[0, 1, 0, 1]);
    m.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]); // OPT, 4096 bytes
    m
}

fn encoded_name(name: &str) -> Vec<u8> {
    let mut m = Vec::new();
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    PacketSpec::udp(ip(src), ip(dst), sport, dport, payload).frame()
}

/// A rule that refuses a name in DNS and decides no flow (as for the DoH canaries).
fn dns_only() -> NameRule {
    NameRule {
        action: None,
        app_id: 0,
        subdomains: false,
        refuse_dns: true,
        session: false,
    }
}

/// Checks an NXDOMAIN answer frame built by the probes from `query` (sent by `user:port` to
/// `server:53`): addresses and ports swapped, both checksums valid, the question echoed.
fn assert_nxdomain(f: &[u8], query: &[u8], user: &str, server: &str, port: u16) {
    let question = &query[12..query.len() - 11]; // without the OPT record
    let et = u16::from_be_bytes([f[12], f[13]]);
    let (src, dst, udp_seg, pseudo) = if et == 0x0800 {
        let ip_hdr = &f[14..34];
        assert_eq!(csum(ip_hdr), 0, "IPv4 header checksum");
        let total = usize::from(u16::from_be_bytes([ip_hdr[2], ip_hdr[3]]));
        assert_eq!(f.len(), 14 + total, "frame trimmed to the answer");
        let s: [u8; 4] = ip_hdr[12..16].try_into().unwrap();
        let d: [u8; 4] = ip_hdr[16..20].try_into().unwrap();
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&s);
        pseudo.extend_from_slice(&d);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&((total - 20) as u16).to_be_bytes());
        (IpAddr::from(s), IpAddr::from(d), &f[34..], pseudo)
    } else {
        assert_eq!(et, 0x86dd);
        let ip_hdr = &f[14..54];
        let plen = usize::from(u16::from_be_bytes([ip_hdr[4], ip_hdr[5]]));
        assert_eq!(f.len(), 54 + plen, "frame trimmed to the answer");
        let s: [u8; 16] = ip_hdr[8..24].try_into().unwrap();
        let d: [u8; 16] = ip_hdr[24..40].try_into().unwrap();
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&s);
        pseudo.extend_from_slice(&d);
        pseudo.extend_from_slice(&(plen as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
        (IpAddr::from(s), IpAddr::from(d), &f[54..], pseudo)
    };
    assert_eq!((src, dst), (ip(server), ip(user)));
    let mut all = pseudo;
    all.extend_from_slice(udp_seg);
    assert_eq!(csum(&all), 0, "UDP checksum");
    assert_eq!(
        (
            u16::from_be_bytes([udp_seg[0], udp_seg[1]]),
            u16::from_be_bytes([udp_seg[2], udp_seg[3]]),
            usize::from(u16::from_be_bytes([udp_seg[4], udp_seg[5]])),
        ),
        (53, port, udp_seg.len())
    );
    let msg = &udp_seg[8..];
    assert_eq!(&msg[..2], &query[..2], "id kept");
    assert_eq!(&msg[2..4], &[0x81, 0x83], "QR RD / RA NXDOMAIN");
    assert_eq!(
        &msg[4..12],
        &[0, 1, 0, 0, 0, 0, 0, 0],
        "one question, no records"
    );
    assert_eq!(&msg[12..], question);
}

#[test]
fn dns_queries_for_refused_names_answered_nxdomain_in_the_kernel() {
    with_harness(|h| {
        enforce_mode(h);
        let options = |refuse_dns| EnforceOptions {
            fail_open: false,
            heartbeat_timeout: Duration::from_secs(30),
            block_quic: false,
            refuse_dns,
        };
        let mut v = h.verdicts();
        v.set_enforce_options(options(true)).unwrap();
        v.set_name_rule(
            "blocked.example",
            NameRule {
                action: Some(Action::Block),
                app_id: 4,
                subdomains: true,
                refuse_dns: true,
                session: false,
            },
        )
        .unwrap();
        // Blocked for flows, not refused in DNS.
        v.set_name("quiet.example", Action::Block, 5, true).unwrap();
        // A canary: refused in DNS only.
        v.set_name_rule("use-application-dns.net", dns_only())
            .unwrap();
        v.commit().unwrap();

        // A subdomain, in mixed case, over IPv4 and IPv6.
        let q = dns_query(0x1234, "WWW.Blocked.Example");
        let r = h
            .run(
                abi::PROG_LAN_INGRESS,
                &udp(USER4, REMOTE4, 40000, 53, &q),
                1,
            )
            .unwrap();
        assert_eq!(r.action, TC_ACT_SHOT, "the query goes no further");
        assert_nxdomain(&r.data_out, &q, USER4, REMOTE4, 40000);
        let q6 = dns_query(0x4321, "blocked.example");
        let r = h
            .run(
                abi::PROG_LAN_INGRESS,
                &udp(USER6, REMOTE6, 40001, 53, &q6),
                1,
            )
            .unwrap();
        assert_eq!(r.action, TC_ACT_SHOT);
        assert_nxdomain(&r.data_out, &q6, USER6, REMOTE6, 40001);
        let q = dns_query(7, "use-application-dns.net");
        let r = h
            .run(
                abi::PROG_LAN_INGRESS,
                &udp(USER4, REMOTE4, 40002, 53, &q),
                1,
            )
            .unwrap();
        assert_nxdomain(&r.data_out, &q, USER4, REMOTE4, 40002);
        assert_eq!(h.stats().unwrap().raw[abi::STAT_DNS_REFUSED], 3);

        // Everything else passes untouched: other names, a name blocked without refusal, a
        // parent of the canary, the canary's subdomain, malformed questions.
        let mut pointer = dns_query(8, "x.blocked.example");
        pointer[12] = 0xc0; // a compression pointer where the name starts
        let mut two = dns_query(9, "blocked.example");
        two[5] = 2; // two questions
        let mut response = dns_query(10, "blocked.example");
        response[2] |= 0x80;
        let cut = dns_query(11, "blocked.example")[..20].to_vec();
        for (what, q) in [
            ("other name", dns_query(1, "example")),
            ("blocked without refusal", dns_query(2, "www.quiet.example")),
            ("parent of the canary", dns_query(3, "dns.net")),
            (
                "below the canary",
                dns_query(4, "x.use-application-dns.net"),
            ),
            ("suffix look-alike", dns_query(5, "notblocked.example")),
            ("compression pointer", pointer),
            ("two questions", two),
            ("a response", response),
            ("cut name", cut),
        ] {
            let f = udp(USER4, REMOTE4, 40010, 53, &q);
            let r = h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap();
            assert_eq!((what, r.action), (what, TC_ACT_UNSPEC));
            assert_eq!(r.data_out, f, "{what}: unchanged");
        }
        assert_eq!(h.stats().unwrap().raw[abi::STAT_DNS_REFUSED], 3);

        // The canary's DNS-only verdict decides no flow: a broader block still applies to the
        // SNI below it.
        let mut v = h.verdicts();
        v.set_name("cnr.it", Action::Block, 11, true).unwrap();
        v.set_name_rule("www.iit.cnr.it", dns_only()).unwrap();
        v.commit().unwrap();
        let hello = fixture("tls_clienthello_chrome.hex"); // SNI www.iit.cnr.it
        let f = tcp(USER4, REMOTE4, 44100, 443, 1, tcp_flags::ACK, &hello);
        assert_eq!(
            h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap().action,
            TC_ACT_SHOT
        );

        // Monitor mode: counted, not answered.
        h.set_mode(Mode::Monitor).unwrap();
        let before = h.stats().unwrap().raw[abi::STAT_WOULD_DROP];
        let f = udp(USER4, REMOTE4, 40020, 53, &dns_query(12, "blocked.example"));
        let r = h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap();
        assert_eq!((r.action, r.data_out == f), (TC_ACT_UNSPEC, true));
        assert_eq!(h.stats().unwrap().raw[abi::STAT_WOULD_DROP], before + 1);

        // Refusal off: the question is not even read.
        enforce_mode(h);
        h.verdicts().set_enforce_options(options(false)).unwrap();
        let f = udp(USER4, REMOTE4, 40021, 53, &dns_query(13, "blocked.example"));
        assert_eq!(
            h.run(abi::PROG_LAN_INGRESS, &f, 1).unwrap().action,
            TC_ACT_UNSPEC
        );
        assert_eq!(h.stats().unwrap().raw[abi::STAT_DNS_REFUSED], 3);
    });
}
