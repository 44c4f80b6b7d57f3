//! End-to-end tests with a real client (curl, HTTP/1.1 and HTTP/2) on loopback: curl ->
//! proxy -> a hyper/rustls origin whose certificate comes from a throw-away test CA.
//! The proxy runs with `Destination::Fixed` (no NAT on loopback); the transparent paths are
//! exercised elsewhere: nft redirect + SO_ORIGINAL_DST by the bench harness, the daemon's
//! kernel steering (bpf_sk_assign to an IP_TRANSPARENT listener) by
//! tests/tests/session_control.rs.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tollgate_proxy::{AppInfo, Destination, PolicySet, ProxyConfig, SessionProxy, StartOptions};

const POLICIES: &str = r#"
[[session_policies]]
name = "no executables from cloud storage"
apps = ["files"]
action = "block"
download = { file_extensions = ["exe", "msi"] }

[[session_policies]]
name = "no card numbers out"
apps = ["files"]
action = "block"
upload = { content = ["credit_card"], min_matches = 1 }

[[session_policies]]
name = "no public links"
apps = ["files"]
action = "block"
activities = [{ method = "POST", path = "/2/sharing/*" }]
"#;

struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new(cn: &str) -> TestCa {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        TestCa {
            issuer: CertifiedIssuer::self_signed(p, key).unwrap(),
        }
    }

    fn leaf(&self, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let p = CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

fn big_body() -> Vec<u8> {
    (0..1_048_576u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

const CARD_TEXT: &[u8] = b"statement for card 4111 1111 1111 1111, due in 30 days\n";
const CLEAN_TEXT: &[u8] = b"statement for card 4111 1111 1111 1112 (not a valid number)\n";

fn gzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn encoded(coding: &str, body: &[u8]) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", "text/plain")
        .header("content-encoding", coding)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap()
}

async fn origin_service(
    mut req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Only /ws switches protocols; like most servers, every other route ignores Upgrade.
    if req.uri().path() == "/ws"
        && req
            .headers()
            .get("upgrade")
            .is_some_and(|v| v == "websocket")
    {
        let up = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = up.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let r = Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()))
            .unwrap();
        return Ok(r);
    }
    let path = req.uri().path().to_string();
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    let accept_encoding = req
        .headers()
        .get("accept-encoding")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let method = req.method().clone();
    let version = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let resp = match path.as_str() {
        "/file.exe" => Response::new(Full::new(Bytes::from_static(b"MZ\x90\x00 fake executable"))),
        "/report" => Response::builder()
            .header("content-disposition", "attachment; filename=\"setup.MSI\"")
            .body(Full::new(Bytes::from_static(b"installer")))
            .unwrap(),
        "/big.bin" | "/statement.txt" => {
            let all = if path == "/big.bin" {
                big_body()
            } else {
                CARD_TEXT.to_vec()
            };
            // Ranges honoured, as file servers do.
            match range {
                Some((a, b)) if a <= b && b < all.len() => Response::builder()
                    .status(206)
                    .header("content-range", format!("bytes {a}-{b}/{}", all.len()))
                    .body(Full::new(Bytes::copy_from_slice(&all[a..=b])))
                    .unwrap(),
                _ => Response::new(Full::new(Bytes::from(all))),
            }
        }
        // Larger than what the kernel's socket buffers hold (4 MiB send, at most).
        "/huge.bin" => Response::new(Full::new(Bytes::from(big_body().repeat(8)))),
        "/close" => Response::builder()
            .header("connection", "close")
            .body(Full::new(Bytes::from_static(b"closing")))
            .unwrap(),
        "/dl/semicolon" => Response::builder()
            .header(
                "content-disposition",
                "attachment; filename=\"safe.txt;.exe\"",
            )
            .body(Full::new(Bytes::from_static(b"MZ")))
            .unwrap(),
        "/dl/continued" => Response::builder()
            .header(
                "content-disposition",
                "attachment; filename*0*=UTF-8''ev; filename*1*=il%2Eexe",
            )
            .body(Full::new(Bytes::from_static(b"MZ")))
            .unwrap(),
        "/double.gz" => Response::builder()
            .header("content-type", "text/plain")
            .header("content-encoding", "gzip")
            .header("content-encoding", "gzip")
            .body(Full::new(Bytes::from(gzip(&gzip(CARD_TEXT)))))
            .unwrap(),
        "/statement.gz" => encoded("gzip", &gzip(CARD_TEXT)),
        "/clean.gz" => encoded("gzip", &gzip(CLEAN_TEXT)),
        "/opaque.dcb" => encoded("dcb", CLEAN_TEXT),
        "/accept-encoding" => Response::new(Full::new(Bytes::from(
            accept_encoding.unwrap_or_else(|| "(none)".into()),
        ))),
        _ => Response::new(Full::new(Bytes::from(format!(
            "origin saw {method} {path} over {version} with {} body bytes\n",
            body.len()
        )))),
    };
    Ok(resp)
}

/// A TLS origin on 127.0.0.1 serving `origin_service`.
async fn start_origin(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> SocketAddr {
    start_origin_on(certs, key, "127.0.0.1:0".parse().unwrap()).await
}

/// A test origin's TLS settings: ring, the safe protocol versions, the given certificate.
fn origin_tls(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> rustls::ServerConfig {
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap()
}

async fn start_origin_on(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    bind: SocketAddr,
) -> SocketAddr {
    let mut cfg = origin_tls(certs, key);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind(bind).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let io = TokioIo::new(tls);
                let svc = hyper::service::service_fn(origin_service);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .with_upgrades()
                        .await;
                }
            });
        }
    });
    addr
}

