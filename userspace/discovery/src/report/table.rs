//! Plain-text tables for a terminal.

use std::io::{self, Write};

use super::{DiscoveryReport, human_bytes, risk_level};

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

pub(super) fn render(r: &DiscoveryReport, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "INPUTS")?;
    writeln!(
        out,
        "{:<44} {:<15} {:>10} {:>10} {:>9} {:>10}",
        "file", "format", "lines", "parsed", "unparsed", "records"
    )?;
    for i in &r.inputs {
        writeln!(
            out,
            "{:<44} {:<15} {:>10} {:>10} {:>9} {:>10}",
            cut(&i.file, 44),
            i.format,
            i.lines,
            i.parsed,
            i.unparsed,
            i.records
        )?;
        if let Some(e) = &i.error {
            writeln!(out, "  error: {e}")?;
        }
        for b in &i.bad_lines {
            writeln!(
                out,
                "  {}:{}: {}: {}",
                i.file,
                b.line,
                b.reason,
                cut(&b.text, 80)
            )?;
        }
    }
    if let Some(w) = &r.window {
        writeln!(
            out,
            "\nwindow {} .. {}",
            w.start.to_rfc3339(),
            w.end.to_rfc3339()
        )?;
    }
    let t = &r.totals;
    writeln!(
        out,
        "{} transactions, {} up, {} down; {} matched to {} apps, {} to unknown domains, {} unnamed",
        t.transactions,
        human_bytes(t.bytes_up),
        human_bytes(t.bytes_down),
        t.matched_transactions,
        r.apps.len(),
        t.unknown_transactions,
        t.unnamed_transactions
    )?;
    writeln!(out, "\nAPPS")?;
    writeln!(
        out,
        "{:<24} {:<26} {:>5} {:<7} {:<12} {:>10} {:>10} {:>8} {:>5} {:>5}",
        "app", "category", "risk", "level", "tag", "up", "down", "tx", "users", "ips"
    )?;
    for a in &r.apps {
        writeln!(
            out,
            "{:<24} {:<26} {:>5} {:<7} {:<12} {:>10} {:>10} {:>8} {:>5} {:>5}",
            cut(&a.name, 24),
            cut(&a.category, 26),
            a.risk_score
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}")),
            risk_level(a.risk_score),
            cut(a.tag.as_deref().unwrap_or("-"), 12),
            human_bytes(a.bytes_up),
            human_bytes(a.bytes_down),
            a.transactions,
            a.users,
            a.ips
        )?;
    }
    if !r.new_apps.is_empty() {
        writeln!(
            out,
            "\nNEW APPS (first seen after {})",
            r.new_since.map(|t| t.to_rfc3339()).unwrap_or_default()
        )?;
        writeln!(out, "  {}", r.new_apps.join(", "))?;
    }
    writeln!(out, "\nUSERS")?;
    writeln!(
        out,
        "{:<28} {:<7} {:>10} {:>10} {:>8} {:>5}  top apps",
        "user", "kind", "up", "down", "tx", "apps"
    )?;
    for u in r.users.iter().take(50) {
        writeln!(
            out,
            "{:<28} {:<7} {:>10} {:>10} {:>8} {:>5}  {}",
            cut(&u.user, 28),
            u.kind,
            human_bytes(u.bytes_up),
            human_bytes(u.bytes_down),
            u.transactions,
            u.apps,
            u.top_apps.join(", ")
        )?;
    }
    writeln!(out, "\nUNKNOWN DOMAINS (top 30)")?;
    writeln!(
        out,
        "{:<40} {:>8} {:>10} {:>10} {:>5}",
        "domain", "tx", "up", "down", "users"
    )?;
    for d in r.unknown_domains.iter().take(30) {
        writeln!(
            out,
            "{:<40} {:>8} {:>10} {:>10} {:>5}",
            cut(&d.domain, 40),
            d.transactions,
            human_bytes(d.bytes_up),
            human_bytes(d.bytes_down),
            d.users
        )?;
    }
    Ok(())
}
