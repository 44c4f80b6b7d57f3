//! Addresses the gateway never blocks or steers, whatever a DNS answer (or anything else
//! learned from traffic) says about them.
//!
//! A DNS answer is evidence about a name, not an order: whoever controls the answer (a spoofed
//! packet, a LAN user's own resolver, a compromised upstream) chooses the addresses in it. If
//! those addresses went into the block or steer tries unchecked, one answer could cut the
//! gateway off from itself, its resolver, its management network or multicast. So every
//! learned address passes [`ProtectedAddrs::check`] first:
//!
//! - loopback, link-local, multicast, unspecified and the IPv4 broadcast address are never
//!   real destinations of an app;
//! - the gateway's own addresses (every interface's, read again on reload by the daemon);
//! - the CIDRs an admin lists in `[enforcement] never_block`;
//! - private addresses (RFC 1918, CGNAT 100.64/10, IPv6 ULA fc00::/7) unless the admin allows
//!   them (`[enforcement] dns_learn_private = true`): a public app's name that resolves to an
//!   internal address is the DNS-rebinding pattern, and blocking it would take an internal
//!   host (a printer, a file server) away from everyone. Sites that run an unsanctioned app on
//!   an internal address can turn it on.
//!
//! Catalog IP ranges an admin configures are not filtered here: they are the admin's own
//! statement, not something learned from traffic.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tollgate_catalog::IpNet;

/// Why an address is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protection {
    Loopback,
    LinkLocal,
    Multicast,
    /// 0.0.0.0, ::, 255.255.255.255 and the rest of 0.0.0.0/8.
    Unspecified,
    /// One of the gateway's own interface addresses.
    GatewayOwn,
    /// Listed in `[enforcement] never_block`.
    NeverBlock,
    /// RFC 1918, CGNAT or ULA, with private learning off.
    Private,
}

impl Protection {
    /// A short label for logs and counters.
    pub fn label(self) -> &'static str {
        match self {
            Protection::Loopback => "loopback",
            Protection::LinkLocal => "link_local",
            Protection::Multicast => "multicast",
            Protection::Unspecified => "unspecified",
            Protection::GatewayOwn => "gateway_own",
            Protection::NeverBlock => "never_block",
            Protection::Private => "private",
        }
    }
}

/// The set of addresses learned verdicts may never name. Cheap to clone; rebuilt by the
/// daemon at start and on reload.
#[derive(Debug, Clone, Default)]
pub struct ProtectedAddrs {
    own: BTreeSet<IpAddr>,
    never_block: Vec<IpNet>,
    allow_private: bool,
}

impl ProtectedAddrs {
    /// `never_block`: the admin's CIDRs; `allow_private`: whether private addresses may be
    /// learned (see the module docs).
    pub fn new(never_block: Vec<IpNet>, allow_private: bool) -> ProtectedAddrs {
        ProtectedAddrs {
            own: BTreeSet::new(),
            never_block: never_block.into_iter().map(|n| n.trunc()).collect(),
            allow_private,
        }
    }

    /// Replaces the gateway's own addresses (IPv4-mapped IPv6 forms are also matched).
    pub fn set_own(&mut self, own: impl IntoIterator<Item = IpAddr>) {
        self.own = own.into_iter().map(canonical).collect();
    }

    /// The gateway's own addresses as last set.
    pub fn own(&self) -> impl Iterator<Item = &IpAddr> {
        self.own.iter()
    }

    /// `Err(why)` when `ip` must never be blocked or steered.
    pub fn check(&self, ip: IpAddr) -> Result<(), Protection> {
        let ip = canonical(ip);
        if let Some(p) = intrinsic(ip) {
            return Err(p);
        }
        if self.own.contains(&ip) {
            return Err(Protection::GatewayOwn);
        }
        if self.never_block.iter().any(|n| n.contains(&ip)) {
            return Err(Protection::NeverBlock);
        }
        if !self.allow_private && is_private(ip) {
            return Err(Protection::Private);
        }
        Ok(())
    }

    /// Whether `ip` is protected (see [`ProtectedAddrs::check`]).
    pub fn is_protected(&self, ip: IpAddr) -> bool {
        self.check(ip).is_err()
    }

    /// Whether any address of `net` is protected (for steering whole prefixes: a prefix that
    /// covers a protected address must not be installed).
    pub fn overlaps(&self, net: IpNet) -> bool {
        let net = net.trunc();
        if self.check(net.network()).is_err() || self.check(net.broadcast()).is_err() {
            return true;
        }
        self.own.iter().any(|a| net.contains(a))
            || self
                .never_block
                .iter()
                .any(|n| n.contains(&net.network()) || net.contains(&n.network()))
    }
}

