//! Session-control steering in the kernel: which destinations go to the session
//! proxy, the proxy's listening socket, and the policy route that delivers steered packets
//! locally.
//!
//! How a steered flow travels: the LAN ingress program sees a user's SYN toward tcp/443 whose
//! destination is in [`abi::MAP_STEER_V4`] / [`abi::MAP_STEER_V6`]; it assigns the SYN to the
//! proxy's listener found in [`abi::MAP_PROXY_SOCK`] (`bpf_sk_assign`), records
//! [`abi::FLOW_F_STEERED`] in the flow's state and marks the packet with [`abi::STEER_MARK`];
//! every later packet of the flow gets the mark too. [`PolicyRoute`] makes marked packets
//! local (`ip rule fwmark STEER_MARK lookup STEER_ROUTE_TABLE` and a `local default` route in
//! that table), so the SYN reaches the listener (which must be `IP_TRANSPARENT`: its accepted
//! sockets own the origin's address) and the rest reach the accepted connection. QUIC
//! Initials toward a steered destination get an ICMP unreachable from the kernel.
//!
//! Why a sockmap rather than `bpf_skc_lookup_tcp`: the slot holds exactly the proxy's socket
//! (no other listener on the port or address can be picked up, and the kernel needs no copy of
//! the listen address), and the kernel empties the slot when the socket closes, so a proxy
//! that is gone is noticed by the probes at once: a SYN toward a steered destination that no
//! listener can take gets a reset (never a direct path around session control).

use std::{io, net::IpAddr, os::fd::BorrowedFd, process::Command, time::Duration};

use aya::{
    Ebpf,
    maps::{
        MapData, SockMap,
        lpm_trie::{Key, LpmTrie},
    },
};
use tollgate_common::{self as abi, SteerEntry};

use crate::{
    error::{DataplaneError, map_err, map_mut},
    verdicts::monotonic_ns,
};

/// Which address families a listening socket accepts connections of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerFamilies {
    pub v4: bool,
    pub v6: bool,
}

impl ListenerFamilies {
    /// The families of a bound TCP listener: an IPv4 socket takes IPv4 flows; an IPv6 socket
    /// takes IPv6 flows, and IPv4 flows too unless `IPV6_V6ONLY` is set.
    pub fn of(sock: BorrowedFd<'_>) -> io::Result<Self> {
        let s = socket2::SockRef::from(&sock);
        let local = s.local_addr()?;
        if local.is_ipv4() {
            Ok(Self {
                v4: true,
                v6: false,
            })
        } else {
            Ok(Self {
                v4: !s.only_v6()?,
                v6: true,
            })
        }
    }
}

/// Borrowed access to the steering maps (one writer: the task owning the dataplane). Changes
/// apply to the next SYN; flows already running keep their path.
pub struct SteerWriter<'a> {
    pub(crate) ebpf: &'a mut Ebpf,
}

