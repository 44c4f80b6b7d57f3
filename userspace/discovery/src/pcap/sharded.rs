//! A large capture imported on several cores, with the result of a single-threaded import.
//!
//! # How the work is split
//!
//! The file is read a [`PART`] at a time. Each part is walked once, by whichever worker
//! gets there first ([`Coordinator::part`]): its records are parsed, each packet's flow is
//! read ([`peek_flow`] from fixed header offsets, or by decoding the frames it cannot
//! read), and the packet's shard is chosen by a hash of its canonical (direction-free)
//! 5-tuple, so both directions of a flow meet in one table. The part's index (frame place,
//! time, shard; about 32 bytes a packet) is shared. Every worker then goes through every
//! part's index in file order: it decodes its own packets into its own [`FlowTable`] and
//! passes the others' times to it. At the end the shards' records are put together.
//!
//! A part's walk needs the previous part's walk (records are not self-synchronising: the
//! next starts where the last one ended), so walks follow one another, each by one worker,
//! one part ahead of the readers where it can. The flow tables' work (lookups, reassembly,
//! TLS, QUIC, DNS and HTTP parsing, counters) is split.
//!
//! Designs tried before this one:
//! - one reader thread sending packets to the workers, with a mirror of the whole flow set
//!   in the reader: the reader did most of the work alone, and two cores imported no
//!   faster than one;
//! - every worker mapping the file and walking, peeking and hashing every record itself:
//!   1.28-1.31x on two cores (857 MB capture), against 1.46-1.52x with the shared walk
//!   (`examples/pcap_threads`). Parts are read, not mapped (see [`read_part`]).

//! # State that crosses flows, and how the result stays exact
//!
//! - **The clock and idle sweeps.** A table sweeps idle flows out every 8192 (`SWEEP_EVERY`)
//!   packets at the latest packet time so far, whatever its size. Each worker counts every
//!   packet of the capture and moves its table's clock with each
//!   (`FlowTable::pass` for the other workers' packets), so every shard sweeps at the same
//!   packets and the same times as the single table, and finishes the same flows.
//! - **The flow cap.** Each shard may hold an N-th of `max_flows`. If no shard was ever
//!   full, the single table (whose live flows are at most the sum of the shards') never was
//!   either, and the result is the same; if one was, the capture is imported again on one
//!   thread.
//! - **DNS.** Answers teach an address-to-name cache that names other flows (in any shard)
//!   at the moment their record is made (at a sweep or at the end), and HTTPS/SVCB answers
//!   teach ECH hints read by TLS and QUIC flows. So every shard's table reads every packet of
//!   a flow with port 53 on either end (where the table parses DNS): each shard's DNS cache,
//!   ECH hints and pending queries go through the same steps as the single table's, and a
//!   flow's cached name is the one the single table would give. The DNS flows themselves are
//!   reported by their own shard only. The cost: DNS packets are handled N times, and the
//!   DNS cache (at most `max_dns_cache` entries) is held N times.
//! - **The reassembly budget** (`max_buffered_bytes`, across flows). Each shard gets an N-th
//!   of it, so the total holds. If no shard ran out, the single table never did either; if
//!   one did, the capture is imported again on one thread.
//! - **The finished list** (`max_finished`). Past it, a single table keeps the flows its
//!   sweeps finished first, in an order no other import reproduces: when the shards
//!   together finished more than that, the capture is imported again on one thread.
//! - **The statistics** ([`PcapStats`]) are counted by the walk of each part, and summed.
//! - Interned names (`Names`) and the live daemon's QUIC rechecks change no record.
//!
//! The table-wide statistics ([`crate::flow_table::FlowTableStats`]) are not put together:
//! this import gives records only (which is what `tollgate discover` reads), and the records
//! of live flows carry no [`crate::flow_table::FlowMeta`].
//!
//! # Memory
//!
//! At most [`MAX_AHEAD`] parts that not every worker has read, and one per worker being
//! read, each a [`PART`] of the file (more only for a record larger than that, up to
//! [`super::MAX_RECORD`]) and its index; and each worker's share of the flows (with every
//! DNS flow). A part's bytes are used again for a later part.
//!
//! A worker (or walk) that panics or cannot read makes the others stop at their next part,
//! and the import returns [`PcapError::Worker`] or [`PcapError::Read`].

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use pcap_file::PcapError as Parse;
use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::PcapNgParser;

use chrono::{DateTime, Utc};

