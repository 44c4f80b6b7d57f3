//! The risk score: each known property scored 0–10, averaged within its group with the
//! property weights, the group averages averaged with the group weights. 10 is the most
//! trustworthy (Defender's convention); [`RiskLevel`] turns a score into low/medium/high risk.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{Attributes, Group, Property};

/// How much a property or group counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Importance {
    /// Not counted at all (weight 0).
    #[serde(rename = "ignored")]
    Ignored,
    /// Weight 1.
    #[serde(rename = "low")]
    Low,
    /// Weight 2.
    #[serde(rename = "medium")]
    Medium,
    /// Weight 4.
    #[serde(rename = "high")]
    High,
    /// Weight 8.
    #[serde(rename = "very high", alias = "very_high", alias = "very-high")]
    VeryHigh,
}

impl Importance {
    /// The multiplier: ignored 0, low 1, medium 2, high 4, very high 8 (each step doubles).
    pub fn weight(self) -> f64 {
        match self {
            Importance::Ignored => 0.0,
            Importance::Low => 1.0,
            Importance::Medium => 2.0,
            Importance::High => 4.0,
            Importance::VeryHigh => 8.0,
        }
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Importance::Ignored => "ignored",
            Importance::Low => "low",
            Importance::Medium => "medium",
            Importance::High => "high",
            Importance::VeryHigh => "very high",
        }
    }
}

impl fmt::Display for Importance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Default importance of a group.
pub fn default_group_importance(g: Group) -> Importance {
    match g {
        Group::General => Importance::Medium,
        Group::Security => Importance::High,
        Group::Compliance => Importance::High,
        Group::Legal => Importance::Medium,
    }
}

/// Default importance of a property.
pub fn default_property_importance(p: Property) -> Importance {
    use Property as P;
    match p {
        P::Mfa | P::EncryptionAtRest | P::TrustedCertificate | P::TlsVersion | P::LatestBreach => {
            Importance::High
        }
        P::Iso27001 | P::Soc2 | P::Gdpr | P::DataOwnership => Importance::High,
        P::HostingCompany | P::DataCenters | P::Holding | P::FileSharing | P::Upload => {
            Importance::Low
        }
        _ => Importance::Medium,
    }
}

/// The weights in force: one importance per group and per property, plus the missing-value
/// rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// Importance per group.
    pub groups: BTreeMap<Group, Importance>,
    /// Importance per property.
    pub properties: BTreeMap<Property, Importance>,
    /// When true an unknown value counts as 0 (the worst); when false it is left out and the
    /// known values of the group carry its weight.
    pub missing_is_worst: bool,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            groups: Group::ALL
                .iter()
                .map(|g| (*g, default_group_importance(*g)))
                .collect(),
            properties: Property::ALL
                .iter()
                .map(|p| (*p, default_property_importance(*p)))
                .collect(),
            missing_is_worst: false,
        }
    }
}

impl Weights {
    /// Importance of a group.
    pub fn group(&self, g: Group) -> Importance {
        self.groups
            .get(&g)
            .copied()
            .unwrap_or_else(|| default_group_importance(g))
    }

    /// Importance of a property.
    pub fn property(&self, p: Property) -> Importance {
        self.properties
            .get(&p)
            .copied()
            .unwrap_or_else(|| default_property_importance(p))
    }
}

/// Risk level bands over the score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RiskLevel {
    /// Score below 4.
    High,
    /// Score 4 to below 8.
    Medium,
    /// Score 8 and above.
    Low,
    /// No score (nothing known about the app).
    Unknown,
}

impl RiskLevel {
    /// The band of a score (`None`: unknown).
    pub fn of(score: Option<f64>) -> RiskLevel {
        match score {
            Some(s) if s < 4.0 => RiskLevel::High,
            Some(s) if s < 8.0 => RiskLevel::Medium,
            Some(_) => RiskLevel::Low,
            None => RiskLevel::Unknown,
        }
    }

    /// `high`, `medium`, `low`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            RiskLevel::High => "high",
            RiskLevel::Medium => "medium",
            RiskLevel::Low => "low",
            RiskLevel::Unknown => "unknown",
        }
    }
}

