//! Folding trace events into packet counts per flow, chain, rule and verdict.

use std::collections::HashMap;

use tracer_ebpf::{FlowId, MAX_VXLAN_PORTS};

use super::{
    event::{TraceEvent, TraceKind},
    table::TABLE_PREFIX,
};
use crate::rules::Family;

/// Where and how one base chain decided about packets of one flow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VerdictKey {
    /// The packet's flow (all zero if its headers were never seen).
    pub flow: FlowId,
    pub family: Option<Family>,
    pub table: String,
    /// The chain of the deciding rule: a regular chain when the verdict came
    /// from a rule jumped to, else the base chain.
    pub chain: String,
    /// The deciding rule; `None` when the base chain's policy decided.
    pub rule_handle: Option<u64>,
    /// `NF_DROP`, `NF_ACCEPT`, `NF_QUEUE` or `NF_STOLEN`. A rejected packet is `NF_DROP`.
    pub verdict: i32,
}

/// Counts of packets per [`VerdictKey`], folded from trace events.
///
/// Every base chain a traced packet passes ends in one terminal verdict, so a
/// packet counts once per base chain (table and hook) it went through: an
/// `accept` in each until, possibly, one `drop`, which is its fate. tracer's
/// own `tracer_*` table is left out.
#[derive(Debug, Clone)]
pub struct Verdicts {
    vxlan_ports: [u16; MAX_VXLAN_PORTS],
    /// Flow of the packet each trace id is in a base chain of, from the
    /// event that carried its headers; forgotten at the chain's verdict.
    pub(super) open: HashMap<u32, FlowId>,
    counts: HashMap<VerdictKey, u64>,
}

impl Verdicts {
    /// `vxlan_ports`: UDP ports whose packets get their VNI in the flow, as for the TC programs.
    pub fn new(vxlan_ports: [u16; MAX_VXLAN_PORTS]) -> Verdicts {
        Verdicts {
            vxlan_ports,
            open: HashMap::new(),
            counts: HashMap::new(),
        }
    }

    /// Folds events in, in the order they were received.
    pub fn add(&mut self, events: &[TraceEvent]) {
        for ev in events {
            if let Some(flow) = ev.flow(&self.vxlan_ports) {
                if self.open.len() >= 1 << 16 {
                    // Events lost before their verdict would otherwise pile up.
                    self.open.clear();
                }
                self.open.insert(ev.id, flow);
            }
            let Some(verdict) = ev.terminal_verdict() else {
                continue;
            };
            let flow = self.open.remove(&ev.id).unwrap_or_default();
            if ev.table.starts_with(TABLE_PREFIX) {
                continue;
            }
            let key = VerdictKey {
                flow,
                family: ev.family,
                table: ev.table.clone(),
                chain: ev.chain.clone(),
                rule_handle: match ev.kind {
                    TraceKind::Policy => None,
                    _ => ev.rule_handle,
                },
                verdict,
            };
            *self.counts.entry(key).or_default() += 1;
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> &HashMap<VerdictKey, u64> {
        &self.counts
    }

    /// The counts so far, leaving none (for per-interval reports).
    pub fn take(&mut self) -> HashMap<VerdictKey, u64> {
        std::mem::take(&mut self.counts)
    }
}
