//! The crate's one error type. Every variant names the app (and the key) that is wrong, so a
//! config error can be shown to the admin as it is.

/// What can go wrong while loading the catalog, merging custom apps or applying overrides.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The embedded catalog data does not parse (an internal bug: it is generated and tested).
    #[error("shipped catalog data is invalid: {0}")]
    BuiltinData(#[source] serde_json::Error),

    /// A catalog data file given at run time (e.g. a synced bundle) does not parse.
    #[error("catalog data is invalid: {0}")]
    Data(#[source] serde_json::Error),

    /// Catalog data over one of the limits ([`crate::MAX_DATA_BYTES`], [`crate::MAX_APPS`],
    /// [`crate::MAX_DOMAIN_RULES`]): refused before it can take the memory.
    #[error("catalog data is too large: {what} {got} exceeds the limit of {limit}")]
    TooLarge {
        /// What was counted.
        what: &'static str,
        /// How many.
        got: usize,
        /// The limit.
        limit: usize,
    },

    /// A display field (name, vendor) holds control characters or is too long: a terminal
    /// would run the escape sequences when `catalog show` prints it.
    #[error("app `{id}`: `{key}` {reason}")]
    BadText {
        /// The app.
        id: String,
        /// `name` or `vendor`.
        key: &'static str,
        /// What is wrong.
        reason: &'static str,
    },

    /// Two apps share an id.
    #[error("app `{id}`: duplicate id (an app with this id already exists{})", if *.builtin { " in the shipped catalog" } else { "" })]
    DuplicateId {
        /// The repeated id.
        id: String,
        /// Whether the first one is a shipped app (custom apps cannot reuse shipped ids).
        builtin: bool,
    },

    /// An id that is not a lowercase slug (`a-z`, `0-9`, `-`, not at either end).
    #[error("app `{id}`: bad id (use a lowercase slug such as `acme-drive`)")]
    BadId {
        /// The id as written.
        id: String,
    },

    /// A required text field is empty.
    #[error("app `{id}`: `{key}` must not be empty")]
    Empty {
        /// The app.
        id: String,
        /// The key that is empty.
        key: &'static str,
    },

    /// A category that is not in the catalog's category list.
    #[error("app `{id}`: unknown category `{category}` (known: {})", crate::categories::CATEGORIES.join(", "))]
    UnknownCategory {
        /// The app.
        id: String,
        /// The category as written.
        category: String,
    },

    /// A domain rule that is neither a host name nor `*.` followed by a host name.
    #[error("app `{id}`: bad domain pattern `{pattern}`: {reason}")]
    BadDomain {
        /// The app.
        id: String,
        /// The rule as written.
        pattern: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The same domain rule is claimed by two custom apps (or twice in the shipped data).
    #[error("app `{id}`: domain rule `{pattern}` is already used by app `{other}`")]
    DuplicateDomain {
        /// The app that repeats the rule.
        id: String,
        /// The rule.
        pattern: String,
        /// The app that had it first.
        other: String,
    },

    /// The same IP range is claimed by two custom apps (or twice in the shipped data).
    #[error("app `{id}`: IP range `{range}` is already used by app `{other}`")]
    DuplicateIpRange {
        /// The app that repeats the range.
        id: String,
        /// The range (CIDR).
        range: String,
        /// The app that had it first.
        other: String,
    },

    /// An IP range that is not a CIDR (`192.0.2.0/24`, `2001:db8::/32`).
    #[error("app `{id}`: bad IP range `{range}` (expected CIDR such as 192.0.2.0/24)")]
    BadIpRange {
        /// The app.
        id: String,
        /// The range as written.
        range: String,
    },

    /// An IP range so wide it would claim addresses of many other services.
    #[error(
        "app `{id}`: IP range `{range}` is wider than /{widest} and would claim other services' addresses"
    )]
    IpRangeTooWide {
        /// The app.
        id: String,
        /// The range.
        range: String,
        /// The shortest prefix allowed for its address family.
        widest: u8,
    },

    /// An override or attribute names an app that is not in the catalog.
    #[error("app `{id}`: no such app in the catalog")]
    UnknownApp {
        /// The id as written.
        id: String,
    },

    /// A risk score (override) outside 0..=10 or not a number.
    #[error("app `{id}`: risk score {score} is out of range (0 to 10)")]
    ScoreOutOfRange {
        /// The app.
        id: String,
        /// The score as given.
        score: f64,
    },

    /// `[catalog] prior_score` / `prior_weight` out of range or not a number.
    #[error("[catalog]: `{key}` = {value} is out of range ({range})")]
    BadPrior {
        /// `prior_score` or `prior_weight`.
        key: &'static str,
        /// The value given.
        value: f64,
        /// The allowed range.
        range: &'static str,
    },
    /// `[catalog.weights.properties]` names a property that does not exist.
    #[error("[catalog.weights.properties]: unknown property `{key}` (known: {})", crate::model::Property::ALL.iter().map(|p| p.key()).collect::<Vec<_>>().join(", "))]
    UnknownProperty {
        /// The key as written.
        key: String,
    },

    /// A risk attribute value that makes no sense (e.g. a founding year in the future).
    #[error("app `{id}`: attribute `{key}`: {reason}")]
    BadAttribute {
        /// The app.
        id: String,
        /// The attribute key.
        key: &'static str,
        /// Why it was refused.
        reason: String,
    },
}
