//! Netfilter verdicts: per flow, hook and table, how many packets a table
//! accepted and how many it dropped, from observer programs linked just
//! before and just after the table at each hook.

pub mod chains;
pub mod fexit;
pub mod kprobes;
pub mod links;
pub mod raw;

use std::os::fd::OwnedFd;

use anyhow::Result;
use aya::Ebpf;
use tracer_ebpf::{
    Config, FlowId, NF_TABLES, VERDICT_CACHE_SLOTS, VerdictKey, VerdictSlot, VerdictStats,
};

use crate::{
    cli::Cli,
    collectors::{
        Collector, Notice, SKB_FIELDS, Setup,
        double_buffer::{Cache, CacheSlot, Drained},
        tally::Accumulate,
    },
    model::{Hook, IpFamily, Table},
    output::{Report, Scope},
    sys::bpf::Barrier,
    sys::kernel::Kernel,
    topology::{Target, names::Names},
};
use fexit::NfTables;
use kprobes::NfKprobes;
use links::NfLinks;
use raw::NfPrograms;

/// Packets that reached a table (`entered`) and that came out of it
/// (`left`, less `unleft`: see [`VerdictStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerdictCounts {
    pub entered: u64,
    pub left: u64,
    pub unleft: u64,
}

impl Accumulate for VerdictCounts {
    fn add(&mut self, o: &Self) {
        self.entered += o.entered;
        self.left += o.left;
        self.unleft += o.unleft;
    }
}

impl From<&VerdictStats> for VerdictCounts {
    fn from(v: &VerdictStats) -> Self {
        VerdictCounts {
            entered: v.entered,
            left: v.left,
            unleft: v.unleft,
        }
    }
}

impl VerdictCounts {
    pub fn accepted(&self) -> u64 {
        self.left.saturating_sub(self.unleft)
    }

