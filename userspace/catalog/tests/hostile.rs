//! A hostile or careless catalog file (a synced bundle, `Catalog::from_data`) or custom app:
//! each abuse is refused with an error that names the app and the key, never a panic, and
//! before it can take the memory or the traffic it aims at.

use tollgate_catalog::{
    Catalog, CatalogConfig, CatalogError, CustomApp, MAX_DATA_BYTES, MAX_DOMAIN_RULES,
};

fn data(apps: &str) -> String {
    format!("{{\"apps\":[{apps}]}}")
}

fn load(json: &str) -> Result<Catalog, CatalogError> {
    Catalog::from_data(json, &CatalogConfig::default(), &[], chrono::Utc::now())
}

fn app(id: &str, name: &str, domains: &str) -> String {
    format!(
        "{{\"id\":\"{id}\",\"name\":{name},\"category\":\"Cloud storage\",\"domains\":[{domains}],\"sources\":{{\"app\":\"x\"}}}}"
    )
}

#[test]
fn a_rule_on_a_registry_suffix_is_refused() {
    // `*.co.uk` would make every British site this app: a "sanctioned" app that swallows
    // traffic, or an unsanctioned one that blocks a country.
    for rule in ["*.co.uk", "co.uk", "*.ac.uk", "*.com.cn", "*.gov.au"] {
        let e = load(&data(&app("evil", "\"Evil\"", &format!("\"{rule}\"")))).expect_err(rule);
        assert!(
            matches!(&e, CatalogError::BadDomain { id, reason, .. }
                if id == "evil" && reason.contains("public suffix")),
            "{rule}: {e}"
        );
    }
    // The same app on its own domain loads.
    let cat = load(&data(&app(
        "fine",
        "\"Fine\"",
        "\"fine.co.uk\",\"*.fine.co.uk\"",
    )))
    .expect("a site below a suffix is fine");
    assert!(cat.classify_name("www.bbc.co.uk").is_none());
}

#[test]
fn an_ip_range_over_everything_is_refused() {
    for (range, widest) in [
        ("0.0.0.0/0", 8),
        ("10.0.0.0/7", 8),
        ("::/0", 16),
        ("2000::/3", 16),
    ] {
        let custom = CustomApp {
            id: "catch-all".into(),
            name: "Catch all".into(),
            vendor: None,
            category: "CRM".into(),
            domains: Vec::new(),
            ip_ranges: vec![range.into()],
            attributes: Default::default(),
            risk_score: None,
            risk_note: None,
        };
        let e = Catalog::from_config(&CatalogConfig::default(), &[custom], chrono::Utc::now())
            .expect_err(range);
        assert!(
            matches!(&e, CatalogError::IpRangeTooWide { id, widest: w, .. } if id == "catch-all" && *w == widest),
            "{range}: {e}"
        );
    }
}

#[test]
fn terminal_escapes_in_names_are_refused() {
    // `catalog show` prints the name: ESC [2J would clear the admin's screen, and worse
    // sequences can retitle the window or fake the output that follows.
    for name in ["\"Dropbox\\u001b[2J\"", "\"a\\nb\"", "\"x\\u0007\""] {
        let e = load(&data(&app("esc", name, "\"esc.example\""))).expect_err(name);
        assert!(
            matches!(&e, CatalogError::BadText { id, key, .. } if id == "esc" && *key == "name"),
            "{name}: {e}"
        );
    }
    let long = format!("\"{}\"", "n".repeat(201));
    assert!(matches!(
        load(&data(&app("long", &long, "\"long.example\""))),
        Err(CatalogError::BadText { .. })
    ));
}

#[test]
fn oversized_data_is_refused_before_parsing() {
    let big = " ".repeat(MAX_DATA_BYTES + 1);
    assert!(matches!(
        load(&big),
        Err(CatalogError::TooLarge { what: "bytes", .. })
    ));
    // Many rules in a small file (each `"a.b"` is a few bytes).
    let rules: Vec<String> = (0..=MAX_DOMAIN_RULES)
        .map(|i| format!("\"r{i}.example\""))
        .collect();
    let json = data(&app("many", "\"Many\"", &rules.join(",")));
    assert!(json.len() < MAX_DATA_BYTES);
    assert!(matches!(
        load(&json),
        Err(CatalogError::TooLarge {
            what: "domain rules",
            ..
        })
    ));
}

#[test]
fn malformed_data_is_an_error_not_a_panic() {
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for json in [
        "",
        "{",
        "{\"apps\":",
        "{\"apps\":[{\"id\":\"a\"}]}",
        "{\"apps\":[{\"id\":\"a\",\"name\":\"A\",\"category\":\"CRM\",\"domains\":[],\"sources\":{},\"colour\":1}]}",
        nested.as_str(),
        "{\"apps\":[{\"id\":\"a\",\"name\":\"A\",\"category\":\"CRM\",\"domains\":[],\"attributes\":{\"popularity\":255},\"sources\":{}}]}",
        "{\"apps\":[{\"id\":\"a\",\"name\":\"A\",\"category\":\"CRM\",\"domains\":[],\"attributes\":{\"founded\":65535},\"sources\":{}}]}",
        "{\"apps\":[{\"id\":\"a\",\"name\":\"A\",\"category\":\"CRM\",\"domains\":[],\"attributes\":{\"hq_country\":\"U\\u0000\"},\"sources\":{}}]}",
        "{\"apps\":[{\"id\":\"A B\",\"name\":\"A\",\"category\":\"CRM\",\"domains\":[],\"sources\":{}}]}",
        "{\"apps\":[{\"id\":\"a\",\"name\":\"A\",\"category\":\"Malware\",\"domains\":[],\"sources\":{}}]}",
    ] {
        let r = std::panic::catch_unwind(|| load(json));
        assert!(matches!(r, Ok(Err(_))), "{:?}", &json[..json.len().min(80)]);
    }
}

/// A bundle cannot give a name two apps: the second claim is refused, naming both.
#[test]
fn a_second_claim_on_a_rule_is_refused() {
    let json = data(&format!(
        "{},{}",
        app("dropbox", "\"Dropbox\"", "\"dropbox.com\""),
        app("thief", "\"Thief\"", "\"DROPBOX.COM.\"")
    ));
    let e = load(&json).expect_err("duplicate");
    assert!(
        matches!(&e, CatalogError::DuplicateDomain { id, other, .. } if id == "thief" && other == "dropbox"),
        "{e}"
    );
}
