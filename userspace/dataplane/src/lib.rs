//! The only crate that talks to aya: it loads the embedded eBPF object, attaches the TCX
//! programs, pins programs and maps under bpffs, owns every map and reads the ring buffer.
//!
//! Data flow: [`Dataplane::start`] mounts bpffs if needed, loads the probes (built by build.rs
//! from `ebpf/probes` and embedded in this crate), reuses maps pinned by an earlier run of the
//! same ABI, and attaches one TCX program per interface and direction (or, when a pinned link
//! from an earlier run exists, atomically swaps the new program into it: adoption). The
//! probes count every flow in an LRU map ([`Dataplane::flow_counters`]) and send the first
//! flight of interesting payload through a ring buffer ([`EventReader`], async over tokio's
//! `AsyncFd`). Counters of everything the probes skipped or dropped are in
//! [`Dataplane::stats`].
//!
//! Pin layout under the instance's `pin_dir` (unique per daemon instance):
//! `abi<N>/maps/<MAP>`, `abi<N>/progs/<program>`, `abi<N>/links/<iface>-<role>-<hook>`. A pin
//! directory of another ABI version is removed (its links detach) when a new one starts.
//!
//! Session control: [`Dataplane::steering`] writes the destinations whose new tcp/443
//! flows the LAN ingress program assigns to the session proxy's listener, and the listener
//! itself; [`PolicyRoute`] delivers the steered flows' marked packets locally (see the `steer`
//! module's docs for the whole path).
//!
//! Direction: on a "lan" interface ingress is up (from users) and egress is down; on a "wan"
//! interface egress is up and ingress is down. A forwarded packet seen by two attached hooks
//! is counted once (at the ingress hook).
// One unsafe call (registering the ring buffer's fd with tokio) is allowed where it is made.
#![deny(unsafe_code)]

mod blockpage;
mod event;
mod steer;
pub mod testing;
mod verdicts;

pub use blockpage::{
    BLOCK_PAGE_MAX, block_page_html, block_page_packet, block_page_response, held_dns_packet,
    send_block_page, send_held_dns,
};
pub use steer::{ListenerFamilies, PolicyRoute, SteerWriter, policy_route_commands};
pub use verdicts::{
    Action, EnforceOptions, NameRule, Unreadable, VerdictWriter, monotonic_ns, name_key,
    normalize_name,
};

use std::{
    collections::HashSet,
    fmt, fs, io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
    },
};
use tokio::io::unix::AsyncFd;
pub use tollgate_common as abi;
use tollgate_common::{Config, FlowKey, FlowValue, IfaceInfo, Stats};

pub use event::{
    Direction, FlowCounters, KernelClock, PayloadEvent, PayloadKind, RecordError, decode_record,
    flow_key, key_addr,
};

/// The probes object, built by build.rs.
static PROBES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tollgate-probes"));

/// What an interface faces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Faces users: ingress is up, egress is down.
    Lan,
    /// Faces the internet: egress is up, ingress is down.
    Wan,
}

/// Monitor counts and reports; enforce applies verdicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Monitor,
    Enforce,
}

/// A TCX hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    Ingress,
    Egress,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Lan => "lan",
            Role::Wan => "wan",
        })
    }
}

/// How to start the dataplane.
#[derive(Clone, Debug)]
pub struct DataplaneOptions {
    /// Interfaces to attach to, with their role.
    pub interfaces: Vec<(String, Role)>,
    /// Pin directory on bpffs, unique per instance, e.g. `/sys/fs/bpf/tollgate/<instance>`.
    pub pin_dir: PathBuf,
    pub mode: Mode,
}

/// One attached program, for the startup summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachInfo {
    pub interface: String,
    pub ifindex: u32,
    pub role: Role,
    pub hook: Hook,
    /// Which way packets at this hook go.
    pub direction: Direction,
    /// Program function name in the object.
    pub program: &'static str,
    pub program_id: u32,
    pub link_id: u32,
    /// The link was pinned by an earlier run and the program was swapped into it.
    pub adopted: bool,
}

