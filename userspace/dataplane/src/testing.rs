//! Runs the embedded probes on crafted packets with `BPF_PROG_TEST_RUN`, without attaching or
//! pinning anything: for the kernel-program tests and the per-packet cost benchmark. Needs
//! root (or CAP_BPF + CAP_NET_ADMIN).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, RingBuf},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use tollgate_common::{self as abi, Config, FlowKey, FlowValue, HelloState};

use crate::{
    Mode, SteerWriter, VerdictWriter,
    error::{DataplaneError, map_err, map_mut, map_ref},
    event::{FlowCounters, KernelClock, PayloadEvent, decode_record},
    flow_walk::read_flows,
    loader::{PROBES, classifier, install_tail_calls, write_config},
    reader::take_reader,
    stats::{DataplaneStats, read_stats},
};

/// The probes loaded privately (no pins, no links).
pub struct ProbeHarness {
    ebpf: Ebpf,
    ring: RingBuf<MapData>,
}

/// Result of one program run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunResult {
    /// The program's return code (`TC_ACT_*`, -1 is `TC_ACT_UNSPEC`).
    pub action: i32,
    /// Average time per run, as the kernel measured it.
    pub duration: Duration,
    /// The packet as the program left it.
    pub data_out: Vec<u8>,
    /// `skb->mark` as the program left it.
    pub mark: u32,
    /// `skb->cb` as the program left it.
    pub cb: [u32; 5],
}

/// `TC_ACT_UNSPEC`: the pass verdict in a TCX chain.
pub const TC_ACT_UNSPEC: i32 = -1;
/// `TC_ACT_SHOT`: drop.
pub const TC_ACT_SHOT: i32 = 2;

/// Every program in the object.
pub const PROGRAMS: [&str; 13] = [
    abi::PROG_LAN_INGRESS,
    abi::PROG_LAN_EGRESS,
    abi::PROG_WAN_INGRESS,
    abi::PROG_WAN_EGRESS,
    abi::PROG_NOOP,
    abi::PROG_SNI,
    abi::PROG_NAME,
    abi::PROG_VERDICT,
    abi::PROG_ENFORCE,
    abi::PROG_HOST,
    abi::PROG_QNAME,
    abi::PROG_UNREADABLE,
    abi::PROG_PORTLESS,
];

