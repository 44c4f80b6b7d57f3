//! The engine as a pure function: policies from TOML, activities with chosen times.

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::Deserialize;
use tollgate_activity::{
    Activity, ActivityPolicy, ActivityType, AlertEventKind, AlertStatus, Engine, Outcome, Source,
    validate,
};

#[derive(Deserialize)]
struct File {
    activity_policies: Vec<ActivityPolicy>,
}

fn policies(toml_text: &str) -> Vec<ActivityPolicy> {
    let f: File = toml::from_str(toml_text).expect("policies parse");
    validate(&f.activity_policies).expect("policies valid");
    f.activity_policies
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 3, 8, 0, 0).unwrap()
}

fn act(id: u64, at: DateTime<Utc>, user: &str, app: &str, t: ActivityType) -> Activity {
    let mut a = Activity::new(id, at, app, t, Source::Proxy);
    a.user = Some(user.into());
    a.ip = Some([10, 0, 0, (id % 200) as u8 + 1].into());
    a.object = Some(format!("file-{id}.pdf"));
    a.bytes = Some(1000 * id);
    a
}

const MASS_DOWNLOAD: &str = r#"
[[activity_policies]]
name = "mass download"
severity = "high"
activity = "download"
apps = ["box"]
repeated = { count = 50, within_secs = 60, per_user = true }
"#;

#[test]
fn a_single_activity_policy_alerts_on_each_match_and_dedups() {
    let mut e = Engine::new(&policies(
        r#"
[[activity_policies]]
name = "blocked upload"
severity = "medium"
activity = ["blocked", "upload"]
object_contains = "SECRET"
min_bytes = 10
"#,
    ));
    let mut a = act(1, t0(), "alice", "dropbox", ActivityType::Upload);
    a.object = Some("q3-secret-plan.xlsx".into());
    let ev = e.observe(&a, t0());
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].kind, AlertEventKind::Opened);
    assert_eq!(ev[0].alert.policy, "blocked upload");
    assert_eq!(ev[0].alert.entities.user.as_deref(), Some("alice"));
    assert_eq!(ev[0].alert.activities.len(), 1);
    // Not matching: another object, too few bytes, another type.
    let mut b = a.clone();
    b.object = Some("holiday.jpg".into());
    assert!(e.observe(&b, t0()).is_empty());
    let mut c = a.clone();
    c.bytes = Some(5);
    assert!(e.observe(&c, t0()).is_empty());
    let mut d = a.clone();
    d.activity = ActivityType::Download;
    assert!(e.observe(&d, t0()).is_empty());
    // Same policy and entity again: the open alert counts, and the update is held back
    // (within the update interval).
    assert!(e.observe(&a, t0() + Duration::seconds(1)).is_empty());
    let id = ev[0].alert.id;
    assert_eq!(e.book().get(id).unwrap().count, 2);
    assert_eq!(e.book().len(), 1);
    // After the interval the update goes out.
    let up = e.observe(&a, t0() + Duration::seconds(61));
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].kind, AlertEventKind::Updated);
    assert_eq!(up[0].alert.count, 3);
    // Another user: its own alert.
    let mut bob = a.clone();
    bob.user = Some("bob".into());
    let ev = e.observe(&bob, t0());
    assert_eq!(ev.len(), 1);
    assert_ne!(ev[0].alert.id, id);
    // Resolved: the next match opens a new alert.
    e.book_mut()
        .set_status(id, AlertStatus::Resolved, Some("checked with alice".into()))
        .unwrap();
    let ev = e.observe(&a, t0() + Duration::seconds(62));
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].kind, AlertEventKind::Opened);
    assert_ne!(ev[0].alert.id, id);
    assert_eq!(
        e.book().get(id).unwrap().comment.as_deref(),
        Some("checked with alice")
    );
}

#[test]
fn repeated_per_user_fires_at_the_count_within_the_window_only() {
    let mut e = Engine::new(&policies(MASS_DOWNLOAD));
    // 49 downloads by alice in 30 s: nothing.
    for i in 0..49 {
        let at = t0() + Duration::milliseconds(i * 600);
        assert!(
            e.observe(
                &act(i as u64, at, "alice", "box", ActivityType::Download),
                at
            )
            .is_empty(),
            "download {i}"
        );
    }
    // Bob's downloads do not count for alice.
    for i in 0..10 {
        let at = t0() + Duration::seconds(31);
        assert!(
            e.observe(&act(100 + i, at, "bob", "box", ActivityType::Download), at)
                .is_empty()
        );
    }
    // Another app does not count either.
    let at = t0() + Duration::seconds(31);
    assert!(
        e.observe(
            &act(200, at, "alice", "dropbox", ActivityType::Download),
            at
        )
        .is_empty()
    );
    // The 50th within the minute fires, with the newest 10 as proof.
    let at = t0() + Duration::seconds(32);
    let ev = e.observe(&act(300, at, "alice", "box", ActivityType::Download), at);
    assert_eq!(ev.len(), 1, "{ev:?}");
    let a = &ev[0].alert;
    assert_eq!(a.entities.user.as_deref(), Some("alice"));
    assert_eq!(a.activities.len(), 10);
    assert_eq!(a.activities.last().unwrap().id, 300);
    assert_eq!(a.reason, "50 download within 60 s");
}

