//! A connector run by the gateway (`run_on = "gateway"`) with the gateway's store, against a
//! local HTTPS server playing Okta's System Log: every event reaches the core once, the
//! cursor survives a restart (nothing fed twice), a full core queue keeps the cursor where it
//! was (the page is read again, nothing lost), and a local config or a bundle that would
//! carry a secret to the wrong place is refused.

use std::time::Duration;

use tollgate::config::Config;
use tollgate::connectors::{GatewayStore, channel};
use tollgate_connectors::sim::{Sim, SimClock, SimEvent};
use tollgate_connectors::{Connector, ConnectorConfig, Kind, Options, RunOn, Settings};

const TOKEN: &str = "gw-okta-token-7c1d";

fn connector(sim: &Sim, clock: &SimClock) -> Connector {
    let c = ConnectorConfig {
        kind: Some(Kind::Okta),
        name: Some("okta-branch".into()),
        base_url: Some(sim.base_url.clone()),
        token: Some(TOKEN.into()),
        run_on: Some(RunOn::Gateway),
        ..Default::default()
    };
    let options = Options {
        clock: clock.clock(),
        extra_roots: vec![sim.cert_der.clone()],
        ..Options::default()
    };
    Connector::new(Settings::from_config(&c).unwrap(), options).unwrap()
}

