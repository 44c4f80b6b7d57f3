//! Config handling: custom apps, weights, overrides, and the typed errors that name the app
//! and key at fault.

use tollgate_catalog::views;
use tollgate_catalog::{AppOverride, Catalog, CatalogConfig, CatalogError, CustomApp, MatchKind};

fn custom(toml_text: &str) -> Vec<CustomApp> {
    #[derive(serde::Deserialize)]
    struct Doc {
        custom_apps: Vec<CustomApp>,
    }
    toml::from_str::<Doc>(toml_text)
        .expect("test toml")
        .custom_apps
}

const ACME: &str = r#"
[[custom_apps]]
id = "acme-drive"
name = "Acme Drive"
category = "cloud storage"
domains = ["acme-drive.example", "*.acme-drive.example", "files.dropbox.com"]
ip_ranges = ["192.0.2.0/24", "2001:db8:ace::/48"]
[custom_apps.attributes]
hq_country = "DE"
mfa = true
"#;

#[test]
fn custom_app_is_added_and_matched() {
    let cat = Catalog::from_config(&CatalogConfig::default(), &custom(ACME), chrono::Utc::now())
        .expect("valid");
    let app = cat.app("acme-drive").expect("added");
    assert_eq!(app.category, "Cloud storage", "category is canonicalised");
    assert_eq!(app.sources.get("mfa").map(String::as_str), Some("config"));
    let m = cat.classify_name("eu.acme-drive.example").expect("match");
    assert_eq!(
        (m.app.id.as_str(), m.rule, m.kind),
        ("acme-drive", "*.acme-drive.example", MatchKind::Suffix)
    );
    // A custom rule takes over the same shipped rule; the rest of dropbox stays dropbox.
    assert_eq!(
        cat.classify_name("files.dropbox.com")
            .map(|m| m.app.id.as_str()),
        Some("acme-drive")
    );
    assert_eq!(
        cat.classify_name("www.dropbox.com")
            .map(|m| m.app.id.as_str()),
        Some("dropbox")
    );
    // IP fallback.
    let m = cat
        .classify_ip("192.0.2.99".parse().expect("ip"))
        .expect("ip match");
    assert_eq!(
        (m.app.id.as_str(), m.rule, m.kind),
        ("acme-drive", "192.0.2.0/24", MatchKind::Ip)
    );
    let m = cat.classify(
        Some("unknown.invalid"),
        Some("2001:db8:ace::5".parse().expect("ip")),
    );
    assert_eq!(m.map(|m| m.app.id.as_str()), Some("acme-drive"));
    assert!(cat.is_custom("acme-drive"));
    assert_eq!(
        cat.search("acme").first().map(|a| a.id.as_str()),
        Some("acme-drive")
    );
}

fn err(toml_text: &str) -> CatalogError {
    match Catalog::from_config(
        &CatalogConfig::default(),
        &custom(toml_text),
        chrono::Utc::now(),
    ) {
        Ok(_) => panic!("accepted: {toml_text}"),
        Err(e) => e,
    }
}

