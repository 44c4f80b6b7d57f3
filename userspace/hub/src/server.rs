//! The hub's HTTPS server: the gateway protocol (enroll, long poll, upload, report) and the
//! admin JSON API, on one port, hyper 1 over tokio-rustls.
//!
//! Held polls wait on a `watch` channel carrying the newest bundle per site. It is fed by
//! publishes in this process and by a once-a-second look at `MAX(revision)` in the database,
//! so a bundle another hub process (or the CLI) published reaches the gateways this one holds
//! within about a second; a held poll costs a task and a connection, never a database query.

// Handlers return a ready HTTP answer as their error: one per refused request, on a path
// that is about to write it out, so boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tollgate_sync::protocol::{
    self, BundleReport, EnrollRequest, EnrollResponse, MAX_MESSAGE_BYTES, PATH_ENROLL, PATH_POLL,
    PATH_REPORT, PATH_UPLOAD, PollRequest, PollResponse, UploadAck, UploadBatch,
};

use crate::config::Config;
use crate::console::store::Role;
use crate::db::{Db, GatewayAuth, GatewayWrite, Latest, TokenUse};
use crate::pki::{self, Keys};
use crate::writer::GroupWriter;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the hub looks for bundles published elsewhere.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

pub struct State {
    pub db: Db,
    pub keys: Keys,
    pub config: Config,
    pub admin_token: String,
    pub catalog: Option<tollgate_catalog::Catalog>,
    latest: watch::Sender<Arc<Latest>>,
    writer: GroupWriter,
    /// Gateways by certificate fingerprint, as the database last said; only enrolled ones
    /// (a miss asks the database), so its size is the fleet's.
    known: Mutex<HashMap<String, GatewayAuth>>,
    /// Revoked gateway ids, reloaded every [`REFRESH_EVERY`]: a revocation (the CLI writes it
    /// to the database) takes effect within that, and always before a bundle published after
    /// it is handed out, since the set is reloaded after a new bundle is seen and before it is.
    revoked: RwLock<HashSet<String>>,
    /// What `/metrics` exports.
    pub metrics: tollgate_metrics::hub::HubMetrics,
}

impl State {
    fn is_revoked(&self, gateway_id: &str) -> bool {
        self.revoked
            .read()
            .map(|r| r.contains(gateway_id))
            .unwrap_or(true)
    }

    async fn reload_revoked(&self) {
        match self.db.revoked_ids().await {
            Ok(ids) => {
                if let Ok(mut r) = self.revoked.write() {
                    *r = ids.into_iter().collect();
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot load the revoked gateways"),
        }
    }
}

type Answer = Response<Full<Bytes>>;

fn text(status: StatusCode, reason: &str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(reason.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn message<T: serde::Serialize>(m: &T) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(protocol::encode(m))));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(protocol::CONTENT_TYPE),
    );
    r
}

fn json<T: serde::Serialize>(v: &T) -> Answer {
    match serde_json::to_vec_pretty(v) {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the answer",
        ),
    }
}

fn unavailable(e: impl std::fmt::Display) -> Answer {
    tracing::warn!(error = %e, "database error");
    text(StatusCode::SERVICE_UNAVAILABLE, "hub database unavailable")
}

