//! `packet::peek_flow`, the shortcut a sharded capture import takes to a frame's flow, must
//! agree with the full decoder wherever it answers.

mod common;

use std::path::Path;

use chrono::{DateTime, Utc};
use tollgate_discovery::packet::{Decoded, LinkType, decode, peek_flow};

fn ts() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
}

/// Wherever [`peek_flow`] reads a key, [`decode`] decodes a packet with that key: on
/// every frame of the test captures and of the nDPI corpus (when present), and on
/// thousands of copies of them with bytes changed and ends cut.
#[test]
fn a_peeked_flow_is_the_decoded_one() {
    use pcap_file::pcap::PcapReader;
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/pcap")];
    match common::ndpi_pcap_dir() {
        Some(d) => dirs.push(d),
        None => eprintln!("nDPI corpus not found (TOLLGATE_CORPUS): the test captures only"),
    }
    let mut frames = Vec::new();
    for dir in dirs {
        for e in std::fs::read_dir(&dir).expect("dir").flatten() {
            let Ok(mut r) = std::fs::File::open(e.path())
                .map_err(|_| ())
                .and_then(|f| PcapReader::new(f).map_err(|_| ()))
            else {
                continue;
            };
            let link = LinkType::from_linktype(u32::from(r.header().datalink));
            while let Some(Ok(p)) = r.next_packet() {
                frames.push((link, p.data.into_owned()));
            }
        }
    }
    // Frames whose outer headers name another flow than the decoder's: GTP-U (the decoder
    // reads the user packet inside) and IPv4 in IPv4.
    let inner_tcp = ipv4(6, [10, 45, 0, 2], [93, 184, 216, 34], &{
        let mut t = vec![
            0xc0, 0x01, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff,
        ];
        t.extend_from_slice(&[0, 0, 0, 0]);
        t
    });
    let mut gtp = vec![0x30, 0xff];
    gtp.extend_from_slice(&(inner_tcp.len() as u16).to_be_bytes());
    gtp.extend_from_slice(&[0, 0, 0, 7]);
    gtp.extend_from_slice(&inner_tcp);
    let mut udp = vec![0x08, 0x68, 0x08, 0x68];
    udp.extend_from_slice(&((gtp.len() + 8) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&gtp);
    for outer in [
        ipv4(17, [172, 16, 0, 1], [172, 16, 0, 2], &udp),
        ipv4(4, [172, 16, 0, 1], [172, 16, 0, 2], &inner_tcp),
    ] {
        let mut f = vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x08, 0x00];
        f.extend_from_slice(&outer);
        frames.push((LinkType::Ethernet, f));
    }
    let agree = |link: LinkType, f: &[u8]| -> bool {
        let Some((proto, sender, receiver)) = peek_flow(link, f) else {
            return false;
        };
        match decode(link, f, ts()) {
            Decoded::Packet(p) => {
                assert_eq!(
                    (p.proto, (p.src, p.sport), (p.dst, p.dport)),
                    (proto, sender, receiver),
                    "{f:02x?}"
                );
            }
            other => {
                panic!("peeked {proto:?} {sender:?} {receiver:?}, decoded {other:?}: {f:02x?}")
            }
        }
        true
    };
    let mut peeked = 0;
    for (link, f) in &frames {
        peeked += usize::from(agree(*link, f));
    }
    assert!(
        peeked * 2 > frames.len(),
        "{peeked} of {} frames peeked",
        frames.len()
    );
    // Mutations: a cheap deterministic generator; each frame gets bytes changed in its
    // headers and its end cut.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (link, f) in frames.iter().take(20_000) {
        let mut m = f.clone();
        for _ in 0..1 + next() % 3 {
            let at = (next() % 80) as usize;
            if let Some(b) = m.get_mut(at) {
                *b = next() as u8;
            }
        }
        agree(*link, &m);
        let cut = (next() as usize) % (m.len() + 1);
        agree(*link, m.get(..cut).unwrap_or(&[]));
    }
}

/// An IPv4 packet (no options) around `payload`.
fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}
