//! The catalog's part of the daemon config: `[catalog]` (weights, missing-value rule),
//! `[[custom_apps]]` and the per-app score override of `[apps.<id>]`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::CatalogError;
use crate::model::{Attributes, Group, Property};
use crate::score::{Importance, Weights};

/// `[catalog]`.
///
/// ```toml
/// [catalog]
/// missing_is_worst = false          # unknown values count as 0 when true
/// prior_score = 5.0                 # what unknown facts pull the score toward (0-10)
/// prior_weight = 0.05               # how much they pull, as a share of the whole (0-1)
///
/// [catalog.weights]                 # group importance
/// general = "medium"                # ignored | low | medium | high | "very high"
/// security = "high"
/// compliance = "high"
/// legal = "medium"
///
/// [catalog.weights.properties]      # property importance, keys as in `Property::key`
/// mfa = "very high"
/// popularity = "ignored"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// Count an unknown attribute as its worst value (0) instead of leaving it out.
    #[serde(default)]
    pub missing_is_worst: bool,
    /// The score unknown facts pull toward (default 5, the middle of the scale).
    #[serde(default)]
    pub prior_score: Option<f64>,
    /// How much the prior counts, as a share of the whole weight (default 0.05).
    #[serde(default)]
    pub prior_weight: Option<f64>,
    /// Group and property importance.
    #[serde(default)]
    pub weights: WeightsConfig,
}

/// `[catalog.weights]`: unset keys keep their defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsConfig {
    /// Importance of the General group (default medium).
    pub general: Option<Importance>,
    /// Importance of the Security group (default high).
    pub security: Option<Importance>,
    /// Importance of the Compliance group (default high).
    pub compliance: Option<Importance>,
    /// Importance of the Legal group (default medium).
    pub legal: Option<Importance>,
    /// `[catalog.weights.properties]`: property key -> importance.
    #[serde(default)]
    pub properties: BTreeMap<String, Importance>,
}

impl CatalogConfig {
    /// The weights in force: defaults with the config's settings on top. Fails on an unknown
    /// property key.
    pub fn weights(&self) -> Result<Weights, CatalogError> {
        let mut w = Weights {
            missing_is_worst: self.missing_is_worst,
            ..Weights::default()
        };
        if let Some(v) = self.prior_score {
            if !(v.is_finite() && (0.0..=10.0).contains(&v)) {
                return Err(CatalogError::BadPrior {
                    key: "prior_score",
                    value: v,
                    range: "0 to 10",
                });
            }
            w.prior_score = v;
        }
        if let Some(v) = self.prior_weight {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(CatalogError::BadPrior {
                    key: "prior_weight",
                    value: v,
                    range: "0 to 1",
                });
            }
            w.prior_weight = v;
        }
        for (g, v) in [
            (Group::General, self.weights.general),
            (Group::Security, self.weights.security),
            (Group::Compliance, self.weights.compliance),
            (Group::Legal, self.weights.legal),
        ] {
            if let Some(v) = v {
                w.groups.insert(g, v);
            }
        }
        for (k, v) in &self.weights.properties {
            let p = Property::from_key(k.trim())
                .ok_or_else(|| CatalogError::UnknownProperty { key: k.clone() })?;
            w.properties.insert(p, *v);
        }
        Ok(w)
    }
}

/// One `[[custom_apps]]` entry: an app the admin adds (internal or missing from the catalog).
///
/// ```toml
/// [[custom_apps]]
/// id = "acme-drive"
/// name = "Acme Drive"
/// vendor = "Acme Inc."                               # optional
/// category = "Cloud storage"
/// domains = ["acme-drive.example", "*.acme-drive.example"]
/// ip_ranges = ["192.0.2.0/24"]                       # optional
/// risk_score = 7.5                                   # optional override, 0-10
/// risk_note = "reviewed by security, 2025-03"        # optional
/// [custom_apps.attributes]                           # optional, keys as in `Attributes`
/// hq_country = "US"
/// mfa = true
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomApp {
    /// Lowercase slug, unique across the shipped and custom apps.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Vendor.
    #[serde(default)]
    pub vendor: Option<String>,
    /// A category from [`crate::CATEGORIES`] (case-insensitive).
    pub category: String,
    /// Domain rules (`host` or `*.suffix`). Custom rules win over shipped rules for the same
    /// pattern.
    #[serde(default)]
    pub domains: Vec<String>,
    /// CIDR ranges.
    #[serde(default)]
    pub ip_ranges: Vec<String>,
    /// Risk attributes.
    #[serde(default)]
    pub attributes: Attributes,
    /// Score override, 0–10.
    #[serde(default)]
    pub risk_score: Option<f64>,
    /// Note for the override.
    #[serde(default)]
    pub risk_note: Option<String>,
}

