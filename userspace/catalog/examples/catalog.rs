//! What `tollgate catalog` prints, without the daemon:
//!
//! ```text
//! cargo run -p tollgate-catalog --example catalog -- list [--json]
//! cargo run -p tollgate-catalog --example catalog -- show dropbox [--json]
//! cargo run -p tollgate-catalog --example catalog -- search drive [--json]
//! cargo run -p tollgate-catalog --example catalog -- classify www.dropbox.com
//! cargo run -p tollgate-catalog --example catalog -- histogram
//! ```

use std::io::Write as _;
use std::process::ExitCode;

use tollgate_catalog::{Catalog, views};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let words: Vec<&str> = args
        .iter()
        .filter(|a| *a != "--json")
        .map(String::as_str)
        .collect();
    let cat = match Catalog::builtin(chrono::Utc::now()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("catalog: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = match words.as_slice() {
        ["list"] => {
            let v = views::list(&cat);
            if json {
                serde_json::to_string_pretty(&v).unwrap_or_default()
            } else {
                views::render_table(&v)
            }
        }
        ["search", text] => {
            let v = views::search(&cat, text);
            if json {
                serde_json::to_string_pretty(&v).unwrap_or_default()
            } else {
                views::render_table(&v)
            }
        }
        ["show", id] => match views::show(&cat, id) {
            Some(v) if json => serde_json::to_string_pretty(&v).unwrap_or_default(),
            Some(v) => views::render_detail(&v),
            None => {
                eprintln!("no app `{id}` (try: search)");
                return ExitCode::FAILURE;
            }
        },
        ["histogram"] => views::render_histogram(&views::histogram(&cat)),
        ["classify", name] => match cat.classify_name(name) {
            Some(m) => format!(
                "{} ({}) via {} rule {}",
                m.app.name,
                m.app.id,
                m.kind.as_str(),
                m.rule
            ),
            None => format!("{name}: no app"),
        },
        _ => {
            eprintln!("usage: catalog list|show ID|search TEXT|classify NAME|histogram [--json]");
            return ExitCode::from(64);
        }
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = writeln!(std::io::stdout().lock(), "{}", out.trim_end());
    ExitCode::SUCCESS
}
