//! Tollgate's TCX programs. One body, four entry points (LAN/WAN x ingress/egress) so that the
//! direction of a packet is a constant: on a "lan" interface ingress is up (from users) and
//! egress is down; on a "wan" interface egress is up and ingress is down.
//!
//! Per packet: parse Ethernet (+ up to two 802.1Q/802.1ad tags), IPv4/IPv6, TCP/UDP into a
//! normalized `FlowKey` (user side first); add to the flow's counters in `TG_FLOWS`; for the
//! first few payload-carrying packets of each direction look at the first bytes and, if they
//! are a TLS handshake record, a QUIC long-header Initial, DNS or an HTTP/1 request head, copy
//! the payload into the `TG_EVENTS` ring buffer. A ClientHello longer than its first segment is
//! followed in `TG_HELLO` so that its continuation segments are sent too.
//!
//! Everything is bounded: maps are fixed-size (LRU maps evict), a full ring buffer drops the
//! event and counts it, a flow may produce at most a configured number of events, and the
//! packet always passes (`TC_ACT_UNSPEC`, TCX_NEXT) unless an enforce-mode verdict says
//! otherwise.
#![no_std]
#![no_main]

use core::ptr;

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{
        bpf_ktime_get_coarse_ns, bpf_skb_change_tail, bpf_skb_load_bytes,
        generated::{bpf_map_lookup_elem, bpf_probe_read_kernel, bpf_sk_assign, bpf_sk_release},
    },
    macros::{classifier, map},
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf, SockMap,
        lpm_trie::Key as LpmKey,
    },
    programs::TcContext,
};
use tollgate_common::{
    ABI_VERSION, ACTION_BLOCK, ACTION_DROP, ACTION_NONE, BLOCK_PAGE_MARK, BLOCK_PREFIX_CAPACITY,
    CONFIG_F_NO_QUIC_HOLD, CONFIG_F_REFUSE_DNS, CONFIG_F_UNREADABLE_BLOCK, Config,
    DEFAULT_INSPECT_PACKETS, DEFAULT_MAX_DNS_EVENTS_PER_FLOW, DEFAULT_MAX_EVENTS_PER_FLOW, DIR_UP,
    EVENT_F_CONTINUATION, EVENT_F_LAST, EVENT_F_TRUNCATED, EVENT_HEADER_LEN, EVENTS_RING_BYTES,
    EventBuf, EventHeader, FAMILY_V4, FAMILY_V6, FLOW_F_CAPPED, FLOW_F_DNS, FLOW_F_HELLO_PENDING,
    FLOW_F_HTTP, FLOW_F_QUIC, FLOW_F_QUIC_HOLD, FLOW_F_QUIC_RELEASED, FLOW_F_TLS,
    FLOW_VERDICTS_CAPACITY, FLOWS_CAPACITY, FlowKey, FlowValue, FlowVerdict, HELLO_BUF_LEN,
    HELLO_CAPACITY, HELLO_WINDOW, HelloState, IFACES_CAPACITY, IfaceInfo, IpVerdict, KIND_DNS,
    KIND_HTTP, KIND_QUIC, KIND_TLS, MODE_ENFORCE, NAME_F_REFUSE_DNS, NAME_F_SUBDOMAINS,
    NAME_HASH_SEED, NAME_VERDICTS_CAPACITY, NameKey, NameVerdict, PAYLOAD_CAP, PROTO_TCP,
    PROTO_UDP, QUIC_HOLD_NS, STAT_BYTES, STAT_DEDUP, STAT_DNS_REFUSED, STAT_DROPS, STAT_ERR_IPV4,
    STAT_ERR_IPV6, STAT_ERR_L2, STAT_ERR_PAYLOAD, STAT_ERR_TCP, STAT_ERR_UDP, STAT_EVENTS,
    STAT_EVENTS_CAPPED, STAT_FLOW_MAP_FULL, STAT_FRAGMENTS, STAT_HELLO_CONT, STAT_HELLO_MAP_FULL,
    STAT_HTTP_BLOCKED, STAT_HTTP_HOST_FOUND, STAT_ICMP_SENT, STAT_NAME_VERDICTS, STAT_NON_IP,
    STAT_OTHER_L4, STAT_PACKETS, STAT_QUIC_HELD, STAT_QUIC_HOLD_EXPIRED, STAT_RINGBUF_FULL,
    STAT_RST_SENT, STAT_SNI_FOUND, STAT_WOULD_DROP, Stats, name_hash_step,
};
use tollgate_common::{
    FLOW_F_AT_START, FLOW_F_ISN, FLOW_F_NAMED, FLOW_F_STARTED, FLOW_F_STEER_CHECKED, FLOW_F_UNREADABLE,
    STAT_FRAG_REFUSED, STAT_FRAG_TINY, STAT_HELLO_LOST, STAT_HELLO_MULTI_RECORD,
    STAT_HELLO_OUT_OF_ORDER, STAT_IPV6_EXT_OVERFLOW, STAT_LONG_NAMES, STAT_START_REPEATS,
    STAT_UNREADABLE_BLOCKED, STAT_UNREADABLE_FRAGMENTED, STAT_UNREADABLE_NO_SNI,
    STAT_UNREADABLE_PASSED, STAT_UNREADABLE_QUIC, STAT_UNREADABLE_RECORDS, STAT_UNREADABLE_START,
    STAT_VLAN_DEEP,
};
use tollgate_common::{
    ACTION_REFUSE, CONFIG_F_SESSION, DIR_DOWN, EVENT_F_HELD, FLOW_F_STEERED, NAME_F_SESSION,
    STAT_DNS_HELD, STAT_DNS_UNSOLICITED, STAT_SESSION_REFUSED, STAT_SESSION_UNPROVEN, STAT_STEER_BY_CLIENT,
    STAT_STEER_CLIENT_ADDED, STAT_STEER_KEPT_STALE, STAT_STEER_LOST_RESET, STAT_STEER_NO_PROXY,
    STAT_STEER_QUIC_REFUSED, STAT_STEERED, STEER_CLIENT_CAPACITY, STEER_CLIENT_TTL_NS, STEER_MARK,
    STEER_PREFIX_CAPACITY, STEER_SLOT_V4, STEER_SLOT_V6, STEER_SOCK_SLOTS, STEER_TCP_PORT,
    STEER_UDP_PORT, SteerClientKey, SteerEntry,
};

// ---- maps (names are the ABI's MAP_* constants; the loader pins them under its pin dir) ----

#[map]
static TG_FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(FLOWS_CAPACITY, 0);
#[map]
static TG_HELLO: LruHashMap<FlowKey, HelloState> = LruHashMap::with_max_entries(HELLO_CAPACITY, 0);
#[map]
static TG_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
#[map]
static TG_FLOW_VERDICT: LruHashMap<FlowKey, FlowVerdict> =
    LruHashMap::with_max_entries(FLOW_VERDICTS_CAPACITY, 0);
#[map]
static TG_NAME_VERDICT: HashMap<NameKey, NameVerdict> =
    HashMap::with_max_entries(NAME_VERDICTS_CAPACITY, 0);
#[map]
static TG_BLOCK_V4: LpmTrie<[u8; 4], IpVerdict> =
    LpmTrie::with_max_entries(BLOCK_PREFIX_CAPACITY, 0);
#[map]
static TG_BLOCK_V6: LpmTrie<[u8; 16], IpVerdict> =
    LpmTrie::with_max_entries(BLOCK_PREFIX_CAPACITY, 0);
#[map]
static TG_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static TG_STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(1, 0);
#[map]
static TG_SCRATCH: PerCpuArray<EventBuf> = PerCpuArray::with_max_entries(1, 0);
#[map]
static TG_HSCRATCH: PerCpuArray<HelloState> = PerCpuArray::with_max_entries(1, 0);
#[map]
static TG_FSCRATCH: PerCpuArray<FlowValue> = PerCpuArray::with_max_entries(1, 0);
#[map]
static TG_JOB: PerCpuArray<Job> = PerCpuArray::with_max_entries(1, 0);
#[map]
static TG_PROGS: ProgramArray = ProgramArray::with_max_entries(8, 0);
#[map]
static TG_IFACES: HashMap<u32, IfaceInfo> = HashMap::with_max_entries(IFACES_CAPACITY, 0);
#[map]
static TG_STEER_V4: LpmTrie<[u8; 4], SteerEntry> =
    LpmTrie::with_max_entries(STEER_PREFIX_CAPACITY, 0);
#[map]
static TG_STEER_V6: LpmTrie<[u8; 16], SteerEntry> =
    LpmTrie::with_max_entries(STEER_PREFIX_CAPACITY, 0);
#[map]
static TG_PROXY_SOCK: SockMap = SockMap::with_max_entries(STEER_SOCK_SLOTS, 0);
#[map]
static TG_STEER_CLI: LruHashMap<SteerClientKey, SteerEntry> =
    LruHashMap::with_max_entries(STEER_CLIENT_CAPACITY, 0);

// ---- actions ----

/// Pass in a TCX chain: TCX_NEXT lets later programs and the stack decide (`TC_ACT_OK` would
/// end the chain).
const PASS: i32 = TC_ACT_UNSPEC;
/// A packet we cannot parse passes (fail-open on parse errors, counted in `STAT_ERR_*`): the
/// gateway must never break traffic it does not understand.
const ON_PARSE_ERROR: i32 = PASS;
/// Drop (used by enforce-mode verdicts only).
const DROP: i32 = TC_ACT_SHOT;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_HLEN: usize = 14;

const DNS_PORT: u16 = 53;

// ---- entry points ----

#[classifier]
pub fn tg_lan_ingress(ctx: TcContext) -> i32 {
    run(&ctx, DIR_UP, false)
}

#[classifier]
pub fn tg_lan_egress(ctx: TcContext) -> i32 {
    run(&ctx, tollgate_common::DIR_DOWN, true)
}

#[classifier]
pub fn tg_wan_ingress(ctx: TcContext) -> i32 {
    run(&ctx, tollgate_common::DIR_DOWN, false)
}

#[classifier]
pub fn tg_wan_egress(ctx: TcContext) -> i32 {
    run(&ctx, DIR_UP, true)
}

/// The floor of the per-packet cost benchmark: does nothing.
#[classifier]
pub fn tg_noop(_ctx: TcContext) -> i32 {
    PASS
}

#[inline(always)]
fn run(ctx: &TcContext, dir: u8, egress: bool) -> i32 {
    match try_run(ctx, dir, egress) {
        Ok(action) | Err(action) => action,
    }
}

// ---- packet access: every read goes through here ----

/// Reads a `T` (a byte array) at `off`: directly from the linear packet data when it is there,
/// else through `bpf_skb_load_bytes` (non-linear skbs). `None` when the packet is too short.
#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    // Single bytes go through the helper: LLVM turns `p + 1 <= end` into `p < end`, which the
    // verifier does not accept as a bound for p.
    if off > MAX_DIRECT_OFF || core::mem::size_of::<T>() < 2 {
        return ctx.load::<T>(off).ok();
    }
    // The verifier only allows a packet pointer plus a bounded offset; the mask (a no-op after
    // the check above) is applied to a volatile re-read so that LLVM cannot drop it.
    // SAFETY: reads a local.
    let off = unsafe { ptr::read_volatile(&off) } & MAX_DIRECT_OFF;
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() <= end {
        // SAFETY: [start + off, start + off + size_of::<T>()) lies inside the linear packet
        // data (checked against data_end just above); T is a plain byte array.
        return Some(unsafe { ptr::read_unaligned((start + off) as *const T) });
    }
    ctx.load::<T>(off).ok()
}

/// Largest offset read through direct packet access (the rest use bpf_skb_load_bytes).
const MAX_DIRECT_OFF: usize = 0x3fff;

#[inline(always)]
fn stat(idx: usize, n: u64) {
    if let Some(s) = TG_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU array value of this CPU; programs do not migrate while running.
        unsafe {
            if let Some(c) = (*s).counters.get_mut(idx) {
                *c += n;
            }
        }
    }
}

/// Two counters with one map lookup.
#[inline(always)]
fn stat2(a: usize, na: u64, b: usize, nb: u64) {
    if let Some(s) = TG_STATS.get_ptr_mut(0) {
        // SAFETY: as in `stat`.
        unsafe {
            if let Some(c) = (*s).counters.get_mut(a) {
                *c += na;
            }
            if let Some(c) = (*s).counters.get_mut(b) {
                *c += nb;
            }
        }
    }
}

#[inline(always)]
fn sk_field_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed to the program.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn sk_mark(ctx: &TcContext) -> u32 {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed to the program.
    unsafe { (*ctx.skb.skb).mark }
}

#[inline(always)]
fn sk_field_ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: as above.
    unsafe { (*ctx.skb.skb).ingress_ifindex }
}

#[inline(always)]
fn sk_vlan(ctx: &TcContext) -> Option<u16> {
    // SAFETY: as above.
    let (present, tci) = unsafe { ((*ctx.skb.skb).vlan_present, (*ctx.skb.skb).vlan_tci) };
    if present != 0 {
        Some((tci & 0x0fff) as u16)
    } else {
        None
    }
}

#[inline(always)]
fn sk_gso_segs(ctx: &TcContext) -> u32 {
    // SAFETY: as above.
    let segs = unsafe { (*ctx.skb.skb).gso_segs };
    if segs == 0 { 1 } else { segs }
}

// ---- parsing ----

/// What the header parse found.
#[derive(Clone, Copy)]
struct Pkt {
    key: FlowKey,
    /// L3 length (IP header and payload) of the skb (GSO: all segments).
    l3_len: u32,
    payload_off: u32,
    /// Payload bytes present in the skb from `payload_off`.
    payload_len: u32,
    /// Payload length the headers claim (what `orig_len` reports).
    claimed_len: u32,
    tcp_seq: u32,
    tcp_ack: u32,
    tcp_flags: u8,
    l3_off: u32,
    l4_off: u32,
}

/// Source/destination of a parsed packet before normalization.
struct Raw {
    family: u8,
    proto: u8,
    /// `FRAG_*`.
    frag: u8,
    src: [u32; 4],
    dst: [u32; 4],
    l4_off: usize,
    /// Bytes from `l4_off` to the end of the IP payload.
    l4_len: u32,
    l3_len: u32,
}

/// Inline VLAN tags parsed (802.1ad outer + 802.1Q inner + one more, besides the tag the NIC
/// took off); a frame with more is `STAT_VLAN_DEEP`, handled like an unreadable packet.
const MAX_VLAN_TAGS: usize = 3;

