//! `discover --flows` on a log larger than one in-memory run of the flow list: the rows go
//! through spill files and come back complete and in input order, on one thread or several.

use std::io::Write;

use tollgate_catalog::Catalog;
use tollgate_discovery::aggregate::SPILL_ROWS;
use tollgate_discovery::report::{ReportFormat, render};
use tollgate_discovery::users::Users;
use tollgate_logs::discover::{DiscoverOptions, discover};

#[test]
fn a_log_longer_than_a_run_spills_and_reads_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let lines = SPILL_ROWS * 2 + 1000;
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for i in 0..lines {
            // Squid native; the byte count (column 5) numbers the lines.
            writeln!(
                w,
                "{}.000 10 10.0.{}.{} TCP_MISS/200 {i} CONNECT h{i}.example.com:443 - DIRECT/192.0.2.1 -",
                1_700_000_000 + i / 100,
                (i / 250) % 250,
                i % 250 + 1,
            )
            .unwrap();
        }
    }
    let catalog = Catalog::builtin(chrono::Utc::now()).expect("catalog");
    for threads in [1, 2] {
        let opts = DiscoverOptions {
            include_flows: true,
            threads,
            ..DiscoverOptions::default()
        };
        let report = discover(
            std::slice::from_ref(&path),
            &opts,
            &catalog,
            &Users::default(),
        );
        assert_eq!(report.totals.transactions, lines as u64);
        let flows = report.flows.as_ref().expect("flows");
        assert_eq!(flows.len(), lines as u64);
        assert!(flows.spill_error().is_none(), "{:?}", flows.spill_error());
        assert!(
            flows.spilled() >= SPILL_ROWS as u64,
            "threads={threads}: nothing spilled"
        );
        for (i, row) in flows.iter().enumerate() {
            let row = row.expect("row reads back");
            assert_eq!(
                row.name.as_deref(),
                Some(format!("h{i}.example.com").as_str())
            );
        }
        let mut csv = Vec::new();
        render(&report, ReportFormat::Csv, &mut csv).unwrap();
        assert_eq!(csv.iter().filter(|&&b| b == b'\n').count(), lines + 1);
    }
}
