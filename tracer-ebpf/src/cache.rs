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
//! A key may sit in any of the [`CACHE_WAYS`] slots of its set: a packet
//! crosses up to eight traced hops on a CPU, a key each. When each key had
//! one place of 64, two of eight keys shared one about a third of the time,
//! and took it from each other on every packet, each time through the map;
//! which flows did changed with their ports, from run to run.

use aya_ebpf::maps::PerCpuArray;
use tracer_ebpf::{
    CACHE_WAYS, CacheSet, DropKey, DropSlot, FlowKey, FlowSlot, VerdictKey, VerdictSlot,
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
    /// In a set's first slot: the way whose slot the set gives up next
    /// when all are taken (modulo the ways).
    fn recent(&mut self) -> &mut u32;
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
            fn recent(&mut self) -> &mut u32 {
                &mut self.recent
            }
        }
    )*};
}
slot! {
    FlowSlot => FlowKey, |s| s.stats.packets != 0;
    DropSlot => DropKey, |s| s.stats.packets != 0;
    VerdictSlot => VerdictKey, |s| s.stats.entered | s.stats.left != 0;
}

/// Where a key counts in a cache.
pub enum Found<'a, S> {
    /// Its slot, live.
    Hit(&'a mut S),
    /// The slot it takes: empty, or holding another key's counts, which go
    /// to the map before the slot is overwritten.
    Take(&'a mut S),
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
    // A set's slots fill in order and stay live until the generation
    // changes: past the first empty one, all are.
    let mut take = CACHE_WAYS;
    for (way, slot) in set.iter().enumerate() {
        if !slot.live(generation) {
            take = way;
            break;
        }
        if same(slot.key(), key) {
            take = way | HIT;
            break;
        }
    }
    if take == CACHE_WAYS {
        // All taken by other keys: each in turn gives its slot up.
        let next = set[0].recent();
        take = *next as usize;
        *next = next.wrapping_add(1);
    }
    // Bounded right before the access, for older verifiers.
    let slot = &mut set[take & (CACHE_WAYS - 1)];
    Some(if take & HIT != 0 {
        Found::Hit(slot)
    } else {
        Found::Take(slot)
    })
}

/// Flag of a way index: the key is there.
const HIT: usize = 0x100;
const _: () = assert!(CACHE_WAYS.is_power_of_two() && CACHE_WAYS < HIT);

/// The set of `key` among `SLOTS` slots per half: its words folded and mixed
/// (Fibonacci hashing), in the half of `generation`.
#[inline(always)]
fn set_index<const SLOTS: u32, K: KeyWords>(key: &K, generation: u32) -> u32 {
    let sets = SLOTS / CACHE_WAYS as u32;
    const { assert!(SLOTS.is_power_of_two() && SLOTS as usize >= 2 * CACHE_WAYS) };
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
