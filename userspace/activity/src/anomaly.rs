//! Built-in anomaly detection (`[anomaly]`), on by default, each detection with a
//! `sensitivity` and a learning period (`learning_days`, default 7): what Defender for Cloud
//! Apps calls threat protection, over the same activity records the policies see.
//!
//! | detection | looks at | alerts when (medium sensitivity) |
//! | --- | --- | --- |
//! | `impossible_travel` | a user's successful logins with a location (a City GeoIP database) | two in a row are more than 500 km apart at more than 900 km/h |
//! | `infrequent_country` | a user's successful activities with a country | a country the user was never seen in during learning and since |
//! | `failed_logins` | a user's failed logins | 10 within 10 minutes (an absolute line: no learning) |
//! | `mass_download` | a user's downloads per UTC day | more than 100 and more than 5 × the user's own daily baseline |
//! | `unusual_upload` | a user's upload bytes per UTC day to one app that is unsanctioned or new (first seen by the detector after its learning, within the last 7 days) | more than 100 MB and more than 5 × the user's own daily upload baseline |
//! | `risky_app_first_use` | distinct users of an app new to the network (first seen after the detector's learning) whose risk score is below 5, in the app's first 24 h | more than 10 users; once per app |
//! | `app_traffic_spike` | an app's bytes per UTC day, from the per-interval use records (every user and device) | more than 1 GB and more than 10 × the app's own daily baseline, after the app's learning |
//!
//! Sensitivity moves the lines: `low` (fewer alerts) and `high` (more) are in [`Lines`].
//! Learning: a user's first [`Detection::learning_days`] days build the baseline and raise
//! nothing (except `failed_logins`). Each alert's reason says the baseline and the value.
//!
//! State is per user, as a keyed hash, in a table of at most [`MAX_USERS`] users (the least
//! recently seen 1% are forgotten first when it is full, counted): a LAN host or a SaaS tenant spraying user names
//! costs bounded memory, about 330 bytes a user for all the per-user detections together (the benchmark measures it).
//! Records are judged in their own time order per user: one older than the user's newest is
//! counted into baselines where it fits but cannot make a travel (a replayed or late record
//! never "teleports" a user).
//!
//! The app detections keep a second table, per app (at most [`MAX_APPS`], evicted like the
//! users'), about 100 bytes each. Risk scores and sanction tags come from the caller
//! ([`Anomalies::set_app_standing`]; the gateway sets them from its catalog and tags at each
//! discovery interval); an app nobody described is neither risky nor unsanctioned.
//!
//! What an attacker can do, and what bounds hold:
//!
//! - One who controls a user's activity during learning can teach it a country (the baseline
//!   is only as clean as the learning period); spraying failed logins across many user names
//!   stays under the per-user line (a tenant-wide line is the activity policies' `repeated`
//!   without `per_user`).
//! - `unusual_upload`: exfiltration kept under the daily line (100 MB a day to one app at
//!   medium), spread over many days, or split across several unsanctioned apps each under the
//!   line passes; so does one to a sanctioned app known for more than 7 days (by design: the
//!   detection is about where the data goes). The baseline is a decaying average (0.3 of each
//!   day): a ramp that stays under 5 × the baseline every day roughly doubles the baseline a
//!   day, so a patient user reaches gigabytes a day in about a week unflagged, and one that
//!   starts during learning raises it from the start. A user's day keeps at most
//!   [`MAX_UPLOAD_APPS`] apps apart: a ninth takes over the smallest slot with its bytes, so an
//!   app's count can be above its own bytes (by at most the smallest slot) but never below:
//!   spraying apps cannot hide an upload, it can only blame the wrong app for a share of it.
//! - `risky_app_first_use` counts distinct users in the app's first 24 h only: adoption spread
//!   over more than a day, or an app touched once during the detector's learning (which makes
//!   it never new), passes. Users are kept as 32-bit key prefixes, at most the line + 1 per
//!   app, so a flood of made-up users of one new app costs about a hundred bytes and is one alert;
//!   a collision undercounts by one. A record without a user counts its device as the user.
//! - `app_traffic_spike`: the same decaying baseline can be ramped; traffic split across apps
//!   is judged per app; one alert per app and day.
//! - Spraying made-up app names fills the app table ([`MAX_APPS`]), whose least recently seen
//!   entries go first (counted as `apps_evicted`): an evicted app comes back as new (more
//!   sensitive for `unusual_upload` and `risky_app_first_use`, which may then alert on an app
//!   the network already used), its traffic baseline restarts (`app_traffic_spike` is blind to
//!   it for its `learning_days`), and its standing is lost until the caller sets it again (the
//!   gateway does at each discovery interval, before that interval's records). Memory stays
//!   bounded in every case: at most [`MAX_USERS`] users and [`MAX_APPS`] apps.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

