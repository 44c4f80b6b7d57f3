//! `tollgate collect`: the `[collect]` section turned into the logs crate's receiver and
//! collector, and the foreground loop that feeds one into the other, writes the reports
//! and stops cleanly on SIGTERM/SIGINT (a SIGKILL loses nothing committed: see
//! `tollgate_logs::collect::collector`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tollgate_discovery::report::ReportFormat;
use tollgate_logs::collect::collector::{Collector, CollectorOptions};
use tollgate_logs::collect::tail::WatchSpec;
use tollgate_logs::collect::{
    Cidr, Listener, Receiver, ReceiverConfig, ReceiverLimits, Transport, tls_server_config,
};

use crate::config::{CollectConfig, Config};

/// Frames handed to the parsers in one batch (the receiver keeps queueing meanwhile).
const BATCH: usize = 20_000;

fn allow_list(list: &[String], key: &str) -> Result<Option<Vec<Cidr>>, String> {
    if list.is_empty() {
        return Ok(None);
    }
    list.iter()
        .map(|s| s.parse::<Cidr>().map_err(|e| format!("{key}.allow: {e}")))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn format_of(s: &str) -> Option<String> {
    (!s.eq_ignore_ascii_case("auto")).then(|| s.to_owned())
}

/// The receiver's and the collector's settings from the config; errors name the key.
pub fn setup(
    cfg: &Config,
    cc: &CollectConfig,
    tags: BTreeMap<String, String>,
) -> Result<(CollectorOptions, ReceiverConfig), String> {
    let state_dir = cc
        .state_dir
        .clone()
        .unwrap_or_else(|| cfg.state_dir.join("collect"));
    let output_dir = cc
        .output_dir
        .clone()
        .unwrap_or_else(|| state_dir.join("reports"));
    let report_formats = cc
        .report_formats
        .iter()
        .map(|f| {
            f.parse::<ReportFormat>()
                .map_err(|e| format!("report_formats: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if cc.report_interval_secs == 0 {
        return Err("report_interval_secs must be at least 1".into());
    }
    let mut syslog_format = BTreeMap::new();
    let mut rc = ReceiverConfig {
        limits: ReceiverLimits {
            max_connections: cc.max_connections.max(1),
            idle_timeout: Duration::from_secs(cc.idle_timeout_secs.max(1)),
            handshake_timeout: Duration::from_secs(cc.handshake_timeout_secs.max(1)),
            queue: cc.queue.max(1),
            ..ReceiverLimits::default()
        },
        ..ReceiverConfig::default()
    };
    if let Some(u) = &cc.udp {
        if u.allow.is_empty() {
            return Err(
                "udp.allow: UDP syslog has no sender authentication; list the senders \
                        (addresses or CIDR blocks; [\"0.0.0.0/0\", \"::/0\"] for anyone)"
                    .into(),
            );
        }
        rc.udp = Listener {
            addr: Some(u.listen),
            allow: allow_list(&u.allow, "udp")?,
        };
        syslog_format.insert(Transport::Udp, format_of(&u.format));
    }
    if let Some(t) = &cc.tcp {
        rc.tcp = Listener {
            addr: Some(t.listen),
            allow: allow_list(&t.allow, "tcp")?,
        };
        syslog_format.insert(Transport::Tcp, format_of(&t.format));
    }
    if let Some(t) = &cc.tls {
        rc.tls = Listener {
            addr: Some(t.listen),
            allow: allow_list(&t.allow, "tls")?,
        };
        rc.tls_config = Some(tls_server_config(&t.cert, &t.key).map_err(|e| format!("tls: {e}"))?);
        syslog_format.insert(Transport::Tls, format_of(&t.format));
    }
    let watch = cc
        .watch
        .iter()
        .map(|w| WatchSpec {
            dir: w.dir.clone(),
            pattern: w.pattern.clone(),
            format: format_of(&w.format),
        })
        .collect();
    let opts = CollectorOptions {
        state_dir,
        output_dir,
        report_formats,
        watch,
        syslog_format,
        custom: cfg.log_formats.clone(),
        max_sources: cc.max_sources.max(1),
        tags,
        ..CollectorOptions::default()
    };
    Ok((opts, rc))
}

fn receiver_json(r: &Receiver) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &r.counters;
    serde_json::json!({
        "udp": r.udp_addr.map(|a| a.to_string()),
        "tcp": r.tcp_addr.map(|a| a.to_string()),
        "tls": r.tls_addr.map(|a| a.to_string()),
        "received": c.received.load(Relaxed),
        "dropped": c.dropped(),
        "oversized": c.oversized.load(Relaxed),
        "bad_octet_count": c.bad_octet_count.load(Relaxed),
        "malformed": c.malformed.load(Relaxed),
        "queue_full": c.queue_full.load(Relaxed),
        "refused": c.refused.load(Relaxed),
        "too_many_connections": c.too_many_connections.load(Relaxed),
        "idle_closed": c.idle_closed.load(Relaxed),
        "tls_handshake_failed": c.tls_handshake_failed.load(Relaxed),
        "udp_kernel_drops": r.udp_kernel_drops(),
    })
}

/// A flag set by SIGTERM or SIGINT.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal handler")?;
    let mut term = rt
        .block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        })
        .context("SIGTERM handler")?;
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        });
        f.store(true, Ordering::SeqCst);
    });
    Ok(flag)
}

