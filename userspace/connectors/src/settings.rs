//! `[[connectors]]`: what a connector is told (kind, name, base_url, poll interval, the
//! secret, and the few keys a vendor needs to name its tenant), checked once.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::ConnectorError;

/// The longest token a connector reads (a token file that is not a token is refused).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Default `poll_interval_secs`.
pub const DEFAULT_POLL_INTERVAL_SECS: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Okta,
    Github,
    M365,
    Slack,
    Box,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Okta, Kind::Github, Kind::M365, Kind::Slack, Kind::Box];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Okta => "okta",
            Kind::Github => "github",
            Kind::M365 => "m365",
            Kind::Slack => "slack",
            Kind::Box => "box",
        }
    }

    /// The vendor's API root; Okta has none (each org has its own host).
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            Kind::Okta => None,
            Kind::Github => Some("https://api.github.com"),
            Kind::M365 => Some("https://manage.office.com"),
            Kind::Slack => Some("https://api.slack.com"),
            Kind::Box => Some("https://api.box.com"),
        }
    }

    /// The catalog's app id for the records (M365 refines it per workload).
    pub fn app(self) -> &'static str {
        match self {
            Kind::Okta => "okta",
            Kind::Github => "github",
            Kind::M365 => "microsoft-365",
            Kind::Slack => "slack",
            Kind::Box => "box",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who runs a connector: the hub (the default), or the gateways that receive the bundle, for
/// an app only they can reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOn {
    #[default]
    Hub,
    Gateway,
}

impl RunOn {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOn::Hub => "hub",
            RunOn::Gateway => "gateway",
        }
    }
}

/// One `[[connectors]]` table as written (the hub's config or a bundle).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    pub kind: Option<Kind>,
    pub name: Option<String>,
    pub base_url: Option<String>,
    pub poll_interval_secs: Option<u64>,
    /// The API token inline. Never logged, never in `--json`, redacted in `Debug`.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// A file holding the token, read again before every request (rotation needs no restart).
    pub token_file: Option<PathBuf>,
    /// GitHub: the enterprise slug (`/enterprises/{enterprise}/audit-log`).
    pub enterprise: Option<String>,
    /// GitHub: the organization (`/orgs/{org}/audit-log`), instead of `enterprise`.
    pub org: Option<String>,
    /// Microsoft 365: the tenant id (GUID) in the API's path and `PublisherIdentifier`.
    pub tenant_id: Option<String>,
    /// Microsoft 365: content types (default: the five documented ones).
    pub content_types: Option<Vec<String>>,
    /// Microsoft 365: the Entra app's client id, for the client-credentials flow (instead of
    /// `token`/`token_file`).
    pub client_id: Option<String>,
    /// Microsoft 365: the Entra app's client secret. Never logged, never in `--json`.
    #[serde(default, skip_serializing)]
    pub client_secret: Option<String>,
    /// Microsoft 365: a file holding the client secret, read again at every token request.
    pub client_secret_file: Option<PathBuf>,
    /// Microsoft 365: the token endpoint (default
    /// `https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token`).
    pub token_url: Option<String>,
    /// `hub` (default) or `gateway`.
    pub run_on: Option<RunOn>,
}

impl std::fmt::Debug for ConnectorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorConfig")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("poll_interval_secs", &self.poll_interval_secs)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("enterprise", &self.enterprise)
            .field("org", &self.org)
            .field("tenant_id", &self.tenant_id)
            .field("content_types", &self.content_types)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .field("token_url", &self.token_url)
            .field("run_on", &self.run_on)
            .finish()
    }
}

/// Where the secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Token(String),
    TokenFile(PathBuf),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Token(_) => f.write_str("Token(<redacted>)"),
            Secret::TokenFile(p) => write!(f, "TokenFile({})", p.display()),
        }
    }
}

impl Secret {
    /// The token now (a file is read every time). Refuses an empty token, and one with a
    /// control character (it would end up in a header).
    pub fn read(&self) -> Result<String, ConnectorError> {
        let text = match self {
            Secret::Token(t) => t.clone(),
            Secret::TokenFile(path) => {
                let meta = std::fs::metadata(path).map_err(|e| {
                    ConnectorError::Config(format!("token_file {}: {e}", path.display()))
                })?;
                if meta.len() > MAX_TOKEN_BYTES as u64 {
                    return Err(ConnectorError::Config(format!(
                        "token_file {}: larger than {MAX_TOKEN_BYTES} bytes",
                        path.display()
                    )));
                }
                std::fs::read_to_string(path).map_err(|e| {
                    ConnectorError::Config(format!("token_file {}: {e}", path.display()))
                })?
            }
        };
        let token = text.trim();
        if token.is_empty() {
            return Err(ConnectorError::Config("the token is empty".into()));
        }
        if token.len() > MAX_TOKEN_BYTES || token.chars().any(|c| c.is_control()) {
            return Err(ConnectorError::Config(
                "the token has a control character or is too long".into(),
            ));
        }
        Ok(token.to_string())
    }
}

