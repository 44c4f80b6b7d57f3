//! What the kernel should hold, given the catalog and the tags: the verdict plan.
//!
//! The daemon owns the kernel's verdict maps; this module decides their contents and nothing
//! else, so that every rule of that decision is a pure function with unit tests:
//!
//! ```text
//! catalog + tags + options ──VerdictPlan::build──▶ plan (names, ranges)
//! plan + what the kernel holds ──VerdictPlan::diff──▶ PlanDiff (removals, then writes)
//! ```
//!
//! - Every domain rule of an unsanctioned app is a name verdict (`*.x.com` covers x.com's
//!   subdomains).
//! - A rule of an allowed app below a blocked suffix is an allow exception: the probes take
//!   the most specific name.
//! - Names of apps under session control carry the session flag on whatever entry they have
//!   (a block still blocks), or an entry that decides nothing else.
//! - The DoH canary domains are refused in DNS only (no flow verdict), unless a rule of an app
//!   already decides them.
//! - The published IP ranges of unsanctioned apps are block prefixes.
//!
//! Apps are numbered ([`AppNumbers`]) because the kernel's verdicts carry a `u32`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use tollgate_catalog::Catalog;

use crate::{Decision, TagBook};

/// What a name verdict does to a flow that the name decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameAction {
    Block,
    /// An exception below a blocked suffix.
    Allow,
}

/// One name verdict as the kernel should hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameVerdict {
    /// `None`: the entry decides no flow (refused in DNS only, or only flags session control).
    pub action: Option<NameAction>,
    /// The app's number ([`AppNumbers`]); 0 for none.
    pub app: u32,
    /// The verdict covers the name's subdomains too.
    pub subdomains: bool,
    /// Queries for the name are answered NXDOMAIN by the probes.
    pub refuse_dns: bool,
    /// The name is an app's under session control.
    pub session: bool,
}

/// Small stable numbers for app ids: 1.. in the order of the sorted ids, 0 for an app the
/// catalog does not have.
#[derive(Debug, Clone, Default)]
pub struct AppNumbers {
    numbers: HashMap<String, u32>,
}

impl AppNumbers {
    pub fn new(catalog: &Catalog) -> AppNumbers {
        let mut ids: Vec<&str> = catalog.apps().map(|a| a.id.as_str()).collect();
        ids.sort_unstable();
        AppNumbers {
            numbers: ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.to_string(), u32::try_from(i + 1).unwrap_or(u32::MAX)))
                .collect(),
        }
    }

    pub fn of(&self, app: &str) -> u32 {
        self.numbers.get(app).copied().unwrap_or(0)
    }

    /// Numbers the apps of a new catalog that have none yet, after the highest number given,
    /// in id order. Apps keep their numbers (the kernel's verdicts already carry them); the
    /// number of an app gone from the catalog is not reused.
    pub fn extend(&mut self, catalog: &Catalog) {
        let mut next = self.numbers.values().copied().max().unwrap_or(0);
        let mut new: Vec<&str> = catalog
            .apps()
            .map(|a| a.id.as_str())
            .filter(|id| !self.numbers.contains_key(*id))
            .collect();
        new.sort_unstable();
        for id in new {
            next = next.saturating_add(1);
            self.numbers.insert(id.to_string(), next);
        }
    }
}

/// The settings of `[enforcement]` that shape the plan.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions<'a> {
    /// Refuse unsanctioned apps' names in DNS too.
    pub refuse_dns: bool,
    /// Refuse the DoH canary domains in DNS.
    pub refuse_doh_canary: bool,
    pub doh_canary_domains: &'a [String],
    /// Apps under session control.
    pub session_apps: &'a HashSet<String>,
}

/// A prefix as the kernel's tries hold it: network address and length.
pub type Prefix = (IpAddr, u8);

/// The name verdicts and block prefixes the kernel should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerdictPlan {
    pub names: BTreeMap<String, NameVerdict>,
    /// Catalog IP ranges of unsanctioned apps, with the app's number.
    pub ranges: BTreeMap<Prefix, u32>,
}

