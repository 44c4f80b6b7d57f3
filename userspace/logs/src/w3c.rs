//! W3C extended log format (Blue Coat ProxySG ELFF, also IIS/ISA-style proxies): `#Fields:`
//! names the columns; data lines are space-separated with "quoted" fields.

use chrono::{DateTime, Utc};

use super::util::{LineFields, LineOutcome, parse_date, parse_ip, parse_u16, parse_u64, ymd_hms};

/// Column positions taken from the last `#Fields:` line.
#[derive(Debug, Default, Clone)]
pub(crate) struct W3cState {
    cols: Option<Cols>,
}

#[derive(Debug, Default, Clone)]
struct Cols {
    n: usize,
    date: Option<usize>,
    time: Option<usize>,
    src: Option<usize>,
    user: Option<usize>,
    host: Option<usize>,
    uri: Option<usize>,
    dst: Vec<usize>,
    up: Option<usize>,
    down: Option<usize>,
    port: Option<usize>,
    scheme: Option<usize>,
    method: Option<usize>,
}

fn tokens<'a>(line: &'a str, out: &mut Vec<&'a str>) {
    out.clear();
    let mut rest = line.trim();
    while !rest.is_empty() {
        if let Some(q) = rest.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            out.push(q.get(..end).unwrap_or(""));
            rest = q.get(end + 1..).unwrap_or("").trim_start();
        } else {
            let end = rest.find([' ', '\t']).unwrap_or(rest.len());
            out.push(rest.get(..end).unwrap_or(""));
            rest = rest.get(end..).unwrap_or("").trim_start();
        }
    }
}

impl W3cState {
    pub(crate) fn parse(&mut self, line: &str, fallback: DateTime<Utc>) -> LineOutcome {
        if let Some(h) = line.strip_prefix('#') {
            if let Some(f) = h.strip_prefix("Fields:") {
                self.set_fields(f);
            }
            return LineOutcome::Skip;
        }
        let Some(c) = &self.cols else {
            return LineOutcome::Bad("w3c: data line before any #Fields header");
        };
        let mut t = Vec::with_capacity(c.n);
        tokens(line, &mut t);
        if t.len() < c.n {
            return LineOutcome::Bad("w3c: fewer fields than #Fields names");
        }
        let get = |i: Option<usize>| i.and_then(|i| t.get(i).copied()).filter(|v| *v != "-");
        let time = match (get(c.date).and_then(parse_date), get(c.time)) {
            (Some((y, m, d)), Some(tm)) => ymd_hms(y, m, d, tm),
            _ => None,
        };
        if c.date.is_some() && time.is_none() {
            return LineOutcome::Bad("w3c: bad date/time");
        }
        let Some(src) = get(c.src).and_then(parse_ip) else {
            return LineOutcome::Bad("w3c: bad client address");
        };
        let dst = c.dst.iter().find_map(|&i| get(Some(i)).and_then(parse_ip));
        let mut dport = get(c.port).map(parse_u16).unwrap_or(0);
        if dport == 0 {
            dport = match get(c.scheme) {
                Some(s) if s.eq_ignore_ascii_case("https") || s.eq_ignore_ascii_case("ssl") => 443,
                Some(s) if s.eq_ignore_ascii_case("http") => 80,
                _ => 0,
            };
        }
        if dport == 0 && get(c.method).is_some_and(|m| m.eq_ignore_ascii_case("CONNECT")) {
            dport = 443;
        }
        LineFields {
            time,
            src: Some(src),
            dst,
            dport,
            host: get(c.host).or(get(c.uri)),
            user: get(c.user),
            bytes_up: get(c.up).map(parse_u64).unwrap_or(0),
            bytes_down: get(c.down).map(parse_u64).unwrap_or(0),
            ..LineFields::default()
        }
        .into_record(fallback)
    }

    fn set_fields(&mut self, f: &str) {
        let names: Vec<&str> = f.split_ascii_whitespace().collect();
        let pos = |cands: &[&str]| {
            cands
                .iter()
                .find_map(|c| names.iter().position(|n| n.eq_ignore_ascii_case(c)))
        };
        let mut dst = Vec::new();
        for cand in [
            "r-ip",
            "r-supplier-ip",
            "s-supplier-ip",
            "cs-ip",
            "s-supplier-name",
            "r-supplier-name",
        ] {
            if let Some(p) = names.iter().position(|n| n.eq_ignore_ascii_case(cand)) {
                dst.push(p);
            }
        }
        self.cols = Some(Cols {
            n: names.len(),
            date: pos(&["date"]),
            time: pos(&["time"]),
            src: pos(&["c-ip", "c-ip-address", "x-client-address"]),
            user: pos(&["cs-username", "cs-userdn", "cs-user"]),
            host: pos(&["cs-host", "cs(host)", "r-host", "x-cs-host"]),
            uri: pos(&["cs-uri", "cs-url", "cs-uri-stem"]),
            dst,
            up: pos(&["cs-bytes"]),
            down: pos(&["sc-bytes"]),
            port: pos(&["cs-uri-port", "r-port"]),
            scheme: pos(&["cs-uri-scheme"]),
            method: pos(&["cs-method"]),
        });
    }
}

pub(crate) fn sniff(line: &str) -> bool {
    line.starts_with("#Fields:") || line.starts_with("#Software:") || line.starts_with("#Version:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bluecoat_line() {
        let mut st = W3cState::default();
        let now = Utc::now();
        assert!(matches!(
            st.parse("2005-05-04 17:16:12 1 45.110.2.82 200", now),
            LineOutcome::Bad(_)
        ));
        assert!(matches!(
            st.parse("#Fields: date time time-taken c-ip sc-status s-action sc-bytes cs-bytes cs-method cs-uri-scheme cs-host cs-uri-path cs-uri-query cs-username s-hierarchy s-supplier-name rs(Content-Type) cs(User-Agent) sc-filter-result sc-filter-category x-virus-id s-ip s-sitename x-virus-details x-icap-error-code x-icap-error-details", now),
            LineOutcome::Skip
        ));
        let line = r#"2005-05-04 17:16:12 1 45.110.2.82 200 TCP_HIT 941 729 GET http www.inmobus.com /wcm/assets/images/imagefileicon.gif - george DIRECT 38.112.92.20 image/gif "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1; SV1; .NET CLR 1.1.4322)" PROXIED none - 192.16.170.42 SG-HTTP-Service - none -"#;
        let LineOutcome::Record(r) = st.parse(line, now) else {
            panic!("no record")
        };
        assert_eq!(r.name.as_deref(), Some("www.inmobus.com"));
        assert_eq!(r.user.as_deref(), Some("george"));
        assert_eq!(r.dst.to_string(), "38.112.92.20");
        assert_eq!((r.bytes_up, r.bytes_down, r.dport), (729, 941, 80));
    }
}
