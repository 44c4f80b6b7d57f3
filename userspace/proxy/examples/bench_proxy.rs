//! The proxy as the bench harness runs it (`tests/bench/peer/proxy.sh`, mode `sut`):
//! transparent (nft redirect + SO_ORIGINAL_DST), intercepting every SNI, leaves minted by
//! the harness's interceptor CA, origins verified with the harness's origin CA.
//!
//! ```sh
//! cargo build --release -p tollgate-proxy --example bench_proxy
//! MODES="direct squid mitmproxy sut" SUT_PROXY_PORT=8443 \
//!   SUT_PROXY_CMD="exec $PWD/target/release/examples/bench_proxy" tests/bench/peer/proxy.sh
//! ```
//!
//! Settings come from the harness's environment (GW_C_IP4, SUT_PROXY_PORT,
//! INTERCEPT_CA_CERT, INTERCEPT_CA_KEY, ORIGIN_CA_CERT) or from flags: `--listen ADDR`,
//! `--ca CERT --ca-key KEY`, `--upstream-ca FILE`, `--policies FILE.toml` (session and
//! access policies to evaluate on every request), `--audit FILE`,
//! `--max-upstream-per-origin N`, `--max-buffered SIZE` (the inspection memory budget),
//! `--origin ADDR` (send every connection to ADDR, loopback allowed: no redirect needed, as
//! `tests/bench/proxy_memory.sh` runs it). Steering is the harness's nft redirect here; the
//! daemon's own steering (eBPF, `SUT_PROXY_MODE=inline`) needs the whole `tollgate run`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tollgate_proxy::{AppInfo, PolicySet, ProxyConfig, SessionProxy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Logs to stderr when RUST_LOG is set (e.g. RUST_LOG=tollgate_proxy=debug).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let env = |k: &str| std::env::var(k).ok();
    let mut listen = format!(
        "{}:{}",
        env("GW_C_IP4").unwrap_or_else(|| "0.0.0.0".into()),
        env("SUT_PROXY_PORT").unwrap_or_else(|| "8443".into())
    );
    let mut ca = env("INTERCEPT_CA_CERT");
    let mut ca_key = env("INTERCEPT_CA_KEY");
    let mut upstream_ca = env("ORIGIN_CA_CERT");
    let mut policies_file = None;
    let mut audit = None;
    let mut per_origin = None;
    let mut max_buffered = None;
    let mut origin: Option<std::net::SocketAddr> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = val()?,
            "--ca" => ca = Some(val()?),
            "--ca-key" => ca_key = Some(val()?),
            "--upstream-ca" => upstream_ca = Some(val()?),
            "--policies" => policies_file = Some(val()?),
            "--audit" => audit = Some(val()?),
            "--max-upstream-per-origin" => per_origin = Some(val()?.parse()?),
            "--max-buffered" => {
                let v = val()?;
                max_buffered = Some(
                    tollgate_proxy::config::ByteSize::parse(&v)
                        .ok_or_else(|| format!("--max-buffered: bad size {v}"))?,
                )
            }
            "--origin" => origin = Some(val()?.parse()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let cfg = ProxyConfig {
        listen: listen.parse()?,
        ca_cert_file: ca.map(PathBuf::from),
        ca_key_file: ca_key.map(PathBuf::from),
        ca_dir: std::env::temp_dir().join(format!("tollgate-bench-ca-{}", std::process::id())),
        upstream_ca_files: upstream_ca.map(PathBuf::from).into_iter().collect(),
        audit_log: audit.map(PathBuf::from),
        ..ProxyConfig::default()
    };
    let max_buffered_bytes = max_buffered.unwrap_or(cfg.max_buffered_bytes);
    let cfg = ProxyConfig {
        max_upstream_connections_per_origin: per_origin
            .unwrap_or(cfg.max_upstream_connections_per_origin),
        max_buffered_bytes,
        // The load generator opens every connection from one address: it stands for many
        // clients, so neither per-client limit applies.
        max_connections_per_client: 100_000,
        max_buffered_bytes_per_client: Some(max_buffered_bytes),
        ..cfg
    };
    let policies: PolicySet = match policies_file {
        Some(f) => {
            #[derive(serde::Deserialize)]
            struct Doc {
                #[serde(default)]
                session_policies: Vec<tollgate_proxy::SessionPolicy>,
                #[serde(default)]
                access_policies: Vec<tollgate_proxy::AccessPolicy>,
            }
            let d: Doc = toml::from_str(&std::fs::read_to_string(f)?)?;
            PolicySet {
                session_policies: d.session_policies,
                access_policies: d.access_policies,
            }
        }
        None => PolicySet::default(),
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let lookup: tollgate_proxy::AppLookup = Arc::new(|_: &str| {
            Some(AppInfo {
                id: "bench".into(),
                category: None,
            })
        });
        let (_tx, rx) = watch::channel(HashSet::from(["bench".to_string()]));
        let opts = match origin {
            Some(a) => tollgate_proxy::StartOptions {
                destination: tollgate_proxy::Destination::Fixed(a),
                ca: None,
                allow_loopback_destinations: true,
                audit_tap: None,
            },
            None => tollgate_proxy::StartOptions::default(),
        };
        let h = SessionProxy::start_with(cfg, &policies, lookup, rx, opts).await?;
        eprintln!(
            "bench_proxy listening on {} ({threads} worker threads)",
            h.local_addr()
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("stats: {:?}", h.stats());
        h.shutdown().await;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
