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
//!
//! Sensitivity moves the lines: `low` (fewer alerts) and `high` (more) are in [`Lines`].
//! Learning: a user's first [`Detection::learning_days`] days build the baseline and raise
//! nothing (except `failed_logins`). Each alert's reason says the baseline and the value.
//!
//! State is per user, as a keyed hash, in a table of at most [`MAX_USERS`] users (the least
//! recently seen 1% are forgotten first when it is full, counted): a LAN host or a SaaS tenant spraying user names
//! costs bounded memory, at most about 200 bytes a user for all four detections together.
//! Records are judged in their own time order per user: one older than the user's newest is
//! counted into baselines where it fits but cannot make a travel (a replayed or late record
//! never "teleports" a user).
//!
//! What an attacker can do: one who controls a user's activity during learning can teach it
//! a country (the baseline is only as clean as the learning period); an attacker spraying
//! failed logins across many user names stays under the per-user line (a tenant-wide line is
//! the activity policies' `repeated` without `per_user`).

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
            },
            Sensitivity::Medium => Lines {
                travel_kmh: 900.0,
                travel_min_km: 500.0,
                failed_count: 10,
                failed_window_secs: 600,
                download_floor: 100,
                download_factor: 5.0,
            },
            Sensitivity::High => Lines {
                travel_kmh: 700.0,
                travel_min_km: 300.0,
                failed_count: 5,
                failed_window_secs: 600,
                download_floor: 50,
                download_factor: 3.0,
            },
        }
    }
}

/// One user's state, all detections together (about 200 bytes).
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
            ..self.stats
        }
    }

    /// Bytes of state per tracked user (the struct and its heap parts), for the benchmark.
    pub fn bytes_per_user(&self) -> usize {
        let heap: usize = self
            .users
            .values()
            .map(|u| u.countries.capacity() * 6 + u.failed.capacity() * 8)
            .sum();
        let n = self.users.len().max(1);
        std::mem::size_of::<(u64, UserState)>() + heap / n
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
        let Some(key) = self.user_key(a) else {
            return Vec::new();
        };
        let t = a.time.timestamp();
        if !self.users.contains_key(&key) && self.users.len() >= MAX_USERS {
            // The least recently seen 1% go at once: one scan per that many new users.
            let mut seen: Vec<i64> = self.users.values().map(|u| u.last_seen).collect();
            let cut = (MAX_USERS / 100).max(1);
            seen.select_nth_unstable(cut);
            let oldest_kept = seen[cut];
            let before = self.users.len();
            self.users.retain(|_, u| u.last_seen >= oldest_kept);
            if self.users.len() >= MAX_USERS {
                // Many users last seen at the same second: drop arbitrary ones of them.
                let drop: Vec<u64> = self.users.keys().take(cut).copied().collect();
                for k in drop {
                    self.users.remove(&k);
                }
            }
            self.stats.users_evicted += (before - self.users.len()) as u64;
        }
        let cfg = self.cfg;
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

        found
            .into_iter()
            .map(|f| {
                let policy = format!("anomaly: {}", f.detection);
                let key = OpenKey {
                    policy: policy.clone(),
                    actor: a.user.as_deref().map(str::to_lowercase),
                    app: None,
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
