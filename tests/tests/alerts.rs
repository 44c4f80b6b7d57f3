//! End to end: an upload burst through the session proxy raises an alert that a real rsyslog
//! receives (TCP, RFC 6587 octet counting, CEF) within 2 s, and the alert and the activities
//! are there in `tollgate alerts` and `tollgate activity`, where it is resolved.
//!
//! The proxy audits each upload (a session policy with `action = "audit"`), the daemon turns
//! each audit record into an activity, and an activity policy counts them per user.
//!
//! And: an app discovery policy sees a new risky app cross its daily line, raises an alert and
//! tags the app unsanctioned, and the kernel blocks it from then on.

use std::time::{Duration, Instant};

use tollgate_e2e::servers::{Daemon, Origins};
use tollgate_e2e::{CLIENT_IP4, CLIENT_IP6, SERVER_IP4, Topology, serial};

const SYSLOG_PORT: u16 = 6514;

fn ready(test: &str) -> bool {
    tollgate_e2e::ready(
        test,
        &[
            "nginx", "dnsmasq", "curl", "openssl", "dig", "ip", "rsyslogd",
        ],
        &[],
    )
}

#[test]
fn an_upload_burst_through_the_proxy_raises_an_alert_in_rsyslog() {
    let test = "an_upload_burst_through_the_proxy_raises_an_alert_in_rsyslog";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("al", 1500).expect("topology");
    let origins = Origins::start(&mut topo, false).expect("origins");
    let dir = topo.scratch().to_path_buf();
    let g = topo.gateway.clone();
    let c = topo.client.clone();

    // A real rsyslog in the gateway's namespace, writing every message as one line.
    let work = dir.join("rsyslog-work");
    std::fs::create_dir_all(&work).unwrap();
    let out = dir.join("siem.log");
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{}\" maxMessageSize=\"64k\")\n\
             module(load=\"imtcp\")\ninput(type=\"imtcp\" port=\"{SYSLOG_PORT}\" address=\"127.0.0.1\")\n\
             template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
             action(type=\"omfile\" file=\"{}\" template=\"raw\")\n",
            work.display(),
            out.display()
        ),
    )
    .unwrap();
    topo.spawn(
        &g,
        &format!(
            "rsyslogd -n -f {} -i {}",
            conf.display(),
            dir.join("rsyslog.pid").display()
        ),
        "rsyslog.log",
    )
    .unwrap();
    topo.wait_listen(&g, "tcp", SYSLOG_PORT, Duration::from_secs(15))
        .expect("rsyslog listens");

    let extra = format!(
        "[apps.dropbox]\nsession_control = true\n\n\
         [proxy]\nlisten = \"[::]:8443\"\nupstream_ca_files = [\"{}\"]\n\n\
         [[session_policies]]\nname = \"watch pdf uploads\"\napps = [\"dropbox\"]\naction = \"audit\"\n\
         upload = {{ file_extensions = [\"pdf\"] }}\n\n\
         [[activity_policies]]\nname = \"upload burst\"\nseverity = \"high\"\nactivity = \"upload\"\n\
         apps = [\"dropbox\"]\nrepeated = {{ count = 10, within_secs = 60, per_user = true }}\n\n\
         [[alert_sinks]]\nkind = \"syslog\"\naddress = \"tcp://127.0.0.1:{SYSLOG_PORT}\"\nformat = \"cef\"\n",
        origins.ca.display(),
    );
    let daemon = Daemon::start(&mut topo, "monitor", &extra).expect("daemon");
    let bundle = daemon
        .client_trust(&origins.ca, &dir)
        .expect("trust bundle");

    // DNS names the app: its address is steered into the proxy.
    topo.exec(&c, &format!("dig +short www.dropbox.com @{SERVER_IP4}"))
        .unwrap();
    let steered = tollgate_e2e::wait_for(Duration::from_secs(15), || {
        topo.log(&daemon.log)
            .lines()
            .any(|l| l.contains("steering to the session proxy") && l.contains(SERVER_IP4))
            .then_some(())
    });
    assert!(steered.is_some(), "not steered:\n{}", topo.log(&daemon.log));

    // Nine uploads: no alert yet.
    let upload = |topo: &Topology, i: u32| {
        let o = topo.exec_any(
            &c,
            &format!(
                "curl --http1.1 -sS -o /dev/null -w '%{{http_code}}' --max-time 10 --cacert {} --data 'page {i}' https://www.dropbox.com/upload/q3-report-{i}.pdf",
                bundle.display()
            ),
        );
        assert!(
            o.status.success(),
            "upload {i}: {:?} {} {}\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            topo.log(&daemon.log)
        );
    };
    for i in 0..9 {
        upload(&topo, i);
    }
    std::thread::sleep(Duration::from_millis(500));
    let alerts = daemon.query("alerts").expect("alerts");
    assert_eq!(
        alerts.as_array().map(Vec::len),
        Some(0),
        "an alert before the tenth upload: {alerts}"
    );
    // The tenth: the alert reaches rsyslog within 2 s of the upload's start.
    let t = Instant::now();
    upload(&topo, 9);
    let line = tollgate_e2e::wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .find(|l| l.split(' ').nth(5) == Some("ALERT"))
            .map(str::to_string)
    });
    let took = t.elapsed();
    let line = line.unwrap_or_else(|| {
        panic!(
            "no alert in rsyslog:\n{}\n{}",
            std::fs::read_to_string(&out).unwrap_or_default(),
            topo.log(&daemon.log)
        )
    });
    println!(
        "alert in rsyslog {} ms after the tenth upload started",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(
        line.contains("|ALERT_ACTIVITY_POLICY|upload burst|8|"),
        "{line}"
    );
    // The client's address (curl picks IPv6 or IPv4): `src` for IPv4, `c6a1` for IPv6.
    assert!(
        line.contains("destinationServiceName=dropbox")
            && (line.contains(&format!("src={CLIENT_IP4}"))
                || line.contains(&format!("c6a1={CLIENT_IP6}"))),
        "{line}"
    );
    assert!(line.contains("cn1=1"), "{line}");

    // The alert, its proof, and the activities.
    let alerts = daemon.query("alerts").expect("alerts");
    let list = alerts.as_array().expect("a list");
    assert_eq!(list.len(), 1, "{alerts}");
    let a = &list[0];
    assert_eq!(a["policy"], "upload burst");
    assert_eq!(a["status"], "open");
    assert!(
        a["entities"]["ip"] == CLIENT_IP4 || a["entities"]["ip"] == CLIENT_IP6,
        "{a}"
    );
    assert_eq!(a["activities"].as_array().map(Vec::len), Some(10), "{a}");
    assert!(
        a["activities"][9]["object"]
            .as_str()
            .is_some_and(|o| o.ends_with("/upload/q3-report-9.pdf")),
        "{a}"
    );
    let acts = daemon
        .cli(&["activity", "--json", "--app", "dropbox"])
        .unwrap();
    assert!(
        acts.status.success(),
        "{}",
        String::from_utf8_lossy(&acts.stderr)
    );
    let acts: serde_json::Value = serde_json::from_slice(&acts.stdout).unwrap();
    let uploads = acts
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["activity"] == "upload" && x["source"] == "proxy")
        .count();
    assert_eq!(uploads, 10, "{acts}");

    // Resolved from the command line; the book is written to state_dir.
    let id = a["id"].as_u64().unwrap().to_string();
    let o = daemon
        .cli(&["alerts", "resolve", &id, "--comment", "quarterly close"])
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shown = daemon.cli(&["alerts", "show", &id, "--json"]).unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["status"], "resolved");
    assert_eq!(shown["comment"], "quarterly close");
    let saved = std::fs::read_to_string(daemon.state_dir.join("alerts.json")).unwrap();
    assert!(saved.contains("quarterly close"), "{saved}");
    // A restart keeps the alerts (state_dir/alerts.json) and the activity log.
    topo.kill9(&format!("run --config {}", daemon.config.display()));
    daemon.spawn(&mut topo).expect("restart");
    let again = daemon.query("alerts").expect("alerts after a restart");
    assert_eq!(again[0]["status"], "resolved", "{again}");
    assert_eq!(again[0]["comment"], "quarterly close", "{again}");
    let acts = daemon
        .cli(&["activity", "--json", "--app", "dropbox"])
        .unwrap();
    let acts: serde_json::Value = serde_json::from_slice(&acts.stdout).unwrap();
    let from_proxy = acts
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["source"] == "proxy")
        .count();
    assert_eq!(from_proxy, 10, "{acts}");
    // A resolved alert is closed: the next burst opens a new one.
    for i in 10..20 {
        upload(&topo, i);
    }
    let reopened = tollgate_e2e::wait_for(Duration::from_secs(5), || {
        let a = daemon.query("alerts").ok()?;
        (a.as_array()?.len() == 2).then_some(a)
    });
    let reopened = reopened.expect("a second alert after the second burst");
    assert_eq!(reopened[1]["status"], "open", "{reopened}");
    let st = daemon.query("status").expect("status");
    assert_eq!(
        st["activity"]["sinks"][0]["sent"], 1,
        "the restarted daemon sent the new alert: {}",
        st["activity"]
    );
    assert_eq!(st["proxy"]["activity_tap_dropped"], 0);

    // Reloadable: a new single-activity policy added to the file takes effect on SIGHUP.
    let mut text = std::fs::read_to_string(&daemon.config).unwrap();
    text.push_str(
        "\n[[activity_policies]]\nname = \"any report upload\"\nseverity = \"medium\"\n\
         activity = \"upload\"\nobject_contains = \"REPORT-20\"\n",
    );
    std::fs::write(&daemon.config, text).unwrap();
    daemon.signal("HUP").unwrap();
    let reloaded = tollgate_e2e::wait_for(Duration::from_secs(10), || {
        topo.log(&daemon.log)
            .contains("tollgate: reloaded")
            .then_some(())
    });
    assert!(reloaded.is_some(), "{}", topo.log(&daemon.log));
    upload(&topo, 20);
    let third = tollgate_e2e::wait_for(Duration::from_secs(5), || {
        let a = daemon.query("alerts").ok()?;
        a.as_array()?
            .iter()
            .find(|x| x["policy"] == "any report upload")
            .cloned()
    });
    let third = third.expect("the reloaded policy alerts");
    assert_eq!(third["severity"], "medium");
    assert_eq!(
        third["activities"][0]["object"],
        "www.dropbox.com/upload/q3-report-20.pdf"
    );
    daemon.stop();
}

