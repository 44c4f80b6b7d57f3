//! Aggregation: classify each [`FlowRecord`] with the catalog and add it up per app, per
//! user/device and per source IP, with per-hour buckets; names no app claims are grouped
//! by their registrable domain as "unknown".
//!
//! The [`Aggregator`] takes records one at a time (the live daemon feeds it continuously,
//! the offline importers stream files into it) and [`Aggregator::snapshot`] renders the
//! current state at any moment. Memory is bounded by the number of distinct apps, users,
//! source IPs and hours, plus at most `max_unknown_domains` unknown domains (the least
//! used are dropped and counted when the cap is hit).
//!
//! Classification: the record's name first (`matched_by` is its name source: "sni",
//! "quic", "dns", "http", "log"), the destination IP as fallback (`matched_by` = "ip").
//! A transaction is one record: one flow, or one log line.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use tollgate_catalog::Catalog;

use crate::record::{FlowRecord, L4Proto, NameSource};
use crate::users::Users;

mod domain_key;
mod flow_list;
mod id_set;
mod sample;
use arrayvec::ArrayVec;
use domain_key::DomainKey;
pub use flow_list::{FlowList, SPILL_ROWS};
use id_set::IdSet;
use sample::Sample;

// Keys come from traffic and logs (attacker-influenced), so a keyed, DoS-resistant hasher;
// ahash is several times faster than SipHash on these short strings.
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

/// Default cap on distinct unknown domains kept.
pub const DEFAULT_MAX_UNKNOWN_DOMAINS: usize = 50_000;
/// Source IPs listed per user, and example hosts per unknown domain.
const MAX_LISTED: usize = 16;

/// The per-app view: exactly what `tollgate apps --json` prints and the JSON report's
/// `apps` holds. `tag` is the caller's sanction tag for the app, `null` when untagged.
/// `users` and `ips` are distinct counts. Times are RFC 3339 (UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppView {
    pub id: String,
    pub name: String,
    pub category: String,
    pub risk_score: Option<f64>,
    /// Share of the score's weight that rests on known facts, 0–1 (the catalog's
    /// `confidence`; 1 for an admin's override). Absent in reports made before it existed.
    #[serde(default)]
    pub confidence: Option<f64>,
    pub tag: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub transactions: u64,
    pub users: u64,
    pub ips: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// How an app was recognised and when it was used (per-hour buckets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppDetail {
    pub id: String,
    /// Transactions per match method ("sni", "quic", "dns", "http", "log", "ip").
    pub matched_by: BTreeMap<String, u64>,
    /// The catalog rules that matched (at most 16), most used first.
    pub rules: Vec<String>,
    pub hourly: Vec<HourBucket>,
}

/// One hour of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourBucket {
    /// Start of the hour.
    pub hour: DateTime<Utc>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub transactions: u64,
}

/// A user (or, when no user name is known, a device).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserView {
    pub user: String,
    /// "user" or "device" (a device name from a DHCP lease or static map without a user).
    pub kind: String,
    pub devices: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub apps: u64,
    /// App ids by traffic, at most 5.
    pub top_apps: Vec<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub transactions: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// A source address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceView {
    pub ip: IpAddr,
    pub users: Vec<String>,
    pub apps: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub transactions: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// Names no app claims, grouped by registrable domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnknownDomain {
    pub domain: String,
    /// Example host names under it (at most 16).
    pub hosts: Vec<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub transactions: u64,
    pub users: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// Overall counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub records: u64,
    pub transactions: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub matched_transactions: u64,
    pub unknown_transactions: u64,
    /// Records with neither a name nor an IP any app claims.
    pub unnamed_transactions: u64,
    /// Records that carry a name (SNI, QUIC, DNS, HTTP Host or a log's host), whether or not
    /// an app claims it.
    #[serde(default)]
    pub named_transactions: u64,
    pub excluded_records: u64,
    pub outside_window_records: u64,
    /// Unknown domains dropped because of the cap.
    pub unknown_domains_dropped: u64,
}

/// One record as classified, for the `--flows` list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRow {
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub proto: L4Proto,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub name: Option<String>,
    /// Where the name came from: "sni", "quic", "dns", "http" (wire inputs) or "log".
    pub name_source: Option<NameSource>,
    pub user: Option<String>,
    pub device: Option<String>,
    pub app: Option<String>,
    pub matched_by: Option<String>,
    pub rule: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub packets_up: u64,
    pub packets_down: u64,
}

/// A point-in-time rendering of the aggregates, sorted by traffic (bytes up + down).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub apps: Vec<AppView>,
    pub app_details: Vec<AppDetail>,
    pub users: Vec<UserView>,
    pub sources: Vec<SourceView>,
    pub unknown_domains: Vec<UnknownDomain>,
    pub hourly: Vec<HourBucket>,
    pub totals: Totals,
    /// First and last time seen over everything counted.
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
}

/// Aggregation settings.
#[derive(Debug, Clone)]
pub struct AggregateOptions {
    /// Only records whose first_seen is in `[start, end)` count.
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub max_unknown_domains: usize,
    /// Keep every record as a [`FlowRow`] (memory grows with the input).
    pub keep_flows: bool,
}

