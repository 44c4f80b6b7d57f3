//! Small, allocation-free helpers shared by the log parsers: syslog prefixes, timestamps,
//! URL hosts, key=value and CSV splitting. Everything here takes untrusted text and returns
//! `Option`/empty results instead of panicking.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};

use tollgate_discovery::record::{FlowRecord, L4Proto, NameSource};

/// The unspecified address, used as `dst` when a log names the host but not its address.
pub(crate) const NO_IP: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// Fields a parser extracted from one log line; turned into a [`FlowRecord`] by [`LineFields::into_record`].
#[derive(Debug, Default)]
pub(crate) struct LineFields<'a> {
    pub time: Option<DateTime<Utc>>,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub sport: u16,
    pub dport: u16,
    pub proto: Option<L4Proto>,
    /// Host name, URL or `host:port`; normalised by [`normalize_host`].
    pub host: Option<&'a str>,
    pub user: Option<&'a str>,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// What became of one line.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per line on the hot path: no box, no allocation"
)]
pub enum LineOutcome {
    /// A transaction.
    Record(FlowRecord),
    /// A well-formed line of the format that is not a transaction (a header, a system
    /// event, a session-start record whose session-end record carries the bytes).
    Skip,
    /// The line does not fit the format; the reason is shown to the user.
    Bad(&'static str),
}

impl<'a> LineFields<'a> {
    /// Build the record. Lines without a source address, or with neither a name nor a
    /// destination address, are not transactions discovery can use: they become `Skip`.
    pub(crate) fn into_record(self, fallback_time: DateTime<Utc>) -> LineOutcome {
        let Some(src) = self.src else {
            return LineOutcome::Skip;
        };
        let mut dst = self.dst.unwrap_or(NO_IP);
        let mut dport = self.dport;
        let mut name = None;
        if let Some(h) = self.host {
            match normalize_host(h) {
                Some(HostPart::Name(n, port)) => {
                    name = Some(n);
                    if dport == 0 {
                        dport = port.unwrap_or(0);
                    }
                }
                Some(HostPart::Ip(ip, port)) => {
                    if dst.is_unspecified() {
                        dst = ip;
                    }
                    if dport == 0 {
                        dport = port.unwrap_or(0);
                    }
                }
                None => {}
            }
        }
        if name.is_none() && dst.is_unspecified() {
            return LineOutcome::Skip;
        }
        let time = self.time.unwrap_or(fallback_time);
        let user = self.user.and_then(clean_user).map(str::to_owned);
        LineOutcome::Record(FlowRecord {
            proto: self.proto.unwrap_or(L4Proto::Tcp),
            src,
            sport: self.sport,
            dst,
            dport,
            name_source: name.as_ref().map(|_| NameSource::Log),
            name,
            bytes_up: self.bytes_up,
            bytes_down: self.bytes_down,
            packets_up: 0,
            packets_down: 0,
            first_seen: time,
            last_seen: time,
            src_mac: None,
            user,
        })
    }
}

/// A user field that means "nobody" becomes `None`.
pub(crate) fn clean_user(u: &str) -> Option<&str> {
    let u = u.trim().trim_matches('"');
    if u.is_empty()
        || u == "-"
        || u.eq_ignore_ascii_case("n/a")
        || u.eq_ignore_ascii_case("none")
        || u.eq_ignore_ascii_case("unknown")
        || u == "(null)"
    {
        None
    } else {
        Some(u)
    }
}

pub(crate) enum HostPart {
    Name(String, Option<u16>),
    Ip(IpAddr, Option<u16>),
}

/// Extract the host from a URL (`scheme://user@host:port/path`), an authority
/// (`host:443`), or a bare `host/path`; lowercases it and drops a trailing dot. IP
/// literals (also `[v6]`) come back as [`HostPart::Ip`].
pub(crate) fn normalize_host(s: &str) -> Option<HostPart> {
    // Byte scanning throughout: this runs once per log line on the import hot path.
    let s = s.trim();
    let b = s.as_bytes();
    let mut default_port = None;
    let mut rest = s;
    if let Some(i) = memchr::memchr(b':', b)
        && b.get(i + 1) == Some(&b'/')
        && b.get(i + 2) == Some(&b'/')
    {
        let scheme = s.get(..i)?;
        default_port = if scheme.eq_ignore_ascii_case("https") {
            Some(443)
        } else if scheme.eq_ignore_ascii_case("http") {
            Some(80)
        } else if scheme.eq_ignore_ascii_case("ftp") {
            Some(21)
        } else {
            None
        };
        rest = s.get(i + 3..)?;
    }
    let rb = rest.as_bytes();
    let end = rb
        .iter()
        .position(|&c| matches!(c, b'/' | b'?' | b'#' | b' ' | b'\t'))
        .unwrap_or(rb.len());
    let mut auth = rest.get(..end)?;
    if let Some(at) = memchr::memrchr(b'@', auth.as_bytes()) {
        auth = auth.get(at + 1..)?;
    }
    let ab = auth.as_bytes();
    // Bracketed IPv6.
    if ab.first() == Some(&b'[') {
        let close = memchr::memchr(b']', ab)?;
        let ip: IpAddr = auth.get(1..close)?.parse().ok()?;
        let port = auth
            .get(close + 1..)
            .and_then(|p| p.strip_prefix(':'))
            .and_then(|p| p.parse().ok())
            .or(default_port);
        return Some(HostPart::Ip(ip, port));
    }
    let (host, port) = match memchr::memrchr(b':', ab) {
        // A bare IPv6 literal (no port possible without brackets).
        Some(i) if memchr::memchr(b':', ab) != Some(i) => {
            return auth
                .parse::<IpAddr>()
                .ok()
                .map(|ip| HostPart::Ip(ip, default_port));
        }
        Some(i) if i + 1 == ab.len() => (auth.get(..i)?, default_port),
        Some(i) => (
            auth.get(..i)?,
            Some(auth.get(i + 1..)?.parse::<u16>().ok()?),
        ),
        None => (auth, default_port),
    };
    let host = host.trim_end_matches('.');
    let hb = host.as_bytes();
    if hb.is_empty() || hb.len() > 253 {
        return None;
    }
    let mut alpha = false;
    let mut upper = false;
    for &c in hb {
        match c {
            b'a'..=b'z' => alpha = true,
            b'A'..=b'Z' => {
                alpha = true;
                upper = true;
            }
            b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {}
            _ => return None,
        }
    }
    if !alpha {
        // Digits and dots only: an IPv4 address or nothing.
        return host.parse::<IpAddr>().ok().map(|ip| HostPart::Ip(ip, port));
    }
    let name = if upper {
        host.to_ascii_lowercase()
    } else {
        host.to_owned()
    };
    Some(HostPart::Name(name, port))
}

/// Parse an IP address, tolerating surrounding quotes and an IPv6 zone-less bracket form.
pub(crate) fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Some(v4) = dotted_quad(s.as_bytes()) {
        return Some(IpAddr::V4(v4));
    }
    let s = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    s.parse().ok()
}

