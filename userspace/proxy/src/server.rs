//! Connection handling: accept a redirected connection, recover its original destination,
//! read the ClientHello, and either splice the raw bytes to the destination (never
//! decrypted) or intercept: verify the origin first, then complete the client handshake
//! with a leaf from our CA and serve HTTP/1.1 or HTTP/2 with the policy service.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::AlertDescription;
use rustls::server::Acceptor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::Destination;
use crate::config::Uninspectable;
use crate::guard::H1Guard;
use crate::http::ConnCtx;
use crate::shared::{HandshakeEnd, MAX_HELLO_BYTES, Shared, Verdict, normalize_name};
use crate::upstream::{Key, UpstreamFailure};

/// Encrypted bytes a client connection may hold that its socket has not taken yet: one full
/// TLS record (16 KiB of body, the proxy's slice size, and its framing). rustls' default is
/// 64 KiB, which a slow client fills on every connection that sends it a body; the kernel's
/// socket buffer is the queue, this only bridges one write (about 1 MiB less at the peak of
/// `tests/bench/proxy_memory.sh`, 1,000 downloads).
const CLIENT_TLS_SEND_LIMIT: usize = 17 * 1024;

/// The accept loop; ends when `shutdown` turns true. Connections are accepted first and
/// closed at once when over a limit, so that the kernel's accept queue (shared by every
/// steered SYN) never fills up.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(shared.cfg.max_connections.max(1)));
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            shared
                .stats
                .connection_limit_hits
                .fetch_add(1, Ordering::Relaxed);
            drop(tcp);
            continue;
        };
        // A dual-stack listener sees IPv4 clients as v4-mapped IPv6; policies match plain IPv4.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let Some(slot) = shared.client_slot(peer.ip()) else {
            shared
                .stats
                .client_limit_hits
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("{peer}: too many connections from this client");
            drop(tcp);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            handle(shared, tcp, peer).await;
            drop(slot);
            drop(permit);
        });
    }
}

/// Where was this connection going?
fn original_destination(shared: &Shared, tcp: &TcpStream) -> Option<SocketAddr> {
    let local = tcp.local_addr().ok()?;
    let dst = match shared.destination {
        Destination::Fixed(a) => return Some(a),
        Destination::Original => {
            let s = socket2::SockRef::from(tcp);
            let r = if local.is_ipv4() {
                s.original_dst_v4()
            } else {
                s.original_dst_v6()
            };
            // Not NATed: under TPROXY the local address is the original destination.
            r.ok().and_then(|a| a.as_socket()).unwrap_or(local)
        }
    };
    // A dual-stack listener sees IPv4 destinations as v4-mapped IPv6 addresses.
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    if dst.port() == shared.cfg.listen.port() && (dst == local || dst.ip().is_unspecified()) {
        // A client connected to the proxy port itself: forwarding would loop.
        return None;
    }
    Some(dst)
}

enum Hello {
    /// ClientHello parsed (rustls holds the bytes; `raw` is our copy for splicing).
    Tls {
        accepted: Box<rustls::server::Accepted>,
        raw: Vec<u8>,
    },
    /// Not TLS, or not parseable: splice what was read.
    Other { raw: Vec<u8> },
}

async fn read_hello(tcp: &mut TcpStream, timeout: Duration) -> std::io::Result<Hello> {
    let mut acceptor = Acceptor::default();
    let mut raw = Vec::with_capacity(2048);
    let mut tmp = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut tmp))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no ClientHello in time")
            })??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before ClientHello",
            ));
        }
        let chunk = tmp.get(..n).unwrap_or(&[]);
        raw.extend_from_slice(chunk);
        let mut rd: &[u8] = chunk;
        while !rd.is_empty() {
            match acceptor.read_tls(&mut rd) {
                Ok(0) | Err(_) => return Ok(Hello::Other { raw }),
                Ok(_) => {}
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                return Ok(Hello::Tls {
                    accepted: Box::new(accepted),
                    raw,
                });
            }
            Ok(None) if raw.len() < MAX_HELLO_BYTES => continue,
            Ok(None) => return Ok(Hello::Other { raw }),
            Err(_) => return Ok(Hello::Other { raw }),
        }
    }
}

