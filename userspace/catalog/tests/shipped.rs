//! The shipped catalog: it loads, is large enough, is consistent, and classifies real names
//! from nDPI's test captures to the right apps.

use std::collections::HashSet;
use std::path::PathBuf;

use tollgate_catalog::{CATEGORIES, Catalog, MatchKind};

#[test]
fn loads_with_5000_apps_unique_ids_valid_categories() {
    let cat = Catalog::builtin(chrono::Utc::now()).expect("shipped catalog loads");
    assert!(cat.len() >= 5000, "only {} apps", cat.len());
    let mut ids = HashSet::new();
    for app in cat.apps() {
        assert!(ids.insert(app.id.clone()), "duplicate id {}", app.id);
        assert!(CATEGORIES.contains(&app.category.as_str()), "{}", app.id);
        assert!(!app.domains.is_empty(), "{} has no domain", app.id);
        assert!(app.sources.contains_key("app"), "{} has no source", app.id);
    }
    assert!(cat.domain_rule_count() > 30_000);
}

/// Every fact names where it comes from, and every source is one whose licence
/// configs/catalog/SOURCES.md records.
#[test]
fn every_fact_has_a_source_with_a_recorded_licence() {
    const SOURCES: &[&str] = &["manual", "ndpi", "gdpr-tracker", "v2fly", "2factorauth"];
    let sources_md = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/catalog/SOURCES.md"),
    )
    .expect("SOURCES.md");
    for s in SOURCES {
        assert!(
            sources_md.contains(&format!("| `{s}`")),
            "{s} has no row in SOURCES.md"
        );
    }
    let cat = Catalog::builtin(chrono::Utc::now()).expect("loads");
    let mut per_source = std::collections::BTreeMap::<&str, usize>::new();
    for app in cat.apps() {
        for p in tollgate_catalog::Property::ALL {
            if !p.is_known(&app.attributes) {
                continue;
            }
            let src = app
                .sources
                .get(p.key())
                .unwrap_or_else(|| panic!("{}: {} has no source", app.id, p.key()));
            assert!(SOURCES.contains(&src.as_str()), "{}: {src}", app.id);
            *per_source
                .entry(SOURCES.iter().find(|s| *s == src).copied().unwrap_or("?"))
                .or_default() += 1;
        }
        for key in ["app", "domains"] {
            let src = app.sources.get(key).expect(key);
            assert!(
                src.split('+').all(|s| SOURCES.contains(&s)),
                "{}: {key} from {src}",
                app.id
            );
        }
    }
    eprintln!("facts per source: {per_source:?}");
    // The MFA facts of 2factorauth are there (the breadth sources carry facts, not only names).
    assert!(per_source.get("2factorauth").is_some_and(|n| *n > 1000));
}

#[test]
fn every_rule_classifies_to_its_own_app() {
    let cat = Catalog::builtin(chrono::Utc::now()).expect("loads");
    for app in cat.apps() {
        for rule in &app.domains {
            let name = match rule.strip_prefix("*.") {
                Some(host) => format!("tollgate-probe.{host}"),
                None => rule.clone(),
            };
            let m = cat
                .classify_name(&name)
                .expect("a rule matches its own name");
            assert_eq!(m.app.id, app.id, "{name} -> {} via {}", m.app.id, m.rule);
            assert_eq!(m.rule, rule.as_str());
        }
    }
}

