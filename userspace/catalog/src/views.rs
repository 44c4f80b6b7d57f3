//! What `tollgate catalog list|show|search` print: serde views for `--json` and plain-text
//! renderers for the terminal. The CLI only calls these.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::score::{RiskLevel, RiskScore};
use crate::{App, Catalog};

/// One line of `catalog list` / `catalog search`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppSummaryView {
    /// App id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Vendor.
    pub vendor: Option<String>,
    /// Category.
    pub category: String,
    /// Domain rules.
    pub domains: Vec<String>,
    /// Score in force (0–10, one decimal), `null` when unknown.
    pub risk_score: Option<f64>,
    /// Risk band.
    pub risk_level: RiskLevel,
    /// Share of the score's weight that rests on known facts, 0–1 (1 for an override).
    pub confidence: Option<f64>,
    /// Whether it is a `[[custom_apps]]` entry.
    pub custom: bool,
}

/// `catalog show APP_ID`: the app, its facts with their sources, and its score breakdown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppDetailView {
    /// App id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Vendor.
    pub vendor: Option<String>,
    /// Category.
    pub category: String,
    /// Domain rules.
    pub domains: Vec<String>,
    /// IP ranges (CIDR).
    pub ip_ranges: Vec<String>,
    /// Whether it is a `[[custom_apps]]` entry.
    pub custom: bool,
    /// Score in force (same as `risk.total`).
    pub risk_score: Option<f64>,
    /// Risk band.
    pub risk_level: RiskLevel,
    /// Share of the score's weight that rests on known facts, 0–1 (same as
    /// `risk.confidence`).
    pub confidence: f64,
    /// How the score is made, in words (the same text `catalog show` prints).
    pub rule: String,
    /// Where each fact comes from.
    pub sources: BTreeMap<String, String>,
    /// How the score was made: per group, per property (value, score, weight), override.
    pub risk: RiskScore,
}

fn summary(cat: &Catalog, a: &App) -> AppSummaryView {
    let risk_score = cat.risk_score(&a.id);
    AppSummaryView {
        id: a.id.clone(),
        name: a.name.clone(),
        vendor: a.vendor.clone(),
        category: a.category.clone(),
        domains: a.domains.clone(),
        risk_score,
        risk_level: RiskLevel::of(risk_score),
        confidence: cat.risk_confidence(&a.id),
        custom: cat.is_custom(&a.id),
    }
}

