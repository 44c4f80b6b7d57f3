//! Compiled policies and their evaluation: pure functions of a request/response description
//! (no I/O). The HTTP layer asks three questions per exchange: the access decision, the
//! activity decision, and the transfer (upload / download) decision; each answer is the most
//! restrictive matching policy (block > audit > allow), or none.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;
use regex::bytes::Regex as BytesRegex;
use serde::Serialize;
use time::OffsetDateTime;

use crate::config::{
    AccessPolicy, Action, ActivityRule, ContentKind, DeviceState, PolicySet, SessionPolicy,
    TimeWindow, TransferRule,
};
use crate::dlp::{self, Finding};
use crate::error::ProxyError;

/// A policy's verdict on one exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub action: Action,
    pub policy: String,
    /// `access`, `activity`, `upload`, `download`.
    pub stage: &'static str,
    pub reason: String,
    pub evidence: Vec<Finding>,
}

/// Keep the most restrictive of two decisions (the first on a tie).
pub fn stricter(a: Option<Decision>, b: Option<Decision>) -> Option<Decision> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.action > a.action { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// What the access and activity checks look at.
#[derive(Debug, Clone)]
pub struct RequestInfo<'a> {
    pub app: &'a str,
    pub src: IpAddr,
    pub user: Option<&'a str>,
    pub managed: bool,
    /// Normalised ([`normalize_host`]): lower case, no port, no trailing dot.
    pub host: &'a str,
    pub method: &'a str,
    /// As sent (path and query).
    pub path: &'a str,
    /// [`normalize_path`] of `path`; activity rules match either form.
    pub norm_path: &'a str,
    pub user_agent: &'a str,
    pub now: OffsetDateTime,
}

/// What the transfer checks look at (metadata; the body is passed separately).
#[derive(Debug, Clone, Default)]
pub struct TransferMeta {
    /// Media type without parameters, lower case.
    pub content_type: Option<String>,
    /// File names seen (Content-Disposition, multipart parts, last URL segment).
    pub filenames: Vec<String>,
    /// Media types of multipart parts.
    pub part_types: Vec<String>,
    /// Body size if known: the largest of Content-Length, the bytes counted, the decoded
    /// size, and the total of a `Content-Range`.
    pub size: Option<u64>,
    /// `Content-Encoding` as sent (every header joined); content rules look at the decoded body.
    pub content_encoding: Option<String>,
    /// Why the body's file names or parts could not all be read (too many parts, malformed
    /// multipart): the caller applies `over_limit_action`.
    pub problem: Option<String>,
}

#[derive(Debug)]
struct Apps(Vec<String>);

impl Apps {
    fn matches(&self, app: &str) -> bool {
        self.0.iter().any(|a| a == "*" || a == app)
    }
}

/// `*` wildcard pattern, case-insensitive, compiled to an anchored regex.
fn wildcard(p: &str) -> Result<Regex, regex::Error> {
    let parts: Vec<String> = p.split('*').map(regex::escape).collect();
    Regex::new(&format!("(?i)^{}$", parts.join(".*")))
}

#[derive(Debug)]
struct CActivity {
    method: Option<String>,
    host: Option<Regex>,
    path: Option<Regex>,
    text: String,
}

#[derive(Debug)]
pub struct CTransfer {
    exts: Vec<String>,
    mimes: Vec<String>,
    max_size: Option<u64>,
    content: Vec<ContentKind>,
    custom: Vec<BytesRegex>,
    min_matches: usize,
}

