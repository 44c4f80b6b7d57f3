//! Name and IP matching.
//!
//! Domain rules live in one hash map keyed by the rule's host part; each entry holds the app
//! of the exact rule (`host`) and of the wildcard rule (`*.host`). A lookup walks the name's
//! suffixes at label boundaries from the longest to the shortest — `a.b.example.com`, then
//! `b.example.com`, `example.com`, `com` — and the first hit wins, so the most specific rule
//! always wins without sorting. The full name is only checked for an exact rule (a wildcard
//! never matches its own host); shorter suffixes only for wildcard rules. That is one hash
//! lookup per label, no allocation (names with upper-case letters are lowered into a stack
//! buffer).
//!
//! IP ranges: one hash map per prefix length present, probed from the longest prefix down.

use std::collections::HashMap;
use std::net::IpAddr;

use foldhash::fast::RandomState;

/// Longest host name accepted for lookups (RFC 1035: 253 characters without the final dot).
pub const MAX_NAME_LEN: usize = 253;

/// How a rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchKind {
    /// An exact host rule.
    Exact,
    /// A `*.suffix` wildcard rule.
    Suffix,
    /// An IP range.
    Ip,
}

impl MatchKind {
    /// `exact`, `suffix`, `ip`.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchKind::Exact => "exact",
            MatchKind::Suffix => "suffix",
            MatchKind::Ip => "ip",
        }
    }
}

/// A parsed domain rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DomainRule {
    /// Lowercase host without a trailing dot (without the `*.` of a wildcard).
    pub host: String,
    /// `*.host`.
    pub wildcard: bool,
}

/// Parses and normalises a rule: lowercases it, drops one trailing dot, and checks the labels.
/// Whether `host` (lowercase) is itself a registry's public suffix (`co.uk`, `com.cn`).
pub(crate) fn is_registry_suffix(host: &str) -> bool {
    psl::suffix(host.as_bytes())
        .is_some_and(|s| s.as_bytes() == host.as_bytes() && s.typ() == Some(psl::Type::Icann))
}

pub(crate) fn parse_rule(pattern: &str) -> Result<DomainRule, &'static str> {
    let p = pattern.trim().to_ascii_lowercase();
    let p = p.strip_suffix('.').unwrap_or(&p);
    let (wildcard, host) = match p.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, p),
    };
    if host.is_empty() {
        return Err("empty host name");
    }
    if host.len() > MAX_NAME_LEN {
        return Err("longer than 253 characters");
    }
    if host.contains('*') {
        return Err("`*` is only allowed as the whole first label, as in `*.example.com`");
    }
    let mut labels = 0usize;
    for label in host.split('.') {
        labels += 1;
        if label.is_empty() {
            return Err("empty label (two dots in a row, or a leading dot)");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err("only letters, digits, `-` and `_` are allowed in labels");
        }
    }
    if wildcard && labels < 2 {
        return Err("a wildcard must stand for names below a domain of two labels or more");
    }
    // `*.co.uk` or `ac.uk` would claim every site a registry hands out below it (a hostile
    // or careless catalog could make all of .co.uk one app). Registries' suffixes (the ICANN
    // part of the Public Suffix List) are refused; platforms' own (`github.io`,
    // `s3.amazonaws.com`) stay allowed, since they name the platform. A single-label exact
    // name is an intranet host, not a suffix.
    if labels >= 2 && is_registry_suffix(host) {
        return Err(
            "a public suffix (a registry's, such as `co.uk`): it would claim every site below it",
        );
    }
    Ok(DomainRule {
        host: host.to_string(),
        wildcard,
    })
}

#[derive(Debug, Clone, Default)]
struct Slot {
    exact: Option<u32>,
    wildcard: Option<u32>,
    /// `*.host`, kept so a match can borrow it.
    wildcard_rule: Option<Box<str>>,
}

/// The domain half of the matcher.
#[derive(Debug, Clone, Default)]
pub(crate) struct DomainMatcher {
    map: HashMap<Box<str>, Slot, RandomState>,
}

/// What a lookup found: app index, the rule text, the kind.
pub(crate) type Hit<'a> = (u32, &'a str, MatchKind);

