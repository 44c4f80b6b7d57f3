//! Log import: other devices' evidence (firewall and proxy logs from about fifteen vendors)
//! turned into Cloud Discovery's [`FlowRecord`]s, and [`discover`], the offline run of
//! `tollgate discover` over log and pcap files. Its own room, apart from live flow naming,
//! so that a continuous collector builds on the same parsers.
//!
//! Firewall and proxy log importers.
//!
//! A log file is read line by line (plain or gzip, told apart by the gzip magic), its format
//! is detected from the first non-empty lines (or forced by name), and every line that is a
//! transaction becomes one [`FlowRecord`] (`name_source = Log`, `user` from the log when it
//! has one) handed to a sink. Memory stays constant: one line buffer, no per-file state
//! except the W3C `#Fields` header and at most [`SNIFF_LINES`] lines held for detection.
//!
//! Every line is counted: `parsed` lines fit the format (transactions and well-formed
//! non-transaction lines such as headers, system events or session-start records),
//! `unparsed` lines do not; the first few of those are kept with their line number.

mod cef;
pub mod collect;
pub mod custom;
pub mod discover;
mod firewall;
mod squid;
mod umbrella;
pub(crate) mod util;
mod w3c;
mod zscaler;

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use custom::CustomFormat;
pub use util::LineOutcome;

pub use tollgate_discovery::record::{BadLine, FlowRecord, InputStats};

/// Lines looked at to detect the format.
pub const SNIFF_LINES: usize = 32;
/// Lines longer than this are counted as unparsed (and not buffered whole).
pub const MAX_LINE: usize = 256 * 1024;
/// Bad lines kept per file for the report, by default.
pub const DEFAULT_MAX_BAD_LINES: usize = 5;

/// Errors of the log importers.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}: unknown log format (first lines match none of the built-in or configured formats)"
    )]
    UnknownFormat { path: PathBuf },
    #[error("{path}: format {name:?} forced but not known (built-in names: {known})")]
    UnknownFormatName {
        path: PathBuf,
        name: String,
        known: String,
    },
    #[error("log format {name:?}: {reason}")]
    BadCustomFormat { name: String, reason: String },
}

/// The built-in formats. `name()` is what reports show and what `--format` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    SquidNative,
    SquidCommon,
    W3c,
    ZscalerNss,
    PaloAlto,
    Fortigate,
    CiscoAsa,
    CheckPoint,
    JuniperSrx,
    SophosXg,
    Watchguard,
    Pfsense,
    UmbrellaDns,
    UmbrellaProxy,
    Cef,
    Leef,
}

impl LogFormat {
    /// Detection order: when two formats match the same number of sample lines, the earlier wins.
    pub const ALL: [LogFormat; 16] = [
        LogFormat::Cef,
        LogFormat::Leef,
        LogFormat::CiscoAsa,
        LogFormat::Pfsense,
        LogFormat::JuniperSrx,
        LogFormat::CheckPoint,
        LogFormat::Fortigate,
        LogFormat::SophosXg,
        LogFormat::Watchguard,
        LogFormat::ZscalerNss,
        LogFormat::PaloAlto,
        LogFormat::UmbrellaProxy,
        LogFormat::UmbrellaDns,
        LogFormat::SquidNative,
        LogFormat::SquidCommon,
        LogFormat::W3c,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LogFormat::SquidNative => "squid-native",
            LogFormat::SquidCommon => "squid-common",
            LogFormat::W3c => "w3c",
            LogFormat::ZscalerNss => "zscaler-nss",
            LogFormat::PaloAlto => "palo-alto",
            LogFormat::Fortigate => "fortigate",
            LogFormat::CiscoAsa => "cisco-asa",
            LogFormat::CheckPoint => "check-point",
            LogFormat::JuniperSrx => "juniper-srx",
            LogFormat::SophosXg => "sophos-xg",
            LogFormat::Watchguard => "watchguard",
            LogFormat::Pfsense => "pfsense",
            LogFormat::UmbrellaDns => "umbrella-dns",
            LogFormat::UmbrellaProxy => "umbrella-proxy",
            LogFormat::Cef => "cef",
            LogFormat::Leef => "leef",
        }
    }

    pub fn from_name(s: &str) -> Option<LogFormat> {
        LogFormat::ALL
            .iter()
            .copied()
            .find(|f| f.name().eq_ignore_ascii_case(s))
    }

    fn sniff(self, line: &str) -> bool {
        match self {
            LogFormat::SquidNative => squid::sniff_native(line),
            LogFormat::SquidCommon => squid::sniff_common(line),
            LogFormat::W3c => w3c::sniff(line),
            LogFormat::ZscalerNss => zscaler::sniff(line),
            LogFormat::PaloAlto => firewall::pan_sniff(line),
            LogFormat::Fortigate => firewall::fortigate_sniff(line),
            LogFormat::CiscoAsa => firewall::asa_sniff(line),
            LogFormat::CheckPoint => firewall::checkpoint_sniff(line),
            LogFormat::JuniperSrx => firewall::srx_sniff(line),
            LogFormat::SophosXg => firewall::sophos_sniff(line),
            LogFormat::Watchguard => firewall::watchguard_sniff(line),
            LogFormat::Pfsense => firewall::pfsense_sniff(line),
            LogFormat::UmbrellaDns => umbrella::dns_sniff(line),
            LogFormat::UmbrellaProxy => umbrella::proxy_sniff(line),
            LogFormat::Cef => cef::cef_sniff(line),
            LogFormat::Leef => cef::leef_sniff(line),
        }
    }
}

