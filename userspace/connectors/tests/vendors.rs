//! Every connector against a local HTTPS server that plays its vendor's API (`sim`), with the
//! hard cases: paging, empty pages with a next link, out-of-order and late events, duplicates,
//! 429 storms with Retry-After, 5xx bursts, expired cursors, token expiry, hostile links, a
//! restart mid-run and a long simulated run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tollgate_connectors::sim::{Fault, M365_TENANT, Sim, SimClock, SimEvent};
use tollgate_connectors::{
    Connector, ConnectorConfig, ConnectorError, Health, Kind, Limits, MemoryStore, Options,
    Settings, TenantGates,
};

const TOKEN: &str = "tok-ABCDEF0123456789";
/// 2026-11-01T00:00:00Z.
const T0: i64 = 1_793_491_200_000;
const MIN: i64 = 60_000;

fn limits() -> Limits {
    Limits {
        wait_scale: 0.01,
        max_attempts: 8,
        ..Limits::default()
    }
}

fn config(kind: Kind, base_url: &str) -> ConnectorConfig {
    ConnectorConfig {
        kind: Some(kind),
        name: Some(format!("{kind}-test")),
        base_url: Some(base_url.to_string()),
        token: Some(TOKEN.into()),
        enterprise: (kind == Kind::Github).then(|| "acme".into()),
        tenant_id: (kind == Kind::M365).then(|| M365_TENANT.into()),
        content_types: (kind == Kind::M365)
            .then(|| vec!["Audit.General".into(), "Audit.SharePoint".into()]),
        ..Default::default()
    }
}

struct Rig {
    sim: Sim,
    clock: SimClock,
    store: MemoryStore,
    options: Options,
}

impl Rig {
    async fn new(kind: Kind) -> Rig {
        let clock = SimClock::new(T0);
        let sim = Sim::start(kind, clock.clone(), TOKEN).await.unwrap();
        sim.set_retry_scale(0.01);
        let options = Options {
            limits: limits(),
            clock: clock.clock(),
            extra_roots: vec![sim.cert_der.clone()],
            gates: TenantGates::default(),
            on_throttle: None,
        };
        Rig {
            sim,
            clock,
            store: MemoryStore::new(),
            options,
        }
    }

    fn connector_with(&self, c: &ConnectorConfig) -> Connector {
        Connector::new(Settings::from_config(c).unwrap(), self.options.clone()).unwrap()
    }

    fn connector(&self) -> Connector {
        self.connector_with(&config(self.sim.kind, &self.sim.base_url))
    }

    /// Polls until two polls in a row read nothing new and are caught up (bounded). Two:
    /// an Okta poll ends at a partial page, which may be a re-read overlap.
    async fn drain(&self, c: &mut Connector) {
        let mut quiet = 0;
        for _ in 0..400 {
            let r = c.poll(&self.store).await.unwrap();
            quiet = if r.caught_up && r.new == 0 {
                quiet + 1
            } else {
                0
            };
            if quiet == 2 {
                return;
            }
        }
        panic!("never caught up: {:?}", c.status());
    }

    fn stored_ids(&self) -> Vec<String> {
        self.store
            .records()
            .into_iter()
            .map(|r| r.vendor_id.unwrap())
            .collect()
    }

    /// Every event the vendor holds is stored, once, and nothing else.
    fn assert_exactly_once(&self, expected: &BTreeSet<String>) {
        let ids = self.stored_ids();
        let set: BTreeSet<String> = ids.iter().cloned().collect();
        assert_eq!(ids.len(), set.len(), "a record was stored twice");
        let missed: Vec<_> = expected.difference(&set).take(5).collect();
        let extra: Vec<_> = set.difference(expected).take(5).collect();
        assert!(
            missed.is_empty() && extra.is_empty(),
            "{:?}: missed {} (e.g. {missed:?}), extra {} (e.g. {extra:?})",
            self.sim.kind,
            expected.difference(&set).count(),
            set.difference(expected).count()
        );
    }
}

