//! Per-hop flow counters: TC programs on ingress and egress of every traced
//! device count packets, bytes, fragments and the largest packet per flow.

mod slots;
pub mod tc;

use std::{cmp::Ordering, collections::HashMap, rc::Rc};

use anyhow::Result;
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use tracer_ebpf::{
    Config, DeviceInfo, FLOW_CACHE_SLOTS, FlowId, FlowKey, FlowSlot, FlowStats, Tuple,
};

use crate::{
    cli::Cli,
    collectors::{
        Collector, Notice, Setup,
        double_buffer::{Cache, CacheSlot},
        loader, take_map,
        tally::Accumulate,
    },
    model::Direction,
    output::{Report, Scope},
    sys::{bpf::Barrier, kernel::Kernel},
    topology::names::Names,
};

/// Counts of one flow at one hop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
    pub frags_first: u64,
    pub frags_rest: u64,
    pub df: u64,
    pub max_len: u32,
}

impl Accumulate for Counts {
    fn add(&mut self, o: &Counts) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.frags_first += o.frags_first;
        self.frags_rest += o.frags_rest;
        self.df += o.df;
        self.max_len = self.max_len.max(o.max_len);
    }
}

impl From<&FlowStats> for Counts {
    fn from(v: &FlowStats) -> Self {
        Counts {
            packets: v.packets,
            bytes: v.bytes,
            frags_first: v.frags_first,
            frags_rest: v.frags_rest,
            df: v.df,
            max_len: v.max_len,
        }
    }
}

/// One flow at one hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRow {
    // Shared: tens of thousands of rows name a handful of devices.
    pub netns: Rc<str>,
    pub iface: Rc<str>,
    pub dir: Direction,
    pub id: FlowId,
    pub counts: Counts,
}

/// (namespace, device) names shared by the rows of one device.
type DeviceName = (Rc<str>, Rc<str>);

pub struct Flows {
    mode: tc::AttachMode,
    links: tc::Links,
    /// Taken once the programs are loaded.
    counts: Option<slots::Slots>,
    /// The programs' per-CPU cache in front of the flow slots.
    cache: Option<Cache<FlowSlot>>,
    devices: DeviceNames,
    /// Kfuncs may be used where the kernel has them (not `--no-kfuncs`).
    kfuncs: bool,
    /// Keys the run totals hold (`--totals-limit`).
    totals_limit: usize,
}

impl CacheSlot for FlowSlot {
    type Key = FlowKey;
    type Stats = FlowStats;
    const SLOTS: u32 = FLOW_CACHE_SLOTS;
    fn entry(&self, generation: u32) -> Option<(FlowKey, FlowStats)> {
        (self.generation == generation && self.stats.packets != 0).then_some((self.key, self.stats))
    }
}

/// Names of the devices flow keys name by their `struct net_device` address.
#[derive(Default)]
struct DeviceNames {
    /// Address -> device, filled by the TC programs and emptied here.
    map: Option<BpfHashMap<MapData, u64, DeviceInfo>>,
    /// (address, ifindex) -> the device's namespace inode, as last read from
    /// `map`. By ifindex too: a device made as another is deleted (a
    /// restarted container's veth) may get the freed one's address, and
    /// `map` then tells of the new one.
    places: HashMap<(u64, u32), u64>,
}

impl Flows {
    pub fn new(cli: &Cli) -> Self {
        Flows {
            mode: cli.tc_attach,
            links: tc::Links::default(),
            counts: None,
            cache: None,
            devices: DeviceNames::default(),
            kfuncs: !cli.no_kfuncs,
            totals_limit: cli.totals_limit,
        }
    }
}

impl DeviceNames {
    /// Takes what the TC programs wrote since the last report: a device
    /// moves to another namespace (they then write its new one). Taken out,
    /// so the map holds the devices of one interval: they write a device
    /// again as its first flow of an interval enters their cache. Deleted
    /// one by one, as 5.10 cannot look up and delete a hash map's entry at
    /// once; an entry rewritten between the two is written again by the
    /// device's next new flow.
    fn take_written(&mut self) {
        let Some(map) = &mut self.map else {
            return;
        };
        let written: Vec<u64> = map.keys().filter_map(Result::ok).collect();
        for dev in written {
            if let Ok(info) = map.get(&dev, 0) {
                self.places
                    .insert((dev, info.ifindex), info.netns_inode as u64);
            }
            let _ = map.remove(&dev);
        }
    }

