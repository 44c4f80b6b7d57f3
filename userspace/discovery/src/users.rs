//! Who is behind a source address: static IP/MAC-to-user maps and DHCP leases (dnsmasq and
//! ISC dhcpd) from the config, plus exclusions.
//!
//! ```toml
//! [users]
//! dhcp_leases = ["/var/lib/misc/dnsmasq.leases", "/var/lib/dhcp/dhcpd.leases"]
//!                                  # dnsmasq or ISC dhcpd lease files (format told per file)
//! exclude_ips = ["10.0.0.1", "10.9.0.0/16"]   # addresses or CIDR ranges left out of reports
//! exclude_users = ["svc-backup"]   # user names left out (case-insensitive)
//!
//! [[users.static]]                 # one per device; ip and/or mac, user and/or device
//! ip = "10.0.0.5"
//! mac = "aa:bb:cc:dd:ee:01"
//! user = "alice"
//! device = "alice-laptop"
//! ```
//!
//! Resolution order for a record: a user name the input itself carries (proxy logs), then
//! a static entry by MAC, then by IP, then a DHCP lease by MAC, then by IP (a lease gives
//! the device's host name; its user comes from a static entry for the same MAC if any).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::record::FlowRecord;

/// Errors building [`Users`] from the config.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("users.exclude_ips: {value:?} is not an IP address or CIDR range")]
    BadExclude { value: String },
    #[error("users.static[{index}]: {reason}")]
    BadStatic { index: usize, reason: String },
    #[error("{path}: cannot read DHCP leases: {source}")]
    Leases {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The `[users]` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersConfig {
    #[serde(default)]
    pub dhcp_leases: Vec<PathBuf>,
    #[serde(default)]
    pub exclude_ips: Vec<String>,
    #[serde(default)]
    pub exclude_users: Vec<String>,
    #[serde(default, rename = "static")]
    pub static_users: Vec<StaticUser>,
}

/// One `[[users.static]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticUser {
    #[serde(default)]
    pub ip: Option<IpAddr>,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
}

/// A user and/or device name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub user: Option<String>,
    pub device: Option<String>,
}

/// What [`Users::resolve`] says about a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<'a> {
    pub user: Option<&'a str>,
    pub device: Option<&'a str>,
    pub excluded: bool,
}

/// The loaded user map. `Users::default()` knows nobody and excludes nothing.
#[derive(Debug, Clone, Default)]
pub struct Users {
    static_ip: HashMap<IpAddr, Identity>,
    static_mac: HashMap<[u8; 6], Identity>,
    lease_ip: HashMap<IpAddr, (Option<[u8; 6]>, Option<String>)>,
    lease_mac: HashMap<[u8; 6], String>,
    exclude_nets: Vec<IpNet>,
    exclude_users: HashSet<String>,
}

/// "aa:bb:cc:dd:ee:ff" or "aa-bb-..." to bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut n = 0;
    for part in s.trim().split([':', '-']) {
        let slot = out.get_mut(n)?;
        if part.len() != 2 {
            return None;
        }
        *slot = u8::from_str_radix(part, 16).ok()?;
        n += 1;
    }
    (n == 6).then_some(out)
}

