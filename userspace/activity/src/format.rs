//! Lines that other tools ingest: CEF in the layout of Defender for Cloud Apps' SIEM agent,
//! RFC 5424 syslog messages, and JSON.
//!
//! Every string in an activity may come from an attacker on the LAN (user names, file names,
//! URLs, hosts). Nothing here lets one of them end a line, start a field or a header, or
//! close a structured-data element: CEF header fields escape `\` and `|`, CEF extension values
//! escape `\`, `=`, and write CR/LF as `\r`/`\n`; structured-data values escape `"`, `\` and
//! `]`; every other control character (and the Unicode line and paragraph separators) becomes
//! a space; and no output ever holds a raw CR or LF. Messages are cut at [`MAX_MESSAGE`]
//! bytes on a character boundary.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::alert::{Alert, truncate};
use crate::record::Activity;

/// Longest message sent (a syslog receiver must accept 480 octets and should 2048; rsyslog's
/// default limit is 8 KiB).
pub const MAX_MESSAGE: usize = 8000;
/// Bytes of a single field value written (object names, user names); longer ones are cut.
pub const MAX_FIELD: usize = 512;

pub const VENDOR: &str = "Tollgate";
pub const PRODUCT: &str = "Tollgate";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The private enterprise number of our structured data (32473: the documentation PEN of
/// RFC 5612).
pub const SD_ID_ALERT: &str = "alert@32473";
pub const SD_ID_ACTIVITY: &str = "activity@32473";

/// How a sink writes its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Cef,
    Rfc5424,
    Json,
}

/// A record for the sinks.
#[derive(Debug, Clone)]
pub enum Record {
    Alert(Box<Alert>),
    Activity(Box<Activity>),
}

