//! End to end: a gateway daemon managed by a real hub. The hub (`tollgate-hub`) runs in the
//! server namespace, the gateway enrolls through the gateway namespace with a one-time token
//! that pins the hub's CA, and then:
//! - a bundle published on the hub blocks an app on the gateway within 5 s;
//! - a used token is refused; a revoked gateway is refused;
//! - a bundle the hub serves that does not verify (signed by another key, truncated) is
//!   refused by the gateway and the policy stays;
//! - discovery goes up through the spool: after a hub outage under traffic and a kill -9 of
//!   the gateway, the hub's counts equal what the gateway saw, nothing lost or doubled.
//!
//! The same tests run on SQLite and, when `TOLLGATE_TEST_POSTGRES` names a server (the test
//! setup starts one), on PostgreSQL.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_e2e::servers::{Daemon, Origins, fixture};
use tollgate_e2e::{SERVER_IP4, Topology, serial, sh, tollgate_bin, wait_for};

const HUB_PORT: u16 = 9443;

fn ready(test: &str) -> bool {
    if !hub_bin().exists() {
        eprintln!("SKIP {test}: {} is not built", hub_bin().display());
        return false;
    }
    tollgate_e2e::ready(test, &["nginx", "dnsmasq", "curl", "openssl"], &[])
}

fn hub_bin() -> PathBuf {
    tollgate_bin().with_file_name("tollgate-hub")
}

/// Where a hub keeps its records.
#[derive(Clone)]
enum Store {
    Sqlite,
    Postgres(String),
}

impl Store {
    /// SQLite always; PostgreSQL too when the setup started a server.
    fn all(test: &str) -> Vec<Store> {
        let mut stores = vec![Store::Sqlite];
        match std::env::var("TOLLGATE_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => stores.push(Store::Postgres(url)),
            _ => eprintln!("{test}: TOLLGATE_TEST_POSTGRES not set, PostgreSQL part skipped"),
        }
        stores
    }

    fn name(&self) -> &'static str {
        match self {
            Store::Sqlite => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }
}

/// A hub process in the server namespace.
struct Hub {
    config: PathBuf,
    log: String,
    url: String,
    port: u16,
    /// The SQLite file, for the tests that play a compromised hub's database.
    sqlite: Option<PathBuf>,
}

impl Hub {
    fn start(topo: &mut Topology, store: &Store, tag: &str) -> Hub {
        let database = match store {
            Store::Sqlite => None,
            Store::Postgres(url) => Some(fresh_postgres_database(url, tag)),
        };
        Hub::start_with(topo, database, tag, HUB_PORT, &[HUB_PORT])
    }

