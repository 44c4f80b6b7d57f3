//! The kernel/user ABI: every map key, map value and event shared by the eBPF probes and the
//! userspace dataplane, as `#[repr(C)]` plain data with explicit padding.
//!
//! Data flow: the probes (`tollgate-probes`, TCX on each configured interface) parse every
//! packet into a [`FlowKey`] (user side first), update a [`FlowValue`] in [`MAP_FLOWS`], and
//! copy the first flight of interesting payload (TLS handshake, QUIC Initial, DNS, HTTP/1
//! request head) into [`MAP_EVENTS`] as an [`EventHeader`] followed by up to [`PAYLOAD_CAP`]
//! bytes. Userspace (`tollgate-dataplane`, built with the `user` feature for `aya::Pod`) reads
//! those, and writes [`Config`] and the verdict maps ([`FlowVerdict`], [`NameVerdict`],
//! [`IpVerdict`] in LPM tries) that the probes consult.
//!
//! Rules for this file: values stored in maps use `u32`/`u64` fields and flag words instead of
//! `bool`, enums or `Option`; numeric ids are stable (new ids take unused numbers); every struct
//! carries its padding as named fields and has its size asserted below, because the kernel and
//! userspace must agree byte for byte.
#![no_std]

mod facts;
pub use facts::{Direction, FlowTuple, L4Proto, Mode, Role};

/// Bumped whenever a map key, value or event layout changes. Pins live under a directory named
/// after it, so a daemon of a different ABI never reuses incompatible pinned maps.
pub const ABI_VERSION: u32 = 7;

// ---- map names (the symbol names of the statics in the probes; at most 15 bytes) ----

/// LRU hash: [`FlowKey`] -> [`FlowValue`]; per-flow counters.
pub const MAP_FLOWS: &str = "TG_FLOWS";
/// LRU hash: [`FlowKey`] -> [`HelloState`]; ClientHello continuation tracking.
pub const MAP_HELLO: &str = "TG_HELLO";
/// Ring buffer of [`EventHeader`] + payload bytes.
pub const MAP_EVENTS: &str = "TG_EVENTS";
/// LRU hash: [`FlowKey`] -> [`FlowVerdict`] (written by userspace).
pub const MAP_FLOW_VERDICTS: &str = "TG_FLOW_VERDICT";
/// Hash: [`NameKey`] -> [`NameVerdict`] (written by userspace).
pub const MAP_NAME_VERDICTS: &str = "TG_NAME_VERDICT";
/// LPM trie: [`Ipv4LpmKey`] -> [`IpVerdict`] (written by userspace).
pub const MAP_BLOCK_V4: &str = "TG_BLOCK_V4";
/// LPM trie: [`Ipv6LpmKey`] -> [`IpVerdict`] (written by userspace).
pub const MAP_BLOCK_V6: &str = "TG_BLOCK_V6";
/// Array of one [`Config`] (written by userspace).
pub const MAP_CONFIG: &str = "TG_CONFIG";
/// Per-CPU array of one [`Stats`].
pub const MAP_STATS: &str = "TG_STATS";
/// Per-CPU array of one [`EventBuf`]; scratch space to assemble an event (kernel only).
pub const MAP_SCRATCH: &str = "TG_SCRATCH";
/// Per-CPU array of one [`HelloState`]; scratch space for the SNI walk (kernel only).
pub const MAP_HELLO_SCRATCH: &str = "TG_HSCRATCH";
/// Per-CPU array of one [`FlowValue`]; where a new flow's first value is built before it is
/// inserted into [`MAP_FLOWS`] (kept off the packet programs' 512-byte stack; kernel only).
pub const MAP_FLOW_SCRATCH: &str = "TG_FSCRATCH";
/// Per-CPU hand-over from the packet programs to the SNI pipeline (kernel only).
pub const MAP_JOB: &str = "TG_JOB";
/// Program array for tail calls, filled as [`TAIL_CALLS`] says.
pub const MAP_PROGS: &str = "TG_PROGS";
/// Hash: ifindex (`u32`) -> [`IfaceInfo`]; interfaces Tollgate is attached to.
pub const MAP_IFACES: &str = "TG_IFACES";
/// LPM trie: [`Ipv4LpmKey`] -> [`SteerEntry`]; destinations of apps under session control
/// (written by userspace).
pub const MAP_STEER_V4: &str = "TG_STEER_V4";
/// LPM trie: [`Ipv6LpmKey`] -> [`SteerEntry`].
pub const MAP_STEER_V6: &str = "TG_STEER_V6";
/// Sockmap of [`STEER_SOCK_SLOTS`] slots: the session proxy's listening socket for IPv4
/// flows ([`STEER_SLOT_V4`]) and for IPv6 flows ([`STEER_SLOT_V6`]) (written by userspace
/// with the listener's fd; the kernel drops an entry when its socket closes).
pub const MAP_PROXY_SOCK: &str = "TG_PROXY_SOCK";
/// LRU hash: [`SteerClientKey`] -> [`SteerEntry`]; one client's steered destinations. Written
/// by the probes when a client's own ClientHello on a direct flow names an app under session
/// control (and by userspace for the QUIC Initials it decrypts): only that client's next
/// connections to that address are steered, so a client naming an app toward any address it
/// likes steers nobody else's traffic.
pub const MAP_STEER_CLIENT: &str = "TG_STEER_CLI";

/// Every map name, for pin management.
pub const ALL_MAPS: [&str; 19] = [
    MAP_FLOWS,
    MAP_HELLO,
    MAP_EVENTS,
    MAP_FLOW_VERDICTS,
    MAP_NAME_VERDICTS,
    MAP_BLOCK_V4,
    MAP_BLOCK_V6,
    MAP_CONFIG,
    MAP_STATS,
    MAP_SCRATCH,
    MAP_HELLO_SCRATCH,
    MAP_FLOW_SCRATCH,
    MAP_JOB,
    MAP_PROGS,
    MAP_IFACES,
    MAP_STEER_V4,
    MAP_STEER_V6,
    MAP_PROXY_SOCK,
    MAP_STEER_CLIENT,
];

// ---- program names (function names in the probes) ----

