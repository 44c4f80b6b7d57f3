//! The gateway's durable upload spool: discovery and audit records wait here, on disk, until
//! the hub has stored them.
//!
//! The gateway keeps enforcing and spooling while the hub is away, so the spool must survive
//! `kill -9` and power loss, never hand the hub a corrupt record, and stay bounded.
//!
//! # Layout
//!
//! A directory (mode `0700`, files `0600`) holding:
//! - segment files `<first seq, 20 digits>.seg`: the 8-byte magic `TGSPOOL1`, then frames. A
//!   frame is the payload length (`u32` LE), a CRC-32 (`u32` LE, over the length bytes and
//!   the payload, so a flipped length is caught too), then the payload, `postcard(UploadRecord)`.
//!   Records in a segment have sequence numbers at or above the name's, strictly increasing.
//!   Only the newest segment is appended to; a segment is closed at `segment_bytes`.
//! - `state`: the magic `TGSPST01`, `acked_through`, the next sequence number and the count of
//!   records dropped because the spool was full (each `u64` LE), and a CRC-32 of those bytes.
//!   It is replaced atomically (write `state.tmp`, fsync, rename, fsync the directory), so it
//!   is always either the old or the new one. A `state` whose CRC fails makes [`Spool::open`]
//!   fail ([`SpoolError::CorruptState`]) rather than guess: a guessed sequence number could
//!   reuse one the hub already stored, and the hub would drop the new record as a duplicate.
//! - `lock`: held with an exclusive `flock` while the spool is open, so two processes never
//!   write one spool.
//!
//! # Durability
//!
//! [`Spool::append`] writes into a buffer; [`Spool::sync`] writes the batch and fsyncs the
//! segment. A segment's creation and deletion are made durable by an fsync of the directory.
//! After a crash, everything appended before the last completed `sync` is there; records of
//! the batch after it may be lost (the producer treats `sync` as the acknowledgement). Before a
//! new segment is started, the previous one is fsynced, so a torn write can only be in the
//! newest segment. [`Spool::peek`] syncs first, so no record is ever sent to the hub that a
//! crash could take back, and a sequence number the hub has seen is never reused.
//!
//! Sequence numbers start at 1 and increase strictly across restarts, also after every record
//! was acknowledged and every segment deleted: `open` continues after the largest of the
//! state's next sequence number, `acked_through`, every segment's name and every record found.
//!
//! # Recovery
//!
//! [`Spool::open`] reads every segment and checks each frame (length within limits, CRC,
//! postcard decodes with no bytes left over, sequence number above the previous one). At the
//! first bad frame it looks for the next good frame, byte by byte:
//! - none follows: the rest is a torn tail (a write cut by a crash, or the zeroes a filesystem
//!   leaves after power loss); the file is truncated there and the bytes are counted in
//!   `torn_bytes_discarded`.
//! - one follows: the bytes between are a corrupt region (a bit flip, a bad sector); the
//!   segment is rewritten without it (atomically, like `state`) and the region counts once in
//!   `corrupt_records_skipped` (a region normally holds one record; a flipped length can hide
//!   several). The records after it are kept: one bad sector does not cost a megabyte.
//!
//! `peek` checks every frame again as it reads, so a record damaged after `open` is skipped
//! (and counted once) too. A corrupt record is never returned.
//!
//! # Bounds
//!
//! - `max_bytes` (default 64 MiB) caps the segment files' total size. When an append would
//!   exceed it, the oldest whole segment is deleted first, and the records in it the hub had
//!   not acknowledged are counted in `dropped_records` (kept in `state`, so the count is since
//!   the spool was created; the gateway reports it to the hub as `Health.spool_dropped`). The
//!   oldest data goes first because fresh discovery matters more: a long outage loses its
//!   beginning, and the hub's picture of what the gateway sees now stays current.
//! - `segment_bytes` (default 1 MiB, between [`MIN_SEGMENT_BYTES`] and [`MAX_SEGMENT_BYTES`],
//!   at most half of `max_bytes`) caps a segment; a record whose frame does not fit in one, or
//!   whose encoding is over [`MAX_RECORD_BYTES`], is refused with
//!   [`SpoolError::RecordTooLarge`] and nothing is written.
//! - `peek` reads at most one segment file into memory at a time.
//!
//! # Acknowledgement
//!
//! [`Spool::ack`] records `acked_through` in `state` first, then deletes every segment whose
//! records are all acknowledged. A crash between the two leaves segments whose records `open`
//! and `peek` skip. An ack beyond the last record peeked-and-synced is clamped to it: a hub
//! cannot make the gateway skip records it has not sent.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::protocol::{MAX_MESSAGE_BYTES, RecordBody, UploadRecord};

