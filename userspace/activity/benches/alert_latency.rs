//! Activity to alert in the sink: the time from an activity entering the engine to its alert
//! arriving at a syslog receiver (UDP on loopback, RFC 5424), p50/p99/max over 2,000 alerts
//! sent one every 2 ms, against a baseline measured in the same run: the same receiver getting
//! a line of the same size sent straight from the same thread (what loopback alone costs).
//!
//! `cargo bench -p tollgate-activity --bench alert_latency` (ALERTS=N to change the count).
//! Target (#12): p99 ≤ 1 s.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Deserialize;
use tollgate_activity::policy::ActivityPolicy;
use tollgate_activity::sink::{SinkConfig, Sinks};
use tollgate_activity::{Activity, ActivityType, Engine, Source};

#[derive(Deserialize)]
struct Setup {
    activity_policies: Vec<ActivityPolicy>,
    alert_sinks: Vec<SinkConfig>,
}

/// Receives on `sock` until `n` tagged messages arrived or 10 s passed without one; returns
/// each tag's arrival time.
fn receive(sock: UdpSocket, n: usize) -> HashMap<u64, Instant> {
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    while got.len() < n {
        let Ok(len) = sock.recv(&mut buf) else { break };
        let at = Instant::now();
        let text = String::from_utf8_lossy(&buf[..len]);
        if let Some(i) = text.find("usr") {
            let digits: String = text[i + 3..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(tag) = digits.parse() {
                got.entry(tag).or_insert(at);
            }
        }
    }
    got
}

fn percentiles(
    sent: &[Instant],
    got: &HashMap<u64, Instant>,
) -> (Duration, Duration, Duration, usize) {
    let mut lat: Vec<Duration> = sent
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            got.get(&(i as u64))
                .map(|r| r.saturating_duration_since(*s))
        })
        .collect();
    lat.sort();
    let at = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    if lat.is_empty() {
        return (Duration::ZERO, Duration::ZERO, Duration::ZERO, 0);
    }
    (at(0.5), at(0.99), lat[lat.len() - 1], lat.len())
}

fn main() {
    let n: usize = std::env::var("ALERTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let gap = Duration::from_millis(2);

    // Baseline: the line straight from this thread to the receiver.
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = rx.local_addr().unwrap().port();
    let receiver = std::thread::spawn(move || receive(rx, n));
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let line = format!(
        "<132>1 {} gw-bench tollgate - ALERT - {}",
        Utc::now(),
        "x".repeat(300)
    );
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        sent.push(Instant::now());
        tx.send_to(format!("usr{i}z {line}").as_bytes(), ("127.0.0.1", port))
            .unwrap();
        std::thread::sleep(gap);
    }
    let got = receiver.join().unwrap();
    let (b50, b99, bmax, bn) = percentiles(&sent, &got);

    // The engine and a syslog sink, as the gateway runs them.
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = rx.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(None));
    let receiver = std::thread::spawn({
        let received = received.clone();
        move || *received.lock().unwrap() = Some(receive(rx, n))
    });
    let setup: Setup = toml::from_str(&format!(
        r#"
        [[activity_policies]]
        name = "every upload to box"
        severity = "high"
        activity = "upload"
        apps = ["box"]

        [[alert_sinks]]
        kind = "syslog"
        address = "udp://127.0.0.1:{port}"
        format = "rfc5424"
        rate_per_sec = 10000
        burst = 10000
        "#
    ))
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sent = rt.block_on(async {
        let mut sinks = Sinks::start(&setup.alert_sinks, "gw-bench").unwrap();
        let mut engine =
            Engine::new(&setup.activity_policies).with_gateway(Some("gw-bench".into()));
        let mut sent = Vec::with_capacity(n);
        for i in 0..n {
            let start = Instant::now();
            let now = Utc::now();
            let mut a = Activity::new(i as u64, now, "box", ActivityType::Upload, Source::Proxy);
            a.user = Some(format!("usr{i}z"));
            a.ip = Some([10, 0, 0, 7].into());
            a.object = Some("quarterly.xlsx".into());
            for ev in engine.observe(&a, now) {
                sinks.alert(&ev);
            }
            sent.push(start);
            tokio::time::sleep(gap).await;
        }
        // Let the sink drain before the runtime goes.
        tokio::time::sleep(Duration::from_secs(1)).await;
        sent
    });
    receiver.join().unwrap();
    let got = received.lock().unwrap().take().unwrap_or_default();
    let (p50, p99, max, pn) = percentiles(&sent, &got);

    println!("{n} alerts, one every {gap:?}; UDP syslog on loopback");
    println!(
        "baseline (line sent straight): p50 {b50:?}  p99 {b99:?}  max {bmax:?}  ({bn} received)"
    );
    println!(
        "activity -> engine -> sink:    p50 {p50:?}  p99 {p99:?}  max {max:?}  ({pn} received)"
    );
    println!(
        "p99 ratio to the baseline: {:.1}x; target p99 <= 1 s: {:.4}x of it",
        p99.as_secs_f64() / b99.as_secs_f64().max(1e-9),
        p99.as_secs_f64()
    );
}
