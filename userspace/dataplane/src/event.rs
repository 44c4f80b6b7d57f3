//! Ring-buffer records -> [`PayloadEvent`], and map values -> [`FlowCounters`]. The decoding
//! is pure (bytes in, typed value or typed error out) and is unit-tested on crafted records.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use tollgate_common::{
    self as abi, EVENT_HEADER_LEN, FAMILY_V4, FAMILY_V6, FlowKey, FlowValue, KIND_DNS, KIND_HTTP,
    KIND_QUIC, KIND_TLS,
};

pub use tollgate_common::{Direction, FlowTuple, L4Proto};

/// What the probes recognised in the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// A TLS handshake record (ClientHello, its continuation segments, ServerHello).
    Tls,
    /// A QUIC long-header Initial packet (whole UDP payload).
    Quic,
    /// A DNS message (UDP payload, or a TCP segment with its 2-byte length prefix).
    Dns,
    /// An HTTP/1 request head.
    Http,
}

/// One record from the ring buffer: the first flight of interesting payload of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadEvent {
    pub flow: FlowTuple,
    pub direction: Direction,
    pub timestamp: SystemTime,
    /// TCP sequence number of the first payload byte (0 for UDP).
    pub tcp_seq: u32,
    /// TCP acknowledgment number of the packet (0 for UDP).
    pub tcp_ack: u32,
    pub tcp_flags: u8,
    pub ifindex: u32,
    /// 802.1Q VLAN id (0 untagged).
    pub vlan: u16,
    /// Payload length of the packet; `payload.len()` is smaller when the probe cut it.
    pub orig_len: u32,
    pub kind: PayloadKind,
    /// This segment continues a ClientHello that began in an earlier segment.
    pub continuation: bool,
    /// The flow reached its event cap with this event.
    pub last_for_flow: bool,
    /// A DNS answer the probes held instead of forwarding ([`abi::EVENT_F_HELD`]): the
    /// daemon must send it on to the user ([`crate::send_held_dns`]).
    pub held: bool,
    pub payload: Bytes,
}

/// A snapshot of one flow's kernel counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowCounters {
    pub flow: FlowTuple,
    pub vlan: u16,
    pub packets_up: u64,
    pub packets_down: u64,
    /// L3 bytes (IP headers included) from the user.
    pub bytes_up: u64,
    /// L3 bytes (IP headers included) toward the user.
    pub bytes_down: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    /// TCP flags seen in either direction (OR).
    pub tcp_flags: u8,
    pub tcp_flags_up: u8,
    pub tcp_flags_down: u8,
    /// Events the flow produced so far.
    pub events: u32,
    /// Interface of the flow's first packet.
    pub ifindex: u32,
}

impl PayloadEvent {
    /// The flow's key in the kernel maps (for flow verdicts).
    pub fn flow_key(&self) -> Option<FlowKey> {
        flow_key(&self.flow, self.vlan)
    }
}

impl FlowCounters {
    /// The flow's key in the kernel maps (for flow verdicts).
    pub fn flow_key(&self) -> Option<FlowKey> {
        flow_key(&self.flow, self.vlan)
    }
}

/// Why a ring-buffer record could not be decoded (counted by the reader, never fatal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record of {len} bytes is shorter than the {EVENT_HEADER_LEN}-byte header")]
    Short { len: usize },
    #[error("record from ABI {found}, expected {}", abi::ABI_VERSION)]
    Abi { found: u32 },
    #[error("record claims {claimed} payload bytes but carries {present}")]
    Length { claimed: u32, present: usize },
    #[error("unknown {field} value {value}")]
    Unknown { field: &'static str, value: u32 },
}

/// Converts the probes' timestamps (CLOCK_MONOTONIC nanoseconds from
/// `bpf_ktime_get_coarse_ns`, jiffy resolution) to wall-clock time, by reading both clocks now.
/// Wall-clock steps (NTP) are picked up on the next call.
#[derive(Clone, Copy, Debug)]
pub struct KernelClock {
    realtime: SystemTime,
    mono_ns: u64,
}

