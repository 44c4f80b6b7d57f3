//! A large capture imported on several cores, with the result of a single-threaded import.
//!
//! One reader (the calling thread) parses the records and decodes the packets, as the
//! single-threaded import does (so [`PcapStats`] are the same by construction), and sends
//! each packet, owned, in batches of [`BATCH`] over a bounded channel to one of N workers,
//! each with a [`FlowTable`] of its own. A flow's shard is a hash of its canonical
//! (direction-free) 5-tuple, so both directions of a flow meet in one table. At the end the
//! shards' records are put together.
//!
//! # State that crosses flows, and how the result stays exact
//!
//! - **The clock, idle sweeps, the flow cap.** A single table sweeps idle flows out every
//!   `max(8192, live flows)` packets at the latest packet time, and a full table sweeps
//!   (at most once a second) and then refuses new flows. Whether a flow with a long gap is
//!   split in two, and which packets are refused, depends on those global counts. The reader
//!   keeps a mirror of the live flow set (key and last packet time: `flow_table::Mirror`,
//!   written after `FlowTable::flow_for`) and makes those decisions itself: each sweep goes to
//!   every shard, in stream order, as `FlowTable::expire` at the same time; refused packets are
//!   not sent; each packet carries the import's clock. The shards' tables run no sweeps and
//!   have no flow cap of their own ([`FlowTable::for_shard`]), and the cap holds in total
//!   because the mirror enforces it for all flows together.
//! - **DNS.** Answers teach an address-to-name cache that names other flows (in any shard)
//!   at the moment their record is made (at a sweep or at the end), and HTTPS/SVCB answers
//!   teach ECH hints read by TLS and QUIC flows. So every shard reads every packet of a flow
//!   with port 53 on either end (where the table parses DNS): each shard's DNS cache, ECH
//!   hints and pending queries go through the same steps as the single table's, and a flow's
//!   cached name is the one the single table would give. The DNS flows themselves are
//!   reported by their own shard only. The cost: DNS packets are handled N times, and the
//!   DNS cache (at most `max_dns_cache` entries) is held N times.
//! - **The reassembly budget** (`max_buffered_bytes`, across flows). Each shard gets an N-th
//!   of it, so the total holds. If no shard ran out, the single table (whose buffered bytes
//!   are, packet by packet, at most the sum of the shards') never did either, and the result
//!   is the same; if one did, the capture is imported again on one thread.
//! - **The finished list** (`max_finished`). Past it, a single table keeps the flows its hash
//!   order finishes first, which no other import can reproduce: when the mirror sees more
//!   flows finished than that, the reader stops and the capture is imported on one thread.
//! - Interned names (`Names`) and the live daemon's QUIC rechecks change no record.
//!
//! The table-wide statistics ([`crate::flow_table::FlowTableStats`]) are not put together:
//! this import gives records only (which is what `tollgate discover` reads), and the records
//! of live flows carry no [`crate::flow_table::FlowMeta`].
//!
//! A worker that panics drops its channel: the reader's next send to it fails, the reader
//! stops, the others finish, and the import returns [`PcapError::Worker`].

use std::path::Path;
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError, channel, sync_channel};

use chrono::{DateTime, Utc};

use super::{PcapError, PcapStats, Sink, import_reader, open_capture, stream_into};
use crate::flow_table::{Admitted, FlowTable, FlowTableLimits, Mirror};
use crate::packet::PacketView;
use crate::record::{FlowRecord, L4Proto};

/// Captures at least this large are imported on several threads (when more than one is
/// asked for); smaller ones are not worth the threads.
pub const PARALLEL_MIN_BYTES: u64 = 64 << 20;

/// Packets per batch sent to a worker.
const BATCH: usize = 256;
/// A batch is sent once its payload bytes reach this, whatever its packet count.
const BATCH_BYTES: usize = 1 << 20;
/// Workers at most, whatever the thread count asked for.
const MAX_SHARDS: usize = 64;
/// Batches waiting per worker: with the batch in the making and the one being read, the
/// memory in flight is a few batches per worker.
const QUEUE: usize = 4;

/// Import a capture with `threads` worker threads (0: one per core, at most 64) besides
/// the calling thread (which reads), calling `each` with every
/// flow record. A capture smaller than [`PARALLEL_MIN_BYTES`], or one thread, takes the
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
    import_with(path, limits, threads, min_bytes, None, each)
}

