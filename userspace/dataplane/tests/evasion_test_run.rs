//! Evasion of the kernel's naming through BPF_PROG_TEST_RUN: every technique a client can use
//! to hide a blocked name from the probes either still gets the flow named (and reset), or
//! makes it unreadable, which `[enforcement] unreadable` passes (counted) or blocks. Runs in a
//! private network namespace (the probes' resets go out with bpf_clone_redirect). Needs root.

use std::net::IpAddr;

use tollgate_dataplane::{
    Action, FlowTuple, L4Proto, Mode, Unreadable, abi, flow_key,
    testing::{L4, PacketSpec, ProbeHarness, TC_ACT_SHOT, TC_ACT_UNSPEC, tcp_flags},
};

mod common;
use common::with_harness;

const USER4: &str = "192.0.2.10";
const REMOTE4: &str = "198.51.100.20";
const BLOCKED4: &str = "203.0.113.66";
const USER6: &str = "2001:db8:1::10";
const REMOTE6: &str = "2001:db8:2::20";
const BLOCKED_SNI: &str = "www.blocked.example";
const ISN: u32 = 7000;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

fn seg_to(src: &str, dst: &str, sport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    PacketSpec::tcp(ip(src), ip(dst), sport, 443, seq, flags, payload).frame()
}

fn syn(sport: u16) -> Vec<u8> {
    seg_to(USER4, REMOTE4, sport, ISN, tcp_flags::SYN, &[])
}

/// A data segment from the user at `ISN + 1 + off`.
fn data(sport: u16, off: u32, payload: &[u8]) -> Vec<u8> {
    seg_to(
        USER4,
        REMOTE4,
        sport,
        ISN + 1 + off,
        tcp_flags::ACK | tcp_flags::PSH,
        payload,
    )
}

/// A ClientHello handshake message (no record header) naming `sni` (none when empty), with a
/// padding extension of `pad` bytes ahead of server_name.
fn client_hello(sni: &str, pad: usize) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend([0x11u8; 32]);
    body.push(0); // session id
    body.extend([0, 2, 0x13, 0x01]); // one cipher suite
    body.extend([1, 0]); // null compression
    let mut ext = Vec::new();
    if pad > 0 {
        ext.extend([0x00, 0x15]);
        ext.extend((pad as u16).to_be_bytes());
        ext.extend(vec![0u8; pad]);
    }
    if !sni.is_empty() {
        let n = sni.len() as u16;
        ext.extend([0, 0]);
        ext.extend((n + 5).to_be_bytes());
        ext.extend((n + 3).to_be_bytes());
        ext.push(0);
        ext.extend(n.to_be_bytes());
        ext.extend(sni.as_bytes());
    }
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![1];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    hs
}

/// The handshake message framed in TLS handshake records of at most `size` bytes each.
fn records(hs: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in hs.chunks(size) {
        out.extend([0x16, 3, 1]);
        out.extend((c.len() as u16).to_be_bytes());
        out.extend(c);
    }
    out
}

fn hello(sni: &str) -> Vec<u8> {
    records(&client_hello(sni, 0), 16_384)
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present")
}

/// Enforce mode, `*.blocked.example` blocked by name, `BLOCKED4` blocked by address.
fn setup(h: &mut ProbeHarness, unreadable: Unreadable) {
    h.set_mode(Mode::Enforce).unwrap();
    let mut v = h.verdicts();
    v.set_name("blocked.example", Action::Block, 9, true)
        .unwrap();
    v.set_prefix(ip(BLOCKED4), 32, Action::Block, 9, None)
        .unwrap();
    v.set_unreadable(unreadable).unwrap();
    v.commit().unwrap();
}

fn stat(h: &ProbeHarness, id: usize) -> u64 {
    h.stats().unwrap().raw[id]
}

fn run(h: &ProbeHarness, f: &[u8]) -> i32 {
    h.run(abi::PROG_LAN_INGRESS, f, 1).unwrap().action
}

