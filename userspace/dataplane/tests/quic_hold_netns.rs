//! The QUIC hold with a real QUIC client and server (aioquic, `tests/fixtures/h3_*.py`) in a
//! namespace pair of our own (prefix `tge-`), probes attached to the server side's veth as a
//! "lan" interface in enforce mode. The test plays the daemon: it reads the probes' events and,
//! for each QUIC Initial, writes a flow verdict as the daemon does after decrypting it.
//!
//! - no verdict at all: the hold times out and the request completes (fail-open);
//! - Allow verdicts: the request completes;
//! - Block verdicts: the server's answers were held, so no handshake completes and the client
//!   gets no response (aioquic's unconnected socket does not see the ICMP errors; it times out).
//!
//! Needs root, ip, openssl, python3 with aioquic; skips with a message otherwise.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tollgate_dataplane::{
    Action, AttachRequest, Dataplane, DataplaneOptions, DataplaneStats, Mode, PayloadKind, Role,
    testing::is_root,
};

mod common;
use common::{Topo, sh};

const SERVER_IP: &str = "198.19.207.2";
const CLIENT_IP: &str = "198.19.207.1";
const SNI: &str = "hold.tollgate.test";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn tools_present() -> bool {
    common::tools_present(&["ip", "openssl", "python3"])
}

fn setup() -> Topo {
    Topo::pair("tgeq", CLIENT_IP, SERVER_IP)
}

fn start_server(topo: &mut Topo) {
    let key = topo.dir.join("key.pem");
    let cert = topo.dir.join("cert.pem");
    let (key_s, cert_s) = (
        key.to_str().expect("utf-8 path"),
        cert.to_str().expect("utf-8 path"),
    );
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
        key_s,
        "-out",
        cert_s
    ]));
    let server = fixtures().join("h3_server.py");
    let child = Command::new("ip")
        .args(["netns", "exec", &topo.server_ns, "python3"])
        .arg(server)
        .args([
            "--cert", cert_s, "--key", key_s, "--host", SERVER_IP, "--port", "443",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("h3 server");
    topo.children.push(child);
}

/// What the test writes for each QUIC Initial it reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Policy {
    Nothing,
    Allow,
    Block,
}

/// Runs the h3 client while answering the probes' QUIC events with `policy`; returns the
/// client's output line.
fn request(
    dp: &mut Dataplane,
    reader: &mut tollgate_dataplane::EventReader,
    client_ns: &str,
    policy: Policy,
    timeout_s: &str,
) -> String {
    let client = fixtures().join("h3_client.py");
    let child = Command::new("ip")
        .args(["netns", "exec", client_ns, "python3"])
        .arg(client)
        .args([
            "--connect",
            SERVER_IP,
            "--port",
            "443",
            "--sni",
            SNI,
            "--timeout",
            timeout_s,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("h3 client");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut child = child;
    loop {
        while let Some(ev) = reader.try_next() {
            if ev.kind != PayloadKind::Quic || policy == Policy::Nothing {
                continue;
            }
            let Some(key) = ev.flow_key() else { continue };
            let action = if policy == Policy::Block {
                Action::Block
            } else {
                Action::Allow
            };
            let mut w = dp.verdicts();
            w.set_flow(&key, action, 9, None).expect("flow verdict");
            if action == Action::Block {
                w.commit().expect("commit");
            }
        }
        if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let out = child.wait_with_output().expect("client output");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn quic_handshake_held_until_the_verdict() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    if !tools_present() {
        eprintln!("skipping: needs ip, openssl, python3 with aioquic and tests/fixtures");
        return;
    }
    let mut topo = setup();
    start_server(&mut topo);
    let opts = DataplaneOptions {
        interfaces: vec![("tgeqs0".to_owned(), Role::Lan)],
        pin_dir: topo.pin_dir.clone(),
        mode: Mode::Enforce,
        attach: AttachRequest::Auto,
    };
    let cns = topo.client_ns.clone();
    let path = format!("/run/netns/{}", topo.server_ns);
    type Outcome = (
        String,
        DataplaneStats,
        String,
        DataplaneStats,
        String,
        DataplaneStats,
    );
    let (none, st_none, allow, st_allow, block, st_block): Outcome =
        std::thread::spawn(move || {
            let fd = fs::File::open(&path).expect("netns");
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let _guard = rt.enter();
            let mut dp = Dataplane::start(opts).expect("start");
            let mut reader = dp.take_event_reader().expect("reader");
            // The server may still be starting: retry until a request completes (fail-open).
            let deadline = Instant::now() + Duration::from_secs(15);
            let none = loop {
                let out = request(&mut dp, &mut reader, &cns, Policy::Nothing, "5");
                if out.starts_with("status=200") || Instant::now() > deadline {
                    break out;
                }
                std::thread::sleep(Duration::from_millis(300));
            };
            let st_none = dp.stats().expect("stats");
            let allow = request(&mut dp, &mut reader, &cns, Policy::Allow, "5");
            let st_allow = dp.stats().expect("stats");
            let block = request(&mut dp, &mut reader, &cns, Policy::Block, "3");
            let st_block = dp.stats().expect("stats");
            dp.detach().expect("detach");
            (none, st_none, allow, st_allow, block, st_block)
        })
        .join()
        .expect("test thread");
    eprintln!("no verdict: {none} {st_none:?}");
    eprintln!("allow: {allow} {st_allow:?}");
    eprintln!("block: {block} {st_block:?}");
    assert!(
        none.starts_with("status=200"),
        "without a verdict the hold times out and QUIC works: {none}"
    );
    assert!(st_none.quic_hold_expired >= 1, "{st_none:?}");
    assert!(allow.starts_with("status=200"), "allowed: {allow}");
    assert_eq!(
        st_allow.quic_hold_expired, st_none.quic_hold_expired,
        "an allowed flow is released by its verdict, not by the timeout"
    );
    assert_eq!(block, "timeout", "a blocked QUIC flow gets no response");
    assert!(
        st_block.quic_held > st_allow.quic_held || st_block.drops > st_allow.drops,
        "the server's answers were dropped: {st_block:?}"
    );
    assert!(
        st_block.icmp_sent > st_allow.icmp_sent,
        "the client's retransmitted Initials were refused: {st_block:?}"
    );
}
