//! Load generator: simulated gateways (not daemons) against one `tollgate-hub` process.
//!
//! It starts the hub (`--hub BIN`, default `target/release/tollgate-hub`) on a fresh state
//! dir and the given database, enrolls one gateway identity, then:
//! 1. opens `--gateways N` long polls with that identity (each its own TLS connection), and
//!    measures the hub's RSS before and after (memory per held poll);
//! 2. publishes a bundle with the CLI (another process: the hub notices it within its 1 s
//!    database check, which the figures include) and measures, per simulated gateway, the
//!    time from publish until it received the bundle and the hub acknowledged its `Applied`
//!    report; prints p50/p99/max;
//! 3. uploads `--records M` discovery records in batches of `--batch B` from `--uploaders U`
//!    concurrent connections and prints records/s stored (acknowledged after commit).
//!
//! Each figure comes with a baseline measured in the same run, printed as a ratio: the
//! publish p99 against one gateway alone (step 0, before the held polls), the ingest rate
//! against the database alone storing the same rows in the same batches (step 4, after the
//! hub stopped).
//!
//! `cargo build --release -p tollgate-hub --example load`, then
//! `target/release/examples/load --gateways 10000 --records 200000 [--database postgres://...]`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_sync::client::{self, HubClient};
use tollgate_sync::protocol::{
    AppUsage, BundleOutcome, BundleReport, DiscoveryInterval, EnrollRequest, Health, PollRequest,
    PollResponse, RecordBody, UploadBatch, UploadRecord,
};
use tollgate_sync::token::EnrollmentToken;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let gateways: usize = arg("--gateways", "1000").parse()?;
    let records: u64 = arg("--records", "100000").parse()?;
    let batch_size: u64 = arg("--batch", "1000").parse()?;
    let uploaders: u64 = arg("--uploaders", "4").parse()?;
    let hub_bin = arg("--hub", "target/release/tollgate-hub");
    let dir = tempfile::tempdir()?;
    let database = arg(
        "--database",
        &format!("sqlite://{}/hub.db", dir.path().display()),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\ndatabase = \"{database}\"\n\
             server_names = [\"127.0.0.1\"]\nlong_poll_secs = 30\n",
            dir.path().display()
        ),
    )?;
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(&hub_bin)
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let mut hub = Command::new(&hub_bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("TOLLGATE_HUB_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = hub.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    print!("{line}");
    let url = format!("https://127.0.0.1:{port}");

    let token = EnrollmentToken::parse(cli(&["token", "create", "--site", "load"])?.trim())?;
    let id = client::new_gateway_identity("load")?;
    let enrolled = client::enroll(
        &url,
        &token,
        &EnrollRequest {
            token_secret: token.secret_hex(),
            csr_der: id.csr_der,
            hostname: "load".into(),
            agent_version: "load".into(),
        },
    )
    .await?;
    let _ = BUNDLE_KEY.set(enrolled.bundle_key);
    let make = || {
        HubClient::new(
            vec![url.clone()],
            enrolled.ca_der.clone(),
            enrolled.certificate_der.clone(),
            &id.key_pem,
        )
    };

    let policy = dir.path().join("policy.toml");
    // 0. Baseline, same run: one gateway alone, publish -> applied-acknowledged.
    let baseline_publish = {
        let client = make()?;
        let started: Arc<std::sync::OnceLock<Instant>> = Arc::new(std::sync::OnceLock::new());
        let waiter = {
            let started = Arc::clone(&started);
            tokio::spawn(async move {
                anyhow::ensure!(
                    apply_next_bundle(&client, 0).await?,
                    "the bundle did not verify"
                );
                Ok::<_, anyhow::Error>(started.get().map(|t| t.elapsed()).unwrap_or_default())
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        std::fs::write(&policy, "[apps.slack]\ntag = \"unsanctioned\"\n")?;
        let _ = started.set(Instant::now());
        cli(&["publish", policy.to_str().unwrap_or_default()])?;
        waiter.await??
    };
    println!("baseline: publish -> applied-acknowledged, 1 gateway: {baseline_publish:?}");

    // 1. Held polls.
    let rss_before = rss_kib(hub.id());
    let published_at: Arc<std::sync::OnceLock<Instant>> = Arc::new(std::sync::OnceLock::new());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = Arc::new(make()?);
    // One kept connection per simulated gateway, as each real gateway keeps its own.
    client.set_idle_connections(gateways + 16);
    for i in 0..gateways {
        let client = Arc::clone(&client);
        let tx = tx.clone();
        let published_at = Arc::clone(&published_at);
        tokio::spawn(async move {
            let result = apply_next_bundle(&client, 1).await.map(|applied| {
                applied
                    .then(|| published_at.get().map(|t| t.elapsed()))
                    .flatten()
            });
            let _ = tx.send(result.map_err(|e| e.to_string()));
        });
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    drop(tx);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_held = rss_kib(hub.id());
    println!(
        "held polls: {gateways}; hub RSS {rss_before} KiB -> {rss_held} KiB ({:.1} KiB per held poll)",
        (rss_held.saturating_sub(rss_before)) as f64 / gateways.max(1) as f64
    );

    // 2. Publish -> every gateway has it and the hub acknowledged its report.
    std::fs::write(&policy, "[apps.dropbox]\ntag = \"unsanctioned\"\n")?;
    let _ = published_at.set(Instant::now());
    cli(&["publish", policy.to_str().unwrap_or_default()])?;
    let mut times = Vec::with_capacity(gateways);
    let mut failures = 0usize;
    let mut first_error = None;
    while let Some(r) = rx.recv().await {
        match r {
            Ok(Some(t)) => times.push(t),
            Ok(None) => failures += 1,
            Err(e) => {
                failures += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    times.sort();
    println!(
        "publish -> applied-acknowledged over {} gateways: p50 {:?}, p99 {:?}, max {:?}; failures {failures}{}",
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().copied().unwrap_or_default(),
        first_error
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    println!(
        "publish p99 at {} gateways / 1 gateway alone: {:.2}x",
        times.len(),
        percentile(&times, 0.99).as_secs_f64() / baseline_publish.as_secs_f64().max(1e-6)
    );

    // 3. Ingest.
    let per = records / uploaders.max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for u in 0..uploaders {
        let client = make()?;
        tasks.push(tokio::spawn(async move {
            let mut seq = u * 1_000_000_000 + 1;
            let end = seq + per;
            while seq < end {
                let n = batch_size.min(end - seq);
                let batch = UploadBatch {
                    records: (seq..seq + n)
                        .map(|s| UploadRecord {
                            seq: s,
                            recorded_at: 1_700_000_000,
                            body: RecordBody::Discovery(DiscoveryInterval {
                                start: 1_700_000_000,
                                end: 1_700_000_060,
                                apps: vec![AppUsage {
                                    app_id: "dropbox".into(),
                                    user: format!("user{}", s % 100),
                                    device: "10.0.0.2".into(),
                                    bytes_up: 100,
                                    bytes_down: 1000,
                                    flows: 1,
                                    blocked_flows: 0,
                                }],
                                unknown_domains: vec![],
                            }),
                        })
                        .collect(),
                };
                let ack = client.upload(&batch).await?;
                anyhow::ensure!(ack.stored_through == seq + n - 1, "short ack {ack:?}");
                seq += n;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let total = per * uploaders;
    let hub_rate = total as f64 / secs;
    let postgres = database.starts_with("postgres");
    println!(
        "ingest: {total} records (1 app row each) in {secs:.2} s = {hub_rate:.0} records/s ({} uploaders, batches of {batch_size}; database {})",
        uploaders,
        if postgres { "PostgreSQL" } else { "SQLite" }
    );
    let _ = hub.kill();
    let _ = hub.wait();

    // 4. Baseline, same run: the database alone, the same rows in the same batches from as
    // many connections, one transaction per batch, no TLS, no hub.
    let baseline_url = if postgres {
        database.clone()
    } else {
        format!("sqlite://{}/baseline.db?mode=rwc", dir.path().display())
    };
    let db_rate = database_alone(&baseline_url, postgres, total, batch_size, uploaders).await?;
    println!(
        "baseline: the database alone stores {db_rate:.0} rows/s; hub ingest / database alone: {:.2}x",
        hub_rate / db_rate.max(1e-6)
    );
    Ok(())
}

/// Rows/s the database stores when written directly: the discovery table's shape, multi-row
/// inserts of `batch` rows, each batch its own transaction, `writers` connections at once.
async fn database_alone(
    url: &str,
    postgres: bool,
    total: u64,
    batch: u64,
    writers: u64,
) -> anyhow::Result<f64> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(u32::try_from(writers.max(1)).unwrap_or(1))
        .connect(url)
        .await?;
    if !postgres {
        sqlx::query("PRAGMA journal_mode=WAL")
            .execute(&pool)
            .await?;
    }
    sqlx::query("DROP TABLE IF EXISTS load_baseline")
        .execute(&pool)
        .await?;
    sqlx::query(
        "CREATE TABLE load_baseline (gateway_id BIGINT NOT NULL, seq BIGINT NOT NULL, \
         app_id TEXT NOT NULL, user_name TEXT NOT NULL, device TEXT NOT NULL, \
         bytes_up BIGINT NOT NULL, bytes_down BIGINT NOT NULL, flows BIGINT NOT NULL, \
         PRIMARY KEY (gateway_id, seq))",
    )
    .execute(&pool)
    .await?;
    let per = total / writers.max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while seq < per {
                let n = batch.min(per - seq);
                let mut sql = String::from(
                    "INSERT INTO load_baseline (gateway_id, seq, app_id, user_name, device, \
                     bytes_up, bytes_down, flows) VALUES ",
                );
                for i in 0..n {
                    if i > 0 {
                        sql.push(',');
                    }
                    if postgres {
                        let b = i * 4;
                        sql.push_str(&format!(
                            "(${}, ${}, 'dropbox', ${}, '10.0.0.2', 100, 1000, ${})",
                            b + 1,
                            b + 2,
                            b + 3,
                            b + 4
                        ));
                    } else {
                        sql.push_str("(?, ?, 'dropbox', ?, '10.0.0.2', 100, 1000, ?)");
                    }
                }
                sql.push_str(" ON CONFLICT DO NOTHING");
                let mut q = sqlx::query(&sql);
                for i in 0..n {
                    let s = i64::try_from(seq + i).unwrap_or(i64::MAX);
                    q = q
                        .bind(i64::try_from(w).unwrap_or(0))
                        .bind(s)
                        .bind(format!("user{}", s % 100))
                        .bind(1i64);
                }
                let mut tx = pool.begin().await?;
                q.execute(&mut *tx).await?;
                tx.commit().await?;
                seq += n;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let rate = (per * writers) as f64 / started.elapsed().as_secs_f64();
    let _ = sqlx::query("DROP TABLE IF EXISTS load_baseline")
        .execute(&pool)
        .await;
    Ok(rate)
}

/// Polls until a bundle newer than `applied` comes, checks it, and reports it applied:
/// `false` when it did not verify.
async fn apply_next_bundle(client: &HubClient, applied: u64) -> Result<bool, client::ClientError> {
    let req = PollRequest {
        applied_revision: applied,
        wait_secs: 30,
        health: Health::default(),
    };
    loop {
        if let PollResponse::Bundle(b) = client.poll(&req).await? {
            let Ok(bundle) = b.verify(&enrolled_key(client), applied, "load") else {
                return Ok(false);
            };
            client
                .report(&BundleReport {
                    revision: bundle.revision,
                    outcome: BundleOutcome::Applied,
                })
                .await?;
            return Ok(true);
        }
    }
}

/// The bundle key is not kept by the client; the load test checks signatures with the key
/// the enrollment returned, stashed here once.
fn enrolled_key(_: &HubClient) -> [u8; 32] {
    *BUNDLE_KEY.get().unwrap_or(&[0; 32])
}

static BUNDLE_KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