/// Per-CPU counters summed over CPUs. Field names follow the `STAT_*` ids of the ABI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataplaneStats {
    pub packets: u64,
    pub bytes: u64,
    pub events: u64,
    pub ringbuf_full: u64,
    pub flow_map_full: u64,
    pub hello_map_full: u64,
    pub events_capped: u64,
    pub non_ip: u64,
    pub err_l2: u64,
    pub err_ipv4: u64,
    pub err_ipv6: u64,
    pub err_tcp: u64,
    pub err_udp: u64,
    pub fragments: u64,
    pub other_l4: u64,
    pub err_payload: u64,
    pub dedup: u64,
    pub hello_continuations: u64,
    pub drops: u64,
    pub would_drop: u64,
    pub rst_sent: u64,
    pub icmp_sent: u64,
    /// Packets toward users dropped while their QUIC flow waited for a verdict.
    pub quic_held: u64,
    /// QUIC flows whose hold timed out without a verdict (they passed: fail-open).
    pub quic_hold_expired: u64,
    /// HTTP/1 requests whose Host the probes read.
    pub http_host_found: u64,
    /// Blocked HTTP/1 requests the probes turned into a reset toward the server.
    pub http_blocked: u64,
    /// DNS queries the probes answered with NXDOMAIN.
    pub dns_refused: u64,
    /// DNS messages toward users not sent to userspace: no query from the user on the flow.
    pub dns_unsolicited: u64,
    /// SYNs assigned to the session proxy (flows steered).
    pub steered: u64,
    /// SYNs toward a steered destination refused because no proxy listener could take them.
    pub steer_no_proxy: u64,
    /// QUIC Initials toward steered destinations refused.
    pub steer_quic_refused: u64,
    /// ClientHellos naming an app under session control on a direct flow, reset.
    pub session_refused: u64,
    /// Per-client steer entries the probes wrote.
    pub steer_client_added: u64,
    /// SYNs steered by a per-client entry.
    pub steer_by_client: u64,
    /// DNS answers for session-controlled names held for the daemon.
    pub dns_held: u64,
    /// Steer entries used past their expiry because the daemon is gone (fail-closed).
    pub steer_kept_stale: u64,
    /// Packets of flows toward steered destinations whose flow state was lost, reset.
    pub steer_lost_reset: u64,
    /// Hellos naming a session-controlled app without a server handshake: no steer entry.
    pub session_unproven: u64,
    /// Every counter by id (including ids this build has no field for).
    pub raw: Vec<u64>,
}

impl DataplaneStats {
    fn from_raw(raw: Vec<u64>) -> Self {
        use tollgate_common::*;
        let g = |i: usize| raw.get(i).copied().unwrap_or(0);
        Self {
            packets: g(STAT_PACKETS),
            bytes: g(STAT_BYTES),
            events: g(STAT_EVENTS),
            ringbuf_full: g(STAT_RINGBUF_FULL),
            flow_map_full: g(STAT_FLOW_MAP_FULL),
            hello_map_full: g(STAT_HELLO_MAP_FULL),
            events_capped: g(STAT_EVENTS_CAPPED),
            non_ip: g(STAT_NON_IP),
            err_l2: g(STAT_ERR_L2),
            err_ipv4: g(STAT_ERR_IPV4),
            err_ipv6: g(STAT_ERR_IPV6),
            err_tcp: g(STAT_ERR_TCP),
            err_udp: g(STAT_ERR_UDP),
            fragments: g(STAT_FRAGMENTS),
            other_l4: g(STAT_OTHER_L4),
            err_payload: g(STAT_ERR_PAYLOAD),
            dedup: g(STAT_DEDUP),
            hello_continuations: g(STAT_HELLO_CONT),
            drops: g(STAT_DROPS),
            would_drop: g(STAT_WOULD_DROP),
            rst_sent: g(STAT_RST_SENT),
            icmp_sent: g(STAT_ICMP_SENT),
            quic_held: g(STAT_QUIC_HELD),
            quic_hold_expired: g(STAT_QUIC_HOLD_EXPIRED),
            http_host_found: g(STAT_HTTP_HOST_FOUND),
            http_blocked: g(STAT_HTTP_BLOCKED),
            dns_refused: g(STAT_DNS_REFUSED),
            dns_unsolicited: g(STAT_DNS_UNSOLICITED),
            steered: g(STAT_STEERED),
            steer_no_proxy: g(STAT_STEER_NO_PROXY),
            steer_quic_refused: g(STAT_STEER_QUIC_REFUSED),
            session_refused: g(STAT_SESSION_REFUSED),
            steer_client_added: g(STAT_STEER_CLIENT_ADDED),
            steer_by_client: g(STAT_STEER_BY_CLIENT),
            dns_held: g(STAT_DNS_HELD),
            steer_kept_stale: g(STAT_STEER_KEPT_STALE),
            steer_lost_reset: g(STAT_STEER_LOST_RESET),
            session_unproven: g(STAT_SESSION_UNPROVEN),
            raw,
        }
    }

    /// Malformed or truncated headers of any kind.
    pub fn parse_errors(&self) -> u64 {
        self.err_l2 + self.err_ipv4 + self.err_ipv6 + self.err_tcp + self.err_udp + self.err_payload
    }
}

