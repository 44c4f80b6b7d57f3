//! HTTP/1.1 framing guard: sits between the client's TLS stream and hyper's HTTP/1 server and
//! follows request framing itself (heads, Content-Length bodies, chunked bodies). A request
//! head whose framing could be read two ways (Content-Length together with
//! Transfer-Encoding, more than one Content-Length, a Transfer-Encoding other than plain
//! `chunked`, a malformed Content-Length) is never handed to hyper: the guard ends the byte
//! stream at the message boundary instead and records why, and the connection answers
//! `400` and closes. (hyper alone would drop the Content-Length and read the body as
//! chunked: safe, but not a rejection.)
//!
//! The rejection itself travels to the service as a synthetic request carrying a
//! per-connection secret token (so that the normal hyper connection, with upgrades, can
//! answer it); clients cannot forge it.
//!
//! A WebSocket handshake (a body-less GET with `Upgrade: websocket`) switches the guard to
//! pass-through: after a `101` the bytes are no longer HTTP. (The service closes the
//! connection when the upgrade is not accepted.) Any other head with `Upgrade` is followed
//! like a plain request: the service refuses or serves it as one.
//!
//! Heads end at the first empty line, whether lines end in CRLF or a bare LF (httparse and
//! hyper accept both); chunk sizes are hex digits only, as hyper reads them.
//!
//! Head bytes are held until the head is complete (bounded by the header limit; above it
//! they are released so that hyper answers 431); body bytes flow through as they arrive.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest chunk-size line accepted (extensions included).
const MAX_CHUNK_LINE: usize = 4096;
/// Most headers parsed in one head.
const MAX_HEADERS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd(u8),
    Trailers,
    /// Framing no longer followed (oversized or unparseable head: hyper rejects it).
    Passthrough,
}

/// Framing of a parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Check one complete request head (pure). `Err` = reject with this reason.
pub fn check_head(head: &[u8]) -> Result<Option<Framing>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        // Let hyper produce its own error for these.
        _ => return Ok(None),
    }
    let mut cl: Option<u64> = None;
    let mut n_cl = 0;
    let mut n_te = 0;
    let mut te_chunked = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            n_cl += 1;
            let v = std::str::from_utf8(h.value)
                .map_err(|_| "invalid Content-Length")?
                .trim();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err("invalid Content-Length");
            }
            cl = Some(v.parse().map_err(|_| "invalid Content-Length")?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            n_te += 1;
            te_chunked = std::str::from_utf8(h.value)
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    if n_cl > 0 && n_te > 0 {
        return Err("ambiguous request: both Content-Length and Transfer-Encoding");
    }
    if n_cl > 1 {
        return Err("ambiguous request: more than one Content-Length");
    }
    if n_te > 1 || (n_te == 1 && !te_chunked) {
        return Err("unsupported Transfer-Encoding");
    }
    if n_te == 1 && req.version != Some(1) {
        return Err("Transfer-Encoding is not allowed in HTTP/1.0");
    }
    Ok(Some(match (cl, te_chunked) {
        (_, true) => Framing::Chunked,
        (Some(n), false) => Framing::Length(n),
        (None, false) => Framing::None,
    }))
}

/// The guard around an IO stream.
pub struct H1Guard<IO> {
    inner: IO,
    state: State,
    /// Bytes read but not yet classified (a partial head or chunk line).
    held: BytesMut,
    /// Bytes classified and ready for hyper.
    ready: BytesMut,
    max_head: usize,
    reject: Option<&'static str>,
    /// Shared with the service: why the stream was cut.
    verdict: std::sync::Arc<std::sync::OnceLock<&'static str>>,
    token: String,
    injected: bool,
    eof: bool,
}

/// Header of the synthetic request that carries a rejection to the service.
pub const GUARD_HEADER: &str = "x-tollgate-guard";

