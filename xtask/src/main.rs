//! Tollgate's orchestration: `cargo xtask setup | run | test | bench`.
//!
//! `setup` is idempotent: it installs what a fresh machine lacks (the pinned nightly with
//! rust-src, bpf-linker built against exactly that nightly's libLLVM into `.tools/`, Debian
//! and Python packages the tests use) and returns in a few seconds when all is there.
//! `run` and `test` call `setup` first, so a newcomer needs only those two commands.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

mod bench;
mod package;

/// The nightly that builds the eBPF probes. bpf-linker is linked against this nightly's
/// libLLVM, so changing it means rebuilding bpf-linker (setup does it: the stamp differs).
const NIGHTLY: &str = "nightly-2026-05-20";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz for the fuzz smoke run of `test` (installed into `.tools` like bpf-linker).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Wall-clock budget of the fuzz smoke run (after the tests), shared by every target; each
/// target gets at most `FUZZ_SECS_PER_TARGET` of it.
const FUZZ_BUDGET_SECS: u64 = 240;
const FUZZ_SECS_PER_TARGET: u64 = 20;

/// Debian packages: (a command or file that proves the package is there, the package).
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("bpftool", "bpftool"),
    ("ethtool", "ethtool"),
    ("tcpdump", "tcpdump"),
    ("tshark", "tshark"),
    ("iperf3", "iperf3"),
    ("nginx", "nginx"),
    ("dnsmasq", "dnsmasq"),
    ("ndpiReader", "libndpi-bin"),
    ("ip", "iproute2"),
    ("dig", "dnsutils"),
    ("openssl", "openssl"),
    ("curl", "curl"),
    ("nft", "nftables"),
    ("chromium", "chromium"),
    // The hub's console is tested in headless Chromium driven over WebDriver.
    ("chromedriver", "chromium-driver"),
    ("certutil", "libnss3-tools"),
    ("python3", "python3"),
    ("scapy", "python3-scapy"),
    // The catalog generator's check refuses rules on registries' public suffixes.
    (
        "/usr/share/publicsuffix/public_suffix_list.dat",
        "publicsuffix",
    ),
    // The hub's tests run against a real PostgreSQL cluster that `test` starts.
    ("pg_ctlcluster", "postgresql"),
    // The alert sinks are tested against a real rsyslog over TCP and TLS (gtls driver).
    ("rsyslogd", "rsyslog"),
    (
        "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so",
        "rsyslog-gnutls",
    ),
    // The metrics e2e tests scrape the gateway and the hub with a real Prometheus.
    ("prometheus", "prometheus"),
];

