//! The only crate that talks to aya: it loads the embedded eBPF object, attaches the TCX
//! programs (tc clsact through netlink on kernels before 6.6), pins programs and maps under
//! bpffs, owns every map and reads the ring buffer.
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
//! `abi<N>/maps/<MAP>`, `abi<N>/progs/<program>`, `abi<N>/links/<iface>-<role>-<hook>`, and
//! with the tc fallback `abi<N>/tc/<iface>/<hook>` (empty directories that stand for the
//! unpinnable netlink filters; see the `loader` module). A pin directory of another ABI
//! version is removed (its links detach) when a new one starts.
//!
//! The kernel is checked first ([`kernel::decide`]): an older one than every feature in
//! [`kernel::FEATURES`] needs is refused with the names of what it lacks, and the attach mode
//! ([`AttachMode`]) is chosen from [`DataplaneOptions::attach`].
//!
//! Session control: [`Dataplane::steering`] writes the destinations whose new tcp/443
//! flows the LAN ingress program assigns to the session proxy's listener, and the listener
//! itself; [`PolicyRoute`] delivers the steered flows' marked packets locally (see the `steer`
//! module's docs for the whole path).
//!
//! Direction: on a "lan" interface ingress is up (from users) and egress is down; on a "wan"
//! interface egress is up and ingress is down. A forwarded packet seen by two attached hooks
//! is counted once (at the ingress hook).
// Two unsafe calls are allowed where they are made: registering the ring buffer's fd with
// tokio (reader.rs) and the batch-lookup bpf syscall (flow_walk.rs).
#![deny(unsafe_code)]

mod blockpage;
mod error;
mod event;
mod flow_walk;
pub mod kernel;
mod loader;
mod reader;
mod stats;
mod steer;
pub mod testing;
mod verdicts;

pub use blockpage::{
    BLOCK_PAGE_MAX, block_page_html, block_page_packet, block_page_response, held_dns_packet,
    send_block_page, send_held_dns,
};
pub use error::DataplaneError;
pub use event::{
    Direction, FlowCounters, FlowTuple, KernelClock, L4Proto, PayloadEvent, PayloadKind,
    RecordError, decode_record, flow_key, flow_tuple, key_addr,
};
pub use flow_walk::{FlowWalk, walk_flow_map};
pub use kernel::{AttachMode, AttachRequest, KernelError};
pub use loader::{TC_HANDLE, TC_PRIORITY, ensure_bpffs};
pub use reader::EventReader;
pub use stats::DataplaneStats;
pub use steer::{ListenerFamilies, PolicyRoute, SteerWriter, policy_route_commands};
pub use tollgate_common as abi;
pub use verdicts::{
    Action, EnforceOptions, NameRule, Unreadable, VerdictWriter, monotonic_ns, name_key,
    normalize_name,
};

use std::{
    fmt,
    path::{Path, PathBuf},
};

use aya::Ebpf;

pub use tollgate_common::{Mode, Role};

/// Removes a daemon instance's pins when the daemon is gone (`tollgate stop` after a crash):
/// TCX links detach with their pins; the tc filters the pins mark (`abi<N>/tc/<iface>/<hook>`)
/// are deleted first when `delete_filters` (they live in the calling thread's network
/// namespace, which must be the instance's). Returns how many filters were deleted.
pub fn remove_instance(pin_dir: &Path, delete_filters: bool) -> Result<usize, DataplaneError> {
    loader::remove_instance(pin_dir, delete_filters)
}

/// A TC hook (TCX or clsact).
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

/// How to start the dataplane.
#[derive(Clone, Debug)]
pub struct DataplaneOptions {
    /// Interfaces to attach to, with their role.
    pub interfaces: Vec<(String, Role)>,
    /// Pin directory on bpffs, unique per instance, e.g. `/sys/fs/bpf/tollgate/<instance>`.
    pub pin_dir: PathBuf,
    pub mode: Mode,
    /// TCX, tc clsact, or whichever the kernel has (`auto`).
    pub attach: AttachRequest,
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
    /// The TCX link's id; 0 for a tc filter (no link object).
    pub link_id: u32,
    pub mode: AttachMode,
    /// The link was pinned by an earlier run (tc: our filter was there) and the program was
    /// swapped into it.
    pub adopted: bool,
}

/// The loaded, attached probes. One owner: the daemon's dataplane task.
pub struct Dataplane {
    ebpf: Ebpf,
    root: PathBuf,
    attached: Vec<AttachInfo>,
    attach_mode: AttachMode,
    link_pins: Vec<PathBuf>,
    /// Held so that the links stay open while we run (TCX links are pinned too; tc filters
    /// stay until `detach`).
    links: Vec<loader::HeldLink>,
    /// False when the pins live on a bpffs that ends with this process (see
    /// [`Dataplane::pins_outlive_exit`]).
    pins_outlive_exit: bool,
}

impl Dataplane {
    /// Loads the probes, attaches them to every configured interface (both hooks) and pins
    /// programs, links and maps under `opts.pin_dir`. Pins of an earlier run of the same ABI
    /// are adopted: maps keep their contents, and the new programs are swapped atomically
    /// into the pinned links instead of attaching a second time.
    pub fn start(opts: DataplaneOptions) -> Result<Dataplane, DataplaneError> {
        loader::start(opts)
    }

    /// Whether the pins (and so the attached programs and the maps' contents) stay after this
    /// process exits without `detach`. Not under `ip netns exec`: the bpffs there is that
    /// command's own, and goes with its mount namespace.
    pub fn pins_outlive_exit(&self) -> bool {
        self.pins_outlive_exit
    }

    /// TCX or tc clsact, as chosen at start.
    pub fn attach_mode(&self) -> AttachMode {
        self.attach_mode
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
        EventReader::new(reader::take_reader(&mut self.ebpf)?)
    }

    /// Snapshot of the flow counters.
    pub fn flow_counters(&self) -> Result<Vec<FlowCounters>, DataplaneError> {
        flow_walk::read_flows(&self.ebpf)
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
        flow_walk::walk_flows(&self.ebpf, walk, max, f)
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Result<DataplaneStats, DataplaneError> {
        stats::read_stats(&self.ebpf)
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
        loader::write_config(&mut self.ebpf, mode)
    }

    /// Detaches every link (deletes the tc filters) and removes this instance's pins (for
    /// `tollgate stop`). The clsact qdisc of the tc fallback stays.
    pub fn detach(self) -> Result<(), DataplaneError> {
        loader::detach(self)
    }
}