/// `n` events, one a minute before `T0` (so all are inside every first window), visible at
/// once.
fn events(n: u64, first: u64) -> Vec<SimEvent> {
    (first..first + n)
        .map(|i| SimEvent::new(i, T0 - 6 * 60 * MIN + i as i64 * 1000))
        .collect()
}

/// `n` events happening now (after moving the clock on by ten minutes), visible at once.
fn fresh(rig: &Rig, n: u64, first: u64) -> Vec<SimEvent> {
    rig.clock.advance(Duration::from_secs(600));
    let now = rig.clock.now_ms();
    (first..first + n)
        .map(|i| SimEvent::new(i, now - 300_000 + (i - first) as i64 * 100))
        .collect()
}

fn ids(events: &[SimEvent]) -> BTreeSet<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

#[tokio::test]
async fn every_vendor_pages_through_every_event_once_and_maps_it() {
    for kind in Kind::ALL {
        let rig = Rig::new(kind).await;
        let evs = events(250, 0);
        rig.sim.add_events(evs.clone());
        rig.sim.set_page_size(40);
        let mut c = rig.connector();
        rig.drain(&mut c).await;
        rig.assert_exactly_once(&ids(&evs));
        let r = rig.store.records();
        let first = r
            .iter()
            .find(|a| a.vendor_id.as_deref() == Some(&evs[3].id))
            .unwrap();
        assert_eq!(
            first.time.timestamp_millis() / 1000,
            evs[3].time_ms / 1000,
            "{kind}"
        );
        assert_eq!(first.user.as_deref(), Some(evs[3].user.as_str()), "{kind}");
        assert_eq!(first.ip, Some(evs[3].ip.parse().unwrap()), "{kind}");
        assert_eq!(
            first.connector.as_deref(),
            Some(format!("{kind}-test").as_str())
        );
        assert!(first.action.is_some(), "{kind}");
        assert!(first.object.is_some(), "{kind}");
        assert_eq!(c.status().health, Health::Ok, "{kind}");
        assert!(c.status().requests >= 250 / 40, "{kind}: paged");
        // Nothing new: one more poll stores nothing.
        let again = c.poll(&rig.store).await.unwrap();
        assert_eq!(again.new, 0, "{kind}");
        assert_eq!(rig.sim.stats().unauthorized, 0);
    }
}

#[tokio::test]
async fn okta_empty_pages_with_a_next_link_end_the_poll_and_the_link_is_followed_later() {
    let rig = Rig::new(Kind::Okta).await;
    rig.sim.set_page_size(1000);
    let evs = events(30, 0);
    rig.sim.add_events(evs.clone());
    rig.sim.push_faults([Fault::EmptyPage]);
    let mut c = rig.connector();
    let r = c.poll(&rig.store).await.unwrap();
    assert_eq!(
        (r.new, r.pages, r.caught_up),
        (0, 1, true),
        "an empty page ends the poll"
    );
    let cursor = rig.store.cursor("okta-test").unwrap();
    assert!(
        cursor.contains("after="),
        "the next link is the cursor: {cursor}"
    );
    rig.drain(&mut c).await;
    rig.assert_exactly_once(&ids(&evs));
    // Caught up: each further poll costs one request, not a walk of empty pages.
    let before = rig.sim.stats().requests;
    for _ in 0..5 {
        c.poll(&rig.store).await.unwrap();
    }
    assert_eq!(rig.sim.stats().requests - before, 5);
}

