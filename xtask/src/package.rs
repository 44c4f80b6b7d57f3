//! `cargo xtask package`: Debian packages of the gateway (`tollgate`) and the hub
//! (`tollgate-hub`), built with `dpkg-deb` from a staged tree, for the machine's architecture.
//!
//! Each package holds the stripped binary, its hardened systemd unit and maintainer scripts
//! (`packaging/<name>/`), its default config as a conffile under `/etc/tollgate/` (so an
//! upgrade keeps the admin's edits), and its documentation. `dpkg-deb` rather than cargo-deb:
//! it is Debian's own tool, already on every machine that installs the result, and the staging
//! is a dozen lines.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, status, workspace_root};

struct Package {
    name: &'static str,
    binary: &'static str,
    /// (source in the repository, destination in the package)
    conffiles: &'static [(&'static str, &'static str)],
    docs: &'static [&'static str],
    depends: &'static str,
    description: &'static str,
}

const PACKAGES: [Package; 2] = [
    Package {
        name: "tollgate",
        binary: "tollgate",
        conffiles: &[("configs/default.toml", "etc/tollgate/tollgate.toml")],
        docs: &["README.md", "docs/CONFIG.md", "docs/ARCHITECTURE.md"],
        depends: "libc6 (>= 2.34), libgcc-s1",
        description: "edge cloud access security broker for Linux gateways\n \
             eBPF programs capture flows, TLS SNI, QUIC, DNS and HTTP metadata; a daemon\n \
             names every flow's cloud app, reports Cloud Discovery, enforces sanction\n \
             decisions in the kernel and runs a TLS session proxy for apps under session\n \
             control.",
    },
    Package {
        name: "tollgate-hub",
        binary: "tollgate-hub",
        conffiles: &[(
            "configs/hub/tollgate-hub.toml",
            "etc/tollgate/tollgate-hub.toml",
        )],
        docs: &["README.md", "docs/CONFIG.md"],
        depends: "libc6 (>= 2.34), libgcc-s1, passwd",
        description: "fleet management hub for Tollgate gateways\n \
             Enrolls gateways, publishes signed policy bundles to them, and stores what\n \
             they discovered, in SQLite or PostgreSQL.",
    },
];

/// Where the packages are written.
pub fn out_dir() -> PathBuf {
    workspace_root().join("target/debian")
}

/// Builds both binaries in release and packages them; prints the paths.
pub fn package() -> Result<()> {
    status(cargo().args(["build", "--release", "-p", "tollgate", "-p", "tollgate-hub"]))?;
    // xtask's version is the workspace's (`version.workspace = true`).
    let version = env!("CARGO_PKG_VERSION");
    let arch = dpkg_architecture()?;
    let out = out_dir();
    std::fs::create_dir_all(&out)?;
    for p in &PACKAGES {
        let deb = build(p, version, &arch, &out)?;
        println!("package: {}", deb.display());
    }
    Ok(())
}

fn build(p: &Package, version: &str, arch: &str, out: &Path) -> Result<PathBuf> {
    let root = workspace_root();
    let stage = out.join("stage").join(p.name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    let debian = stage.join("DEBIAN");
    std::fs::create_dir_all(&debian)?;

    let bin_dir = stage.join("usr/bin");
    std::fs::create_dir_all(&bin_dir)?;
    let bin = bin_dir.join(p.binary);
    status(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(root.join("target/release").join(p.binary))
            .arg(&bin),
    )?;
    set_mode(&bin, 0o755)?;

    let src = root.join("packaging").join(p.name);
    let unit_dir = stage.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&unit_dir)?;
    let unit = format!("{}.service", p.name);
    copy(&src.join(&unit), &unit_dir.join(&unit), 0o644)?;

    let mut conffiles = String::new();
    for (from, to) in p.conffiles {
        let dest = stage.join(to);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        copy(&root.join(from), &dest, 0o644)?;
        conffiles.push_str(&format!("/{to}\n"));
    }
    std::fs::write(debian.join("conffiles"), conffiles)?;

    let doc_dir = stage.join("usr/share/doc").join(p.name);
    std::fs::create_dir_all(&doc_dir)?;
    for doc in p.docs {
        let name = Path::new(doc).file_name().context("doc file name")?;
        copy(&root.join(doc), &doc_dir.join(name), 0o644)?;
    }

    for script in ["postinst", "prerm", "postrm"] {
        copy(&src.join(script), &debian.join(script), 0o755)?;
    }
    let installed_kib = dir_size(&stage)? / 1024;
    std::fs::write(
        debian.join("control"),
        format!(
            "Package: {}\nVersion: {version}\nArchitecture: {arch}\n\
             Maintainer: Tollgate developers <tollgate@localhost>\nSection: net\n\
             Priority: optional\nInstalled-Size: {installed_kib}\nDepends: {}\n\
             Description: {}\n",
            p.name, p.depends, p.description
        ),
    )?;
    let deb = out.join(format!("{}_{version}_{arch}.deb", p.name));
    status(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(deb)
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    set_mode(to, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn dpkg_architecture() -> Result<String> {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("running dpkg --print-architecture")?;
    if !out.status.success() {
        bail!("dpkg --print-architecture failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
