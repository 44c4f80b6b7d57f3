//! Continuous collection's syslog input: the RFC 6587 framer (octet counting or newline,
//! detected per connection) fed in chunks whose sizes come from the input, and RFC 3164/5424
//! header stripping of every frame. Checks that buffering stays within the frame limit and
//! that a broken connection emits nothing more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_logs::collect::{Framer, check_frame, strip_header};

const MAX: usize = 512;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, text)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut f = Framer::new(MAX);
    let mut out = |s: &str| {
        assert!(s.len() <= MAX);
        let (_, m) = strip_header(s);
        assert!(m.len() <= s.len());
    };
    for c in text.chunks(chunk) {
        let broken = f.is_broken();
        let before = f.counters.frames;
        f.feed(c, &mut out);
        assert!(f.buffered() <= MAX);
        if broken {
            assert_eq!(f.counters.frames, before);
        }
    }
    f.finish(&mut out);
    if let Ok(s) = check_frame(text) {
        let _ = strip_header(s);
    }
});
