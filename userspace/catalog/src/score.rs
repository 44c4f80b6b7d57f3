//! The risk score: each known property scored 0–10, weighted by its share of the whole
//! (group weight × property weight within the group), then shrunk toward a prior for what is
//! not known; and the confidence, the share of the weight that rests on known facts. 10 is
//! the most trustworthy (Defender's convention); [`RiskLevel`] turns a score into
//! low/medium/high risk.
//!
//! # The rule for unknown facts
//!
//! A fact that is not known is neither credited nor held against the app: it lowers the
//! confidence, and the less is known, the closer the score stays to the prior (5.0, the middle,
//! by default). With `W` the weight share of a property (all shares add up to 1), `c` the
//! confidence (the sum of the shares of the known properties), `R` the weighted mean of the
//! known properties' scores, `P` the prior (`prior_score`) and `k` its weight (`prior_weight`,
//! 0.05 by default):
//!
//! ```text
//! score = (c·R + k·P) / (c + k)        confidence = c
//! ```
//!
//! This is the Bayesian (IMDb-style) weighted rating: the prior counts as if a twentieth of
//! the whole weight had been observed at the middle value (about one high-importance
//! security fact). One known fact moves the score only part of the way (an app known only to
//! lack MFA scores 2.6, only to offer it 7.4: medium, not low), a trust centre's worth of
//! sourced controls moves it most of the way, and an app with nothing known scores the prior
//! with confidence 0.
//! `missing_is_worst = true` instead counts every unknown fact as 0 at its full weight
//! (`score = c·R`), the strictest reading.

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

/// Default prior: the middle of the scale.
pub const DEFAULT_PRIOR_SCORE: f64 = 5.0;
/// Default weight of the prior, as a share of the whole weight (see the module doc).
pub const DEFAULT_PRIOR_WEIGHT: f64 = 0.05;

/// The weights in force: one importance per group and per property, plus the rule for
/// unknown values.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// Importance per group.
    pub groups: BTreeMap<Group, Importance>,
    /// Importance per property.
    pub properties: BTreeMap<Property, Importance>,
    /// When true an unknown value counts as 0 (the worst) at its full weight; when false
    /// unknown values pull the score toward `prior_score` (see the module doc).
    pub missing_is_worst: bool,
    /// The score an app with nothing known gets (0–10, default 5).
    pub prior_score: f64,
    /// How much the prior counts, as a share of the whole weight (0–1, default 0.05; 0 means
    /// only known facts count, as before confidence existed).
    pub prior_weight: f64,
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
            prior_score: DEFAULT_PRIOR_SCORE,
            prior_weight: DEFAULT_PRIOR_WEIGHT,
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
    /// else the computed score. `None` only when every group or property is ignored (or the
    /// prior weighs nothing and nothing is known) and there is no override.
    pub total: Option<f64>,
    /// The score computed from the attributes (rounded to one decimal).
    pub computed: Option<f64>,
    /// Share of the weight that rests on known facts, 0–1 (two decimals); 1 with an
    /// override (the admin's score is taken as it is).
    pub confidence: f64,
    /// Confidence of the computed score (the same as `confidence` without an override).
    pub computed_confidence: f64,
    /// The weighted mean of the known facts alone (rounded to one decimal), `None` when none
    /// is known: what the score would be if the known facts were all there is.
    pub evidence_score: Option<f64>,
    /// Known and counted properties, out of `properties_total` counted ones.
    pub properties_known: usize,
    /// Properties with a non-zero weight.
    pub properties_total: usize,
    /// The prior unknown facts pull toward.
    pub prior_score: f64,
    /// The prior's weight (share of the whole).
    pub prior_weight: f64,
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
    /// Its weight in the total (0 when ignored).
    pub weight: f64,
    /// Share of the group's weight that is known, 0–1 (two decimals).
    pub known_share: f64,
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
    /// Its share of the whole weight (all shares add up to 1), four decimals.
    pub share: f64,
    /// Its score 0–10 (unknown and `missing_is_worst`: 0; unknown otherwise: `null`).
    pub score: Option<f64>,
    /// Whether it entered the score as a known fact (or as 0 under `missing_is_worst`).
    pub counted: bool,
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let m = 10f64.powi(decimals);
    (x * m).round() / m
}

