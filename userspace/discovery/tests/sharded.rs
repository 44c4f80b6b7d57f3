//! The sharded capture import (`pcap::import_pcap_threads`, several worker threads with a
//! flow table each) gives exactly what one thread and one flow table give: the same flow
//! records (names from DNS answers included) and the same capture stats, with 2, 3 and 8
//! threads, on the repo's own captures and (when present) the nDPI corpus, one by one and
//! merged into one long capture whose flows go idle and are swept out. The threshold is
//! forced to 0 so that small files take the threaded path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tollgate_discovery::flow_table::{FlowTable, FlowTableLimits};
use tollgate_discovery::pcap::{PcapStats, import_pcap, import_pcap_threads_from};
use tollgate_discovery::record::FlowRecord;

const THREADS: [usize; 3] = [2, 3, 8];

fn own_captures() -> Vec<PathBuf> {
    list(&Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/pcap"))
}

mod common;
use common::ndpi_pcap_dir as corpus;

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    v.sort();
    v
}

/// Records in a fixed order (a table gives them in hash order).
fn sorted(mut v: Vec<FlowRecord>) -> Vec<FlowRecord> {
    v.sort_by_cached_key(|r| format!("{r:?}"));
    v
}

fn single(path: &Path, limits: &FlowTableLimits) -> (PcapStats, Vec<FlowRecord>) {
    let mut t = FlowTable::new(limits.clone());
    let s = import_pcap(path, &mut t).unwrap_or_else(|e| panic!("{e}"));
    (s, sorted(t.records().collect()))
}

fn threaded(path: &Path, limits: &FlowTableLimits, threads: usize) -> (PcapStats, Vec<FlowRecord>) {
    let mut v = Vec::new();
    let s = import_pcap_threads_from(path, limits, threads, 0, &mut |r| v.push(r))
        .unwrap_or_else(|e| panic!("{e}"));
    (s, sorted(v))
}

/// Every file, every thread count: the whole output equals the single-threaded one.
fn same_everywhere(files: &[PathBuf], limits: &FlowTableLimits) {
    assert!(!files.is_empty());
    for f in files {
        let want = single(f, limits);
        for n in THREADS {
            let got = threaded(f, limits, n);
            assert_eq!(got.0, want.0, "{} with {n} threads: stats", f.display());
            if got.1 != want.1 {
                let diff: Vec<_> = got
                    .1
                    .iter()
                    .filter(|r| !want.1.contains(r))
                    .take(5)
                    .collect();
                panic!(
                    "{} with {n} threads: {} records, want {}; first not in the single import: {diff:#?}",
                    f.display(),
                    got.1.len(),
                    want.1.len()
                );
            }
        }
    }
}

/// Limits that make the table-wide decisions happen in small captures: a full table swept
/// for idle flows and refusing new ones, flows going idle within seconds.
fn tight() -> FlowTableLimits {
    FlowTableLimits {
        max_flows: 12,
        idle_timeout: Duration::from_secs(2),
        ..FlowTableLimits::default()
    }
}

/// Flows going idle within seconds in a table that never fills: the shards sweep at the
/// same packets as the single table, and the result is theirs (no fallback to one thread).
fn short_idle() -> FlowTableLimits {
    FlowTableLimits {
        idle_timeout: Duration::from_secs(2),
        ..FlowTableLimits::default()
    }
}

/// A reassembly budget this small runs out: the shards see it and the capture is imported
/// again on one thread, with the same result.
fn small_budget() -> FlowTableLimits {
    FlowTableLimits {
        max_buffered_bytes: 3000,
        ..FlowTableLimits::default()
    }
}

#[test]
fn own_captures_same_as_one_thread() {
    let files = own_captures();
    assert!(files.len() >= 4, "{files:?}");
    for limits in [
        FlowTableLimits::default(),
        short_idle(),
        tight(),
        small_budget(),
    ] {
        same_everywhere(&files, &limits);
    }
}

#[test]
fn ndpi_corpus_same_as_one_thread() {
    let Some(dir) = corpus() else {
        eprintln!("skipped: no nDPI corpus (set TOLLGATE_CORPUS or put it in ../shared/corpus)");
        return;
    };
    let files = list(&dir);
    for limits in [FlowTableLimits::default(), short_idle(), tight()] {
        same_everywhere(&files, &limits);
    }
}

/// The classic Ethernet captures of `files` concatenated into one pcap, `copies` times over,
/// each starting `gap` seconds after the previous one ended: flows of one file are idle (and
/// swept out, when a sweep comes) by the time the next file's or copy's packets, often on
/// the same addresses, arrive; DNS answers of one file may name flows of a later one.
fn merged(files: &[PathBuf], copies: usize, gap: u64, out: &Path) -> usize {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
    let header = PcapHeader {
        snaplen: 262_144,
        ..PcapHeader::default()
    };
    let mut w = PcapWriter::with_header(std::fs::File::create(out).expect("create"), header)
        .expect("header");
    let mut cursor = Duration::from_secs(1_600_000_000);
    let mut n = 0;
    for f in files.iter().cycle().take(files.len() * copies) {
        let Ok(mut r) = PcapReader::new(std::fs::File::open(f).expect("open")) else {
            continue; // pcapng
        };
        if r.header().datalink != pcap_file::DataLink::ETHERNET {
            continue;
        }
        let mut first = None;
        let mut last = cursor;
        while let Some(Ok(p)) = r.next_packet() {
            let start = *first.get_or_insert(p.timestamp);
            let ts = cursor + p.timestamp.saturating_sub(start);
            last = last.max(ts);
            w.write_packet(&PcapPacket::new(ts, p.orig_len, &p.data))
                .expect("write");
            n += 1;
        }
        cursor = last + Duration::from_secs(gap);
    }
    n
}

#[test]
fn merged_corpus_same_as_one_thread() {
    let Some(dir) = corpus() else {
        eprintln!("skipped: no nDPI corpus (set TOLLGATE_CORPUS or put it in ../shared/corpus)");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut files = own_captures();
    files.extend(list(&dir));
    let out = tmp.path().join("merged.pcap");
    let packets = merged(&files, 4, 700, &out);
    assert!(
        packets > 8192 * 3,
        "{packets} packets: too few for periodic sweeps"
    );
    for limits in [FlowTableLimits::default(), short_idle(), tight()] {
        same_everywhere(std::slice::from_ref(&out), &limits);
    }
}

/// Below the threshold the single-threaded path is taken: same result, whatever `threads`.
#[test]
fn small_file_under_the_threshold() {
    for f in own_captures() {
        let want = single(&f, &FlowTableLimits::default());
        let mut v = Vec::new();
        let s = tollgate_discovery::pcap::import_pcap_threads(
            &f,
            &FlowTableLimits::default(),
            4,
            &mut |r| v.push(r),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s, sorted(v)), want, "{}", f.display());
    }
}
