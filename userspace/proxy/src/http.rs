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
use crate::budget::Share;
use crate::config::{Action, OverLimitAction};
use crate::idle::IdleBody;
use crate::policy::{self, Decision, Policies, RequestInfo, TransferMeta};
use crate::shared::Shared;
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
    /// Requests in flight and last activity, for the connection's idle timeout.
    pub activity: Arc<crate::idle::Activity>,
}

fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
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
            t = html_escape::encode_quoted_attribute(title),
            a = html_escape::encode_quoted_attribute(app),
            p = html_escape::encode_quoted_attribute(policy),
            r = html_escape::encode_quoted_attribute(reason)
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

/// Largest frame a buffered body is handed on in. hyper's writers may copy a frame whole
/// (HTTP/2 framing; HTTP/1 when it flattens writes): a 16 MiB frame would be a second 16 MiB
/// copy, outside the inspection memory budget; slices of the buffered bytes cost nothing.
const SLICE: usize = 16 * 1024;

/// An inspected body's bytes, which give their memory share back when the last slice of them
/// is freed. hyper queues the slices of a body and drops the body itself before it has
/// written them; a share held by the body would go back while up to the whole buffer still
/// waits for a slow client, and the next body would be admitted on top of it.
fn held_by(body: Bytes, share: Share) -> Bytes {
    struct Held {
        body: Bytes,
        _share: Share,
    }
    impl AsRef<[u8]> for Held {
        fn as_ref(&self) -> &[u8] {
            &self.body
        }
    }
    Bytes::from_owner(Held {
        body,
        _share: share,
    })
}

/// A buffered body handed on in [`SLICE`]-sized frames (zero-copy slices).
struct Sliced {
    rest: Bytes,
}

impl Sliced {
    fn new(b: Bytes) -> Sliced {
        Sliced { rest: b }
    }
}

impl Body for Sliced {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(SLICE);
        if n == self.rest.len() {
            // The last slice is a copy, so that the buffer and its memory share go back once
            // the slices before it are sent: an HTTP/2 client that keeps the stream's window
            // shut at the very end would otherwise hold the whole body with one slice, after
            // the body (and its watch) is gone.
            let last = Bytes::copy_from_slice(&self.rest);
            self.rest = Bytes::new();
            return Poll::Ready(Some(Ok(Frame::data(last))));
        }
        let chunk = self.rest.split_to(n);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
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
            if p.len() > SLICE {
                let rest = p.slice(SLICE..);
                self.prefix = Some(rest);
                return Poll::Ready(Some(Ok(Frame::data(p.slice(..SLICE)))));
            }
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
    /// The inspection memory budget did not free up in time.
    Busy,
    Body(BoxError),
}

/// Read up to `cap` bytes of `body` (trailers are dropped), holding them in `share`.
async fn buffer(
    mut body: ProxyBody,
    cap: usize,
    timeout: Duration,
    share: &mut Share,
    expected: Option<u64>,
) -> Result<Buffered, BufferError> {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let mut buf = BytesMut::new();
    let waiting = AtomicBool::new(false);
    let fut = async {
        // A known length is reserved at once, so that a body never holds part of the budget
        // while it waits for the rest.
        // The buffer is allocated once at that size, so that what the budget counts is what
        // the allocator holds (a growing buffer would hold up to twice its length, and both
        // copies while it moves).
        if let Some(n) = expected {
            let want = usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(cap.saturating_mul(2).saturating_add(1));
            waiting.store(true, Relaxed);
            share
                .grow_whole(want)
                .await
                .map_err(|_| BufferError::Busy)?;
            waiting.store(false, Relaxed);
            // A download admitted with a larger reservation gives back what it does not need.
            share.shrink(want);
            buf.reserve(want.min(cap.saturating_add(1)));
        }
        loop {
            if buf.len() > cap {
                return Ok(false);
            }
            match body.frame().await {
                None => return Ok(true),
                Some(Err(e)) => return Err(BufferError::Body(e)),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        let len = buf.len().saturating_add(d.len());
                        // Unknown length: grow by doubling, counted at capacity.
                        let capacity = if len <= buf.capacity() {
                            buf.capacity()
                        } else {
                            len.max(buf.capacity().saturating_mul(2))
                                .min(cap.saturating_add(1))
                                .max(len)
                        };
                        waiting.store(true, Relaxed);
                        share.grow(capacity).await.map_err(|_| BufferError::Busy)?;
                        waiting.store(false, Relaxed);
                        buf.reserve(capacity - buf.len());
                        buf.extend_from_slice(&d);
                    }
                }
            }
        }
    };
    let complete = match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r?,
        Err(_) if waiting.load(Relaxed) => return Err(BufferError::Busy),
        Err(_) => return Err(BufferError::Timeout),
    };
    if expected.is_none() {
        // Counted at capacity; an admission reservation beyond it goes back.
        share.shrink(buf.capacity());
    }
    let bytes = buf.freeze();
    Ok(if complete {
        Buffered::Complete(bytes)
    } else {
        Buffered::Partial(bytes, body)
    })
}

