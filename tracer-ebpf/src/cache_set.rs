//! The per-CPU caches the programs count in before their double-buffered
//! maps (flows, verdicts, drops): a packet of a key the CPU keeps seeing is
//! added to a slot found by folding the key's words, without hashing the
//! key into a map. A slot goes to the map when another key takes it;
//! userspace reads what the slots of a drained generation still hold.
//!
//! Each cache has a half per generation parity, and a slot records the
//! generation it counts for: one of an older generation is empty (userspace
//! read it when that generation was drained).
//!
//! This is the caches' layout and policy, shared so that host tests hold
//! them; the programs' side looks a set up (the binary's `cache` module).
//!
//! A key may sit in any of the [`CACHE_WAYS`] slots of its set: a packet
//! crosses up to eight traced hops on a CPU, a key each. When each key had
//! one place of 64, two of eight keys shared one about a third of the time,
//! and took it from each other on every packet, each time through the map;
//! which flows did changed with their ports, from run to run.

use crate::{
    CACHE_WAYS, CacheSet, DropKey, DropSlot, FlowKey, FlowSlot, VerdictKey, VerdictSlot, cache_sets,
};

/// A key as its eight-byte words, wherever they are.
pub trait KeyWords {
    /// Words in the key.
    const WORDS: usize;
    fn word(&self, i: usize) -> u64;
}

/// Keys held whole in memory: every one is a multiple of eight bytes long
/// and sits 8-aligned in a map value.
macro_rules! in_memory {
    ($($key:ty),*) => {$(
        const _: () = assert!(size_of::<$key>().is_multiple_of(8));
        impl KeyWords for $key {
            const WORDS: usize = size_of::<$key>() / 8;
            #[inline(always)]
            fn word(&self, i: usize) -> u64 {
                // SAFETY: callers pass i < WORDS, and the key is 8-aligned:
                // the word is inside *self.
                unsafe { (self as *const $key).cast::<u64>().add(i).read() }
            }
        }
    )*};
}
in_memory!(FlowKey, VerdictKey, DropKey);

/// A slot of a cache: a generation, a word after it, a key and counts.
pub trait Slot {
    type Key: KeyWords;
    fn key(&self) -> &Self::Key;
    /// It holds counts of `generation`: a slot is never taken to count nothing.
    fn live(&self, generation: u32) -> bool;
    /// In a set's first slot: how many slots the set gave up to new keys.
    fn evictions(&mut self) -> &mut u32;
}

macro_rules! slot {
    ($($slot:ty => $key:ty, |$s:ident| $counts:expr);* $(;)?) => {$(
        impl Slot for $slot {
            type Key = $key;
            #[inline(always)]
            fn key(&self) -> &$key {
                &self.key
            }
            #[inline(always)]
            fn live(&self, generation: u32) -> bool {
                let $s = self;
                $s.generation == generation && $counts
            }
            #[inline(always)]
            fn evictions(&mut self) -> &mut u32 {
                &mut self.evictions
            }
        }
    )*};
}
slot! {
    FlowSlot => FlowKey, |s| s.stats.packets != 0;
    DropSlot => DropKey, |s| s.stats.packets != 0;
    VerdictSlot => VerdictKey, |s| s.stats.entered | s.stats.left != 0;
}

/// Which slot of a set a key counts in, and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// The key's own slot.
    Hit(usize),
    /// An empty slot the key takes.
    Empty(usize),
    /// The slot the key takes from another key, whose counts go to the map first.
    Evict(usize),
}

/// Which slot of `set` `key` counts in: its own; else the first empty one (a
/// set's slots fill in order and stay live until the generation changes,
/// so past the first empty one, all are); else, when all hold other keys,
/// each in turn.
#[inline(always)]
pub fn way<S: Slot>(set: &mut CacheSet<S>, key: &impl KeyWords, generation: u32) -> Way {
    for (way, slot) in set.iter().enumerate() {
        if !slot.live(generation) {
            return Way::Empty(way);
        }
        if same(slot.key(), key) {
            return Way::Hit(way);
        }
    }
    let evictions = set[0].evictions();
    let way = *evictions as usize % CACHE_WAYS;
    *evictions = evictions.wrapping_add(1);
    Way::Evict(way)
}

