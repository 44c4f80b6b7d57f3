//! Real servers for the server namespace, and the Tollgate daemon for the gateway.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{SERVER_IP4, SERVER_IP6, Topology, make_server_cert, tollgate_bin, wait_for};

/// A second server address that only DNS names (no SNI, no Host): for the DNS-cache tests.
pub const SERVER_ALT_IP4: &str = "198.18.2.3";
pub const SERVER_ALT_IP6: &str = "2001:2:0:2::3";

/// Names the test origins answer to, and the DNS names that map to the alternate address.
pub const ORIGIN_NAMES: &[&str] = &[
    "www.dropbox.com",
    "slack.com",
    "github.com",
    "www.youtube.com",
    "meet.google.com",
    "zoom.us",
    "chat.openai.com",
    "www.salesforce.com",
];
pub const NOSNI_NAME: &str = "files.box.com";

/// Bytes of the large file the origin serves as `/1m.bin`.
pub const BIG_FILE: usize = 1024 * 1024;

/// What runs in the server namespace: nginx (TLS with HTTP/1.1 and HTTP/2 on 443, plain
/// HTTP on 80), dnsmasq (DNS for every origin name), an aioquic HTTP/3 origin on UDP 443.
pub struct Origins {
    pub ca: PathBuf,
}

impl Origins {
    pub fn start(topo: &mut Topology, with_quic: bool) -> Result<Origins> {
        let dir = topo.scratch().to_path_buf();
        let mut names: Vec<&str> = ORIGIN_NAMES.to_vec();
        names.push(NOSNI_NAME);
        let (ca, cert, key) = make_server_cert(&dir, &names)?;
        let www = dir.join("www");
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("1m.bin"), vec![b'x'; BIG_FILE])?;
        std::fs::write(
            www.join("index.html"),
            b"<html><body>origin</body></html>\n",
        )?;
        let s = topo.server.clone();
        topo.exec(&s, &format!("ip addr add {SERVER_ALT_IP4}/24 dev s0"))?;
        topo.exec(&s, &format!("ip addr add {SERVER_ALT_IP6}/64 dev s0 nodad"))?;

        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/nginx-body;\n\
             proxy_temp_path {d}/nginx-proxy;\n fastcgi_temp_path {d}/nginx-fcgi;\n\
             uwsgi_temp_path {d}/nginx-uwsgi;\n scgi_temp_path {d}/nginx-scgi;\n\
             server {{\n  listen 443 ssl http2;\n  listen [::]:443 ssl http2;\n\
             ssl_certificate {};\n  ssl_certificate_key {};\n  root {d}/www;\n }}\n\
             server {{\n  listen 80;\n  listen [::]:80;\n  root {d}/www;\n }}\n}}\n",
            cert.display(),
            key.display()
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        topo.spawn(
            &s,
            &format!("nginx -c {}", conf_path.display()),
            "nginx.log",
        )?;

        let mut dns = String::new();
        for n in ORIGIN_NAMES {
            let _ = write!(
                dns,
                " --address=/{n}/{SERVER_IP4} --address=/{n}/{SERVER_IP6}"
            );
        }
        let _ = write!(
            dns,
            " --address=/{NOSNI_NAME}/{SERVER_ALT_IP4} --address=/{NOSNI_NAME}/{SERVER_ALT_IP6}"
        );
        topo.spawn(
            &s,
            &format!(
                "dnsmasq --no-daemon --no-resolv --no-hosts --bind-interfaces \
                 --listen-address={SERVER_IP4},{SERVER_IP6} --max-ttl=300 {dns}"
            ),
            "dnsmasq.log",
        )?;
        if with_quic {
            // One origin per address: a socket bound to the wildcard would answer from
            // whichever address the kernel picks, and the alternate address is on the same
            // link, so the client's connected socket would drop the answers.
            let script = fixture("h3_server.py");
            for (host, log) in [(SERVER_IP4, "h3-v4.log"), (SERVER_IP6, "h3-v6.log")] {
                topo.spawn(
                    &s,
                    &format!(
                        "python3 {} --cert {} --key {} --host {host} --port 443",
                        script.display(),
                        cert.display(),
                        key.display()
                    ),
                    log,
                )?;
            }
            topo.wait_listen(&s, "udp", 443, Duration::from_secs(10))?;
        }
        topo.wait_listen(&s, "tcp", 443, Duration::from_secs(10))
            .with_context(|| topo.log("nginx.log"))?;
        topo.wait_listen(&s, "udp", 53, Duration::from_secs(10))
            .with_context(|| topo.log("dnsmasq.log"))?;
        // Clients in the client namespace resolve through the origin's DNS server.
        let etc = PathBuf::from("/etc/netns").join(&topo.client);
        std::fs::create_dir_all(&etc)?;
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver {SERVER_IP4}\n"),
        )?;
        Ok(Origins { ca })
    }
}

/// The path of a file in tests/fixtures.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A Tollgate daemon running on the gateway (it enters the namespace itself).
pub struct Daemon {
    pub config: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub log: String,
}

impl Daemon {
    /// Writes a config (mode, LAN interface gc, and `extra` TOML) and starts the daemon.
    pub fn start(topo: &mut Topology, mode: &str, extra: &str) -> Result<Daemon> {
        let d = Daemon::prepare(topo, mode, extra)?;
        d.spawn(topo)?;
        Ok(d)
    }