/// How to import logs.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// `[[log_formats]]` from the config, tried after the built-in formats.
    pub custom: Vec<CustomFormat>,
    /// A format name (built-in or custom) that skips detection.
    pub force_format: Option<String>,
    /// Bad lines kept per file.
    pub max_bad_lines: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            custom: Vec::new(),
            force_format: None,
            max_bad_lines: DEFAULT_MAX_BAD_LINES,
        }
    }
}

enum Parser<'a> {
    Builtin(LogFormat, w3c::W3cState),
    Custom(custom::CustomParser<'a>),
}

impl Parser<'_> {
    fn name(&self) -> String {
        match self {
            Parser::Builtin(f, _) => f.name().to_owned(),
            Parser::Custom(c) => c.name().to_owned(),
        }
    }

    fn parse(&mut self, line: &str, fallback: DateTime<Utc>) -> LineOutcome {
        match self {
            Parser::Builtin(f, w) => match f {
                LogFormat::SquidNative => squid::parse_native(line, fallback),
                LogFormat::SquidCommon => squid::parse_common(line, fallback),
                LogFormat::W3c => w.parse(line, fallback),
                LogFormat::ZscalerNss => zscaler::parse(line, fallback),
                LogFormat::PaloAlto => firewall::pan(line, fallback),
                LogFormat::Fortigate => firewall::fortigate(line, fallback),
                LogFormat::CiscoAsa => firewall::asa(line, fallback),
                LogFormat::CheckPoint => firewall::checkpoint(line, fallback),
                LogFormat::JuniperSrx => firewall::srx(line, fallback),
                LogFormat::SophosXg => firewall::sophos(line, fallback),
                LogFormat::Watchguard => firewall::watchguard(line, fallback),
                LogFormat::Pfsense => firewall::pfsense(line, fallback),
                LogFormat::UmbrellaDns => umbrella::dns(line, fallback),
                LogFormat::UmbrellaProxy => umbrella::proxy(line, fallback),
                LogFormat::Cef => cef::cef(line, fallback),
                LogFormat::Leef => cef::leef(line, fallback),
            },
            Parser::Custom(c) => c.parse(line, fallback),
        }
    }
}

/// Pick the format that matches most of the sample lines.
fn detect<'a>(sample: &[String], custom: &'a [CustomFormat]) -> Option<Parser<'a>> {
    if sample.iter().any(|l| l.starts_with("#Fields:")) {
        return Some(Parser::Builtin(LogFormat::W3c, w3c::W3cState::default()));
    }
    let mut best: Option<(usize, Parser<'a>)> = None;
    for f in LogFormat::ALL {
        let n = sample.iter().filter(|l| f.sniff(l)).count();
        if n > 0 && best.as_ref().is_none_or(|(b, _)| n > *b) {
            best = Some((n, Parser::Builtin(f, w3c::W3cState::default())));
        }
    }
    for c in custom {
        let mut p = custom::CustomParser::new(c);
        let n = sample.iter().filter(|l| p.sniff(l)).count();
        if n > 0 && best.as_ref().is_none_or(|(b, _)| n > *b) {
            best = Some((n, Parser::Custom(custom::CustomParser::new(c))));
        }
    }
    // At least a quarter of the sample must look right.
    best.filter(|(n, _)| n * 4 >= sample.len()).map(|(_, p)| p)
}

/// Detection as `discover` does it, with how many sample lines matched the winner: the
/// format's name, or `None` when nothing matched a quarter of the sample.
pub fn detect_format(sample: &[String], custom: &[CustomFormat]) -> Option<(String, usize)> {
    let p = detect(sample, custom)?;
    let name = p.name();
    let n = match &p {
        Parser::Builtin(LogFormat::W3c, _) => sample.len(),
        Parser::Builtin(f, _) => sample.iter().filter(|l| f.sniff(l)).count(),
        Parser::Custom(c) => {
            let f = c.f;
            let mut q = custom::CustomParser::new(f);
            sample.iter().filter(|l| q.sniff(l)).count()
        }
    };
    Some((name, n))
}

