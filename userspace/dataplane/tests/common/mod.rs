//! What the kernel-program tests share: a harness in a private network namespace, a
//! client/server namespace pair that cleans up after itself, and small command helpers.
#![allow(dead_code, reason = "each test file uses a different part")]

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

/// Two namespaces, the processes started in them, a scratch dir and the pins of the test's
/// dataplane. Dropping it kills the processes and removes everything, pins included (a
/// failed run must not leave programs attached).
pub struct Topo {
    pub client_ns: String,
    pub server_ns: String,
    pub children: Vec<Child>,
    pub dir: PathBuf,
    pub pin_dir: PathBuf,
}

impl Drop for Topo {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir_all(&self.pin_dir);
        let _ = fs::remove_dir_all(format!("/etc/netns/{}", self.client_ns));
    }
}

impl Topo {
    /// Client and server namespaces `{tag}c<pid>` / `{tag}s<pid>` joined by a veth pair
    /// (`{tag}c0` / `{tag}s0`, so `tag` is at most 12 characters) with the addresses given, a
    /// scratch dir and a pin dir named `{tag}-<pid>`.
    pub fn pair(tag: &str, client_ip: &str, server_ip: &str) -> Topo {
        let id = std::process::id();
        let client_ns = format!("{tag}c{id}");
        let server_ns = format!("{tag}s{id}");
        let dir = std::env::temp_dir().join(format!("{tag}-{id}"));
        fs::create_dir_all(&dir).expect("temp dir");
        let topo = Topo {
            client_ns: client_ns.clone(),
            server_ns: server_ns.clone(),
            children: Vec::new(),
            dir,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/tollgate/{tag}-{id}")),
        };
        for ns in [&client_ns, &server_ns] {
            assert!(sh(&["ip", "netns", "add", ns]), "ip netns add {ns}");
            assert!(ns_exec(ns, &["ip", "link", "set", "lo", "up"]));
        }
        let (client_dev, server_dev) = (format!("{tag}c0"), format!("{tag}s0"));
        assert!(sh(&[
            "ip",
            "link",
            "add",
            &client_dev,
            "netns",
            &client_ns,
            "type",
            "veth",
            "peer",
            "name",
            &server_dev,
            "netns",
            &server_ns
        ]));
        for (ns, dev, addr) in [
            (&client_ns, &client_dev, client_ip),
            (&server_ns, &server_dev, server_ip),
        ] {
            assert!(ns_exec(
                ns,
                &["ip", "addr", "add", &format!("{addr}/24"), "dev", dev]
            ));
            assert!(ns_exec(ns, &["ip", "link", "set", dev, "up"]));
        }
        topo
    }
}

/// Runs a command quietly; true when it succeeded.
pub fn sh(args: &[&str]) -> bool {
    let Some((cmd, rest)) = args.split_first() else {
        return false;
    };
    Command::new(cmd)
        .args(rest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command in a namespace quietly; true when it succeeded.
pub fn ns_exec(ns: &str, args: &[&str]) -> bool {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

/// Every tool is on PATH.
pub fn tools_present(tools: &[&str]) -> bool {
    tools
        .iter()
        .all(|t| sh(&["sh", "-c", &format!("command -v {t}")]))
}

/// Runs `f` with the probes loaded, on a thread inside a fresh network namespace whose
/// loopback is up (resets, ICMP errors and DNS answers the probes send with
/// bpf_clone_redirect go to the test device, that loopback). Skips when not root.
pub fn with_harness(
    f: impl FnOnce(&mut tollgate_dataplane::testing::ProbeHarness) + Send + 'static,
) {
    if !tollgate_dataplane::testing::is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
        assert!(sh(&["ip", "link", "set", "lo", "up"]), "ip link set lo up");
        let mut h = tollgate_dataplane::testing::ProbeHarness::load().expect("probes load");
        f(&mut h);
    })
    .join()
    .expect("test thread");
}
