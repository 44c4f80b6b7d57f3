//! Verdicts: what a flow's verdict is (its own, else a blocked prefix), whether it applies now
//! (enforce or monitor mode, the daemon's heartbeat, fail-open), held QUIC flows, unreadable
//! port-443 flows, and `tg_enforce`, which turns a blocked packet into its answer.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, macros::classifier, programs::TcContext};
use tollgate_common::{
    ACTION_BLOCK, ACTION_DROP, ACTION_NONE, ACTION_REFUSE, CONFIG_F_NO_QUIC_HOLD,
    CONFIG_F_UNREADABLE_BLOCK, Config, DIR_UP, FAMILY_V4, FLOW_F_QUIC_HOLD, FLOW_F_QUIC_RELEASED,
    FLOW_F_UNREADABLE, FlowKey, FlowValue, FlowVerdict, MODE_ENFORCE, PROG_INDEX_ENFORCE,
    PROG_INDEX_UNREADABLE, PROTO_TCP, QUIC_HOLD_NS, STAT_DROPS, STAT_ICMP_SENT, STAT_QUIC_HELD,
    STAT_QUIC_HOLD_EXPIRED, STAT_RST_SENT, STAT_UNREADABLE_BLOCKED, STAT_UNREADABLE_PASSED,
    STAT_WOULD_DROP, tcp_flags,
};

use crate::access::{stat, stat2};
use crate::maps::{
    TG_BLOCK_V4, TG_BLOCK_V6, TG_CONFIG, TG_FLOW_VERDICT, TG_FLOWS, TG_PROGS, job, lpm_key_v4,
    lpm_key_v6,
};
use crate::parse::Pkt;
use crate::rewrite::{make_icmp_unreachable, make_icmp6_unreachable, make_rst, redirect_to_user};
use crate::{DROP, PASS};

/// A packet of a held QUIC flow (see `FLOW_F_QUIC_HOLD`): `Some(action)` decides the packet,
/// `None` lets the normal path go on. The flow verdict map is read here directly, so a verdict
/// needs no commit: a blocking one is applied (the flow stays held, so it keeps applying), any
/// other ends the hold. The hold also ends when it times out without a verdict, or when
/// verdicts are not enforced (monitor mode, fail-open).
#[inline(always)]
pub(crate) fn quic_hold(
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

/// The decision for a flow: its own verdict if userspace set one, else the blocked prefix the
/// remote address falls in.
#[inline(always)]
pub(crate) fn evaluate(key: &FlowKey, now: u64) -> u32 {
    let live = |expires: u64| expires == 0 || expires > now;
    if let Some(v) = TG_FLOW_VERDICT.get_ptr(key) {
        // SAFETY: live map value, read only.
        let v = unsafe { &*v };
        if live(v.expires_ns) {
            return v.action;
        }
    }
    let hit = if key.family == FAMILY_V4 {
        TG_BLOCK_V4.get(lpm_key_v4(key.remote_addr[0]))
    } else {
        TG_BLOCK_V6.get(lpm_key_v6(&key.remote_addr))
    };
    match hit {
        Some(v) if live(v.expires_ns) => v.action,
        _ => ACTION_NONE,
    }
}

/// Action code the packet programs hand to `tg_enforce` for a packet toward a steered
/// destination that must not pass (QUIC; a SYN no proxy listener can take): block in every
/// mode, because session control does not depend on the enforce/monitor mode of the verdicts.
/// Kernel-internal, never in a map.
pub(crate) const ACTION_REFUSE_STEERED: u32 = 0x8000_0002;

/// Whether verdicts are applied now: enforce mode, and the daemon alive or fail-closed.
#[inline(always)]
pub(crate) fn enforcing(cfg: &Config, now: u64) -> bool {
    cfg.mode == MODE_ENFORCE && !failed_open(cfg, now)
}

/// For the name-verdict stages: whether a blocking verdict applies to this packet now (see
/// `enforcing`); when it does not, the packet counts as "would drop".
#[inline(always)]
pub(crate) fn blocking_applies() -> bool {
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
pub(crate) const UNREADABLE_PORT: u16 = 443;

/// A port-443 flow from a user whose name the probes cannot read, for the reason `why` (a
/// `STAT_*` id): handed to `tg_unreadable` (a tail call: its work is verified once, not on
/// every path of the packet programs). Returns only when the tail call failed.
#[inline(always)]
pub(crate) fn unreadable_tail(ctx: &TcContext, pkt: &Pkt, dir: u8, egress: bool, why: usize) {
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
pub(crate) fn failed_open(cfg: &Config, now: u64) -> bool {
    cfg.fail_open != 0 && daemon_gone(cfg, now)
}

/// The daemon's heartbeat is older than the configured timeout.
#[inline(always)]
pub(crate) fn daemon_gone(cfg: &Config, now: u64) -> bool {
    cfg.heartbeat_timeout_ns != 0 && now > cfg.heartbeat_ns.saturating_add(cfg.heartbeat_timeout_ns)
}

/// How recent the daemon's heartbeat must be for the probes to hand it a DNS answer to send
/// on (it heartbeats every 2 s): a held answer needs a live daemon, or it is lost.
const HOLD_ALIVE_NS: u64 = 6_000_000_000;

/// Whether the daemon heartbeated within [`HOLD_ALIVE_NS`].
#[inline(always)]
pub(crate) fn daemon_alive(cfg: &Config, now: u64) -> bool {
    cfg.heartbeat_ns != 0 && now.saturating_sub(cfg.heartbeat_ns) < HOLD_ALIVE_NS
}

/// `enforce` for the packet programs: drops are decided here; building a reset or an ICMP
/// error happens in `tg_enforce` (a tail call), which keeps those buffers off this program's
/// stack and out of its verification.
#[inline(always)]
pub(crate) fn enforce_tail(
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
        && !(pkt.key.proto == PROTO_TCP && pkt.tcp_flags & tcp_flags::RST != 0);
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
        if pkt.tcp_flags & tcp_flags::RST != 0 {
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