/// A connector's settings, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kind: Kind,
    pub name: String,
    pub base_url: Url,
    pub poll_interval: Duration,
    pub secret: Secret,
    /// GitHub: `enterprises/SLUG` or `orgs/ORG`.
    pub github_scope: Option<String>,
    pub tenant_id: Option<String>,
    pub content_types: Vec<String>,
    /// The client-credentials flow: `secret` is then the client secret, exchanged at
    /// `token_url` for short-lived access tokens.
    pub oauth: Option<OAuth>,
    pub run_on: RunOn,
}

/// An OAuth 2.0 client-credentials grant (Microsoft Entra for the Management Activity API).
#[derive(Debug, Clone)]
pub struct OAuth {
    pub client_id: String,
    pub token_url: Url,
    /// `{base_url origin}/.default` (`https://manage.office.com/.default`).
    pub scope: String,
}

/// The documented Management Activity content types.
pub const M365_CONTENT_TYPES: [&str; 5] = [
    "Audit.AzureActiveDirectory",
    "Audit.Exchange",
    "Audit.SharePoint",
    "Audit.General",
    "DLP.All",
];

fn slug_ok(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Settings {
    /// Checks one `[[connectors]]` table; the error names the key.
    pub fn from_config(c: &ConnectorConfig) -> Result<Settings, String> {
        let kind = c
            .kind
            .ok_or("kind: missing (okta, github, m365, slack, box)")?;
        let name = c.name.clone().ok_or("name: missing")?;
        if !slug_ok(&name, 64) {
            return Err(format!(
                "name: {name:?} must be 1-64 letters, digits, '-', '_' or '.'"
            ));
        }
        let base = match (&c.base_url, kind.default_base_url()) {
            (Some(b), _) => b.clone(),
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                return Err(format!(
                    "base_url: {kind} has no default (e.g. https://example.okta.com)"
                ));
            }
        };
        let mut base_url = Url::parse(&base).map_err(|e| format!("base_url: {base:?}: {e}"))?;
        if !base_url.path().ends_with('/') {
            // Paths are joined relative to it: https://host/prefix means https://host/prefix/.
            let path = format!("{}/", base_url.path());
            base_url.set_path(&path);
        }
        if base_url.query().is_some() || base_url.fragment().is_some() {
            return Err(format!(
                "base_url: {base:?} must not carry a query or fragment"
            ));
        }
        if base_url.scheme() != "https" || base_url.host_str().is_none() {
            return Err(format!("base_url: {base:?} is not an https://HOST URL"));
        }
        if !base_url.username().is_empty() || base_url.password().is_some() {
            return Err("base_url: must not carry credentials (use token or token_file)".into());
        }
        let secs = c.poll_interval_secs.unwrap_or(DEFAULT_POLL_INTERVAL_SECS);
        if secs == 0 || secs > 86_400 {
            return Err("poll_interval_secs: must be 1..=86400".into());
        }
        let oauth_keys = c.client_id.is_some()
            || c.client_secret.is_some()
            || c.client_secret_file.is_some()
            || c.token_url.is_some();
        if oauth_keys && kind != Kind::M365 {
            return Err(
                "client_id, client_secret, client_secret_file, token_url: only for kind = \"m365\""
                    .into(),
            );
        }
        let mut oauth = None;
        let secret = if oauth_keys {
            if c.token.is_some() || c.token_file.is_some() {
                return Err("token, client_id: set a token or client credentials, not both".into());
            }
            let client_id = c
                .client_id
                .clone()
                .filter(|id| slug_ok(id, 128))
                .ok_or("client_id: missing or not an id")?;
            let secret = match (&c.client_secret, &c.client_secret_file) {
                (Some(_), Some(_)) => {
                    return Err("client_secret, client_secret_file: set one, not both".into());
                }
                (Some(t), None) if !t.trim().is_empty() => Secret::Token(t.trim().to_string()),
                (None, Some(p)) => Secret::TokenFile(p.clone()),
                _ => return Err("client_secret or client_secret_file: missing".into()),
            };
            let tenant = c.tenant_id.clone().unwrap_or_default();
            let text = c.token_url.clone().unwrap_or_else(|| {
                format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token")
            });
            let token_url = Url::parse(&text).map_err(|e| format!("token_url: {text:?}: {e}"))?;
            if token_url.scheme() != "https" || token_url.host_str().is_none() {
                return Err(format!("token_url: {text:?} is not an https:// URL"));
            }
            oauth = Some(OAuth {
                client_id,
                token_url,
                scope: format!("{}/.default", base_url.origin().ascii_serialization()),
            });
            secret
        } else {
            match (&c.token, &c.token_file) {
                (Some(_), Some(_)) => return Err("token, token_file: set one, not both".into()),
                (Some(t), None) if !t.trim().is_empty() => Secret::Token(t.trim().to_string()),
                (Some(_), None) => return Err("token: empty".into()),
                (None, Some(p)) => Secret::TokenFile(p.clone()),
                (None, None) => return Err("token or token_file: missing".into()),
            }
        };
        let github_scope = match (kind, &c.enterprise, &c.org) {
            (Kind::Github, Some(e), None) if slug_ok(e, 100) => Some(format!("enterprises/{e}")),
            (Kind::Github, None, Some(o)) if slug_ok(o, 100) => Some(format!("orgs/{o}")),
            (Kind::Github, _, _) => {
                return Err("enterprise, org: github needs exactly one (a slug)".into());
            }
            (_, None, None) => None,
            (_, _, _) => return Err("enterprise, org: only for kind = \"github\"".into()),
        };
        let tenant_id = match (kind, &c.tenant_id) {
            (Kind::M365, Some(t)) if slug_ok(t, 64) => Some(t.clone()),
            (Kind::M365, _) => return Err("tenant_id: m365 needs the tenant id (a GUID)".into()),
            (_, None) => None,
            (_, Some(_)) => return Err("tenant_id: only for kind = \"m365\"".into()),
        };
        let content_types = match (kind, &c.content_types) {
            (Kind::M365, None) => M365_CONTENT_TYPES.iter().map(|s| s.to_string()).collect(),
            (Kind::M365, Some(list)) => {
                if list.is_empty() {
                    return Err("content_types: empty".into());
                }
                for t in list {
                    if !M365_CONTENT_TYPES.contains(&t.as_str()) {
                        return Err(format!(
                            "content_types: {t:?} is not one of {}",
                            M365_CONTENT_TYPES.join(", ")
                        ));
                    }
                }
                list.clone()
            }
            (_, None) => Vec::new(),
            (_, Some(_)) => return Err("content_types: only for kind = \"m365\"".into()),
        };
        Ok(Settings {
            kind,
            name,
            base_url,
            poll_interval: Duration::from_secs(secs),
            secret,
            github_scope,
            tenant_id,
            content_types,
            oauth,
            run_on: c.run_on.unwrap_or_default(),
        })
    }

    /// Checks a `[[connectors]]` table of a published bundle. A bundle goes to every gateway
    /// of its site (and is kept in the hub's database), so it may not carry a secret: only
    /// `token_file` / `client_secret_file`, a path on the box that runs the connector.
    pub fn from_bundle(c: &ConnectorConfig) -> Result<Settings, String> {
        if c.token.is_some() || c.client_secret.is_some() {
            return Err(
                "token, client_secret: a bundle may not carry a secret (it reaches every gateway \
                 of its site); name a token_file or client_secret_file on the box that runs it"
                    .into(),
            );
        }
        Settings::from_config(c)
    }

    /// `scheme://host:port` of `base_url`: the only place the token is sent.
    pub fn origin(&self) -> String {
        self.base_url.origin().ascii_serialization()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: Kind) -> ConnectorConfig {
        ConnectorConfig {
            kind: Some(kind),
            name: Some("c1".into()),
            token: Some("s3cret-token".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_refusals() {
        let s = Settings::from_config(&cfg(Kind::Box)).unwrap();
        assert_eq!(s.base_url.as_str(), "https://api.box.com/");
        assert_eq!(s.poll_interval, Duration::from_secs(60));
        assert!(
            Settings::from_config(&cfg(Kind::Okta))
                .unwrap_err()
                .contains("base_url")
        );
        assert!(
            Settings::from_config(&cfg(Kind::Github))
                .unwrap_err()
                .contains("enterprise")
        );
        assert!(
            Settings::from_config(&cfg(Kind::M365))
                .unwrap_err()
                .contains("tenant_id")
        );
        let mut c = cfg(Kind::Slack);
        c.base_url = Some("http://api.slack.com".into());
        assert!(Settings::from_config(&c).unwrap_err().contains("https"));
        c.base_url = Some("https://user:pw@api.slack.com".into());
        assert!(
            Settings::from_config(&c)
                .unwrap_err()
                .contains("credentials")
        );
        let mut c = cfg(Kind::Slack);
        c.token_file = Some("/x".into());
        assert!(Settings::from_config(&c).is_err());
        c.name = Some("../etc".into());
        assert!(Settings::from_config(&c).is_err());
    }

    #[test]
    fn secrets_are_redacted_and_never_serialized() {
        let c = cfg(Kind::Slack);
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!serde_json::to_string(&c).unwrap().contains("s3cret"));
        let s = Settings::from_config(&c).unwrap();
        assert!(!format!("{s:?}").contains("s3cret"), "{s:?}");
        assert_eq!(s.secret.read().unwrap(), "s3cret-token");
        assert!(Secret::Token("a\r\nX-Evil: 1".into()).read().is_err());
    }
}
