//! The flow counters in slots: a flow holds a slot while it is active, and
//! the programs add its counts at the slot's index in one of two arrays (by
//! generation parity) that this side maps into memory. A drain switches the
//! programs to the other array, waits for running ones, then reads the old
//! array in place and zeroes what it read: no map entry is copied or
//! deleted per flow, where a batched lookup-and-delete of a hash map cost a
//! quarter of tracer's CPU at 10,000 flows.
//!
//! A slot whose flow counted nothing for [`IDLE_DRAINS`] drains is freed in
//! the drain that finds it so: its key leaves the index (programs then take
//! a new slot for it), a second wait on running programs makes sure none
//! still holds the slot, and what one of them may have added meanwhile is
//! read before the slot goes back on the free stack.

use std::os::fd::AsFd as _;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, Stack},
};
use tracer_ebpf::{FlowKey, FlowSlot, FlowStats};

use super::Counts;
use crate::{
    collectors::take_map,
    collectors::{
        double_buffer::{Cache, Extras, Generation},
        tally::{Accumulate as _, Tally},
        totals::UNKNOWN,
    },
    output::Scope,
    sys::bpf::{Barrier, Mapped},
};

/// Drains without a count before a slot is freed. One: short flows come
/// and go by the thousand on busy hosts, and a slot held longer is one they
/// cannot have (2 instead of 1 counted a quarter fewer of the bench's
/// 20,000 short flows through 1,024 slots). A steady flow that misses an
/// interval by a hair takes a new slot: a lookup and an insert.
const IDLE_DRAINS: u8 = 1;

pub struct Slots {
    generation: Generation,
    /// The programs' counters by slot, per generation parity.
    stats: [Mapped<FlowStats>; 2],
    /// The key of each slot, as the programs wrote it when one took it;
    /// unchanged while the slot is held.
    keys: Mapped<FlowKey>,
    index: BpfHashMap<MapData, FlowKey, u32>,
    free: Stack<MapData, u32>,
    /// Per CPU: one past the highest slot its programs took.
    high: PerCpuArray<MapData, u32>,
    /// What this side knows of each slot, up to the highest seen.
    held: Vec<Held>,
    /// Slots held after the last drain.
    in_use: usize,
    tally: Tally<FlowKey, Counts>,
}

#[derive(Clone, Copy, Default)]
enum Held {
    /// On the free stack, or taken by a program and not yet seen counting.
    #[default]
    Free,
    /// Counting for its key; `idle` drains since it last counted; where
    /// its key's run total is ([`Tally::total_at`]), so that the totals
    /// add to it without hashing the key again.
    Counting { idle: u8, total: u32 },
}

