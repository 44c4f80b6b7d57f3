//! Discovery reports: one [`DiscoveryReport`] rendered as a terminal table, JSON, CSV or a
//! single self-contained HTML page with charts.
//!
//! JSON top level: `inputs` (per file: `file`, `format`, `lines`, `parsed`, `unparsed`,
//! plus `records`, and `bad_lines`/`error` when there are any), `apps` (exactly the fields of
//! `tollgate apps --json`, see [`AppView`]), `users`, `unknown_domains`, and for charts and
//! drill-down `window`, `new_since`, `new_apps`, `totals`, `sources`, `app_details`,
//! `hourly`, and `flows` when asked for.
//!
//! CSV: one row per app (the [`AppView`] columns plus `risk_level`), or, when the report
//! carries flows, one row per flow.

mod csv;
mod html;
mod table;

use std::io::{self, Write};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::aggregate::{
    AppDetail, AppView, FlowList, HourBucket, Snapshot, SourceView, Totals, UnknownDomain, UserView,
};
use crate::record::InputStats;

/// Output formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportFormat {
    #[default]
    Table,
    Json,
    Csv,
    Html,
}

impl std::str::FromStr for ReportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "table" => Ok(ReportFormat::Table),
            "json" => Ok(ReportFormat::Json),
            "csv" => Ok(ReportFormat::Csv),
            "html" => Ok(ReportFormat::Html),
            other => Err(format!(
                "unknown report format {other:?} (table, json, csv, html)"
            )),
        }
    }
}

/// The time span a report covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// Everything one discovery run found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryReport {
    pub generated_at: DateTime<Utc>,
    pub window: Option<Window>,
    pub new_since: Option<DateTime<Utc>>,
    pub inputs: Vec<InputStats>,
    pub apps: Vec<AppView>,
    pub users: Vec<UserView>,
    pub unknown_domains: Vec<UnknownDomain>,
    /// Ids of apps first seen at or after `new_since`.
    pub new_apps: Vec<String>,
    pub totals: Totals,
    pub sources: Vec<SourceView>,
    pub app_details: Vec<AppDetail>,
    pub hourly: Vec<HourBucket>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<FlowList>,
}

impl DiscoveryReport {
    pub fn new(
        inputs: Vec<InputStats>,
        snap: Snapshot,
        window: Option<Window>,
        new_since: Option<DateTime<Utc>>,
        flows: Option<FlowList>,
    ) -> DiscoveryReport {
        let new_apps = match new_since {
            Some(t) => snap
                .apps
                .iter()
                .filter(|a| a.first_seen >= t)
                .map(|a| a.id.clone())
                .collect(),
            None => Vec::new(),
        };
        DiscoveryReport {
            generated_at: Utc::now(),
            window,
            new_since,
            inputs,
            apps: snap.apps,
            users: snap.users,
            unknown_domains: snap.unknown_domains,
            new_apps,
            totals: snap.totals,
            sources: snap.sources,
            app_details: snap.app_details,
            hourly: snap.hourly,
            flows,
        }
    }

    /// Input files that failed (could not be read or recognised).
    pub fn failed_inputs(&self) -> impl Iterator<Item = &InputStats> {
        self.inputs.iter().filter(|i| i.error.is_some())
    }
}

/// "high" / "medium" / "low" / "unknown" (the catalog's bands: below 4 high risk, 8 and
/// up low risk; scores are 0–10 with 10 the most trustworthy).
pub fn risk_level(score: Option<f64>) -> &'static str {
    tollgate_catalog::RiskLevel::of(score).as_str()
}

/// Render a report.
pub fn render(
    report: &DiscoveryReport,
    format: ReportFormat,
    out: &mut dyn Write,
) -> io::Result<()> {
    match format {
        ReportFormat::Table => table::render(report, out),
        ReportFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, report).map_err(io::Error::other)?;
            writeln!(out)
        }
        ReportFormat::Csv => csv::render(report, out),
        ReportFormat::Html => html::render(report, out),
    }
}

/// Human-readable byte counts (binary units).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS.get(i).copied().unwrap_or("B"))
    }
}
