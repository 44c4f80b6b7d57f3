//! The arm64 build (`cargo xtask package` cross-builds it) run under qemu-user, for every
//! command that needs no kernel: `discover` over real captures and vendor logs, `catalog`,
//! `check-config`, `export`, and the hub on SQLite (it starts, enrolls nothing, answers its
//! CLI). Each answer of the arm64 binary is compared with the native binary's on the same
//! input: the same report, byte for byte. The packages are checked to say `arm64` and to hold
//! aarch64 executables. Skips (says SKIP) without the cross build or qemu-aarch64.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const TARGET: &str = "aarch64-unknown-linux-gnu";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The arm64 and the native binary of `name`, and the qemu-user that runs the first; `None`
/// (said) when any is missing.
fn binaries(test: &str, name: &str) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let arm = root()
        .join("target")
        .join(TARGET)
        .join("release")
        .join(name);
    let native = root().join("target/release").join(name);
    let qemu = ["/usr/bin/qemu-aarch64", "/usr/bin/qemu-aarch64-static"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    match (arm.exists(), native.exists(), qemu) {
        (true, true, Some(q)) => Some((arm, native, q)),
        (a, n, q) => {
            eprintln!(
                "SKIP {test}: arm64 build {} ({}), native build {}, qemu-aarch64 {} \
                 (run `cargo xtask package` as root)",
                if a { "present" } else { "missing" },
                arm.display(),
                if n { "present" } else { "missing" },
                if q.is_some() { "present" } else { "missing" },
            );
            None
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `args` through the arm64 binary under qemu and through the native one: the same stdout.
fn same(qemu: &Path, arm: &Path, native: &Path, args: &[&str]) -> String {
    let a = run(Command::new(qemu)
        .arg("-L")
        .arg("/usr/aarch64-linux-gnu")
        .arg(arm)
        .args(args)
        .current_dir(root()));
    let n = run(Command::new(native).args(args).current_dir(root()));
    // Reports carry the time they were made; everything else must match.
    let text = |o: &Output| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.contains("generated_at"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (a, n) = (text(&a), text(&n));
    assert_eq!(a, n, "arm64 and native disagree on {args:?}");
    assert!(!a.trim().is_empty(), "{args:?} printed nothing");
    a
}

#[test]
fn the_gateways_offline_commands_answer_the_same_on_arm64() {
    let test = "the_gateways_offline_commands_answer_the_same_on_arm64";
    let Some((arm, native, qemu)) = binaries(test, "tollgate") else {
        return;
    };
    let file = run(Command::new("file").arg(&arm));
    let kind = String::from_utf8_lossy(&file.stdout);
    assert!(kind.contains("ARM aarch64"), "{kind}");

    let version = same(&qemu, &arm, &native, &["--version"]);
    assert!(version.starts_with("tollgate "), "{version}");
    // Real captures (Chromium over TLS and QUIC, curl over HTTP) and real vendor logs.
    let report = same(
        &qemu,
        &arm,
        &native,
        &[
            "discover",
            "--format",
            "json",
            "userspace/discovery/testdata/pcap/tls_chrome.pcap",
            "userspace/discovery/testdata/pcap/quic_aioquic.pcap",
            "userspace/discovery/testdata/pcap/http_curl.pcap",
            "userspace/discovery/testdata/pcap/chromium_mtu1400.pcap",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&report).expect("a JSON report");
    assert!(
        report.contains("\"apps\"") || v.is_object(),
        "not a report: {report}"
    );
    same(
        &qemu,
        &arm,
        &native,
        &[
            "discover",
            "--format",
            "csv",
            "userspace/logs/testdata/logs/fortinet_fortigate.log",
            "userspace/logs/testdata/logs/cisco_umbrella_proxy.log",
            "userspace/logs/testdata/logs/cef.log",
        ],
    );
    let shown = same(&qemu, &arm, &native, &["catalog", "show", "dropbox"]);
    assert!(shown.to_lowercase().contains("dropbox"), "{shown}");
    same(&qemu, &arm, &native, &["catalog", "search", "drive"]);
    same(
        &qemu,
        &arm,
        &native,
        &["check-config", "configs/default.toml"],
    );
    // A config that unsanctions two apps: their domains in each export format.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        "[apps.dropbox]\ntag = \"unsanctioned\"\n\n[apps.box]\ntag = \"unsanctioned\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    for format in ["nft", "squid", "paloalto-edl", "domains"] {
        let list = same(
            &qemu,
            &arm,
            &native,
            &[
                "export",
                "blocklist",
                "--format",
                format,
                "--config",
                config,
            ],
        );
        assert!(list.contains("dropbox"), "{format}: {list}");
    }
}

#[test]
fn the_hub_runs_on_arm64_with_sqlite() {
    let test = "the_hub_runs_on_arm64_with_sqlite";
    let Some((arm, _native, qemu)) = binaries(test, "tollgate-hub") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\ndatabase = \"sqlite://{}/hub.db\"\n\
             server_names = [\"127.0.0.1\"]\n",
            dir.path().join("state").display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let hub = |args: &[&str]| {
        let mut c = Command::new(&qemu);
        c.arg("-L")
            .arg("/usr/aarch64-linux-gnu")
            .arg(&arm)
            .arg("--config")
            .arg(&config)
            .args(args);
        c
    };
    let log = std::fs::File::create(dir.path().join("hub.log")).unwrap();
    let mut child = hub(&["run"])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Its first line says where it listens (emulated: allow it time).
    let line = {
        use std::io::Read;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\n") && Instant::now() < deadline {
            match stdout.read(&mut byte) {
                Ok(1) => got.push(byte[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    let logged = || std::fs::read_to_string(dir.path().join("hub.log")).unwrap_or_default();
    assert!(line.contains("listening on"), "{line}{}", logged());
    // It answers TLS on its port (its own CA; the handshake is what is checked).
    let tls = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-brief",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&tls.stderr);
    assert!(
        said.contains("Protocol version"),
        "no TLS from the hub: {said}"
    );
    // Its CLI on the same database: a one-time enrollment token and the (empty) fleet.
    let token = run(&mut hub(&["token", "create", "--site", "branch-arm"]));
    assert!(!token.stdout.is_empty());
    let fleet = run(&mut hub(&["gateways", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&fleet.stdout).expect("JSON");
    assert_eq!(v.as_array().map(Vec::len), Some(0), "{v}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_arm64_packages_say_arm64() {
    let dir = root().join("target/debian");
    let debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with("_arm64.deb"))
        .collect();
    if debs.is_empty() {
        eprintln!("SKIP the_arm64_packages_say_arm64: no arm64 packages in target/debian");
        return;
    }
    assert_eq!(debs.len(), 2, "{debs:?}");
    for deb in debs {
        let control = run(Command::new("dpkg-deb")
            .args(["--field"])
            .arg(&deb)
            .arg("Architecture"));
        assert_eq!(String::from_utf8_lossy(&control.stdout).trim(), "arm64");
        let x = tempfile::tempdir().unwrap();
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(x.path()));
        let bins: Vec<PathBuf> = std::fs::read_dir(x.path().join("usr/bin"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        assert_eq!(bins.len(), 1, "{bins:?}");
        let file = run(Command::new("file").arg(&bins[0]));
        let kind = String::from_utf8_lossy(&file.stdout);
        assert!(kind.contains("ARM aarch64"), "{}: {kind}", deb.display());
    }
}
