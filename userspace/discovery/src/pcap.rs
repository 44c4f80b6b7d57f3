//! Offline discovery from capture files: pcap (any byte order, µs or ns) and pcapng (any
//! number of interfaces, each with its own link type and timestamp resolution) are read
//! with the `pcap-file` crate, decoded by [`crate::packet`] and fed to a [`FlowTable`].

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgParser};
use thiserror::Error;

use crate::flow_table::FlowTable;
use crate::packet::{Decoded, LinkType, PacketView, decode};

mod sharded;
pub use sharded::{PARALLEL_MIN_BYTES, import_pcap_threads, import_pcap_threads_from};

/// Where frames go: the flow table, or a worker of a sharded import.
trait Sink {
    fn packet(&mut self, p: &PacketView<'_>);
    /// One captured frame: counted in `stats`, and its packet, if it decodes to one, to
    /// [`Sink::packet`].
    fn frame(&mut self, stats: &mut PcapStats, link: LinkType, data: &[u8], ts: DateTime<Utc>)
    where
        Self: Sized,
    {
        decode_frame(stats, self, link, data, ts);
    }
    /// The import stops before the next record (a sharded import whose workers failed).
    fn stopped(&self) -> bool {
        false
    }
}

impl Sink for FlowTable {
    fn packet(&mut self, p: &PacketView<'_>) {
        self.observe_packet(p);
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PcapStats {
    /// "pcap" or "pcapng".
    pub format: &'static str,
    pub frames: u64,
    /// TCP/UDP packets handed to the flow table.
    pub packets: u64,
    /// Non-first IP fragments (counted, not decoded).
    pub fragments: u64,
    /// Frames that are not TCP/UDP over IP (ARP, ICMP, unknown link types...).
    pub other: u64,
    /// Frames whose headers do not parse.
    pub malformed: u64,
    /// Bytes of captured frame data read.
    pub captured_bytes: u64,
    /// The file ended in the middle of a record (or a later block was corrupt): what came
    /// before it was imported.
    pub truncated: bool,
}

#[derive(Debug, Error)]
pub enum PcapError {
    #[error("{}: cannot open: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a pcap or pcapng file: {source}", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: pcap_file::PcapError,
    },
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A thread of a sharded import stopped (it panicked): the import has no result.
    #[error("{}: import failed: {reason}", path.display())]
    Worker { path: PathBuf, reason: String },
}

impl PcapError {
    /// The `Format` error of `path`, for `map_err`.
    fn format(path: &Path) -> impl Fn(pcap_file::PcapError) -> PcapError + Copy + '_ {
        move |source| PcapError::Format {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The `Read` error of `path`, for `map_err`.
    fn read(path: &Path) -> impl Fn(std::io::Error) -> PcapError + Copy + '_ {
        move |source| PcapError::Read {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Bytes read at a time: captures are streamed through one buffer of this size, parsed in
/// place (reading a file whole into fresh memory cost more in page faults than the parsing;
/// pcap-file's own readers zero an 8 MB buffer per file).
pub const READ_CHUNK: usize = 1 << 20;
/// The buffer grows to hold one record larger than [`READ_CHUNK`], up to this size; a larger
/// record ends the import as truncated.
pub const MAX_RECORD: usize = 64 << 20;

/// Import a pcap or pcapng file (told apart by its magic number).
pub fn import_pcap(path: &Path, table: &mut FlowTable) -> Result<PcapStats, PcapError> {
    let c = open_capture(path)?;
    import_reader(path, c.reader, c.pcapng, table)
}

/// A capture file opened for streaming: its bytes (magic number included), its kind, its size.
struct Capture {
    reader: std::io::Chain<std::io::Take<std::io::Cursor<[u8; 4]>>, File>,
    pcapng: bool,
    size: u64,
}

fn open_capture(path: &Path) -> Result<Capture, PcapError> {
    let open_err = |source| PcapError::Open {
        path: path.to_path_buf(),
        source,
    };
    let read_err = PcapError::read(path);
    let mut file = File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let mut magic = [0u8; 4];
    let n = read_full(&mut file, &mut magic).map_err(read_err)?;
    let head = std::io::Cursor::new(magic).take(n as u64);
    Ok(Capture {
        reader: head.chain(file),
        pcapng: magic == PCAPNG_MAGIC,
        size,
    })
}

/// Reads until `buf` is full or the input ends (a magic number, a header); how many bytes.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while let Some(rest) = buf.get_mut(n..).filter(|r| !r.is_empty()) {
        match r.read(rest) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A reader's bytes in one reusable buffer: `data()` is what is read and not yet consumed.
struct Chunks<R> {
    r: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: Read> Chunks<R> {
    fn new(r: R, chunk: usize) -> Self {
        Chunks {
            r,
            buf: vec![0; chunk.max(1)],
            start: 0,
            end: 0,
        }
    }

    fn data(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or(&[])
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Reads more after what is held (moving it to the front, growing the buffer when it is
    /// full). `false` at the end of the input, or when a record would not fit `MAX_RECORD`.
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= MAX_RECORD {
                return Ok(false);
            }
            let grown = (self.buf.len() * 2).min(MAX_RECORD);
            self.buf.resize(grown, 0);
        }
        loop {
            let room = self.buf.get_mut(self.end..).unwrap_or(&mut []);
            match self.r.read(room) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Import a capture held in memory; `path` only names the source in errors.
pub fn import_bytes(
    path: &Path,
    data: &[u8],
    table: &mut FlowTable,
) -> Result<PcapStats, PcapError> {
    let fmt_err = PcapError::format(path);
    let mut stats = PcapStats::default();
    if data.starts_with(&PCAPNG_MAGIC) {
        stats.format = "pcapng";
        let (mut rest, mut parser) = PcapNgParser::new(data).map_err(fmt_err)?;
        let mut ng = NgState::default();
        while !rest.is_empty() {
            match parser.next_block(rest) {
                Ok((r, block)) => {
                    rest = r;
                    ng.block(&mut stats, table, block);
                }
                Err(_) => {
                    stats.truncated = true;
                    break;
                }
            }
        }
    } else {
        stats.format = "pcap";
        let (mut rest, parser) = PcapParser::new(data).map_err(fmt_err)?;
        let link = LinkType::from_linktype(u32::from(parser.header().datalink));
        while !rest.is_empty() {
            match parser.next_packet(rest) {
                Ok((r, pkt)) => {
                    rest = r;
                    feed_pcap(&mut stats, table, link, &pkt);
                }
                Err(_) => {
                    stats.truncated = true;
                    break;
                }
            }
        }
    }
    Ok(stats)
}

/// Per-section pcapng state: each interface's link type and timestamp units per second.
#[derive(Default)]
struct NgState {
    ifaces: Vec<(LinkType, u64)>,
}

impl NgState {
    fn block<S: Sink>(&mut self, stats: &mut PcapStats, table: &mut S, block: Block<'_>) {
        match block {
            Block::SectionHeader(_) => self.ifaces.clear(),
            Block::InterfaceDescription(idb) => {
                let mut units = 1_000_000u64;
                for opt in &idb.options {
                    if let InterfaceDescriptionOption::IfTsResol(v) = opt {
                        units = tsresol_units(*v);
                    }
                }
                self.ifaces
                    .push((LinkType::from_linktype(u32::from(idb.linktype)), units));
            }
            Block::EnhancedPacket(epb) => {
                let (link, units) = self
                    .ifaces
                    .get(epb.interface_id as usize)
                    .copied()
                    .unwrap_or((LinkType::Ethernet, 1_000_000));
                // pcap-file reports the raw timestamp as nanoseconds; rescale by the
                // interface's resolution.
                let raw = u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX);
                table.frame(stats, link, &epb.data, ts_from_units(raw, units));
            }
            Block::SimplePacket(spb) => {
                let link = self.ifaces.first().map_or(LinkType::Ethernet, |i| i.0);
                table.frame(stats, link, &spb.data, DateTime::UNIX_EPOCH);
            }
            Block::Packet(pb) => {
                let (link, units) = self
                    .ifaces
                    .get(usize::from(pb.interface_id))
                    .copied()
                    .unwrap_or((LinkType::Ethernet, 1_000_000));
                table.frame(stats, link, &pb.data, ts_from_units(pb.timestamp, units));
            }
            _ => {}
        }
    }
}

/// Import from any reader; `path` only names the source in errors. The capture is streamed
/// through one buffer of [`READ_CHUNK`] bytes.
pub fn import_reader<R: Read>(
    path: &Path,
    reader: R,
    pcapng: bool,
    table: &mut FlowTable,
) -> Result<PcapStats, PcapError> {
    import_stream(path, reader, pcapng, table, READ_CHUNK)
}

/// [`import_reader`] with a buffer of `chunk` bytes to start with (tests and the fuzz target
/// use tiny ones to put a buffer edge inside every header and record).
pub fn import_stream<R: Read>(
    path: &Path,
    reader: R,
    pcapng: bool,
    table: &mut FlowTable,
    chunk: usize,
) -> Result<PcapStats, PcapError> {
    stream_into(path, reader, pcapng, table, chunk)
}

/// [`import_stream`] into any [`Sink`].
fn stream_into<R: Read, S: Sink>(
    path: &Path,
    reader: R,
    pcapng: bool,
    table: &mut S,
    chunk: usize,
) -> Result<PcapStats, PcapError> {
    use pcap_file::PcapError as Parse;
    let fmt_err = PcapError::format(path);
    let read_err = PcapError::read(path);
    let mut stats = PcapStats::default();
    let mut ch = Chunks::new(reader, chunk);
    // The file header (pcap: 24 bytes; pcapng: the whole section header block).
    let (used, mut ng, classic) = loop {
        let data = ch.data();
        let parsed = if pcapng {
            PcapNgParser::new(data).map(|(rest, p)| (data.len() - rest.len(), Some(p), None))
        } else {
            PcapParser::new(data).map(|(rest, p)| (data.len() - rest.len(), None, Some(p)))
        };
        match parsed {
            Ok(v) => break v,
            Err(Parse::IncompleteBuffer) if ch.fill().map_err(read_err)? => {}
            Err(e) => return Err(fmt_err(e)),
        }
    };
    ch.consume(used);
    let mut state = NgState::default();
    let link = classic
        .as_ref()
        .map(|p| LinkType::from_linktype(u32::from(p.header().datalink)));
    stats.format = if pcapng { "pcapng" } else { "pcap" };
    loop {
        if table.stopped() {
            break;
        }
        let data = ch.data();
        if data.is_empty() {
            if ch.fill().map_err(read_err)? {
                continue;
            }
            break;
        }
        let step = match (&mut ng, &classic, link) {
            (Some(parser), _, _) => parser.next_block(data).map(|(rest, block)| {
                state.block(&mut stats, table, block);
                data.len() - rest.len()
            }),
            (None, Some(parser), Some(link)) => parser.next_packet(data).map(|(rest, pkt)| {
                feed_pcap(&mut stats, table, link, &pkt);
                data.len() - rest.len()
            }),
            _ => break,
        };
        match step {
            Ok(n) => ch.consume(n),
            Err(Parse::IncompleteBuffer) => {
                if !ch.fill().map_err(read_err)? {
                    stats.truncated = true;
                    break;
                }
            }
            Err(_) => {
                stats.truncated = true;
                break;
            }
        }
    }
    Ok(stats)
}

/// One classic pcap record.
fn feed_pcap<S: Sink>(
    stats: &mut PcapStats,
    table: &mut S,
    link: LinkType,
    pkt: &pcap_file::pcap::PcapPacket<'_>,
) {
    table.frame(stats, link, &pkt.data, to_datetime(pkt.timestamp));
}

/// What a frame is, counted; its packet to the sink.
fn decode_frame<S: Sink>(
    stats: &mut PcapStats,
    table: &mut S,
    link: LinkType,
    data: &[u8],
    ts: DateTime<Utc>,
) {
    stats.frames += 1;
    stats.captured_bytes += data.len() as u64;
    match decode(link, data, ts) {
        Decoded::Packet(p) => {
            stats.packets += 1;
            table.packet(&p);
        }
        Decoded::Fragment => stats.fragments += 1,
        Decoded::Other => stats.other += 1,
        Decoded::Malformed => stats.malformed += 1,
    }
}

fn tsresol_units(v: u8) -> u64 {
    if v & 0x80 == 0 {
        10u64.checked_pow(u32::from(v)).unwrap_or(1_000_000)
    } else {
        1u64.checked_shl(u32::from(v & 0x7f)).unwrap_or(1_000_000)
    }
}

fn ts_from_units(raw: u64, units_per_sec: u64) -> DateTime<Utc> {
    let units = units_per_sec.max(1);
    let secs = raw / units;
    let frac = raw % units;
    let nanos = (u128::from(frac) * 1_000_000_000 / u128::from(units)) as u64;
    to_datetime(Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

fn to_datetime(d: Duration) -> DateTime<Utc> {
    i64::try_from(d.as_secs())
        .ok()
        .and_then(|s| DateTime::from_timestamp(s, d.subsec_nanos()))
        .unwrap_or(DateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow_table::FlowTableLimits;

    #[test]
    fn missing_file_names_it() {
        let mut t = FlowTable::new(FlowTableLimits::default());
        let e = import_pcap(Path::new("/nonexistent/x.pcap"), &mut t).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.pcap"), "{e}");
    }

    #[test]
    fn garbage_is_a_format_error() {
        let mut t = FlowTable::new(FlowTableLimits::default());
        let e = import_reader(
            Path::new("junk.bin"),
            &b"hello world, not a pcap"[..],
            false,
            &mut t,
        )
        .unwrap_err();
        assert!(matches!(e, PcapError::Format { .. }));
        assert!(e.to_string().contains("junk.bin"));
    }

    /// The streamed import, with buffers small enough to put a chunk edge everywhere (inside
    /// headers, records and the file header), gives what parsing the whole file in memory
    /// gives: for whole captures and for captures cut short in the middle of a record.
    #[test]
    fn streaming_in_tiny_chunks_matches_the_in_memory_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/pcap");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("testdata")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
            .collect();
        files.sort();
        assert!(files.len() >= 2);
        let ng = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/corpus/ndpi/pcap/sites.pcapng");
        if ng.is_file() {
            files.push(ng);
        } else {
            eprintln!("corpus absent: the pcapng case is skipped");
        }
        for f in files {
            let whole = std::fs::read(&f).expect("read");
            for data in [&whole[..], &whole[..whole.len() * 2 / 3]] {
                let mut a = FlowTable::new(FlowTableLimits::default());
                let want = import_bytes(&f, data, &mut a).expect("in memory");
                let ng = data.starts_with(&PCAPNG_MAGIC);
                for chunk in [1, 7, 100, 4096, READ_CHUNK] {
                    let mut b = FlowTable::new(FlowTableLimits::default());
                    let got = import_stream(&f, data, ng, &mut b, chunk).expect("streamed");
                    assert_eq!(got, want, "{} in chunks of {chunk}", f.display());
                    assert_eq!(
                        b.records().count(),
                        a.records().count(),
                        "{} in chunks of {chunk}",
                        f.display()
                    );
                }
            }
        }
    }

    #[test]
    fn tsresol() {
        assert_eq!(tsresol_units(6), 1_000_000);
        assert_eq!(tsresol_units(9), 1_000_000_000);
        assert_eq!(tsresol_units(0x80 | 10), 1024);
        let t = ts_from_units(1_500_000, 1_000_000);
        assert_eq!(t.timestamp(), 1);
        assert_eq!(t.timestamp_subsec_micros(), 500_000);
    }
}
