//! The normalised activity record: what every source (discovery, the session proxy, connectors,
//! the audit trail) writes, and what policies, the activity log and the sinks read.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What the user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivityType {
    AppUsed,
    Download,
    Upload,
    Blocked,
    Login,
    FailedLogin,
    AdminAction,
    Share,
    Delete,
    Other,
}

impl ActivityType {
    /// Every type, in the order of [`ActivityType::index`].
    pub const ALL: [ActivityType; 10] = [
        ActivityType::AppUsed,
        ActivityType::Download,
        ActivityType::Upload,
        ActivityType::Blocked,
        ActivityType::Login,
        ActivityType::FailedLogin,
        ActivityType::AdminAction,
        ActivityType::Share,
        ActivityType::Delete,
        ActivityType::Other,
    ];

    /// A dense index (for per-type tables).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The config and JSON spelling (`app_used`, `failed_login`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityType::AppUsed => "app_used",
            ActivityType::Download => "download",
            ActivityType::Upload => "upload",
            ActivityType::Blocked => "blocked",
            ActivityType::Login => "login",
            ActivityType::FailedLogin => "failed_login",
            ActivityType::AdminAction => "admin_action",
            ActivityType::Share => "share",
            ActivityType::Delete => "delete",
            ActivityType::Other => "other",
        }
    }

    /// The CEF event class id, in the style of Defender for Cloud Apps' SIEM agent.
    pub fn cef_class(self) -> &'static str {
        match self {
            ActivityType::AppUsed => "EVENT_CATEGORY_APP_USED",
            ActivityType::Download => "EVENT_CATEGORY_DOWNLOAD_FILE",
            ActivityType::Upload => "EVENT_CATEGORY_UPLOAD_FILE",
            ActivityType::Blocked => "EVENT_CATEGORY_BLOCKED",
            ActivityType::Login => "EVENT_CATEGORY_LOGIN",
            ActivityType::FailedLogin => "EVENT_CATEGORY_FAILED_LOGIN",
            ActivityType::AdminAction => "EVENT_CATEGORY_ADMIN_ACTION",
            ActivityType::Share => "EVENT_CATEGORY_SHARE_FILE",
            ActivityType::Delete => "EVENT_CATEGORY_DELETE_FILE",
            ActivityType::Other => "EVENT_CATEGORY_OTHER",
        }
    }

    /// A human name (`Download`, `Failed login`).
    pub fn label(self) -> &'static str {
        match self {
            ActivityType::AppUsed => "App used",
            ActivityType::Download => "Download",
            ActivityType::Upload => "Upload",
            ActivityType::Blocked => "Blocked",
            ActivityType::Login => "Log on",
            ActivityType::FailedLogin => "Failed log on",
            ActivityType::AdminAction => "Administrative action",
            ActivityType::Share => "Share",
            ActivityType::Delete => "Delete",
            ActivityType::Other => "Other",
        }
    }
}

impl fmt::Display for ActivityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the activity ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    Blocked,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Blocked => "blocked",
        }
    }
}

/// Who saw the activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The live flow table (per user, per app, per interval).
    Discovery,
    /// The session proxy (each transfer and block).
    Proxy,
    /// A SaaS admin API.
    Connector,
    /// The gateway's own audit trail (admin changes).
    Audit,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Discovery => "discovery",
            Source::Proxy => "proxy",
            Source::Connector => "connector",
            Source::Audit => "audit",
        }
    }
}

/// One activity. Every string in it may come from the network (user names, file names, URLs,
/// hosts): the formatters escape them, never the producers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    /// Unique per producer (the gateway numbers its records); `externalId` in CEF.
    pub id: u64,
    pub time: DateTime<Utc>,
    /// The user (from the user map, the proxy's identity, or a connector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The device's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// The device's name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// ISO country code of `ip` (from a GeoIP database, when one is configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// The catalog's app id.
    pub app: String,
    pub activity: ActivityType,
    /// File name or URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Of `bytes`, those the user sent, where the source tells them apart (discovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_up: Option<u64>,
    pub result: Outcome,
    pub source: Source,
    /// The policy that decided it (a session policy of the proxy, ...), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The gateway that saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The vendor's own name for what happened (`user.session.start`, `repo.destroy`,
    /// `FileDownloaded`), for records from a connector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The name of the connector (`[[connectors]] name`) that brought the record in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
    /// The vendor's event id (Okta `uuid`, GitHub `_document_id`, M365 `Id`, Slack `id`, Box
    /// `event_id`): what makes a connector's record unique across pages, overlaps and restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<String>,
}

impl Activity {
    /// A record with the required fields; the rest empty.
    pub fn new(
        id: u64,
        time: DateTime<Utc>,
        app: impl Into<String>,
        activity: ActivityType,
        source: Source,
    ) -> Activity {
        Activity {
            id,
            time,
            user: None,
            ip: None,
            device: None,
            country: None,
            app: app.into(),
            activity,
            object: None,
            bytes: None,
            bytes_up: None,
            result: Outcome::Success,
            source,
            policy: None,
            gateway: None,
            action: None,
            connector: None,
            vendor_id: None,
        }
    }

    /// Who did it, for alert entities and messages: the user, else the device's address.
    pub fn actor(&self) -> String {
        match (&self.user, self.ip) {
            (Some(u), _) => u.clone(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => "-".into(),
        }
    }
}
