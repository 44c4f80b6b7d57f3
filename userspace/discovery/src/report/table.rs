//! Plain-text tables for a terminal.

use std::io::{self, Write};

use super::{DiscoveryReport, human_bytes, risk_level};

/// `s` safe for a terminal and at most `n` characters: names, users and bad log lines come
/// from the network, so control characters (and bidi overrides) are written as escapes
/// (`\x1b`), and a longer text is cut on a character boundary, ending in `…`.
fn cut(s: &str, n: usize) -> String {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    let escaped;
    let s = if s.chars().any(unsafe_char) {
        escaped = s
            .chars()
            .map(|c| match c {
                c if unsafe_char(c) && u32::from(c) < 0x100 => format!("\\x{:02x}", u32::from(c)),
                c if unsafe_char(c) => format!("\\u{{{:x}}}", u32::from(c)),
                c => c.to_string(),
            })
            .collect::<String>();
        escaped.as_str()
    } else {
        s
    };
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
            writeln!(out, "  error: {}", cut(e, 400))?;
        }
        for b in &i.bad_lines {
            writeln!(
                out,
                "  {}:{}: {}: {}",
                cut(&i.file, 200),
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
        "{:<24} {:<26} {:>5} {:>5} {:<7} {:<12} {:>10} {:>10} {:>8} {:>5} {:>5}",
        "app", "category", "risk", "conf", "level", "tag", "up", "down", "tx", "users", "ips"
    )?;
    for a in &r.apps {
        writeln!(
            out,
            "{:<24} {:<26} {:>5} {:>5} {:<7} {:<12} {:>10} {:>10} {:>8} {:>5} {:>5}",
            cut(&a.name, 24),
            cut(&a.category, 26),
            a.risk_score
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}")),
            a.confidence
                .map_or_else(|| "-".to_owned(), |c| format!("{:.0}%", c * 100.0)),
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

#[cfg(test)]
mod tests {
    #[test]
    fn cells_are_escaped_and_cut_on_char_boundaries() {
        assert_eq!(super::cut("a\u{1b}[2Jb", 40), "a\\x1b[2Jb");
        assert_eq!(super::cut("\u{202e}x", 40), "\\u{202e}x");
        assert_eq!(super::cut("ééééé", 3), "éé…");
        assert_eq!(super::cut("plain.example", 40), "plain.example");
    }
}
