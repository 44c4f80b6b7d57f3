//! Offline discovery over input files: each file is a pcap/pcapng capture (told by its
//! magic number, imported by [`tollgate_discovery::pcap`] into a [`FlowTable`]) or a firewall/proxy log
//! (format detected); every record goes through one
//! [`Aggregator`]; the result is a [`DiscoveryReport`]. A file that cannot be read or
//! recognised gets an entry with `error` set, and the other files are still processed.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use tollgate_catalog::Catalog;

use tollgate_discovery::aggregate::{AggregateOptions, Aggregator};
use tollgate_discovery::flow_table::FlowTableLimits;
use tollgate_discovery::pcap::import_pcap_threads;
use tollgate_discovery::record::{BadLine, InputStats};
use tollgate_discovery::report::{DiscoveryReport, ReportFormat, Window};
use tollgate_discovery::users::Users;

use crate::{LogOptions, import_file_parts};

/// Options of `tollgate discover`.
#[derive(Debug, Clone, Default)]
pub struct DiscoverOptions {
    /// Output format (the caller renders with [`tollgate_discovery::report::render`]).
    pub format: ReportFormat,
    /// Include the flat list of classified records (`--flows`).
    pub include_flows: bool,
    /// Only records starting in `[start, end)` count.
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Apps first seen at or after this time are "new" in the report. Default: the middle
    /// of the data's time span (so "new" means "not seen in the first half").
    pub new_since: Option<DateTime<Utc>>,
    /// Log import settings: custom formats, a forced format, bad lines kept per file.
    pub logs: LogOptions,
    /// Sanction tags per app id (`tag` in the report; apps not in the map have `null`).
    pub tags: BTreeMap<String, String>,
    /// Threads a large plain log file is read on (0: one per core; see
    /// [`import_file_parts`]), and a large capture
    /// ([`tollgate_discovery::pcap::import_pcap_threads`]).
    pub threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pcap,
    Log,
}

fn sniff_kind(path: &std::path::Path) -> std::io::Result<Kind> {
    let mut f = File::open(path)?;
    let mut m = [0u8; 4];
    let n = tollgate_discovery::pcap::read_full(&mut f, &mut m)?;
    let pcap = n == 4
        && matches!(
            m,
            [0xd4, 0xc3, 0xb2, 0xa1]
                | [0xa1, 0xb2, 0xc3, 0xd4]
                | [0x4d, 0x3c, 0xb2, 0xa1]
                | [0xa1, 0xb2, 0x3c, 0x4d]
                | [0x0a, 0x0d, 0x0d, 0x0a]
        );
    Ok(if pcap { Kind::Pcap } else { Kind::Log })
}

/// Run discovery over `inputs`.
pub fn discover(
    inputs: &[PathBuf],
    opts: &DiscoverOptions,
    catalog: &Catalog,
    users: &Users,
) -> DiscoveryReport {
    let agg_opts = AggregateOptions {
        window: opts.window,
        keep_flows: opts.include_flows,
        ..AggregateOptions::default()
    };
    let mut agg = Aggregator::new(agg_opts.clone());
    let mut stats = Vec::with_capacity(inputs.len());
    for path in inputs {
        let label = path.display().to_string();
        let kind = match sniff_kind(path) {
            Ok(k) => k,
            Err(e) => {
                stats.push(InputStats {
                    file: label.clone(),
                    format: "unreadable".into(),
                    error: Some(format!("{label}: cannot read: {e}")),
                    ..InputStats::default()
                });
                continue;
            }
        };
        match kind {
            Kind::Pcap => stats.push(import_capture(path, opts.threads, &mut agg, catalog, users)),
            Kind::Log => {
                let parts = import_file_parts(
                    path,
                    &opts.logs,
                    opts.threads,
                    &mut agg,
                    &|| Aggregator::new(agg_opts.clone()),
                    &|a, r| a.add(&r, catalog, users),
                );
                match parts {
                    Ok((s, rest)) => {
                        for part in rest {
                            agg.merge(part);
                        }
                        stats.push(s);
                    }
                    Err(e) => stats.push(InputStats {
                        file: label,
                        format: "unknown".into(),
                        error: Some(e.to_string()),
                        ..InputStats::default()
                    }),
                }
            }
        }
    }
    let tag = |id: &str| opts.tags.get(id).cloned();
    let snap = agg.snapshot(catalog, &tag);
    let new_since = opts
        .new_since
        .or_else(|| match (snap.first_seen, snap.last_seen) {
            (Some(a), Some(b)) => Some(a + (b - a) / 2),
            _ => None,
        });
    let data_window = match (snap.first_seen, snap.last_seen) {
        (Some(start), Some(end)) => Some(Window { start, end }),
        _ => None,
    };
    let window = opts
        .window
        .map(|(start, end)| Window { start, end })
        .or(data_window);
    let flows = opts.include_flows.then(|| agg.take_flows());
    DiscoveryReport::new(stats, snap, window, new_since, flows)
}

/// A pcap/pcapng file: packets go through the wire helper's importer and flow table; each
/// flow becomes one record. In the stats `lines` are frames, `parsed` frames that decoded
/// (TCP/UDP packets, fragments and other protocols), `unparsed` malformed frames. A large
/// capture is read on `threads` threads (0: one per core), with the same records
/// ([`import_pcap_threads`]).
fn import_capture(
    path: &std::path::Path,
    threads: usize,
    agg: &mut Aggregator,
    catalog: &Catalog,
    users: &Users,
) -> InputStats {
    let label = path.display().to_string();
    let mut records = 0u64;
    let imported = import_pcap_threads(path, &FlowTableLimits::default(), threads, &mut |r| {
        agg.add(&r, catalog, users);
        records += 1;
    });
    match imported {
        Ok(ps) => InputStats {
            file: label,
            format: ps.format.to_owned(),
            lines: ps.frames,
            parsed: ps.frames.saturating_sub(ps.malformed),
            unparsed: ps.malformed,
            records,
            bad_lines: if ps.truncated {
                vec![BadLine {
                    line: ps.frames + 1,
                    reason: "capture truncated here; the frames before were used".to_owned(),
                    text: String::new(),
                }]
            } else {
                Vec::new()
            },
            error: None,
        },
        Err(e) => InputStats {
            file: label,
            format: "pcap".into(),
            error: Some(e.to_string()),
            ..InputStats::default()
        },
    }
}