impl ProbeHarness {
    /// Loads the object and every program (this runs the verifier on each).
    pub fn load() -> Result<Self, DataplaneError> {
        let mut ebpf = EbpfLoader::new().load(PROBES)?;
        for name in PROGRAMS {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        install_tail_calls(&mut ebpf)?;
        let ring = take_reader(&mut ebpf)?;
        Ok(Self { ebpf, ring })
    }

    /// Attaches `name` at `iface`'s ingress the way the daemon attaches its programs (TCX where
    /// the kernel has it); the link lasts as long as the harness. For benchmarks that measure
    /// a program in place, such as the empty program as the floor of forwarding.
    pub fn attach_ingress(
        &mut self,
        name: &'static str,
        iface: &str,
    ) -> Result<(), DataplaneError> {
        classifier(&mut self.ebpf, name)?
            .attach(iface, aya::programs::TcAttachType::Ingress)
            .map_err(|source| DataplaneError::Program { name, source })?;
        Ok(())
    }

    fn prog(&self, name: &'static str) -> Result<&SchedClassifier, DataplaneError> {
        let p = self
            .ebpf
            .program(name)
            .ok_or(DataplaneError::MissingProgram(name))?;
        p.try_into()
            .map_err(|source| DataplaneError::Program { name, source })
    }

    /// Runs `program` on one Ethernet frame `repeat` times.
    pub fn run(
        &self,
        program: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<RunResult, DataplaneError> {
        self.run_ctx(program, frame, repeat, None)
    }

    /// Like [`ProbeHarness::run`], with the skb's `ingress_ifindex` set (as for a packet the
    /// host forwards from that interface).
    pub fn run_forwarded(
        &self,
        program: &'static str,
        frame: &[u8],
        ingress_ifindex: u32,
    ) -> Result<RunResult, DataplaneError> {
        // struct __sk_buff up to tc_index; ingress_ifindex sits at byte 36.
        let mut ctx = [0u8; 48];
        ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        self.run_ctx(program, frame, 1, Some(&ctx))
    }

    /// Like [`ProbeHarness::run`], with the skb's `mark` and `ingress_ifindex` set (0: a
    /// packet the host itself sends, on an egress hook).
    pub fn run_marked(
        &self,
        program: &'static str,
        frame: &[u8],
        mark: u32,
        ingress_ifindex: u32,
    ) -> Result<RunResult, DataplaneError> {
        // struct __sk_buff: mark at byte 8, ingress_ifindex at byte 36.
        let mut ctx = [0u8; 48];
        ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
        ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        self.run_ctx(program, frame, 1, Some(&ctx))
    }

    /// Like [`ProbeHarness::run`], with the skb's control block (`cb[0..5]`) set, as a program
    /// earlier in the TCX chain may have left it.
    pub fn run_with_cb(
        &self,
        program: &'static str,
        frame: &[u8],
        cb: [u32; 5],
    ) -> Result<RunResult, DataplaneError> {
        // struct __sk_buff: cb[5] at bytes 48..68.
        let mut ctx = [0u8; 68];
        for (i, v) in cb.iter().enumerate() {
            ctx[48 + 4 * i..52 + 4 * i].copy_from_slice(&v.to_ne_bytes());
        }
        self.run_ctx(program, frame, 1, Some(&ctx))
    }

    /// Marks an ifindex as one Tollgate is attached to (what `Dataplane::start` does).
    pub fn add_iface(&mut self, ifindex: u32, lan: bool) -> Result<(), DataplaneError> {
        let mut m: BpfHashMap<&mut MapData, u32, abi::IfaceInfo> =
            BpfHashMap::try_from(map_mut(&mut self.ebpf, abi::MAP_IFACES)?)
                .map_err(map_err(abi::MAP_IFACES))?;
        let info = abi::IfaceInfo {
            role: if lan { abi::ROLE_LAN } else { abi::ROLE_WAN },
            _pad: 0,
        };
        m.insert(ifindex, info, 0).map_err(map_err(abi::MAP_IFACES))
    }

    fn run_ctx(
        &self,
        program: &'static str,
        frame: &[u8],
        repeat: u32,
        ctx: Option<&[u8]>,
    ) -> Result<RunResult, DataplaneError> {
        let mut out = vec![0u8; frame.len() + 256];
        // Larger than struct __sk_buff, so that the kernel copies all of it back.
        let mut ctx_out = [0u8; 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx,
            ctx_out: Some(&mut ctx_out),
            repeat,
            ..TestRunOptions::default()
        };
        let r = self
            .prog(program)?
            .test_run(opts)
            .map_err(|source| DataplaneError::Program {
                name: program,
                source,
            })?;
        out.truncate(r.data_size_out as usize);
        // struct __sk_buff: len, pkt_type, mark, ...
        let word = |at: usize| {
            u32::from_ne_bytes([
                ctx_out[at],
                ctx_out[at + 1],
                ctx_out[at + 2],
                ctx_out[at + 3],
            ])
        };
        Ok(RunResult {
            action: r.return_value as i32,
            duration: r.duration,
            data_out: out,
            mark: word(8),
            cb: [word(48), word(52), word(56), word(60), word(64)],
        })
    }

    /// Events waiting in the ring buffer.
    pub fn drain_events(&mut self) -> Vec<PayloadEvent> {
        let clock = KernelClock::now();
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if let Ok(ev) = decode_record(&item, &clock) {
                out.push(ev);
            }
        }
        out
    }

    /// The records waiting in the ring buffer, as the probes wrote them (fuzz seeds).
    pub fn drain_raw_records(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            out.push(item.to_vec());
        }
        out
    }

    /// Flow counters.
    pub fn flows(&self) -> Result<Vec<FlowCounters>, DataplaneError> {
        read_flows(&self.ebpf)
    }

    /// Summed stats.
    pub fn stats(&self) -> Result<DataplaneStats, DataplaneError> {
        read_stats(&self.ebpf)
    }

    /// Sets monitor/enforce.
    pub fn set_mode(&mut self, mode: Mode) -> Result<(), DataplaneError> {
        write_config(&mut self.ebpf, mode)
    }

