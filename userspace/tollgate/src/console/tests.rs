use super::*;
use crate::control::Response;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const HOSTILE: &str = "<script>alert(1)</script>";

/// A daemon that answers with hostile names everywhere.
struct Fake;
impl Handler for Fake {
    async fn handle(&self, req: Request) -> Reply {
        let act = json!({
            "id": 7, "time": "2026-01-02T03:04:05Z", "user": HOSTILE, "ip": "10.0.0.5",
            "app": "dropbox", "activity": "upload", "object": "<img src=x onerror=alert(2)>",
            "result": "success", "source": "proxy",
        });
        let data = match req {
            Request::Status => json!({
                "mode": "monitor", "started_at": "2026-01-02T03:04:05Z", "uptime_secs": 3725,
                "flows": 42, "named_flows": 40, "events": 9, "kernel_events": 9,
                "hub": {"url": "https://hub\"><script>x</script>", "connected": true,
                        "gateway_id": "g1", "site": "paris", "bundle_revision": 3},
                "activity": {"alerts": 1, "alerts_open": 1},
            }),
            Request::Apps => json!({
                "apps": [{"id": "dropbox", "name": format!("Drop{HOSTILE}"), "category": "storage",
                          "risk_score": 3.5, "tag": null, "bytes_up": 1000, "bytes_down": 2_000_000,
                          "transactions": 5, "users": 1, "ips": 1,
                          "first_seen": "2026-01-02T03:04:05Z", "last_seen": "2026-01-02T03:05:05Z"}],
                "users": [{"user": HOSTILE, "kind": "user", "devices": [], "ips": [], "apps": 1,
                           "top_apps": ["dropbox"], "bytes_up": 1, "bytes_down": 2, "transactions": 1,
                           "first_seen": "2026-01-02T03:04:05Z", "last_seen": "2026-01-02T03:05:05Z"}],
                "totals": {"transactions": 5},
            }),
            Request::Alerts => json!({"alerts": [{
                "id": 1, "time": "2026-01-02T03:04:05Z", "last_seen": "2026-01-02T03:04:05Z",
                "severity": "high", "policy": "mass upload", "entities": {"user": HOSTILE, "app": "dropbox"},
                "reason": format!("reason {HOSTILE}"), "activities": [act], "status": "open", "count": 1,
            }]}),
            Request::AlertShow { id: 1 } => json!({"alert": {
                "id": 1, "time": "2026-01-02T03:04:05Z", "last_seen": "2026-01-02T03:04:05Z",
                "severity": "high", "policy": "mass upload", "entities": {"user": HOSTILE, "app": "dropbox"},
                "reason": format!("reason {HOSTILE}"), "activities": [act], "status": "open", "count": 1,
            }}),
            Request::AlertShow { id } => return Response::err(format!("no alert {id}")).into(),
            Request::Activity { query } => {
                // Echo the filter back so that the test sees it arrived.
                let mut a = act.clone();
                if let Some(app) = query.app {
                    a["app"] = app.into();
                }
                json!({"activities": [a], "skipped_lines": 0})
            }
            _ => return Response::err("not here").into(),
        };
        Response::ok(data).into()
    }
}

async fn start() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        tollgate_metrics::Limits::default(),
        Arc::from(TOKEN),
        Arc::new(Fake),
    ));
    addr
}

/// One request on a fresh connection; the whole answer (head and body).
async fn raw(addr: std::net::SocketAddr, head: &str) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn get(addr: std::net::SocketAddr, path: &str, cookie: Option<&str>) -> String {
    let cookie = cookie.map_or(String::new(), |c| format!("cookie: {c}\r\n"));
    raw(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nhost: 127.0.0.1:8470\r\n{cookie}connection: close\r\n\r\n"
        ),
    )
    .await
}

fn logged_in() -> String {
    format!("{COOKIE}={TOKEN}")
}