async fn splice(shared: &Shared, client: TcpStream, dst: SocketAddr, raw: &[u8]) {
    shared.stats.spliced.fetch_add(1, Ordering::Relaxed);
    let timeout = Duration::from_secs(shared.cfg.upstream_connect_timeout_secs);
    let mut server = match tokio::time::timeout(timeout, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!("splice to {dst}: {e}");
            return;
        }
        Err(_) => return,
    };
    let _ = server.set_nodelay(true);
    if server.write_all(raw).await.is_err() {
        return;
    }
    let idle = Duration::from_secs(shared.cfg.idle_timeout_secs);
    if !crate::idle::copy_bidirectional_idle(client, server, idle).await {
        shared.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A per-connection secret (hex) for the framing guard's synthetic requests.
fn random_token() -> Option<String> {
    let mut b = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut b)
        .ok()?;
    Some(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Classify a failed client handshake (pure).
pub fn handshake_end(e: &std::io::Error) -> HandshakeEnd {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    ) {
        return HandshakeEnd::Silent;
    }
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied,
        )) => HandshakeEnd::RejectedCertificate,
        _ => HandshakeEnd::Other,
    }
}

/// A steered connection that will not be decrypted: spliced when an admin allowed it (bypass
/// lists, `uninspectable = "pass"`), else closed. Both are audited.
async fn not_inspected(
    shared: &Shared,
    tcp: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    raw: &[u8],
    name: &str,
    outcome: NotInspected,
) {
    let (pass, policy, app) = match &outcome {
        NotInspected::Bypass(why) => (true, why.clone(), "-".to_string()),
        NotInspected::Uninspectable(_) => (
            shared.cfg.uninspectable == Uninspectable::Pass,
            "uninspectable".to_string(),
            "-".to_string(),
        ),
    };
    let reason = match &outcome {
        NotInspected::Bypass(why) => format!("{name}: not decrypted ({why})"),
        NotInspected::Uninspectable(why) => {
            format!("connection to {dst} cannot be inspected: {why}")
        }
    };
    if pass {
        shared.stats.steered_splices.fetch_add(1, Ordering::Relaxed);
        shared.audit_connection(peer.ip(), &app, name, &policy, "splice", reason);
        splice(shared, tcp, dst, raw).await;
    } else {
        shared
            .stats
            .uninspectable_blocked
            .fetch_add(1, Ordering::Relaxed);
        shared.audit_connection(peer.ip(), &app, name, &policy, "block", reason);
        drop(tcp);
    }
}

enum NotInspected {
    Bypass(String),
    Uninspectable(String),
}

async fn handle(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    // Two phases, so that the connection's task stays small while it serves: everything up
    // to the client handshake (the ClientHello and our copy of it, rustls' `Accepted`, the
    // handshake, a splice) runs in a box of its own, freed once the handshake is done. Inline,
    // the task would be as large as its largest phase (~3 KiB) for its whole life, times
    // every open connection.
    let Some(conn) = Box::pin(intercept(&shared, tcp, peer)).await else {
        return;
    };
    serve_http(&shared, conn).await;
}

/// A decrypted client connection, ready for HTTP. Handed over boxed: inline, its TLS
/// stream (~1.2 KiB, moved on into hyper's connection) would size the serving phase too.
struct Intercepted {
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    ctx: Arc<ConnCtx>,
    client_h2: bool,
    token: String,
    verdict: Arc<std::sync::OnceLock<&'static str>>,
    activity: Arc<crate::idle::Activity>,
}

impl Intercepted {
    /// Out of its box, which is freed here (not at the end of the caller's scope).
    fn unbox(self: Box<Self>) -> Self {
        *self
    }
}