/// A new app with a low risk score, used more than twice today: the app discovery policy
/// alerts (saying which line was crossed, and the score), tags the app unsanctioned, and the
/// kernel blocks its next connection at once. An app that is not risky, used as much, stays
/// allowed; discovery's per-interval use is in the activity log; a restart keeps the block
/// and does not fire the policy again the same day.
#[test]
fn an_app_discovery_policy_unsanctions_a_new_risky_app_and_the_kernel_blocks_it() {
    let test = "an_app_discovery_policy_unsanctions_a_new_risky_app_and_the_kernel_blocks_it";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("ad", 1500).expect("topology");
    let _origins = Origins::start(&mut topo, false).expect("origins");
    let c = topo.client.clone();
    let extra = "[apps.zoom]\nrisk_score = 3.0\nrisk_note = \"a risky app, for the test\"\n\n\
         [discovery]\ninterval_secs = 1\n\n\
         [[app_discovery_policies]]\nname = \"new risky app\"\nseverity = \"high\"\n\
         new_app = true\nrisk_below = 6\ntag = \"unsanctioned\"\n\
         daily = { users_above = 50, transactions_above = 2 }\n";
    let mut daemon = Daemon::start(&mut topo, "enforce", extra).expect("daemon");
    let curl = |topo: &Topology, host: &str| {
        let t = Instant::now();
        let o = topo.exec_any(
            &c,
            &format!(
                "curl -sk --max-time 10 --resolve {host}:443:{SERVER_IP4} https://{host}/ -o /dev/null"
            ),
        );
        (o.status.success(), t.elapsed())
    };
    // Two connections each: below the line.
    for _ in 0..2 {
        assert!(curl(&topo, "zoom.us").0, "zoom before the policy fired");
        assert!(curl(&topo, "slack.com").0, "slack");
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        daemon
            .query("alerts")
            .expect("alerts")
            .as_array()
            .is_some_and(Vec::is_empty),
        "an alert below the line"
    );
    assert!(
        curl(&topo, "zoom.us").0,
        "zoom's third connection still goes through"
    );
    assert!(curl(&topo, "slack.com").0, "slack's third");
    // The next interval sees the third: the policy fires and tags zoom.
    let blocked_at = tollgate_e2e::wait_for(Duration::from_secs(10), || {
        let (ok, took) = curl(&topo, "zoom.us");
        (!ok).then_some(took)
    });
    let took =
        blocked_at.unwrap_or_else(|| panic!("zoom never blocked:\n{}", topo.log(&daemon.log)));
    assert!(
        took < Duration::from_millis(1500),
        "a hang, not a reset: {took:?}"
    );
    assert!(
        curl(&topo, "slack.com").0,
        "slack, not risky, stays allowed"
    );
    let alerts = daemon.query("alerts").expect("alerts");
    let list = alerts.as_array().expect("a list");
    assert_eq!(list.len(), 1, "{alerts}");
    let a = &list[0];
    assert_eq!(a["policy"], "new risky app");
    assert_eq!(a["severity"], "high");
    assert_eq!(a["entities"]["app"], "zoom");
    let reason = a["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("transactions today (above 2)"), "{reason}");
    assert!(reason.contains("risk score 3.0 (below 6)"), "{reason}");
    let apps = daemon.query("apps").expect("apps");
    let tag_of = |apps: &serde_json::Value, id: &str| {
        apps.as_array()
            .and_then(|l| l.iter().find(|x| x["id"] == id))
            .map(|x| x["tag"].clone())
    };
    assert_eq!(tag_of(&apps, "zoom"), Some("unsanctioned".into()), "{apps}");
    assert_ne!(
        tag_of(&apps, "slack"),
        Some("unsanctioned".into()),
        "{apps}"
    );
    // Discovery's intervals are in the activity log, per app.
    let acts = daemon
        .cli(&["activity", "--json", "--app", "slack"])
        .unwrap();
    let acts: serde_json::Value = serde_json::from_slice(&acts.stdout).unwrap();
    let used: u64 = acts
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["activity"] == "app_used" && x["source"] == "discovery")
        .map(|x| x["bytes"].as_u64().unwrap_or(0))
        .sum();
    assert!(used > 0, "no discovery activity for slack: {acts}");
    // A restart: still blocked, and no second alert today.
    daemon.stop();
    std::thread::sleep(Duration::from_millis(200));
    daemon.log = format!("{}-2", daemon.log);
    daemon.spawn(&mut topo).expect("restart");
    let (ok, took) = curl(&topo, "zoom.us");
    assert!(
        !ok && took < Duration::from_millis(1500),
        "zoom after a restart"
    );
    std::thread::sleep(Duration::from_secs(3));
    let again = daemon.query("alerts").expect("alerts");
    assert_eq!(again.as_array().map(Vec::len), Some(1), "{again}");
    assert_eq!(again[0]["count"], 1, "{again}");
    daemon.stop();
}