/// The set of `key` among `SLOTS` slots per half: its words folded and mixed
/// (Fibonacci hashing), in the half of `generation`.
#[inline(always)]
pub fn set_index<const SLOTS: u32, K: KeyWords>(key: &K, generation: u32) -> u32 {
    const { assert!(SLOTS.is_power_of_two() && SLOTS as usize >= 2 * CACHE_WAYS) };
    let sets = cache_sets(SLOTS);
    let mut x = 0u64;
    for i in 0..K::WORDS {
        x ^= key.word(i);
    }
    let set = (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - sets.trailing_zeros())) as u32;
    (generation & 1) * sets + set
}

/// `a == b`, a word at a time without a branch per word (a derived `==`
/// compares the address arrays with a `memcmp` eBPF lacks).
#[inline(always)]
pub fn same<K: KeyWords>(a: &K, b: &impl KeyWords) -> bool {
    let mut diff = 0u64;
    for i in 0..K::WORDS {
        diff |= a.word(i) ^ b.word(i);
    }
    diff == 0
}

/// Writes `from` over the slot's key `to`, a word at a time.
#[inline(always)]
pub fn store<K: KeyWords>(to: &mut K, from: &impl KeyWords) {
    let words = (to as *mut K).cast::<u64>();
    for i in 0..K::WORDS {
        // SAFETY: i < K::WORDS and the key is 8-aligned: each word is inside *to.
        unsafe { words.add(i).write_volatile(from.word(i)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEN: u32 = 7;

    fn key(n: u64) -> FlowKey {
        FlowKey {
            dev: 0xffff_8880_0000_0000 + n * 0x1000,
            ..FlowKey::default()
        }
    }

    /// Counts a packet of `k` in `set` as the programs do; whether it hit.
    fn count(set: &mut CacheSet<FlowSlot>, k: &FlowKey, generation: u32) -> bool {
        let (way, hit) = match way(set, k, generation) {
            Way::Hit(w) => (w, true),
            Way::Empty(w) | Way::Evict(w) => (w, false),
        };
        let slot = &mut set[way];
        if !hit {
            slot.generation = generation;
            slot.key = *k;
            slot.stats = Default::default();
        }
        slot.stats.packets += 1;
        hit
    }

    #[test]
    fn keys_take_the_empty_slots_in_order_and_find_them_again() {
        let mut set = CacheSet::<FlowSlot>::default();
        for n in 0..4 {
            assert_eq!(way(&mut set, &key(n), GEN), Way::Empty(n as usize));
            count(&mut set, &key(n), GEN);
        }
        for n in (0..4).rev() {
            assert_eq!(way(&mut set, &key(n), GEN), Way::Hit(n as usize));
        }
    }

    #[test]
    fn as_many_keys_as_ways_never_evict_each_other() {
        let mut set = CacheSet::<FlowSlot>::default();
        let misses: usize = (0..100)
            .flat_map(|_| 0..CACHE_WAYS as u64)
            .filter(|&n| !count(&mut set, &key(n), GEN))
            .count();
        assert_eq!(misses, CACHE_WAYS);
        assert!(set.iter().all(|s| s.stats.packets == 100));
    }

    #[test]
    fn one_key_more_takes_the_slots_in_turn() {
        let mut set = CacheSet::<FlowSlot>::default();
        for n in 0..4 {
            count(&mut set, &key(n), GEN);
        }
        let taken: [Way; 6] = core::array::from_fn(|i| way(&mut set, &key(100 + i as u64), GEN));
        assert_eq!(taken, [0, 1, 2, 3, 0, 1].map(Way::Evict));
    }

    #[test]
    fn slots_of_another_generation_are_empty() {
        let mut set = CacheSet::<FlowSlot>::default();
        for n in 0..4 {
            count(&mut set, &key(n), GEN);
        }
        // The same parity two drains later: the old entries were read.
        assert_eq!(way(&mut set, &key(2), GEN + 2), Way::Empty(0));
        // A slot that counts nothing is empty too.
        set[0].stats.packets = 0;
        assert_eq!(way(&mut set, &key(0), GEN), Way::Empty(0));
    }

    #[test]
    fn a_set_is_in_its_generations_half() {
        for n in 0..1000 {
            let even = set_index::<64, _>(&key(n), 4);
            let odd = set_index::<64, _>(&key(n), 5);
            assert!(even < 16, "{even}");
            assert_eq!(odd, even + 16);
        }
    }
}