/// How many sample lines the format `name` (built-in or custom) recognises.
pub fn sniff_count(name: &str, sample: &[String], custom: &[CustomFormat]) -> usize {
    if let Some(f) = LogFormat::from_name(name) {
        if f == LogFormat::W3c {
            return sample
                .iter()
                .filter(|l| l.starts_with('#') || f.sniff(l))
                .count();
        }
        return sample.iter().filter(|l| f.sniff(l)).count();
    }
    match custom.iter().find(|c| c.name.eq_ignore_ascii_case(name)) {
        Some(c) => {
            let mut p = custom::CustomParser::new(c);
            sample.iter().filter(|l| p.sniff(l)).count()
        }
        None => 0,
    }
}

/// A parser kept across batches of one continuous source (a tailed file, one syslog
/// sender): the format is fixed once, state such as W3C's `#Fields` carries over, and the
/// counts add up like one long file's. Custom formats are borrowed for the collector's
/// life (`'static`: the collector leaks its copy of the config's `[[log_formats]]` once).
pub struct StreamParser {
    parser: Parser<'static>,
    last_time: Option<DateTime<Utc>>,
    line_no: u64,
    max_bad: usize,
    /// Counts as for a file: `file` is the source's label.
    pub stats: InputStats,
}

impl StreamParser {
    /// A parser for the format `name` (built-in or custom).
    pub fn named(
        name: &str,
        label: &str,
        custom: &'static [CustomFormat],
        max_bad: usize,
    ) -> Result<StreamParser, LogError> {
        let parser = if let Some(f) = LogFormat::from_name(name) {
            Parser::Builtin(f, w3c::W3cState::default())
        } else if let Some(cf) = custom.iter().find(|c| c.name.eq_ignore_ascii_case(name)) {
            cf.validate()?;
            Parser::Custom(custom::CustomParser::new(cf))
        } else {
            return Err(LogError::UnknownFormatName {
                path: PathBuf::from(label),
                name: name.to_owned(),
                known: LogFormat::ALL
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        Ok(StreamParser {
            stats: InputStats {
                file: label.to_owned(),
                format: parser.name(),
                ..InputStats::default()
            },
            parser,
            last_time: None,
            line_no: 0,
            max_bad,
        })
    }

    /// The format's name.
    pub fn format(&self) -> &str {
        &self.stats.format
    }

    /// One line (without its newline); blank lines are skipped as `discover` skips them.
    /// `now` is the time of a line without one before any line had a time.
    pub fn line(&mut self, text: &str, now: DateTime<Utc>, sink: &mut dyn FnMut(FlowRecord)) {
        self.line_no += 1;
        if is_blank(text.as_bytes()) {
            return;
        }
        let mut c = Counter {
            stats: std::mem::take(&mut self.stats),
            max_bad: self.max_bad,
            last_time: self.last_time,
            now,
            sink,
        };
        if text.len() > MAX_LINE {
            c.stats.lines += 1;
            c.bad(self.line_no, "line too long", "");
        } else {
            c.line(&mut self.parser, self.line_no, text);
        }
        self.last_time = c.last_time;
        self.stats = c.stats;
    }

    /// Carry on from the counts of an earlier run (the format stays this parser's).
    pub fn restore(&mut self, stats: InputStats) {
        let format = std::mem::take(&mut self.stats.format);
        self.line_no = stats.lines;
        self.stats = InputStats { format, ..stats };
    }

    /// Whether the format keeps state from header lines (W3C `#Fields`, a custom format's
    /// header row) that a parser resuming mid-file must be shown again ([`Self::prime`]).
    pub fn needs_headers(&self) -> bool {
        match &self.parser {
            Parser::Builtin(f, _) => *f == LogFormat::W3c,
            Parser::Custom(c) => c.f.header,
        }
    }

    /// Show the parser a line read before (to learn headers again after a restart) without
    /// counting it or emitting a record. Returns whether more lines could still matter.
    pub fn prime(&mut self, line: &str) -> bool {
        match &mut self.parser {
            Parser::Builtin(LogFormat::W3c, w) => {
                if line.starts_with('#') {
                    let _ = w.parse(line, Utc::now());
                }
                true
            }
            Parser::Builtin(..) => false,
            Parser::Custom(c) => {
                if is_blank(line.as_bytes()) {
                    return true;
                }
                // The header row is the first line; then the parser has what it needs.
                let _ = c.parse(line, Utc::now());
                false
            }
        }
    }

    /// A line that was too long to keep (counted as unparsed).
    pub fn too_long(&mut self) {
        self.line_no += 1;
        self.stats.lines += 1;
        self.stats.unparsed += 1;
        if self.stats.bad_lines.len() < self.max_bad {
            self.stats.bad_lines.push(BadLine {
                line: self.line_no,
                reason: "line too long".to_owned(),
                text: String::new(),
            });
        }
    }
}

/// Open a file for line reading; gzip (by magic, whatever the name) is decompressed.
pub fn open_input(path: &Path) -> Result<Box<dyn BufRead + Send>, LogError> {
    let io_err = |source| LogError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = File::open(path).map_err(io_err)?;
    let mut magic = [0u8; 2];
    let n = tollgate_discovery::pcap::read_full(&mut f, &mut magic).map_err(io_err)?;
    let f = File::open(path).map_err(io_err)?;
    if n == 2 && magic == [0x1f, 0x8b] {
        let gz = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(256 * 1024, f));
        Ok(Box::new(BufReader::with_capacity(256 * 1024, gz)))
    } else {
        Ok(Box::new(BufReader::with_capacity(256 * 1024, f)))
    }
}

/// Import one log file: detect, parse, hand each record to `sink`.
pub fn import_file(
    path: &Path,
    opts: &LogOptions,
    sink: &mut dyn FnMut(FlowRecord),
) -> Result<InputStats, LogError> {
    let reader = open_input(path)?;
    // Lines without a usable time take the previous line's; before the first, the file's
    // modification time (when the log was last written).
    let mtime = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .map(DateTime::<Utc>::from);
    import_reader_at(reader, path, opts, sink, mtime.unwrap_or_else(Utc::now))
}

/// Streams lines out of a reader without holding more than one line.
struct Lines<R> {
    r: R,
    buf: Vec<u8>,
    line_no: u64,
    /// Bytes consumed so far (newlines included): where the next line starts, counted from
    /// where the reader started.
    pos: u64,
}

enum Next {
    Line(u64),
    TooLong(u64),
    Eof,
}

impl<R: BufRead> Lines<R> {
    /// Reads the next line into `self.buf` (without the newline and a trailing CR).
    fn next(&mut self) -> io::Result<Next> {
        self.buf.clear();
        let mut too_long = false;
        let mut any = false;
        loop {
            let avail = match self.r.fill_buf() {
                Ok(a) => a,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if avail.is_empty() {
                if !any {
                    return Ok(Next::Eof);
                }
                break;
            }
            any = true;
            match memchr::memchr(b'\n', avail) {
                Some(i) => {
                    if !too_long {
                        if self.buf.len() + i > MAX_LINE {
                            too_long = true;
                        } else {
                            self.buf.extend_from_slice(avail.get(..i).unwrap_or(&[]));
                        }
                    }
                    self.r.consume(i + 1);
                    self.pos += i as u64 + 1;
                    break;
                }
                None => {
                    let n = avail.len();
                    if !too_long {
                        if self.buf.len() + n > MAX_LINE {
                            too_long = true;
                            self.buf.clear();
                        } else {
                            self.buf.extend_from_slice(avail);
                        }
                    }
                    self.r.consume(n);
                    self.pos += n as u64;
                }
            }
        }
        self.line_no += 1;
        if too_long {
            self.buf.clear();
            return Ok(Next::TooLong(self.line_no));
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        Ok(Next::Line(self.line_no))
    }
}

struct Counter<'s> {
    stats: InputStats,
    max_bad: usize,
    last_time: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    sink: &'s mut dyn FnMut(FlowRecord),
}

impl Counter<'_> {
    fn bad(&mut self, line_no: u64, reason: &str, text: &str) {
        self.stats.unparsed += 1;
        if self.stats.bad_lines.len() < self.max_bad {
            let mut t: String = text.chars().take(160).collect();
            if t.len() < text.len() {
                t.push('…');
            }
            self.stats.bad_lines.push(BadLine {
                line: line_no,
                reason: reason.to_owned(),
                text: t,
            });
        }
    }

    fn line(&mut self, parser: &mut Parser<'_>, line_no: u64, text: &str) {
        self.stats.lines += 1;
        let fallback = self.last_time.unwrap_or(self.now);
        match parser.parse(text, fallback) {
            LineOutcome::Record(r) => {
                self.stats.parsed += 1;
                self.stats.records += 1;
                self.last_time = Some(r.last_seen);
                (self.sink)(r);
            }
            LineOutcome::Skip => self.stats.parsed += 1,
            LineOutcome::Bad(reason) => self.bad(line_no, reason, text),
        }
    }
}

fn is_blank(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_whitespace)
}

/// Import from any reader (`label` names it in stats and errors). Lines without a usable
/// time take the previous line's time, or the current time before the first.
pub fn import_reader<R: BufRead>(
    reader: R,
    label: &Path,
    opts: &LogOptions,
    sink: &mut dyn FnMut(FlowRecord),
) -> Result<InputStats, LogError> {
    import_reader_at(reader, label, opts, sink, Utc::now())
}

fn import_reader_at<R: BufRead>(
    reader: R,
    label: &Path,
    opts: &LogOptions,
    sink: &mut dyn FnMut(FlowRecord),
    default_time: DateTime<Utc>,
) -> Result<InputStats, LogError> {
    for c in &opts.custom {
        c.validate()?;
    }
    let io_err = |source| LogError::Io {
        path: label.to_owned(),
        source,
    };
    let mut lines = Lines {
        r: reader,
        buf: Vec::with_capacity(4096),
        line_no: 0,
        pos: 0,
    };
    let mut c = Counter {
        stats: InputStats {
            file: label.display().to_string(),
            ..InputStats::default()
        },
        max_bad: opts.max_bad_lines,
        last_time: None,
        now: default_time,
        sink,
    };
    let (mut parser, sample) = match pick_parser(&mut lines, opts, label)? {
        Picked::Empty => {
            // An empty file: nothing to do, nothing wrong.
            c.stats.format = "empty".to_owned();
            return Ok(c.stats);
        }
        Picked::Parser(p, sample) => (*p, sample),
    };
    c.stats.format = parser.name();
    for (n, text) in sample {
        match text {
            Some(t) => c.line(&mut parser, n, &t),
            None => {
                c.stats.lines += 1;
                c.bad(n, "line too long", "");
            }
        }
    }
    read_lines(&mut lines, &mut parser, &mut c, u64::MAX).map_err(io_err)?;
    Ok(c.stats)
}

/// What the first lines of an input decided.
enum Picked<'a> {
    /// Nothing but blank lines, or nothing at all.
    Empty,
    /// The parser, and the lines read to choose it (with their numbers; `None` for a line
    /// too long to keep), still to be parsed.
    Parser(Box<Parser<'a>>, Vec<(u64, Option<String>)>),
}

/// The forced format, or the one that most of the first [`SNIFF_LINES`] non-blank lines fit.
fn pick_parser<'a, R: BufRead>(
    lines: &mut Lines<R>,
    opts: &'a LogOptions,
    label: &Path,
) -> Result<Picked<'a>, LogError> {
    if let Some(name) = &opts.force_format {
        let parser = if let Some(f) = LogFormat::from_name(name) {
            Parser::Builtin(f, w3c::W3cState::default())
        } else if let Some(cf) = opts
            .custom
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
        {
            Parser::Custom(custom::CustomParser::new(cf))
        } else {
            let known = LogFormat::ALL
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(LogError::UnknownFormatName {
                path: label.to_owned(),
                name: name.clone(),
                known,
            });
        };
        return Ok(Picked::Parser(Box::new(parser), Vec::new()));
    }
    let io_err = |source| LogError::Io {
        path: label.to_owned(),
        source,
    };
    let mut sample: Vec<(u64, Option<String>)> = Vec::new();
    let mut texts = Vec::new();
    while texts.len() < SNIFF_LINES {
        match lines.next().map_err(io_err)? {
            Next::Eof => break,
            Next::TooLong(n) => sample.push((n, None)),
            Next::Line(n) => {
                if is_blank(&lines.buf) {
                    continue;
                }
                let s = String::from_utf8_lossy(&lines.buf).into_owned();
                texts.push(s.clone());
                sample.push((n, Some(s)));
            }
        }
    }
    match detect(&texts, &opts.custom) {
        Some(p) => Ok(Picked::Parser(Box::new(p), sample)),
        None if texts.is_empty() && sample.is_empty() => Ok(Picked::Empty),
        None => Err(LogError::UnknownFormat {
            path: label.to_owned(),
        }),
    }
}

