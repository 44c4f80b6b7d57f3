//! Turning sanction decisions into kernel verdicts. The daemon's core task owns the one
//! [`Enforcer`]; it writes through the dataplane's verdict writer only.
//!
//! Three ways a flow of an unsanctioned app is caught:
//! 1. **Names in the kernel**: every domain rule of an unsanctioned app becomes a name verdict
//!    (`*.x.com` covers x.com's subdomains). The probes match the ClientHello's SNI against
//!    them as the hello passes, even across segments, and reset the flow before the server
//!    answers. Rules of other apps that sit below a blocked suffix become allow exceptions.
//! 2. **Names in userspace**: a flow the kernel could not name (QUIC, whose SNI needs
//!    decryption; a hello the probes gave up on; HTTP Host) gets a per-flow verdict as soon
//!    as the flow table names it. Blocked QUIC is answered with ICMP unreachable so that
//!    browsers fall back to TCP at once, where (1) blocks it.
//! 3. **Addresses from DNS**: answers naming an unsanctioned app put their addresses in the
//!    LPM tries for the record's TTL (at least `dns_block_floor`), so clients without a
//!    readable SNI (ECH with an unrelated outer name, IP-only clients) are blocked too.
//!
//! 4. **DNS refusal** (`refuse_dns`): the probes read the question of users' DNS queries and
//!    answer NXDOMAIN themselves for unsanctioned apps' domains, so clients fail at once
//!    without an address. The DoH canary domains (`refuse_doh_canary`, on by default) get the
//!    same answer, which tells Firefox not to turn DNS over HTTPS on by itself and Apple
//!    devices not to use iCloud Private Relay, so that browsers keep using the gateway's DNS.
//!
//! In monitor mode the same verdicts are written: the probes count them as "would drop"
//! instead of dropping, and the daemon logs "would block".

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tollgate_catalog::Catalog;
use tollgate_dataplane::{Action, Dataplane, DataplaneError, NameRule};
use tollgate_policy::{Decision, TagBook};

/// The `[enforcement]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnforcementConfig {
    /// Cut flows of an app that is newly tagged unsanctioned (`tollgate app tag`), not only
    /// new ones.
    #[serde(default = "yes")]
    pub cut_existing_flows: bool,
    /// Shortest time an address learned from DNS stays blocked, whatever the TTL said.
    #[serde(default = "default_dns_floor")]
    pub dns_block_floor_secs: u64,
    /// Refuse every QUIC Initial in enforce mode, so that every browser flow uses TCP where
    /// the SNI is visible.
    #[serde(default)]
    pub block_quic: bool,
    /// What the kernel does when the daemon is gone for good (no heartbeat for
    /// `heartbeat_timeout_secs`): `true` stops enforcing (fail-open, users keep working),
    /// `false` keeps the last verdicts forever (fail-closed).
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default = "default_heartbeat_timeout")]
    pub heartbeat_timeout_secs: u64,
    /// Answer users' DNS queries for unsanctioned apps' domains with NXDOMAIN (in the kernel,
    /// UDP port 53; enforce mode).
    #[serde(default)]
    pub refuse_dns: bool,
    /// Answer NXDOMAIN for the DoH canary domains (`doh_canary_domains`), so that browsers
    /// and devices that check them keep using the gateway's DNS (enforce mode).
    #[serde(default = "yes")]
    pub refuse_doh_canary: bool,
    /// The canary domains: Firefox's, and Apple's iCloud Private Relay ones.
    #[serde(default = "default_doh_canaries")]
    pub doh_canary_domains: Vec<String>,
    /// Port-443 flows whose name the gateway cannot read (no ClientHello at the start of the
    /// stream, no readable SNI, a hello hidden in IP fragments or split into more TLS records
    /// than the probes follow, a QUIC Initial that never reached userspace): `pass` lets them
    /// through, counted; `block` resets them (enforce mode). See README.
    #[serde(default)]
    pub unreadable: UnreadableAction,
}

/// `[enforcement] unreadable`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnreadableAction {
    #[default]
    Pass,
    Block,
}

