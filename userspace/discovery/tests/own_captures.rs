//! Names from captures of real clients made for Tollgate (testdata/pcap/README.md): a
//! Chrome-like post-quantum ClientHello split over two TCP segments, QUIC v1 and v2
//! Initials from aioquic (one hello spanning three Initial packets), curl over HTTP/1.1.

use std::path::Path;

use tollgate_discovery::flow_table::{FlowTable, FlowTableLimits};
use tollgate_discovery::pcap::import_pcap;
use tollgate_discovery::record::{FlowRecord, L4Proto, NameSource};

fn import(name: &str) -> (Vec<FlowRecord>, FlowTable) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/pcap")
        .join(name);
    let mut t = FlowTable::new(FlowTableLimits::default());
    let s = import_pcap(&p, &mut t).unwrap_or_else(|e| panic!("{e}"));
    assert!(s.packets > 0 && !s.truncated && s.malformed == 0, "{s:?}");
    let mut r: Vec<FlowRecord> = t.records().collect();
    r.sort_by_key(|r| r.sport);
    (r, t)
}

#[test]
fn chrome_post_quantum_hello_over_two_segments() {
    let (recs, t) = import("tls_chrome.pcap");
    assert_eq!(recs.len(), 4);
    for r in &recs {
        assert_eq!(r.proto, L4Proto::Tcp);
        assert_eq!(r.name.as_deref(), Some("www.tollgate-test.example"));
        assert_eq!(r.name_source, Some(NameSource::Sni));
        assert_eq!(r.src.to_string(), "10.77.0.1");
        assert_eq!(r.dport, 443);
        assert!(r.bytes_up > 2000 && r.bytes_down > 4000, "{r:?}");
    }
    for (_, m) in t.records_with_meta() {
        let ja4 = m.ja4.expect("ja4");
        assert!(ja4.starts_with("t13d"), "{ja4}");
        assert!(m.ech, "Chrome sends GREASE ECH");
        assert!(m.pq_key_share, "X25519MLKEM768");
        assert_eq!(m.alpn, vec!["h2", "http/1.1"]);
    }
}

#[test]
fn aioquic_v1_multi_packet_hello_and_v2() {
    let (recs, t) = import("quic_aioquic.pcap");
    assert_eq!(recs.len(), 3);
    for r in &recs {
        assert_eq!(r.proto, L4Proto::Udp);
        assert_eq!(
            r.name.as_deref(),
            Some("quic.tollgate-test.example"),
            "{r:?}"
        );
        assert_eq!(r.name_source, Some(NameSource::Quic));
        assert_eq!(r.src.to_string(), "10.77.0.1");
    }
    let mut versions: Vec<String> = t
        .records_with_meta()
        .filter_map(|(_, m)| m.quic_version)
        .collect();
    versions.sort();
    assert_eq!(versions, vec!["V-1", "V-1", "V-2"]);
    // The padded hello (10 ALPN values) needed three Initial packets.
    assert!(t.records_with_meta().any(|(_, m)| m.alpn.len() == 10));
}

#[test]
fn curl_http_host() {
    let (recs, t) = import("http_curl.pcap");
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].name.as_deref(), Some("www.tollgate-test.example"));
    assert_eq!(recs[0].name_source, Some(NameSource::Http));
    let (_, m) = t.records_with_meta().next().expect("one flow");
    assert_eq!(m.user_agent.as_deref(), Some("tollgate-test/1.0"));
    assert_eq!(m.http_method.as_deref(), Some("GET"));
}

#[test]
fn chromium_at_mtu_1400_tls_and_quic() {
    // Chromium 14x headless, every host mapped to the test server, MTU 1400: its own
    // background connections (update.googleapis.com, ...) are real Chromium hellos too.
    let (recs, t) = import("chromium_mtu1400.pcap");
    let tls: Vec<&FlowRecord> = recs.iter().filter(|r| r.proto == L4Proto::Tcp).collect();
    assert!(tls.len() >= 8);
    for r in &tls {
        assert_eq!(r.name_source, Some(NameSource::Sni), "{r:?}");
        assert_eq!(r.src.to_string(), "10.77.0.1");
    }
    let names: Vec<&str> = tls.iter().filter_map(|r| r.name.as_deref()).collect();
    assert!(names.contains(&"www.tollgate-test.example"));
    assert!(names.contains(&"accounts.google.com"));
    let quic: Vec<&FlowRecord> = recs.iter().filter(|r| r.proto == L4Proto::Udp).collect();
    assert_eq!(quic.len(), 1);
    assert_eq!(quic[0].name.as_deref(), Some("quic.tollgate-test.example"));
    assert_eq!(quic[0].name_source, Some(NameSource::Quic));
    // Chromium's hellos carry a post-quantum key share, hence two segments at MTU 1400
    // and two Initial packets for QUIC.
    assert!(
        t.records_with_meta().all(|(_, m)| m.pq_key_share),
        "every hello is post-quantum"
    );
}

