//! The app detections (`unusual_upload`, `risky_app_first_use`, `app_traffic_spike`) replayed
//! over a generated month of discovery records: 200 users of 15 established apps, one record
//! per user, app and day with the bytes both ways, as the gateway's discovery intervals make
//! them. Planted in it: an exfiltration to an unsanctioned app and one to a brand-new app, a
//! new risky app that many users pick up in an afternoon, and a day of traffic to one app far
//! above its own. Each planted one alerts, once; the clean month, a new app with a good score
//! taken up by many users, and a large upload to a sanctioned app raise nothing.

use chrono::{DateTime, TimeDelta, Utc};
use tollgate_activity::anomaly::{Anomalies, AnomalyConfig, AppStanding, MAX_APPS};
use tollgate_activity::{Activity, ActivityType, AlertBook, AlertStatus, Source};

mod common;
use common::Lcg;

const MB: u64 = 1_000_000;
const GB: u64 = 1_000_000_000;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn used(t: DateTime<Utc>, user: &str, app: &str, down: u64, up: u64) -> Activity {
    let mut a = Activity::new(0, t, app, ActivityType::AppUsed, Source::Discovery);
    a.user = Some(user.into());
    a.bytes = Some(down + up);
    a.bytes_up = Some(up);
    a
}

fn established() -> Vec<String> {
    (0..15).map(|i| format!("app{i}")).collect()
}

/// Every user uses five of the established apps every day: 10–50 MB down, a tenth up.
fn clean_day(rng: &mut Lcg, day: i64, out: &mut Vec<Activity>) {
    let apps = established();
    for u in 0..200u64 {
        for k in 0..5u64 {
            let app = &apps[((u + k * 3) % 15) as usize];
            let t = t0() + TimeDelta::days(day) + TimeDelta::seconds(rng.below(86_000) as i64);
            let down = (10 + rng.below(40)) * MB;
            out.push(used(t, &format!("user{u}"), app, down, down / 10));
        }
    }
}

fn detector() -> (Anomalies, AlertBook) {
    let mut an = Anomalies::new(&AnomalyConfig::default());
    for app in established() {
        an.set_app_standing(
            &app,
            AppStanding {
                risk_score: Some(8.0),
                unsanctioned: false,
            },
        );
    }
    (an, AlertBook::default())
}

fn replay(an: &mut Anomalies, book: &mut AlertBook, mut records: Vec<Activity>) {
    records.sort_by_key(|a| a.time);
    for a in &records {
        an.observe(a, None, book, Some("gw-test"));
    }
}

/// The app-detection alerts in the book: (policy, user, app).
fn app_alerts(book: &AlertBook) -> Vec<(String, Option<String>, Option<String>)> {
    book.iter()
        .filter(|a| {
            a.policy.contains("upload")
                || a.policy.contains("risky app")
                || a.policy.contains("baseline")
        })
        .map(|a| {
            (
                a.policy.clone(),
                a.entities.user.clone(),
                a.entities.app.clone(),
            )
        })
        .collect()
}

#[test]
fn a_clean_month_raises_no_app_alert() {
    let mut rng = Lcg(7);
    let (mut an, mut book) = detector();
    let mut records = Vec::new();
    for day in 0..30 {
        clean_day(&mut rng, day, &mut records);
    }
    // A new app with a good score, taken up by 50 users in an afternoon of day 16.
    an.set_app_standing(
        "goodnotes",
        AppStanding {
            risk_score: Some(8.0),
            unsanctioned: false,
        },
    );
    for u in 0..50 {
        let t = t0() + TimeDelta::days(16) + TimeDelta::minutes(12 * 60 + u);
        records.push(used(t, &format!("user{u}"), "goodnotes", 5 * MB, MB));
    }
    // A large upload to a sanctioned, established app.
    records.push(used(
        t0() + TimeDelta::days(21) + TimeDelta::hours(10),
        "user3",
        "app2",
        MB,
        3 * GB,
    ));
    replay(&mut an, &mut book, records);
    assert_eq!(
        app_alerts(&book),
        vec![],
        "{:#?}",
        book.iter().collect::<Vec<_>>()
    );
    let st = an.stats();
    assert_eq!(st.apps, 16);
    assert_eq!(
        (
            st.unusual_upload,
            st.risky_app_first_use,
            st.app_traffic_spike
        ),
        (0, 0, 0)
    );
}

