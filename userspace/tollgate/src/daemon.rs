//! The daemon: one core task owns the dataplane (and so every BPF map), the flow table and
//! the discovery aggregates. It handles ring-buffer events (a reader task moves them from
//! the ring into a bounded queue, so the ring empties while the core works), polls the
//! kernel's flow counters, answers control-socket requests through a channel, and prints a
//! status line. Nothing else touches that state, so no lock is ever held across an await.
//!
//! Stopping: SIGINT/SIGTERM end the daemon but leave the programs attached and pinned, so a
//! restarted daemon adopts them (and enforcement never lapses while it restarts);
//! `tollgate stop` detaches the programs and removes the pins.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};

use anyhow::{Context, Result, bail};
use tokio::sync::{mpsc, oneshot};
use tollgate_catalog::Catalog;
use tollgate_dataplane::{
    Dataplane, DataplaneOptions, Direction, EventReader, FlowCounters, FlowWalk, PayloadEvent,
    PayloadKind, abi,
};
use tollgate_discovery::aggregate::{AggregateOptions, Aggregator};
use tollgate_discovery::flow_table::{self, FlowTable, FlowTableLimits};
use tollgate_discovery::record::{FlowRecord, L4Proto, NameSource};
use tollgate_discovery::users::Users;
use tollgate_policy::{Decision, Tag, TagBook, TagStore};

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

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
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
}

struct ControlHandler {
    tx: mpsc::Sender<ControlCall>,
}

impl control::Handler for ControlHandler {
    async fn handle(&self, request: Request) -> control::Reply {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(ControlCall { request, reply }).await.is_err() {
            return Response::err("the daemon is shutting down").into();
        }
        rx.await
            .unwrap_or_else(|_| Response::err("the daemon dropped the request").into())
    }
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
    retired: HashMap<flow_table::FlowKey, DateTime<Utc>>,
    enforcer: Enforcer,
    session: Option<crate::session::SessionControl>,
    /// What `learned_ips.json` holds now, expiries in minutes (so that the file is rewritten
    /// when the set changes, not as seconds tick).
    learned_saved: Option<Vec<LearnedRecord>>,
    events_total: u64,
    events_at_last_status: u64,
    last_status: Instant,
    /// The event reader task's error counts.
    reader: Arc<ReaderCounts>,
    /// Named QUIC flows whose later Initials are read again (decoy Initials).
    quic_recheck: crate::quic_recheck::QuicRecheck,
}

enum Next {
    Continue,
    Stop,
}

impl Core {
    fn on_event(&mut self, ev: &PayloadEvent) {
        self.events_total += 1;
        let user = (ev.user_ip, ev.user_port);
        let remote = (ev.remote_ip, ev.remote_port);
        let ((src, sport), (dst, dport), direction) = match ev.direction {
            Direction::Up => (user, remote, flow_table::Direction::Up),
            Direction::Down => (remote, user, flow_table::Direction::Down),
        };
        let named = self
            .flows
            .observe_payload_naming(&flow_table::PayloadObservation {
                proto: l4(ev.proto),
                src,
                sport,
                dst,
                dport,
                direction,
                ts: ev.timestamp.into(),
                tcp_seq: ev.tcp_seq,
                tcp_flags: ev.tcp_flags,
                payload: &ev.payload,
            });
        // The flow table reports a flow's own name once, when its first flight gives it: the
        // flow is decided then (a tag change decides every named flow again, apply_tags).
        let named = named.map(|(n, src)| (n.to_string(), src));
        match ev.kind {
            PayloadKind::Dns => self.on_dns(ev),
            PayloadKind::Tls | PayloadKind::Quic | PayloadKind::Http => {
                if let Some((name, source)) = named {
                    if ev.kind == PayloadKind::Quic
                        && let Some(key) = ev.flow_key()
                    {
                        self.quic_recheck.named(key, &name);
                    }
                    self.decide_flow(ev, &name, source);
                } else if ev.kind == PayloadKind::Http && ev.direction == Direction::Up {
                    self.on_later_request(ev);
                } else if ev.kind == PayloadKind::Quic && ev.direction == Direction::Up {
                    // A flow is named once; a later Initial naming another server (the real
                    // one after a decoy the server dropped) decides it again.
                    if let Some(key) = ev.flow_key()
                        && let Some(name) = self.quic_recheck.initial(&key, &ev.payload)
                    {
                        tracing::info!(name = %name, user = %ev.user_ip, "QUIC flow renamed by a later Initial");
                        self.decide_flow(ev, &name, NameSource::Quic);
                    }
                }
            }
        }
    }

