//! Cisco Umbrella CSV exports (S3 log management): DNS logs
//! (`timestamp, identity, identities, internal ip, external ip, action, query type, rcode,
//! domain, categories, ...`) and secure web gateway (proxy) logs
//! (`timestamp, identities, internal ip, external ip, destination ip, content type,
//! verdict, url, referer, user agent, status, request size, response size, ...`).
//! A DNS query is one transaction with no bytes.

use std::borrow::Cow;

use chrono::{DateTime, Utc};

use super::util::{
    LineFields, LineOutcome, field, parse_date_time, parse_ip, parse_u64, split_csv,
};
use tollgate_discovery::record::L4Proto;

fn fields(line: &str) -> Vec<Cow<'_, str>> {
    let mut f = Vec::with_capacity(40);
    split_csv(line, b',', &mut f);
    f
}

pub(crate) fn dns_sniff(line: &str) -> bool {
    if !line.starts_with('"') {
        return false;
    }
    let f = fields(line);
    f.len() >= 9
        && parse_date_time(field(&f, 0)).is_some()
        && field(&f, 6).trim().ends_with(')')
        && field(&f, 6).contains(" (")
}

pub(crate) fn proxy_sniff(line: &str) -> bool {
    if !line.starts_with('"') {
        return false;
    }
    let f = fields(line);
    let verdict = field(&f, 6);
    f.len() >= 13
        && parse_date_time(field(&f, 0)).is_some()
        && (verdict.eq_ignore_ascii_case("allowed") || verdict.eq_ignore_ascii_case("blocked"))
        && field(&f, 7).contains("://")
}

pub(crate) fn dns(line: &str, fallback: DateTime<Utc>) -> LineOutcome {
    let f = fields(line);
    if f.len() < 9 {
        return LineOutcome::Bad("umbrella dns: fewer than 9 fields");
    }
    let Some(time) = parse_date_time(field(&f, 0)) else {
        return LineOutcome::Bad("umbrella dns: bad timestamp");
    };
    let Some(src) = parse_ip(field(&f, 3)) else {
        return LineOutcome::Bad("umbrella dns: bad internal IP");
    };
    LineFields {
        time: Some(time),
        src: Some(src),
        dport: 53,
        proto: Some(L4Proto::Udp),
        host: Some(field(&f, 8).trim()),
        user: Some(field(&f, 1)),
        ..LineFields::default()
    }
    .into_record(fallback)
}

pub(crate) fn proxy(line: &str, fallback: DateTime<Utc>) -> LineOutcome {
    let f = fields(line);
    if f.len() < 13 {
        return LineOutcome::Bad("umbrella proxy: fewer than 13 fields");
    }
    let Some(time) = parse_date_time(field(&f, 0)) else {
        return LineOutcome::Bad("umbrella proxy: bad timestamp");
    };
    // Identities without an internal address (networks) log only the external one.
    let Some(src) = parse_ip(field(&f, 2)).or_else(|| parse_ip(field(&f, 3))) else {
        return LineOutcome::Bad("umbrella proxy: no client IP");
    };
    LineFields {
        time: Some(time),
        src: Some(src),
        dst: parse_ip(field(&f, 4)),
        host: Some(field(&f, 7)),
        user: Some(field(&f, 1)).filter(|u| !u.contains(',')),
        bytes_up: parse_u64(field(&f, 11)),
        bytes_down: parse_u64(field(&f, 12)),
        ..LineFields::default()
    }
    .into_record(fallback)
}
