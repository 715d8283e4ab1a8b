//! Netfilter verdicts: per flow, hook and table, how many packets a table
//! accepted and how many it dropped, from observer programs linked just
//! before and just after the table at each hook.

pub mod chains;
pub mod links;
pub mod nf_loader;

use anyhow::Result;
use aya::Ebpf;
use tracer_ebpf::{FlowId, VerdictKey, VerdictStats};

use crate::{
    cli::Cli,
    collectors::{
        Collector, Notice, SKB_FIELDS, Setup, double_buffer::Drained, loader, tally::Accumulate,
    },
    model::{Hook, IpFamily, Table},
    output::{Report, Scope},
    sys::bpf::Barrier,
    topology::{Target, names::Names},
};
use links::NfLinks;
use nf_loader::NfPrograms;

/// Packets that reached a table (`entered`) and that came out of it (`left`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerdictCounts {
    pub entered: u64,
    pub left: u64,
}

impl Accumulate for VerdictCounts {
    fn add(&mut self, o: &Self) {
        self.entered += o.entered;
        self.left += o.left;
    }
}

impl From<&VerdictStats> for VerdictCounts {
    fn from(v: &VerdictStats) -> Self {
        VerdictCounts {
            entered: v.entered,
            left: v.left,
        }
    }
}

impl VerdictCounts {
    pub fn accepted(&self) -> u64 {
        self.left
    }

    /// Dropped or stolen: went in, never came out.
    pub fn dropped(&self) -> u64 {
        self.entered.saturating_sub(self.left)
    }
}

/// What one netfilter table did with one flow at one hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictRow {
    pub netns: String,
    /// Input device (prerouting, input, forward) or output device (output, postrouting).
    pub iface: Option<String>,
    pub family: IpFamily,
    pub hook: Hook,
    pub table: Table,
    pub id: FlowId,
    pub counts: VerdictCounts,
    /// The rule that dropped it, as the user wrote it, when known.
    pub rule: Option<String>,
}

pub struct Verdicts {
    enabled: bool,
    tables: Vec<Table>,
    links: Option<NfLinks>,
    counts: Drained<VerdictKey, VerdictStats, VerdictCounts>,
}

impl Verdicts {
    /// Checks `--nf-table`.
    pub fn new(cli: &Cli) -> Result<Self> {
        Ok(Verdicts {
            enabled: !cli.no_netfilter,
            tables: links::tables(&cli.nf_tables)?,
            links: None,
            counts: Drained::default(),
        })
    }
}

impl Collector for Verdicts {
    fn name(&self) -> &'static str {
        "verdicts"
    }

    fn start(&mut self, ebpf: &mut Ebpf, setup: &Setup) -> Result<Vec<Notice>> {
        if !self.enabled {
            return Ok(Vec::new());
        }
        let programs = links::program_names(&self.tables);
        let fields = [
            "nf_hook_state.hook",
            "nf_hook_state.pf",
            "nf_hook_state.in",
            "nf_hook_state.out",
            "nf_hook_state.net",
        ];
        let loaded = setup
            .require(&fields)
            .and_then(|()| setup.require(SKB_FIELDS))
            .and_then(|()| NfPrograms::load(loader::OBJECT, ebpf, &programs));
        match loaded {
            Ok(p) => {
                let mut links = NfLinks::new(p, self.tables.clone());
                links.sync(setup.targets)?;
                self.links = Some(links);
                Ok(Vec::new())
            }
            Err(e) => Ok(vec![Notice {
                collector: self.name(),
                text: format!(
                    "netfilter verdicts unavailable ({e:#}); NETFILTER_DROP drops still show \
                     what netfilter dropped"
                ),
            }]),
        }
    }

    fn take_maps(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        self.counts.take(ebpf, "VERDICT_GENERATION", "VERDICTS")?;
        Ok(())
    }

    fn sync(&mut self, targets: &[Target]) -> Result<()> {
        match &mut self.links {
            Some(l) => l.sync(targets),
            None => Ok(()),
        }
    }

    fn drain(&mut self, barrier: &Barrier) -> Result<()> {
        self.counts.drain(barrier)
    }

    fn rows(&mut self, scope: Scope, names: &mut Names, report: &mut Report) {
        report.verdicts = self.counts.rows(scope, |e| named(names, e));
    }

    fn active(&self) -> bool {
        self.links.is_some()
    }

    fn attached(&self) -> usize {
        self.links.as_ref().map_or(0, |l| l.count())
    }
}

/// Named rows, by namespace, hook, table, device, flow.
fn named(names: &Names, verdicts: Vec<(&VerdictKey, &VerdictCounts)>) -> Vec<VerdictRow> {
    let mut rows: Vec<VerdictRow> = verdicts
        .into_iter()
        .filter_map(|(key, counts)| {
            let (netns, iface) = names.device(key.netns_inode as u64, key.ifindex);
            Some(VerdictRow {
                netns,
                iface: (key.ifindex != 0).then_some(iface),
                family: IpFamily::from_nfproto(key.family)?,
                hook: Hook::from_raw(key.hook)?,
                table: Table::from_raw(key.table)?,
                id: key.id,
                counts: *counts,
                rule: None,
            })
        })
        .collect();
    rows.sort_by(|a, b| {
        (&a.netns, a.hook, a.table, &a.iface, &a.id)
            .cmp(&(&b.netns, b.hook, b.table, &b.iface, &b.id))
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::tally::sum_percpu;

    #[test]
    fn accepted_and_dropped() {
        let c: VerdictCounts = sum_percpu(&[
            VerdictStats {
                entered: 5,
                left: 3,
            },
            VerdictStats {
                entered: 4,
                left: 4,
            },
        ]);
        assert_eq!((c.accepted(), c.dropped()), (7, 2));
        assert_eq!(
            VerdictCounts {
                entered: 0,
                left: 1
            }
            .dropped(),
            0
        );
    }
}
