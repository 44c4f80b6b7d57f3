//! Tags, the config that sets them, and the decision a tag makes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tollgate_catalog::Catalog;

use crate::PolicyError;

/// An app's tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tag {
    Sanctioned,
    Unsanctioned,
    Monitored,
    /// An admin's own tag (`a-z0-9-_`, at most 32): allowed, reported.
    Custom(String),
}

impl Tag {
    pub fn as_str(&self) -> &str {
        match self {
            Tag::Sanctioned => "sanctioned",
            Tag::Unsanctioned => "unsanctioned",
            Tag::Monitored => "monitored",
            Tag::Custom(s) => s,
        }
    }
}

impl FromStr for Tag {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Tag, PolicyError> {
        let lower = s.trim().to_ascii_lowercase();
        Ok(match lower.as_str() {
            "sanctioned" => Tag::Sanctioned,
            "unsanctioned" => Tag::Unsanctioned,
            "monitored" => Tag::Monitored,
            other
                if !other.is_empty()
                    && other.len() <= 32
                    && other.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    }) =>
            {
                Tag::Custom(other.to_string())
            }
            _ => return Err(PolicyError::BadTag(s.to_string())),
        })
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Tag {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tag, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One `[apps.<id>]` table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    #[serde(default)]
    pub tag: Option<Tag>,
    /// Steer this app's flows into the session proxy.
    #[serde(default)]
    pub session_control: bool,
    /// Risk score override, 0-10 (applied by the catalog).
    #[serde(default)]
    pub risk_score: Option<f64>,
    #[serde(default)]
    pub risk_note: Option<String>,
}

/// One `[[tag_rules]]` entry: tags every app that meets all of its conditions.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagRule {
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub risk_score_below: Option<f64>,
    pub tag: Tag,
}

impl TagRule {
    fn matches(&self, category: &str, risk: Option<f64>) -> bool {
        let cat_ok = self
            .category
            .as_deref()
            .is_none_or(|c| c.eq_ignore_ascii_case(category));
        // An app without a score does not meet a threshold: unknown is not "below".
        let risk_ok = self
            .risk_score_below
            .is_none_or(|t| risk.is_some_and(|r| r < t));
        cat_ok && risk_ok
    }
}

/// Where an app's effective tag came from (shown in `tollgate apps` and audit lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TagSource {
    Live,
    Config,
    Rule,
}

/// What happens to a flow of an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    /// Enforce mode, unsanctioned app.
    Block,
    /// Monitor mode, unsanctioned app: logged, not blocked.
    WouldBlock,
}

/// The effective tags of all apps: config tags, rules and live tags combined. Built once per
/// config or live change and shared as an immutable snapshot.
#[derive(Debug, Clone, Default)]
pub struct TagBook {
    config: BTreeMap<String, Tag>,
    rules: Vec<TagRule>,
    live: BTreeMap<String, Tag>,
    session_control: BTreeMap<String, bool>,
}

impl TagBook {
    /// Checks app ids against the catalog and rule categories against its category list.
    pub fn new(
        catalog: &Catalog,
        apps: &BTreeMap<String, AppSettings>,
        rules: Vec<TagRule>,
        live: BTreeMap<String, Tag>,
    ) -> Result<TagBook, PolicyError> {
        for id in apps.keys() {
            if catalog.app(id).is_none() {
                return Err(PolicyError::UnknownApp(id.clone()));
            }
        }
        for (index, rule) in rules.iter().enumerate() {
            if let Some(c) = &rule.category
                && tollgate_catalog::categories::canonical(c).is_none()
            {
                return Err(PolicyError::BadRule {
                    index,
                    message: format!("unknown category {c:?}"),
                });
            }
            if let Some(t) = rule.risk_score_below
                && !(t.is_finite() && (0.0..=10.0).contains(&t))
            {
                return Err(PolicyError::BadRule {
                    index,
                    message: format!("risk_score_below {t} is not within 0-10"),
                });
            }
            if rule.category.is_none() && rule.risk_score_below.is_none() {
                return Err(PolicyError::BadRule {
                    index,
                    message: "needs category or risk_score_below".into(),
                });
            }
        }
        Ok(TagBook {
            config: apps
                .iter()
                .filter_map(|(id, s)| s.tag.clone().map(|t| (id.clone(), t)))
                .collect(),
            rules,
            live,
            session_control: apps
                .iter()
                .map(|(id, s)| (id.clone(), s.session_control))
                .collect(),
        })
    }

    /// The app's tag and where it came from.
    pub fn tag(&self, catalog: &Catalog, app_id: &str) -> Option<(Tag, TagSource)> {
        if let Some(t) = self.live.get(app_id) {
            return Some((t.clone(), TagSource::Live));
        }
        if let Some(t) = self.config.get(app_id) {
            return Some((t.clone(), TagSource::Config));
        }
        let app = catalog.app(app_id)?;
        let risk = catalog.risk_score(app_id);
        self.rules
            .iter()
            .find(|r| r.matches(&app.category, risk))
            .map(|r| (r.tag.clone(), TagSource::Rule))
    }

