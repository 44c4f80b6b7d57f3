//! End to end: a real Prometheus (Debian's `prometheus`) scrapes the gateway's and the hub's
//! `/metrics` every second, and its HTTP API shows the scrape succeeded (`up`,
//! `tollgate_build_info`) and counters moving after traffic. A hostile client (connections
//! that trickle their headers, a 1 MiB header) neither stalls the daemon nor stops the
//! scrapes once it is gone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_e2e::servers::{Daemon, Origins};
use tollgate_e2e::{GW_C_IP4, SERVER_IP4, Topology, serial, tollgate_bin, wait_for};

const GATEWAY_METRICS: u16 = 9464;
const HUB_METRICS: u16 = 9465;
const HUB_PORT: u16 = 9443;
const PROM_PORT: u16 = 9091;

fn ready(test: &str) -> bool {
    tollgate_e2e::ready(
        test,
        &[
            "prometheus",
            "nginx",
            "dnsmasq",
            "curl",
            "openssl",
            "python3",
        ],
        &[],
    )
}

/// A Prometheus in `ns` scraping `targets` (job name, address) every second.
struct Prometheus {
    ns: String,
    log: String,
}

impl Prometheus {
    fn start(topo: &mut Topology, ns: &str, targets: &[(&str, String)]) -> Prometheus {
        let dir = topo.scratch().join("prometheus");
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let mut cfg = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n",
        );
        for (job, addr) in targets {
            cfg.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, cfg).expect("prometheus.yml");
        let log = "prometheus.log".to_string();
        topo.spawn(
            ns,
            &format!(
                "prometheus --config.file={} --storage.tsdb.path={} \
                 --web.listen-address=127.0.0.1:{PROM_PORT}",
                file.display(),
                dir.join("data").display()
            ),
            &log,
        )
        .expect("prometheus");
        topo.wait_listen(ns, "tcp", PROM_PORT, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("prometheus did not come up: {e}\n{}", topo.log(&log)));
        Prometheus {
            ns: ns.to_string(),
            log,
        }
    }

    /// The samples of an instant query: (labels, value).
    fn query(&self, topo: &Topology, q: &str) -> Vec<(Value, f64)> {
        let out = topo.exec_any(
            &self.ns,
            &format!(
                "curl -s -G --max-time 5 http://127.0.0.1:{PROM_PORT}/api/v1/query \
                 --data-urlencode 'query={q}'"
            ),
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if v["status"] != "success" {
            return Vec::new();
        }
        v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let value = s["value"][1].as_str()?.parse::<f64>().ok()?;
                Some((s["metric"].clone(), value))
            })
            .collect()
    }

    /// The one value of a query, once it has one that `ok` accepts.
    fn wait_value(
        &self,
        topo: &Topology,
        q: &str,
        timeout: Duration,
        ok: impl Fn(f64) -> bool,
    ) -> Option<f64> {
        wait_for(timeout, || {
            let r = self.query(topo, q);
            r.first().map(|(_, v)| *v).filter(|v| ok(*v))
        })
    }
}

/// TLS flows from the client through the gateway.
fn traffic(topo: &Topology, n: usize) {
    for host in ["www.dropbox.com", "slack.com", "github.com"]
        .iter()
        .cycle()
        .take(n)
    {
        let _ = topo.exec_any(
            &topo.client,
            &format!(
                "curl -sk --max-time 5 --resolve {host}:443:{SERVER_IP4} https://{host}/ -o /dev/null"
            ),
        );
    }
}

/// Trickles request headers on `conns` connections for `secs` seconds and sends one 1 MiB
/// header, from the client namespace; prints what the server did with the big one.
const HOSTILE: &str = r#"
import socket, sys, time
host, port, conns, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
big = socket.create_connection((host, port), timeout=5)
try:
    big.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (1 << 20) + b"\r\n\r\n")
    answer = big.recv(64)
except OSError as e:
    answer = repr(e).encode()
print("big:", answer[:40])
slow, opened, cut = [], 0, 0
end = time.time() + secs
while time.time() < end:
    while len(slow) < conns:
        try:
            s = socket.create_connection((host, port), timeout=1)
            s.sendall(b"GET /metrics HTTP/1.1\r\nx-slow: ")
            slow.append(s); opened += 1
        except OSError:
            break
    time.sleep(0.2)
    alive = []
    for s in slow:
        try:
            s.sendall(b"a"); alive.append(s)
        except OSError:
            cut += 1
    slow = alive
print("opened", opened, "cut", cut)
"#;

