//! The hub's storage: one schema and one list of migrations for SQLite and PostgreSQL, through
//! sqlx's `any` driver. Queries use `$N` placeholders (both engines read them) and only
//! integers, text and byte strings, so the same SQL runs on both. Times are Unix seconds.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, ConnectOptions, Executor, Row};
use tollgate_sync::bundle::SignedBundle;
use tollgate_sync::protocol::{AlertReport, BundleOutcome, Health, RecordBody, UploadBatch};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database {0}: {1}")]
    Open(String, String),
}

/// Each migration's statements, separated by `;`. `{blob}` and `{serial}` stand for the
/// engine's byte-string type and auto-numbered key.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE hub_keys (
        id BIGINT PRIMARY KEY,
        ca_cert {blob} NOT NULL,
        ca_key TEXT NOT NULL,
        bundle_key {blob} NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE tokens (
        secret_hash TEXT PRIMARY KEY,
        site TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT,
        used_by TEXT
    );
    CREATE TABLE gateways (
        id TEXT PRIMARY KEY,
        site TEXT NOT NULL,
        hostname TEXT NOT NULL,
        version TEXT NOT NULL,
        cert_fingerprint TEXT NOT NULL UNIQUE,
        enrolled_at BIGINT NOT NULL,
        last_seen BIGINT,
        applied_revision BIGINT NOT NULL DEFAULT 0,
        report_revision BIGINT,
        report_outcome TEXT,
        report_reason TEXT,
        health TEXT,
        revoked_at BIGINT
    );
    CREATE TABLE bundles (
        revision BIGINT PRIMARY KEY,
        site TEXT,
        published_at BIGINT NOT NULL,
        policy_toml TEXT NOT NULL,
        body {blob} NOT NULL,
        signature {blob} NOT NULL
    );
    CREATE TABLE uploads (
        gateway_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        recorded_at BIGINT NOT NULL,
        received_at BIGINT NOT NULL,
        PRIMARY KEY (gateway_id, seq)
    );
    CREATE TABLE discovery (
        gateway_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        idx BIGINT NOT NULL,
        interval_start BIGINT NOT NULL,
        interval_end BIGINT NOT NULL,
        app_id TEXT NOT NULL,
        user_name TEXT NOT NULL,
        device TEXT NOT NULL,
        bytes_up BIGINT NOT NULL,
        bytes_down BIGINT NOT NULL,
        flows BIGINT NOT NULL,
        blocked_flows BIGINT NOT NULL,
        PRIMARY KEY (gateway_id, seq, idx)
    );
    CREATE INDEX discovery_app ON discovery (app_id);
    CREATE TABLE unknown_domains (
        gateway_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        idx BIGINT NOT NULL,
        interval_start BIGINT NOT NULL,
        interval_end BIGINT NOT NULL,
        domain TEXT NOT NULL,
        bytes_up BIGINT NOT NULL,
        bytes_down BIGINT NOT NULL,
        flows BIGINT NOT NULL,
        PRIMARY KEY (gateway_id, seq, idx)
    );
    CREATE TABLE audit (
        id {serial},
        at BIGINT NOT NULL,
        source TEXT NOT NULL,
        gateway_id TEXT,
        seq BIGINT,
        kind TEXT NOT NULL,
        app_id TEXT,
        detail TEXT NOT NULL
    );
    CREATE UNIQUE INDEX audit_gateway_seq ON audit (gateway_id, seq)",
    ),
    (
        2,
        "CREATE TABLE activities (
        id {serial},
        source TEXT NOT NULL,
        vendor_id TEXT NOT NULL,
        app_id TEXT NOT NULL,
        activity TEXT NOT NULL,
        time_ms BIGINT NOT NULL,
        received_at BIGINT NOT NULL,
        record TEXT NOT NULL,
        UNIQUE (source, vendor_id)
    );
    CREATE INDEX activities_source_received ON activities (source, received_at);
    CREATE INDEX activities_time ON activities (time_ms);
    CREATE TABLE connector_state (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL DEFAULT '',
        cursor TEXT,
        status TEXT,
        updated_at BIGINT NOT NULL
    )",
    ),
    (
        3,
        "CREATE TABLE gateway_alerts (
        gateway_id TEXT NOT NULL,
        alert_id BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        opened BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        severity TEXT NOT NULL,
        policy TEXT NOT NULL,
        user_name TEXT,
        ip TEXT,
        app_id TEXT,
        reason TEXT NOT NULL,
        status TEXT NOT NULL,
        count BIGINT NOT NULL,
        comment TEXT,
        PRIMARY KEY (gateway_id, alert_id)
    );
    CREATE INDEX gateway_alerts_last_seen ON gateway_alerts (last_seen);
    CREATE TABLE alert_status (
        scope TEXT NOT NULL,
        alert_id BIGINT NOT NULL,
        status TEXT NOT NULL,
        comment TEXT,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (scope, alert_id)
    )",
    ),
    (
        4,
        "CREATE TABLE console_users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE console_sessions (
        token_hash TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        role TEXT NOT NULL,
        csrf TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX discovery_interval_start ON discovery (interval_start)",
    ),
    (
        5,
        // Per-account API tokens for the admin API: only the SHA-256 of the secret is kept.
        "CREATE TABLE api_tokens (
        id {serial},
        token_hash TEXT NOT NULL UNIQUE,
        user_name TEXT NOT NULL,
        label TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT,
        last_used BIGINT,
        revoked_at BIGINT
    )",
    ),
];

/// The scope of the hub's own alerts in `alert_status` (a gateway's are its id).
pub const HUB_SCOPE: &str = "hub";

/// An arbitrary constant: the PostgreSQL advisory lock that serializes migrations when
/// several hubs start at once.
const MIGRATION_LOCK: i64 = 0x7011_6a7e;

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub postgres: bool,
    /// SQLite takes one writer at a time; writers that race for its lock back off in sleeps
    /// of up to 100 ms (its busy handler), which made four concurrent uploads take seconds
    /// each. The hub's own hot writers (ingest, the group writer) queue here instead.
    sqlite_writer: Arc<tokio::sync::Mutex<()>>,
}

