//! CEF and RFC 5424 output with hostile strings: user names, file names and policy names
//! that try to end the line, add CEF fields or headers, or close the structured data.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use tollgate_activity::format::{self, Format, Record};
use tollgate_activity::{Activity, ActivityType, Alert, AlertStatus, Entities, Severity, Source};

const EVIL_USER: &str = "mallory\n<13>1 2026-12-03T00:00:00Z fake tollgate - ALERT - CEF:0|Tollgate|Tollgate|0|ALERT|fake|10| suser=admin";
const EVIL_OBJECT: &str =
    "a=b|c\\d\r\nact=allowed cs4=\\= \u{2028}x\u{85}y\u{0}z\"]] [injected@1 k=\"v\"]";
const EVIL_POLICY: &str = "pol|icy\\ 7 | msg=spoofed";

fn evil_activity() -> Activity {
    let t = Utc.with_ymd_and_hms(2026, 12, 3, 8, 0, 0).unwrap();
    let mut a = Activity::new(42, t, "box|=x", ActivityType::Upload, Source::Proxy);
    a.user = Some(EVIL_USER.into());
    a.ip = Some([10, 0, 0, 9].into());
    a.object = Some(EVIL_OBJECT.into());
    a.bytes = Some(7);
    a.policy = Some(EVIL_POLICY.into());
    a
}

fn evil_alert() -> Alert {
    let a = evil_activity();
    Alert {
        id: 7,
        time: a.time,
        last_seen: a.time,
        severity: Severity::High,
        policy: EVIL_POLICY.into(),
        entities: Entities {
            user: a.user.clone(),
            ip: a.ip,
            app: Some(a.app.clone()),
            gateway: Some("gw 1\nfake".into()),
        },
        reason: "50 upload within 60 s".into(),
        activities: vec![a],
        status: AlertStatus::Open,
        comment: None,
        count: 1,
    }
}

/// Splits a CEF line into its 7 header fields and its extension, honouring `\|` and `\\`.
fn cef_parts(line: &str) -> (Vec<String>, String) {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if fields.len() == 7 {
            // The extension stays raw (its own escapes).
            cur.push(c);
            continue;
        }
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '|' => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    (fields, cur)
}

/// The extension's key/value pairs: a key is `word=` after a space with `=` unescaped.
fn cef_extension(ext: &str) -> Vec<(String, String)> {
    // Find unescaped '='.
    let b: Vec<char> = ext.chars().collect();
    let mut eqs = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '\\' {
            i += 2;
            continue;
        }
        if b[i] == '=' {
            eqs.push(i);
        }
        i += 1;
    }
    let mut out = Vec::new();
    let mut key_starts = Vec::new();
    for &e in &eqs {
        let mut s = e;
        while s > 0 && b[s - 1].is_ascii_alphanumeric() {
            s -= 1;
        }
        key_starts.push((s, e));
    }
    for (k, &(s, e)) in key_starts.iter().enumerate() {
        let end = key_starts
            .get(k + 1)
            .map_or(b.len(), |&(ns, _)| ns.saturating_sub(1));
        let key: String = b[s..e].iter().collect();
        let raw: String = b[e + 1..end.max(e + 1)].iter().collect();
        out.push((key, unescape_cef(&raw)));
    }
    out
}

