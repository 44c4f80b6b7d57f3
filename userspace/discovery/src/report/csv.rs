//! CSV: one row per app, or one row per flow when the report carries flows.

use std::io::{self, Write};

use super::{DiscoveryReport, risk_level};

/// A text field: neutralised against formula injection, then quoted when it needs it
/// (RFC 4180). Names, users and log fields come from the network; a spreadsheet would run a
/// cell that starts with `=`, `+`, `-` or `@` (or a tab or CR, which some strip first) as a
/// formula, so such a cell gets a leading `'` (OWASP's advice), which spreadsheets show as
/// text and do not display.
fn q(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        std::borrow::Cow::Owned(format!("'{s}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.into_owned()
    }
}

pub(super) fn render(r: &DiscoveryReport, out: &mut dyn Write) -> io::Result<()> {
    if let Some(flows) = &r.flows {
        writeln!(
            out,
            "first_seen,last_seen,proto,src,sport,dst,dport,name,user,device,app,matched_by,rule,bytes_up,bytes_down"
        )?;
        for f in flows.iter() {
            let f = f?;
            let proto = match f.proto {
                crate::record::L4Proto::Tcp => "tcp",
                crate::record::L4Proto::Udp => "udp",
            };
            writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                f.first_seen.to_rfc3339(),
                f.last_seen.to_rfc3339(),
                proto,
                f.src,
                f.sport,
                f.dst,
                f.dport,
                q(f.name.as_deref().unwrap_or("")),
                q(f.user.as_deref().unwrap_or("")),
                q(f.device.as_deref().unwrap_or("")),
                q(f.app.as_deref().unwrap_or("")),
                q(f.matched_by.as_deref().unwrap_or("")),
                q(f.rule.as_deref().unwrap_or("")),
                f.bytes_up,
                f.bytes_down
            )?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "id,name,category,risk_score,risk_level,confidence,tag,bytes_up,bytes_down,transactions,users,ips,first_seen,last_seen"
    )?;
    for a in &r.apps {
        writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            q(&a.id),
            q(&a.name),
            q(&a.category),
            a.risk_score.map(|s| format!("{s:.1}")).unwrap_or_default(),
            risk_level(a.risk_score),
            a.confidence.map(|c| format!("{c:.2}")).unwrap_or_default(),
            q(a.tag.as_deref().unwrap_or("")),
            a.bytes_up,
            a.bytes_down,
            a.transactions,
            a.users,
            a.ips,
            a.first_seen.to_rfc3339(),
            a.last_seen.to_rfc3339()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::q;

    #[test]
    fn formula_cells_are_neutralised() {
        assert_eq!(
            q("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        assert_eq!(q("+1+cmd|' /C calc'!A0"), "'+1+cmd|' /C calc'!A0");
        assert_eq!(q("-2+3"), "'-2+3");
        assert_eq!(q("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(q("\t=1"), "'\t=1");
        assert_eq!(q("\r=1"), "\"'\r=1\"");
        assert_eq!(q("www.example.com"), "www.example.com");
        assert_eq!(q("a-b=c"), "a-b=c", "only the first character matters");
        assert_eq!(q(""), "");
    }
}
