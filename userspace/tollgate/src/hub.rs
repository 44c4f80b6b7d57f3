//! The gateway's side of central management, as wiring: the enrollment kept in the state
//! dir, and the sync task that long-polls the hub for bundles, hands each verified bundle
//! to the core (which applies it like a config reload), and uploads the spool.
//!
//! The protocol, bundle verification, the spool and the HTTPS client are `tollgate-sync`'s;
//! this module only decides when each runs and keeps the status the daemon shows.
//!
//! What lives in `<state_dir>/hub/` (directory 0700, files 0600):
//! - `enrollment.json`: the gateway id, site, hub URLs and the bundle-signing public key;
//! - `gateway.key` (PEM; made here, never sent), `gateway.crt` and `ca.crt` (DER);
//! - `bundle.bin`: the last bundle applied, verified again at start;
//! - `spool/`: records waiting for the hub;
//! - `meter.bin`: what discovery already reported, so that a restarted daemon does not report
//!   the flows still in the kernel's map again. It is written right after the interval's
//!   record is synced into the spool: a crash between the two (a few microseconds) reports
//!   that one interval twice; a crash before the sync loses nothing, since the flows are
//!   still in the kernel's map and are reported from the last checkpoint.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tollgate_sync::bundle::{Bundle, SignedBundle};
use tollgate_sync::client::{self, HubClient};
use tollgate_sync::protocol::{
    BundleOutcome, BundleReport, EnrollRequest, Health, PollRequest, PollResponse, RecordBody,
    UploadBatch,
};
use tollgate_sync::spool::{Spool, SpoolConfig};
use tollgate_sync::token::EnrollmentToken;

use tollgate_discovery::interval::MeterCheckpoint;

use crate::config::Config;

const HUB_DIR: &str = "hub";
const ENROLLMENT_FILE: &str = "enrollment.json";
const KEY_FILE: &str = "gateway.key";
const CERT_FILE: &str = "gateway.crt";
const CA_FILE: &str = "ca.crt";
const BUNDLE_FILE: &str = "bundle.bin";
const SPOOL_DIR: &str = "spool";
const METER_FILE: &str = "meter.bin";

/// How long the hub may hold a poll.
const POLL_WAIT_SECS: u16 = 25;
/// Records per upload request, and their bytes.
const UPLOAD_BATCH_RECORDS: usize = 512;
const UPLOAD_BATCH_BYTES: usize = 4 << 20;
/// Records waiting between the core and the spool; when full the core's record is dropped
/// and counted (the core never waits for the disk or the hub).
const RECORD_QUEUE: usize = 1024;
/// Retry delays after an error: doubling from the first to the last, with jitter.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_LAST: Duration = Duration::from_secs(60);

/// What `tollgate enroll` stored: who the gateway is to the hub, and whom it trusts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrollment {
    pub gateway_id: String,
    pub site: String,
    pub urls: Vec<String>,
    /// Hex of the hub's Ed25519 bundle key.
    pub bundle_key: String,
    pub enrolled_at: i64,
}

/// An enrollment with its key material, ready to connect.
pub struct Identity {
    pub enrollment: Enrollment,
    pub bundle_key: [u8; 32],
    pub ca_der: Vec<u8>,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
}

pub fn hub_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(HUB_DIR)
}

/// The stored enrollment, if this gateway is enrolled.
pub fn load_identity(state_dir: &Path) -> Result<Option<Identity>> {
    let dir = hub_dir(state_dir);
    let path = dir.join(ENROLLMENT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let enrollment: Enrollment =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let bundle_key = tollgate_sync::token::hex32(&enrollment.bundle_key)
        .with_context(|| format!("{}: bundle_key is not 64 hex digits", path.display()))?;
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
    };
    let key_pem = String::from_utf8(read(KEY_FILE)?).context("gateway.key is not PEM text")?;
    Ok(Some(Identity {
        bundle_key,
        ca_der: read(CA_FILE)?,
        cert_der: read(CERT_FILE)?,
        key_pem,
        enrollment,
    }))
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "gateway".into())
}

/// Writes `body` to `path` with mode 0600, durably: a fresh temporary file, fsynced, renamed
/// over the old one, the directory fsynced.
pub(crate) fn write_private(path: &Path, body: &[u8]) -> Result<()> {
    let dir = path.parent().context("a file without a directory")?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("a file without a name")?;
    tollgate_activity::alert::write_atomic(dir, name, body)
        .with_context(|| format!("writing {}", path.display()))
}