impl Default for AggregateOptions {
    fn default() -> Self {
        AggregateOptions {
            window: None,
            max_unknown_domains: DEFAULT_MAX_UNKNOWN_DOMAINS,
            keep_flows: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    up: u64,
    down: u64,
    tx: u64,
}

impl Counts {
    fn add(&mut self, r: &FlowRecord) {
        self.up = self.up.saturating_add(r.bytes_up);
        self.down = self.down.saturating_add(r.bytes_down);
        self.tx = self.tx.saturating_add(1);
    }
    fn bytes(&self) -> u64 {
        self.up.saturating_add(self.down)
    }
    fn merge(&mut self, o: &Counts) {
        self.up = self.up.saturating_add(o.up);
        self.down = self.down.saturating_add(o.down);
        self.tx = self.tx.saturating_add(o.tx);
    }
}

#[derive(Debug, Clone, Copy)]
struct Span {
    first: DateTime<Utc>,
    last: DateTime<Utc>,
}

impl Span {
    fn new(r: &FlowRecord) -> Span {
        Span {
            first: r.first_seen,
            last: r.last_seen.max(r.first_seen),
        }
    }
    fn add(&mut self, r: &FlowRecord) {
        self.first = self.first.min(r.first_seen);
        self.last = self.last.max(r.last_seen).max(r.first_seen);
    }
    fn merge(&mut self, o: &Span) {
        self.first = self.first.min(o.first);
        self.last = self.last.max(o.last);
    }
}

#[derive(Debug, Clone)]
struct AppAgg {
    c: Counts,
    span: Span,
    /// Interned user keys and source addresses.
    users: IdSet,
    ips: IdSet,
    /// Matches per [`METHODS`] entry.
    matched_by: [u64; METHODS.len()],
    /// The rules that matched and how often (at most `MAX_LISTED`: a scan beats a hash).
    rules: Vec<(String, u64)>,
    hours: BTreeMap<i64, Counts>,
}

#[derive(Debug, Clone)]
struct UserAgg {
    is_user: bool,
    c: Counts,
    span: Span,
    /// A few examples of each ([`Sample`]: the same ones in any record order).
    devices: Sample<String>,
    ips: Sample<IpAddr>,
    /// Bytes per interned app id.
    apps: HashMap<u32, u64>,
}

#[derive(Debug, Clone)]
struct SourceAgg {
    c: Counts,
    span: Span,
    /// The first few users seen, in order (in place: no second cache line to read per record).
    users: ArrayVec<u32, MAX_LISTED>,
    apps: IdSet,
}

#[derive(Debug, Clone)]
struct UnknownAgg {
    c: Counts,
    span: Span,
    /// A few example hosts ([`Sample`]: the same ones in any record order).
    hosts: Sample<String>,
    users: IdSet,
}

/// The incremental aggregator.
#[derive(Debug, Clone, Default)]
pub struct Aggregator {
    opts: AggregateOptions,
    /// Per-record work uses small integer ids for app ids and user keys: one string
    /// lookup each, then integer sets.
    app_ids: HashMap<String, u32>,
    apps: Vec<(String, AppAgg)>,
    user_ids: HashMap<String, u32>,
    users: Vec<(String, UserAgg)>,
    source_ids: HashMap<IpAddr, u32>,
    sources: Vec<(IpAddr, SourceAgg)>,
    unknown: HashMap<DomainKey, UnknownAgg>,
    hours: BTreeMap<i64, Counts>,
    totals: Totals,
    span: Option<Span>,
    flows: FlowList,
}

/// What a match was made by, in the order reports list them (`matched_by` counts per app
/// are an array indexed by this, not a map keyed by the string).
const METHODS: [&str; 6] = ["dns", "http", "ip", "log", "quic", "sni"];
const BY_IP: usize = 2;

fn method(src: Option<NameSource>) -> usize {
    match src {
        Some(NameSource::Dns) => 0,
        Some(NameSource::Http) => 1,
        Some(NameSource::Log) | None => 3,
        Some(NameSource::Quic) => 4,
        Some(NameSource::Sni) => 5,
    }
}

/// The registrable part of a host name (`a.b.example.co.uk` → `example.co.uk`), by the Public
/// Suffix List compiled into the `psl` crate (no network at run time), so unknown domains
/// group the way browsers scope cookies: `x.github.io` and `y.github.io` are different
/// sites, `a.example.com.au` and `b.example.com.au` the same one. An address, a name that is
/// itself a public suffix (`co.uk`, `localhost`) or one the list cannot split stays as it is.
/// The list matches lowercase names; a name with capitals (an SNI is kept as sent) is
/// lowercased first, so `WWW.BBC.CO.UK` groups with `www.bbc.co.uk` under `bbc.co.uk`.
pub fn base_domain(name: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Cow::Borrowed(name);
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        let lower = name.to_ascii_lowercase();
        return Cow::Owned(psl::domain_str(&lower).unwrap_or(&lower).to_string());
    }
    Cow::Borrowed(psl::domain_str(name).unwrap_or(name))
}

/// The bucket of hour `h`.
fn hour_bucket(hours: &mut BTreeMap<i64, Counts>, h: i64) -> &mut Counts {
    hours.entry(h).or_default()
}

fn hour_of(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(3600)
}

fn hour_start(h: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(h.saturating_mul(3600), 0)
        .single()
        .unwrap_or_default()
}

/// Lists `v` in a list held in place, unless it is listed or the list is full.
fn push_listed(list: &mut ArrayVec<u32, MAX_LISTED>, v: u32) {
    if !list.is_full() && !list.contains(&v) {
        list.push(v);
    }
}

impl Aggregator {
    pub fn new(opts: AggregateOptions) -> Aggregator {
        Aggregator {
            opts,
            ..Aggregator::default()
        }
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Add one record.
    pub fn add(&mut self, rec: &FlowRecord, catalog: &Catalog, users: &Users) {
        self.totals.records += 1;
        if let Some((start, end)) = self.opts.window
            && (rec.first_seen < start || rec.first_seen >= end)
        {
            self.totals.outside_window_records += 1;
            return;
        }
        let who = users.resolve(rec);
        if who.excluded {
            self.totals.excluded_records += 1;
            return;
        }
        let key = who.user.or(who.device);
        let t = &mut self.totals;
        t.transactions += 1;
        t.bytes_up = t.bytes_up.saturating_add(rec.bytes_up);
        t.bytes_down = t.bytes_down.saturating_add(rec.bytes_down);
        match &mut self.span {
            Some(s) => s.add(rec),
            None => self.span = Some(Span::new(rec)),
        }
        let hour = hour_of(rec.first_seen);
        hour_bucket(&mut self.hours, hour).add(rec);

        let name = rec.name.as_deref().filter(|n| !n.is_empty());
        if name.is_some() {
            self.totals.named_transactions += 1;
        }
        let by_name = name.and_then(|n| catalog.classify_name(n));
        let (m, how) = match by_name {
            Some(m) => (Some(m), method(rec.name_source)),
            None => (
                if rec.dst.is_unspecified() {
                    None
                } else {
                    catalog.classify_ip(rec.dst)
                },
                BY_IP,
            ),
        };
        let app_id = m.map(|m| m.app.id.as_str());
        let app_ix = m.map(|m| self.intern_app(m.app.id.as_str(), Span::new(rec)));
        let key_ix = key.map(|k| self.intern_user(k, who.user.is_some(), Span::new(rec)));
        let src_ix = self.intern_source(rec.src, Span::new(rec));

        if let (Some(m), Some(ix)) = (m, app_ix) {
            self.totals.matched_transactions += 1;
            if let Some((_, a)) = self.apps.get_mut(ix as usize) {
                a.c.add(rec);
                a.span.add(rec);
                if let Some(k) = key_ix {
                    a.users.insert(k);
                }
                a.ips.insert(src_ix);
                if let Some(n) = a.matched_by.get_mut(how) {
                    *n += 1;
                }
                let full = a.rules.len() >= MAX_LISTED;
                match a.rules.iter_mut().find(|(r, _)| r == m.rule) {
                    Some((_, n)) => *n += 1,
                    None if !full => a.rules.push((m.rule.to_owned(), 1)),
                    None => {}
                }
                hour_bucket(&mut a.hours, hour).add(rec);
            }
        } else if let Some(n) = name {
            self.totals.unknown_transactions += 1;
            let dom = base_domain(n);
            let dom = dom.as_ref();
            if self.unknown.len() >= self.opts.max_unknown_domains.max(1)
                && !self.unknown.contains_key(dom)
            {
                self.prune_unknown();
            }
            let u = match self.unknown.get_mut(dom) {
                Some(u) => u,
                None => self
                    .unknown
                    .entry(DomainKey::new(dom))
                    .or_insert_with(|| UnknownAgg {
                        c: Counts::default(),
                        span: Span::new(rec),
                        hosts: Sample::default(),
                        users: IdSet::default(),
                    }),
            };
            u.c.add(rec);
            u.span.add(rec);
            u.hosts.add(n);
            if let Some(k) = key_ix
                && u.users.len() < 1024
            {
                u.users.insert(k);
            }
        } else {
            self.totals.unnamed_transactions += 1;
        }

        if let Some(k) = key_ix
            && let Some((_, u)) = self.users.get_mut(k as usize)
        {
            u.c.add(rec);
            u.span.add(rec);
            if let Some(d) = who.device
                && who.user.is_some()
            {
                u.devices.add(d);
            }
            u.ips.add(&rec.src);
            if let Some(ix) = app_ix {
                let b = rec.bytes_up.saturating_add(rec.bytes_down);
                let x = u.apps.entry(ix).or_default();
                *x = x.saturating_add(b);
            }
        }

        if let Some((_, s)) = self.sources.get_mut(src_ix as usize) {
            s.c.add(rec);
            s.span.add(rec);
            if let Some(k) = key_ix {
                push_listed(&mut s.users, k);
            }
            if let Some(ix) = app_ix {
                s.apps.insert(ix);
            }
        }

        if self.opts.keep_flows {
            self.flows.push(FlowRow {
                first_seen: rec.first_seen,
                last_seen: rec.last_seen,
                proto: rec.proto,
                src: rec.src,
                sport: rec.sport,
                dst: rec.dst,
                dport: rec.dport,
                name: rec.name.clone(),
                name_source: rec.name_source,
                user: who.user.map(str::to_owned),
                device: who.device.map(str::to_owned),
                app: app_id.map(str::to_owned),
                matched_by: m.and_then(|_| METHODS.get(how)).map(|h| (*h).to_owned()),
                rule: m.map(|m| m.rule.to_owned()),
                bytes_up: rec.bytes_up,
                bytes_down: rec.bytes_down,
                packets_up: rec.packets_up,
                packets_down: rec.packets_down,
            });
        }
    }

    /// Folds in what `other` counted: an aggregator with the same options that took the
    /// records of a later part of the same input (a log file read in parts on several
    /// threads). The result is what adding those records here would have given, but for the
    /// caps: listed sets stop at their caps in merge order, and unknown domains beyond their
    /// cap are pruned (and counted) as [`Self::add`] does.
    pub fn merge(&mut self, other: Aggregator) {
        let Aggregator {
            apps,
            users,
            sources,
            unknown,
            hours,
            totals,
            span,
            flows,
            ..
        } = other;
        let t = &mut self.totals;
        t.records += totals.records;
        t.transactions += totals.transactions;
        t.bytes_up = t.bytes_up.saturating_add(totals.bytes_up);
        t.bytes_down = t.bytes_down.saturating_add(totals.bytes_down);
        t.matched_transactions += totals.matched_transactions;
        t.unknown_transactions += totals.unknown_transactions;
        t.unnamed_transactions += totals.unnamed_transactions;
        t.named_transactions += totals.named_transactions;
        t.excluded_records += totals.excluded_records;
        t.outside_window_records += totals.outside_window_records;
        t.unknown_domains_dropped += totals.unknown_domains_dropped;
        match (&mut self.span, span) {
            (Some(s), Some(o)) => s.merge(&o),
            (s @ None, o) => *s = o,
            (Some(_), None) => {}
        }
        for (h, c) in hours {
            self.hours.entry(h).or_default().merge(&c);
        }
        // Other's interned numbers, as this one's.
        let app_map: Vec<u32> = apps
            .iter()
            .map(|(id, a)| self.intern_app(id, a.span))
            .collect();
        let user_map: Vec<u32> = users
            .iter()
            .map(|(k, u)| self.intern_user(k, u.is_user, u.span))
            .collect();
        let source_map: Vec<u32> = sources
            .iter()
            .map(|(ip, s)| self.intern_source(*ip, s.span))
            .collect();
        let map = |m: &[u32], ix: u32| m.get(ix as usize).copied();
        for ((_, o), &ix) in apps.into_iter().zip(&app_map) {
            let Some((_, a)) = self.apps.get_mut(ix as usize) else {
                continue;
            };
            a.c.merge(&o.c);
            a.span.merge(&o.span);
            for u in o.users.iter().filter_map(|u| map(&user_map, u)) {
                a.users.insert(u);
            }
            for s in o.ips.iter().filter_map(|s| map(&source_map, s)) {
                a.ips.insert(s);
            }
            for (mine, theirs) in a.matched_by.iter_mut().zip(o.matched_by) {
                *mine += theirs;
            }
            for (rule, n) in o.rules {
                let full = a.rules.len() >= MAX_LISTED;
                match a.rules.iter_mut().find(|(r, _)| *r == rule) {
                    Some((_, m)) => *m += n,
                    None if !full => a.rules.push((rule, n)),
                    None => {}
                }
            }
            for (h, c) in o.hours {
                a.hours.entry(h).or_default().merge(&c);
            }
        }
        for ((_, o), &ix) in users.into_iter().zip(&user_map) {
            let Some((_, u)) = self.users.get_mut(ix as usize) else {
                continue;
            };
            u.c.merge(&o.c);
            u.span.merge(&o.span);
            u.devices.merge(&o.devices);
            u.ips.merge(&o.ips);
            for (app, b) in o.apps {
                if let Some(app) = map(&app_map, app) {
                    let x = u.apps.entry(app).or_default();
                    *x = x.saturating_add(b);
                }
            }
        }
        for ((_, o), &ix) in sources.into_iter().zip(&source_map) {
            let Some((_, s)) = self.sources.get_mut(ix as usize) else {
                continue;
            };
            s.c.merge(&o.c);
            s.span.merge(&o.span);
            for u in o.users.iter().filter_map(|&u| map(&user_map, u)) {
                push_listed(&mut s.users, u);
            }
            for a in o.apps.iter().filter_map(|a| map(&app_map, a)) {
                s.apps.insert(a);
            }
        }
        for (dom, o) in unknown {
            if self.unknown.len() >= self.opts.max_unknown_domains.max(1)
                && !self.unknown.contains_key(dom.as_str())
            {
                self.prune_unknown();
            }
            let u = self.unknown.entry(dom).or_insert_with(|| UnknownAgg {
                c: Counts::default(),
                span: o.span,
                hosts: Sample::default(),
                users: IdSet::default(),
            });
            u.c.merge(&o.c);
            u.span.merge(&o.span);
            u.hosts.merge(&o.hosts);
            for k in o.users.iter().filter_map(|k| map(&user_map, k)) {
                if u.users.len() >= 1024 {
                    break;
                }
                u.users.insert(k);
            }
        }
        self.flows.append(flows);
    }

    fn intern_app(&mut self, id: &str, span: Span) -> u32 {
        if let Some(&ix) = self.app_ids.get(id) {
            return ix;
        }
        let ix = u32::try_from(self.apps.len()).unwrap_or(u32::MAX);
        self.app_ids.insert(id.to_owned(), ix);
        self.apps.push((
            id.to_owned(),
            AppAgg {
                c: Counts::default(),
                span,
                users: IdSet::default(),
                ips: IdSet::default(),
                matched_by: [0; METHODS.len()],
                rules: Vec::new(),
                hours: BTreeMap::new(),
            },
        ));
        ix
    }

    fn intern_user(&mut self, key: &str, is_user: bool, span: Span) -> u32 {
        if let Some(&ix) = self.user_ids.get(key) {
            return ix;
        }
        let ix = u32::try_from(self.users.len()).unwrap_or(u32::MAX);
        self.user_ids.insert(key.to_owned(), ix);
        self.users.push((
            key.to_owned(),
            UserAgg {
                is_user,
                c: Counts::default(),
                span,
                devices: Sample::default(),
                ips: Sample::default(),
                apps: HashMap::default(),
            },
        ));
        ix
    }

    fn intern_source(&mut self, src: IpAddr, span: Span) -> u32 {
        if let Some(&ix) = self.source_ids.get(&src) {
            return ix;
        }
        let ix = u32::try_from(self.sources.len()).unwrap_or(u32::MAX);
        self.source_ids.insert(src, ix);
        self.sources.push((
            src,
            SourceAgg {
                c: Counts::default(),
                span,
                users: ArrayVec::new(),
                apps: IdSet::default(),
            },
        ));
        ix
    }

    fn user_name(&self, ix: u32) -> &str {
        self.users.get(ix as usize).map_or("", |u| u.0.as_str())
    }

    fn app_name(&self, ix: u32) -> &str {
        self.apps.get(ix as usize).map_or("", |a| a.0.as_str())
    }

    /// Drop the less used half of the unknown domains.
    fn prune_unknown(&mut self) {
        let mut counts: Vec<u64> = self.unknown.values().map(|u| u.c.tx).collect();
        let mid = counts.len() / 2;
        counts.select_nth_unstable(mid);
        let cut = counts.get(mid).copied().unwrap_or(0);
        let before = self.unknown.len();
        self.unknown.retain(|_, u| u.c.tx > cut);
        // Everything had the same count: drop arbitrarily down to half.
        if self.unknown.len() == before {
            let keys: Vec<DomainKey> = self.unknown.keys().take(mid).cloned().collect();
            for k in keys {
                self.unknown.remove(k.as_str());
            }
        }
        self.totals.unknown_domains_dropped += (before - self.unknown.len()) as u64;
    }

    /// Drop hour buckets (overall and per app) that start before `t`; the other counters
    /// keep their totals. A long-running daemon calls this to bound memory.
    pub fn forget_hours_before(&mut self, t: DateTime<Utc>) {
        let h = hour_of(t);
        self.hours = self.hours.split_off(&h);
        for (_, a) in &mut self.apps {
            a.hours = a.hours.split_off(&h);
        }
    }

    /// The flows kept with `keep_flows`.
    pub fn flows(&self) -> &FlowList {
        &self.flows
    }

    /// The flows kept with `keep_flows`, handed over.
    pub fn take_flows(&mut self) -> FlowList {
        std::mem::take(&mut self.flows)
    }

    /// Render the current state. `tag` gives an app's sanction tag (`None` = untagged).
    pub fn snapshot(&self, catalog: &Catalog, tag: &dyn Fn(&str) -> Option<String>) -> Snapshot {
        let mut apps: Vec<(&String, &AppAgg)> = self.apps.iter().map(|(k, a)| (k, a)).collect();
        apps.sort_by(|a, b| {
            b.1.c
                .bytes()
                .cmp(&a.1.c.bytes())
                .then(b.1.c.tx.cmp(&a.1.c.tx))
                .then(a.0.cmp(b.0))
        });
        let hourly = |h: &BTreeMap<i64, Counts>| -> Vec<HourBucket> {
            h.iter()
                .map(|(k, c)| HourBucket {
                    hour: hour_start(*k),
                    bytes_up: c.up,
                    bytes_down: c.down,
                    transactions: c.tx,
                })
                .collect()
        };
        let app_views = apps
            .iter()
            .map(|(id, a)| {
                let app = catalog.app(id);
                AppView {
                    id: (*id).clone(),
                    name: app.map_or_else(|| (*id).clone(), |x| x.name.clone()),
                    category: app.map_or_else(String::new, |x| x.category.clone()),
                    risk_score: catalog.risk_score(id),
                    confidence: catalog.risk_confidence(id),
                    tag: tag(id),
                    bytes_up: a.c.up,
                    bytes_down: a.c.down,
                    transactions: a.c.tx,
                    users: a.users.len() as u64,
                    ips: a.ips.len() as u64,
                    first_seen: a.span.first,
                    last_seen: a.span.last,
                }
            })
            .collect();
        let app_details = apps
            .iter()
            .map(|(id, a)| {
                let mut rules: Vec<(&String, &u64)> = a.rules.iter().map(|(r, n)| (r, n)).collect();
                rules.sort_by(|x, y| y.1.cmp(x.1).then(x.0.cmp(y.0)));
                AppDetail {
                    id: (*id).clone(),
                    matched_by: METHODS
                        .iter()
                        .zip(a.matched_by)
                        .filter(|(_, n)| *n > 0)
                        .map(|(k, n)| ((*k).to_owned(), n))
                        .collect(),
                    rules: rules.into_iter().map(|(r, _)| r.clone()).collect(),
                    hourly: hourly(&a.hours),
                }
            })
            .collect();
        let mut users: Vec<UserView> = self
            .users
            .iter()
            .map(|(k, u)| {
                let mut top: Vec<(&str, u64)> = u
                    .apps
                    .iter()
                    .map(|(ix, b)| (self.app_name(*ix), *b))
                    .collect();
                top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                let devices = u.devices.sorted();
                let ips = u.ips.sorted();
                UserView {
                    user: k.clone(),
                    kind: if u.is_user { "user" } else { "device" }.to_owned(),
                    devices,
                    ips,
                    apps: u.apps.len() as u64,
                    top_apps: top.into_iter().take(5).map(|(a, _)| a.to_owned()).collect(),
                    bytes_up: u.c.up,
                    bytes_down: u.c.down,
                    transactions: u.c.tx,
                    first_seen: u.span.first,
                    last_seen: u.span.last,
                }
            })
            .collect();
        users.sort_by(|a, b| {
            (b.bytes_up + b.bytes_down)
                .cmp(&(a.bytes_up + a.bytes_down))
                .then(a.user.cmp(&b.user))
        });
        let mut sources: Vec<SourceView> = self
            .sources
            .iter()
            .map(|(ip, s)| {
                let mut users: Vec<String> = s
                    .users
                    .iter()
                    .map(|ix| self.user_name(*ix).to_owned())
                    .collect();
                users.sort();
                SourceView {
                    ip: *ip,
                    users,
                    apps: s.apps.len() as u64,
                    bytes_up: s.c.up,
                    bytes_down: s.c.down,
                    transactions: s.c.tx,
                    first_seen: s.span.first,
                    last_seen: s.span.last,
                }
            })
            .collect();
        sources.sort_by(|a, b| {
            (b.bytes_up + b.bytes_down)
                .cmp(&(a.bytes_up + a.bytes_down))
                .then(a.ip.cmp(&b.ip))
        });
        let mut unknown: Vec<UnknownDomain> = self
            .unknown
            .iter()
            .map(|(d, u)| {
                let hosts = u.hosts.sorted();
                UnknownDomain {
                    domain: d.as_str().to_owned(),
                    hosts,
                    bytes_up: u.c.up,
                    bytes_down: u.c.down,
                    transactions: u.c.tx,
                    users: u.users.len() as u64,
                    first_seen: u.span.first,
                    last_seen: u.span.last,
                }
            })
            .collect();
        unknown.sort_by(|a, b| {
            b.transactions
                .cmp(&a.transactions)
                .then(a.domain.cmp(&b.domain))
        });
        Snapshot {
            apps: app_views,
            app_details,
            users,
            sources,
            unknown_domains: unknown,
            hourly: hourly(&self.hours),
            totals: self.totals.clone(),
            first_seen: self.span.map(|s| s.first),
            last_seen: self.span.map(|s| s.last),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::{StaticUser, UsersConfig};
    use tollgate_catalog::CatalogConfig;

    const DATA: &str = r#"{"apps":[
      {"id":"dropbox","name":"Dropbox","category":"Cloud storage","domains":["dropbox.com","*.dropbox.com"],"ip_ranges":["162.125.0.0/16"],"attributes":{"mfa":true,"soc2":true}},
      {"id":"slack","name":"Slack","category":"Collaboration","domains":["*.slack.com"]}
    ]}"#;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[allow(clippy::too_many_arguments, reason = "test record builder")]
    fn rec(
        src: &str,
        dst: &str,
        name: Option<&str>,
        ns: NameSource,
        up: u64,
        down: u64,
        at: &str,
        user: Option<&str>,
    ) -> FlowRecord {
        FlowRecord {
            proto: L4Proto::Tcp,
            src: src.parse().expect("src"),
            sport: 40000,
            dst: dst.parse().expect("dst"),
            dport: 443,
            name: name.map(str::to_owned),
            name_source: name.map(|_| ns),
            bytes_up: up,
            bytes_down: down,
            packets_up: 1,
            packets_down: 1,
            first_seen: t(at),
            last_seen: t(at),
            src_mac: None,
            user: user.map(str::to_owned),
        }
    }

    /// Records over many users, sources, apps, unknown domains and hours: enough for the big
    /// id sets to turn into bitmaps.
    fn many_records(n: u32) -> Vec<FlowRecord> {
        let names = [
            Some("www.dropbox.com"),
            Some("app.slack.com"),
            None,
            Some("x.unknown-thing.io"),
        ];
        (0..n)
            .map(|i| {
                let src = format!("10.{}.{}.{}", i % 3, (i / 7) % 200, 1 + i % 250);
                let at = format!("2025-11-26T{:02}:{:02}:00Z", (i / 60) % 24, i % 60);
                let user = format!("user{}", i % 37);
                let unknown = format!("h{}.site{}.example", i % 5, i % 700);
                let name = match names[(i % 5) as usize % names.len()] {
                    Some("x.unknown-thing.io") => Some(unknown.as_str()),
                    other => other,
                };
                rec(
                    &src,
                    if i % 3 == 0 { "162.125.1.1" } else { "9.9.9.9" },
                    name,
                    if i % 2 == 0 {
                        NameSource::Sni
                    } else {
                        NameSource::Log
                    },
                    u64::from(i % 100),
                    u64::from(i % 1000),
                    &at,
                    (i % 4 != 0).then_some(user.as_str()),
                )
            })
            .collect()
    }

    #[test]
    fn merged_parts_report_what_one_aggregator_reports() {
        let cat = Catalog::from_data(DATA, &CatalogConfig::default(), &[], chrono::Utc::now())
            .expect("catalog");
        let users = Users::default();
        let opts = AggregateOptions {
            keep_flows: true,
            ..AggregateOptions::default()
        };
        let recs = many_records(6000);
        let mut whole = Aggregator::new(opts.clone());
        for r in &recs {
            whole.add(r, &cat, &users);
        }
        let want = whole.snapshot(&cat, &|_| None);
        assert!(want.sources.len() > 1000, "enough sources for bitmaps");
        for cuts in [
            vec![0, 6000],
            vec![1, 3000, 5999],
            vec![100, 101, 2500, 4000],
        ] {
            let mut first = Aggregator::new(opts.clone());
            let mut parts = Vec::new();
            let mut from = 0;
            for (k, &to) in cuts.iter().enumerate() {
                let mut a = Aggregator::new(opts.clone());
                for r in &recs[from..to] {
                    if k == 0 {
                        first.add(r, &cat, &users);
                    } else {
                        a.add(r, &cat, &users);
                    }
                }
                if k > 0 {
                    parts.push(a);
                }
                from = to;
            }
            let mut last = Aggregator::new(opts.clone());
            for r in &recs[from..] {
                last.add(r, &cat, &users);
            }
            parts.push(last);
            for p in parts {
                first.merge(p);
            }
            let got = first.snapshot(&cat, &|_| None);
            assert_eq!(got, want, "cut at {cuts:?}");
            assert_eq!(first.flows(), whole.flows(), "flows in input order");
        }
    }

    /// The same records in another order (a capture imported on several threads gives them
    /// shard by shard) give the same report: capped lists (example hosts of an unknown
    /// domain, a user's devices and addresses) are [`Sample`]s, not the first values that
    /// came. Each list here has more values than its cap.
    #[test]
    fn record_order_does_not_change_the_report() {
        let cat = Catalog::from_data(DATA, &CatalogConfig::default(), &[], chrono::Utc::now())
            .expect("catalog");
        let users = Users::default();
        let recs: Vec<FlowRecord> = (0..200u32)
            .map(|i| {
                let host = format!("h{}.many-hosts.example", i % 40);
                rec(
                    &format!("10.0.{}.{}", i % 3, 1 + i % 40),
                    "9.9.9.9",
                    Some(host.as_str()),
                    NameSource::Sni,
                    1,
                    2,
                    "2025-11-26T10:00:00Z",
                    Some("alice"),
                )
            })
            .collect();
        let snapshot = |order: &mut dyn Iterator<Item = &FlowRecord>| {
            let mut a = Aggregator::new(AggregateOptions::default());
            for r in order {
                a.add(r, &cat, &users);
            }
            a.snapshot(&cat, &|_| None)
        };
        let forward = snapshot(&mut recs.iter());
        let u = forward
            .unknown_domains
            .iter()
            .find(|u| u.domain == "many-hosts.example")
            .expect("the unknown domain");
        assert_eq!(u.hosts.len(), MAX_LISTED);
        let alice = forward
            .users
            .iter()
            .find(|u| u.user == "alice")
            .expect("alice");
        assert_eq!(alice.ips.len(), MAX_LISTED);
        assert_eq!(snapshot(&mut recs.iter().rev()), forward);
        let odd_first = recs.iter().skip(1).step_by(2).chain(recs.iter().step_by(2));
        assert_eq!(
            snapshot(&mut odd_first.collect::<Vec<_>>().into_iter()),
            forward
        );
    }

    #[test]
    fn aggregation_math() {
        let cat = Catalog::from_data(DATA, &CatalogConfig::default(), &[], chrono::Utc::now())
            .expect("catalog");
        let users = Users::from_config(&UsersConfig {
            static_users: vec![StaticUser {
                ip: Some("10.0.0.2".parse().expect("ip")),
                user: Some("bob".into()),
                ..StaticUser::default()
            }],
            exclude_ips: vec!["10.0.0.99".into()],
            ..UsersConfig::default()
        })
        .expect("users");
        let mut agg = Aggregator::new(AggregateOptions {
            keep_flows: true,
            ..AggregateOptions::default()
        });
        let recs = [
            rec(
                "10.0.0.1",
                "0.0.0.0",
                Some("www.dropbox.com"),
                NameSource::Log,
                100,
                1000,
                "2025-11-26T08:10:00Z",
                Some("alice"),
            ),
            rec(
                "10.0.0.2",
                "1.2.3.4",
                Some("DL.Dropbox.com"),
                NameSource::Sni,
                50,
                500,
                "2025-11-26T09:20:00Z",
                None,
            ),
            rec(
                "10.0.0.2",
                "162.125.1.1",
                None,
                NameSource::Sni,
                1,
                2,
                "2025-11-26T09:30:00Z",
                None,
            ),
            rec(
                "10.0.0.3",
                "0.0.0.0",
                Some("app.slack.com"),
                NameSource::Quic,
                7,
                8,
                "2025-11-26T08:00:00Z",
                None,
            ),
            rec(
                "10.0.0.3",
                "0.0.0.0",
                Some("a.unknown-thing.io"),
                NameSource::Dns,
                3,
                4,
                "2025-11-26T08:00:00Z",
                None,
            ),
            rec(
                "10.0.0.3",
                "0.0.0.0",
                Some("b.unknown-thing.io"),
                NameSource::Dns,
                3,
                4,
                "2025-11-26T08:05:00Z",
                None,
            ),
            rec(
                "10.0.0.3",
                "9.9.9.9",
                None,
                NameSource::Dns,
                1,
                1,
                "2025-11-26T08:05:00Z",
                None,
            ),
            rec(
                "10.0.0.99",
                "0.0.0.0",
                Some("www.dropbox.com"),
                NameSource::Log,
                1,
                1,
                "2025-11-26T08:05:00Z",
                None,
            ),
        ];
        for r in &recs {
            agg.add(r, &cat, &users);
        }
        let snap = agg.snapshot(&cat, &|id| {
            (id == "dropbox").then(|| "sanctioned".to_owned())
        });
        let d = snap
            .apps
            .iter()
            .find(|a| a.id == "dropbox")
            .expect("dropbox");
        assert_eq!(
            (d.bytes_up, d.bytes_down, d.transactions, d.users, d.ips),
            (151, 1502, 3, 2, 2)
        );
        assert_eq!(d.first_seen, t("2025-11-26T08:10:00Z"));
        assert_eq!(d.last_seen, t("2025-11-26T09:30:00Z"));
        assert_eq!(d.tag.as_deref(), Some("sanctioned"));
        assert_eq!(d.category, "Cloud storage");
        let s = snap.apps.iter().find(|a| a.id == "slack").expect("slack");
        assert_eq!(
            (s.transactions, s.users, s.ips, s.tag.clone()),
            (1, 0, 1, None)
        );
        let dd = snap
            .app_details
            .iter()
            .find(|a| a.id == "dropbox")
            .expect("detail");
        assert_eq!(dd.matched_by.get("log"), Some(&1));
        assert_eq!(dd.matched_by.get("sni"), Some(&1));
        assert_eq!(dd.matched_by.get("ip"), Some(&1));
        assert_eq!(dd.hourly.len(), 2);
        assert_eq!(dd.hourly.iter().map(|h| h.transactions).sum::<u64>(), 3);
        assert_eq!(snap.unknown_domains.len(), 1);
        let u = &snap.unknown_domains[0];
        assert_eq!(
            (u.domain.as_str(), u.transactions, u.hosts.len()),
            ("unknown-thing.io", 2, 2)
        );
        let tot = &snap.totals;
        assert_eq!(
            (tot.records, tot.transactions, tot.excluded_records),
            (8, 7, 1)
        );
        assert_eq!(
            (
                tot.matched_transactions,
                tot.unknown_transactions,
                tot.unnamed_transactions
            ),
            (4, 2, 1)
        );
        let named = agg
            .flows()
            .iter()
            .map(|f| f.expect("read"))
            .filter(|f| f.name.as_deref().is_some_and(|n| !n.is_empty()))
            .count();
        assert_eq!(tot.named_transactions, named as u64);
        assert_eq!(tot.bytes_up, 100 + 50 + 1 + 7 + 3 + 3 + 1);
        let bob = snap.users.iter().find(|u| u.user == "bob").expect("bob");
        assert_eq!((bob.transactions, bob.apps, bob.bytes_down), (2, 1, 502));
        assert_eq!(snap.sources.len(), 3);
        assert_eq!(agg.flows().len(), 7);
        let second = agg.flows().iter().nth(1).expect("two rows").expect("read");
        assert_eq!(second.matched_by.as_deref(), Some("sni"));
        // The per-app view has exactly the fields of `tollgate apps --json`.
        let v = serde_json::to_value(d).expect("json");
        let mut keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "bytes_down",
                "bytes_up",
                "category",
                "confidence",
                "first_seen",
                "id",
                "ips",
                "last_seen",
                "name",
                "risk_score",
                "tag",
                "transactions",
                "users"
            ]
        );
        assert_eq!(v["first_seen"], "2025-11-26T08:10:00Z");
        assert_eq!(
            serde_json::to_value(s).expect("json")["tag"],
            serde_json::Value::Null
        );
        // Old hour buckets can be dropped; totals stay.
        agg.forget_hours_before(t("2025-11-26T09:00:00Z"));
        let snap = agg.snapshot(&cat, &|_| None);
        let dd = snap
            .app_details
            .iter()
            .find(|a| a.id == "dropbox")
            .expect("detail");
        assert_eq!(dd.hourly.len(), 1);
        assert_eq!(snap.hourly.len(), 1);
        assert_eq!(
            snap.apps
                .iter()
                .find(|a| a.id == "dropbox")
                .map(|a| a.transactions),
            Some(3)
        );
    }

