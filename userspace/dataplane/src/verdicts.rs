//! Writing decisions into the probes' verdict maps. One writer: the task that owns
//! the [`crate::Dataplane`]. Every change becomes visible to existing flows after
//! [`VerdictWriter::commit`], which bumps the config generation so that each flow looks the maps
//! up again on its next packet (flows cache their verdict between generations).

use std::{net::IpAddr, time::Duration};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap as BpfHashMap, MapData,
        lpm_trie::{Key, LpmTrie},
    },
};
use tollgate_common::{
    self as abi, Config, FlowKey, FlowVerdict, IpVerdict, NameKey, NameVerdict, name_hash,
};

use crate::error::{DataplaneError, map_err, map_mut};

/// What to do with matching packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Pass, and stop looking further (an exception to a broader block).
    Allow,
    /// Drop with a clean failure: a TCP reset to the user, an ICMP port unreachable for
    /// IPv4 UDP (QUIC falls back to TCP at once); IPv6 UDP is dropped.
    Block,
    /// Drop silently.
    Drop,
    /// Refused by session control in every mode (monitor too), answered like
    /// [`Action::Block`]; lifted only by fail-open with the daemon gone. For flow verdicts.
    Refuse,
}

impl Action {
    fn code(self) -> u32 {
        match self {
            Action::Allow => abi::ACTION_ALLOW,
            Action::Block => abi::ACTION_BLOCK,
            Action::Drop => abi::ACTION_DROP,
            Action::Refuse => abi::ACTION_REFUSE,
        }
    }
}

/// Enforcement behaviour that is not a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnforceOptions {
    /// When the daemon's heartbeat is older than `heartbeat_timeout`, stop enforcing
    /// (fail-open). `false`: the last verdicts stay enforced while the daemon is gone.
    pub fail_open: bool,
    pub heartbeat_timeout: Duration,
    /// Refuse every QUIC Initial (enforce mode) so that browsers use TCP, where names are seen.
    pub block_quic: bool,
    /// Read the question of users' DNS queries (UDP port 53) and answer NXDOMAIN for names
    /// whose verdict says [`NameRule::refuse_dns`]. Off: DNS queries cost nothing extra.
    pub refuse_dns: bool,
}

/// What happens to a port-443 flow whose name the probes cannot read (a stream that does not
/// start with a ClientHello, a hello without a readable SNI, one hidden in IP fragments or in
/// more TLS records than the probes follow, a lost reassembly state, a QUIC Initial userspace
/// never got).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unreadable {
    /// Counted and let through.
    #[default]
    Pass,
    /// Counted and reset (enforce mode).
    Block,
}

/// A decision for a DNS name, as the probes match it against SNIs, HTTP Hosts and (with
/// [`EnforceOptions::refuse_dns`]) DNS questions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NameRule {
    /// What flows to the name get; `None` decides no flow (a name refused in DNS only).
    pub action: Option<Action>,
    pub app_id: u32,
    /// The rule also covers every name below this one.
    pub subdomains: bool,
    /// DNS queries for the name get an NXDOMAIN answer from the probes.
    pub refuse_dns: bool,
    /// The name belongs to an app under session control: with
    /// [`VerdictWriter::set_session_control`] on, a ClientHello naming it on a direct flow is
    /// reset (the client's retry is steered) and DNS answers for it are held until the daemon
    /// has steered their addresses.
    pub session: bool,
}

/// CLOCK_MONOTONIC now, in ns (the probes' clock).
pub fn monotonic_ns() -> u64 {
    crate::event::KernelClock::now().mono_ns()
}

fn expiry(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |t| {
        monotonic_ns().saturating_add(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX))
    })
}

/// Normalises a DNS name for [`name_hash`]: ASCII lower case, no trailing dot.
pub fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The key a name's verdict is stored under.
pub fn name_key(name: &str) -> NameKey {
    NameKey {
        hash: name_hash(normalize_name(name).as_bytes()),
    }
}

/// Borrowed access to the verdict maps.
pub struct VerdictWriter<'a> {
    pub(crate) ebpf: &'a mut Ebpf,
}

