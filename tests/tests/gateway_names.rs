//! End to end: Tollgate on a forwarding gateway names every flow that real clients make
//! through it, and counts its bytes. Client offloads are off, so Chrome-sized hellos cross
//! the gateway as several segments.

use std::time::Duration;

use serde_json::Value;
use tollgate_e2e::servers::{
    BIG_FILE, Daemon, NOSNI_NAME, Origins, SERVER_ALT_IP4, SERVER_ALT_IP6, chromium_command,
    fixture,
};
use tollgate_e2e::{SERVER_IP4, SERVER_IP6, Topology, require_command, serial};

const WAIT: Duration = Duration::from_secs(8);

fn has(f: &Value, name: &str, source: &str, proto: &str) -> bool {
    f["name"] == name && f["name_source"] == source && f["proto"] == proto
}

fn ready(test: &str) -> bool {
    tollgate_e2e::ready(
        test,
        &["nginx", "dnsmasq", "curl", "openssl", "dig", "ethtool"],
        &["aioquic", "curl_cffi"],
    )
}

/// Every client kind through one gateway; `v6` picks the address family, `mtu` the links'.
fn names_and_counters(test: &str, mtu: u32, v6: bool) {
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new(if v6 { "n6" } else { "n4" }, mtu).expect("topology");
    let _origins = Origins::start(&mut topo, true).expect("origins");
    let daemon = Daemon::start(&mut topo, "monitor", "").expect("daemon");
    let c = topo.client.clone();
    let (ip, alt, bracket) = if v6 {
        (SERVER_IP6, SERVER_ALT_IP6, format!("[{SERVER_IP6}]"))
    } else {
        (SERVER_IP4, SERVER_ALT_IP4, SERVER_IP4.to_string())
    };

    // curl HTTP/1.1: a 1 MiB download, to check the byte counters.
    let out = topo
        .exec(
            &c,
            &format!(
                "curl -sk --http1.1 --resolve www.dropbox.com:443:{bracket} \
                 https://www.dropbox.com/1m.bin -o /dev/null -w %{{size_download}}"
            ),
        )
        .expect("curl http/1.1");
    assert_eq!(String::from_utf8_lossy(&out.stdout), BIG_FILE.to_string());
    // curl HTTP/2.
    topo.exec(
        &c,
        &format!(
            "curl -sk --http2 --resolve slack.com:443:{bracket} https://slack.com/ -o /dev/null"
        ),
    )
    .expect("curl http/2");
    // openssl s_client.
    topo.exec(
        &c,
        &format!(
            "sh -c 'echo Q | timeout 5 openssl s_client -connect {bracket}:443 -servername github.com >/dev/null 2>&1'"
        ),
    )
    .expect("openssl s_client");
    // Chrome's fingerprint (curl_cffi): ~2 KB post-quantum hello over several segments.
    let out = topo
        .exec(
            &c,
            &format!(
                "python3 {} https://www.youtube.com/ --resolve www.youtube.com:443:{ip}",
                fixture("chrome_get.py").display()
            ),
        )
        .expect("curl_cffi chrome");
    assert!(String::from_utf8_lossy(&out.stdout).contains("status=200"));
    // aioquic HTTP/3 client: the name comes from the decrypted Initial.
    let out = topo
        .exec(
            &c,
            &format!(
                "python3 {} --connect {ip} --sni meet.google.com --path /20000.bin",
                fixture("h3_client.py").display()
            ),
        )
        .expect("aioquic client");
    assert!(String::from_utf8_lossy(&out.stdout).contains("status=200 bytes=20000"));
    // Plain HTTP: the Host header.
    topo.exec(
        &c,
        &format!("curl -s -H 'Host: zoom.us' http://{bracket}/ -o /dev/null"),
    )
    .expect("curl http");
    // dig: the DNS flow is named by its query; the answer names a later flow without SNI.
    let rr = if v6 { "AAAA" } else { "A" };
    let out = topo
        .exec(&c, &format!("dig +short {rr} {NOSNI_NAME} @{SERVER_IP4}"))
        .expect("dig");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), alt);
    let alt_bracket = if v6 {
        format!("[{alt}]")
    } else {
        alt.to_string()
    };
    topo.exec(
        &c,
        &format!(
            "sh -c 'echo Q | timeout 5 openssl s_client -connect {alt_bracket}:443 -noservername >/dev/null 2>&1'"
        ),
    )
    .expect("openssl without SNI");

    let expect = [
        ("www.dropbox.com", "sni", "tcp"),
        ("slack.com", "sni", "tcp"),
        ("github.com", "sni", "tcp"),
        ("www.youtube.com", "sni", "tcp"),
        ("meet.google.com", "quic", "udp"),
        ("zoom.us", "http", "tcp"),
        (NOSNI_NAME, "dns", "udp"),
    ];
    for (name, source, proto) in expect {
        let found = daemon.wait_flow(WAIT, |f| has(f, name, source, proto));
        assert!(
            found.is_some(),
            "{test}: no {proto} flow named {name} by {source}; flows: {:#}",
            daemon.query("flows").unwrap_or_default()
        );
    }
    // The no-SNI TLS flow to the address only DNS named.
    let nosni = daemon
        .wait_flow(WAIT, |f| {
            f["dst"] == alt && f["dport"] == 443 && f["proto"] == "tcp"
        })
        .expect("the no-SNI flow");
    assert_eq!(nosni["name"], NOSNI_NAME, "{nosni:#}");
    assert_eq!(nosni["name_source"], "dns", "{nosni:#}");

    // Byte counters: L3 bytes of a 1 MiB body over TLS, within header overhead.
    let big = daemon
        .wait_flow(WAIT, |f| {
            has(f, "www.dropbox.com", "sni", "tcp")
                && f["bytes_down"].as_u64().unwrap_or(0) > BIG_FILE as u64
        })
        .expect("the 1 MiB download's flow with its counters");
    let down = big["bytes_down"].as_u64().unwrap_or(0) as f64;
    assert!(
        down >= BIG_FILE as f64 && down <= BIG_FILE as f64 * 1.12,
        "bytes_down {down} for a {BIG_FILE}-byte body"
    );
    assert!(big["packets_down"].as_u64().unwrap_or(0) > (BIG_FILE / mtu as usize) as u64 / 2);
    assert!(
        big["bytes_up"].as_u64().unwrap_or(0) > 0 && big["packets_up"].as_u64().unwrap_or(0) > 3
    );
    for key in ["first_seen", "last_seen"] {
        let t = big[key].as_str().unwrap_or("");
        assert!(chrono_like_rfc3339(t), "{key} = {t:?} is not RFC 3339");
    }
    // Discovery: the named flows are apps.
    let apps = daemon.query("apps").expect("apps");
    let ids: Vec<&str> = apps
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    for id in ["dropbox", "slack", "github", "zoom"] {
        assert!(ids.contains(&id), "{id} missing from apps: {ids:?}");
    }
    daemon.stop();
}

