//! The programs' side of the per-CPU caches ([`tracer_ebpf::cache_set`]): the
//! set of a key in this CPU's cache map, and the slot it counts in there.

use aya_ebpf::maps::PerCpuArray;
pub use tracer_ebpf::cache_set::*;
use tracer_ebpf::{CACHE_WAYS, CacheSet};

/// Where a key counts in a cache.
pub enum Found<'a, S> {
    /// Its slot, live.
    Hit(&'a mut S),
    /// An empty slot it takes.
    Empty(&'a mut S),
    /// The slot it takes from another key, whose counts go to the map
    /// before the slot is overwritten.
    Evict(&'a mut S),
}

/// `key`'s slot in this CPU's `cache` of `SLOTS` slots (a power of two) per
/// half, in the half of `generation`; else the slot of its set it takes.
#[inline(always)]
pub fn find<'a, S: Slot, const SLOTS: u32>(
    cache: &'a PerCpuArray<CacheSet<S>>,
    key: &impl KeyWords,
    generation: u32,
) -> Option<Found<'a, S>> {
    // SAFETY: a value of this CPU's cache, which only one kind of program
    // uses and whose runs do not nest on a CPU.
    let set = unsafe { &mut *cache.get_ptr_mut(set_index::<SLOTS, _>(key, generation))? };
    // Each index bounded right before the access, for older verifiers.
    Some(match way(set, key, generation) {
        Way::Hit(w) => Found::Hit(&mut set[w & (CACHE_WAYS - 1)]),
        Way::Empty(w) => Found::Empty(&mut set[w & (CACHE_WAYS - 1)]),
        Way::Evict(w) => Found::Evict(&mut set[w & (CACHE_WAYS - 1)]),
    })
}