#[tokio::test]
async fn out_of_order_and_late_events_are_stored_once() {
    for kind in Kind::ALL {
        let rig = Rig::new(kind).await;
        rig.sim.set_page_size(25);
        // Lateness each vendor's overlap covers (Okta and Box stream by arrival: any).
        let late_max = match kind {
            Kind::Github => 4 * MIN,
            Kind::Slack => 9 * MIN,
            Kind::M365 => 90 * MIN,
            Kind::Okta | Kind::Box => 180 * MIN,
        };
        let mut all = Vec::new();
        let mut rng = fastrand::Rng::with_seed(7);
        for i in 0..300u64 {
            let time = T0 + rng.i64(0..120 * MIN);
            let mut e = SimEvent::new(i, time);
            e.visible_ms = time + rng.i64(0..=late_max);
            if kind == Kind::M365 && i % 10 == 0 {
                // A blob listed half an hour after its contentCreated: inside a window
                // already listed.
                e.listing_delay_ms = 30 * MIN;
            }
            all.push(e);
        }
        rig.sim.add_events(all.clone());
        let mut c = rig.connector();
        for _ in 0..(120 + 180 + 60) / 5 {
            rig.clock.advance(Duration::from_secs(300));
            c.poll(&rig.store).await.unwrap();
        }
        rig.drain(&mut c).await;
        rig.assert_exactly_once(&ids(&all));
    }
}

#[tokio::test]
async fn box_stream_duplicates_and_overlap_rereads_are_dropped_by_the_store() {
    let rig = Rig::new(Kind::Box).await;
    rig.sim.set_box_duplicates(3);
    let evs = events(200, 0);
    rig.sim.add_events(evs.clone());
    let mut c = rig.connector();
    rig.drain(&mut c).await;
    rig.assert_exactly_once(&ids(&evs));
    assert!(c.status().duplicates >= 60, "{:?}", c.status());
    // GitHub re-reads its overlap at each walk: repeats, not new records.
    let rig = Rig::new(Kind::Github).await;
    let evs: Vec<SimEvent> = (0..50)
        .map(|i| SimEvent::new(i, T0 - 60_000 + i as i64 * 100))
        .collect();
    rig.sim.add_events(evs.clone());
    let mut c = rig.connector();
    rig.drain(&mut c).await;
    c.poll(&rig.store).await.unwrap();
    rig.assert_exactly_once(&ids(&evs));
    assert!(c.status().duplicates >= 50, "{:?}", c.status());
}

#[tokio::test]
async fn a_429_storm_with_retry_after_is_honoured_for_every_vendor() {
    for kind in Kind::ALL {
        let rig = Rig::new(kind).await;
        rig.sim.set_page_size(50);
        let evs = events(120, 0);
        rig.sim.add_events(evs.clone());
        rig.sim.push_faults([
            Fault::TooMany { retry_after: 2 },
            Fault::TooMany { retry_after: 3 },
            Fault::TooManyReset { secs: 2 },
            Fault::TooMany { retry_after: 1 },
            Fault::TooMany { retry_after: 2 },
        ]);
        let mut c = rig.connector();
        rig.drain(&mut c).await;
        rig.assert_exactly_once(&ids(&evs));
        let s = rig.sim.stats();
        assert_eq!(s.throttled_answers, 5, "{kind}");
        assert_eq!(
            s.retry_violations, 0,
            "{kind}: came back before Retry-After"
        );
        assert_eq!(c.status().throttled, 5, "{kind}");
    }
}

/// The check above can fail: a client that does not wait is caught.
#[tokio::test]
async fn a_client_that_ignores_retry_after_is_caught_by_the_simulator() {
    let mut rig = Rig::new(Kind::Slack).await;
    rig.options.limits.wait_scale = 0.0;
    rig.sim.add_events(events(10, 0));
    rig.sim.push_faults([Fault::TooMany { retry_after: 5 }]);
    let mut c = rig.connector();
    rig.drain(&mut c).await;
    assert_eq!(rig.sim.stats().retry_violations, 1);
}

#[tokio::test]
async fn github_secondary_rate_limit_403_is_a_throttle_not_a_refusal() {
    let rig = Rig::new(Kind::Github).await;
    let evs = events(20, 0);
    rig.sim.add_events(evs.clone());
    rig.sim
        .push_faults([Fault::GithubSecondary { retry_after: 3 }]);
    let mut c = rig.connector();
    rig.drain(&mut c).await;
    rig.assert_exactly_once(&ids(&evs));
    assert_eq!(rig.sim.stats().retry_violations, 0);
    assert_eq!(c.status().throttled, 1);
}