/// The default cap on the spool's total size.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// The default segment size.
pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 20;
/// The smallest segment size accepted (room for a few small records).
pub const MIN_SEGMENT_BYTES: u64 = 512;
/// The largest segment size accepted; `open` reads no more than this from a segment file
/// (anything beyond is a torn tail).
pub const MAX_SEGMENT_BYTES: u64 = 64 << 20;
/// The largest encoded record: one record alone must fit an upload message, with room left
/// for the batch's own framing.
pub const MAX_RECORD_BYTES: usize = MAX_MESSAGE_BYTES - 1024;

/// The first bytes of every segment file; a file with other magic is refused, not deleted
/// (it may be a newer version's).
pub const SEGMENT_MAGIC: &[u8; 8] = b"TGSPOOL1";
const STATE_MAGIC: &[u8; 8] = b"TGSPST01";
const STATE_LEN: usize = 8 + 3 * 8 + 4;
/// Length and CRC before each payload.
pub const FRAME_HEADER_BYTES: usize = 8;
const SEGMENT_SUFFIX: &str = ".seg";
const STATE_FILE: &str = "state";
const LOCK_FILE: &str = "lock";
const TMP_SUFFIX: &str = ".tmp";

/// Where the spool lives and how big it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// The cap on the segment files' total size (default [`DEFAULT_MAX_BYTES`]).
    pub max_bytes: u64,
    /// The size at which a segment is closed (default [`DEFAULT_SEGMENT_BYTES`]).
    pub segment_bytes: u64,
}

impl SpoolConfig {
    /// The defaults, in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// What the spool holds and what it lost, for `tollgate status` and the hub's health view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records not yet acknowledged by the hub.
    pub records: u64,
    /// The segment files' total size.
    pub bytes: u64,
    /// Unacknowledged records deleted because the spool was full, since it was created.
    pub dropped_records: u64,
    /// Bytes of torn tails truncated, since this process opened the spool.
    pub torn_bytes_discarded: u64,
    /// Corrupt regions (normally one record each) skipped, since this process opened it.
    pub corrupt_records_skipped: u64,
    /// When the oldest unacknowledged record was recorded, Unix seconds.
    pub oldest_recorded_at: Option<i64>,
    /// The sequence number the next append gets.
    pub next_seq: u64,
    /// Every record up to this one is stored by the hub (0: none yet).
    pub acked_through: u64,
}

