//! Box enterprise events, `GET /2.0/events?stream_type=admin_logs_streaming`: near real time,
//! at-least-once (duplicates), not chronological, two weeks kept. The cursor is
//! `next_stream_position`; events are de-duplicated by `event_id`. A refused position starts
//! again from `0` (the stream's start), the store dropping what was read before.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_activity::{ActivityType, Outcome};

use super::{Events, MAX_EVENTS_PER_PAGE, Mapped, cap, cap_opt, parse_ip, vendor_id};
use crate::connector::{Ctx, Step};
use crate::error::{ConnectorError, ParseError};

/// Box's maximum.
pub const LIMIT: usize = 500;
pub const STREAM_TYPE: &str = "admin_logs_streaming";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub stream_position: String,
}

impl Default for Cursor {
    fn default() -> Cursor {
        Cursor {
            stream_position: "0".into(),
        }
    }
}

impl Cursor {
    pub fn reset(&mut self) {
        self.stream_position = "0".into();
    }

    pub fn summary(&self) -> String {
        format!("stream_position {}", self.stream_position)
    }
}

/// `{chunk_size, next_stream_position, entries}`; the position may be a string or a number.
pub fn parse_page(body: &[u8]) -> Result<(Events, String), ParseError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
    let entries = v
        .get("entries")
        .and_then(Value::as_array)
        .ok_or(ParseError::Missing("entries"))?;
    if entries.len() > MAX_EVENTS_PER_PAGE {
        return Err(ParseError::TooManyEvents(
            entries.len(),
            MAX_EVENTS_PER_PAGE,
        ));
    }
    let position = match v.get("next_stream_position") {
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            s.clone()
        }
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(ParseError::Missing("next_stream_position")),
    };
    let mut events = Events::default();
    for e in entries {
        events.push(map(e));
    }
    Ok((events, position))
}

pub fn map(v: &Value) -> Option<Mapped> {
    let id = vendor_id(v.get("event_id")?.as_str())?;
    let time = DateTime::parse_from_rfc3339(v.get("created_at")?.as_str()?)
        .ok()?
        .with_timezone(&Utc);
    let t = v.get("event_type").and_then(Value::as_str).unwrap_or("");
    let activity = match t {
        "LOGIN" | "ADMIN_LOGIN" => ActivityType::Login,
        "FAILED_LOGIN" => ActivityType::FailedLogin,
        "DOWNLOAD" | "PREVIEW" => ActivityType::Download,
        "UPLOAD" => ActivityType::Upload,
        "DELETE" | "ITEM_TRASH" => ActivityType::Delete,
        "SHARE" | "ITEM_SHARED_CREATE" | "ITEM_SHARED_UPDATE" | "COLLABORATION_INVITE" => {
            ActivityType::Share
        }
        t if t.starts_with("GROUP_")
            || t.starts_with("CHANGE_ADMIN")
            || t.starts_with("NEW_USER")
            || t.starts_with("DELETE_USER")
            || t.starts_with("EDIT_USER") =>
        {
            ActivityType::AdminAction
        }
        _ => ActivityType::Other,
    };
    let source = v.get("source");
    let object = source.and_then(|s| {
        cap_opt(
            s.get("item_name")
                .and_then(Value::as_str)
                .or_else(|| s.get("name").and_then(Value::as_str))
                .or_else(|| s.get("login").and_then(Value::as_str)),
        )
    });
    let by = v.get("created_by");
    Some(Mapped {
        vendor_id: id,
        time,
        app: "box".into(),
        activity,
        action: (!t.is_empty()).then(|| cap(t)),
        user: cap_opt(
            by.and_then(|b| b.get("login").and_then(Value::as_str))
                .or_else(|| by.and_then(|b| b.get("name").and_then(Value::as_str))),
        ),
        ip: v
            .get("ip_address")
            .and_then(Value::as_str)
            .and_then(parse_ip),
        object,
        result: if activity == ActivityType::FailedLogin {
            Outcome::Failure
        } else {
            Outcome::Success
        },
    })
}

pub async fn step(ctx: &mut Ctx<'_>, cur: &mut Cursor) -> Result<Step, ConnectorError> {
    let mut url = ctx.url("2.0/events")?;
    url.query_pairs_mut()
        .append_pair("stream_type", STREAM_TYPE)
        .append_pair("limit", &LIMIT.to_string())
        .append_pair("stream_position", &cur.stream_position);
    let resp = ctx.get(&url, cur.stream_position != "0").await?;
    let (events, position) = parse_page(&resp.body).map_err(|e| ctx.parse_error(e))?;
    cur.stream_position = position;
    let more = events.seen >= LIMIT;
    Ok(events.into_step(&ctx.settings.name, more))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_page_maps() {
        let body = br#"{"chunk_size":2,"next_stream_position":"1152922976252290886","entries":[
          {"type":"event","event_id":"f82c3ba03e41f7e8a7608363cc6c0390183c3f83","created_at":"2012-12-12T10:53:43-08:00",
           "event_type":"FAILED_LOGIN","created_by":{"id":"11446498","type":"user","name":"Aaron Levie","login":"ceo@example.com"},
           "ip_address":"198.51.100.9","source":{"id":"1","type":"user","name":"Aaron Levie","login":"ceo@example.com"}},
          {"type":"event","event_id":"","created_at":"2012-12-12T10:53:43-08:00"}]}"#;
        let (events, pos) = parse_page(body).unwrap();
        assert_eq!(pos, "1152922976252290886");
        assert_eq!((events.seen, events.dropped), (2, 1));
        let m = &events.events[0];
        assert_eq!(m.activity, ActivityType::FailedLogin);
        assert_eq!(m.time.timestamp(), 1355338423);
        assert_eq!(m.user.as_deref(), Some("ceo@example.com"));
        let (_, pos) = parse_page(br#"{"next_stream_position":42,"entries":[]}"#).unwrap();
        assert_eq!(pos, "42");
        assert!(parse_page(br#"{"next_stream_position":"a&b=c","entries":[]}"#).is_err());
    }
}
