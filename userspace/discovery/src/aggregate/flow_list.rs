//! The `--flows` list: every record as classified, in input order, for reports that list
//! them one by one.
//!
//! A large input's list does not fit in memory: a 2 GiB log has about ten million records,
//! and a [`FlowRow`] with its strings takes some 470 bytes. So the list keeps at most
//! [`SPILL_ROWS`] rows of each part in memory and writes the rest, postcard-encoded, to
//! unnamed temporary files (`TMPDIR`; removed by the system when the list is dropped or the
//! process ends). Reading the list back (the report writers do, once) decodes them in order.
//!
//! When no temporary file can be made, the rows stay in memory, as they did before this
//! list existed: a report is never lost for want of a spill file.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;

use std::net::IpAddr;

use chrono::{TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer, ser::Error as _};

use super::FlowRow;
use crate::record::{L4Proto, NameSource};

/// Rows of one in-memory run before it goes to a file (~30 MiB of rows): an input of up to
/// this many records never touches a file.
pub const SPILL_ROWS: usize = 1 << 16;

/// Longest encoded row accepted when reading a spill file back (a row's strings are a
/// name, a user, a device, an app, a method and a rule: far below this).
const MAX_ENCODED_ROW: u32 = 1 << 20;

/// The rows, in order, across runs in memory and runs in files.
#[derive(Debug, Default)]
pub struct FlowList {
    runs: Vec<Run>,
    len: u64,
    /// Why a spill failed (later runs then stay in memory).
    spill_error: Option<String>,
}

#[derive(Debug)]
enum Run {
    Memory(Vec<FlowRow>),
    /// `rows` rows, each a little-endian u32 length and that many postcard bytes.
    File {
        file: File,
        rows: u64,
    },
}

impl FlowList {
    pub fn new() -> FlowList {
        FlowList::default()
    }

    /// Rows held.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows now in spill files (the rest are in memory).
    pub fn spilled(&self) -> u64 {
        self.runs
            .iter()
            .map(|r| match r {
                Run::File { rows, .. } => *rows,
                Run::Memory(_) => 0,
            })
            .sum()
    }

    pub fn push(&mut self, row: FlowRow) {
        self.push_with_limit(row, SPILL_ROWS);
    }

    fn push_with_limit(&mut self, row: FlowRow, limit: usize) {
        self.len += 1;
        match self.runs.last_mut() {
            Some(Run::Memory(rows)) => rows.push(row),
            _ => self.runs.push(Run::Memory(vec![row])),
        }
        if self.spill_error.is_none()
            && let Some(last) = self.runs.last_mut()
            && let Run::Memory(rows) = last
            && rows.len() >= limit
        {
            match spill(rows) {
                Ok(file) => {
                    let rows = rows.len() as u64;
                    *last = Run::File { file, rows };
                }
                Err(e) => self.spill_error = Some(e.to_string()),
            }
        }
    }

    /// Why rows could not go to a temporary file (they are then all in memory).
    pub fn spill_error(&self) -> Option<&str> {
        self.spill_error.as_deref()
    }

    /// Appends `other`'s rows after these (a later part of the same input).
    pub fn append(&mut self, other: FlowList) {
        self.len += other.len;
        if self.spill_error.is_none() {
            self.spill_error = other.spill_error;
        }
        self.runs.extend(other.runs);
    }

    /// The rows in order. A spill file that cannot be read back ends the walk with the error.
    pub fn iter(&self) -> Rows<'_> {
        Rows {
            runs: self.runs.iter(),
            current: Current::Done,
        }
    }
}

/// Writes `rows` to a new unnamed temporary file.
fn spill(rows: &[FlowRow]) -> io::Result<File> {
    let file = tempfile::tempfile()?;
    let mut w = BufWriter::with_capacity(1 << 16, &file);
    let mut buf = Vec::with_capacity(512);
    for row in rows {
        buf.clear();
        buf = postcard::to_extend(&encoded(row), buf).map_err(io::Error::other)?;
        let n = u32::try_from(buf.len()).map_err(io::Error::other)?;
        w.write_all(&n.to_le_bytes())?;
        w.write_all(&buf)?;
    }
    w.flush()?;
    drop(w);
    Ok(file)
}

/// A row as written to a spill file: times as seconds and nanoseconds (a row's JSON form
/// spells them as RFC 3339 text, which took most of the time of a spill and its read-back).
type Encoded<'a> = (
    (i64, u32, i64, u32),
    (
        L4Proto,
        IpAddr,
        u16,
        IpAddr,
        u16,
        Option<&'a str>,
        Option<NameSource>,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        u64,
        u64,
        u64,
        u64,
    ),
);