    /// A hub on `port` that tells gateways about the hubs on `ports` (all on the server's
    /// address); `database` None is a SQLite file of its own.
    fn start_with(
        topo: &mut Topology,
        database: Option<String>,
        tag: &str,
        port: u16,
        ports: &[u16],
    ) -> Hub {
        let dir = topo.scratch().join(format!("hub-{tag}"));
        std::fs::create_dir_all(&dir).expect("hub dir");
        let sqlite = database.is_none().then(|| dir.join("hub.db"));
        let database = database.unwrap_or_else(|| format!("sqlite://{}/hub.db", dir.display()));
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("\"https://{SERVER_IP4}:{p}\""))
            .collect();
        let config = dir.join("hub.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{SERVER_IP4}:{port}\"\nstate_dir = \"{}\"\ndatabase = \"{database}\"\n\
                 server_names = [\"{SERVER_IP4}\"]\npublic_urls = [{}]\n",
                dir.display(),
                urls.join(", ")
            ),
        )
        .expect("hub config");
        let hub = Hub {
            config,
            log: format!("hub-{tag}.log"),
            url: format!("https://{SERVER_IP4}:{port}"),
            port,
            sqlite,
        };
        hub.spawn(topo);
        hub
    }

    /// Runs SQL on this hub's SQLite file, as someone who took the hub's database would.
    fn sqlite(&self, sql: &str, params: &str) {
        let db = self.sqlite.as_ref().expect("a SQLite hub");
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3, sys, json\n\
                 c = sqlite3.connect(sys.argv[1])\n\
                 c.execute(sys.argv[2], [bytes.fromhex(p[2:]) if isinstance(p, str) and p.startswith('x:') else p for p in json.loads(sys.argv[3])])\n\
                 c.commit()\n",
            )
            .arg(db)
            .arg(sql)
            .arg(params)
            .output()
            .expect("python3");
        assert!(out.status.success(), "sqlite {sql}: {}", text(&out));
    }

    /// A stored bundle's signed body and signature, hex.
    fn stored_bundle(&self, revision: u64) -> (String, String) {
        let db = self.sqlite.as_ref().expect("a SQLite hub");
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3, sys\n\
                 r = sqlite3.connect(sys.argv[1]).execute('SELECT body, signature FROM bundles WHERE revision = ?', [int(sys.argv[2])]).fetchone()\n\
                 print(r[0].hex(), r[1].hex())\n",
            )
            .arg(db)
            .arg(revision.to_string())
            .output()
            .expect("python3");
        assert!(out.status.success(), "{}", text(&out));
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let (body, sig) = line.split_once(' ').expect("body and signature");
        (body.to_string(), sig.to_string())
    }

    /// Serves `body`/`signature` (hex) as bundle revision `revision` of every site, without
    /// the hub's signing: what a hub whose database was taken would hand out.
    fn plant_bundle(&self, revision: u64, body: &str, signature: &str) {
        self.sqlite(
            "INSERT INTO bundles (revision, site, published_at, policy_toml, body, signature) VALUES (?, NULL, 0, 'planted', ?, ?)",
            &format!("[{revision}, \"x:{body}\", \"x:{signature}\"]"),
        );
    }

    fn spawn(&self, topo: &mut Topology) {
        let server = topo.server.clone();
        topo.spawn(
            &server,
            &format!(
                "{} run --config {}",
                hub_bin().display(),
                self.config.display()
            ),
            &self.log,
        )
        .expect("hub");
        topo.wait_listen(&server, "tcp", self.port, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("the hub did not come up: {e}\n{}", topo.log(&self.log)));
    }

    fn kill9(&self, topo: &mut Topology) {
        topo.kill9(&format!("run --config {}", self.config.display()));
        let server = topo.server.clone();
        let gone = wait_for(Duration::from_secs(5), || {
            let out = topo.exec_any(&server, "ss -tln");
            (!String::from_utf8_lossy(&out.stdout).contains(&format!(":{} ", self.port)))
                .then_some(())
        });
        assert!(gone.is_some(), "the hub still listens after kill -9");
    }

    fn cli(&self, args: &[&str]) -> Output {
        std::process::Command::new(hub_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("tollgate-hub")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "tollgate-hub {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "tollgate-hub {args:?}: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn token(&self, site: &str) -> String {
        let v = self.json(&["token", "create", "--site", site]);
        v["token"].as_str().expect("token in the JSON").to_string()
    }

    fn publish(&self, topo: &Topology, toml: &str, site: Option<&str>) -> u64 {
        let file = topo
            .scratch()
            .join(format!("bundle-{}.toml", std::process::id()));
        std::fs::write(&file, toml).expect("bundle");
        let path = file.display().to_string();
        let mut args = vec!["publish", path.as_str()];
        if let Some(s) = site {
            args.extend(["--site", s]);
        }
        let v = self.json(&args);
        v["revision"]
            .as_u64()
            .unwrap_or_else(|| panic!("no revision in {v}"))
    }

    /// The fleet-wide flows the hub stored for an app.
    fn app_flows(&self, app: &str) -> u64 {
        self.app_count(app, "flows")
    }

    /// A fleet-wide count (`flows`, `blocked_flows`) the hub stored for an app.
    fn app_count(&self, app: &str, field: &str) -> u64 {
        let v = self.json(&["apps"]);
        v.as_array()
            .into_iter()
            .flatten()
            .find(|a| a["app_id"] == app || a["id"] == app)
            .and_then(|a| a[field].as_u64())
            .unwrap_or(0)
    }
}

/// A database of its own on the test server, so that runs never see each other's rows.
fn fresh_postgres_database(url: &str, tag: &str) -> String {
    let name = format!("tg_{}_{}", tag, std::process::id());
    let _ = sh(&format!(
        "psql '{url}' -qc 'DROP DATABASE IF EXISTS {name}'"
    ));
    sh(&format!("psql '{url}' -qc 'CREATE DATABASE {name}'")).expect("createdb");
    // Same server, other database: replace the path of the URL.
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let root = base.rsplit_once('/').map_or(base, |(r, _)| r);
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

fn enroll(topo: &Topology, daemon: &Daemon, url: &str, token: &str) -> Output {
    topo.exec_any(
        &topo.gateway,
        &format!(
            "{} enroll {url} {token} --config {}",
            tollgate_bin().display(),
            daemon.config.display()
        ),
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn curl_ok(topo: &Topology, host: &str) -> bool {
    topo.exec_any(
        &topo.client,
        &format!(
            "curl -sk --max-time 5 --resolve {host}:443:{SERVER_IP4} https://{host}/ -o /dev/null"
        ),
    )
    .status
    .success()
}

const GATEWAY: &str = "[hub]\nupload_interval_secs = 2\n";

/// Enrolls a gateway with a hub and starts it.
fn enrolled_gateway(topo: &mut Topology, hub: &Hub, site: &str) -> Daemon {
    enrolled_gateway_with(topo, hub, site, "")
}

/// As [`enrolled_gateway`], with more gateway config.
fn enrolled_gateway_with(topo: &mut Topology, hub: &Hub, site: &str, extra: &str) -> Daemon {
    let daemon = Daemon::prepare(topo, "enforce", &format!("{GATEWAY}{extra}")).expect("config");
    let token = hub.token(site);
    let out = enroll(topo, &daemon, &hub.url, &token);
    assert!(out.status.success(), "enroll: {}", text(&out));
    assert!(text(&out).contains("enrolled"), "{}", text(&out));
    // One time only.
    let again = enroll(topo, &daemon, &hub.url, &token);
    assert!(!again.status.success(), "a used token enrolled again");
    assert!(
        text(&again).to_lowercase().contains("used"),
        "the refusal does not say why: {}",
        text(&again)
    );
    daemon.spawn(topo).expect("daemon");
    daemon
}

#[test]
fn a_published_bundle_blocks_on_the_gateway_within_5s() {
    let test = "a_published_bundle_blocks_on_the_gateway_within_5s";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    for store in Store::all(test) {
        let mut topo = Topology::new("hb", 1500).expect("topology");
        let _origins = Origins::start(&mut topo, false).expect("origins");
        let hub = Hub::start(&mut topo, &store, "pub");
        let daemon = enrolled_gateway(&mut topo, &hub, "paris");
        let hub_status = wait_for(Duration::from_secs(10), || {
            let st = daemon.query("status").ok()?;
            (st["hub"]["connected"] == true).then_some(st)
        });
        assert!(
            hub_status.is_some(),
            "[{}] the gateway never reached the hub: {:#}\n{}",
            store.name(),
            daemon.query("status").unwrap_or_default(),
            topo.log(&daemon.log)
        );
        assert!(
            curl_ok(&topo, "www.dropbox.com"),
            "dropbox before the bundle"
        );

        // Another site's bundle does not reach this gateway.
        hub.publish(
            &topo,
            "[apps.slack]\ntag = \"unsanctioned\"\n",
            Some("lyon"),
        );
        let revision = hub.publish(
            &topo,
            "[apps.dropbox]\ntag = \"unsanctioned\"\n",
            Some("paris"),
        );
        let t = Instant::now();
        let blocked = wait_for(Duration::from_secs(5), || {
            (!curl_ok(&topo, "www.dropbox.com")).then_some(())
        });
        let took = t.elapsed();
        assert!(
            blocked.is_some(),
            "[{}] dropbox still works 5 s after the publish: {}",
            store.name(),
            topo.log(&daemon.log)
        );
        eprintln!("[{}] publish to block: {took:?}", store.name());
        assert!(
            curl_ok(&topo, "slack.com"),
            "the other site's bundle was applied here"
        );
        let st = daemon.query("status").expect("status");
        assert_eq!(st["hub"]["bundle_revision"], revision, "{st:#}");

        // The blocked tries reach the hub as blocked flows of the app (uploads every 2 s).
        let blocked_flows = wait_for(Duration::from_secs(15), || {
            let n = hub.app_count("dropbox", "blocked_flows");
            (n >= 1).then_some(n)
        });
        assert!(
            blocked_flows.is_some(),
            "[{}] no blocked dropbox flow reached the hub: {:#}",
            store.name(),
            hub.json(&["apps"])
        );
        assert!(
            blocked_flows.unwrap_or(0) <= hub.app_flows("dropbox"),
            "more blocked flows than flows: {:#}",
            hub.json(&["apps"])
        );

        // The hub sees the applied revision.
        let seen = wait_for(Duration::from_secs(10), || {
            let gws = hub.json(&["gateways"]);
            let gw = gws.as_array()?.first()?.clone();
            (gw["applied_revision"] == revision).then_some(gw)
        });
        assert!(seen.is_some(), "{:#}", hub.json(&["gateways"]));

        // A bundle that brings a custom app (a catalog addition) and tags it: applied live,
        // no restart, while the first bundle's block stays.
        assert!(
            curl_ok(&topo, "files.acme-intranet.example"),
            "the custom app's host before the bundle"
        );
        let revision = hub.publish(
            &topo,
            "[apps.dropbox]\ntag = \"unsanctioned\"\n\n\
             [apps.acme-files]\ntag = \"unsanctioned\"\n\n\
             [[custom_apps]]\nid = \"acme-files\"\nname = \"Acme Files\"\n\
             category = \"Cloud storage\"\ndomains = [\"*.acme-intranet.example\"]\n",
            Some("paris"),
        );
        let t = Instant::now();
        let blocked = wait_for(Duration::from_secs(5), || {
            (!curl_ok(&topo, "files.acme-intranet.example")).then_some(())
        });
        assert!(
            blocked.is_some(),
            "[{}] the bundle's custom app still works 5 s after the publish: {}",
            store.name(),
            topo.log(&daemon.log)
        );
        eprintln!(
            "[{}] publish of a custom app to block: {:?}",
            store.name(),
            t.elapsed()
        );
        assert!(!curl_ok(&topo, "www.dropbox.com"), "dropbox came back");
        let st = daemon.query("status").expect("status");
        assert_eq!(st["hub"]["bundle_revision"], revision, "{st:#}");

        // A restart keeps the bundle (verified again from disk) before the hub answers.
        hub.kill9(&mut topo);
        // SIGTERM, not `stop`: a restart keeps the pinned programs (and needs no hub).
        daemon.signal("TERM").expect("SIGTERM");
        let gone = wait_for(Duration::from_secs(10), || {
            daemon.query("status").is_err().then_some(())
        });
        assert!(gone.is_some(), "the daemon did not stop");
        let mut daemon = daemon;
        daemon.log = format!("{}-2", daemon.log);
        daemon.spawn(&mut topo).expect("restart");
        assert!(
            !curl_ok(&topo, "www.dropbox.com"),
            "the applied bundle was lost in a restart"
        );
        assert!(
            !curl_ok(&topo, "files.acme-intranet.example"),
            "the bundle's custom app was lost in a restart"
        );
        daemon.stop();
    }
}

/// A bundle carries an app discovery policy: the gateway judges its own day with it, tags the
/// new risky app unsanctioned (the kernel blocks it), and the alert comes up to the hub
/// through the spool, where an admin resolves it.
#[test]
fn a_bundled_app_discovery_policy_blocks_and_its_alert_reaches_the_hub() {
    let test = "a_bundled_app_discovery_policy_blocks_and_its_alert_reaches_the_hub";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    for store in Store::all(test) {
        let mut topo = Topology::new("hd", 1500).expect("topology");
        let _origins = Origins::start(&mut topo, false).expect("origins");
        let hub = Hub::start(&mut topo, &store, "disc");
        let daemon = Daemon::prepare(
            &mut topo,
            "enforce",
            &format!("{GATEWAY}\n[discovery]\ninterval_secs = 1\n"),
        )
        .expect("config");
        let out = enroll(&topo, &daemon, &hub.url, &hub.token("paris"));
        assert!(out.status.success(), "enroll: {}", text(&out));
        daemon.spawn(&mut topo).expect("daemon");
        let revision = hub.publish(
            &topo,
            "[apps.zoom]\nrisk_score = 3.0\n\n\
             [[app_discovery_policies]]\nname = \"new risky app\"\nseverity = \"high\"\n\
             new_app = true\nrisk_below = 6\ntag = \"unsanctioned\"\n\
             daily = { transactions_above = 1 }\n",
            Some("paris"),
        );
        let applied = wait_for(Duration::from_secs(10), || {
            let st = daemon.query("status").ok()?;
            (st["hub"]["bundle_revision"] == revision).then_some(())
        });
        assert!(
            applied.is_some(),
            "[{}] bundle not applied: {}",
            store.name(),
            topo.log(&daemon.log)
        );
        let blocked = wait_for(Duration::from_secs(15), || {
            (!curl_ok(&topo, "zoom.us")).then_some(())
        });
        assert!(
            blocked.is_some(),
            "[{}] zoom never blocked: {}",
            store.name(),
            topo.log(&daemon.log)
        );
        assert!(curl_ok(&topo, "slack.com"), "slack is not risky");
        let alert = wait_for(Duration::from_secs(15), || {
            hub.json(&["alerts"])
                .as_array()?
                .iter()
                .find(|a| a["policy"] == "new risky app")
                .cloned()
        });
        let alert = alert.unwrap_or_else(|| {
            panic!(
                "[{}] no alert at the hub: {:#}",
                store.name(),
                hub.json(&["alerts"])
            )
        });
        assert_eq!(alert["entities"]["app"], "zoom", "{alert:#}");
        assert_eq!(alert["severity"], "high", "{alert:#}");
        assert_eq!(alert["status"], "open", "{alert:#}");
        assert_ne!(alert["scope"], "hub", "{alert:#}");
        let reference = alert["ref"].as_str().expect("ref").to_string();
        let out = hub.cli(&[
            "alerts",
            "resolve",
            &reference,
            "--comment",
            "blocked by policy",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let after = hub.json(&["alerts", "show", &reference]);
        assert_eq!(after["status"], "resolved", "{after:#}");
        assert_eq!(after["gateway_status"], "open", "{after:#}");
        daemon.stop();
    }
}

/// The web console in real headless Chromium over WebDriver: an admin logs in, looks at every
/// page (screenshots kept in the scratch dir; no console error; nothing scrolls sideways on a
/// phone), finds zoom in the catalog and unsanctions it, and the enrolled gateway blocks zoom
/// from the bundle that click published.
#[test]
fn the_console_unsanctions_an_app_and_the_gateway_blocks_it() {
    let test = "the_console_unsanctions_an_app_and_the_gateway_blocks_it";
    if !ready(test) || !tollgate_e2e::require_command(test, "chromedriver") {
        return;
    }
    let _serial = serial();
    let store = Store::all(test).into_iter().next().expect("a store");
    let mut topo = Topology::new("hc", 1500).expect("topology");
    let _origins = Origins::start(&mut topo, false).expect("origins");
    let hub = Hub::start(&mut topo, &store, "console");
    let daemon = enrolled_gateway(&mut topo, &hub, "paris");
    let password_file = topo.scratch().join("console-password");
    std::fs::write(&password_file, "correct horse battery staple\n").unwrap();
    let out = hub.cli(&[
        "user",
        "add",
        "admin",
        "--role",
        "admin",
        "--password-file",
        &password_file.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // Some discovery for the pages to show: zoom used, uploaded every 2 s.
    for _ in 0..3 {
        assert!(curl_ok(&topo, "zoom.us"), "zoom before the console");
    }
    let uploaded = wait_for(Duration::from_secs(20), || {
        (hub.app_count("zoom", "flows") >= 3).then_some(())
    });
    assert!(uploaded.is_some(), "{:#}", hub.json(&["apps"]));
    // Screenshots go to the scratch dir, which the topology removes; set
    // TOLLGATE_CONSOLE_SHOTS to keep them.
    let shots = std::env::var_os("TOLLGATE_CONSOLE_SHOTS")
        .map_or_else(|| topo.scratch().join("console-shots"), PathBuf::from);
    let client = topo.client.clone();
    let out = topo.exec_any(
        &client,
        &format!(
            "python3 {} --hub {} --user admin --password 'correct horse battery staple' \
             --app zoom --query zoom --out {}",
            fixture("console_webdriver.py").display(),
            hub.url,
            shots.display()
        ),
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", text(&out)));
    eprintln!("console screenshots in {}", shots.display());
    assert!(out.status.success(), "{report:#}\n{}", text(&out));
    assert_eq!(report["tag"], "unsanctioned", "{report:#}");
    assert_eq!(
        report["chart"], "canvas",
        "the traffic chart was not drawn: {report:#}"
    );
    assert_eq!(
        report["pages"].as_array().map(Vec::len),
        Some(14),
        "{report:#}"
    );
    // The click published an every-site bundle; the gateway applies it and blocks zoom.
    let blocked = wait_for(Duration::from_secs(10), || {
        (!curl_ok(&topo, "zoom.us")).then_some(())
    });
    assert!(
        blocked.is_some(),
        "zoom still works: {}",
        topo.log(&daemon.log)
    );
    assert!(curl_ok(&topo, "slack.com"), "only zoom was unsanctioned");
    let audit = hub.json(&["audit"]).to_string();
    assert!(
        audit.contains("console_publish") && audit.contains("admin tagged zoom unsanctioned"),
        "{audit}"
    );
    daemon.stop();
}

/// A connector configured centrally and run by the gateway (`run_on = "gateway"`), for an
/// Okta only the branch reaches (a local HTTPS server in the gateway's namespace that plays
/// the System Log API): the bundle starts it live, its records reach the hub through the
/// spool under `GATEWAY/okta-branch`, and a kill -9 of the daemon between pages loses and
/// doubles nothing at the hub.
#[test]
fn a_gateway_run_connector_reaches_the_hub_once_through_kill9() {
    let test = "a_gateway_run_connector_reaches_the_hub_once_through_kill9";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let store = Store::all(test).into_iter().next().expect("a store");
    let mut topo = Topology::new("hk", 1500).expect("topology");
    let hub = Hub::start(&mut topo, &store, "conn");
    let dir = topo.scratch().to_path_buf();
    // The branch's Okta: a certificate from its own CA, which the daemon trusts through
    // SSL_CERT_FILE (as an admin would add a private CA to the system store).
    let (ca, cert, key) = (
        dir.join("okta-ca.pem"),
        dir.join("okta.pem"),
        dir.join("okta.key"),
    );
    let d = dir.display();
    sh(&format!(
        "cd {d} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
         -subj /CN=branch-ca -keyout okta-ca.key -out okta-ca.pem 2>/dev/null && \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=okta.branch \
         -keyout okta.key -out okta.csr 2>/dev/null && \
         printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=critical,CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > okta.ext && \
         openssl x509 -req -in okta.csr -CA okta-ca.pem -CAkey okta-ca.key -CAcreateserial -days 2 \
         -extfile okta.ext -out okta.pem 2>/dev/null"
    ))
    .expect("certificates");
    let token = "branch-okta-SSWS-token-1f2e";
    let token_file = dir.join("okta.token");
    std::fs::write(&token_file, token).unwrap();
    let g = topo.gateway.clone();
    topo.spawn(
        &g,
        &format!(
            "python3 {} --port 8444 --cert {} --key {} --token {token} --events 120 --page 20 --delay 0.6",
            fixture("okta_logs.py").display(),
            cert.display(),
            key.display()
        ),
        "okta.log",
    )
    .unwrap();
    topo.wait_listen(&g, "tcp", 8444, Duration::from_secs(15))
        .expect("the Okta server listens");
    let daemon = Daemon::prepare(&mut topo, "monitor", GATEWAY).expect("config");
    let out = enroll(&topo, &daemon, &hub.url, &hub.token("branch"));
    assert!(out.status.success(), "enroll: {}", text(&out));
    let env = format!("SSL_CERT_FILE={}", ca.display());
    daemon.spawn_env(&mut topo, &env, "").expect("daemon");
    let gateway_id = wait_for(Duration::from_secs(10), || {
        let st = daemon.query("status").ok()?;
        st["hub"]["gateway_id"].as_str().map(str::to_string)
    })
    .expect("enrolled");
    hub.publish(
        &topo,
        &format!(
            "[[connectors]]\nkind = \"okta\"\nname = \"okta-branch\"\nbase_url = \"https://127.0.0.1:8444\"\n\
             token_file = \"{}\"\npoll_interval_secs = 1\nrun_on = \"gateway\"\n",
            token_file.display()
        ),
        Some("branch"),
    );
    let source = format!("{gateway_id}/okta-branch");
    let stored = |hub: &Hub| -> Vec<String> {
        hub.json(&["activity", "--source", &source, "--limit", "1000"])
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["vendor_id"].as_str().map(str::to_string))
            .collect()
    };
    // Some pages in, the daemon is killed between two pages, and started again.
    let some = wait_for(Duration::from_secs(30), || {
        let n = stored(&hub).len();
        (n >= 20).then_some(n)
    });
    assert!(
        some.is_some(),
        "nothing reached the hub: {:#}\n{}\n{}",
        daemon
            .query("status")
            .map(|s| s["connectors"].clone())
            .unwrap_or_default(),
        topo.log(&daemon.log),
        topo.log("okta.log")
    );
    topo.kill9(&format!("run --config {}", daemon.config.display()));
    let mut daemon = daemon;
    daemon.log = format!("{}-2", daemon.log);
    daemon.spawn_env(&mut topo, &env, "").expect("restart");
    let all = wait_for(Duration::from_secs(60), || {
        let ids = stored(&hub);
        (ids.len() >= 120).then_some(ids)
    })
    .unwrap_or_else(|| {
        panic!(
            "{} of 120 at the hub: {}",
            stored(&hub).len(),
            topo.log(&daemon.log)
        )
    });
    let unique: std::collections::BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 120, "doubled at the hub");
    assert_eq!(unique.len(), 120);
    // The gateway's own policies saw them too: they are in its activity log.
    let acts = daemon
        .cli(&["activity", "--json", "--app", "okta", "--limit", "1000"])
        .unwrap();
    let acts: Value = serde_json::from_slice(&acts.stdout).unwrap_or_default();
    let local = acts.as_array().map_or(0, |l| {
        l.iter().filter(|a| a["connector"] == "okta-branch").count()
    });
    assert!(
        local >= 100,
        "{local} connector records in the gateway's log"
    );
    let st = daemon.query("status").expect("status");
    assert!(
        st["connectors"]["okta-branch"].is_object(),
        "{:#}",
        st["connectors"]
    );
    daemon.stop();
}

#[test]
fn a_revoked_gateway_and_bad_tokens_are_refused() {
    let test = "a_revoked_gateway_and_bad_tokens_are_refused";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("hr", 1500).expect("topology");
    let _origins = Origins::start(&mut topo, false).expect("origins");
    let hub = Hub::start(&mut topo, &Store::Sqlite, "rev");
    let daemon = Daemon::prepare(&mut topo, "enforce", GATEWAY).expect("config");

    // A token of the right shape with a secret the hub never issued.
    let real = hub.token("paris");
    let forged = format!("tg1-{}{}", "0".repeat(64), &real[4 + 64..]);
    let out = enroll(&topo, &daemon, &hub.url, &forged);
    assert!(!out.status.success(), "a forged token enrolled");
    // A token whose CA pin is not this hub's: the gateway refuses the hub itself.
    let wrong_pin = format!("{}{}", &real[..4 + 64 + 1], "ab".repeat(32));
    let out = enroll(&topo, &daemon, &hub.url, &wrong_pin);
    assert!(
        !out.status.success(),
        "enrolled with a hub whose CA is not pinned"
    );
    assert!(
        text(&out).to_lowercase().contains("pin"),
        "the refusal does not name the pin: {}",
        text(&out)
    );
    // An expired token.
    let v = hub.json(&["token", "create", "--site", "paris", "--ttl", "1s"]);
    std::thread::sleep(Duration::from_secs(2));
    let out = enroll(&topo, &daemon, &hub.url, v["token"].as_str().unwrap());
    assert!(!out.status.success(), "an expired token enrolled");
    assert!(
        text(&out).to_lowercase().contains("expired"),
        "{}",
        text(&out)
    );

    // The real one works; revoked, the gateway's polls are refused.
    let out = enroll(&topo, &daemon, &hub.url, &real);
    assert!(out.status.success(), "{}", text(&out));
    daemon.spawn(&mut topo).expect("daemon");
    let connected = wait_for(Duration::from_secs(10), || {
        (daemon.query("status").ok()?["hub"]["connected"] == true).then_some(())
    });
    assert!(connected.is_some(), "{}", topo.log(&daemon.log));
    let gws = hub.json(&["gateways"]);
    let id = gws[0]["id"].as_str().expect("gateway id").to_string();
    let out = hub.cli(&["gateway", "revoke", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let revision = hub.publish(&topo, "[apps.dropbox]\ntag = \"unsanctioned\"\n", None);
    let refused = wait_for(Duration::from_secs(40), || {
        let st = daemon.query("status").ok()?;
        let err = st["hub"]["last_error"]
            .as_str()
            .unwrap_or("")
            .to_lowercase();
        (st["hub"]["connected"] == false && err.contains("revoked")).then_some(st)
    });
    assert!(
        refused.is_some(),
        "a revoked gateway still talks to the hub: {:#}",
        daemon.query("status").unwrap_or_default()
    );
    let st = daemon.query("status").expect("status");
    assert_ne!(
        st["hub"]["bundle_revision"], revision,
        "a revoked gateway got a bundle"
    );
    assert!(curl_ok(&topo, "www.dropbox.com"));
    daemon.stop();
}

#[test]
fn discovery_reaches_the_hub_once_through_outages_and_kill9() {
    let test = "discovery_reaches_the_hub_once_through_outages_and_kill9";
    if !ready(test) {
        return;
    }
    let outage_secs = Duration::from_secs(
        std::env::var("TOLLGATE_TEST_HUB_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let _serial = serial();
    for store in Store::all(test) {
        let mut topo = Topology::new("hd", 1500).expect("topology");
        let _origins = Origins::start(&mut topo, false).expect("origins");
        let hub = Hub::start(&mut topo, &store, "disc");
        let mut daemon = enrolled_gateway(&mut topo, &hub, "paris");
        let mut made = 0u64;
        let mut flows = |topo: &Topology, n: u64| {
            for _ in 0..n {
                assert!(curl_ok(topo, "github.com"));
            }
            made += n;
        };
        flows(&topo, 5);
        // The hub goes away; traffic goes on and is spooled.
        hub.kill9(&mut topo);
        flows(&topo, 7);
        let spooled = wait_for(Duration::from_secs(15), || {
            let st = daemon.query("status").ok()?;
            (st["hub"]["spool_records"].as_u64()? > 0).then_some(())
        });
        assert!(
            spooled.is_some(),
            "[{}] nothing spooled while the hub was away: {:#}",
            store.name(),
            daemon.query("status").unwrap_or_default()
        );
        // A longer outage under traffic when asked (the 10 minutes: 600).
        let outage = Instant::now();
        while outage.elapsed() < outage_secs {
            flows(&topo, 1);
            std::thread::sleep(Duration::from_secs(5));
        }
        // The gateway dies too, with records in its spool.
        let gw = topo.gateway.clone();
        topo.kill9(&format!("--netns {gw}"));
        daemon.log = format!("{}-2", daemon.log);
        daemon.spawn(&mut topo).expect("restart");
        flows(&topo, 3);
        hub.spawn(&mut topo);

        // Everything the gateway counted reaches the hub, once: every flow we made.
        let total = made;
        let got = wait_for(Duration::from_secs(60), || {
            let n = hub.app_flows("github");
            (n >= total).then_some(n)
        });
        // Let a few more upload intervals pass: a doubled batch would show now.
        std::thread::sleep(Duration::from_secs(5));
        let settled = hub.app_flows("github");
        assert_eq!(
            (got, settled),
            (Some(total), total),
            "[{}] the hub stored {settled} github flows, the gateway made {total}: {:#}",
            store.name(),
            hub.json(&["apps"])
        );
        let st = daemon.query("status").expect("status");
        assert_eq!(st["hub"]["spool_records"], 0, "{st:#}");
        daemon.stop();
    }
}

/// What the hub recorded of this gateway's last bundle report: (revision, outcome, reason).
fn last_report(hub: &Hub) -> (u64, String, String) {
    let gws = hub.json(&["gateways"]);
    let gw = &gws[0];
    (
        gw["report_revision"].as_u64().unwrap_or(0),
        gw["report_outcome"].as_str().unwrap_or("").to_string(),
        gw["report_reason"].as_str().unwrap_or("").to_string(),
    )
}

/// A hub whose database someone else writes serves bundles the gateway must not trust: one
/// signed by another hub's key, a truncated one, one with a flipped byte, and a replay of an
/// older signed revision that would lift a block. Each is refused, the hub is told why, and
/// the policy stays.
#[test]
fn bundles_that_do_not_verify_are_refused_and_the_policy_stays() {
    let test = "bundles_that_do_not_verify_are_refused_and_the_policy_stays";
    if !ready(test) {
        return;
    }
    if !std::process::Command::new("python3")
        .args(["-c", "import sqlite3"])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("SKIP {test}: python3 with sqlite3 is missing");
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("hx", 1500).expect("topology");
    let _origins = Origins::start(&mut topo, false).expect("origins");
    let hub = Hub::start(&mut topo, &Store::Sqlite, "hostile");
    let daemon = enrolled_gateway(&mut topo, &hub, "paris");
    let rev1 = hub.publish(&topo, "[apps.dropbox]\ntag = \"unsanctioned\"\n", None);
    let rev2 = hub.publish(
        &topo,
        "[apps.dropbox]\ntag = \"unsanctioned\"\n\n[apps.slack]\ntag = \"unsanctioned\"\n",
        None,
    );
    let applied = wait_for(Duration::from_secs(10), || {
        let st = daemon.query("status").ok()?;
        (st["hub"]["bundle_revision"] == rev2).then_some(())
    });
    assert!(applied.is_some(), "{}", topo.log(&daemon.log));
    assert!(!curl_ok(&topo, "www.dropbox.com") && !curl_ok(&topo, "slack.com"));

    // Another hub (its own database, so its own signing key) signs a bundle that would
    // allow everything, under a revision far above ours.
    let other = Hub::start_with(&mut topo, None, "other", HUB_PORT + 1, &[HUB_PORT + 1]);
    let mut other_rev = 0;
    for _ in 0..5 {
        other_rev = other.publish(&topo, "[apps.github]\ntag = \"monitored\"\n", None);
    }
    let (foreign_body, foreign_sig) = other.stored_bundle(other_rev);
    let (body1, sig1) = hub.stored_bundle(rev1);
    let (body2, sig2) = hub.stored_bundle(rev2);
    let bad_signature = {
        let mut sig = sig2.clone();
        let first = sig.remove(0);
        sig.insert(0, if first == '0' { '1' } else { '0' });
        sig
    };
    let truncated = body2[..body2.len() / 2].to_string();
    // What the gateway tells the hub for each: the revision the bundle claims (0 when it
    // does not even decode) and why.
    let cases: [(&str, String, String, String); 4] = [
        (
            "signed by another hub's key",
            foreign_body,
            foreign_sig,
            format!("revision {other_rev}: bundle signature does not verify"),
        ),
        (
            "truncated",
            truncated,
            sig2.clone(),
            "revision 0: bundle signature does not verify".into(),
        ),
        (
            "a damaged signature",
            body2,
            bad_signature,
            format!("revision {rev2}: bundle signature does not verify"),
        ),
        (
            "a replay of revision 1",
            body1,
            sig1,
            format!("revision {rev1}: bundle revision {rev1} is not newer"),
        ),
    ];
    for (i, (what, body, sig, why)) in cases.into_iter().enumerate() {
        // One planted bundle at a time, under a revision above every real one.
        hub.sqlite("DELETE FROM bundles WHERE revision >= 100", "[]");
        hub.plant_bundle(100 + i as u64, &body, &sig);
        let report = wait_for(Duration::from_secs(15), || {
            let (_, outcome, reason) = last_report(&hub);
            (outcome == "refused" && reason.contains(&why)).then_some(reason)
        });
        assert!(
            report.is_some(),
            "{what}: the hub never heard the refusal ({why}): {:#}\n{}",
            hub.json(&["gateways"]),
            topo.log(&daemon.log)
        );
        let st = daemon.query("status").expect("status");
        assert_eq!(st["hub"]["bundle_revision"], rev2, "{what}: {st:#}");
        assert!(
            st["hub"]["bundle_refused"]
                .as_str()
                .is_some_and(|r| r.contains(&why)),
            "{what}: status does not show the refusal: {st:#}"
        );
        assert!(
            !curl_ok(&topo, "www.dropbox.com") && !curl_ok(&topo, "slack.com"),
            "{what}: the policy changed"
        );
    }
    daemon.stop();
}

/// Two hub processes on one PostgreSQL database: a gateway enrolled through the first learns
/// both addresses, and when the first dies it takes its next bundle from the second.
#[test]
fn a_gateway_fails_over_between_two_hubs_on_one_postgres() {
    let test = "a_gateway_fails_over_between_two_hubs_on_one_postgres";
    if !ready(test) {
        return;
    }
    let Some(Store::Postgres(url)) = Store::all(test).into_iter().nth(1) else {
        eprintln!("SKIP {test}: needs TOLLGATE_TEST_POSTGRES");
        return;
    };
    let _serial = serial();
    let mut topo = Topology::new("h2", 1500).expect("topology");
    let _origins = Origins::start(&mut topo, false).expect("origins");
    let database = fresh_postgres_database(&url, "pair");
    let ports = [HUB_PORT, HUB_PORT + 1];
    let first = Hub::start_with(&mut topo, Some(database.clone()), "first", ports[0], &ports);
    let second = Hub::start_with(&mut topo, Some(database), "second", ports[1], &ports);
    let daemon = enrolled_gateway(&mut topo, &first, "paris");
    let connected = wait_for(Duration::from_secs(10), || {
        let st = daemon.query("status").ok()?;
        (st["hub"]["connected"] == true).then_some(st)
    });
    assert!(connected.is_some(), "{}", topo.log(&daemon.log));

    first.kill9(&mut topo);
    // Published through the second hub's CLI: the same database, so the same signing key.
    let revision = second.publish(&topo, "[apps.dropbox]\ntag = \"unsanctioned\"\n", None);
    let blocked = wait_for(Duration::from_secs(30), || {
        (!curl_ok(&topo, "www.dropbox.com")).then_some(())
    });
    assert!(
        blocked.is_some(),
        "the gateway did not take the bundle from the second hub: {:#}\n{}",
        daemon.query("status").unwrap_or_default(),
        topo.log(&daemon.log)
    );
    let st = daemon.query("status").expect("status");
    assert_eq!(st["hub"]["bundle_revision"], revision, "{st:#}");
    assert!(
        st["hub"]["url"]
            .as_str()
            .is_some_and(|u| u.ends_with(&format!(":{}", ports[1]))),
        "status does not name the hub it talks to: {st:#}"
    );
    daemon.stop();
}

/// Other devices' logs collected by the gateway (`[collect]`, a watched directory) go up to
/// the hub like its own discovery: every proxy log line is one flow of its app at the hub,
/// and a later upload interval does not count them again.
#[test]
fn collected_log_records_reach_the_hub() {
    let test = "collected_log_records_reach_the_hub";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("hc", 1500).expect("topology");
    let hub = Hub::start(&mut topo, &Store::Sqlite, "col");
    let logs = topo.scratch().join("collected");
    std::fs::create_dir_all(&logs).unwrap();
    let daemon = enrolled_gateway_with(
        &mut topo,
        &hub,
        "paris",
        &format!(
            "[collect]\npoll_interval_ms = 100\n[[collect.watch]]\ndir = {logs:?}\n\
             format = \"squid-native\"\n"
        ),
    );
    // 25 Dropbox and 5 Slack transactions; same client, server and second for many of
    // them, which are still separate transactions.
    let mut text = String::new();
    for i in 0..30 {
        let host = if i < 25 {
            "www.dropbox.com"
        } else {
            "slack.com"
        };
        text.push_str(&format!(
            "1700000000.{:03} 5 10.9.0.7 TCP_MISS/200 {} CONNECT {host}:443 alice HIER_DIRECT/198.51.100.9 -\n",
            i % 3,
            1000 + i
        ));
    }
    std::fs::write(logs.join("proxy.log"), text).unwrap();
    let got = wait_for(Duration::from_secs(40), || {
        let (d, s) = (hub.app_flows("dropbox"), hub.app_flows("slack"));
        (d >= 25 && s >= 5).then_some((d, s))
    });
    assert_eq!(
        got,
        Some((25, 5)),
        "hub: dropbox {} slack {}\n{}",
        hub.app_flows("dropbox"),
        hub.app_flows("slack"),
        topo.log(&daemon.log)
    );
    // Two more upload intervals: nothing counted twice.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!((hub.app_flows("dropbox"), hub.app_flows("slack")), (25, 5));
    daemon.stop();
}
