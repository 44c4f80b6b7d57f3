//! The web console, served by the hub under `/console/` on its HTTPS port: fleet, Cloud
//! Discovery (a date range, a site, drill-down from app to users and from user to apps, a
//! traffic chart), the catalog (search, an app's risk breakdown, tag it: which publishes an
//! every-site bundle), alerts (queue, detail with the proving activities, resolve, dismiss),
//! policies (list, enable or disable: again a bundle), and the audit trail.
//!
//! Security model, since the console can unsanction apps for the whole fleet:
//! - Local accounts (`tollgate-hub user add`), argon2id hashes, roles `admin` and
//!   `read-only`. Failed logins are counted per client address; past [`MAX_FAILURES`] in
//!   [`FAILURE_WINDOW_SECS`] the address gets 429 until the window ends.
//! - A session cookie `tg_console` (`Secure; HttpOnly; SameSite=Strict; Path=/console`),
//!   whose token the database stores only as a SHA-256, expiring after [`SESSION_SECS`].
//! - Every state change is a POST that must carry the session's CSRF token and come from this
//!   origin (`Origin`, else `Referer`); a read-only account gets 403.
//! - Pages escape every string (app names, user names and alert reasons come from the
//!   network), and a strict Content-Security-Policy allows only the console's own scripts
//!   and styles, all built into the binary (no CDN).
//! - Scripts use the admin API (`/v1/admin/*`) with the admin token or an account's API token
//!   ([`tokens`]), not the console. An API token is never a session: the console reads only
//!   its cookie, looked up in the sessions table, and ignores `Authorization`.

mod pages;
pub mod store;
pub mod tokens;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{LazyLock, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use subtle::ConstantTimeEq;
use tollgate_console_kit::{Answer, Headers, cookie, query};

use crate::server::State;
use store::{Range, Role, Session};

/// The session cookie's name.
pub const COOKIE: &str = "tg_console";
/// How long a login lasts.
pub const SESSION_SECS: i64 = 8 * 3600;
/// Failed logins an address may make within [`FAILURE_WINDOW_SECS`].
pub const MAX_FAILURES: u32 = 10;
pub const FAILURE_WINDOW_SECS: i64 = 300;
/// The largest form the console reads.
const MAX_FORM: usize = 16 * 1024;
/// Addresses with failed logins remembered at most (then the oldest window is forgotten).
const MAX_TRACKED: usize = 10_000;

static FAILURES: LazyLock<Mutex<HashMap<IpAddr, (u32, i64)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

const STYLE: &str = include_str!("../../console/style.css");
const SCRIPT: &str = include_str!("../../console/console.js");
const UPLOT_JS: &str = include_str!("../../console/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../console/vendor/uPlot.min.css");

/// The security headers of every answer: only the console's own scripts and styles.
const HEADERS: Headers = Headers {
    csp: "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
          connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    referrer_policy: "same-origin",
};

fn page(status: StatusCode, html: String) -> Answer {
    HEADERS.page(status, html)
}

fn redirect(to: &str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    HEADERS.secure(&mut r);
    r
}

fn asset(body: &'static str, kind: &'static str) -> Answer {
    HEADERS.asset(body, kind, "public, max-age=3600")
}

fn error(status: StatusCode, message: &str, session: Option<&Session>) -> Answer {
    page(status, pages::message(session, status.as_str(), message))
}

fn unavailable(e: impl std::fmt::Display, session: Option<&Session>) -> Answer {
    tracing::warn!(error = %e, "console: database error");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "The hub's database is unavailable.",
        session,
    )
}

/// Whether a state change comes from the console's own pages: `Origin` (or, without it,
/// `Referer`) names this host over https.
fn same_origin(req: &Request<Incoming>) -> bool {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let origin = format!("https://{host}");
    if let Some(o) = req.headers().get(header::ORIGIN) {
        return o.to_str().is_ok_and(|o| o == origin);
    }
    req.headers()
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|r| r.starts_with(&format!("{origin}/")))
}

async fn read_form(req: Request<Incoming>) -> Result<HashMap<String, String>, Answer> {
    let body = Limited::new(req.into_body(), MAX_FORM)
        .collect()
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "The form is too large.",
                None,
            )
        })?
        .to_bytes();
    Ok(form_urlencoded::parse(&body).into_owned().collect())
}

fn days_of(q: &HashMap<String, String>) -> i64 {
    q.get("days")
        .and_then(|d| d.parse::<i64>().ok())
        .filter(|d| [1, 7, 30, 90].contains(d))
        .unwrap_or(7)
}

fn range_of(q: &HashMap<String, String>) -> Range {
    Range {
        since: crate::db::now() - days_of(q) * 86_400,
        site: q.get("site").filter(|s| !s.is_empty()).cloned(),
    }
}

