//! Draining a pair of per-CPU hash maps that the eBPF programs fill in turn.
//!
//! The programs write to the map named by a generation index. To drain, userspace
//! points them at the other map, waits on a [`Barrier`] until no program can
//! still be writing to the old one, then empties it with batched
//! lookup-and-delete. No update is lost between the read and the delete, which a
//! single map drained in place cannot promise.

use std::{
    cell::RefCell,
    hash::{BuildHasher as _, Hash},
    marker::PhantomData,
    os::fd::AsFd as _,
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, Pod,
    maps::{Array, Map, MapData, PerCpuArray},
};
// Looked up for every drained entry (tens of thousands a second): FxHash.
use rustc_hash::{FxBuildHasher, FxHashMap as HashMap};
use tracer_ebpf::{CacheSet, cache_sets};

use crate::{
    collectors::{
        take_map,
        tally::{Accumulate, Tally, sum_percpu},
    },
    output::Scope,
    sys::bpf::{Barrier, drain_hash, percpu_stride},
};

/// Which of two buffers the programs count in: a count of drains, whose
/// parity is the buffer, in a one-entry array they read on every run.
pub struct Generation {
    map: Array<MapData, u32>,
    active: u32,
}

impl Generation {
    /// Takes the array `name` out of `ebpf`.
    pub fn take(ebpf: &mut Ebpf, name: &str) -> Result<Self> {
        Ok(Generation {
            map: take_map(ebpf, name, Array::try_from)?,
            active: 0,
        })
    }

    /// Points the programs at the other buffer and waits until none can
    /// still count in the one they left, whose generation it returns.
    pub fn switch(&mut self, barrier: &Barrier) -> Result<u32> {
        let old = self.active;
        self.map
            .set(0, old.wrapping_add(1), 0)
            .context("switch map generation")?;
        barrier.wait().context("wait for running BPF programs")?;
        self.active = old.wrapping_add(1);
        Ok(old)
    }

    /// The generation the programs count in now.
    pub fn active(&self) -> u32 {
        self.active
    }
}

pub struct DoubleBuffer {
    generation: Generation,
    maps: [MapData; 2],
    ncpus: usize,
    /// Entries of the last drain.
    drained: usize,
}

impl DoubleBuffer {
    /// Takes the maps out of `ebpf`: `generation` is an array of one u32,
    /// `names` the two per-CPU hash maps it selects between.
    pub fn take(ebpf: &mut Ebpf, generation: &str, names: [&str; 2]) -> Result<Self> {
        let generation = Generation::take(ebpf, generation)?;
        let ncpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        let mut take_hash = |name: &str| {
            take_map(ebpf, name, |map| match map {
                Map::PerCpuHashMap(data) => Ok(data),
                _ => Err(std::io::Error::other("not a per-CPU hash map")),
            })
        };
        let maps = [take_hash(names[0])?, take_hash(names[1])?];
        Ok(Self {
            generation,
            maps,
            ncpus,
            drained: 0,
        })
    }

    /// Switches the programs to the other map and hands every entry of the one
    /// they were writing to `f`, with its values (one per possible CPU);
    /// returns the number of entries.
    /// `settled` runs once no program writes to the old generation any more,
    /// before its map is drained, and is given that generation.
    pub fn drain<K: Pod, V: Pod>(
        &mut self,
        barrier: &Barrier,
        settled: impl FnOnce(u32) -> Result<()>,
        mut f: impl FnMut(K, &[V]),
    ) -> Result<usize> {
        let old = self.generation.switch(barrier)?;
        settled(old)?;

        let (count, step) = (self.ncpus, percpu_stride(size_of::<V>()));
        let mut values: Vec<V> = Vec::with_capacity(count);
        let n = drain_hash(
            self.maps[(old & 1) as usize].fd().as_fd(),
            size_of::<K>(),
            size_of::<V>(),
            self.ncpus,
            |k, v| {
                // SAFETY: the kernel wrote `size_of::<K>()` bytes of a `K` and,
                // per value, `size_of::<V>()` bytes of a `V`; both are Pod.
                let key = unsafe { std::ptr::read_unaligned(k.as_ptr().cast::<K>()) };
                values.clear();
                for i in 0..count {
                    let p = v[i * step..].as_ptr().cast::<V>();
                    // SAFETY: as above, `p` points at `size_of::<V>()` bytes the kernel wrote.
                    values.push(unsafe { std::ptr::read_unaligned(p) });
                }
                f(key, &values);
            },
        )
        .context("drain map")?;
        self.drained = n;
        Ok(n)
    }
}

