//! `cargo xtask package`: Debian packages of the gateway (`tollgate`) and the hub
//! (`tollgate-hub`), built with `dpkg-deb` from a staged tree, for the machine's architecture
//! and, cross-built, for arm64 (the edge boxes branches run): Rust's aarch64 target, Debian's
//! aarch64 cross gcc for the C in the dependencies (ring, SQLite), and the kernel programs of
//! the native build (BPF is the same for every CPU: `TOLLGATE_PROBES_OBJECT`). The arm64
//! binaries are tested under qemu-user (`tests/tests/arm64.rs`).
//!
//! Each package holds the stripped binary, its hardened systemd unit and maintainer scripts
//! (`packaging/<name>/`), its default config as a conffile under `/etc/tollgate/` (so an
//! upgrade keeps the admin's edits), and its documentation. `dpkg-deb` rather than cargo-deb:
//! it is Debian's own tool, already on every machine that installs the result, and the staging
//! is a dozen lines.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, ensure_debian, is_root, status, workspace_root};

/// The Rust target of the arm64 packages.
pub const ARM64_TARGET: &str = "aarch64-unknown-linux-gnu";
/// Debian's cross toolchain for it, and qemu-user for the tests: (probe, package).
const CROSS_PACKAGES: &[(&str, &str)] = &[
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    (
        "/usr/aarch64-linux-gnu/include/stdio.h",
        "libc6-dev-arm64-cross",
    ),
    ("qemu-aarch64", "qemu-user"),
    // The tests check what the binaries are.
    ("file", "file"),
];

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

/// Builds both binaries in release and packages them, natively and for arm64; prints the
/// paths. Without the cross toolchain (and not root to install it) arm64 is skipped, said.
pub fn package() -> Result<()> {
    status(cargo().args(["build", "--release", "-p", "tollgate", "-p", "tollgate-hub"]))?;
    // xtask's version is the workspace's (`version.workspace = true`).
    let version = env!("CARGO_PKG_VERSION");
    let arch = dpkg_architecture()?;
    let out = out_dir();
    std::fs::create_dir_all(&out)?;
    let native = workspace_root().join("target/release");
    for p in &PACKAGES {
        let deb = build(p, version, &arch, &native, "objcopy", &out)?;
        println!("package: {}", deb.display());
    }
    if arch == "arm64" {
        return Ok(());
    }
    match build_arm64() {
        Ok(dir) => {
            for p in &PACKAGES {
                let deb = build(p, version, "arm64", &dir, "aarch64-linux-gnu-objcopy", &out)?;
                println!("package: {}", deb.display());
            }
            Ok(())
        }
        Err(e) if !is_root() => {
            eprintln!("package: arm64 skipped: {e:#}");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Cross-builds both binaries for arm64 with the native build's kernel programs; the folder of
/// the binaries.
fn build_arm64() -> Result<PathBuf> {
    ensure_debian(CROSS_PACKAGES)?;
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(workspace_root())
        .output()
        .context("rustup target list")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == ARM64_TARGET)
    {
        status(
            Command::new("rustup")
                .args(["target", "add", ARM64_TARGET])
                .current_dir(workspace_root()),
        )?;
    }
    let probes = probes_object()?;
    status(
        cargo()
            .args(["build", "--release", "--target", ARM64_TARGET])
            .args(["-p", "tollgate", "-p", "tollgate-hub"])
            .env("TOLLGATE_PROBES_OBJECT", &probes)
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
                "aarch64-linux-gnu-gcc",
            )
            .env("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc")
            .env("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar"),
    )?;
    Ok(workspace_root()
        .join("target")
        .join(ARM64_TARGET)
        .join("release"))
}

/// The kernel programs' object of the native release build (the newest, if several).
fn probes_object() -> Result<PathBuf> {
    let build = workspace_root().join("target/release/build");
    std::fs::read_dir(&build)
        .with_context(|| format!("reading {}", build.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("tollgate-dataplane-")
        })
        .map(|e| e.path().join("out/tollgate-probes"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .context("no kernel programs' object in the native release build")
}

fn build(
    p: &Package,
    version: &str,
    arch: &str,
    bins: &Path,
    objcopy: &str,
    out: &Path,
) -> Result<PathBuf> {
    let root = workspace_root();
    let stage = out.join("stage").join(arch).join(p.name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    let debian = stage.join("DEBIAN");
    std::fs::create_dir_all(&debian)?;

    let bin_dir = stage.join("usr/bin");
    std::fs::create_dir_all(&bin_dir)?;
    let bin = bin_dir.join(p.binary);
    status(
        Command::new(objcopy)
            .arg("--strip-debug")
            .arg(bins.join(p.binary))
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