use serde::{Deserialize, Serialize};

use crate::alert::{Alert, AlertBook, AlertStatus, Entities, OpenKey};
use crate::engine::AlertEvent;
use crate::geo::{GeoIp, Place, distance_km};
use crate::policy::Severity;
use crate::record::{Activity, ActivityType, Outcome};

/// Users tracked at most.
pub const MAX_USERS: usize = 200_000;
/// Apps tracked at most (each about 100 bytes).
pub const MAX_APPS: usize = 50_000;
/// Apps a user's upload day keeps apart (the rest share the smallest's slot).
pub const MAX_UPLOAD_APPS: usize = 8;
/// How long an app counts as new after the detector first saw it.
pub const NEW_APP_SECS: i64 = 7 * 86_400;
const MB: u64 = 1_000_000;
const GB: u64 = 1_000_000_000;
/// Countries remembered per user.
pub const MAX_COUNTRIES: usize = 12;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sensitivity {
    Low,
    #[default]
    Medium,
    High,
}

/// One detection's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detection {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub sensitivity: Sensitivity,
    #[serde(default = "seven")]
    pub learning_days: u32,
}

fn yes() -> bool {
    true
}
fn seven() -> u32 {
    7
}

impl Default for Detection {
    fn default() -> Self {
        Detection {
            enabled: true,
            sensitivity: Sensitivity::Medium,
            learning_days: 7,
        }
    }
}

/// `[anomaly]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    #[serde(default)]
    pub impossible_travel: Detection,
    #[serde(default)]
    pub infrequent_country: Detection,
    #[serde(default)]
    pub failed_logins: Detection,
    #[serde(default)]
    pub mass_download: Detection,
    #[serde(default)]
    pub unusual_upload: Detection,
    #[serde(default)]
    pub risky_app_first_use: Detection,
    #[serde(default)]
    pub app_traffic_spike: Detection,
}

impl AnomalyConfig {
    /// Whether any detection is on.
    pub fn any_enabled(&self) -> bool {
        [
            self.impossible_travel,
            self.infrequent_country,
            self.failed_logins,
            self.mass_download,
            self.unusual_upload,
            self.risky_app_first_use,
            self.app_traffic_spike,
        ]
        .iter()
        .any(|d| d.enabled)
    }
}

/// What the caller knows of an app (the gateway, from its catalog and tags): the detections
/// about unsanctioned and risky apps need it. An app nobody described has no score and is not
/// unsanctioned.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AppStanding {
    pub risk_score: Option<f64>,
    pub unsanctioned: bool,
}

/// The lines a sensitivity sets.
#[derive(Debug, Clone, Copy)]
pub struct Lines {
    pub travel_kmh: f64,
    pub travel_min_km: f64,
    pub failed_count: usize,
    pub failed_window_secs: i64,
    pub download_floor: u32,
    pub download_factor: f64,
    /// Bytes a user sends one unsanctioned or new app in a UTC day, at least.
    pub upload_floor: u64,
    /// ... and this many times the user's daily upload baseline.
    pub upload_factor: f64,
    /// A new app's risk score below this is risky.
    pub risky_below: f64,
    /// Distinct users of a new risky app within its first day, more than.
    pub first_use_users: usize,
    /// An app's bytes in a UTC day, at least.
    pub spike_floor: u64,
    /// ... and this many times the app's daily baseline.
    pub spike_factor: f64,
}

