//! Per-packet cost of the probes by BPF_PROG_TEST_RUN, against an empty program measured in
//! the same run (the floor). Run as root:
//!
//! `cargo run --release -p tollgate-dataplane --example prog_cost [-- ROUNDS]`
//!
//! Cases are measured in alternating rounds; each figure is the median over rounds of the
//! kernel's average ns per run. Targets (issue 2): TCP data on an established flow <= 60 ns,
//! ClientHello with its event <= 500 ns.

use std::net::IpAddr;

use tollgate_dataplane::{
    abi,
    testing::{L4, PacketSpec, ProbeHarness, hex, is_root, tcp_flags},
};

const REPEAT: u32 = 1_000_000;
/// The hello case produces one ring-buffer event per run; batches stay well below the ring's
/// capacity and the ring is drained between batches.
const HELLO_BATCH: u32 = 4_000;
const HELLO_BATCHES: u32 = 25;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

fn tcp(dport: u16, payload: &[u8]) -> Vec<u8> {
    PacketSpec {
        src: ip("192.0.2.10"),
        dst: ip("198.51.100.20"),
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
    // Warm the flows up past their inspection budget: steady-state established flows.
    for f in [&data_8080, &data_443] {
        for _ in 0..=abi::DEFAULT_INSPECT_PACKETS {
            h.run(abi::PROG_LAN_INGRESS, f, 1)?;
        }
    }

    let mut floor = Vec::new();
    let mut non443 = Vec::new();
    let mut est443 = Vec::new();
    let mut hello_ns = Vec::new();
    let mut events = 0usize;
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
        h.update_config(|c| {
            c.max_events_per_flow = 0;
            c.inspect_packets = 0;
        })?;
    }
    let stats = h.stats()?;
    let f = median(&mut floor);
    let rows = [
        ("empty program (floor)", f, None),
        (
            "TCP data, port 8080, established",
            median(&mut non443),
            None,
        ),
        (
            "TCP data, port 443, established",
            median(&mut est443),
            Some(60.0),
        ),
        (
            "ClientHello 517 B + ring-buffer event",
            median(&mut hello_ns),
            Some(500.0),
        ),
    ];
    println!("per-packet cost, BPF_PROG_TEST_RUN (TC), median of {rounds} rounds");
    println!(
        "{:<40} {:>9} {:>12} {:>9} {:>8}",
        "case", "ns/pkt", "ns - floor", "x floor", "target"
    );
    for (name, ns, target) in rows {
        println!(
            "{:<40} {:>9.1} {:>12.1} {:>9.2} {:>8}",
            name,
            ns,
            ns - f,
            ns / f,
            target.map_or("-".to_owned(), |t| format!("<= {t}"))
        );
    }
    let expected = rounds * (HELLO_BATCH * HELLO_BATCHES) as usize;
    println!(
        "hello events read: {events} of {expected} runs; ringbuf_full {}, events_capped {}",
        stats.ringbuf_full, stats.events_capped
    );
    Ok(())
}