#[tokio::test]
async fn no_token_wrong_token_and_the_right_one() {
    let addr = start().await;
    let none = get(addr, "/", None).await;
    assert!(none.starts_with("HTTP/1.1 401"), "{none}");
    assert!(none.contains("tollgate console"), "{none}");
    assert!(!none.contains("42"), "the 401 page shows no data: {none}");
    for path in ["/discovery", "/alerts", "/alerts/1", "/activity"] {
        let r = get(addr, path, None).await;
        assert!(r.starts_with("HTTP/1.1 401"), "{path}: {r}");
    }

    let wrong = get(addr, "/?token=0123456789abcdef0123456789abcdee", None).await;
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    assert!(
        !wrong.to_ascii_lowercase().contains("set-cookie"),
        "{wrong}"
    );
    let short = get(addr, "/?token=0123", None).await;
    assert!(short.starts_with("HTTP/1.1 401"), "{short}");
    let bad_cookie = get(addr, "/", Some(&format!("{COOKIE}=nope"))).await;
    assert!(bad_cookie.starts_with("HTTP/1.1 401"), "{bad_cookie}");
    // Another cookie holding the token does not count.
    let other = get(addr, "/", Some(&format!("other={TOKEN}"))).await;
    assert!(other.starts_with("HTTP/1.1 401"), "{other}");

    let right = get(addr, &format!("/?token={TOKEN}"), None).await;
    assert!(right.starts_with("HTTP/1.1 303"), "{right}");
    let lower = right.to_ascii_lowercase();
    assert!(lower.contains("location: /\r\n"), "{right}");
    assert!(
        lower.contains(&format!(
            "set-cookie: {COOKIE}={TOKEN}; path=/; httponly; samesite=strict"
        )),
        "{right}"
    );

    let page = get(addr, "/", Some(&format!("a=b; {}", logged_in()))).await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<span id=\"flows\">42</span>"), "{page}");
    assert!(page.contains("1 h 2 min"), "uptime: {page}");
    let lower = page.to_ascii_lowercase();
    assert!(
        lower.contains("content-security-policy: default-src 'self'"),
        "{page}"
    );
    assert!(lower.contains("x-frame-options: deny"), "{page}");
}

#[tokio::test]
async fn hostile_names_are_escaped_on_every_page() {
    let addr = start().await;
    let cookie = logged_in();
    for path in [
        "/",
        "/discovery",
        "/discovery?app=dropbox",
        "/alerts",
        "/alerts/1",
        "/activity",
        "/activity?user=%3Cscript%3E&app=%22%3E%3Cscript%3E",
    ] {
        let page = get(addr, path, Some(&cookie)).await;
        assert!(page.starts_with("HTTP/1.1 200"), "{path}: {page}");
        assert!(
            !page.contains("<script"),
            "{path} carries a raw <script>: {page}"
        );
        assert!(!page.contains("<img"), "{path} carries a raw <img>: {page}");
    }
    let disc = get(addr, "/discovery", Some(&cookie)).await;
    assert!(
        disc.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{disc}"
    );
    assert!(disc.contains("href=\"/discovery?app=dropbox\""), "{disc}");
    let act = get(addr, "/activity?app=%22%3E%3Cscript%3E", Some(&cookie)).await;
    assert!(act.contains("value=\"&quot;&gt;&lt;script&gt;\""), "{act}");
    let alert = get(addr, "/alerts/1", Some(&cookie)).await;
    assert!(alert.contains("tollgate alerts resolve 1"), "{alert}");
    assert!(alert.contains("reason &lt;script&gt;"), "{alert}");
    assert!(!alert.contains("<form method=\"post\""), "{alert}");
}

