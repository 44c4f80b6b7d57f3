//! Per-packet cost of the probes by BPF_PROG_TEST_RUN, against an empty program measured in
//! the same run (the floor). Run as root:
//!
//! `cargo run --release -p tollgate-dataplane --example prog_cost [-- ROUNDS]`
//!
//! Cases are measured in alternating rounds; each figure is the median over rounds of the
//! kernel's average ns per run. Targets: TCP data on an established flow <= 60 ns,
//! ClientHello with its event <= 500 ns. The enforcement cases run with 10,000 blocked prefixes and
//! 10,000 name rules loaded, in enforce mode. The process runs in a private network namespace
//! of its own (the probes' resets would otherwise go to the host's loopback).

use std::net::IpAddr;

use tollgate_dataplane::{
    Action, Mode, abi,
    testing::{L4, PacketSpec, ProbeHarness, TC_ACT_SHOT, hex, is_root, tcp_flags},
};

const REPEAT: u32 = 1_000_000;
/// The hello case produces one ring-buffer event per run; batches stay well below the ring's
/// capacity and the ring is drained between batches.
const HELLO_BATCH: u32 = 2_000;
const HELLO_BATCHES: u32 = 50;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

fn tcp(dport: u16, payload: &[u8]) -> Vec<u8> {
    tcp_to("198.51.100.20", dport, payload)
}

