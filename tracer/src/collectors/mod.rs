//! Reading what the kernel counted, naming it, and keeping interval and run totals.

pub mod double_buffer;
pub mod drops;
pub mod flows;
pub mod icmp;
pub mod loader;
pub mod tally;
pub mod verdicts;

use std::{cmp::Ordering, collections::HashMap, rc::Rc, time::Duration};

use rustc_hash::FxHashMap;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
};
use tracer_ebpf::{
    DIR_EGRESS, DIR_INGRESS, DeviceInfo, DropEvent, DropKey, DropStats, FlowId, FlowKey, FlowStats,
    IcmpKey, TUPLE_FRAG_FIRST, TUPLE_FRAG_REST, TUPLE_PORTS, Tuple, VerdictKey, VerdictStats,
    counter,
};

use crate::{
    analysis::attribution::Attributor,
    analysis::explain::Explain,
    analysis::fragments::frag_rows,
    collectors::double_buffer::DoubleBuffer,
    collectors::drops::DropCounts,
    collectors::drops::reasons::{ReasonFilter, Reasons},
    collectors::flows::Counts,
    collectors::icmp::{IcmpCount, kind},
    collectors::tally::Tally,
    collectors::verdicts::VerdictCounts,
    collectors::verdicts::bands::{family_name, hook_name, table_name},
    output::{DropRow, FlowRow, Health, IcmpRow, MtuRow, Report, Scope, VerdictRow},
    sys::bpf::Barrier,
    sys::kallsyms::Symbolizer,
    topology::Target,
    topology::mtu::{Dir, Finding, FlowObs},
};

/// (namespace, device) names shared by the rows of one device.
type DeviceName = (Rc<str>, Rc<str>);

/// Names what kernel keys point at: devices, namespaces, reasons, code.
struct Namer {
    /// `struct net_device` address -> device, filled by the TC programs.
    devices: BpfHashMap<MapData, u64, DeviceInfo>,
    /// Netns inode -> (netns name, ifindex -> device name).
    names: HashMap<u64, (String, HashMap<u32, String>)>,
    /// Device address -> (netns name, device name), from `devices`.
    cache: HashMap<u64, (String, String)>,
    reasons: Reasons,
    symbols: Symbolizer,
}

impl Namer {
    /// (namespace, device) names of `ifindex` in the namespace with `inode`.
    fn in_netns(&self, inode: u64, ifindex: u32) -> (String, String) {
        match self.names.get(&inode) {
            Some((ns, devs)) => (
                ns.clone(),
                devs.get(&ifindex)
                    .cloned()
                    .unwrap_or_else(|| format!("if{ifindex}")),
            ),
            None => (inode.to_string(), format!("if{ifindex}")),
        }
    }

    /// Names the device at kernel address `dev`.
    fn device(&mut self, dev: u64, ifindex: u32) -> (String, String) {
        if let Some(n) = self.cache.get(&dev) {
            return n.clone();
        }
        let Ok(info) = self.devices.get(&dev, 0) else {
            return ("?".to_string(), format!("if{ifindex}"));
        };
        let name = self.in_netns(info.netns_inode as u64, info.ifindex);
        self.cache.insert(dev, name.clone());
        name
    }

