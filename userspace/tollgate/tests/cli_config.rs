//! The binary's contract for config files: a bad config exits 64 with file, line and key.

use std::process::Command;

fn tollgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
}

#[test]
fn bad_config_exits_64_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        "mode = \"monitor\"\n[[interfaces]]\nname = \"eth0\"\nrole = \"dmz\"\n",
    )
    .unwrap();
    for run in [false, true] {
        let mut cmd = tollgate();
        if run {
            cmd.args(["run", "--config"]);
        } else {
            cmd.arg("check-config");
        }
        let out = cmd.arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "run={run}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("gw.toml:4:"), "run={run}: {err}");
        assert!(err.contains("interfaces[0].role"), "run={run}: {err}");
    }
}

#[test]
fn missing_config_file_is_a_config_error() {
    let out = tollgate()
        .args(["check-config", "/nonexistent/tollgate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tollgate.toml"));
}

#[test]
fn shipped_example_configs_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = tollgate().arg("check-config").arg(&path).output().unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "expected the default and example configs in {}",
        root.display()
    );
}

/// A reader that goes away (`tollgate catalog list | head -1`) must not make it panic.
#[test]
fn closed_stdout_is_not_a_panic() {
    for args in [&["catalog", "list"][..], &["catalog", "list", "--json"][..]] {
        let mut child = tollgate()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Close our end of the pipe at once.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// `check-config` compiles the policies and checks the app ids they name, as `run` does:
/// "ok" means the daemon accepts the file.
#[test]
fn check_config_compiles_policies_and_checks_app_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    let policy = |apps: &str, custom: &str| {
        format!(
            "[[interfaces]]\nname = \"eth1\"\nrole = \"lan\"\n\n\
             [[session_policies]]\nname = \"dlp\"\napps = [{apps}]\naction = \"block\"\n\
             upload = {{ custom = [{custom}] }}\n"
        )
    };
    std::fs::write(&path, policy("\"dropbox\"", "\"card-[0-9]{4}\"")).unwrap();
    let out = tollgate().arg("check-config").arg(&path).output().unwrap();
    assert!(out.status.success(), "{out:?}");

    std::fs::write(&path, policy("\"dropbox\"", "\"card-([0-9]\"")).unwrap();
    let out = tollgate().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "bad regex: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("p.toml") && err.contains("dlp"), "{err}");

    std::fs::write(&path, policy("\"dropbx\"", "\"x\"")).unwrap();
    let out = tollgate().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "unknown app: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("session_policies[0].apps") && err.contains("\"dropbx\""),
        "{err}"
    );
}

fn run_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("run.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{0}/state\"\ncontrol_socket = \"{0}/ctl.sock\"\n\
             [[interfaces]]\nname = \"tgnone0\"\nrole = \"lan\"\n",
            dir.display()
        ),
    )
    .unwrap();
    path
}

/// Live tags that cannot be read stop `tollgate run` with a clear error, before it touches
/// the system, and the file is never replaced. (`--netns` with a namespace that does not
/// exist stops a start that got past the tags before anything is attached.)
#[test]
fn run_refuses_to_start_without_its_live_tags() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = run_config(dir.path());
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let run = || {
        tollgate()
            .args(["run", "--netns", "tg-no-such-ns-cli", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    // Unreadable (a directory where the file should be: EISDIR, as EIO or EACCES would).
    let tags = state.join("tags.json");
    std::fs::create_dir(&tags).unwrap();
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("live tags cannot be read"), "{err}");
    assert!(
        !err.contains("/run/netns"),
        "refused before the namespace: {err}"
    );
    assert!(tags.is_dir(), "left in place");
    std::fs::remove_dir(&tags).unwrap();

    // Corrupt: moved aside (kept), and this start refused.
    std::fs::write(&tags, b"{\"version\":1,\"tags\":{\"dropbox\":").unwrap();
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("moved aside to"), "{err}");
    let moved: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("unreadable"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    // The next start, told once, goes on (here to the missing namespace).
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/run/netns/tg-no-such-ns-cli"), "{err}");
}

/// `stop --netns` takes a namespace name, never a path: the name picks a directory that
/// `stop` removes when no daemon answers.
#[test]
fn stop_refuses_a_netns_that_is_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    // /sys/fs/bpf/tollgate/../../../../<victim> is <victim> whenever the first exists.
    let ns = format!("../../../..{}", victim.display());
    for ns in [ns.as_str(), "../x", ".."] {
        let out = tollgate()
            .args(["stop", "--control"])
            .arg(dir.path().join("none.sock"))
            .args(["--netns", ns])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{ns}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not a network namespace name"), "{err}");
    }
    assert!(victim.is_dir());
}