fn chrono_like_rfc3339(t: &str) -> bool {
    t.len() >= 20
        && t.as_bytes().get(4) == Some(&b'-')
        && t.contains('T')
        && (t.ends_with('Z') || t.contains('+'))
}

#[test]
fn names_and_counters_ipv4_mtu1500() {
    names_and_counters("names_and_counters_ipv4_mtu1500", 1500, false);
}

#[test]
fn names_and_counters_ipv4_mtu1400() {
    names_and_counters("names_and_counters_ipv4_mtu1400", 1400, false);
}

#[test]
fn names_and_counters_ipv6_mtu1500() {
    names_and_counters("names_and_counters_ipv6_mtu1500", 1500, true);
}

/// Chrome's hello at MTU 1400 without offloads does not fit one segment: the gateway must
/// reassemble it. Many connections, every one named.
#[test]
fn chrome_hellos_split_over_segments_are_all_named() {
    let test = "chrome_hellos_split_over_segments_are_all_named";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("cs", 1400).expect("topology");
    let _origins = Origins::start(&mut topo, false).expect("origins");
    let daemon = Daemon::start(&mut topo, "monitor", "").expect("daemon");
    let c = topo.client.clone();
    const N: usize = 20;
    for _ in 0..N {
        let out = topo
            .exec(
                &c,
                &format!(
                    "python3 {} https://chat.openai.com/ --resolve chat.openai.com:443:{SERVER_IP4}",
                    fixture("chrome_get.py").display()
                ),
            )
            .expect("curl_cffi");
        assert!(String::from_utf8_lossy(&out.stdout).contains("status=200"));
    }
    let flows = tollgate_e2e::wait_for(WAIT, || {
        let f = daemon.query("flows").ok()?;
        let tls: Vec<Value> = f
            .as_array()?
            .iter()
            .filter(|f| f["dport"] == 443 && f["proto"] == "tcp")
            .cloned()
            .collect();
        (tls.len() >= N && tls.iter().all(|f| f["name"] != Value::Null)).then_some(tls)
    });
    let flows = flows.unwrap_or_else(|| {
        panic!(
            "not all {N} flows named: {:#}",
            daemon.query("flows").unwrap_or_default()
        )
    });
    assert!(
        flows
            .iter()
            .all(|f| f["name"] == "chat.openai.com" && f["name_source"] == "sni")
    );
    daemon.stop();
}

