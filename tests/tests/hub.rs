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
use tollgate_e2e::servers::{Daemon, Origins};
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
}

impl Hub {
    fn start(topo: &mut Topology, store: &Store, tag: &str) -> Hub {
        let dir = topo.scratch().join(format!("hub-{tag}"));
        std::fs::create_dir_all(&dir).expect("hub dir");
        let database = match store {
            Store::Sqlite => format!("sqlite://{}/hub.db", dir.display()),
            Store::Postgres(url) => fresh_postgres_database(url, tag),
        };
        let config = dir.join("hub.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{SERVER_IP4}:{HUB_PORT}\"\nstate_dir = \"{}\"\ndatabase = \"{database}\"\n\
                 server_names = [\"{SERVER_IP4}\"]\npublic_urls = [\"https://{SERVER_IP4}:{HUB_PORT}\"]\n",
                dir.display()
            ),
        )
        .expect("hub config");
        let hub = Hub {
            config,
            log: format!("hub-{tag}.log"),
            url: format!("https://{SERVER_IP4}:{HUB_PORT}"),
        };
        hub.spawn(topo);
        hub
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
        topo.wait_listen(&server, "tcp", HUB_PORT, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("the hub did not come up: {e}\n{}", topo.log(&self.log)));
    }

    fn kill9(&self, topo: &mut Topology) {
        topo.kill9(&format!("run --config {}", self.config.display()));
        let server = topo.server.clone();
        let gone = wait_for(Duration::from_secs(5), || {
            let out = topo.exec_any(&server, "ss -tln");
            (!String::from_utf8_lossy(&out.stdout).contains(&format!(":{HUB_PORT} "))).then_some(())
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
        let v = self.json(&["apps"]);
        v.as_array()
            .into_iter()
            .flatten()
            .find(|a| a["app_id"] == app || a["id"] == app)
            .and_then(|a| a["flows"].as_u64())
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
    let daemon = Daemon::prepare(topo, "enforce", GATEWAY).expect("config");
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

        // The hub sees the applied revision.
        let seen = wait_for(Duration::from_secs(10), || {
            let gws = hub.json(&["gateways"]);
            let gw = gws.as_array()?.first()?.clone();
            (gw["applied_revision"] == revision).then_some(gw)
        });
        assert!(seen.is_some(), "{:#}", hub.json(&["gateways"]));

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
        daemon.stop();
    }
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
    let _serial = serial();
    for store in Store::all(test) {
        let mut topo = Topology::new("hd", 1500).expect("topology");
        let _origins = Origins::start(&mut topo, false).expect("origins");
        let hub = Hub::start(&mut topo, &store, "disc");
        let mut daemon = enrolled_gateway(&mut topo, &hub, "paris");
        let flows = |topo: &Topology, n: usize| {
            for _ in 0..n {
                assert!(curl_ok(topo, "github.com"));
            }
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
        // The gateway dies too, with records in its spool.
        let gw = topo.gateway.clone();
        topo.kill9(&format!("--netns {gw}"));
        daemon.log = format!("{}-2", daemon.log);
        daemon.spawn(&mut topo).expect("restart");
        flows(&topo, 3);
        hub.spawn(&mut topo);

        // Everything the gateway counted reaches the hub, once: the gateway's own count
        // of github flows (since its first start) is what the hub stores. The restarted
        // daemon counts flows since its restart, so compare the 15 we made.
        let total = 15;
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
