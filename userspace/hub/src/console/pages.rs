//! The console's pages: plain HTML, every string escaped (names, users, reasons and hosts come
//! from the network), no inline script or style (the Content-Security-Policy forbids them);
//! chart data travels in a `<script type="application/json">` block that `console.js` reads.

use std::fmt::Write as _;

use tollgate_catalog::Catalog;
use tollgate_console_kit::{attr, esc, q, risk, table};

use super::store::{AppTotal, Role, Session, UseRow};
use crate::db::{AuditView, GatewayView};

const NAV: &[(&str, &str)] = &[
    ("/console/fleet", "Fleet"),
    ("/console/discovery", "Discovery"),
    ("/console/catalog", "Catalog"),
    ("/console/alerts", "Alerts"),
    ("/console/policies", "Policies"),
    ("/console/audit", "Audit"),
];

fn layout(s: Option<&Session>, title: &str, active: &str, body: &str) -> String {
    let mut nav = String::new();
    if let Some(s) = s {
        nav.push_str("<nav>");
        for (href, label) in NAV {
            let cls = if *href == active { " class=\"on\"" } else { "" };
            let _ = write!(nav, "<a href=\"{href}\"{cls}>{label}</a>");
        }
        let _ = write!(
            nav,
            "<form method=\"post\" action=\"/console/logout\" class=\"logout\">{}\
             <span class=\"who\">{} ({})</span> <button>Log out</button></form></nav>",
            csrf(s),
            esc(&s.user),
            s.role.as_str()
        );
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\">\
         <title>{} · Tollgate</title>\
         <link rel=\"stylesheet\" href=\"/console/assets/uPlot.min.css\">\
         <link rel=\"stylesheet\" href=\"/console/assets/style.css\">\
         <script src=\"/console/assets/uPlot.iife.min.js\" defer></script>\
         <script src=\"/console/assets/console.js\" defer></script></head>\
         <body><header><span class=\"brand\">Tollgate</span>{nav}</header>\
         <main><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        esc(title)
    )
}

fn csrf(s: &Session) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        attr(&s.csrf)
    )
}

fn when(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    let (v, unit) = if n >= 1e9 {
        (n / 1e9, "GB")
    } else if n >= 1e6 {
        (n / 1e6, "MB")
    } else if n >= 1e3 {
        (n / 1e3, "kB")
    } else {
        (n, "B")
    };
    if unit == "B" {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {unit}")
    }
}

/// The range's query string (`days=7&site=paris`).
fn range_q(days: i64, site: Option<&str>) -> String {
    match site {
        Some(s) => format!("days={days}&site={}", q(s)),
        None => format!("days={days}"),
    }
}

/// The traffic chart over `[since, now]`: hours without traffic are drawn as zero.
fn chart(hours: &[(i64, i64, i64)], since: i64) -> String {
    let now = crate::db::now();
    let first = since - since.rem_euclid(3600);
    let by_hour: std::collections::HashMap<i64, (i64, i64)> =
        hours.iter().map(|h| (h.0, (h.1, h.2))).collect();
    let (mut xs, mut up, mut down) = (Vec::new(), Vec::new(), Vec::new());
    let mut h = first;
    while h <= now {
        let (u, d) = by_hour.get(&h).copied().unwrap_or((0, 0));
        xs.push(h);
        up.push(u);
        down.push(d);
        h += 3600;
    }
    let any = hours.iter().any(|h| h.1 + h.2 > 0);
    let data = serde_json::json!({ "any": any, "data": [xs, up, down] }).to_string();
    // `</` cannot occur in JSON numbers; escaped anyway so the block cannot be closed early.
    format!(
        "<div id=\"chart\" class=\"chart\" aria-label=\"traffic per hour\"></div>\
         <script type=\"application/json\" id=\"chart-data\">{}</script>",
        data.replace("</", "<\\/")
    )
}

pub fn message(s: Option<&Session>, title: &str, text: &str) -> String {
    layout(s, title, "", &format!("<p class=\"msg\">{}</p>", esc(text)))
}

