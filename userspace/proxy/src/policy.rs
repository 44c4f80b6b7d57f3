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
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
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
    /// Body size if known (Content-Length or counted), as transferred (encoded).
    pub size: Option<u64>,
    /// `Content-Encoding` as sent; content rules look at the decoded body.
    pub content_encoding: Option<String>,
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
        !self.content.is_empty()
            || !self.custom.is_empty()
            || (multipart && (!self.exts.is_empty() || !self.mimes.is_empty()))
            || (self.max_size.is_some() && meta.size.is_none())
    }

    fn is_empty(&self) -> bool {
        self.exts.is_empty()
            && self.mimes.is_empty()
            && self.max_size.is_none()
            && self.content.is_empty()
            && self.custom.is_empty()
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
                let p_ok = a.path.as_ref().is_none_or(|re| re.is_match(r.path));
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

/// File name from a Content-Disposition value (`filename*=UTF-8''..` preferred).
pub fn disposition_filename(v: &str) -> Option<String> {
    let mut plain = None;
    for part in v.split(';') {
        let part = part.trim();
        let Some((k, val)) = part.split_once('=') else {
            continue;
        };
        let k = k.trim().to_ascii_lowercase();
        let val = val.trim();
        if k == "filename*" {
            let raw = val.rsplit('\'').next().unwrap_or(val);
            let dec = dlp::form_decode(raw.replace('+', "%2B").as_bytes());
            return Some(String::from_utf8_lossy(&dec).into_owned());
        }
        if k == "filename" {
            plain = Some(val.trim_matches('"').to_string());
        }
    }
    plain
}

/// Boundary parameter of a multipart Content-Type.
pub fn multipart_boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Names and media types of the parts of a multipart body (bounded: at most 256 parts).
pub fn multipart_parts(body: &[u8], boundary: &str) -> (Vec<String>, Vec<String>) {
    let mut names = Vec::new();
    let mut types = Vec::new();
    if boundary.is_empty() {
        return (names, types);
    }
    let delim = format!("--{boundary}");
    let finder = memfind(delim.as_bytes());
    let mut pos = 0;
    let mut parts = 0;
    while let Some(i) = finder(body.get(pos..).unwrap_or(&[])) {
        let start = pos + i + delim.len();
        pos = start;
        parts += 1;
        if parts > 256 {
            break;
        }
        let rest = body.get(start..).unwrap_or(&[]);
        if rest.starts_with(b"--") {
            break;
        }
        let head_end = memfind(b"\r\n\r\n")(rest).unwrap_or(rest.len().min(8192));
        let head = String::from_utf8_lossy(rest.get(..head_end).unwrap_or(&[]));
        for line in head.split("\r\n") {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            if k.trim().eq_ignore_ascii_case("content-disposition") {
                if let Some(f) = disposition_filename(v) {
                    names.push(f);
                }
            } else if k.trim().eq_ignore_ascii_case("content-type") {
                types.push(media_type(v));
            }
        }
    }
    (names, types)
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
            user_agent: "curl/7.88",
            now: time::macros::datetime!(2026-11-26 12:00 UTC),
        }
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
    fn multipart_and_headers() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"evil.exe\"\r\nContent-Type: application/x-msdownload\r\n\r\nMZ...\r\n--XyZ--\r\n";
        let (n, t) = multipart_parts(body, "XyZ");
        assert_eq!(n, vec!["evil.exe"]);
        assert_eq!(t, vec!["application/x-msdownload"]);
        assert_eq!(
            multipart_boundary("multipart/form-data; boundary=\"XyZ\""),
            Some("XyZ".into())
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
        let _ = multipart_parts(&junk, "a");
    }
}