impl DomainMatcher {
    /// Adds a rule for app `app`. Returns the app that already had it, if any (the new one
    /// then replaces it when `replace`).
    pub fn insert(&mut self, rule: &DomainRule, app: u32, replace: bool) -> Option<u32> {
        let slot = self.map.entry(rule.host.as_str().into()).or_default();
        let place = if rule.wildcard {
            &mut slot.wildcard
        } else {
            &mut slot.exact
        };
        let previous = *place;
        if previous.is_none() || replace {
            *place = Some(app);
        }
        if rule.wildcard && slot.wildcard_rule.is_none() {
            slot.wildcard_rule = Some(format!("*.{}", rule.host).into_boxed_str());
        }
        previous
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.map
            .values()
            .map(|s| usize::from(s.exact.is_some()) + usize::from(s.wildcard.is_some()))
            .sum()
    }

    /// The most specific rule for `name`.
    pub fn lookup(&self, name: &str) -> Option<Hit<'_>> {
        let mut buf = [0u8; MAX_NAME_LEN];
        let name = normalize(name, &mut buf)?;
        if let Some((key, slot)) = self.map.get_key_value(name)
            && let Some(app) = slot.exact
        {
            return Some((app, key, MatchKind::Exact));
        }
        let bytes = name.as_bytes();
        let mut i = 0usize;
        while let Some(off) = bytes
            .get(i..)
            .and_then(|rest| rest.iter().position(|&b| b == b'.'))
        {
            let start = i + off + 1;
            let suffix = name.get(start..)?;
            if let Some(slot) = self.map.get(suffix)
                && let (Some(app), Some(rule)) = (slot.wildcard, slot.wildcard_rule.as_deref())
            {
                return Some((app, rule, MatchKind::Suffix));
            }
            i = start;
        }
        None
    }
}

/// Lowercases `name` (into `buf` when it has upper-case letters), drops one trailing dot and a
/// `:port` suffix (HTTP Host). `None` when empty or too long.
fn normalize<'a>(name: &'a str, buf: &'a mut [u8; MAX_NAME_LEN]) -> Option<&'a str> {
    let mut name = name.strip_suffix('.').unwrap_or(name);
    if let Some((host, port)) = name.rsplit_once(':')
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && !host.contains(':')
    {
        name = host.strip_suffix('.').unwrap_or(host);
    }
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return None;
    }
    if !name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(name);
    }
    let out = buf.get_mut(..name.len())?;
    for (o, b) in out.iter_mut().zip(name.bytes()) {
        *o = b.to_ascii_lowercase();
    }
    // ASCII lowercasing keeps UTF-8 valid, so this cannot fail; `ok()` keeps it panic-free.
    std::str::from_utf8(out).ok()
}

/// Per prefix length (longest first): network address -> (app, rule index).
type PrefixTable<K> = Vec<(u8, HashMap<K, (u32, u32), RandomState>)>;

/// The IP half of the matcher.
#[derive(Debug, Clone, Default)]
pub(crate) struct IpMatcher {
    v4: PrefixTable<u32>,
    v6: PrefixTable<u128>,
    rules: Vec<Box<str>>,
}

fn mask4(addr: u32, len: u8) -> u32 {
    addr.checked_shr(32 - u32::from(len.min(32)))
        .and_then(|x| x.checked_shl(32 - u32::from(len.min(32))))
        .unwrap_or(0)
}

fn mask6(addr: u128, len: u8) -> u128 {
    addr.checked_shr(128 - u32::from(len.min(128)))
        .and_then(|x| x.checked_shl(128 - u32::from(len.min(128))))
        .unwrap_or(0)
}

/// Puts `key/len -> value` into `table`; returns the app that had it.
fn insert_prefix<K: std::hash::Hash + Eq>(
    table: &mut PrefixTable<K>,
    len: u8,
    key: K,
    value: (u32, u32),
    replace: bool,
) -> Option<u32> {
    if !table.iter().any(|(l, _)| *l == len) {
        table.push((len, HashMap::default()));
        table.sort_by_key(|(l, _)| std::cmp::Reverse(*l));
    }
    let map = &mut table.iter_mut().find(|(l, _)| *l == len)?.1;
    let prev = map.get(&key).map(|v| v.0);
    if prev.is_none() || replace {
        map.insert(key, value);
    }
    prev
}

