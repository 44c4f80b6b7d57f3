//! Tollgate's app connectors: activity from SaaS admin APIs (Okta System Log, GitHub
//! enterprise/org audit log, Microsoft 365 Management Activity API, Slack audit logs, Box admin
//! events), mapped into the one activity record of `tollgate-activity` with the vendor's event
//! id as `vendor_id`. The hub runs them.
//!
//! ```text
//! Store::load_cursor ─▶ Connector::poll ─▶ vendors::<kind>::step (one request, its page)
//!                            │ HttpClient (rustls, system roots honouring SSL_CERT_FILE,
//!                            │ one request in flight per tenant, 429/403-secondary/5xx:
//!                            │ Retry-After, rate-limit reset headers, backoff with jitter)
//!                            ▼
//!                  pure parsers (vendors::<kind>::parse_page): bytes in, events or a typed
//!                  error out; each event ─▶ Activity { vendor_id, connector, action, ... }
//!                            ▼
//!            Store::commit(name, records, cursor): records (unique on (source, vendor_id))
//!            and the cursor that follows them, in one transaction
//! ```
//!
//! Exactly once: a cursor is only ever stored together with (or after) the events read before
//! it, and the store keeps one record per `(connector, vendor_id)`; whatever is read twice (an
//! overlap re-read for late events, a page read again after a crash, a vendor duplicate) is
//! dropped by the store. Cursors are the vendor's own: Okta's `next` link, GitHub's `after`
//! cursor with an overlap re-read, M365 content listings in ≤ 24 h windows with `NextPageUri`
//! and a re-listing of the last hour, Slack's `next_cursor`, Box's `stream_position`.
//!
//! Every vendor response is hostile input: sizes and counts are capped, a malformed page is a
//! typed error, a malformed event is dropped and counted, a link to another host is refused (the
//! token is never sent anywhere but `base_url`'s origin). [`sim`] plays each API from its
//! documented shapes, for the tests and the benchmark.

#![forbid(unsafe_code)]

pub mod connector;
pub mod error;
pub mod governance;
pub mod http;
pub mod settings;
pub mod sim;
pub mod store;
pub mod throttle;
pub mod vendors;

pub use connector::{
    Clock, Connector, ConnectorStatus, Health, Options, PollReport, TenantGates, ThrottleHook,
};
pub use error::{ConnectorError, ParseError};
pub use governance::Registry;
pub use settings::{ConnectorConfig, Kind, RunOn, Secret, Settings};
pub use store::{MemoryStore, Store, StoreError};
pub use throttle::Limits;
pub use tollgate_activity::GovernanceCall;