fn header_str(h: &HeaderMap, n: HeaderName) -> Option<&str> {
    h.get(n).and_then(|v| v.to_str().ok())
}

/// Every value of a header joined with `, ` (a repeated `Content-Encoding` is one list).
fn header_joined(h: &HeaderMap, n: HeaderName) -> Option<String> {
    let all: Vec<String> = h
        .get_all(n)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!all.is_empty()).then(|| all.join(", "))
}

/// Total length of a `Content-Range: bytes a-b/total` answer.
fn content_range_total(h: &HeaderMap) -> Option<u64> {
    header_str(h, header::CONTENT_RANGE)?
        .rsplit('/')
        .next()?
        .trim()
        .parse()
        .ok()
}

fn transfer_meta(h: &HeaderMap, path: &str) -> TransferMeta {
    let mut types = h
        .get_all(header::CONTENT_TYPE)
        .iter()
        .map(|v| policy::media_type(&String::from_utf8_lossy(v.as_bytes())));
    let mut m = TransferMeta {
        content_type: types.next(),
        // Further Content-Type headers are judged too (a client may believe any of them).
        part_types: types.collect(),
        size: header_str(h, header::CONTENT_LENGTH).and_then(|v| v.trim().parse().ok()),
        content_encoding: header_joined(h, header::CONTENT_ENCODING),
        ..Default::default()
    };
    if let Some(total) = content_range_total(h) {
        m.size = Some(m.size.map_or(total, |s| s.max(total)));
    }
    for v in h.get_all(header::CONTENT_DISPOSITION) {
        m.filenames
            .extend(policy::disposition_filenames(&String::from_utf8_lossy(
                v.as_bytes(),
            )));
    }
    m.filenames.extend(policy::url_filenames(path));
    m
}

/// Outcome of inspecting one body.
struct Inspected {
    decision: Option<Decision>,
    body: ProxyBody,
    /// The inspection memory budget was exhausted: answer 503.
    busy: bool,
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
            "governance" => "Access suspended",
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

