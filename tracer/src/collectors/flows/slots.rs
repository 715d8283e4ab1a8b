//! The flow counters in slots: a flow holds a slot while it is active, and
//! the programs add its counts at the slot's index in one of two arrays (by
//! generation parity) that this side maps into memory. A drain switches the
//! programs to the other array, waits for running ones, then reads the old
//! array in place and zeroes what it read: no map entry is copied or
//! deleted per flow, where a batched lookup-and-delete of a hash map cost a
//! quarter of tracer's CPU at 10,000 flows.
//!
//! A slot whose flow counted nothing for [`IDLE_DRAINS`] drains is freed in
//! two steps: its key leaves the index (programs then take a new slot for
//! it), and at the next drain, once no program can still hold the slot and
//! its last counts are read, it goes back on the free stack.

use std::os::fd::AsFd as _;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, Stack},
};
// Looked up for every slot read when the cache holds something: FxHash.
use rustc_hash::FxHashMap as HashMap;
use tracer_ebpf::{FlowKey, FlowSlot, FlowStats};

use super::Counts;
use crate::{
    collectors::{
        double_buffer::Cache,
        tally::{Accumulate as _, Tally},
    },
    output::Scope,
    sys::bpf::{Barrier, Mapped},
};

/// Drains without a count before a slot is freed: a flow that sends a
/// packet a second at `--interval 1` may miss one interval by a hair.
const IDLE_DRAINS: u8 = 2;

pub struct Slots {
    generation: Array<MapData, u32>,
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
    /// Slots whose key left the index at the last drain.
    leaving: Vec<u32>,
    /// Slots held (counting or leaving) after the last drain.
    in_use: usize,
    /// The generation the programs count for now: a count of drains.
    active: u32,
    tally: Tally<FlowKey, Counts>,
}

#[derive(Clone, Copy, Default)]
enum Held {
    /// On the free stack, or taken by a program and not yet seen counting.
    #[default]
    Free,
    /// Counting for its key; `idle` drains since it last counted.
    Counting { idle: u8 },
    /// Out of the index, with its last counts still to be read.
    Leaving,
}

fn take<T>(
    ebpf: &mut Ebpf,
    name: &str,
    of: impl FnOnce(aya::maps::Map) -> Result<T, aya::maps::MapError>,
) -> Result<T> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("eBPF object has no map {name}"))?;
    of(map).with_context(|| format!("map {name}"))
}

impl Slots {
    /// Takes the slot maps out of `ebpf` and puts every slot on the free stack.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let generation = take(ebpf, "FLOW_GENERATION", Array::try_from)?;
        fn mapped<T: aya::Pod>(ebpf: &mut Ebpf, name: &str) -> Result<Mapped<T>> {
            let map = take(ebpf, name, |m| match m {
                aya::maps::Map::Array(data) => Ok(data),
                _ => Err(aya::maps::MapError::InvalidName { name: name.into() }),
            })?;
            let entries = map.info()?.max_entries();
            Mapped::new(map.fd().as_fd(), entries as usize).with_context(|| format!("mmap {name}"))
        }
        let stats = [mapped(ebpf, "FLOW_STATS_0")?, mapped(ebpf, "FLOW_STATS_1")?];
        let keys = mapped(ebpf, "FLOW_KEYS")?;
        let high = take(ebpf, "FLOW_HIGH", PerCpuArray::try_from)?;
        let index = take(ebpf, "FLOW_INDEX", BpfHashMap::try_from)?;
        let mut free: Stack<MapData, u32> = take(ebpf, "FLOW_FREE", Stack::try_from)?;
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
            leaving: Vec::new(),
            in_use: 0,
            active: 0,
            tally: Tally::default(),
        })
    }

    /// Moves what the programs counted since the last drain into the tally:
    /// the old generation's array, and what `cache` still holds for it.
    pub fn drain(&mut self, barrier: &Barrier, cache: Option<&Cache<FlowSlot>>) -> Result<()> {
        let old = self.active;
        self.generation
            .set(0, old.wrapping_add(1), 0)
            .context("switch flow generation")?;
        barrier.wait().context("wait for running BPF programs")?;
        self.active = old.wrapping_add(1);

        // Flows the cache still holds: merged with their slot's counts, so
        // that each key is one entry of the interval.
        let mut extra: HashMap<FlowKey, Counts> = HashMap::default();
        if let Some(cache) = cache {
            for (key, stats) in cache.entries(old)? {
                extra.entry(key).or_default().add(&Counts::from(&stats));
            }
        }
        // Every slot a program of the old generation took is below it: they
        // have all returned.
        let high = self.high.get(&0, 0)?.iter().copied().max().unwrap_or(0) as usize;
        let stats = &mut self.stats[(old & 1) as usize];
        stats.reach(high).context("map flow counters")?;
        self.keys.reach(high).context("map flow keys")?;
        let (stats, keys) = (&*stats, &self.keys);
        let key_of = |slot: usize| {
            keys.get(slot)
                .ok_or_else(|| anyhow!("flow slot {slot} is not mapped"))
        };
        // Slots out of the index: their key may hold a new slot by now.
        for &slot in &self.leaving {
            if let Some(s) = stats.take(slot as usize) {
                extra
                    .entry(key_of(slot as usize)?)
                    .or_default()
                    .add(&Counts::from(&s));
            }
        }
        for slot in 0..high {
            let Some(s) = stats.take(slot) else {
                if let Some(Held::Counting { idle }) = self.held.get_mut(slot) {
                    *idle = idle.saturating_add(1);
                }
                continue;
            };
            if slot >= self.held.len() {
                self.held.resize(slot + 1, Held::Free);
            }
            // A leaving slot was read above: this one counts for its key.
            let key = key_of(slot)?;
            self.held[slot] = Held::Counting { idle: 0 };
            let mut counts = Counts::from(&s);
            if !extra.is_empty()
                && let Some(e) = extra.remove(&key)
            {
                counts.add(&e);
            }
            self.tally.add(key, counts);
        }
        for (key, counts) in extra {
            self.tally.add(key, counts);
        }
        self.tally.settle();

        // Out of the index since the last drain: no program holds them now,
        // and their last counts were just read.
        for slot in self.leaving.drain(..) {
            self.held[slot as usize] = Held::Free;
            self.free.push(slot, 0).context("free a flow slot")?;
        }
        self.in_use = 0;
        for (slot, held) in self.held.iter_mut().enumerate() {
            match *held {
                Held::Counting { idle } if idle >= IDLE_DRAINS => {
                    // Gone already: the programs found no slot for it.
                    if let Some(key) = self.keys.get(slot) {
                        let _ = self.index.remove(&key);
                    }
                    *held = Held::Leaving;
                    self.leaving.push(slot as u32);
                    self.in_use += 1;
                }
                Held::Counting { .. } | Held::Leaving => self.in_use += 1,
                Held::Free => {}
            }
        }
        Ok(())
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
        let rows = name(self.tally.entries(scope));
        if scope == Scope::Interval {
            self.tally.end_interval();
        }
        rows
    }
}
