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
    // Frames of a decrypted payload are reached mostly through the corpus seeds; parse
    // the input as a bare CHLO too.
    let _ = quic::parse_chlo(data);
});
