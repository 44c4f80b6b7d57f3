//! Terminal tables for what the daemon answers (`tollgate flows`, `tollgate apps`). The
//! daemon answers JSON; these render the same JSON, so the table and `--json` never differ.

use std::fmt::Write;

use serde_json::Value;
use tollgate_discovery::report::human_bytes;

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn endpoint(ip: &Value, port: &Value) -> String {
    let ip = s(ip);
    if ip.contains(':') {
        format!("[{ip}]:{}", s(port))
    } else {
        format!("{ip}:{}", s(port))
    }
}

/// `tollgate flows`: one line a flow, newest activity first (the daemon sorts).
pub fn flows_table(data: &Value) -> String {
    let mut out = String::new();
    let rows = data.as_array().map(Vec::as_slice).unwrap_or(&[]);
    let _ = writeln!(
        out,
        "{:<5} {:<41} {:<41} {:<34} {:<6} {:>10} {:>10} {:>7} {:>7}",
        "PROTO", "SOURCE", "DESTINATION", "NAME", "BY", "UP", "DOWN", "PKT_UP", "PKT_DN"
    );
    for r in rows {
        let mut name = s(&r["name"]);
        if name.len() > 34 {
            name.truncate(33);
            name.push('~');
        }
        let _ = writeln!(
            out,
            "{:<5} {:<41} {:<41} {:<34} {:<6} {:>10} {:>10} {:>7} {:>7}",
            s(&r["proto"]),
            endpoint(&r["src"], &r["sport"]),
            endpoint(&r["dst"], &r["dport"]),
            name,
            s(&r["name_source"]),
            human_bytes(u(&r["bytes_up"])),
            human_bytes(u(&r["bytes_down"])),
            u(&r["packets_up"]),
            u(&r["packets_down"]),
        );
    }
    let named = rows.iter().filter(|r| !r["name"].is_null()).count();
    let _ = writeln!(out, "{} flow(s), {} named", rows.len(), named);
    out
}

/// `tollgate apps`: discovered apps, most traffic first, then the unknown domains.
pub fn apps_table(data: &Value) -> String {
    let mut out = String::new();
    let apps = data["apps"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let _ = writeln!(
        out,
        "{:<28} {:<26} {:>5} {:<13} {:>10} {:>10} {:>6} {:>5} {:>4}",
        "APP", "CATEGORY", "RISK", "TAG", "UP", "DOWN", "TX", "USERS", "IPS"
    );
    for a in apps {
        let risk = a["risk_score"]
            .as_f64()
            .map_or("-".to_string(), |r| format!("{r:.1}"));
        let _ = writeln!(
            out,
            "{:<28} {:<26} {:>5} {:<13} {:>10} {:>10} {:>6} {:>5} {:>4}",
            s(&a["id"]),
            s(&a["category"]),
            risk,
            s(&a["tag"]),
            human_bytes(u(&a["bytes_up"])),
            human_bytes(u(&a["bytes_down"])),
            u(&a["transactions"]),
            u(&a["users"]),
            u(&a["ips"]),
        );
    }
    let unknown = data["unknown_domains"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if !unknown.is_empty() {
        let _ = writeln!(out, "\nunknown (not in the catalog), top domains:");
        for d in unknown.iter().take(15) {
            let _ = writeln!(
                out,
                "  {:<40} {:>6} tx {:>10}",
                s(&d["domain"]),
                u(&d["transactions"]),
                human_bytes(u(&d["bytes_up"]) + u(&d["bytes_down"]))
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_from_json() {
        let flows = serde_json::json!([
            {"proto":"tcp","src":"10.0.0.2","sport":50000,"dst":"2001:db8::1","dport":443,
             "name":"www.dropbox.com","name_source":"sni","bytes_up":1000,"bytes_down":2048,
             "packets_up":5,"packets_down":4},
            {"proto":"udp","src":"10.0.0.2","sport":5353,"dst":"10.0.0.1","dport":53,
             "name":null,"name_source":null,"bytes_up":1,"bytes_down":0,"packets_up":1,"packets_down":0}
        ]);
        let t = flows_table(&flows);
        assert!(t.contains("[2001:db8::1]:443"), "{t}");
        assert!(t.contains("2.0 KiB"), "{t}");
        assert!(t.contains("2 flow(s), 1 named"), "{t}");
        let apps = serde_json::json!({"apps":[{"id":"dropbox","category":"Cloud storage",
            "risk_score":7.25,"tag":"unsanctioned","bytes_up":1,"bytes_down":2,"transactions":3,
            "users":1,"ips":1}], "unknown_domains":[{"domain":"example.org","transactions":2}]});
        let t = apps_table(&apps);
        assert!(
            t.contains("dropbox") && t.contains("7.2") && t.contains("unsanctioned"),
            "{t}"
        );
        assert!(t.contains("example.org"), "{t}");
    }
}
