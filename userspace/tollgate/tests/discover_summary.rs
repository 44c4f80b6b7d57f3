//! `tollgate discover --summary` counts what `--flows` lists, without holding a row per record.

use std::process::Command;

fn tollgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
}

/// Squid native lines: named requests (CONNECT and plain), one to a bare address (no name).
const LOG: &str = "\
1157689312.049   5006 10.105.21.199 TCP_MISS/200 19763 CONNECT login.yahoo.com:443 alice DIRECT/209.73.177.115 -
1157689320.327   2864 10.105.21.199 TCP_MISS/200 10182 GET http://www.goonernews.com/ alice DIRECT/207.58.145.61 text/html
1157689321.315      1 10.105.21.200 TCP_HIT/200 1464 GET http://www.goonernews.com/styles.css bob NONE/- text/css
1157689322.780   1464 10.105.21.200 TCP_HIT/200 5626 GET http://203.0.113.9/urchin.js bob DIRECT/203.0.113.9 text/javascript
1157689326.703   4459 10.105.21.199 TCP_MISS/200 1845 CONNECT us.bc.yahoo.com:443 alice DIRECT/68.142.213.132 -
";

fn field(out: &str, key: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {out}"))
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e} in {out}"))
}

#[test]
fn summary_counts_match_the_flow_list() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    std::fs::write(&log, LOG).unwrap();

    let out = tollgate()
        .args(["discover", "--summary"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();

    let out = tollgate()
        .args(["discover", "--flows", "--format", "json"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let flows = report["flows"].as_array().expect("flows in the report");
    let named = flows
        .iter()
        .filter(|f| f["name"].as_str().is_some_and(|n| !n.is_empty()))
        .count() as u64;

    assert_eq!(flows.len(), 5, "{report}");
    assert_eq!(field(&summary, "flows"), flows.len() as u64, "{summary}");
    assert_eq!(field(&summary, "sni_flows"), named, "{summary}");
    assert!(named < 5, "the bare-address request has no name: {report}");
    assert_eq!(report["totals"]["named_transactions"], named, "{report}");
}