#[test]
fn junk_at_the_stream_start_cannot_use_up_the_inspection_budget() {
    with_harness(|h| {
        setup(h, Unreadable::Pass);
        let sport = 41000;
        assert_eq!(run(h, &syn(sport)), TC_ACT_UNSPEC);
        // More junk than the budget, where the hello goes (the server drops it: bad checksum).
        for _ in 0..abi::DEFAULT_INSPECT_PACKETS + 4 {
            assert_eq!(run(h, &data(sport, 0, &[0x42; 300])), TC_ACT_UNSPEC);
        }
        assert!(stat(h, abi::STAT_START_REPEATS) >= u64::from(abi::DEFAULT_INSPECT_PACKETS));
        assert_eq!(stat(h, abi::STAT_UNREADABLE_START), 12);
        assert_eq!(stat(h, abi::STAT_UNREADABLE_PASSED), 1, "once per flow");
        // Junk elsewhere once the start was seen: not held (only a hello's bytes are).
        assert_eq!(run(h, &data(sport, 5000, &[0x42; 300])), TC_ACT_UNSPEC);
        assert_eq!(stat(h, abi::STAT_HELLO_OUT_OF_ORDER), 0);
        // The real hello still gets read, and reset.
        assert_eq!(run(h, &data(sport, 0, &hello(BLOCKED_SNI))), TC_ACT_SHOT);
        assert_eq!(stat(h, abi::STAT_SNI_FOUND), 1);

        // Junk ahead of the start (out of window, or just later): held in enforce mode, so it
        // never counts against the budget either.
        let sport = 41001;
        run(h, &syn(sport));
        for i in 0..abi::DEFAULT_INSPECT_PACKETS + 4 {
            assert_eq!(run(h, &data(sport, 100_000 + i, b"junk")), TC_ACT_SHOT);
        }
        assert_eq!(run(h, &data(sport, 0, &hello(BLOCKED_SNI))), TC_ACT_SHOT);
        assert_eq!(stat(h, abi::STAT_SNI_FOUND), 2);

        // With unreadable = "block", a stream that starts with junk is refused at once.
        h.verdicts().set_unreadable(Unreadable::Block).unwrap();
        let sport = 41002;
        run(h, &syn(sport));
        assert_eq!(run(h, &data(sport, 0, &[0x42; 300])), TC_ACT_SHOT);
        assert_eq!(stat(h, abi::STAT_UNREADABLE_BLOCKED), 1);
        // ... and stays refused: the kernel recorded a block verdict for the flow.
        assert_eq!(run(h, &data(sport, 300, b"more")), TC_ACT_SHOT);
        // A readable hello to an allowed name is untouched in either setting.
        let sport = 41003;
        run(h, &syn(sport));
        assert_eq!(run(h, &data(sport, 0, &hello("ok.example"))), TC_ACT_UNSPEC);
        assert_eq!(run(h, &data(sport, 200, b"appdata")), TC_ACT_UNSPEC);
    });
}