/// Everything that can go wrong in the dataplane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("bpffs at {path}: {source}")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("interface {name:?}: {source}")]
    Interface {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("loading the eBPF object (needs root or CAP_BPF+CAP_NET_ADMIN): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("program {0} missing from the embedded object")]
    MissingProgram(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {0} missing (already taken?)")]
    MissingMap(&'static str),
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("event reader: {0}")]
    Io(#[from] io::Error),
    #[error("steering route (`{command}`): {message}")]
    Route { command: String, message: String },
}

/// The loaded, attached probes. One owner: the daemon's dataplane task.
pub struct Dataplane {
    ebpf: Ebpf,
    root: PathBuf,
    attached: Vec<AttachInfo>,
    link_pins: Vec<PathBuf>,
    /// Held so that the links stay open while we run (they are pinned too).
    _links: Vec<FdLink>,
}

/// Maps pinned under `abi<N>/maps` (the per-CPU scratch map is private to each load).
const PINNED_MAPS: [&str; 14] = [
    abi::MAP_FLOWS,
    abi::MAP_HELLO,
    abi::MAP_EVENTS,
    abi::MAP_FLOW_VERDICTS,
    abi::MAP_NAME_VERDICTS,
    abi::MAP_BLOCK_V4,
    abi::MAP_BLOCK_V6,
    abi::MAP_CONFIG,
    abi::MAP_STATS,
    abi::MAP_IFACES,
    // Steered destinations outlive a daemon restart like blocked ones (the listener sockmap
    // does not: its socket is the old proxy's).
    abi::MAP_STEER_V4,
    abi::MAP_STEER_V6,
    abi::MAP_STEER_CLIENT,
    // Pinned so that its entries survive the daemon (the kernel empties a program array when
    // its last user reference goes away).
    abi::MAP_PROGS,
];

const BPFFS_ROOT: &str = "/sys/fs/bpf";

fn program_for(role: Role, hook: Hook) -> (&'static str, Direction) {
    match (role, hook) {
        (Role::Lan, Hook::Ingress) => (abi::PROG_LAN_INGRESS, Direction::Up),
        (Role::Lan, Hook::Egress) => (abi::PROG_LAN_EGRESS, Direction::Down),
        (Role::Wan, Hook::Ingress) => (abi::PROG_WAN_INGRESS, Direction::Down),
        (Role::Wan, Hook::Egress) => (abi::PROG_WAN_EGRESS, Direction::Up),
    }
}

/// Mounts bpffs at /sys/fs/bpf unless it is already there.
pub fn ensure_bpffs() -> Result<(), DataplaneError> {
    let path = Path::new(BPFFS_ROOT);
    let err = |source| DataplaneError::Bpffs {
        path: path.to_path_buf(),
        source,
    };
    match nix::sys::statfs::statfs(path) {
        Ok(s) if s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC => return Ok(()),
        Ok(_) => {}
        Err(e) => return Err(err(io::Error::from(e))),
    }
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| err(io::Error::from(e)))
}

fn mkdir(path: &Path) -> Result<(), DataplaneError> {
    fs::create_dir_all(path).map_err(|source| DataplaneError::PinDir {
        path: path.to_path_buf(),
        source,
    })
}

fn map_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::maps::Map, DataplaneError> {
    ebpf.map_mut(name).ok_or(DataplaneError::MissingMap(name))
}

fn map_ref<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a aya::maps::Map, DataplaneError> {
    ebpf.map(name).ok_or(DataplaneError::MissingMap(name))
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// Writes the config entry the probes read.
fn write_config(ebpf: &mut Ebpf, mode: Mode) -> Result<(), DataplaneError> {
    let mut cfg: Array<&mut MapData, Config> =
        Array::try_from(map_mut(ebpf, abi::MAP_CONFIG)?).map_err(map_err(abi::MAP_CONFIG))?;
    let mut c = cfg.get(&0, 0).map_err(map_err(abi::MAP_CONFIG))?;
    c.mode = match mode {
        Mode::Monitor => abi::MODE_MONITOR,
        Mode::Enforce => abi::MODE_ENFORCE,
    };
    cfg.set(0, c, 0).map_err(map_err(abi::MAP_CONFIG))
}

fn read_flows(ebpf: &Ebpf) -> Result<Vec<FlowCounters>, DataplaneError> {
    let mut out = Vec::new();
    visit_flows(ebpf, |c| out.push(c.clone()))?;
    Ok(out)
}

fn read_stats(ebpf: &Ebpf) -> Result<DataplaneStats, DataplaneError> {
    let stats: PerCpuArray<&MapData, Stats> =
        PerCpuArray::try_from(map_ref(ebpf, abi::MAP_STATS)?).map_err(map_err(abi::MAP_STATS))?;
    let per_cpu = stats.get(&0, 0).map_err(map_err(abi::MAP_STATS))?;
    let mut sum = vec![0u64; abi::STATS_LEN];
    for cpu in per_cpu.iter() {
        for (s, c) in sum.iter_mut().zip(cpu.counters.iter()) {
            *s = s.wrapping_add(*c);
        }
    }
    Ok(DataplaneStats::from_raw(sum))
}

fn take_reader(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>, DataplaneError> {
    let map = ebpf
        .take_map(abi::MAP_EVENTS)
        .ok_or(DataplaneError::MissingMap(abi::MAP_EVENTS))?;
    RingBuf::try_from(map).map_err(map_err(abi::MAP_EVENTS))
}

impl Dataplane {
    /// Loads the probes, attaches them to every configured interface (both hooks) and pins
    /// programs, links and maps under `opts.pin_dir`. Pins of an earlier run of the same ABI
    /// are adopted: maps keep their contents, and the new programs are swapped atomically
    /// into the pinned links instead of attaching a second time.
    pub fn start(opts: DataplaneOptions) -> Result<Dataplane, DataplaneError> {
        if opts.pin_dir.starts_with(BPFFS_ROOT) {
            ensure_bpffs()?;
        }
        let root = opts.pin_dir.join(format!("abi{}", abi::ABI_VERSION));
        let (maps_dir, progs_dir, links_dir) =
            (root.join("maps"), root.join("progs"), root.join("links"));
        for d in [&maps_dir, &progs_dir, &links_dir] {
            mkdir(d)?;
        }
        remove_other_abis(&opts.pin_dir, &root);
        drop_resized_ring(&maps_dir);

        let mut loader = EbpfLoader::new();
        for name in PINNED_MAPS {
            loader.map_pin_path(name, maps_dir.join(name));
        }
        let mut ebpf = loader.load(PROBES)?;
        write_config(&mut ebpf, opts.mode)?;

        // Interfaces, resolved once.
        let mut ifaces = Vec::new();
        for (name, role) in &opts.interfaces {
            let ifindex = nix::net::if_::if_nametoindex(name.as_str()).map_err(|source| {
                DataplaneError::Interface {
                    name: name.clone(),
                    source,
                }
            })?;
            ifaces.push((name.clone(), ifindex, *role));
        }
        {
            let mut m: BpfHashMap<&mut MapData, u32, IfaceInfo> =
                BpfHashMap::try_from(map_mut(&mut ebpf, abi::MAP_IFACES)?)
                    .map_err(map_err(abi::MAP_IFACES))?;
            let keep: HashSet<u32> = ifaces.iter().map(|(_, i, _)| *i).collect();
            let stale: Vec<u32> = m
                .keys()
                .filter_map(Result::ok)
                .filter(|k| !keep.contains(k))
                .collect();
            for k in stale {
                let _ = m.remove(&k);
            }
            for (_, ifindex, role) in &ifaces {
                let info = IfaceInfo {
                    role: match role {
                        Role::Lan => abi::ROLE_LAN,
                        Role::Wan => abi::ROLE_WAN,
                    },
                    _pad: 0,
                };
                m.insert(*ifindex, info, 0)
                    .map_err(map_err(abi::MAP_IFACES))?;
            }
        }

        // Load each needed program once, pin it.
        let mut needed: Vec<&'static str> = abi::TAIL_CALLS.iter().map(|(_, n)| *n).collect();
        for (_, _, role) in &ifaces {
            for hook in [Hook::Ingress, Hook::Egress] {
                let (p, _) = program_for(*role, hook);
                if !needed.contains(&p) {
                    needed.push(p);
                }
            }
        }
        for name in &needed {
            let prog = classifier(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| DataplaneError::Program { name, source })?;
            let pin = progs_dir.join(name);
            let _ = fs::remove_file(&pin);
            prog.pin(&pin).map_err(|source| DataplaneError::Pin {
                path: pin.clone(),
                source,
            })?;
        }

        install_tail_calls(&mut ebpf)?;

        let mut attached = Vec::new();
        let mut links = Vec::new();
        let mut link_pins = Vec::new();
        for (iface, ifindex, role) in &ifaces {
            for hook in [Hook::Ingress, Hook::Egress] {
                let (pname, direction) = program_for(*role, hook);
                let pin = links_dir.join(format!("{iface}-{role}-{hook}"));
                let (link, adopted) = attach_or_adopt(&mut ebpf, pname, iface, hook, &pin)?;
                let info = link.info().map_err(|source| DataplaneError::Link {
                    path: pin.clone(),
                    source,
                })?;
                tracing::debug!(%iface, %hook, program = pname, adopted, "attached");
                attached.push(AttachInfo {
                    interface: iface.clone(),
                    ifindex: *ifindex,
                    role: *role,
                    hook,
                    direction,
                    program: pname,
                    program_id: info.program_id(),
                    link_id: info.id(),
                    adopted,
                });
                links.push(link);
                link_pins.push(pin);
            }
        }
        // Links of interfaces or roles no longer configured: unpinning detaches them.
        if let Ok(rd) = fs::read_dir(&links_dir) {
            for e in rd.flatten() {
                let p = e.path();
                if !link_pins.contains(&p) {
                    tracing::info!(pin = %p.display(), "detaching stale link");
                    let _ = fs::remove_file(&p);
                }
            }
        }
        Ok(Dataplane {
            ebpf,
            root,
            attached,
            link_pins,
            _links: links,
        })
    }

    /// What is attached where (for the startup summary).
    pub fn attached(&self) -> Vec<AttachInfo> {
        self.attached.clone()
    }

    /// The pin directory of this ABI version (`<pin_dir>/abi<N>`).
    pub fn pin_root(&self) -> &Path {
        &self.root
    }

    /// Takes the ring-buffer reader (once; a second call returns `MissingMap`). Must be called
    /// inside a tokio runtime with I/O enabled.
    pub fn take_event_reader(&mut self) -> Result<EventReader, DataplaneError> {
        EventReader::new(take_reader(&mut self.ebpf)?)
    }

    /// Snapshot of the flow counters.
    pub fn flow_counters(&self) -> Result<Vec<FlowCounters>, DataplaneError> {
        read_flows(&self.ebpf)
    }

    /// Visits up to about `max` more flows of `walk` (whole hash buckets at a time, so a few
    /// more or fewer), calling `f` with each one's counters; `walk.is_done()` says when the
    /// map has been covered. Between steps the caller can read events: a walk of 300k flows
    /// no longer stops the event reader for its whole length.
    ///
    /// Reads the map with `BPF_MAP_LOOKUP_BATCH` (one syscall per batch instead of two per
    /// entry). Entries added or evicted while a walk is under way may be seen or missed, as
    /// with any walk of a live hash map. A kernel without batch lookups gets the
    /// entry-by-entry walk, in one step.
    pub fn walk_flow_counters(
        &self,
        walk: &mut FlowWalk,
        max: usize,
        f: impl FnMut(&FlowCounters),
    ) -> Result<usize, DataplaneError> {
        walk_flows(&self.ebpf, walk, max, f)
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Result<DataplaneStats, DataplaneError> {
        read_stats(&self.ebpf)
    }

    /// The verdict maps: flow, name and prefix decisions, enforcement options.
    pub fn verdicts(&mut self) -> VerdictWriter<'_> {
        VerdictWriter {
            ebpf: &mut self.ebpf,
        }
    }

    /// The session-control steering maps: steered destinations and the proxy's
    /// listener.
    pub fn steering(&mut self) -> SteerWriter<'_> {
        SteerWriter {
            ebpf: &mut self.ebpf,
        }
    }

    /// Switches between monitor and enforce at runtime.
    pub fn set_mode(&mut self, mode: Mode) -> Result<(), DataplaneError> {
        write_config(&mut self.ebpf, mode)
    }

    /// Detaches every link and removes this instance's pins (for `tollgate stop`).
    pub fn detach(self) -> Result<(), DataplaneError> {
        let Dataplane {
            ebpf,
            root,
            link_pins,
            _links,
            ..
        } = self;
        for p in &link_pins {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(DataplaneError::PinDir {
                        path: p.clone(),
                        source,
                    });
                }
            }
        }
        drop(_links);
        drop(ebpf);
        match fs::remove_dir_all(&root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(DataplaneError::PinDir { path: root, source }),
        }
        if let Some(parent) = root.parent() {
            // Only removes the instance directory when nothing else lives there.
            let _ = fs::remove_dir(parent);
        }
        Ok(())
    }
}

/// Puts the SNI pipeline into the program array the packet programs tail-call.
fn install_tail_calls(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    let mut fds = Vec::new();
    for (slot, name) in abi::TAIL_CALLS {
        let p = ebpf
            .program(name)
            .ok_or(DataplaneError::MissingProgram(name))?;
        let p: &SchedClassifier = p
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        let fd = p
            .fd()
            .and_then(|fd| fd.try_clone().map_err(Into::into))
            .map_err(|source| DataplaneError::Program { name, source })?;
        fds.push((slot, fd));
    }
    let mut progs: aya::maps::ProgramArray<&mut MapData> =
        aya::maps::ProgramArray::try_from(map_mut(ebpf, abi::MAP_PROGS)?)
            .map_err(map_err(abi::MAP_PROGS))?;
    for (slot, fd) in &fds {
        progs.set(*slot, fd, 0).map_err(map_err(abi::MAP_PROGS))?;
    }
    Ok(())
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DataplaneError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::MissingProgram(name))?;
    prog.try_into()
        .map_err(|source| DataplaneError::Program { name, source })
}

