//! `tollgate collect` fed by a real rsyslog: rsyslogd reads one fixture of each of the 16
//! log formats with imfile and forwards every line over TCP (octet-counted framing), UDP
//! and TLS (gtls driver, checking our certificate against a CA) to the collector, with an
//! RFC 5424 header of its own in front of the device's line. Per format and per transport,
//! the records the collector parsed (its journal) must equal what `tollgate discover`'s
//! importer makes of the same file, and the format must be the one detected for the file.
//! Localhost only (no namespace); each run picks its own ports. Skips (prints SKIP) when
//! not root or rsyslogd (or its gtls driver) is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tollgate_e2e::servers::Daemon;
use tollgate_e2e::{Topology, make_server_cert, require_root, serial, tollgate_bin, wait_for};
use tollgate_logs::LogFormat;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rsyslogd() -> Option<PathBuf> {
    ["/usr/sbin/rsyslogd", "/sbin/rsyslogd", "/usr/bin/rsyslogd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn gtls_installed() -> bool {
    [
        "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so",
        "/usr/lib/aarch64-linux-gnu/rsyslog/lmnsd_gtls.so",
        "/usr/lib/rsyslog/lmnsd_gtls.so",
    ]
    .iter()
    .any(|p| Path::new(p).exists())
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../userspace/logs/testdata/logs")
}

/// A record as compared: every field (every fixture line carries its own time).
fn key(r: &tollgate_logs::FlowRecord) -> String {
    serde_json::to_string(r).unwrap()
}

#[test]
fn rsyslog_forwards_all_16_formats_and_the_collector_parses_them_like_discover() {
    let test = "collect::rsyslog_forwards_all_16_formats";
    if !require_root(test) {
        return;
    }
    let Some(rsyslogd) = rsyslogd() else {
        eprintln!("SKIP {test}: rsyslogd is not installed (run `cargo xtask setup` as root)");
        return;
    };
    let tls = gtls_installed();
    if !tls {
        eprintln!("{test}: rsyslog-gnutls missing, the TLS leg is skipped");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // One fixture per format, as discover detects it.
    let mut picked: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        let st = tollgate_logs::import_file(&p, &tollgate_logs::LogOptions::default(), &mut |_| {})
            .unwrap();
        picked.entry(st.format).or_insert(p);
    }
    let all: BTreeSet<String> = LogFormat::ALL.iter().map(|f| f.name().to_owned()).collect();
    assert_eq!(
        picked.keys().cloned().collect::<BTreeSet<_>>(),
        all,
        "a fixture per format"
    );

    // The collector first: it tells its ports in status.json.
    let (state, out) = (dir.join("state"), dir.join("out"));
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (ca, cert, keyf) = make_server_cert(&certs, &["localhost"]).unwrap();
    let tls_section = if tls {
        format!(
            "[collect.tls]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
            cert, keyf
        )
    } else {
        String::new()
    };
    let cfg = dir.join("collect.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {:?}\n[collect]\nstate_dir = {:?}\noutput_dir = {:?}\n\
             report_interval_secs = 1\npoll_interval_ms = 100\n\
             [collect.tcp]\nlisten = \"127.0.0.1:0\"\n\
             [collect.udp]\nlisten = \"127.0.0.1:0\"\nallow = [\"127.0.0.1/32\"]\n{tls_section}",
            dir, state, out
        ),
    )
    .unwrap();
    let _collector = Kill(
        Command::new(tollgate_bin())
            .args(["collect", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tollgate collect starts"),
    );
    let status = || -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(out.join("status.json")).ok()?).ok()
    };
    let st = wait_for(Duration::from_secs(30), || {
        status().filter(|s| s["receiver"]["tcp"].is_string())
    })
    .expect("collector status.json");
    let port = |t: &str| -> u16 {
        st["receiver"][t]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (tcp, udp) = (port("tcp"), port("udp"));

    // rsyslog: imfile per fixture (tag fmtN), forwarded with an RFC 5424 header.
    let work = dir.join("rsyslog-work");
    std::fs::create_dir_all(&work).unwrap();
    let mut inputs = String::new();
    let mut tags = BTreeMap::new();
    for (i, (format, path)) in picked.iter().enumerate() {
        let copy = dir.join(format!("in-{i}.log"));
        std::fs::copy(path, &copy).unwrap();
        let tag = format!("fmt{i}");
        inputs.push_str(&format!(
            "input(type=\"imfile\" File=\"{}\" Tag=\"{tag}\" freshStartTail=\"off\" \
             addMetadata=\"off\" ruleset=\"fwd\")\n",
            copy.display()
        ));
        tags.insert(tag, (format.clone(), path.clone()));
    }
    let tls_global = if tls {
        format!(" DefaultNetstreamDriverCAFile=\"{}\"", ca.display())
    } else {
        String::new()
    };
    let tls_action = if tls {
        format!(
            "  action(type=\"omfwd\" target=\"localhost\" port=\"{}\" protocol=\"tcp\" \
             StreamDriver=\"gtls\" StreamDriverMode=\"1\" StreamDriverAuthMode=\"x509/name\" \
             StreamDriverPermittedPeers=\"localhost\" TCP_Framing=\"octet-counted\" \
             template=\"RSYSLOG_SyslogProtocol23Format\")\n",
            port("tls")
        )
    } else {
        String::new()
    };
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{work}\" maxMessageSize=\"64k\" \
             parser.escapeControlCharactersOnReceive=\"off\"{tls_global})\n\
             module(load=\"imfile\" mode=\"polling\" PollingInterval=\"1\")\n\
             {inputs}\
             ruleset(name=\"fwd\") {{\n\
               action(type=\"omfwd\" target=\"127.0.0.1\" port=\"{tcp}\" protocol=\"tcp\" \
             TCP_Framing=\"octet-counted\" template=\"RSYSLOG_SyslogProtocol23Format\")\n\
               action(type=\"omfwd\" target=\"127.0.0.1\" port=\"{udp}\" protocol=\"udp\" \
             template=\"RSYSLOG_SyslogProtocol23Format\")\n\
             {tls_action}}}\n",
            work = work.display(),
        ),
    )
    .unwrap();
    let _rs = Kill(
        Command::new(&rsyslogd)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslog.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rsyslogd starts"),
    );

    // What discover makes of each file.
    let mut want: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for (tag, (format, path)) in &tags {
        let mut v = Vec::new();
        tollgate_logs::import_file(path, &tollgate_logs::LogOptions::default(), &mut |r| {
            v.push(key(&r))
        })
        .unwrap();
        v.sort();
        assert!(!v.is_empty(), "{} makes no records", path.display());
        want.insert(tag.clone(), (format.clone(), v));
    }
    let total: usize = want.values().map(|(_, v)| v.len()).sum();
    let transports: Vec<&str> = if tls {
        vec!["tcp", "udp", "tls"]
    } else {
        vec!["tcp", "udp"]
    };

    // Wait until the journal holds every record over every transport (or time runs out).
    let journal = || tollgate_logs::collect::collector::read_journal(&state).unwrap_or_default();
    let done = wait_for(Duration::from_secs(60), || {
        let j = journal();
        (j.len() >= total * transports.len()).then_some(())
    });
    // One more report so the per-source formats are on disk.
    std::thread::sleep(Duration::from_millis(1500));
    let got = journal();
    if done.is_none() {
        eprintln!(
            "collector status: {}",
            status().map(|s| s.to_string()).unwrap_or_default()
        );
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("discovery.json")).unwrap()).unwrap();
    let formats: BTreeMap<String, String> = report["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["file"].as_str().unwrap().to_owned(),
                i["format"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut by_source: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (s, r) in &got {
        by_source.entry(s.clone()).or_default().push(key(r));
    }
    let mut failures = Vec::new();
    for t in &transports {
        for (tag, (format, want_recs)) in &want {
            let label = format!("syslog/{t}/127.0.0.1/{tag}");
            let mut g = by_source.get(&label).cloned().unwrap_or_default();
            g.sort();
            let f = formats.get(&label).cloned().unwrap_or_default();
            if &f != format || &g != want_recs {
                failures.push(format!(
                    "{label} ({format}): format {f:?}, {} records, want {}{}",
                    g.len(),
                    want_recs.len(),
                    g.iter()
                        .zip(want_recs)
                        .find(|(a, b)| a != b)
                        .map(|(a, b)| format!("\n  got  {a}\n  want {b}"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let st = status().unwrap();
    assert_eq!(st["receiver"]["dropped"], 0, "{st}");
    eprintln!(
        "{} formats x {} transports: {} records equal discover's",
        want.len(),
        transports.len(),
        got.len()
    );
}

/// `tollgate run` with a `[collect]` section: lines of a proxy log in the watched directory
/// become apps in the daemon's own discovery (`tollgate apps`), next to its flows.
#[test]
fn daemon_with_collect_section_folds_log_records_into_its_discovery() {
    let test = "collect::daemon_with_collect_section";
    if !require_root(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("cl", 1500).expect("topology");
    let logs = topo.scratch().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let extra = format!(
        "[collect]\npoll_interval_ms = 100\nreport_interval_secs = 1\n\
         [[collect.watch]]\ndir = {:?}\nformat = \"squid-native\"\n",
        logs
    );
    let daemon = Daemon::start(&mut topo, "monitor", &extra).expect("daemon");
    let ids = |d: &Daemon| -> Vec<String> {
        d.query("apps")
            .ok()
            .and_then(|a| {
                a.as_array().map(|v| {
                    v.iter()
                        .filter_map(|a| a["id"].as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default()
    };
    assert!(!ids(&daemon).contains(&"dropbox".to_string()));
    std::fs::write(
        logs.join("proxy.log"),
        "1700000000.100 5 10.9.0.7 TCP_MISS/200 51234 CONNECT www.dropbox.com:443 alice HIER_DIRECT/162.125.1.18 -\n\
         1700000001.100 5 10.9.0.8 TCP_MISS/200 4321 CONNECT slack.com:443 bob HIER_DIRECT/3.3.3.3 -\n",
    )
    .unwrap();
    let got = wait_for(Duration::from_secs(20), || {
        let v = ids(&daemon);
        (v.contains(&"dropbox".to_string()) && v.contains(&"slack".to_string())).then_some(v)
    });
    let log = topo.log(&daemon.log);
    assert!(got.is_some(), "apps: {:?}\n{log}", ids(&daemon));
    // The collector's own report counts them too.
    let report = daemon.state_dir.join("collect/reports/discovery.json");
    let records = wait_for(Duration::from_secs(10), || {
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).ok()?).ok()?;
        r["inputs"][0]["records"].as_u64().filter(|n| *n == 2)
    });
    daemon.stop();
    assert_eq!(records, Some(2));
}