    /// Names the device at kernel address `dev` with `ifindex`, named again
    /// at every report: a namespace or device is renamed (Docker names a
    /// sandbox after it appears and renames the veth it moves in to eth0).
    fn device(&self, names: &Names, dev: u64, ifindex: u32) -> (String, String) {
        match self.places.get(&(dev, ifindex)) {
            Some(&inode) => names.device(inode, ifindex),
            None => ("?".to_string(), format!("if{ifindex}")),
        }
    }

    /// Named rows in a stable order: by namespace, device, direction, flow.
    fn named(&mut self, names: &Names, flows: Vec<(&FlowKey, &Counts)>) -> Vec<FlowRow> {
        // Tens of thousands of rows on a handful of devices: sort the devices
        // by name once, then the rows by the device's rank, so that no
        // comparison compares names.
        let mut ranks: FxHashMap<(u64, u32), u32> = FxHashMap::default();
        for (key, _) in &flows {
            ranks.entry((key.dev, key.ifindex)).or_default();
        }
        let mut devices: Vec<((u64, u32), DeviceName)> = ranks
            .keys()
            .map(|&(dev, ifindex)| {
                let (netns, iface) = self.device(names, dev, ifindex);
                ((dev, ifindex), (netns.into(), iface.into()))
            })
            .collect();
        devices.sort_by(|a, b| a.1.cmp(&b.1));
        for (rank, (dev, _)) in devices.iter().enumerate() {
            ranks.insert(*dev, rank as u32);
        }
        // The leading fields of the order beside each row: the keys are
        // scattered over megabytes, and a comparison that follows the
        // pointers misses the cache. Ties on them go to the whole id.
        let prefixes: Vec<Prefix> = flows
            .iter()
            .map(|(key, _)| {
                let dir = Direction::from_raw(key.dir);
                let rank = ranks[&(key.dev, key.ifindex)];
                Prefix::of(rank, dir, &key.id.outer)
            })
            .collect();
        let order = sorted(&prefixes, |a, b| id_order(&flows[a].0.id, &flows[b].0.id));
        order
            .into_iter()
            .map(|i| {
                let (key, counts) = flows[i as usize];
                let (rank, dir) = (prefixes[i as usize].rank(), prefixes[i as usize].dir());
                let (netns, iface) = devices[rank as usize].1.clone();
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
}

impl Collector for Flows {
    fn name(&self) -> &'static str {
        "flows"
    }

    fn configure(&mut self, kernel: &Kernel, config: &mut Config) {
        // A load of skb->dev instead of a helper call on every packet.
        config.kern_ctx = (kernel.cast_to_kern_ctx.is_some() && self.kfuncs) as u32;
    }

    fn start(&mut self, ebpf: &mut Ebpf, setup: &Setup) -> Result<Vec<Notice>> {
        // Which device a packet crossed, in which namespace.
        setup.require(&["sk_buff.dev", "net_device.nd_net.net", "net.ns.inum"])?;
        loader::load_classifier(ebpf, tc::INGRESS)?;
        loader::load_classifier(ebpf, tc::EGRESS)?;
        tc::Links::remove_leftovers();
        self.links = tc::Links::new(self.mode, setup.kernel);
        self.links.attach(ebpf, setup.targets)?;
        Ok(Vec::new())
    }

    fn take_maps(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        self.counts = Some(slots::Slots::take(ebpf, self.totals_limit)?);
        self.cache = Some(Cache::take(ebpf, "FLOW_CACHE")?);
        self.devices.map = Some(take_map(ebpf, "DEVICES", BpfHashMap::try_from)?);
        Ok(())
    }

    fn drain(&mut self, barrier: &Barrier) -> Result<()> {
        match &mut self.counts {
            Some(c) => c.drain(barrier, self.cache.as_ref()),
            None => Ok(()),
        }
    }

    fn untotalled(&self) -> u64 {
        self.counts.as_ref().map_or(0, |c| c.untotalled())
    }

    fn fill(&self) -> Option<(usize, u32)> {
        Some(self.counts.as_ref()?.fill())
    }

    fn rows(&mut self, scope: Scope, names: &mut Names, report: &mut Report) {
        // Before `rows`, which ends the interval.
        let Some(counts) = &mut self.counts else {
            return;
        };
        if scope == Scope::Interval {
            report.new_flows = counts.fresh().map(|k| k.id).collect();
        }
        let devices = &mut self.devices;
        devices.take_written();
        report.flows = counts.rows(scope, |e| devices.named(names, e));
    }

    fn sync(&mut self, ebpf: &mut Ebpf, targets: &[crate::topology::Target]) -> Result<usize> {
        Ok(self.links.sync(ebpf, targets))
    }

    fn stop(&mut self, _ebpf: &mut Ebpf) {
        self.links.detach();
    }

    fn attached(&self) -> usize {
        self.links.count()
    }
}

/// The start of the order of rows: (device rank, direction, then
/// [`id_order`] of the outer tuple), as big-endian bytes one after another,
/// which compare in that order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Prefix([u8; PREFIX_BYTES]);

/// rank (4), direction (1), source and destination addresses (16 each),
/// then sport, dport, proto, family, flags, pad (8).
const PREFIX_BYTES: usize = 4 + 1 + 16 + 16 + 8;

impl Prefix {
    fn of(rank: u32, dir: Direction, t: &Tuple) -> Self {
        let mut b = [0; PREFIX_BYTES];
        b[..4].copy_from_slice(&rank.to_be_bytes());
        b[4] = dir as u8;
        b[5..21].copy_from_slice(&t.src);
        b[21..37].copy_from_slice(&t.dst);
        b[37..39].copy_from_slice(&t.sport.to_be_bytes());
        b[39..41].copy_from_slice(&t.dport.to_be_bytes());
        b[41..].copy_from_slice(&[t.proto, t.family, t.flags, t._pad]);
        Prefix(b)
    }

    fn rank(&self) -> u32 {
        u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }

    fn dir(&self) -> Direction {
        match self.0[4] {
            0 => Direction::Egress,
            1 => Direction::Ingress,
            _ => Direction::Sent,
        }
    }
}

/// The indexes of `prefixes` in their order, ties broken by `tie`.
fn sorted(prefixes: &[Prefix], tie: impl Fn(usize, usize) -> Ordering) -> Vec<u32> {
    let mut keyed: Vec<(u64, u32)> = (0..prefixes.len() as u32).map(|i| (0, i)).collect();
    sort_from(prefixes, &mut keyed, 0, &tie);
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// Rows this few are compared whole: a digest costs more than it saves.
const FEW_ROWS: usize = 32;

/// Sorts `rows` ((digest, index into `prefixes`) pairs; the prefixes are
/// all equal before byte `from`).
///
/// By a digest of each: the first eight bytes from `from` on that are not
/// the same in all of them. It orders as the prefixes do as far as it
/// goes, since the bytes it skips are equal everywhere; the rows of a
/// device differ in a few bytes of addresses and ports, so the digest alone
/// orders most rows, and digests sort in linear time. Rows whose digests
/// tie are equal up to the digest's last byte: they are sorted again from
/// the byte after it (a few IPv6 rows among IPv4 ones make their address
/// bytes vary first, and a digest of those ties all the IPv4 rows).
fn sort_from(
    prefixes: &[Prefix],
    rows: &mut [(u64, u32)],
    from: usize,
    tie: &impl Fn(usize, usize) -> Ordering,
) {
    if rows.len() <= FEW_ROWS {
        rows.sort_unstable_by(|a, b| {
            let (i, j) = (a.1 as usize, b.1 as usize);
            prefixes[i].cmp(&prefixes[j]).then_with(|| tie(i, j))
        });
        return;
    }
    // Whole prefixes, which vectorize: the bytes before `from` are equal.
    let Prefix(first) = &prefixes[rows[0].1 as usize];
    let mut varies = [0u8; PREFIX_BYTES];
    for &(_, r) in rows.iter() {
        let Prefix(p) = &prefixes[r as usize];
        for (v, (a, b)) in varies.iter_mut().zip(p.iter().zip(first)) {
            *v |= a ^ b;
        }
    }
    let at: SmallVec<[usize; 8]> = (from..PREFIX_BYTES)
        .filter(|&j| varies[j] != 0)
        .take(8)
        .collect();
    let Some(&last) = at.last() else {
        // Equal prefixes.
        rows.sort_unstable_by(|a, b| tie(a.1 as usize, b.1 as usize));
        return;
    };
    for (digest, r) in rows.iter_mut() {
        let Prefix(b) = &prefixes[*r as usize];
        *digest = at
            .iter()
            .enumerate()
            .fold(0u64, |d, (k, &j)| d | (b[j] as u64) << (56 - 8 * k));
    }
    radix_sort(rows, at.len());
    let mut start = 0;
    while start < rows.len() {
        let d = rows[start].0;
        let end = start + rows[start..].iter().take_while(|e| e.0 == d).count();
        if end - start > 1 {
            sort_from(prefixes, &mut rows[start..end], last + 1, tie);
        }
        start = end;
    }
}

/// Sorts by the top `bytes` bytes of each digest (the rest are zero), one
/// stable counting pass per byte from the last: linear in the rows, where
/// a comparison sort of twenty thousand rows was 4-5% of tracer's time at
/// ten thousand active flows.
fn radix_sort(v: &mut [(u64, u32)], bytes: usize) {
    let mut other = vec![(0, 0); v.len()];
    let (mut from, mut to) = (v, &mut other[..]);
    for k in (0..bytes).rev() {
        let shift = 56 - 8 * k;
        let byte = |d: u64| (d >> shift) as u8 as usize;
        let mut next = [0usize; 256];
        for &(d, _) in from.iter() {
            next[byte(d)] += 1;
        }
        let mut at = 0;
        for n in next.iter_mut() {
            (*n, at) = (at, at + *n);
        }
        for &e in from.iter() {
            let b = byte(e.0);
            to[next[b]] = e;
            next[b] += 1;
        }
        std::mem::swap(&mut from, &mut to);
    }
    // An odd number of passes left the result in `other`.
    if bytes % 2 == 1 {
        to.copy_from_slice(from);
    }
}

/// The order of `FlowId`'s derived `Ord`, comparing the 16-byte addresses
/// as big-endian integers instead of calling `memcmp` twice per tuple: rows
/// are sorted every interval, and most comparisons reach the ports.
pub fn id_order(a: &FlowId, b: &FlowId) -> Ordering {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::tally::sum_percpu;

    fn stats(packets: u64, bytes: u64, max_len: u32) -> FlowStats {
        FlowStats {
            packets,
            bytes,
            frags_first: packets / 2,
            frags_rest: 1,
            df: packets,
            max_len,
            _pad: 0,
        }
    }

    #[test]
    fn rows_sort_by_their_digest_as_by_their_whole_prefix() {
        // Two devices both ways; IPv4 flows that differ in a port only, in
        // an address only, and IPv6 ones that differ past the digest's
        // eight bytes; equal prefixes told apart by the tie-breaker.
        let mut prefixes = Vec::new();
        for n in 0..600u32 {
            let mut t = Tuple::default();
            t.src[10..12].copy_from_slice(&[0xff, 0xff]);
            t.dst[10..12].copy_from_slice(&[0xff, 0xff]);
            t.src[12..].copy_from_slice(&[10, 0, (n % 3) as u8, 1]);
            t.dst[12..].copy_from_slice(&[10, 0, 9, (n % 7) as u8]);
            t.sport = (n.wrapping_mul(7919) % 97) as u16;
            t.dport = 53;
            if n % 5 == 0 {
                t.src = [
                    0x20,
                    1,
                    0xd,
                    0xb8,
                    n as u8,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    (n % 11) as u8,
                ];
                t.dst = [
                    0x20,
                    1,
                    0xd,
                    0xb8,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    (n % 13) as u8,
                    0,
                    1,
                ];
            }
            let dir = if n % 2 == 0 {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            prefixes.push(Prefix::of((n / 150) % 2, dir, &t));
        }
        let tie = |a: usize, b: usize| (a % 4).cmp(&(b % 4)).then(a.cmp(&b));
        let mut expected: Vec<u32> = (0..prefixes.len() as u32).collect();
        expected.sort_by(|&a, &b| {
            let (a, b) = (a as usize, b as usize);
            prefixes[a].cmp(&prefixes[b]).then_with(|| tie(a, b))
        });
        assert_eq!(sorted(&prefixes, tie), expected);
        // Every prefix the same: the tie-breaker alone orders them.
        let same: Vec<Prefix> = (0..5)
            .map(|_| Prefix::of(1, Direction::Egress, &Tuple::default()))
            .collect();
        assert_eq!(sorted(&same, |a, b| b.cmp(&a)), [4, 3, 2, 1, 0]);
        // As many as take the digest's path.
        let many: Vec<Prefix> = (0..FEW_ROWS + 8)
            .map(|_| Prefix::of(1, Direction::Egress, &Tuple::default()))
            .collect();
        let backwards: Vec<u32> = (0..many.len() as u32).rev().collect();
        assert_eq!(sorted(&many, |a, b| b.cmp(&a)), backwards);
        assert!(sorted(&[], tie).is_empty());
        // The row takes its device and direction back from its prefix.
        for (rank, dir) in [
            (0, Direction::Egress),
            (7, Direction::Ingress),
            (u32::MAX, Direction::Sent),
        ] {
            let p = Prefix::of(rank, dir, &Tuple::default());
            assert_eq!((p.rank(), p.dir()), (rank, dir));
        }
    }

    #[test]
    fn per_cpu_values_are_summed_and_max_len_is_the_largest() {
        let c: Counts = sum_percpu(&[stats(3, 300, 100), stats(0, 0, 0), stats(4, 500, 140)]);
        assert_eq!(
            c,
            Counts {
                packets: 7,
                bytes: 800,
                frags_first: 1 + 2,
                frags_rest: 3,
                df: 7,
                max_len: 140
            }
        );
    }

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
