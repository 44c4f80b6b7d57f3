//! Every vendor log sample: the format is detected as expected and most lines parse.
//! Runs over the shared corpus (TOLLGATE_CORPUS or `<workspace>/../shared/corpus`) when it
//! is there, and always over this crate's own fixtures in `testdata/logs`.

use std::path::{Path, PathBuf};

use tollgate_discovery::record::FlowRecord;
use tollgate_logs::{InputStats, LogOptions, import_file};

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

fn fixture(name: &str) -> Vec<FlowRecord> {
    import(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/logs")
            .join(name),
    )
    .1
}

#[test]
fn fixture_fields() {
    let t = |r: &FlowRecord| r.first_seen.to_rfc3339();
    // FortiGate: local time with tz="+0100" becomes UTC; the event line is not a transaction.
    let fg = fixture("fortinet_fortigate.log");
    assert_eq!(fg.len(), 2);
    assert_eq!(t(&fg[0]), "2025-11-26T08:00:00+00:00");
    assert_eq!(
        (fg[0].bytes_up, fg[0].bytes_down, fg[0].user.as_deref()),
        (1200, 34000, Some("grace"))
    );
    assert_eq!(fg[1].name.as_deref(), Some("teams.microsoft.com"));
    // ASA: Built is skipped, Teardown carries the bytes with the inside host as source.
    let asa = fixture("cisco_asa.log");
    assert_eq!(asa.len(), 3);
    assert_eq!(
        (asa[0].src.to_string(), asa[0].dport, asa[0].bytes_down),
        ("192.0.2.60".into(), 443, 54321)
    );
    assert_eq!(asa[2].name.as_deref(), Some("www.zoom.us"));
    // SRX: only the close record, with both byte directions.
    let srx = fixture("juniper_srx.log");
    assert_eq!(srx.len(), 1);
    assert_eq!(
        (srx[0].bytes_up, srx[0].bytes_down, srx[0].user.as_deref()),
        (2048, 65536, Some("ivan"))
    );
    // pfSense IPv6 over RFC 5424.
    let pf = fixture("pfsense_filterlog.log");
    assert_eq!(pf[1].dst.to_string(), "2001:db8:1::53");
    assert_eq!(pf[1].proto, tollgate_discovery::record::L4Proto::Udp);
    // LEEF 2.0 with '^' delimiter and devTimeFormat.
    let leef = fixture("leef.log");
    assert_eq!(leef.len(), 2);
    assert_eq!(t(&leef[1]), "2025-11-26T08:00:01+00:00");
    assert_eq!(leef[1].user.as_deref(), Some("oscar"));
    // Check Point: URL resource and user.
    let cp = fixture("checkpoint.log");
    assert_eq!(cp.len(), 1);
    assert_eq!(
        (cp[0].name.as_deref(), cp[0].user.as_deref()),
        (Some("www.salesforce.com"), Some("heidi"))
    );
    // Zscaler: user, sizes.
    let z = fixture("zscaler_nss_web.jsonl");
    assert_eq!(
        (z[0].name.as_deref(), z[0].bytes_up, z[0].bytes_down),
        (Some("web.whatsapp.com"), 912, 20440)
    );
    // W3C: cs-bytes up, sc-bytes down, r-ip.
    let w = fixture("bluecoat_proxysg_elff.log");
    assert_eq!(
        (w[0].bytes_up, w[0].bytes_down, w[0].dst.to_string()),
        (2211, 60022, "198.51.100.20".into())
    );
}

#[test]
fn gzip_input_is_detected_by_magic() {
    use std::io::Write;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/logs/squid_native.log");
    let text = std::fs::read(&src).expect("fixture");
    let dir = tempfile::tempdir().expect("tmp");
    // No .gz suffix on purpose: detection is by content.
    let gz = dir.path().join("access.log.1");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).expect("create"),
        flate2::Compression::fast(),
    );
    enc.write_all(&text).expect("write");
    enc.finish().expect("finish");
    let (st, recs) = import(&gz);
    let (plain, _) = import(&src);
    assert_eq!(st.format, "squid-native");
    assert_eq!(
        (st.lines, st.parsed, st.records),
        (plain.lines, plain.parsed, plain.records)
    );
    assert_eq!(recs.len() as u64, plain.records);
}

#[test]
fn custom_format_from_toml() {
    #[derive(serde::Deserialize)]
    struct Cfg {
        log_formats: Vec<tollgate_logs::CustomFormat>,
    }
    let cfg: Cfg = toml::from_str(
        r#"
        [[log_formats]]
        name = "acme-proxy"
        kind = "csv"
        delimiter = ";"
        header = true
        time = "when"
        time_format = "%d/%m/%Y %H:%M:%S"
        src_ip = "client"
        user = "who"
        dst_url = "url"
        bytes_up = "out"
        bytes_down = "in"
        action = "verdict"
        ignore_actions = ["probe"]

        [[log_formats]]
        name = "acme-fw"
        kind = "kv"
        match = "ACMEFW"
        src_ip = "s"
        dst_ip = "d"
        dst_host = "h"
        "#,
    )
    .expect("toml");
    for f in &cfg.log_formats {
        f.validate().expect("valid");
    }
    assert!(
        toml::from_str::<Cfg>("[[log_formats]]\nname='x'\nkind='csv'\nsrc_ip='a'\nbogus=1")
            .is_err()
    );
    let opts = LogOptions {
        custom: cfg.log_formats.clone(),
        ..LogOptions::default()
    };
    let csv = "when;client;who;url;out;in;verdict\n\
               26/11/2025 08:00:00;192.0.2.1;alice;https://www.dropbox.com/x;10;20;ok\n\
               26/11/2025 08:00:01;192.0.2.2;-;https://slack.com/;1;2;probe\n\
               garbage;;;\n";
    let mut recs = Vec::new();
    let st = tollgate_logs::import_reader(csv.as_bytes(), Path::new("acme.csv"), &opts, &mut |r| {
        recs.push(r)
    })
    .expect("import");
    assert_eq!(st.format, "acme-proxy");
    assert_eq!((st.lines, st.parsed, st.unparsed, st.records), (4, 3, 1, 1));
    assert_eq!(st.bad_lines[0].line, 4);
    assert_eq!(
        (
            recs[0].name.as_deref(),
            recs[0].user.as_deref(),
            recs[0].bytes_down
        ),
        (Some("www.dropbox.com"), Some("alice"), 20)
    );
    assert_eq!(recs[0].first_seen.to_rfc3339(), "2025-11-26T08:00:00+00:00");
    let kv = "<13>Nov 26 08:00:00 gw ACMEFW s=192.0.2.9 d=198.51.100.9 h=github.com\n";
    let mut recs = Vec::new();
    let st =
        tollgate_logs::import_reader(kv.as_bytes(), Path::new("fw"), &opts, &mut |r| recs.push(r))
            .expect("kv");
    assert_eq!((st.format.as_str(), recs.len()), ("acme-fw", 1));
    assert_eq!(recs[0].name.as_deref(), Some("github.com"));
}
