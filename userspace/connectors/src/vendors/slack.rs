//! Slack Enterprise audit logs, `GET /audit/v1/logs?oldest=…&limit=…&cursor=…`. Entries come
//! newest first; a walk follows `response_metadata.next_cursor` down to `oldest`. The cursor
//! is stored after every page, with the newest `date_create` of the walk; when a walk ends,
//! the next one reads from that newest time minus an overlap (the store drops repeats by
//! `id`).

use chrono::Duration;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_activity::{ActivityType, Outcome};

use super::{Events, MAX_EVENTS_PER_PAGE, Mapped, cap, cap_opt, parse_ip, vendor_id};
use crate::connector::{Ctx, Step};
use crate::error::{ConnectorError, ParseError};

pub const LIMIT: usize = 1000;
pub const LOOKBACK: Duration = Duration::hours(24);
/// Re-read before the newest event of the last walk.
pub const OVERLAP: Duration = Duration::minutes(10);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// `next_cursor` of the walk in progress.
    pub cursor: Option<String>,
    /// `oldest` of the walk (unix seconds).
    pub oldest: Option<i64>,
    /// Newest `date_create` seen in this walk.
    pub walk_newest: Option<i64>,
}

impl Cursor {
    pub fn reset(&mut self) {
        self.cursor = None;
    }

    pub fn summary(&self) -> String {
        match &self.cursor {
            Some(c) => format!("cursor {c} (oldest {})", self.oldest.unwrap_or_default()),
            None => format!("oldest {}", self.oldest.unwrap_or_default()),
        }
    }
}

/// What a page said.
#[derive(Debug, Clone, PartialEq)]
pub enum Page {
    Entries {
        events: Events,
        next_cursor: Option<String>,
    },
    /// `{"ok": false, "error": "…"}`.
    Error(String),
}

pub fn parse_page(body: &[u8]) -> Result<Page, ParseError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
    if v.get("ok").and_then(Value::as_bool) == Some(false) {
        let e = v.get("error").and_then(Value::as_str).unwrap_or("unknown");
        return Ok(Page::Error(cap(e)));
    }
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
    let mut events = Events::default();
    for e in entries {
        events.push(map(e));
    }
    let next_cursor = v
        .get("response_metadata")
        .and_then(|m| m.get("next_cursor"))
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    if next_cursor.as_ref().is_some_and(|c| c.len() > 4096) {
        return Err(ParseError::Link(
            "next_cursor longer than 4096 bytes".into(),
        ));
    }
    Ok(Page::Entries {
        events,
        next_cursor,
    })
}

pub fn map(v: &Value) -> Option<Mapped> {
    let id = vendor_id(v.get("id")?.as_str())?;
    let secs = v.get("date_create")?.as_i64()?;
    let time = chrono::DateTime::from_timestamp(secs, 0)?;
    let action = v.get("action").and_then(Value::as_str).unwrap_or("");
    let activity = match action {
        "user_login" => ActivityType::Login,
        "user_login_failed" => ActivityType::FailedLogin,
        "file_downloaded" | "file_downloaded_blocked" => ActivityType::Download,
        "file_uploaded" => ActivityType::Upload,
        "file_shared" | "file_public_link_created" | "channel_shared" => ActivityType::Share,
        a if a.ends_with("_deleted") => ActivityType::Delete,
        a if a.starts_with("role_change") || a.starts_with("pref.") || a.starts_with("user_") => {
            ActivityType::AdminAction
        }
        _ => ActivityType::Other,
    };
    let user = v.get("actor").and_then(|a| a.get("user"));
    let entity = v.get("entity");
    let object = entity.and_then(|e| {
        let kind = e.get("type").and_then(Value::as_str)?;
        let inner = e.get(kind)?;
        cap_opt(
            inner
                .get("name")
                .and_then(Value::as_str)
                .or_else(|| inner.get("email").and_then(Value::as_str))
                .or_else(|| inner.get("id").and_then(Value::as_str)),
        )
    });
    Some(Mapped {
        vendor_id: id,
        time,
        app: "slack".into(),
        activity,
        action: (!action.is_empty()).then(|| cap(action)),
        user: cap_opt(
            user.and_then(|u| u.get("email").and_then(Value::as_str))
                .or_else(|| user.and_then(|u| u.get("id").and_then(Value::as_str))),
        ),
        ip: v
            .get("context")
            .and_then(|c| c.get("ip_address"))
            .and_then(Value::as_str)
            .and_then(parse_ip),
        object,
        result: if activity == ActivityType::FailedLogin || action.ends_with("_blocked") {
            Outcome::Failure
        } else {
            Outcome::Success
        },
    })
}

