//! The flow table: joins packet counters with names found in the first flight of each flow.
//! Stateful but still free of I/O; the same code serves pcap import
//! ([`FlowTable::observe_packet`]) and the live daemon ([`FlowTable::observe_payload`] for the
//! kernel's first-flight payload copies, [`FlowTable::update_counters`] for its counters).
//!
//! # Who is the client
//!
//! A flow is stored under an unordered pair of endpoints; which side is the user (client)
//! is decided by the strongest evidence seen so far, and may change as better evidence
//! arrives: the live daemon's direction (strongest), a TCP SYN / SYN-ACK, the first
//! ClientHello / HTTP request / QUIC client Initial / DNS query, and finally port
//! heuristics for captures that start mid-flow. Counters and per-side parse state are kept
//! per side, so a late change of mind loses nothing.
//!
//! # Names
//!
//! SNI from a TLS ClientHello (reassembled across segments and records), SNI from a QUIC
//! Initial (decrypted, CRYPTO frames reassembled across packets) or a gQUIC CHLO, the HTTP/1
//! Host header, the DNS query name for DNS flows, and for flows with none of those the name a
//! DNS answer gave for the server address (an IP-to-name cache with TTLs). The first name
//! found from the flow's own payload wins; the DNS cache is only a fallback.
//!
//! # Bounds
//!
//! Every structure has a fixed cap ([`FlowTableLimits`]): flows, buffered stream bytes per
//! side, packets inspected per side, DNS cache entries, finished records kept. Hitting a cap
//! counts a drop in [`FlowTableStats`]; it never fails a packet.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tollgate_wire::http;
use tollgate_wire::reasm::{CryptoReassembler, TcpReassembler};

use crate::packet::{PacketView, tcp_flags};
use crate::record::{FlowRecord, FlowTuple, L4Proto, NameSource};

mod dns_answers;
mod dns_cache;
mod evidence;
mod meta;
mod names;
mod quic;
mod tcp;
#[cfg(test)]
mod testing;

use dns_answers::{PendingKey, PendingQuery};
use dns_cache::DnsCache;
use evidence::{Evidence, packet_evidence, set_client};
pub use meta::FlowMeta;
use meta::Meta;
use names::Names;
pub use names::{MAX_NAME_LEN, clean_name};
use quic::QuicRecheck;

/// Fixed capacities and timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowTableLimits {
    /// Flows tracked at once; a new flow past this evicts idle ones or is dropped.
    pub max_flows: usize,
    /// Stream bytes buffered per side for reassembly (a ClientHello, an HTTP head).
    pub max_stream_bytes: usize,
    /// Payload-carrying packets inspected per side before giving up on a name.
    pub max_inspect_packets: u32,
    /// IP-to-name entries learned from DNS answers.
    pub max_dns_cache: usize,
    /// Shortest lifetime given to a DNS cache entry, whatever the TTL said.
    pub dns_min_ttl: Duration,
    /// A flow idle this long is finished (moved out of the active table).
    pub idle_timeout: Duration,
    /// Finished flows kept for [`FlowTable::records`] / [`FlowTable::drain_finished`].
    pub max_finished: usize,
    /// Stream bytes buffered for reassembly across all flows (TCP streams and QUIC CRYPTO
    /// streams together). Past it, new data for an unnamed flow is not buffered.
    pub max_buffered_bytes: usize,
    /// Compute each hello's JA4 fingerprint ([`FlowMeta::ja4`]): about a sixth of the cost
    /// of naming a new TLS flow, so a daemon that does not report it turns it off.
    pub fingerprints: bool,
    /// Keep what the first flight told beyond the name ([`FlowMeta`], for
    /// [`FlowTable::records_with_meta`]): about 200 B of heap a TLS flow (ALPN list, bits,
    /// JA4), so a daemon that never reports it turns it off.
    pub meta: bool,
    /// Learn from a DNS answer only when it matches a query the flow's client sent: same
    /// 5-tuple (reversed), transaction id and question, within [`Self::dns_query_timeout`].
    /// Whoever can send a packet from port 53 chooses an unsolicited answer's names and
    /// addresses, so the live daemon (which blocks and steers by them) turns this on; an
    /// offline capture, which often starts mid-conversation, may leave it off.
    pub dns_answers_need_query: bool,
    /// Queries waiting for their answer, at most; past it the oldest is forgotten
    /// (counted in [`FlowTableStats::dns_queries_evicted`]).
    pub max_pending_dns: usize,
    /// How long a query waits for its answer (resolvers give up after a few seconds).
    pub dns_query_timeout: Duration,
    /// Longest TTL believed, for the cache and for [`Observed::dns_answers`]: an answer's
    /// TTL is chosen by whoever wrote it (up to 136 years).
    pub dns_max_ttl: Duration,
}