#[tokio::test]
async fn a_5xx_burst_is_retried_and_an_outage_opens_the_circuit() {
    let mut rig = Rig::new(Kind::Okta).await;
    let evs = events(20, 0);
    rig.sim.add_events(evs.clone());
    rig.sim
        .push_faults([Fault::Status(503), Fault::Status(500), Fault::Status(502)]);
    let mut c = rig.connector();
    rig.drain(&mut c).await;
    rig.assert_exactly_once(&ids(&evs));
    assert_eq!(c.status().retries, 3);
    // An outage: every attempt fails; after `breaker_threshold` failed polls the circuit
    // opens and polls make no request until the cool-down ends.
    rig.options.limits.max_attempts = 2;
    rig.options.limits.breaker_cooldown = Duration::from_secs(30); // 0.3 s scaled
    let mut c = rig.connector();
    rig.sim
        .push_faults(std::iter::repeat_n(Fault::Status(503), 6));
    for _ in 0..3 {
        let e = c.poll(&rig.store).await.unwrap_err();
        assert!(matches!(e, ConnectorError::GaveUp { .. }), "{e}");
    }
    assert_eq!(c.status().health, Health::CircuitOpen);
    let before = rig.sim.stats().requests;
    let e = c.poll(&rig.store).await.unwrap_err();
    assert!(matches!(e, ConnectorError::CircuitOpen { .. }), "{e}");
    assert_eq!(rig.sim.stats().requests, before, "no request while open");
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.poll(&rig.store).await.unwrap();
    assert_eq!(c.status().health, Health::Ok);
}

#[tokio::test]
async fn expired_cursors_fall_back_to_a_window_without_loss() {
    for kind in [Kind::Okta, Kind::Github, Kind::Slack, Kind::Box] {
        let mut rig = Rig::new(kind).await;
        rig.sim.set_page_size(20);
        rig.options.limits.max_pages_per_poll = 2;
        let evs = events(100, 0);
        rig.sim.add_events(evs.clone());
        let mut c = rig.connector();
        let r = c.poll(&rig.store).await.unwrap();
        // Okta stops at a partial page (its pages are infinite); the rest are mid-walk.
        // Okta and Box stop at a partial page (their streams never end); the others are
        // mid-walk.
        assert!(
            matches!(kind, Kind::Okta | Kind::Box) || !r.caught_up,
            "{kind}: mid-walk"
        );
        assert!(rig.store.cursor(&format!("{kind}-test")).is_some());
        rig.sim.push_faults([Fault::ExpireCursors]);
        let more = fresh(&rig, 30, 1000);
        rig.sim.add_events(more.clone());
        rig.drain(&mut c).await;
        let mut all = ids(&evs);
        all.extend(ids(&more));
        rig.assert_exactly_once(&all);
        assert!(c.status().cursor_resets >= 1, "{kind}: {:?}", c.status());
    }
}

#[tokio::test]
async fn token_expiry_mid_run_then_rotation_through_token_file_without_restart() {
    for kind in Kind::ALL {
        let rig = Rig::new(kind).await;
        rig.sim.set_page_size(30);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
        let mut cfg = config(kind, &rig.sim.base_url);
        cfg.token = None;
        cfg.token_file = Some(file.clone());
        let evs = events(90, 0);
        rig.sim.add_events(evs.clone());
        let mut c = rig.connector_with(&cfg);
        rig.drain(&mut c).await;
        // The vendor expires the token; events keep coming.
        rig.sim.set_token("rotated-token-2");
        let more = fresh(&rig, 60, 500);
        rig.sim.add_events(more.clone());
        let e = c.poll(&rig.store).await.unwrap_err();
        assert!(
            matches!(e, ConnectorError::Unauthorized { .. }),
            "{kind}: {e}"
        );
        assert_eq!(c.status().health, Health::Unauthorized);
        assert!(
            !e.to_string().contains(TOKEN),
            "the error never carries the token"
        );
        // The admin rotates the file; the running connector picks it up.
        std::fs::write(&file, "rotated-token-2\n").unwrap();
        rig.drain(&mut c).await;
        let mut all = ids(&evs);
        all.extend(ids(&more));
        rig.assert_exactly_once(&all);
        assert_eq!(c.status().health, Health::Ok);
    }
}