/// TCX ingress on a "lan" interface: packets from users (direction up).
pub const PROG_LAN_INGRESS: &str = "tg_lan_ingress";
/// TCX egress on a "lan" interface: packets to users (direction down).
pub const PROG_LAN_EGRESS: &str = "tg_lan_egress";
/// TCX ingress on a "wan" interface: packets from the internet (direction down).
pub const PROG_WAN_INGRESS: &str = "tg_wan_ingress";
/// TCX egress on a "wan" interface: packets to the internet (direction up).
pub const PROG_WAN_EGRESS: &str = "tg_wan_egress";
/// Tail-called program, stage 1: finds a ClientHello's SNI.
pub const PROG_SNI: &str = "tg_sni";
/// Tail-called program, stage 2: hashes the name and its parent domains.
pub const PROG_NAME: &str = "tg_name";
/// Tail-called program, stage 3: looks up and applies name verdicts.
pub const PROG_VERDICT: &str = "tg_verdict";
/// Tail-called program: rewrites a blocked packet into a reset / ICMP error to the user.
pub const PROG_ENFORCE: &str = "tg_enforce";
/// Tail-called program, stage 1 for HTTP/1: finds the Host of a request head (then stages 2
/// and 3 as for an SNI).
pub const PROG_HOST: &str = "tg_host";
/// Tail-called program, stage 1 for a DNS query from a user (only when
/// [`CONFIG_F_REFUSE_DNS`] is set): reads the question's name (then stages 2 and 3; a name
/// verdict with [`NAME_F_REFUSE_DNS`] turns the query into an NXDOMAIN answer).
pub const PROG_QNAME: &str = "tg_qname";
/// Tail-called program: a port-443 flow whose name the probes cannot read (counts it, and
/// under [`CONFIG_F_UNREADABLE_BLOCK`] blocks it).
pub const PROG_UNREADABLE: &str = "tg_unreadable";
/// Tail-called program: a packet the probes cannot parse down to its ports (IP fragments,
/// long IPv6 extension-header chains, deep VLAN stacks): counted, dropped when blocked.
pub const PROG_PORTLESS: &str = "tg_portless";
/// Slot of [`PROG_SNI`] in [`MAP_PROGS`]. The probes tail-call these slots and the loader fills
/// them from [`TAIL_CALLS`]; both read the numbers from here.
pub const PROG_INDEX_SNI: u32 = 0;
/// Slot of [`PROG_NAME`] in [`MAP_PROGS`].
pub const PROG_INDEX_NAME: u32 = 1;
/// Slot of [`PROG_VERDICT`] in [`MAP_PROGS`].
pub const PROG_INDEX_VERDICT: u32 = 2;
/// Slot of [`PROG_ENFORCE`] in [`MAP_PROGS`].
pub const PROG_INDEX_ENFORCE: u32 = 3;
/// Slot of [`PROG_HOST`] in [`MAP_PROGS`].
pub const PROG_INDEX_HOST: u32 = 4;
/// Slot of [`PROG_QNAME`] in [`MAP_PROGS`].
pub const PROG_INDEX_QNAME: u32 = 5;
/// Slot of [`PROG_UNREADABLE`] in [`MAP_PROGS`].
pub const PROG_INDEX_UNREADABLE: u32 = 6;
/// Slot of [`PROG_PORTLESS`] in [`MAP_PROGS`].
pub const PROG_INDEX_PORTLESS: u32 = 7;
/// The tail-called programs with their slot in [`MAP_PROGS`] (which has one slot per entry).
/// The name pipeline is several tail calls so that each stage's loops are verified once, from
/// a clean entry, instead of on every path of the programs before it.
pub const TAIL_CALLS: [(u32, &str); 8] = [
    (PROG_INDEX_SNI, PROG_SNI),
    (PROG_INDEX_NAME, PROG_NAME),
    (PROG_INDEX_VERDICT, PROG_VERDICT),
    (PROG_INDEX_ENFORCE, PROG_ENFORCE),
    (PROG_INDEX_HOST, PROG_HOST),
    (PROG_INDEX_QNAME, PROG_QNAME),
    (PROG_INDEX_UNREADABLE, PROG_UNREADABLE),
    (PROG_INDEX_PORTLESS, PROG_PORTLESS),
];
// Entry i holds slot i: every slot distinct and inside a program array of TAIL_CALLS.len().
const _: () = {
    let mut i = 0;
    while i < TAIL_CALLS.len() {
        assert!(TAIL_CALLS[i].0 as usize == i);
        i += 1;
    }
};

/// `skb->mark` of packets the daemon sends itself (the HTTP block page): the probes pass them
/// untouched and uncounted.
///
/// The probes match it only on packets the gateway itself sends (egress, no ingress
/// interface), and as a mask: the packet's mark must carry every bit of it, so an admin's
/// nft rule that ORs its own bits into the mark does not turn the block page into a reset,
/// while a forwarded packet can never skip the probes by carrying this mark.
pub const BLOCK_PAGE_MARK: u32 = 0x7467_0b10;
/// `skb->mark` the LAN ingress program puts on every packet of a flow steered into the session
/// proxy. The daemon routes packets carrying it to the local stack (`ip rule add fwmark
/// STEER_MARK lookup STEER_ROUTE_TABLE` + `ip route add local default dev lo table ..`), where
/// the SYN finds the proxy's listener (assigned by the probes) and the later packets find the
/// accepted connection. Without the mark they would be forwarded to the origin.
pub const STEER_MARK: u32 = 0x7467_0b11;
/// Routing table holding the `local default` routes for [`STEER_MARK`]ed packets.
pub const STEER_ROUTE_TABLE: u32 = 0x7467;
/// Priority of the daemon's `fwmark` rule (before the main table, 32766).
pub const STEER_RULE_PRIORITY: u32 = 0x7467;
/// TCP destination port of the flows that may be steered (TLS). Every other port passes.
pub const STEER_TCP_PORT: u16 = 443;
/// UDP destination port refused (ICMP unreachable) toward steered destinations, so that
/// browsers give up QUIC at once and use TCP, where the proxy sees the session.
pub const STEER_UDP_PORT: u16 = 443;
/// Slot of [`MAP_PROXY_SOCK`] for IPv4 flows.
pub const STEER_SLOT_V4: u32 = 0;
/// Slot of [`MAP_PROXY_SOCK`] for IPv6 flows.
pub const STEER_SLOT_V6: u32 = 1;
/// Slots in [`MAP_PROXY_SOCK`].
pub const STEER_SOCK_SLOTS: u32 = 2;
/// Returns `TC_ACT_UNSPEC` and does nothing else: the floor of the per-packet cost benchmark.
pub const PROG_NOOP: &str = "tg_noop";