/// The common case of [`parse_ip`], several times faster than the standard parser: four
/// decimal octets in canonical form (no leading zeros, each at most 255). Anything else is
/// `None` and left to the standard parser, so what is accepted, and as what, does not change.
fn dotted_quad(b: &[u8]) -> Option<std::net::Ipv4Addr> {
    if b.len() < 7 || b.len() > 15 {
        return None;
    }
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (n, octet) in octets.iter_mut().enumerate() {
        if n > 0 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let start = i;
        let mut v = 0u32;
        while let Some(&d) = b.get(i).filter(|d| d.is_ascii_digit()) {
            v = v * 10 + u32::from(d - b'0');
            i += 1;
            if i - start > 3 {
                return None;
            }
        }
        let digits = i - start;
        if digits == 0 || (digits > 1 && b.get(start) == Some(&b'0')) {
            return None;
        }
        *octet = u8::try_from(v).ok()?;
    }
    (i == b.len()).then_some(std::net::Ipv4Addr::from(octets))
}

pub(crate) fn parse_u64(s: &str) -> u64 {
    s.trim().trim_matches('"').parse().unwrap_or(0)
}

pub(crate) fn parse_u16(s: &str) -> u16 {
    s.trim().trim_matches('"').parse().unwrap_or(0)
}

/// "tcp"/"udp"/"6"/"17" (any case) to [`L4Proto`]; everything else (ICMP, GRE, ...) is
/// reported as TCP because a `FlowRecord` only knows TCP and UDP.
pub(crate) fn parse_proto(s: &str) -> Option<L4Proto> {
    let s = s.trim().trim_matches('"');
    if s.eq_ignore_ascii_case("udp") || s == "17" {
        Some(L4Proto::Udp)
    } else if s.is_empty() {
        None
    } else {
        Some(L4Proto::Tcp)
    }
}