/// How to go from what the kernel holds to a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanDiff {
    /// Names to remove first (they make room in the fixed-size name map).
    pub names_removed: Vec<String>,
    /// Names to write, blocks before allow exceptions: when the map fills up, only names
    /// that did not fit are over-allowed, never an exception without its block.
    pub names_set: Vec<(String, NameVerdict)>,
    pub ranges_removed: Vec<Prefix>,
    pub ranges_set: Vec<(Prefix, u32)>,
}

impl PlanDiff {
    pub fn is_empty(&self) -> bool {
        self.names_removed.is_empty()
            && self.names_set.is_empty()
            && self.ranges_removed.is_empty()
            && self.ranges_set.is_empty()
    }
}

/// A domain rule (`x.com` or `*.x.com`) as a name and whether it covers subdomains.
fn rule_name(rule: &str) -> (String, bool) {
    let (name, subdomains) = match rule.strip_prefix("*.") {
        Some(suffix) => (suffix, true),
        None => (rule, false),
    };
    (name.trim_end_matches('.').to_ascii_lowercase(), subdomains)
}

/// Whether `name` is a strict subdomain of `suffix`.
fn is_below(name: &str, suffix: &str) -> bool {
    name.len() > suffix.len()
        && name.ends_with(suffix)
        && name.as_bytes().get(name.len() - suffix.len() - 1) == Some(&b'.')
}

impl VerdictPlan {
    pub fn build(
        catalog: &Catalog,
        tags: &TagBook,
        numbers: &AppNumbers,
        opts: PlanOptions<'_>,
    ) -> VerdictPlan {
        let unsanctioned = tags.unsanctioned(catalog);
        let mut names: BTreeMap<String, NameVerdict> = BTreeMap::new();
        for app in &unsanctioned {
            let n = numbers.of(&app.id);
            for rule in &app.domains {
                let (name, subdomains) = rule_name(rule);
                names
                    .entry(name)
                    .or_insert(NameVerdict {
                        action: Some(NameAction::Block),
                        app: n,
                        subdomains,
                        refuse_dns: opts.refuse_dns,
                        session: false,
                    })
                    .subdomains |= subdomains;
            }
        }
        let blocked_suffixes: Vec<String> = names
            .iter()
            .filter(|(_, v)| v.subdomains)
            .map(|(k, _)| k.clone())
            .collect();
        for app in catalog.apps() {
            if tags.decide(catalog, &app.id, true) != Decision::Allow {
                continue;
            }
            for rule in &app.domains {
                let (name, subdomains) = rule_name(rule);
                if blocked_suffixes.iter().any(|b| is_below(&name, b)) {
                    names.insert(
                        name,
                        NameVerdict {
                            action: Some(NameAction::Allow),
                            app: numbers.of(&app.id),
                            subdomains,
                            refuse_dns: false,
                            session: false,
                        },
                    );
                }
            }
        }
        for app in catalog.apps() {
            if !opts.session_apps.contains(&app.id) {
                continue;
            }
            let n = numbers.of(&app.id);
            for rule in &app.domains {
                let (name, subdomains) = rule_name(rule);
                let e = names.entry(name).or_insert(NameVerdict {
                    action: None,
                    app: n,
                    subdomains,
                    refuse_dns: false,
                    session: true,
                });
                e.session = true;
                if e.action.is_none() {
                    e.subdomains |= subdomains;
                }
            }
        }
        if opts.refuse_doh_canary {
            for canary in opts.doh_canary_domains {
                let name = canary.trim_end_matches('.').to_ascii_lowercase();
                names
                    .entry(name)
                    .or_insert(NameVerdict {
                        action: None,
                        app: 0,
                        subdomains: false,
                        refuse_dns: true,
                        session: false,
                    })
                    .refuse_dns = true;
            }
        }
        let ranges = unsanctioned
            .iter()
            .flat_map(|a| {
                let n = numbers.of(&a.id);
                a.ip_ranges
                    .iter()
                    .map(move |r| ((r.trunc().addr(), r.prefix_len()), n))
            })
            .collect();
        VerdictPlan { names, ranges }
    }