#[test]
fn every_planted_app_anomaly_alerts_once() {
    let mut rng = Lcg(11);
    let (mut an, mut book) = detector();
    let mut records = Vec::new();
    for day in 0..30 {
        clean_day(&mut rng, day, &mut records);
    }
    // "mega": used lightly from the start, then unsanctioned; user42 sends it 2 GB on day 20.
    for day in 0..30 {
        let t = t0() + TimeDelta::days(day) + TimeDelta::hours(9);
        records.push(used(t, "user7", "mega", 2 * MB, MB));
    }
    an.set_app_standing(
        "mega",
        AppStanding {
            risk_score: Some(4.0),
            unsanctioned: true,
        },
    );
    for h in 0..4 {
        let t = t0() + TimeDelta::days(20) + TimeDelta::hours(13 + h);
        records.push(used(t, "user42", "mega", MB, 500 * MB));
    }
    // "dropzone": first seen on day 18, when user43 sends it 400 MB (untagged, middling score).
    an.set_app_standing(
        "dropzone",
        AppStanding {
            risk_score: Some(6.0),
            unsanctioned: false,
        },
    );
    records.push(used(
        t0() + TimeDelta::days(18) + TimeDelta::hours(22),
        "user43",
        "dropzone",
        MB,
        400 * MB,
    ));
    // "shadyshare": risk 2, first used on day 15 and picked up by 30 users within 3 hours.
    an.set_app_standing(
        "shadyshare",
        AppStanding {
            risk_score: Some(2.0),
            unsanctioned: false,
        },
    );
    for u in 0..30 {
        let t = t0() + TimeDelta::days(15) + TimeDelta::minutes(14 * 60 + 6 * u);
        records.push(used(t, &format!("user{u}"), "shadyshare", 3 * MB, MB));
    }
    // app4: a normal day is about 2 GB; on day 22 someone pulls 40 GB through it.
    records.push(used(
        t0() + TimeDelta::days(22) + TimeDelta::hours(23),
        "user100",
        "app4",
        40 * GB,
        MB,
    ));
    replay(&mut an, &mut book, records);
    let mut alerts = app_alerts(&book);
    alerts.sort();
    let want = |p: &str, u: Option<&str>, a: &str| {
        (
            format!("anomaly: {p}"),
            u.map(str::to_string),
            Some(a.to_string()),
        )
    };
    assert_eq!(
        alerts,
        vec![
            want(
                "first use of a risky app by many users",
                Some("user10"),
                "shadyshare"
            ),
            want(
                "traffic to an app far above its baseline",
                Some("user100"),
                "app4"
            ),
            // The exfiltration is also 2 GB through an app that carries 3 MB a day.
            want(
                "traffic to an app far above its baseline",
                Some("user42"),
                "mega"
            ),
            want(
                "unusual upload to an unsanctioned or new app",
                Some("user42"),
                "mega"
            ),
            want(
                "unusual upload to an unsanctioned or new app",
                Some("user43"),
                "dropzone"
            ),
        ],
        "{:#?}",
        book.iter().collect::<Vec<_>>()
    );
    let reasons: Vec<String> = book.iter().map(|a| a.reason.clone()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("shadyshare (risk score 2.0, below 5)")),
        "{reasons:#?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("(unsanctioned) today")),
        "{reasons:#?}"
    );
}

#[test]
fn an_app_nobody_described_is_neither_risky_nor_unsanctioned() {
    // The same afternoon as above, but the gateway never told the detector the app's score.
    let mut rng = Lcg(3);
    let (mut an, mut book) = detector();
    let mut records = Vec::new();
    for day in 0..16 {
        clean_day(&mut rng, day, &mut records);
    }
    for u in 0..30 {
        let t = t0() + TimeDelta::days(15) + TimeDelta::minutes(14 * 60 + 6 * u);
        records.push(used(t, &format!("user{u}"), "shadyshare", 3 * MB, MB));
    }
    replay(&mut an, &mut book, records);
    assert_eq!(app_alerts(&book), vec![]);
}

#[test]
fn learning_raises_nothing_and_sprayed_app_names_stay_bounded() {
    // During the detector's first week a new risky app and a spike are only learned.
    let (mut an, mut book) = detector();
    an.set_app_standing(
        "shadyshare",
        AppStanding {
            risk_score: Some(1.0),
            unsanctioned: true,
        },
    );
    let mut records = Vec::new();
    for u in 0..40 {
        let t = t0() + TimeDelta::hours(2) + TimeDelta::minutes(u);
        records.push(used(t, &format!("user{u}"), "shadyshare", 50 * GB, 5 * GB));
    }
    replay(&mut an, &mut book, records);
    assert_eq!(app_alerts(&book), vec![]);

    // A LAN host spraying made-up app names fills the table, never past its bound.
    let t = t0() + TimeDelta::days(1);
    for i in 0..(MAX_APPS + 5_000) {
        an.observe(
            &used(
                t + TimeDelta::seconds(i as i64),
                "user1",
                &format!("x{i}.example"),
                MB,
                MB,
            ),
            None,
            &mut book,
            None,
        );
    }
    let st = an.stats();
    assert!(st.apps <= MAX_APPS as u64, "{st:?}");
    assert!(st.apps_evicted >= 5_000, "{st:?}");
    assert!(an.bytes_per_app() <= 1024, "{} bytes", an.bytes_per_app());
}

