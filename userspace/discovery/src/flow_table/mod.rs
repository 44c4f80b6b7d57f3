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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tollgate_wire::http;
use tollgate_wire::reasm::{CryptoReassembler, TcpReassembler};

use crate::packet::{PacketView, tcp_flags};
use crate::record::{FlowRecord, FlowTuple, L4Proto, NameSource};

mod dns_answers;
mod evidence;
mod meta;
mod names;
mod quic;
mod tcp;

use dns_answers::{PendingKey, PendingQuery};
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
}

#[derive(Debug, Clone)]
struct DnsEntry {
    name: Arc<str>,
    learned: DateTime<Utc>,
    expires: DateTime<Utc>,
}

/// What DNS HTTPS/SVCB answers said about ECH, for telling GREASE ECH from real ECH.
#[derive(Debug, Default)]
struct EchHints {
    /// Lower-cased name -> whether its HTTPS record carried an ECH config.
    published: HashMap<String, bool>,
    /// Lower-cased public_name values from ECH configs.
    public_names: HashSet<String>,
    order: VecDeque<(bool, String)>,
}

impl EchHints {
    fn learn(&mut self, cap: usize, name: &str, ech: bool, public_names: &[String]) {
        let add = |public: bool, n: String, this: &mut Self| {
            while this.order.len() >= cap.max(1) {
                match this.order.pop_front() {
                    Some((true, old)) => {
                        this.public_names.remove(&old);
                    }
                    Some((false, old)) => {
                        this.published.remove(&old);
                    }
                    None => break,
                }
            }
            this.order.push_back((public, n));
        };
        let key = name.to_ascii_lowercase();
        if self.published.insert(key.clone(), ech).is_none() {
            add(false, key, self);
        }
        for p in public_names {
            let p = p.to_ascii_lowercase();
            if self.public_names.insert(p.clone()) {
                add(true, p, self);
            }
        }
    }

    fn grease(&self, sni: Option<&str>, has_ech: bool) -> Option<bool> {
        let sni = sni?.to_ascii_lowercase();
        if !has_ech {
            return None;
        }
        if self.public_names.contains(&sni) {
            return Some(false);
        }
        match self.published.get(&sni) {
            Some(false) => Some(true),
            _ => None,
        }
    }
}

/// The flow table. See the module documentation.
#[derive(Debug)]
pub struct FlowTable {
    limits: FlowTableLimits,
    /// aHash: several lookups per packet, and the keys come from the network (ahash's
    /// per-table random keys keep collision floods out).
    flows: HashMap<CanonKey, Flow, ahash::RandomState>,
    finished: Vec<FlowRecord>,
    dns_cache: HashMap<IpAddr, DnsEntry>,
    dns_order: VecDeque<IpAddr>,
    stats: FlowTableStats,
    now: DateTime<Utc>,
    ops_since_sweep: u32,
    /// Sum of the bytes held by every reassembler (see `max_buffered_bytes`).
    buffered: usize,
    ech: EchHints,
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

const SWEEP_EVERY: u32 = 8192;

/// Question names kept per DNS flow in [`FlowMeta::dns_queries`].
pub const MAX_DNS_QUERIES_KEPT: usize = 8;

impl FlowTable {
    pub fn new(limits: FlowTableLimits) -> Self {
        FlowTable {
            limits,
            flows: HashMap::default(),
            finished: Vec::new(),
            dns_cache: HashMap::new(),
            dns_order: VecDeque::new(),
            stats: FlowTableStats::default(),
            now: DateTime::UNIX_EPOCH,
            ops_since_sweep: 0,
            buffered: 0,
            ech: EchHints::default(),
            full_sweep_at: None,
            names: Names::default(),
            pending_dns: HashMap::default(),
            pending_order: VecDeque::new(),
            dns_answers: None,
            quic_recheck: QuicRecheck::default(),
        }
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
        s.dns_cache_entries = self.dns_cache.len();
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
        self.dns_cache
            .iter()
            .map(|(ip, e)| (*ip, &*e.name, e.expires))
    }

    /// The DNS cache's name for `ip` at time `at`, if an answer covering it was seen.
    pub fn dns_name(&self, ip: IpAddr, at: DateTime<Utc>) -> Option<&str> {
        let e = self.dns_cache.get(&ip)?;
        (e.learned <= at + TimeDelta::seconds(2) && at <= e.expires).then_some(&*e.name)
    }

