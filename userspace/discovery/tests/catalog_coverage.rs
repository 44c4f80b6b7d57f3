//! How much of real traffic the shipped catalog names: nDPI's regression captures (which the
//! catalog was not tuned to) go through the flow table, and every flow that carries a name
//! (SNI, QUIC, HTTP Host, DNS) is classified. Prints the share of named flows and of their
//! bytes that map to an app, and how short the unknown list is once names are grouped by
//! registrable domain (Public Suffix List).
//!
//! `TOLLGATE_CATALOG_BASELINE=/path/catalog.json` prints the same numbers for another
//! catalog file (the before/after comparison in the notes). Without the corpus the test
//! prints a skip message.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use tollgate_catalog::{Catalog, CatalogConfig};
use tollgate_discovery::aggregate::base_domain;
use tollgate_discovery::flow_table::{FlowTable, FlowTableLimits};
use tollgate_discovery::pcap::import_pcap;
use tollgate_discovery::record::FlowRecord;

mod common;
use common::ndpi_pcap_dir as corpus_dir;

#[derive(Debug, Default)]
struct Coverage {
    named_flows: usize,
    matched_flows: usize,
    named_bytes: u64,
    matched_bytes: u64,
    unknown_names: usize,
    unknown_domains: usize,
    /// (bytes, flows, registrable domain), most bytes first.
    top_unknown: Vec<(u64, usize, String)>,
}

impl Coverage {
    fn flow_share(&self) -> f64 {
        self.matched_flows as f64 / self.named_flows.max(1) as f64
    }
    fn byte_share(&self) -> f64 {
        self.matched_bytes as f64 / self.named_bytes.max(1) as f64
    }
}

fn coverage(cat: &Catalog, flows: &[FlowRecord]) -> Coverage {
    let mut c = Coverage::default();
    let (mut names, mut domains) = (HashSet::new(), HashMap::<String, (u64, usize)>::new());
    for r in flows {
        let Some(name) = r.name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        let bytes = r.bytes_up.saturating_add(r.bytes_down);
        c.named_flows += 1;
        c.named_bytes += bytes;
        // As the report does: the name, else the server address (published ranges).
        if cat.classify(Some(name), Some(r.dst)).is_some() {
            c.matched_flows += 1;
            c.matched_bytes += bytes;
        } else {
            let lower = name.to_ascii_lowercase();
            let d = domains.entry(base_domain(&lower).into_owned()).or_default();
            d.0 += bytes;
            d.1 += 1;
            names.insert(lower);
        }
    }
    c.unknown_names = names.len();
    c.unknown_domains = domains.len();
    c.top_unknown = domains.into_iter().map(|(d, (b, f))| (b, f, d)).collect();
    c.top_unknown.sort_by(|a, b| b.cmp(a));
    c
}

fn print(label: &str, c: &Coverage) {
    eprintln!(
        "{label}: {}/{} named flows ({:.1}%), {}/{} bytes ({:.1}%) map to an app; unknown: {} names in {} registrable domains",
        c.matched_flows,
        c.named_flows,
        100.0 * c.flow_share(),
        c.matched_bytes,
        c.named_bytes,
        100.0 * c.byte_share(),
        c.unknown_names,
        c.unknown_domains
    );
}

#[test]
fn ndpi_corpus_coverage() {
    let Some(dir) = corpus_dir() else {
        eprintln!("SKIP ndpi_corpus_coverage: nDPI corpus not found (set TOLLGATE_CORPUS)");
        return;
    };
    let mut pcaps: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("list pcaps")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    pcaps.sort();
    let mut flows = Vec::new();
    for p in &pcaps {
        let mut table = FlowTable::new(FlowTableLimits::default());
        import_pcap(p, &mut table).unwrap_or_else(|e| panic!("{e}"));
        flows.extend(table.records_with_meta().map(|(r, _)| r));
    }
    let cat = Catalog::builtin(chrono::Utc::now()).expect("shipped catalog");
    let now = coverage(&cat, &flows);
    print("shipped catalog", &now);
    for (b, f, d) in now.top_unknown.iter().take(15) {
        eprintln!("  unknown {d}: {f} flows, {b} bytes");
    }
    if let Some(path) = std::env::var_os("TOLLGATE_CATALOG_BASELINE") {
        let json = std::fs::read_to_string(&path).expect("read the baseline catalog");
        let base = Catalog::from_data(&json, &CatalogConfig::default(), &[], chrono::Utc::now())
            .expect("baseline catalog loads");
        print("baseline catalog", &coverage(&base, &flows));
    }
    assert!(
        now.named_flows >= 500,
        "only {} named flows",
        now.named_flows
    );
    // Floors measured on the shipped catalog (see the notes); a catalog change that loses
    // coverage fails here.
    assert!(now.flow_share() >= 0.60, "{now:?}");
    assert!(now.byte_share() >= 0.60, "{now:?}");
    // Grouping by registrable domain makes the unknown list shorter than the names.
    assert!(now.unknown_domains < now.unknown_names, "{now:?}");
}
