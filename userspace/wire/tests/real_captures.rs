//! The parsers on payloads cut from real captures (nDPI's regression pcaps; see
//! testdata/README.md), checked against what nDPI reported for the same flows.

use tollgate_wire::quic::{self, VersionKind};
use tollgate_wire::reasm::CryptoReassembler;
use tollgate_wire::tls::{self, HelloStatus, Transport};
use tollgate_wire::{dns, http};

fn data(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn hello(stream: &[u8]) -> tls::ClientHello {
    match tls::parse_record_stream(stream) {
        Ok(HelloStatus::Parsed(ch)) => ch,
        other => panic!("{other:?}"),
    }
}

/// nDPI's QUIC JA4 differs from the FoxIO specification in the ALPN characters only (it
/// prints "h3" for "h3-29", "h0" for "h3"); the spec takes the first and last character of
/// the first ALPN value. Compare everything else with nDPI and the ALPN part with the spec.
fn assert_quic_ja4(ch: &tls::ClientHello, ndpi: &str) {
    let ours = ch.ja4(Transport::Quic);
    let first = ch.alpn.first().expect("alpn").as_bytes();
    let alpn = format!("{}{}", first[0] as char, first[first.len() - 1] as char);
    assert_eq!(&ours[..8], &ndpi[..8]);
    assert_eq!(&ours[8..10], alpn, "{ours} alpn {:?}", ch.alpn);
    assert_eq!(&ours[10..], &ndpi[10..]);
}

/// Decrypt a client Initial datagram and parse its CRYPTO stream.
fn quic_hello(dgram: &[u8]) -> (quic::QuicDatagram, Option<tls::ClientHello>) {
    let d = quic::parse_client_datagram(dgram).expect("decrypts");
    let mut c = CryptoReassembler::new(16 * 1024);
    for f in &d.crypto {
        c.insert(f.offset, &f.data);
    }
    let ch = match tls::parse_handshake_stream(c.contiguous()) {
        Ok(HelloStatus::Parsed(ch)) => Some(ch),
        _ => None,
    };
    (d, ch)
}

#[test]
fn chrome_hello_matches_ndpi_ja4() {
    let ch = hello(&data("chrome_client_hello.bin"));
    assert_eq!(ch.sni.as_deref(), Some("www.iit.cnr.it"));
    assert_eq!(ch.alpn, vec!["h2", "http/1.1"]);
    assert_eq!(
        ch.ja4(Transport::Tcp),
        "t13d1516h2_8daaf6152771_e5627efa2ab1"
    );
    assert!(
        tls::is_grease(ch.cipher_suites[0]),
        "Chrome leads with a GREASE suite"
    );
}

#[test]
fn post_quantum_hello_from_sites_pcapng() {
    let raw = data("pq_client_hello.bin");
    assert!(raw.len() > 1900);
    let ch = hello(&raw);
    assert!(
        ch.has_pq_key_share(),
        "key shares {:x?}",
        ch.key_share_groups
    );
    assert!(ch.sni.is_some());
    // Every prefix is NeedMore, and the count it asks for never overshoots.
    for cut in 0..raw.len() {
        match tls::parse_record_stream(&raw[..cut]) {
            Ok(HelloStatus::NeedMore(n)) => {
                assert!(n >= 1 && cut + n <= raw.len(), "cut {cut} n {n}")
            }
            other => panic!("cut {cut}: {other:?}"),
        }
    }
}

#[test]
fn quic_v2_initial() {
    let (d, ch) = quic_hello(&data("quic_v2_initial.bin"));
    assert_eq!(d.kind, VersionKind::V2);
    let ch = ch.expect("hello in one datagram");
    assert_eq!(ch.sni.as_deref(), Some("test"));
    assert_quic_ja4(&ch, "q13d0310h0_55b375c5d22e_0a3b52e28cea");
}

#[test]
fn quic_draft29_initial() {
    let (d, ch) = quic_hello(&data("quic_draft29_initial.bin"));
    assert_eq!(d.kind, VersionKind::Draft(29));
    let ch = ch.expect("hello");
    assert_eq!(ch.sni.as_deref(), Some("localhost"));
    assert_eq!(ch.alpn.first().map(String::as_str), Some("h3-29"));
    assert_quic_ja4(&ch, "q13d0512h3_d55e91d5c3b2_cd318bf3b157");
}

#[test]
fn gquic_versions() {
    let d = quic::parse_client_datagram(&data("gquic_q046_chlo.bin")).unwrap();
    assert_eq!(d.kind.label(), "Q046");
    assert_eq!(d.chlo.and_then(|c| c.sni).as_deref(), Some("i.ytimg.com"));
    let d = quic::parse_client_datagram(&data("gquic_q050_initial.bin")).unwrap();
    assert_eq!(d.kind, VersionKind::GquicQ050);
    assert_eq!(
        d.chlo.and_then(|c| c.sni).as_deref(),
        Some("www.googletagmanager.com")
    );
    let (d, ch) = quic_hello(&data("gquic_t051_initial.bin"));
    assert_eq!(d.kind.label(), "T051");
    let ch = ch.expect("T051 carries TLS");
    assert_eq!(ch.sni.as_deref(), Some("www.google.com"));
    assert_quic_ja4(&ch, "q13d0308h3_55b375c5d22e_e7bc1e4f333e");
}

#[test]
fn dns_response_with_cnames() {
    let m = dns::parse_message(&data("dns_response_cname.bin")).unwrap();
    assert!(m.is_response());
    assert!(
        m.answers
            .iter()
            .any(|r| matches!(r.data, dns::RData::Cname(_)))
    );
    let map = m.address_map();
    assert!(!map.is_empty());
    for (_, name, ttl) in &map {
        assert_eq!(Some(name.as_str()), m.query_name());
        assert!(*ttl > 0);
    }
}

#[test]
fn http_request() {
    let raw = data("http_request.bin");
    let http::HttpStatus::Parsed(h) = http::parse_request_head(&raw).unwrap() else {
        panic!()
    };
    assert!(h.host_name().is_some());
    assert_eq!(h.method, "GET");
}
