//! The shared facts both sides name in Rust types rather than ABI numbers: the transport
//! protocol, a flow with its user side first, which way a packet went, what an interface faces,
//! and whether verdicts are applied. The kernel reads the numbers
//! ([`PROTO_TCP`](crate::PROTO_TCP), [`DIR_UP`](crate::DIR_UP), [`ROLE_LAN`](crate::ROLE_LAN),
//! [`MODE_ENFORCE`](crate::MODE_ENFORCE), ...); userspace (the dataplane, discovery, the
//! daemon's config) uses these types, converted to and from the numbers here and nowhere else.

use core::fmt;
use core::net::IpAddr;

/// Transport protocol of a flow. Only TCP and UDP flows are tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    /// The IP protocol number ([`PROTO_TCP`](crate::PROTO_TCP) / [`PROTO_UDP`](crate::PROTO_UDP)).
    pub const fn abi(self) -> u8 {
        match self {
            Self::Tcp => crate::PROTO_TCP,
            Self::Udp => crate::PROTO_UDP,
        }
    }

    /// From an IP protocol number; `None` for anything but TCP and UDP.
    pub const fn from_abi(proto: u8) -> Option<Self> {
        match proto {
            crate::PROTO_TCP => Some(Self::Tcp),
            crate::PROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }
}

/// A flow with its user (LAN) side first, whatever way its packets go: the one userspace
/// spelling of the 5-tuple. The kernel's map key ([`FlowKey`](crate::FlowKey)) holds the same
/// facts as address words plus a VLAN; the dataplane converts between the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowTuple {
    pub proto: L4Proto,
    pub user_ip: IpAddr,
    pub user_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
}

impl FlowTuple {
    /// A flow between a user endpoint and a remote endpoint.
    pub const fn new(proto: L4Proto, user: (IpAddr, u16), remote: (IpAddr, u16)) -> Self {
        Self {
            proto,
            user_ip: user.0,
            user_port: user.1,
            remote_ip: remote.0,
            remote_port: remote.1,
        }
    }

    /// The flow of a packet from `sender` to `receiver` that went `direction`.
    pub const fn of_packet(
        proto: L4Proto,
        sender: (IpAddr, u16),
        receiver: (IpAddr, u16),
        direction: Direction,
    ) -> Self {
        match direction {
            Direction::Up => Self::new(proto, sender, receiver),
            Direction::Down => Self::new(proto, receiver, sender),
        }
    }

    /// The endpoint that sent a packet going `direction`.
    pub const fn sender(&self, direction: Direction) -> (IpAddr, u16) {
        match direction {
            Direction::Up => (self.user_ip, self.user_port),
            Direction::Down => (self.remote_ip, self.remote_port),
        }
    }

    /// The endpoint that received a packet going `direction`.
    pub const fn receiver(&self, direction: Direction) -> (IpAddr, u16) {
        match direction {
            Direction::Up => (self.remote_ip, self.remote_port),
            Direction::Down => (self.user_ip, self.user_port),
        }
    }
}

impl fmt::Display for L4Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// Which way a packet went, seen from the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Direction {
    /// From the user (LAN side) toward the internet.
    Up,
    /// From the internet toward the user.
    Down,
}

impl Direction {
    /// From the ABI's [`DIR_UP`](crate::DIR_UP) / [`DIR_DOWN`](crate::DIR_DOWN).
    pub fn from_abi(dir: u8) -> Option<Self> {
        match dir {
            crate::DIR_UP => Some(Self::Up),
            crate::DIR_DOWN => Some(Self::Down),
            _ => None,
        }
    }
}

/// What an interface faces; it decides what "up" means there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Role {
    /// Faces the users: traffic arriving here goes up, traffic leaving goes down.
    Lan,
    /// Faces the internet: traffic leaving here goes up, traffic arriving goes down.
    Wan,
}

impl Role {
    /// The ABI's [`ROLE_LAN`](crate::ROLE_LAN) / [`ROLE_WAN`](crate::ROLE_WAN).
    pub const fn abi(self) -> u32 {
        match self {
            Self::Lan => crate::ROLE_LAN,
            Self::Wan => crate::ROLE_WAN,
        }
    }
}

/// Monitor counts and reports what it would block; enforce applies verdicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Mode {
    #[default]
    Monitor,
    Enforce,
}

impl Mode {
    /// The ABI's [`MODE_MONITOR`](crate::MODE_MONITOR) / [`MODE_ENFORCE`](crate::MODE_ENFORCE).
    pub const fn abi(self) -> u32 {
        match self {
            Self::Monitor => crate::MODE_MONITOR,
            Self::Enforce => crate::MODE_ENFORCE,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Up => "up",
            Self::Down => "down",
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Lan => "lan",
            Self::Wan => "wan",
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Monitor => "monitor",
            Self::Enforce => "enforce",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    #[test]
    fn a_packet_either_way_names_the_same_user_first_flow() {
        let user = (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 40000);
        let remote = (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 443);
        let up = FlowTuple::of_packet(L4Proto::Tcp, user, remote, Direction::Up);
        let down = FlowTuple::of_packet(L4Proto::Tcp, remote, user, Direction::Down);
        assert_eq!(up, down);
        assert_eq!(up, FlowTuple::new(L4Proto::Tcp, user, remote));
        assert_eq!(up.sender(Direction::Down), remote);
        assert_eq!(up.receiver(Direction::Down), user);
    }

    #[test]
    fn only_tcp_and_udp_have_a_protocol() {
        for p in [L4Proto::Tcp, L4Proto::Udp] {
            assert_eq!(L4Proto::from_abi(p.abi()), Some(p));
        }
        assert_eq!(L4Proto::from_abi(1), None);
        assert_eq!(L4Proto::from_abi(132), None);
    }
}