/// Everything before HTTP: the destination, the ClientHello, the interception decision, the
/// origin and the client handshake. `None` when the connection was spliced, refused or
/// failed (and is finished).
async fn intercept(
    shared: &Arc<Shared>,
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> Option<Box<Intercepted>> {
    let _ = tcp.set_nodelay(true);
    let Some(dst) = original_destination(shared, &tcp) else {
        tracing::debug!("{peer}: connection to the proxy itself refused");
        return None;
    };
    if let Some(why) = shared.destination_refused(dst.ip()) {
        shared
            .stats
            .refused_destinations
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!("{peer} -> {dst}: refused: {why}");
        shared.audit_connection(peer.ip(), "-", "-", "destination", "block", why);
        return None;
    }
    let hs_timeout = Duration::from_secs(shared.cfg.handshake_timeout_secs);
    let hello = match read_hello(&mut tcp, hs_timeout).await {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!("{peer} -> {dst}: {e}");
            return None;
        }
    };
    let (accepted, raw) = match hello {
        Hello::Other { raw } => {
            let why =
                NotInspected::Uninspectable("no TLS ClientHello that parses within 64 KiB".into());
            not_inspected(shared, tcp, peer, dst, &raw, "-", why).await;
            return None;
        }
        Hello::Tls { accepted, raw } => (accepted, raw),
    };
    let (sni, offer_h2) = {
        let ch = accepted.client_hello();
        let sni = ch.server_name().map(str::to_string);
        let h2 = ch.alpn().is_some_and(|mut a| a.any(|p| p == b"h2"));
        (sni, h2)
    };
    let Some(sni) = sni else {
        let why = NotInspected::Uninspectable("no server name (SNI)".into());
        not_inspected(shared, tcp, peer, dst, &raw, "-", why).await;
        return None;
    };
    let app = match shared.intercept_decision(peer.ip(), &sni) {
        Verdict::Intercept(app) => app,
        Verdict::Bypass(why) => {
            let why = NotInspected::Bypass(why);
            not_inspected(shared, tcp, peer, dst, &raw, &sni, why).await;
            return None;
        }
        Verdict::Uninspectable(why) => {
            let why = NotInspected::Uninspectable(why);
            not_inspected(shared, tcp, peer, dst, &raw, &sni, why).await;
            return None;
        }
        Verdict::RejectBypass(app) => {
            shared
                .stats
                .client_reject_bypasses
                .fetch_add(1, Ordering::Relaxed);
            shared.stats.steered_splices.fetch_add(1, Ordering::Relaxed);
            shared.audit_connection(
                peer.ip(),
                &app.id,
                &sni,
                "client_reject_bypass_apps",
                "splice",
                format!(
                    "the client rejected the gateway's certificate for {sni}; not decrypted for up to {}s",
                    shared.cfg.client_reject_bypass_secs
                ),
            );
            splice(shared, tcp, dst, &raw).await;
            return None;
        }
    };
    shared.stats.intercepted.fetch_add(1, Ordering::Relaxed);
    let key = Key {
        dst,
        name: normalize_name(&sni),
        offer_h2,
    };

    // The origin first: its certificate and its protocol decide how we answer the client.
    // An idle connection, or an origin verified moments ago, lets the handshake go ahead.
    let (first, upstream_error, h2) = if let Some(c) = shared.pool.checkout(&key).await {
        let h2 = c.is_h2();
        (Some(c), None, h2)
    } else if let Some(h2) = shared.pool.known(&key) {
        (None, None, h2)
    } else {
        let timeout = Duration::from_secs(shared.cfg.upstream_connect_timeout_secs);
        match Box::pin(shared.pool.get(&shared.upstream, &key, timeout)).await {
            Ok((c, _)) => {
                let h2 = c.is_h2();
                (Some(c), None, h2)
            }
            Err(UpstreamFailure::Connect(e)) => {
                tracing::info!("{peer} -> {dst} ({sni}): origin unreachable: {e}");
                return None; // as if the origin refused: the client sees a closed connection
            }
            Err(e) => {
                shared
                    .stats
                    .upstream_cert_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!("{peer} -> {dst} ({sni}): {e}");
                (None, Some(e), false)
            }
        }
    };
    // Make sure the leaf exists before the (synchronous) resolver runs.
    if let Err(e) = shared.ca.leaf(&sni) {
        tracing::warn!("{sni}: {e}");
        return None;
    }
    let cfg = if h2 {
        shared.server_h2.clone()
    } else {
        shared.server_h1.clone()
    };
    let start = tokio_rustls::StartHandshake::from_parts(*accepted, tcp);
    // The handshake and the HTTP connection below are boxed: inline, the connection task
    // would be as large as its largest phase (~8 KiB) for its whole life; boxed, each phase
    // holds only what it uses, and the handshake's memory goes when it ends.
    let mut tls = match tokio::time::timeout(hs_timeout, Box::pin(start.into_stream(cfg))).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            let how = handshake_end(&e);
            if how == HandshakeEnd::RejectedCertificate || how == HandshakeEnd::Silent {
                let listed = shared.reject_bypass_allowed(&app.id, &normalize_name(&sni));
                let rejected = shared.handshake_failed(peer.ip(), &sni, how);
                if rejected {
                    let then = if listed {
                        format!(
                            "its connections to {sni} are spliced for {}s (client_reject_bypass_apps)",
                            shared.cfg.client_reject_bypass_secs
                        )
                    } else {
                        "the app stays under session control".to_string()
                    };
                    tracing::info!("{peer} rejected our certificate for {sni} ({e}); {then}");
                    shared.audit_connection(
                        peer.ip(),
                        &app.id,
                        &sni,
                        "client certificate rejection",
                        "audit",
                        format!("the client rejected the gateway's certificate ({e}); {then}"),
                    );
                    return None;
                }
            }
            shared
                .stats
                .client_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("{peer} ({sni}): client handshake: {e}");
            return None;
        }
        Err(_) => return None,
    };
    shared.handshake_ok(peer.ip(), &sni);
    tls.get_mut()
        .1
        .set_buffer_limit(Some(CLIENT_TLS_SEND_LIMIT));
    let client_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let client_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|c| !c.is_empty());
    let Some(token) = random_token() else {
        tracing::warn!("no randomness for the connection secret; closing {peer}");
        return None;
    };
    let verdict: Arc<std::sync::OnceLock<&'static str>> = Arc::default();
    let activity = if client_h2 {
        crate::idle::Activity::for_streams()
    } else {
        crate::idle::Activity::new()
    };
    activity.touch();
    let ctx = Arc::new(ConnCtx {
        guard_token: token.clone(),
        guard_verdict: verdict.clone(),
        user: shared.user_of(peer.ip()),
        // A verified client certificate (only asked for with managed_devices.client_ca_file).
        managed: client_cert || shared.managed(peer.ip()),
        shared: shared.clone(),
        app: app.id,
        src: peer,
        sni,
        key,
        upstream_error,
        first: Mutex::new(first),
        activity: activity.clone(),
    });
    Some(Box::new(Intercepted {
        tls,
        ctx,
        client_h2,
        token,
        verdict,
        activity,
    }))
}