// ---- capacities (every map is bounded) ----

/// Flows tracked at once; the LRU map evicts the least recently used flow beyond this.
pub const FLOWS_CAPACITY: u32 = 131_072;
/// ClientHellos being followed across segments at once (LRU; 8 KiB each).
pub const HELLO_CAPACITY: u32 = 1_024;
/// Ring buffer size in bytes (power-of-two multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 2 << 20; // ~1000 Chrome hellos; mapped twice: 4 MiB RSS
/// Flow verdicts (LRU).
pub const FLOW_VERDICTS_CAPACITY: u32 = 65_536;
/// Name verdicts (hash; a full map makes userspace inserts fail, never packets).
pub const NAME_VERDICTS_CAPACITY: u32 = 65_536;
/// Blocked prefixes per address family.
pub const BLOCK_PREFIX_CAPACITY: u32 = 65_536;
/// Steered prefixes per address family.
pub const STEER_PREFIX_CAPACITY: u32 = 65_536;
/// Per-client steered destinations (LRU: the least recently written entry is evicted first; an
/// evicted entry only costs that client one more refused first connection).
pub const STEER_CLIENT_CAPACITY: u32 = 16_384;
/// How long a per-client steer entry written by the probes steers that client's new
/// connections to the address (refreshed by every hello that names the app there again).
pub const STEER_CLIENT_TTL_NS: u64 = 3_600_000_000_000;
/// Interfaces that can be attached at once.
pub const IFACES_CAPACITY: u32 = 64;

/// Payload bytes copied into one event at most (a power of two: the probes mask with it).
pub const PAYLOAD_CAP: usize = 4096;

// ---- small ids ----

/// Flow direction: from the user (LAN side) toward the internet.
pub const DIR_UP: u8 = 1;
/// Flow direction: from the internet toward the user.
pub const DIR_DOWN: u8 = 2;

/// Address family in [`FlowKey::family`].
pub const FAMILY_V4: u8 = 4;
/// Address family in [`FlowKey::family`].
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers in [`FlowKey::proto`].
pub const PROTO_TCP: u8 = 6;
/// IP protocol numbers in [`FlowKey::proto`].
pub const PROTO_UDP: u8 = 17;

/// TCP flag bits as on the wire (byte 13 of the TCP header; [`FlowValue::tcp_flags`] and
/// [`EventHeader::tcp_flags`] carry them too), for the probes and userspace alike.
pub mod tcp_flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers (a connection's first segment, and its answer).
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push the data to the application.
    pub const PSH: u8 = 0x08;
    /// The acknowledgment number is valid.
    pub const ACK: u8 = 0x10;
}

/// Event kind: a TLS handshake record (ClientHello and its continuation segments, ServerHello).
pub const KIND_TLS: u8 = 1;
/// Event kind: a QUIC long-header Initial packet (the whole UDP payload).
pub const KIND_QUIC: u8 = 2;
/// Event kind: a DNS message (UDP payload, or TCP segment with the 2-byte length prefix).
pub const KIND_DNS: u8 = 3;
/// Event kind: an HTTP/1 request head (segment starting with a method token).
pub const KIND_HTTP: u8 = 4;

/// Event flag: this segment continues a ClientHello that began in an earlier segment.
pub const EVENT_F_CONTINUATION: u8 = 1;
/// Event flag: the payload was longer than [`PAYLOAD_CAP`] (or than the skb) and was cut.
pub const EVENT_F_TRUNCATED: u8 = 2;
/// Event flag: the flow reached its event cap with this event; later payload is not sent.
pub const EVENT_F_LAST: u8 = 4;
/// Event flag: a DNS answer naming an app under session control that the probes dropped
/// instead of forwarding. Userspace writes the steer entries for its addresses and then sends
/// the answer on to the user itself, so the client's first SYN after the answer is already
/// steered. The record carries the whole UDP payload.
pub const EVENT_F_HELD: u8 = 8;

/// Interface role in [`IfaceInfo::role`]: faces users.
pub const ROLE_LAN: u32 = 1;
/// Interface role in [`IfaceInfo::role`]: faces the internet.
pub const ROLE_WAN: u32 = 2;

/// [`Config::mode`]: observe and count, never drop.
pub const MODE_MONITOR: u32 = 0;
/// [`Config::mode`]: enforce verdicts.
pub const MODE_ENFORCE: u32 = 1;

/// Verdict action: no decision (packets pass).
pub const ACTION_NONE: u32 = 0;
/// Verdict action: explicitly allowed (packets pass, nothing further is checked).
pub const ACTION_ALLOW: u32 = 1;
/// Verdict action: block with a clean failure (TCP reset, ICMP unreachable for UDP).
pub const ACTION_BLOCK: u32 = 2;
/// Verdict action: drop silently.
pub const ACTION_DROP: u32 = 3;
/// Verdict action (flow verdicts only): refused by session control, in every mode (monitor
/// too), unless the daemon is gone and fail-open was chosen; answered like
/// [`ACTION_BLOCK`]. The daemon gives it to a QUIC flow whose Initial names an app under
/// session control toward an address that is not steered, so the browser falls back to TCP.
pub const ACTION_REFUSE: u32 = 4;