    /// Dropped or stolen: went in, never came out.
    pub fn dropped(&self) -> u64 {
        self.entered.saturating_sub(self.accepted())
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

/// How this kernel lets tracer see verdicts.
enum Hooks {
    None,
    /// BPF netfilter programs linked around each table (Linux >= 6.4).
    Links(NfLinks),
    /// fentry and fexit on nf_tables' `nft_do_chain` (older kernels that
    /// allow them): programs and links, held for their lifetime.
    Fexit {
        programs: Vec<(&'static str, OwnedFd)>,
        _links: Vec<OwnedFd>,
    },
    /// kprobes on `nf_hook_slow` and `nft_do_chain` (no module BTF): held
    /// by the `Ebpf`.
    Kprobes,
}

pub struct Verdicts {
    enabled: bool,
    /// `--nf-kprobes`: the inexact last resort is allowed.
    allow_kprobes: bool,
    tables: Vec<Table>,
    hooks: Hooks,
    /// On kernels without netfilter programs: nf_tables' BTF, or why not.
    nf_tables: Option<Result<NfTables>>,
    /// Without nf_tables' BTF either: what the kprobes need, or why not.
    kprobes: Option<Result<NfKprobes>>,
    counts: Drained<VerdictKey, VerdictStats, VerdictCounts>,
    /// The observers' per-CPU cache in front of the verdict maps.
    cache: Option<Cache<VerdictSlot>>,
}

impl CacheSlot for VerdictSlot {
    type Key = VerdictKey;
    type Stats = VerdictStats;
    const SLOTS: u32 = VERDICT_CACHE_SLOTS;
    fn entry(&self, generation: u32) -> Option<(VerdictKey, VerdictStats)> {
        let counted = self.stats.entered | self.stats.left != 0;
        (self.generation == generation && counted).then_some((self.key, self.stats))
    }
}

impl Verdicts {
    /// Checks `--nf-table`.
    pub fn new(cli: &Cli) -> Result<Self> {
        Ok(Verdicts {
            enabled: !cli.no_netfilter,
            allow_kprobes: cli.nf_kprobes,
            tables: links::tables(&cli.nf_tables)?,
            hooks: Hooks::None,
            nf_tables: None,
            kprobes: None,
            counts: Drained::limited(cli.totals_limit),
            cache: None,
        })
    }

    fn notice(&self, text: String) -> Vec<Notice> {
        vec![Notice {
            collector: self.name(),
            text,
        }]
    }
}

/// What is lost without verdicts.
const WITHOUT: &str = "NETFILTER_DROP drops still show what netfilter dropped";

impl Collector for Verdicts {
    fn name(&self) -> &'static str {
        "verdicts"
    }

    fn configure(&mut self, kernel: &Kernel, config: &mut Config) {
        for &table in &self.tables {
            for &hook in table.hooks() {
                let Some(h) = hook.raw() else { continue };
                config.nf_priority[h as usize * NF_TABLES + table.raw() as usize] =
                    table.priority(hook);
            }
        }
        if self.enabled && !kernel.at_least(6, 4) {
            let nf_tables = NfTables::find(kernel);
            match &nf_tables {
                Ok(n) => n.configure(&mut config.offsets),
                Err(_) if self.allow_kprobes => {
                    let kprobes = NfKprobes::find(kernel.btf());
                    if let Ok(k) = &kprobes {
                        k.configure(&mut config.offsets);
                    }
                    self.kprobes = Some(kprobes);
                }
                Err(_) => {}
            }
            self.nf_tables = Some(nf_tables);
        }
    }

    fn start(&mut self, ebpf: &mut Ebpf, setup: &Setup) -> Result<Vec<Notice>> {
        if !self.enabled {
            return Ok(Vec::new());
        }
        let fields = [
            "nf_hook_state.hook",
            "nf_hook_state.pf",
            "nf_hook_state.in",
            "nf_hook_state.out",
            "nf_hook_state.net",
        ];
        if let Err(e) = setup
            .require(&fields)
            .and_then(|()| setup.require(SKB_FIELDS))
        {
            return Ok(self.notice(format!("netfilter verdicts unavailable ({e:#}); {WITHOUT}")));
        }
        match self.nf_tables.take() {
            // A kernel with netfilter BPF programs.
            None => {
                let programs = links::program_names(&self.tables);
                match NfPrograms::load(ebpf, &programs) {
                    Ok(p) => {
                        let mut links = NfLinks::new(p, self.tables.clone());
                        if links.sync(setup.targets) > 0 {
                            anyhow::bail!("cannot link the netfilter observers (see above)");
                        }
                        self.hooks = Hooks::Links(links);
                        Ok(Vec::new())
                    }
                    Err(e) => {
                        Ok(self
                            .notice(format!("netfilter verdicts unavailable ({e:#}); {WITHOUT}")))
                    }
                }
            }
            Some(found) => match found.and_then(|n| n.attach(ebpf)) {
                Ok((programs, links)) => {
                    self.hooks = Hooks::Fexit {
                        programs,
                        _links: links,
                    };
                    Ok(self.notice(
                        "this kernel has no netfilter BPF programs (Linux >= 6.4): verdicts \
                         come from fentry/fexit on nf_tables' nft_do_chain, which sees nftables and \
                         iptables-nft tables but not iptables-legacy ones"
                            .to_string(),
                    ))
                }
                Err(fexit) => match self.kprobes.take().map(|k| k.and_then(|k| k.attach(ebpf))) {
                    Some(Ok(())) => {
                        self.hooks = Hooks::Kprobes;
                        Ok(self.notice(format!(
                            "this kernel has no netfilter BPF programs (Linux >= 6.4) and no \
                             fexit on nft_do_chain ({fexit:#}): verdicts come from kprobes on \
                             nf_hook_slow and nft_do_chain (--nf-kprobes), which see nftables and \
                             iptables-nft tables but not iptables-legacy ones, nor nat chains, and \
                             miss packets processed while another kprobe program runs"
                        )))
                    }
                    Some(Err(kprobe)) => Ok(self.notice(format!(
                        "netfilter verdicts unavailable: this kernel has no netfilter BPF \
                         programs (Linux >= 6.4), fexit on nft_do_chain failed ({fexit:#}) and \
                         so did kprobes ({kprobe:#}); {WITHOUT}"
                    ))),
                    None => Ok(self.notice(format!(
                        "netfilter verdicts unavailable: this kernel has no netfilter BPF \
                         programs (Linux >= 6.4) and fexit on nft_do_chain failed ({fexit:#}); \
                         {WITHOUT} (--nf-kprobes counts verdicts with kprobes, missing some)"
                    ))),
                },
            },
        }
    }

    fn take_maps(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        self.counts.take(ebpf, "VERDICT_GENERATION", "VERDICTS")?;
        self.cache = Some(Cache::take(ebpf, "VERDICT_CACHE")?);
        Ok(())
    }

    fn sync(&mut self, _ebpf: &mut Ebpf, targets: &[Target]) -> Result<usize> {
        match &mut self.hooks {
            Hooks::Links(l) => Ok(l.sync(targets)),
            _ => Ok(0),
        }
    }

    fn drain(&mut self, barrier: &Barrier) -> Result<()> {
        self.counts.drain_cached(barrier, self.cache.as_ref())
    }

    fn rows(&mut self, scope: Scope, names: &mut Names, report: &mut Report) {
        report.verdicts = self.counts.rows(scope, |e| named(names, e));
    }

    fn active(&self) -> bool {
        !matches!(self.hooks, Hooks::None)
    }

    fn attached(&self) -> usize {
        match &self.hooks {
            Hooks::None => 0,
            Hooks::Links(l) => l.count(),
            // Not observers: the notice at start says what counts instead.
            Hooks::Fexit { .. } | Hooks::Kprobes => 0,
        }
    }

    fn programs(&self) -> Vec<(String, std::os::fd::BorrowedFd<'_>)> {
        use std::os::fd::AsFd as _;
        match &self.hooks {
            Hooks::None => Vec::new(),
            Hooks::Links(l) => l.programs(),
            Hooks::Fexit { programs, .. } => programs
                .iter()
                .map(|(name, fd)| (name.to_string(), fd.as_fd()))
                .collect(),
            // aya's own: the metrics read them from the `Ebpf`.
            Hooks::Kprobes => Vec::new(),
        }
    }

    fn untotalled(&self) -> u64 {
        self.counts.untotalled()
    }

    fn fill(&self) -> Option<(usize, u32)> {
        self.counts.fill()
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
                unleft: 0,
            },
            VerdictStats {
                entered: 4,
                left: 5,
                unleft: 1,
            },
        ]);
        assert_eq!((c.accepted(), c.dropped()), (7, 2));
        assert_eq!(
            VerdictCounts {
                entered: 0,
                left: 1,
                unleft: 0,
            }
            .dropped(),
            0
        );
    }
}
