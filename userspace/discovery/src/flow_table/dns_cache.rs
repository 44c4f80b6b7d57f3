//! What DNS answers taught the table: the IP-to-name cache that names flows whose own first
//! flight carried no name, and the ECH hints from HTTPS/SVCB records that tell a browser's
//! GREASE ECH from real ECH.
//!
//! Both are bounded by [`FlowTableLimits::max_dns_cache`](super::FlowTableLimits): past it
//! the oldest learned address (or hint) goes first, counted in [`DnsCache::evicted`]. An
//! address learned again keeps its place in that order, so a busy name cannot push out the
//! rest by being answered over and over; entries past their expiry go at each
//! [`DnsCache::expire`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::names::clean_name;

#[derive(Debug, Clone)]
struct DnsEntry {
    name: Arc<str>,
    learned: DateTime<Utc>,
    expires: DateTime<Utc>,
}

/// The IP-to-name cache and the ECH hints, with their shared capacity.
#[derive(Debug)]
pub(super) struct DnsCache {
    entries: HashMap<IpAddr, DnsEntry>,
    /// Addresses in the order they were first learned (eviction order).
    order: VecDeque<IpAddr>,
    capacity: usize,
    /// Shortest lifetime given to an entry, whatever the TTL said.
    min_ttl: Duration,
    ech: EchHints,
    evicted: u64,
}

impl DnsCache {
    pub(super) fn new(capacity: usize, min_ttl: Duration) -> Self {
        DnsCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            min_ttl,
            ech: EchHints::default(),
            evicted: 0,
        }
    }

    /// `ip` answers for `name` from `ts` for `ttl` (at least the minimum lifetime). The TTL
    /// was capped by the caller.
    pub(super) fn learn(&mut self, ip: IpAddr, name: &str, ttl: Duration, ts: DateTime<Utc>) {
        if self.capacity == 0 {
            return;
        }
        let life = ttl.max(self.min_ttl);
        let expires = ts + TimeDelta::from_std(life).unwrap_or(TimeDelta::MAX);
        if !self.entries.contains_key(&ip) {
            while self.entries.len() >= self.capacity {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                if self.entries.remove(&old).is_some() {
                    self.evicted += 1;
                }
            }
            self.order.push_back(ip);
        }
        self.entries.insert(
            ip,
            DnsEntry {
                name: Arc::from(&*clean_name(name)),
                learned: ts,
                expires,
            },
        );
    }

    /// The name for `ip` at time `at`, if an answer covering it was seen. An answer seen up
    /// to two seconds after `at` still counts: the flow's first packet and the answer that
    /// named its server can be read in either order.
    pub(super) fn name_at(&self, ip: IpAddr, at: DateTime<Utc>) -> Option<&str> {
        let e = self.entries.get(&ip)?;
        (e.learned <= at + TimeDelta::seconds(2) && at <= e.expires).then_some(&*e.name)
    }

    /// Every entry: address, name, expiry.
    pub(super) fn entries(&self) -> impl Iterator<Item = (IpAddr, &str, DateTime<Utc>)> + '_ {
        self.entries
            .iter()
            .map(|(ip, e)| (*ip, &*e.name, e.expires))
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries pushed out by newer ones since the cache was made.
    pub(super) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Drops the entries expired as of `now`.
    pub(super) fn expire(&mut self, now: DateTime<Utc>) {
        self.entries.retain(|_, e| e.expires >= now);
        let entries = &self.entries;
        self.order.retain(|ip| entries.contains_key(ip));
    }

    /// An HTTPS/SVCB answer for `name`: whether it published an ECH config, and the
    /// configs' public names.
    pub(super) fn learn_ech(&mut self, name: &str, ech: bool, public_names: &[String]) {
        self.ech.learn(self.capacity, name, ech, public_names);
    }

    /// Whether a hello's ECH extension for `sni` is GREASE (`Some(true)`), real
    /// (`Some(false)`), or not known.
    pub(super) fn ech_grease(&self, sni: Option<&str>, has_ech: bool) -> Option<bool> {
        self.ech.grease(sni, has_ech)
    }
}

