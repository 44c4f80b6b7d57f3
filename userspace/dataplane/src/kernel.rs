//! Which kernel the probes need, and how they attach on it: the running kernel's release
//! (uname) is checked against the minimum of every kernel feature the probes use, and the
//! attach mode is chosen (TCX on 6.6 and later, tc clsact through netlink before).
//!
//! The decision is a pure function of the release string, the machine and the requested
//! mode ([`decide`]), so it is tested without the kernel it describes. The table
//! [`FEATURES`] is the one list of minimums; the README's "Minimum kernel per feature" table
//! shows the same rows (a test keeps them in step).

use std::fmt;

/// A kernel version, major.minor (the patch level never decides a feature here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
}

impl KernelVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// Parses the start of a uname release: `6.18.0`, `5.15.0-91-generic`, `6.1.0-18-amd64`,
    /// `4.18.0-553.el8_10.x86_64`, `6.6` (a bare major.minor). `None` when the release does
    /// not start with `<major>.<minor>`.
    pub fn parse_release(release: &str) -> Option<KernelVersion> {
        let mut parts = release.trim().splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor: String = parts
            .next()?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Some(KernelVersion {
            major,
            minor: minor.parse().ok()?,
        })
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The first kernel with TCX (`BPF_LINK_TYPE_TCX`, pinnable links).
pub const TCX_MIN: KernelVersion = KernelVersion::new(6, 6);

/// A kernel feature the probes cannot run without, and the first release that has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelFeature {
    /// What the README's table calls it.
    pub name: &'static str,
    pub min: KernelVersion,
    /// On arm64, when its JIT got it later than x86-64's.
    pub min_arm64: Option<KernelVersion>,
    /// What the probes use it for.
    pub used_for: &'static str,
}

impl KernelFeature {
    /// The minimum on `machine` (uname's machine: `x86_64`, `aarch64`, ...).
    pub fn min_on(&self, machine: &str) -> KernelVersion {
        match (machine, self.min_arm64) {
            ("aarch64" | "arm64", Some(v)) => v,
            _ => self.min,
        }
    }
}

/// Every kernel feature the probes need, oldest first. The newest of them is the minimum
/// kernel; the start refuses an older one with the names of what it lacks.
pub const FEATURES: &[KernelFeature] = &[
    KernelFeature {
        name: "clsact qdisc, cls_bpf direct-action",
        min: KernelVersion::new(4, 5),
        min_arm64: None,
        used_for: "the tc fallback's hook (kernels without TCX)",
    },
    KernelFeature {
        name: "LRU hash and LPM trie maps",
        min: KernelVersion::new(4, 11),
        min_arm64: None,
        used_for: "the flow table, blocked and steered prefixes",
    },
    KernelFeature {
        name: "bpf_skb_adjust_room (BPF_ADJ_ROOM_MAC)",
        min: KernelVersion::new(5, 2),
        min_arm64: None,
        used_for: "ICMP unreachable replies that quote the refused packet",
    },
    KernelFeature {
        name: "bounded loops",
        min: KernelVersion::new(5, 3),
        min_arm64: None,
        used_for: "the header, ClientHello, HTTP and DNS walks",
    },
    KernelFeature {
        name: "bpf_probe_read_kernel",
        min: KernelVersion::new(5, 5),
        min_arm64: None,
        used_for: "copying the SNI out of the per-flow hello buffer",
    },
    KernelFeature {
        name: "bpf_sk_assign at tc, sockmap lookup",
        min: KernelVersion::new(5, 7),
        min_arm64: None,
        used_for: "steering SYNs of session-controlled apps to the proxy",
    },
    KernelFeature {
        name: "BPF ring buffer",
        min: KernelVersion::new(5, 8),
        min_arm64: None,
        used_for: "first-flight payload events to the daemon",
    },
    KernelFeature {
        name: "tail calls from programs with BPF-to-BPF calls",
        min: KernelVersion::new(5, 10),
        min_arm64: Some(KernelVersion::new(6, 0)),
        used_for: "the SNI/HTTP/DNS pipeline stages (reply builders are subprograms)",
    },
    KernelFeature {
        name: "bpf_ktime_get_coarse_ns",
        min: KernelVersion::new(5, 11),
        min_arm64: None,
        used_for: "flow timestamps and verdict expiry",
    },
];

/// How to attach, as configured (`[dataplane] attach`, `TOLLGATE_ATTACH`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachRequest {
    /// TCX on kernels that have it, else tc clsact.
    #[default]
    Auto,
    Tcx,
    Tc,
}

impl AttachRequest {
    /// The environment variable that overrides the configured mode (tests force `tc` with it).
    pub const ENV: &'static str = "TOLLGATE_ATTACH";

