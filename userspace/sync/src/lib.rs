//! The management plane's shared part: the gateway–hub protocol (versioned postcard messages),
//! signed policy bundles, and the gateway's durable upload spool. The gateway links it for its
//! sync client and the hub for its server; it carries no database driver.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod client;
pub mod protocol;
pub mod spool;
pub mod token;
