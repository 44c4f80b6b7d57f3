//! The gateway–hub protocol: versioned postcard messages over HTTPS.
//!
//! The gateway opens every connection (branches sit behind NAT). Every request is an HTTP/1.1
//! `POST` whose body is one message encoded by [`encode`]: the protocol version as a postcard
//! `u16`, then the message. The hub answers `200` with one encoded message, or an error status
//! with a short plain-text reason that the gateway shows as is:
//!
//! | path            | client certificate | request          | answer            |
//! |-----------------|--------------------|------------------|-------------------|
//! | [`PATH_ENROLL`] | none (a token)     | [`EnrollRequest`] | [`EnrollResponse`] |
//! | [`PATH_POLL`]   | required           | [`PollRequest`]   | [`PollResponse`]   |
//! | [`PATH_UPLOAD`] | required           | [`UploadBatch`]   | [`UploadAck`]      |
//! | [`PATH_REPORT`] | required           | [`BundleReport`]  | empty `204`        |
//!
//! Error statuses: `400` undecodable message or unsupported protocol version, `401` no or an
//! unknown client certificate, `403` a used, expired, unknown or revoked token, or a revoked
//! gateway, `413` a body over [`MAX_MESSAGE_BYTES`], `503` the hub cannot reach its database.
//!
//! Changes reach the gateway by long poll: the hub holds a [`PollRequest`] until a bundle newer
//! than `applied_revision` exists for the gateway's site or `wait_secs` (capped at
//! [`MAX_WAIT_SECS`]) pass.
//!
//! Uploads are at-least-once: every [`UploadRecord`] carries the spool's sequence number, and
//! the hub stores each `(gateway, seq)` once, so a batch sent again after a lost answer or a
//! restart is counted once.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The version every message starts with. A hub answers a version it does not speak with
/// `400`; a gateway refuses an answer of another version.
pub const PROTOCOL_VERSION: u16 = 1;
/// The body's media type, on requests and answers.
pub const CONTENT_TYPE: &str = "application/x-tollgate-postcard";
/// The largest message either side reads; a larger body is refused unread (`413`).
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;
/// The longest a hub holds a poll.
pub const MAX_WAIT_SECS: u16 = 30;

pub const PATH_ENROLL: &str = "/v1/enroll";
pub const PATH_POLL: &str = "/v1/poll";
pub const PATH_UPLOAD: &str = "/v1/upload";
pub const PATH_REPORT: &str = "/v1/report";

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message of protocol version {0}, this side speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion(u16),
    #[error("message too large: {0} bytes (limit {MAX_MESSAGE_BYTES})")]
    TooLarge(usize),
    #[error("undecodable message: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("{0} bytes after the message")]
    TrailingBytes(usize),
}

/// A message as it goes on the wire: the protocol version, then the message.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail: postcard errors only on a full buffer
    // or on types (maps with unknown length) these messages do not contain.
    postcard::to_allocvec(&(PROTOCOL_VERSION, message)).unwrap_or_default()
}

/// Reads one message, refusing another protocol version, trailing bytes and oversized input.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let (version, rest): (u16, &[u8]) = postcard::take_from_bytes(bytes)?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let (message, rest): (T, &[u8]) = postcard::take_from_bytes(rest)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(message)
}

/// The gateway's first contact: a one-time token and a certificate signing request for a key
/// the gateway made and keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The token's secret part (the CA pin part never leaves the gateway).
    pub token_secret: String,
    /// A PKCS#10 request, DER. The hub takes only the public key from it; the names in the
    /// certificate are the hub's.
    pub csr_der: Vec<u8>,
    pub hostname: String,
    pub agent_version: String,
}

/// What the hub gives an enrolled gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The hub's name for this gateway; the client certificate's common name.
    pub gateway_id: String,
    pub site: String,
    /// The gateway's client certificate, DER, signed by the hub's CA.
    pub certificate_der: Vec<u8>,
    /// The hub's CA certificate, DER: the only root the gateway trusts for the hub from now on.
    pub ca_der: Vec<u8>,
    /// The hub's Ed25519 bundle-signing public key (separate from the TLS CA).
    pub bundle_key: [u8; 32],
    /// Every hub URL the fleet is served on, for failover; may be empty (keep the one used).
    pub hub_urls: Vec<String>,
}

/// A long poll for a newer bundle; it also carries the gateway's health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollRequest {
    /// The revision the gateway runs (0: none yet).
    pub applied_revision: u64,
    /// How long the hub may hold the request (capped at [`MAX_WAIT_SECS`]).
    pub wait_secs: u16,
    pub health: Health,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PollResponse {
    /// Nothing newer than the gateway's revision; `latest_revision` is the newest for its site.
    Unchanged { latest_revision: u64 },
    /// A newer bundle for the gateway's site.
    Bundle(crate::bundle::SignedBundle),
}