    /// `TOLLGATE_ATTACH` when it is set (and not empty), else `configured`. An unknown value
    /// is an error that names the variable.
    pub fn from_env_or(configured: AttachRequest) -> Result<AttachRequest, String> {
        match std::env::var(Self::ENV) {
            Ok(v) if !v.trim().is_empty() => v
                .trim()
                .parse()
                .map_err(|e: String| format!("{}: {e}", Self::ENV)),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(configured),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("{}: not valid UTF-8", Self::ENV))
            }
        }
    }
}

impl std::str::FromStr for AttachRequest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AttachRequest::Auto),
            "tcx" => Ok(AttachRequest::Tcx),
            "tc" => Ok(AttachRequest::Tc),
            other => Err(format!(
                "unknown attach mode {other:?} (expected \"auto\", \"tcx\" or \"tc\")"
            )),
        }
    }
}

impl fmt::Display for AttachRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachRequest::Auto => "auto",
            AttachRequest::Tcx => "tcx",
            AttachRequest::Tc => "tc",
        })
    }
}

/// How the programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// TCX links (Linux 6.6), pinned under bpffs: a restarted daemon adopts them.
    Tcx,
    /// A cls_bpf filter on the clsact qdisc, made through netlink, at a fixed priority and
    /// handle: a restarted daemon replaces its own filter in place.
    Tc,
}

impl AttachMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            AttachMode::Tcx => "tcx",
            AttachMode::Tc => "tc",
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the dataplane cannot start on this kernel.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read the kernel release {release:?} (expected <major>.<minor>...)")]
    UnreadableRelease { release: String },
    #[error(
        "kernel {found} ({release}) is too old: Tollgate needs Linux {needed} or later on {machine}; \
         missing: {} (see \"Minimum kernel per feature\" in the README)",
        missing.iter().map(|(n, v)| format!("{n} (Linux {v})")).collect::<Vec<_>>().join(", ")
    )]
    TooOld {
        release: String,
        machine: String,
        found: KernelVersion,
        needed: KernelVersion,
        /// Each missing feature with its minimum.
        missing: Vec<(&'static str, KernelVersion)>,
    },
    #[error(
        "attach = \"tcx\" needs TCX (Linux {TCX_MIN}); kernel {found} ({release}) lacks it: \
         use attach = \"auto\" or \"tc\" (tc clsact through netlink)"
    )]
    NoTcx {
        release: String,
        found: KernelVersion,
    },
}

/// The minimum kernel for all of [`FEATURES`] on `machine`.
pub fn minimum_kernel(machine: &str) -> KernelVersion {
    FEATURES
        .iter()
        .map(|f| f.min_on(machine))
        .max()
        .unwrap_or(KernelVersion::new(0, 0))
}