fn import_with(
    path: &Path,
    limits: &FlowTableLimits,
    threads: usize,
    min_bytes: u64,
    fail_worker: Option<usize>,
    each: &mut dyn FnMut(FlowRecord),
) -> Result<PcapStats, PcapError> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
    .min(MAX_SHARDS);
    let mut c = open_capture(path)?;
    if threads >= 2 && c.size >= min_bytes {
        match sharded(path, limits, threads, c, fail_worker)? {
            Some((stats, tables)) => {
                let mirror = tables.mirror;
                for (i, t) in tables.shards.iter().enumerate() {
                    for r in t.records() {
                        // A DNS flow is in every shard: its own shard reports it.
                        let keep = match mirror.flow_of(&r) {
                            Admitted::Flow { hash, dns: true } => shard_of(hash, threads) == i,
                            _ => true,
                        };
                        if keep {
                            each(r);
                        }
                    }
                }
                return Ok(stats);
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

/// A packet as a worker gets it: the view's fields, its payload in the batch's bytes, and
/// the import's clock.
#[derive(Debug, Clone, Copy)]
struct Packet {
    ts: DateTime<Utc>,
    now: DateTime<Utc>,
    proto: L4Proto,
    src: std::net::IpAddr,
    sport: u16,
    dst: std::net::IpAddr,
    dport: u16,
    ip_len: u32,
    tcp_seq: u32,
    tcp_flags: u8,
    src_mac: Option<[u8; 6]>,
    payload: (usize, usize),
}

#[derive(Debug, Clone, Copy)]
enum Item {
    Packet(Packet),
    /// `FlowTable::expire` at this time.
    Sweep(DateTime<Utc>),
}

#[derive(Debug, Default)]
struct Batch {
    items: Vec<Item>,
    data: Vec<u8>,
}

impl Batch {
    fn push(&mut self, p: &PacketView<'_>, now: DateTime<Utc>) {
        let start = self.data.len();
        self.data.extend_from_slice(p.payload);
        self.items.push(Item::Packet(Packet {
            ts: p.ts,
            now,
            proto: p.proto,
            src: p.src,
            sport: p.sport,
            dst: p.dst,
            dport: p.dport,
            ip_len: p.ip_len,
            tcp_seq: p.tcp_seq,
            tcp_flags: p.tcp_flags,
            src_mac: p.src_mac,
            payload: (start, self.data.len()),
        }));
    }

    fn full(&self) -> bool {
        self.items.len() >= BATCH || self.data.len() >= BATCH_BYTES
    }
}

struct Shard {
    tx: SyncSender<Batch>,
    batch: Batch,
}

/// The reader's end: decides, routes and batches.
struct Reader {
    mirror: Mirror,
    shards: Vec<Shard>,
    /// Batches the workers are done with, for reuse.
    spare: Receiver<Batch>,
    /// A worker is gone (its channel is closed).
    failed: bool,
}

impl Reader {
    fn fresh(&self) -> Batch {
        match self.spare.try_recv() {
            Ok(b) => b,
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => Batch {
                items: Vec::with_capacity(BATCH + 4),
                data: Vec::new(),
            },
        }
    }

    fn send(&mut self, i: usize) {
        let fresh = self.fresh();
        let Some(s) = self.shards.get_mut(i) else {
            return;
        };
        let b = std::mem::replace(&mut s.batch, fresh);
        if s.tx.send(b).is_err() {
            self.failed = true;
        }
    }

    fn flush(&mut self) {
        for i in 0..self.shards.len() {
            if self
                .shards
                .get(i)
                .is_some_and(|s| !s.batch.items.is_empty())
            {
                self.send(i);
            }
        }
    }
}

impl Sink for Reader {
    fn packet(&mut self, p: &PacketView<'_>) {
        let Reader { mirror, shards, .. } = self;
        let admitted = mirror.admit(p, &mut |t| {
            for s in shards.iter_mut() {
                s.batch.items.push(Item::Sweep(t));
            }
        });
        let now = self.mirror.now();
        let n = self.shards.len();
        match admitted {
            Admitted::Dropped => {}
            Admitted::Flow { dns: true, .. } => {
                for s in &mut self.shards {
                    s.batch.push(p, now);
                }
            }
            Admitted::Flow { hash, dns: false } => {
                if let Some(s) = self.shards.get_mut(shard_of(hash, n)) {
                    s.batch.push(p, now);
                }
            }
        }
        for i in 0..n {
            if self.shards.get(i).is_some_and(|s| s.batch.full()) {
                self.send(i);
            }
        }
    }

    fn stopped(&self) -> bool {
        self.failed || self.mirror.finished_overflowed()
    }
}

fn work(rx: Receiver<Batch>, back: Sender<Batch>, limits: FlowTableLimits) -> FlowTable {
    let mut table = FlowTable::for_shard(limits);
    while let Ok(mut batch) = rx.recv() {
        for item in batch.items.drain(..) {
            match item {
                Item::Sweep(t) => {
                    table.advance_now(t);
                    table.expire(t);
                }
                Item::Packet(p) => {
                    table.advance_now(p.now);
                    let payload = batch.data.get(p.payload.0..p.payload.1).unwrap_or(&[]);
                    table.observe_packet(&PacketView {
                        ts: p.ts,
                        proto: p.proto,
                        src: p.src,
                        sport: p.sport,
                        dst: p.dst,
                        dport: p.dport,
                        ip_len: p.ip_len,
                        tcp_seq: p.tcp_seq,
                        tcp_flags: p.tcp_flags,
                        payload,
                        src_mac: p.src_mac,
                    });
                }
            }
        }
        batch.data.clear();
        // The reader may be gone already: the batch is then just dropped.
        let _ = back.send(batch);
    }
    table
}

struct Tables {
    mirror: Mirror,
    shards: Vec<FlowTable>,
}

/// The sharded import; `None` when the shards cannot give the single table's result (a
/// cap was reached, see the module documentation): the caller imports on one thread.
fn sharded(
    path: &Path,
    limits: &FlowTableLimits,
    threads: usize,
    c: super::Capture,
    fail_worker: Option<usize>,
) -> Result<Option<(PcapStats, Tables)>, PcapError> {
    let shard_limits = FlowTableLimits {
        max_buffered_bytes: limits.max_buffered_bytes / threads,
        ..limits.clone()
    };
    let (back_tx, spare) = channel();
    let mut txs = Vec::with_capacity(threads);
    let mut rxs = Vec::with_capacity(threads);
    for _ in 0..threads {
        let (tx, rx) = sync_channel(QUEUE);
        txs.push(tx);
        rxs.push(rx);
    }
    let mut reader = Reader {
        mirror: Mirror::new(limits),
        shards: txs
            .into_iter()
            .map(|tx| Shard {
                tx,
                batch: Batch::default(),
            })
            .collect(),
        spare,
        failed: false,
    };
    let (result, joined) = std::thread::scope(|s| {
        let handles: Vec<_> = rxs
            .into_iter()
            .enumerate()
            .map(|(i, rx)| {
                let back = back_tx.clone();
                let l = shard_limits.clone();
                let fail = fail_worker == Some(i);
                s.spawn(move || {
                    if fail {
                        // Tests: a worker that dies at its first batch.
                        let _ = rx.recv();
                        panic!("worker {i} failed (test)");
                    }
                    work(rx, back, l)
                })
            })
            .collect();
        let result = stream_into(path, c.reader, c.pcapng, &mut reader, super::READ_CHUNK);
        if result.is_ok() && !reader.stopped() {
            reader.flush();
        }
        // Closing the channels ends the workers.
        reader.shards.clear();
        let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        (result, joined)
    });
    let stats = result?;
    let mut shards = Vec::with_capacity(threads);
    for j in joined {
        match j {
            Ok(t) => shards.push(t),
            Err(e) => {
                let reason = e
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| e.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a worker thread panicked".to_owned());
                return Err(PcapError::Worker {
                    path: path.to_path_buf(),
                    reason,
                });
            }
        }
    }
    if reader.failed {
        return Err(PcapError::Worker {
            path: path.to_path_buf(),
            reason: "a worker thread stopped".to_owned(),
        });
    }
    if reader.mirror.finished_overflowed() || shards.iter().any(|t| t.buffer_budget_drops() > 0) {
        return Ok(None);
    }
    Ok(Some((
        stats,
        Tables {
            mirror: reader.mirror,
            shards,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/pcap/chromium_mtu1400.pcap")
    }

    /// Caps the shards cannot share exactly send the capture back to one thread; without
    /// them the sharded result stands.
    #[test]
    fn a_spent_budget_or_finished_list_means_one_thread() {
        let shards = |limits: FlowTableLimits| {
            let c = open_capture(&capture()).expect("open");
            sharded(&capture(), &limits, 2, c, None)
                .expect("import")
                .is_some()
        };
        assert!(shards(FlowTableLimits::default()));
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
            let e = import_with(
                &capture(),
                &FlowTableLimits::default(),
                3,
                0,
                Some(i),
                &mut |_| n += 1,
            );
            let e = e.expect_err("worker failure");
            assert!(matches!(e, PcapError::Worker { .. }), "{e}");
            assert!(e.to_string().contains("chromium_mtu1400.pcap"), "{e}");
            assert_eq!(n, 0);
        }
    }
}