    /// A request head on an HTTP connection that is already named (a kept-alive connection
    /// reused for another Host): the kernel checks every head's Host against the name
    /// verdicts, so when it blocked this one the user gets the block page for it.
    fn on_later_request(&mut self, ev: &PayloadEvent) {
        let Ok(tollgate_wire::http::HttpStatus::Parsed(head)) =
            tollgate_wire::http::parse_request_head(&ev.payload)
        else {
            return;
        };
        if let Some(host) = head.host_name()
            && self.enforcer.kernel_blocks_name(host)
        {
            let host = host.to_string();
            self.decide_flow(ev, &host, NameSource::Http);
        }
    }

    /// The flow table has just named the flow from its own payload: decide the flow.
    fn decide_flow(&mut self, ev: &PayloadEvent, name: &str, source: NameSource) {
        let Some(key) = ev.flow_key() else { return };
        // A flow's own name never steers its address for anyone (anyone can put any name in
        // a first flight toward any address). A QUIC flow naming an app under session control
        // toward an address no DNS answer steered is refused (in every mode), so the browser
        // falls back to TCP, where the kernel refuses the direct hello and steers that
        // client's retry (a TLS handshake proves the client reaches the address anyway).
        if ev.kind == PayloadKind::Quic
            && ev.direction == Direction::Up
            && let Some(s) = &mut self.session
            && let Some(app) = s.on_quic_name(&self.catalog, name)
        {
            tracing::info!(app, name = %name, user = %ev.user_ip, remote = %ev.remote_ip,
                "QUIC to an app under session control refused");
            // Held flows read the verdict at once; the others at the next generation.
            let mut w = self.dp.verdicts();
            if let Err(e) = w
                .set_flow(&key, tollgate_dataplane::Action::Refuse, 0, None)
                .and_then(|()| w.commit())
            {
                tracing::warn!("writing a flow verdict: {e}");
            }
            return;
        }
        match self
            .enforcer
            .on_named_flow(&mut self.dp, &self.catalog, &self.tags, &key, name)
        {
            Ok(Some((app, Decision::Block))) => {
                tracing::info!(app, name = %name, by = ?source, user = %ev.user_ip, "blocked");
                // Plain HTTP: the kernel reset the server side; tell the user why.
                if ev.kind == PayloadKind::Http
                    && ev.direction == Direction::Up
                    && self.enforcer.kernel_blocks_name(name)
                {
                    let page = tollgate_dataplane::block_page_html(
                        self.catalog.app(app).map_or(app, |a| a.name.as_str()),
                        "This application is unsanctioned on this network.",
                    );
                    if let Err(e) = tollgate_dataplane::send_block_page(ev, &page) {
                        tracing::warn!("sending the block page: {e}");
                    }
                }
            }
            Ok(Some((app, Decision::WouldBlock))) => tracing::info!(
                app, name = %name, by = ?source, user = %ev.user_ip, "would block (monitor mode)"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("writing a flow verdict: {e}"),
        }
    }

    /// DNS answers the flow table matched to a query of their client: addresses of
    /// unsanctioned apps go into the kernel's block tries, those of apps under session
    /// control into the steer tries. Protected addresses and clients over their allowance are
    /// refused (counted). The flow table is the one place that parses DNS (UDP, and TCP
    /// reassembled). An answer the kernel held (it names an app under session control) is sent
    /// on to its user after that, whatever it holds, so the client's first connection finds
    /// its addresses steered.
    fn on_dns(&mut self, ev: &PayloadEvent) {
        self.learn_dns();
        if ev.held {
            match &mut self.session {
                Some(s) => s.release_held(ev),
                // Session control is off (the flag outlived an earlier run): still deliver.
                None => {
                    if let Err(e) = tollgate_dataplane::send_held_dns(ev) {
                        tracing::warn!("sending a held DNS answer to {}: {e}", ev.user_ip);
                    }
                }
            }
        }
    }

    fn learn_dns(&mut self) {
        for a in self.flows.take_dns_answers() {
            if self.enforcer.protection(a.ip).is_some() {
                self.enforcer.learn_stats.protected += 1;
                continue;
            }
            if !self.enforcer.allow_learning(a.client, a.ip) {
                continue;
            }
            if let Some(s) = &mut self.session {
                s.on_dns_answer(&mut self.dp, &self.catalog, &a.name, a.ip, a.client);
            }
            if let Err(e) = self.enforcer.on_dns_answer(
                &mut self.dp,
                &self.catalog,
                &self.tags,
                &a.name,
                a.ip,
                a.ttl,
            ) {
                tracing::warn!("writing an address verdict: {e}");
            }
        }
    }

    /// After a tag change: bring the kernel in line, and cut the existing flows of apps
    /// that are now blocked (their addresses learned from DNS too).
    fn apply_tags(&mut self) {
        match self.enforcer.sync(&mut self.dp, &self.catalog, &self.tags) {
            Ok(r) => {
                tracing::info!(
                    names_set = r.names_set,
                    names_removed = r.names_removed,
                    "verdicts synced"
                );
                if r.names_failed > 0 {
                    tracing::error!(
                        failed = r.names_failed,
                        "name verdicts not written (map full); the rest are in place"
                    );
                }
            }
            Err(e) => tracing::error!("syncing verdicts: {e}"),
        }
        if !self.enforcer.cut_existing_flows() {
            return;
        }
        let now = Utc::now();
        let cached: Vec<(IpAddr, String, Duration)> = self
            .flows
            .dns_entries()
            .filter_map(|(ip, name, expires)| {
                let left = (expires - now).to_std().ok()?;
                Some((ip, name.to_string(), left))
            })
            .collect();
        for (ip, name, left) in cached {
            let _ = self.enforcer.on_dns_answer(
                &mut self.dp,
                &self.catalog,
                &self.tags,
                &name,
                ip,
                left,
            );
        }
        // The live flows in steps, not as one snapshot (12 MiB at 100k flows): each step's
        // named flows are decided before the next step is read.
        let mut walk = FlowWalk::new();
        let mut named: Vec<(abi::FlowKey, String)> = Vec::new();
        while !walk.is_done() {
            named.clear();
            let Core { dp, flows, .. } = self;
            let step = dp.walk_flow_counters(&mut walk, WALK_STEP, |c| {
                let Some(key) = c.flow_key() else { return };
                let name = flows
                    .own_name(
                        l4(c.proto),
                        (c.user_ip, c.user_port),
                        (c.remote_ip, c.remote_port),
                    )
                    .map(|(n, _)| n.to_string())
                    .or_else(|| {
                        flows
                            .dns_name(c.remote_ip, c.first_seen.into())
                            .map(str::to_string)
                    });
                if let Some(name) = name {
                    named.push((key, name));
                }
            });
            if let Err(e) = step {
                tracing::warn!("reading flow counters: {e}");
            }
            for (key, name) in &named {
                let _ =
                    self.enforcer
                        .on_named_flow(&mut self.dp, &self.catalog, &self.tags, key, name);
            }
        }
        if let Err(e) = self.dp.verdicts().commit() {
            tracing::error!("committing verdicts: {e}");
        }
    }

    /// Heartbeat for the kernel's fail-open rule and expiry of learned addresses (persisted
    /// by [`Core::save_learned`] after it).
    fn housekeeping(&mut self) {
        if let Err(e) = self.dp.verdicts().heartbeat() {
            tracing::warn!("heartbeat: {e}");
        }
        self.enforcer.expire(&mut self.dp);
        if let Some(s) = &mut self.session {
            s.housekeeping(&mut self.dp);
        }
        // Flows re-check verdicts (and so their TTLs) only when the generation changes.
        if self.enforcer.learned_len() > 0
            && let Err(e) = self.dp.verdicts().commit()
        {
            tracing::warn!("committing verdicts: {e}");
        }
        let keep = TimeDelta::hours(i64::from(self.cfg.discovery.history_hours));
        self.history.forget_hours_before(Utc::now() - keep);
    }

    /// Persists the learned addresses when the set (or an expiry, to the minute) changed.
    fn save_learned(&mut self) {
        let learned = self.enforcer.learned_records();
        let mut seen = learned.clone();
        for r in &mut seen {
            r.expires /= 60;
        }
        if self.learned_saved.as_ref() != Some(&seen) {
            match save_learned(&self.cfg.state_dir, &learned) {
                Ok(()) => self.learned_saved = Some(seen),
                Err(e) => tracing::warn!("saving {LEARNED_IPS_FILE}: {e}"),
            }
        }
    }

    /// Reads the next step of a walk of the kernel's flow counters into the flow table.
    fn poll_step(&mut self, walk: &mut FlowWalk) {
        let Core {
            dp, flows, retired, ..
        } = self;
        let result = dp.walk_flow_counters(walk, WALK_STEP, |c| {
            let key = flow_key(c);
            let last_seen: DateTime<Utc> = c.last_seen.into();
            if let Some(seen) = retired.get(&key) {
                if *seen >= last_seen {
                    return;
                }
                // The same 5-tuple came back to life: a new flow.
                retired.remove(&key);
            }
            flows.update_counters(
                key,
                flow_table::Counters {
                    packets_up: c.packets_up,
                    packets_down: c.packets_down,
                    bytes_up: c.bytes_up,
                    bytes_down: c.bytes_down,
                    first_seen: c.first_seen.into(),
                    last_seen,
                    tcp_flags: c.tcp_flags,
                },
            );
        });
        if let Err(e) = result {
            tracing::warn!("reading flow counters: {e}");
        }
    }

    /// Handles the events waiting in the queue, at most `max`.
    fn drain_events(&mut self, events: &mut mpsc::Receiver<PayloadEvent>, max: usize) {
        for _ in 0..max {
            match events.try_recv() {
                Ok(ev) => self.on_event(&ev),
                Err(_) => break,
            }
        }
    }

    /// Ring-buffer records lost in userspace: read errors and undecodable records.
    fn reader_errors(&self) -> u64 {
        self.reader.io_errors.load(Ordering::Relaxed)
            + self.reader.malformed.load(Ordering::Relaxed)
    }

    /// A whole walk of the kernel's flow counters in steps, with the ring buffer drained
    /// between steps (so a large table does not make the ring overflow), then the idle flows
    /// retired. Returns the time spent walking (without the events).
    fn poll_counters(&mut self, events: &mut mpsc::Receiver<PayloadEvent>) -> Duration {
        let mut walk = FlowWalk::new();
        let mut walking = Duration::ZERO;
        while !walk.is_done() {
            let t = Instant::now();
            self.poll_step(&mut walk);
            walking += t.elapsed();
            self.drain_events(events, EVENT_BATCH);
        }
        self.retire_idle();
        walking
    }

    /// Moves idle flows out of the live table into the discovery history.
    fn retire_idle(&mut self) {
        let now = Utc::now();
        self.flows.expire(now);
        for rec in self.flows.drain_finished() {
            self.history.add(&rec, &self.catalog, &self.users);
            self.retired.insert(record_key(&rec), rec.last_seen);
        }
        // Forget retirements the kernel's LRU map has surely evicted by now.
        if self.retired.len() > self.cfg.flows.max_flows {
            let idle = TimeDelta::seconds(
                i64::try_from(self.cfg.flows.idle_timeout_secs).unwrap_or(i64::MAX / 8),
            );
            let horizon = now - idle * 4;
            self.retired.retain(|_, seen| *seen > horizon);
        }
    }

    /// Every flow as a JSON array in pieces of about `FLOWS_PIECE` bytes, for the control
    /// socket's task to write: the core serialises (the flow table is its own) and goes
    /// back to its events at once, however slowly the client reads. The pieces are plain
    /// text, ~360 B a flow (a value tree took ~8x that); unordered, the CLI sorts.
    fn flows_pieces(&self) -> Vec<Vec<u8>> {
        const FLOWS_PIECE: usize = 64 * 1024;
        let mut pieces = Vec::new();
        let mut piece = Vec::with_capacity(FLOWS_PIECE + 1024);
        piece.push(b'[');
        for (i, rec) in self.flows.records().enumerate() {
            if i > 0 {
                piece.push(b',');
            }
            if let Err(e) = serde_json::to_writer(&mut piece, &rec) {
                tracing::warn!("flow record not serialisable: {e}");
                piece.extend_from_slice(b"null");
            }
            if piece.len() >= FLOWS_PIECE {
                pieces.push(std::mem::replace(
                    &mut piece,
                    Vec::with_capacity(FLOWS_PIECE + 1024),
                ));
            }
        }
        piece.push(b']');
        pieces.push(piece);
        pieces
    }

    fn apps_json(&self) -> serde_json::Value {
        let mut agg = self.history.clone();
        for rec in self.flows.records() {
            agg.add(&rec, &self.catalog, &self.users);
        }
        let snap = agg.snapshot(&self.catalog, &|id| {
            self.tags.tag(&self.catalog, id).map(|(t, _)| t.to_string())
        });
        serde_json::json!({
            "apps": snap.apps,
            "users": snap.users,
            "unknown_domains": snap.unknown_domains,
            "totals": snap.totals,
        })
    }

    fn status_json(&self) -> serde_json::Value {
        let st = self.flows.stats();
        let dp = self.dp.stats().unwrap_or_default();
        serde_json::json!({
            "mode": self.cfg.mode.to_string(),
            "flows": st.flows,
            "named_flows": st.named_flows,
            "events": self.events_total,
            "kernel_events": dp.events,
            "ring_drops": dp.ringbuf_full,
            "kernel_parse_errors": dp.parse_errors(),
            "flow_map_full": dp.flow_map_full,
            "flows_dropped": st.flows_dropped,
            "event_decode_errors": self.reader_errors(),
            "packets": dp.packets,
            "drops": dp.drops,
            "would_drop": dp.would_drop,
            "dns_refused": dp.dns_refused,
            "control_clients_refused": control::clients_refused(),
            "audit_dropped": self.session.as_ref().map(|s| s.stats().audit_dropped),
            "dns_answers_matched": st.dns_answers_matched,
            "dns_answers_unmatched": st.dns_answers_unmatched,
            "dns_answers_wrong_question": st.dns_answers_wrong_question,
            "dns_answers_unsolicited_kernel": dp.dns_unsolicited,
            "dns_queries_pending": st.dns_queries_pending,
            "dns_queries_evicted": st.dns_queries_evicted,
            "dns_ttl_capped": st.dns_ttl_capped,
            "dns_answers_protected": self.enforcer.learn_stats.protected,
            "dns_learn_rate_limited": self.enforcer.learn_stats.rate_limited,
            "dns_learned": self.enforcer.learned_len(),
            "dns_learned_evicted": self.enforcer.learn_stats.evicted,
            "dns_learned_expired": self.enforcer.learn_stats.expired,
            "dns_learned_write_failed": self.enforcer.learn_stats.write_failed,
            "session": {
                "steered": dp.steered,
                "steer_no_proxy": dp.steer_no_proxy,
                "steer_quic_refused": dp.steer_quic_refused,
                "session_refused": dp.session_refused,
                "session_unproven": dp.session_unproven,
                "steer_client_added": dp.steer_client_added,
                "steer_by_client": dp.steer_by_client,
                "dns_held": dp.dns_held,
                "steer_kept_stale": dp.steer_kept_stale,
                "steer_lost_reset": dp.steer_lost_reset,
                "daemon": self.session.as_ref().map(|s| s.counts).unwrap_or_default(),
            },
            "evasion": self.evasion_json(&dp),
        })
    }

    /// How the gateway met evasion attempts: every kernel counter of the unreadable and
    /// evasion cases by name, the `[enforcement] unreadable` setting, and the QUIC flows
    /// decided again after a decoy Initial.
    fn evasion_json(&self, dp: &tollgate_dataplane::DataplaneStats) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert(
            "unreadable".into(),
            self.enforcer.unreadable().as_str().into(),
        );
        for (id, name) in abi::STAT_NAMES {
            if (abi::STAT_FRAG_TINY..=abi::STAT_UNREADABLE_PASSED).contains(&id)
                || id == abi::STAT_FRAGMENTS
            {
                m.insert(name.into(), dp.raw.get(id).copied().unwrap_or(0).into());
            }
        }
        m.insert("quic_renamed".into(), self.quic_recheck.renamed.into());
        m.insert(
            "quic_recheck_forgotten".into(),
            self.quic_recheck.forgotten.into(),
        );
        serde_json::Value::Object(m)
    }

