//! A large capture imported on several cores, with the result of a single-threaded import.
//!
//! # How the work is split
//!
//! Each of N workers maps the file a window at a time ([`Window`]) and reads every record,
//! and gives to its own [`FlowTable`] only the packets of its flows: a flow's shard is a hash
//! of its canonical (direction-free) 5-tuple, so both directions of a flow meet in one table.
//! A plain frame's flow is read from fixed header offsets ([`peek_flow`]); only the worker
//! that owns it decodes it. At the end the shards' records are put together.
//!
//! What every worker repeats is reading the records, the header peek and one hash per packet;
//! the flow tables' work (lookups, reassembly, TLS, QUIC, DNS and HTTP parsing, counters) is
//! split. Two designs before this one sent packets from one reader thread to the workers,
//! with a mirror of the whole flow set in the reader; the reader then did most of the work
//! alone, and two cores imported no faster than one.
//!
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
//! - **The statistics** ([`PcapStats`]) are counted by every worker, which all read every
//!   record; they are the first worker's.
//! - Interned names (`Names`) and the live daemon's QUIC rechecks change no record.
//!
//! The table-wide statistics ([`crate::flow_table::FlowTableStats`]) are not put together:
//! this import gives records only (which is what `tollgate discover` reads), and the records
//! of live flows carry no [`crate::flow_table::FlowMeta`].
//!
//! # Memory
//!
//! A [`WINDOW`] of the file mapped per worker (more only for a record larger than that, up
//! to [`super::MAX_RECORD`]), and each worker's share of the flows (with every DNS flow).
//!
//! A worker that panics or cannot read makes the others stop at their next window, and the
//! import returns [`PcapError::Worker`] or [`PcapError::Read`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// Bytes mapped at a time.
    window: usize,
    /// This worker panics as it starts.
    fail_worker: Option<usize>,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            window: WINDOW,
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

/// A capture file read through a map of a window of it at a time, so that the memory it
/// takes stays a window's whatever the file's size.
///
/// The map is of a file another program could change: one that truncates the file while it
/// is read makes the next read of a page past the new end fail with SIGBUS (as for any
/// program that maps files, ripgrep for one). `tollgate discover` documents it; the
/// streaming import, which has no such limit, is the one taken for small files and one
/// thread.
struct Window {
    file: std::fs::File,
    size: u64,
    map: Option<memmap2::Mmap>,
    /// The file offset of the map's first byte (a page boundary).
    base: u64,
}

impl Window {
    /// The file's `len` bytes from `from` (fewer where the file ends).
    #[allow(unsafe_code, reason = "mapping a file; see the type's documentation")]
    fn at(&mut self, from: u64, len: usize) -> std::io::Result<&[u8]> {
        let to = from.saturating_add(len as u64).min(self.size);
        let covered = self
            .map
            .as_ref()
            .is_some_and(|m| self.base <= from && self.base + m.len() as u64 >= to);
        if !covered {
            self.map = None;
            let page = PAGE as u64;
            self.base = from / page * page;
            let len = usize::try_from(to - self.base)
                .map_err(|_| std::io::Error::other("window too large"))?;
            // SAFETY: the map is read only, and only while the file keeps its size; see
            // the type's documentation for what a truncation by another program does.
            let map = unsafe {
                memmap2::MmapOptions::new()
                    .offset(self.base)
                    .len(len)
                    .map(&self.file)?
            };
            // Read once, front to back: the kernel reads ahead and drops pages behind.
            let _ = map.advise(memmap2::Advice::Sequential);
            self.map = Some(map);
        }
        let map = self.map.as_deref().unwrap_or(&[]);
        let start = usize::try_from(from - self.base).unwrap_or(usize::MAX);
        let end = usize::try_from(to - self.base).unwrap_or(usize::MAX);
        Ok(map.get(start..end).unwrap_or(&[]))
    }
}

/// Bytes mapped at a time, per worker.
const WINDOW: usize = 32 << 20;
/// The map offset's alignment (the page size of every platform we build for, or a multiple).
const PAGE: usize = 64 << 10;