#[test]
fn an_sni_segment_sent_ahead_is_held_until_it_comes_in_order() {
    with_harness(|h| {
        setup(h, Unreadable::Pass);
        let hello = records(&client_hello(BLOCKED_SNI, 600), 16_384);
        let k = find(&hello, BLOCKED_SNI.as_bytes()) - 20;
        for sport in [42000u16, 42001] {
            run(h, &syn(sport));
            let second = data(sport, k as u32, &hello[k..]);
            // The segment with the SNI first: held (the server would buffer it and then
            // complete the hello from the first segment without it ever being read).
            assert_eq!(run(h, &second), TC_ACT_SHOT, "ahead of the start");
            assert_eq!(run(h, &data(sport, 0, &hello[..k])), TC_ACT_UNSPEC);
            if sport == 42001 {
                // Ahead again (a third segment would be), and overlapping past what was read.
                let overlap = data(sport, k as u32 - 10, &hello[k - 10..]);
                assert_eq!(run(h, &overlap), TC_ACT_SHOT, "overlapping ahead");
            }
            // In order: read, and the flow is reset.
            assert_eq!(run(h, &second), TC_ACT_SHOT);
        }
        assert_eq!(stat(h, abi::STAT_HELLO_OUT_OF_ORDER), 3);
        assert_eq!(stat(h, abi::STAT_SNI_FOUND), 2);
        assert_eq!(stat(h, abi::STAT_RST_SENT), 2);
        // Monitor mode holds nothing (counted only).
        h.set_mode(Mode::Monitor).unwrap();
        run(h, &syn(42002));
        assert_eq!(run(h, &data(42002, k as u32, &hello[k..])), TC_ACT_UNSPEC);
        assert_eq!(stat(h, abi::STAT_HELLO_OUT_OF_ORDER), 4);
    });
}

#[test]
fn a_hello_in_many_small_records_is_read_across_them() {
    with_harness(|h| {
        setup(h, Unreadable::Pass);
        let hs = client_hello(BLOCKED_SNI, 300);
        // Records of 40 bytes in one segment.
        let sport = 43000;
        run(h, &syn(sport));
        assert_eq!(run(h, &data(sport, 0, &records(&hs, 40))), TC_ACT_SHOT);
        assert_eq!(stat(h, abi::STAT_SNI_FOUND), 1);
        assert_eq!(stat(h, abi::STAT_HELLO_MULTI_RECORD), 1);
        // Records of 7 bytes in 50-byte segments (headers cut by segment edges too): the
        // segment that completes the SNI is reset; none before it.
        let wire = records(&hs, 7);
        let sni_end = {
            // The SNI's last byte on the wire: the record holding the name's last byte.
            let name_end = find(&hs, BLOCKED_SNI.as_bytes()) + BLOCKED_SNI.len();
            let rec = (name_end - 1) / 7;
            rec * 12 + 5 + (name_end - 1) % 7 + 1
        };
        let sport = 43001;
        run(h, &syn(sport));
        let mut blocked_at = None;
        for (i, c) in wire.chunks(50).enumerate() {
            let r = run(h, &data(sport, (i * 50) as u32, c));
            if r == TC_ACT_SHOT {
                blocked_at = Some(i);
                break;
            }
        }
        assert_eq!(
            blocked_at,
            Some((sni_end - 1) / 50),
            "reset with the SNI's segment"
        );
        assert_eq!(stat(h, abi::STAT_SNI_FOUND), 2);
        // One-byte records in one segment: more than the probes follow per segment.
        let sport = 43002;
        run(h, &syn(sport));
        assert_eq!(run(h, &data(sport, 0, &records(&hs, 1))), TC_ACT_UNSPEC);
        assert_eq!(stat(h, abi::STAT_UNREADABLE_RECORDS), 1);
        assert_eq!(stat(h, abi::STAT_UNREADABLE_PASSED), 1);
        h.verdicts().set_unreadable(Unreadable::Block).unwrap();
        let sport = 43003;
        run(h, &syn(sport));
        assert_eq!(run(h, &data(sport, 0, &records(&hs, 1))), TC_ACT_SHOT);
        assert_eq!(stat(h, abi::STAT_UNREADABLE_BLOCKED), 1);
    });
}

