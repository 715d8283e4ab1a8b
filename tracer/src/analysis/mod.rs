//! What rows of several kinds say together: fragments lost per flow, the
//! MTU findings flows hit, which rule dropped a flow, and the path of each
//! conversation along its hops.

pub mod attribution;
pub mod benign;
pub mod explain;
pub mod fragments;
pub mod nat;
pub mod paths;

use crate::{
    output::{FlowRow, MtuRow, Report, Scope},
    rules::trace::TraceEvent,
    sys::netns::Netns,
    topology::{
        links::Links,
        mtu::{Finding, FlowObs},
    },
};
use attribution::Attributor;
use explain::Explain;

/// Completes the collectors' rows of a report.
pub struct Analysis {
    findings: Vec<Finding>,
    /// How the traced devices connect, to order the hops of paths.
    links: Links,
    /// Rule text for dropped verdicts, from rule counters.
    attributor: Option<Attributor>,
    /// Exact rule verdicts from nftables tracing (`--explain`).
    explain: Option<Explain>,
    /// Trace events the kernel could not deliver, per namespace, since start.
    explain_lost: Vec<u64>,
    /// Their sum at the last interval report.
    explain_lost_reported: u64,
    /// Flows after a destination NAT, from connection tracking.
    nat: Option<nat::Nat>,
}

impl Analysis {
    pub fn new(
        findings: Vec<Finding>,
        links: Links,
        attributor: Option<Attributor>,
        explain: Option<Explain>,
    ) -> Self {
        Analysis {
            findings,
            links,
            attributor,
            explain,
            explain_lost: Vec::new(),
            explain_lost_reported: 0,
            nat: None,
        }
    }

    /// Ties flows after a destination NAT in `namespaces` to their original.
    pub fn with_nat(mut self, namespaces: &[Netns]) -> Self {
        self.nat = Some(nat::Nat::new(namespaces));
        self
    }

    /// The MTU findings in force.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// The host changed: these are the MTU findings, links and traced
    /// namespaces from now on.
    pub fn set_topology(&mut self, findings: Vec<Finding>, links: Links, namespaces: &[Netns]) {
        self.findings = findings;
        self.links = links;
        if let Some(a) = &mut self.attributor {
            a.sync(namespaces);
        }
        if let Some(n) = &mut self.nat {
            n.sync(namespaces);
        }
    }

    /// Trace events of namespace `ns` (in the order of [`Explain::start`]),
    /// and how many its reader lost since start.
    pub fn explain_events(&mut self, ns: usize, events: &[TraceEvent], lost: u64) {
        if let Some(e) = &mut self.explain {
            e.add(ns, events);
        }
        if self.explain_lost.len() <= ns {
            self.explain_lost.resize(ns + 1, 0);
        }
        self.explain_lost[ns] = lost;
    }

    /// Adds to `report` what its flow, drop and verdict rows say together.
    pub fn complete(&mut self, report: &mut Report) {
        let total = match report.scope {
            Scope::First => return,
            Scope::Interval => false,
            Scope::Total => true,
        };
        if let Some(a) = &mut self.attributor {
            if total {
                a.totals(&mut report.verdicts);
            } else {
                a.interval(&mut report.verdicts);
            }
        }
        report.rules = match &mut self.explain {
            Some(e) if total => e.total(),
            Some(e) => e.interval(),
            None => Vec::new(),
        };
        Explain::tie(&mut report.verdicts, &report.rules);
        let lost: u64 = self.explain_lost.iter().sum();
        report.health.explain_events_lost = if total {
            lost
        } else {
            lost - std::mem::replace(&mut self.explain_lost_reported, lost)
        };
        if let Some(n) = &mut self.nat {
            report.nat = n.refresh(report.new_flows.iter());
        }
        report.frags = fragments::frag_rows(&report.flows, &report.drops);
        report.mtu = mtu_rows(&self.findings, &report.flows, total);
        report.paths = paths::paths(&self.links, paths::Rows::of(report));
    }
}

/// The MTU findings with the flows of `flows` they hit; those no flow hits
/// only if `all` (the run's totals list every finding).
fn mtu_rows(findings: &[Finding], flows: &[FlowRow], all: bool) -> Vec<MtuRow> {
    if findings.is_empty() {
        return Vec::new();
    }
    let observed: Vec<FlowObs> = flows
        .iter()
        .map(|f| FlowObs {
            netns: &f.netns,
            iface: &f.iface,
            dir: f.dir,
            max_len: f.counts.max_len,
            vni: crate::output::vni(&f.id),
        })
        .collect();
    findings
        .iter()
        .filter_map(|finding| {
            let hit: Vec<FlowRow> = flows
                .iter()
                .zip(&observed)
                .filter(|(_, o)| finding.hits(o))
                .map(|(f, _)| f.clone())
                .collect();
            (all || !hit.is_empty()).then(|| MtuRow {
                finding: finding.clone(),
                flows: hit,
            })
        })
        .collect()
}
