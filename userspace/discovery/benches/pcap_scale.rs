//! Flow-table scale: 100,000 new TCP flows, each a SYN, a two-segment ClientHello (the
//! shape of a Chrome hello at MTU 1500) and a server reply, through `observe_packet`;
//! then the same number of first-flight events through `observe_payload` (the daemon's
//! path). Prints new flows per second, the resident memory the table added, and as the
//! same-run baseline the rate of inserting the same keys into a bare HashMap. Rates are per
//! second of this thread's CPU time (per core).
//!
//! `cargo bench -p tollgate-discovery --bench pcap_scale`

use cpu_time::ThreadTime;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, Utc};
use tollgate_discovery::flow_table::{Direction, FlowTable, FlowTableLimits, PayloadObservation};
use tollgate_discovery::packet::{PacketView, tcp_flags};
use tollgate_discovery::record::{FlowTuple, L4Proto};

const FLOWS: u32 = 100_000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
    ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    ext.extend_from_slice(name);
    // Pad to a Chrome-sized hello (padding extension 0x0015).
    ext.extend_from_slice(&[0, 0x15, 0x07, 0x00]);
    ext.extend_from_slice(&[0u8; 0x700]);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1, 0];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

fn ts(i: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + i64::from(i / 10_000), 0).unwrap_or_default()
}

fn main() {
    let h = hello("www.example-scale-test.com");
    let (seg1, seg2) = h.split_at(1448);
    let server = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
    let client = |i: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i >> 14)));
    let port = |i: u32| 1024 + (i & 0x3fff) as u16;

    // Baseline: the same keys into a HashMap.
    let t = ThreadTime::now();
    let mut m: HashMap<(IpAddr, u16, IpAddr, u16), u64> = HashMap::new();
    for i in 0..FLOWS {
        *m.entry((client(i), port(i), server, 443)).or_default() += 1;
    }
    let base = f64::from(FLOWS) / t.elapsed().as_secs_f64();
    std::hint::black_box(&m);
    drop(m);

    let rss0 = rss_kib();
    let mut table = FlowTable::new(FlowTableLimits::default());
    let t = ThreadTime::now();
    for i in 0..FLOWS {
        let (c, p) = (client(i), port(i));
        let pkt = |src, sport, dst, dport, seq, flags, payload| PacketView {
            ts: ts(i),
            proto: L4Proto::Tcp,
            src,
            sport,
            dst,
            dport,
            ip_len: 52,
            tcp_seq: seq,
            tcp_flags: flags,
            payload,
            src_mac: None,
        };
        table.observe_packet(&pkt(c, p, server, 443, 100, tcp_flags::SYN, &[]));
        table.observe_packet(&pkt(c, p, server, 443, 101, tcp_flags::ACK, seg1));
        table.observe_packet(&pkt(
            c,
            p,
            server,
            443,
            101 + 1448,
            tcp_flags::ACK | tcp_flags::PSH,
            seg2,
        ));
        table.observe_packet(&pkt(
            server,
            443,
            c,
            p,
            900,
            tcp_flags::ACK,
            &[0x16, 3, 3, 0, 2, 2, 0],
        ));
    }
    let pcap_rate = f64::from(FLOWS) / t.elapsed().as_secs_f64();
    let rss1 = rss_kib();
    let s = table.stats();
    assert_eq!(s.named_flows, FLOWS as usize);

    let mut live = FlowTable::new(FlowTableLimits::default());
    let t = ThreadTime::now();
    for i in 0..FLOWS {
        for (seq, seg) in [(101u32, seg1), (101 + 1448, seg2)] {
            live.observe_payload(&PayloadObservation {
                flow: FlowTuple::of_packet(
                    L4Proto::Tcp,
                    (client(i), port(i)),
                    (server, 443),
                    Direction::Up,
                ),
                direction: Direction::Up,
                ts: ts(i),
                tcp_seq: seq,
                tcp_flags: tcp_flags::ACK,
                payload: seg,
            });
        }
    }
    let live_rate = f64::from(FLOWS) / t.elapsed().as_secs_f64();
    assert_eq!(live.stats().named_flows, FLOWS as usize);

    // The daemon's own limits: no JA4, no FlowMeta, and it asks which payload named a flow.
    drop(table);
    drop(live);
    let rss2 = rss_kib();
    let mut daemon = FlowTable::new(FlowTableLimits {
        fingerprints: false,
        meta: false,
        ..FlowTableLimits::default()
    });
    let t = ThreadTime::now();
    let mut named = 0u32;
    for i in 0..FLOWS {
        for (seq, seg) in [(101u32, seg1), (101 + 1448, seg2)] {
            let obs = PayloadObservation {
                flow: FlowTuple::of_packet(
                    L4Proto::Tcp,
                    (client(i), port(i)),
                    (server, 443),
                    Direction::Up,
                ),
                direction: Direction::Up,
                ts: ts(i),
                tcp_seq: seq,
                tcp_flags: tcp_flags::ACK,
                payload: seg,
            };
            named += u32::from(daemon.observe_payload(&obs).named.is_some());
        }
    }
    let daemon_rate = f64::from(FLOWS) / t.elapsed().as_secs_f64();
    let rss3 = rss_kib();
    assert_eq!(named, FLOWS, "each flow reported named once");

    println!(
        "{FLOWS} flows, each SYN + 2-segment {}-byte ClientHello + reply:",
        h.len()
    );
    println!(
        "  observe_packet (pcap path)    {:>9.0} new named flows/s",
        pcap_rate
    );
    println!(
        "  observe_payload (daemon path) {:>9.0} new named flows/s",
        live_rate
    );
    println!(
        "  baseline HashMap insert        {:>9.0} keys/s (table costs {:.1}x / {:.1}x)",
        base,
        base / pcap_rate,
        base / live_rate
    );
    println!(
        "  resident memory added by one table of {FLOWS} named flows: {:.1} MiB ({} bytes/flow); buffered now {} bytes",
        (rss1.saturating_sub(rss0)) as f64 / 1024.0,
        rss1.saturating_sub(rss0) * 1024 / u64::from(FLOWS),
        s.buffered_bytes
    );
    println!(
        "  daemon limits (no JA4, no meta), observe_payload {:>9.0} new named flows/s ({:.2}x the default limits), {:.1} MiB resident ({} bytes/flow)",
        daemon_rate,
        daemon_rate / live_rate,
        (rss3.saturating_sub(rss2)) as f64 / 1024.0,
        rss3.saturating_sub(rss2) * 1024 / u64::from(FLOWS),
    );
}