impl IpMatcher {
    /// Adds a range for app `app`; returns the app that had the same range, if any.
    pub fn insert(&mut self, net: ipnet::IpNet, app: u32, replace: bool) -> Option<u32> {
        let net = net.trunc();
        let rule = u32::try_from(self.rules.len()).unwrap_or(u32::MAX);
        let previous = match net {
            ipnet::IpNet::V4(n) => insert_prefix(
                &mut self.v4,
                n.prefix_len(),
                u32::from(n.network()),
                (app, rule),
                replace,
            ),
            ipnet::IpNet::V6(n) => insert_prefix(
                &mut self.v6,
                n.prefix_len(),
                u128::from(n.network()),
                (app, rule),
                replace,
            ),
        };
        self.rules.push(net.to_string().into_boxed_str());
        previous
    }

    /// The longest-prefix range containing `ip` (IPv4-mapped IPv6 is looked up as IPv4).
    pub fn lookup(&self, ip: IpAddr) -> Option<Hit<'_>> {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        let (app, rule) = match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .find_map(|(len, map)| map.get(&mask4(a, *len)).copied())?
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6
                    .iter()
                    .find_map(|(len, map)| map.get(&mask6(a, *len)).copied())?
            }
        };
        let rule = self.rules.get(usize::try_from(rule).ok()?)?;
        Some((app, rule, MatchKind::Ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dm(rules: &[(&str, u32)]) -> DomainMatcher {
        let mut m = DomainMatcher::default();
        for (r, app) in rules {
            let rule = parse_rule(r).expect("test rule");
            m.insert(&rule, *app, false);
        }
        m
    }

    #[test]
    fn most_specific_wins() {
        let m = dm(&[
            ("*.example.com", 1),
            ("a.b.example.com", 2),
            ("*.b.example.com", 3),
            ("example.com", 4),
        ]);
        assert_eq!(
            m.lookup("a.b.example.com"),
            Some((2, "a.b.example.com", MatchKind::Exact))
        );
        assert_eq!(
            m.lookup("x.a.b.example.com"),
            Some((3, "*.b.example.com", MatchKind::Suffix))
        );
        assert_eq!(
            m.lookup("c.b.example.com"),
            Some((3, "*.b.example.com", MatchKind::Suffix))
        );
        assert_eq!(
            m.lookup("b.example.com"),
            Some((1, "*.example.com", MatchKind::Suffix))
        );
        assert_eq!(
            m.lookup("example.com"),
            Some((4, "example.com", MatchKind::Exact))
        );
        assert_eq!(m.lookup("notexample.com"), None);
        assert_eq!(m.lookup("com"), None);
    }

    #[test]
    fn wildcard_does_not_match_its_own_host() {
        let m = dm(&[("*.acme.example", 1)]);
        assert_eq!(m.lookup("acme.example"), None);
        assert_eq!(
            m.lookup("www.acme.example"),
            Some((1, "*.acme.example", MatchKind::Suffix))
        );
        // A label boundary is required: "xacme.example" is not below "acme.example".
        assert_eq!(m.lookup("xacme.example"), None);
    }

    #[test]
    fn case_trailing_dot_and_port() {
        let m = dm(&[("*.Dropbox.COM.", 1), ("dropbox.com", 2)]);
        assert_eq!(
            m.lookup("Client.DROPBOX.com."),
            Some((1, "*.dropbox.com", MatchKind::Suffix))
        );
        assert_eq!(
            m.lookup("DROPBOX.COM"),
            Some((2, "dropbox.com", MatchKind::Exact))
        );
        assert_eq!(
            m.lookup("www.dropbox.com:443"),
            Some((1, "*.dropbox.com", MatchKind::Suffix))
        );
    }

    #[test]
    fn junk_names_do_not_panic() {
        let m = dm(&[("*.example.com", 1)]);
        for n in [
            "",
            ".",
            "..",
            "...example.com",
            ":",
            ":80",
            "é.example.com",
            "ÉÉ.EXAMPLE.COM",
            "\u{0}.example.com",
        ] {
            let _ = m.lookup(n);
        }
        assert_eq!(m.lookup(&"a".repeat(300)), None);
        assert_eq!(
            m.lookup("ÉÉ.EXAMPLE.COM"),
            Some((1, "*.example.com", MatchKind::Suffix))
        );
    }

    /// Arbitrary bytes (as a gateway may see in a broken SNI or DNS name) never panic and
    /// only ever match through a real label boundary.
    #[test]
    fn random_names_never_panic() {
        let m = dm(&[("*.example.com", 1), ("a.example.com", 2), ("b.c", 3)]);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let alphabet = b"abcABC.-:_\xc3\xa9\x00exampl.com";
        for len in 0..300usize {
            for _ in 0..20 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        alphabet[usize::try_from(x % alphabet.len() as u64).unwrap_or(0)]
                    })
                    .collect();
                let name = String::from_utf8_lossy(&bytes);
                if let Some((_, rule, kind)) = m.lookup(&name) {
                    let lower = name.to_ascii_lowercase();
                    let lower = lower.trim_end_matches('.');
                    match kind {
                        MatchKind::Suffix => {
                            let host = rule.trim_start_matches("*.");
                            assert!(lower.contains(&format!(".{host}")), "{name:?} {rule}");
                        }
                        _ => assert!(lower.starts_with(rule), "{name:?} {rule}"),
                    }
                }
            }
        }
    }

    #[test]
    fn bad_rules() {
        for r in [
            "",
            "*.",
            "*.com",
            "a..b",
            ".a.b",
            "a.*.b",
            "*a.b.c",
            "exa mple.com",
            "**.a.b",
        ] {
            assert!(parse_rule(r).is_err(), "{r:?} accepted");
        }
        assert!(parse_rule(&format!("{}.com", "a".repeat(64))).is_err());
        // A registry's suffix would claim every site below it.
        for r in [
            "*.co.uk",
            "co.uk",
            "*.ac.uk",
            "com.cn",
            "*.gov.cn",
            "*.COM.AU.",
        ] {
            assert_eq!(
                parse_rule(r).map_err(|e| e.contains("public suffix")),
                Err(true),
                "{r:?}"
            );
        }
        // A platform's own suffix names the platform; a site below a registry suffix and an
        // intranet host are ordinary rules.
        for r in [
            "*.github.io",
            "*.s3.amazonaws.com",
            "bbc.co.uk",
            "*.bbc.co.uk",
            "wiki",
        ] {
            assert!(parse_rule(r).is_ok(), "{r:?} refused");
        }
        assert_eq!(
            parse_rule(" *.Example.COM. "),
            Ok(DomainRule {
                host: "example.com".into(),
                wildcard: true
            })
        );
    }

    #[test]
    fn ip_longest_prefix() {
        let mut m = IpMatcher::default();
        m.insert("10.0.0.0/8".parse().expect("net"), 1, false);
        m.insert("10.1.0.0/16".parse().expect("net"), 2, false);
        m.insert("10.1.2.0/24".parse().expect("net"), 3, false);
        m.insert("2001:db8::/32".parse().expect("net"), 4, false);
        m.insert("0.0.0.0/0".parse().expect("net"), 5, false);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            m.lookup(ip("10.1.2.3")),
            Some((3, "10.1.2.0/24", MatchKind::Ip))
        );
        assert_eq!(
            m.lookup(ip("10.1.9.3")),
            Some((2, "10.1.0.0/16", MatchKind::Ip))
        );
        assert_eq!(
            m.lookup(ip("10.9.9.9")),
            Some((1, "10.0.0.0/8", MatchKind::Ip))
        );
        assert_eq!(
            m.lookup(ip("192.0.2.1")),
            Some((5, "0.0.0.0/0", MatchKind::Ip))
        );
        assert_eq!(
            m.lookup(ip("::ffff:10.1.2.3")),
            Some((3, "10.1.2.0/24", MatchKind::Ip))
        );
        assert_eq!(
            m.lookup(ip("2001:db8:1::1")),
            Some((4, "2001:db8::/32", MatchKind::Ip))
        );
        assert_eq!(m.lookup(ip("2001:db9::1")), None);
    }
}
