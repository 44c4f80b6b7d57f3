//! ArcSight CEF and IBM QRadar LEEF, with or without a syslog header.
//!
//! CEF: `CEF:0|vendor|product|version|id|name|severity|k=v k=v ...` where values run to the
//! next ` key=` and `\=`, `\|`, `\\` are escapes. Keys used: src, dst, spt, dpt, proto,
//! suser/duser, dhost/request/requestClientApplication host, out (bytes up), in (bytes
//! down), rt/start/end.
//!
//! LEEF: `LEEF:1.0|vendor|product|version|eventid|k=v<TAB>k=v` (1.0, tab by default; some
//! vendors use '|') or `LEEF:2.0|vendor|product|version|eventid|DELIM|...`. Keys used: src,
//! dst, srcPort, dstPort, proto, usrName/suser, srcBytes/dstBytes, url/dhost/domain,
//! devTime.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

use super::util::{
    LineFields, LineOutcome, parse_epoch_any, parse_ip, parse_proto, parse_rfc3339, parse_u16,
    parse_u64, syslog_time,
};

pub(crate) fn cef_sniff(line: &str) -> bool {
    line.contains("CEF:") || headerless_cef(line).is_some()
}

/// UniFi sometimes drops the "CEF:" marker: `0|Ubiquiti|...|sev|ext`.
fn headerless_cef(line: &str) -> Option<&str> {
    let b = line.as_bytes();
    if b.first().is_some_and(u8::is_ascii_digit)
        && b.get(1) == Some(&b'|')
        && memchr::memchr_iter(b'|', b).count() >= 7
    {
        Some(line)
    } else {
        None
    }
}

/// Split the first `n` unescaped '|' fields; returns them and the rest.
fn split_header(s: &str, n: usize) -> Option<(Vec<&str>, &str)> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    let mut i = 0;
    while out.len() < n {
        match b.get(i) {
            None => return None,
            Some(b'\\') => i += 2,
            Some(b'|') => {
                out.push(s.get(start..i)?);
                i += 1;
                start = i;
            }
            Some(_) => i += 1,
        }
    }
    Some((out, s.get(start.min(s.len())..)?))
}

/// CEF extension: `key=value` where a value runs until the next ` key=`.
fn cef_ext(ext: &str) -> Vec<(&str, &str)> {
    let b = ext.as_bytes();
    // Positions of unescaped '=' preceded by a key token.
    let mut keys: Vec<(usize, usize)> = Vec::new(); // (key_start, eq_pos)
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'\\' {
            i += 2;
            continue;
        }
        if c == b'=' {
            let mut k = i;
            while k > 0
                && b.get(k - 1).is_some_and(|x| {
                    x.is_ascii_alphanumeric()
                        || matches!(x, b'_' | b'.' | b'[' | b']' | b',' | b'-')
                })
            {
                k -= 1;
            }
            if k < i && (k == 0 || b.get(k - 1).is_some_and(|x| x.is_ascii_whitespace())) {
                keys.push((k, i));
            }
        }
        i += 1;
    }
    let mut out = Vec::with_capacity(keys.len());
    for (j, &(ks, eq)) in keys.iter().enumerate() {
        let vend = keys.get(j + 1).map_or(ext.len(), |n| n.0);
        let (Some(k), Some(v)) = (ext.get(ks..eq), ext.get(eq + 1..vend)) else {
            continue;
        };
        out.push((k, v.trim()));
    }
    out
}

