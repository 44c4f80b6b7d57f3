//! Log import benchmark (Squid native).
//!
//! ```text
//! # 1. make a large synthetic log from the corpus lines (varied client IPs and hosts)
//! cargo run --release -p tollgate-logs --example log_bench -- generate /tmp/squid-2g.log 2048
//! # 2. measure (single thread); wrap in /usr/bin/time -v for the max RSS
//! /usr/bin/time -v target/release/examples/log_bench run /tmp/squid-2g.log
//! ```
//!
//! `run` first times `wc -l` over the same file (the baseline, also warming the page
//! cache), then Tollgate's import alone (parse every line into a FlowRecord), then import
//! plus classification and aggregation with the shipped catalog. It prints MB/s for each
//! and the ratio to `wc -l`. Everything runs on one thread, so MB/s is per core.
//!
//! Read the file once just before timing (`cat FILE > /dev/null`): on a machine that reclaims
//! idle memory (DAMON `pageout`, as on these VMs) a file left alone drops out of the page
//! cache, and the next run pays the disk read in CPU time. Compare builds in one run.
//!
//! Example binaries may panic on bad arguments: this is a developer tool.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use tollgate_catalog::Catalog;
use tollgate_discovery::aggregate::{AggregateOptions, Aggregator};
use tollgate_discovery::users::Users;
use tollgate_logs::{LogOptions, import_file};

/// Used when the corpus is not there: lines in Squid's native format.
const FALLBACK: &[&str] = &[
    "1764144000.120    312 192.0.2.10 TCP_TUNNEL/200 48211 CONNECT www.dropbox.com:443 alice HIER_DIRECT/198.51.100.7 -",
    "1764144003.455     88 192.0.2.11 TCP_MISS/200 1534 GET http://slack.com/robots.txt - HIER_DIRECT/198.51.100.8 text/plain",
    "1764144010.002      0 192.0.2.12 TCP_DENIED/407 3900 CONNECT drive.google.com:443 - HIER_NONE/- text/html",
];

const HOSTS: &[&str] = &[
    "www.dropbox.com",
    "app.slack.com",
    "drive.google.com",
    "outlook.office365.com",
    "teams.microsoft.com",
    "www.youtube.com",
    "web.whatsapp.com",
    "chat.openai.com",
    "github.com",
    "www.salesforce.com",
    "zoom.us",
    "www.box.com",
    "www.linkedin.com",
    "www.facebook.com",
    "api.notion.so",
    "www.canva.com",
];

fn corpus_lines() -> Vec<String> {
    let base = std::env::var_os("TOLLGATE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"));
    let p = base.join("logs/squid_native.log");
    match std::fs::read_to_string(&p) {
        Ok(t) => t
            .lines()
            .filter(|l| l.split_ascii_whitespace().count() >= 10 && !l.contains('['))
            .map(str::to_owned)
            .collect(),
        Err(_) => FALLBACK.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// A small xorshift generator: reproducible files without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn generate(path: &Path, mb: u64) {
    let templates = corpus_lines();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out =
        BufWriter::with_capacity(1 << 20, std::fs::File::create(path).expect("create output"));
    let target = mb * 1024 * 1024;
    let mut written = 0u64;
    let mut ts = 1_764_144_000u64 * 1000;
    while written < target {
        let t = &templates[(rng.next() % templates.len() as u64) as usize];
        let f: Vec<&str> = t.split_ascii_whitespace().collect();
        ts += rng.next() % 50;
        let r = rng.next();
        let client = format!(
            "10.{}.{}.{}",
            (r >> 8) % 4,
            (r >> 16) % 40,
            1 + (r >> 24) % 250
        );
        let host = if r.is_multiple_of(3) {
            // Unknown hosts: 20k distinct registrable domains.
            format!("cdn{}.site{}.example", (r >> 32) % 7, (r >> 40) % 20_000)
        } else {
            HOSTS[((r >> 32) % HOSTS.len() as u64) as usize].to_owned()
        };
        let method = f[5];
        let url = if method == "CONNECT" {
            format!("{host}:443")
        } else {
            let path = f[6].splitn(4, '/').nth(3).unwrap_or("");
            format!("http://{host}/{path}")
        };
        let line = format!(
            "{}.{:03} {:>6} {} {} {} {} {} {} {} {}\n",
            ts / 1000,
            ts % 1000,
            f[1],
            client,
            f[3],
            f[4],
            method,
            url,
            f[7],
            f[8],
            f.get(9).unwrap_or(&"-")
        );
        out.write_all(line.as_bytes()).expect("write");
        written += line.len() as u64;
    }
    out.flush().expect("flush");
    println!(
        "wrote {} MiB to {}",
        written / (1024 * 1024),
        path.display()
    );
}