/// Governance: an activity policy with `block_sessions_secs` suspends the user it alerts on.
/// Three audited uploads from the client raise the alert; from then on the proxy answers the
/// client's next request to the app, any request, with a block page naming the policy, and
/// the block is an audit record in the activity log, and it holds through a restart of the
/// daemon. Fails without the governance action (the request is served: 200 or the origin's
/// own answer).
#[test]
fn an_alert_with_block_sessions_suspends_the_user_in_the_proxy() {
    let test = "an_alert_with_block_sessions_suspends_the_user_in_the_proxy";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("gv", 1500).expect("topology");
    let origins = Origins::start(&mut topo, false).expect("origins");
    let dir = topo.scratch().to_path_buf();
    let c = topo.client.clone();
    let extra = format!(
        "[apps.dropbox]\nsession_control = true\n\n\
         [proxy]\nlisten = \"[::]:8443\"\nupstream_ca_files = [\"{}\"]\n\n\
         [[session_policies]]\nname = \"watch pdf uploads\"\napps = [\"dropbox\"]\naction = \"audit\"\n\
         upload = {{ file_extensions = [\"pdf\"] }}\n\n\
         [[activity_policies]]\nname = \"upload burst\"\nseverity = \"high\"\nactivity = \"upload\"\n\
         apps = [\"dropbox\"]\nrepeated = {{ count = 3, within_secs = 60, per_user = true }}\n\
         block_sessions_secs = 600\n",
        origins.ca.display(),
    );
    let daemon = Daemon::start(&mut topo, "monitor", &extra).expect("daemon");
    let bundle = daemon
        .client_trust(&origins.ca, &dir)
        .expect("trust bundle");
    topo.exec(&c, &format!("dig +short www.dropbox.com @{SERVER_IP4}"))
        .unwrap();
    let steered = tollgate_e2e::wait_for(Duration::from_secs(15), || {
        topo.log(&daemon.log)
            .lines()
            .any(|l| l.contains("steering to the session proxy") && l.contains(SERVER_IP4))
            .then_some(())
    });
    assert!(steered.is_some(), "not steered:\n{}", topo.log(&daemon.log));

    let fetch = |topo: &Topology, args: &str| -> (String, String) {
        let body = dir.join("body.out");
        let o = topo.exec_any(
            &c,
            &format!(
                "curl --http1.1 -sS -o {} -w '%{{http_code}}' --max-time 10 --cacert {} {args}",
                body.display(),
                bundle.display()
            ),
        );
        (
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
            std::fs::read_to_string(&body).unwrap_or_default(),
        )
    };
    // Before the alert the app is served.
    let (code, _) = fetch(&topo, "https://www.dropbox.com/");
    assert_ne!(code, "403", "blocked before any alert");
    for i in 0..3 {
        let (code, body) = fetch(
            &topo,
            &format!("--data 'page {i}' https://www.dropbox.com/upload/q3-report-{i}.pdf"),
        );
        assert_ne!(code, "403", "upload {i} blocked: {body}");
    }
    // The alert asks for the block; the daemon hands it to the proxy at once.
    let blocked = tollgate_e2e::wait_for(Duration::from_secs(5), || {
        let (code, body) = fetch(&topo, "-H 'Accept: text/html' https://www.dropbox.com/");
        (code == "403").then_some(body)
    });
    let body = blocked.unwrap_or_else(|| {
        panic!(
            "the client's sessions were not blocked:\n{}",
            topo.log(&daemon.log)
        )
    });
    assert!(body.contains("governance: upload burst"), "{body}");
    // Any request to the app, not only uploads.
    let (code, _) = fetch(&topo, "https://www.dropbox.com/robots.txt");
    assert_eq!(code, "403");

    let alerts = daemon.query("alerts").expect("alerts");
    assert_eq!(alerts.as_array().map(Vec::len), Some(1), "{alerts}");
    // The block and the refused requests are in the activity log (written by its sink task).
    let logged = |acts: &serde_json::Value| {
        let list = acts.as_array().cloned().unwrap_or_default();
        let actions: Vec<serde_json::Value> = list
            .iter()
            .filter(|x| x["activity"] == "admin_action" && x["action"] == "block_sessions")
            .cloned()
            .collect();
        let refused = list.iter().any(|x| {
            x["source"] == "proxy"
                && x["policy"]
                    .as_str()
                    .is_some_and(|p| p == "governance: upload burst")
        });
        (actions, refused)
    };
    let mut last = serde_json::Value::Null;
    let seen = tollgate_e2e::wait_for(Duration::from_secs(5), || {
        let o = daemon
            .cli(&["activity", "--json", "--app", "dropbox"])
            .ok()?;
        last = serde_json::from_slice(&o.stdout).ok()?;
        let (actions, refused) = logged(&last);
        (!actions.is_empty() && refused).then_some(actions)
    });
    let actions = seen.unwrap_or_else(|| panic!("no block in the activity log: {last}"));
    assert_eq!(actions.len(), 1, "{last}");
    assert_eq!(actions[0]["result"], "success", "{last}");
    assert_eq!(actions[0]["policy"], "upload burst", "{last}");

    // A restart does not lift the block: the new proxy gets it from the ledger on disk.
    daemon.stop();
    daemon.spawn(&mut topo).expect("daemon restarts");
    let blocked = tollgate_e2e::wait_for(Duration::from_secs(20), || {
        let (code, body) = fetch(&topo, "-H 'Accept: text/html' https://www.dropbox.com/");
        (code == "403").then_some(body)
    });
    let body =
        blocked.unwrap_or_else(|| panic!("a restart lifted the block:\n{}", topo.log(&daemon.log)));
    assert!(body.contains("governance: upload burst"), "{body}");
    daemon.stop();
}
