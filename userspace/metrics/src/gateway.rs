//! The gateway's metrics, read from the JSON the daemon answers `tollgate status --json` with
//! (the same snapshot, taken by the daemon's core): a key missing from it reads as zero, a
//! section that is `null` (no hub, no session proxy) leaves its metrics out.

use serde_json::Value;

use crate::Snapshot;

fn n(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// How a block was made, the status key that counts it, and whether it is in `verdicts`.
const BLOCKS: &[(&str, &str)] = &[
    ("tcp_reset", "rst_sent"),
    ("icmp_unreachable", "icmp_sent"),
    ("http_reset", "http_blocked"),
    ("dns_nxdomain", "dns_refused"),
    ("session_refused", "session_refused"),
    ("unreadable_blocked", "unreadable_blocked"),
    ("quic_held", "quic_held"),
    ("userspace_flow", "flows_blocked_by_userspace"),
];

/// The DNS answers the daemon matched or refused to learn from, by outcome.
const DNS_ANSWERS: &[(&str, &str)] = &[
    ("matched", "dns_answers_matched"),
    ("unmatched", "dns_answers_unmatched"),
    ("wrong_question", "dns_answers_wrong_question"),
    ("unsolicited", "dns_answers_unsolicited_kernel"),
    ("protected", "dns_answers_protected"),
    ("rate_limited", "dns_learn_rate_limited"),
];

/// The text exposition of one status snapshot. `now` (unix seconds) gives the upload lag.
pub fn render(status: &Value, now: i64) -> String {
    let mut s = Snapshot::new();
    s.gauge(
        "enforcing",
        "1 when the gateway enforces, 0 in monitor mode",
        if status.get("mode").and_then(Value::as_str) == Some("enforce") {
            1.0
        } else {
            0.0
        },
    );
    s.gauge(
        "flows",
        "Flows in the live flow table",
        n(status, "flows") as f64,
    );
    s.gauge(
        "flows_named",
        "Live flows whose app name is known (SNI, Host or DNS)",
        n(status, "named_flows") as f64,
    );
    s.counter(
        "flows_dropped",
        "Flows the flow table could not keep (full)",
        n(status, "flows_dropped"),
    );
    s.counter("packets", "Packets the probes saw", n(status, "packets"));
    s.counter("bytes", "Bytes the probes saw", n(status, "bytes"));
    s.counter(
        "events",
        "Ring-buffer events the daemon handled",
        n(status, "events"),
    );
    s.counter(
        "kernel_events",
        "Events the probes wrote to the ring buffer",
        n(status, "kernel_events"),
    );
    s.counter(
        "ring_drops",
        "Events the probes could not write: the ring buffer was full",
        n(status, "ring_drops"),
    );
    s.counter(
        "kernel_parse_errors",
        "Packets the probes could not parse",
        n(status, "kernel_parse_errors"),
    );
    s.counter(
        "event_decode_errors",
        "Ring-buffer records the daemon could not read or decode",
        n(status, "event_decode_errors"),
    );
    s.counter_by(
        "kernel_map_full",
        "Insertions refused because a kernel map was full",
        "map",
        &[
            ("flow", n(status, "flow_map_full")),
            ("hello", n(status, "hello_map_full")),
        ],
    );
    s.counter(
        "pressure_warnings",
        "Warnings logged because the kernel lost work",
        n(status, "pressure_warnings"),
    );
    s.counter(
        "packets_dropped",
        "Packets dropped by a block verdict (enforce mode)",
        n(status, "drops"),
    );
    s.counter(
        "packets_would_drop",
        "Packets a block verdict would have dropped (monitor mode)",
        n(status, "would_drop"),
    );
    let verdicts = status.get("verdicts").cloned().unwrap_or(Value::Null);
    let mut blocks: Vec<(&str, u64)> = BLOCKS
        .iter()
        .map(|(reason, key)| (*reason, n(&verdicts, key)))
        .collect();
    // These two are top-level keys of the status.
    for (reason, key) in [
        ("dns_nxdomain", "dns_refused"),
        ("userspace_flow", "flows_blocked_by_userspace"),
    ] {
        if let Some(b) = blocks.iter_mut().find(|(r, _)| *r == reason) {
            b.1 = b.1.max(n(status, key));
        }
    }
    s.counter_by(
        "blocks",
        "Block verdicts carried out, by how",
        "reason",
        &blocks,
    );
    s.counter(
        "dns_refused",
        "DNS queries for blocked apps the probes answered with NXDOMAIN",
        n(status, "dns_refused"),
    );
    let answers: Vec<(&str, u64)> = DNS_ANSWERS
        .iter()
        .map(|(k, key)| (*k, n(status, key)))
        .collect();
    s.counter_by(
        "dns_answers",
        "DNS answers seen by the daemon, by what became of them",
        "outcome",
        &answers,
    );
    s.gauge(
        "dns_queries_pending",
        "DNS queries waiting for their answer",
        n(status, "dns_queries_pending") as f64,
    );
    s.gauge(
        "dns_learned_addresses",
        "Addresses learned from DNS answers for blocked or steered apps",
        n(status, "dns_learned") as f64,
    );
    s.counter(
        "control_clients_refused",
        "Control-socket clients refused because all slots were busy",
        n(status, "control_clients_refused"),
    );
    if let Some(e) = status.get("evasion").and_then(Value::as_object) {
        let kinds: Vec<(&str, u64)> = e
            .iter()
            .filter_map(|(k, v)| v.as_u64().map(|v| (k.as_str(), v)))
            .collect();
        s.counter_by(
            "evasion",
            "Unreadable and evasive traffic the probes met, by kind",
            "kind",
            &kinds,
        );
    }
    let session = status.get("session").cloned().unwrap_or(Value::Null);
    s.counter(
        "steered_flows",
        "Flows steered to the session proxy",
        n(&session, "steered"),
    );
    let steering: Vec<(&str, u64)> = session
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "steered")
        .filter_map(|(k, v)| v.as_u64().map(|v| (k.as_str(), v)))
        .collect();
    s.counter_by(
        "steering",
        "Steering decisions of the probes, by kind",
        "event",
        &steering,
    );
    if let Some(p) = status.get("proxy").filter(|p| p.is_object()) {
        let mut events = Vec::new();
        if let Some(h) = p.get("request_seconds").filter(|h| h.is_object()) {
            let buckets: Vec<(f64, u64)> = h["buckets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| {
                    let b = b.as_array()?;
                    // +Inf does not survive JSON (it becomes null).
                    let bound = b.first()?.as_f64().unwrap_or(f64::INFINITY);
                    Some((bound, b.get(1)?.as_u64()?))
                })
                .collect();
            s.histogram(
                "proxy_request_duration_seconds",
                "Session proxy requests, from the request's head to the response's head",
                crate::Buckets {
                    buckets,
                    sum: h["sum"].as_f64().unwrap_or(0.0),
                    count: h["count"].as_u64().unwrap_or(0),
                },
            );
        }
        for (k, v) in p.as_object().into_iter().flatten() {
            let Some(v) = v.as_u64() else { continue };
            if k.starts_with("buffered_bytes") {
                continue;
            }
            events.push((k.as_str(), v));
        }
        s.counter_by(
            "proxy_events",
            "Session proxy connections and requests, by outcome",
            "event",
            &events,
        );
        s.counter(
            "proxy_connections",
            "Connections the session proxy accepted",
            n(p, "accepted"),
        );
        s.counter(
            "proxy_requests_rejected",
            "Requests the session proxy's policies rejected",
            n(p, "rejected_requests"),
        );
        s.gauge(
            "proxy_buffered_bytes",
            "Bytes of bodies the session proxy holds for inspection",
            n(p, "buffered_bytes") as f64,
        );
        s.gauge(
            "proxy_buffered_bytes_budget",
            "The session proxy's inspection memory budget in bytes",
            n(p, "buffered_bytes_budget") as f64,
        );
    }
    if let Some(h) = status.get("hub").filter(|h| h.is_object()) {
        s.gauge(
            "hub_connected",
            "1 when the last exchange with the hub succeeded",
            if h.get("connected").and_then(Value::as_bool) == Some(true) {
                1.0
            } else {
                0.0
            },
        );
        s.gauge(
            "bundle_revision",
            "The hub bundle revision applied",
            n(h, "bundle_revision") as f64,
        );
        s.gauge(
            "spool_records",
            "Records in the upload spool",
            n(h, "spool_records") as f64,
        );
        s.gauge(
            "spool_bytes",
            "Bytes of the upload spool",
            n(h, "spool_bytes") as f64,
        );
        s.counter(
            "spool_dropped_records",
            "Records the spool dropped when it was full",
            n(h, "spool_dropped") + n(h, "records_dropped"),
        );
        s.counter(
            "uploaded_records",
            "Records the hub acknowledged",
            n(h, "uploaded_records"),
        );
        let last_upload = h.get("last_upload").and_then(Value::as_i64);
        if let Some(t) = last_upload {
            s.gauge(
                "last_upload_timestamp_seconds",
                "Unix time of the last acknowledged upload",
                t as f64,
            );
        }
        // Lag: how old the oldest unsent data may be; nothing waiting is no lag.
        let lag = if n(h, "spool_records") == 0 {
            0.0
        } else {
            last_upload.map_or(0.0, |t| (now - t).max(0) as f64)
        };
        s.gauge(
            "upload_lag_seconds",
            "Seconds since the last acknowledged upload while records wait (0 when none wait)",
            lag,
        );
        if let Some(t) = h.get("last_contact").and_then(Value::as_i64) {
            s.gauge(
                "hub_last_contact_timestamp_seconds",
                "Unix time of the hub's last answer",
                t as f64,
            );
        }
    }
    if let Some(a) = status.get("audit_dropped").and_then(Value::as_u64) {
        s.counter(
            "audit_dropped",
            "Audit records the proxy dropped (queue full)",
            a,
        );
    }
    s.encode()
}