/// The sum of the property weights of group `g` under `w`.
fn group_property_weight(w: &Weights, g: Group) -> f64 {
    Property::ALL
        .iter()
        .filter(|p| p.group() == g)
        .map(|p| w.property(*p).weight())
        .sum()
}

/// Each property's share of the whole weight under `w` (they add up to 1 unless everything
/// is ignored), in [`Property::ALL`] order. Computed once per rescore of the catalog.
pub fn shares(w: &Weights) -> Vec<(Property, f64)> {
    let group_total = |g: Group| group_property_weight(w, g);
    let totals: Vec<(Group, f64)> = Group::ALL.iter().map(|g| (*g, group_total(*g))).collect();
    let groups_weight: f64 = totals
        .iter()
        .filter(|(_, t)| *t > 0.0)
        .map(|(g, _)| w.group(*g).weight())
        .sum();
    Property::ALL
        .iter()
        .map(|p| {
            let g = p.group();
            let gtotal = totals
                .iter()
                .find(|(x, _)| *x == g)
                .map_or(0.0, |(_, t)| *t);
            let share = if groups_weight > 0.0 && gtotal > 0.0 {
                w.group(g).weight() / groups_weight * w.property(*p).weight() / gtotal
            } else {
                0.0
            };
            (*p, share)
        })
        .collect()
}

/// The score and confidence alone (what [`compute`] gives as `computed` and `confidence`),
/// without the breakdown: the catalog keeps these for every app.
pub fn score_only(
    a: &Attributes,
    w: &Weights,
    shares: &[(Property, f64)],
    now_year: u16,
) -> (Option<f64>, f64) {
    let (mut known, mut known_sum, mut total) = (0.0f64, 0.0f64, 0.0f64);
    for (p, share) in shares {
        total += share;
        if *share > 0.0
            && let Some(s) = p.score(a, now_year)
        {
            known += share;
            known_sum += share * s;
        }
    }
    let computed = if w.missing_is_worst {
        (total > 0.0).then_some(known_sum)
    } else {
        let k = w.prior_weight;
        (known + k > 0.0).then(|| (known_sum + k * w.prior_score) / (known + k))
    };
    (
        computed.map(|s| round_to(s.clamp(0.0, 10.0), 1)),
        round_to(known.clamp(0.0, 1.0), 2),
    )
}