#[tokio::test]
async fn a_link_to_another_host_is_refused_and_the_token_never_leaves() {
    let evil_clock = SimClock::new(T0);
    for kind in [Kind::Okta, Kind::Github, Kind::M365] {
        let evil = Sim::start(kind, evil_clock.clone(), "whatever")
            .await
            .unwrap();
        let rig = Rig::new(kind).await;
        rig.sim.set_page_size(10);
        rig.sim.add_events(events(30, 0));
        // M365's first answer is the subscription start; the listing comes second.
        if kind == Kind::M365 {
            rig.sim.push_faults([Fault::ExpireCursors]);
        }
        let evil_origin = evil.base_url.trim_end_matches('/').to_string();
        rig.sim.push_faults([Fault::OffOrigin { url: evil_origin }]);
        let mut options = rig.options.clone();
        options.extra_roots.push(evil.cert_der.clone());
        let mut c = Connector::new(
            Settings::from_config(&config(kind, &rig.sim.base_url)).unwrap(),
            options,
        )
        .unwrap();
        let e = c.poll(&rig.store).await.unwrap_err();
        assert!(matches!(e, ConnectorError::OffOrigin { .. }), "{kind}: {e}");
        assert_eq!(
            evil.stats().requests,
            0,
            "{kind}: the token went to another host"
        );
        // Nothing past the hostile page was trusted; the next poll reads everything.
        rig.drain(&mut c).await;
        assert_eq!(rig.store.len(), 30, "{kind}");
    }
}

#[tokio::test]
async fn garbage_and_hostile_retry_after_fail_cleanly() {
    let mut rig = Rig::new(Kind::Box).await;
    rig.sim.add_events(events(10, 0));
    rig.sim.push_faults([Fault::Garbage]);
    let mut c = rig.connector();
    let e = c.poll(&rig.store).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Parse { .. }), "{e}");
    assert_eq!(rig.store.len(), 0);
    // Retry-After of ~32 years: waited at most `max_wait`.
    rig.options.limits.max_wait = Duration::from_secs(5); // 50 ms scaled
    let mut c = rig.connector();
    rig.sim.set_retry_scale(0.0);
    rig.sim.push_faults([Fault::TooMany {
        retry_after: 1_000_000_000,
    }]);
    let started = std::time::Instant::now();
    rig.drain(&mut c).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(rig.store.len(), 10);
}

#[tokio::test]
async fn connectors_of_one_tenant_never_have_two_requests_in_flight() {
    let rig = Rig::new(Kind::Okta).await;
    rig.sim.set_page_size(5);
    rig.sim.add_events(events(200, 0));
    let mut a = rig.connector();
    let mut cfg = config(Kind::Okta, &rig.sim.base_url);
    cfg.name = Some("okta-second".into());
    let mut b = rig.connector_with(&cfg);
    let store = &rig.store;
    let (ra, rb) = tokio::join!(
        async {
            while a.status().events_total < 200 {
                a.poll(store).await.unwrap();
            }
        },
        async {
            while b.status().events_total < 200 {
                b.poll(store).await.unwrap();
            }
        }
    );
    let _ = (ra, rb);
    assert_eq!(rig.sim.stats().max_in_flight, 1);
    assert!(rig.sim.stats().requests >= 80);
}

