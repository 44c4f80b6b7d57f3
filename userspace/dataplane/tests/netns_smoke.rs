//! End-to-end smoke test in a namespace pair of our own (prefix `tgd-`): attach the probes to
//! the server side's veth as a "lan" interface (ingress is up: packets from the client), run
//! curl and openssl s_client against `openssl s_server`, and check events (a ClientHello split
//! over segments by a small MTU with offloads off on the client), counters, pin adoption on
//! restart and detach. (The probes sit where segments arrive: on the sending host's own egress
//! TCP hands TC unsegmented GSO packets even with offloads off.)
//!
//! The capture/adopt/detach and the enforcement cases run twice: attached with TCX, and with
//! the tc clsact fallback forced (what kernels before 6.6 get), which must count, capture,
//! block, survive a restart without a second filter, and leave no filter after detach.
//! Needs root and ip/openssl/curl/ethtool (and tc for the fallback); skips with a message
//! otherwise.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, tc::TcAttachType};
use tollgate_dataplane::{
    Action, AttachMode, AttachRequest, Dataplane, DataplaneOptions, Direction, Mode, PayloadEvent,
    PayloadKind, Role, testing::is_root,
};

mod common;
use common::{Topo, ns_exec, sh};

const SERVER_IP: &str = "198.19.203.2";
const CLIENT_IP: &str = "198.19.203.1";
const SNI: &str = "smoke.tollgate.test";

fn tools_present() -> bool {
    common::tools_present(&["ip", "openssl", "curl", "ethtool"])
}

fn setup_named(tag: &str) -> Topo {
    setup_mtu(tag, 400)
}

fn setup_mtu(tag: &str, mtu: u32) -> Topo {
    let id = std::process::id();
    let client_ns = format!("tgd-c{tag}{id}");
    let server_ns = format!("tgd-s{tag}{id}");
    let dir = std::env::temp_dir().join(format!("tgd-smoke{tag}-{id}"));
    fs::create_dir_all(&dir).unwrap();
    let topo = Topo {
        client_ns: client_ns.clone(),
        server_ns: server_ns.clone(),
        children: Vec::new(),
        dir,
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/tollgate/tgd-smoke{tag}-{id}")),
    };
    for ns in [&client_ns, &server_ns] {
        assert!(sh(&["ip", "netns", "add", ns]), "ip netns add {ns}");
        assert!(ns_exec(ns, &["ip", "link", "set", "lo", "up"]));
    }
    assert!(sh(&[
        "ip", "link", "add", "tgdc0", "netns", &client_ns, "type", "veth", "peer", "name", "tgds0",
        "netns", &server_ns
    ]));
    // A small MTU so that the ClientHello spans segments; offloads off on the sending side so
    // that the probes see those segments.
    assert!(ns_exec(
        &client_ns,
        &[
            "ip",
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            "tgdc0"
        ]
    ));
    assert!(ns_exec(
        &server_ns,
        &[
            "ip",
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            "tgds0"
        ]
    ));
    for (ns, dev) in [(&client_ns, "tgdc0"), (&server_ns, "tgds0")] {
        let mtu = mtu.to_string();
        assert!(ns_exec(ns, &["ip", "link", "set", dev, "mtu", &mtu, "up"]));
        let _ = ns_exec(
            ns,
            &[
                "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off",
            ],
        );
    }
    topo
}

fn start_server(topo: &mut Topo) {
    let key = topo.dir.join("key.pem");
    let cert = topo.dir.join("cert.pem");
    assert!(sh(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        &format!("/CN={SNI}"),
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap()
    ]));
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.server_ns,
            "openssl",
            "s_server",
            "-accept",
            "4433",
            "-www",
        ])
        .arg("-key")
        .arg(&key)
        .arg("-cert")
        .arg(&cert)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    topo.children.push(child);
}

fn curl(client_ns: &str) -> bool {
    curl_name(client_ns, SNI)
}

