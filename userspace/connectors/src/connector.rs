//! One connector: its settings, HTTP client, throttling and circuit breaker, and `poll`, which
//! reads pages from the stored cursor until caught up, committing each page's records with
//! the cursor that follows them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use http::Method;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tollgate_activity::GovernanceCall;
use url::Url;

use crate::error::{ConnectorError, snippet};
use crate::http::{HttpClient, Response};
use crate::settings::{Kind, Secret, Settings};
use crate::store::Store;
use crate::throttle::{self, Breaker, Circuit, Limits};
use crate::vendors::{self, Cursor};

/// The time the connector reads (the wall clock in production; a simulated one in tests).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// One permit per tenant: connectors that read the same tenant (the same Okta org, GitHub
/// enterprise, M365 tenant, Slack or Box token) never have two requests in flight at once.
#[derive(Clone, Default)]
pub struct TenantGates(Arc<Mutex<HashMap<String, Arc<Semaphore>>>>);

impl TenantGates {
    pub fn gate(&self, tenant: &str) -> Arc<Semaphore> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            map.entry(tenant.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(1))),
        )
    }
}

/// How a connector is run.
#[derive(Clone)]
pub struct Options {
    pub limits: Limits,
    pub clock: Clock,
    /// Roots trusted besides the system's (tests; the hub uses `SSL_CERT_FILE`).
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub gates: TenantGates,
    /// Called with the status as soon as the vendor says "slow down" (before the wait), so
    /// that the caller can save `throttled_until` and a restarted process keeps the wait.
    pub on_throttle: Option<ThrottleHook>,
}

/// See [`Options::on_throttle`].
pub type ThrottleHook = Arc<dyn Fn(&ConnectorStatus) + Send + Sync>;

impl Default for Options {
    fn default() -> Options {
        Options {
            limits: Limits::default(),
            clock: system_clock(),
            extra_roots: Vec::new(),
            gates: TenantGates::default(),
            on_throttle: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not polled yet.
    Idle,
    Ok,
    /// The last poll succeeded but was throttled on the way.
    Throttled,
    /// The last poll failed.
    Failing,
    /// The vendor refused the token.
    Unauthorized,
    /// Too many failed polls: no request until the cool-down ends.
    CircuitOpen,
}

/// What `tollgate-hub connectors status` shows. Holds no secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectorStatus {
    pub name: String,
    pub kind: Kind,
    pub health: Health,
    pub circuit: Circuit,
    pub last_attempt: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// Where the cursor stands (Okta's next link, GitHub's after cursor, ...), shortened.
    pub cursor: Option<String>,
    /// The newest event time stored so far.
    pub newest_event: Option<DateTime<Utc>>,
    /// How old the newest event of the last poll that stored any was when it was stored.
    pub lag_secs: Option<i64>,
    pub events_total: u64,
    /// Records read again (overlaps, vendor duplicates, a page re-read after a crash) and
    /// dropped by the store.
    pub duplicates: u64,
    /// Events the parser refused (no id, no time): counted, never stored.
    pub dropped: u64,
    pub requests: u64,
    /// Answers that said "slow down" (429, GitHub 403 secondary limit).
    pub throttled: u64,
    /// Requests retried after a 5xx or a transport error.
    pub retries: u64,
    /// Failed polls.
    pub errors: u64,
    /// Stored cursors the vendor refused (expired) and replaced by a time window.
    pub cursor_resets: u64,
    pub polls: u64,
    /// Wall-clock time before which the vendor asked not to be called again (the last
    /// `Retry-After` or rate-limit reset); a restarted connector waits for it too.
    #[serde(default)]
    pub throttled_until: Option<DateTime<Utc>>,
}

impl ConnectorStatus {
    pub fn new(name: &str, kind: Kind) -> ConnectorStatus {
        ConnectorStatus {
            name: name.to_string(),
            kind,
            health: Health::Idle,
            circuit: Circuit::Closed,
            last_attempt: None,
            last_success: None,
            last_error: None,
            last_error_at: None,
            cursor: None,
            newest_event: None,
            lag_secs: None,
            events_total: 0,
            duplicates: 0,
            dropped: 0,
            requests: 0,
            throttled: 0,
            retries: 0,
            errors: 0,
            cursor_resets: 0,
            polls: 0,
            throttled_until: None,
        }
    }
}

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    pub pages: u32,
    pub new: u64,
    pub duplicates: u64,
    pub dropped: u64,
    pub throttled: u64,
    /// The vendor had nothing more (false: the page cap was reached first).
    pub caught_up: bool,
}