/// Swaps the program into a pinned link from an earlier run, or attaches and pins a new link.
fn attach_or_adopt(
    ebpf: &mut Ebpf,
    pname: &'static str,
    iface: &str,
    hook: Hook,
    pin: &Path,
) -> Result<(FdLink, bool), DataplaneError> {
    let prog = classifier(ebpf, pname)?;
    let perr = |source| DataplaneError::Program {
        name: pname,
        source,
    };
    if pin.exists() {
        match PinnedLink::from_pin(pin) {
            Ok(old) => {
                let fd: FdLink = old.into();
                match SchedClassifierLink::try_from(fd) {
                    Ok(link) => match prog.attach_to_link(link) {
                        Ok(id) => {
                            let link = prog.take_link(id).map_err(perr)?;
                            let fd =
                                FdLink::try_from(link).map_err(|source| DataplaneError::Link {
                                    path: pin.to_path_buf(),
                                    source,
                                })?;
                            return Ok((fd, true));
                        }
                        Err(e) => {
                            tracing::warn!(pin = %pin.display(), error = %e, "pinned link is stale; attaching anew")
                        }
                    },
                    Err(e) => {
                        tracing::warn!(pin = %pin.display(), error = %e, "pinned object is not a TC link")
                    }
                }
            }
            Err(e) => tracing::warn!(pin = %pin.display(), error = %e, "cannot open pinned link"),
        }
        let _ = fs::remove_file(pin);
    }
    let attach_type = match hook {
        Hook::Ingress => TcAttachType::Ingress,
        Hook::Egress => TcAttachType::Egress,
    };
    let id = prog.attach(iface, attach_type).map_err(perr)?;
    let link = prog.take_link(id).map_err(perr)?;
    let fd = FdLink::try_from(link).map_err(|source| DataplaneError::Link {
        path: pin.to_path_buf(),
        source,
    })?;
    let pinned = fd.pin(pin).map_err(|source| DataplaneError::Pin {
        path: pin.to_path_buf(),
        source,
    })?;
    Ok((pinned.into(), false))
}