#[inline(always)]
fn parse(ctx: &TcContext, dir: u8, egress: bool) -> Result<Pkt, i32> {
    let eth: [u8; ETH_HLEN] = read(ctx, 0).ok_or_else(|| err(STAT_ERR_L2))?;
    let mut proto = u16::from_be_bytes([eth[12], eth[13]]);
    let mut l3_off = ETH_HLEN;
    let mut vlan = sk_vlan(ctx).unwrap_or(0);
    // Stacked tags inline; the key keeps the innermost id.
    for _ in 0..MAX_VLAN_TAGS {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        let tag: [u8; 4] = read(ctx, l3_off).ok_or_else(|| err(STAT_ERR_L2))?;
        vlan = u16::from_be_bytes([tag[0], tag[1]]) & 0x0fff;
        proto = u16::from_be_bytes([tag[2], tag[3]]);
        l3_off += 4;
    }
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        return Err(portless_tail(ctx, dir, egress, STAT_VLAN_DEEP, 0));
    }
    // The L3 offset goes through map memory: the verifier then checks the rest of the
    // program once, not once per number of tags.
    let job = job().ok_or(ON_PARSE_ERROR)?;
    // SAFETY: job is this CPU's map value.
    unsafe { ptr::write_volatile(&mut job.l3_off, l3_off as u32) };
    // SAFETY: as above.
    let l3_off = (unsafe { ptr::read_volatile(&job.l3_off) } & 0xff) as usize;
    let skb_len = ctx.len();
    let raw = match proto {
        ETH_P_IPV4 => parse_ipv4(ctx, l3_off, skb_len)?,
        ETH_P_IPV6 => parse_ipv6(ctx, l3_off, skb_len)?,
        _ => return Err(err(STAT_NON_IP)),
    };
    if raw.frag == FRAG_LATER {
        return Err(portless_raw(ctx, &raw, dir, egress, STAT_FRAGMENTS));
    }
    if raw.frag == FRAG_OVERFLOW {
        return Err(portless_raw(ctx, &raw, dir, egress, STAT_IPV6_EXT_OVERFLOW));
    }
    // Whether this is a first fragment is read back where it is used (through map memory,
    // so that it does not double the verifier's paths in between).
    // SAFETY: job is this CPU's map value.
    unsafe { ptr::write_volatile(&mut job.frag_first, u32::from(raw.frag == FRAG_FIRST)) };
    let (sport, dport, hdr_len, tcp_seq, tcp_ack, tcp_flags) = match raw.proto {
        PROTO_TCP => {
            let Some(h) = read::<[u8; 20]>(ctx, raw.l4_off) else {
                if raw.frag == FRAG_FIRST {
                    return Err(portless_raw(ctx, &raw, dir, egress, STAT_FRAG_TINY));
                }
                return Err(err(STAT_ERR_TCP));
            };
            let doff = u32::from(h[12] >> 4) * 4;
            if raw.frag == FRAG_FIRST && (raw.l4_len < 20 || doff > raw.l4_len) {
                return Err(portless_raw(ctx, &raw, dir, egress, STAT_FRAG_TINY));
            }
            if doff < 20 || doff > raw.l4_len {
                return Err(err(STAT_ERR_TCP));
            }
            (
                u16::from_be_bytes([h[0], h[1]]),
                u16::from_be_bytes([h[2], h[3]]),
                doff,
                u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
                h[13],
            )
        }
        PROTO_UDP => {
            let Some(h) = read::<[u8; 8]>(ctx, raw.l4_off) else {
                if raw.frag == FRAG_FIRST {
                    return Err(portless_raw(ctx, &raw, dir, egress, STAT_FRAG_TINY));
                }
                return Err(err(STAT_ERR_UDP));
            };
            if raw.l4_len < 8 {
                if raw.frag == FRAG_FIRST {
                    return Err(portless_raw(ctx, &raw, dir, egress, STAT_FRAG_TINY));
                }
                return Err(err(STAT_ERR_UDP));
            }
            (
                u16::from_be_bytes([h[0], h[1]]),
                u16::from_be_bytes([h[2], h[3]]),
                8,
                0,
                0,
                0,
            )
        }
        _ => return Err(err(STAT_OTHER_L4)),
    };
    let payload_off = raw.l4_off as u32 + hdr_len;
    let claimed_len = raw.l4_len - hdr_len;
    let present = skb_len.saturating_sub(payload_off);
    let payload_len = if present < claimed_len {
        stat(STAT_ERR_PAYLOAD, 1);
        present
    } else {
        claimed_len
    };
    let (user_addr, user_port, remote_addr, remote_port) = if dir == DIR_UP {
        (raw.src, sport, raw.dst, dport)
    } else {
        (raw.dst, dport, raw.src, sport)
    };
    Ok(Pkt {
        key: FlowKey {
            user_addr,
            remote_addr,
            user_port,
            remote_port,
            proto: raw.proto,
            family: raw.family,
            vlan,
        },
        l3_len: raw.l3_len,
        payload_off,
        payload_len,
        claimed_len,
        tcp_seq,
        tcp_ack,
        tcp_flags,
        l3_off: l3_off as u32,
        l4_off: raw.l4_off as u32,
    })
}

/// `Raw::frag`: not a fragment.
const FRAG_NONE: u8 = 0;
/// The first fragment of a datagram (offset 0, more fragments follow): it carries the L4
/// header.
const FRAG_FIRST: u8 = 1;
/// A later fragment (no L4 header).
const FRAG_LATER: u8 = 2;
/// IPv6: more extension headers than `MAX_IPV6_EXT` (the L4 header was not reached).
const FRAG_OVERFLOW: u8 = 3;

/// `tg_portless` for a packet whose addresses were parsed: they go to this CPU's job.
#[inline(always)]
fn portless_raw(ctx: &TcContext, raw: &Raw, dir: u8, egress: bool, why: usize) -> i32 {
    if let Some(job) = job() {
        let k = &mut job.pkt.key;
        if dir == DIR_UP {
            k.user_addr = raw.src;
            k.remote_addr = raw.dst;
        } else {
            k.user_addr = raw.dst;
            k.remote_addr = raw.src;
        }
        k.user_port = 0;
        k.remote_port = 0;
        k.proto = raw.proto;
        k.family = raw.family;
        k.vlan = 0;
    }
    let maybe_tcp = raw.proto == PROTO_TCP || raw.frag == FRAG_OVERFLOW;
    portless_tail(ctx, dir, egress, why, PORTLESS_ADDRS | u32::from(maybe_tcp))
}

/// Hands a packet the probes cannot follow down to its ports to `tg_portless` (a tail call);
/// when that fails, the packet is counted and passes.
#[inline(always)]
fn portless_tail(ctx: &TcContext, dir: u8, egress: bool, why: usize, flags: u32) -> i32 {
    if let Some(job) = job() {
        job.dir = dir;
        job.egress = u8::from(egress);
        job.action = why as u32;
        job.portless = flags;
        // SAFETY: tail call; returns only when it fails.
        unsafe { TG_PROGS.tail_call(ctx, PROG_INDEX_PORTLESS) };
    }
    stat(why, 1);
    ON_PARSE_ERROR
}

/// `Job::portless` flags: the packet may be TCP.
const PORTLESS_TCP: u32 = 1;
/// `Job::portless` flags: the job's key holds the packet's addresses.
const PORTLESS_ADDRS: u32 = 2;

/// Tail-called for a packet the probes cannot follow down to its ports: a later IP fragment,
/// a tiny first fragment, an IPv6 extension-header chain longer than the walk, a frame with
/// more VLAN tags than parsed (no addresses). Counted under the job's `action` (a `STAT_*`
/// id); dropped when its destination is blocked or steered (a first fragment of such a flow
/// is refused anyway), when it is a tiny first fragment (RFC 1858: no real stack sends one),
/// or, for packets from users that may be TCP, under `unreadable = "block"`; else it passes.
#[classifier]
pub fn tg_portless(_ctx: TcContext) -> i32 {
    let Some(job) = job() else {
        return ON_PARSE_ERROR;
    };
    let why = job.action as usize;
    let flags = job.portless;
    stat(why, 1);
    let Some(c) = TG_CONFIG.get(0) else {
        return ON_PARSE_ERROR;
    };
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let up = job.dir == DIR_UP;
    let maybe_tcp = flags & PORTLESS_TCP != 0 || flags & PORTLESS_ADDRS == 0;
    let mut refuse = why == STAT_FRAG_TINY;
    let mut steered = false;
    if flags & PORTLESS_ADDRS != 0 {
        if c.generation != 0 {
            let v = evaluate(&job.pkt.key, now);
            refuse |= v == ACTION_BLOCK || v == ACTION_DROP;
        }
        steered = up && job.egress == 0 && maybe_tcp && steered_destination(&job.pkt.key, now) != 0;
    }
    let by_setting = up && maybe_tcp && c.flags & CONFIG_F_UNREADABLE_BLOCK != 0;
    if !refuse && !steered && !by_setting {
        return ON_PARSE_ERROR;
    }
    // Session control does not depend on the mode; the rest is enforced in enforce mode.
    if !steered && !enforcing(c, now) {
        stat(STAT_WOULD_DROP, 1);
        return ON_PARSE_ERROR;
    }
    if why == STAT_FRAGMENTS {
        stat(STAT_FRAG_REFUSED, 1);
    }
    if by_setting && !refuse && !steered {
        stat(STAT_UNREADABLE_BLOCKED, 1);
    }
    stat(STAT_DROPS, 1);
    DROP
}

#[inline(always)]
fn err(idx: usize) -> i32 {
    stat(idx, 1);
    ON_PARSE_ERROR
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, l3_off: usize, skb_len: u32) -> Result<Raw, i32> {
    let h: [u8; 20] = read(ctx, l3_off).ok_or_else(|| err(STAT_ERR_IPV4))?;
    if h[0] >> 4 != 4 {
        return Err(err(STAT_ERR_IPV4));
    }
    let ihl = u32::from(h[0] & 0x0f) * 4;
    let avail = skb_len.saturating_sub(l3_off as u32);
    let tot = u32::from(u16::from_be_bytes([h[2], h[3]]));
    // GSO/BIG TCP packets may carry a zero total length: the skb then says how long it is.
    let l3_len = if tot == 0 { avail } else { tot };
    if ihl < 20 || l3_len < ihl {
        return Err(err(STAT_ERR_IPV4));
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let frag = if frag & 0x1fff != 0 {
        FRAG_LATER
    } else if frag & 0x2000 != 0 {
        FRAG_FIRST
    } else {
        FRAG_NONE
    };
    Ok(Raw {
        family: FAMILY_V4,
        proto: h[9],
        frag,
        src: [u32::from_ne_bytes([h[12], h[13], h[14], h[15]]), 0, 0, 0],
        dst: [u32::from_ne_bytes([h[16], h[17], h[18], h[19]]), 0, 0, 0],
        l4_off: l3_off + ihl as usize,
        l4_len: l3_len - ihl,
        l3_len,
    })
}

#[inline(always)]
fn words(b: &[u8; 40], at: usize) -> [u32; 4] {
    let mut w = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        let o = at + i * 4;
        if let (Some(a), Some(b1), Some(c), Some(d)) =
            (b.get(o), b.get(o + 1), b.get(o + 2), b.get(o + 3))
        {
            w[i] = u32::from_ne_bytes([*a, *b1, *c, *d]);
        }
        i += 1;
    }
    w
}

/// IPv6 extension headers walked; a longer chain is `FRAG_OVERFLOW` (RFC 9098: such chains
/// are dropped by many networks; here they are handled like other unreadable packets).
const MAX_IPV6_EXT: usize = 8;

