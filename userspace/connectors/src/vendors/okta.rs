//! Okta System Log, `GET /api/v1/logs`, as a polling request (`sortOrder=ASCENDING`, no
//! `until`): ordered by persistence time, events may be out of order by `published`, and a
//! `Link: <…>; rel="next"` is present even on an empty page. The cursor is that whole next
//! URL, as Okta says ("always follow the next links"); `since` is only used to start, or again
//! after the stored link was refused (then from the newest `published` seen, minus an hour,
//! with the store dropping what is read twice).

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_activity::{ActivityType, Outcome};

use super::{Events, Mapped, cap, cap_opt, from_ms, iso, json_array, parse_ip, vendor_id};
use crate::connector::{Ctx, Step};
use crate::error::{ConnectorError, ParseError};

/// Events per page asked for (Okta's maximum).
pub const LIMIT: usize = 1000;
/// How far back the first poll reads.
pub const LOOKBACK: Duration = Duration::hours(24);
/// How far before the newest `published` a fallback `since` starts.
pub const OVERLAP: Duration = Duration::hours(1);
const PATH: &str = "/api/v1/logs";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The `rel="next"` URL of the last page read.
    pub next: Option<String>,
    /// The newest `published` seen (ms), for a fallback `since`.
    pub newest_ms: Option<i64>,
}

impl Cursor {
    pub fn reset(&mut self) {
        self.next = None;
    }

    pub fn summary(&self) -> String {
        match &self.next {
            Some(n) => format!("next {n}"),
            None => "start".into(),
        }
    }
}

/// One System Log page: a JSON array of LogEvents.
pub fn parse_page(body: &[u8]) -> Result<Events, ParseError> {
    let mut out = Events::default();
    for v in json_array(body, "LogEvent array")? {
        out.push(map(&v));
    }
    Ok(out)
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

/// One LogEvent. `None`: no usable `uuid` or `published`.
pub fn map(v: &Value) -> Option<Mapped> {
    let id = vendor_id(s(v, &["uuid"]))?;
    let time = DateTime::parse_from_rfc3339(s(v, &["published"])?)
        .ok()?
        .with_timezone(&Utc);
    let event_type = s(v, &["eventType"]).unwrap_or("");
    let result = match s(v, &["outcome", "result"]).unwrap_or("UNKNOWN") {
        "SUCCESS" | "ALLOW" => Outcome::Success,
        "DENY" => Outcome::Blocked,
        "FAILURE" => Outcome::Failure,
        _ => Outcome::Success,
    };
    let activity = if event_type.starts_with("user.session.start")
        || event_type.starts_with("user.authentication")
    {
        if result == Outcome::Success {
            ActivityType::Login
        } else {
            ActivityType::FailedLogin
        }
    } else if event_type.starts_with("user.lifecycle")
        || event_type.starts_with("group.")
        || event_type.starts_with("application.")
        || event_type.starts_with("policy.")
        || event_type.starts_with("system.")
        || event_type.starts_with("user.account.privilege")
    {
        ActivityType::AdminAction
    } else {
        ActivityType::Other
    };
    let target = v
        .get("target")
        .and_then(Value::as_array)
        .and_then(|t| t.first());
    let object = target.and_then(|t| {
        cap_opt(
            t.get("alternateId")
                .and_then(Value::as_str)
                .or_else(|| t.get("displayName").and_then(Value::as_str)),
        )
    });
    Some(Mapped {
        vendor_id: id,
        time,
        app: "okta".into(),
        activity,
        action: (!event_type.is_empty()).then(|| cap(event_type)),
        user: cap_opt(s(v, &["actor", "alternateId"]).or_else(|| s(v, &["actor", "id"]))),
        ip: s(v, &["client", "ipAddress"]).and_then(parse_ip),
        object,
        result,
    })
}

pub async fn step(ctx: &mut Ctx<'_>, cur: &mut Cursor) -> Result<Step, ConnectorError> {
    let (url, with_cursor) = match &cur.next {
        Some(next) => (ctx.vendor_url(next)?, true),
        None => {
            let since = cur
                .newest_ms
                .and_then(from_ms)
                .map_or(ctx.now - LOOKBACK, |t| t - OVERLAP)
                // Okta refuses a `since` more than 180 days back.
                .max(ctx.now - Duration::days(179));
            let mut url = ctx.url(PATH.trim_start_matches('/'))?;
            url.query_pairs_mut()
                .append_pair("sortOrder", "ASCENDING")
                .append_pair("limit", &LIMIT.to_string())
                .append_pair("since", &iso(since));
            (url, false)
        }
    };
    let resp = ctx.get(&url, with_cursor).await?;
    let events = parse_page(&resp.body).map_err(|e| ctx.parse_error(e))?;
    // A polling request always has a next link; without one, the same URL is read again.
    let next = match crate::http::next_link(&resp.headers) {
        Some(n) => {
            let u = ctx.vendor_url(&n)?;
            if u.path() != url.path() {
                return Err(ctx.parse_error(ParseError::Link(format!(
                    "next link leaves {PATH}: {}",
                    crate::error::snippet(n.as_bytes(), 120)
                ))));
            }
            u.to_string()
        }
        None => url.to_string(),
    };
    cur.next = Some(next);
    if let Some(newest) = events
        .events
        .iter()
        .map(|m| m.time.timestamp_millis())
        .max()
    {
        cur.newest_ms = Some(cur.newest_ms.map_or(newest, |n| n.max(newest)));
    }
    // An empty page (its next link still present) means caught up; a partial one too, so the
    // infinite polling pages do not cost a request each per poll.
    let more = events.seen >= LIMIT;
    Ok(events.into_step(&ctx.settings.name, more))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_event_maps() {
        let body = br#"[{"uuid":"dc9fd3c0-598c-11ef-8478-2b7584bf8d5a","published":"2024-08-13T15:58:20.353Z",
          "eventType":"user.session.start","version":"0","severity":"INFO","displayMessage":"User login to Okta",
          "actor":{"id":"00u1","type":"User","alternateId":"alice@example.com","displayName":"Alice"},
          "client":{"ipAddress":"203.0.113.7","userAgent":{"rawUserAgent":"x"}},
          "outcome":{"result":"FAILURE","reason":"INVALID_CREDENTIALS"},
          "target":[{"id":"0oa1","type":"AppInstance","alternateId":"Salesforce","displayName":"Salesforce"}]},
          {"published":"2024-08-13T15:58:20.353Z"}, 7, {"uuid":"x","published":"yesterday"}]"#;
        let page = parse_page(body).unwrap();
        assert_eq!(page.seen, 4);
        assert_eq!(page.dropped, 3);
        let m = &page.events[0];
        assert_eq!(m.vendor_id, "dc9fd3c0-598c-11ef-8478-2b7584bf8d5a");
        assert_eq!(m.activity, ActivityType::FailedLogin);
        assert_eq!(m.result, Outcome::Failure);
        assert_eq!(m.user.as_deref(), Some("alice@example.com"));
        assert_eq!(m.ip, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(m.object.as_deref(), Some("Salesforce"));
        assert_eq!(m.action.as_deref(), Some("user.session.start"));
        assert!(parse_page(b"{\"errorCode\":\"E0000047\"}").is_err());
        assert!(parse_page(b"[").is_err());
    }
}
