//! Risk scores that tell apps apart: apps with strong, sourced evidence (certifications, MFA,
//! SAML or an audit trail, no recent breach) score above apps with weak or adverse evidence,
//! pair by pair, on a fixed list of the shipped catalog's apps; and the rule for unknown facts
//! is what makes that true (counting only known facts, the old rule, inverts pairs).

use tollgate_catalog::{App, Catalog, CatalogConfig, Property};

/// (strong evidence, weak or adverse evidence), same category where the catalog has both.
const PAIRS: &[(&str, &str)] = &[
    // Cloud storage and file sharing
    ("dropbox", "terabox"),
    ("box", "baidu-netdisk"),
    ("egnyte", "yandex-disk"),
    ("sharefile", "sugarsync"),
    ("google-drive", "carbonite"),
    ("microsoft-onedrive", "owncloud"),
    ("acronis", "syncthing"),
    ("zoho-workdrive", "rapidgator"),
    ("dropbox-docsend", "sendspace"),
    ("druva", "zippyshare"),
    ("docusign", "uploaded-net"),
    ("loom", "jumpshare"),
    ("microsoft-stream", "slideshare"),
    ("contentful", "hightail"),
    ("canva", "pastebin"),
    ("adobe-express", "deviantart"),
    ("wix", "dribbble"),
    // Code and development
    ("github", "gitee"),
    ("gitlab", "codepen"),
    ("bitbucket", "jsfiddle"),
    ("postman", "glitch"),
    // Collaboration and messaging
    ("slack", "chanty"),
    ("miro", "flock"),
    ("figma", "excalidraw"),
    ("atlassian-confluence", "twist"),
    ("lucid", "zulip-cloud"),
    ("google-chat", "rocket-chat"),
    ("microsoft-sharepoint", "dingtalk"),
    ("microsoft-loop", "lark"),
    ("microsoft-teams", "qq"),
    ("webex", "wechat"),
    ("google-meet", "icq"),
    ("zoom", "mumble"),
    // Generative AI
    ("microsoft-copilot", "deepseek"),
    ("google-gemini", "kimi"),
    ("github-copilot", "doubao"),
    ("amazon-q", "ernie-bot"),
    ("adobe-firefly", "ideogram"),
    ("google-notebooklm", "krea"),
    ("azure-openai", "qwen"),
    ("google-vertex-ai", "pika"),
    ("stripe", "phind"),
    ("xero", "chatpdf"),
    // Platforms, commerce, IoT, IT
    ("salesforce", "bitrix24"),
    ("amazon-web-services", "huawei-cloud"),
    ("shopify", "jd"),
    ("bigcommerce", "shein"),
    ("aws-iot", "tuya"),
    ("azure-iot-hub", "xiaomi"),
    ("servicenow", "huawei"),
    ("1password", "cactusvpn"),
    ("google-gmail", "mail-ru"),
    // Productivity and social
    ("microsoft-365", "sejda"),
    ("grammarly", "wolfram-alpha"),
    ("airtable", "beautiful-ai"),
    ("google-docs", "zotero"),
    ("microsoft-yammer", "douyin"),
    ("hootsuite", "weibo"),
    ("hubspot", "ok-ru"),
    ("smartsheet", "xiaohongshu"),
    ("trello", "likee"),
    ("asana", "academia-edu"),
    ("zendesk", "9gag"),
    ("intercom", "1kxun"),
    ("datadog", "better-stack"),
    ("new-relic", "iflix"),
    // Thinly known apps whose few facts are good: counting only known facts scored them 10.
    ("dynatrace", "checkly"),
    ("amplitude", "crazy-egg"),
    ("cvent", "clockify"),
    ("jfrog", "cypress-cloud"),
    ("mixpanel", "accuweather"),
    ("snowflake", "iqiyi"),
    ("crowdstrike", "netease-games"),
    ("jamf", "gaijin-entertainment"),
];

fn app<'a>(cat: &'a Catalog, id: &str) -> &'a App {
    cat.app(id)
        .unwrap_or_else(|| panic!("{id} is not in the shipped catalog"))
}