#[inline(always)]
fn is_ipv6_ext(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

/// Walks IPv6 extension headers from `off` (the first one's type is `next`): hop-by-hop,
/// routing, destination options, mobility, HIP, shim6 and the experimental ones share one
/// length format; AH counts 4-byte words; fragment. Returns the upper-layer protocol (or the
/// header type where the walk stopped), its offset, the bytes left from there, and `FRAG_*`.
/// The walk's position is kept in this CPU's job scratch and read back at each step: the
/// verifier then sees one unknown offset per step instead of one per path (which multiplied
/// with every header).
#[inline(always)]
fn ipv6_ext_walk(
    ctx: &TcContext,
    next: u8,
    off: u32,
    left: u32,
) -> Result<(u8, u32, u32, u8), i32> {
    let job = job().ok_or_else(|| err(STAT_ERR_IPV6))?;
    // SAFETY (all volatile accesses below): job is this CPU's map value.
    unsafe {
        ptr::write_volatile(&mut job.ext_next, u32::from(next));
        ptr::write_volatile(&mut job.ext_off, off);
        ptr::write_volatile(&mut job.ext_left, left);
        ptr::write_volatile(&mut job.ext_frag, u32::from(FRAG_NONE));
    }
    for _ in 0..MAX_IPV6_EXT {
        // SAFETY: as above.
        let (next, off, left) = unsafe {
            (
                ptr::read_volatile(&job.ext_next) as u8,
                ptr::read_volatile(&job.ext_off),
                ptr::read_volatile(&job.ext_left),
            )
        };
        if next == 44 {
            let e = ctx
                .load::<[u8; 4]>(off as usize)
                .map_err(|_| err(STAT_ERR_IPV6))?;
            if 8 > left {
                return Err(err(STAT_ERR_IPV6));
            }
            let fo = u16::from_be_bytes([e[2], e[3]]);
            let later = fo & 0xfff8 != 0;
            let frag = if later {
                FRAG_LATER
            } else if fo & 1 != 0 {
                FRAG_FIRST
            } else {
                FRAG_NONE
            };
            // SAFETY: as above.
            unsafe {
                ptr::write_volatile(&mut job.ext_frag, u32::from(frag));
                ptr::write_volatile(&mut job.ext_next, u32::from(e[0]));
                ptr::write_volatile(&mut job.ext_off, off + 8);
                ptr::write_volatile(&mut job.ext_left, left - 8);
            }
            if later {
                break;
            }
        } else if is_ipv6_ext(next) {
            let e = ctx
                .load::<[u8; 2]>(off as usize)
                .map_err(|_| err(STAT_ERR_IPV6))?;
            let len = if next == 51 {
                (u32::from(e[1]) + 2) * 4
            } else {
                (u32::from(e[1]) + 1) * 8
            };
            if len > left {
                return Err(err(STAT_ERR_IPV6));
            }
            // SAFETY: as above.
            unsafe {
                ptr::write_volatile(&mut job.ext_next, u32::from(e[0]));
                ptr::write_volatile(&mut job.ext_off, off + len);
                ptr::write_volatile(&mut job.ext_left, left - len);
            }
        } else {
            break;
        }
    }
    // SAFETY: as above.
    let (next, off, left, frag) = unsafe {
        (
            ptr::read_volatile(&job.ext_next) as u8,
            ptr::read_volatile(&job.ext_off),
            ptr::read_volatile(&job.ext_left),
            ptr::read_volatile(&job.ext_frag) as u8,
        )
    };
    let frag = if frag != FRAG_LATER && is_ipv6_ext(next) {
        FRAG_OVERFLOW
    } else {
        frag
    };
    Ok((next, off, left, frag))
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, l3_off: usize, skb_len: u32) -> Result<Raw, i32> {
    let h: [u8; 40] = read(ctx, l3_off).ok_or_else(|| err(STAT_ERR_IPV6))?;
    if h[0] >> 4 != 6 {
        return Err(err(STAT_ERR_IPV6));
    }
    let plen = u32::from(u16::from_be_bytes([h[4], h[5]]));
    let avail = skb_len.saturating_sub(l3_off as u32 + 40);
    // Jumbograms / BIG TCP carry a zero payload length.
    let mut l4_len = if plen == 0 { avail } else { plen };
    let mut next = h[6];
    let mut off = l3_off + 40;
    let mut frag = FRAG_NONE;
    if is_ipv6_ext(next) {
        let w = ipv6_ext_walk(ctx, next, off as u32, l4_len)?;
        next = w.0;
        off = w.1 as usize;
        l4_len = w.2;
        frag = w.3;
    }
    Ok(Raw {
        family: FAMILY_V6,
        proto: next,
        frag,
        src: words(&h, 8),
        dst: words(&h, 24),
        l4_off: off,
        l4_len,
        l3_len: plen + 40,
    })
}

// ---- the per-packet work ----

#[inline(always)]
fn try_run(ctx: &TcContext, dir: u8, egress: bool) -> Result<i32, i32> {
    // The daemon's own block page (a blocked flow: anything else would become a reset). Only
    // a packet the gateway itself sends can be one: a forwarded packet's mark never skips us.
    if egress
        && sk_mark(ctx) & BLOCK_PAGE_MARK == BLOCK_PAGE_MARK
        && sk_field_ingress_ifindex(ctx) == 0
    {
        return Ok(PASS);
    }
    let segs = sk_gso_segs(ctx);
    // A forwarded packet that one of our ingress hooks already saw is not counted twice.
    if egress {
        let iif = sk_field_ingress_ifindex(ctx);
        // Except DNS answers while session control runs: a LAN egress hook is where an
        // answer names the real client (a WAN ingress hook sees it before NAT is undone), so
        // that is where answers are held (see `hold_dns_answer`).
        if iif != 0 && TG_IFACES.get_ptr(iif).is_some() && !(dir == DIR_DOWN && session_dns(ctx)) {
            stat2(STAT_PACKETS, u64::from(segs), STAT_DEDUP, 1);
            if dir != DIR_UP {
                forwarded_dns_answer(ctx, dir);
            }
            return Ok(PASS);
        }
    }
    let pkt = match parse(ctx, dir, egress) {
        Ok(p) => p,
        Err(action) => {
            stat(STAT_PACKETS, u64::from(segs));
            return Err(action);
        }
    };
    stat2(
        STAT_PACKETS,
        u64::from(segs),
        STAT_BYTES,
        u64::from(pkt.l3_len),
    );
    // CLOCK_MONOTONIC at jiffy resolution: enough for first/last seen and event times, and
    // ~25 ns cheaper per packet than bpf_ktime_get_boot_ns on a VM's kvm-clock.
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let ifindex = sk_field_ifindex(ctx);
    let up = dir == DIR_UP;

    let flow = match TG_FLOWS.get_ptr_mut(&pkt.key) {
        Some(f) => {
            // SAFETY: pointer to a live LRU map value. Plain adds, not atomics: one direction of
            // a flow is handled by one CPU at a time (RSS/RPS keep a flow on one queue), and the
            // two directions update different words, so a lost update needs a flow split across
            // CPUs in the same direction at the same instant; atomics cost ~10 ns per packet.
            unsafe {
                if up {
                    if (*f).packets_up == 0 {
                        // The flow began toward the user (perhaps an unsolicited answer):
                        // from now on it belongs to the interface the user sends by.
                        (*f).ifindex = ifindex;
                    }
                    (*f).packets_up += u64::from(segs);
                    (*f).bytes_up += u64::from(pkt.l3_len);
                } else {
                    (*f).packets_down += u64::from(segs);
                    (*f).bytes_down += u64::from(pkt.l3_len);
                }
                (*f).last_seen_ns = now;
                let fl = if up {
                    u32::from(pkt.tcp_flags)
                } else {
                    u32::from(pkt.tcp_flags) << 8
                };
                if (*f).tcp_flags & fl != fl {
                    (*f).tcp_flags |= fl;
                }
            }
            f
        }
        None => {
            // Built in map memory: a FlowValue on the stack would not fit beside the rest.
            let Some(v) = TG_FSCRATCH.get_ptr_mut(0) else {
                return Ok(PASS);
            };
            // SAFETY: this CPU's scratch value; nothing else uses it meanwhile.
            let v = unsafe { &mut *v };
            *v = FlowValue::default();
            v.first_seen_ns = now;
            v.last_seen_ns = now;
            v.ifindex = ifindex;
            if up {
                v.packets_up = u64::from(segs);
                v.bytes_up = u64::from(pkt.l3_len);
                v.tcp_flags = u32::from(pkt.tcp_flags);
            } else {
                v.packets_down = u64::from(segs);
                v.bytes_down = u64::from(pkt.l3_len);
                v.tcp_flags = u32::from(pkt.tcp_flags) << 8;
            }
            if TG_FLOWS.insert(&pkt.key, &*v, 0).is_err() {
                stat(STAT_FLOW_MAP_FULL, 1);
                // Without flow state a steered flow cannot be followed (its later packets would
                // go direct, around the proxy): refuse what goes toward a steered destination.
                if up
                    && !egress
                    && (pkt.key.remote_port == STEER_TCP_PORT
                        || pkt.key.remote_port == STEER_UDP_PORT)
                    && steered_destination(&pkt.key, now) != 0
                {
                    stat(STAT_STEER_LOST_RESET, 1);
                    return Ok(refuse_steered(ctx, &pkt, dir, egress));
                }
                return Ok(untracked(ctx, &pkt, dir, egress, now));
            }
            match TG_FLOWS.get_ptr_mut(&pkt.key) {
                Some(f) => f,
                None => return Ok(untracked(ctx, &pkt, dir, egress, now)),
            }
        }
    };

    // SAFETY: live LRU map value (see above); the inspection and verdict-cache fields are
    // updated by the CPU that handles the packet (a lost update costs one extra lookup).
    let flow = unsafe { &mut *flow };
    // A user's SYN starts a connection: its sequence number places the stream's first byte,
    // which the hello checks below rely on (a reused 4-tuple starts afresh).
    if up && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && pkt.key.proto == PROTO_TCP {
        flow.isn_up = pkt.tcp_seq;
        flow.flags =
            (flow.flags | FLOW_F_ISN) & !(FLOW_F_STARTED | FLOW_F_NAMED | FLOW_F_UNREADABLE);
    }

    let cfg = TG_CONFIG.get(0);
    if let Some(c) = cfg
        && c.generation != 0
    {
        if flow.verdict_gen != c.generation {
            flow.verdict = evaluate(&pkt.key, now);
            flow.verdict_gen = c.generation;
        }
        if flow.verdict == ACTION_BLOCK
            || flow.verdict == ACTION_DROP
            || flow.verdict == ACTION_REFUSE
        {
            return Ok(enforce_tail(ctx, &pkt, dir, egress, flow.verdict, c, now));
        }
    }

    // Session control: only on a LAN ingress hook (bpf_sk_assign works at TC ingress only,
    // and only packets from users are steered).
    if up && !egress {
        if pkt.key.proto == PROTO_TCP && pkt.key.remote_port == STEER_TCP_PORT {
            // Toward a steered destination with no proxy listener for the family: a reset at
            // once (a dual-stack client falls back to the other family), never a direct
            // connection that would bypass session control; unless the daemon (and its
            // proxy) is gone for good and the admin chose fail-open.
            if !steer_tcp(ctx, &pkt, flow, now) && !cfg.is_some_and(|c| failed_open(c, now)) {
                return Ok(refuse_steered(ctx, &pkt, dir, egress));
            }
        } else if pkt.key.proto == PROTO_UDP
            && pkt.key.remote_port == STEER_UDP_PORT
            && pkt.payload_len > 0
            && read::<[u8; 1]>(ctx, pkt.payload_off as usize).is_some_and(|b| b[0] & 0x80 != 0)
            && steered_destination(&pkt.key, now) != 0
        {
            // A QUIC long-header packet (an Initial) toward an app under session control:
            // refused at once (ICMP unreachable) so that the browser falls back to TCP, where
            // the proxy sees the session. Short-header packets of a QUIC connection that was
            // already running before the destination was steered keep passing.
            stat(STAT_STEER_QUIC_REFUSED, 1);
            return Ok(refuse_steered(ctx, &pkt, dir, egress));
        }
    }

    if flow.flags & FLOW_F_QUIC_HOLD != 0
        && let Some(action) = quic_hold(ctx, &pkt, flow, dir, egress, now)
    {
        return Ok(action);
    }

    if pkt.payload_len == 0 {
        return Ok(PASS);
    }
    let names = cfg.is_some_and(|c| c.generation != 0);
    // A port-443 hello in IP fragments: the fragments after this one are not readable.
    if up
        && names
        && pkt.key.proto == PROTO_TCP
        && pkt.key.remote_port == UNREADABLE_PORT
        && flow.flags & FLOW_F_NAMED == 0
        // SAFETY: this CPU's job, written by `parse` for this packet.
        && job().is_some_and(|j| unsafe { ptr::read_volatile(&j.frag_first) } != 0)
    {
        unreadable_tail(ctx, &pkt, dir, egress, STAT_UNREADABLE_FRAGMENTED);
        return Ok(PASS);
    }
    let mut sni_job = 0;
    let kind = inspect(
        ctx,
        &pkt,
        flow,
        dir,
        egress,
        ifindex,
        now,
        names,
        &mut sni_job,
    );
    if kind == KIND_HOLD {
        // Held, not refused: the sender retransmits the segment once the bytes before it
        // came through.
        if cfg.is_some_and(|c| enforcing(c, now)) {
            stat(STAT_DROPS, 1);
            return Ok(DROP);
        }
        return Ok(PASS);
    }
    if kind == KIND_DNS
        && dir == DIR_UP
        && pkt.key.proto == PROTO_UDP
        && pkt.key.remote_port == DNS_PORT
        && cfg.is_some_and(|c| c.flags & CONFIG_F_REFUSE_DNS != 0)
    {
        sni_job = JOB_DNS;
    }
    // A DNS answer toward a user while session control runs: its question name is looked up,
    // and an answer for an app under session control is held until the daemon has steered its
    // addresses (see `hold_dns_answer`). Only on a LAN egress hook (after NAT is undone, so the
    // answer names its client), only whole answers the daemon can send on as they were, and
    // only while the daemon is alive to do it.
    if kind == KIND_DNS
        && dir == DIR_DOWN
        && egress
        && pkt.key.proto == PROTO_UDP
        && pkt.key.remote_port == DNS_PORT
        && pkt.payload_len == pkt.claimed_len
        && pkt.payload_len <= PAYLOAD_CAP as u32
        && cfg.is_some_and(|c| c.flags & CONFIG_F_SESSION != 0 && daemon_alive(c, now))
    {
        sni_job = JOB_DNS_ANSWER;
    }
    if sni_job != 0
        && let Some(job) = TG_JOB.get_ptr_mut(0)
    {
        // The SNI walk and name lookup run in their own program (a tail call), so that their
        // loops are verified once instead of on every path of this one.
        // SAFETY: this CPU's scratch value; the tail call runs on the same CPU.
        unsafe {
            (*job).pkt = pkt;
            (*job).dir = dir;
            (*job).egress = u8::from(egress);
            (*job).source = sni_job;
            let stage = match sni_job {
                JOB_HTTP => PROG_INDEX_HOST,
                JOB_DNS | JOB_DNS_ANSWER => PROG_INDEX_QNAME,
                _ => PROG_INDEX_SNI,
            };
            TG_PROGS.tail_call(ctx, stage);
        }
        // Only reached when the tail call failed (program array not populated).
        return Ok(PASS);
    }
    if kind == KIND_QUIC
        && let Some(c) = cfg
    {
        if c.block_quic != 0 {
            return Ok(enforce_tail(ctx, &pkt, dir, egress, ACTION_BLOCK, c, now));
        }
        // A QUIC flow nobody has decided on yet: hold the server's answers until userspace
        // (which decrypts the Initial) writes a verdict, so that a fast server cannot complete
        // the handshake of an app that is about to be blocked.
        if flow.flags & (FLOW_F_QUIC_HOLD | FLOW_F_QUIC_RELEASED) == 0
            && c.flags & CONFIG_F_NO_QUIC_HOLD == 0
            && flow.verdict == ACTION_NONE
            && now.wrapping_sub(flow.first_seen_ns) < QUIC_HOLD_NS
            && enforcing(c, now)
        {
            flow.flags |= FLOW_F_QUIC_HOLD;
        }
    }
    Ok(PASS)
}

/// A packet whose flow the flow map could not take (an LRU insert can fail under memory
/// pressure): its verdicts still apply, straight from the verdict maps (only its counters and
/// inspection are lost).
#[inline(always)]
fn untracked(ctx: &TcContext, pkt: &Pkt, dir: u8, egress: bool, now: u64) -> i32 {
    if let Some(c) = TG_CONFIG.get(0)
        && c.generation != 0
    {
        let v = evaluate(&pkt.key, now);
        if v == ACTION_BLOCK || v == ACTION_DROP {
            return enforce_tail(ctx, pkt, dir, egress, v, c, now);
        }
    }
    PASS
}

/// A packet of a held QUIC flow (see `FLOW_F_QUIC_HOLD`): `Some(action)` decides the packet,
/// `None` lets the normal path go on. The flow verdict map is read here directly, so a verdict
/// needs no commit: a blocking one is applied (the flow stays held, so it keeps applying), any
/// other ends the hold. The hold also ends when it times out without a verdict, or when
/// verdicts are not enforced (monitor mode, fail-open).
#[inline(always)]
fn quic_hold(
    ctx: &TcContext,
    pkt: &Pkt,
    flow: &mut FlowValue,
    dir: u8,
    egress: bool,
    now: u64,
) -> Option<i32> {
    let release = |flow: &mut FlowValue| {
        flow.flags = (flow.flags & !FLOW_F_QUIC_HOLD) | FLOW_F_QUIC_RELEASED;
    };
    let Some(c) = TG_CONFIG.get(0) else {
        release(flow);
        return None;
    };
    if c.flags & CONFIG_F_NO_QUIC_HOLD != 0 || !enforcing(c, now) {
        release(flow);
        return None;
    }
    if let Some(v) = TG_FLOW_VERDICT.get_ptr(&pkt.key) {
        // SAFETY: live map value, read only.
        let v = unsafe { *v };
        if v.expires_ns == 0 || v.expires_ns > now {
            if v.action == ACTION_BLOCK || v.action == ACTION_DROP || v.action == ACTION_REFUSE {
                // The flow stays held: every packet of it sees this verdict, committed or not.
                return Some(enforce_tail(ctx, pkt, dir, egress, v.action, c, now));
            }
            release(flow);
            return None;
        }
    }
    if now.wrapping_sub(flow.first_seen_ns) >= QUIC_HOLD_NS {
        release(flow);
        stat(STAT_QUIC_HOLD_EXPIRED, 1);
        return None;
    }
    if dir == DIR_UP {
        return None;
    }
    stat(STAT_QUIC_HELD, 1);
    Some(DROP)
}

// ---- verdicts ----

/// The decision for a flow: its own verdict if userspace set one, else the blocked prefix the
/// remote address falls in.
#[inline(always)]
fn evaluate(key: &FlowKey, now: u64) -> u32 {
    let live = |expires: u64| expires == 0 || expires > now;
    if let Some(v) = TG_FLOW_VERDICT.get_ptr(key) {
        // SAFETY: live map value, read only.
        let v = unsafe { &*v };
        if live(v.expires_ns) {
            return v.action;
        }
    }
    let hit = if key.family == FAMILY_V4 {
        TG_BLOCK_V4.get(LpmKey::new(32, key.remote_addr[0].to_ne_bytes()))
    } else {
        let mut a = [0u8; 16];
        let w = key.remote_addr;
        let b = [
            w[0].to_ne_bytes(),
            w[1].to_ne_bytes(),
            w[2].to_ne_bytes(),
            w[3].to_ne_bytes(),
        ];
        let mut i = 0;
        while i < 16 {
            a[i] = b[i / 4][i % 4];
            i += 1;
        }
        TG_BLOCK_V6.get(LpmKey::new(128, a))
    };
    match hit {
        Some(v) if live(v.expires_ns) => v.action,
        _ => ACTION_NONE,
    }
}

// ---- session control: steering flows into the proxy ----

/// Action code the packet programs hand to `tg_enforce` for a packet toward a steered
/// destination that must not pass (QUIC; a SYN no proxy listener can take): block in every
/// mode, because session control does not depend on the enforce/monitor mode of the verdicts.
/// Kernel-internal, never in a map.
const ACTION_REFUSE_STEERED: u32 = 0x8000_0002;

/// A TCP packet from a user toward the steered port. Its SYN decides the flow: steered when
/// the destination is in a steer trie (`FLOW_F_STEERED` set, the SYN assigned to the proxy's
/// listener), direct otherwise (cleared: a reused 4-tuple starts afresh). Every packet of a
/// steered flow gets `STEER_MARK`, which the daemon's policy route delivers locally, where the
/// SYN reaches the listener and the rest the accepted connection. `false`: a SYN toward a
/// steered destination that no listener can take (refuse it).
#[inline(always)]
fn steer_tcp(ctx: &TcContext, pkt: &Pkt, flow: &mut FlowValue, now: u64) -> bool {
    if pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN {
        let how = steered_destination(&pkt.key, now);
        if how != 0 {
            if how == STEER_BY_CLIENT {
                stat(STAT_STEER_BY_CLIENT, 1);
            }
            let slot = if pkt.key.family == FAMILY_V4 {
                STEER_SLOT_V4
            } else {
                STEER_SLOT_V6
            };
            if assign_proxy(ctx.skb.skb, slot) {
                flow.flags |= FLOW_F_STEERED;
                stat(STAT_STEERED, 1);
            } else {
                flow.flags &= !FLOW_F_STEERED;
                stat(STAT_STEER_NO_PROXY, 1);
                return false;
            }
        } else if flow.flags & FLOW_F_STEERED != 0 {
            flow.flags &= !FLOW_F_STEERED;
        }
    } else if flow.flags & (FLOW_F_STEERED | FLOW_F_STEER_CHECKED) == 0
        && flow.tcp_flags & u32::from(TCP_SYN) == 0
        && pkt.tcp_flags & TCP_RST == 0
        && session_on()
    {
        // The user's SYN of this flow was never seen by this flow state: the state was lost
        // (evicted from the LRU map) or the flow began before the probes ran. Whether it was
        // steered cannot be known; going on direct could take a proxied connection around the
        // proxy, so it is reset (the client reconnects, and its new SYN is decided afresh).
        // Looked up once per flow: a direct answer holds for the flow's life.
        if steered_destination(&pkt.key, now) != 0 {
            stat(STAT_STEER_LOST_RESET, 1);
            return false;
        }
        flow.flags |= FLOW_F_STEER_CHECKED;
    }
    if flow.flags & FLOW_F_STEERED != 0 {
        ctx.set_mark(STEER_MARK);
    }
    true
}

/// [`steered_destination`]: steered for everyone (a steer trie, from DNS answers).
const STEER_BY_TRIE: u32 = 1;
/// [`steered_destination`]: steered for this client only (`TG_STEER_CLI`).
const STEER_BY_CLIENT: u32 = 2;

/// Whether a steer entry applies now: before its expiry; after it only while the daemon is
/// gone and fail-open is off (nobody can renew the entry, and an expired entry would turn a
/// steered address into a direct path around session control).
#[inline(always)]
fn steer_live(e: &SteerEntry, now: u64) -> bool {
    if e.expires_ns == 0 || e.expires_ns > now {
        return true;
    }
    if TG_CONFIG
        .get(0)
        .is_some_and(|c| c.fail_open == 0 && daemon_gone(c, now))
    {
        stat(STAT_STEER_KEPT_STALE, 1);
        return true;
    }
    false
}

/// Whether session control runs (the daemon set [`CONFIG_F_SESSION`]); without it no
/// destination is steered.
#[inline(always)]
fn session_on() -> bool {
    TG_CONFIG
        .get(0)
        .is_some_and(|c| c.flags & CONFIG_F_SESSION != 0)
}

/// A cheap look at a forwarded frame before it is parsed: whether session control runs and
/// the frame is an untagged IPv4 or IPv6 UDP datagram from port 53 (a DNS answer).
#[inline(always)]
fn session_dns(ctx: &TcContext) -> bool {
    if !session_on() {
        return false;
    }
    let Some(eth) = read::<[u8; ETH_HLEN]>(ctx, 0) else {
        return false;
    };
    let l4 = match u16::from_be_bytes([eth[12], eth[13]]) {
        ETH_P_IPV4 => match read::<[u8; 20]>(ctx, ETH_HLEN) {
            Some(h) if h[9] == PROTO_UDP && h[0] >> 4 == 4 && h[0] & 0x0f >= 5 => {
                ETH_HLEN + usize::from(h[0] & 0x0f) * 4
            }
            _ => return false,
        },
        ETH_P_IPV6 => match read::<[u8; 8]>(ctx, ETH_HLEN) {
            Some(h) if h[6] == PROTO_UDP => ETH_HLEN + 40,
            _ => return false,
        },
        _ => return false,
    };
    read::<[u8; 2]>(ctx, l4).is_some_and(|p| u16::from_be_bytes(p) == DNS_PORT)
}

/// Whether the remote address of `key` is steered: [`STEER_BY_TRIE`] (a live entry of a steer
/// trie), [`STEER_BY_CLIENT`] (a live per-client entry for this flow's client), or 0.
#[inline(always)]
fn steered_destination(key: &FlowKey, now: u64) -> u32 {
    let hit = if key.family == FAMILY_V4 {
        TG_STEER_V4.get(LpmKey::new(32, key.remote_addr[0].to_ne_bytes()))
    } else {
        let w = key.remote_addr;
        let b = [
            w[0].to_ne_bytes(),
            w[1].to_ne_bytes(),
            w[2].to_ne_bytes(),
            w[3].to_ne_bytes(),
        ];
        let mut a = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            a[i] = b[i / 4][i % 4];
            i += 1;
        }
        TG_STEER_V6.get(LpmKey::new(128, a))
    };
    if hit.is_some_and(|e| steer_live(e, now)) {
        return STEER_BY_TRIE;
    }
    if let Some(e) = TG_STEER_CLI.get_ptr(&SteerClientKey::of(key)) {
        // SAFETY: live map value, read only.
        let e = unsafe { *e };
        if steer_live(&e, now) {
            return STEER_BY_CLIENT;
        }
    }
    0
}

