//! The connectors' HTTPS client: rustls trusting the system store (which honours
//! `SSL_CERT_FILE` / `SSL_CERT_DIR`) plus optional extra roots, one kept-alive HTTP/1.1
//! connection per connector (a connector never has two requests in flight), bounded bodies,
//! and a check that every URL stays on `base_url`'s origin before the token goes out.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use url::Url;

use crate::error::ConnectorError;

/// The largest response body read (an M365 blob or a 1,000-event Okta page is far smaller).
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// One answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

struct Conn {
    origin: String,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

pub struct HttpClient {
    tls: TlsConnector,
    conn: Option<Conn>,
    /// Requests sent, connections opened.
    pub requests: u64,
    pub connections: u64,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("requests", &self.requests)
            .finish_non_exhaustive()
    }
}

/// The system's roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` honoured) and `extra`.
pub fn roots(extra: &[CertificateDer<'static>]) -> RootCertStore {
    // Read once per process: parsing the system bundle is the slowest part of starting a
    // connector, and the hub starts one per `[[connectors]]` (and again on a bundle change).
    static NATIVE: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    let native = NATIVE.get_or_init(|| rustls_native_certs::load_native_certs().certs);
    let mut roots = RootCertStore::empty();
    for cert in native {
        let _ = roots.add(cert.clone());
    }
    for cert in extra {
        let _ = roots.add(cert.clone());
    }
    roots
}

/// Whether `url` is on `origin` (`scheme://host[:port]`, as `Url::origin` serializes it).
pub fn same_origin(url: &Url, origin: &str) -> bool {
    url.origin().ascii_serialization() == origin
}

fn client_config(extra_roots: &[CertificateDer<'static>]) -> Result<ClientConfig, ConnectorError> {
    let roots = roots(extra_roots);
    if roots.is_empty() {
        return Err(ConnectorError::Config(
            "no trusted roots (system store empty; set SSL_CERT_FILE)".into(),
        ));
    }
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnectorError::Config(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

impl HttpClient {
    pub fn new(extra_roots: &[CertificateDer<'static>]) -> Result<HttpClient, ConnectorError> {
        // Connectors without extra roots (all of the hub's) share one TLS configuration: a
        // root store is ~100 KiB, which was most of an idle connector.
        static SHARED: std::sync::OnceLock<Arc<ClientConfig>> = std::sync::OnceLock::new();
        let config = if extra_roots.is_empty() {
            match SHARED.get() {
                Some(c) => Arc::clone(c),
                None => {
                    let c = Arc::new(client_config(&[])?);
                    Arc::clone(SHARED.get_or_init(|| c))
                }
            }
        } else {
            Arc::new(client_config(extra_roots)?)
        };
        Ok(HttpClient {
            tls: TlsConnector::from(config),
            conn: None,
            requests: 0,
            connections: 0,
        })
    }

    async fn connect(&mut self, url: &Url, origin: &str) -> Result<(), ConnectorError> {
        if let Some(c) = &self.conn
            && c.origin == origin
            && !c.sender.is_closed()
        {
            return Ok(());
        }
        self.conn = None;
        let transport = |reason: String| ConnectorError::Transport {
            origin: origin.to_string(),
            reason,
        };
        let host = url.host_str().ok_or_else(|| transport("no host".into()))?;
        let port = url.port_or_known_default().unwrap_or(443);
        let host_for_sni = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::net::TcpStream::connect((host_for_sni, port))
            .await
            .map_err(|e| transport(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host_for_sni.to_string())
            .map_err(|e| transport(format!("server name: {e}")))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| transport(format!("TLS: {e}")))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| transport(e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        self.connections += 1;
        self.conn = Some(Conn {
            origin: origin.to_string(),
            sender,
            driver,
        });
        Ok(())
    }

    /// One request to `url`, which must be on `origin`; `authorization` is the whole header
    /// value. A transport error drops the kept connection.
    pub async fn send(
        &mut self,
        method: Method,
        url: &Url,
        origin: &str,
        authorization: &str,
        timeout: Duration,
    ) -> Result<Response, ConnectorError> {
        self.send_body(method, url, origin, Some(authorization), None, timeout)
            .await
    }

    /// [`HttpClient::send`] with an optional `Authorization` and an optional form body
    /// (`application/x-www-form-urlencoded`: an OAuth token request).
    pub async fn send_body(
        &mut self,
        method: Method,
        url: &Url,
        origin: &str,
        authorization: Option<&str>,
        form: Option<String>,
        timeout: Duration,
    ) -> Result<Response, ConnectorError> {
        if !same_origin(url, origin) {
            return Err(ConnectorError::OffOrigin {
                origin: origin.to_string(),
                url: crate::error::snippet(url.as_str().as_bytes(), 200),
            });
        }
        let result = tokio::time::timeout(
            timeout,
            self.send_inner(method, url, origin, authorization, form),
        )
        .await;
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(ConnectorError::Timeout {
                    origin: origin.to_string(),
                    secs: timeout.as_secs(),
                })
            }
        }
    }

    async fn send_inner(
        &mut self,
        method: Method,
        url: &Url,
        origin: &str,
        authorization: Option<&str>,
        form: Option<String>,
    ) -> Result<Response, ConnectorError> {
        self.connect(url, origin).await?;
        let transport = |reason: String| ConnectorError::Transport {
            origin: origin.to_string(),
            reason,
        };
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("tollgate-connectors/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(a) = authorization {
            req = req.header(http::header::AUTHORIZATION, a);
        }
        let body = match form {
            Some(f) => {
                req = req.header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                );
                Bytes::from(f)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| transport(format!("request: {e}")))?;
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| transport("no connection".into()))?;
        conn.sender
            .ready()
            .await
            .map_err(|e| transport(e.to_string()))?;
        self.requests += 1;
        let resp = conn
            .sender
            .send_request(req)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| transport(format!("body: {e}")))?
            .to_bytes();
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}

/// The target of the `rel="next"` link of an RFC 8288 `Link` header (Okta, GitHub), if any.
/// Pure; never panics on hostile input.
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(http::header::LINK) {
        let Ok(text) = value.to_str() else { continue };
        if let Some(link) = parse_link_next(text) {
            return Some(link);
        }
    }
    None
}

/// `<url>; rel="next"` out of one Link header value.
pub fn parse_link_next(text: &str) -> Option<String> {
    for part in text.split(',') {
        let part = part.trim();
        let Some(rest) = part.strip_prefix('<') else {
            continue;
        };
        let Some((target, params)) = rest.split_once('>') else {
            continue;
        };
        let is_next = params.split(';').any(|p| {
            let p = p.trim();
            p.strip_prefix("rel=").is_some_and(|v| {
                v.trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
            })
        });
        if is_next {
            return Some(target.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers() {
        let v = r#"<https://o.okta.com/api/v1/logs?after=1>; rel="self", <https://o.okta.com/api/v1/logs?after=2>; rel="next""#;
        assert_eq!(
            parse_link_next(v).as_deref(),
            Some("https://o.okta.com/api/v1/logs?after=2")
        );
        assert_eq!(parse_link_next(r#"<x>; rel="self""#), None);
        assert_eq!(parse_link_next("<<>>;;rel=next"), Some("<".into()));
        for junk in ["", "<", ">", ";", "<a", "rel=next", "<a>;rel"] {
            let _ = parse_link_next(junk);
        }
    }

    #[test]
    fn origins() {
        let u = Url::parse("https://a.example:8443/x?y").unwrap();
        assert!(same_origin(&u, "https://a.example:8443"));
        assert!(!same_origin(&u, "https://a.example"));
        let u = Url::parse("https://a.example.evil.test/x").unwrap();
        assert!(!same_origin(&u, "https://a.example"));
    }
}
