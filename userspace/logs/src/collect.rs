//! Continuous log collection (issue #16), first piece: syslog framing over a TCP byte
//! stream (RFC 6587 octet counting or newline framing, detected per connection from the
//! first byte) and stripping the syslog header (RFC 3164 and RFC 5424) off a message.
//!
//! Everything here is bounded: a frame longer than [`MAX_FRAME`] is dropped and counted,
//! never buffered whole; a bogus octet count is a counted drop and the connection is
//! marked [`Framer::is_broken`] so the caller closes it. Nothing here panics on any input.

use crate::MAX_LINE;

pub mod collector;
pub mod tail;

/// Longest syslog frame kept; longer ones are dropped (and skipped without buffering).
pub const MAX_FRAME: usize = MAX_LINE;

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Longer than [`MAX_FRAME`].
    Oversized,
    /// An octet-counting header that is not `DIGITS SP` with a sane count.
    BadOctetCount,
    /// Not UTF-8 or contains NUL bytes.
    Malformed,
}

/// Counters of one framer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrameCounters {
    pub frames: u64,
    pub oversized: u64,
    pub bad_octet_count: u64,
    pub malformed: u64,
}

impl FrameCounters {
    fn drop(&mut self, r: DropReason) {
        match r {
            DropReason::Oversized => self.oversized += 1,
            DropReason::BadOctetCount => self.bad_octet_count += 1,
            DropReason::Malformed => self.malformed += 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Unknown,
    Octet,
    Newline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a frame (newline mode) or a count (octet mode).
    Head,
    /// Octet mode: this many bytes of message remain.
    Body(usize),
    /// Skipping bytes of an oversized frame: in octet mode this many remain; in newline
    /// mode until the next LF (`usize::MAX`).
    Skip(usize),
    /// Unrecoverable (bad octet count): the caller should close the connection.
    Broken,
}

/// Per-connection syslog framer (RFC 6587). Feed it bytes as they arrive; it calls `out`
/// for every complete frame that is valid UTF-8 without NUL bytes.
#[derive(Debug)]
pub struct Framer {
    mode: Mode,
    state: State,
    buf: Vec<u8>,
    max: usize,
    pub counters: FrameCounters,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new(MAX_FRAME)
    }
}

impl Framer {
    /// A framer dropping frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Framer {
            mode: Mode::Unknown,
            state: State::Head,
            buf: Vec::new(),
            max: max.max(1),
            counters: FrameCounters::default(),
        }
    }

    /// The stream cannot be framed any more (bogus octet count): close the connection.
    pub fn is_broken(&self) -> bool {
        self.state == State::Broken
    }

    /// Bytes held for an incomplete frame (bounded by the frame limit).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feed received bytes.
    pub fn feed(&mut self, mut data: &[u8], out: &mut dyn FnMut(&str)) {
        if self.mode == Mode::Unknown {
            // RFC 6587 3.4.1 octet counting is `[1-9][0-9]* <`; anything else (including a
            // vendor line that starts with digits, e.g. squid's epoch) is newline framing.
            let mut pending = std::mem::take(&mut self.buf);
            pending.extend_from_slice(data);
            match sniff_mode(&pending) {
                Some(m) => self.mode = m,
                None => {
                    self.buf = pending;
                    return;
                }
            }
            self.feed(&pending, out);
            return;
        }
        while !data.is_empty() {
            match self.state {
                State::Broken => return,
                State::Skip(n) => {
                    if self.mode == Mode::Newline {
                        match memchr::memchr(b'\n', data) {
                            Some(i) => {
                                data = &data[i + 1..];
                                self.state = State::Head;
                            }
                            None => return,
                        }
                    } else {
                        let k = n.min(data.len());
                        data = &data[k..];
                        self.state = if n - k == 0 {
                            State::Head
                        } else {
                            State::Skip(n - k)
                        };
                    }
                }
                State::Head if self.mode == Mode::Newline => match memchr::memchr(b'\n', data) {
                    Some(i) => {
                        if self.buf.len() + i > self.max {
                            self.buf.clear();
                            self.counters.drop(DropReason::Oversized);
                        } else {
                            self.buf.extend_from_slice(&data[..i]);
                            let mut frame = std::mem::take(&mut self.buf);
                            if frame.last() == Some(&b'\r') {
                                frame.pop();
                            }
                            self.emit(&frame, out);
                            frame.clear();
                            self.buf = frame;
                        }
                        data = &data[i + 1..];
                    }
                    None => {
                        if self.buf.len() + data.len() > self.max {
                            self.buf.clear();
                            self.counters.drop(DropReason::Oversized);
                            self.state = State::Skip(usize::MAX);
                        } else {
                            self.buf.extend_from_slice(data);
                        }
                        return;
                    }
                },
                State::Head => {
                    // Octet mode: "DIGITS SP". At most 10 digits (any more is bogus anyway).
                    let mut i = 0;
                    let mut consumed_all = true;
                    while i < data.len() {
                        let b = data[i];
                        i += 1;
                        if b == b' ' {
                            consumed_all = false;
                            break;
                        }
                        if !b.is_ascii_digit() || self.buf.len() >= 10 {
                            self.fail();
                            return;
                        }
                        self.buf.push(b);
                    }
                    data = &data[i..];
                    if consumed_all {
                        return;
                    }
                    let n = std::str::from_utf8(&self.buf)
                        .ok()
                        .and_then(|s| s.parse::<usize>().ok());
                    self.buf.clear();
                    match n {
                        Some(0) | None => {
                            self.fail();
                            return;
                        }
                        Some(n) if n > self.max => {
                            self.counters.drop(DropReason::Oversized);
                            self.state = State::Skip(n);
                        }
                        Some(n) => self.state = State::Body(n),
                    }
                }
                State::Body(n) => {
                    let k = n.min(data.len());
                    self.buf.extend_from_slice(&data[..k]);
                    data = &data[k..];
                    if n - k == 0 {
                        let mut frame = std::mem::take(&mut self.buf);
                        // Some senders end octet-counted frames with LF as well.
                        while matches!(frame.last(), Some(b'\n' | b'\r')) {
                            frame.pop();
                        }
                        self.emit(&frame, out);
                        frame.clear();
                        self.buf = frame;
                        self.state = State::Head;
                    } else {
                        self.state = State::Body(n - k);
                    }
                }
            }
        }
    }

    /// The connection ended: a newline-framed message without its final LF still counts
    /// (many senders omit it); an incomplete octet-counted frame is malformed.
    pub fn finish(&mut self, out: &mut dyn FnMut(&str)) {
        if self.mode == Mode::Unknown {
            self.mode = Mode::Newline;
            let pending = std::mem::take(&mut self.buf);
            self.feed(&pending, out);
        }
        match (self.mode, self.state) {
            (Mode::Newline, State::Head) if !self.buf.is_empty() => {
                let frame = std::mem::take(&mut self.buf);
                self.emit(&frame, out);
            }
            (Mode::Octet, State::Body(_)) => self.counters.drop(DropReason::Malformed),
            _ => {}
        }
        self.buf.clear();
    }

    fn fail(&mut self) {
        self.counters.drop(DropReason::BadOctetCount);
        self.buf = Vec::new();
        self.state = State::Broken;
    }

    fn emit(&mut self, frame: &[u8], out: &mut dyn FnMut(&str)) {
        match check_frame(frame) {
            Ok(s) => {
                if !s.trim().is_empty() {
                    self.counters.frames += 1;
                    out(s);
                }
            }
            Err(r) => self.counters.drop(r),
        }
    }
}

