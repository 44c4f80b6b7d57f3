//! The continuous collector behind `tollgate collect`: syslog frames (from a
//! [`super::Receiver`]) and watched directories ([`super::tail::Tailer`]) through the same
//! detection and parsers as `discover`, into one [`Aggregator`] and periodic Cloud Discovery
//! reports.
//!
//! **Exactly once across restarts.** Every record goes into a journal (`records.jsonl`,
//! one JSON line per record with its source) before it counts; then the state file
//! (`state.json`: the journal's committed length, each file's offset and fingerprint, each
//! source's counts) is replaced atomically. On start the journal is cut back to the
//! committed length (records written after the last commit belong to lines whose offsets
//! were not committed, so they will be read again) and replayed into the aggregator. A
//! SIGKILL at any point therefore neither loses nor doubles a file's line. Syslog frames
//! still in the receiver's queue or being detected at a kill are lost, as with any syslog
//! receiver (the sender has no way to resend them).
//!
//! **A corrupt state file** stops the start with an error naming the file and is left as
//! it is: starting from 0 would double every line, starting from the end would lose the
//! unread ones, and the admin decides (remove the file to read every watched file again).
//!
//! **Syslog sources** are keyed by listener, sender address and syslog app name (one
//! device may send several logs), capped at `max_sources` (more share one `other` source).
//! A source's format is set by its listener or detected from its first lines, with and
//! without the syslog header; whichever matches more lines decides whether the header is
//! stripped before parsing (a relay such as rsyslog puts its own header before the
//! device's line).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tollgate_catalog::Catalog;
use tollgate_discovery::aggregate::{AggregateOptions, Aggregator};
use tollgate_discovery::record::{FlowRecord, InputStats};
use tollgate_discovery::report::{DiscoveryReport, ReportFormat, Window};
use tollgate_discovery::users::Users;

use super::tail::{FileState, TailCounters, Tailer, WatchSpec};
use super::{Received, Transport, strip_header};
use crate::{CustomFormat, SNIFF_LINES, StreamParser};

/// The state file's name in the state directory.
pub const STATE_FILE: &str = "state.json";
/// The journal's name in the state directory.
pub const JOURNAL_FILE: &str = "records.jsonl";

/// How the collector runs.
#[derive(Debug, Clone)]
pub struct CollectorOptions {
    /// Journal and state (offsets).
    pub state_dir: PathBuf,
    /// Reports (`discovery.json`, ...) and `status.json`.
    pub output_dir: PathBuf,
    pub report_formats: Vec<ReportFormat>,
    pub watch: Vec<WatchSpec>,
    /// Format per listener (`None`: detect per source).
    pub syslog_format: BTreeMap<Transport, Option<String>>,
    pub custom: Vec<CustomFormat>,
    pub max_bad_lines: usize,
    /// Distinct syslog sources kept apart; more share one.
    pub max_sources: usize,
    /// A syslog source with fewer lines than detection wants waits this long for more.
    pub detect_wait: std::time::Duration,
    /// Sanction tags per app id, shown in the reports.
    pub tags: BTreeMap<String, String>,
}

impl Default for CollectorOptions {
    fn default() -> Self {
        CollectorOptions {
            state_dir: PathBuf::from("."),
            output_dir: PathBuf::from("."),
            report_formats: vec![ReportFormat::Json],
            watch: Vec::new(),
            syslog_format: BTreeMap::new(),
            custom: Vec::new(),
            max_bad_lines: crate::DEFAULT_MAX_BAD_LINES,
            max_sources: 1024,
            detect_wait: std::time::Duration::from_secs(2),
            tags: BTreeMap::new(),
        }
    }
}

/// Errors that stop the collector from starting or going on.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(
        "{path}: the collector's state is unreadable ({reason}); it is left as it is. \
         Remove it to read every watched file again from its start (lines already counted \
         are then counted again), or restore it from a backup"
    )]
    CorruptState { path: PathBuf, reason: String },
    #[error(
        "{path}: the journal holds {have} bytes but the state says {want} were committed; \
         it was cut or replaced, refusing to go on"
    )]
    ShortJournal { path: PathBuf, have: u64, want: u64 },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SyslogState {
    transport: Transport,
    key: String,
    strip: bool,
    format: Option<String>,
    stats: InputStats,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    journal_len: u64,
    files: Vec<FileState>,
    syslog: Vec<SyslogState>,
}