    /// Writes the config only (for set-up that needs it before the daemon runs, such as
    /// `tollgate enroll`); [`Daemon::spawn`] starts it.
    pub fn prepare(topo: &mut Topology, mode: &str, extra: &str) -> Result<Daemon> {
        let dir = topo.scratch().to_path_buf();
        let state_dir = dir.join("state");
        let socket = dir.join("control.sock");
        let config = dir.join("tollgate.toml");
        std::fs::write(
            &config,
            format!(
                "mode = \"{mode}\"\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"\n\
                 status_interval_secs = 1\n\n[[interfaces]]\nname = \"gc\"\nrole = \"lan\"\n\n{extra}\n",
                state_dir.display(),
                socket.display()
            ),
        )?;
        let log = format!("tollgate-{}.log", std::process::id());
        Ok(Daemon {
            config,
            socket,
            state_dir,
            log,
        })
    }

    /// Starts (or restarts) the daemon process with the same config.
    pub fn spawn(&self, topo: &mut Topology) -> Result<()> {
        self.spawn_with(topo, "")
    }

    /// As [`Daemon::spawn`], with more `run` arguments (e.g. `--log-format json`).
    pub fn spawn_with(&self, topo: &mut Topology, run_args: &str) -> Result<()> {
        self.spawn_env(topo, "", run_args)
    }

    /// As [`Daemon::spawn_with`], with environment variables (`NAME=value ...`) set for it.
    pub fn spawn_env(&self, topo: &mut Topology, env: &str, run_args: &str) -> Result<()> {
        let _ = std::fs::remove_file(&self.socket);
        let bin = tollgate_bin();
        if !bin.exists() {
            bail!("{} is not built", bin.display());
        }
        // Spawned in the host namespace: --netns makes the daemon enter the gateway itself.
        let cmd = format!(
            "env {env} {} run --config {} --netns {} {run_args}",
            bin.display(),
            self.config.display(),
            topo.gateway
        );
        topo.spawn_host(&cmd, &self.log)?;
        let ok = wait_for(Duration::from_secs(20), || {
            self.socket.exists().then_some(())
        });
        if ok.is_none() {
            bail!("the daemon did not come up:\n{}", topo.log(&self.log));
        }
        Ok(())
    }

    /// What a client of session control trusts: the daemon's CA, exported as an admin would
    /// (`tollgate ca export`), and the origins' CA, together in `dir/trust.pem`.
    pub fn client_trust(
        &self,
        origins_ca: &std::path::Path,
        dir: &std::path::Path,
    ) -> Result<PathBuf> {
        let out = std::process::Command::new(tollgate_bin())
            .args(["ca", "export", "--config"])
            .arg(&self.config)
            .output()?;
        if !out.status.success() {
            bail!(
                "tollgate ca export: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut pem = out.stdout;
        pem.extend(std::fs::read(origins_ca).with_context(|| format!("{}", origins_ca.display()))?);
        let bundle = dir.join("trust.pem");
        std::fs::write(&bundle, pem)?;
        Ok(bundle)
    }

    /// Runs a tollgate client subcommand against this daemon and parses its JSON.
    pub fn query(&self, sub: &str) -> Result<serde_json::Value> {
        let out = std::process::Command::new(tollgate_bin())
            .args([sub, "--json", "--control"])
            .arg(&self.socket)
            .output()?;
        if !out.status.success() {
            bail!("tollgate {sub}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Runs any tollgate subcommand with `--control` added; returns its output.
    pub fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(std::process::Command::new(tollgate_bin())
            .args(args)
            .arg("--control")
            .arg(&self.socket)
            .output()?)
    }

    /// Waits until a flow matching `pred` shows up in `tollgate flows --json`.
    pub fn wait_flow(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        wait_for(timeout, || {
            let flows = self.query("flows").ok()?;
            flows.as_array()?.iter().find(|f| pred(f)).cloned()
        })
    }

    /// Sends a signal (e.g. "HUP") to this daemon's process.
    pub fn signal(&self, sig: &str) -> Result<()> {
        let needle = format!("run --config {}", self.config.display());
        let st = std::process::Command::new("pkill")
            .args([&format!("-{sig}"), "-f", "--", &needle])
            .status()?;
        if !st.success() {
            bail!("no daemon process matched {needle:?}");
        }
        Ok(())
    }

    /// Detaches the programs and removes the pins.
    pub fn stop(&self) {
        let _ = self.cli(&["stop"]);
    }
}

/// A headless Chromium command for the client namespace: every name resolves to the origin
/// server, and the origin's test certificate is accepted over TCP and QUIC (Chromium's QUIC
/// refuses a certificate that does not chain to a known root even with
/// --ignore-certificate-errors, unless its key is listed by SPKI hash). `extra` adds flags
/// (e.g. `--disable-quic`, `--origin-to-force-quic-on=HOST:443`); prints the page's DOM.
pub fn chromium_command(topo: &Topology, extra: &str, url: &str) -> Result<String> {
    let spki = crate::sh(&format!(
        "openssl x509 -in {}/server.pem -pubkey -noout | openssl pkey -pubin -outform der \
         | openssl dgst -sha256 -binary | base64",
        topo.scratch().display()
    ))?;
    let spki = String::from_utf8_lossy(&spki.stdout).trim().to_string();
    if spki.is_empty() {
        bail!("no SPKI hash of the origin certificate");
    }
    let profile = topo.scratch().join("chromium-profile");
    Ok(format!(
        "timeout 30 chromium --headless --no-sandbox --disable-gpu --no-first-run \
         --disable-background-networking --disable-component-update --disable-sync \
         --user-data-dir={} --host-resolver-rules='MAP * {SERVER_IP4}' \
         --ignore-certificate-errors --ignore-certificate-errors-spki-list={spki} \
         {extra} --dump-dom {url}",
        profile.display()
    ))
}
