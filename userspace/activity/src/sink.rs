//! Alert sinks (`[[alert_sinks]]`): syslog (RFC 5424 over UDP, TCP with RFC 6587 octet
//! counting, or TLS), JSON/CEF lines to a file, and a webhook (HTTP(S) POST of JSON with
//! retries and back-off).
//!
//! Each sink runs in its own task behind a bounded queue. The owner hands records over with
//! `try_send`: a full queue drops the record and counts it (`queue_full`), so a dead or slow
//! SIEM never blocks the caller. Alerts also pass a token bucket per sink (`rate_per_sec`,
//! `burst`; drops counted in `rate_limited`) so that a storm cannot drown the SIEM. A sink
//! never reads from a syslog server; a webhook's answer is read for its status line only,
//! bounded in size and time, so a hostile server (slow, huge answers) costs a timeout.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::alert::Alert;
use crate::engine::AlertEvent;
use crate::format::{self, Format, Record};
use crate::policy::Severity;
use crate::record::Activity;

/// How long a connect or a write may take before the peer counts as dead.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait between two reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Bytes of a webhook's answer read (the status line is all we need).
const MAX_ANSWER: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Syslog,
    File,
    Webhook,
}

/// What a sink is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Send {
    Alerts,
    Activities,
}

/// `[[alert_sinks]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    pub kind: SinkKind,
    /// A name for status output (default: kind and address).
    #[serde(default)]
    pub name: Option<String>,
    /// syslog: `udp://`, `tcp://` or `tls://` host:port; webhook: `https://` (or `http://`) URL.
    #[serde(default)]
    pub address: Option<String>,
    /// file: where the lines go.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// cef | rfc5424 | json (default: cef for syslog, json otherwise).
    #[serde(default)]
    pub format: Option<Format>,
    /// alerts and/or activities (default: alerts); empty for a named sink that only the
    /// policies naming it in `notify` send to.
    #[serde(default = "default_send")]
    pub send: Vec<Send>,
    /// Alerts below this severity are not sent.
    #[serde(default)]
    pub min_severity: Severity,
    /// tls:// and https://: the CA certificates (PEM) to trust instead of the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// tls:// and https://: the name to verify (default: the address's host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Alerts per second (token bucket) ...
    #[serde(default = "default_rate")]
    pub rate_per_sec: u32,
    /// ... with this burst.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Records queued for the sink's task.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// file: size in MiB past which the file is rotated to `<path>.1`.
    #[serde(default = "default_file_max_mb")]
    pub max_mb: u64,
}

fn default_send() -> Vec<Send> {
    vec![Send::Alerts]
}
fn default_rate() -> u32 {
    50
}
fn default_burst() -> u32 {
    200
}
fn default_queue() -> usize {
    4096
}
fn default_file_max_mb() -> u64 {
    64
}

/// A sink that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("alert_sinks[{index}].{key}: {message}")]
pub struct SinkError {
    pub index: usize,
    pub key: &'static str,
    pub message: String,
}

/// A parsed syslog address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// `scheme://host:port[/path]` into (scheme, host, port, path).
pub fn parse_url(s: &str) -> Result<(&str, &str, u16, &str), String> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| format!("{s:?} has no scheme (udp://, tcp://, tls://, https://)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6
            .split_once("]:")
            .ok_or_else(|| format!("{s:?}: expected [address]:port"))?;
        (h, p)
    } else {
        let (h, p) = authority
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected host:port"))?;
        if h.contains(':') {
            return Err(format!(
                "{s:?}: an IPv6 address goes in brackets: [addr]:port"
            ));
        }
        (h, p)
    };
    if host.is_empty() || host.len() > 253 || host.chars().any(|c| c.is_whitespace()) {
        return Err(format!("{s:?}: bad host"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?}: bad port"))?;
    if path.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!("{s:?}: bad path"));
    }
    Ok((scheme, host, port, path))
}