    #[test]
    fn window_and_unknown_cap() {
        let cat = Catalog::from_data(DATA, &CatalogConfig::default(), &[], chrono::Utc::now())
            .expect("catalog");
        let mut agg = Aggregator::new(AggregateOptions {
            window: Some((t("2025-11-26T08:00:00Z"), t("2025-11-26T09:00:00Z"))),
            max_unknown_domains: 4,
            keep_flows: false,
        });
        for i in 0..10 {
            let name = format!("h.d{i}.example");
            agg.add(
                &rec(
                    "10.0.0.1",
                    "0.0.0.0",
                    Some(&name),
                    NameSource::Dns,
                    1,
                    1,
                    "2025-11-26T08:30:00Z",
                    None,
                ),
                &cat,
                &Users::default(),
            );
        }
        agg.add(
            &rec(
                "10.0.0.1",
                "0.0.0.0",
                Some("x.slack.com"),
                NameSource::Sni,
                1,
                1,
                "2025-11-26T09:00:00Z",
                None,
            ),
            &cat,
            &Users::default(),
        );
        let snap = agg.snapshot(&cat, &|_| None);
        assert!(snap.unknown_domains.len() <= 4);
        assert_eq!(
            snap.totals.unknown_domains_dropped as usize + snap.unknown_domains.len(),
            10
        );
        assert_eq!(snap.totals.outside_window_records, 1);
        assert!(snap.apps.is_empty());
    }