/// A worker's end of the packets: its own flows (and every DNS flow) into its table; the
/// others' packets move its clock and sweeps on.
struct ShardSink {
    table: FlowTable,
    /// The same for every worker.
    hash: ahash::RandomState,
    me: usize,
    shards: usize,
}

impl ShardSink {
    fn mine(&self, (proto, sender, receiver): FlowKey) -> bool {
        let (hash, dns) = flow_shard(&self.hash, proto, sender, receiver);
        dns || shard_of(hash, self.shards) == self.me
    }

    /// Whether this shard's table did what the single table would (it was never full, so it
    /// never swept or refused for that; it never ran out of reassembly budget).
    fn exact(&self) -> bool {
        !self.table.was_full() && self.table.buffer_budget_drops() == 0
    }
}

impl Sink for ShardSink {
    fn packet(&mut self, p: &PacketView<'_>) {
        if self.mine((p.proto, (p.src, p.sport), (p.dst, p.dport))) {
            self.table.observe_packet(p);
        } else {
            self.table.pass(p.ts);
        }
    }

    /// A plain frame's flow is read without decoding it ([`peek_flow`]): other workers'
    /// packets cost a few header reads and a hash here. The rest are decoded.
    fn frame(&mut self, stats: &mut PcapStats, link: LinkType, data: &[u8], ts: DateTime<Utc>) {
        let Some(key) = peek_flow(link, data) else {
            decode_frame(stats, self, link, data, ts);
            return;
        };
        stats.frames += 1;
        stats.captured_bytes += data.len() as u64;
        stats.packets += 1;
        if !self.mine(key) {
            self.table.pass(ts);
            return;
        }
        match decode(link, data, ts) {
            Decoded::Packet(p) => self.table.observe_packet(&p),
            // `peek_flow` answers only for frames that decode to a packet of its flow.
            _ => debug_assert!(false, "peek_flow and decode disagree"),
        }
    }
}

/// A worker: the whole file after its header, every record; its own flows into its table.
fn work(
    mut file: Window,
    header: usize,
    pcapng: bool,
    window: usize,
    mut sink: ShardSink,
    max_finished: usize,
    stop: &AtomicBool,
) -> std::io::Result<Option<(FlowTable, PcapStats)>> {
    let mut stats = PcapStats::default();
    let Ok((mut records, _)) = Records::new(pcapng, file.at(0, header)?) else {
        return Ok(None);
    };
    let mut pos = header as u64;
    let window = window.max(1);
    let mut need = window;
    while pos < file.size && !stop.load(Ordering::Relaxed) {
        let size = file.size;
        let data = file.at(pos, need)?;
        let data_len = data.len();
        let whole_rest = pos + data_len as u64 >= size;
        let (used, fed) = records.feed(data, &mut stats, &mut sink);
        pos += used as u64;
        match fed {
            Fed::All => need = window,
            Fed::Incomplete if whole_rest => {
                stats.truncated = true;
                break;
            }
            // A record past the window's end: from it, in a window large enough.
            Fed::Incomplete if used > 0 => need = window,
            // One record larger than the streaming import can hold.
            Fed::Incomplete if data_len > MAX_RECORD => {
                stats.truncated = true;
                break;
            }
            Fed::Incomplete => need = need.saturating_mul(2).min(MAX_RECORD + 1),
            Fed::Bad => {
                stats.truncated = true;
                break;
            }
        }
        if !sink.exact() || sink.table.finished_len() > max_finished {
            stop.store(true, Ordering::Relaxed);
        }
    }
    Ok(Some((sink.table, stats)))
}

/// A sharded import's result: the stats, each shard's table, the hash that chose them.
struct Sharded {
    stats: PcapStats,
    tables: Vec<FlowTable>,
    hash: ahash::RandomState,
}