impl Users {
    /// Build from the config, reading the lease files. A lease file that cannot be read is
    /// an error naming the file.
    pub fn from_config(cfg: &UsersConfig) -> Result<Users, UsersError> {
        let mut u = Users::default();
        for v in &cfg.exclude_ips {
            let net = v
                .parse::<IpNet>()
                .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| UsersError::BadExclude { value: v.clone() })?;
            u.exclude_nets.push(net);
        }
        u.exclude_users = cfg.exclude_users.iter().map(|s| s.to_lowercase()).collect();
        for (index, s) in cfg.static_users.iter().enumerate() {
            let bad = |reason: &str| UsersError::BadStatic {
                index,
                reason: reason.to_owned(),
            };
            if s.ip.is_none() && s.mac.is_none() {
                return Err(bad("needs ip or mac"));
            }
            if s.user.is_none() && s.device.is_none() {
                return Err(bad("needs user or device"));
            }
            let id = Identity {
                user: s.user.clone(),
                device: s.device.clone(),
            };
            if let Some(m) = &s.mac {
                let mac = parse_mac(m).ok_or_else(|| bad("mac is not aa:bb:cc:dd:ee:ff"))?;
                u.static_mac.insert(mac, id.clone());
            }
            if let Some(ip) = s.ip {
                u.static_ip.insert(ip, id);
            }
        }
        for path in &cfg.dhcp_leases {
            u.load_leases_file(path)?;
        }
        Ok(u)
    }

    pub fn load_leases_file(&mut self, path: &Path) -> Result<(), UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Leases {
            path: path.to_owned(),
            source,
        })?;
        self.load_leases(&text);
        Ok(())
    }

    /// Load lease text of either format (ISC when it has `lease ... {` blocks).
    pub fn load_leases(&mut self, text: &str) {
        if text.contains("lease ") && text.contains('{') {
            self.load_isc(text);
        } else {
            self.load_dnsmasq(text);
        }
    }

    fn add_lease(&mut self, ip: IpAddr, mac: Option<[u8; 6]>, host: Option<String>) {
        if let (Some(m), Some(h)) = (mac, &host) {
            self.lease_mac.insert(m, h.clone());
        }
        self.lease_ip.insert(ip, (mac, host));
    }

    /// dnsmasq: `expiry mac ip hostname client-id` per line; hostname `*` is unknown.
    pub fn load_dnsmasq(&mut self, text: &str) {
        for line in text.lines() {
            let mut it = line.split_ascii_whitespace();
            let (Some(_exp), Some(mac), Some(ip), host) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                continue;
            };
            let Ok(ip) = ip.parse::<IpAddr>() else {
                continue;
            };
            let host = host.filter(|h| *h != "*").map(str::to_owned);
            self.add_lease(ip, parse_mac(mac), host);
        }
    }

    /// ISC dhcpd.leases: `lease IP { ... hardware ethernet MAC; client-hostname "name"; }`;
    /// later blocks for the same address win, as in dhcpd itself.
    pub fn load_isc(&mut self, text: &str) {
        let mut rest = text;
        while let Some(i) = rest.find("lease ") {
            let after = rest.get(i + 6..).unwrap_or("");
            let Some(open) = after.find('{') else { break };
            let Some(close) = after
                .get(open..)
                .and_then(|b| b.find('}'))
                .map(|c| c + open)
            else {
                break;
            };
            let ip = after.get(..open).unwrap_or("").trim().parse::<IpAddr>();
            let body = after.get(open + 1..close).unwrap_or("");
            rest = after.get(close + 1..).unwrap_or("");
            let Ok(ip) = ip else { continue };
            let mut mac = None;
            let mut host = None;
            let mut state_free = false;
            for stmt in body.split(';') {
                let stmt = stmt.trim();
                if let Some(m) = stmt.strip_prefix("hardware ethernet ") {
                    mac = parse_mac(m);
                } else if let Some(h) = stmt.strip_prefix("client-hostname ") {
                    host = Some(h.trim().trim_matches('"').to_owned()).filter(|h| !h.is_empty());
                } else if stmt.starts_with("binding state free")
                    || stmt.starts_with("binding state expired")
                {
                    state_free = true;
                }
            }
            if state_free {
                self.lease_ip.remove(&ip);
                continue;
            }
            self.add_lease(ip, mac, host);
        }
    }

    pub fn is_excluded_ip(&self, ip: IpAddr) -> bool {
        self.exclude_nets.iter().any(|n| n.contains(&ip))
    }

    /// The user and device for a record, and whether it is excluded.
    pub fn resolve<'a>(&'a self, rec: &'a FlowRecord) -> Resolved<'a> {
        let by_mac = rec.src_mac.and_then(|m| self.static_mac.get(&m));
        let by_ip = self.static_ip.get(&rec.src);
        let lease = self.lease_ip.get(&rec.src);
        let lease_mac = rec.src_mac.or_else(|| lease.and_then(|l| l.0));
        let lease_static = lease_mac.and_then(|m| self.static_mac.get(&m));
        let user = rec
            .user
            .as_deref()
            .or_else(|| by_mac.and_then(|i| i.user.as_deref()))
            .or_else(|| by_ip.and_then(|i| i.user.as_deref()))
            .or_else(|| lease_static.and_then(|i| i.user.as_deref()));
        let device = by_mac
            .and_then(|i| i.device.as_deref())
            .or_else(|| by_ip.and_then(|i| i.device.as_deref()))
            .or_else(|| lease_static.and_then(|i| i.device.as_deref()))
            .or_else(|| {
                rec.src_mac
                    .and_then(|m| self.lease_mac.get(&m))
                    .map(String::as_str)
            })
            .or_else(|| lease.and_then(|l| l.1.as_deref()));
        let excluded = self.is_excluded_ip(rec.src)
            || user.is_some_and(|u| {
                !self.exclude_users.is_empty() && self.exclude_users.contains(&u.to_lowercase())
            });
        Resolved {
            user,
            device,
            excluded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::L4Proto;

    fn rec(src: &str, user: Option<&str>, mac: Option<[u8; 6]>) -> FlowRecord {
        let t = chrono::Utc::now();
        FlowRecord {
            proto: L4Proto::Tcp,
            src: src.parse().expect("ip"),
            sport: 1,
            dst: "198.51.100.1".parse().expect("ip"),
            dport: 443,
            name: None,
            name_source: None,
            bytes_up: 0,
            bytes_down: 0,
            packets_up: 0,
            packets_down: 0,
            first_seen: t,
            last_seen: t,
            src_mac: mac,
            user: user.map(str::to_owned),
        }
    }

    const DNSMASQ: &str = "1764200000 aa:bb:cc:dd:ee:01 192.0.2.5 alice-laptop 01:aa:bb:cc:dd:ee:01\n\
                           1764200000 aa:bb:cc:dd:ee:02 192.0.2.6 * *\n\
                           garbage\n";
    const ISC: &str = r#"
# The format of this file is documented in the dhcpd.leases(5) manual page.
lease 192.0.2.7 {
  starts 3 2025/11/26 08:00:00;
  ends 3 2025/11/26 20:00:00;
  binding state active;
  hardware ethernet aa:bb:cc:dd:ee:03;
  client-hostname "bob-phone";
}
lease 192.0.2.8 {
  binding state active;
  hardware ethernet aa:bb:cc:dd:ee:04;
  client-hostname "old-name";
}
lease 192.0.2.8 {
  binding state free;
}
"#;

    #[test]
    fn lease_prefixes_do_not_panic() {
        for text in [DNSMASQ, ISC] {
            for i in (0..=text.len()).filter(|i| text.is_char_boundary(*i)) {
                let mut u = Users::default();
                u.load_leases(&text[..i]);
            }
        }
    }

    #[test]
    fn leases_and_static() {
        let cfg: UsersConfig = toml::from_str(
            r#"
            exclude_ips = ["192.0.2.200", "10.9.0.0/16"]
            exclude_users = ["SVC-Backup"]
            [[static]]
            mac = "aa:bb:cc:dd:ee:03"
            user = "bob"
            [[static]]
            ip = "192.0.2.9"
            user = "carol"
            device = "carol-pc"
            "#,
        )
        .expect("toml");
        let mut u = Users::from_config(&cfg).expect("users");
        u.load_leases(DNSMASQ);
        u.load_leases(ISC);
        let r = rec("192.0.2.5", None, None);
        assert_eq!(
            u.resolve(&r),
            Resolved {
                user: None,
                device: Some("alice-laptop"),
                excluded: false
            }
        );
        let r = rec("192.0.2.7", None, None);
        assert_eq!(
            u.resolve(&r),
            Resolved {
                user: Some("bob"),
                device: Some("bob-phone"),
                excluded: false
            }
        );
        let r = rec("192.0.2.8", None, None);
        assert_eq!(u.resolve(&r).device, None, "freed lease forgotten");
        let r = rec("192.0.2.9", Some("from-log"), None);
        assert_eq!(
            u.resolve(&r),
            Resolved {
                user: Some("from-log"),
                device: Some("carol-pc"),
                excluded: false
            }
        );
        assert!(u.resolve(&rec("10.9.3.4", None, None)).excluded);
        assert!(u.resolve(&rec("192.0.2.200", None, None)).excluded);
        assert!(
            u.resolve(&rec("192.0.2.1", Some("svc-backup"), None))
                .excluded
        );
        assert!(
            toml::from_str::<UsersConfig>("nope = 1").is_err(),
            "unknown keys rejected"
        );
        let bad = UsersConfig {
            exclude_ips: vec!["x".into()],
            ..UsersConfig::default()
        };
        assert!(matches!(
            Users::from_config(&bad),
            Err(UsersError::BadExclude { .. })
        ));
    }
}