impl CTransfer {
    /// The rule needs to see the body (content detectors, or multipart metadata).
    pub fn needs_body(&self, meta: &TransferMeta) -> bool {
        let multipart = meta
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("multipart/"));
        // A coded body's size is judged decoded: gzip must not shrink a file under max_size.
        let coded = meta
            .content_encoding
            .as_deref()
            .is_some_and(|c| !c.trim().is_empty() && !c.trim().eq_ignore_ascii_case("identity"));
        self.reads_content()
            || (multipart && (!self.exts.is_empty() || !self.mimes.is_empty()))
            || (self.max_size.is_some() && (meta.size.is_none() || coded))
    }

    /// The rule scans content: every body it judges is buffered, whatever its headers say.
    pub fn reads_content(&self) -> bool {
        !self.content.is_empty() || !self.custom.is_empty()
    }

    fn is_empty(&self) -> bool {
        self.exts.is_empty()
            && self.mimes.is_empty()
            && self.max_size.is_none()
            && self.content.is_empty()
            && self.custom.is_empty()
    }

    /// The rule's size limit.
    pub fn max_size(&self) -> Option<u64> {
        self.max_size
    }

    /// Does the rule match? Returns the reason and masked evidence.
    fn check(&self, meta: &TransferMeta, body: Option<&[u8]>) -> Option<(String, Vec<Finding>)> {
        if self.is_empty() {
            return Some(("any transfer".into(), Vec::new()));
        }
        for name in &meta.filenames {
            if let Some(ext) = extension(name)
                && self.exts.contains(&ext)
            {
                return Some((format!("file extension .{ext} ({name})"), Vec::new()));
            }
        }
        for t in meta.content_type.iter().chain(meta.part_types.iter()) {
            if self.mimes.iter().any(|m| mime_matches(m, t)) {
                return Some((format!("media type {t}"), Vec::new()));
            }
        }
        if let (Some(max), Some(size)) = (self.max_size, meta.size)
            && size > max
        {
            return Some((format!("size {size} > {max} bytes"), Vec::new()));
        }
        if let Some(body) = body
            && (!self.content.is_empty() || !self.custom.is_empty())
        {
            let form = meta.content_type.as_deref() == Some("application/x-www-form-urlencoded");
            let decoded;
            let scan_body: &[u8] = if form {
                decoded = dlp::form_decode(body);
                &decoded
            } else {
                body
            };
            let mut found: Vec<Finding> = Vec::new();
            for k in &self.content {
                found.extend(dlp::scan(*k, scan_body));
            }
            for (i, re) in self.custom.iter().enumerate() {
                found.extend(dlp::scan_custom(i, re, scan_body));
            }
            if !found.is_empty() && found.len() >= self.min_matches {
                let mut kinds: Vec<&str> = found.iter().map(|f| f.kind.as_str()).collect();
                kinds.dedup();
                return Some((
                    format!("{} sensitive item(s): {}", found.len(), kinds.join(", ")),
                    found,
                ));
            }
        }
        None
    }
}

/// `type/subtype` or `type/*` against a lower-case media type.
fn mime_matches(pattern: &str, t: &str) -> bool {
    let p = pattern.to_ascii_lowercase();
    match p.strip_suffix("/*") {
        Some(major) => t.split('/').next() == Some(major),
        None => p == t,
    }
}

/// Lower-case extension of a file name (`a/b.tar.GZ` -> `gz`).
pub fn extension(name: &str) -> Option<String> {
    // Windows and browsers drop trailing dots and spaces: `evil.exe. ` is saved as `evil.exe`.
    let name = name.trim_end_matches(|c: char| c == '.' || c.is_whitespace() || c == '\0');
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let (stem, ext) = base.rsplit_once('.')?;
    if stem.is_empty() && ext.is_empty() || ext.is_empty() || ext.len() > 16 {
        return None;
    }
    Some(ext.to_ascii_lowercase())
}

#[derive(Debug)]
struct CSession {
    name: String,
    apps: Apps,
    action: Action,
    download: Option<CTransfer>,
    upload: Option<CTransfer>,
    activities: Vec<CActivity>,
}

impl CSession {
    fn monitor_only(&self) -> bool {
        self.download.is_none() && self.upload.is_none() && self.activities.is_empty()
    }
}

#[derive(Debug)]
struct CTime {
    from: u32,
    to: u32,
    days: Vec<time::Weekday>,
    offset_secs: i32,
}

impl CTime {
    fn contains(&self, now: OffsetDateTime) -> bool {
        let local = now.to_offset(
            time::UtcOffset::from_whole_seconds(self.offset_secs).unwrap_or(time::UtcOffset::UTC),
        );
        let minute = u32::from(local.hour()) * 60 + u32::from(local.minute());
        if !self.days.is_empty() && !self.days.contains(&local.weekday()) {
            return false;
        }
        if self.from <= self.to {
            (self.from..self.to).contains(&minute)
        } else {
            minute >= self.from || minute < self.to
        }
    }
}

#[derive(Debug)]
struct CAccess {
    name: String,
    apps: Apps,
    action: Action,
    source_ips: Vec<IpNet>,
    ip_tags: Vec<Vec<IpNet>>,
    device: Option<DeviceState>,
    users: Vec<String>,
    user_agents: Vec<Regex>,
    time: Option<CTime>,
}

/// Policies ready to evaluate; built from a [`PolicySet`] plus the proxy's `ip_tags`.
#[derive(Debug, Default)]
pub struct Policies {
    session: Vec<CSession>,
    access: Vec<CAccess>,
}

