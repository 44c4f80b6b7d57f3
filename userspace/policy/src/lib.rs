//! The policy model: app tags (sanctioned, unsanctioned, monitored, custom), how a tag turns
//! into a decision for a flow, the verdict plan (what the kernel should hold for those
//! decisions, and the diff against what it holds: [`VerdictPlan`]), the addresses that are
//! never blocked or steered ([`ProtectedAddrs`]), and exports of the decisions for devices
//! Tollgate does not run on.
//!
//! # Where a tag comes from
//!
//! ```text
//! live tag (tollgate app tag X T, persisted in state_dir/tags.json)
//!   else [apps.<id>] tag = "..."          (config)
//!   else the first [[tag_rules]] that matches (by category, by risk score below a threshold)
//!   else untagged
//! ```
//! A decision ([`Decision`]) follows from the tag and the mode: `unsanctioned` blocks in
//! enforce mode and is logged as "would block" in monitor mode; everything else is allowed.
//!
//! # Config keys
//!
//! ```toml
//! [apps.dropbox]
//! tag = "unsanctioned"          # sanctioned | unsanctioned | monitored | any custom tag
//! session_control = false       # steer this app's flows into the session proxy
//! risk_score = 3.5              # score override (the catalog applies it)
//! risk_note = "why"
//!
//! [[tag_rules]]                 # first match wins; evaluated after [apps.<id>] tags
//! category = "Generative AI"    # optional: the app's category (case-insensitive)
//! risk_score_below = 4.0        # optional: the app's risk score is below this
//! tag = "unsanctioned"
//! ```
#![forbid(unsafe_code)]

mod export;
mod protected;
mod store;
mod tags;
mod verdict_plan;

pub use export::{BlocklistFormat, export_blocklist};
pub use protected::{ProtectedAddrs, Protection};
pub use store::{TagStore, TagStoreError};
pub use tags::{AppSettings, Decision, Tag, TagBook, TagRule, TagSource};
pub use verdict_plan::{
    AppNumbers, NameAction, NameVerdict, PlanDiff, PlanOptions, Prefix, VerdictPlan,
};

/// Everything that can go wrong in policy evaluation that the caller must report.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("app {0:?} is not in the catalog")]
    UnknownApp(String),
    #[error(
        "tag {0:?} is not valid: use sanctioned, unsanctioned, monitored or a custom tag of a-z, 0-9, - and _ (at most 32)"
    )]
    BadTag(String),
    #[error("tag rule {index}: {message}")]
    BadRule { index: usize, message: String },
    #[error(transparent)]
    Store(#[from] TagStoreError),
}