pub fn login(error: Option<&str>) -> String {
    let err = error.map_or(String::new(), |e| {
        format!("<p class=\"err\">{}</p>", esc(e))
    });
    layout(
        None,
        "Log in",
        "",
        &format!(
            "{err}<form method=\"post\" action=\"/console/login\" class=\"login\">\
             <label>Name <input name=\"name\" id=\"name\" autocomplete=\"username\" required></label>\
             <label>Password <input name=\"password\" id=\"password\" type=\"password\" \
             autocomplete=\"current-password\" required></label>\
             <button id=\"login\">Log in</button></form>"
        ),
    )
}

pub fn fleet(s: &Session, gws: &[GatewayView]) -> String {
    let now = crate::db::now();
    let rows: Vec<String> = gws
        .iter()
        .map(|g| {
            let state = if g.revoked_at.is_some() {
                "<span class=\"bad\">revoked</span>".to_string()
            } else {
                match g.last_seen {
                    Some(t) if now - t < 180 => "<span class=\"ok\">connected</span>".into(),
                    Some(t) => format!("<span class=\"warn\">seen {}</span>", when(t)),
                    None => "<span class=\"warn\">never seen</span>".into(),
                }
            };
            let health = g.health.as_ref().map_or(String::new(), |h| {
                format!(
                    "{} flows, {} ring drops, spool {} records{}",
                    h.flows_active,
                    h.ring_drops,
                    h.spool_records,
                    h.last_error
                        .as_deref()
                        .map_or(String::new(), |e| format!(", last error: {}", esc(e)))
                )
            });
            let report = match (&g.report_outcome, &g.report_reason) {
                (Some(o), Some(r)) => format!("{} ({})", esc(o), esc(r)),
                (Some(o), None) => esc(o).into_owned(),
                _ => String::new(),
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{state}</td><td>{}</td><td>{report}</td><td>{health}</td></tr>",
                esc(&g.hostname),
                esc(&g.site),
                esc(&g.version),
                g.applied_revision,
            )
        })
        .collect();
    layout(
        Some(s),
        "Fleet",
        "/console/fleet",
        &table(
            &[
                "Gateway",
                "Site",
                "Version",
                "State",
                "Bundle",
                "Last report",
                "Health",
            ],
            &rows,
        ),
    )
}

fn range_form(
    action: &str,
    days: i64,
    site: Option<&str>,
    sites: &[String],
    extra: &str,
) -> String {
    let mut f = format!(
        "<form method=\"get\" action=\"{action}\" class=\"range\">{extra}<label>Range <select name=\"days\" id=\"days\">"
    );
    for d in [1, 7, 30, 90] {
        let sel = if d == days { " selected" } else { "" };
        let _ = write!(
            f,
            "<option value=\"{d}\"{sel}>last {d} day{}</option>",
            if d == 1 { "" } else { "s" }
        );
    }
    f.push_str("</select></label>");
    if !sites.is_empty() {
        f.push_str("<label>Site <select name=\"site\"><option value=\"\">all</option>");
        for s in sites {
            let sel = if Some(s.as_str()) == site {
                " selected"
            } else {
                ""
            };
            let _ = write!(f, "<option value=\"{}\"{sel}>{}</option>", attr(s), esc(s));
        }
        f.push_str("</select></label>");
    }
    f.push_str("<button>Show</button></form>");
    f
}

pub fn discovery(
    s: &Session,
    cat: Option<&Catalog>,
    apps: &[AppTotal],
    hours: &[(i64, i64, i64)],
    sites: &[String],
    days: i64,
    site: Option<&str>,
) -> String {
    let mut sorted: Vec<&AppTotal> = apps.iter().collect();
    // Riskiest first, then by traffic: what an admin looks at first.
    sorted.sort_by(|a, b| {
        let ra = cat.and_then(|c| c.risk_score(&a.app_id)).unwrap_or(5.0);
        let rb = cat.and_then(|c| c.risk_score(&b.app_id)).unwrap_or(5.0);
        ra.total_cmp(&rb)
            .then((b.bytes_up + b.bytes_down).cmp(&(a.bytes_up + a.bytes_down)))
    });
    let rq = range_q(days, site);
    let rows: Vec<String> = sorted
        .iter()
        .map(|a| {
            let app = cat.and_then(|c| c.app(&a.app_id));
            format!(
                "<tr><td><a href=\"/console/discovery/app?id={}&amp;{}\">{}</a></td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                q(&a.app_id),
                attr(&rq),
                esc(app.map_or(a.app_id.as_str(), |x| x.name.as_str())),
                esc(app.map_or("", |x| x.category.as_str())),
                risk(cat.and_then(|c| c.risk_score(&a.app_id))),
                bytes(a.bytes_up),
                bytes(a.bytes_down),
                a.users,
                a.flows,
                a.blocked_flows
            )
        })
        .collect();
    layout(
        Some(s),
        "Cloud Discovery",
        "/console/discovery",
        &format!(
            "{}{}<h2>Apps, riskiest first</h2>{}",
            range_form("/console/discovery", days, site, sites, ""),
            chart(hours, crate::db::now() - days * 86_400),
            table(
                &[
                    "App",
                    "Category",
                    "Risk",
                    "Upload",
                    "Download",
                    "Users",
                    "Transactions",
                    "Blocked"
                ],
                &rows
            )
        ),
    )
}

