//! Medians, spreads and latency percentiles.

use serde::{Deserialize, Serialize};

/// Median and spread of one metric over the repetitions of an arm.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// First and third quartiles.
    pub p25: f64,
    pub p75: f64,
}

/// The `p`-th percentile (0..=100) of sorted values, interpolating linearly
/// between the two nearest ranks (so the median of an even count is the mean
/// of the middle two).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of nothing");
    let rank = p.clamp(0.0, 100.0) / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Summary of `values`; `None` if there are none (NaNs are ignored).
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(Summary {
        n: v.len(),
        median: percentile(&v, 50.0),
        min: v[0],
        max: v[v.len() - 1],
        p25: percentile(&v, 25.0),
        p75: percentile(&v, 75.0),
    })
}

/// Nearest-rank percentile of latency samples: the smallest sample that at
/// least `p` % of the samples do not exceed, as latency tools report it.
pub fn nearest_rank(sorted: &[u64], p: f64) -> u64 {
    assert!(!sorted.is_empty(), "percentile of nothing");
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(summarize(&[3.0, 1.0, 2.0]).unwrap().median, 2.0);
        assert_eq!(summarize(&[4.0, 1.0, 3.0, 2.0]).unwrap().median, 2.5);
        assert_eq!(summarize(&[7.0]).unwrap().median, 7.0);
    }

    #[test]
    fn spread_and_quartiles() {
        let s = summarize(&[5.0, 1.0, 4.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.n, s.min, s.max), (5, 1.0, 5.0));
        assert_eq!((s.p25, s.p75), (2.0, 4.0));
        // Interpolated: rank 0.75 between 10 and 20.
        assert_eq!(percentile(&[10.0, 20.0, 30.0, 40.0], 25.0), 17.5);
    }

    #[test]
    fn nothing_to_summarize() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[f64::NAN]), None);
        assert_eq!(summarize(&[f64::NAN, 2.0]).unwrap().n, 1);
    }

    #[test]
    fn latency_percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 50.0), 50);
        assert_eq!(nearest_rank(&v, 99.0), 99);
        assert_eq!(nearest_rank(&v, 100.0), 100);
        assert_eq!(nearest_rank(&v, 0.0), 1);
        let few = [10, 20, 30];
        assert_eq!(nearest_rank(&few, 50.0), 20);
        assert_eq!(nearest_rank(&few, 99.0), 30);
    }
}