#[test]
fn hellos_without_a_readable_sni_are_unreadable() {
    with_harness(|h| {
        setup(h, Unreadable::Pass);
        run(h, &syn(44000));
        assert_eq!(run(h, &data(44000, 0, &hello(""))), TC_ACT_UNSPEC);
        assert_eq!(stat(h, abi::STAT_UNREADABLE_NO_SNI), 1);
        // The SNI past the probes' window (a 5 KB padding extension ahead of it).
        let big = records(&client_hello(BLOCKED_SNI, 5000), 16_384);
        run(h, &syn(44001));
        for (i, c) in big.chunks(1400).enumerate() {
            assert_eq!(run(h, &data(44001, (i * 1400) as u32, c)), TC_ACT_UNSPEC);
        }
        assert_eq!(stat(h, abi::STAT_UNREADABLE_NO_SNI), 2);
        assert_eq!(stat(h, abi::STAT_UNREADABLE_PASSED), 2);
        h.verdicts().set_unreadable(Unreadable::Block).unwrap();
        run(h, &syn(44002));
        assert_eq!(run(h, &data(44002, 0, &hello(""))), TC_ACT_SHOT);
        // Not port 443: never unreadable.
        let f = PacketSpec::tcp(
            ip(USER4),
            ip(REMOTE4),
            44003,
            8443,
            1,
            tcp_flags::ACK,
            &hello(""),
        )
        .frame();
        assert_eq!(run(h, &f), TC_ACT_UNSPEC);
        // Monitor mode: counted as would-drop, passed.
        h.set_mode(Mode::Monitor).unwrap();
        run(h, &syn(44004));
        assert_eq!(run(h, &data(44004, 0, &hello(""))), TC_ACT_UNSPEC);
        assert!(stat(h, abi::STAT_WOULD_DROP) >= 1);
    });
}

/// A flow whose SNI was read is marked named (what keeps a later hello without a name from
/// making it unreadable), whether or not its name has a verdict: `tg_verdict` marks it with the
/// same flow lookup that records the verdict. One without a readable name is not.
#[test]
fn a_flow_whose_name_was_read_is_marked_named() {
    with_harness(|h| {
        setup(h, Unreadable::Block);
        for (sport, sni, action) in [
            (45000, "ok.example", TC_ACT_UNSPEC),
            (45001, BLOCKED_SNI, TC_ACT_SHOT),
            (45002, "", TC_ACT_SHOT),
        ] {
            run(h, &syn(sport));
            assert_eq!(run(h, &data(sport, 0, &hello(sni))), action, "{sni:?}");
            let tuple = FlowTuple::new(L4Proto::Tcp, (ip(USER4), sport), (ip(REMOTE4), 443));
            let key = flow_key(&tuple, 0).expect("flow key");
            let flow = h.flow_value(&key).unwrap().expect("tracked");
            assert_eq!(
                flow.flags & abi::FLOW_F_NAMED != 0,
                !sni.is_empty(),
                "{sni:?}: flags {:#x}",
                flow.flags
            );
        }
    });
}

#[test]
fn names_with_more_labels_than_the_walk_still_match_their_parents() {
    with_harness(|h| {
        setup(h, Unreadable::Pass);
        for (i, labels) in [9usize, 16, 17, 40].into_iter().enumerate() {
            let name = format!("{}blocked.example", "a.".repeat(labels - 2));
            let sport = 45000 + i as u16;
            run(h, &syn(sport));
            assert_eq!(
                run(h, &data(sport, 0, &hello(&name))),
                TC_ACT_SHOT,
                "{labels} labels"
            );
        }
        assert_eq!(stat(h, abi::STAT_LONG_NAMES), 2);
        // An exact rule on a long name still matches it as a whole.
        let long = format!("{}example.org", "b.".repeat(20));
        h.verdicts()
            .set_name(&long, Action::Block, 3, false)
            .unwrap();
        h.verdicts().commit().unwrap();
        run(h, &syn(45010));
        assert_eq!(run(h, &data(45010, 0, &hello(&long))), TC_ACT_SHOT);
    });
}