#[test]
fn validation_errors_name_app_and_key() {
    let e = err(
        "[[custom_apps]]\nid='a'\nname='A'\ncategory='Cloud storages'\ndomains=['a.example']\n",
    );
    assert!(
        matches!(&e, CatalogError::UnknownCategory { id, category } if id == "a" && category == "Cloud storages"),
        "{e}"
    );
    assert!(e.to_string().contains("app `a`"));

    let e = err("[[custom_apps]]\nid='a'\nname='A'\ncategory='CRM'\ndomains=['a.*.example']\n");
    assert!(
        matches!(&e, CatalogError::BadDomain { id, pattern, .. } if id == "a" && pattern == "a.*.example"),
        "{e}"
    );

    let e = err("[[custom_apps]]\nid='a'\nname='A'\ncategory='CRM'\ndomains=['*.com']\n");
    assert!(matches!(&e, CatalogError::BadDomain { .. }), "{e}");

    let e =
        err("[[custom_apps]]\nid='dropbox'\nname='Mine'\ncategory='CRM'\ndomains=['x.example']\n");
    assert!(
        matches!(&e, CatalogError::DuplicateId { id, builtin: true } if id == "dropbox"),
        "{e}"
    );

    let e = err(
        "[[custom_apps]]\nid='a'\nname='A'\ncategory='CRM'\ndomains=['x.example']\n\
         [[custom_apps]]\nid='a'\nname='B'\ncategory='CRM'\ndomains=['y.example']\n",
    );
    assert!(
        matches!(&e, CatalogError::DuplicateId { id, builtin: false } if id == "a"),
        "{e}"
    );

    let e = err(
        "[[custom_apps]]\nid='a'\nname='A'\ncategory='CRM'\ndomains=['x.example']\n\
         [[custom_apps]]\nid='b'\nname='B'\ncategory='CRM'\ndomains=['X.example.']\n",
    );
    assert!(
        matches!(&e, CatalogError::DuplicateDomain { id, other, .. } if id == "b" && other == "a"),
        "{e}"
    );

    let e = err("[[custom_apps]]\nid='Acme Drive'\nname='A'\ncategory='CRM'\ndomains=[]\n");
    assert!(matches!(&e, CatalogError::BadId { .. }), "{e}");

    let e = err("[[custom_apps]]\nid='a'\nname='A'\ncategory='CRM'\nip_ranges=['10.0.0.0/33']\n");
    assert!(
        matches!(&e, CatalogError::BadIpRange { id, range } if id == "a" && range == "10.0.0.0/33"),
        "{e}"
    );

    let e = err("[[custom_apps]]\nid='a'\nname='A'\ncategory='CRM'\nrisk_score=11.0\n");
    assert!(
        matches!(&e, CatalogError::ScoreOutOfRange { id, .. } if id == "a"),
        "{e}"
    );

    let e = err(
        "[[custom_apps]]\nid='a'\nname='A'\ncategory='CRM'\n[custom_apps.attributes]\nfounded=3000\n",
    );
    assert!(
        matches!(&e, CatalogError::BadAttribute { id, key: "founded", .. } if id == "a"),
        "{e}"
    );

    let e = err(
        "[[custom_apps]]\nid='a'\nname='A'\ncategory='CRM'\n[custom_apps.attributes]\nhq_country='Germany'\n",
    );
    assert!(
        matches!(
            &e,
            CatalogError::BadAttribute {
                key: "hq_country",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn overrides() {
    let mut cat = Catalog::builtin(chrono::Utc::now()).expect("loads");
    let computed = cat.risk_score("dropbox");
    let o = AppOverride {
        risk_score: Some(3.5),
        risk_note: Some("personal accounts".into()),
    };
    cat.apply_overrides([("dropbox", &o)]).expect("applies");
    assert_eq!(cat.risk_score("dropbox"), Some(3.5));
    let r = cat.risk("dropbox").expect("app");
    assert_eq!(r.total, Some(3.5));
    assert_eq!(r.computed, computed);
    assert_eq!(
        r.score_override.as_ref().and_then(|o| o.note.as_deref()),
        Some("personal accounts")
    );

    let bad = AppOverride {
        risk_score: Some(-1.0),
        risk_note: None,
    };
    let e = cat
        .apply_overrides([("box", &bad)])
        .expect_err("out of range");
    assert!(matches!(&e, CatalogError::ScoreOutOfRange { id, .. } if id == "box"));
    let e = cat
        .set_score_override("no-such-app", 5.0, None)
        .expect_err("unknown");
    assert!(matches!(&e, CatalogError::UnknownApp { id } if id == "no-such-app"));
    assert!(cat.set_score_override("box", f64::NAN, None).is_err());

    assert!(cat.clear_score_override("dropbox"));
    assert_eq!(cat.risk_score("dropbox"), computed);
}

#[test]
fn weights_change_scores() {
    let cfg: CatalogConfig = toml::from_str(
        "missing_is_worst = true\n[weights]\ngeneral = \"ignored\"\n[weights.properties]\nmfa = \"very high\"\n",
    )
    .expect("config");
    let strict = Catalog::from_config(&cfg, &[], chrono::Utc::now()).expect("loads");
    let default = Catalog::builtin(chrono::Utc::now()).expect("loads");
    // With missing values counted as worst, an app with few facts drops.
    let (s, d) = (
        strict.risk_score("deepseek"),
        default.risk_score("deepseek"),
    );
    assert!(s < d, "{s:?} !< {d:?}");
    let r = strict.risk("deepseek").expect("app");
    assert!(r.missing_is_worst);
}

#[test]
fn views_render() {
    let cat = Catalog::builtin(chrono::Utc::now()).expect("loads");
    let list = views::list(&cat);
    assert_eq!(list.len(), cat.len());
    let json = serde_json::to_value(&list).expect("json");
    let first = json.get(0).expect("one");
    for key in ["id", "name", "category", "domains", "risk_score"] {
        assert!(first.get(key).is_some(), "{key}");
    }
    let detail = views::show(&cat, "dropbox").expect("dropbox");
    let json = serde_json::to_value(&detail).expect("json");
    let groups = json
        .pointer("/risk/groups")
        .and_then(|g| g.as_array())
        .expect("groups");
    assert_eq!(groups.len(), 4);
    let mfa = groups
        .iter()
        .flat_map(|g| {
            g.get("properties")
                .and_then(|p| p.as_array())
                .into_iter()
                .flatten()
        })
        .find(|p| p.get("key").and_then(|k| k.as_str()) == Some("mfa"))
        .expect("mfa row");
    assert_eq!(mfa.get("value"), Some(&serde_json::Value::Bool(true)));
    assert_eq!(mfa.get("score").and_then(|s| s.as_f64()), Some(10.0));
    let text = views::render_detail(&detail);
    assert!(
        text.contains("Dropbox (dropbox)") && text.contains("MFA"),
        "{text}"
    );
    let table = views::render_table(&views::search(&cat, "dropbox"));
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("dropbox ")),
        "{table}"
    );
    assert!(views::show(&cat, "nope").is_none());
}