impl Lines {
    pub fn of(s: Sensitivity) -> Lines {
        match s {
            Sensitivity::Low => Lines {
                travel_kmh: 1500.0,
                travel_min_km: 1000.0,
                failed_count: 20,
                failed_window_secs: 600,
                download_floor: 200,
                download_factor: 10.0,
                upload_floor: 500 * MB,
                upload_factor: 10.0,
                risky_below: 3.0,
                first_use_users: 25,
                spike_floor: 5 * GB,
                spike_factor: 20.0,
            },
            Sensitivity::Medium => Lines {
                travel_kmh: 900.0,
                travel_min_km: 500.0,
                failed_count: 10,
                failed_window_secs: 600,
                download_floor: 100,
                download_factor: 5.0,
                upload_floor: 100 * MB,
                upload_factor: 5.0,
                risky_below: 5.0,
                first_use_users: 10,
                spike_floor: GB,
                spike_factor: 10.0,
            },
            Sensitivity::High => Lines {
                travel_kmh: 700.0,
                travel_min_km: 300.0,
                failed_count: 5,
                failed_window_secs: 600,
                download_floor: 50,
                download_factor: 3.0,
                upload_floor: 25 * MB,
                upload_factor: 3.0,
                risky_below: 6.0,
                first_use_users: 5,
                spike_floor: 200 * MB,
                spike_factor: 5.0,
            },
        }
    }
}

/// One user's state, all detections together (about 330 bytes with a few upload slots).
#[derive(Debug, Clone, Default)]
struct UserState {
    first_seen: i64,
    last_seen: i64,
    /// The newest successful login with a location: (time, lat, lon, country).
    last_login: Option<(i64, f32, f32, [u8; 2])>,
    /// Countries seen, with counts.
    countries: Vec<([u8; 2], u32)>,
    /// Failed logins within the window (times), at most the line.
    failed: std::collections::VecDeque<i64>,
    /// Downloads today: (day, count), the baseline (mean of earlier days, EWMA), days seen,
    /// and whether today already alerted.
    download_day: i64,
    downloads_today: u32,
    download_baseline: f32,
    download_days: u16,
    download_alerted: bool,
    /// Uploads today: (day, bytes per app key with whether it alerted), and the baseline of
    /// the user's daily upload bytes (EWMA).
    upload_day: i64,
    uploads_today: Vec<(u64, u64, bool)>,
    upload_baseline: f64,
}

/// One app's state (the per-app detections).
#[derive(Debug, Clone, Default)]
struct AppState {
    first_seen: i64,
    last_seen: i64,
    standing: AppStanding,
    /// Whether the detector had learned for `risky_app_first_use` when it first saw the app:
    /// only such an app is new to the network rather than new to the detector.
    new_to_network: bool,
    /// The same for `unusual_upload`, with its own `learning_days`.
    new_for_upload: bool,
    /// Distinct users (truncated keys) in the app's first day, at most the line + 1.
    first_users: Vec<u32>,
    first_use_alerted: bool,
    /// Traffic today (bytes), the daily baseline (EWMA), whether today alerted.
    traffic_day: i64,
    traffic_today: u64,
    traffic_baseline: f64,
    traffic_alerted: bool,
}

/// What the detections counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AnomalyStats {
    pub users: u64,
    pub users_evicted: u64,
    pub impossible_travel: u64,
    pub infrequent_country: u64,
    pub failed_logins: u64,
    pub mass_download: u64,
    pub unusual_upload: u64,
    pub risky_app_first_use: u64,
    pub app_traffic_spike: u64,
    pub apps: u64,
    pub apps_evicted: u64,
    /// Records older than the user's newest, judged without travel.
    pub out_of_order: u64,
}

/// A finding, before it becomes an alert.
#[derive(Debug, Clone, PartialEq)]
struct Finding {
    detection: &'static str,
    severity: Severity,
    reason: String,
}

/// The detector: feed it every activity, in any order.
pub struct Anomalies {
    cfg: AnomalyConfig,
    users: HashMap<u64, UserState>,
    apps: HashMap<u64, AppState>,
    /// The time of the first record the detector saw.
    started: Option<i64>,
    keyer: std::collections::hash_map::RandomState,
    stats: AnomalyStats,
}