/// A connector task dropped at arbitrary points (a crash between a page's read and its
/// commit, or mid-request), restarted from the store each time: every event stored once.
#[tokio::test]
async fn dropping_the_connector_mid_run_and_restarting_stores_every_event_once() {
    for kind in Kind::ALL {
        let rig = std::sync::Arc::new(Rig::new(kind).await);
        rig.sim.set_page_size(7);
        // A minute apart: M365 groups events in 5-minute blobs, so there are many.
        let evs: Vec<SimEvent> = (0..300)
            .map(|i| SimEvent::new(i, T0 - 6 * 60 * MIN + i as i64 * MIN))
            .collect();
        rig.sim.add_events(evs.clone());
        let mut rng = fastrand::Rng::with_seed(42);
        let mut cut_mid_run = 0;
        for _ in 0..25 {
            let r = std::sync::Arc::clone(&rig);
            let task = tokio::spawn(async move {
                let mut c = r.connector();
                loop {
                    let _ = c.poll(&r.store).await;
                }
            });
            // Let it make progress (a connector's start-up reads the trust store), then cut it
            // at an arbitrary point.
            let before = rig.store.len();
            let waited = std::time::Instant::now();
            while rig.store.len() == before
                && before < 300
                && waited.elapsed() < Duration::from_secs(5)
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_micros(rng.u64(0..4000))).await;
            task.abort();
            let _ = task.await;
            if (1..300).contains(&rig.store.len()) {
                cut_mid_run += 1;
            }
        }
        let mut c = rig.connector();
        rig.drain(&mut c).await;
        rig.assert_exactly_once(&ids(&evs));
        assert!(
            cut_mid_run >= 3,
            "{kind}: only {cut_mid_run} restarts landed mid-run"
        );
    }
}

/// Seven simulated days, polled every 15 minutes, with late events inside each vendor's
/// documented (or configured) overlap, throttling and 5xx answers sprinkled in, restarts
/// every simulated day: 0 missed, 0 doubled.
#[tokio::test]
async fn a_week_simulated_fast_misses_nothing_and_doubles_nothing() {
    for kind in Kind::ALL {
        let rig = Rig::new(kind).await;
        let late_max = match kind {
            Kind::Github => 4 * MIN,
            Kind::Slack => 9 * MIN,
            Kind::M365 => 90 * MIN,
            Kind::Okta | Kind::Box => 240 * MIN,
        };
        let days = 7;
        let mut rng = fastrand::Rng::with_seed(kind as u64 + 1);
        let mut all = Vec::new();
        for i in 0..(days * 24 * 12) as u64 {
            let time = T0 + rng.i64(0..days * 24 * 60 * MIN);
            let mut e = SimEvent::new(i, time);
            e.visible_ms = time
                + if rng.u8(0..10) == 0 {
                    rng.i64(0..=late_max)
                } else {
                    0
                };
            if kind == Kind::M365 && rng.u8(0..20) == 0 {
                e.listing_delay_ms = rng.i64(0..40 * MIN);
            }
            all.push(e);
        }
        rig.sim.add_events(all.clone());
        let mut c = rig.connector();
        let steps = days * 24 * 4 + 24;
        for step in 0..steps {
            rig.clock.advance(Duration::from_secs(15 * 60));
            if step % 37 == 0 {
                rig.sim
                    .push_faults([Fault::TooMany { retry_after: 1 }, Fault::Status(503)]);
            }
            if step % 96 == 0 {
                c = rig.connector();
            }
            c.poll(&rig.store).await.unwrap();
        }
        rig.drain(&mut c).await;
        rig.assert_exactly_once(&ids(&all));
        let per_1000 = c.status().requests as f64 * 1000.0 / all.len() as f64;
        eprintln!(
            "{kind}: {} events, {} requests since the last restart, {per_1000:.0} per 1000",
            all.len(),
            c.status().requests
        );
    }
}

#[test]
fn counts_per_kind_are_independent() {
    // Guard against a shared store mixing connectors: the same vendor id under two names is
    // two records.
    let store = MemoryStore::new();
    let mut a = tollgate_activity::Activity::new(
        1,
        chrono::Utc::now(),
        "okta",
        tollgate_activity::ActivityType::Login,
        tollgate_activity::Source::Connector,
    );
    a.vendor_id = Some("same".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    use tollgate_connectors::Store;
    rt.block_on(async {
        assert_eq!(
            store
                .commit("x", &[a.clone(), a.clone()], "{}")
                .await
                .unwrap(),
            1
        );
        assert_eq!(store.commit("y", &[a.clone()], "{}").await.unwrap(), 1);
        assert_eq!(store.commit("x", &[a], "{}").await.unwrap(), 0);
    });
    let by: BTreeMap<String, usize> = store.records().iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.vendor_id.clone().unwrap()).or_default() += 1;
        m
    });
    assert_eq!(by["same"], 2);
}

