//! The control socket: a root-only unix socket that speaks one JSON request per line and
//! answers one JSON response per line. `tollgate flows`, `apps`, `status`, `app tag` and
//! `stop` are clients of it. A large answer (every flow) is handed over in pieces that this
//! side writes, so a slow client holds up only its own connection task, never the daemon's
//! core; on the wire it is the same single line.
//!
//! Limits: at most [`MAX_CLIENTS`] connections are served at once (more are refused with an
//! error line and counted, [`clients_refused`]); a request must arrive within
//! [`REQUEST_TIMEOUT`] and each write must complete within [`WRITE_TIMEOUT`].

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};

/// Largest request line accepted; anything longer is a misbehaving client.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one write to a client may take (a client that stops reading is dropped).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once. Each may hold a whole `flows` answer (about 36 MB at 100k
/// flows) until it has read it, so this also bounds that memory.
pub const MAX_CLIENTS: usize = 8;

static CLIENTS_REFUSED: AtomicU64 = AtomicU64::new(0);

/// Connections refused because [`MAX_CLIENTS`] were being served (for `status`).
pub fn clients_refused() -> u64 {
    CLIENTS_REFUSED.load(Ordering::Relaxed)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Flows,
    Apps,
    Status,
    /// Sets an app's tag live; persisted in state_dir.
    Tag {
        app: String,
        tag: String,
    },
    /// Graceful stop: detach programs and remove pins.
    Stop,
    /// The recent activity log (answered off the core task).
    Activity {
        #[serde(default)]
        query: crate::alerting::ActivityQuery,
    },
    /// Every alert kept.
    Alerts,
    /// One alert.
    AlertShow {
        id: u64,
    },
    /// Resolve, dismiss (or reopen) an alert, with a comment.
    AlertSet {
        id: u64,
        status: tollgate_activity::AlertStatus,
        #[serde(default)]
        comment: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Self {
        Self {
            ok: true,
            error: None,
            data,
        }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
            data: serde_json::Value::Null,
        }
    }
}

/// An answer to a request.
pub enum Reply {
    Whole(Response),
    /// A successful answer whose `data` value arrives in pieces of JSON text (which together
    /// make one value); the sender drops the channel when it is complete. A piece that does
    /// not come within `STREAM_TIMEOUT` ends the answer (the client sees a cut line).
    Stream(mpsc::Receiver<Vec<u8>>),
    /// A successful answer whose `data` value is these pieces of JSON text, in order.
    Pieces(Vec<Vec<u8>>),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Self {
        Reply::Whole(r)
    }
}

/// How long a streamed answer may pause between pieces.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// What answers requests: the daemon implements it.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> impl std::future::Future<Output = Reply> + Send;
}

/// Binds the socket, mode 0600, and serves until the task is dropped. A socket left by a
/// daemon that died is replaced; anything else at the path (a regular file, a directory, a
/// symlink) is an error and is left alone.
pub async fn serve<H: Handler>(path: &Path, handler: Arc<H>) -> Result<()> {
    let listener = bind(path).await?;
    // The control socket is the last thing the daemon starts: it is ready now. Under systemd
    // (`Type=notify`) this ends the start; elsewhere NOTIFY_SOCKET is unset and it does nothing.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!("telling systemd the daemon is ready: {e}");
    }
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Root only: the file mode already says so; the peer's uid makes sure.
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == 0 || cred.uid() == nix::unistd::geteuid().as_raw() => {}
            _ => continue,
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            CLIENTS_REFUSED.fetch_add(1, Ordering::Relaxed);
            // Best effort, never waiting: the answer fits in the socket buffer.
            let mut line = serde_json::to_vec(&Response::err(format!(
                "busy: {MAX_CLIENTS} control clients are being served; try again"
            )))
            .unwrap_or_default();
            line.push(b'\n');
            let _ = stream.try_write(&line);
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, handler).await {
                tracing::debug!("control client: {e:#}");
            }
            drop(slot);
        });
    }
}

/// Binds `path` under umask 077 (the socket is never accessible to others, not even between
/// bind and chmod), after removing a stale socket there.
async fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // A live daemon answers; a stale socket from a crashed one does not.
            if UnixStream::connect(path).await.is_ok() {
                bail!(
                    "another tollgate daemon is answering on {}; stop it first",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        Ok(meta) => bail!(
            "{} exists and is not a socket ({:?}); not removing it: choose another \
             control_socket or remove it yourself",
            path.display(),
            meta.file_type()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("looking at {}", path.display())),
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

/// One write, bounded by [`WRITE_TIMEOUT`].
async fn write(wr: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8]) -> Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(bytes))
        .await
        .context("the client stopped reading")??;
    Ok(())
}