fn mbs(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

fn run(path: &Path) {
    let size = std::fs::metadata(path).expect("input").len();
    println!("file {} ({:.1} MB)", path.display(), size as f64 / 1e6);

    let t = Instant::now();
    let wc = Command::new("wc")
        .arg("-l")
        .arg(path)
        .output()
        .expect("wc -l");
    let wc_s = t.elapsed().as_secs_f64();
    let wc_lines: u64 = String::from_utf8_lossy(&wc.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    println!(
        "wc -l:                    {wc_lines} lines in {wc_s:.2} s = {:.0} MB/s (baseline)",
        mbs(size, wc_s)
    );

    // Plain line reading in Rust, a second baseline.
    let t = Instant::now();
    let mut r = BufReader::with_capacity(256 * 1024, std::fs::File::open(path).expect("open"));
    let mut buf = Vec::new();
    let mut n = 0u64;
    while r.read_until(b'\n', &mut buf).expect("read") > 0 {
        n += 1;
        buf.clear();
    }
    let rd_s = t.elapsed().as_secs_f64();
    println!(
        "BufRead::read_until:      {n} lines in {rd_s:.2} s = {:.0} MB/s",
        mbs(size, rd_s)
    );

    let opts = LogOptions {
        force_format: None,
        ..LogOptions::default()
    };
    let (t, c) = (Instant::now(), cpu_secs());
    let mut recs = 0u64;
    let mut bytes = 0u64;
    let st = import_file(path, &opts, &mut |rec| {
        recs += 1;
        bytes = bytes.wrapping_add(rec.bytes_down);
    })
    .expect("import");
    let (imp_s, imp_cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - c);
    println!(
        "tollgate import:          {} lines ({} records, {} unparsed, format {}) in {imp_s:.2} s = {:.0} MB/s ({imp_cpu:.2} s CPU = {:.0} MB/s per core), {:.2}x wc -l time",
        st.lines,
        recs,
        st.unparsed,
        st.format,
        mbs(size, imp_s),
        mbs(size, imp_cpu),
        imp_s / wc_s
    );

    let catalog = Catalog::builtin(chrono::Utc::now()).expect("catalog");
    let users = Users::default();
    let mut agg = Aggregator::new(AggregateOptions::default());
    let (t, c) = (Instant::now(), cpu_secs());
    let st = import_file(path, &opts, &mut |rec| agg.add(&rec, &catalog, &users)).expect("import");
    let (agg_s, agg_cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - c);
    let snap = agg.snapshot(&catalog, &|_| None);
    println!(
        "tollgate import+classify+aggregate: {} lines in {agg_s:.2} s = {:.0} MB/s ({agg_cpu:.2} s CPU = {:.0} MB/s per core), {:.2}x wc -l time; {} apps, {} unknown domains kept, {} dropped",
        st.lines,
        mbs(size, agg_s),
        mbs(size, agg_cpu),
        agg_s / wc_s,
        snap.apps.len(),
        snap.unknown_domains.len(),
        snap.totals.unknown_domains_dropped
    );
    let gb_h = |s: f64| size as f64 / 1e9 / s * 3600.0;
    println!(
        "per core (CPU time): import {:.0} GB/hour, import+aggregate {:.0} GB/hour; Defender's log collector is rated 50 GB/hour -> {:.1}x / {:.1}x",
        gb_h(imp_cpu),
        gb_h(agg_cpu),
        gb_h(imp_cpu) / 50.0,
        gb_h(agg_cpu) / 50.0
    );
    std::hint::black_box(bytes);
    parallel(path);
}

/// CPU time of this process so far (user + system), from /proc: with other work on the
/// machine, wall-clock MB/s understates what one core does.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is index 0, utime 11, stime 12; USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// Import only (for perf and for the max RSS of the importer alone).
fn import_only(path: &Path) {
    let size = std::fs::metadata(path).expect("input").len();
    let (t, c) = (Instant::now(), cpu_secs());
    let mut recs = 0u64;
    let st = import_file(path, &LogOptions::default(), &mut |_rec| recs += 1).expect("import");
    let (wall, cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - c);
    println!(
        "tollgate import: {} lines, {recs} records in {wall:.2} s wall ({:.0} MB/s), {cpu:.2} s CPU ({:.0} MB/s per core)",
        st.lines,
        mbs(size, wall),
        mbs(size, cpu)
    );
}

/// Import + classify + aggregate only (for perf and the RSS of the whole offline path).
fn aggregate_only(path: &Path) {
    let size = std::fs::metadata(path).expect("input").len();
    let catalog = Catalog::builtin(chrono::Utc::now()).expect("catalog");
    let users = Users::default();
    let mut agg = Aggregator::new(AggregateOptions::default());
    let (t, c) = (Instant::now(), cpu_secs());
    let st = import_file(path, &LogOptions::default(), &mut |rec| {
        agg.add(&rec, &catalog, &users)
    })
    .expect("import");
    let (wall, cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - c);
    let snap = agg.snapshot(&catalog, &|_| None);
    println!(
        "tollgate import+classify+aggregate: {} lines in {wall:.2} s wall ({:.0} MB/s), {cpu:.2} s CPU ({:.0} MB/s per core); {} apps, {} unknown domains",
        st.lines,
        mbs(size, wall),
        mbs(size, cpu),
        snap.apps.len(),
        snap.unknown_domains.len()
    );
}

/// `tollgate discover`'s path (parts on threads, one aggregator per part, merged), with
/// `threads` threads (0: one per core), in a process of its own so that its peak RSS is its
/// own. Prints one line: wall seconds, CPU seconds, peak RSS in KiB.
fn discover_only(path: &Path, threads: usize) {
    use tollgate_logs::discover::{DiscoverOptions, discover};
    let catalog = Catalog::builtin(chrono::Utc::now()).expect("catalog");
    let users = Users::default();
    let opts = DiscoverOptions {
        threads,
        ..DiscoverOptions::default()
    };
    let (t, c) = (Instant::now(), cpu_secs());
    let report = discover(&[path.to_owned()], &opts, &catalog, &users);
    let (wall, cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - c);
    std::hint::black_box(&report);
    println!("{wall:.3} {cpu:.3} {}", peak_rss_kib());
}

/// VmHWM of this process, KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs `discover_only` in a child process; (wall s, CPU s, peak RSS MiB).
fn discover_child(path: &Path, threads: usize) -> (f64, f64, f64) {
    let out = Command::new(std::env::current_exe().expect("own path"))
        .arg("discover")
        .arg(path)
        .arg(threads.to_string())
        .output()
        .expect("run discover child");
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<f64> = text
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    match f.as_slice() {
        [w, c, r] => (*w, *c, *r / 1024.0),
        _ => panic!("discover child printed {text:?}"),
    }
}

/// `tollgate discover` on one thread (the baseline) and on every core.
fn parallel(path: &Path) {
    let size = std::fs::metadata(path).expect("input").len();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let (w1, c1, r1) = discover_child(path, 1);
    println!(
        "discover, 1 thread:       {w1:.2} s wall = {:.0} MB/s, {c1:.2} s CPU = {:.0} MB/s per core, peak RSS {r1:.0} MiB (baseline)",
        mbs(size, w1),
        mbs(size, c1)
    );
    let (wn, cn, rn) = discover_child(path, 0);
    println!(
        "discover, {cores} threads:      {wn:.2} s wall = {:.0} MB/s, {cn:.2} s CPU = {:.0} MB/s per core, peak RSS {rn:.0} MiB; {:.2}x the 1-thread speed",
        mbs(size, wn),
        mbs(size, cn),
        w1 / wn
    );
    println!(
        "a 2 GB (2^31 bytes) log at this speed: {:.1} s wall",
        (1u64 << 31) as f64 / (size as f64 / wn)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("generate") => {
            let path = PathBuf::from(args.get(2).expect("generate PATH MB"));
            let mb = args.get(3).and_then(|m| m.parse().ok()).unwrap_or(2048);
            generate(&path, mb);
        }
        Some("run") => run(Path::new(args.get(2).expect("run PATH"))),
        Some("import") => import_only(Path::new(args.get(2).expect("import PATH"))),
        Some("aggregate") => aggregate_only(Path::new(args.get(2).expect("aggregate PATH"))),
        Some("discover") => discover_only(
            Path::new(args.get(2).expect("discover PATH [THREADS]")),
            args.get(3).and_then(|t| t.parse().ok()).unwrap_or(0),
        ),
        Some("parallel") => parallel(Path::new(args.get(2).expect("parallel PATH"))),
        _ => eprintln!("usage: log_bench generate PATH MB | log_bench run PATH"),
    }
}
