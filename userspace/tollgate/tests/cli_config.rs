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