pub async fn step(ctx: &mut Ctx<'_>, cur: &mut Cursor) -> Result<Step, ConnectorError> {
    let oldest = *cur.oldest.get_or_insert((ctx.now - LOOKBACK).timestamp());
    let mut url = ctx.url("audit/v1/logs")?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("oldest", &oldest.to_string())
            .append_pair("limit", &LIMIT.to_string());
        if let Some(c) = &cur.cursor {
            q.append_pair("cursor", c);
        }
    }
    let resp = ctx.get(&url, cur.cursor.is_some()).await?;
    let page = parse_page(&resp.body).map_err(|e| ctx.parse_error(e))?;
    let (events, next) = match page {
        Page::Entries {
            events,
            next_cursor,
        } => (events, next_cursor),
        Page::Error(e) if e == "invalid_cursor" && cur.cursor.is_some() => {
            return Err(ConnectorError::CursorExpired {
                origin: ctx.origin.to_string(),
                status: resp.status,
                reason: e,
            });
        }
        Page::Error(e)
            if e == "invalid_auth"
                || e == "not_authed"
                || e == "token_revoked"
                || e == "token_expired" =>
        {
            return Err(ConnectorError::Unauthorized {
                origin: ctx.origin.to_string(),
                status: resp.status,
                reason: e,
            });
        }
        Page::Error(e) => {
            return Err(ConnectorError::Status {
                origin: ctx.origin.to_string(),
                status: resp.status,
                reason: e,
            });
        }
    };
    if let Some(newest) = events.events.iter().map(|m| m.time.timestamp()).max() {
        cur.walk_newest = Some(cur.walk_newest.map_or(newest, |n| n.max(newest)));
    }
    let more = next.is_some();
    match next {
        Some(n) => cur.cursor = Some(n),
        None => {
            cur.cursor = None;
            if let Some(newest) = cur.walk_newest.take() {
                cur.oldest = Some((newest - OVERLAP.num_seconds()).max(oldest));
            }
        }
    }
    Ok(events.into_step(&ctx.settings.name, more))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_entry_maps() {
        let body = br#"{"entries":[{"id":"0123a45b-6c7d-8900-e12f-3456789gh0i1","date_create":1521214343,"action":"user_login",
          "actor":{"type":"user","user":{"id":"W123AB456","name":"Charlie Parker","email":"bird@slack.com","team":"T1"}},
          "entity":{"type":"user","user":{"id":"W123AB456","name":"Charlie Parker","email":"bird@slack.com"}},
          "context":{"location":{"type":"enterprise","id":"E1701NCCA","name":"Birdland","domain":"birdland"},"ua":"Mozilla/5.0","ip_address":"1.23.45.678"}},
          {"id":"2","date_create":1521214344,"action":"file_downloaded","actor":{"type":"user","user":{"id":"U2"}},
           "entity":{"type":"file","file":{"id":"F1","name":"plan.pdf"}},"context":{"ip_address":"198.51.100.2"}}],
          "response_metadata":{"next_cursor":"dXNlcjpVMEc5V0ZYTlo="}}"#;
        let Page::Entries {
            events,
            next_cursor,
        } = parse_page(body).unwrap()
        else {
            panic!()
        };
        assert_eq!(next_cursor.as_deref(), Some("dXNlcjpVMEc5V0ZYTlo="));
        assert_eq!(events.events[0].activity, ActivityType::Login);
        assert_eq!(events.events[0].user.as_deref(), Some("bird@slack.com"));
        assert_eq!(
            events.events[0].ip, None,
            "the documented sample's address is not one"
        );
        assert_eq!(events.events[1].object.as_deref(), Some("plan.pdf"));
        assert_eq!(events.events[1].activity, ActivityType::Download);
        assert_eq!(
            parse_page(br#"{"ok":false,"error":"invalid_cursor"}"#).unwrap(),
            Page::Error("invalid_cursor".into())
        );
        assert!(parse_page(br#"{"ok":true}"#).is_err());
    }
}
