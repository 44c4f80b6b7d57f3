//! ClientHello stream parser, and the TCP reassembler feeding it: the input is cut into
//! at most 16 segments (sizes taken from the input itself), fed in reverse order with a retransmit,
//! and the reassembled stream must parse exactly like the whole input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_wire::reasm::TcpReassembler;
use tollgate_wire::tls::{self, HelloStatus};

fuzz_target!(|data: &[u8]| {
    let whole = tls::parse_record_stream(data);
    if let Ok(HelloStatus::Parsed(ch)) = &whole {
        let _ = ch.ja4(tls::Transport::Tcp);
        let _ = ch.has_pq_key_share();
    }
    if let Ok(HelloStatus::NeedMore(n)) = &whole {
        assert!(*n >= 1);
    }
    // At most 16 segments: the reassembler keeps MAX_PENDING_SEGMENTS (32) out-of-order
    // pieces by design and drops (counts) the rest.
    let step = usize::from(data.first().copied().unwrap_or(1))
        .max(data.len().div_ceil(16))
        .max(1);
    let mut r = TcpReassembler::new(64 * 1024);
    let isn = 0xffff_fff0u32; // exercise sequence wrap-around
    r.set_isn(isn);
    let segs: Vec<(u32, &[u8])> = data
        .chunks(step)
        .enumerate()
        .map(|(i, c)| (isn.wrapping_add(1).wrapping_add((i * step) as u32), c))
        .collect();
    for (seq, c) in segs.iter().rev() {
        r.insert(*seq, c);
    }
    if let Some((seq, c)) = segs.first() {
        r.insert(*seq, c);
    }
    assert_eq!(r.contiguous(), data);
    assert_eq!(tls::parse_record_stream(r.contiguous()), whole);
    let _ = tls::parse_handshake_stream(data);
});
