//! Header parsing: Ethernet (and inline VLAN tags), IPv4 or IPv6 (and its extension headers),
//! TCP or UDP into a `Pkt`. A packet that cannot be followed down to its ports (a later
//! fragment, a tiny first fragment, a long extension chain, a deep VLAN stack) goes to
//! `tg_portless`.

use core::ptr;

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, macros::classifier, programs::TcContext};
use tollgate_common::{
    ACTION_BLOCK, ACTION_DROP, CONFIG_F_UNREADABLE_BLOCK, DIR_UP, FAMILY_V4, FAMILY_V6, FlowKey,
    PROG_INDEX_PORTLESS, PROTO_TCP, PROTO_UDP, STAT_DROPS, STAT_ERR_IPV4, STAT_ERR_IPV6,
    STAT_ERR_L2, STAT_ERR_PAYLOAD, STAT_ERR_TCP, STAT_ERR_UDP, STAT_FRAG_REFUSED, STAT_FRAG_TINY,
    STAT_FRAGMENTS, STAT_IPV6_EXT_OVERFLOW, STAT_NON_IP, STAT_OTHER_L4, STAT_UNREADABLE_BLOCKED,
    STAT_VLAN_DEEP, STAT_WOULD_DROP,
};

use crate::access::{opaque, read, sk_vlan, stat};
use crate::maps::{TG_CONFIG, TG_PROGS, job};
use crate::steer::steered_destination;
use crate::verdict::{enforcing, evaluate};
use crate::{DROP, ON_PARSE_ERROR};

pub(crate) const ETH_P_IPV4: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
pub(crate) const ETH_HLEN: usize = 14;

pub(crate) const DNS_PORT: u16 = 53;

/// What the header parse found.
#[derive(Clone, Copy)]
pub(crate) struct Pkt {
    pub(crate) key: FlowKey,
    /// L3 length (IP header and payload) of the skb (GSO: all segments).
    pub(crate) l3_len: u32,
    pub(crate) payload_off: u32,
    /// Payload bytes present in the skb from `payload_off`.
    pub(crate) payload_len: u32,
    /// Payload length the headers claim (what `orig_len` reports).
    pub(crate) claimed_len: u32,
    pub(crate) tcp_seq: u32,
    pub(crate) tcp_ack: u32,
    pub(crate) tcp_flags: u8,
    pub(crate) l3_off: u32,
    pub(crate) l4_off: u32,
    /// Not 0 for the first fragment of a fragmented datagram (a number the verifier does not
    /// know, see `opaque`).
    pub(crate) frag_first: u32,
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
pub(crate) fn parse(ctx: &TcContext, dir: u8, egress: bool) -> Result<Pkt, i32> {
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
    // The verifier checks the rest of the program once, not once per number of tags.
    let l3_off = (opaque(ctx, l3_off as u32) & 0xff) as usize;
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
    // Opaque, so that it does not double the verifier's paths between here and its use.
    let frag_first = opaque(ctx, u32::from(raw.frag == FRAG_FIRST));
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
        frag_first,
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