/// [`FlowValue::flags`]: a ClientHello of this flow is being followed in [`MAP_HELLO`].
pub const FLOW_F_HELLO_PENDING: u32 = 1;
/// [`FlowValue::flags`]: a TLS ClientHello was seen.
pub const FLOW_F_TLS: u32 = 2;
/// [`FlowValue::flags`]: a QUIC Initial was seen.
pub const FLOW_F_QUIC: u32 = 4;
/// [`FlowValue::flags`]: DNS payload was seen.
pub const FLOW_F_DNS: u32 = 8;
/// [`FlowValue::flags`]: an HTTP/1 request head was seen.
pub const FLOW_F_HTTP: u32 = 16;
/// [`FlowValue::flags`]: the flow hit its event cap.
pub const FLOW_F_CAPPED: u32 = 32;
/// [`FlowValue::flags`]: a QUIC flow waiting for its verdict (enforce mode): packets toward
/// the user are dropped until userspace writes a flow verdict or [`QUIC_HOLD_NS`] passes.
pub const FLOW_F_QUIC_HOLD: u32 = 64;
/// [`FlowValue::flags`]: the QUIC hold of this flow ended (verdict seen or timed out); the
/// flow is never held again.
pub const FLOW_F_QUIC_RELEASED: u32 = 128;
/// [`FlowValue::flags`]: this TCP flow goes to the session proxy. Decided at each SYN from the
/// user (destination in [`MAP_STEER_V4`]/[`MAP_STEER_V6`], the SYN assigned to the proxy's
/// listener; without a listener the SYN gets a reset) and kept for the flow's life: adding a destination never diverts a direct
/// connection already running, removing one never breaks a proxied connection. Every packet of
/// the flow from the user carries [`STEER_MARK`].
pub const FLOW_F_STEERED: u32 = 256;
/// [`FlowValue::flags`]: the user's SYN was seen; [`FlowValue::isn_up`] holds its sequence
/// number, so the stream's first byte (ISN + 1) is known.
pub const FLOW_F_ISN: u32 = 512;
/// [`FlowValue::flags`]: data at the stream's first byte (ISN + 1) was seen from the user.
pub const FLOW_F_STARTED: u32 = 1024;
/// [`FlowValue::flags`]: the probes read the flow's name (SNI or HTTP Host).
pub const FLOW_F_NAMED: u32 = 2048;
/// [`FlowValue::flags`]: a port-443 flow whose name the probes cannot read (see
/// [`CONFIG_F_UNREADABLE_BLOCK`]); counted once.
pub const FLOW_F_UNREADABLE: u32 = 4096;
/// [`FlowValue::flags`], transient: the packet being inspected carries the stream's first
/// byte (kept in the flow value rather than a register so that the verifier does not carry
/// it down every path of the packet programs).
pub const FLOW_F_AT_START: u32 = 8192;
/// [`FlowValue::flags`]: a TCP flow whose user SYN was never seen (state lost, or the flow
/// predates the probes) was checked once against the steer tries and found direct; later
/// packets skip the lookups (a destination steered afterwards does not divert a running
/// direct connection, as for flows whose SYN was seen).
pub const FLOW_F_STEER_CHECKED: u32 = 16384;

/// How long a QUIC flow without a verdict is held (its packets toward the user dropped),
/// counted from the flow's first packet (`first_seen_ns`, its first Initial); after that the
/// flow passes (fail-open: a slow daemon delays QUIC, it never breaks it).
pub const QUIC_HOLD_NS: u64 = 300_000_000;

/// [`Config::flags`]: do not hold QUIC flows waiting for a verdict (see [`FLOW_F_QUIC_HOLD`]).
pub const CONFIG_F_NO_QUIC_HOLD: u32 = 1;
/// [`Config::flags`]: read the question name of DNS queries from users (UDP, port 53) and
/// answer those whose name verdict carries [`NAME_F_REFUSE_DNS`] with NXDOMAIN.
pub const CONFIG_F_REFUSE_DNS: u32 = 2;
/// [`Config::flags`]: session control runs (the daemon's proxy listens). The probes then
/// refuse direct flows whose ClientHello names an app under session control (a name verdict
/// with [`NAME_F_SESSION`]) and steer that client's retry, and hold DNS answers for such
/// names until the daemon has steered their addresses (see [`EVENT_F_HELD`]).
pub const CONFIG_F_SESSION: u32 = 4;
/// [`Config::flags`]: `[enforcement] unreadable = "block"`. A port-443 flow from a user whose
/// name the probes cannot read (its stream does not start with a ClientHello, the hello has
/// no readable SNI, its records or IP fragments hide it, its reassembly state was evicted, a
/// QUIC Initial that could not be sent to userspace) is reset in enforce mode; and IP
/// fragments and packets the probes cannot parse down to a port (too many IPv6 extension
/// headers or VLAN tags) are dropped. Without the flag those flows pass and are counted.
pub const CONFIG_F_UNREADABLE_BLOCK: u32 = 0x100;

// ---- stats counter ids (indices into [`Stats::counters`]; stable, gaps allowed) ----

/// Packets seen by any Tollgate program (each hook counts).
pub const STAT_PACKETS: usize = 0;
/// L3 bytes seen.
pub const STAT_BYTES: usize = 1;
/// Events written to the ring buffer.
pub const STAT_EVENTS: usize = 2;
/// Events dropped because the ring buffer was full.
pub const STAT_RINGBUF_FULL: usize = 3;
/// Flow counter inserts that failed (LRU map could not take the flow).
pub const STAT_FLOW_MAP_FULL: usize = 4;
/// ClientHello continuation inserts that failed.
pub const STAT_HELLO_MAP_FULL: usize = 5;
/// Interesting payload not sent because the flow hit its event cap.
pub const STAT_EVENTS_CAPPED: usize = 6;
/// Frames that are not IPv4/IPv6 (ARP, LLDP, ...); passed, not counted per flow.
pub const STAT_NON_IP: usize = 7;
/// Truncated or malformed Ethernet/VLAN header.
pub const STAT_ERR_L2: usize = 8;
/// Truncated or malformed IPv4 header (bad version, IHL, length).
pub const STAT_ERR_IPV4: usize = 9;
/// Truncated or malformed IPv6 header.
pub const STAT_ERR_IPV6: usize = 10;
/// Truncated or malformed TCP header (bad data offset, short header).
pub const STAT_ERR_TCP: usize = 11;
/// Truncated or malformed UDP header.
pub const STAT_ERR_UDP: usize = 12;
/// Non-first IP fragments (no L4 header to read); passed.
pub const STAT_FRAGMENTS: usize = 13;
/// IP packets that are neither TCP nor UDP (ICMP, ESP, IPv6 extension chains); passed.
pub const STAT_OTHER_L4: usize = 14;
/// Payload shorter than the IP header claims (cut skb); inspected as far as present.
pub const STAT_ERR_PAYLOAD: usize = 15;
/// Forwarded packets skipped on egress because an attached ingress already counted them.
pub const STAT_DEDUP: usize = 16;
/// ClientHello continuation segments sent.
pub const STAT_HELLO_CONT: usize = 17;
/// Packets dropped by a verdict (enforce mode).
pub const STAT_DROPS: usize = 18;
/// Packets that a verdict would have dropped in monitor mode.
pub const STAT_WOULD_DROP: usize = 19;
/// ClientHellos whose SNI the probes read (for name verdicts).
pub const STAT_SNI_FOUND: usize = 22;
/// Flows decided by a name verdict in the kernel.
pub const STAT_NAME_VERDICTS: usize = 23;
/// TCP resets sent by the probes.
pub const STAT_RST_SENT: usize = 20;
/// ICMP unreachables sent by the probes.
pub const STAT_ICMP_SENT: usize = 21;
/// Packets toward the user dropped because their QUIC flow was waiting for a verdict.
pub const STAT_QUIC_HELD: usize = 24;
/// QUIC flows released by the hold timeout (no verdict came in time; they pass).
pub const STAT_QUIC_HOLD_EXPIRED: usize = 25;
/// HTTP/1 request heads whose Host the probes read (for name verdicts).
pub const STAT_HTTP_HOST_FOUND: usize = 26;
/// Blocked HTTP/1 requests turned into a reset toward the server (the daemon answers the user
/// with a block page).
pub const STAT_HTTP_BLOCKED: usize = 27;
/// DNS queries answered with NXDOMAIN by the probes (a name verdict with
/// [`NAME_F_REFUSE_DNS`], enforce mode).
pub const STAT_DNS_REFUSED: usize = 28;
/// TCP SYNs assigned to the session proxy's listener (flows steered).
pub const STAT_STEERED: usize = 29;
/// SYNs toward a steered destination that could not be assigned (no proxy listener for the
/// address family, the proxy gone, or `bpf_sk_assign` failed): answered with a reset, so that a
/// dual-stack client falls back to the other family at once and session control is never
/// bypassed.
pub const STAT_STEER_NO_PROXY: usize = 30;
/// QUIC Initials toward a steered destination refused with an ICMP unreachable.
pub const STAT_STEER_QUIC_REFUSED: usize = 31;
/// DNS messages toward a user that were not sent to userspace because the user side of
/// their flow sent nothing through this interface first (an answer without a query:
/// spoofed or unsolicited). A flood of them costs a map lookup, never ring space.
pub const STAT_DNS_UNSOLICITED: usize = 32;

