//! Packet access (every read goes through here), the counters, and the `__sk_buff` fields.

use core::ptr;

use aya_ebpf::programs::TcContext;

use crate::maps::TG_STATS;

/// Reads a `T` (a byte array) at `off`: directly from the linear packet data when it is there,
/// else through `bpf_skb_load_bytes` (non-linear skbs). `None` when the packet is too short.
#[inline(always)]
pub(crate) fn read<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
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
pub(crate) fn stat(idx: usize, n: u64) {
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
pub(crate) fn stat2(a: usize, na: u64, b: usize, nb: u64) {
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

/// `v`, read back so that the verifier sees an unknown number: the code after it is then
/// checked once for every value `v` could have had, not once per value.
///
/// The value goes through the skb's control block (`__sk_buff.cb[0]`, scratch space of tc
/// programs), whose earlier content is put back at once: a program before ours in the TCX
/// chain may pass something there to one after it. The skb is in cache already; the per-CPU
/// map value used for this before was one more cache line per packet (about 6 ns of the
/// program's ~80 in place in UDP 64-byte forwarding, `tests/bench/forwarding_enforce.sh`).
#[inline(always)]
pub(crate) fn opaque(ctx: &TcContext, v: u32) -> u32 {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed to the program; tc programs may
    // read and write cb[0..5].
    unsafe {
        let cb = ptr::addr_of_mut!((*ctx.skb.skb).cb[0]);
        let before = ptr::read_volatile(cb);
        ptr::write_volatile(cb, v);
        let out = ptr::read_volatile(cb);
        ptr::write_volatile(cb, before);
        out
    }
}

#[inline(always)]
pub(crate) fn sk_field_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed to the program.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
pub(crate) fn sk_mark(ctx: &TcContext) -> u32 {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed to the program.
    unsafe { (*ctx.skb.skb).mark }
}

#[inline(always)]
pub(crate) fn sk_field_ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: as above.
    unsafe { (*ctx.skb.skb).ingress_ifindex }
}

#[inline(always)]
pub(crate) fn sk_vlan(ctx: &TcContext) -> Option<u16> {
    // SAFETY: as above.
    let (present, tci) = unsafe { ((*ctx.skb.skb).vlan_present, (*ctx.skb.skb).vlan_tci) };
    if present != 0 {
        Some((tci & 0x0fff) as u16)
    } else {
        None
    }
}

#[inline(always)]
pub(crate) fn sk_gso_segs(ctx: &TcContext) -> u32 {
    // SAFETY: as above.
    let segs = unsafe { (*ctx.skb.skb).gso_segs };
    if segs == 0 { 1 } else { segs }
}