#[tokio::test]
async fn governance_calls_reach_only_their_endpoint() {
    let rig = Rig::new(Kind::Okta).await;
    let mut c = rig.connector();
    c.govern(tollgate_connectors::GovernanceCall::SuspendUser, "00u1abc")
        .await
        .unwrap();
    c.govern(
        tollgate_connectors::GovernanceCall::RevokeSessions,
        "00u1abc",
    )
    .await
    .unwrap();
    // A user name that tries to walk to another endpoint stays one path segment.
    c.govern(
        tollgate_connectors::GovernanceCall::SuspendUser,
        "../../groups/x?y=1#z",
    )
    .await
    .unwrap();
    let calls = rig.sim.stats().governance;
    assert_eq!(
        calls,
        vec![
            (
                "POST".to_string(),
                "/api/v1/users/00u1abc/lifecycle/suspend".to_string()
            ),
            (
                "DELETE".to_string(),
                "/api/v1/users/00u1abc/sessions".to_string()
            ),
            (
                "POST".to_string(),
                "/api/v1/users/..%2F..%2Fgroups%2Fx%3Fy=1%23z/lifecycle/suspend".to_string()
            ),
        ]
    );
    let rig = Rig::new(Kind::Github).await;
    let mut c = rig.connector();
    c.govern(tollgate_connectors::GovernanceCall::SuspendUser, "monalisa")
        .await
        .unwrap();
    assert_eq!(
        rig.sim.stats().governance,
        vec![("PUT".to_string(), "/users/monalisa/suspended".to_string())]
    );
    // Not offered: refused without a request.
    let rig = Rig::new(Kind::Box).await;
    let mut c = rig.connector();
    assert!(
        c.govern(tollgate_connectors::GovernanceCall::RevokeSessions, "u")
            .await
            .is_err()
    );
    let rig2 = Rig::new(Kind::Okta).await;
    let mut c2 = rig2.connector();
    assert!(
        c2.govern(tollgate_connectors::GovernanceCall::SuspendUser, "..")
            .await
            .is_err()
    );
    assert_eq!(rig.sim.stats().requests + rig2.sim.stats().requests, 0);
}

/// The cursor moves only with the records: a commit that fails leaves both where they were,
/// and the next poll reads the same pages again.
#[tokio::test]
async fn a_store_outage_does_not_advance_the_cursor() {
    for kind in Kind::ALL {
        let rig = Rig::new(kind).await;
        rig.sim.set_page_size(10);
        let evs = events(50, 0);
        rig.sim.add_events(evs.clone());
        let mut c = rig.connector();
        rig.store.fail_next_commits(1);
        let e = c.poll(&rig.store).await.unwrap_err();
        assert!(matches!(e, ConnectorError::Store(_)), "{kind}: {e}");
        assert!(
            rig.store.cursor(&format!("{kind}-test")).is_none(),
            "{kind}"
        );
        assert_eq!(rig.store.len(), 0);
        rig.drain(&mut c).await;
        rig.assert_exactly_once(&ids(&evs));
    }
}

