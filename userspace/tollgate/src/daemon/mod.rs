//! The daemon: one core task owns the dataplane (and so every BPF map), the flow table and
//! the discovery aggregates. It handles ring-buffer events (a reader task moves them from
//! the ring into a bounded queue, so the ring empties while the core works), polls the
//! kernel's flow counters, answers control-socket requests through a channel, and prints a
//! status line. Nothing else touches that state, so no lock is ever held across an await.
//!
//! Stopping: SIGINT/SIGTERM end the daemon but leave the programs attached and pinned, so a
//! restarted daemon adopts them (and enforcement never lapses while it restarts);
//! `tollgate stop` detaches the programs and removes the pins.

mod answers;
mod events;
mod local_discovery;
mod poll;
mod reload;
mod session_blocks;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::{mpsc, oneshot};
use tollgate_catalog::Catalog;
use tollgate_dataplane::{
    AttachRequest, Dataplane, DataplaneOptions, EventReader, FlowTuple, PayloadEvent,
};
use tollgate_discovery::aggregate::{AggregateOptions, Aggregator};
use tollgate_discovery::flow_table::{FlowTable, FlowTableLimits};
use tollgate_discovery::users::Users;
use tollgate_policy::{Tag, TagBook, TagStore};

use crate::config::{Config, Mode, Role, default_route_interface};
use crate::control::{self, Request, Response};
use crate::enforce::{Enforcer, LearnedRecord};

/// Everything `tollgate run` validated before the runtime started.
pub struct DaemonParts {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub netns: Option<String>,
    pub catalog: Catalog,
    pub tags: TagBook,
    /// The live tags `tags` holds, as read from state_dir (an unreadable file stops the start).
    pub live_tags: BTreeMap<String, Tag>,
    pub users: Users,
    /// The hub this gateway is enrolled with, and the bundle already laid over `config`.
    pub hub: Option<(crate::hub::Identity, Option<tollgate_sync::bundle::Bundle>)>,
}

/// How often the kernel's flow counters are read into the flow table.
const COUNTER_POLL: Duration = Duration::from_secs(2);
/// Events drained per wake-up before other work gets a turn.
const EVENT_BATCH: usize = 4096;
/// Flows of the kernel's counter map read between two looks at the event queue: ~1 ms of
/// work, while the ring holds tens of milliseconds of a 100k flows/s storm.
const WALK_STEP: usize = 4096;
/// Events read from the ring buffer and decoded but not yet handled. The reader task runs
/// on a runtime worker while the core task works, so a pause of the core (a walk step, the
/// flow table growing its index) empties the ring into this queue instead of overflowing
/// it. Bounded: 8192 events are ~80 ms of a 100k flows/s storm and at most ~17 MiB of
/// Chrome-sized hellos, held only while the core is held up. When it is full the reader
/// waits, the ring fills, and the probes count what they could not write (`ring_drops`).
const EVENT_QUEUE: usize = 8192;

/// What the reader task counts, for the status.
#[derive(Default)]
struct ReaderCounts {
    /// Ring-buffer read errors (I/O).
    io_errors: AtomicU64,
    /// Records skipped as undecodable.
    malformed: AtomicU64,
}

/// Moves events from the ring buffer to a bounded queue, on a runtime worker.
fn spawn_reader(
    mut events: EventReader,
    counts: Arc<ReaderCounts>,
) -> (mpsc::Receiver<PayloadEvent>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let task = tokio::spawn(async move {
        loop {
            match events.next().await {
                Ok(ev) => {
                    if tx.send(ev).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    counts.io_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("ring buffer: {e}");
                    tokio::task::yield_now().await;
                }
            }
            counts
                .malformed
                .store(events.malformed(), Ordering::Relaxed);
        }
    });
    (rx, task)
}

const LEARNED_IPS_FILE: &str = "learned_ips.json";

/// The instance's pins: one directory per network namespace the daemon runs in.
pub fn pin_dir(netns: Option<&str>) -> PathBuf {
    PathBuf::from("/sys/fs/bpf/tollgate").join(netns.unwrap_or("host"))
}