/// Polls until a poll is caught up and brings nothing new.
async fn poll_all(c: &mut Connector, store: &GatewayStore) {
    for _ in 0..50 {
        let r = c.poll(store).await.expect("poll");
        if r.caught_up && r.new == 0 {
            return;
        }
    }
    panic!("never caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_core_once_through_restarts_and_a_full_queue() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = chrono::Utc::now().timestamp_millis();
    let clock = SimClock::new(t0);
    let sim = Sim::start(Kind::Okta, clock.clone(), TOKEN).await.unwrap();
    sim.set_page_size(10);
    sim.add_events((0..35u64).map(|i| SimEvent::new(i, t0 - 600_000 + i as i64 * 1_000)));
    let (tx, mut rx) = channel();
    let store = GatewayStore::new(dir.path().join("connectors"), None, tx.clone());
    let mut c = connector(&sim, &clock);
    poll_all(&mut c, &store).await;
    let mut got = Vec::new();
    while let Ok(batch) = rx.try_recv() {
        got.extend(batch);
    }
    assert_eq!(got.len(), 35);
    let ids: std::collections::BTreeSet<_> = got.iter().map(|a| a.vendor_id.clone()).collect();
    assert_eq!(ids.len(), 35, "an event fed twice");
    assert!(dir.path().join("connectors/okta-branch.json").exists());

    // A restart: a new store and connector on the same state dir read nothing again.
    let store = GatewayStore::new(dir.path().join("connectors"), None, tx.clone());
    let mut c = connector(&sim, &clock);
    poll_all(&mut c, &store).await;
    assert!(rx.try_recv().is_err(), "a restart fed events again");

    // New events while the core's queue is full: the commit fails, the cursor stays.
    sim.add_events((35..40u64).map(|i| SimEvent::new(i, t0 - 1_000)));
    let (small_tx, mut small_rx) = tokio::sync::mpsc::channel(1);
    small_tx.try_send(Vec::new()).unwrap(); // full
    let blocked = GatewayStore::new(dir.path().join("connectors"), None, small_tx);
    let mut c = connector(&sim, &clock);
    assert!(
        c.poll(&blocked).await.is_err(),
        "a full core queue must fail the commit"
    );
    let _ = small_rx.recv().await;
    // Room again: the same events come, once.
    poll_all(&mut c, &blocked).await;
    let mut late = Vec::new();
    while let Ok(batch) = small_rx.try_recv() {
        late.extend(batch);
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    while let Ok(batch) = small_rx.try_recv() {
        late.extend(batch);
    }
    let late_ids: Vec<_> = late.iter().filter_map(|a| a.vendor_id.clone()).collect();
    assert_eq!(late_ids.len(), 5, "{late_ids:?}");
    assert!(late_ids.iter().all(|id| !ids.contains(&Some(id.clone()))));
}

#[test]
fn connector_config_on_the_gateway_is_checked() {
    // The gateway's own file: only run_on = "gateway".
    let hub_one = "[[connectors]]\nkind = \"okta\"\nname = \"o\"\nbase_url = \"https://x.okta.com\"\ntoken_file = \"/t\"\n";
    let e = Config::parse(hub_one, "g.toml").unwrap_err().to_string();
    assert!(e.contains("connectors[0].run_on"), "{e}");
    let ok = format!("{hub_one}run_on = \"gateway\"\n");
    let cfg = Config::parse(&ok, "g.toml").unwrap();
    assert_eq!(cfg.connectors.len(), 1);
    // A bundle may not carry a secret.
    let e = cfg
        .with_bundle(
            "[[connectors]]\nkind = \"okta\"\nname = \"b\"\nbase_url = \"https://x.okta.com\"\ntoken = \"s3cret\"\nrun_on = \"gateway\"\n",
            "bundle revision 2",
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("may not carry a secret") && !e.contains("s3cret"),
        "{e}"
    );
    // A bundle's connector with a token file is merged, central first.
    let merged = cfg
        .with_bundle(
            "[[connectors]]\nkind = \"okta\"\nname = \"o\"\nbase_url = \"https://y.okta.com\"\ntoken_file = \"/etc/t\"\nrun_on = \"gateway\"\n",
            "bundle revision 3",
        )
        .unwrap();
    assert_eq!(merged.connectors.len(), 1);
    assert_eq!(
        merged.connectors[0].base_url.as_deref(),
        Some("https://y.okta.com")
    );
}

/// Governance on the gateway: a policy's `connector_actions` go through the gateway's own
/// connector (a registry of what runs here) once per alert opened, the sink the policy names in
/// `notify` gets the alert although it takes nothing else, and every call and notification is
/// an `admin_action` record in the gateway's activity log, a failed one with its reason. A
/// config that would let anyone's failed logins suspend a user is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_call_the_gateways_connector_and_notify() {
    let dir = tempfile::tempdir().unwrap();
    let clock = SimClock::new(chrono::Utc::now().timestamp_millis());
    let sim = Sim::start(Kind::Okta, clock.clone(), TOKEN).await.unwrap();
    let pager = dir.path().join("pager.json");
    let text = format!(
        "state_dir = \"{}\"\n\n\
         [[connectors]]\nkind = \"okta\"\nname = \"okta-branch\"\nbase_url = \"{}\"\ntoken = \"{TOKEN}\"\nrun_on = \"gateway\"\n\n\
         [[activity_policies]]\nname = \"bulk download\"\nactivity = \"download\"\napps = [\"box\"]\n\
         repeated = {{ count = 2, within_secs = 600, per_user = true }}\n\
         connector_actions = [{{ connector = \"okta-branch\", action = \"suspend_user\" }}, {{ connector = \"okta-elsewhere\", action = \"revoke_sessions\" }}]\n\
         notify = [\"pager\"]\n\n\
         [[alert_sinks]]\nname = \"pager\"\nkind = \"file\"\npath = \"{}\"\nsend = []\n",
        dir.path().display(),
        sim.base_url,
        pager.display()
    );
    let cfg = Config::parse(&text, "gw.toml").expect("config");
    let mut alerting = tollgate::alerting::Alerting::start(&cfg).unwrap();
    let registry = tollgate_connectors::Registry::default();
    let c = connector(&sim, &clock);
    registry.register(
        c.settings(),
        &Options {
            clock: clock.clock(),
            extra_roots: vec![sim.cert_der.clone()],
            ..Options::default()
        },
    );
    for i in 0..5 {
        let mut a = tollgate_activity::Activity::new(
            0,
            chrono::Utc::now(),
            "box",
            tollgate_activity::ActivityType::Download,
            tollgate_activity::Source::Proxy,
        );
        a.user = Some("mallory@corp.example".into());
        a.object = Some(format!("payroll-{i}.xlsx"));
        alerting.observe_new(a);
    }
    let calls = alerting.take_connector_calls();
    assert_eq!(
        calls.len(),
        2,
        "two actions for one alert opened: {calls:#?}"
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    for c in &calls {
        registry.spawn_call(
            &c.connector,
            c.call,
            &c.user,
            &c.policy,
            c.alert_id,
            tx.clone(),
        );
    }
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let o = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("an outcome")
            .unwrap();
        alerting.record_connector_outcome(&o, o.to_string());
        outcomes.push(o);
    }
    let ok = outcomes
        .iter()
        .find(|o| o.connector == "okta-branch")
        .unwrap();
    assert_eq!(ok.result, Ok(()), "{ok}");
    let failed = outcomes
        .iter()
        .find(|o| o.connector == "okta-elsewhere")
        .unwrap();
    assert!(
        failed
            .result
            .as_ref()
            .is_err_and(|e| e.contains("no connector named")),
        "{failed}"
    );
    assert_eq!(
        sim.stats().governance,
        vec![(
            "POST".to_string(),
            "/api/v1/users/mallory@corp.example/lifecycle/suspend".to_string()
        )]
    );
    // The notified sink and the activity log (their tasks write in the background).
    alerting.save();
    let log = dir.path().join("activity").join("activity.jsonl");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (paged, logged) = loop {
        let paged = std::fs::read_to_string(&pager).unwrap_or_default();
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        let actions = logged
            .lines()
            .filter(|l| l.contains("admin_action"))
            .count();
        if (paged.lines().count() >= 1 && actions >= 3) || std::time::Instant::now() > deadline {
            break (paged, logged);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(paged.lines().count(), 1, "one alert, paged once: {paged}");
    assert!(
        paged.contains("bulk download") && paged.contains("mallory"),
        "{paged}"
    );
    let actions: Vec<serde_json::Value> = logged
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["activity"].clone())
        .filter(|v| v["activity"] == "admin_action")
        .collect();
    let with = |action: &str, result: &str| {
        actions
            .iter()
            .filter(|v| v["action"] == action && v["result"] == result)
            .count()
    };
    assert_eq!(with("notify", "success"), 1, "{actions:#?}");
    assert!(actions.iter().all(|v| v["app"] != ""), "{actions:#?}");
    assert_eq!(with("suspend_user", "success"), 1, "{actions:#?}");
    assert_eq!(with("revoke_sessions", "failure"), 1, "{actions:#?}");

    // Anyone can fail a login in a victim's name: suspending on failed logins is refused, and
    // so is a notify that names no sink.
    let refused = text.replace("activity = \"download\"", "activity = \"failed_login\"");
    let e = Config::parse(&refused, "gw.toml").unwrap_err().to_string();
    assert!(
        e.contains("suspend_user") && e.contains("failed_login"),
        "{e}"
    );
    let refused = text.replace("notify = [\"pager\"]", "notify = [\"pagr\"]");
    let e = Config::parse(&refused, "gw.toml").unwrap_err().to_string();
    assert!(e.contains("notify") && e.contains("pagr"), "{e}");
}
