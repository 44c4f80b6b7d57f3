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
//!    LPM tries for the record's TTL (at least `dns_block_floor_secs`, at most
//!    `dns_max_ttl_secs`), so clients without a readable SNI (ECH with an unrelated outer
//!    name, IP-only clients) are blocked too. An answer is evidence, not an order: only
//!    answers that match a query a user sent count (the flow table checks 5-tuple,
//!    transaction id and question), protected addresses ([`ProtectedAddrs`]: loopback,
//!    link-local, multicast, the gateway's own, `never_block`, private unless
//!    `dns_learn_private`) are never learned, each DNS client may add at most
//!    `dns_learn_per_client_per_min` new addresses a minute, and at most `dns_learned_max`
//!    addresses are held: past it the entries nearest their expiry are evicted first (the
//!    tries are LPM tries without LRU, so the budget stays below their capacity).
//!    Learned addresses persist in `state_dir/learned_ips.json` with their expiry, so a
//!    restarted daemon re-installs the live ones and removes the rest from the kernel.
//!
//! A restart converges on the config: [`Enforcer::reconcile`] reads the pinned name verdicts,
//! prefixes and flow verdicts back and removes what the config no longer wants before the
//! daemon says it is ready.
//!
//! 4. **DNS refusal** (`refuse_dns`): the probes read the question of users' DNS queries and
//!    answer NXDOMAIN themselves for unsanctioned apps' domains, so clients fail at once
//!    without an address. The DoH canary domains (`refuse_doh_canary`, on by default) get the
//!    same answer, which tells Firefox not to turn DNS over HTTPS on by itself and Apple
//!    devices not to use iCloud Private Relay, so that browsers keep using the gateway's DNS.
//!
//! In monitor mode the same verdicts are written: the probes count them as "would drop"
//! instead of dropping, and the daemon logs "would block".

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tollgate_catalog::{Catalog, IpNet, Match};
use tollgate_dataplane::{Action, Dataplane, DataplaneError, NameRule};
use tollgate_policy::{
    AppNumbers, Decision, NameAction, PlanOptions, ProtectedAddrs, Protection, TagBook, VerdictPlan,
};

/// The `[enforcement]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Longest time an address learned from DNS stays blocked, whatever the TTL said (an
    /// answer's TTL is its writer's choice, up to 136 years).
    #[serde(default = "default_dns_max_ttl")]
    pub dns_max_ttl_secs: u64,
    /// CIDRs never blocked or steered because of a DNS answer (the admin's own servers,
    /// the upstream resolver, management networks).
    #[serde(default)]
    pub never_block: Vec<IpNet>,
    /// Learn private addresses (RFC 1918, CGNAT, IPv6 ULA) from DNS answers. Off: a public
    /// app's name that resolves to an internal address (DNS rebinding) cannot take an
    /// internal host away from everyone.
    #[serde(default)]
    pub dns_learn_private: bool,
    /// Addresses learned from DNS held at once (the block tries hold 65,536 prefixes,
    /// shared with the catalog's ranges). Past it, the entries nearest expiry are evicted.
    #[serde(default = "default_dns_learned_max")]
    pub dns_learned_max: usize,
    /// New addresses one DNS client may have learned per minute (refreshes are free), so
    /// that one LAN host cannot fill the budget for everyone.
    #[serde(default = "default_dns_learn_rate")]
    pub dns_learn_per_client_per_min: u32,
    /// How long an address that a DNS answer named for an app under session control stays
    /// steered into the proxy without a fresh answer (while the daemon runs; with
    /// `fail_open = false` the kernel keeps steering it while the daemon is gone).
    #[serde(default = "default_steer_timeout")]
    pub steer_timeout_secs: u64,
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
            dns_max_ttl_secs: default_dns_max_ttl(),
            never_block: Vec::new(),
            dns_learn_private: false,
            dns_learned_max: default_dns_learned_max(),
            dns_learn_per_client_per_min: default_dns_learn_rate(),
            steer_timeout_secs: default_steer_timeout(),
            unreadable: UnreadableAction::Pass,
        }
    }
}

fn default_dns_max_ttl() -> u64 {
    86_400
}
fn default_dns_learned_max() -> usize {
    49_152
}
fn default_dns_learn_rate() -> u32 {
    600
}

/// Largest `dns_learned_max`: the block tries' capacity less room for catalog ranges.
pub const MAX_DNS_LEARNED: usize = 61_440;