impl Default for FlowTableLimits {
    fn default() -> Self {
        FlowTableLimits {
            max_flows: 262_144,
            max_stream_bytes: 16 * 1024,
            max_inspect_packets: 24,
            max_dns_cache: 65_536,
            dns_min_ttl: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            max_finished: 262_144,
            max_buffered_bytes: 64 * 1024 * 1024,
            fingerprints: true,
            meta: true,
            dns_answers_need_query: false,
            max_pending_dns: 16_384,
            dns_query_timeout: Duration::from_secs(15),
            dns_max_ttl: Duration::from_secs(86_400),
        }
    }
}

/// An address a DNS answer gave for a name, from an answer that matched its client's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    /// The client that asked (the resolver's user).
    pub client: IpAddr,
    /// The question name, lower case.
    pub name: String,
    pub ip: IpAddr,
    /// The record's TTL, capped at [`FlowTableLimits::dns_max_ttl`].
    pub ttl: Duration,
}

/// What one live payload copy taught the table: everything its one parse found that a caller
/// acting on flows (enforcement) needs, so that the caller parses nothing itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The flow's own name (as [`FlowTable::own_name`] gives it) when this very copy named
    /// the flow: reported once per flow, the moment a caller that acts once per named flow
    /// acts, without keeping a set of the flows it already saw.
    pub named: Option<(Arc<str>, NameSource)>,
    /// The Host of a complete request head the user sent on a TCP connection this copy did
    /// not name (a kept-alive connection reused for another Host), as the head wrote it.
    pub later_http_host: Option<String>,
    /// The name a later client Initial of a QUIC-named flow gave when it names another
    /// server than the flow was last named or renamed by (the real Initial after a decoy the
    /// server dropped). The flow's own name stays the first one.
    pub quic_renamed: Option<String>,
    /// Addresses of the DNS answers this copy carried (with
    /// [`FlowTableLimits::dns_answers_need_query`], only answers to a query of their client).
    pub dns_answers: Vec<DnsAnswer>,
}

/// Which way a live payload copy travelled. Up is from the user (LAN side).
pub use tollgate_common::Direction;

/// A first-flight payload copy from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadObservation<'a> {
    pub flow: FlowTuple,
    /// Which way this copy went: the sender is the user for [`Direction::Up`].
    pub direction: Direction,
    pub ts: DateTime<Utc>,
    pub tcp_seq: u32,
    pub tcp_flags: u8,
    pub payload: &'a [u8],
}

/// Absolute counters for a flow, as the kernel keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub packets_up: u64,
    pub packets_down: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// TCP flags seen, OR-ed ([`crate::packet::tcp_flags`]).
    pub tcp_flags: u8,
}

/// Counters about the table itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowTableStats {
    /// Active flows.
    pub flows: usize,
    /// Active flows with a name (own payload or DNS cache).
    pub named_flows: usize,
    /// Finished flows kept.
    pub finished_flows: usize,
    /// Names found, by source ("sni", "quic", "dns", "http"), counted once per flow.
    pub names_by_source: BTreeMap<&'static str, u64>,
    /// Parse errors by "protocol:kind" (e.g. "tls:bad_length", "dns:dns_pointer_loop").
    pub parse_errors: BTreeMap<String, u64>,
    /// QUIC long-header packets that did not decrypt as a client Initial (mostly server
    /// Initials, which use keys we do not derive): expected, so not a parse error.
    pub quic_undecryptable: u64,
    /// Observations (packets, events, counter reads) of new flows refused because the table
    /// was full of live flows; a refused flow counts again each time it is seen.
    pub flows_dropped: u64,
    /// Flows moved out for being idle.
    pub flows_expired: u64,
    /// Finished records discarded because the finished list was full.
    pub finished_dropped: u64,
    pub dns_cache_entries: usize,
    /// DNS cache entries evicted for room (not for expiry).
    pub dns_cache_evicted: u64,
    /// Stream bytes not buffered because a reassembly cap was hit.
    pub reassembly_dropped_bytes: u64,
    /// Stream bytes buffered now, across flows.
    pub buffered_bytes: usize,
    /// Payloads not buffered because the table-wide byte budget was spent.
    pub buffer_budget_drops: u64,
    /// DNS answers that matched a query of their client and were learned from.
    pub dns_answers_matched: u64,
    /// DNS answers refused: no pending query of the client with that 5-tuple and
    /// transaction id (unsolicited, spoofed, late or duplicate answers).
    pub dns_answers_unmatched: u64,
    /// DNS answers refused: the transaction id matched but the question did not.
    pub dns_answers_wrong_question: u64,
    /// Pending queries forgotten for room before their answer came.
    pub dns_queries_evicted: u64,
    /// Queries waiting for their answer now.
    pub dns_queries_pending: usize,
    /// Records whose TTL was above [`FlowTableLimits::dns_max_ttl`] (used capped).
    pub dns_ttl_capped: u64,
    /// QUIC flows renamed by a later Initial ([`Observed::quic_renamed`]).
    pub quic_renamed: u64,
    /// QUIC-named flows no longer read for later Initials because too many were followed.
    pub quic_recheck_forgotten: u64,
}

