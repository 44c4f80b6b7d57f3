//! Tollgate's names against nDPI's on nDPI's own regression captures.
//!
//! Every pcap of `<corpus>/ndpi/pcap` goes through `pcap::import_pcap` and the flow table;
//! the names are compared with `expected_sni.tsv` (the names nDPI 4.x reported, one row per
//! flow). Per kind (TLS, QUIC, DNS, HTTP): found, missed, wrong (a different name on the same
//! flow) and extra (a name from the flow's own payload on a flow nDPI did not name). The
//! `other:` kinds (mDNS, SSDP, DHCP, NetBIOS) are out of scope: Tollgate does not name
//! those protocols, and flows nDPI named that way are left out of the extras too.
//!
//! Targets (asserted): every TLS, DNS and HTTP name nDPI found, at least 99% of its QUIC
//! names, and no wrong name. The corpus is found through TOLLGATE_CORPUS, else
//! `<workspace>/../shared/corpus`; without it the test prints a skip message.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use tollgate_discovery::flow_table::{FlowMeta, FlowTable, FlowTableLimits};
use tollgate_discovery::pcap::import_pcap;
use tollgate_discovery::record::{FlowRecord, L4Proto, NameSource};

fn corpus_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("TOLLGATE_CORPUS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
    };
    let d = base.join("ndpi");
    d.join("expected_sni.tsv").is_file().then_some(d)
}

type Ep = (IpAddr, u16);
type Pair = (L4Proto, Ep, Ep);

fn parse_ep(s: &str) -> Option<Ep> {
    let (ip, port) = s.rsplit_once(':')?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    Some((ip.parse().ok()?, port.parse().ok()?))
}

/// An unordered endpoint pair with the protocol: nDPI's client/server order can differ from
/// ours for captures that start mid-flow.
fn pair(proto: L4Proto, a: Ep, b: Ep) -> Pair {
    if a <= b { (proto, a, b) } else { (proto, b, a) }
}

/// nDPI prints names sanitised: a byte outside printable ASCII becomes '?', and characters
/// not allowed in host names (like the '*' of a wildcard query) become '_'. Tollgate keeps
/// the name as sent, escaping non-printable bytes as `\DDD` (zone-file style). Compare
/// after mapping ours the way nDPI does, case-insensitively.
fn same_name(ours: &str, ndpi: &str) -> bool {
    let mut mapped = String::with_capacity(ours.len());
    let b = ours.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\\'
            && b.get(i + 1..i + 4)
                .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
        {
            mapped.push('?');
            i += 4;
            continue;
        }
        let ok = c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b':');
        mapped.push(if ok { c as char } else { '_' });
        i += 1;
    }
    mapped.eq_ignore_ascii_case(ndpi)
}

#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    expected: usize,
    found: usize,
    missed: usize,
    wrong: usize,
    extra: usize,
}

