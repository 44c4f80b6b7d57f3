//! Audit log: every policy decision becomes one JSON line (time, app, user, source, request,
//! policy, action, reason, masked evidence). Records travel over a bounded channel to one
//! writer task, so a slow disk never stalls traffic; records that do not fit are counted
//! (`audit_dropped` in `tollgate status --json`) and a warning is logged when they start.
//!
//! The log holds users, addresses and request paths, so it is created mode 0640 (an
//! existing file with wider permissions is narrowed). It is rotated by size: past
//! [`ROTATE_BYTES`] the file becomes `<name>.1` (the older `.1`.. move up, at most
//! [`ROTATE_KEEP`] are kept) and a new file is started, so its disk use stays bounded.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::dlp::Finding;
use crate::error::ProxyError;

/// One audit record.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub time: String,
    pub app: String,
    pub user: Option<String>,
    pub src_ip: IpAddr,
    pub host: String,
    pub method: String,
    pub path: String,
    /// `access`, `activity`, `upload`, `download`, `tls`, `limit`.
    pub stage: String,
    pub policy: String,
    pub action: String,
    pub reason: String,
    pub evidence: Vec<Finding>,
}

/// Size past which the audit log is rotated.
pub const ROTATE_BYTES: u64 = 64 * 1024 * 1024;
/// Rotated audit logs kept (`<name>.1` .. `<name>.N`).
pub const ROTATE_KEEP: u32 = 4;

/// Opens (append, create 0640) the audit log; narrows a wider mode on an existing file.
async fn open_log(path: &Path) -> std::io::Result<(tokio::fs::File, u64)> {
    use std::os::unix::fs::PermissionsExt;
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .await?;
    let meta = file.metadata().await?;
    let mode = meta.permissions().mode();
    if mode & 0o137 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o640))
            .await?;
    }
    Ok((file, meta.len()))
}

/// `<path>.<n>`.
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Moves `path` to `<path>.1` (and each older one up, the oldest dropped).
async fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    for n in (1..keep).rev() {
        match tokio::fs::rename(rotated(path, n), rotated(path, n + 1)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    tokio::fs::rename(path, rotated(path, 1)).await
}

/// Handle to the audit writer; cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditSink {
    tx: Option<mpsc::Sender<AuditRecord>>,
    dropped: Arc<AtomicU64>,
    /// A copy of every record for the daemon (its activity log and alert policies); records
    /// that do not fit are counted in `tap_dropped`.
    tap: Option<mpsc::Sender<AuditRecord>>,
    tap_dropped: Arc<AtomicU64>,
}

impl AuditSink {
    /// Open (append, create) `path` and start the writer task. `None` = trace only.
    pub async fn open(path: Option<PathBuf>) -> Result<AuditSink, ProxyError> {
        Self::open_rotating(path, ROTATE_BYTES).await
    }