impl KernelClock {
    /// Samples both clocks.
    pub fn now() -> Self {
        let boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| {
                u64::try_from(t.tv_sec())
                    .unwrap_or(0)
                    .saturating_mul(1_000_000_000)
                    .saturating_add(u64::try_from(t.tv_nsec()).unwrap_or(0))
            })
            .unwrap_or(0);
        Self {
            realtime: SystemTime::now(),
            mono_ns: boot,
        }
    }

    /// A clock with a fixed correspondence (tests).
    pub fn fixed(realtime: SystemTime, mono_ns: u64) -> Self {
        Self { realtime, mono_ns }
    }

    /// Wall-clock time of a CLOCK_MONOTONIC instant.
    pub fn to_system(&self, ns: u64) -> SystemTime {
        if ns <= self.mono_ns {
            self.realtime - Duration::from_nanos(self.mono_ns - ns)
        } else {
            self.realtime + Duration::from_nanos(ns - self.mono_ns)
        }
    }

    /// The CLOCK_MONOTONIC instant this clock was sampled at.
    pub fn mono_ns(&self) -> u64 {
        self.mono_ns
    }
}

/// Little-endian (host order on every BPF-capable target we build for) field reader.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u8(&self, at: usize) -> u8 {
        self.0.get(at).copied().unwrap_or(0)
    }
    fn u16(&self, at: usize) -> u16 {
        u16::from_ne_bytes([self.u8(at), self.u8(at + 1)])
    }
    fn u32(&self, at: usize) -> u32 {
        u32::from_ne_bytes([
            self.u8(at),
            self.u8(at + 1),
            self.u8(at + 2),
            self.u8(at + 3),
        ])
    }
    fn u64(&self, at: usize) -> u64 {
        u64::from(self.u32(at)) | (u64::from(self.u32(at + 4)) << 32)
    }
}

// Offsets of EventHeader fields (layout asserted in tollgate-common).
const OFF_KEY: usize = 0;
const OFF_TS: usize = 40;
const OFF_SEQ: usize = 48;
const OFF_IFINDEX: usize = 52;
const OFF_ORIG_LEN: usize = 56;
const OFF_CAP_LEN: usize = 60;
const OFF_KIND: usize = 64;
const OFF_DIR: usize = 65;
const OFF_TCP_FLAGS: usize = 66;
const OFF_FLAGS: usize = 67;
const OFF_ABI: usize = 68;
const OFF_ACK: usize = 72;

fn key_from(f: &Fields<'_>, at: usize) -> FlowKey {
    let w = |i: usize| f.u32(at + i * 4);
    FlowKey {
        user_addr: [w(0), w(1), w(2), w(3)],
        remote_addr: [w(4), w(5), w(6), w(7)],
        user_port: f.u16(at + 32),
        remote_port: f.u16(at + 34),
        proto: f.u8(at + 36),
        family: f.u8(at + 37),
        vlan: f.u16(at + 38),
    }
}

