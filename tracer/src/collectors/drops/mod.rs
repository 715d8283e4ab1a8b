//! Drop counters, merged over CPUs.

pub mod reasons;

use tracer_ebpf::DropStats;

use crate::collectors::tally::Accumulate;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    pub packets: u64,
    pub bytes: u64,
}

impl Accumulate for DropCounts {
    fn add(&mut self, o: &Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
    }
}

impl DropCounts {
    pub fn from_percpu(values: &[DropStats]) -> Self {
        let mut c = DropCounts::default();
        for v in values {
            c.add(&DropCounts {
                packets: v.packets,
                bytes: v.bytes,
            });
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_values_are_summed() {
        let v = [
            DropStats {
                packets: 2,
                bytes: 100,
            },
            DropStats {
                packets: 0,
                bytes: 0,
            },
            DropStats {
                packets: 5,
                bytes: 7,
            },
        ];
        assert_eq!(
            DropCounts::from_percpu(&v),
            DropCounts {
                packets: 7,
                bytes: 107
            }
        );
    }
}