    /// Finish flows idle for longer than the idle timeout as of `now`, and drop expired DNS
    /// cache entries. Called by the table itself every few thousand packets; the daemon may
    /// call it on a timer.
    pub fn expire(&mut self, now: DateTime<Utc>) {
        let idle = TimeDelta::from_std(self.limits.idle_timeout).unwrap_or(TimeDelta::MAX);
        let stale: Vec<CanonKey> = self
            .flows
            .iter()
            .filter(|(_, f)| f.last_seen + idle < now)
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            self.finish(k);
            self.stats.flows_expired += 1;
        }
        self.dns_cache.retain(|_, e| e.expires >= now);
        let cache = &self.dns_cache;
        self.dns_order.retain(|ip| cache.contains_key(ip));
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
        if ts > self.now {
            self.now = ts;
        }
        self.ops_since_sweep = self.ops_since_sweep.saturating_add(1);
        // A sweep visits every flow: run it once per `max(SWEEP_EVERY, flows)` operations so
        // that its cost stays a bounded share of each operation however large the table is.
        if self.ops_since_sweep as usize >= self.flows.len().max(SWEEP_EVERY as usize) {
            self.ops_since_sweep = 0;
            let now = self.now;
            self.expire(now);
        }
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

    fn dns_learn(&mut self, ip: IpAddr, name: &str, ttl: Duration, ts: DateTime<Utc>) {
        let life = ttl.max(self.limits.dns_min_ttl);
        let expires = ts + TimeDelta::from_std(life).unwrap_or(TimeDelta::MAX);
        if !self.dns_cache.contains_key(&ip) {
            while self.dns_cache.len() >= self.limits.max_dns_cache {
                let Some(old) = self.dns_order.pop_front() else {
                    break;
                };
                if self.dns_cache.remove(&old).is_some() {
                    self.stats.dns_cache_evicted += 1;
                }
            }
            if self.limits.max_dns_cache == 0 {
                return;
            }
            self.dns_order.push_back(ip);
        }
        self.dns_cache.insert(
            ip,
            DnsEntry {
                name: Arc::from(&*clean_name(name)),
                learned: ts,
                expires,
            },
        );
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
    use super::*;
    use std::net::Ipv4Addr;

    fn ts(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap_or_default()
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "test helper spelling out every header field"
    )]
    fn pkt<'a>(
        src: [u8; 4],
        sport: u16,
        dst: [u8; 4],
        dport: u16,
        proto: L4Proto,
        seq: u32,
        flags: u8,
        payload: &'a [u8],
        t: i64,
    ) -> PacketView<'a> {
        PacketView {
            ts: ts(t),
            proto,
            src: IpAddr::V4(Ipv4Addr::from(src)),
            sport,
            dst: IpAddr::V4(Ipv4Addr::from(dst)),
            dport,
            ip_len: 40 + payload.len() as u32,
            tcp_seq: seq,
            tcp_flags: flags,
            payload,
            src_mac: None,
        }
    }

    fn hello(sni: &str) -> Vec<u8> {
        hello_with(sni, false)
    }

    fn hello_with(sni: &str, ech: bool) -> Vec<u8> {
        // A ClientHello with an SNI extension (and an outer ECH one), in one TLS record.
        let name = sni.as_bytes();
        let mut ext = vec![0, 0];
        ext.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
        ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
        ext.extend_from_slice(name);
        if ech {
            // outer, HKDF-SHA256, AES-128-GCM, config 7, enc 32 bytes, payload 16 bytes
            let mut e = vec![0, 0, 1, 0, 1, 7, 0, 32];
            e.extend_from_slice(&[9u8; 32]);
            e.extend_from_slice(&[0, 16]);
            e.extend_from_slice(&[5u8; 16]);
            ext.extend_from_slice(&[0xfe, 0x0d]);
            ext.extend_from_slice(&(e.len() as u16).to_be_bytes());
            ext.extend_from_slice(&e);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0u8; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn sni_split_over_segments_out_of_order_with_retransmit() {
        let mut t = FlowTable::new(FlowTableLimits::default());
        let c = [10, 0, 0, 2];
        let s = [93, 184, 216, 34];
        let h = hello("www.example.com");
        t.observe_packet(&pkt(
            s,
            443,
            c,
            50000,
            L4Proto::Tcp,
            7000,
            tcp_flags::SYN | tcp_flags::ACK,
            &[],
            0,
        ));
        t.observe_packet(&pkt(
            c,
            50000,
            s,
            443,
            L4Proto::Tcp,
            1000,
            tcp_flags::SYN,
            &[],
            0,
        ));
        let (a, rest) = h.split_at(20);
        let (b, d) = rest.split_at(30);
        t.observe_packet(&pkt(
            c,
            50000,
            s,
            443,
            L4Proto::Tcp,
            1001 + 50,
            tcp_flags::ACK,
            d,
            1,
        ));
        t.observe_packet(&pkt(
            c,
            50000,
            s,
            443,
            L4Proto::Tcp,
            1001,
            tcp_flags::ACK,
            a,
            1,
        ));
        t.observe_packet(&pkt(
            c,
            50000,
            s,
            443,
            L4Proto::Tcp,
            1001,
            tcp_flags::ACK,
            a,
            1,
        ));
        assert_eq!(t.records().next().and_then(|r| r.name), None);
        t.observe_packet(&pkt(
            c,
            50000,
            s,
            443,
            L4Proto::Tcp,
            1021,
            tcp_flags::ACK,
            b,
            2,
        ));
        let r: Vec<FlowRecord> = t.records().collect();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].name.as_deref(), Some("www.example.com"));
        assert_eq!(r[0].name_source, Some(NameSource::Sni));
        assert_eq!(r[0].src, IpAddr::V4(Ipv4Addr::from(c)));
        assert_eq!(r[0].packets_up, 5);
        assert_eq!(r[0].packets_down, 1);
        assert_eq!(t.stats().names_by_source.get("sni"), Some(&1));
    }

    #[test]
    fn dns_cache_names_later_flow_and_expires() {
        let mut t = FlowTable::new(FlowTableLimits::default());
        let c = [10, 0, 0, 2];
        let resolver = [10, 0, 0, 1];
        // Response for www.github.com -> CNAME github.com -> 140.82.121.3, TTL 60.
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        m.extend_from_slice(b"\x03www\x06github\x03com\x00\x00\x01\x00\x01");
        m.extend_from_slice(&[0xc0, 0x0c, 0, 5, 0, 1, 0, 0, 0x0e, 0x10, 0, 2, 0xc0, 0x10]);
        m.extend_from_slice(&[0xc0, 0x10, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 140, 82, 121, 3]);
        t.observe_packet(&pkt(resolver, 53, c, 40000, L4Proto::Udp, 0, 0, &m, 0));
        t.observe_packet(&pkt(
            c,
            40001,
            [140, 82, 121, 3],
            443,
            L4Proto::Tcp,
            5,
            tcp_flags::SYN,
            &[],
            1,
        ));
        t.observe_packet(&pkt(
            c,
            40002,
            [140, 82, 121, 3],
            443,
            L4Proto::Tcp,
            5,
            tcp_flags::SYN,
            &[],
            500,
        ));
        let mut recs: Vec<FlowRecord> = t.records().collect();
        recs.sort_by_key(|r| r.sport);
        assert_eq!(recs[0].name.as_deref(), Some("www.github.com"));
        assert_eq!(recs[0].name_source, Some(NameSource::Dns));
        assert_eq!(recs[0].src, IpAddr::V4(Ipv4Addr::from(c))); // response: receiver is client
        assert_eq!(recs[1].name.as_deref(), Some("www.github.com"));
        assert_eq!(recs[2].name, None, "TTL 60 s expired before t=500");
    }

    /// A DNS message: a query (`answer: None`) or a response with one A record.
    fn dns_msg(id: u16, q: &str, answer: Option<([u8; 4], u32)>) -> Vec<u8> {
        let an = u8::from(answer.is_some());
        let flags = if answer.is_some() {
            [0x81, 0x80]
        } else {
            [0x01, 0x00]
        };
        let mut m = vec![
            (id >> 8) as u8,
            id as u8,
            flags[0],
            flags[1],
            0,
            1,
            0,
            an,
            0,
            0,
            0,
            0,
        ];
        for l in q.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        if let Some((ip, ttl)) = answer {
            m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
            m.extend_from_slice(&ttl.to_be_bytes());
            m.extend_from_slice(&[0, 4]);
            m.extend_from_slice(&ip);
        }
        m
    }

    fn live_dns(
        src: ([u8; 4], u16),
        dst: ([u8; 4], u16),
        direction: Direction,
        payload: &[u8],
        t: i64,
    ) -> PayloadObservation<'_> {
        PayloadObservation {
            flow: FlowTuple::of_packet(
                L4Proto::Udp,
                (IpAddr::V4(Ipv4Addr::from(src.0)), src.1),
                (IpAddr::V4(Ipv4Addr::from(dst.0)), dst.1),
                direction,
            ),
            direction,
            ts: ts(t),
            tcp_seq: 0,
            tcp_flags: 0,
            payload,
        }
    }

    fn strict() -> FlowTable {
        FlowTable::new(FlowTableLimits {
            dns_answers_need_query: true,
            ..FlowTableLimits::default()
        })
    }

    const CLIENT: ([u8; 4], u16) = ([10, 0, 0, 2], 40000);
    const RESOLVER: ([u8; 4], u16) = ([10, 0, 0, 1], 53);
    const INNOCENT: [u8; 4] = [93, 184, 216, 34];

    #[test]
    fn unsolicited_dns_answer_teaches_nothing() {
        let mut answers = Vec::new();
        let mut t = strict();
        let ans = dns_msg(7, "www.dropbox.com", Some((INNOCENT, 300)));
        answers.extend(
            t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &ans, 0))
                .dns_answers,
        );
        assert!(std::mem::take(&mut answers).is_empty());
        assert_eq!(t.dns_entries().count(), 0);
        assert_eq!(t.stats().dns_answers_unmatched, 1);
        // Nor does it name the DNS flow it came on.
        assert_eq!(
            t.own_name(&FlowTuple::new(
                L4Proto::Udp,
                (IpAddr::V4(Ipv4Addr::from(CLIENT.0)), CLIENT.1),
                (IpAddr::V4(Ipv4Addr::from(RESOLVER.0)), RESOLVER.1)
            )),
            None
        );
    }

    #[test]
    fn dns_answer_must_match_txid_question_and_tuple() {
        let mut answers = Vec::new();
        let mut t = strict();
        let q = dns_msg(7, "www.dropbox.com", None);
        answers.extend(
            t.observe_payload(&live_dns(CLIENT, RESOLVER, Direction::Up, &q, 0))
                .dns_answers,
        );
        assert_eq!(t.stats().dns_queries_pending, 1);
        // Wrong transaction id.
        let a = dns_msg(8, "www.dropbox.com", Some((INNOCENT, 300)));
        answers.extend(
            t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &a, 0))
                .dns_answers,
        );
        // Right id, other question.
        let a = dns_msg(7, "dropbox.com", Some((INNOCENT, 300)));
        answers.extend(
            t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &a, 0))
                .dns_answers,
        );
        // Right id and question, from another server.
        let a = dns_msg(7, "www.dropbox.com", Some((INNOCENT, 300)));
        answers.extend(
            t.observe_payload(&live_dns(
                ([10, 0, 0, 9], 53),
                CLIENT,
                Direction::Down,
                &a,
                0,
            ))
            .dns_answers,
        );
        // To another client port.
        answers.extend(
            t.observe_payload(&live_dns(
                RESOLVER,
                (CLIENT.0, 40001),
                Direction::Down,
                &a,
                0,
            ))
            .dns_answers,
        );
        assert!(std::mem::take(&mut answers).is_empty());
        let st = t.stats();
        assert_eq!(st.dns_answers_unmatched, 3, "{st:?}");
        assert_eq!(st.dns_answers_wrong_question, 1, "{st:?}");
        assert_eq!(st.dns_answers_matched, 0);
        // The real answer (case of the name may differ) still matches, once.
        let a = dns_msg(7, "WWW.Dropbox.com", Some(([162, 125, 1, 1], 300)));
        answers.extend(
            t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &a, 1))
                .dns_answers,
        );
        let got = std::mem::take(&mut answers);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].ip, IpAddr::V4(Ipv4Addr::new(162, 125, 1, 1)));
        assert_eq!(got[0].name, "www.dropbox.com");
        assert_eq!(got[0].client, IpAddr::V4(Ipv4Addr::from(CLIENT.0)));
        answers.extend(
            t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &a, 1))
                .dns_answers,
        );
        assert!(
            std::mem::take(&mut answers).is_empty(),
            "a second answer is not matched"
        );
        assert_eq!(t.stats().dns_queries_pending, 0);
    }

    #[test]
    fn dns_query_from_the_internet_side_is_not_pending() {
        let mut answers = Vec::new();
        let mut t = strict();
        // A "query" sent toward the client does not make its answer trusted.
        let q = dns_msg(7, "www.dropbox.com", None);
        answers.extend(
            t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &q, 0))
                .dns_answers,
        );
        let a = dns_msg(7, "www.dropbox.com", Some((INNOCENT, 300)));
        answers.extend(
            t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &a, 0))
                .dns_answers,
        );
        assert!(std::mem::take(&mut answers).is_empty());
        assert_eq!(t.stats().dns_queries_pending, 0);
    }

    #[test]
    fn dns_queries_expire_and_are_bounded() {
        let mut answers = Vec::new();
        let mut t = FlowTable::new(FlowTableLimits {
            dns_answers_need_query: true,
            max_pending_dns: 4,
            dns_query_timeout: Duration::from_secs(5),
            ..FlowTableLimits::default()
        });
        let q = dns_msg(7, "a.example", None);
        answers.extend(
            t.observe_payload(&live_dns(CLIENT, RESOLVER, Direction::Up, &q, 0))
                .dns_answers,
        );
        let a = dns_msg(7, "a.example", Some((INNOCENT, 300)));
        // Past the timeout: the answer is late, refused.
        answers.extend(
            t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &a, 6))
                .dns_answers,
        );
        assert!(std::mem::take(&mut answers).is_empty());
        assert_eq!(t.stats().dns_answers_unmatched, 1);
        // Ten queries from ten ports: only four wait, the oldest six were evicted.
        for port in 0..10u16 {
            let q = dns_msg(port, "b.example", None);
            answers.extend(
                t.observe_payload(&live_dns(
                    (CLIENT.0, 50000 + port),
                    RESOLVER,
                    Direction::Up,
                    &q,
                    7,
                ))
                .dns_answers,
            );
        }
        let st = t.stats();
        assert_eq!(st.dns_queries_pending, 4);
        assert_eq!(st.dns_queries_evicted, 6);
        let a = dns_msg(9, "b.example", Some((INNOCENT, 300)));
        answers.extend(
            t.observe_payload(&live_dns(
                RESOLVER,
                (CLIENT.0, 50009),
                Direction::Down,
                &a,
                7,
            ))
            .dns_answers,
        );
        assert_eq!(
            std::mem::take(&mut answers).len(),
            1,
            "the newest query still matches"
        );
    }

    #[test]
    fn dns_over_tcp_answer_split_across_segments_matches_its_query() {
        let mut answers = Vec::new();
        let mut t = strict();
        fn seg(
            src: ([u8; 4], u16),
            dst: ([u8; 4], u16),
            direction: Direction,
            tcp_seq: u32,
            payload: &[u8],
        ) -> PayloadObservation<'_> {
            PayloadObservation {
                flow: FlowTuple::of_packet(
                    L4Proto::Tcp,
                    (IpAddr::V4(Ipv4Addr::from(src.0)), src.1),
                    (IpAddr::V4(Ipv4Addr::from(dst.0)), dst.1),
                    direction,
                ),
                direction,
                ts: ts(0),
                tcp_seq,
                tcp_flags: tcp_flags::ACK | tcp_flags::PSH,
                payload,
            }
        }
        let framed = |m: Vec<u8>| {
            let mut v = (m.len() as u16).to_be_bytes().to_vec();
            v.extend_from_slice(&m);
            v
        };
        let q = framed(dns_msg(9, "www.dropbox.com", None));
        answers.extend(
            t.observe_payload(&seg(CLIENT, RESOLVER, Direction::Up, 1001, &q))
                .dns_answers,
        );
        let a = framed(dns_msg(9, "www.dropbox.com", Some(([162, 125, 1, 1], 60))));
        let (x, y) = a.split_at(20);
        answers.extend(
            t.observe_payload(&seg(RESOLVER, CLIENT, Direction::Down, 5001, x))
                .dns_answers,
        );
        assert!(
            std::mem::take(&mut answers).is_empty(),
            "half an answer teaches nothing"
        );
        answers.extend(
            t.observe_payload(&seg(RESOLVER, CLIENT, Direction::Down, 5021, y))
                .dns_answers,
        );
        let got = std::mem::take(&mut answers);
        assert_eq!(got.len(), 1, "{:?}", t.stats());
        assert_eq!(got[0].ip, IpAddr::V4(Ipv4Addr::new(162, 125, 1, 1)));
    }

    #[test]
    fn dns_ttl_is_capped() {
        let mut answers = Vec::new();
        let mut t = strict();
        let q = dns_msg(7, "a.example", None);
        answers.extend(
            t.observe_payload(&live_dns(CLIENT, RESOLVER, Direction::Up, &q, 0))
                .dns_answers,
        );
        let a = dns_msg(7, "a.example", Some((INNOCENT, 4_000_000_000)));
        answers.extend(
            t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &a, 0))
                .dns_answers,
        );
        let got = std::mem::take(&mut answers);
        assert_eq!(got[0].ttl, Duration::from_secs(86_400));
        assert_eq!(t.stats().dns_ttl_capped, 1);
        let (_, _, expires) = t.dns_entries().next().unwrap();
        assert_eq!(expires, ts(86_400));
    }

    /// A DNS response for `q` with one HTTPS record, with or without an ECH config whose
    /// public_name is `public`.
    fn https_response(q: &str, public: Option<&str>) -> Vec<u8> {
        let mut m = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        for l in q.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 65, 0, 1]);
        let mut rd = vec![0, 1, 0, 0, 1, 0, 3, 2, b'h', b'2'];
        if let Some(pn) = public {
            let mut cfg = vec![7, 0, 0x20, 0, 1, 0xaa, 0, 4, 0, 1, 0, 1, 0, pn.len() as u8];
            cfg.extend_from_slice(pn.as_bytes());
            cfg.extend_from_slice(&[0, 0]);
            let mut one = vec![0xfe, 0x0d];
            one.extend_from_slice(&(cfg.len() as u16).to_be_bytes());
            one.extend_from_slice(&cfg);
            let mut list = (one.len() as u16).to_be_bytes().to_vec();
            list.extend_from_slice(&one);
            rd.extend_from_slice(&[0, 5]);
            rd.extend_from_slice(&(list.len() as u16).to_be_bytes());
            rd.extend_from_slice(&list);
        }
        m.extend_from_slice(&[0xc0, 12, 0, 65, 0, 1, 0, 0, 1, 0]);
        m.extend_from_slice(&(rd.len() as u16).to_be_bytes());
        m.extend_from_slice(&rd);
        m
    }

    #[test]
    fn ech_grease_told_from_real_by_dns_https_records() {
        let mut t = FlowTable::new(FlowTableLimits::default());
        let (c, r) = ([10, 0, 0, 2], [10, 0, 0, 1]);
        let a = https_response("secret.example", Some("public.example"));
        let b = https_response("plain.example", None);
        t.observe_packet(&pkt(r, 53, c, 3000, L4Proto::Udp, 0, 0, &a, 0));
        t.observe_packet(&pkt(r, 53, c, 3001, L4Proto::Udp, 0, 0, &b, 0));
        let cases = [
            ("public.example", true, Some(false)),
            ("plain.example", true, Some(true)),
            ("other.example", true, None),
            ("plain.example", false, None),
        ];
        for (i, (sni, ech, _)) in cases.iter().enumerate() {
            let h = hello_with(sni, *ech);
            t.observe_packet(&pkt(
                c,
                4000 + i as u16,
                [1, 1, 1, 1],
                443,
                L4Proto::Tcp,
                1,
                tcp_flags::ACK,
                &h,
                1,
            ));
        }
        for (i, (sni, _, want)) in cases.iter().enumerate() {
            let (rec, meta) = t
                .records_with_meta()
                .find(|(r, _)| r.sport == 4000 + i as u16)
                .expect("flow");
            assert_eq!(rec.name.as_deref(), Some(*sni));
            assert_eq!(meta.ech_grease, *want, "{sni}");
        }
    }

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

    #[test]
    fn naming_is_reported_once_and_meta_can_be_off() {
        for keep_meta in [true, false] {
            let mut t = FlowTable::new(FlowTableLimits {
                meta: keep_meta,
                ..FlowTableLimits::default()
            });
            let h = hello_with("once.example.org", true);
            let (a, b) = h.split_at(40);
            let mut named = Vec::new();
            // The second segment names the flow; a retransmission of it does not again.
            for (seq, part) in [(1u32, a), (41, b), (41, b)] {
                let got = t.observe_payload(&PayloadObservation {
                    flow: FlowTuple::of_packet(
                        L4Proto::Tcp,
                        (IpAddr::V4(Ipv4Addr::new(10, 1, 1, 1)), 40000),
                        (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 80)), 443),
                        Direction::Up,
                    ),
                    direction: Direction::Up,
                    ts: ts(0),
                    tcp_seq: seq,
                    tcp_flags: tcp_flags::ACK,
                    payload: part,
                });
                named.push(got.named.map(|(n, src)| (n.to_string(), src)));
            }
            assert_eq!(
                named,
                [
                    None,
                    Some(("once.example.org".to_string(), NameSource::Sni)),
                    None
                ]
            );
            let (rec, meta) = t.records_with_meta().next().expect("one flow");
            assert_eq!(rec.name.as_deref(), Some("once.example.org"));
            // The hello carried an ECH extension: only kept meta tells.
            assert_eq!(meta.ech, keep_meta, "meta kept: {keep_meta}");
        }
    }

    #[test]
    fn client_mac_follows_the_client_side() {
        let mut t = FlowTable::new(FlowTableLimits::default());
        let (user, server) = ([192, 168, 1, 9], [203, 0, 113, 5]);
        // The server's packet comes first (a capture that starts mid-flow), then the user's
        // SYN settles who the client is.
        let mut p = pkt(
            server,
            443,
            user,
            50000,
            L4Proto::Tcp,
            7,
            tcp_flags::ACK,
            &[],
            0,
        );
        p.src_mac = Some([2, 0, 0, 0, 0, 2]);
        t.observe_packet(&p);
        let mut p = pkt(
            user,
            50000,
            server,
            443,
            L4Proto::Tcp,
            1,
            tcp_flags::SYN,
            &[],
            1,
        );
        p.src_mac = Some([2, 0, 0, 0, 0, 1]);
        t.observe_packet(&p);
        let r: Vec<FlowRecord> = t.records().collect();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].src, IpAddr::V4(Ipv4Addr::from(user)));
        assert_eq!(r[0].src_mac, Some([2, 0, 0, 0, 0, 1]));
    }

    #[test]
    fn http_host_and_idle_expiry() {
        let mut t = FlowTable::new(FlowTableLimits {
            idle_timeout: Duration::from_secs(10),
            ..Default::default()
        });
        let req = b"GET /x HTTP/1.1\r\nHost: example.org\r\nUser-Agent: t\r\n\r\n";
        t.observe_packet(&pkt(
            [10, 0, 0, 2],
            5555,
            [1, 1, 1, 1],
            80,
            L4Proto::Tcp,
            9,
            tcp_flags::ACK,
            req,
            0,
        ));
        t.expire(ts(100));
        let s = t.stats();
        assert_eq!((s.flows, s.finished_flows, s.flows_expired), (0, 1, 1));
        let r: Vec<FlowRecord> = t.records().collect();
        assert_eq!(r[0].name.as_deref(), Some("example.org"));
        assert_eq!(r[0].name_source, Some(NameSource::Http));
        assert_eq!(t.drain_finished().len(), 1);
        assert_eq!(t.records().count(), 0);
    }

    fn live(
        proto: L4Proto,
        direction: Direction,
        tcp_seq: u32,
        payload: &[u8],
    ) -> PayloadObservation<'_> {
        PayloadObservation {
            flow: FlowTuple {
                proto,
                user_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                user_port: 40000,
                remote_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 80)),
                remote_port: 443,
            },
            direction,
            ts: ts(0),
            tcp_seq,
            tcp_flags: tcp_flags::ACK | tcp_flags::PSH,
            payload,
        }
    }

    #[test]
    fn observed_a_later_host_on_a_named_connection() {
        let mut t = FlowTable::new(FlowTableLimits::default());
        let first = b"GET / HTTP/1.1\r\nHost: allowed.example\r\n\r\n";
        let seen = t.observe_payload(&live(L4Proto::Tcp, Direction::Up, 1, first));
        assert_eq!(
            seen.named,
            Some((Arc::from("allowed.example"), NameSource::Http))
        );
        assert_eq!(seen.later_http_host, None);
        // The connection is kept alive and reused for another Host: the flow keeps its name,
        // and the later head's Host is reported.
        let later = b"GET /x HTTP/1.1\r\nHost: Blocked.Example:8080\r\n\r\n";
        let seq = 1 + first.len() as u32;
        let seen = t.observe_payload(&live(L4Proto::Tcp, Direction::Up, seq, later));
        assert_eq!(seen.named, None);
        assert_eq!(seen.later_http_host.as_deref(), Some("Blocked.Example"));
        // Not a request head, or from the server: nothing.
        let seen = t.observe_payload(&live(L4Proto::Tcp, Direction::Up, 999, b"\x16\x03\x01"));
        assert_eq!(seen, Observed::default());
        let answer = b"GET / HTTP/1.1\r\nHost: from.server\r\n\r\n";
        let seen = t.observe_payload(&live(L4Proto::Tcp, Direction::Down, 5, answer));
        assert_eq!(seen.later_http_host, None);
    }

    fn capture(name: &str) -> Vec<u8> {
        let path = format!("{}/../wire/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).expect("capture present")
    }

    #[test]
    fn observed_a_quic_flow_renamed_by_a_later_initial() {
        let mut t = FlowTable::new(FlowTableLimits::default());
        let decoy = capture("quic_draft29_initial.bin");
        let real = capture("quic_v2_initial.bin");
        let seen = t.observe_payload(&live(L4Proto::Udp, Direction::Up, 0, &decoy));
        assert_eq!(seen.named, Some((Arc::from("localhost"), NameSource::Quic)));
        assert_eq!(seen.quic_renamed, None);
        // The real Initial names another server: reported, once; the flow keeps its name.
        let seen = t.observe_payload(&live(L4Proto::Udp, Direction::Up, 0, &real));
        assert_eq!(seen.named, None);
        assert_eq!(seen.quic_renamed.as_deref(), Some("test"));
        let seen = t.observe_payload(&live(L4Proto::Udp, Direction::Up, 0, &real));
        assert_eq!(seen.quic_renamed, None);
        assert_eq!(t.stats().quic_renamed, 1);
        let user = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let server = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 80));
        assert_eq!(
            t.own_name(&FlowTuple::new(L4Proto::Udp, (user, 40000), (server, 443))),
            Some(("localhost", NameSource::Quic))
        );
    }

    #[test]
    fn observed_the_dns_answers_of_a_copy() {
        let mut t = strict();
        let q = dns_msg(7, "www.dropbox.com", None);
        let seen = t.observe_payload(&live_dns(CLIENT, RESOLVER, Direction::Up, &q, 0));
        assert_eq!(
            seen.named,
            Some((Arc::from("www.dropbox.com"), NameSource::Dns))
        );
        assert!(seen.dns_answers.is_empty());
        let a = dns_msg(7, "www.dropbox.com", Some(([162, 125, 1, 1], 300)));
        let seen = t.observe_payload(&live_dns(RESOLVER, CLIENT, Direction::Down, &a, 1));
        assert_eq!(
            seen.dns_answers,
            [DnsAnswer {
                client: IpAddr::V4(Ipv4Addr::from(CLIENT.0)),
                name: "www.dropbox.com".into(),
                ip: IpAddr::V4(Ipv4Addr::new(162, 125, 1, 1)),
                ttl: Duration::from_secs(300),
            }]
        );
        // A copy carries its own answers only: nothing is held for the next one.
        let seen = t.observe_payload(&live_dns(CLIENT, RESOLVER, Direction::Up, &q, 2));
        assert!(seen.dns_answers.is_empty());
    }

    #[test]
    fn names_from_the_network_are_validated_at_ingestion() {
        assert_eq!(clean_name("www.Example-1_a.com"), "www.Example-1_a.com");
        assert_eq!(clean_name("2001:db8::1"), "2001:db8::1");
        assert_eq!(clean_name("a\u{1b}[2J.com"), "a\\x1b\\x5b2J.com");
        assert_eq!(clean_name("caf\u{e9}.com"), "caf\\xc3\\xa9.com");
        assert_eq!(
            clean_name("a\\x41"),
            "a\\x5cx41",
            "a backslash is escaped too"
        );
        let long = clean_name(&"a".repeat(300)).into_owned();
        assert!(
            long.len() <= MAX_NAME_LEN && long.ends_with("\\~"),
            "{long}"
        );
        let long = clean_name(&"\u{e9}".repeat(300)).into_owned();
        assert!(
            long.len() <= MAX_NAME_LEN && long.ends_with("\\~"),
            "{long}"
        );
        assert_eq!(clean_name(&"a".repeat(253)).len(), 253);

        // Through the table: an SNI with an escape sequence and a multi-byte character.
        let mut t = FlowTable::new(FlowTableLimits::default());
        let sni = "x\u{1b}]0;owned\u{7}\u{e9}.example";
        t.observe_packet(&pkt(
            [10, 0, 0, 2],
            50000,
            [192, 0, 2, 1],
            443,
            L4Proto::Tcp,
            1,
            tcp_flags::ACK | tcp_flags::PSH,
            &hello(sni),
            0,
        ));
        let r: Vec<FlowRecord> = t.records().collect();
        assert_eq!(
            r[0].name.as_deref(),
            Some("x\\x1b\\x5d0\\x3bowned\\x07\\xc3\\xa9.example")
        );
        assert_eq!(r[0].name_source, Some(NameSource::Sni));
    }
}