    /// Named flow rows, in a stable order: by namespace, device, direction, flow.
    fn flow_rows<'a>(
        &mut self,
        flows: impl Iterator<Item = (&'a FlowKey, &'a Counts)>,
    ) -> Vec<FlowRow> {
        // Tens of thousands of rows on a handful of devices: sort the devices
        // by name once, then the rows by the device's rank, so that no
        // comparison compares names.
        let mut ranks: FxHashMap<(u64, u32), u32> = FxHashMap::default();
        let flows: Vec<(&FlowKey, &Counts)> = flows
            .inspect(|(key, _)| {
                ranks.entry((key.dev, key.ifindex)).or_default();
            })
            .collect();
        let mut devices: Vec<((u64, u32), DeviceName)> = ranks
            .keys()
            .map(|&(dev, ifindex)| {
                let (netns, iface) = self.device(dev, ifindex);
                ((dev, ifindex), (netns.into(), iface.into()))
            })
            .collect();
        devices.sort_by(|a, b| a.1.cmp(&b.1));
        for (rank, (dev, _)) in devices.iter().enumerate() {
            ranks.insert(*dev, rank as u32);
        }
        // Rows name the direction; "egress" sorts before "ingress".
        let ingress = |key: &FlowKey| key.dir == DIR_INGRESS;
        let mut ordered: Vec<(u32, bool, &FlowKey, &Counts)> = flows
            .into_iter()
            .map(|(key, counts)| (ranks[&(key.dev, key.ifindex)], ingress(key), key, counts))
            .collect();
        ordered.sort_unstable_by(|a, b| {
            (a.0, a.1)
                .cmp(&(b.0, b.1))
                .then_with(|| id_order(&a.2.id, &b.2.id))
        });
        ordered
            .into_iter()
            .map(|(rank, ingress, key, counts)| {
                let (netns, iface) = devices[rank as usize].1.clone();
                let dir = if ingress { "ingress" } else { "egress" };
                FlowRow {
                    netns,
                    iface,
                    dir,
                    id: key.id,
                    counts: *counts,
                }
            })
            .collect()
    }

    /// Named drop rows the filter lets through, by namespace, device, reason, flow.
    fn drop_rows<'a>(
        &mut self,
        filter: &ReasonFilter,
        drops: impl Iterator<Item = (&'a DropKey, &'a DropCounts)>,
    ) -> Vec<DropRow> {
        let mut rows: Vec<DropRow> = drops
            .filter(|(key, _)| filter.allows(key.reason))
            .map(|(key, counts)| {
                let (netns, iface) = self.in_netns(key.netns_inode as u64, key.ifindex);
                let (id, fragment) = split_fragment(key.id);
                DropRow {
                    netns,
                    iface: (key.ifindex != 0).then_some(iface),
                    id,
                    reason: self.reasons.name(key.reason),
                    location: self.symbols.name(key.location),
                    fragment,
                    counts: *counts,
                }
            })
            .collect();
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
}

impl Namer {
    /// Named verdict rows, by namespace, hook, table, device, flow.
    fn verdict_rows<'a>(
        &mut self,
        verdicts: impl Iterator<Item = (&'a VerdictKey, &'a VerdictCounts)>,
    ) -> Vec<VerdictRow> {
        let mut rows: Vec<(VerdictKey, VerdictRow)> = verdicts
            .map(|(key, counts)| {
                let (netns, iface) = self.in_netns(key.netns_inode as u64, key.ifindex);
                let row = VerdictRow {
                    netns,
                    iface: (key.ifindex != 0).then_some(iface),
                    family: family_name(key.family),
                    hook: hook_name(key.hook),
                    table: table_name(key.table),
                    id: key.id,
                    counts: *counts,
                    rule: None,
                };
                (*key, row)
            })
            .collect();
        rows.sort_by(|(ka, a), (kb, b)| {
            (&a.netns, ka.hook, ka.table, &a.iface, &a.id)
                .cmp(&(&b.netns, kb.hook, kb.table, &b.iface, &b.id))
        });
        rows.into_iter().map(|(_, r)| r).collect()
    }
}

/// The order of `FlowId`'s derived `Ord`, comparing the 16-byte addresses
/// as big-endian integers instead of calling `memcmp` twice per tuple: rows
/// are sorted every interval, and most comparisons reach the ports.
fn id_order(a: &FlowId, b: &FlowId) -> Ordering {
    fn tuple(a: &Tuple, b: &Tuple) -> Ordering {
        u128::from_be_bytes(a.src)
            .cmp(&u128::from_be_bytes(b.src))
            .then_with(|| u128::from_be_bytes(a.dst).cmp(&u128::from_be_bytes(b.dst)))
            .then_with(|| {
                (a.sport, a.dport, a.proto, a.family, a.flags, a._pad)
                    .cmp(&(b.sport, b.dport, b.proto, b.family, b.flags, b._pad))
            })
    }
    tuple(&a.outer, &b.outer)
        .then_with(|| tuple(&a.inner, &b.inner))
        .then_with(|| (a.vni, a._pad).cmp(&(b.vni, b._pad)))
}