type Endpoint = (IpAddr, u16);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CanonKey {
    proto: L4Proto,
    a: Endpoint,
    b: Endpoint,
}

impl CanonKey {
    /// The canonical key and the index (0 = a, 1 = b) of `sender`.
    fn of(proto: L4Proto, sender: Endpoint, receiver: Endpoint) -> (Self, usize) {
        if sender <= receiver {
            (
                CanonKey {
                    proto,
                    a: sender,
                    b: receiver,
                },
                0,
            )
        } else {
            (
                CanonKey {
                    proto,
                    a: receiver,
                    b: sender,
                },
                1,
            )
        }
    }
}

/// What a TCP side's stream turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamKind {
    Unknown,
    Dns,
    Done,
}

#[derive(Debug)]
struct Side {
    stream: Option<TcpReassembler>,
    kind: StreamKind,
    /// For DNS over TCP: bytes of the stream already parsed.
    dns_parsed: usize,
    inspected: u32,
    isn: Option<u32>,
}

impl Side {
    fn new() -> Self {
        Side {
            stream: None,
            kind: StreamKind::Unknown,
            dns_parsed: 0,
            inspected: 0,
            isn: None,
        }
    }
}

#[derive(Debug)]
struct Inspect {
    sides: [Side; 2],
    crypto: Option<CryptoReassembler>,
    /// Destination connection id of the client's first Initial: its Initial keys.
    quic_dcid: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Flow {
    /// Index of the client side (0 = key.a, 1 = key.b).
    client: u8,
    evidence: Evidence,
    packets: [u64; 2],
    bytes: [u64; 2],
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    tcp_flags: u8,
    /// Per side; boxed because only captures carry them (the live daemon never does).
    macs: Option<Box<[Option<[u8; 6]>; 2]>>,
    /// Shared with every other flow of the same name ([`Names`]); its source is
    /// `name_source` (apart, so that the one-byte source packs with the other small fields).
    name: Option<Arc<str>>,
    name_source: Option<NameSource>,
    meta: Option<Box<Meta>>,
    inspect: Option<Box<Inspect>>,
    /// Tells this flow's [`Expiry`] entry from those of earlier flows of the same key.
    generation: u64,
}

/// A live flow's place in the expiry order: the flow's last packet time when the entry was
/// made (the flow's own may be later since), oldest first.
#[derive(Debug, Clone, Copy)]
struct Expiry {
    last_seen: DateTime<Utc>,
    generation: u64,
    key: CanonKey,
}

impl PartialEq for Expiry {
    fn eq(&self, other: &Self) -> bool {
        (self.last_seen, self.generation) == (other.last_seen, other.generation)
    }
}

impl Eq for Expiry {}

impl PartialOrd for Expiry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Expiry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.last_seen, self.generation).cmp(&(other.last_seen, other.generation))
    }
}