#[test]
fn well_known_names() {
    let cat = Catalog::builtin(chrono::Utc::now()).expect("loads");
    for (name, id) in [
        ("www.dropbox.com", "dropbox"),
        ("dropbox.com", "dropbox"),
        ("client.dropbox.com", "dropbox"),
        ("drive.google.com", "google-drive"),
        ("docs.google.com", "google-docs"),
        ("mail.google.com", "google-gmail"),
        ("www.google.com", "google"),
        ("teams.microsoft.com", "microsoft-teams"),
        ("contoso.sharepoint.com", "microsoft-sharepoint"),
        ("contoso-my.sharepoint.com", "microsoft-sharepoint"),
        ("login.microsoftonline.com", "microsoft-entra-id"),
        ("outlook.office365.com", "microsoft-outlook"),
        ("onedrive.live.com", "microsoft-onedrive"),
        ("www.microsoft.com", "microsoft"),
        ("acme.my.salesforce.com", "salesforce"),
        ("github.com", "github"),
        ("raw.githubusercontent.com", "github"),
        ("gitlab.com", "gitlab"),
        ("us02web.zoom.us", "zoom"),
        ("app.slack.com", "slack"),
        ("chatgpt.com", "openai-chatgpt"),
        ("api.openai.com", "openai-api"),
        ("claude.ai", "anthropic-claude"),
        ("api.anthropic.com", "anthropic-api"),
        ("gemini.google.com", "google-gemini"),
        ("copilot.microsoft.com", "microsoft-copilot"),
        ("app.box.com", "box"),
        ("WWW.DROPBOX.COM.", "dropbox"),
    ] {
        let m = cat.classify_name(name);
        assert_eq!(m.map(|m| m.app.id.as_str()), Some(id), "{name}");
    }
    assert!(cat.classify_name("example.invalid").is_none());
}

#[test]
fn builtin_scores_are_in_range() {
    let cat = Catalog::builtin(chrono::Utc::now()).expect("loads");
    let mut scored = 0;
    for app in cat.apps() {
        if let Some(s) = cat.risk_score(&app.id) {
            assert!((0.0..=10.0).contains(&s), "{}: {s}", app.id);
            scored += 1;
        }
    }
    assert!(
        scored * 10 >= cat.len() * 8,
        "only {scored} of {} scored",
        cat.len()
    );
    // A large platform with every control scores better than a service with few facts.
    let ms = cat.risk_score("microsoft-365").expect("scored");
    let ds = cat.risk_score("deepseek").expect("scored");
    assert!(ms > ds, "{ms} <= {ds}");
}

fn corpus() -> Option<PathBuf> {
    let p = std::env::var_os("TOLLGATE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")
        });
    p.is_dir().then_some(p)
}

/// nDPI's expected results for its test captures: names nDPI labels as a cloud app must map to
/// the same app here.
#[test]
fn ndpi_corpus_names_classify_to_the_right_app() {
    let Some(dir) = corpus() else {
        eprintln!("skip: corpus not found (set TOLLGATE_CORPUS)");
        return;
    };
    let path = dir.join("ndpi/expected_sni.tsv");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("skip: {} not readable", path.display());
        return;
    };
    let cat = Catalog::builtin(chrono::Utc::now()).expect("loads");
    // nDPI app label -> the ids that are right for it (Microsoft's umbrella label covers
    // several of our more specific apps).
    let expect: &[(&str, &[&str])] = &[
        ("Dropbox", &["dropbox"]),
        ("Teams", &["microsoft-teams"]),
        // HockeyApp (Microsoft's crash reporting) carries Teams' reports too.
        (
            "Skype_Teams",
            &["microsoft-teams", "skype", "microsoft-stream", "microsoft"],
        ),
        (
            "Microsoft365",
            &["microsoft-365", "microsoft-entra-id", "microsoft-outlook"],
        ),
        ("MS_OneDrive", &["microsoft-onedrive"]),
        ("Outlook", &["microsoft-outlook"]),
        ("Salesforce", &["salesforce"]),
        ("Github", &["github"]),
        ("Zoom", &["zoom"]),
        ("Slack", &["slack"]),
        ("GoogleDrive", &["google-drive"]),
        ("YouTube", &["google-youtube"]),
        (
            "AmazonAWS",
            &["amazon-web-services", "amazon-s3", "amazon-cloudfront"],
        ),
        ("AppleiCloud", &["apple-icloud"]),
        ("Telegram", &["telegram", "telegram-web"]),
        ("TikTok", &["tiktok"]),
        ("Webex", &["webex"]),
    ];
    let mut checked = 0;
    let mut failures = Vec::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (Some(proto), Some(host)) = (cols.get(4), cols.get(5)) else {
            continue;
        };
        let label = proto.rsplit('.').next().unwrap_or(proto);
        let Some((_, ids)) = expect.iter().find(|(l, _)| *l == label) else {
            continue;
        };
        // nDPI labels some flows by server IP (not a name), and its infix pattern
        // `-teams.cloudapp.net` has no equivalent rule kind here (documented limitation).
        if host.is_empty()
            || host.parse::<std::net::IpAddr>().is_ok()
            || host.ends_with("-teams.cloudapp.net")
        {
            continue;
        }
        checked += 1;
        let got = cat.classify_name(host).map(|m| m.app.id.clone());
        if !got.as_deref().is_some_and(|g| ids.contains(&g)) {
            failures.push(format!("{host} ({label}) -> {got:?}"));
        }
    }
    assert!(checked >= 40, "only {checked} names checked");
    assert!(
        failures.is_empty(),
        "{} of {checked}: {failures:#?}",
        failures.len()
    );
    eprintln!("{checked} nDPI corpus names classified as nDPI does");
}

