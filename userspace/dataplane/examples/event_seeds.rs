//! Writes real ring-buffer records for the `event_decode` fuzz target's seed corpus: the
//! probes run (BPF_PROG_TEST_RUN) on packets carrying the payloads in `testdata/` (TLS
//! hellos, QUIC Initials, DNS, HTTP, IPv4 and IPv6) and every record they emit is saved, with
//! the target's leading selector byte. Root only.
//!
//! `cargo run -p tollgate-dataplane --example event_seeds -- userspace/dataplane/fuzz/corpus/event_decode`

use std::net::IpAddr;
use std::path::PathBuf;

use tollgate_dataplane::abi;
use tollgate_dataplane::testing::{PacketSpec, ProbeHarness, hex, tcp_flags};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    hex(&std::fs::read_to_string(&path).expect("fixture")).expect("hex")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: event_seeds DIR"));
    std::fs::create_dir_all(&out).expect("output dir");
    let mut h = ProbeHarness::load().expect("probes load (root?)");
    let psh = tcp_flags::ACK | tcp_flags::PSH;
    let chrome = fixture("tls_clienthello_chrome.hex");
    let packets = [
        PacketSpec::tcp(
            ip("192.0.2.10"),
            ip("198.51.100.20"),
            40001,
            443,
            1000,
            psh,
            &chrome,
        ),
        // A hello cut in two segments: a first record and a continuation.
        PacketSpec::tcp(
            ip("192.0.2.10"),
            ip("198.51.100.20"),
            40002,
            443,
            5000,
            psh,
            &chrome[..200],
        ),
        PacketSpec::tcp(
            ip("192.0.2.10"),
            ip("198.51.100.20"),
            40002,
            443,
            5200,
            psh,
            &chrome[200..],
        ),
        PacketSpec::tcp(
            ip("2001:db8:1::10"),
            ip("2001:db8:2::20"),
            40003,
            443,
            7,
            psh,
            &fixture("tls_clienthello_ech.hex"),
        ),
        PacketSpec::udp(
            ip("192.0.2.10"),
            ip("198.51.100.20"),
            50000,
            443,
            &fixture("quic_v1_initial.hex"),
        ),
        PacketSpec::udp(
            ip("2001:db8:1::10"),
            ip("2001:db8:2::20"),
            50001,
            443,
            &fixture("quic_v2_initial.hex"),
        ),
        PacketSpec::udp(
            ip("192.0.2.10"),
            ip("192.0.2.53"),
            53000,
            53,
            &fixture("dns_query.hex"),
        ),
        PacketSpec::udp(
            ip("192.0.2.53"),
            ip("192.0.2.10"),
            53,
            53000,
            &fixture("dns_response.hex"),
        ),
        PacketSpec::tcp(
            ip("192.0.2.10"),
            ip("198.51.100.20"),
            40004,
            80,
            1,
            psh,
            &fixture("http_request.hex"),
        ),
    ];
    for p in &packets {
        h.run(abi::PROG_LAN_INGRESS, &p.frame(), 1)
            .expect("test run");
    }
    let records = h.drain_raw_records();
    for (i, r) in records.iter().enumerate() {
        let mut seed = vec![0u8];
        seed.extend_from_slice(r);
        let path = out.join(format!("real-{i:02}"));
        std::fs::write(&path, &seed).expect("write seed");
        println!("{} {} bytes", path.display(), seed.len());
    }
    println!("{} records", records.len());
}
