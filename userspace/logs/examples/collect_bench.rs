//! Syslog collector throughput: squid lines behind an RFC 3164 header pushed over TCP and
//! UDP (localhost) into a [`Receiver`] whose frames a consumer thread hands to a
//! [`Collector`] in batches, as `tollgate collect` does (journal fsynced per batch, state
//! replaced atomically, aggregation). The offered rate goes up in steps of 2 s; for each
//! step the lines that became records are compared with the lines sent, so every loss
//! counts (a full queue, and for UDP the kernel's socket buffer too).
//!
//! Prints, per transport, the highest rate with nothing lost and the first rate with
//! losses, each also as a ratio to a same-run baseline: the same lines parsed in-process
//! with no network and no journal (`StreamParser` only).
//!
//! `cargo run --release -p tollgate-logs --example collect_bench [-- SECONDS_PER_STEP]`

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use tollgate_catalog::Catalog;
use tollgate_discovery::users::Users;
use tollgate_logs::StreamParser;
use tollgate_logs::collect::collector::{Collector, CollectorOptions};
use tollgate_logs::collect::{Listener, Receiver, ReceiverConfig, ReceiverLimits, strip_header};

fn lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "<13>Dec  3 10:00:00 proxy1 squid[42]: 1700000000.{:03} {} 10.{}.{}.{} TCP_MISS/200 {} CONNECT app{}.example{}.com:443 user{} HIER_DIRECT/203.0.113.{} -",
                i % 1000,
                i % 900 + 5,
                (i / 65536) % 256,
                (i / 256) % 256,
                i % 256,
                1000 + i % 50_000,
                i % 97,
                i % 13,
                i % 500,
                i % 250
            )
        })
        .collect()
}

fn baseline(msgs: &[String]) -> f64 {
    let mut p = StreamParser::named("squid-native", "bench", &[], 5).unwrap();
    let now = Utc::now();
    let mut n = 0u64;
    let t = Instant::now();
    for m in msgs {
        p.line(strip_header(m).1, now, &mut |_| n += 1);
    }
    let el = t.elapsed().as_secs_f64();
    assert_eq!(n as usize, msgs.len());
    msgs.len() as f64 / el
}

