//! Continuous collection's per-source path: syslog messages (one per input line) through
//! detection with and without the syslog header, as the collector does for a new sender,
//! then a `StreamParser` of the detected (or a forced) format kept across the messages, and
//! the watched-directory glob. Checks that the counts add up: every non-blank message is one
//! line, parsed or unparsed, and records never outnumber parsed lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_logs::collect::strip_header;
use tollgate_logs::collect::tail::glob_match;
use tollgate_logs::{LogFormat, StreamParser, detect_format, sniff_count};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let msgs: Vec<&str> = text.split('\n').collect();
    let raw: Vec<String> = msgs.iter().take(32).map(|m| (*m).to_owned()).collect();
    let stripped: Vec<String> = raw.iter().map(|m| strip_header(m).1.to_owned()).collect();
    let a = detect_format(&raw, &[]);
    let b = detect_format(&stripped, &[]);
    let (name, strip) = match (a, b) {
        (Some(a), Some(b)) if a.1 > b.1 => (a.0, false),
        (_, Some(b)) => (b.0, true),
        (Some(a), None) => (a.0, false),
        (None, None) => {
            let f = LogFormat::ALL[usize::from(sel) % LogFormat::ALL.len()];
            (f.name().to_owned(), sel & 0x80 != 0)
        }
    };
    assert!(sniff_count(&name, &raw, &[]) <= raw.len());
    let mut p = StreamParser::named(&name, "fuzz", &[], 5).expect("a known format");
    let now = chrono::Utc::now();
    let mut records = 0u64;
    let mut nonblank = 0u64;
    for m in &msgs {
        let m = if strip { strip_header(m).1 } else { m };
        if !m.bytes().all(|b| b.is_ascii_whitespace()) {
            nonblank += 1;
        }
        p.line(m, now, &mut |_| records += 1);
    }
    let s = &p.stats;
    assert_eq!(s.lines, nonblank);
    assert_eq!(s.parsed + s.unparsed, s.lines);
    assert!(records <= s.parsed);
    assert_eq!(records, s.records);
    if let Some(pat) = msgs.first() {
        for n in msgs.iter().skip(1).take(4) {
            let _ = glob_match(pat, n);
        }
    }
});
