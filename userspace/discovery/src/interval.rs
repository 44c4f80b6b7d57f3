//! Discovery per interval: what each user sent to each app since the last report, for the
//! management hub.
//!
//! The live flow table holds absolute counters; flows leave it when idle. The meter remembers
//! how much of each flow it already reported, so each byte is reported once: a flow still
//! live is reported by its growth since the last interval, a flow that left the table by
//! what it had not reported yet. A flow counts once, in the first interval it appears in.

use std::collections::HashMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tollgate_catalog::Catalog;

use crate::aggregate::base_domain;
use crate::record::{FlowRecord, FlowTuple, L4Proto};
use crate::users::Users;

/// The most distinct (app, user, device) rows and unknown domains in one interval; more are
/// folded into the row of the user `"(other)"` / the domain `"(other)"` and counted.
pub const MAX_ROWS: usize = 20_000;
/// How long a flow that left the table is remembered: the kernel's flow map may hand it back
/// after a daemon restart (or a table eviction) until its entry ages out there.
pub const GONE_HORIZON_SECS: i64 = 3600;
/// The most flows remembered after they left the table; the oldest are forgotten first.
pub const MAX_GONE: usize = 262_144;

/// One app's traffic from one user (or device) in an interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppUsageRow {
    pub app_id: String,
    /// The user map's name, or the device's address where no user is known.
    pub user: String,
    pub device: String,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub flows: u64,
    /// Of `flows`, those the gateway blocked ([`IntervalMeter::flow_blocked`]).
    pub blocked_flows: u64,
}

/// Traffic to a registrable domain no catalog app claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainUsageRow {
    pub domain: String,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub flows: u64,
}

/// One interval's usage, rows sorted for a stable upload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntervalUsage {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub apps: Vec<AppUsageRow>,
    pub unknown_domains: Vec<DomainUsageRow>,
    /// Rows folded into `(other)` because the interval hit [`MAX_ROWS`].
    pub rows_folded: u64,
}

impl IntervalUsage {
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty() && self.unknown_domains.is_empty()
    }
}

/// The unit of a flow's start time in its [`FlowId`]: 10 ms.
///
/// A live flow's start is the kernel's monotonic timestamp turned into wall-clock time with an
/// offset sampled at each walk of the flow map, so the same flow's start moves by a few
/// microseconds from one daemon run to the next. Compared to the microsecond, a flow that a
/// restarted daemon found again in the kernel's map looked new about one time in six and was
/// reported twice. Starts are kept in 10 ms ticks and matched with a tick either side; two
/// flows on one 5-tuple that start within 20 ms of each other are taken for one (TIME_WAIT
/// keeps a client from reusing a 5-tuple that fast).
pub const FIRST_SEEN_TICK_MICROS: i64 = 10_000;

/// A flow, told apart from a later one on the same 5-tuple by when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FlowId {
    proto: L4Proto,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    /// In [`FIRST_SEEN_TICK_MICROS`] ticks.
    first_seen: i64,
}

impl FlowId {
    fn of(rec: &FlowRecord) -> Self {
        Self {
            proto: rec.proto,
            src: rec.src,
            sport: rec.sport,
            dst: rec.dst,
            dport: rec.dport,
            first_seen: rec
                .first_seen
                .timestamp_micros()
                .div_euclid(FIRST_SEEN_TICK_MICROS),
        }
    }

    /// This id, then the same flow started a tick earlier or later.
    fn candidates(self) -> [FlowId; 3] {
        let shifted = |d: i64| FlowId {
            first_seen: self.first_seen.saturating_add(d),
            ..self
        };
        [self, shifted(-1), shifted(1)]
    }
}

#[derive(Default)]
struct Pending {
    apps: HashMap<(String, String, String), AppUsageRow>,
    domains: HashMap<String, DomainUsageRow>,
    folded: u64,
}

/// What the meter already reported, kept across a restart of the daemon: the kernel's flow
/// map outlives the daemon, so without it a restarted daemon would report every flow still
/// in the map a second time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterCheckpoint {
    /// Unix seconds where the next interval starts.
    pub start: i64,
    pub reported: Vec<(FlowId, u64, u64)>,
    /// Flows that left the table: final counters and when they were last seen (Unix s).
    pub gone: Vec<(FlowId, u64, u64, i64)>,
}