#[tokio::test]
async fn only_get_and_no_panic_on_odd_requests() {
    let addr = start().await;
    let cookie = logged_in();
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = raw(
            addr,
            &format!(
                "{method} / HTTP/1.1\r\nhost: 127.0.0.1:8470\r\ncookie: {cookie}\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc"
            ),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 405"), "{method}: {r}");
    }
    // HEAD answers like GET, without the page.
    let head = raw(
        addr,
        &format!(
            "HEAD / HTTP/1.1\r\nhost: 127.0.0.1\r\ncookie: {cookie}\r\nconnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.contains("<html"), "{head}");
    // A POST with the token does not log in either.
    let r = raw(
        addr,
        &format!("POST /?token={TOKEN} HTTP/1.1\r\nhost: 127.0.0.1:8470\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    assert!(!r.to_ascii_lowercase().contains("set-cookie"), "{r}");
    for path in [
        "/alerts/99",
        "/alerts/x",
        "/alerts/-1",
        "/alerts/99999999999999999999999",
        "/nope",
        "/activity?user=%ff%fe&app=%",
        "/discovery?app=%00%3C",
        "/?token=%ff",
        "/?token",
    ] {
        let r = get(addr, path, Some(&cookie)).await;
        assert!(
            r.starts_with("HTTP/1.1 404")
                || r.starts_with("HTTP/1.1 200")
                || r.starts_with("HTTP/1.1 401"),
            "{path}: {r}"
        );
    }
    // A huge header is refused, and the console still answers.
    let big = format!(
        "GET / HTTP/1.1\r\nhost: 127.0.0.1:8470\r\nx-big: {}\r\n\r\n",
        "a".repeat(256 * 1024)
    );
    let mut c = TcpStream::connect(addr).await.unwrap();
    let _ = c.write_all(big.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    let ok = get(addr, "/", Some(&cookie)).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    // Another host name (DNS rebinding) is refused even with the cookie; loopback names pass.
    for (host, status) in [
        ("evil.example", "421"),
        ("evil.example:8470", "421"),
        ("127.0.0.1.evil.example", "421"),
        ("localhost:9000", "200"),
        ("[::1]:8470", "200"),
        ("127.0.0.2", "200"),
    ] {
        let r = raw(
            addr,
            &format!(
                "GET / HTTP/1.1\r\nhost: {host}\r\ncookie: {cookie}\r\nconnection: close\r\n\r\n"
            ),
        )
        .await;
        assert!(r.starts_with(&format!("HTTP/1.1 {status}")), "{host}: {r}");
        if status == "421" {
            assert!(!r.contains("flows"), "{host}: {r}");
        }
    }
    // The stylesheet is served (the 401 page uses it), and it is the hub's.
    let css = get(addr, "/assets/style.css", None).await;
    assert!(css.starts_with("HTTP/1.1 200"), "{css}");
    assert!(css.contains("Tollgate console: one stylesheet"), "{css}");
}

#[test]
fn token_file_is_private_and_new_each_time() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let a = write_token(dir.path()).unwrap();
    assert_eq!(a.len(), 64);
    assert_eq!(read_token(dir.path()).unwrap(), a);
    let mode = std::fs::metadata(token_path(dir.path()))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let b = write_token(dir.path()).unwrap();
    assert_ne!(a, b);
    assert_eq!(read_token(dir.path()).unwrap(), b);
    assert_eq!(
        login_url("127.0.0.1:8080".parse().unwrap(), &b),
        format!("http://127.0.0.1:8080/?token={b}")
    );
    std::fs::write(token_path(dir.path()), "<html>").unwrap();
    assert!(read_token(dir.path()).is_err());
}

#[test]
fn a_huge_discovery_is_cut_to_the_riskiest_rows() {
    let apps: Vec<_> = (0..pages::MAX_ROWS + 5)
        .map(|i| {
            json!({"id": format!("app{i}"), "name": format!("App {i}"),
                   "risk_score": (i % 10) as f64, "bytes_up": i, "bytes_down": 0})
        })
        .collect();
    let users: Vec<_> = (0..pages::MAX_ROWS + 2)
        .map(|i| json!({"user": format!("u{i}"), "top_apps": []}))
        .collect();
    let html = pages::discovery(&json!({"apps": apps, "users": users}));
    assert!(html.contains("5 more apps not shown"), "{html}");
    assert!(html.contains("2 more users not shown"));
    assert_eq!(
        html.matches("href=\"/discovery?app=").count(),
        pages::MAX_ROWS
    );
    // The riskiest (score 0) are the ones kept; the first row is the riskiest, busiest one.
    let first = html.find("href=\"/discovery?app=").unwrap();
    assert!(
        html[first..].starts_with("href=\"/discovery?app=app1000\""),
        "{}",
        &html[first..first + 60]
    );
    assert!(
        !html.contains("?app=app9\""),
        "a score-9 app is among the cut ones"
    );
}
