//! Block decisions exported for devices Tollgate does not run on, as Defender's block
//! scripts do: an nftables script, a Squid ACL, a Palo Alto external dynamic list, or a
//! plain domain list.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;
use std::str::FromStr;

use tollgate_catalog::{App, IpNet};

/// The formats `tollgate export blocklist --format` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlocklistFormat {
    /// An `nft -f` script: sets of the apps' IP ranges and learned IPs, rejected on forward.
    Nft,
    /// A Squid `dstdomain` ACL and the `http_access deny` that uses it.
    Squid,
    /// A Palo Alto domain EDL: one entry a line, `*.` wildcards.
    PaloaltoEdl,
    /// One domain a line; a line means the domain and everything below it.
    Domains,
}

impl FromStr for BlocklistFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "nft" => Self::Nft,
            "squid" => Self::Squid,
            "paloalto-edl" => Self::PaloaltoEdl,
            "domains" => Self::Domains,
            _ => {
                return Err(format!(
                    "unknown format {s:?}: nft, squid, paloalto-edl or domains"
                ));
            }
        })
    }
}

/// Renders the block decisions. `learned_ips` are addresses the daemon saw DNS give for
/// unsanctioned apps (only the nft format uses addresses).
pub fn export_blocklist(format: BlocklistFormat, apps: &[&App], learned_ips: &[IpAddr]) -> String {
    let mut out = String::new();
    let ids: Vec<&str> = apps.iter().map(|a| a.id.as_str()).collect();
    let comment = format!(
        "Tollgate blocklist: {} unsanctioned app(s): {}",
        apps.len(),
        if ids.is_empty() {
            "none".to_string()
        } else {
            ids.join(", ")
        }
    );
    match format {
        BlocklistFormat::Domains => {
            let _ = writeln!(out, "# {comment}");
            for d in covering_domains(apps) {
                let _ = writeln!(out, "{d}");
            }
        }
        BlocklistFormat::Squid => {
            let _ = writeln!(out, "# {comment}");
            let domains = covering_domains(apps);
            if domains.is_empty() {
                let _ = writeln!(out, "# nothing to block");
            } else {
                for d in &domains {
                    let _ = writeln!(out, "acl tollgate_unsanctioned dstdomain .{d}");
                }
                let _ = writeln!(out, "http_access deny tollgate_unsanctioned");
            }
        }
        BlocklistFormat::PaloaltoEdl => {
            // EDL files take no comments: the header would be read as an entry.
            for d in covering_domains(apps) {
                let _ = writeln!(out, "{d}");
                let _ = writeln!(out, "*.{d}");
            }
        }
        BlocklistFormat::Nft => nft_script(&mut out, &comment, apps, learned_ips),
    }
    out
}

/// The smallest set of suffixes that covers every domain rule: `*.x.com` and `x.com` both
/// become `x.com`, and `a.x.com` is dropped when `x.com` is there (Squid refuses overlaps).
fn covering_domains(apps: &[&App]) -> Vec<String> {
    let all: BTreeSet<String> = apps
        .iter()
        .flat_map(|a| a.domains.iter())
        .map(|d| {
            d.trim_start_matches("*.")
                .trim_end_matches('.')
                .to_ascii_lowercase()
        })
        .filter(|d| !d.is_empty())
        .collect();
    all.iter()
        .filter(|d| {
            // Keep d unless a strict parent suffix of it is also listed.
            let mut rest = d.as_str();
            while let Some((_, parent)) = rest.split_once('.') {
                if all.contains(parent) {
                    return false;
                }
                rest = parent;
            }
            true
        })
        .cloned()
        .collect()
}