/// The flow table. See the module documentation.
#[derive(Debug)]
pub struct FlowTable {
    limits: FlowTableLimits,
    /// aHash: several lookups per packet, and the keys come from the network (ahash's
    /// per-table random keys keep collision floods out).
    flows: HashMap<CanonKey, Flow, ahash::RandomState>,
    /// One entry per live flow, oldest first: a sweep takes the idle flows from its front
    /// instead of visiting every flow, so sweeps can be frequent however large the table.
    expiry: BinaryHeap<Reverse<Expiry>>,
    /// Flows made so far (the next flow's `generation`).
    generations: u64,
    finished: Vec<FlowRecord>,
    dns: DnsCache,
    stats: FlowTableStats,
    now: DateTime<Utc>,
    ops_since_sweep: u32,
    /// Sum of the bytes held by every reassembler (see `max_buffered_bytes`).
    buffered: usize,
    full_sweep_at: Option<DateTime<Utc>>,
    names: Names,
    /// Queries waiting for their answer, and their keys oldest first (for expiry and
    /// eviction; keys already answered are skipped when they come up).
    pending_dns: HashMap<PendingKey, PendingQuery, ahash::RandomState>,
    pending_order: VecDeque<(PendingKey, DateTime<Utc>)>,
    /// While [`FlowTable::observe_payload`] runs: the answers its copy carried.
    dns_answers: Option<Vec<DnsAnswer>>,
    /// QUIC-named live flows whose later Initials are read again.
    quic_recheck: QuicRecheck,
}

/// A flow's shard in a sharded capture import: a hash of its direction-free key under
/// `state` (random per import, so that no capture can aim its flows at one shard), and
/// whether it has port 53 on either end (every shard reads those flows: DNS answers name
/// other flows).
pub(crate) fn flow_shard(
    state: &ahash::RandomState,
    proto: L4Proto,
    sender: Endpoint,
    receiver: Endpoint,
) -> (u64, bool) {
    let (ck, _) = CanonKey::of(proto, sender, receiver);
    (state.hash_one(ck), ck.a.1 == 53 || ck.b.1 == 53)
}

/// Packets (and payload copies) between two idle sweeps. Fixed, so that when the sweeps
/// come depends on the packet stream alone, not on the table: each shard of a sharded
/// capture import ([`crate::pcap`]) sweeps at the same packets as one table would.
const SWEEP_EVERY: u32 = 8192;

/// Question names kept per DNS flow in [`FlowMeta::dns_queries`].
pub const MAX_DNS_QUERIES_KEPT: usize = 8;

impl FlowTable {
    pub fn new(limits: FlowTableLimits) -> Self {
        FlowTable {
            dns: DnsCache::new(limits.max_dns_cache, limits.dns_min_ttl),
            limits,
            flows: HashMap::default(),
            expiry: BinaryHeap::new(),
            generations: 0,
            finished: Vec::new(),
            stats: FlowTableStats::default(),
            now: DateTime::UNIX_EPOCH,
            ops_since_sweep: 0,
            buffered: 0,
            full_sweep_at: None,
            names: Names::default(),
            pending_dns: HashMap::default(),
            pending_order: VecDeque::new(),
            dns_answers: None,
            quic_recheck: QuicRecheck::default(),
        }
    }

    /// Payloads not buffered because the table-wide budget was spent
    /// ([`FlowTableStats::buffer_budget_drops`], without building the whole stats).
    pub(crate) fn buffer_budget_drops(&self) -> u64 {
        self.stats.buffer_budget_drops
    }

    /// Whether the table was ever full (a new flow found it at [`FlowTableLimits::max_flows`]:
    /// it was swept, and the flow refused if that freed nothing).
    pub(crate) fn was_full(&self) -> bool {
        self.full_sweep_at.is_some()
    }

    /// Records of finished flows held.
    pub(crate) fn finished_len(&self) -> usize {
        self.finished.len()
    }

    /// A packet at `ts` that another shard of a sharded import handles: the clock and the
    /// sweeps move on as they would for a packet of this table ([`FlowTable::flow_for`]).
    pub(crate) fn pass(&mut self, ts: DateTime<Utc>) {
        self.tick(ts);
    }

    pub fn limits(&self) -> &FlowTableLimits {
        &self.limits
    }

    /// A decoded packet from a capture: counts it and inspects its payload.
    pub fn observe_packet(&mut self, pkt: &PacketView<'_>) {
        let sender = (pkt.src, pkt.sport);
        let receiver = (pkt.dst, pkt.dport);
        let Some((ck, side)) = self.flow_for(
            pkt.proto,
            sender,
            receiver,
            pkt.ts,
            None,
            pkt.tcp_flags,
            pkt.payload,
        ) else {
            return;
        };
        if let Some(f) = self.flows.get_mut(&ck) {
            f.packets[side] += 1;
            f.bytes[side] += u64::from(pkt.ip_len);
            if let Some(mac) = pkt.src_mac {
                let macs = f.macs.get_or_insert_with(Default::default);
                if let Some(m @ None) = macs.get_mut(side) {
                    *m = Some(mac);
                }
            }
        }
        self.inspect(ck, side, pkt.ts, pkt.tcp_seq, pkt.tcp_flags, pkt.payload);
    }