impl VerdictWriter<'_> {
    fn config(&mut self, f: impl FnOnce(&mut Config)) -> Result<(), DataplaneError> {
        let mut cfg: Array<&mut MapData, Config> =
            Array::try_from(map_mut(self.ebpf, abi::MAP_CONFIG)?)
                .map_err(map_err(abi::MAP_CONFIG))?;
        let mut c = cfg.get(&0, 0).map_err(map_err(abi::MAP_CONFIG))?;
        f(&mut c);
        cfg.set(0, c, 0).map_err(map_err(abi::MAP_CONFIG))
    }

    /// Makes every change since the last commit visible to existing flows.
    pub fn commit(&mut self) -> Result<(), DataplaneError> {
        self.config(|c| {
            c.generation = c.generation.wrapping_add(1);
            if c.generation == 0 {
                c.generation = 1;
            }
        })
    }

    /// Sets fail-open/closed and QUIC refusal.
    pub fn set_enforce_options(&mut self, o: EnforceOptions) -> Result<(), DataplaneError> {
        self.config(|c| {
            c.fail_open = u32::from(o.fail_open);
            c.heartbeat_timeout_ns =
                u64::try_from(o.heartbeat_timeout.as_nanos()).unwrap_or(u64::MAX);
            c.block_quic = u32::from(o.block_quic);
            if o.refuse_dns {
                c.flags |= abi::CONFIG_F_REFUSE_DNS;
            } else {
                c.flags &= !abi::CONFIG_F_REFUSE_DNS;
            }
        })?;
        self.commit()
    }

    /// Whether QUIC flows without a verdict are held (on by default). In enforce mode the
    /// probes drop packets toward the user of a flow whose client sent a QUIC Initial until a
    /// flow verdict for it exists ([`VerdictWriter::set_flow`], no commit needed) or
    /// [`abi::QUIC_HOLD_NS`] has passed since its first packet; so a fast server cannot
    /// complete the handshake of an app that userspace is about to block. With the hold on,
    /// the daemon must write [`Action::Allow`] for the QUIC flows it lets through, or each of
    /// them waits out the timeout.
    pub fn set_quic_hold(&mut self, hold: bool) -> Result<(), DataplaneError> {
        self.config(|c| {
            if hold {
                c.flags &= !abi::CONFIG_F_NO_QUIC_HOLD;
            } else {
                c.flags |= abi::CONFIG_F_NO_QUIC_HOLD;
            }
        })
    }

    /// Turns the probes' session-control checks on or off ([`abi::CONFIG_F_SESSION`]): on
    /// while the session proxy runs.
    pub fn set_session_control(&mut self, on: bool) -> Result<(), DataplaneError> {
        self.config(|c| {
            if on {
                c.flags |= abi::CONFIG_F_SESSION;
            } else {
                c.flags &= !abi::CONFIG_F_SESSION;
            }
        })
    }

    /// What the probes do with a port-443 flow from a user whose name they cannot read
    /// (`[enforcement] unreadable`): [`Unreadable::Block`] resets it in enforce mode (and
    /// drops IP fragments and packets they cannot parse down to a port); [`Unreadable::Pass`]
    /// lets it through. Both count it (`unreadable_*` counters).
    pub fn set_unreadable(&mut self, u: Unreadable) -> Result<(), DataplaneError> {
        self.config(|c| match u {
            Unreadable::Block => c.flags |= abi::CONFIG_F_UNREADABLE_BLOCK,
            Unreadable::Pass => c.flags &= !abi::CONFIG_F_UNREADABLE_BLOCK,
        })?;
        self.commit()
    }

    /// Records that the daemon is alive (see [`EnforceOptions::fail_open`]).
    pub fn heartbeat(&mut self) -> Result<(), DataplaneError> {
        let now = monotonic_ns();
        self.config(|c| c.heartbeat_ns = now)
    }

    /// A decision for one flow (key from [`crate::PayloadEvent::flow_key`] or
    /// [`crate::FlowCounters::flow_key`]).
    pub fn set_flow(
        &mut self,
        key: &FlowKey,
        action: Action,
        app_id: u32,
        ttl: Option<Duration>,
    ) -> Result<(), DataplaneError> {
        let mut m: BpfHashMap<&mut MapData, FlowKey, FlowVerdict> =
            BpfHashMap::try_from(map_mut(self.ebpf, abi::MAP_FLOW_VERDICTS)?)
                .map_err(map_err(abi::MAP_FLOW_VERDICTS))?;
        let v = FlowVerdict {
            action: action.code(),
            app_id,
            expires_ns: expiry(ttl),
        };
        m.insert(*key, v, 0)
            .map_err(map_err(abi::MAP_FLOW_VERDICTS))
    }

    /// Forgets a flow's decision.
    pub fn clear_flow(&mut self, key: &FlowKey) -> Result<(), DataplaneError> {
        let mut m: BpfHashMap<&mut MapData, FlowKey, FlowVerdict> =
            BpfHashMap::try_from(map_mut(self.ebpf, abi::MAP_FLOW_VERDICTS)?)
                .map_err(map_err(abi::MAP_FLOW_VERDICTS))?;
        match m.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(abi::MAP_FLOW_VERDICTS)(e)),
        }
    }

    /// Blocks (or allows) every flow whose remote address is in `addr/prefix_len`.
    pub fn set_prefix(
        &mut self,
        addr: IpAddr,
        prefix_len: u8,
        action: Action,
        app_id: u32,
        ttl: Option<Duration>,
    ) -> Result<(), DataplaneError> {
        let v = IpVerdict {
            action: action.code(),
            app_id,
            expires_ns: expiry(ttl),
        };
        match addr {
            IpAddr::V4(a) => {
                let mut m: LpmTrie<&mut MapData, [u8; 4], IpVerdict> =
                    LpmTrie::try_from(map_mut(self.ebpf, abi::MAP_BLOCK_V4)?)
                        .map_err(map_err(abi::MAP_BLOCK_V4))?;
                let k = Key::new(u32::from(prefix_len.min(32)), a.octets());
                m.insert(&k, v, 0).map_err(map_err(abi::MAP_BLOCK_V4))
            }
            IpAddr::V6(a) => {
                let mut m: LpmTrie<&mut MapData, [u8; 16], IpVerdict> =
                    LpmTrie::try_from(map_mut(self.ebpf, abi::MAP_BLOCK_V6)?)
                        .map_err(map_err(abi::MAP_BLOCK_V6))?;
                let k = Key::new(u32::from(prefix_len.min(128)), a.octets());
                m.insert(&k, v, 0).map_err(map_err(abi::MAP_BLOCK_V6))
            }
        }
    }

    /// Removes a prefix.
    pub fn remove_prefix(&mut self, addr: IpAddr, prefix_len: u8) -> Result<(), DataplaneError> {
        let r = match addr {
            IpAddr::V4(a) => {
                let mut m: LpmTrie<&mut MapData, [u8; 4], IpVerdict> =
                    LpmTrie::try_from(map_mut(self.ebpf, abi::MAP_BLOCK_V4)?)
                        .map_err(map_err(abi::MAP_BLOCK_V4))?;
                m.remove(&Key::new(u32::from(prefix_len.min(32)), a.octets()))
            }
            IpAddr::V6(a) => {
                let mut m: LpmTrie<&mut MapData, [u8; 16], IpVerdict> =
                    LpmTrie::try_from(map_mut(self.ebpf, abi::MAP_BLOCK_V6)?)
                        .map_err(map_err(abi::MAP_BLOCK_V6))?;
                m.remove(&Key::new(u32::from(prefix_len.min(128)), a.octets()))
            }
        };
        match r {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(abi::MAP_BLOCK_V4)(e)),
        }
    }

    /// A decision for a server name (matched by the probes against the ClientHello SNI when
    /// they can read it; `subdomains` also covers every name below it).
    pub fn set_name(
        &mut self,
        name: &str,
        action: Action,
        app_id: u32,
        subdomains: bool,
    ) -> Result<(), DataplaneError> {
        self.set_name_rule(
            name,
            NameRule {
                action: Some(action),
                app_id,
                subdomains,
                refuse_dns: false,
                session: false,
            },
        )
    }

    /// A decision for a name, with every option (see [`NameRule`]).
    pub fn set_name_rule(&mut self, name: &str, rule: NameRule) -> Result<(), DataplaneError> {
        let mut m: BpfHashMap<&mut MapData, NameKey, NameVerdict> =
            BpfHashMap::try_from(map_mut(self.ebpf, abi::MAP_NAME_VERDICTS)?)
                .map_err(map_err(abi::MAP_NAME_VERDICTS))?;
        let key = NameKey {
            hash: name_hash(normalize_name(name).as_bytes()),
        };
        let mut flags = 0;
        if rule.subdomains {
            flags |= abi::NAME_F_SUBDOMAINS;
        }
        if rule.refuse_dns {
            flags |= abi::NAME_F_REFUSE_DNS;
        }
        if rule.session {
            flags |= abi::NAME_F_SESSION;
        }
        let v = NameVerdict {
            action: rule.action.map_or(abi::ACTION_NONE, Action::code),
            app_id: rule.app_id,
            flags,
            _pad: 0,
        };
        m.insert(key, v, 0).map_err(map_err(abi::MAP_NAME_VERDICTS))
    }

    /// The keys of every name verdict in the (pinned) map, for reconciling it at start with
    /// what the config wants (an earlier run may have left names the config no longer has).
    pub fn name_keys(&mut self) -> Result<Vec<NameKey>, DataplaneError> {
        let m: BpfHashMap<&mut MapData, NameKey, NameVerdict> =
            BpfHashMap::try_from(map_mut(self.ebpf, abi::MAP_NAME_VERDICTS)?)
                .map_err(map_err(abi::MAP_NAME_VERDICTS))?;
        Ok(m.keys().filter_map(Result::ok).collect())
    }

    /// Removes a name verdict by its key (see [`VerdictWriter::name_keys`]).
    pub fn remove_name_key(&mut self, key: &NameKey) -> Result<(), DataplaneError> {
        let mut m: BpfHashMap<&mut MapData, NameKey, NameVerdict> =
            BpfHashMap::try_from(map_mut(self.ebpf, abi::MAP_NAME_VERDICTS)?)
                .map_err(map_err(abi::MAP_NAME_VERDICTS))?;
        match m.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(abi::MAP_NAME_VERDICTS)(e)),
        }
    }

    /// Every block/allow prefix in the (pinned) tries with its verdict.
    pub fn prefixes(&mut self) -> Result<Vec<(IpAddr, u8, IpVerdict)>, DataplaneError> {
        let mut out = Vec::new();
        let m: LpmTrie<&mut MapData, [u8; 4], IpVerdict> =
            LpmTrie::try_from(map_mut(self.ebpf, abi::MAP_BLOCK_V4)?)
                .map_err(map_err(abi::MAP_BLOCK_V4))?;
        for (k, v) in m.iter().filter_map(Result::ok) {
            let len = u8::try_from(k.prefix_len()).unwrap_or(32);
            out.push((IpAddr::from(k.data()), len, v));
        }
        let m: LpmTrie<&mut MapData, [u8; 16], IpVerdict> =
            LpmTrie::try_from(map_mut(self.ebpf, abi::MAP_BLOCK_V6)?)
                .map_err(map_err(abi::MAP_BLOCK_V6))?;
        for (k, v) in m.iter().filter_map(Result::ok) {
            let len = u8::try_from(k.prefix_len()).unwrap_or(128);
            out.push((IpAddr::from(k.data()), len, v));
        }
        Ok(out)
    }

    /// Every per-flow verdict in the (pinned) map.
    pub fn flow_verdicts(&mut self) -> Result<Vec<(FlowKey, FlowVerdict)>, DataplaneError> {
        let m: BpfHashMap<&mut MapData, FlowKey, FlowVerdict> =
            BpfHashMap::try_from(map_mut(self.ebpf, abi::MAP_FLOW_VERDICTS)?)
                .map_err(map_err(abi::MAP_FLOW_VERDICTS))?;
        Ok(m.iter().filter_map(Result::ok).collect())
    }

    /// Removes a name's decision.
    pub fn remove_name(&mut self, name: &str) -> Result<(), DataplaneError> {
        let mut m: BpfHashMap<&mut MapData, NameKey, NameVerdict> =
            BpfHashMap::try_from(map_mut(self.ebpf, abi::MAP_NAME_VERDICTS)?)
                .map_err(map_err(abi::MAP_NAME_VERDICTS))?;
        let key = NameKey {
            hash: name_hash(normalize_name(name).as_bytes()),
        };
        match m.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(abi::MAP_NAME_VERDICTS)(e)),
        }
    }
}
