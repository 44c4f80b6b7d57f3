//! The HTTP layer of an intercepted connection: one hyper service per client connection.
//! For each request: framing checks (smuggling), access and activity policies, upload
//! inspection, forwarding to the origin, download inspection; block pages and audit
//! records on the way.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::audit::{AuditRecord, now_rfc3339};
use crate::config::{Action, OverLimitAction};
use crate::policy::{self, Decision, Policies, RequestInfo, TransferMeta};
use crate::server::Shared;
use crate::upstream::{self, BoxError, Conn, Key, ProxyBody, UpstreamFailure};

/// Everything the service knows about its client connection.
pub struct ConnCtx {
    pub shared: Arc<Shared>,
    pub app: String,
    pub src: SocketAddr,
    pub sni: String,
    pub user: Option<String>,
    pub managed: bool,
    pub key: Key,
    /// Set when the origin's certificate (or TLS) failed: every request gets the explanation.
    pub upstream_error: Option<UpstreamFailure>,
    /// The connection opened before the client handshake, used by the first request.
    pub first: Mutex<Option<Conn>>,
    /// Secret of the HTTP/1.1 framing guard's synthetic "rejected" request.
    pub guard_token: String,
    pub guard_verdict: Arc<std::sync::OnceLock<&'static str>>,
}

fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn wants_html(h: &HeaderMap) -> bool {
    h.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// The block page (HTML for browsers, JSON for API clients).
pub fn block_response(
    status: StatusCode,
    html: bool,
    title: &str,
    app: &str,
    policy: &str,
    reason: &str,
) -> Response<ProxyBody> {
    let (ctype, body) = if html {
        let b = format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\
<style>body{{font-family:sans-serif;max-width:40em;margin:4em auto;color:#222}}h1{{color:#b00}}dt{{font-weight:bold}}</style></head>\
<body><h1>{t}</h1><p>Tollgate, your organisation's gateway, stopped this request.</p><dl>\
<dt>Application</dt><dd>{a}</dd><dt>Policy</dt><dd>{p}</dd><dt>Reason</dt><dd>{r}</dd></dl>\
<p>If you think this is wrong, contact your IT administrator.</p></body></html>\n",
            t = html_escape(title),
            a = html_escape(app),
            p = html_escape(policy),
            r = html_escape(reason)
        );
        ("text/html; charset=utf-8", b)
    } else {
        let v = serde_json::json!({
            "error": "blocked_by_tollgate", "title": title, "app": app, "policy": policy, "reason": reason
        });
        ("application/json", format!("{v}\n"))
    };
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(
        HeaderName::from_static("x-tollgate-blocked"),
        HeaderValue::from_static("1"),
    );
    r
}

fn bad_request(reason: &str) -> Response<ProxyBody> {
    let mut r = Response::new(full(format!("{reason}\n")));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Hop-by-hop headers (RFC 9110 7.6.1) plus whatever `Connection` lists.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        // The proxy has already answered 100-continue (hyper does when the body is read).
        "expect",
    ] {
        h.remove(n);
    }
}

/// Request framing that could be read two ways is refused, never forwarded.
fn framing_problem(req: &Request<Incoming>) -> Option<&'static str> {
    let h = req.headers();
    let cl: Vec<&HeaderValue> = h.get_all(header::CONTENT_LENGTH).iter().collect();
    let te = h.get_all(header::TRANSFER_ENCODING).iter().count();
    if cl.len() > 1 {
        return Some("ambiguous request: more than one Content-Length");
    }
    if !cl.is_empty() && te > 0 {
        return Some("ambiguous request: both Content-Length and Transfer-Encoding");
    }
    if te > 0 && req.version() != Version::HTTP_11 {
        return Some("Transfer-Encoding is not allowed in this HTTP version");
    }
    // Only plain `chunked` is forwarded: any other coding list could be framed differently
    // by the origin.
    if te > 1
        || h.get(header::TRANSFER_ENCODING).is_some_and(|v| {
            !v.to_str()
                .is_ok_and(|s| s.trim().eq_ignore_ascii_case("chunked"))
        })
    {
        return Some("unsupported Transfer-Encoding");
    }
    if let Some(v) = cl.first()
        && v.to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_none()
    {
        return Some("invalid Content-Length");
    }
    None
}

/// A body that replays a buffered prefix, then streams the rest.
struct PrefixedBody {
    prefix: Option<Bytes>,
    rest: Option<ProxyBody>,
}

impl Body for PrefixedBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        match self.rest.as_mut() {
            Some(r) => Pin::new(r).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }
    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }
}