#[test]
fn prometheus_scrapes_the_gateway_and_its_counters_move() {
    let test = "prometheus_scrapes_the_gateway_and_its_counters_move";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("pm", 1500).expect("topology");
    let _origins = Origins::start(&mut topo, false).expect("origins");
    let daemon = Daemon::start(
        &mut topo,
        "monitor",
        &format!("[metrics]\nlisten = \"{GW_C_IP4}:{GATEWAY_METRICS}\"\n"),
    )
    .expect("daemon");
    let gw = topo.gateway.clone();
    let prom = Prometheus::start(
        &mut topo,
        &gw,
        &[("gateway", format!("{GW_C_IP4}:{GATEWAY_METRICS}"))],
    );

    let up = prom.wait_value(&topo, "up{job=\"gateway\"}", Duration::from_secs(30), |v| {
        v == 1.0
    });
    assert_eq!(
        up,
        Some(1.0),
        "prometheus never scraped the gateway: {:?}\n{}",
        prom.query(&topo, "up"),
        topo.log(&prom.log)
    );
    let info = prom.query(&topo, "tollgate_build_info");
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0].1, 1.0);
    assert_eq!(info[0].0["version"], env!("CARGO_PKG_VERSION"));
    let scrape = prom.query(&topo, "scrape_duration_seconds{job=\"gateway\"}");
    let samples = prom.query(&topo, "scrape_samples_scraped{job=\"gateway\"}");
    eprintln!("{test}: scrape_duration_seconds {scrape:?}, samples {samples:?}");

    // Traffic: the events handled and the flows seen go up in Prometheus.
    let before = prom
        .query(&topo, "tollgate_events_total")
        .first()
        .map_or(0.0, |s| s.1);
    traffic(&topo, 6);
    let status = daemon.query("status").expect("status");
    let events = status["events"].as_u64().expect("events in status");
    assert!(events as f64 > before, "no event counted: {status}");
    let after = prom.wait_value(
        &topo,
        "tollgate_events_total",
        Duration::from_secs(15),
        |v| v >= events as f64,
    );
    assert!(
        after.is_some(),
        "prometheus did not see the events counter reach {events} (before {before}): {:?}",
        prom.query(&topo, "tollgate_events_total")
    );
    let packets = prom.wait_value(
        &topo,
        "tollgate_packets_total",
        Duration::from_secs(5),
        |v| v > 0.0,
    );
    assert!(packets.is_some(), "no packets counted");

    // A hostile client: 32 connections trickling headers (twice the listener's cap) for 6 s
    // and a 1 MiB header. The daemon answers `status` at once meanwhile.
    let script = topo.scratch().join("hostile.py");
    std::fs::write(&script, HOSTILE).expect("script");
    let hostile = std::thread::spawn({
        let client = topo.client.clone();
        let script = script.clone();
        move || {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &client, "python3"])
                .arg(&script)
                .args([GW_C_IP4, &GATEWAY_METRICS.to_string(), "32", "6"])
                .output()
                .expect("python3");
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr)
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..5 {
        let started = Instant::now();
        daemon.query("status").expect("status under attack");
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "status took {took:?} under a metrics flood"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let report = hostile.join().expect("hostile thread");
    eprintln!("{test}: hostile client: {report}");
    assert!(
        !report.contains("200 OK"),
        "a 1 MiB header was answered: {report}"
    );
    assert!(report.contains("opened"), "{report}");
    // After the attack, scrapes succeed again: the newest `up` sample is 1 and recent.
    let since = now_secs();
    let recovered = wait_for(Duration::from_secs(15), || {
        let r = prom.query(&topo, "timestamp(up{job=\"gateway\"} == 1)");
        r.first().map(|s| s.1).filter(|t| *t > since)
    });
    assert!(
        recovered.is_some(),
        "no successful scrape after the flood: {:?}",
        prom.query(&topo, "up")
    );
    daemon.stop();
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn hub_bin() -> PathBuf {
    tollgate_bin().with_file_name("tollgate-hub")
}

fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn hub_config(dir: &Path) -> PathBuf {
    let config = dir.join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{SERVER_IP4}:{HUB_PORT}\"\nstate_dir = \"{d}\"\n\
             database = \"sqlite://{d}/hub.db\"\nserver_names = [\"{SERVER_IP4}\"]\n\n\
             [metrics]\nlisten = \"{SERVER_IP4}:{HUB_METRICS}\"\n",
            d = dir.display()
        ),
    )
    .expect("hub config");
    config
}