/// `tollgate enroll URL TOKEN`: makes the gateway's key, has the hub sign it, and stores the
/// enrollment. An existing enrollment is replaced only after the new one succeeded.
pub async fn enroll(cfg: &Config, url: &str, token: &str) -> Result<Enrollment> {
    let token = EnrollmentToken::parse(token).context("reading the token")?;
    let hostname = hostname();
    let identity = client::new_gateway_identity(&hostname).context("making the gateway's key")?;
    let request = EnrollRequest {
        token_secret: token.secret_hex(),
        csr_der: identity.csr_der.clone(),
        hostname,
        agent_version: env!("CARGO_PKG_VERSION").into(),
    };
    let answer = client::enroll(url, &token, &request)
        .await
        .with_context(|| format!("enrolling with {url}"))?;
    let dir = hub_dir(&cfg.state_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut urls = vec![url.to_string()];
    urls.extend(answer.hub_urls.iter().filter(|u| *u != url).cloned());
    let enrollment = Enrollment {
        gateway_id: answer.gateway_id.clone(),
        site: answer.site.clone(),
        urls,
        bundle_key: tollgate_sync::token::hex(&answer.bundle_key),
        enrolled_at: chrono::Utc::now().timestamp(),
    };
    write_private(&dir.join(KEY_FILE), identity.key_pem.as_bytes())?;
    write_private(&dir.join(CERT_FILE), &answer.certificate_der)?;
    write_private(&dir.join(CA_FILE), &answer.ca_der)?;
    // A bundle of another hub (or an earlier enrollment) is not this hub's to keep.
    let _ = std::fs::remove_file(dir.join(BUNDLE_FILE));
    // Written last: its presence is what makes `tollgate run` connect.
    write_private(
        &dir.join(ENROLLMENT_FILE),
        &serde_json::to_vec_pretty(&enrollment)?,
    )?;
    Ok(enrollment)
}

/// The last bundle this gateway applied, verified again with the stored key. A file that no
/// longer verifies is reported and left out (the local config alone runs).
pub fn load_applied_bundle(state_dir: &Path, identity: &Identity) -> Option<Bundle> {
    let path = hub_dir(state_dir).join(BUNDLE_FILE);
    let bytes = std::fs::read(&path).ok()?;
    let checked = postcard::from_bytes::<SignedBundle>(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|signed| {
            signed
                .verify(&identity.bundle_key, 0, &identity.enrollment.site)
                .map_err(|e| e.to_string())
        });
    match checked {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!(
                "{}: {e}; running on the local config until the hub sends a bundle",
                path.display()
            );
            None
        }
    }
}

/// What discovery reported before the daemon last stopped; none when unreadable (the flows
/// then count from now).
pub fn load_meter_checkpoint(state_dir: &Path) -> Option<MeterCheckpoint> {
    let bytes = std::fs::read(hub_dir(state_dir).join(METER_FILE)).ok()?;
    postcard::from_bytes(&bytes).ok()
}

/// The sync's state, as `status --json` shows it under `hub`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HubStatus {
    pub url: String,
    pub gateway_id: String,
    pub site: String,
    /// The last exchange with the hub succeeded.
    pub connected: bool,
    pub bundle_revision: u64,
    /// A bundle the gateway refused, and why (the hub is told too).
    pub bundle_refused: Option<String>,
    pub spool_records: u64,
    pub spool_bytes: u64,
    pub spool_dropped: u64,
    /// Records the core produced that the spool queue had no room for.
    pub records_dropped: u64,
    pub uploaded_records: u64,
    /// Unix seconds of the last acknowledged upload.
    pub last_upload: Option<i64>,
    /// Unix seconds of the last answered poll.
    pub last_contact: Option<i64>,
    pub last_error: Option<String>,
}

/// Gauges the core keeps current for the health report.
#[derive(Default)]
pub struct HealthGauges {
    pub flows_active: AtomicU64,
    pub ring_drops: AtomicU64,
}