#[test]
fn a_resolved_app_alert_lets_the_next_spike_open() {
    // app4 spikes on day 22 and the alert is resolved; it spikes again on day 23 (far above
    // a baseline that now includes day 22): a new open alert (the per-app alert is keyed by app, while it also names the user who tipped it).
    let mut rng = Lcg(5);
    let (mut an, mut book) = detector();
    let mut records = Vec::new();
    for day in 0..24 {
        clean_day(&mut rng, day, &mut records);
    }
    let spike = |day: i64, user: &str, bytes: u64| {
        used(
            t0() + TimeDelta::days(day) + TimeDelta::hours(23) + TimeDelta::minutes(50),
            user,
            "app4",
            bytes,
            MB,
        )
    };
    let (before, after): (Vec<Activity>, Vec<Activity>) = {
        records.sort_by_key(|a| a.time);
        let cut = t0() + TimeDelta::days(23);
        records.into_iter().partition(|a| a.time < cut)
    };
    let mut before = before;
    before.push(spike(22, "user100", 40 * GB));
    replay(&mut an, &mut book, before);
    let spikes = |book: &AlertBook| -> Vec<(u64, AlertStatus)> {
        book.iter()
            .filter(|a| a.policy.contains("far above its baseline"))
            .map(|a| (a.id, a.status))
            .collect()
    };
    let first = spikes(&book);
    assert_eq!(first.len(), 1, "{first:?}");
    book.set_status(first[0].0, AlertStatus::Resolved, None)
        .unwrap();
    let mut after = after;
    after.push(spike(23, "user101", 1_000 * GB));
    replay(&mut an, &mut book, after);
    let both = spikes(&book);
    assert_eq!(both.len(), 2, "{:#?}", book.iter().collect::<Vec<_>>());
    assert_eq!(both[0], (first[0].0, AlertStatus::Resolved));
    assert_eq!(both[1].1, AlertStatus::Open);
}

#[test]
fn a_new_app_for_unusual_upload_follows_its_own_learning() {
    // The admin gave risky_app_first_use a longer learning (60 days) and unusual_upload a
    // shorter one (7, the default): an app first seen on day 18 is new for unusual_upload, and
    // an exfiltration to it in two parts (the second one crosses the line) alerts.
    let mut rng = Lcg(13);
    let mut cfg = AnomalyConfig::default();
    cfg.risky_app_first_use.learning_days = 60;
    let mut an = Anomalies::new(&cfg);
    let mut book = AlertBook::default();
    let mut records = Vec::new();
    for day in 0..20 {
        clean_day(&mut rng, day, &mut records);
    }
    let at = t0() + TimeDelta::days(18) + TimeDelta::hours(21);
    records.push(used(at, "user43", "dropzone", MB, 60 * MB));
    records.push(used(
        at + TimeDelta::hours(1),
        "user43",
        "dropzone",
        MB,
        400 * MB,
    ));
    replay(&mut an, &mut book, records);
    let uploads: Vec<_> = app_alerts(&book)
        .into_iter()
        .filter(|a| a.0.contains("upload"))
        .collect();
    assert_eq!(uploads.len(), 1, "{:#?}", book.iter().collect::<Vec<_>>());
    assert_eq!(uploads[0].2.as_deref(), Some("dropzone"));
}

#[test]
fn an_app_seen_during_unusual_uploads_learning_is_not_new_to_it() {
    // The other way round: unusual_upload learns for 30 days, risky_app_first_use for 7. An
    // app first seen on day 28 is not new to unusual_upload, so a large upload to it on day
    // 31 (within 7 days, by a user who has learned) raises nothing.
    let mut rng = Lcg(17);
    let mut cfg = AnomalyConfig::default();
    cfg.unusual_upload.learning_days = 30;
    cfg.risky_app_first_use.learning_days = 7;
    let mut an = Anomalies::new(&cfg);
    let mut book = AlertBook::default();
    let mut records = Vec::new();
    for day in 0..33 {
        clean_day(&mut rng, day, &mut records);
    }
    for (day, up) in [(28, MB), (31, 2 * GB)] {
        let t = t0() + TimeDelta::days(day) + TimeDelta::hours(9);
        records.push(used(t, "user44", "dropzone", MB, up));
    }
    replay(&mut an, &mut book, records);
    assert_eq!(
        app_alerts(&book)
            .into_iter()
            .filter(|a| a.0.contains("upload"))
            .count(),
        0,
        "{:#?}",
        book.iter().collect::<Vec<_>>()
    );
    // The same upload, by another user, to an app first seen after the replay (day 33), is an
    // alert (user44's own baseline now holds the 2 GB).
    let t = t0() + TimeDelta::days(33) + TimeDelta::hours(10);
    an.observe(
        &used(t, "user45", "sendbox", MB, 2 * GB),
        None,
        &mut book,
        None,
    );
    assert_eq!(
        app_alerts(&book)
            .into_iter()
            .filter(|a| a.0.contains("upload"))
            .count(),
        1
    );
}
