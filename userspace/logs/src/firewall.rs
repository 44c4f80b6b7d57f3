//! Firewall logs: Palo Alto CSV, FortiGate, Sophos XG, WatchGuard, pfSense filterlog,
//! Cisco ASA, Check Point Log Exporter and Juniper SRX structured syslog.
//!
//! Which lines are transactions: session-end style records (they carry the bytes), deny
//! records and URL records. Session-start records (PAN `start`, SRX `SESSION_CREATE`, ASA
//! `Built`) and system events are well-formed lines of the format but are not counted as
//! transactions, so one connection is one transaction.

use std::borrow::Cow;
use std::net::IpAddr;

use chrono::{DateTime, Utc};

use super::util::{
    KvIter, LineFields, LineOutcome, field, parse_date, parse_date_time, parse_epoch_any, parse_ip,
    parse_proto, parse_u16, parse_u64, split_csv, syslog_time, ymd_hms,
};
use tollgate_discovery::record::L4Proto;

// ---------------------------------------------------------------- Palo Alto CSV

pub(crate) fn pan_sniff(line: &str) -> bool {
    let commas = memchr::memchr_iter(b',', line.as_bytes()).count();
    commas >= 20
        && [
            ",TRAFFIC,",
            ",THREAT,",
            ",SYSTEM,",
            ",CONFIG,",
            ",URL,",
            ",HIPMATCH,",
            ",GLOBALPROTECT,",
            ",USERID,",
        ]
        .iter()
        .any(|t| line.contains(t))
}

pub(crate) fn pan(line: &str, fallback: DateTime<Utc>) -> LineOutcome {
    // The CSV starts at "<digit>,YYYY/MM/DD" after an optional syslog header.
    let start = line
        .match_indices(',')
        .find(|(i, _)| {
            line.get(i + 1..i + 5)
                .is_some_and(|y| y.bytes().all(|b| b.is_ascii_digit()))
                && line.get(i + 5..i + 6) == Some("/")
        })
        .map(|(i, _)| {
            line.get(..i)
                .and_then(|p| p.rfind(' '))
                .map_or(0, |s| s + 1)
        });
    let Some(start) = start else {
        return LineOutcome::Bad("palo alto: no CSV payload");
    };
    let mut f: Vec<Cow<str>> = Vec::with_capacity(64);
    split_csv(line.get(start..).unwrap_or(""), b',', &mut f);
    let kind = field(&f, 3);
    let time = parse_date_time(field(&f, 6)).or_else(|| parse_date_time(field(&f, 1)));
    if time.is_none() {
        return LineOutcome::Bad("palo alto: bad time");
    }
    match kind {
        "TRAFFIC" | "THREAT" | "URL" => {}
        "" => return LineOutcome::Bad("palo alto: no log type"),
        _ => return LineOutcome::Skip,
    }
    if f.len() < 34 {
        return LineOutcome::Bad("palo alto: too few fields");
    }
    let Some(src) = parse_ip(field(&f, 7)) else {
        return LineOutcome::Bad("palo alto: bad source address");
    };
    let subtype = field(&f, 4);
    let mut lf = LineFields {
        time,
        src: Some(src),
        dst: parse_ip(field(&f, 8)),
        sport: parse_u16(field(&f, 24)),
        dport: parse_u16(field(&f, 25)),
        proto: parse_proto(field(&f, 29)),
        user: Some(field(&f, 12)),
        ..LineFields::default()
    };
    if kind == "TRAFFIC" {
        if subtype == "start" {
            return LineOutcome::Skip;
        }
        lf.bytes_up = parse_u64(field(&f, 32));
        lf.bytes_down = parse_u64(field(&f, 33));
    } else if subtype == "url" || kind == "URL" {
        lf.host = Some(field(&f, 31));
    } else {
        // Other threat subtypes (virus, spyware, ...) are not transactions of their own.
        return LineOutcome::Skip;
    }
    lf.into_record(fallback)
}

// ---------------------------------------------------------------- key=value firewalls

/// Collect the key=value pairs we care about in one pass.
fn kv_lookup<'a>(s: &'a str, keys: &[&str]) -> Vec<Option<&'a str>> {
    let mut out = vec![None; keys.len()];
    for (k, v) in KvIter::new(s) {
        if let Some(i) = keys.iter().position(|x| *x == k)
            && let Some(slot) = out.get_mut(i)
            && slot.is_none()
        {
            *slot = Some(v);
        }
    }
    out
}