/// Process-memory state a vendor keeps between polls (never needed for correctness after a
/// restart).
#[derive(Default)]
pub struct VendorMemory {
    /// M365: content types whose subscription was started by this process.
    pub m365_started: Vec<String>,
    /// The client-credentials access token and when to stop using it.
    pub access_token: Option<(String, Instant)>,
    /// Access tokens fetched (client-credentials flow).
    pub token_requests: u64,
}

pub struct Connector {
    settings: Settings,
    origin: String,
    http: HttpClient,
    options: Options,
    gate: Arc<Semaphore>,
    breaker: Breaker,
    status: ConnectorStatus,
    not_before: Option<Instant>,
    memory: VendorMemory,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("settings", &self.settings)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A stable record id for `(connector, vendor_id)` (63 bits: it fits a signed column).
pub fn record_id(connector: &str, vendor_id: &str) -> u64 {
    fnv(&[connector, vendor_id]) & (i64::MAX as u64)
}

fn tenant_key(s: &Settings, origin: &str) -> String {
    let secret = match &s.secret {
        Secret::Token(t) => format!("token:{:016x}", fnv(&[t])),
        Secret::TokenFile(p) => format!("file:{}", p.display()),
    };
    match s.kind {
        Kind::Okta => origin.to_string(),
        Kind::Github => format!("{origin}|{}", s.github_scope.as_deref().unwrap_or("")),
        Kind::M365 => format!("{origin}|{}", s.tenant_id.as_deref().unwrap_or("")),
        Kind::Slack | Kind::Box => format!("{origin}|{secret}"),
    }
}

impl Connector {
    /// What a vendor step or a governance call runs with, at `now`.
    fn ctx(&mut self, now: DateTime<Utc>) -> Ctx<'_> {
        Ctx {
            settings: &self.settings,
            origin: &self.origin,
            http: &mut self.http,
            limits: &self.options.limits,
            gate: &self.gate,
            status: &mut self.status,
            not_before: &mut self.not_before,
            memory: &mut self.memory,
            hook: &self.options.on_throttle,
            now,
        }
    }

