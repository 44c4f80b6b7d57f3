//! The syslog sinks against a real rsyslog: plain TCP (RFC 6587 octet counting), UDP, and TLS
//! (gtls driver, our CA). Hostile user and file names must arrive as exactly one line per
//! record. Skips (prints SKIP) when rsyslogd or its gtls driver is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use tollgate_activity::{
    Activity, ActivityPolicy, ActivityType, Engine, Repeated, Severity, SinkConfig, SinkKind,
    Sinks, Source,
};

const EVIL_USER: &str = "mallory\n<13>1 2026-12-03T00:00:00Z fake tollgate - ALERT - CEF:0|X|Y|0|ALERT|fake|10| suser=admin";

fn have_rsyslog() -> Option<PathBuf> {
    for p in ["/usr/sbin/rsyslogd", "/sbin/rsyslogd", "/usr/bin/rsyslogd"] {
        if Path::new(p).exists() {
            return Some(p.into());
        }
    }
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Rsyslog {
    child: Child,
    out: PathBuf,
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `rsyslogd -n -f <conf>` writing every message's raw text as one line to `out`.
fn start_rsyslog(bin: &Path, dir: &Path, name: &str, inputs: &str, global: &str) -> Rsyslog {
    let out = dir.join(format!("{name}.log"));
    let work = dir.join(format!("{name}-work"));
    std::fs::create_dir_all(&work).unwrap();
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{work}" maxMessageSize="64k" {global})
{inputs}
template(name="raw" type="string" string="%rawmsg%\n")
action(type="omfile" file="{out}" template="raw")
"#,
            work = work.display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(dir.join(format!("{name}.pid")))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("rsyslogd starts");
    Rsyslog { child, out }
}

fn wait_listening(port: u16) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("rsyslogd did not listen on {port}");
}

/// Waits until `path` holds `n` lines (or 10 s), and returns them and when they were all there.
fn wait_lines(path: &Path, n: usize) -> (Vec<String>, Instant) {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(String::from).collect();
        if lines.len() >= n || t.elapsed() > Duration::from_secs(10) {
            return (lines, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn mass_download() -> Vec<ActivityPolicy> {
    vec![ActivityPolicy {
        name: "mass download | exfil".into(),
        enabled: true,
        severity: Severity::High,
        activity: Some(tollgate_activity::policy::OneOrMany::One(
            ActivityType::Download,
        )),
        apps: vec!["box".into()],
        users: vec![],
        ips: vec![],
        object_contains: None,
        min_bytes: None,
        result: None,
        sources: vec![],
        block_sessions_secs: None,
        connector_actions: vec![],
        notify: vec![],
        repeated: Some(Repeated {
            count: 50,
            within_secs: 60,
            per_user: true,
            per_app: false,
        }),
    }]
}

/// 50 downloads by a user with a hostile name and a hostile file name: one alert.
fn burst(sinks: &mut Sinks) -> Instant {
    let mut e = Engine::new(&mass_download()).with_gateway(Some("gw-test".into()));
    let now = Utc::now();
    let mut fired = Vec::new();
    let start = Instant::now();
    for i in 0..50 {
        let mut a = Activity::new(i, now, "box", ActivityType::Download, Source::Proxy);
        a.user = Some(EVIL_USER.into());
        a.ip = Some([10, 0, 0, 7].into());
        a.object = Some(format!("report {i}.pdf\r\n<14>1 - - - - fake=line cs1=x"));
        sinks.activity(&a);
        fired.extend(e.observe(&a, now));
    }
    assert_eq!(fired.len(), 1);
    sinks.alert(&fired[0]);
    start
}

fn check_lines(lines: &[String], cef: bool) {
    assert_eq!(
        lines.len(),
        51,
        "50 activities and one alert, one line each: {:#?}",
        lines.last()
    );
    for l in lines {
        assert!(l.starts_with('<'), "every line is one of our messages: {l}");
        assert!(
            !l.contains("#012") && !l.contains("#015"),
            "no raw CR/LF reached rsyslog: {l}"
        );
    }
    // MSGID, the sixth header field, says which (the hostile user name holds " ALERT " too).
    let alerts: Vec<&String> = lines
        .iter()
        .filter(|l| l.split(' ').nth(5) == Some("ALERT"))
        .collect();
    assert_eq!(alerts.len(), 1, "{:#?}", &lines[lines.len() - 2..]);
    assert!(
        lines
            .iter()
            .all(|l| matches!(l.split(' ').nth(5), Some("ALERT" | "ACTIVITY")))
    );
    if cef {
        assert!(
            alerts[0].contains("CEF:0|Tollgate|Tollgate|")
                && alerts[0].contains("|ALERT_ACTIVITY_POLICY|mass download \\| exfil|8|"),
            "{}",
            alerts[0]
        );
        assert!(alerts[0].contains("suser=mallory\\n<13>1"), "{}", alerts[0]);
        assert!(alerts[0].contains("suser\\=admin"), "{}", alerts[0]);
        assert!(alerts[0].contains("dvchost=gw-test"), "{}", alerts[0]);
    } else {
        assert!(alerts[0].contains("[alert@32473 id=\"1\""), "{}", alerts[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_receives_cef_over_tcp_and_udp() {
    let Some(bin) = have_rsyslog() else {
        println!("SKIP: rsyslogd is not installed (cargo xtask setup installs rsyslog)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (tcp, udp, probe) = (free_port(), free_port(), free_port());
    let rs = start_rsyslog(
        &bin,
        dir.path(),
        "plain",
        &format!(
            "module(load=\"imtcp\")\ninput(type=\"imtcp\" port=\"{tcp}\" address=\"127.0.0.1\")"
        ),
        "",
    );
    // UDP has no handshake to wait for: this instance also listens on TCP, as a sign of life.
    let rs_udp = start_rsyslog(
        &bin,
        dir.path(),
        "udp",
        &format!(
            "module(load=\"imtcp\")\ninput(type=\"imtcp\" port=\"{probe}\" address=\"127.0.0.1\")\n\
             module(load=\"imudp\")\ninput(type=\"imudp\" port=\"{udp}\" address=\"127.0.0.1\")"
        ),
        "",
    );
    wait_listening(tcp);
    let cfg = |addr: String| SinkConfig {
        kind: SinkKind::Syslog,
        name: None,
        address: Some(addr),
        path: None,
        format: None,
        send: vec![
            tollgate_activity::sink::Send::Alerts,
            tollgate_activity::sink::Send::Activities,
        ],
        min_severity: Severity::Low,
        ca_file: None,
        server_name: None,
        rate_per_sec: 50,
        burst: 200,
        queue: 4096,
        max_mb: 64,
    };
    let mut sinks = Sinks::start(&[cfg(format!("tcp://127.0.0.1:{tcp}"))], "gw-test").unwrap();
    let start = burst(&mut sinks);
    let (lines, done) = tokio::task::spawn_blocking({
        let out = rs.out.clone();
        move || wait_lines(&out, 51)
    })
    .await
    .unwrap();
    check_lines(&lines, true);
    println!(
        "tcp: 51 records in rsyslog {} ms after the first activity",
        done.duration_since(start).as_millis()
    );
    assert!(done.duration_since(start) < Duration::from_secs(2));
    // The sender counts a record once its write returns, which can be after rsyslog has
    // already filed the line: wait a moment for the count rather than read it at once.
    let deadline = Instant::now() + Duration::from_secs(2);
    while sinks.stats()[0].sent < 51 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sinks.stats()[0].sent, 51);
    drop(sinks);

    // UDP: the same records, one datagram each.
    wait_listening(probe);
    let mut sinks = Sinks::start(&[cfg(format!("udp://127.0.0.1:{udp}"))], "gw-test").unwrap();
    burst(&mut sinks);
    let (lines, _) = tokio::task::spawn_blocking({
        let out = rs_udp.out.clone();
        move || wait_lines(&out, 51)
    })
    .await
    .unwrap();
    check_lines(&lines, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_receives_rfc5424_over_tls_and_our_sink_checks_its_certificate() {
    let Some(bin) = have_rsyslog() else {
        println!("SKIP: rsyslogd is not installed (cargo xtask setup installs rsyslog)");
        return;
    };
    let gtls = [
        "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so",
        "/usr/lib/aarch64-linux-gnu/rsyslog/lmnsd_gtls.so",
        "/usr/lib/rsyslog/lmnsd_gtls.so",
    ];
    if !gtls.iter().any(|p| Path::new(p).exists()) {
        println!("SKIP: rsyslog's gtls driver is not installed (rsyslog-gnutls)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A CA and a certificate for "localhost".
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tollgate test syslog CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    // Another CA, which our sink must refuse.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut other = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_pem = dir.path().join("other.pem");
    std::fs::write(&other_pem, other.self_signed(&other_key).unwrap().pem()).unwrap();

    let port = free_port();
    let d = dir.path().display();
    let rs = start_rsyslog(
        &bin,
        dir.path(),
        "tls",
        &format!(
            "module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")\n\
             input(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")"
        ),
        &format!(
            "DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{d}/ca.pem\" \
             DefaultNetstreamDriverCertFile=\"{d}/cert.pem\" DefaultNetstreamDriverKeyFile=\"{d}/key.pem\""
        ),
    );
    wait_listening(port);
    let cfg = |ca: &Path| SinkConfig {
        kind: SinkKind::Syslog,
        name: Some("siem".into()),
        address: Some(format!("tls://localhost:{port}")),
        path: None,
        format: Some(tollgate_activity::Format::Rfc5424),
        send: vec![
            tollgate_activity::sink::Send::Alerts,
            tollgate_activity::sink::Send::Activities,
        ],
        min_severity: Severity::Low,
        ca_file: Some(ca.to_path_buf()),
        server_name: None,
        rate_per_sec: 50,
        burst: 200,
        queue: 4096,
        max_mb: 64,
    };
    // A sink that trusts another CA sends nothing and counts errors.
    let mut wrong = Sinks::start(&[cfg(&other_pem)], "gw-test").unwrap();
    burst(&mut wrong);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = &wrong.stats()[0];
    assert_eq!(s.sent, 0, "{s:?}");
    assert!(s.errors >= 1, "{s:?}");
    drop(wrong);

    let mut sinks = Sinks::start(&[cfg(&ca_pem)], "gw-test").unwrap();
    let start = burst(&mut sinks);
    let (lines, done) = tokio::task::spawn_blocking({
        let out = rs.out.clone();
        move || wait_lines(&out, 51)
    })
    .await
    .unwrap();
    check_lines(&lines, false);
    println!(
        "tls: 51 records in rsyslog {} ms after the first activity",
        done.duration_since(start).as_millis()
    );
    assert!(done.duration_since(start) < Duration::from_secs(2));
}
