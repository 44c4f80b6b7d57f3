//! Local HTTPS servers that play each vendor's API from its documented shapes (see
//! `casb-anchors.md` §1), for the tests, the benchmark and the hub's end-to-end tests. Not
//! used in production.
//!
//! One [`Sim`] plays one vendor over a known event set with a simulated clock: an event is
//! visible from `visible_ms` on (events reach the API late and out of order), and a script of
//! [`Fault`]s is answered first (429 storms with `Retry-After`, 5xx bursts, GitHub secondary
//! limits, empty pages, expired cursors, garbage, links to another host). It counts what a
//! well-behaved client must not do: a request before the `Retry-After` it was given, two
//! requests in flight at once, a wrong token.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

use crate::connector::Clock;
use crate::settings::Kind;

/// A clock shared by a simulated API and the connectors reading it (ms since the epoch).
#[derive(Clone, Debug)]
pub struct SimClock(Arc<AtomicI64>);

impl SimClock {
    pub fn new(start_ms: i64) -> SimClock {
        SimClock(Arc::new(AtomicI64::new(start_ms)))
    }

    pub fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }

    pub fn set_ms(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }

    pub fn clock(&self) -> Clock {
        let c = self.clone();
        Arc::new(move || chrono::DateTime::from_timestamp_millis(c.now_ms()).unwrap_or_default())
    }
}

/// One event the simulated vendor holds.
#[derive(Debug, Clone, PartialEq)]
pub struct SimEvent {
    pub id: String,
    /// When it happened (ms).
    pub time_ms: i64,
    /// From when the API shows it (ms); later than `time_ms` for late events.
    pub visible_ms: i64,
    pub user: String,
    pub ip: String,
    pub object: String,
    /// M365: listed this long after its blob's `contentCreated` (a late blob).
    pub listing_delay_ms: i64,
}

impl SimEvent {
    /// Event `i` happening at `time_ms`, visible at once.
    pub fn new(i: u64, time_ms: i64) -> SimEvent {
        SimEvent {
            id: format!("ev-{i:08}-{:04x}", i.wrapping_mul(0x9e37) & 0xffff),
            time_ms,
            visible_ms: time_ms,
            user: format!("user{}@example.com", i % 17),
            ip: format!("198.51.100.{}", i % 250 + 1),
            object: format!("doc-{}.pdf", i % 101),
            listing_delay_ms: 0,
        }
    }
}

/// A scripted answer, given to the next request (after the token check) instead of the real
/// one.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// This status with a short body (5xx bursts).
    Status(u16),
    /// 429 with `Retry-After: secs`.
    TooMany { retry_after: u64 },
    /// 429 with only the vendor's rate-limit reset header (`secs` from now).
    TooManyReset { secs: u64 },
    /// GitHub's secondary rate limit: 403 with `Retry-After`.
    GithubSecondary { retry_after: u64 },
    /// An empty page (Okta: with its next link; Box: same position).
    EmptyPage,
    /// Every cursor handed out so far stops working (then the request is answered).
    ExpireCursors,
    /// 200 with a body that is not JSON.
    Garbage,
    /// A 200 whose next link / content URI / NextPageUri points at `url`.
    OffOrigin { url: String },
}

#[derive(Debug, Default, Clone)]
pub struct SimStats {
    pub requests: u64,
    pub unauthorized: u64,
    /// Requests that came before the `Retry-After` (or reset) they were given.
    pub retry_violations: u64,
    pub max_in_flight: u64,
    pub throttled_answers: u64,
    pub faults_answered: u64,
    pub by_path: HashMap<String, u64>,
    /// Access tokens issued by the token endpoint.
    pub tokens_issued: u64,
    /// Governance calls received: (method, path).
    pub governance: Vec<(String, String)>,
}

struct State {
    kind: Kind,
    clock: SimClock,
    /// Sorted by (`visible_ms`, insertion): the arrival order Okta and Box stream in.
    events: Vec<SimEvent>,
    faults: VecDeque<Fault>,
    tokens: Vec<String>,
    stats: SimStats,
    in_flight: u64,
    not_before: Option<Instant>,
    /// Seconds of `Retry-After` are multiplied by this when checking the client (the
    /// client's `wait_scale`).
    pub retry_scale: f64,
    /// Cursor generation: `ExpireCursors` bumps it.
    generation: u64,
    page_size: Option<usize>,
    /// Box: every n-th event of a page is sent twice (at-least-once stream).
    box_duplicate_every: Option<usize>,
    m365_types: Vec<String>,
    m365_subscribed: Vec<String>,
    origin: String,
    tenant: String,
    /// How long each request is held before it is answered (1 ms: overlapping clients show).
    hold: Duration,
    /// M365: the client-credentials grant (client id, secret) the token endpoint accepts.
    client: Option<(String, String)>,
}