/// Whether the address may try a login now.
fn may_try(ip: IpAddr) -> bool {
    let now = crate::db::now();
    let Ok(f) = FAILURES.lock() else { return false };
    f.get(&ip)
        .is_none_or(|(n, since)| *n < MAX_FAILURES || now - since > FAILURE_WINDOW_SECS)
}

fn failed(ip: IpAddr) {
    let now = crate::db::now();
    let Ok(mut f) = FAILURES.lock() else { return };
    if f.len() >= MAX_TRACKED && !f.contains_key(&ip) {
        f.retain(|_, (_, since)| now - *since <= FAILURE_WINDOW_SECS);
        if f.len() >= MAX_TRACKED {
            f.clear();
        }
    }
    let e = f.entry(ip).or_insert((0, now));
    if now - e.1 > FAILURE_WINDOW_SECS {
        *e = (0, now);
    }
    e.0 += 1;
}

/// A password hash in PHC format (argon2id with the crate's defaults).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash to verify against when the account does not exist, so that a login for an unknown
/// name takes as long as one with a wrong password.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("not a password").unwrap_or_default());

pub async fn handle(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/console/assets/style.css") => {
            return asset(STYLE, "text/css; charset=utf-8");
        }
        (&Method::GET, "/console/assets/console.js") => {
            return asset(SCRIPT, "text/javascript; charset=utf-8");
        }
        (&Method::GET, "/console/assets/uPlot.iife.min.js") => {
            return asset(UPLOT_JS, "text/javascript; charset=utf-8");
        }
        (&Method::GET, "/console/assets/uPlot.min.css") => {
            return asset(UPLOT_CSS, "text/css; charset=utf-8");
        }
        (&Method::GET, "/console/login") => {
            return page(StatusCode::OK, pages::login(None));
        }
        (&Method::POST, "/console/login") => return login(state, peer, req).await,
        _ => {}
    }
    let token = cookie(req.headers(), COOKIE).map(str::to_string);
    let session = match &token {
        Some(t) => match state.db.console_session(t).await {
            Ok(s) => s,
            Err(e) => return unavailable(e, None),
        },
        None => None,
    };
    let Some(session) = session else {
        if method == Method::GET {
            return redirect("/console/login");
        }
        return error(StatusCode::UNAUTHORIZED, "Log in first.", None);
    };
    if method == Method::POST {
        if !same_origin(&req) {
            tracing::info!(%peer, path, user = %session.user, "console: cross-origin POST refused");
            return error(
                StatusCode::FORBIDDEN,
                "This change did not come from the console's own page.",
                Some(&session),
            );
        }
        let form = match read_form(req).await {
            Ok(f) => f,
            Err(a) => return a,
        };
        let presented = form.get("csrf").map_or("", String::as_str);
        if !bool::from(presented.as_bytes().ct_eq(session.csrf.as_bytes())) {
            tracing::info!(%peer, path, user = %session.user, "console: POST without its CSRF token refused");
            return error(
                StatusCode::FORBIDDEN,
                "The form's token is missing or stale: reload the page.",
                Some(&session),
            );
        }
        if path == "/console/logout" {
            if let Some(t) = &token
                && let Err(e) = state.db.console_session_end(t).await
            {
                return unavailable(e, Some(&session));
            }
            let mut r = redirect("/console/login");
            r.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_static(
                    "tg_console=; Path=/console; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
                ),
            );
            return r;
        }
        if session.role != Role::Admin {
            return error(
                StatusCode::FORBIDDEN,
                "A read-only account cannot change anything.",
                Some(&session),
            );
        }
        return change(state, &session, &path, &form).await;
    }
    if method != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Not allowed.",
            Some(&session),
        );
    }
    let q = query(req.uri());
    view(state, &session, &path, &q).await
}

