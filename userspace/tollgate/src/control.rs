//! The control socket: a root-only unix socket that speaks one JSON request per line and
//! answers one JSON response per line. `tollgate flows`, `apps`, `status`, `app tag` and
//! `stop` are clients of it. A large answer (every flow) is written as the daemon produces
//! it, piece by piece, so the daemon never holds the whole answer in memory; on the wire it is
//! the same single line.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// Largest request line accepted; anything longer is a misbehaving client.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Binds the socket (replacing a stale one), mode 0600, and serves until the task is dropped.
pub async fn serve<H: Handler>(path: &Path, handler: Arc<H>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        // A live daemon answers; a stale socket from a crashed one does not.
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another tollgate daemon is answering on {}; stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
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
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, handler).await {
                tracing::debug!("control client: {e:#}");
            }
        });
    }
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
            wr.write_all(&out).await?;
        }
        Reply::Stream(mut pieces) => {
            wr.write_all(br#"{"ok":true,"data":"#).await?;
            loop {
                match tokio::time::timeout(STREAM_TIMEOUT, pieces.recv()).await {
                    Ok(Some(piece)) => wr.write_all(&piece).await?,
                    Ok(None) => break,
                    Err(_) => bail!("the daemon stopped producing the answer"),
                }
            }
            wr.write_all(b"}\n").await?;
        }
    }
    wr.shutdown().await?;
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
                _ => Response::ok(serde_json::json!([])).into(),
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
}