fn unescape_cef(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn no_line_breaks(s: &str) {
    assert!(
        !s.contains('\n') && !s.contains('\r') && !s.contains('\u{2028}') && !s.contains('\u{85}'),
        "a line break got through: {s:?}"
    );
    assert!(
        !s.chars().any(|c| c.is_control()),
        "a control character: {s:?}"
    );
}

#[test]
fn cef_activity_keeps_its_fields_whatever_the_strings() {
    let line = format::cef(&Record::Activity(Box::new(evil_activity())));
    no_line_breaks(&line);
    let (header, ext) = cef_parts(&line);
    assert_eq!(header.len(), 7, "{line}");
    assert_eq!(header[0], "CEF:0");
    assert_eq!(header[4], "EVENT_CATEGORY_UPLOAD_FILE");
    assert_eq!(header[6], "0");
    let kv = cef_extension(&ext);
    let keys: Vec<&str> = kv.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "externalId",
            "rt",
            "start",
            "end",
            "msg",
            "suser",
            "destinationServiceName",
            "dvc",
            "requestClientApplication",
            "outcome",
            "cn1Label",
            "cn1",
            "cs1Label",
            "cs1",
            "cs2Label",
            "cs2",
            "cs3Label",
            "cs3",
            "cs4Label",
            "cs4"
        ],
        "{line}"
    );
    let m: BTreeMap<&str, &str> = kv.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(m["suser"], EVIL_USER, "the value round-trips exactly");
    assert_eq!(m["destinationServiceName"], "box|=x");
    assert_eq!(m["cs4"], EVIL_POLICY);
    assert_eq!(m["rt"], "1796284800000");
    // The object's CR/LF round-trip; the other separators became spaces.
    assert!(
        m["cs3"].starts_with("a=b|c\\d\r\nact=allowed cs4=\\= "),
        "{:?}",
        m["cs3"]
    );
    assert!(m["cs3"].contains(" x y z"), "{:?}", m["cs3"]);
}

#[test]
fn cef_alert_header_escapes_the_policy_name() {
    let line = format::cef(&Record::Alert(Box::new(evil_alert())));
    no_line_breaks(&line);
    let (header, ext) = cef_parts(&line);
    assert_eq!(header.len(), 7, "{line}");
    assert_eq!(header[4], "ALERT_ACTIVITY_POLICY");
    assert_eq!(header[5], EVIL_POLICY, "the name round-trips in the header");
    assert_eq!(header[6], "8");
    let kv = cef_extension(&ext);
    let m: BTreeMap<&str, &str> = kv.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(kv.iter().filter(|(k, _)| k == "suser").count(), 1, "{line}");
    assert_eq!(kv.iter().filter(|(k, _)| k == "msg").count(), 1, "{line}");
    assert_eq!(m["suser"], EVIL_USER);
    assert_eq!(m["src"], "10.0.0.9");
    assert_eq!(m["cs3"], "42");
    assert_eq!(m["cn1"], "1");
    assert!(
        m["msg"].starts_with("Activity policy 'pol|icy"),
        "{}",
        m["msg"]
    );
}

/// Parses an RFC 5424 message: header fields, the SD elements (id, params) and the MSG.
type SdElements = Vec<(String, Vec<(String, String)>)>;

fn parse_5424(s: &str) -> (Vec<String>, SdElements, String) {
    let mut parts = s.splitn(7, ' ');
    let header: Vec<String> = (0..6).map(|_| parts.next().unwrap().to_string()).collect();
    let rest = parts.next().unwrap();
    let b: Vec<char> = rest.chars().collect();
    let mut i = 0;
    let mut sds = Vec::new();
    if b[0] == '-' {
        i = 1;
    } else {
        while i < b.len() && b[i] == '[' {
            i += 1;
            let mut id = String::new();
            while b[i] != ' ' && b[i] != ']' {
                id.push(b[i]);
                i += 1;
            }
            let mut params = Vec::new();
            while b[i] == ' ' {
                i += 1;
                let mut name = String::new();
                while b[i] != '=' {
                    name.push(b[i]);
                    i += 1;
                }
                assert_eq!(b[i + 1], '"', "{rest}");
                i += 2;
                let mut v = String::new();
                loop {
                    match b[i] {
                        '\\' => {
                            v.push(b[i + 1]);
                            i += 2;
                        }
                        '"' => {
                            i += 1;
                            break;
                        }
                        c => {
                            assert_ne!(c, ']', "an unescaped ] inside a value: {rest}");
                            v.push(c);
                            i += 1;
                        }
                    }
                }
                params.push((name, v));
            }
            assert_eq!(b[i], ']', "{rest}");
            i += 1;
            sds.push((id, params));
        }
    }
    let msg: String = b[i..].iter().collect();
    (
        header,
        sds,
        msg.strip_prefix(' ').unwrap_or(&msg).to_string(),
    )
}

