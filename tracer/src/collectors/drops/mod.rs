//! Drops: every packet the kernel frees as dropped (`skb:kfree_skb`), per
//! (namespace, device, flow, reason, location), and the first drop of each
//! such key at once through a ring buffer; with `--pcap-drops`, the bytes
//! of each dropped packet through another.

pub mod capture;
pub mod reasons;

use std::os::fd::{AsFd as _, BorrowedFd};

use anyhow::Result;
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use tracer_ebpf::{
    CAPTURE_MAX, Config, DROP_CACHE_SLOTS, DropEvent, DropKey, DropSlot, DropStats, FlowId,
    REASON_ABSENT,
};

use crate::{
    cli::Cli,
    collectors::take_map,
    collectors::{
        Collector, Notice, SKB_FIELDS, Setup,
        double_buffer::{Cache, CacheSlot, Drained},
        fragment_of, loader,
        tally::Accumulate,
    },
    output::{Report, Scope, pcap::Capture},
    sys::{bpf::Barrier, kallsyms::Symbolizer, kernel::Kernel},
    topology::names::Names,
};
use capture::Captures;
use reasons::{NO_REASONS, ReasonFilter, Reasons};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    pub packets: u64,
    pub bytes: u64,
}

impl Accumulate for DropCounts {
    fn add(&mut self, o: &Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
    }
}

impl From<&DropStats> for DropCounts {
    fn from(v: &DropStats) -> Self {
        DropCounts {
            packets: v.packets,
            bytes: v.bytes,
        }
    }
}

/// Drops of one flow, for one reason, at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropRow {
    pub netns: String,
    /// The skb's device where it was dropped, if it had one.
    pub iface: Option<String>,
    pub id: FlowId,
    /// `NETFILTER_DROP`, ...; `None` on kernels without drop reasons.
    pub reason: Option<String>,
    /// Kernel function and offset that dropped it.
    pub location: String,
    /// `first` or `rest` when the dropped packet was an IP fragment.
    pub fragment: Option<&'static str>,
    pub counts: DropCounts,
}

pub struct Drops {
    enabled: bool,
    /// The `kfree_skb` program this kernel takes.
    program: &'static str,
    counts: Drained<DropKey, DropStats, DropCounts>,
    /// The program's per-CPU cache in front of the drop maps.
    cache: Option<Cache<DropSlot>>,
    /// First drops of new keys.
    events: Option<RingBuf<MapData>>,
    /// Snap length and rate limit of `--pcap-drops`; snap length 0 when off.
    capture: (u32, u32),
    captures: Option<Captures>,
    namer: DropNamer,
}

/// Turns drop keys into rows: reason names, code locations, the filter.
struct DropNamer {
    /// `None` on kernels without drop reasons.
    reasons: Option<Reasons>,
    filter: ReasonFilter,
    symbols: Symbolizer,
}

impl CacheSlot for DropSlot {
    type Key = DropKey;
    type Stats = DropStats;
    const SLOTS: u32 = DROP_CACHE_SLOTS;
    fn entry(&self, generation: u32) -> Option<(DropKey, DropStats)> {
        (self.generation == generation && self.stats.packets != 0).then_some((self.key, self.stats))
    }
}

impl Drops {
    /// Checks `--reason` and `--exclude-reason` against the kernel's
    /// reasons, and picks the program for its `kfree_skb` tracepoint.
    pub fn new(cli: &Cli, kernel: &Kernel) -> Result<Self> {
        let reasons = Reasons::from_btf(kernel.btf());
        let filter = ReasonFilter::new(reasons.as_ref(), &cli.reasons, &cli.exclude_reasons)?;
        // Before 5.17 the tracepoint is kfree_skb(skb, location): no reason to read.
        let program = match kernel.kfree_skb_args {
            Some(n) if n >= 3 && reasons.is_some() => "kfree_skb",
            _ => "kfree_skb_noreason",
        };
        Ok(Drops {
            enabled: !cli.no_drops,
            program,
            counts: Drained::limited(cli.totals_limit),
            cache: None,
            events: None,
            capture: match &cli.pcap_drops {
                Some(_) => (cli.pcap_snaplen.min(CAPTURE_MAX as u32), cli.pcap_rate),
                None => (0, 0),
            },
            captures: None,
            namer: DropNamer {
                reasons,
                filter,
                symbols: Symbolizer::default(),
            },
        })
    }
}

impl DropNamer {
    /// Named rows the filter lets through, by namespace, device, reason, flow.
    fn named<'a>(
        &mut self,
        names: &Names,
        drops: impl Iterator<Item = (&'a DropKey, &'a DropCounts)>,
    ) -> Vec<DropRow> {
        let mut rows: Vec<DropRow> = Vec::new();
        for (key, counts) in drops {
            if self.filter.allows(key.reason) {
                rows.push(self.row(names, key, *counts));
            }
        }
        rows.sort_by(|a, b| {
            (&a.netns, &a.iface, &a.reason, &a.id, &a.location).cmp(&(
                &b.netns,
                &b.iface,
                &b.reason,
                &b.id,
                &b.location,
            ))
        });
        rows
    }

    fn row(&mut self, names: &Names, key: &DropKey, counts: DropCounts) -> DropRow {
        let (netns, iface) = names.device(key.netns_inode as u64, key.ifindex);
        let (id, fragment) = fragment_of(key.id);
        DropRow {
            netns,
            iface: (key.ifindex != 0).then_some(iface),
            id,
            reason: self.reasons.as_ref().map(|r| r.name(key.reason)),
            location: self.symbols.name(key.location),
            fragment,
            counts,
        }
    }
}

