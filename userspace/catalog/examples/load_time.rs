//! Time and memory to load the shipped catalog (release build):
//! `cargo run --release -p tollgate-catalog --example load_time [-- other-catalog.json]`
//! (with a file: that data through `Catalog::from_data`, e.g. an older catalog.json to
//! compare). Peak memory: run the built example under `/usr/bin/time -f %M`.

use std::time::Instant;

use tollgate_catalog::{BUILTIN_DATA, Catalog, CatalogConfig};

fn main() {
    let other = std::env::args().nth(1).map(std::fs::read_to_string);
    let t = Instant::now();
    let (bytes, cat) = match &other {
        Some(Ok(json)) => (
            json.len(),
            Catalog::from_data(json, &CatalogConfig::default(), &[], chrono::Utc::now()),
        ),
        Some(Err(e)) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
        None => (BUILTIN_DATA.len(), Catalog::builtin(chrono::Utc::now())),
    };
    let load = t.elapsed();
    match cat {
        Ok(c) => println!(
            "{bytes} bytes of JSON: {} apps, {} rules loaded in {:.1} ms",
            c.len(),
            c.domain_rule_count(),
            load.as_secs_f64() * 1e3
        ),
        Err(e) => eprintln!("{e}"),
    }
}
