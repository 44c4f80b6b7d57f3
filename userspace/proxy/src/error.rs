//! The crate's error type.

use std::path::PathBuf;

/// Errors of the proxy library. Peer misbehaviour on a single connection is not an error of
/// this type: it ends that connection and is traced / audited.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A local file (CA, trust anchors, audit log) could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Listening or another socket operation failed.
    #[error("socket: {0}")]
    Socket(#[from] std::io::Error),
    /// Certificate or key material is unusable.
    #[error("certificate authority: {0}")]
    Ca(String),
    /// TLS configuration could not be built.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// A policy is invalid (misconfiguration).
    #[error("policy {policy:?}, key {key}: {message}")]
    Policy {
        policy: String,
        key: String,
        message: String,
    },
    /// A proxy setting is invalid.
    #[error("proxy config, key {key}: {message}")]
    Config { key: String, message: String },
}

impl ProxyError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ProxyError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = ProxyError> = std::result::Result<T, E>;
