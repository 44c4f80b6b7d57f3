//! The hub running `[[connectors]]` as a real process against local HTTPS servers that play
//! Okta, GitHub, M365, Slack and Box (`tollgate_connectors::sim`), trusted through
//! `SSL_CERT_FILE`. The hub is killed with SIGKILL at arbitrary points while it reads; after
//! the restarts every event is stored exactly once. Runs on SQLite and, when
//! `TOLLGATE_TEST_POSTGRES` is set, on PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tollgate_connectors::Kind;
use tollgate_connectors::sim::{Fault, M365_TENANT, Sim, SimClock, SimEvent};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-hub");
const TOKEN: &str = "hub-e2e-SECRET-token-9f8e7d";

fn database(postgres: bool, dir: &Path) -> Option<String> {
    if !postgres {
        return Some(format!("sqlite://{}/hub.db", dir.display()));
    }
    let Ok(base) = std::env::var("TOLLGATE_TEST_POSTGRES") else {
        eprintln!("SKIP: TOLLGATE_TEST_POSTGRES is not set");
        return None;
    };
    let name = format!("hubconn_{}_{}", std::process::id(), fastrand::u32(..));
    let out = Command::new("psql")
        .arg(&base)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (url, query) = base
        .split_once('?')
        .map_or((base.as_str(), None), |(u, q)| (u, Some(q)));
    let (prefix, _) = url.rsplit_once('/').expect("postgres URL with a database");
    Some(match query {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Hub {
    config: PathBuf,
    ca_file: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Hub {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .env("SSL_CERT_FILE", &self.ca_file)
            .env("TOLLGATE_HUB_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        assert!(
            line.contains("listening on"),
            "{line}{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        // Keep reading: a closed pipe would fail the hub's next line of output.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("SSL_CERT_FILE", &self.ca_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.cli(args)).unwrap()
    }
}

impl Hub {
    /// A hub on `db` reading the simulated Okta `sim` through a connector named `name`, with
    /// more config `sections` (policies, sinks); the vendor's CA in `SSL_CERT_FILE`. Not
    /// started.
    fn with_okta(dir: &Path, db: &str, sim: &Sim, name: &str, sections: &str) -> Hub {
        let ca_file = dir.join("vendors.pem");
        std::fs::write(&ca_file, &sim.cert_pem).unwrap();
        let config = format!(
            "listen = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\ndatabase = \"{db}\"\nserver_names = [\"127.0.0.1\"]\n\n\
             [[connectors]]\nkind = \"okta\"\nname = \"{name}\"\nbase_url = \"{}\"\npoll_interval_secs = 1\ntoken = \"{TOKEN}\"\n\n{sections}",
            free_port(),
            dir.join("state").display(),
            sim.base_url,
        );
        let config_path = dir.join("hub.toml");
        std::fs::write(&config_path, &config).unwrap();
        Hub {
            config: config_path,
            ca_file,
            log: dir.join("hub.log"),
            child: None,
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn kill9_mid_run_stores_every_event_once(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = database(postgres, dir.path()) else {
        return;
    };
    // The simulated vendors follow the real clock (the hub reads the system clock).
    let clock = SimClock::new(now_ms());
    let ticker = {
        let clock = clock.clone();
        tokio::spawn(async move {
            loop {
                clock.set_ms(now_ms());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut sims = Vec::new();
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pem = String::new();
    let start = now_ms() - 50 * 60_000;
    for (k, kind) in Kind::ALL.into_iter().enumerate() {
        let sim = Sim::start(kind, clock.clone(), TOKEN).await.unwrap();
        let n = 400u64;
        let events: Vec<SimEvent> = (0..n)
            // Six seconds apart: the newest is ten minutes old, so M365's last 5-minute blob
            // is already listed.
            .map(|i| SimEvent::new(k as u64 * 10_000 + i, start + i as i64 * 6_000))
            .collect();
        if !matches!(kind, Kind::Okta | Kind::Box) {
            sim.set_page_size(10);
        }
        sim.add_events(events.clone());
        // Throttling and failures on the way.
        sim.push_faults([
            Fault::TooMany { retry_after: 1 },
            Fault::Status(503),
            Fault::Status(502),
        ]);
        expected.insert(
            format!("{kind}-e2e"),
            events.iter().map(|e| e.id.clone()).collect(),
        );
        pem.push_str(&sim.cert_pem);
        sims.push(sim);
    }
    let ca_file = dir.path().join("vendors.pem");
    std::fs::write(&ca_file, &pem).unwrap();
    let token_file = dir.path().join("token");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token_file)
            .unwrap();
        writeln!(f, "{TOKEN}").unwrap();
    }
    let state = dir.path().join("state");
    let metrics_port = free_port();
    let mut config = format!(
        "listen = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\ndatabase = \"{db}\"\nserver_names = [\"127.0.0.1\"]\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
        free_port(),
        state.display()
    );
    for (i, sim) in sims.iter().enumerate() {
        let kind = sim.kind;
        config.push_str(&format!(
            "\n[[connectors]]\nkind = \"{kind}\"\nname = \"{kind}-e2e\"\nbase_url = \"{}\"\npoll_interval_secs = 1\n",
            sim.base_url
        ));
        // Half inline, half from a file.
        if i % 2 == 0 {
            config.push_str(&format!("token = \"{TOKEN}\"\n"));
        } else {
            config.push_str(&format!("token_file = \"{}\"\n", token_file.display()));
        }
        match kind {
            Kind::Github => config.push_str("enterprise = \"acme\"\n"),
            Kind::M365 => config.push_str(&format!(
                "tenant_id = \"{M365_TENANT}\"\ncontent_types = [\"Audit.General\", \"Audit.SharePoint\"]\n"
            )),
            _ => {}
        }
    }
    let config_path = dir.path().join("hub.toml");
    std::fs::write(&config_path, &config).unwrap();
    let mut hub = Hub {
        config: config_path,
        ca_file,
        log: dir.path().join("hub.log"),
        child: None,
    };
    // Start, let it read for a while, SIGKILL, again.
    let mut rng = fastrand::Rng::with_seed(if postgres { 2 } else { 1 });
    for _ in 0..6 {
        hub.spawn();
        tokio::time::sleep(Duration::from_millis(rng.u64(150..900))).await;
        hub.kill9();
        // The hub saves a Retry-After as soon as it gets one and a restart honours it
        // (connectors' a_restarted_connector_honours_the_retry_after_its_predecessor_was_given),
        // but a SIGKILL can land between the answer and that save: not counted here.
        for sim in &sims {
            sim.forget_retry_after();
        }
    }
    hub.spawn();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut slow = 0u32;
    let total: usize = expected.values().map(BTreeSet::len).sum();
    loop {
        let records = hub.json(&["activity", "--json", "--limit", "100000"]);
        let n = records.as_array().unwrap().len();
        if n >= total || Instant::now() > deadline {
            break;
        }
        slow += 1;
        if started.elapsed() > Duration::from_secs(15) && slow.is_multiple_of(15) {
            // Slow: say who is behind.
            eprintln!("{n}/{total}: {}", hub.cli(&["connectors"]));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let records = hub.json(&["activity", "--json", "--limit", "100000"]);
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in records.as_array().unwrap() {
        got.entry(r["connector"].as_str().unwrap().to_string())
            .or_default()
            .push(r["vendor_id"].as_str().unwrap().to_string());
    }
    for (name, want) in &expected {
        let have = got.get(name).cloned().unwrap_or_default();
        let set: BTreeSet<String> = have.iter().cloned().collect();
        assert_eq!(have.len(), set.len(), "{name}: a record stored twice");
        assert_eq!(
            &set,
            want,
            "{name}: missed {}",
            want.difference(&set).count()
        );
    }
    // --source filters; every record carries its vendor id.
    let okta = hub.json(&[
        "activity", "--json", "--source", "okta-e2e", "--limit", "100000",
    ]);
    assert_eq!(okta.as_array().unwrap().len(), 400);
    assert!(
        okta.as_array()
            .unwrap()
            .iter()
            .all(|r| r["source"] == "connector")
    );
    let table = hub.cli(&["activity", "--source", "box-e2e", "--limit", "5"]);
    assert!(
        table.contains("VENDOR ID") && table.lines().count() == 6,
        "{table}"
    );
    // Status: every connector healthy, its events counted, throttling seen.
    let status = hub.json(&["connectors", "status", "--json"]);
    for s in status.as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        assert!(s["last_success"].is_string(), "{name}: {s}");
        assert_eq!(s["events_today"], 400, "{name}: {s}");
        assert!(s["cursor"].is_string(), "{name}: {s}");
        assert_eq!(s["health"], "ok", "{name}: {s}");
    }
    for sim in &sims {
        // The 429 and the 5xx burst were answered (counters in the status are saved after
        // each poll, so a kill may lose some; the vendor's count is the truth).
        assert_eq!(
            sim.stats().faults_answered,
            3,
            "{:?}: {:?}, {} left",
            sim.kind,
            sim.stats(),
            sim.faults_left()
        );
        assert_eq!(sim.stats().retry_violations, 0, "{:?}", sim.kind);
        assert_eq!(sim.stats().unauthorized, 0, "{:?}", sim.kind);
    }
    // The secret is nowhere: not in --json, not in the table, not in the logs.
    let list = hub.cli(&["connectors", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 5);
    for out in [
        list,
        hub.cli(&["connectors", "list"]),
        hub.cli(&["connectors", "status", "--json"]),
        hub.cli(&["connectors"]),
        std::fs::read_to_string(&hub.log).unwrap(),
    ] {
        assert!(!out.contains(TOKEN), "the token leaked: {out}");
    }
    // /metrics carries each connector's counters and health.
    let metrics = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    for name in expected.keys() {
        let line = format!("tollgate_hub_connector_up{{connector=\"{name}\",kind=");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
        assert!(
            metrics.contains(&format!(
                "tollgate_hub_connector_events_total{{connector=\"{name}\"}}"
            )),
            "{metrics}"
        );
    }
    assert!(!metrics.contains(TOKEN));
    // Rotation without restart: the vendor takes only a new token from now on; the admin
    // rewrites token_file; the running hub's token_file connectors (github, slack) go on.
    for sim in &sims {
        if matches!(sim.kind, Kind::Github | Kind::Slack) {
            sim.set_token("rotated-e2e-token-2");
            let now = now_ms();
            sim.add_events(
                (0..20).map(|i| SimEvent::new(90_000 + i, now - 60_000 + i as i64 * 100)),
            );
        }
    }
    std::fs::write(&token_file, "rotated-e2e-token-2\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let gh = hub.json(&[
            "activity",
            "--json",
            "--source",
            "github-e2e",
            "--limit",
            "100000",
        ]);
        let sl = hub.json(&[
            "activity",
            "--json",
            "--source",
            "slack-e2e",
            "--limit",
            "100000",
        ]);
        let (gh, sl) = (gh.as_array().unwrap().len(), sl.as_array().unwrap().len());
        if (gh, sl) == (420, 420) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after rotation: github {gh}, slack {sl}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // `run NAME` polls once from the CLI, next to the running hub.
    let ran = hub.json(&["connectors", "run", "slack-e2e", "--json"]);
    assert_eq!(ran["new"], 0, "{ran}");
    assert!(
        !std::fs::read_to_string(&hub.log)
            .unwrap()
            .contains("rotated-e2e-token")
    );
    ticker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_run_stores_every_event_once_sqlite() {
    kill9_mid_run_stores_every_event_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_run_stores_every_event_once_postgres() {
    kill9_mid_run_stores_every_event_once(true).await;
}

#[test]
fn a_bad_connector_is_refused_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n\n[[connectors]]\nkind = \"okta\"\nname = \"o\"\ntoken = \"x\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["connectors", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hub.toml:3:") && err.contains("base_url"),
        "{err}"
    );
    std::fs::write(
        &config,
        "[[connectors]]\nkind = \"slack\"\nname = \"s\"\ntoken = \"x\"\npassword = \"y\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["connectors", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("password"), "{err}");
}

/// Okta sign-ins read by a connector go through the hub's `[[activity_policies]]`: each
/// record counts once in the alerts, whatever SIGKILLs land while the hub reads and alerts,
/// and the alerts reach a `[[alert_sinks]]` file in CEF.
async fn connector_activities_raise_alerts_once_through_kill9(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = database(postgres, dir.path()) else {
        return;
    };
    let clock = SimClock::new(now_ms());
    let sim = Sim::start(Kind::Okta, clock.clone(), TOKEN).await.unwrap();
    let n = 300u64;
    let start = now_ms() - 40 * 60_000;
    sim.add_events((0..n).map(|i| SimEvent::new(i, start + i as i64 * 5_000)));
    sim.set_page_size(20);
    let users: BTreeSet<String> = (0..n).map(|i| SimEvent::new(i, 0).user).collect();
    let sink_file = dir.path().join("alerts.cef");
    let mut hub = Hub::with_okta(
        dir.path(),
        &db,
        &sim,
        "okta-alerts",
        &format!(
            "[[activity_policies]]\nname = \"okta sign-in\"\nactivity = \"login\"\napps = [\"okta\"]\nseverity = \"low\"\n\n\
             [[alert_sinks]]\nkind = \"file\"\npath = \"{}\"\nformat = \"cef\"\n",
            sink_file.display()
        ),
    );
    let mut rng = fastrand::Rng::with_seed(if postgres { 4 } else { 3 });
    for _ in 0..5 {
        hub.spawn();
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1500))).await;
        hub.kill9();
        sim.forget_retry_after();
    }
    hub.spawn();
    let counted = |hub: &Hub| -> (u64, usize) {
        let alerts = hub.json(&["alerts", "--json"]);
        let alerts = alerts.as_array().unwrap();
        let sum = alerts
            .iter()
            .filter(|a| a["policy"] == "okta sign-in")
            .map(|a| a["count"].as_u64().unwrap())
            .sum();
        (sum, alerts.len())
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while counted(&hub).0 < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Long enough for a second feeding of anything to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (sum, alerts) = counted(&hub);
    assert_eq!(
        sum,
        n,
        "each sign-in counts once in the alerts: {}\n{}",
        hub.cli(&["alerts"]),
        std::fs::read_to_string(&hub.log).unwrap_or_default()
    );
    // One open alert per signed-in user (the policy de-duplicates by actor and app).
    assert_eq!(alerts, users.len(), "{}", hub.cli(&["alerts"]));
    let table = hub.cli(&["alerts"]);
    assert!(table.contains("okta sign-in"), "{table}");
    // The sink got the alerts in CEF (at least once each: a SIGKILL may make it twice).
    let cef = std::fs::read_to_string(&sink_file).unwrap_or_default();
    for user in &users {
        assert!(
            cef.lines()
                .any(|l| l.starts_with("CEF:0|") && l.contains(user.as_str())),
            "no CEF alert for {user}: {cef}"
        );
    }
    // An admin resolves one user's alert at the hub. The running hub applies it to its book,
    // so that user's next sign-in opens a new alert instead of raising the closed one's count.
    let first = hub.json(&["alerts", "--json"])[0].clone();
    let (reference, user) = (
        first["ref"].as_str().unwrap().to_string(),
        first["entities"]["user"].as_str().unwrap().to_string(),
    );
    let out = hub.cli(&["alerts", "resolve", &reference, "--comment", "known travel"]);
    assert!(
        out.contains(&reference) && out.contains("resolved"),
        "{out}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let next = (n..n + 10_000)
        .find(|i| SimEvent::new(*i, 0).user == user)
        .expect("an event of the same user");
    // After every other event, within the simulated clock.
    sim.add_events([SimEvent::new(next, start + n as i64 * 5_000)]);
    let reopened = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let alerts = hub.json(&["alerts", "--json"]);
            let mine: Vec<_> = alerts
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["entities"]["user"] == user.as_str())
                .cloned()
                .collect();
            if mine.len() == 2 || Instant::now() > deadline {
                break mine;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    assert_eq!(
        reopened.len(),
        2,
        "no new alert after the resolve: {reopened:#?}"
    );
    let old = reopened
        .iter()
        .find(|a| a["ref"] == reference.as_str())
        .unwrap();
    assert_eq!(old["status"], "resolved");
    assert_eq!(old["comment"], "known travel");
    assert_eq!(
        old["count"], first["count"],
        "the resolved alert's count moved"
    );
    assert!(
        reopened
            .iter()
            .any(|a| a["status"] == "open" && a["count"] == 1)
    );
    hub.kill9();
}

/// Connectors configured centrally: a published bundle brings an Okta connector (its token
/// in a file on the hub, never in the bundle), and the hub runs it with no restart and no
/// config change; a bundle with an inline token is refused; a `run_on = "gateway"` one is
/// left to the gateways; a bundle that drops the connector stops it.
async fn a_bundle_brings_a_connector_the_hub_runs(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = database(postgres, dir.path()) else {
        return;
    };
    let clock = SimClock::new(now_ms());
    let sim = Sim::start(Kind::Okta, clock.clone(), TOKEN).await.unwrap();
    let start = now_ms() - 30 * 60_000;
    sim.add_events((0..40u64).map(|i| SimEvent::new(i, start + i as i64 * 10_000)));
    let ca_file = dir.path().join("vendors.pem");
    std::fs::write(&ca_file, &sim.cert_pem).unwrap();
    let token_file = dir.path().join("okta.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let state = dir.path().join("state");
    let config = format!(
        "listen = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\ndatabase = \"{db}\"\nserver_names = [\"127.0.0.1\"]\n",
        free_port(),
        state.display(),
    );
    let config_path = dir.path().join("hub.toml");
    std::fs::write(&config_path, &config).unwrap();
    let mut hub = Hub {
        config: config_path,
        ca_file,
        log: dir.path().join("hub.log"),
        child: None,
    };
    hub.spawn();
    let publish = |hub: &Hub, policy: &str| -> std::process::Output {
        let file = dir.path().join("bundle.toml");
        std::fs::write(&file, policy).unwrap();
        Command::new(BIN)
            .arg("--config")
            .arg(&hub.config)
            .args(["publish", file.to_str().unwrap()])
            .output()
            .unwrap()
    };
    // An inline secret in a bundle is refused, and says why.
    let out = publish(
        &hub,
        &format!(
            "[[connectors]]\nkind = \"okta\"\nname = \"okta-central\"\nbase_url = \"{}\"\ntoken = \"{TOKEN}\"\n",
            sim.base_url
        ),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("may not carry a secret") && !err.contains(TOKEN),
        "{err}"
    );
    // A token file on the hub: published, and run.
    let connector = format!(
        "[[connectors]]\nkind = \"okta\"\nname = \"okta-central\"\nbase_url = \"{}\"\n\
         token_file = \"{}\"\npoll_interval_secs = 1\n\n\
         [[connectors]]\nkind = \"okta\"\nname = \"okta-branch\"\nbase_url = \"https://10.9.9.9\"\n\
         token_file = \"/etc/tollgate/okta.token\"\nrun_on = \"gateway\"\n",
        sim.base_url,
        token_file.display()
    );
    let out = publish(&hub, &connector);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = |hub: &Hub, source: &str| -> usize {
        hub.json(&["activity", "--json", "--source", source])
            .as_array()
            .map_or(0, Vec::len)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored(&hub, "okta-central") < 40 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        stored(&hub, "okta-central"),
        40,
        "{}",
        std::fs::read_to_string(&hub.log).unwrap_or_default()
    );
    let status = hub.cli(&["connectors", "status"]);
    assert!(status.contains("okta-central"), "{status}");
    assert!(
        !status.contains("okta-branch"),
        "the hub ran a gateway's connector: {status}"
    );
    // A bundle without it stops it: later events are not read.
    let out = publish(&hub, "[apps.zoom]\ntag = \"monitored\"\n");
    assert!(out.status.success());
    tokio::time::sleep(Duration::from_secs(7)).await;
    sim.add_events([SimEvent::new(40, now_ms() - 1_000)]);
    clock.set_ms(now_ms());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        stored(&hub, "okta-central"),
        40,
        "a dropped connector still polls"
    );
    hub.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_brings_a_connector_the_hub_runs_sqlite() {
    a_bundle_brings_a_connector_the_hub_runs(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_brings_a_connector_the_hub_runs_postgres() {
    a_bundle_brings_a_connector_the_hub_runs(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_activities_raise_alerts_once_through_kill9_sqlite() {
    connector_activities_raise_alerts_once_through_kill9(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_activities_raise_alerts_once_through_kill9_postgres() {
    connector_activities_raise_alerts_once_through_kill9(true).await;
}

/// Governance through a connector: an activity policy with `connector_actions` and `notify`.
/// Each user's third Okta sign-in opens one alert; for it the hub suspends the user and
/// revokes their sessions through the Okta connector (the calls reach the simulated Okta's
/// user endpoints, once per alert however many sign-ins follow), a call through a connector
/// that does not run here fails with a reason, the alert goes to the sink the policy notifies
/// (which takes nothing else) and not to a sink whose severity line it is below, and every
/// call and notification is in the hub's audit trail.
async fn a_policy_suspends_users_through_the_connector_and_notifies(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = database(postgres, dir.path()) else {
        return;
    };
    let clock = SimClock::new(now_ms());
    let sim = Sim::start(Kind::Okta, clock.clone(), TOKEN).await.unwrap();
    // 17 users (SimEvent cycles them), four sign-ins each.
    let n = 68u64;
    let start = now_ms() - 20 * 60_000;
    sim.add_events((0..n).map(|i| SimEvent::new(i, start + i as i64 * 5_000)));
    let users: BTreeSet<String> = (0..n).map(|i| SimEvent::new(i, 0).user).collect();
    assert_eq!(users.len(), 17);
    let pager = dir.path().join("pager.json");
    let siem = dir.path().join("siem.json");
    let mut hub = Hub::with_okta(
        dir.path(),
        &db,
        &sim,
        "okta-gov",
        &format!(
            "[[activity_policies]]\nname = \"repeated sign-in\"\nactivity = \"login\"\napps = [\"okta\"]\nseverity = \"low\"\n\
             repeated = {{ count = 3, within_secs = 86400, per_user = true }}\n\
             connector_actions = [{{ connector = \"okta-gov\", action = \"suspend_user\" }}, {{ connector = \"okta-gov\", action = \"revoke_sessions\" }}, {{ connector = \"not-here\", action = \"revoke_sessions\" }}]\n\
             notify = [\"pager\"]\n\n\
             [[alert_sinks]]\nname = \"pager\"\nkind = \"file\"\npath = \"{}\"\nformat = \"json\"\nsend = []\n\n\
             [[alert_sinks]]\nname = \"siem\"\nkind = \"file\"\npath = \"{}\"\nformat = \"json\"\nmin_severity = \"high\"\n",
            pager.display(),
            siem.display(),
        ),
    );
    hub.spawn();
    let calls = || sim.stats().governance;
    let deadline = Instant::now() + Duration::from_secs(60);
    while calls().len() < 2 * users.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Long enough for a call too many to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = calls();
    let log = || std::fs::read_to_string(&hub.log).unwrap_or_default();
    assert_eq!(
        calls.len(),
        2 * users.len(),
        "one suspend and one revoke per alert: {calls:#?}\n{}",
        log()
    );
    for user in &users {
        assert!(
            calls.iter().any(|(m, p)| m == "POST"
                && p.contains(user.as_str())
                && p.ends_with("/lifecycle/suspend")),
            "{user} not suspended: {calls:#?}"
        );
        assert!(
            calls.iter().any(|(m, p)| m == "DELETE"
                && p.contains(user.as_str())
                && p.ends_with("/sessions")),
            "{user}'s sessions not revoked: {calls:#?}"
        );
    }
    let alerts = hub.json(&["alerts", "--json"]);
    assert_eq!(alerts.as_array().unwrap().len(), users.len(), "{alerts:#}");
    // The audit trail has every call, the one that could not be made, and each notification.
    let deadline = Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let audit = hub.json(&["audit", "--json"]);
        let done = audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == "connector_action")
            .count();
        if done >= 3 * users.len() || Instant::now() > deadline {
            break audit;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let rows = audit.as_array().unwrap();
    let of = |kind: &str, needle: &str| {
        rows.iter()
            .filter(|a| a["kind"] == kind && a["detail"].as_str().unwrap().contains(needle))
            .count()
    };
    assert_eq!(
        of("connector_action", "suspend_user of"),
        users.len(),
        "{audit:#}"
    );
    assert_eq!(
        of("connector_action", ": done"),
        2 * users.len(),
        "{audit:#}"
    );
    assert_eq!(
        of(
            "connector_action",
            "no connector named \"not-here\" runs here"
        ),
        users.len(),
        "{audit:#}"
    );
    assert_eq!(
        of("notify", "sent to sink \"pager\""),
        users.len(),
        "{audit:#}"
    );
    // The notified sink has each alert once; the other sink, above the alerts' severity, none.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&pager)
        .unwrap_or_default()
        .lines()
        .count()
        < users.len()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let paged = std::fs::read_to_string(&pager).unwrap_or_default();
    assert_eq!(paged.lines().count(), users.len(), "{paged}");
    for user in &users {
        assert!(paged.contains(user.as_str()), "{user} not paged: {paged}");
    }
    assert!(
        std::fs::read_to_string(&siem)
            .unwrap_or_default()
            .is_empty(),
        "a low alert reached the high-only sink"
    );
    hub.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_suspends_users_through_the_connector_and_notifies_sqlite() {
    a_policy_suspends_users_through_the_connector_and_notifies(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_suspends_users_through_the_connector_and_notifies_postgres() {
    a_policy_suspends_users_through_the_connector_and_notifies(true).await;
}