pub fn discovery_app(
    s: &Session,
    cat: Option<&Catalog>,
    id: &str,
    users: &[UseRow],
    hours: &[(i64, i64, i64)],
    days: i64,
    site: Option<&str>,
) -> String {
    let app = cat.and_then(|c| c.app(id));
    let rq = range_q(days, site);
    let rows: Vec<String> = users
        .iter()
        .map(|u| {
            format!(
                "<tr><td><a href=\"/console/discovery/user?name={}&amp;{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                q(&u.key),
                attr(&rq),
                esc(&u.key),
                bytes(u.bytes_up),
                bytes(u.bytes_down),
                u.flows
            )
        })
        .collect();
    layout(
        Some(s),
        app.map_or(id, |a| a.name.as_str()),
        "/console/discovery",
        &format!(
            "<p>{} · risk {} · <a href=\"/console/catalog/app?id={}\">in the catalog</a></p>{}{}<h2>Users</h2>{}",
            esc(app.map_or("", |a| a.category.as_str())),
            risk(cat.and_then(|c| c.risk_score(id))),
            q(id),
            range_form(
                "/console/discovery/app",
                days,
                site,
                &[],
                &format!("<input type=\"hidden\" name=\"id\" value=\"{}\">", attr(id))
            ),
            chart(hours, crate::db::now() - days * 86_400),
            table(
                &["User or device", "Upload", "Download", "Transactions"],
                &rows
            )
        ),
    )
}

pub fn discovery_user(
    s: &Session,
    cat: Option<&Catalog>,
    name: &str,
    apps: &[UseRow],
    days: i64,
    site: Option<&str>,
) -> String {
    let rq = range_q(days, site);
    let rows: Vec<String> = apps
        .iter()
        .map(|a| {
            let app = cat.and_then(|c| c.app(&a.key));
            format!(
                "<tr><td><a href=\"/console/discovery/app?id={}&amp;{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                q(&a.key),
                attr(&rq),
                esc(app.map_or(a.key.as_str(), |x| x.name.as_str())),
                risk(cat.and_then(|c| c.risk_score(&a.key))),
                bytes(a.bytes_up),
                bytes(a.bytes_down),
                a.flows
            )
        })
        .collect();
    layout(
        Some(s),
        name,
        "/console/discovery",
        &format!(
            "{}<h2>Apps</h2>{}",
            range_form(
                "/console/discovery/user",
                days,
                site,
                &[],
                &format!(
                    "<input type=\"hidden\" name=\"name\" value=\"{}\">",
                    attr(name)
                )
            ),
            table(
                &["App", "Risk", "Upload", "Download", "Transactions"],
                &rows
            )
        ),
    )
}

pub fn catalog(s: &Session, cat: Option<&Catalog>, text: &str) -> String {
    let results = match (cat, text.trim()) {
        (Some(c), t) if !t.is_empty() => tollgate_catalog::views::search(c, t),
        _ => Vec::new(),
    };
    let rows: Vec<String> = results
        .iter()
        .take(200)
        .map(|a| {
            format!(
                "<tr><td><a href=\"/console/catalog/app?id={}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                q(&a.id),
                esc(&a.name),
                esc(&a.category),
                risk(a.risk_score),
                esc(&a.domains.iter().take(3).cloned().collect::<Vec<_>>().join(", "))
            )
        })
        .collect();
    layout(
        Some(s),
        "Catalog",
        "/console/catalog",
        &format!(
            "<form method=\"get\" action=\"/console/catalog\" class=\"range\">\
             <label>Find an app <input name=\"q\" id=\"q\" value=\"{}\" placeholder=\"name, id or domain\"></label>\
             <button id=\"search\">Search</button></form>{}",
            attr(text),
            if text.trim().is_empty() {
                format!(
                    "<p>{} apps. Search by name, id or domain.</p>",
                    cat.map_or(0, Catalog::len)
                )
            } else {
                table(&["App", "Category", "Risk", "Domains"], &rows)
            }
        ),
    )
}