/// Turns absolute per-flow counters into per-interval deltas.
pub struct IntervalMeter {
    start: DateTime<Utc>,
    /// Bytes (up, down) already reported for each flow still in the live table.
    reported: HashMap<FlowId, (u64, u64)>,
    /// Flows that left the table, with what they reported and when they were last seen.
    gone: HashMap<FlowId, (u64, u64, i64)>,
    /// Flows the gateway blocked that the meter has not counted yet, and when (Unix s).
    blocked: HashMap<FlowTuple, i64>,
    pending: Pending,
}

impl IntervalMeter {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            start,
            reported: HashMap::new(),
            gone: HashMap::new(),
            blocked: HashMap::new(),
            pending: Pending::default(),
        }
    }

    /// A meter that goes on from a checkpoint.
    pub fn restore(checkpoint: MeterCheckpoint) -> Self {
        Self {
            start: DateTime::from_timestamp(checkpoint.start, 0).unwrap_or_default(),
            reported: checkpoint
                .reported
                .into_iter()
                .map(|(id, up, down)| (id, (up, down)))
                .collect(),
            gone: checkpoint
                .gone
                .into_iter()
                .map(|(id, up, down, seen)| (id, (up, down, seen)))
                .collect(),
            blocked: HashMap::new(),
            pending: Pending::default(),
        }
    }

    /// What has been reported so far (call right after [`IntervalMeter::take`], and keep it
    /// once that interval's usage is durable).
    pub fn checkpoint(&self) -> MeterCheckpoint {
        MeterCheckpoint {
            start: self.start.timestamp(),
            reported: self
                .reported
                .iter()
                .map(|(id, (up, down))| (*id, *up, *down))
                .collect(),
            gone: self
                .gone
                .iter()
                .map(|(id, (up, down, seen))| (*id, *up, *down, *seen))
                .collect(),
        }
    }

    /// The gateway blocked `flow` at `at`: when the meter first counts it, it counts as a
    /// blocked flow of its app. Marks wait at most [`GONE_HORIZON_SECS`]; past [`MAX_GONE`]
    /// waiting, new marks are not kept. Marks are not checkpointed: a block just before a
    /// daemon restart may go uncounted (its flow is still counted).
    pub fn flow_blocked(&mut self, flow: FlowTuple, at: DateTime<Utc>) {
        if self.blocked.len() < MAX_GONE || self.blocked.contains_key(&flow) {
            self.blocked.insert(flow, at.timestamp());
        }
    }

    /// A finished transaction from another device's log (`[collect]`): counted whole as a
    /// flow of its own, never matched against the box's flows (two log lines with the same
    /// addresses and second are two transactions) and never remembered.
    pub fn add_logged(&mut self, rec: &FlowRecord, catalog: &Catalog, users: &Users) {
        self.count(rec, None, catalog, users);
    }

    /// A flow that left the live table: what it has not reported yet goes into this interval.
    pub fn retire(&mut self, rec: &FlowRecord, catalog: &Catalog, users: &Users) {
        let (id, before) = self.already_reported(FlowId::of(rec));
        self.count(rec, before, catalog, users);
        self.gone.insert(
            id,
            (rec.bytes_up, rec.bytes_down, rec.last_seen.timestamp()),
        );
    }

    /// What a flow reported before (while live, or before it left the table), under the id
    /// the meter knows it by (see [`FIRST_SEEN_TICK_MICROS`]); the live entry is taken out.
    fn already_reported(&mut self, id: FlowId) -> (FlowId, Option<(u64, u64)>) {
        for c in id.candidates() {
            if let Some(done) = self.reported.remove(&c) {
                return (c, Some(done));
            }
        }
        for c in id.candidates() {
            if let Some((up, down, _)) = self.gone.get(&c) {
                return (c, Some((*up, *down)));
            }
        }
        (id, None)
    }

    /// Ends the interval at `now`: the live flows' growth is added, and the interval's usage
    /// is returned. Flows the meter remembers that are neither live nor retired (the table
    /// dropped them) are forgotten.
    pub fn take<'r>(
        &mut self,
        live: impl Iterator<Item = FlowRecord> + 'r,
        now: DateTime<Utc>,
        catalog: &Catalog,
        users: &Users,
    ) -> IntervalUsage {
        let mut still_live = HashMap::with_capacity(self.reported.len());
        for rec in live {
            let (id, before) = self.already_reported(FlowId::of(&rec));
            self.count(&rec, before, catalog, users);
            self.gone.remove(&id);
            still_live.insert(id, (rec.bytes_up, rec.bytes_down));
        }
        self.reported = still_live;
        let horizon = now.timestamp() - GONE_HORIZON_SECS;
        self.gone.retain(|_, (_, _, seen)| *seen >= horizon);
        self.blocked.retain(|_, at| *at >= horizon);
        if self.gone.len() > MAX_GONE {
            let mut seen: Vec<i64> = self.gone.values().map(|(_, _, s)| *s).collect();
            let cut = seen.len() - MAX_GONE;
            seen.select_nth_unstable(cut);
            let oldest_kept = seen[cut];
            self.gone.retain(|_, (_, _, s)| *s >= oldest_kept);
        }
        let pending = std::mem::take(&mut self.pending);
        let mut apps: Vec<AppUsageRow> = pending.apps.into_values().collect();
        apps.sort_by(|a, b| (&a.app_id, &a.user, &a.device).cmp(&(&b.app_id, &b.user, &b.device)));
        let mut unknown_domains: Vec<DomainUsageRow> = pending.domains.into_values().collect();
        unknown_domains.sort_by(|a, b| a.domain.cmp(&b.domain));
        let usage = IntervalUsage {
            start: self.start,
            end: now,
            apps,
            unknown_domains,
            rows_folded: pending.folded,
        };
        self.start = now;
        usage
    }

    fn count(
        &mut self,
        rec: &FlowRecord,
        before: Option<(u64, u64)>,
        catalog: &Catalog,
        users: &Users,
    ) {
        let (up0, down0) = before.unwrap_or((0, 0));
        let up = rec.bytes_up.saturating_sub(up0);
        let down = rec.bytes_down.saturating_sub(down0);
        let new_flow = u64::from(before.is_none());
        if up == 0 && down == 0 && new_flow == 0 {
            return;
        }
        let blocked = u64::from(new_flow == 1 && self.blocked.remove(&rec.tuple()).is_some());
        let who = users.resolve(rec);
        if who.excluded {
            return;
        }
        let device = who
            .device
            .map_or_else(|| rec.src.to_string(), str::to_owned);
        let user = who.user.map_or_else(|| device.clone(), str::to_owned);
        let name = rec.name.as_deref().filter(|n| !n.is_empty());
        let ip = (!rec.dst.is_unspecified()).then_some(rec.dst);
        let pending = &mut self.pending;
        let full = pending.apps.len() + pending.domains.len() >= MAX_ROWS;
        if let Some(m) = catalog.classify(name, ip) {
            let mut key = (m.app.id.clone(), user, device);
            if full && !pending.apps.contains_key(&key) {
                pending.folded += 1;
                key.1 = "(other)".into();
                key.2 = "(other)".into();
            }
            let row = pending
                .apps
                .entry(key.clone())
                .or_insert_with(|| AppUsageRow {
                    app_id: key.0,
                    user: key.1,
                    device: key.2,
                    ..AppUsageRow::default()
                });
            row.bytes_up = row.bytes_up.saturating_add(up);
            row.bytes_down = row.bytes_down.saturating_add(down);
            row.flows += new_flow;
            row.blocked_flows += blocked;
        } else if let Some(name) = name {
            let mut domain = base_domain(name).into_owned();
            if full && !pending.domains.contains_key(&domain) {
                pending.folded += 1;
                domain = "(other)".into();
            }
            let row = pending
                .domains
                .entry(domain.clone())
                .or_insert_with(|| DomainUsageRow {
                    domain,
                    ..DomainUsageRow::default()
                });
            row.bytes_up = row.bytes_up.saturating_add(up);
            row.bytes_down = row.bytes_down.saturating_add(down);
            row.flows += new_flow;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn flow(sport: u16, name: &str, up: u64, down: u64, t0: DateTime<Utc>) -> FlowRecord {
        FlowRecord {
            proto: L4Proto::Tcp,
            src: "10.0.0.7".parse().unwrap(),
            sport,
            dst: "198.51.100.9".parse().unwrap(),
            dport: 443,
            name: Some(name.into()),
            name_source: None,
            bytes_up: up,
            bytes_down: down,
            packets_up: 1,
            packets_down: 1,
            first_seen: t0,
            last_seen: t0,
            src_mac: None,
            user: None,
        }
    }

    #[test]
    fn each_byte_and_each_flow_is_reported_once() {
        let catalog = Catalog::builtin(chrono::Utc::now()).unwrap();
        let users = Users::default();
        let t0 = Utc::now();
        let mut meter = IntervalMeter::new(t0);

        let a = flow(1000, "www.dropbox.com", 100, 1000, t0);
        let first = meter.take(
            [a.clone()].into_iter(),
            t0 + TimeDelta::seconds(60),
            &catalog,
            &users,
        );
        assert_eq!(first.apps.len(), 1);
        assert_eq!(first.apps[0].app_id, "dropbox");
        assert_eq!(first.apps[0].user, "10.0.0.7");
        assert_eq!(
            (
                first.apps[0].bytes_up,
                first.apps[0].bytes_down,
                first.apps[0].flows
            ),
            (100, 1000, 1)
        );

        // The flow grew, then left the table: only the growth is reported, and it is not a
        // new flow.
        let mut grown = a.clone();
        grown.bytes_up = 150;
        grown.bytes_down = 4000;
        let second = meter.take(
            [grown.clone()].into_iter(),
            t0 + TimeDelta::seconds(120),
            &catalog,
            &users,
        );
        assert_eq!(
            (
                second.apps[0].bytes_up,
                second.apps[0].bytes_down,
                second.apps[0].flows
            ),
            (50, 3000, 0)
        );
        let mut last = grown.clone();
        last.bytes_down = 4500;
        meter.retire(&last, &catalog, &users);
        let third = meter.take(
            std::iter::empty(),
            t0 + TimeDelta::seconds(180),
            &catalog,
            &users,
        );
        assert_eq!(
            (
                third.apps[0].bytes_up,
                third.apps[0].bytes_down,
                third.apps[0].flows
            ),
            (0, 500, 0)
        );
        assert_eq!(third.start, t0 + TimeDelta::seconds(120));

        // Nothing new: an empty interval.
        assert!(
            meter
                .take(
                    std::iter::empty(),
                    t0 + TimeDelta::seconds(240),
                    &catalog,
                    &users
                )
                .is_empty()
        );

        // The same 5-tuple, a new flow: counted as one.
        let again = flow(
            1000,
            "www.dropbox.com",
            10,
            10,
            t0 + TimeDelta::seconds(200),
        );
        let fifth = meter.take(
            [again].into_iter(),
            t0 + TimeDelta::seconds(300),
            &catalog,
            &users,
        );
        assert_eq!(fifth.apps[0].flows, 1);
    }

    #[test]
    fn a_restored_meter_does_not_report_a_flow_again() {
        let catalog = Catalog::builtin(chrono::Utc::now()).unwrap();
        let users = Users::default();
        let t0 = Utc::now();
        let mut meter = IntervalMeter::new(t0);
        let a = flow(1000, "www.dropbox.com", 100, 1000, t0);
        meter.take(
            [a.clone()].into_iter(),
            t0 + TimeDelta::seconds(60),
            &catalog,
            &users,
        );
        let saved = meter.checkpoint();
        let mut restarted = IntervalMeter::restore(saved);
        let mut grown = a;
        grown.bytes_down = 1500;
        let usage = restarted.take(
            [grown.clone()].into_iter(),
            t0 + TimeDelta::seconds(120),
            &catalog,
            &users,
        );
        assert_eq!(
            (
                usage.apps[0].bytes_up,
                usage.apps[0].bytes_down,
                usage.apps[0].flows
            ),
            (0, 500, 0)
        );

        // A flow that left the table, then came back from the kernel's map after another
        // restart, is not a new flow either.
        restarted.retire(&grown, &catalog, &users);
        restarted.take(
            std::iter::empty(),
            t0 + TimeDelta::seconds(180),
            &catalog,
            &users,
        );
        let mut again = IntervalMeter::restore(restarted.checkpoint());
        let usage = again.take(
            [grown].into_iter(),
            t0 + TimeDelta::seconds(240),
            &catalog,
            &users,
        );
        assert!(usage.is_empty(), "{usage:?}");
    }

    /// A restarted daemon converts the kernel's monotonic start time with a new offset: the
    /// same flow comes back a few microseconds off, here across a tick boundary.
    #[test]
    fn a_flow_whose_start_moved_by_microseconds_is_the_same_flow() {
        let catalog = Catalog::builtin(chrono::Utc::now()).unwrap();
        let users = Users::default();
        let boundary = DateTime::from_timestamp_micros(
            Utc::now().timestamp_micros() / FIRST_SEEN_TICK_MICROS * FIRST_SEEN_TICK_MICROS,
        )
        .unwrap();
        let t0 = boundary - TimeDelta::microseconds(2);
        let mut meter = IntervalMeter::new(t0);
        let a = flow(1000, "www.dropbox.com", 100, 1000, t0);
        let first = meter.take(
            [a.clone()].into_iter(),
            t0 + TimeDelta::seconds(60),
            &catalog,
            &users,
        );
        assert_eq!(first.apps[0].flows, 1);
        // Left the table, then found again in the kernel's map after a restart.
        meter.retire(&a, &catalog, &users);
        meter.take(
            std::iter::empty(),
            t0 + TimeDelta::seconds(90),
            &catalog,
            &users,
        );
        let mut restarted = IntervalMeter::restore(meter.checkpoint());
        for shift in [3, -3, 5_000] {
            let mut back = a.clone();
            back.first_seen = t0 + TimeDelta::microseconds(shift);
            let usage = restarted.take(
                [back].into_iter(),
                t0 + TimeDelta::seconds(120),
                &catalog,
                &users,
            );
            assert!(usage.is_empty(), "shift {shift} µs: {usage:?}");
        }
        // A flow on the same 5-tuple that starts a second later is a new one.
        let mut later = a;
        later.first_seen = t0 + TimeDelta::seconds(1);
        let usage = restarted.take(
            [later].into_iter(),
            t0 + TimeDelta::seconds(150),
            &catalog,
            &users,
        );
        assert_eq!(usage.apps[0].flows, 1, "{usage:?}");
    }

    #[test]
    fn unknown_names_group_by_registrable_domain() {
        let catalog = Catalog::builtin(chrono::Utc::now()).unwrap();
        let users = Users::default();
        let t0 = Utc::now();
        let mut meter = IntervalMeter::new(t0);
        let rows = [
            flow(1, "a.cdn.unlisted-example.net", 1, 2, t0),
            flow(2, "b.cdn.unlisted-example.net", 3, 4, t0),
        ];
        let usage = meter.take(
            rows.into_iter(),
            t0 + TimeDelta::seconds(60),
            &catalog,
            &users,
        );
        assert!(usage.apps.is_empty());
        assert_eq!(
            usage.unknown_domains,
            vec![DomainUsageRow {
                domain: "unlisted-example.net".into(),
                bytes_up: 4,
                bytes_down: 6,
                flows: 2
            }]
        );
    }

    #[test]
    fn a_blocked_flow_counts_once_as_blocked_in_the_interval_it_first_appears_in() {
        let catalog = Catalog::builtin(chrono::Utc::now()).unwrap();
        let users = Users::default();
        let t0 = Utc::now();
        let mut meter = IntervalMeter::new(t0);
        let blocked = flow(1000, "www.dropbox.com", 100, 0, t0);
        let allowed = flow(1001, "www.dropbox.com", 100, 1000, t0);
        meter.flow_blocked(blocked.tuple(), t0);
        // A mark for a flow the meter never sees is forgotten after the horizon.
        meter.flow_blocked(flow(2000, "www.dropbox.com", 0, 0, t0).tuple(), t0);
        let first = meter.take(
            [blocked.clone(), allowed.clone()].into_iter(),
            t0 + TimeDelta::seconds(60),
            &catalog,
            &users,
        );
        assert_eq!(
            (first.apps[0].flows, first.apps[0].blocked_flows),
            (2, 1),
            "{first:?}"
        );
        // Still live and growing: not a new flow, not blocked again.
        let mut grown = blocked.clone();
        grown.bytes_up = 200;
        let second = meter.take(
            [grown, allowed].into_iter(),
            t0 + TimeDelta::seconds(120),
            &catalog,
            &users,
        );
        assert_eq!((second.apps[0].flows, second.apps[0].blocked_flows), (0, 0));
        assert_eq!(meter.blocked.len(), 1);
        meter.take(
            std::iter::empty(),
            t0 + TimeDelta::seconds(GONE_HORIZON_SECS + 1),
            &catalog,
            &users,
        );
        assert!(meter.blocked.is_empty());
    }
}
