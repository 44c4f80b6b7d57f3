//! Catalog data as a synced bundle or a file would bring it (`Catalog::from_data`): any input
//! is either refused with an error or loads into a catalog whose every app can be scored,
//! shown and matched; scores stay within 0–10 and confidences within 0–1.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_catalog::{Catalog, CatalogConfig, views};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cat) = Catalog::from_data(text, &CatalogConfig::default(), &[], chrono::DateTime::UNIX_EPOCH) else {
        return;
    };
    for app in cat.apps().take(64) {
        let s = cat.risk_score(&app.id);
        assert!(s.is_none_or(|s| (0.0..=10.0).contains(&s)), "{s:?}");
        let c = cat.risk_confidence(&app.id).unwrap_or(0.0);
        assert!((0.0..=1.0).contains(&c), "{c}");
        let v = views::show(&cat, &app.id).expect("a listed app can be shown");
        let _ = views::render_detail(&v);
        for rule in app.domains.iter().take(8) {
            let name = rule.strip_prefix("*.").map_or_else(|| rule.clone(), |h| format!("x.{h}"));
            let m = cat.classify_name(&name).expect("a rule matches its own name");
            assert_eq!(m.app.id, app.id);
        }
    }
    let _ = views::render_histogram(&views::histogram(&cat));
});