pub(crate) fn month(s: &str) -> Option<u32> {
    let b = s.as_bytes();
    let m = [
        b.first()?.to_ascii_lowercase(),
        b.get(1)?.to_ascii_lowercase(),
        b.get(2)?.to_ascii_lowercase(),
    ];
    Some(match &m {
        b"jan" => 1,
        b"feb" => 2,
        b"mar" => 3,
        b"apr" => 4,
        b"may" => 5,
        b"jun" => 6,
        b"jul" => 7,
        b"aug" => 8,
        b"sep" => 9,
        b"oct" => 10,
        b"nov" => 11,
        b"dec" => 12,
        _ => return None,
    })
}

/// "HH:MM:SS" with an optional fraction.
fn hms(s: &str) -> Option<(u32, u32, u32, u32)> {
    let (main, frac) = match s.split_once('.') {
        Some((m, f)) => (m, f),
        None => (s, ""),
    };
    let mut it = main.split(':');
    let h = it.next()?.parse().ok()?;
    let m = it.next()?.parse().ok()?;
    let sec = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    let mut nanos = 0u32;
    let mut scale = 100_000_000u32;
    for b in frac.bytes().take(9) {
        if !b.is_ascii_digit() {
            break;
        }
        nanos = nanos.saturating_add(u32::from(b - b'0').saturating_mul(scale));
        scale /= 10;
    }
    Some((h, m, sec, nanos))
}

pub(crate) fn ymd_hms(y: i32, mo: u32, d: u32, time: &str) -> Option<DateTime<Utc>> {
    let (h, m, s, n) = hms(time)?;
    let nd = NaiveDate::from_ymd_opt(y, mo, d)?.and_hms_nano_opt(h, m, s, n)?;
    Some(Utc.from_utc_datetime(&nd))
}

/// "2020-07-23" or "2020/07/23".
pub(crate) fn parse_date(s: &str) -> Option<(i32, u32, u32)> {
    let s = s.trim().trim_matches('"');
    let mut it = s.split(['-', '/']);
    let y = it.next()?.parse().ok()?;
    let m = it.next()?.parse().ok()?;
    let d = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((y, m, d))
}

/// "2020-07-23 23:49:54" or "2018/11/30 16:09:07" or with 'T'.
pub(crate) fn parse_date_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim().trim_matches('"');
    let (d, t) = s.split_once([' ', 'T'])?;
    let (y, m, dd) = parse_date(d)?;
    let t = t.trim_end_matches('Z');
    ymd_hms(y, m, dd, t)
}

/// RFC 3339 (what RFC 5424 syslog uses); offsets are honoured; a missing offset means UTC.
pub(crate) fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    parse_date_time(s)
}

/// Epoch seconds, milliseconds, microseconds or nanoseconds, told apart by magnitude
/// (FortiGate's eventtime and CEF's rt use several of these).
pub(crate) fn parse_epoch_any(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim().trim_matches('"');
    if let Some((a, b)) = s.split_once('.') {
        let secs: i64 = a.parse().ok()?;
        let mut nanos = 0u32;
        let mut scale = 100_000_000u32;
        for c in b.bytes().take(9) {
            if !c.is_ascii_digit() {
                return None;
            }
            nanos = nanos.saturating_add(u32::from(c - b'0').saturating_mul(scale));
            scale /= 10;
        }
        return Utc.timestamp_opt(secs, nanos).single();
    }
    let v: i64 = s.parse().ok()?;
    let (secs, nanos) = if v > 100_000_000_000_000_000 {
        (v / 1_000_000_000, v % 1_000_000_000)
    } else if v > 100_000_000_000_000 {
        (v / 1_000_000, (v % 1_000_000) * 1000)
    } else if v > 100_000_000_000 {
        (v / 1000, (v % 1000) * 1_000_000)
    } else {
        (v, 0)
    };
    Utc.timestamp_opt(secs, u32::try_from(nanos).ok()?).single()
}

