//! Records per second through 100 activity policies, against a baseline measured in the same
//! run (a loop that reads each record's fields the way a trivial consumer would); then the same
//! with anomaly detection on (every detection, records with countries), against the engine
//! without it, and the anomaly state per user against the 1 KiB target.
//!
//! `cargo bench -p tollgate-activity --bench engine` (one core: the engine is single-owner).

use std::hint::black_box;
use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use tollgate_activity::policy::OneOrMany;
use tollgate_activity::{
    Activity, ActivityPolicy, ActivityType, Engine, Outcome, Repeated, Severity, Source,
};

const RECORDS: usize = 1 << 16;
const ROUNDS: usize = 40;

fn policies() -> Vec<ActivityPolicy> {
    let apps = [
        "box", "dropbox", "gdrive", "onedrive", "slack", "github", "okta", "mega",
    ];
    (0..100)
        .map(|i| {
            let t = ActivityType::ALL[i % ActivityType::ALL.len()];
            ActivityPolicy {
                name: format!("policy {i}"),
                enabled: true,
                severity: [Severity::Low, Severity::Medium, Severity::High][i % 3],
                activity: Some(OneOrMany::One(t)),
                apps: vec![
                    apps[i % apps.len()].into(),
                    apps[(i + 3) % apps.len()].into(),
                ],
                users: if i % 5 == 0 {
                    vec![format!("user{i}")]
                } else {
                    vec![]
                },
                ips: if i % 7 == 0 {
                    vec!["10.1.0.0/16".parse().unwrap()]
                } else {
                    vec![]
                },
                object_contains: (i % 4 == 0).then(|| "secret".to_string()),
                min_bytes: (i % 6 == 0).then_some(1_000_000),
                result: (i % 9 == 0).then_some(Outcome::Failure),
                sources: vec![],
                block_sessions_secs: None,
                connector_actions: vec![],
                notify: vec![],
                repeated: (i % 2 == 0).then_some(Repeated {
                    count: 50 + i as u32,
                    within_secs: 60,
                    per_user: i % 4 == 0,
                    per_app: i % 8 == 0,
                }),
            }
        })
        .collect()
}

fn records() -> Vec<Activity> {
    let apps = [
        "box", "dropbox", "gdrive", "onedrive", "slack", "github", "okta", "mega", "x",
    ];
    let t0 = Utc.with_ymd_and_hms(2026, 12, 3, 8, 0, 0).unwrap();
    (0..RECORDS)
        .map(|i| {
            let t = ActivityType::ALL[(i * 7) % ActivityType::ALL.len()];
            let mut a = Activity::new(
                i as u64,
                t0 + Duration::milliseconds(i as i64),
                apps[i % apps.len()],
                t,
                Source::Proxy,
            );
            a.user = Some(format!("user{}", i % 500));
            a.ip = Some([10, (i % 3) as u8, (i / 256 % 256) as u8, (i % 256) as u8].into());
            a.object = Some(format!("/files/report-{i}.pdf"));
            a.bytes = Some((i as u64 * 7919) % 5_000_000);
            a
        })
        .collect()
}

fn main() {
    let recs = records();
    let pols = policies();
    // Baseline: read every field a filter could look at.
    let t = Instant::now();
    let mut acc = 0u64;
    for _ in 0..ROUNDS {
        for a in &recs {
            let a = black_box(a);
            acc = acc
                .wrapping_add(a.activity.index() as u64)
                .wrapping_add(a.app.len() as u64)
                .wrapping_add(a.bytes.unwrap_or(0))
                .wrapping_add(a.user.as_ref().map_or(0, |u| u.len() as u64))
                .wrapping_add(a.object.as_ref().map_or(0, |o| o.len() as u64));
        }
    }
    black_box(acc);
    let base = t.elapsed().as_secs_f64();
    let n = (RECORDS * ROUNDS) as f64;

    let mut e = Engine::new(&pols);
    let now = Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, 0).unwrap();
    let t = Instant::now();
    let mut alerts = 0usize;
    for _ in 0..ROUNDS {
        for a in &recs {
            alerts += e.observe(black_box(a), now).len();
        }
    }
    let eng = t.elapsed().as_secs_f64();
    let s = e.stats();
    println!(
        "baseline (read fields): {:>12.0} rec/s\nengine, 100 policies:   {:>12.0} rec/s  ({:.1}x the baseline's time)\n  matched {} times, {} alerts opened, {} updates sent, {} windows",
        n / base,
        n / eng,
        eng / base,
        s.matched,
        s.alerts_opened,
        alerts - s.alerts_opened as usize,
        s.windows
    );

    // Anomaly detection on: the same records with countries (a third of them far away).
    let countries = ["FR", "DE", "US", "JP", "BR"];
    let placed: Vec<Activity> = recs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut a = a.clone();
            a.country = Some(countries[(i / 7) % countries.len()].into());
            a
        })
        .collect();
    let mut e = Engine::new(&pols).with_anomaly(&Default::default(), None);
    let t = Instant::now();
    for _ in 0..ROUNDS {
        for a in &placed {
            black_box(e.observe(black_box(a), now));
        }
    }
    let with = t.elapsed().as_secs_f64();
    let st = e.anomaly_stats().unwrap_or_default();
    println!(
        "engine + anomaly:       {:>12.0} rec/s  ({:.2}x the engine's time without it)\n  {} users tracked",
        n / with,
        with / eng,
        st.users,
    );
    // State per user: 100,000 users with logins, downloads, failures and countries each.
    let mut an = tollgate_activity::anomaly::Anomalies::new(&Default::default());
    let mut book = tollgate_activity::AlertBook::default();
    for i in 0..100_000u64 {
        for (k, kind) in [
            ActivityType::Login,
            ActivityType::Download,
            ActivityType::FailedLogin,
            ActivityType::AppUsed,
        ]
        .into_iter()
        .enumerate()
        {
            // Each user also uses an app of their own (every detection's tables fill).
            let app = if kind == ActivityType::AppUsed {
                format!("app{}", i % 40_000)
            } else {
                "okta".to_string()
            };
            let mut a = Activity::new(
                i,
                now + Duration::seconds(k as i64),
                app,
                kind,
                Source::Connector,
            );
            a.user = Some(format!("u{i}"));
            a.bytes = Some(1_000_000);
            a.bytes_up = Some(100_000);
            a.country = Some(countries[(i as usize + k) % countries.len()].into());
            an.observe(&a, None, &mut book, None);
        }
    }
    let per_user = an.bytes_per_user();
    println!(
        "anomaly state per user:  {per_user} bytes ({:.2}x the 1 KiB target), {} users",
        per_user as f64 / 1024.0,
        an.stats().users
    );
    let per_app = an.bytes_per_app();
    println!(
        "anomaly state per app:   {per_app} bytes ({:.2}x the 1 KiB target), {} apps",
        per_app as f64 / 1024.0,
        an.stats().apps
    );
}
