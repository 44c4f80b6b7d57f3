//! The policy engine: a pure function of the activities it is shown and the time it is told.
//! `observe` matches one activity against the policies of its type, counts repeated policies
//! in sliding windows, and opens or updates alerts in the [`AlertBook`].
//!
//! Memory is bounded: at most `max_windows` counting windows (policy x user x app) are kept;
//! past it the oldest-created window is forgotten (counted in `windows_evicted`), so a flood
//! of made-up user names costs a bounded table, never the process. A window is 16 slots of
//! `within_secs / 16`: an activity is counted for at least `within_secs - within_secs/16` and
//! at most `within_secs + within_secs/16` (an alert may come one slot early, never late).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::alert::{Alert, AlertBook, AlertStatus, Entities, MAX_PROOF, OpenKey};
use crate::policy::{ActivityPolicy, Compiled};
use crate::record::{Activity, ActivityType};

/// Counting windows kept by default (each at most a few KiB with its proof).
pub const DEFAULT_MAX_WINDOWS: usize = 32_768;
/// Slots of a window.
const SLOTS: usize = 16;
/// An open alert's updates (a new match) go to the sinks at most this often.
pub const DEFAULT_UPDATE_INTERVAL_MS: i64 = 60_000;

/// What happened to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertEventKind {
    Opened,
    Updated,
}

/// An alert to send on: a new one, or an open one that matched again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertEvent {
    pub kind: AlertEventKind,
    pub alert: Alert,
}

/// The engine's counters (`tollgate status --json`, `activity`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    pub observed: u64,
    pub matched: u64,
    pub alerts_opened: u64,
    pub alerts_updated: u64,
    /// Updates of open alerts not sent on (within the update interval of the last one).
    pub updates_suppressed: u64,
    pub windows: u64,
    pub windows_evicted: u64,
    pub alerts_evicted: u64,
}

/// A window's key: a keyed hash (random per engine, so not craftable) of the policy, the
/// actor (user without case, else address) and the app; hashing instead of storing the
/// strings keeps the hot path free of allocations.
type WinKey = u64;

#[derive(Debug)]
struct Window {
    slot_ms: i64,
    last_epoch: i64,
    counts: [u32; SLOTS],
    /// The newest matching activities (proof for the alert).
    proof: VecDeque<Activity>,
}

impl Window {
    fn new(within_ms: i64) -> Window {
        Window {
            slot_ms: (within_ms / SLOTS as i64).max(1),
            last_epoch: i64::MIN,
            counts: [0; SLOTS],
            proof: VecDeque::new(),
        }
    }

    /// Counts one activity at `t_ms`; returns the count within the window.
    fn add(&mut self, t_ms: i64) -> u64 {
        let e = t_ms.div_euclid(self.slot_ms);
        if self.last_epoch == i64::MIN || e - self.last_epoch >= SLOTS as i64 {
            self.counts = [0; SLOTS];
            self.last_epoch = e;
        } else if e > self.last_epoch {
            for x in self.last_epoch + 1..=e {
                self.counts[x.rem_euclid(SLOTS as i64) as usize] = 0;
            }
            self.last_epoch = e;
        } else if self.last_epoch - e >= SLOTS as i64 {
            // Older than the window (a late record): not counted.
            return self.total();
        }
        let slot = &mut self.counts[e.rem_euclid(SLOTS as i64) as usize];
        *slot = slot.saturating_add(1);
        self.total()
    }

    fn total(&self) -> u64 {
        self.counts.iter().map(|&c| u64::from(c)).sum()
    }

    fn reset(&mut self) {
        self.counts = [0; SLOTS];
        self.proof.clear();
    }

    /// Whether nothing counted is younger than the window at `now_ms`.
    fn idle(&self, now_ms: i64) -> bool {
        self.last_epoch == i64::MIN
            || now_ms.div_euclid(self.slot_ms) - self.last_epoch >= SLOTS as i64
    }
}