/// Framing of a connection from its first bytes; `None` while undecided (at most 12 bytes).
fn sniff_mode(b: &[u8]) -> Option<Mode> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || b[0] == b'0' || digits > 10 {
        return Some(Mode::Newline);
    }
    match (b.get(digits), b.get(digits + 1)) {
        (None, _) | (Some(b' '), None) => None,
        (Some(b' '), Some(b'<')) => Some(Mode::Octet),
        _ => Some(Mode::Newline),
    }
}

/// One datagram (UDP syslog: one message per datagram, RFC 5426), checked like a frame.
pub fn check_frame(frame: &[u8]) -> Result<&str, DropReason> {
    if frame.len() > MAX_FRAME {
        return Err(DropReason::Oversized);
    }
    if memchr::memchr(0, frame).is_some() {
        return Err(DropReason::Malformed);
    }
    let s = std::str::from_utf8(frame).map_err(|_| DropReason::Malformed)?;
    Ok(s.trim_end_matches(['\r', '\n']))
}

/// What [`strip_header`] found in front of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogHeader<'a> {
    pub pri: Option<u8>,
    pub timestamp: Option<&'a str>,
    pub host: Option<&'a str>,
    pub app: Option<&'a str>,
}

/// Strip an RFC 5424 (`<PRI>1 TS HOST APP PROCID MSGID SD MSG`) or RFC 3164
/// (`<PRI>Mmm dd hh:mm:ss HOST TAG[pid]: MSG`) header. A message without a recognised
/// header is returned whole.
pub fn strip_header(line: &str) -> (SyslogHeader<'_>, &str) {
    let mut h = SyslogHeader {
        pri: None,
        timestamp: None,
        host: None,
        app: None,
    };
    let mut s = line;
    if let Some(rest) = s.strip_prefix('<')
        && let Some(i) = rest.find('>')
        && (1..=3).contains(&i)
        && let Ok(p) = rest[..i].parse::<u8>()
        && p <= 191
    {
        h.pri = Some(p);
        s = &rest[i + 1..];
    }
    // RFC 5424.
    if let Some(rest) = s.strip_prefix("1 ") {
        let mut parts = rest.splitn(6, ' ');
        let ts = parts.next();
        let host = parts.next();
        let app = parts.next();
        let _procid = parts.next();
        let _msgid = parts.next();
        if let (Some(ts), Some(host), Some(app), Some(rest)) = (ts, host, app, parts.next())
            && (ts == "-" || crate::util::parse_rfc3339(ts).is_some())
        {
            h.timestamp = (ts != "-").then_some(ts);
            h.host = (host != "-").then_some(host);
            h.app = (app != "-").then_some(app);
            return (h, skip_sd(rest));
        }
    }
    // RFC 3164: "Mmm dd hh:mm:ss " (day space-padded).
    if s.len() >= 16
        && s.is_char_boundary(15)
        && s.get(..3).and_then(crate::util::month).is_some()
        && s.as_bytes()[15] == b' '
        && s.as_bytes()[9] == b':'
        && s.as_bytes()[12] == b':'
    {
        h.timestamp = Some(&s[..15]);
        let rest = &s[16..];
        let (host, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        h.host = Some(host);
        // TAG: alphanumerics up to 32 chars ending in ':' or '['.
        let tag_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "-_./".contains(c)))
            .unwrap_or(rest.len());
        if tag_end > 0 && tag_end <= 48 {
            let after = &rest[tag_end..];
            let after = if let Some(a) = after.strip_prefix('[') {
                a.split_once("]").map_or(after, |(_, a)| a)
            } else {
                after
            };
            if let Some(msg) = after.strip_prefix(':') {
                h.app = Some(&rest[..tag_end]);
                return (h, msg.strip_prefix(' ').unwrap_or(msg));
            }
        }
        return (h, rest);
    }
    (h, s)
}