/// Most DNS clients whose learning rate is tracked at once; past it the idlest are forgotten
/// (a forgotten client starts again with a full allowance).
const MAX_RATE_CLIENTS: usize = 4096;

fn yes() -> bool {
    true
}
fn default_dns_floor() -> u64 {
    300
}
fn default_steer_timeout() -> u64 {
    3600
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

/// What a sync changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    pub names_set: usize,
    pub names_removed: usize,
    pub ranges_set: usize,
    pub ranges_removed: usize,
    pub prefixes_removed: usize,
    /// Name verdicts that could not be written (map full): counted, the rest still synced.
    pub names_failed: usize,
    /// Entries of an earlier run removed at start (names, prefixes, flow verdicts).
    pub stale_removed: usize,
}

/// An address learned from a DNS answer.
#[derive(Debug, Clone)]
struct Learned {
    app: String,
    until: Instant,
}

/// One learned address as persisted in `learned_ips.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedRecord {
    pub ip: IpAddr,
    pub app: String,
    /// Unix seconds.
    pub expires: u64,
}

/// What DNS learning refused or evicted (for `tollgate status --json`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LearnStats {
    /// Answers naming a protected address (see [`ProtectedAddrs`]), not learned.
    pub protected: u64,
    /// New addresses refused because their client was over its per-minute allowance.
    pub rate_limited: u64,
    /// Learned addresses evicted for room (nearest expiry first).
    pub evicted: u64,
    /// Learned addresses removed from the kernel after their expiry.
    pub expired: u64,
    /// Block prefixes that could not be written.
    pub write_failed: u64,
}

/// The learned addresses within their budget. The block tries are LPM tries, which have no
/// LRU: a full trie refuses new entries. So the daemon keeps its own budget below their
/// capacity and, when it is spent, evicts the entries nearest their expiry first (they
/// would go soonest anyway); an entry being installed is never its own victim, so a fresh
/// answer always lands.
#[derive(Debug, Default)]
struct LearnedSet {
    max: usize,
    entries: HashMap<IpAddr, Learned>,
    /// The same, nearest expiry first (the eviction order).
    by_expiry: BTreeSet<(Instant, IpAddr)>,
}