impl UnreadableAction {
    pub fn as_str(self) -> &'static str {
        match self {
            UnreadableAction::Pass => "pass",
            UnreadableAction::Block => "block",
        }
    }
}

impl Default for EnforcementConfig {
    fn default() -> Self {
        EnforcementConfig {
            cut_existing_flows: true,
            dns_block_floor_secs: default_dns_floor(),
            block_quic: false,
            fail_open: false,
            heartbeat_timeout_secs: default_heartbeat_timeout(),
            refuse_dns: false,
            refuse_doh_canary: true,
            doh_canary_domains: default_doh_canaries(),
            unreadable: UnreadableAction::Pass,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_dns_floor() -> u64 {
    300
}
fn default_heartbeat_timeout() -> u64 {
    30
}
fn default_doh_canaries() -> Vec<String> {
    [
        "use-application-dns.net",
        "mask.icloud.com",
        "mask-h2.icloud.com",
    ]
    .map(String::from)
    .to_vec()
}

/// One name verdict as written to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NameEntry {
    /// `None`: the name is refused in DNS only.
    action: Option<Action>,
    app: u32,
    subdomains: bool,
    refuse_dns: bool,
}

/// What a sync changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    pub names_set: usize,
    pub names_removed: usize,
    pub ranges_set: usize,
    pub ranges_removed: usize,
    pub prefixes_removed: usize,
}

pub struct Enforcer {
    enforce: bool,
    cfg: EnforcementConfig,
    /// Small stable numbers for app ids (the kernel's verdicts carry a u32).
    app_numbers: HashMap<String, u32>,
    names: BTreeMap<String, NameEntry>,
    /// Catalog IP ranges of unsanctioned apps, as written to the kernel.
    ranges: BTreeMap<(IpAddr, u8), u32>,
    /// Addresses blocked because DNS named an unsanctioned app: app, until.
    learned: HashMap<IpAddr, (String, Instant)>,
    pub flows_blocked: u64,
}

/// The app and decision for a name.
pub fn decide_name<'c>(
    catalog: &'c Catalog,
    tags: &TagBook,
    name: &str,
    enforce: bool,
) -> Option<(&'c str, Decision)> {
    let m = catalog.classify_name(name)?;
    Some((m.app.id.as_str(), tags.decide(catalog, &m.app.id, enforce)))
}