/// Python packages the end-to-end tests drive real clients and servers with: (module,
/// distribution, version). Pinned: pip runs as root, so what it installs is what was tested.
const PYTHON_PACKAGES: &[(&str, &str, &str)] = &[
    ("aioquic", "aioquic", "1.7.2"),
    ("curl_cffi", "curl_cffi", "0.17.0"),
    // The evasion e2e tests craft packets with scapy; python3 may not be Debian's.
    ("scapy", "scapy", "2.6.1"),
    // The GeoIP tests build a small MaxMind-format database with it (pulls netaddr).
    ("mmdb_writer", "mmdb-writer", "0.2.5"),
];

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let mut args = env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match cmd.as_str() {
        "setup" => setup(true),
        "build" => {
            setup(false)?;
            build_release()
        }
        "run" => run(&rest),
        "test" => test(&rest),
        "bench" => bench(&rest),
        "package" => {
            setup(false)?;
            package::package()
        }
        "with-postgres" => with_postgres(&rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <setup|build|run|test|bench|package> [args]\n\
                 \n  setup   install toolchain, bpf-linker and test packages (idempotent)\
                 \n  build   release build of the tollgate binary (with the embedded eBPF object)\
                 \n  run     setup, build and run `tollgate run` on the embedded default config\
                 \n          (extra args go to `tollgate`, e.g. `cargo xtask run -- --config F`)\
                 \n  test    setup and run every test (root-only tests skip when not root)\
                 \n  bench   [NAME...|--list] run the README's benchmarks (each prints ratios)\
                 \n  package build the .deb packages of tollgate and tollgate-hub (target/debian)\
                 \n  with-postgres -- CMD...  run CMD with a throwaway PostgreSQL cluster in\
                 \n          TOLLGATE_TEST_POSTGRES (e.g. `-- cargo test -p tollgate-hub`)"
            );
            bail!("unknown command {cmd:?}")
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn tools_dir() -> PathBuf {
    workspace_root().join(".tools")
}

/// PATH with the project's tools first, so the probes' build finds bpf-linker.
fn tool_path() -> OsString {
    let mut paths = vec![tools_dir().join("bin")];
    if let Some(p) = env::var_os("PATH") {
        paths.extend(env::split_paths(&p));
    }
    env::join_paths(paths).unwrap_or_default()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn have_command(name: &str) -> bool {
    // A library (a plugin of another package) is proved by its path.
    if name.starts_with('/') && !name.contains(' ') {
        return Path::new(name).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {name} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn status(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !st.success() {
        bail!("{shown} failed with {st}");
    }
    Ok(())
}

/// Installs what is missing. `with_test_deps` adds the Debian and Python packages the
/// tests need; `run` only needs the toolchain.
fn setup(with_test_deps: bool) -> Result<()> {
    ensure_nightly()?;
    ensure_bpf_linker()?;
    if with_test_deps {
        ensure_debian_packages()?;
        ensure_python_packages()?;
        ensure_cargo_fuzz()?;
    }
    ensure_bpffs();
    Ok(())
}

fn ensure_nightly() -> Result<()> {
    let list = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("rustup is needed to install the nightly that builds the eBPF probes")?;
    let have = String::from_utf8_lossy(&list.stdout)
        .lines()
        .any(|l| l.starts_with(NIGHTLY));
    let has_src = have
        && Command::new("rustup")
            .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("rust-src"))
            .unwrap_or(false);
    if !has_src {
        eprintln!("setup: installing {NIGHTLY} with rust-src");
        status(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args([&format!("+{NIGHTLY}"), "--print", "sysroot"])
        .output()
        .context("rustc +nightly --print sysroot")?;
    if !out.status.success() {
        bail!("rustc +{NIGHTLY} --print sysroot failed");
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn ensure_bpf_linker() -> Result<()> {
    let tools = tools_dir();
    let linker = tools.join("bin/bpf-linker");
    let stamp = tools.join("bpf-linker.stamp");
    let want = format!("{BPF_LINKER_VERSION} {NIGHTLY}");
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if works && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against {NIGHTLY}'s libLLVM");
    let sysroot = nightly_sysroot()?;
    let libdir = sysroot.join("lib");
    let libllvm = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        .with_context(|| format!("no libLLVM in {}", libdir.display()))?;
    // libLLVM.so.22.1-rust-... or libLLVM-22-rust-...so: the major version picks the feature.
    let major: String = libllvm
        .trim_start_matches("libLLVM.so.")
        .trim_start_matches("libLLVM-")
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    if major.is_empty() {
        bail!("cannot tell the LLVM major version from {libllvm}");
    }
    // The binary keeps an rpath to this folder, so it lives in the project, not /tmp.
    let prefix = tools.join("llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(libdir.join(&libllvm), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    status(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
                "--root",
            ])
            .arg(&tools)
            .env("LLVM_PREFIX", &prefix),
    )?;
    std::fs::write(&stamp, want)?;
    Ok(())
}

fn ensure_debian_packages() -> Result<()> {
    ensure_debian(DEBIAN_PACKAGES)
}

/// Installs those of `packages` (probe, package) whose probe is missing (root only).
fn ensure_debian(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(probe, _)| !have_command(probe))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        eprintln!(
            "setup: not root, cannot install {}; tests that need them will skip",
            missing.join(" ")
        );
        return Ok(());
    }
    eprintln!("setup: apt-get install {}", missing.join(" "));
    // Packages like nginx and dnsmasq start services on install; tests start their own.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let had_policy = policy.exists();
    if !had_policy {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n")?;
        status(Command::new("chmod").args(["755", "/usr/sbin/policy-rc.d"]))?;
    }
    let result = status(Command::new("apt-get").args(["update", "-q"])).and_then(|()| {
        status(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    });
    if !had_policy {
        let _ = std::fs::remove_file(policy);
    }
    result
}

fn ensure_python_packages() -> Result<()> {
    let missing: Vec<String> = PYTHON_PACKAGES
        .iter()
        .filter(|(module, dist, version)| {
            let check = format!(
                "import {module}, importlib.metadata as m, sys; \
                 sys.exit(m.version('{dist}') != '{version}')"
            );
            !Command::new("python3")
                .args(["-c", &check])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .map(|(_, dist, version)| format!("{dist}=={version}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: pip install {}", missing.join(" "));
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "install", "-q", "--root-user-action=ignore"]);
    // A distribution's own python3 (Debian's) refuses pip installs (PEP 668) unless told.
    // The tests run `python3` as found on PATH, so the packages must go into that one: a
    // virtual environment would not be the python3 the tests start.
    let externally_managed = Command::new("python3")
        .args([
            "-c",
            "import os, sys, sysconfig; \
             sys.exit(not os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if externally_managed {
        pip.arg("--break-system-packages");
    }
    status(pip.args(&missing))
}

/// cargo-fuzz, pinned, into `.tools/bin` (a stamp records the version).
fn ensure_cargo_fuzz() -> Result<()> {
    let tools = tools_dir();
    let bin = tools.join("bin/cargo-fuzz");
    let stamp = tools.join("cargo-fuzz.stamp");
    if bin.is_file()
        && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == CARGO_FUZZ_VERSION)
    {
        return Ok(());
    }
    eprintln!(
        "setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {}",
        tools.display()
    );
    status(
        Command::new("cargo")
            .args([
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
                "--force",
                "--root",
            ])
            .arg(&tools),
    )?;
    std::fs::write(&stamp, CARGO_FUZZ_VERSION)?;
    Ok(())
}

/// bpffs is not mounted by default on these machines; the daemon mounts it too.
fn ensure_bpffs() {
    if !is_root() {
        return;
    }
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(2) == Some("bpf"))
        })
        .unwrap_or(false);
    if !mounted {
        let _ = Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status();
    }
}

fn cargo() -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root()).env("PATH", tool_path());
    c
}