impl LearnedSet {
    fn new(max: usize) -> LearnedSet {
        LearnedSet {
            max: max.max(1),
            ..LearnedSet::default()
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn get(&self, ip: &IpAddr) -> Option<&Learned> {
        self.entries.get(ip)
    }

    /// The entries to evict so that `ip` fits (none when it is already held).
    fn make_room(&self, ip: IpAddr) -> Vec<IpAddr> {
        if self.entries.contains_key(&ip) {
            return Vec::new();
        }
        let over = (self.entries.len() + 1).saturating_sub(self.max);
        self.by_expiry
            .iter()
            .take(over)
            .map(|(_, ip)| *ip)
            .collect()
    }

    fn insert(&mut self, ip: IpAddr, app: &str, until: Instant) {
        self.remove(ip);
        self.entries.insert(
            ip,
            Learned {
                app: app.to_string(),
                until,
            },
        );
        self.by_expiry.insert((until, ip));
    }

    fn remove(&mut self, ip: IpAddr) {
        if let Some(l) = self.entries.remove(&ip) {
            self.by_expiry.remove(&(l.until, ip));
        }
    }

    /// Entries whose expiry is at or before `now`.
    fn expired(&self, now: Instant) -> Vec<IpAddr> {
        self.by_expiry
            .iter()
            .take_while(|(until, _)| *until <= now)
            .map(|(_, ip)| *ip)
            .collect()
    }

    fn iter(&self) -> impl Iterator<Item = (&IpAddr, &Learned)> {
        self.entries.iter()
    }
}

/// A token bucket per DNS client.
#[derive(Debug, Clone, Copy)]
struct Allowance {
    tokens: f64,
    at: Instant,
}

pub struct Enforcer {
    enforce: bool,
    cfg: EnforcementConfig,
    /// Small stable numbers for app ids (the kernel's verdicts carry a u32).
    numbers: AppNumbers,
    /// The name verdicts and catalog prefixes the kernel holds (as written by [`Enforcer::sync`]).
    held: VerdictPlan,
    /// Addresses blocked because DNS named an unsanctioned app.
    learned: LearnedSet,
    protected: ProtectedAddrs,
    allowances: HashMap<IpAddr, Allowance>,
    pub learn_stats: LearnStats,
    /// Apps under session control: their domain rules go to the kernel flagged, so that the
    /// probes refuse a direct flow whose hello names them and hold DNS answers for them.
    session_apps: HashSet<String>,
    /// Flows blocked by a verdict written from userspace (names the kernel could not read).
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
        Enforcer {
            enforce,
            numbers: AppNumbers::new(catalog),
            held: VerdictPlan::default(),
            learned: LearnedSet::new(cfg.dns_learned_max),
            protected: ProtectedAddrs::new(cfg.never_block.clone(), cfg.dns_learn_private),
            allowances: HashMap::new(),
            learn_stats: LearnStats::default(),
            session_apps: HashSet::new(),
            cfg,
            flows_blocked: 0,
        }
    }

    /// A new catalog (custom apps or catalog settings changed by a reload or a bundle): its
    /// new apps get numbers; the next [`Enforcer::sync`] writes the verdicts it implies.
    pub fn set_catalog(&mut self, catalog: &Catalog) {
        self.numbers.extend(catalog);
    }

    /// The gateway's own addresses (read again by the daemon on reload): never learned.
    pub fn set_own_addresses(&mut self, own: impl IntoIterator<Item = IpAddr>) {
        self.protected.set_own(own);
    }

    /// Why `ip` may not be blocked or steered because of a DNS answer, if it may not.
    pub fn protection(&self, ip: IpAddr) -> Option<Protection> {
        self.protected.check(ip).err()
    }

    /// Longest time a learned entry lives.
    pub fn max_ttl(&self) -> Duration {
        Duration::from_secs(self.cfg.dns_max_ttl_secs.max(1))
    }

    /// Addresses learned from DNS held now.
    pub fn learned_len(&self) -> usize {
        self.learned.len()
    }

    /// Whether a DNS client may have one more address learned now (its per-minute
    /// allowance); counts a refusal. Refreshing an address already learned costs nothing.
    pub fn allow_learning(&mut self, client: IpAddr, ip: IpAddr) -> bool {
        if self.learned.get(&ip).is_some() {
            return true;
        }
        let rate = f64::from(self.cfg.dns_learn_per_client_per_min);
        let now = Instant::now();
        if self.allowances.len() >= MAX_RATE_CLIENTS && !self.allowances.contains_key(&client) {
            // Clients idle for a minute are full again anyway: forget them; failing that,
            // forget everyone (each starts again with a full allowance).
            self.allowances
                .retain(|_, a| now.duration_since(a.at) < Duration::from_secs(60));
            if self.allowances.len() >= MAX_RATE_CLIENTS {
                self.allowances.clear();
            }
        }
        let a = self.allowances.entry(client).or_insert(Allowance {
            tokens: rate,
            at: now,
        });
        let refill = now.duration_since(a.at).as_secs_f64() * rate / 60.0;
        a.tokens = (a.tokens + refill).min(rate);
        a.at = now;
        if a.tokens >= 1.0 {
            a.tokens -= 1.0;
            true
        } else {
            self.learn_stats.rate_limited += 1;
            false
        }
    }

    fn number(&self, app: &str) -> u32 {
        self.numbers.of(app)
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

    /// The apps under session control (their names are flagged at the next [`Enforcer::sync`]).
    pub fn set_session_apps(&mut self, apps: HashSet<String>) {
        self.session_apps = apps;
    }

    /// Brings the kernel's name verdicts and catalog prefixes in line with the tags (the
    /// [`VerdictPlan`]'s diff against what the kernel holds), drops learned addresses of apps
    /// no longer unsanctioned, and commits (existing flows re-check on their next packet).
    pub fn sync(
        &mut self,
        dp: &mut Dataplane,
        catalog: &Catalog,
        tags: &TagBook,
    ) -> Result<SyncReport, DataplaneError> {
        let want = VerdictPlan::build(
            catalog,
            tags,
            &self.numbers,
            PlanOptions {
                refuse_dns: self.cfg.refuse_dns,
                refuse_doh_canary: self.cfg.refuse_doh_canary,
                doh_canary_domains: &self.cfg.doh_canary_domains,
                session_apps: &self.session_apps,
            },
        );
        let diff = want.diff(&self.held);
        let mut report = SyncReport::default();
        let mut w = dp.verdicts();
        for name in &diff.names_removed {
            if w.remove_name(name).is_ok() {
                self.held.names.remove(name);
                report.names_removed += 1;
            }
        }
        // A full map must not stop the sync half-way (the removals and ranges below still
        // matter): each failure is counted and logged by the caller.
        for (name, v) in &diff.names_set {
            let rule = NameRule {
                action: v.action.map(|a| match a {
                    NameAction::Block => Action::Block,
                    NameAction::Allow => Action::Allow,
                }),
                app_id: v.app,
                subdomains: v.subdomains,
                refuse_dns: v.refuse_dns,
                session: v.session,
            };
            match w.set_name_rule(name, rule) {
                Ok(()) => {
                    self.held.names.insert(name.clone(), *v);
                    report.names_set += 1;
                }
                Err(e) => {
                    if report.names_failed == 0 {
                        tracing::error!("writing name verdict {name}: {e}");
                    }
                    report.names_failed += 1;
                }
            }
        }
        for &(addr, len) in &diff.ranges_removed {
            w.remove_prefix(addr, len)?;
            self.held.ranges.remove(&(addr, len));
            report.ranges_removed += 1;
        }
        for &((addr, len), n) in &diff.ranges_set {
            w.set_prefix(addr, len, Action::Block, n, None)?;
            self.held.ranges.insert((addr, len), n);
            report.ranges_set += 1;
        }
        let stale: Vec<IpAddr> = self
            .learned
            .iter()
            .filter(|(_, l)| tags.decide(catalog, &l.app, true) == Decision::Allow)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in stale {
            w.remove_prefix(ip, full_prefix(ip))?;
            self.forget(ip);
            report.prefixes_removed += 1;
        }
        w.commit()?;
        Ok(report)
    }

    /// At start, after [`Enforcer::sync`] and [`Enforcer::restore_learned`]: removes what an
    /// earlier run left in the pinned maps that the config no longer wants (name verdicts,
    /// prefixes, block verdicts of flows whose app is now allowed) and commits, so that an
    /// app sanctioned while the daemon was down is allowed from its next packet.
    pub fn reconcile(
        &mut self,
        dp: &mut Dataplane,
        catalog: &Catalog,
        tags: &TagBook,
    ) -> Result<SyncReport, DataplaneError> {
        let mut report = SyncReport::default();
        let mut w = dp.verdicts();
        let wanted: HashSet<u64> = self
            .held
            .names
            .keys()
            .map(|n| tollgate_dataplane::name_key(n).hash)
            .collect();
        for key in w.name_keys()? {
            if !wanted.contains(&key.hash) {
                w.remove_name_key(&key)?;
                report.stale_removed += 1;
            }
        }
        for (addr, len, _) in w.prefixes()? {
            let learned = len == full_prefix(addr) && self.learned.get(&addr).is_some();
            if !learned && !self.held.ranges.contains_key(&(addr, len)) {
                w.remove_prefix(addr, len)?;
                report.stale_removed += 1;
            }
        }
        // Flow verdicts carry the app's number: a block of an app the tags now allow goes
        // (allow verdicts, which release held QUIC flows, stay).
        let blocked: HashSet<u32> = tags
            .unsanctioned(catalog)
            .iter()
            .map(|a| self.number(&a.id))
            .collect();
        for (key, v) in w.flow_verdicts()? {
            let is_block = v.action == tollgate_dataplane::abi::ACTION_BLOCK
                || v.action == tollgate_dataplane::abi::ACTION_DROP;
            if is_block && !blocked.contains(&v.app_id) {
                w.clear_flow(&key)?;
                report.stale_removed += 1;
            }
        }
        w.commit()?;
        Ok(report)
    }

    /// Re-installs learned addresses persisted by an earlier run that are still live, still
    /// an unsanctioned app's, and not protected; returns how many. The others are not
    /// installed (and [`Enforcer::reconcile`] removes them from the kernel).
    pub fn restore_learned(
        &mut self,
        dp: &mut Dataplane,
        catalog: &Catalog,
        tags: &TagBook,
        records: &[LearnedRecord],
    ) -> usize {
        let now = SystemTime::now();
        let mut n = 0;
        for r in records {
            let Some(left) = SystemTime::UNIX_EPOCH
                .checked_add(Duration::from_secs(r.expires))
                .and_then(|t| t.duration_since(now).ok())
            else {
                continue;
            };
            if catalog.app(&r.app).is_none()
                || tags.decide(catalog, &r.app, true) == Decision::Allow
                || self.protected.check(r.ip).is_err()
            {
                continue;
            }
            if self
                .install(dp, &r.app, r.ip, left.min(self.max_ttl()))
                .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// The learned addresses with their wall-clock expiry, for `learned_ips.json`.
    pub fn learned_records(&self) -> Vec<LearnedRecord> {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut v: Vec<LearnedRecord> = self
            .learned
            .iter()
            .map(|(ip, l)| LearnedRecord {
                ip: *ip,
                app: l.app.clone(),
                expires: (wall + l.until.saturating_duration_since(now))
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            })
            .collect();
        v.sort_by_key(|r| r.ip);
        v
    }

    fn forget(&mut self, ip: IpAddr) {
        self.learned.remove(ip);
    }

    /// Writes a learned address into the block trie for `keep`, within the budget: when it
    /// is spent, the entries nearest expiry are evicted first (the new entry itself never
    /// is), and each eviction is counted.
    fn install(
        &mut self,
        dp: &mut Dataplane,
        app: &str,
        ip: IpAddr,
        keep: Duration,
    ) -> Result<(), DataplaneError> {
        for victim in self.learned.make_room(ip) {
            let _ = dp.verdicts().remove_prefix(victim, full_prefix(victim));
            self.learned.remove(victim);
            self.learn_stats.evicted += 1;
        }
        let number = self.number(app);
        if let Err(e) =
            dp.verdicts()
                .set_prefix(ip, full_prefix(ip), Action::Block, number, Some(keep))
        {
            self.learn_stats.write_failed += 1;
            return Err(e);
        }
        self.learned.insert(ip, app, Instant::now() + keep);
        Ok(())
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
        if self.protected.check(ip).is_err() {
            self.learn_stats.protected += 1;
            return Ok(());
        }
        let keep = ttl
            .min(self.max_ttl())
            .max(Duration::from_secs(self.cfg.dns_block_floor_secs))
            .min(self.max_ttl());
        // A refresh must not shorten an entry a longer answer made.
        let keep = match self.learned.get(&ip) {
            Some(l) if l.app == app => keep.max(l.until.saturating_duration_since(Instant::now())),
            _ => keep,
        };
        self.install(dp, app, ip, keep)
    }

    /// Forgets learned addresses past their time (the kernel ignores expired entries too;
    /// this keeps the trie small).
    pub fn expire(&mut self, dp: &mut Dataplane) {
        let now = Instant::now();
        for ip in self.learned.expired(now) {
            if dp.verdicts().remove_prefix(ip, full_prefix(ip)).is_ok() {
                self.forget(ip);
                self.learn_stats.expired += 1;
            }
        }
    }

    /// A flow was named in userspace and the name classified (`classified`, the caller's
    /// one lookup): block it if its app is unsanctioned. Returns the decision and app for
    /// logging.
    pub fn on_named_flow<'c>(
        &mut self,
        dp: &mut Dataplane,
        catalog: &Catalog,
        tags: &TagBook,
        key: &tollgate_dataplane::abi::FlowKey,
        classified: Option<&Match<'c>>,
    ) -> Result<Option<(&'c str, Decision)>, DataplaneError> {
        let decided = classified.map(|m| {
            let app: &'c str = m.app.id.as_str();
            (app, tags.decide(catalog, app, self.enforce))
        });
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
        self.held.blocks_name(name)
    }

    pub fn cut_existing_flows(&self) -> bool {
        self.cfg.cut_existing_flows
    }
}

fn full_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x5db8_0000 + i))
    }

    #[test]
    fn learned_budget_evicts_nearest_expiry_first_and_keeps_the_new_entry() {
        let t0 = Instant::now();
        let mut set = LearnedSet::new(4);
        // Expiries out of insertion order: 30, 10, 40, 20 s.
        for (i, secs) in [(1, 30), (2, 10), (3, 40), (4, 20)] {
            assert!(set.make_room(ip(i)).is_empty());
            set.insert(ip(i), "dropbox", t0 + Duration::from_secs(secs));
        }
        // Full: a new entry evicts the one nearest expiry (ip 2, 10 s), even when the new
        // entry itself expires sooner than all of them.
        assert_eq!(set.make_room(ip(5)), vec![ip(2)]);
        set.remove(ip(2));
        set.insert(ip(5), "dropbox", t0 + Duration::from_secs(1));
        assert_eq!(set.len(), 4);
        assert!(set.get(&ip(5)).is_some());
        // Next victim: the new short one (1 s), then ip 4 (20 s).
        assert_eq!(set.make_room(ip(6)), vec![ip(5)]);
        // Refreshing an entry already held needs no room and moves its expiry.
        assert!(set.make_room(ip(1)).is_empty());
        set.insert(ip(1), "dropbox", t0 + Duration::from_secs(100));
        assert_eq!(set.len(), 4);
        assert_eq!(
            set.expired(t0 + Duration::from_secs(35)),
            vec![ip(5), ip(4)]
        );
    }
}
