//! The gateway's read-only local web console (`[console] listen`): Overview, Cloud
//! Discovery, Alerts and Activity, server-rendered from the same control requests the CLI
//! sends (`Status`, `Apps`, `Alerts`, `AlertShow`, `Activity`). It changes nothing: every
//! action stays with the CLI (`tollgate alerts resolve ID`, `tollgate app tag`).
//!
//! Security model: the console shows users' names and what they did, and the gateway has no
//! accounts, so
//! - it listens on loopback only (the config refuses anything else; admins reach it with
//!   `ssh -L`);
//! - other local users must not read it either: each start of the daemon writes a new random
//!   token to `<state_dir>/console-token` (0600, root's), `tollgate console` prints the URL
//!   with it, and `GET /?token=T` (compared in constant time) sets the cookie
//!   `tg_gw_console` (`HttpOnly; SameSite=Strict; Path=/`) and redirects to `/`. Without the
//!   cookie every page is 401;
//! - GET (and HEAD) only, 405 for anything else; no request body is read;
//! - every string on a page is escaped (app names, user names, alert reasons and objects
//!   come from the network), a strict Content-Security-Policy allows only the console's own
//!   stylesheet (no script at all), and pages may not be framed;
//! - bounded like `/metrics` ([`tollgate_metrics::Limits`]): connections at once, the size of
//!   a request head, the time to send it, a connection's lifetime.

mod pages;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri, header};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tollgate_console_kit::{Answer, Headers, cookie, query};

use crate::control::{self, Handler, Reply, Request};

/// The cookie that carries the token after the first visit.
pub const COOKIE: &str = "tg_gw_console";
/// The token's file in state_dir.
pub const TOKEN_FILE: &str = "console-token";
/// Activities shown at most on the Activity page (the newest).
pub const ACTIVITY_LIMIT: usize = 500;
/// The largest answer read from the daemon for one page.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// The stylesheet is the hub console's own file, built in from where the hub keeps it, so
/// the two consoles look alike and there is one copy to maintain.
const STYLE: &str = include_str!("../../../hub/console/style.css");

/// The token file of `state_dir`.
pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join(TOKEN_FILE)
}

/// 32 random bytes from the system, as hex.
pub fn new_token() -> Result<String> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("the system's random number generator failed"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Makes a new token and writes it to `<state_dir>/console-token`, mode 0600: written to a
/// fresh file (never through an existing path or symlink), then renamed over the old one.
pub fn write_token(state_dir: &Path) -> Result<String> {
    let token = new_token()?;
    tollgate_activity::alert::write_atomic(state_dir, TOKEN_FILE, format!("{token}\n").as_bytes())
        .with_context(|| format!("writing {}", token_path(state_dir).display()))?;
    Ok(token)
}

/// The token the running daemon wrote.
pub fn read_token(state_dir: &Path) -> Result<String> {
    let path = token_path(state_dir);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is `tollgate run` running with [console] listen set, and are you root?)",
            path.display()
        )
    })?;
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{} does not hold a console token", path.display());
    }
    Ok(token.to_string())
}

/// The URL that logs a browser in.
pub fn login_url(listen: SocketAddr, token: &str) -> String {
    format!("http://{listen}/?token={token}")
}

/// Binds `addr` and serves the console until the task is dropped.
pub async fn start<H: Handler>(
    addr: SocketAddr,
    token: String,
    handler: Arc<H>,
) -> Result<tokio::task::JoinHandle<()>> {
    if !addr.ip().is_loopback() {
        bail!("[console] listen = \"{addr}\" is not a loopback address");
    }
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding [console] listen = \"{addr}\""))?;
    Ok(tokio::spawn(serve(
        listener,
        tollgate_metrics::Limits::default(),
        Arc::from(token),
        handler,
    )))
}

/// Serves the console on `listener` until the task is dropped.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    limits: tollgate_metrics::Limits,
    token: Arc<str>,
    handler: Arc<H>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "console accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "console: connection refused, all slots busy");
            drop(tcp);
            continue;
        };
        let (token, handler) = (token.clone(), handler.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let (token, handler) = (token.clone(), handler.clone());
                async move {
                    let (parts, _body) = req.into_parts();
                    let r =
                        respond(&parts.method, &parts.uri, &parts.headers, &token, &*handler).await;
                    Ok::<_, Infallible>(r)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_head_bytes.max(8192))
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(limits.lifetime, conn).await;
            drop(slot);
        });
    }
}

/// The security headers of every answer: only the console's own stylesheet, no script at all.
const HEADERS: Headers = Headers {
    csp: "default-src 'self'; img-src 'self' data:; script-src 'none'; object-src 'none'; \
          form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    referrer_policy: "no-referrer",
};

