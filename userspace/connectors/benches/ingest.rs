//! Ingest per connector against the local simulated APIs (`sim`, HTTPS on 127.0.0.1):
//! events/s stored, API calls per 1,000 events, and memory per connector, each with a
//! baseline measured in the same run:
//! - events/s against the pure parser on the same pages (what HTTP, TLS, mapping and the
//!   store cost on top of parsing);
//! - API calls per 1,000 events against the fewest the vendor's documented page limit allows;
//! - memory per idle connector (RSS growth over 200 connectors) against the stored cursor.
//!
//! `cargo bench -p tollgate-connectors` (EVENTS=N to change the event count, default 20,000).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Counts live heap bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

use tollgate_connectors::sim::{M365_TENANT, Sim, SimClock, SimEvent};
use tollgate_connectors::vendors::{box_events, github, m365, okta, slack};
use tollgate_connectors::{
    Connector, ConnectorConfig, Kind, Limits, MemoryStore, Options, Settings, TenantGates,
};

const TOKEN: &str = "bench-token";
const T0: i64 = 1_793_491_200_000;

fn config(kind: Kind, base_url: &str, name: &str) -> ConnectorConfig {
    ConnectorConfig {
        kind: Some(kind),
        name: Some(name.into()),
        base_url: Some(base_url.into()),
        token: Some(TOKEN.into()),
        enterprise: (kind == Kind::Github).then(|| "acme".into()),
        tenant_id: (kind == Kind::M365).then(|| M365_TENANT.into()),
        content_types: (kind == Kind::M365)
            .then(|| vec!["Audit.General".into(), "Audit.SharePoint".into()]),
        ..Default::default()
    }
}

/// The vendor's largest page: the fewest calls for `n` events.
fn min_calls(kind: Kind, n: u64) -> u64 {
    let page = match kind {
        Kind::Okta => okta::LIMIT,
        Kind::Github => github::PER_PAGE,
        Kind::Slack => slack::LIMIT,
        Kind::Box => box_events::LIMIT,
        // One listing per content type and one blob per request at best: the simulator's
        // blobs hold 5 minutes of one content type.
        Kind::M365 => return 0,
    } as u64;
    n.div_ceil(page)
}

/// Pages rendered by a simulated vendor, parsed by the pure parser only.
fn parse_only(kind: Kind, pages: &[Vec<u8>]) -> usize {
    let mut n = 0;
    for p in pages {
        n += match kind {
            Kind::Okta => okta::parse_page(p).map(|e| e.events.len()).unwrap_or(0),
            Kind::Github => github::parse_page(p).map(|e| e.events.len()).unwrap_or(0),
            Kind::M365 => m365::parse_blob(p).map(|e| e.events.len()).unwrap_or(0),
            Kind::Slack => match slack::parse_page(p) {
                Ok(slack::Page::Entries { events, .. }) => events.events.len(),
                _ => 0,
            },
            Kind::Box => box_events::parse_page(p)
                .map(|(e, _)| e.events.len())
                .unwrap_or(0),
        };
    }
    n
}

/// The pages of `events` as the vendor writes them (built with the same JSON shapes as the
/// simulator, through a throwaway connector-free path: one request per page with curl-like
/// fetching would measure HTTP; here we want the parser alone).
fn render_pages(kind: Kind, events: &[SimEvent]) -> Vec<Vec<u8>> {
    let per = match kind {
        Kind::Okta => 1000,
        Kind::Github => 100,
        Kind::M365 => 50,
        Kind::Slack => 1000,
        Kind::Box => 500,
    };
    events
        .chunks(per)
        .map(|chunk| {
            let items: Vec<serde_json::Value> = chunk
                .iter()
                .map(|e| match kind {
                    Kind::Okta => serde_json::json!({"uuid": e.id, "published": chrono::DateTime::from_timestamp_millis(e.time_ms).unwrap().to_rfc3339(),
                        "eventType": "user.session.start", "actor": {"alternateId": e.user}, "client": {"ipAddress": e.ip},
                        "outcome": {"result": "SUCCESS"}, "target": [{"alternateId": e.object}]}),
                    Kind::Github => serde_json::json!({"@timestamp": e.time_ms, "_document_id": e.id, "action": "git.clone", "actor": e.user, "actor_ip": e.ip, "repo": e.object}),
                    Kind::M365 => serde_json::json!({"CreationTime": chrono::DateTime::from_timestamp_millis(e.time_ms).unwrap().format("%Y-%m-%dT%H:%M:%S").to_string(),
                        "Id": e.id, "Operation": "FileDownloaded", "ResultStatus": "Succeeded", "Workload": "SharePoint", "ClientIP": e.ip, "ObjectId": e.object, "UserId": e.user}),
                    Kind::Slack => serde_json::json!({"id": e.id, "date_create": e.time_ms / 1000, "action": "file_downloaded",
                        "actor": {"type": "user", "user": {"email": e.user}}, "entity": {"type": "file", "file": {"name": e.object}}, "context": {"ip_address": e.ip}}),
                    Kind::Box => serde_json::json!({"type": "event", "event_id": e.id, "event_type": "DOWNLOAD",
                        "created_at": chrono::DateTime::from_timestamp_millis(e.time_ms).unwrap().to_rfc3339(), "created_by": {"login": e.user}, "ip_address": e.ip, "source": {"item_name": e.object}}),
                })
                .collect();
            let body = match kind {
                Kind::Slack => serde_json::json!({"entries": items, "response_metadata": {"next_cursor": ""}}),
                Kind::Box => serde_json::json!({"entries": items, "next_stream_position": "1"}),
                _ => serde_json::Value::Array(items),
            };
            body.to_string().into_bytes()
        })
        .collect()
}