/// Assigns the packet (a SYN) to the proxy's listening socket in `slot` of `TG_PROXY_SOCK`.
/// The daemon fills the sockmap with the listener's fd; the kernel empties a slot when its
/// socket closes, so a stopped proxy stops steering (flows then go direct).
// A BPF subprogram of its own: the socket reference is taken and released inside it.
#[inline(never)]
fn assign_proxy(skb: *mut __sk_buff, slot: u32) -> bool {
    let key = slot;
    // SAFETY: lookup in a sockmap with a u32 key; the result is a referenced socket or null.
    let sk = unsafe {
        bpf_map_lookup_elem(
            ptr::addr_of!(TG_PROXY_SOCK).cast_mut().cast(),
            ptr::addr_of!(key).cast(),
        )
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: skb is the program's context; sk is the referenced socket from the lookup,
    // released right after (bpf_sk_assign takes its own reference).
    let rc = unsafe { bpf_sk_assign(skb.cast(), sk, 0) };
    // SAFETY: releases the reference taken by the lookup above.
    unsafe { bpf_sk_release(sk) };
    rc == 0
}

/// Refuses a packet toward a steered destination through `tg_enforce` (ICMP unreachable for
/// QUIC, a reset for a SYN nobody can take); drops it when the tail call fails.
#[inline(always)]
fn refuse_steered(ctx: &TcContext, pkt: &Pkt, dir: u8, egress: bool) -> i32 {
    if let Some(job) = job() {
        job.pkt = *pkt;
        job.dir = dir;
        job.egress = u8::from(egress);
        job.action = ACTION_REFUSE_STEERED;
        // SAFETY: tail call; returns only when it fails.
        unsafe { TG_PROGS.tail_call(ctx, PROG_INDEX_ENFORCE) };
    }
    stat(STAT_DROPS, 1);
    DROP
}

/// Whether verdicts are applied now: enforce mode, and the daemon alive or fail-closed.
#[inline(always)]
fn enforcing(cfg: &Config, now: u64) -> bool {
    cfg.mode == MODE_ENFORCE && !failed_open(cfg, now)
}

/// For the name-verdict stages: whether a blocking verdict applies to this packet now (see
/// `enforcing`); when it does not, the packet counts as "would drop".
#[inline(always)]
fn blocking_applies() -> bool {
    let Some(c) = TG_CONFIG.get(0) else {
        return false;
    };
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if enforcing(c, now) {
        return true;
    }
    stat(STAT_WOULD_DROP, 1);
    false
}

/// Remote port of the flows whose names must be read (TLS over TCP, QUIC over UDP): one whose
/// name cannot be read is unreadable (see `CONFIG_F_UNREADABLE_BLOCK`).
const UNREADABLE_PORT: u16 = 443;

/// A port-443 flow from a user whose name the probes cannot read, for the reason `why` (a
/// `STAT_*` id): handed to `tg_unreadable` (a tail call: its work is verified once, not on
/// every path of the packet programs). Returns only when the tail call failed.
#[inline(always)]
fn unreadable_tail(ctx: &TcContext, pkt: &Pkt, dir: u8, egress: bool, why: usize) {
    if let Some(job) = job() {
        job.pkt = *pkt;
        job.dir = dir;
        job.egress = u8::from(egress);
        job.action = why as u32;
        // SAFETY: tail call; returns only when it fails.
        unsafe { TG_PROGS.tail_call(ctx, PROG_INDEX_UNREADABLE) };
    }
}

/// Tail-called for a port-443 flow whose name cannot be read (the job's `action` holds the
/// reason, a `STAT_*` id, counted). Under `unreadable = "pass"` the flow is marked and counted
/// once; under `unreadable = "block"` it gets a kernel block verdict (so every later packet of
/// it is refused too) and this packet is refused.
#[classifier]
pub fn tg_unreadable(ctx: TcContext) -> i32 {
    let Some(job) = job() else {
        return PASS;
    };
    let why = job.action as usize;
    let flow = match TG_FLOWS.get_ptr_mut(&job.pkt.key) {
        // SAFETY: live LRU map value.
        Some(f) => unsafe { &mut *f },
        None => {
            stat(why, 1);
            return PASS;
        }
    };
    let first = flow.flags & FLOW_F_UNREADABLE == 0;
    flow.flags |= FLOW_F_UNREADABLE;
    let Some(c) = TG_CONFIG.get(0) else {
        stat(why, 1);
        return PASS;
    };
    if c.flags & CONFIG_F_UNREADABLE_BLOCK == 0 {
        if first {
            stat2(why, 1, STAT_UNREADABLE_PASSED, 1);
        } else {
            stat(why, 1);
        }
        return PASS;
    }
    stat(why, 1);
    let fv = FlowVerdict {
        action: ACTION_BLOCK,
        app_id: 0,
        expires_ns: 0,
    };
    let _ = TG_FLOW_VERDICT.insert(&job.pkt.key, &fv, 0);
    flow.verdict = ACTION_BLOCK;
    flow.verdict_gen = c.generation;
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if enforcing(c, now) {
        stat(STAT_UNREADABLE_BLOCKED, 1);
    }
    let pkt = job.pkt;
    enforce_tail(&ctx, &pkt, job.dir, job.egress != 0, ACTION_BLOCK, c, now)
}

/// The daemon's heartbeat is stale and the admin chose fail-open: users keep working.
#[inline(always)]
fn failed_open(cfg: &Config, now: u64) -> bool {
    cfg.fail_open != 0 && daemon_gone(cfg, now)
}

/// The daemon's heartbeat is older than the configured timeout.
#[inline(always)]
fn daemon_gone(cfg: &Config, now: u64) -> bool {
    cfg.heartbeat_timeout_ns != 0 && now > cfg.heartbeat_ns.saturating_add(cfg.heartbeat_timeout_ns)
}

/// How recent the daemon's heartbeat must be for the probes to hand it a DNS answer to send
/// on (it heartbeats every 2 s): a held answer needs a live daemon, or it is lost.
const HOLD_ALIVE_NS: u64 = 6_000_000_000;

/// Whether the daemon heartbeated within [`HOLD_ALIVE_NS`].
#[inline(always)]
fn daemon_alive(cfg: &Config, now: u64) -> bool {
    cfg.heartbeat_ns != 0 && now.saturating_sub(cfg.heartbeat_ns) < HOLD_ALIVE_NS
}

/// `enforce` for the packet programs: drops are decided here; building a reset or an ICMP
/// error happens in `tg_enforce` (a tail call), which keeps those buffers off this program's
/// stack and out of its verification.
#[inline(always)]
fn enforce_tail(
    ctx: &TcContext,
    pkt: &Pkt,
    dir: u8,
    egress: bool,
    action: u32,
    cfg: &Config,
    now: u64,
) -> i32 {
    // Session control's refusal applies in every mode; only fail-open lifts it.
    let refuse = action == ACTION_REFUSE;
    if if refuse {
        failed_open(cfg, now)
    } else {
        !enforcing(cfg, now)
    } {
        stat(STAT_WOULD_DROP, 1);
        return PASS;
    }
    let answerable = (action == ACTION_BLOCK || refuse)
        && !(pkt.key.proto == PROTO_TCP && pkt.tcp_flags & TCP_RST != 0);
    if answerable && let Some(job) = job() {
        job.pkt = *pkt;
        job.dir = dir;
        job.egress = u8::from(egress);
        job.action = if refuse {
            ACTION_REFUSE_STEERED
        } else {
            action
        };
        // SAFETY: tail call; returns only when it fails.
        unsafe { TG_PROGS.tail_call(ctx, PROG_INDEX_ENFORCE) };
    }
    stat(STAT_DROPS, 1);
    DROP
}

/// Applies a blocking verdict. Monitor mode (or an expired daemon heartbeat with fail-open
/// configured) only counts what would have been dropped, unless `force` (session control's
/// QUIC refusal, which applies in every mode).
#[allow(clippy::too_many_arguments, reason = "inlined helper of one call tree")]
#[inline(always)]
fn enforce(
    ctx: &TcContext,
    pkt: &Pkt,
    dir: u8,
    egress: bool,
    action: u32,
    force: bool,
    cfg: &Config,
    now: u64,
) -> i32 {
    if !force && !enforcing(cfg, now) {
        stat(STAT_WOULD_DROP, 1);
        return PASS;
    }
    stat(STAT_DROPS, 1);
    if action != ACTION_BLOCK {
        return DROP;
    }
    let up = dir == DIR_UP;
    if pkt.key.proto == PROTO_TCP {
        if pkt.tcp_flags & TCP_RST != 0 {
            return DROP;
        }
        if up {
            // Answer the user with a reset from the remote end: rewrite, send a copy back
            // (out of a LAN interface, or into the stack from a WAN interface), drop this one.
            if make_rst(ctx.skb.skb, pkt, dir, true) && redirect_to_user(ctx, egress) {
                stat(STAT_RST_SENT, 1);
            }
            return DROP;
        }
        // Toward the user: the packet itself becomes the reset and goes on.
        if make_rst(ctx.skb.skb, pkt, dir, false) {
            stat(STAT_RST_SENT, 1);
            return PASS;
        }
        return DROP;
    }
    let made = up
        && if pkt.key.family == FAMILY_V4 {
            make_icmp_unreachable(ctx.skb.skb, pkt)
        } else {
            make_icmp6_unreachable(ctx.skb.skb, pkt)
        };
    if made && redirect_to_user(ctx, egress) {
        stat(STAT_ICMP_SENT, 1);
    }
    DROP
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const BPF_F_INGRESS: u64 = 1;
const BPF_ADJ_ROOM_MAC: u32 = 1;

/// Sends the (rewritten) skb back toward the user: out of the same interface when the packet
/// came in from the user (ingress), into the stack when it was leaving toward the internet.
#[inline(always)]
fn redirect_to_user(ctx: &TcContext, egress: bool) -> bool {
    let flags = if egress { BPF_F_INGRESS } else { 0 };
    ctx.clone_redirect(sk_field_ifindex(ctx), flags).is_ok()
}

/// Trims (or grows) the packet to `len` bytes.
#[inline(always)]
fn change_tail(ctx: &TcContext, len: u32) -> bool {
    // SAFETY: the helper validates the skb and length itself.
    unsafe { bpf_skb_change_tail(ctx.skb.skb, len, 0) == 0 }
}

/// Internet checksum accumulation over big-endian 16-bit words.
#[inline(always)]
fn csum_add<const N: usize>(mut sum: u32, b: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([b[i], b[i + 1]]));
        i += 2;
    }
    sum
}

#[inline(always)]
fn csum_fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// An IPv4 header (no options, DF, TTL 64) from `src` to `dst` (network-order words as in
/// `FlowKey`) carrying `payload_len` bytes of `proto`, with its checksum, and the checksum sum
/// of the TCP/UDP pseudo-header.
#[inline(always)]
fn ipv4_header(src: u32, dst: u32, payload_len: u32, proto: u8) -> ([u8; 20], u32) {
    let s = src.to_ne_bytes();
    let d = dst.to_ne_bytes();
    let total = 20 + payload_len;
    let mut ip = [
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        proto,
        0,
        0,
        s[0],
        s[1],
        s[2],
        s[3],
        d[0],
        d[1],
        d[2],
        d[3],
    ];
    let c = csum_fold(csum_add(0, &ip)).to_be_bytes();
    ip[10] = c[0];
    ip[11] = c[1];
    let pseudo = [
        s[0],
        s[1],
        s[2],
        s[3],
        d[0],
        d[1],
        d[2],
        d[3],
        0,
        proto,
        (payload_len >> 8) as u8,
        payload_len as u8,
    ];
    (ip, csum_add(0, &pseudo))
}