    /// The verdict maps.
    pub fn verdicts(&mut self) -> VerdictWriter<'_> {
        VerdictWriter {
            ebpf: &mut self.ebpf,
        }
    }

    /// The session-control steering maps.
    pub fn steering(&mut self) -> SteerWriter<'_> {
        SteerWriter {
            ebpf: &mut self.ebpf,
        }
    }

    /// A flow's state as the probes keep it (`None`: not tracked).
    pub fn flow_value(&self, key: &FlowKey) -> Result<Option<FlowValue>, DataplaneError> {
        let m: BpfHashMap<&MapData, FlowKey, FlowValue> =
            BpfHashMap::try_from(map_ref(&self.ebpf, abi::MAP_FLOWS)?)
                .map_err(map_err(abi::MAP_FLOWS))?;
        match m.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(abi::MAP_FLOWS)(e)),
        }
    }

    /// Writes a flow's state (to start a test from a flow the probes decided earlier, e.g. a
    /// steered one: `bpf_sk_assign` needs a real TC ingress, which a test run is not).
    pub fn set_flow_value(&mut self, key: &FlowKey, v: &FlowValue) -> Result<(), DataplaneError> {
        let mut m: BpfHashMap<&mut MapData, FlowKey, FlowValue> =
            BpfHashMap::try_from(map_mut(&mut self.ebpf, abi::MAP_FLOWS)?)
                .map_err(map_err(abi::MAP_FLOWS))?;
        m.insert(*key, *v, 0).map_err(map_err(abi::MAP_FLOWS))
    }

    /// Edits the config entry the probes read (limits, mode, ...).
    pub fn update_config(&mut self, f: impl FnOnce(&mut Config)) -> Result<(), DataplaneError> {
        let mut cfg: Array<&mut MapData, Config> =
            Array::try_from(map_mut(&mut self.ebpf, abi::MAP_CONFIG)?)
                .map_err(map_err(abi::MAP_CONFIG))?;
        let mut c = cfg.get(&0, 0).map_err(map_err(abi::MAP_CONFIG))?;
        f(&mut c);
        cfg.set(0, c, 0).map_err(map_err(abi::MAP_CONFIG))
    }

    /// Forgets every flow, flow verdict and followed ClientHello (so tests start clean).
    pub fn clear_flows(&mut self) -> Result<(), DataplaneError> {
        {
            let mut m: BpfHashMap<&mut MapData, FlowKey, abi::FlowVerdict> =
                BpfHashMap::try_from(map_mut(&mut self.ebpf, abi::MAP_FLOW_VERDICTS)?)
                    .map_err(map_err(abi::MAP_FLOW_VERDICTS))?;
            let keys: Vec<FlowKey> = m.keys().filter_map(Result::ok).collect();
            for k in keys {
                let _ = m.remove(&k);
            }
        }
        {
            let mut m: BpfHashMap<&mut MapData, FlowKey, FlowValue> =
                BpfHashMap::try_from(map_mut(&mut self.ebpf, abi::MAP_FLOWS)?)
                    .map_err(map_err(abi::MAP_FLOWS))?;
            let keys: Vec<FlowKey> = m.keys().filter_map(Result::ok).collect();
            for k in keys {
                let _ = m.remove(&k);
            }
        }
        let mut m: BpfHashMap<&mut MapData, FlowKey, HelloState> =
            BpfHashMap::try_from(map_mut(&mut self.ebpf, abi::MAP_HELLO)?)
                .map_err(map_err(abi::MAP_HELLO))?;
        let keys: Vec<FlowKey> = m.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = m.remove(&k);
        }
        Ok(())
    }
}

/// A program pinned by a running daemon (`<pin_dir>/abi<N>/progs/<name>`), run with
/// `BPF_PROG_TEST_RUN`: the run uses the daemon's maps, so its flows, events (read by the
/// daemon from its ring buffer) and counters are what the daemon sees. For load tests such as
/// the event-storm benchmark (`examples/event_storm.rs`).
pub struct PinnedProgram {
    prog: SchedClassifier,
    path: PathBuf,
}

/// Where a daemon pins `program` under its instance pin directory (e.g.
/// `/sys/fs/bpf/tollgate/<instance>`).
pub fn pinned_program_path(pin_dir: &Path, program: &str) -> PathBuf {
    pin_dir
        .join(format!("abi{}", abi::ABI_VERSION))
        .join("progs")
        .join(program)
}

/// Where a daemon pins `map` under its instance pin directory.
pub fn pinned_map_path(pin_dir: &Path, map: &str) -> PathBuf {
    pin_dir
        .join(format!("abi{}", abi::ABI_VERSION))
        .join("maps")
        .join(map)
}

impl PinnedProgram {
    /// Opens a pinned TC program.
    pub fn open(path: &Path) -> Result<Self, DataplaneError> {
        let prog = SchedClassifier::from_pin(path).map_err(|source| DataplaneError::Program {
            name: "pinned program",
            source,
        })?;
        Ok(Self {
            prog,
            path: path.to_path_buf(),
        })
    }

