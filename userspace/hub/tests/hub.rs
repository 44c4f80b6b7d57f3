//! The hub as a real process on 127.0.0.1 with real TLS, the gateway side played by
//! `tollgate_sync::client`. Every test runs on SQLite and, when `TOLLGATE_TEST_POSTGRES` names
//! a PostgreSQL server (`cargo xtask test` starts one), on PostgreSQL too.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tollgate_sync::client::{self, ClientError, HubClient};
use tollgate_sync::protocol::{
    AlertReport, AppUsage, BundleOutcome, BundleReport, ConnectorRecords, DiscoveryInterval,
    DomainUsage, EnrollRequest, EnrollResponse, Health, PollRequest, PollResponse, RecordBody,
    UploadBatch, UploadRecord,
};
use tollgate_sync::token::EnrollmentToken;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-hub");

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A database for one test: a SQLite file in `dir`, or a fresh PostgreSQL database.
fn database(backend: Backend, dir: &Path) -> Option<String> {
    match backend {
        Backend::Sqlite => Some(format!("sqlite://{}/hub.db", dir.display())),
        Backend::Postgres => {
            let Ok(base) = std::env::var("TOLLGATE_TEST_POSTGRES") else {
                eprintln!("SKIP: TOLLGATE_TEST_POSTGRES is not set");
                return None;
            };
            let name = format!(
                "hub_{}_{}",
                std::process::id(),
                dir.file_name()?
                    .to_string_lossy()
                    .to_lowercase()
                    .replace(|c: char| !c.is_ascii_alphanumeric(), "")
            );
            let out = Command::new("psql")
                .arg(&base)
                .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
                .arg(format!("CREATE DATABASE {name}"))
                .output()
                .expect("psql");
            assert!(
                out.status.success(),
                "create database: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // The URL may carry `?host=<socket dir>`: replace only the path's database.
            let (url, query) = base
                .split_once('?')
                .map_or((base.as_str(), None), |(u, q)| (u, Some(q)));
            let (prefix, _) = url.rsplit_once('/').expect("postgres URL with a database");
            Some(match query {
                Some(q) => format!("{prefix}/{name}?{q}"),
                None => format!("{prefix}/{name}"),
            })
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Hub {
    child: Option<Child>,
    config: PathBuf,
    port: u16,
}

impl Hub {
    /// A hub on a free port with its own state dir in `dir` and the given database.
    fn start(dir: &Path, name: &str, database: &str) -> Hub {
        let port = free_port();
        let state = dir.join(name);
        std::fs::create_dir_all(&state).unwrap();
        let config = state.join("hub.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\ndatabase = \"{database}\"\n\
                 server_names = [\"127.0.0.1\", \"localhost\"]\npublic_urls = [\"https://127.0.0.1:{port}\"]\n\
                 long_poll_secs = 30\n\n[metrics]\nlisten = \"127.0.0.1:{}\"\n",
                state.display(),
                free_port()
            ),
        )
        .unwrap();
        let mut hub = Hub {
            child: None,
            config,
            port,
        };
        hub.spawn();
        hub
    }

    /// `GET /metrics` from the hub's `[metrics] listen`.
    fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let cfg = std::fs::read_to_string(&self.config).unwrap();
        let addr = cfg
            .rsplit("listen = \"")
            .next()
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_string();
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out
    }

    fn spawn(&mut self) {
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&self.config)
            .env("TOLLGATE_HUB_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tollgate-hub");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the hub says where it listens");
        assert!(
            line.starts_with("tollgate-hub: listening on https://127.0.0.1:"),
            "{line}"
        );
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("tollgate-hub CLI")
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "tollgate-hub {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn token(&self, site: &str, ttl: &str) -> EnrollmentToken {
        let out = self.cli_ok(&["token", "create", "--site", site, "--ttl", ttl, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["site"], site);
        EnrollmentToken::parse(v["token"].as_str().unwrap()).unwrap()
    }

    fn publish(&self, dir: &Path, policy: &str, site: Option<&str>) -> u64 {
        let file = dir.join("policy.toml");
        std::fs::write(&file, policy).unwrap();
        let mut args = vec!["publish", file.to_str().unwrap(), "--json"];
        if let Some(s) = site {
            args.extend(["--site", s]);
        }
        let v: serde_json::Value = serde_json::from_str(&self.cli_ok(&args)).unwrap();
        v["revision"].as_u64().unwrap()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Gateway {
    enrolled: EnrollResponse,
    key_pem: String,
}

impl Gateway {
    fn client(&self, urls: Vec<String>) -> HubClient {
        HubClient::new(
            urls,
            self.enrolled.ca_der.clone(),
            self.enrolled.certificate_der.clone(),
            &self.key_pem,
        )
        .unwrap()
    }
}

async fn try_enroll(url: &str, token: &EnrollmentToken) -> Result<Gateway, ClientError> {
    let id = client::new_gateway_identity("gw.test").unwrap();
    let request = EnrollRequest {
        token_secret: token.secret_hex(),
        csr_der: id.csr_der,
        hostname: "gw.test".into(),
        agent_version: "0.1.0".into(),
    };
    let enrolled = client::enroll(url, token, &request).await?;
    Ok(Gateway {
        enrolled,
        key_pem: id.key_pem,
    })
}

async fn enroll(hub: &Hub, site: &str) -> Gateway {
    let token = hub.token(site, "1h");
    let gw = try_enroll(&hub.url(), &token).await.expect("enroll");
    assert_eq!(gw.enrolled.site, site);
    gw
}

fn poll_req(applied: u64, wait: u16) -> PollRequest {
    PollRequest {
        applied_revision: applied,
        wait_secs: wait,
        health: Health {
            agent_version: "0.1.0".into(),
            hostname: "gw.test".into(),
            ..Health::default()
        },
    }
}

fn batch(first_seq: u64) -> UploadBatch {
    UploadBatch {
        records: (0..3)
            .map(|i| UploadRecord {
                seq: first_seq + i,
                recorded_at: 1_700_000_000,
                body: RecordBody::Discovery(DiscoveryInterval {
                    start: 1_700_000_000,
                    end: 1_700_000_060,
                    apps: vec![AppUsage {
                        app_id: "dropbox".into(),
                        user: format!("user{i}"),
                        device: "10.0.0.2".into(),
                        bytes_up: 100,
                        bytes_down: 1000,
                        flows: 2,
                        blocked_flows: 1,
                    }],
                    unknown_domains: vec![DomainUsage {
                        domain: "unknown.example".into(),
                        bytes_up: 1,
                        bytes_down: 2,
                        flows: 1,
                    }],
                }),
            })
            .collect(),
    }
}

fn refused(r: Result<impl std::fmt::Debug, ClientError>, status: u16, reason: &str) {
    match r {
        Err(ClientError::Refused {
            status: s,
            reason: text,
        }) => {
            assert_eq!(s, status, "{text}");
            assert!(text.contains(reason), "{text:?} lacks {reason:?}");
        }
        other => panic!("expected a {status} refusal ({reason}), got {other:?}"),
    }
}

async fn enrollment_and_refusals(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = database(backend, dir.path()) else {
        return;
    };
    let hub = Hub::start(dir.path(), "hub", &db);

    // A good token enrolls once; the second use is refused.
    let token = hub.token("paris", "1h");
    let gw = try_enroll(&hub.url(), &token).await.expect("enroll");
    assert!(gw.enrolled.gateway_id.starts_with("gw-"));
    assert_eq!(gw.enrolled.hub_urls, vec![hub.url()]);
    refused(
        try_enroll(&hub.url(), &token).await.map(|_| ()),
        403,
        "token already used",
    );

    // A token of the right form whose secret the hub never issued.
    let mut forged = hub.token("paris", "1h");
    forged.secret[0] ^= 0xff;
    refused(
        try_enroll(&hub.url(), &forged).await.map(|_| ()),
        403,
        "unknown enrollment token",
    );

    // An expired token.
    let short = hub.token("paris", "1s");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    refused(
        try_enroll(&hub.url(), &short).await.map(|_| ()),
        403,
        "token expired",
    );

    // A token pinning another CA: the gateway refuses the hub before it sends the secret.
    let mut wrong_pin = hub.token("paris", "1h");
    wrong_pin.ca_pin[0] ^= 0xff;
    match try_enroll(&hub.url(), &wrong_pin).await {
        Err(ClientError::PinMismatch { reason, .. }) => {
            assert!(reason.contains("pin"), "{reason}")
        }
        other => panic!("expected PinMismatch, got {:?}", other.map(|_| ())),
    }
    // ...and that token stays unused: it still enrolls with the right pin.
    wrong_pin.ca_pin[0] ^= 0xff;
    try_enroll(&hub.url(), &wrong_pin)
        .await
        .expect("the unspent token");

    // An enrolled gateway polls; once revoked it gets 403. The CLI writes the revocation to
    // the database; the running hub reloads the revoked set every second.
    let c = gw.client(vec![hub.url()]);
    assert!(matches!(
        c.poll(&poll_req(0, 0)).await.unwrap(),
        PollResponse::Unchanged { latest_revision: 0 }
    ));
    hub.cli_ok(&["gateway", "revoke", &gw.enrolled.gateway_id]);
    let revoked_at = Instant::now();
    while c.poll(&poll_req(0, 0)).await.is_ok() {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(3),
            "a revoked gateway is still served after 3 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    refused(c.poll(&poll_req(0, 0)).await, 403, "gateway revoked");
    refused(c.upload(&batch(1)).await, 403, "gateway revoked");

    let audit = hub.cli_ok(&["audit", "--json"]);
    for kind in ["token_created", "gateway_enrolled", "gateway_revoked"] {
        assert!(audit.contains(kind), "{kind} missing from {audit}");
    }
}

async fn publish_reaches_held_polls_of_its_site(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = database(backend, dir.path()) else {
        return;
    };
    let hub = Hub::start(dir.path(), "hub", &db);
    let paris = enroll(&hub, "paris").await;
    let lyon = enroll(&hub, "lyon").await;
    let pc = paris.client(vec![hub.url()]);
    let lc = lyon.client(vec![hub.url()]);

    let paris_poll = tokio::spawn(async move { pc.poll(&poll_req(0, 25)).await });
    let lyon_poll = tokio::spawn(async move { lc.poll(&poll_req(0, 4)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let policy = "[apps.dropbox]\ntag = \"unsanctioned\"\n";
    let published = Instant::now();
    let revision = hub.publish(dir.path(), policy, Some("paris"));
    assert_eq!(revision, 1);
    let answer = paris_poll.await.unwrap().unwrap();
    assert!(
        published.elapsed() < Duration::from_secs(5),
        "bundle took {:?}",
        published.elapsed()
    );
    let PollResponse::Bundle(signed) = answer else {
        panic!("expected the bundle, got {answer:?}")
    };
    let bundle = signed
        .verify(&paris.enrolled.bundle_key, 0, "paris")
        .expect("the bundle verifies with the enrollment's bundle key");
    assert_eq!(bundle.revision, 1);
    assert_eq!(bundle.policy_toml, policy);

    // Lyon's poll is not answered with Paris's bundle.
    match lyon_poll.await.unwrap().unwrap() {
        PollResponse::Unchanged { latest_revision: 0 } => {}
        other => panic!("lyon got {other:?}"),
    }

    // A bundle setting a section bundles may not set is refused by publish.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[daemon]\nstatus_interval_secs = 1\n").unwrap();
    let out = hub.cli(&["publish", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`daemon`"));

    // An every-site bundle reaches both; the report shows up in the fleet view.
    let all = hub.publish(dir.path(), "[tag_rules]\n", None);
    assert_eq!(all, 2);
    let lc = lyon.client(vec![hub.url()]);
    let PollResponse::Bundle(b) = lc.poll(&poll_req(0, 5)).await.unwrap() else {
        panic!("lyon gets the every-site bundle")
    };
    assert_eq!(
        b.verify(&lyon.enrolled.bundle_key, 0, "lyon")
            .unwrap()
            .revision,
        2
    );
    lc.report(&BundleReport {
        revision: 2,
        outcome: BundleOutcome::Refused {
            reason: "tag_rules: bad pattern".into(),
        },
    })
    .await
    .unwrap();
    let gateways: serde_json::Value =
        serde_json::from_str(&hub.cli_ok(&["gateways", "--json"])).unwrap();
    let row = gateways
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == lyon.enrolled.gateway_id.as_str())
        .unwrap();
    assert_eq!(row["report_outcome"], "refused");
    assert_eq!(row["report_reason"], "tag_rules: bad pattern");
    assert_eq!(row["health"]["hostname"], "gw.test");
}

fn apps(hub: &Hub) -> serde_json::Value {
    serde_json::from_str(&hub.cli_ok(&["apps", "--json"])).unwrap()
}

async fn uploads_count_once_and_survive_a_restart(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = database(backend, dir.path()) else {
        return;
    };
    let mut hub = Hub::start(dir.path(), "hub", &db);
    let gw = enroll(&hub, "paris").await;
    let c = gw.client(vec![hub.url()]);

    let first = c.upload(&batch(1)).await.unwrap();
    assert_eq!(
        (first.stored_through, first.accepted, first.duplicates),
        (3, 3, 0)
    );
    let again = c.upload(&batch(1)).await.unwrap();
    assert_eq!(
        (again.stored_through, again.accepted, again.duplicates),
        (3, 0, 3)
    );

    let check = |apps: serde_json::Value| {
        let dropbox = &apps[0];
        assert_eq!(dropbox["app_id"], "dropbox");
        assert_eq!(dropbox["bytes_up"], 300);
        assert_eq!(dropbox["bytes_down"], 3000);
        assert_eq!(dropbox["flows"], 6);
        assert_eq!(dropbox["blocked_flows"], 3);
        assert_eq!(dropbox["users"], 3);
        assert_eq!(dropbox["gateways"], 1);
        assert_eq!(
            dropbox["per_gateway"][0]["gateway_id"],
            gw.enrolled.gateway_id.as_str()
        );
        // The catalog's score, as the gateway's own report shows it.
        let catalog = tollgate_catalog::Catalog::builtin(chrono::Utc::now()).unwrap();
        assert_eq!(
            dropbox["risk_score"].as_f64(),
            catalog.risk_score("dropbox")
        );
    };
    check(apps(&hub));
    // The metrics count what was stored, and the fleet from the database.
    let metrics = hub.metrics();
    for line in [
        "tollgate_hub_upload_records_total 3",
        "tollgate_hub_gateways_enrolled 1.0",
        "tollgate_hub_gateways_revoked 0.0",
        "tollgate_hub_gateways_connected 0.0",
        "tollgate_hub_database_up 1.0",
        "tollgate_hub_requests_total{path=\"/v1/upload\",code=\"200\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    hub.publish(dir.path(), "[apps.dropbox]\ntag = \"sanctioned\"\n", None);

    // Every request so far went over one kept connection.
    assert_eq!(c.connections_opened(), 1);

    // A restart keeps the CA (the gateway's client still trusts the hub and is still known),
    // the bundles and the uploads. The kept connection died with the hub: the poll goes
    // out again on a new one.
    hub.kill();
    hub.spawn();
    let PollResponse::Bundle(b) = c.poll(&poll_req(0, 1)).await.unwrap() else {
        panic!("the bundle survives the restart")
    };
    assert_eq!(c.connections_opened(), 2);
    assert_eq!(
        b.verify(&gw.enrolled.bundle_key, 0, "paris")
            .unwrap()
            .revision,
        1
    );
    let third = c.upload(&batch(1)).await.unwrap();
    assert_eq!(third.duplicates, 3);
    check(apps(&hub));
}

fn alert_record(seq: u64, alert_id: u64, count: u64, status: &str) -> UploadRecord {
    UploadRecord {
        seq,
        recorded_at: 1_700_000_000,
        body: RecordBody::Alert(Box::new(AlertReport {
            alert_id,
            opened: 1_700_000_000,
            last_seen: 1_700_000_000 + i64::try_from(count).unwrap(),
            severity: "high".into(),
            policy: "new risky app".into(),
            user: None,
            ip: None,
            app_id: Some("zoom".into()),
            reason: format!("Zoom (zoom) on 2023-11-14: {count} users today (above 2)"),
            status: status.into(),
            count,
            comment: None,
        })),
    }
}

/// A gateway's alerts come up through its uploads: the newest report of each alert wins
/// (a report sent again, or an older one arriving late, changes nothing), and an admin
/// resolves one at the hub, where its own status stays beside the gateway's.
async fn gateway_alerts_come_up_and_are_resolved_at_the_hub(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = database(backend, dir.path()) else {
        return;
    };
    let hub = Hub::start(dir.path(), "hub", &db);
    let gw = enroll(&hub, "paris").await;
    let c = gw.client(vec![hub.url()]);
    let list = |hub: &Hub| -> Vec<serde_json::Value> {
        serde_json::from_str(&hub.cli_ok(&["alerts", "--json"])).unwrap()
    };
    // One batch with two reports of alert 7 (a new match raised its count) and alert 8.
    let ack = c
        .upload(&UploadBatch {
            records: vec![
                alert_record(1, 7, 1, "open"),
                alert_record(2, 8, 1, "open"),
                alert_record(3, 7, 3, "open"),
            ],
        })
        .await
        .unwrap();
    assert_eq!(ack.accepted, 3);
    let all = list(&hub);
    assert_eq!(all.len(), 2, "{all:?}");
    let id = &gw.enrolled.gateway_id;
    let seven = all
        .iter()
        .find(|a| a["ref"] == format!("{id}:7"))
        .expect("alert 7");
    assert_eq!(seven["count"], 3);
    assert_eq!(seven["status"], "open");
    assert_eq!(seven["entities"]["app"], "zoom");
    assert_eq!(seven["entities"]["gateway"], "gw.test");
    assert_eq!(seven["scope"], id.as_str());
    // The gateway resolves 8; then an older report of 7 arrives late (a lower seq).
    c.upload(&UploadBatch {
        records: vec![alert_record(4, 8, 1, "resolved")],
    })
    .await
    .unwrap();
    // Seq 0 is below what the hub stored for 7: its report is older and changes nothing.
    c.upload(&UploadBatch {
        records: vec![alert_record(0, 7, 2, "open")],
    })
    .await
    .unwrap();
    let all = list(&hub);
    let by_ref =
        |all: &[serde_json::Value], r: &str| all.iter().find(|a| a["ref"] == r).cloned().unwrap();
    assert_eq!(by_ref(&all, &format!("{id}:7"))["count"], 3, "{all:?}");
    assert_eq!(by_ref(&all, &format!("{id}:8"))["status"], "resolved");
    // An admin dismisses 7 at the hub.
    let out = hub.cli(&[
        "alerts",
        "dismiss",
        &format!("{id}:7"),
        "--comment",
        "test app",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seven = by_ref(&list(&hub), &format!("{id}:7"));
    assert_eq!(seven["status"], "dismissed");
    assert_eq!(seven["gateway_status"], "open");
    assert_eq!(seven["comment"], "test app");
    let shown: serde_json::Value =
        serde_json::from_str(&hub.cli_ok(&["alerts", "show", &format!("{id}:7"), "--json"]))
            .unwrap();
    assert_eq!(shown["status"], "dismissed");
    // The change is in the hub's audit trail; unknown and malformed references are refused.
    let audit = hub.cli_ok(&["audit", "--json"]);
    assert!(
        audit.contains("alert_status") && audit.contains(":7 (new risky app) set dismissed"),
        "{audit}"
    );
    for bad in [format!("{id}:99"), "nope".into(), "x:y".into(), "42".into()] {
        let out = hub.cli(&["alerts", "resolve", &bad]);
        assert!(!out.status.success(), "{bad} was accepted");
    }
}

/// A gateway-run connector's records come up through the spool: stored under
/// `GATEWAY/CONNECTOR` whatever source the records claim, once per vendor event id.
async fn a_gateways_connector_records_are_stored_once_under_its_name(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = database(backend, dir.path()) else {
        return;
    };
    let hub = Hub::start(dir.path(), "hub", &db);
    let gw = enroll(&hub, "paris").await;
    let c = gw.client(vec![hub.url()]);
    let record = |i: u32| {
        let mut a = tollgate_activity::Activity::new(
            0,
            chrono::Utc::now(),
            "okta",
            tollgate_activity::ActivityType::Login,
            tollgate_activity::Source::Connector,
        );
        a.vendor_id = Some(format!("ev-{i}"));
        // A lie the hub must not believe: another source's name.
        a.connector = Some("okta-central".into());
        serde_json::to_string(&a).unwrap()
    };
    let page = |seq: u64, ids: std::ops::Range<u32>| UploadRecord {
        seq,
        recorded_at: 1_700_000_000,
        body: RecordBody::Activities(ConnectorRecords {
            connector: "okta-branch".into(),
            records: ids.map(record).chain(["not json".to_string()]).collect(),
        }),
    };
    c.upload(&UploadBatch {
        records: vec![page(1, 0..5), page(2, 3..8)],
    })
    .await
    .unwrap();
    let source = format!("{}/okta-branch", gw.enrolled.gateway_id);
    let stored: serde_json::Value =
        serde_json::from_str(&hub.cli_ok(&["activity", "--json", "--source", &source])).unwrap();
    let list = stored.as_array().unwrap();
    assert_eq!(list.len(), 8, "{stored:#}");
    assert!(
        list.iter().all(|a| a["connector"] == source.as_str()),
        "{stored:#}"
    );
    let central: serde_json::Value =
        serde_json::from_str(&hub.cli_ok(&["activity", "--json", "--source", "okta-central"]))
            .unwrap();
    assert_eq!(
        central.as_array().map(Vec::len),
        Some(0),
        "a gateway wrote into another source"
    );
}

async fn two_hubs_share_one_database_and_gateways_fail_over(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = database(backend, dir.path()) else {
        return;
    };
    let mut one = Hub::start(dir.path(), "one", &db);
    let two = Hub::start(dir.path(), "two", &db);
    // Both serve with the same CA and keys: a gateway enrolled on one is known to the other.
    let gw = enroll(&one, "paris").await;
    let c2 = gw.client(vec![two.url()]);
    let held = tokio::spawn(async move { c2.poll(&poll_req(0, 25)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published = Instant::now();
    one.publish(dir.path(), "[apps.box]\ntag = \"sanctioned\"\n", None);
    let PollResponse::Bundle(b) = held.await.unwrap().unwrap() else {
        panic!("hub two delivers what was published through hub one's database")
    };
    assert!(published.elapsed() < Duration::from_secs(5));
    assert_eq!(
        b.verify(&gw.enrolled.bundle_key, 0, "paris")
            .unwrap()
            .revision,
        1
    );

    // Two URLs: when the first hub dies, the client moves to the second.
    let c = gw.client(vec![one.url(), two.url()]);
    assert_eq!(c.current_url(), one.url());
    // Hub one notices a bundle published elsewhere at its next database check (every second):
    // until then it may still say revision 0.
    let mut answer = c.poll(&poll_req(1, 0)).await.unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    while answer != (PollResponse::Unchanged { latest_revision: 1 }) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        answer = c.poll(&poll_req(1, 0)).await.unwrap();
    }
    assert!(
        matches!(answer, PollResponse::Unchanged { latest_revision: 1 }),
        "{answer:?}"
    );
    one.kill();
    let err = c.poll(&poll_req(1, 0)).await.unwrap_err();
    assert!(err.fails_over(), "{err:?}");
    assert_eq!(c.current_url(), two.url());
    assert!(matches!(
        c.poll(&poll_req(1, 0)).await.unwrap(),
        PollResponse::Unchanged { latest_revision: 1 }
    ));
    assert_eq!(c.upload(&batch(10)).await.unwrap().accepted, 3);
}

fn pem(dir: &Path, name: &str, der: &[u8]) -> PathBuf {
    let der_path = dir.join(format!("{name}.der"));
    let pem_path = dir.join(format!("{name}.pem"));
    std::fs::write(&der_path, der).unwrap();
    let ok = Command::new("openssl")
        .args(["x509", "-inform", "der", "-in"])
        .arg(&der_path)
        .arg("-out")
        .arg(&pem_path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl x509");
    pem_path
}

/// curl against the hub, trusting its CA; returns (status, body).
fn curl(ca: &Path, extra: &[&str], url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\\n%{http_code}", "--cacert"])
        .arg(ca)
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// What an attacker tries against the console, each refused: no session, a forged or stale
/// form (no CSRF token, another origin), a read-only account changing things, password
/// guessing (locked out after 10), a stolen database's session rows (only hashes), and a
/// gateway that names itself with HTML (escaped on the page).
async fn the_console_refuses_what_an_attacker_tries(backend: Backend) {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIP: curl needed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = database(backend, dir.path()) else {
        return;
    };
    let hub = Hub::start(dir.path(), "hub", &db);
    let gw = enroll(&hub, "paris").await;
    let ca = pem(dir.path(), "ca", &gw.enrolled.ca_der);
    let url = hub.url();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "a long enough password\n").unwrap();
    for (name, role) in [("root", "admin"), ("viewer", "read-only")] {
        hub.cli_ok(&[
            "user",
            "add",
            name,
            "--role",
            role,
            "--password-file",
            pw.to_str().unwrap(),
        ]);
    }
    // A short password is refused.
    std::fs::write(dir.path().join("short"), "short\n").unwrap();
    let out = hub.cli(&[
        "user",
        "add",
        "x",
        "--password-file",
        dir.path().join("short").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    // A gateway that calls itself HTML.
    let c = gw.client(vec![url.clone()]);
    let mut poll = poll_req(0, 0);
    poll.health.hostname = "<img src=x onerror=alert(1)>".into();
    let _ = c.poll(&poll).await;

    let origin = format!("Origin: {url}");
    let login = |user: &str, password: &str| -> (u16, Option<String>) {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-D", "-", "--cacert"])
            .arg(&ca)
            .args(["-H", &origin, "--data-urlencode", &format!("name={user}")])
            .args(["--data-urlencode", &format!("password={password}")])
            .arg(format!("{url}/console/login"))
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&out.stdout).to_string();
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let cookie = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
            .map(str::to_string);
        (code, cookie)
    };
    let token_of = |cookie: &str| -> String {
        cookie
            .split("tg_console=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    };
    // No session: pages send to the login, changes are refused.
    let (code, _) = curl(&ca, &[], &format!("{url}/console/fleet"));
    assert_eq!(code, 303);
    let (code, _) = curl(
        &ca,
        &["-H", &origin, "-d", "id=zoom&tag=unsanctioned"],
        &format!("{url}/console/catalog/tag"),
    );
    assert_eq!(code, 401);
    // A login.
    let (code, cookie) = login("root", "a long enough password");
    assert_eq!(code, 303);
    let cookie = cookie.expect("a session cookie");
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    let root = format!("tg_console={}", token_of(&cookie));
    let (code, page) = curl(&ca, &["-b", &root], &format!("{url}/console/fleet"));
    assert_eq!(code, 200);
    assert!(
        !page.contains("<img src=x"),
        "the gateway's name reached the page raw"
    );
    assert!(
        page.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{page}"
    );
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let tag = |cookie: &str, csrf: &str, origin: &str| -> u16 {
        curl(
            &ca,
            &[
                "-b",
                cookie,
                "-H",
                origin,
                "-d",
                &format!("id=zoom&tag=unsanctioned&csrf={csrf}"),
            ],
            &format!("{url}/console/catalog/tag"),
        )
        .0
    };
    // A forged form: no token, a wrong one, another origin, no origin at all.
    assert_eq!(tag(&root, "", &origin), 403);
    assert_eq!(tag(&root, &"0".repeat(64), &origin), 403);
    assert_eq!(tag(&root, &csrf, "Origin: https://evil.example"), 403);
    assert_eq!(tag(&root, &csrf, "X-Nothing: 1"), 403);
    assert!(
        hub.cli_ok(&["bundles", "--json"]).trim() == "[]",
        "a refused change published"
    );
    // The real form publishes.
    assert_eq!(tag(&root, &csrf, &origin), 303);
    assert!(
        hub.cli_ok(&["bundles", "--json"])
            .contains("\"revision\": 1")
    );
    // A read-only account cannot change anything.
    let (_, cookie) = login("viewer", "a long enough password");
    let viewer = format!("tg_console={}", token_of(&cookie.unwrap()));
    let (_, page) = curl(&ca, &["-b", &viewer], &format!("{url}/console/fleet"));
    let vcsrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    assert_eq!(tag(&viewer, &vcsrf, &origin), 403);
    // A session token made up, or taken from the database (its hash), opens nothing.
    let (code, _) = curl(
        &ca,
        &["-b", &format!("tg_console={}", "ab".repeat(32))],
        &format!("{url}/console/fleet"),
    );
    assert_eq!(code, 303);
    // Strict headers on every page.
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-", "--cacert"])
        .arg(&ca)
        .args(["-b", &root])
        .arg(format!("{url}/console/alerts"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    assert!(head.contains("x-frame-options: deny"), "{head}");
    // Password guessing: 10 tries, then 429 even with the right password.
    for _ in 0..10 {
        assert_eq!(login("root", "wrong guess!!!").0, 401);
    }
    assert_eq!(login("root", "a long enough password").0, 429);
    // A removed account's session ends.
    hub.cli_ok(&["user", "remove", "root"]);
    let (code, _) = curl(&ca, &["-b", &root], &format!("{url}/console/fleet"));
    assert_eq!(code, 303);
}

async fn bad_requests_and_the_admin_api(backend: Backend) {
    let have = |c: &str| Command::new(c).arg("--version").output().is_ok();
    if !have("curl") || !have("openssl") {
        eprintln!("SKIP: curl and openssl needed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = database(backend, dir.path()) else {
        return;
    };
    let hub = Hub::start(dir.path(), "hub", &db);
    let gw = enroll(&hub, "paris").await;
    let ca = pem(dir.path(), "ca", &gw.enrolled.ca_der);
    let cert = pem(dir.path(), "gw", &gw.enrolled.certificate_der);
    let key = dir.path().join("gw.key");
    std::fs::write(&key, &gw.key_pem).unwrap();
    let url = hub.url();

    // No client certificate on a gateway path: 401. Junk and oversized bodies: 400, 413.
    let (code, body) = curl(
        &ca,
        &["-X", "POST", "--data-binary", "x"],
        &format!("{url}/v1/poll"),
    );
    assert_eq!(code, 401, "{body}");
    let (code, _) = curl(
        &ca,
        &["-X", "POST", "--data-binary", "junk"],
        &format!("{url}/v1/enroll"),
    );
    assert_eq!(code, 400);
    let mtls = [
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    let junk = dir.path().join("junk");
    std::fs::write(&junk, [1u8, 0, 0xff, 0xff, 0xff]).unwrap();
    let junk_arg = format!("@{}", junk.display());
    let (code, _) = curl(
        &ca,
        &[&mtls[..], &["-X", "POST", "--data-binary", &junk_arg]].concat(),
        &format!("{url}/v1/upload"),
    );
    assert_eq!(code, 400);
    let big = dir.path().join("big");
    std::fs::write(
        &big,
        vec![0u8; tollgate_sync::protocol::MAX_MESSAGE_BYTES + 1],
    )
    .unwrap();
    let big_arg = format!("@{}", big.display());
    let (code, _) = curl(
        &ca,
        &[&mtls[..], &["-X", "POST", "--data-binary", &big_arg]].concat(),
        &format!("{url}/v1/upload"),
    );
    assert_eq!(code, 413);

    // The admin API wants the admin token.
    let (code, _) = curl(&ca, &[], &format!("{url}/v1/admin/gateways"));
    assert_eq!(code, 401);
    let (code, _) = curl(
        &ca,
        &["-H", "Authorization: Bearer nope"],
        &format!("{url}/v1/admin/gateways"),
    );
    assert_eq!(code, 401);
    let token_file = hub.config.parent().unwrap().join("admin.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let auth = format!(
        "Authorization: Bearer {}",
        std::fs::read_to_string(&token_file).unwrap().trim()
    );
    let (code, body) = curl(&ca, &["-H", &auth], &format!("{url}/v1/admin/gateways"));
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v[0]["id"], gw.enrolled.gateway_id.as_str());
    let (code, body) = curl(
        &ca,
        &["-H", &auth, "-X", "POST", "--data-binary", "[daemon]\n"],
        &format!("{url}/v1/admin/publish"),
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = curl(
        &ca,
        &[
            "-H",
            &auth,
            "-X",
            "POST",
            "--data-binary",
            "[apps.box]\ntag = \"sanctioned\"\n",
        ],
        &format!("{url}/v1/admin/publish?site=paris"),
    );
    assert_eq!(code, 200, "{body}");
    // The hub survived all of it and delivers the bundle published through the API.
    let c = gw.client(vec![url.clone()]);
    let PollResponse::Bundle(b) = c.poll(&poll_req(0, 2)).await.unwrap() else {
        panic!("the API's bundle")
    };
    assert_eq!(
        b.verify(&gw.enrolled.bundle_key, 0, "paris")
            .unwrap()
            .revision,
        1
    );
    for path in ["apps", "bundles", "audit"] {
        let (code, body) = curl(&ca, &["-H", &auth], &format!("{url}/v1/admin/{path}"));
        assert_eq!(code, 200, "{path}: {body}");
        assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok());
    }
}

/// Rows of `sql` from the hub's database, every column read as text (NULL as "").
async fn db_rows(url: &str, sql: &str) -> Vec<Vec<String>> {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("open the hub's database");
    let rows = sqlx::query(sql).fetch_all(&pool).await.expect(sql);
    let out = rows
        .iter()
        .map(|r| {
            (0..r.columns().len())
                .map(|i| {
                    r.try_get::<Option<String>, _>(i)
                        .map(Option::unwrap_or_default)
                        .or_else(|_| {
                            r.try_get::<Option<i64>, _>(i)
                                .map(|v| v.map_or(String::new(), |v| v.to_string()))
                        })
                        .expect("a text or integer column")
                })
                .collect()
        })
        .collect();
    pool.close().await;
    out
}

/// Per-account API tokens on the admin API: an admin's token changes things, a read-only
/// account's token only reads, revoked, expired, unknown tokens and removed accounts get the
/// same 401, the database keeps no secret, and a token is no console session.
async fn api_tokens_act_with_their_accounts_role(backend: Backend) {
    let have = |c: &str| Command::new(c).arg("--version").output().is_ok();
    if !have("curl") || !have("openssl") {
        eprintln!("SKIP: curl and openssl needed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = database(backend, dir.path()) else {
        return;
    };
    let hub = Hub::start(dir.path(), "hub", &db);
    let gw = enroll(&hub, "paris").await;
    let ca = pem(dir.path(), "ca", &gw.enrolled.ca_der);
    let url = hub.url();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "a long enough password\n").unwrap();
    for (name, role) in [
        ("root", "admin"),
        ("viewer", "read-only"),
        ("temp", "admin"),
    ] {
        hub.cli_ok(&[
            "user",
            "add",
            name,
            "--role",
            role,
            "--password-file",
            pw.to_str().unwrap(),
        ]);
    }
    let create = |args: &[&str]| -> (i64, String) {
        let out = hub.cli_ok(&[&["api-token", "create", "--json"], args].concat());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let token = v["token"].as_str().unwrap().to_string();
        assert!(token.starts_with("tgh_") && token.len() == 68, "{token}");
        (v["id"].as_i64().unwrap(), token)
    };
    let (root_id, root_tok) = create(&["--user", "root", "--name", "ci deploy"]);
    let (_, viewer_tok) = create(&["--user", "viewer", "--name", "grafana"]);
    let (exp_id, exp_tok) = create(&["--user", "root", "--expires-days", "1"]);
    let (_, temp_tok) = create(&["--user", "temp"]);
    // No token for an account that does not exist; bad lifetimes and labels are refused.
    for bad in [
        &["--user", "nobody"][..],
        &["--user", "root", "--expires-days", "0"],
        &["--user", "root", "--expires-days", "-3"],
        &["--user", "root", "--expires-days", "99999999999999"],
        &["--user", "root", "--name", "a\u{1b}[31mred"],
    ] {
        let out = hub.cli(&[&["api-token", "create"], bad].concat());
        assert!(!out.status.success(), "{bad:?} was accepted");
    }

    let get = |token: &str, path: &str| -> (u16, String) {
        curl(
            &ca,
            &["-H", &format!("Authorization: Bearer {token}")],
            &format!("{url}/v1/admin/{path}"),
        )
    };
    let publish = |token: &str| -> (u16, String) {
        curl(
            &ca,
            &[
                "-H",
                &format!("Authorization: Bearer {token}"),
                "-X",
                "POST",
                "--data-binary",
                "[apps.box]\ntag = \"sanctioned\"\n",
            ],
            &format!("{url}/v1/admin/publish"),
        )
    };
    // The admin's token reads and changes.
    let (code, body) = get(&root_tok, "gateways");
    assert_eq!(code, 200, "{body}");
    let (code, body) = publish(&root_tok);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["revision"],
        1
    );
    // The read-only account's token reads, and is refused any change.
    let (code, body) = get(&viewer_tok, "bundles");
    assert_eq!(code, 200, "{body}");
    let (code, body) = publish(&viewer_tok);
    assert_eq!(code, 403, "{body}");
    let (code, _) = curl(
        &ca,
        &[
            "-H",
            &format!("Authorization: Bearer {viewer_tok}"),
            "-X",
            "DELETE",
        ],
        &format!("{url}/v1/admin/gateways"),
    );
    assert_eq!(code, 403);
    let bundles: serde_json::Value =
        serde_json::from_str(&hub.cli_ok(&["bundles", "--json"])).unwrap();
    assert_eq!(bundles.as_array().map(Vec::len), Some(1), "{bundles}");
    // The account's role at the time of use counts: made admin, the viewer's token publishes.
    hub.cli_ok(&[
        "user",
        "add",
        "viewer",
        "--role",
        "admin",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    assert_eq!(publish(&viewer_tok).0, 200);

    // Unknown, revoked, expired tokens and a removed account's token: the same 401.
    let (_, refusal) = get(&format!("tgh_{}", "0".repeat(64)), "gateways");
    let unknown = [
        format!("tgh_{}", "0".repeat(64)),
        root_tok[4..].to_string(),
        format!("{root_tok}x"),
        String::new(),
    ];
    for t in &unknown {
        assert_eq!(get(t, "gateways"), (401, refusal.clone()), "{t:?}");
    }
    hub.cli_ok(&["api-token", "revoke", &root_id.to_string()]);
    assert!(
        !hub.cli(&["api-token", "revoke", &root_id.to_string()])
            .status
            .success()
    );
    assert!(!hub.cli(&["api-token", "revoke", "424242"]).status.success());
    assert_eq!(get(&root_tok, "gateways"), (401, refusal.clone()));
    assert_eq!(publish(&root_tok).0, 401);
    // Expiry: the token worked until its time passed (set back in the database).
    assert_eq!(get(&exp_tok, "gateways").0, 200);
    let past = chrono::Utc::now().timestamp() - 5;
    db_rows(
        &db,
        &format!("UPDATE api_tokens SET expires_at = {past} WHERE id = {exp_id}"),
    )
    .await;
    assert_eq!(get(&exp_tok, "gateways"), (401, refusal.clone()));
    assert_eq!(get(&temp_tok, "gateways").0, 200);
    hub.cli_ok(&["user", "remove", "temp"]);
    assert_eq!(get(&temp_tok, "gateways"), (401, refusal.clone()));
    // The admin token still works beside them.
    let auth = std::fs::read_to_string(hub.config.parent().unwrap().join("admin.token")).unwrap();
    assert_eq!(get(auth.trim(), "gateways").0, 200);

    // The database keeps only hashes: no secret in any column of the table or the audit.
    let rows = db_rows(
        &db,
        "SELECT id, token_hash, user_name, label, created_at, expires_at, last_used, \
         revoked_at FROM api_tokens",
    )
    .await;
    assert_eq!(rows.len(), 4);
    let audit = db_rows(&db, "SELECT detail FROM audit").await;
    for secret in [&root_tok, &viewer_tok, &exp_tok, &temp_tok] {
        let hex = &secret[4..];
        for row in rows.iter().chain(&audit) {
            assert!(
                row.iter().all(|c| !c.contains(hex)),
                "a secret is stored: {row:?}"
            );
        }
    }
    // The list shows state and use, never the secret.
    let list = hub.cli_ok(&["api-token", "list", "--json"]);
    for secret in [&root_tok, &viewer_tok] {
        assert!(!list.contains(&secret[4..]), "{list}");
    }
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let by_id = |id: i64| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .cloned()
            .unwrap()
    };
    let root_row = by_id(root_id);
    assert_eq!(root_row["state"], "revoked");
    assert_eq!(root_row["label"], "ci deploy");
    assert!(root_row["last_used"].is_i64(), "{root_row}");
    assert_eq!(by_id(exp_id)["state"], "expired");
    assert!(hub.cli_ok(&["api-token", "list"]).contains("ci deploy"));
    let audit = hub.cli_ok(&["audit", "--json"]);
    for kind in ["api_token_created", "api_token_revoked"] {
        assert!(audit.contains(kind), "{kind} missing from {audit}");
    }
    assert!(
        audit.contains(&format!(
            "revision 1 published through the admin API by account root (API token {root_id})"
        )),
        "{audit}"
    );

    // A token is no console session, as a cookie (with or without its prefix) or a header.
    for cookie in [
        format!("tg_console={viewer_tok}"),
        format!("tg_console={}", &viewer_tok[4..]),
    ] {
        let (code, _) = curl(&ca, &["-b", &cookie], &format!("{url}/console/fleet"));
        assert_eq!(code, 303, "{cookie}");
    }
    let (code, _) = curl(
        &ca,
        &["-H", &format!("Authorization: Bearer {viewer_tok}")],
        &format!("{url}/console/fleet"),
    );
    assert_eq!(code, 303);

    // Refusals are counted.
    let metrics = hub.metrics();
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_hub_api_token_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refusal counter in\n{metrics}"));
    assert!(refused >= 8, "{refused}");
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Backend::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Backend::Postgres).await
            })*
        }
    };
}

on_both!(
    enrollment_and_refusals,
    publish_reaches_held_polls_of_its_site,
    uploads_count_once_and_survive_a_restart,
    two_hubs_share_one_database_and_gateways_fail_over,
    bad_requests_and_the_admin_api,
    gateway_alerts_come_up_and_are_resolved_at_the_hub,
    the_console_refuses_what_an_attacker_tries,
    a_gateways_connector_records_are_stored_once_under_its_name,
    api_tokens_act_with_their_accounts_role,
);