/// An IPv6 header from `src` to `dst` carrying `payload_len` (< 64 KiB) bytes of
/// `next_header`, hop limit 64, and the checksum sum of its pseudo-header (addresses,
/// upper-layer length, next header).
#[inline(always)]
fn ipv6_header(
    src: &[u32; 4],
    dst: &[u32; 4],
    payload_len: u32,
    next_header: u8,
) -> ([u8; 40], u32) {
    let mut ip = [0u8; 40];
    ip[0] = 0x60;
    ip[4] = (payload_len >> 8) as u8;
    ip[5] = payload_len as u8;
    ip[6] = next_header;
    ip[7] = 64;
    let mut i = 0;
    while i < 16 {
        ip[8 + i] = src[i / 4].to_ne_bytes()[i % 4];
        ip[24 + i] = dst[i / 4].to_ne_bytes()[i % 4];
        i += 1;
    }
    let mut sum = (payload_len & 0xffff) + u32::from(next_header);
    let mut i = 8;
    while i < 40 {
        sum += u32::from(u16::from_be_bytes([ip[i], ip[i + 1]]));
        i += 2;
    }
    (ip, sum)
}

#[inline(always)]
fn swap_macs(ctx: &TcContext) -> bool {
    let Some(m) = read::<[u8; 12]>(ctx, 0) else {
        return false;
    };
    let sw = [
        m[6], m[7], m[8], m[9], m[10], m[11], m[0], m[1], m[2], m[3], m[4], m[5],
    ];
    ctx.store(0, &sw, 0).is_ok()
}

/// Rewrites the packet into a TCP reset from the remote end to the user (headers only).
/// `reply`: the packet came from the user (swap MACs, take seq/ack from its ack/seq).
// A BPF subprogram of its own: its header buffers get their own stack frame.
#[inline(never)]
fn make_rst(skb: *mut __sk_buff, pkt: &Pkt, dir: u8, reply: bool) -> bool {
    let ctx = &TcContext::new(skb);
    let (seq, ack, flags) = if dir == DIR_UP {
        let mut consumed = pkt.claimed_len;
        if pkt.tcp_flags & (TCP_SYN | TCP_FIN) != 0 {
            consumed += 1;
        }
        let seq = if pkt.tcp_flags & TCP_ACK != 0 {
            pkt.tcp_ack
        } else {
            0
        };
        (seq, pkt.tcp_seq.wrapping_add(consumed), TCP_RST | TCP_ACK)
    } else {
        (pkt.tcp_seq, pkt.tcp_ack, TCP_RST | TCP_ACK)
    };
    let k = &pkt.key;
    let sp = k.remote_port.to_be_bytes();
    let dp = k.user_port.to_be_bytes();
    let sq = seq.to_be_bytes();
    let ak = ack.to_be_bytes();
    let mut tcp = [
        sp[0], sp[1], dp[0], dp[1], sq[0], sq[1], sq[2], sq[3], ak[0], ak[1], ak[2], ak[3], 0x50,
        flags, 0, 0, 0, 0, 0, 0,
    ];
    let l3 = pkt.l3_off;
    if k.family == FAMILY_V4 {
        let (ip, pseudo) = ipv4_header(k.remote_addr[0], k.user_addr[0], 20, PROTO_TCP);
        let c = csum_fold(csum_add(pseudo, &tcp)).to_be_bytes();
        tcp[16] = c[0];
        tcp[17] = c[1];
        if !change_tail(ctx, l3 + 40)
            || ctx.store(l3 as usize, &ip, 0).is_err()
            || ctx.store(l3 as usize + 20, &tcp, 0).is_err()
        {
            return false;
        }
    } else {
        let (ip, pseudo) = ipv6_header(&k.remote_addr, &k.user_addr, 20, PROTO_TCP);
        let c = csum_fold(csum_add(pseudo, &tcp)).to_be_bytes();
        tcp[16] = c[0];
        tcp[17] = c[1];
        if !change_tail(ctx, l3 + 60)
            || ctx.store(l3 as usize, &ip, 0).is_err()
            || ctx.store(l3 as usize + 40, &tcp, 0).is_err()
        {
            return false;
        }
    }
    !reply || swap_macs(ctx)
}

/// Rewrites a packet from the user into a TCP reset from the user to the remote end (same
/// addresses and ports, the packet's seq/ack, no payload); it then goes on to the remote end.
// A BPF subprogram of its own: its header buffers get their own stack frame.
#[inline(never)]
fn make_rst_to_remote(skb: *mut __sk_buff, pkt: &Pkt) -> bool {
    let ctx = &TcContext::new(skb);
    let k = &pkt.key;
    let sp = k.user_port.to_be_bytes();
    let dp = k.remote_port.to_be_bytes();
    let sq = pkt.tcp_seq.to_be_bytes();
    let ak = pkt.tcp_ack.to_be_bytes();
    let mut tcp = [
        sp[0],
        sp[1],
        dp[0],
        dp[1],
        sq[0],
        sq[1],
        sq[2],
        sq[3],
        ak[0],
        ak[1],
        ak[2],
        ak[3],
        0x50,
        TCP_RST | TCP_ACK,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    let l3 = pkt.l3_off;
    if k.family == FAMILY_V4 {
        let (ip, pseudo) = ipv4_header(k.user_addr[0], k.remote_addr[0], 20, PROTO_TCP);
        let c = csum_fold(csum_add(pseudo, &tcp)).to_be_bytes();
        tcp[16] = c[0];
        tcp[17] = c[1];
        change_tail(ctx, l3 + 40)
            && ctx.store(l3 as usize, &ip, 0).is_ok()
            && ctx.store(l3 as usize + 20, &tcp, 0).is_ok()
    } else {
        let (ip, pseudo) = ipv6_header(&k.user_addr, &k.remote_addr, 20, PROTO_TCP);
        let c = csum_fold(csum_add(pseudo, &tcp)).to_be_bytes();
        tcp[16] = c[0];
        tcp[17] = c[1];
        change_tail(ctx, l3 + 60)
            && ctx.store(l3 as usize, &ip, 0).is_ok()
            && ctx.store(l3 as usize + 40, &tcp, 0).is_ok()
    }
}

/// Rewrites an IPv6 UDP packet from the user into an ICMPv6 port unreachable from the remote
/// end that quotes its IPv6 and UDP headers.
// A BPF subprogram of its own: its header buffers get their own stack frame.
#[inline(never)]
fn make_icmp6_unreachable(skb: *mut __sk_buff, pkt: &Pkt) -> bool {
    let ctx = &TcContext::new(skb);
    if pkt.l4_off != pkt.l3_off + 40 {
        return false; // extension headers: dropped without an answer.
    }
    let Some(orig) = read::<[u8; 48]>(ctx, pkt.l3_off as usize) else {
        return false;
    };
    let k = &pkt.key;
    // ICMPv6 (58): its header + the quoted 48 bytes.
    let (ip, pseudo) = ipv6_header(&k.remote_addr, &k.user_addr, 56, 58);
    let mut icmp = [1u8, 4, 0, 0, 0, 0, 0, 0]; // destination unreachable, port unreachable
    let c = csum_fold(csum_add(csum_add(pseudo, &icmp), &orig)).to_be_bytes();
    icmp[2] = c[0];
    icmp[3] = c[1];
    let l3 = pkt.l3_off;
    ctx.adjust_room(48, BPF_ADJ_ROOM_MAC, 0).is_ok()
        && change_tail(ctx, l3 + 96)
        && ctx.store(l3 as usize, &ip, 0).is_ok()
        && ctx.store(l3 as usize + 40, &icmp, 0).is_ok()
        && swap_macs(ctx)
}

/// Rewrites an IPv4 UDP packet from the user into an ICMP port unreachable from the remote
/// end that quotes its IP and UDP headers (so a QUIC client fails over to TCP at once).
// A BPF subprogram of its own: its header buffers get their own stack frame.
#[inline(never)]
fn make_icmp_unreachable(skb: *mut __sk_buff, pkt: &Pkt) -> bool {
    let ctx = &TcContext::new(skb);
    if pkt.l4_off != pkt.l3_off + 20 {
        return false; // IP options: not worth quoting; the packet is still dropped.
    }
    let Some(orig) = read::<[u8; 28]>(ctx, pkt.l3_off as usize) else {
        return false;
    };
    let k = &pkt.key;
    // ICMP (1): its header + the quoted 28 bytes; ICMP has no pseudo-header.
    let (ip, _) = ipv4_header(k.remote_addr[0], k.user_addr[0], 36, 1);
    let mut icmp = [3u8, 3, 0, 0, 0, 0, 0, 0];
    let c = csum_fold(csum_add(csum_add(0, &icmp), &orig)).to_be_bytes();
    icmp[2] = c[0];
    icmp[3] = c[1];
    let l3 = pkt.l3_off;
    ctx.adjust_room(28, BPF_ADJ_ROOM_MAC, 0).is_ok()
        && change_tail(ctx, l3 + 56)
        && ctx.store(l3 as usize, &ip, 0).is_ok()
        && ctx.store(l3 as usize + 20, &icmp, 0).is_ok()
        && swap_macs(ctx)
}

/// Rewrites a UDP DNS query from the user into the server's NXDOMAIN answer: the header with
/// QR, RA and rcode 3 (RD kept), the question echoed, no other records. The message bytes are
/// the ones `tg_qname` left in the scratch buffer.
// A BPF subprogram of its own: its header buffers get their own stack frame.
#[inline(never)]
fn make_nxdomain(skb: *mut __sk_buff, pkt: &Pkt, question_len: u32) -> bool {
    let ctx = &TcContext::new(skb);
    let Some(h) = TG_HSCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch value, filled by tg_qname for this packet.
    let h = unsafe { &mut *h };
    if question_len < 5 || question_len > NAME_MAX + 4 {
        return false;
    }
    let msg_len = DNS_HEADER_LEN + question_len;
    let udp_len = 8 + msg_len;
    let mut dns = [0u8; 12];
    dns[0] = hb(h, 0) as u8;
    dns[1] = hb(h, 1) as u8;
    dns[2] = 0x80 | (hb(h, 2) as u8 & 0x01);
    dns[3] = 0x83;
    dns[5] = 1;
    // Message checksum: the new header, then the question bytes as they are.
    let mut sum = csum_add(0, &dns);
    let mut i = DNS_HEADER_LEN;
    while i < DNS_HEADER_LEN + NAME_MAX + 4 {
        if i >= msg_len {
            break;
        }
        let lo = if i + 1 < msg_len { hb(h, i + 1) } else { 0 };
        sum += (hb(h, i) << 8) | lo;
        i += 2;
    }
    let k = &pkt.key;
    let l3 = pkt.l3_off;
    let l4 = pkt.l4_off;
    let ports = [
        (k.remote_port >> 8) as u8,
        k.remote_port as u8,
        (k.user_port >> 8) as u8,
        k.user_port as u8,
        (udp_len >> 8) as u8,
        udp_len as u8,
    ];
    sum = csum_add(sum, &ports);
    let ip_ok = if k.family == FAMILY_V4 {
        if l4 != l3 + 20 {
            return false; // IP options: dropped without an answer.
        }
        let (ip, pseudo) = ipv4_header(k.remote_addr[0], k.user_addr[0], udp_len, PROTO_UDP);
        sum += pseudo;
        change_tail(ctx, l4 + udp_len) && ctx.store(l3 as usize, &ip, 0).is_ok()
    } else {
        if l4 != l3 + 40 {
            return false; // extension headers: dropped without an answer.
        }
        let (ip, pseudo) = ipv6_header(&k.remote_addr, &k.user_addr, udp_len, PROTO_UDP);
        sum += pseudo;
        change_tail(ctx, l4 + udp_len) && ctx.store(l3 as usize, &ip, 0).is_ok()
    };
    let mut c = csum_fold(sum);
    if c == 0 {
        c = 0xffff;
    }
    let c = c.to_be_bytes();
    let udp = [
        ports[0], ports[1], ports[2], ports[3], ports[4], ports[5], c[0], c[1],
    ];
    ip_ok
        && ctx.store(l4 as usize, &udp, 0).is_ok()
        && ctx.store(l4 as usize + 8, &dns, 0).is_ok()
        && swap_macs(ctx)
}

/// Whether a DNS message toward the user on `flow`, leaving by `ifindex`, may answer a query:
/// the user side sent on the flow, through this interface. With a LAN interface the query is
/// seen on LAN ingress and its answer on LAN egress (after de-NAT, see
/// [`forwarded_dns_answer`]); with WAN interfaces only, on WAN egress and WAN ingress. Either
/// way query and answer are seen from one side of the NAT, under one flow key.
#[inline(always)]
fn dns_answer_expected(flow: &FlowValue, ifindex: u32) -> bool {
    flow.packets_up != 0 && flow.ifindex == ifindex
}

/// A packet toward the user forwarded from another Tollgate interface (a LAN egress copy of
/// what a WAN ingress hook already counted): only a DNS answer matters here, because its WAN
/// copy carries the NATed address and cannot be matched to the user's query. It is sent to
/// userspace when the user's query came in by this interface; nothing is counted twice.
#[inline(always)]
fn forwarded_dns_answer(ctx: &TcContext, dir: u8) {
    let Ok(pkt) = parse(ctx, dir, true) else {
        return;
    };
    if pkt.key.remote_port != DNS_PORT || pkt.payload_len == 0 {
        return;
    }
    let ifindex = sk_field_ifindex(ctx);
    let Some(f) = TG_FLOWS.get_ptr_mut(&pkt.key) else {
        stat(STAT_DNS_UNSOLICITED, 1);
        return;
    };
    // SAFETY: live LRU map value; see try_run.
    let flow = unsafe { &mut *f };
    if !dns_answer_expected(flow, ifindex) {
        stat(STAT_DNS_UNSOLICITED, 1);
        return;
    }
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let lim = limits();
    flow.flags |= FLOW_F_DNS;
    flow.last_seen_ns = now;
    emit(ctx, &pkt, flow, dir, KIND_DNS, 0, ifindex, now, &lim);
}

/// Config values with defaults for zero fields.
struct Limits {
    max_events: u32,
    max_dns_events: u32,
    inspect_packets: u32,
}

#[inline(always)]
fn limits() -> Limits {
    let mut l = Limits {
        max_events: DEFAULT_MAX_EVENTS_PER_FLOW,
        max_dns_events: DEFAULT_MAX_DNS_EVENTS_PER_FLOW,
        inspect_packets: DEFAULT_INSPECT_PACKETS,
    };
    if let Some(c) = TG_CONFIG.get(0) {
        if c.max_events_per_flow != 0 {
            l.max_events = c.max_events_per_flow;
        }
        if c.max_dns_events_per_flow != 0 {
            l.max_dns_events = c.max_dns_events_per_flow;
        }
        if c.inspect_packets != 0 {
            l.inspect_packets = c.inspect_packets;
        }
    }
    l
}

const fn be32(b: &[u8; 4]) -> u32 {
    u32::from_be_bytes(*b)
}

const HTTP_METHODS: [u32; 9] = [
    be32(b"GET "),
    be32(b"POST"),
    be32(b"HEAD"),
    be32(b"PUT "),
    be32(b"DELE"),
    be32(b"OPTI"),
    be32(b"PATC"),
    be32(b"CONN"),
    be32(b"TRAC"),
];

/// Longest span of bytes a followed ClientHello may claim (records of 16 KiB + slack).
const HELLO_MAX_TOTAL: u32 = 32 * 1024;

/// What `inspect` returns (besides a `KIND_*`) for a segment of an unread port-443 hello that
/// came ahead of the bytes before it: held (dropped in enforce mode until it comes in order).
const KIND_HOLD: u8 = 0xf0;

#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "inlined helper of one call tree")]
fn inspect(
    ctx: &TcContext,
    pkt: &Pkt,
    flow: &mut FlowValue,
    dir: u8,
    egress: bool,
    ifindex: u32,
    now: u64,
    names: bool,
    sni_job: &mut u32,
) -> u8 {
    let up = dir == DIR_UP;
    let tcp = pkt.key.proto == PROTO_TCP;
    let lim = limits();

    // Continuation of a ClientHello that began in an earlier segment.
    if up && tcp && flow.flags & FLOW_F_HELLO_PENDING != 0 {
        match TG_HELLO.get_ptr_mut(&pkt.key) {
            Some(h) => {
                // SAFETY: live LRU map value.
                let h = unsafe { &mut *h };
                let off = pkt.tcp_seq.wrapping_sub(h.start_seq);
                if off != 0 && off < h.total_len {
                    // Bytes past the ones read so far, ahead of (or overlapping) the next
                    // expected one: held until they come in order, so that the SNI cannot
                    // be sent before the segment that leads to it.
                    let expected = h.next_seq.wrapping_sub(h.start_seq);
                    if names
                        && h.sni_done == 0
                        && flow.flags & FLOW_F_UNREADABLE == 0
                        && off != expected
                        && off.wrapping_add(pkt.payload_len) > expected
                    {
                        stat(STAT_HELLO_OUT_OF_ORDER, 1);
                        return KIND_HOLD;
                    }
                    emit(
                        ctx,
                        pkt,
                        flow,
                        dir,
                        KIND_TLS,
                        EVENT_F_CONTINUATION,
                        ifindex,
                        now,
                        &lim,
                    );
                    stat(STAT_HELLO_CONT, 1);
                    if pkt.tcp_seq == h.next_seq {
                        if names && h.sni_done == 0 {
                            // tg_sni appends the bytes and walks them.
                            *sni_job = JOB_HELLO_MAP;
                        }
                        h.next_seq = pkt.tcp_seq.wrapping_add(pkt.payload_len);
                    }
                    // A complete hello is forgotten here, or by tg_sni when it still has to
                    // read the bytes.
                    if h.next_seq.wrapping_sub(h.start_seq) >= h.total_len
                        && *sni_job != JOB_HELLO_MAP
                    {
                        let _ = TG_HELLO.remove(&pkt.key);
                        flow.flags &= !FLOW_F_HELLO_PENDING;
                    }
                    return 0;
                }
            }
            None => {
                // Evicted from TG_HELLO (churned by other flows' hellos) before its end.
                flow.flags &= !FLOW_F_HELLO_PENDING;
                if names && flow.flags & FLOW_F_NAMED == 0 && pkt.key.remote_port == UNREADABLE_PORT
                {
                    unreadable_tail(ctx, pkt, dir, egress, STAT_HELLO_LOST);
                    return 0;
                }
            }
        }
    }

    let dns = pkt.key.remote_port == DNS_PORT || pkt.key.user_port == DNS_PORT;
    // Where this segment's data starts in the sequence space (a SYN's data follows the SYN).
    let dseq = pkt
        .tcp_seq
        .wrapping_add(u32::from(pkt.tcp_flags & TCP_SYN != 0));
    // The stream's first byte of a port-443 connection whose SYN was seen: always looked at
    // (a junk segment there, one the server discards for its checksum or TTL, cannot use up
    // the inspection budget ahead of the real hello), and nothing after it is looked at
    // before it (an SNI segment sent ahead is held, like a hello's later segments).
    // Whether this is the start lives in the flow value (FLOW_F_AT_START), not a register:
    // the verifier then does not carry it through every path below.
    if up && tcp && names && pkt.key.remote_port == UNREADABLE_PORT && flow.flags & FLOW_F_ISN != 0
    {
        if dseq == flow.isn_up.wrapping_add(1) {
            if flow.flags & FLOW_F_STARTED != 0 {
                stat(STAT_START_REPEATS, 1);
            }
            flow.flags |= FLOW_F_STARTED | FLOW_F_AT_START;
        } else {
            flow.flags &= !FLOW_F_AT_START;
            if flow.flags & (FLOW_F_STARTED | FLOW_F_NAMED | FLOW_F_UNREADABLE) == 0 {
                stat(STAT_HELLO_OUT_OF_ORDER, 1);
                return KIND_HOLD;
            }
        }
    }
    // QUIC long-header packets from a user toward 443 are always looked at: junk datagrams
    // cannot use up the budget ahead of the real Initial.
    let quic_long = up
        && !tcp
        && pkt.key.remote_port == UNREADABLE_PORT
        && read::<[u8; 1]>(ctx, pkt.payload_off as usize).is_some_and(|b| b[0] & 0x80 != 0);
    if !dns && !quic_long && flow.flags & FLOW_F_AT_START == 0 {
        let n = if up {
            &mut flow.inspected_up
        } else {
            &mut flow.inspected_down
        };
        if *n < lim.inspect_packets {
            *n += 1;
        } else if !(up && tcp && names && flow.flags & FLOW_F_HTTP != 0) {
            return 0;
        }
        // Plain HTTP keeps being looked at from the user's side: every request head on a
        // kept-alive connection names a host, and a later one may name a blocked app.
    }

    let mut b = [0u8; 12];
    let avail = pkt.payload_len;
    if avail >= 12 {
        match read::<[u8; 12]>(ctx, pkt.payload_off as usize) {
            Some(v) => b = v,
            None => return 0,
        }
    } else {
        // A short segment (a hello cut after a few bytes, a tiny DNS message): byte by byte.
        let mut i = 0u32;
        while i < 11 {
            if i >= avail {
                break;
            }
            match (
                read::<u8>(ctx, (pkt.payload_off + i) as usize),
                b.get_mut(i as usize),
            ) {
                (Some(v), Some(slot)) => *slot = v,
                _ => return 0,
            }
            i += 1;
        }
    }
    let first4 = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);

    if dns {
        // An answer is evidence only for a query the user sent: one toward the user on a
        // flow whose user side sent nothing through this interface never reaches the ring
        // (a flood of spoofed answers cannot crowd out real events). Userspace matches the
        // transaction id and the question.
        if !up && !dns_answer_expected(flow, ifindex) {
            // A flow whose user side did send (through another of our interfaces: the WAN
            // copy of an answer whose LAN copy is looked at) is not counted as unsolicited.
            if flow.packets_up == 0 {
                stat(STAT_DNS_UNSOLICITED, 1);
            }
            return 0;
        }
        flow.flags |= FLOW_F_DNS;
        emit(ctx, pkt, flow, dir, KIND_DNS, 0, ifindex, now, &lim);
        return KIND_DNS;
    }
    if tcp {
        // TLS handshake record header 0x16 0x03 0x0{0..4}; bytes the segment does not carry
        // (a first segment cut very short) are not held against it.
        let tls = b[0] == 0x16
            && (avail < 2 || b[1] == 0x03)
            && (avail < 3 || b[2] <= 0x04)
            && (avail < 6 || b[5] == 0x01 || b[5] == 0x02);
        if tls {
            // From the user: ClientHello (followed across segments); toward the user:
            // ServerHello (one event).
            if up && (avail < 6 || b[5] == 0x01) {
                flow.flags |= FLOW_F_TLS;
                let mut total = if avail >= 5 {
                    5 + u32::from(u16::from_be_bytes([b[3], b[4]]))
                } else {
                    // Record length not seen yet: follow up to one maximal record.
                    5 + 16_384
                };
                if avail >= 9 {
                    let hs_total =
                        4 + ((u32::from(b[6]) << 16) | (u32::from(b[7]) << 8) | u32::from(b[8]));
                    if hs_total + 5 > total {
                        // The hello continues in further records: their headers add bytes.
                        total = 5 + hs_total + 64;
                    }
                }
                if total > HELLO_MAX_TOTAL {
                    total = HELLO_MAX_TOTAL;
                }
                let incomplete = total > avail;
                if (incomplete || names)
                    && let Some(hs) = TG_HSCRATCH.get_ptr_mut(0)
                {
                    // SAFETY: this CPU's scratch value; nothing else uses it meanwhile.
                    let hs = unsafe { &mut *hs };
                    hs.start_seq = dseq;
                    hs.total_len = total;
                    hs.next_seq = dseq.wrapping_add(avail);
                    hs.have = 0;
                    hs.sni_done = u32::from(!names);
                    hs.rec_left = 0;
                    hs.hdr_pos = 0;
                    hs.hdr_len = 0;
                    hs.hs_pos = 0;
                    hs.records = 0;
                    hs.bad_records = 0;
                    hs.hs_total = 0;
                    if names {
                        // tg_sni appends the bytes (record headers taken out) and walks them.
                        *sni_job = JOB_SCRATCH;
                    }
                    if incomplete {
                        if TG_HELLO.insert(&pkt.key, &*hs, 0).is_ok() {
                            flow.flags |= FLOW_F_HELLO_PENDING;
                            if names {
                                *sni_job = JOB_HELLO_MAP;
                            }
                        } else {
                            stat(STAT_HELLO_MAP_FULL, 1);
                            if names && pkt.key.remote_port == UNREADABLE_PORT {
                                unreadable_tail(ctx, pkt, dir, egress, STAT_HELLO_LOST);
                            }
                        }
                    }
                }
                emit(ctx, pkt, flow, dir, KIND_TLS, 0, ifindex, now, &lim);
            } else if !up && avail >= 6 && b[5] == 0x02 {
                emit(ctx, pkt, flow, dir, KIND_TLS, 0, ifindex, now, &lim);
            } else if flow.flags & FLOW_F_AT_START != 0 {
                unreadable_tail(ctx, pkt, dir, egress, STAT_UNREADABLE_START);
            }
            return 0;
        }
        if up && avail >= 4 {
            let mut i = 0;
            while i < HTTP_METHODS.len() {
                if HTTP_METHODS[i] == first4 {
                    flow.flags |= FLOW_F_HTTP;
                    if names {
                        *sni_job = JOB_HTTP;
                    }
                    emit(ctx, pkt, flow, dir, KIND_HTTP, 0, ifindex, now, &lim);
                    return KIND_HTTP;
                }
                i += 1;
            }
        }
        if flow.flags & FLOW_F_AT_START != 0 {
            unreadable_tail(ctx, pkt, dir, egress, STAT_UNREADABLE_START);
        }
        return 0;
    }
    // UDP: QUIC long header (form bit set) with a known version, packet type Initial.
    if up && pkt.payload_len >= 5 && b[0] & 0x80 != 0 {
        let version = u32::from_be_bytes([b[1], b[2], b[3], b[4]]);
        let ptype = b[0] & 0x30;
        let initial = match version {
            0x0000_0001 => ptype == 0x00,
            0x6b33_43cf => ptype == 0x10,
            v if v & 0xffff_ff00 == 0xff00_0000 => ptype == 0x00,
            _ => false,
        };
        if initial {
            flow.flags |= FLOW_F_QUIC;
            // An Initial userspace never gets cannot be decided (QUIC names need decryption):
            // after a flood of decoys has used up the flow's events, for instance.
            if !emit(ctx, pkt, flow, dir, KIND_QUIC, 0, ifindex, now, &lim)
                && names
                && pkt.key.remote_port == UNREADABLE_PORT
            {
                unreadable_tail(ctx, pkt, dir, egress, STAT_UNREADABLE_QUIC);
            }
            return KIND_QUIC;
        }
    }
    0
}