async fn serve_one<H: Handler>(stream: UnixStream, handler: Arc<H>) -> Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd).take(MAX_REQUEST_BYTES as u64);
    let mut line = String::new();
    tokio::time::timeout(REQUEST_TIMEOUT, rd.read_line(&mut line))
        .await
        .context("request timed out")??;
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        Ok(req) => handler.handle(req).await,
        Err(e) => Response::err(format!("bad request: {e}")).into(),
    };
    match reply {
        Reply::Whole(resp) => {
            let mut out = serde_json::to_vec(&resp)?;
            out.push(b'\n');
            write(&mut wr, &out).await?;
        }
        Reply::Stream(mut pieces) => {
            write(&mut wr, br#"{"ok":true,"data":"#).await?;
            loop {
                match tokio::time::timeout(STREAM_TIMEOUT, pieces.recv()).await {
                    Ok(Some(piece)) => write(&mut wr, &piece).await?,
                    Ok(None) => break,
                    Err(_) => bail!("the daemon stopped producing the answer"),
                }
            }
            write(&mut wr, b"}\n").await?;
        }
        Reply::Pieces(pieces) => {
            write(&mut wr, br#"{"ok":true,"data":"#).await?;
            for piece in pieces {
                write(&mut wr, &piece).await?;
            }
            write(&mut wr, b"}\n").await?;
        }
    }
    tokio::time::timeout(WRITE_TIMEOUT, wr.shutdown())
        .await
        .context("the client stopped reading")??;
    Ok(())
}

/// Sends one request to a running daemon and returns its data, or its error as an error.
pub async fn request(path: &Path, req: &Request) -> Result<serde_json::Value> {
    let stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "cannot reach the daemon at {} (is `tollgate run` running, and are you root?)",
            path.display()
        )
    })?;
    let (rd, mut wr) = stream.into_split();
    let mut msg = serde_json::to_vec(req)?;
    msg.push(b'\n');
    wr.write_all(&msg).await?;
    let mut line = String::new();
    BufReader::new(rd)
        .read_line(&mut line)
        .await
        .context("reading the daemon's answer")?;
    let resp: Response =
        serde_json::from_str(line.trim()).context("the daemon's answer is not valid JSON")?;
    if resp.ok {
        Ok(resp.data)
    } else {
        bail!(
            "the daemon refused: {}",
            resp.error.unwrap_or_else(|| "no reason given".into())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Handler for Echo {
        async fn handle(&self, req: Request) -> Reply {
            match req {
                Request::Tag { app, tag } => Response::ok(serde_json::json!({ app: tag })).into(),
                Request::Stop => Response::err("not now").into(),
                Request::Flows => {
                    // An array of 3 numbers in 4 pieces.
                    let (tx, rx) = mpsc::channel(1);
                    tokio::spawn(async move {
                        for piece in ["[1", ",2", ",", "3]"] {
                            let _ = tx.send(piece.as_bytes().to_vec()).await;
                        }
                    });
                    Reply::Stream(rx)
                }
                Request::Apps => Reply::Pieces(vec![b"{\"a\"".to_vec(), b":1}".to_vec()]),
                Request::Activity { .. }
                | Request::Alerts
                | Request::AlertShow { .. }
                | Request::AlertSet { .. } => Response::err("not here").into(),
                Request::Status => {
                    // Slow: holds its client slot.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    Response::ok(serde_json::json!([])).into()
                }
            }
        }
    }

    #[tokio::test]
    async fn request_roundtrip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ctl.sock");
        let server = tokio::spawn({
            let sock = sock.clone();
            async move { serve(&sock, Arc::new(Echo)).await }
        });
        for _ in 0..100 {
            if sock.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let data = request(
            &sock,
            &Request::Tag {
                app: "dropbox".into(),
                tag: "unsanctioned".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(data["dropbox"], "unsanctioned");
        let flows = request(&sock, &Request::Flows).await.unwrap();
        assert_eq!(
            flows,
            serde_json::json!([1, 2, 3]),
            "a streamed answer arrives whole"
        );
        let err = request(&sock, &Request::Stop).await.unwrap_err();
        assert!(err.to_string().contains("not now"));
        // A second daemon on the same socket is refused while the first answers.
        let second = serve(&sock, Arc::new(Echo)).await.unwrap_err();
        assert!(second.to_string().contains("another tollgate daemon"));
        server.abort();
    }

    #[test]
    fn request_wire_format_is_stable() {
        let j = serde_json::to_string(&Request::Flows).unwrap();
        assert_eq!(j, r#"{"cmd":"flows"}"#);
        let r: Request = serde_json::from_str(r#"{"cmd":"tag","app":"x","tag":"y"}"#).unwrap();
        assert_eq!(
            r,
            Request::Tag {
                app: "x".into(),
                tag: "y".into()
            }
        );
    }

    async fn wait_for(sock: &Path) {
        for _ in 0..200 {
            if sock.exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_regular_file_at_the_socket_path_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        std::fs::write(&path, b"not a socket").unwrap();
        let err = serve(&path, Arc::new(Echo)).await.unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
        // A symlink to a file is not followed or removed either.
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(serve(&link, Arc::new(Echo)).await.is_err());
        assert!(std::fs::symlink_metadata(&link).is_ok());
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_and_the_new_one_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ctl.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let server = tokio::spawn({
            let sock = sock.clone();
            async move { serve(&sock, Arc::new(Echo)).await }
        });
        for _ in 0..200 {
            if request(&sock, &Request::Apps).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let apps = request(&sock, &Request::Apps).await.unwrap();
        assert_eq!(apps, serde_json::json!({"a": 1}), "pieces arrive whole");
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        server.abort();
    }

    #[tokio::test]
    async fn clients_beyond_the_cap_are_refused_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ctl.sock");
        let server = tokio::spawn({
            let sock = sock.clone();
            async move { serve(&sock, Arc::new(Echo)).await }
        });
        wait_for(&sock).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = clients_refused();
        let slow: Vec<_> = (0..MAX_CLIENTS)
            .map(|_| {
                let sock = sock.clone();
                tokio::spawn(async move { request(&sock, &Request::Status).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let err = request(&sock, &Request::Apps)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("busy"), "{err}");
        assert!(clients_refused() > before);
        for s in slow {
            s.await.unwrap().unwrap();
        }
        // Slots come back.
        assert!(request(&sock, &Request::Apps).await.is_ok());
        server.abort();
    }
}