impl SteerWriter<'_> {
    fn sockmap(&mut self) -> Result<SockMap<&mut MapData>, DataplaneError> {
        SockMap::try_from(map_mut(self.ebpf, abi::MAP_PROXY_SOCK)?)
            .map_err(map_err(abi::MAP_PROXY_SOCK))
    }

    /// Puts the proxy's listening socket in the slots of the families it accepts, and empties
    /// the other slots. The socket must be a bound, listening TCP socket.
    pub fn set_proxy_listener(
        &mut self,
        listener: BorrowedFd<'_>,
        families: ListenerFamilies,
    ) -> Result<(), DataplaneError> {
        let mut m = self.sockmap()?;
        for (slot, wanted) in [
            (abi::STEER_SLOT_V4, families.v4),
            (abi::STEER_SLOT_V6, families.v6),
        ] {
            if wanted {
                m.set(slot, &listener, 0)
                    .map_err(map_err(abi::MAP_PROXY_SOCK))?;
            } else {
                clear_slot(&mut m, slot)?;
            }
        }
        Ok(())
    }

    /// Empties both listener slots: new flows are no longer steered.
    pub fn clear_proxy_listener(&mut self) -> Result<(), DataplaneError> {
        let mut m = self.sockmap()?;
        clear_slot(&mut m, abi::STEER_SLOT_V4)?;
        clear_slot(&mut m, abi::STEER_SLOT_V6)
    }

    /// Steers new tcp/443 flows toward `addr/prefix_len` into the proxy (and refuses QUIC to
    /// it) for `ttl` (`None`: until removed). Adding it again refreshes the expiry.
    pub fn add(
        &mut self,
        addr: IpAddr,
        prefix_len: u8,
        app_id: u32,
        ttl: Option<Duration>,
    ) -> Result<(), DataplaneError> {
        let v = SteerEntry {
            app_id,
            _pad: 0,
            expires_ns: ttl.map_or(0, |t| {
                monotonic_ns().saturating_add(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX))
            }),
        };
        match addr {
            IpAddr::V4(a) => {
                let mut m = trie4(self.ebpf)?;
                let k = Key::new(u32::from(prefix_len.min(32)), a.octets());
                m.insert(&k, v, 0).map_err(map_err(abi::MAP_STEER_V4))
            }
            IpAddr::V6(a) => {
                let mut m = trie6(self.ebpf)?;
                let k = Key::new(u32::from(prefix_len.min(128)), a.octets());
                m.insert(&k, v, 0).map_err(map_err(abi::MAP_STEER_V6))
            }
        }
    }

    /// Stops steering new flows toward `addr/prefix_len` (absent: nothing to do).
    pub fn remove(&mut self, addr: IpAddr, prefix_len: u8) -> Result<(), DataplaneError> {
        let (r, name) = match addr {
            IpAddr::V4(a) => (
                trie4(self.ebpf)?.remove(&Key::new(u32::from(prefix_len.min(32)), a.octets())),
                abi::MAP_STEER_V4,
            ),
            IpAddr::V6(a) => (
                trie6(self.ebpf)?.remove(&Key::new(u32::from(prefix_len.min(128)), a.octets())),
                abi::MAP_STEER_V6,
            ),
        };
        match r {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) if is_enoent(&e) => Ok(()),
            Err(e) => Err(map_err(name)(e)),
        }
    }

    /// Every steered prefix with its entry.
    pub fn entries(&mut self) -> Result<Vec<(IpAddr, u8, SteerEntry)>, DataplaneError> {
        let mut out = Vec::new();
        let m = trie4(self.ebpf)?;
        for (k, v) in m.iter().filter_map(Result::ok) {
            let prefix = u8::try_from(k.prefix_len()).unwrap_or(32);
            out.push((IpAddr::from(k.data()), prefix, v));
        }
        let m = trie6(self.ebpf)?;
        for (k, v) in m.iter().filter_map(Result::ok) {
            let prefix = u8::try_from(k.prefix_len()).unwrap_or(128);
            out.push((IpAddr::from(k.data()), prefix, v));
        }
        Ok(out)
    }

    /// Removes the entries whose expiry has passed (the probes already ignore them; this
    /// keeps the tries from filling up). Returns how many were removed.
    pub fn expire(&mut self) -> Result<usize, DataplaneError> {
        let now = monotonic_ns();
        let stale: Vec<(IpAddr, u8)> = self
            .entries()?
            .into_iter()
            .filter(|(_, _, e)| e.expires_ns != 0 && e.expires_ns <= now)
            .map(|(a, p, _)| (a, p))
            .collect();
        for (a, p) in &stale {
            self.remove(*a, *p)?;
        }
        Ok(stale.len())
    }

    /// Steers the new tcp/443 flows of one client (`user`, on `vlan`) toward `dst` into the
    /// proxy, and refuses that client's QUIC to it, for `ttl`; nobody else's flows change.
    /// The per-client map is an LRU of [`abi::STEER_CLIENT_CAPACITY`] entries.
    pub fn add_client(
        &mut self,
        user: IpAddr,
        vlan: u16,
        dst: IpAddr,
        app_id: u32,
        ttl: Duration,
    ) -> Result<(), DataplaneError> {
        let key = client_key(user, vlan, dst).ok_or(DataplaneError::MixedAddressFamilies {
            client: user,
            destination: dst,
        })?;
        let v = SteerEntry {
            app_id,
            _pad: 0,
            expires_ns: monotonic_ns()
                .saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX)),
        };
        let mut m = client_map(self.ebpf)?;
        m.insert(key, v, 0).map_err(map_err(abi::MAP_STEER_CLIENT))
    }

    /// The per-client entry for `user` (on `vlan`) toward `dst`, if any (expired or not).
    pub fn client_entry(
        &mut self,
        user: IpAddr,
        vlan: u16,
        dst: IpAddr,
    ) -> Result<Option<SteerEntry>, DataplaneError> {
        let Some(key) = client_key(user, vlan, dst) else {
            return Ok(None);
        };
        match client_map(self.ebpf)?.get(&key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) if is_enoent(&e) => Ok(None),
            Err(e) => Err(map_err(abi::MAP_STEER_CLIENT)(e)),
        }
    }

    /// Number of per-client entries (expired ones included until the LRU evicts them).
    pub fn client_entries(&mut self) -> Result<usize, DataplaneError> {
        Ok(client_map(self.ebpf)?.keys().filter(Result::is_ok).count())
    }

    /// Removes every steered prefix.
    pub fn clear(&mut self) -> Result<(), DataplaneError> {
        for (a, p, _) in self.entries()? {
            self.remove(a, p)?;
        }
        Ok(())
    }
}