impl fmt::Display for RiskLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A score and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RiskScore {
    /// The score in force, 0–10 rounded to one decimal: the override when there is one,
    /// else the computed score. `None` when nothing is known and there is no override.
    pub total: Option<f64>,
    /// The score computed from the attributes (rounded to one decimal).
    pub computed: Option<f64>,
    /// Risk band of `total`.
    pub level: RiskLevel,
    /// The admin's override, if any.
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    pub score_override: Option<ScoreOverride>,
    /// Whether unknown values counted as the worst value.
    pub missing_is_worst: bool,
    /// Per group breakdown.
    pub groups: Vec<GroupScore>,
}

/// An admin's score for an app, replacing the computed one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreOverride {
    /// 0–10.
    pub score: f64,
    /// Why (free text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One group's part of the score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupScore {
    /// The group.
    pub group: Group,
    /// Its importance.
    pub importance: Importance,
    /// Its weight in the total (0 when ignored or when nothing in it counted).
    pub weight: f64,
    /// Weighted average of its counted properties (rounded to two decimals), `None` when
    /// none counted.
    pub score: Option<f64>,
    /// Every property of the group.
    pub properties: Vec<PropertyScore>,
}

/// One property's part of its group score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PropertyScore {
    /// Config key (`mfa`).
    pub key: &'static str,
    /// Label (`MFA`).
    pub label: &'static str,
    /// The app's value (`null`: unknown).
    pub value: Option<serde_json::Value>,
    /// Its importance.
    pub importance: Importance,
    /// Its weight within the group.
    pub weight: f64,
    /// Its score 0–10 (unknown and `missing_is_worst`: 0; unknown otherwise: `null`).
    pub score: Option<f64>,
    /// Whether it entered the group score.
    pub counted: bool,
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let m = 10f64.powi(decimals);
    (x * m).round() / m
}

/// Computes an app's score from its attributes with the given weights. `now_year` is the
/// reference year for ages.
pub fn compute(a: &Attributes, w: &Weights, now_year: u16) -> RiskScore {
    let mut groups = Vec::with_capacity(Group::ALL.len());
    let (mut total_sum, mut total_weight) = (0.0f64, 0.0f64);
    for g in Group::ALL {
        let gi = w.group(g);
        let (mut sum, mut weight) = (0.0f64, 0.0f64);
        let mut properties = Vec::new();
        for p in Property::ALL.iter().copied().filter(|p| p.group() == g) {
            let pi = w.property(p);
            let pw = pi.weight();
            let score = match p.score(a, now_year) {
                Some(s) => Some(s),
                None if w.missing_is_worst => Some(0.0),
                None => None,
            };
            let counted = score.is_some() && pw > 0.0;
            if let (true, Some(s)) = (counted, score) {
                sum += s * pw;
                weight += pw;
            }
            properties.push(PropertyScore {
                key: p.key(),
                label: p.label(),
                value: p.value_json(a),
                importance: pi,
                weight: pw,
                score,
                counted,
            });
        }
        let gscore = (weight > 0.0).then(|| sum / weight);
        let gw = if gscore.is_some() { gi.weight() } else { 0.0 };
        if let Some(s) = gscore
            && gw > 0.0
        {
            total_sum += s * gw;
            total_weight += gw;
        }
        groups.push(GroupScore {
            group: g,
            importance: gi,
            weight: gw,
            score: gscore.map(|s| round_to(s, 2)),
            properties,
        });
    }
    let computed = (total_weight > 0.0).then(|| round_to(total_sum / total_weight, 1));
    RiskScore {
        total: computed,
        computed,
        level: RiskLevel::of(computed),
        score_override: None,
        missing_is_worst: w.missing_is_worst,
        groups,
    }
}