fn is_separator(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// A CEF header field: `\` and `|` escaped, control characters as spaces.
pub fn cef_header(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if out.len() >= MAX_FIELD {
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            c if is_separator(c) => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A CEF extension value: `\`, `=` escaped, CR/LF as `\r`/`\n`, other controls as spaces.
pub fn cef_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if out.len() >= MAX_FIELD {
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if is_separator(c) => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// An RFC 5424 PARAM-VALUE: `"`, `\`, `]` escaped, control characters as spaces.
pub fn sd_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if out.len() >= MAX_FIELD {
            break;
        }
        match c {
            '"' | '\\' | ']' => {
                out.push('\\');
                out.push(c);
            }
            c if is_separator(c) => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Free text on one line: control characters as spaces.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_FIELD * 2));
    for c in s.chars() {
        if out.len() >= MAX_FIELD * 2 {
            break;
        }
        out.push(if is_separator(c) { ' ' } else { c });
    }
    out
}

/// An RFC 5424 header token (HOSTNAME, APP-NAME): printable US-ASCII without spaces, at most
/// `max` characters, `-` when empty.
pub fn header_token(s: &str, max: usize) -> String {
    let t: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if t.is_empty() { "-".into() } else { t }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn kv(out: &mut String, key: &str, value: &str) {
    if !out.ends_with('|') {
        out.push(' ');
    }
    out.push_str(key);
    out.push('=');
    out.push_str(&cef_value(value));
}

/// One CEF line (no syslog header) for a record.
pub fn cef(rec: &Record) -> String {
    let mut out = String::with_capacity(512);
    match rec {
        Record::Alert(a) => {
            let _ = write!(
                out,
                "CEF:0|{VENDOR}|{PRODUCT}|{VERSION}|ALERT_ACTIVITY_POLICY|{}|{}|",
                cef_header(&a.policy),
                a.severity.cef()
            );
            let actor = a
                .entities
                .user
                .clone()
                .or_else(|| a.entities.ip.map(|i| i.to_string()))
                .unwrap_or_else(|| "-".into());
            let start = a.activities.first().map_or(ms(a.time), |x| ms(x.time));
            let end = a.activities.last().map_or(ms(a.last_seen), |x| ms(x.time));
            kv(&mut out, "externalId", &a.id.to_string());
            kv(&mut out, "rt", &ms(a.last_seen).to_string());
            kv(&mut out, "start", &start.to_string());
            kv(&mut out, "end", &end.to_string());
            kv(
                &mut out,
                "msg",
                &format!(
                    "Activity policy '{}' was triggered by '{}': {}",
                    a.policy, actor, a.reason
                ),
            );
            let mut apps: Vec<&str> = a.activities.iter().map(|x| x.app.as_str()).collect();
            apps.sort_unstable();
            apps.dedup();
            kv(&mut out, "suser", a.entities.user.as_deref().unwrap_or(""));
            // The alert's app, else the apps of its activities.
            let service = match &a.entities.app {
                Some(app) => app.clone(),
                None => apps.join(","),
            };
            kv(&mut out, "destinationServiceName", &service);
            match a.entities.ip {
                Some(std::net::IpAddr::V4(ip)) => kv(&mut out, "src", &ip.to_string()),
                Some(std::net::IpAddr::V6(ip)) => {
                    kv(&mut out, "c6a1Label", "Device IPv6 Address");
                    kv(&mut out, "c6a1", &ip.to_string());
                }
                None => {}
            }
            kv(
                &mut out,
                "dvchost",
                a.entities.gateway.as_deref().unwrap_or(""),
            );
            kv(&mut out, "cn1Label", "count");
            kv(&mut out, "cn1", &a.count.to_string());
            kv(&mut out, "cs1Label", "status");
            kv(&mut out, "cs1", a.status.as_str());
            kv(&mut out, "cs2Label", "uniqueServiceAppIds");
            kv(&mut out, "cs2", &apps.join(","));
            kv(&mut out, "cs3Label", "relatedAudits");
            let ids: Vec<String> = a.activities.iter().map(|x| x.id.to_string()).collect();
            kv(&mut out, "cs3", &ids.join(","));
            kv(&mut out, "cs4Label", "policyIDs");
            kv(&mut out, "cs4", &a.policy);
            kv(&mut out, "cs5Label", "severity");
            kv(&mut out, "cs5", a.severity.as_str());
        }
        Record::Activity(x) => {
            let _ = write!(
                out,
                "CEF:0|{VENDOR}|{PRODUCT}|{VERSION}|{}|{}|0|",
                x.activity.cef_class(),
                x.activity.label()
            );
            let t = ms(x.time).to_string();
            kv(&mut out, "externalId", &x.id.to_string());
            kv(&mut out, "rt", &t);
            kv(&mut out, "start", &t);
            kv(&mut out, "end", &t);
            kv(&mut out, "msg", x.activity.label());
            kv(&mut out, "suser", x.user.as_deref().unwrap_or(""));
            kv(&mut out, "destinationServiceName", &x.app);
            kv(
                &mut out,
                "dvc",
                &x.ip.map(|i| i.to_string()).unwrap_or_default(),
            );
            kv(&mut out, "requestClientApplication", "");
            kv(&mut out, "outcome", x.result.as_str());
            if let Some(b) = x.bytes {
                kv(&mut out, "cn1Label", "bytes");
                kv(&mut out, "cn1", &b.to_string());
            }
            kv(&mut out, "cs1Label", "source");
            kv(&mut out, "cs1", x.source.as_str());
            kv(&mut out, "cs2Label", "uniqueServiceAppIds");
            kv(&mut out, "cs2", &x.app);
            kv(&mut out, "cs3Label", "targetObjects");
            kv(&mut out, "cs3", x.object.as_deref().unwrap_or(""));
            kv(&mut out, "cs4Label", "policyIDs");
            kv(&mut out, "cs4", x.policy.as_deref().unwrap_or(""));
            if let Some(c) = &x.country {
                kv(&mut out, "cs5Label", "country");
                kv(&mut out, "cs5", c);
            }
        }
    }
    truncate(&mut out, MAX_MESSAGE);
    // A cut may split an escape (`\` at the end): drop a lone trailing backslash.
    if out.ends_with('\\') && !out.ends_with("\\\\") {
        out.pop();
    }
    out
}

/// One JSON object (one line) for a record: `{"alert": {...}}` or `{"activity": {...}}`.
pub fn json(rec: &Record) -> String {
    let v = match rec {
        Record::Alert(a) => serde_json::json!({ "alert": a }),
        Record::Activity(x) => serde_json::json!({ "activity": x }),
    };
    // serde_json escapes the C0 controls; NEL and the Unicode line and paragraph separators
    // are valid in JSON strings but break lines for some readers: escape them too (a
    // `\uXXXX` escape reads back as the same character).
    let s = v.to_string();
    if s.contains(['\u{85}', '\u{2028}', '\u{2029}']) {
        s.replace('\u{85}', "\\u0085")
            .replace('\u{2028}', "\\u2028")
            .replace('\u{2029}', "\\u2029")
    } else {
        s
    }
}

/// The RFC 5424 syslog severity of a record: high err(3), medium warning(4), low notice(5),
/// activities info(6).
fn syslog_severity(rec: &Record) -> u8 {
    match rec {
        Record::Alert(a) => match a.severity {
            crate::policy::Severity::High => 3,
            crate::policy::Severity::Medium => 4,
            crate::policy::Severity::Low => 5,
        },
        Record::Activity(_) => 6,
    }
}

/// Facility local0.
const FACILITY: u8 = 16;

/// A whole RFC 5424 message: header, structured data (for `Format::Rfc5424`) and a MSG in
/// `format` (CEF, a human line, or JSON). No BOM (MSG-ANY), so CEF parsers read the MSG as is.
pub fn rfc5424(rec: &Record, format: Format, hostname: &str, now: DateTime<Utc>) -> String {
    let pri = FACILITY * 8 + syslog_severity(rec);
    let msgid = match rec {
        Record::Alert(_) => "ALERT",
        Record::Activity(_) => "ACTIVITY",
    };
    let mut out = format!(
        "<{pri}>1 {} {} tollgate {} {msgid} ",
        now.to_rfc3339_opts(SecondsFormat::Millis, true),
        header_token(hostname, 255),
        std::process::id(),
    );
    match format {
        Format::Cef => {
            out.push_str("- ");
            out.push_str(&cef(rec));
        }
        Format::Json => {
            out.push_str("- ");
            out.push_str(&json(rec));
        }
        Format::Rfc5424 => {
            let mut sd = String::new();
            let mut param = |k: &str, v: &str| {
                let _ = write!(sd, " {k}=\"{}\"", sd_value(v));
            };
            let msg = match rec {
                Record::Alert(a) => {
                    param("id", &a.id.to_string());
                    param("policy", &a.policy);
                    param("severity", a.severity.as_str());
                    param("status", a.status.as_str());
                    param("count", &a.count.to_string());
                    if let Some(u) = &a.entities.user {
                        param("user", u);
                    }
                    if let Some(ip) = a.entities.ip {
                        param("ip", &ip.to_string());
                    }
                    if let Some(app) = &a.entities.app {
                        param("app", app);
                    }
                    if let Some(g) = &a.entities.gateway {
                        param("gateway", g);
                    }
                    format!("Activity policy '{}' alert: {}", a.policy, a.reason)
                }
                Record::Activity(x) => {
                    param("id", &x.id.to_string());
                    param("type", x.activity.as_str());
                    param("app", &x.app);
                    if let Some(u) = &x.user {
                        param("user", u);
                    }
                    if let Some(ip) = x.ip {
                        param("ip", &ip.to_string());
                    }
                    if let Some(o) = &x.object {
                        param("object", o);
                    }
                    if let Some(b) = x.bytes {
                        param("bytes", &b.to_string());
                    }
                    param("result", x.result.as_str());
                    param("source", x.source.as_str());
                    format!("{} {} by {}", x.activity.label(), x.app, x.actor())
                }
            };
            let id = match rec {
                Record::Alert(_) => SD_ID_ALERT,
                Record::Activity(_) => SD_ID_ACTIVITY,
            };
            let _ = write!(out, "[{id}{sd}] {}", one_line(&msg));
        }
    }
    truncate(&mut out, MAX_MESSAGE);
    out
}

/// RFC 6587 octet counting: `<len> <msg>`.
pub fn octet_counted(msg: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(msg.len() + 8);
    v.extend_from_slice(msg.len().to_string().as_bytes());
    v.push(b' ');
    v.extend_from_slice(msg.as_bytes());
    v
}