impl Enforcer {
    pub fn new(enforce: bool, cfg: EnforcementConfig, catalog: &Catalog) -> Enforcer {
        let mut ids: Vec<&str> = catalog.apps().map(|a| a.id.as_str()).collect();
        ids.sort_unstable();
        Enforcer {
            enforce,
            cfg,
            app_numbers: ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.to_string(), u32::try_from(i + 1).unwrap_or(u32::MAX)))
                .collect(),
            names: BTreeMap::new(),
            ranges: BTreeMap::new(),
            learned: HashMap::new(),
            flows_blocked: 0,
        }
    }

    fn number(&self, app: &str) -> u32 {
        self.app_numbers.get(app).copied().unwrap_or(0)
    }

    /// Writes the enforcement options (fail-open, QUIC refusal, unreadable flows) once at
    /// start.
    pub fn apply_options(&self, dp: &mut Dataplane) -> Result<(), DataplaneError> {
        dp.verdicts()
            .set_enforce_options(tollgate_dataplane::EnforceOptions {
                fail_open: self.cfg.fail_open,
                heartbeat_timeout: Duration::from_secs(self.cfg.heartbeat_timeout_secs.max(1)),
                block_quic: self.cfg.block_quic && self.enforce,
                // Also in monitor mode, where the probes count what they would refuse.
                refuse_dns: self.cfg.refuse_dns || self.cfg.refuse_doh_canary,
            })?;
        // Also in monitor mode, where the probes count what they would refuse.
        dp.verdicts().set_unreadable(match self.cfg.unreadable {
            UnreadableAction::Pass => tollgate_dataplane::Unreadable::Pass,
            UnreadableAction::Block => tollgate_dataplane::Unreadable::Block,
        })
    }

    /// `[enforcement] unreadable`, for the status.
    pub fn unreadable(&self) -> UnreadableAction {
        self.cfg.unreadable
    }

    /// The name verdicts the tags call for.
    fn wanted_names(&self, catalog: &Catalog, tags: &TagBook) -> BTreeMap<String, NameEntry> {
        let mut want = BTreeMap::new();
        for app in tags.unsanctioned(catalog) {
            let n = self.number(&app.id);
            for rule in &app.domains {
                let (name, subdomains) = match rule.strip_prefix("*.") {
                    Some(suffix) => (suffix, true),
                    None => (rule.as_str(), false),
                };
                let e = want
                    .entry(name.trim_end_matches('.').to_ascii_lowercase())
                    .or_insert(NameEntry {
                        action: Some(Action::Block),
                        app: n,
                        subdomains,
                        refuse_dns: self.cfg.refuse_dns,
                    });
                e.subdomains |= subdomains;
            }
        }
        // Other apps' rules below a blocked suffix stay reachable: an allow exception is
        // more specific, and the probes take the most specific name.
        let blocked: Vec<(String, bool)> = want
            .iter()
            .map(|(k, e)| (k.clone(), e.subdomains))
            .collect();
        for app in catalog.apps() {
            if tags.decide(catalog, &app.id, true) != Decision::Allow {
                continue;
            }
            for rule in &app.domains {
                let name = rule.trim_start_matches("*.").to_ascii_lowercase();
                let under_block = blocked.iter().any(|(b, sub)| {
                    *sub && name.len() > b.len()
                        && name.ends_with(b.as_str())
                        && name.as_bytes().get(name.len() - b.len() - 1) == Some(&b'.')
                });
                if under_block {
                    want.insert(
                        name,
                        NameEntry {
                            action: Some(Action::Allow),
                            app: self.number(&app.id),
                            subdomains: rule.starts_with("*."),
                            refuse_dns: false,
                        },
                    );
                }
            }
        }
        if self.cfg.refuse_doh_canary {
            for canary in &self.cfg.doh_canary_domains {
                let name = canary.trim_end_matches('.').to_ascii_lowercase();
                // A canary that is also an app's rule keeps that rule's decision.
                want.entry(name)
                    .and_modify(|e| e.refuse_dns = true)
                    .or_insert(NameEntry {
                        action: None,
                        app: 0,
                        subdomains: false,
                        refuse_dns: true,
                    });
            }
        }
        want
    }

    /// Brings the kernel's name verdicts in line with the tags, drops learned addresses of
    /// apps no longer unsanctioned, and commits (existing flows re-check on their next
    /// packet).
    pub fn sync(
        &mut self,
        dp: &mut Dataplane,
        catalog: &Catalog,
        tags: &TagBook,
    ) -> Result<SyncReport, DataplaneError> {
        let want = self.wanted_names(catalog, tags);
        let mut report = SyncReport::default();
        let mut w = dp.verdicts();
        for name in self.names.keys() {
            if !want.contains_key(name) {
                w.remove_name(name)?;
                report.names_removed += 1;
            }
        }
        for (name, entry) in &want {
            if self.names.get(name) != Some(entry) {
                w.set_name_rule(
                    name,
                    NameRule {
                        action: entry.action,
                        app_id: entry.app,
                        subdomains: entry.subdomains,
                        refuse_dns: entry.refuse_dns,
                    },
                )?;
                report.names_set += 1;
            }
        }
        // The catalog's published IP ranges of unsanctioned apps.
        let want_ranges: BTreeMap<(IpAddr, u8), u32> = tags
            .unsanctioned(catalog)
            .iter()
            .flat_map(|a| {
                let n = self.number(&a.id);
                a.ip_ranges
                    .iter()
                    .map(move |r| ((r.trunc().addr(), r.prefix_len()), n))
            })
            .collect();
        for (addr, len) in self.ranges.keys() {
            if !want_ranges.contains_key(&(*addr, *len)) {
                w.remove_prefix(*addr, *len)?;
                report.ranges_removed += 1;
            }
        }
        for ((addr, len), n) in &want_ranges {
            if self.ranges.get(&(*addr, *len)) != Some(n) {
                w.set_prefix(*addr, *len, Action::Block, *n, None)?;
                report.ranges_set += 1;
            }
        }
        self.ranges = want_ranges;
        let stale: Vec<IpAddr> = self
            .learned
            .iter()
            .filter(|(_, (app, _))| tags.decide(catalog, app, true) == Decision::Allow)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in stale {
            w.remove_prefix(ip, full_prefix(ip))?;
            self.learned.remove(&ip);
            report.prefixes_removed += 1;
        }
        w.commit()?;
        self.names = want;
        Ok(report)
    }

    /// A DNS answer mapped `ip` to `name` for `ttl`: block the address if the name is an
    /// unsanctioned app's.
    pub fn on_dns_answer(
        &mut self,
        dp: &mut Dataplane,
        catalog: &Catalog,
        tags: &TagBook,
        name: &str,
        ip: IpAddr,
        ttl: Duration,
    ) -> Result<(), DataplaneError> {
        let Some((app, decision)) = decide_name(catalog, tags, name, true) else {
            return Ok(());
        };
        if decision == Decision::Allow {
            return Ok(());
        }
        let keep = ttl.max(Duration::from_secs(self.cfg.dns_block_floor_secs));
        let number = self.number(app);
        dp.verdicts()
            .set_prefix(ip, full_prefix(ip), Action::Block, number, Some(keep))?;
        self.learned
            .insert(ip, (app.to_string(), Instant::now() + keep));
        Ok(())
    }

    /// Forgets learned addresses past their time (the kernel ignores expired entries too;
    /// this keeps the trie small).
    pub fn expire(&mut self, dp: &mut Dataplane) {
        let now = Instant::now();
        let gone: Vec<IpAddr> = self
            .learned
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(ip, _)| *ip)
            .collect();
        let mut w = dp.verdicts();
        for ip in gone {
            let _ = w.remove_prefix(ip, full_prefix(ip));
            self.learned.remove(&ip);
        }
    }

    /// Addresses currently blocked from DNS (persisted for `export blocklist --format nft`).
    pub fn learned_ips(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.learned.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// A flow was named in userspace: block it if its app is unsanctioned. Returns the
    /// decision and app for logging.
    pub fn on_named_flow<'c>(
        &mut self,
        dp: &mut Dataplane,
        catalog: &'c Catalog,
        tags: &TagBook,
        key: &tollgate_dataplane::abi::FlowKey,
        name: &str,
    ) -> Result<Option<(&'c str, Decision)>, DataplaneError> {
        let decided = decide_name(catalog, tags, name, self.enforce);
        match decided {
            Some((app, Decision::Block)) => {
                let number = self.number(app);
                let mut w = dp.verdicts();
                w.set_flow(key, Action::Block, number, None)?;
                // Flows cache their verdict until the generation changes.
                w.commit()?;
                self.flows_blocked += 1;
            }
            _ if key.proto == tollgate_dataplane::abi::PROTO_UDP => {
                // The kernel holds a new QUIC flow's answers until it has a verdict (or a
                // short timeout passes): release allowed flows at once.
                let number = decided.map_or(0, |(app, _)| self.number(app));
                dp.verdicts().set_flow(key, Action::Allow, number, None)?;
            }
            _ => {}
        }
        Ok(decided)
    }

    /// Whether the kernel itself blocks this name (a name verdict that resets the server
    /// side of an HTTP request), so that a block page sent to the user cannot race the
    /// origin's own answer.
    pub fn kernel_blocks_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let name = name.split(':').next().unwrap_or("");
        let mut suffix = name;
        loop {
            // DNS-only entries (canaries) decide no flow: a broader rule may.
            if let Some(e) = self.names.get(suffix)
                && e.action.is_some()
            {
                return e.action == Some(Action::Block) && (suffix == name || e.subdomains);
            }
            match suffix.split_once('.') {
                Some((_, rest)) => suffix = rest,
                None => return false,
            }
        }
    }

    pub fn enforcing(&self) -> bool {
        self.enforce
    }

    pub fn cut_existing_flows(&self) -> bool {
        self.cfg.cut_existing_flows
    }
}

fn full_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}