/// A slot of a per-CPU cache the programs count in before a double-buffered
/// map ([`tracer_ebpf::FlowSlot`], [`tracer_ebpf::VerdictSlot`],
/// [`tracer_ebpf::DropSlot`]): the cache
/// has a half of [`CacheSlot::SLOTS`] per generation parity, and a slot
/// holds what one key counted in its generation until another key takes it.
pub trait CacheSlot: Pod {
    type Key;
    type Stats;
    const SLOTS: u32;
    /// The slot's key and counts, if they are of `generation` and count something.
    fn entry(&self, generation: u32) -> Option<(Self::Key, Self::Stats)>;
}

/// The programs' per-CPU cache of `T` slots, in sets of [`tracer_ebpf::CACHE_WAYS`].
pub struct Cache<T: Pod>(PerCpuArray<MapData, CacheSet<T>>);

impl<T: CacheSlot> Cache<T> {
    pub fn take(ebpf: &mut Ebpf, name: &str) -> Result<Self> {
        Ok(Cache(take_map(ebpf, name, PerCpuArray::try_from)?))
    }

    /// What the cache holds for `generation`: the entries of its half that
    /// belong to it, one per CPU that has one.
    pub fn entries(&self, generation: u32) -> Result<Vec<(T::Key, T::Stats)>> {
        let sets = cache_sets(T::SLOTS);
        let first = (generation & 1) * sets;
        let mut entries = Vec::new();
        for index in first..first + sets {
            for set in self.0.get(&index, 0)?.iter() {
                entries.extend(set.iter().filter_map(|slot| slot.entry(generation)));
            }
        }
        Ok(entries)
    }
}

/// What a per-CPU cache held of a drained generation, by key, to merge into
/// the drained entries of the same key. A drain reads up to tens of
/// thousands of entries and the cache holds a few dozen per CPU: a bit per
/// fingerprint says which entries' keys are worth hashing to look up.
pub struct Extras<K, V> {
    map: HashMap<K, V>,
    /// 4,096 bits: about 2 false hits in a hundred entries per hundred extras.
    seen: [u64; 64],
    /// A bit index below 4,096 from a few of the key's bytes; [`hashed`] when there is no
    /// cheaper one.
    fingerprint: fn(&K) -> usize,
}

/// A fingerprint for [`Extras`] from the key's FxHash.
pub fn hashed<K: Hash>(k: &K) -> usize {
    (FxBuildHasher.hash_one(k) >> 52) as usize
}

impl<K: Eq + Hash, V: Accumulate> Extras<K, V> {
    pub fn new(fingerprint: fn(&K) -> usize) -> Self {
        Extras {
            map: HashMap::default(),
            seen: [0; 64],
            fingerprint,
        }
    }

    fn bit(&self, key: &K) -> usize {
        let f = (self.fingerprint)(key);
        debug_assert!(f < 4096, "a fingerprint is a bit of 4,096");
        f
    }

    pub fn add(&mut self, key: K, v: &V) {
        let f = self.bit(&key);
        self.seen[f / 64] |= 1 << (f % 64);
        self.map.entry(key).or_default().add(v);
    }

    /// What was added for `key`, once.
    pub fn take(&mut self, key: &K) -> Option<V> {
        if self.map.is_empty() {
            return None;
        }
        let f = self.bit(key);
        if self.seen[f / 64] & (1 << (f % 64)) == 0 {
            return None;
        }
        self.map.remove(key)
    }

    /// What was not taken.
    pub fn rest(self) -> impl Iterator<Item = (K, V)> {
        self.map.into_iter()
    }
}