    /// A first-flight payload copy from the kernel (counters arrive separately), and what it
    /// taught the table ([`Observed`]).
    pub fn observe_payload(&mut self, ev: &PayloadObservation<'_>) -> Observed {
        let sender_is_client = ev.direction == Direction::Up;
        let Some((ck, side)) = self.flow_for(
            ev.flow.proto,
            ev.flow.sender(ev.direction),
            ev.flow.receiver(ev.direction),
            ev.ts,
            Some(sender_is_client),
            ev.tcp_flags,
            ev.payload,
        ) else {
            return Observed::default();
        };
        let named_before = self.flows.get(&ck).is_some_and(|f| f.name.is_some());
        self.dns_answers = Some(Vec::new());
        self.inspect(ck, side, ev.ts, ev.tcp_seq, ev.tcp_flags, ev.payload);
        let mut seen = Observed {
            dns_answers: self.dns_answers.take().unwrap_or_default(),
            ..Observed::default()
        };
        if !named_before
            && let Some(f) = self.flows.get(&ck)
            && let (Some(name), Some(source)) = (&f.name, f.name_source)
        {
            if ck.proto == L4Proto::Udp && source == NameSource::Quic {
                self.quic_recheck.named(ck, name);
            }
            seen.named = Some((name.clone(), source));
            return seen;
        }
        if !sender_is_client || ev.payload.is_empty() {
            return seen;
        }
        match ck.proto {
            // Only a flow's first request head names it; the kernel still checks every
            // later head's Host against its name verdicts.
            L4Proto::Tcp => {
                if let Ok(http::HttpStatus::Parsed(head)) = http::parse_request_head(ev.payload) {
                    seen.later_http_host = head.host_name().map(str::to_string);
                }
            }
            L4Proto::Udp => {
                seen.quic_renamed = self.quic_recheck.initial(&ck, ev.payload);
            }
        }
        seen
    }

    /// The kernel's absolute counters for a flow.
    pub fn update_counters(&mut self, flow: FlowTuple, c: Counters) {
        let client = (flow.user_ip, flow.user_port);
        let server = (flow.remote_ip, flow.remote_port);
        let Some((ck, side)) =
            self.flow_for(flow.proto, client, server, c.last_seen, Some(true), 0, &[])
        else {
            return;
        };
        if let Some(f) = self.flows.get_mut(&ck) {
            f.packets[side] = c.packets_up;
            f.packets[1 - side] = c.packets_down;
            f.bytes[side] = c.bytes_up;
            f.bytes[1 - side] = c.bytes_down;
            f.first_seen = f.first_seen.min(c.first_seen);
            f.last_seen = f.last_seen.max(c.last_seen);
            f.tcp_flags |= c.tcp_flags;
        }
    }