/// Parses lines until the end of the input or until the next line would start at or after
/// `end` (a position counted as [`Lines::pos`] is).
fn read_lines<R: BufRead>(
    lines: &mut Lines<R>,
    parser: &mut Parser<'_>,
    c: &mut Counter<'_>,
    end: u64,
) -> io::Result<()> {
    while lines.pos < end {
        match lines.next()? {
            Next::Eof => break,
            Next::TooLong(n) => {
                c.stats.lines += 1;
                c.bad(n, "line too long", "");
            }
            Next::Line(n) => {
                if is_blank(&lines.buf) {
                    continue;
                }
                match std::str::from_utf8(&lines.buf) {
                    Ok(s) => c.line(parser, n, s),
                    Err(_) => {
                        let s = String::from_utf8_lossy(&lines.buf).into_owned();
                        c.line(parser, n, &s);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Parts of a file smaller than this are not worth a thread of their own.
pub const MIN_PART_BYTES: u64 = 16 << 20;

impl<'a> Parser<'a> {
    /// A parser of the same format for another part of the same file, when the format keeps
    /// nothing from one line to the next (W3C's `#Fields` and a custom format's header row
    /// are state: such files are read in one piece).
    fn fresh(&self) -> Option<Parser<'a>> {
        match self {
            Parser::Builtin(LogFormat::W3c, _) => None,
            Parser::Builtin(f, _) => Some(Parser::Builtin(*f, w3c::W3cState::default())),
            Parser::Custom(c) if c.f.header => None,
            Parser::Custom(c) => Some(Parser::Custom(custom::CustomParser::new(c.f))),
        }
    }
}

/// Import one log file in parts, on up to `threads` threads (0: one per core), so that a
/// large file takes the time of its largest part rather than of the whole.
///
/// Records of the file's first part go to `first` (on the calling thread); each further part
/// gets its own accumulator from `new_part`, and those come back in file order, for the
/// caller to fold into `first` one after the other, as if the lines had been read in order.
/// A part begins at the first line that starts inside it, so every line is read exactly
/// once. The stats are the file's: counts add up, and bad lines keep the file's line numbers.
///
/// Read in one piece, on the calling thread, as [`import_file`] does: a gzip file (its
/// stream cannot be entered in the middle), a file smaller than two [`MIN_PART_BYTES`], and
/// formats that carry state from line to line (W3C, custom formats with a header row).
///
/// One difference from reading in one piece: a line without a time of its own takes the time
/// of the line before it in its part; before a part's first timed line, the file's
/// modification time (every built-in format but `pfsense` without a year has a time on each
/// line it turns into a record).
pub fn import_file_parts<A: Send>(
    path: &Path,
    opts: &LogOptions,
    threads: usize,
    first: &mut A,
    new_part: &(dyn Fn() -> A + Sync),
    add: &(dyn Fn(&mut A, FlowRecord) + Sync),
) -> Result<(InputStats, Vec<A>), LogError> {
    import_parts_sized(path, opts, threads, MIN_PART_BYTES, first, new_part, add)
}

/// [`import_file_parts`] with parts of at least `min_part` bytes.
fn import_parts_sized<A: Send>(
    path: &Path,
    opts: &LogOptions,
    threads: usize,
    min_part: u64,
    first: &mut A,
    new_part: &(dyn Fn() -> A + Sync),
    add: &(dyn Fn(&mut A, FlowRecord) + Sync),
) -> Result<(InputStats, Vec<A>), LogError> {
    for c in &opts.custom {
        c.validate()?;
    }
    let io_err = |source| LogError::Io {
        path: path.to_owned(),
        source,
    };
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    let mtime = meta
        .modified()
        .ok()
        .map(DateTime::<Utc>::from)
        .unwrap_or_else(Utc::now);
    let size = meta.len();
    let parts = usize::try_from(size / min_part.max(1))
        .unwrap_or(usize::MAX)
        .min(threads);
    let whole = |first: &mut A| {
        let st = import_file(path, opts, &mut |r| add(first, r))?;
        Ok((st, Vec::new()))
    };
    if parts < 2 {
        return whole(first);
    }
    let mut magic = [0u8; 2];
    let n = tollgate_discovery::pcap::read_full(&mut File::open(path).map_err(io_err)?, &mut magic)
        .map_err(io_err)?;
    if n == 2 && magic == [0x1f, 0x8b] {
        return whole(first);
    }
    let mut head = Lines {
        r: BufReader::with_capacity(64 * 1024, File::open(path).map_err(io_err)?),
        buf: Vec::with_capacity(4096),
        line_no: 0,
        pos: 0,
    };
    let parser = match pick_parser(&mut head, opts, path)? {
        Picked::Parser(p, _) => p,
        Picked::Empty => return whole(first),
    };
    let mut workers = Vec::with_capacity(parts);
    for _ in 0..parts {
        match parser.fresh() {
            Some(p) => workers.push(p),
            None => return whole(first),
        }
    }
    drop(head);
    let format = parser.name();
    // Part k is the lines that start in [bounds[k], bounds[k + 1]).
    let bounds: Vec<u64> = (0..=parts as u64)
        .map(|k| u64::try_from(u128::from(size) * u128::from(k) / parts as u128).unwrap_or(size))
        .collect();
    let mut workers = workers.into_iter();
    let first_parser = workers.next();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .enumerate()
            .map(|(i, p)| {
                let (start, end) = (bounds[i + 1], bounds[i + 2]);
                s.spawn(move || {
                    let mut acc = new_part();
                    read_part(path, start, end, p, opts, mtime, &mut |r| add(&mut acc, r))
                        .map(|(st, n)| (st, n, acc))
                })
            })
            .collect();
        let head = match first_parser {
            Some(p) => read_part(path, 0, bounds[1], p, opts, mtime, &mut |r| add(first, r)),
            None => Ok((InputStats::default(), 0)),
        };
        let rest: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(io::Error::other("a log import thread stopped unexpectedly"))
                })
            })
            .collect();
        (head, rest)
    });
    let (head, rest) = results;
    let (head_stats, mut lines_before) = head.map_err(io_err)?;
    let mut stats = InputStats {
        file: path.display().to_string(),
        format,
        ..head_stats
    };
    let mut accs = Vec::with_capacity(rest.len());
    for r in rest {
        let (st, n, acc) = r.map_err(io_err)?;
        stats.lines += st.lines;
        stats.parsed += st.parsed;
        stats.unparsed += st.unparsed;
        stats.records += st.records;
        for mut b in st.bad_lines {
            if stats.bad_lines.len() >= opts.max_bad_lines {
                break;
            }
            b.line += lines_before;
            stats.bad_lines.push(b);
        }
        lines_before += n;
        accs.push(acc);
    }
    Ok((stats, accs))
}