/// kill -9 leaves the programs pinned; a new daemon adopts them instead of attaching twice,
/// and goes on naming flows.
#[test]
fn restart_after_kill9_adopts_pins() {
    let test = "restart_after_kill9_adopts_pins";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("rs", 1500).expect("topology");
    let _origins = Origins::start(&mut topo, false).expect("origins");
    let daemon = Daemon::start(&mut topo, "monitor", "").expect("daemon");
    let gw = topo.gateway.clone();
    // TCX on this kernel, unless the whole suite runs with the tc fallback forced
    // (`TOLLGATE_ATTACH=tc cargo test ...`: the daemons inherit it).
    let forced_tc = std::env::var("TOLLGATE_ATTACH").is_ok_and(|v| v == "tc");
    let status = daemon.query("status").expect("status");
    let want = if forced_tc { "tc" } else { "tcx" };
    assert_eq!(status["attach_mode"], want, "{status:#}");
    topo.kill9(&format!("--netns {gw}"));
    let dead = tollgate_e2e::wait_for(Duration::from_secs(5), || {
        daemon.query("status").is_err().then_some(())
    });
    assert!(dead.is_some(), "the daemon still answers after kill -9");
    let links = |topo: &Topology| {
        let out = topo.exec_any(&gw, "bpftool net show dev gc");
        String::from_utf8_lossy(&out.stdout).matches("tcx/").count()
    };
    let before = links(&topo);
    daemon.spawn(&mut topo).expect("restart");
    let log = topo.log(&daemon.log);
    assert!(
        log.contains("adopted"),
        "restart did not adopt the pins:\n{log}"
    );
    let after = links(&topo);
    if before > 0 {
        assert_eq!(before, after, "attached twice");
    }
    let c = topo.client.clone();
    topo.exec(
        &c,
        &format!("curl -sk --resolve github.com:443:{SERVER_IP4} https://github.com/ -o /dev/null"),
    )
    .expect("curl");
    assert!(
        daemon
            .wait_flow(WAIT, |f| has(f, "github.com", "sni", "tcp"))
            .is_some()
    );
    daemon.stop();
}