/// A collector's double-buffered kernel map of per-CPU `S` values by key
/// `K` (once taken from the object), and the interval and run totals (`V`)
/// of what was drained from it.
pub struct Drained<K, S, V> {
    maps: Option<DoubleBuffer>,
    tally: Tally<K, V>,
    _values: PhantomData<S>,
}

impl<K, S, V> Default for Drained<K, S, V> {
    fn default() -> Self {
        Drained {
            maps: None,
            tally: Tally::default(),
            _values: PhantomData,
        }
    }
}

impl<K, S, V> Drained<K, S, V>
where
    K: Pod + Eq + Hash,
    S: Pod,
    V: Accumulate + for<'a> From<&'a S>,
{
    /// Counts whose run totals hold at most `limit` keys (`--totals-limit`).
    pub fn limited(limit: usize) -> Self {
        Drained {
            tally: Tally::limited(limit),
            ..Drained::default()
        }
    }

    /// Interval entries the run totals left out (see [`Tally::untotalled`]).
    pub fn untotalled(&self) -> u64 {
        self.tally.untotalled()
    }

    /// Takes the maps `<prefix>_0`, `<prefix>_1` and `<generation>` out of `ebpf`.
    pub fn take(&mut self, ebpf: &mut Ebpf, generation: &str, prefix: &str) -> Result<()> {
        let names = [format!("{prefix}_0"), format!("{prefix}_1")];
        self.maps = Some(DoubleBuffer::take(
            ebpf,
            generation,
            [&names[0], &names[1]],
        )?);
        Ok(())
    }

    /// Moves what the programs counted since the last drain into the tally.
    pub fn drain(&mut self, barrier: &Barrier) -> Result<()> {
        self.drain_with(barrier, |_| Ok(Vec::new()))
    }

    /// [`Drained::drain`], plus what `cached` returns for the drained
    /// generation: counts the programs kept outside the maps (a per-CPU
    /// cache in front of them), merged with the map's entry of the same key
    /// so that each key is still one entry of the interval.
    pub fn drain_with(
        &mut self,
        barrier: &Barrier,
        cached: impl FnOnce(u32) -> Result<Vec<(K, S)>>,
    ) -> Result<()> {
        let Some(maps) = &mut self.maps else {
            return Ok(());
        };
        let tally = &mut self.tally;
        // Filled once the programs are off the generation, read per map entry after.
        let extra = RefCell::new(Extras::new(hashed::<K>));
        maps.drain::<K, S>(
            barrier,
            |generation| {
                let mut extra = extra.borrow_mut();
                for (key, stats) in cached(generation)? {
                    extra.add(key, &V::from(&stats));
                }
                Ok(())
            },
            |key, values| {
                let mut sum: V = sum_percpu(values);
                if let Some(e) = extra.borrow_mut().take(&key) {
                    sum.add(&e);
                }
                tally.add(key, sum);
            },
        )?;
        for (key, v) in extra.into_inner().rest() {
            tally.add(key, v);
        }
        tally.settle();
        Ok(())
    }

    /// [`Drained::drain_with`] what `cache` holds for the drained generation.
    pub fn drain_cached<T: CacheSlot<Key = K, Stats = S>>(
        &mut self,
        barrier: &Barrier,
        cache: Option<&Cache<T>>,
    ) -> Result<()> {
        self.drain_with(barrier, |generation| match cache {
            Some(c) => c.entries(generation),
            None => Ok(Vec::new()),
        })
    }

    /// Entries the map held at the last drain, and its capacity.
    pub fn fill(&self) -> Option<(usize, u32)> {
        let maps = self.maps.as_ref()?;
        let capacity = maps.maps[0].info().ok()?.max_entries();
        Some((maps.drained, capacity))
    }

    /// The keys of the interval so far that the run had not seen before it.
    pub fn fresh(&self) -> impl Iterator<Item = &K> {
        self.tally.fresh()
    }

    /// [`Tally::rows`].
    pub fn rows<R>(&mut self, scope: Scope, name: impl FnOnce(Vec<(&K, &V)>) -> Vec<R>) -> Vec<R> {
        self.tally.rows(scope, name)
    }
}
