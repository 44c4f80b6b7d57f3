//! Audit log: every policy decision becomes one JSON line (time, app, user, source, request,
//! policy, action, reason, masked evidence). Records travel over a bounded channel to one
//! writer task, so a slow disk never stalls traffic; records that do not fit are counted.

use std::net::IpAddr;
use std::path::PathBuf;
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

/// Handle to the audit writer; cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditSink {
    tx: Option<mpsc::Sender<AuditRecord>>,
    dropped: Arc<AtomicU64>,
}

impl AuditSink {
    /// Open (append, create) `path` and start the writer task. `None` = trace only.
    pub async fn open(path: Option<PathBuf>) -> Result<AuditSink, ProxyError> {
        let dropped = Arc::new(AtomicU64::new(0));
        let Some(path) = path else {
            return Ok(AuditSink { tx: None, dropped });
        };
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
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
            }
        });
        Ok(AuditSink {
            tx: Some(tx),
            dropped,
        })
    }

    /// Queue a record (never blocks).
    pub fn record(&self, rec: AuditRecord) {
        tracing::info!(
            app = %rec.app, src = %rec.src_ip, policy = %rec.policy, action = %rec.action,
            stage = %rec.stage, "{} {}{}: {}", rec.method, rec.host, rec.path, rec.reason
        );
        if let Some(tx) = &self.tx
            && tx.try_send(rec).is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
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