/// Record headers and record pieces walked per segment at most: a hello cut into more records
/// per segment than this (about 30) is unreadable (`STAT_UNREADABLE_RECORDS`).
const MAX_RECORD_STEPS: u32 = 64;

/// Appends the segment's payload to the hello window (in order; the caller checks the seq),
/// without the TLS record headers: `h.buf` holds the handshake message itself, so a hello cut
/// into many records (or records cut by segment edges) is walked like a single one.
#[inline(always)]
fn hello_append(ctx: &TcContext, job: &mut Job, h: &mut HelloState) {
    let pkt = &job.pkt;
    let plen = pkt.payload_len;
    let payload_off = pkt.payload_off;
    // Offset of this segment's first byte from the hello's first byte.
    let seg_off = pkt
        .tcp_seq
        .wrapping_add(u32::from(pkt.tcp_flags & TCP_SYN != 0))
        .wrapping_sub(h.start_seq);
    // The position in the segment lives in map memory and is read back each step: the
    // verifier then sees the same unknown value at every loop head, so the states of
    // different paths prune instead of multiplying with each step.
    // SAFETY: job is this CPU's map value.
    unsafe { ptr::write_volatile(&mut job.cursor, 0) };
    let mut step = 0u32;
    while step < MAX_RECORD_STEPS {
        // SAFETY: as above.
        let mut pos = unsafe { ptr::read_volatile(&job.cursor) };
        if pos >= plen || h.bad_records != 0 {
            return;
        }
        if h.hdr_pos < 5 {
            if h.hdr_pos == 0 && pos + 5 <= plen {
                let Ok(r) = ctx.load::<[u8; 5]>((payload_off + pos) as usize) else {
                    h.bad_records = 1;
                    return;
                };
                if r[0] != 0x16 {
                    h.bad_records = 1;
                    return;
                }
                h.rec_left = u32::from(u16::from_be_bytes([r[3], r[4]]));
                h.hdr_pos = 5;
                pos += 5;
            } else {
                // A header cut by the segment edge: a byte at a time.
                let Ok(r) = ctx.load::<[u8; 1]>((payload_off + pos) as usize) else {
                    h.bad_records = 1;
                    return;
                };
                let c = u32::from(r[0]);
                match h.hdr_pos {
                    0 => {
                        if c != 0x16 {
                            h.bad_records = 1;
                            return;
                        }
                    }
                    3 => h.hdr_len = c << 8,
                    4 => h.rec_left = h.hdr_len | c,
                    _ => {}
                }
                h.hdr_pos += 1;
                pos += 1;
            }
            if h.hdr_pos == 5 {
                h.records += 1;
                if h.records == 2 {
                    stat(STAT_HELLO_MULTI_RECORD, 1);
                }
                // Where the hello ends on the wire, as far as the records so far tell: its
                // handshake bytes still to come, plus one more header if they need another
                // record. Segments up to there are followed.
                if h.hs_total > h.hs_pos {
                    let rem = h.hs_total - h.hs_pos;
                    let mut end = seg_off.wrapping_add(pos).wrapping_add(rem);
                    if rem > h.rec_left {
                        end = end.wrapping_add(5);
                    }
                    if end > HELLO_MAX_TOTAL {
                        end = HELLO_MAX_TOTAL;
                    }
                    if end > h.total_len {
                        h.total_len = end;
                    }
                }
                if h.rec_left == 0 {
                    h.hdr_pos = 0;
                }
            }
        } else {
            let mut n = plen - pos;
            if n > h.rec_left {
                n = h.rec_left;
            }
            let have = h.have;
            if have < HELLO_WINDOW {
                let mut c = n;
                if c > HELLO_WINDOW - have {
                    c = HELLO_WINDOW - have;
                }
                if c > 0 {
                    // Bounds the verifier can follow: offset < WINDOW, 1 <= len <= WINDOW,
                    // buf = 2 * WINDOW.
                    let cm1 = c - 1;
                    // SAFETY: reads locals.
                    let (off, cm1) =
                        unsafe { (ptr::read_volatile(&have), ptr::read_volatile(&cm1)) };
                    let off = off & (HELLO_WINDOW - 1);
                    let len = (cm1 & (HELLO_WINDOW - 1)) + 1;
                    // SAFETY: destination is inside `h.buf` (off + len <= 2 * WINDOW); the
                    // helper checks the packet side.
                    let ret = unsafe {
                        bpf_skb_load_bytes(
                            ctx.skb.skb as *const _,
                            payload_off + pos,
                            h.buf.as_mut_ptr().add(off as usize) as *mut _,
                            len,
                        )
                    };
                    if ret != 0 {
                        h.bad_records = 1;
                        return;
                    }
                    h.have = have + len;
                }
            }
            h.hs_pos = h.hs_pos.wrapping_add(n);
            h.rec_left -= n;
            pos += n;
            if h.rec_left == 0 {
                h.hdr_pos = 0;
            }
            if h.hs_total == 0 && h.have >= 4 {
                h.hs_total = 4 + ((hb(h, 1) << 16) | hb16(h, 2));
            }
        }
        // SAFETY: as above.
        unsafe { ptr::write_volatile(&mut job.cursor, pos) };
        step += 1;
    }
    // SAFETY: as above.
    if unsafe { ptr::read_volatile(&job.cursor) } < plen {
        h.bad_records = 1;
    }
}

/// Where the SNI of a ClientHello is, as far as the bytes held tell.
enum Sni {
    Found { off: u32, len: u32 },
    NeedMore,
    Absent,
}

/// Suffix hashes of a name checked against name verdicts: a name with more labels is checked
/// on its `MAX_SUFFIXES - 1` shortest parent domains (walked from the right, where the
/// registrable domain is) and as a whole (`STAT_LONG_NAMES`).
const MAX_SUFFIXES: usize = 16;

