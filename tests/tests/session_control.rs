//! End to end: session control through the daemon. An app with `session_control = true` is
//! steered into the proxy in the kernel (after DNS names it: the LAN ingress program assigns
//! its tcp/443 SYNs to the proxy's listener and marks the flow, the daemon's fwmark policy
//! route delivers it locally), and the proxy terminates TLS with Tollgate's CA and applies
//! session policies; every other app is never decrypted; QUIC to the steered app is refused
//! at once so that browsers fall back to TCP. Clients have no proxy settings.

use std::time::{Duration, Instant};

use std::path::{Path, PathBuf};

use tollgate_e2e::servers::{Daemon, Origins, SERVER_ALT_IP4, fixture};
use tollgate_e2e::{SERVER_IP4, Topology, serial, sh};

fn ready(test: &str) -> bool {
    tollgate_e2e::ready(
        test,
        &["nginx", "dnsmasq", "curl", "openssl", "dig", "ip"],
        &["aioquic"],
    )
}

/// `quic_probe.py` toward SERVER_IP4 with this SNI: (output, seconds).
fn quic_probe(topo: &Topology, sni: &str) -> (String, f64) {
    let t = Instant::now();
    let out = topo.exec_any(
        &topo.client,
        &format!(
            "python3 {} --connect {SERVER_IP4} --sni {sni} --timeout 3",
            fixture("quic_probe.py").display()
        ),
    );
    (
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        t.elapsed().as_secs_f64(),
    )
}

