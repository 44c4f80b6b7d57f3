//! Watched directories: log files tailed from a persisted offset, so that a restart neither
//! loses nor doubles a line.
//!
//! A file is known by its identity, `(device, inode)`, never by its name: a rotation
//! (`app.log` renamed to `app.log.1`, a new `app.log` created) keeps the old file's offset
//! with the old file, which is read to its end as long as it stays in the directory (under
//! any name), and the new file starts at 0. A fingerprint of the file's first bytes tells a
//! file that was truncated (`copytruncate`) or rewritten in place from the one read before;
//! either starts again at 0, as does a file shorter than its offset.
//!
//! Only regular files directly in the directory are read, opened with `O_NOFOLLOW` and
//! checked to be the file that was listed: a symlink (to `/etc/shadow`, or anywhere out of
//! the directory) is refused and counted, never followed. Gzip files are skipped (a
//! compressed rotation is the old file's copy, already read under its first name).
//!
//! Only complete lines are read: a partial last line waits for its newline. A line longer
//! than [`crate::MAX_LINE`] is skipped to its newline and counted as unparsed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tollgate_discovery::record::{FlowRecord, InputStats};

use crate::{CustomFormat, MAX_LINE, SNIFF_LINES, StreamParser};

/// Bytes of a file's start that identify its content.
pub const FINGERPRINT_LEN: u64 = 256;
/// Bytes read from one file in one poll (others get their turn).
const CHUNK: usize = 4 * 1024 * 1024;
/// A new file with fewer lines than detection wants waits this long for more.
const DETECT_WAIT_SECS: i64 = 5;

/// One watched directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    pub dir: PathBuf,
    /// File name pattern: `*` any run of characters, `?` one character, else literal.
    pub pattern: String,
    /// A format name, or `None` to detect per file.
    pub format: Option<String>,
}

/// A tailed file's persisted state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileState {
    pub dev: u64,
    pub ino: u64,
    /// The name it was last seen under.
    pub path: PathBuf,
    /// Bytes consumed: every line before this offset is counted.
    pub offset: u64,
    /// Fingerprint (FNV-1a 64) of the first `fp_len` bytes.
    pub fp: u64,
    pub fp_len: u64,
    /// Skipping the rest of a too-long line.
    #[serde(default)]
    pub skipping: bool,
    /// The format, once known.
    pub format: Option<String>,
    /// Counts of everything read from this file.
    pub stats: InputStats,
    /// When it was first seen (detection waits a little for a new file to fill).
    pub first_seen: DateTime<Utc>,
}

/// Counters of the watcher (not persisted: they describe this run).
#[derive(Debug, Default, Clone, Serialize)]
pub struct TailCounters {
    /// Symlinks refused (distinct names).
    pub refused_symlinks: u64,
    /// Files started again from 0 because they were truncated or rewritten.
    pub restarted: u64,
    /// Files skipped (gzip, unreadable).
    pub skipped: u64,
}

struct Tracked {
    state: FileState,
    parser: Option<StreamParser>,
    spec: usize,
    /// Resumed mid-file with a format that learns from header lines: read them again from
    /// the file's start before going on.
    prime: bool,
}

/// The watcher of some directories.
pub struct Tailer {
    specs: Vec<WatchSpec>,
    custom: &'static [CustomFormat],
    max_bad: usize,
    files: BTreeMap<(u64, u64), Tracked>,
    refused: BTreeSet<PathBuf>,
    pub counters: TailCounters,
}

/// `*` and `?` glob over a file name.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some(pi);
                mark = ni;
                pi += 1;
            }
            Some(c) if *c == '?' || Some(c) == n.get(ni) => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some(s) => {
                    pi = s + 1;
                    mark += 1;
                    ni = mark;
                }
                None => return false,
            },
        }
    }
    p.get(pi..).unwrap_or(&[]).iter().all(|c| *c == '*')
}

fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn read_prefix(f: &mut std::fs::File, len: u64) -> std::io::Result<Vec<u8>> {
    f.seek(SeekFrom::Start(0))?;
    let mut v = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut v)?;
    Ok(v)
}

/// Show a resumed parser the header lines of the first `upto` bytes again.
fn prime(f: &mut std::fs::File, upto: u64, p: &mut StreamParser) {
    use std::io::BufRead;
    if f.seek(SeekFrom::Start(0)).is_err() {
        return;
    }
    let mut r = std::io::BufReader::new(f.take(upto));
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.len() > MAX_LINE {
            continue;
        }
        let s = String::from_utf8_lossy(&line);
        if !p.prime(s.trim_end_matches(['\n', '\r'])) {
            return;
        }
    }
}