/// Reads the lines that start in `[start, end)` of a plain file; returns their counts and
/// how many lines (blank ones too) the part has.
fn read_part(
    path: &Path,
    start: u64,
    end: u64,
    mut parser: Parser<'_>,
    opts: &LogOptions,
    now: DateTime<Utc>,
    sink: &mut dyn FnMut(FlowRecord),
) -> io::Result<(InputStats, u64)> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path)?;
    // From the byte before the part: the line that ends there (or runs through it) belongs
    // to the part before.
    let from = start.saturating_sub(1);
    f.seek(SeekFrom::Start(from))?;
    let mut lines = Lines {
        r: BufReader::with_capacity(256 * 1024, f),
        buf: Vec::with_capacity(4096),
        line_no: 0,
        pos: from,
    };
    if start > 0 {
        lines.next()?;
        lines.line_no = 0;
    }
    let mut c = Counter {
        stats: InputStats::default(),
        max_bad: opts.max_bad_lines,
        last_time: None,
        now,
        sink,
    };
    read_lines(&mut lines, &mut parser, &mut c, end)?;
    Ok((c.stats, lines.line_no))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> (InputStats, Vec<FlowRecord>) {
        let mut recs = Vec::new();
        let st = import_reader(
            text.as_bytes(),
            Path::new("t.log"),
            &LogOptions::default(),
            &mut |r| recs.push(r),
        )
        .expect("import");
        (st, recs)
    }

    /// A Squid log with everything that can sit at a part's edge: blank lines, CRLF, garbage,
    /// a line longer than `MAX_LINE`, no newline at the end.
    fn awkward_squid_log() -> String {
        let good = [
            "1764144000.120    312 192.0.2.10 TCP_TUNNEL/200 48211 CONNECT www.dropbox.com:443 alice HIER_DIRECT/198.51.100.7 -",
            "1764144003.455     88 192.0.2.11 TCP_MISS/200 1534 GET http://slack.com/robots.txt - HIER_DIRECT/198.51.100.8 text/plain",
        ];
        let mut text = String::new();
        for i in 0..3000 {
            match i % 97 {
                13 => text.push('\n'),
                29 => text.push_str("not a squid line at all\n"),
                41 => text.push_str("  \r\n"),
                _ => {
                    text.push_str(good[i % 2]);
                    text.push_str(if i % 5 == 0 { "\r\n" } else { "\n" });
                }
            }
            if i == 1500 {
                text.push_str(&"x".repeat(MAX_LINE + 10));
                text.push('\n');
            }
        }
        text.push_str(good[0]);
        text
    }

    fn import_in_parts(
        path: &Path,
        threads: usize,
        min_part: u64,
    ) -> (InputStats, Vec<FlowRecord>, usize) {
        let opts = LogOptions {
            max_bad_lines: 1000,
            ..LogOptions::default()
        };
        let mut first = Vec::new();
        let (st, rest) = import_parts_sized(
            path,
            &opts,
            threads,
            min_part,
            &mut first,
            &Vec::new,
            &|v: &mut Vec<FlowRecord>, r| v.push(r),
        )
        .expect("import in parts");
        let parts = 1 + rest.len();
        for part in rest {
            first.extend(part);
        }
        (st, first, parts)
    }

    #[test]
    fn a_file_read_in_parts_gives_what_one_pass_gives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        std::fs::write(&path, awkward_squid_log()).expect("write");
        let opts = LogOptions {
            max_bad_lines: 1000,
            ..LogOptions::default()
        };
        let mut want_recs = Vec::new();
        let want = import_file(&path, &opts, &mut |r| want_recs.push(r)).expect("one pass");
        assert!(want.unparsed > 30 && want.records > 2800, "{want:?}");
        // Part sizes that put edges everywhere: inside lines, on newlines, inside the long line.
        for (threads, min_part) in [(2, 1024), (7, 1024), (64, 4096), (3, 100_000), (16, 1)] {
            let (got, recs, parts) = import_in_parts(&path, threads, min_part);
            assert!(parts > 1, "{threads} threads, {min_part}: read in parts");
            assert_eq!(got, want, "{threads} threads, parts of {min_part}");
            assert_eq!(recs, want_recs, "{threads} threads, parts of {min_part}");
        }
    }

    #[test]
    fn stateful_and_compressed_files_are_read_in_one_part() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w3c = dir.path().join("u_ex.log");
        let mut text = String::from(
            "#Software: Microsoft Internet Information Services 10.0\n#Fields: date time c-ip cs-method cs-uri-stem cs-host sc-status sc-bytes cs-bytes\n",
        );
        for i in 0..2000 {
            text.push_str(&format!(
                "2025-11-26 08:00:{:02} 10.0.0.{} GET / www.dropbox.com 200 {} 100\n",
                i % 60,
                i % 200,
                i
            ));
        }
        std::fs::write(&w3c, &text).expect("write");
        let (st, recs, parts) = import_in_parts(&w3c, 4, 1024);
        assert_eq!((parts, st.records, recs.len()), (1, 2000, 2000), "{st:?}");

        let gz = dir.path().join("access.log.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, awkward_squid_log().as_bytes()).expect("gzip");
        std::fs::write(&gz, enc.finish().expect("gzip")).expect("write");
        let (st, _, parts) = import_in_parts(&gz, 4, 64);
        assert_eq!(parts, 1);
        assert!(st.records > 2800, "{st:?}");
    }

    #[test]
    fn bad_lines_counted_with_numbers() {
        let text = "1157689312.049   5006 10.105.21.199 TCP_MISS/200 19763 CONNECT login.yahoo.com:443 badeyek DIRECT/209.73.177.115 -\n\
                    \n\
                    this is not squid\n\
                    1157689320.327   2864 10.105.21.199 TCP_MISS/200 10182 GET http://www.goonernews.com/ badeyek DIRECT/207.58.145.61 text/html\r\n\
                    1157689320.327   2864 10.105.21.199 TCP_MISS/200 x GET http://www.goonernews.com/ badeyek DIRECT/207.58.145.61 text/html\n";
        let (st, recs) = run(text);
        assert_eq!(st.format, "squid-native");
        assert_eq!((st.lines, st.parsed, st.unparsed, st.records), (4, 2, 2, 2));
        assert_eq!(
            st.bad_lines.iter().map(|b| b.line).collect::<Vec<_>>(),
            vec![3, 5]
        );
        assert_eq!(recs.len(), 2);
    }

    /// Bad input is normal input: every prefix of every fixture line, and some mangled
    /// bytes, through every parser; nothing may panic.
    #[test]
    fn parsers_survive_prefixes_and_garbage() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/logs");
        let mut lines: Vec<String> = Vec::new();
        for e in std::fs::read_dir(&dir).expect("testdata/logs") {
            let text = std::fs::read_to_string(e.expect("entry").path()).expect("read");
            lines.extend(text.lines().map(str::to_owned));
        }
        lines.push("\u{0}\u{7f}ÿ\\|=\"[:;,{}".to_owned());
        let now = Utc::now();
        let custom = CustomFormat {
            name: "c".into(),
            kind: custom::CustomKind::Csv,
            delimiter: None,
            header: false,
            columns: Vec::new(),
            match_text: None,
            time: Some("0".into()),
            time_format: None,
            src_ip: "1".into(),
            user: Some("2".into()),
            dst_host: Some("3".into()),
            dst_url: None,
            dst_ip: Some("4".into()),
            dst_port: None,
            bytes_up: Some("5".into()),
            bytes_down: Some("6".into()),
            action: None,
            ignore_actions: Vec::new(),
        };
        for line in &lines {
            let cuts: Vec<usize> = (0..=line.len())
                .filter(|i| line.is_char_boundary(*i))
                .collect();
            for &i in &cuts {
                let p = &line[..i];
                for f in LogFormat::ALL {
                    let _ = f.sniff(p);
                    let mut parser = Parser::Builtin(f, w3c::W3cState::default());
                    let _ = parser.parse(p, now);
                }
                let _ = custom::CustomParser::new(&custom).parse(p, now);
            }
        }
    }

    #[test]
    fn unknown_and_empty() {
        let e = import_reader(
            "hello\nworld\n".as_bytes(),
            Path::new("x"),
            &LogOptions::default(),
            &mut |_| {},
        );
        assert!(matches!(e, Err(LogError::UnknownFormat { .. })));
        let (st, _) = run("\n\n");
        assert_eq!(st.format, "empty");
    }

    #[test]
    fn too_long_line_is_counted() {
        let good = "1157689312.049 5006 10.105.21.199 TCP_MISS/200 19763 CONNECT login.yahoo.com:443 - DIRECT/209.73.177.115 -\n";
        let text = format!("{good}{}\n{good}", "x".repeat(MAX_LINE + 10));
        let (st, recs) = run(&text);
        assert_eq!((st.lines, st.parsed, st.unparsed), (3, 2, 1));
        assert_eq!(recs.len(), 2);
    }
}