/// The hub's keys as stored.
pub struct HubKeys {
    pub ca_cert: Vec<u8>,
    pub ca_key_pem: String,
    pub bundle_key_pkcs8: Vec<u8>,
}

/// A write a gateway's request makes; see [`Db::write_batch`].
pub enum GatewayWrite {
    /// A poll: when it was last seen, what it runs, its health.
    Seen {
        gateway_id: String,
        applied_revision: u64,
        health: Health,
    },
    /// What became of a bundle.
    Report {
        gateway_id: String,
        revision: u64,
        outcome: BundleOutcome,
    },
}

/// A gateway as authenticated by its certificate.
#[derive(Clone)]
pub struct GatewayAuth {
    pub id: String,
    pub site: String,
    pub revoked: bool,
}

#[derive(Debug, Clone)]
pub struct StoredBundle {
    pub revision: i64,
    pub signed: SignedBundle,
}

/// The newest bundle per site and for every site; what held polls compare against.
#[derive(Debug, Default)]
pub struct Latest {
    pub max_revision: i64,
    pub all_sites: Option<Arc<StoredBundle>>,
    pub by_site: HashMap<String, Arc<StoredBundle>>,
}

impl Latest {
    /// The newest bundle that targets `site`: its own or an every-site one.
    pub fn for_site(&self, site: &str) -> Option<&Arc<StoredBundle>> {
        match (self.by_site.get(site), self.all_sites.as_ref()) {
            (Some(a), Some(b)) => Some(if a.revision >= b.revision { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

/// The outcome of a token consumption.
pub enum TokenUse {
    Ok { site: String },
    Unknown,
    Used,
    Expired,
}

impl Db {
    /// The in-process writer's turn on SQLite (nothing to wait for on PostgreSQL).
    pub(crate) async fn sqlite_write(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if self.postgres {
            None
        } else {
            Some(self.sqlite_writer.lock().await)
        }
    }

    pub async fn open(url: &str) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let mut url = url.to_string();
        if !postgres {
            if let Some(path) = url.strip_prefix("sqlite://") {
                let path = path.split('?').next().unwrap_or(path);
                if let Some(parent) = std::path::Path::new(path).parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| DbError::Open(url.clone(), e.to_string()))?;
                }
            }
            if !url.contains('?') {
                url.push_str("?mode=rwc");
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if postgres { 16 } else { 8 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if !postgres {
                        // WAL lets the CLI read and write while the hub runs; the busy timeout
                        // makes one wait for the other's write instead of failing.
                        conn.execute(
                            "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=10000; \
                             PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            // Statements (and slow ones, with their thousands of placeholders) are not logged;
            // the hub logs what failed.
            .connect_with(
                url.parse::<sqlx::any::AnyConnectOptions>()
                    .map_err(|e| DbError::Open(redact(&url), e.to_string()))?
                    .disable_statement_logging(),
            )
            .await
            .map_err(|e| DbError::Open(redact(&url), e.to_string()))?;
        let db = Db {
            pool,
            postgres,
            sqlite_writer: Arc::new(tokio::sync::Mutex::new(())),
        };
        db.migrate().await?;
        Ok(db)
    }

    fn dialect(&self, sql: &str) -> String {
        if self.postgres {
            sql.replace("{blob}", "BYTEA")
                .replace("{serial}", "BIGSERIAL PRIMARY KEY")
        } else {
            sql.replace("{blob}", "BLOB")
                .replace("{serial}", "INTEGER PRIMARY KEY AUTOINCREMENT")
        }
    }

    async fn migrate(&self) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        if self.postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await?;
        let applied: Vec<i64> = sqlx::query("SELECT version FROM schema_migrations")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()?;
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            for statement in self.dialect(sql).split(';') {
                if !statement.trim().is_empty() {
                    tx.execute(statement).await?;
                }
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(now())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn load_keys(&self) -> Result<Option<HubKeys>, DbError> {
        let row = sqlx::query("SELECT ca_cert, ca_key, bundle_key FROM hub_keys WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            None => None,
            Some(r) => Some(HubKeys {
                ca_cert: r.try_get(0)?,
                ca_key_pem: r.try_get(1)?,
                bundle_key_pkcs8: r.try_get(2)?,
            }),
        })
    }

    /// Stores `keys` unless another hub process stored its own first; returns the keys in
    /// force either way.
    pub async fn store_keys(&self, keys: &HubKeys) -> Result<HubKeys, DbError> {
        sqlx::query(
            "INSERT INTO hub_keys (id, ca_cert, ca_key, bundle_key, created_at) VALUES (1, $1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(keys.ca_cert.clone())
        .bind(keys.ca_key_pem.clone())
        .bind(keys.bundle_key_pkcs8.clone())
        .bind(now())
        .execute(&self.pool)
        .await?;
        self.load_keys()
            .await?
            .ok_or_else(|| DbError::Open("hub_keys".into(), "keys vanished after insert".into()))
    }

    pub async fn audit_hub(
        &self,
        kind: &str,
        gateway_id: Option<&str>,
        detail: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO audit (at, source, gateway_id, seq, kind, app_id, detail) VALUES ($1, 'hub', $2, NULL, $3, NULL, $4)",
        )
        .bind(now())
        .bind(gateway_id.map(str::to_string))
        .bind(kind.to_string())
        .bind(detail.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn create_token(
        &self,
        secret_hash: &str,
        site: &str,
        expires_at: i64,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO tokens (secret_hash, site, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(secret_hash.to_string())
        .bind(site.to_string())
        .bind(now())
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        self.audit_hub(
            "token_created",
            None,
            &format!("enrollment token for site {site}, expires at {expires_at}"),
        )
        .await
    }

    /// Consumes a token and records the gateway it enrolled, in one transaction.
    pub async fn enroll(
        &self,
        secret_hash: &str,
        gateway_id: &str,
        hostname: &str,
        version: &str,
        fingerprint: &str,
    ) -> Result<TokenUse, DbError> {
        let now = now();
        let mut tx = self.pool.begin().await?;
        let row =
            sqlx::query("SELECT site, expires_at, used_at FROM tokens WHERE secret_hash = $1")
                .bind(secret_hash.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(row) = row else {
            return Ok(TokenUse::Unknown);
        };
        let site: String = row.try_get(0)?;
        let expires_at: i64 = row.try_get(1)?;
        let used_at: Option<i64> = row.try_get(2)?;
        if used_at.is_some() {
            return Ok(TokenUse::Used);
        }
        if expires_at <= now {
            return Ok(TokenUse::Expired);
        }
        let done = sqlx::query(
            "UPDATE tokens SET used_at = $1, used_by = $2 WHERE secret_hash = $3 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(gateway_id.to_string())
        .bind(secret_hash.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(TokenUse::Used);
        }
        sqlx::query(
            "INSERT INTO gateways (id, site, hostname, version, cert_fingerprint, enrolled_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(gateway_id.to_string())
        .bind(site.clone())
        .bind(hostname.to_string())
        .bind(version.to_string())
        .bind(fingerprint.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO audit (at, source, gateway_id, seq, kind, app_id, detail) VALUES ($1, 'hub', $2, NULL, 'gateway_enrolled', NULL, $3)",
        )
        .bind(now)
        .bind(gateway_id.to_string())
        .bind(format!("site {site}, host {hostname}, version {version}"))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(TokenUse::Ok { site })
    }

    pub async fn gateway_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<GatewayAuth>, DbError> {
        let row =
            sqlx::query("SELECT id, site, revoked_at FROM gateways WHERE cert_fingerprint = $1")
                .bind(fingerprint.to_string())
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            None => None,
            Some(r) => Some(GatewayAuth {
                id: r.try_get(0)?,
                site: r.try_get(1)?,
                revoked: r.try_get::<Option<i64>, _>(2)?.is_some(),
            }),
        })
    }

    pub async fn revoke(&self, gateway_id: &str) -> Result<bool, DbError> {
        let done =
            sqlx::query("UPDATE gateways SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now())
                .bind(gateway_id.to_string())
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 1 {
            self.audit_hub("gateway_revoked", Some(gateway_id), "revoked by the admin")
                .await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Applies what gateway requests write, in one transaction: a group commit, so that
    /// ten thousand gateways acknowledging one bundle cost a few commits, not ten thousand.
    /// Of several `Seen` for one gateway only the last is written.
    pub async fn write_batch(&self, writes: &[GatewayWrite]) -> Result<(), DbError> {
        let mut last_seen: HashMap<&str, usize> = HashMap::new();
        for (i, w) in writes.iter().enumerate() {
            if let GatewayWrite::Seen { gateway_id, .. } = w {
                last_seen.insert(gateway_id.as_str(), i);
            }
        }
        let now = now();
        let _writer = self.sqlite_write().await;
        let mut tx = self.pool.begin().await?;
        for (i, w) in writes.iter().enumerate() {
            match w {
                GatewayWrite::Seen {
                    gateway_id,
                    applied_revision,
                    health,
                } => {
                    if last_seen.get(gateway_id.as_str()) != Some(&i) {
                        continue;
                    }
                    let health_json =
                        serde_json::to_string(&HealthView::from(health)).unwrap_or_default();
                    sqlx::query(
                        "UPDATE gateways SET last_seen = $1, applied_revision = $2, health = $3, \
                         hostname = CASE WHEN $4 = '' THEN hostname ELSE $4 END, \
                         version = CASE WHEN $5 = '' THEN version ELSE $5 END WHERE id = $6",
                    )
                    .bind(now)
                    .bind(int(*applied_revision))
                    .bind(health_json)
                    .bind(clip(&health.hostname, 255))
                    .bind(clip(&health.agent_version, 64))
                    .bind(gateway_id.clone())
                    .execute(&mut *tx)
                    .await?;
                }
                GatewayWrite::Report {
                    gateway_id,
                    revision,
                    outcome,
                } => {
                    let (name, reason) = match outcome {
                        BundleOutcome::Applied => ("applied", None),
                        BundleOutcome::Refused { reason } => ("refused", Some(clip(reason, 1024))),
                    };
                    sqlx::query(
                        "UPDATE gateways SET last_seen = $1, report_revision = $2, report_outcome = $3, report_reason = $4, \
                         applied_revision = CASE WHEN $3 = 'applied' AND $2 > applied_revision THEN $2 ELSE applied_revision END \
                         WHERE id = $5",
                    )
                    .bind(now)
                    .bind(int(*revision))
                    .bind(name.to_string())
                    .bind(reason.clone())
                    .bind(gateway_id.clone())
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO audit (at, source, gateway_id, seq, kind, app_id, detail) VALUES ($1, 'hub', $2, NULL, $3, NULL, $4)",
                    )
                    .bind(now)
                    .bind(gateway_id.clone())
                    .bind(format!("bundle_{name}"))
                    .bind(match reason {
                        Some(r) => format!("revision {revision}: {r}"),
                        None => format!("revision {revision}"),
                    })
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The ids of every revoked gateway (the server keeps them in memory, refreshed).
    /// The fleet for the metrics: (enrolled and not revoked, revoked, not revoked and seen
    /// at or after `seen_since`).
    pub async fn fleet_counts(&self, seen_since: i64) -> Result<(i64, i64, i64), DbError> {
        let r = sqlx::query(
            "SELECT COALESCE(SUM(CASE WHEN revoked_at IS NULL THEN 1 ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN revoked_at IS NOT NULL THEN 1 ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN revoked_at IS NULL AND last_seen >= $1 THEN 1 ELSE 0 END), 0) \
             FROM gateways",
        )
        .bind(seen_since)
        .fetch_one(&self.pool)
        .await?;
        Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
    }

    pub async fn revoked_ids(&self) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query("SELECT id FROM gateways WHERE revoked_at IS NOT NULL")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(DbError::from))
            .collect()
    }

    /// Stores a batch in one transaction; each `(gateway, seq)` once. Returns (new, duplicates).
    ///
    /// Rows go in as multi-row `INSERT`s (a few thousand values per statement): one statement
    /// per row made ingest cost a round trip per row, which capped it near 15k records/s on
    /// SQLite and 8k on PostgreSQL. The `uploads` insert returns the sequence numbers it
    /// really stored; only those records' rows follow, so a replayed batch adds nothing.
    pub async fn ingest(
        &self,
        gateway_id: &str,
        batch: &UploadBatch,
    ) -> Result<(u32, u32), DbError> {
        let received = now();
        let gw = gateway_id.to_string();
        let _writer = self.sqlite_write().await;
        let mut tx = self.pool.begin().await?;
        let upload_rows: Vec<Vec<Val>> = batch
            .records
            .iter()
            .map(|r| {
                vec![
                    Val::Text(gw.clone()),
                    Val::Int(int(r.seq)),
                    Val::Int(r.recorded_at),
                    Val::Int(received),
                ]
            })
            .collect();
        let stored = insert_rows(
            &mut tx,
            self.postgres,
            "INSERT INTO uploads (gateway_id, seq, recorded_at, received_at) VALUES ",
            4,
            upload_rows,
            " ON CONFLICT DO NOTHING RETURNING seq",
        )
        .await?;
        let mut new_seqs = std::collections::HashSet::with_capacity(stored.len());
        for row in &stored {
            new_seqs.insert(row.try_get::<i64, _>(0)?);
        }
        let accepted = u32::try_from(new_seqs.len()).unwrap_or(u32::MAX);
        let duplicates =
            u32::try_from(batch.records.len().saturating_sub(new_seqs.len())).unwrap_or(u32::MAX);

        // A batch may name one seq twice: only its first record is stored.
        let mut fresh = Vec::with_capacity(new_seqs.len());
        for record in &batch.records {
            if new_seqs.remove(&int(record.seq)) {
                fresh.push(record);
            }
        }
        let mut apps = Vec::new();
        let mut domains = Vec::new();
        let mut audits = Vec::new();
        // The newest report of each alert in the batch (one row may be changed once per
        // statement on PostgreSQL).
        let mut alerts: std::collections::BTreeMap<u64, (i64, &AlertReport)> =
            std::collections::BTreeMap::new();
        let mut activities = Vec::new();
        for record in fresh {
            let seq = int(record.seq);
            match &record.body {
                RecordBody::Discovery(d) => {
                    for (idx, app) in d.apps.iter().enumerate() {
                        apps.push(vec![
                            Val::Text(gw.clone()),
                            Val::Int(seq),
                            Val::Int(int(idx as u64)),
                            Val::Int(d.start),
                            Val::Int(d.end),
                            Val::Text(clip(&app.app_id, 255)),
                            Val::Text(clip(&app.user, 255)),
                            Val::Text(clip(&app.device, 255)),
                            Val::Int(int(app.bytes_up)),
                            Val::Int(int(app.bytes_down)),
                            Val::Int(int(app.flows)),
                            Val::Int(int(app.blocked_flows)),
                        ]);
                    }
                    for (idx, dom) in d.unknown_domains.iter().enumerate() {
                        domains.push(vec![
                            Val::Text(gw.clone()),
                            Val::Int(seq),
                            Val::Int(int(idx as u64)),
                            Val::Int(d.start),
                            Val::Int(d.end),
                            Val::Text(clip(&dom.domain, 255)),
                            Val::Int(int(dom.bytes_up)),
                            Val::Int(int(dom.bytes_down)),
                            Val::Int(int(dom.flows)),
                        ]);
                    }
                }
                RecordBody::Audit(a) => audits.push(vec![
                    Val::Int(record.recorded_at),
                    Val::Text("gateway".into()),
                    Val::Text(gw.clone()),
                    Val::Int(seq),
                    Val::Text(clip(&a.kind, 64)),
                    Val::MaybeText(a.app_id.as_deref().map(|s| clip(s, 255))),
                    Val::Text(clip(&a.detail, 4096)),
                ]),
                RecordBody::Alert(a) => {
                    alerts.insert(a.alert_id, (seq, a));
                }
                RecordBody::Activities(c) => {
                    // Under the gateway's own name: a gateway cannot write into another
                    // source (a hub connector's, or another gateway's).
                    let source = clip(&format!("{gw}/{}", c.connector), 255);
                    for text in &c.records {
                        let Ok(mut a) = serde_json::from_str::<tollgate_activity::Activity>(text)
                        else {
                            continue;
                        };
                        let Some(vendor_id) = a.vendor_id.clone() else {
                            continue;
                        };
                        a.connector = Some(source.clone());
                        a.gateway = Some(gw.clone());
                        let Ok(json) = serde_json::to_string(&a) else {
                            continue;
                        };
                        activities.push(vec![
                            Val::Text(source.clone()),
                            Val::Text(clip(&vendor_id, 255)),
                            Val::Text(clip(&a.app, 255)),
                            Val::Text(a.activity.as_str().to_string()),
                            Val::Int(a.time.timestamp_millis()),
                            Val::Int(now()),
                            Val::Text(json),
                        ]);
                    }
                }
            }
        }
        let alert_rows: Vec<Vec<Val>> = alerts
            .into_values()
            .map(|(seq, a)| {
                vec![
                    Val::Text(gw.clone()),
                    Val::Int(int(a.alert_id)),
                    Val::Int(seq),
                    Val::Int(a.opened),
                    Val::Int(a.last_seen),
                    Val::Text(clip(&a.severity, 16)),
                    Val::Text(clip(&a.policy, 255)),
                    Val::MaybeText(a.user.as_deref().map(|s| clip(s, 255))),
                    Val::MaybeText(a.ip.as_deref().map(|s| clip(s, 64))),
                    Val::MaybeText(a.app_id.as_deref().map(|s| clip(s, 255))),
                    Val::Text(clip(&a.reason, 4096)),
                    Val::Text(clip(&a.status, 16)),
                    Val::Int(int(a.count)),
                    Val::MaybeText(a.comment.as_deref().map(|s| clip(s, 1024))),
                ]
            })
            .collect();
        insert_rows(
            &mut tx,
            self.postgres,
            "INSERT INTO activities (source, vendor_id, app_id, activity, time_ms, received_at, record) VALUES ",
            7,
            activities,
            " ON CONFLICT DO NOTHING",
        )
        .await?;
        insert_rows(
            &mut tx,
            self.postgres,
            "INSERT INTO gateway_alerts (gateway_id, alert_id, seq, opened, last_seen, severity, policy, user_name, ip, app_id, reason, status, count, comment) VALUES ",
            14,
            alert_rows,
            " ON CONFLICT (gateway_id, alert_id) DO UPDATE SET seq = excluded.seq, \
              last_seen = excluded.last_seen, severity = excluded.severity, \
              reason = excluded.reason, status = excluded.status, count = excluded.count, \
              comment = excluded.comment WHERE excluded.seq > gateway_alerts.seq",
        )
        .await?;
        insert_rows(
            &mut tx,
            self.postgres,
            "INSERT INTO discovery (gateway_id, seq, idx, interval_start, interval_end, app_id, user_name, device, bytes_up, bytes_down, flows, blocked_flows) VALUES ",
            12,
            apps,
            " ON CONFLICT DO NOTHING",
        )
        .await?;
        insert_rows(
            &mut tx,
            self.postgres,
            "INSERT INTO unknown_domains (gateway_id, seq, idx, interval_start, interval_end, domain, bytes_up, bytes_down, flows) VALUES ",
            9,
            domains,
            " ON CONFLICT DO NOTHING",
        )
        .await?;
        insert_rows(
            &mut tx,
            self.postgres,
            "INSERT INTO audit (at, source, gateway_id, seq, kind, app_id, detail) VALUES ",
            7,
            audits,
            " ON CONFLICT DO NOTHING",
        )
        .await?;
        tx.commit().await?;
        Ok((accepted, duplicates))
    }

    /// Signs and stores a bundle under the next fleet-wide revision. Two hubs publishing at
    /// once cannot take the same revision (it is the primary key); the loser tries again.
    pub async fn publish(
        &self,
        signer: &tollgate_sync::bundle::BundleSigner,
        site: Option<&str>,
        policy_toml: &str,
    ) -> Result<i64, PublishError> {
        let mut last = None;
        for attempt in 0..10u64 {
            match self.try_publish(signer, site, policy_toml).await {
                Ok(rev) => return Ok(rev),
                Err(PublishError::Db(e)) => last = Some(e),
                Err(e) => return Err(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50 * (attempt + 1))).await;
        }
        Err(PublishError::Db(last.unwrap_or_else(|| {
            DbError::Open("bundles".into(), "publish kept conflicting".into())
        })))
    }

    async fn try_publish(
        &self,
        signer: &tollgate_sync::bundle::BundleSigner,
        site: Option<&str>,
        policy_toml: &str,
    ) -> Result<i64, PublishError> {
        let now = now();
        let _writer = self.sqlite_write().await;
        let mut tx = self.pool.begin().await.map_err(DbError::from)?;
        if !self.postgres {
            // Take SQLite's write lock first (waiting in the busy handler): a transaction that
            // read first and then writes fails at once if a hub committed in between.
            sqlx::query("UPDATE bundles SET revision = revision WHERE 0")
                .execute(&mut *tx)
                .await
                .map_err(DbError::from)?;
        }
        let max: i64 = sqlx::query("SELECT COALESCE(MAX(revision), 0) FROM bundles")
            .fetch_one(&mut *tx)
            .await
            .map_err(DbError::from)?
            .try_get(0)
            .map_err(DbError::from)?;
        let revision = max.saturating_add(1);
        let bundle = tollgate_sync::bundle::Bundle {
            schema: tollgate_sync::bundle::BUNDLE_SCHEMA,
            revision: u64::try_from(revision).unwrap_or(0),
            site: site.map(str::to_string),
            published_at: now,
            policy_toml: policy_toml.to_string(),
        };
        let signed = signer.sign(&bundle).map_err(PublishError::Sign)?;
        sqlx::query(
            "INSERT INTO bundles (revision, site, published_at, policy_toml, body, signature) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(revision)
        .bind(site.map(str::to_string))
        .bind(now)
        .bind(policy_toml.to_string())
        .bind(signed.body.clone())
        .bind(signed.signature.clone())
        .execute(&mut *tx)
        .await
        .map_err(DbError::from)?;
        sqlx::query(
            "INSERT INTO audit (at, source, gateway_id, seq, kind, app_id, detail) VALUES ($1, 'hub', NULL, NULL, 'bundle_published', NULL, $2)",
        )
        .bind(now)
        .bind(format!(
            "revision {revision} for {}",
            site.map_or("every site".to_string(), |s| format!("site {s}"))
        ))
        .execute(&mut *tx)
        .await
        .map_err(DbError::from)?;
        tx.commit().await.map_err(DbError::from)?;
        Ok(revision)
    }

    pub async fn max_revision(&self) -> Result<i64, DbError> {
        Ok(
            sqlx::query("SELECT COALESCE(MAX(revision), 0) FROM bundles")
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?,
        )
    }

    /// The newest bundle per site and for every site.
    pub async fn latest(&self) -> Result<Latest, DbError> {
        let rows = sqlx::query(
            "SELECT b.revision, b.site, b.body, b.signature FROM bundles b \
             JOIN (SELECT COALESCE(site, '') AS s, MAX(revision) AS r FROM bundles GROUP BY COALESCE(site, '')) m \
             ON b.revision = m.r",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut latest = Latest::default();
        for r in rows {
            let revision: i64 = r.try_get(0)?;
            let site: Option<String> = r.try_get(1)?;
            let stored = Arc::new(StoredBundle {
                revision,
                signed: SignedBundle {
                    body: r.try_get(2)?,
                    signature: r.try_get(3)?,
                },
            });
            latest.max_revision = latest.max_revision.max(revision);
            match site {
                None => latest.all_sites = Some(stored),
                Some(s) => {
                    latest.by_site.insert(s, stored);
                }
            }
        }
        Ok(latest)
    }

    pub async fn gateways(&self) -> Result<Vec<GatewayView>, DbError> {
        let rows = sqlx::query(
            "SELECT id, site, hostname, version, enrolled_at, last_seen, applied_revision, report_revision, \
             report_outcome, report_reason, health, revoked_at FROM gateways ORDER BY site, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(GatewayView::from_row).collect()
    }

    pub async fn bundles(&self) -> Result<Vec<BundleView>, DbError> {
        let rows = sqlx::query(
            "SELECT revision, site, published_at, policy_toml FROM bundles ORDER BY revision DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let toml: String = r.try_get(3)?;
                Ok(BundleView {
                    revision: r.try_get(0)?,
                    site: r.try_get(1)?,
                    published_at: r.try_get(2)?,
                    policy_bytes: toml.len(),
                })
            })
            .collect()
    }

    pub async fn audit(&self, limit: i64) -> Result<Vec<AuditView>, DbError> {
        let rows = sqlx::query(
            "SELECT at, source, gateway_id, kind, app_id, detail FROM audit ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditView {
                    at: r.try_get(0)?,
                    source: r.try_get(1)?,
                    gateway_id: r.try_get(2)?,
                    kind: r.try_get(3)?,
                    app_id: r.try_get(4)?,
                    detail: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Fleet-wide discovered apps, each with its per-gateway breakdown, biggest first.
    pub async fn apps(
        &self,
        catalog: Option<&tollgate_catalog::Catalog>,
    ) -> Result<Vec<AppView>, DbError> {
        let rows = sqlx::query(
            "SELECT app_id, gateway_id, CAST(SUM(bytes_up) AS BIGINT), CAST(SUM(bytes_down) AS BIGINT), \
             CAST(SUM(flows) AS BIGINT), CAST(SUM(blocked_flows) AS BIGINT), COUNT(DISTINCT user_name) \
             FROM discovery GROUP BY app_id, gateway_id ORDER BY app_id, gateway_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let users =
            sqlx::query("SELECT app_id, COUNT(DISTINCT user_name) FROM discovery GROUP BY app_id")
                .fetch_all(&self.pool)
                .await?;
        let mut user_counts = HashMap::new();
        for r in &users {
            user_counts.insert(r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?);
        }
        let mut apps: Vec<AppView> = Vec::new();
        for r in &rows {
            let app_id: String = r.try_get(0)?;
            let per = AppGateway {
                gateway_id: r.try_get(1)?,
                bytes_up: r.try_get(2)?,
                bytes_down: r.try_get(3)?,
                flows: r.try_get(4)?,
                blocked_flows: r.try_get(5)?,
                users: r.try_get(6)?,
            };
            if apps.last().is_none_or(|a| a.app_id != app_id) {
                let app = catalog.and_then(|c| c.app(&app_id));
                apps.push(AppView {
                    name: app.map(|a| a.name.clone()),
                    category: app.map(|a| a.category.clone()),
                    risk_score: catalog.and_then(|c| c.risk_score(&app_id)),
                    users: user_counts.get(&app_id).copied().unwrap_or(0),
                    app_id,
                    ..AppView::default()
                });
            }
            if let Some(a) = apps.last_mut() {
                a.bytes_up = a.bytes_up.saturating_add(per.bytes_up);
                a.bytes_down = a.bytes_down.saturating_add(per.bytes_down);
                a.flows = a.flows.saturating_add(per.flows);
                a.blocked_flows = a.blocked_flows.saturating_add(per.blocked_flows);
                a.gateways += 1;
                a.per_gateway.push(per);
            }
        }
        apps.sort_by(|a, b| {
            (b.bytes_up.saturating_add(b.bytes_down))
                .cmp(&a.bytes_up.saturating_add(a.bytes_down))
                .then_with(|| a.app_id.cmp(&b.app_id))
        });
        Ok(apps)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("signing the bundle: {0}")]
    Sign(tollgate_sync::bundle::BundleError),
}

/// A database URL for messages: the password, if any, is left out.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A value bound into a multi-row insert.
enum Val {
    Int(i64),
    Text(String),
    MaybeText(Option<String>),
}

/// Most values one statement carries: under SQLite's limit (32,766 since 3.32) and
/// PostgreSQL's (65,535), and large enough that a round trip carries hundreds of rows.
const VALUES_PER_STATEMENT: usize = 4096;

/// Inserts rows of `cols` values each as `head (..),(..) tail` statements, in chunks, and
/// returns what the statements return (for a `RETURNING` tail).
///
/// Placeholders are `?` on SQLite and `$N` on PostgreSQL: sqlx binds SQLite's `$N` by looking
/// each name up among all of the statement's parameters, which is quadratic and made a
/// 4,000-value statement cost ~200 ms (`sqlite3_bind_parameter_name` was 84% of the hub's
/// profile).
async fn insert_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    postgres: bool,
    head: &str,
    cols: usize,
    rows: Vec<Vec<Val>>,
    tail: &str,
) -> Result<Vec<AnyRow>, DbError> {
    let per_chunk = (VALUES_PER_STATEMENT / cols.max(1)).max(1);
    let mut out = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<Val>> = rows.by_ref().take(per_chunk).collect();
        let mut sql = String::with_capacity(head.len() + tail.len() + chunk.len() * cols * 6);
        sql.push_str(head);
        let mut n = 0usize;
        for (i, row) in chunk.iter().enumerate() {
            debug_assert_eq!(row.len(), cols);
            sql.push_str(if i == 0 { "(" } else { ",(" });
            for j in 0..row.len() {
                n += 1;
                if j > 0 {
                    sql.push(',');
                }
                if postgres {
                    sql.push('$');
                    sql.push_str(&n.to_string());
                } else {
                    sql.push('?');
                }
            }
            sql.push(')');
        }
        sql.push_str(tail);
        let mut query = sqlx::query(&sql);
        for value in chunk.into_iter().flatten() {
            query = match value {
                Val::Int(v) => query.bind(v),
                Val::Text(v) => query.bind(v),
                Val::MaybeText(v) => query.bind(v),
            };
        }
        out.extend(query.fetch_all(&mut **tx).await?);
    }
    Ok(out)
}

pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s[..cut].to_string()
}

#[derive(Debug, Serialize, serde::Deserialize, Default)]
pub struct HealthView {
    pub agent_version: String,
    pub hostname: String,
    pub uptime_secs: u64,
    pub flows_active: u64,
    pub ring_drops: u64,
    pub spool_records: u64,
    pub spool_bytes: u64,
    pub spool_dropped: u64,
    pub last_error: Option<String>,
}

impl From<&Health> for HealthView {
    fn from(h: &Health) -> Self {
        HealthView {
            agent_version: clip(&h.agent_version, 64),
            hostname: clip(&h.hostname, 255),
            uptime_secs: h.uptime_secs,
            flows_active: h.flows_active,
            ring_drops: h.ring_drops,
            spool_records: h.spool_records,
            spool_bytes: h.spool_bytes,
            spool_dropped: h.spool_dropped,
            last_error: h.last_error.as_deref().map(|e| clip(e, 1024)),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct GatewayView {
    pub id: String,
    pub site: String,
    pub hostname: String,
    pub version: String,
    pub enrolled_at: i64,
    pub last_seen: Option<i64>,
    pub applied_revision: i64,
    pub report_revision: Option<i64>,
    pub report_outcome: Option<String>,
    pub report_reason: Option<String>,
    pub health: Option<HealthView>,
    pub revoked_at: Option<i64>,
}

impl GatewayView {
    fn from_row(r: &AnyRow) -> Result<Self, DbError> {
        let health: Option<String> = r.try_get(10)?;
        Ok(GatewayView {
            id: r.try_get(0)?,
            site: r.try_get(1)?,
            hostname: r.try_get(2)?,
            version: r.try_get(3)?,
            enrolled_at: r.try_get(4)?,
            last_seen: r.try_get(5)?,
            applied_revision: r.try_get(6)?,
            report_revision: r.try_get(7)?,
            report_outcome: r.try_get(8)?,
            report_reason: r.try_get(9)?,
            health: health.and_then(|h| serde_json::from_str(&h).ok()),
            revoked_at: r.try_get(11)?,
        })
    }
}

#[derive(Debug, Serialize)]
pub struct BundleView {
    pub revision: i64,
    pub site: Option<String>,
    pub published_at: i64,
    pub policy_bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct AuditView {
    pub at: i64,
    pub source: String,
    pub gateway_id: Option<String>,
    pub kind: String,
    pub app_id: Option<String>,
    pub detail: String,
}

#[derive(Debug, Serialize, Default)]
pub struct AppView {
    pub app_id: String,
    pub name: Option<String>,
    pub category: Option<String>,
    pub risk_score: Option<f64>,
    pub bytes_up: i64,
    pub bytes_down: i64,
    pub flows: i64,
    pub blocked_flows: i64,
    pub users: i64,
    pub gateways: i64,
    pub per_gateway: Vec<AppGateway>,
}

#[derive(Debug, Serialize, Default)]
pub struct AppGateway {
    pub gateway_id: String,
    pub bytes_up: i64,
    pub bytes_down: i64,
    pub flows: i64,
    pub blocked_flows: i64,
    pub users: i64,
}

/// One stored connector's state, as `tollgate-hub connectors status` shows it.
#[derive(Debug, Clone)]
pub struct ConnectorRow {
    pub name: String,
    pub kind: String,
    pub status: Option<String>,
}

/// The connectors' storage: activity records, unique on `(source, vendor_id)`, and each
/// connector's cursor, written in the same transaction as the records read before it.
impl Db {
    pub async fn connector_cursor(&self, name: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query("SELECT cursor FROM connector_state WHERE name = $1")
            .bind(name.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get(0)?,
            None => None,
        })
    }

    /// Stores the records not stored yet and the cursor, in one transaction; returns how
    /// many records were new.
    pub async fn connector_commit(
        &self,
        name: &str,
        records: &[tollgate_activity::Activity],
        cursor: &str,
    ) -> Result<usize, DbError> {
        let received = now();
        let rows: Vec<Vec<Val>> = records
            .iter()
            .filter_map(|r| {
                let vendor_id = r.vendor_id.clone()?;
                let json = serde_json::to_string(r).ok()?;
                Some(vec![
                    Val::Text(name.to_string()),
                    Val::Text(vendor_id),
                    Val::Text(clip(&r.app, 255)),
                    Val::Text(r.activity.as_str().to_string()),
                    Val::Int(r.time.timestamp_millis()),
                    Val::Int(received),
                    Val::Text(json),
                ])
            })
            .collect();
        let _writer = self.sqlite_write().await;
        let mut tx = self.pool.begin().await?;
        let inserted = insert_rows(
            &mut tx,
            self.postgres,
            "INSERT INTO activities (source, vendor_id, app_id, activity, time_ms, received_at, record) VALUES ",
            7,
            rows,
            " ON CONFLICT DO NOTHING RETURNING id",
        )
        .await?;
        sqlx::query(
            "INSERT INTO connector_state (name, cursor, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at",
        )
        .bind(name.to_string())
        .bind(cursor.to_string())
        .bind(received)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(inserted.len())
    }

    /// Saves a connector's status (JSON, no secret in it) and kind.
    pub async fn connector_status_save(
        &self,
        name: &str,
        kind: &str,
        status: &str,
    ) -> Result<(), DbError> {
        let _writer = self.sqlite_write().await;
        sqlx::query(
            "INSERT INTO connector_state (name, kind, status, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, status = excluded.status, updated_at = excluded.updated_at",
        )
        .bind(name.to_string())
        .bind(kind.to_string())
        .bind(status.to_string())
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn connector_rows(&self) -> Result<Vec<ConnectorRow>, DbError> {
        let rows = sqlx::query("SELECT name, kind, status FROM connector_state ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ConnectorRow {
                    name: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    status: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// Records a connector stored since `since` (Unix seconds).
    pub async fn activities_since(&self, source: &str, since: i64) -> Result<i64, DbError> {
        let row =
            sqlx::query("SELECT COUNT(*) FROM activities WHERE source = $1 AND received_at >= $2")
                .bind(source.to_string())
                .bind(since)
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get(0)?)
    }

    /// Activity rows with an id above `after`, by id: (id, the record's JSON).
    pub async fn activity_rows_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, DbError> {
        let rows =
            sqlx::query("SELECT id, record FROM activities WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push((r.try_get(0)?, r.try_get(1)?));
        }
        Ok(out)
    }

    /// The newest records (by event time), of one source or all; a record that does not
    /// read back is skipped.
    pub async fn activities(
        &self,
        source: Option<&str>,
        limit: i64,
    ) -> Result<Vec<tollgate_activity::Activity>, DbError> {
        let rows = match source {
            Some(s) => {
                sqlx::query(
                    "SELECT record FROM activities WHERE source = $1 ORDER BY time_ms DESC, id DESC LIMIT $2",
                )
                .bind(s.to_string())
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query("SELECT record FROM activities ORDER BY time_ms DESC, id DESC LIMIT $1")
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let text: String = r.try_get(0)?;
            if let Ok(a) = serde_json::from_str(&text) {
                out.push(a);
            }
        }
        Ok(out)
    }
}

/// A gateway's alert as the hub stores it, with the hub's own status when an admin set one
/// there.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayAlertRow {
    pub gateway_id: String,
    pub hostname: Option<String>,
    pub report: AlertReport,
}

/// An admin's status for an alert, set at the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertStatusRow {
    pub scope: String,
    pub alert_id: u64,
    pub status: String,
    pub comment: Option<String>,
    pub updated_at: i64,
}

impl Db {
    /// The gateways' alerts, newest match first.
    pub async fn gateway_alerts(&self, limit: i64) -> Result<Vec<GatewayAlertRow>, DbError> {
        let rows = sqlx::query(
            "SELECT a.gateway_id, g.hostname, a.alert_id, a.opened, a.last_seen, a.severity, \
             a.policy, a.user_name, a.ip, a.app_id, a.reason, a.status, a.count, a.comment \
             FROM gateway_alerts a LEFT JOIN gateways g ON g.id = a.gateway_id \
             ORDER BY a.last_seen DESC, a.gateway_id, a.alert_id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(GatewayAlertRow {
                gateway_id: r.try_get(0)?,
                hostname: r.try_get(1)?,
                report: AlertReport {
                    alert_id: u64::try_from(r.try_get::<i64, _>(2)?).unwrap_or(0),
                    opened: r.try_get(3)?,
                    last_seen: r.try_get(4)?,
                    severity: r.try_get(5)?,
                    policy: r.try_get(6)?,
                    user: r.try_get(7)?,
                    ip: r.try_get(8)?,
                    app_id: r.try_get(9)?,
                    reason: r.try_get(10)?,
                    status: r.try_get(11)?,
                    count: u64::try_from(r.try_get::<i64, _>(12)?).unwrap_or(0),
                    comment: r.try_get(13)?,
                },
            });
        }
        Ok(out)
    }

    /// Sets an admin's status for an alert (the newest setting wins).
    pub async fn set_alert_status(
        &self,
        scope: &str,
        alert_id: u64,
        status: &str,
        comment: Option<&str>,
    ) -> Result<(), DbError> {
        let _w = self.sqlite_write().await;
        sqlx::query(
            "INSERT INTO alert_status (scope, alert_id, status, comment, updated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, alert_id) DO UPDATE SET \
             status = excluded.status, comment = excluded.comment, updated_at = excluded.updated_at",
        )
        .bind(scope.to_string())
        .bind(int(alert_id))
        .bind(status.to_string())
        .bind(comment.map(|c| clip(c, 1024)))
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Admins' statuses of one scope (or all), set at or after `since`.
    pub async fn alert_statuses(
        &self,
        scope: Option<&str>,
        since: i64,
    ) -> Result<Vec<AlertStatusRow>, DbError> {
        let rows = match scope {
            Some(s) => sqlx::query(
                "SELECT scope, alert_id, status, comment, updated_at FROM alert_status \
                 WHERE scope = $1 AND updated_at >= $2",
            )
            .bind(s.to_string())
            .bind(since),
            None => sqlx::query(
                "SELECT scope, alert_id, status, comment, updated_at FROM alert_status \
                 WHERE updated_at >= $1",
            )
            .bind(since),
        }
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(AlertStatusRow {
                scope: r.try_get(0)?,
                alert_id: u64::try_from(r.try_get::<i64, _>(1)?).unwrap_or(0),
                status: r.try_get(2)?,
                comment: r.try_get(3)?,
                updated_at: r.try_get(4)?,
            });
        }
        Ok(out)
    }
}

impl tollgate_connectors::Store for Db {
    async fn load_cursor(
        &self,
        name: &str,
    ) -> Result<Option<String>, tollgate_connectors::StoreError> {
        self.connector_cursor(name)
            .await
            .map_err(|e| tollgate_connectors::StoreError(e.to_string()))
    }

    async fn commit(
        &self,
        name: &str,
        records: &[tollgate_activity::Activity],
        cursor: &str,
    ) -> Result<usize, tollgate_connectors::StoreError> {
        self.connector_commit(name, records, cursor)
            .await
            .map_err(|e| tollgate_connectors::StoreError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_left_out_of_urls() {
        assert_eq!(
            redact("postgres://hub:s3cret@db:5432/hub"),
            "postgres://hub:***@db:5432/hub"
        );
        assert_eq!(redact("sqlite:///x/hub.db"), "sqlite:///x/hub.db");
    }
}