impl SinkConfig {
    /// Checks the keys this kind needs.
    pub fn validate(&self, index: usize) -> Result<(), SinkError> {
        let err = |key, message: String| SinkError {
            index,
            key,
            message,
        };
        match self.kind {
            SinkKind::Syslog => {
                let a = self
                    .address
                    .as_deref()
                    .ok_or_else(|| err("address", "a syslog sink needs an address".into()))?;
                let (scheme, ..) = parse_url(a).map_err(|m| err("address", m))?;
                if !matches!(scheme, "udp" | "tcp" | "tls") {
                    return Err(err(
                        "address",
                        format!("{scheme:?}: syslog goes over udp://, tcp:// or tls://"),
                    ));
                }
            }
            SinkKind::Webhook => {
                let a = self
                    .address
                    .as_deref()
                    .ok_or_else(|| err("address", "a webhook needs an address".into()))?;
                let (scheme, ..) = parse_url(a).map_err(|m| err("address", m))?;
                if !matches!(scheme, "https" | "http") {
                    return Err(err("address", format!("{scheme:?}: a webhook is https://")));
                }
            }
            SinkKind::File => {
                let p = self
                    .path
                    .as_ref()
                    .ok_or_else(|| err("path", "a file sink needs a path".into()))?;
                if !p.is_absolute() {
                    return Err(err("path", "must be an absolute path".into()));
                }
            }
        }
        // A named sink may take nothing but what policies' `notify` sends it.
        if self.send.is_empty() && self.name.is_none() {
            return Err(err(
                "send",
                "sends nothing (alerts, activities); give it a name for policies to notify".into(),
            ));
        }
        if self.rate_per_sec == 0 || self.burst == 0 {
            return Err(err(
                "rate_per_sec",
                "rate_per_sec and burst must be at least 1".into(),
            ));
        }
        if !(1..=1_000_000).contains(&self.queue) {
            return Err(err("queue", "must be 1..=1000000".into()));
        }
        if !(1..=65_536).contains(&self.max_mb) {
            return Err(err("max_mb", "must be 1..=65536".into()));
        }
        Ok(())
    }

    /// The sink's name in status output.
    pub fn label(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        match self.kind {
            SinkKind::File => format!(
                "file:{}",
                self.path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
            _ => self.address.clone().unwrap_or_default(),
        }
    }

    fn format(&self) -> Format {
        self.format.unwrap_or(match self.kind {
            SinkKind::Syslog => Format::Cef,
            _ => Format::Json,
        })
    }
}

/// A sink's counters.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub sent: AtomicU64,
    pub queue_full: AtomicU64,
    pub rate_limited: AtomicU64,
    pub errors: AtomicU64,
    pub connects: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SinkStatsSnapshot {
    pub name: String,
    pub sent: u64,
    pub queue_full: u64,
    pub rate_limited: u64,
    pub errors: u64,
    pub connects: u64,
}

struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Handle {
    name: String,
    alerts: bool,
    activities: bool,
    min_severity: Severity,
    bucket: TokenBucket,
    tx: mpsc::Sender<Record>,
    stats: Arc<SinkStats>,
}

/// The running sinks; dropping it ends their tasks once their queues are written.
pub struct Sinks {
    handles: Vec<Handle>,
}

impl Sinks {
    /// Starts one task per sink (needs a tokio runtime). `hostname` is the syslog HOSTNAME.
    pub fn start(configs: &[SinkConfig], hostname: &str) -> Result<Sinks, SinkError> {
        Self::start_durable(configs, hostname, None)
    }