impl std::fmt::Debug for Anomalies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anomalies")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats)
            .finish()
    }
}

fn country_code(s: &str) -> Option<[u8; 2]> {
    let b = s.as_bytes();
    (b.len() == 2 && b.iter().all(u8::is_ascii_alphabetic))
        .then(|| [b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()])
}

fn code_str(c: [u8; 2]) -> String {
    String::from_utf8_lossy(&c).into_owned()
}

impl Anomalies {
    pub fn new(cfg: &AnomalyConfig) -> Anomalies {
        Anomalies {
            cfg: *cfg,
            users: HashMap::new(),
            apps: HashMap::new(),
            started: None,
            keyer: std::collections::hash_map::RandomState::new(),
            stats: AnomalyStats::default(),
        }
    }

    pub fn set_config(&mut self, cfg: &AnomalyConfig) {
        self.cfg = *cfg;
    }

    pub fn stats(&self) -> AnomalyStats {
        AnomalyStats {
            users: self.users.len() as u64,
            apps: self.apps.len() as u64,
            ..self.stats
        }
    }

    /// Bytes of state per tracked user (the struct and its heap parts), for the benchmark.
    pub fn bytes_per_user(&self) -> usize {
        let heap: usize = self
            .users
            .values()
            .map(|u| {
                u.countries.capacity() * 6
                    + u.failed.capacity() * 8
                    + u.uploads_today.capacity() * 24
            })
            .sum();
        let n = self.users.len().max(1);
        std::mem::size_of::<(u64, UserState)>() + heap / n
    }

    /// Bytes of state per tracked app, for the benchmark.
    pub fn bytes_per_app(&self) -> usize {
        let heap: usize = self
            .apps
            .values()
            .map(|a| a.first_users.capacity() * 4)
            .sum();
        std::mem::size_of::<(u64, AppState)>() + heap / self.apps.len().max(1)
    }

    /// What the caller knows of `app` (risk score, unsanctioned), kept until it says otherwise.
    pub fn set_app_standing(&mut self, app: &str, standing: AppStanding) {
        let key = self.app_key(app);
        if let Some(st) = self.apps.get_mut(&key) {
            st.standing = standing;
        } else if self.apps.len() < MAX_APPS {
            // Remembered before the app's first record, so that record is judged with it.
            self.apps.insert(
                key,
                AppState {
                    first_seen: i64::MAX,
                    standing,
                    ..AppState::default()
                },
            );
        }
    }

    fn app_key(&self, app: &str) -> u64 {
        let mut h = self.keyer.build_hasher();
        0xA7u8.hash(&mut h);
        for b in app.bytes() {
            b.to_ascii_lowercase().hash(&mut h);
        }
        h.finish()
    }

    fn user_key(&self, a: &Activity) -> Option<u64> {
        let user = a.user.as_deref()?;
        let mut h = self.keyer.build_hasher();
        for b in user.bytes() {
            b.to_ascii_lowercase().hash(&mut h);
        }
        Some(h.finish())
    }