impl Collector for Drops {
    fn name(&self) -> &'static str {
        "drops"
    }

    fn configure(&mut self, _kernel: &Kernel, config: &mut Config) {
        let reasons = self.namer.reasons.as_ref();
        config.reason_consumed = reasons.map_or(REASON_ABSENT, |r| r.consumed);
        config.reason_not_dropped = reasons.map_or(REASON_ABSENT, |r| r.not_dropped);
        if self.enabled {
            (config.capture_snaplen, config.capture_rate) = self.capture;
        }
    }

    fn start(&mut self, ebpf: &mut Ebpf, setup: &Setup) -> Result<Vec<Notice>> {
        if !self.enabled {
            return Ok(Vec::new());
        }
        let started = setup.require(SKB_FIELDS).and_then(|()| {
            loader::attach_tracepoint(ebpf, setup.kernel.aya_btf()?, self.program, "kfree_skb")
        });
        if let Err(e) = started {
            self.enabled = false;
            return Ok(vec![Notice {
                collector: self.name(),
                text: format!(
                    "drops are not traced ({e:#}); NETFILTER drops still show as verdicts"
                ),
            }]);
        }
        Ok(match self.namer.reasons {
            Some(_) => Vec::new(),
            None => vec![Notice {
                collector: self.name(),
                text: NO_REASONS.to_string(),
            }],
        })
    }

    fn take_maps(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        self.counts.take(ebpf, "DROP_GENERATION", "DROPS")?;
        self.cache = Some(Cache::take(ebpf, "DROP_CACHE")?);
        if self.enabled {
            self.events = Some(take_map(ebpf, "DROP_EVENTS", RingBuf::try_from)?);
            if self.capture.0 != 0 {
                self.captures = Some(Captures::take(ebpf)?);
            }
            // Late in the start, when what loading the programs took is
            // free again for the table to reuse.
            self.namer.symbols.load();
        }
        Ok(())
    }

    fn drain(&mut self, barrier: &Barrier) -> Result<()> {
        self.counts.drain_cached(barrier, self.cache.as_ref())
    }

    fn untotalled(&self) -> u64 {
        self.counts.untotalled()
    }

    fn fill(&self) -> Option<(usize, u32)> {
        self.counts.fill()
    }

    fn rows(&mut self, scope: Scope, names: &mut Names, report: &mut Report) {
        let namer = &mut self.namer;
        report.drops = self
            .counts
            .rows(scope, |e| namer.named(names, e.into_iter()));
    }

    fn active(&self) -> bool {
        self.enabled
    }

    fn event_fds(&self) -> Vec<BorrowedFd<'_>> {
        let events = self.events.as_ref().map(|r| r.as_fd());
        let captures = self.captures.as_ref().map(|c| c.fd());
        events.into_iter().chain(captures).collect()
    }

    /// The first drops of keys never seen before, announced by the kernel,
    /// and the dropped packets captured.
    fn events(&mut self, names: &mut Names, report: &mut Report) {
        if let Some(captures) = &mut self.captures {
            let namer = &mut self.namer;
            captures.read(|e, ts_ns| {
                if !namer.filter.allows(e.key.reason) {
                    return;
                }
                let row = namer.row(names, &e.key, DropCounts::default());
                let cap_len = (e.cap_len as usize).min(e.data.len());
                report.captures.push(Capture {
                    netns: row.netns,
                    id: row.id,
                    iface: row.iface,
                    reason: row.reason,
                    location: row.location,
                    ts_ns,
                    link: e.link,
                    orig_len: e.orig_len,
                    data: e.data[..cap_len].to_vec(),
                });
            });
        }
        let Some(ring) = &mut self.events else {
            return;
        };
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<DropEvent>() {
                // SAFETY: the program wrote a whole DropEvent, which is Pod.
                events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent>()) });
            }
        }
        let counts: Vec<(DropKey, DropCounts)> = events
            .iter()
            .map(|e| {
                let c = DropCounts {
                    packets: 1,
                    bytes: e.len as u64,
                };
                (e.key, c)
            })
            .collect();
        report
            .drops
            .extend(self.namer.named(names, counts.iter().map(|(k, c)| (k, c))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::tally::sum_percpu;

    #[test]
    fn per_cpu_values_are_summed() {
        let v = [
            DropStats {
                packets: 2,
                bytes: 100,
            },
            DropStats {
                packets: 0,
                bytes: 0,
            },
            DropStats {
                packets: 5,
                bytes: 7,
            },
        ];
        assert_eq!(
            sum_percpu::<_, DropCounts>(&v),
            DropCounts {
                packets: 7,
                bytes: 107
            }
        );
    }
}