fn at<'a>(v: &[Option<&'a str>], i: usize) -> Option<&'a str> {
    v.get(i).copied().flatten().filter(|s| !s.is_empty())
}

pub(crate) fn fortigate_sniff(line: &str) -> bool {
    line.contains("devid=") && line.contains("logid=")
}

pub(crate) fn fortigate(line: &str, fallback: DateTime<Utc>) -> LineOutcome {
    const K: &[&str] = &[
        "date",
        "time",
        "eventtime",
        "type",
        "srcip",
        "dstip",
        "srcport",
        "dstport",
        "proto",
        "sentbyte",
        "rcvdbyte",
        "user",
        "unauthuser",
        "hostname",
        "url",
        "subtype",
        "srcmac",
        "tz",
    ];
    let (_, body) = syslog_time(line, fallback);
    let v = kv_lookup(body, K);
    let Some(kind) = at(&v, 3) else {
        return LineOutcome::Bad("fortigate: no type=");
    };
    let time = match (at(&v, 0).and_then(parse_date), at(&v, 1)) {
        (Some((y, m, d)), Some(t)) => ymd_hms(y, m, d, t).map(|t| apply_tz(t, at(&v, 17))),
        _ => at(&v, 2).and_then(parse_epoch_any),
    };
    if kind == "event" {
        return LineOutcome::Skip;
    }
    let Some(src) = at(&v, 4).and_then(parse_ip) else {
        return LineOutcome::Skip;
    };
    let host = at(&v, 13).or(at(&v, 14));
    // A UTM record without a host repeats the traffic record of the same session.
    if kind == "utm" && host.is_none() {
        return LineOutcome::Skip;
    }
    let (up, down) = if kind == "traffic" {
        (
            at(&v, 9).map_or(0, parse_u64),
            at(&v, 10).map_or(0, parse_u64),
        )
    } else {
        (0, 0)
    };
    LineFields {
        time,
        src: Some(src),
        dst: at(&v, 5).and_then(parse_ip),
        sport: at(&v, 6).map_or(0, parse_u16),
        dport: at(&v, 7).map_or(0, parse_u16),
        proto: at(&v, 8).and_then(parse_proto),
        host,
        user: at(&v, 11).or(at(&v, 12)),
        bytes_up: up,
        bytes_down: down,
    }
    .into_record(fallback)
}

/// FortiGate `tz="+0100"`: local time minus the offset is UTC.
fn apply_tz(t: DateTime<Utc>, tz: Option<&str>) -> DateTime<Utc> {
    let Some(tz) = tz else { return t };
    let tz = tz.trim_matches('"');
    let (sign, digits) = match tz.as_bytes().first() {
        Some(b'+') => (1i64, tz.get(1..).unwrap_or("")),
        Some(b'-') => (-1i64, tz.get(1..).unwrap_or("")),
        _ => return t,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return t;
    }
    let h: i64 = digits.get(..2).and_then(|x| x.parse().ok()).unwrap_or(0);
    let m: i64 = digits.get(2..).and_then(|x| x.parse().ok()).unwrap_or(0);
    t - chrono::Duration::minutes(sign * (h * 60 + m))
}

pub(crate) fn sophos_sniff(line: &str) -> bool {
    line.contains("log_id=") && line.contains("log_type=")
}

/// Sophos XG / SFOS. `timezone=` is an abbreviation ("IST") that cannot be resolved
/// reliably, so date/time are taken as UTC.
pub(crate) fn sophos(line: &str, fallback: DateTime<Utc>) -> LineOutcome {
    const K: &[&str] = &[
        "date",
        "time",
        "log_type",
        "src_ip",
        "dst_ip",
        "src_port",
        "dst_port",
        "protocol",
        "sent_bytes",
        "recv_bytes",
        "user_name",
        "domain",
        "url",
        "log_id",
        "bytes_sent",
        "bytes_received",
    ];
    let (_, body) = syslog_time(line, fallback);
    let v = kv_lookup(body, K);
    if at(&v, 13).is_none() {
        return LineOutcome::Bad("sophos: no log_id=");
    }
    let time = match (at(&v, 0).and_then(parse_date), at(&v, 1)) {
        (Some((y, m, d)), Some(t)) => ymd_hms(y, m, d, t),
        _ => None,
    };
    let Some(src) = at(&v, 3).and_then(parse_ip) else {
        return LineOutcome::Skip;
    };
    LineFields {
        time,
        src: Some(src),
        dst: at(&v, 4).and_then(parse_ip),
        sport: at(&v, 5).map_or(0, parse_u16),
        dport: at(&v, 6).map_or(0, parse_u16),
        proto: at(&v, 7).and_then(parse_proto),
        host: at(&v, 11).or(at(&v, 12)),
        user: at(&v, 10),
        bytes_up: at(&v, 8).or(at(&v, 14)).map_or(0, parse_u64),
        bytes_down: at(&v, 9).or(at(&v, 15)).map_or(0, parse_u64),
    }
    .into_record(fallback)
}

