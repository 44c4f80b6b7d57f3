//! Cloud Discovery: every input (live kernel events, pcap files, firewall and proxy logs)
//! becomes [`record::FlowRecord`]s; records are classified against the catalog, aggregated
//! per app, user and source IP, and rendered as reports.
//!
//! Errors: each part that can fail has its own error type ([`pcap::PcapError`],
//! [`users::UsersError`], [`logs::LogError`]) and each fallible function returns the one of
//! its part (rendering a report returns the `io::Error` of the caller's writer), so a caller
//! matches exactly what can happen. Where the parts meet,
//! [`discover::discover`] does not fail: a file it cannot read or parse is reported in the
//! report's per-file stats and the other files are still processed.
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod discover;
pub mod flow_table;
pub mod interval;
pub mod logs;
pub mod packet;
pub mod pcap;
pub mod record;
pub mod report;
pub mod users;