    fn print_status(&mut self) {
        let st = self.flows.stats();
        let dp = self.dp.stats().unwrap_or_default();
        let secs = self.last_status.elapsed().as_secs_f64().max(0.001);
        let rate = (self.events_total - self.events_at_last_status) as f64 / secs;
        self.events_at_last_status = self.events_total;
        self.last_status = Instant::now();
        crate::outln!(
            "status: flows {} (named {}), events {} ({:.0}/s), ring drops {}, parse errors {}, {} {}",
            st.flows,
            st.named_flows,
            self.events_total,
            rate,
            dp.ringbuf_full,
            dp.parse_errors() + self.reader_errors(),
            if self.cfg.mode == Mode::Enforce {
                "dropped"
            } else {
                "would drop"
            },
            if self.cfg.mode == Mode::Enforce {
                dp.drops
            } else {
                dp.would_drop
            },
        );
    }

    fn set_tag(&mut self, app: &str, tag: &str) -> Response {
        if self.catalog.app(app).is_none() {
            return Response::err(format!("app {app:?} is not in the catalog"));
        }
        let tag: Tag = match tag.parse() {
            Ok(t) => t,
            Err(e) => return Response::err(e.to_string()),
        };
        let mut live = self.live_tags.clone();
        live.insert(app.to_string(), tag.clone());
        if let Err(e) = self.tag_store.save(&live) {
            return Response::err(format!("could not persist the tag: {e}"));
        }
        self.live_tags = live;
        self.tags = self.tags.with_live(self.live_tags.clone());
        self.apply_tags();
        tracing::info!(app, tag = %tag, "tag set");
        Response::ok(serde_json::json!({ "app": app, "tag": tag.to_string() }))
    }