pub(crate) fn watchguard_sniff(line: &str) -> bool {
    line.contains("msg_id=\"")
}

/// WatchGuard Fireware: `msg_id="3000-0151" Allow 1-Trusted 0-External [len] tcp [hl ttl]
/// SRC DST SPORT DPORT ... key="value" ...`.
pub(crate) fn watchguard(line: &str, fallback: DateTime<Utc>) -> LineOutcome {
    let Some(i) = line.find("msg_id=\"") else {
        return LineOutcome::Bad("watchguard: no msg_id");
    };
    let (mut time, _) = syslog_time(line, fallback);
    // The device's own stamp "(2024-01-10T09:49:05)" is better than the syslog one.
    if let Some(p) = line.get(..i).and_then(|h| h.find("(20"))
        && let Some(inner) = line.get(p + 1..).and_then(|r| r.split(')').next())
        && let Some(t) = parse_date_time(inner)
    {
        time = Some(t);
    }
    let body = line.get(i..).unwrap_or("");
    let toks: Vec<&str> = body.split_ascii_whitespace().take(24).collect();
    let mut proto = None;
    let mut ips = None;
    for (j, w) in toks.windows(2).enumerate() {
        let (Some(a), Some(b)) = (w.first(), w.get(1)) else {
            continue;
        };
        if proto.is_none()
            && j > 0
            && (a.eq_ignore_ascii_case("tcp") || a.eq_ignore_ascii_case("udp"))
        {
            proto = parse_proto(a);
        }
        if let (Some(s), Some(d)) = (parse_ip(a), parse_ip(b)) {
            ips = Some((s, d, j));
            break;
        }
    }
    let Some((src, dst, j)) = ips else {
        return LineOutcome::Skip;
    };
    let sport = toks.get(j + 2).map_or(0, |s| parse_u16(s));
    let dport = toks.get(j + 3).map_or(0, |s| parse_u16(s));
    const K: &[&str] = &[
        "sent_bytes",
        "rcvd_bytes",
        "dstname",
        "host",
        "src_user",
        "domain",
    ];
    let v = kv_lookup(body, K);
    LineFields {
        time,
        src: Some(src),
        dst: Some(dst),
        sport,
        dport,
        proto,
        host: at(&v, 2).or(at(&v, 3)),
        user: at(&v, 4),
        bytes_up: at(&v, 0).map_or(0, parse_u64),
        bytes_down: at(&v, 1).map_or(0, parse_u64),
    }
    .into_record(fallback)
}

// ---------------------------------------------------------------- pfSense filterlog

pub(crate) fn pfsense_sniff(line: &str) -> bool {
    line.contains("filterlog")
}