#[test]
fn steered_app_gets_policies_others_keep_their_certificate() {
    let test = "steered_app_gets_policies_others_keep_their_certificate";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("sc", 1500).expect("topology");
    let origins = Origins::start(&mut topo, true).expect("origins");
    let dir = topo.scratch().to_path_buf();
    std::fs::write(dir.join("www/setup.exe"), b"MZ fake executable").unwrap();
    let audit = dir.join("audit.jsonl");
    let extra = format!(
        "[apps.dropbox]\nsession_control = true\n\n\
         [proxy]\nlisten = \"[::]:8443\"\nuninspectable = \"pass\"\nupstream_ca_files = [\"{}\"]\naudit_log = \"{}\"\n\n\
         [[session_policies]]\nname = \"no executables\"\napps = [\"dropbox\"]\naction = \"block\"\n\
         download = {{ file_extensions = [\"exe\"] }}\n\n\
         [[session_policies]]\nname = \"no card numbers out\"\napps = [\"dropbox\"]\naction = \"block\"\n\
         upload = {{ content = [\"credit_card\"], min_matches = 1 }}\n",
        origins.ca.display(),
        audit.display()
    );
    let daemon = Daemon::start(&mut topo, "monitor", &extra).expect("daemon");
    // The client trusts Tollgate's CA (exported as an admin would) and the origin's.
    let bundle = daemon
        .client_trust(&origins.ca, &dir)
        .expect("trust bundle");
    let c = topo.client.clone();
    let g = topo.gateway.clone();
    // The daemon installed the policy route for marked packets.
    let rules = topo.exec_any(&g, "ip rule list");
    let rules = String::from_utf8_lossy(&rules.stdout).to_string();
    assert!(
        rules.contains("fwmark 0x74670b11 lookup 29799"),
        "no steering rule: {rules}"
    );
    // Before anything names the app, nothing is steered: QUIC reaches the origin (the SNI
    // is another app's: the daemon reads QUIC SNIs, and the app's own would steer the address).
    let (out, _) = quic_probe(&topo, "slack.com");
    assert!(out.contains("answered"), "QUIC before steering: {out}");
    // A connection to the address opened before it is steered (another app's, sharing the
    // address): decided direct at its SYN, it must stay direct and working. (A direct
    // connection naming the app itself is refused at its hello: see
    // first_connection_without_a_dns_answer_is_refused_and_its_retry_is_proxied.)
    let go = dir.join("kept-alive.go");
    topo.spawn(
        &c,
        &format!(
            "python3 {} --connect {SERVER_IP4} --sni slack.com --cafile {} --path /setup.exe --go {}",
            fixture("kept_alive.py").display(),
            bundle.display(),
            go.display()
        ),
        "kept-alive.log",
    )
    .unwrap();
    let first = tollgate_e2e::wait_for(Duration::from_secs(15), || {
        let log = topo.log("kept-alive.log");
        log.contains("first").then_some(log)
    });
    assert!(
        first
            .as_deref()
            .is_some_and(|l| l.contains("first 200 tollgate-e2e-origin-ca")),
        "kept-alive connection before steering: {first:?}"
    );
    // DNS names the app: its address is steered into the proxy.
    topo.exec(&c, &format!("dig +short www.dropbox.com @{SERVER_IP4}"))
        .unwrap();
    topo.exec(&c, &format!("dig +short slack.com @{SERVER_IP4}"))
        .unwrap();
    // Wait until the daemon has put the address in the kernel's steer trie.
    let steered = tollgate_e2e::wait_for(Duration::from_secs(15), || {
        topo.log(&daemon.log)
            .lines()
            .any(|l| l.contains("steering to the session proxy") && l.contains(SERVER_IP4))
            .then_some(())
    });
    assert!(
        steered.is_some(),
        "www.dropbox.com's address was never steered:\n{}",
        topo.log(&daemon.log)
    );
    // The connection opened before steering still works, still direct (the origin serves
    // the download a steered connection would have blocked).
    std::fs::write(&go, b"").unwrap();
    let second = tollgate_e2e::wait_for(Duration::from_secs(15), || {
        let log = topo.log("kept-alive.log");
        log.contains("second").then_some(log)
    });
    assert!(
        second.as_deref().is_some_and(|l| l.contains("second 200")),
        "the connection opened before steering broke: {second:?}"
    );

    let curl = |args: &str| {
        let out = topo.exec_any(
            &c,
            &format!("curl -s --max-time 10 --cacert {} {args}", bundle.display()),
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    for proto in ["--http1.1", "--http2"] {
        // A blocked download type: the block page, from Tollgate's certificate.
        let (ok, body, err) = curl(&format!(
            "{proto} -H 'Accept: text/html' -w '\\n%{{http_code}}' https://www.dropbox.com/setup.exe"
        ));
        assert!(ok, "{proto}: {err}");
        assert!(
            body.trim_end().ends_with("403"),
            "{proto}: not blocked: {body}\n{}",
            topo.log(&daemon.log)
        );
        assert!(
            body.contains("no executables"),
            "{proto}: block page lacks the policy: {body}"
        );
        // An allowed download passes byte-identical.
        let want = sh(&format!("sha256sum < {}/www/1m.bin", dir.display())).unwrap();
        let out = topo.exec_any(
            &c,
            &format!(
                "sh -c 'curl -s --max-time 10 --cacert {} {proto} https://www.dropbox.com/1m.bin | sha256sum'",
                bundle.display()
            ),
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next(),
            String::from_utf8_lossy(&want.stdout)
                .split_whitespace()
                .next(),
            "{proto}: the allowed download changed"
        );
        // An upload with a valid card number is blocked; a Luhn-invalid one passes to the
        // origin (nginx answers 405 to a POST on a static file).
        let (_, body, _) = curl(&format!(
            "{proto} -w '\\n%{{http_code}}' -H 'Accept: application/json' --data 'card=4111 1111 1111 1111' https://www.dropbox.com/upload"
        ));
        assert!(
            body.trim_end().ends_with("403"),
            "{proto}: card upload not blocked: {body}"
        );
        let (_, body, _) = curl(&format!(
            "{proto} -w '\\n%{{http_code}}' --data 'card=4111 1111 1111 1112' https://www.dropbox.com/upload"
        ));
        assert!(
            !body.trim_end().ends_with("403"),
            "{proto}: Luhn-invalid upload blocked: {body}"
        );
    }
    // Both address families are steered (the proxy listens dual-stack).
    for fam in ["-4", "-6"] {
        let (ok, body, err) = curl(&format!(
            "{fam} -H 'Accept: text/html' -w '\\n%{{http_code}}' https://www.dropbox.com/setup.exe"
        ));
        assert!(ok, "{fam}: {err}");
        assert!(
            body.trim_end().ends_with("403"),
            "{fam}: not blocked: {body}"
        );
    }
    // The steered app's certificate is Tollgate's; a non-steered app keeps its own.
    let issuer = |host: &str| {
        let out = topo.exec_any(
            &c,
            &format!(
                "sh -c 'echo Q | timeout 5 openssl s_client -connect {SERVER_IP4}:443 -servername {host} 2>/dev/null | openssl x509 -noout -issuer'"
            ),
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(
        issuer("www.dropbox.com").contains("Tollgate"),
        "{}",
        issuer("www.dropbox.com")
    );
    let slack = issuer("slack.com");
    assert!(
        slack.contains("tollgate-e2e-origin-ca"),
        "slack was decrypted: {slack}"
    );
    // QUIC to the steered address is refused by the kernel within the first retransmits
    // (a browser falls back to TCP at once), where before steering the origin answered.
    let (out, secs) = quic_probe(&topo, "www.dropbox.com");
    assert!(
        out.contains("refused") && secs < 1.5,
        "QUIC to the steered app: {out} after {secs:.2}s"
    );
    // Every decision is in the audit log.
    let log = std::fs::read_to_string(&audit).unwrap_or_default();
    assert!(log.contains("no executables"), "audit log: {log}");
    assert!(log.contains("no card numbers out"), "audit log: {log}");
    assert!(
        !log.contains("4111 1111 1111 1111"),
        "the audit log must mask evidence: {log}"
    );
    // The proxy's request latency histogram counts the requests it answered, in buckets
    // whose counts add up to the total (as `tollgate_proxy_request_duration_seconds`).
    let st = daemon.query("status").expect("status");
    let h = &st["proxy"]["request_seconds"];
    let count = h["count"].as_u64().unwrap_or(0);
    assert!(count >= 3, "requests not timed: {h}");
    let in_buckets: u64 = h["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b[1].as_u64())
        .sum();
    assert_eq!(in_buckets, count, "{h}");
    assert!(h["sum"].as_f64().is_some_and(|s| s > 0.0), "{h}");
    // SIGHUP after the policy changed to .msi in the config: the .exe download now passes.
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    let without = config.replace("file_extensions = [\"exe\"]", "file_extensions = [\"msi\"]");
    assert_ne!(without, config, "the test config changed shape");
    std::fs::write(&daemon.config, without).unwrap();
    daemon.signal("HUP").expect("SIGHUP");
    let reloaded = tollgate_e2e::wait_for(Duration::from_secs(5), || {
        let (_, body, _) = curl("-w '\\n%{http_code}' https://www.dropbox.com/setup.exe");
        body.trim_end().ends_with("200").then_some(body)
    });
    assert!(
        reloaded.is_some_and(|b| b.contains("MZ fake executable")),
        "the reloaded policies were not applied: {}",
        topo.log(&daemon.log)
    );
    daemon.stop();
    // Stopping removes the policy route.
    let gone = tollgate_e2e::wait_for(Duration::from_secs(10), || {
        let out = topo.exec_any(&g, "ip rule list");
        (!String::from_utf8_lossy(&out.stdout).contains("0x74670b11")).then_some(())
    });
    assert!(gone.is_some(), "the steering rule outlived the daemon");
}

/// Starts a daemon with www.dropbox.com's app under session control (plus `extra` config) and
/// writes a trust bundle (Tollgate's CA, as an admin exports it, and the origin's).
fn session_daemon(
    topo: &mut Topology,
    origins: &Origins,
    mode: &str,
    extra: &str,
) -> (Daemon, PathBuf) {
    let dir = topo.scratch().to_path_buf();
    let config = format!(
        "[apps.dropbox]\nsession_control = true\n\n\
         [proxy]\nlisten = \"[::]:8443\"\nupstream_ca_files = [\"{}\"]\n\n{extra}\n",
        origins.ca.display(),
    );
    let daemon = Daemon::start(topo, mode, &config).expect("daemon");
    let bundle = daemon
        .client_trust(&origins.ca, &dir)
        .expect("trust bundle");
    (daemon, bundle)
}

/// Client B: a second address of the client namespace.
const CLIENT_B_IP4: &str = "198.18.1.3";

/// `curl https://{host}/` to `addr` from the client (from `source` when given): whether it
/// succeeded and the certificate's issuer as curl reports it.
fn fetch(
    topo: &Topology,
    bundle: &Path,
    source: Option<&str>,
    host: &str,
    addr: &str,
) -> (bool, String) {
    let out = topo.exec_any(
        &topo.client,
        &format!(
            "curl -sv --max-time 5 -o /dev/null --cacert {} {} --resolve {host}:443:{addr} https://{host}/",
            bundle.display(),
            source.map_or(String::new(), |s| format!("--interface {s}")),
        ),
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let issuer = err
        .lines()
        .find_map(|l| l.split_once("issuer:").map(|(_, i)| i.trim().to_string()))
        .unwrap_or_default();
    (out.status.success(), issuer)
}

/// A kernel or daemon counter of session control from `tollgate status --json`.
fn session_count(daemon: &Daemon, name: &str) -> u64 {
    let st = daemon.query("status").expect("status");
    st["session"][name]
        .as_u64()
        .or_else(|| st["session"]["daemon"][name].as_u64())
        .unwrap_or_else(|| panic!("no session counter {name}: {st}"))
}

#[test]
fn a_client_naming_the_app_toward_any_address_steers_nobody_else() {
    let test = "a_client_naming_the_app_toward_any_address_steers_nobody_else";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("sn", 1500).expect("topology");
    let origins = Origins::start(&mut topo, true).expect("origins");
    let (daemon, bundle) = session_daemon(&mut topo, &origins, "monitor", "");
    let c = topo.client.clone();
    topo.exec(&c, &format!("ip addr add {CLIENT_B_IP4}/24 dev c0"))
        .unwrap();
    // Client A names the app in a QUIC Initial toward one address and in a TLS hello toward
    // another; no DNS answer named it anywhere.
    let (out, _) = quic_probe(&topo, "www.dropbox.com");
    let (ok, _) = fetch(&topo, &bundle, None, "www.dropbox.com", SERVER_ALT_IP4);
    assert!(!ok, "a direct connection naming the app went through");
    let refused = tollgate_e2e::wait_for(Duration::from_secs(10), || {
        (session_count(&daemon, "quic_refused") >= 1
            && session_count(&daemon, "session_refused") >= 1)
            .then_some(())
    });
    assert!(
        refused.is_some(),
        "QUIC ({out}) and TLS naming the app were not refused:\n{}",
        topo.log(&daemon.log)
    );
    // Nobody's plain connections to those addresses are steered: not client B's, nor A's own
    // toward the address it only sent QUIC to. (Before: both addresses were steered into the
    // proxy for every user for an hour.)
    let steered = session_count(&daemon, "steered");
    for (who, source, addr) in [
        ("B", Some(CLIENT_B_IP4), SERVER_IP4),
        ("B", Some(CLIENT_B_IP4), SERVER_ALT_IP4),
        ("A", None, SERVER_IP4),
    ] {
        let (ok, issuer) = fetch(&topo, &bundle, source, "slack.com", addr);
        assert!(
            ok && issuer.contains("tollgate-e2e-origin-ca"),
            "{who} -> {addr}: {ok} {issuer}"
        );
    }
    assert_eq!(
        session_count(&daemon, "steered"),
        steered,
        "a plain connection was steered into the proxy"
    );
    assert_eq!(session_count(&daemon, "dns_steered"), 0);
    assert!(
        !topo
            .log(&daemon.log)
            .contains("steering to the session proxy"),
        "an address was steered for everyone:\n{}",
        topo.log(&daemon.log)
    );
    daemon.stop();
}

#[test]
fn first_connection_without_a_dns_answer_is_refused_and_its_retry_is_proxied() {
    let test = "first_connection_without_a_dns_answer_is_refused_and_its_retry_is_proxied";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("sf", 1500).expect("topology");
    let origins = Origins::start(&mut topo, false).expect("origins");
    let (daemon, bundle) = session_daemon(&mut topo, &origins, "monitor", "");
    let c = topo.client.clone();
    topo.exec(&c, &format!("ip addr add {CLIENT_B_IP4}/24 dev c0"))
        .unwrap();
    // A hard-coded address (no DNS answer went through the gateway): the first connection is
    // refused at its hello, before the origin sees it (before: it went to the origin,
    // uninspected, with the origin's certificate).
    let (ok, issuer) = fetch(&topo, &bundle, None, "www.dropbox.com", SERVER_IP4);
    assert!(
        !ok,
        "the first connection escaped session control: {issuer}\n{:?}\n{}",
        daemon.query("status"),
        topo.log(&daemon.log)
    );
    // The retry goes through the proxy: Tollgate's certificate.
    let (ok, issuer) = fetch(&topo, &bundle, None, "www.dropbox.com", SERVER_IP4);
    assert!(
        ok && issuer.contains("Tollgate"),
        "retry not proxied: {ok} {issuer}\n{}",
        topo.log(&daemon.log)
    );
    assert!(session_count(&daemon, "session_refused") >= 1);
    assert!(session_count(&daemon, "steer_client_added") >= 1);
    assert!(session_count(&daemon, "steer_by_client") >= 1);
    // Client B is not steered by A's entry.
    let steered = session_count(&daemon, "steered");
    let (ok, issuer) = fetch(&topo, &bundle, Some(CLIENT_B_IP4), "slack.com", SERVER_IP4);
    assert!(
        ok && issuer.contains("tollgate-e2e-origin-ca"),
        "B: {ok} {issuer}"
    );
    assert_eq!(session_count(&daemon, "steered"), steered, "B was steered");
    daemon.stop();
}

#[test]
fn a_dns_answer_is_held_until_its_address_is_steered() {
    let test = "a_dns_answer_is_held_until_its_address_is_steered";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("sd", 1500).expect("topology");
    let origins = Origins::start(&mut topo, false).expect("origins");
    // Steer entries last one second, so that each round starts unsteered.
    let (daemon, bundle) = session_daemon(
        &mut topo,
        &origins,
        "monitor",
        "[enforcement]\nsteer_timeout_secs = 1\n",
    );
    const ROUNDS: u64 = 20;
    for round in 0..ROUNDS {
        std::thread::sleep(Duration::from_millis(2200));
        // The answer, then at once a connection to the address it gave.
        let out = topo.exec_any(
            &topo.client,
            &format!(
                "sh -c 'ip=$(dig +short +tries=1 +time=3 www.dropbox.com @{SERVER_IP4} | head -1); \
                 curl -sv --max-time 5 -o /dev/null --cacert {} --resolve www.dropbox.com:443:$ip https://www.dropbox.com/'",
                bundle.display()
            ),
        );
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success()
                && err
                    .lines()
                    .any(|l| l.contains("issuer:") && l.contains("Tollgate")),
            "round {round}: the first connection after the answer was not steered:\n{err}\n{}",
            topo.log(&daemon.log)
        );
    }
    // Every answer went through the hold, and no connection had to be refused.
    assert!(session_count(&daemon, "dns_held") >= ROUNDS);
    assert!(session_count(&daemon, "dns_released") >= ROUNDS);
    assert_eq!(session_count(&daemon, "session_refused"), 0);
    daemon.stop();
}

#[test]
fn steering_outlives_its_expiry_when_the_daemon_is_killed_fail_closed() {
    let test = "steering_outlives_its_expiry_when_the_daemon_is_killed_fail_closed";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("sk", 1500).expect("topology");
    let origins = Origins::start(&mut topo, false).expect("origins");
    let (daemon, bundle) = session_daemon(
        &mut topo,
        &origins,
        "enforce",
        "[enforcement]\nfail_open = false\nheartbeat_timeout_secs = 3\nsteer_timeout_secs = 3\n",
    );
    let c = topo.client.clone();
    topo.exec(&c, &format!("dig +short www.dropbox.com @{SERVER_IP4}"))
        .unwrap();
    let (ok, issuer) = fetch(&topo, &bundle, None, "www.dropbox.com", SERVER_IP4);
    assert!(
        ok && issuer.contains("Tollgate"),
        "not steered: {ok} {issuer}"
    );
    daemon.signal("KILL").expect("kill -9 the daemon");
    // Past the entry's expiry (3 s) and the heartbeat timeout (3 s): the steered address
    // stays refused (no proxy to take it) for every app on it, never direct. (Before: it went
    // direct, uninspected, once the entry expired.)
    std::thread::sleep(Duration::from_secs(8));
    for host in ["slack.com", "www.dropbox.com"] {
        let (ok, issuer) = fetch(&topo, &bundle, None, host, SERVER_IP4);
        assert!(!ok, "{host}: went direct after the daemon died: {issuer}");
    }
    // An address nobody steered still works.
    let (ok, _) = fetch(&topo, &bundle, None, "slack.com", SERVER_ALT_IP4);
    assert!(ok, "an unsteered address broke");
    // The daemon is gone: remove the programs and pins it left.
    daemon.stop();
}