/// An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is checked as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// Addresses that are never an app's destination, whatever the config says.
fn intrinsic(ip: IpAddr) -> Option<Protection> {
    match ip {
        IpAddr::V4(a) => {
            if a.is_loopback() {
                Some(Protection::Loopback)
            } else if a.is_link_local() {
                Some(Protection::LinkLocal)
            } else if a.is_multicast() {
                Some(Protection::Multicast)
            } else if a.is_unspecified() || a.is_broadcast() || a.octets()[0] == 0 {
                Some(Protection::Unspecified)
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            if a.is_loopback() {
                Some(Protection::Loopback)
            } else if a.is_unicast_link_local() {
                Some(Protection::LinkLocal)
            } else if a.is_multicast() {
                Some(Protection::Multicast)
            } else if a.is_unspecified() {
                Some(Protection::Unspecified)
            } else {
                None
            }
        }
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_private() || is_cgnat(a),
        IpAddr::V6(a) => is_ula(a),
    }
}

fn is_cgnat(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 100 && (o[1] & 0xc0) == 64
}

fn is_ula(a: Ipv6Addr) -> bool {
    (a.segments()[0] & 0xfe00) == 0xfc00
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn intrinsic_ranges_are_protected_whatever_the_config() {
        let p = ProtectedAddrs::new(Vec::new(), true);
        for (a, why) in [
            ("127.0.0.1", Protection::Loopback),
            ("127.9.9.9", Protection::Loopback),
            ("::1", Protection::Loopback),
            ("::ffff:127.0.0.1", Protection::Loopback),
            ("169.254.1.1", Protection::LinkLocal),
            ("fe80::1", Protection::LinkLocal),
            ("224.0.0.251", Protection::Multicast),
            ("239.1.2.3", Protection::Multicast),
            ("ff02::fb", Protection::Multicast),
            ("0.0.0.0", Protection::Unspecified),
            ("0.1.2.3", Protection::Unspecified),
            ("255.255.255.255", Protection::Unspecified),
            ("::", Protection::Unspecified),
        ] {
            assert_eq!(p.check(ip(a)), Err(why), "{a}");
        }
        for a in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "198.18.2.2",
            "10.1.2.3",
        ] {
            assert_eq!(p.check(ip(a)), Ok(()), "{a}");
        }
    }

    #[test]
    fn gateway_own_and_never_block() {
        let mut p = ProtectedAddrs::new(vec![net("203.0.113.0/24"), net("2001:db8::/32")], false);
        p.set_own([ip("198.51.100.7"), ip("2001:2:0:1::1")]);
        assert_eq!(p.check(ip("198.51.100.7")), Err(Protection::GatewayOwn));
        assert_eq!(
            p.check(ip("::ffff:198.51.100.7")),
            Err(Protection::GatewayOwn)
        );
        assert_eq!(p.check(ip("2001:2:0:1::1")), Err(Protection::GatewayOwn));
        assert_eq!(p.check(ip("203.0.113.99")), Err(Protection::NeverBlock));
        assert_eq!(p.check(ip("2001:db8::5")), Err(Protection::NeverBlock));
        assert_eq!(p.check(ip("203.0.114.1")), Ok(()));
        // Own addresses are re-read on reload: the old set is replaced.
        p.set_own([ip("198.51.100.8")]);
        assert_eq!(p.check(ip("198.51.100.7")), Ok(()));
        assert_eq!(p.check(ip("198.51.100.8")), Err(Protection::GatewayOwn));
    }

    #[test]
    fn private_addresses_follow_the_knob() {
        let off = ProtectedAddrs::new(Vec::new(), false);
        let on = ProtectedAddrs::new(Vec::new(), true);
        for a in [
            "10.0.0.1",
            "172.16.5.5",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "fd00::1",
            "fc12::1",
        ] {
            assert_eq!(off.check(ip(a)), Err(Protection::Private), "{a}");
            assert_eq!(on.check(ip(a)), Ok(()), "{a}");
        }
        // Neighbours of the private ranges are public.
        for a in ["100.128.0.1", "172.32.0.1", "11.0.0.1", "fe00::1"] {
            assert_eq!(off.check(ip(a)), Ok(()), "{a}");
        }
    }

    #[test]
    fn prefixes_overlapping_protected_addresses() {
        let mut p = ProtectedAddrs::new(vec![net("203.0.113.0/28")], true);
        p.set_own([ip("198.51.100.7")]);
        assert!(p.overlaps(net("198.51.100.0/24")));
        assert!(p.overlaps(net("203.0.113.0/24")));
        assert!(p.overlaps(net("203.0.113.8/29")));
        assert!(p.overlaps(net("127.0.0.0/8")));
        assert!(p.overlaps(net("0.0.0.0/0")));
        assert!(!p.overlaps(net("93.184.216.0/24")));
    }
}