/// ClientHellos naming an app under session control on a direct (unsteered) flow: the flow was
/// reset at the hello, before the origin saw it, so the client's retry goes to the proxy.
pub const STAT_SESSION_REFUSED: usize = 40;
/// Per-client steer entries the probes wrote (a refused hello after a completed handshake).
pub const STAT_STEER_CLIENT_ADDED: usize = 41;
/// SYNs steered by a per-client entry (also counted in [`STAT_STEERED`] when assigned).
pub const STAT_STEER_BY_CLIENT: usize = 42;
/// DNS answers naming an app under session control held for userspace (see
/// [`EVENT_F_HELD`]).
pub const STAT_DNS_HELD: usize = 43;
/// Steer lookups that matched an entry past its expiry and kept it, because the daemon's
/// heartbeat is stale and fail-open is off (steered addresses never expire into direct paths
/// while nobody can renew them).
pub const STAT_STEER_KEPT_STALE: usize = 44;
/// Packets of a TCP flow toward a steered destination whose flow state was lost (LRU
/// eviction, a full flow map) and that is not at its SYN: whether it was steered cannot be
/// known, so it is reset instead of going on direct, around the proxy.
pub const STAT_STEER_LOST_RESET: usize = 45;
/// ClientHellos naming an app under session control on a flow whose server never answered its
/// SYN (a handshake-less segment): refused, but no steer entry is written for it.
pub const STAT_SESSION_UNPROVEN: usize = 46;
/// Tiny first IP fragments (the TCP/UDP header not complete in them): dropped in enforce mode
/// (RFC 1858), never needed by a real stack.
pub const STAT_FRAG_TINY: usize = 48;
/// Non-first IP fragments dropped: toward a blocked prefix, a steered destination, or (TCP,
/// with `unreadable = "block"`) any.
pub const STAT_FRAG_REFUSED: usize = 49;
/// IPv6 packets with more extension headers than the probes walk (see
/// `CONFIG_F_UNREADABLE_BLOCK`).
pub const STAT_IPV6_EXT_OVERFLOW: usize = 50;
/// Frames with more stacked VLAN tags than the probes parse.
pub const STAT_VLAN_DEEP: usize = 51;
/// Segments of an unnamed port-443 hello that arrived ahead of the bytes before them: held
/// (dropped in enforce mode, so that the sender retransmits them in order).
pub const STAT_HELLO_OUT_OF_ORDER: usize = 52;
/// Data segments at a stream's first byte seen again (junk, decoys, retransmissions): looked at
/// without using up the flow's inspection budget.
pub const STAT_START_REPEATS: usize = 53;
/// ClientHellos that span more than one TLS record (followed record by record).
pub const STAT_HELLO_MULTI_RECORD: usize = 54;
/// Names with more labels than the suffix walk keeps (their shortest suffixes and the whole
/// name are still checked).
pub const STAT_LONG_NAMES: usize = 55;
/// QUIC Initials from a user that could not be sent to userspace (event cap, ring full).
pub const STAT_UNREADABLE_QUIC: usize = 56;
/// Followed ClientHellos whose reassembly state was lost (`TG_HELLO` full or evicted).
pub const STAT_HELLO_LOST: usize = 57;
/// Port-443 streams from a user that do not start with a ClientHello (or an HTTP request).
pub const STAT_UNREADABLE_START: usize = 58;
/// ClientHellos without an SNI the probes could read (none, malformed, or past the window).
pub const STAT_UNREADABLE_NO_SNI: usize = 59;
/// ClientHellos cut into more TLS records per segment than the probes follow, or with a
/// record that is not a handshake record.
pub const STAT_UNREADABLE_RECORDS: usize = 60;
/// Port-443 hellos sent in IP fragments (the rest of the datagram is not readable).
pub const STAT_UNREADABLE_FRAGMENTED: usize = 61;
/// Packets refused (reset or dropped) because of `unreadable = "block"` (enforce mode).
pub const STAT_UNREADABLE_BLOCKED: usize = 62;
/// Unreadable port-443 flows passed under `unreadable = "pass"` (once per flow).
pub const STAT_UNREADABLE_PASSED: usize = 63;
/// Number of counter slots (room to grow without changing the value size).
pub const STATS_LEN: usize = 64;

