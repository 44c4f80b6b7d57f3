//! Steering with nftables: the proxy's own table `inet tollgate_proxy` redirects tcp/443 to
//! the proxy port for destination addresses in the sets `steer4` / `steer6`, which the daemon
//! fills with the addresses of session-controlled apps (learned from DNS answers and SNI).
//! Everything else never reaches the proxy. The table is created idempotently (replaced if
//! present), elements carry a timeout, and it is deleted by [`Steering::remove`] or on drop.
//!
//! QUIC (udp/443) to the same addresses is rejected in the forward hook, so that browsers
//! fall back to TCP, where the proxy sees the session.
//!
//! Connections the gateway itself makes (the proxy's own upstream connections) pass the
//! `output` hook, not `prerouting`, so they are not redirected again.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::ProxyError;

/// The table name.
pub const TABLE: &str = "tollgate_proxy";

/// An installed redirect.
#[derive(Debug)]
pub struct Steering {
    installed: bool,
    element_timeout: Duration,
    cmd: Vec<String>,
}

fn nft(cmd: &[String], script: &str) -> Result<(), ProxyError> {
    let (prog, pre) = cmd
        .split_first()
        .ok_or_else(|| ProxyError::Nft("empty nft command".into()))?;
    let mut child = Command::new(prog)
        .args(pre)
        .arg("-f")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ProxyError::Nft(format!("cannot run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| ProxyError::Nft(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| ProxyError::Nft(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ProxyError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// The ruleset text (pure, for tests and for admins who want to see it).
pub fn ruleset(port: u16, ifaces: &[String], element_timeout: Duration) -> String {
    let iif = if ifaces.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = ifaces
            .iter()
            .map(|i| format!("\"{}\"", i.replace('"', "")))
            .collect();
        format!("iifname {{ {} }} ", quoted.join(", "))
    };
    let t = element_timeout.as_secs().max(1);
    format!(
        "table inet {TABLE} {{
  set steer4 {{ type ipv4_addr; flags timeout; timeout {t}s; }}
  set steer6 {{ type ipv6_addr; flags timeout; timeout {t}s; }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    {iif}ip daddr @steer4 tcp dport 443 redirect to :{port}
    {iif}ip6 daddr @steer6 tcp dport 443 redirect to :{port}
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    {iif}ip daddr @steer4 udp dport 443 reject
    {iif}ip6 daddr @steer6 udp dport 443 reject
  }}
}}
"
    )
}

impl Steering {
    /// Install (or replace) the table: tcp/443 to addresses in the sets, arriving on `ifaces`
    /// (all interfaces when empty), is redirected to `port`. Elements expire after
    /// `element_timeout` unless added again.
    pub fn install(
        port: u16,
        ifaces: &[String],
        element_timeout: Duration,
    ) -> Result<Steering, ProxyError> {
        Self::install_with(vec!["nft".into()], port, ifaces, element_timeout)
    }

    /// As [`Steering::install`], running `cmd` instead of `nft` (e.g. `ip netns exec NS nft`).
    pub fn install_with(
        cmd: Vec<String>,
        port: u16,
        ifaces: &[String],
        element_timeout: Duration,
    ) -> Result<Steering, ProxyError> {
        // `add` then `delete` makes the delete succeed whether or not the table existed; the
        // whole script is one nft transaction.
        let script = format!(
            "add table inet {TABLE}\ndelete table inet {TABLE}\n{}",
            ruleset(port, ifaces, element_timeout)
        );
        nft(&cmd, &script)?;
        Ok(Steering {
            installed: true,
            element_timeout,
            cmd,
        })
    }

    /// Steer these destinations (again: refreshes their timeout).
    pub fn add_ips(&self, ips: &[IpAddr]) -> Result<(), ProxyError> {
        self.elements("add", ips)
    }

    /// Stop steering these destinations.
    pub fn remove_ips(&self, ips: &[IpAddr]) -> Result<(), ProxyError> {
        // Deleting an absent element fails in nft; delete one by one and ignore absences.
        for ip in ips {
            let _ = self.elements("delete", std::slice::from_ref(ip));
        }
        Ok(())
    }

    fn elements(&self, verb: &str, ips: &[IpAddr]) -> Result<(), ProxyError> {
        let v4: Vec<String> = ips
            .iter()
            .filter(|i| i.is_ipv4())
            .map(|i| i.to_string())
            .collect();
        let v6: Vec<String> = ips
            .iter()
            .filter(|i| i.is_ipv6())
            .map(|i| i.to_string())
            .collect();
        let mut script = String::new();
        for (set, list) in [("steer4", &v4), ("steer6", &v6)] {
            if list.is_empty() {
                continue;
            }
            if verb == "add" {
                // Re-adding an existing element does not restart its timeout: add (no-op if
                // present), delete, add again, all in one nft transaction.
                let t = self.element_timeout.as_secs().max(1);
                let plain = list.join(", ");
                let elems: Vec<String> = list.iter().map(|a| format!("{a} timeout {t}s")).collect();
                script.push_str(&format!("add element inet {TABLE} {set} {{ {plain} }}\n"));
                script.push_str(&format!(
                    "delete element inet {TABLE} {set} {{ {plain} }}\n"
                ));
                script.push_str(&format!(
                    "add element inet {TABLE} {set} {{ {} }}\n",
                    elems.join(", ")
                ));
            } else {
                script.push_str(&format!(
                    "{verb} element inet {TABLE} {set} {{ {} }}\n",
                    list.join(", ")
                ));
            }
        }
        if script.is_empty() {
            return Ok(());
        }
        nft(&self.cmd, &script)
    }

    /// Delete the table. Idempotent.
    pub fn remove(&mut self) -> Result<(), ProxyError> {
        if !self.installed {
            return Ok(());
        }
        self.installed = false;
        nft(
            &self.cmd,
            &format!("add table inet {TABLE}\ndelete table inet {TABLE}\n"),
        )
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!("removing nft table {TABLE}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_text() {
        let r = ruleset(8443, &["lan0".into()], Duration::from_secs(600));
        assert!(
            r.contains("iifname { \"lan0\" } ip daddr @steer4 tcp dport 443 redirect to :8443")
        );
        assert!(r.contains("timeout 600s"));
        let r = ruleset(1, &[], Duration::from_secs(0));
        assert!(r.contains("    ip daddr @steer4"));
    }
}
