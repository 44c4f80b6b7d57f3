//! Flow-event storm against a running daemon: injects N frames of distinct 5-tuples
//! (a real Chrome ClientHello on TCP 443, or a real DNS query on UDP 53) into the daemon's
//! pinned LAN-ingress program with BPF_PROG_TEST_RUN, as fast as it can, then prints the
//! injection rate and what the probes counted (events written, ring-buffer drops) from the
//! daemon's pinned stats map. The daemon's own view (`events` received, `flows`) comes from
//! `tollgate status --json`.
//!
//! ```text
//! event_storm PIN_DIR [--flows N] [--threads T] [--kind tls|dns] [--rate FRAMES_PER_SEC]
//! # e.g. event_storm /sys/fs/bpf/tollgate/tge-s --flows 200000 --threads 2
//! ```
//! Needs root.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use tollgate_dataplane::{
    abi,
    testing::{L4, PacketSpec, PinnedProgram, TC_ACT_UNSPEC, hex, pinned_stats, tcp_flags},
};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    hex(&text).unwrap_or_else(|| panic!("{path}: not hex"))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut pin_dir: Option<PathBuf> = None;
    let mut flows: u32 = 200_000;
    let mut threads: u32 = 2;
    let mut kind = String::from("tls");
    // Frames per second to aim for (0: as fast as possible).
    let mut rate_limit: u32 = 0;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--flows" => flows = args.next().and_then(|v| v.parse().ok()).expect("--flows N"),
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--threads T")
            }
            "--kind" => kind = args.next().expect("--kind tls|dns"),
            "--rate" => {
                rate_limit = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rate FRAMES_PER_SEC")
            }
            _ => pin_dir = Some(PathBuf::from(a)),
        }
    }
    let pin_dir = pin_dir.expect("usage: event_storm PIN_DIR [--flows N] [--threads T]");
    // This build's ABI directory, else the one the daemon made (a daemon of an older build:
    // program runs and the stats layout do not depend on the ABI version).
    let mut root = pin_dir.join(format!("abi{}", abi::ABI_VERSION));
    if !root.exists()
        && let Some(e) = std::fs::read_dir(&pin_dir)
            .expect("pin dir")
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("abi"))
    {
        root = e.path();
    }
    println!("pins: {}", root.display());
    let prog_path = root.join("progs").join(abi::PROG_LAN_INGRESS);
    let stats_path = root.join("maps").join(abi::MAP_STATS);
    let (payload, l4, dport) = match kind.as_str() {
        "dns" => (fixture("dns_query.hex"), L4::Udp, 53),
        _ => (
            fixture("tls_clienthello_chrome.hex"),
            L4::Tcp {
                seq: 1000,
                flags: tcp_flags::ACK | tcp_flags::PSH,
            },
            443,
        ),
    };
    let template = PacketSpec {
        src: Ipv4Addr::new(10, 0, 0, 1).into(),
        dst: Ipv4Addr::new(198, 51, 100, 7).into(),
        sport: 1024,
        dport,
        l4,
        vlan: None,
        payload,
    }
    .frame();
    let before = pinned_stats(&stats_path).expect("pinned stats");
    let not_passed = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let prog_path = &prog_path;
            let template = &template;
            let not_passed = &not_passed;
            s.spawn(move || {
                let prog = PinnedProgram::open(prog_path).expect("pinned program");
                let mut frame = template.clone();
                let mut i = t;
                let mut sent = 0u64;
                let begun = Instant::now();
                while i < flows {
                    if rate_limit > 0 && sent.is_multiple_of(256) {
                        // Paced: each thread sends its share of the rate.
                        let due = std::time::Duration::from_secs_f64(
                            sent as f64 * f64::from(threads) / f64::from(rate_limit),
                        );
                        if let Some(wait) = due.checked_sub(begun.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                    sent += 1;
                    // Distinct 5-tuples: user address 10.x.y.z and source port from i.
                    let host = 1 + (i / 50_000);
                    let port = 1024 + (i % 50_000) as u16;
                    let ip = Ipv4Addr::from(0x0a00_0000u32 | host);
                    frame[26..30].copy_from_slice(&ip.octets());
                    frame[34..36].copy_from_slice(&port.to_be_bytes());
                    match prog.run(&frame) {
                        Ok(TC_ACT_UNSPEC) => {}
                        Ok(_) | Err(_) => {
                            not_passed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += threads;
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let after = pinned_stats(&stats_path).expect("pinned stats");
    let rate = f64::from(flows) / elapsed.as_secs_f64();
    println!(
        "injected {flows} {kind} frames of distinct flows in {:.3} s with {threads} threads: {rate:.0} flows/s ({} not passed)",
        elapsed.as_secs_f64(),
        not_passed.load(Ordering::Relaxed)
    );
    println!(
        "probes: packets +{} events +{} ringbuf_full +{} flow_map_full +{} events_capped +{}",
        after.packets - before.packets,
        after.events - before.events,
        after.ringbuf_full - before.ringbuf_full,
        after.flow_map_full - before.flow_map_full,
        after.events_capped - before.events_capped,
    );
    // What the daemon's counter poll costs at this size: the batched walk it does
    // (`Dataplane::walk_flow_counters`, steps of 4096 flows), against the entry-by-entry aya
    // iteration (two bpf syscalls per entry) as the baseline, over the pinned flow map.
    let flows_map = root.join("maps").join(abi::MAP_FLOWS);
    let data = aya::maps::MapData::from_pin(&flows_map).expect("pinned flow map");
    let map = aya::maps::Map::LruHashMap(data);
    let t = Instant::now();
    let mut walk = tollgate_dataplane::FlowWalk::new();
    let mut batched = 0usize;
    while !walk.is_done() {
        batched +=
            tollgate_dataplane::walk_flow_map(&map, &mut walk, 4096, |_| {}).expect("batched walk");
    }
    let took_batched = t.elapsed();
    let one_by_one: aya::maps::HashMap<_, abi::FlowKey, abi::FlowValue> =
        aya::maps::HashMap::try_from(&map).expect("flow map");
    let t = Instant::now();
    let n = one_by_one.iter().filter(Result::is_ok).count();
    let took = t.elapsed();
    let per = |d: std::time::Duration, n: usize| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    println!(
        "flow map walk: batched {batched} entries in {:.1} ms ({:.3} us/entry), entry by entry {n} in {:.1} ms ({:.3} us/entry): {:.1}x faster",
        took_batched.as_secs_f64() * 1e3,
        per(took_batched, batched),
        took.as_secs_f64() * 1e3,
        per(took, n),
        per(took, n) / per(took_batched, batched).max(1e-9),
    );
}