/// A bundle the core is asked to apply, with the way back.
pub struct ApplyBundle {
    pub bundle: Bundle,
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// A record for the spool, with a file to write once it is durable (the discovery meter's
/// state, a connector's cursor): the newest content per path wins.
struct Spooled {
    body: RecordBody,
    after: Option<(PathBuf, Vec<u8>)>,
}

/// A handle other tasks (the gateway's connectors) spool records through.
#[derive(Clone)]
pub struct HubSender {
    records: mpsc::Sender<Spooled>,
    status: Arc<Mutex<HubStatus>>,
}

impl HubSender {
    /// Queues `body`; `then` (path, content) is written once the record is durable in the
    /// spool. Never waits: a full queue drops the record, counted, and returns false (the
    /// file is then not written either).
    pub fn send_then(&self, body: RecordBody, then: (PathBuf, Vec<u8>)) -> bool {
        let ok = self
            .records
            .try_send(Spooled {
                body,
                after: Some(then),
            })
            .is_ok();
        if !ok && let Ok(mut s) = self.status.lock() {
            s.records_dropped += 1;
        }
        ok
    }
}

/// What the core holds of the sync task.
pub struct HubLink {
    pub status: Arc<Mutex<HubStatus>>,
    pub gauges: Arc<HealthGauges>,
    records: mpsc::Sender<Spooled>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Where the discovery meter's state is kept.
    meter_path: PathBuf,
}

impl HubLink {
    /// Queues a record for the hub; never waits. A full queue drops it, counted.
    pub fn send(&self, body: RecordBody) {
        self.queue(Spooled { body, after: None });
    }

    /// Queues an interval's discovery with the meter's state after it.
    pub fn send_interval(&self, body: RecordBody, checkpoint: &MeterCheckpoint) {
        self.queue(Spooled {
            body,
            after: postcard::to_allocvec(checkpoint)
                .ok()
                .map(|cp| (self.meter_path.clone(), cp)),
        });
    }

    /// A handle for other tasks.
    pub fn sender(&self) -> HubSender {
        HubSender {
            records: self.records.clone(),
            status: self.status.clone(),
        }
    }

    fn queue(&self, item: Spooled) {
        if self.records.try_send(item).is_err()
            && let Ok(mut s) = self.status.lock()
        {
            s.records_dropped += 1;
        }
    }

    pub fn status(&self) -> HubStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the sync: a poll task and an upload task. Bundles come out of the returned
/// receiver for the core to apply.
pub fn start(
    cfg: &Config,
    identity: Identity,
    applied_revision: u64,
) -> Result<(HubLink, mpsc::Receiver<ApplyBundle>)> {
    let client = Arc::new(
        HubClient::new(
            identity.enrollment.urls.clone(),
            identity.ca_der.clone(),
            identity.cert_der.clone(),
            &identity.key_pem,
        )
        .context("setting up the hub client")?,
    );
    let spool_dir = hub_dir(&cfg.state_dir).join(SPOOL_DIR);
    let spool = Spool::open(SpoolConfig {
        max_bytes: cfg.hub.spool_max_mb.saturating_mul(1 << 20),
        ..SpoolConfig::new(&spool_dir)
    })
    .with_context(|| format!("opening the spool {}", spool_dir.display()))?;
    let spool = Arc::new(Mutex::new(spool));
    let status = Arc::new(Mutex::new(HubStatus {
        url: client.current_url(),
        gateway_id: identity.enrollment.gateway_id.clone(),
        site: identity.enrollment.site.clone(),
        bundle_revision: applied_revision,
        ..HubStatus::default()
    }));
    refresh_spool_status(&spool, &status);
    let gauges = Arc::new(HealthGauges::default());
    let (records_tx, records_rx) = mpsc::channel(RECORD_QUEUE);
    let (apply_tx, apply_rx) = mpsc::channel(1);
    let poller = Poller {
        client: client.clone(),
        status: status.clone(),
        gauges: gauges.clone(),
        bundle_key: identity.bundle_key,
        site: identity.enrollment.site.clone(),
        bundle_path: hub_dir(&cfg.state_dir).join(BUNDLE_FILE),
        applied: applied_revision,
        skipped: 0,
        started: Instant::now(),
        apply: apply_tx,
    };
    let meter_path = hub_dir(&cfg.state_dir).join(METER_FILE);
    let uploader = Uploader {
        client,
        status: status.clone(),
        spool,
        interval: Duration::from_secs(cfg.hub.upload_interval_secs.max(1)),
    };
    let tasks = vec![
        tokio::spawn(poller.run()),
        tokio::spawn(uploader.run(records_rx)),
    ];
    Ok((
        HubLink {
            status,
            gauges,
            records: records_tx,
            tasks,
            meter_path,
        },
        apply_rx,
    ))
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn set_error(status: &Mutex<HubStatus>, error: Option<String>) {
    if let Ok(mut s) = status.lock() {
        s.connected = error.is_none();
        if error.is_some() {
            s.last_error = error;
        }
    }
}

fn refresh_spool_status(spool: &Mutex<Spool>, status: &Mutex<HubStatus>) {
    let Ok(spool) = spool.lock() else { return };
    let st = spool.stats();
    if let Ok(mut s) = status.lock() {
        s.spool_records = st.records;
        s.spool_bytes = st.bytes;
        s.spool_dropped = st.dropped_records;
    }
}

/// Doubling delays with ±25 % jitter, so a fleet that lost its hub does not come back in step.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: BACKOFF_FIRST,
        }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }

