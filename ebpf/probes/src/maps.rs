//! Every map of the probes (names are the ABI's `MAP_*` constants; the loader pins them under
//! its pin dir), the per-CPU job and scratch accessors, and LPM trie keys.

use aya_ebpf::{
    macros::map,
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf, SockMap,
        lpm_trie::Key as LpmKey,
    },
};
use tollgate_common::{
    BLOCK_PREFIX_CAPACITY, Config, EVENTS_RING_BYTES, EventBuf, FLOW_VERDICTS_CAPACITY,
    FLOWS_CAPACITY, FlowKey, FlowValue, FlowVerdict, HELLO_CAPACITY, HelloState, IFACES_CAPACITY,
    IfaceInfo, IpVerdict, NAME_VERDICTS_CAPACITY, NameKey, NameVerdict, STEER_CLIENT_CAPACITY,
    STEER_PREFIX_CAPACITY, STEER_SOCK_SLOTS, Stats, SteerClientKey, SteerEntry, TAIL_CALLS,
};

use crate::pipeline::Job;

#[map]
pub(crate) static TG_FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(FLOWS_CAPACITY, 0);
#[map]
pub(crate) static TG_HELLO: LruHashMap<FlowKey, HelloState> =
    LruHashMap::with_max_entries(HELLO_CAPACITY, 0);
#[map]
pub(crate) static TG_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
#[map]
pub(crate) static TG_FLOW_VERDICT: LruHashMap<FlowKey, FlowVerdict> =
    LruHashMap::with_max_entries(FLOW_VERDICTS_CAPACITY, 0);
#[map]
pub(crate) static TG_NAME_VERDICT: HashMap<NameKey, NameVerdict> =
    HashMap::with_max_entries(NAME_VERDICTS_CAPACITY, 0);
#[map]
pub(crate) static TG_BLOCK_V4: LpmTrie<[u8; 4], IpVerdict> =
    LpmTrie::with_max_entries(BLOCK_PREFIX_CAPACITY, 0);
#[map]
pub(crate) static TG_BLOCK_V6: LpmTrie<[u8; 16], IpVerdict> =
    LpmTrie::with_max_entries(BLOCK_PREFIX_CAPACITY, 0);
#[map]
pub(crate) static TG_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
pub(crate) static TG_STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub(crate) static TG_SCRATCH: PerCpuArray<EventBuf> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub(crate) static TG_HSCRATCH: PerCpuArray<HelloState> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub(crate) static TG_FSCRATCH: PerCpuArray<FlowValue> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub(crate) static TG_JOB: PerCpuArray<Job> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub(crate) static TG_PROGS: ProgramArray =
    ProgramArray::with_max_entries(TAIL_CALLS.len() as u32, 0);
#[map]
pub(crate) static TG_IFACES: HashMap<u32, IfaceInfo> =
    HashMap::with_max_entries(IFACES_CAPACITY, 0);
#[map]
pub(crate) static TG_STEER_V4: LpmTrie<[u8; 4], SteerEntry> =
    LpmTrie::with_max_entries(STEER_PREFIX_CAPACITY, 0);
#[map]
pub(crate) static TG_STEER_V6: LpmTrie<[u8; 16], SteerEntry> =
    LpmTrie::with_max_entries(STEER_PREFIX_CAPACITY, 0);
#[map]
pub(crate) static TG_PROXY_SOCK: SockMap = SockMap::with_max_entries(STEER_SOCK_SLOTS, 0);
#[map]
pub(crate) static TG_STEER_CLI: LruHashMap<SteerClientKey, SteerEntry> =
    LruHashMap::with_max_entries(STEER_CLIENT_CAPACITY, 0);

#[inline(always)]
pub(crate) fn job() -> Option<&'static mut Job> {
    // SAFETY: this CPU's scratch value; the pipeline runs on one CPU, one packet at a time.
    TG_JOB.get_ptr_mut(0).map(|j| unsafe { &mut *j })
}

/// This CPU's job and scratch buffer (the stages of one packet's pipeline share them).
#[inline(always)]
pub(crate) fn job_and_scratch() -> Option<(&'static mut Job, &'static mut HelloState)> {
    let job = job()?;
    let h = TG_HSCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch value; the pipeline runs on one CPU, one packet at a time.
    Some((job, unsafe { &mut *h }))
}

/// The key that looks an IPv4 address (a `FlowKey` word, network order) up in an LPM trie.
#[inline(always)]
pub(crate) fn lpm_key_v4(addr: u32) -> LpmKey<[u8; 4]> {
    LpmKey::new(32, addr.to_ne_bytes())
}

/// The key that looks an IPv6 address (`FlowKey` words, network order) up in an LPM trie: its
/// 16 bytes in wire order.
#[inline(always)]
pub(crate) fn lpm_key_v6(addr: &[u32; 4]) -> LpmKey<[u8; 16]> {
    let b = [
        addr[0].to_ne_bytes(),
        addr[1].to_ne_bytes(),
        addr[2].to_ne_bytes(),
        addr[3].to_ne_bytes(),
    ];
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        a[i] = b[i / 4][i % 4];
        i += 1;
    }
    LpmKey::new(128, a)
}