#[derive(Serialize, Deserialize)]
struct JournalLine<'a> {
    s: std::borrow::Cow<'a, str>,
    r: FlowRecord,
}

struct SyslogSource {
    transport: Transport,
    key: String,
    /// `syslog/<transport>/<key>`.
    label: String,
    parser: Option<StreamParser>,
    strip: bool,
    /// Counts while no parser is set (lines of failed detections).
    stats: InputStats,
    pending: Vec<String>,
    pending_since: Option<std::time::Instant>,
}

impl SyslogSource {
    fn label(&self) -> String {
        self.label.clone()
    }
    fn stats(&self) -> InputStats {
        self.parser
            .as_ref()
            .map_or_else(|| self.stats.clone(), |p| p.stats.clone())
    }
}

/// What one tick did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickStats {
    pub frames: u64,
    pub records: u64,
    pub committed: bool,
}

/// Everything counted so far, for `status.json`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CollectorStatus {
    pub records: u64,
    pub replayed: u64,
    pub journal_bad_lines: u64,
    pub syslog_sources: usize,
    pub files: usize,
    pub tail: TailCounters,
}

/// The continuous collector.
pub struct Collector<'c> {
    opts: CollectorOptions,
    custom: &'static [CustomFormat],
    tail: Tailer,
    syslog: BTreeMap<(Transport, String), SyslogSource>,
    journal: std::fs::File,
    journal_len: u64,
    agg: Aggregator,
    catalog: &'c Catalog,
    users: &'c Users,
    status: CollectorStatus,
    forward: Option<Forward<'c>>,
}

/// Where each committed record goes as well (the daemon's discovery and hub uploads).
pub type Forward<'c> = Box<dyn FnMut(&FlowRecord) + Send + 'c>;

fn io<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> CollectError + 'p {
    move |source| CollectError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Write `bytes` as `dir/name` durably: a fresh temporary file, fsynced, renamed over the
