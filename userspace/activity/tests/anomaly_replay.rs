//! Anomaly detection replayed over a generated month: 300 users with homes in a dozen cities,
//! daily logins, downloads and the odd typo, commuters who cross a border they crossed during
//! learning, and flights at airliner speed. Planted in it: an impossible travel, a mass
//! download, a failed-login storm and a login from a country the user never used. Every
//! planted one alerts, for its user; the clean traffic raises nothing but the documented rate:
//! one "infrequent country" alert per user whose first trip to a country comes after the
//! learning week (here, each flyer's first day in New York), and nothing else.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use tollgate_activity::anomaly::{Anomalies, AnomalyConfig, MAX_USERS};
use tollgate_activity::geo::Place;
use tollgate_activity::{Activity, ActivityType, AlertBook, AlertStatus, Outcome, Source};

mod common;
use common::Lcg;

const CITIES: &[(&str, &str, f64, f64)] = &[
    ("paris", "FR", 48.8566, 2.3522),
    ("lyon", "FR", 45.7640, 4.8357),
    ("strasbourg", "FR", 48.5734, 7.7521),
    ("kehl", "DE", 48.5726, 7.8158),
    ("berlin", "DE", 52.5200, 13.4050),
    ("madrid", "ES", 40.4168, -3.7038),
    ("london", "GB", 51.5074, -0.1278),
    ("new-york", "US", 40.7128, -74.0060),
    ("chicago", "US", 41.8781, -87.6298),
    ("tokyo", "JP", 35.6762, 139.6503),
    ("sao-paulo", "BR", -23.5505, -46.6333),
    ("milan", "IT", 45.4642, 9.1900),
];

fn city(name: &str) -> Place {
    let c = CITIES.iter().find(|c| c.0 == name).unwrap();
    Place {
        country: c.1.into(),
        location: Some((c.2, c.3)),
    }
}

struct Event {
    a: Activity,
    place: Option<Place>,
}