/// Extensions looked at before giving up (Chrome sends ~18 including GREASE).
const MAX_EXTENSIONS: u32 = 32;
const HELLO_MASK: u32 = HELLO_BUF_LEN as u32 - 1;

#[inline(always)]
fn hb(h: &HelloState, i: u32) -> u32 {
    u32::from(h.buf[(i & HELLO_MASK) as usize])
}

#[inline(always)]
fn hb16(h: &HelloState, i: u32) -> u32 {
    (hb(h, i) << 8) | hb(h, i + 1)
}

/// Walks the handshake message (record headers already taken out by `hello_append`):
/// handshake header, version, random, session id, cipher suites, compression and extension
/// headers up to server_name.
#[inline(always)]
fn sni_walk(h: &HelloState) -> Sni {
    let have = h.have;
    if have < 39 {
        return Sni::NeedMore;
    }
    if hb(h, 0) != 0x01 {
        return Sni::Absent;
    }
    let hs_end = 4 + ((hb(h, 1) << 16) | hb16(h, 2));
    let mut p = 39 + hb(h, 38);
    if p + 2 > have {
        return Sni::NeedMore;
    }
    p += 2 + hb16(h, p);
    if p + 1 > have {
        return Sni::NeedMore;
    }
    p += 1 + hb(h, p);
    if p + 2 > have {
        return Sni::NeedMore;
    }
    let end = p + 2 + hb16(h, p);
    p += 2;
    let mut i = 0;
    while i < MAX_EXTENSIONS {
        if p + 4 > end || p + 4 > hs_end {
            return Sni::Absent;
        }
        if p + 4 > have {
            return Sni::NeedMore;
        }
        let typ = hb16(h, p);
        let len = hb16(h, p + 2);
        if typ == 0 {
            // server_name: list length (2), name type (1) = host_name, name length (2), name.
            if p + 9 > have {
                return Sni::NeedMore;
            }
            let n = hb16(h, p + 7);
            if hb(h, p + 6) != 0 || n == 0 || n > 253 {
                return Sni::Absent;
            }
            if p + 9 + n > have {
                return Sni::NeedMore;
            }
            return Sni::Found { off: p + 9, len: n };
        }
        p += 4 + len;
        if p > 0xffff {
            return Sni::Absent;
        }
        // No-op after the check; keeps the verifier's range for p the same every iteration so
        // that loop states prune.
        // SAFETY: reads a local.
        p = unsafe { ptr::read_volatile(&p) } & 0xffff;
        i += 1;
    }
    Sni::Absent
}

/// Where the SNI program finds the hello bytes.
const JOB_SCRATCH: u32 = 1;
const JOB_HELLO_MAP: u32 = 2;
/// An HTTP/1 request head in the packet itself (tg_host reads its Host).
const JOB_HTTP: u32 = 3;
/// A DNS query from a user in the packet itself (tg_qname reads its question name).
const JOB_DNS: u32 = 4;
/// A DNS answer toward a user in the packet itself (tg_qname reads its question name; an
/// answer for an app under session control is held, see `hold_dns_answer`).
const JOB_DNS_ANSWER: u32 = 5;
/// Slots in `TG_PROGS`: the SNI pipeline is three tail calls so that each loop is verified
/// once from a clean entry instead of on every path of the programs before it.
const PROG_INDEX_SNI: u32 = 0;
const PROG_INDEX_NAME: u32 = 1;
const PROG_INDEX_VERDICT: u32 = 2;
const PROG_INDEX_ENFORCE: u32 = 3;
const PROG_INDEX_HOST: u32 = 4;
const PROG_INDEX_QNAME: u32 = 5;
const PROG_INDEX_UNREADABLE: u32 = 6;
const PROG_INDEX_PORTLESS: u32 = 7;
/// DNS message bytes read for the question (header + a name of at most 255 bytes + type and
/// class fit; a power of two so that indexes can be masked).
const QNAME_SCAN: u32 = 512;
const DNS_HEADER_LEN: u32 = 12;
/// Request-head bytes searched for the Host header.
const HOST_SCAN: u32 = 2048;
const _: () = assert!(HOST_SCAN <= HELLO_BUF_LEN as u32 && QNAME_SCAN <= HELLO_BUF_LEN as u32);
/// Longest SNI considered (DNS names are at most 253 bytes).
const NAME_MAX: u32 = 256;

/// Hand-over between the packet programs and the SNI pipeline (per-CPU, same CPU throughout).
#[derive(Clone, Copy)]
pub struct Job {
    pkt: Pkt,
    dir: u8,
    egress: u8,
    source: u32,
    name_len: u32,
    count: u32,
    action: u32,
    /// DNS jobs: length of the question section (name, type, class) after the header.
    question_len: u32,
    /// 1: the name has more labels than `MAX_SUFFIXES` (only its shortest suffixes and the
    /// whole name were hashed).
    long: u32,
    /// `hello_append`'s position in the segment.
    cursor: u32,
    /// `tg_portless`: `PORTLESS_*` flags.
    portless: u32,
    /// `parse`: the L3 offset, and 1 for the first fragment of a fragmented datagram.
    l3_off: u32,
    frag_first: u32,
    /// `ipv6_ext_walk`'s state: header type, offset, bytes left, `FRAG_*`.
    ext_next: u32,
    ext_off: u32,
    ext_left: u32,
    ext_frag: u32,
    suffixes: [u64; MAX_SUFFIXES],
    name: [u8; NAME_MAX as usize],
}

#[inline(always)]
fn job() -> Option<&'static mut Job> {
    // SAFETY: this CPU's scratch value; the pipeline runs on one CPU, one packet at a time.
    TG_JOB.get_ptr_mut(0).map(|j| unsafe { &mut *j })
}

/// This CPU's job and scratch buffer (the stages of one packet's pipeline share them).
#[inline(always)]
fn job_and_scratch() -> Option<(&'static mut Job, &'static mut HelloState)> {
    let job = job()?;
    let h = TG_HSCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch value; the pipeline runs on one CPU, one packet at a time.
    Some((job, unsafe { &mut *h }))
}

/// Drops a completely received hello's state (the packet program left it for us).
#[inline(always)]
fn forget_hello(key: &FlowKey, complete: bool) {
    if !complete {
        return;
    }
    let _ = TG_HELLO.remove(key);
    if let Some(f) = TG_FLOWS.get_ptr_mut(key) {
        // SAFETY: live LRU map value.
        unsafe { (*f).flags &= !FLOW_F_HELLO_PENDING };
    }
}

/// Stage 1: append the packet's hello bytes, find the SNI in the bytes held and copy the name
/// into the job. A hello that ends (or fills the window, or cannot be followed) without a
/// readable SNI makes a port-443 flow unreadable.
#[classifier]
pub fn tg_sni(ctx: TcContext) -> i32 {
    let Some(job) = job() else {
        return PASS;
    };
    let h = if job.source == JOB_HELLO_MAP {
        TG_HELLO.get_ptr_mut(&job.pkt.key)
    } else {
        TG_HSCRATCH.get_ptr_mut(0)
    };
    let Some(h) = h else {
        return PASS;
    };
    // SAFETY: live map value (LRU entry or this CPU's scratch).
    let h = unsafe { &mut *h };
    if h.sni_done == 0 {
        hello_append(&ctx, job, h);
    }
    // The whole hello went by: its wire span, or its handshake bytes.
    let ended = h.next_seq.wrapping_sub(h.start_seq) >= h.total_len
        || (h.hs_total != 0 && h.hs_pos >= h.hs_total);
    let complete = job.source == JOB_HELLO_MAP && ended;
    if h.bad_records != 0 {
        h.sni_done = 1;
        forget_hello(&job.pkt.key, complete);
        return sni_unreadable(&ctx, job, STAT_UNREADABLE_RECORDS);
    }
    let (off, len) = match sni_walk(h) {
        Sni::NeedMore => {
            if h.have >= HELLO_WINDOW || ended {
                h.sni_done = 1;
                forget_hello(&job.pkt.key, complete);
                return sni_unreadable(&ctx, job, STAT_UNREADABLE_NO_SNI);
            }
            forget_hello(&job.pkt.key, complete);
            return PASS;
        }
        Sni::Absent => {
            h.sni_done = 1;
            forget_hello(&job.pkt.key, complete);
            return sni_unreadable(&ctx, job, STAT_UNREADABLE_NO_SNI);
        }
        Sni::Found { off, len } => (off, len),
    };
    h.sni_done = 1;
    stat(STAT_SNI_FOUND, 1);
    // SAFETY: reads locals.
    let (off, len) = unsafe { (ptr::read_volatile(&off), ptr::read_volatile(&len)) };
    let off = off & (HELLO_WINDOW - 1);
    let len = ((len - 1) & (NAME_MAX - 1)) + 1;
    // SAFETY: source: inside h.buf (off < WINDOW, len <= 256, buf = 2 * WINDOW); destination:
    // job.name of NAME_MAX bytes.
    let ret = unsafe {
        bpf_probe_read_kernel(
            job.name.as_mut_ptr() as *mut _,
            len,
            h.buf.as_ptr().add(off as usize) as *const _,
        )
    };
    if ret != 0 {
        return PASS;
    }
    job.name_len = len;
    forget_hello(&job.pkt.key, complete);
    mark_named(&job.pkt.key);
    // SAFETY: tail call into the next stage; returns only when it fails.
    unsafe { TG_PROGS.tail_call(&ctx, PROG_INDEX_NAME) };
    PASS
}

/// The probes read this flow's name (its SNI or Host).
#[inline(always)]
fn mark_named(key: &FlowKey) {
    if let Some(f) = TG_FLOWS.get_ptr_mut(key) {
        // SAFETY: live LRU map value.
        unsafe { (*f).flags |= FLOW_F_NAMED };
    }
}

/// A hello the probes could not read a name from (see `tg_unreadable`): only port-443 flows
/// count, and only when nothing named the flow before (a decoy hello cannot unname it).
#[inline(always)]
fn sni_unreadable(ctx: &TcContext, job: &mut Job, why: usize) -> i32 {
    if job.pkt.key.remote_port != UNREADABLE_PORT {
        return PASS;
    }
    let named = match TG_FLOWS.get_ptr(&job.pkt.key) {
        // SAFETY: live LRU map value, read only.
        Some(f) => (unsafe { (*f).flags } & FLOW_F_NAMED) != 0,
        None => true,
    };
    if named {
        return PASS;
    }
    job.action = why as u32;
    // SAFETY: tail call; returns only when it fails.
    unsafe { TG_PROGS.tail_call(ctx, PROG_INDEX_UNREADABLE) };
    PASS
}

/// Copies up to `SCAN` (a power of two, at most `HELLO_BUF_LEN`) payload bytes of the job's
/// packet into the scratch buffer; how many, or `None` when fewer than `min` are present or
/// the copy fails.
#[inline(always)]
fn load_payload<const SCAN: u32>(
    ctx: &TcContext,
    job: &Job,
    h: &mut HelloState,
    min: u32,
) -> Option<u32> {
    let mut n = job.pkt.payload_len;
    if n > SCAN {
        n = SCAN;
    }
    if n < min || n == 0 {
        return None;
    }
    let nm1 = n - 1;
    // The verifier must see 1 <= len <= SCAN at the helper call; LLVM would fold a plain
    // clamp, so the bound is applied to a value read back through a volatile load.
    // SAFETY: reads a local.
    let len = (unsafe { ptr::read_volatile(&nm1) } & (SCAN - 1)) + 1;
    // SAFETY: destination: h.buf (HELLO_BUF_LEN >= SCAN >= len); the helper checks the packet
    // side.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            job.pkt.payload_off,
            h.buf.as_mut_ptr() as *mut _,
            len,
        )
    };
    (ret == 0).then_some(len)
}

/// Stage 1 for HTTP/1: find the Host header of the request head in the packet and copy its
/// name (without port) into the job.
#[classifier]
pub fn tg_host(ctx: TcContext) -> i32 {
    let Some((job, h)) = job_and_scratch() else {
        return PASS;
    };
    let Some(len) = load_payload::<HOST_SCAN>(&ctx, job, h, 16) else {
        return PASS;
    };
    // "\nhost:" (ASCII case-insensitive) in a rolling window of the last six bytes.
    let mut w: u64 = 0;
    let mut start = 0u32;
    let mut i = 0u32;
    while i < HOST_SCAN {
        if i >= len {
            break;
        }
        w = ((w << 8) | u64::from(hb(h, i))) & 0xffff_ffff_ffff;
        // The four letters compared with bit 5 set (no branch per byte: a branch per byte
        // doubles the verifier's paths each iteration).
        if w | 0x0000_2020_2020_00 == 0x0a68_6f73_743a {
            start = i + 1;
            break;
        }
        if w & 0xffff_ffff == 0x0d0a_0d0a {
            break;
        }
        i += 1;
    }
    if start == 0 {
        return PASS;
    }
    // Through map memory: the verifier then sees an unknown start, so the loops below are
    // verified once and not once per place the Host header could start.
    // SAFETY: job is this CPU's map value.
    unsafe { ptr::write_volatile(&mut job.count, start) };
    // SAFETY: as above.
    let mut p = unsafe { ptr::read_volatile(&job.count) } & (HOST_SCAN - 1);
    let mut k = 0;
    while k < 8 {
        let c = hb(h, p);
        if c != u32::from(b' ') && c != u32::from(b'\t') {
            break;
        }
        p += 1;
        k += 1;
    }
    let mut nlen = 0u32;
    let mut ended = false;
    while nlen < NAME_MAX - 1 {
        let q = p + nlen;
        if q >= len {
            break;
        }
        let c = hb(h, q) as u8;
        if c == b':' || c == b'\r' || c == b'\n' || c == b' ' || c == b'\t' {
            ended = true;
            break;
        }
        job.name[(nlen & (NAME_MAX - 1)) as usize] = c;
        nlen += 1;
    }
    // A Host cut by the end of what we read is not matched on a prefix of itself.
    if !ended {
        return PASS;
    }
    if nlen > 0 && job.name[((nlen - 1) & (NAME_MAX - 1)) as usize] == b'.' {
        nlen -= 1;
    }
    if nlen == 0 {
        return PASS;
    }
    job.name_len = nlen;
    stat(STAT_HTTP_HOST_FOUND, 1);
    mark_named(&job.pkt.key);
    // SAFETY: tail call into the next stage; returns only when it fails.
    unsafe { TG_PROGS.tail_call(&ctx, PROG_INDEX_NAME) };
    PASS
}

/// Stage 1 for a DNS query from a user: copy the message into the scratch buffer (kept there
/// for the NXDOMAIN answer) and its question name, as dotted text, into the job. Anything but
/// a plain one-question query passes untouched.
#[classifier]
pub fn tg_qname(ctx: TcContext) -> i32 {
    let Some((job, h)) = job_and_scratch() else {
        return PASS;
    };
    // At least the header, the shortest name (one label of one byte + root), type and class.
    let Some(len) = load_payload::<QNAME_SCAN>(&ctx, job, h, DNS_HEADER_LEN + 3 + 4) else {
        return PASS;
    };
    if job.source == JOB_DNS_ANSWER {
        // A standard response (QR 1, opcode 0) with exactly one question.
        if hb(h, 2) & 0xf8 != 0x80 || hb16(h, 4) != 1 {
            return PASS;
        }
    } else if hb(h, 2) & 0xf8 != 0 || hb16(h, 4) != 1 || hb16(h, 6) != 0 || hb16(h, 8) != 0 {
        // A standard query (QR 0, opcode 0) with exactly one question and no answers.
        return PASS;
    }
    // Labels to dotted text: byte i of the encoded name becomes byte i - 1 of the text, a
    // length byte becomes a dot. A compression pointer or an over-long label ends it.
    let mut next = 0u32;
    let mut encoded = 0u32;
    let mut i = 0u32;
    while i < NAME_MAX {
        if DNS_HEADER_LEN + i >= len {
            break;
        }
        let c = hb(h, DNS_HEADER_LEN + i);
        if i == next {
            if c == 0 {
                encoded = i + 1;
                break;
            }
            if c > 63 {
                return PASS;
            }
            if i > 0 {
                job.name[((i - 1) & (NAME_MAX - 1)) as usize] = b'.';
            }
            next = i + c + 1;
        } else {
            job.name[((i - 1) & (NAME_MAX - 1)) as usize] = c as u8;
        }
        i += 1;
    }
    // No end within NAME_MAX or the bytes read, or the root name.
    if encoded < 3 || DNS_HEADER_LEN + encoded + 4 > len {
        return PASS;
    }
    job.name_len = encoded - 2;
    job.question_len = encoded + 4;
    // SAFETY: tail call into the next stage; returns only when it fails.
    unsafe { TG_PROGS.tail_call(&ctx, PROG_INDEX_NAME) };
    PASS
}

