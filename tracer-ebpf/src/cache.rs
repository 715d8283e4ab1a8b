//! The per-CPU caches the programs count in before their double-buffered
//! maps (flows, verdicts, drops): a packet of a key the CPU keeps seeing is
//! added to a slot found by folding the key's words, without hashing the
//! key into a map. A slot goes to the map when another key takes it;
//! userspace reads what the slots of a drained generation still hold.
//!
//! Each cache has a half per generation parity, and a slot records the
//! generation it counts for: one of an older generation is empty (userspace
//! read it when that generation was drained).

use tracer_ebpf::{DropKey, FlowKey, VerdictKey};

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

/// Which of `SLOTS` slots (a power of two) per half `key` goes to: its
/// words folded and mixed (Fibonacci hashing), in the half of `generation`.
#[inline(always)]
pub fn slot_index<const SLOTS: u32, K: KeyWords>(key: &K, generation: u32) -> u32 {
    let mut x = 0u64;
    for i in 0..K::WORDS {
        x ^= key.word(i);
    }
    let slot = (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SLOTS.trailing_zeros())) as u32;
    (generation & 1) * SLOTS + slot
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