#[test]
fn rfc5424_structured_data_cannot_be_closed_or_extended() {
    let now = Utc.with_ymd_and_hms(2026, 12, 3, 8, 0, 1).unwrap();
    let msg = format::rfc5424(
        &Record::Activity(Box::new(evil_activity())),
        Format::Rfc5424,
        "gw 1\nfake",
        now,
    );
    no_line_breaks(&msg);
    let (header, sds, text) = parse_5424(&msg);
    assert_eq!(header[0], "<134>1", "local0.info");
    assert_eq!(header[1], "2026-12-03T08:00:01.000Z");
    assert_eq!(
        header[2], "gw1fake",
        "HOSTNAME is printable ASCII without spaces"
    );
    assert_eq!(header[3], "tollgate");
    assert_eq!(header[5], "ACTIVITY");
    assert_eq!(sds.len(), 1, "{msg}");
    assert_eq!(sds[0].0, "activity@32473");
    let p: BTreeMap<&str, &str> = sds[0]
        .1
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(p["user"], EVIL_USER.replace('\n', " "));
    assert!(
        p["object"].starts_with("a=b|c\\d  act=allowed"),
        "{}",
        p["object"]
    );
    assert!(
        p["object"].ends_with("\"]] [injected@1 k=\"v\"]"),
        "{}",
        p["object"]
    );
    assert_eq!(p["type"], "upload");
    assert!(text.starts_with("Upload box|=x by mallory <13>1"), "{text}");
}

#[test]
fn rfc5424_alert_with_cef_and_json_messages() {
    let now = Utc.with_ymd_and_hms(2026, 12, 3, 8, 0, 1).unwrap();
    let rec = Record::Alert(Box::new(evil_alert()));
    let msg = format::rfc5424(&rec, Format::Cef, "gw1", now);
    no_line_breaks(&msg);
    let (header, sds, text) = parse_5424(&msg);
    assert_eq!(header[0], "<131>1", "local0.err for a high alert");
    assert_eq!(header[5], "ALERT");
    assert!(sds.is_empty());
    assert!(text.starts_with("CEF:0|Tollgate|Tollgate|"), "{text}");
    let msg = format::rfc5424(&rec, Format::Json, "gw1", now);
    no_line_breaks(&msg);
    let (_, _, text) = parse_5424(&msg);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["alert"]["entities"]["user"], EVIL_USER);
    assert_eq!(v["alert"]["policy"], EVIL_POLICY);
    let msg = format::rfc5424(&rec, Format::Rfc5424, "gw1", now);
    let (_, sds, _) = parse_5424(&msg);
    assert_eq!(sds[0].0, "alert@32473");
    let p: BTreeMap<&str, &str> = sds[0]
        .1
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(p["policy"], EVIL_POLICY);
    assert_eq!(p["gateway"], "gw 1 fake");
}

#[test]
fn long_fields_are_cut_and_octet_counting_counts_bytes() {
    let mut a = evil_activity();
    a.object = Some("\\".repeat(100_000));
    a.user = Some("é".repeat(50_000));
    let rec = Record::Activity(Box::new(a));
    let line = format::cef(&rec);
    assert!(line.len() <= format::MAX_MESSAGE, "{}", line.len());
    let (header, ext) = cef_parts(&line);
    assert_eq!(header.len(), 7);
    let kv = cef_extension(&ext);
    assert!(
        kv.iter()
            .any(|(k, v)| k == "cs3" && v.chars().all(|c| c == '\\'))
    );
    for f in [Format::Cef, Format::Rfc5424, Format::Json] {
        let msg = format::rfc5424(&rec, f, "gw", Utc::now());
        assert!(msg.len() <= format::MAX_MESSAGE, "{f:?}: {}", msg.len());
        let framed = format::octet_counted(&msg);
        let sp = framed.iter().position(|&c| c == b' ').unwrap();
        let n: usize = std::str::from_utf8(&framed[..sp]).unwrap().parse().unwrap();
        assert_eq!(n, framed.len() - sp - 1);
    }
}