/// Stage 2: hash the name from its last byte backwards, recording the hash at each label
/// start (the hash of that suffix).
#[classifier]
pub fn tg_name(ctx: TcContext) -> i32 {
    let Some(job) = job() else {
        return PASS;
    };
    let len = job.name_len & (NAME_MAX - 1);
    let mut hash = NAME_HASH_SEED;
    // The label count lives in map memory and is read back each time: the verifier then
    // treats it as unknown, so loop states with different counts prune (a register count would
    // make the states per iteration grow with the iteration number).
    // SAFETY: job is this CPU's map value.
    unsafe { ptr::write_volatile(&mut job.count, 0) };
    // SAFETY: as above.
    unsafe { ptr::write_volatile(&mut job.long, 0) };
    let mut i = 0u32;
    while i < NAME_MAX {
        if i >= len {
            break;
        }
        let pos = (len - 1 - i) & (NAME_MAX - 1);
        let c = job.name[pos as usize];
        if c == b'.' {
            // The bytes after this dot are a parent domain: its hash is the hash so far.
            // The shortest parents are kept (hashing runs from the right): for a name with
            // more labels, the registrable domain and its parents still count.
            // SAFETY: as above.
            let n = unsafe { ptr::read_volatile(&job.count) };
            if n < MAX_SUFFIXES as u32 - 1 {
                job.suffixes[(n & (MAX_SUFFIXES as u32 - 1)) as usize] = hash;
                // SAFETY: as above.
                unsafe { ptr::write_volatile(&mut job.count, n.wrapping_add(1)) };
            } else {
                // SAFETY: as above.
                unsafe { ptr::write_volatile(&mut job.long, 1) };
            }
        }
        hash = name_hash_step(hash, c);
        i += 1;
    }
    // SAFETY: as above.
    let count = unsafe { ptr::read_volatile(&job.count) };
    job.suffixes[(count & (MAX_SUFFIXES as u32 - 1)) as usize] = hash;
    let count = count.wrapping_add(1);
    job.count = count;
    if job.long != 0 {
        stat(STAT_LONG_NAMES, 1);
    }
    // SAFETY: tail call into the next stage; returns only when it fails.
    unsafe { TG_PROGS.tail_call(&ctx, PROG_INDEX_VERDICT) };
    PASS
}

/// Stage 3: the most specific name verdict (the whole name, else the longest parent domain
/// whose verdict covers subdomains), recorded as the flow's verdict and applied to this very
/// packet.
#[classifier]
pub fn tg_verdict(ctx: TcContext) -> i32 {
    let Some(job) = job() else {
        return PASS;
    };
    // Suffix hashes were recorded shortest first, the whole name last (at most MAX_SUFFIXES
    // slots: a longer name kept its shortest suffixes).
    let count = job.count;
    let wslot = count.wrapping_sub(1) & (MAX_SUFFIXES as u32 - 1);
    // Plain scalars, not an Option: LLVM would spill the None payload uninitialised.
    let dns = job.source == JOB_DNS || job.source == JOB_DNS_ANSWER;
    let mut found = false;
    let mut best_action = ACTION_NONE;
    let mut best_app = 0u32;
    let mut best_flags = 0u32;
    let mut k = 0u32;
    while k < MAX_SUFFIXES as u32 {
        let whole = count > 0 && k == wslot;
        let usable = k < count;
        if usable {
            let hash = job.suffixes[(k & (MAX_SUFFIXES as u32 - 1)) as usize];
            if let Some(v) = TG_NAME_VERDICT.get_ptr(NameKey { hash }) {
                // SAFETY: live map value, read only.
                let v = unsafe { *v };
                // A verdict without an action refuses a DNS name only, or marks a name under
                // session control; it decides no flow.
                if (whole || v.flags & NAME_F_SUBDOMAINS != 0)
                    && (dns || v.action != ACTION_NONE || v.flags & NAME_F_SESSION != 0)
                {
                    found = true;
                    best_action = v.action;
                    best_app = v.app_id;
                    best_flags = v.flags;
                }
            }
        }
        k += 1;
    }
    if !found {
        return PASS;
    }
    if job.source == JOB_DNS_ANSWER {
        if best_flags & NAME_F_SESSION != 0 {
            return hold_dns_answer(&ctx, job);
        }
        return PASS;
    }
    if dns {
        // The query's own flow gets no verdict: the next query on it may be for anything.
        return refuse_dns(&ctx, job, best_flags);
    }
    if best_flags & NAME_F_SESSION != 0 && best_action != ACTION_BLOCK && best_action != ACTION_DROP
    {
        return session_name(&ctx, job, best_app);
    }
    stat(STAT_NAME_VERDICTS, 1);
    let fv = FlowVerdict {
        action: best_action,
        app_id: best_app,
        expires_ns: 0,
    };
    let _ = TG_FLOW_VERDICT.insert(&job.pkt.key, &fv, 0);
    if let Some(f) = TG_FLOWS.get_ptr_mut(&job.pkt.key) {
        // SAFETY: live LRU map value.
        unsafe { (*f).verdict = best_action };
    }
    if (best_action != ACTION_BLOCK && best_action != ACTION_DROP) || !blocking_applies() {
        return PASS;
    }
    if job.source == JOB_HTTP {
        // The request is not forwarded: it becomes a reset to the server, and the daemon
        // answers the user with a block page in the server's place.
        if make_rst_to_remote(ctx.skb.skb, &job.pkt) {
            stat2(STAT_HTTP_BLOCKED, 1, STAT_RST_SENT, 1);
            return PASS;
        }
        stat(STAT_DROPS, 1);
        return DROP;
    }
    if best_action == ACTION_BLOCK {
        job.action = best_action;
        // SAFETY: tail call into tg_enforce (reset / ICMP error); returns only on failure.
        unsafe { TG_PROGS.tail_call(&ctx, PROG_INDEX_ENFORCE) };
    }
    stat(STAT_DROPS, 1);
    DROP
}

/// A ClientHello naming an app under session control (a name verdict with `NAME_F_SESSION`).
/// On a steered flow it is the proxy's business and passes. On a direct flow (no DNS answer
/// steered its address: DoH, a cached or hard-coded address) it must not reach the origin
/// uninspected: it is dropped and the user gets a reset, and, when the server answered the
/// flow's SYN (so the client can reach that address anyway), this client's connections to the
/// address are steered from now on (`TG_STEER_CLI`): its retry goes through the proxy. The
/// entry steers nobody else, so a client naming an app toward an address of its choice only
/// affects itself. Applies in every mode (session control does not depend on the mode of the
/// verdicts), unless the daemon is gone and the admin chose fail-open.
#[inline(always)]
fn session_name(ctx: &TcContext, job: &mut Job, app_id: u32) -> i32 {
    let key = job.pkt.key;
    if (job.source != JOB_SCRATCH && job.source != JOB_HELLO_MAP)
        || job.dir != DIR_UP
        || job.egress != 0
        || key.proto != PROTO_TCP
        || key.remote_port != STEER_TCP_PORT
    {
        return PASS;
    }
    let Some(c) = TG_CONFIG.get(0) else {
        return PASS;
    };
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if c.flags & CONFIG_F_SESSION == 0 || failed_open(c, now) {
        return PASS;
    }
    let (steered, answered) = match TG_FLOWS.get_ptr(&key) {
        // SAFETY: live LRU map value, read only.
        Some(f) => unsafe {
            (
                (*f).flags & FLOW_F_STEERED != 0,
                (*f).tcp_flags & SYN_ACK_DOWN == SYN_ACK_DOWN,
            )
        },
        None => (false, false),
    };
    if steered {
        return PASS;
    }
    if answered {
        let e = SteerEntry {
            app_id,
            _pad: 0,
            expires_ns: now.saturating_add(STEER_CLIENT_TTL_NS),
        };
        if TG_STEER_CLI
            .insert(&SteerClientKey::of(&key), &e, 0)
            .is_ok()
        {
            stat(STAT_STEER_CLIENT_ADDED, 1);
        }
    } else {
        stat(STAT_SESSION_UNPROVEN, 1);
    }
    stat(STAT_SESSION_REFUSED, 1);
    job.action = ACTION_REFUSE_STEERED;
    // SAFETY: tail call into tg_enforce (a reset to the user); returns only on failure.
    unsafe { TG_PROGS.tail_call(ctx, PROG_INDEX_ENFORCE) };
    stat(STAT_DROPS, 1);
    DROP
}

/// A SYN-ACK seen from the server in [`FlowValue::tcp_flags`] (bits 8..16: toward the user).
const SYN_ACK_DOWN: u32 = ((TCP_SYN | TCP_ACK) as u32) << 8;

/// A DNS answer for an app under session control: instead of forwarding it, the probes hand
/// the whole answer to the daemon (one ring record with `EVENT_F_HELD`) and drop it. The
/// daemon steers the answer's addresses and then sends the answer on to the user itself, so
/// the steer entries exist before the client can know the addresses: its first SYN is
/// steered. When the record cannot be written (ring full), the answer passes as it is.
#[inline(always)]
fn hold_dns_answer(ctx: &TcContext, job: &Job) -> i32 {
    let Some(buf) = TG_SCRATCH.get_ptr_mut(0) else {
        return PASS;
    };
    // SAFETY: this CPU's scratch value; the pipeline runs on one CPU, one packet at a time,
    // and the packet program's event was already written out of it.
    let buf = unsafe { &mut *buf };
    let pkt = &job.pkt;
    if pkt.payload_len == 0 || pkt.payload_len > PAYLOAD_CAP as u32 {
        return PASS;
    }
    let nm1 = pkt.payload_len - 1;
    // SAFETY: reads a local.
    let len = (unsafe { ptr::read_volatile(&nm1) } & (PAYLOAD_CAP as u32 - 1)) + 1;
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    buf.header = EventHeader {
        key: pkt.key,
        timestamp_ns: now,
        tcp_seq: 0,
        ifindex: sk_field_ifindex(ctx),
        orig_len: pkt.claimed_len,
        cap_len: len,
        kind: KIND_DNS,
        direction: job.dir,
        tcp_flags: 0,
        flags: EVENT_F_HELD,
        abi: ABI_VERSION,
        tcp_ack: 0,
        _pad: 0,
    };
    // SAFETY: the destination is this CPU's scratch payload of PAYLOAD_CAP bytes and
    // len <= PAYLOAD_CAP; the helper bounds-checks the packet side.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            pkt.payload_off,
            buf.payload.as_mut_ptr() as *mut _,
            len,
        )
    };
    if ret != 0 {
        return PASS;
    }
    let total = EVENT_HEADER_LEN + len as usize;
    // SAFETY: `buf` is EVENT_HEADER_LEN + PAYLOAD_CAP bytes and total <= that.
    let bytes = unsafe { core::slice::from_raw_parts(buf as *const EventBuf as *const u8, total) };
    if TG_EVENTS.output::<[u8]>(bytes, 0).is_err() {
        stat(STAT_RINGBUF_FULL, 1);
        return PASS;
    }
    stat2(STAT_DNS_HELD, 1, STAT_EVENTS, 1);
    DROP
}

/// A DNS query whose most specific name verdict is `flags`: answered with NXDOMAIN (in place
/// of the server, back to the user) when the verdict says so and verdicts are enforced.
#[inline(always)]
fn refuse_dns(ctx: &TcContext, job: &Job, flags: u32) -> i32 {
    if flags & NAME_F_REFUSE_DNS == 0 || !blocking_applies() {
        return PASS;
    }
    if make_nxdomain(ctx.skb.skb, &job.pkt, job.question_len)
        && redirect_to_user(ctx, job.egress != 0)
    {
        stat(STAT_DNS_REFUSED, 1);
    }
    stat(STAT_DROPS, 1);
    DROP
}

/// Tail-called by the packet programs for a blocked packet that gets an answer: rewrites it
/// into a TCP reset or an ICMP error toward the user.
#[classifier]
pub fn tg_enforce(ctx: TcContext) -> i32 {
    let Some(job) = job() else {
        return DROP;
    };
    let Some(c) = TG_CONFIG.get(0) else {
        return DROP;
    };
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let (action, force) = if job.action == ACTION_REFUSE_STEERED {
        (ACTION_BLOCK, true)
    } else {
        (job.action, false)
    };
    enforce(
        &ctx,
        &job.pkt,
        job.dir,
        job.egress != 0,
        action,
        force,
        c,
        now,
    )
}

/// Copies the packet's payload (up to `PAYLOAD_CAP` bytes) into the ring buffer as one record,
/// unless the flow has used up its events.
#[allow(clippy::too_many_arguments, reason = "inlined helper of one call tree")]
#[inline(always)]
fn emit(
    ctx: &TcContext,
    pkt: &Pkt,
    flow: &mut FlowValue,
    dir: u8,
    kind: u8,
    mut flags: u8,
    ifindex: u32,
    now: u64,
    lim: &Limits,
) -> bool {
    let cap = if kind == KIND_DNS {
        lim.max_dns_events
    } else {
        lim.max_events
    };
    if flow.events >= cap {
        flow.flags |= FLOW_F_CAPPED;
        stat(STAT_EVENTS_CAPPED, 1);
        return false;
    }
    flow.events += 1;
    if flow.events >= cap {
        flags |= EVENT_F_LAST;
    }
    let Some(buf) = TG_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch value; nothing else uses it while the program runs.
    let buf = unsafe { &mut *buf };
    let mut n = pkt.payload_len;
    if n > PAYLOAD_CAP as u32 {
        n = PAYLOAD_CAP as u32;
    }
    if n < pkt.claimed_len {
        flags |= EVENT_F_TRUNCATED;
    }
    if n == 0 {
        return false;
    }
    // The verifier must see 1 <= len <= PAYLOAD_CAP at the helper call; LLVM would fold a
    // plain clamp, so the bound is applied to a value read back through a volatile load.
    let nm1 = n - 1;
    // SAFETY: reads a local.
    let nm1 = unsafe { ptr::read_volatile(&nm1) } & (PAYLOAD_CAP as u32 - 1);
    let len = nm1 + 1;
    buf.header = EventHeader {
        key: pkt.key,
        timestamp_ns: now,
        tcp_seq: pkt.tcp_seq,
        ifindex,
        orig_len: pkt.claimed_len,
        cap_len: len,
        kind,
        direction: dir,
        tcp_flags: pkt.tcp_flags,
        flags,
        abi: ABI_VERSION,
        tcp_ack: pkt.tcp_ack,
        _pad: 0,
    };
    // SAFETY: the destination is this CPU's scratch payload of PAYLOAD_CAP bytes and
    // len <= PAYLOAD_CAP; the helper bounds-checks the packet side.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            pkt.payload_off,
            buf.payload.as_mut_ptr() as *mut _,
            len,
        )
    };
    if ret != 0 {
        stat(STAT_ERR_PAYLOAD, 1);
        return false;
    }
    let total = EVENT_HEADER_LEN + len as usize;
    // SAFETY: `buf` is EVENT_HEADER_LEN + PAYLOAD_CAP bytes and total <= that.
    let bytes = unsafe { core::slice::from_raw_parts(buf as *const EventBuf as *const u8, total) };
    match TG_EVENTS.output::<[u8]>(bytes, 0) {
        Ok(()) => {
            stat(STAT_EVENTS, 1);
            true
        }
        Err(_) => {
            stat(STAT_RINGBUF_FULL, 1);
            false
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// The kernel object declares a GPL-compatible license, which the kernel requires before it lets
// a program call GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