pub async fn run(config: Config, db: Db, keys: Keys, admin_token: String) -> anyhow::Result<()> {
    let tls = keys.server_config(&config.server_names)?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let local = listener.local_addr()?;
    let initial = db.latest().await?;
    let (latest, _) = watch::channel(Arc::new(initial));
    let revoked = RwLock::new(db.revoked_ids().await?.into_iter().collect());
    let state = Arc::new(State {
        catalog: tollgate_catalog::Catalog::builtin(chrono::Utc::now()).ok(),
        writer: GroupWriter::spawn(db.clone()),
        db,
        keys,
        config,
        admin_token,
        latest,
        known: Mutex::new(HashMap::new()),
        revoked,
        metrics: tollgate_metrics::hub::HubMetrics::default(),
    });
    println!(
        "tollgate-hub: listening on https://{local} (database {})",
        crate::db::redact(&state.config.database)
    );
    // Listening: ready for systemd (`Type=notify`); nothing happens without NOTIFY_SOCKET.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!("telling systemd the hub is ready: {e}");
    }
    if let Some(addr) = state.config.metrics_listen {
        let metrics = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding [metrics] listen = \"{addr}\": {e}"))?;
        println!(
            "tollgate-hub: metrics on http://{}/metrics",
            metrics.local_addr()?
        );
        let st = Arc::clone(&state);
        tokio::spawn(tollgate_metrics::serve(
            metrics,
            tollgate_metrics::Limits::default(),
            move || {
                let st = Arc::clone(&st);
                async move { Some(render_metrics(&st).await) }
            },
        ));
    }
    tokio::spawn(refresher(Arc::clone(&state)));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let fingerprint = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| pki::fingerprint(c.as_ref()));
            let service = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                let fingerprint = fingerprint.clone();
                async move {
                    let started = std::time::Instant::now();
                    let path = route(req.uri().path());
                    let answer = handle(&state, peer, fingerprint, req).await;
                    let code = answer.status();
                    if code == StatusCode::SERVICE_UNAVAILABLE {
                        state.metrics.database_errors.inc();
                    }
                    state
                        .metrics
                        .request(path, code.as_u16(), started.elapsed().as_secs_f64());
                    Ok::<_, Infallible>(answer)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// The hub's metrics, with the fleet read from the database (bounded: a database that does
/// not answer in 2 s shows as `tollgate_hub_database_up 0`).
async fn render_metrics(state: &State) -> String {
    // Connected: heard from within a long poll and a margin for the gateway's next poll.
    let since = crate::db::now() - i64::from(state.config.long_poll_secs) - 30;
    let fleet = tokio::time::timeout(Duration::from_secs(2), async {
        let (enrolled, revoked, connected) = state.db.fleet_counts(since).await.ok()?;
        let revision = state.db.max_revision().await.ok()?;
        Some(tollgate_metrics::hub::Fleet {
            enrolled: u64::try_from(enrolled).unwrap_or(0),
            revoked: u64::try_from(revoked).unwrap_or(0),
            connected: u64::try_from(connected).unwrap_or(0),
            bundle_revision: revision,
        })
    })
    .await
    .ok()
    .flatten();
    let connectors = tokio::time::timeout(
        Duration::from_secs(2),
        crate::connectors::metric_samples(&state.db),
    )
    .await
    .unwrap_or_default();
    state.metrics.render_with_connectors(fleet, &connectors)
}

/// Signs and stores a bundle, and hands it to the held polls at once.
pub(crate) async fn publish(
    state: &State,
    site: Option<&str>,
    policy: &str,
) -> Result<i64, crate::db::PublishError> {
    let revision = state.db.publish(&state.keys.signer, site, policy).await?;
    state.metrics.bundles_published.inc();
    refresh(state).await;
    Ok(revision)
}

/// The route label of a request path: one of the hub's routes, or "other".
fn route(path: &str) -> &'static str {
    if path == "/console" || path.starts_with("/console/") {
        return "/console";
    }
    const ROUTES: &[&str] = &[
        PATH_ENROLL,
        PATH_POLL,
        PATH_UPLOAD,
        PATH_REPORT,
        "/v1/admin/gateways",
        "/v1/admin/apps",
        "/v1/admin/bundles",
        "/v1/admin/audit",
        "/v1/admin/publish",
    ];
    ROUTES
        .iter()
        .find(|r| **r == path)
        .copied()
        .unwrap_or("other")
}