/// Skip RFC 5424 STRUCTURED-DATA (`-` or `[...]...`, with `\]` escapes) and one space.
fn skip_sd(s: &str) -> &str {
    if let Some(rest) = s.strip_prefix('-') {
        return rest.strip_prefix(' ').unwrap_or(rest);
    }
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && b[i] == b'[' {
        let (mut esc, mut quoted) = (false, false);
        i += 1;
        while i < b.len() {
            let c = b[i];
            i += 1;
            if esc {
                esc = false;
            } else if c == b'\\' {
                esc = true;
            } else if c == b'"' {
                quoted = !quoted;
            } else if c == b']' && !quoted {
                break;
            }
        }
    }
    let rest = s.get(i..).unwrap_or("");
    let rest = rest.strip_prefix('\u{feff}').unwrap_or(rest);
    rest.strip_prefix(' ').unwrap_or(rest)
}

/// Receive buffer asked for the UDP socket.
pub const UDP_RCVBUF: usize = 8 * 1024 * 1024;

/// Limits of a [`Receiver`].
#[derive(Debug, Clone, Copy)]
pub struct ReceiverLimits {
    /// Longest frame (TCP) or datagram (UDP) kept.
    pub max_frame: usize,
    /// TCP connections served at once; more are accepted and closed at once (counted).
    pub max_connections: usize,
    /// A TCP connection silent this long is closed (slowloris).
    pub idle_timeout: std::time::Duration,
    /// A TLS client must finish its handshake within this time, or it is closed (counted).
    pub handshake_timeout: std::time::Duration,
    /// Frames queued for the consumer; when full, new frames are dropped (counted).
    pub queue: usize,
}

impl Default for ReceiverLimits {
    fn default() -> Self {
        ReceiverLimits {
            max_frame: MAX_FRAME,
            max_connections: 256,
            idle_timeout: std::time::Duration::from_secs(300),
            handshake_timeout: std::time::Duration::from_secs(10),
            queue: 65_536,
        }
    }
}

/// Counters shared by the receiver threads.
#[derive(Debug, Default)]
pub struct ReceiverCounters {
    pub received: std::sync::atomic::AtomicU64,
    pub oversized: std::sync::atomic::AtomicU64,
    pub bad_octet_count: std::sync::atomic::AtomicU64,
    pub malformed: std::sync::atomic::AtomicU64,
    pub too_many_connections: std::sync::atomic::AtomicU64,
    pub idle_closed: std::sync::atomic::AtomicU64,
    pub queue_full: std::sync::atomic::AtomicU64,
    /// Datagrams or connections from an address outside the listener's `allow` list.
    pub refused: std::sync::atomic::AtomicU64,
    /// TLS clients that failed or never finished their handshake.
    pub tls_handshake_failed: std::sync::atomic::AtomicU64,
}

impl ReceiverCounters {
    /// Every frame lost after it reached us (everything but `received`).
    pub fn dropped(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.oversized.load(Relaxed)
            + self.bad_octet_count.load(Relaxed)
            + self.malformed.load(Relaxed)
            + self.queue_full.load(Relaxed)
    }
}

/// Which listener a frame came in on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// A frame received: the peer address and the message (header still on).
pub type Frame = (std::net::SocketAddr, String);

/// A frame with the listener it came in on.
#[derive(Debug, Clone)]
pub struct Received {
    pub transport: Transport,
    pub peer: std::net::SocketAddr,
    pub message: String,
}

/// An address block (`10.0.0.0/8`, `2001:db8::/32`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    len: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let net: std::net::IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR block"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match l {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Cidr { net, len })
    }
}

impl Cidr {
    /// Whether `ip` is in the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(n) & m == u32::from(a) & m
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(n) & m == u128::from(a) & m
            }
            _ => false,
        }
    }
}

/// Who may send to a listener: `None` is everyone.
fn allowed(allow: &Option<Vec<Cidr>>, ip: std::net::IpAddr) -> bool {
    allow
        .as_ref()
        .is_none_or(|l| l.iter().any(|c| c.contains(ip)))
}

/// One listener of a [`Receiver`].
#[derive(Clone, Default)]
pub struct Listener {
    pub addr: Option<std::net::SocketAddr>,
    /// Senders allowed (`None`: any). Others are refused and counted.
    pub allow: Option<Vec<Cidr>>,
}

/// What a [`Receiver`] listens on.
#[derive(Clone, Default)]
pub struct ReceiverConfig {
    pub udp: Listener,
    pub tcp: Listener,
    pub tls: Listener,
    /// The TLS listener's server config (certificate and key); required with `tls.addr`.
    pub tls_config: Option<std::sync::Arc<rustls::ServerConfig>>,
    pub limits: ReceiverLimits,
}

