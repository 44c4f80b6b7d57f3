//! The reader's side of a sharded capture import ([`crate::pcap`]): which flows are live,
//! kept as the one table of a single-threaded import would keep them (each flow's key and
//! last packet time), so that the reader makes the table-wide decisions every shard must
//! agree on: when the idle sweeps run and at which time, and which packets a full table
//! refuses. It mirrors [`FlowTable::flow_for`](super::FlowTable) step for step.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};

use super::{CanonKey, FlowTableLimits, SWEEP_EVERY};
use crate::packet::PacketView;
use crate::record::FlowRecord;

/// What the table does with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admitted {
    /// The flow table is full of live flows: the packet is refused (counted, not seen).
    Dropped,
    /// The packet goes to its flow: `hash` of the flow's canonical key picks the shard;
    /// `dns` for flows with port 53 on either end (every shard reads those).
    Flow { hash: u64, dns: bool },
}

#[derive(Debug)]
pub(crate) struct Mirror {
    max_flows: usize,
    max_finished: usize,
    idle: TimeDelta,
    /// Live flows and their last packet time.
    flows: HashMap<CanonKey, DateTime<Utc>, ahash::RandomState>,
    /// Picks the shard of a flow: random per import, so that no capture can aim its flows
    /// at one shard.
    shard_hash: ahash::RandomState,
    now: DateTime<Utc>,
    ops_since_sweep: u32,
    full_sweep_at: Option<DateTime<Utc>>,
    /// Flows finished by sweeps so far.
    finished: usize,
}

impl Mirror {
    pub(crate) fn new(limits: &FlowTableLimits) -> Self {
        Mirror {
            max_flows: limits.max_flows,
            max_finished: limits.max_finished,
            idle: TimeDelta::from_std(limits.idle_timeout).unwrap_or(TimeDelta::MAX),
            flows: HashMap::default(),
            shard_hash: ahash::RandomState::new(),
            now: DateTime::UNIX_EPOCH,
            ops_since_sweep: 0,
            full_sweep_at: None,
            finished: 0,
        }
    }

    /// The table's clock: the latest packet time seen.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// Whether more flows were finished than the table keeps: which ones a single table
    /// keeps then depends on its hash order, so no sharded import can match it.
    pub(crate) fn finished_overflowed(&self) -> bool {
        self.finished > self.max_finished
    }

    /// One decoded packet, as `FlowTable::flow_for` takes it: `sweep` is called with the
    /// time of each idle sweep the table would run before the packet, in order.
    pub(crate) fn admit(
        &mut self,
        pkt: &PacketView<'_>,
        sweep: &mut impl FnMut(DateTime<Utc>),
    ) -> Admitted {
        let ts = pkt.ts;
        if ts > self.now {
            self.now = ts;
        }
        self.ops_since_sweep = self.ops_since_sweep.saturating_add(1);
        if self.ops_since_sweep as usize >= self.flows.len().max(SWEEP_EVERY as usize) {
            self.ops_since_sweep = 0;
            self.sweep(sweep);
        }
        let (ck, _) = CanonKey::of(pkt.proto, (pkt.src, pkt.sport), (pkt.dst, pkt.dport));
        match self.flows.get_mut(&ck) {
            Some(last) => *last = (*last).max(ts),
            None => {
                // (`flow_for` refuses the flow before inserting it, sweeping a full table
                // at most once a second.)
                if self.flows.len() >= self.max_flows {
                    let now = self.now;
                    if self
                        .full_sweep_at
                        .is_none_or(|t| now >= t + TimeDelta::seconds(1))
                    {
                        self.full_sweep_at = Some(now);
                        self.sweep(sweep);
                    }
                    if self.flows.len() >= self.max_flows {
                        return Admitted::Dropped;
                    }
                }
                self.flows.insert(ck, ts);
            }
        }
        Admitted::Flow {
            hash: self.shard_hash.hash_one(ck),
            dns: ck.a.1 == 53 || ck.b.1 == 53,
        }
    }

    /// The flow of a record, as [`Mirror::admit`] tells it.
    pub(crate) fn flow_of(&self, r: &FlowRecord) -> Admitted {
        let (ck, _) = CanonKey::of(r.proto, (r.src, r.sport), (r.dst, r.dport));
        Admitted::Flow {
            hash: self.shard_hash.hash_one(ck),
            dns: ck.a.1 == 53 || ck.b.1 == 53,
        }
    }

    /// `FlowTable::expire` at the current time: idle flows are finished.
    fn sweep(&mut self, sweep: &mut impl FnMut(DateTime<Utc>)) {
        let (now, idle) = (self.now, self.idle);
        let before = self.flows.len();
        self.flows
            .retain(|_, last| last.checked_add_signed(idle).is_none_or(|t| t >= now));
        self.finished += before - self.flows.len();
        sweep(now);
    }
}