    /// The pin path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the program once on `frame`; returns its action (`TC_ACT_*`). The output packet
    /// is not copied back (load generation wants no extra work per run).
    pub fn run(&self, frame: &[u8]) -> Result<i32, DataplaneError> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..TestRunOptions::default()
        };
        let r = self
            .prog
            .test_run(opts)
            .map_err(|source| DataplaneError::Program {
                name: "pinned program",
                source,
            })?;
        Ok(r.return_value as i32)
    }
}

/// The counters of a running daemon's probes, read from its pinned stats map (e.g.
/// [`pinned_map_path`]`(pin_dir, abi::MAP_STATS)`; the layout is the same in every ABI so far).
pub fn pinned_stats(path: &Path) -> Result<DataplaneStats, DataplaneError> {
    let data = MapData::from_pin(path).map_err(|source| DataplaneError::Map {
        name: abi::MAP_STATS,
        source,
    })?;
    let stats: aya::maps::PerCpuArray<MapData, abi::Stats> =
        aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
            .map_err(map_err(abi::MAP_STATS))?;
    let per_cpu = stats.get(&0, 0).map_err(map_err(abi::MAP_STATS))?;
    let mut sum = vec![0u64; abi::STATS_LEN];
    for cpu in per_cpu.iter() {
        for (s, c) in sum.iter_mut().zip(cpu.counters.iter()) {
            *s = s.wrapping_add(*c);
        }
    }
    Ok(DataplaneStats::from_raw(sum))
}

/// Whether this process may load BPF programs (tests skip with a message when not).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Layer 4 of a crafted packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp { seq: u32, flags: u8 },
    Udp,
}

/// TCP flag bits (the ABI's, shared with the probes).
pub use tollgate_common::tcp_flags;

/// A packet to craft: Ethernet (optionally 802.1Q-tagged), IPv4 or IPv6 (by the address
/// family of `src`), TCP or UDP, payload. Checksums are left zero: TC programs do not check them.
#[derive(Clone, Debug)]
pub struct PacketSpec {
    pub src: std::net::IpAddr,
    pub dst: std::net::IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub l4: L4,
    pub vlan: Option<u16>,
    pub payload: Vec<u8>,
}

impl PacketSpec {
    /// A TCP segment, untagged.
    pub fn tcp(
        src: std::net::IpAddr,
        dst: std::net::IpAddr,
        sport: u16,
        dport: u16,
        seq: u32,
        flags: u8,
        payload: &[u8],
    ) -> Self {
        PacketSpec {
            src,
            dst,
            sport,
            dport,
            l4: L4::Tcp { seq, flags },
            vlan: None,
            payload: payload.to_vec(),
        }
    }

    /// A UDP datagram, untagged.
    pub fn udp(
        src: std::net::IpAddr,
        dst: std::net::IpAddr,
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Self {
        PacketSpec {
            src,
            dst,
            sport,
            dport,
            l4: L4::Udp,
            vlan: None,
            payload: payload.to_vec(),
        }
    }

    /// The Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        use std::net::IpAddr;
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        let proto = match self.l4 {
            L4::Tcp { seq, flags } => {
                l4.extend_from_slice(&seq.to_be_bytes());
                l4.extend_from_slice(&1u32.to_be_bytes()); // ack
                l4.push(5 << 4); // data offset 20
                l4.push(flags);
                l4.extend_from_slice(&64240u16.to_be_bytes()); // window
                l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
                abi::PROTO_TCP
            }
            L4::Udp => {
                let len = u16::try_from(8 + self.payload.len()).unwrap_or(u16::MAX);
                l4.extend_from_slice(&len.to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                abi::PROTO_UDP
            }
        };
        l4.extend_from_slice(&self.payload);
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        let ethertype: u16 = match self.src {
            IpAddr::V4(_) => 0x0800,
            IpAddr::V6(_) => 0x86dd,
        };
        if let Some(vid) = self.vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let tot = u16::try_from(20 + l4.len()).unwrap_or(u16::MAX);
                f.extend_from_slice(&[0x45, 0]);
                f.extend_from_slice(&tot.to_be_bytes());
                f.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let plen = u16::try_from(l4.len()).unwrap_or(u16::MAX);
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&plen.to_be_bytes());
                f.extend_from_slice(&[proto, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => {}
        }
        f.extend_from_slice(&l4);
        f
    }
}

/// Decodes a hex fixture (whitespace ignored); `None` on a bad digit.
pub fn hex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|c| {
            let s = std::str::from_utf8(c).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}
