//! The console's pages: plain HTML from the control answers' JSON, every string escaped (app
//! names, user names, alert reasons and objects come from the network), no script and no
//! inline style (the Content-Security-Policy forbids them).

use std::fmt::Write as _;

use serde_json::Value;
use tollgate_console_kit::{attr, esc, q, risk, table};

/// Rows of the apps and users tables at most (the riskiest apps, the first users); the rest
/// are counted, and `tollgate apps --json` has them all.
pub const MAX_ROWS: usize = 1000;

const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/discovery", "Cloud Discovery"),
    ("/alerts", "Alerts"),
    ("/activity", "Activity"),
];

fn layout(title: &str, active: Option<&str>, body: &str) -> String {
    let mut nav = String::new();
    if let Some(active) = active {
        nav.push_str("<nav>");
        for (href, label) in NAV {
            let cls = if *href == active { " class=\"on\"" } else { "" };
            let _ = write!(nav, "<a href=\"{href}\"{cls}>{label}</a>");
        }
        nav.push_str("<span class=\"logout who\">read-only gateway console</span></nav>");
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\">\
         <title>{} · Tollgate gateway</title>\
         <link rel=\"stylesheet\" href=\"/assets/style.css\"></head>\
         <body><header><span class=\"brand\">Tollgate gateway</span>{nav}</header>\
         <main><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        esc(title)
    )
}

/// A page with a title and one paragraph (errors, 404).
pub fn message(title: &str, text: &str) -> String {
    layout(
        title,
        Some(""),
        &format!("<p>{}</p><p><a href=\"/\">Overview</a></p>", esc(text)),
    )
}

/// The 401 page: how to get in.
pub fn unauthorized() -> String {
    layout(
        "Log in with tollgate console",
        None,
        "<p>This console needs the gateway's console token. On the gateway, as root, run \
         <code>tollgate console</code> (with <code>--config</code> if the daemon runs with one) \
         and open the URL it prints; from another machine, forward the port first with \
         <code>ssh -L</code>.</p><p>The token changes each time the daemon starts.</p>",
    )
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn n(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// An RFC 3339 time shortened to the second.
fn when(t: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string()
        })
        .unwrap_or_else(|_| t.to_string())
}

fn bytes(n: u64) -> String {
    let f = n as f64;
    let (v, unit) = if f >= 1e12 {
        (f / 1e12, "TB")
    } else if f >= 1e9 {
        (f / 1e9, "GB")
    } else if f >= 1e6 {
        (f / 1e6, "MB")
    } else if f >= 1e3 {
        (f / 1e3, "kB")
    } else {
        return format!("{n} B");
    };
    format!("{v:.1} {unit}")
}

fn duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d} d {h} h {m} min")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min {s} s")
    } else {
        format!("{s} s")
    }
}

fn dl(items: &[(&str, String)]) -> String {
    let mut out = String::from("<dl>");
    for (k, v) in items {
        let _ = write!(out, "<dt>{k}</dt><dd>{v}</dd>");
    }
    out.push_str("</dl>");
    out
}

/// Overview: what `tollgate status` says, in short.
pub fn overview(st: &Value) -> String {
    let mode = s(st, "mode");
    let enforce = mode == "enforce";
    let mut items = vec![
        ("Mode", esc(mode).into_owned()),
        (
            "Running since",
            format!(
                "{} ({})",
                esc(&when(s(st, "started_at"))),
                duration(n(st, "uptime_secs"))
            ),
        ),
        (
            "Flows",
            format!(
                "<span id=\"flows\">{}</span> live, {} named",
                n(st, "flows"),
                n(st, "named_flows")
            ),
        ),
        (
            "Traffic seen",
            format!("{} packets, {}", n(st, "packets"), bytes(n(st, "bytes"))),
        ),
        (
            "Events",
            format!(
                "{} handled, {} from the kernel",
                n(st, "events"),
                n(st, "kernel_events")
            ),
        ),
        (
            if enforce { "Dropped" } else { "Would drop" },
            n(st, if enforce { "drops" } else { "would_drop" }).to_string(),
        ),
        ("Lost work", {
            let ring = n(st, "ring_drops");
            let cls = if ring > 0 { "warn" } else { "ok" };
            format!(
                "<span class=\"{cls}\">{ring} ring-buffer drops</span>, {} flows dropped \
                     (table full), {} kernel parse errors",
                n(st, "flows_dropped"),
                n(st, "kernel_parse_errors")
            )
        }),
    ];
    let session = st.get("session").unwrap_or(&Value::Null);
    items.push((
        "Session control",
        if st.get("proxy").is_some_and(|p| !p.is_null()) {
            format!(
                "on: {} connections steered to the proxy, {} refused",
                n(session, "steered"),
                n(session, "session_refused")
            )
        } else {
            "off (no app has session_control = true)".into()
        },
    ));
    items.push(("Hub", hub(st.get("hub").unwrap_or(&Value::Null))));
    if let Some(a) = st.get("activity").filter(|a| !a.is_null()) {
        items.push((
            "Alerts",
            format!(
                "<a href=\"/alerts\">{} open</a> of {} kept",
                n(a, "alerts_open"),
                n(a, "alerts")
            ),
        ));
    }
    if let Some(c) = st.get("connectors").and_then(Value::as_object) {
        let names: Vec<String> = c.keys().map(|k| esc(k).into_owned()).collect();
        items.push((
            "Connectors",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            },
        ));
    }
    layout("Overview", Some("/"), &dl(&items))
}

