//! The end-to-end testbed: a client — gateway — server topology in network namespaces, with
//! real servers (nginx, openssl s_server, dnsmasq, an aioquic HTTP/3 server) and real clients
//! (curl, openssl s_client, curl_cffi, chromium, dig, aioquic). Tollgate runs on the gateway,
//! which forwards between the two sides. Offloads are off on the client side so that a large
//! ClientHello really crosses the gateway as several segments.
//!
//! ```text
//! [client] c0 ---- gc [gateway] gs ---- s0 [server]
//! 198.18.1.2/24    .1.1      .2.1       198.18.2.2/24
//! 2001:2:0:1::2    ::1       ::1        2001:2:0:2::2
//! ```
//! Every test that needs root calls [`require_root`] first and returns (skips) without it.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod servers;

pub const CLIENT_IP4: &str = "198.18.1.2";
pub const GW_C_IP4: &str = "198.18.1.1";
pub const GW_S_IP4: &str = "198.18.2.1";
pub const SERVER_IP4: &str = "198.18.2.2";
pub const CLIENT_IP6: &str = "2001:2:0:1::2";
pub const SERVER_IP6: &str = "2001:2:0:2::2";

/// Namespace tests share two cores; running two topologies at once makes traffic flaky.
static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the process-wide lock that serialises topology tests.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// True when running as root; otherwise prints why the test skips.
pub fn require_root(test: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        eprintln!("SKIP {test}: needs root (network namespaces, eBPF)");
    }
    root
}

/// True when `cmd` is on PATH; otherwise prints why the test skips.
pub fn require_command(test: &str, cmd: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIP {test}: {cmd} is not installed (run `cargo xtask setup` as root)");
    }
    ok
}

/// True when python3 can import `module`.
pub fn require_python_module(test: &str, module: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIP {test}: python3 module {module} missing (run `cargo xtask setup`)");
    }
    ok
}

/// Root, every command in `commands` and every python module in `modules`; otherwise the
/// test prints why it skips.
pub fn ready(test: &str, commands: &[&str], modules: &[&str]) -> bool {
    require_root(test)
        && commands.iter().all(|c| require_command(test, c))
        && modules.iter().all(|m| require_python_module(test, m))
}

/// The path of the `tollgate` binary built next to the running test.
pub fn tollgate_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TOLLGATE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test>-<hash>  ->  target/<profile>/tollgate
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("tollgate"))
        .unwrap_or_else(|| PathBuf::from("tollgate"))
}

/// Runs a command, failing with its output when it fails.
pub fn sh(cmd: &str) -> Result<Output> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// The three namespaces and their links. Dropping it removes them and ends what runs there.
pub struct Topology {
    pub client: String,
    pub gateway: String,
    pub server: String,
    pub mtu: u32,
    children: Vec<Child>,
    scratch: PathBuf,
}

impl Topology {
    /// Builds the topology with names unique to this process and `tag`.
    pub fn new(tag: &str, mtu: u32) -> Result<Topology> {
        let id = format!("{}{}", tag, std::process::id() % 10000);
        let t = Topology {
            client: format!("tgc-{id}"),
            gateway: format!("tgg-{id}"),
            server: format!("tgs-{id}"),
            mtu,
            children: Vec::new(),
            scratch: std::env::temp_dir().join(format!("tollgate-e2e-{id}")),
        };
        t.teardown();
        std::fs::create_dir_all(&t.scratch)?;
        let (c, g, s) = (&t.client, &t.gateway, &t.server);
        for ns in [c, g, s] {
            sh(&format!("ip netns add {ns}"))?;
            sh(&format!("ip -n {ns} link set lo up"))?;
        }
        sh(&format!(
            "ip link add c0 netns {c} type veth peer name gc netns {g}"
        ))?;
        sh(&format!(
            "ip link add gs netns {g} type veth peer name s0 netns {s}"
        ))?;
        for (ns, dev, v4, v6) in [
            (c, "c0", "198.18.1.2/24", "2001:2:0:1::2/64"),
            (g, "gc", "198.18.1.1/24", "2001:2:0:1::1/64"),
            (g, "gs", "198.18.2.1/24", "2001:2:0:2::1/64"),
            (s, "s0", "198.18.2.2/24", "2001:2:0:2::2/64"),
        ] {
            sh(&format!("ip -n {ns} link set {dev} mtu {mtu} up"))?;
            sh(&format!("ip -n {ns} addr add {v4} dev {dev}"))?;
            sh(&format!("ip -n {ns} addr add {v6} dev {dev} nodad"))?;
        }
        sh(&format!("ip -n {c} route add default via 198.18.1.1"))?;
        sh(&format!("ip -n {c} -6 route add default via 2001:2:0:1::1"))?;
        sh(&format!("ip -n {s} route add default via 198.18.2.1"))?;
        sh(&format!("ip -n {s} -6 route add default via 2001:2:0:2::1"))?;
        sh(&format!(
            "ip netns exec {g} sysctl -qw net.ipv4.ip_forward=1"
        ))?;
        sh(&format!(
            "ip netns exec {g} sysctl -qw net.ipv6.conf.all.forwarding=1"
        ))?;
        // Real segmentation: without this a 2 KB ClientHello crosses the gateway as one
        // GSO super-packet and hides the hard case.
        sh(&format!(
            "ip netns exec {c} ethtool -K c0 tso off gso off gro off >/dev/null 2>&1 || true"
        ))?;
        sh(&format!(
            "ip netns exec {s} ethtool -K s0 tso off gso off gro off >/dev/null 2>&1 || true"
        ))?;
        Ok(t)
    }

    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    /// Runs a command in a namespace and waits for it.
    pub fn exec(&self, ns: &str, cmd: &str) -> Result<Output> {
        sh(&format!("ip netns exec {ns} {cmd}"))
    }

