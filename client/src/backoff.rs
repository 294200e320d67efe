//! Seeded backoff: the same seed gives the same delays, whatever the
//! interleaving of concurrent payments, because every payment draws from its
//! own stream derived from (seed, payment index).

use std::time::Duration;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use eo_core::seed::splitmix64;

use crate::strategy::Backoff;

/// A per-payment random stream, derived from the run's seed and the payment's
/// index with SplitMix64 so neighbouring indexes get unrelated streams.
pub fn stream(seed: u64, index: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(splitmix64(seed ^ splitmix64(index.wrapping_add(0x5eed))))
}

/// The wait before retry number `retry` (1 for the first retry).
pub fn delay(backoff: Backoff, base_ms: u64, cap_ms: u64, retry: u32, rng: &mut Xoshiro256PlusPlus) -> Duration {
    match backoff {
        Backoff::None => Duration::ZERO,
        Backoff::FullJitter => {
            let exponent = retry.saturating_sub(1).min(32);
            let ceiling_ms = base_ms.saturating_mul(1u64 << exponent).min(cap_ms);
            Duration::from_millis(rng.random_range(0..=ceiling_ms))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_under_the_growing_ceiling_and_the_cap() {
        let mut rng = stream(1, 0);
        for retry in 1..40 {
            let d = delay(Backoff::FullJitter, 10, 1000, retry, &mut rng).as_millis() as u64;
            assert!(d <= (10u64 << (retry - 1).min(32)).min(1000), "retry {retry}: {d}");
        }
        assert_eq!(delay(Backoff::None, 10, 1000, 5, &mut rng), Duration::ZERO);
    }

    #[test]
    fn same_seed_same_delays() {
        let draw = |seed, index| {
            let mut rng = stream(seed, index);
            (1..10)
                .map(|r| delay(Backoff::FullJitter, 10, 1000, r, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7, 3), draw(7, 3));
        assert_ne!(draw(7, 3), draw(7, 4));
        assert_ne!(draw(7, 3), draw(8, 3));
    }
}
