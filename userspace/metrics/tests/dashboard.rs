//! The Grafana dashboard in docs/grafana queries only metrics the gateway and the hub export.

use std::collections::BTreeSet;

/// Every `expr` in the dashboard, wherever it is nested.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The `tollgate_*` names an expression reads.
fn names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("tollgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

fn exported() -> BTreeSet<String> {
    let gateway =
        tollgate_metrics::gateway::render(&tollgate_metrics::gateway::example_status(), 0);
    let hub = tollgate_metrics::hub::HubMetrics::default();
    hub.request("/v1/poll", 200, 0.1);
    let hub = hub.render(Some(tollgate_metrics::hub::Fleet::default()));
    let mut names = tollgate_metrics::sample_names(&gateway);
    names.extend(tollgate_metrics::sample_names(&hub));
    names
}

#[test]
fn every_dashboard_query_names_an_exported_metric() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/grafana/tollgate.json"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    assert!(all.len() >= 20, "only {} queries found", all.len());
    let exported = exported();
    let mut used = BTreeSet::new();
    for e in &all {
        for n in names(e) {
            assert!(
                exported.contains(&n),
                "the dashboard queries {n} (in {e:?}), which nothing exports; exported: {exported:?}"
            );
            used.insert(n);
        }
    }
    assert!(used.contains("tollgate_build_info"));
}

#[test]
fn the_name_scanner_finds_names_and_the_check_would_fail() {
    assert_eq!(
        names("sum by (le) (rate(tollgate_hub_request_duration_seconds_bucket[5m]))"),
        ["tollgate_hub_request_duration_seconds_bucket"]
    );
    assert!(!exported().contains("tollgate_no_such_metric_total"));
}