fn clear_slot(m: &mut SockMap<&mut MapData>, slot: u32) -> Result<(), DataplaneError> {
    match m.clear_index(&slot) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) if is_enoent(&e) => Ok(()),
        // The kernel answers EINVAL for an empty slot of a sockmap (aya checked the bounds).
        Err(aya::maps::MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(22) => {
            Ok(())
        }
        Err(e) => Err(map_err(abi::MAP_PROXY_SOCK)(e)),
    }
}

/// Deleting an absent key: aya reports the kernel's ENOENT as a syscall error for these maps.
fn is_enoent(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(2))
}

fn client_map(
    ebpf: &mut Ebpf,
) -> Result<aya::maps::HashMap<&mut MapData, abi::SteerClientKey, SteerEntry>, DataplaneError> {
    aya::maps::HashMap::try_from(map_mut(ebpf, abi::MAP_STEER_CLIENT)?)
        .map_err(map_err(abi::MAP_STEER_CLIENT))
}

/// The per-client map's key, laid out as the probes build it from a flow key.
fn client_key(user: IpAddr, vlan: u16, dst: IpAddr) -> Option<abi::SteerClientKey> {
    let key = crate::event::flow_key(
        &abi::FlowTuple::new(abi::L4Proto::Tcp, (user, 0), (dst, 0)),
        vlan,
    )?;
    Some(abi::SteerClientKey::of(&key))
}

fn trie4(ebpf: &mut Ebpf) -> Result<LpmTrie<&mut MapData, [u8; 4], SteerEntry>, DataplaneError> {
    LpmTrie::try_from(map_mut(ebpf, abi::MAP_STEER_V4)?).map_err(map_err(abi::MAP_STEER_V4))
}

fn trie6(ebpf: &mut Ebpf) -> Result<LpmTrie<&mut MapData, [u8; 16], SteerEntry>, DataplaneError> {
    LpmTrie::try_from(map_mut(ebpf, abi::MAP_STEER_V6)?).map_err(map_err(abi::MAP_STEER_V6))
}

/// The policy route that delivers [`abi::STEER_MARK`]ed packets to the local stack, for IPv4
/// and IPv6: `ip rule add fwmark M lookup T priority P` and `ip route add local default dev lo
/// table T`. Installed with the `ip` command (iproute2 is on every gateway; two rules and two
/// routes do not justify a netlink dependency, and an admin can read the same commands).
/// Removed by [`PolicyRoute::remove`] or on drop; installing first removes leftovers of a
/// crashed run, so it is idempotent.
#[derive(Debug)]
pub struct PolicyRoute {
    installed: bool,
    ipv6: bool,
}

