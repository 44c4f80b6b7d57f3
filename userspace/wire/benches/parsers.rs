//! Parser throughput on payloads from real captures (testdata/), with baselines measured in
//! the same run: a memchr count over the same bytes (a lower bound: touching every byte once)
//! and a copy of them into a fresh Vec.
//!
//! `cargo bench -p tollgate-wire --bench parsers` runs criterion (wall clock), then prints a
//! summary: parses per second of thread CPU time (per core, robust to a busy machine) and
//! the ratio to the baselines. `SUMMARY_ONLY=1` skips criterion.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cpu_time::ThreadTime;
use criterion::{Criterion, Throughput};
use tollgate_wire::{dns, tls};

fn data(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn scan(b: &[u8]) -> usize {
    // Counting every zero byte reads the whole buffer.
    memchr::memchr_iter(0, b).count()
}

fn tls_parse(b: &[u8]) -> bool {
    matches!(tls::parse_record_stream(b), Ok(tls::HelloStatus::Parsed(_)))
}

fn dns_parse(b: &[u8]) -> bool {
    dns::parse_message(b).is_ok()
}

/// Calls per second of `f` per core: counted against this thread's CPU time, not the wall
/// clock, so that other processes on a shared machine do not deflate it. Best of 5 runs of
/// ~200 ms of CPU time.
fn rate(mut f: impl FnMut() -> bool) -> f64 {
    let mut best = 0f64;
    for _ in 0..5 {
        let mut n = 0u64;
        let wall = Instant::now();
        let start = ThreadTime::now();
        while start.elapsed() < Duration::from_millis(200)
            && wall.elapsed() < Duration::from_secs(5)
        {
            for _ in 0..256 {
                black_box(f());
            }
            n += 256;
        }
        best = best.max(n as f64 / start.elapsed().as_secs_f64());
    }
    best
}

type Input = (&'static str, Vec<u8>, bool);

fn criterion_runs(inputs: &[Input]) {
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (label, b, is_tls) in inputs {
        let mut g = c.benchmark_group(*label);
        g.throughput(Throughput::Elements(1));
        if *is_tls {
            g.bench_function("parse", |x| x.iter(|| tls_parse(black_box(b))));
        } else {
            g.bench_function("parse", |x| x.iter(|| dns_parse(black_box(b))));
        }
        g.bench_function("baseline memchr scan", |x| x.iter(|| scan(black_box(b))));
        g.bench_function("baseline copy", |x| {
            x.iter(|| black_box(black_box(b).to_vec()))
        });
        g.finish();
    }
    c.final_summary();
}

fn main() {
    let inputs: [Input; 3] = [
        (
            "tls chrome hello 517 B",
            data("chrome_client_hello.bin"),
            true,
        ),
        (
            "tls post-quantum hello 1956 B",
            data("pq_client_hello.bin"),
            true,
        ),
        (
            "dns response with cnames",
            data("dns_response_cname.bin"),
            false,
        ),
    ];
    for (_, b, is_tls) in &inputs {
        assert!(if *is_tls { tls_parse(b) } else { dns_parse(b) });
    }
    // SUMMARY_ONLY=1 skips criterion's (wall-clock) runs.
    if std::env::var_os("SUMMARY_ONLY").is_none() {
        criterion_runs(&inputs);
    }

    println!(
        "\nsummary: parses per second of this thread's CPU time (per core), and parse time relative to the baselines on the same bytes"
    );
    for (label, b, is_tls) in &inputs {
        let p = if *is_tls {
            rate(|| tls_parse(black_box(b)))
        } else {
            rate(|| dns_parse(black_box(b)))
        };
        let s = rate(|| scan(black_box(b)) > 0);
        let cp = rate(|| !black_box(black_box(b).to_vec()).is_empty());
        let target = if *is_tls { 1.0e6 } else { 2.0e6 };
        println!(
            "{label:<32} {:>6.2} M/s (target {:.0} M/s: {})  parse costs {:>5.1}x a memchr scan, {:>5.1}x a copy",
            p / 1e6,
            target / 1e6,
            if p >= target { "met" } else { "NOT met" },
            s / p,
            cp / p
        );
    }
}