/// The gateway's health, as the hub's fleet view shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub agent_version: String,
    pub hostname: String,
    pub uptime_secs: u64,
    pub flows_active: u64,
    pub ring_drops: u64,
    pub spool_records: u64,
    pub spool_bytes: u64,
    /// Records the spool dropped because it was full, since it was created.
    pub spool_dropped: u64,
    /// The last error the gateway's sync saw, if any.
    pub last_error: Option<String>,
}

/// What became of a bundle the gateway received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleReport {
    pub revision: u64,
    pub outcome: BundleOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BundleOutcome {
    Applied,
    /// Refused; the gateway's policy stayed as it was. The reason is for the admin.
    Refused {
        reason: String,
    },
}

/// Spooled records sent up, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadBatch {
    pub records: Vec<UploadRecord>,
}

/// One spooled record. `(gateway, seq)` is its idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// The spool's sequence number: strictly increasing per gateway, across restarts.
    pub seq: u64,
    /// When the gateway recorded it, Unix seconds.
    pub recorded_at: i64,
    pub body: RecordBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RecordBody {
    Discovery(DiscoveryInterval),
    Audit(AuditEvent),
    /// An alert the gateway opened, or a change to one (a new match, a status change). The
    /// newest report of an alert replaces the older ones at the hub.
    Alert(Box<AlertReport>),
    /// Activity records a connector run by the gateway read (`run_on = "gateway"`).
    Activities(ConnectorRecords),
}

/// A page of a gateway-run connector's records, each the activity record's JSON. The hub
/// stores them under `GATEWAY/CONNECTOR`, once per vendor event id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorRecords {
    pub connector: String,
    pub records: Vec<String>,
}

/// What one gateway discovered in one interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryInterval {
    /// Unix seconds, the interval's start (inclusive) and end (exclusive).
    pub start: i64,
    pub end: i64,
    pub apps: Vec<AppUsage>,
    pub unknown_domains: Vec<DomainUsage>,
}

/// One app's traffic from one user (or device) in an interval.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppUsage {
    /// The catalog id.
    pub app_id: String,
    /// The user map's name, or the device's address where no user is known.
    pub user: String,
    /// The device's address.
    pub device: String,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub flows: u64,
    /// Flows the gateway blocked.
    pub blocked_flows: u64,
}

/// Traffic to a domain no catalog app claims, grouped by registrable domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainUsage {
    pub domain: String,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub flows: u64,
}

/// Something an admin should be able to trace: a tag change, a block, a bypass, a refused
/// bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// A short machine name: `tag_changed`, `bundle_applied`, `bundle_refused`, ...
    pub kind: String,
    pub app_id: Option<String>,
    pub detail: String,
}

/// A gateway's alert as it stands, for the fleet's alert list. Plain strings, so that the
/// protocol does not depend on the activity layer's types.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertReport {
    /// The gateway's own alert id (`tollgate alerts show ID` there).
    pub alert_id: u64,
    /// Unix seconds: when it opened, and when it last matched.
    pub opened: i64,
    pub last_seen: i64,
    /// `low`, `medium` or `high`.
    pub severity: String,
    pub policy: String,
    pub user: Option<String>,
    pub ip: Option<String>,
    pub app_id: Option<String>,
    /// Why it was raised, with the values that crossed the line.
    pub reason: String,
    /// `open`, `resolved` or `dismissed`, as set on the gateway.
    pub status: String,
    pub count: u64,
    pub comment: Option<String>,
}

/// The hub's answer to an upload: every record up to and including `stored_through` is
/// stored (some may have been stored before), so the gateway may drop them from its spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadAck {
    pub stored_through: u64,
    /// Records new to the hub in this batch.
    pub accepted: u32,
    /// Records the hub already had (sent again after a lost answer).
    pub duplicates: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let ack = UploadAck {
            stored_through: 42,
            accepted: 3,
            duplicates: 1,
        };
        let bytes = encode(&ack);
        assert_eq!(decode::<UploadAck>(&bytes).unwrap(), ack);

        let mut other = postcard::to_allocvec(&(PROTOCOL_VERSION + 1, &ack)).unwrap();
        assert!(matches!(
            decode::<UploadAck>(&other),
            Err(DecodeError::UnsupportedVersion(v)) if v == PROTOCOL_VERSION + 1
        ));
        other = bytes.clone();
        other.push(0);
        assert!(matches!(
            decode::<UploadAck>(&other),
            Err(DecodeError::TrailingBytes(1))
        ));
        assert!(decode::<UploadAck>(&bytes[..bytes.len() - 1]).is_err());
    }
}