    /// Every flow, active then finished, as records (`src` is the client).
    pub fn records(&self) -> impl Iterator<Item = FlowRecord> + '_ {
        self.flows
            .iter()
            .map(|(k, f)| self.record_of(k, f))
            .chain(self.finished.iter().cloned())
    }

    /// Active flows with what their first flight told beyond the name.
    pub fn records_with_meta(&self) -> impl Iterator<Item = (FlowRecord, FlowMeta)> + '_ {
        self.flows.iter().map(|(k, f)| {
            (
                self.record_of(k, f),
                f.meta.as_deref().map(Meta::to_public).unwrap_or_default(),
            )
        })
    }

    /// Take the finished records (flows expired or evicted), e.g. to export them.
    pub fn drain_finished(&mut self) -> Vec<FlowRecord> {
        std::mem::take(&mut self.finished)
    }

    pub fn stats(&self) -> FlowTableStats {
        let mut s = self.stats.clone();
        s.flows = self.flows.len();
        s.named_flows = self
            .flows
            .iter()
            .filter(|(k, f)| f.name.is_some() || self.cached_name(k, f).is_some())
            .count();
        s.finished_flows = self.finished.len();
        s.dns_cache_entries = self.dns.len();
        s.dns_cache_evicted = self.dns.evicted();
        s.dns_queries_pending = self.pending_dns.len();
        s.buffered_bytes = self.buffered;
        s.quic_renamed = self.quic_recheck.renamed;
        s.quic_recheck_forgotten = self.quic_recheck.forgotten;
        s
    }

    /// The name the flow's own first flight gave it (SNI, QUIC, HTTP Host, DNS query), not
    /// the DNS cache's: what enforcement decides a flow by.
    pub fn own_name(&self, flow: &FlowTuple) -> Option<(&str, NameSource)> {
        let (ck, _) = CanonKey::of(
            flow.proto,
            (flow.user_ip, flow.user_port),
            (flow.remote_ip, flow.remote_port),
        );
        let f = self.flows.get(&ck)?;
        f.name.as_deref().zip(f.name_source)
    }

    /// Every live entry of the IP-to-name cache: address, name, expiry.
    pub fn dns_entries(&self) -> impl Iterator<Item = (IpAddr, &str, DateTime<Utc>)> + '_ {
        self.dns.entries()
    }

    /// The DNS cache's name for `ip` at time `at`, if an answer covering it was seen.
    pub fn dns_name(&self, ip: IpAddr, at: DateTime<Utc>) -> Option<&str> {
        self.dns.name_at(ip, at)
    }

    /// Finish flows idle for longer than the idle timeout as of `now`, and drop expired DNS
    /// cache entries. Called by the table itself every few thousand packets; the daemon may
    /// call it on a timer.
    pub fn expire(&mut self, now: DateTime<Utc>) {
        let idle = TimeDelta::from_std(self.limits.idle_timeout).unwrap_or(TimeDelta::MAX);
        let idle_at = |last: DateTime<Utc>| last.checked_add_signed(idle).is_some_and(|t| t < now);
        while let Some(Reverse(e)) = self.expiry.peek().copied() {
            if !idle_at(e.last_seen) {
                break;
            }
            self.expiry.pop();
            // (Flows leave the table only here: every entry's flow is there.)
            let Some(f) = self
                .flows
                .get(&e.key)
                .filter(|f| f.generation == e.generation)
            else {
                continue;
            };
            if idle_at(f.last_seen) {
                self.finish(e.key);
                self.stats.flows_expired += 1;
            } else {
                let last_seen = f.last_seen;
                self.expiry.push(Reverse(Expiry { last_seen, ..e }));
            }
        }
        self.dns.expire(now);
        self.expire_queries(now);
    }

    // ---- internals -------------------------------------------------------------------

    fn record_of(&self, key: &CanonKey, f: &Flow) -> FlowRecord {
        let c = usize::from(f.client);
        let s = 1 - c;
        let (client, server) = if c == 0 {
            (key.a, key.b)
        } else {
            (key.b, key.a)
        };
        let (name, name_source) = match (&f.name, f.name_source) {
            (Some(n), Some(src)) => (Some(n.to_string()), Some(src)),
            _ => match self.cached_name(key, f) {
                Some(n) => (Some(n.to_string()), Some(NameSource::Dns)),
                None => (None, None),
            },
        };
        FlowRecord {
            proto: key.proto,
            src: client.0,
            sport: client.1,
            dst: server.0,
            dport: server.1,
            name,
            name_source,
            bytes_up: f.bytes[c],
            bytes_down: f.bytes[s],
            packets_up: f.packets[c],
            packets_down: f.packets[s],
            first_seen: f.first_seen,
            last_seen: f.last_seen,
            src_mac: f.macs.as_ref().and_then(|m| m.get(c).copied().flatten()),
            user: None,
        }
    }

    /// Give back the budget held by a flow's reassemblers.
    fn release(&mut self, insp: Option<&Inspect>) {
        let Some(i) = insp else { return };
        let held: usize = i
            .sides
            .iter()
            .filter_map(|s| s.stream.as_ref().map(TcpReassembler::buffered))
            .sum::<usize>()
            + i.crypto.as_ref().map_or(0, CryptoReassembler::buffered);
        self.buffered = self.buffered.saturating_sub(held);
    }

    fn cached_name(&self, key: &CanonKey, f: &Flow) -> Option<&str> {
        let server = if f.client == 0 { key.b } else { key.a };
        self.dns_name(server.0, f.first_seen)
    }

    fn finish(&mut self, k: CanonKey) {
        if let Some(f) = self.flows.remove(&k) {
            self.release(f.inspect.as_deref());
            if self.finished.len() >= self.limits.max_finished {
                self.stats.finished_dropped += 1;
            } else {
                let r = self.record_of(&k, &f);
                self.finished.push(r);
            }
        }
    }

    /// Find or create the flow; apply client evidence. Returns the key and the sender's side.
    #[allow(
        clippy::too_many_arguments,
        reason = "one internal entry shared by the three public feeds"
    )]
    fn flow_for(
        &mut self,
        proto: L4Proto,
        sender: Endpoint,
        receiver: Endpoint,
        ts: DateTime<Utc>,
        given: Option<bool>,
        flags: u8,
        payload: &[u8],
    ) -> Option<(CanonKey, usize)> {
        self.tick(ts);
        let (ck, side) = CanonKey::of(proto, sender, receiver);
        // Evidence from this packet: (sender is client?, strength).
        let ev = match given {
            Some(up) => Some((up, Evidence::Given)),
            None => packet_evidence(proto, sender, receiver, flags, payload),
        };
        if !self.flows.contains_key(&ck) {
            if self.flows.len() >= self.limits.max_flows {
                // A full table is swept for idle flows at most once a second: a flood of
                // new flows must not turn every packet into a scan of the table.
                let now = self.now;
                if self
                    .full_sweep_at
                    .is_none_or(|t| now >= t + TimeDelta::seconds(1))
                {
                    self.full_sweep_at = Some(now);
                    self.expire(now);
                }
                if self.flows.len() >= self.limits.max_flows {
                    self.stats.flows_dropped += 1;
                    return None;
                }
            }
            let (sender_is_client, evidence) = ev.unwrap_or((true, Evidence::FirstPacket));
            let client = if sender_is_client { side } else { 1 - side };
            let generation = self.generations;
            self.generations += 1;
            self.expiry.push(Reverse(Expiry {
                last_seen: ts,
                generation,
                key: ck,
            }));
            self.flows.insert(
                ck,
                Flow {
                    client: u8::from(client == 1),
                    evidence,
                    packets: [0; 2],
                    bytes: [0; 2],
                    first_seen: ts,
                    last_seen: ts,
                    tcp_flags: 0,
                    macs: None,
                    name: None,
                    name_source: None,
                    meta: None,
                    inspect: None,
                    generation,
                },
            );
        }
        let f = self.flows.get_mut(&ck)?;
        if let Some((sender_is_client, strength)) = ev {
            set_client(f, side, sender_is_client, strength);
        }
        f.first_seen = f.first_seen.min(ts);
        f.last_seen = f.last_seen.max(ts);
        f.tcp_flags |= flags;
        Some((ck, side))
    }

    /// The clock moves on to `ts`, and every [`SWEEP_EVERY`] calls idle flows are swept.
    fn tick(&mut self, ts: DateTime<Utc>) {
        if ts > self.now {
            self.now = ts;
        }
        self.ops_since_sweep = self.ops_since_sweep.saturating_add(1);
        if self.ops_since_sweep >= SWEEP_EVERY {
            self.ops_since_sweep = 0;
            let now = self.now;
            self.expire(now);
        }
    }

    fn inspect(
        &mut self,
        ck: CanonKey,
        side: usize,
        ts: DateTime<Utc>,
        seq: u32,
        flags: u8,
        payload: &[u8],
    ) {
        let limits = self.limits.clone();
        let Some(f) = self.flows.get_mut(&ck) else {
            return;
        };
        if ck.proto == L4Proto::Tcp && flags & tcp_flags::SYN != 0 {
            let insp = f.inspect.get_or_insert_with(new_inspect);
            if let Some(s) = insp.sides.get_mut(side) {
                s.isn = Some(seq);
                if let Some(r) = s.stream.as_mut() {
                    r.set_isn(seq);
                }
            }
        }
        if payload.is_empty() {
            return;
        }
        let is_dns_port = ck.a.1 == 53 || ck.b.1 == 53;
        match ck.proto {
            L4Proto::Udp => {
                if is_dns_port {
                    self.udp_dns(ck, side, ts, payload);
                } else if f.name.is_none() {
                    self.udp_quic(ck, side, payload);
                }
            }
            L4Proto::Tcp => {
                if f.name.is_some() && !is_dns_port {
                    return;
                }
                let insp = f.inspect.get_or_insert_with(new_inspect);
                let Some(s) = insp.sides.get_mut(side) else {
                    return;
                };
                if s.kind == StreamKind::Done || s.inspected >= limits.max_inspect_packets {
                    return;
                }
                s.inspected += 1;
                if self.buffered + payload.len() > limits.max_buffered_bytes {
                    // The budget is spent: this side is not followed further.
                    self.stats.buffer_budget_drops += 1;
                    if let Some(r) = s.stream.take() {
                        self.buffered = self.buffered.saturating_sub(r.buffered());
                    }
                    s.kind = StreamKind::Done;
                    return;
                }
                let r = s.stream.get_or_insert_with(|| {
                    let mut r = TcpReassembler::new(limits.max_stream_bytes);
                    if let Some(isn) = s.isn {
                        r.set_isn(isn);
                    }
                    r
                });
                let before = r.dropped_bytes;
                let held = r.buffered();
                let grew = r.insert(seq, payload);
                self.buffered = (self.buffered + r.buffered()).saturating_sub(held);
                self.stats.reassembly_dropped_bytes += r.dropped_bytes - before;
                if grew {
                    self.tcp_stream(ck, side, ts);
                }
            }
        }
    }
}