    /// [`Sinks::start`], with webhooks spooling what they have not delivered in `spool_dir`
    /// (one file per webhook address), so that a restart loses none of it.
    pub fn start_durable(
        configs: &[SinkConfig],
        hostname: &str,
        spool_dir: Option<&std::path::Path>,
    ) -> Result<Sinks, SinkError> {
        let mut handles = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            c.validate(i)?;
            let (tx, rx) = mpsc::channel(c.queue);
            let stats = Arc::new(SinkStats::default());
            let task = Task {
                cfg: c.clone(),
                format: c.format(),
                hostname: hostname.to_string(),
                stats: stats.clone(),
                spool: match (c.kind, spool_dir) {
                    (SinkKind::Webhook, Some(d)) => Some(d.join(spool_name(c))),
                    _ => None,
                },
            };
            let tls = match (c.kind, c.address.as_deref().map(parse_url)) {
                (SinkKind::Syslog, Some(Ok(("tls", ..))))
                | (SinkKind::Webhook, Some(Ok(("https", ..)))) => {
                    Some(tls_config(c).map_err(|m| SinkError {
                        index: i,
                        key: "ca_file",
                        message: m,
                    })?)
                }
                _ => None,
            };
            tokio::spawn(task.run(rx, tls));
            handles.push(Handle {
                name: c.label(),
                alerts: c.send.contains(&Send::Alerts),
                activities: c.send.contains(&Send::Activities),
                min_severity: c.min_severity,
                bucket: TokenBucket {
                    rate: f64::from(c.rate_per_sec),
                    burst: f64::from(c.burst),
                    tokens: f64::from(c.burst),
                    last: Instant::now(),
                },
                tx,
                stats,
            });
        }
        Ok(Sinks { handles })
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Whether any sink wants activities (so the caller can skip building records).
    pub fn wants_activities(&self) -> bool {
        self.handles.iter().any(|h| h.activities)
    }

    /// Hands an alert to every sink that wants it (never blocks).
    pub fn alert(&mut self, ev: &AlertEvent) {
        self.alert_record(&ev.alert, &[]);
    }

    /// [`Sinks::alert`], and to the sinks named in `notify` (a policy's `notify`) whatever
    /// their `send` and `min_severity`; each gets it once. For each sink named: its name and
    /// whether the alert was queued for it (the rate limit and the queue still apply). A name
    /// no sink has is answered false.
    pub fn alert_notifying(&mut self, ev: &AlertEvent, notify: &[String]) -> Vec<(String, bool)> {
        let queued = self.alert_record(&ev.alert, notify);
        notify
            .iter()
            .map(|n| (n.clone(), queued.iter().any(|q| q == n)))
            .collect()
    }

