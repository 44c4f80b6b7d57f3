//! The gateway's HTTPS client for the hub.
//!
//! Two trust modes, both without the system's roots:
//! - enrollment trusts a server only if the chain it presents carries a CA certificate whose
//!   SHA-256 is the token's pin and the server's certificate verifies against that CA for the
//!   URL's host, so a machine in the middle cannot take the first contact;
//! - afterwards, mutual TLS that trusts only the hub CA the enrollment returned.
//!
//! Every request opens its own connection (a long poll holds one anyway, and the gateway
//! talks to the hub a few times a minute). A gateway lists several hub URLs; on a connection,
//! TLS, timeout or 5xx error the client moves to the next one and returns the error, and the
//! caller retries with its own backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_rustls::TlsConnector;

use crate::protocol::{
    self, BundleReport, CONTENT_TYPE, DecodeError, EnrollRequest, EnrollResponse,
    MAX_MESSAGE_BYTES, MAX_WAIT_SECS, PATH_ENROLL, PATH_POLL, PATH_REPORT, PATH_UPLOAD,
    PollRequest, PollResponse, UploadAck, UploadBatch,
};
use crate::token::{self, EnrollmentToken};

/// How long an enrollment, upload or report may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// What a long poll may take beyond the wait the hub was asked to hold it.
pub const POLL_GRACE: Duration = Duration::from_secs(15);
/// The longest refusal text kept from a hub's error answer.
const MAX_REASON_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hub answered 4xx; `reason` is its text (e.g. "token already used").
    #[error("hub refused the request ({status}): {reason}")]
    Refused { status: u16, reason: String },
    /// The hub answered 5xx (e.g. it cannot reach its database); another hub may serve.
    #[error("hub {url} failed ({status}): {reason}")]
    HubFailed {
        url: String,
        status: u16,
        reason: String,
    },
    #[error("hub {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("refusing hub {url}: {reason}")]
    PinMismatch { url: String, reason: String },
    #[error("hub answer unreadable: {0}")]
    Protocol(#[from] DecodeError),
    #[error("hub {url} did not answer within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("bad hub URL {0:?} (expected https://HOST[:PORT])")]
    BadUrl(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("gateway key or certificate request: {0}")]
    Identity(String),
}

impl ClientError {
    /// Whether another hub URL may do better: the hub could not be reached, or failed.
    pub fn fails_over(&self) -> bool {
        matches!(
            self,
            ClientError::HubFailed { .. }
                | ClientError::Unreachable { .. }
                | ClientError::Timeout { .. }
        )
    }
}

/// The gateway's own key (PKCS#8 PEM; it never leaves the gateway) and the certificate
/// request the hub signs.
pub struct GatewayIdentity {
    pub key_pem: String,
    pub csr_der: Vec<u8>,
}

impl std::fmt::Debug for GatewayIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayIdentity")
            .field("key_pem", &"<redacted>")
            .field("csr_der", &self.csr_der.len())
            .finish()
    }
}

