//! Append+sync throughput of the upload spool against plain `write` + `fsync` of the same
//! bytes (no framing, no CRC, no encoding), measured in the same run on the same disk.
//!
//! `cargo run --release -p tollgate-sync --example spool_bench [dir]`
//!
//! Each record is a typical discovery interval: 20 app rows. Two cadences: a sync after
//! every record (the worst case) and a sync per batch of 100 records.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use tollgate_sync::protocol::{AppUsage, DiscoveryInterval, RecordBody, UploadRecord};
use tollgate_sync::spool::{Spool, SpoolConfig};

fn interval(n: u64) -> RecordBody {
    RecordBody::Discovery(DiscoveryInterval {
        start: 1_700_000_000 + n as i64 * 60,
        end: 1_700_000_060 + n as i64 * 60,
        apps: (0..20u64)
            .map(|r| AppUsage {
                app_id: format!("app-{}", (n + r) % 97),
                user: format!("user{r}@corp.example"),
                device: format!("10.0.0.{r}"),
                bytes_up: n * 1000 + r,
                bytes_down: n * 7000 + r,
                flows: n + 1,
                blocked_flows: n % 3,
            })
            .collect(),
        unknown_domains: vec![],
    })
}

fn spool_run(dir: &Path, records: u64, batch: u64) -> Duration {
    let _ = fs::remove_dir_all(dir);
    let mut cfg = SpoolConfig::new(dir);
    cfg.max_bytes = 1 << 30;
    let mut spool = Spool::open(cfg).expect("open spool");
    let bodies: Vec<RecordBody> = (0..records).map(interval).collect();
    let t = Instant::now();
    for (i, body) in bodies.into_iter().enumerate() {
        spool.append(i as i64, body).expect("append");
        if (i as u64 + 1).is_multiple_of(batch) {
            spool.sync().expect("sync");
        }
    }
    spool.sync().expect("sync");
    t.elapsed()
}

/// The same payload bytes (what postcard makes of each record), appended to one file with
/// an fsync at the same cadence.
fn baseline_run(dir: &Path, records: u64, batch: u64) -> Duration {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).expect("mkdir");
    let payloads: Vec<Vec<u8>> = (0..records)
        .map(|n| {
            postcard::to_allocvec(&UploadRecord {
                seq: n + 1,
                recorded_at: n as i64,
                body: interval(n),
            })
            .expect("encode")
        })
        .collect();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("plain"))
        .expect("open");
    let t = Instant::now();
    for (i, p) in payloads.iter().enumerate() {
        file.write_all(p).expect("write");
        if (i as u64 + 1).is_multiple_of(batch) {
            file.sync_data().expect("fsync");
        }
    }
    file.sync_data().expect("fsync");
    t.elapsed()
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("tollgate-spool-bench"));
    let size = postcard::to_allocvec(&UploadRecord {
        seq: 1,
        recorded_at: 0,
        body: interval(1),
    })
    .map(|v| v.len())
    .unwrap_or(0);
    println!("record: DiscoveryInterval with 20 AppUsage rows, {size} bytes encoded");
    for (records, batch) in [(2_000u64, 1u64), (50_000, 100)] {
        // Alternate, best of three each, so both see the same disk state.
        let mut spool_best = Duration::MAX;
        let mut base_best = Duration::MAX;
        for _ in 0..3 {
            spool_best = spool_best.min(spool_run(&root.join("spool"), records, batch));
            base_best = base_best.min(baseline_run(&root.join("base"), records, batch));
        }
        let spool_rate = records as f64 / spool_best.as_secs_f64();
        let base_rate = records as f64 / base_best.as_secs_f64();
        println!(
            "sync every {batch:>3} record(s): spool {spool_rate:>10.0} records/s, \
             write+fsync baseline {base_rate:>10.0} records/s, ratio {:.2}",
            spool_rate / base_rate
        );
    }
    let _ = fs::remove_dir_all(&root);
}