pub fn catalog_app(
    s: &Session,
    d: &tollgate_catalog::views::AppDetailView,
    tag: Option<&str>,
    published: Option<&str>,
) -> String {
    let mut body = String::new();
    if let Some(rev) = published {
        let _ = write!(
            body,
            "<p class=\"ok\" id=\"published\">Published as bundle revision {}: the gateways apply it at their next poll.</p>",
            esc(rev)
        );
    }
    let _ = write!(
        body,
        "<p>{} · risk {} · tag in the fleet's bundle: <b id=\"tag\">{}</b></p>",
        esc(&d.category),
        risk(d.risk_score),
        esc(tag.unwrap_or("none"))
    );
    if s.role == Role::Admin {
        body.push_str("<div class=\"actions\">");
        for (t, label) in [
            ("sanctioned", "Sanction"),
            ("unsanctioned", "Unsanction"),
            ("monitored", "Monitor"),
        ] {
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/console/catalog/tag\">{}\
                 <input type=\"hidden\" name=\"id\" value=\"{}\"><input type=\"hidden\" name=\"tag\" value=\"{t}\">\
                 <button id=\"tag-{t}\">{label}</button></form>",
                csrf(s),
                attr(&d.id)
            );
        }
        body.push_str("</div>");
    }
    let _ = write!(
        body,
        "<h2>Risk breakdown</h2><pre>{}</pre>",
        esc(&tollgate_catalog::views::render_detail(d))
    );
    layout(Some(s), &d.name, "/console/catalog", &body)
}

fn alert_row(a: &serde_json::Value) -> String {
    let s = |k: &str| a[k].as_str().unwrap_or("").to_string();
    let e = &a["entities"];
    let who = e["user"]
        .as_str()
        .or(e["ip"].as_str())
        .unwrap_or("")
        .to_string();
    format!(
        "<tr><td><a href=\"/console/alerts/show?ref={}\">{}</a></td><td>{}</td><td class=\"sev {}\">{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        q(&s("ref")),
        esc(&s("ref")),
        esc(&s("last_seen")),
        attr(&s("severity")),
        esc(&s("severity")),
        esc(&s("status")),
        esc(&s("policy")),
        esc(e["app"].as_str().unwrap_or("")),
        esc(&who),
        a["count"].as_u64().unwrap_or(0),
        esc(&s("reason"))
    )
}

pub fn alerts(s: &Session, all: &[serde_json::Value]) -> String {
    let open: Vec<String> = all
        .iter()
        .filter(|a| a["status"] == "open")
        .map(alert_row)
        .collect();
    let closed: Vec<String> = all
        .iter()
        .filter(|a| a["status"] != "open")
        .take(200)
        .map(alert_row)
        .collect();
    let head = [
        "Alert",
        "Last seen",
        "Severity",
        "Status",
        "Policy",
        "App",
        "Who",
        "Count",
        "Why",
    ];
    layout(
        Some(s),
        "Alerts",
        "/console/alerts",
        &format!(
            "<h2>Open</h2>{}<h2>Closed</h2>{}",
            table(&head, &open),
            table(&head, &closed)
        ),
    )
}