/// Why the spool could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool {0} is open in another process")]
    Locked(PathBuf),
    #[error("spool config: {0}")]
    Config(String),
    #[error("record of {size} bytes is over the spool's {limit}-byte limit; not written")]
    RecordTooLarge { size: usize, limit: usize },
    #[error("sequence numbers exhausted")]
    SeqExhausted,
    #[error("record could not be encoded: {0}")]
    Encode(#[source] postcard::Error),
    #[error("{0}: not a spool segment this version reads (unknown magic); left as is")]
    UnknownFormat(PathBuf),
    #[error(
        "spool state {0} is corrupt; refusing to guess sequence numbers (move the spool directory aside to start a new one)"
    )]
    CorruptState(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One segment file, as the spool knows it.
#[derive(Debug, Clone)]
struct Segment {
    /// From the file name: every record in it has a sequence number at or above this.
    first_seq: u64,
    path: PathBuf,
    /// File size, including what is still buffered for the newest segment.
    bytes: u64,
    /// Good records in it.
    records: u64,
    last_seq: Option<u64>,
}

/// Where the first unacknowledged record is, when known (saves reading a segment from its
/// start on every peek).
#[derive(Debug, Clone, Copy)]
struct Cursor {
    segment: u64,
    offset: u64,
    /// The sequence number of the record just before `offset`.
    after_seq: u64,
}

/// The spool. One per directory per process (see the module documentation).
pub struct Spool {
    cfg: SpoolConfig,
    _lock: File,
    /// Oldest first; the newest is the one appended to.
    segments: Vec<Segment>,
    /// Open on the newest segment once something was appended.
    writer: Option<BufWriter<File>>,
    /// After a failed write the newest segment may end in a partial frame: the next append
    /// starts a new segment (the partial frame is skipped as corrupt when read).
    rotate_next: bool,
    next_seq: u64,
    acked_through: u64,
    /// Every record up to here is on disk and fsynced.
    synced_through: u64,
    dropped_records: u64,
    torn_bytes_discarded: u64,
    corrupt_records_skipped: u64,
    /// Corrupt regions `peek` has counted already, as (segment, offset).
    known_corrupt: HashSet<(u64, u64)>,
    cursor: Option<Cursor>,
    /// Where the last record `peek` returned ends, to become the cursor when it is acked.
    last_peek_end: Option<(u64, Cursor)>,
    oldest_recorded_at: Option<i64>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.cfg.dir)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A frame as found in a segment's bytes.
#[derive(Debug)]
pub(crate) enum Found {
    Record {
        offset: usize,
        len: usize,
        record: UploadRecord,
    },
    /// Bad bytes from `offset` up to the next good frame (the next item).
    Corrupt { offset: usize },
    /// Bad bytes from `offset` to the end, with no good frame after them.
    Tail { offset: usize },
}

/// The frame at `pos`, if it is a good one with a sequence number at or above `min_seq`;
/// returns it with the frame's length.
fn parse_frame(buf: &[u8], pos: usize, min_seq: u64) -> Option<(UploadRecord, usize)> {
    let header: [u8; FRAME_HEADER_BYTES] = buf
        .get(pos..pos.checked_add(FRAME_HEADER_BYTES)?)?
        .try_into()
        .ok()?;
    let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if len == 0 || len > MAX_RECORD_BYTES {
        return None;
    }
    let start = pos + FRAME_HEADER_BYTES;
    let payload = buf.get(start..start.checked_add(len)?)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[l0, l1, l2, l3]);
    hasher.update(payload);
    if hasher.finalize() != crc {
        return None;
    }
    let (record, rest) = postcard::take_from_bytes::<UploadRecord>(payload).ok()?;
    if !rest.is_empty() || record.seq < min_seq {
        return None;
    }
    Some((record, FRAME_HEADER_BYTES + len))
}

/// A frame around `payload` (whose length the caller has checked).
pub(crate) fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len);
    hasher.update(payload);
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    frame.extend_from_slice(&len);
    frame.extend_from_slice(&hasher.finalize().to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Walks the frames of a segment's bytes (after its magic), resynchronising after bad ones.
pub(crate) struct Frames<'a> {
    buf: &'a [u8],
    pos: usize,
    min_seq: u64,
}

impl<'a> Frames<'a> {
    pub(crate) fn new(buf: &'a [u8], pos: usize, min_seq: u64) -> Self {
        Self { buf, pos, min_seq }
    }
}

