//! Custom log formats from the config, for logs no built-in importer knows.
//!
//! ```toml
//! [[log_formats]]
//! name = "acme-proxy"          # shown in reports; also a --format value
//! kind = "csv"                 # "csv" (delimited columns) or "kv" (key=value pairs)
//! delimiter = ","              # csv only, one character (default ","; "\t" for tab)
//! header = false               # csv only: the first line names the columns (default false)
//! columns = ["ts", "client", "user", "url", "sent", "received", "verdict"]
//!                              # csv only: column names when there is no header line;
//!                              # without either, fields are named by 0-based position "0", "1", ...
//! match = "acme"               # optional: only lines containing this text are this format
//! # Which field holds what (column names for csv, keys for kv). src_ip and one of
//! # dst_host / dst_url / dst_ip are required.
//! time = "ts"                  # optional; time_format says how to read it
//! time_format = "auto"         # "auto" (epoch s/ms, RFC 3339, "YYYY-MM-DD hh:mm:ss"),
//!                              # "epoch", or a chrono strftime pattern ("%d/%m/%Y %H:%M:%S")
//! src_ip = "client"
//! user = "user"                # optional
//! dst_host = "host"            # optional: a host name
//! dst_url = "url"              # optional: a URL (its host is used when dst_host is absent)
//! dst_ip = "server"            # optional
//! dst_port = "port"            # optional
//! bytes_up = "sent"            # optional
//! bytes_down = "received"      # optional
//! action = "verdict"           # optional, with ignore_actions:
//! ignore_actions = ["TEST"]    # lines whose action is one of these are not transactions
//! ```

use std::borrow::Cow;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::LogError;
use super::util::{
    KvIter, LineFields, LineOutcome, parse_epoch_any, parse_ip, parse_rfc3339, parse_u16,
    parse_u64, split_csv,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CustomKind {
    Csv,
    Kv,
}

/// One `[[log_formats]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomFormat {
    pub name: String,
    pub kind: CustomKind,
    #[serde(default)]
    pub delimiter: Option<String>,
    #[serde(default)]
    pub header: bool,
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default, rename = "match")]
    pub match_text: Option<String>,
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub time_format: Option<String>,
    pub src_ip: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub dst_host: Option<String>,
    #[serde(default)]
    pub dst_url: Option<String>,
    #[serde(default)]
    pub dst_ip: Option<String>,
    #[serde(default)]
    pub dst_port: Option<String>,
    #[serde(default)]
    pub bytes_up: Option<String>,
    #[serde(default)]
    pub bytes_down: Option<String>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub ignore_actions: Vec<String>,
}

impl CustomFormat {
    /// Check what serde cannot: a one-character delimiter, a destination field, a name.
    pub fn validate(&self) -> Result<(), LogError> {
        let bad = |reason: &str| {
            Err(LogError::BadCustomFormat {
                name: self.name.clone(),
                reason: reason.to_owned(),
            })
        };
        if self.name.trim().is_empty() {
            return bad("name is empty");
        }
        if self.dst_host.is_none() && self.dst_url.is_none() && self.dst_ip.is_none() {
            return bad("one of dst_host, dst_url, dst_ip is required");
        }
        if self.kind == CustomKind::Kv
            && (self.header || !self.columns.is_empty() || self.delimiter.is_some())
        {
            return bad("header, columns and delimiter are for kind = \"csv\"");
        }
        if self.delimiter().is_none() {
            return bad("delimiter must be one ASCII character (or \"\\t\")");
        }
        Ok(())
    }

    fn delimiter(&self) -> Option<u8> {
        match self.delimiter.as_deref() {
            None => Some(b','),
            Some("\\t") | Some("\t") | Some("tab") => Some(b'\t'),
            Some(d) if d.len() == 1 && d.is_ascii() => d.bytes().next(),
            Some(_) => None,
        }
    }
}

/// Positions (csv) or keys (kv) for each wanted field.
pub(crate) struct CustomParser<'a> {
    pub(crate) f: &'a CustomFormat,
    delim: u8,
    /// csv: column names in order (from `columns` or the header line).
    columns: Vec<String>,
    header_pending: bool,
}