async fn login(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Answer {
    if !same_origin(&req) {
        return error(
            StatusCode::FORBIDDEN,
            "Log in from the console's own page.",
            None,
        );
    }
    let ip = peer.ip();
    if !may_try(ip) {
        tracing::warn!(%peer, "console: too many failed logins");
        return page(
            StatusCode::TOO_MANY_REQUESTS,
            pages::login(Some(
                "Too many failed logins from this address; wait a few minutes.",
            )),
        );
    }
    let form = match read_form(req).await {
        Ok(f) => f,
        Err(a) => return a,
    };
    let name = form.get("name").cloned().unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    let account = match state.db.console_user(&name).await {
        Ok(a) => a,
        Err(e) => return unavailable(e, None),
    };
    let (role, hash) = account
        .clone()
        .unwrap_or((Role::ReadOnly, DUMMY_HASH.clone()));
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false)
        && account.is_some();
    if !ok {
        failed(ip);
        tracing::info!(%peer, "console: failed login");
        return page(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("Wrong name or password.")),
        );
    }
    let (token, _) = match state
        .db
        .console_session_start(&name, role, SESSION_SECS)
        .await
    {
        Ok(s) => s,
        Err(e) => return unavailable(e, None),
    };
    let _ = state
        .db
        .audit_hub(
            "console_login",
            None,
            &format!("{name} logged in from {ip}"),
        )
        .await;
    let mut r = redirect("/console/fleet");
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/console; Secure; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn view(state: &State, s: &Session, path: &str, q: &HashMap<String, String>) -> Answer {
    let db = &state.db;
    let cat = state.catalog.as_ref();
    let html = match path {
        "/console" | "/console/" => return redirect("/console/fleet"),
        "/console/fleet" => match db.gateways().await {
            Ok(g) => pages::fleet(s, &g),
            Err(e) => return unavailable(e, Some(s)),
        },
        "/console/discovery" => {
            let range = range_of(q);
            let (apps, hours, sites) = match tokio::try_join!(
                db.discovery_totals(&range),
                db.traffic_by_hour(&range, None),
                db.sites()
            ) {
                Ok(x) => x,
                Err(e) => return unavailable(e, Some(s)),
            };
            pages::discovery(
                s,
                cat,
                &apps,
                &hours,
                &sites,
                days_of(q),
                range.site.as_deref(),
            )
        }
        "/console/discovery/app" => {
            let Some(id) = q.get("id") else {
                return error(StatusCode::BAD_REQUEST, "Which app?", Some(s));
            };
            let range = range_of(q);
            let (users, hours) = match tokio::try_join!(
                db.discovery_drill(&range, Some(id), None),
                db.traffic_by_hour(&range, Some(id))
            ) {
                Ok(x) => x,
                Err(e) => return unavailable(e, Some(s)),
            };
            pages::discovery_app(
                s,
                cat,
                id,
                &users,
                &hours,
                days_of(q),
                range.site.as_deref(),
            )
        }
        "/console/discovery/user" => {
            let Some(name) = q.get("name") else {
                return error(StatusCode::BAD_REQUEST, "Which user?", Some(s));
            };
            let range = range_of(q);
            match db.discovery_drill(&range, None, Some(name)).await {
                Ok(apps) => {
                    pages::discovery_user(s, cat, name, &apps, days_of(q), range.site.as_deref())
                }
                Err(e) => return unavailable(e, Some(s)),
            }
        }
        "/console/catalog" => pages::catalog(s, cat, q.get("q").map_or("", String::as_str)),
        "/console/catalog/app" => {
            let id = q.get("id").map_or("", String::as_str);
            let detail = cat.and_then(|c| tollgate_catalog::views::show(c, id));
            let Some(detail) = detail else {
                return error(
                    StatusCode::NOT_FOUND,
                    "No such app in the catalog.",
                    Some(s),
                );
            };
            let tag = match db.latest_every_site_policy().await {
                Ok(p) => p.and_then(|(_, text)| bundle_tag(&text, id)),
                Err(e) => return unavailable(e, Some(s)),
            };
            pages::catalog_app(
                s,
                &detail,
                tag.as_deref(),
                q.get("published").map(String::as_str),
            )
        }
        "/console/alerts" => match crate::alerting::all_alerts(&state.config.state_dir, db).await {
            Ok(all) => pages::alerts(s, &all),
            Err(e) => return unavailable(e, Some(s)),
        },
        "/console/alerts/show" => {
            let r = q.get("ref").map_or("", String::as_str);
            match crate::alerting::all_alerts(&state.config.state_dir, db).await {
                Ok(all) => match all.iter().find(|a| a["ref"].as_str() == Some(r)) {
                    Some(a) => pages::alert(s, a),
                    None => return error(StatusCode::NOT_FOUND, "No such alert.", Some(s)),
                },
                Err(e) => return unavailable(e, Some(s)),
            }
        }
        "/console/policies" => match db.latest_every_site_policy().await {
            Ok(p) => pages::policies(s, p.as_ref().map(|(r, t)| (*r, t.as_str()))),
            Err(e) => return unavailable(e, Some(s)),
        },
        "/console/audit" => match db.audit(500).await {
            Ok(a) => pages::audit(s, &a),
            Err(e) => return unavailable(e, Some(s)),
        },
        _ => return error(StatusCode::NOT_FOUND, "No such page.", Some(s)),
    };
    page(StatusCode::OK, html)
}

/// The tag the newest every-site bundle gives an app.
fn bundle_tag(policy: &str, app: &str) -> Option<String> {
    let t: toml::Table = policy.parse().ok()?;
    t.get("apps")?
        .get(app)?
        .get("tag")?
        .as_str()
        .map(str::to_string)
}