/// Human names of the counter ids, for logs and `tollgate` status lines.
pub const STAT_NAMES: [(usize, &str); 56] = [
    (STAT_PACKETS, "packets"),
    (STAT_BYTES, "bytes"),
    (STAT_EVENTS, "events"),
    (STAT_RINGBUF_FULL, "ringbuf_full"),
    (STAT_FLOW_MAP_FULL, "flow_map_full"),
    (STAT_HELLO_MAP_FULL, "hello_map_full"),
    (STAT_EVENTS_CAPPED, "events_capped"),
    (STAT_NON_IP, "non_ip"),
    (STAT_ERR_L2, "err_l2"),
    (STAT_ERR_IPV4, "err_ipv4"),
    (STAT_ERR_IPV6, "err_ipv6"),
    (STAT_ERR_TCP, "err_tcp"),
    (STAT_ERR_UDP, "err_udp"),
    (STAT_FRAGMENTS, "fragments"),
    (STAT_OTHER_L4, "other_l4"),
    (STAT_ERR_PAYLOAD, "err_payload"),
    (STAT_DEDUP, "dedup"),
    (STAT_HELLO_CONT, "hello_continuations"),
    (STAT_DROPS, "drops"),
    (STAT_WOULD_DROP, "would_drop"),
    (STAT_RST_SENT, "rst_sent"),
    (STAT_ICMP_SENT, "icmp_sent"),
    (STAT_SNI_FOUND, "sni_found"),
    (STAT_NAME_VERDICTS, "name_verdicts"),
    (STAT_QUIC_HELD, "quic_held"),
    (STAT_QUIC_HOLD_EXPIRED, "quic_hold_expired"),
    (STAT_HTTP_HOST_FOUND, "http_host_found"),
    (STAT_HTTP_BLOCKED, "http_blocked"),
    (STAT_DNS_REFUSED, "dns_refused"),
    (STAT_STEERED, "steered"),
    (STAT_STEER_NO_PROXY, "steer_no_proxy"),
    (STAT_STEER_QUIC_REFUSED, "steer_quic_refused"),
    (STAT_DNS_UNSOLICITED, "dns_unsolicited"),
    (STAT_SESSION_REFUSED, "session_refused"),
    (STAT_STEER_CLIENT_ADDED, "steer_client_added"),
    (STAT_STEER_BY_CLIENT, "steer_by_client"),
    (STAT_DNS_HELD, "dns_held"),
    (STAT_STEER_KEPT_STALE, "steer_kept_stale"),
    (STAT_STEER_LOST_RESET, "steer_lost_reset"),
    (STAT_SESSION_UNPROVEN, "session_unproven"),
    (STAT_FRAG_TINY, "frag_tiny"),
    (STAT_FRAG_REFUSED, "frag_refused"),
    (STAT_IPV6_EXT_OVERFLOW, "ipv6_ext_overflow"),
    (STAT_VLAN_DEEP, "vlan_deep"),
    (STAT_HELLO_OUT_OF_ORDER, "hello_out_of_order"),
    (STAT_START_REPEATS, "start_repeats"),
    (STAT_HELLO_MULTI_RECORD, "hello_multi_record"),
    (STAT_LONG_NAMES, "long_names"),
    (STAT_UNREADABLE_QUIC, "unreadable_quic"),
    (STAT_HELLO_LOST, "hello_lost"),
    (STAT_UNREADABLE_START, "unreadable_start"),
    (STAT_UNREADABLE_NO_SNI, "unreadable_no_sni"),
    (STAT_UNREADABLE_RECORDS, "unreadable_records"),
    (STAT_UNREADABLE_FRAGMENTED, "unreadable_fragmented"),
    (STAT_UNREADABLE_BLOCKED, "unreadable_blocked"),
    (STAT_UNREADABLE_PASSED, "unreadable_passed"),
];

// ---- defaults the probes use when the config map is still zero ----

/// Events one flow may produce (all kinds) unless [`Config::max_events_per_flow`] says otherwise.
pub const DEFAULT_MAX_EVENTS_PER_FLOW: u32 = 24;
/// DNS events one flow may produce (a resolver may reuse one port pair for many queries).
pub const DEFAULT_MAX_DNS_EVENTS_PER_FLOW: u32 = 256;
/// Payload-carrying packets per direction whose first bytes are looked at.
pub const DEFAULT_INSPECT_PACKETS: u32 = 8;

// ---- keys and values ----

/// A flow, normalized so that the user side comes first whatever the packet's direction.
///
/// Addresses are in network byte order as four `u32` words exactly as read from the packet;
/// an IPv4 address occupies word 0 and words 1..3 are zero. Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub user_addr: [u32; 4],
    pub remote_addr: [u32; 4],
    pub user_port: u16,
    pub remote_port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// 802.1Q VLAN id (0 when untagged); overlapping address plans on different VLANs stay apart.
    pub vlan: u16,
}

/// Per-flow counters. Written by the probes only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub packets_up: u64,
    pub packets_down: u64,
    /// L3 bytes (IP header included) from the user.
    pub bytes_up: u64,
    /// L3 bytes (IP header included) toward the user.
    pub bytes_down: u64,
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC, jiffy resolution) of the first packet.
    pub first_seen_ns: u64,
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC, jiffy resolution) of the latest packet.
    pub last_seen_ns: u64,
    /// TCP flags seen: bits 0..8 from the user, bits 8..16 toward the user.
    pub tcp_flags: u32,
    /// `FLOW_F_*` bits.
    pub flags: u32,
    /// Events sent for this flow (all kinds).
    pub events: u32,
    /// Payload-carrying packets inspected from the user.
    pub inspected_up: u32,
    /// Payload-carrying packets inspected toward the user.
    pub inspected_down: u32,
    /// Interface of the first packet from the user (of the first packet when the flow began
    /// toward the user): DNS answers are sent to userspace only when they leave toward the
    /// user through the interface their query came in by.
    pub ifindex: u32,
    /// Cached decision (`ACTION_*`) for this flow, valid while `verdict_gen` equals
    /// [`Config::generation`]; the probes re-evaluate the verdict maps when it does not.
    pub verdict: u32,
    /// [`Config::generation`] the cached verdict was computed at (0: never).
    pub verdict_gen: u32,
    /// Sequence number of the user's SYN (valid with [`FLOW_F_ISN`]).
    pub isn_up: u32,
    pub _pad: u32,
}

