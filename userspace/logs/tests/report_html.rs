//! Reports from the crate's own log fixtures: JSON field names, CSV shape, and the HTML
//! page checked in headless Chromium (renders, charts have data, no console errors, a
//! screenshot is taken). The browser part is skipped when `chromium` is not installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use tollgate_catalog::Catalog;
use tollgate_discovery::report::{DiscoveryReport, ReportFormat, render};
use tollgate_discovery::users::Users;
use tollgate_logs::discover::{DiscoverOptions, discover};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/logs");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("testdata/logs")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    v
}

fn report(flows: bool) -> DiscoveryReport {
    let catalog = Catalog::builtin(chrono::Utc::now()).expect("catalog");
    let mut inputs = fixtures();
    inputs.push(PathBuf::from("/nonexistent/tollgate-missing.log"));
    // BSD syslog stamps carry no year (the pfSense fixture is dated this year), so "new"
    // is pinned to the fixtures' own morning.
    let new_since = chrono::DateTime::parse_from_rfc3339("2025-11-26T08:30:00Z")
        .expect("time")
        .to_utc();
    let opts = DiscoverOptions {
        include_flows: flows,
        new_since: Some(new_since),
        ..DiscoverOptions::default()
    };
    discover(&inputs, &opts, &catalog, &Users::default())
}

fn rendered(r: &DiscoveryReport, f: ReportFormat) -> String {
    let mut out = Vec::new();
    render(r, f, &mut out).expect("render");
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn json_report_fields() {
    let r = report(false);
    let v: serde_json::Value =
        serde_json::from_str(&rendered(&r, ReportFormat::Json)).expect("json");
    for key in ["inputs", "apps", "users", "unknown_domains"] {
        assert!(
            v.get(key).is_some_and(serde_json::Value::is_array),
            "top-level {key}"
        );
    }
    let inputs = v["inputs"].as_array().expect("inputs");
    assert_eq!(inputs.len(), fixtures().len() + 1);
    for i in inputs {
        for key in ["file", "format", "lines", "parsed", "unparsed"] {
            assert!(i.get(key).is_some(), "inputs[].{key} in {i}");
        }
    }
    let missing = inputs.last().expect("missing file entry");
    assert!(
        missing["error"]
            .as_str()
            .is_some_and(|e| e.contains("tollgate-missing.log")),
        "{missing}"
    );
    let apps = v["apps"].as_array().expect("apps");
    assert!(apps.len() >= 5, "apps found in fixtures: {}", apps.len());
    let dropbox = apps
        .iter()
        .find(|a| a["id"] == "dropbox")
        .expect("dropbox in fixtures");
    let mut keys: Vec<&str> = dropbox
        .as_object()
        .expect("obj")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "bytes_down",
            "bytes_up",
            "category",
            "confidence",
            "first_seen",
            "id",
            "ips",
            "last_seen",
            "name",
            "risk_score",
            "tag",
            "transactions",
            "users"
        ]
    );
    // www.dropbox.com in squid native (48211 down), common (48211), palo alto URL, umbrella DNS.
    assert!(
        dropbox["transactions"].as_u64().is_some_and(|t| t >= 4),
        "{dropbox}"
    );
    assert!(
        dropbox["bytes_down"].as_u64().is_some_and(|b| b >= 96422),
        "{dropbox}"
    );
    assert!(
        v["users"]
            .as_array()
            .is_some_and(|u| u.iter().any(|u| u["user"] == "alice"))
    );
    assert!(
        v["unknown_domains"]
            .as_array()
            .is_some_and(|u| u.iter().any(|d| d["domain"] == "example-unknown.net"))
    );
}

#[test]
fn csv_and_table() {
    let r = report(false);
    let csv = rendered(&r, ReportFormat::Csv);
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .is_some_and(|h| h.starts_with("id,name,category,risk_score"))
    );
    assert_eq!(lines.count(), r.apps.len());
    let r = report(true);
    let flows = rendered(&r, ReportFormat::Csv);
    assert!(flows.starts_with("first_seen,last_seen,proto,src"));
    assert_eq!(flows.lines().count() as u64, 1 + r.totals.transactions);
    let table = rendered(&r, ReportFormat::Table);
    assert!(table.contains("APPS") && table.contains("Dropbox"));
}

fn chart_items(html: &str, name: &str) -> usize {
    let pat = format!("data-chart=\"{name}\" data-items=\"");
    let Some(i) = html.find(&pat) else { return 0 };
    html[i + pat.len()..]
        .split('"')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn html_report_renders_in_chromium() {
    let r = report(false);
    let html = rendered(&r, ReportFormat::Html);
    assert!(
        !html.contains("http://") && !html.contains("https://") || !html.contains("src=\"http"),
        "no external assets"
    );
    assert!(
        !html.contains("<link") && !html.contains("src=\""),
        "self-contained"
    );
    for chart in [
        "risk-levels",
        "traffic-by-category",
        "top-apps-traffic",
        "top-apps-users",
        "top-users",
        "new-apps",
        "traffic-over-time",
    ] {
        assert!(chart_items(&html, chart) > 0, "chart {chart} has no data");
    }
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        println!("SKIP: chromium not installed");
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let page = dir.path().join("report.html");
    std::fs::write(&page, &html).expect("write");
    let url = format!("file://{}", page.display());
    let profile = dir.path().join("profile");
    let base = |cmd: &mut Command| {
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    };
    let mut cmd = Command::new(chromium);
    base(&mut cmd);
    let out = cmd
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("chromium --dump-dom");
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        dom.contains("Cloud Discovery"),
        "page did not render: {log}"
    );
    assert!(
        dom.matches("<svg class=\"chart\"").count() >= 6,
        "charts missing in the DOM"
    );
    assert!(
        dom.matches("data-value=").count() >= 20,
        "charts without data points"
    );
    let console_errors: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("CONSOLE")
                && (l.contains("Uncaught") || l.contains("Error") || l.contains("error"))
        })
        .collect();
    assert!(
        console_errors.is_empty(),
        "console errors: {console_errors:?}"
    );
    let shot = dir.path().join("report.png");
    let mut cmd = Command::new(chromium);
    base(&mut cmd);
    let out = cmd
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1400,2000")
        .arg("--hide-scrollbars")
        .arg(&url)
        .output()
        .expect("chromium --screenshot");
    let png = std::fs::read(&shot).unwrap_or_default();
    assert!(
        png.len() > 20_000 && png.starts_with(b"\x89PNG"),
        "screenshot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Ok(keep) = std::env::var("TOLLGATE_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).expect("copy screenshot");
    }
}

#[test]
fn pcap_and_logs_in_one_run() {
    let base = std::env::var_os("TOLLGATE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"));
    let pcap = base.join("ndpi/pcap/443-firefox.pcap");
    if !pcap.exists() {
        println!("SKIP: corpus pcap not found (set TOLLGATE_CORPUS)");
        return;
    }
    let log = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/logs/squid_native.log");
    let catalog = Catalog::builtin(chrono::Utc::now()).expect("catalog");
    let r = discover(
        &[pcap, log],
        &DiscoverOptions::default(),
        &catalog,
        &Users::default(),
    );
    let p = &r.inputs[0];
    assert_eq!(p.format, "pcap");
    assert!(p.error.is_none(), "{:?}", p.error);
    assert!(p.lines > 100 && p.records >= 1, "{p:?}");
    assert_eq!(r.inputs[1].format, "squid-native");
    assert_eq!(
        r.totals.transactions,
        r.inputs.iter().map(|i| i.records).sum::<u64>()
    );
}