/// Serves HTTP/1.1 or HTTP/2 on a decrypted client connection until it ends.
async fn serve_http(shared: &Arc<Shared>, conn: Box<Intercepted>) {
    let Intercepted {
        tls,
        ctx,
        client_h2,
        token,
        verdict,
        activity,
    } = conn.unbox();
    let peer = ctx.src;
    // hyper keeps its service's future inline for the connection's whole life, even between
    // requests: `handle` returns a small future (under 100 B) that boxes the request's state
    // itself, so that state lives only while the request is in flight.
    let svc = service_fn(move |req| ctx.clone().handle(req));
    let cfg = &shared.cfg;
    // Whether the client takes what is written to it (`client_send_timeout_secs`).
    let tls = crate::idle::SendWatch {
        inner: tls,
        activity: activity.clone(),
    };
    let res = if client_h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(60)))
            .serve_connection(TokioIo::new(tls), svc);
        drive(shared, &activity, peer, Box::pin(conn), |c| {
            c.graceful_shutdown()
        })
        .await
    } else {
        let guard = H1Guard::new(
            Linger { io: Some(tls) },
            cfg.max_header_bytes.max(8192),
            token,
            verdict,
        );
        // What an HTTP/1.1 client connection costs at least (heaptrack, hyper 1.12, rustls
        // 0.23): hyper's read buffer (8 KiB, reserved before every read, also while a request
        // waits: hyper reads to notice a client that goes away) and its response-head write
        // buffer (8 KiB, allocated with the connection even with `writev`); no Builder option
        // lowers either (`max_buf_size` is at least 8 KiB, and it is a maximum). rustls' record
        // buffer (4 KiB) and keys (~1 KiB), the TLS stream (~1.2 KiB, in hyper's box), the
        // task and, while a request is in flight, its future (~0.5 and ~1.5 KiB) come on top.
        let conn = hyper::server::conn::http1::Builder::new()
            // Vectored writes: hyper queues the body's frames (slices of an inspected body, or
            // the origin's) instead of copying them into a write buffer of its own, which
            // grows to `max_buf_size` and stays that large for the life of the connection
            // (64 KiB and more for every client connection that ever received a large body).
            // rustls still puts a response head and a small body in one TLS record and one
            // write (`Linger` and `H1Guard` pass the vectored writes through).
            .writev(true)
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(cfg.header_read_timeout_secs))
            .max_buf_size(cfg.max_header_bytes.max(8192))
            .serve_connection(TokioIo::new(guard), svc)
            .with_upgrades();
        drive(shared, &activity, peer, Box::pin(conn), |c| {
            c.graceful_shutdown()
        })
        .await
    };
    if let Err(e) = res {
        tracing::debug!("{peer}: connection ended: {e}");
    }
}

