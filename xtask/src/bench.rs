//! `cargo xtask bench [NAME...]`: every benchmark the README's table lists, by name, each
//! run the way the table says (the same commands), from the workspace root with the project's
//! tools on PATH. Without a name it lists them and runs them all; benchmarks that need root
//! say SKIP when not root, and those that read the shared corpus say SKIP when it is absent.
//! A test keeps this list and the README's table the same.

use std::process::Command;

use anyhow::{Result, bail};

/// One benchmark: its name, what it prints, whether it needs root, and the shell commands that
/// run it (bash, `-euo pipefail`, from the workspace root).
pub struct Bench {
    pub name: &'static str,
    pub what: &'static str,
    pub root: bool,
    pub script: &'static str,
}

pub const BENCHES: &[Bench] = &[
    Bench {
        name: "prog_cost",
        what: "per-packet cost of the kernel programs vs an empty program",
        root: true,
        script: "cargo run --release -p tollgate-dataplane --example prog_cost",
    },
    Bench {
        name: "forwarding",
        what: "forwarding through the gateway in enforce mode vs bare and nftables",
        root: true,
        script: "cargo build --release -p tollgate\n\
                 cargo build --release -p tollgate-dataplane --example tcx_noop\n\
                 tests/bench/forwarding_enforce.sh",
    },
    Bench {
        name: "event_storm",
        what: "event storm against a running daemon",
        root: true,
        script: "cargo build --release -p tollgate\n\
                 cargo build --release -p tollgate-dataplane --example event_storm\n\
                 N=${N:-100000} RATE=${RATE:-100000} userspace/dataplane/examples/storm.sh",
    },
    Bench {
        name: "parsers",
        what: "hellos/s and DNS responses/s",
        root: false,
        script: "cargo bench -p tollgate-wire --bench parsers",
    },
    Bench {
        name: "pcap_import",
        what: "pcap import",
        root: false,
        script: "cargo bench -p tollgate-discovery --bench pcap_import",
    },
    Bench {
        name: "pcap_scale",
        what: "flow table scale",
        root: false,
        script: "cargo bench -p tollgate-discovery --bench pcap_scale",
    },
    Bench {
        name: "ndpi",
        what: "`tollgate discover` vs nDPI's ndpiReader",
        root: true,
        script: "PCAPS=${NDPI_PCAPS:-../shared/corpus/ndpi/pcap}\n\
                 if [ ! -d \"$PCAPS\" ]; then echo \"SKIP ndpi: no pcaps in $PCAPS (set NDPI_PCAPS)\"; exit 0; fi\n\
                 cargo build --release -p tollgate\n\
                 SUT_PCAP_CMD='target/release/tollgate discover --summary' tests/bench/peer/ndpi.sh \"$PCAPS\"",
    },
    Bench {
        name: "matcher",
        what: "catalog matcher, 30k rules vs a linear scan",
        root: false,
        script: "cargo bench -p tollgate-catalog --bench matcher",
    },
    Bench {
        name: "log_import",
        what: "log import MB/s and RSS vs `wc -l`",
        root: false,
        script: "F=${LOG_BENCH_FILE:-target/bench/firewall-${LOG_BENCH_MB:-2048}m.log}\n\
                 mkdir -p \"$(dirname \"$F\")\"\n\
                 [ -s \"$F\" ] || cargo run --release -p tollgate-logs --example log_bench -- generate \"$F\" ${LOG_BENCH_MB:-2048}\n\
                 cargo run --release -p tollgate-logs --example log_bench -- run \"$F\"",
    },
    Bench {
        name: "proxy_peers",
        what: "session proxy vs mitmproxy and squid",
        root: true,
        script: "cargo build --release -p tollgate-proxy --example bench_proxy\n\
                 SUT_PROXY_CMD='exec target/release/examples/bench_proxy' tests/bench/peer/proxy.sh",
    },
    Bench {
        name: "proxy_memory",
        what: "session proxy peak RSS with 1,000 inspected downloads, keep-alive req/s vs nginx",
        root: true,
        script: "cargo build --release -p tollgate-proxy --example bench_proxy\n\
                 tests/bench/proxy_memory.sh",
    },
    Bench {
        name: "activity_engine",
        what: "activity records/s through 100 policies vs a loop that only reads them",
        root: false,
        script: "cargo bench -p tollgate-activity --bench engine",
    },
    Bench {
        name: "alert_latency",
        what: "activity to alert in a syslog receiver vs the line sent straight",
        root: false,
        script: "cargo bench -p tollgate-activity --bench alert_latency",
    },
    Bench {
        name: "connectors",
        what: "connector ingest events/s, requests per 1,000 events, idle memory",
        root: false,
        script: "cargo bench -p tollgate-connectors --bench ingest",
    },
    Bench {
        name: "footprint",
        what: "binary sizes as packaged and idle RSS of the daemon and the hub vs nginx",
        root: true,
        script: "cargo build --release -p tollgate -p tollgate-hub\n\
                 tests/bench/footprint.sh",
    },
    Bench {
        name: "hub_load",
        what: "hub: held long polls, publish to applied p50/p99, upload ingest",
        root: false,
        script: "cargo build --release -p tollgate-hub --bin tollgate-hub --example load\n\
                 target/release/examples/load --gateways ${GATEWAYS:-10000} --records ${RECORDS:-200000}",
    },
];