/// Logs to stderr, filtered by `TOLLGATE_LOG`: text lines, or JSON lines with `json`.
pub fn init_logging(json: bool) {
    tollgate_metrics::logging::init("TOLLGATE_LOG", json, false);
}

/// IPs the daemon saw DNS give for unsanctioned apps (for `export blocklist --format nft`);
/// an unreadable file gives none (the daemon reports it when it starts).
pub fn load_learned_ips(state_dir: &Path) -> Vec<IpAddr> {
    load_learned(state_dir)
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.ip)
        .collect()
}

/// The learned addresses persisted by the last run, with their app and expiry. A missing
/// file is an empty list; a file of an older version (a bare list of addresses) has no
/// expiry, so it gives nothing to re-install; a corrupt file is an error.
pub fn load_learned(state_dir: &Path) -> Result<Vec<LearnedRecord>> {
    let path = state_dir.join(LEARNED_IPS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if serde_json::from_slice::<Vec<IpAddr>>(&bytes).is_ok() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// Writes `learned_ips.json` durably: a temporary file of a fresh name (created, never
/// opened through an existing path or symlink), fsynced, renamed over the old one, and the
/// directory fsynced so that the rename survives a crash.
fn save_learned(state_dir: &Path, records: &[LearnedRecord]) -> std::io::Result<()> {
    use std::io::Write;
    let path = state_dir.join(LEARNED_IPS_FILE);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = state_dir.join(format!(
        ".{LEARNED_IPS_FILE}.{}.{nanos}.tmp",
        std::process::id()
    ));
    let body = serde_json::to_vec(records).map_err(std::io::Error::other)?;
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(state_dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The addresses DNS answers may never block or steer, from the `[enforcement]` section (the
/// gateway's own addresses are added by whoever holds the filter, and read again on reload).
fn protected_addrs(cfg: &Config) -> tollgate_policy::ProtectedAddrs {
    tollgate_policy::ProtectedAddrs::new(
        cfg.enforcement.never_block.clone(),
        cfg.enforcement.dns_learn_private,
    )
}

fn resolve_interfaces(cfg: &Config) -> Result<Vec<(String, Role)>> {
    if !cfg.interfaces.is_empty() {
        return Ok(cfg
            .interfaces
            .iter()
            .map(|i| (i.name.clone(), i.role))
            .collect());
    }
    match default_route_interface() {
        Some(name) => Ok(vec![(name, Role::Wan)]),
        None => bail!(
            "no [[interfaces]] in the config and no default route to pick one from; \
             name the interfaces in a config file (see configs/example-gateway.toml)"
        ),
    }
}

/// A request from the control socket with the way back.
struct ControlCall {
    request: Request,
    reply: oneshot::Sender<control::Reply>,
    /// Read the kernel's flow counters first (a person asking); a metrics scrape takes the
    /// table as the last poll left it (at most `COUNTER_POLL` old), so that scraping every
    /// second never walks the flow map more often than the daemon does.
    fresh: bool,
}

struct ControlHandler {
    tx: mpsc::Sender<ControlCall>,
    /// `tollgate activity` reads the log here, off the core task.
    state_dir: PathBuf,
    retention_days: u32,
}

impl control::Handler for ControlHandler {
    async fn handle(&self, request: Request) -> control::Reply {
        if let Request::Activity { query } = request {
            let (dir, days) = (self.state_dir.clone(), self.retention_days);
            let found =
                tokio::task::spawn_blocking(move || crate::alerting::query_log(&dir, days, &query))
                    .await;
            return match found {
                Ok((activities, skipped)) => Response::ok(serde_json::json!({
                    "activities": activities,
                    "skipped_lines": skipped,
                }))
                .into(),
                Err(e) => Response::err(format!("reading the activity log: {e}")).into(),
            };
        }
        let (reply, rx) = oneshot::channel();
        let call = ControlCall {
            request,
            reply,
            fresh: true,
        };
        if self.tx.send(call).await.is_err() {
            return Response::err("the daemon is shutting down").into();
        }
        rx.await
            .unwrap_or_else(|_| Response::err("the daemon dropped the request").into())
    }
}

/// Binds `[metrics] listen` and serves `GET /metrics` from the core's status snapshot (the
/// one `tollgate status --json` prints), asked for through the control channel.
async fn start_metrics(
    addr: std::net::SocketAddr,
    tx: mpsc::Sender<ControlCall>,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding [metrics] listen = \"{addr}\""))?;
    crate::outln!(
        "  metrics on http://{}/metrics",
        listener.local_addr().unwrap_or(addr)
    );
    let render = move || {
        let tx = tx.clone();
        async move {
            let (reply, rx) = oneshot::channel();
            let call = ControlCall {
                request: Request::Status,
                reply,
                fresh: false,
            };
            tx.send(call).await.ok()?;
            match rx.await.ok()? {
                control::Reply::Whole(resp) if resp.ok => Some(tollgate_metrics::gateway::render(
                    &resp.data,
                    Utc::now().timestamp(),
                )),
                _ => None,
            }
        }
    };
    Ok(tokio::spawn(tollgate_metrics::serve(
        listener,
        tollgate_metrics::Limits::default(),
        render,
    )))
}

/// Writes a new console token and serves the read-only console on `[console] listen`
/// (loopback only, checked at config load), answering its pages through the control handler.
async fn start_console(
    addr: std::net::SocketAddr,
    state_dir: &Path,
    handler: Arc<ControlHandler>,
) -> Result<tokio::task::JoinHandle<()>> {
    let token = crate::console::write_token(state_dir).context("the console's token")?;
    let task = crate::console::start(addr, token, handler).await?;
    crate::outln!(
        "  read-only console on http://{addr}/ (`tollgate console` prints the URL to log in)"
    );
    Ok(task)
}

/// The state the core task owns.
struct Core {
    cfg: Config,
    /// The file `cfg` came from (`None`: the embedded default), read again on SIGHUP.
    config_path: Option<PathBuf>,
    dp: Dataplane,
    flows: FlowTable,
    catalog: Arc<Catalog>,
    tags: TagBook,
    live_tags: BTreeMap<String, Tag>,
    tag_store: TagStore,
    users: Users,
    /// Flows that left the live table, folded into the discovery aggregates.
    history: Aggregator,
    /// Flows already folded into `history`, with the last_seen they had, so the kernel's
    /// still-present counters do not bring them back twice.
    retired: HashMap<FlowTuple, DateTime<Utc>>,
    enforcer: Enforcer,
    session: Option<crate::session::SessionControl>,
    /// The governance blocks of users' sessions, kept across restarts.
    session_blocks: session_blocks::BlockLedger,
    /// What `learned_ips.json` holds now, expiries in minutes (so that the file is rewritten
    /// when the set changes, not as seconds tick).
    learned_saved: Option<Vec<LearnedRecord>>,
    /// Warns when the kernel loses work (ring drops, full maps).
    pressure: crate::pressure::PressureWatch,
    events_total: u64,
    /// When this run of the daemon started (status: `started_at`, `uptime_secs`).
    started_at: DateTime<Utc>,
    events_at_last_status: u64,
    last_status: Instant,
    /// The event reader task's error counts.
    reader: Arc<ReaderCounts>,
    /// The sync with the management hub, when the gateway is enrolled.
    hub: Option<crate::hub::HubLink>,
    /// The hub bundle laid over the local config.
    bundle: Option<tollgate_sync::bundle::Bundle>,
    /// Per-interval usage for the hub's uploads (only while enrolled).
    meter: Option<tollgate_discovery::interval::IntervalMeter>,
    /// Activities, activity policies, alerts and their sinks.
    alerting: Option<crate::alerting::Alerting>,
    /// The box's own discovery intervals (activities, app discovery policies).
    local_meter: tollgate_discovery::interval::IntervalMeter,
    /// `[[app_discovery_policies]]` and the day they judge.
    app_discovery: tollgate_activity::AppDiscovery,
    /// The statuses of the connectors this gateway runs.
    connector_statuses: Option<crate::connectors::Statuses>,
    connector_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Where they hand their records to this task.
    connector_tx: Option<mpsc::Sender<Vec<tollgate_activity::Activity>>>,
    /// The running connectors, for the governance calls of the policies.
    connector_registry: tollgate_connectors::Registry,
    /// Where the governance calls report back.
    governance_tx: Option<mpsc::Sender<tollgate_connectors::governance::Outcome>>,
    /// Records of other devices' logs (`[collect]`), folded in like retired flows.
    collected: Option<crate::collect::DaemonCollector>,
}

impl Core {
    /// (Re)starts the connectors of the config: the old tasks end, new ones read their
    /// cursors from `state_dir` again.
    fn start_connectors(&mut self) {
        for t in self.connector_tasks.drain(..) {
            t.abort();
        }
        let Some(tx) = self.connector_tx.clone() else {
            return;
        };
        let (statuses, tasks) = crate::connectors::start(
            &self.cfg.connectors,
            &self.cfg.state_dir,
            self.hub.as_ref().map(crate::hub::HubLink::sender),
            tx,
            &self.connector_registry,
        );
        self.connector_statuses = Some(statuses);
        self.connector_tasks = tasks;
    }
}

enum Next {
    Continue,
    Stop,
}

pub async fn run(parts: DaemonParts) -> Result<()> {
    let DaemonParts {
        config: cfg,
        config_path,
        netns,
        catalog,
        tags,
        live_tags,
        users,
        hub,
    } = parts;
    let interfaces = resolve_interfaces(&cfg)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state_dir {}", cfg.state_dir.display()))?;
    let pin_dir = pin_dir(netns.as_deref());
    let attach = AttachRequest::from_env_or(cfg.dataplane.attach.into()).map_err(|e| anyhow!(e))?;
    let mut dp = Dataplane::start(DataplaneOptions {
        interfaces: interfaces.clone(),
        pin_dir: pin_dir.clone(),
        mode: cfg.mode,
        attach,
    })
    .context("starting the dataplane")?;

    crate::outln!(
        "tollgate {}: {} mode, catalog {} apps, config {}, control socket {}",
        env!("CARGO_PKG_VERSION"),
        cfg.mode,
        catalog.len(),
        config_path
            .as_deref()
            .map_or("<embedded default>".to_string(), |p| p
                .display()
                .to_string()),
        cfg.control_socket.display()
    );
    if let Some(ns) = &netns {
        crate::outln!("  network namespace {ns}");
    }
    let (release, _) = tollgate_dataplane::kernel::running_kernel();
    crate::outln!(
        "  attach mode {} (requested {attach}, kernel {release})",
        dp.attach_mode()
    );
    for a in dp.attached() {
        let hooked = match a.mode {
            tollgate_dataplane::AttachMode::Tcx => format!("link {}", a.link_id),
            tollgate_dataplane::AttachMode::Tc => format!(
                "filter pref {:#x} handle {:#x}",
                tollgate_dataplane::TC_PRIORITY,
                tollgate_dataplane::TC_HANDLE
            ),
        };
        crate::outln!(
            "  attached {} {:<7} on {} ({}, {} traffic) program {} id {} {hooked}{}",
            a.mode,
            a.hook.to_string(),
            a.interface,
            a.role,
            a.direction,
            a.program,
            a.program_id,
            match (a.adopted, a.mode) {
                (false, _) => "",
                (true, tollgate_dataplane::AttachMode::Tcx) => " (adopted pinned link)",
                (true, tollgate_dataplane::AttachMode::Tc) =>
                    " (adopted our tc filter: program replaced)",
            }
        );
    }
    crate::outln!("  pins under {}", pin_dir.display());

    let reader = dp.take_event_reader().context("opening the ring buffer")?;

    let catalog = Arc::new(catalog);
    // The proxy's audit records come back to the core as activities through this channel.
    let (tap_tx, mut tap_rx) = mpsc::channel(crate::alerting::TAP_QUEUE);
    let mut session =
        crate::session::SessionControl::start(&cfg, catalog.clone(), &mut dp, Some(tap_tx)).await?;
    let alerting = match crate::alerting::Alerting::start(&cfg) {
        Ok(a) => Some(a),
        // The gateway enforces without alerts rather than not at all.
        Err(e) => {
            tracing::error!("activity and alerts not started: {e:#}");
            crate::outln!("tollgate: activity and alerts not started: {e:#}");
            None
        }
    };
    if !cfg.activity_policies.is_empty() || !cfg.alert_sinks.is_empty() {
        crate::outln!(
            "  {} activity policies, {} alert sinks",
            cfg.activity_policies.len(),
            cfg.alert_sinks.len()
        );
    }
    if let Some(s) = &mut session {
        s.set_protected(protected_addrs(&cfg));
    }
    if session.is_none() {
        // A pinned config of an earlier run may still have it on.
        dp.verdicts()
            .set_session_control(false)
            .context("turning off session control in the kernel")?;
    }
    let mut enforcer = Enforcer::new(cfg.mode == Mode::Enforce, cfg.enforcement.clone(), &catalog);
    enforcer.set_own_addresses(crate::session::own_addresses());
    let learned = match load_learned(&cfg.state_dir) {
        Ok(l) => l,
        Err(e) => {
            // Not silently empty: the admin learns the file was bad and where it went.
            let path = cfg.state_dir.join(LEARNED_IPS_FILE);
            let aside = path.with_extension("json.corrupt");
            let _ = std::fs::rename(&path, &aside);
            crate::outln!(
                "tollgate: {e:#}; moved to {} and starting with no learned addresses",
                aside.display()
            );
            tracing::error!("{e:#}");
            Vec::new()
        }
    };
    if session.is_some() {
        enforcer.set_session_apps(crate::session::session_apps(&cfg));
    }
    if session.is_none() {
        // No app is under session control: steered prefixes an earlier run left behind would
        // send flows to a proxy that is not there.
        if let Err(e) = dp.steering().clear() {
            tracing::warn!("clearing steered prefixes of an earlier run: {e}");
        }
    }
    enforcer
        .apply_options(&mut dp)
        .context("writing the enforcement options")?;
    let (local_meter, app_discovery) = local_discovery::load(&cfg.state_dir, &cfg);
    if !cfg.app_discovery_policies.is_empty() {
        crate::outln!(
            "  {} app discovery policies, judged every {} s",
            cfg.app_discovery_policies.len(),
            cfg.discovery.interval_secs
        );
    }
    let collected = match &cfg.collect {
        Some(cc) => {
            let tags = crate::collect::tag_names(&catalog, &tags);
            let c =
                crate::collect::spawn_in_daemon(&cfg, cc, (*catalog).clone(), users.clone(), tags)?;
            crate::outln!("  collecting logs ([collect]) into discovery");
            Some(c)
        }
        None => None,
    };
    let mut core = Core {
        collected,
        enforcer,
        session,
        session_blocks: session_blocks::BlockLedger::load(&cfg.state_dir),
        learned_saved: None,
        pressure: crate::pressure::PressureWatch::default(),
        flows: FlowTable::new(FlowTableLimits {
            max_flows: cfg.flows.max_flows,
            idle_timeout: Duration::from_secs(cfg.flows.idle_timeout_secs),
            // Nothing the daemon reports uses JA4; it costs a sixth of naming a flow.
            fingerprints: false,
            // Nor what a hello tells beyond the name (~200 B of heap a flow).
            meta: false,
            // Enforcement acts on DNS answers: only those that answer a user's query.
            dns_answers_need_query: true,
            dns_max_ttl: Duration::from_secs(cfg.enforcement.dns_max_ttl_secs.max(1)),
            ..FlowTableLimits::default()
        }),
        history: Aggregator::new(AggregateOptions::default()),
        retired: HashMap::new(),
        tag_store: TagStore::new(&cfg.state_dir),
        live_tags,
        dp,
        catalog,
        tags,
        users,
        events_total: 0,
        started_at: Utc::now(),
        events_at_last_status: 0,
        last_status: Instant::now(),
        reader: Arc::new(ReaderCounts::default()),
        hub: None,
        bundle: None,
        meter: None,
        alerting,
        local_meter,
        app_discovery,
        connector_statuses: None,
        connector_tasks: Vec::new(),
        connector_registry: tollgate_connectors::Registry::default(),
        governance_tx: None,
        connector_tx: None,
        cfg,
        config_path,
    };
    let (apply_tx_unused, mut bundles) = mpsc::channel::<crate::hub::ApplyBundle>(1);
    drop(apply_tx_unused);
    if let Some((identity, bundle)) = hub {
        let revision = bundle.as_ref().map_or(0, |b| b.revision);
        match crate::hub::start(&core.cfg, identity, revision) {
            Ok((link, rx)) => {
                let st = link.status();
                crate::outln!(
                    "  hub {} as gateway {} of site {}{}",
                    st.url,
                    st.gateway_id,
                    st.site,
                    bundle.as_ref().map_or(String::new(), |b| format!(
                        ", bundle revision {}",
                        b.revision
                    ))
                );
                core.hub = Some(link);
                core.bundle = bundle;
                core.meter = Some(
                    crate::hub::load_meter_checkpoint(&core.cfg.state_dir).map_or_else(
                        || tollgate_discovery::interval::IntervalMeter::new(Utc::now()),
                        tollgate_discovery::interval::IntervalMeter::restore,
                    ),
                );
                bundles = rx;
            }
            // The gateway enforces without its hub rather than not at all.
            Err(e) => {
                tracing::error!("hub sync not started: {e:#}");
                crate::outln!("tollgate: hub sync not started: {e:#}");
            }
        }
    }

    // Name verdicts for what the config and the live tags leave unsanctioned, the learned
    // addresses of the last run that are still live, then everything else an earlier run
    // left in the pinned maps removed: a restart converges on the config before the daemon
    // says it is ready.
    core.apply_tags();
    let restored = core
        .enforcer
        .restore_learned(&mut core.dp, &core.catalog, &core.tags, &learned);
    match core
        .enforcer
        .reconcile(&mut core.dp, &core.catalog, &core.tags)
    {
        Ok(r) => tracing::info!(
            restored,
            stale_removed = r.stale_removed,
            "pinned verdicts reconciled with the config"
        ),
        Err(e) => tracing::error!("reconciling pinned verdicts: {e}"),
    }
    core.save_learned();
    core.restore_session_blocks();
    // Connectors this gateway runs (`run_on = "gateway"`), with the hub's spool when enrolled.
    let (connector_tx, mut connector_rx) = crate::connectors::channel();
    core.connector_tx = Some(connector_tx);
    let (governance_tx, mut governance_rx) =
        mpsc::channel(tollgate_connectors::governance::MAX_PENDING);
    core.governance_tx = Some(governance_tx);
    core.start_connectors();
    if !core.connector_tasks.is_empty() {
        crate::outln!("  {} app connectors run here", core.connector_tasks.len());
    }
    let (mut events, reader_task) = spawn_reader(reader, core.reader.clone());
    // The control socket comes last: when it answers, the daemon is ready.
    let (tx, mut rx) = mpsc::channel::<ControlCall>(64);
    let socket = core.cfg.control_socket.clone();
    let metrics = match core.cfg.metrics.listen {
        Some(addr) => Some(start_metrics(addr, tx.clone()).await?),
        None => None,
    };
    let handler = Arc::new(ControlHandler {
        tx,
        state_dir: core.cfg.state_dir.clone(),
        retention_days: core.cfg.activity.retention_days,
    });
    let console = match core.cfg.console.listen {
        Some(addr) => Some(start_console(addr, &core.cfg.state_dir, handler.clone()).await?),
        None => {
            // A token of an earlier run with a console opens nothing; do not leave it lying.
            let _ = std::fs::remove_file(crate::console::token_path(&core.cfg.state_dir));
            None
        }
    };
    let server = tokio::spawn(async move {
        if let Err(e) = control::serve(&socket, handler).await {
            tracing::error!("control socket: {e:#}");
        }
    });

    let mut poll = tokio::time::interval(COUNTER_POLL);
    let status_every = Duration::from_secs(core.cfg.status_interval_secs.max(1));
    let mut status =
        tokio::time::interval_at(tokio::time::Instant::now() + status_every, status_every);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let upload_every = Duration::from_secs(core.cfg.hub.upload_interval_secs.max(1));
    let mut upload =
        tokio::time::interval_at(tokio::time::Instant::now() + upload_every, upload_every);
    let discovery_every = Duration::from_secs(core.cfg.discovery.interval_secs.max(1));
    let mut discovery = tokio::time::interval_at(
        tokio::time::Instant::now() + discovery_every,
        discovery_every,
    );
    let mut detach = false;
    loop {
        tokio::select! {
            Some(ev) = events.recv() => {
                core.on_event(&ev);
                core.drain_events(&mut events, EVENT_BATCH);
            }
            _ = poll.tick() => {
                let walking = core.poll_counters(&mut events);
                let started = Instant::now();
                core.housekeeping();
                if let Some(a) = &mut core.alerting {
                    a.housekeeping();
                }
                // Alerts from other sources (discovery, connectors) may ask for blocks too.
                core.apply_governance();
                core.alerts_to_hub();
                // Walking the kernel's flow map costs ~0.3 us a flow: with a large table,
                // poll less often so that event reading keeps the CPU (at most ~5%).
                let next = COUNTER_POLL.max((walking + started.elapsed()) * 20);
                poll.reset_after(next);
                // Not timed above: its fsyncs wait for the disk, not the CPU.
                core.save_learned();
            }
            _ = status.tick(), if core.cfg.status_interval_secs > 0 => core.print_status(),
            Some(call) = rx.recv() => {
                // Counters are fresh when someone asks.
                if call.fresh
                    && matches!(call.request, Request::Flows | Request::Apps | Request::Status)
                {
                    core.poll_counters(&mut events);
                }
                if call.request == Request::Flows {
                    let _ = call.reply.send(control::Reply::Pieces(core.flows_pieces()));
                    continue;
                }
                let (resp, next) = core.on_control(call.request);
                let _ = call.reply.send(resp.into());
                if let Next::Stop = next {
                    detach = true;
                    break;
                }
            }
            Some(rec) = tap_rx.recv() => {
                core.on_proxy_record(&rec);
                for _ in 0..EVENT_BATCH {
                    let Ok(rec) = tap_rx.try_recv() else { break };
                    core.on_proxy_record(&rec);
                }
                core.apply_governance();
            }
            _ = sighup.recv() => core.reload(),
            Some(call) = bundles.recv() => {
                let result = core.apply_bundle(call.bundle);
                let _ = call.reply.send(result);
            }
            _ = upload.tick(), if core.hub.is_some() => {
                core.poll_counters(&mut events);
                core.upload_interval();
            }
            Some(batch) = connector_rx.recv() => {
                if let Some(al) = &mut core.alerting {
                    for a in batch {
                        al.observe_new(a);
                    }
                }
            }
            Some(outcome) = governance_rx.recv() => core.on_governance_outcome(&outcome),
            _ = discovery.tick() => {
                core.poll_counters(&mut events);
                core.local_discovery_interval();
            }
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    server.abort();
    for t in core.connector_tasks.drain(..) {
        t.abort();
    }
    if let Some(m) = metrics {
        m.abort();
    }
    if let Some(c) = console {
        c.abort();
    }
    reader_task.abort();
    if let Some(a) = &mut core.alerting {
        a.save();
    }
    if let Some(h) = &core.hub {
        h.shutdown();
    }
    let _ = std::fs::remove_file(&core.cfg.control_socket);
    if let Some(s) = core.session.take() {
        s.shutdown(&mut core.dp).await;
    }
    if detach {
        core.dp.detach().context("detaching")?;
        crate::outln!("tollgate: stopped; programs detached and pins removed");
    } else if core.dp.pins_outlive_exit() {
        crate::outln!(
            "tollgate: exiting; programs stay attached and pinned under {} (`tollgate stop` removes them)",
            pin_dir.display()
        );
    } else {
        crate::outln!(
            "tollgate: exiting; the pins under {} are on a bpffs private to this process's mount \
             namespace (as under `ip netns exec`): the programs and pins end with it \
             (`tollgate run --netns NAME` keeps them)",
            pin_dir.display()
        );
    }
    Ok(())
}