/// Session control needs a LAN interface: refused at load, naming the key.
#[test]
fn session_control_without_lan_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(&path, "[apps.dropbox]\nsession_control = true\n").unwrap();
    for run in [false, true] {
        let mut cmd = tollgate();
        if run {
            cmd.args(["run", "--config"]);
        } else {
            cmd.arg("check-config");
        }
        let out = cmd.arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "run={run}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("apps.dropbox.session_control"), "{err}");
    }
}

/// `check-config` reads `[[activity_policies]]` and `[[alert_sinks]]` as `run` does: a policy
/// naming an app not in the catalog, or a sink with a bad address, exits 64 naming the key.
#[test]
fn check_config_checks_activity_policies_and_alert_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.toml");
    let text = |app: &str, address: &str| {
        format!(
            "[[activity_policies]]\nname = \"mass download\"\nseverity = \"high\"\n\
             activity = \"download\"\napps = [\"{app}\"]\n\
             repeated = {{ count = 50, within_secs = 60, per_user = true }}\n\n\
             [[alert_sinks]]\nkind = \"syslog\"\naddress = \"{address}\"\nformat = \"cef\"\n"
        )
    };
    std::fs::write(&path, text("box", "tcp://127.0.0.1:6514")).unwrap();
    let out = tollgate().arg("check-config").arg(&path).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("1 activity polic(ies), 1 alert sink(s)"),
        "{said}"
    );

    std::fs::write(&path, text("boxx", "tcp://127.0.0.1:6514")).unwrap();
    let out = tollgate().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("activity_policies[0].apps"), "{err}");

    std::fs::write(&path, text("box", "tcp://127.0.0.1")).unwrap();
    let out = tollgate().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a.toml:10:") && err.contains("alert_sinks[0].address"),
        "{err}"
    );
}

/// `tollgate console` prints the URL with the token the daemon wrote; without a console in
/// the config it is a usage error (64), and without the token file (no daemon) a runtime one;
/// `run` and `check-config` refuse a console on a non-loopback address, naming the key.
#[test]
fn tollgate_console_prints_the_url_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let path = dir.path().join("gw.toml");
    let base = format!("state_dir = \"{}\"\n", state.display());
    std::fs::write(&path, &base).unwrap();
    let out = tollgate()
        .arg("console")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[console]"),
        "{out:?}"
    );

    std::fs::write(
        &path,
        format!("{base}[console]\nlisten = \"127.0.0.1:8470\"\n"),
    )
    .unwrap();
    let out = tollgate()
        .arg("console")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("console-token"),
        "{out:?}"
    );

    let token = tollgate::console::write_token(&state).unwrap();
    let out = tollgate()
        .arg("console")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("http://127.0.0.1:8470/?token={token}")
    );

    std::fs::write(
        &path,
        format!("{base}\n[console]\nlisten = \"0.0.0.0:8470\"\n"),
    )
    .unwrap();
    for args in [
        &["check-config"][..],
        &["run", "--config"][..],
        &["console", "--config"][..],
    ] {
        let out = tollgate().args(args).arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("gw.toml:4:"), "{args:?}: {err}");
        assert!(err.contains("console.listen"), "{args:?}: {err}");
        assert!(err.contains("loopback"), "{args:?}: {err}");
    }
}
