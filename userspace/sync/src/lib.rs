//! Sync with a central management endpoint: signed policy and catalog bundles down,
//! discovery, alerts and audit records up through a store-and-forward spool.
#![forbid(unsafe_code)]
