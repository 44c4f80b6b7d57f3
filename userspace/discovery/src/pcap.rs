//! Offline discovery from capture files: pcap (any byte order, µs or ns) and pcapng (any
//! number of interfaces, each with its own link type and timestamp resolution) are read
//! with the `pcap-file` crate, decoded by [`crate::packet`] and fed to a [`FlowTable`].

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pcap_file::pcap::{PcapParser, PcapReader};
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgParser, PcapNgReader};
use thiserror::Error;

use crate::flow_table::FlowTable;
use crate::packet::{Decoded, LinkType, decode};

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
}

/// Files up to this size are read whole and parsed in place; larger ones are streamed.
/// (pcap-file's streaming readers zero an 8 MB buffer per file, which dominates the cost of
/// the small captures that are the common case.)
pub const IN_MEMORY_MAX: u64 = 256 * 1024 * 1024;

/// Read a pcap or pcapng file into `table`. An unreadable or non-capture file is an error
/// naming the file; a file cut short imports what it holds (`truncated` is set).
pub fn import_pcap(path: &Path, table: &mut FlowTable) -> Result<PcapStats, PcapError> {
    let open_err = |source| PcapError::Open {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(open_err)?.len();
    if len <= IN_MEMORY_MAX {
        let data = std::fs::read(path).map_err(|source| PcapError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        return import_bytes(path, &data, table);
    }
    let file = File::open(path).map_err(open_err)?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut magic = [0u8; 4];
    reader
        .read_exact(&mut magic)
        .map_err(|source| PcapError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let chained = std::io::Cursor::new(magic).chain(reader);
    import_reader(path, chained, magic == PCAPNG_MAGIC, table)
}

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Import a capture held in memory; `path` only names the source in errors.
pub fn import_bytes(
    path: &Path,
    data: &[u8],
    table: &mut FlowTable,
) -> Result<PcapStats, PcapError> {
    let fmt_err = |source| PcapError::Format {
        path: path.to_path_buf(),
        source,
    };
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
                    feed(
                        &mut stats,
                        table,
                        link,
                        &pkt.data,
                        to_datetime(pkt.timestamp),
                    );
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
    fn block(&mut self, stats: &mut PcapStats, table: &mut FlowTable, block: Block<'_>) {
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
                feed(stats, table, link, &epb.data, ts_from_units(raw, units));
            }
            Block::SimplePacket(spb) => {
                let link = self.ifaces.first().map_or(LinkType::Ethernet, |i| i.0);
                feed(stats, table, link, &spb.data, DateTime::UNIX_EPOCH);
            }
            Block::Packet(pb) => {
                let (link, units) = self
                    .ifaces
                    .get(usize::from(pb.interface_id))
                    .copied()
                    .unwrap_or((LinkType::Ethernet, 1_000_000));
                feed(
                    stats,
                    table,
                    link,
                    &pb.data,
                    ts_from_units(pb.timestamp, units),
                );
            }
            _ => {}
        }
    }
}

/// Import from any reader; `path` only names the source in errors.
pub fn import_reader<R: Read>(
    path: &Path,
    reader: R,
    pcapng: bool,
    table: &mut FlowTable,
) -> Result<PcapStats, PcapError> {
    let fmt_err = |source| PcapError::Format {
        path: path.to_path_buf(),
        source,
    };
    let mut stats = PcapStats::default();
    if pcapng {
        stats.format = "pcapng";
        let mut r = PcapNgReader::new(reader).map_err(fmt_err)?;
        let mut ng = NgState::default();
        while let Some(block) = r.next_block() {
            match block {
                Ok(b) => ng.block(&mut stats, table, b),
                Err(_) => {
                    stats.truncated = true;
                    break;
                }
            }
        }
    } else {
        stats.format = "pcap";
        let mut r = PcapReader::new(reader).map_err(fmt_err)?;
        let link = LinkType::from_linktype(u32::from(r.header().datalink));
        while let Some(pkt) = r.next_packet() {
            let pkt = match pkt {
                Ok(p) => p,
                Err(_) => {
                    stats.truncated = true;
                    break;
                }
            };
            let ts = to_datetime(pkt.timestamp);
            feed(&mut stats, table, link, &pkt.data, ts);
        }
    }
    Ok(stats)
}

fn feed(
    stats: &mut PcapStats,
    table: &mut FlowTable,
    link: LinkType,
    data: &[u8],
    ts: DateTime<Utc>,
) {
    stats.frames += 1;
    stats.captured_bytes += data.len() as u64;
    match decode(link, data, ts) {
        Decoded::Packet(p) => {
            stats.packets += 1;
            table.observe_packet(&p);
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
