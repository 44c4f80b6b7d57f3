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