/// Year for BSD syslog stamps that carry none: the year (of the reference's, one before or
/// one after) that puts the stamp closest to `reference` — the previous line's time, or the
/// file's modification time at its start — so old files and New Year rollovers come out right.
pub(crate) fn guess_year(mo: u32, d: u32, reference: DateTime<Utc>) -> i32 {
    let y = reference.year();
    let r = reference.date_naive();
    [y, y - 1, y + 1]
        .into_iter()
        .filter_map(|c| {
            NaiveDate::from_ymd_opt(c, mo, d).map(|date| (c, (date - r).num_days().abs()))
        })
        .min_by_key(|(_, dist)| *dist)
        .map_or(y, |(c, _)| c)
}

/// Strip a `<PRI>` prefix.
pub(crate) fn strip_pri(s: &str) -> &str {
    if let Some(rest) = s.strip_prefix('<')
        && let Some(i) = rest.find('>')
        && i <= 3
        && rest
            .get(..i)
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
    {
        return rest.get(i + 1..).unwrap_or("");
    }
    s
}

/// A syslog header in front of a message: `<PRI>` then either RFC 5424
/// (`1 TIMESTAMP HOST APP PROCID MSGID `) or BSD (`Mmm dd hh:mm:ss [yyyy] `, also the Cisco
/// `Mmm dd yyyy hh:mm:ss[ TZ]:` form). Returns the time (if any) and the rest after the
/// timestamp (for BSD the host is left in place: callers look for their own marker).
pub(crate) fn syslog_time(line: &str, reference: DateTime<Utc>) -> (Option<DateTime<Utc>>, &str) {
    let s = strip_pri(line.trim_start());
    // RFC 5424: "1 2019-11-14T09:37:51.184+01:00 ..."
    if let Some(rest) = s.strip_prefix("1 ") {
        let (ts, after) = rest.split_once(' ').unwrap_or((rest, ""));
        if let Some(t) = parse_rfc3339(ts) {
            return (Some(t), after);
        }
    }
    // ISO stamp first ("2020-01-01T00:00:00Z host ...").
    if s.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        let (ts, after) = s.split_once(' ').unwrap_or((s, ""));
        if let Some(t) = parse_rfc3339(ts) {
            return (Some(t), after);
        }
        return (None, s);
    }
    // BSD: "Mmm dd hh:mm:ss" or "Mmm dd yyyy hh:mm:ss".
    let Some(mo) = month(s) else {
        return (None, s);
    };
    let mut rest = s.get(3..).unwrap_or("").trim_start();
    let (day, r) = rest.split_once(' ').unwrap_or((rest, ""));
    let Ok(d) = day.parse::<u32>() else {
        return (None, s);
    };
    rest = r.trim_start();
    let (tok, r) = rest.split_once(' ').unwrap_or((rest, ""));
    let (year, time, after) = if tok.len() == 4 && tok.bytes().all(|b| b.is_ascii_digit()) {
        let (t, r2) = r.split_once(' ').unwrap_or((r, ""));
        (tok.parse::<i32>().ok(), t.trim_end_matches(':'), r2)
    } else {
        (None, tok.trim_end_matches(':'), r)
    };
    let year = year.unwrap_or_else(|| guess_year(mo, d, reference));
    (ymd_hms(year, mo, d, time), after)
}

/// Iterate `key=value` pairs separated by whitespace; values may be double-quoted (with
/// `\"` escapes, returned raw) or curly-quoted. Tokens without '=' are skipped.
pub(crate) struct KvIter<'a> {
    s: &'a str,
}

impl<'a> KvIter<'a> {
    pub(crate) fn new(s: &'a str) -> Self {
        KvIter { s }
    }
}

impl<'a> Iterator for KvIter<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let s = self.s.trim_start();
            if s.is_empty() {
                return None;
            }
            // Key: up to '=' or whitespace.
            let kend = s
                .find(|c: char| c == '=' || c.is_whitespace())
                .unwrap_or(s.len());
            let key = s.get(..kend)?;
            let after = s.get(kend..)?;
            let Some(val_start) = after.strip_prefix('=') else {
                // A token without '=': skip it.
                self.s = after;
                continue;
            };
            let (val, rest) = if let Some(q) = val_start.strip_prefix('"') {
                let b = q.as_bytes();
                let mut i = 0;
                let mut end = None;
                while let Some(&c) = b.get(i) {
                    if c == b'\\' {
                        i += 2;
                        continue;
                    }
                    if c == b'"' {
                        end = Some(i);
                        break;
                    }
                    i += 1;
                }
                match end {
                    Some(e) => (q.get(..e)?, q.get(e + 1..)?),
                    None => (q, ""),
                }
            } else if let Some(q) = val_start.strip_prefix('\u{201c}') {
                match q.find('\u{201d}') {
                    Some(e) => (q.get(..e)?, q.get(e + '\u{201d}'.len_utf8()..)?),
                    None => (q, ""),
                }
            } else {
                let e = val_start
                    .find(char::is_whitespace)
                    .unwrap_or(val_start.len());
                (val_start.get(..e)?, val_start.get(e..)?)
            };
            self.s = rest;
            return Some((key, val));
        }
    }
}

