//! One module per vendor: the pure page parser (bytes in, events or a [`ParseError`] out), the
//! mapping of an event into an [`Activity`], the cursor, and `step`, which makes one request
//! (or, for M365, one listing page and its blobs) and advances the cursor.

pub mod box_events;
pub mod github;
pub mod m365;
pub mod okta;
pub mod slack;

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tollgate_activity::{Activity, ActivityType, Outcome, Source};

use crate::connector::{Ctx, Step, record_id};
use crate::error::ConnectorError;
use crate::settings::Kind;

/// Events one page may carry (Okta's limit is 1,000, Slack's 9,999, an M365 blob's a few
/// thousand); a page with more is refused.
pub const MAX_EVENTS_PER_PAGE: usize = 20_000;
/// The longest string kept from an event (user, object, action).
pub const MAX_FIELD_BYTES: usize = 512;
/// The longest vendor event id accepted (a longer one is dropped, not truncated: two
/// truncated ids could collide and one event would hide another).
pub const MAX_ID_BYTES: usize = 256;

/// A vendor event, mapped; the connector's name is added by [`Mapped::into_activity`].
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub vendor_id: String,
    pub time: DateTime<Utc>,
    pub app: String,
    pub activity: ActivityType,
    pub action: Option<String>,
    pub user: Option<String>,
    pub ip: Option<IpAddr>,
    pub object: Option<String>,
    pub result: Outcome,
}

impl Mapped {
    pub fn into_activity(self, connector: &str) -> Activity {
        let mut a = Activity::new(
            record_id(connector, &self.vendor_id),
            self.time,
            self.app,
            self.activity,
            Source::Connector,
        );
        a.user = self.user;
        a.ip = self.ip;
        a.object = self.object;
        a.result = self.result;
        a.action = self.action;
        a.connector = Some(connector.to_string());
        a.vendor_id = Some(self.vendor_id);
        a
    }
}

/// A page's events plus how many were refused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Events {
    pub events: Vec<Mapped>,
    pub dropped: u64,
    /// Events on the page, kept or not (what "a full page" is measured by).
    pub seen: usize,
}

impl Events {
    pub(crate) fn push(&mut self, m: Option<Mapped>) {
        self.seen += 1;
        match m {
            Some(m) => self.events.push(m),
            None => self.dropped += 1,
        }
    }

    pub(crate) fn into_step(self, connector: &str, more: bool) -> Step {
        Step {
            records: self
                .events
                .into_iter()
                .map(|m| m.into_activity(connector))
                .collect(),
            dropped: self.dropped,
            more,
        }
    }
}

pub(crate) fn cap(s: &str) -> String {
    let mut s: String = s.chars().filter(|c| !c.is_control()).collect();
    tollgate_activity::alert::truncate(&mut s, MAX_FIELD_BYTES);
    s
}

pub(crate) fn cap_opt(s: Option<&str>) -> Option<String> {
    s.map(cap).filter(|s| !s.is_empty())
}

/// A vendor id, if it is one: non-empty, at most [`MAX_ID_BYTES`], no control characters.
pub(crate) fn vendor_id(s: Option<&str>) -> Option<String> {
    let s = s?;
    (!s.is_empty() && s.len() <= MAX_ID_BYTES && !s.chars().any(|c| c.is_control()))
        .then(|| s.to_string())
}

/// An address as vendors write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:443`.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

pub(crate) fn json_array(
    body: &[u8],
    field: &'static str,
) -> Result<Vec<serde_json::Value>, crate::error::ParseError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| crate::error::ParseError::Json(e.to_string()))?;
    let list = match v {
        serde_json::Value::Array(list) => list,
        _ => return Err(crate::error::ParseError::Missing(field)),
    };
    if list.len() > MAX_EVENTS_PER_PAGE {
        return Err(crate::error::ParseError::TooManyEvents(
            list.len(),
            MAX_EVENTS_PER_PAGE,
        ));
    }
    Ok(list)
}

/// The cursor of one connector, stored as JSON next to its records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Cursor {
    Okta(okta::Cursor),
    Github(github::Cursor),
    M365(m365::Cursor),
    Slack(slack::Cursor),
    Box(box_events::Cursor),
}

impl Cursor {
    pub fn initial(kind: Kind) -> Cursor {
        match kind {
            Kind::Okta => Cursor::Okta(Default::default()),
            Kind::Github => Cursor::Github(Default::default()),
            Kind::M365 => Cursor::M365(Default::default()),
            Kind::Slack => Cursor::Slack(Default::default()),
            Kind::Box => Cursor::Box(Default::default()),
        }
    }

    /// A stored cursor of this kind, if it reads.
    pub fn parse(text: &str, kind: Kind) -> Option<Cursor> {
        let c: Cursor = serde_json::from_str(text).ok()?;
        (c.kind() == kind).then_some(c)
    }

    pub fn kind(&self) -> Kind {
        match self {
            Cursor::Okta(_) => Kind::Okta,
            Cursor::Github(_) => Kind::Github,
            Cursor::M365(_) => Kind::M365,
            Cursor::Slack(_) => Kind::Slack,
            Cursor::Box(_) => Kind::Box,
        }
    }

    /// The vendor refused the stored continuation: fall back to a time window (the store
    /// drops what is read again).
    pub fn reset(&mut self, now: DateTime<Utc>) {
        match self {
            Cursor::Okta(c) => c.reset(),
            Cursor::Github(c) => c.reset(),
            Cursor::M365(c) => c.reset(now),
            Cursor::Slack(c) => c.reset(),
            Cursor::Box(c) => c.reset(),
        }
    }

    /// A short description for the status.
    pub fn summary(&self) -> String {
        let s = match self {
            Cursor::Okta(c) => c.summary(),
            Cursor::Github(c) => c.summary(),
            Cursor::M365(c) => c.summary(),
            Cursor::Slack(c) => c.summary(),
            Cursor::Box(c) => c.summary(),
        };
        crate::error::snippet(s.as_bytes(), 160)
    }
}

/// One request's worth of progress for whichever vendor `cursor` belongs to.
pub async fn step(ctx: &mut Ctx<'_>, cursor: &mut Cursor) -> Result<Step, ConnectorError> {
    match cursor {
        Cursor::Okta(c) => okta::step(ctx, c).await,
        Cursor::Github(c) => github::step(ctx, c).await,
        Cursor::M365(c) => m365::step(ctx, c).await,
        Cursor::Slack(c) => slack::step(ctx, c).await,
        Cursor::Box(c) => box_events::step(ctx, c).await,
    }
}

pub(crate) fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) fn from_ms(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_vendors_write_them() {
        for (s, want) in [
            ("1.2.3.4", "1.2.3.4"),
            ("1.2.3.4:5678", "1.2.3.4"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
        ] {
            assert_eq!(parse_ip(s), Some(want.parse().unwrap()), "{s}");
        }
        assert_eq!(parse_ip("nope"), None);
        assert_eq!(vendor_id(Some("")), None);
        assert_eq!(vendor_id(Some(&"x".repeat(300))), None);
        assert_eq!(vendor_id(Some("a\nb")), None);
        assert_eq!(cap(&"é".repeat(1000)).len(), 512);
    }
}
