//! Cloud Discovery: every input (live kernel events, pcap files, firewall and proxy logs)
//! becomes [`record::FlowRecord`]s; records are classified against the catalog, aggregated
//! per app, user and source IP, and rendered as reports.
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod discover;
pub mod flow_table;
pub mod logs;
pub mod packet;
pub mod pcap;
pub mod record;
pub mod report;
pub mod users;
