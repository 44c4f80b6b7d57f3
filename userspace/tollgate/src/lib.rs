//! Tollgate's binary crate as a library: the config model, the control socket protocol, the
//! subcommands and the daemon that wires dataplane events through the flow table, the
//! catalog, the policy and the discovery aggregates. `main.rs` only parses the command line
//! and calls in here, so that tests can reach every piece.
#![forbid(unsafe_code)]
// `status --json` is one `serde_json::json!` literal with many keys.
#![recursion_limit = "256"]

/// `println!` that never panics: a reader that went away (`tollgate flows | head`, a
/// closed terminal) is not an error worth dying for.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `print!` that never panics (see [`outln!`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub mod alerting;
pub mod collect;
pub mod commands;
pub mod config;
pub mod connectors;
pub mod console;
pub mod control;
pub mod daemon;
pub mod enforce;
pub mod hub;
pub mod netns;
pub mod pressure;
pub mod session;
pub mod view;
