//! Counters of the current interval and of the whole run, by key.

use std::{collections::hash_map::Entry, hash::Hash};

// Keys are hashed every interval for every flow: FxHash is several times
// cheaper than SipHash, and the keys come from the kernel, not an attacker.
use rustc_hash::FxHashMap as HashMap;

use crate::output::Scope;

/// A value that accumulates.
pub trait Accumulate: Default + Copy {
    fn add(&mut self, other: &Self);
}

/// Interval counts are a list, not a map: every drain of a kernel map yields
/// each key once, and a report follows each drain, so only the run totals
/// need looking up (one hash of the key per entry, not two).
pub struct Tally<K, V> {
    interval: Vec<(K, V)>,
    /// Indexes into `interval` of the keys the run had not seen before.
    fresh: Vec<usize>,
    total: HashMap<K, V>,
}

impl<K, V> Default for Tally<K, V> {
    fn default() -> Self {
        Self {
            interval: Vec::new(),
            fresh: Vec::new(),
            total: HashMap::default(),
        }
    }
}

impl<K: Eq + Hash + Copy, V: Accumulate> Tally<K, V> {
    /// Adds what one drain read for `key`; a drain adds each key at most once.
    pub fn add(&mut self, key: K, v: V) {
        match self.total.entry(key) {
            Entry::Occupied(mut e) => e.get_mut().add(&v),
            Entry::Vacant(e) => {
                e.insert(v);
                self.fresh.push(self.interval.len());
            }
        }
        self.interval.push((key, v));
    }

    /// The keys of this interval the run had not seen before it.
    pub fn fresh(&self) -> impl Iterator<Item = &K> {
        self.fresh.iter().map(|&i| &self.interval[i].0)
    }

    /// What was added since the interval began.
    pub fn interval(&self) -> &[(K, V)] {
        &self.interval
    }

    /// Starts a new interval, keeping the list's memory for the next one
    /// (tens of thousands of entries every second).
    pub fn end_interval(&mut self) {
        self.interval.clear();
        self.fresh.clear();
    }

    pub fn total(&self) -> &HashMap<K, V> {
        &self.total
    }

    /// The entries of `scope`: the interval's (`First` has none here) or the run's.
    pub fn entries(&self, scope: Scope) -> Vec<(&K, &V)> {
        match scope {
            Scope::Total => self.total.iter().collect(),
            Scope::Interval => self.interval.iter().map(|(k, v)| (k, v)).collect(),
            Scope::First => Vec::new(),
        }
    }
}

/// Sums the per-CPU values of one kernel map entry.
pub fn sum_percpu<S, V: Accumulate + for<'a> From<&'a S>>(values: &[S]) -> V {
    let mut sum = V::default();
    for v in values {
        sum.add(&V::from(v));
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Clone, Copy, Debug, PartialEq)]
    struct N(u64);
    impl Accumulate for N {
        fn add(&mut self, o: &Self) {
            self.0 += o.0;
        }
    }

    #[test]
    fn intervals_restart_and_totals_accumulate() {
        let mut t = Tally::default();
        t.add('a', N(1));
        t.add('a', N(2));
        t.add('b', N(5));
        assert_eq!(t.interval(), [('a', N(1)), ('a', N(2)), ('b', N(5))]);
        assert_eq!(t.fresh().collect::<Vec<_>>(), [&'a', &'b']);
        t.end_interval();
        t.add('a', N(10));
        t.add('c', N(1));
        assert_eq!(t.interval(), [('a', N(10)), ('c', N(1))]);
        assert_eq!(t.fresh().collect::<Vec<_>>(), [&'c']);
        t.end_interval();
        assert_eq!((t.total()[&'a'], t.total()[&'b']), (N(13), N(5)));
        assert!(t.interval().is_empty());
    }
}