/// Serves a client connection (either protocol) until it ends. One with no request in
/// flight for `idle_timeout_secs` is closed gracefully (h2 keep-alive pings do not count as
/// use). One whose client has taken no response bytes for `client_send_timeout_secs` is
/// dropped at once: a graceful end would have to write to it.
async fn drive<C>(
    shared: &Shared,
    activity: &crate::idle::Activity,
    peer: SocketAddr,
    // Boxed by the caller: the connection's task would otherwise hold it by value, as this
    // function's argument, beside the boxed copy.
    mut conn: std::pin::Pin<Box<C>>,
    graceful_shutdown: impl FnOnce(std::pin::Pin<&mut C>),
) -> hyper::Result<()>
where
    C: std::future::Future<Output = hyper::Result<()>>,
{
    let idle = Duration::from_secs(shared.cfg.idle_timeout_secs);
    let send_limit = Duration::from_secs(shared.cfg.client_send_timeout_secs);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = activity.expired(idle) => {
            shared.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
            graceful_shutdown(conn.as_mut());
            tokio::time::timeout(Duration::from_secs(5), conn).await.unwrap_or(Ok(()))
        }
        _ = activity.send_stalled(send_limit) => {
            shared.stats.client_send_timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("{peer}: took no response bytes for {send_limit:?}; closed");
            Ok(())
        }
    }
}

/// A decrypted client connection, watched for writes that do not go through.
type ClientStream = crate::idle::SendWatch<tokio_rustls::server::TlsStream<TcpStream>>;

/// Wraps the client stream of an HTTP/1.1 connection so that, when hyper drops it, the
/// remaining client bytes are read for a moment before the socket closes ("lingering
/// close", as nginx does): closing with unread bytes makes the kernel send a reset, which
/// can destroy the response the client has not read yet.
struct Linger {
    io: Option<ClientStream>,
}

/// How long a closed HTTP/1.1 connection keeps draining the client.
const LINGER: Duration = Duration::from_secs(2);

impl Linger {
    fn io(&mut self) -> std::io::Result<&mut ClientStream> {
        self.io
            .as_mut()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected))
    }
}

impl Drop for Linger {
    fn drop(&mut self) {
        let (Some(mut io), Ok(rt)) = (self.io.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        rt.spawn(async move {
            let _ = tokio::time::timeout(LINGER, async {
                let mut buf = [0u8; 2048];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        });
    }
}

impl tokio::io::AsyncRead for Linger {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.io() {
            Ok(io) => std::pin::Pin::new(io).poll_read(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}

impl tokio::io::AsyncWrite for Linger {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.io() {
            Ok(io) => std::pin::Pin::new(io).poll_write(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.io() {
            Ok(io) => std::pin::Pin::new(io).poll_write_vectored(cx, bufs),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_none_or(|io| io.is_write_vectored())
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.io() {
            Ok(io) => std::pin::Pin::new(io).poll_flush(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.io() {
            Ok(io) => std::pin::Pin::new(io).poll_shutdown(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, C, F: std::future::Future>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn future_size2<A, B, F: std::future::Future>(_: impl Fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every open connection holds its task (the `handle` future) and, while a request is in
    /// flight, that request's future: both stay small, the handshake's and the origin
    /// request's state being boxed apart. (Release builds: 800 B and ~1 KiB.)
    #[test]
    fn per_connection_futures_stay_small() {
        let task = future_size(handle);
        // `handle` boxes `handle_inner`'s future: a request in flight holds both.
        let request = future_size2(ConnCtx::handle) + future_size2(ConnCtx::handle_inner);
        eprintln!("connection task future {task} B, request future {request} B");
        assert!(task <= 1024, "connection task future: {task} B");
        assert!(request <= 1280, "request future: {request} B");
    }
}
