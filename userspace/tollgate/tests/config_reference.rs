//! docs/CONFIG.md documents every key of every section of the gateway's config, as the config
//! types define them, and every file in configs/ loads. The keys come from the types
//! themselves: each section refuses unknown keys, and serde's refusal lists the keys the
//! section has ("expected one of ..."), so a key added to a type and not to the reference
//! fails here.

use std::collections::BTreeSet;

use tollgate::config::Config;

/// (the reference's heading for the section, a config whose section holds an unknown key).
/// `@` is where the unknown key goes.
const SECTIONS: &[(&str, &str)] = &[
    ("top level", "@\n"),
    ("[flows]", "[flows]\n@\n"),
    ("[dataplane]", "[dataplane]\n@\n"),
    ("[[interfaces]]", "[[interfaces]]\nname = \"eth0\"\n@\n"),
    ("[catalog]", "[catalog]\n@\n"),
    ("[catalog.weights]", "[catalog.weights]\n@\n"),
    ("[[custom_apps]]", "[[custom_apps]]\n@\n"),
    ("[apps.ID]", "[apps.dropbox]\n@\n"),
    ("[[tag_rules]]", "[[tag_rules]]\n@\n"),
    ("[users]", "[users]\n@\n"),
    ("[[users.static]]", "[[users.static]]\n@\n"),
    ("[[log_formats]]", "[[log_formats]]\n@\n"),
    ("[enforcement]", "[enforcement]\n@\n"),
    ("[proxy]", "[proxy]\n@\n"),
    ("[proxy.managed_devices]", "[proxy.managed_devices]\n@\n"),
    ("[[session_policies]]", "[[session_policies]]\n@\n"),
    (
        "[session_policies.download] / [session_policies.upload]",
        "[[session_policies]]\n[session_policies.download]\n@\n",
    ),
    (
        "[[session_policies.activities]]",
        "[[session_policies]]\n[[session_policies.activities]]\n@\n",
    ),
    ("[[access_policies]]", "[[access_policies]]\n@\n"),
    (
        "[access_policies.time]",
        "[[access_policies]]\n[access_policies.time]\n@\n",
    ),
    ("[discovery]", "[discovery]\n@\n"),
    ("[hub]", "[hub]\n@\n"),
    ("[metrics]", "[metrics]\n@\n"),
    ("[console]", "[console]\n@\n"),
    ("[activity]", "[activity]\n@\n"),
    (
        "[[activity_policies]]",
        "[[activity_policies]]\nname = \"p\"\n@\n",
    ),
    ("[[alert_sinks]]", "[[alert_sinks]]\nkind = \"file\"\n@\n"),
    ("[[connectors]]", "[[connectors]]\nkind = \"okta\"\n@\n"),
    ("[anomaly]", "[anomaly]\n@\n"),
    ("[anomaly.DETECTION]", "[anomaly.impossible_travel]\n@\n"),
    ("[geoip]", "[geoip]\n@\n"),
    ("[collect]", "[collect]\n@\n"),
    (
        "[collect.udp] / [collect.tcp]",
        "[collect.udp]\nlisten = \"127.0.0.1:514\"\n@\n",
    ),
    (
        "[collect.tls]",
        "[collect.tls]\nlisten = \"127.0.0.1:6514\"\n@\n",
    ),
    ("[[collect.watch]]", "[[collect.watch]]\ndir = \"/x\"\n@\n"),
    (
        "[[app_discovery_policies]]",
        "[[app_discovery_policies]]\nname = \"p\"\n@\n",
    ),
    (
        "[app_discovery_policies.daily]",
        "[[app_discovery_policies]]\nname = \"p\"\n[app_discovery_policies.daily]\n@\n",
    ),
];

/// The keys serde says a section has, from its refusal of `zz_unknown_key`.
pub fn keys_of(template: &str) -> BTreeSet<String> {
    let text = template.replace('@', "zz_unknown_key = 1");
    let err = match Config::parse(&text, "probe.toml") {
        Ok(_) => panic!("a section accepted an unknown key:\n{text}"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("zz_unknown_key"),
        "the probe failed for another reason:\n{text}\n{err}"
    );
    // "expected `a`", "expected `a` or `b`", "expected one of `a`, `b`, `c`".
    let (_, list) = err
        .split_once("expected ")
        .unwrap_or_else(|| panic!("no key list in: {err}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn reference() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/CONFIG.md"))
        .expect("docs/CONFIG.md")
}

/// The keys documented under a `### <heading>` of the gateway part: table rows `| \`key\` |`.
fn documented(doc: &str, heading: &str) -> BTreeSet<String> {
    let gateway = doc
        .split("\n## ")
        .find(|p| p.starts_with("The gateway"))
        .expect("## The gateway");
    let marker = format!("### `{heading}`");
    let Some((_, rest)) = gateway.split_once(&marker) else {
        return BTreeSet::new();
    };
    let body = rest.split("\n### ").next().unwrap_or("");
    body.lines()
        .filter_map(|l| {
            l.strip_prefix("| `")?
                .split_once('`')
                .map(|(k, _)| k.to_string())
        })
        .collect()
}

#[test]
fn every_gateway_key_is_in_the_reference() {
    let doc = reference();
    let mut missing = Vec::new();
    for (heading, template) in SECTIONS {
        let keys = keys_of(template);
        let doc_keys = documented(&doc, heading);
        for k in &keys {
            if !doc_keys.contains(k) {
                missing.push(format!("{heading} {k}"));
            }
        }
        for k in &doc_keys {
            assert!(
                keys.contains(k),
                "docs/CONFIG.md documents {heading} {k}, which the config does not have"
            );
        }
    }
    assert!(
        missing.is_empty(),
        "docs/CONFIG.md lacks these keys:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_probe_finds_keys() {
    let top = keys_of("@\n");
    assert!(top.contains("mode") && top.contains("metrics"), "{top:?}");
    assert_eq!(keys_of("[metrics]\n@\n"), ["listen".to_string()].into());
}

#[test]
fn every_example_config_loads() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            Config::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 3, "only {n} gateway configs in configs/");
}

#[test]
#[ignore = "prints the keys of every section, for writing the reference"]
fn print_keys() {
    for (heading, template) in SECTIONS {
        println!("{heading}: {:?}", keys_of(template));
    }
}

#[test]
#[ignore = "prints the defaults, for writing the reference"]
fn print_defaults() {
    println!("{:#?}", Config::parse("", "empty").unwrap());
}
