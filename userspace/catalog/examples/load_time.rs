//! Where the time to load the shipped catalog goes (release build):
//! `cargo run --release -p tollgate-catalog --example load_time`.

use std::time::Instant;

use tollgate_catalog::{BUILTIN_DATA, Catalog};

fn main() {
    let t = Instant::now();
    let v: serde_json::Value = serde_json::from_str(BUILTIN_DATA).unwrap_or_default();
    let parse = t.elapsed();
    let t = Instant::now();
    let cat = Catalog::builtin();
    let load = t.elapsed();
    println!(
        "{} bytes of JSON ({} apps): parse alone {:.1} ms; Catalog::builtin {:.1} ms",
        BUILTIN_DATA.len(),
        v["apps"].as_array().map_or(0, Vec::len),
        parse.as_secs_f64() * 1e3,
        load.as_secs_f64() * 1e3
    );
    if let Err(e) = cat {
        eprintln!("{e}");
    }
}