#[test]
fn a_slow_trickle_never_fills_the_window() {
    let mut e = Engine::new(&policies(MASS_DOWNLOAD));
    // One download every 2 s for 10 minutes: at most ~32 in any minute.
    for i in 0..300 {
        let at = t0() + Duration::seconds(i * 2);
        assert!(
            e.observe(
                &act(i as u64, at, "alice", "box", ActivityType::Download),
                at
            )
            .is_empty(),
            "download {i}"
        );
    }
    // The same 300 within 60 s: alerts.
    let mut fired = 0;
    for i in 0..300 {
        let at = t0() + Duration::seconds(1000) + Duration::milliseconds(i * 200);
        fired += e
            .observe(
                &act(i as u64, at, "alice", "box", ActivityType::Download),
                at,
            )
            .len();
    }
    assert_eq!(fired, 1, "one alert, the rest counted in it");
    let open = e.book().iter().next().unwrap();
    assert_eq!(open.count, 6, "300 downloads are 6 times 50");
}

#[test]
fn repeated_without_per_user_counts_everyone_together() {
    let mut e = Engine::new(&policies(
        r#"
[[activity_policies]]
name = "failed login storm"
activity = "failed_login"
result = "failure"
repeated = { count = 5, within_secs = 10 }
"#,
    ));
    let mut fired = Vec::new();
    for i in 0..5 {
        let mut a = act(
            i,
            t0(),
            &format!("user{i}"),
            "okta",
            ActivityType::FailedLogin,
        );
        a.result = Outcome::Failure;
        fired.extend(e.observe(&a, t0()));
    }
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].alert.entities.user, None, "not about one user");
    // A successful result does not match.
    let mut a = act(9, t0(), "x", "okta", ActivityType::FailedLogin);
    a.result = Outcome::Success;
    assert!(e.observe(&a, t0()).is_empty());
}

#[test]
fn a_flood_of_made_up_users_stays_within_the_window_table() {
    let mut e = Engine::new(&policies(MASS_DOWNLOAD)).with_max_windows(1000);
    for i in 0..100_000u64 {
        let at = t0() + Duration::milliseconds(i as i64);
        e.observe(
            &act(
                i,
                at,
                &format!("attacker-{i}"),
                "box",
                ActivityType::Download,
            ),
            at,
        );
    }
    let s = e.stats();
    assert!(s.windows <= 1000, "{s:?}");
    assert_eq!(s.windows_evicted, 99_000, "{s:?}");
    assert_eq!(s.alerts_opened, 0);
    // A real burst still alerts while the flood goes on.
    let mut fired = 0;
    for i in 0..50 {
        let at = t0() + Duration::seconds(100) + Duration::milliseconds(i);
        fired += e
            .observe(
                &act(i as u64, at, "alice", "box", ActivityType::Download),
                at,
            )
            .len();
    }
    assert_eq!(fired, 1);
    // Idle windows are forgotten.
    e.expire(t0() + Duration::seconds(1000));
    assert_eq!(e.stats().windows, 0);
}

#[test]
fn the_alert_book_is_bounded_and_closed_alerts_go_first() {
    let mut e = Engine::new(&policies(
        "[[activity_policies]]\nname = \"any upload\"\nactivity = \"upload\"\n",
    ))
    .with_book(tollgate_activity::AlertBook::new(100));
    let first = e.observe(&act(0, t0(), "u0", "box", ActivityType::Upload), t0());
    e.book_mut()
        .set_status(first[0].alert.id, AlertStatus::Dismissed, None)
        .unwrap();
    for i in 1..=200u64 {
        e.observe(
            &act(i, t0(), &format!("u{i}"), "box", ActivityType::Upload),
            t0(),
        );
    }
    assert_eq!(e.book().len(), 100);
    assert!(
        e.book().get(first[0].alert.id).is_none(),
        "the dismissed one went first"
    );
    assert_eq!(e.stats().alerts_evicted, 101);
}