/// Split one CSV line into fields, honouring double quotes (`""` inside quotes is one
/// quote). Fields that need unescaping are owned; the rest borrow from the line.
pub(crate) fn split_csv<'a>(line: &'a str, delim: u8, out: &mut Vec<Cow<'a, str>>) {
    out.clear();
    let b = line.as_bytes();
    let mut i = 0;
    loop {
        // Leading spaces before a quoted field ("a", "b") are tolerated.
        let mut j = i;
        while b.get(j) == Some(&b' ') && delim != b' ' {
            j += 1;
        }
        if b.get(j) == Some(&b'"') {
            let mut k = j + 1;
            let start = k;
            let mut owned: Option<String> = None;
            loop {
                match b.get(k) {
                    None => break,
                    Some(b'"') if b.get(k + 1) == Some(&b'"') => {
                        let o = owned.get_or_insert_with(String::new);
                        if o.is_empty() {
                            o.push_str(line.get(start..k).unwrap_or(""));
                        }
                        o.push('"');
                        k += 2;
                        continue;
                    }
                    Some(b'"') => break,
                    Some(_) => {
                        if let Some(o) = owned.as_mut() {
                            // Push the char starting at k (handles UTF-8 by slicing).
                            let ch_len = line
                                .get(k..)
                                .and_then(|r| r.chars().next())
                                .map_or(1, char::len_utf8);
                            o.push_str(line.get(k..k + ch_len).unwrap_or(""));
                            k += ch_len;
                            continue;
                        }
                        k += 1;
                    }
                }
            }
            let field = match owned {
                Some(o) => Cow::Owned(o),
                None => Cow::Borrowed(line.get(start..k).unwrap_or("")),
            };
            out.push(field);
            // Skip to the delimiter after the closing quote.
            let mut m = k + 1;
            while let Some(&c) = b.get(m) {
                if c == delim {
                    break;
                }
                m += 1;
            }
            if m >= b.len() {
                return;
            }
            i = m + 1;
        } else {
            let end = memchr::memchr(delim, b.get(i..).unwrap_or(&[])).map(|p| p + i);
            match end {
                Some(e) => {
                    out.push(Cow::Borrowed(line.get(i..e).unwrap_or("")));
                    i = e + 1;
                }
                None => {
                    out.push(Cow::Borrowed(line.get(i..).unwrap_or("")));
                    return;
                }
            }
        }
    }
}