pub fn run(args: &[String], mut cargo: impl FnMut() -> Command, root: bool) -> Result<()> {
    let names: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--")
        .collect();
    if names.contains(&"--list") {
        for b in BENCHES {
            println!(
                "{:<16} {}{}",
                b.name,
                b.what,
                if b.root { " (root)" } else { "" }
            );
        }
        return Ok(());
    }
    let chosen: Vec<&Bench> = if names.is_empty() {
        BENCHES.iter().collect()
    } else {
        let mut v = Vec::new();
        for n in &names {
            match BENCHES.iter().find(|b| b.name == *n) {
                Some(b) => v.push(b),
                None => bail!(
                    "no benchmark {n:?}; `cargo xtask bench --list` shows them: {}",
                    BENCHES
                        .iter()
                        .map(|b| b.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        v
    };
    let mut failed = Vec::new();
    for b in chosen {
        eprintln!("\n=== bench {}: {}", b.name, b.what);
        if b.root && !root {
            eprintln!("SKIP {}: needs root", b.name);
            continue;
        }
        // `cargo()` gives the workspace root, the tools' PATH and the right cargo.
        let template = cargo();
        let mut cmd = Command::new("bash");
        cmd.args(["-euo", "pipefail", "-c", b.script]);
        if let Some(dir) = template.get_current_dir() {
            cmd.current_dir(dir);
        }
        for (k, v) in template.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        match cmd.status() {
            Ok(st) if st.success() => {}
            Ok(st) => {
                eprintln!("bench {} failed: {st}", b.name);
                failed.push(b.name);
            }
            Err(e) => {
                eprintln!("bench {}: cannot start bash: {e}", b.name);
                failed.push(b.name);
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("benchmarks failed: {}", failed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's benchmark table names each benchmark (`cargo xtask bench NAME`), and
    /// names only these.
    #[test]
    fn the_readme_lists_every_benchmark_by_name() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        let section = readme
            .split("## Benchmarks")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("a Benchmarks section");
        let rows: Vec<&str> = section
            .lines()
            .filter(|l| l.starts_with("| `") && !l.starts_with("| ---"))
            .collect();
        let named: Vec<String> = rows
            .iter()
            .filter_map(|r| {
                r.strip_prefix("| `")
                    .and_then(|r| r.split('`').next())
                    .map(str::to_string)
            })
            .collect();
        let ours: Vec<String> = BENCHES.iter().map(|b| b.name.to_string()).collect();
        assert_eq!(named, ours, "README's table vs xtask/src/bench.rs");
        for b in BENCHES {
            let row = rows
                .iter()
                .find(|r| r.starts_with(&format!("| `{}`", b.name)))
                .unwrap();
            assert_eq!(
                row.contains("(root"),
                b.root,
                "{}: the README and the list disagree on root",
                b.name
            );
        }
    }
}
