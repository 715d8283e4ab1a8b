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

/// Drains without a count before a slot is freed. One: short flows come
/// and go by the thousand on busy hosts, and a slot held longer is one they
/// cannot have (2 instead of 1 counted a quarter fewer of the bench's
/// 20,000 short flows through 1,024 slots). A steady flow that misses an
/// interval by a hair takes a new slot: a lookup and an insert.
const IDLE_DRAINS: u8 = 1;

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
    /// Slots held after the last drain.
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

        // Idle slots: their keys leave the index, then once no program can
        // still hold one, what a program that found it before may have added
        // to the running generation's array joins this interval (its key is
        // then not among the slots read above: it counted nothing there).
        let idle: Vec<usize> = (self.held.iter().enumerate())
            .filter(|(_, h)| matches!(h, Held::Counting { idle } if *idle >= IDLE_DRAINS))
            .map(|(slot, _)| slot)
            .collect();
        if !idle.is_empty() {
            for &slot in &idle {
                // Gone already: the programs found no slot for it.
                let _ = self.index.remove(&key_of(slot)?);
            }
            barrier.wait().context("wait for running BPF programs")?;
            let running = &self.stats[(self.active & 1) as usize];
            for &slot in &idle {
                if let Some(s) = running.take(slot) {
                    extra
                        .entry(key_of(slot)?)
                        .or_default()
                        .add(&Counts::from(&s));
                }
                self.held[slot] = Held::Free;
                self.free.push(slot as u32, 0).context("free a flow slot")?;
            }
        }
        for (key, counts) in extra {
            self.tally.add(key, counts);
        }
        self.tally.settle();
        self.in_use = (self.held.iter())
            .filter(|h| matches!(h, Held::Counting { .. }))
            .count();
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
