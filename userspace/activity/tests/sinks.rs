//! Sinks against hostile or dead receivers: the caller never blocks, drops are counted, and a
//! webhook server that answers forever costs a bounded read. Also the file sink and an HTTPS
//! webhook with our own CA.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_activity::sink::Send;
use tollgate_activity::{
    Activity, ActivityType, Alert, AlertEvent, AlertEventKind, AlertStatus, Entities, Format,
    Severity, SinkConfig, SinkKind, Sinks, Source,
};

fn sink(kind: SinkKind, address: Option<String>) -> SinkConfig {
    SinkConfig {
        kind,
        name: None,
        address,
        path: None,
        format: None,
        send: vec![Send::Alerts, Send::Activities],
        min_severity: Severity::Low,
        ca_file: None,
        server_name: None,
        rate_per_sec: 50,
        burst: 200,
        queue: 100,
        max_mb: 64,
    }
}

fn activity(i: u64) -> Activity {
    let mut a = Activity::new(i, Utc::now(), "box", ActivityType::Upload, Source::Proxy);
    a.user = Some(format!("user{i}\n\"quoted\""));
    a.bytes = Some(i);
    a
}

fn alert(i: u64, severity: Severity) -> AlertEvent {
    AlertEvent {
        kind: AlertEventKind::Opened,
        alert: Alert {
            id: i,
            time: Utc::now(),
            last_seen: Utc::now(),
            severity,
            policy: "p".into(),
            entities: Entities::default(),
            reason: "upload matched".into(),
            activities: vec![activity(i)],
            status: AlertStatus::Open,
            comment: None,
            count: 1,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syslog_server_that_never_reads_does_not_block_the_caller() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    // Accepts and holds connections without ever reading.
    let held = tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            keep.push(s);
        }
    });
    let mut sinks = Sinks::start(
        &[sink(
            SinkKind::Syslog,
            Some(format!("tcp://127.0.0.1:{port}")),
        )],
        "gw",
    )
    .unwrap();
    let t = Instant::now();
    for i in 0..200_000 {
        sinks.activity(&activity(i));
    }
    for i in 0..1000 {
        sinks.alert(&alert(i, Severity::High));
    }
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the caller was held up: {took:?}"
    );
    let s = &sinks.stats()[0];
    assert!(s.queue_full > 150_000, "{s:?}");
    assert!(
        s.rate_limited >= 700,
        "a storm of 1000 alerts passes ~200: {s:?}"
    );
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_siem_counts_errors_and_min_severity_filters() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = sink(SinkKind::Syslog, Some(format!("tcp://127.0.0.1:{port}")));
    cfg.min_severity = Severity::High;
    cfg.send = vec![Send::Alerts];
    let mut sinks = Sinks::start(&[cfg], "gw").unwrap();
    sinks.alert(&alert(1, Severity::Low));
    sinks.activity(&activity(1));
    sinks.alert(&alert(2, Severity::High));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let s = &sinks.stats()[0];
    assert_eq!(s.sent, 0);
    assert!(s.errors >= 1, "{s:?}");
    assert_eq!(
        s.queue_full, 0,
        "the low alert and the activity were filtered, not queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_answers_forever_costs_a_bounded_read() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let bodies = Arc::new(AtomicUsize::new(0));
    let b2 = bodies.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let b2 = b2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                // Read the request head and its body.
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    if let Some(h) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if got.len() >= h + 4 + len {
                            let body = &text[h + 4..];
                            let v: serde_json::Value = serde_json::from_str(body).unwrap();
                            assert!(v.get("alert").is_some() || v.get("activity").is_some());
                            b2.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                // 200, then an endless answer.
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n")
                    .await;
                let junk = vec![b'x'; 65536];
                while s.write_all(&junk).await.is_ok() {}
            });
        }
    });
    let mut sinks = Sinks::start(
        &[sink(
            SinkKind::Webhook,
            Some(format!("http://127.0.0.1:{port}/hook")),
        )],
        "gw",
    )
    .unwrap();
    for i in 0..5 {
        sinks.alert(&alert(i, Severity::Medium));
    }
    let t = Instant::now();
    while sinks.stats()[0].sent < 5 && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sinks.stats()[0].sent, 5, "{:?}", sinks.stats());
    assert_eq!(bodies.load(Ordering::Relaxed), 5);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_with_our_ca_and_a_retry_after_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let Ok(mut s) = acceptor.accept(s).await else {
                continue;
            };
            let n = seen2.fetch_add(1, Ordering::Relaxed);
            let mut buf = vec![0u8; 65536];
            let _ = s.read(&mut buf).await;
            // The first try fails with 503: the sink retries after its back-off.
            let answer: &[u8] = if n == 0 {
                b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"
            } else {
                b"HTTP/1.1 204 No Content\r\n\r\n"
            };
            let _ = s.write_all(answer).await;
            let _ = s.shutdown().await;
        }
    });
    let mut cfg = sink(
        SinkKind::Webhook,
        Some(format!("https://localhost:{port}/alerts")),
    );
    cfg.ca_file = Some(ca_pem);
    let mut sinks = Sinks::start(&[cfg], "gw").unwrap();
    sinks.alert(&alert(1, Severity::High));
    let t = Instant::now();
    while sinks.stats()[0].sent < 1 && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = &sinks.stats()[0];
    assert_eq!(s.sent, 1, "{s:?}");
    assert_eq!(s.errors, 1, "{s:?}");
    assert_eq!(seen.load(Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_sink_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts.jsonl");
    let mut cfg = sink(SinkKind::File, None);
    cfg.path = Some(path.clone());
    cfg.format = Some(Format::Json);
    let mut sinks = Sinks::start(&[cfg], "gw").unwrap();
    for i in 0..20 {
        sinks.activity(&activity(i));
    }
    sinks.alert(&alert(99, Severity::High));
    let t = Instant::now();
    while sinks.stats()[0].sent < 21 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 21);
    for l in &lines[..20] {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(
            v["activity"]["user"]
                .as_str()
                .unwrap()
                .contains("\n\"quoted\"")
        );
    }
    let v: serde_json::Value = serde_json::from_str(lines[20]).unwrap();
    assert_eq!(v["alert"]["id"], 99);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640, "{mode:o}");
}

