//! Terminal tables for what the daemon answers (`tollgate flows`, `tollgate apps`). The
//! daemon answers JSON; these render the same JSON, so the table and `--json` never differ.
//!
//! Names in these tables come from the network (an SNI, a Host header, a DNS name): every
//! cell goes through [`cell`], which escapes control characters (a name must not be able to
//! move the admin's cursor, recolour the terminal or rewrite the title) and cuts long text
//! on a character boundary.

use std::fmt::Write;

use serde_json::Value;
use tollgate_discovery::report::human_bytes;

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => escape(s),
        other => other.to_string(),
    }
}

/// Characters a terminal acts on rather than prints: C0 and C1 controls, DEL, and the
/// bidirectional overrides and isolates that reorder what follows them on the line.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every character a terminal would act on written as an escape (`\x1b`,
/// `\u{202e}`). The daemon already stores a name that is not a plain host name in this
/// escaped form; this catches whatever else reaches a table.
pub fn escape(text: &str) -> String {
    if !text.chars().any(is_unsafe) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if is_unsafe(c) && u32::from(c) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// An escaped cell at most `width` characters wide: longer text is cut on a character
/// boundary and ends with `~`.
pub fn cell(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('~');
    out
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
        let _ = writeln!(
            out,
            "{:<5} {:<41} {:<41} {:<34} {:<6} {:>10} {:>10} {:>7} {:>7}",
            cell(&s(&r["proto"]), 5),
            cell(&endpoint(&r["src"], &r["sport"]), 41),
            cell(&endpoint(&r["dst"], &r["dport"]), 41),
            cell(&s(&r["name"]), 34),
            cell(&s(&r["name_source"]), 6),
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
        "{:<28} {:<26} {:>5} {:>5} {:<13} {:>10} {:>10} {:>6} {:>5} {:>4}",
        "APP", "CATEGORY", "RISK", "CONF", "TAG", "UP", "DOWN", "TX", "USERS", "IPS"
    );
    for a in apps {
        let risk = a["risk_score"]
            .as_f64()
            .map_or("-".to_string(), |r| format!("{r:.1}"));
        let conf = a["confidence"]
            .as_f64()
            .map_or("-".to_string(), |c| format!("{:.0}%", c * 100.0));
        let _ = writeln!(
            out,
            "{:<28} {:<26} {:>5} {:>5} {:<13} {:>10} {:>10} {:>6} {:>5} {:>4}",
            cell(&s(&a["id"]), 28),
            cell(&s(&a["category"]), 26),
            risk,
            conf,
            cell(&s(&a["tag"]), 13),
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
                cell(&s(&d["domain"]), 40),
                u(&d["transactions"]),
                human_bytes(u(&d["bytes_up"]) + u(&d["bytes_down"]))
            );
        }
    }
    out
}

/// `tollgate activity` as a table (every string escaped).
pub fn activity_table(rows: &Value) -> String {
    let mut out = format!(
        "{:<20} {:<13} {:<24} {:<15} {:<12} {:<8} {}\n",
        "TIME", "TYPE", "USER", "IP", "APP", "RESULT", "OBJECT"
    );
    for a in rows.as_array().map(Vec::as_slice).unwrap_or_default() {
        let time = s(&a["time"]);
        let _ = writeln!(
            out,
            "{:<20} {:<13} {:<24} {:<15} {:<12} {:<8} {}",
            cell(time.get(..19).unwrap_or(&time), 20),
            cell(&s(&a["activity"]), 13),
            cell(&s(&a["user"]), 24),
            cell(&s(&a["ip"]), 15),
            cell(&s(&a["app"]), 12),
            cell(&s(&a["result"]), 8),
            cell(&s(&a["object"]), 80),
        );
    }
    out
}

/// `tollgate alerts` as a table.
pub fn alerts_table(rows: &Value) -> String {
    let mut out = format!(
        "{:>6} {:<20} {:<9} {:<9} {:>6} {:<24} {:<20} {}\n",
        "ID", "TIME", "SEVERITY", "STATUS", "COUNT", "POLICY", "USER", "APP"
    );
    for a in rows.as_array().map(Vec::as_slice).unwrap_or_default() {
        let time = s(&a["time"]);
        let _ = writeln!(
            out,
            "{:>6} {:<20} {:<9} {:<9} {:>6} {:<24} {:<20} {}",
            s(&a["id"]),
            cell(time.get(..19).unwrap_or(&time), 20),
            s(&a["severity"]),
            s(&a["status"]),
            s(&a["count"]),
            cell(&s(&a["policy"]), 24),
            cell(&s(&a["entities"]["user"]), 20),
            cell(&s(&a["entities"]["app"]), 20),
        );
    }
    out
}

/// One alert, field by field, and the activities that prove it.
pub fn alert_detail(a: &Value) -> String {
    let mut out = String::new();
    for (k, v) in [
        ("id", &a["id"]),
        ("time", &a["time"]),
        ("last seen", &a["last_seen"]),
        ("severity", &a["severity"]),
        ("status", &a["status"]),
        ("policy", &a["policy"]),
        ("reason", &a["reason"]),
        ("count", &a["count"]),
        ("user", &a["entities"]["user"]),
        ("ip", &a["entities"]["ip"]),
        ("app", &a["entities"]["app"]),
        ("gateway", &a["entities"]["gateway"]),
        ("comment", &a["comment"]),
    ] {
        let _ = writeln!(out, "{k:<10} {}", s(v));
    }
    out.push_str("activities:\n");
    out.push_str(&activity_table(&a["activities"]));
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

    #[test]
    fn multibyte_name_is_cut_on_a_char_boundary() {
        // 32 ASCII bytes then a 2-byte character across byte 33: `String::truncate(33)`
        // panicked here.
        let name = format!("{}é{}", "a".repeat(32), "b".repeat(10));
        let flows = serde_json::json!([{"proto":"tcp","src":"10.0.0.2","sport":1,
            "dst":"10.0.0.1","dport":443,"name":name,"name_source":"sni"}]);
        let t = flows_table(&flows);
        assert!(t.contains(&format!("{}é~", "a".repeat(32))), "{t}");
        let all_multibyte = "ü".repeat(60);
        let t = flows_table(&serde_json::json!([{"name": all_multibyte}]));
        assert!(t.contains(&format!("{}~", "ü".repeat(33))), "{t}");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let evil = "x\u{1b}]0;owned\u{7}\u{1b}[2J\r\u{9b}31m\u{202e}moc.evil";
        let flows = serde_json::json!([{"proto":"tcp\u{1b}[1m","src":"10.0.0.2","sport":1,
            "dst":"10.0.0.1","dport":443,"name":evil,"name_source":"sni"}]);
        let apps = serde_json::json!({"apps":[{"id":"a\u{1b}b","category":"c\u{7}",
            "tag":"t\u{8}"}], "unknown_domains":[{"domain":evil}]});
        for t in [flows_table(&flows), apps_table(&apps)] {
            assert!(
                !t.chars().any(|c| is_unsafe(c) && c != '\n'),
                "raw control character in {t:?}"
            );
            assert!(t.contains("x\\x1b]0;owned\\x07"), "{t}");
        }
        assert_eq!(escape("\u{202e}a\u{9b}"), "\\u{202e}a\\x9b");
        assert_eq!(escape("www.example.com"), "www.example.com");
    }
}