    /// Inspect a body against the transfer rules of `policies` for this app (uploads or
    /// downloads), buffering as the rules need. `piece`: the body is a 206 piece of a file.
    /// `reserved`: memory taken for it before the request went out (see [`Self::admit`]).
    #[allow(
        clippy::too_many_arguments,
        reason = "the body, what is known about it, and the memory reserved for it"
    )]
    async fn inspect(
        &self,
        policies: &Arc<Policies>,
        upload: bool,
        mut meta: TransferMeta,
        boundary: Result<Option<String>, &'static str>,
        body: ProxyBody,
        piece: bool,
        reserved: Option<Share>,
    ) -> Inspected {
        let cfg = &self.shared.cfg;
        let rules = policies.transfer_rules(&self.app, upload);
        let needs_body = rules.iter().any(|r| r.rule.needs_body(&meta));
        let limit = |reason: String| Decision {
            action: match cfg.over_limit_action {
                OverLimitAction::Block => Action::Block,
                OverLimitAction::Allow => Action::Audit,
            },
            policy: "inspection limit".into(),
            stage: if upload { "upload" } else { "download" },
            reason,
            evidence: Vec::new(),
        };
        if piece && needs_body {
            // A piece of a file cannot be judged for its content (or decoded size) alone.
            return Inspected {
                decision: policy::stricter(
                    policy::check_transfer(&rules, &meta, None),
                    Some(limit(
                        "a partial download (206) cannot be inspected as a whole".into(),
                    )),
                ),
                body,
                busy: false,
            };
        }
        if !needs_body {
            return Inspected {
                decision: policy::check_transfer(&rules, &meta, None),
                body,
                busy: false,
            };
        }
        // The smallest size a blocking rule allows: a body streamed past the inspection limit
        // is cut there (its prefix could not show the total).
        let hard_cap = rules
            .iter()
            .filter(|r| r.action == Action::Block)
            .filter_map(|r| r.rule.max_size())
            .min();
        let cap = usize::try_from(cfg.max_inspect_bytes.0).unwrap_or(usize::MAX);
        let mut share = reserved.unwrap_or_else(|| self.shared.budget.share(self.src.ip()));
        // A form body is scanned form-decoded, a second copy: reserved with the body.
        let form = meta.content_type.as_deref() == Some("application/x-www-form-urlencoded");
        let expected = meta
            .size
            .map(|n| if form { n.saturating_mul(2) } else { n });
        let buffered = buffer(
            body,
            cap,
            Duration::from_secs(cfg.body_read_timeout_secs),
            &mut share,
            expected,
        )
        .await;
        match buffered {
            Err(BufferError::Busy) => {
                share.refused();
                Inspected {
                    decision: Some(Decision {
                        action: Action::Block,
                        ..limit(BUDGET_EXHAUSTED.into())
                    }),
                    body: full(Bytes::new()),
                    busy: true,
                }
            }
            Err(BufferError::Timeout) => Inspected {
                decision: Some(Decision {
                    action: Action::Block,
                    ..limit("body not received in time".into())
                }),
                body: full(Bytes::new()),
                busy: false,
            },
            Err(BufferError::Body(e)) => Inspected {
                decision: Some(Decision {
                    action: Action::Block,
                    ..limit(format!("body could not be read: {e}"))
                }),
                body: full(Bytes::new()),
                busy: false,
            },
            Ok(Buffered::Complete(b)) => {
                meta.size = Some(meta.size.unwrap_or(0).max(b.len() as u64));
                let (seen, problem, share) = self
                    .check_blocking(policies, upload, meta, boundary, b.clone(), true, share)
                    .await;
                if problem.as_deref() == Some(BUDGET_EXHAUSTED) {
                    share.refused();
                    return Inspected {
                        decision: Some(Decision {
                            action: Action::Block,
                            ..limit(BUDGET_EXHAUSTED.into())
                        }),
                        body: full(Bytes::new()),
                        busy: true,
                    };
                }
                Inspected {
                    decision: policy::stricter(seen, problem.map(limit)),
                    body: Sliced::new(held_by(b, share)).boxed(),
                    busy: false,
                }
            }
            Ok(Buffered::Partial(prefix, rest)) => {
                let (seen, _, share) = self
                    .check_blocking(
                        policies,
                        upload,
                        meta,
                        boundary,
                        prefix.clone(),
                        false,
                        share,
                    )
                    .await;
                let over = limit(format!(
                    "body larger than the inspection limit of {cap} bytes; only the first part was inspected"
                ));
                let decision = policy::stricter(seen, Some(over));
                let rest = match hard_cap {
                    Some(max) => SizeCap {
                        inner: rest,
                        left: max.saturating_sub(prefix.len() as u64),
                    }
                    .boxed(),
                    None => rest,
                };
                Inspected {
                    decision,
                    body: PrefixedBody {
                        prefix: Some(held_by(prefix, share)),
                        rest: Some(rest),
                    }
                    .boxed(),
                    busy: false,
                }
            }
        }
    }

    /// Decoding and content scanning on the blocking pool, never on the async workers (a
    /// slow regex over 16 MiB would stall every connection of that worker). Decoded copies
    /// grow the body's memory share if the budget has room now; otherwise the check reports
    /// [`BUDGET_EXHAUSTED`]. The share comes back for the body that is forwarded.
    #[allow(
        clippy::too_many_arguments,
        reason = "one job description, moved whole to a blocking thread"
    )]
    async fn check_blocking(
        &self,
        policies: &Arc<Policies>,
        upload: bool,
        meta: TransferMeta,
        boundary: Result<Option<String>, &'static str>,
        body: Bytes,
        complete: bool,
        share: Share,
    ) -> (Option<Decision>, Option<String>, Share) {
        let policies = policies.clone();
        let app = self.app.clone();
        let cap = usize::try_from(self.shared.cfg.max_inspect_bytes.0).unwrap_or(usize::MAX);
        let spare = self.shared.budget.share(self.src.ip());
        let job = tokio::task::spawn_blocking(move || {
            let rules = policies.transfer_rules(&app, upload);
            let mut share = share;
            let mut meta = meta;
            let base = body.len();
            let mut reserve = |n: usize| share.try_grow(base.saturating_add(n)).is_ok();
            let (d, p) = check_decoded(
                &rules,
                &mut meta,
                &boundary,
                &body,
                complete,
                cap,
                &mut reserve,
            );
            (d, p, share)
        });
        job.await
            .unwrap_or_else(|e| (None, Some(format!("inspection failed: {e}")), spare))
    }
}

