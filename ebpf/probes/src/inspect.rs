//! What goes to userspace: the first payload-carrying packets of a flow (TLS hellos, followed
//! across segments; QUIC Initials; DNS; HTTP/1 request heads) are copied into the event ring.

use core::ptr;

use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use tollgate_common::{
    ABI_VERSION, DEFAULT_INSPECT_PACKETS, DEFAULT_MAX_DNS_EVENTS_PER_FLOW,
    DEFAULT_MAX_EVENTS_PER_FLOW, DIR_UP, EVENT_F_CONTINUATION, EVENT_F_LAST, EVENT_F_TRUNCATED,
    EVENT_HEADER_LEN, EventBuf, EventHeader, FLOW_F_AT_START, FLOW_F_CAPPED, FLOW_F_DNS,
    FLOW_F_HELLO_PENDING, FLOW_F_HTTP, FLOW_F_ISN, FLOW_F_NAMED, FLOW_F_QUIC, FLOW_F_STARTED,
    FLOW_F_TLS, FLOW_F_UNREADABLE, FlowValue, HELLO_WINDOW, HelloState, KIND_DNS, KIND_HTTP,
    KIND_QUIC, KIND_TLS, PAYLOAD_CAP, PROTO_TCP, STAT_DNS_UNSOLICITED, STAT_ERR_PAYLOAD,
    STAT_EVENTS, STAT_EVENTS_CAPPED, STAT_HELLO_CONT, STAT_HELLO_LOST, STAT_HELLO_MAP_FULL,
    STAT_HELLO_MULTI_RECORD, STAT_HELLO_OUT_OF_ORDER, STAT_RINGBUF_FULL, STAT_START_REPEATS,
    STAT_UNREADABLE_QUIC, STAT_UNREADABLE_START, tcp_flags,
};

use crate::access::{read, sk_field_ifindex, stat};
use crate::maps::{TG_CONFIG, TG_EVENTS, TG_FLOWS, TG_HELLO, TG_HSCRATCH, TG_SCRATCH};
use crate::parse::{DNS_PORT, Pkt, parse};
use crate::pipeline::{JOB_HELLO_MAP, JOB_HTTP, JOB_SCRATCH, Job, hb, hb16};
use crate::verdict::{UNREADABLE_PORT, unreadable_tail};

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
pub(crate) fn forwarded_dns_answer(ctx: &TcContext, dir: u8) {
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
    pub(crate) max_events: u32,
    pub(crate) max_dns_events: u32,
    pub(crate) inspect_packets: u32,
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
pub(crate) const KIND_HOLD: u8 = 0xf0;

#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "inlined helper of one call tree")]
pub(crate) fn inspect(
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
        .wrapping_add(u32::from(pkt.tcp_flags & tcp_flags::SYN != 0));
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
pub(crate) fn hello_append(ctx: &TcContext, job: &mut Job, h: &mut HelloState) {
    let pkt = &job.pkt;
    let plen = pkt.payload_len;
    let payload_off = pkt.payload_off;
    // Offset of this segment's first byte from the hello's first byte.
    let seg_off = pkt
        .tcp_seq
        .wrapping_add(u32::from(pkt.tcp_flags & tcp_flags::SYN != 0))
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
    if !load_event_payload(ctx, buf, pkt.payload_off, len) {
        stat(STAT_ERR_PAYLOAD, 1);
        return false;
    }
    if !output_event(buf, len) {
        return false;
    }
    stat(STAT_EVENTS, 1);
    true
}

/// Copies `len` payload bytes of the packet from `payload_off` behind the event header in
/// `buf`. The caller bounds `len` to 1..=`PAYLOAD_CAP` in a way the verifier can see.
#[inline(always)]
pub(crate) fn load_event_payload(
    ctx: &TcContext,
    buf: &mut EventBuf,
    payload_off: u32,
    len: u32,
) -> bool {
    // SAFETY: the destination is this CPU's scratch payload of PAYLOAD_CAP bytes and
    // len <= PAYLOAD_CAP; the helper bounds-checks the packet side.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            payload_off,
            buf.payload.as_mut_ptr() as *mut _,
            len,
        )
    };
    ret == 0
}

/// Writes the event in `buf` (its header and `len` payload bytes) to the ring as one record;
/// a full ring is counted (`STAT_RINGBUF_FULL`).
#[inline(always)]
pub(crate) fn output_event(buf: &EventBuf, len: u32) -> bool {
    let total = EVENT_HEADER_LEN + len as usize;
    // SAFETY: `buf` is EVENT_HEADER_LEN + PAYLOAD_CAP bytes and total <= that.
    let bytes = unsafe { core::slice::from_raw_parts(buf as *const EventBuf as *const u8, total) };
    if TG_EVENTS.output::<[u8]>(bytes, 0).is_err() {
        stat(STAT_RINGBUF_FULL, 1);
        return false;
    }
    true
}