/// Run the collector in the foreground until SIGTERM/SIGINT.
pub fn run(
    opts: CollectorOptions,
    rc: ReceiverConfig,
    cc: &CollectConfig,
    catalog: &tollgate_catalog::Catalog,
    users: &tollgate_discovery::users::Users,
    config_file: Option<&Path>,
) -> anyhow::Result<()> {
    let stop = stop_flag()?;
    let mut c = Collector::open(opts, catalog, users)?;
    let any = rc.udp.addr.is_some() || rc.tcp.addr.is_some() || rc.tls.addr.is_some();
    let rx = Receiver::start_with(rc).context("binding the syslog listeners")?;
    eprintln!(
        "tollgate collect: {} udp={:?} tcp={:?} tls={:?}",
        config_file.map_or("<default>".into(), |p| p.display().to_string()),
        rx.udp_addr,
        rx.tcp_addr,
        rx.tls_addr
    );
    run_loop(&mut c, &rx, any, cc, &stop)?;
    eprintln!("tollgate collect: stopped");
    Ok(())
}

/// The daemon's collector (`tollgate run` with a `[collect]` section): the same collector on
/// its own thread, each committed record also sent to the daemon's core (bounded; when the
/// core falls behind, records are counted in `dropped` and kept in the collector's own
/// reports) so that it joins the gateway's discovery, its local intervals and its hub
/// uploads like a retired flow.
pub struct DaemonCollector {
    pub records: std::sync::mpsc::Receiver<tollgate_discovery::record::FlowRecord>,
    pub dropped: Arc<std::sync::atomic::AtomicU64>,
}

/// Each app's tag by name (sanction tags of the config, tag rules and live tags), for the
/// collector's reports.
pub fn tag_names(
    catalog: &tollgate_catalog::Catalog,
    tags: &tollgate_policy::TagBook,
) -> BTreeMap<String, String> {
    catalog
        .apps()
        .filter_map(|a| {
            tags.tag(catalog, &a.id)
                .map(|(t, _)| (a.id.clone(), t.to_string()))
        })
        .collect()
}

/// Start the daemon's collector; errors (bad section, state, bind) are returned before
/// the thread starts.
pub fn spawn_in_daemon(
    cfg: &Config,
    cc: &CollectConfig,
    catalog: tollgate_catalog::Catalog,
    users: tollgate_discovery::users::Users,
    tags: BTreeMap<String, String>,
) -> anyhow::Result<DaemonCollector> {
    let (opts, rc) = setup(cfg, cc, tags).map_err(|e| anyhow::anyhow!("[collect] {e}"))?;
    let any = rc.udp.addr.is_some() || rc.tcp.addr.is_some() || rc.tls.addr.is_some();
    let rx = Receiver::start_with(rc).context("binding the [collect] syslog listeners")?;
    let (tx, records) = std::sync::mpsc::sync_channel(100_000);
    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let d = dropped.clone();
    let cc = cc.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("collect".into())
        .spawn(move || {
            let (catalog, users) = (catalog, users);
            let mut c = match Collector::open(opts, &catalog, &users) {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!(e)));
                    return;
                }
            };
            c.set_forward(Box::new(move |r| {
                if tx.try_send(r.clone()).is_err() {
                    d.fetch_add(1, Ordering::Relaxed);
                }
            }));
            let _ = ready_tx.send(Ok(()));
            let never = AtomicBool::new(false);
            if let Err(e) = run_loop(&mut c, &rx, any, &cc, &never) {
                tracing::error!("the [collect] collector stopped: {e:#}");
            }
        })
        .context("starting the collector thread")?;
    ready_rx
        .recv()
        .context("the collector thread ended at once")??;
    Ok(DaemonCollector { records, dropped })
}

fn run_loop(
    c: &mut Collector<'_>,
    rx: &Receiver,
    any: bool,
    cc: &CollectConfig,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    c.tick(Vec::new(), chrono::Utc::now())?;
    c.write_reports(receiver_json(rx))?;
    let poll = Duration::from_millis(cc.poll_interval_ms.clamp(10, 60_000));
    let every = Duration::from_secs(cc.report_interval_secs.max(1));
    let mut next_report = Instant::now() + every;
    let mut next_poll = Instant::now() + poll;
    let mut frames = Vec::with_capacity(BATCH);
    loop {
        // Gather frames until the batch is full or the next look at the files is due.
        while frames.len() < BATCH {
            let left = next_poll.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if !any {
                std::thread::sleep(left.min(Duration::from_millis(100)));
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                continue;
            }
            match rx.frames.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(f) => {
                    frames.push(f);
                    frames.extend(rx.frames.try_iter().take(BATCH - frames.len()));
                }
                Err(_) => {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
            }
        }
        let stopping = stop.load(Ordering::SeqCst);
        let now = chrono::Utc::now();
        if Instant::now() >= next_poll || stopping {
            c.tick(frames.drain(..), now)?;
            next_poll = Instant::now() + poll;
        } else {
            c.tick_frames(frames.drain(..), now)?;
        }
        if stopping || Instant::now() >= next_report {
            c.write_reports(receiver_json(rx))?;
            next_report = Instant::now() + every;
        }
        if stopping {
            return Ok(());
        }
    }
}
