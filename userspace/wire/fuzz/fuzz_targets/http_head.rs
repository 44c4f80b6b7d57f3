//! HTTP/1 request heads; every prefix of a parsed head must answer NeedMore.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_wire::http::{self, HttpStatus};

fuzz_target!(|data: &[u8]| {
    if let Ok(HttpStatus::Parsed(h)) = http::parse_request_head(data) {
        let _ = h.host_name();
        assert!(h.head_len <= data.len());
        if let Some(prefix) = data.get(..h.head_len.saturating_sub(1)) {
            assert!(matches!(
                http::parse_request_head(prefix),
                Ok(HttpStatus::NeedMore(_))
            ));
        }
    }
    let _ = http::partial_host(data);
});
