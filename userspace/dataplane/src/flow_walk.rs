//! Walking the kernel's flow map: entry by entry (two bpf syscalls a flow), or in steps with
//! `BPF_MAP_LOOKUP_BATCH` (one syscall a batch), which aya does not offer, through the raw
//! syscall.

use std::{io, os::fd::AsRawFd as _};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
};
use tollgate_common::{self as abi, FlowKey, FlowValue};

use crate::{
    error::{DataplaneError, map_err, map_ref},
    event::{self, FlowCounters, KernelClock},
};

/// Every flow's counters, collected.
pub(crate) fn read_flows(ebpf: &Ebpf) -> Result<Vec<FlowCounters>, DataplaneError> {
    let mut out = Vec::new();
    visit_flows(ebpf, |c| out.push(c.clone()))?;
    Ok(out)
}

/// Every flow's counters, entry by entry (two bpf syscalls each).
pub(crate) fn visit_flows(
    ebpf: &Ebpf,
    f: impl FnMut(&FlowCounters),
) -> Result<usize, DataplaneError> {
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

/// See [`crate::Dataplane::walk_flow_counters`].
pub(crate) fn walk_flows(
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

/// [`crate::Dataplane::walk_flow_counters`] over a flow map opened by other means (a tool that
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
        return Err(DataplaneError::NotHashMap(abi::MAP_FLOWS));
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
                return Err(DataplaneError::FlowWalk(e));
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

/// A walk of the kernel's flow map in steps ([`crate::Dataplane::walk_flow_counters`]): the batch
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        error::map_mut,
        event::{FlowTuple, L4Proto, flow_key},
        loader::PROBES,
        testing,
    };
    use aya::EbpfLoader;
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
                let key = flow_key(
                    &FlowTuple::new(
                        L4Proto::Tcp,
                        (user, 1024 + (i % 1000) as u16),
                        (remote, 443),
                    ),
                    0,
                )
                .unwrap();
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
