//! Session control: steering flows into the proxy.

use core::ptr;

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::generated::{bpf_map_lookup_elem, bpf_sk_assign, bpf_sk_release},
    programs::TcContext,
};
use tollgate_common::{
    CONFIG_F_SESSION, FAMILY_V4, FLOW_F_STEER_CHECKED, FLOW_F_STEERED, FlowKey, FlowValue,
    PROG_INDEX_ENFORCE, PROTO_UDP, STAT_DROPS, STAT_STEER_BY_CLIENT, STAT_STEER_KEPT_STALE,
    STAT_STEER_LOST_RESET, STAT_STEER_NO_PROXY, STAT_STEERED, STEER_MARK, STEER_SLOT_V4,
    STEER_SLOT_V6, SteerClientKey, SteerEntry, tcp_flags,
};

use crate::DROP;
use crate::access::{read, stat};
use crate::maps::{
    TG_CONFIG, TG_PROGS, TG_PROXY_SOCK, TG_STEER_CLI, TG_STEER_V4, TG_STEER_V6, job, lpm_key_v4,
    lpm_key_v6,
};
use crate::parse::{DNS_PORT, ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, Pkt};
use crate::verdict::{ACTION_REFUSE_STEERED, daemon_gone};

/// A TCP packet from a user toward the steered port. Its SYN decides the flow: steered when
/// the destination is in a steer trie (`FLOW_F_STEERED` set, the SYN assigned to the proxy's
/// listener), direct otherwise (cleared: a reused 4-tuple starts afresh). Every packet of a
/// steered flow gets `STEER_MARK`, which the daemon's policy route delivers locally, where the
/// SYN reaches the listener and the rest the accepted connection. `false`: a SYN toward a
/// steered destination that no listener can take (refuse it).
#[inline(always)]
pub(crate) fn steer_tcp(ctx: &TcContext, pkt: &Pkt, flow: &mut FlowValue, now: u64) -> bool {
    if pkt.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) == tcp_flags::SYN {
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
        && flow.tcp_flags & u32::from(tcp_flags::SYN) == 0
        && pkt.tcp_flags & tcp_flags::RST == 0
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
pub(crate) fn session_dns(ctx: &TcContext) -> bool {
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
pub(crate) fn steered_destination(key: &FlowKey, now: u64) -> u32 {
    let hit = if key.family == FAMILY_V4 {
        TG_STEER_V4.get(lpm_key_v4(key.remote_addr[0]))
    } else {
        TG_STEER_V6.get(lpm_key_v6(&key.remote_addr))
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
pub(crate) fn refuse_steered(ctx: &TcContext, pkt: &Pkt, dir: u8, egress: bool) -> i32 {
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