/// Checks the running kernel (`release` and `machine` as uname gives them) against
/// [`FEATURES`] and picks the attach mode for `request`: `auto` is TCX from 6.6 and tc
/// clsact before; `tcx` on an older kernel is an error.
pub fn decide(
    release: &str,
    machine: &str,
    request: AttachRequest,
) -> Result<AttachMode, KernelError> {
    let found =
        KernelVersion::parse_release(release).ok_or_else(|| KernelError::UnreadableRelease {
            release: release.to_owned(),
        })?;
    let missing: Vec<(&'static str, KernelVersion)> = FEATURES
        .iter()
        .filter(|f| found < f.min_on(machine))
        .map(|f| (f.name, f.min_on(machine)))
        .collect();
    if !missing.is_empty() {
        return Err(KernelError::TooOld {
            release: release.to_owned(),
            machine: machine.to_owned(),
            found,
            needed: minimum_kernel(machine),
            missing,
        });
    }
    let tcx = found >= TCX_MIN;
    match request {
        AttachRequest::Auto if tcx => Ok(AttachMode::Tcx),
        AttachRequest::Auto | AttachRequest::Tc => Ok(AttachMode::Tc),
        AttachRequest::Tcx if tcx => Ok(AttachMode::Tcx),
        AttachRequest::Tcx => Err(KernelError::NoTcx {
            release: release.to_owned(),
            found,
        }),
    }
}

/// The running kernel's release and machine (uname).
pub fn running_kernel() -> (String, String) {
    let u = nix::sys::utsname::uname();
    match u {
        Ok(u) => (
            u.release().to_string_lossy().into_owned(),
            u.machine().to_string_lossy().into_owned(),
        ),
        // uname(2) does not fail on Linux; an empty release is reported as unreadable.
        Err(_) => (String::new(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_release_strings() {
        for (release, want) in [
            ("6.18.0", (6, 18)),
            ("5.15.0-91-generic", (5, 15)),
            ("6.1.0-18-amd64", (6, 1)),
            ("4.18.0-553.el8_10.x86_64", (4, 18)),
            ("5.10.217-205.860.amzn2.x86_64", (5, 10)),
            ("6.6", (6, 6)),
            ("6.8.0+", (6, 8)),
            ("6.11-rc3", (6, 11)),
            (" 6.6.30\n", (6, 6)),
        ] {
            assert_eq!(
                KernelVersion::parse_release(release),
                Some(KernelVersion::new(want.0, want.1)),
                "{release}"
            );
        }
        for bad in [
            "",
            "6",
            "6.",
            "x.1",
            "6.x",
            "-1.2",
            "99999999999.1",
            "linux",
        ] {
            assert_eq!(KernelVersion::parse_release(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn auto_is_tcx_from_6_6_and_tc_before() {
        let d = |r| decide(r, "x86_64", AttachRequest::Auto);
        assert_eq!(d("6.6.0"), Ok(AttachMode::Tcx));
        assert_eq!(d("6.18.0"), Ok(AttachMode::Tcx));
        assert_eq!(d("7.0.1"), Ok(AttachMode::Tcx));
        assert_eq!(d("6.5.13"), Ok(AttachMode::Tc));
        assert_eq!(d("6.1.0-18-amd64"), Ok(AttachMode::Tc));
        assert_eq!(d("5.11.0"), Ok(AttachMode::Tc));
    }

    #[test]
    fn forced_modes() {
        assert_eq!(
            decide("6.18.0", "x86_64", AttachRequest::Tc),
            Ok(AttachMode::Tc)
        );
        assert_eq!(
            decide("6.6.0", "x86_64", AttachRequest::Tcx),
            Ok(AttachMode::Tcx)
        );
        let e = decide("6.1.0", "x86_64", AttachRequest::Tcx).unwrap_err();
        assert!(matches!(e, KernelError::NoTcx { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("6.6") && msg.contains("\"tc\""), "{msg}");
    }

    #[test]
    fn too_old_names_every_missing_feature() {
        let e = decide("5.4.0-150-generic", "x86_64", AttachRequest::Auto).unwrap_err();
        let KernelError::TooOld {
            needed, missing, ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(*needed, KernelVersion::new(5, 11));
        let names: Vec<&str> = missing.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "bpf_probe_read_kernel",
                "bpf_sk_assign at tc, sockmap lookup",
                "BPF ring buffer",
                "tail calls from programs with BPF-to-BPF calls",
                "bpf_ktime_get_coarse_ns"
            ]
        );
        let msg = e.to_string();
        assert!(msg.contains("BPF ring buffer (Linux 5.8)"), "{msg}");
        assert!(msg.contains("Linux 5.11 or later"), "{msg}");
        // One below the minimum: only the newest feature is missing.
        let e = decide("5.10.217", "x86_64", AttachRequest::Tc).unwrap_err();
        assert!(
            matches!(&e, KernelError::TooOld { missing, .. } if missing.len() == 1
                && missing[0].0 == "bpf_ktime_get_coarse_ns"),
            "{e:?}"
        );
    }

    #[test]
    fn arm64_needs_6_0_for_tail_calls_with_subprograms() {
        assert_eq!(minimum_kernel("x86_64"), KernelVersion::new(5, 11));
        assert_eq!(minimum_kernel("aarch64"), KernelVersion::new(6, 0));
        assert_eq!(
            decide("5.15.0", "x86_64", AttachRequest::Auto),
            Ok(AttachMode::Tc)
        );
        let e = decide("5.15.0", "aarch64", AttachRequest::Auto).unwrap_err();
        assert!(
            e.to_string()
                .contains("tail calls from programs with BPF-to-BPF calls (Linux 6.0)"),
            "{e}"
        );
        assert_eq!(
            decide("6.1.0", "aarch64", AttachRequest::Auto),
            Ok(AttachMode::Tc)
        );
    }

    #[test]
    fn unreadable_release_is_an_error_not_a_guess() {
        let e = decide("", "x86_64", AttachRequest::Auto).unwrap_err();
        assert!(matches!(e, KernelError::UnreadableRelease { .. }));
    }

    #[test]
    fn attach_request_parses_the_three_words_only() {
        assert_eq!("auto".parse(), Ok(AttachRequest::Auto));
        assert_eq!("tcx".parse(), Ok(AttachRequest::Tcx));
        assert_eq!("tc".parse(), Ok(AttachRequest::Tc));
        for bad in ["TC", "netlink", "", "tc "] {
            assert!(bad.parse::<AttachRequest>().is_err(), "{bad:?}");
        }
    }

    /// The README's "Minimum kernel per feature" table lists every feature of [`FEATURES`]
    /// with its minimum, so the refusal message and the README say the same.
    #[test]
    fn readme_table_matches_features() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("Minimum kernel per feature")
            .expect("README has the table");
        let table = &readme[start..];
        for f in FEATURES {
            let row = table
                .lines()
                .find(|l| l.starts_with('|') && l.contains(f.name))
                .unwrap_or_else(|| panic!("README row for {:?}", f.name));
            let want = match f.min_arm64 {
                Some(a) => format!("| {} (arm64: {}) |", f.min, a),
                None => format!("| {} |", f.min),
            };
            assert!(row.contains(&want), "{row:?} should have {want:?}");
        }
        assert!(table.contains(&format!("| TCX (optional) | {TCX_MIN} |")));
    }
}