/// One pfSense/OPNsense `filterlog` line: a logged packet (its IP length is counted as
/// bytes up).
pub(crate) fn pfsense(line: &str, fallback: DateTime<Utc>) -> LineOutcome {
    let (time, _) = syslog_time(line, fallback);
    let Some(csv) = line.split_ascii_whitespace().last() else {
        return LineOutcome::Bad("pfsense: empty");
    };
    let mut f: Vec<Cow<str>> = Vec::with_capacity(32);
    split_csv(csv, b',', &mut f);
    if f.len() < 9 {
        return LineOutcome::Bad("pfsense: too few CSV fields");
    }
    let (proto_name, len, src, dst, sport, dport) = match field(&f, 8) {
        "4" => (
            field(&f, 16),
            field(&f, 17),
            field(&f, 18),
            field(&f, 19),
            20,
            21,
        ),
        "6" => (
            field(&f, 12),
            field(&f, 14),
            field(&f, 15),
            field(&f, 16),
            17,
            18,
        ),
        _ => return LineOutcome::Bad("pfsense: unknown IP version"),
    };
    let (Some(src), Some(dst)) = (parse_ip(src), parse_ip(dst)) else {
        return LineOutcome::Bad("pfsense: bad addresses");
    };
    let ports = proto_name.eq_ignore_ascii_case("tcp") || proto_name.eq_ignore_ascii_case("udp");
    LineFields {
        time,
        src: Some(src),
        dst: Some(dst),
        sport: if ports {
            parse_u16(field(&f, sport))
        } else {
            0
        },
        dport: if ports {
            parse_u16(field(&f, dport))
        } else {
            0
        },
        proto: parse_proto(proto_name),
        bytes_up: parse_u64(len),
        ..LineFields::default()
    }
    .into_record(fallback)
}

// ---------------------------------------------------------------- Cisco ASA / FTD

pub(crate) fn asa_sniff(line: &str) -> bool {
    line.contains("%ASA-") || line.contains("%FTD-") || line.contains("%PIX-")
}

/// "outside:10.1.2.30/63016" or "inside/10.1.2.16(2241)" followed by an optional
/// "(LOCAL\user)". Returns ip, port, user.
fn asa_endpoint(tok: &str) -> Option<(IpAddr, u16, Option<&str>)> {
    let (addr, user) = match tok.find('(') {
        // "ip/port(LOCAL\user)" or "if/ip(port)"
        Some(p) => {
            let inner = tok.get(p + 1..)?.trim_end_matches(')');
            let before = tok.get(..p)?;
            if inner.bytes().all(|b| b.is_ascii_digit()) {
                // if/ip(port)
                let ip_part = before.rsplit('/').next()?;
                let ip = parse_ip(ip_part)?;
                return Some((ip, inner.parse().ok()?, None));
            }
            (before, Some(inner.rsplit('\\').next().unwrap_or(inner)))
        }
        None => (tok, None),
    };
    // Strip "interface:" (interface names contain no ':'; IPv6 addresses do).
    let addr = match addr.split_once(':') {
        Some((ifc, rest))
            if !ifc.is_empty()
                && parse_ip(ifc).is_none()
                && !ifc.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            rest
        }
        _ => addr,
    };
    let (ip, port) = addr.rsplit_once('/').unwrap_or((addr, "0"));
    Some((parse_ip(ip)?, port.parse().unwrap_or(0), user))
}