/// An IPv4 frame's IP payload cut at `at` (a multiple of 8): the first fragment and the rest.
fn fragment_v4(frame: &[u8], at: usize) -> (Vec<u8>, Vec<u8>) {
    let (l3, ihl) = (14, 20);
    let payload = &frame[l3 + ihl..];
    let mut a = frame[..l3 + ihl].to_vec();
    a.extend(&payload[..at]);
    a[l3 + 2..l3 + 4].copy_from_slice(&((ihl + at) as u16).to_be_bytes());
    a[l3 + 6] = 0x20; // MF
    a[l3 + 7] = 0;
    let mut b = frame[..l3 + ihl].to_vec();
    b.extend(&payload[at..]);
    b[l3 + 2..l3 + 4].copy_from_slice(&((ihl + payload.len() - at) as u16).to_be_bytes());
    let units = (at / 8) as u16;
    b[l3 + 6..l3 + 8].copy_from_slice(&units.to_be_bytes());
    (a, b)
}

#[test]
fn ip_fragments_cannot_carry_a_flow_past_its_verdict() {
    with_harness(|h| {
        setup(h, Unreadable::Pass);
        // A tiny first fragment (8 bytes of TCP header): dropped in enforce mode.
        let syn_blocked = seg_to(USER4, REMOTE4, 46000, ISN, tcp_flags::SYN, &[]);
        let (tiny, rest) = fragment_v4(&syn_blocked, 8);
        assert_eq!(run(h, &tiny), TC_ACT_SHOT);
        assert_eq!(stat(h, abi::STAT_FRAG_TINY), 1);
        // A later fragment toward an allowed address passes (counted); toward a blocked
        // prefix it is dropped.
        assert_eq!(run(h, &rest), TC_ACT_UNSPEC);
        let to_blocked = seg_to(USER4, BLOCKED4, 46001, 1, tcp_flags::ACK, &[7u8; 200]);
        let (_, rest_blocked) = fragment_v4(&to_blocked, 64);
        assert_eq!(run(h, &rest_blocked), TC_ACT_SHOT);
        assert_eq!(stat(h, abi::STAT_FRAG_REFUSED), 1);
        assert_eq!(stat(h, abi::STAT_FRAGMENTS), 2);
        // A port-443 hello in fragments: the first fragment (full TCP header) is unreadable.
        run(h, &syn(46002));
        let hello_frame = data(46002, 0, &hello(BLOCKED_SNI));
        let (first, later) = fragment_v4(&hello_frame, 40);
        assert_eq!(run(h, &first), TC_ACT_UNSPEC);
        assert_eq!(stat(h, abi::STAT_UNREADABLE_FRAGMENTED), 1);
        assert_eq!(run(h, &later), TC_ACT_UNSPEC);
        // With unreadable = "block": the hello's first fragment resets the flow, and later TCP
        // fragments from users are dropped (UDP ones pass).
        h.verdicts().set_unreadable(Unreadable::Block).unwrap();
        run(h, &syn(46003));
        let (first, later) = fragment_v4(&data(46003, 0, &hello(BLOCKED_SNI)), 40);
        assert_eq!(run(h, &first), TC_ACT_SHOT);
        assert_eq!(run(h, &later), TC_ACT_SHOT);
        let udp = PacketSpec::udp(ip(USER4), ip(REMOTE4), 46004, 4500, &[1u8; 300]).frame();
        let (_, udp_later) = fragment_v4(&udp, 64);
        assert_eq!(run(h, &udp_later), TC_ACT_UNSPEC);
        // Monitor mode drops nothing.
        h.set_mode(Mode::Monitor).unwrap();
        assert_eq!(run(h, &tiny), TC_ACT_UNSPEC);
        assert_eq!(run(h, &later), TC_ACT_UNSPEC);
    });
}

/// An IPv6 frame with `n` destination-options headers (8 bytes each) before its L4 header.
fn with_ipv6_ext(frame: &[u8], n: usize) -> Vec<u8> {
    let proto = frame[14 + 6];
    let mut out = frame[..54].to_vec();
    out[14 + 6] = 60;
    for i in 0..n {
        let next = if i + 1 == n { proto } else { 60 };
        out.extend([next, 0, 1, 4, 0, 0, 0, 0]); // PadN
    }
    out.extend(&frame[54..]);
    let plen = u16::from_be_bytes([frame[18], frame[19]]) + 8 * n as u16;
    out[18..20].copy_from_slice(&plen.to_be_bytes());
    out
}