fn hub(h: &Value) -> String {
    if h.is_null() {
        return "not enrolled (standalone gateway)".into();
    }
    let link = if h.get("connected").and_then(Value::as_bool) == Some(true) {
        "<span class=\"ok\">connected</span>"
    } else {
        "<span class=\"bad\">not connected</span>"
    };
    let mut out = format!(
        "{link} to {} as gateway {} of site {}, bundle revision {}",
        esc(s(h, "url")),
        esc(s(h, "gateway_id")),
        esc(s(h, "site")),
        n(h, "bundle_revision")
    );
    if let Some(t) = h.get("last_contact").and_then(Value::as_i64)
        && let Some(t) = chrono::DateTime::from_timestamp(t, 0)
    {
        let _ = write!(out, "; last contact {}", t.format("%Y-%m-%d %H:%M:%S UTC"));
    }
    if let Some(e) = h.get("last_error").and_then(Value::as_str) {
        let _ = write!(out, "; last error: <span class=\"err\">{}</span>", esc(e));
    }
    out
}

fn apps_of(data: &Value) -> Vec<&Value> {
    let mut apps: Vec<&Value> = data
        .get("apps")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    // The riskiest first (the lowest score), then the busiest; apps without a score last.
    apps.sort_by(|a, b| {
        let (ra, rb) = (
            a.get("risk_score").and_then(Value::as_f64),
            b.get("risk_score").and_then(Value::as_f64),
        );
        let by_risk = match (ra, rb) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        by_risk.then_with(|| {
            (n(b, "bytes_up") + n(b, "bytes_down")).cmp(&(n(a, "bytes_up") + n(a, "bytes_down")))
        })
    });
    apps
}