impl<IO> H1Guard<IO> {
    /// `token` is the connection's secret; `verdict` receives the reason of a rejection.
    pub fn new(
        inner: IO,
        max_head: usize,
        token: String,
        verdict: std::sync::Arc<std::sync::OnceLock<&'static str>>,
    ) -> Self {
        H1Guard {
            inner,
            state: State::Head,
            held: BytesMut::new(),
            ready: BytesMut::new(),
            max_head,
            reject: None,
            verdict,
            token,
            injected: false,
            eof: false,
        }
    }

    /// Why the stream was cut, if it was.
    pub fn rejected(&self) -> Option<&'static str> {
        self.reject
    }

    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.inner
    }

    /// Classify everything in `held` as far as possible.
    fn advance(&mut self) {
        loop {
            if self.reject.is_some() || self.held.is_empty() {
                return;
            }
            match self.state.clone() {
                State::Passthrough => {
                    let all = self.held.split();
                    self.ready.extend_from_slice(&all);
                }
                State::Head => {
                    // Empty lines before a request line are allowed (RFC 9112 2.2).
                    loop {
                        if self.held.starts_with(b"\r\n") {
                            self.ready.extend_from_slice(b"\r\n");
                            self.held.advance(2);
                        } else if self.held.starts_with(b"\n") {
                            self.ready.extend_from_slice(b"\n");
                            self.held.advance(1);
                        } else {
                            break;
                        }
                    }
                    let Some(head_len) = head_end(&self.held) else {
                        if self.held.len() > self.max_head {
                            self.state = State::Passthrough;
                            continue;
                        }
                        return;
                    };
                    let head = self.held.get(..head_len).unwrap_or(&[]);
                    match check_head(head) {
                        Err(why) => {
                            self.reject = Some(why);
                            let _ = self.verdict.set(why);
                            self.held.clear();
                            return;
                        }
                        Ok(None) => self.state = State::Passthrough,
                        Ok(Some(Framing::None)) if is_websocket_handshake(head) => {
                            self.state = State::Passthrough
                        }
                        Ok(Some(f)) => {
                            self.state = match f {
                                Framing::None | Framing::Length(0) => State::Head,
                                Framing::Length(n) => State::Body(n),
                                Framing::Chunked => State::ChunkSize,
                            }
                        }
                    }
                    let h = self.held.split_to(head_len);
                    self.ready.extend_from_slice(&h);
                }
                State::Body(n) => {
                    let take = usize::try_from(n)
                        .unwrap_or(usize::MAX)
                        .min(self.held.len());
                    let b = self.held.split_to(take);
                    self.ready.extend_from_slice(&b);
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                }
                State::ChunkSize => {
                    let Some(nl) = self.held.iter().position(|b| *b == b'\n') else {
                        if self.held.len() > MAX_CHUNK_LINE {
                            self.state = State::Passthrough;
                            continue;
                        }
                        return;
                    };
                    let line = self.held.split_to(nl + 1);
                    match chunk_size(&line) {
                        Some(0) => self.state = State::Trailers,
                        Some(n) => self.state = State::ChunkData(n),
                        // Malformed: hyper rejects it too (and ends the connection).
                        None => self.state = State::Passthrough,
                    }
                    self.ready.extend_from_slice(&line);
                }
                State::ChunkData(n) => {
                    let take = usize::try_from(n)
                        .unwrap_or(usize::MAX)
                        .min(self.held.len());
                    let b = self.held.split_to(take);
                    self.ready.extend_from_slice(&b);
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::ChunkEnd(2)
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::ChunkEnd(k) => {
                    let take = usize::from(k).min(self.held.len());
                    let b = self.held.split_to(take);
                    self.ready.extend_from_slice(&b);
                    let left = k - take as u8;
                    self.state = if left == 0 {
                        State::ChunkSize
                    } else {
                        State::ChunkEnd(left)
                    };
                }
                State::Trailers => {
                    let Some(nl) = self.held.iter().position(|b| *b == b'\n') else {
                        if self.held.len() > self.max_head {
                            self.state = State::Passthrough;
                            continue;
                        }
                        return;
                    };
                    let line = self.held.split_to(nl + 1);
                    let empty = line.as_ref() == b"\r\n" || line.as_ref() == b"\n";
                    self.ready.extend_from_slice(&line);
                    if empty {
                        self.state = State::Head;
                    }
                }
            }
        }
    }
}

