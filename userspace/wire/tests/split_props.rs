//! Property tests on real ClientHellos (testdata/): however the handshake message is cut
//! into TLS records and the records into TCP segments, and in whatever order the segments
//! arrive (with retransmits), the result equals parsing it whole; and every proper prefix of
//! the stream answers NeedMore.

use proptest::prelude::*;
use tollgate_wire::reasm::TcpReassembler;
use tollgate_wire::tls::{self, HelloStatus};

fn data(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The handshake message inside a single-record capture, and the record's version.
fn handshake(name: &str) -> (Vec<u8>, [u8; 2]) {
    let rec = data(name);
    (rec[5..].to_vec(), [rec[1], rec[2]])
}

/// Frame `hs` as TLS records of the given sizes (cycled).
fn reframe(hs: &[u8], ver: [u8; 2], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < hs.len() {
        let n = sizes[i % sizes.len()].clamp(1, 16384).min(hs.len() - pos);
        out.extend_from_slice(&[0x16, ver[0], ver[1]]);
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.extend_from_slice(&hs[pos..pos + n]);
        pos += n;
        i += 1;
    }
    out
}

fn check(
    name: &str,
    sizes: Vec<usize>,
    cuts: Vec<usize>,
    order_seed: u64,
    dup: usize,
) -> Result<(), TestCaseError> {
    let (hs, ver) = handshake(name);
    let whole = tls::parse_record_stream(&reframe(&hs, ver, &[16384])).unwrap();
    let HelloStatus::Parsed(_) = &whole else {
        return Err(TestCaseError::fail("fixture does not parse"));
    };
    let stream = reframe(&hs, ver, &sizes);
    prop_assert_eq!(&tls::parse_record_stream(&stream).unwrap(), &whole);

    // Cut into segments at up to 12 points.
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| c % stream.len())
        .filter(|c| *c > 0)
        .collect();
    points.push(0);
    points.push(stream.len());
    points.sort_unstable();
    points.dedup();
    let isn = (order_seed as u32) ^ 0x9e37_79b9;
    let mut segs: Vec<(u32, &[u8])> = points
        .windows(2)
        .map(|w| {
            (
                isn.wrapping_add(1).wrapping_add(w[0] as u32),
                &stream[w[0]..w[1]],
            )
        })
        .collect();
    // A deterministic shuffle from the seed, plus one retransmitted segment.
    let mut s = order_seed | 1;
    for i in (1..segs.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        segs.swap(i, (s % (i as u64 + 1)) as usize);
    }
    let again = segs[dup % segs.len()];
    segs.push(again);
    let mut r = TcpReassembler::new(64 * 1024);
    r.set_isn(isn);
    let mut last = None;
    for (seq, seg) in &segs {
        r.insert(*seq, seg);
        let now = tls::parse_record_stream(r.contiguous()).unwrap();
        if r.contiguous().len() < stream.len() {
            prop_assert!(
                matches!(now, HelloStatus::NeedMore(n) if n >= 1),
                "prefix gave {:?}",
                now
            );
        }
        last = Some(now);
    }
    prop_assert_eq!(r.contiguous(), &stream[..]);
    prop_assert_eq!(last.as_ref(), Some(&whole));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn chrome_hello_any_split(sizes in prop::collection::vec(1usize..700, 1..6),
                              cuts in prop::collection::vec(any::<usize>(), 0..12),
                              seed in any::<u64>(), dup in any::<usize>()) {
        check("chrome_client_hello.bin", sizes, cuts, seed, dup)?;
    }

    #[test]
    fn post_quantum_hello_any_split(sizes in prop::collection::vec(1usize..2100, 1..6),
                                    cuts in prop::collection::vec(any::<usize>(), 0..12),
                                    seed in any::<u64>(), dup in any::<usize>()) {
        check("pq_client_hello.bin", sizes, cuts, seed, dup)?;
    }

    #[test]
    fn every_prefix_needs_more(sizes in prop::collection::vec(1usize..400, 1..4)) {
        let (hs, ver) = handshake("pq_client_hello.bin");
        let stream = reframe(&hs, ver, &sizes);
        for cut in 0..stream.len() {
            let st = tls::parse_record_stream(&stream[..cut]).unwrap();
            prop_assert!(matches!(st, HelloStatus::NeedMore(n) if n >= 1 && cut + n <= stream.len()), "cut {} gave {:?}", cut, st);
        }
    }
}