#[test]
fn prometheus_scrapes_the_hub_and_an_enrolled_gateway() {
    let test = "prometheus_scrapes_the_hub_and_an_enrolled_gateway";
    if !hub_bin().exists() {
        eprintln!("SKIP {test}: {} is not built", hub_bin().display());
        return;
    }
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("ph", 1500).expect("topology");
    let _origins = Origins::start(&mut topo, false).expect("origins");
    let dir = topo.scratch().join("hub");
    std::fs::create_dir_all(&dir).expect("hub dir");
    let hub_cfg = hub_config(&dir);
    let server = topo.server.clone();
    topo.spawn(
        &server,
        &format!(
            "{} run --config {} --log-format json",
            hub_bin().display(),
            hub_cfg.display()
        ),
        "hub.log",
    )
    .expect("hub");
    topo.wait_listen(&server, "tcp", HUB_PORT, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("hub: {e}\n{}", topo.log("hub.log")));
    let token: Value = serde_json::from_str(&run(std::process::Command::new(hub_bin())
        .args(["token", "create", "--site", "paris", "--json", "--config"])
        .arg(&hub_cfg)))
    .expect("token json");
    let daemon = Daemon::prepare(
        &mut topo,
        "monitor",
        &format!(
            "[hub]\nupload_interval_secs = 2\n\n[metrics]\nlisten = \"{GW_C_IP4}:{GATEWAY_METRICS}\"\n"
        ),
    )
    .expect("config");
    let out = topo.exec_any(
        &topo.gateway,
        &format!(
            "{} enroll https://{SERVER_IP4}:{HUB_PORT} {} --config {}",
            tollgate_bin().display(),
            token["token"].as_str().expect("token"),
            daemon.config.display()
        ),
    );
    assert!(
        out.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemon
        .spawn_with(&mut topo, "--log-format json")
        .expect("daemon");
    let gw = topo.gateway.clone();
    let prom = Prometheus::start(
        &mut topo,
        &gw,
        &[
            ("gateway", format!("{GW_C_IP4}:{GATEWAY_METRICS}")),
            ("hub", format!("{SERVER_IP4}:{HUB_METRICS}")),
        ],
    );
    for job in ["gateway", "hub"] {
        let up = prom.wait_value(
            &topo,
            &format!("up{{job=\"{job}\"}}"),
            Duration::from_secs(30),
            |v| v == 1.0,
        );
        assert_eq!(
            up,
            Some(1.0),
            "prometheus never scraped the {job}: {}",
            topo.log(&prom.log)
        );
    }
    let enrolled = prom.wait_value(
        &topo,
        "tollgate_hub_gateways_enrolled",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    assert_eq!(enrolled, Some(1.0));
    let connected = prom.wait_value(
        &topo,
        "tollgate_hub_gateways_connected",
        Duration::from_secs(15),
        |v| v == 1.0,
    );
    assert_eq!(
        connected,
        Some(1.0),
        "the gateway never showed as connected"
    );
    let hub_up = prom.wait_value(
        &topo,
        "tollgate_hub_connected{job=\"gateway\"}",
        Duration::from_secs(15),
        |v| v == 1.0,
    );
    assert_eq!(hub_up, Some(1.0), "the gateway's hub_connected gauge");

    // `--log-format json`: every log record (stderr) is one JSON object with a level, a
    // timestamp, a message and its fields flattened beside them; what is not JSON is the
    // daemon's stdout for people (the start-up summary, the status heartbeat), never a text
    // log record.
    let log = topo.log(&daemon.log);
    let mut records = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        if !line.starts_with('{') {
            assert!(
                !["  INFO ", "  WARN ", " ERROR ", " DEBUG "]
                    .iter()
                    .any(|level| line.contains(level)),
                "a text log record under --log-format json: {line}"
            );
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}\n{log}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string() && v["message"].is_string(),
            "{line}"
        );
        records += 1;
    }
    assert!(records >= 2, "no JSON log records: {log}");
    let polls = prom.wait_value(
        &topo,
        "sum(tollgate_hub_requests_total{path=\"/v1/poll\"})",
        Duration::from_secs(15),
        |v| v >= 1.0,
    );
    assert!(polls.is_some(), "no poll counted by the hub");
    let held = prom.wait_value(
        &topo,
        "tollgate_hub_polls_held",
        Duration::from_secs(30),
        |v| v >= 1.0,
    );
    assert!(
        held.is_some(),
        "the gateway's long poll never showed as held"
    );
    // Discovery goes up: records ingested on the hub, acknowledged on the gateway.
    traffic(&topo, 6);
    let ingested = prom.wait_value(
        &topo,
        "tollgate_hub_upload_records_total",
        Duration::from_secs(30),
        |v| v >= 1.0,
    );
    assert!(
        ingested.is_some(),
        "no upload records counted: {}",
        topo.log("hub.log")
    );
    let acked = prom.wait_value(
        &topo,
        "tollgate_uploaded_records_total",
        Duration::from_secs(15),
        |v| v >= 1.0,
    );
    assert!(acked.is_some(), "the gateway's uploaded records");
    let latency = prom.query(
        &topo,
        "tollgate_hub_request_duration_seconds_count{path=\"/v1/upload\"}",
    );
    assert!(!latency.is_empty(), "no upload latency histogram");
    // --log-format json: every line the hub logged is a JSON object.
    let log = topo.log("hub.log");
    let logged: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        logged
            .iter()
            .any(|l| l["message"] == "gateway enrolled" && l["level"] == "INFO"),
        "no JSON line for the enrollment in the hub's log:\n{log}"
    );
    daemon.stop();
}