/// The [`Extras`] fingerprint of a flow, from the fields that tell flows
/// apart most often (device, direction, ports, the addresses' low bytes,
/// VNI): a few loads where hashing reads all 104 bytes.
fn fingerprint(k: &FlowKey) -> usize {
    let t = &k.id.outer;
    let i = &k.id.inner;
    let low = |a: &[u8; 16]| u32::from_le_bytes([a[12], a[13], a[14], a[15]]) as u64;
    let words = [
        k.dev ^ (k.ifindex as u64) << 32 ^ k.dir as u64,
        low(&t.src) << 32 | low(&t.dst),
        (t.sport as u64) << 48 | (t.dport as u64) << 32 | (i.sport as u64) << 16 | i.dport as u64,
        low(&i.src) << 32 ^ low(&i.dst) ^ (k.id.vni as u64) << 8 ^ t.proto as u64,
    ];
    let mut h = 0u64;
    for w in words {
        h = (h.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    (h >> 52) as usize
}

impl Slots {
    /// Takes the slot maps out of `ebpf` and puts every slot on the free
    /// stack; the run totals hold at most `totals_limit` keys.
    pub fn take(ebpf: &mut Ebpf, totals_limit: usize) -> Result<Self> {
        let generation = Generation::take(ebpf, "FLOW_GENERATION")?;
        fn mapped<T: aya::Pod>(ebpf: &mut Ebpf, name: &str) -> Result<Mapped<T>> {
            let map = take_map(ebpf, name, |m| match m {
                aya::maps::Map::Array(data) => Ok(data),
                _ => Err(std::io::Error::other("not an array")),
            })?;
            let entries = map.info()?.max_entries();
            Mapped::new(map.fd().as_fd(), entries as usize).with_context(|| format!("mmap {name}"))
        }
        let stats = [mapped(ebpf, "FLOW_STATS_0")?, mapped(ebpf, "FLOW_STATS_1")?];
        let keys = mapped(ebpf, "FLOW_KEYS")?;
        let high = take_map(ebpf, "FLOW_HIGH", PerCpuArray::try_from)?;
        let index = take_map(ebpf, "FLOW_INDEX", BpfHashMap::try_from)?;
        let mut free: Stack<MapData, u32> = take_map(ebpf, "FLOW_FREE", Stack::try_from)?;
        // The lowest slots on top: the slots in use stay at the low end.
        for slot in (0..stats[0].len() as u32).rev() {
            free.push(slot, 0).context("fill the free flow slots")?;
        }
        Ok(Slots {
            generation,
            stats,
            keys,
            index,
            free,
            high,
            held: Vec::new(),
            in_use: 0,
            tally: Tally::limited(totals_limit),
        })
    }

    /// Moves what the programs counted since the last drain into the tally:
    /// the old generation's array, and what `cache` still holds for it.
    pub fn drain(&mut self, barrier: &Barrier, cache: Option<&Cache<FlowSlot>>) -> Result<()> {
        let old = self.generation.switch(barrier)?;

        // Flows the cache still holds: merged with their slot's counts, so
        // that each key is one entry of the interval.
        let mut extra = Extras::new(fingerprint);
        if let Some(cache) = cache {
            for (key, stats) in cache.entries(old)? {
                extra.add(key, &Counts::from(&stats));
            }
        }
        // Every slot a program of the old generation took is below it: they
        // have all returned.
        let high = self.high.get(&0, 0)?.iter().copied().max().unwrap_or(0) as usize;
        for stats in &mut self.stats {
            stats.reach(high).context("map flow counters")?;
        }
        self.keys.reach(high).context("map flow keys")?;
        let keys = &self.keys;
        let key_of = |slot: usize| {
            keys.get(slot)
                .ok_or_else(|| anyhow!("flow slot {slot} is not mapped"))
        };
        let stats = &self.stats[(old & 1) as usize];
        // Slots that counted, with their entry in the tally: where their
        // key's total is, once settled.
        let mut placed: Vec<(usize, usize)> = Vec::new();
        for slot in 0..high {
            let Some(s) = stats.take(slot) else {
                if let Some(Held::Counting { idle, .. }) = self.held.get_mut(slot) {
                    *idle = idle.saturating_add(1);
                }
                continue;
            };
            if slot >= self.held.len() {
                self.held.resize(slot + 1, Held::Free);
            }
            let key = key_of(slot)?;
            let mut counts = Counts::from(&s);
            if let Some(e) = extra.take(&key) {
                counts.add(&e);
            }
            let total = match self.held[slot] {
                Held::Counting { total, .. } => total,
                Held::Free => UNKNOWN,
            };
            let entry = self.tally.add_at(key, counts, total);
            self.held[slot] = Held::Counting { idle: 0, total };
            placed.push((slot, entry));
        }

        // Idle slots: their keys leave the index, then once no program can
        // still hold one, what a program that found it before may have added
        // to the running generation's array joins this interval (its key is
        // then not among the slots read above: it counted nothing there).
        let idle: Vec<usize> = (self.held.iter().enumerate())
            .filter(|(_, h)| matches!(h, Held::Counting { idle, .. } if *idle >= IDLE_DRAINS))
            .map(|(slot, _)| slot)
            .collect();
        if !idle.is_empty() {
            for &slot in &idle {
                // Gone already: the programs found no slot for it.
                let _ = self.index.remove(&key_of(slot)?);
            }
            barrier.wait().context("wait for running BPF programs")?;
            let running = &self.stats[(self.generation.active() & 1) as usize];
            for &slot in &idle {
                if let Some(s) = running.take(slot) {
                    extra.add(key_of(slot)?, &Counts::from(&s));
                }
                self.held[slot] = Held::Free;
                self.free.push(slot as u32, 0).context("free a flow slot")?;
            }
        }
        for (key, counts) in extra.rest() {
            self.tally.add(key, counts);
        }
        self.tally.settle();
        for (slot, entry) in placed {
            if let Held::Counting { total, .. } = &mut self.held[slot] {
                *total = self.tally.total_at(entry);
            }
        }
        self.in_use = (self.held.iter())
            .filter(|h| matches!(h, Held::Counting { .. }))
            .count();
        Ok(())
    }

    /// Interval entries the run totals left out (see [`Tally::untotalled`]).
    pub fn untotalled(&self) -> u64 {
        self.tally.untotalled()
    }

    /// Slots held after the last drain, and how many there are.
    pub fn fill(&self) -> (usize, u32) {
        (self.in_use, self.stats[0].len() as u32)
    }

    /// The keys of the interval so far that the run had not seen before it.
    pub fn fresh(&self) -> impl Iterator<Item = &FlowKey> {
        self.tally.fresh()
    }

    /// `name`s the entries of `scope` into rows; `Scope::Interval` then
    /// starts a new interval.
    pub fn rows<R>(
        &mut self,
        scope: Scope,
        name: impl FnOnce(Vec<(&FlowKey, &Counts)>) -> Vec<R>,
    ) -> Vec<R> {
        self.tally.rows(scope, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sport: u16, dir: u8) -> FlowKey {
        let mut k = FlowKey {
            dev: 0xffff_8880_0123_4000,
            ifindex: 7,
            dir,
            ..FlowKey::default()
        };
        k.id.outer.sport = sport;
        k.id.outer.dport = 9000;
        k
    }

    fn packets(n: u64) -> Counts {
        Counts {
            packets: n,
            ..Counts::default()
        }
    }

    #[test]
    fn extras_are_taken_once_each_whatever_their_fingerprints() {
        let mut e = Extras::new(fingerprint);
        let added: Vec<FlowKey> = (0..300).map(|i| key(10_000 + i, (i % 2) as u8)).collect();
        for (i, k) in added.iter().enumerate() {
            e.add(*k, &packets(i as u64 + 1));
        }
        // The same key again adds to its entry.
        e.add(added[0], &packets(10));
        assert_eq!(e.take(&added[0]).map(|c| c.packets), Some(11));
        assert_eq!(e.take(&added[0]), None);
        for (i, k) in added.iter().enumerate().skip(1) {
            assert_eq!(e.take(k).map(|c| c.packets), Some(i as u64 + 1));
        }
        // Keys never added: none, though some share a bit with those added.
        for i in 0..2_000 {
            assert_eq!(e.take(&key(20_000 + i, 0)), None);
        }
        assert_eq!(e.rest().count(), 0);
    }
}