/// The catalog's keys of an `[apps.<id>]` table (`risk_score = 3.5`, `risk_note = "..."`).
/// Other keys of that table belong to other parts of the config, so unknown keys are allowed
/// here; deserialize it from the same table or fill it by hand and pass it to
/// [`crate::Catalog::apply_overrides`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct AppOverride {
    /// Score override, 0–10.
    #[serde(default)]
    pub risk_score: Option<f64>,
    /// Why.
    #[serde(default)]
    pub risk_note: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        catalog: CatalogConfig,
        #[serde(default)]
        custom_apps: Vec<CustomApp>,
    }

    #[test]
    fn parses_documented_example() {
        let doc: Doc = toml::from_str(
            r#"
            [catalog]
            missing_is_worst = true
            [catalog.weights]
            security = "very high"
            legal = "ignored"
            [catalog.weights.properties]
            mfa = "very high"
            popularity = "low"

            [[custom_apps]]
            id = "acme-drive"
            name = "Acme Drive"
            category = "Cloud storage"
            domains = ["acme-drive.example", "*.acme-drive.example"]
            ip_ranges = ["192.0.2.0/24"]
            [custom_apps.attributes]
            hq_country = "US"
            mfa = true
            "#,
        )
        .expect("parses");
        let w = doc.catalog.weights().expect("weights");
        assert!(w.missing_is_worst);
        assert_eq!(w.group(Group::Security), Importance::VeryHigh);
        assert_eq!(w.group(Group::Legal), Importance::Ignored);
        assert_eq!(w.group(Group::General), Importance::Medium);
        assert_eq!(w.property(Property::Mfa), Importance::VeryHigh);
        assert_eq!(w.property(Property::Popularity), Importance::Low);
        assert_eq!(doc.custom_apps.len(), 1);
        assert_eq!(doc.custom_apps[0].attributes.mfa, Some(true));
        assert_eq!(w.prior_score, crate::score::DEFAULT_PRIOR_SCORE);
    }

    #[test]
    fn prior_is_read_and_checked() {
        let doc: Doc =
            toml::from_str("[catalog]\nprior_score = 3.0\nprior_weight = 0.25\n").expect("parses");
        let w = doc.catalog.weights().expect("weights");
        assert_eq!((w.prior_score, w.prior_weight), (3.0, 0.25));
        for bad in [
            "prior_score = 11.0",
            "prior_score = -1.0",
            "prior_score = nan",
            "prior_weight = 1.5",
            "prior_weight = inf",
        ] {
            let doc: Doc = toml::from_str(&format!("[catalog]\n{bad}\n")).expect("parses");
            assert!(
                matches!(doc.catalog.weights(), Err(CatalogError::BadPrior { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<Doc>("[catalog]\nmissing_is_wrost = true\n");
        assert!(e.is_err());
        let e = toml::from_str::<Doc>("[catalog.weights]\nsecurity = \"huge\"\n");
        assert!(e.is_err());
        let e = toml::from_str::<Doc>(
            "[catalog]\n[[custom_apps]]\nid='a'\nname='A'\ncategory='CRM'\ncolour='red'\n",
        );
        assert!(e.is_err());
        let doc: Doc =
            toml::from_str("[catalog.weights.properties]\nmfaa = \"low\"\n").expect("parses");
        match doc.catalog.weights() {
            Err(CatalogError::UnknownProperty { key }) => assert_eq!(key, "mfaa"),
            other => panic!("expected UnknownProperty, got {other:?}"),
        }
    }

    #[test]
    fn override_ignores_other_keys() {
        let o: AppOverride =
            toml::from_str("risk_score = 3.5\nrisk_note = \"ok\"\ntag = \"sanctioned\"\n")
                .expect("parses");
        assert_eq!(o.risk_score, Some(3.5));
        assert_eq!(o.risk_note.as_deref(), Some("ok"));
    }
}