/// A drop's flow as flow rows key it (no per-packet flags), and whether the
/// dropped packet was the first or a later fragment of its datagram.
fn split_fragment(mut id: FlowId) -> (FlowId, Option<&'static str>) {
    let flags = if id.outer.flags & (TUPLE_FRAG_FIRST | TUPLE_FRAG_REST) != 0 {
        id.outer.flags
    } else {
        id.inner.flags
    };
    let fragment = if flags & TUPLE_FRAG_FIRST != 0 {
        Some("first")
    } else if flags & TUPLE_FRAG_REST != 0 {
        Some("rest")
    } else {
        None
    };
    id.outer.flags &= TUPLE_PORTS;
    id.inner.flags &= TUPLE_PORTS;
    (id, fragment)
}

impl Namer {
    /// Named ICMP error rows, by namespace, device, kind, flow.
    fn icmp_rows<'a>(
        &mut self,
        icmps: impl Iterator<Item = (&'a IcmpKey, &'a IcmpCount)>,
    ) -> Vec<IcmpRow> {
        let mut rows: Vec<IcmpRow> = icmps
            .map(|(key, count)| {
                let (netns, iface) = self.in_netns(key.netns_inode as u64, key.ifindex);
                let (id, _) = split_fragment(key.id);
                IcmpRow {
                    netns,
                    iface: (key.ifindex != 0).then_some(iface),
                    dir: match key.dir {
                        DIR_INGRESS => "ingress",
                        DIR_EGRESS => "egress",
                        _ => "sent",
                    },
                    kind: kind(key.family, key.icmp_type, key.icmp_code),
                    icmp_type: key.icmp_type,
                    icmp_code: key.icmp_code,
                    mtu: (key.mtu != 0).then_some(key.mtu),
                    id,
                    count: count.0,
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            (&a.netns, &a.iface, a.dir, a.kind, &a.id)
                .cmp(&(&b.netns, &b.iface, b.dir, b.kind, &b.id))
        });
        rows
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
            dir: if f.dir == "ingress" {
                Dir::Ingress
            } else {
                Dir::Egress
            },
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

/// `(key, value)` entries as the pairs of references rows are built from.
fn pairs<K, V>(entries: &[(K, V)]) -> impl Iterator<Item = (&K, &V)> {
    entries.iter().map(|(k, v)| (k, v))
}

/// Reads the kernel's counters and keeps interval and run totals.
pub struct Collector {
    flow_maps: DoubleBuffer,
    drop_maps: DoubleBuffer,
    verdict_maps: DoubleBuffer,
    icmp_maps: DoubleBuffer,
    counters: PerCpuArray<MapData, u64>,
    barrier: Barrier,
    flows: Tally<FlowKey, Counts>,
    drops: Tally<DropKey, DropCounts>,
    verdicts: Tally<VerdictKey, VerdictCounts>,
    icmps: Tally<IcmpKey, IcmpCount>,
    namer: Namer,
    filter: ReasonFilter,
    findings: Vec<Finding>,
    /// Rule text for dropped verdicts, from rule counters.
    attributor: Option<Attributor>,
    /// Exact rule verdicts from nftables tracing (`--explain`).
    explain: Option<Explain>,
    health_total: Health,
    health_interval: Health,
}

impl Collector {
    pub fn new(
        ebpf: &mut Ebpf,
        targets: &[Target],
        reasons: Reasons,
        filter: ReasonFilter,
        findings: Vec<Finding>,
    ) -> Result<Self> {
        let flow_maps = DoubleBuffer::take(ebpf, "FLOW_GENERATION", ["FLOWS_0", "FLOWS_1"])?;
        let drop_maps = DoubleBuffer::take(ebpf, "DROP_GENERATION", ["DROPS_0", "DROPS_1"])?;
        let verdict_maps =
            DoubleBuffer::take(ebpf, "VERDICT_GENERATION", ["VERDICTS_0", "VERDICTS_1"])?;
        let icmp_maps = DoubleBuffer::take(ebpf, "ICMP_GENERATION", ["ICMPS_0", "ICMPS_1"])?;
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("eBPF object has no map {name}"))
        };
        let counters = PerCpuArray::try_from(take("COUNTERS")?)?;
        let devices = BpfHashMap::try_from(take("DEVICES")?)?;
        let names = targets
            .iter()
            .map(|t| {
                let devs = t
                    .devices
                    .iter()
                    .map(|d| (d.ifindex, d.name.clone()))
                    .collect();
                (t.netns.inode, (t.netns.name.clone(), devs))
            })
            .collect();
        Ok(Self {
            flow_maps,
            drop_maps,
            verdict_maps,
            icmp_maps,
            counters,
            barrier: Barrier::new().context("create BPF barrier map")?,
            flows: Tally::default(),
            drops: Tally::default(),
            verdicts: Tally::default(),
            icmps: Tally::default(),
            namer: Namer {
                devices,
                names,
                cache: HashMap::new(),
                reasons,
                symbols: Symbolizer::default(),
            },
            filter,
            findings,
            attributor: None,
            explain: None,
            health_total: Health::default(),
            health_interval: Health::default(),
        })
    }

    /// Where rule text for dropped verdicts comes from.
    pub fn with_rules(&mut self, attributor: Option<Attributor>, explain: Option<Explain>) {
        self.attributor = attributor;
        self.explain = explain;
    }

    /// Trace events of namespace `ns` (in the order of [`Explain::start`]).
    pub fn explain_events(&mut self, ns: usize, events: &[crate::rules::trace::TraceEvent]) {
        if let Some(e) = &mut self.explain {
            e.add(ns, events);
        }
    }

    /// Verdict rows with the rules that dropped them, where known.
    fn verdict_rows<'a>(
        &mut self,
        verdicts: impl Iterator<Item = (&'a VerdictKey, &'a VerdictCounts)>,
        total: bool,
    ) -> (Vec<VerdictRow>, Vec<crate::output::RuleRow>) {
        let mut rows = self.namer.verdict_rows(verdicts);
        if let Some(a) = &mut self.attributor {
            if total {
                a.totals(&mut rows);
            } else {
                a.interval(&mut rows);
            }
        }
        let traced = match &mut self.explain {
            Some(e) if total => e.total(),
            Some(e) => e.interval(),
            None => Vec::new(),
        };
        Explain::tie(&mut rows, &traced);
        (rows, traced)
    }

    /// Moves everything the kernel counted since the last call into the tallies.
    pub fn collect(&mut self) -> Result<()> {
        let flows = &mut self.flows;
        self.flow_maps
            .drain::<FlowKey, FlowStats>(&self.barrier, |key, values| {
                flows.add(key, Counts::from_percpu(values));
            })?;
        let drops = &mut self.drops;
        self.drop_maps
            .drain::<DropKey, DropStats>(&self.barrier, |key, values| {
                drops.add(key, DropCounts::from_percpu(values));
            })?;
        let verdicts = &mut self.verdicts;
        self.verdict_maps
            .drain::<VerdictKey, VerdictStats>(&self.barrier, |key, values| {
                verdicts.add(key, VerdictCounts::from_percpu(values));
            })?;
        let icmps = &mut self.icmps;
        self.icmp_maps
            .drain::<IcmpKey, u64>(&self.barrier, |key, values| {
                icmps.add(key, IcmpCount(values.iter().sum()));
            })?;
        let read = |index: u32| -> Result<u64> {
            Ok(self
                .counters
                .get(&index, 0)
                .context("read COUNTERS")?
                .iter()
                .sum())
        };
        let now = Health {
            flow_map_full: read(counter::FLOW_MAP_FULL)?,
            drop_map_full: read(counter::DROP_MAP_FULL)?,
            drop_events_lost: read(counter::DROP_EVENTS_LOST)?,
            verdict_map_full: read(counter::VERDICT_MAP_FULL)?,
            icmp_map_full: read(counter::ICMP_MAP_FULL)?,
            frag_unmatched: read(counter::FRAG_UNMATCHED)?,
        };
        let before = self.health_total;
        self.health_interval = Health {
            flow_map_full: now.flow_map_full - before.flow_map_full,
            drop_map_full: now.drop_map_full - before.drop_map_full,
            drop_events_lost: now.drop_events_lost - before.drop_events_lost,
            verdict_map_full: now.verdict_map_full - before.verdict_map_full,
            icmp_map_full: now.icmp_map_full - before.icmp_map_full,
            frag_unmatched: now.frag_unmatched - before.frag_unmatched,
        };
        self.health_total = now;
        Ok(())
    }

    pub fn interval_report(&mut self, elapsed: Duration) -> Report {
        let flows = self.namer.flow_rows(pairs(self.flows.interval()));
        let drops = self
            .namer
            .drop_rows(&self.filter, pairs(self.drops.interval()));
        let icmps = self.namer.icmp_rows(pairs(self.icmps.interval()));
        let verdicts = self.verdicts.interval().to_vec();
        let (verdicts, rules) = self.verdict_rows(pairs(&verdicts), false);
        self.flows.end_interval();
        self.drops.end_interval();
        self.verdicts.end_interval();
        self.icmps.end_interval();
        Report {
            scope: Scope::Interval,
            elapsed,
            frags: frag_rows(&flows, &drops),
            mtu: mtu_rows(&self.findings, &flows, false),
            flows,
            drops,
            verdicts,
            rules,
            icmps,
            health: self.health_interval,
        }
    }

    pub fn total_report(&mut self, elapsed: Duration) -> Report {
        let flows = self.namer.flow_rows(self.flows.total().iter());
        let drops = self
            .namer
            .drop_rows(&self.filter, self.drops.total().iter());
        let totals: Vec<(VerdictKey, VerdictCounts)> = self
            .verdicts
            .total()
            .iter()
            .map(|(k, c)| (*k, *c))
            .collect();
        let (verdicts, rules) = self.verdict_rows(totals.iter().map(|(k, c)| (k, c)), true);
        Report {
            scope: Scope::Total,
            elapsed,
            frags: frag_rows(&flows, &drops),
            mtu: mtu_rows(&self.findings, &flows, true),
            flows,
            drops,
            verdicts,
            rules,
            icmps: self.namer.icmp_rows(self.icmps.total().iter()),
            health: self.health_total,
        }
    }

    /// The first drops of keys never seen before, announced by the kernel.
    pub fn first_drops(&mut self, events: &[DropEvent]) -> Report {
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
        Report {
            scope: Scope::First,
            drops: self
                .namer
                .drop_rows(&self.filter, counts.iter().map(|(k, c)| (k, c))),
            ..Report::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids whose fields take few values, so that pairs tie on every prefix.
    fn ids() -> Vec<FlowId> {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut pick = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        (0..300)
            .map(|_| {
                let mut tuple = || {
                    let mut t = Tuple::default();
                    // Differences in the first and last byte of each address.
                    t.src[0] = pick(2) as u8;
                    t.src[15] = pick(3) as u8 * 0x7f;
                    t.dst[8] = pick(2) as u8 * 0x80;
                    t.sport = pick(3) as u16 * 0x7fff;
                    t.dport = pick(2) as u16;
                    t.proto = pick(2) as u8 * 17;
                    t.family = pick(2) as u8;
                    t.flags = pick(2) as u8;
                    t
                };
                let (outer, inner) = (tuple(), tuple());
                FlowId {
                    outer,
                    inner,
                    vni: pick(2) as u32 | (pick(2) as u32) << 31,
                    _pad: 0,
                }
            })
            .collect()
    }

    #[test]
    fn id_order_is_the_derived_order() {
        let ids = ids();
        for a in &ids {
            for b in &ids {
                assert_eq!(id_order(a, b), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }
}