fn build_release() -> Result<()> {
    status(cargo().args(["build", "--release", "-p", "tollgate"]))
}

fn run(args: &[String]) -> Result<()> {
    setup(false)?;
    build_release()?;
    let bin = workspace_root().join("target/release/tollgate");
    let args: Vec<&String> = args.iter().skip_while(|a| *a == "--").collect();
    let mut cmd = Command::new(bin);
    if args.is_empty() {
        cmd.arg("run");
    } else {
        cmd.args(args);
    }
    status(&mut cmd)
}

fn test(args: &[String]) -> Result<()> {
    setup(true)?;
    if !is_root() {
        eprintln!("test: not root: tests that need root (kernel programs, namespaces) will skip");
    }
    // Build the release binaries and their packages first: the end-to-end tests drive them as
    // a real user would, and install the packages.
    build_release()?;
    package::package()?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--no-fail-fast"])
        .args(args);
    // Kept alive until the tests are done; dropping it stops the cluster.
    let postgres = TestPostgres::start();
    match &postgres {
        Ok(pg) => {
            cmd.env("TOLLGATE_TEST_POSTGRES", &pg.url);
        }
        Err(e) => eprintln!("test: no PostgreSQL for the hub's tests ({e:#}); they will SKIP"),
    }
    // The namespace tests share the machine's two cores; running them concurrently with
    // each other makes real traffic flaky, so tests that need that serialise themselves.
    // A full test run gains nothing from incremental state, which is as large as the build.
    if env::var_os("CARGO_INCREMENTAL").is_none() {
        cmd.env("CARGO_INCREMENTAL", "0");
    }
    let tests = status(&mut cmd);
    drop(postgres);
    make_room_for_fuzzing();
    let fuzz = fuzz_smoke();
    tests.and(fuzz)
}

/// Free space the fuzz builds need, below which `test` drops the test build (target/debug)
/// before it fuzzes: the sanitizer builds of eight fuzz workspaces are large, and a CI machine
/// with a small disk once ran out of it there.
const FUZZ_ROOM_BYTES: u64 = 24 << 30;

fn make_room_for_fuzzing() {
    let target = workspace_root().join("target");
    let Some(free) = free_bytes(&target) else {
        return;
    };
    eprintln!("test: {} GiB free under {}", free >> 30, target.display());
    let debug = target.join("debug");
    if free < FUZZ_ROOM_BYTES && debug.is_dir() {
        eprintln!(
            "test: removing {} to make room for the fuzz builds",
            debug.display()
        );
        if let Err(e) = std::fs::remove_dir_all(&debug) {
            eprintln!("test: could not remove {}: {e}", debug.display());
        }
    }
}

/// Bytes free on the filesystem that holds `path`, from `df` (no libc binding needed).
fn free_bytes(path: &Path) -> Option<u64> {
    let out = Command::new("df")
        .args(["-k", "--output=avail"])
        .arg(path)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kib: u64 = text.lines().nth(1)?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// rustup's `cargo` (which takes `+toolchain`), with the project's tools on PATH and none of
/// the variables the outer cargo set for this process.
fn fuzz_cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(workspace_root()).env("PATH", tool_path());
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
    ] {
        c.env_remove(var);
    }
    c
}

/// Every cargo-fuzz workspace in the repository (`**/fuzz/Cargo.toml` under `userspace`).
fn fuzz_workspaces() -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(crates) = std::fs::read_dir(workspace_root().join("userspace")) {
        for c in crates.filter_map(|e| e.ok()) {
            let dir = c.path().join("fuzz");
            if dir.join("Cargo.toml").is_file() {
                found.push(dir);
            }
        }
    }
    found.sort();
    found
}

