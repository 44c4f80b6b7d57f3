//! Where the tests and benches of this crate find the shared nDPI captures.

use std::path::{Path, PathBuf};

/// `<corpus>/ndpi/pcap`, where `<corpus>` is `$TOLLGATE_CORPUS` or `../shared/corpus` beside
/// the repository; `None` when it is not there (the callers skip with a message).
pub fn ndpi_pcap_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("TOLLGATE_CORPUS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
    };
    let d = base.join("ndpi/pcap");
    d.is_dir().then_some(d)
}
