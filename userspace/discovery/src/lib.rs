//! Cloud Discovery: every input (live kernel events, pcap files, firewall and proxy logs)
//! becomes [`record::FlowRecord`]s; records are classified against the catalog, aggregated
//! per app, user and source IP, and rendered as reports.
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

/// Every error a discovery entry point can report: callers that handle any of them (the CLI,
/// the daemon) take this one type; each variant keeps its specific error as the source.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Pcap(#[from] pcap::PcapError),
    #[error(transparent)]
    Users(#[from] users::UsersError),
    #[error(transparent)]
    Log(#[from] logs::LogError),
}