    /// Runs a command in a namespace, returning its output whatever its exit status.
    pub fn exec_any(&self, ns: &str, cmd: &str) -> Output {
        Command::new("sh")
            .args(["-c", &format!("ip netns exec {ns} {cmd}")])
            .output()
            .unwrap_or_else(|e| Output {
                status: std::os::unix::process::ExitStatusExt::from_raw(1 << 8),
                stdout: Vec::new(),
                stderr: e.to_string().into_bytes(),
            })
    }

    /// Starts a background process in a namespace; it is killed when the topology drops.
    pub fn spawn(&mut self, ns: &str, cmd: &str, log: &str) -> Result<()> {
        let log_path = self.scratch.join(log);
        let log_file = std::fs::File::create(&log_path)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", &format!("exec {cmd}")])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("spawning {cmd}"))?;
        self.children.push(child);
        Ok(())
    }

    /// Starts a background process in the host's namespaces (e.g. a daemon that enters the
    /// gateway namespace itself); it is killed when the topology drops.
    pub fn spawn_host(&mut self, cmd: &str, log: &str) -> Result<()> {
        let log_path = self.scratch.join(log);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = Command::new("sh")
            .args(["-c", &format!("exec {cmd}")])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("spawning {cmd}"))?;
        self.children.push(child);
        Ok(())
    }

    /// Kills (SIGKILL) the background processes started so far whose command line contains
    /// `needle`, as `kill -9` would.
    pub fn kill9(&mut self, needle: &str) {
        let _ = Command::new("pkill")
            .args(["-9", "-f", "--", needle])
            .status();
        for c in &mut self.children {
            let _ = c.try_wait();
        }
    }

    /// Reads a log written by a spawned process.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.scratch.join(name)).unwrap_or_default()
    }

    /// Waits until `port` accepts TCP connections (or a UDP socket is bound) in the server.
    pub fn wait_listen(&self, ns: &str, proto: &str, port: u16, timeout: Duration) -> Result<()> {
        let flag = if proto == "udp" { "-uln" } else { "-tln" };
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            let out = self.exec_any(ns, &format!("ss {flag}"));
            let text = String::from_utf8_lossy(&out.stdout);
            if text.lines().any(|l| {
                l.split_whitespace()
                    .nth(3)
                    .is_some_and(|a| a.ends_with(&format!(":{port}")))
            }) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nothing listens on {proto}/{port} in {ns} after {timeout:?}")
    }

    fn teardown(&self) {
        for ns in [&self.client, &self.gateway, &self.server] {
            let _ = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                });
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
        // A daemon killed with -9 leaves its pins; the namespace (and its links) are gone.
        let _ = std::fs::remove_dir_all(Path::new("/sys/fs/bpf/tollgate").join(&self.gateway));
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.teardown();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// A throw-away CA and a server certificate for `names`, made with openssl (a real client
/// of its own; the product's CA code is tested elsewhere). Returns (ca, cert, key) paths.
pub fn make_server_cert(dir: &Path, names: &[&str]) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.pem");
    let ext = dir.join("san.ext");
    let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    std::fs::write(&ext, format!("subjectAltName={}\n", san.join(",")))?;
    let d = dir.display();
    sh(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
         -subj /CN=tollgate-e2e-origin-ca -keyout {d}/ca.key -out {d}/ca.pem 2>/dev/null"
    ))?;
    sh(&format!(
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN={} \
         -keyout {d}/server.key -out {d}/server.csr 2>/dev/null",
        names.first().copied().unwrap_or("localhost")
    ))?;
    sh(&format!(
        "openssl x509 -req -in {} -CA {} -CAkey {} -CAcreateserial -days 2 -extfile {} -out {} 2>/dev/null",
        csr.display(),
        ca.display(),
        ca_key.display(),
        ext.display(),
        cert.display()
    ))?;
    Ok((ca, cert, key))
}

/// Polls `f` until it returns Some or the timeout passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