/// old one, the directory fsynced. Readers see the old file or the new one, never a part.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl<'c> Collector<'c> {
    /// Open the state directory: load the state, cut the journal back to what was
    /// committed, replay it.
    pub fn open(
        opts: CollectorOptions,
        catalog: &'c Catalog,
        users: &'c Users,
    ) -> Result<Collector<'c>, CollectError> {
        for c in &opts.custom {
            c.validate()
                .map_err(|e| CollectError::Config(e.to_string()))?;
        }
        // The collector's own copy of the custom formats, kept for its life (parsers borrow it).
        let custom: &'static [CustomFormat] = Box::leak(opts.custom.clone().into_boxed_slice());
        let forced = opts
            .syslog_format
            .values()
            .flatten()
            .chain(opts.watch.iter().filter_map(|w| w.format.as_ref()));
        for f in forced {
            StreamParser::named(f, "config", custom, 0)
                .map_err(|e| CollectError::Config(e.to_string()))?;
        }
        std::fs::create_dir_all(&opts.state_dir).map_err(io("creating", &opts.state_dir))?;
        std::fs::create_dir_all(&opts.output_dir).map_err(io("creating", &opts.output_dir))?;
        let state_path = opts.state_dir.join(STATE_FILE);
        let state: StateFile = match std::fs::read(&state_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| CollectError::CorruptState {
                path: state_path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(e) => return Err(io("reading", &state_path)(e)),
        };
        if state.version > 1 {
            return Err(CollectError::CorruptState {
                path: state_path,
                reason: format!("version {} is newer than this collector's", state.version),
            });
        }
        let jpath = opts.state_dir.join(JOURNAL_FILE);
        let journal = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&jpath)
            .map_err(io("opening", &jpath))?;
        let have = journal.metadata().map_err(io("reading", &jpath))?.len();
        if have < state.journal_len {
            return Err(CollectError::ShortJournal {
                path: jpath,
                have,
                want: state.journal_len,
            });
        }
        if have > state.journal_len {
            // Written after the last commit: those lines are read again.
            journal
                .set_len(state.journal_len)
                .map_err(io("cutting", &jpath))?;
        }
        let mut agg = Aggregator::new(AggregateOptions::default());
        let mut status = CollectorStatus::default();
        {
            let r = std::fs::File::open(&jpath).map_err(io("reading", &jpath))?;
            let r = std::io::BufReader::new(std::io::Read::take(r, state.journal_len));
            for line in r.lines() {
                let line = line.map_err(io("reading", &jpath))?;
                match serde_json::from_str::<JournalLine<'_>>(&line) {
                    Ok(j) => {
                        agg.add(&j.r, catalog, users);
                        status.replayed += 1;
                    }
                    Err(_) => status.journal_bad_lines += 1,
                }
            }
        }
        status.records = status.replayed;
        let tail = Tailer::new(opts.watch.clone(), custom, opts.max_bad_lines, state.files);
        let mut syslog = BTreeMap::new();
        for s in state.syslog {
            let parser = s.format.as_deref().and_then(|f| {
                let label = format!("syslog/{}/{}", s.transport.name(), s.key);
                let mut p = StreamParser::named(f, &label, custom, opts.max_bad_lines).ok()?;
                p.restore(s.stats.clone());
                Some(p)
            });
            syslog.insert(
                (s.transport, s.key.clone()),
                SyslogSource {
                    transport: s.transport,
                    label: format!("syslog/{}/{}", s.transport.name(), s.key),
                    key: s.key,
                    parser,
                    strip: s.strip,
                    stats: s.stats,
                    pending: Vec::new(),
                    pending_since: None,
                },
            );
        }
        Ok(Collector {
            opts,
            custom,
            tail,
            syslog,
            journal,
            journal_len: state.journal_len,
            agg,
            catalog,
            users,
            status,
            forward: None,
        })
    }

    /// Hand every record, once committed, to `f` too.
    pub fn set_forward(&mut self, f: Forward<'c>) {
        self.forward = Some(f);
    }

    fn source_key(&self, f: &Received) -> (Transport, String) {
        let (h, _) = strip_header(&f.message);
        let app: String = h
            .app
            .unwrap_or("-")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
            .take(48)
            .collect();
        let key = (
            f.transport,
            format!("{}/{}", f.peer.ip().to_canonical(), app),
        );
        if self.syslog.contains_key(&key) || self.syslog.len() < self.opts.max_sources {
            key
        } else {
            (f.transport, "other".to_owned())
        }
    }

    /// Take received frames and whatever the watched files hold now; commit.
    pub fn tick(
        &mut self,
        frames: impl IntoIterator<Item = Received>,
        now: DateTime<Utc>,
    ) -> Result<TickStats, CollectError> {
        self.tick_inner(frames, now, true)
    }

    /// Take received frames only (the files are left for the next [`Collector::tick`]).
    pub fn tick_frames(
        &mut self,
        frames: impl IntoIterator<Item = Received>,
        now: DateTime<Utc>,
    ) -> Result<TickStats, CollectError> {
        self.tick_inner(frames, now, false)
    }

    fn tick_inner(
        &mut self,
        frames: impl IntoIterator<Item = Received>,
        now: DateTime<Utc>,
        files: bool,
    ) -> Result<TickStats, CollectError> {
        let mut out: Vec<(String, FlowRecord)> = Vec::new();
        let mut st = TickStats::default();
        let mut changed = false;
        // Consecutive frames mostly come from one sender: its key is worked out once.
        let mut last: Option<(Transport, std::net::IpAddr, String, (Transport, String))> = None;
        for f in frames {
            st.frames += 1;
            let app = strip_header(&f.message).0.app.unwrap_or("-");
            let key = match &last {
                Some((t, ip, a, k)) if *t == f.transport && *ip == f.peer.ip() && a == app => {
                    k.clone()
                }
                _ => {
                    let k = self.source_key(&f);
                    last = Some((f.transport, f.peer.ip(), app.to_owned(), k.clone()));
                    k
                }
            };
            let src = self
                .syslog
                .entry(key.clone())
                .or_insert_with(|| SyslogSource {
                    transport: key.0,
                    label: format!("syslog/{}/{}", key.0.name(), key.1),
                    key: key.1.clone(),
                    parser: None,
                    strip: true,
                    stats: InputStats::default(),
                    pending: Vec::new(),
                    pending_since: None,
                });
            changed = true;
            match src.parser.as_mut() {
                Some(p) => {
                    let msg = if src.strip {
                        strip_header(&f.message).1
                    } else {
                        &f.message
                    };
                    let label = &src.label;
                    p.line(msg, now, &mut |r| out.push((label.clone(), r)));
                }
                None => {
                    if src.pending.is_empty() {
                        src.pending_since = Some(std::time::Instant::now());
                    }
                    src.pending.push(f.message);
                }
            }
        }
        // Detection for sources that have enough lines, or waited long enough.
        let wait = self.opts.detect_wait;
        for src in self.syslog.values_mut() {
            if src.parser.is_some() || src.pending.is_empty() {
                continue;
            }
            let waited = src.pending_since.is_none_or(|t| t.elapsed() >= wait);
            if src.pending.len() < SNIFF_LINES && !waited {
                continue;
            }
            changed = true;
            let label = src.label();
            let raw: Vec<String> = src.pending.iter().take(SNIFF_LINES).cloned().collect();
            let stripped: Vec<String> = raw.iter().map(|m| strip_header(m).1.to_owned()).collect();
            let forced = self
                .opts
                .syslog_format
                .get(&src.transport)
                .cloned()
                .flatten();
            let choice = match forced {
                Some(name) => {
                    let a = crate::sniff_count(&name, &raw, self.custom);
                    let b = crate::sniff_count(&name, &stripped, self.custom);
                    Some((name, b >= a))
                }
                None => {
                    let a = crate::detect_format(&raw, self.custom);
                    let b = crate::detect_format(&stripped, self.custom);
                    match (a, b) {
                        (Some(a), Some(b)) if a.1 > b.1 => Some((a.0, false)),
                        (_, Some(b)) => Some((b.0, true)),
                        (Some(a), None) => Some((a.0, false)),
                        (None, None) => None,
                    }
                }
            };
            let pending = std::mem::take(&mut src.pending);
            src.pending_since = None;
            match choice.and_then(|(name, strip)| {
                StreamParser::named(&name, &label, self.custom, self.opts.max_bad_lines)
                    .ok()
                    .map(|p| (p, strip))
            }) {
                Some((mut p, strip)) => {
                    src.stats.file = label.clone();
                    src.stats.error = None;
                    p.restore(src.stats.clone());
                    src.strip = strip;
                    for m in &pending {
                        let msg = if strip { strip_header(m).1 } else { m };
                        p.line(msg, now, &mut |r| out.push((label.clone(), r)));
                    }
                    src.parser = Some(p);
                }
                None => {
                    // Counted as unparsed; the next lines get another detection.
                    src.stats.file = label;
                    src.stats.format = "unknown".into();
                    src.stats.error = Some(
                        "unknown log format (first lines match none of the built-in or configured formats)"
                            .into(),
                    );
                    let n = pending.iter().filter(|m| !m.trim().is_empty()).count() as u64;
                    src.stats.lines += n;
                    src.stats.unparsed += n;
                }
            }
        }
        if files {
            changed |= self.tail.poll(now, &mut |r| {
                out.push((String::new(), r));
            });
        }
        // Tail records carry no label here: the journal only needs one for syslog
        // equality checks, and files are named in the state.
        st.records = out.len() as u64;
        if changed || !out.is_empty() {
            self.commit(&out)?;
            st.committed = true;
        }
        for (_, r) in &out {
            self.agg.add(r, self.catalog, self.users);
            if let Some(f) = self.forward.as_mut() {
                f(r);
            }
        }
        self.status.records += out.len() as u64;
        Ok(st)
    }

    fn commit(&mut self, out: &[(String, FlowRecord)]) -> Result<(), CollectError> {
        let jpath = self.opts.state_dir.join(JOURNAL_FILE);
        if !out.is_empty() {
            let mut buf = Vec::with_capacity(out.len() * 320);
            for (s, r) in out {
                serde_json::to_writer(
                    &mut buf,
                    &JournalLine {
                        s: std::borrow::Cow::Borrowed(s),
                        r: r.clone(),
                    },
                )
                .map_err(|e| io("writing", &jpath)(std::io::Error::other(e)))?;
                buf.push(b'\n');
            }
            self.journal
                .write_all(&buf)
                .map_err(io("writing", &jpath))?;
            self.journal.sync_data().map_err(io("syncing", &jpath))?;
            self.journal_len += buf.len() as u64;
        }
        let state = StateFile {
            version: 1,
            journal_len: self.journal_len,
            files: self.tail.state(),
            syslog: self
                .syslog
                .values()
                .map(|s| SyslogState {
                    transport: s.transport,
                    key: s.key.clone(),
                    strip: s.strip,
                    format: s.parser.as_ref().map(|p| p.format().to_owned()),
                    stats: s.stats(),
                })
                .collect(),
        };
        let body = serde_json::to_vec(&state)
            .map_err(|e| io("writing", &jpath)(std::io::Error::other(e)))?;
        let dir = self.opts.state_dir.clone();
        write_atomic(&dir, STATE_FILE, &body).map_err(io("writing", &dir.join(STATE_FILE)))
    }

    /// Counts per source (files, then syslog senders).
    pub fn inputs(&self) -> Vec<InputStats> {
        let mut v = self.tail.stats();
        v.extend(self.syslog.values().map(SyslogSource::stats));
        v
    }

    /// The report over everything collected so far.
    pub fn report(&self) -> DiscoveryReport {
        let tag = |id: &str| self.opts.tags.get(id).cloned();
        let snap = self.agg.snapshot(self.catalog, &tag);
        let new_since = match (snap.first_seen, snap.last_seen) {
            (Some(a), Some(b)) => Some(a + (b - a) / 2),
            _ => None,
        };
        let window = match (snap.first_seen, snap.last_seen) {
            (Some(start), Some(end)) => Some(Window { start, end }),
            _ => None,
        };
        DiscoveryReport::new(self.inputs(), snap, window, new_since, None)
    }

    /// Counts for `status.json`.
    pub fn status(&self) -> CollectorStatus {
        CollectorStatus {
            syslog_sources: self.syslog.len(),
            files: self.tail.tracked(),
            tail: self.tail.counters.clone(),
            ..self.status.clone()
        }
    }

    /// Write the reports (`discovery.json`, `.csv`, `.html`, `.txt`) and `status.json`
    /// (this status, with `extra` under `receiver`), each replaced atomically.
    pub fn write_reports(&self, extra: serde_json::Value) -> Result<(), CollectError> {
        let report = self.report();
        let dir = &self.opts.output_dir;
        for f in &self.opts.report_formats {
            let name = match f {
                ReportFormat::Json => "discovery.json",
                ReportFormat::Csv => "discovery.csv",
                ReportFormat::Html => "discovery.html",
                ReportFormat::Table => "discovery.txt",
            };
            let mut buf = Vec::new();
            tollgate_discovery::report::render(&report, *f, &mut buf)
                .map_err(io("rendering", &dir.join(name)))?;
            write_atomic(dir, name, &buf).map_err(io("writing", &dir.join(name)))?;
        }
        let mut status = serde_json::to_value(self.status()).unwrap_or_default();
        if let Some(o) = status.as_object_mut() {
            o.insert("receiver".into(), extra);
            o.insert("generated_at".into(), serde_json::json!(Utc::now()));
        }
        let body = serde_json::to_vec_pretty(&status).unwrap_or_default();
        write_atomic(dir, "status.json", &body).map_err(io("writing", &dir.join("status.json")))
    }
}