/// CEF `rt`/`start`/`end`: epoch millis or "MMM dd yyyy HH:mm:ss" or RFC 3339.
fn cef_time(s: &str) -> Option<DateTime<Utc>> {
    parse_epoch_any(s).or_else(|| parse_rfc3339(s)).or_else(|| {
        let s = s.trim().trim_end_matches(" GMT").trim_end_matches(" UTC");
        ["%b %d %Y %H:%M:%S%.f", "%b %d %Y %H:%M:%S"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
            .map(|nd| Utc.from_utc_datetime(&nd))
    })
}

pub(crate) fn cef(line: &str, fallback: DateTime<Utc>) -> LineOutcome {
    let body = match line.find("CEF:") {
        Some(i) => line.get(i + 4..).unwrap_or("").trim_start(),
        None => match headerless_cef(line) {
            Some(b) => b,
            None => return LineOutcome::Bad("cef: no CEF: marker"),
        },
    };
    let Some((hdr, ext)) = split_header(body, 7) else {
        return LineOutcome::Bad("cef: fewer than 7 header fields");
    };
    if !hdr
        .first()
        .is_some_and(|v| v.trim().bytes().all(|b| b.is_ascii_digit()) && !v.trim().is_empty())
    {
        return LineOutcome::Bad("cef: bad version");
    }
    let (syslog_t, _) = syslog_time(line, fallback);
    let mut lf = LineFields {
        time: syslog_t,
        ..LineFields::default()
    };
    let mut rt = None;
    for (k, v) in cef_ext(ext) {
        match k {
            "src" | "sourceAddress" => lf.src = parse_ip(v),
            "dst" | "destinationAddress" => lf.dst = parse_ip(v),
            "spt" | "sourcePort" => lf.sport = parse_u16(v),
            "dpt" | "destinationPort" => lf.dport = parse_u16(v),
            "proto" | "transportProtocol" => lf.proto = parse_proto(v),
            "suser" | "sourceUserName" => lf.user = Some(v),
            "duser" if lf.user.is_none() => lf.user = Some(v),
            "dhost" | "destinationHostName" => lf.host = Some(v),
            "request" | "requestUrl" if lf.host.is_none() => lf.host = Some(v),
            "out" | "bytesOut" => lf.bytes_up = parse_u64(v),
            "in" | "bytesIn" => lf.bytes_down = parse_u64(v),
            "rt" | "end" | "start" | "receiptTime" if rt.is_none() => rt = cef_time(v),
            _ => {}
        }
    }
    if rt.is_some() {
        lf.time = rt;
    }
    lf.into_record(fallback)
}

pub(crate) fn leef_sniff(line: &str) -> bool {
    line.contains("LEEF:")
}

pub(crate) fn leef(line: &str, fallback: DateTime<Utc>) -> LineOutcome {
    let Some(i) = line.find("LEEF:") else {
        return LineOutcome::Bad("leef: no LEEF: marker");
    };
    let body = line.get(i + 5..).unwrap_or("");
    let v2 = body.starts_with('2');
    let Some((hdr, mut ext)) = split_header(body, 5) else {
        return LineOutcome::Bad("leef: fewer than 5 header fields");
    };
    if !hdr
        .first()
        .is_some_and(|v| v.starts_with('1') || v.starts_with('2'))
    {
        return LineOutcome::Bad("leef: bad version");
    }
    let mut delim = '\t';
    if v2 {
        // LEEF 2.0: the next field is the delimiter ("^", "x7C", "0x09", or empty = tab).
        let (d, rest) = ext.split_once('|').unwrap_or(("", ext));
        let hex = d.trim_start_matches("0x").trim_start_matches('x');
        delim = if d.chars().count() == 1 {
            d.chars().next().unwrap_or('\t')
        } else if !hex.is_empty() {
            u32::from_str_radix(hex, 16)
                .ok()
                .and_then(char::from_u32)
                .unwrap_or('\t')
        } else {
            '\t'
        };
        ext = rest;
    } else if !ext.contains('\t') && ext.contains('|') {
        delim = '|';
    }
    let (syslog_t, _) = syslog_time(line, fallback);
    let mut lf = LineFields {
        time: syslog_t,
        ..LineFields::default()
    };
    let mut dev_time = None;
    let mut dev_fmt = None;
    for pair in ext.split(delim) {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "src" => lf.src = parse_ip(v),
            "dst" => lf.dst = parse_ip(v),
            "srcPort" => lf.sport = parse_u16(v),
            "dstPort" => lf.dport = parse_u16(v),
            "proto" => lf.proto = parse_proto(v),
            "usrName" | "suser" | "SourceUser" if lf.user.is_none() && !v.is_empty() => {
                lf.user = Some(v)
            }
            "srcBytes" => lf.bytes_up = parse_u64(v),
            "dstBytes" => lf.bytes_down = parse_u64(v),
            "url" | "URL" | "dhost" | "domain" | "hostname" if lf.host.is_none() => {
                lf.host = Some(v)
            }
            "devTime" => dev_time = Some(v),
            "devTimeFormat" => dev_fmt = Some(v),
            _ => {}
        }
    }
    if let Some(t) = dev_time {
        let parsed = parse_epoch_any(t).or_else(|| cef_time(t)).or_else(|| {
            dev_fmt.and_then(|f| {
                let f = java_fmt(f);
                NaiveDateTime::parse_from_str(t, &f)
                    .ok()
                    .map(|nd| Utc.from_utc_datetime(&nd))
            })
        });
        if parsed.is_some() {
            lf.time = parsed;
        }
    }
    lf.into_record(fallback)
}

/// The common Java date pattern letters used in LEEF devTimeFormat, as chrono's.
fn java_fmt(f: &str) -> String {
    f.replace("yyyy", "%Y")
        .replace("MMM", "%b")
        .replace("MM", "%m")
        .replace("dd", "%d")
        .replace("HH", "%H")
        .replace("mm", "%M")
        .replace("ss", "%S")
        .replace(".SSS", "%.3f")
        .replace(" z", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cef_values_with_spaces() {
        let ext = cef_ext("msg=hello world src=10.0.0.1 request=https://x.example/a b=1");
        assert_eq!(
            ext,
            vec![
                ("msg", "hello world"),
                ("src", "10.0.0.1"),
                ("request", "https://x.example/a"),
                ("b", "1")
            ]
        );
        let LineOutcome::Record(r) = cef(
            "CEF:0|Elastic|Vaporware|1.0.0-alpha|18|Web request|low|eventId=3457 requestMethod=POST proto=TCP src=89.160.20.156 spt=33876 dst=192.168.10.1 dpt=443 request=https://www.example.com/cart",
            Utc::now(),
        ) else {
            panic!("no record")
        };
        assert_eq!(r.name.as_deref(), Some("www.example.com"));
        assert_eq!(r.dport, 443);
        assert!(matches!(
            cef(
                "CEF:0|security|threatmanager|1.0|100|double backslash",
                Utc::now()
            ),
            LineOutcome::Bad(_)
        ));
    }

    #[test]
    fn leef_tab_and_pipe() {
        let LineOutcome::Record(r) = leef(
            "<14>Sep 17 13:45:35 fw LEEF:1.0|Palo Alto Networks|PAN-OS|11.1|allow|cat=TRAFFIC|devTime=Sep 17 2025 11:45:34 GMT|src=172.19.50.39|dst=172.19.5.50|usrName=|srcPort=62126|dstPort=443|proto=tcp|dstBytes=70|srcBytes=390",
            Utc::now(),
        ) else {
            panic!("no record")
        };
        assert_eq!((r.bytes_up, r.bytes_down, r.dport), (390, 70, 443));
        assert_eq!(r.first_seen.to_rfc3339(), "2025-09-17T11:45:34+00:00");
        assert_eq!(r.user, None);
    }
}
