//! Tollgate's binary: parses the command line, loads and validates the config, and wires the
//! library crates together. Logic lives in the libraries.
fn main() {}