    /// The next delay (jittered), and the one after doubled.
    fn delay(&mut self) -> Duration {
        let nanos = u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
        );
        let base = self.next;
        self.next = (base * 2).min(BACKOFF_LAST);
        // 75 %..125 % of the base delay.
        base.mul_f64(0.75 + (nanos % 1000) as f64 / 2000.0)
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.delay()).await;
    }
}

struct Poller {
    client: Arc<HubClient>,
    status: Arc<Mutex<HubStatus>>,
    gauges: Arc<HealthGauges>,
    bundle_key: [u8; 32],
    site: String,
    bundle_path: PathBuf,
    applied: u64,
    /// The newest signed revision the core refused: not asked for again until a newer one.
    skipped: u64,
    started: Instant,
    apply: mpsc::Sender<ApplyBundle>,
}

impl Poller {
    fn health(&self) -> Health {
        let s = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        Health {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            hostname: hostname(),
            uptime_secs: self.started.elapsed().as_secs(),
            flows_active: self.gauges.flows_active.load(Ordering::Relaxed),
            ring_drops: self.gauges.ring_drops.load(Ordering::Relaxed),
            spool_records: s.spool_records,
            spool_bytes: s.spool_bytes,
            spool_dropped: s.spool_dropped,
            last_error: s.last_error,
        }
    }

    async fn run(mut self) {
        let mut backoff = Backoff::new();
        // The first poll (and the first after an error) is answered at once: the gateway
        // learns it is connected, and the hub gets its health, without waiting a long poll.
        let mut wait_secs = 0;
        loop {
            let request = PollRequest {
                applied_revision: self.applied.max(self.skipped),
                wait_secs,
                health: self.health(),
            };
            let answer = self.client.poll(&request).await;
            if let Ok(mut s) = self.status.lock() {
                s.url = self.client.current_url();
            }
            match answer {
                Ok(PollResponse::Unchanged { .. }) => {
                    self.contact();
                    backoff.reset();
                    wait_secs = POLL_WAIT_SECS;
                }
                Ok(PollResponse::Bundle(signed)) => {
                    self.contact();
                    backoff.reset();
                    if !self.take_bundle(signed).await {
                        // Unverifiable: the hub (or someone in its place) misbehaves; do
                        // not ask again at once.
                        backoff.wait().await;
                    }
                }
                Err(e) => {
                    tracing::debug!("hub poll: {e}");
                    set_error(&self.status, Some(e.to_string()));
                    wait_secs = 0;
                    backoff.wait().await;
                }
            }
        }
    }

    fn contact(&self) {
        if let Ok(mut s) = self.status.lock() {
            s.connected = true;
            s.last_contact = Some(now_secs());
        }
    }

    /// Verifies and applies a bundle and tells the hub the outcome. Returns false when the
    /// bundle did not verify.
    async fn take_bundle(&mut self, signed: SignedBundle) -> bool {
        let bundle = match signed.verify(&self.bundle_key, self.applied, &self.site) {
            Ok(b) => b,
            Err(e) => {
                // For the report only: nothing of an unverified bundle is trusted.
                let claimed = postcard::from_bytes::<Bundle>(&signed.body)
                    .map(|b| b.revision)
                    .unwrap_or(0);
                let reason = format!("refused bundle revision {claimed}: {e}");
                tracing::error!("{reason}; the current policy stays");
                self.refused(claimed, reason).await;
                return false;
            }
        };
        let revision = bundle.revision;
        let (reply, answer) = oneshot::channel();
        if self
            .apply
            .send(ApplyBundle { bundle, reply })
            .await
            .is_err()
        {
            return true;
        }
        match answer.await {
            Ok(Ok(())) => {
                self.applied = revision;
                if let Err(e) = write_private(
                    &self.bundle_path,
                    &postcard::to_allocvec(&signed).unwrap_or_default(),
                ) {
                    tracing::error!("keeping the applied bundle: {e:#}");
                }
                if let Ok(mut s) = self.status.lock() {
                    s.bundle_revision = revision;
                    s.bundle_refused = None;
                }
                self.report(BundleReport {
                    revision,
                    outcome: BundleOutcome::Applied,
                })
                .await;
            }
            Ok(Err(reason)) => {
                // Signed, so its revision is the hub's: skip it until a newer one comes.
                self.skipped = self.skipped.max(revision);
                let reason = format!("refused bundle revision {revision}: {reason}");
                tracing::error!("{reason}; the current policy stays");
                self.refused(revision, reason).await;
            }
            Err(_) => {}
        }
        true
    }