    /// Judges `a`; its place comes from `place` (a GeoIP lookup, or the record's own country).
    /// Alerts go into `book`.
    pub fn observe(
        &mut self,
        a: &Activity,
        place: Option<Place>,
        book: &mut AlertBook,
        gateway: Option<&str>,
    ) -> Vec<AlertEvent> {
        let t = a.time.timestamp();
        let Some(key) = self.user_key(a) else {
            // No user: only the per-app detections, with the device as the one who used it.
            let device = self.keyer.hash_one(a.actor());
            let app_key = self.app_key(&a.app);
            let found = self.observe_app(a, app_key, device, t);
            return raise_all(found, a, book, gateway);
        };
        if !self.users.contains_key(&key) {
            self.stats.users_evicted += make_room(&mut self.users, MAX_USERS, |u| u.last_seen);
        }
        let cfg = self.cfg;
        let app_key = self.app_key(&a.app);
        let u = self.users.entry(key).or_insert_with(|| UserState {
            first_seen: t,
            last_seen: t,
            ..UserState::default()
        });
        let in_order = t >= u.last_seen;
        if !in_order {
            self.stats.out_of_order += 1;
        }
        u.first_seen = u.first_seen.min(t);
        u.last_seen = u.last_seen.max(t);
        let learned = |d: &Detection| t - u.first_seen >= i64::from(d.learning_days) * 86_400;
        let mut found = Vec::new();
        let success = a.result == Outcome::Success;
        let country = place
            .as_ref()
            .and_then(|p| country_code(&p.country))
            .or_else(|| a.country.as_deref().and_then(country_code));

        // Impossible travel: successful logins with a location, in time order.
        if a.activity == ActivityType::Login && success && cfg.impossible_travel.enabled {
            let location = place.as_ref().and_then(|p| p.location);
            if let (Some((lat, lon)), Some(c)) = (location, country)
                && in_order
            {
                {
                    if let Some((pt, plat, plon, pc)) = u.last_login
                        && learned(&cfg.impossible_travel)
                        && pc != c
                    {
                        let lines = Lines::of(cfg.impossible_travel.sensitivity);
                        let km = distance_km((f64::from(plat), f64::from(plon)), (lat, lon));
                        let hours = ((t - pt).max(60) as f64) / 3600.0;
                        let kmh = km / hours;
                        if km >= lines.travel_min_km && kmh > lines.travel_kmh {
                            self.stats.impossible_travel += 1;
                            found.push(Finding {
                                detection: "impossible travel",
                                severity: Severity::High,
                                reason: format!(
                                    "logins from {} and {} {} min apart: {km:.0} km at {kmh:.0} km/h (line {:.0} km/h, {:.0} km)",
                                    code_str(pc),
                                    code_str(c),
                                    (t - pt) / 60,
                                    lines.travel_kmh,
                                    lines.travel_min_km
                                ),
                            });
                        }
                    }
                    u.last_login = Some((t, lat as f32, lon as f32, c));
                }
            }
        }

        // Infrequent country: any successful activity with a country.
        if success
            && cfg.infrequent_country.enabled
            && let Some(c) = country
        {
            let seen = u.countries.iter().position(|(x, _)| *x == c);
            let total: u32 = u.countries.iter().map(|(_, n)| *n).sum();
            let rare = match (cfg.infrequent_country.sensitivity, seen) {
                (_, None) => true,
                (Sensitivity::High, Some(i)) => u.countries[i].1 <= 2 && total >= 50,
                _ => false,
            };
            if rare && learned(&cfg.infrequent_country) && total > 0 {
                self.stats.infrequent_country += 1;
                let usual: Vec<String> = {
                    let mut v = u.countries.clone();
                    v.sort_by_key(|x| std::cmp::Reverse(x.1));
                    v.iter()
                        .take(3)
                        .map(|(c, n)| format!("{} ({n})", code_str(*c)))
                        .collect()
                };
                found.push(Finding {
                    detection: "activity from an infrequent country",
                    severity: Severity::Medium,
                    reason: format!(
                        "{} from {}, seen {} times before; the user's countries: {} of {total} activities",
                        a.activity.as_str(),
                        code_str(c),
                        seen.map_or(0, |i| u.countries[i].1),
                        usual.join(", ")
                    ),
                });
            }
            match seen {
                Some(i) => u.countries[i].1 = u.countries[i].1.saturating_add(1),
                None => {
                    if u.countries.len() >= MAX_COUNTRIES
                        && let Some(i) = u
                            .countries
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, (_, n))| *n)
                            .map(|(i, _)| i)
                    {
                        u.countries.swap_remove(i);
                    }
                    u.countries.push((c, 1));
                }
            }
        }

        // Failed logins: an absolute line within a window.
        if a.activity == ActivityType::FailedLogin && cfg.failed_logins.enabled {
            let lines = Lines::of(cfg.failed_logins.sensitivity);
            u.failed
                .retain(|x| t - *x < lines.failed_window_secs && *x <= t);
            u.failed.push_back(t);
            if u.failed.len() >= lines.failed_count {
                u.failed.clear();
                self.stats.failed_logins += 1;
                found.push(Finding {
                    detection: "repeated failed logins",
                    severity: Severity::Medium,
                    reason: format!(
                        "{} failed logins within {} min (line {})",
                        lines.failed_count,
                        lines.failed_window_secs / 60,
                        lines.failed_count
                    ),
                });
            }
        }

        // Mass download: downloads per UTC day against the user's own baseline.
        if a.activity == ActivityType::Download && cfg.mass_download.enabled {
            let day = t.div_euclid(86_400);
            if day > u.download_day {
                if u.download_day > 0 {
                    // Days without downloads count as zero in the baseline.
                    let gap = (day - u.download_day - 1).clamp(0, 30) as i32;
                    let mut b = u.download_baseline;
                    b = 0.7 * b + 0.3 * u.downloads_today as f32;
                    for _ in 0..gap {
                        b *= 0.7;
                    }
                    u.download_baseline = b;
                    u.download_days = u.download_days.saturating_add(1 + gap as u16);
                }
                u.download_day = day;
                u.downloads_today = 0;
                u.download_alerted = false;
            }
            if day == u.download_day {
                u.downloads_today = u.downloads_today.saturating_add(1);
                let lines = Lines::of(cfg.mass_download.sensitivity);
                let n = u.downloads_today;
                let line = (lines.download_floor as f32)
                    .max(lines.download_factor as f32 * u.download_baseline);
                if !u.download_alerted && learned(&cfg.mass_download) && n as f32 > line {
                    u.download_alerted = true;
                    self.stats.mass_download += 1;
                    found.push(Finding {
                        detection: "mass download",
                        severity: Severity::High,
                        reason: format!(
                            "{n} downloads today, above {line:.0} (the user's daily baseline {:.1} × {}, at least {})",
                            u.download_baseline, lines.download_factor, lines.download_floor
                        ),
                    });
                }
            }
        }

        // Unusual upload: a user's bytes to one unsanctioned or new app in a UTC day.
        let upload = match a.activity {
            ActivityType::Upload => a.bytes,
            _ => a.bytes_up,
        }
        .filter(|b| *b > 0);
        if let Some(bytes) = upload
            && cfg.unusual_upload.enabled
        {
            let day = t.div_euclid(86_400);
            if day > u.upload_day {
                if u.upload_day > 0 {
                    let total: u64 = u.uploads_today.iter().map(|x| x.1).sum();
                    let gap = (day - u.upload_day - 1).clamp(0, 30) as i32;
                    u.upload_baseline =
                        (0.7 * u.upload_baseline + 0.3 * total as f64) * 0.7f64.powi(gap);
                }
                u.upload_day = day;
                u.uploads_today.clear();
            }
            if day == u.upload_day {
                let slot = match u.uploads_today.iter().position(|x| x.0 == app_key) {
                    Some(i) => i,
                    None if u.uploads_today.len() < MAX_UPLOAD_APPS => {
                        u.uploads_today.push((app_key, 0, false));
                        u.uploads_today.len() - 1
                    }
                    // Many apps in a day: the smallest slot takes this app over.
                    None => {
                        let i = (0..u.uploads_today.len())
                            .min_by_key(|i| u.uploads_today[*i].1)
                            .unwrap_or(0);
                        u.uploads_today[i].0 = app_key;
                        u.uploads_today[i].2 = false;
                        i
                    }
                };
                let entry = &mut u.uploads_today[slot];
                entry.1 = entry.1.saturating_add(bytes);
                let lines = Lines::of(cfg.unusual_upload.sensitivity);
                let line = (lines.upload_floor as f64).max(lines.upload_factor * u.upload_baseline);
                let standing = self.apps.get(&app_key);
                let unsanctioned = standing.is_some_and(|s| s.standing.unsanctioned);
                // New: first seen after this detection's own learning (judged when first
                // seen, as below for an app this record is the first of), within 7 days.
                let new_app = standing.is_some_and(|s| {
                    s.new_for_upload && t.saturating_sub(s.first_seen) < NEW_APP_SECS
                }) || (standing.is_none_or(|s| s.first_seen == i64::MAX)
                    && self.started.is_some_and(|st| {
                        t - st >= i64::from(cfg.unusual_upload.learning_days) * 86_400
                    }));
                if !entry.2
                    && (unsanctioned || new_app)
                    && learned(&cfg.unusual_upload)
                    && entry.1 as f64 > line
                {
                    entry.2 = true;
                    self.stats.unusual_upload += 1;
                    found.push(Finding {
                        detection: "unusual upload to an unsanctioned or new app",
                        severity: Severity::High,
                        reason: format!(
                            "{} bytes uploaded to {} ({}) today, above {line:.0} (the user's daily upload baseline {:.0} × {}, at least {})",
                            entry.1,
                            a.app,
                            if unsanctioned { "unsanctioned" } else { "new app" },
                            u.upload_baseline,
                            lines.upload_factor,
                            lines.upload_floor
                        ),
                    });
                }
            }
        }

        found.extend(self.observe_app(a, app_key, key, t));
        raise_all(found, a, book, gateway)
    }
}