impl Iterator for Frames<'_> {
    type Item = Found;

    fn next(&mut self) -> Option<Found> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let offset = self.pos;
        if let Some((record, len)) = parse_frame(self.buf, offset, self.min_seq) {
            self.pos += len;
            self.min_seq = record.seq.saturating_add(1);
            return Some(Found::Record {
                offset,
                len,
                record,
            });
        }
        let mut q = offset + 1;
        while q + FRAME_HEADER_BYTES <= self.buf.len() {
            if parse_frame(self.buf, q, self.min_seq).is_some() {
                self.pos = q;
                return Some(Found::Corrupt { offset });
            }
            q += 1;
        }
        self.pos = self.buf.len();
        Some(Found::Tail { offset })
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn new_file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(0o600);
    options
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp_name);
    let mut file = new_file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_dir(dir)
}

/// Reads at most `limit` bytes of a file.
fn read_capped(path: &Path, offset: u64, limit: u64) -> Result<Vec<u8>, SpoolError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    file.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
    let mut buf = Vec::new();
    file.take(limit.saturating_sub(offset))
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    Ok(buf)
}

struct State {
    acked_through: u64,
    next_seq: u64,
    dropped_records: u64,
}

fn encode_state(s: &State) -> Vec<u8> {
    let mut out = Vec::with_capacity(STATE_LEN);
    out.extend_from_slice(STATE_MAGIC);
    out.extend_from_slice(&s.acked_through.to_le_bytes());
    out.extend_from_slice(&s.next_seq.to_le_bytes());
    out.extend_from_slice(&s.dropped_records.to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode_state(bytes: &[u8]) -> Option<State> {
    let bytes: &[u8; STATE_LEN] = bytes.try_into().ok()?;
    let (body, crc) = bytes.split_at(STATE_LEN - 4);
    if crc32fast::hash(body).to_le_bytes() != crc || &body[..8] != STATE_MAGIC {
        return None;
    }
    let word = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            body.get(8 + 8 * i..16 + 8 * i)?.try_into().ok()?,
        ))
    };
    Some(State {
        acked_through: word(0)?,
        next_seq: word(1)?,
        dropped_records: word(2)?,
    })
}