    /// Queues the alert for every sink that wants it or is named in `notify`; the names of
    /// the named sinks it was queued for.
    fn alert_record(&mut self, a: &Alert, notify: &[String]) -> Vec<String> {
        let mut notified = Vec::new();
        for h in &mut self.handles {
            let named = notify.contains(&h.name);
            if !named && (!h.alerts || a.severity < h.min_severity) {
                continue;
            }
            if !h.bucket.take() {
                h.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if h.tx.try_send(Record::Alert(Box::new(a.clone()))).is_err() {
                h.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if named {
                notified.push(h.name.clone());
            }
        }
        notified
    }

    /// Hands an activity to every sink that wants activities (never blocks).
    pub fn activity(&mut self, a: &Activity) {
        for h in &mut self.handles {
            if h.activities
                && h.tx
                    .try_send(Record::Activity(Box::new(a.clone())))
                    .is_err()
            {
                h.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn stats(&self) -> Vec<SinkStatsSnapshot> {
        self.handles
            .iter()
            .map(|h| SinkStatsSnapshot {
                name: h.name.clone(),
                sent: h.stats.sent.load(Ordering::Relaxed),
                queue_full: h.stats.queue_full.load(Ordering::Relaxed),
                rate_limited: h.stats.rate_limited.load(Ordering::Relaxed),
                errors: h.stats.errors.load(Ordering::Relaxed),
                connects: h.stats.connects.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// The rustls client config of a tls:// or https:// sink.
fn tls_config(c: &SinkConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match &c.ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: no certificate", path.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

trait Stream: AsyncRead + AsyncWrite + Unpin + std::marker::Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + std::marker::Send> Stream for T {}

/// The spool file of a webhook: its address with everything but letters and digits as `_`.
fn spool_name(c: &SinkConfig) -> String {
    let a: String = c
        .address
        .as_deref()
        .unwrap_or_default()
        .chars()
        .take(128)
        .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
        .collect();
    format!("webhook-{a}.jsonl")
}

/// A webhook's on-disk queue: JSON bodies appended one a line, and how many of the first
/// lines are delivered (`<file>.done`). Emptied (both files cut) when everything is
/// delivered; a torn last line is dropped when read back.
struct Spool {
    path: PathBuf,
    done_path: PathBuf,
    done: u64,
}

impl Spool {
    fn open(path: PathBuf) -> (Spool, VecDeque<String>) {
        let mut done_path = path.as_os_str().to_owned();
        done_path.push(".done");
        let done_path = PathBuf::from(done_path);
        let done: u64 = std::fs::read_to_string(&done_path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        let pending: VecDeque<String> = complete
            .lines()
            .skip(usize::try_from(done).unwrap_or(usize::MAX))
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
            .map(String::from)
            .collect();
        let mut spool = Spool {
            path,
            done_path,
            done,
        };
        // Rewrite it compact: only what is pending.
        spool.rewrite(&pending);
        (spool, pending)
    }

    fn rewrite(&mut self, pending: &VecDeque<String>) {
        let mut body = String::new();
        for l in pending {
            body.push_str(l);
            body.push('\n');
        }
        let _ = std::fs::write(&self.path, body);
        self.done = 0;
        let _ = std::fs::write(&self.done_path, "0");
    }

    fn append(&mut self, body: &str) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            let _ = f.write_all(format!("{body}\n").as_bytes());
        }
    }

    /// The first pending record is delivered (or given up).
    fn pop(&mut self, pending: &VecDeque<String>) {
        if pending.is_empty() {
            self.rewrite(pending);
        } else {
            self.done += 1;
            let _ = std::fs::write(&self.done_path, self.done.to_string());
        }
    }
}

struct Task {
    cfg: SinkConfig,
    format: Format,
    hostname: String,
    spool: Option<PathBuf>,
    stats: Arc<SinkStats>,
}

impl Task {
    fn line(&self, rec: &Record) -> String {
        match self.cfg.kind {
            SinkKind::Syslog => format::rfc5424(rec, self.format, &self.hostname, Utc::now()),
            _ => match self.format {
                Format::Cef => format::cef(rec),
                Format::Json => format::json(rec),
                Format::Rfc5424 => format::rfc5424(rec, self.format, &self.hostname, Utc::now()),
            },
        }
    }

    async fn run(self, rx: mpsc::Receiver<Record>, tls: Option<Arc<rustls::ClientConfig>>) {
        match self.cfg.kind {
            SinkKind::Syslog => self.run_syslog(rx, tls).await,
            SinkKind::File => self.run_file(rx).await,
            SinkKind::Webhook => self.run_webhook(rx, tls).await,
        }
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) {
        let n = self.stats.errors.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(sink = %self.cfg.label(), "{what}: {e} ({n} errors so far)");
        }
    }

    async fn connect(
        &self,
        transport: Transport,
        host: &str,
        port: u16,
        tls: &Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Box<dyn Stream>, String> {
        let tcp = tokio::time::timeout(IO_TIMEOUT, tokio::net::TcpStream::connect((host, port)))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        if transport != Transport::Tls {
            return Ok(Box::new(tcp));
        }
        let cfg = tls.clone().ok_or("no TLS config")?;
        let name = self.cfg.server_name.as_deref().unwrap_or(host).to_string();
        let server_name = rustls_pki_types::ServerName::try_from(name)
            .map_err(|e| format!("server name: {e}"))?;
        let conn = tokio_rustls::TlsConnector::from(cfg);
        let s = tokio::time::timeout(IO_TIMEOUT, conn.connect(server_name, tcp))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS: {e}"))?;
        Ok(Box::new(s))
    }

    async fn run_syslog(
        self,
        mut rx: mpsc::Receiver<Record>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) {
        let address = self.cfg.address.clone().unwrap_or_default();
        let Ok((scheme, host, port, _)) = parse_url(&address) else {
            return;
        };
        let transport = match scheme {
            "udp" => Transport::Udp,
            "tls" => Transport::Tls,
            _ => Transport::Tcp,
        };
        if transport == Transport::Udp {
            let mut sock: Option<tokio::net::UdpSocket> = None;
            while let Some(rec) = rx.recv().await {
                if sock.is_none() {
                    match udp_socket(host, port).await {
                        Ok(s) => {
                            self.stats.connects.fetch_add(1, Ordering::Relaxed);
                            sock = Some(s);
                        }
                        Err(e) => {
                            self.error("syslog over UDP", e);
                            continue;
                        }
                    }
                }
                let msg = self.line(&rec);
                let sent = match sock.as_ref() {
                    Some(s) => Some(s.send(msg.as_bytes()).await),
                    None => None,
                };
                match sent {
                    Some(Ok(_)) => {
                        self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Err(e)) => {
                        self.error("syslog over UDP", e);
                        sock = None;
                    }
                    None => {}
                }
            }
            return;
        }
        let mut conn: Option<Box<dyn Stream>> = None;
        let mut backoff = Duration::from_millis(250);
        while let Some(rec) = rx.recv().await {
            let frame = format::octet_counted(&self.line(&rec));
            // One record is tried on two connections at most; then it is dropped (counted)
            // so that the queue behind it moves on.
            for _attempt in 0..2 {
                if conn.is_none() {
                    match self.connect(transport, host, port, &tls).await {
                        Ok(c) => {
                            self.stats.connects.fetch_add(1, Ordering::Relaxed);
                            backoff = Duration::from_millis(250);
                            conn = Some(c);
                        }
                        Err(e) => {
                            self.error("syslog connect", e);
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            continue;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                let wrote = tokio::time::timeout(IO_TIMEOUT, async {
                    c.write_all(&frame).await?;
                    // Flush whatever else is queued behind it in the same write.
                    c.flush().await
                })
                .await;
                match wrote {
                    Ok(Ok(())) => {
                        self.stats.sent.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Ok(Err(e)) => self.error("syslog write", e),
                    Err(_) => self.error("syslog write", "timed out (a slow receiver)"),
                }
                conn = None;
            }
        }
        if let Some(mut c) = conn {
            let _ = tokio::time::timeout(IO_TIMEOUT, c.shutdown()).await;
        }
    }

    async fn run_file(self, mut rx: mpsc::Receiver<Record>) {
        let Some(path) = self.cfg.path.clone() else {
            return;
        };
        let max = self.cfg.max_mb.saturating_mul(1 << 20);
        let mut file: Option<(tokio::fs::File, u64)> = None;
        while let Some(rec) = rx.recv().await {
            let mut buf = self.line(&rec).into_bytes();
            buf.push(b'\n');
            let mut n = 1;
            while n < 256 {
                let Ok(more) = rx.try_recv() else { break };
                buf.extend_from_slice(self.line(&more).as_bytes());
                buf.push(b'\n');
                n += 1;
            }
            if file.is_none() {
                match open_append(&path).await {
                    Ok(f) => file = Some(f),
                    Err(e) => {
                        self.error("opening the file", e);
                        continue;
                    }
                }
            }
            let Some((f, size)) = file.as_mut() else {
                continue;
            };
            match f.write_all(&buf).await {
                Ok(()) => {
                    let _ = f.flush().await;
                    self.stats.sent.fetch_add(n, Ordering::Relaxed);
                    *size += buf.len() as u64;
                    if *size >= max {
                        file = None;
                        let mut old = path.as_os_str().to_owned();
                        old.push(".1");
                        if let Err(e) = tokio::fs::rename(&path, &old).await {
                            self.error("rotating the file", e);
                        }
                    }
                }
                Err(e) => {
                    self.error("writing the file", e);
                    file = None;
                }
            }
        }
    }

    async fn run_webhook(
        self,
        mut rx: mpsc::Receiver<Record>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) {
        let address = self.cfg.address.clone().unwrap_or_default();
        let Ok((scheme, host, port, path)) = parse_url(&address) else {
            return;
        };
        let transport = if scheme == "https" {
            Transport::Tls
        } else {
            Transport::Tcp
        };
        let (mut spool, mut pending) = match self.spool.clone() {
            Some(p) => {
                let (s, p) = Spool::open(p);
                (Some(s), p)
            }
            None => (None, VecDeque::new()),
        };
        let max = self.cfg.queue;
        let take = |rec: Record, pending: &mut VecDeque<String>, spool: &mut Option<Spool>| {
            let body = format::json(&rec);
            if pending.len() >= max {
                // Full: the oldest goes (counted), so the newest are the ones kept.
                pending.pop_front();
                self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                if let Some(s) = spool.as_mut() {
                    s.pop(pending);
                }
            }
            if let Some(s) = spool.as_mut() {
                s.append(&body);
            }
            pending.push_back(body);
        };
        loop {
            if pending.is_empty() {
                match rx.recv().await {
                    Some(rec) => take(rec, &mut pending, &mut spool),
                    None => break,
                }
            }
            while let Ok(rec) = rx.try_recv() {
                take(rec, &mut pending, &mut spool);
            }
            let Some(body) = pending.front().cloned() else {
                continue;
            };
            let req = format!(
                "POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tollgate/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                format::VERSION,
                body.len()
            );
            let mut backoff = Duration::from_secs(1);
            // Tries with back-off. Without a spool a record is given up after five (so that a
            // dead endpoint holds the queue for about a minute a record); with one it is
            // retried until delivered (the spool is bounded by `queue`, oldest out first).
            // A 4xx answer other than 408/429 is final: the record is dropped (counted).
            let mut attempt = 0u32;
            loop {
                if attempt > 0 {
                    // With a spool, an owner that went away (a reload, the end) ends the task
                    // at once: what is pending stays on disk for the next one.
                    let until = tokio::time::Instant::now() + backoff;
                    while tokio::time::Instant::now() < until {
                        if spool.is_some() && rx.is_closed() && rx.is_empty() {
                            return;
                        }
                        tokio::time::sleep_until(
                            until.min(tokio::time::Instant::now() + Duration::from_millis(100)),
                        )
                        .await;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    while let Ok(rec) = rx.try_recv() {
                        take(rec, &mut pending, &mut spool);
                    }
                    if pending.front() != Some(&body) {
                        // Pushed out of a full queue while waiting.
                        break;
                    }
                }
                attempt += 1;
                match self.post(transport, host, port, &tls, req.as_bytes()).await {
                    Ok(status) if (200..300).contains(&status) => {
                        self.stats.sent.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Ok(status)
                        if (400..500).contains(&status) && status != 408 && status != 429 =>
                    {
                        self.error("webhook", format!("answered {status}; record dropped"));
                        break;
                    }
                    Ok(status) => self.error("webhook", format!("answered {status}")),
                    Err(e) => self.error("webhook", e),
                }
                if spool.is_none() && attempt >= 5 {
                    break;
                }
            }
            if pending.front() == Some(&body) {
                pending.pop_front();
                if let Some(s) = spool.as_mut() {
                    s.pop(&pending);
                }
            }
        }
    }

    /// One POST; the answer's status code (only the status line is read, bounded).
    async fn post(
        &self,
        transport: Transport,
        host: &str,
        port: u16,
        tls: &Option<Arc<rustls::ClientConfig>>,
        req: &[u8],
    ) -> Result<u16, String> {
        let mut c = self.connect(transport, host, port, tls).await?;
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        tokio::time::timeout(IO_TIMEOUT, async {
            c.write_all(req).await?;
            c.flush().await
        })
        .await
        .map_err(|_| "write timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; MAX_ANSWER];
        let mut got = 0;
        let read = tokio::time::timeout(IO_TIMEOUT * 2, async {
            while got < buf.len() && !buf[..got].contains(&b'\n') {
                let n = c.read(&mut buf[got..]).await?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            Ok::<(), std::io::Error>(())
        })
        .await;
        match read {
            Err(_) => return Err("no answer in time".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(())) => {}
        }
        let line = String::from_utf8_lossy(&buf[..got]);
        let status = line
            .strip_prefix("HTTP/1.")
            .and_then(|r| r.get(2..5))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "not an HTTP answer".to_string())?;
        Ok(status)
    }
}

async fn udp_socket(host: &str, port: u16) -> std::io::Result<tokio::net::UdpSocket> {
    let addr: SocketAddr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    } else {
        "[::]:0".parse().map_err(std::io::Error::other)?
    };
    let s = tokio::net::UdpSocket::bind(bind).await?;
    s.connect(addr).await?;
    Ok(s)
}

async fn open_append(path: &std::path::Path) -> std::io::Result<(tokio::fs::File, u64)> {
    let f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .await?;
    let len = f.metadata().await?.len();
    Ok((f, len))
}