fn event(t: DateTime<Utc>, user: &str, kind: ActivityType, ok: bool, at: &str) -> Event {
    let mut a = Activity::new(0, t, "okta", kind, Source::Connector);
    a.user = Some(user.into());
    a.result = if ok {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    let place = city(at);
    a.country = Some(place.country.clone());
    Event {
        a,
        place: Some(place),
    }
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// The clean month, sorted by time.
fn clean_month(rng: &mut Lcg) -> Vec<Event> {
    let homes = [
        "paris", "lyon", "berlin", "madrid", "london", "new-york", "chicago", "milan",
    ];
    let mut out = Vec::new();
    for u in 0..300u64 {
        let user = format!("user{u}@example.com");
        let home = homes[(u % homes.len() as u64) as usize];
        // Every tenth user commutes across the Rhine, from the first week on.
        let commuter = u % 10 == 3;
        // Every seventh flies Paris -> New York at airliner speed, in week three, and back.
        let flyer = u % 7 == 5;
        let mean_downloads = 5 + rng.below(30);
        for day in 0..30i64 {
            let date = t0() + TimeDelta::days(day);
            let at = if commuter {
                if day % 2 == 0 { "strasbourg" } else { "kehl" }
            } else if flyer && (14..18).contains(&day) {
                "new-york"
            } else if flyer {
                "paris"
            } else {
                home
            };
            let logins = 1 + rng.below(3);
            for l in 0..logins {
                let t = date
                    + TimeDelta::hours(8 + 3 * l as i64)
                    + TimeDelta::minutes(rng.below(50) as i64);
                out.push(event(t, &user, ActivityType::Login, true, at));
            }
            // A typo now and then.
            if rng.below(5) == 0 {
                let t = date + TimeDelta::hours(8) + TimeDelta::minutes(55);
                out.push(event(t, &user, ActivityType::FailedLogin, false, at));
            }
            let n = rng.below(2 * mean_downloads);
            for k in 0..n {
                let t = date + TimeDelta::hours(9) + TimeDelta::seconds(k as i64 * 97);
                out.push(event(t, &user, ActivityType::Download, true, at));
            }
        }
    }
    out.sort_by_key(|e| e.a.time);
    out
}

/// A flyer: flies Paris -> New York in week three (see `clean_month`).
fn is_flyer(user: &str) -> bool {
    let u: u64 = user
        .trim_start_matches("user")
        .split('@')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    u % 7 == 5 && u % 10 != 3
}

/// The alerts beyond the documented rate: anything but one infrequent-country alert (US) per
/// flyer.
fn beyond_the_rate(book: &AlertBook) -> Vec<String> {
    let mut flyers_seen = std::collections::BTreeSet::new();
    book.iter()
        .filter(|a| {
            let user = a.entities.user.clone().unwrap_or_default();
            let documented = a.policy == "anomaly: activity from an infrequent country"
                && a.reason.contains("from US")
                && is_flyer(&user)
                && a.count == 1
                && flyers_seen.insert(user);
            !documented
        })
        .map(|a| format!("{} {:?}: {}", a.policy, a.entities.user, a.reason))
        .collect()
}

fn replay(events: &[Event]) -> (AlertBook, Anomalies) {
    let mut an = Anomalies::new(&AnomalyConfig::default());
    let mut book = AlertBook::default();
    for e in events {
        an.observe(&e.a, e.place.clone(), &mut book, Some("gw"));
    }
    (book, an)
}

#[test]
fn a_clean_month_raises_nothing_beyond_the_documented_rate() {
    let mut rng = Lcg(7);
    let events = clean_month(&mut rng);
    assert!(events.len() > 100_000, "{}", events.len());
    let (book, an) = replay(&events);
    let beyond = beyond_the_rate(&book);
    assert!(
        beyond.is_empty(),
        "{} alerts on clean traffic beyond the rate:\n{}",
        beyond.len(),
        beyond.join("\n")
    );
    let flyers = (0..300).filter(|u| is_flyer(&format!("user{u}@x"))).count();
    assert_eq!(book.len(), flyers, "one per flyer's first trip");
    assert_eq!(an.stats().users, 300);
}

#[test]
fn every_planted_anomaly_alerts_for_its_user() {
    let mut rng = Lcg(11);
    let mut events = clean_month(&mut rng);
    let day = |d: i64, h: i64, m: i64| {
        t0() + TimeDelta::days(d) + TimeDelta::hours(h) + TimeDelta::minutes(m)
    };
    // user1 (home lyon): Lyon 09:00, Tokyo 09:40, after learning.
    events.push(event(
        day(20, 12, 0),
        "user1@example.com",
        ActivityType::Login,
        true,
        "lyon",
    ));
    events.push(event(
        day(20, 12, 40),
        "user1@example.com",
        ActivityType::Login,
        true,
        "tokyo",
    ));
    // user2 (home berlin): 400 downloads in an afternoon.
    for k in 0..400 {
        events.push(event(
            day(22, 14, 0) + TimeDelta::seconds(k * 5),
            "user2@example.com",
            ActivityType::Download,
            true,
            "berlin",
        ));
    }
    // user4 (home london): 15 failed logins in five minutes.
    for k in 0..15 {
        events.push(event(
            day(24, 3, 0) + TimeDelta::seconds(k * 20),
            "user4@example.com",
            ActivityType::FailedLogin,
            false,
            "london",
        ));
    }
    // user6 (home chicago): a login from Brazil at 02:00, where the user never was (a VPN
    // exit, say), twelve hours after the last one from Chicago (possible by plane), and six
    // hours before the next from Chicago (not possible).
    events.push(event(
        day(26, 2, 0),
        "user6@example.com",
        ActivityType::Login,
        true,
        "sao-paulo",
    ));
    events.sort_by_key(|e| e.a.time);
    let (book, an) = replay(&events);
    let mut by: BTreeMap<(String, String), String> = BTreeMap::new();
    for a in book
        .iter()
        .filter(|a| !is_flyer(a.entities.user.as_deref().unwrap_or("")))
    {
        by.insert(
            (
                a.policy.clone(),
                a.entities.user.clone().unwrap_or_default(),
            ),
            a.reason.clone(),
        );
    }
    let expect = [
        ("anomaly: impossible travel", "user1@example.com", "km/h"),
        (
            "anomaly: activity from an infrequent country",
            "user1@example.com",
            "JP",
        ),
        ("anomaly: mass download", "user2@example.com", "baseline"),
        (
            "anomaly: repeated failed logins",
            "user4@example.com",
            "failed logins within 10 min",
        ),
        (
            "anomaly: activity from an infrequent country",
            "user6@example.com",
            "BR",
        ),
        // And back home at 08:00: 8,400 km in six hours.
        (
            "anomaly: impossible travel",
            "user6@example.com",
            "BR and US",
        ),
    ];
    for (policy, user, says) in expect {
        let reason = by
            .get(&(policy.to_string(), user.to_string()))
            .unwrap_or_else(|| panic!("no {policy} for {user}: {by:#?}"));
        assert!(reason.contains(says), "{policy} for {user}: {reason}");
    }
    assert_eq!(
        by.len(),
        expect.len(),
        "alerts beyond the planted ones: {by:#?}"
    );
    let st = an.stats();
    assert_eq!(
        (st.impossible_travel, st.mass_download, st.failed_logins),
        (2, 1, 1)
    );
}

#[test]
fn learning_late_records_and_sprayed_names() {
    let mut an = Anomalies::new(&AnomalyConfig::default());
    let mut book = AlertBook::default();
    // Impossible within the learning week: learned, not alerted.
    let e1 = event(t0(), "new@example.com", ActivityType::Login, true, "paris");
    let e2 = event(
        t0() + TimeDelta::minutes(30),
        "new@example.com",
        ActivityType::Login,
        true,
        "tokyo",
    );
    an.observe(&e1.a, e1.place, &mut book, None);
    an.observe(&e2.a, e2.place, &mut book, None);
    assert_eq!(book.len(), 0);
    // After learning, a record from the past far away does not "teleport" the user.
    let later = t0() + TimeDelta::days(10);
    let now = event(later, "new@example.com", ActivityType::Login, true, "paris");
    an.observe(&now.a, now.place, &mut book, None);
    let past = event(
        later - TimeDelta::hours(1),
        "new@example.com",
        ActivityType::Login,
        true,
        "tokyo",
    );
    an.observe(&past.a, past.place, &mut book, None);
    assert!(
        book.iter()
            .all(|a| a.policy != "anomaly: impossible travel"),
        "a late record made a travel"
    );
    assert_eq!(an.stats().out_of_order, 1);
    // Spraying user names: the table stays bounded, each user small.
    let mut an = Anomalies::new(&AnomalyConfig::default());
    for i in 0..(MAX_USERS as u64 + 5_000) {
        let e = event(
            t0() + TimeDelta::seconds(i as i64),
            &format!("spray{i}"),
            ActivityType::FailedLogin,
            false,
            "paris",
        );
        an.observe(&e.a, None, &mut book, None);
    }
    let st = an.stats();
    assert!(st.users as usize <= MAX_USERS, "{st:?}");
    assert_eq!(
        st.users + st.users_evicted,
        MAX_USERS as u64 + 5_000,
        "{st:?}"
    );
    assert!(
        an.bytes_per_user() <= 1024,
        "{} bytes a user",
        an.bytes_per_user()
    );
}

#[test]
fn a_resolved_anomaly_alert_lets_the_next_one_open() {
    // Two failed-login storms by one user, an hour apart; the analyst resolves the first
    // alert in between. The second storm is a new open alert, not a count on the closed one.
    let mut an = Anomalies::new(&AnomalyConfig::default());
    let mut book = AlertBook::default();
    let storm = |an: &mut Anomalies, book: &mut AlertBook, start: DateTime<Utc>| {
        for i in 0..10 {
            let e = event(
                start + TimeDelta::seconds(i * 20),
                "Alice@example.com",
                ActivityType::FailedLogin,
                false,
                "paris",
            );
            an.observe(&e.a, e.place, book, None);
        }
    };
    storm(&mut an, &mut book, t0());
    let first: Vec<u64> = book.iter().map(|a| a.id).collect();
    assert_eq!(first.len(), 1, "{:#?}", book.iter().collect::<Vec<_>>());
    book.set_status(first[0], AlertStatus::Resolved, Some("alice's typo".into()))
        .unwrap();
    storm(&mut an, &mut book, t0() + TimeDelta::hours(1));
    let all: Vec<(u64, AlertStatus, u64)> =
        book.iter().map(|a| (a.id, a.status, a.count)).collect();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0], (first[0], AlertStatus::Resolved, 1));
    assert_eq!((all[1].1, all[1].2), (AlertStatus::Open, 1));
    // And a third storm counts into the open one.
    storm(&mut an, &mut book, t0() + TimeDelta::hours(2));
    assert_eq!(book.len(), 2);
    assert_eq!(book.get(all[1].0).map(|a| a.count), Some(2));
}