fn new_inspect() -> Box<Inspect> {
    Box::new(Inspect {
        sides: [Side::new(), Side::new()],
        crypto: None,
        quic_dcid: None,
    })
}

fn source_label(s: NameSource) -> &'static str {
    match s {
        NameSource::Sni => "sni",
        NameSource::Quic => "quic",
        NameSource::Dns => "dns",
        NameSource::Http => "http",
        NameSource::Log => "log",
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn buffer_budget_is_table_wide_and_released() {
        let mut t = FlowTable::new(FlowTableLimits {
            max_buffered_bytes: 100,
            ..Default::default()
        });
        // Incomplete hellos: each holds its bytes until the budget is spent.
        let h = hello("budget.example");
        for p in 0..4u16 {
            t.observe_packet(&pkt(
                [10, 0, 0, 2],
                2000 + p,
                [10, 0, 0, 3],
                443,
                L4Proto::Tcp,
                1,
                tcp_flags::ACK,
                &h[..40],
                0,
            ));
        }
        let s = t.stats();
        assert_eq!(s.buffered_bytes, 80);
        assert_eq!(s.buffer_budget_drops, 2);
        // Completing one hello names the flow and gives its 40 bytes back.
        t.observe_packet(&pkt(
            [10, 0, 0, 2],
            2000,
            [10, 0, 0, 3],
            443,
            L4Proto::Tcp,
            41,
            tcp_flags::ACK,
            &h[40..],
            1,
        ));
        assert_eq!(t.stats().buffered_bytes, 40);
        t.expire(ts(10_000));
        assert_eq!(t.stats().buffered_bytes, 0);
    }

    #[test]
    fn flow_cap_counts_drops() {
        let mut t = FlowTable::new(FlowTableLimits {
            max_flows: 2,
            ..Default::default()
        });
        for p in 0..5u16 {
            t.observe_packet(&pkt(
                [10, 0, 0, 2],
                1000 + p,
                [10, 0, 0, 3],
                80,
                L4Proto::Tcp,
                0,
                tcp_flags::SYN,
                &[],
                0,
            ));
        }
        let s = t.stats();
        assert_eq!(s.flows, 2);
        assert_eq!(s.flows_dropped, 3);
    }

    #[test]
    fn live_payload_and_counters() {
        let mut t = FlowTable::new(FlowTableLimits::default());
        let key = FlowTuple {
            proto: L4Proto::Tcp,
            user_ip: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 5)),
            user_port: 51000,
            remote_ip: IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)),
            remote_port: 8443,
        };
        let h = hello("api.example.net");
        let (a, b) = h.split_at(10);
        for (seq, part) in [(101u32, a), (111, b)] {
            t.observe_payload(&PayloadObservation {
                flow: key,
                direction: Direction::Up,
                ts: ts(0),
                tcp_seq: seq,
                tcp_flags: tcp_flags::ACK | tcp_flags::PSH,
                payload: part,
            });
        }
        t.update_counters(
            key,
            Counters {
                packets_up: 3,
                packets_down: 2,
                bytes_up: 700,
                bytes_down: 5000,
                first_seen: ts(0),
                last_seen: ts(3),
                tcp_flags: 0x1b,
            },
        );
        let r: Vec<FlowRecord> = t.records().collect();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].name.as_deref(), Some("api.example.net"));
        assert_eq!(r[0].tuple(), key);
        assert_eq!(
            (r[0].bytes_up, r[0].bytes_down, r[0].packets_up),
            (700, 5000, 3)
        );
        assert_eq!(r[0].last_seen, ts(3));
    }
}