/// Returns the HTTP/1.1 origin connection to the pool when the response body is done.
struct PoolReturn {
    inner: Incoming,
    ret: Option<(Arc<Shared>, Key, upstream::H1)>,
    done: bool,
}

impl Body for PoolReturn {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.done = true,
            Poll::Ready(Some(Err(_))) => self.ret = None,
            _ => {}
        }
        r.map_err(BoxError::from)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PoolReturn {
    fn drop(&mut self) {
        if (self.done || self.inner.is_end_stream())
            && let Some((shared, key, s)) = self.ret.take()
        {
            shared.pool.put_h1(key, s);
        }
    }
}

enum Buffered {
    /// The whole body.
    Complete(Bytes),
    /// The first `cap` bytes; the rest still to stream.
    Partial(Bytes, ProxyBody),
}

#[derive(Debug)]
enum BufferError {
    Timeout,
    Body(BoxError),
}

/// Read up to `cap` bytes of `body` (trailers are dropped).
async fn buffer(
    mut body: ProxyBody,
    cap: usize,
    timeout: Duration,
) -> Result<Buffered, BufferError> {
    let mut buf = BytesMut::new();
    let fut = async {
        loop {
            if buf.len() > cap {
                return Ok(false);
            }
            match body.frame().await {
                None => return Ok(true),
                Some(Err(e)) => return Err(BufferError::Body(e)),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        buf.extend_from_slice(&d);
                    }
                }
            }
        }
    };
    let complete = match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r?,
        Err(_) => return Err(BufferError::Timeout),
    };
    let bytes = buf.freeze();
    Ok(if complete {
        Buffered::Complete(bytes)
    } else {
        Buffered::Partial(bytes, body)
    })
}

fn url_filename(path: &str) -> Option<String> {
    let p = path.split(['?', '#']).next().unwrap_or(path);
    let last = p.rsplit('/').next()?;
    (!last.is_empty() && last.contains('.')).then(|| last.to_string())
}

fn header_str(h: &HeaderMap, n: HeaderName) -> Option<&str> {
    h.get(n).and_then(|v| v.to_str().ok())
}

fn transfer_meta(h: &HeaderMap, path: &str) -> TransferMeta {
    let mut m = TransferMeta {
        content_type: header_str(h, header::CONTENT_TYPE).map(policy::media_type),
        size: header_str(h, header::CONTENT_LENGTH).and_then(|v| v.trim().parse().ok()),
        content_encoding: header_str(h, header::CONTENT_ENCODING).map(str::to_string),
        ..Default::default()
    };
    if let Some(f) =
        header_str(h, header::CONTENT_DISPOSITION).and_then(policy::disposition_filename)
    {
        m.filenames.push(f);
    }
    if let Some(f) = url_filename(path) {
        m.filenames.push(f);
    }
    m
}

/// Outcome of inspecting one body.
struct Inspected {
    decision: Option<Decision>,
    body: ProxyBody,
}

impl ConnCtx {
    fn audit(&self, info: &RequestInfo<'_>, d: &Decision) {
        self.shared.audit.record(AuditRecord {
            time: now_rfc3339(),
            app: self.app.clone(),
            user: self.user.clone(),
            src_ip: self.src.ip(),
            host: info.host.to_string(),
            method: info.method.to_string(),
            path: info.path.to_string(),
            stage: d.stage.to_string(),
            policy: d.policy.clone(),
            action: d.action.as_str().to_string(),
            reason: d.reason.clone(),
            evidence: d.evidence.clone(),
        });
    }

    fn blocked(&self, html: bool, d: &Decision) -> Response<ProxyBody> {
        let title = match d.stage {
            "upload" => "Upload blocked",
            "download" => "Download blocked",
            "access" => "Access blocked",
            _ => "Action blocked",
        };
        block_response(
            StatusCode::FORBIDDEN,
            html,
            title,
            &self.app,
            &d.policy,
            &d.reason,
        )
    }