/// Microsoft 365 with the client-credentials flow: the secret is exchanged at the token
/// endpoint, the access token is cached, and when the API stops taking it a new one is
/// fetched (once) without a failed poll.
#[tokio::test]
async fn m365_client_credentials_fetch_cache_and_renew_the_access_token() {
    let rig = Rig::new(Kind::M365).await;
    rig.sim
        .enable_client_credentials("sim-client", "client-SECRET-1");
    rig.sim.set_page_size(5);
    let evs = events(120, 0);
    rig.sim.add_events(evs.clone());
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "client-SECRET-1\n").unwrap();
    let mut cfg = config(Kind::M365, &rig.sim.base_url);
    cfg.token = None;
    cfg.client_id = Some("sim-client".into());
    cfg.client_secret_file = Some(secret_file.clone());
    cfg.token_url = Some(rig.sim.token_url());
    let settings = Settings::from_config(&cfg).unwrap();
    assert!(!format!("{settings:?}").contains("client-SECRET"));
    let mut c = rig.connector_with(&cfg);
    rig.drain(&mut c).await;
    rig.assert_exactly_once(&ids(&evs));
    assert_eq!(
        rig.sim.stats().tokens_issued,
        1,
        "the access token is cached"
    );
    // The tenant revokes it: the next request gets 401, a new token is fetched, no failure.
    rig.sim.set_token("access-token-2");
    let more = fresh(&rig, 40, 900);
    rig.sim.add_events(more.clone());
    rig.drain(&mut c).await;
    assert_eq!(rig.sim.stats().tokens_issued, 2);
    assert_eq!(c.status().errors, 0);
    let mut all = ids(&evs);
    all.extend(ids(&more));
    rig.assert_exactly_once(&all);
    // A wrong secret: the token endpoint refuses; the error names no secret.
    rig.sim.set_token("access-token-3");
    rig.sim
        .enable_client_credentials("sim-client", "client-SECRET-2");
    let e = c.poll(&rig.store).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Unauthorized { .. }), "{e}");
    assert!(!e.to_string().contains("client-SECRET"), "{e}");
    // Rotated in the file: picked up at the next token request.
    std::fs::write(&secret_file, "client-SECRET-2\n").unwrap();
    c.poll(&rig.store).await.unwrap();
    assert_eq!(c.status().health, Health::Ok);
}

/// M365 after a long outage: the stored window is more than 7 days old, which the API refuses
/// (AF20055); the listing starts at the oldest start it accepts, with no failed poll.
#[tokio::test]
async fn m365_after_an_eight_day_outage_resumes_inside_the_seven_days() {
    let rig = Rig::new(Kind::M365).await;
    let evs = events(40, 0);
    rig.sim.add_events(evs.clone());
    let mut c = rig.connector();
    rig.drain(&mut c).await;
    rig.clock.advance(Duration::from_secs(8 * 24 * 3600));
    let more = fresh(&rig, 50, 700);
    rig.sim.add_events(more.clone());
    rig.drain(&mut c).await;
    assert_eq!(c.status().errors, 0, "{:?}", c.status());
    let mut all = ids(&evs);
    all.extend(ids(&more));
    rig.assert_exactly_once(&all);
}

/// A connector restarted while it waits out a `Retry-After` keeps waiting: the wait is in
/// the status the hook saved. Without the saved status the new one comes back early (the
/// simulator counts it), so the check can fail.
#[tokio::test]
async fn a_restarted_connector_honours_the_retry_after_its_predecessor_was_given() {
    for restore in [true, false] {
        let mut rig = Rig::new(Kind::Okta).await;
        rig.sim.add_events(events(10, 0));
        rig.sim.push_faults([Fault::TooMany { retry_after: 40 }]); // 0.4 s scaled
        let saved = std::sync::Arc::new(std::sync::Mutex::new(None));
        let sink = std::sync::Arc::clone(&saved);
        rig.options.on_throttle = Some(std::sync::Arc::new(
            move |s: &tollgate_connectors::ConnectorStatus| {
                *sink.lock().unwrap() = Some(s.clone());
            },
        ));
        let rig = std::sync::Arc::new(rig);
        let r = std::sync::Arc::clone(&rig);
        let task = tokio::spawn(async move {
            let mut c = r.connector();
            let _ = c.poll(&r.store).await;
        });
        let waited = std::time::Instant::now();
        while saved.lock().unwrap().is_none() && waited.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        task.abort();
        let _ = task.await;
        let status = saved.lock().unwrap().clone().expect("the hook saw the 429");
        assert!(status.throttled_until.is_some());
        let mut c = rig.connector();
        if restore {
            c.restore_status(status);
        }
        rig.drain(&mut c).await;
        assert_eq!(rig.store.len(), 10);
        let violations = rig.sim.stats().retry_violations;
        assert_eq!(violations, if restore { 0 } else { 1 }, "restore {restore}");
    }
}
