//! Run offline discovery over files with the built-in catalog, as `tollgate discover` will:
//! `cargo run -p tollgate-logs --example discover -- [--format table|json|csv|html] [--flows] FILE...`
//! Example binaries may panic on bad arguments: they are developer tools.

use std::io::Write;
use std::path::PathBuf;

use tollgate_catalog::Catalog;
use tollgate_discovery::report::{ReportFormat, render};
use tollgate_discovery::users::Users;
use tollgate_logs::discover::{DiscoverOptions, discover};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut opts = DiscoverOptions::default();
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--format" => {
                opts.format = args
                    .next()
                    .ok_or("--format needs a value")?
                    .parse::<ReportFormat>()?
            }
            "--flows" => opts.include_flows = true,
            "--log-format" => opts.logs.force_format = args.next(),
            _ => files.push(PathBuf::from(a)),
        }
    }
    let catalog = Catalog::builtin(chrono::Utc::now())?;
    let report = discover(&files, &opts, &catalog, &Users::default());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    render(&report, opts.format, &mut out)?;
    out.flush()?;
    for f in report.failed_inputs() {
        eprintln!("error: {}", f.error.as_deref().unwrap_or(""));
    }
    Ok(())
}