/// Strong: MFA, SAML or an audit trail, ISO 27001 or SOC 2, no breach in the last two years,
/// every one of those facts with a recorded source.
fn is_strong(cat: &Catalog, id: &str) -> bool {
    let a = app(cat, id);
    let at = &a.attributes;
    let sourced = |p: Property| a.sources.contains_key(p.key());
    let recent_breach = matches!(
        at.latest_breach,
        Some(tollgate_catalog::LatestBreach::Year(y)) if y + 2 >= 2026
    );
    at.mfa == Some(true)
        && sourced(Property::Mfa)
        && (at.saml == Some(true) || at.audit_trail == Some(true))
        && (at.iso_27001 == Some(true) || at.soc2 == Some(true))
        && (sourced(Property::Iso27001) || sourced(Property::Soc2))
        && !recent_breach
}

/// Weak or adverse: little is known (confidence below 0.15), or a known fact is adverse (no
/// MFA, a high-risk jurisdiction, a recent breach).
fn is_weak(cat: &Catalog, id: &str) -> bool {
    let at = &app(cat, id).attributes;
    let adverse = at.mfa == Some(false)
        || at
            .hq_country
            .as_deref()
            .is_some_and(|c| ["BY", "CN", "CU", "IR", "KP", "RU", "SY"].contains(&c))
        || matches!(at.latest_breach, Some(tollgate_catalog::LatestBreach::Year(y)) if y + 2 >= 2026);
    adverse || cat.risk_confidence(id).is_some_and(|c| c < 0.15)
}

#[test]
fn strong_evidence_scores_above_weak_evidence_pair_by_pair() {
    let cat = Catalog::builtin(chrono::Utc::now()).expect("loads");
    cat.app("dropbox").expect("sanity");
    let mut seen = std::collections::HashSet::new();
    let mut failures = Vec::new();
    for (strong, weak) in PAIRS {
        assert!(
            seen.insert(*strong) && seen.insert(*weak),
            "{strong}/{weak} listed twice"
        );
        assert!(
            is_strong(&cat, strong),
            "{strong} does not have strong evidence"
        );
        assert!(
            is_weak(&cat, weak),
            "{weak} does not have weak or adverse evidence"
        );
        let s = cat.risk_score(strong).expect("scored");
        let w = cat.risk_score(weak).expect("scored");
        if s <= w {
            failures.push(format!("{strong} {s} <= {weak} {w}"));
        }
        // Strong evidence is also more certain.
        let (cs, cw) = (
            cat.risk_confidence(strong).unwrap_or(0.0),
            cat.risk_confidence(weak).unwrap_or(0.0),
        );
        assert!(cs > cw, "confidence {strong} {cs} <= {weak} {cw}");
    }
    assert!(PAIRS.len() >= 50, "only {} pairs", PAIRS.len());
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The test above can fail: with the prior switched off (only known facts count, which is how
/// scores were made before confidence) a thinly known app with one good fact scores 10 and
/// pairs invert.
#[test]
fn counting_only_known_facts_inverts_pairs() {
    let cfg: CatalogConfig = toml::from_str("prior_weight = 0.0\n").expect("config");
    let cat = Catalog::from_config(&cfg, &[], chrono::Utc::now()).expect("loads");
    let inverted: Vec<_> = PAIRS
        .iter()
        .filter(|(s, w)| cat.risk_score(s) <= cat.risk_score(w))
        .collect();
    assert!(
        !inverted.is_empty(),
        "no pair inverts without the prior; the pair test proves nothing"
    );
    eprintln!(
        "{} of {} pairs invert when unknown facts are left out: {inverted:?}",
        inverted.len(),
        PAIRS.len()
    );
}

/// Nothing known: the prior, with confidence 0; an override: confidence 1.
#[test]
fn confidence_is_reported_for_every_app() {
    let mut cat = Catalog::builtin(chrono::Utc::now()).expect("loads");
    for a in cat.apps() {
        let c = cat
            .risk_confidence(&a.id)
            .expect("every app has a confidence");
        assert!((0.0..=1.0).contains(&c), "{}: {c}", a.id);
        let r = cat.risk(&a.id).expect("risk");
        assert_eq!(r.confidence, c);
        // The kept score (fast path) is the breakdown's score.
        assert_eq!(r.total, cat.risk_score(&a.id), "{}", a.id);
        if r.properties_known == 0 {
            assert_eq!((r.total, c), (Some(5.0), 0.0), "{}", a.id);
        }
    }
    cat.set_score_override("deepseek", 2.0, None)
        .expect("override");
    assert_eq!(cat.risk_confidence("deepseek"), Some(1.0));
    assert!(cat.clear_score_override("deepseek"));
    assert!(cat.risk_confidence("deepseek").is_some_and(|c| c < 1.0));
}
