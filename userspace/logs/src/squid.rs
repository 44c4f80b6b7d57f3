//! Squid access logs: the native format
//! (`time elapsed client code/status bytes method URL user hierarchy/peer type`) and the
//! common/combined format (`client ident user [date] "METHOD URL HTTP/x" status bytes ...`).
//! Squid logs the reply size only, so `bytes_down` is that and `bytes_up` stays 0.

use chrono::{DateTime, Utc};

use super::util::{LineFields, LineOutcome, parse_ip, parse_u64};

/// One native-format line. This is the hot path of the log benchmark: no allocation
/// except the record's own strings.
pub(crate) fn parse_native(line: &str, fallback: DateTime<Utc>) -> LineOutcome {
    let mut it = Fields { s: line, pos: 0 };
    let (Some(ts), Some(_elapsed), Some(client), Some(code), Some(bytes), Some(method), Some(url)) = (
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
    ) else {
        return LineOutcome::Bad("squid native: fewer than 7 fields");
    };
    let user = it.next();
    let hier = it.next();
    let Some(time) = parse_epoch_fast(ts) else {
        return LineOutcome::Bad("squid native: bad timestamp");
    };
    let Some(src) = parse_ip(client) else {
        return LineOutcome::Bad("squid native: bad client address");
    };
    if memchr::memchr(b'/', code.as_bytes()).is_none() {
        return LineOutcome::Bad("squid native: bad result code");
    }
    if !bytes.bytes().all(|b| b.is_ascii_digit()) {
        return LineOutcome::Bad("squid native: bad byte count");
    }
    let dst = hier
        .and_then(|h| h.get(memchr::memchr(b'/', h.as_bytes())? + 1..))
        .and_then(parse_ip);
    let default_port = if method.eq_ignore_ascii_case("CONNECT") {
        443
    } else {
        0
    };
    LineFields {
        time: Some(time),
        src: Some(src),
        dst,
        dport: default_port,
        host: Some(url),
        user,
        bytes_down: parse_u64(bytes),
        ..LineFields::default()
    }
    .into_record(fallback)
}

/// Space/tab-separated fields, scanned over bytes (faster than `split_ascii_whitespace`,
/// which walks chars).
struct Fields<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let b = self.s.as_bytes();
        let mut i = self.pos;
        while matches!(b.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        if i >= b.len() {
            self.pos = i;
            return None;
        }
        let start = i;
        while let Some(&c) = b.get(i) {
            if c == b' ' || c == b'\t' {
                break;
            }
            i += 1;
        }
        self.pos = i;
        self.s.get(start..i)
    }
}

/// "1157689312.049" or "1157689312" without going through a float.
fn parse_epoch_fast(s: &str) -> Option<DateTime<Utc>> {
    // memchr, not `split_once('.')`: the char searcher was 3% of a large import.
    let (secs, frac) = match memchr::memchr(b'.', s.as_bytes()) {
        Some(i) => (s.get(..i).unwrap_or(s), s.get(i + 1..).unwrap_or("")),
        None => (s, ""),
    };
    if secs.is_empty() || secs.len() > 12 || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut ms = 0u32;
    let mut digits = 0;
    for b in frac.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        if digits < 3 {
            ms = ms * 10 + u32::from(b - b'0');
            digits += 1;
        }
    }
    while digits < 3 {
        ms *= 10;
        digits += 1;
    }
    DateTime::from_timestamp(secs, ms * 1_000_000)
}

