//! Tollgate's binary crate as a library: the config model, the control socket protocol and
//! the daemon that wires dataplane events through the flow table, the catalog and the
//! discovery aggregates. `main.rs` only parses the command line and calls in here, so that
//! tests can reach every piece.
#![forbid(unsafe_code)]

pub mod config;
pub mod control;