/// Unpins a ring buffer pinned by a build with another ring size. aya adopts a pinned map
/// as it is, but reads a ring buffer with the size this build declares: a consumer of the
/// wrong size would read garbage. The programs being replaced keep their ring until they
/// are swapped out; the new ones get a new ring (the events in flight are lost).
fn drop_resized_ring(maps_dir: &Path) {
    let pin = maps_dir.join(abi::MAP_EVENTS);
    if !pin.exists() {
        return;
    }
    let size = MapData::from_pin(&pin)
        .and_then(|m| m.info())
        .map(|i| i.max_entries());
    match size {
        Ok(n) if n == abi::EVENTS_RING_BYTES => {}
        found => {
            tracing::info!(
                pin = %pin.display(),
                found = ?found.map_err(|e| e.to_string()),
                expected = abi::EVENTS_RING_BYTES,
                "ring buffer pinned with another size; making a new one"
            );
            let _ = fs::remove_file(&pin);
        }
    }
}

/// Removes pin directories of other ABI versions under `pin_dir` (their links detach).
fn remove_other_abis(pin_dir: &Path, keep: &Path) {
    let Ok(rd) = fs::read_dir(pin_dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let is_abi = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("abi"));
        if is_abi && p != keep {
            tracing::info!(dir = %p.display(), "removing pins of another ABI version");
            let _ = fs::remove_dir_all(&p);
        }
    }
}