pub(crate) fn asa(line: &str, fallback: DateTime<Utc>) -> LineOutcome {
    let Some(p) = ["%ASA-", "%FTD-", "%PIX-"]
        .iter()
        .find_map(|m| line.find(m))
    else {
        return LineOutcome::Bad("asa: no %ASA- tag");
    };
    let (time, _) = syslog_time(line, fallback);
    let tag = line.get(p + 5..).unwrap_or("");
    // "4-106023: msg" or "session-5-106100: msg" or "6-302016 msg".
    let id_end = tag.find([':', ' ']).unwrap_or(tag.len());
    let Some(id) = tag.get(..id_end).and_then(|t| t.rsplit('-').next()) else {
        return LineOutcome::Bad("asa: no message id");
    };
    if id.len() != 6 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return LineOutcome::Bad("asa: bad message id");
    }
    let msg = tag
        .get(id_end..)
        .unwrap_or("")
        .trim_start_matches(':')
        .trim();
    let toks: Vec<&str> = msg.split_ascii_whitespace().collect();
    let word = |w: &str| toks.iter().position(|t| t.eq_ignore_ascii_case(w));
    let tok = |i: usize| toks.get(i).copied().unwrap_or("");
    let mut lf = LineFields {
        time,
        ..LineFields::default()
    };
    match id {
        // Teardown TCP/UDP connection ID for A to B duration D bytes N
        "302014" | "302016" => {
            let (Some(f), Some(t)) = (word("for"), word("to")) else {
                return LineOutcome::Bad("asa: teardown without endpoints");
            };
            let (Some(a), Some(b)) = (asa_endpoint(tok(f + 1)), asa_endpoint(tok(t + 1))) else {
                return LineOutcome::Bad("asa: teardown with bad endpoints");
            };
            // Like the matching Built message, the second endpoint is normally the
            // initiator; a well-known port on it means the first one is.
            let (s, d) = if b.1 < 1024 && a.1 >= 1024 {
                (a, b)
            } else {
                (b, a)
            };
            lf.src = Some(s.0);
            lf.sport = s.1;
            lf.dst = Some(d.0);
            lf.dport = d.1;
            lf.user = s.2.or(d.2);
            lf.proto = Some(if id == "302016" {
                L4Proto::Udp
            } else {
                L4Proto::Tcp
            });
            lf.bytes_down = word("bytes").map_or(0, |i| parse_u64(tok(i + 1)));
        }
        // Deny tcp src if:ip/port dst if:ip/port
        "106023" => {
            let (Some(s), Some(d)) = (word("src"), word("dst")) else {
                return LineOutcome::Bad("asa: 106023 without src/dst");
            };
            let (Some(a), Some(b)) = (asa_endpoint(tok(s + 1)), asa_endpoint(tok(d + 1))) else {
                return LineOutcome::Bad("asa: 106023 with bad endpoints");
            };
            lf.proto = parse_proto(tok(1));
            (lf.src, lf.sport, lf.dst, lf.dport, lf.user) = (Some(a.0), a.1, Some(b.0), b.1, a.2);
        }
        // access-list NAME ACTION proto if/ip(port) -> if/ip(port)
        "106100" => {
            let Some(arrow) = toks.iter().position(|t| *t == "->") else {
                return LineOutcome::Bad("asa: 106100 without ->");
            };
            let (Some(a), Some(b)) = (
                asa_endpoint(tok(arrow.wrapping_sub(1))),
                asa_endpoint(tok(arrow + 1)),
            ) else {
                return LineOutcome::Bad("asa: 106100 with bad endpoints");
            };
            lf.proto = parse_proto(tok(arrow.wrapping_sub(2)));
            (lf.src, lf.sport, lf.dst, lf.dport) = (Some(a.0), a.1, Some(b.0), b.1);
        }
        // Deny inbound UDP from ip/port to ip/port ...
        "106006" | "106007" | "106015" => {
            let (Some(f), Some(t)) = (word("from"), word("to")) else {
                return LineOutcome::Bad("asa: deny without from/to");
            };
            let (Some(a), Some(b)) = (asa_endpoint(tok(f + 1)), asa_endpoint(tok(t + 1))) else {
                return LineOutcome::Bad("asa: deny with bad endpoints");
            };
            lf.proto = parse_proto(tok(2));
            (lf.src, lf.sport, lf.dst, lf.dport) = (Some(a.0), a.1, Some(b.0), b.1);
        }
        // SRC[(user)] Accessed URL DSTIP:URL
        "304001" => {
            let Some(a) = word("Accessed") else {
                return LineOutcome::Bad("asa: 304001 without Accessed URL");
            };
            let who = tok(0);
            let (who, user) = match who.split_once('(') {
                Some((w, u)) => (
                    w,
                    Some(u.trim_end_matches(')').rsplit('\\').next().unwrap_or(u)),
                ),
                None => (who, None),
            };
            let (user, ip) = match who.rsplit_once('@') {
                Some((u, ip)) => (user.or(Some(u)), ip),
                None => (user, who),
            };
            let target = tok(a + 2);
            let (dip, url) = target.split_once(':').unwrap_or(("", target));
            lf.src = parse_ip(ip);
            lf.user = user;
            lf.dst = parse_ip(dip);
            lf.host = Some(url).filter(|u| u.contains("://"));
            lf.dport = 80;
        }
        // Access denied URL URL SRC ip DEST ip
        "304002" => {
            lf.host = word("URL").map(|i| tok(i + 1));
            lf.src = word("SRC").and_then(|i| parse_ip(tok(i + 1)));
            lf.dst = word("DEST").and_then(|i| parse_ip(tok(i + 1)));
        }
        _ => return LineOutcome::Skip,
    }
    lf.into_record(fallback)
}

// ---------------------------------------------------------------- Check Point

pub(crate) fn checkpoint_sniff(line: &str) -> bool {
    line.contains("loguid:\"") || (line.contains("CheckPoint") && line.contains(":\""))
}