    pub fn new(settings: Settings, options: Options) -> Result<Connector, ConnectorError> {
        let http = HttpClient::new(&options.extra_roots)?;
        let origin = settings.origin();
        let gate = options.gates.gate(&tenant_key(&settings, &origin));
        Ok(Connector {
            status: ConnectorStatus::new(&settings.name, settings.kind),
            origin,
            http,
            options,
            gate,
            breaker: Breaker::default(),
            not_before: None,
            memory: VendorMemory::default(),
            settings,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn status(&self) -> &ConnectorStatus {
        &self.status
    }

    /// Carries counters over from a status stored by an earlier run.
    pub fn restore_status(&mut self, stored: ConnectorStatus) {
        let keep = (self.status.name.clone(), self.status.kind);
        self.status = stored;
        (self.status.name, self.status.kind) = keep;
        // A wait the vendor asked of the previous process still holds.
        if let Some(until) = self.status.throttled_until
            && let Ok(left) = (until - Utc::now()).to_std()
        {
            self.not_before = Some(Instant::now() + left.min(self.options.limits.max_wait));
        }
    }

    /// Connections opened (handshakes) and requests sent by this connector.
    pub fn http_counts(&self) -> (u64, u64) {
        (self.http.connections, self.http.requests)
    }

    /// How long until the circuit lets a poll through.
    pub fn circuit_wait(&self) -> Duration {
        self.breaker.wait(Instant::now())
    }

    /// Reads from the stored cursor until caught up (or `max_pages_per_poll`), committing
    /// every page with the cursor that follows it.
    pub async fn poll<S: Store>(&mut self, store: &S) -> Result<PollReport, ConnectorError> {
        let now = (self.options.clock)();
        self.status.last_attempt = Some(now);
        self.status.polls += 1;
        if self.breaker.state(Instant::now()) == Circuit::Open {
            self.status.health = Health::CircuitOpen;
            self.status.circuit = Circuit::Open;
            return Err(ConnectorError::CircuitOpen {
                secs: self.breaker.wait(Instant::now()).as_secs(),
            });
        }
        let throttled_before = self.status.throttled;
        let result = self.poll_inner(store).await;
        let now = (self.options.clock)();
        match &result {
            Ok(report) => {
                self.breaker.success();
                self.status.last_success = Some(now);
                self.status.health = if report.throttled > 0 {
                    Health::Throttled
                } else {
                    Health::Ok
                };
            }
            Err(e) => {
                self.breaker.failure(Instant::now(), &self.options.limits);
                self.status.errors += 1;
                self.status.last_error = Some(e.to_string());
                self.status.last_error_at = Some(now);
                self.status.health = match e {
                    ConnectorError::Unauthorized { .. } => Health::Unauthorized,
                    _ => Health::Failing,
                };
                if self.breaker.state(Instant::now()) == Circuit::Open {
                    self.status.health = Health::CircuitOpen;
                }
                tracing::warn!(connector = %self.settings.name, error = %e, "connector poll failed");
            }
        }
        let _ = throttled_before;
        self.status.circuit = self.breaker.state(Instant::now());
        result
    }

    async fn poll_inner<S: Store>(&mut self, store: &S) -> Result<PollReport, ConnectorError> {
        let name = self.settings.name.clone();
        let mut cursor = match store.load_cursor(&name).await? {
            Some(text) => match Cursor::parse(&text, self.settings.kind) {
                Some(c) => c,
                None => {
                    tracing::warn!(connector = %name, "stored cursor unreadable; starting a fresh window");
                    self.status.cursor_resets += 1;
                    Cursor::initial(self.settings.kind)
                }
            },
            None => Cursor::initial(self.settings.kind),
        };
        let mut report = PollReport::default();
        let throttled_at_start = self.status.throttled;
        let mut resets = 0;
        let mut pages = 0;
        while pages < self.options.limits.max_pages_per_poll {
            let now = (self.options.clock)();
            let mut ctx = self.ctx(now);
            let step = match vendors::step(&mut ctx, &mut cursor).await {
                Ok(s) => s,
                Err(ConnectorError::CursorExpired { .. }) if resets < 2 => {
                    resets += 1;
                    self.status.cursor_resets += 1;
                    tracing::info!(connector = %name, "the vendor refused the stored cursor; re-reading from a time window");
                    cursor.reset(now);
                    continue;
                }
                Err(e) => return Err(e),
            };
            pages += 1;
            let text = serde_json::to_string(&cursor)
                .map_err(|e| ConnectorError::Config(format!("cursor: {e}")))?;
            let new = store.commit(&name, &step.records, &text).await? as u64;
            let offered = step.records.len() as u64;
            report.pages += 1;
            report.new += new;
            report.duplicates += offered.saturating_sub(new);
            report.dropped += step.dropped;
            self.status.events_total += new;
            self.status.duplicates += offered.saturating_sub(new);
            self.status.dropped += step.dropped;
            self.status.cursor = Some(cursor.summary());
            if let Some(newest) = step.records.iter().map(|r| r.time).max() {
                if self.status.newest_event.is_none_or(|t| newest > t) {
                    self.status.newest_event = Some(newest);
                }
                self.status.lag_secs = Some((now - newest).num_seconds().max(0));
            }
            if !step.more {
                report.caught_up = true;
                break;
            }
        }
        report.throttled = self.status.throttled - throttled_at_start;
        Ok(report)
    }
}

/// What one vendor step read.
#[derive(Debug, Default)]
pub struct Step {
    pub records: Vec<tollgate_activity::Activity>,
    pub dropped: u64,
    /// More pages are waiting now.
    pub more: bool,
}

/// What a vendor step may use: the settings, the clock's `now`, and throttled requests.
pub struct Ctx<'a> {
    pub settings: &'a Settings,
    pub origin: &'a str,
    http: &'a mut HttpClient,
    limits: &'a Limits,
    gate: &'a Arc<Semaphore>,
    status: &'a mut ConnectorStatus,
    not_before: &'a mut Option<Instant>,
    pub memory: &'a mut VendorMemory,
    hook: &'a Option<ThrottleHook>,
    pub now: DateTime<Utc>,
}

impl Ctx<'_> {
    /// A URL under `base_url` (path relative to its root).
    pub fn url(&self, path_and_query: &str) -> Result<Url, ConnectorError> {
        self.settings
            .base_url
            .join(path_and_query)
            .map_err(|e| ConnectorError::Config(format!("URL {path_and_query:?}: {e}")))
    }

    /// A URL the vendor handed us (a next link, a content URI): parsed and held to our origin.
    pub fn vendor_url(&self, text: &str) -> Result<Url, ConnectorError> {
        let url = self
            .settings
            .base_url
            .join(text)
            .map_err(|e| ConnectorError::Parse {
                origin: self.origin.to_string(),
                source: crate::error::ParseError::Link(format!(
                    "{}: {e}",
                    snippet(text.as_bytes(), 120)
                )),
            })?;
        if !crate::http::same_origin(&url, self.origin) {
            return Err(ConnectorError::OffOrigin {
                origin: self.origin.to_string(),
                url: snippet(text.as_bytes(), 200),
            });
        }
        Ok(url)
    }

    pub fn parse_error(&self, source: crate::error::ParseError) -> ConnectorError {
        ConnectorError::Parse {
            origin: self.origin.to_string(),
            source,
        }
    }

    /// The access token of the client-credentials flow: cached until a minute before it
    /// expires; fetched with the client secret (read again each time) from `token_url`.
    async fn access_token(&mut self) -> Result<String, ConnectorError> {
        if let Some((token, until)) = &self.memory.access_token
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let Some(oauth) = &self.settings.oauth else {
            return Err(ConnectorError::Config("no client credentials".into()));
        };
        let secret = self.settings.secret.read()?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", &oauth.client_id)
            .append_pair("client_secret", &secret)
            .append_pair("scope", &oauth.scope)
            .finish();
        let origin = oauth.token_url.origin().ascii_serialization();
        self.memory.token_requests += 1;
        let resp = self
            .http
            .send_body(
                Method::POST,
                &oauth.token_url,
                &origin,
                None,
                Some(form),
                self.limits.request_timeout,
            )
            .await?;
        if resp.status != 200 {
            return Err(ConnectorError::Unauthorized {
                origin,
                status: resp.status,
                reason: vendor_reason(&resp.body),
            });
        }
        let v: serde_json::Value =
            serde_json::from_slice(&resp.body).map_err(|e| ConnectorError::Parse {
                origin: origin.clone(),
                source: crate::error::ParseError::Json(e.to_string()),
            })?;
        let token = v
            .get("access_token")
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty() && t.len() <= 16 * 1024 && !t.chars().any(char::is_control))
            .ok_or(ConnectorError::Parse {
                origin: origin.clone(),
                source: crate::error::ParseError::Missing("access_token"),
            })?
            .to_string();
        let lifetime = v
            .get("expires_in")
            .and_then(|e| e.as_u64().or_else(|| e.as_str()?.parse().ok()))
            .unwrap_or(300)
            .clamp(60, 86_400);
        let until = Instant::now() + Duration::from_secs(lifetime - 30);
        self.memory.access_token = Some((token.clone(), until));
        Ok(token)
    }

