//! The per-packet work of the four entry points: flow counters, cached verdicts, session
//! control, inspection, and the hand-over of a name to the pipeline.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::TcContext};
use tollgate_common::{
    ACTION_BLOCK, ACTION_DROP, ACTION_NONE, ACTION_REFUSE, BLOCK_PAGE_MARK, CONFIG_F_NO_QUIC_HOLD,
    CONFIG_F_REFUSE_DNS, CONFIG_F_SESSION, Config, DEFAULT_INSPECT_PACKETS, DIR_DOWN, DIR_UP,
    FLOW_F_AT_START, FLOW_F_HELLO_PENDING, FLOW_F_HTTP, FLOW_F_ISN, FLOW_F_NAMED, FLOW_F_QUIC_HOLD,
    FLOW_F_QUIC_RELEASED, FLOW_F_STARTED, FLOW_F_UNREADABLE, FlowValue, KIND_DNS, KIND_QUIC,
    PAYLOAD_CAP, PROG_INDEX_HOST, PROG_INDEX_QNAME, PROG_INDEX_SNI, PROTO_TCP, PROTO_UDP,
    QUIC_HOLD_NS, STAT_BYTES, STAT_DEDUP, STAT_DROPS, STAT_FLOW_MAP_FULL, STAT_PACKETS,
    STAT_STEER_LOST_RESET, STAT_STEER_QUIC_REFUSED, STAT_UNREADABLE_FRAGMENTED, STEER_TCP_PORT,
    STEER_UDP_PORT, tcp_flags,
};

use crate::access::{
    read, sk_field_ifindex, sk_field_ingress_ifindex, sk_gso_segs, sk_mark, stat, stat2,
};
use crate::inspect::{KIND_HOLD, forwarded_dns_answer, inspect};
use crate::maps::{TG_CONFIG, TG_FLOWS, TG_FSCRATCH, TG_IFACES, TG_JOB, TG_PROGS};
use crate::parse::{DNS_PORT, Pkt, parse};
use crate::pipeline::{JOB_DNS, JOB_DNS_ANSWER, JOB_HTTP};
use crate::steer::{refuse_steered, session_dns, steer_tcp, steered_destination};
use crate::verdict::{
    UNREADABLE_PORT, daemon_alive, enforce_tail, enforcing, evaluate, failed_open, quic_hold,
    unreadable_tail,
};
use crate::{DROP, PASS};

#[inline(always)]
pub(crate) fn try_run(ctx: &TcContext, dir: u8, egress: bool) -> Result<i32, i32> {
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
    if up
        && pkt.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
        && pkt.key.proto == PROTO_TCP
    {
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

    if pkt.payload_len == 0 || past_inspection(&pkt, flow, up, cfg) {
        return Ok(PASS);
    }
    let names = cfg.is_some_and(|c| c.generation != 0);
    // A port-443 hello in IP fragments: the fragments after this one are not readable.
    if up
        && names
        && pkt.key.proto == PROTO_TCP
        && pkt.key.remote_port == UNREADABLE_PORT
        && flow.flags & FLOW_F_NAMED == 0
        && pkt.frag_first != 0
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

/// Whether nothing below the counters would act on this packet: its flow used up its
/// inspection budget in this direction (`inspect` would return at the budget check), it is on
/// no port whose packets are always looked at (443: hellos and QUIC Initials; 53: DNS), and
/// nothing is followed across its packets (a hello in pieces, a stream start, plain HTTP).
/// Most packets of a long flow end here, without the inspection code's checks.
#[inline(always)]
fn past_inspection(pkt: &Pkt, flow: &FlowValue, up: bool, cfg: Option<&Config>) -> bool {
    let limit = match cfg {
        Some(c) if c.inspect_packets != 0 => c.inspect_packets,
        _ => DEFAULT_INSPECT_PACKETS,
    };
    let inspected = if up {
        flow.inspected_up
    } else {
        flow.inspected_down
    };
    inspected >= limit
        && pkt.key.remote_port != UNREADABLE_PORT
        && pkt.key.remote_port != DNS_PORT
        && pkt.key.user_port != DNS_PORT
        && flow.flags & (FLOW_F_HELLO_PENDING | FLOW_F_AT_START | FLOW_F_HTTP) == 0
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
