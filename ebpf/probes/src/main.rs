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
//!
//! The program is split by concern: `maps` (every map, and the job scratch accessors),
//! `access` (packet reads, counters, skb fields), `parse` (headers into a `Pkt`, and the
//! packets that cannot be followed to their ports), `flow` (the per-packet work on the flow
//! table), `verdict` (deciding and enforcing), `steer` (session control), `rewrite` (resets,
//! ICMP errors, NXDOMAIN answers), `inspect` (what goes to userspace) and `pipeline` (the
//! tail-called name stages).
#![no_std]
#![no_main]

mod access;
mod flow;
mod inspect;
mod maps;
mod parse;
mod pipeline;
mod rewrite;
mod steer;
mod verdict;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use tollgate_common::{DIR_DOWN, DIR_UP};

use crate::flow::try_run;

// ---- actions ----

/// Pass in a TCX chain: TCX_NEXT lets later programs and the stack decide (`TC_ACT_OK` would
/// end the chain).
pub(crate) const PASS: i32 = TC_ACT_UNSPEC;
/// A packet we cannot parse passes (fail-open on parse errors, counted in `STAT_ERR_*`): the
/// gateway must never break traffic it does not understand.
pub(crate) const ON_PARSE_ERROR: i32 = PASS;
/// Drop (used by enforce-mode verdicts only).
pub(crate) const DROP: i32 = TC_ACT_SHOT;

// ---- entry points ----
//
// `#[classifier]` wraps each function below in the exported entry point and calls it. Left to
// LLVM, the LAN programs' bodies (over 6,000 instructions) stayed separate functions: every
// packet then paid a BPF-to-BPF call and return (each return through the kernel's return
// thunk) and the tail-call counter's hand-over between them. `#[inline(always)]` (kept on
// the inner function by the macro) makes each program one function; about 2 ns less per
// packet in place (`tests/bench/forwarding_ab.sh`, 6 rounds: 99.6 -> 97.4 ns median).

#[classifier]
#[inline(always)]
pub fn tg_lan_ingress(ctx: TcContext) -> i32 {
    run(&ctx, DIR_UP, false)
}

#[classifier]
#[inline(always)]
pub fn tg_lan_egress(ctx: TcContext) -> i32 {
    run(&ctx, DIR_DOWN, true)
}

#[classifier]
#[inline(always)]
pub fn tg_wan_ingress(ctx: TcContext) -> i32 {
    run(&ctx, DIR_DOWN, false)
}

#[classifier]
#[inline(always)]
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
