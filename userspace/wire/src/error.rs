//! The crate's one error type. Every variant is a misbehaving (or merely unusual) peer:
//! the parsers have no configuration and no I/O, so there is no local or internal class.

use thiserror::Error;

/// What went wrong while parsing untrusted bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// A length field points past the end of the enclosing structure.
    #[error("{what}: length {len} exceeds the {avail} bytes available")]
    BadLength {
        what: &'static str,
        len: usize,
        avail: usize,
    },
    /// A field holds a value the protocol forbids here.
    #[error("{what}: invalid value {value:#x}")]
    BadValue { what: &'static str, value: u64 },
    /// A configured limit (name length, record count, buffered bytes...) was hit.
    #[error("limit exceeded: {what} (max {max})")]
    Limit { what: &'static str, max: usize },
    /// A DNS compression pointer loop or a pointer that does not point backwards.
    #[error("dns: compression pointer loop or forward pointer at offset {offset}")]
    DnsPointerLoop { offset: usize },
    /// The bytes ended before a structure that claims to be complete did.
    #[error("{what}: truncated")]
    Truncated { what: &'static str },
    /// AEAD authentication failed (wrong keys: not a client Initial, or corrupted).
    #[error("quic: initial packet failed to decrypt")]
    Decrypt,
    /// A QUIC version without known initial secrets.
    #[error("quic: version {0:#010x} has no known initial secrets")]
    UnsupportedVersion(u32),
    /// HTTP/1 head rejected by httparse.
    #[error("http: {0}")]
    Http(&'static str),
}

impl Error {
    /// A short stable label, for counters ("parse errors by kind").
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadLength { .. } => "bad_length",
            Error::BadValue { .. } => "bad_value",
            Error::Limit { .. } => "limit",
            Error::DnsPointerLoop { .. } => "dns_pointer_loop",
            Error::Truncated { .. } => "truncated",
            Error::Decrypt => "decrypt",
            Error::UnsupportedVersion(_) => "unsupported_version",
            Error::Http(_) => "http",
        }
    }
}

/// Shorthand used across the crate.
pub type Result<T> = std::result::Result<T, Error>;