fn tcp_to(dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    PacketSpec {
        src: ip("192.0.2.10"),
        dst: ip(dst),
        sport: 40000 + dport % 1000,
        dport,
        l4: L4::Tcp {
            seq: 1,
            flags: tcp_flags::ACK | tcp_flags::PSH,
        },
        vlan: None,
        payload: payload.to_vec(),
    }
    .frame()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !is_root() {
        eprintln!("prog_cost needs root (BPF_PROG_TEST_RUN); skipping");
        return Ok(());
    }
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let hello_hex = include_str!("../testdata/tls_clienthello_chrome.hex");
    let hello = hex(hello_hex).ok_or("bad fixture")?;
    let data = vec![0xa5u8; 1400];
    let mut h = ProbeHarness::load()?;

    let data_8080 = tcp(8080, &data);
    let data_443 = tcp(443, &data);
    let hello_frame = tcp(8443, &hello);
    // The forwarding benchmark's 64-byte UDP frames (18 payload bytes).
    let udp64 = tollgate_dataplane::testing::PacketSpec {
        src: "192.0.2.1".parse()?,
        dst: "198.51.100.1".parse()?,
        sport: 40000,
        dport: 5201,
        l4: tollgate_dataplane::testing::L4::Udp,
        vlan: None,
        payload: vec![0x5a; 18],
    }
    .frame();
    // Warm the flows up past their inspection budget: steady-state established flows.
    for f in [&data_8080, &data_443, &udp64] {
        for _ in 0..=abi::DEFAULT_INSPECT_PACKETS {
            h.run(abi::PROG_LAN_INGRESS, f, 1)?;
        }
    }

    let mut floor = Vec::new();
    let mut non443 = Vec::new();
    let mut est443 = Vec::new();
    let mut udp_ns = Vec::new();
    let mut hello_ns = Vec::new();
    let mut events = 0usize;
    let mut runs = 0usize;
    for _ in 0..rounds {
        floor.push(
            h.run(abi::PROG_NOOP, &data_443, REPEAT)?
                .duration
                .as_nanos() as f64,
        );
        non443.push(
            h.run(abi::PROG_LAN_INGRESS, &data_8080, REPEAT)?
                .duration
                .as_nanos() as f64,
        );
        est443.push(
            h.run(abi::PROG_LAN_INGRESS, &data_443, REPEAT)?
                .duration
                .as_nanos() as f64,
        );
        udp_ns.push(
            h.run(abi::PROG_LAN_INGRESS, &udp64, REPEAT)?
                .duration
                .as_nanos() as f64,
        );
        // Every run of the hello case inspects the packet and sends an event: lift the
        // per-flow limits so that repeats on one flow behave like first packets.
        h.update_config(|c| {
            c.max_events_per_flow = u32::MAX;
            c.inspect_packets = u32::MAX;
        })?;
        let mut total = 0f64;
        for _ in 0..HELLO_BATCHES {
            total += h
                .run(abi::PROG_LAN_INGRESS, &hello_frame, HELLO_BATCH)?
                .duration
                .as_nanos() as f64;
            events += h.drain_events().len();
        }
        hello_ns.push(total / f64::from(HELLO_BATCHES));
        runs += (HELLO_BATCH * HELLO_BATCHES) as usize;
        h.update_config(|c| {
            c.max_events_per_flow = 0;
            c.inspect_packets = 0;
        })?;
    }

    // Enforcement: enforce mode with 10,000 blocked prefixes and 10,000 name rules.
    h.set_mode(Mode::Enforce)?;
    {
        let mut v = h.verdicts();
        for i in 0..10_000u32 {
            let a = std::net::Ipv4Addr::from(0x0b00_0000u32 + (i << 8));
            v.set_prefix(IpAddr::V4(a), 24, Action::Block, i, None)?;
            v.set_name(&format!("app{i}.example"), Action::Block, i, true)?;
        }
        v.set_prefix(ip("203.0.113.0"), 24, Action::Drop, 1, None)?;
        v.set_name("www.iit.cnr.it", Action::Allow, 2, false)?;
        v.commit()?;
    }
    let blocked = tcp_to("203.0.113.5", 443, &data);
    let allowed = tcp(443, &data);
    let other_hello = {
        // The same hello to another remote: the SNI pipeline runs, the name rule (allow) hits.
        tcp_to("198.51.100.99", 8443, &hello)
    };
    for f in [&allowed] {
        for _ in 0..=abi::DEFAULT_INSPECT_PACKETS {
            h.run(abi::PROG_LAN_INGRESS, f, 1)?;
        }
    }
    let mut floor2 = Vec::new();
    let mut allowed_ns = Vec::new();
    let mut blocked_ns = Vec::new();
    let mut named_ns = Vec::new();
    for _ in 0..rounds {
        floor2.push(h.run(abi::PROG_NOOP, &allowed, REPEAT)?.duration.as_nanos() as f64);
        allowed_ns.push(
            h.run(abi::PROG_LAN_INGRESS, &allowed, REPEAT)?
                .duration
                .as_nanos() as f64,
        );
        let r = h.run(abi::PROG_LAN_INGRESS, &blocked, REPEAT)?;
        if r.action != TC_ACT_SHOT {
            return Err("blocked flow was not dropped".into());
        }
        blocked_ns.push(r.duration.as_nanos() as f64);
        h.update_config(|c| {
            c.max_events_per_flow = u32::MAX;
            c.inspect_packets = u32::MAX;
        })?;
        let mut total = 0f64;
        for _ in 0..HELLO_BATCHES {
            total += h
                .run(abi::PROG_LAN_INGRESS, &other_hello, HELLO_BATCH)?
                .duration
                .as_nanos() as f64;
            events += h.drain_events().len();
        }
        named_ns.push(total / f64::from(HELLO_BATCHES));
        runs += (HELLO_BATCH * HELLO_BATCHES) as usize;
        h.update_config(|c| {
            c.max_events_per_flow = 0;
            c.inspect_packets = 0;
        })?;
    }
    let stats = h.stats()?;
    let f = median(&mut floor);
    let f2 = median(&mut floor2);
    let rows = [
        ("monitor mode, no verdicts loaded", f, None, f),
        ("empty program (floor)", f, None, f),
        (
            "TCP data, port 8080, established",
            median(&mut non443),
            None,
            f,
        ),
        (
            "TCP data, port 443, established",
            median(&mut est443),
            Some(60.0),
            f,
        ),
        ("UDP 64 B frame, established", median(&mut udp_ns), None, f),
        (
            "ClientHello 517 B + ring-buffer event",
            median(&mut hello_ns),
            Some(500.0),
            f,
        ),
        ("enforce, 10k prefixes + 10k names", f2, None, f2),
        ("empty program (floor)", f2, None, f2),
        (
            "allowed TCP data, established",
            median(&mut allowed_ns),
            Some(60.0),
            f2,
        ),
        (
            "blocked flow's packet (drop)",
            median(&mut blocked_ns),
            None,
            f2,
        ),
        (
            "ClientHello + event + SNI name found",
            median(&mut named_ns),
            Some(500.0),
            f2,
        ),
    ];
    println!("per-packet cost, BPF_PROG_TEST_RUN (TC), median of {rounds} rounds");
    println!(
        "{:<40} {:>9} {:>12} {:>9} {:>8}",
        "case", "ns/pkt", "ns - floor", "x floor", "target"
    );
    for (name, ns, target, f) in rows {
        if name.starts_with("monitor") || name.starts_with("enforce") {
            println!("-- {name}");
            continue;
        }
        println!(
            "{:<40} {:>9.1} {:>12.1} {:>9.2} {:>8}",
            name,
            ns,
            ns - f,
            ns / f,
            target.map_or("-".to_owned(), |t| format!("<= {t}"))
        );
    }
    println!(
        "hello events read: {events} of {runs} runs; ringbuf_full {}, events_capped {}; \
         sni_found {}, name_verdicts {}",
        stats.ringbuf_full,
        stats.events_capped,
        stats.raw.get(abi::STAT_SNI_FOUND).copied().unwrap_or(0),
        stats.raw.get(abi::STAT_NAME_VERDICTS).copied().unwrap_or(0)
    );
    Ok(())
}
