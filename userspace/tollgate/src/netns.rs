//! `--netns NAME`: the daemon enters a named network namespace itself, before its runtime
//! starts, so that every thread it makes lives there. Only the network namespace changes:
//! the mount namespace (and so bpffs and its pins) stays the host's, which `ip netns exec`
//! would hide by remounting /sys.

use std::fs::File;

use anyhow::{Context, Result};
use nix::sched::{CloneFlags, setns};

/// Checks that `name` is a plain namespace name (`ip netns` names are file names under
/// /run/netns): not empty, no `/`, not `.` or `..`, no NUL. The name also picks the pin
/// directory `/sys/fs/bpf/tollgate/NAME` that `tollgate stop` removes, so a path there would
/// point anywhere.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['/', '\0']) || name == "." || name == ".." {
        anyhow::bail!("{name:?} is not a network namespace name");
    }
    Ok(())
}

pub fn enter(name: &str) -> Result<()> {
    validate_name(name)?;
    let path = format!("/run/netns/{name}");
    let f = File::open(&path)
        .with_context(|| format!("opening {path} (does `ip netns add {name}` exist?)"))?;
    setns(&f, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_that_are_paths_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", "/abs", "x\0"] {
            assert!(super::validate_name(bad).is_err(), "{bad:?}");
        }
        for good in ["tg-ns1", "...", "a.b"] {
            assert!(super::validate_name(good).is_ok(), "{good:?}");
        }
    }
}