fn open_nofollow(p: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)
}

impl Tailer {
    /// A watcher resuming from `state` (from [`Tailer::state`] of an earlier run).
    pub fn new(
        specs: Vec<WatchSpec>,
        custom: &'static [CustomFormat],
        max_bad: usize,
        state: Vec<FileState>,
    ) -> Tailer {
        let mut t = Tailer {
            specs,
            custom,
            max_bad,
            files: BTreeMap::new(),
            refused: BTreeSet::new(),
            counters: TailCounters::default(),
        };
        for s in state {
            let spec = t
                .specs
                .iter()
                .position(|w| s.path.parent() == Some(w.dir.as_path()))
                .unwrap_or(0);
            let parser = s.format.as_deref().and_then(|f| t.parser_for(f, &s.stats));
            let prime = s.offset > 0 && parser.as_ref().is_some_and(StreamParser::needs_headers);
            t.files.insert(
                (s.dev, s.ino),
                Tracked {
                    state: s,
                    parser,
                    spec,
                    prime,
                },
            );
        }
        t
    }

    fn parser_for(&self, format: &str, stats: &InputStats) -> Option<StreamParser> {
        let mut p = StreamParser::named(format, &stats.file, self.custom, self.max_bad).ok()?;
        p.restore(stats.clone());
        Some(p)
    }

    /// The state to persist (with the records emitted so far).
    pub fn state(&self) -> Vec<FileState> {
        self.files
            .values()
            .map(|t| {
                let mut s = t.state.clone();
                if let Some(p) = &t.parser {
                    s.stats = p.stats.clone();
                }
                s
            })
            .collect()
    }

    /// Per-file counts, for the report.
    pub fn stats(&self) -> Vec<InputStats> {
        self.state().into_iter().map(|s| s.stats).collect()
    }

    /// Read what is new in every watched directory; each record goes to `sink`. Returns
    /// whether anything changed (an offset moved or a file appeared or left).
    pub fn poll(&mut self, now: DateTime<Utc>, sink: &mut dyn FnMut(FlowRecord)) -> bool {
        use std::os::unix::fs::MetadataExt;
        let mut changed = false;
        let mut seen = BTreeSet::new();
        // Directories that could not be listed keep their files' state as it is (a
        // directory briefly unreadable must not make its files start again from 0).
        let mut unlisted = BTreeSet::new();
        for si in 0..self.specs.len() {
            let spec = self.specs.get(si).cloned();
            let Some(spec) = spec else { continue };
            let Ok(rd) = std::fs::read_dir(&spec.dir) else {
                unlisted.insert(si);
                continue;
            };
            let mut entries: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
            for e in rd.flatten() {
                let path = e.path();
                let Ok(m) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                let name = e.file_name().to_string_lossy().into_owned();
                let matched = glob_match(&spec.pattern, &name);
                if m.file_type().is_symlink() {
                    if matched && self.refused.insert(path.clone()) {
                        self.counters.refused_symlinks += 1;
                    }
                    continue;
                }
                if !m.file_type().is_file() {
                    continue;
                }
                let key = (m.dev(), m.ino());
                if matched || self.files.contains_key(&key) {
                    entries.push((path, m));
                }
            }
            // Oldest first, so a rotated file is drained before its successor is read.
            entries.sort_by_key(|(_, m)| (m.mtime(), m.mtime_nsec()));
            for (path, m) in entries {
                let key = (m.dev(), m.ino());
                seen.insert(key);
                changed |= self.read_file(si, &spec, &path, key, now, sink);
            }
        }
        let before = self.files.len();
        self.files
            .retain(|k, t| seen.contains(k) || unlisted.contains(&t.spec));
        changed || self.files.len() != before
    }

