//! The run's totals by key, added to an interval at a time.
//!
//! Every interval adds tens of thousands of keys (the flows that counted)
//! scattered over megabytes of totals: a hash map then waits on one cache
//! miss per key, one after the other (a fifth of the agent's time at 10,000
//! flows). This table takes the whole interval at once and asks the memory
//! for each key's slot, and then for the entry the slot points at, a few
//! keys ahead of the one it adds, so the misses overlap.

use std::hash::{BuildHasher as _, Hash};

// Keys come from the kernel, not an attacker: FxHash, several times cheaper than SipHash.
use rustc_hash::FxBuildHasher;

use crate::collectors::tally::Accumulate;

/// How many keys ahead a slot is prefetched; the entry it points at is
/// prefetched half as far ahead, once the slot has arrived.
const AHEAD: usize = 16;

/// An `at` of [`Totals::add_all`]: where the key's total is, not known.
pub const UNKNOWN: u32 = u32::MAX;

pub struct Totals<K, V> {
    /// Every key the run has seen, with its total, in the order first seen.
    entries: Vec<(K, V)>,
    /// Open addressing, linear probing, at most half full: 0 for an empty
    /// slot, else the key's hash's low 32 bits above its entry's index + 1.
    slots: Vec<u64>,
    /// Per key of the batch being added by hash: its batch index and hash
    /// (kept for its memory).
    hashed: Vec<(usize, u64)>,
    /// Keys the totals hold at most: a run on a busy host sees new flows
    /// all day, each a few hundred bytes here.
    limit: usize,
}

impl<K, V> Default for Totals<K, V> {
    fn default() -> Self {
        Totals {
            entries: Vec::new(),
            slots: Vec::new(),
            hashed: Vec::new(),
            limit: usize::MAX,
        }
    }
}

impl<K: Eq + Hash + Copy, V: Accumulate> Totals<K, V> {
    /// Adds every `(key, value)` of `batch` to the totals, and calls `fresh`
    /// with the batch index of each key they did not hold before.
    ///
    /// `at[i]` is where the total of `batch[i]`'s key is, if the caller
    /// knows ([`UNKNOWN`] if not), as a previous call left it there: a key
    /// found there is added to without hashing it (a flow slot's key stays
    /// the same while the slot is held; most of an interval's keys are
    /// those of the last). Where it was not known (or not found), it is set.
    ///
    /// Returns how many entries were left out: new keys once the totals
    /// hold their limit ([`Totals::limited`]); their `at` stays [`UNKNOWN`].
    pub fn add_all(
        &mut self,
        batch: &[(K, V)],
        at: &mut [u32],
        mut fresh: impl FnMut(usize),
    ) -> usize {
        assert_eq!(batch.len(), at.len(), "one place per entry");
        for (i, (key, value)) in batch.iter().enumerate() {
            if let Some(e) = self.entries.get_mut(at[i] as usize)
                && e.0 == *key
            {
                e.1.add(value);
            } else {
                at[i] = UNKNOWN;
            }
        }
        // The rest by hash.
        let mut hashed = std::mem::take(&mut self.hashed);
        hashed.clear();
        hashed.extend(
            (0..batch.len())
                .filter(|&i| at[i] == UNKNOWN)
                .map(|i| (i, hash(&batch[i].0))),
        );
        self.reserve(
            hashed
                .len()
                .min(self.limit.saturating_sub(self.entries.len())),
        );
        let mut left_out = 0;
        let mask = self.slots.len() - 1;
        for n in 0..hashed.len() {
            if let Some(&(_, h)) = hashed.get(n + AHEAD) {
                prefetch(&self.slots[home(h, mask)]);
            }
            if let Some(&(_, h)) = hashed.get(n + AHEAD / 2) {
                let slot = self.slots[home(h, mask)];
                if slot != 0 && tag(slot) == h as u32 {
                    prefetch(&self.entries[index(slot)]);
                }
            }
            let (i, h) = hashed[n];
            let (key, value) = &batch[i];
            let mut probe = home(h, mask);
            loop {
                let slot = self.slots[probe];
                if slot == 0 && self.entries.len() >= self.limit {
                    // Still new to the run as far as its callers can tell.
                    left_out += 1;
                    fresh(i);
                    break;
                }
                if slot == 0 {
                    self.slots[probe] = (h as u32 as u64) << 32 | (self.entries.len() as u64 + 1);
                    at[i] = self.entries.len() as u32;
                    self.entries.push((*key, *value));
                    fresh(i);
                    break;
                }
                if tag(slot) == h as u32 {
                    let e = &mut self.entries[index(slot)];
                    if e.0 == *key {
                        e.1.add(value);
                        at[i] = index(slot) as u32;
                        break;
                    }
                }
                probe = (probe + 1) & mask;
            }
        }
        self.hashed = hashed;
        left_out
    }

    /// Totals that hold at most `limit` keys: the entries of keys beyond it
    /// are left out (and counted by the caller).
    pub fn limited(limit: usize) -> Self {
        Totals {
            limit,
            ..Totals::default()
        }
    }

