//! Multipart bodies, Content-Disposition file names, URL file names, host and path
//! normalisation: never a panic, bounded output, and normalisation is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_proxy::policy;

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let blen = usize::from(k & 0x3f).min(rest.len());
    let (boundary, body) = rest.split_at(blen);
    let boundary = String::from_utf8_lossy(boundary);
    for complete in [true, false] {
        if let Ok((names, types)) = policy::multipart_parts(body, &boundary, complete) {
            assert!(types.len() <= policy::MAX_PARTS * 8);
            for n in &names {
                let _ = policy::extension(n);
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    for n in policy::disposition_filenames(&text) {
        let _ = policy::extension(&n);
    }
    let _ = policy::multipart_boundary(&text);
    let _ = policy::header_params(&text);
    for n in policy::url_filenames(&text) {
        let _ = policy::extension(&n);
    }
    let p = policy::normalize_path(&text);
    assert!(p.starts_with('/'));
    assert_eq!(
        policy::normalize_path(&p),
        p,
        "normalize_path is not idempotent"
    );
    let h = policy::normalize_host(&text);
    assert!(!h.ends_with('.') || h.is_empty() || h.trim_end_matches('.').is_empty());
});