/// Every flow's counters, entry by entry (two bpf syscalls each).
fn visit_flows(ebpf: &Ebpf, f: impl FnMut(&FlowCounters)) -> Result<usize, DataplaneError> {
    visit_flow_map(map_ref(ebpf, abi::MAP_FLOWS)?, f)
}

fn visit_flow_map(
    map: &aya::maps::Map,
    mut f: impl FnMut(&FlowCounters),
) -> Result<usize, DataplaneError> {
    let flows: BpfHashMap<&MapData, FlowKey, FlowValue> =
        BpfHashMap::try_from(map).map_err(map_err(abi::MAP_FLOWS))?;
    let clock = KernelClock::now();
    let mut n = 0;
    for item in flows.iter() {
        let Ok((k, v)) = item else { continue };
        if let Some(c) = event::flow_counters(&k, &v, &clock) {
            f(&c);
            n += 1;
        }
    }
    Ok(n)
}

/// See [`Dataplane::walk_flow_counters`].
fn walk_flows(
    ebpf: &Ebpf,
    walk: &mut FlowWalk,
    max: usize,
    f: impl FnMut(&FlowCounters),
) -> Result<usize, DataplaneError> {
    match map_ref(ebpf, abi::MAP_FLOWS) {
        Ok(map) => walk_flow_map(map, walk, max, f),
        Err(e) => {
            walk.done = true;
            Err(e)
        }
    }
}

/// [`Dataplane::walk_flow_counters`] over a flow map opened by other means (a tool that
/// opens the daemon's pinned map, e.g. the event_storm benchmark). An error ends the walk
/// (`walk.is_done()`), so a caller looping until done always stops.
pub fn walk_flow_map(
    map: &aya::maps::Map,
    walk: &mut FlowWalk,
    max: usize,
    f: impl FnMut(&FlowCounters),
) -> Result<usize, DataplaneError> {
    let r = walk_flow_map_inner(map, walk, max, f);
    if r.is_err() {
        walk.done = true;
    }
    r
}