    /// The decision for a flow of `app_id` in the given mode.
    pub fn decide(&self, catalog: &Catalog, app_id: &str, enforce: bool) -> Decision {
        match self.tag(catalog, app_id) {
            Some((Tag::Unsanctioned, _)) if enforce => Decision::Block,
            Some((Tag::Unsanctioned, _)) => Decision::WouldBlock,
            _ => Decision::Allow,
        }
    }

    /// Whether the app's flows go through the session proxy.
    pub fn session_control(&self, app_id: &str) -> bool {
        self.session_control.get(app_id).copied().unwrap_or(false)
    }

    /// Every app whose effective tag is unsanctioned, in id order.
    pub fn unsanctioned<'c>(&self, catalog: &'c Catalog) -> Vec<&'c tollgate_catalog::App> {
        let mut out: Vec<_> = catalog
            .apps()
            .filter(|a| matches!(self.tag(catalog, &a.id), Some((Tag::Unsanctioned, _))))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Replaces the live tags (after `tollgate app tag`).
    pub fn with_live(&self, live: BTreeMap<String, Tag>) -> TagBook {
        TagBook {
            live,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        // Two custom cloud storage apps, so the test does not lean on the shipped data.
        let custom: Vec<tollgate_catalog::CustomApp> = ["acme-drive", "acme-box"]
            .iter()
            .map(|id| {
                toml::from_str(&format!(
                    "id = \"{id}\"\nname = \"{id}\"\ncategory = \"Cloud storage\"\ndomains = [\"{id}.example\"]\n"
                ))
                .unwrap()
            })
            .collect();
        Catalog::from_config(&Default::default(), &custom, chrono::Utc::now())
            .expect("catalog with custom apps")
    }

    #[test]
    fn tags_parse_and_reject_junk() {
        assert_eq!("Unsanctioned".parse::<Tag>().unwrap(), Tag::Unsanctioned);
        assert_eq!(
            "team-ok".parse::<Tag>().unwrap(),
            Tag::Custom("team-ok".into())
        );
        assert!("".parse::<Tag>().is_err());
        assert!("no spaces".parse::<Tag>().is_err());
        assert!("x".repeat(33).parse::<Tag>().is_err());
    }

    #[test]
    fn live_beats_config_beats_rule() {
        let cat = catalog();
        let mut apps = BTreeMap::new();
        apps.insert(
            "acme-drive".to_string(),
            AppSettings {
                tag: Some(Tag::Sanctioned),
                ..Default::default()
            },
        );
        let rules = vec![TagRule {
            category: Some("cloud storage".into()),
            risk_score_below: None,
            tag: Tag::Unsanctioned,
        }];
        let book = TagBook::new(&cat, &apps, rules, BTreeMap::new()).unwrap();
        assert_eq!(
            book.tag(&cat, "acme-drive"),
            Some((Tag::Sanctioned, TagSource::Config))
        );
        assert_eq!(book.decide(&cat, "acme-drive", true), Decision::Allow);
        // Another cloud storage app falls to the rule.
        let other = cat.app("acme-box").unwrap();
        assert_eq!(
            book.tag(&cat, &other.id),
            Some((Tag::Unsanctioned, TagSource::Rule))
        );
        assert_eq!(book.decide(&cat, &other.id, true), Decision::Block);
        assert_eq!(book.decide(&cat, &other.id, false), Decision::WouldBlock);
        let mut live = BTreeMap::new();
        live.insert("acme-drive".to_string(), Tag::Unsanctioned);
        let book = book.with_live(live);
        assert_eq!(
            book.tag(&cat, "acme-drive"),
            Some((Tag::Unsanctioned, TagSource::Live))
        );
    }

    #[test]
    fn risk_threshold_rule_skips_unscored_apps() {
        let rule = TagRule {
            category: None,
            risk_score_below: Some(5.0),
            tag: Tag::Unsanctioned,
        };
        assert!(rule.matches("Webmail", Some(4.9)));
        assert!(!rule.matches("Webmail", Some(5.0)));
        assert!(!rule.matches("Webmail", None));
    }

    #[test]
    fn config_errors_are_specific() {
        let cat = catalog();
        let mut apps = BTreeMap::new();
        apps.insert("no-such-app-xyz".to_string(), AppSettings::default());
        let err = TagBook::new(&cat, &apps, vec![], BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("no-such-app-xyz"));
        let rules = vec![TagRule {
            category: Some("Underwater basket weaving".into()),
            risk_score_below: None,
            tag: Tag::Monitored,
        }];
        let err = TagBook::new(&cat, &BTreeMap::new(), rules, BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("Underwater"), "{err}");
    }

    #[test]
    fn app_settings_deserialize_from_toml() {
        #[derive(Deserialize)]
        struct Doc {
            apps: BTreeMap<String, AppSettings>,
        }
        let d: Doc =
            toml::from_str("[apps.dropbox]\ntag = \"unsanctioned\"\nsession_control = true\n")
                .unwrap();
        assert_eq!(d.apps["dropbox"].tag, Some(Tag::Unsanctioned));
        assert!(d.apps["dropbox"].session_control);
        assert!(toml::from_str::<Doc>("[apps.dropbox]\ntag = \"bad tag\"\n").is_err());
        assert!(toml::from_str::<Doc>("[apps.dropbox]\ncolour = 1\n").is_err());
    }
}