#[test]
fn sink_configs_are_checked() {
    for (text, key) in [
        ("kind = \"syslog\"\n", "address"),
        ("kind = \"syslog\"\naddress = \"http://x:1\"\n", "address"),
        ("kind = \"syslog\"\naddress = \"tcp://x\"\n", "address"),
        ("kind = \"syslog\"\naddress = \"tcp://x:0\"\n", "address"),
        ("kind = \"syslog\"\naddress = \"tcp://:514\"\n", "address"),
        ("kind = \"syslog\"\naddress = \"tcp://::1\"\n", "address"),
        ("kind = \"webhook\"\naddress = \"ftp://x:21/\"\n", "address"),
        ("kind = \"file\"\npath = \"rel.log\"\n", "path"),
        ("kind = \"file\"\n", "path"),
        (
            "kind = \"syslog\"\naddress = \"udp://[::1]:514\"\nsend = []\n",
            "send",
        ),
        (
            "kind = \"syslog\"\naddress = \"udp://h:514\"\nrate_per_sec = 0\n",
            "rate_per_sec",
        ),
    ] {
        let c: SinkConfig = toml::from_str(text).unwrap();
        let e = c.validate(3).unwrap_err();
        assert_eq!(e.key, key, "{text}");
        assert!(e.to_string().starts_with("alert_sinks[3]."), "{e}");
    }
    let ok: SinkConfig =
        toml::from_str("kind = \"syslog\"\naddress = \"tls://[2001:db8::1]:6514\"\n").unwrap();
    ok.validate(0).unwrap();
    assert!(toml::from_str::<SinkConfig>("kind = \"kafka\"\n").is_err());
    assert!(toml::from_str::<SinkConfig>("kind = \"file\"\nformat = \"xml\"\n").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_spool_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens yet: the records wait in the spool.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = sink(
        SinkKind::Webhook,
        Some(format!("http://127.0.0.1:{port}/hook")),
    );
    let mut sinks =
        Sinks::start_durable(std::slice::from_ref(&cfg), "gw", Some(dir.path())).unwrap();
    for i in 0..3 {
        sinks.alert(&alert(i, Severity::High));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(sinks.stats()[0].errors >= 1);
    assert_eq!(sinks.stats()[0].sent, 0);
    // The daemon goes away; its task ends and leaves the spool.
    drop(sinks);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spooled = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(spooled >= 1, "a spool file");
    // The endpoint comes up, a new daemon starts: the three records are delivered, in order.
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let got2 = got.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = vec![0u8; 65536];
            let mut n = 0;
            loop {
                let k = s.read(&mut buf[n..]).await.unwrap_or(0);
                if k == 0 {
                    break;
                }
                n += k;
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                if let Some(h) = text.find("\r\n\r\n")
                    && serde_json::from_str::<serde_json::Value>(&text[h + 4..]).is_ok()
                {
                    let v: serde_json::Value = serde_json::from_str(&text[h + 4..]).unwrap();
                    got2.lock()
                        .unwrap()
                        .push(v["alert"]["id"].as_u64().unwrap());
                    break;
                }
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let sinks = Sinks::start_durable(&[cfg], "gw", Some(dir.path())).unwrap();
    let t = Instant::now();
    while got.lock().unwrap().len() < 3 && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*got.lock().unwrap(), vec![0, 1, 2]);
    assert_eq!(sinks.stats()[0].sent, 3);
}

/// `notify`: a named sink that takes nothing (`send = []`) gets an alert only when a policy
/// names it, and a sink that takes alerts but is named too gets it once; an unnamed sink with
/// `send = []` is refused, and so is a policy notifying a sink that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notified_sink_gets_the_alert_once_and_only_when_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, send: Vec<tollgate_activity::sink::Send>| SinkConfig {
        name: Some(name.into()),
        path: Some(dir.path().join(format!("{name}.json"))),
        send,
        ..sink(SinkKind::File, None)
    };
    let configs = vec![file("pager", vec![]), file("siem", vec![Send::Alerts])];
    let mut sinks = Sinks::start(&configs, "gw").unwrap();
    sinks.alert(&alert(1, Severity::High));
    let told = sinks.alert_notifying(
        &alert(2, Severity::Low),
        &["pager".into(), "siem".into(), "gone".into()],
    );
    assert_eq!(
        told,
        vec![
            ("pager".into(), true),
            ("siem".into(), true),
            ("gone".into(), false)
        ]
    );
    drop(sinks);
    let read = |name: &str| {
        std::fs::read_to_string(dir.path().join(format!("{name}.json"))).unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while (read("pager").lines().count() < 1 || read("siem").lines().count() < 2)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Time for a line too many to show.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (pager, siem) = (read("pager"), read("siem"));
    assert_eq!(pager.lines().count(), 1, "only the notified alert: {pager}");
    assert_eq!(siem.lines().count(), 2, "each alert once: {siem}");

    let mut unnamed = file("x", vec![]);
    unnamed.name = None;
    assert_eq!(unnamed.validate(0).unwrap_err().key, "send");
    let policies: Vec<tollgate_activity::ActivityPolicy> =
        toml::from_str::<toml::Table>("[[p]]\nname = \"a\"\nnotify = [\"pagr\"]\n").unwrap()["p"]
            .clone()
            .try_into()
            .unwrap();
    let e = tollgate_activity::validate_notify(&policies, &configs).unwrap_err();
    assert_eq!(e.key, "notify");
}
