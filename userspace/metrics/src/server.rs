//! The `/metrics` listener: plain HTTP/1.1, `GET /metrics` only (404 for any other path, 405
//! for another method), no request body read.
//!
//! What an attacker who reaches the port can do, and what bounds it: read the counters (no
//! secrets, no names of users or apps: the admin chooses the bind address, and the listener
//! is off unless `[metrics] listen` is set); hold connections open (at most
//! [`Limits::max_connections`] at once, more are closed at accept; each must send its
//! headers within [`Limits::header_timeout`] and is closed after [`Limits::lifetime`]
//! whatever it does); send a huge request head (hyper stops reading at
//! [`Limits::max_head_bytes`] and answers 431); scrape in a loop (each scrape costs one
//! status snapshot; the daemon's core answers it between events, as it does
//! `tollgate status`). None of it touches the daemon's core beyond a scrape.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// What one client may hold of the listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time a client has to send a request's headers.
    pub header_timeout: Duration,
    /// The longest a connection lives (keep-alive included).
    pub lifetime: Duration,
    /// The largest request head read (hyper's floor is 8 KiB).
    pub max_head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16,
            header_timeout: Duration::from_secs(2),
            lifetime: Duration::from_secs(30),
            max_head_bytes: 8 * 1024,
        }
    }
}

/// The content type of the OpenMetrics text `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// Serves `GET /metrics` on `listener` until the task is dropped; `render` makes the body of
/// one scrape (`None`: the source is gone, answered 503).
pub async fn serve<F, Fut>(listener: TcpListener, limits: Limits, render: F)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Option<String>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics: connection refused, all slots busy");
            drop(tcp);
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let render = render.clone();
                async move {
                    let r = if req.uri().path() != "/metrics" {
                        answer(StatusCode::NOT_FOUND, "text/plain", "not found\n".into())
                    } else if req.method() != Method::GET && req.method() != Method::HEAD {
                        answer(
                            StatusCode::METHOD_NOT_ALLOWED,
                            "text/plain",
                            "GET only\n".into(),
                        )
                    } else {
                        match render().await {
                            Some(body) => answer(StatusCode::OK, CONTENT_TYPE, body),
                            None => answer(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "text/plain",
                                "shutting down\n".into(),
                            ),
                        }
                    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start(limits: Limits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, limits, || async {
            let mut s = crate::Snapshot::new();
            s.counter("test_things", "things", 7);
            Some(s.encode())
        }));
        addr
    }

    /// One request on a fresh connection; the whole answer (the server closes).
    async fn get(addr: std::net::SocketAddr, head: &str) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(head.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn get_metrics_and_nothing_else() {
        let addr = start(Limits::default()).await;
        let ok = get(
            addr,
            "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("tollgate_test_things_total 7"), "{ok}");
        assert!(ok.contains("tollgate_build_info{version=\""), "{ok}");
        let other = get(
            addr,
            "GET /admin HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        let post = get(
            addr,
            "POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    }

    #[tokio::test]
    async fn a_huge_header_is_refused_without_reading_it_all() {
        let addr = start(Limits::default()).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nx-big: ")
            .await
            .unwrap();
        // 1 MiB of header value: the server stops reading long before.
        let chunk = vec![b'a'; 64 * 1024];
        let started = Instant::now();
        let mut refused = false;
        for _ in 0..16 {
            if c.write_all(&chunk).await.is_err() {
                refused = true;
                break;
            }
        }
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(
            refused || text.starts_with("HTTP/1.1 431") || text.is_empty(),
            "a 1 MiB header was answered: {text}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // And the listener still answers.
        let ok = get(
            addr,
            "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    }

    #[tokio::test]
    async fn slowloris_clients_are_cut_and_do_not_keep_a_scrape_out() {
        let limits = Limits {
            max_connections: 8,
            header_timeout: Duration::from_millis(500),
            lifetime: Duration::from_secs(3),
            max_head_bytes: 8192,
        };
        let addr = start(limits).await;
        // Twice the cap of clients that send a header byte every 100 ms and never finish.
        let mut slow = Vec::new();
        for _ in 0..16 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /metrics HTTP/1.1\r\nx-slow: ")
                .await
                .unwrap();
            slow.push(tokio::spawn(async move {
                let started = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if c.write_all(b"a").await.is_err() {
                        break;
                    }
                    let mut b = [0u8; 1];
                    match tokio::time::timeout(Duration::from_millis(1), c.read(&mut b)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        Ok(Ok(_)) => break, // an answer (408) also ends it
                        Err(_) => {}
                    }
                    if started.elapsed() > Duration::from_secs(10) {
                        return started.elapsed();
                    }
                }
                started.elapsed()
            }));
        }
        // Every slow client is cut within the header timeout (or at accept), not left open.
        for s in slow {
            let held = s.await.unwrap();
            assert!(held < Duration::from_secs(3), "a slow client held {held:?}");
        }
        // Once they are cut, a scrape is answered at once.
        let started = Instant::now();
        let ok = get(
            addr,
            "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