    /// The writes that turn `held` (what the kernel holds now) into this plan.
    pub fn diff(&self, held: &VerdictPlan) -> PlanDiff {
        let names_removed = held
            .names
            .keys()
            .filter(|n| !self.names.contains_key(*n))
            .cloned()
            .collect();
        let mut names_set: Vec<(String, NameVerdict)> = self
            .names
            .iter()
            .filter(|(n, v)| held.names.get(*n) != Some(v))
            .map(|(n, v)| (n.clone(), *v))
            .collect();
        names_set.sort_by_key(|(_, v)| v.action != Some(NameAction::Block));
        let ranges_removed = held
            .ranges
            .keys()
            .filter(|p| !self.ranges.contains_key(*p))
            .copied()
            .collect();
        let ranges_set = self
            .ranges
            .iter()
            .filter(|(p, n)| held.ranges.get(*p) != Some(n))
            .map(|(p, n)| (*p, *n))
            .collect();
        PlanDiff {
            names_removed,
            names_set,
            ranges_removed,
            ranges_set,
        }
    }

    /// Whether these name verdicts block `name` (a host, perhaps with a port): the most
    /// specific entry that decides a flow wins, as in the probes' suffix walk. Entries that
    /// decide no flow (DNS-only canaries, session flags) let a broader rule decide.
    pub fn blocks_name(&self, name: &str) -> bool {
        let host = name.split(':').next().unwrap_or("");
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        let name = name.as_str();
        let mut suffix = name;
        loop {
            if let Some(v) = self.names.get(suffix)
                && let Some(action) = v.action
            {
                return action == NameAction::Block && (suffix == name || v.subdomains);
            }
            match suffix.split_once('.') {
                Some((_, rest)) => suffix = rest,
                None => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AppSettings, Tag};

    fn catalog() -> Catalog {
        // Custom apps only, so the test does not lean on the shipped data.
        let custom: Vec<tollgate_catalog::CustomApp> = [
            r#"id = "acme-drive"
name = "Acme Drive"
category = "Cloud storage"
domains = ["*.acme-drive.example", "acme-drive.example"]
ip_ranges = ["198.51.100.0/24"]"#,
            r#"id = "acme-paper"
name = "Acme Paper"
category = "Cloud storage"
domains = ["paper.acme-drive.example"]"#,
            r#"id = "acme-box"
name = "Acme Box"
category = "Cloud storage"
domains = ["*.acme-box.example"]"#,
        ]
        .iter()
        .map(|t| toml::from_str(t).expect("custom app"))
        .collect();
        Catalog::from_config(&Default::default(), &custom, chrono::Utc::now())
            .expect("catalog with custom apps")
    }

    fn tags(cat: &Catalog, unsanctioned: &[&str]) -> TagBook {
        let apps = unsanctioned
            .iter()
            .map(|id| {
                (
                    id.to_string(),
                    AppSettings {
                        tag: Some(Tag::Unsanctioned),
                        ..AppSettings::default()
                    },
                )
            })
            .collect();
        TagBook::new(cat, &apps, Vec::new(), Default::default()).expect("tag book")
    }

    fn plan(cat: &Catalog, tags: &TagBook, session: &HashSet<String>, canary: bool) -> VerdictPlan {
        let canaries = vec!["use-application-dns.net".to_string()];
        VerdictPlan::build(
            cat,
            tags,
            &AppNumbers::new(cat),
            PlanOptions {
                refuse_dns: false,
                refuse_doh_canary: canary,
                doh_canary_domains: &canaries,
                session_apps: session,
            },
        )
    }

    #[test]
    fn unsanctioned_names_block_and_allowed_names_below_them_are_exceptions() {
        let cat = catalog();
        let p = plan(&cat, &tags(&cat, &["acme-drive"]), &HashSet::new(), false);
        let n = AppNumbers::new(&cat);
        assert_eq!(
            p.names.get("acme-drive.example"),
            Some(&NameVerdict {
                action: Some(NameAction::Block),
                app: n.of("acme-drive"),
                subdomains: true,
                refuse_dns: false,
                session: false,
            })
        );
        assert_eq!(
            p.names
                .get("paper.acme-drive.example")
                .and_then(|v| v.action),
            Some(NameAction::Allow)
        );
        assert!(!p.names.contains_key("acme-box.example"));
        assert!(p.blocks_name("www.acme-drive.example"));
        assert!(p.blocks_name("ACME-DRIVE.EXAMPLE.:443"));
        assert!(!p.blocks_name("paper.acme-drive.example"));
        assert!(!p.blocks_name("notacme-drive.example"));
        assert_eq!(
            p.ranges.keys().copied().collect::<Vec<_>>(),
            vec![("198.51.100.0".parse().unwrap(), 24)]
        );
    }

    #[test]
    fn session_flags_keep_blocks_and_canaries_decide_no_flow() {
        let cat = catalog();
        let session: HashSet<String> = ["acme-drive".to_string(), "acme-box".to_string()].into();
        let p = plan(&cat, &tags(&cat, &["acme-drive"]), &session, true);
        let drive = p.names["acme-drive.example"];
        assert_eq!(drive.action, Some(NameAction::Block));
        assert!(drive.session);
        let bx = p.names["acme-box.example"];
        assert_eq!((bx.action, bx.session, bx.subdomains), (None, true, true));
        let canary = p.names["use-application-dns.net"];
        assert_eq!((canary.action, canary.refuse_dns), (None, true));
        assert!(!p.blocks_name("use-application-dns.net"));
        assert!(!p.blocks_name("www.acme-box.example"));
    }

    #[test]
    fn diff_removes_first_and_writes_blocks_before_exceptions() {
        let cat = catalog();
        let held = plan(&cat, &tags(&cat, &["acme-box"]), &HashSet::new(), false);
        let want = plan(&cat, &tags(&cat, &["acme-drive"]), &HashSet::new(), false);
        let d = want.diff(&held);
        assert_eq!(d.names_removed, vec!["acme-box.example".to_string()]);
        let actions: Vec<_> = d.names_set.iter().map(|(_, v)| v.action).collect();
        assert_eq!(
            actions,
            vec![Some(NameAction::Block), Some(NameAction::Allow)]
        );
        assert_eq!(d.ranges_set.len(), 1);
        assert!(want.diff(&want).is_empty());
        // Untagging everything removes everything.
        let none = plan(&cat, &tags(&cat, &[]), &HashSet::new(), false);
        let d = none.diff(&want);
        assert_eq!(d.names_removed.len(), 2);
        assert_eq!(d.ranges_removed.len(), 1);
        assert!(d.names_set.is_empty());
    }

    #[test]
    fn apps_keep_their_numbers_when_the_catalog_grows() {
        let small = Catalog::from_config(&Default::default(), &[], chrono::Utc::now())
            .expect("shipped catalog");
        let mut numbers = AppNumbers::new(&small);
        let before: Vec<(String, u32)> = small
            .apps()
            .map(|a| (a.id.clone(), numbers.of(&a.id)))
            .collect();
        let highest = before.iter().map(|(_, n)| *n).max().unwrap_or(0);
        let grown = catalog();
        numbers.extend(&grown);
        for (id, n) in &before {
            assert_eq!(numbers.of(id), *n, "{id} kept its number");
        }
        // The new apps, in id order, after the highest number: a verdict the kernel holds
        // never changes meaning.
        assert_eq!(numbers.of("acme-box"), highest + 1);
        assert_eq!(numbers.of("acme-drive"), highest + 2);
        assert_eq!(numbers.of("acme-paper"), highest + 3);
        numbers.extend(&grown);
        assert_eq!(
            numbers.of("acme-paper"),
            highest + 3,
            "extending again changes nothing"
        );
    }
}