/// Copies the request target and header values out of the client connection's read buffer.
/// hyper hands them out as slices of that buffer, which keeps the whole buffer (8 KiB or more)
/// alive; a request that waits for admission then holds it as well as the connection's next
/// read buffer. A value that does not copy cleanly stays as it is.
fn detach(head: &mut http::request::Parts) {
    if let Ok(u) = Uri::try_from(head.uri.to_string()) {
        head.uri = u;
    }
    for v in head.headers.values_mut() {
        if let Ok(c) = HeaderValue::from_bytes(v.as_bytes()) {
            let sensitive = v.is_sensitive();
            *v = c;
            v.set_sensitive(sensitive);
        }
    }
}

/// Inspection memory a download that scans content reserves before its request goes to the
/// origin. Most inspected downloads (pages, API answers, documents) fit; a larger one asks for
/// the rest once its length is known. The default 256 MiB budget admits 256 at once, the
/// default number of connections to one origin.
const ADMIT_RESERVE: usize = 1024 * 1024;

/// Why a body was refused for lack of inspection memory (answered 503).
const BUDGET_EXHAUSTED: &str = "the gateway's inspection memory is taken by other transfers";

/// Cuts a streamed body when it goes past a size a blocking rule allows.
struct SizeCap {
    inner: ProxyBody,
    left: u64,
}

impl Body for SizeCap {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            let n = d.len() as u64;
            if n > self.left {
                return Poll::Ready(Some(Err("body larger than a policy's max_size".into())));
            }
            self.left -= n;
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Checks a buffered body (`complete`, or a prefix of it) in its decoded form; the second
/// value says why the body could not be inspected whole (an unknown or corrupt coding, a
/// decoded size over the limit, a multipart body that cannot be read, no memory), for the
/// over-limit action.
fn check_decoded(
    rules: &[policy::TransferRef<'_>],
    meta: &mut TransferMeta,
    boundary: &Result<Option<String>, &'static str>,
    body: &[u8],
    complete: bool,
    cap: usize,
    reserve: &mut dyn FnMut(usize) -> bool,
) -> (Option<Decision>, Option<String>) {
    let form = meta.content_type.as_deref() == Some("application/x-www-form-urlencoded");
    match crate::decode::decode_budgeted(
        meta.content_encoding.as_deref(),
        body,
        complete,
        cap,
        reserve,
    ) {
        Ok(d) => {
            // max_size judges the decoded size (a decoded size over the limit is over any
            // max_size below it).
            let decoded = d.bytes.len() as u64 + u64::from(d.truncated && complete);
            meta.size = Some(meta.size.unwrap_or(0).max(decoded));
            let mut problem = (d.truncated && complete).then(|| {
                format!(
                    "decoded body larger than the inspection limit of {cap} bytes; only the first part was inspected"
                )
            });
            if let Some(p) = add_multipart(meta, boundary, &d.bytes, complete && !d.truncated) {
                problem.get_or_insert(p);
            }
            // Form decoding copies the body once more.
            let owned = match &d.bytes {
                std::borrow::Cow::Owned(v) => v.len(),
                std::borrow::Cow::Borrowed(_) => 0,
            };
            if form && !reserve(owned.saturating_add(d.bytes.len())) {
                return (None, Some(BUDGET_EXHAUSTED.into()));
            }
            (policy::check_transfer(rules, meta, Some(&d.bytes)), problem)
        }
        Err(why) if why.contains(crate::decode::BUDGET_ERROR) => {
            (None, Some(BUDGET_EXHAUSTED.into()))
        }
        Err(why) => {
            let _ = add_multipart(meta, boundary, body, complete);
            if form && !reserve(body.len()) {
                return (None, Some(BUDGET_EXHAUSTED.into()));
            }
            (policy::check_transfer(rules, meta, Some(body)), Some(why))
        }
    }
}

/// File names and part types of a multipart body; `Some` says why they cannot all be read.
fn add_multipart(
    meta: &mut TransferMeta,
    boundary: &Result<Option<String>, &'static str>,
    body: &[u8],
    complete: bool,
) -> Option<String> {
    if !meta
        .content_type
        .as_deref()
        .is_some_and(|ct| ct.starts_with("multipart/"))
    {
        return None;
    }
    match boundary {
        Err(e) => Some((*e).to_string()),
        Ok(None) => Some("multipart body without a boundary".into()),
        Ok(Some(b)) => match policy::multipart_parts(body, b, complete) {
            Ok((names, types)) => {
                meta.filenames.extend(names);
                meta.part_types.extend(types);
                None
            }
            Err(e) => Some(e.to_string()),
        },
    }
}

/// What an `Upgrade` request header gets.
#[derive(Debug, PartialEq, Eq)]
enum UpgradeKind {
    /// A WebSocket handshake: GET, HTTP/1.1, no body, `Upgrade: websocket` alone and
    /// `Connection: upgrade`. Relayed, and tunnelled after a `101`.
    WebSocket,
    /// Any other protocol (h2c would be a raw tunnel past every policy): refused.
    Refused(&'static str),
    /// `websocket` on a request that is not a body-less GET: served as a plain request
    /// (Upgrade dropped), inspected like any other.
    Plain,
}

fn upgrade_kind(req: &Request<Incoming>) -> UpgradeKind {
    let h = req.headers();
    let tokens: Vec<String> = h
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty())
        .collect();
    if tokens.len() != 1 || tokens.first().map(String::as_str) != Some("websocket") {
        return UpgradeKind::Refused("only WebSocket upgrades are relayed");
    }
    let connection_upgrade = h
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                .collect::<Vec<_>>()
        })
        .any(|b| b);
    let bodyless = req.body().is_end_stream()
        && !h.contains_key(header::TRANSFER_ENCODING)
        && h.get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0");
    if req.version() == Version::HTTP_11
        && req.method() == Method::GET
        && connection_upgrade
        && bodyless
    {
        UpgradeKind::WebSocket
    } else {
        UpgradeKind::Plain
    }
}

