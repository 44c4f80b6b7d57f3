//! End to end: the Debian packages that `cargo xtask package` builds, installed with `dpkg`
//! into a throwaway root (an overlay over this machine's own, in a private mount namespace
//! inside the gateway's network namespace, so nothing leaks onto the machine) and run the way
//! their systemd units say, without systemd:
//!
//! - the gateway: `ExecStart` from the installed unit, under `setpriv` with only the unit's
//!   `CapabilityBoundingSet`, tells `NOTIFY_SOCKET` it is ready (`Type=notify`), attaches its
//!   programs, answers `tollgate status`; reinstalling the package (the upgrade path) keeps it
//!   running and its programs attached; removing the package stops it and leaves no program
//!   attached.
//! - the hub: its system user made by the package, run as that user with no capability at
//!   all, ready over `NOTIFY_SOCKET`, its CLI answers; purging removes its state.
//!
//! Skips when the packages were not built (`cargo xtask package`; `cargo xtask test` builds
//! them) or a tool is missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tollgate_e2e::{Topology, serial, sh};

fn ready(test: &str) -> bool {
    tollgate_e2e::ready(
        test,
        &[
            "dpkg", "dpkg-deb", "setpriv", "unshare", "chroot", "bpftool", "python3",
        ],
        &[],
    )
}

/// The newest `NAME_*_ARCH.deb` in `target/debian`, for this machine's architecture (the
/// arm64 ones are tested under qemu-user by `arm64.rs`).
fn deb(name: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    let arch = std::process::Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .ok()?;
    let arch = String::from_utf8_lossy(&arch.stdout).trim().to_string();
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&format!("{name}_")) && n.ends_with(&format!("_{arch}.deb"))
            })
        })
        .collect();
    found.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    found.pop()
}

/// The script run inside the throwaway root. `$S` is the scratch dir (bind-mounted at the
/// same path), where the packages are and where every result is written.
const IN_ROOT: &str = r#"
set -u
cd /
unit=/usr/lib/systemd/system/tollgate.service
caps() { sed -n "s/^CapabilityBoundingSet=//p" "$1" | tr 'A-Z' 'a-z' | sed 's/cap_//g; s/ \+/,+/g; s/^/-all,+/'; }

# --- the gateway -------------------------------------------------------------------------
dpkg -i "$S/tollgate.deb" > "$S/install.log" 2>&1; echo $? > "$S/install.rc"
test -f /etc/tollgate/tollgate.toml && echo yes > "$S/conffile"
exec_start=$(sed -n 's/^ExecStart=//p' $unit)
gw_caps=$(caps $unit)
echo "$gw_caps" > "$S/gw-caps"
NOTIFY_SOCKET="$S/notify.sock" setpriv --bounding-set "$gw_caps" --inh-caps -all \
    $exec_start > "$S/daemon.log" 2>&1 &
daemon=$!
for i in $(seq 1 150); do
    grep -q READY=1 "$S/notify.log" 2>/dev/null && break
    sleep 0.2
done
tollgate status --json --config /etc/tollgate/tollgate.toml > "$S/status.json" 2>"$S/status.err"
grep CapEff /proc/$daemon/status > "$S/gw-capeff"
bpftool prog show > "$S/attached-before.txt" 2>&1
# The upgrade path: the same package again, while the daemon runs.
dpkg -i "$S/tollgate.deb" > "$S/reinstall.log" 2>&1; echo $? > "$S/reinstall.rc"
kill -0 $daemon 2>/dev/null && echo yes > "$S/alive-after-reinstall"
bpftool prog show > "$S/attached-reinstall.txt" 2>&1
dpkg -r tollgate > "$S/remove.log" 2>&1; echo $? > "$S/remove.rc"
for i in $(seq 1 50); do kill -0 $daemon 2>/dev/null || break; sleep 0.2; done
kill -0 $daemon 2>/dev/null && echo yes > "$S/alive-after-remove"
kill -9 $daemon 2>/dev/null
# The kernel frees programs after their last reference asynchronously (a prog array is emptied
# by deferred work once no user holds it, a program after an RCU grace period): give it up to
# 10 s before reading what is left. A program still there then is a leak.
for i in $(seq 1 100); do
    bpftool prog show 2>/dev/null | grep -q ' name tg_' || break
    sleep 0.1
