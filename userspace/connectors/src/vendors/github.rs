//! GitHub enterprise/organization audit log, `GET /enterprises/{e}/audit-log` or
//! `/orgs/{o}/audit-log`, `order=asc`, `per_page=100`, `include=all`, paged by the `after`
//! cursor "as given in the Link header". The walk starts from `phrase=created:>=T`; when a
//! walk ends (no next link), the next one starts from the newest `@timestamp` seen minus an
//! overlap, so that events indexed late are read again (the store drops the repeats by
//! `_document_id`). Timestamps are epoch milliseconds.

use chrono::Duration;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_activity::{ActivityType, Outcome};

use super::{Events, Mapped, cap, cap_opt, from_ms, iso, json_array, parse_ip, vendor_id};
use crate::connector::{Ctx, Step};
use crate::error::{ConnectorError, ParseError};

pub const PER_PAGE: usize = 100;
pub const LOOKBACK: Duration = Duration::hours(24);
/// Re-read at the start of each walk, for events that reach the index late.
pub const OVERLAP: Duration = Duration::minutes(5);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The `after` of the last page's next link: the walk continues there.
    pub after: Option<String>,
    /// `created:>=` of the current walk (ms).
    pub since_ms: Option<i64>,
    /// The newest `@timestamp` seen in this walk (ms).
    pub newest_ms: Option<i64>,
}

impl Cursor {
    pub fn reset(&mut self) {
        self.after = None;
    }

    pub fn summary(&self) -> String {
        let since = self.since_ms.and_then(from_ms).map(iso).unwrap_or_default();
        match &self.after {
            Some(a) => format!("after {a} (created>={since})"),
            None => format!("created>={since}"),
        }
    }
}

pub fn parse_page(body: &[u8]) -> Result<Events, ParseError> {
    let mut out = Events::default();
    for v in json_array(body, "audit event array")? {
        out.push(map(&v));
    }
    Ok(out)
}

pub fn map(v: &Value) -> Option<Mapped> {
    let id = vendor_id(v.get("_document_id")?.as_str())?;
    let ms = v
        .get("@timestamp")
        .or_else(|| v.get("created_at"))
        .and_then(Value::as_i64)?;
    let time = from_ms(ms)?;
    let action = v.get("action").and_then(Value::as_str).unwrap_or("");
    let activity = if action == "git.clone" || action == "repo.download_zip" {
        ActivityType::Download
    } else if action == "git.push" {
        ActivityType::Upload
    } else if action.ends_with(".destroy") || action.ends_with(".delete") {
        ActivityType::Delete
    } else if action.starts_with("org.")
        || action.starts_with("business.")
        || action.starts_with("team.")
        || action.starts_with("repo.access")
        || action.starts_with("protected_branch.")
    {
        ActivityType::AdminAction
    } else if action.starts_with("user.login") {
        ActivityType::Login
    } else {
        ActivityType::Other
    };
    let object = cap_opt(
        v.get("repo")
            .and_then(Value::as_str)
            .or_else(|| v.get("org").and_then(Value::as_str)),
    );
    Some(Mapped {
        vendor_id: id,
        time,
        app: "github".into(),
        activity,
        action: (!action.is_empty()).then(|| cap(action)),
        user: cap_opt(v.get("actor").and_then(Value::as_str)),
        ip: v.get("actor_ip").and_then(Value::as_str).and_then(parse_ip),
        object,
        result: Outcome::Success,
    })
}

pub async fn step(ctx: &mut Ctx<'_>, cur: &mut Cursor) -> Result<Step, ConnectorError> {
    let since_ms = *cur
        .since_ms
        .get_or_insert((ctx.now - LOOKBACK).timestamp_millis());
    let since = from_ms(since_ms).unwrap_or(ctx.now - LOOKBACK);
    let scope = ctx
        .settings
        .github_scope
        .clone()
        .ok_or_else(|| ConnectorError::Config("github: enterprise or org missing".into()))?;
    let mut url = ctx.url(&format!("{scope}/audit-log"))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("phrase", &format!("created:>={}", iso(since)))
            .append_pair("include", "all")
            .append_pair("order", "asc")
            .append_pair("per_page", &PER_PAGE.to_string());
        if let Some(after) = &cur.after {
            q.append_pair("after", after);
        }
    }
    let resp = ctx.get(&url, cur.after.is_some()).await?;
    let events = parse_page(&resp.body).map_err(|e| ctx.parse_error(e))?;
    if let Some(newest) = events
        .events
        .iter()
        .map(|m| m.time.timestamp_millis())
        .max()
    {
        cur.newest_ms = Some(cur.newest_ms.map_or(newest, |n| n.max(newest)));
    }
    let next_after = match crate::http::next_link(&resp.headers) {
        None => None,
        Some(link) => {
            let u = ctx.vendor_url(&link)?;
            let after = u
                .query_pairs()
                .find(|(k, _)| k == "after")
                .map(|(_, v)| v.into_owned());
            match after {
                Some(a) if !a.is_empty() && a.len() <= 1024 => Some(a),
                _ => {
                    return Err(ctx.parse_error(ParseError::Link(
                        "next link without an after cursor".into(),
                    )));
                }
            }
        }
    };
    let more = next_after.is_some();
    match next_after {
        Some(a) => cur.after = Some(a),
        None => {
            // The walk is over; the next starts an overlap before the newest event.
            cur.after = None;
            if let Some(newest) = cur.newest_ms {
                let start = newest - OVERLAP.num_milliseconds();
                cur.since_ms = Some(start.max(since_ms));
            }
        }
    }
    Ok(events.into_step(&ctx.settings.name, more))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_event_maps() {
        // elastic/integrations github audit sample_event.json
        let body = br#"[{"@timestamp":1605719148837,"_document_id":"LwW2vpJZCDS-WUmo9Z-ifw","action":"repo.destroy","actor":"monalisa","created_at":1605719148837,"org":"mona-org","repo":"mona-org/mona-test-repo","visibility":"private"},
          {"@timestamp":"soon","_document_id":"a"}, {"_document_id":7,"@timestamp":1}]"#;
        let page = parse_page(body).unwrap();
        assert_eq!((page.seen, page.dropped), (3, 2));
        let m = &page.events[0];
        assert_eq!(m.vendor_id, "LwW2vpJZCDS-WUmo9Z-ifw");
        assert_eq!(m.activity, ActivityType::Delete);
        assert_eq!(m.time.timestamp_millis(), 1605719148837);
        assert_eq!(m.user.as_deref(), Some("monalisa"));
        assert_eq!(m.object.as_deref(), Some("mona-org/mona-test-repo"));
        assert!(parse_page(br#"{"message":"Not Found"}"#).is_err());
    }
}