/// A state change (admin, same origin, CSRF checked).
async fn change(state: &State, s: &Session, path: &str, form: &HashMap<String, String>) -> Answer {
    let get = |k: &str| form.get(k).map_or("", String::as_str);
    match path {
        "/console/catalog/tag" => {
            let id = get("id");
            let tag = get("tag");
            if !["sanctioned", "unsanctioned", "monitored"].contains(&tag) {
                return error(StatusCode::BAD_REQUEST, "Not a tag.", Some(s));
            }
            if state.catalog.as_ref().and_then(|c| c.app(id)).is_none() {
                return error(
                    StatusCode::NOT_FOUND,
                    "No such app in the catalog.",
                    Some(s),
                );
            }
            let result = edit_bundle(state, s, &format!("tagged {id} {tag}"), |t| {
                let apps = t
                    .entry("apps")
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(apps) = apps else {
                    return Err("the bundle's apps section is not a table".into());
                };
                let app = apps
                    .entry(id)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(app) = app else {
                    return Err("the bundle's app entry is not a table".into());
                };
                app.insert("tag".into(), toml::Value::String(tag.into()));
                Ok(())
            })
            .await;
            match result {
                Ok(revision) => redirect(&format!(
                    "/console/catalog/app?id={}&published={revision}",
                    form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
                )),
                Err(a) => a,
            }
        }
        "/console/policies/enabled" => {
            let (kind, name) = (get("kind"), get("name"));
            if !["activity_policies", "app_discovery_policies"].contains(&kind) {
                return error(StatusCode::BAD_REQUEST, "Not a policy list.", Some(s));
            }
            let enabled = get("enabled") == "true";
            let result = edit_bundle(
                state,
                s,
                &format!(
                    "{} {kind} {name:?}",
                    if enabled { "enabled" } else { "disabled" }
                ),
                |t| {
                    let Some(toml::Value::Array(list)) = t.get_mut(kind) else {
                        return Err("no such policy in the newest every-site bundle".into());
                    };
                    let p = list
                        .iter_mut()
                        .filter_map(toml::Value::as_table_mut)
                        .find(|p| p.get("name").and_then(toml::Value::as_str) == Some(name))
                        .ok_or("no such policy in the newest every-site bundle")?;
                    p.insert("enabled".into(), toml::Value::Boolean(enabled));
                    Ok(())
                },
            )
            .await;
            match result {
                Ok(_) => redirect("/console/policies"),
                Err(a) => a,
            }
        }
        "/console/alerts/status" => {
            let status = match get("status") {
                "resolved" => tollgate_activity::AlertStatus::Resolved,
                "dismissed" => tollgate_activity::AlertStatus::Dismissed,
                "open" => tollgate_activity::AlertStatus::Open,
                _ => return error(StatusCode::BAD_REQUEST, "Not a status.", Some(s)),
            };
            let comment = Some(get("comment")).filter(|c| !c.is_empty());
            let r = get("ref");
            match crate::alerting::set_status(
                &state.config.state_dir,
                &state.db,
                r,
                status,
                comment,
                &format!("console user {}", s.user),
            )
            .await
            {
                Ok(_) => redirect(&format!(
                    "/console/alerts/show?ref={}",
                    form_urlencoded::byte_serialize(r.as_bytes()).collect::<String>()
                )),
                Err(e) => error(StatusCode::NOT_FOUND, &format!("{e:#}"), Some(s)),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "No such action.", Some(s)),
    }
}

/// Publishes a new every-site bundle: the newest one's policy, changed by `edit`.
async fn edit_bundle(
    state: &State,
    s: &Session,
    what: &str,
    edit: impl FnOnce(&mut toml::Table) -> Result<(), String>,
) -> Result<i64, Answer> {
    let current = state
        .db
        .latest_every_site_policy()
        .await
        .map_err(|e| unavailable(e, Some(s)))?;
    let mut table: toml::Table = match &current {
        Some((_, text)) => text.parse().map_err(|_| {
            error(
                StatusCode::CONFLICT,
                "The newest every-site bundle is not valid TOML; publish one with the CLI.",
                Some(s),
            )
        })?,
        None => toml::Table::new(),
    };
    edit(&mut table).map_err(|e| error(StatusCode::CONFLICT, &e, Some(s)))?;
    let policy = toml::to_string(&table).map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("writing the bundle: {e}"),
            Some(s),
        )
    })?;
    crate::validate_policy(&policy).map_err(|e| error(StatusCode::CONFLICT, &e, Some(s)))?;
    let revision = crate::server::publish(state, None, &policy)
        .await
        .map_err(|e| unavailable(e, Some(s)))?;
    let _ = state
        .db
        .audit_hub(
            "console_publish",
            None,
            &format!(
                "{} {what}: bundle revision {revision} for every site",
                s.user
            ),
        )
        .await;
    Ok(revision)
}
