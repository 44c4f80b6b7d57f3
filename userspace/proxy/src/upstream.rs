//! The origin side: rustls client configuration (system trust store honouring SSL_CERT_FILE /
//! SSL_CERT_DIR, plus extra CA files), TLS connections to the original destination with ALPN
//! h2 / http/1.1, and a small pool of idle HTTP/1.1 and shared HTTP/2 connections keyed by
//! (destination address, server name, whether h2 was offered).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;

use crate::error::ProxyError;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Idle HTTP/1.1 connections are dropped after this long.
const IDLE_MAX: Duration = Duration::from_secs(30);
/// Largest read buffer of an origin HTTP/1.1 connection (also the largest response head).
const UPSTREAM_READ_BUF: usize = 32 * 1024;
/// Idle HTTP/1.1 connections kept per key.
const IDLE_PER_KEY: usize = 256;

/// Rustls client configurations for the origin side.
#[derive(Clone)]
pub struct UpstreamTls {
    h2: Arc<ClientConfig>,
    h1: Arc<ClientConfig>,
    /// Number of trust anchors loaded (for the log).
    pub anchors: usize,
}

impl UpstreamTls {
    /// System roots (unless `no_system`) plus every certificate in `extra` PEM files.
    pub fn new(extra: &[PathBuf], no_system: bool) -> Result<UpstreamTls, ProxyError> {
        let mut roots = RootCertStore::empty();
        if !no_system {
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::warn!("system trust store: {e}");
            }
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            if ignored > 0 {
                tracing::warn!(
                    "system trust store: {ignored} certificates ignored ({added} loaded)"
                );
            }
        }
        for path in extra {
            let data = std::fs::read(path).map_err(|e| ProxyError::io(path, e))?;
            let mut n = 0;
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(&data) {
                let c = c.map_err(|e| ProxyError::Config {
                    key: "upstream_ca_files".into(),
                    message: format!("{}: {e}", path.display()),
                })?;
                roots.add(c).map_err(|e| ProxyError::Config {
                    key: "upstream_ca_files".into(),
                    message: format!("{}: {e}", path.display()),
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(ProxyError::Config {
                    key: "upstream_ca_files".into(),
                    message: format!("{}: no certificate found", path.display()),
                });
            }
        }
        let anchors = roots.len();
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let build = |alpn: Vec<Vec<u8>>| -> Result<Arc<ClientConfig>, ProxyError> {
            let mut c = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = alpn;
            Ok(Arc::new(c))
        };
        Ok(UpstreamTls {
            h2: build(vec![b"h2".to_vec(), b"http/1.1".to_vec()])?,
            h1: build(vec![b"http/1.1".to_vec()])?,
            anchors,
        })
    }
}

/// Why the origin could not be reached.
#[derive(Debug, Clone)]
pub enum UpstreamFailure {
    /// TCP connect failed or timed out.
    Connect(String),
    /// The origin's certificate did not verify: never hidden from the user.
    Certificate(String),
    /// Any other TLS or HTTP handshake failure.
    Protocol(String),
}

impl std::fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamFailure::Connect(m) => write!(f, "cannot connect to the server: {m}"),
            UpstreamFailure::Certificate(m) => {
                write!(f, "the server's certificate is not valid: {m}")
            }
            UpstreamFailure::Protocol(m) => write!(f, "TLS with the server failed: {m}"),
        }
    }
}

fn describe_cert_error(e: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match e {
        C::UnknownIssuer => "it is signed by an unknown or untrusted certificate authority".into(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "it was issued for a different name than the one requested".into()
        }
        C::Expired | C::ExpiredContext { .. } => "it has expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "it is not valid yet".into(),
        C::Revoked => "it has been revoked".into(),
        C::BadSignature => "its signature is invalid".into(),
        other => format!("{other:?}"),
    }
}

fn classify(e: std::io::Error) -> UpstreamFailure {
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return match inner {
            rustls::Error::InvalidCertificate(c) => {
                UpstreamFailure::Certificate(describe_cert_error(c))
            }
            other => UpstreamFailure::Protocol(other.to_string()),
        };
    }
    UpstreamFailure::Protocol(e.to_string())
}

