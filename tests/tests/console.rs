//! End to end: the gateway's read-only local console (`[console] listen`). A daemon in the
//! gateway namespace sees a client (whose static user name is hostile HTML) use two apps; an
//! app discovery policy raises an alert on one. `tollgate console` prints the URL with the
//! token the daemon wrote; curl in the gateway namespace logs in with it and reads every page:
//! they show the traffic, the user (escaped), the alert and the activity; without the token
//! or with a wrong one they are 401, a POST is 405, and a non-loopback `listen` is refused.

use std::time::Duration;

use tollgate_e2e::servers::{Daemon, Origins};
use tollgate_e2e::{CLIENT_IP4, SERVER_IP4, Topology, serial, tollgate_bin, wait_for};

const PORT: u16 = 8470;
const HOSTILE_USER: &str = "<script>alert(1)</script>";

fn ready(test: &str) -> bool {
    tollgate_e2e::ready(test, &["nginx", "dnsmasq", "curl", "openssl"], &[])
}

/// `curl` in the gateway namespace: (HTTP status, headers and body).
fn fetch(topo: &Topology, args: &str, path: &str) -> (u16, String) {
    let out = topo.exec_any(
        &topo.gateway,
        &format!("curl -s -i --max-time 10 {args} 'http://127.0.0.1:{PORT}{path}'"),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn the_gateway_console_shows_what_the_gateway_saw() {
    let test = "the_gateway_console_shows_what_the_gateway_saw";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("cs", 1500).expect("topology");
    let _origins = Origins::start(&mut topo, false).expect("origins");
    let c = topo.client.clone();
    let extra = format!(
        "[console]\nlisten = \"127.0.0.1:{PORT}\"\n\n\
         [[users.static]]\nip = \"{CLIENT_IP4}\"\nuser = \"{}\"\n\n\
         [apps.zoom]\nrisk_score = 3.0\n\n\
         [discovery]\ninterval_secs = 1\n\n\
         [[app_discovery_policies]]\nname = \"new risky app\"\nseverity = \"high\"\n\
         new_app = true\nrisk_below = 6\n\
         daily = {{ users_above = 50, transactions_above = 2 }}\n",
        HOSTILE_USER.replace('"', "\\\"")
    );
    let daemon = Daemon::start(&mut topo, "monitor", &extra).expect("daemon");
    topo.wait_listen(&topo.gateway, "tcp", PORT, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("no console: {e}\n{}", topo.log(&daemon.log)));

    // The token file: private, and `tollgate console` prints the URL with it.
    let token_file = daemon.state_dir.join("console-token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file)
            .expect("console-token")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "console-token mode {mode:o}");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    let out = std::process::Command::new(tollgate_bin())
        .args(["console", "--config"])
        .arg(&daemon.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(url, format!("http://127.0.0.1:{PORT}/?token={token}"));

    // Traffic: four connections to zoom (the policy's line is two a day), two to slack.
    for host in [
        "zoom.us",
        "slack.com",
        "zoom.us",
        "slack.com",
        "zoom.us",
        "zoom.us",
    ] {
        let _ = topo.exec_any(
            &c,
            &format!(
                "curl -sk --max-time 5 --resolve {host}:443:{SERVER_IP4} https://{host}/ -o /dev/null"
            ),
        );
    }
    let alert = wait_for(Duration::from_secs(15), || {
        let a = daemon.query("alerts").ok()?;
        a.as_array()?.first().cloned()
    })
    .unwrap_or_else(|| panic!("no alert:\n{}", topo.log(&daemon.log)));
    let id = alert["id"].as_u64().expect("an alert id");

    // Without the token, with a wrong one: 401, and no data.
    let (st, none) = fetch(&topo, "", "/");
    assert_eq!(st, 401, "{none}");
    assert!(none.contains("tollgate console"), "{none}");
    let (st, wrong) = fetch(&topo, "", &format!("/?token={}", "0".repeat(64)));
    assert_eq!(st, 401, "{wrong}");
    assert!(
        !wrong.to_ascii_lowercase().contains("set-cookie"),
        "{wrong}"
    );
    let (st, r) = fetch(&topo, "", "/discovery");
    assert_eq!(st, 401, "{r}");

    // Logging in: the URL sets the cookie and sends the browser to the overview.
    let jar = topo.scratch().join("cookies.txt");
    let (st, login) = fetch(
        &topo,
        &format!("-c {}", jar.display()),
        &format!("/?token={token}"),
    );
    assert_eq!(st, 303, "{login}");
    assert!(
        login
            .to_ascii_lowercase()
            .contains("set-cookie: tg_gw_console="),
        "{login}"
    );
    let cookie = format!("-b {}", jar.display());

    let page = |path: &str| {
        let (st, text) = fetch(&topo, &cookie, path);
        assert_eq!(st, 200, "{path}: {text}");
        assert!(
            !text.contains("<script"),
            "{path} carries a raw <script>: {text}"
        );
        let lower = text.to_ascii_lowercase();
        assert!(
            lower.contains("content-security-policy: default-src 'self'"),
            "{path}: {text}"
        );
        assert!(lower.contains("x-frame-options: deny"), "{path}: {text}");
        std::fs::write(
            topo.scratch().join(format!(
                "page{}.html",
                path.replace(['/', '?', '&', '='], "_")
            )),
            &text,
        )
        .unwrap();
        text
    };

    let overview = page("/");
    assert!(overview.contains("monitor"), "{overview}");
    let flows: u64 = overview
        .split("<span id=\"flows\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no flow count: {overview}"));
    assert!(flows > 0, "no flows on the overview: {overview}");
    assert!(overview.contains("not enrolled"), "{overview}");

    let discovery = page("/discovery");
    assert!(
        discovery.contains("href=\"/discovery?app=zoom\""),
        "{discovery}"
    );
    assert!(
        discovery.contains("href=\"/discovery?app=slack\""),
        "{discovery}"
    );
    assert!(
        discovery.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "the user, escaped: {discovery}"
    );
    let zoom = page("/discovery?app=zoom");
    assert!(zoom.contains("href=\"/activity?app=zoom\""), "{zoom}");
    assert!(zoom.contains("&lt;script&gt;"), "zoom's user: {zoom}");

    let alerts = page("/alerts");
    assert!(alerts.contains("new risky app"), "{alerts}");
    assert!(
        alerts.contains(&format!("href=\"/alerts/{id}\"")),
        "{alerts}"
    );
    let one = page(&format!("/alerts/{id}"));
    assert!(
        one.contains(&format!("tollgate alerts resolve {id}")),
        "{one}"
    );
    assert!(one.contains("zoom"), "{one}");
    assert!(!one.contains("method=\"post\""), "read-only: {one}");

    let activity = page("/activity?app=slack");
    assert!(activity.contains("app_used"), "{activity}");
    assert!(
        !activity.contains(">zoom<"),
        "filtered to slack: {activity}"
    );
    let by_user = page("/activity?user=%3Cscript%3Ealert(1)%3C%2Fscript%3E");
    assert!(by_user.contains("app_used"), "{by_user}");

    // Read-only: a POST is refused, even with the cookie.
    let (st, post) = fetch(&topo, &format!("{cookie} -X POST -d x=1"), "/alerts");
    assert_eq!(st, 405, "{post}");

    // A console on a non-loopback address is a config error that names the key.
    let bad = topo.scratch().join("bad.toml");
    std::fs::write(&bad, "[console]\nlisten = \"0.0.0.0:8470\"\n").unwrap();
    let out = std::process::Command::new(tollgate_bin())
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("console.listen"),
        "{out:?}"
    );

    // The same pages in headless Chromium over WebDriver: logged in through the URL, each
    // page visited (desktop and phone), no console errors (a CSP refusal would be one), no
    // sideways scrolling on the phone. Screenshots go to the scratch dir, which the topology
    // removes; set TOLLGATE_CONSOLE_SHOTS to keep them.
    if tollgate_e2e::require_command(test, "chromedriver")
        && tollgate_e2e::require_command(test, "chromium")
    {
        let shots = std::env::var_os("TOLLGATE_CONSOLE_SHOTS").map_or_else(
            || topo.scratch().join("console-shots"),
            std::path::PathBuf::from,
        );
        let out = topo.exec_any(
            &topo.gateway,
            &format!(
                "python3 {} --url '{url}' --app zoom --alert {id} --out {}",
                tollgate_e2e::servers::fixture("gateway_console_webdriver.py").display(),
                shots.display()
            ),
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no report ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        eprintln!("{test}: console screenshots in {}", shots.display());
        assert!(out.status.success(), "{report:#}");
        assert_eq!(
            report["pages"].as_array().map(Vec::len),
            Some(12),
            "{report:#}"
        );
        assert_ne!(report["flows"], "0", "{report:#}");
    }

    // A restart writes a new token: the old cookie no longer opens anything.
    daemon.signal("TERM").expect("stop the daemon");
    wait_for(Duration::from_secs(10), || {
        (!daemon.socket.exists()).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    daemon.spawn(&mut topo).expect("restart");
    topo.wait_listen(&topo.gateway, "tcp", PORT, Duration::from_secs(10))
        .expect("console after a restart");
    let again = std::fs::read_to_string(&token_file).unwrap();
    assert_ne!(again.trim(), token, "the token is new each start");
    let (st, old) = fetch(&topo, &cookie, "/");
    assert_eq!(st, 401, "{old}");
    daemon.stop();
}