/// One common/combined-format line.
pub(crate) fn parse_common(line: &str, fallback: DateTime<Utc>) -> LineOutcome {
    let mut it = line.splitn(4, ' ');
    let (Some(client), Some(_ident), Some(user), Some(rest)) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return LineOutcome::Bad("squid common: too few fields");
    };
    let Some(src) = parse_ip(client) else {
        return LineOutcome::Bad("squid common: bad client address");
    };
    let Some(rest) = rest.strip_prefix('[') else {
        return LineOutcome::Bad("squid common: no [date]");
    };
    let Some((date, rest)) = rest.split_once(']') else {
        return LineOutcome::Bad("squid common: no [date]");
    };
    let Ok(time) = DateTime::parse_from_str(date, "%d/%b/%Y:%H:%M:%S %z") else {
        return LineOutcome::Bad("squid common: bad date");
    };
    let Some(rest) = rest.trim_start().strip_prefix('"') else {
        return LineOutcome::Bad("squid common: no request");
    };
    let Some((request, rest)) = rest.split_once('"') else {
        return LineOutcome::Bad("squid common: unterminated request");
    };
    let mut nums = rest.split_ascii_whitespace();
    let (Some(status), Some(bytes)) = (nums.next(), nums.next()) else {
        return LineOutcome::Bad("squid common: no status/bytes");
    };
    if !status.bytes().all(|b| b.is_ascii_digit())
        || !bytes.bytes().all(|b| b.is_ascii_digit() || b == b'-')
    {
        return LineOutcome::Bad("squid common: bad status/bytes");
    }
    let mut req = request.split(' ');
    let method = req.next().unwrap_or("");
    let url = req.next();
    LineFields {
        time: Some(time.with_timezone(&Utc)),
        src: Some(src),
        dport: if method.eq_ignore_ascii_case("CONNECT") {
            443
        } else {
            0
        },
        host: url,
        user: Some(user),
        bytes_down: parse_u64(bytes),
        ..LineFields::default()
    }
    .into_record(fallback)
}

pub(crate) fn sniff_native(line: &str) -> bool {
    let mut it = line.split_ascii_whitespace();
    let ts = it.next().unwrap_or("");
    let _ = it.next();
    let client = it.next().unwrap_or("");
    let code = it.next().unwrap_or("");
    parse_epoch_fast(ts).is_some() && parse_ip(client).is_some() && code.contains('/')
}

pub(crate) fn sniff_common(line: &str) -> bool {
    let mut it = line.splitn(4, ' ');
    let client = it.next().unwrap_or("");
    let _ = it.next();
    let _ = it.next();
    parse_ip(client).is_some()
        && it
            .next()
            .is_some_and(|r| r.starts_with('[') && r.contains("] \""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_discovery::record::NameSource;

    fn rec(o: LineOutcome) -> tollgate_discovery::record::FlowRecord {
        match o {
            LineOutcome::Record(r) => r,
            other => panic!("expected a record, got {other:?}"),
        }
    }

    #[test]
    fn native_connect_and_get() {
        let now = Utc::now();
        let r = rec(parse_native(
            "1157689312.049   5006 10.105.21.199 TCP_MISS/200 19763 CONNECT login.yahoo.com:443 badeyek DIRECT/209.73.177.115 -",
            now,
        ));
        assert_eq!(r.name.as_deref(), Some("login.yahoo.com"));
        assert_eq!(r.name_source, Some(NameSource::Log));
        assert_eq!(r.user.as_deref(), Some("badeyek"));
        assert_eq!(r.dst.to_string(), "209.73.177.115");
        assert_eq!(r.dport, 443);
        assert_eq!(r.bytes_down, 19763);
        assert_eq!(r.first_seen.timestamp_millis(), 1_157_689_312_049);
        let r = rec(parse_native(
            "1157689321.315      1 10.105.21.199 TCP_HIT/200 1464 GET http://www.goonernews.com/styles.css - NONE/- text/css",
            now,
        ));
        assert_eq!(r.user, None);
        assert!(r.dst.is_unspecified());
        assert_eq!(r.dport, 80);
        assert!(matches!(
            parse_native("garbage line", now),
            LineOutcome::Bad(_)
        ));
        assert!(matches!(
            parse_native(
                "1157689321.315 1 10.105.21.199 NONE_NONE/400 0 NONE error:invalid-request - HIER_NONE/- -",
                now
            ),
            LineOutcome::Skip
        ));
    }

    #[test]
    fn common() {
        let r = rec(parse_common(
            r#"10.10.10.10 - testuser1 [12/Sep/2024:12:38:20 +0530] "CONNECT ssl.gstatic.com:443 HTTP/1.1" 200 0 "-" "Mozilla/5.0" NONE_NONE:HIER_DIRECT"#,
            Utc::now(),
        ));
        assert_eq!(r.name.as_deref(), Some("ssl.gstatic.com"));
        assert_eq!(r.user.as_deref(), Some("testuser1"));
        assert_eq!(r.first_seen.to_rfc3339(), "2024-09-12T07:08:20+00:00");
    }
}
