//! Per-hop flow counters: merging per-CPU values and keeping interval and run totals.

use std::collections::HashMap;

use tracer_ebpf::{FlowKey, FlowStats};

/// Counters of one flow at one hop, merged over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
    pub frags_first: u64,
    pub frags_rest: u64,
    pub df: u64,
    pub max_len: u32,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.frags_first += o.frags_first;
        self.frags_rest += o.frags_rest;
        self.df += o.df;
        self.max_len = self.max_len.max(o.max_len);
    }

    /// Sums the per-CPU values of one map entry.
    pub fn from_percpu(values: &[FlowStats]) -> Self {
        let mut c = Counts::default();
        for v in values {
            c.add(&Counts {
                packets: v.packets,
                bytes: v.bytes,
                frags_first: v.frags_first,
                frags_rest: v.frags_rest,
                df: v.df,
                max_len: v.max_len,
            });
        }
        c
    }
}

/// Flow counters of the current interval and of the whole run.
#[derive(Default)]
pub struct FlowTable {
    interval: HashMap<FlowKey, Counts>,
    total: HashMap<FlowKey, Counts>,
}

impl FlowTable {
    pub fn add(&mut self, key: FlowKey, counts: Counts) {
        self.interval.entry(key).or_default().add(&counts);
        self.total.entry(key).or_default().add(&counts);
    }

    /// The flows seen since the last call, which starts a new interval.
    pub fn take_interval(&mut self) -> HashMap<FlowKey, Counts> {
        std::mem::take(&mut self.interval)
    }

    pub fn total(&self) -> &HashMap<FlowKey, Counts> {
        &self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(packets: u64, bytes: u64, max_len: u32) -> FlowStats {
        FlowStats {
            packets,
            bytes,
            frags_first: packets / 2,
            frags_rest: 1,
            df: packets,
            max_len,
            _pad: 0,
        }
    }

    #[test]
    fn per_cpu_values_are_summed_and_max_len_is_the_largest() {
        let c = Counts::from_percpu(&[stats(3, 300, 100), stats(0, 0, 0), stats(4, 500, 140)]);
        assert_eq!(
            c,
            Counts {
                packets: 7,
                bytes: 800,
                frags_first: 1 + 2,
                frags_rest: 3,
                df: 7,
                max_len: 140
            }
        );
    }

    #[test]
    fn intervals_restart_and_totals_accumulate() {
        let mut t = FlowTable::default();
        let a = FlowKey {
            ifindex: 1,
            ..FlowKey::default()
        };
        let b = FlowKey {
            ifindex: 2,
            ..FlowKey::default()
        };
        let one = Counts {
            packets: 1,
            bytes: 10,
            max_len: 10,
            ..Counts::default()
        };
        t.add(a, one);
        t.add(a, one);
        t.add(b, one);
        let first = t.take_interval();
        assert_eq!(first[&a].packets, 2);
        assert_eq!(first[&b].packets, 1);
        t.add(a, one);
        let second = t.take_interval();
        assert_eq!(second.len(), 1);
        assert_eq!(second[&a].bytes, 10);
        assert_eq!(t.total()[&a].packets, 3);
        assert_eq!(t.total()[&b].bytes, 10);
        assert!(t.take_interval().is_empty());
    }
}