impl<'a> CustomParser<'a> {
    pub(crate) fn new(f: &'a CustomFormat) -> Self {
        CustomParser {
            f,
            delim: f.delimiter().unwrap_or(b','),
            columns: f.columns.clone(),
            header_pending: f.header,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.f.name
    }

    /// A sample line is this format when parsing it yields a record (or it is the header).
    pub(crate) fn sniff(&mut self, line: &str) -> bool {
        if let Some(m) = &self.f.match_text
            && !line.contains(m.as_str())
        {
            return false;
        }
        matches!(self.parse(line, Utc::now()), LineOutcome::Record(_))
            || (self.f.header && self.columns.is_empty())
    }

    fn time(&self, v: &str) -> Option<DateTime<Utc>> {
        match self.f.time_format.as_deref() {
            None | Some("auto") => parse_epoch_any(v).or_else(|| parse_rfc3339(v)),
            Some("epoch") => parse_epoch_any(v),
            Some(fmt) => NaiveDateTime::parse_from_str(v.trim(), fmt)
                .ok()
                .map(|nd| Utc.from_utc_datetime(&nd))
                .or_else(|| {
                    DateTime::parse_from_str(v.trim(), fmt)
                        .ok()
                        .map(|t| t.with_timezone(&Utc))
                }),
        }
    }

    pub(crate) fn parse(&mut self, line: &str, fallback: DateTime<Utc>) -> LineOutcome {
        if let Some(m) = &self.f.match_text
            && !line.contains(m.as_str())
        {
            return LineOutcome::Bad("custom: line does not contain the match text");
        }
        match self.f.kind {
            CustomKind::Csv => {
                let mut fields: Vec<Cow<str>> = Vec::new();
                split_csv(line, self.delim, &mut fields);
                if self.header_pending {
                    self.header_pending = false;
                    self.columns = fields.iter().map(|c| c.trim().to_owned()).collect();
                    return LineOutcome::Skip;
                }
                let cols = &self.columns;
                let get = |name: &Option<String>| -> Option<&str> {
                    let name = name.as_deref()?;
                    let idx = cols.iter().position(|c| c == name).or_else(|| {
                        if cols.is_empty() {
                            name.parse::<usize>().ok()
                        } else {
                            None
                        }
                    })?;
                    fields
                        .get(idx)
                        .map(|c| c.as_ref())
                        .filter(|v| !v.is_empty() && *v != "-")
                };
                self.fields_to_record(&get, fallback)
            }
            CustomKind::Kv => {
                let pairs: Vec<(&str, &str)> = KvIter::new(line).collect();
                if pairs.is_empty() {
                    return LineOutcome::Bad("custom: no key=value pairs");
                }
                let get = |name: &Option<String>| -> Option<&str> {
                    let name = name.as_deref()?;
                    pairs
                        .iter()
                        .find(|(k, _)| *k == name)
                        .map(|(_, v)| *v)
                        .filter(|v| !v.is_empty() && *v != "-")
                };
                self.fields_to_record(&get, fallback)
            }
        }
    }

    fn fields_to_record<'l>(
        &self,
        get: &dyn Fn(&Option<String>) -> Option<&'l str>,
        fallback: DateTime<Utc>,
    ) -> LineOutcome {
        let f = self.f;
        let Some(src) = get(&Some(f.src_ip.clone())).and_then(parse_ip) else {
            return LineOutcome::Bad("custom: no valid source IP");
        };
        let time = match get(&f.time) {
            Some(t) => match self.time(t) {
                Some(t) => Some(t),
                None => return LineOutcome::Bad("custom: bad time"),
            },
            None => None,
        };
        if let Some(a) = get(&f.action)
            && f.ignore_actions.iter().any(|x| x.eq_ignore_ascii_case(a))
        {
            return LineOutcome::Skip;
        }
        LineFields {
            time,
            src: Some(src),
            dst: get(&f.dst_ip).and_then(parse_ip),
            dport: get(&f.dst_port).map_or(0, parse_u16),
            host: get(&f.dst_host).or_else(|| get(&f.dst_url)),
            user: get(&f.user),
            bytes_up: get(&f.bytes_up).map_or(0, parse_u64),
            bytes_down: get(&f.bytes_down).map_or(0, parse_u64),
            ..LineFields::default()
        }
        .into_record(fallback)
    }
}
