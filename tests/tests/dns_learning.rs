//! End to end: DNS answers are evidence, not orders, and a restart converges on the config.
//! Spoofed answers are sent from the server namespace with a raw socket (any source address,
//! as anyone on the internet can) through the real gateway running the real daemon.

use std::time::{Duration, Instant};

use tollgate_e2e::servers::{Daemon, Origins, SERVER_ALT_IP4, SERVER_ALT_IP6, fixture};
use tollgate_e2e::{CLIENT_IP4, GW_C_IP4, SERVER_IP4, Topology, serial, wait_for};

fn ready(test: &str) -> bool {
    tollgate_e2e::ready(
        test,
        &["nginx", "dnsmasq", "curl", "openssl", "dig", "python3"],
        &[],
    )
}

fn attempt(topo: &Topology, cmd: &str) -> (bool, f64, String) {
    let t = Instant::now();
    let out = topo.exec_any(&topo.client, cmd);
    (
        out.status.success(),
        t.elapsed().as_secs_f64(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A TLS connection with no SNI to `ip`: only an address verdict can block it.
fn no_sni(ip: &str) -> String {
    format!("sh -c 'echo Q | timeout 5 openssl s_client -connect {ip}:443 -noservername'")
}

fn curl_slack() -> String {
    format!(
        "curl -sk --max-time 5 --resolve slack.com:443:{SERVER_IP4} https://slack.com/ -o /dev/null"
    )
}

/// Sends a query from the client (port `sport`) to `server`:53, where nothing answers.
fn query(topo: &Topology, server: &str, sport: u16, id: u16, qname: &str) {
    topo.exec(
        &topo.client,
        &format!(
            "python3 {} query --server {server} --sport {sport} --id {id} --qname {qname}",
            fixture("dns_spoof.py").display()
        ),
    )
    .expect("query");
}

/// Sends forged answers from `src`:53 to the client's `dport`, from the server namespace.
fn answer(topo: &Topology, src: &str, dport: u16, id: u16, qname: &str, extra: &str) {
    topo.exec(
        &topo.server,
        &format!(
            "python3 {} answer --src {src} --dst {CLIENT_IP4} --dport {dport} --id {id} --qname {qname} {extra}",
            fixture("dns_spoof.py").display()
        ),
    )
    .expect("answer");
}

fn status(d: &Daemon) -> serde_json::Value {
    d.query("status").expect("status")
}

fn counter(s: &serde_json::Value, k: &str) -> u64 {
    s[k].as_u64().unwrap_or(0)
}

/// Waits until the status counter `k` reaches `min`.
fn wait_counter(d: &Daemon, k: &str, min: u64) -> serde_json::Value {
    wait_for(Duration::from_secs(5), || {
        let s = status(d);
        (counter(&s, k) >= min).then_some(s)
    })
    .unwrap_or_else(|| panic!("{k} never reached {min}: {:#}", status(d)))
}

const CONFIG: &str =
    "[apps.dropbox]\ntag = \"unsanctioned\"\n\n[apps.box]\ntag = \"unsanctioned\"\n";

#[test]
fn spoofed_dns_answers_block_nothing() {
    let test = "spoofed_dns_answers_block_nothing";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("ds", 1500).expect("topology");
    let _origins = Origins::start(&mut topo, false).expect("origins");
    let config = format!(
        "{CONFIG}\n[enforcement]\ndns_block_floor_secs = 60\nnever_block = [\"198.18.2.128/25\"]\n"
    );
    let daemon = Daemon::start(&mut topo, "enforce", &config).expect("daemon");
    let ok = |what: &str| {
        let (ok, _, out) = attempt(&topo, &curl_slack());
        assert!(
            ok,
            "{what}: slack.com at {SERVER_IP4} no longer works: {out}"
        );
    };
    ok("before");

    // 1. Unsolicited answers from the WAN side naming the innocent server for a blocked app,
    //    with a TTL of ~136 years: the kernel does not even pass them on.
    answer(
        &topo,
        SERVER_IP4,
        40000,
        7,
        "www.dropbox.com",
        &format!("--ip {SERVER_IP4} --ttl 4000000000 --count 200"),
    );
    let s = wait_counter(&daemon, "dns_answers_unsolicited_kernel", 200);
    ok("after 200 unsolicited answers");
    assert_eq!(counter(&s, "dns_learned"), 0, "{s:#}");

    // 2. A query is pending (to an address where nothing answers); answers with a wrong
    //    transaction id, or the right id and another question, are refused in userspace.
    query(&topo, SERVER_ALT_IP4, 40001, 0x1234, "slack.com");
    answer(
        &topo,
        SERVER_ALT_IP4,
        40001,
        0x1235,
        "slack.com",
        &format!("--ip {SERVER_IP4}"),
    );
    answer(
        &topo,
        SERVER_ALT_IP4,
        40001,
        0x1234,
        "www.dropbox.com",
        &format!("--ip {SERVER_IP4}"),
    );
    let s = wait_counter(&daemon, "dns_answers_wrong_question", 1);
    assert!(counter(&s, "dns_answers_unmatched") >= 1, "{s:#}");
    assert_eq!(counter(&s, "dns_learned"), 0, "{s:#}");
    ok("after answers with a wrong id and a wrong question");

    // 3. Protected addresses, in an answer that matches its query: loopback, link-local,
    //    multicast, the gateway's own address, a never_block CIDR. Nothing is learned.
    query(&topo, SERVER_ALT_IP4, 40002, 0x2222, "www.dropbox.com");
    answer(
        &topo,
        SERVER_ALT_IP4,
        40002,
        0x2222,
        "www.dropbox.com",
        &format!(
            "--ip 127.0.0.1 --ip 169.254.1.1 --ip 224.0.0.1 --ip {GW_C_IP4} --ip 198.18.2.200"
        ),
    );
    let s = wait_counter(&daemon, "dns_answers_protected", 5);
    assert_eq!(counter(&s, "dns_learned"), 0, "{s:#}");

    // 4. The control: the same forged answer, matching a pending query (as an on-path
    //    resolver's answer would), is learned and blocks, with its TTL capped to a day.
    let (ok_before, _, out) = attempt(&topo, &no_sni(SERVER_ALT_IP4));
    assert!(ok_before, "no-SNI TLS to {SERVER_ALT_IP4} before: {out}");
    query(&topo, SERVER_ALT_IP4, 40003, 0x3333, "www.dropbox.com");
    answer(
        &topo,
        SERVER_ALT_IP4,
        40003,
        0x3333,
        "www.dropbox.com",
        &format!("--ip {SERVER_ALT_IP4} --ttl 4000000000"),
    );
    let s = wait_counter(&daemon, "dns_learned", 1);
    assert!(counter(&s, "dns_ttl_capped") >= 1, "{s:#}");
    let (ok_after, secs, out) = attempt(&topo, &no_sni(SERVER_ALT_IP4));
    assert!(
        !ok_after && secs < 1.5,
        "a matched answer did not block: {out}"
    );
    // Persisted with its capped expiry (the file is written by the next housekeeping).
    let path = daemon.state_dir.join("learned_ips.json");
    let learned = wait_for(Duration::from_secs(10), || {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        v.as_array()?
            .iter()
            .find(|r| r["ip"] == SERVER_ALT_IP4)
            .cloned()
    })
    .expect("learned_ips.json names the learned address");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expires = learned["expires"].as_u64().unwrap_or(u64::MAX);
    assert!(
        expires <= now + 86_400 + 120,
        "TTL not capped: expires {expires}, now {now}"
    );
    // 5. A real dig through the gateway still learns and blocks (IPv6 this time).
    let (ok_dig, _, ip6) = attempt(
        &topo,
        &format!("dig +short AAAA files.box.com @{SERVER_IP4}"),
    );
    assert!(ok_dig && ip6.trim() == SERVER_ALT_IP6, "dig: {ip6}");
    wait_counter(&daemon, "dns_learned", 2);
    let (ok6, secs, out) = attempt(
        &topo,
        &format!(
            "sh -c 'echo Q | timeout 5 openssl s_client -connect [{SERVER_ALT_IP6}]:443 -noservername'"
        ),
    );
    assert!(
        !ok6 && secs < 1.5,
        "the dig-learned address is not blocked: {out}"
    );
    ok("at the end");
    daemon.stop();
}

#[test]
fn learned_addresses_are_bounded_and_rate_limited_per_client() {
    let test = "learned_addresses_are_bounded_and_rate_limited_per_client";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("dr", 1500).expect("topology");
    let _origins = Origins::start(&mut topo, false).expect("origins");
    let config = format!(
        "{CONFIG}\n[enforcement]\ndns_learned_max = 16\ndns_learn_per_client_per_min = 40\n"
    );
    let daemon = Daemon::start(&mut topo, "enforce", &config).expect("daemon");
    // One client, 60 matched answers each naming a new public address (one record each, TTLs
    // growing): about 40 are learned (its allowance, refilled a little while the test runs),
    // the budget of 16 evicts the rest nearest expiry first, the others are refused.
    // One process each, so that the whole batch takes well under a second of the allowance.
    query(
        &topo,
        SERVER_ALT_IP4,
        41000,
        0x100,
        "www.dropbox.com --count 60 --seq",
    );
    answer(
        &topo,
        SERVER_ALT_IP4,
        41000,
        0x100,
        "www.dropbox.com",
        "--ip 93.184.0.1 --ttl 600 --count 60 --seq",
    );
    let s = wait_counter(&daemon, "dns_answers_matched", 60);
    let limited = counter(&s, "dns_learn_rate_limited");
    let evicted = counter(&s, "dns_learned_evicted");
    assert_eq!(counter(&s, "dns_learned"), 16, "{s:#}");
    assert!(limited >= 15, "{s:#}");
    assert_eq!(16 + evicted + limited, 60, "{s:#}");
    // The survivors are the freshest (longest-lived) entries: the first learned went first.
    let path = daemon.state_dir.join("learned_ips.json");
    let text = wait_for(Duration::from_secs(10), || {
        let t = std::fs::read_to_string(&path).ok()?;
        (t.matches("93.184.").count() == 16).then_some(t)
    })
    .expect("learned_ips.json");
    assert!(!text.contains("\"93.184.0.1\""), "{text}");
    assert_eq!(text.matches("93.184.").count(), 16, "{text}");
    daemon.stop();
}

/// The IPv4 block prefixes in the daemon's pinned trie, as "a.b.c.d/len".
fn pinned_prefixes(topo: &Topology) -> Vec<String> {
    // The pins of this ABI version (ebpf/common ABI_VERSION).
    let path = format!(
        "/sys/fs/bpf/tollgate/{}/abi7/maps/TG_BLOCK_V4",
        topo.gateway
    );
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned", &path])
        .output()
        .expect("bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    let key: Vec<u64> = e["key"]
                        .as_array()?
                        .iter()
                        .filter_map(|b| {
                            b.as_str().and_then(|s| {
                                u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
                            })
                        })
                        .collect();
                    // struct { u32 prefixlen; u8 data[4]; }
                    (key.len() == 8)
                        .then(|| format!("{}.{}.{}.{}/{}", key[4], key[5], key[6], key[7], key[0]))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn restart_converges_on_the_config() {
    let test = "restart_converges_on_the_config";
    if !ready(test) || !tollgate_e2e::require_command(test, "bpftool") {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("dk", 1500).expect("topology");
    let _origins = Origins::start(&mut topo, false).expect("origins");
    let config = format!("{CONFIG}\n[enforcement]\ndns_block_floor_secs = 1\n");
    let daemon = Daemon::start(&mut topo, "enforce", &config).expect("daemon");
    let dropbox = format!(
        "curl -sk --max-time 5 --resolve www.dropbox.com:443:{SERVER_IP4} https://www.dropbox.com/ -o /dev/null"
    );
    let (ok, _, out) = attempt(&topo, &dropbox);
    assert!(!ok, "dropbox not blocked at first: {out}");
    // An answer to a query of the client learns files.box.com's address for an hour (dnsmasq
    // gives its own names a TTL of 0, too short to outlive a restart)...
    query(&topo, "198.18.2.9", 42001, 0x4243, "files.box.com");
    answer(
        &topo,
        "198.18.2.9",
        42001,
        0x4243,
        "files.box.com",
        &format!("--ip {SERVER_ALT_IP4} --ttl 3600"),
    );
    // ...and a matched answer with a 16-second TTL learns one for the same (still blocked)
    // app that expires while the daemon is down.
    query(&topo, "198.18.2.9", 42000, 0x4242, "files.box.com");
    answer(
        &topo,
        "198.18.2.9",
        42000,
        0x4242,
        "files.box.com",
        "--ip 93.184.216.34 --ttl 16",
    );
    wait_counter(&daemon, "dns_learned", 2);
    let learned_at = Instant::now();
    let before = pinned_prefixes(&topo);
    assert!(
        before.contains(&format!("{SERVER_ALT_IP4}/32"))
            && before.contains(&"93.184.216.34/32".to_string()),
        "{before:?}"
    );
    // The file is written by the housekeeping (every 2 s).
    let path = daemon.state_dir.join("learned_ips.json");
    wait_for(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&path).ok()?;
        (text.contains(SERVER_ALT_IP4) && text.contains("93.184.216.34")).then_some(())
    })
    .expect("learned_ips.json");

    // SIGTERM: the programs and maps stay pinned.
    daemon.signal("TERM").expect("SIGTERM");
    wait_for(Duration::from_secs(10), || {
        (!daemon.socket.exists()).then_some(())
    })
    .expect("the daemon did not exit");
    // Past the short entry's expiry, with the daemon down.
    std::thread::sleep(Duration::from_secs(18).saturating_sub(learned_at.elapsed()));
    // Dropbox untagged while the daemon was down.
    let text = std::fs::read_to_string(&daemon.config).expect("config");
    std::fs::write(
        &daemon.config,
        text.replace("[apps.dropbox]\ntag = \"unsanctioned\"\n", ""),
    )
    .expect("config");
    daemon.spawn(&mut topo).expect("restart");
    // The first attempt once the daemon answers (it reconciles before it listens).
    let (ok, _, out) = attempt(&topo, &dropbox);
    assert!(ok, "dropbox still blocked after the restart: {out}");
    // The live learned address survived the restart; the expired one is gone from the
    // kernel.
    let after = pinned_prefixes(&topo);
    assert!(after.contains(&format!("{SERVER_ALT_IP4}/32")), "{after:?}");
    assert!(
        !after.contains(&"93.184.216.34/32".to_string()),
        "{after:?}"
    );
    let (ok, secs, out) = attempt(&topo, &no_sni(SERVER_ALT_IP4));
    assert!(
        !ok && secs < 1.5,
        "the persisted address is not blocked: {out}"
    );
    daemon.stop();
}

/// With a LAN and a WAN interface the answer's WAN copy is counted on WAN ingress and its
/// LAN egress copy (after de-NAT on a real gateway) is the one matched to the user's query:
/// a real dig still learns and blocks, a spoofed answer still changes nothing.
#[test]
fn lan_and_wan_hooks_learn_only_from_answers_to_queries() {
    let test = "lan_and_wan_hooks_learn_only_from_answers_to_queries";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new("dw", 1500).expect("topology");
    let _origins = Origins::start(&mut topo, false).expect("origins");
    let config = format!("{CONFIG}\n[[interfaces]]\nname = \"gs\"\nrole = \"wan\"\n");
    let daemon = Daemon::start(&mut topo, "enforce", &config).expect("daemon");
    answer(
        &topo,
        SERVER_IP4,
        40000,
        7,
        "www.dropbox.com",
        &format!("--ip {SERVER_IP4} --count 50"),
    );
    let s = wait_counter(&daemon, "dns_answers_unsolicited_kernel", 50);
    assert_eq!(counter(&s, "dns_learned"), 0, "{s:#}");
    let (ok, _, out) = attempt(&topo, &curl_slack());
    assert!(ok, "slack after spoofed answers: {out}");
    let (ok, _, ip) = attempt(&topo, &format!("dig +short files.box.com @{SERVER_IP4}"));
    assert!(ok && ip.trim() == SERVER_ALT_IP4, "dig: {ip}");
    let s = wait_counter(&daemon, "dns_learned", 1);
    assert_eq!(counter(&s, "dns_answers_matched"), 1, "{s:#}");
    let (ok, secs, out) = attempt(&topo, &no_sni(SERVER_ALT_IP4));
    assert!(
        !ok && secs < 1.5,
        "the dig-learned address is not blocked: {out}"
    );
    daemon.stop();
}