fn walk_flow_map_inner(
    map: &aya::maps::Map,
    walk: &mut FlowWalk,
    max: usize,
    mut f: impl FnMut(&FlowCounters),
) -> Result<usize, DataplaneError> {
    if walk.done {
        return Ok(0);
    }
    let (aya::maps::Map::LruHashMap(data) | aya::maps::Map::HashMap(data)) = map else {
        return Err(DataplaneError::Io(io::Error::other(format!(
            "map {} is not a hash map",
            abi::MAP_FLOWS
        ))));
    };
    let clock = KernelClock::now();
    let mut n = 0;
    while n < max && !walk.done {
        if walk.batch_unsupported {
            n += visit_flow_map(map, &mut f)?;
            walk.visited += n;
            walk.done = true;
            break;
        }
        match lookup_batch(
            data,
            walk,
            FlowWalk::BATCH.min(max - n).max(FlowWalk::MIN_BATCH),
        ) {
            Ok(got) => {
                for (k, v) in walk.keys.iter().zip(&walk.values).take(got) {
                    if let Some(c) = event::flow_counters(k, v, &clock) {
                        f(&c);
                    }
                }
                n += got;
                walk.visited += got;
            }
            Err(e)
                if walk.token.is_none()
                    && matches!(e.raw_os_error(), Some(nix::libc::EINVAL | ENOTSUPP)) =>
            {
                tracing::debug!("no batch lookups on this kernel ({e}); walking entry by entry");
                walk.batch_unsupported = true;
            }
            Err(e) => {
                walk.done = true;
                return Err(DataplaneError::Io(e));
            }
        }
    }
    Ok(n)
}

/// The kernel's "operation not supported" (not in libc: it is internal to the kernel, but
/// the bpf syscall returns it for map types without batch operations).
const ENOTSUPP: i32 = 524;
/// `BPF_MAP_LOOKUP_BATCH` from `enum bpf_cmd` (linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: nix::libc::c_long = 24;

/// A walk of the kernel's flow map in steps ([`Dataplane::walk_flow_counters`]): the batch
/// cursor and the buffers it reuses (120 B a flow of batch, 0.5 MiB).
#[derive(Debug, Default)]
pub struct FlowWalk {
    /// The kernel's batch cursor (a bucket index for hash maps); `None` before the first.
    token: Option<u64>,
    done: bool,
    batch_unsupported: bool,
    visited: usize,
    keys: Vec<FlowKey>,
    values: Vec<FlowValue>,
}

impl FlowWalk {
    /// Flows read per syscall at most.
    const BATCH: usize = 4096;
    /// Flows read per syscall at least: a batch holds whole buckets, and a bucket bigger
    /// than the batch is an error (ENOSPC).
    const MIN_BATCH: usize = 256;

    pub fn new() -> Self {
        Self::default()
    }

    /// The whole map has been visited (or the walk failed).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Flows visited so far.
    pub fn visited(&self) -> usize {
        self.visited
    }
}

/// The argument of the `BPF_MAP_*_BATCH` commands (`union bpf_attr`'s `batch` member).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// One `BPF_MAP_LOOKUP_BATCH` of up to `want` entries into the walk's buffers; returns how
/// many were read and advances the cursor (`walk.done` once the map is covered).
#[allow(
    unsafe_code,
    reason = "the bpf syscall itself; aya 0.14 has no batch lookup. Invariants stated below"
)]
fn lookup_batch(data: &MapData, walk: &mut FlowWalk, want: usize) -> Result<usize, io::Error> {
    use std::os::fd::AsFd as _;
    let info = data.info().map_err(io::Error::other)?;
    let (ks, vs) = (size_of::<FlowKey>(), size_of::<FlowValue>());
    if usize::try_from(info.key_size()).ok() != Some(ks)
        || usize::try_from(info.value_size()).ok() != Some(vs)
    {
        return Err(io::Error::other(format!(
            "flow map entries are {}+{} bytes, this build expects {ks}+{vs}",
            info.key_size(),
            info.value_size()
        )));
    }
    walk.keys.resize(want, FlowKey::default());
    walk.values.resize(want, FlowValue::default());
    let mut in_batch = walk.token.unwrap_or(0);
    let mut out_batch = 0u64;
    let mut attr = BatchAttr {
        in_batch: if walk.token.is_some() {
            &raw mut in_batch as u64
        } else {
            0
        },
        out_batch: &raw mut out_batch as u64,
        keys: walk.keys.as_mut_ptr() as u64,
        values: walk.values.as_mut_ptr() as u64,
        count: u32::try_from(want).unwrap_or(u32::MAX),
        map_fd: u32::try_from(data.fd().as_fd().as_raw_fd()).unwrap_or(u32::MAX),
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is the kernel's `batch` layout (repr(C), no implicit padding), passed
    // with its exact size. The kernel writes at most `count` keys and values into `keys` and
    // `values`, which hold `want` == `count` elements of exactly the map's key and value size
    // (checked above), and a u32 cursor into `out_batch` (8 bytes); all of them outlive the
    // call. FlowKey and FlowValue are plain integers: any bytes are a valid value.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            &raw mut attr,
            size_of::<BatchAttr>(),
        )
    };
    let err = (rc < 0).then(io::Error::last_os_error);
    let got = usize::try_from(attr.count).unwrap_or(0).min(want);
    match err {
        None => {
            walk.token = Some(out_batch);
            Ok(got)
        }
        // The end of the map: `count` still says how many the last batch read.
        Some(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => {
            walk.done = true;
            Ok(got)
        }
        Some(e) => Err(e),
    }
}

