//! Sharded capture import benchmark: one large capture imported on one thread, then on N
//! (`pcap::import_pcap_threads`), in the same run; prints the wall time of each, the ratio,
//! and whether the records are the same.
//!
//! ```text
//! # a ~142 MB capture: 25 address-shifted copies of the nDPI corpus
//! python3 -c 'import sys; sys.path.insert(0, "tests/bench/peer"); import ndpi_bench as b, glob; \
//!   b.write_merged(sorted(glob.glob("../shared/corpus/ndpi/pcap/*.pcap")), "/tmp/merged25.pcap", copies=25)'
//! cargo build --release -p tollgate-discovery --example pcap_threads
//! target/release/examples/pcap_threads /tmp/merged25.pcap 2
//! # the peak RSS of one setting alone: --only
//! /usr/bin/time -v target/release/examples/pcap_threads /tmp/merged25.pcap 1 --only
//! /usr/bin/time -v target/release/examples/pcap_threads /tmp/merged25.pcap 2 --only
//! ```
//!
//! The file is read once before the runs, so both find it in the page cache. Example
//! binaries may panic on bad arguments: this is a developer tool.

use std::path::PathBuf;
use std::time::Instant;

use cpu_time::ProcessTime;

use tollgate_discovery::flow_table::FlowTableLimits;
use tollgate_discovery::pcap::{PcapStats, import_pcap_threads_from};
use tollgate_discovery::record::FlowRecord;

/// Wall seconds and process CPU seconds of one import.
fn run(path: &std::path::Path, threads: usize) -> (PcapStats, Vec<FlowRecord>, f64, f64) {
    let t = Instant::now();
    let cpu = ProcessTime::now();
    let mut v = Vec::new();
    // Threshold 0: the thread count alone decides.
    let s = import_pcap_threads_from(path, &FlowTableLimits::default(), threads, 0, &mut |r| {
        v.push(r)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu.elapsed().as_secs_f64();
    v.sort_by_cached_key(|r| format!("{r:?}"));
    (s, v, secs, cpu)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = PathBuf::from(args.first().expect("usage: pcap_threads FILE [N] [--only]"));
    let n: usize = args.get(1).map_or(2, |a| a.parse().expect("N"));
    let only = args.iter().any(|a| a == "--only");
    let size = std::fs::metadata(&path).expect("file").len();
    // Into the page cache (in chunks: the peak RSS is the import's).
    let mut f = std::fs::File::open(&path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    while std::io::Read::read(&mut f, &mut buf).expect("read") > 0 {}
    drop((f, buf));
    if only {
        let (s, v, secs, cpu) = run(&path, n);
        println!(
            "{n} thread(s): {secs:.3} s ({cpu:.3} s CPU), {:.1} MB/s, {} frames, {} records",
            size as f64 / 1e6 / secs,
            s.frames,
            v.len()
        );
        return;
    }
    let (s1, v1, t1, c1) = run(&path, 1);
    println!(
        "1 thread:   {t1:.3} s ({c1:.3} s CPU), {:.1} MB/s, {} frames, {} records",
        size as f64 / 1e6 / t1,
        s1.frames,
        v1.len()
    );
    let (sn, vn, tn, cn) = run(&path, n);
    println!(
        "{n} threads:  {tn:.3} s ({cn:.3} s CPU), {:.1} MB/s, {} frames, {} records",
        size as f64 / 1e6 / tn,
        sn.frames,
        vn.len()
    );
    println!("speed-up:   {:.2}x (wall time, 1 thread / {n})", t1 / tn);
    println!("identical:  stats {}, records {}", s1 == sn, v1 == vn);
}
