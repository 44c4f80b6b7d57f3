//! Tollgate's binary crate as a library: the config model, the control socket protocol, the
//! subcommands and the daemon that wires dataplane events through the flow table, the
//! catalog, the policy and the discovery aggregates. `main.rs` only parses the command line
//! and calls in here, so that tests can reach every piece.
#![forbid(unsafe_code)]

pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod enforce;
pub mod netns;
pub mod session;
pub mod view;
