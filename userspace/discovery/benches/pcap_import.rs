//! Offline discovery speed: every corpus pcap (`<corpus>/ndpi/pcap`, held in memory so disk
//! does not count) through pcap reading, L2-L4 decoding, the flow table and the parsers,
//! against a baseline measured in the same run: reading the same captures with pcap-file
//! alone (no decoding). Prints frames per second of this thread's CPU time (per core, so a
//! busy shared machine does not deflate it) and the ratio.
//!
//! `cargo bench -p tollgate-discovery --bench pcap_import`

use cpu_time::ThreadTime;
use std::path::PathBuf;

use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::PcapNgParser;
use tollgate_discovery::flow_table::{FlowTable, FlowTableLimits};
use tollgate_discovery::pcap::import_bytes;

#[path = "../tests/common/mod.rs"]
mod common;
use common::ndpi_pcap_dir as corpus;

fn read_only(files: &[(PathBuf, Vec<u8>)]) -> u64 {
    let mut n = 0;
    for (_, b) in files {
        if b.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) {
            let Ok((mut rest, mut p)) = PcapNgParser::new(b) else {
                continue;
            };
            while let Ok((r, blk)) = p.next_block(rest) {
                std::hint::black_box(&blk);
                rest = r;
                n += 1;
            }
        } else {
            let Ok((mut rest, p)) = PcapParser::new(b) else {
                continue;
            };
            while let Ok((r, pkt)) = p.next_packet(rest) {
                std::hint::black_box(&pkt);
                rest = r;
                n += 1;
            }
        }
    }
    n
}

fn full(files: &[(PathBuf, Vec<u8>)]) -> (u64, usize) {
    let mut frames = 0;
    let mut named = 0;
    for (p, b) in files {
        let mut t = FlowTable::new(FlowTableLimits::default());
        if let Ok(s) = import_bytes(p, b, &mut t) {
            frames += s.frames;
        }
        named += t.records().filter(|r| r.name.is_some()).count();
    }
    (frames, named)
}

fn main() {
    let Some(dir) = corpus() else {
        println!("SKIP pcap_import bench: corpus not found (set TOLLGATE_CORPUS)");
        return;
    };
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect();
    files.sort();
    let reps = std::env::var("REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7u32);
    let (mut best_full, mut best_read) = (f64::MAX, f64::MAX);
    let (mut frames, mut named) = (0, 0);
    let mut ratios = Vec::new();
    for _ in 0..reps {
        // Alternate the two measurements and pair them per repetition.
        let t = ThreadTime::now();
        std::hint::black_box(read_only(&files));
        let r = t.elapsed().as_secs_f64();
        let t = ThreadTime::now();
        (frames, named) = std::hint::black_box(full(&files));
        let f = t.elapsed().as_secs_f64();
        best_full = best_full.min(f);
        best_read = best_read.min(r);
        ratios.push(f / r);
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios.get(ratios.len() / 2).copied().unwrap_or(0.0);
    println!(
        "{} pcaps, {frames} frames, {named} named flows per pass; best of {reps}:",
        files.len()
    );
    println!(
        "  read only (pcap-file)      {:>8.2} M frames/s",
        frames as f64 / best_read / 1e6
    );
    println!(
        "  import + flow table + DPI  {:>8.2} M frames/s",
        frames as f64 / best_full / 1e6
    );
    println!("  full import costs {median:.2}x reading alone (median of paired runs)");
}
