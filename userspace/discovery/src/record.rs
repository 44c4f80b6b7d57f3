//! The one record every input produces: a flow seen on the wire, or one transaction in a log.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Transport protocol of a flow; defined once, beside the kernel ABI.
pub use tollgate_common::{FlowTuple, L4Proto};

/// Where a flow's name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NameSource {
    /// TLS ClientHello server_name over TCP.
    Sni,
    /// server_name from a decrypted QUIC Initial.
    Quic,
    /// The DNS query name (for DNS flows) or the IP-to-name cache built from DNS answers.
    Dns,
    /// HTTP/1 Host header.
    Http,
    /// A firewall or proxy log named the host (URL, domain or host field).
    Log,
}

/// One flow (live or pcap) or one log transaction. "up" is from the user (LAN side) toward
/// the internet; `src` is the user side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    pub proto: L4Proto,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub name: Option<String>,
    pub name_source: Option<NameSource>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub packets_up: u64,
    pub packets_down: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// The user side's MAC address, where the input carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_mac: Option<[u8; 6]>,
    /// A user name the input itself carries (proxy logs often do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl FlowRecord {
    /// The flow this record is about. The record keeps the tuple's fields flat (`src`, `sport`,
    /// `dst`, `dport`) because they are the field names of every report, export and upload.
    pub fn tuple(&self) -> FlowTuple {
        FlowTuple {
            proto: self.proto,
            user_ip: self.src,
            user_port: self.sport,
            remote_ip: self.dst,
            remote_port: self.dport,
        }
    }
}

/// A line that did not parse, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadLine {
    pub line: u64,
    pub reason: String,
    /// The start of the line (at most 160 characters).
    pub text: String,
}

/// Per-input counts. `lines` counts non-empty lines; `parsed + unparsed == lines`;
/// `records` is how many of the parsed lines were transactions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputStats {
    pub file: String,
    pub format: String,
    pub lines: u64,
    pub parsed: u64,
    pub unparsed: u64,
    pub records: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_lines: Vec<BadLine>,
    /// Set when the file could not be read or its format not told; the counts are what was
    /// read before that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