#[test]
fn disabled_and_invalid_policies() {
    let mut e = Engine::new(&policies(
        "[[activity_policies]]\nname = \"off\"\nenabled = false\nactivity = \"upload\"\n",
    ));
    assert_eq!(e.policies(), 0);
    assert!(
        e.observe(&act(1, t0(), "a", "b", ActivityType::Upload), t0())
            .is_empty()
    );
    for (text, key) in [
        ("[[activity_policies]]\nname = \"\"\n", "name"),
        (
            "[[activity_policies]]\nname = \"a\"\n[[activity_policies]]\nname = \"a\"\n",
            "name",
        ),
        (
            "[[activity_policies]]\nname = \"a\"\nrepeated = { count = 0, within_secs = 5 }\n",
            "repeated.count",
        ),
        (
            "[[activity_policies]]\nname = \"a\"\nrepeated = { count = 5, within_secs = 0 }\n",
            "repeated.within_secs",
        ),
        ("[[activity_policies]]\nname = \"a\\nb\"\n", "name"),
        // A connector call acts on the alert's user: a per-device count has none.
        (
            "[[activity_policies]]\nname = \"a\"\nactivity = \"download\"\nrepeated = { count = 5, within_secs = 60 }\nconnector_actions = [{ connector = \"okta\", action = \"revoke_sessions\" }]\n",
            "connector_actions",
        ),
        // Suspending on what an outsider can cause (failed logins, or any activity) is refused.
        (
            "[[activity_policies]]\nname = \"a\"\nactivity = [\"login\", \"failed_login\"]\nconnector_actions = [{ connector = \"okta\", action = \"suspend_user\" }]\n",
            "connector_actions",
        ),
        (
            "[[activity_policies]]\nname = \"a\"\nconnector_actions = [{ connector = \"okta\", action = \"suspend_user\" }]\n",
            "connector_actions",
        ),
        (
            "[[activity_policies]]\nname = \"a\"\nactivity = \"login\"\nconnector_actions = [{ connector = \"\", action = \"revoke_sessions\" }]\n",
            "connector_actions.connector",
        ),
    ] {
        let f: File = toml::from_str(text).unwrap();
        let err = validate(&f.activity_policies).unwrap_err();
        assert_eq!(err.key, key, "{text}");
    }
    // Unknown keys and values are refused by the parser.
    assert!(toml::from_str::<File>("[[activity_policies]]\nname = \"a\"\ncolour = 1\n").is_err());
    assert!(
        toml::from_str::<File>("[[activity_policies]]\nname = \"a\"\nactivity = \"dance\"\n")
            .is_err()
    );
    assert!(
        toml::from_str::<File>("[[activity_policies]]\nname = \"a\"\nseverity = \"critical\"\n")
            .is_err()
    );
}

#[test]
fn ip_user_and_source_filters() {
    let mut e = Engine::new(&policies(
        r#"
[[activity_policies]]
name = "admin from outside"
activity = "admin_action"
users = ["Root@Example.com"]
ips = ["192.0.2.0/24", "2001:db8::/32"]
sources = ["connector"]
"#,
    ));
    let mut a = Activity::new(
        1,
        t0(),
        "github",
        ActivityType::AdminAction,
        Source::Connector,
    );
    a.user = Some("root@example.COM".into());
    a.ip = Some("192.0.2.7".parse().unwrap());
    assert_eq!(e.observe(&a, t0()).len(), 1);
    let mut b = a.clone();
    b.ip = Some("198.51.100.1".parse().unwrap());
    assert!(e.observe(&b, t0()).is_empty());
    let mut c = a.clone();
    c.source = Source::Proxy;
    assert!(e.observe(&c, t0()).is_empty());
    let mut d = a.clone();
    d.user = None;
    assert!(e.observe(&d, t0()).is_empty());
    let mut v6 = a.clone();
    v6.ip = Some("2001:db8::1".parse().unwrap());
    v6.user = Some("root@example.com".into());
    // Same user: the open alert counts it.
    assert!(e.observe(&v6, t0()).is_empty());
    assert_eq!(e.book().iter().next().unwrap().count, 2);
}

#[test]
fn records_and_alerts_round_trip_as_json() {
    let mut e = Engine::new(&policies(MASS_DOWNLOAD));
    let mut ev = Vec::new();
    for i in 0..50 {
        ev.extend(e.observe(&act(i, t0(), "alice", "box", ActivityType::Download), t0()));
    }
    let text = serde_json::to_string(&ev[0].alert).unwrap();
    assert!(text.contains("\"activity\":\"download\""), "{text}");
    assert!(text.contains("\"status\":\"open\""), "{text}");
    assert!(text.contains("\"severity\":\"high\""), "{text}");
    let back: tollgate_activity::Alert = serde_json::from_str(&text).unwrap();
    assert_eq!(back, ev[0].alert);
    // A book read back keeps the dedup key of its open alerts.
    let book = tollgate_activity::AlertBook::restore(vec![back], 100);
    let mut e2 = Engine::new(&policies(MASS_DOWNLOAD)).with_book(book);
    let mut again = Vec::new();
    for i in 0..50 {
        again.extend(e2.observe(&act(i, t0(), "alice", "box", ActivityType::Download), t0()));
    }
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        again[0].kind,
        AlertEventKind::Updated,
        "counted in the restored open alert"
    );
    assert_eq!(e2.book().iter().next().unwrap().count, 2);
}