#[test]
fn match_kind_is_reported() {
    let cat = Catalog::builtin(chrono::Utc::now()).expect("loads");
    let m = cat.classify_name("dropbox.com").expect("match");
    assert_eq!(m.kind, MatchKind::Exact);
    let m = cat.classify_name("x.dropbox.com").expect("match");
    assert_eq!(m.kind, MatchKind::Suffix);
    assert_eq!(m.rule, "*.dropbox.com");
}

/// IP ranges the vendors publish (Microsoft 365 "Optimize" endpoints, GitHub meta, Telegram)
/// classify addresses seen in nDPI's captures when no name is known.
#[test]
fn published_ip_ranges() {
    let cat = Catalog::builtin(chrono::Utc::now()).expect("loads");
    for (ip, id, rule) in [
        ("52.114.250.153", "microsoft-teams", "52.112.0.0/14"),
        ("140.82.114.4", "github", "140.82.112.0/20"),
        ("149.154.167.51", "telegram", "149.154.160.0/20"),
        ("52.97.1.1", "microsoft-outlook", "52.96.0.0/14"),
        ("1.1.1.1", "cloudflare", "1.1.1.1/32"),
        ("::ffff:8.8.8.8", "google", "8.8.8.8/32"),
        ("2606:50c0:8000::154", "github", "2606:50c0::/32"),
    ] {
        let m = cat.classify_ip(ip.parse().expect("ip")).expect(ip);
        assert_eq!(
            (m.app.id.as_str(), m.rule, m.kind),
            (id, rule, MatchKind::Ip),
            "{ip}"
        );
    }
    assert!(cat.classify_ip("192.0.2.1".parse().expect("ip")).is_none());
}

/// The committed catalog.json is what gen_catalog.py makes from manual_apps.txt and the
/// corpus (skips without python3 or the corpus).
#[test]
fn generated_data_is_current() {
    let Some(dir) = corpus() else {
        eprintln!("skip: corpus not found (set TOLLGATE_CORPUS)");
        return;
    };
    let psl = std::path::Path::new("/usr/share/publicsuffix/public_suffix_list.dat");
    if !psl.is_file() {
        eprintln!(
            "SKIP generated_data_is_current: {} not found (Debian publicsuffix; `cargo xtask setup` installs it)",
            psl.display()
        );
        return;
    }
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/catalog/gen_catalog.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg("--check")
        .arg("--corpus")
        .arg(&dir)
        .output();
    match out {
        Err(e) => eprintln!("skip: python3 not runnable: {e}"),
        Ok(o) => assert!(
            o.status.success(),
            "catalog.json is stale: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}