    /// [`AuditSink::open`], rotating past `rotate_bytes`.
    pub async fn open_rotating(
        path: Option<PathBuf>,
        rotate_bytes: u64,
    ) -> Result<AuditSink, ProxyError> {
        let dropped = Arc::new(AtomicU64::new(0));
        let Some(path) = path else {
            return Ok(AuditSink {
                tx: None,
                dropped,
                tap: None,
                tap_dropped: Arc::new(AtomicU64::new(0)),
            });
        };
        let (file, mut size) = open_log(&path)
            .await
            .map_err(|e| ProxyError::io(&path, e))?;
        let (tx, mut rx) = mpsc::channel::<AuditRecord>(8192);
        tokio::spawn(async move {
            let mut w = tokio::io::BufWriter::new(file);
            while let Some(rec) = rx.recv().await {
                let mut batch = vec![rec];
                while let Ok(r) = rx.try_recv() {
                    batch.push(r);
                    if batch.len() >= 256 {
                        break;
                    }
                }
                let mut buf = Vec::new();
                for r in &batch {
                    if serde_json::to_writer(&mut buf, r).is_ok() {
                        buf.push(b'\n');
                    }
                }
                if let Err(e) = w.write_all(&buf).await {
                    tracing::warn!("audit log write failed: {e}");
                }
                if let Err(e) = w.flush().await {
                    tracing::warn!("audit log flush failed: {e}");
                }
                size += buf.len() as u64;
                if size >= rotate_bytes {
                    let reopened = match rotate(&path, ROTATE_KEEP).await {
                        Ok(()) => open_log(&path).await,
                        Err(e) => Err(e),
                    };
                    match reopened {
                        Ok((f, n)) => {
                            w = tokio::io::BufWriter::new(f);
                            size = n;
                            tracing::info!("audit log rotated: {}", path.display());
                        }
                        // Keep appending to the open file; try again after the next batch.
                        Err(e) => tracing::warn!("audit log rotation failed: {e}"),
                    }
                }
            }
        });
        Ok(AuditSink {
            tx: Some(tx),
            dropped,
            tap: None,
            tap_dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Also hands every record to `tap` (never waiting: a full tap drops and counts).
    pub fn with_tap(mut self, tap: Option<mpsc::Sender<AuditRecord>>) -> AuditSink {
        self.tap = tap;
        self
    }

    /// Records the tap could not take.
    pub fn tap_dropped(&self) -> u64 {
        self.tap_dropped.load(Ordering::Relaxed)
    }

    /// Queue a record (never blocks).
    pub fn record(&self, rec: AuditRecord) {
        tracing::info!(
            app = %rec.app, src = %rec.src_ip, policy = %rec.policy, action = %rec.action,
            stage = %rec.stage, "{} {}{}: {}", rec.method, rec.host, rec.path, rec.reason
        );
        if let Some(tap) = &self.tap
            && tap.try_send(rec.clone()).is_err()
        {
            self.tap_dropped.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(tx) = &self.tx
            && tx.try_send(rec).is_err()
        {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Loud but not a flood: at the 1st, 2nd, 4th, 8th... lost record.
            if n.is_power_of_two() {
                tracing::warn!("audit log: {n} record(s) lost so far, the writer fell behind");
            }
        }
    }

    /// Records lost because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory under the system's temp dir (removed at the end of the test).
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!(
                "tg-audit-{tag}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn rec(i: usize) -> AuditRecord {
        AuditRecord {
            time: now_rfc3339(),
            app: "dropbox".into(),
            user: None,
            src_ip: IpAddr::from([10, 0, 0, 2]),
            host: "www.dropbox.com".into(),
            method: "GET".into(),
            path: format!("/file/{i}"),
            stage: "download".into(),
            policy: "p".into(),
            action: "block".into(),
            reason: "test".into(),
            evidence: Vec::new(),
        }
    }

    #[tokio::test]
    async fn created_private_and_rotated_by_size() {
        let dir = TempDir::new("rotate");
        let path = dir.path().join("audit.jsonl");
        let sink = AuditSink::open_rotating(Some(path.clone()), 4096)
            .await
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640, "{mode:o}");
        for i in 0..200 {
            sink.record(rec(i));
            if i % 10 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(rotated(&path, 1).exists(), "rotated once at least");
        assert!(
            !rotated(&path, ROTATE_KEEP + 1).exists(),
            "at most ROTATE_KEEP kept"
        );
        for p in [path.clone(), rotated(&path, 1)] {
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len < 4096 + 256 * 400, "{}: {len}", p.display());
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o640, "{}: {mode:o}", p.display());
        }
        // The newest records are in the live file, or in `.1` when a rotation just happened.
        let newest = std::fs::read_to_string(&path).unwrap()
            + &std::fs::read_to_string(rotated(&path, 1)).unwrap();
        assert!(newest.contains("/file/199"), "{newest}");
    }

    #[tokio::test]
    async fn the_tap_gets_a_copy_and_never_holds_up_the_proxy() {
        let (tx, mut rx) = mpsc::channel(4);
        let sink = AuditSink::open(None).await.unwrap().with_tap(Some(tx));
        for i in 0..10 {
            sink.record(rec(i));
        }
        assert_eq!(sink.tap_dropped(), 6, "a full tap drops and counts");
        for i in 0..4 {
            assert_eq!(rx.recv().await.unwrap().path, format!("/file/{i}"));
        }
    }

    #[tokio::test]
    async fn a_world_readable_log_is_narrowed() {
        let dir = TempDir::new("narrow");
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let _sink = AuditSink::open(Some(path.clone())).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640, "{mode:o}");
    }
}