/// Async reader of [`PayloadEvent`]s.
pub struct EventReader {
    fd: AsyncFd<RingBuf<MapData>>,
    malformed: u64,
}

impl EventReader {
    #[allow(
        unsafe_code,
        reason = "tokio's fd registration is unsafe; invariant stated below"
    )]
    fn new(ring: RingBuf<MapData>) -> Result<Self, DataplaneError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(DataplaneError::Io(io::Error::other(
                "the event reader must be created inside a tokio runtime",
            )));
        }
        // SAFETY: the RingBuf owns its map fd (MapData) for its whole life and `as_raw_fd`
        // always returns that same fd; the AsyncFd owns the RingBuf and nothing swaps it.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| DataplaneError::Io(io::Error::other(e.to_string())))?;
        Ok(Self { fd, malformed: 0 })
    }

    /// The next event; waits until one arrives. Records that cannot be decoded are counted
    /// ([`EventReader::malformed`]) and skipped.
    pub async fn next(&mut self) -> Result<PayloadEvent, DataplaneError> {
        loop {
            if let Some(ev) = self.try_next() {
                return Ok(ev);
            }
            let mut guard = self.fd.readable_mut().await?;
            guard.clear_ready();
        }
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Option<PayloadEvent> {
        let clock = KernelClock::now();
        let ring = self.fd.get_mut();
        loop {
            let item = ring.next()?;
            match decode_record(&item, &clock) {
                Ok(ev) => return Some(ev),
                Err(e) => {
                    self.malformed += 1;
                    tracing::debug!(error = %e, "undecodable ring-buffer record");
                }
            }
        }
    }

    /// Records skipped because they could not be decoded.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn batched_walk_in_steps_sees_every_flow_once() {
        if !testing::is_root() {
            eprintln!("skip: loading the probes needs root");
            return;
        }
        let mut ebpf = EbpfLoader::new().load(PROBES).expect("load probes");
        let flows = 10_000u32;
        {
            let mut m: BpfHashMap<&mut MapData, FlowKey, FlowValue> =
                BpfHashMap::try_from(map_mut(&mut ebpf, abi::MAP_FLOWS).unwrap()).unwrap();
            for i in 0..flows {
                let user = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i / 1000 + 1)));
                let remote = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
                let key = flow_key(6, user, 1024 + (i % 1000) as u16, remote, 443, 0).unwrap();
                let value = FlowValue {
                    packets_up: u64::from(i),
                    ..FlowValue::default()
                };
                m.insert(key, value, 0).expect("insert");
            }
        }
        let mut walk = FlowWalk::new();
        let mut seen = Vec::new();
        let mut steps = 0;
        while !walk.is_done() {
            walk_flows(&ebpf, &mut walk, 1000, |c| seen.push(c.packets_up)).expect("walk");
            steps += 1;
            assert!(steps <= 100, "the walk does not end");
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..u64::from(flows)).collect::<Vec<_>>());
        assert!(steps >= 10, "steps of ~1000 flows: {steps}");
        assert_eq!(walk.visited(), flows as usize);
        // The same flows as the entry-by-entry walk.
        let mut one_by_one = Vec::new();
        visit_flows(&ebpf, |c| one_by_one.push(c.packets_up)).expect("visit");
        one_by_one.sort_unstable();
        assert_eq!(one_by_one, seen);
        // A finished walk stays finished.
        assert_eq!(walk_flows(&ebpf, &mut walk, 1000, |_| {}).unwrap(), 0);
        // An error ends a walk: a map that is not a hash map.
        let mut bad = FlowWalk::new();
        let stats = ebpf.map(abi::MAP_STATS).expect("stats map");
        assert!(walk_flow_map(stats, &mut bad, 1000, |_| {}).is_err());
        assert!(bad.is_done());
    }
}