done
bpftool prog show > "$S/attached-after.txt" 2>&1
test -e /usr/bin/tollgate && echo yes > "$S/binary-left"

# --- the hub -----------------------------------------------------------------------------
: > "$S/notify.log"
dpkg -i "$S/tollgate-hub.deb" > "$S/hub-install.log" 2>&1; echo $? > "$S/hub-install.rc"
hub_unit=/usr/lib/systemd/system/tollgate-hub.service
hub_user=$(sed -n 's/^User=//p' $hub_unit)
hub_exec=$(sed -n 's/^ExecStart=//p' $hub_unit)
grep -q '^CapabilityBoundingSet=$' $hub_unit && echo yes > "$S/hub-no-caps"
stat -c '%U %a' /var/lib/tollgate-hub > "$S/hub-state-dir"
chown "$hub_user" "$S/notify.sock"
NOTIFY_SOCKET="$S/notify.sock" setpriv --reuid "$hub_user" --regid "$hub_user" --init-groups \
    --bounding-set -all --inh-caps -all $hub_exec > "$S/hub.log" 2>&1 &
hub=$!
for i in $(seq 1 150); do
    grep -q READY=1 "$S/notify.log" 2>/dev/null && break
    sleep 0.2
done
grep -q READY=1 "$S/notify.log" && echo yes > "$S/hub-ready"
setpriv --reuid "$hub_user" --regid "$hub_user" --init-groups \
    tollgate-hub gateways --json --config /etc/tollgate/tollgate-hub.toml \
    > "$S/hub-gateways.json" 2>"$S/hub-gateways.err"
grep CapEff /proc/$hub/status > "$S/hub-capeff"
kill $hub; wait $hub 2>/dev/null
dpkg -P tollgate-hub > "$S/hub-purge.log" 2>&1; echo $? > "$S/hub-purge.rc"
test -e /var/lib/tollgate-hub && echo yes > "$S/hub-state-left"
echo done > "$S/done"
"#;

