//! Signed bundles as a gateway receives them, checked with a fixed hub key.
//!
//! Input: a mode byte, the applied revision (one byte), a site selector, then postcard bytes.
//! Even mode: the bytes are a `SignedBundle` as sent (forgeries, truncations). Odd mode: the
//! bytes are a `Bundle`, signed here with the fixed key, so the checks after the signature
//! (schema, revision, site) see arbitrary bundles too (arbitrary body bytes after a good
//! signature are the `Bundle` decode that `protocol_decode` covers).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tollgate_sync::bundle::{BUNDLE_SCHEMA, Bundle, BundleError, BundleSigner, SignedBundle};

/// The fixed key, also used by the seed generator (`tests/fuzz_seeds.rs`).
const KEY_PKCS8: &[u8] = include_bytes!("../bundle_key.pk8");

fn signer() -> &'static BundleSigner {
    static SIGNER: OnceLock<BundleSigner> = OnceLock::new();
    SIGNER.get_or_init(|| BundleSigner::from_pkcs8(KEY_PKCS8).expect("fixed key loads"))
}

fuzz_target!(|data: &[u8]| {
    let [mode, applied, site, rest @ ..] = data else {
        return;
    };
    let applied = u64::from(*applied);
    let site = if site % 2 == 0 { "paris" } else { "lyon" };
    let key = signer().public_key();
    let signed = if mode % 2 == 0 {
        match postcard::from_bytes::<SignedBundle>(rest) {
            Ok(s) => s,
            Err(_) => return,
        }
    } else {
        let Ok(bundle) = postcard::from_bytes::<Bundle>(rest) else {
            return;
        };
        match signer().sign(&bundle) {
            Ok(s) => s,
            Err(_) => return,
        }
    };
    match signed.verify(&key, applied, site) {
        Ok(bundle) => {
            assert_eq!(bundle.schema, BUNDLE_SCHEMA);
            assert!(bundle.revision > applied);
            assert!(bundle.site.as_deref().is_none_or(|s| s == site));
        }
        Err(BundleError::BadSignature) => assert!(mode % 2 == 0, "own signature refused"),
        Err(_) => {}
    }
});
