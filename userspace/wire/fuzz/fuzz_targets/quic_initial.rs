//! QUIC client datagrams: version sniffing, header protection, AEAD, frames, gQUIC CHLO;
//! then the CRYPTO stream through the reassembler and the ClientHello parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_wire::quic;
use tollgate_wire::reasm::CryptoReassembler;
use tollgate_wire::tls;

fuzz_target!(|data: &[u8]| {
    let _ = quic::sniff_version(data);
    let odcid = data.get(..8);
    if let Ok(d) = quic::parse_client_datagram_with(data, odcid) {
        let mut c = CryptoReassembler::new(16 * 1024);
        for f in d.crypto.iter().rev() {
            c.insert(f.offset, &f.data);
        }
        let _ = tls::parse_handshake_stream(c.contiguous());
        let _ = d.kind.label();
    }
    // Random bytes almost never decrypt, so also feed them as decrypted Initial payloads
    // (frames) of each version family, and as a bare gQUIC CHLO.
    if let Some((&sel, plain)) = data.split_first() {
        let version = match sel % 4 {
            0 => quic::VERSION_1,
            1 => quic::VERSION_2,
            2 => 0x5130_3530, // Q050: frame 0x08 carries a CHLO
            _ => 0x5430_3531, // T051
        };
        if let Ok(d) = quic::parse_initial_payload(plain, version) {
            let mut c = CryptoReassembler::new(16 * 1024);
            for f in &d.crypto {
                c.insert(f.offset, &f.data);
            }
            let _ = tls::parse_handshake_stream(c.contiguous());
        }
    }
    let _ = quic::parse_chlo(data);
});
