//! The spool's crash recovery on arbitrary segment contents: the input is written as the
//! spool's only segment file, then open, peek, append, reopen, peek. Never a panic; every
//! record returned was a frame with a good CRC somewhere in the input (or the one appended
//! here), sequence numbers strictly increase, and the reopened spool returns exactly the same
//! records plus the appended one.
#![no_main]

use std::collections::HashSet;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use tollgate_sync::protocol::{AuditEvent, RecordBody, UploadRecord};
use tollgate_sync::spool::{FRAME_HEADER_BYTES, Spool, SpoolConfig};

fn config(dir: PathBuf) -> SpoolConfig {
    SpoolConfig {
        dir,
        max_bytes: 1 << 20,
        segment_bytes: 4096,
    }
}

/// Every record the input holds as a frame with a good CRC, at any offset (an independent
/// reading of the format: `len u32 LE, crc32(len bytes || payload) u32 LE, payload`).
fn framed_records(data: &[u8]) -> HashSet<Vec<u8>> {
    let mut out = HashSet::new();
    for pos in 0..data.len() {
        let Some(header) = data.get(pos..pos + FRAME_HEADER_BYTES) else {
            break;
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let start = pos + FRAME_HEADER_BYTES;
        let Some(payload) = data.get(start..start.saturating_add(len)) else {
            continue;
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&header[..4]);
        h.update(payload);
        if h.finalize() == crc
            && let Ok(record) = postcard::from_bytes::<UploadRecord>(payload)
        {
            out.insert(postcard::to_allocvec(&record).expect("encodes"));
        }
    }
    out
}

fn check_increasing(records: &[UploadRecord]) {
    assert!(
        records.windows(2).all(|w| w[1].seq > w[0].seq),
        "seqs increase"
    );
    assert!(records.iter().all(|r| r.seq >= 1));
}

fuzz_target!(|data: &[u8]| {
    // tmpfs where there is one: the spool fsyncs, and a disk would make this 100 runs/s.
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("tollgate-spool-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::write(dir.join(format!("{:020}.seg", 1)), data).expect("write segment");

    let Ok(mut spool) = Spool::open(config(dir.clone())) else {
        return;
    };
    let first = spool.peek(usize::MAX, usize::MAX).expect("peek");
    check_increasing(&first);
    let framed = framed_records(data);
    for r in &first {
        let bytes = postcard::to_allocvec(r).expect("encodes");
        assert!(
            framed.contains(&bytes),
            "record {} was not a good frame",
            r.seq
        );
    }
    assert_eq!(spool.stats().records, first.len() as u64);
    let next = spool.stats().next_seq;
    assert!(first.last().is_none_or(|r| r.seq < next));
    let body = RecordBody::Audit(AuditEvent {
        kind: "fuzz".into(),
        app_id: None,
        detail: "appended after recovery".into(),
    });
    let Ok(seq) = spool.append(7, body.clone()) else {
        // Only a record numbered u64::MAX leaves no number to give.
        assert_eq!(next, u64::MAX);
        return;
    };
    assert_eq!(seq, next);
    spool.sync().expect("sync");
    drop(spool);

    let mut spool = Spool::open(config(dir.clone())).expect("reopen a recovered spool");
    let second = spool.peek(usize::MAX, usize::MAX).expect("peek");
    check_increasing(&second);
    let mut want = first;
    want.push(UploadRecord {
        seq,
        recorded_at: 7,
        body,
    });
    assert_eq!(second, want);
    assert_eq!(spool.stats().corrupt_records_skipped, 0);
    assert_eq!(spool.stats().torn_bytes_discarded, 0);
});
