//! The shared facts both sides name in Rust types rather than ABI numbers: which way a packet
//! went, what an interface faces, and whether verdicts are applied. The kernel reads the
//! numbers ([`DIR_UP`](crate::DIR_UP), [`ROLE_LAN`](crate::ROLE_LAN),
//! [`MODE_ENFORCE`](crate::MODE_ENFORCE), ...); userspace (the dataplane, discovery, the
//! daemon's config) uses these types, converted to and from the numbers here and nowhere else.

use core::fmt;

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
