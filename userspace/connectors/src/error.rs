//! The crate's errors: a misbehaving vendor (status, parse, off-origin link), a local
//! misconfiguration (settings, token file) and the store.

/// Why a vendor page could not be read. Parsers return it; they never panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("page is not the expected JSON: {0}")]
    Json(String),
    #[error("page has {0} events, more than the {1} a page may carry")]
    TooManyEvents(usize, usize),
    #[error("page field {0} is missing or has the wrong type")]
    Missing(&'static str),
    #[error("bad link: {0}")]
    Link(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A local misconfiguration (settings, token file).
    #[error("connector settings: {0}")]
    Config(String),
    #[error("connection to {origin} failed: {reason}")]
    Transport { origin: String, reason: String },
    #[error("{origin} did not answer within {secs} s")]
    Timeout { origin: String, secs: u64 },
    /// 401 (or 403 that is not a rate limit) after the token was read again.
    #[error("{origin} refused the token ({status}): {reason}")]
    Unauthorized {
        origin: String,
        status: u16,
        reason: String,
    },
    /// An unexpected status; `reason` is the start of the vendor's text, escaped.
    #[error("{origin} answered {status}: {reason}")]
    Status {
        origin: String,
        status: u16,
        reason: String,
    },
    /// The vendor refused our stored cursor (expired, unknown): the caller falls back to a
    /// time window and de-duplicates.
    #[error("{origin} refused the stored cursor ({status}): {reason}")]
    CursorExpired {
        origin: String,
        status: u16,
        reason: String,
    },
    /// Still throttled (or failing with 5xx) after every retry of one request.
    #[error("{origin}: gave up after {attempts} attempts (last: {last})")]
    GaveUp {
        origin: String,
        attempts: u32,
        last: String,
    },
    #[error("{origin}: {source}")]
    Parse {
        origin: String,
        #[source]
        source: ParseError,
    },
    /// A link, content URI or page URI that leaves `base_url`'s origin: refused, the token is
    /// not sent there.
    #[error("refusing {url:?}: it leaves {origin} (the token is only sent to base_url)")]
    OffOrigin { origin: String, url: String },
    #[error("circuit open after repeated failures; next attempt in {secs} s")]
    CircuitOpen { secs: u64 },
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

impl ConnectorError {
    /// A short name for counters and the status (`unauthorized`, `throttled`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectorError::Config(_) => "config",
            ConnectorError::Transport { .. } => "transport",
            ConnectorError::Timeout { .. } => "timeout",
            ConnectorError::Unauthorized { .. } => "unauthorized",
            ConnectorError::Status { .. } => "status",
            ConnectorError::CursorExpired { .. } => "cursor_expired",
            ConnectorError::GaveUp { .. } => "gave_up",
            ConnectorError::Parse { .. } => "parse",
            ConnectorError::OffOrigin { .. } => "off_origin",
            ConnectorError::CircuitOpen { .. } => "circuit_open",
            ConnectorError::Store(_) => "store",
        }
    }
}

/// The start of a vendor's text, safe for a log line or a terminal: at most `max` characters,
/// control characters escaped.
pub fn snippet(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    for c in text.chars().take(max) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if text.chars().count() > max {
        out.push('…');
    }
    out
}