/// Read the journal of a state directory: (source label, record) per line (for tests and
/// tools; syslog records carry their source's label, file records an empty one).
pub fn read_journal(state_dir: &Path) -> std::io::Result<Vec<(String, FlowRecord)>> {
    let text = std::fs::read_to_string(state_dir.join(JOURNAL_FILE))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<JournalLine<'_>>(l).ok())
        .map(|j| (j.s.into_owned(), j.r))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(state: &Path, out: &Path, watch: &Path) -> CollectorOptions {
        CollectorOptions {
            state_dir: state.to_owned(),
            output_dir: out.to_owned(),
            report_formats: vec![ReportFormat::Json, ReportFormat::Csv, ReportFormat::Table],
            watch: vec![WatchSpec {
                dir: watch.to_owned(),
                pattern: "*.log".into(),
                format: None,
            }],
            detect_wait: std::time::Duration::ZERO,
            ..CollectorOptions::default()
        }
    }

    fn frame(msg: &str, ip: [u8; 4]) -> Received {
        Received {
            transport: Transport::Udp,
            peer: (ip, 514).into(),
            message: msg.to_owned(),
        }
    }

    #[test]
    fn corrupt_state_is_a_clear_error_and_left_alone() {
        let (s, o, w) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let cat = Catalog::builtin(Utc::now()).unwrap();
        let users = Users::default();
        for bad in [
            &b"{\"version\":1,\"journal_len\":"[..],
            b"\xff\xfe",
            b"[]",
            b"",
        ] {
            std::fs::write(s.path().join(STATE_FILE), bad).unwrap();
            let e = Collector::open(opts(s.path(), o.path(), w.path()), &cat, &users)
                .err()
                .expect("a corrupt state must not start");
            assert!(matches!(e, CollectError::CorruptState { .. }), "{e}");
            assert!(e.to_string().contains("state.json"), "{e}");
            assert_eq!(std::fs::read(s.path().join(STATE_FILE)).unwrap(), bad);
        }
        // A state that says more was committed than the journal holds.
        std::fs::write(
            s.path().join(STATE_FILE),
            br#"{"version":1,"journal_len":99,"files":[],"syslog":[]}"#,
        )
        .unwrap();
        let e = Collector::open(opts(s.path(), o.path(), w.path()), &cat, &users)
            .err()
            .unwrap();
        assert!(matches!(e, CollectError::ShortJournal { .. }), "{e}");
    }

    #[test]
    fn uncommitted_journal_tail_is_cut_and_lines_read_again() {
        let (s, o, w) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/logs");
        std::fs::copy(
            fixtures.join("squid_native.log"),
            w.path().join("squid.log"),
        )
        .unwrap();
        let mut want = 0u64;
        crate::import_file(
            &fixtures.join("squid_native.log"),
            &crate::LogOptions::default(),
            &mut |_| want += 1,
        )
        .unwrap();
        let cat = Catalog::builtin(Utc::now()).unwrap();
        let users = Users::default();
        let later = Utc::now() + chrono::Duration::seconds(60);
        {
            let mut c = Collector::open(opts(s.path(), o.path(), w.path()), &cat, &users).unwrap();
            c.tick(Vec::new(), Utc::now()).unwrap();
            c.tick(Vec::new(), later).unwrap();
            assert_eq!(c.status().records, want);
        }
        // A crash after the journal write, before the state: garbage past the commit.
        let mut j = std::fs::OpenOptions::new()
            .append(true)
            .open(s.path().join(JOURNAL_FILE))
            .unwrap();
        j.write_all(b"{\"s\":\"\",\"r\":{partial").unwrap();
        let mut c = Collector::open(opts(s.path(), o.path(), w.path()), &cat, &users).unwrap();
        assert_eq!(c.status().replayed, want);
        assert_eq!(c.status().journal_bad_lines, 0);
        c.tick(Vec::new(), later).unwrap();
        assert_eq!(c.status().records, want);
        c.write_reports(serde_json::Value::Null).unwrap();
        let rep: serde_json::Value =
            serde_json::from_slice(&std::fs::read(o.path().join("discovery.json")).unwrap())
                .unwrap();
        let recs: u64 = rep["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["records"].as_u64().unwrap())
            .sum();
        assert_eq!(recs, want);
    }

    #[test]
    fn hostile_fields_are_escaped_in_reports() {
        let (s, o, w) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let cat = Catalog::builtin(Utc::now()).unwrap();
        let users = Users::default();
        let mut c = Collector::open(opts(s.path(), o.path(), w.path()), &cat, &users).unwrap();
        // Squid lines relayed with an RFC 3164 header; the user and host carry a terminal
        // escape and a spreadsheet formula.
        let frames: Vec<Received> = (0..40)
            .map(|i| {
                frame(
                    &format!(
                        "<13>Dec  3 10:00:00 proxy squid: 1157689312.{i:03} 5 10.0.0.9 TCP_MISS/200 100 CONNECT evil{i}.\u{1b}[2Jexample.test:443 =HYPERLINK(\"http://x\")\u{1b}]0;pwn\u{7} DIRECT/1.2.3.4 -"
                    ),
                    [10, 0, 0, 9],
                )
            })
            .collect();
        c.tick(frames, Utc::now()).unwrap();
        assert_eq!(c.status().records, 40);
        c.write_reports(serde_json::Value::Null).unwrap();
        let csv = std::fs::read_to_string(o.path().join("discovery.csv")).unwrap();
        let txt = std::fs::read_to_string(o.path().join("discovery.txt")).unwrap();
        let json = std::fs::read_to_string(o.path().join("discovery.json")).unwrap();
        for (name, body) in [("csv", &csv), ("txt", &txt), ("json", &json)] {
            assert!(
                !body.contains('\u{1b}'),
                "{name} carries a raw ESC:\n{body}"
            );
            assert!(!body.contains('\u{7}'), "{name} carries a raw BEL");
        }
        for line in csv.lines() {
            for cell in line.split(',') {
                let cell = cell.trim_start_matches('"');
                assert!(!cell.starts_with('='), "formula cell in csv: {line}");
            }
        }
    }

    #[test]
    fn sprayed_app_names_share_one_source_past_the_cap() {
        let (s, o, w) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let cat = Catalog::builtin(Utc::now()).unwrap();
        let users = Users::default();
        let mut c = Collector::open(
            CollectorOptions {
                max_sources: 8,
                ..opts(s.path(), o.path(), w.path())
            },
            &cat,
            &users,
        )
        .unwrap();
        let frames: Vec<Received> = (0..5000)
            .map(|i| {
                frame(
                    &format!("<13>Dec  3 10:00:00 h app{i}: 1157689312.049 5 10.0.0.1 TCP_MISS/200 1 CONNECT a.example:443 - DIRECT/1.2.3.4 -"),
                    [10, 0, (i % 7) as u8, 1],
                )
            })
            .collect();
        c.tick(frames, Utc::now()).unwrap();
        assert!(
            c.status().syslog_sources <= 9,
            "{}",
            c.status().syslog_sources
        );
        assert_eq!(c.status().records, 5000);
        let state = std::fs::read(s.path().join(STATE_FILE)).unwrap();
        assert!(state.len() < 64 * 1024, "state grew to {}", state.len());
    }

    #[test]
    fn syslog_sources_detect_and_strip_per_sender() {
        let (s, o, w) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/logs");
        let cat = Catalog::builtin(Utc::now()).unwrap();
        let users = Users::default();
        let mut c = Collector::open(opts(s.path(), o.path(), w.path()), &cat, &users).unwrap();
        let mut frames = Vec::new();
        let mut want = BTreeMap::new();
        for (i, name) in ["squid_native.log", "fortinet_fortigate.log", "cef.log"]
            .iter()
            .enumerate()
        {
            let path = fixtures.join(name);
            let mut n = 0u64;
            let st =
                crate::import_file(&path, &crate::LogOptions::default(), &mut |_| n += 1).unwrap();
            want.insert(format!("syslog/udp/10.0.0.{i}/relay"), (st.format, n));
            for l in std::fs::read_to_string(&path).unwrap().lines() {
                if !l.trim().is_empty() {
                    frames.push(frame(
                        &format!("<134>1 2026-12-03T10:00:00Z host relay - - - {l}"),
                        [10, 0, 0, i as u8],
                    ));
                }
            }
        }
        c.tick(frames, Utc::now()).unwrap();
        let got: BTreeMap<String, (String, u64)> = c
            .inputs()
            .into_iter()
            .map(|s| (s.file, (s.format, s.records)))
            .collect();
        assert_eq!(got, want);
    }
}
