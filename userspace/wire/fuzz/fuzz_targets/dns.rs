//! DNS over UDP and over TCP (length prefix), CNAME chain following.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_wire::dns;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = dns::parse_message(data) {
        let _ = m.address_map();
        let _ = m.query_name();
    }
    let mut pos = 0usize;
    for _ in 0..16 {
        match dns::parse_tcp_stream(data.get(pos..).unwrap_or(&[])) {
            Ok(dns::TcpStatus::Parsed(m, n)) => {
                assert!(n >= 14);
                let _ = m.address_map();
                pos += n;
            }
            _ => break,
        }
    }
});