#[test]
fn long_ipv6_extension_chains_are_walked_or_unreadable() {
    with_harness(|h| {
        setup(h, Unreadable::Pass);
        let frame6 = |sport: u16, seq: u32, flags: u8, payload: &[u8]| {
            PacketSpec::tcp(ip(USER6), ip(REMOTE6), sport, 443, seq, flags, payload).frame()
        };
        // Six headers (more than the four walked before): parsed, named, reset.
        run(
            h,
            &with_ipv6_ext(&frame6(47000, ISN, tcp_flags::SYN, &[]), 6),
        );
        let f = with_ipv6_ext(
            &frame6(47000, ISN + 1, tcp_flags::ACK, &hello(BLOCKED_SNI)),
            6,
        );
        assert_eq!(run(h, &f), TC_ACT_SHOT);
        assert_eq!(stat(h, abi::STAT_SNI_FOUND), 1);
        // Nine: past the walk. Toward a blocked prefix: dropped; else passed and counted.
        let f = with_ipv6_ext(&frame6(47001, 1, tcp_flags::ACK, b"x"), 9);
        assert_eq!(run(h, &f), TC_ACT_UNSPEC);
        assert_eq!(stat(h, abi::STAT_IPV6_EXT_OVERFLOW), 1);
        h.verdicts()
            .set_prefix(ip(REMOTE6), 128, Action::Block, 9, None)
            .unwrap();
        h.verdicts().commit().unwrap();
        assert_eq!(run(h, &f), TC_ACT_SHOT);
        h.verdicts().remove_prefix(ip(REMOTE6), 128).unwrap();
        h.verdicts().commit().unwrap();
        h.verdicts().set_unreadable(Unreadable::Block).unwrap();
        assert_eq!(run(h, &f), TC_ACT_SHOT);
        assert_eq!(stat(h, abi::STAT_UNREADABLE_BLOCKED), 1);
    });
}

/// The frame with `n` VLAN tags (802.1ad outer, 802.1Q inner) after the MAC addresses.
fn with_tags(frame: &[u8], n: usize) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for i in 0..n {
        out.extend(if i == 0 { [0x88, 0xa8] } else { [0x81, 0x00] });
        out.extend((10 + i as u16).to_be_bytes());
    }
    out.extend(&frame[12..]);
    out
}

#[test]
fn three_vlan_tags_are_parsed_and_more_are_unreadable() {
    with_harness(|h| {
        setup(h, Unreadable::Pass);
        run(h, &with_tags(&syn(48000), 3));
        let f = with_tags(&data(48000, 0, &hello(BLOCKED_SNI)), 3);
        assert_eq!(run(h, &f), TC_ACT_SHOT);
        let flows = h.flows().unwrap();
        assert!(flows.iter().any(|f| f.vlan == 12), "innermost tag kept");
        let f4 = with_tags(&data(48001, 0, &hello(BLOCKED_SNI)), 4);
        assert_eq!(run(h, &f4), TC_ACT_UNSPEC);
        assert_eq!(stat(h, abi::STAT_VLAN_DEEP), 1);
        h.verdicts().set_unreadable(Unreadable::Block).unwrap();
        assert_eq!(run(h, &f4), TC_ACT_SHOT);
    });
}

fn quic_initial(sport: u16) -> Vec<u8> {
    let mut initial = vec![0u8; 1200];
    initial[..5].copy_from_slice(&[0xc3, 0, 0, 0, 1]);
    PacketSpec {
        src: ip(USER4),
        dst: ip(REMOTE4),
        sport,
        dport: 443,
        l4: L4::Udp,
        vlan: None,
        payload: initial,
    }
    .frame()
}