fn curl_name(client_ns: &str, name: &str) -> bool {
    ns_exec(
        client_ns,
        &[
            "curl",
            "-sk",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "--resolve",
            &format!("{name}:4433:{SERVER_IP}"),
            &format!("https://{name}:4433/"),
        ],
    )
}

fn s_client(client_ns: &str) -> bool {
    let cmd = format!(
        "timeout 5 openssl s_client -connect {SERVER_IP}:4433 -servername {SNI} </dev/null"
    );
    ns_exec(client_ns, &["sh", "-c", &cmd])
}

/// Runs `f` on a thread that has entered namespace `ns`, with a tokio runtime.
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce(&tokio::runtime::Runtime) -> T + Send + 'static,
) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = fs::File::open(&path).unwrap();
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        f(&rt)
    })
    .join()
    .unwrap()
}

fn tcx_count(hook: TcAttachType) -> usize {
    SchedClassifier::query_tcx("tgds0", hook)
        .map(|(_, progs)| progs.len())
        .unwrap_or(0)
}

/// `tc filter show dev tgds0 <hook>` in the current namespace (empty without a clsact
/// qdisc).
fn tc_filters(hook: &str) -> String {
    let out = Command::new("tc")
        .args(["filter", "show", "dev", "tgds0", hook])
        .output()
        .expect("tc filter show");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Our cls_bpf filters on tgds0 at `hook`: the lines that carry our handle.
fn tc_count(hook: &str) -> usize {
    let handle = format!("handle {:#x}", tollgate_dataplane::TC_HANDLE);
    tc_filters(hook)
        .lines()
        .filter(|l| l.contains(" bpf ") && l.contains(&handle))
        .count()
}

/// Programs attached to tgds0 as (TCX ingress, TCX egress, tc ingress, tc egress).
type Counts = (usize, usize, usize, usize);

fn hook_counts() -> Counts {
    (
        tcx_count(TcAttachType::Ingress),
        tcx_count(TcAttachType::Egress),
        tc_count("ingress"),
        tc_count("egress"),
    )
}

/// What one attach mode must look like: one program per hook, of that mode only.
fn expected_counts(attach: AttachRequest) -> Counts {
    match attach {
        AttachRequest::Tc => (0, 0, 1, 1),
        _ => (1, 1, 0, 0),
    }
}

/// Skips (with a message) the tc case when `tc` is missing.
fn mode_tools_present(attach: AttachRequest) -> bool {
    if attach == AttachRequest::Tc && !common::tools_present(&["tc"]) {
        eprintln!("skipping: the tc fallback test needs tc (iproute2)");
        return false;
    }
    true
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn attach_capture_adopt_detach() {
    capture_adopt_detach(AttachRequest::Tcx, "");
}

/// The same with the tc clsact fallback forced: a restart replaces our filter's program
/// (no second filter) and detach leaves no filter.
#[test]
fn tc_fallback_attach_capture_adopt_detach() {
    capture_adopt_detach(AttachRequest::Tc, "t");
}

fn capture_adopt_detach(attach: AttachRequest, tag: &str) {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    if !tools_present() {
        eprintln!("skipping: needs ip, openssl, curl, ethtool");
        return;
    }
    if !mode_tools_present(attach) {
        return;
    }
    let mut topo = setup_named(tag);
    start_server(&mut topo);
    let pin_dir = topo.pin_dir.clone();
    let opts = DataplaneOptions {
        interfaces: vec![("tgds0".to_owned(), Role::Lan)],
        pin_dir: pin_dir.clone(),
        mode: Mode::Monitor,
        attach,
    };

    // First run: attach, drive traffic, read events and counters; then exit without detaching.
    let client_ns = topo.client_ns.clone();
    let server_ns = topo.server_ns.clone();
    let cns = client_ns.clone();
    let o = opts.clone();
    let (events, flows, stats, attached, counts) = in_ns(&server_ns, move |rt| {
        let mut dp = Dataplane::start(o).expect("start");
        let attached = dp.attached();
        let counts = hook_counts();
        let mut reader = rt
            .block_on(async { dp.take_event_reader() })
            .expect("reader");
        // The server may need a moment to listen.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !curl(&cns) {
            assert!(Instant::now() < deadline, "curl never succeeded");
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(s_client(&cns), "openssl s_client");
        let events: Vec<PayloadEvent> = rt.block_on(async {
            let mut v = Vec::new();
            while let Ok(Ok(ev)) =
                tokio::time::timeout(Duration::from_millis(500), reader.next()).await
            {
                v.push(ev);
            }
            v
        });
        let flows = dp.flow_counters().unwrap();
        let stats = dp.stats().unwrap();
        drop(dp); // no detach: pins keep the programs attached
        (events, flows, stats, attached, counts)
    });

    let want_mode = match attach {
        AttachRequest::Tc => AttachMode::Tc,
        _ => AttachMode::Tcx,
    };
    assert_eq!(attached.len(), 2);
    assert!(
        attached.iter().all(|a| !a.adopted
            && a.mode == want_mode
            && (a.link_id != 0) == (want_mode == AttachMode::Tcx)
            && a.program_id != 0),
        "{attached:?}"
    );
    assert_eq!(
        counts,
        expected_counts(attach),
        "one program per hook, (tcx in, tcx out, tc in, tc out)"
    );

    // TLS events from the user toward the server, carrying the SNI, split over segments.
    let tls: Vec<&PayloadEvent> = events
        .iter()
        .filter(|e| e.kind == PayloadKind::Tls && e.direction == Direction::Up)
        .collect();
    assert!(!tls.is_empty(), "no TLS events: {events:?}");
    assert!(
        tls.iter().any(|e| e.continuation),
        "hello not split at MTU 400?"
    );
    assert!(
        tls.iter()
            .all(|e| e.flow.user_ip.to_string() == CLIENT_IP && e.flow.remote_port == 4433)
    );
    // Every connection's hello, reassembled from its events by sequence number, holds the SNI.
    let mut by_port: std::collections::BTreeMap<u16, Vec<&PayloadEvent>> = Default::default();
    for e in &tls {
        by_port.entry(e.flow.user_port).or_default().push(e);
    }
    assert!(by_port.len() >= 2, "curl and s_client connections");
    for (port, mut evs) in by_port {
        evs.sort_by_key(|e| e.tcp_seq);
        let bytes: Vec<u8> = evs.iter().flat_map(|e| e.payload.iter().copied()).collect();
        assert!(
            contains(&bytes, SNI.as_bytes()),
            "flow {port}: SNI not in hello bytes"
        );
    }
    // ServerHello toward the user.
    assert!(
        events
            .iter()
            .any(|e| e.kind == PayloadKind::Tls && e.direction == Direction::Down)
    );

    let f: Vec<_> = flows
        .iter()
        .filter(|f| f.flow.remote_port == 4433)
        .collect();
    assert!(f.len() >= 2);
    for f in &f {
        assert!(f.packets_up >= 3 && f.packets_down >= 3, "{f:?}");
        // The s_server -www page and certificate flight come down; the hello goes up.
        assert!(f.bytes_down > 1000 && f.bytes_up > 500, "{f:?}");
        assert_eq!(f.tcp_flags_up & 0x02, 0x02, "SYN seen from the user");
    }
    assert!(stats.events as usize >= events.len());
    assert_eq!(stats.ringbuf_full, 0);

    // Second run: adopts the pinned links (no second attachment), counters survive.
    let o = opts.clone();
    let cns = client_ns.clone();
    let before_bytes: u64 = f.iter().map(|f| f.bytes_down).sum();
    let (attached2, counts2, flows2) = in_ns(&server_ns, move |_rt| {
        let dp = Dataplane::start(o).expect("restart");
        let counts = hook_counts();
        assert!(curl(&cns), "curl after restart");
        let flows = dp.flow_counters().unwrap();
        let attached = dp.attached();
        dp.detach().expect("detach");
        (attached, counts, flows)
    });
    assert!(attached2.iter().all(|a| a.adopted), "{attached2:?}");
    assert_eq!(
        counts2,
        expected_counts(attach),
        "adoption must not attach twice"
    );
    let after_bytes: u64 = flows2
        .iter()
        .filter(|f| f.flow.remote_port == 4433)
        .map(|f| f.bytes_down)
        .sum();
    assert!(after_bytes > before_bytes, "maps kept and still counting");

    // Detached: no programs left, pins gone. (A link whose last reference was its pin goes
    // away when bpffs evicts the inode, which may lag the unlink a little.)
    let (counts3, filters) = in_ns(&server_ns, |_| {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let c = hook_counts();
            if c == (0, 0, 0, 0) || Instant::now() > deadline {
                return (c, tc_filters("ingress") + &tc_filters("egress"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert_eq!(counts3, (0, 0, 0, 0));
    assert!(
        filters.trim().is_empty(),
        "no tc filter may remain: {filters}"
    );
    assert!(!Path::new(&pin_dir).exists());
}

#[test]
fn enforce_resets_blocked_names_and_prefixes_for_real_clients() {
    enforce_resets(AttachRequest::Tcx, "e");
}

/// The same verdicts with the tc clsact fallback forced.
#[test]
fn tc_fallback_enforce_resets_blocked_names_and_prefixes_for_real_clients() {
    enforce_resets(AttachRequest::Tc, "te");
}

fn enforce_resets(attach: AttachRequest, tag: &str) {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    if !tools_present() {
        eprintln!("skipping: needs ip, openssl, curl, ethtool");
        return;
    }
    if !mode_tools_present(attach) {
        return;
    }
    let mut topo = setup_named(tag);
    start_server(&mut topo);
    let opts = DataplaneOptions {
        interfaces: vec![("tgds0".to_owned(), Role::Lan)],
        pin_dir: topo.pin_dir.clone(),
        mode: Mode::Enforce,
        attach,
    };
    let cns = topo.client_ns.clone();
    let server_ns = topo.server_ns.clone();
    let (allowed, blocked_name, name_secs, blocked_ip, ip_secs, stats) =
        in_ns(&server_ns, move |_rt| {
            let mut dp = Dataplane::start(opts).expect("start");
            assert_eq!(hook_counts(), expected_counts(attach), "attached as asked");
            let deadline = Instant::now() + Duration::from_secs(10);
            while !curl(&cns) {
                assert!(Instant::now() < deadline, "curl never succeeded");
                std::thread::sleep(Duration::from_millis(200));
            }
            let mut v = dp.verdicts();
            v.set_name("blocked.tollgate.test", Action::Block, 5, true)
                .unwrap();
            v.commit().unwrap();
            let allowed = curl(&cns);
            let t = Instant::now();
            let blocked_name = curl_name(&cns, "www.blocked.tollgate.test");
            let name_secs = t.elapsed().as_secs_f64();
            let mut v = dp.verdicts();
            v.set_prefix(SERVER_IP.parse().unwrap(), 32, Action::Block, 6, None)
                .unwrap();
            v.commit().unwrap();
            let t = Instant::now();
            let blocked_ip = curl(&cns);
            let ip_secs = t.elapsed().as_secs_f64();
            let stats = dp.stats().unwrap();
            dp.detach().expect("detach");
            (allowed, blocked_name, name_secs, blocked_ip, ip_secs, stats)
        });
    assert!(allowed, "an allowed name still loads");
    assert!(!blocked_name, "a blocked SNI must fail");
    assert!(
        name_secs < 1.0,
        "blocked name failed after {name_secs:.2}s, not at once"
    );
    assert!(!blocked_ip, "a blocked prefix must fail");
    assert!(
        ip_secs < 1.0,
        "blocked prefix failed after {ip_secs:.2}s, not at once"
    );
    assert!(stats.rst_sent >= 2, "{stats:?}");
    assert!(stats.raw[tollgate_dataplane::abi::STAT_NAME_VERDICTS] >= 1);
}

/// A Chrome-like ClientHello (curl_cffi impersonating Chrome: ~1.9 KB with an ML-KEM key
/// share) at MTU 1500 with offloads off spans two segments; the SNI often sits in the second.
fn chrome_get(client_ns: &str, name: &str) -> (bool, f64) {
    // The request is timed inside the client: interpreter start-up and the curl_cffi import
    // take about a second on a loaded machine and are not the gateway's doing.
    let script = format!(
        "import sys, time\nfrom curl_cffi import requests\nt = time.monotonic()\nok = False\n\
         try:\n    r = requests.get('https://{name}:4433/', impersonate='chrome', verify=False, \
         timeout=5)\n    ok = r.status_code == 200\nexcept Exception as e:\n    \
         print(e, file=sys.stderr)\nprint(time.monotonic() - t)\nsys.exit(0 if ok else 1)\n"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", client_ns, "python3", "-c", &script])
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) => {
            let secs = String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .unwrap_or(f64::MAX);
            (o.status.success(), secs)
        }
        Err(_) => (false, f64::MAX),
    }
}

#[test]
fn chrome_hello_split_over_segments_is_seen_and_blocked() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let has_cffi = sh(&["python3", "-c", "import curl_cffi"]);
    if !tools_present() || !has_cffi {
        eprintln!("skipping: needs ip, openssl, curl, ethtool and python3 curl_cffi");
        return;
    }
    let mut topo = setup_mtu("c", 1500);
    // Names resolve through the namespace's hosts file (`ip netns exec` mounts it).
    let etc = format!("/etc/netns/{}", topo.client_ns);
    fs::create_dir_all(&etc).unwrap();
    fs::write(
        format!("{etc}/hosts"),
        format!("127.0.0.1 localhost\n{SERVER_IP} {SNI} www.blocked.tollgate.test\n"),
    )
    .unwrap();
    start_server(&mut topo);
    let opts = DataplaneOptions {
        interfaces: vec![("tgds0".to_owned(), Role::Lan)],
        pin_dir: topo.pin_dir.clone(),
        mode: Mode::Enforce,
        attach: AttachRequest::Auto,
    };
    let cns = topo.client_ns.clone();
    let server_ns = topo.server_ns.clone();
    let (events, ok, blocked, secs) = in_ns(&server_ns, move |rt| {
        let mut dp = Dataplane::start(opts).expect("start");
        let mut reader = rt
            .block_on(async { dp.take_event_reader() })
            .expect("reader");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !curl(&cns) {
            assert!(Instant::now() < deadline, "curl never succeeded");
            std::thread::sleep(Duration::from_millis(200));
        }
        let (ok, _) = chrome_get(&cns, SNI);
        let mut v = dp.verdicts();
        v.set_name("blocked.tollgate.test", Action::Block, 9, true)
            .unwrap();
        v.commit().unwrap();
        let (blocked, secs) = chrome_get(&cns, "www.blocked.tollgate.test");
        let events: Vec<PayloadEvent> = rt.block_on(async {
            let mut v = Vec::new();
            while let Ok(Ok(ev)) =
                tokio::time::timeout(Duration::from_millis(500), reader.next()).await
            {
                v.push(ev);
            }
            v
        });
        dp.detach().expect("detach");
        (events, ok, blocked, secs)
    });
    assert!(ok, "Chrome-like client loads an allowed name");
    assert!(!blocked, "a blocked SNI must fail");
    assert!(secs < 1.0, "blocked after {secs:.2}s, not at once");
    // Every Chrome-like hello (the largest ones) is carried whole by its events.
    let mut by_port: std::collections::BTreeMap<u16, Vec<&PayloadEvent>> = Default::default();
    for e in events
        .iter()
        .filter(|e| e.kind == PayloadKind::Tls && e.direction == Direction::Up)
    {
        by_port.entry(e.flow.user_port).or_default().push(e);
    }
    let mut split = 0;
    for evs in by_port.values_mut() {
        evs.sort_by_key(|e| e.tcp_seq);
        let bytes: Vec<u8> = evs.iter().flat_map(|e| e.payload.iter().copied()).collect();
        let total = bytes
            .get(3..5)
            .map(|l| 5 + usize::from(u16::from_be_bytes([l[0], l[1]])))
            .unwrap_or(0);
        // The blocked hello may be cut short by its reset; the allowed ones must be whole.
        if total > 1500 && contains(&bytes, SNI.as_bytes()) {
            split += 1;
            let sizes: Vec<usize> = evs.iter().map(|e| e.payload.len()).collect();
            assert!(evs.iter().any(|e| e.continuation), "segments {sizes:?}");
            assert!(
                bytes.len() >= total,
                "hello bytes missing: {sizes:?} of {total}"
            );
        }
    }
    assert!(
        split >= 1,
        "expected a Chrome-sized hello over two segments"
    );
}

/// Switching the attach mode between runs, and dropping an interface from the config, leave
/// one program per hook of the new mode (the other mode's link or filter is removed), and
/// the tc filters of an interface no longer configured are deleted although netlink filters
/// have no pin.
#[test]
fn switching_attach_mode_and_dropping_an_interface_leave_no_stale_hook() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    if !tools_present() || !mode_tools_present(AttachRequest::Tc) {
        eprintln!("skipping: needs ip, openssl, curl, ethtool, tc");
        return;
    }
    let topo = setup_named("m");
    let pin_dir = topo.pin_dir.clone();
    // (attach, interfaces, detach at the end, what must be attached after the start)
    let steps: Vec<(AttachRequest, Vec<&'static str>, bool, Counts)> = vec![
        (AttachRequest::Tcx, vec!["tgds0"], false, (1, 1, 0, 0)),
        (AttachRequest::Tc, vec!["tgds0"], false, (0, 0, 1, 1)),
        (AttachRequest::Tc, vec!["tgds0"], false, (0, 0, 1, 1)),
        (AttachRequest::Tcx, vec!["tgds0"], false, (1, 1, 0, 0)),
        (AttachRequest::Tc, vec!["tgds0"], false, (0, 0, 1, 1)),
        (AttachRequest::Tc, vec![], false, (0, 0, 0, 0)),
        (AttachRequest::Tc, vec!["tgds0"], true, (0, 0, 1, 1)),
    ];
    let want: Vec<_> = steps.iter().map(|s| s.3).chain([(0, 0, 0, 0)]).collect();
    let counts = in_ns(&topo.server_ns, move |_rt| {
        // A TCX link whose pin is removed goes when bpffs evicts the inode, which may lag the
        // unlink a little: wait up to 2 s for the expected picture.
        let settled = |want| {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                let c = hook_counts();
                if c == want || Instant::now() > deadline {
                    return c;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let mut out = Vec::new();
        for (attach, interfaces, detach, want) in steps {
            let dp = Dataplane::start(DataplaneOptions {
                interfaces: interfaces
                    .iter()
                    .map(|i| ((*i).to_owned(), Role::Lan))
                    .collect(),
                pin_dir: pin_dir.clone(),
                mode: Mode::Monitor,
                attach,
            })
            .expect("start");
            out.push(settled(want));
            // Without detach the programs stay attached, as after a daemon's exit.
            if detach {
                dp.detach().expect("detach");
            }
        }
        out.push(settled((0, 0, 0, 0)));
        out
    });
    assert_eq!(
        counts, want,
        "(tcx in, tcx out, tc in, tc out) after each start, then after detach"
    );
}