/// Sends `rate` lines/s for `secs` seconds, paced per millisecond. Returns lines sent.
fn send(
    rate: u64,
    secs: f64,
    msgs: &[String],
    tcp: Option<&mut TcpStream>,
    udp: Option<(&UdpSocket, std::net::SocketAddr)>,
) -> u64 {
    let start = Instant::now();
    let total = (rate as f64 * secs) as u64;
    let mut sent = 0u64;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut tcp = tcp;
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        if due <= sent {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        buf.clear();
        for i in sent..due {
            let m = &msgs[i as usize % msgs.len()];
            match (&mut tcp, &udp) {
                (Some(_), _) => {
                    buf.extend_from_slice(m.as_bytes());
                    buf.push(b'\n');
                }
                (None, Some((s, a))) => {
                    let _ = s.send_to(m.as_bytes(), a);
                }
                _ => {}
            }
        }
        if let Some(t) = tcp.as_deref_mut() {
            t.write_all(&buf).unwrap();
        }
        sent = due;
    }
    sent
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let msgs = lines(200_000);
    let base = baseline(&msgs);
    let base = base.max(baseline(&msgs));
    println!("baseline (parse only, in-process, same lines): {base:.0} lines/s");

    let catalog: &'static Catalog = Box::leak(Box::new(Catalog::builtin(Utc::now()).unwrap()));
    let users: &'static Users = Box::leak(Box::new(Users::default()));
    let rates = [
        50_000u64, 100_000, 150_000, 200_000, 250_000, 300_000, 400_000, 500_000, 700_000,
        1_000_000,
    ];
    for transport in ["tcp", "udp"] {
        let dir = tempfile::tempdir().unwrap();
        let any = "127.0.0.1:0".parse().ok();
        let rx = Receiver::start_with(ReceiverConfig {
            tcp: Listener {
                addr: if transport == "tcp" { any } else { None },
                allow: None,
            },
            udp: Listener {
                addr: if transport == "udp" { any } else { None },
                allow: Some(vec!["127.0.0.1".parse().unwrap()]),
            },
            limits: ReceiverLimits::default(),
            ..ReceiverConfig::default()
        })
        .unwrap();
        let (tcp_addr, udp_addr) = (rx.tcp_addr, rx.udp_addr);
        let records = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let consumer = {
            let (records, stop) = (records.clone(), stop.clone());
            let state = dir.path().to_owned();
            std::thread::spawn(move || {
                let mut c = Collector::open(
                    CollectorOptions {
                        state_dir: state.join("state"),
                        output_dir: state.join("out"),
                        detect_wait: Duration::ZERO,
                        ..CollectorOptions::default()
                    },
                    catalog,
                    users,
                )
                .unwrap();
                let mut frames = Vec::with_capacity(20_000);
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(f) = rx.frames.recv_timeout(Duration::from_millis(50)) {
                        frames.push(f);
                        frames.extend(rx.frames.try_iter().take(20_000 - 1));
                    }
                    if !frames.is_empty() {
                        c.tick_frames(frames.drain(..), Utc::now()).unwrap();
                        records.store(c.status().records, Ordering::Relaxed);
                    }
                }
                (rx.counters.clone(), rx.udp_kernel_drops())
            })
        };
        let mut tcp = tcp_addr.map(|a| TcpStream::connect(a).unwrap());
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Warm up (detection, first journal writes).
        let warm = if let Some(t) = tcp.as_mut() {
            send(20_000, 0.5, &msgs, Some(t), None)
        } else {
            send(20_000, 0.5, &msgs, None, Some((&udp, udp_addr.unwrap())))
        };
        let mut expect = warm;
        wait_settled(&records, expect);
        let mut best = None;
        let mut first_loss = None;
        for &rate in &rates {
            let before = records.load(Ordering::Relaxed);
            let t = Instant::now();
            let sent = if let Some(t) = tcp.as_mut() {
                send(rate, secs, &msgs, Some(t), None)
            } else {
                send(rate, secs, &msgs, None, Some((&udp, udp_addr.unwrap())))
            };
            let offered = sent as f64 / t.elapsed().as_secs_f64();
            expect += sent;
            let got = wait_settled(&records, expect) - before;
            let lost = sent.saturating_sub(got);
            println!(
                "{transport}: offered {rate:>8} lines/s (achieved {offered:>9.0}): sent {sent}, records {got}, lost {lost}"
            );
            if lost == 0 {
                best = Some(best.map_or(offered, |b: f64| b.max(offered)));
            } else {
                first_loss = Some((offered, lost));
                break;
            }
            expect = records.load(Ordering::Relaxed);
        }
        stop.store(true, Ordering::Relaxed);
        drop(tcp);
        let (counters, kernel) = consumer.join().unwrap();
        println!(
            "{transport}: counted drops: queue_full={} udp_kernel_drops={:?} oversized={} malformed={}",
            counters.queue_full.load(Ordering::Relaxed),
            kernel,
            counters.oversized.load(Ordering::Relaxed),
            counters.malformed.load(Ordering::Relaxed)
        );
        match best {
            Some(b) => println!(
                "{transport}: sustained with 0 lost: {b:.0} lines/s = {:.2} x baseline",
                b / base
            ),
            None => println!("{transport}: losses at every rate"),
        }
        match first_loss {
            Some((r, lost)) => println!(
                "{transport}: losses start at {r:.0} lines/s = {:.2} x baseline ({lost} lost)",
                r / base
            ),
            None => println!("{transport}: no losses up to the highest rate tried"),
        }
    }
}

/// Waits until `records` reaches `want` or stops moving for a second; returns it.
fn wait_settled(records: &AtomicU64, want: u64) -> u64 {
    let mut last = records.load(Ordering::Relaxed);
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = records.load(Ordering::Relaxed);
        if now >= want {
            return now;
        }
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() > Duration::from_secs(1) {
            return now;
        }
    }
}