    async fn authorization(&mut self) -> Result<String, ConnectorError> {
        if self.settings.oauth.is_some() {
            return Ok(format!("Bearer {}", self.access_token().await?));
        }
        let token = self.settings.secret.read()?;
        Ok(match self.settings.kind {
            // Okta API tokens are `SSWS`; an OAuth access token is given as "Bearer ...".
            Kind::Okta if !token.starts_with("Bearer ") => format!("SSWS {token}"),
            _ if token.starts_with("Bearer ") => token,
            _ => format!("Bearer {token}"),
        })
    }

    async fn sleep(&self, d: Duration) {
        let d = self.limits.scaled(d.min(self.limits.max_wait));
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    /// GET `url`. `with_cursor`: the request carries a stored cursor, so a 400/404/410/422
    /// means the cursor expired.
    pub async fn get(&mut self, url: &Url, with_cursor: bool) -> Result<Response, ConnectorError> {
        self.request(Method::GET, url, with_cursor).await
    }

    pub async fn request(
        &mut self,
        method: Method,
        url: &Url,
        with_cursor: bool,
    ) -> Result<Response, ConnectorError> {
        let origin = self.origin.to_string();
        let mut last = String::new();
        let attempts = self.limits.max_attempts.max(1);
        let mut fresh_token = false;
        for attempt in 0..attempts {
            if let Some(at) = *self.not_before {
                tokio::time::sleep_until(at).await;
                *self.not_before = None;
            }
            let auth = self.authorization().await?;
            let sent = {
                let _permit = self
                    .gate
                    .acquire()
                    .await
                    .map_err(|_| ConnectorError::Config("tenant gate closed".into()))?;
                self.status.requests += 1;
                self.http
                    .send(
                        method.clone(),
                        url,
                        &origin,
                        &auth,
                        self.limits.request_timeout,
                    )
                    .await
            };
            let resp = match sent {
                Ok(r) => r,
                Err(e @ ConnectorError::OffOrigin { .. }) => return Err(e),
                Err(e) => {
                    last = e.to_string();
                    self.status.retries += 1;
                    self.sleep(throttle::backoff(attempt, self.limits)).await;
                    continue;
                }
            };
            let wall = SystemTime::now();
            if let Some(w) = throttle::reset_wait(&resp.headers, wall, false) {
                *self.not_before =
                    Some(Instant::now() + self.limits.scaled(w.min(self.limits.max_wait)));
            }
            let status = resp.status;
            let reason = || vendor_reason(&resp.body);
            let limited = status == 429
                || (status == 403
                    && self.settings.kind == Kind::Github
                    && throttle::github_403_is_limit(&resp.headers, &resp.body));
            if limited {
                self.status.throttled += 1;
                let wait = throttle::retry_after(&resp.headers, wall)
                    .or_else(|| throttle::reset_wait(&resp.headers, wall, true))
                    .unwrap_or_else(|| {
                        let b = throttle::backoff(attempt, self.limits);
                        if status == 403 {
                            b.max(self.limits.secondary_min)
                        } else {
                            b
                        }
                    });
                // Never earlier than asked; a little later so that clients sharing a quota
                // do not come back in the same instant.
                let wait = wait.mul_f64(1.0 + fastrand::f64() * 0.1);
                last = format!("{status} (throttled)");
                *self.not_before = None;
                let real = self.limits.scaled(wait.min(self.limits.max_wait));
                self.status.throttled_until = chrono::Duration::from_std(real)
                    .ok()
                    .map(|d| Utc::now() + d);
                if let Some(hook) = self.hook {
                    hook(self.status);
                }
                self.sleep(wait).await;
                continue;
            }
            match status {
                200..=299 => return Ok(resp),
                // An access token the vendor no longer takes: fetch a new one, once.
                401 if self.settings.oauth.is_some() && !fresh_token => {
                    fresh_token = true;
                    self.memory.access_token = None;
                    last = "401 (access token refused)".into();
                    continue;
                }
                401 | 403 => {
                    return Err(ConnectorError::Unauthorized {
                        origin,
                        status,
                        reason: reason(),
                    });
                }
                500..=599 => {
                    last = format!("{status}: {}", reason());
                    self.status.retries += 1;
                    self.sleep(throttle::backoff(attempt, self.limits)).await;
                    continue;
                }
                400 | 404 | 410 | 422 if with_cursor => {
                    return Err(ConnectorError::CursorExpired {
                        origin,
                        status,
                        reason: reason(),
                    });
                }
                _ => {
                    return Err(ConnectorError::Status {
                        origin,
                        status,
                        reason: reason(),
                    });
                }
            }
        }
        Err(ConnectorError::GaveUp {
            origin,
            attempts,
            last,
        })
    }
}

/// The start of an error body, escaped.
fn vendor_reason(body: &[u8]) -> String {
    snippet(body, 200)
}

impl Connector {
    /// Runs a governance call against the vendor for `user` (an id or login; it is one path
    /// segment, percent-encoded, so it cannot reach another endpoint). A call the vendor's
    /// API does not offer is refused without a request.
    pub async fn govern(
        &mut self,
        action: GovernanceCall,
        user: &str,
    ) -> Result<(), ConnectorError> {
        if user.is_empty()
            || user == "."
            || user == ".."
            || user.len() > 256
            || user.chars().any(char::is_control)
        {
            return Err(ConnectorError::Config(format!(
                "governance: bad user {:?}",
                snippet(user.as_bytes(), 64)
            )));
        }
        let (method, segments): (Method, Vec<&str>) = match (self.settings.kind, action) {
            (Kind::Okta, GovernanceCall::SuspendUser) => (
                Method::POST,
                vec!["api", "v1", "users", user, "lifecycle", "suspend"],
            ),
            (Kind::Okta, GovernanceCall::RevokeSessions) => {
                (Method::DELETE, vec!["api", "v1", "users", user, "sessions"])
            }
            (Kind::Github, GovernanceCall::SuspendUser) => {
                (Method::PUT, vec!["users", user, "suspended"])
            }
            (kind, action) => {
                return Err(ConnectorError::Config(format!(
                    "governance: {kind} does not offer {action:?} through this API"
                )));
            }
        };
        let mut url = self.settings.base_url.clone();
        url.path_segments_mut()
            .map_err(|_| ConnectorError::Config("base_url cannot carry a path".into()))?
            .pop_if_empty()
            .extend(segments);
        let now = (self.options.clock)();
        let mut ctx = self.ctx(now);
        ctx.request(method, &url, false).await.map(|_| ())
    }
}