/// The tc clsact fallback (what kernels before 6.6 get), forced with `TOLLGATE_ATTACH=tc`:
/// the daemon says so in its status, a kill -9 leaves its filters attached, the restart
/// replaces their programs (no second filter), flows are still named by SNI, and `tollgate
/// stop` leaves no filter, with the daemon running or after a crash.
#[test]
fn tc_fallback_restart_after_kill9_replaces_its_filter() {
    let test = "tc_fallback_restart_after_kill9_replaces_its_filter";
    if !ready(test) || !require_command(test, "tc") {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("tc", 1500).expect("topology");
    let _origins = Origins::start(&mut topo, false).expect("origins");
    let daemon = Daemon::prepare(&mut topo, "monitor", "").expect("config");
    daemon
        .spawn_env(&mut topo, "TOLLGATE_ATTACH=tc", "")
        .expect("daemon");
    let gw = topo.gateway.clone();
    let status = daemon.query("status").expect("status");
    assert_eq!(status["attach_mode"], "tc", "{status:#}");
    // Our filters on the LAN interface: one per hook, none of them TCX.
    let filters = |topo: &Topology, hook: &str| {
        let out = topo.exec_any(&gw, &format!("tc filter show dev gc {hook}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ours = |topo: &Topology| {
        ["ingress", "egress"].map(|h| {
            filters(topo, h)
                .lines()
                .filter(|l| l.contains(" bpf ") && l.contains("handle 0x74670001"))
                .count()
        })
    };
    let tcx = |topo: &Topology| {
        let out = topo.exec_any(&gw, "bpftool net show dev gc");
        String::from_utf8_lossy(&out.stdout).matches("tcx/").count()
    };
    assert_eq!(ours(&topo), [1, 1], "{}", filters(&topo, "ingress"));
    assert_eq!(tcx(&topo), 0, "attached with TCX although tc was forced");

    topo.kill9(&format!("--netns {gw}"));
    let dead = tollgate_e2e::wait_for(Duration::from_secs(5), || {
        daemon.query("status").is_err().then_some(())
    });
    assert!(dead.is_some(), "the daemon still answers after kill -9");
    assert_eq!(ours(&topo), [1, 1], "a crash leaves the filters attached");
    daemon
        .spawn_env(&mut topo, "TOLLGATE_ATTACH=tc", "")
        .expect("restart");
    let log = topo.log(&daemon.log);
    assert!(
        log.contains("attach mode tc") && log.contains("adopted our tc filter"),
        "restart did not replace its filters:\n{log}"
    );
    assert_eq!(ours(&topo), [1, 1], "attached twice");
    let c = topo.client.clone();
    topo.exec(
        &c,
        &format!("curl -sk --resolve github.com:443:{SERVER_IP4} https://github.com/ -o /dev/null"),
    )
    .expect("curl");
    assert!(
        daemon
            .wait_flow(WAIT, |f| has(f, "github.com", "sni", "tcp"))
            .is_some()
    );
    daemon.stop();
    let gone = tollgate_e2e::wait_for(Duration::from_secs(5), || {
        (filters(&topo, "ingress").trim().is_empty() && filters(&topo, "egress").trim().is_empty())
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "filters left after stop: {}",
        filters(&topo, "ingress")
    );

    // A crash, then `tollgate stop` with no daemon to answer: the filters have no pin to
    // remove, so stop deletes them in the instance's namespace.
    daemon
        .spawn_env(&mut topo, "TOLLGATE_ATTACH=tc", "")
        .expect("third start");
    assert_eq!(ours(&topo), [1, 1]);
    topo.kill9(&format!("--netns {gw}"));
    let dead = tollgate_e2e::wait_for(Duration::from_secs(5), || {
        daemon.query("status").is_err().then_some(())
    });
    assert!(dead.is_some(), "the daemon still answers after kill -9");
    let out = daemon
        .cli(&["stop", "--netns", &gw])
        .expect("tollgate stop");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && said.contains("2 tc filter(s)"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        filters(&topo, "ingress").trim().is_empty() && filters(&topo, "egress").trim().is_empty(),
        "filters left after stop without a daemon: {}",
        filters(&topo, "ingress")
    );
}

/// Headless Chromium through the gateway: a TLS page load over TCP, and a page forced onto
/// QUIC (HTTP/3 to the aioquic origin), each named.
#[test]
fn chromium_tcp_and_quic_are_named() {
    let test = "chromium_tcp_and_quic_are_named";
    if !ready(test) || !require_command(test, "chromium") {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("ch", 1500).expect("topology");
    let _origins = Origins::start(&mut topo, true).expect("origins");
    let daemon = Daemon::start(&mut topo, "monitor", "").expect("daemon");
    let c = topo.client.clone();
    let chromium =
        |extra: &str, url: &str| chromium_command(&topo, extra, url).expect("chromium command");
    let out = topo.exec_any(
        &c,
        &chromium("--disable-quic", "https://www.salesforce.com/"),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("origin"),
        "chromium over TCP: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = topo.exec_any(
        &c,
        &chromium(
            "--enable-quic --origin-to-force-quic-on=meet.google.com:443",
            "https://meet.google.com/",
        ),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello over h3"),
        "chromium over QUIC: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        daemon
            .wait_flow(WAIT, |f| has(f, "www.salesforce.com", "sni", "tcp"))
            .is_some()
    );
    assert!(
        daemon
            .wait_flow(WAIT, |f| has(f, "meet.google.com", "quic", "udp"))
            .is_some(),
        "{:#}",
        daemon.query("flows").unwrap_or_default()
    );
    daemon.stop();
}

/// A LAN client's SNI is its own choice of bytes: an escape sequence that would retitle
/// and clear the admin's terminal, and a multi-byte character where the table cuts the name
/// (which made `tollgate flows` panic). The daemon keeps the name escaped, the table prints
/// it escaped and cut on a character boundary.
#[test]
fn hostile_sni_is_escaped_in_the_flows_table() {
    let test = "hostile_sni_is_escaped_in_the_flows_table";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("hs", 1500).expect("topology");
    let _origins = Origins::start(&mut topo, false).expect("origins");
    let daemon = Daemon::start(&mut topo, "monitor", "").expect("daemon");
    // 32 ASCII bytes, 'é' across the table's old cut at byte 33, then ESC ] 0 ; .. BEL
    // (set the terminal's title) and ESC [2J (clear the screen).
    let sni = format!(
        "{}\u{e9}\u{e9}\u{1b}]0;owned\u{7}\u{1b}[2J.example",
        "a".repeat(32)
    );
    let hex: String = sni.bytes().map(|b| format!("{b:02x}")).collect();
    topo.exec(
        &topo.client,
        &format!(
            "python3 {} {SERVER_IP4} 443 {hex}",
            fixture("raw_hello.py").display()
        ),
    )
    .expect("raw hello");
    let escaped = format!(
        "{}\\xc3\\xa9\\xc3\\xa9\\x1b\\x5d0\\x3bowned\\x07\\x1b\\x5b2J.example",
        "a".repeat(32)
    );
    let flow = daemon.wait_flow(WAIT, |f| f["name_source"] == "sni" && f["dport"] == 443);
    let flow = flow.unwrap_or_else(|| {
        panic!(
            "{test}: no SNI flow; flows: {:#}",
            daemon.query("flows").unwrap_or_default()
        )
    });
    assert_eq!(flow["name"], escaped.as_str(), "{flow:#}");
    let out = daemon.cli(&["flows"]).expect("tollgate flows");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{test}: tollgate flows failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.stdout.iter().any(|&b| b < 0x20 && b != b'\n'),
        "raw control bytes in the table: {table:?}"
    );
    assert!(table.contains(&format!("{}\\~", "a".repeat(32))), "{table}");
    daemon.stop();
}