fn bad(policy: &str, key: &str, msg: impl std::fmt::Display) -> ProxyError {
    ProxyError::Policy {
        policy: policy.to_string(),
        key: key.to_string(),
        message: msg.to_string(),
    }
}

fn compile_transfer(policy: &str, key: &str, r: &TransferRule) -> Result<CTransfer, ProxyError> {
    let mut custom = Vec::new();
    for c in &r.custom {
        custom.push(BytesRegex::new(c).map_err(|e| bad(policy, key, e))?);
    }
    Ok(CTransfer {
        exts: r
            .file_extensions
            .iter()
            .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
            .collect(),
        mimes: r
            .mime_types
            .iter()
            .map(|m| m.to_ascii_lowercase())
            .collect(),
        max_size: r.max_size.map(|s| s.0),
        content: r.content.clone(),
        custom,
        min_matches: r.min_matches.unwrap_or(1).max(1) as usize,
    })
}

fn compile_activity(policy: &str, a: &ActivityRule) -> Result<CActivity, ProxyError> {
    let pat = |p: &Option<String>| {
        p.as_deref()
            .map(wildcard)
            .transpose()
            .map_err(|e| bad(policy, "activities", e))
    };
    Ok(CActivity {
        method: a.method.as_ref().map(|m| m.to_ascii_uppercase()),
        host: pat(&a.host)?,
        path: pat(&a.path)?,
        text: format!(
            "{} {}{}",
            a.method.as_deref().unwrap_or("*"),
            a.host.as_deref().unwrap_or("*"),
            a.path.as_deref().unwrap_or("*")
        ),
    })
}

fn parse_hhmm(policy: &str, s: &str) -> Result<u32, ProxyError> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| bad(policy, "time", format!("{s:?} is not HH:MM")))?;
    let h: u32 = h
        .parse()
        .map_err(|_| bad(policy, "time", format!("{s:?} is not HH:MM")))?;
    let m: u32 = m
        .parse()
        .map_err(|_| bad(policy, "time", format!("{s:?} is not HH:MM")))?;
    if h > 24 || m > 59 || (h == 24 && m != 0) {
        return Err(bad(policy, "time", format!("{s:?} is not a time of day")));
    }
    Ok(h * 60 + m)
}

fn compile_time(policy: &str, t: &TimeWindow) -> Result<CTime, ProxyError> {
    use time::Weekday::*;
    let mut days = Vec::new();
    for d in &t.days {
        days.push(match d.to_ascii_lowercase().get(..3) {
            Some("mon") => Monday,
            Some("tue") => Tuesday,
            Some("wed") => Wednesday,
            Some("thu") => Thursday,
            Some("fri") => Friday,
            Some("sat") => Saturday,
            Some("sun") => Sunday,
            _ => return Err(bad(policy, "time.days", format!("unknown day {d:?}"))),
        });
    }
    if t.utc_offset_minutes.abs() > 18 * 60 {
        return Err(bad(policy, "time.utc_offset_minutes", "out of range"));
    }
    Ok(CTime {
        from: parse_hhmm(policy, &t.from)?,
        to: parse_hhmm(policy, &t.to)?,
        days,
        offset_secs: t.utc_offset_minutes * 60,
    })
}

impl Policies {
    /// Compile and validate. Errors name the policy and key.
    pub fn compile(
        set: &PolicySet,
        ip_tags: &BTreeMap<String, Vec<IpNet>>,
    ) -> Result<Policies, ProxyError> {
        let mut session = Vec::new();
        for p in &set.session_policies {
            session.push(compile_session(p)?);
        }
        let mut access = Vec::new();
        for p in &set.access_policies {
            access.push(compile_access(p, ip_tags)?);
        }
        Ok(Policies { session, access })
    }

    /// Access policies: most restrictive matching one.
    pub fn access(&self, r: &RequestInfo<'_>) -> Option<Decision> {
        let mut best = None;
        for p in self.access.iter().filter(|p| p.apps.matches(r.app)) {
            if !p.source_ips.is_empty() && !p.source_ips.iter().any(|n| n.contains(&r.src)) {
                continue;
            }
            if !p.ip_tags.is_empty()
                && !p
                    .ip_tags
                    .iter()
                    .any(|t| t.iter().any(|n| n.contains(&r.src)))
            {
                continue;
            }
            match p.device {
                Some(DeviceState::Managed) if !r.managed => continue,
                Some(DeviceState::Unmanaged) if r.managed => continue,
                _ => {}
            }
            if !p.users.is_empty() && !r.user.is_some_and(|u| p.users.iter().any(|x| x == u)) {
                continue;
            }
            if !p.user_agents.is_empty()
                && !p.user_agents.iter().any(|re| re.is_match(r.user_agent))
            {
                continue;
            }
            if let Some(t) = &p.time
                && !t.contains(r.now)
            {
                continue;
            }
            let d = Decision {
                action: p.action,
                policy: p.name.clone(),
                stage: "access",
                reason: "access policy conditions met".into(),
                evidence: Vec::new(),
            };
            best = stricter(best, Some(d));
        }
        best
    }

