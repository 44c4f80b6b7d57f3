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
        sources: a.sources.clone(),
        risk,
    })
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
    let cells: Vec<[String; 6]> = rows
        .iter()
        .zip(doms)
        .map(|(r, d)| {
            [
                cut(&r.id, 32),
                cut(&r.name, 32),
                r.category.clone(),
                fmt_score(r.risk_score),
                r.risk_level.to_string(),
                cut(&d, 60),
            ]
        })
        .collect();
    let header = ["ID", "NAME", "CATEGORY", "SCORE", "RISK", "DOMAINS"];
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
        "  risk score: {} ({} risk)",
        fmt_score(v.risk_score),
        v.risk_level
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
    if v.risk.missing_is_worst {
        let _ = writeln!(out, "  unknown values count as the worst value");
    }
    for g in &v.risk.groups {
        let _ = writeln!(
            out,
            "\n  {:<12} score {:>4}  importance {} (weight {})",
            g.group.key().to_uppercase(),
            fmt_score(g.score),
            g.importance,
            g.weight
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
                if p.counted { "" } else { " (not counted)" }
            );
        }
    }
    out
}