use super::{
    MAX_RECORD, NgState, PcapError, PcapStats, Sink, decode_frame, feed_pcap, import_reader,
    open_capture,
};
use crate::flow_table::{FlowTable, FlowTableLimits, flow_shard};
use crate::packet::{Decoded, FlowKey, LinkType, PacketView, decode, peek_flow};
use crate::record::FlowRecord;

/// Captures at least this large are imported on several threads (when more than one is
/// asked for); smaller ones are not worth the threads.
pub const PARALLEL_MIN_BYTES: u64 = 64 << 20;

/// Workers at most, whatever the thread count asked for.
const MAX_SHARDS: usize = 64;

/// Import a capture with `threads` worker threads (0: one per core, at most 64; the calling
/// thread waits for them), calling `each` with every flow record. A capture smaller than [`PARALLEL_MIN_BYTES`], or one thread, takes the
/// single-threaded path ([`super::import_pcap`] into one [`FlowTable`]). The records (in no
/// particular order) and the stats are those of the single-threaded import; see the
/// module documentation.
pub fn import_pcap_threads(
    path: &Path,
    limits: &FlowTableLimits,
    threads: usize,
    each: &mut dyn FnMut(FlowRecord),
) -> Result<PcapStats, PcapError> {
    import_pcap_threads_from(path, limits, threads, PARALLEL_MIN_BYTES, each)
}

/// [`import_pcap_threads`] with files from `min_bytes` up imported on several threads.
pub fn import_pcap_threads_from(
    path: &Path,
    limits: &FlowTableLimits,
    threads: usize,
    min_bytes: u64,
    each: &mut dyn FnMut(FlowRecord),
) -> Result<PcapStats, PcapError> {
    import_with(path, limits, threads, min_bytes, &Knobs::default(), each)
}

/// Test settings of a sharded import.
#[derive(Debug, Clone, Copy)]
struct Knobs {
    /// Bytes of the file in a part.
    part: usize,
    /// This worker panics as it starts.
    fail_worker: Option<usize>,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            part: PART,
            fail_worker: None,
        }
    }
}

fn import_with(
    path: &Path,
    limits: &FlowTableLimits,
    threads: usize,
    min_bytes: u64,
    knobs: &Knobs,
    each: &mut dyn FnMut(FlowRecord),
) -> Result<PcapStats, PcapError> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
    .min(MAX_SHARDS);
    let mut c = open_capture(path)?;
    if threads >= 2 && c.size >= min_bytes {
        match sharded(path, limits, threads, c, knobs)? {
            Some(done) => {
                for (i, table) in done.tables.iter().enumerate() {
                    for r in table.records() {
                        // A DNS flow is in every shard: its own shard reports it.
                        let (hash, dns) =
                            flow_shard(&done.hash, r.proto, (r.src, r.sport), (r.dst, r.dport));
                        if !dns || shard_of(hash, threads) == i {
                            each(r);
                        }
                    }
                }
                return Ok(done.stats);
            }
            None => c = open_capture(path)?,
        }
    }
    let mut table = FlowTable::new(limits.clone());
    let stats = import_reader(path, c.reader, c.pcapng, &mut table)?;
    table.records().for_each(each);
    Ok(stats)
}

fn shard_of(hash: u64, shards: usize) -> usize {
    usize::try_from(hash % shards.max(1) as u64).unwrap_or(0)
}

/// The record parser of a worker.
enum Records {
    Classic(PcapParser, LinkType),
    Ng(PcapNgParser, NgState),
}

/// Where [`Records::feed`] stopped.
enum Fed {
    /// Every record of the data.
    All,
    /// The data ends inside a record.
    Incomplete,
    /// A record did not parse.
    Bad,
}

impl Records {
    /// The parser after the file header at the start of `data`, and the header's length.
    fn new(pcapng: bool, data: &[u8]) -> Result<(Self, usize), Parse> {
        if pcapng {
            let (rest, p) = PcapNgParser::new(data)?;
            Ok((Records::Ng(p, NgState::default()), data.len() - rest.len()))
        } else {
            let (rest, p) = PcapParser::new(data)?;
            let link = LinkType::from_linktype(u32::from(p.header().datalink));
            Ok((Records::Classic(p, link), data.len() - rest.len()))
        }
    }