/// The engine. Not `Sync`: one task owns it and feeds it in order.
#[derive(Debug)]
pub struct Engine {
    policies: Vec<Compiled>,
    /// Indexes into `policies`, per activity type.
    by_type: [Vec<u32>; ActivityType::ALL.len()],
    windows: HashMap<WinKey, Window, Identity>,
    keyer: std::collections::hash_map::RandomState,
    /// Keyed hash of (policy name, actor, app) -> the open alert's id (checked on use).
    open_fast: HashMap<u64, u64, Identity>,
    /// Creation order of `windows` (oldest first), for eviction.
    order: VecDeque<WinKey>,
    max_windows: usize,
    update_interval_ms: i64,
    /// When each open alert last went to the sinks.
    last_sent: HashMap<u64, i64>,
    gateway: Option<String>,
    book: AlertBook,
    stats: EngineStats,
    /// Built-in anomaly detection (`[anomaly]`), and the GeoIP database it places records with.
    anomaly: Option<crate::anomaly::Anomalies>,
    geo: Option<std::sync::Arc<crate::geo::GeoIp>>,
}

impl Engine {
    /// An engine with `policies` (disabled ones are skipped; validate them first with
    /// [`crate::policy::validate`]).
    pub fn new(policies: &[ActivityPolicy]) -> Engine {
        let mut e = Engine {
            policies: Vec::new(),
            by_type: Default::default(),
            windows: HashMap::with_hasher(Identity),
            keyer: std::collections::hash_map::RandomState::new(),
            open_fast: HashMap::with_hasher(Identity),
            order: VecDeque::new(),
            max_windows: DEFAULT_MAX_WINDOWS,
            update_interval_ms: DEFAULT_UPDATE_INTERVAL_MS,
            last_sent: HashMap::new(),
            gateway: None,
            book: AlertBook::default(),
            stats: EngineStats::default(),
            anomaly: None,
            geo: None,
        };
        e.set_policies(policies);
        e
    }

    pub fn with_max_windows(mut self, n: usize) -> Engine {
        self.max_windows = n.max(1);
        self
    }

    pub fn with_update_interval_ms(mut self, ms: i64) -> Engine {
        self.update_interval_ms = ms.max(0);
        self
    }

    /// The gateway named in alert entities.
    pub fn with_gateway(mut self, name: Option<String>) -> Engine {
        self.gateway = name;
        self
    }

    /// Anomaly detection with `cfg`, placing records with `geo` (or their own country).
    pub fn with_anomaly(
        mut self,
        cfg: &crate::anomaly::AnomalyConfig,
        geo: Option<std::sync::Arc<crate::geo::GeoIp>>,
    ) -> Engine {
        self.anomaly = Some(crate::anomaly::Anomalies::new(cfg));
        self.geo = geo;
        self
    }

    /// New anomaly settings (a reload); what was learned stays.
    pub fn set_anomaly(&mut self, cfg: &crate::anomaly::AnomalyConfig) {
        match &mut self.anomaly {
            Some(a) => a.set_config(cfg),
            None => self.anomaly = Some(crate::anomaly::Anomalies::new(cfg)),
        }
    }

    /// What the caller knows of `app`, for the detections about unsanctioned and risky apps.
    pub fn set_app_standing(&mut self, app: &str, standing: crate::anomaly::AppStanding) {
        if let Some(an) = &mut self.anomaly {
            an.set_app_standing(app, standing);
        }
    }

    pub fn anomaly_stats(&self) -> Option<crate::anomaly::AnomalyStats> {
        self.anomaly.as_ref().map(crate::anomaly::Anomalies::stats)
    }

    /// The record's place (GeoIP, else its own country), for the log and the sinks.
    pub fn place(&self, a: &Activity) -> Option<crate::geo::Place> {
        crate::anomaly::place_of(a, self.geo.as_deref())
    }

    /// Alerts read back from disk.
    pub fn with_book(mut self, book: AlertBook) -> Engine {
        self.book = book;
        self.open_fast.clear();
        self
    }

    /// New policies (a reload). Counting windows start again; alerts stay.
    pub fn set_policies(&mut self, policies: &[ActivityPolicy]) {
        self.policies = policies
            .iter()
            .filter(|p| p.enabled)
            .map(Compiled::new)
            .collect();
        self.by_type = Default::default();
        for (i, p) in self.policies.iter().enumerate() {
            for t in ActivityType::ALL {
                if p.types & (1 << t.index()) != 0 {
                    self.by_type[t.index()].push(i as u32);
                }
            }
        }
        self.windows.clear();
        self.order.clear();
    }