/// Iterate `key:"value";` pairs of a Check Point structured-data block.
fn cp_pairs(s: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = s;
    std::iter::from_fn(move || {
        loop {
            let r = rest.trim_start_matches([' ', ';', '[']);
            let colon = r.find(':')?;
            let key = r.get(..colon)?.trim();
            let after = r.get(colon..)?.trim_start_matches(':');
            let Some(q) = after.strip_prefix('"') else {
                rest = after;
                continue;
            };
            let b = q.as_bytes();
            let mut i = 0;
            while let Some(&c) = b.get(i) {
                if c == b'\\' {
                    i += 2;
                    continue;
                }
                if c == b'"' {
                    break;
                }
                i += 1;
            }
            let val = q.get(..i.min(q.len()))?;
            rest = q.get((i + 1).min(q.len())..)?;
            return Some((key, val));
        }
    })
}

pub(crate) fn checkpoint(line: &str, fallback: DateTime<Utc>) -> LineOutcome {
    let (time, _) = syslog_time(line, fallback);
    let Some(b) = line.find('[') else {
        return LineOutcome::Bad("checkpoint: no [key:\"value\"] block");
    };
    let body = line.get(b..).unwrap_or("");
    let (
        mut src,
        mut dst,
        mut sport,
        mut dport,
        mut proto,
        mut user,
        mut host,
        mut up,
        mut down,
        mut any,
    ) = (None, None, 0, 0, None, None, None, 0, 0, false);
    for (k, v) in cp_pairs(body) {
        any = true;
        match k {
            "src" => src = parse_ip(v),
            "dst" => dst = parse_ip(v),
            "s_port" => sport = parse_u16(v),
            "service" => dport = parse_u16(v),
            "proto" => proto = parse_proto(v),
            "src_user_name" | "user" if user.is_none() => user = Some(v),
            "resource" | "dst_domain_name" | "hostname" if host.is_none() => host = Some(v),
            "client_outbound_bytes" | "sent_bytes" => up = parse_u64(v),
            "client_inbound_bytes" | "received_bytes" => down = parse_u64(v),
            _ => {}
        }
    }
    if !any {
        return LineOutcome::Bad("checkpoint: no key:\"value\" pairs");
    }
    LineFields {
        time,
        src,
        dst,
        sport,
        dport,
        proto,
        host,
        user,
        bytes_up: up,
        bytes_down: down,
    }
    .into_record(fallback)
}

// ---------------------------------------------------------------- Juniper SRX

pub(crate) fn srx_sniff(line: &str) -> bool {
    line.contains("RT_FLOW") || line.contains("APPTRACK_") || line.contains("[junos@")
}

pub(crate) fn srx(line: &str, fallback: DateTime<Utc>) -> LineOutcome {
    let (time, rest) = syslog_time(line, fallback);
    let Some(b) = rest.find('[') else {
        return LineOutcome::Bad("srx: no structured data");
    };
    let head = rest.get(..b).unwrap_or("");
    let event = head
        .split_ascii_whitespace()
        .find(|t| t.starts_with("RT_FLOW_") || t.starts_with("APPTRACK_"));
    let Some(event) = event else {
        return LineOutcome::Skip;
    };
    if !(event.starts_with("RT_FLOW_SESSION_CLOSE") || event.starts_with("RT_FLOW_SESSION_DENY")) {
        return LineOutcome::Skip;
    }
    const K: &[&str] = &[
        "source-address",
        "destination-address",
        "source-port",
        "destination-port",
        "protocol-id",
        "username",
        "bytes-from-client",
        "bytes-from-server",
        "nested-application",
    ];
    let v = kv_lookup(rest.get(b + 1..).unwrap_or(""), K);
    let Some(src) = at(&v, 0).and_then(parse_ip) else {
        return LineOutcome::Bad("srx: no source-address");
    };
    LineFields {
        time,
        src: Some(src),
        dst: at(&v, 1).and_then(parse_ip),
        sport: at(&v, 2).map_or(0, parse_u16),
        dport: at(&v, 3).map_or(0, parse_u16),
        proto: at(&v, 4).and_then(parse_proto),
        user: at(&v, 5),
        bytes_up: at(&v, 6).map_or(0, parse_u64),
        bytes_down: at(&v, 7).map_or(0, parse_u64),
        host: None,
    }
    .into_record(fallback)
}
