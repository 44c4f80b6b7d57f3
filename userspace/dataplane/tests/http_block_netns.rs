//! The HTTP block page with real curl, in a namespace pair of our own (prefix `tge-`): probes
//! attached to the server side's veth as a "lan" interface in enforce mode, a plain HTTP server
//! behind it. The kernel matches the request's Host against the name verdicts and resets the
//! server side of a blocked request; the test plays the daemon and answers the client with
//! `send_block_page` from the event. curl must get the 403 page within a second; an allowed
//! Host still gets the server's answer.
//!
//! Needs root, ip, curl, python3; skips with a message otherwise.

use std::{
    fs,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tollgate_dataplane::{
    Action, AttachRequest, Dataplane, DataplaneOptions, Mode, PayloadKind, Role, block_page_html,
    send_block_page, testing::is_root,
};

mod common;
use common::Topo;

const SERVER_IP: &str = "198.19.208.2";
const CLIENT_IP: &str = "198.19.208.1";

fn tools_present() -> bool {
    common::tools_present(&["ip", "curl", "python3"])
}

fn setup() -> Topo {
    Topo::pair("tgeh", CLIENT_IP, SERVER_IP)
}

fn start_server(topo: &mut Topo) {
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.server_ns,
            "python3",
            "-m",
            "http.server",
        ])
        .args(["80", "--bind", SERVER_IP, "--directory"])
        .arg(&topo.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("http server");
    topo.children.push(child);
}

/// curl in the client namespace while answering blocked requests' events with block pages;
/// returns curl's output (body, then the status code) and how long it took.
fn fetch(
    reader: &mut tollgate_dataplane::EventReader,
    client_ns: &str,
    host: &str,
) -> (String, Duration) {
    let t = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", client_ns, "curl", "-s", "--max-time", "3"])
        .args(["-w", "\\n%{http_code}", "--resolve"])
        .arg(format!("{host}:80:{SERVER_IP}"))
        .arg(format!("http://{host}/"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(ev) = reader.try_next() {
            if ev.kind != PayloadKind::Http {
                continue;
            }
            // The daemon's policy, in short: this name is blocked.
            let head = String::from_utf8_lossy(&ev.payload).to_ascii_lowercase();
            if head.contains("host: www.blocked.tollgate.test") {
                let html = block_page_html("Blocked App", "unsanctioned application");
                send_block_page(&ev, &html).expect("block page sent");
            }
        }
        if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = t.elapsed();
    let out = child.wait_with_output().expect("curl output");
    (String::from_utf8_lossy(&out.stdout).into_owned(), elapsed)
}

#[test]
fn blocked_http_host_gets_the_block_page() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    if !tools_present() {
        eprintln!("skipping: needs ip, curl, python3");
        return;
    }
    let mut topo = setup();
    fs::write(topo.dir.join("index.html"), "origin page\n").expect("index");
    start_server(&mut topo);
    let opts = DataplaneOptions {
        interfaces: vec![("tgehs0".to_owned(), Role::Lan)],
        pin_dir: topo.pin_dir.clone(),
        mode: Mode::Enforce,
        attach: AttachRequest::Auto,
    };
    let cns = topo.client_ns.clone();
    let path = format!("/run/netns/{}", topo.server_ns);
    let (allowed, blocked, secs, stats) = std::thread::spawn(move || {
        let fd = fs::File::open(&path).expect("netns");
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        let mut dp = Dataplane::start(opts).expect("start");
        let mut reader = dp.take_event_reader().expect("reader");
        let mut w = dp.verdicts();
        w.set_name("blocked.tollgate.test", Action::Block, 11, true)
            .expect("name verdict");
        w.commit().expect("commit");
        // The server may still be starting.
        let deadline = Instant::now() + Duration::from_secs(10);
        let allowed = loop {
            let (out, _) = fetch(&mut reader, &cns, "www.allowed.tollgate.test");
            if out.ends_with("200") || Instant::now() > deadline {
                break out;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let (blocked, took) = fetch(&mut reader, &cns, "www.blocked.tollgate.test");
        let stats = dp.stats().expect("stats");
        dp.detach().expect("detach");
        (allowed, blocked, took.as_secs_f64(), stats)
    })
    .join()
    .expect("test thread");
    eprintln!("allowed: {allowed:?}\nblocked ({secs:.3}s): {blocked:?}\n{stats:?}");
    assert!(allowed.contains("origin page"), "allowed Host: {allowed}");
    assert!(allowed.ends_with("200"));
    assert!(
        blocked.ends_with("403"),
        "blocked Host gets a 403: {blocked}"
    );
    assert!(blocked.contains("Blocked App is blocked"), "{blocked}");
    assert!(!blocked.contains("origin page"));
    assert!(secs < 1.0, "block page after {secs:.2}s");
    assert!(stats.http_blocked >= 1, "{stats:?}");
}