/// A short run of every fuzz target on its seed corpus (new inputs go to a scratch corpus,
/// never into the repository): a crash fails `test`. Skipped, with a note, without
/// cargo-fuzz or the nightly.
fn fuzz_smoke() -> Result<()> {
    let have_fuzz = fuzz_cargo()
        .args([&format!("+{NIGHTLY}"), "fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have_fuzz {
        eprintln!(
            "fuzz: SKIP (cargo-fuzz or {NIGHTLY} missing; `cargo xtask setup` installs them)"
        );
        return Ok(());
    }
    let mut targets = Vec::new();
    for ws in fuzz_workspaces() {
        let out = fuzz_cargo()
            .current_dir(&ws)
            .args([&format!("+{NIGHTLY}"), "fuzz", "list"])
            .output()
            .with_context(|| format!("cargo fuzz list in {}", ws.display()))?;
        for t in String::from_utf8_lossy(&out.stdout).lines() {
            if !t.trim().is_empty() {
                targets.push((ws.clone(), t.trim().to_string()));
            }
        }
    }
    if targets.is_empty() {
        return Ok(());
    }
    let secs = (FUZZ_BUDGET_SECS / targets.len() as u64).clamp(5, FUZZ_SECS_PER_TARGET);
    // One target dir for all the fuzz workspaces: their shared dependencies build once.
    let target_dir = workspace_root().join("target/fuzz");
    let scratch = workspace_root().join("target/fuzz-corpus");
    let mut failed = Vec::new();
    for (ws, t) in &targets {
        let work = scratch.join(t);
        std::fs::create_dir_all(&work)?;
        let seeds = ws.join("corpus").join(t);
        let mut cmd = fuzz_cargo();
        cmd.current_dir(ws)
            .env("CARGO_TARGET_DIR", &target_dir)
            .args([&format!("+{NIGHTLY}"), "fuzz", "run", t])
            .arg(&work);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.args([
            "--",
            &format!("-max_total_time={secs}"),
            "-print_final_stats=1",
        ]);
        eprintln!("fuzz: {t} ({}) for {secs} s", ws.display());
        if let Err(e) = status(&mut cmd) {
            eprintln!(
                "fuzz: {t} FAILED: {e:#} (the input is under {}/artifacts)",
                ws.display()
            );
            failed.push(t.as_str());
        }
    }
    if failed.is_empty() {
        eprintln!("fuzz: {} target(s), no crash", targets.len());
        Ok(())
    } else {
        bail!("fuzz targets failed: {}", failed.join(", "))
    }
}

fn bench(args: &[String]) -> Result<()> {
    if !args.iter().any(|a| a == "--list") {
        setup(false)?;
    }
    bench::run(args, cargo, is_root())
}

fn with_postgres(args: &[String]) -> Result<()> {
    let args: Vec<&String> = args.iter().skip_while(|a| *a == "--").collect();
    let Some((program, rest)) = args.split_first() else {
        bail!("usage: cargo xtask with-postgres -- CMD [ARGS...]");
    };
    let pg = TestPostgres::start()?;
    let mut cmd = Command::new(program);
    cmd.args(rest)
        .current_dir(workspace_root())
        .env("PATH", tool_path())
        .env("TOLLGATE_TEST_POSTGRES", &pg.url);
    status(&mut cmd)
}

/// A throwaway PostgreSQL cluster for the hub's tests: initdb into a temporary directory (as
/// the `postgres` user when run as root: the server refuses to run as root), trust
/// authentication, listening on 127.0.0.1 on a free port only, fsync off. Stopped and removed
/// on drop.
struct TestPostgres {
    dir: PathBuf,
    bin: PathBuf,
    url: String,
}

impl TestPostgres {
    fn start() -> Result<TestPostgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL is not installed (/usr/lib/postgresql)")?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").is_file())
            .max_by_key(|b| {
                b.parent()
                    .and_then(|v| v.file_name())
                    .and_then(|v| v.to_str())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .context("no initdb under /usr/lib/postgresql/*/bin")?;
        let dir = env::temp_dir().join(format!("tollgate-test-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let pg = TestPostgres {
            // The socket directory too: a hub in a test's network namespace cannot reach
            // the host's 127.0.0.1, but it can reach a unix socket.
            url: format!(
                "postgres://postgres@127.0.0.1:{port}/postgres?host={}",
                dir.display()
            ),
            dir,
            bin,
        };
        if is_root() {
            status(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&pg.dir),
            )?;
        }
        let data = pg.dir.join("data");
        status(
            pg.as_owner(&pg.bin.join("initdb"))
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "-D",
                ])
                .arg(&data),
        )?;
        status(
            pg.as_owner(&pg.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(pg.dir.join("log"))
                .arg("-o")
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
                    pg.dir.display()
                ))
                .args(["-w", "start"]),
        )?;
        eprintln!("test: PostgreSQL for the hub's tests at {}", pg.url);
        Ok(pg)
    }

    /// A command run as the cluster's owner.
    fn as_owner(&self, program: &Path) -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = self
            .as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