/// An HTTP/1.1 origin connection and the per-origin slot it occupies.
pub struct H1 {
    pub send: http1::SendRequest<ProxyBody>,
    _slot: Option<OwnedSemaphorePermit>,
}

/// An HTTP connection to the origin.
pub enum Conn {
    H1(H1),
    H2(http2::SendRequest<ProxyBody>),
}

impl Conn {
    pub fn is_h2(&self) -> bool {
        matches!(self, Conn::H2(_))
    }
}

/// Pool key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub dst: SocketAddr,
    pub name: String,
    pub offer_h2: bool,
}

/// Connect TCP + TLS + HTTP handshake to `key.dst`, verifying the certificate for `key.name`.
pub async fn connect(
    tls: &UpstreamTls,
    key: &Key,
    timeout: Duration,
    slot: Option<OwnedSemaphorePermit>,
) -> Result<Conn, UpstreamFailure> {
    let server_name = match key.name.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(key.name.clone())
            .map_err(|e| UpstreamFailure::Protocol(format!("server name: {e}")))?,
    };
    let cfg = if key.offer_h2 {
        tls.h2.clone()
    } else {
        tls.h1.clone()
    };
    let fut = async {
        let tcp = TcpStream::connect(key.dst)
            .await
            .map_err(|e| UpstreamFailure::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let stream = TlsConnector::from(cfg)
            .connect(server_name, tcp)
            .await
            .map_err(classify)?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        if h2 {
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .handshake(io)
                .await
                .map_err(|e| UpstreamFailure::Protocol(e.to_string()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("upstream h2 connection: {e}");
                }
            });
            Ok(Conn::H2(send))
        } else {
            let (send, conn) = http1::Builder::new()
                .writev(false)
                // hyper grows its read buffer up to ~400 KiB on large bodies; a few TLS
                // records' worth keeps memory per origin connection small.
                .max_buf_size(UPSTREAM_READ_BUF)
                .handshake(io)
                .await
                .map_err(|e| UpstreamFailure::Protocol(e.to_string()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!("upstream h1 connection: {e}");
                }
            });
            Ok(Conn::H1(H1 { send, _slot: slot }))
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamFailure::Connect(format!(
            "timed out after {}s",
            timeout.as_secs()
        ))),
    }
}

/// An idle HTTP/1.1 connection and since when it is idle.
type IdleH1 = (Instant, H1);

enum Waited {
    Slot(OwnedSemaphorePermit),
    Conn(Conn),
    Closed,
}

/// Most keys remembered in the per-origin maps before they are cleared.
const MAX_KEYS: usize = 16_384;

/// Idle and shared origin connections, per-origin connection slots, and what is known about
/// each origin (its certificate verified, whether it speaks h2).
pub struct Pool {
    h1: Mutex<HashMap<Key, Vec<IdleH1>>>,
    h2: Mutex<HashMap<Key, http2::SendRequest<ProxyBody>>>,
    slots: Mutex<HashMap<Key, Arc<Slots>>>,
    known: Mutex<HashMap<Key, (bool, Instant)>>,
    /// Connections per origin (0 = unlimited).
    limit: usize,
}

/// The per-origin connection slots, and a wake-up for requests waiting for one when an idle
/// connection comes back instead.
struct Slots {
    sem: Arc<Semaphore>,
    returned: Notify,
}

/// How long a verified origin's protocol is remembered (every new connection is still
/// verified; this only lets a client handshake proceed before that connection exists).
const KNOWN_FOR: Duration = Duration::from_secs(60);

impl Pool {
    pub fn new(limit: usize) -> Pool {
        Pool {
            h1: Mutex::default(),
            h2: Mutex::default(),
            slots: Mutex::default(),
            known: Mutex::default(),
            limit,
        }
    }

