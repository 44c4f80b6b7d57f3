//! Content decoding of bodies under inspection (gzip, deflate, br, zstd, stacked codings),
//! whole and as a prefix: never a panic, never more than the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_proxy::decode;

const CODINGS: [&str; 8] = [
    "gzip",
    "deflate",
    "br",
    "zstd",
    "gzip, br",
    "deflate, zstd",
    "identity",
    "x-gzip",
];
const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let coding = CODINGS[usize::from(selector) % CODINGS.len()];
    let complete = selector & 0x80 == 0;
    if let Ok(d) = decode::decode(Some(coding), body, complete, LIMIT) {
        assert!(d.bytes.len() <= LIMIT.max(body.len()));
        if !complete {
            assert!(d.truncated);
        }
    }
});