    /// The records of `data` into `sink`, up to [`MAX_RECORD`] bytes each (a larger one is
    /// [`Fed::Bad`], as the streaming import cannot hold it either); the bytes used.
    fn feed<S: Sink>(&mut self, data: &[u8], stats: &mut PcapStats, sink: &mut S) -> (usize, Fed) {
        let stop = |e| match e {
            Parse::IncompleteBuffer => Fed::Incomplete,
            _ => Fed::Bad,
        };
        let mut used = 0;
        while let Some(rest) = data.get(used..).filter(|r| !r.is_empty()) {
            let len = match self {
                Records::Classic(p, link) => match p.next_packet(rest) {
                    Ok((after, pkt)) if rest.len() - after.len() <= MAX_RECORD => {
                        feed_pcap(stats, sink, *link, &pkt);
                        rest.len() - after.len()
                    }
                    Ok(_) => return (used, Fed::Bad),
                    Err(e) => return (used, stop(e)),
                },
                Records::Ng(p, state) => match p.next_block(rest) {
                    Ok((after, block)) if rest.len() - after.len() <= MAX_RECORD => {
                        state.block(stats, sink, block);
                        rest.len() - after.len()
                    }
                    Ok(_) => return (used, Fed::Bad),
                    Err(e) => return (used, stop(e)),
                },
            };
            used += len;
        }
        (used, Fed::All)
    }
}