fn encoded(r: &FlowRow) -> Encoded<'_> {
    (
        (
            r.first_seen.timestamp(),
            r.first_seen.timestamp_subsec_nanos(),
            r.last_seen.timestamp(),
            r.last_seen.timestamp_subsec_nanos(),
        ),
        (
            r.proto,
            r.src,
            r.sport,
            r.dst,
            r.dport,
            r.name.as_deref(),
            r.name_source,
            r.user.as_deref(),
            r.device.as_deref(),
            r.app.as_deref(),
            r.matched_by.as_deref(),
            r.rule.as_deref(),
            r.bytes_up,
            r.bytes_down,
            r.packets_up,
            r.packets_down,
        ),
    )
}

fn decoded(bytes: &[u8]) -> io::Result<FlowRow> {
    let bad =
        |m: String| io::Error::new(io::ErrorKind::InvalidData, format!("flow spill file: {m}"));
    let ((fs, fns, ls, lns), rest): Encoded<'_> =
        postcard::from_bytes(bytes).map_err(|e| bad(e.to_string()))?;
    let time = |s: i64, ns: u32| {
        Utc.timestamp_opt(s, ns)
            .single()
            .ok_or_else(|| bad(format!("time {s}.{ns:09} out of range")))
    };
    let own = |s: Option<&str>| s.map(str::to_owned);
    Ok(FlowRow {
        first_seen: time(fs, fns)?,
        last_seen: time(ls, lns)?,
        proto: rest.0,
        src: rest.1,
        sport: rest.2,
        dst: rest.3,
        dport: rest.4,
        name: own(rest.5),
        name_source: rest.6,
        user: own(rest.7),
        device: own(rest.8),
        app: own(rest.9),
        matched_by: own(rest.10),
        rule: own(rest.11),
        bytes_up: rest.12,
        bytes_down: rest.13,
        packets_up: rest.14,
        packets_down: rest.15,
    })
}

/// Reads a file from an offset of its own (positional reads: any number of walks at once).
struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

enum Current<'a> {
    Memory(std::slice::Iter<'a, FlowRow>),
    File {
        reader: BufReader<At<'a>>,
        left: u64,
        buf: Vec<u8>,
    },
    Done,
}

/// The walk of [`FlowList::iter`].
pub struct Rows<'a> {
    runs: std::slice::Iter<'a, Run>,
    current: Current<'a>,
}

impl Iterator for Rows<'_> {
    type Item = io::Result<FlowRow>;

    fn next(&mut self) -> Option<io::Result<FlowRow>> {
        loop {
            match &mut self.current {
                Current::Memory(it) => {
                    if let Some(row) = it.next() {
                        return Some(Ok(row.clone()));
                    }
                }
                Current::File { reader, left, buf } if *left > 0 => {
                    *left -= 1;
                    let row = read_row(reader, buf);
                    if row.is_err() {
                        // Nothing after a bad row can be placed: the walk ends here.
                        self.runs = [].iter();
                        self.current = Current::Done;
                    }
                    return Some(row);
                }
                _ => {}
            }
            self.current = match self.runs.next()? {
                Run::Memory(rows) => Current::Memory(rows.iter()),
                Run::File { file, rows } => Current::File {
                    reader: BufReader::with_capacity(1 << 16, At { file, pos: 0 }),
                    left: *rows,
                    buf: Vec::new(),
                },
            };
        }
    }
}

fn read_row(reader: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<FlowRow> {
    let mut n = [0u8; 4];
    reader.read_exact(&mut n)?;
    let n = u32::from_le_bytes(n);
    if n > MAX_ENCODED_ROW {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("flow spill file: a row of {n} bytes"),
        ));
    }
    buf.resize(n as usize, 0);
    reader.read_exact(buf)?;
    decoded(buf)
}

impl From<Vec<FlowRow>> for FlowList {
    fn from(rows: Vec<FlowRow>) -> FlowList {
        FlowList {
            len: rows.len() as u64,
            runs: if rows.is_empty() {
                Vec::new()
            } else {
                vec![Run::Memory(rows)]
            },
            spill_error: None,
        }
    }
}

impl Clone for FlowList {
    /// Spill files are shared (they are only read, by position).
    fn clone(&self) -> FlowList {
        let runs = self
            .runs
            .iter()
            .map(|r| match r {
                Run::Memory(rows) => Ok(Run::Memory(rows.clone())),
                Run::File { file, rows } => {
                    file.try_clone().map(|file| Run::File { file, rows: *rows })
                }
            })
            .collect::<io::Result<Vec<Run>>>();
        match runs {
            Ok(runs) => FlowList {
                runs,
                len: self.len,
                spill_error: self.spill_error.clone(),
            },
            // No descriptor for a shared file: a copy in memory.
            Err(_) => FlowList::from(self.iter().filter_map(Result::ok).collect::<Vec<_>>()),
        }
    }
}

