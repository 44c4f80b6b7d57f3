//! One self-contained HTML page: inline CSS, inline SVG charts drawn here (no script is
//! needed to see them; a few lines of inline JS only make tables sortable). No external
//! assets, so the file can be mailed or opened offline.
//!
//! Every chart is an `<svg class="chart" data-chart="NAME" data-items="N">` with one
//! `data-value` element per bar or slice, which is what the headless-browser test checks.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};

use super::{DiscoveryReport, human_bytes, risk_level};

/// Text from reports (names that came from the network among it) for HTML element content
/// and quoted attribute values.
fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    html_escape::encode_quoted_attribute(s)
}

fn risk_color(level: &str) -> &'static str {
    match level {
        "high" => "#d64545",
        "medium" => "#e8a33d",
        "low" => "#3f9c6d",
        _ => "#9aa5b1",
    }
}

const PALETTE: [&str; 10] = [
    "#3b6fd4", "#7b57c9", "#1f9bb5", "#e07b39", "#4caf7d", "#c9497a", "#8a8f2e", "#5a6b8c",
    "#b5651d", "#2e8b8b",
];

fn trunc(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// A horizontal bar chart. Each item: label, value, display text, colour.
fn hbars(name: &str, items: &[(String, u64, String, &str)]) -> String {
    let mut s = String::new();
    if items.is_empty() {
        let _ = write!(
            s,
            r#"<p class="empty" data-chart="{name}" data-items="0">No data.</p>"#
        );
        return s;
    }
    let row = 26;
    let label_w = 170.0;
    let bar_w = 300.0;
    let h = items.len() * row + 8;
    let max = items.iter().map(|i| i.1).max().unwrap_or(1).max(1) as f64;
    let _ = write!(
        s,
        r#"<svg class="chart" data-chart="{name}" data-items="{}" viewBox="0 0 580 {h}" width="100%" role="img" aria-label="{name}">"#,
        items.len()
    );
    for (i, (label, v, text, color)) in items.iter().enumerate() {
        let y = i * row + 4;
        let w = ((*v as f64) / max * bar_w).max(2.0);
        let _ = write!(
            s,
            r#"<text x="{:.0}" y="{}" class="lbl" text-anchor="end">{}</text><rect data-value="{v}" x="{:.0}" y="{}" width="{w:.1}" height="18" rx="3" fill="{color}"><title>{}: {}</title></rect><text x="{:.1}" y="{}" class="val">{}</text>"#,
            label_w - 8.0,
            y + 14,
            esc(&trunc(label, 24)),
            label_w,
            y,
            esc(label),
            esc(text),
            label_w + w + 6.0,
            y + 14,
            esc(text)
        );
    }
    s.push_str("</svg>");
    s
}

/// A donut with a legend.
fn donut(name: &str, items: &[(String, u64, &str)]) -> String {
    let total: u64 = items.iter().map(|i| i.1).sum();
    let mut s = String::new();
    if total == 0 {
        let _ = write!(
            s,
            r#"<p class="empty" data-chart="{name}" data-items="0">No data.</p>"#
        );
        return s;
    }
    let n = items.iter().filter(|i| i.1 > 0).count();
    let _ = write!(
        s,
        r#"<svg class="chart" data-chart="{name}" data-items="{n}" viewBox="0 0 400 180" width="440" style="max-width:100%" role="img" aria-label="{name}">"#
    );
    let (cx, cy, r) = (90.0f64, 90.0f64, 62.0f64);
    let circ = 2.0 * std::f64::consts::PI * r;
    let mut offset = 0.0;
    for (label, v, color) in items.iter().filter(|i| i.1 > 0) {
        let frac = *v as f64 / total as f64;
        let len = frac * circ;
        let _ = write!(
            s,
            r#"<circle data-value="{v}" cx="{cx}" cy="{cy}" r="{r}" fill="none" stroke="{color}" stroke-width="30" stroke-dasharray="{len:.2} {:.2}" stroke-dashoffset="{:.2}" transform="rotate(-90 {cx} {cy})"><title>{}: {v}</title></circle>"#,
            circ - len,
            -offset,
            esc(label)
        );
        offset += len;
    }
    let _ = write!(
        s,
        r#"<text x="{cx}" y="{}" class="big" text-anchor="middle">{total}</text>"#,
        cy + 8.0
    );
    for (i, (label, v, color)) in items.iter().enumerate() {
        let y = 40 + i * 26;
        let _ = write!(
            s,
            r#"<rect x="200" y="{}" width="14" height="14" rx="3" fill="{color}"/><text x="222" y="{}" class="lbl">{} — {v}</text>"#,
            y - 11,
            y,
            esc(label)
        );
    }
    s.push_str("</svg>");
    s
}

/// Columns over time.
fn columns(name: &str, items: &[(String, u64)]) -> String {
    let mut s = String::new();
    if items.is_empty() {
        let _ = write!(
            s,
            r#"<p class="empty" data-chart="{name}" data-items="0">No data.</p>"#
        );
        return s;
    }
    let w = 1160.0;
    let h = 170.0;
    let n = items.len() as f64;
    // Columns at most 36 units wide, so a few buckets do not become slabs.
    let bw = ((w - 60.0) / n).min(36.0);
    let max = items.iter().map(|i| i.1).max().unwrap_or(1).max(1) as f64;
    let _ = write!(
        s,
        r#"<svg class="chart" data-chart="{name}" data-items="{}" viewBox="0 0 {w} {}" width="100%" role="img" aria-label="{name}">"#,
        items.len(),
        h + 30.0
    );
    let _ = write!(
        s,
        r##"<line x1="50" y1="{h}" x2="{w}" y2="{h}" stroke="#c8cfd8"/>"##
    );
    let _ = write!(
        s,
        r#"<text x="44" y="14" class="axis" text-anchor="end">{}</text>"#,
        esc(&human_bytes(max as u64))
    );
    let label_every = ((n / 12.0).ceil() as usize).max(1);
    for (i, (label, v)) in items.iter().enumerate() {
        let bh = (*v as f64 / max * (h - 10.0)).max(if *v > 0 { 1.5 } else { 0.0 });
        let x = 55.0 + i as f64 * bw;
        let _ = write!(
            s,
            r##"<rect data-value="{v}" x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="#3b6fd4"><title>{}: {}</title></rect>"##,
            h - bh,
            (bw - 2.0).max(1.0),
            esc(label),
            esc(&human_bytes(*v))
        );
        if i % label_every == 0 && x < w - 70.0 {
            let _ = write!(
                s,
                r#"<text x="{x:.1}" y="{}" class="axis">{}</text>"#,
                h + 16.0,
                esc(label)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// Hourly buckets as a chart series: every hour when the data spans at most four days,
/// else every day when it spans at most 180 days, else only the days with traffic.
fn time_series(hourly: &[crate::aggregate::HourBucket]) -> (&'static str, Vec<(String, u64)>) {
    let (Some(first), Some(last)) = (hourly.first(), hourly.last()) else {
        return ("Traffic over time", Vec::new());
    };
    let bytes = |b: &crate::aggregate::HourBucket| b.bytes_up.saturating_add(b.bytes_down);
    let span_h = (last.hour - first.hour).num_hours();
    if span_h <= 96 {
        let mut out = Vec::new();
        let mut it = hourly.iter().peekable();
        let mut t = first.hour;
        while t <= last.hour {
            let v = match it.peek() {
                Some(b) if b.hour == t => it.next().map_or(0, bytes),
                _ => 0,
            };
            out.push((t.format("%m-%d %H:00").to_string(), v));
            t += chrono::Duration::hours(1);
        }
        return ("Traffic per hour", out);
    }
    let mut days: BTreeMap<chrono::NaiveDate, u64> = BTreeMap::new();
    for b in hourly {
        *days.entry(b.hour.date_naive()).or_default() += bytes(b);
    }
    let (Some(d0), Some(d1)) = (days.keys().next().copied(), days.keys().last().copied()) else {
        return ("Traffic per day", Vec::new());
    };
    if (d1 - d0).num_days() <= 180 {
        let out = d0
            .iter_days()
            .take_while(|d| *d <= d1)
            .map(|d| {
                (
                    d.format("%Y-%m-%d").to_string(),
                    days.get(&d).copied().unwrap_or(0),
                )
            })
            .collect();
        return ("Traffic per day", out);
    }
    (
        "Traffic per day (days with traffic)",
        days.into_iter()
            .map(|(d, v)| (d.format("%Y-%m-%d").to_string(), v))
            .collect(),
    )
}

const CSS: &str = r#"
:root{--bg:#f4f6f9;--card:#fff;--ink:#1d2733;--muted:#5f6b7a;--line:#e3e8ef}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);color:var(--ink)}
header{background:#1d2b45;color:#fff;padding:22px 32px}header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#b8c4d9}
main{padding:20px 32px;max-width:1400px;margin:auto}
.kpis{display:grid;grid-template-columns:repeat(6,1fr);gap:14px;margin-bottom:18px}
.kpi{background:var(--card);border-radius:10px;padding:14px 16px;box-shadow:0 1px 2px rgba(0,0,0,.06)}
.kpi b{display:block;font-size:24px}.kpi span{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.kpi.alert b{color:#d64545}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:18px;margin-bottom:18px}
.card{background:var(--card);border-radius:10px;padding:16px 18px;box-shadow:0 1px 2px rgba(0,0,0,.06);overflow:hidden}
.card.wide{grid-column:1/-1}.card h2{margin:0 0 10px;font-size:15px}
svg.chart text{font-size:12px;fill:var(--ink)}svg.chart .val,svg.chart .axis{fill:var(--muted);font-size:11px}svg.chart .big{font-size:26px;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{padding:6px 8px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{cursor:pointer;color:var(--muted);font-weight:600;user-select:none}td.n,th.n{text-align:right}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;color:#fff;font-size:11px;font-weight:600}
.newapps{display:flex;flex-wrap:wrap;gap:10px}.newapp{border:1px solid var(--line);border-radius:8px;padding:8px 12px;min-width:180px}
.newapp b{display:block}.newapp small{color:var(--muted)}
.err{color:#d64545}.empty{color:var(--muted)}footer{color:var(--muted);padding:10px 32px 30px;font-size:12px}
"#;

const JS: &str = r#"
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var body=t.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
      var asc=th.getAttribute('data-dir')!=='asc';th.setAttribute('data-dir',asc?'asc':'desc');
      rows.sort(function(a,b){
        var x=a.cells[i].getAttribute('data-v')||a.cells[i].textContent;
        var y=b.cells[i].getAttribute('data-v')||b.cells[i].textContent;
        var nx=parseFloat(x),ny=parseFloat(y);
        var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);
        return asc?c:-c;});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
"#;

pub(super) fn render(r: &DiscoveryReport, out: &mut dyn Write) -> io::Result<()> {
    let mut h = String::with_capacity(64 * 1024);
    let window = r
        .window
        .map(|w| {
            format!(
                "{} – {}",
                w.start.format("%Y-%m-%d %H:%M"),
                w.end.format("%Y-%m-%d %H:%M UTC")
            )
        })
        .unwrap_or_else(|| "no data".into());
    let _ = write!(
        h,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>Tollgate Cloud Discovery</title><style>{CSS}</style></head><body><header><h1>Cloud Discovery</h1><p>{} · {} input file(s) · generated {}</p></header><main>"#,
        esc(&window),
        r.inputs.len(),
        r.generated_at.format("%Y-%m-%d %H:%M UTC")
    );

    // KPI tiles.
    let high = r
        .apps
        .iter()
        .filter(|a| risk_level(a.risk_score) == "high")
        .count();
    let t = &r.totals;
    let kpis = [
        ("Apps discovered", r.apps.len().to_string(), false),
        ("High-risk apps", high.to_string(), high > 0),
        ("Users & devices", r.users.len().to_string(), false),
        (
            "Traffic",
            human_bytes(t.bytes_up.saturating_add(t.bytes_down)),
            false,
        ),
        ("Transactions", t.transactions.to_string(), false),
        (
            "Unknown domains",
            r.unknown_domains.len().to_string(),
            false,
        ),
    ];
    h.push_str(r#"<section class="kpis">"#);
    for (label, v, alert) in kpis {
        let _ = write!(
            h,
            r#"<div class="kpi{}"><b>{}</b><span>{}</span></div>"#,
            if alert { " alert" } else { "" },
            esc(&v),
            label
        );
    }
    h.push_str("</section>");

    // Apps by risk level, traffic by category.
    let mut levels: BTreeMap<&str, u64> = BTreeMap::new();
    for a in &r.apps {
        *levels.entry(risk_level(a.risk_score)).or_default() += 1;
    }
    let risk_items: Vec<(String, u64, &str)> = [
        ("high", "High risk (0–3.9)"),
        ("medium", "Medium (4–7.9)"),
        ("low", "Low risk (8–10)"),
        ("unknown", "Not scored"),
    ]
    .iter()
    .map(|(k, label)| {
        (
            (*label).to_owned(),
            levels.get(k).copied().unwrap_or(0),
            risk_color(k),
        )
    })
    .collect();
    let mut cats: BTreeMap<&str, u64> = BTreeMap::new();
    for a in &r.apps {
        let c = if a.category.is_empty() {
            "Uncategorised"
        } else {
            a.category.as_str()
        };
        *cats.entry(c).or_default() += a.bytes_up.saturating_add(a.bytes_down);
    }
    let mut cats: Vec<(&str, u64)> = cats.into_iter().collect();
    cats.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let cat_items: Vec<(String, u64, String, &str)> = cats
        .iter()
        .take(12)
        .enumerate()
        .map(|(i, (c, v))| {
            (
                (*c).to_owned(),
                *v,
                human_bytes(*v),
                PALETTE.get(i % PALETTE.len()).copied().unwrap_or("#3b6fd4"),
            )
        })
        .collect();
    let _ = write!(
        h,
        r#"<section class="grid"><div class="card"><h2>Apps by risk level</h2>{}</div><div class="card"><h2>Traffic by category</h2>{}</div>"#,
        donut("risk-levels", &risk_items),
        hbars("traffic-by-category", &cat_items)
    );

    // Top apps by traffic and by users.
    let top_traffic: Vec<(String, u64, String, &str)> = r
        .apps
        .iter()
        .take(12)
        .map(|a| {
            let b = a.bytes_up.saturating_add(a.bytes_down);
            (
                a.name.clone(),
                b,
                human_bytes(b),
                risk_color(risk_level(a.risk_score)),
            )
        })
        .collect();
    let mut by_users: Vec<&crate::aggregate::AppView> =
        r.apps.iter().filter(|a| a.users > 0 || a.ips > 0).collect();
    by_users.sort_by(|a, b| {
        b.users
            .cmp(&a.users)
            .then(b.ips.cmp(&a.ips))
            .then(a.name.cmp(&b.name))
    });
    let top_users_apps: Vec<(String, u64, String, &str)> = by_users
        .iter()
        .take(12)
        .map(|a| {
            let v = if a.users > 0 { a.users } else { a.ips };
            let text = if a.users > 0 {
                format!("{} users, {} IPs", a.users, a.ips)
            } else {
                format!("{} IPs", a.ips)
            };
            (
                a.name.clone(),
                v,
                text,
                risk_color(risk_level(a.risk_score)),
            )
        })
        .collect();
    let _ = write!(
        h,
        r#"<div class="card"><h2>Top apps by traffic</h2>{}</div><div class="card"><h2>Top apps by users</h2>{}</div>"#,
        hbars("top-apps-traffic", &top_traffic),
        hbars("top-apps-users", &top_users_apps)
    );

    // Top users, new apps.
    let top_users: Vec<(String, u64, String, &str)> = r
        .users
        .iter()
        .take(12)
        .map(|u| {
            let b = u.bytes_up.saturating_add(u.bytes_down);
            (
                u.user.clone(),
                b,
                format!("{} · {} apps", human_bytes(b), u.apps),
                "#7b57c9",
            )
        })
        .collect();
    let _ = write!(
        h,
        r#"<div class="card"><h2>Top users</h2>{}</div>"#,
        hbars("top-users", &top_users)
    );
    let _ = write!(
        h,
        r#"<div class="card"><h2>New apps <small class="empty">first seen after {}</small></h2><div class="newapps" data-chart="new-apps" data-items="{}">"#,
        esc(&r
            .new_since
            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_else(|| "-".into())),
        r.new_apps.len()
    );
    if r.new_apps.is_empty() {
        h.push_str(r#"<p class="empty">No new apps in this window.</p>"#);
    }
    const MAX_NEW: usize = 12;
    // Newest first, at most MAX_NEW cards.
    let mut new_apps: Vec<&crate::aggregate::AppView> = r
        .new_apps
        .iter()
        .filter_map(|id| r.apps.iter().find(|a| &a.id == id))
        .collect();
    new_apps.sort_by(|a, b| b.first_seen.cmp(&a.first_seen).then(a.name.cmp(&b.name)));
    for a in new_apps.iter().take(MAX_NEW) {
        {
            let lvl = risk_level(a.risk_score);
            let _ = write!(
                h,
                r#"<div class="newapp"><b>{}</b><small>{} · first seen {}</small><br><span class="badge" style="background:{}">{} {}</span> <small>{} · {} users</small></div>"#,
                esc(&a.name),
                esc(&a.category),
                a.first_seen.format("%Y-%m-%d %H:%M"),
                risk_color(lvl),
                lvl,
                a.risk_score.map(|s| format!("{s:.1}")).unwrap_or_default(),
                human_bytes(a.bytes_up.saturating_add(a.bytes_down)),
                a.users
            );
        }
    }
    if new_apps.len() > MAX_NEW {
        let _ = write!(
            h,
            r#"<p class="empty">… and {} more (see the table below).</p>"#,
            new_apps.len() - MAX_NEW
        );
    }
    h.push_str("</div></div>");

    // Traffic over time.
    let (title, series) = time_series(&r.hourly);
    let _ = write!(
        h,
        r#"<div class="card wide"><h2>{title}</h2>{}</div></section>"#,
        columns("traffic-over-time", &series)
    );

    // Apps table.
    h.push_str(r#"<section class="card wide"><h2>Discovered apps</h2><table class="sortable" id="apps"><thead><tr><th>App</th><th>Category</th><th class="n">Risk</th><th class="n">Confidence</th><th>Tag</th><th class="n">Traffic</th><th class="n">Up</th><th class="n">Down</th><th class="n">Transactions</th><th class="n">Users</th><th class="n">IPs</th><th>First seen</th><th>Last seen</th></tr></thead><tbody>"#);
    for a in &r.apps {
        let lvl = risk_level(a.risk_score);
        let b = a.bytes_up.saturating_add(a.bytes_down);
        let _ = write!(
            h,
            r#"<tr><td>{}</td><td>{}</td><td class="n" data-v="{}"><span class="badge" style="background:{}">{}</span></td><td class="n" data-v="{}">{}</td><td>{}</td><td class="n" data-v="{b}">{}</td><td class="n" data-v="{}">{}</td><td class="n" data-v="{}">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(&a.name),
            esc(&a.category),
            a.risk_score.unwrap_or(-1.0),
            risk_color(lvl),
            a.risk_score
                .map(|s| format!("{s:.1}"))
                .unwrap_or_else(|| "n/a".into()),
            a.confidence.unwrap_or(-1.0),
            a.confidence
                .map(|c| format!("{:.0}%", c * 100.0))
                .unwrap_or_else(|| "n/a".into()),
            esc(a.tag.as_deref().unwrap_or("—")),
            human_bytes(b),
            a.bytes_up,
            human_bytes(a.bytes_up),
            a.bytes_down,
            human_bytes(a.bytes_down),
            a.transactions,
            a.users,
            a.ips,
            a.first_seen.format("%Y-%m-%d %H:%M"),
            a.last_seen.format("%Y-%m-%d %H:%M")
        );
    }
    h.push_str("</tbody></table></section>");

    // Unknown domains and inputs.
    h.push_str(r#"<section class="grid" style="margin-top:18px"><div class="card"><h2>Top unknown domains</h2><table class="sortable"><thead><tr><th>Domain</th><th class="n">Transactions</th><th class="n">Traffic</th><th class="n">Users</th></tr></thead><tbody>"#);
    for d in r.unknown_domains.iter().take(25) {
        let b = d.bytes_up.saturating_add(d.bytes_down);
        let _ = write!(
            h,
            r#"<tr><td title="{}">{}</td><td class="n">{}</td><td class="n" data-v="{b}">{}</td><td class="n">{}</td></tr>"#,
            esc(&d.hosts.join(", ")),
            esc(&d.domain),
            d.transactions,
            human_bytes(b),
            d.users
        );
    }
    h.push_str(r#"</tbody></table></div><div class="card"><h2>Inputs</h2><table class="sortable"><thead><tr><th>File</th><th>Format</th><th class="n">Lines</th><th class="n">Parsed</th><th class="n">Unparsed</th></tr></thead><tbody>"#);
    for i in &r.inputs {
        let name = i.file.rsplit('/').next().unwrap_or(&i.file);
        let _ = write!(
            h,
            r#"<tr><td title="{}">{}</td><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            esc(&i.file),
            esc(name),
            esc(&i.format),
            i.lines,
            i.parsed,
            i.unparsed
        );
        if let Some(e) = &i.error {
            let _ = write!(h, r#"<tr><td colspan="5" class="err">{}</td></tr>"#, esc(e));
        }
    }
    h.push_str("</tbody></table></div></section></main>");
    let _ = write!(
        h,
        r#"<footer>Risk scores 0–10 (10 = most trustworthy) from the Tollgate catalog. {} transactions matched to apps, {} to unknown domains, {} without a name.</footer><script>{JS}</script></body></html>"#,
        t.matched_transactions, t.unknown_transactions, t.unnamed_transactions
    );
    out.write_all(h.as_bytes())
}
