//! Office 365 Management Activity API. Per content type: start the subscription once
//! (`POST …/subscriptions/start`, "already enabled" is fine), list content in windows of at
//! most 24 h by `contentCreated` (inclusive start, exclusive end, start at most 7 days back),
//! follow `NextPageUri`, fetch each blob (`contentUri`, held to our origin) and map its
//! events (`Id` is the vendor id). When a window reaches the present, the next listing starts
//! an hour back again, so a blob listed late inside a window already read is still found;
//! blobs already fetched are remembered (by `contentId`) for as long as they can be
//! re-listed, so re-listing costs one listing request, not the blobs again.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_activity::{ActivityType, Outcome};

use super::{Events, Mapped, cap, cap_opt, from_ms, json_array, parse_ip, vendor_id};
use crate::connector::{Ctx, Step};
use crate::error::{ConnectorError, ParseError};

/// The longest window the API accepts.
pub const WINDOW: Duration = Duration::hours(24);
/// How far back a listing may start (the API refuses more than 7 days; a margin for clocks).
pub const MAX_BACK: Duration = Duration::minutes(7 * 24 * 60 - 10);
/// Re-listed each poll, for blobs that appear late in a window already listed.
pub const RELIST: Duration = Duration::hours(1);
pub const LOOKBACK: Duration = Duration::hours(24);
/// Blob ids remembered per content type at most.
pub const MAX_DONE: usize = 50_000;
/// Blobs fetched per listing page at most.
pub const MAX_BLOBS_PER_PAGE: usize = 2_000;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TypeCursor {
    /// Start of the window being (or next to be) listed, ms.
    pub start_ms: Option<i64>,
    /// Its end, once a listing of it started.
    pub end_ms: Option<i64>,
    /// The `NextPageUri` of the listing in progress.
    pub next_page: Option<String>,
    /// Blobs fetched: contentId → contentCreated (ms).
    pub done: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub types: BTreeMap<String, TypeCursor>,
    /// Index of the content type being read in this round.
    pub turn: usize,
}

impl Cursor {
    pub fn reset(&mut self, now: DateTime<Utc>) {
        for t in self.types.values_mut() {
            t.next_page = None;
            t.end_ms = None;
            let floor = (now - MAX_BACK).timestamp_millis();
            t.start_ms = Some(t.start_ms.map_or(floor, |s| s.max(floor)));
        }
    }