/// Every app, sorted by id.
pub fn list(cat: &Catalog) -> Vec<AppSummaryView> {
    let mut v: Vec<_> = cat.apps().map(|a| summary(cat, a)).collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// Apps matching `text` (see [`Catalog::search`]), best first.
pub fn search(cat: &Catalog, text: &str) -> Vec<AppSummaryView> {
    cat.search(text)
        .into_iter()
        .map(|a| summary(cat, a))
        .collect()
}

/// One app in detail; `None` for an unknown id.
pub fn show(cat: &Catalog, id: &str) -> Option<AppDetailView> {
    let a = cat.app(id)?;
    let risk = cat.risk(id)?;
    Some(AppDetailView {
        id: a.id.clone(),
        name: a.name.clone(),
        vendor: a.vendor.clone(),
        category: a.category.clone(),
        domains: a.domains.clone(),
        ip_ranges: a.ip_ranges.iter().map(ToString::to_string).collect(),
        custom: cat.is_custom(id),
        risk_score: risk.total,
        risk_level: risk.level,
        confidence: risk.confidence,
        rule: rule_text(&risk),
        sources: a.sources.clone(),
        risk,
    })
}

/// How a score is made, in words: printed by `catalog show` and carried in its JSON.
pub fn rule_text(r: &RiskScore) -> String {
    let unknown = if r.missing_is_worst {
        "every unknown fact counts as 0 at its full weight (missing_is_worst)".to_string()
    } else {
        format!(
            "unknown facts are not held for or against the app: the less is known, the closer \
             the score stays to {:.1} (score = (c*R + {k}*{p:.1}) / (c + {k}), c = confidence, \
             R = the weighted mean of the known facts)",
            r.prior_score,
            k = r.prior_weight,
            p = r.prior_score
        )
    };
    format!(
        "each known fact scores 0-10 and weighs its group's share times its share within the \
         group; confidence = the share of the weight that is known; {unknown}; an override \
         replaces the score (confidence 1). Bands: below 4 high risk, below 8 medium, else low."
    )
}

/// `0.45` -> `45%`.
pub fn fmt_confidence(c: f64) -> String {
    format!("{:.0}%", (c * 100.0).round())
}

fn fmt_score(s: Option<f64>) -> String {
    s.map_or_else(|| "-".to_string(), |s| format!("{s:.1}"))
}

/// Cuts `s` to `max` characters (with `…`).
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// A table for `catalog list` / `catalog search`: id, name, category, risk, level, domains.
pub fn render_table(rows: &[AppSummaryView]) -> String {
    let doms: Vec<String> = rows
        .iter()
        .map(|r| {
            let mut d = r
                .domains
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if r.domains.len() > 3 {
                let _ = write!(d, " (+{})", r.domains.len() - 3);
            }
            d
        })
        .collect();
    let cells: Vec<[String; 7]> = rows
        .iter()
        .zip(doms)
        .map(|(r, d)| {
            [
                cut(&r.id, 32),
                cut(&r.name, 32),
                r.category.clone(),
                fmt_score(r.risk_score),
                r.confidence.map_or_else(|| "-".to_string(), fmt_confidence),
                r.risk_level.to_string(),
                cut(&d, 60),
            ]
        })
        .collect();
    let header = ["ID", "NAME", "CATEGORY", "SCORE", "CONF", "RISK", "DOMAINS"];
    let mut width = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: &[String]| {
        let mut l = String::new();
        for (i, (c, w)) in cols.iter().zip(width.iter()).enumerate() {
            if i + 1 == cols.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header.map(String::from));
    for row in &cells {
        line(row);
    }
    let _ = writeln!(out, "{} app(s)", rows.len());
    out
}

/// The text of `catalog show`: facts, then the score breakdown.
pub fn render_detail(v: &AppDetailView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} ({})", v.name, v.id);
    if let Some(vendor) = &v.vendor {
        let _ = writeln!(out, "  vendor:    {vendor}");
    }
    let _ = writeln!(out, "  category:  {}", v.category);
    let _ = writeln!(out, "  domains:   {}", v.domains.join(", "));
    if !v.ip_ranges.is_empty() {
        let _ = writeln!(out, "  ip ranges: {}", v.ip_ranges.join(", "));
    }
    if v.custom {
        let _ = writeln!(out, "  custom app (from config)");
    }
    let _ = writeln!(
        out,
        "  risk score: {} ({} risk), confidence {} ({} of {} facts known{})",
        fmt_score(v.risk_score),
        v.risk_level,
        fmt_confidence(v.confidence),
        v.risk.properties_known,
        v.risk.properties_total,
        v.risk
            .evidence_score
            .map(|e| format!(", the known facts alone score {e:.1}"))
            .unwrap_or_default()
    );
    if let Some(o) = &v.risk.score_override {
        let _ = writeln!(
            out,
            "  override:  {:.1} (computed {}){}",
            o.score,
            fmt_score(v.risk.computed),
            o.note
                .as_ref()
                .map(|n| format!(" — {n}"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(out, "  how:       {}", v.rule);
    for g in &v.risk.groups {
        let _ = writeln!(
            out,
            "\n  {:<12} score {:>4}  importance {} (weight {}), {} known",
            g.group.key().to_uppercase(),
            fmt_score(g.score),
            g.importance,
            g.weight,
            fmt_confidence(g.known_share)
        );
        for p in &g.properties {
            let value = match &p.value {
                None => "unknown".to_string(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Bool(true)) => "yes".to_string(),
                Some(serde_json::Value::Bool(false)) => "no".to_string(),
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(", "),
                Some(other) => other.to_string(),
            };
            let source = v
                .sources
                .get(p.key)
                .map(|s| format!(" [{s}]"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    {:<32} {:<24} score {:>4}  {}{}",
                p.label,
                cut(&format!("{value}{source}"), 24),
                fmt_score(p.score),
                p.importance,
                if p.share == 0.0 { " (ignored)" } else { "" }
            );
        }
    }
    out
}

/// The distribution of scores over a catalog: one bin per point of the scale.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreHistogram {
    /// Apps with a score in `[i, i+1)` (the last bin holds 9 to 10 inclusive).
    pub bins: [usize; 10],
    /// Apps without a score.
    pub unscored: usize,
    /// Apps per confidence band: `[0, 0.1)`, `[0.1, 0.25)`, `[0.25, 0.5)`, `[0.5, 1]`.
    pub confidence: [usize; 4],
    /// Apps per risk level: high, medium, low.
    pub levels: [usize; 3],
    /// Every app counted.
    pub apps: usize,
}

/// The score histogram of every app in the catalog.
pub fn histogram(cat: &Catalog) -> ScoreHistogram {
    let mut h = ScoreHistogram {
        bins: [0; 10],
        unscored: 0,
        confidence: [0; 4],
        levels: [0; 3],
        apps: 0,
    };
    for a in cat.apps() {
        h.apps += 1;
        let s = cat.risk_score(&a.id);
        match s {
            // Scores are 0..=10 with one decimal: the floor is a bin index 0..=10.
            Some(s) => {
                let i = (s.clamp(0.0, 10.0).floor() as usize).min(9);
                if let Some(b) = h.bins.get_mut(i) {
                    *b += 1;
                }
            }
            None => h.unscored += 1,
        }
        match RiskLevel::of(s) {
            RiskLevel::High => h.levels[0] += 1,
            RiskLevel::Medium => h.levels[1] += 1,
            RiskLevel::Low => h.levels[2] += 1,
            RiskLevel::Unknown => {}
        }
        let c = cat.risk_confidence(&a.id).unwrap_or(0.0);
        let band = if c < 0.1 {
            0
        } else if c < 0.25 {
            1
        } else if c < 0.5 {
            2
        } else {
            3
        };
        h.confidence[band] += 1;
    }
    h
}

/// The histogram as text bars.
pub fn render_histogram(h: &ScoreHistogram) -> String {
    let mut out = String::new();
    let max = h.bins.iter().copied().max().unwrap_or(0).max(1);
    let _ = writeln!(out, "score      apps");
    for (i, n) in h.bins.iter().enumerate() {
        let bar = "#".repeat((n * 50).div_ceil(max));
        let close = if i == 9 { ']' } else { ')' };
        let _ = writeln!(out, "[{i:>2},{:>2}{close} {n:>6}  {bar}", i + 1);
    }
    let _ = writeln!(
        out,
        "{} apps; risk high {} / medium {} / low {}; unscored {}",
        h.apps, h.levels[0], h.levels[1], h.levels[2], h.unscored
    );
    let _ = writeln!(
        out,
        "confidence <10%: {}, 10-25%: {}, 25-50%: {}, >=50%: {}",
        h.confidence[0], h.confidence[1], h.confidence[2], h.confidence[3]
    );
    out
}