    pub fn policies(&self) -> usize {
        self.policies.len()
    }

    pub fn book(&self) -> &AlertBook {
        &self.book
    }

    pub fn book_mut(&mut self) -> &mut AlertBook {
        &mut self.book
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            windows: self.windows.len() as u64,
            alerts_evicted: self.book.evicted,
            ..self.stats
        }
    }

    /// Matches `a` against every policy of its type; returns the alerts opened, and the open
    /// ones updated (at most once per update interval each).
    pub fn observe(&mut self, a: &Activity, now: DateTime<Utc>) -> Vec<AlertEvent> {
        self.stats.observed += 1;
        let mut out = Vec::new();
        let now_ms = now.timestamp_millis();
        for k in 0..self.by_type[a.activity.index()].len() {
            let pi = self.by_type[a.activity.index()][k] as usize;
            if !self.policies[pi].matches(a) {
                continue;
            }
            self.stats.matched += 1;
            let proof = match self.policies[pi].repeated.clone() {
                // A single-activity match: the activity itself is the proof (cloned only
                // when it is kept).
                None => Some((None, 1, true, true)),
                Some(r) => self
                    .count(pi, a, &r, now_ms)
                    .map(|p| (Some(p), r.count, r.per_user, r.per_app)),
            };
            let Some((proof, n, per_user, per_app)) = proof else {
                continue;
            };
            if let Some(ev) = self.raise(pi, a, proof, n, per_user, per_app, now, now_ms) {
                out.push(ev);
            }
        }
        if let Some(an) = &mut self.anomaly {
            let place = crate::anomaly::place_of(a, self.geo.as_deref());
            out.extend(an.observe(a, place, &mut self.book, self.gateway.as_deref()));
        }
        out
    }

    /// Counts `a` in its window; the proof when the window reached the policy's count.
    fn count(
        &mut self,
        pi: usize,
        a: &Activity,
        r: &crate::policy::Repeated,
        now_ms: i64,
    ) -> Option<Vec<Activity>> {
        let key = {
            let mut h = self.keyer.build_hasher();
            pi.hash(&mut h);
            if r.per_user {
                hash_user(a, &mut h);
            }
            if r.per_app {
                for b in a.app.bytes() {
                    b.to_ascii_lowercase().hash(&mut h);
                }
            }
            h.finish()
        };
        let within_ms = (r.within_secs as i64).saturating_mul(1000);
        if !self.windows.contains_key(&key) {
            while self.windows.len() >= self.max_windows {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                if self.windows.remove(&old).is_some() {
                    self.stats.windows_evicted += 1;
                }
            }
            self.order.push_back(key);
            self.windows.insert(key, Window::new(within_ms));
        }
        let w = self.windows.get_mut(&key)?;
        // The record's own time, unless it claims the future (a clock that ran ahead).
        let t = a.time.timestamp_millis().min(now_ms);
        let n = w.add(t);
        // Only the last few before the count can end up as proof: clone only those.
        let keep = (r.count as usize).min(MAX_PROOF);
        if n + keep as u64 > u64::from(r.count) {
            if w.proof.len() >= keep {
                w.proof.pop_front();
            }
            w.proof.push_back(a.clone());
        }
        if n >= u64::from(r.count) {
            let proof = w.proof.drain(..).collect();
            w.reset();
            Some(proof)
        } else {
            None
        }
    }

    #[allow(clippy::too_many_arguments)] // one call site; the parts of one match
    fn raise(
        &mut self,
        pi: usize,
        a: &Activity,
        proof: Option<Vec<Activity>>,
        n: u32,
        per_user: bool,
        per_app: bool,
        now: DateTime<Utc>,
        now_ms: i64,
    ) -> Option<AlertEvent> {
        // The open alert of this policy and entity, found through a keyed hash first (no
        // allocation), then through the book (after a restart or a reload).
        let fast = {
            let mut h = self.keyer.build_hasher();
            self.policies[pi].name.hash(&mut h);
            if per_user {
                hash_user(a, &mut h);
            }
            if per_app {
                a.app.hash(&mut h);
            }
            h.finish()
        };
        let mut open_id = self.open_fast.get(&fast).copied().filter(|id| {
            self.book
                .get(*id)
                .is_some_and(|x| x.status == AlertStatus::Open)
        });
        let p = &self.policies[pi];
        let entities = || Entities {
            user: if per_user { a.user.clone() } else { None },
            ip: if per_user { a.ip } else { None },
            app: per_app.then(|| a.app.clone()),
            gateway: self.gateway.clone(),
        };
        let key = |e: &Entities| OpenKey {
            policy: p.name.clone(),
            actor: crate::alert::actor_key(e.user.as_deref(), e.ip),
            app: e.app.clone(),
        };
        if open_id.is_none() {
            open_id = self.book.open_mut(&key(&entities())).map(|x| x.id);
            if let Some(id) = open_id {
                self.open_fast.insert(fast, id);
            }
        }
        if let Some(open) = open_id.and_then(|id| self.book.alert_mut(id)) {
            open.count += 1;
            open.last_seen = now;
            let id = open.id;
            let last = self.last_sent.get(&id).copied().unwrap_or(i64::MIN);
            let send = now_ms.saturating_sub(last) >= self.update_interval_ms;
            // The proof holds the first activities and those of each update sent; a single
            // activity is cloned only then.
            let new: Vec<Activity> = match proof {
                Some(v) => v,
                None if send || open.activities.len() < MAX_PROOF => vec![a.clone()],
                None => Vec::new(),
            };
            for x in new {
                if open.activities.len() >= MAX_PROOF {
                    open.activities.remove(0);
                }
                open.activities.push(x);
            }
            if !send {
                self.stats.updates_suppressed += 1;
                return None;
            }
            self.stats.alerts_updated += 1;
            self.last_sent.insert(id, now_ms);
            let alert = open.clone();
            return Some(AlertEvent {
                kind: AlertEventKind::Updated,
                alert,
            });
        }
        let entities = entities();
        let key = key(&entities);
        let proof = proof.unwrap_or_else(|| vec![a.clone()]);
        let reason = match &p.repeated {
            Some(r) => format!("{n} {} within {} s", a.activity, r.within_secs),
            None => format!("{} matched", a.activity),
        };
        let alert = Alert {
            id: 0,
            time: now,
            last_seen: now,
            severity: p.severity,
            policy: p.name.clone(),
            entities,
            reason,
            activities: proof,
            status: AlertStatus::Open,
            comment: None,
            count: 1,
        };
        let id = self.book.insert_open(key, alert);
        self.stats.alerts_opened += 1;
        if self.open_fast.len() >= 2 * self.book.len() + 1024 {
            let book = &self.book;
            self.open_fast
                .retain(|_, id| book.get(*id).is_some_and(|a| a.status == AlertStatus::Open));
        }
        self.open_fast.insert(fast, id);
        // Forget send times of alerts no longer kept or open.
        if self.last_sent.len() > self.book.len() {
            let book = &self.book;
            self.last_sent
                .retain(|id, _| book.get(*id).is_some_and(|a| a.status == AlertStatus::Open));
        }
        self.last_sent.insert(id, now_ms);
        self.book.get(id).map(|alert| AlertEvent {
            kind: AlertEventKind::Opened,
            alert: alert.clone(),
        })
    }

    /// Forgets windows with nothing counted within their window (call every few seconds).
    pub fn expire(&mut self, now: DateTime<Utc>) {
        let now_ms = now.timestamp_millis();
        self.windows.retain(|_, w| !w.idle(now_ms));
        let windows = &self.windows;
        self.order.retain(|k| windows.contains_key(k));
    }
}

/// The window keys are already keyed hashes: use them as they are.
#[derive(Debug, Clone, Copy, Default)]
struct Identity;

impl BuildHasher for Identity {
    type Hasher = IdentityHasher;
    fn build_hasher(&self) -> IdentityHasher {
        IdentityHasher(0)
    }
}

#[derive(Debug, Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Who an activity is, for a per-user key: the user name without case, else the device
/// address.
fn hash_user(a: &Activity, h: &mut impl Hasher) {
    match (&a.user, a.ip) {
        (Some(u), _) => {
            1u8.hash(h);
            for c in u.chars().flat_map(char::to_lowercase) {
                c.hash(h);
            }
        }
        (None, Some(ip)) => {
            2u8.hash(h);
            ip.hash(h);
        }
        (None, None) => 3u8.hash(h),
    }
}