fn nft_script(out: &mut String, comment: &str, apps: &[&App], learned: &[IpAddr]) {
    let mut v4 = BTreeSet::new();
    let mut v6 = BTreeSet::new();
    for net in apps.iter().flat_map(|a| a.ip_ranges.iter()) {
        match net {
            IpNet::V4(n) => v4.insert(n.trunc().to_string()),
            IpNet::V6(n) => v6.insert(n.trunc().to_string()),
        };
    }
    for ip in learned {
        match ip {
            IpAddr::V4(a) => v4.insert(a.to_string()),
            IpAddr::V6(a) => v6.insert(a.to_string()),
        };
    }
    let _ = writeln!(out, "#!/usr/sbin/nft -f");
    let _ = writeln!(out, "# {comment}");
    let _ = writeln!(
        out,
        "# Load with `nft -f FILE`; remove with `nft delete table inet tollgate_blocklist`."
    );
    let _ = writeln!(out, "table inet tollgate_blocklist");
    let _ = writeln!(out, "delete table inet tollgate_blocklist");
    let _ = writeln!(out, "table inet tollgate_blocklist {{");
    for (name, ty, set) in [
        ("blocked_v4", "ipv4_addr", &v4),
        ("blocked_v6", "ipv6_addr", &v6),
    ] {
        let _ = writeln!(
            out,
            "\tset {name} {{\n\t\ttype {ty}\n\t\tflags interval\n\t\tauto-merge"
        );
        if !set.is_empty() {
            let list: Vec<&str> = set.iter().map(String::as_str).collect();
            let _ = writeln!(out, "\t\telements = {{ {} }}", list.join(", "));
        }
        let _ = writeln!(out, "\t}}");
    }
    let _ = writeln!(
        out,
        "\tchain forward {{\n\t\ttype filter hook forward priority filter - 10; policy accept;\n\
         \t\tmeta l4proto tcp ip daddr @blocked_v4 reject with tcp reset\n\
         \t\tmeta l4proto tcp ip6 daddr @blocked_v6 reject with tcp reset\n\
         \t\tip daddr @blocked_v4 reject\n\
         \t\tip6 daddr @blocked_v6 reject\n\t}}\n}}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str, domains: &[&str], ranges: &[&str]) -> App {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": id, "category": "Cloud storage",
            "domains": domains, "ip_ranges": ranges,
        }))
        .unwrap()
    }

    #[test]
    fn covering_domains_merge_wildcards_and_children() {
        let a = app(
            "a",
            &[
                "dropbox.com",
                "*.dropbox.com",
                "dl.dropbox.com",
                "*.dropboxapi.com",
            ],
            &[],
        );
        let b = app("b", &["Box.com.", "*.boxcdn.net"], &[]);
        assert_eq!(
            covering_domains(&[&a, &b]),
            vec!["box.com", "boxcdn.net", "dropbox.com", "dropboxapi.com"]
        );
    }

    #[test]
    fn squid_and_edl_shapes() {
        let a = app("a", &["*.dropbox.com"], &[]);
        let squid = export_blocklist(BlocklistFormat::Squid, &[&a], &[]);
        assert!(squid.contains("acl tollgate_unsanctioned dstdomain .dropbox.com\n"));
        assert!(squid.contains("http_access deny tollgate_unsanctioned\n"));
        let edl = export_blocklist(BlocklistFormat::PaloaltoEdl, &[&a], &[]);
        assert_eq!(edl, "dropbox.com\n*.dropbox.com\n");
        let none = export_blocklist(BlocklistFormat::Squid, &[], &[]);
        assert!(
            !none.contains("http_access"),
            "an empty ACL would be a Squid error"
        );
    }

    #[test]
    fn nft_script_has_ranges_and_learned_ips_and_loads() {
        let a = app("a", &["x.example"], &["192.0.2.0/24", "2001:db8::/32"]);
        let ips: Vec<IpAddr> = vec!["198.51.100.7".parse().unwrap()];
        let script = export_blocklist(BlocklistFormat::Nft, &[&a], &ips);
        assert!(script.contains("192.0.2.0/24, 198.51.100.7"), "{script}");
        assert!(script.contains("2001:db8::/32"), "{script}");
        // Check the syntax with the real nft when it is there (as root: -c needs netlink).
        let nft_ok = std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_ok();
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false);
        if nft_ok && root {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("bl.nft");
            std::fs::write(&f, &script).unwrap();
            let out = std::process::Command::new("nft")
                .arg("-c")
                .arg("-f")
                .arg(&f)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "nft -c: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            eprintln!("SKIP nft syntax check: needs root and nft");
        }
    }

    #[test]
    fn formats_parse() {
        assert_eq!(
            "paloalto-edl".parse::<BlocklistFormat>(),
            Ok(BlocklistFormat::PaloaltoEdl)
        );
        assert!("csv".parse::<BlocklistFormat>().is_err());
    }
}