/// Keeps the newest-bundle view and the revoked set current with what other processes wrote.
async fn refresher(state: Arc<State>) {
    let mut interval = tokio::time::interval(REFRESH_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match state.db.max_revision().await {
            Ok(max) if max != state.latest.borrow().max_revision => refresh(&state).await,
            Ok(_) => state.reload_revoked().await,
            Err(e) => tracing::warn!(error = %e, "cannot look for new bundles"),
        }
    }
}

/// Loads the newest bundles, and the revoked set first, so that a gateway revoked before a
/// bundle was published never gets it.
async fn refresh(state: &State) {
    state.reload_revoked().await;
    match state.db.latest().await {
        Ok(latest) => {
            state.latest.send_replace(Arc::new(latest));
        }
        Err(e) => tracing::warn!(error = %e, "cannot load the newest bundles"),
    }
}

async fn handle(
    state: &State,
    peer: SocketAddr,
    fingerprint: Option<String>,
    req: Request<Incoming>,
) -> Answer {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path.starts_with("/v1/admin/") {
        return admin(state, peer, &method, &path, req).await;
    }
    if path == "/console" || path.starts_with("/console/") {
        return crate::console::handle(state, peer, req).await;
    }
    if method != Method::POST {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    let gateway_path = [PATH_POLL, PATH_UPLOAD, PATH_REPORT].contains(&path.as_str());
    if path != PATH_ENROLL && !gateway_path {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(answer) => {
            tracing::debug!(%peer, path, "body refused");
            return answer;
        }
    };
    if path == PATH_ENROLL {
        return enroll(state, peer, &body).await;
    }
    let gateway = match authenticate(state, fingerprint.as_deref()).await {
        Ok(g) => g,
        Err(answer) => {
            tracing::info!(%peer, path, status = answer.status().as_u16(), "gateway refused");
            return answer;
        }
    };
    match path.as_str() {
        PATH_POLL => poll(state, &gateway, &body).await,
        PATH_UPLOAD => upload(state, &gateway, &body).await,
        _ => report(state, &gateway, &body).await,
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Answer> {
    let too_large = || text(StatusCode::PAYLOAD_TOO_LARGE, "message too large");
    if let Some(len) = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > MAX_MESSAGE_BYTES as u64
    {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), MAX_MESSAGE_BYTES)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(text(StatusCode::BAD_REQUEST, "unreadable body")),
    }
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Answer> {
    protocol::decode(body).map_err(|e| text(StatusCode::BAD_REQUEST, &e.to_string()))
}

async fn authenticate(state: &State, fingerprint: Option<&str>) -> Result<GatewayAuth, Answer> {
    let Some(fp) = fingerprint else {
        return Err(text(
            StatusCode::UNAUTHORIZED,
            "a client certificate is required (enroll first)",
        ));
    };
    let cached = state.known.lock().ok().and_then(|k| k.get(fp).cloned());
    let gateway = match cached {
        Some(g) => g,
        None => match state.db.gateway_by_fingerprint(fp).await {
            Ok(Some(g)) => {
                if let Ok(mut k) = state.known.lock() {
                    k.insert(fp.to_string(), g.clone());
                }
                g
            }
            Ok(None) => {
                return Err(text(StatusCode::UNAUTHORIZED, "unknown client certificate"));
            }
            Err(e) => return Err(unavailable(e)),
        },
    };
    if gateway.revoked || state.is_revoked(&gateway.id) {
        return Err(text(StatusCode::FORBIDDEN, "gateway revoked"));
    }
    Ok(gateway)
}

async fn enroll(state: &State, peer: SocketAddr, body: &[u8]) -> Answer {
    let req: EnrollRequest = match decode(body) {
        Ok(r) => r,
        Err(a) => return a,
    };
    let gateway_id = match pki::random_hex(8) {
        Ok(h) => format!("gw-{h}"),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let cert = match state.keys.sign_gateway(&req.csr_der, &gateway_id) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(%peer, error = %e, "enrollment refused: bad certificate request");
            return text(
                StatusCode::BAD_REQUEST,
                &format!("bad certificate request: {e}"),
            );
        }
    };
    let hash = tollgate_sync::token::secret_hash(&req.token_secret);
    let hostname: String = req.hostname.chars().take(255).collect();
    let version: String = req.agent_version.chars().take(64).collect();
    match state
        .db
        .enroll(
            &hash,
            &gateway_id,
            &hostname,
            &version,
            &pki::fingerprint(&cert),
        )
        .await
    {
        Ok(TokenUse::Ok { site }) => {
            tracing::info!(%peer, gateway = gateway_id, site, "gateway enrolled");
            message(&EnrollResponse {
                gateway_id,
                site,
                certificate_der: cert,
                ca_der: state.keys.ca_der.clone(),
                bundle_key: state.keys.signer.public_key(),
                hub_urls: state.config.public_urls.clone(),
            })
        }
        Ok(refusal) => {
            let reason = match refusal {
                TokenUse::Used => "token already used",
                TokenUse::Expired => "token expired",
                _ => "unknown enrollment token",
            };
            tracing::info!(%peer, reason, "enrollment refused");
            text(StatusCode::FORBIDDEN, reason)
        }
        Err(e) => unavailable(e),
    }
}

async fn poll(state: &State, gateway: &GatewayAuth, body: &[u8]) -> Answer {
    let req: PollRequest = match decode(body) {
        Ok(r) => r,
        Err(a) => return a,
    };
    if let Err(e) = state
        .writer
        .write(GatewayWrite::Seen {
            gateway_id: gateway.id.clone(),
            applied_revision: req.applied_revision,
            health: req.health,
        })
        .await
    {
        return unavailable(e);
    }
    let wait = Duration::from_secs(u64::from(req.wait_secs.min(state.config.long_poll_secs)));
    let applied = i64::try_from(req.applied_revision).unwrap_or(i64::MAX);
    let mut rx = state.latest.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    let mut waited = false;
    let _held = state.metrics.hold_poll();
    loop {
        let newest = rx.borrow_and_update().for_site(&gateway.site).cloned();
        if let Some(b) = &newest
            && b.revision > applied
        {
            // A gateway revoked while its poll was held gets nothing more.
            if waited && state.is_revoked(&gateway.id) {
                return text(StatusCode::FORBIDDEN, "gateway revoked");
            }
            return message(&PollResponse::Bundle(b.signed.clone()));
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {
                waited = true;
                continue;
            }
            // The deadline passed, or the hub is shutting down.
            _ => {
                let latest_revision = newest.map_or(0, |b| u64::try_from(b.revision).unwrap_or(0));
                return message(&PollResponse::Unchanged { latest_revision });
            }
        }
    }
}

async fn upload(state: &State, gateway: &GatewayAuth, body: &[u8]) -> Answer {
    let batch: UploadBatch = match decode(body) {
        Ok(r) => r,
        Err(a) => return a,
    };
    let stored_through = batch.records.iter().map(|r| r.seq).max().unwrap_or(0);
    match state.db.ingest(&gateway.id, &batch).await {
        Ok((accepted, duplicates)) => {
            state.metrics.upload_records.inc_by(u64::from(accepted));
            message(&UploadAck {
                stored_through,
                accepted,
                duplicates,
            })
        }
        Err(e) => unavailable(e),
    }
}

async fn report(state: &State, gateway: &GatewayAuth, body: &[u8]) -> Answer {
    let req: BundleReport = match decode(body) {
        Ok(r) => r,
        Err(a) => return a,
    };
    match state
        .writer
        .write(GatewayWrite::Report {
            gateway_id: gateway.id.clone(),
            revision: req.revision,
            outcome: req.outcome,
        })
        .await
    {
        Ok(()) => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        Err(e) => unavailable(e),
    }
}

/// Who an admin API request comes from.
enum Caller {
    /// The hub's admin token (`admin_token_file`).
    AdminToken,
    /// An account's API token, acting with the account's role.
    Account { id: i64, user: String, role: Role },
}

/// The admin token (compared in constant time), else an API token (looked up by its
/// SHA-256, so no secret is compared byte by byte); `None` for anything else.
async fn caller(state: &State, presented: &str) -> Result<Option<Caller>, crate::db::DbError> {
    if !state.admin_token.is_empty()
        && bool::from(presented.as_bytes().ct_eq(state.admin_token.as_bytes()))
    {
        return Ok(Some(Caller::AdminToken));
    }
    Ok(state
        .db
        .api_token_auth(presented)
        .await?
        .map(|t| Caller::Account {
            id: t.id,
            user: t.user,
            role: t.role,
        }))
}

async fn admin(
    state: &State,
    peer: SocketAddr,
    method: &Method,
    path: &str,
    req: Request<Incoming>,
) -> Answer {
    // Bearer tokens only, never a cookie: a browser does not attach an `Authorization` header
    // to a request another site makes it send, so a forged cross-site request cannot carry
    // one, and the console's CSRF checks (which protect its cookie) do not apply here.
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let caller = match caller(state, presented).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            // Unknown, expired, revoked, or the account is gone: one answer for all, so that
            // a prober learns nothing about which. Counted, not locked out: a token is 256
            // random bits, and a lockout would let anyone lock the real scripts out.
            state.metrics.api_token_refused.inc();
            tracing::info!(%peer, path, "admin request refused: bad or missing token");
            return text(StatusCode::UNAUTHORIZED, "a valid token is required");
        }
        Err(e) => return unavailable(e),
    };
    if let Caller::Account { id, user, role } = &caller {
        if *role != Role::Admin && method != Method::GET {
            tracing::info!(%peer, path, user, token = id, "admin request refused: read-only account");
            return text(
                StatusCode::FORBIDDEN,
                "the token's account is read-only: GET requests only",
            );
        }
        if method != Method::GET {
            tracing::info!(%peer, path, user, token = id, "admin request by API token");
        }
    }
    match (method.clone(), path) {
        (Method::GET, "/v1/admin/gateways") => match state.db.gateways().await {
            Ok(v) => json(&v),
            Err(e) => unavailable(e),
        },
        (Method::GET, "/v1/admin/apps") => match state.db.apps(state.catalog.as_ref()).await {
            Ok(v) => json(&v),
            Err(e) => unavailable(e),
        },
        (Method::GET, "/v1/admin/bundles") => match state.db.bundles().await {
            Ok(v) => json(&v),
            Err(e) => unavailable(e),
        },
        (Method::GET, "/v1/admin/audit") => match state.db.audit(1000).await {
            Ok(v) => json(&v),
            Err(e) => unavailable(e),
        },
        (Method::POST, "/v1/admin/publish") => {
            let site = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("site="))
                    .map(str::to_string)
            });
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(a) => return a,
            };
            let Ok(policy) = std::str::from_utf8(&body) else {
                return text(StatusCode::BAD_REQUEST, "the policy is not UTF-8");
            };
            if let Err(e) = crate::validate_policy(policy) {
                return text(StatusCode::BAD_REQUEST, &e);
            }
            match publish(state, site.as_deref(), policy).await {
                Ok(revision) => {
                    // Who published: the bundle's own audit record does not say.
                    let who = match &caller {
                        Caller::AdminToken => "the admin token".to_string(),
                        Caller::Account { id, user, .. } => {
                            format!("account {user} (API token {id})")
                        }
                    };
                    let _ = state
                        .db
                        .audit_hub(
                            "admin_api_publish",
                            None,
                            &format!(
                                "revision {revision} published through the admin API by {who}"
                            ),
                        )
                        .await;
                    json(&serde_json::json!({ "revision": revision, "site": site }))
                }
                Err(e) => unavailable(e),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}