    #[test]
    fn base_domains() {
        assert_eq!(base_domain("a.b.example.com"), "example.com");
        assert_eq!(base_domain("example.com"), "example.com");
        assert_eq!(base_domain("www.bbc.co.uk"), "bbc.co.uk");
        assert_eq!(base_domain("a.b.example.co.uk"), "example.co.uk");
        // Suffixes the old two-label heuristic got wrong: three-label public suffixes,
        // private-section suffixes where each customer is its own site.
        assert_eq!(base_domain("cdn.shop.example.com.au"), "example.com.au");
        assert_eq!(base_domain("a.b.c.kawasaki.jp"), "b.c.kawasaki.jp");
        assert_eq!(base_domain("x.github.io"), "x.github.io");
        assert_eq!(base_domain("deep.x.github.io"), "x.github.io");
        assert_eq!(
            base_domain("bucket.s3.amazonaws.com"),
            "bucket.s3.amazonaws.com"
        );
        assert_eq!(base_domain("foo.blogspot.com"), "foo.blogspot.com");
        // A public suffix alone, a single label, an unknown TLD, addresses: as they are
        // (an unknown TLD counts as one label, as the list's default rule says).
        assert_eq!(base_domain("co.uk"), "co.uk");
        assert_eq!(base_domain("localhost"), "localhost");
        assert_eq!(base_domain("x.y.z.w.v"), "w.v");
        assert_eq!(base_domain("10.0.0.5"), "10.0.0.5");
        assert_eq!(base_domain("2001:db8::1"), "2001:db8::1");
        assert_eq!(base_domain("[2001:db8::1]"), "[2001:db8::1]");
        assert_eq!(base_domain(""), "");
        // Capitals (an SNI as sent) group with the lowercase name; the list alone would
        // not recognise `CO.UK` and would group every such name under it.
        assert_eq!(base_domain("WWW.BBC.CO.UK"), "bbc.co.uk");
        assert_eq!(base_domain("Deep.X.GitHub.io"), "x.github.io");
        assert_eq!(psl::domain_str("WWW.BBC.CO.UK"), Some("CO.UK"));
    }
}