    /// Activity rules and monitor-only policies.
    pub fn activity(&self, r: &RequestInfo<'_>) -> Option<Decision> {
        let mut best = None;
        for p in self.session.iter().filter(|p| p.apps.matches(r.app)) {
            if p.monitor_only() {
                best = stricter(
                    best,
                    Some(Decision {
                        action: p.action,
                        policy: p.name.clone(),
                        stage: "activity",
                        reason: "session monitored".into(),
                        evidence: Vec::new(),
                    }),
                );
                continue;
            }
            for a in &p.activities {
                let m_ok = a
                    .method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(r.method));
                let h_ok = a.host.as_ref().is_none_or(|re| re.is_match(r.host));
                let p_ok = a
                    .path
                    .as_ref()
                    .is_none_or(|re| re.is_match(r.path) || re.is_match(r.norm_path));
                if m_ok && h_ok && p_ok {
                    best = stricter(
                        best,
                        Some(Decision {
                            action: p.action,
                            policy: p.name.clone(),
                            stage: "activity",
                            reason: format!("activity {}", a.text),
                            evidence: Vec::new(),
                        }),
                    );
                    break;
                }
            }
        }
        best
    }

    /// Transfer rules that apply to `app` in the given direction, with their policy.
    pub fn transfer_rules<'a>(&'a self, app: &str, upload: bool) -> Vec<TransferRef<'a>> {
        self.session
            .iter()
            .filter(|p| p.apps.matches(app))
            .filter_map(|p| {
                let rule = if upload {
                    p.upload.as_ref()
                } else {
                    p.download.as_ref()
                }?;
                Some(TransferRef {
                    name: &p.name,
                    action: p.action,
                    rule,
                    upload,
                })
            })
            .collect()
    }

    /// Does any policy in this set concern `app` at all? (If not, the proxy streams.)
    pub fn concerns(&self, app: &str) -> bool {
        self.session.iter().any(|p| p.apps.matches(app))
            || self.access.iter().any(|p| p.apps.matches(app))
    }
}

/// A transfer rule with the policy it belongs to.
#[derive(Debug, Clone, Copy)]
pub struct TransferRef<'a> {
    pub name: &'a str,
    pub action: Action,
    pub rule: &'a CTransfer,
    pub upload: bool,
}