/// The address in a [`FlowKey`] word array.
pub fn key_addr(family: u8, words: &[u32; 4]) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))),
        FAMILY_V6 => {
            let mut b = [0u8; 16];
            for (chunk, w) in b.chunks_exact_mut(4).zip(words) {
                chunk.copy_from_slice(&w.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// The kernel's [`FlowKey`] of a flow on a VLAN (the inverse of [`flow_tuple`]); the flow
/// maps are keyed by it. `None` when the two addresses are of different families.
pub fn flow_key(flow: &FlowTuple, vlan: u16) -> Option<FlowKey> {
    fn words(ip: IpAddr) -> (u8, [u32; 4]) {
        match ip {
            IpAddr::V4(a) => (FAMILY_V4, [u32::from_ne_bytes(a.octets()), 0, 0, 0]),
            IpAddr::V6(a) => {
                let o = a.octets();
                let mut w = [0u32; 4];
                for (wi, c) in w.iter_mut().zip(o.chunks_exact(4)) {
                    *wi = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                }
                (FAMILY_V6, w)
            }
        }
    }
    let (fu, user_addr) = words(flow.user_ip);
    let (fr, remote_addr) = words(flow.remote_ip);
    (fu == fr).then_some(FlowKey {
        user_addr,
        remote_addr,
        user_port: flow.user_port,
        remote_port: flow.remote_port,
        proto: flow.proto.abi(),
        family: fu,
        vlan,
    })
}

/// The flow a kernel [`FlowKey`] names, or why it names none (an address family or protocol
/// the probes never write).
pub fn flow_tuple(key: &FlowKey) -> Result<FlowTuple, RecordError> {
    let unknown = |field, value: u8| RecordError::Unknown {
        field,
        value: u32::from(value),
    };
    let family = unknown("family", key.family);
    Ok(FlowTuple {
        proto: L4Proto::from_abi(key.proto).ok_or(unknown("proto", key.proto))?,
        user_ip: key_addr(key.family, &key.user_addr).ok_or(family.clone())?,
        user_port: key.user_port,
        remote_ip: key_addr(key.family, &key.remote_addr).ok_or(family)?,
        remote_port: key.remote_port,
    })
}

/// Decodes one ring-buffer record.
pub fn decode_record(rec: &[u8], clock: &KernelClock) -> Result<PayloadEvent, RecordError> {
    if rec.len() < EVENT_HEADER_LEN {
        return Err(RecordError::Short { len: rec.len() });
    }
    let f = Fields(rec);
    let abi_v = f.u32(OFF_ABI);
    if abi_v != abi::ABI_VERSION {
        return Err(RecordError::Abi { found: abi_v });
    }
    let key = key_from(&f, OFF_KEY);
    let cap_len = f.u32(OFF_CAP_LEN);
    let payload = usize::try_from(cap_len)
        .ok()
        .and_then(|n| rec.get(EVENT_HEADER_LEN..EVENT_HEADER_LEN.checked_add(n)?))
        .ok_or(RecordError::Length {
            claimed: cap_len,
            present: rec.len() - EVENT_HEADER_LEN,
        })?;
    let unknown = |field, value: u8| RecordError::Unknown {
        field,
        value: u32::from(value),
    };
    let flow = flow_tuple(&key)?;
    let dir = f.u8(OFF_DIR);
    let direction = Direction::from_abi(dir).ok_or(unknown("direction", dir))?;
    let kind = match f.u8(OFF_KIND) {
        KIND_TLS => PayloadKind::Tls,
        KIND_QUIC => PayloadKind::Quic,
        KIND_DNS => PayloadKind::Dns,
        KIND_HTTP => PayloadKind::Http,
        k => return Err(unknown("kind", k)),
    };
    let flags = f.u8(OFF_FLAGS);
    Ok(PayloadEvent {
        flow,
        direction,
        timestamp: clock.to_system(f.u64(OFF_TS)),
        tcp_seq: f.u32(OFF_SEQ),
        tcp_ack: f.u32(OFF_ACK),
        tcp_flags: f.u8(OFF_TCP_FLAGS),
        ifindex: f.u32(OFF_IFINDEX),
        vlan: key.vlan,
        orig_len: f.u32(OFF_ORIG_LEN),
        kind,
        continuation: flags & abi::EVENT_F_CONTINUATION != 0,
        last_for_flow: flags & abi::EVENT_F_LAST != 0,
        held: flags & abi::EVENT_F_HELD != 0,
        payload: Bytes::copy_from_slice(payload),
    })
}

/// Converts a flow map entry; `None` for a key with an unknown address family or protocol.
pub fn flow_counters(key: &FlowKey, v: &FlowValue, clock: &KernelClock) -> Option<FlowCounters> {
    let up = (v.tcp_flags & 0xff) as u8;
    let down = ((v.tcp_flags >> 8) & 0xff) as u8;
    Some(FlowCounters {
        flow: flow_tuple(key).ok()?,
        vlan: key.vlan,
        packets_up: v.packets_up,
        packets_down: v.packets_down,
        bytes_up: v.bytes_up,
        bytes_down: v.bytes_down,
        first_seen: clock.to_system(v.first_seen_ns),
        last_seen: clock.to_system(v.last_seen_ns),
        tcp_flags: up | down,
        tcp_flags_up: up,
        tcp_flags_down: down,
        events: v.events,
        ifindex: v.ifindex,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_common::EventHeader;

    fn header_bytes(h: &EventHeader) -> Vec<u8> {
        // Serialise field by field in the same order as the repr(C) layout.
        let mut v = Vec::new();
        for w in h.key.user_addr.iter().chain(&h.key.remote_addr) {
            v.extend_from_slice(&w.to_ne_bytes());
        }
        v.extend_from_slice(&h.key.user_port.to_ne_bytes());
        v.extend_from_slice(&h.key.remote_port.to_ne_bytes());
        v.push(h.key.proto);
        v.push(h.key.family);
        v.extend_from_slice(&h.key.vlan.to_ne_bytes());
        v.extend_from_slice(&h.timestamp_ns.to_ne_bytes());
        v.extend_from_slice(&h.tcp_seq.to_ne_bytes());
        v.extend_from_slice(&h.ifindex.to_ne_bytes());
        v.extend_from_slice(&h.orig_len.to_ne_bytes());
        v.extend_from_slice(&h.cap_len.to_ne_bytes());
        v.extend_from_slice(&[h.kind, h.direction, h.tcp_flags, h.flags]);
        v.extend_from_slice(&h.abi.to_ne_bytes());
        v.extend_from_slice(&h.tcp_ack.to_ne_bytes());
        v.extend_from_slice(&h._pad.to_ne_bytes());
        assert_eq!(v.len(), EVENT_HEADER_LEN);
        v
    }

    fn sample() -> (EventHeader, Vec<u8>) {
        let key = flow_key(
            &FlowTuple::new(
                L4Proto::Tcp,
                ("192.0.2.7".parse().unwrap(), 40000),
                ("198.51.100.1".parse().unwrap(), 443),
            ),
            10,
        )
        .unwrap();
        let h = EventHeader {
            key,
            timestamp_ns: 5_000_000_000,
            tcp_seq: 0xdead_beef,
            ifindex: 3,
            orig_len: 517,
            cap_len: 4,
            kind: KIND_TLS,
            direction: abi::DIR_UP,
            tcp_flags: 0x18,
            flags: abi::EVENT_F_CONTINUATION,
            abi: abi::ABI_VERSION,
            tcp_ack: 0x0102_0304,
            _pad: 0,
        };
        let mut rec = header_bytes(&h);
        rec.extend_from_slice(&[0x16, 0x03, 0x01, 0x02]);
        (h, rec)
    }

    #[test]
    fn decodes_a_record() {
        let (_, rec) = sample();
        let clock = KernelClock::fixed(
            SystemTime::UNIX_EPOCH + Duration::from_secs(100),
            10_000_000_000,
        );
        let ev = decode_record(&rec, &clock).unwrap();
        assert_eq!(ev.flow.user_ip, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(ev.flow.remote_ip, "198.51.100.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (ev.flow.user_port, ev.flow.remote_port, ev.vlan),
            (40000, 443, 10)
        );
        assert_eq!(ev.kind, PayloadKind::Tls);
        assert_eq!(ev.direction, Direction::Up);
        assert!(ev.continuation);
        assert_eq!(ev.tcp_seq, 0xdead_beef);
        assert_eq!(ev.tcp_ack, 0x0102_0304);
        assert_eq!(ev.orig_len, 517);
        assert_eq!(&ev.payload[..], &[0x16, 0x03, 0x01, 0x02]);
        assert_eq!(
            ev.timestamp,
            SystemTime::UNIX_EPOCH + Duration::from_secs(95)
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let (_, rec) = sample();
        let clock = KernelClock::now();
        for n in 0..rec.len() {
            assert!(decode_record(&rec[..n], &clock).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn rejects_unknown_values() {
        let (_, rec) = sample();
        let clock = KernelClock::now();
        let mut bad = rec.clone();
        bad[OFF_KIND] = 99;
        assert!(matches!(
            decode_record(&bad, &clock),
            Err(RecordError::Unknown { field: "kind", .. })
        ));
        let mut bad = rec.clone();
        bad[OFF_ABI] = 77;
        assert!(matches!(
            decode_record(&bad, &clock),
            Err(RecordError::Abi { .. })
        ));
        let mut bad = rec;
        bad[37] = 5; // family
        assert!(decode_record(&bad, &clock).is_err());
    }

    #[test]
    fn flow_key_round_trips_v6() {
        let u: IpAddr = "2001:db8::1".parse().unwrap();
        let r: IpAddr = "2001:db8:ffff::2".parse().unwrap();
        let k = flow_key(&FlowTuple::new(L4Proto::Udp, (u, 5353), (r, 443)), 0).unwrap();
        assert_eq!(key_addr(k.family, &k.user_addr), Some(u));
        assert_eq!(key_addr(k.family, &k.remote_addr), Some(r));
        assert!(
            flow_key(
                &FlowTuple::new(L4Proto::Udp, (u, 1), ("192.0.2.1".parse().unwrap(), 2)),
                0
            )
            .is_none()
        );
    }
}