fn main() {
    let n: u64 = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{:<7} {:>8} {:>12} {:>12} {:>8} {:>10} {:>10} {:>8}",
        "vendor", "events", "events/s", "parse-only/s", "ratio", "calls/1k", "min/1k", "ratio"
    );
    let mut cursor_bytes = Vec::new();
    for kind in Kind::ALL {
        rt.block_on(async {
            let clock = SimClock::new(T0);
            let sim = Sim::start(kind, clock.clone(), TOKEN).await.unwrap();
            sim.set_hold(Duration::ZERO);
            // Spread over the last 23 hours (inside every first window).
            let span = 23 * 3600 * 1000;
            let events: Vec<SimEvent> = (0..n)
                .map(|i| SimEvent::new(i, T0 - span + (i as i64 * span) / n as i64))
                .collect();
            sim.add_events(events.clone());
            let options = Options {
                limits: Limits::default(),
                clock: clock.clock(),
                extra_roots: vec![sim.cert_der.clone()],
                gates: TenantGates::default(),
                on_throttle: None,
            };
            let store = MemoryStore::new();
            let mut c = Connector::new(
                Settings::from_config(&config(kind, &sim.base_url, "bench")).unwrap(),
                options,
            )
            .unwrap();
            let live_before = live();
            PEAK.store(live_before, Ordering::Relaxed);
            let started = Instant::now();
            let mut quiet = 0;
            while quiet < 2 {
                let r = c.poll(&store).await.unwrap();
                quiet = if r.caught_up && r.new == 0 {
                    quiet + 1
                } else {
                    0
                };
            }
            let secs = started.elapsed().as_secs_f64();
            let peak = PEAK.load(Ordering::Relaxed) - live_before;
            let stored = live().saturating_sub(live_before);
            assert_eq!(store.len() as u64, n, "{kind}: every event stored once");
            // The two quiet polls are not ingest; count the calls that brought events in.
            let calls = sim.stats().requests.saturating_sub(2);
            let pages = render_pages(kind, &events);
            let p0 = Instant::now();
            let parsed = parse_only(kind, &pages);
            let psecs = p0.elapsed().as_secs_f64();
            assert_eq!(parsed as u64, n);
            let rate = n as f64 / secs;
            let prate = n as f64 / psecs;
            let per_k = calls as f64 * 1000.0 / n as f64;
            let min_k = min_calls(kind, n) as f64 * 1000.0 / n as f64;
            println!(
                "{:<7} {:>8} {:>12.0} {:>12.0} {:>8.3} {:>10.2} {:>10} {:>8}",
                kind.as_str(),
                n,
                rate,
                prate,
                rate / prate,
                per_k,
                if min_k > 0.0 {
                    format!("{min_k:.2}")
                } else {
                    "-".into()
                },
                if min_k > 0.0 {
                    format!("{:.2}", per_k / min_k)
                } else {
                    "-".into()
                },
            );
            cursor_bytes.push((
                kind,
                store.cursor("bench").map_or(0, |c| c.len()),
                peak,
                stored,
            ));
        });
    }
    // Memory: RSS growth over many idle connectors (settings, TLS config, status, client).
    rt.block_on(async {
        let clock = SimClock::new(T0);
        let sim = Sim::start(Kind::Box, clock.clone(), TOKEN).await.unwrap();
        let options = Options {
            limits: Limits::default(),
            clock: clock.clock(),
            extra_roots: vec![sim.cert_der.clone()],
            gates: TenantGates::default(),
            on_throttle: None,
        };
        let no_extra = Options {
            extra_roots: Vec::new(),
            ..options.clone()
        };
        let _warm = Connector::new(
            Settings::from_config(&config(Kind::Box, &sim.base_url, "warm0")).unwrap(),
            no_extra.clone(),
        );
        let _warm = Connector::new(
            Settings::from_config(&config(Kind::Box, &sim.base_url, "warm")).unwrap(),
            options.clone(),
        )
        .unwrap();
        let before = live();
        let count = 200;
        let mut all = Vec::new();
        for i in 0..count {
            let kind = Kind::ALL[i % 5];
            all.push(
                Connector::new(
                    Settings::from_config(&config(kind, &sim.base_url, &format!("c{i}"))).unwrap(),
                    options.clone(),
                )
                .unwrap(),
            );
        }
        let after = live();
        let per = (after.saturating_sub(before)) as f64 / count as f64;
        // The hub's case: no extra roots, one shared TLS configuration.
        let before_shared = live();
        let mut shared = Vec::new();
        for i in 0..count {
            let kind = Kind::ALL[i % 5];
            if let Ok(c) = Connector::new(
                Settings::from_config(&config(kind, &sim.base_url, &format!("s{i}"))).unwrap(),
                no_extra.clone(),
            ) {
                shared.push(c);
            }
        }
        let per_shared = if shared.is_empty() {
            f64::NAN
        } else {
            live().saturating_sub(before_shared) as f64 / shared.len() as f64
        };
        println!(
            "\nmemory per idle connector: {:.1} KiB of heap with the system roots shared (the hub), \
             {:.1} KiB with its own root store (extra roots); ratio {:.2}",
            per_shared / 1024.0,
            per / 1024.0,
            per_shared / per
        );
        drop(shared);
        println!(
            "{:<7} {:>14} {:>16} {:>16} {:>8}",
            "vendor", "cursor bytes", "peak above start", "store (baseline)", "ratio"
        );
        for (kind, bytes, peak, stored) in &cursor_bytes {
            println!(
                "{:<7} {:>14} {:>13} KiB {:>12} KiB {:>8.2}",
                kind.as_str(),
                bytes,
                peak / 1024,
                stored / 1024,
                *peak as f64 / (*stored).max(1) as f64
            );
        }
        drop(all);
    });
}
