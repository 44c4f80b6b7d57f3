//! The probes' per-CPU counters, summed over CPUs.

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use tollgate_common::{self as abi, Stats};

use crate::error::{DataplaneError, map_err, map_ref};

/// Per-CPU counters summed over CPUs. Field names follow the `STAT_*` ids of the ABI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataplaneStats {
    pub packets: u64,
    pub bytes: u64,
    pub events: u64,
    pub ringbuf_full: u64,
    pub flow_map_full: u64,
    pub hello_map_full: u64,
    pub events_capped: u64,
    pub non_ip: u64,
    pub err_l2: u64,
    pub err_ipv4: u64,
    pub err_ipv6: u64,
    pub err_tcp: u64,
    pub err_udp: u64,
    pub fragments: u64,
    pub other_l4: u64,
    pub err_payload: u64,
    pub dedup: u64,
    pub hello_continuations: u64,
    pub drops: u64,
    pub would_drop: u64,
    pub rst_sent: u64,
    pub icmp_sent: u64,
    /// Packets toward users dropped while their QUIC flow waited for a verdict.
    pub quic_held: u64,
    /// QUIC flows whose hold timed out without a verdict (they passed: fail-open).
    pub quic_hold_expired: u64,
    /// HTTP/1 requests whose Host the probes read.
    pub http_host_found: u64,
    /// Blocked HTTP/1 requests the probes turned into a reset toward the server.
    pub http_blocked: u64,
    /// DNS queries the probes answered with NXDOMAIN.
    pub dns_refused: u64,
    /// DNS messages toward users not sent to userspace: no query from the user on the flow.
    pub dns_unsolicited: u64,
    /// SYNs assigned to the session proxy (flows steered).
    pub steered: u64,
    /// SYNs toward a steered destination refused because no proxy listener could take them.
    pub steer_no_proxy: u64,
    /// QUIC Initials toward steered destinations refused.
    pub steer_quic_refused: u64,
    /// ClientHellos naming an app under session control on a direct flow, reset.
    pub session_refused: u64,
    /// Per-client steer entries the probes wrote.
    pub steer_client_added: u64,
    /// SYNs steered by a per-client entry.
    pub steer_by_client: u64,
    /// DNS answers for session-controlled names held for the daemon.
    pub dns_held: u64,
    /// Steer entries used past their expiry because the daemon is gone (fail-closed).
    pub steer_kept_stale: u64,
    /// Packets of flows toward steered destinations whose flow state was lost, reset.
    pub steer_lost_reset: u64,
    /// Hellos naming a session-controlled app without a server handshake: no steer entry.
    pub session_unproven: u64,
    /// Every counter by id (including ids this build has no field for).
    pub raw: Vec<u64>,
}

impl DataplaneStats {
    pub(crate) fn from_raw(raw: Vec<u64>) -> Self {
        use tollgate_common::*;
        let g = |i: usize| raw.get(i).copied().unwrap_or(0);
        Self {
            packets: g(STAT_PACKETS),
            bytes: g(STAT_BYTES),
            events: g(STAT_EVENTS),
            ringbuf_full: g(STAT_RINGBUF_FULL),
            flow_map_full: g(STAT_FLOW_MAP_FULL),
            hello_map_full: g(STAT_HELLO_MAP_FULL),
            events_capped: g(STAT_EVENTS_CAPPED),
            non_ip: g(STAT_NON_IP),
            err_l2: g(STAT_ERR_L2),
            err_ipv4: g(STAT_ERR_IPV4),
            err_ipv6: g(STAT_ERR_IPV6),
            err_tcp: g(STAT_ERR_TCP),
            err_udp: g(STAT_ERR_UDP),
            fragments: g(STAT_FRAGMENTS),
            other_l4: g(STAT_OTHER_L4),
            err_payload: g(STAT_ERR_PAYLOAD),
            dedup: g(STAT_DEDUP),
            hello_continuations: g(STAT_HELLO_CONT),
            drops: g(STAT_DROPS),
            would_drop: g(STAT_WOULD_DROP),
            rst_sent: g(STAT_RST_SENT),
            icmp_sent: g(STAT_ICMP_SENT),
            quic_held: g(STAT_QUIC_HELD),
            quic_hold_expired: g(STAT_QUIC_HOLD_EXPIRED),
            http_host_found: g(STAT_HTTP_HOST_FOUND),
            http_blocked: g(STAT_HTTP_BLOCKED),
            dns_refused: g(STAT_DNS_REFUSED),
            dns_unsolicited: g(STAT_DNS_UNSOLICITED),
            steered: g(STAT_STEERED),
            steer_no_proxy: g(STAT_STEER_NO_PROXY),
            steer_quic_refused: g(STAT_STEER_QUIC_REFUSED),
            session_refused: g(STAT_SESSION_REFUSED),
            steer_client_added: g(STAT_STEER_CLIENT_ADDED),
            steer_by_client: g(STAT_STEER_BY_CLIENT),
            dns_held: g(STAT_DNS_HELD),
            steer_kept_stale: g(STAT_STEER_KEPT_STALE),
            steer_lost_reset: g(STAT_STEER_LOST_RESET),
            session_unproven: g(STAT_SESSION_UNPROVEN),
            raw,
        }
    }

    /// Malformed or truncated headers of any kind.
    pub fn parse_errors(&self) -> u64 {
        self.err_l2 + self.err_ipv4 + self.err_ipv6 + self.err_tcp + self.err_udp + self.err_payload
    }
}

pub(crate) fn read_stats(ebpf: &Ebpf) -> Result<DataplaneStats, DataplaneError> {
    let stats: PerCpuArray<&MapData, Stats> =
        PerCpuArray::try_from(map_ref(ebpf, abi::MAP_STATS)?).map_err(map_err(abi::MAP_STATS))?;
    let per_cpu = stats.get(&0, 0).map_err(map_err(abi::MAP_STATS))?;
    let mut sum = vec![0u64; abi::STATS_LEN];
    for cpu in per_cpu.iter() {
        for (s, c) in sum.iter_mut().zip(cpu.counters.iter()) {
            *s = s.wrapping_add(*c);
        }
    }
    Ok(DataplaneStats::from_raw(sum))
}