    fn read_file(
        &mut self,
        si: usize,
        spec: &WatchSpec,
        path: &Path,
        key: (u64, u64),
        now: DateTime<Utc>,
        sink: &mut dyn FnMut(FlowRecord),
    ) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(mut f) = open_nofollow(path) else {
            return false;
        };
        let Ok(m) = f.metadata() else { return false };
        // Swapped between the listing and the open: next poll.
        if (m.dev(), m.ino()) != key || !m.file_type().is_file() {
            return false;
        }
        let size = m.len();
        let mut changed = false;
        if !self.files.contains_key(&key) {
            let Ok(head) = read_prefix(&mut f, FINGERPRINT_LEN) else {
                return false;
            };
            if head.starts_with(&[0x1f, 0x8b]) {
                self.counters.skipped += 1;
                return false;
            }
            let label = path.display().to_string();
            self.files.insert(
                key,
                Tracked {
                    state: FileState {
                        dev: key.0,
                        ino: key.1,
                        path: path.to_owned(),
                        offset: 0,
                        fp: fnv(&head),
                        fp_len: head.len() as u64,
                        skipping: false,
                        format: spec.format.clone(),
                        stats: InputStats {
                            file: label.clone(),
                            ..InputStats::default()
                        },
                        first_seen: now,
                    },
                    parser: None,
                    spec: si,
                    prime: false,
                },
            );
            changed = true;
            if let Some(fmt) = &spec.format {
                match StreamParser::named(fmt, &label, self.custom, self.max_bad) {
                    Ok(p) => {
                        if let Some(t) = self.files.get_mut(&key) {
                            t.parser = Some(p);
                        }
                    }
                    Err(e) => {
                        if let Some(t) = self.files.get_mut(&key) {
                            t.state.stats.error = Some(e.to_string());
                        }
                    }
                }
            }
        }
        let custom = self.custom;
        let max_bad = self.max_bad;
        let Some(t) = self.files.get_mut(&key) else {
            return changed;
        };
        t.spec = si;
        if t.state.path != path {
            t.state.path = path.to_owned();
            changed = true;
        }
        // Truncated, or rewritten in place: start again.
        let head = read_prefix(&mut f, t.state.fp_len.max(FINGERPRINT_LEN).min(size));
        let Ok(head) = head else { return changed };
        let old = head.get(..t.state.fp_len as usize).map(fnv);
        if size < t.state.offset || old != Some(t.state.fp) {
            t.state.offset = 0;
            t.state.skipping = false;
            t.prime = false;
            self.counters.restarted += 1;
            changed = true;
            // New content: header state (W3C fields, a header row) starts over too.
            if let Some(p) = t.parser.take() {
                let stats = p.stats.clone();
                let fresh = StreamParser::named(p.format(), &stats.file, custom, max_bad);
                t.parser = Some(match fresh {
                    Ok(mut f) => {
                        f.restore(stats);
                        f
                    }
                    Err(_) => p,
                });
            }
        }
        if head.len() as u64 > t.state.fp_len {
            t.state.fp = fnv(&head);
            t.state.fp_len = head.len() as u64;
            changed = true;
        }
        if t.prime {
            t.prime = false;
            if let Some(p) = t.parser.as_mut() {
                prime(&mut f, t.state.offset, p);
            }
        }
        if size == t.state.offset {
            return changed;
        }
        if f.seek(SeekFrom::Start(t.state.offset)).is_err() {
            return changed;
        }
        let mut buf = Vec::with_capacity(CHUNK.min((size - t.state.offset) as usize));
        if (&mut f).take(CHUNK as u64).read_to_end(&mut buf).is_err() {
            return changed;
        }
        // Only complete lines; a line longer than the limit is skipped to its newline.
        let end = match memchr::memrchr(b'\n', &buf) {
            Some(i) => i + 1,
            None => {
                if buf.len() > MAX_LINE || t.state.skipping {
                    if !t.state.skipping {
                        t.state.skipping = true;
                        if let Some(p) = t.parser.as_mut() {
                            p.too_long();
                        } else {
                            t.state.stats.lines += 1;
                            t.state.stats.unparsed += 1;
                        }
                    }
                    t.state.offset += buf.len() as u64;
                    return true;
                }
                return changed;
            }
        };
        let text = buf.get(..end).unwrap_or(&[]);
        if t.parser.is_none() && t.state.stats.error.is_none() {
            // Detect from the first lines; a new file with few lines waits a little.
            let sample: Vec<String> = text
                .split(|b| *b == b'\n')
                .map(|l| String::from_utf8_lossy(l).trim_end_matches('\r').to_owned())
                .filter(|l| !l.trim().is_empty())
                .take(SNIFF_LINES)
                .collect();
            if sample.len() < SNIFF_LINES
                && (now - t.state.first_seen).num_seconds() < DETECT_WAIT_SECS
            {
                return changed;
            }
            match crate::detect_format(&sample, custom) {
                Some((name, _)) => {
                    match StreamParser::named(&name, &t.state.stats.file, custom, max_bad) {
                        Ok(mut p) => {
                            p.restore(t.state.stats.clone());
                            t.state.format = Some(name);
                            t.parser = Some(p);
                        }
                        Err(e) => t.state.stats.error = Some(e.to_string()),
                    }
                }
                None => {
                    t.state.stats.error = Some(format!(
                        "{}: unknown log format (first lines match none of the built-in or configured formats)",
                        path.display()
                    ));
                }
            }
        }
        let body = text.get(..end.saturating_sub(1)).unwrap_or(&[]);
        for line in body.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if t.state.skipping {
                // The rest of a too-long line.
                t.state.skipping = false;
                continue;
            }
            let s = String::from_utf8_lossy(line);
            match t.parser.as_mut() {
                Some(p) => p.line(&s, now, sink),
                None => {
                    if !s.trim().is_empty() {
                        t.state.stats.lines += 1;
                        t.state.stats.unparsed += 1;
                    }
                }
            }
        }
        t.state.offset += end as u64;
        true
    }

    /// Files tracked now.
    pub fn tracked(&self) -> usize {
        self.files.len()
    }

    /// The spec index of a tracked file (for tests).
    pub fn spec_of(&self, dev: u64, ino: u64) -> Option<usize> {
        self.files.get(&(dev, ino)).map(|t| t.spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn specs(dir: &Path) -> Vec<WatchSpec> {
        vec![WatchSpec {
            dir: dir.to_owned(),
            pattern: "*.log".into(),
            format: Some("squid-native".into()),
        }]
    }

    fn line(i: u64) -> String {
        format!(
            "1157689312.{i:03} 5 10.0.0.{} TCP_MISS/200 {i} CONNECT host{i}.example.com:443 - DIRECT/1.2.3.4 -\n",
            i % 250
        )
    }

    fn poll(t: &mut Tailer) -> Vec<u64> {
        let mut v = Vec::new();
        t.poll(Utc::now(), &mut |r| v.push(r.bytes_down + r.bytes_up));
        v
    }

    #[test]
    fn glob() {
        assert!(glob_match("*.log", "a.log"));
        assert!(!glob_match("*.log", "a.log.1"));
        assert!(glob_match("fw-??.log*", "fw-01.log.1"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a?", "a"));
    }

    #[test]
    fn rotation_truncation_and_restart_count_each_line_once() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        let mut f = std::fs::File::create(&p).unwrap();
        for i in 0..10 {
            f.write_all(line(i).as_bytes()).unwrap();
        }
        // A partial line waits for its newline.
        f.write_all(b"1157689312.999 5 10.0.0.1 TCP_MISS/200")
            .unwrap();
        let mut t = Tailer::new(specs(d.path()), &[], 5, Vec::new());
        assert_eq!(poll(&mut t).len(), 10);
        f.write_all(b" 7 CONNECT x.example.com:443 - DIRECT/1.2.3.4 -\n")
            .unwrap();
        assert_eq!(poll(&mut t), vec![7]);
        // Restart from the persisted state: nothing again.
        let state = t.state();
        let mut t = Tailer::new(specs(d.path()), &[], 5, state);
        assert!(poll(&mut t).is_empty());
        // Rotation: renamed, one more line lands in the old file, a new file appears.
        std::fs::rename(&p, d.path().join("a.log.1")).unwrap();
        f.write_all(line(20).as_bytes()).unwrap();
        let mut g = std::fs::File::create(&p).unwrap();
        g.write_all(line(30).as_bytes()).unwrap();
        let mut got = poll(&mut t);
        got.sort();
        assert_eq!(got, vec![20, 30]);
        // copytruncate: the same inode, shorter; read again from 0.
        g.set_len(0).unwrap();
        let mut g = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        g.write_all(line(40).as_bytes()).unwrap();
        assert_eq!(poll(&mut t), vec![40]);
        assert_eq!(t.counters.restarted, 1);
        let total: u64 = t.stats().iter().map(|s| s.records).sum();
        assert_eq!(total, 14);
    }

    #[test]
    fn rewritten_in_place_is_read_again() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        std::fs::write(&p, format!("{}{}", line(1), line(2))).unwrap();
        let mut t = Tailer::new(specs(d.path()), &[], 5, Vec::new());
        assert_eq!(poll(&mut t).len(), 2);
        // Same inode, same length or longer, different first bytes.
        let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all(format!("{}{}{}", line(5), line(6), line(7)).as_bytes())
            .unwrap();
        assert_eq!(poll(&mut t), vec![5, 6, 7]);
    }

    #[test]
    fn an_unreadable_directory_keeps_its_offsets() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("logs");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("a.log"), format!("{}{}", line(1), line(2))).unwrap();
        let mut t = Tailer::new(specs(&sub), &[], 5, Vec::new());
        assert_eq!(poll(&mut t).len(), 2);
        // The directory goes away for a moment (an unmounted volume, a rename).
        std::fs::rename(&sub, d.path().join("gone")).unwrap();
        assert!(poll(&mut t).is_empty());
        assert_eq!(t.tracked(), 1);
        std::fs::rename(d.path().join("gone"), &sub).unwrap();
        assert!(poll(&mut t).is_empty(), "lines read twice");
    }

    #[test]
    fn w3c_resumed_after_a_restart_still_knows_its_fields() {
        let d = tempfile::tempdir().unwrap();
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/logs/bluecoat_proxysg_elff.log");
        let text = std::fs::read_to_string(&fixture).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // The first data line read before the restart, the rest after it.
        let first_data = lines.iter().position(|l| !l.starts_with('#')).unwrap();
        let (head, tail) = lines.split_at(first_data + 1);
        assert!(!tail.is_empty() && tail.iter().all(|l| !l.starts_with('#')));
        let p = d.path().join("proxy.log");
        std::fs::write(&p, format!("{}\n", head.join("\n"))).unwrap();
        let spec = vec![WatchSpec {
            dir: d.path().to_owned(),
            pattern: "*.log".into(),
            format: Some("w3c".into()),
        }];
        let mut t = Tailer::new(spec.clone(), &[], 5, Vec::new());
        let mut n = 0u64;
        t.poll(Utc::now(), &mut |_| n += 1);
        // Restart, then the rest of the file arrives.
        let mut t = Tailer::new(spec, &[], 5, t.state());
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(format!("{}\n", tail.join("\n")).as_bytes())
            .unwrap();
        t.poll(Utc::now(), &mut |_| n += 1);
        let mut want = 0u64;
        crate::import_file(&fixture, &crate::LogOptions::default(), &mut |_| want += 1).unwrap();
        assert!(want > 0);
        assert_eq!(n, want);
        assert_eq!(t.stats()[0].unparsed, 0, "{:?}", t.stats()[0].bad_lines);
    }

    #[test]
    fn symlinks_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let secret = out.path().join("secret.log");
        std::fs::write(&secret, line(1)).unwrap();
        std::os::unix::fs::symlink(&secret, d.path().join("evil.log")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", d.path().join("shadow.log")).unwrap();
        std::fs::write(d.path().join("ok.log"), line(2)).unwrap();
        let mut t = Tailer::new(specs(d.path()), &[], 5, Vec::new());
        assert_eq!(poll(&mut t), vec![2]);
        assert!(poll(&mut t).is_empty());
        assert_eq!(t.counters.refused_symlinks, 2);
        assert_eq!(t.tracked(), 1);
    }

    #[test]
    fn too_long_line_is_skipped_and_counted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(line(1).as_bytes()).unwrap();
        f.write_all(&vec![b'x'; MAX_LINE * 2]).unwrap();
        let mut t = Tailer::new(specs(d.path()), &[], 5, Vec::new());
        assert_eq!(poll(&mut t), vec![1]);
        assert!(poll(&mut t).is_empty());
        f.write_all(b"xx\n").unwrap();
        f.write_all(line(3).as_bytes()).unwrap();
        assert_eq!(poll(&mut t), vec![3]);
        let s = &t.stats()[0];
        assert_eq!((s.lines, s.records, s.unparsed), (3, 2, 1));
    }

    #[test]
    fn format_detected_per_file() {
        let d = tempfile::tempdir().unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/logs");
        for name in ["squid_native.log", "paloalto_traffic.log"] {
            std::fs::copy(fixtures.join(name), d.path().join(name)).unwrap();
        }
        let spec = vec![WatchSpec {
            dir: d.path().to_owned(),
            pattern: "*.log".into(),
            format: None,
        }];
        let mut t = Tailer::new(spec, &[], 5, Vec::new());
        let later = Utc::now() + chrono::Duration::seconds(60);
        let mut n = 0u64;
        t.poll(Utc::now(), &mut |_| n += 1);
        t.poll(later, &mut |_| n += 1);
        let mut want = 0u64;
        let mut formats = Vec::new();
        for name in ["squid_native.log", "paloalto_traffic.log"] {
            let st = crate::import_file(
                &fixtures.join(name),
                &crate::LogOptions::default(),
                &mut |_| want += 1,
            )
            .unwrap();
            formats.push(st.format);
        }
        assert_eq!(n, want);
        let mut got: Vec<String> = t.stats().into_iter().map(|s| s.format).collect();
        got.sort();
        formats.sort();
        assert_eq!(got, formats);
    }
}
