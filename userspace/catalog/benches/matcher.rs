//! Catalog match speed: `cargo bench -p tollgate-catalog --bench matcher`.
//!
//! Builds a catalog of the shipped apps plus synthetic custom apps, about 30k domain rules in
//! all, and classifies a realistic mix of names (real SNI/DNS names from nDPI's captures when
//! the corpus is present, sub-domains of catalogued domains, and unknown names) on one thread.
//! The baseline, measured in the same run on the same names, is a linear scan over 1k rules
//! (longest matching rule wins). Prints lookups/s for both and the ratio, and the time to load
//! the shipped catalog.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tollgate_catalog::{Catalog, CatalogConfig, CustomApp};

const SYLLABLES: &[&str] = &[
    "ac", "bel", "cor", "dex", "en", "fin", "gra", "hub", "io", "jet", "kal", "lum", "mar", "nov",
    "or", "pix", "qua", "ros", "syn", "tor", "ul", "vox", "wav", "xen", "yor", "zen",
];
const TLDS: &[&str] = &["com", "io", "net", "co", "app", "ai", "de", "cloud"];
const HOSTS: &[&str] = &[
    "www",
    "api",
    "app",
    "cdn",
    "login",
    "static",
    "eu",
    "us-east-1",
];

/// A small deterministic generator (xorshift) so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % (u32::MAX as u64)).unwrap_or(0)
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.next() % v.len()]
    }
}

fn synthetic_domain(i: usize) -> String {
    let a = SYLLABLES[i % SYLLABLES.len()];
    let b = SYLLABLES[(i / SYLLABLES.len()) % SYLLABLES.len()];
    let c = SYLLABLES[(i / (SYLLABLES.len() * SYLLABLES.len())) % SYLLABLES.len()];
    let t = TLDS[(i / 7) % TLDS.len()];
    format!("{a}{b}{c}{i}.{t}")
}

fn corpus_names() -> Vec<String> {
    let dir = std::env::var_os("TOLLGATE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")
        });
    let Ok(text) = std::fs::read_to_string(dir.join("ndpi/expected_sni.tsv")) else {
        eprintln!("corpus not found: using synthetic names only");
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|l| l.split('\t').nth(5))
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect()
}