/// Most restrictive decision over `rules`. `body` is None when it was not buffered.
pub fn check_transfer(
    rules: &[TransferRef<'_>],
    meta: &TransferMeta,
    body: Option<&[u8]>,
) -> Option<Decision> {
    let mut best = None;
    for r in rules {
        if let Some((reason, evidence)) = r.rule.check(meta, body) {
            best = stricter(
                best,
                Some(Decision {
                    action: r.action,
                    policy: r.name.to_string(),
                    stage: if r.upload { "upload" } else { "download" },
                    reason,
                    evidence,
                }),
            );
        }
    }
    best
}

fn compile_session(p: &SessionPolicy) -> Result<CSession, ProxyError> {
    let mut activities = Vec::new();
    for a in &p.activities {
        activities.push(compile_activity(&p.name, a)?);
    }
    Ok(CSession {
        name: p.name.clone(),
        apps: Apps(p.apps.clone()),
        action: p.action,
        download: p
            .download
            .as_ref()
            .map(|r| compile_transfer(&p.name, "download", r))
            .transpose()?,
        upload: p
            .upload
            .as_ref()
            .map(|r| compile_transfer(&p.name, "upload", r))
            .transpose()?,
        activities,
    })
}

fn compile_access(
    p: &AccessPolicy,
    tags: &BTreeMap<String, Vec<IpNet>>,
) -> Result<CAccess, ProxyError> {
    let mut ip_tags = Vec::new();
    for t in &p.ip_tags {
        ip_tags.push(
            tags.get(t)
                .cloned()
                .ok_or_else(|| bad(&p.name, "ip_tags", format!("unknown tag {t:?}")))?,
        );
    }
    let mut user_agents = Vec::new();
    for ua in &p.user_agents {
        user_agents.push(Regex::new(ua).map_err(|e| bad(&p.name, "user_agents", e))?);
    }
    Ok(CAccess {
        name: p.name.clone(),
        apps: Apps(p.apps.clone()),
        action: p.action,
        source_ips: p.source_ips.clone(),
        ip_tags,
        device: p.device,
        users: p.users.clone(),
        user_agents,
        time: p
            .time
            .as_ref()
            .map(|t| compile_time(&p.name, t))
            .transpose()?,
    })
}

/// Media type of a Content-Type value, lower case, without parameters.
pub fn media_type(v: &str) -> String {
    v.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Percent-decoding (`%XX`; anything else, `+` included, kept), lossy UTF-8.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |x: Option<&u8>| x.and_then(|x| (*x as char).to_digit(16));
        match (c, hex(b.get(i + 1)), hex(b.get(i + 2))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parameters of a header value (`type; a=b; c="d;e"`): names lower case, values unquoted
/// (backslash escapes honoured), in order. A `;` inside quotes belongs to the value.
pub fn header_params(v: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = match split_unquoted(v) {
        Some(i) => v.get(i + 1..).unwrap_or(""),
        None => return out,
    };
    loop {
        let end = split_unquoted(rest).unwrap_or(rest.len());
        let part = rest.get(..end).unwrap_or("");
        if let Some((k, val)) = part.split_once('=') {
            out.push((k.trim().to_ascii_lowercase(), unquote(val.trim())));
        }
        match rest.get(end + 1..) {
            Some(r) if end < rest.len() => rest = r,
            _ => break,
        }
    }
    out
}

/// Index of the first `;` outside a quoted string.
fn split_unquoted(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"') else {
        return v.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            '"' => break,
            c => out.push(c),
        }
    }
    out
}

/// An RFC 8187 `ext-value` (`charset'lang'pct-encoded`), decoded.
fn ext_value(v: &str) -> String {
    let mut it = v.splitn(3, '\'');
    match (it.next(), it.next(), it.next()) {
        (Some(_), Some(_), Some(enc)) => percent_decode(enc),
        _ => percent_decode(v),
    }
}

/// Every file name a Content-Disposition value can stand for: `filename*` (RFC 8187), RFC
/// 2231 continuations (`filename*0*=`, `filename*1=`, ...) joined, and the plain `filename`
/// (quotes and `;` inside them honoured). Browsers differ in which they prefer, so the caller
/// checks them all.
pub fn disposition_filenames(v: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut pieces: Vec<(u32, String)> = Vec::new();
    for (k, val) in header_params(v) {
        if k == "filename" {
            names.push(val);
        } else if k == "filename*" {
            names.push(ext_value(&val));
        } else if let Some(n) = k.strip_prefix("filename*") {
            let (num, encoded) = match n.strip_suffix('*') {
                Some(num) => (num, true),
                None => (n, false),
            };
            let Ok(i) = num.parse::<u32>() else { continue };
            let text = match (encoded, i) {
                (true, 0) => ext_value(&val),
                (true, _) => percent_decode(&val),
                (false, _) => val,
            };
            if pieces.len() < 64 {
                pieces.push((i, text));
            }
        }
    }
    if !pieces.is_empty() {
        pieces.sort_by_key(|(i, _)| *i);
        names.push(pieces.into_iter().map(|(_, t)| t).collect());
    }
    names
}

/// The preferred file name of a Content-Disposition value (see [`disposition_filenames`]).
pub fn disposition_filename(v: &str) -> Option<String> {
    disposition_filenames(v).into_iter().next()
}

/// File names a URL path can be saved under: the last segment percent-decoded, without
/// `;parameters`, and the last non-empty segment (a trailing `/`).
pub fn url_filenames(path: &str) -> Vec<String> {
    let p = path.split(['?', '#']).next().unwrap_or(path);
    let mut out = Vec::new();
    let mut push = |seg: &str| {
        for cand in [seg, seg.split(';').next().unwrap_or(seg)] {
            let dec = percent_decode(cand);
            // A decoded `/` or `\` separates again.
            let last = dec.rsplit(['/', '\\']).next().unwrap_or(&dec).to_string();
            if last.contains('.') && !out.contains(&last) {
                out.push(last);
            }
        }
    };
    if let Some(last) = p.rsplit('/').next() {
        push(last);
    }
    if let Some(last) = p.split('/').rev().find(|s| !s.is_empty()) {
        push(last);
    }
    out
}

/// Host for policy matching: lower case, no port, no trailing dot.
pub fn normalize_host(h: &str) -> String {
    let h = h.trim();
    let host = if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else {
        match h.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => h,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Path for policy matching (RFC 3986 6.2.2): unreserved characters percent-decoded, runs
/// of `/` collapsed, `.` and `..` segments resolved. The query is kept as sent.
pub fn normalize_path(path_and_query: &str) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    // Unreserved only: ALPHA / DIGIT / "-" / "." / "_" / "~". Bytes, not chars: other
    // bytes (UTF-8 included) pass through unchanged.
    let b = path.as_bytes();
    let mut out_b: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |x: Option<&u8>| x.and_then(|x| (*x as char).to_digit(16));
        if c == b'%'
            && let (Some(h), Some(l)) = (hex(b.get(i + 1)), hex(b.get(i + 2)))
        {
            let v = (h * 16 + l) as u8;
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                out_b.push(v);
            } else {
                out_b.push(b'%');
                out_b.extend(
                    b.get(i + 1..i + 3)
                        .unwrap_or(&[])
                        .iter()
                        .map(u8::to_ascii_uppercase),
                );
            }
            i += 3;
            continue;
        }
        if c == b'%' {
            // A stray '%' (not two hex digits after it) is written as "%25", so that the
            // output never forms a new escape with what follows and normalising twice
            // gives the same path ("%%35" -> "%255", not "%5" then "%5E").
            out_b.extend_from_slice(b"%25");
        } else {
            out_b.push(c);
        }
        i += 1;
    }
    let dec = String::from_utf8_lossy(&out_b).into_owned();
    let mut segs: Vec<&str> = Vec::new();
    let trailing = dec.ends_with('/') || dec.ends_with("/.") || dec.ends_with("/..");
    for seg in dec.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut out = String::with_capacity(dec.len() + 1);
    out.push('/');
    out.push_str(&segs.join("/"));
    if trailing && !segs.is_empty() {
        out.push('/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Boundary parameter of a multipart Content-Type; `Err` when it is given more than once
/// (parsers would disagree on which one counts).
pub fn multipart_boundary(content_type: &str) -> Result<Option<String>, &'static str> {
    let all: Vec<String> = header_params(content_type)
        .into_iter()
        .filter(|(k, _)| k == "boundary")
        .map(|(_, v)| v)
        .collect();
    match all.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        _ => Err("more than one multipart boundary"),
    }
}

/// Most parts of a multipart body inspected; a body with more is over the limit.
pub const MAX_PARTS: usize = 256;
/// Most Content-Type or Content-Disposition headers one part may carry. A part has one of
/// each; thousands of them would be a small body that becomes a large list of strings, so a
/// part with more cannot be judged.
pub const MAX_PART_HEADERS: usize = 8;

/// Names and media types of the parts of a multipart body. `Err` when it has more than
/// [`MAX_PARTS`] parts, or (when `complete`) no opening or closing delimiter or a part
/// without the blank line that ends its headers: such a body cannot be judged.
pub fn multipart_parts(
    body: &[u8],
    boundary: &str,
    complete: bool,
) -> Result<(Vec<String>, Vec<String>), &'static str> {
    let mut names = Vec::new();
    let mut types = Vec::new();
    if boundary.is_empty() || boundary.len() > 200 {
        return Err("malformed multipart boundary");
    }
    let delim = format!("--{boundary}");
    let finder = memfind(delim.as_bytes());
    let mut pos = 0;
    let mut parts = 0;
    let mut closed = false;
    while let Some(i) = finder(body.get(pos..).unwrap_or(&[])) {
        let start = pos + i + delim.len();
        pos = start;
        let rest = body.get(start..).unwrap_or(&[]);
        if rest.starts_with(b"--") {
            closed = true;
            break;
        }
        parts += 1;
        if parts > MAX_PARTS {
            return Err("more multipart parts than can be inspected");
        }
        // Header lines end in CRLF or a bare LF (parsers accept both).
        let (head_end, found) = match (memfind(b"\r\n\r\n")(rest), memfind(b"\n\n")(rest)) {
            (Some(a), Some(b)) => (a.min(b), true),
            (Some(a), None) | (None, Some(a)) => (a, true),
            (None, None) => (rest.len().min(8192), false),
        };
        if !found && complete {
            return Err("malformed multipart part");
        }
        let head = String::from_utf8_lossy(rest.get(..head_end).unwrap_or(&[]));
        let (mut dispositions, mut content_types) = (0, 0);
        for line in head.split('\n') {
            let line = line.trim_end_matches('\r');
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            if k.trim().eq_ignore_ascii_case("content-disposition") {
                dispositions += 1;
                if dispositions > MAX_PART_HEADERS {
                    return Err("too many headers in a multipart part");
                }
                names.extend(disposition_filenames(v));
            } else if k.trim().eq_ignore_ascii_case("content-type") {
                content_types += 1;
                if content_types > MAX_PART_HEADERS {
                    return Err("too many headers in a multipart part");
                }
                types.push(media_type(v));
            }
        }
    }
    if complete && (parts == 0 || !closed) {
        return Err("malformed multipart body");
    }
    Ok((names, types))
}