/// Is a (complete, parseable) head a WebSocket handshake: GET with `Upgrade: websocket`?
/// (The caller has checked that it has no body.)
pub fn is_websocket_handshake(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) || req.method != Some("GET") {
        return false;
    }
    let ups: Vec<&[u8]> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("upgrade"))
        .map(|h| h.value)
        .collect();
    matches!(ups.as_slice(), [v] if v.trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

/// Length of the head at the start of `buf` (through the empty line that ends it), with
/// CRLF or bare LF line ends.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf.get(from..)?.iter().position(|b| *b == b'\n') {
        let nl = from + i;
        match (buf.get(nl + 1), buf.get(nl + 2)) {
            (Some(b'\n'), _) => return Some(nl + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(nl + 3),
            _ => from = nl + 1,
        }
    }
    None
}

/// The size of a chunk-size line (`1a;ext=v\r\n`) read as hyper does: 1 to 16 hex digits,
/// optional spaces or tabs, then `;` extensions or the line end (CRLF). `None`: malformed.
pub fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let (hex, rest) = line.split_at(digits);
    let rest = rest
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .and_then(|i| rest.get(i..))?;
    let ok = match rest.first() {
        Some(b';') => rest.ends_with(b"\r\n"),
        _ => rest == b"\r\n",
    };
    if !ok {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

impl<IO: AsyncRead + Unpin> AsyncRead for H1Guard<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(this.ready.get(..n).unwrap_or(&[]));
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.reject.is_some() && !this.injected {
                // Hand the rejection to the service as a request only it can recognise.
                this.injected = true;
                let synthetic = format!(
                    "GET /.tollgate/rejected HTTP/1.1\r\nhost: tollgate.invalid\r\nconnection: close\r\n{GUARD_HEADER}: {}\r\n\r\n",
                    this.token
                );
                this.ready.extend_from_slice(synthetic.as_bytes());
                continue;
            }
            if this.reject.is_some() {
                // Nothing more is read from this client. Not EOF: hyper would drop the
                // pending answer on a closed read side; it closes after the 400 instead.
                return Poll::Pending;
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Body bytes of a known length need no holding: read them straight into `buf`.
            if this.held.is_empty()
                && let State::Body(n) = this.state
            {
                let want = usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .min(buf.remaining());
                let mut direct = ReadBuf::new(buf.initialize_unfilled_to(want));
                match Pin::new(&mut this.inner).poll_read(cx, &mut direct) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        let got = direct.filled().len();
                        if got == 0 {
                            this.eof = true;
                            return Poll::Ready(Ok(()));
                        }
                        buf.advance(got);
                        let left = n - got as u64;
                        this.state = if left == 0 {
                            State::Head
                        } else {
                            State::Body(left)
                        };
                        return Poll::Ready(Ok(()));
                    }
                }
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let got = rb.filled();
                    if got.is_empty() {
                        // Hand over whatever is held; hyper decides about a partial message.
                        let rest = this.held.split();
                        this.ready.extend_from_slice(&rest);
                        this.eof = true;
                        continue;
                    }
                    this.held.extend_from_slice(got);
                    this.advance();
                }
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for H1Guard<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn pass(input: &[u8], split: usize) -> (Vec<u8>, Option<&'static str>) {
        let (a, b) = input.split_at(split.min(input.len()));
        let reader = tokio_test_reader(vec![a.to_vec(), b.to_vec()]);
        let mut g = H1Guard::new(reader, 65536, "t0k3n".into(), Default::default());
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        // A rejecting guard never ends the stream (it waits for the 400 to go out).
        while let Ok(r) =
            tokio::time::timeout(std::time::Duration::from_millis(10), g.read(&mut buf)).await
        {
            match r.unwrap() {
                0 => break,
                n => out.extend_from_slice(&buf[..n]),
            }
        }
        (out, g.rejected())
    }

    /// A reader that yields the given pieces one read at a time.
    fn tokio_test_reader(pieces: Vec<Vec<u8>>) -> impl AsyncRead + Unpin {
        let data: Vec<u8> = pieces.concat();
        let cut = pieces.first().map_or(0, Vec::len);
        Pieces { data, cut, pos: 0 }
    }

    struct Pieces {
        data: Vec<u8>,
        cut: usize,
        pos: usize,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let end = if self.pos < self.cut {
                self.cut
            } else {
                self.data.len()
            };
            let n = (end - self.pos).min(buf.remaining());
            let s = self.pos;
            buf.put_slice(&self.data[s..s + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn follows_framing_across_every_split() {
        let stream: &[u8] = b"\r\nPOST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in 0..=stream.len() {
            let (out, rej) = pass(stream, split).await;
            assert_eq!(rej, None, "split {split}");
            assert_eq!(out, stream, "split {split}");
        }
    }

    #[tokio::test]
    async fn cuts_before_an_ambiguous_head() {
        let ok: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let bad: &[u8] = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let all = [ok, bad].concat();
        let synthetic: &[u8] = b"GET /.tollgate/rejected HTTP/1.1\r\nhost: tollgate.invalid\r\nconnection: close\r\nx-tollgate-guard: t0k3n\r\n\r\n";
        for split in 0..=all.len() {
            let (out, rej) = pass(&all, split).await;
            assert_eq!(out, [ok, synthetic].concat(), "split {split}");
            assert!(rej.is_some());
        }
        // Smuggling hidden in a body is body, not a head.
        let body_text: &[u8] = b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nCo: x\r\n\r\n";
        assert_eq!(
            body_text.len() - body_text.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4,
            44
        );
        let (out, rej) = pass(body_text, 10).await;
        assert_eq!((out.as_slice(), rej), (body_text, None));
    }

    #[tokio::test]
    async fn bare_lf_heads_are_followed_like_hyper_reads_them() {
        // A bare-LF request, then an ambiguous CRLF one pipelined behind it: the second head
        // is checked on its own (a guard looking for CRLFCRLF took both for one head).
        let bad: &[u8] = b"GET /a HTTP/1.1\nHost: x\n\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for split in 0..=bad.len() {
            let (_, rej) = pass(bad, split).await;
            assert!(rej.is_some(), "split {split}");
        }
        // A bare-LF request followed by a body that looks like a request: body, not a head.
        let ok: &[u8] = b"POST /u HTTP/1.1\nHost: x\nContent-Length: 5\n\nGET /x";
        let (out, rej) = pass(ok, 7).await;
        assert_eq!((out.as_slice(), rej), (ok, None));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\n\r\nrest"), Some(23));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn chunk_sizes_are_strict() {
        assert_eq!(chunk_size(b"1a\r\n"), Some(26));
        assert_eq!(chunk_size(b"1a;ext=1\r\n"), Some(26));
        assert_eq!(chunk_size(b"0 \r\n"), Some(0));
        for bad in [
            &b"+5\r\n"[..],
            b" 5\r\n",
            b"5\n",
            b"\r\n",
            b"0x5\r\n",
            b"11111111111111111\r\n",
            b"5 x\r\n",
        ] {
            assert_eq!(chunk_size(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn only_websocket_gets_pass_through() {
        assert!(is_websocket_handshake(
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        ));
        assert!(!is_websocket_handshake(
            b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n"
        ));
        assert!(!is_websocket_handshake(
            b"POST / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(!is_websocket_handshake(
            b"GET / HTTP/1.1\r\nUpgrade: websocket, h2c\r\n\r\n"
        ));
    }

    #[test]
    fn head_rules() {
        let h = |s: &str| check_head(s.as_bytes());
        assert_eq!(
            h("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Some(Framing::None))
        );
        assert_eq!(
            h("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n"),
            Ok(Some(Framing::Length(10)))
        );
        assert!(h("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n").is_err());
        assert!(h("POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n").is_err());
        assert!(h("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").is_err());
        assert!(h("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(h("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert_eq!(h("garbage\r\n\r\n"), Ok(None));
    }
}
