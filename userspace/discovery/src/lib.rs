//! Cloud Discovery: live kernel events and pcap files become [`record::FlowRecord`]s through
//! the flow table; records (from here or from `tollgate-logs`, which imports other devices'
//! logs into the same type) are classified against the catalog, aggregated per app, user and
//! source IP, metered per upload interval, and rendered as reports.
//!
//! Errors: each part that can fail has its own error type ([`pcap::PcapError`],
//! [`users::UsersError`]) and each fallible function returns the one of its part (rendering a
//! report returns the `io::Error` of the caller's writer), so a caller matches exactly what
//! can happen.
// One exception, in `pcap::sharded`: a prefetch hint for the frames a worker reads next.
#![deny(unsafe_code)]

pub mod aggregate;
pub mod flow_table;
pub mod interval;
pub mod packet;
pub mod pcap;
pub mod record;
pub mod report;
pub mod users;
