//! Per-hop flow counters, merged over CPUs.

pub mod tc;

use tracer_ebpf::FlowStats;

use crate::collectors::tally::Accumulate;

/// Counters of one flow at one hop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
    pub frags_first: u64,
    pub frags_rest: u64,
    pub df: u64,
    pub max_len: u32,
}

impl Accumulate for Counts {
    fn add(&mut self, o: &Counts) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.frags_first += o.frags_first;
        self.frags_rest += o.frags_rest;
        self.df += o.df;
        self.max_len = self.max_len.max(o.max_len);
    }
}

impl Counts {
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
}