/// A status with every section the daemon answers with (hub and session proxy on), for
/// the tests that check the dashboard and the docs against the exported names.
pub fn example_status() -> Value {
    serde_json::json!({
        "mode": "enforce", "flows": 3, "named_flows": 2, "events": 10, "kernel_events": 11,
        "ring_drops": 1, "packets": 100, "bytes": 5000, "drops": 4, "dns_refused": 2,
        "verdicts": {"rst_sent": 1, "icmp_sent": 0, "http_blocked": 1},
        "evasion": {"unreadable": "pass", "frag_tiny": 1},
        "session": {"steered": 5, "steer_no_proxy": 0, "daemon": {"x": 1}},
        "proxy": {"accepted": 5, "intercepted": 4, "buffered_bytes": 0, "buffered_bytes_budget": 10,
                  "request_seconds": {"buckets": [[0.005, 2], [0.01, 1], [null, 1]], "sum": 3.5, "count": 4}},
        "hub": {"connected": true, "bundle_revision": 3, "spool_records": 2, "last_upload": 100,
                "last_contact": 120, "uploaded_records": 7},
        "audit_dropped": 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_becomes_prometheus_text() {
        let text = render(&example_status(), 130);
        for line in [
            "tollgate_flows 3.0",
            "tollgate_events_total 10",
            "tollgate_ring_drops_total 1",
            "tollgate_packets_dropped_total 4",
            "tollgate_blocks_total{reason=\"dns_nxdomain\"} 2",
            "tollgate_blocks_total{reason=\"tcp_reset\"} 1",
            "tollgate_steered_flows_total 5",
            "tollgate_proxy_connections_total 5",
            "tollgate_proxy_request_duration_seconds_bucket{le=\"0.005\"} 2",
            "tollgate_proxy_request_duration_seconds_bucket{le=\"0.01\"} 3",
            "tollgate_proxy_request_duration_seconds_bucket{le=\"+Inf\"} 4",
            "tollgate_proxy_request_duration_seconds_count 4",
            "tollgate_proxy_request_duration_seconds_sum 3.5",
            "tollgate_upload_lag_seconds 30.0",
            "tollgate_enforcing 1.0",
            "tollgate_evasion_total{kind=\"frag_tiny\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // Strings in a section are not numbers to export.
        assert!(!text.contains("unreadable\""), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_gateway_without_hub_or_proxy_exports_no_such_metrics() {
        let text = render(
            &serde_json::json!({"mode": "monitor", "hub": null, "proxy": null}),
            0,
        );
        assert!(!text.contains("tollgate_spool_records"));
        assert!(!text.contains("tollgate_proxy_"));
        assert!(text.contains("tollgate_build_info{version="));
        assert!(text.contains("tollgate_enforcing 0.0"));
    }
}