impl ConnCtx {
    /// The response to one request. The request is moved into `handle_inner`'s future, boxed,
    /// before anything waits. An `async fn` keeps its arguments beside its body's own copy of
    /// them for as long as it runs, and an awaited future beside the variable it came from: a
    /// request handed down through two of them was held four times over in every request in
    /// flight (`per_connection_futures_stay_small`).
    pub fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static {
        let flight = self.activity.begin();
        let started = std::time::Instant::now();
        let inner = Box::pin(Arc::clone(&self).handle_inner(req));
        async move {
            let resp = inner.await;
            self.shared.stats.request_seconds.observe(started.elapsed());
            let (p, b) = resp.into_parts();
            // The connection counts as busy until the response body is done, and as stalled
            // while the client leaves the body's frames untaken (`client_send_timeout_secs`).
            let body = self.activity.watch_body(b, flight);
            Ok(Response::from_parts(p, body.boxed()))
        }
    }

    fn reject(&self, why: &str) -> Response<ProxyBody> {
        self.shared
            .stats
            .rejected_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(src = %self.src, sni = %self.sni, "rejected: {why}");
        bad_request(why)
    }

    fn upstream_failed(&self, html: bool, msg: &str) -> Response<ProxyBody> {
        self.shared
            .stats
            .upstream_request_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(src = %self.src, sni = %self.sni, "upstream request failed: {msg}");
        block_response(
            StatusCode::BAD_GATEWAY,
            html,
            "Server unreachable",
            &self.app,
            "-",
            msg,
        )
    }

