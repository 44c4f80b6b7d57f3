//! The tail-called name stages. A packet program leaves a `Job` in this CPU's `TG_JOB` and
//! tail-calls `tg_sni`, `tg_host` or `tg_qname` (find the name), which go on to `tg_name` (hash
//! its suffixes) and `tg_verdict` (look them up, record and apply the verdict): each stage's
//! loops are verified once, from a clean entry.

use core::ptr;

use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_skb_load_bytes, generated::bpf_probe_read_kernel},
    macros::classifier,
    programs::TcContext,
};
use tollgate_common::{
    ABI_VERSION, ACTION_BLOCK, ACTION_DROP, ACTION_NONE, CONFIG_F_SESSION, DIR_UP, EVENT_F_HELD,
    EventHeader, FLOW_F_HELLO_PENDING, FLOW_F_NAMED, FLOW_F_STEERED, FlowKey, FlowValue,
    FlowVerdict, HELLO_BUF_LEN, HELLO_WINDOW, HelloState, KIND_DNS, NAME_F_REFUSE_DNS,
    NAME_F_SESSION, NAME_F_SUBDOMAINS, NAME_HASH_SEED, NameKey, PAYLOAD_CAP, PROG_INDEX_ENFORCE,
    PROG_INDEX_NAME, PROG_INDEX_UNREADABLE, PROG_INDEX_VERDICT, PROTO_TCP, STAT_DNS_HELD,
    STAT_DNS_REFUSED, STAT_DROPS, STAT_EVENTS, STAT_HTTP_BLOCKED, STAT_HTTP_HOST_FOUND,
    STAT_LONG_NAMES, STAT_NAME_VERDICTS, STAT_RST_SENT, STAT_SESSION_REFUSED,
    STAT_SESSION_UNPROVEN, STAT_SNI_FOUND, STAT_STEER_CLIENT_ADDED, STAT_UNREADABLE_NO_SNI,
    STAT_UNREADABLE_RECORDS, STEER_CLIENT_TTL_NS, STEER_TCP_PORT, SteerClientKey, SteerEntry,
    name_hash_step, tcp_flags,
};

use crate::access::{sk_field_ifindex, stat, stat2};
use crate::inspect::{hello_append, load_event_payload, output_event};
use crate::maps::{
    TG_CONFIG, TG_FLOW_VERDICT, TG_FLOWS, TG_HELLO, TG_HSCRATCH, TG_NAME_VERDICT, TG_PROGS,
    TG_SCRATCH, TG_STEER_CLI, job, job_and_scratch,
};
use crate::parse::Pkt;
use crate::rewrite::{make_nxdomain, make_rst_to_remote, redirect_to_user};
use crate::verdict::{ACTION_REFUSE_STEERED, UNREADABLE_PORT, blocking_applies, failed_open};
use crate::{DROP, PASS};

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
pub(crate) fn hb(h: &HelloState, i: u32) -> u32 {
    u32::from(h.buf[(i & HELLO_MASK) as usize])
}

#[inline(always)]
pub(crate) fn hb16(h: &HelloState, i: u32) -> u32 {
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
pub(crate) const JOB_SCRATCH: u32 = 1;
pub(crate) const JOB_HELLO_MAP: u32 = 2;
/// An HTTP/1 request head in the packet itself (tg_host reads its Host).
pub(crate) const JOB_HTTP: u32 = 3;
/// A DNS query from a user in the packet itself (tg_qname reads its question name).
pub(crate) const JOB_DNS: u32 = 4;
/// A DNS answer toward a user in the packet itself (tg_qname reads its question name; an
/// answer for an app under session control is held, see `hold_dns_answer`).
pub(crate) const JOB_DNS_ANSWER: u32 = 5;

/// DNS message bytes read for the question (header + a name of at most 255 bytes + type and
/// class fit; a power of two so that indexes can be masked).
const QNAME_SCAN: u32 = 512;
pub(crate) const DNS_HEADER_LEN: u32 = 12;
/// Request-head bytes searched for the Host header.
const HOST_SCAN: u32 = 2048;
const _: () = assert!(HOST_SCAN <= HELLO_BUF_LEN as u32 && QNAME_SCAN <= HELLO_BUF_LEN as u32);
/// Longest SNI considered (DNS names are at most 253 bytes).
pub(crate) const NAME_MAX: u32 = 256;

/// Hand-over between the packet programs and the SNI pipeline (per-CPU, same CPU throughout).
#[derive(Clone, Copy)]
pub(crate) struct Job {
    pub(crate) pkt: Pkt,
    pub(crate) dir: u8,
    pub(crate) egress: u8,
    pub(crate) source: u32,
    pub(crate) name_len: u32,
    pub(crate) count: u32,
    pub(crate) action: u32,
    /// DNS jobs: length of the question section (name, type, class) after the header.
    pub(crate) question_len: u32,
    /// 1: the name has more labels than `MAX_SUFFIXES` (only its shortest suffixes and the
    /// whole name were hashed).
    pub(crate) long: u32,
    /// `hello_append`'s position in the segment.
    pub(crate) cursor: u32,
    /// `tg_portless`: `PORTLESS_*` flags.
    pub(crate) portless: u32,
    /// `ipv6_ext_walk`'s state: header type, offset, bytes left, `FRAG_*`.
    pub(crate) ext_next: u32,
    pub(crate) ext_off: u32,
    pub(crate) ext_left: u32,
    pub(crate) ext_frag: u32,
    pub(crate) suffixes: [u64; MAX_SUFFIXES],
    pub(crate) name: [u8; NAME_MAX as usize],
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
    // SAFETY: tail call into the next stage; returns only when it fails.
    unsafe { TG_PROGS.tail_call(&ctx, PROG_INDEX_NAME) };
    PASS
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
    // An SNI or Host job: the probes read this flow's name. It is marked here, with the one
    // flow-table lookup that also records the verdict below (tg_sni and tg_host always end
    // here, through tg_name): a named flow with a verdict costs one lookup in the pipeline,
    // not two (about 14 ns of a ClientHello's, `prog_cost`). `session_name` uses it too.
    let flow = if dns {
        None
    } else {
        TG_FLOWS.get_ptr_mut(&job.pkt.key)
    };
    if let Some(f) = flow {
        // SAFETY: live LRU map value.
        unsafe { (*f).flags |= FLOW_F_NAMED };
    }
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
        return session_name(&ctx, job, best_app, flow);
    }
    stat(STAT_NAME_VERDICTS, 1);
    let fv = FlowVerdict {
        action: best_action,
        app_id: best_app,
        expires_ns: 0,
    };
    let _ = TG_FLOW_VERDICT.insert(&job.pkt.key, &fv, 0);
    if let Some(f) = flow {
        // SAFETY: live LRU map value (the pointer taken above; the program holds the RCU read
        // lock until it ends).
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
fn session_name(ctx: &TcContext, job: &mut Job, app_id: u32, flow: Option<*mut FlowValue>) -> i32 {
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
    let (steered, answered) = match flow {
        // SAFETY: the job's flow, looked up by tg_verdict (live LRU map value), read only.
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
const SYN_ACK_DOWN: u32 = ((tcp_flags::SYN | tcp_flags::ACK) as u32) << 8;

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
    if !load_event_payload(ctx, buf, pkt.payload_off, len) || !output_event(buf, len) {
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