    async fn refused(&self, revision: u64, reason: String) {
        if let Ok(mut s) = self.status.lock() {
            s.bundle_refused = Some(reason.clone());
        }
        self.report(BundleReport {
            revision,
            outcome: BundleOutcome::Refused { reason },
        })
        .await;
    }

    async fn report(&self, report: BundleReport) {
        if let Err(e) = self.client.report(&report).await {
            tracing::warn!("telling the hub about bundle {}: {e}", report.revision);
        }
    }
}

struct Uploader {
    client: Arc<HubClient>,
    status: Arc<Mutex<HubStatus>>,
    spool: Arc<Mutex<Spool>>,
    interval: Duration,
}

impl Uploader {
    async fn run(self, mut records: mpsc::Receiver<Spooled>) {
        let mut tick = tokio::time::interval(self.interval);
        let mut backoff = Backoff::new();
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                Some(body) = records.recv() => {
                    let mut batch = vec![body];
                    while let Ok(more) = records.try_recv() {
                        batch.push(more);
                    }
                    self.append(batch).await;
                }
                _ = tick.tick() => {}
                _ = async { if let Some(t) = retry_at { tokio::time::sleep_until(t).await } else { std::future::pending::<()>().await } } => {}
            }
            if retry_at.is_some_and(|t| t > tokio::time::Instant::now()) {
                continue;
            }
            match self.drain().await {
                Ok(()) => {
                    backoff.reset();
                    retry_at = None;
                }
                Err(e) => {
                    tracing::debug!("hub upload: {e:#}");
                    set_error(&self.status, Some(format!("{e:#}")));
                    retry_at = Some(tokio::time::Instant::now() + backoff.delay());
                }
            }
        }
    }

    /// Appends and fsyncs, off the runtime's workers; then keeps the newest meter state.
    async fn append(&self, batch: Vec<Spooled>) {
        let spool = self.spool.clone();
        let status = self.status.clone();
        let done = tokio::task::spawn_blocking(move || {
            let Ok(mut sp) = spool.lock() else { return };
            let mut after: std::collections::HashMap<PathBuf, Vec<u8>> =
                std::collections::HashMap::new();
            for item in batch {
                if let Err(e) = sp.append(now_secs(), item.body) {
                    tracing::warn!("spooling a record: {e}");
                }
                if let Some((path, body)) = item.after {
                    after.insert(path, body);
                }
            }
            if let Err(e) = sp.sync() {
                tracing::error!("syncing the spool: {e}");
                return;
            }
            drop(sp);
            for (path, body) in after {
                if let Err(e) = write_private(&path, &body) {
                    tracing::warn!("{e:#}");
                }
            }
            refresh_spool_status(&spool, &status);
        })
        .await;
        if let Err(e) = done {
            tracing::error!("spool task: {e}");
        }
    }

    /// Sends the spool's records until it is empty or the hub fails.
    async fn drain(&self) -> Result<()> {
        loop {
            let spool = self.spool.clone();
            let records = tokio::task::spawn_blocking(move || {
                spool
                    .lock()
                    .map_err(|_| anyhow::anyhow!("spool lock poisoned"))?
                    .peek(UPLOAD_BATCH_RECORDS, UPLOAD_BATCH_BYTES)
                    .map_err(anyhow::Error::from)
            })
            .await??;
            if records.is_empty() {
                return Ok(());
            }
            let sent = records.len() as u64;
            let ack = self.client.upload(&UploadBatch { records }).await?;
            let spool = self.spool.clone();
            tokio::task::spawn_blocking(move || {
                spool
                    .lock()
                    .map_err(|_| anyhow::anyhow!("spool lock poisoned"))?
                    .ack(ack.stored_through)
                    .map_err(anyhow::Error::from)
            })
            .await??;
            refresh_spool_status(&self.spool, &self.status);
            if let Ok(mut s) = self.status.lock() {
                s.uploaded_records += sent;
                s.last_upload = Some(now_secs());
                s.connected = true;
            }
        }
    }
}