#[test]
fn names_match_ndpi() {
    let Some(dir) = corpus_dir() else {
        eprintln!("SKIP names_match_ndpi: nDPI corpus not found (set TOLLGATE_CORPUS)");
        return;
    };
    let tsv = std::fs::read_to_string(dir.join("expected_sni.tsv")).expect("read expected_sni.tsv");
    // pcap -> (pair -> (kind, hostname))
    let mut expected: BTreeMap<String, HashMap<Pair, (String, String)>> = BTreeMap::new();
    for line in tsv.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (Some(pcap), Some(l4), Some(c), Some(s), Some(host), Some(kind)) = (
            cols.first(),
            cols.get(1),
            cols.get(2),
            cols.get(3),
            cols.get(5),
            cols.get(6),
        ) else {
            continue;
        };
        let proto = match *l4 {
            "TCP" => L4Proto::Tcp,
            "UDP" => L4Proto::Udp,
            _ => continue,
        };
        let (Some(c), Some(s)) = (parse_ep(c), parse_ep(s)) else {
            continue;
        };
        expected
            .entry(pcap.to_string())
            .or_default()
            .insert(pair(proto, c, s), (kind.to_string(), host.to_string()));
    }

    let mut pcaps: Vec<PathBuf> = std::fs::read_dir(dir.join("pcap"))
        .expect("list pcaps")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    pcaps.sort();
    assert_eq!(pcaps.len(), 65, "the corpus should hold 65 pcaps");

    let kinds = ["tls_sni", "quic_sni", "dns_qname", "http_host"];
    let mut tally: BTreeMap<&str, Tally> = kinds.iter().map(|k| (*k, Tally::default())).collect();
    let mut problems: Vec<String> = Vec::new();
    let mut extras: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut cache_named = 0usize;
    let mut total_packets = 0u64;
    for path in &pcaps {
        let fname = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let mut table = FlowTable::new(FlowTableLimits::default());
        let stats = import_pcap(path, &mut table).unwrap_or_else(|e| panic!("{e}"));
        total_packets += stats.packets;
        let recs: Vec<(FlowRecord, FlowMeta)> = table.records_with_meta().collect();
        let ours: HashMap<Pair, (&FlowRecord, &FlowMeta)> = recs
            .iter()
            .map(|(r, m)| (pair(r.proto, (r.src, r.sport), (r.dst, r.dport)), (r, m)))
            .collect();
        let exp = expected.get(&fname).cloned().unwrap_or_default();
        for (k, (kind, host)) in &exp {
            let Some(t) = tally.get_mut(kind.as_str()) else {
                continue;
            };
            t.expected += 1;
            let rec = ours.get(k);
            let other_query =
                rec.is_some_and(|(_, m)| m.dns_queries.iter().any(|q| same_name(q, host)));
            match rec.and_then(|(r, _)| r.name.as_deref()) {
                Some(n) if same_name(n, host) => t.found += 1,
                Some(n) if kind == "dns_qname" && other_query => {
                    t.found += 1;
                    notes.push(format!("NOTE  {fname} {kind} {k:?}: nDPI {host:?} is another query of the same flow; ours {n:?}"));
                }
                Some(n) => {
                    t.wrong += 1;
                    problems.push(format!(
                        "WRONG {fname} {kind} {k:?}: nDPI {host:?}, ours {n:?}"
                    ));
                }
                None => {
                    t.missed += 1;
                    let have = if ours.contains_key(k) {
                        "flow without name"
                    } else {
                        "no such flow"
                    };
                    problems.push(format!(
                        "MISS  {fname} {kind} {k:?}: nDPI {host:?} ({have})"
                    ));
                }
            }
        }
        let expected_pairs: HashSet<&Pair> = exp.keys().collect();
        for (k, (r, _)) in &ours {
            let Some(name) = r.name.as_deref() else {
                continue;
            };
            if expected_pairs.contains(k) {
                continue;
            }
            let dns_flow = r.sport == 53 || r.dport == 53;
            let kind = match r.name_source {
                Some(NameSource::Sni) => "tls_sni",
                Some(NameSource::Quic) => "quic_sni",
                Some(NameSource::Http) => "http_host",
                Some(NameSource::Dns) if dns_flow => "dns_qname",
                Some(NameSource::Dns) => {
                    cache_named += 1;
                    continue;
                }
                _ => continue,
            };
            if let Some(t) = tally.get_mut(kind) {
                t.extra += 1;
            }
            extras.push(format!("EXTRA {fname} {kind} {k:?}: {name:?}"));
        }
    }

    println!(
        "nDPI corpus: {} pcaps, {total_packets} TCP/UDP packets",
        pcaps.len()
    );
    println!(
        "{:<10} {:>8} {:>6} {:>6} {:>6} {:>6}",
        "kind", "expected", "found", "missed", "wrong", "extra"
    );
    for (k, t) in &tally {
        println!(
            "{k:<10} {:>8} {:>6} {:>6} {:>6} {:>6}",
            t.expected, t.found, t.missed, t.wrong, t.extra
        );
    }
    println!("flows named only through the DNS cache (nDPI has no equivalent): {cache_named}");
    println!("out of scope: other:MDNS/SSDP/DHCP/NetBIOS rows (24) are not compared");
    for n in &notes {
        println!("{n}");
    }
    for p in &problems {
        println!("{p}");
    }
    for e in &extras {
        println!("{e}");
    }

    let t = |k: &str| tally.get(k).copied().unwrap_or_default();
    for k in ["tls_sni", "dns_qname", "http_host"] {
        assert_eq!(t(k).missed, 0, "{k}: every name nDPI found must be found");
    }
    let q = t("quic_sni");
    assert!(
        q.found * 100 >= q.expected * 99,
        "quic: {}/{} found, need >= 99%",
        q.found,
        q.expected
    );
    let wrong: usize = tally.values().map(|t| t.wrong).sum();
    assert_eq!(wrong, 0, "no wrong names");
    assert!(
        t("tls_sni").expected > 200 && t("dns_qname").expected > 100,
        "expected_sni.tsv was read"
    );
}