pub fn alert(s: &Session, a: &serde_json::Value) -> String {
    let st = |k: &str| a[k].as_str().unwrap_or("").to_string();
    let mut body = format!(
        "<dl><dt>Policy</dt><dd>{}</dd><dt>Severity</dt><dd>{}</dd><dt>Status</dt><dd id=\"status\">{}</dd>\
         <dt>Opened</dt><dd>{}</dd><dt>Last seen</dt><dd>{}</dd><dt>Count</dt><dd>{}</dd><dt>Why</dt><dd>{}</dd>\
         <dt>Entities</dt><dd>{}</dd><dt>Comment</dt><dd>{}</dd></dl>",
        esc(&st("policy")),
        esc(&st("severity")),
        esc(&st("status")),
        esc(&st("time")),
        esc(&st("last_seen")),
        a["count"].as_u64().unwrap_or(0),
        esc(&st("reason")),
        esc(&a["entities"].to_string()),
        esc(a["comment"].as_str().unwrap_or("")),
    );
    if s.role == Role::Admin {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/console/alerts/status\" class=\"actions\">{}\
             <input type=\"hidden\" name=\"ref\" value=\"{}\">\
             <label>Comment <input name=\"comment\" id=\"comment\"></label>\
             <button name=\"status\" value=\"resolved\" id=\"resolve\">Resolve</button>\
             <button name=\"status\" value=\"dismissed\" id=\"dismiss\">Dismiss</button></form>",
            csrf(s),
            attr(&st("ref"))
        );
    }
    let rows: Vec<String> = a["activities"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            let f = |k: &str| esc(x[k].as_str().unwrap_or("")).into_owned();
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                f("time"),
                f("activity"),
                f("app"),
                esc(x["user"].as_str().or(x["ip"].as_str()).unwrap_or("")),
                f("object"),
                x["bytes"].as_u64().map_or(String::new(), |b| bytes(b as i64)),
                f("result")
            )
        })
        .collect();
    let _ = write!(
        body,
        "<h2>The activities that prove it</h2>{}",
        table(
            &[
                "Time", "Activity", "App", "Who", "Object", "Bytes", "Result"
            ],
            &rows
        )
    );
    layout(
        Some(s),
        &format!("Alert {}", st("ref")),
        "/console/alerts",
        &body,
    )
}

pub fn policies(s: &Session, latest: Option<(i64, &str)>) -> String {
    let Some((revision, text)) = latest else {
        return layout(
            Some(s),
            "Policies",
            "/console/policies",
            "<p>No bundle for every site has been published yet.</p>",
        );
    };
    let table_of: toml::Table = text.parse().unwrap_or_default();
    let mut body = format!("<p>From bundle revision {revision} (every site).</p>");
    for (kind, title) in [
        ("activity_policies", "Activity policies"),
        ("app_discovery_policies", "App discovery policies"),
        ("session_policies", "Session policies"),
        ("access_policies", "Access policies"),
    ] {
        let list: Vec<&toml::Table> = table_of
            .get(kind)
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(toml::Value::as_table)
            .collect();
        let toggles = ["activity_policies", "app_discovery_policies"].contains(&kind);
        let rows: Vec<String> = list
            .iter()
            .map(|p| {
                let name = p.get("name").and_then(toml::Value::as_str).unwrap_or("");
                let enabled = p
                    .get("enabled")
                    .and_then(toml::Value::as_bool)
                    .unwrap_or(true);
                let action = if toggles && s.role == Role::Admin {
                    format!(
                        "<form method=\"post\" action=\"/console/policies/enabled\">{}\
                         <input type=\"hidden\" name=\"kind\" value=\"{kind}\">\
                         <input type=\"hidden\" name=\"name\" value=\"{}\">\
                         <input type=\"hidden\" name=\"enabled\" value=\"{}\">\
                         <button>{}</button></form>",
                        csrf(s),
                        attr(name),
                        !enabled,
                        if enabled { "Disable" } else { "Enable" }
                    )
                } else {
                    String::new()
                };
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>",
                    esc(name),
                    esc(p
                        .get("severity")
                        .and_then(toml::Value::as_str)
                        .unwrap_or("")),
                    if enabled { "enabled" } else { "disabled" }
                )
            })
            .collect();
        let _ = write!(
            body,
            "<h2>{title}</h2>{}",
            table(&["Name", "Severity", "State", ""], &rows)
        );
    }
    layout(Some(s), "Policies", "/console/policies", &body)
}

pub fn audit(s: &Session, rows: &[AuditView]) -> String {
    let rows: Vec<String> = rows
        .iter()
        .map(|a| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                when(a.at),
                esc(&a.source),
                esc(a.gateway_id.as_deref().unwrap_or("")),
                esc(&a.kind),
                esc(a.app_id.as_deref().unwrap_or("")),
                esc(&a.detail)
            )
        })
        .collect();
    layout(
        Some(s),
        "Audit",
        "/console/audit",
        &table(
            &["Time", "Source", "Gateway", "Kind", "App", "Detail"],
            &rows,
        ),
    )
}