impl Spool {
    /// Opens (or creates) the spool in `cfg.dir` and recovers it after a crash: torn tails are
    /// truncated, corrupt regions cut out, and the next sequence number learnt.
    pub fn open(cfg: SpoolConfig) -> Result<Spool, SpoolError> {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&cfg.segment_bytes) {
            return Err(SpoolError::Config(format!(
                "segment_bytes {} is outside {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}",
                cfg.segment_bytes
            )));
        }
        if cfg.max_bytes < cfg.segment_bytes.saturating_mul(2) {
            return Err(SpoolError::Config(format!(
                "max_bytes {} must be at least twice segment_bytes {}",
                cfg.max_bytes, cfg.segment_bytes
            )));
        }
        let dir = cfg.dir.clone();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io_err(&dir))?;

        let lock_path = dir.join(LOCK_FILE);
        let lock = new_file_options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(dir)),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }

        let state_path = dir.join(STATE_FILE);
        let state = match fs::read(&state_path) {
            Ok(bytes) => {
                decode_state(&bytes).ok_or_else(|| SpoolError::CorruptState(state_path.clone()))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => State {
                acked_through: 0,
                next_seq: 1,
                dropped_records: 0,
            },
            Err(e) => return Err(io_err(&state_path)(e)),
        };

        let mut spool = Spool {
            cfg,
            _lock: lock,
            segments: Vec::new(),
            writer: None,
            rotate_next: false,
            next_seq: state.next_seq.max(state.acked_through.saturating_add(1)),
            acked_through: state.acked_through,
            synced_through: 0,
            dropped_records: state.dropped_records,
            torn_bytes_discarded: 0,
            corrupt_records_skipped: 0,
            known_corrupt: HashSet::new(),
            cursor: None,
            last_peek_end: None,
            oldest_recorded_at: None,
        };
        spool.recover()?;
        spool.synced_through = spool.next_seq.saturating_sub(1);
        Ok(spool)
    }

    /// Scans the directory: removes leftover temporary files, checks and repairs every segment.
    fn recover(&mut self) -> Result<(), SpoolError> {
        let dir = self.cfg.dir.clone();
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(TMP_SUFFIX) {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_err(&path))?;
            } else if let Some(first) = parse_segment_name(name) {
                found.push((first, entry.path()));
            }
        }
        found.sort();

        let mut last_seq = 0u64;
        let mut changed_dir = false;
        let count = found.len();
        for (i, (first_seq, path)) in found.into_iter().enumerate() {
            let is_newest = i + 1 == count;
            let segment = self.recover_segment(first_seq, &path, last_seq)?;
            let segment = match segment {
                Some(s) if s.records > 0 || is_newest => s,
                _ => {
                    // Empty (or torn before its header was written): nothing to keep.
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    changed_dir = true;
                    continue;
                }
            };
            if let Some(last) = segment.last_seq {
                last_seq = last;
            }
            self.next_seq = self
                .next_seq
                .max(segment.first_seq)
                .max(last_seq.saturating_add(1));
            self.segments.push(segment);
        }
        if changed_dir {
            sync_dir(&dir)?;
        }
        // Segments whose records are all acknowledged (a crash came between the state write
        // and their deletion) go now.
        self.delete_acked_segments()?;
        self.refresh_oldest()?;
        Ok(())
    }

    /// Checks one segment file, truncating a torn tail and cutting out corrupt regions.
    /// `None`: the file is not even a whole header (created, then a crash).
    fn recover_segment(
        &mut self,
        first_seq: u64,
        path: &Path,
        prev_seq: u64,
    ) -> Result<Option<Segment>, SpoolError> {
        let file_len = fs::metadata(path).map_err(io_err(path))?.len();
        let buf = read_capped(path, 0, MAX_SEGMENT_BYTES)?;
        if buf.len() < SEGMENT_MAGIC.len() {
            self.torn_bytes_discarded += file_len;
            return Ok(None);
        }
        if !buf.starts_with(SEGMENT_MAGIC) {
            return Err(SpoolError::UnknownFormat(path.to_path_buf()));
        }
        let min_seq = first_seq.max(prev_seq.saturating_add(1));
        let mut kept: Vec<(usize, usize)> = Vec::new();
        let mut records = 0u64;
        let mut last_seq = None;
        let mut regions = 0u64;
        let mut tail_at = None;
        for found in Frames::new(&buf, SEGMENT_MAGIC.len(), min_seq) {
            match found {
                Found::Record {
                    offset,
                    len,
                    record,
                } => {
                    kept.push((offset, len));
                    records += 1;
                    last_seq = Some(record.seq);
                }
                Found::Corrupt { .. } => regions += 1,
                Found::Tail { offset } => tail_at = Some(offset),
            }
        }
        // Anything past what was read is beyond any segment this spool writes: torn too.
        let read_len = buf.len() as u64;
        let beyond = file_len.saturating_sub(read_len);
        let mut bytes = read_len;
        if regions > 0 {
            let mut clean = Vec::with_capacity(buf.len());
            clean.extend_from_slice(SEGMENT_MAGIC);
            for &(offset, len) in &kept {
                if let Some(frame) = buf.get(offset..offset + len) {
                    clean.extend_from_slice(frame);
                }
            }
            if let Some(offset) = tail_at {
                self.torn_bytes_discarded += read_len - offset as u64;
            }
            self.torn_bytes_discarded += beyond;
            self.corrupt_records_skipped += regions;
            write_atomically(&self.cfg.dir, path, &clean)?;
            bytes = clean.len() as u64;
        } else if tail_at.is_some() || beyond > 0 {
            let keep = tail_at.map_or(read_len, |o| o as u64);
            self.torn_bytes_discarded += file_len - keep;
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_err(path))?;
            file.set_len(keep).map_err(io_err(path))?;
            file.sync_all().map_err(io_err(path))?;
            bytes = keep;
        }
        Ok(Some(Segment {
            first_seq,
            path: path.to_path_buf(),
            bytes,
            records,
            last_seq,
        }))
    }

    /// The largest encoded record this spool takes.
    pub fn record_limit(&self) -> usize {
        let per_segment = self
            .cfg
            .segment_bytes
            .saturating_sub((SEGMENT_MAGIC.len() + FRAME_HEADER_BYTES) as u64);
        MAX_RECORD_BYTES.min(usize::try_from(per_segment).unwrap_or(usize::MAX))
    }

    /// Adds a record and returns its sequence number. It is buffered: durable after the next
    /// [`Spool::sync`]. When the spool is full the oldest segment is dropped first (counted).
    pub fn append(&mut self, recorded_at: i64, body: RecordBody) -> Result<u64, SpoolError> {
        let seq = self.next_seq;
        if seq == u64::MAX {
            // Only a forged segment can get here (2^64 records); never hand out a number twice.
            return Err(SpoolError::SeqExhausted);
        }
        let record = UploadRecord {
            seq,
            recorded_at,
            body,
        };
        let payload = postcard::to_allocvec(&record).map_err(SpoolError::Encode)?;
        let limit = self.record_limit();
        if payload.len() > limit {
            return Err(SpoolError::RecordTooLarge {
                size: payload.len(),
                limit,
            });
        }
        let frame = encode_frame(&payload);
        let frame_len = frame.len() as u64;

        let needs_new = self.rotate_next
            || match self.segments.last() {
                None => true,
                Some(s) => s.bytes + frame_len > self.cfg.segment_bytes,
            };
        if needs_new {
            self.start_segment(seq)?;
        }
        while self.total_bytes() + frame_len > self.cfg.max_bytes && self.segments.len() > 1 {
            self.drop_oldest()?;
        }
        let writer = match &mut self.writer {
            Some(w) => w,
            None => {
                let Some(newest) = self.segments.last() else {
                    return Err(SpoolError::Config("no segment to append to".into()));
                };
                let file = OpenOptions::new()
                    .append(true)
                    .open(&newest.path)
                    .map_err(io_err(&newest.path))?;
                self.writer.insert(BufWriter::with_capacity(64 << 10, file))
            }
        };
        // The sequence number is used up even if the write fails: part of it may be on disk.
        self.next_seq = seq.saturating_add(1);
        if let Err(e) = writer.write_all(&frame) {
            self.poison();
            let path = self.newest_path();
            return Err(io_err(&path)(e));
        }
        let was_empty = self.unacked_records() == 0;
        if let Some(newest) = self.segments.last_mut() {
            newest.bytes += frame_len;
            newest.records += 1;
            newest.last_seq = Some(seq);
        }
        if was_empty {
            self.oldest_recorded_at = Some(recorded_at);
        }
        Ok(seq)
    }

    fn newest_path(&self) -> PathBuf {
        self.segments
            .last()
            .map_or_else(|| self.cfg.dir.clone(), |s| s.path.clone())
    }

    /// Forgets the writer after a failed write without flushing it again; the next append
    /// starts a new segment.
    fn poison(&mut self) {
        if let Some(w) = self.writer.take() {
            let _ = w.into_parts();
        }
        self.rotate_next = true;
        // The newest segment's size on disk is unknown now; take it from the file.
        if let Some(newest) = self.segments.last_mut()
            && let Ok(meta) = fs::metadata(&newest.path)
        {
            newest.bytes = meta.len();
        }
    }

    /// Closes the newest segment (fsynced) and starts one named `first_seq`.
    fn start_segment(&mut self, first_seq: u64) -> Result<(), SpoolError> {
        if self.writer.is_some() {
            self.sync()?;
        }
        self.writer = None;
        self.rotate_next = false;
        let path = self.cfg.dir.join(segment_name(first_seq));
        let file = new_file_options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut writer = BufWriter::with_capacity(64 << 10, file);
        writer.write_all(SEGMENT_MAGIC).map_err(io_err(&path))?;
        sync_dir(&self.cfg.dir)?;
        self.writer = Some(writer);
        self.segments.push(Segment {
            first_seq,
            path,
            bytes: SEGMENT_MAGIC.len() as u64,
            records: 0,
            last_seq: None,
        });
        Ok(())
    }

    /// Writes the buffered batch and fsyncs it: every record appended so far survives a crash.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        let Some(writer) = &mut self.writer else {
            self.synced_through = self.next_seq.saturating_sub(1);
            return Ok(());
        };
        let result = writer.flush().and_then(|()| writer.get_ref().sync_data());
        if let Err(e) = result {
            self.poison();
            let path = self.newest_path();
            return Err(io_err(&path)(e));
        }
        self.synced_through = self.next_seq.saturating_sub(1);
        Ok(())
    }

    fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Records in `s` the hub has not acknowledged (segments hold consecutive numbers except
    /// where a corrupt region was cut out, hence the `min`).
    fn unacked_in(&self, s: &Segment) -> u64 {
        match s.last_seq {
            Some(last) if last > self.acked_through => {
                let first = self.acked_through.saturating_add(1).max(s.first_seq);
                s.records.min(last - first + 1)
            }
            _ => 0,
        }
    }

    fn unacked_records(&self) -> u64 {
        self.segments.iter().map(|s| self.unacked_in(s)).sum()
    }

    fn save_state(&self) -> Result<(), SpoolError> {
        let bytes = encode_state(&State {
            acked_through: self.acked_through,
            next_seq: self.next_seq,
            dropped_records: self.dropped_records,
        });
        write_atomically(&self.cfg.dir, &self.cfg.dir.join(STATE_FILE), &bytes)
    }

    /// Deletes the oldest segment because the spool is full.
    fn drop_oldest(&mut self) -> Result<(), SpoolError> {
        if self.segments.len() < 2 {
            return Ok(());
        }
        let oldest = self.segments.remove(0);
        self.dropped_records += self.unacked_in(&oldest);
        self.save_state()?;
        fs::remove_file(&oldest.path).map_err(io_err(&oldest.path))?;
        sync_dir(&self.cfg.dir)?;
        if self.cursor.is_some_and(|c| c.segment == oldest.first_seq) {
            self.cursor = None;
        }
        self.last_peek_end = None;
        self.refresh_oldest()
    }

    /// Deletes every segment whose records are all acknowledged, except the newest one while
    /// it is being appended to and still empty.
    fn delete_acked_segments(&mut self) -> Result<(), SpoolError> {
        let mut deleted = false;
        let newest = self.segments.len().saturating_sub(1);
        let mut keep = Vec::with_capacity(self.segments.len());
        for (i, s) in std::mem::take(&mut self.segments).into_iter().enumerate() {
            let all_acked = match s.last_seq {
                Some(last) => last <= self.acked_through,
                None => i != newest,
            };
            if all_acked {
                if i == newest {
                    // Its writer holds nothing unsynced: acked records were synced.
                    self.writer = None;
                }
                fs::remove_file(&s.path).map_err(io_err(&s.path))?;
                if self.cursor.is_some_and(|c| c.segment == s.first_seq) {
                    self.cursor = None;
                }
                deleted = true;
            } else {
                keep.push(s);
            }
        }
        self.segments = keep;
        if deleted {
            sync_dir(&self.cfg.dir)?;
        }
        Ok(())
    }

    /// The oldest unacknowledged records, oldest first, without removing them: at most
    /// `max_records`, and at most `max_bytes` of encoded records (but always the first one,
    /// so a record larger than `max_bytes` cannot block the spool). Syncs first, so nothing
    /// returned can be lost by a crash.
    pub fn peek(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<UploadRecord>, SpoolError> {
        if self.synced_through < self.next_seq.saturating_sub(1) {
            self.sync()?;
        }
        let mut out = Vec::new();
        let mut out_bytes = 0usize;
        self.last_peek_end = None;
        if max_records == 0 {
            return Ok(out);
        }
        let mut min_seq = self.acked_through.saturating_add(1);
        let segments: Vec<(u64, PathBuf, u64)> = self
            .segments
            .iter()
            .map(|s| (s.first_seq, s.path.clone(), s.bytes))
            .collect();
        let cursor = self.cursor;
        for (first_seq, path, bytes) in segments {
            let Some(last) = self.segment_last_seq(first_seq) else {
                continue;
            };
            if last <= self.acked_through {
                continue;
            }
            let start = match cursor {
                Some(c) if c.segment == first_seq && c.after_seq == self.acked_through => c.offset,
                _ => SEGMENT_MAGIC.len() as u64,
            };
            let buf = read_capped(&path, start, bytes.min(MAX_SEGMENT_BYTES))?;
            for found in Frames::new(&buf, 0, first_seq) {
                match found {
                    Found::Record {
                        offset,
                        len,
                        record,
                    } => {
                        if record.seq < min_seq {
                            continue;
                        }
                        if !out.is_empty()
                            && (out.len() >= max_records || out_bytes + len > max_bytes)
                        {
                            return Ok(out);
                        }
                        out_bytes += len;
                        min_seq = record.seq.saturating_add(1);
                        self.last_peek_end = Some((
                            record.seq,
                            Cursor {
                                segment: first_seq,
                                offset: start + (offset + len) as u64,
                                after_seq: record.seq,
                            },
                        ));
                        out.push(record);
                    }
                    Found::Corrupt { offset, .. } | Found::Tail { offset } => {
                        if self
                            .known_corrupt
                            .insert((first_seq, start + offset as u64))
                        {
                            self.corrupt_records_skipped += 1;
                        }
                    }
                }
            }
            if out.len() >= max_records {
                break;
            }
        }
        Ok(out)
    }

    fn segment_last_seq(&self, first_seq: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| s.first_seq == first_seq)
            .and_then(|s| s.last_seq)
    }

    /// The hub stored every record up to `stored_through`: they are never sent again, also
    /// after a restart. Clamped to the last record that was synced (and so could have been
    /// sent).
    pub fn ack(&mut self, stored_through: u64) -> Result<(), SpoolError> {
        let target = stored_through.min(self.synced_through);
        if target <= self.acked_through {
            return Ok(());
        }
        self.acked_through = target;
        self.save_state()?;
        self.cursor = match self.last_peek_end {
            Some((seq, c)) if seq == target => Some(c),
            _ => None,
        };
        self.last_peek_end = None;
        self.delete_acked_segments()?;
        self.refresh_oldest()
    }

    /// Finds when the oldest unacknowledged record was recorded.
    fn refresh_oldest(&mut self) -> Result<(), SpoolError> {
        self.oldest_recorded_at = None;
        if self.unacked_records() == 0 {
            return Ok(());
        }
        let keep_cursor = self.last_peek_end;
        let first = self.peek_durable_first()?;
        self.last_peek_end = keep_cursor;
        self.oldest_recorded_at = first.map(|r| r.recorded_at);
        Ok(())
    }

    /// The first unacknowledged record that is on disk (no sync: this runs inside `append`'s
    /// bookkeeping and `open`).
    fn peek_durable_first(&mut self) -> Result<Option<UploadRecord>, SpoolError> {
        if let Some(w) = &mut self.writer {
            let result = w.flush();
            if let Err(e) = result {
                self.poison();
                let path = self.newest_path();
                return Err(io_err(&path)(e));
            }
        }
        let synced = self.synced_through;
        // Pretend everything written is readable; peek only syncs when behind.
        self.synced_through = self.next_seq.saturating_sub(1);
        let first = self.peek(1, usize::MAX);
        self.synced_through = synced;
        Ok(first?.into_iter().next())
    }

    /// What the spool holds and what it lost.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            records: self.unacked_records(),
            bytes: self.total_bytes(),
            dropped_records: self.dropped_records,
            torn_bytes_discarded: self.torn_bytes_discarded,
            corrupt_records_skipped: self.corrupt_records_skipped,
            oldest_recorded_at: self.oldest_recorded_at,
            next_seq: self.next_seq,
            acked_through: self.acked_through,
        }
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }
}