/// The TLS listener's server config from PEM files: the certificate chain and its key.
pub fn tls_server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<std::sync::Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("certificate and key: {e}"))?;
    Ok(std::sync::Arc::new(cfg))
}

/// The `drops` column of the sockets bound to local `port` in a `/proc/net/udp` text.
pub fn proc_udp_drops(text: &str, port: u16) -> Option<u64> {
    let mut found = None;
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let Some(local) = cols.get(1) else { continue };
        let Some((_, p)) = local.rsplit_once(':') else {
            continue;
        };
        if u16::from_str_radix(p, 16).ok() != Some(port) {
            continue;
        }
        if let Some(d) = cols.last().and_then(|d| d.parse::<u64>().ok()) {
            found = Some(found.unwrap_or(0) + d);
        }
    }
    found
}

/// Syslog receivers over UDP, TCP and TLS (std threads), frames into a bounded queue.
pub struct Receiver {
    pub counters: std::sync::Arc<ReceiverCounters>,
    pub frames: std::sync::mpsc::Receiver<Received>,
    pub tcp_addr: Option<std::net::SocketAddr>,
    pub udp_addr: Option<std::net::SocketAddr>,
    pub tls_addr: Option<std::net::SocketAddr>,
}

type Push = std::sync::Arc<dyn Fn(Received) + Send + Sync>;

/// Serve one stream connection (TCP or TLS after its handshake) until it ends.
fn serve_stream(
    s: &mut dyn std::io::Read,
    peer: std::net::SocketAddr,
    transport: Transport,
    limits: ReceiverLimits,
    c: &ReceiverCounters,
    push: &Push,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut f = Framer::new(limits.max_frame);
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = |m: &str| {
        push(Received {
            transport,
            peer,
            message: m.to_owned(),
        })
    };
    let mut idle = false;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                f.feed(buf.get(..n).unwrap_or(&[]), &mut out);
                if f.is_broken() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                c.idle_closed.fetch_add(1, Relaxed);
                idle = true;
                break;
            }
            Err(_) => break,
        }
    }
    // A stalled sender's partial line is not a message.
    if !idle {
        f.finish(&mut out);
    }
    c.oversized.fetch_add(f.counters.oversized, Relaxed);
    c.bad_octet_count
        .fetch_add(f.counters.bad_octet_count, Relaxed);
    c.malformed.fetch_add(f.counters.malformed, Relaxed);
}

/// Finish a TLS handshake within `limits.handshake_timeout` (a client that stalls it is
/// closed, not waited for).
fn tls_accept(
    sock: std::net::TcpStream,
    cfg: std::sync::Arc<rustls::ServerConfig>,
    limits: ReceiverLimits,
) -> Option<rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>> {
    let mut conn = rustls::ServerConnection::new(cfg).ok()?;
    let mut sock = sock;
    let deadline = std::time::Instant::now() + limits.handshake_timeout;
    while conn.is_handshaking() {
        let left = deadline.checked_duration_since(std::time::Instant::now())?;
        sock.set_read_timeout(Some(left.max(std::time::Duration::from_millis(1))))
            .ok()?;
        sock.set_write_timeout(Some(left.max(std::time::Duration::from_millis(1))))
            .ok()?;
        match conn.complete_io(&mut sock) {
            Ok((0, 0)) if conn.is_handshaking() => return None, // EOF mid-handshake
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    sock.set_read_timeout(Some(limits.idle_timeout)).ok()?;
    sock.set_write_timeout(Some(limits.idle_timeout)).ok()?;
    Some(rustls::StreamOwned::new(conn, sock))
}

/// What a stream listener serves: plain TCP or TLS, and who may connect.
struct StreamKind {
    transport: Transport,
    allow: Option<Vec<Cidr>>,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

fn spawn_stream_listener(
    l: std::net::TcpListener,
    kind: StreamKind,
    limits: ReceiverLimits,
    counters: std::sync::Arc<ReceiverCounters>,
    live: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    push: Push,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let StreamKind {
        transport,
        allow,
        tls,
    } = kind;
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let peer = s.peer_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
            if !allowed(&allow, peer.ip()) {
                counters.refused.fetch_add(1, Relaxed);
                continue; // closed
            }
            if live.load(Relaxed) >= limits.max_connections {
                counters.too_many_connections.fetch_add(1, Relaxed);
                continue; // dropped: closed
            }
            live.fetch_add(1, Relaxed);
            let (c, push, live, tls) = (counters.clone(), push.clone(), live.clone(), tls.clone());
            std::thread::spawn(move || {
                match tls {
                    None => {
                        let mut s = s;
                        let _ = s.set_read_timeout(Some(limits.idle_timeout));
                        serve_stream(&mut s, peer, transport, limits, &c, &push);
                    }
                    Some(cfg) => match tls_accept(s, cfg, limits) {
                        Some(mut t) => serve_stream(&mut t, peer, transport, limits, &c, &push),
                        None => {
                            c.tls_handshake_failed.fetch_add(1, Relaxed);
                        }
                    },
                }
                live.fetch_sub(1, Relaxed);
            });
        }
    });
}

