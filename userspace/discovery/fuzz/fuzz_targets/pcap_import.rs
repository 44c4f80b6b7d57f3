//! Whole capture files: pcap-file's parsers, the L2-L4 decoder and the flow table with all
//! the parsers behind it. The first byte picks pcap or pcapng framing so the fuzzer need not
//! find the magic numbers. The input is also one frame for `packet::peek_flow`, which must
//! agree with the decoder. The same file streamed through a small buffer (its size also from
//! the first byte) must give the same counts as the in-memory parse.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tollgate_discovery::flow_table::{FlowTable, FlowTableLimits};
use tollgate_discovery::packet::{Decoded, LinkType, decode, peek_flow};
use tollgate_discovery::pcap::{import_bytes, import_stream};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let mut file = Vec::with_capacity(rest.len() + 32);
    match sel % 3 {
        // pcap, little endian, microseconds, Ethernet
        0 => file.extend_from_slice(&[
            0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0,
        ]),
        // pcapng section header (little endian) then the input as blocks
        1 => file.extend_from_slice(&[
            0x0a, 0x0d, 0x0d, 0x0a, 28, 0, 0, 0, 0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 28, 0, 0, 0,
        ]),
        _ => {}
    }
    file.extend_from_slice(rest);
    // The input as one frame: where the sharded import's shortcut reads a flow, the decoder
    // decodes a packet of that flow.
    for link in [LinkType::Ethernet, LinkType::RawIp] {
        if let Some((proto, s, d)) = peek_flow(link, rest) {
            match decode(link, rest, Default::default()) {
                Decoded::Packet(p) => {
                    assert_eq!((p.proto, (p.src, p.sport), (p.dst, p.dport)), (proto, s, d));
                }
                other => panic!("peeked {proto:?} {s:?} {d:?}, decoded {other:?}"),
            }
        }
    }
    let mut t = FlowTable::new(FlowTableLimits {
        max_flows: 256,
        ..FlowTableLimits::default()
    });
    let whole = import_bytes(Path::new("fuzz"), &file, &mut t);
    if whole.is_ok() {
        let _ = t.records().count();
        let _ = t.stats();
    }
    let mut u = FlowTable::new(FlowTableLimits {
        max_flows: 256,
        ..FlowTableLimits::default()
    });
    let ng = file.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]);
    let streamed = import_stream(Path::new("fuzz"), &file[..], ng, &mut u, 1 + usize::from(sel / 3));
    match (whole, streamed) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "streamed and in-memory counts differ"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("in memory {a:?}, streamed {b:?}"),
    }
});