#[test]
fn quic_initials_are_always_sent_or_unreadable() {
    with_harness(|h| {
        setup(h, Unreadable::Pass);
        // Junk datagrams first do not use up the budget ahead of the Initial.
        let junk = PacketSpec::udp(ip(USER4), ip(REMOTE4), 49000, 443, &[0x40; 100]).frame();
        for _ in 0..abi::DEFAULT_INSPECT_PACKETS + 2 {
            run(h, &junk);
        }
        run(h, &quic_initial(49000));
        let evs = h.drain_events();
        assert_eq!(evs.len(), 1, "the Initial was sent to userspace");
        // Initials past the flow's event cap cannot be decided: unreadable.
        h.update_config(|c| c.max_events_per_flow = 2).unwrap();
        for _ in 0..2 {
            assert_eq!(run(h, &quic_initial(49001)), TC_ACT_UNSPEC);
        }
        assert_eq!(run(h, &quic_initial(49001)), TC_ACT_UNSPEC);
        assert_eq!(stat(h, abi::STAT_UNREADABLE_QUIC), 1);
        h.verdicts().set_unreadable(Unreadable::Block).unwrap();
        assert_eq!(run(h, &quic_initial(49001)), TC_ACT_SHOT);
        assert_eq!(
            stat(h, abi::STAT_ICMP_SENT),
            1,
            "refused with ICMP unreachable"
        );
    });
}

#[test]
fn a_hello_churned_out_of_the_reassembly_map_is_unreadable() {
    with_harness(|h| {
        setup(h, Unreadable::Block);
        let hs = records(&client_hello(BLOCKED_SNI, 600), 16_384);
        let k = 300;
        run(h, &syn(50000));
        assert_eq!(run(h, &data(50000, 0, &hs[..k])), TC_ACT_UNSPEC);
        // Other flows' unfinished hellos push it out of TG_HELLO.
        for i in 0..3 * abi::HELLO_CAPACITY {
            let f = PacketSpec::tcp(
                ip(USER4),
                ip(REMOTE4),
                1024 + (i % 60000) as u16,
                8443,
                1,
                tcp_flags::ACK,
                &hs[..k],
            )
            .frame();
            run(h, &f);
        }
        assert_eq!(run(h, &data(50000, k as u32, &hs[k..])), TC_ACT_SHOT);
        assert_eq!(stat(h, abi::STAT_HELLO_LOST), 1);
        assert_eq!(stat(h, abi::STAT_UNREADABLE_BLOCKED), 1);
    });
}

#[test]
fn the_block_page_mark_skips_only_packets_the_gateway_sends() {
    with_harness(|h| {
        setup(h, Unreadable::Pass);
        let up = seg_to(USER4, BLOCKED4, 51000, 1, tcp_flags::ACK, b"data");
        let down = PacketSpec::tcp(
            ip(BLOCKED4),
            ip(USER4),
            443,
            51000,
            1,
            tcp_flags::ACK,
            b"page",
        )
        .frame();
        // A forwarded packet carrying the mark (set by anyone's nft rule) is still enforced.
        let r = h
            .run_marked(abi::PROG_LAN_INGRESS, &up, abi::BLOCK_PAGE_MARK, 3)
            .unwrap();
        assert_eq!(r.action, TC_ACT_SHOT);
        let r = h
            .run_marked(abi::PROG_LAN_EGRESS, &down, abi::BLOCK_PAGE_MARK, 3)
            .unwrap();
        assert_ne!(r.data_out, down, "a forwarded packet becomes the reset");
        // The daemon's own block page (no ingress interface) passes untouched, also with
        // other bits an admin's rule added to the mark.
        for mark in [abi::BLOCK_PAGE_MARK, abi::BLOCK_PAGE_MARK | 0x1] {
            let r = h.run_marked(abi::PROG_LAN_EGRESS, &down, mark, 0).unwrap();
            assert_eq!((r.action, r.data_out == down), (TC_ACT_UNSPEC, true));
        }
    });
}