/// Longest-match linear scan: the baseline.
struct Linear {
    rules: Vec<(String, bool)>,
}
impl Linear {
    fn lookup(&self, name: &str) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for (i, (host, wildcard)) in self.rules.iter().enumerate() {
            let hit = if *wildcard {
                name.len() > host.len()
                    && name.ends_with(host.as_str())
                    && name.as_bytes().get(name.len() - host.len() - 1) == Some(&b'.')
            } else {
                name == host
            };
            let len = host.len() + usize::from(!*wildcard);
            if hit && best.is_none_or(|(_, l)| len > l) {
                best = Some((i, len));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// CPU time this thread has used (Linux /proc, in clock ticks of 10 ms), to report per-core
/// speed on a machine shared with other work; `None` elsewhere.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

#[derive(Clone, Copy)]
struct Timing {
    /// Fastest single run (wall clock).
    best_wall: Duration,
    /// CPU time of all runs together, and how many runs.
    cpu_total: Option<Duration>,
    runs: u32,
}

fn run(f: &mut impl FnMut() -> usize, t: &mut Timing) {
    let (start, c0) = (Instant::now(), thread_cpu());
    black_box(f());
    t.best_wall = t.best_wall.min(start.elapsed());
    t.runs += 1;
    t.cpu_total = match (t.cpu_total, c0, thread_cpu()) {
        (Some(total), Some(c0), Some(c1)) => Some(total + c1.saturating_sub(c0)),
        _ => None,
    };
}

/// Runs `a` and `b` alternately (so both see the same machine load), 9 times each.
fn measure_pair(mut a: impl FnMut() -> usize, mut b: impl FnMut() -> usize) -> (Timing, Timing) {
    let init = Timing {
        best_wall: Duration::MAX,
        cpu_total: thread_cpu().map(|_| Duration::ZERO),
        runs: 0,
    };
    let (mut ta, mut tb) = (init, init);
    for _ in 0..9 {
        run(&mut a, &mut ta);
        run(&mut b, &mut tb);
    }
    (ta, tb)
}

fn rate(lookups: usize, d: Duration) -> f64 {
    lookups as f64 / d.as_secs_f64()
}

fn main() {
    // Loading the shipped catalog.
    let t = Instant::now();
    let builtin = Catalog::builtin(chrono::Utc::now()).expect("shipped catalog");
    let load = t.elapsed();
    println!(
        "load shipped catalog: {} apps, {} rules in {:.2} ms",
        builtin.len(),
        builtin.domain_rule_count(),
        load.as_secs_f64() * 1e3
    );

    // ~30k rules: the shipped ones plus synthetic apps with an exact and a wildcard rule per
    // domain.
    let target = 30_000usize;
    let need = target.saturating_sub(builtin.domain_rule_count());
    let per_app = 10usize; // 5 domains x (exact + wildcard)
    let mut custom = Vec::new();
    let mut d = 0usize;
    for a in 0..need.div_ceil(per_app) {
        let domains: Vec<String> = (0..per_app / 2)
            .flat_map(|_| {
                d += 1;
                let dom = synthetic_domain(d);
                [dom.clone(), format!("*.{dom}")]
            })
            .collect();
        custom.push(CustomApp {
            id: format!("bench-app-{a}"),
            name: format!("Bench App {a}"),
            vendor: None,
            category: "Productivity".into(),
            domains,
            ip_ranges: Vec::new(),
            attributes: Default::default(),
            risk_score: None,
            risk_note: None,
        });
    }
    let cat = Catalog::from_config(&CatalogConfig::default(), &custom, chrono::Utc::now())
        .expect("bench catalog");
    let rules: Vec<(String, bool)> = cat
        .apps()
        .flat_map(|a| a.domains.iter())
        .map(|r| match r.strip_prefix("*.") {
            Some(h) => (h.to_string(), true),
            None => (r.clone(), false),
        })
        .collect();
    println!(
        "bench catalog: {} apps, {} domain rules",
        cat.len(),
        cat.domain_rule_count()
    );

    // Names: real corpus names, sub-domains of catalogued rules (hits), unknown names (misses).
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut names = corpus_names();
    let real = names.len();
    while names.len() < real + 6_000 {
        let (host, wildcard) = &rules[rng.next() % rules.len()];
        let name = if *wildcard {
            format!("{}.{host}", rng.pick(HOSTS))
        } else {
            host.clone()
        };
        names.push(name);
    }
    for i in 0..2_000 {
        names.push(format!("{}.unknown-{i}.example.org", rng.pick(HOSTS)));
    }
    let total = names.len();
    let rounds = 200usize;
    let lookups = total * rounds;

    let hits = names
        .iter()
        .filter(|n| cat.classify_name(n).is_some())
        .count();
    println!(
        "names: {total} ({real} from nDPI captures, {} generated; {:.0}% classified)",
        total - real,
        100.0 * hits as f64 / total as f64
    );

    let ours = || {
        let mut n = 0usize;
        for _ in 0..rounds {
            for name in &names {
                n += usize::from(black_box(cat.classify_name(black_box(name))).is_some());
            }
        }
        n
    };

    // Baseline: 1k rules, fewer rounds (it is slow), same names.
    let step = rules.len() / 1000;
    let linear = Linear {
        rules: rules
            .iter()
            .step_by(step.max(1))
            .take(1000)
            .cloned()
            .collect(),
    };
    let base_rounds = 10usize;
    let baseline = || {
        let mut n = 0usize;
        for _ in 0..base_rounds {
            for name in &names {
                n += usize::from(black_box(linear.lookup(black_box(name))).is_some());
            }
        }
        n
    };
    let (ours_t, base_t) = measure_pair(ours, baseline);
    let base_lookups = total * base_rounds;
    let (ours, base) = (
        rate(lookups, ours_t.best_wall),
        rate(base_lookups, base_t.best_wall),
    );

    println!(
        "catalog.classify_name ({} rules): {:.2} M lookups/s ({:.0} ns/lookup)",
        cat.domain_rule_count(),
        ours / 1e6,
        1e9 / ours
    );
    println!(
        "baseline linear scan ({} rules):  {:.3} M lookups/s ({:.0} ns/lookup)",
        linear.rules.len(),
        base / 1e6,
        1e9 / base
    );
    println!(
        "ratio: {:.0}x the baseline (with 30x more rules)",
        ours / base
    );
    if let (Some(oc), Some(bc)) = (ours_t.cpu_total, base_t.cpu_total)
        && !oc.is_zero()
        && !bc.is_zero()
    {
        let oc = rate(lookups * ours_t.runs as usize, oc);
        let bc = rate(base_lookups * base_t.runs as usize, bc);
        println!(
            "per core (thread CPU time over all runs; time other processes held the core not \
             counted): catalog {:.2} M lookups/s, baseline {:.3} M lookups/s, ratio {:.0}x",
            oc / 1e6,
            bc / 1e6,
            oc / bc
        );
    }
}