fn users_of(data: &Value) -> &[Value] {
    data.get("users")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Cloud Discovery: the apps by risk, then the users.
pub fn discovery(data: &Value) -> String {
    let all_apps = apps_of(data);
    let all_users = users_of(data);
    let rows: Vec<String> = all_apps
        .iter()
        .take(MAX_ROWS)
        .map(|a| {
            let id = s(a, "id");
            format!(
                "<tr><td><a href=\"/discovery?app={}\">{}</a></td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                attr(&q(id)),
                esc(s(a, "name")),
                esc(s(a, "category")),
                risk(a.get("risk_score").and_then(Value::as_f64)),
                esc(s(a, "tag")),
                bytes(n(a, "bytes_up")),
                bytes(n(a, "bytes_down")),
                n(a, "users"),
                n(a, "transactions"),
                esc(&when(s(a, "last_seen"))),
            )
        })
        .collect();
    let users: Vec<String> = all_users.iter().take(MAX_ROWS).map(user_row).collect();
    let totals = data.get("totals").unwrap_or(&Value::Null);
    let more = |all: usize, what: &str| {
        if all > MAX_ROWS {
            format!(
                "<p>{} more {what} not shown: <code>tollgate apps --json</code> lists them all.</p>",
                all - MAX_ROWS
            )
        } else {
            String::new()
        }
    };
    let body = format!(
        "<p>Apps seen through this gateway since the daemon started, the riskiest first \
         (risk score 0–10, lower is riskier). {} transactions, {} up, {} down.</p>{}{}\
         <h2>Users</h2>{}{}",
        n(totals, "transactions"),
        bytes(n(totals, "bytes_up")),
        bytes(n(totals, "bytes_down")),
        table(
            &[
                "App",
                "Category",
                "Risk",
                "Tag",
                "Upload",
                "Download",
                "Users",
                "Flows",
                "Last seen"
            ],
            &rows
        ),
        more(all_apps.len(), "apps"),
        table(
            &[
                "User",
                "Kind",
                "Apps",
                "Top apps",
                "Upload",
                "Download",
                "Last seen"
            ],
            &users
        ),
        more(all_users.len(), "users"),
    );
    layout("Cloud Discovery", Some("/discovery"), &body)
}

fn user_row(u: &Value) -> String {
    let user = s(u, "user");
    let top: Vec<String> = u
        .get("top_apps")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|app| {
                    format!(
                        "<a href=\"/discovery?app={}\">{}</a>",
                        attr(&q(app)),
                        esc(app)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "<tr><td><a href=\"/activity?user={}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td></tr>",
        attr(&q(user)),
        esc(user),
        esc(s(u, "kind")),
        n(u, "apps"),
        top.join(", "),
        bytes(n(u, "bytes_up")),
        bytes(n(u, "bytes_down")),
        esc(&when(s(u, "last_seen"))),
    )
}

/// One app: its figures, the users whose top apps it is among, and a link to its activity.
pub fn app(data: &Value, id: &str) -> String {
    let Some(a) = apps_of(data).into_iter().find(|a| s(a, "id") == id) else {
        return layout(
            "App not seen",
            Some("/discovery"),
            &format!(
                "<p>This gateway has not seen {} since the daemon started. \
                 <a href=\"/discovery\">All apps</a></p>",
                esc(id)
            ),
        );
    };
    let items = [
        ("Id", esc(id).into_owned()),
        ("Category", esc(s(a, "category")).into_owned()),
        ("Risk", risk(a.get("risk_score").and_then(Value::as_f64))),
        ("Tag", esc(s(a, "tag")).into_owned()),
        (
            "Traffic",
            format!(
                "{} up, {} down in {} flows",
                bytes(n(a, "bytes_up")),
                bytes(n(a, "bytes_down")),
                n(a, "transactions")
            ),
        ),
        (
            "Users",
            format!("{} users, {} addresses", n(a, "users"), n(a, "ips")),
        ),
        (
            "Seen",
            format!(
                "{} – {}",
                esc(&when(s(a, "first_seen"))),
                esc(&when(s(a, "last_seen")))
            ),
        ),
    ];
    let users: Vec<String> = users_of(data)
        .iter()
        .filter(|u| {
            u.get("top_apps")
                .and_then(Value::as_array)
                .is_some_and(|t| t.iter().any(|x| x.as_str() == Some(id)))
        })
        .map(|u| {
            let user = s(u, "user");
            format!(
                "<tr><td>{}</td><td>{}</td><td><a href=\"/activity?user={}&amp;app={}\">activity</a></td></tr>",
                esc(user),
                esc(s(u, "kind")),
                attr(&q(user)),
                attr(&q(id)),
            )
        })
        .collect();
    let body = format!(
        "{}<p><a href=\"/activity?app={}\">Activity of this app</a> · \
         <a href=\"/discovery\">All apps</a></p>\
         <h2>Users among whose top five apps it is</h2>{}",
        dl(&items),
        attr(&q(id)),
        table(&["User", "Kind", ""], &users),
    );
    layout(s(a, "name"), Some("/discovery"), &body)
}

/// The alert's user (or address) linked to their activity, and its app linked to its
/// discovery page.
fn alert_entities(a: &Value) -> (String, String) {
    let e = a.get("entities").unwrap_or(&Value::Null);
    let user = match (e.get("user").and_then(Value::as_str), s(e, "ip")) {
        (Some(u), _) => format!("<a href=\"/activity?user={}\">{}</a>", attr(&q(u)), esc(u)),
        (None, ip) => esc(ip).into_owned(),
    };
    let app = match e.get("app").and_then(Value::as_str) {
        Some(app) => format!(
            "<a href=\"/discovery?app={}\">{}</a>",
            attr(&q(app)),
            esc(app)
        ),
        None => String::new(),
    };
    (user, app)
}

fn sev(a: &Value) -> String {
    let sev = s(a, "severity");
    format!("<span class=\"sev {}\">{}</span>", attr(sev), esc(sev))
}

const READ_ONLY_ALERTS: &str = "<p>Read-only: resolve or dismiss an alert on the gateway with \
     <code>tollgate alerts resolve ID</code> or <code>tollgate alerts dismiss ID</code>.</p>";

/// Alerts: every alert kept, newest first.
pub fn alerts(data: &Value) -> String {
    let mut list: Vec<&Value> = data
        .get("alerts")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    list.sort_by_key(|a| std::cmp::Reverse(n(a, "id")));
    let rows: Vec<String> = list
        .into_iter()
        .map(|a| {
            let id = n(a, "id");
            let (user, app) = alert_entities(a);
            format!(
                "<tr><td><a href=\"/alerts/{id}\">{id}</a></td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{user}</td><td>{app}</td><td>{}</td><td>{}</td></tr>",
                esc(&when(s(a, "time"))),
                sev(a),
                esc(s(a, "status")),
                esc(s(a, "policy")),
                n(a, "count"),
                esc(s(a, "reason")),
            )
        })
        .collect();
    let body = format!(
        "{READ_ONLY_ALERTS}{}",
        table(
            &[
                "ID", "Opened", "Severity", "Status", "Policy", "User", "App", "Matches", "Reason"
            ],
            &rows
        )
    );
    layout("Alerts", Some("/alerts"), &body)
}

/// One alert and the activities that prove it.
pub fn alert(data: &Value) -> String {
    let a = data.get("alert").unwrap_or(&Value::Null);
    let id = n(a, "id");
    let (user, app) = alert_entities(a);
    let mut items = vec![
        ("Opened", esc(&when(s(a, "time"))).into_owned()),
        ("Last seen", esc(&when(s(a, "last_seen"))).into_owned()),
        ("Severity", sev(a)),
        ("Status", esc(s(a, "status")).into_owned()),
        ("Policy", esc(s(a, "policy")).into_owned()),
        ("User", user),
        ("App", app),
        ("Matches", n(a, "count").to_string()),
        ("Reason", esc(s(a, "reason")).into_owned()),
    ];
    if let Some(c) = a.get("comment").and_then(Value::as_str) {
        items.push(("Comment", esc(c).into_owned()));
    }
    let acts: &[Value] = a
        .get("activities")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let body = format!(
        "{}<p>Read-only: resolve it on the gateway with <code>tollgate alerts resolve {id}</code> \
         (or dismiss it with <code>tollgate alerts dismiss {id}</code>).</p>\
         <h2>The activities that prove it</h2>{}<p><a href=\"/alerts\">All alerts</a></p>",
        dl(&items),
        activity_table(acts),
    );
    layout(&format!("Alert {id}"), Some("/alerts"), &body)
}

fn activity_table(acts: &[Value]) -> String {
    let rows: Vec<String> = acts
        .iter()
        .map(|a| {
            let user = s(a, "user");
            let app = s(a, "app");
            let user_cell = if user.is_empty() {
                String::new()
            } else {
                format!(
                    "<a href=\"/activity?user={}\">{}</a>",
                    attr(&q(user)),
                    esc(user)
                )
            };
            let bytes_cell = a
                .get("bytes")
                .and_then(Value::as_u64)
                .map(bytes)
                .unwrap_or_default();
            format!(
                "<tr><td>{}</td><td>{user_cell}</td><td>{}</td><td><a href=\"/activity?app={}\">{}</a></td>\
                 <td>{}</td><td>{}</td><td>{bytes_cell}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&when(s(a, "time"))),
                esc(s(a, "ip")),
                attr(&q(app)),
                esc(app),
                esc(s(a, "activity")),
                esc(s(a, "object")),
                esc(s(a, "result")),
                esc(s(a, "source")),
                esc(s(a, "policy")),
            )
        })
        .collect();
    table(
        &[
            "Time", "User", "IP", "App", "Activity", "Object", "Bytes", "Result", "Source",
            "Policy",
        ],
        &rows,
    )
}

/// Activity: the newest records of the log, filtered by user and app.
pub fn activity(data: &Value, query: &crate::alerting::ActivityQuery) -> String {
    let mut acts: Vec<Value> = data
        .get("activities")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // The log answers oldest first; the console shows the newest first.
    acts.reverse();
    let user = query.user.as_deref().unwrap_or("");
    let app = query.app.as_deref().unwrap_or("");
    let skipped = n(data, "skipped_lines");
    let body = format!(
        "<form class=\"range\" method=\"get\" action=\"/activity\">\
         <label>User <input name=\"user\" value=\"{}\"></label>\
         <label>App <input name=\"app\" value=\"{}\"></label>\
         <button>Filter</button> <a href=\"/activity\">Clear</a></form>\
         <p>The newest {} matching records, newest first ({} shown){}.</p>{}",
        attr(user),
        attr(app),
        super::ACTIVITY_LIMIT,
        acts.len(),
        if skipped > 0 {
            format!("; {skipped} unreadable lines of the log skipped")
        } else {
            String::new()
        },
        activity_table(&acts),
    );
    layout("Activity", Some("/activity"), &body)
}
