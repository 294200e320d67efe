//! What the benchmarks and the examples share: one definition of a
//! quantile, so every p50 and p99 the project prints means the same thing.

/// The `q` quantile (0 ≤ q ≤ 1) of samples sorted in ascending order: the
/// sample at rank (n − 1)·q, rounded to the nearest (q = 1 is the largest).
/// None when there are no samples.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let rank = (last as f64 * q.clamp(0.0, 1.0)).round() as usize;
    sorted.get(rank.min(last)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_nearest_rank() {
        let samples: Vec<u32> = (1..=101).collect();
        assert_eq!(quantile(&samples, 0.0), Some(1));
        assert_eq!(quantile(&samples, 0.5), Some(51));
        assert_eq!(quantile(&samples, 0.99), Some(100));
        assert_eq!(quantile(&samples, 1.0), Some(101));
        assert_eq!(quantile(&[7_u32], 0.99), Some(7));
        assert_eq!(quantile(&[1_u32, 2], 0.5), Some(2));
        assert_eq!(quantile::<u32>(&[], 0.5), None);
        assert_eq!(quantile(&samples, 2.0), Some(101));
    }
}