/// A ClientHello being followed across TCP segments (user -> remote direction), with its
/// first [`HELLO_WINDOW`] bytes kept so that the probes can find the SNI when it sits in a
/// later segment (Chrome's ~2 KB post-quantum hellos).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloState {
    /// Sequence number of the first hello byte (the record header).
    pub start_seq: u32,
    /// Bytes of hello expected in total from `start_seq` (record headers included).
    pub total_len: u32,
    /// Next in-order sequence number expected.
    pub next_seq: u32,
    /// Hello bytes held in `buf` (in order from `start_seq`).
    pub have: u32,
    /// 1 once the SNI was found (or is known to be absent); no more bytes are kept.
    pub sni_done: u32,
    /// Handshake bytes left in the TLS record being read (`buf` holds the handshake message
    /// without record headers, so a hello cut into many records reads like one).
    pub rec_left: u32,
    /// Bytes of the current record header read so far (0..5; a header may be cut by a
    /// segment edge).
    pub hdr_pos: u32,
    /// The record length bytes read so far of a cut header.
    pub hdr_len: u32,
    /// Handshake bytes seen in total (may exceed `have` once the window is full).
    pub hs_pos: u32,
    /// Records read so far.
    pub records: u32,
    /// 1: the records could not be followed (a non-handshake record, or more record headers
    /// in one segment than the probes walk).
    pub bad_records: u32,
    /// Handshake bytes of the hello (its 4-byte header included; 0 until known).
    pub hs_total: u32,
    /// Twice the window so that "offset < window" plus "length <= window" is provably in bounds.
    pub buf: [u8; HELLO_BUF_LEN],
}

/// Hello bytes kept per followed ClientHello.
pub const HELLO_WINDOW: u32 = 4096;
/// Size of [`HelloState::buf`].
pub const HELLO_BUF_LEN: usize = 8192;

/// Interfaces Tollgate is attached to (key: ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IfaceInfo {
    /// [`ROLE_LAN`] or [`ROLE_WAN`].
    pub role: u32,
    pub _pad: u32,
}

/// Runtime configuration, one entry in [`MAP_CONFIG`]. Zero fields mean "default".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// [`MODE_MONITOR`] or [`MODE_ENFORCE`].
    pub mode: u32,
    /// 1: when the daemon's heartbeat is older than `heartbeat_timeout_ns`, stop enforcing
    /// (fail-open); 0: keep enforcing the last verdicts forever (fail-closed).
    pub fail_open: u32,
    pub max_events_per_flow: u32,
    pub max_dns_events_per_flow: u32,
    pub inspect_packets: u32,
    /// 1: refuse every QUIC Initial (enforce mode) so browsers fall back to TCP.
    pub block_quic: u32,
    /// `CONFIG_F_*` bits.
    pub flags: u32,
    /// Bumped by userspace after it changes any verdict map; flows whose cached verdict is
    /// of another generation look the maps up again. 0: no verdicts, nothing is looked up.
    pub generation: u32,
    /// CLOCK_MONOTONIC ns of the daemon's last heartbeat.
    pub heartbeat_ns: u64,
    /// 0: no fail-open timeout.
    pub heartbeat_timeout_ns: u64,
}

/// Per-CPU counters, one entry in [`MAP_STATS`]; indices are the `STAT_*` ids.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub counters: [u64; STATS_LEN],
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            counters: [0; STATS_LEN],
        }
    }
}

/// A decision for one flow (key: [`FlowKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowVerdict {
    /// `ACTION_*`.
    pub action: u32,
    /// Catalog app id the decision is about (0: none).
    pub app_id: u32,
    /// CLOCK_MONOTONIC ns after which the verdict no longer applies (0: never expires).
    pub expires_ns: u64,
}

/// Key of [`MAP_NAME_VERDICTS`]: [`name_hash`] of a lower-case DNS name.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NameKey {
    pub hash: u64,
}

/// A decision for a server name (SNI, QUIC SNI, HTTP Host, DNS name).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NameVerdict {
    /// `ACTION_*`.
    pub action: u32,
    pub app_id: u32,
    /// `NAME_F_*` bits.
    pub flags: u32,
    pub _pad: u32,
}

/// [`NameVerdict::flags`]: the verdict also covers every subdomain of the name.
pub const NAME_F_SUBDOMAINS: u32 = 1;
/// [`NameVerdict::flags`]: DNS queries for the name (and, with [`NAME_F_SUBDOMAINS`], its
/// subdomains) get an NXDOMAIN answer from the probes. A verdict whose action is
/// [`ACTION_NONE`] with this flag refuses the DNS name only and decides no flow (the DoH
/// canary domains).
pub const NAME_F_REFUSE_DNS: u32 = 2;
/// [`NameVerdict::flags`]: the name belongs to an app under session control. With
/// [`CONFIG_F_SESSION`], a ClientHello naming it on a direct flow is reset (its client's retry
/// is steered), and a DNS answer for it is held until its addresses are steered. A verdict
/// whose action is [`ACTION_NONE`] with this flag decides nothing else.
pub const NAME_F_SESSION: u32 = 4;

/// Key of [`MAP_BLOCK_V4`]: layout of the kernel's `bpf_lpm_trie_key` with 4 address bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ipv4LpmKey {
    pub prefix_len: u32,
    pub addr: [u8; 4],
}

/// Key of [`MAP_BLOCK_V6`].
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ipv6LpmKey {
    pub prefix_len: u32,
    pub addr: [u8; 16],
}

/// A decision for an address prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IpVerdict {
    /// `ACTION_*`.
    pub action: u32,
    pub app_id: u32,
    /// CLOCK_MONOTONIC ns after which the entry no longer applies (0: never).
    pub expires_ns: u64,
}

/// A destination prefix under session control ([`MAP_STEER_V4`], [`MAP_STEER_V6`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SteerEntry {
    /// Catalog app id the destination belongs to (0: unknown); for userspace's bookkeeping.
    pub app_id: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC ns after which new flows are no longer steered (0: never expires).
    pub expires_ns: u64,
}

/// Key of [`MAP_STEER_CLIENT`]: one client (address and VLAN, as in [`FlowKey`]) and one
/// destination address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SteerClientKey {
    pub user_addr: [u32; 4],
    pub remote_addr: [u32; 4],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: u8,
    pub vlan: u16,
    pub _pad2: u32,
}