    /// Every key's total, in the order first seen.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// Room for `more` keys with the table at most half full: a larger
    /// table is filled again from the entries.
    fn reserve(&mut self, more: usize) {
        let needed = ((self.entries.len() + more) * 2)
            .next_power_of_two()
            .max(16);
        if needed <= self.slots.len() {
            return;
        }
        self.slots = vec![0; needed];
        let mask = needed - 1;
        for (i, (k, _)) in self.entries.iter().enumerate() {
            let h = hash(k);
            let mut at = home(h, mask);
            while self.slots[at] != 0 {
                at = (at + 1) & mask;
            }
            self.slots[at] = (h as u32 as u64) << 32 | (i as u64 + 1);
        }
    }
}

fn hash<K: Hash>(k: &K) -> u64 {
    FxBuildHasher.hash_one(k)
}

/// A hash's first slot: its high bits (FxHash mixes them best).
fn home(h: u64, mask: usize) -> usize {
    (h >> 32) as usize & mask
}

fn tag(slot: u64) -> u32 {
    (slot >> 32) as u32
}

fn index(slot: u64) -> usize {
    (slot as u32 - 1) as usize
}

/// Asks for the cache lines of `*p` without waiting for them.
#[inline(always)]
fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let start = (p as *const T).cast::<i8>();
        // Every line `*p` touches: from its first byte, then 64 bytes on,
        // and its last byte (which may sit on one more line).
        let mut off = 0;
        while off < size_of::<T>() {
            // SAFETY: a prefetch is a hint that never faults, and `start + off`
            // stays inside `*p`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(off)) };
            off += 64;
        }
        if size_of::<T>() > 1 {
            // SAFETY: as above.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(size_of::<T>() - 1)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::tally::tests::N;

    /// Against a std HashMap, over batches that grow the table several
    /// times and repeat keys across batches; `key` makes the key of a number.
    /// Of the keys seen before, a third come with where the last call put
    /// them, a third with another key's place, a third without.
    fn matches_a_hash_map<K: Eq + Hash + Copy + std::fmt::Debug>(key: fn(u32) -> K) {
        let mut t: Totals<K, N> = Totals::default();
        let mut model: std::collections::HashMap<u32, u64> = Default::default();
        let mut placed: std::collections::HashMap<u32, u32> = Default::default();
        for round in 0..40u32 {
            let mut batch: Vec<(u32, N)> = Vec::new();
            for i in 0..round * 13 {
                let k = (i * 7919 + round) % 600;
                // A drain yields each key once.
                if !batch.iter().any(|(b, _)| *b == k) {
                    batch.push((k, N(i as u64 + 1)));
                }
            }
            let keyed: Vec<(K, N)> = batch.iter().map(|&(k, v)| (key(k), v)).collect();
            let entries = t.entries.len().max(1) as u32;
            let mut at: Vec<u32> = (batch.iter().enumerate())
                .map(|(n, (k, _))| match (placed.get(k), n % 3) {
                    (Some(&a), 0) => a,
                    (Some(&a), 1) => (a + 1) % entries,
                    _ => UNKNOWN,
                })
                .collect();
            let mut fresh = Vec::new();
            t.add_all(&keyed, &mut at, |i| fresh.push(batch[i].0));
            for ((k, _), &a) in batch.iter().zip(&at) {
                assert_eq!(t.entries[a as usize].0, key(*k), "round {round}");
                placed.insert(*k, a);
            }
            let mut expect_fresh = Vec::new();
            for (k, v) in &batch {
                if model.insert(*k, model.get(k).unwrap_or(&0) + v.0).is_none() {
                    expect_fresh.push(*k);
                }
            }
            assert_eq!(fresh, expect_fresh, "round {round}");
            assert_eq!(t.entries.len(), model.len());
        }
        let got: std::collections::HashMap<K, u64> = t.iter().map(|(k, v)| (*k, v.0)).collect();
        let want: std::collections::HashMap<K, u64> =
            model.iter().map(|(&k, &v)| (key(k), v)).collect();
        assert_eq!(got, want);
        assert!(t.slots.len() >= 2 * t.entries.len());
    }

    #[test]
    fn keys_beyond_the_limit_are_left_out_and_counted() {
        let mut t: Totals<u32, N> = Totals::limited(3);
        let batch: Vec<(u32, N)> = (0..5).map(|k| (k, N(1))).collect();
        for round in 1..=2 {
            let mut at = vec![UNKNOWN; batch.len()];
            let mut fresh = Vec::new();
            let left_out = t.add_all(&batch, &mut at, |i| fresh.push(i));
            assert_eq!(left_out, 2, "round {round}");
            // Left out, they are as new to the totals as they were.
            let new: Vec<usize> = if round == 1 {
                vec![0, 1, 2, 3, 4]
            } else {
                vec![3, 4]
            };
            assert_eq!(fresh, new, "round {round}");
            assert_eq!(at[3..], [UNKNOWN, UNKNOWN]);
        }
        let got: Vec<(u32, u64)> = t.iter().map(|(k, v)| (*k, v.0)).collect();
        assert_eq!(got, [(0, 2), (1, 2), (2, 2)]);
    }

    #[test]
    fn totals_and_fresh_keys_match_a_hash_map() {
        matches_a_hash_map(|k| k);
    }

    /// Keys whose hashes take seven values: long probe runs past slots of
    /// other keys with the same tag.
    #[test]
    fn colliding_keys_still_match_a_hash_map() {
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        struct Crowded(u32);
        impl Hash for Crowded {
            fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
                (self.0 % 7).hash(h)
            }
        }
        matches_a_hash_map(Crowded);
    }
}