#[test]
fn the_packages_install_run_hardened_upgrade_and_remove_cleanly() {
    let test = "the_packages_install_run_hardened_upgrade_and_remove_cleanly";
    if !ready(test) {
        return;
    }
    let (Some(gateway_deb), Some(hub_deb)) = (deb("tollgate"), deb("tollgate-hub")) else {
        eprintln!("SKIP {test}: no packages in target/debian (run `cargo xtask package`)");
        return;
    };
    let _serial = serial();
    let topo = Topology::new("pk", 1500).expect("topology");
    let g = topo.gateway.clone();
    // The embedded default config attaches to the default route's interface.
    sh(&format!("ip -n {g} route add default via 198.18.2.2")).expect("default route");
    let s = topo.scratch().to_path_buf();
    std::fs::copy(&gateway_deb, s.join("tollgate.deb")).expect("copy deb");
    std::fs::copy(&hub_deb, s.join("tollgate-hub.deb")).expect("copy deb");
    // systemd's side of NOTIFY_SOCKET: every datagram, one per line.
    let listener = std::os::unix::net::UnixDatagram::bind(s.join("notify.sock")).expect("bind");
    listener
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let notify_log = s.join("notify.log");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let log = notify_log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = listener.recv(&mut buf) {
                    use std::io::Write;
                    if let Ok(mut f) = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)
                    {
                        let _ = f.write_all(&buf[..n]);
                        let _ = f.write_all(b"\n");
                    }
                }
            }
        })
    };

    let sd = s.display();
    let outer = format!(
        "set -e; O={sd}/ovl; mkdir -p $O; mount -t tmpfs tmpfs $O; mkdir -p $O/u $O/w $O/m; \
         mount -t overlay overlay -o lowerdir=/,upperdir=$O/u,workdir=$O/w $O/m; \
         for d in proc sys dev; do mount --rbind /$d $O/m/$d; done; \
         mount -t tmpfs tmpfs $O/m/run; mount --bind {sd} $O/m{sd}; \
         S={sd} chroot $O/m sh -c '{}'",
        IN_ROOT.replace('\'', "'\\''")
    );
    let out = std::process::Command::new("timeout")
        .args(["240", "ip", "netns", "exec", &g, "unshare", "-m"])
        .args(["--propagation", "private", "sh", "-c", &outer])
        .output()
        .expect("running the install script");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = reader.join();
    let read = |name: &str| std::fs::read_to_string(s.join(name)).unwrap_or_default();
    let context = || {
        format!(
            "script: {}\n{}\ninstall: {}\ndaemon: {}\nnotify: {}\nremove: {}\nhub: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            read("install.log"),
            read("daemon.log"),
            read("notify.log"),
            read("remove.log"),
            read("hub.log"),
        )
    };
    assert_eq!(read("done").trim(), "done", "{}", context());

    // The gateway.
    assert_eq!(read("install.rc").trim(), "0", "{}", context());
    assert_eq!(
        read("conffile").trim(),
        "yes",
        "default config not installed"
    );
    assert_eq!(
        read("gw-caps").trim(),
        "-all,+bpf,+perfmon,+net_admin,+net_raw,+sys_admin",
        "the unit's capability bounding set"
    );
    // CAP_SYS_MODULE (bit 16) and CAP_SYS_PTRACE (bit 19), for two, are not the daemon's.
    let cap_eff = u64::from_str_radix(
        read("gw-capeff")
            .trim()
            .trim_start_matches("CapEff:")
            .trim(),
        16,
    )
    .unwrap_or(u64::MAX);
    assert_eq!(cap_eff & (1 << 16 | 1 << 19), 0, "{}", read("gw-capeff"));
    assert!(
        read("notify.log").contains("READY=1"),
        "the gateway never said it was ready: {}",
        context()
    );
    let status: serde_json::Value = serde_json::from_str(&read("status.json")).unwrap_or_default();
    assert!(
        status["mode"] == "monitor",
        "`tollgate status` did not answer: {} {}\n{}",
        read("status.json"),
        read("status.err"),
        context()
    );
    // The kernel's own list of loaded programs (the probes are named `tg_*`): bpftool of this
    // Debian release predates tcx links, so it cannot list them per interface.
    let tollgate_programs = |text: &str| -> Vec<String> {
        let mut names: Vec<String> = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "name" && w[1].starts_with("tg_"))
            .map(|w| w[1].to_string())
            .collect();
        names.sort();
        names
    };
    let before = tollgate_programs(&read("attached-before.txt"));
    assert!(
        before.iter().any(|n| n == "tg_wan_egress"),
        "no program loaded while running: {before:?}\n{}",
        context()
    );
    assert_eq!(
        read("reinstall.rc").trim(),
        "0",
        "{}",
        read("reinstall.log")
    );
    assert_eq!(
        read("alive-after-reinstall").trim(),
        "yes",
        "an upgrade stopped the daemon without systemd to start it again"
    );
    assert_eq!(
        tollgate_programs(&read("attached-reinstall.txt")),
        before,
        "an upgrade changed what is loaded"
    );
    assert_eq!(read("remove.rc").trim(), "0", "{}", read("remove.log"));
    assert_eq!(
        read("alive-after-remove"),
        "",
        "removing the package left the daemon running"
    );
    let after = tollgate_programs(&read("attached-after.txt"));
    assert!(
        after.is_empty(),
        "programs still loaded after removal: {after:?}"
    );
    assert_eq!(read("binary-left"), "", "the binary outlived its package");

    // The hub.
    assert_eq!(
        read("hub-install.rc").trim(),
        "0",
        "{}",
        read("hub-install.log")
    );
    assert_eq!(
        read("hub-no-caps").trim(),
        "yes",
        "the hub's unit grants capabilities"
    );
    assert!(
        read("hub-state-dir").starts_with("tollgate-hub 700"),
        "{}",
        read("hub-state-dir")
    );
    assert_eq!(read("hub-ready").trim(), "yes", "{}", context());
    assert!(
        read("hub-capeff").contains("0000000000000000"),
        "the hub ran with capabilities: {}",
        read("hub-capeff")
    );
    let gateways: serde_json::Value =
        serde_json::from_str(&read("hub-gateways.json")).unwrap_or_default();
    assert!(
        gateways.is_array(),
        "the hub's CLI did not answer as its user: {} {}",
        read("hub-gateways.json"),
        read("hub-gateways.err")
    );
    assert_eq!(
        read("hub-purge.rc").trim(),
        "0",
        "{}",
        read("hub-purge.log")
    );
    assert_eq!(read("hub-state-left"), "", "purge left the hub's state");
}