impl SteerClientKey {
    /// The key of a flow's client and destination.
    #[inline(always)]
    pub fn of(k: &FlowKey) -> Self {
        SteerClientKey {
            user_addr: k.user_addr,
            remote_addr: k.remote_addr,
            family: k.family,
            _pad: 0,
            vlan: k.vlan,
            _pad2: 0,
        }
    }
}

/// The fixed part of a ring-buffer record; `cap_len` payload bytes follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventHeader {
    pub key: FlowKey,
    /// CLOCK_MONOTONIC ns (coarse) when the packet was seen.
    pub timestamp_ns: u64,
    /// TCP sequence number of the first payload byte (0 for UDP).
    pub tcp_seq: u32,
    pub ifindex: u32,
    /// L4 payload length of the packet.
    pub orig_len: u32,
    /// Payload bytes following this header in the record.
    pub cap_len: u32,
    /// `KIND_*`.
    pub kind: u8,
    /// [`DIR_UP`] or [`DIR_DOWN`].
    pub direction: u8,
    pub tcp_flags: u8,
    /// `EVENT_F_*` bits.
    pub flags: u8,
    /// [`ABI_VERSION`] of the probes that wrote the record.
    pub abi: u32,
    /// TCP acknowledgment number of the packet (0 for UDP): a block page answering an HTTP
    /// request starts at this sequence number.
    pub tcp_ack: u32,
    pub _pad: u32,
}

/// Length of [`EventHeader`] in a record.
pub const EVENT_HEADER_LEN: usize = core::mem::size_of::<EventHeader>();

/// Scratch buffer in which the probes assemble one record before copying it to the ring.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EventBuf {
    pub header: EventHeader,
    pub payload: [u8; PAYLOAD_CAP],
}

/// FNV-1a 64 over the ASCII-lower-cased bytes of a DNS name (no trailing dot), taken from the
/// LAST byte to the first. One definition for both sides: userspace hashes the names it puts in
/// [`MAP_NAME_VERDICTS`], the probes hash names they read from packets. Hashing backwards means
/// one pass over "www.example.com" passes through the hashes of "com" and "example.com" at
/// each dot, so a subdomain rule ([`NAME_F_SUBDOMAINS`]) costs one lookup per label.
#[inline(always)]
pub fn name_hash(name: &[u8]) -> u64 {
    let mut h = NAME_HASH_SEED;
    for &b in name.iter().rev() {
        h = name_hash_step(h, b);
    }
    h
}

/// Start value of [`name_hash`].
pub const NAME_HASH_SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// One step of [`name_hash`] (the probes call it byte by byte, last byte first).
#[inline(always)]
pub fn name_hash_step(h: u64, b: u8) -> u64 {
    let b = if b.is_ascii_uppercase() { b | 0x20 } else { b };
    (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
}

// ---- layout assertions: both sides compile these ----
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<FlowValue>() == 88);
const _: () = assert!(core::mem::size_of::<HelloState>() == 48 + HELLO_BUF_LEN);
const _: () = assert!(HELLO_BUF_LEN as u32 == 2 * HELLO_WINDOW);
const _: () = assert!(core::mem::size_of::<IfaceInfo>() == 8);
const _: () = assert!(core::mem::size_of::<Config>() == 48);
const _: () = assert!(core::mem::size_of::<Stats>() == 8 * STATS_LEN);
const _: () = assert!(core::mem::size_of::<FlowVerdict>() == 16);
const _: () = assert!(core::mem::size_of::<NameKey>() == 8);
const _: () = assert!(core::mem::size_of::<NameVerdict>() == 16);
const _: () = assert!(core::mem::size_of::<Ipv4LpmKey>() == 8);
const _: () = assert!(core::mem::size_of::<Ipv6LpmKey>() == 20);
const _: () = assert!(core::mem::size_of::<IpVerdict>() == 16);
const _: () = assert!(core::mem::size_of::<SteerEntry>() == 16);
const _: () = assert!(core::mem::size_of::<SteerClientKey>() == 40);
const _: () = assert!(EVENT_HEADER_LEN == 80);
const _: () = assert!(core::mem::size_of::<EventBuf>() == EVENT_HEADER_LEN + PAYLOAD_CAP);
const _: () = assert!(PAYLOAD_CAP.is_power_of_two());

#[cfg(feature = "user")]
mod user {
    //! `aya::Pod` impls: every type here is `repr(C)`, `Copy`, with all padding spelled out as
    //! named fields, so any byte pattern is a valid value.
    use super::*;

    macro_rules! pod {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: repr(C)/repr(C, packed) plain integers and integer arrays, no implicit
            // padding (sizes asserted above), every bit pattern valid.
            unsafe impl aya::Pod for $t {}
        )*};
    }
    pod!(
        FlowKey,
        FlowValue,
        HelloState,
        IfaceInfo,
        Config,
        Stats,
        FlowVerdict,
        NameKey,
        NameVerdict,
        Ipv4LpmKey,
        Ipv6LpmKey,
        IpVerdict,
        SteerEntry,
        SteerClientKey,
        EventHeader,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_hash_ignores_ascii_case() {
        assert_eq!(name_hash(b"Example.COM"), name_hash(b"example.com"));
        assert_ne!(name_hash(b"example.com"), name_hash(b"example.org"));
        // FNV-1a 64 of the empty input is the offset basis.
        assert_eq!(name_hash(b""), NAME_HASH_SEED);
        // Known FNV-1a 64 value for "a" (one byte: direction does not matter).
        assert_eq!(name_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        // Backwards: the hash of "example.com" is a prefix state of "www.example.com".
        let full = b"www.example.com";
        let mut h = NAME_HASH_SEED;
        let mut suffixes = 0;
        for (i, &b) in full.iter().enumerate().rev() {
            if b == b'.' {
                let suffix = &full[i + 1..];
                assert_eq!(h, name_hash(suffix));
                suffixes += 1;
            }
            h = name_hash_step(h, b);
        }
        assert_eq!(suffixes, 2);
        assert_eq!(h, name_hash(full));
    }

    #[test]
    fn map_names_fit_the_kernel_limit() {
        for name in ALL_MAPS {
            assert!(
                name.len() <= 15,
                "{name} is longer than BPF_OBJ_NAME_LEN - 1"
            );
        }
    }
}