/// The sharded import; `None` when the shards cannot give the single table's result (a
/// cap was reached, see the module documentation) or the file cannot be mapped (not a
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
    let open = || -> std::io::Result<Window> {
        let file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        Ok(Window {
            file,
            size: meta.len(),
            map: None,
            base: 0,
        })
    };
    let Ok(mut first) = open() else {
        return Ok(None);
    };
    // The file header (pcap: 24 bytes; pcapng: the whole section header block), read as
    // the streaming import reads it, with its errors.
    let mut need = 24;
    let header = loop {
        let data = first.at(0, need).map_err(read_err)?;
        match Records::new(pcapng, data) {
            Ok((_, used)) => break used,
            Err(Parse::IncompleteBuffer) if data.len() as u64 == first.size => {
                return Err(fmt_err(Parse::IncompleteBuffer));
            }
            Err(Parse::IncompleteBuffer) => need = need.saturating_mul(2),
            Err(e) => return Err(fmt_err(e)),
        }
    };
    let mut files = vec![first];
    for _ in 1..threads {
        files.push(open().map_err(read_err)?);
    }
    let shard_limits = FlowTableLimits {
        max_flows: limits.max_flows / threads,
        max_buffered_bytes: limits.max_buffered_bytes / threads,
        ..limits.clone()
    };
    let hash = ahash::RandomState::new();
    let stop = AtomicBool::new(false);
    let joined = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .into_iter()
            .enumerate()
            .map(|(me, file)| {
                let sink = ShardSink {
                    table: FlowTable::new(shard_limits.clone()),
                    hash: hash.clone(),
                    me,
                    shards: threads,
                };
                let max_finished = limits.max_finished;
                let stop = &stop;
                let fail = knobs.fail_worker == Some(me);
                let window = knobs.window;
                std::thread::Builder::new()
                    .name(format!("pcap-shard-{me}"))
                    .spawn_scoped(s, move || {
                        if fail {
                            // Tests: a worker that dies.
                            panic!("worker {me} failed (test)");
                        }
                        let shard = work(file, header, pcapng, window, sink, max_finished, stop);
                        if !matches!(shard, Ok(Some(_))) {
                            // The others stop too: the import has no result.
                            stop.store(true, Ordering::Relaxed);
                        }
                        shard
                    })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().map_err(|e| {
                    stop.store(true, Ordering::Relaxed);
                    e.downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| e.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a worker thread panicked".to_owned())
                }),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    Err(format!("cannot start a worker thread: {e}"))
                }
            })
            .collect::<Vec<_>>()
    });
    let mut shards = Vec::with_capacity(threads);
    for j in joined {
        match j {
            Ok(Ok(Some(shard))) => shards.push(shard),
            Ok(Ok(None)) => {
                return Err(worker_err("a worker could not read the header".to_owned()));
            }
            Ok(Err(e)) => return Err(read_err(e)),
            Err(reason) => return Err(worker_err(reason)),
        }
    }
    // Past the finished list's cap a single table keeps the flows its hash order finished
    // first, which no other import can reproduce. (DNS flows are counted once per shard
    // here: this may send back to one thread a capture that did not need it, never the
    // other way.)
    let finished: usize = shards.iter().map(|(t, _)| t.finished_len()).sum();
    if finished > limits.max_finished
        || shards
            .iter()
            .any(|(t, _)| t.was_full() || t.buffer_budget_drops() > 0)
    {
        return Ok(None);
    }
    let mut stats = shards.first().map(|(_, s)| s.clone()).unwrap_or_default();
    stats.format = if pcapng { "pcapng" } else { "pcap" };
    Ok(Some(Sharded {
        stats,
        tables: shards.into_iter().map(|(t, _)| t).collect(),
        hash,
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
                window: 4096,
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

    /// Window edges anywhere (inside record headers and records, in both formats, with
    /// records larger than a window) change nothing, and a file cut inside a record is
    /// imported up to it and said to be truncated, as on one thread.
    #[test]
    fn window_edges_and_a_cut_record_change_nothing() {
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
            for window in [1, 7, 100, 4096, WINDOW] {
                let knobs = Knobs {
                    window,
                    fail_worker: None,
                };
                assert_eq!(
                    records(f, 2, &knobs),
                    one,
                    "{} in {window}-byte windows",
                    f.display()
                );
            }
        }
    }
}
