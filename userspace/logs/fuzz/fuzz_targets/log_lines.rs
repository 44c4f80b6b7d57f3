//! Firewall and proxy log import: the format detector and every line parser (the 16
//! built-in formats and both kinds of custom format), through the public entry point
//! `logs::import_reader`, the way `tollgate discover` reads a file. The first input byte
//! picks detection or one forced parser, so the fuzzer need not find each format's
//! detection markers; the rest is the file. Checks the counting contract as well as the
//! absence of panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tollgate_logs::custom::CustomKind;
use tollgate_logs::{CustomFormat, LogFormat, LogOptions, import_reader};

fn custom(kind: CustomKind) -> CustomFormat {
    let csv = kind == CustomKind::Csv;
    CustomFormat {
        name: if csv { "fz-csv" } else { "fz-kv" }.into(),
        kind,
        delimiter: None,
        header: csv,
        columns: Vec::new(),
        match_text: None,
        time: Some("ts".into()),
        time_format: Some(if csv { "auto" } else { "%d/%m/%Y %H:%M:%S" }.into()),
        src_ip: "src".into(),
        user: Some("user".into()),
        dst_host: Some("host".into()),
        dst_url: Some("url".into()),
        dst_ip: Some("dst".into()),
        dst_port: Some("port".into()),
        bytes_up: Some("up".into()),
        bytes_down: Some("down".into()),
        action: Some("act".into()),
        ignore_actions: vec!["deny".into()],
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, text)) = data.split_first() else {
        return;
    };
    let builtin = LogFormat::ALL.len();
    let mut opts = LogOptions {
        custom: vec![custom(CustomKind::Csv), custom(CustomKind::Kv)],
        ..LogOptions::default()
    };
    // 0: detection (built-in and custom formats compete); then each parser forced.
    let pick = usize::from(sel) % (builtin + 3);
    opts.force_format = match pick {
        0 => None,
        i if i <= builtin => Some(LogFormat::ALL[i - 1].name().to_string()),
        i if i == builtin + 1 => Some("fz-csv".into()),
        _ => Some("fz-kv".into()),
    };
    let mut records = 0u64;
    let Ok(st) = import_reader(text, Path::new("fuzz"), &opts, &mut |r| {
        records += 1;
        let _ = r.name.as_deref().map(str::len);
    }) else {
        return;
    };
    assert_eq!(st.parsed + st.unparsed, st.lines, "every line is counted once");
    assert!(st.records <= st.parsed);
    assert_eq!(st.records, records, "every transaction reaches the sink");
    assert!(st.bad_lines.len() <= opts.max_bad_lines);
});
