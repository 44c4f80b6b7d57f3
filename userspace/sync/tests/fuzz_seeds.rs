//! Writes the seed corpora of the sync fuzz targets (`fuzz/corpus/<target>`): small valid
//! encodings made by the real code, so the fuzzer starts past the decoders' first checks.
//!
//! `cargo test -p tollgate-sync --test fuzz_seeds -- --ignored`

use std::fs;
use std::path::{Path, PathBuf};

use tollgate_sync::bundle::{BUNDLE_SCHEMA, Bundle, BundleSigner};
use tollgate_sync::protocol::{
    self, AppUsage, AuditEvent, BundleOutcome, BundleReport, DiscoveryInterval, DomainUsage,
    EnrollRequest, EnrollResponse, Health, PollRequest, PollResponse, RecordBody, UploadAck,
    UploadBatch, UploadRecord,
};
use tollgate_sync::spool::{Spool, SpoolConfig};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = fuzz_dir().join("corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn signer() -> BundleSigner {
    let path = fuzz_dir().join("bundle_key.pk8");
    match fs::read(&path) {
        Ok(pkcs8) => BundleSigner::from_pkcs8(&pkcs8).unwrap(),
        Err(_) => {
            let (signer, pkcs8) = BundleSigner::generate().unwrap();
            fs::write(&path, pkcs8).unwrap();
            signer
        }
    }
}

fn bundle(revision: u64, site: Option<&str>) -> Bundle {
    Bundle {
        schema: BUNDLE_SCHEMA,
        revision,
        site: site.map(str::to_string),
        published_at: 1_700_000_000,
        policy_toml: "[apps.dropbox]\ntag = \"unsanctioned\"\n".into(),
    }
}

fn records() -> Vec<UploadRecord> {
    vec![
        UploadRecord {
            seq: 1,
            recorded_at: 1_700_000_060,
            body: RecordBody::Discovery(DiscoveryInterval {
                start: 1_700_000_000,
                end: 1_700_000_060,
                apps: vec![AppUsage {
                    app_id: "dropbox".into(),
                    user: "alice".into(),
                    device: "10.0.0.5".into(),
                    bytes_up: 1200,
                    bytes_down: 56000,
                    flows: 3,
                    blocked_flows: 1,
                }],
                unknown_domains: vec![DomainUsage {
                    domain: "example.co.uk".into(),
                    bytes_up: 10,
                    bytes_down: 20,
                    flows: 1,
                }],
            }),
        },
        UploadRecord {
            seq: 2,
            recorded_at: 1_700_000_061,
            body: RecordBody::Audit(AuditEvent {
                kind: "bundle_applied".into(),
                app_id: None,
                detail: "revision 7".into(),
            }),
        },
    ]
}

#[test]
#[ignore = "writes the fuzz seed corpora; run by hand"]
fn write_fuzz_seeds() {
    let signer = signer();
    let signed = signer.sign(&bundle(7, Some("paris"))).unwrap();

    // protocol_decode: one valid encoding of each message.
    let health = Health {
        agent_version: "0.1.0".into(),
        hostname: "gw1".into(),
        uptime_secs: 3600,
        flows_active: 12,
        ring_drops: 0,
        spool_records: 4,
        spool_bytes: 900,
        spool_dropped: 0,
        last_error: Some("hub unreachable".into()),
    };
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "enroll_request",
            protocol::encode(&EnrollRequest {
                token_secret: "ab".repeat(32),
                csr_der: vec![0x30, 0x03, 0x02, 0x01, 0x00],
                hostname: "gw1".into(),
                agent_version: "0.1.0".into(),
            }),
        ),
        (
            "enroll_response",
            protocol::encode(&EnrollResponse {
                gateway_id: "gw-1".into(),
                site: "paris".into(),
                certificate_der: vec![0x30, 0x00],
                ca_der: vec![0x30, 0x00],
                bundle_key: signer.public_key(),
                hub_urls: vec!["https://hub.example:8443".into()],
            }),
        ),
        (
            "poll_request",
            protocol::encode(&PollRequest {
                applied_revision: 6,
                wait_secs: 30,
                health: health.clone(),
            }),
        ),
        (
            "poll_unchanged",
            protocol::encode(&PollResponse::Unchanged { latest_revision: 6 }),
        ),
        (
            "poll_bundle",
            protocol::encode(&PollResponse::Bundle(signed.clone())),
        ),
        ("health", protocol::encode(&health)),
        (
            "report_refused",
            protocol::encode(&BundleReport {
                revision: 7,
                outcome: BundleOutcome::Refused {
                    reason: "bad toml".into(),
                },
            }),
        ),
        (
            "upload_batch",
            protocol::encode(&UploadBatch { records: records() }),
        ),
        (
            "upload_ack",
            protocol::encode(&UploadAck {
                stored_through: 2,
                accepted: 2,
                duplicates: 0,
            }),
        ),
        ("signed_bundle", protocol::encode(&signed)),
    ];
    for (name, bytes) in &seeds {
        write_seed("protocol_decode", name, bytes);
    }

    // bundle_verify: mode, applied revision, site, postcard bytes.
    let with = |mode: u8, applied: u8, site: u8, body: &[u8]| {
        let mut v = vec![mode, applied, site];
        v.extend_from_slice(body);
        v
    };
    let signed_bytes = postcard::to_allocvec(&signed).unwrap();
    let all_sites = postcard::to_allocvec(&signer.sign(&bundle(9, None)).unwrap()).unwrap();
    let plain = postcard::to_allocvec(&bundle(3, Some("lyon"))).unwrap();
    write_seed(
        "bundle_verify",
        "valid_paris",
        &with(0, 6, 0, &signed_bytes),
    );
    write_seed("bundle_verify", "replayed", &with(0, 7, 0, &signed_bytes));
    write_seed("bundle_verify", "other_site", &with(0, 0, 1, &signed_bytes));
    write_seed("bundle_verify", "every_site", &with(0, 0, 1, &all_sites));
    write_seed("bundle_verify", "sign_here", &with(1, 2, 1, &plain));

    // spool_recover: segment files made by the spool itself, whole, torn and flipped.
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(SpoolConfig {
        dir: dir.path().to_path_buf(),
        max_bytes: 1 << 20,
        segment_bytes: 4096,
    })
    .unwrap();
    for r in records().into_iter().chain(records()) {
        spool.append(r.recorded_at, r.body).unwrap();
    }
    spool.sync().unwrap();
    drop(spool);
    let seg = fs::read(dir.path().join(format!("{:020}.seg", 1))).unwrap();
    write_seed("spool_recover", "four_records", &seg);
    write_seed("spool_recover", "torn_tail", &seg[..seg.len() - 7]);
    let mut flipped = seg.clone();
    flipped[30] ^= 0x04;
    write_seed("spool_recover", "flipped", &flipped);
    write_seed("spool_recover", "header_only", &seg[..8]);
}
