//! Every vendor log sample: the format is detected as expected and most lines parse.
//! Runs over the shared corpus (TOLLGATE_CORPUS or `<workspace>/../shared/corpus`) when it
//! is there, and always over this crate's own fixtures in `testdata/logs`.

use std::path::{Path, PathBuf};

use tollgate_discovery::logs::{InputStats, LogOptions, import_file};
use tollgate_discovery::record::FlowRecord;

fn corpus_dir() -> Option<PathBuf> {
    let base = std::env::var_os("TOLLGATE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"));
    let logs = base.join("logs");
    logs.is_dir().then_some(logs)
}

/// (file, expected format, minimum parsed ratio, minimum records)
const CORPUS: &[(&str, &str, f64, u64)] = &[
    ("squid_native.log", "squid-native", 0.95, 60),
    ("squid_common.log", "squid-common", 1.0, 2),
    ("squid_common_derived.log", "squid-common", 1.0, 30),
    ("bluecoat_proxysg_elff.log", "w3c", 1.0, 29),
    ("zscaler_nss_web.jsonl", "zscaler-nss", 1.0, 7),
    ("paloalto_traffic.log", "palo-alto", 1.0, 15),
    ("paloalto_traffic_threat_cribl.log", "palo-alto", 1.0, 5),
    ("fortinet_fortigate.log", "fortigate", 1.0, 10),
    ("cisco_asa.log", "cisco-asa", 1.0, 20),
    ("checkpoint.log", "check-point", 1.0, 8),
    ("juniper_srx.log", "juniper-srx", 1.0, 3),
    ("sophos_xg.log", "sophos-xg", 1.0, 10),
    ("watchguard_firebox.log", "watchguard", 1.0, 25),
    ("pfsense_filterlog.log", "pfsense", 1.0, 29),
    ("cisco_umbrella_dns.log", "umbrella-dns", 1.0, 15),
    ("cisco_umbrella_proxy.log", "umbrella-proxy", 1.0, 8),
    ("cef.log", "cef", 0.95, 10),
    ("cef_parser_edgecases.log", "cef", 0.9, 10),
    ("leef.log", "leef", 1.0, 4),
];

fn import(path: &Path) -> (InputStats, Vec<FlowRecord>) {
    let mut recs = Vec::new();
    let st = import_file(path, &LogOptions::default(), &mut |r| recs.push(r))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (st, recs)
}

fn check(dir: &Path, cases: &[(&str, &str, f64, u64)]) {
    println!(
        "{:<36} {:<15} {:>6} {:>6} {:>8} {:>7}",
        "file", "format", "lines", "parsed", "unparsed", "records"
    );
    let mut failures = Vec::new();
    for &(file, format, ratio, min_records) in cases {
        let (st, recs) = import(&dir.join(file));
        println!(
            "{:<36} {:<15} {:>6} {:>6} {:>8} {:>7}",
            file, st.format, st.lines, st.parsed, st.unparsed, st.records
        );
        for b in &st.bad_lines {
            println!("    line {}: {} | {}", b.line, b.reason, b.text);
        }
        assert_eq!(st.parsed + st.unparsed, st.lines);
        assert_eq!(st.records as usize, recs.len());
        let got = st.parsed as f64 / st.lines.max(1) as f64;
        if st.format != format || got < ratio || st.records < min_records {
            failures.push(format!(
                "{file}: format {} (want {format}), parsed {got:.2} (want >= {ratio}), records {} (want >= {min_records})",
                st.format, st.records
            ));
        }
        for r in &recs {
            assert!(
                r.name.is_some() || !r.dst.is_unspecified(),
                "{file}: record without name or address: {r:?}"
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn corpus_logs_detect_and_parse() {
    let Some(dir) = corpus_dir() else {
        println!("SKIP: corpus not found (set TOLLGATE_CORPUS)");
        return;
    };
    check(&dir, CORPUS);
}

#[test]
fn fixtures_detect_and_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/logs");
    let cases: Vec<(&str, &str, f64, u64)> = CORPUS
        .iter()
        .filter(|(f, ..)| dir.join(f).exists())
        .map(|&(f, fmt, ratio, _)| (f, fmt, ratio, 1))
        .collect();
    assert!(cases.len() >= 16, "fixtures missing: {} found", cases.len());
    check(&dir, &cases);
}
