//! Counters of the current interval and of the whole run, by key.

use std::hash::Hash;

use crate::{
    collectors::totals::{Totals, UNKNOWN},
    output::Scope,
};

/// A value that accumulates.
pub trait Accumulate: Default + Copy {
    fn add(&mut self, other: &Self);
}

/// Interval counts are a list, not a map: every drain of a kernel map yields
/// each key once, and a report follows each drain. The run totals take a
/// drain's entries all at once ([`Tally::settle`]), which lets them overlap
/// the cache misses of looking the keys up.
pub struct Tally<K, V> {
    interval: Vec<(K, V)>,
    /// Per entry of `interval`: where its key's total is (see
    /// [`Totals::add_all`]), as the adder knew it, and once settled.
    at: Vec<u32>,
    /// How many entries of `interval` the totals hold.
    settled: usize,
    /// Indexes into `interval` of the keys the run had not seen before.
    fresh: Vec<usize>,
    total: Totals<K, V>,
    /// Entries left out of `total`, which held its limit of keys.
    untotalled: u64,
}

impl<K, V> Default for Tally<K, V> {
    fn default() -> Self {
        Self {
            interval: Vec::new(),
            at: Vec::new(),
            settled: 0,
            fresh: Vec::new(),
            total: Totals::default(),
            untotalled: 0,
        }
    }
}

impl<K: Eq + Hash + Copy, V: Accumulate> Tally<K, V> {
    /// Adds what one drain read for `key`; a drain adds each key at most
    /// once, and is settled before the tally is read. Returns where the
    /// entry is, for [`Tally::total_at`].
    pub fn add(&mut self, key: K, v: V) -> usize {
        self.add_at(key, v, UNKNOWN)
    }

    /// [`Tally::add`] for a key whose total the last settle put at `total`
    /// ([`Tally::total_at`]): added to without hashing the key, if it is
    /// still the key there.
    pub fn add_at(&mut self, key: K, v: V, total: u32) -> usize {
        self.interval.push((key, v));
        self.at.push(total);
        self.interval.len() - 1
    }

    /// Where the total of the entry `add` put at `entry` is, once settled.
    pub fn total_at(&self, entry: usize) -> u32 {
        debug_assert!(entry < self.settled, "read before settle");
        self.at[entry]
    }

    /// Adds the entries since the last settle to the run totals.
    pub fn settle(&mut self) {
        let start = self.settled;
        let fresh = &mut self.fresh;
        let left_out = self
            .total
            .add_all(&self.interval[start..], &mut self.at[start..], |i| {
                fresh.push(start + i)
            });
        self.untotalled += left_out as u64;
        self.settled = self.interval.len();
    }

    /// A tally whose run totals hold at most `limit` keys.
    pub fn limited(limit: usize) -> Self {
        Tally {
            total: Totals::limited(limit),
            ..Tally::default()
        }
    }

    /// Interval entries the run totals left out since start: new keys once
    /// they held their limit. Their interval rows are still reported.
    pub fn untotalled(&self) -> u64 {
        self.untotalled
    }

    /// The keys of this interval the run had not seen before it.
    pub fn fresh(&self) -> impl Iterator<Item = &K> {
        debug_assert_eq!(self.settled, self.interval.len(), "read before settle");
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
        self.at.clear();
        self.fresh.clear();
        self.settled = 0;
    }

    /// `name`s the entries of `scope` into rows; `Scope::Interval` then
    /// starts a new interval.
    pub fn rows<R>(&mut self, scope: Scope, name: impl FnOnce(Vec<(&K, &V)>) -> Vec<R>) -> Vec<R> {
        let rows = name(self.entries(scope));
        if scope == Scope::Interval {
            self.end_interval();
        }
        rows
    }

    /// The entries of `scope`: the interval's (`First` has none here) or the run's.
    pub fn entries(&self, scope: Scope) -> Vec<(&K, &V)> {
        debug_assert_eq!(self.settled, self.interval.len(), "read before settle");
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
pub(crate) mod tests {
    use super::*;

    /// A count, for tests of what accumulates.
    #[derive(Default, Clone, Copy, Debug, PartialEq)]
    pub struct N(pub u64);
    impl Accumulate for N {
        fn add(&mut self, o: &Self) {
            self.0 += o.0;
        }
    }

    #[test]
    fn intervals_restart_and_totals_accumulate() {
        let mut t = Tally::default();
        t.add('a', N(1));
        t.add('b', N(5));
        t.settle();
        // A second drain in the same interval.
        t.add('a', N(2));
        t.settle();
        assert_eq!(t.interval(), [('a', N(1)), ('b', N(5)), ('a', N(2))]);
        assert_eq!(t.fresh().collect::<Vec<_>>(), [&'a', &'b']);
        t.end_interval();
        t.add('a', N(10));
        t.add('c', N(1));
        t.settle();
        assert_eq!(t.interval(), [('a', N(10)), ('c', N(1))]);
        assert_eq!(t.fresh().collect::<Vec<_>>(), [&'c']);
        t.end_interval();
        let mut totals = t.entries(Scope::Total);
        totals.sort_by_key(|(k, _)| **k);
        assert_eq!(totals, [(&'a', &N(13)), (&'b', &N(5)), (&'c', &N(1))]);
        assert!(t.interval().is_empty());
    }
}