impl Receiver {
    /// Datagrams the kernel dropped for the UDP socket (its receive buffer was full), from
    /// `/proc/net/udp` and `/proc/net/udp6` of this network namespace; `None` without a UDP
    /// listener or that file.
    pub fn udp_kernel_drops(&self) -> Option<u64> {
        let port = self.udp_addr?.port();
        let mut found = None;
        for f in ["/proc/net/udp", "/proc/net/udp6"] {
            let Ok(text) = std::fs::read_to_string(f) else {
                continue;
            };
            if let Some(d) = proc_udp_drops(&text, port) {
                found = Some(found.unwrap_or(0) + d);
            }
        }
        found
    }

    /// Bind TCP and UDP listeners (either may be absent), anyone may send, and start serving.
    pub fn start(
        tcp: Option<std::net::SocketAddr>,
        udp: Option<std::net::SocketAddr>,
        limits: ReceiverLimits,
    ) -> std::io::Result<Receiver> {
        Receiver::start_with(ReceiverConfig {
            udp: Listener {
                addr: udp,
                allow: None,
            },
            tcp: Listener {
                addr: tcp,
                allow: None,
            },
            limits,
            ..ReceiverConfig::default()
        })
    }

    /// Bind the configured listeners and start serving.
    pub fn start_with(cfg: ReceiverConfig) -> std::io::Result<Receiver> {
        use std::sync::atomic::Ordering::Relaxed;
        use std::sync::{Arc, mpsc};
        let limits = cfg.limits;
        let counters = Arc::new(ReceiverCounters::default());
        let (tx, rx) = mpsc::sync_channel::<Received>(limits.queue.max(1));
        let push: Push = {
            let c = counters.clone();
            Arc::new(move |f: Received| {
                if tx.try_send(f).is_ok() {
                    c.received.fetch_add(1, Relaxed);
                } else {
                    c.queue_full.fetch_add(1, Relaxed);
                }
            })
        };
        // TCP and TLS connections share one cap.
        let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tcp_addr = None;
        if let Some(a) = cfg.tcp.addr {
            let l = std::net::TcpListener::bind(a)?;
            tcp_addr = Some(l.local_addr()?);
            spawn_stream_listener(
                l,
                StreamKind {
                    transport: Transport::Tcp,
                    allow: cfg.tcp.allow.clone(),
                    tls: None,
                },
                limits,
                counters.clone(),
                live.clone(),
                push.clone(),
            );
        }
        let mut tls_addr = None;
        if let Some(a) = cfg.tls.addr {
            let Some(tls) = cfg.tls_config.clone() else {
                return Err(std::io::Error::other(
                    "a TLS listener needs a certificate and key",
                ));
            };
            let l = std::net::TcpListener::bind(a)?;
            tls_addr = Some(l.local_addr()?);
            spawn_stream_listener(
                l,
                StreamKind {
                    transport: Transport::Tls,
                    allow: cfg.tls.allow.clone(),
                    tls: Some(tls),
                },
                limits,
                counters.clone(),
                live.clone(),
                push.clone(),
            );
        }
        let mut udp_addr = None;
        if let Some(a) = cfg.udp.addr {
            let sock = std::net::UdpSocket::bind(a)?;
            udp_addr = Some(sock.local_addr()?);
            // A burst while the reader thread is off the CPU waits in the socket buffer,
            // not in the kernel's drop counter (the kernel caps this at net.core.rmem_max).
            let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(UDP_RCVBUF);
            let c = counters.clone();
            let allow = cfg.udp.allow.clone();
            let push = push.clone();
            std::thread::spawn(move || {
                // One byte more than the limit tells an oversized datagram from a full one.
                let mut buf = vec![0u8; limits.max_frame.min(65_535) + 1];
                while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    if !allowed(&allow, peer.ip()) {
                        c.refused.fetch_add(1, Relaxed);
                        continue;
                    }
                    if n > limits.max_frame {
                        c.oversized.fetch_add(1, Relaxed);
                        continue;
                    }
                    match check_frame(buf.get(..n).unwrap_or(&[])) {
                        Ok(m) if !m.trim().is_empty() => push(Received {
                            transport: Transport::Udp,
                            peer,
                            message: m.to_owned(),
                        }),
                        Ok(_) => {}
                        Err(DropReason::Oversized) => {
                            c.oversized.fetch_add(1, Relaxed);
                        }
                        Err(_) => {
                            c.malformed.fetch_add(1, Relaxed);
                        }
                    }
                }
            });
        }
        Ok(Receiver {
            counters,
            frames: rx,
            tcp_addr,
            udp_addr,
            tls_addr,
        })
    }
}