/// Reads `len` bytes of `file` (`size` bytes long) from `from` into `buf` (fewer where the
/// file ends), reusing its memory; whether the file ended sooner than `size` said (another
/// program cut it).
///
/// Read, not mapped: a map of the file would make a program that truncates it meanwhile
/// kill the import (SIGBUS), and with the walk done once the one copy a read makes cost no
/// more than the map's page faults (`examples/pcap_threads`, 857 MB capture). A file cut
/// meanwhile reads as a capture that ends there (truncated).
fn read_part(
    file: &std::fs::File,
    size: u64,
    from: u64,
    len: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let to = from.saturating_add(len as u64).min(size);
    let want = usize::try_from(to.saturating_sub(from))
        .map_err(|_| std::io::Error::other("part too large"))?;
    // Bytes already in the buffer are overwritten, not zeroed first.
    if buf.len() < want {
        buf.resize(want, 0);
    } else {
        buf.truncate(want);
    }
    let mut got = 0;
    while got < want {
        match file.read_at(&mut buf[got..], from + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(got < want)
}

/// Bytes of the file in one part (the records one worker walks for all), unless a record
/// is larger.
const PART: usize = 2 << 20;
/// Parts walked and not yet read by every worker, at most: the memory of a sharded import
/// is this many parts' bytes and their indexes (about 32 bytes a packet), plus a part per
/// worker.
const MAX_AHEAD: usize = 4;
/// A worker asks for the frame this many packets ahead of the one it reads.
const PREFETCH_PACKETS: usize = 12;

/// Asks the CPU for the first bytes of `data` (a hint: nothing waits for them).
#[inline(always)]
#[allow(unsafe_code, reason = "a prefetch hint")]
fn prefetch(data: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(b) = data.first() {
        // SAFETY: a prefetch reads nothing into the program and cannot fault; the address
        // is in `data`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                (b as *const u8).cast(),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// [`IndexEntry::owner`] of a packet every shard reads (a DNS flow's).
const EVERY_SHARD: u32 = u32::MAX;

/// One packet of a walked part: where its frame is, what it is, and whose.
struct IndexEntry {
    /// Offset of the frame in the part's bytes, or in its `copied` bytes.
    start: usize,
    len: u32,
    /// The shard that owns the packet's flow, or [`EVERY_SHARD`].
    owner: u32,
    ts: DateTime<Utc>,
    link: LinkType,
    /// The frame is in `copied` (a parser that handed back bytes it did not borrow).
    copied: bool,
}

/// The packets of a run of records, walked once: each worker reads its own packets' frames
/// from the part's bytes and passes the others' times to its table.
struct Part {
    bytes: Vec<u8>,
    copied: Vec<u8>,
    entries: Vec<IndexEntry>,
}

impl Part {
    fn frame(&self, e: &IndexEntry) -> &[u8] {
        let bytes: &[u8] = if e.copied { &self.copied } else { &self.bytes };
        bytes
            .get(e.start..e.start.saturating_add(e.len as usize))
            .unwrap_or(&[])
    }
}

/// The walker's end of the records: each packet's flow read (by [`peek_flow`], or by
/// decoding the frames it cannot read), its shard chosen, its frame's place kept.
struct IndexSink<'a> {
    /// The address and length of the part's bytes.
    bytes: (usize, usize),
    entries: &'a mut Vec<IndexEntry>,
    copied: &'a mut Vec<u8>,
    hash: &'a ahash::RandomState,
    shards: usize,
    /// The frame being decoded by [`decode_frame`], until its packet arrives.
    pending: Option<(usize, u32, bool, LinkType, DateTime<Utc>)>,
}

impl IndexSink<'_> {
    fn owner(&self, (proto, sender, receiver): FlowKey) -> u32 {
        let (hash, dns) = flow_shard(self.hash, proto, sender, receiver);
        if dns {
            EVERY_SHARD
        } else {
            u32::try_from(shard_of(hash, self.shards)).unwrap_or(0)
        }
    }

    /// Where `data` is: in the part's bytes (the parsers borrow from them), else copied aside.
    fn locate(&mut self, data: &[u8]) -> (usize, u32, bool) {
        let addr = data.as_ptr() as usize;
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let (base, bytes_len) = self.bytes;
        if addr >= base && addr.saturating_add(data.len()) <= base.saturating_add(bytes_len) {
            (addr - base, len, false)
        } else {
            let start = self.copied.len();
            self.copied.extend_from_slice(data);
            (start, len, true)
        }
    }

    fn push(
        &mut self,
        (start, len, copied): (usize, u32, bool),
        link: LinkType,
        ts: DateTime<Utc>,
        owner: u32,
    ) {
        self.entries.push(IndexEntry {
            start,
            len,
            owner,
            ts,
            link,
            copied,
        });
    }
}

impl Sink for IndexSink<'_> {
    fn packet(&mut self, p: &PacketView<'_>) {
        let owner = self.owner((p.proto, (p.src, p.sport), (p.dst, p.dport)));
        if let Some((start, len, copied, link, ts)) = self.pending.take() {
            self.push((start, len, copied), link, ts, owner);
        }
    }

    /// A plain frame's flow is read without decoding it ([`peek_flow`]); the rest are
    /// decoded here, and again by their owner.
    fn frame(&mut self, stats: &mut PcapStats, link: LinkType, data: &[u8], ts: DateTime<Utc>) {
        let Some(key) = peek_flow(link, data) else {
            let (start, len, copied) = self.locate(data);
            self.pending = Some((start, len, copied, link, ts));
            decode_frame(stats, self, link, data, ts);
            self.pending = None;
            return;
        };
        stats.frames += 1;
        stats.captured_bytes += data.len() as u64;
        stats.packets += 1;
        let owner = self.owner(key);
        let place = self.locate(data);
        self.push(place, link, ts, owner);
    }
}

/// Where the walk of the records is between parts: handed from the worker that walked a
/// part to the one that walks the next.
struct Walk {
    records: Records,
    /// The file offset of the next record.
    pos: u64,
    /// Bytes to read for the next part (more than a part while one record is larger).
    need: usize,
}

/// What a walk of one part gave: the part (none at the end of the file), its frames'
/// statistics, and whether the walk is over (the file ended, or a record did not parse).
type Walked = (Option<Part>, PcapStats, bool);

/// The records from `walk.pos` that fit in a part, indexed.
fn walk_part(
    file: &std::fs::File,
    size: u64,
    walk: &mut Walk,
    part_len: usize,
    hash: &ahash::RandomState,
    shards: usize,
    mut bytes: Vec<u8>,
) -> std::io::Result<Walked> {
    let mut stats = PcapStats::default();
    loop {
        if walk.pos >= size {
            return Ok((None, stats, true));
        }
        let cut = read_part(file, size, walk.pos, walk.need, &mut bytes)?;
        let mut entries = Vec::new();
        let mut copied = Vec::new();
        let data_len = bytes.len();
        let whole_rest = cut || walk.pos + data_len as u64 >= size;
        let mut sink = IndexSink {
            bytes: (bytes.as_ptr() as usize, bytes.len()),
            entries: &mut entries,
            copied: &mut copied,
            hash,
            shards,
            pending: None,
        };
        let (used, fed) = walk.records.feed(&bytes, &mut stats, &mut sink);
        walk.pos += used as u64;
        let end = match fed {
            Fed::All => {
                walk.need = part_len;
                walk.pos >= size || cut
            }
            Fed::Incomplete if whole_rest => {
                stats.truncated = true;
                true
            }
            // A record past the part's end: the next part starts with it.
            Fed::Incomplete if used > 0 => {
                walk.need = part_len;
                false
            }
            // One record larger than the streaming import can hold.
            Fed::Incomplete if data_len > MAX_RECORD => {
                stats.truncated = true;
                true
            }
            // One record larger than a part: again, with more bytes.
            Fed::Incomplete => {
                walk.need = walk.need.saturating_mul(2).min(MAX_RECORD + 1);
                continue;
            }
            Fed::Bad => {
                stats.truncated = true;
                true
            }
        };
        let part = Part {
            bytes,
            copied,
            entries,
        };
        return Ok((Some(part), stats, end));
    }
}

/// What the workers share: the walk, the parts walked and not yet read by all, the sum of
/// the parts' statistics.
struct Shared {
    /// `None` while a worker walks a part.
    walk: Option<Walk>,
    /// `parts[i]` is part `first + i`.
    parts: std::collections::VecDeque<Arc<Part>>,
    first: usize,
    /// Parts walked so far.
    walked: usize,
    /// No part comes after the last walked.
    done: bool,
    stats: PcapStats,
    /// Per worker: the parts it has read.
    read: Vec<usize>,
    /// The import stops: a worker failed, or a shard cannot give the single table's result.
    stop: bool,
    error: Option<std::io::Error>,
    /// The bytes of parts every worker has read, for the next parts (fresh memory would be
    /// faulted in page by page each time).
    spare: Vec<Vec<u8>>,
}

/// The workers' meeting point: [`Shared`] and the signal that it changed.
struct Coordinator {
    state: Mutex<Shared>,
    changed: Condvar,
    file: std::fs::File,
    size: u64,
    part_len: usize,
    hash: ahash::RandomState,
    shards: usize,
}

impl Coordinator {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every worker stops at its next part, and none waits for one.
    fn stop(&self) {
        self.lock().stop = true;
        self.changed.notify_all();
    }

    /// Part `k` for worker `me`, walked first if nobody has (and the part after it, so that
    /// the next is ready when the workers get there); `None` at the end or when the import
    /// stops.
    fn part(&self, k: usize) -> Option<Arc<Part>> {
        let mut g = self.lock();
        loop {
            if g.stop {
                return None;
            }
            let oldest = g.read.iter().copied().min().unwrap_or(0);
            if !g.done
                && g.walked <= k + 1
                && g.walked - oldest < MAX_AHEAD
                && let Some(mut walk) = g.walk.take()
            {
                let bytes = g.spare.pop().unwrap_or_default();
                drop(g);
                // A walker that panics stops the import, or the others would wait.
                let guard = StopOnDrop(self);
                let walked = walk_part(
                    &self.file,
                    self.size,
                    &mut walk,
                    self.part_len,
                    &self.hash,
                    self.shards,
                    bytes,
                );
                std::mem::forget(guard);
                g = self.lock();
                g.walk = Some(walk);
                match walked {
                    Ok((part, stats, end)) => {
                        add_stats(&mut g.stats, &stats);
                        if let Some(part) = part {
                            g.parts.push_back(Arc::new(part));
                            g.walked += 1;
                        }
                        g.done |= end;
                    }
                    Err(e) => {
                        g.error = Some(e);
                        g.stop = true;
                    }
                }
                self.changed.notify_all();
                continue;
            }
            if k < g.walked {
                return k.checked_sub(g.first).and_then(|i| g.parts.get(i)).cloned();
            }
            if g.done {
                return None;
            }
            g = self.changed.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Worker `me` has read the parts before `k`: those every worker has read are dropped.
    fn read_up_to(&self, me: usize, k: usize) {
        let mut g = self.lock();
        if let Some(r) = g.read.get_mut(me) {
            *r = k;
        }
        let oldest = g.read.iter().copied().min().unwrap_or(0);
        while g.first < oldest {
            let Some(part) = g.parts.pop_front() else {
                break;
            };
            g.first += 1;
            // The last reference unless a worker still holds it (then it is simply freed).
            if let Ok(part) = Arc::try_unwrap(part) {
                g.spare.push(part.bytes);
            }
        }
        self.changed.notify_all();
    }
}

/// Stops the import when dropped: held across work that may panic, forgotten after it.
struct StopOnDrop<'a>(&'a Coordinator);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

fn add_stats(sum: &mut PcapStats, part: &PcapStats) {
    sum.frames += part.frames;
    sum.packets += part.packets;
    sum.fragments += part.fragments;
    sum.other += part.other;
    sum.malformed += part.malformed;
    sum.captured_bytes += part.captured_bytes;
    sum.truncated |= part.truncated;
}

/// A worker: every part in file order; its own packets (and every DNS packet) into its
/// table, the others' times to its clock.
fn work(co: &Coordinator, me: usize, mut table: FlowTable, max_finished: usize) -> FlowTable {
    let me_owner = u32::try_from(me).unwrap_or(EVERY_SHARD);
    let mut k = 0;
    while let Some(part) = co.part(k) {
        for (i, e) in part.entries.iter().enumerate() {
            if let Some(ahead) = part.entries.get(i + PREFETCH_PACKETS)
                && (ahead.owner == me_owner || ahead.owner == EVERY_SHARD)
            {
                prefetch(part.frame(ahead));
            }
            if e.owner == me_owner || e.owner == EVERY_SHARD {
                match decode(e.link, part.frame(e), e.ts) {
                    Decoded::Packet(p) => table.observe_packet(&p),
                    // The walker found a packet in this frame.
                    _ => debug_assert!(false, "a frame decoded twice differs"),
                }
            } else {
                table.pass(e.ts);
            }
        }
        drop(part);
        k += 1;
        co.read_up_to(me, k);
        let exact = !table.was_full() && table.buffer_budget_drops() == 0;
        if !exact || table.finished_len() > max_finished {
            co.stop();
        }
    }
    table
}

/// A sharded import's result: the stats, each shard's table, the hash that chose them.
struct Sharded {
    stats: PcapStats,
    tables: Vec<FlowTable>,
    hash: ahash::RandomState,
}

/// The sharded import; `None` when the shards cannot give the single table's result (a
/// cap was reached, see the module documentation) or the file cannot be read in parts (not a
/// regular file): the caller imports on one thread.
fn sharded(
    path: &Path,
    limits: &FlowTableLimits,
    threads: usize,
    c: super::Capture,
    knobs: &Knobs,
) -> Result<Option<Sharded>, PcapError> {
    let fmt_err = PcapError::format(path);
    let read_err = PcapError::read(path);
    let worker_err = |reason: String| PcapError::Worker {
        path: path.to_path_buf(),
        reason,
    };
    let pcapng = c.pcapng;
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(None);
    };
    let size = match file.metadata() {
        Ok(m) if m.is_file() => m.len(),
        _ => return Ok(None),
    };
    // The file header (pcap: 24 bytes; pcapng: the whole section header block), read as
    // the streaming import reads it, with its errors.
    let mut need = 24;
    let mut data = Vec::new();
    let (records, header) = loop {
        let cut = read_part(&file, size, 0, need, &mut data).map_err(read_err)?;
        match Records::new(pcapng, &data) {
            Ok(r) => break r,
            Err(Parse::IncompleteBuffer) if cut || data.len() as u64 == size => {
                return Err(fmt_err(Parse::IncompleteBuffer));
            }
            Err(Parse::IncompleteBuffer) => need = need.saturating_mul(2),
            Err(e) => return Err(fmt_err(e)),
        }
    };
    let shard_limits = FlowTableLimits {
        max_flows: limits.max_flows / threads,
        max_buffered_bytes: limits.max_buffered_bytes / threads,
        ..limits.clone()
    };
    let part_len = knobs.part.max(1);
    let co = Coordinator {
        state: Mutex::new(Shared {
            walk: Some(Walk {
                records,
                pos: header as u64,
                need: part_len,
            }),
            parts: std::collections::VecDeque::new(),
            first: 0,
            walked: 0,
            done: false,
            stats: PcapStats::default(),
            read: vec![0; threads],
            stop: false,
            error: None,
            spare: Vec::new(),
        }),
        changed: Condvar::new(),
        file,
        size,
        part_len,
        hash: ahash::RandomState::new(),
        shards: threads,
    };
    let joined = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|me| {
                let table = FlowTable::new(shard_limits.clone());
                let max_finished = limits.max_finished;
                let co = &co;
                let fail = knobs.fail_worker == Some(me);
                let spawned = std::thread::Builder::new()
                    .name(format!("pcap-shard-{me}"))
                    .spawn_scoped(s, move || {
                        // A worker that dies stops the others (which would wait for it).
                        let guard = StopOnDrop(co);
                        if fail {
                            // Tests: a worker that dies.
                            panic!("worker {me} failed (test)");
                        }
                        let table = work(co, me, table, max_finished);
                        std::mem::forget(guard);
                        table
                    });
                if spawned.is_err() {
                    // At once, not when the handles are joined: the workers already running
                    // would wait (MAX_AHEAD) for this one to read its parts, and the join of
                    // the first of them would never return.
                    co.stop();
                }
                spawned
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().map_err(|e| {
                    co.stop();
                    e.downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| e.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a worker thread panicked".to_owned())
                }),
                Err(e) => {
                    co.stop();
                    Err(format!("cannot start a worker thread: {e}"))
                }
            })
            .collect::<Vec<_>>()
    });
    let mut tables = Vec::with_capacity(threads);
    for j in joined {
        match j {
            Ok(table) => tables.push(table),
            Err(reason) => return Err(worker_err(reason)),
        }
    }
    let shared = co
        .state
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(e) = shared.error {
        return Err(read_err(e));
    }
    // Past the finished list's cap a single table keeps the flows its hash order finished
    // first, which no other import can reproduce. (DNS flows are counted once per shard
    // here: this may send back to one thread a capture that did not need it, never the
    // other way.)
    let finished: usize = tables.iter().map(FlowTable::finished_len).sum();
    if finished > limits.max_finished
        || tables
            .iter()
            .any(|t| t.was_full() || t.buffer_budget_drops() > 0)
    {
        return Ok(None);
    }
    let mut stats = shared.stats;
    stats.format = if pcapng { "pcapng" } else { "pcap" };
    Ok(Some(Sharded {
        stats,
        tables,
        hash: co.hash,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/pcap/chromium_mtu1400.pcap")
    }

    fn records(path: &Path, threads: usize, knobs: &Knobs) -> (PcapStats, Vec<String>) {
        let mut v = Vec::new();
        let limits = FlowTableLimits::default();
        let s = import_with(path, &limits, threads, 0, knobs, &mut |r| {
            v.push(format!("{r:?}"))
        })
        .unwrap_or_else(|e| panic!("{e}"));
        v.sort();
        (s, v)
    }

    /// Caps the shards cannot share exactly send the capture back to one thread; without
    /// them the sharded result stands.
    #[test]
    fn a_spent_budget_or_finished_list_means_one_thread() {
        let shards = |limits: FlowTableLimits| {
            let c = open_capture(&capture()).expect("open");
            sharded(&capture(), &limits, 2, c, &Knobs::default())
                .expect("import")
                .is_some()
        };
        assert!(shards(FlowTableLimits::default()));
        assert!(shards(FlowTableLimits {
            idle_timeout: std::time::Duration::from_secs(2),
            ..FlowTableLimits::default()
        }));
        assert!(!shards(FlowTableLimits {
            max_buffered_bytes: 3000,
            ..FlowTableLimits::default()
        }));
        assert!(!shards(FlowTableLimits {
            max_flows: 2,
            max_finished: 1,
            idle_timeout: std::time::Duration::from_millis(1),
            ..FlowTableLimits::default()
        }));
    }

    /// A worker that panics makes the import fail with an error naming the file, and the
    /// import returns (no hang), for any worker.
    #[test]
    fn a_failed_worker_is_an_error() {
        for i in 0..3 {
            let mut n = 0;
            let knobs = Knobs {
                part: 4096,
                fail_worker: Some(i),
            };
            let e = import_with(
                &capture(),
                &FlowTableLimits::default(),
                3,
                0,
                &knobs,
                &mut |_| n += 1,
            );
            let e = e.expect_err("worker failure");
            assert!(matches!(e, PcapError::Worker { .. }), "{e}");
            assert!(e.to_string().contains("chromium_mtu1400.pcap"), "{e}");
            assert_eq!(n, 0);
        }
    }

    /// A file cut by another program while it is read (shorter than its size said at the
    /// start) ends the walk where it ends, with the records before it; no part is walked
    /// forever.
    #[test]
    fn a_file_cut_while_read_ends_the_walk() {
        let path = capture();
        let file = std::fs::File::open(&path).expect("open");
        let real = file.metadata().expect("meta").len();
        let mut head = Vec::new();
        read_part(&file, real, 0, 24, &mut head).expect("header");
        let (parser, header) = Records::new(false, &head).expect("pcap header");
        let mut walk = Walk {
            records: parser,
            pos: header as u64,
            need: 4096,
        };
        let hash = ahash::RandomState::new();
        let mut frames = 0;
        let mut bytes = Vec::new();
        let mut parts = 0;
        loop {
            // The size the file had when the import began: larger than it is now.
            let (part, stats, end) =
                walk_part(&file, real + 100_000, &mut walk, 4096, &hash, 2, bytes).expect("walk");
            frames += stats.frames;
            parts += 1;
            assert!(parts < 10_000, "the walk does not end");
            bytes = part.map(|p| p.bytes).unwrap_or_default();
            if end {
                break;
            }
        }
        let (one, _) = records(&path, 1, &Knobs::default());
        assert_eq!(frames, one.frames);
        assert_eq!(walk.pos, real);
    }

    /// Spoilt captures (bytes changed anywhere: record lengths, link headers, payloads, in
    /// both formats) give the one-thread result on several threads, whatever the walk of a
    /// part meets: a record that does not parse, a length past the file, a frame the peek
    /// and the decoder must agree on.
    #[test]
    fn spoilt_captures_give_the_one_thread_result() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ng = tmp.path().join("chromium.pcapng");
        write_pcapng(&capture(), &ng);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            // xorshift64*: a fixed sequence, so that a failure is repeated by the next run.
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for original in [capture(), ng] {
            let bytes = std::fs::read(&original).expect("read");
            for round in 0..40 {
                let mut spoilt = bytes.clone();
                for _ in 0..1 + next() % 4 {
                    // Past the file header (a bad header is a format error on any path).
                    let at = 64 + (next() as usize) % (spoilt.len() - 64);
                    if let Some(b) = spoilt.get_mut(at) {
                        *b = next() as u8;
                    }
                }
                let f = tmp.path().join(format!("spoilt-{round}"));
                std::fs::write(&f, &spoilt).expect("write");
                let one = records(&f, 1, &Knobs::default());
                for (threads, part) in [(2, 333), (3, 4096)] {
                    let knobs = Knobs {
                        part,
                        fail_worker: None,
                    };
                    assert_eq!(
                        records(&f, threads, &knobs),
                        one,
                        "{} round {round}, {threads} threads, {part}-byte parts",
                        original.display()
                    );
                }
            }
        }
    }

    /// `from` (classic pcap) as pcapng: one interface with nanosecond timestamps.
    fn write_pcapng(from: &Path, to: &Path) {
        use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
        use pcap_file::pcapng::blocks::interface_description::{
            InterfaceDescriptionBlock, InterfaceDescriptionOption,
        };
        let mut r = pcap_file::pcap::PcapReader::new(std::fs::File::open(from).expect("open"))
            .expect("pcap");
        let linktype = r.header().datalink;
        let mut w =
            pcap_file::pcapng::PcapNgWriter::new(std::fs::File::create(to).expect("create"))
                .expect("pcapng");
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype,
            snaplen: 0,
            options: vec![InterfaceDescriptionOption::IfTsResol(9)],
        })
        .expect("idb");
        while let Some(Ok(p)) = r.next_packet() {
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: p.timestamp,
                original_len: p.orig_len,
                data: p.data,
                options: vec![],
            })
            .expect("epb");
        }
    }

    /// Part edges anywhere (inside record headers and records, in both formats, with
    /// records larger than a part) change nothing, and a file cut inside a record is
    /// imported up to it and said to be truncated, as on one thread.
    #[test]
    fn part_edges_and_a_cut_record_change_nothing() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/pcap");
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("testdata")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "pcap"))
            .collect();
        files.sort();
        let ng = tmp.path().join("chromium.pcapng");
        write_pcapng(&capture(), &ng);
        files.push(ng);
        for f in files.clone() {
            let bytes = std::fs::read(&f).expect("read");
            let cut = tmp.path().join(f.file_name().expect("name"));
            std::fs::write(&cut, bytes.get(..bytes.len() - 5).expect("short")).expect("write");
            files.push(cut);
        }
        for f in &files {
            let one = records(f, 1, &Knobs::default());
            for (threads, part) in [(2, 1), (2, 7), (3, 100), (2, 4096), (3, 4096), (2, PART)] {
                let knobs = Knobs {
                    part,
                    fail_worker: None,
                };
                assert_eq!(
                    records(f, threads, &knobs),
                    one,
                    "{} in {part}-byte parts on {threads} threads",
                    f.display()
                );
            }
        }
    }
}