fn page(status: StatusCode, html: String) -> Answer {
    HEADERS.page(status, html)
}

fn message(status: StatusCode, title: &str, text: &str) -> Answer {
    page(status, pages::message(title, text))
}

/// The request's Host names this machine's loopback (any port: `ssh -L` may pick another);
/// a request without a Host header (HTTP/1.0) is let through to the token check.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn same(given: &str, token: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// One control request's data, or the daemon's error as text.
async fn ask<H: Handler>(h: &H, req: Request) -> Result<serde_json::Value, String> {
    match h.handle(req).await {
        Reply::Whole(r) if r.ok => Ok(r.data),
        Reply::Whole(r) => Err(r.error.unwrap_or_else(|| "no reason given".into())),
        Reply::Pieces(p) => serde_json::from_slice(&p.concat()).map_err(|e| e.to_string()),
        Reply::Stream(mut rx) => {
            let mut all = Vec::new();
            loop {
                match tokio::time::timeout(control::STREAM_TIMEOUT, rx.recv()).await {
                    Ok(Some(piece)) => {
                        all.extend_from_slice(&piece);
                        if all.len() > MAX_ANSWER {
                            return Err("the daemon's answer is too large".into());
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return Err("the daemon stopped answering".into()),
                }
            }
            serde_json::from_slice(&all).map_err(|e| e.to_string())
        }
    }
}

/// The answer to one request (no body is read: the console is GET only).
pub async fn respond<H: Handler>(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    token: &str,
    h: &H,
) -> Answer {
    if method != Method::GET && method != Method::HEAD {
        let mut r = message(
            StatusCode::METHOD_NOT_ALLOWED,
            "Read-only",
            "This console only reads (GET). Change things with the tollgate command line.",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    // DNS rebinding (a site whose name resolves to 127.0.0.1) would find no cookie anyway;
    // refusing other host names also keeps the console out of such a page's reach.
    if !loopback_host(headers) {
        return message(
            StatusCode::MISDIRECTED_REQUEST,
            "Wrong host name",
            "Open the console as http://127.0.0.1:PORT/ (or localhost, [::1]): the URL \
             `tollgate console` prints.",
        );
    }
    let path = uri.path();
    let q = query(uri);
    // Logging in: the token from `tollgate console`'s URL becomes the cookie.
    if let Some(given) = q.get("token") {
        if !same(given, token) {
            tracing::info!("console: a wrong token was refused");
            return unauthorized();
        }
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SEE_OTHER;
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/"));
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
        )) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        HEADERS.secure(&mut r);
        return r;
    }
    if path == "/assets/style.css" {
        // The stylesheet is no secret, and the 401 page uses it too.
        return HEADERS.asset(STYLE, "text/css; charset=utf-8", "max-age=3600");
    }
    if !cookie(headers, COOKIE).is_some_and(|c| same(c, token)) {
        return unauthorized();
    }
    let fail = |e: String| {
        message(
            StatusCode::SERVICE_UNAVAILABLE,
            "The daemon did not answer",
            &e,
        )
    };
    match path {
        "/" => match ask(h, Request::Status).await {
            Ok(st) => page(StatusCode::OK, pages::overview(&st)),
            Err(e) => fail(e),
        },
        "/discovery" => match ask(h, Request::Apps).await {
            Ok(apps) => match q.get("app").filter(|a| !a.is_empty()) {
                Some(app) => page(StatusCode::OK, pages::app(&apps, app)),
                None => page(StatusCode::OK, pages::discovery(&apps)),
            },
            Err(e) => fail(e),
        },
        "/alerts" => match ask(h, Request::Alerts).await {
            Ok(a) => page(StatusCode::OK, pages::alerts(&a)),
            Err(e) => fail(e),
        },
        "/activity" => {
            let pick = |k: &str| {
                q.get(k)
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
            };
            let query = crate::alerting::ActivityQuery {
                since: None,
                user: pick("user"),
                app: pick("app"),
                limit: Some(ACTIVITY_LIMIT),
            };
            match ask(
                h,
                Request::Activity {
                    query: query.clone(),
                },
            )
            .await
            {
                Ok(a) => page(StatusCode::OK, pages::activity(&a, &query)),
                Err(e) => fail(e),
            }
        }
        _ => match path.strip_prefix("/alerts/").map(str::parse::<u64>) {
            Some(Ok(id)) => match ask(h, Request::AlertShow { id }).await {
                Ok(a) => page(StatusCode::OK, pages::alert(&a)),
                Err(e) => message(StatusCode::NOT_FOUND, "No such alert", &e),
            },
            _ => message(
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such page on this console.",
            ),
        },
    }
}

fn unauthorized() -> Answer {
    page(StatusCode::UNAUTHORIZED, pages::unauthorized())
}

#[cfg(test)]
mod tests;
