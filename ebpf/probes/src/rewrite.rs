//! Rewriting a blocked packet into its answer: a TCP reset, an ICMP port unreachable or a DNS
//! NXDOMAIN (header builders and checksums).

use aya_ebpf::{bindings::__sk_buff, helpers::bpf_skb_change_tail, programs::TcContext};
use tollgate_common::{DIR_UP, FAMILY_V4, PROTO_TCP, PROTO_UDP, tcp_flags};

use crate::access::{read, sk_field_ifindex};
use crate::maps::TG_HSCRATCH;
use crate::parse::Pkt;
use crate::pipeline::{DNS_HEADER_LEN, NAME_MAX, hb};

const BPF_F_INGRESS: u64 = 1;
const BPF_ADJ_ROOM_MAC: u32 = 1;

/// Sends the (rewritten) skb back toward the user: out of the same interface when the packet
/// came in from the user (ingress), into the stack when it was leaving toward the internet.
#[inline(always)]
pub(crate) fn redirect_to_user(ctx: &TcContext, egress: bool) -> bool {
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

/// A TCP reset header (no options, no payload, RST|ACK) from `sport` to `dport` with `seq` and
/// `ack`; its checksum is left zero for [`store_tcp`].
#[inline(always)]
fn rst_header(sport: u16, dport: u16, seq: u32, ack: u32) -> [u8; 20] {
    let sp = sport.to_be_bytes();
    let dp = dport.to_be_bytes();
    let sq = seq.to_be_bytes();
    let ak = ack.to_be_bytes();
    [
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
        tcp_flags::RST | tcp_flags::ACK,
        0,
        0,
        0,
        0,
        0,
        0,
    ]
}

/// Rewrites the packet from `l3` on into an IP header from `src` to `dst` (`FlowKey` words)
/// and the payload-less TCP header `tcp` (its checksum filled in here), trimming the rest.
#[inline(always)]
fn write_tcp(
    ctx: &TcContext,
    l3: u32,
    family: u8,
    src: &[u32; 4],
    dst: &[u32; 4],
    tcp: [u8; 20],
) -> bool {
    if family == FAMILY_V4 {
        let (ip, pseudo) = ipv4_header(src[0], dst[0], 20, PROTO_TCP);
        store_tcp(ctx, l3, &ip, pseudo, tcp)
    } else {
        let (ip, pseudo) = ipv6_header(src, dst, 20, PROTO_TCP);
        store_tcp(ctx, l3, &ip, pseudo, tcp)
    }
}

/// [`write_tcp`] once the IP header (`IP` bytes) and its pseudo-header sum are built.
#[inline(always)]
fn store_tcp<const IP: usize>(
    ctx: &TcContext,
    l3: u32,
    ip: &[u8; IP],
    pseudo: u32,
    mut tcp: [u8; 20],
) -> bool {
    let c = csum_fold(csum_add(pseudo, &tcp)).to_be_bytes();
    tcp[16] = c[0];
    tcp[17] = c[1];
    change_tail(ctx, l3 + IP as u32 + 20)
        && ctx.store(l3 as usize, ip, 0).is_ok()
        && ctx.store(l3 as usize + IP, &tcp, 0).is_ok()
}

/// Rewrites the packet into a TCP reset from the remote end to the user (headers only).
/// `reply`: the packet came from the user (swap MACs, take seq/ack from its ack/seq).
// A BPF subprogram of its own: its header buffers get their own stack frame.
#[inline(never)]
pub(crate) fn make_rst(skb: *mut __sk_buff, pkt: &Pkt, dir: u8, reply: bool) -> bool {
    let ctx = &TcContext::new(skb);
    let (seq, ack) = if dir == DIR_UP {
        let mut consumed = pkt.claimed_len;
        if pkt.tcp_flags & (tcp_flags::SYN | tcp_flags::FIN) != 0 {
            consumed += 1;
        }
        let seq = if pkt.tcp_flags & tcp_flags::ACK != 0 {
            pkt.tcp_ack
        } else {
            0
        };
        (seq, pkt.tcp_seq.wrapping_add(consumed))
    } else {
        (pkt.tcp_seq, pkt.tcp_ack)
    };
    let k = &pkt.key;
    let tcp = rst_header(k.remote_port, k.user_port, seq, ack);
    write_tcp(ctx, pkt.l3_off, k.family, &k.remote_addr, &k.user_addr, tcp)
        && (!reply || swap_macs(ctx))
}

/// Rewrites a packet from the user into a TCP reset from the user to the remote end (same
/// addresses and ports, the packet's seq/ack, no payload); it then goes on to the remote end.
// A BPF subprogram of its own: its header buffers get their own stack frame.
#[inline(never)]
pub(crate) fn make_rst_to_remote(skb: *mut __sk_buff, pkt: &Pkt) -> bool {
    let ctx = &TcContext::new(skb);
    let k = &pkt.key;
    let tcp = rst_header(k.user_port, k.remote_port, pkt.tcp_seq, pkt.tcp_ack);
    write_tcp(ctx, pkt.l3_off, k.family, &k.user_addr, &k.remote_addr, tcp)
}

/// Rewrites the packet from `l3` on into an ICMP error toward the user: the IP header `ip`
/// (`IP` bytes), the ICMP header `icmp` (its checksum, over `sum` and the rest, filled in
/// here) and `quoted`, the first `Q` bytes of the packet from the user; then swaps the MACs.
#[inline(always)]
fn write_icmp_error<const IP: usize, const Q: usize>(
    ctx: &TcContext,
    l3: u32,
    ip: &[u8; IP],
    sum: u32,
    mut icmp: [u8; 8],
    quoted: &[u8; Q],
) -> bool {
    let c = csum_fold(csum_add(csum_add(sum, &icmp), quoted)).to_be_bytes();
    icmp[2] = c[0];
    icmp[3] = c[1];
    // The quoted bytes already sit at l3: room for the new headers goes in front of them.
    ctx.adjust_room(Q as i32, BPF_ADJ_ROOM_MAC, 0).is_ok()
        && change_tail(ctx, l3 + (IP + 8 + Q) as u32)
        && ctx.store(l3 as usize, ip, 0).is_ok()
        && ctx.store(l3 as usize + IP, &icmp, 0).is_ok()
        && swap_macs(ctx)
}

/// Rewrites an IPv6 UDP packet from the user into an ICMPv6 port unreachable from the remote
/// end that quotes its IPv6 and UDP headers.
// A BPF subprogram of its own: its header buffers get their own stack frame.
#[inline(never)]
pub(crate) fn make_icmp6_unreachable(skb: *mut __sk_buff, pkt: &Pkt) -> bool {
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
    // Destination unreachable, port unreachable.
    write_icmp_error(
        ctx,
        pkt.l3_off,
        &ip,
        pseudo,
        [1, 4, 0, 0, 0, 0, 0, 0],
        &orig,
    )
}

/// Rewrites an IPv4 UDP packet from the user into an ICMP port unreachable from the remote
/// end that quotes its IP and UDP headers (so a QUIC client fails over to TCP at once).
// A BPF subprogram of its own: its header buffers get their own stack frame.
#[inline(never)]
pub(crate) fn make_icmp_unreachable(skb: *mut __sk_buff, pkt: &Pkt) -> bool {
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
    // Destination unreachable, port unreachable.
    write_icmp_error(ctx, pkt.l3_off, &ip, 0, [3, 3, 0, 0, 0, 0, 0, 0], &orig)
}

/// Rewrites a UDP DNS query from the user into the server's NXDOMAIN answer: the header with
/// QR, RA and rcode 3 (RD kept), the question echoed, no other records. The message bytes are
/// the ones `tg_qname` left in the scratch buffer.
// A BPF subprogram of its own: its header buffers get their own stack frame.
#[inline(never)]
pub(crate) fn make_nxdomain(skb: *mut __sk_buff, pkt: &Pkt, question_len: u32) -> bool {
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