/// A running simulated API.
pub struct Sim {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// `https://localhost:PORT/` (the certificate names `localhost` and 127.0.0.1).
    pub base_url: String,
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The M365 tenant the simulator serves.
pub const M365_TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";
/// A 5-minute blob bucket.
const BLOB_MS: i64 = 5 * 60 * 1000;

impl Sim {
    /// Starts a server for `kind` on 127.0.0.1 accepting `token`.
    pub async fn start(kind: Kind, clock: SimClock, token: &str) -> std::io::Result<Sim> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(std::io::Error::other)?;
        let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .map_err(std::io::Error::other)?;
        let cert = params.self_signed(&key).map_err(std::io::Error::other)?;
        let cert_der = cert.der().clone();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(std::io::Error::other)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let base_url = format!("https://localhost:{}/", addr.port());
        let state = Arc::new(Mutex::new(State {
            kind,
            clock,
            events: Vec::new(),
            faults: VecDeque::new(),
            tokens: vec![token.to_string()],
            stats: SimStats::default(),
            in_flight: 0,
            not_before: None,
            retry_scale: 1.0,
            generation: 1,
            page_size: None,
            box_duplicate_every: None,
            m365_types: vec!["Audit.General".into(), "Audit.SharePoint".into()],
            m365_subscribed: Vec::new(),
            origin: format!("https://localhost:{}", addr.port()),
            tenant: M365_TENANT.into(),
            hold: Duration::from_millis(1),
            client: None,
        }));
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let st = Arc::clone(&st);
                        async move { Ok::<_, Infallible>(serve(&st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(Sim {
            kind,
            addr,
            cert_pem: cert.pem(),
            base_url,
            cert_der,
            state,
            task,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds events (any order; visibility decides when each shows).
    pub fn add_events(&self, events: impl IntoIterator<Item = SimEvent>) {
        let mut s = self.lock();
        s.events.extend(events);
        s.events.sort_by_key(|e| e.visible_ms);
    }

    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().faults.extend(faults);
    }

    pub fn faults_left(&self) -> usize {
        self.lock().faults.len()
    }

    /// Accept only `token` from now on (the old one "expired").
    pub fn set_token(&self, token: &str) {
        self.lock().tokens = vec![token.to_string()];
    }

    /// Forgets the `Retry-After` it handed out (the client was restarted: a new process
    /// cannot know it).
    pub fn forget_retry_after(&self) {
        self.lock().not_before = None;
    }

    /// M365: serve `POST /{tenant}/oauth2/v2.0/token` (Entra's v2 token endpoint) for this
    /// client; it issues the token the API accepts now, for an hour.
    pub fn enable_client_credentials(&self, client_id: &str, secret: &str) {
        self.lock().client = Some((client_id.to_string(), secret.to_string()));
    }

    /// The token endpoint's URL.
    pub fn token_url(&self) -> String {
        format!("{}{M365_TENANT}/oauth2/v2.0/token", self.base_url)
    }

    /// How long each request is held (default 1 ms; zero for throughput runs).
    pub fn set_hold(&self, hold: Duration) {
        self.lock().hold = hold;
    }

    pub fn set_retry_scale(&self, scale: f64) {
        self.lock().retry_scale = scale;
    }

    /// Pages smaller than the client asked for (to force paging with few events).
    pub fn set_page_size(&self, n: usize) {
        self.lock().page_size = Some(n.max(1));
    }

    pub fn set_box_duplicates(&self, every: usize) {
        self.lock().box_duplicate_every = Some(every.max(1));
    }

    pub fn stats(&self) -> SimStats {
        self.lock().stats.clone()
    }

    /// The ids of the events visible now.
    pub fn visible_ids(&self) -> Vec<String> {
        let s = self.lock();
        let now = s.clock.now_ms();
        s.events
            .iter()
            .filter(|e| e.visible_ms <= now)
            .map(|e| e.id.clone())
            .collect()
    }
}

fn answer(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn header(r: &mut Response<Full<Bytes>>, name: &'static str, value: &str) {
    if let Ok(v) = http::HeaderValue::from_str(value) {
        r.headers_mut().append(name, v);
    }
}

struct InFlight<'a>(&'a Mutex<State>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

async fn serve(
    st: &Mutex<State>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let lock = || st.lock().unwrap_or_else(|p| p.into_inner());
    if req.method() == http::Method::POST && req.uri().path().ends_with("/oauth2/v2.0/token") {
        use http_body_util::BodyExt;
        let body = http_body_util::Limited::new(req.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(&body).into_owned().collect();
        let mut s = lock();
        s.stats.requests += 1;
        let ok = s.client.as_ref().is_some_and(|(id, secret)| {
            form.get("grant_type").map(String::as_str) == Some("client_credentials")
                && form.get("client_id") == Some(id)
                && form.get("client_secret") == Some(secret)
                && form.get("scope") == Some(&format!("{}/.default", s.origin))
        });
        if !ok {
            s.stats.unauthorized += 1;
            return answer(
                401,
                json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
            );
        }
        s.stats.tokens_issued += 1;
        let token = s.tokens.first().cloned().unwrap_or_default();
        return answer(
            200,
            json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}),
        );
    }
    {
        let mut s = lock();
        s.in_flight += 1;
        s.stats.max_in_flight = s.stats.max_in_flight.max(s.in_flight);
    }
    let _guard = InFlight(st);
    // Stay "in flight" for a moment so that overlapping clients are seen.
    let hold = lock().hold;
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    let mut s = lock();
    s.stats.requests += 1;
    let path = req.uri().path().to_string();
    *s.stats.by_path.entry(path.clone()).or_default() += 1;
    if let Some(nb) = s.not_before
        && Instant::now() < nb
    {
        s.stats.retry_violations += 1;
    }
    let auth = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let scheme = if s.kind == Kind::Okta {
        "SSWS "
    } else {
        "Bearer "
    };
    let ok = s.tokens.iter().any(|t| auth == format!("{scheme}{t}"));
    if !ok {
        s.stats.unauthorized += 1;
        return match s.kind {
            Kind::Okta => answer(
                401,
                json!({"errorCode":"E0000011","errorSummary":"Invalid token provided"}),
            ),
            Kind::Slack => answer(200, json!({"ok":false,"error":"invalid_auth"})),
            _ => answer(401, json!({"message":"Bad credentials"})),
        };
    }
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let full_url = format!(
        "{}{}",
        s.origin,
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut off_origin = None;
    let mut empty = false;
    if let Some(f) = s.faults.pop_front() {
        s.stats.faults_answered += 1;
        let scale = s.retry_scale;
        match f {
            Fault::Status(code) => {
                return answer(code, json!({"message": "simulated failure"}));
            }
            Fault::TooMany { retry_after } => {
                s.stats.throttled_answers += 1;
                s.not_before =
                    Some(Instant::now() + Duration::from_secs(retry_after).mul_f64(scale));
                let mut r = answer(
                    429,
                    json!({"errorCode":"E0000047","errorSummary":"API call exceeded rate limit due to too many requests."}),
                );
                header(&mut r, "retry-after", &retry_after.to_string());
                return r;
            }
            Fault::TooManyReset { secs } => {
                s.stats.throttled_answers += 1;
                s.not_before = Some(Instant::now() + Duration::from_secs(secs).mul_f64(scale));
                let reset = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
                    + secs;
                let mut r = answer(429, json!({"errorCode":"E0000047"}));
                header(&mut r, "x-rate-limit-limit", "600");
                header(&mut r, "x-rate-limit-remaining", "0");
                header(&mut r, "x-rate-limit-reset", &reset.to_string());
                header(&mut r, "x-ratelimit-remaining", "0");
                header(&mut r, "x-ratelimit-reset", &reset.to_string());
                return r;
            }
            Fault::GithubSecondary { retry_after } => {
                s.stats.throttled_answers += 1;
                s.not_before =
                    Some(Instant::now() + Duration::from_secs(retry_after).mul_f64(scale));
                let mut r = answer(
                    403,
                    json!({"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}),
                );
                header(&mut r, "retry-after", &retry_after.to_string());
                return r;
            }
            Fault::EmptyPage => empty = true,
            Fault::ExpireCursors => s.generation += 1,
            Fault::Garbage => {
                let mut r = Response::new(Full::new(Bytes::from_static(b"<html>oops")));
                *r.status_mut() = StatusCode::OK;
                return r;
            }
            Fault::OffOrigin { url } => off_origin = Some(url),
        }
    }
    s.not_before = None;
    let method = req.method().clone();
    let raw_path = req.uri().path().to_string();
    let governance = match s.kind {
        Kind::Okta => raw_path.starts_with("/api/v1/users/"),
        Kind::Github => raw_path.starts_with("/users/"),
        _ => false,
    };
    if governance {
        s.stats.governance.push((method.to_string(), raw_path));
        return match s.kind {
            Kind::Okta if method == http::Method::DELETE => Response::builder()
                .status(204)
                .body(Full::new(Bytes::new()))
                .unwrap_or_default(),
            Kind::Github => Response::builder()
                .status(204)
                .body(Full::new(Bytes::new()))
                .unwrap_or_default(),
            _ => answer(200, json!({})),
        };
    }
    match s.kind {
        Kind::Okta => okta(&mut s, &path, &query, &full_url, empty, off_origin),
        Kind::Github => github(&mut s, &path, &query, off_origin),
        Kind::M365 => m365(&mut s, &method, &path, &query, &full_url, off_origin),
        Kind::Slack => slack(&mut s, &path, &query),
        Kind::Box => box_events(&mut s, &path, &query, empty),
    }
}

fn parse_gen_index(s: &State, cursor: &str) -> Option<usize> {
    let (g, i) = cursor.split_once('.')?;
    (g.parse::<u64>().ok()? == s.generation).then_some(())?;
    i.parse().ok()
}

fn visible(s: &State) -> usize {
    let now = s.clock.now_ms();
    s.events.partition_point(|e| e.visible_ms <= now)
}

fn iso_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn okta(
    s: &mut State,
    path: &str,
    q: &HashMap<String, String>,
    full_url: &str,
    empty: bool,
    off_origin: Option<String>,
) -> Response<Full<Bytes>> {
    if path != "/api/v1/logs" {
        return answer(404, json!({"errorCode":"E0000022"}));
    }
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(100)
        .min(1000)
        .min(s.page_size.unwrap_or(1000));
    let vis = visible(s);
    let start = match (q.get("after"), q.get("since")) {
        (Some(_), Some(_)) => {
            return answer(
                400,
                json!({"errorCode":"E0000001","errorSummary":"since and after are mutually exclusive"}),
            );
        }
        (Some(a), None) => match parse_gen_index(s, a) {
            Some(i) => i,
            None => {
                return answer(
                    400,
                    json!({"errorCode":"E0000053","errorSummary":"Invalid after cursor"}),
                );
            }
        },
        (None, Some(since)) => {
            let since = chrono::DateTime::parse_from_rfc3339(since)
                .map(|t| t.timestamp_millis())
                .unwrap_or(0);
            // Polling requests filter by persistence time.
            s.events[..vis].partition_point(|e| e.visible_ms < since)
        }
        (None, None) => 0,
    };
    let start = start.min(vis);
    let end = if empty {
        start
    } else {
        (start + limit).min(vis)
    };
    let page: Vec<Value> = s.events[start..end]
        .iter()
        .map(|e| {
            json!({
                "uuid": e.id, "published": iso_ms(e.time_ms), "eventType": "user.session.start",
                "version": "0", "severity": "INFO", "displayMessage": "User login to Okta",
                "actor": {"id": "00u1", "type": "User", "alternateId": e.user, "displayName": e.user},
                "client": {"ipAddress": e.ip, "userAgent": {"rawUserAgent": "sim"}},
                "outcome": {"result": "SUCCESS"},
                "target": [{"id": "0oa1", "type": "AppInstance", "alternateId": e.object}]
            })
        })
        .collect();
    let mut r = answer(200, Value::Array(page));
    let base = off_origin.unwrap_or_else(|| s.origin.clone());
    header(&mut r, "link", &format!("<{full_url}>; rel=\"self\""));
    header(
        &mut r,
        "link",
        &format!(
            "<{base}/api/v1/logs?limit={limit}&sortOrder=ASCENDING&after={}.{end}>; rel=\"next\"",
            s.generation
        ),
    );
    header(&mut r, "x-rate-limit-limit", "600");
    header(&mut r, "x-rate-limit-remaining", "599");
    header(&mut r, "x-rate-limit-reset", "4102444800");
    r
}

fn github(
    s: &mut State,
    path: &str,
    q: &HashMap<String, String>,
    off_origin: Option<String>,
) -> Response<Full<Bytes>> {
    if !(path.starts_with("/enterprises/") || path.starts_with("/orgs/"))
        || !path.ends_with("/audit-log")
    {
        return answer(404, json!({"message":"Not Found"}));
    }
    let per_page = q
        .get("per_page")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(30)
        .min(100)
        .min(s.page_size.unwrap_or(100));
    let since = q
        .get("phrase")
        .and_then(|p| p.strip_prefix("created:>="))
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(0, |t| t.timestamp_millis());
    let now = s.clock.now_ms();
    let mut list: Vec<&SimEvent> = s
        .events
        .iter()
        .filter(|e| e.visible_ms <= now && e.time_ms >= since)
        .collect();
    list.sort_by(|a, b| (a.time_ms, &a.id).cmp(&(b.time_ms, &b.id)));
    let from = match q.get("after") {
        None => 0,
        Some(a) => {
            let key = a.split_once('.').and_then(|(g, rest)| {
                (g.parse::<u64>().ok()? == s.generation).then_some(())?;
                let (t, id) = rest.split_once('.')?;
                Some((t.parse::<i64>().ok()?, id.to_string()))
            });
            let Some((t, id)) = key else {
                return answer(422, json!({"message":"Invalid cursor"}));
            };
            list.partition_point(|e| (e.time_ms, e.id.as_str()) <= (t, id.as_str()))
        }
    };
    let end = (from + per_page).min(list.len());
    let page: Vec<Value> = list[from..end]
        .iter()
        .map(|e| {
            json!({"@timestamp": e.time_ms, "_document_id": e.id, "action": "git.clone",
                   "actor": e.user, "actor_ip": e.ip, "created_at": e.time_ms,
                   "org": "mona-org", "repo": format!("mona-org/{}", e.object)})
        })
        .collect();
    let next = (end < list.len()).then(|| {
        let last = list[end - 1];
        format!("{}.{}.{}", s.generation, last.time_ms, last.id)
    });
    let mut r = answer(200, Value::Array(page));
    if let Some(after) = next {
        let base = off_origin.unwrap_or_else(|| s.origin.clone());
        header(
            &mut r,
            "link",
            &format!("<{base}{path}?per_page={per_page}&after={after}>; rel=\"next\""),
        );
    }
    header(&mut r, "x-ratelimit-limit", "1750");
    header(&mut r, "x-ratelimit-remaining", "1700");
    header(&mut r, "x-ratelimit-reset", "4102444800");
    r
}

/// M365 blobs: events of one content type, grouped by the 5-minute bucket of their
/// visibility and by their listing delay; `contentCreated` is the bucket's start.
fn m365_blobs(s: &State, content_type: &str) -> Vec<(String, i64, i64, Vec<usize>)> {
    let n = s.m365_types.len().max(1);
    let Some(t) = s.m365_types.iter().position(|x| x == content_type) else {
        return Vec::new();
    };
    let mut blobs: std::collections::BTreeMap<(i64, i64), Vec<usize>> = Default::default();
    for (i, e) in s.events.iter().enumerate() {
        let digit = e.id.bytes().map(usize::from).sum::<usize>();
        if digit % n != t {
            continue;
        }
        let bucket = e.visible_ms - e.visible_ms.rem_euclid(BLOB_MS);
        blobs
            .entry((bucket, e.listing_delay_ms))
            .or_default()
            .push(i);
    }
    blobs
        .into_iter()
        .map(|((bucket, delay), idx)| {
            let listed = idx
                .iter()
                .map(|&i| s.events[i].visible_ms)
                .max()
                .unwrap_or(bucket)
                .max(bucket + BLOB_MS)
                + delay;
            (
                format!("{content_type}${bucket}${delay}"),
                bucket,
                listed,
                idx,
            )
        })
        .collect()
}

fn m365(
    s: &mut State,
    method: &http::Method,
    path: &str,
    q: &HashMap<String, String>,
    full_url: &str,
    off_origin: Option<String>,
) -> Response<Full<Bytes>> {
    let prefix = format!("/api/v1.0/{}/activity/feed/", s.tenant);
    let Some(op) = path.strip_prefix(&prefix) else {
        return answer(
            400,
            json!({"error":{"code":"AF20010","message":"tenant mismatch"}}),
        );
    };
    let now = s.clock.now_ms();
    if op == "subscriptions/start" && method == http::Method::POST {
        let ct = q.get("contentType").cloned().unwrap_or_default();
        if s.m365_subscribed.contains(&ct) {
            return answer(
                400,
                json!({"error":{"code":"AF20024","message":"The subscription is already enabled."}}),
            );
        }
        s.m365_subscribed.push(ct.clone());
        return answer(200, json!({"contentType": ct, "status": "enabled"}));
    }
    if op == "subscriptions/content" {
        let ct = q.get("contentType").cloned().unwrap_or_default();
        if !s.m365_subscribed.contains(&ct) {
            return answer(
                400,
                json!({"error":{"code":"AF20022","message":"No subscription found for the specified content type"}}),
            );
        }
        let parse = |k: &str| {
            q.get(k)
                .and_then(|t| crate::vendors::m365::parse_time(t))
                .map(|t| t.timestamp_millis())
        };
        let (Some(start), Some(end)) = (parse("startTime"), parse("endTime")) else {
            return answer(
                400,
                json!({"error":{"code":"AF20001","message":"startTime and endTime must both be present"}}),
            );
        };
        if end - start > 24 * 3600 * 1000 || end <= start {
            return answer(
                400,
                json!({"error":{"code":"AF20030","message":"Start time and end time must both be specified (or both omitted) and must be less than or equal to 24 hours apart."}}),
            );
        }
        if start < now - 7 * 24 * 3600 * 1000 {
            return answer(
                400,
                json!({"error":{"code":"AF20055","message":"Start time cannot be more than 7 days in the past."}}),
            );
        }
        let page_size = s.page_size.unwrap_or(200);
        let offset: usize = q.get("nextPage").and_then(|p| p.parse().ok()).unwrap_or(0);
        let listing: Vec<(String, i64)> = m365_blobs(s, &ct)
            .into_iter()
            .filter(|(_, created, listed, _)| *listed <= now && *created >= start && *created < end)
            .map(|(id, created, _, _)| (id, created))
            .collect();
        let base = off_origin.clone().unwrap_or_else(|| s.origin.clone());
        let page: Vec<Value> = listing
            .iter()
            .skip(offset)
            .take(page_size)
            .map(|(id, created)| {
                json!({"contentType": ct, "contentId": id,
                       "contentUri": format!("{base}{prefix}audit/{id}"),
                       "contentCreated": iso_ms(*created),
                       "contentExpiration": iso_ms(created + 7 * 24 * 3600 * 1000)})
            })
            .collect();
        let mut r = answer(200, Value::Array(page));
        if offset + page_size < listing.len() {
            let next = match full_url.split_once("&nextPage=") {
                Some((head, _)) => format!("{head}&nextPage={}", offset + page_size),
                None => format!("{full_url}&nextPage={}", offset + page_size),
            };
            header(&mut r, "NextPageUri", &next);
        }
        return r;
    }
    if let Some(id) = op.strip_prefix("audit/") {
        let id = percent_decode(id);
        let ct = id.split('$').next().unwrap_or("").to_string();
        let Some((_, _, listed, idx)) = m365_blobs(s, &ct).into_iter().find(|b| b.0 == id) else {
            return answer(
                404,
                json!({"error":{"code":"AF20051","message":"Content requested with the key does not exist."}}),
            );
        };
        if listed > now {
            return answer(404, json!({"error":{"code":"AF20051"}}));
        }
        let records: Vec<Value> = idx
            .iter()
            .map(|&i| {
                let e = &s.events[i];
                json!({"CreationTime": chrono::DateTime::from_timestamp_millis(e.time_ms).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S").to_string(),
                       "Id": e.id, "Operation": "FileDownloaded", "OrganizationId": s.tenant,
                       "RecordType": 6, "ResultStatus": "Succeeded", "UserKey": e.user, "UserType": 0,
                       "Workload": "SharePoint", "ClientIP": e.ip, "ObjectId": e.object, "UserId": e.user})
            })
            .collect();
        return answer(200, Value::Array(records));
    }
    answer(404, json!({"error":{"code":"AF404"}}))
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn slack(s: &mut State, path: &str, q: &HashMap<String, String>) -> Response<Full<Bytes>> {
    if path != "/audit/v1/logs" {
        return answer(404, json!({"ok": false, "error": "unknown_method"}));
    }
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(100)
        .min(9999)
        .min(s.page_size.unwrap_or(9999));
    let oldest: i64 = q.get("oldest").and_then(|o| o.parse().ok()).unwrap_or(0);
    let now = s.clock.now_ms();
    let mut list: Vec<&SimEvent> = s
        .events
        .iter()
        .filter(|e| e.visible_ms <= now && e.time_ms / 1000 >= oldest)
        .collect();
    // Newest first.
    list.sort_by(|a, b| (b.time_ms / 1000, &b.id).cmp(&(a.time_ms / 1000, &a.id)));
    let from = match q.get("cursor").filter(|c| !c.is_empty()) {
        None => 0,
        Some(c) => {
            let key = c.split_once('.').and_then(|(g, rest)| {
                (g.parse::<u64>().ok()? == s.generation).then_some(())?;
                let (t, id) = rest.split_once('.')?;
                Some((t.parse::<i64>().ok()?, id.to_string()))
            });
            let Some((t, id)) = key else {
                return answer(200, json!({"ok": false, "error": "invalid_cursor"}));
            };
            list.partition_point(|e| (e.time_ms / 1000, e.id.as_str()) >= (t, id.as_str()))
        }
    };
    let end = (from + limit).min(list.len());
    let entries: Vec<Value> = list[from..end]
        .iter()
        .map(|e| {
            json!({"id": e.id, "date_create": e.time_ms / 1000, "action": "file_downloaded",
                   "actor": {"type": "user", "user": {"id": "W1", "name": e.user, "email": e.user, "team": "T1"}},
                   "entity": {"type": "file", "file": {"id": "F1", "name": e.object, "filetype": "pdf"}},
                   "context": {"location": {"type": "enterprise", "id": "E1", "name": "Birdland", "domain": "birdland"},
                               "ua": "sim", "ip_address": e.ip}})
        })
        .collect();
    let next = if end < list.len() {
        let last = list[end - 1];
        format!("{}.{}.{}", s.generation, last.time_ms / 1000, last.id)
    } else {
        String::new()
    };
    answer(
        200,
        json!({"ok": true, "entries": entries, "response_metadata": {"next_cursor": next}}),
    )
}

fn box_events(
    s: &mut State,
    path: &str,
    q: &HashMap<String, String>,
    empty: bool,
) -> Response<Full<Bytes>> {
    if path != "/2.0/events" {
        return answer(404, json!({"type":"error","status":404,"code":"not_found"}));
    }
    if q.get("stream_type").map(String::as_str) != Some("admin_logs_streaming") {
        return answer(
            400,
            json!({"type":"error","status":400,"code":"bad_request"}),
        );
    }
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(100)
        .min(500)
        .min(s.page_size.unwrap_or(500));
    const GEN: u64 = 1_000_000_000_000;
    let start = match q.get("stream_position").map(String::as_str) {
        None | Some("0") => 0,
        Some(p) => match p.parse::<u64>() {
            Ok(n) if n / GEN == s.generation => (n % GEN) as usize,
            _ => {
                return answer(
                    400,
                    json!({"type":"error","status":400,"code":"invalid_stream_position","message":"Invalid stream position"}),
                );
            }
        },
    };
    let vis = visible(s);
    let start = start.min(vis);
    let end = if empty {
        start
    } else {
        (start + limit).min(vis)
    };
    let mut entries = Vec::new();
    for (k, e) in s.events[start..end].iter().enumerate() {
        let v = json!({"type": "event", "event_id": e.id, "event_type": "DOWNLOAD",
                       "created_at": chrono::DateTime::from_timestamp_millis(e.time_ms).unwrap_or_default().to_rfc3339(),
                       "created_by": {"type": "user", "id": "1", "name": e.user, "login": e.user},
                       "ip_address": e.ip, "session_id": null,
                       "source": {"item_type": "file", "item_id": "1", "item_name": e.object}});
        entries.push(v.clone());
        if s.box_duplicate_every.is_some_and(|n| (start + k) % n == 0) {
            entries.push(v);
        }
    }
    answer(
        200,
        json!({"chunk_size": entries.len(), "next_stream_position": (s.generation * GEN + end as u64).to_string(), "entries": entries}),
    )
}