/// Feed a batch of received messages from one source (syslog header still on: the vendor
/// parsers read it for the time) through the same detection and parsers as `discover`.
pub fn ingest(
    messages: &[String],
    source: &str,
    opts: &crate::LogOptions,
    sink: &mut dyn FnMut(tollgate_discovery::record::FlowRecord),
) -> Result<crate::InputStats, crate::LogError> {
    let mut text = Vec::with_capacity(messages.iter().map(|m| m.len() + 1).sum());
    for m in messages {
        text.extend_from_slice(m.as_bytes());
        text.push(b'\n');
    }
    crate::import_reader(&text[..], std::path::Path::new(source), opts, sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: &mut Framer, chunks: &[&[u8]]) -> Vec<String> {
        let mut v = Vec::new();
        for c in chunks {
            f.feed(c, &mut |s| v.push(s.to_owned()));
        }
        v
    }

    #[test]
    fn newline_framing_across_chunks() {
        let mut f = Framer::default();
        let v = run(&mut f, &[b"<13>a b\r\n<13>c", b" d\n\n<13>e\n"]);
        assert_eq!(v, ["<13>a b", "<13>c d", "<13>e"]);
        assert_eq!(f.counters.frames, 3);
    }

    #[test]
    fn octet_counting_byte_by_byte() {
        let msg = b"7 <13>abc5 <1>xy";
        let mut f = Framer::default();
        let chunks: Vec<&[u8]> = msg.chunks(1).collect();
        let v = run(&mut f, &chunks);
        assert_eq!(v, ["<13>abc", "<1>xy"]);
        assert!(!f.is_broken());
    }

    #[test]
    fn ten_megabyte_line_is_dropped_not_buffered() {
        let mut f = Framer::new(1024);
        let big = vec![b'a'; 10 * 1024 * 1024];
        let mut v = Vec::new();
        f.feed(b"<13>", &mut |s| v.push(s.to_owned()));
        for c in big.chunks(64 * 1024) {
            f.feed(c, &mut |s| v.push(s.to_owned()));
            assert!(f.buffered() <= 1024);
        }
        f.feed(b"\n<13>ok\n", &mut |s| v.push(s.to_owned()));
        assert_eq!(v, ["<13>ok"]);
        assert_eq!(f.counters.oversized, 1);

        // Octet-counted: the declared 10 MB body is skipped, the next frame still parsed.
        let mut f = Framer::new(1024);
        let mut v = Vec::new();
        let mut big = big;
        big[0] = b'<';
        f.feed(format!("{} ", big.len()).as_bytes(), &mut |s| {
            v.push(s.to_owned())
        });
        for c in big.chunks(64 * 1024) {
            f.feed(c, &mut |s| v.push(s.to_owned()));
            assert!(f.buffered() <= 1024);
        }
        f.feed(b"4 <1>x", &mut |s| v.push(s.to_owned()));
        assert_eq!(v, ["<1>x"]);
        assert_eq!(f.counters.oversized, 1);
    }

    #[test]
    fn bogus_octet_counts_break_the_connection() {
        for bad in [
            &b"12x <13>a"[..],
            b"99999999999999999999 a",
            b"1234567890123",
            b"5\n<13>abc",
        ] {
            let mut f = Framer::default();
            let v = run(&mut f, &[b"4 <1>x", bad, b"7 <13>abc"]);
            assert_eq!(v, ["<1>x"], "{bad:?}");
            assert!(f.is_broken(), "{bad:?}");
            assert_eq!(f.counters.bad_octet_count, 1, "{bad:?}");
        }
    }

    #[test]
    fn digits_first_is_newline_framing_unless_count_then_pri() {
        let mut f = Framer::default();
        let v = run(&mut f, &[b"1700000000.1 5 a\n12 x\n"]);
        assert_eq!(v, ["1700000000.1 5 a", "12 x"]);
        let mut f = Framer::default();
        let v = run(&mut f, &[b"1", b"1", b" ", b"<", b"13>abcdefg"]);
        assert_eq!(v, ["<13>abcdefg"]);
    }

    #[test]
    fn never_ending_line_stays_bounded() {
        let mut f = Framer::new(4096);
        for _ in 0..10_000 {
            f.feed(b"<13>slowloris", &mut |_| panic!("no frame expected"));
            assert!(f.buffered() <= 4096);
        }
        assert_eq!(f.counters.oversized, 1);
        let mut v = Vec::new();
        f.finish(&mut |s| v.push(s.to_owned()));
        assert!(v.is_empty());
    }

    #[test]
    fn nul_bytes_and_bad_utf8_are_counted() {
        let mut f = Framer::default();
        let v = run(&mut f, &[b"<13>a\0b\n<13>\xff\xfe\n<13>ok\n"]);
        assert_eq!(v, ["<13>ok"]);
        assert_eq!(f.counters.malformed, 2);
        assert_eq!(check_frame(b"x\0"), Err(DropReason::Malformed));
    }

    #[test]
    fn unterminated_last_line_counts_at_close() {
        let mut f = Framer::default();
        let mut v = run(&mut f, &[b"<13>a\n<13>b"]);
        f.finish(&mut |s| v.push(s.to_owned()));
        assert_eq!(v, ["<13>a", "<13>b"]);
        let mut f = Framer::default();
        run(&mut f, &[b"10 <13>"]);
        f.finish(&mut |_| panic!());
        assert_eq!(f.counters.malformed, 1);
    }

    #[test]
    fn strips_rfc5424() {
        let (h, m) = strip_header(
            "<134>1 2026-12-03T10:00:00.123Z fw1 PAN-OS 1234 TRAFFIC [ex@1 a=\"]\\]\"] 1,2,3",
        );
        assert_eq!(m, "1,2,3");
        assert_eq!(h.pri, Some(134));
        assert_eq!(h.host, Some("fw1"));
        assert_eq!(h.app, Some("PAN-OS"));
        let (h, m) = strip_header("<14>1 - - - - - - hello");
        assert_eq!((h.host, m), (None, "hello"));
    }

    #[test]
    fn strips_rfc3164() {
        let (h, m) = strip_header("<13>Dec  3 10:00:00 proxy1 squid[42]: 1700000000.1 5 ...");
        assert_eq!(m, "1700000000.1 5 ...");
        assert_eq!((h.host, h.app), (Some("proxy1"), Some("squid")));
        let (h, m) = strip_header("<13>Dec  3 10:00:00 fw2 date=2026-12-03 time=10:00:00");
        assert_eq!(h.host, Some("fw2"));
        assert_eq!(m, "date=2026-12-03 time=10:00:00");
    }

    #[test]
    fn hostile_headers_do_not_panic() {
        for s in [
            "",
            "<",
            "<999>",
            "<1>1 ",
            "<1>1 x y",
            "<13>Déc  3 10:00:00 h t: m",
            "<13>Dec  3 10:00:0é h t: m",
            "<13>1 2026-12-03T10:00:00Z h a p m [unterminated",
            "\0\0\0",
            "<13>Dxé 3 10:00:00 h t: m",
            "<13>Dec  3 10:00:00 ",
        ] {
            let _ = strip_header(s);
        }
    }

    #[test]
    fn tcp_and_udp_receiver_with_hostile_peers() {
        use std::io::Write;
        use std::sync::atomic::Ordering::Relaxed;
        use std::time::Duration;
        let any = "127.0.0.1:0".parse().ok();
        let r = Receiver::start(
            any,
            any,
            ReceiverLimits {
                max_frame: 4096,
                max_connections: 2,
                idle_timeout: Duration::from_millis(300),
                queue: 1024,
                ..ReceiverLimits::default()
            },
        )
        .unwrap();
        let tcp = r.tcp_addr.unwrap();
        // Slowloris: never sends a newline; closed after the idle timeout.
        let mut slow = std::net::TcpStream::connect(tcp).unwrap();
        slow.write_all(b"<13>never ends").unwrap();
        // A 10 MB line then a good one, newline framing.
        let mut c = std::net::TcpStream::connect(tcp).unwrap();
        c.write_all(b"<13>").unwrap();
        c.write_all(&vec![b'a'; 10 * 1024 * 1024]).unwrap();
        c.write_all(b"\n<13>Dec  3 10:00:00 h app: good one\n")
            .unwrap();
        drop(c);
        // Octet counting and a bogus count.
        std::thread::sleep(Duration::from_millis(100));
        let mut c = std::net::TcpStream::connect(tcp).unwrap();
        c.write_all(b"10 <13>octet99x ").unwrap();
        drop(c);
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ua = r.udp_addr.unwrap();
        u.send_to(b"<13>udp one", ua).unwrap();
        u.send_to(b"<13>nul\0", ua).unwrap();
        u.send_to(&vec![b'x'; 8000], ua).unwrap();
        let mut got = Vec::new();
        while let Ok(f) = r.frames.recv_timeout(Duration::from_secs(2)) {
            got.push(f.message);
        }
        got.sort();
        assert_eq!(
            got,
            [
                "<13>Dec  3 10:00:00 h app: good one",
                "<13>octet9",
                "<13>udp one"
            ]
        );
        let k = &r.counters;
        assert_eq!(k.received.load(Relaxed), 3);
        assert_eq!(k.oversized.load(Relaxed), 2); // the 10 MB line and the 8000-byte datagram
        assert_eq!(k.bad_octet_count.load(Relaxed), 1);
        assert_eq!(k.malformed.load(Relaxed), 1);
        assert_eq!(k.idle_closed.load(Relaxed), 1);
        drop(slow);
    }

    #[test]
    fn udp_allow_list_refuses_spoofed_senders() {
        use std::sync::atomic::Ordering::Relaxed;
        use std::time::Duration;
        let any = "127.0.0.1:0".parse().ok();
        // Only 10.0.0.0/8 may send: 127.0.0.1 plays the spoofer outside the list.
        let r = Receiver::start_with(ReceiverConfig {
            udp: Listener {
                addr: any,
                allow: Some(vec!["10.0.0.0/8".parse().unwrap()]),
            },
            tcp: Listener {
                addr: any,
                allow: Some(vec!["192.0.2.1".parse().unwrap()]),
            },
            ..ReceiverConfig::default()
        })
        .unwrap();
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..5 {
            u.send_to(b"<13>spoofed", r.udp_addr.unwrap()).unwrap();
        }
        let mut c = std::net::TcpStream::connect(r.tcp_addr.unwrap()).unwrap();
        use std::io::Write;
        let _ = c.write_all(b"<13>refused too\n");
        drop(c);
        assert!(r.frames.recv_timeout(Duration::from_millis(500)).is_err());
        assert_eq!(r.counters.refused.load(Relaxed), 6);
        assert_eq!(r.counters.received.load(Relaxed), 0);
        // The same listener lets an allowed sender in.
        let r = Receiver::start_with(ReceiverConfig {
            udp: Listener {
                addr: any,
                allow: Some(vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()]),
            },
            ..ReceiverConfig::default()
        })
        .unwrap();
        u.send_to(b"<13>allowed", r.udp_addr.unwrap()).unwrap();
        let f = r.frames.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!(
            (f.transport, f.message.as_str()),
            (Transport::Udp, "<13>allowed")
        );
    }

    #[test]
    fn proc_net_udp_drops() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
          712: 0100007F:B9A6 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123 2 0000000000000000 4684\n\
          713: 00000000:0202 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 124 2 0000000000000000 0\n\
          bogus\n";
        assert_eq!(proc_udp_drops(text, 0xB9A6), Some(4684));
        assert_eq!(proc_udp_drops(text, 514), Some(0));
        assert_eq!(proc_udp_drops(text, 1), None);
        assert_eq!(proc_udp_drops("", 1), None);
        // A real socket of ours is found in this namespace's table.
        let r =
            Receiver::start(None, "127.0.0.1:0".parse().ok(), ReceiverLimits::default()).unwrap();
        assert_eq!(r.udp_kernel_drops(), Some(0));
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert!(!all.contains("::1".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x", "10.0.0.0/", "::/129", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_listener_serves_and_drops_stalled_handshakes() {
        use std::io::Write;
        use std::sync::atomic::Ordering::Relaxed;
        use std::time::Duration;
        let d = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(d.path().join("c.pem"), ck.cert.pem()).unwrap();
        std::fs::write(d.path().join("k.pem"), ck.signing_key.serialize_pem()).unwrap();
        assert!(tls_server_config(&d.path().join("k.pem"), &d.path().join("k.pem")).is_err());
        let cfg = tls_server_config(&d.path().join("c.pem"), &d.path().join("k.pem")).unwrap();
        let r = Receiver::start_with(ReceiverConfig {
            tls: Listener {
                addr: "127.0.0.1:0".parse().ok(),
                allow: None,
            },
            tls_config: Some(cfg),
            limits: ReceiverLimits {
                handshake_timeout: Duration::from_millis(400),
                max_connections: 4,
                ..ReceiverLimits::default()
            },
            ..ReceiverConfig::default()
        })
        .unwrap();
        let addr = r.tls_addr.unwrap();
        // Clients that connect and never finish (or never start) the handshake.
        let mut stalled = Vec::new();
        for i in 0..3 {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            if i == 0 {
                // Half a ClientHello record header.
                s.write_all(&[0x16, 0x03, 0x01]).unwrap();
            }
            stalled.push(s);
        }
        std::thread::sleep(Duration::from_millis(1200));
        assert_eq!(r.counters.tls_handshake_failed.load(Relaxed), 3);
        // The slots are free again: a real client sends octet-counted frames.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).unwrap();
        let ccfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let conn = rustls::ClientConnection::new(
            std::sync::Arc::new(ccfg),
            "localhost".try_into().unwrap(),
        )
        .unwrap();
        let mut t = rustls::StreamOwned::new(conn, std::net::TcpStream::connect(addr).unwrap());
        t.write_all(b"12 <13>over tls7 <13>two").unwrap();
        t.flush().unwrap();
        let mut got = Vec::new();
        while let Ok(f) = r.frames.recv_timeout(Duration::from_secs(2)) {
            assert_eq!(f.transport, Transport::Tls);
            got.push(f.message);
            if got.len() == 2 {
                break;
            }
        }
        assert_eq!(got, ["<13>over tls", "<13>two"]);
        drop(stalled);
    }

    #[test]
    fn connection_flood_is_capped() {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering::Relaxed;
        use std::time::Duration;
        let r = Receiver::start(
            "127.0.0.1:0".parse().ok(),
            None,
            ReceiverLimits {
                max_connections: 1,
                ..ReceiverLimits::default()
            },
        )
        .unwrap();
        let tcp = r.tcp_addr.unwrap();
        let mut first = std::net::TcpStream::connect(tcp).unwrap();
        first.write_all(b"<13>first\n").unwrap();
        assert_eq!(
            r.frames
                .recv_timeout(Duration::from_secs(5))
                .unwrap()
                .message,
            "<13>first"
        );
        // The second is closed at once while the first is open.
        let mut second = std::net::TcpStream::connect(tcp).unwrap();
        second
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        assert_eq!(second.read(&mut b).unwrap_or(0), 0);
        let _ = second.write_all(b"<13>second\n");
        assert!(r.frames.recv_timeout(Duration::from_millis(300)).is_err());
        assert_eq!(r.counters.too_many_connections.load(Relaxed), 1);
        drop(first);
    }

    #[test]
    fn tcp_fixtures_parse_like_the_file() {
        use std::io::Write;
        use std::time::Duration;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/logs");
        for name in [
            "squid_native.log",
            "paloalto_traffic.log",
            "fortinet_fortigate.log",
        ] {
            let path = dir.join(name);
            let opts = crate::LogOptions::default();
            let mut want = 0u64;
            let file = crate::import_file(&path, &opts, &mut |_| want += 1).unwrap();
            let r = Receiver::start("127.0.0.1:0".parse().ok(), None, ReceiverLimits::default())
                .unwrap();
            let mut c = std::net::TcpStream::connect(r.tcp_addr.unwrap()).unwrap();
            c.write_all(&std::fs::read(&path).unwrap()).unwrap();
            drop(c);
            let mut got = Vec::new();
            while let Ok(f) = r.frames.recv_timeout(Duration::from_secs(1)) {
                got.push(f.message);
            }
            let mut n = 0u64;
            let st = ingest(&got, name, &opts, &mut |_| n += 1).unwrap();
            assert!(want > 0, "{name}");
            assert_eq!(
                (n, st.format.as_str()),
                (want, file.format.as_str()),
                "{name}"
            );
        }
    }
}