/// What DNS HTTPS/SVCB answers said about ECH, for telling GREASE ECH from real ECH.
#[derive(Debug, Default)]
struct EchHints {
    /// Lower-cased name -> whether its HTTPS record carried an ECH config.
    published: HashMap<String, bool>,
    /// Lower-cased public_name values from ECH configs.
    public_names: HashSet<String>,
    order: VecDeque<(bool, String)>,
}

impl EchHints {
    fn learn(&mut self, cap: usize, name: &str, ech: bool, public_names: &[String]) {
        let add = |public: bool, n: String, this: &mut Self| {
            while this.order.len() >= cap.max(1) {
                match this.order.pop_front() {
                    Some((true, old)) => {
                        this.public_names.remove(&old);
                    }
                    Some((false, old)) => {
                        this.published.remove(&old);
                    }
                    None => break,
                }
            }
            this.order.push_back((public, n));
        };
        let key = name.to_ascii_lowercase();
        if self.published.insert(key.clone(), ech).is_none() {
            add(false, key, self);
        }
        for p in public_names {
            let p = p.to_ascii_lowercase();
            if self.public_names.insert(p.clone()) {
                add(true, p, self);
            }
        }
    }

    fn grease(&self, sni: Option<&str>, has_ech: bool) -> Option<bool> {
        let sni = sni?.to_ascii_lowercase();
        if !has_ech {
            return None;
        }
        if self.public_names.contains(&sni) {
            return Some(false);
        }
        match self.published.get(&sni) {
            Some(false) => Some(true),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::*;
    use std::net::Ipv4Addr;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap_or_default()
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn the_oldest_learned_address_goes_first_and_is_counted() {
        let mut c = DnsCache::new(2, Duration::from_secs(30));
        c.learn(ip(1), "one.example", Duration::from_secs(300), at(0));
        c.learn(ip(2), "two.example", Duration::from_secs(300), at(1));
        // Learned again: keeps its place, takes the new name.
        c.learn(ip(1), "uno.example", Duration::from_secs(300), at(2));
        c.learn(ip(3), "three.example", Duration::from_secs(300), at(3));
        assert_eq!(c.len(), 2);
        assert_eq!(c.evicted(), 1);
        assert_eq!(c.name_at(ip(1), at(4)), None);
        assert_eq!(c.name_at(ip(2), at(4)), Some("two.example"));
        assert_eq!(c.name_at(ip(3), at(4)), Some("three.example"));
    }

    #[test]
    fn an_entry_lives_at_least_the_minimum_and_no_longer_than_its_ttl() {
        let mut c = DnsCache::new(8, Duration::from_secs(30));
        c.learn(ip(1), "short.example", Duration::from_secs(1), at(0));
        c.learn(ip(2), "long.example", Duration::from_secs(100), at(0));
        assert_eq!(c.name_at(ip(1), at(29)), Some("short.example"));
        assert_eq!(c.name_at(ip(1), at(31)), None);
        // Not before the answer (beyond the two-second grace).
        assert_eq!(c.name_at(ip(2), at(-3)), None);
        assert_eq!(c.name_at(ip(2), at(-1)), Some("long.example"));
        c.expire(at(50));
        assert_eq!(c.len(), 1);
        c.expire(at(101));
        assert_eq!(c.len(), 0);
        assert_eq!(c.evicted(), 0, "expiry is not eviction");
    }

    #[test]
    fn a_zero_capacity_cache_learns_nothing() {
        let mut c = DnsCache::new(0, Duration::from_secs(30));
        c.learn(ip(1), "one.example", Duration::from_secs(300), at(0));
        c.learn_ech("one.example", false, &[]);
        assert_eq!(c.len(), 0);
        assert_eq!(c.name_at(ip(1), at(1)), None);
    }

    #[test]
    fn ech_hints_tell_grease_from_real_and_forget_the_oldest() {
        let mut c = DnsCache::new(2, Duration::from_secs(30));
        c.learn_ech("plain.example", false, &[]);
        assert_eq!(c.ech_grease(Some("Plain.Example"), true), Some(true));
        assert_eq!(c.ech_grease(Some("plain.example"), false), None);
        c.learn_ech("ech.example", true, &["public.example".to_string()]);
        // Capacity 2: the third hint pushed out the first.
        assert_eq!(c.ech_grease(Some("plain.example"), true), None);
        assert_eq!(c.ech_grease(Some("public.example"), true), Some(false));
        assert_eq!(c.ech_grease(Some("ech.example"), true), None);
    }

    #[test]
    fn dns_cache_names_later_flow_and_expires() {
        let mut t = FlowTable::new(FlowTableLimits::default());
        let c = [10, 0, 0, 2];
        let resolver = [10, 0, 0, 1];
        // Response for www.github.com -> CNAME github.com -> 140.82.121.3, TTL 60.
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        m.extend_from_slice(b"\x03www\x06github\x03com\x00\x00\x01\x00\x01");
        m.extend_from_slice(&[0xc0, 0x0c, 0, 5, 0, 1, 0, 0, 0x0e, 0x10, 0, 2, 0xc0, 0x10]);
        m.extend_from_slice(&[0xc0, 0x10, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 140, 82, 121, 3]);
        t.observe_packet(&pkt(resolver, 53, c, 40000, L4Proto::Udp, 0, 0, &m, 0));
        t.observe_packet(&pkt(
            c,
            40001,
            [140, 82, 121, 3],
            443,
            L4Proto::Tcp,
            5,
            tcp_flags::SYN,
            &[],
            1,
        ));
        t.observe_packet(&pkt(
            c,
            40002,
            [140, 82, 121, 3],
            443,
            L4Proto::Tcp,
            5,
            tcp_flags::SYN,
            &[],
            500,
        ));
        let mut recs: Vec<FlowRecord> = t.records().collect();
        recs.sort_by_key(|r| r.sport);
        assert_eq!(recs[0].name.as_deref(), Some("www.github.com"));
        assert_eq!(recs[0].name_source, Some(NameSource::Dns));
        assert_eq!(recs[0].src, IpAddr::V4(Ipv4Addr::from(c))); // response: receiver is client
        assert_eq!(recs[1].name.as_deref(), Some("www.github.com"));
        assert_eq!(recs[2].name, None, "TTL 60 s expired before t=500");
    }

    #[test]
    fn ech_grease_told_from_real_by_dns_https_records() {
        let mut t = FlowTable::new(FlowTableLimits::default());
        let (c, r) = ([10, 0, 0, 2], [10, 0, 0, 1]);
        let a = https_response("secret.example", Some("public.example"));
        let b = https_response("plain.example", None);
        t.observe_packet(&pkt(r, 53, c, 3000, L4Proto::Udp, 0, 0, &a, 0));
        t.observe_packet(&pkt(r, 53, c, 3001, L4Proto::Udp, 0, 0, &b, 0));
        let cases = [
            ("public.example", true, Some(false)),
            ("plain.example", true, Some(true)),
            ("other.example", true, None),
            ("plain.example", false, None),
        ];
        for (i, (sni, ech, _)) in cases.iter().enumerate() {
            let h = hello_with(sni, *ech);
            t.observe_packet(&pkt(
                c,
                4000 + i as u16,
                [1, 1, 1, 1],
                443,
                L4Proto::Tcp,
                1,
                tcp_flags::ACK,
                &h,
                1,
            ));
        }
        for (i, (sni, _, want)) in cases.iter().enumerate() {
            let (rec, meta) = t
                .records_with_meta()
                .find(|(r, _)| r.sport == 4000 + i as u16)
                .expect("flow");
            assert_eq!(rec.name.as_deref(), Some(*sni));
            assert_eq!(meta.ech_grease, *want, "{sni}");
        }
    }
}