    /// Inspect a body against transfer rules, buffering as the rules need.
    async fn inspect(
        &self,
        rules: &[policy::TransferRef<'_>],
        mut meta: TransferMeta,
        boundary: Option<String>,
        body: ProxyBody,
    ) -> Inspected {
        let cfg = &self.shared.cfg;
        let needs_body = rules.iter().any(|r| r.rule.needs_body(&meta));
        if !needs_body {
            return Inspected {
                decision: policy::check_transfer(rules, &meta, None),
                body,
            };
        }
        let cap = usize::try_from(cfg.max_inspect_bytes.0).unwrap_or(usize::MAX);
        let buffered = buffer(body, cap, Duration::from_secs(cfg.body_read_timeout_secs)).await;
        let limit = |reason: String| Decision {
            action: match cfg.over_limit_action {
                OverLimitAction::Block => Action::Block,
                OverLimitAction::Allow => Action::Audit,
            },
            policy: "inspection limit".into(),
            stage: if rules.first().is_some_and(|r| r.upload) {
                "upload"
            } else {
                "download"
            },
            reason,
            evidence: Vec::new(),
        };
        match buffered {
            Err(BufferError::Timeout) => Inspected {
                decision: Some(Decision {
                    action: Action::Block,
                    ..limit("body not received in time".into())
                }),
                body: full(Bytes::new()),
            },
            Err(BufferError::Body(e)) => Inspected {
                decision: Some(Decision {
                    action: Action::Block,
                    ..limit(format!("body could not be read: {e}"))
                }),
                body: full(Bytes::new()),
            },
            Ok(Buffered::Complete(b)) => {
                meta.size = Some(b.len() as u64);
                let (seen, problem) = check_decoded(rules, &mut meta, boundary, &b, true, cap);
                Inspected {
                    decision: policy::stricter(seen, problem.map(limit)),
                    body: full(b),
                }
            }
            Ok(Buffered::Partial(prefix, rest)) => {
                let (seen, _) = check_decoded(rules, &mut meta, boundary, &prefix, false, cap);
                let over = limit(format!(
                    "body larger than the inspection limit of {cap} bytes; only the first part was inspected"
                ));
                let decision = policy::stricter(seen, Some(over));
                Inspected {
                    decision,
                    body: PrefixedBody {
                        prefix: Some(prefix),
                        rest: Some(rest),
                    }
                    .boxed(),
                }
            }
        }
    }
}

/// Checks a buffered body (`complete`, or a prefix of it) in its decoded form; the second
/// value says why the body could not be inspected whole (an unknown or corrupt coding, or a
/// decoded size over the limit), for the over-limit action.
fn check_decoded(
    rules: &[policy::TransferRef<'_>],
    meta: &mut TransferMeta,
    boundary: Option<String>,
    body: &[u8],
    complete: bool,
    cap: usize,
) -> (Option<Decision>, Option<String>) {
    match crate::decode::decode(meta.content_encoding.as_deref(), body, complete, cap) {
        Ok(d) => {
            add_multipart(meta, boundary.as_deref(), &d.bytes);
            let problem = (d.truncated && complete).then(|| {
                format!(
                    "decoded body larger than the inspection limit of {cap} bytes; only the first part was inspected"
                )
            });
            (policy::check_transfer(rules, meta, Some(&d.bytes)), problem)
        }
        Err(why) => {
            add_multipart(meta, boundary.as_deref(), body);
            (policy::check_transfer(rules, meta, Some(body)), Some(why))
        }
    }
}

fn add_multipart(meta: &mut TransferMeta, boundary: Option<&str>, body: &[u8]) {
    if let Some(ct) = meta.content_type.as_deref()
        && ct.starts_with("multipart/")
        && let Some(b) = boundary
    {
        let (names, types) = policy::multipart_parts(body, b);
        meta.filenames.extend(names);
        meta.part_types.extend(types);
    }
}

impl ConnCtx {
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        Ok(self.handle_inner(req).await)
    }

    async fn handle_inner(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        if let Some(v) = req.headers_mut().remove(crate::guard::GUARD_HEADER)
            && v.as_bytes() == self.guard_token.as_bytes()
            && let Some(why) = self.guard_verdict.get()
        {
            self.shared
                .stats
                .rejected_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(src = %self.src, sni = %self.sni, "rejected: {why}");
            return bad_request(why);
        }
        if let Some(problem) = framing_problem(&req) {
            self.shared
                .stats
                .rejected_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(src = %self.src, sni = %self.sni, "rejected: {problem}");
            return bad_request(problem);
        }
        let html = wants_html(req.headers());
        let host = req
            .uri()
            .authority()
            .map(|a| a.host().to_string())
            .or_else(|| {
                header_str(req.headers(), header::HOST)
                    .map(|h| h.split(':').next().unwrap_or(h).to_string())
            })
            .unwrap_or_else(|| self.sni.clone());
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let method = req.method().as_str().to_string();
        let ua = header_str(req.headers(), header::USER_AGENT)
            .unwrap_or("")
            .to_string();
        let info = RequestInfo {
            app: &self.app,
            src: self.src.ip(),
            user: self.user.as_deref(),
            managed: self.managed,
            host: &host,
            method: &method,
            path: &path,
            user_agent: &ua,
            now: time::OffsetDateTime::now_utc(),
        };

        if let Some(fail) = &self.upstream_error {
            let d = Decision {
                action: Action::Block,
                policy: "upstream certificate verification".into(),
                stage: "tls",
                reason: fail.to_string(),
                evidence: Vec::new(),
            };
            self.audit(&info, &d);
            return block_response(
                StatusCode::BAD_GATEWAY,
                html,
                "Unsafe connection blocked",
                &self.app,
                &d.policy,
                &format!(
                    "Tollgate could not verify the identity of {}: {fail}. The connection was stopped to protect you.",
                    self.sni
                ),
            );
        }

        let policies: Arc<Policies> = self.shared.policies.borrow().clone();
        let concerned = policies.concerns(&self.app);
        if concerned {
            let d = policy::stricter(policies.access(&info), policies.activity(&info));
            if let Some(d) = d {
                self.audit(&info, &d);
                if d.action == Action::Block {
                    return self.blocked(html, &d);
                }
            }
        }

        if req.version() == Version::HTTP_11 && req.headers().contains_key(header::UPGRADE) {
            return Box::pin(self.upgrade(req, &host, html)).await;
        }

        let (mut parts, body) = req.into_parts();
        if concerned {
            // Responses must come back in a coding the proxy can inspect.
            crate::decode::narrow_accept_encoding(&mut parts.headers);
        }
        let mut body: ProxyBody = body.map_err(BoxError::from).boxed();
        if concerned && !body.is_end_stream() {
            let rules = policies.transfer_rules(&self.app, true);
            if !rules.is_empty() {
                let meta = transfer_meta(&parts.headers, &path);
                let boundary = header_str(&parts.headers, header::CONTENT_TYPE)
                    .and_then(policy::multipart_boundary);
                let ins = Box::pin(self.inspect(&rules, meta, boundary, body)).await;
                body = ins.body;
                if let Some(d) = ins.decision {
                    self.audit(&info, &d);
                    if d.action == Action::Block {
                        return self.blocked(html, &d);
                    }
                }
                // A buffered body has a known length now.
                if let Some(n) = body.size_hint().exact() {
                    parts.headers.remove(header::TRANSFER_ENCODING);
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                }
            }
        }

        let resp = match self.forward(parts, body, &host).await {
            Ok(r) => r,
            Err(msg) => {
                self.shared
                    .stats
                    .upstream_request_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(src = %self.src, sni = %self.sni, "upstream request failed: {msg}");
                return block_response(
                    StatusCode::BAD_GATEWAY,
                    html,
                    "Server unreachable",
                    &self.app,
                    "-",
                    &msg,
                );
            }
        };

        if concerned {
            let rules = policies.transfer_rules(&self.app, false);
            if !rules.is_empty() && method != Method::HEAD.as_str() {
                let (mut rparts, rbody) = resp.into_parts();
                let meta = transfer_meta(&rparts.headers, &path);
                let boundary = header_str(&rparts.headers, header::CONTENT_TYPE)
                    .and_then(policy::multipart_boundary);
                let ins = Box::pin(self.inspect(&rules, meta, boundary, rbody)).await;
                if let Some(d) = ins.decision {
                    self.audit(&info, &d);
                    if d.action == Action::Block {
                        return self.blocked(html, &d);
                    }
                }
                if let Some(n) = ins.body.size_hint().exact() {
                    rparts.headers.remove(header::TRANSFER_ENCODING);
                    rparts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                }
                return Response::from_parts(rparts, ins.body);
            }
        }
        resp
    }

    /// `Upgrade` (WebSocket): forward the handshake; on `101` splice the two upgraded
    /// streams (frames are not inspected); otherwise answer and close the connection.
    async fn upgrade(
        &self,
        mut req: Request<Incoming>,
        host: &str,
        html: bool,
    ) -> Response<ProxyBody> {
        let client_side = hyper::upgrade::on(&mut req);
        let proto = req.headers().get(header::UPGRADE).cloned();
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(p) = proto {
            parts.headers.insert(header::UPGRADE, p);
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        if !parts.headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(host)
        {
            parts.headers.insert(header::HOST, v);
        }
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let Ok(uri) = Uri::try_from(pq.as_str()) else {
            return bad_request("bad request target");
        };
        parts.uri = uri;
        let req = Request::from_parts(parts, body.map_err(BoxError::from).boxed());
        let fail = |msg: String| {
            let mut r = block_response(
                StatusCode::BAD_GATEWAY,
                html,
                "Server unreachable",
                &self.app,
                "-",
                &msg,
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        };
        let mut h1 = match self.conn().await {
            Ok((Conn::H1(h), _)) => h,
            Ok((Conn::H2(_), _)) => {
                return fail(
                    "the server speaks HTTP/2; HTTP/1.1 upgrades cannot be relayed".into(),
                );
            }
            Err(e) => return fail(e),
        };
        let mut resp = match h1.send.send_request(req).await {
            Ok(r) => r,
            Err(e) => return fail(format!("request to the server failed: {e}")),
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (mut p, b) = resp.into_parts();
            strip_hop_by_hop(&mut p.headers);
            p.headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Response::from_parts(p, b.map_err(BoxError::from).boxed());
        }
        let server_side = hyper::upgrade::on(&mut resp);
        let (src, sni) = (self.src, self.sni.clone());
        tokio::spawn(async move {
            let _slot = h1; // the origin connection's slot stays taken while the tunnel lives
            match (client_side.await, server_side.await) {
                (Ok(c), Ok(s)) => {
                    let (mut c, mut s) = (
                        hyper_util::rt::TokioIo::new(c),
                        hyper_util::rt::TokioIo::new(s),
                    );
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
                }
                (c, s) => {
                    tracing::debug!(%src, %sni, "upgrade failed: client {:?}, server {:?}", c.err(), s.err())
                }
            }
        });
        let (p, _) = resp.into_parts();
        Response::from_parts(p, full(Bytes::new()))
    }

    async fn conn(&self) -> Result<(Conn, bool), String> {
        let first = self.first.lock().ok().and_then(|mut g| g.take());
        if let Some(c) = first {
            return Ok((c, false));
        }
        let timeout = Duration::from_secs(self.shared.cfg.upstream_connect_timeout_secs);
        Box::pin(
            self.shared
                .pool
                .get(&self.shared.upstream, &self.key, timeout),
        )
        .await
        .map_err(|e| e.to_string())
    }

    async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: ProxyBody,
        host: &str,
    ) -> Result<Response<ProxyBody>, String> {
        strip_hop_by_hop(&mut parts.headers);
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let authority = parts
            .uri
            .authority()
            .map(|a| a.to_string())
            .or_else(|| header_str(&parts.headers, header::HOST).map(str::to_string))
            .unwrap_or_else(|| host.to_string());
        let mut req = Request::from_parts(parts, body);
        for attempt in 0..2 {
            let (conn, pooled) = self.conn().await?;
            match conn {
                Conn::H2(mut s) => {
                    *req.version_mut() = Version::HTTP_2;
                    *req.uri_mut() = Uri::builder()
                        .scheme("https")
                        .authority(authority.as_str())
                        .path_and_query(pq.as_str())
                        .build()
                        .map_err(|e| format!("bad request target: {e}"))?;
                    req.headers_mut().remove(header::HOST);
                    let r = s
                        .send_request(req)
                        .await
                        .map_err(|e| format!("HTTP/2 request to the server failed: {e}"))?;
                    let (mut p, b) = r.into_parts();
                    strip_hop_by_hop(&mut p.headers);
                    return Ok(Response::from_parts(p, b.map_err(BoxError::from).boxed()));
                }
                Conn::H1(mut s) => {
                    *req.version_mut() = Version::HTTP_11;
                    *req.uri_mut() = Uri::try_from(pq.as_str())
                        .map_err(|e| format!("bad request target: {e}"))?;
                    if !req.headers().contains_key(header::HOST) {
                        let v = HeaderValue::from_str(&authority)
                            .map_err(|e| format!("bad host: {e}"))?;
                        req.headers_mut().insert(header::HOST, v);
                    }
                    match s.send.try_send_request(req).await {
                        Ok(r) => {
                            let (mut p, b) = r.into_parts();
                            strip_hop_by_hop(&mut p.headers);
                            let body = PoolReturn {
                                inner: b,
                                ret: Some((self.shared.clone(), self.key.clone(), s)),
                                done: false,
                            };
                            return Ok(Response::from_parts(p, body.boxed()));
                        }
                        Err(mut e) => match e.take_message() {
                            // A pooled connection the origin had closed: retry once on a new one.
                            Some(back) if pooled && attempt == 0 => req = back,
                            _ => {
                                return Err(format!("request to the server failed: {}", e.error()));
                            }
                        },
                    }
                }
            }
        }
        Err("request to the server failed".into())
    }
}
