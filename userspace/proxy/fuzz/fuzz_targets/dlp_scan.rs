//! The DLP detectors and form decoding over arbitrary bodies: never a panic, evidence always
//! masked to what was found.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_proxy::config::ContentKind;
use tollgate_proxy::dlp;

const KINDS: [ContentKind; 6] = [
    ContentKind::CreditCard,
    ContentKind::Iban,
    ContentKind::UsSsn,
    ContentKind::Email,
    ContentKind::PrivateKey,
    ContentKind::CloudApiKey,
];

fuzz_target!(|data: &[u8]| {
    let decoded = dlp::form_decode(data);
    assert!(decoded.len() <= data.len());
    for body in [data, decoded.as_slice()] {
        for k in KINDS {
            for f in dlp::scan(k, body) {
                assert!(f.masked.len() <= 4 * body.len() + 16);
            }
        }
    }
    let _ = dlp::luhn_valid(data);
    let _ = dlp::iban_valid(data);
});
