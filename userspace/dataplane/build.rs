//! Builds the eBPF probes (ebpf/probes, its own cargo workspace) for bpfel-unknown-none with
//! the pinned nightly through aya-build; the object lands in OUT_DIR and src/lib.rs embeds it.
//! Needs `bpf-linker` on PATH (`cargo xtask setup` installs it into the project's tools folder).
//!
//! `TOLLGATE_PROBES_OBJECT=PATH` embeds an object built earlier instead: the programs are
//! BPF, the same for every CPU the daemon runs on, so a cross build (`cargo xtask package`'s
//! arm64 one) takes the object of the native build rather than building it again.

use std::{env, path::PathBuf};

/// The nightly that bpf-linker was built against (its libLLVM must match).
const TOOLCHAIN: &str = "nightly-2026-05-20";

fn main() -> aya_build::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let probes = manifest.join("../../ebpf/probes").canonicalize()?;
    let common = manifest.join("../../ebpf/common").canonicalize()?;
    println!("cargo:rerun-if-changed={}", common.display());
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-env-changed=TOLLGATE_PROBES_OBJECT");
    if let Some(object) = env::var_os("TOLLGATE_PROBES_OBJECT") {
        let object = PathBuf::from(object);
        println!("cargo:rerun-if-changed={}", object.display());
        let out = PathBuf::from(env::var("OUT_DIR")?).join("tollgate-probes");
        std::fs::copy(&object, &out).map_err(|e| {
            anyhow_msg(&format!("TOLLGATE_PROBES_OBJECT={}: {e}", object.display()))
        })?;
        return Ok(());
    }
    let Some(linker) = find_on_path("bpf-linker") else {
        return Err(anyhow_msg(
            "bpf-linker not found on PATH: run `cargo xtask setup` or add the project's \
             .tools/bin to PATH",
        )
        .into());
    };
    println!("cargo:rerun-if-changed={}", linker.display());
    // aya-build runs `cargo build --package tollgate-probes` in the current directory; the
    // probes are their own workspace, so run it from there.
    env::set_current_dir(&probes)?;
    let root_dir = probes
        .to_str()
        .ok_or_else(|| anyhow_msg("non-UTF-8 probes path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tollgate-probes",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(TOOLCHAIN),
    )
}

fn anyhow_msg(msg: &str) -> std::io::Error {
    std::io::Error::other(msg.to_owned())
}

fn find_on_path(bin: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}
