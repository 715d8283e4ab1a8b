//! Netfilter verdict counters, merged over CPUs.

pub mod bands;
pub mod chains;
pub mod nf_loader;

use tracer_ebpf::VerdictStats;

use crate::collectors::tally::Accumulate;

/// Packets that entered a table and that left it (accepted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerdictCounts {
    pub entered: u64,
    pub left: u64,
}

impl Accumulate for VerdictCounts {
    fn add(&mut self, o: &Self) {
        self.entered += o.entered;
        self.left += o.left;
    }
}

impl VerdictCounts {
    pub fn from_percpu(values: &[VerdictStats]) -> Self {
        let mut c = VerdictCounts::default();
        for v in values {
            c.add(&VerdictCounts {
                entered: v.entered,
                left: v.left,
            });
        }
        c
    }

    pub fn accepted(&self) -> u64 {
        self.left
    }

    /// Entered but never left: dropped (or stolen, e.g. NFQUEUE) by the table.
    pub fn dropped(&self) -> u64 {
        self.entered.saturating_sub(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_and_dropped() {
        let c = VerdictCounts::from_percpu(&[
            VerdictStats {
                entered: 5,
                left: 3,
            },
            VerdictStats {
                entered: 4,
                left: 4,
            },
        ]);
        assert_eq!((c.accepted(), c.dropped()), (7, 2));
        // A packet counted leaving in a later interval than it entered.
        assert_eq!(
            VerdictCounts {
                entered: 0,
                left: 1
            }
            .dropped(),
            0
        );
    }
}