/// Parsing a capture held in memory (`import_bytes`, what the fuzz target drives) and
/// streaming it (`import_reader`, what `tollgate discover` does) give the same records, for
/// pcap and (with the nDPI corpus present) pcapng.
#[test]
fn streaming_and_in_memory_imports_agree() {
    use tollgate_discovery::pcap::{import_bytes, import_reader};
    let mut files = vec![
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/pcap/tls_chrome.pcap"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/pcap/quic_aioquic.pcap"),
    ];
    let corpus = match std::env::var_os("TOLLGATE_CORPUS") {
        Some(p) => std::path::PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
    };
    let ng = corpus.join("ndpi/pcap/sites.pcapng");
    if ng.is_file() {
        files.push(ng);
    } else {
        eprintln!("corpus absent: pcapng case skipped");
    }
    for f in files {
        let data = std::fs::read(&f).expect("read");
        let mut a = FlowTable::new(FlowTableLimits::default());
        let mut b = FlowTable::new(FlowTableLimits::default());
        let sa = import_bytes(&f, &data, &mut a).expect("in memory");
        let sb = import_reader(
            &f,
            &data[..],
            data.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]),
            &mut b,
        )
        .expect("streaming");
        assert_eq!(sa, sb, "{}", f.display());
        let key = |r: &FlowRecord| (r.proto, r.src, r.sport, r.dst, r.dport);
        let mut ra: Vec<FlowRecord> = a.records().collect();
        let mut rb: Vec<FlowRecord> = b.records().collect();
        ra.sort_by_key(key);
        rb.sort_by_key(key);
        assert_eq!(ra, rb, "{}", f.display());
        assert!(!ra.is_empty());
    }
}

/// Hostile input: every frame of the real captures, truncated at every length and with
/// bytes flipped at a stride, through the decoder and one flow table. Nothing panics and the
/// table stays within its caps.
#[test]
fn mangled_frames_never_panic() {
    use pcap_file::pcap::PcapParser;
    use tollgate_discovery::packet::{LinkType, decode};
    let mut t = FlowTable::new(FlowTableLimits {
        max_flows: 64,
        max_buffered_bytes: 64 * 1024,
        ..FlowTableLimits::default()
    });
    let ts = chrono::DateTime::UNIX_EPOCH;
    let mut frames = 0;
    for name in ["tls_chrome.pcap", "quic_aioquic.pcap", "http_curl.pcap"] {
        let data = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("testdata/pcap")
                .join(name),
        )
        .expect("read");
        let (mut rest, p) = PcapParser::new(&data).expect("pcap");
        while let Ok((r, pkt)) = p.next_packet(rest) {
            rest = r;
            let f = pkt.data.to_vec();
            for cut in (0..f.len()).step_by(7) {
                if let tollgate_discovery::packet::Decoded::Packet(v) =
                    decode(LinkType::Ethernet, &f[..cut], ts)
                {
                    t.observe_packet(&v);
                }
            }
            for (i, salt) in [(13usize, 0x5au8), (29, 0xff), (61, 0x01)] {
                let mut m = f.clone();
                for b in m.iter_mut().skip(i % 17).step_by(i) {
                    *b ^= salt;
                }
                if let tollgate_discovery::packet::Decoded::Packet(v) =
                    decode(LinkType::Ethernet, &m, ts)
                {
                    t.observe_packet(&v);
                }
            }
            frames += 1;
        }
    }
    assert!(frames > 50);
    let s = t.stats();
    assert!(s.flows <= 64);
    assert!(s.buffered_bytes <= 64 * 1024);
}
