//! Ring-buffer records from the probes: `event::decode_record`, whole and cut at every
//! length the fuzzer picks. The first byte's low bit writes the current ABI version into the
//! record (so seeds stay useful across ABI bumps and the fuzzer reaches past the version
//! check); the rest is the record. A decoded event must agree with the bytes it came from.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use tollgate_dataplane::abi::{ABI_VERSION, EVENT_HEADER_LEN};
use tollgate_dataplane::{KernelClock, decode_record};

/// Offsets of `EventHeader.cap_len` and `.abi` (layout asserted in tollgate-common).
const OFF_CAP_LEN: usize = 60;
const OFF_ABI: usize = 68;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut rec = rest.to_vec();
    if sel & 1 == 1
        && let Some(abi) = rec.get_mut(OFF_ABI..OFF_ABI + 4)
    {
        abi.copy_from_slice(&ABI_VERSION.to_ne_bytes());
    }
    // A clock sampled at boot + 1 h, 2026: the conversions see realistic values.
    let clock = KernelClock::fixed(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000),
        3_600_000_000_000,
    );
    if let Ok(ev) = decode_record(&rec, &clock) {
        let cap = rec
            .get(OFF_CAP_LEN..OFF_CAP_LEN + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        assert_eq!(ev.payload.len() as u64, u64::from(cap));
        assert_eq!(
            &ev.payload[..],
            &rec[EVENT_HEADER_LEN..EVENT_HEADER_LEN + ev.payload.len()]
        );
        assert_eq!(ev.flow.user_ip.is_ipv4(), ev.flow.remote_ip.is_ipv4());
        let _ = ev.flow_key();
    }
});