    /// SIGHUP: reads the config file again and applies what can change without a restart:
    /// tags and tag rules (the kernel's verdicts follow at once, as for `tollgate app tag`),
    /// session and access policies, and which apps are under session control. A config that
    /// does not load leaves everything as it was. Changes to anything else are reported as
    /// needing a restart.
    fn reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            crate::outln!(
                "tollgate: SIGHUP: running on the embedded default config; nothing to reload"
            );
            return;
        };
        let new = match crate::config::Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload refused, the running config stays: {e}");
                crate::outln!("tollgate: reload refused, the running config stays: {e}");
                return;
            }
        };
        let tags = match TagBook::new(
            &self.catalog,
            &new.apps,
            new.tag_rules.clone(),
            self.live_tags.clone(),
        ) {
            Ok(t) => t,
            Err(e) => {
                crate::outln!(
                    "tollgate: reload refused ({}: apps/tag_rules: {e}), the running config stays",
                    path.display()
                );
                return;
            }
        };
        if let Some(s) = &mut self.session
            && let Err(e) = s.reload(&new)
        {
            crate::outln!(
                "tollgate: reload refused ({}: {e:#}), the running config stays",
                path.display()
            );
            return;
        }
        let needs_restart: Vec<&str> = [
            ("mode", new.mode != self.cfg.mode),
            (
                "interfaces",
                format!("{:?}", new.interfaces) != format!("{:?}", self.cfg.interfaces),
            ),
            (
                "custom_apps",
                format!("{:?}", new.custom_apps) != format!("{:?}", self.cfg.custom_apps),
            ),
            (
                "catalog",
                format!("{:?}", new.catalog) != format!("{:?}", self.cfg.catalog),
            ),
            (
                "enforcement",
                format!("{:?}", new.enforcement) != format!("{:?}", self.cfg.enforcement),
            ),
            (
                "proxy",
                format!("{:?}", new.proxy) != format!("{:?}", self.cfg.proxy),
            ),
            (
                "session control started",
                self.session.is_none() && !crate::session::session_apps(&new).is_empty(),
            ),
        ]
        .into_iter()
        .filter_map(|(what, changed)| changed.then_some(what))
        .collect();
        self.tags = tags;
        self.enforcer
            .set_own_addresses(crate::session::own_addresses());
        if self.session.is_some() {
            self.enforcer
                .set_session_apps(crate::session::session_apps(&new));
        }
        self.cfg.apps = new.apps;
        self.cfg.tag_rules = new.tag_rules;
        self.cfg.session_policies = new.session_policies;
        self.cfg.access_policies = new.access_policies;
        self.apply_tags();
        crate::outln!(
            "tollgate: reloaded {} (tags, tag rules, session and access policies){}",
            path.display(),
            if needs_restart.is_empty() {
                String::new()
            } else {
                format!(
                    "; changes to {} take effect after a restart",
                    needs_restart.join(", ")
                )
            }
        );
    }

    fn on_control(&mut self, request: Request) -> (Response, Next) {
        match request {
            // Streamed by the control loop (`stream_flows`).
            Request::Flows => (Response::err("flows are streamed"), Next::Continue),
            Request::Apps => (Response::ok(self.apps_json()), Next::Continue),
            Request::Status => (Response::ok(self.status_json()), Next::Continue),
            Request::Tag { app, tag } => (self.set_tag(&app, &tag), Next::Continue),
            Request::Stop => (Response::ok(serde_json::Value::Null), Next::Stop),
        }
    }
}