struct Env {
    dir: PathBuf,
    origin_ca: PathBuf,
    proxy_ca: PathBuf,
    audit: PathBuf,
    _tx: watch::Sender<HashSet<String>>,
    handle: tollgate_proxy::ProxyHandle,
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tgp-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A proxy in front of `origin`, with the test policies; app "files" = *.files.test is under
/// session control, "plain" = plain.test is not.
async fn start_proxy(tag: &str, origin: SocketAddr, origin_ca_pem: &str) -> (Env, SocketAddr) {
    start_proxy_with(tag, origin, origin_ca_pem, POLICIES, |_| {}).await
}

async fn start_proxy_with(
    tag: &str,
    origin: SocketAddr,
    origin_ca_pem: &str,
    policies: &str,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> (Env, SocketAddr) {
    start_proxy_opts(tag, origin, origin_ca_pem, policies, tweak, true).await
}

async fn start_proxy_opts(
    tag: &str,
    origin: SocketAddr,
    origin_ca_pem: &str,
    policies: &str,
    tweak: impl FnOnce(&mut ProxyConfig),
    loopback: bool,
) -> (Env, SocketAddr) {
    let dir = tmpdir(tag);
    let origin_ca = dir.join("origin-ca.pem");
    std::fs::write(&origin_ca, origin_ca_pem).unwrap();
    let audit = dir.join("audit.jsonl");
    let mut cfg = ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ca_dir: dir.join("ca"),
        upstream_ca_files: vec![origin_ca.clone()],
        upstream_no_system_roots: true,
        audit_log: Some(audit.clone()),
        max_inspect_bytes: tollgate_proxy::config::ByteSize(4 * 1024 * 1024),
        ..ProxyConfig::default()
    };
    tweak(&mut cfg);
    let policies: PolicySet = toml::from_str(policies).unwrap();
    let lookup: tollgate_proxy::AppLookup = Arc::new(|name: &str| {
        if name == "files.test" || name.ends_with(".files.test") {
            Some(AppInfo {
                id: "files".into(),
                category: Some("cloud_storage".into()),
            })
        } else if name == "plain.test" {
            Some(AppInfo {
                id: "plain".into(),
                category: None,
            })
        } else {
            None
        }
    });
    let (tx, rx) = watch::channel(HashSet::from(["files".to_string()]));
    let opts = StartOptions {
        destination: Destination::Fixed(origin),
        ca: None,
        // The test origins listen on 127.0.0.1.
        allow_loopback_destinations: loopback,
        audit_tap: None,
    };
    let h = SessionProxy::start_with(cfg, &policies, lookup, rx, opts)
        .await
        .unwrap();
    let proxy_ca = dir.join("proxy-ca.pem");
    std::fs::write(&proxy_ca, h.ca_pem()).unwrap();
    let addr = h.local_addr();
    (
        Env {
            dir,
            origin_ca,
            proxy_ca,
            audit,
            _tx: tx,
            handle: h,
        },
        addr,
    )
}

/// The test CA and a TLS origin for files.test, or `None` (skip) without curl.
async fn files_origin() -> Option<(TestCa, SocketAddr)> {
    if !have_curl() {
        eprintln!("skip: curl not installed");
        return None;
    }
    let ca = TestCa::new("tollgate test origin CA");
    let (certs, key) = ca.leaf("files.test");
    let origin = start_origin(certs, key).await;
    Some((ca, origin))
}

fn have_curl() -> bool {
    Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Run curl (blocking, in a thread) and return (status code, body bytes, stderr).
async fn curl(
    proxy: SocketAddr,
    host: &str,
    path: &str,
    cacert: &Path,
    extra: &[&str],
) -> (u16, Vec<u8>, String) {
    let url = format!("https://{host}:{}{path}", proxy.port());
    let resolve = format!("{host}:{}:127.0.0.1", proxy.port());
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "--max-time".into(),
        "20".into(),
        "--cacert".into(),
        cacert.display().to_string(),
        "--resolve".into(),
        resolve,
        "-o".into(),
        "-".into(),
        "-w".into(),
        "\n%{http_code}".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(url);
    let out =
        tokio::task::spawn_blocking(move || Command::new("curl").args(&args).output().unwrap())
            .await
            .unwrap();
    let mut stdout = out.stdout;
    let pos = stdout.iter().rposition(|b| *b == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(stdout.get(pos + 1..).unwrap_or(&[]))
        .trim()
        .parse()
        .unwrap_or(0);
    stdout.truncate(pos);
    (
        code,
        stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_the_proxy() {
    let Some((ca, origin)) = files_origin().await else {
        return;
    };
    let (env, proxy) = start_proxy("main", origin, &ca.issuer.pem()).await;

    for proto in ["--http1.1", "--http2"] {
        // An allowed download passes byte-identical, and is really intercepted (our CA).
        let (code, body, err) =
            curl(proxy, "files.test", "/big.bin", &env.proxy_ca, &[proto]).await;
        assert_eq!(code, 200, "{proto}: {err}");
        assert!(
            body == big_body(),
            "{proto}: body differs ({} bytes)",
            body.len()
        );

        // A blocked download type: HTML block page for browsers, JSON for API clients.
        let (code, body, _) = curl(
            proxy,
            "files.test",
            "/file.exe",
            &env.proxy_ca,
            &[proto, "-H", "Accept: text/html"],
        )
        .await;
        let page = String::from_utf8_lossy(&body);
        assert_eq!(code, 403, "{proto}: {page}");
        assert!(
            page.contains("<html>") && page.contains("no executables from cloud storage"),
            "{page}"
        );
        let (code, body, _) = curl(proxy, "files.test", "/report", &env.proxy_ca, &[proto]).await;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(code, 403);
        assert_eq!(json["error"], "blocked_by_tollgate");
        assert!(
            json["reason"].as_str().unwrap().contains("setup.MSI"),
            "{json}"
        );

        // Upload with a valid card number is blocked; a Luhn failure passes.
        let (code, body, _) = curl(
            proxy,
            "files.test",
            "/upload",
            &env.proxy_ca,
            &[proto, "--data", "card=4111 1111 1111 1111"],
        )
        .await;
        assert_eq!(code, 403, "{}", String::from_utf8_lossy(&body));
        let (code, body, _) = curl(
            proxy,
            "files.test",
            "/upload",
            &env.proxy_ca,
            &[proto, "--data", "card=4111 1111 1111 1112"],
        )
        .await;
        assert_eq!(code, 200);
        assert!(
            String::from_utf8_lossy(&body).contains("POST /upload"),
            "{}",
            String::from_utf8_lossy(&body)
        );
        // Multipart file upload with a card number inside the file.
        let file = env.dir.join("cards.csv");
        std::fs::write(&file, "name,card\nalice,5500-0055-5555-5559\n").unwrap();
        let form = format!("f=@{}", file.display());
        let (code, _, _) = curl(
            proxy,
            "files.test",
            "/upload",
            &env.proxy_ca,
            &[proto, "-F", &form],
        )
        .await;
        assert_eq!(code, 403);

        // Activity pattern.
        let (code, _, _) = curl(
            proxy,
            "files.test",
            "/2/sharing/create_link",
            &env.proxy_ca,
            &[proto, "-X", "POST"],
        )
        .await;
        assert_eq!(code, 403);
        let (code, _, _) = curl(
            proxy,
            "files.test",
            "/2/files/list",
            &env.proxy_ca,
            &[proto, "-X", "POST"],
        )
        .await;
        assert_eq!(code, 200);
    }

    // HTTP/2 end to end: the origin saw HTTP/2 when the client spoke it.
    let (_, body, _) = curl(proxy, "files.test", "/v", &env.proxy_ca, &["--http2"]).await;
    assert!(
        String::from_utf8_lossy(&body).contains("HTTP/2.0"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    // A domain not under session control is spliced: the client sees the origin's real
    // certificate (verifies with the origin CA alone, fails with ours alone).
    let (certs, key) = ca.leaf("plain.test");
    let plain_origin = start_origin(certs, key).await;
    let (env2, proxy2) = start_proxy_with("plain", plain_origin, &ca.issuer.pem(), POLICIES, |c| {
        c.uninspectable = tollgate_proxy::config::Uninspectable::Pass
    })
    .await;
    let (code, _, err) = curl(proxy2, "plain.test", "/x", &env2.origin_ca, &[]).await;
    assert_eq!(code, 200, "{err}");
    let (code, _, _) = curl(proxy2, "plain.test", "/x", &env2.proxy_ca, &[]).await;
    assert_eq!(
        code, 0,
        "our CA must not be able to verify a spliced connection"
    );

    // The audit log has the decisions with masked evidence only.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = std::fs::read_to_string(&env.audit).unwrap();
    assert!(log.contains("4111********1111"), "{log}");
    assert!(!log.contains("4111 1111 1111 1111") && !log.contains("4111111111111111"));
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    for k in ["time", "app", "src_ip", "policy", "action", "evidence"] {
        assert!(first.get(k).is_some(), "{k} missing in {first}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_origin_certificates_are_explained() {
    if !have_curl() {
        eprintln!("skip: curl not installed");
        return;
    }
    let ca = TestCa::new("tollgate test origin CA");
    // Wrong name.
    let (certs, key) = ca.leaf("someone-else.test");
    let origin = start_origin(certs, key).await;
    let (env, proxy) = start_proxy("wrongname", origin, &ca.issuer.pem()).await;
    let (code, body, _) = curl(
        proxy,
        "files.test",
        "/",
        &env.proxy_ca,
        &["-H", "Accept: text/html"],
    )
    .await;
    let page = String::from_utf8_lossy(&body);
    assert_eq!(code, 502, "{page}");
    assert!(page.contains("different name"), "{page}");

    // Untrusted CA.
    let rogue = TestCa::new("rogue CA");
    let (certs, key) = rogue.leaf("files.test");
    let origin = start_origin(certs, key).await;
    let (env, proxy) = start_proxy("untrusted", origin, &ca.issuer.pem()).await;
    let (code, body, _) = curl(proxy, "files.test", "/", &env.proxy_ca, &["--http2"]).await;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(code, 502);
    assert!(
        json["reason"].as_str().unwrap().contains("untrusted"),
        "{json}"
    );
}

/// A TLS connection to the proxy as `files.test`, trusting only the proxy's CA.
async fn tls_to_proxy(
    proxy: SocketAddr,
    proxy_ca: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    tls_over(tcp, proxy_ca).await
}

/// TLS as `files.test` over a connection to the proxy, trusting only the proxy's CA.
async fn tls_over(
    tcp: tokio::net::TcpStream,
    proxy_ca: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls_over_alpn(tcp, proxy_ca, Vec::new()).await
}

/// TLS to the proxy as `files.test`, with HTTP/2 agreed.
async fn h2_tls_to_proxy(
    proxy: SocketAddr,
    proxy_ca: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let tls = tls_over_alpn(tcp, proxy_ca, vec![b"h2".to_vec()]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls
}

async fn tls_over_alpn(
    tcp: tokio::net::TcpStream,
    proxy_ca: &Path,
    alpn: Vec<Vec<u8>>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(proxy_ca).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn;
    let name = rustls::pki_types::ServerName::try_from("files.test").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// Raw HTTP/1.1 over TLS, for requests curl refuses to send.
async fn raw_request(proxy: SocketAddr, proxy_ca: &Path, request: &[u8]) -> String {
    let mut tls = tls_to_proxy(proxy, proxy_ca).await;
    tls.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_and_bad_input_rejected() {
    let ca = TestCa::new("tollgate test origin CA");
    let (certs, key) = ca.leaf("files.test");
    let origin = start_origin(certs, key).await;
    let (env, proxy) = start_proxy("smuggle", origin, &ca.issuer.pem()).await;

    let cl_te = b"POST /a HTTP/1.1\r\nHost: files.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: files.test\r\n\r\n";
    let r = raw_request(proxy, &env.proxy_ca, cl_te).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(!r.contains("origin saw"), "nothing forwarded: {r}");

    let double_cl = b"POST /a HTTP/1.1\r\nHost: files.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc";
    let r = raw_request(proxy, &env.proxy_ca, double_cl).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");

    let conflicting_cl = b"POST /a HTTP/1.1\r\nHost: files.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd";
    let r = raw_request(proxy, &env.proxy_ca, conflicting_cl).await;
    assert!(r.starts_with("HTTP/1.1 400") || r.is_empty(), "{r}");
    assert!(!r.contains("origin saw"));

    let te_identity =
        b"POST /a HTTP/1.1\r\nHost: files.test\r\nTransfer-Encoding: identity\r\n\r\nabc";
    let r = raw_request(proxy, &env.proxy_ca, te_identity).await;
    assert!(!r.contains("origin saw"), "{r}");

    let huge = format!(
        "GET / HTTP/1.1\r\nHost: files.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let r = raw_request(proxy, &env.proxy_ca, huge.as_bytes()).await;
    assert!(
        r.starts_with("HTTP/1.1 431") || r.is_empty(),
        "{}",
        &r[..r.len().min(200)]
    );

    // A client cannot forge the guard's internal rejection request.
    let forged = b"GET /forged HTTP/1.1\r\nHost: files.test\r\nx-tollgate-guard: 00112233445566778899aabbccddeeff\r\nConnection: close\r\n\r\n";
    let r = raw_request(proxy, &env.proxy_ca, forged).await;
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("origin saw GET /forged"),
        "{r}"
    );

    // A well-formed request on the same kind of connection works.
    let ok = b"GET /fine HTTP/1.1\r\nHost: files.test\r\nConnection: close\r\n\r\n";
    let r = raw_request(proxy, &env.proxy_ca, ok).await;
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("origin saw GET /fine"),
        "{r}"
    );

    // Garbage instead of a ClientHello, and an abrupt disconnect mid-hello: no panic, and the
    // proxy keeps serving.
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        .await
        .unwrap();
    drop(s);
    let r = raw_request(proxy, &env.proxy_ca, ok).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rejecting_our_ca_is_bypassed() {
    let Some((ca, origin)) = files_origin().await else {
        return;
    };
    // Only for an app the admin listed.
    let (env, proxy) = start_proxy_with("reject", origin, &ca.issuer.pem(), POLICIES, |c| {
        c.client_reject_bypass_apps = vec!["files".into()]
    })
    .await;
    // A client that trusts only the real CA (a pinning app) rejects our leaf...
    let (code, _, err) = curl(proxy, "files.test", "/x", &env.origin_ca, &[]).await;
    assert_eq!(code, 0, "first attempt must fail: {err}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // ...and is spliced from then on: it sees the origin's real certificate.
    let (code, body, err) = curl(proxy, "files.test", "/x", &env.origin_ca, &[]).await;
    assert_eq!(code, 200, "{err}");
    assert!(String::from_utf8_lossy(&body).contains("origin saw GET /x"));
    // Other clients (addresses) are still intercepted: here the same address, so the
    // proxy's CA no longer verifies for it.
    let (code, _, _) = curl(proxy, "files.test", "/x", &env.proxy_ca, &[]).await;
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_policies_by_user_agent_and_source() {
    let Some((ca, origin)) = files_origin().await else {
        return;
    };
    let policies = r#"
[[access_policies]]
name = "no scripted access from unmanaged devices"
apps = ["files"]
action = "block"
device = "unmanaged"
user_agents = ["^python-requests/"]

[[access_policies]]
name = "watch loopback"
apps = ["*"]
action = "monitor"
ip_tags = ["lab"]
"#;
    let (env, proxy) = start_proxy_with("access", origin, &ca.issuer.pem(), policies, |c| {
        c.ip_tags
            .insert("lab".into(), vec!["127.0.0.0/8".parse().unwrap()]);
        c.users
            .insert("alice".into(), vec!["127.0.0.1/32".parse().unwrap()]);
    })
    .await;
    let (code, body, _) = curl(
        proxy,
        "files.test",
        "/x",
        &env.proxy_ca,
        &["-A", "python-requests/2.31"],
    )
    .await;
    assert_eq!(code, 403, "{}", String::from_utf8_lossy(&body));
    let (code, _, _) = curl(
        proxy,
        "files.test",
        "/x",
        &env.proxy_ca,
        &["-A", "Mozilla/5.0"],
    )
    .await;
    assert_eq!(code, 200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = std::fs::read_to_string(&env.audit).unwrap();
    let recs: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        recs.iter()
            .any(|r| r["action"] == "block" && r["user"] == "alice"),
        "{log}"
    );
    assert!(
        recs.iter()
            .any(|r| r["action"] == "audit" && r["policy"] == "watch loopback"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let ca = TestCa::new("tollgate test origin CA");
    let (certs, key) = ca.leaf("files.test");
    let origin = start_origin(certs, key).await;
    let (env, proxy) = start_proxy_with("slow", origin, &ca.issuer.pem(), POLICIES, |c| {
        c.header_read_timeout_secs = 1
    })
    .await;
    // A head that never completes: the proxy closes the connection (bounded wait).
    let started = std::time::Instant::now();
    let r = raw_request(
        proxy,
        &env.proxy_ca,
        b"GET / HTTP/1.1\r\nHost: files.test\r\nX-Slow: ",
    )
    .await;
    assert!(!r.contains("origin saw"), "{r}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "connection was not closed by the proxy"
    );
    // A silent TCP client (no ClientHello) is dropped after the handshake timeout too; and
    // the proxy still serves.
    let ok = b"GET /fine HTTP/1.1\r\nHost: files.test\r\nConnection: close\r\n\r\n";
    assert!(
        raw_request(proxy, &env.proxy_ca, ok)
            .await
            .starts_with("HTTP/1.1 200")
    );
}

/// Send a real ClientHello, then close without answering the server's flight.
async fn drop_mid_handshake(proxy: SocketAddr, ca: &Path) {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("files.test").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(&hello).await.unwrap();
    let mut buf = [0u8; 1];
    // Wait for the server's first bytes (its flight), then vanish.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await;
    drop(s);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_drops_bypass_only_clients_that_never_trusted_us() {
    let Some((ca, origin)) = files_origin().await else {
        return;
    };
    let ok = b"GET /fine HTTP/1.1\r\nHost: files.test\r\nConnection: close\r\n\r\n";

    // A client that has completed handshakes with our CA and then drops some mid-handshake
    // (a load generator stopping, a closed tab) stays intercepted.
    let (env, proxy) = start_proxy_with("silent1", origin, &ca.issuer.pem(), POLICIES, |c| {
        c.client_reject_bypass_apps = vec!["files".into()]
    })
    .await;
    assert!(
        raw_request(proxy, &env.proxy_ca, ok)
            .await
            .starts_with("HTTP/1.1 200")
    );
    for _ in 0..3 {
        drop_mid_handshake(proxy, &env.proxy_ca).await;
    }
    assert!(
        raw_request(proxy, &env.proxy_ca, ok)
            .await
            .starts_with("HTTP/1.1 200")
    );

    // A client that never completes a handshake and closes silently (a pinning app without
    // alerts) is spliced after two tries: it then sees the origin's own certificate.
    let (env, proxy) = start_proxy_with("silent2", origin, &ca.issuer.pem(), POLICIES, |c| {
        c.client_reject_bypass_apps = vec!["files".into()]
    })
    .await;
    drop_mid_handshake(proxy, &env.proxy_ca).await;
    let (code, _, _) = curl(proxy, "files.test", "/x", &env.proxy_ca, &[]).await;
    assert_eq!(code, 200, "one silent drop is not enough");
    let (env, proxy) = start_proxy_with("silent3", origin, &ca.issuer.pem(), POLICIES, |c| {
        c.client_reject_bypass_apps = vec!["files".into()]
    })
    .await;
    drop_mid_handshake(proxy, &env.proxy_ca).await;
    drop_mid_handshake(proxy, &env.proxy_ca).await;
    let (code, _, err) = curl(proxy, "files.test", "/x", &env.origin_ca, &[]).await;
    assert_eq!(code, 200, "spliced after two silent drops: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_devices_by_client_certificate_and_policy_reload() {
    let Some((ca, origin)) = files_origin().await else {
        return;
    };
    // A device CA and one device certificate.
    let device_ca = TestCa::new("device CA");
    let dev_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["laptop-17.corp.test".to_string()]).unwrap();
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let dev_cert = p.signed_by(&dev_key, &device_ca.issuer).unwrap();
    let dir = tmpdir("device-files");
    let (ca_path, cert_path, key_path) = (
        dir.join("device-ca.pem"),
        dir.join("dev.pem"),
        dir.join("dev.key"),
    );
    std::fs::write(&ca_path, device_ca.issuer.pem()).unwrap();
    std::fs::write(&cert_path, dev_cert.pem()).unwrap();
    std::fs::write(&key_path, dev_key.serialize_pem()).unwrap();

    let policies = r#"
[[access_policies]]
name = "managed devices only"
apps = ["files"]
action = "block"
device = "unmanaged"
"#;
    let ca_for_cfg = ca_path.clone();
    let (env, proxy) = start_proxy_with("device", origin, &ca.issuer.pem(), policies, move |c| {
        c.managed_devices.client_ca_file = Some(ca_for_cfg);
    })
    .await;
    let (code, _, _) = curl(proxy, "files.test", "/x", &env.proxy_ca, &[]).await;
    assert_eq!(code, 403, "no client certificate: unmanaged");
    let cert_arg = cert_path.display().to_string();
    let key_arg = key_path.display().to_string();
    let (code, body, err) = curl(
        proxy,
        "files.test",
        "/x",
        &env.proxy_ca,
        &["--cert", &cert_arg, "--key", &key_arg],
    )
    .await;
    assert_eq!(code, 200, "{err} {}", String::from_utf8_lossy(&body));

    // Reload: drop the access policy; an invalid set is refused and leaves the running one.
    let bad: PolicySet = toml::from_str(
        "[[access_policies]]\nname='x'\napps=['*']\naction='block'\nip_tags=['nope']\n",
    )
    .unwrap();
    assert!(env.handle.update_policies(&bad).is_err());
    let (code, _, _) = curl(proxy, "files.test", "/x", &env.proxy_ca, &[]).await;
    assert_eq!(code, 403);
    env.handle.update_policies(&PolicySet::default()).unwrap();
    let (code, _, _) = curl(proxy, "files.test", "/x", &env.proxy_ca, &[]).await;
    assert_eq!(code, 200);
}

/// Headless Chromium trusting our CA through an NSS database (skips without chromium and
/// certutil): the block page renders for a blocked download, a page loads over HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_headless_through_the_proxy() {
    let have = |c: &str, a: &str| {
        Command::new(c)
            .arg(a)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("chromium", "--version") || !have("which", "certutil") {
        eprintln!("skip: chromium or certutil (libnss3-tools) not installed");
        return;
    }
    let ca = TestCa::new("tollgate test origin CA");
    let (certs, key) = ca.leaf("files.test");
    let origin = start_origin(certs, key).await;
    let (env, proxy) = start_proxy("chromium", origin, &ca.issuer.pem()).await;
    let home = env.dir.join("home");
    let nssdb = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", nssdb.display());
    let ok = Command::new("certutil")
        .args(["-N", "-d", &db, "--empty-password"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "certutil -N");
    let ca_file = env.proxy_ca.display().to_string();
    let ok = Command::new("certutil")
        .args([
            "-A",
            "-d",
            &db,
            "-n",
            "tollgate-test",
            "-t",
            "C,,",
            "-i",
            &ca_file,
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok, "certutil -A");
    let dump = |path: &str| {
        let url = format!("https://files.test:{}{path}", proxy.port());
        let home = home.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new("timeout")
                .args([
                    "60",
                    "chromium",
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                ])
                .arg("--host-resolver-rules=MAP files.test 127.0.0.1")
                .arg(format!(
                    "--user-data-dir={}",
                    home.join("profile").display()
                ))
                .args(["--dump-dom", &url])
                .env("HOME", &home)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let page = dump("/file.exe").await.unwrap();
    assert!(
        page.contains("Download blocked") && page.contains("no executables from cloud storage"),
        "{page}"
    );
    let page = dump("/hello").await.unwrap();
    assert!(
        page.contains("origin saw GET /hello over HTTP/2.0"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_relayed() {
    let ca = TestCa::new("tollgate test origin CA");
    let (certs, key) = ca.leaf("files.test");
    let origin = start_origin(certs, key).await;
    let (env, proxy) = start_proxy("upgrade", origin, &ca.issuer.pem()).await;
    let mut tls = tls_to_proxy(proxy, &env.proxy_ca).await;
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nHost: files.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "closed early: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 101") && head.contains("upgrade: websocket"),
        "{head}"
    );
    // Bytes that look like an ambiguous HTTP head are just tunnel data now.
    let payload = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    tls.write_all(payload).await.unwrap();
    let mut echo = vec![0u8; payload.len()];
    tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echo, payload);
}

/// Downloads in a content coding are inspected decoded and passed on as sent; a coding the
/// proxy cannot decode is not waved through; requests offer only decodable codings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_downloads_are_inspected() {
    let Some((ca, origin)) = files_origin().await else {
        return;
    };
    let policies = r#"
[[session_policies]]
name = "no card numbers in"
apps = ["files"]
action = "block"
download = { content = ["credit_card"], min_matches = 1 }
"#;
    let (env, proxy) = start_proxy_with("gzip", origin, &ca.issuer.pem(), policies, |_| {}).await;
    for proto in ["--http1.1", "--http2"] {
        let (code, body, err) = curl(
            proxy,
            "files.test",
            "/statement.gz",
            &env.proxy_ca,
            &[proto, "--compressed"],
        )
        .await;
        assert_eq!(
            code, 403,
            "{proto}: a card number inside gzip passed: {err}"
        );
        assert!(String::from_utf8_lossy(&body).contains("no card numbers in"));
        // Passed on as the origin sent it: curl decodes it itself.
        let (code, body, err) = curl(
            proxy,
            "files.test",
            "/clean.gz",
            &env.proxy_ca,
            &[proto, "--compressed"],
        )
        .await;
        assert_eq!((code, body.as_slice()), (200, CLEAN_TEXT), "{proto}: {err}");
        let (code, body, _) = curl(proxy, "files.test", "/clean.gz", &env.proxy_ca, &[proto]).await;
        assert_eq!(
            (code, body),
            (200, gzip(CLEAN_TEXT)),
            "{proto}: bytes as sent"
        );
        // A coding the proxy cannot decode: blocked (over_limit_action = block), not passed.
        let (code, body, _) =
            curl(proxy, "files.test", "/opaque.dcb", &env.proxy_ca, &[proto]).await;
        assert_eq!(code, 403, "{proto}: {}", String::from_utf8_lossy(&body));
        let (_, body, _) = curl(
            proxy,
            "files.test",
            "/accept-encoding",
            &env.proxy_ca,
            &[
                proto,
                "-H",
                "Accept-Encoding: gzip, deflate, br, zstd, dcb, dcz",
            ],
        )
        .await;
        assert_eq!(String::from_utf8_lossy(&body), "gzip, deflate, br, zstd");
    }
    let audit = std::fs::read_to_string(&env.audit).unwrap();
    assert!(
        audit.contains("content coding, which cannot be inspected"),
        "{audit}"
    );
    assert!(
        !audit.contains("4111 1111 1111 1111"),
        "evidence is masked: {audit}"
    );
}

fn audit_log(env: &Env) -> String {
    std::fs::read_to_string(&env.audit).unwrap_or_default()
}

/// `Upgrade` is no way around inspection: a GET of a blocked file with `Upgrade: websocket`
/// answered 200 by the origin is judged like any download; h2c and other protocols are
/// refused; a POST with `Upgrade` gets upload inspection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_headers_do_not_skip_inspection() {
    let Some((ca, origin)) = files_origin().await else {
        return;
    };
    let (env, proxy) = start_proxy("upgrade-dlp", origin, &ca.issuer.pem()).await;
    let ws = [
        "--http1.1",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
    ];
    let (code, body, err) = curl(proxy, "files.test", "/file.exe", &env.proxy_ca, &ws).await;
    assert_eq!(
        code,
        403,
        "an executable fetched with Upgrade passed: {err} {}",
        String::from_utf8_lossy(&body)
    );
    assert!(!body.starts_with(b"MZ"));

    let mut post = ws.to_vec();
    post.extend(["--data", "card=4111 1111 1111 1111"]);
    let (code, body, _) = curl(proxy, "files.test", "/upload", &env.proxy_ca, &post).await;
    assert_eq!(
        code,
        403,
        "a card number uploaded with Upgrade passed: {}",
        String::from_utf8_lossy(&body)
    );

    let h2c = [
        "--http1.1",
        "-H",
        "Connection: Upgrade, HTTP2-Settings",
        "-H",
        "Upgrade: h2c",
        "-H",
        "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA",
    ];
    let (code, body, _) = curl(proxy, "files.test", "/x", &env.proxy_ca, &h2c).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(code, 400, "h2c upgrade not refused: {text}");
    assert!(
        !text.contains("origin saw"),
        "h2c reached the origin: {text}"
    );

    // A real WebSocket handshake is still relayed (upgrades_are_relayed has the tunnel).
    let mut tls = tls_to_proxy(proxy, &env.proxy_ca).await;
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nHost: files.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
}

/// A client that refuses our certificate once does not switch session control off for
/// itself: the app is not listed in client_reject_bypass_apps. The rejection is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_handshake_does_not_bypass_unlisted_apps() {
    let Some((ca, origin)) = files_origin().await else {
        return;
    };
    let (env, proxy) = start_proxy("reject-unlisted", origin, &ca.issuer.pem()).await;
    for _ in 0..2 {
        let (code, _, _) = curl(proxy, "files.test", "/x", &env.origin_ca, &[]).await;
        assert_eq!(
            code, 0,
            "the client must never see the origin's own certificate"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Still intercepted, policies still apply.
    let (code, _, _) = curl(proxy, "files.test", "/file.exe", &env.proxy_ca, &[]).await;
    assert_eq!(code, 403);
    let st = env.handle.stats();
    assert!(st.client_rejected_ca >= 1, "{st:?}");
    assert_eq!(st.client_reject_bypasses, 0, "{st:?}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = audit_log(&env);
    assert!(
        log.contains("client certificate rejection") && log.contains("stays under session control"),
        "{log}"
    );
}

/// The listed app's bypass is audited and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_reject_bypass_is_audited() {
    let Some((ca, origin)) = files_origin().await else {
        return;
    };
    let (env, proxy) = start_proxy_with("reject-listed", origin, &ca.issuer.pem(), POLICIES, |c| {
        c.client_reject_bypass_apps = vec!["files".into()]
    })
    .await;
    let (code, _, _) = curl(proxy, "files.test", "/x", &env.origin_ca, &[]).await;
    assert_eq!(code, 0);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (code, _, err) = curl(proxy, "files.test", "/x", &env.origin_ca, &[]).await;
    assert_eq!(code, 200, "{err}");
    assert_eq!(env.handle.stats().client_reject_bypasses, 1);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = audit_log(&env);
    assert!(
        log.contains("\"action\":\"splice\"") && log.contains("client_reject_bypass_apps"),
        "{log}"
    );
}

/// Steered connections that cannot be inspected (no SNI, an SNI of no session app) are
/// closed by default, and audited; `uninspectable = "pass"` splices them, audited too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninspectable_connections_are_blocked_by_default() {
    let Some((ca, origin)) = files_origin().await else {
        return;
    };
    let (env, proxy) = start_proxy("uninspectable", origin, &ca.issuer.pem()).await;
    // An SNI that is no app under session control; -k: whatever certificate comes back.
    let (code, body, _) = curl(proxy, "other.test", "/x", &env.proxy_ca, &["-k"]).await;
    assert_eq!(
        code,
        0,
        "foreign SNI reached the origin uninspected: {}",
        String::from_utf8_lossy(&body)
    );
    // No SNI at all (openssl s_client -noservername) sending a request for the app.
    let have_openssl = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if have_openssl {
        let port = proxy.port();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "printf 'GET /file.exe HTTP/1.1\\r\\nHost: files.test\\r\\nConnection: close\\r\\n\\r\\n' | timeout 10 openssl s_client -quiet -connect 127.0.0.1:{port} -noservername 2>&1"
                ))
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("MZ") && !text.contains("HTTP/1.1 200"),
            "no-SNI connection reached the origin: {text}"
        );
    } else {
        eprintln!("SKIP no-SNI part: openssl not installed");
    }
    let st = env.handle.stats();
    assert!(st.uninspectable_blocked > u64::from(have_openssl), "{st:?}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = audit_log(&env);
    assert!(
        log.contains("\"policy\":\"uninspectable\"") && log.contains("other.test"),
        "{log}"
    );

    // "pass": spliced (the client sees the origin's own certificate), and audited.
    let (env, proxy) = start_proxy_with(
        "uninspectable-pass",
        origin,
        &ca.issuer.pem(),
        POLICIES,
        |c| c.uninspectable = tollgate_proxy::config::Uninspectable::Pass,
    )
    .await;
    let (code, _, _) = curl(proxy, "other.test", "/x", &env.proxy_ca, &["-k"]).await;
    assert_eq!(code, 200);
    assert_eq!(env.handle.stats().steered_splices, 1);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(audit_log(&env).contains("\"action\":\"splice\""));
}

/// File names hidden from the extension check by encoding and parsing tricks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disguised_file_names_are_caught() {
    let Some((ca, origin)) = files_origin().await else {
        return;
    };
    let policies = r#"
[[session_policies]]
name = "no executables"
apps = ["files"]
action = "block"
download = { file_extensions = ["exe"] }
upload = { file_extensions = ["exe"] }
"#;
    let (env, proxy) = start_proxy_with("names", origin, &ca.issuer.pem(), policies, |_| {}).await;
    for proto in ["--http1.1", "--http2"] {
        for path in [
            "/evil.ex%65",
            "/evil%2Eexe",
            "/evil.exe.",
            "/evil.exe;jsessionid=1",
            "/evil.exe/",
            "/dl/semicolon",
            "/dl/continued",
        ] {
            let (code, body, _) = curl(
                proxy,
                "files.test",
                path,
                &env.proxy_ca,
                &[proto, "--path-as-is"],
            )
            .await;
            assert_eq!(
                code,
                403,
                "{proto} {path}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let file = env.dir.join("payload.bin");
        std::fs::write(&file, b"MZ").unwrap();
        for name in ["evil.exe.", "evil.exe ", "safe.txt\\\";.exe"] {
            let form = format!("f=@{};filename=\"{name}\"", file.display());
            let (code, body, _) = curl(
                proxy,
                "files.test",
                "/upload",
                &env.proxy_ca,
                &[proto, "-F", &form],
            )
            .await;
            assert_eq!(
                code,
                403,
                "{proto} upload {name}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        // The executable in part 300: more parts than are inspected is over the limit.
        let mut args: Vec<String> = vec![proto.into()];
        for i in 0..300 {
            args.push("-F".into());
            args.push(format!("p{i}=x"));
        }
        args.push("-F".into());
        args.push(format!("f=@{};filename=evil.exe", file.display()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, _) = curl(proxy, "files.test", "/upload", &env.proxy_ca, &refs).await;
        assert_eq!(code, 403, "{proto}: executable in part 301");
        // A plain upload still passes.
        let (code, _, _) = curl(
            proxy,
            "files.test",
            "/upload",
            &env.proxy_ca,
            &[proto, "-F", "note=hello"],
        )
        .await;
        assert_eq!(code, 200);
    }
}

/// Double gzip (two Content-Encoding headers) and Range pieces cannot hide content or size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codings_and_ranges_cannot_split_a_file() {
    let Some((ca, origin)) = files_origin().await else {
        return;
    };
    let policies = r#"
[[session_policies]]
name = "no card numbers in"
apps = ["files"]
action = "block"
download = { content = ["credit_card"], min_matches = 1 }

[[session_policies]]
name = "nothing big"
apps = ["files"]
action = "block"
download = { max_size = "512KiB" }
"#;
    let (env, proxy) = start_proxy_with("ranges", origin, &ca.issuer.pem(), policies, |_| {}).await;
    for proto in ["--http1.1", "--http2"] {
        let (code, body, _) =
            curl(proxy, "files.test", "/double.gz", &env.proxy_ca, &[proto]).await;
        assert_eq!(
            code,
            403,
            "{proto}: a card number in double gzip passed ({} bytes)",
            body.len()
        );
        // The card number split over two ranges: each piece alone has no valid number.
        for r in ["0-25", "26-60"] {
            let (code, body, _) = curl(
                proxy,
                "files.test",
                "/statement.txt",
                &env.proxy_ca,
                &[proto, "-r", r],
            )
            .await;
            assert_eq!(
                code,
                403,
                "{proto} range {r}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        // A 1 MiB file over max_size fetched as a small range.
        let (code, body, _) = curl(
            proxy,
            "files.test",
            "/big.bin",
            &env.proxy_ca,
            &[proto, "-r", "0-1023"],
        )
        .await;
        assert_eq!(code, 403, "{proto}: {} bytes passed", body.len());
    }
}

/// Activity rules see the normalised path and host; the origin gets the judged authority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_paths_and_hosts_are_normalised() {
    let Some((ca, origin)) = files_origin().await else {
        return;
    };
    let (env, proxy) = start_proxy("normalise", origin, &ca.issuer.pem()).await;
    for path in [
        "//2/sharing/create_link",
        "/2/%73haring/create_link",
        "/2/./sharing/create_link",
        "/2/x/../sharing/create_link",
    ] {
        let (code, _, _) = curl(
            proxy,
            "files.test",
            path,
            &env.proxy_ca,
            &["-X", "POST", "--path-as-is"],
        )
        .await;
        assert_eq!(code, 403, "{path}");
    }
    // An absolute-form target that disagrees with Host is refused.
    let r = raw_request(
        proxy,
        &env.proxy_ca,
        b"GET https://a.files.test/x HTTP/1.1\r\nHost: b.files.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(!r.contains("origin saw"), "{r}");
}

/// A client with idle HTTP/2 connections does not keep them (and a connection permit) for
/// ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed() {
    let ca = TestCa::new("tollgate test origin CA");
    let (certs, key) = ca.leaf("files.test");
    let origin = start_origin(certs, key).await;
    let (env, proxy) = start_proxy_with("idle", origin, &ca.issuer.pem(), POLICIES, |c| {
        c.idle_timeout_secs = 1
    })
    .await;
    let tls = h2_tls_to_proxy(proxy, &env.proxy_ca).await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::builder()
        .uri("https://files.test/hello")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    // The proxy sends GOAWAY and closes after a second without a request.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(6), conn).await;
    assert!(ended.is_ok(), "idle h2 connection still open");
    assert!(env.handle.stats().idle_closed >= 1);
}

/// A burst of large uploads that need content inspection never takes the proxy past its
/// inspection memory budget: the rest wait, or are refused with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_burst_stays_within_the_budget() {
    let Some((ca, origin)) = files_origin().await else {
        return;
    };
    let budget = 4 * 1024 * 1024u64;
    let (env, proxy) = start_proxy_with("budget", origin, &ca.issuer.pem(), POLICIES, |c| {
        c.max_inspect_bytes = tollgate_proxy::config::ByteSize(2 * 1024 * 1024);
        c.max_buffered_bytes = tollgate_proxy::config::ByteSize(budget);
        c.body_read_timeout_secs = 3;
    })
    .await;
    let file = env.dir.join("upload.bin");
    std::fs::write(&file, vec![b'a'; 1_900_000]).unwrap();
    let data = format!("@{}", file.display());
    let mut jobs = Vec::new();
    for _ in 0..12 {
        let (ca, data) = (env.proxy_ca.clone(), data.clone());
        jobs.push(tokio::spawn(async move {
            curl(
                proxy,
                "files.test",
                "/upload",
                &ca,
                &["--http1.1", "--data-binary", &data],
            )
            .await
            .0
        }));
    }
    let mut codes = Vec::new();
    for j in jobs {
        codes.push(j.await.unwrap());
    }
    let st = env.handle.stats();
    assert!(
        codes.iter().all(|c| *c == 200 || *c == 503),
        "{codes:?} {st:?}"
    );
    assert!(codes.contains(&200), "{codes:?}");
    assert!(
        st.buffered_bytes_peak <= budget,
        "peak {} > budget {budget}",
        st.buffered_bytes_peak
    );
    assert!(
        st.budget_waits > 0,
        "12 x 1.9 MB in a 4 MiB budget never waited: {st:?}"
    );
    assert_eq!(st.buffered_bytes, 0, "memory not given back: {st:?}");
}

const DOWNLOAD_CONTENT_POLICY: &str = r#"
[[session_policies]]
name = "no card numbers in downloads"
apps = ["files"]
action = "block"
download = { content = ["credit_card"] }
"#;

/// An HTTP/1.1 TLS origin that counts its connections and requests; a request for a path
/// under `/held` gets its answer only when the test adds a permit to `release`.
struct HeldOrigin {
    addr: SocketAddr,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    release: Arc<tokio::sync::Semaphore>,
}

async fn start_held_origin(ca: &TestCa) -> HeldOrigin {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (certs, key) = ca.leaf("files.test");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(origin_tls(certs, key)));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let o = HeldOrigin {
        addr: l.local_addr().unwrap(),
        connections: Arc::new(AtomicUsize::new(0)),
        requests: Arc::new(AtomicUsize::new(0)),
        release: Arc::new(tokio::sync::Semaphore::new(0)),
    };
    let (connections, requests, release) =
        (o.connections.clone(), o.requests.clone(), o.release.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, requests, release) =
                (acceptor.clone(), requests.clone(), release.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (requests, release) = (requests.clone(), release.clone());
                    async move {
                        requests.fetch_add(1, Ordering::SeqCst);
                        if req.uri().path().starts_with("/held") {
                            release.acquire().await.unwrap().forget();
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "answer to {}\n",
                            req.uri().path()
                        )))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    o
}

/// Waits (polling) until `cond` holds; panics after a generous while.
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..3000 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

/// A proxy whose inspection memory budget is one 1 MiB download, and that download (of
/// `/held/first`) already running and holding it, its answer held at the origin until
/// `o.release` gets a permit.
struct BudgetHeld {
    o: HeldOrigin,
    env: Env,
    proxy: SocketAddr,
    mib: tollgate_proxy::config::ByteSize,
    first: tokio::task::JoinHandle<(u16, Vec<u8>, String)>,
}

impl BudgetHeld {
    async fn start(tag: &str, body_read_timeout_secs: u64) -> BudgetHeld {
        use std::sync::atomic::Ordering::SeqCst;
        let ca = TestCa::new("tollgate test origin CA");
        let o = start_held_origin(&ca).await;
        let mib = tollgate_proxy::config::ByteSize(1024 * 1024);
        let (env, proxy) = start_proxy_with(
            tag,
            o.addr,
            &ca.issuer.pem(),
            DOWNLOAD_CONTENT_POLICY,
            |c| {
                c.max_inspect_bytes = mib;
                c.max_buffered_bytes = mib;
                c.body_read_timeout_secs = body_read_timeout_secs;
            },
        )
        .await;
        let first = get(&env, proxy, "/held/first");
        until("the first request reached the origin", || {
            o.requests.load(SeqCst) == 1
        })
        .await;
        BudgetHeld {
            o,
            env,
            proxy,
            mib,
            first,
        }
    }

    fn get(&self, path: &'static str) -> tokio::task::JoinHandle<(u16, Vec<u8>, String)> {
        get(&self.env, self.proxy, path)
    }
}

/// A download of `path` from files.test through the proxy, running.
fn get(
    env: &Env,
    proxy: SocketAddr,
    path: &'static str,
) -> tokio::task::JoinHandle<(u16, Vec<u8>, String)> {
    let ca = env.proxy_ca.clone();
    tokio::spawn(async move { curl(proxy, "files.test", path, &ca, &["--http1.1"]).await })
}

/// A download that will be buffered for inspection is admitted to the inspection memory
/// budget before its request goes to the origin: while the budget is taken, a second
/// download waits holding only its client connection (no origin connection, no request
/// sent), and goes ahead once the first one is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspected_downloads_are_admitted_before_the_origin_request() {
    use std::sync::atomic::Ordering::SeqCst;
    if !have_curl() {
        eprintln!("skip: curl not installed");
        return;
    }
    let BudgetHeld {
        o,
        env,
        proxy,
        mib,
        first,
    } = BudgetHeld::start("admit", 60).await;
    let h = &env.handle;
    assert_eq!(
        h.stats().buffered_bytes,
        mib.0,
        "the first download's reservation"
    );
    let second = get(&env, proxy, "/second");
    until("the second download waits or reaches the origin", || {
        h.stats().budget_waits >= 1 || o.requests.load(SeqCst) > 1
    })
    .await;
    assert_eq!(
        o.requests.load(SeqCst),
        1,
        "the second request went upstream"
    );
    assert_eq!(
        o.connections.load(SeqCst),
        1,
        "the waiting download opened an origin connection"
    );
    o.release.add_permits(1);
    let (code, body, err) = first.await.unwrap();
    assert_eq!(code, 200, "{err}");
    assert_eq!(body, b"answer to /held/first\n");
    let (code, body, err) = second.await.unwrap();
    assert_eq!(code, 200, "{err}");
    assert_eq!(body, b"answer to /second\n");
    let st = h.stats();
    assert_eq!(o.requests.load(SeqCst), 2);
    assert_eq!(st.budget_refusals, 0, "{st:?}");
    assert_eq!(st.buffered_bytes, 0, "memory not given back: {st:?}");
    assert!(st.buffered_bytes_peak <= mib.0, "{st:?}");
}

/// A download that cannot get its inspection memory reservation in time is refused with 503
/// (counted, audited) and never sent to the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_not_admitted_in_time_is_refused() {
    use std::sync::atomic::Ordering::SeqCst;
    if !have_curl() {
        eprintln!("skip: curl not installed");
        return;
    }
    // The first download holds the whole budget while the origin keeps its answer.
    let held = BudgetHeld::start("admit-refused", 1).await;
    let (code, body, err) = held.get("/refused").await.unwrap();
    assert_eq!(code, 503, "{err} {}", String::from_utf8_lossy(&body));
    let st = held.env.handle.stats();
    assert_eq!(st.budget_refusals, 1, "{st:?}");
    assert_eq!(
        held.o.requests.load(SeqCst),
        1,
        "the refused request went upstream"
    );
    until("the refusal is audited", || {
        audit_log(&held.env)
            .lines()
            .any(|l| l.contains("/refused") && l.contains("inspection memory"))
    })
    .await;
    held.o.release.add_permits(1);
    let (code, _, err) = held.first.await.unwrap();
    assert_eq!(code, 200, "{err}");
    assert_eq!(held.env.handle.stats().buffered_bytes, 0);
}

/// The proxy connects only to the original destination, never to loopback, the gateway's own
/// addresses or protected ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_on_the_gateway_are_refused() {
    let Some((ca, origin)) = files_origin().await else {
        return;
    };
    // Loopback (the tests' origins run there; the proxy refuses it unless told otherwise).
    let (env, proxy) = start_proxy_opts(
        "dst-loop",
        origin,
        &ca.issuer.pem(),
        POLICIES,
        |_| {},
        false,
    )
    .await;
    let (code, _, _) = curl(proxy, "files.test", "/x", &env.proxy_ca, &[]).await;
    assert_eq!(code, 0);
    assert_eq!(env.handle.stats().refused_destinations, 1);
    // A protected range.
    let (env, proxy) = start_proxy_with("dst-prot", origin, &ca.issuer.pem(), POLICIES, |c| {
        c.protected_destinations = vec!["127.0.0.0/29".parse().unwrap()]
    })
    .await;
    let (code, _, _) = curl(proxy, "files.test", "/x", &env.proxy_ca, &[]).await;
    assert_eq!(code, 0);
    assert_eq!(env.handle.stats().refused_destinations, 1);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(audit_log(&env).contains("protected range"));
    // An address of the gateway itself (its source address toward the outside).
    let own = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip());
    let Ok(own) = own else {
        eprintln!("SKIP gateway-own part: no non-loopback address");
        return;
    };
    let (certs, key) = ca.leaf("files.test");
    let origin = start_origin_on(certs, key, SocketAddr::new(own, 0)).await;
    let (env, proxy) = start_proxy("dst-own", origin, &ca.issuer.pem()).await;
    let (code, _, _) = curl(proxy, "files.test", "/x", &env.proxy_ca, &[]).await;
    assert_eq!(code, 0, "connected to the gateway's own {own}");
    assert_eq!(env.handle.stats().refused_destinations, 1);
}

/// Serves the good certificate until `bad` is set, then the other one.
#[derive(Debug)]
struct Toggle {
    good: Arc<rustls::sign::CertifiedKey>,
    bad: Arc<rustls::sign::CertifiedKey>,
    flip: Arc<std::sync::atomic::AtomicBool>,
}

impl rustls::server::ResolvesServerCert for Toggle {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(if self.flip.load(std::sync::atomic::Ordering::SeqCst) {
            self.bad.clone()
        } else {
            self.good.clone()
        })
    }
}

/// An origin whose certificate turns invalid after the proxy verified it once: the failure
/// on the later connection (the client handshake already went ahead on the remembered
/// origin) is counted as a certificate failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_failure_after_a_verified_origin_is_counted() {
    let Some((ca, _)) = files_origin().await else {
        return;
    };
    let provider = rustls::crypto::ring::default_provider();
    let ck = |(certs, key): (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)| {
        Arc::new(rustls::sign::CertifiedKey::new(
            certs,
            provider.key_provider.load_private_key(key).unwrap(),
        ))
    };
    let rogue = TestCa::new("rogue CA");
    let flip = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let resolver = Toggle {
        good: ck(ca.leaf("files.test")),
        bad: ck(rogue.leaf("files.test")),
        flip: flip.clone(),
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Full handshakes only: a resumed session shows no certificate.
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(origin_service);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let (env, proxy) = start_proxy("known-cert", origin, &ca.issuer.pem()).await;
    let (code, _, err) = curl(proxy, "files.test", "/close", &env.proxy_ca, &["--http1.1"]).await;
    assert_eq!(code, 200, "{err}");
    assert_eq!(env.handle.stats().upstream_cert_failures, 0);
    flip.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (code, body, _) = curl(proxy, "files.test", "/x", &env.proxy_ca, &["--http1.1"]).await;
    assert_eq!(code, 502, "{}", String::from_utf8_lossy(&body));
    let st = env.handle.stats();
    assert_eq!(st.upstream_cert_failures, 1, "{st:?}");
}

/// A proxy that inspects downloads of up to 16 MiB and cuts off a client that takes nothing
/// for a second.
async fn start_send_stall_proxy(tag: &str, ca: &TestCa, origin: SocketAddr) -> (Env, SocketAddr) {
    start_proxy_with(
        tag,
        origin,
        &ca.issuer.pem(),
        DOWNLOAD_CONTENT_POLICY,
        |c| {
            c.client_send_timeout_secs = 1;
            c.max_inspect_bytes = tollgate_proxy::config::ByteSize(16 << 20);
        },
    )
    .await
}

/// `/huge.bin` over a new HTTP/2 connection whose stream window is 64 KiB: the response's
/// body (unread) and the connection's task.
async fn h2_huge_with_small_window(
    proxy: SocketAddr,
    proxy_ca: &Path,
) -> (
    hyper::body::Incoming,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let tls = h2_tls_to_proxy(proxy, proxy_ca).await;
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::builder()
        .uri("https://files.test/huge.bin")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    (resp.into_body(), conn)
}

/// A client that asks for an inspected download and then stops reading loses its connection
/// after `client_send_timeout_secs`, and the download's inspection memory comes back. Before,
/// the connection (and the memory) stayed for as long as the client kept its TCP connection
/// open: `idle_timeout_secs` does not count a connection with a response in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gives_back_its_memory() {
    let Some((ca, origin)) = files_origin().await else {
        return;
    };
    let (env, proxy) = start_send_stall_proxy("send-stall", &ca, origin).await;
    let h = &env.handle;
    // A small receive buffer, so that the 8 MiB answer cannot sit in the client's kernel.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(proxy).await.unwrap();
    let mut tls = tls_over(tcp, &env.proxy_ca).await;
    tls.write_all(b"GET /huge.bin HTTP/1.1\r\nHost: files.test\r\n\r\n")
        .await
        .unwrap();
    until("the download holds inspection memory", || {
        h.stats().buffered_bytes > 0
    })
    .await;
    until("the stalled client is cut off", || {
        h.stats().client_send_timeouts >= 1
    })
    .await;
    until("the memory comes back", || h.stats().buffered_bytes == 0).await;
    // The proxy closed the connection: what the client reads now ends.
    let mut sink = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match tls.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection stayed open");
    // A client that reads, even slowly, is not cut off: the same download at 4 MB/s
    // (two seconds, twice the limit) completes.
    let (code, body, err) = curl(
        proxy,
        "files.test",
        "/huge.bin",
        &env.proxy_ca,
        &["--http1.1", "--limit-rate", "4M"],
    )
    .await;
    assert_eq!((code, body.len()), (200, 8 << 20), "{err}");
    assert_eq!(h.stats().client_send_timeouts, 1);
}

/// The same over HTTP/2, where the client stalls only the stream: it never reads the body,
/// so its stream window stays shut after the first 64 KiB while the connection itself (and
/// its socket) stays healthy. The stalled stream still costs the client its connection, and
/// the inspected body's memory comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_left_unread_gives_back_its_memory() {
    let Some((ca, origin)) = files_origin().await else {
        return;
    };
    let (env, proxy) = start_send_stall_proxy("h2-stall", &ca, origin).await;
    let h = &env.handle;
    let (_unread, conn) = h2_huge_with_small_window(proxy, &env.proxy_ca).await;
    until("the stalled stream's connection is cut off", || {
        h.stats().client_send_timeouts >= 1
    })
    .await;
    until("the memory comes back", || h.stats().buffered_bytes == 0).await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "the connection stayed open");
    // A stream read slowly (a 20 ms pause every 64 KiB, about 3 s in all, with the same
    // 64 KiB window) is not cut off.
    let (mut body, _conn) = h2_huge_with_small_window(proxy, &env.proxy_ca).await;
    let (mut got, mut paused_at) = (0, 0);
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().data_ref().map_or(0, |d| d.len());
        if got - paused_at >= 64 * 1024 {
            paused_at = got;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    assert_eq!(got, 8 << 20);
    assert_eq!(h.stats().client_send_timeouts, 1);
}

/// A download of `path` through the proxy from source address `source` (on loopback).
fn get_from(
    env: &Env,
    proxy: SocketAddr,
    path: &'static str,
    source: &'static str,
) -> tokio::task::JoinHandle<(u16, Vec<u8>, String)> {
    let ca = env.proxy_ca.clone();
    tokio::spawn(async move {
        curl(
            proxy,
            "files.test",
            path,
            &ca,
            &["--http1.1", "--interface", source],
        )
        .await
    })
}

/// One client address cannot take everyone's inspection memory: its downloads beyond
/// `max_buffered_bytes_per_client` wait for its own, while another client's download goes
/// ahead at once. Before, one host with many inspected downloads in flight (up to
/// `max_connections_per_client`, 512) could hold the whole budget, and everyone else's
/// inspected transfers waited and got 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_hold_everyones_inspection_memory() {
    use std::sync::atomic::Ordering::SeqCst;
    if !have_curl() {
        eprintln!("skip: curl not installed");
        return;
    }
    let ca = TestCa::new("tollgate test origin CA");
    let o = start_held_origin(&ca).await;
    let mib = tollgate_proxy::config::ByteSize(1024 * 1024);
    let (env, proxy) = start_proxy_with(
        "per-client",
        o.addr,
        &ca.issuer.pem(),
        DOWNLOAD_CONTENT_POLICY,
        |c| {
            c.max_inspect_bytes = mib;
            c.max_buffered_bytes = tollgate_proxy::config::ByteSize(2 * mib.0);
            c.max_buffered_bytes_per_client = Some(mib);
        },
    )
    .await;
    let h = &env.handle;
    // Host A's first download takes its whole part and waits at the origin.
    let a1 = get_from(&env, proxy, "/held/a1", "127.0.0.2");
    until("A's first request reached the origin", || {
        o.requests.load(SeqCst) == 1
    })
    .await;
    let a2 = get_from(&env, proxy, "/held/a2", "127.0.0.2");
    until("A's second download waits for A's part", || {
        h.stats().budget_client_waits >= 1
    })
    .await;
    assert_eq!(
        o.requests.load(SeqCst),
        1,
        "A's second request went upstream"
    );
    // Host B is not held up by A.
    let (code, body, err) = get_from(&env, proxy, "/b", "127.0.0.3").await.unwrap();
    assert_eq!(code, 200, "{err}");
    assert_eq!(body, b"answer to /b\n");
    assert!(!a2.is_finished(), "A's second download did not wait");
    o.release.add_permits(2);
    for (j, path) in [(a1, "/held/a1"), (a2, "/held/a2")] {
        let (code, body, err) = j.await.unwrap();
        assert_eq!(code, 200, "{path}: {err}");
        assert_eq!(body, format!("answer to {path}\n").as_bytes());
    }
    let st = h.stats();
    assert_eq!((st.budget_refusals, st.buffered_bytes), (0, 0), "{st:?}");
    assert!(st.buffered_bytes_peak <= 2 * mib.0, "{st:?}");
}