fn memfind(needle: &[u8]) -> impl Fn(&[u8]) -> Option<usize> + '_ {
    move |hay: &[u8]| {
        if needle.is_empty() || hay.len() < needle.len() {
            return None;
        }
        hay.windows(needle.len()).position(|w| w == needle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;

    fn set(toml_src: &str) -> Policies {
        let s: PolicySet = toml::from_str(toml_src).unwrap();
        let mut tags = BTreeMap::new();
        tags.insert(
            "risky".to_string(),
            vec!["198.51.100.0/24".parse().unwrap()],
        );
        Policies::compile(&s, &tags).unwrap()
    }

    fn req<'a>(app: &'a str, method: &'a str, path: &'a str) -> RequestInfo<'a> {
        RequestInfo {
            app,
            src: "198.51.100.7".parse().unwrap(),
            user: None,
            managed: false,
            host: "www.dropbox.com",
            method,
            path,
            norm_path: path,
            user_agent: "curl/7.88",
            now: time::macros::datetime!(2026-11-26 12:00 UTC),
        }
    }

    /// Found by the multipart fuzz target: a part with thousands of Content-Type lines
    /// turned a small body into thousands of strings. More than a few is refused.
    #[test]
    fn a_part_with_too_many_type_headers_cannot_be_judged() {
        let mut body = String::from("--b\r\n");
        for _ in 0..MAX_PART_HEADERS {
            body.push_str("Content-Type: text/plain\r\n");
        }
        body.push_str("\r\nx\r\n--b--\r\n");
        let (_, types) = multipart_parts(body.as_bytes(), "b", true).expect("a few headers");
        assert_eq!(types.len(), MAX_PART_HEADERS);
        let many = body.replacen("--b\r\n", "--b\r\nContent-Type: a/b\r\n", 1);
        assert!(multipart_parts(many.as_bytes(), "b", true).is_err());
        assert!(multipart_parts(many.as_bytes(), "b", false).is_err());
    }

    #[test]
    fn most_restrictive_wins() {
        let p = set(r#"
[[session_policies]]
name = "watch"
apps = ["*"]
action = "audit"
[[session_policies]]
name = "no sharing"
apps = ["dropbox"]
action = "block"
activities = [{ method = "POST", path = "/2/sharing/*" }]
"#);
        let d = p
            .activity(&req("dropbox", "POST", "/2/sharing/create_link"))
            .unwrap();
        assert_eq!((d.action, d.policy.as_str()), (Action::Block, "no sharing"));
        let d = p.activity(&req("dropbox", "GET", "/2/sharing/x")).unwrap();
        assert_eq!(d.action, Action::Audit);
        assert!(p.activity(&req("other", "POST", "/2/sharing/x")).is_some());
    }

    #[test]
    fn transfers() {
        let p = set(r#"
[[session_policies]]
name = "exe"
apps = ["dropbox"]
action = "block"
download = { file_extensions = ["exe", ".MSI"], mime_types = ["application/x-msdownload"], max_size = "1MB" }
[[session_policies]]
name = "cards"
apps = ["dropbox"]
action = "block"
upload = { content = ["credit_card"], min_matches = 2 }
"#);
        let rules = p.transfer_rules("dropbox", false);
        let meta = TransferMeta {
            filenames: vec!["setup.MSI".into()],
            ..Default::default()
        };
        assert_eq!(
            check_transfer(&rules, &meta, None).unwrap().action,
            Action::Block
        );
        let meta = TransferMeta {
            content_type: Some("text/plain".into()),
            size: Some(10),
            ..Default::default()
        };
        assert!(check_transfer(&rules, &meta, None).is_none());
        let meta = TransferMeta {
            size: Some(ByteSize::parse("2MB").unwrap().0),
            ..Default::default()
        };
        assert!(check_transfer(&rules, &meta, None).is_some());

        let up = p.transfer_rules("dropbox", true);
        let meta = TransferMeta::default();
        assert!(
            check_transfer(&up, &meta, Some(b"4111111111111111")).is_none(),
            "min_matches = 2"
        );
        let d = check_transfer(&up, &meta, Some(b"4111111111111111 5500005555555559")).unwrap();
        assert_eq!(d.evidence.len(), 2);
        assert_eq!(d.evidence[0].masked, "4111********1111");
    }

    #[test]
    fn access_conditions() {
        let p = set(r#"
[[access_policies]]
name = "risky"
apps = ["dropbox"]
action = "block"
ip_tags = ["risky"]
device = "unmanaged"
user_agents = ["curl/"]
time = { from = "08:00", to = "18:00", days = ["thu"] }
"#);
        assert!(p.access(&req("dropbox", "GET", "/")).is_some());
        let mut r = req("dropbox", "GET", "/");
        r.managed = true;
        assert!(p.access(&r).is_none());
        let mut r = req("dropbox", "GET", "/");
        r.now = time::macros::datetime!(2026-11-26 19:00 UTC);
        assert!(p.access(&r).is_none());
        let mut r = req("dropbox", "GET", "/");
        r.src = "10.0.0.1".parse().unwrap();
        assert!(p.access(&r).is_none());
    }

    #[test]
    fn bad_policies_named() {
        let s: PolicySet = toml::from_str(
            "[[access_policies]]\nname='t'\napps=[]\naction='block'\nip_tags=['nope']\n",
        )
        .unwrap();
        let e = Policies::compile(&s, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"t\"") && e.contains("ip_tags"), "{e}");
    }

    #[test]
    fn disguised_names_and_paths() {
        assert_eq!(extension("evil.exe."), Some("exe".into()));
        assert_eq!(extension("evil.exe .. "), Some("exe".into()));
        assert_eq!(
            disposition_filenames("attachment; filename=\"safe.txt;.exe\""),
            vec!["safe.txt;.exe"]
        );
        assert_eq!(
            disposition_filenames("attachment; filename*0*=UTF-8''ev; filename*1*=il%2Eexe"),
            vec!["evil.exe"]
        );
        assert_eq!(
            disposition_filenames(
                "attachment; filename*1=.exe; filename*0=\"evil\"; filename=x.txt"
            ),
            vec!["x.txt", "evil.exe"]
        );
        let u = url_filenames("/a/evil.ex%65");
        assert!(u.contains(&"evil.exe".to_string()), "{u:?}");
        let u = url_filenames("/a/evil.exe;jsessionid=1?x");
        assert!(u.contains(&"evil.exe".to_string()), "{u:?}");
        let u = url_filenames("/a/evil.exe/");
        assert!(u.contains(&"evil.exe".to_string()), "{u:?}");
        assert_eq!(normalize_host("API.Example.com.:443"), "api.example.com");
        assert_eq!(normalize_host("[::1]:8443"), "::1");
        assert_eq!(
            normalize_path("//2/./x/../%73haring//a?q=1"),
            "/2/sharing/a?q=1"
        );
        assert_eq!(normalize_path("/a/%2F/b"), "/a/%2F/b");
        assert_eq!(normalize_path("/../../a/"), "/a/");
        let many: String = (0..300)
            .map(|i| format!("--b\r\nX: {i}\r\n\r\nv\r\n"))
            .collect();
        assert!(multipart_parts(format!("{many}--b--").as_bytes(), "b", true).is_err());
        assert!(
            multipart_parts(b"--b\r\nX: 1\r\n\r\nv", "b", true).is_err(),
            "unclosed"
        );
        assert_eq!(
            multipart_boundary("multipart/form-data; boundary=a; boundary=b"),
            Err("more than one multipart boundary")
        );
    }

    #[test]
    fn multipart_and_headers() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"evil.exe\"\r\nContent-Type: application/x-msdownload\r\n\r\nMZ...\r\n--XyZ--\r\n";
        let (n, t) = multipart_parts(body, "XyZ", true).unwrap();
        assert_eq!(n, vec!["evil.exe"]);
        assert_eq!(t, vec!["application/x-msdownload"]);
        assert_eq!(
            multipart_boundary("multipart/form-data; boundary=\"XyZ\""),
            Ok(Some("XyZ".into()))
        );
        assert_eq!(
            disposition_filename("attachment; filename=\"a b.EXE\""),
            Some("a b.EXE".into())
        );
        assert_eq!(
            disposition_filename("attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"),
            Some("résumé.pdf".into())
        );
        assert_eq!(extension("/x/y/setup.tar.GZ"), Some("gz".into()));
        assert_eq!(extension("/x/y/"), None);
        let junk: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let _ = multipart_parts(&junk, "a", true);
    }
}