/// Convenience for parsers: the `i`-th CSV field or "".
pub(crate) fn field<'a>(f: &'a [Cow<'_, str>], i: usize) -> &'a str {
    f.get(i).map_or("", |c| c.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast dotted-quad path accepts exactly what the standard parser accepts, as the
    /// same address, and leaves everything else to it.
    #[test]
    fn dotted_quad_agrees_with_the_standard_parser() {
        let mut cases: Vec<String> = [
            "0.0.0.0",
            "255.255.255.255",
            "10.1.2.3",
            "256.1.2.3",
            "01.2.3.4",
            "1.2.3.04",
            "1.2.3",
            "1.2.3.4.5",
            "1..2.3",
            ".1.2.3",
            "1.2.3.",
            "1.2.3.4 ",
            " 1.2.3.4",
            "1.2.3.4x",
            "1000.2.3.4",
            "1.2.3.0000",
            "+1.2.3.4",
            "1.2.3.-4",
            "١.٢.٣.٤",
            "",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut x = 0x9e37_79b9_u32;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let alphabet = b"0123456789.";
            let len = 1 + (x % 16) as usize;
            let s: String = (0..len)
                .map(|i| char::from(alphabet[((x >> (i % 28)) as usize + i * 7) % alphabet.len()]))
                .collect();
            cases.push(s);
            let a = x.to_be_bytes();
            cases.push(format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]));
        }
        for c in &cases {
            let std_v4 = c.parse::<std::net::Ipv4Addr>().ok();
            let fast = dotted_quad(c.as_bytes());
            assert!(
                fast.is_none() || fast == std_v4,
                "{c:?}: fast {fast:?}, std {std_v4:?}"
            );
            assert_eq!(parse_ip(c), c.trim().parse::<IpAddr>().ok(), "{c:?}");
        }
        assert_eq!(
            dotted_quad(b"192.0.2.10"),
            Some(std::net::Ipv4Addr::new(192, 0, 2, 10))
        );
    }

    #[test]
    fn hosts() {
        let n = |s: &str| match normalize_host(s) {
            Some(HostPart::Name(n, p)) => format!("{n}:{p:?}"),
            Some(HostPart::Ip(i, p)) => format!("ip {i}:{p:?}"),
            None => "none".into(),
        };
        assert_eq!(n("login.yahoo.com:443"), "login.yahoo.com:Some(443)");
        assert_eq!(
            n("http://www.Goonernews.com/styles.css"),
            "www.goonernews.com:Some(80)"
        );
        assert_eq!(
            n("https://u:p@x.example.com:8443/a?b"),
            "x.example.com:Some(8443)"
        );
        assert_eq!(n("www.elastic.co."), "www.elastic.co:None");
        assert_eq!(n("http://[2001:db8::1]:8080/"), "ip 2001:db8::1:Some(8080)");
        assert_eq!(n("192.168.2.1:/app"), "ip 192.168.2.1:None");
        assert_eq!(n("error:invalid-request"), "none");
        assert_eq!(n("-"), "none");
    }

    #[test]
    fn kv() {
        let v: Vec<_> = KvIter::new(r#"a=1 b="x y" junk c="q\"d" e= f=“curly q” g=2"#).collect();
        assert_eq!(
            v,
            vec![
                ("a", "1"),
                ("b", "x y"),
                ("c", r#"q\"d"#),
                ("e", ""),
                ("f", "curly q"),
                ("g", "2")
            ]
        );
    }

    #[test]
    fn csv() {
        let mut out = Vec::new();
        split_csv(r#""a","b ""q""",c, "d",,"#, b',', &mut out);
        assert_eq!(out, vec!["a", "b \"q\"", "c", "d", "", ""]);
        split_csv(r#""unterminated"#, b',', &mut out);
        assert_eq!(out, vec!["unterminated"]);
    }

    #[test]
    fn syslog() {
        let (t, rest) = syslog_time(
            "<134>1 2020-03-29T13:19:20Z gw CheckPoint 1930 - [x]",
            Utc::now(),
        );
        assert_eq!(
            t.map(|t| t.to_rfc3339()),
            Some("2020-03-29T13:19:20+00:00".into())
        );
        assert_eq!(rest, "gw CheckPoint 1930 - [x]");
        let (t, rest) = syslog_time("Apr 15 2013 09:36:50: %ASA-4-106023: Deny", Utc::now());
        assert_eq!(
            t.map(|t| t.to_rfc3339()),
            Some("2013-04-15T09:36:50+00:00".into())
        );
        assert_eq!(rest, "%ASA-4-106023: Deny");
        let (t, _) = syslog_time("Jan  6 19:47:37 host date=2021", Utc::now());
        assert!(t.is_some());
        // The year comes from the reference time: across New Year both ways.
        let r = parse_rfc3339("2020-12-31T23:59:00Z").expect("ref");
        assert_eq!(
            syslog_time("Jan  1 00:00:10 h x", r)
                .0
                .map(|t| t.to_rfc3339()),
            Some("2021-01-01T00:00:10+00:00".into())
        );
        let r = parse_rfc3339("2021-01-01T00:00:30Z").expect("ref");
        assert_eq!(
            syslog_time("Dec 31 23:59:50 h x", r)
                .0
                .map(|t| t.to_rfc3339()),
            Some("2020-12-31T23:59:50+00:00".into())
        );
        assert_eq!(
            parse_epoch_any("1609960622").map(|t| t.timestamp()),
            Some(1609960622)
        );
        assert_eq!(
            parse_epoch_any("1388577600000").map(|t| t.timestamp()),
            Some(1388577600)
        );
    }
}