    /// A ready connection for `key`, if one is idle (h1) or shared (h2).
    pub async fn checkout(&self, key: &Key) -> Option<Conn> {
        if let Ok(m) = self.h2.lock()
            && let Some(s) = m.get(key)
            && !s.is_closed()
        {
            return Some(Conn::H2(s.clone()));
        }
        loop {
            let candidate = {
                let mut m = self.h1.lock().ok()?;
                let list = m.get_mut(key)?;
                let c = list.pop();
                if list.is_empty() {
                    m.remove(key);
                }
                c
            };
            let (since, mut c) = candidate?;
            if c.send.is_closed() || since.elapsed() > IDLE_MAX {
                continue;
            }
            if c.send.is_ready() {
                return Some(Conn::H1(c));
            }
            // The previous exchange has ended; readiness follows within a poll or two.
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), c.send.ready()).await {
                return Some(Conn::H1(c));
            }
        }
    }

    /// A connection for `key`: an idle or shared one, else a new one once a per-origin slot
    /// is free. The bool says whether it came from the pool (may have been closed since).
    pub async fn get(
        &self,
        tls: &UpstreamTls,
        key: &Key,
        timeout: Duration,
    ) -> Result<(Conn, bool), UpstreamFailure> {
        if let Some(c) = self.checkout(key).await {
            return Ok((c, true));
        }
        let slot = if self.limit == 0 {
            None
        } else {
            let sem = {
                let mut m = self
                    .slots
                    .lock()
                    .map_err(|_| UpstreamFailure::Protocol("pool poisoned".into()))?;
                if m.len() >= MAX_KEYS {
                    m.retain(|_, s| s.sem.available_permits() < self.limit);
                }
                m.entry(key.clone())
                    .or_insert_with(|| {
                        Arc::new(Slots {
                            sem: Arc::new(Semaphore::new(self.limit)),
                            returned: Notify::new(),
                        })
                    })
                    .clone()
            };
            match sem.sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    let wait = async {
                        tokio::select! {
                            p = sem.sem.clone().acquire_owned() => p.map(Waited::Slot).unwrap_or(Waited::Closed),
                            // An h1 connection may come back to the pool while we wait:
                            // put_h1 wakes the waiters of its origin.
                            c = async {
                                loop {
                                    let returned = sem.returned.notified();
                                    tokio::pin!(returned);
                                    returned.as_mut().enable();
                                    if let Some(c) = self.checkout(key).await {
                                        break c;
                                    }
                                    returned.await;
                                }
                            } => Waited::Conn(c),
                        }
                    };
                    match tokio::time::timeout(timeout, wait).await {
                        Ok(Waited::Slot(p)) => Some(p),
                        Ok(Waited::Conn(c)) => return Ok((c, true)),
                        _ => {
                            return Err(UpstreamFailure::Connect(
                                "every connection to this server is busy".into(),
                            ));
                        }
                    }
                }
            }
        };
        // Boxed: a connect future is large and rarely alive; callers keep theirs per connection.
        let c = Box::pin(connect(tls, key, timeout, slot)).await?;
        self.remember(key, c.is_h2());
        if let Conn::H2(s) = &c {
            self.put_h2(key, s);
        }
        Ok((c, false))
    }

    fn remember(&self, key: &Key, h2: bool) {
        if let Ok(mut m) = self.known.lock() {
            if m.len() >= MAX_KEYS {
                m.clear();
            }
            m.insert(key.clone(), (h2, Instant::now()));
        }
    }

    /// Whether the origin was reached and verified recently, and if so whether it speaks h2.
    pub fn known(&self, key: &Key) -> Option<bool> {
        let m = self.known.lock().ok()?;
        let (h2, at) = m.get(key)?;
        (at.elapsed() < KNOWN_FOR).then_some(*h2)
    }

    /// Share an h2 connection.
    pub fn put_h2(&self, key: &Key, s: &http2::SendRequest<ProxyBody>) {
        if let Ok(mut m) = self.h2.lock() {
            if m.len() >= MAX_KEYS {
                m.retain(|_, s| !s.is_closed());
            }
            m.insert(key.clone(), s.clone());
        }
    }

    /// Return an idle h1 connection.
    pub fn put_h1(&self, key: Key, c: H1) {
        if c.send.is_closed() {
            return;
        }
        let key_for_wake = key.clone();
        if let Ok(mut m) = self.h1.lock() {
            let list = m.entry(key).or_default();
            list.retain(|(t, c)| !c.send.is_closed() && t.elapsed() < IDLE_MAX);
            if list.len() < IDLE_PER_KEY {
                list.push((Instant::now(), c));
            }
        }
        if let Ok(m) = self.slots.lock()
            && let Some(s) = m.get(&key_for_wake)
        {
            s.returned.notify_one();
        }
    }
}