    fn busy(&self, html: bool, d: &Decision) -> Response<ProxyBody> {
        let mut r = block_response(
            StatusCode::SERVICE_UNAVAILABLE,
            html,
            "Gateway busy",
            &self.app,
            &d.policy,
            &d.reason,
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        r
    }

    /// `handle`'s work: a plain function returning a future, so that the request is that
    /// future's only copy of it (see `handle`).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would hold the request twice (see handle)"
    )]
    pub(crate) fn handle_inner(
        self: Arc<Self>,
        mut req: Request<Incoming>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static {
        async move {
            if let Some(v) = req.headers_mut().remove(crate::guard::GUARD_HEADER)
                && v.as_bytes() == self.guard_token.as_bytes()
                && let Some(why) = self.guard_verdict.get()
            {
                return self.reject(why);
            }
            if let Some(problem) = framing_problem(&req) {
                return self.reject(problem);
            }
            let html = wants_html(req.headers());
            // The authority judged here is the one the origin receives: an h2 `:authority` (or an
            // absolute-form target) that disagrees with `Host` is refused, and Host is rewritten.
            let hosts: Vec<&HeaderValue> = req.headers().get_all(header::HOST).iter().collect();
            if hosts.len() > 1 {
                return self.reject("more than one Host header");
            }
            let host_hdr = hosts
                .first()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let uri_auth = req.uri().authority().map(|a| a.as_str().to_string());
            if let (Some(a), Some(h)) = (&uri_auth, &host_hdr)
                && policy::normalize_host(a) != policy::normalize_host(h)
            {
                return self.reject("the request's authority and Host header disagree");
            }
            let authority = uri_auth.or(host_hdr).unwrap_or_else(|| self.sni.clone());
            let host = policy::normalize_host(&authority);
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            let norm_path = policy::normalize_path(&path);
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
                norm_path: &norm_path,
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

            if let Some((policy, left)) =
                self.shared
                    .session_blocks
                    .check(self.user.as_deref(), self.src.ip(), &self.app)
            {
                let d = Decision {
                    action: Action::Block,
                    policy: format!("governance: {policy}"),
                    stage: "governance",
                    reason: format!(
                        "sessions to {} are blocked for {} s more after an alert of {policy:?}",
                        self.app,
                        left.as_secs()
                    ),
                    evidence: Vec::new(),
                };
                self.audit(&info, &d);
                return self.blocked(html, &d);
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

            if req.headers().contains_key(header::UPGRADE) {
                match upgrade_kind(&req) {
                    UpgradeKind::WebSocket => {
                        return Box::pin(self.upgrade(req, &authority, html, &policies, &info))
                            .await;
                    }
                    UpgradeKind::Refused(why) => {
                        let mut r = self.reject(why);
                        *r.status_mut() = StatusCode::BAD_REQUEST;
                        return r;
                    }
                    // Served as a plain request: forward() drops the Upgrade header.
                    UpgradeKind::Plain => {}
                }
            }

            let (mut parts, body) = req.into_parts();
            let downloads_judged =
                concerned && !policies.transfer_rules(&self.app, false).is_empty();
            if concerned {
                // Responses must come back in a coding the proxy can inspect.
                crate::decode::narrow_accept_encoding(&mut parts.headers);
            }
            if downloads_judged {
                // A file fetched in ranges would be judged piece by piece: fetch it whole.
                parts.headers.remove(header::RANGE);
                parts.headers.remove(header::IF_RANGE);
            }
            let body_idle = Duration::from_secs(self.shared.cfg.body_idle_timeout_secs);
            let mut body: ProxyBody = body.map_err(BoxError::from).boxed();
            // An inspected upload may hold a share of the budget until it is sent.
            let mut upload_held = false;
            if concerned && !body.is_end_stream() {
                let rules = policies.transfer_rules(&self.app, true);
                if !rules.is_empty() {
                    let meta = transfer_meta(&parts.headers, &path);
                    let boundary = header_str(&parts.headers, header::CONTENT_TYPE)
                        .map_or(Ok(None), policy::multipart_boundary);
                    let ins =
                        Box::pin(self.inspect(&policies, true, meta, boundary, body, false, None))
                            .await;
                    upload_held = !ins.busy;
                    body = ins.body;
                    if let Some(d) = ins.decision {
                        self.audit(&info, &d);
                        if ins.busy {
                            return self.busy(html, &d);
                        }
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
            if !body.is_end_stream() {
                body = IdleBody::new(body, body_idle).boxed();
            }

            // A response that will be buffered for inspection is admitted before the request goes
            // to the origin: a transfer waiting for inspection memory holds no origin connection
            // and no half-read response, only its client connection.
            let reserved = if downloads_judged
                && method != Method::HEAD.as_str()
                && policies
                    .transfer_rules(&self.app, false)
                    .iter()
                    .any(|r| r.rule.reads_content())
            {
                match Box::pin(self.admit(!upload_held, &mut parts)).await {
                    Ok(s) => s,
                    Err(d) => {
                        self.audit(&info, &d);
                        return self.busy(html, &d);
                    }
                }
            } else {
                None
            };

            // The steps after the request head are boxed (`admit` above, `forward`, and
            // `judge_response`): sending the request is the largest (~1.1 KiB of state), and
            // inline each would size the state of every request in flight, including the many
            // that only wait in `admit` for inspection memory.
            let resp = match Box::pin(self.forward(parts, body, &authority)).await {
                Ok(r) => r,
                Err(msg) => return self.upstream_failed(html, &msg),
            };
            Box::pin(self.judge_response(&policies, concerned, &info, html, resp, reserved)).await
        }
    }

    /// Reserve inspection memory for a download before its request is sent. Waits (up to
    /// `body_read_timeout_secs`, as a body waiting for its share does) unless `wait` is false:
    /// a request whose inspected upload holds memory only takes the reservation if it is free
    /// now, and is otherwise buffered after the response comes (a share never waits while
    /// another one of the same transfer holds memory). A reservation that does not come in
    /// time is refused and counted, like a body's share.
    async fn admit(
        &self,
        wait: bool,
        head: &mut http::request::Parts,
    ) -> Result<Option<Share>, Decision> {
        let budget = &self.shared.budget;
        let reserve = ADMIT_RESERVE
            .min(usize::try_from(self.shared.cfg.max_inspect_bytes.0).unwrap_or(usize::MAX))
            .min(usize::try_from(budget.capacity()).unwrap_or(usize::MAX));
        let mut share = budget.share(self.src.ip());
        if share.try_grow(reserve).is_ok() {
            return Ok(Some(share));
        }
        if !wait {
            return Ok(None);
        }
        // The origin connection opened for this client's handshake is not kept idle while
        // this transfer waits: others may use it.
        let first = self.first.lock().ok().and_then(|mut g| g.take());
        if let Some(Conn::H1(h)) = first {
            self.shared.pool.put_h1(self.key.clone(), h);
        }
        detach(head);
        let timeout = Duration::from_secs(self.shared.cfg.body_read_timeout_secs);
        match tokio::time::timeout(timeout, share.grow(reserve)).await {
            Ok(Ok(())) => Ok(Some(share)),
            _ => {
                share.refused();
                Err(Decision {
                    action: Action::Block,
                    policy: "inspection limit".into(),
                    stage: "download",
                    reason: BUDGET_EXHAUSTED.into(),
                    evidence: Vec::new(),
                })
            }
        }
    }

    /// Download inspection of a response (also of a refused upgrade).
    async fn judge_response(
        &self,
        policies: &Arc<Policies>,
        concerned: bool,
        info: &RequestInfo<'_>,
        html: bool,
        resp: Response<ProxyBody>,
        reserved: Option<Share>,
    ) -> Response<ProxyBody> {
        let body_idle = Duration::from_secs(self.shared.cfg.body_idle_timeout_secs);
        let (mut rparts, rbody) = resp.into_parts();
        let rbody = IdleBody::new(rbody, body_idle).boxed();
        if concerned
            && info.method != Method::HEAD.as_str()
            && !policies.transfer_rules(&self.app, false).is_empty()
        {
            let meta = transfer_meta(&rparts.headers, info.path);
            let boundary = header_str(&rparts.headers, header::CONTENT_TYPE)
                .map_or(Ok(None), policy::multipart_boundary);
            let piece = rparts.status == StatusCode::PARTIAL_CONTENT;
            let ins =
                Box::pin(self.inspect(policies, false, meta, boundary, rbody, piece, reserved))
                    .await;
            if let Some(d) = &ins.decision {
                self.audit(info, d);
                if ins.busy {
                    return self.busy(html, d);
                }
                if d.action == Action::Block {
                    return self.blocked(html, d);
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
        Response::from_parts(rparts, rbody)
    }

    /// A WebSocket handshake: forward it; on `101` splice the two upgraded streams (frames
    /// are not inspected); any other answer is judged like any response, and the
    /// connection closes after it.
    async fn upgrade(
        &self,
        mut req: Request<Incoming>,
        authority: &str,
        html: bool,
        policies: &Arc<Policies>,
        info: &RequestInfo<'_>,
    ) -> Response<ProxyBody> {
        let client_side = hyper::upgrade::on(&mut req);
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        match HeaderValue::from_str(authority) {
            Ok(v) => {
                parts.headers.insert(header::HOST, v);
            }
            Err(_) => return self.reject("bad host"),
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
            let mut r = self.upstream_failed(html, &msg);
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
            // Not switched: an ordinary response (a download, say), judged as one.
            let (mut p, b) = resp.into_parts();
            strip_hop_by_hop(&mut p.headers);
            let concerned = policies.concerns(&self.app);
            let judged = Box::pin(self.judge_response(
                policies,
                concerned,
                info,
                html,
                Response::from_parts(p, b.map_err(BoxError::from).boxed()),
                None,
            ))
            .await;
            let (mut p, b) = judged.into_parts();
            p.headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Response::from_parts(p, b);
        }
        let server_side = hyper::upgrade::on(&mut resp);
        let (src, sni) = (self.src, self.sni.clone());
        let idle = Duration::from_secs(self.shared.cfg.idle_timeout_secs);
        let flight = self.activity.begin();
        tokio::spawn(async move {
            let _slot = h1; // the origin connection's slot stays taken while the tunnel lives
            let _flight = flight;
            match (client_side.await, server_side.await) {
                (Ok(c), Ok(s)) => {
                    let (c, s) = (
                        hyper_util::rt::TokioIo::new(c),
                        hyper_util::rt::TokioIo::new(s),
                    );
                    if !crate::idle::copy_bidirectional_idle(c, s, idle).await {
                        tracing::debug!(%src, %sni, "WebSocket tunnel closed: idle for {idle:?}");
                    }
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
        .map_err(|e| {
            // The client handshake went ahead on a recently verified origin; a certificate
            // that fails now is counted like one that failed before the handshake.
            if matches!(e, UpstreamFailure::Certificate(_)) {
                self.shared
                    .stats
                    .upstream_cert_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            e.to_string()
        })
    }

    /// Sends the request to the origin with `authority` (the one the policies judged) as
    /// its Host / `:authority`.
    async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: ProxyBody,
        authority: &str,
    ) -> Result<Response<ProxyBody>, String> {
        strip_hop_by_hop(&mut parts.headers);
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let mut req = Request::from_parts(parts, body);
        for attempt in 0..2 {
            let (conn, pooled) = self.conn().await?;
            match conn {
                Conn::H2(mut s) => {
                    *req.version_mut() = Version::HTTP_2;
                    *req.uri_mut() = Uri::builder()
                        .scheme("https")
                        .authority(authority)
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
                    let v =
                        HeaderValue::from_str(authority).map_err(|e| format!("bad host: {e}"))?;
                    req.headers_mut().insert(header::HOST, v);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An inspected body's memory share goes back when its slices are freed, not when the
    /// body is: hyper drops the body while its last slices still wait in its write queue. The
    /// very last slice is a copy (a stalled HTTP/2 stream's tail holds 16 KiB, not the body).
    #[tokio::test]
    async fn an_inspected_body_holds_its_share_until_its_last_slice_is_freed() {
        let budget = crate::budget::Budget::new(4 << 20, 4 << 20);
        let mut share = budget.share(std::net::Ipv4Addr::LOCALHOST.into());
        share.grow(1 << 20).await.unwrap();
        let held = budget.in_use();
        assert!(held >= 1 << 20);
        let mut body = Sliced::new(held_by(Bytes::from(vec![7u8; 1 << 20]), share));
        let mut slices = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            slices.push(frame.unwrap().into_data().unwrap());
        }
        drop(body);
        assert_eq!(budget.in_use(), held, "slices in flight keep the share");
        let last = slices.pop().unwrap();
        let first = slices.remove(0);
        slices.clear();
        assert_eq!(budget.in_use(), held, "one slice still holds the buffer");
        drop(first);
        assert_eq!(budget.in_use(), 0, "the last slice is a copy of its own");
        assert_eq!(last.len(), SLICE);
    }

    /// `detach` keeps the request head as it was, in memory of its own.
    #[test]
    fn detach_copies_the_head_out_of_the_read_buffer() {
        let buf = Bytes::from_static(b"/files/a%20b?x=1 text/html; q=0.9 \xe9t\xe9");
        let inside = |p: *const u8| {
            let r = buf.as_ptr_range();
            r.contains(&p)
        };
        let (mut head, ()) = Request::builder()
            .uri(Uri::from_maybe_shared(buf.slice(0..16)).unwrap())
            .header(
                header::ACCEPT,
                HeaderValue::from_maybe_shared(buf.slice(17..33)).unwrap(),
            )
            .header(
                "x-latin",
                HeaderValue::from_maybe_shared(buf.slice(34..)).unwrap(),
            )
            .body(())
            .unwrap()
            .into_parts();
        let mut secret = HeaderValue::from_static("Bearer abc");
        secret.set_sensitive(true);
        head.headers.insert(header::AUTHORIZATION, secret);
        assert!(inside(head.headers[header::ACCEPT].as_bytes().as_ptr()));
        detach(&mut head);
        assert_eq!(head.uri, "/files/a%20b?x=1");
        assert_eq!(head.uri.query(), Some("x=1"));
        assert_eq!(head.headers[header::ACCEPT], "text/html; q=0.9");
        assert_eq!(head.headers["x-latin"].as_bytes(), b"\xe9t\xe9");
        assert!(head.headers[header::AUTHORIZATION].is_sensitive());
        for v in head.headers.values() {
            assert!(!inside(v.as_bytes().as_ptr()), "{v:?} still in the buffer");
        }
        assert!(!inside(head.uri.path().as_ptr()));
    }
}