impl RiskScore {
    /// Applies an admin override on top of the computed score.
    pub(crate) fn with_override(mut self, o: Option<&ScoreOverride>) -> Self {
        if let Some(o) = o {
            self.total = Some(round_to(o.score, 1));
            self.level = RiskLevel::of(self.total);
            self.score_override = Some(o.clone());
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Holding, LatestBreach, TlsVersion};

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    /// Only MFA (high, 10) and SAML (medium, 0) known in Security; founded 5 years ago
    /// (medium, 5) in General. Security = (10*4 + 0*2)/6 = 6.667; General = 5.
    /// Total = (6.667*4 + 5*2)/6 = 6.111 -> 6.1.
    #[test]
    fn hand_computed_default_weights() {
        let a = Attributes {
            mfa: Some(true),
            saml: Some(false),
            founded: Some(2020),
            ..Attributes::default()
        };
        let r = compute(&a, &Weights::default(), 2025);
        let sec = r.groups.iter().find(|g| g.group == Group::Security);
        assert!(close(sec.and_then(|g| g.score), 6.67));
        let general = r.groups.iter().find(|g| g.group == Group::General);
        assert!(close(general.and_then(|g| g.score), 5.0));
        assert!(close(r.total, 6.1), "{:?}", r.total);
        assert_eq!(r.level, RiskLevel::Medium);
        // Compliance and Legal had nothing known: weight 0, no score.
        let comp = r.groups.iter().find(|g| g.group == Group::Compliance);
        assert_eq!(comp.map(|g| g.weight), Some(0.0));
        assert_eq!(comp.and_then(|g| g.score), None);
    }

    /// With missing values counted as worst, every unknown property scores 0.
    /// General: founded 10 (medium 2), the rest unknown: hq 2, holding 1, data_centers 1,
    /// hosting 1, domain 2, breach 4, popularity 2 -> weight 15, sum 20 -> 1.333.
    /// Security/Compliance/Legal: all unknown -> 0. Total = 1.333*2/(2+4+4+2) = 0.222 -> 0.2.
    #[test]
    fn missing_is_worst() {
        let a = Attributes {
            founded: Some(1990),
            ..Attributes::default()
        };
        let w = Weights {
            missing_is_worst: true,
            ..Weights::default()
        };
        let r = compute(&a, &w, 2025);
        let general = r.groups.iter().find(|g| g.group == Group::General);
        assert!(close(general.and_then(|g| g.score), 1.33));
        assert!(close(r.total, 0.2), "{:?}", r.total);
        assert_eq!(r.level, RiskLevel::High);
        // Without the setting the same app scores 10 (only `founded`, 35 years, is known).
        let r = compute(&a, &Weights::default(), 2025);
        assert!(close(r.total, 10.0));
    }

    /// Custom weights: General ignored; Security with mfa very high (8, yes=10) and
    /// tls_version low (1, 1.2=8); Compliance iso_27001 high (4, no=0).
    /// Security = (80 + 8)/9 = 9.778; Compliance = 0. Groups high/high: total = 4.889 -> 4.9.
    #[test]
    fn custom_weights() {
        let a = Attributes {
            founded: Some(2000),
            holding: Some(Holding::Public),
            mfa: Some(true),
            tls_version: Some(TlsVersion::Tls12),
            iso_27001: Some(false),
            ..Attributes::default()
        };
        let mut w = Weights::default();
        w.groups.insert(Group::General, Importance::Ignored);
        w.properties.insert(Property::Mfa, Importance::VeryHigh);
        w.properties.insert(Property::TlsVersion, Importance::Low);
        let r = compute(&a, &w, 2025);
        assert!(close(r.total, 4.9), "{:?}", r.total);
        let sec = r.groups.iter().find(|g| g.group == Group::Security);
        assert!(close(sec.and_then(|g| g.score), 9.78));
    }

    #[test]
    fn nothing_known_is_unknown_and_override_wins() {
        let r = compute(&Attributes::default(), &Weights::default(), 2025);
        assert_eq!(r.total, None);
        assert_eq!(r.level, RiskLevel::Unknown);
        let r = r.with_override(Some(&ScoreOverride {
            score: 3.54,
            note: Some("shadow IT".into()),
        }));
        assert!(close(r.total, 3.5));
        assert_eq!(r.computed, None);
        assert_eq!(r.level, RiskLevel::High);
    }

    #[test]
    fn property_value_rules() {
        let a = Attributes {
            hq_country: Some("RU".into()),
            latest_breach: Some(LatestBreach::Year(2024)),
            file_sharing: Some(true),
            tls_version: Some(TlsVersion::Tls13),
            ..Attributes::default()
        };
        assert_eq!(Property::HqCountry.score(&a, 2025), Some(2.0));
        assert_eq!(Property::LatestBreach.score(&a, 2025), Some(2.0));
        assert_eq!(Property::FileSharing.score(&a, 2025), Some(5.0));
        assert_eq!(Property::TlsVersion.score(&a, 2025), Some(10.0));
        assert_eq!(Property::Mfa.score(&a, 2025), None);
    }
}