/// Makes room for one more entry in a table of at most `max`: when full, the least recently
/// seen 1% go at once (one scan per that many new entries). Returns how many went.
fn make_room<V>(table: &mut HashMap<u64, V>, max: usize, last_seen: impl Fn(&V) -> i64) -> u64 {
    if table.len() < max {
        return 0;
    }
    let mut seen: Vec<i64> = table.values().map(&last_seen).collect();
    let cut = (max / 100).max(1);
    seen.select_nth_unstable(cut);
    let oldest_kept = seen[cut];
    let before = table.len();
    table.retain(|_, v| last_seen(v) >= oldest_kept);
    if table.len() >= max {
        // Many entries last seen at the same second: drop arbitrary ones of them.
        let drop: Vec<u64> = table.keys().take(cut).copied().collect();
        for k in drop {
            table.remove(&k);
        }
    }
    (before - table.len()) as u64
}

/// The findings on `a` as alerts in `book`.
fn raise_all(
    found: Vec<Finding>,
    a: &Activity,
    book: &mut AlertBook,
    gateway: Option<&str>,
) -> Vec<AlertEvent> {
    found
        .into_iter()
        .map(|f| {
            let policy = format!("anomaly: {}", f.detection);
            // Per-app findings are one open alert per app, not per user.
            let per_app = f.detection == RISKY_FIRST_USE || f.detection == TRAFFIC_SPIKE;
            let key = OpenKey {
                policy: policy.clone(),
                actor: if per_app {
                    None
                } else {
                    a.user.as_deref().map(str::to_lowercase)
                },
                app: per_app.then(|| a.app.to_lowercase()),
            };
            book.raise(
                key,
                Alert {
                    id: 0,
                    time: a.time,
                    last_seen: a.time,
                    severity: f.severity,
                    policy,
                    entities: Entities {
                        user: a.user.clone(),
                        ip: a.ip,
                        app: Some(a.app.clone()),
                        gateway: gateway.map(str::to_string),
                    },
                    reason: f.reason,
                    activities: vec![a.clone()],
                    status: AlertStatus::Open,
                    comment: None,
                    count: 1,
                },
            )
        })
        .collect()
}