fn l4(proto: u8) -> L4Proto {
    if proto == 6 {
        L4Proto::Tcp
    } else {
        L4Proto::Udp
    }
}

fn flow_key(c: &FlowCounters) -> flow_table::FlowKey {
    flow_table::FlowKey {
        proto: l4(c.proto),
        src: c.user_ip,
        sport: c.user_port,
        dst: c.remote_ip,
        dport: c.remote_port,
    }
}

fn record_key(r: &FlowRecord) -> flow_table::FlowKey {
    flow_table::FlowKey {
        proto: r.proto,
        src: r.src,
        sport: r.sport,
        dst: r.dst,
        dport: r.dport,
    }
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
    } = parts;
    let interfaces = resolve_interfaces(&cfg)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state_dir {}", cfg.state_dir.display()))?;
    let pin_dir = pin_dir(netns.as_deref());
    let mut dp = Dataplane::start(DataplaneOptions {
        interfaces: interfaces
            .iter()
            .map(|(n, r)| {
                (
                    n.clone(),
                    match r {
                        Role::Lan => tollgate_dataplane::Role::Lan,
                        Role::Wan => tollgate_dataplane::Role::Wan,
                    },
                )
            })
            .collect(),
        pin_dir: pin_dir.clone(),
        mode: match cfg.mode {
            Mode::Monitor => tollgate_dataplane::Mode::Monitor,
            Mode::Enforce => tollgate_dataplane::Mode::Enforce,
        },
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
    for a in dp.attached() {
        crate::outln!(
            "  attached tcx {:<7} on {} ({}, {} traffic) program {} id {} link {}{}",
            a.hook.to_string(),
            a.interface,
            a.role,
            match a.direction {
                Direction::Up => "up",
                Direction::Down => "down",
            },
            a.program,
            a.program_id,
            a.link_id,
            if a.adopted {
                " (adopted pinned link)"
            } else {
                ""
            }
        );
    }
    crate::outln!("  pins under {}", pin_dir.display());

    let reader = dp.take_event_reader().context("opening the ring buffer")?;

    let catalog = Arc::new(catalog);
    let mut session = crate::session::SessionControl::start(&cfg, catalog.clone(), &mut dp).await?;
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
    let mut core = Core {
        enforcer,
        session,
        learned_saved: None,
        flows: FlowTable::new(FlowTableLimits {
            max_flows: cfg.flows.max_flows,
            idle_timeout: Duration::from_secs(cfg.flows.idle_timeout_secs),
            // Nothing the daemon reports uses JA4; it costs a sixth of naming a flow.
            fingerprints: false,
            // Nor what a hello tells beyond the name (~200 B of heap a flow).
            meta: false,
            // Enforcement acts on DNS answers: only those that answer a user's query.
            dns_answers_need_query: true,
            collect_dns_answers: true,
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
        events_at_last_status: 0,
        last_status: Instant::now(),
        reader: Arc::new(ReaderCounts::default()),
        quic_recheck: crate::quic_recheck::QuicRecheck::default(),
        cfg,
        config_path,
    };

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
    let (mut events, reader_task) = spawn_reader(reader, core.reader.clone());
    // The control socket comes last: when it answers, the daemon is ready.
    let (tx, mut rx) = mpsc::channel::<ControlCall>(64);
    let socket = core.cfg.control_socket.clone();
    let server = tokio::spawn(async move {
        if let Err(e) = control::serve(&socket, Arc::new(ControlHandler { tx })).await {
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
                if matches!(call.request, Request::Flows | Request::Apps | Request::Status) {
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
            _ = sighup.recv() => core.reload(),
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    server.abort();
    reader_task.abort();
    let _ = std::fs::remove_file(&core.cfg.control_socket);
    if let Some(s) = core.session.take() {
        s.shutdown(&mut core.dp).await;
    }
    if detach {
        core.dp.detach().context("detaching")?;
        crate::outln!("tollgate: stopped; programs detached and pins removed");
    } else {
        crate::outln!(
            "tollgate: exiting; programs stay attached and pinned under {} (`tollgate stop` removes them)",
            pin_dir.display()
        );
    }
    Ok(())
}