/// `ip` argument lists that install the route (for both families), as [`PolicyRoute::install`]
/// runs them (for docs and for admins who want to see them).
pub fn policy_route_commands() -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        out.push(rule_args(fam, "add"));
        out.push(route_args(fam, "replace"));
    }
    out
}

fn rule_args(fam: &str, verb: &str) -> Vec<String> {
    [
        fam,
        "rule",
        verb,
        "fwmark",
        &format!("{:#x}", abi::STEER_MARK),
        "lookup",
        &abi::STEER_ROUTE_TABLE.to_string(),
        "priority",
        &abi::STEER_RULE_PRIORITY.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn route_args(fam: &str, verb: &str) -> Vec<String> {
    [
        fam,
        "route",
        verb,
        "local",
        "default",
        "dev",
        "lo",
        "table",
        &abi::STEER_ROUTE_TABLE.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Where iproute2's `ip` is installed, looked up once. Run as root, so never through PATH
/// (a directory earlier in root's PATH must not be able to stand in for it).
const IP_PATHS: [&str; 2] = ["/usr/sbin/ip", "/sbin/ip"];

fn ip_binary() -> Result<&'static str, DataplaneError> {
    static FOUND: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            IP_PATHS
                .into_iter()
                .find(|p| std::path::Path::new(p).is_file())
        })
        .ok_or_else(|| DataplaneError::Route {
            command: "ip".into(),
            message: format!("iproute2's ip is in none of {}", IP_PATHS.join(", ")),
        })
}

fn ip(args: &[String]) -> Result<(), DataplaneError> {
    let out = Command::new(ip_binary()?)
        .args(args)
        .output()
        .map_err(|source| DataplaneError::Route {
            command: format!("ip {}", args.join(" ")),
            message: source.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DataplaneError::Route {
            command: format!("ip {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Deletes every rule of ours (a crashed run may have left one or more) and our routes.
fn delete_all() {
    for fam in ["-4", "-6"] {
        // `ip rule del` removes one matching rule per call; a handful covers any leftovers.
        for _ in 0..8 {
            if ip(&rule_args(fam, "del")).is_err() {
                break;
            }
        }
        let _ = ip(&route_args(fam, "del"));
    }
}

impl PolicyRoute {
    /// Installs the rules and routes for IPv4 and IPv6. IPv6 failing (IPv6 disabled on the
    /// gateway) is logged, not fatal: see [`PolicyRoute::ipv6`].
    pub fn install() -> Result<PolicyRoute, DataplaneError> {
        delete_all();
        let mut route = PolicyRoute {
            installed: true,
            ipv6: false,
        };
        ip(&rule_args("-4", "add"))?;
        ip(&route_args("-4", "replace"))?;
        route.ipv6 = ip(&rule_args("-6", "add"))
            .and_then(|()| ip(&route_args("-6", "replace")))
            .map_err(|e| tracing::warn!("IPv6 steering route: {e}; IPv6 flows are not steered"))
            .is_ok();
        Ok(route)
    }

    /// Whether the IPv6 half is installed. Without it, the caller must not give the probes an
    /// IPv6 listener (a marked IPv6 flow would have no local route and be forwarded unsteered
    /// after its SYN was assigned, which breaks it).
    pub fn ipv6(&self) -> bool {
        self.ipv6
    }

    /// Removes the rules and routes. Idempotent.
    pub fn remove(&mut self) {
        if std::mem::take(&mut self.installed) {
            delete_all();
        }
    }
}

impl Drop for PolicyRoute {
    fn drop(&mut self) {
        self.remove();
    }
}

// The rule must come before the main table's (priority 32766) to take marked packets.
const _: () = assert!(abi::STEER_RULE_PRIORITY < 32766);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_route_commands_name_the_mark_table_and_priority() {
        let cmds: Vec<String> = policy_route_commands()
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            cmds,
            [
                "-4 rule add fwmark 0x74670b11 lookup 29799 priority 29799",
                "-4 route replace local default dev lo table 29799",
                "-6 rule add fwmark 0x74670b11 lookup 29799 priority 29799",
                "-6 route replace local default dev lo table 29799",
            ]
        );
    }
}