/// Computes an app's score from its attributes with the given weights. `now_year` is the
/// reference year for ages. See the module doc for the rule.
pub fn compute(a: &Attributes, w: &Weights, now_year: u16) -> RiskScore {
    // Each group's total property weight, so that a property's share of the whole is
    // group weight / sum of group weights × property weight / group's property weight.
    let group_total = |g: Group| group_property_weight(w, g);
    let groups_weight: f64 = Group::ALL
        .iter()
        .filter(|g| group_total(**g) > 0.0)
        .map(|g| w.group(*g).weight())
        .sum();
    let mut groups = Vec::with_capacity(Group::ALL.len());
    // Known (share, share × score); the prior fills the rest.
    let (mut known, mut known_sum) = (0.0f64, 0.0f64);
    let (mut properties_known, mut properties_total) = (0usize, 0usize);
    for g in Group::ALL {
        let gi = w.group(g);
        let gtotal = group_total(g);
        let gshare = if groups_weight > 0.0 && gtotal > 0.0 {
            gi.weight() / groups_weight
        } else {
            0.0
        };
        let (mut sum, mut weight) = (0.0f64, 0.0f64);
        let mut properties = Vec::new();
        for p in Property::ALL.iter().copied().filter(|p| p.group() == g) {
            let pi = w.property(p);
            let pw = pi.weight();
            let share = if gtotal > 0.0 {
                gshare * pw / gtotal
            } else {
                0.0
            };
            let fact = p.score(a, now_year);
            let score = match fact {
                Some(s) => Some(s),
                None if w.missing_is_worst => Some(0.0),
                None => None,
            };
            if share > 0.0 {
                properties_total += 1;
            }
            if let (true, Some(s)) = (share > 0.0, fact) {
                known += share;
                known_sum += share * s;
                properties_known += 1;
                sum += s * pw;
                weight += pw;
            }
            properties.push(PropertyScore {
                key: p.key(),
                label: p.label(),
                value: p.value_json(a),
                importance: pi,
                weight: pw,
                share: round_to(share, 4),
                score,
                counted: share > 0.0 && score.is_some(),
            });
        }
        groups.push(GroupScore {
            group: g,
            importance: gi,
            weight: if gshare > 0.0 { gi.weight() } else { 0.0 },
            known_share: if gtotal > 0.0 {
                round_to(weight / gtotal, 2)
            } else {
                0.0
            },
            score: (weight > 0.0).then(|| round_to(sum / weight, 2)),
            properties,
        });
    }
    // Rounding noise must not push the share of the known past 1.
    let confidence = known.clamp(0.0, 1.0);
    let evidence = (known > 0.0).then(|| known_sum / known);
    let computed = if w.missing_is_worst {
        (groups_weight > 0.0).then_some(known_sum)
    } else {
        let k = w.prior_weight;
        (known + k > 0.0).then(|| (known_sum + k * w.prior_score) / (known + k))
    }
    .map(|s| round_to(s.clamp(0.0, 10.0), 1));
    RiskScore {
        total: computed,
        computed,
        confidence: round_to(confidence, 2),
        computed_confidence: round_to(confidence, 2),
        evidence_score: evidence.map(|e| round_to(e, 1)),
        properties_known,
        properties_total,
        prior_score: w.prior_score,
        prior_weight: w.prior_weight,
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
            self.confidence = 1.0;
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

    /// Shares with default weights: groups general 2, security 4, compliance 4, legal 2 (sum
    /// 12); property weights per group sum to 15 (general), 30, 30, 14. MFA: 4/12 × 4/30 =
    /// 0.0444; SAML 4/12 × 2/30 = 0.0222; founded 2/12 × 2/15 = 0.0222.
    /// Known: MFA yes (10), SAML no (0), founded 5 years ago (5): c = 0.0889,
    /// c·R = 0.444 + 0 + 0.111 = 0.556, R = 6.25. Score = (0.556 + 0.05 × 5) / (0.0889 + 0.05)
    /// = 5.80 -> 5.8.
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
        assert_eq!(sec.map(|g| g.known_share), Some(0.2));
        let general = r.groups.iter().find(|g| g.group == Group::General);
        assert!(close(general.and_then(|g| g.score), 5.0));
        assert!(close(r.total, 5.8), "{:?}", r.total);
        assert!(close(r.evidence_score, 6.3), "{:?}", r.evidence_score);
        assert!((r.confidence - 0.09).abs() < 1e-9, "{}", r.confidence);
        assert_eq!((r.properties_known, r.properties_total), (3, 38));
        assert_eq!(r.level, RiskLevel::Medium);
        // Compliance and Legal had nothing known: no group score, nothing known.
        let comp = r.groups.iter().find(|g| g.group == Group::Compliance);
        assert_eq!(comp.and_then(|g| g.score), None);
        assert_eq!(comp.map(|g| g.known_share), Some(0.0));
        let shares: f64 = r
            .groups
            .iter()
            .flat_map(|g| g.properties.iter())
            .map(|p| p.share)
            .sum();
        assert!((shares - 1.0).abs() < 1e-3, "{shares}");
    }

    /// One fact moves the score part of the way; the direction follows the fact.
    /// MFA only: (0.0444 × s + 0.25) / 0.0944 -> no: 2.6, yes: 7.4.
    #[test]
    fn one_fact_moves_part_of_the_way() {
        let no = Attributes {
            mfa: Some(false),
            ..Attributes::default()
        };
        let yes = Attributes {
            mfa: Some(true),
            ..Attributes::default()
        };
        let r = compute(&no, &Weights::default(), 2025);
        assert!(close(r.total, 2.6), "{:?}", r.total);
        assert_eq!(r.level, RiskLevel::High);
        assert!(close(compute(&yes, &Weights::default(), 2025).total, 7.4));
        // Two adverse high-importance facts (no MFA, a breach this year: shares 0.0444 each,
        // both 0) reach the bottom of the scale: 0.25 / 0.1389 = 1.8.
        let worse = Attributes {
            mfa: Some(false),
            latest_breach: Some(LatestBreach::Year(2025)),
            ..Attributes::default()
        };
        assert!(close(compute(&worse, &Weights::default(), 2025).total, 1.8));
        // Without a prior only the known facts count (the rule before confidence).
        let w = Weights {
            prior_weight: 0.0,
            ..Weights::default()
        };
        assert!(close(compute(&yes, &w, 2025).total, 10.0));
        // A stricter prior: unknown facts lean toward 3.
        let w = Weights {
            prior_score: 3.0,
            ..Weights::default()
        };
        assert!(close(compute(&Attributes::default(), &w, 2025).total, 3.0));
    }

    /// With missing values counted as worst, every unknown property scores 0 at its full
    /// weight: only `founded` (10, share 0.0222) is known -> 0.222 -> 0.2.
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
        assert!(close(r.total, 0.2), "{:?}", r.total);
        assert_eq!(r.level, RiskLevel::High);
        assert!((r.confidence - 0.02).abs() < 1e-9);
        // Without the setting the same app stays near the prior: (0.222 + 0.25) / 0.0722.
        let r = compute(&a, &Weights::default(), 2025);
        assert!(close(r.total, 6.5), "{:?}", r.total);
    }

    /// Custom weights: General ignored (groups: security 4, compliance 4, legal 2 = 10);
    /// Security with mfa very high (8, yes=10) and tls_version low (1, 1.2=8), 31 in all;
    /// Compliance iso_27001 high (4 of 30, no=0).
    /// Shares: mfa 0.4 × 8/31 = 0.1032, tls 0.4 × 1/31 = 0.0129, iso 0.4 × 4/30 = 0.0533.
    /// c = 0.1695, c·R = 1.032 + 0.103 = 1.135; score = (1.135 + 0.25) / 0.2195 = 6.31 -> 6.3.
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
        assert!(close(r.total, 6.3), "{:?}", r.total);
        assert!((r.confidence - 0.17).abs() < 1e-9, "{}", r.confidence);
        let sec = r.groups.iter().find(|g| g.group == Group::Security);
        assert!(close(sec.and_then(|g| g.score), 9.78));
        // The ignored group's facts are not counted.
        let general = r.groups.iter().find(|g| g.group == Group::General);
        assert_eq!(general.map(|g| g.weight), Some(0.0));
        assert!(
            general
                .into_iter()
                .flat_map(|g| g.properties.iter())
                .all(|p| !p.counted)
        );
    }

    #[test]
    fn nothing_known_scores_the_prior_with_no_confidence_and_override_wins() {
        let r = compute(&Attributes::default(), &Weights::default(), 2025);
        assert_eq!(r.total, Some(5.0));
        assert_eq!(r.confidence, 0.0);
        assert_eq!(r.evidence_score, None);
        assert_eq!(r.level, RiskLevel::Medium);
        let r = r.with_override(Some(&ScoreOverride {
            score: 3.54,
            note: Some("shadow IT".into()),
        }));
        assert!(close(r.total, 3.5));
        assert_eq!(r.computed, Some(5.0));
        assert_eq!(r.confidence, 1.0);
        assert_eq!(r.computed_confidence, 0.0);
        assert_eq!(r.level, RiskLevel::High);
        // Nothing weighs anything: no score at all.
        let mut w = Weights {
            prior_weight: 0.0,
            ..Weights::default()
        };
        assert_eq!(compute(&Attributes::default(), &w, 2025).total, None);
        for g in Group::ALL {
            w.groups.insert(g, Importance::Ignored);
        }
        w.missing_is_worst = true;
        assert_eq!(compute(&Attributes::default(), &w, 2025).total, None);
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