impl PartialEq for FlowList {
    fn eq(&self, other: &FlowList) -> bool {
        self.len == other.len
            && self
                .iter()
                .zip(other.iter())
                .all(|(a, b)| matches!((a, b), (Ok(a), Ok(b)) if a == b))
    }
}

impl Serialize for FlowList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(usize::try_from(self.len).ok())?;
        for row in self.iter() {
            seq.serialize_element(&row.map_err(S::Error::custom)?)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for FlowList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<FlowList, D::Error> {
        Vec::<FlowRow>::deserialize(d).map(FlowList::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: u64) -> FlowRow {
        FlowRow {
            first_seen: Utc.timestamp_opt(1_700_000_000 + i as i64, 0).unwrap(),
            last_seen: Utc.timestamp_opt(1_700_000_001 + i as i64, 5_000).unwrap(),
            proto: if i.is_multiple_of(2) {
                L4Proto::Tcp
            } else {
                L4Proto::Udp
            },
            src: std::net::Ipv4Addr::new(10, 0, 0, (i % 250) as u8).into(),
            sport: 40_000 + (i % 1000) as u16,
            dst: "2001:db8::1".parse().unwrap(),
            dport: 443,
            name: (!i.is_multiple_of(3)).then(|| format!("host{i}.example.com")),
            name_source: (!i.is_multiple_of(3)).then_some(NameSource::Sni),
            user: (i.is_multiple_of(5)).then(|| "alice".to_owned()),
            device: None,
            app: (i.is_multiple_of(7)).then(|| "dropbox".to_owned()),
            matched_by: (i.is_multiple_of(7)).then(|| "sni".to_owned()),
            rule: (i.is_multiple_of(7)).then(|| "*.dropbox.com".to_owned()),
            bytes_up: i * 3,
            bytes_down: i * 1000,
            packets_up: i,
            packets_down: u64::MAX - i,
        }
    }

    fn list(rows: std::ops::Range<u64>, limit: usize) -> FlowList {
        let mut l = FlowList::new();
        for i in rows {
            l.push_with_limit(row(i), limit);
        }
        l
    }

    #[test]
    fn spilled_rows_read_back_in_order_and_unchanged() {
        let l = list(0..1000, 64);
        assert_eq!(l.len(), 1000);
        assert_eq!(
            l.spilled(),
            960,
            "full runs went to files; the last 40 stay in memory"
        );
        let back: Vec<FlowRow> = l.iter().map(|r| r.expect("row")).collect();
        assert_eq!(back, (0..1000).map(row).collect::<Vec<_>>());
        // A second walk (and one of a clone) gives the same rows.
        assert_eq!(l.iter().count(), 1000);
        assert_eq!(l.clone(), l);
    }

    #[test]
    fn appended_parts_keep_input_order() {
        let mut a = list(0..150, 64);
        let b = list(150..300, 64);
        a.append(b);
        let whole = list(0..300, 1 << 20);
        assert_eq!(whole.spilled(), 0);
        assert_eq!(a, whole);
    }

    #[test]
    fn json_is_the_plain_list() {
        let l = list(0..10, 4);
        let json = serde_json::to_value(&l).unwrap();
        let plain = serde_json::to_value((0..10).map(row).collect::<Vec<_>>()).unwrap();
        assert_eq!(json, plain);
        let back: FlowList = serde_json::from_value(json).unwrap();
        assert_eq!(back, l);
    }

    /// A spill file that was cut or overwritten ends the walk with an error, not a panic or
    /// made-up rows.
    #[test]
    fn a_damaged_spill_file_is_an_error() {
        let l = list(0..8, 4);
        let Some(Run::File { file, .. }) = l.runs.first() else {
            panic!("first run spilled");
        };
        file.write_all_at(&u32::MAX.to_le_bytes(), 0).unwrap();
        let mut it = l.iter();
        let err = it.next().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(it.next().is_none(), "the walk ends at the damage");

        let l = list(0..8, 4);
        let Some(Run::File { file, .. }) = l.runs.first() else {
            panic!("first run spilled");
        };
        file.set_len(10).unwrap();
        assert!(l.iter().next().unwrap().is_err());
        assert!(
            serde_json::to_string(&l).is_err(),
            "a report is not written from it"
        );
    }
}
