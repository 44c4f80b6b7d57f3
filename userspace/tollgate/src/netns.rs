//! `--netns NAME`: the daemon enters a named network namespace itself, before its runtime
//! starts, so that every thread it makes lives there. Only the network namespace changes:
//! the mount namespace (and so bpffs and its pins) stays the host's, which `ip netns exec`
//! would hide by remounting /sys.

use std::fs::File;

use anyhow::{Context, Result};
use nix::sched::{CloneFlags, setns};

pub fn enter(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        anyhow::bail!("{name:?} is not a network namespace name");
    }
    let path = format!("/run/netns/{name}");
    let f = File::open(&path)
        .with_context(|| format!("opening {path} (does `ip netns add {name}` exist?)"))?;
    setns(&f, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {name}"))?;
    Ok(())
}