/// A new ECDSA P-256 key and a request for it; the hub names the certificate itself.
pub fn new_gateway_identity(gateway_hostname: &str) -> Result<GatewayIdentity, ClientError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| ClientError::Identity(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, gateway_hostname);
    let csr = params
        .serialize_request(&key)
        .map_err(|e| ClientError::Identity(e.to_string()))?;
    Ok(GatewayIdentity {
        key_pem: key.serialize_pem(),
        csr_der: csr.der().to_vec(),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Trusts a server only through the CA the enrollment token pins.
#[derive(Debug)]
struct PinVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// Set when the handshake failed on the pin, so the error names it.
    refused: Arc<std::sync::Mutex<Option<String>>>,
}

impl PinVerifier {
    fn refuse(&self, reason: String) -> rustls::Error {
        if let Ok(mut slot) = self.refused.lock() {
            *slot = Some(reason.clone());
        }
        rustls::Error::General(reason)
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| token::ca_pin(c.as_ref()) == self.pin)
        else {
            return Err(self.refuse(
                "its certificate chain carries no CA matching the enrollment token's pin".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| self.refuse(format!("the pinned CA is unusable: {e}")))?;
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| self.refuse(format!("the pinned CA is unusable: {e}")))?;
        verifier
            .verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
            .map_err(|e| {
                self.refuse(format!(
                    "its certificate does not verify against the pinned CA: {e}"
                ))
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Enrolls with the hub at `url`, trusting it only through the token's CA pin.
pub async fn enroll(
    url: &str,
    token: &EnrollmentToken,
    request: &EnrollRequest,
) -> Result<EnrollResponse, ClientError> {
    let provider = provider();
    let refused = Arc::new(std::sync::Mutex::new(None));
    let verifier = PinVerifier {
        pin: token.ca_pin,
        provider: Arc::clone(&provider),
        refused: Arc::clone(&refused),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    let result = exchange(
        &connector,
        url,
        PATH_ENROLL,
        protocol::encode(request),
        REQUEST_TIMEOUT,
    )
    .await;
    if let Err(ClientError::Unreachable { .. }) = &result
        && let Some(reason) = refused.lock().ok().and_then(|mut r| r.take())
    {
        return Err(ClientError::PinMismatch {
            url: url.to_string(),
            reason,
        });
    }
    Ok(protocol::decode(&result?)?)
}

/// An enrolled gateway's client: mutual TLS, trusting only the hub's CA, over every hub URL.
pub struct HubClient {
    urls: Vec<String>,
    next: AtomicUsize,
    connector: TlsConnector,
    /// Connections kept open after an answer, for the next request to the same hub: a poll,
    /// an upload and a bundle report each used to cost a TCP and mutual-TLS handshake, which
    /// is most of a gateway's talk with its hub and most of the hub's work when ten thousand
    /// gateways acknowledge one bundle.
    idle: std::sync::Mutex<Vec<Idle>>,
    idle_limit: AtomicUsize,
    /// Connections opened so far (each is a TCP and mutual-TLS handshake).
    opened: AtomicUsize,
}

/// An open connection to `urls[url]`.
struct Idle {
    url: usize,
    conn: Connection,
}

struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Connections a client keeps open by default: a gateway has at most a held poll, an upload
/// and a report in flight at once.
pub const DEFAULT_IDLE_CONNECTIONS: usize = 4;

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("urls", &self.urls)
            .finish_non_exhaustive()
    }
}

impl HubClient {
    pub fn new(
        urls: Vec<String>,
        ca_der: Vec<u8>,
        cert_der: Vec<u8>,
        key_pem: &str,
    ) -> Result<Self, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::BadUrl(String::new()));
        }
        for url in &urls {
            parse_url(url)?;
        }
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_der))
            .map_err(|e| ClientError::Tls(format!("hub CA: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| ClientError::Tls(format!("gateway key: {e}")))?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![CertificateDer::from(cert_der)], key)
            .map_err(|e| ClientError::Tls(format!("gateway certificate: {e}")))?;
        Ok(Self {
            urls,
            next: AtomicUsize::new(0),
            connector: TlsConnector::from(Arc::new(config)),
            idle: std::sync::Mutex::new(Vec::new()),
            idle_limit: AtomicUsize::new(DEFAULT_IDLE_CONNECTIONS),
            opened: AtomicUsize::new(0),
        })
    }

    /// The hub URL the next request goes to.
    pub fn current_url(&self) -> String {
        let i = self.next.load(Ordering::Relaxed) % self.urls.len();
        self.urls[i].clone()
    }

    /// Holds until the hub has a newer bundle or the wait ends.
    pub async fn poll(&self, req: &PollRequest) -> Result<PollResponse, ClientError> {
        let wait = Duration::from_secs(u64::from(req.wait_secs.min(MAX_WAIT_SECS)));
        self.call(PATH_POLL, req, wait + POLL_GRACE).await
    }

    pub async fn upload(&self, batch: &UploadBatch) -> Result<UploadAck, ClientError> {
        self.call(PATH_UPLOAD, batch, REQUEST_TIMEOUT).await
    }

    pub async fn report(&self, report: &BundleReport) -> Result<(), ClientError> {
        self.send(PATH_REPORT, report, REQUEST_TIMEOUT)
            .await
            .map(|_| ())
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, ClientError> {
        let body = self.send(path, req, timeout).await?;
        Ok(protocol::decode(&body)?)
    }

    async fn send<Req: Serialize>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        let index = self.next.load(Ordering::Relaxed);
        let slot = index % self.urls.len();
        let url = &self.urls[slot];
        let body = protocol::encode(req);
        let result =
            match tokio::time::timeout(timeout, self.exchange_pooled(slot, path, body)).await {
                Ok(result) => result,
                Err(_) => Err(ClientError::Timeout {
                    url: url.to_string(),
                    secs: timeout.as_secs(),
                }),
            };
        if let Err(e) = &result
            && e.fails_over()
        {
            // Only the first of several concurrent failures on this URL moves on.
            let _ = self.next.compare_exchange(
                index,
                index.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            tracing::debug!(url, error = %e, "hub request failed; next request goes to the next hub URL");
        }
        result
    }
}

impl HubClient {
    /// Connections kept open between requests (the load generator, one client for thousands
    /// of simulated gateways, keeps one per gateway as real gateways would).
    pub fn set_idle_connections(&self, limit: usize) {
        self.idle_limit.store(limit, Ordering::Relaxed);
    }

    /// How many connections (handshakes) this client has opened.
    pub fn connections_opened(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }

    fn take_idle(&self, slot: usize) -> Option<Connection> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(i) = idle.iter().rposition(|c| c.url == slot) {
            let c = idle.swap_remove(i);
            if !c.conn.sender.is_closed() {
                return Some(c.conn);
            }
        }
        None
    }

    fn keep_idle(&self, slot: usize, conn: Connection) {
        if conn.sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.idle_limit.load(Ordering::Relaxed)
        {
            idle.push(Idle { url: slot, conn });
        }
    }

    /// One request on an open connection to `urls[slot]` when there is one, else on a new
    /// one. A kept connection the hub closed meanwhile fails before any answer; the request
    /// is then sent once more on a new connection (every gateway request is idempotent: a
    /// poll, an upload keyed by sequence numbers, a bundle report).
    async fn exchange_pooled(
        &self,
        slot: usize,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        let url = &self.urls[slot];
        let target = parse_url(url)?;
        if let Some(mut conn) = self.take_idle(slot)
            && let Ok(answer) = request(&mut conn, url, &target, path, body.clone()).await
        {
            if answer.reusable {
                self.keep_idle(slot, conn);
            }
            return answer.result;
        }
        // No kept connection, or it was gone: a new one.
        self.opened.fetch_add(1, Ordering::Relaxed);
        let mut conn = connect(&self.connector, url, &target).await?;
        let answer = request(&mut conn, url, &target, path, body)
            .await
            .map_err(|reason| ClientError::Unreachable {
                url: url.to_string(),
                reason,
            })?;
        if answer.reusable {
            self.keep_idle(slot, conn);
        }
        answer.result
    }
}

struct Target {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    authority: String,
}

fn parse_url(url: &str) -> Result<Target, ClientError> {
    let bad = || ClientError::BadUrl(url.to_string());
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("https") {
        return Err(bad());
    }
    let authority = uri.authority().ok_or_else(bad)?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(bad());
    }
    let server_name = ServerName::try_from(host.clone()).map_err(|_| bad())?;
    Ok(Target {
        port: authority.port_u16().unwrap_or(443),
        host,
        server_name,
        authority: authority.as_str().to_string(),
    })
}

/// One request on its own connection: the answer's body on 200/204, a typed error otherwise.
async fn exchange(
    connector: &TlsConnector,
    url: &str,
    path: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, ClientError> {
    let target = parse_url(url)?;
    match tokio::time::timeout(timeout, exchange_inner(connector, url, &target, path, body)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout {
            url: url.to_string(),
            secs: timeout.as_secs(),
        }),
    }
}

async fn exchange_inner(
    connector: &TlsConnector,
    url: &str,
    target: &Target,
    path: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, ClientError> {
    let mut conn = connect(connector, url, target).await?;
    match request(&mut conn, url, target, path, body).await {
        Ok(answer) => answer.result,
        Err(reason) => Err(ClientError::Unreachable {
            url: url.to_string(),
            reason,
        }),
    }
}

/// A TCP connection, the TLS handshake, the HTTP/1.1 handshake.
async fn connect(
    connector: &TlsConnector,
    url: &str,
    target: &Target,
) -> Result<Connection, ClientError> {
    let unreachable = |reason: String| ClientError::Unreachable {
        url: url.to_string(),
        reason,
    };
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let tls = connector
        .connect(target.server_name.clone(), tcp)
        .await
        .map_err(|e| unreachable(format!("TLS: {e}")))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Connection { sender, driver })
}

/// What came back on a connection, and whether the connection can carry another request
/// (the answer was read whole).
struct Answer {
    result: Result<Vec<u8>, ClientError>,
    reusable: bool,
}

/// One request; `Err` when no answer came (the connection failed before or while sending).
async fn request(
    conn: &mut Connection,
    url: &str,
    target: &Target,
    path: &str,
    body: Vec<u8>,
) -> Result<Answer, String> {
    let request = http::Request::post(path)
        .header(http::header::HOST, target.authority.as_str())
        .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    conn.sender.ready().await.map_err(|e| e.to_string())?;
    let response = conn
        .sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let unreachable = |reason: String| ClientError::Unreachable {
        url: url.to_string(),
        reason,
    };
    let status = response.status();
    let declared = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if status.is_success() {
        if let Some(len) = declared
            && len > MAX_MESSAGE_BYTES
        {
            return Ok(Answer {
                result: Err(ClientError::Protocol(DecodeError::TooLarge(len))),
                reusable: false,
            });
        }
        let result = match Limited::new(response.into_body(), MAX_MESSAGE_BYTES)
            .collect()
            .await
        {
            Ok(b) => Ok(b.to_bytes().to_vec()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ClientError::Protocol(
                DecodeError::TooLarge(MAX_MESSAGE_BYTES + 1),
            )),
            Err(e) => Err(unreachable(e.to_string())),
        };
        let reusable = result.is_ok();
        return Ok(Answer { result, reusable });
    }
    // An error answer: keep at most a short reason; the connection is not kept.
    let text = match Limited::new(response.into_body(), MAX_REASON_BYTES * 4)
        .collect()
        .await
    {
        Ok(b) => {
            let b = b.to_bytes();
            let mut text = String::from_utf8_lossy(&b).trim().to_string();
            if text.len() > MAX_REASON_BYTES {
                let mut cut = MAX_REASON_BYTES;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            text
        }
        Err(_) => String::new(),
    };
    let reason = if text.is_empty() {
        status.canonical_reason().unwrap_or("").to_string()
    } else {
        text
    };
    let result = if status.is_server_error() {
        Err(ClientError::HubFailed {
            url: url.to_string(),
            status: status.as_u16(),
            reason,
        })
    } else {
        Err(ClientError::Refused {
            status: status.as_u16(),
            reason,
        })
    };
    Ok(Answer {
        result,
        reusable: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(parse_url("https://hub.example:9443").is_ok());
        assert!(parse_url("https://127.0.0.1:9443").is_ok());
        assert!(parse_url("https://[::1]:9443").is_ok());
        assert!(parse_url("http://hub.example").is_err());
        assert!(parse_url("hub.example").is_err());
        assert!(HubClient::new(vec![], vec![], vec![], "").is_err());
    }

    #[test]
    fn an_identity_is_a_p256_key_and_a_request() {
        let id = new_gateway_identity("gw1.branch").unwrap();
        assert!(id.key_pem.contains("PRIVATE KEY"));
        assert!(!id.csr_der.is_empty());
        assert!(!format!("{id:?}").contains("PRIVATE"));
    }
}