const RISKY_FIRST_USE: &str = "first use of a risky app by many users";
const TRAFFIC_SPIKE: &str = "traffic to an app far above its baseline";

impl Anomalies {
    /// The per-app detections: `risky_app_first_use` and `app_traffic_spike`.
    /// `key` is [`Anomalies::app_key`] of `a.app` (the caller has it already).
    fn observe_app(&mut self, a: &Activity, key: u64, user_key: u64, t: i64) -> Vec<Finding> {
        let cfg = self.cfg;
        let started = *self.started.get_or_insert(t);
        self.started = Some(started.min(t));
        if !cfg.risky_app_first_use.enabled
            && !cfg.app_traffic_spike.enabled
            && !cfg.unusual_upload.enabled
        {
            return Vec::new();
        }
        if !self.apps.contains_key(&key) {
            self.stats.apps_evicted += make_room(&mut self.apps, MAX_APPS, |s| s.last_seen);
        }
        let st = self.apps.entry(key).or_insert_with(|| AppState {
            first_seen: i64::MAX,
            ..AppState::default()
        });
        if st.first_seen == i64::MAX {
            st.first_seen = t;
            st.last_seen = t;
            st.new_to_network =
                t - started >= i64::from(cfg.risky_app_first_use.learning_days) * 86_400;
            st.new_for_upload = t - started >= i64::from(cfg.unusual_upload.learning_days) * 86_400;
        }
        st.first_seen = st.first_seen.min(t);
        st.last_seen = st.last_seen.max(t);
        let mut found = Vec::new();

        // First use of a risky app by many users: distinct users in the first day of an app
        // the network had not used during the detector's learning.
        if cfg.risky_app_first_use.enabled
            && st.new_to_network
            && !st.first_use_alerted
            && t - st.first_seen < 86_400
        {
            let lines = Lines::of(cfg.risky_app_first_use.sensitivity);
            if let Some(score) = st.standing.risk_score
                && score < lines.risky_below
            {
                let short = user_key as u32;
                if !st.first_users.contains(&short) && st.first_users.len() <= lines.first_use_users
                {
                    st.first_users.push(short);
                }
                if st.first_users.len() > lines.first_use_users {
                    st.first_use_alerted = true;
                    st.first_users = Vec::new();
                    self.stats.risky_app_first_use += 1;
                    found.push(Finding {
                        detection: RISKY_FIRST_USE,
                        severity: Severity::Medium,
                        reason: format!(
                            "{} (risk score {score:.1}, below {}) used by more than {} users within {} h of its first use on this network",
                            a.app,
                            lines.risky_below,
                            lines.first_use_users,
                            (t - st.first_seen) / 3600 + 1
                        ),
                    });
                }
            }
        }

        // Traffic spike: an app's bytes per UTC day against its own baseline. Only the
        // per-interval use records count, so a transfer the proxy also reports is not counted
        // twice.
        if cfg.app_traffic_spike.enabled
            && a.activity == ActivityType::AppUsed
            && let Some(bytes) = a.bytes
        {
            let day = t.div_euclid(86_400);
            if day > st.traffic_day {
                if st.traffic_day > 0 {
                    let gap = (day - st.traffic_day - 1).clamp(0, 30) as i32;
                    st.traffic_baseline = (0.7 * st.traffic_baseline
                        + 0.3 * st.traffic_today as f64)
                        * 0.7f64.powi(gap);
                }
                st.traffic_day = day;
                st.traffic_today = 0;
                st.traffic_alerted = false;
            }
            if day == st.traffic_day {
                st.traffic_today = st.traffic_today.saturating_add(bytes);
                let lines = Lines::of(cfg.app_traffic_spike.sensitivity);
                let line = (lines.spike_floor as f64).max(lines.spike_factor * st.traffic_baseline);
                let learned =
                    t - st.first_seen >= i64::from(cfg.app_traffic_spike.learning_days) * 86_400;
                if !st.traffic_alerted && learned && st.traffic_today as f64 > line {
                    st.traffic_alerted = true;
                    self.stats.app_traffic_spike += 1;
                    found.push(Finding {
                        detection: TRAFFIC_SPIKE,
                        severity: Severity::Medium,
                        reason: format!(
                            "{} bytes to {} today, above {line:.0} (the app's daily baseline {:.0} × {}, at least {})",
                            st.traffic_today,
                            a.app,
                            st.traffic_baseline,
                            lines.spike_factor,
                            lines.spike_floor
                        ),
                    });
                }
            }
        }
        found
    }
}

/// The place of an activity: the GeoIP database's, else the record's own country.
pub fn place_of(a: &Activity, geo: Option<&GeoIp>) -> Option<Place> {
    if let (Some(g), Some(ip)) = (geo, a.ip)
        && let Some(p) = g.lookup(ip)
    {
        return Some(p);
    }
    a.country.as_deref().and_then(country_code).map(|c| Place {
        country: code_str(c),
        location: None,
    })
}
