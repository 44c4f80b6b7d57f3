//! Zscaler NSS web logs as JSON lines: either the event object itself or wrapped as
//! `{"sourcetype": "zscalernss-web", "event": {...}}` (the NSS JSON feed template).
//! Keys used: time/datetime/epochtime, login/user, eurl/url/hostname, cip/clientip,
//! sip/serverip, reqsize/requestsize, respsize/responsesize, proto, clientport/serverport.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

use super::util::{LineFields, LineOutcome, parse_epoch_any, parse_ip, parse_rfc3339};

fn s<'a>(ev: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| match ev.get(*k) {
        Some(Value::String(v)) if !v.is_empty() && v != "None" && v != "NA" => Some(v.as_str()),
        _ => None,
    })
}

fn n(ev: &Value, keys: &[&str]) -> u64 {
    keys.iter()
        .find_map(|k| match ev.get(*k) {
            Some(Value::Number(v)) => v.as_u64(),
            Some(Value::String(v)) => v.trim().parse().ok(),
            _ => None,
        })
        .unwrap_or(0)
}

pub(crate) fn parse(line: &str, fallback: DateTime<Utc>) -> LineOutcome {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return LineOutcome::Bad("zscaler: not valid JSON");
    };
    let ev = v.get("event").filter(|e| e.is_object()).unwrap_or(&v);
    if !ev.is_object() {
        return LineOutcome::Bad("zscaler: not a JSON object");
    }
    let time = s(ev, &["epochtime"])
        .and_then(parse_epoch_any)
        .or_else(|| match ev.get("epochtime") {
            Some(Value::Number(x)) => x.as_i64().and_then(|t| Utc.timestamp_opt(t, 0).single()),
            _ => None,
        })
        .or_else(|| {
            s(ev, &["time", "datetime"]).and_then(|t| {
                NaiveDateTime::parse_from_str(t, "%a %b %e %H:%M:%S %Y")
                    .ok()
                    .map(|nd| Utc.from_utc_datetime(&nd))
                    .or_else(|| parse_rfc3339(t))
            })
        });
    let Some(src) = s(ev, &["cip", "clientip", "ClientIP", "src"]).and_then(parse_ip) else {
        return LineOutcome::Bad("zscaler: no client IP (cip)");
    };
    let host = s(ev, &["hostname", "host", "eurl", "url"]);
    let dport = match s(ev, &["proto", "protocol"]) {
        Some(p) if p.eq_ignore_ascii_case("HTTPS") || p.eq_ignore_ascii_case("SSL") => 443,
        Some(p) if p.eq_ignore_ascii_case("HTTP") => 80,
        _ => 0,
    };
    LineFields {
        time,
        src: Some(src),
        dst: s(ev, &["sip", "serverip", "ServerIP"]).and_then(parse_ip),
        dport,
        host,
        user: s(ev, &["login", "user", "username"]),
        bytes_up: n(ev, &["reqsize", "requestsize"]),
        bytes_down: n(ev, &["respsize", "responsesize"]),
        ..LineFields::default()
    }
    .into_record(fallback)
}

pub(crate) fn sniff(line: &str) -> bool {
    line.starts_with('{')
        && (line.contains("zscalernss")
            || (line.contains("\"cip\"")
                && (line.contains("\"eurl\"") || line.contains("\"url\""))))
}