    pub fn summary(&self) -> String {
        self.types
            .iter()
            .map(|(k, t)| {
                format!(
                    "{k} from {}",
                    t.start_ms
                        .and_then(from_ms)
                        .map(super::iso)
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One entry of a content listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    pub content_id: String,
    pub content_uri: String,
    pub created_ms: i64,
}

/// A content listing page: a JSON array of `{contentType, contentId, contentUri,
/// contentCreated, contentExpiration}`. An entry without id, URI or creation time is dropped.
pub fn parse_listing(body: &[u8]) -> Result<(Vec<Blob>, u64), ParseError> {
    let list = json_array(body, "content listing array")?;
    let mut out = Vec::new();
    let mut dropped = 0;
    for v in list {
        let blob = (|| {
            let content_id = vendor_id(v.get("contentId")?.as_str())?;
            let content_uri = v.get("contentUri")?.as_str()?.to_string();
            let created = parse_time(v.get("contentCreated")?.as_str()?)?;
            (content_uri.len() <= 2048).then_some(Blob {
                content_id,
                content_uri,
                created_ms: created.timestamp_millis(),
            })
        })();
        match blob {
            Some(b) => out.push(b),
            None => dropped += 1,
        }
    }
    Ok((out, dropped))
}

/// M365 times: RFC 3339, or without a zone (UTC), as `CreationTime` is written.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

/// A blob: a JSON array of audit records.
pub fn parse_blob(body: &[u8]) -> Result<Events, ParseError> {
    let mut out = Events::default();
    for v in json_array(body, "audit record array")? {
        out.push(map(&v));
    }
    Ok(out)
}

pub fn map(v: &Value) -> Option<Mapped> {
    let id = vendor_id(v.get("Id")?.as_str())?;
    let time = parse_time(v.get("CreationTime")?.as_str()?)?;
    let op = v.get("Operation").and_then(Value::as_str).unwrap_or("");
    let status = v.get("ResultStatus").and_then(Value::as_str).unwrap_or("");
    let result = match status {
        "Failed" | "Failure" | "False" | "failed" => Outcome::Failure,
        _ => Outcome::Success,
    };
    let activity = match op {
        "UserLoggedIn" => ActivityType::Login,
        "UserLoginFailed" => ActivityType::FailedLogin,
        "FileDownloaded" | "FileSyncDownloadedFull" | "FileSyncDownloadedPartial" => {
            ActivityType::Download
        }
        "FileUploaded" | "FileSyncUploadedFull" | "FileSyncUploadedPartial" => ActivityType::Upload,
        "FileDeleted" | "FileDeletedFirstStageRecycleBin" | "SoftDelete" | "HardDelete" => {
            ActivityType::Delete
        }
        "SharingSet"
        | "AnonymousLinkCreated"
        | "SharingInvitationCreated"
        | "AddedToSecureLink" => ActivityType::Share,
        o if o.starts_with("Add ")
            || o.starts_with("Remove ")
            || o.starts_with("Update ")
            || o.starts_with("Set-")
            || o.starts_with("New-") =>
        {
            ActivityType::AdminAction
        }
        _ => ActivityType::Other,
    };
    let activity = if activity == ActivityType::Login && result == Outcome::Failure {
        ActivityType::FailedLogin
    } else {
        activity
    };
    let app = match v.get("Workload").and_then(Value::as_str).unwrap_or("") {
        "AzureActiveDirectory" => "microsoft-entra-id",
        "Exchange" => "microsoft-exchange-online",
        "SharePoint" => "microsoft-sharepoint",
        "OneDrive" => "microsoft-onedrive",
        "MicrosoftTeams" => "microsoft-teams",
        _ => "microsoft-365",
    };
    Some(Mapped {
        vendor_id: id,
        time,
        app: app.into(),
        activity,
        action: (!op.is_empty()).then(|| cap(op)),
        user: cap_opt(v.get("UserId").and_then(Value::as_str)),
        ip: v.get("ClientIP").and_then(Value::as_str).and_then(parse_ip),
        object: cap_opt(v.get("ObjectId").and_then(Value::as_str)),
        result,
    })
}

fn api(ctx: &Ctx<'_>, tail: &str) -> Result<String, ConnectorError> {
    let tenant = ctx
        .settings
        .tenant_id
        .as_deref()
        .ok_or_else(|| ConnectorError::Config("m365: tenant_id missing".into()))?;
    Ok(format!("api/v1.0/{tenant}/activity/feed/{tail}"))
}

async fn start_subscription(ctx: &mut Ctx<'_>, content_type: &str) -> Result<(), ConnectorError> {
    let mut url = ctx.url(&api(ctx, "subscriptions/start")?)?;
    url.query_pairs_mut()
        .append_pair("contentType", content_type)
        .append_pair(
            "PublisherIdentifier",
            ctx.settings.tenant_id.as_deref().unwrap_or(""),
        );
    match ctx.request(Method::POST, &url, false).await {
        Ok(_) => Ok(()),
        // AF20024: the subscription is already enabled.
        Err(ConnectorError::Status {
            status: 400,
            reason,
            ..
        }) if reason.contains("AF20024") => Ok(()),
        Err(e) => Err(e),
    }
}

pub async fn step(ctx: &mut Ctx<'_>, cur: &mut Cursor) -> Result<Step, ConnectorError> {
    let types = ctx.settings.content_types.clone();
    if types.is_empty() {
        return Ok(Step::default());
    }
    cur.types.retain(|k, _| types.contains(k));
    let turn = cur.turn % types.len();
    let ct = types[turn].clone();
    if !ctx.memory.m365_started.contains(&ct) {
        start_subscription(ctx, &ct).await?;
        ctx.memory.m365_started.push(ct.clone());
    }
    let now = ctx.now;
    let tc = cur.types.entry(ct.clone()).or_default();
    let floor = (now - MAX_BACK).timestamp_millis();
    let (url, with_cursor) = match &tc.next_page {
        Some(next) => (ctx.vendor_url(next)?, true),
        None => {
            let start = tc
                .start_ms
                .unwrap_or((now - LOOKBACK).timestamp_millis())
                .max(floor);
            let end = (start + WINDOW.num_milliseconds()).min(now.timestamp_millis());
            if end <= start {
                cur.turn = (turn + 1) % types.len();
                return Ok(Step {
                    more: cur.turn != 0,
                    ..Step::default()
                });
            }
            tc.start_ms = Some(start);
            tc.end_ms = Some(end);
            let fmt = |ms: i64| {
                from_ms(ms)
                    .unwrap_or(now)
                    .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                    .to_string()
            };
            let mut url = ctx.url(&api(ctx, "subscriptions/content")?)?;
            url.query_pairs_mut()
                .append_pair("contentType", &ct)
                .append_pair("startTime", &fmt(start))
                .append_pair("endTime", &fmt(end))
                .append_pair(
                    "PublisherIdentifier",
                    ctx.settings.tenant_id.as_deref().unwrap_or(""),
                );
            (url, false)
        }
    };
    let resp = ctx.get(&url, with_cursor).await?;
    let (blobs, mut dropped) = parse_listing(&resp.body).map_err(|e| ctx.parse_error(e))?;
    let next_page = resp
        .headers
        .get("NextPageUri")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let next_page = match next_page {
        Some(n) => Some(ctx.vendor_url(&n)?.to_string()),
        None => None,
    };
    let mut records = Vec::new();
    let done_before: std::collections::BTreeSet<String> = cur
        .types
        .get(&ct)
        .map(|t| t.done.keys().cloned().collect())
        .unwrap_or_default();
    let mut fetched = Vec::new();
    for blob in blobs.into_iter().take(MAX_BLOBS_PER_PAGE) {
        if done_before.contains(&blob.content_id) {
            continue;
        }
        let blob_url = ctx.vendor_url(&blob.content_uri)?;
        match ctx.get(&blob_url, true).await {
            Ok(r) => {
                let events = parse_blob(&r.body).map_err(|e| ctx.parse_error(e))?;
                dropped += events.dropped;
                let step = events.into_step(&ctx.settings.name, false);
                records.extend(step.records);
            }
            // Expired (contentExpiration passed) or gone: nothing more can be had.
            Err(ConnectorError::CursorExpired { status, .. }) => {
                tracing::warn!(connector = %ctx.settings.name, status, blob = %blob.content_id, "content blob gone; skipped");
                dropped += 1;
            }
            Err(e) => return Err(e),
        }
        fetched.push((blob.content_id, blob.created_ms));
    }
    let tc = cur.types.entry(ct.clone()).or_default();
    tc.done.extend(fetched);
    let mut more = true;
    match next_page {
        Some(n) => tc.next_page = Some(n),
        None => {
            tc.next_page = None;
            let end = tc.end_ms.take().unwrap_or(now.timestamp_millis());
            if end >= (now - Duration::minutes(1)).timestamp_millis() {
                // Reached the present: re-list the last hour next time; this type is done
                // for this round.
                tc.start_ms = Some(
                    (end - RELIST.num_milliseconds())
                        .max(tc.start_ms.unwrap_or(0))
                        .max(floor),
                );
                cur.turn = (turn + 1) % types.len();
                more = cur.turn != 0;
            } else {
                tc.start_ms = Some(end);
            }
            let tc = cur.types.entry(ct.clone()).or_default();
            let keep_from = tc.start_ms.unwrap_or(0) - Duration::minutes(5).num_milliseconds();
            tc.done.retain(|_, created| *created >= keep_from);
            while tc.done.len() > MAX_DONE {
                let Some(oldest) = tc
                    .done
                    .iter()
                    .min_by_key(|(_, c)| **c)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                tc.done.remove(&oldest);
            }
        }
    }
    Ok(Step {
        records,
        dropped,
        more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_listing_and_record_map() {
        let listing = br#"[{"contentType":"Audit.SharePoint","contentId":"492638008028$492638008028$f28ab78ad40140608012736e373933ebspo2015043022$4a81a7c326fc4aed89c62e6039ab833b$04","contentUri":"https://manage.office.com/api/v1.0/f28ab78a-d401-4060-8012-736e373933eb/activity/feed/audit/492638008028$492638008028$f28ab78ad40140608012736e373933ebspo2015043022$4a81a7c326fc4aed89c62e6039ab833b$04","contentCreated":"2015-05-23T17:35:00.000Z","contentExpiration":"2015-05-30T17:35:00.000Z"},{"contentId":"x"}]"#;
        let (blobs, dropped) = parse_listing(listing).unwrap();
        assert_eq!((blobs.len(), dropped), (1, 1));
        assert_eq!(blobs[0].created_ms, 1432402500000);
        let blob = br#"[{"CreationTime":"2015-06-29T20:03:19","Id":"80c76bd2-9d81-4c57-a97a-accfc3443dca","Operation":"PasswordLogonInitialAuthUsingPassword","OrganizationId":"41463f53-8812-40f4-890f-865bf6e35190","RecordType":9,"ResultStatus":"failed","UserKey":"1153977025279851686@contoso.onmicrosoft.com","UserType":0,"Workload":"AzureActiveDirectory","ClientIP":"134.170.188.221","ObjectId":"admin@contoso.onmicrosoft.com","UserId":"admin@contoso.onmicrosoft.com"}]"#;
        let page = parse_blob(blob).unwrap();
        let m = &page.events[0];
        assert_eq!(m.vendor_id, "80c76bd2-9d81-4c57-a97a-accfc3443dca");
        assert_eq!(m.time.timestamp(), 1435608199);
        assert_eq!(m.app, "microsoft-entra-id");
        assert_eq!(m.result, Outcome::Failure);
        assert_eq!(m.ip, Some("134.170.188.221".parse().unwrap()));
    }
}
