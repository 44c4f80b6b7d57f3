//! Names from the network as flows keep them: validated ([`clean_name`]) and shared.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

/// Names shared between flows: a gateway sees the same few thousand names on most of its
/// flows, so a flow holds a reference to one copy instead of a copy of its own.
#[derive(Debug, Default)]
pub(super) struct Names {
    set: HashSet<Arc<str>, ahash::RandomState>,
}

/// Longest name kept as sent: a DNS name has at most 253 characters in text form.
pub const MAX_NAME_LEN: usize = 253;

/// A name from the network as the flow table keeps it. An SNI, Host header or DNS name is
/// attacker-chosen text that ends up in terminals, logs and reports, so only a plain host
/// name is kept as sent: ASCII letters, digits, `-`, `_` and `.`, at most [`MAX_NAME_LEN`]
/// bytes (an IP literal, as a Host header may carry, counts as plain too). Anything else is
/// written with each other byte as `\xNN` (a backslash as `\x5c`), cut to
/// [`MAX_NAME_LEN`] bytes on an escape boundary and then ending in `\~`: a backslash in a
/// name always means "not as sent", and no escaped name can equal a real host name (so it
/// never matches the catalog as one).
pub fn clean_name(raw: &str) -> std::borrow::Cow<'_, str> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if raw.len() <= MAX_NAME_LEN && (raw.bytes().all(plain) || raw.parse::<IpAddr>().is_ok()) {
        return std::borrow::Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len().min(MAX_NAME_LEN + 2));
    for b in raw.bytes() {
        let piece_len = if plain(b) { 1 } else { 4 };
        if out.len() + piece_len > MAX_NAME_LEN - 2 {
            out.push_str("\\~");
            return std::borrow::Cow::Owned(out);
        }
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    std::borrow::Cow::Owned(out)
}

impl Names {
    /// The shared copy of `name` (validated by [`clean_name`]). Names no flow holds any
    /// more are forgotten once the set has grown to twice the live flows, so it stays within
    /// a small multiple of the table.
    pub(super) fn get(&mut self, name: &str, live_flows: usize) -> Arc<str> {
        let name = &*clean_name(name);
        if let Some(n) = self.set.get(name) {
            return n.clone();
        }
        if self.set.len() >= live_flows.max(1024).saturating_mul(2) {
            self.set.retain(|n| Arc::strong_count(n) > 1);
        }
        let n: Arc<str> = Arc::from(name);
        self.set.insert(n.clone());
        n
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::*;

    #[test]
    fn names_are_shared_and_the_set_stays_bounded() {
        let mut names = Names::default();
        let a = names.get("www.example.com", 10);
        let b = names.get("www.example.com", 10);
        assert!(Arc::ptr_eq(&a, &b));
        // Names nobody holds are forgotten once the set reaches twice max(live, 1024).
        for i in 0..10_000 {
            let _ = names.get(&format!("n{i}.example"), 10);
            assert!(names.set.len() <= 2048 + 1, "{}", names.set.len());
        }
        assert!(
            names.set.contains("www.example.com"),
            "still held by a and b"
        );
    }

    #[test]
    fn names_from_the_network_are_validated_at_ingestion() {
        assert_eq!(clean_name("www.Example-1_a.com"), "www.Example-1_a.com");
        assert_eq!(clean_name("2001:db8::1"), "2001:db8::1");
        assert_eq!(clean_name("a\u{1b}[2J.com"), "a\\x1b\\x5b2J.com");
        assert_eq!(clean_name("caf\u{e9}.com"), "caf\\xc3\\xa9.com");
        assert_eq!(
            clean_name("a\\x41"),
            "a\\x5cx41",
            "a backslash is escaped too"
        );
        let long = clean_name(&"a".repeat(300)).into_owned();
        assert!(
            long.len() <= MAX_NAME_LEN && long.ends_with("\\~"),
            "{long}"
        );
        let long = clean_name(&"\u{e9}".repeat(300)).into_owned();
        assert!(
            long.len() <= MAX_NAME_LEN && long.ends_with("\\~"),
            "{long}"
        );
        assert_eq!(clean_name(&"a".repeat(253)).len(), 253);

        // Through the table: an SNI with an escape sequence and a multi-byte character.
        let mut t = FlowTable::new(FlowTableLimits::default());
        let sni = "x\u{1b}]0;owned\u{7}\u{e9}.example";
        t.observe_packet(&pkt(
            [10, 0, 0, 2],
            50000,
            [192, 0, 2, 1],
            443,
            L4Proto::Tcp,
            1,
            tcp_flags::ACK | tcp_flags::PSH,
            &hello(sni),
            0,
        ));
        let r: Vec<FlowRecord> = t.records().collect();
        assert_eq!(
            r[0].name.as_deref(),
            Some("x\\x1b\\x5d0\\x3bowned\\x07\\xc3\\xa9.example")
        );
        assert_eq!(r[0].name_source, Some(NameSource::Sni));
    }
}
