//! The policy model: app tags (sanctioned, unsanctioned, monitored, custom), how a tag turns
//! into a decision for a flow, and the access and session policies the proxy applies.
#![forbid(unsafe_code)]
