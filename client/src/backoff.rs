//! Seeded backoff: the client's [`Backoff`] choice over eo-core's shared
//! full jitter ([`eo_core::retry`]). Every payment draws from its own stream
//! derived from (seed, payment index), so the same seed gives the same
//! delays whatever the interleaving of concurrent payments.

use std::time::Duration;

use rand::rngs::Xoshiro256PlusPlus;

pub use eo_core::retry::stream;

use crate::strategy::Backoff;

/// The wait before retry number `retry` (1 for the first retry).
pub fn delay(backoff: Backoff, base_ms: u64, cap_ms: u64, retry: u32, rng: &mut Xoshiro256PlusPlus) -> Duration {
    match backoff {
        Backoff::None => Duration::ZERO,
        Backoff::FullJitter => eo_core::retry::delay(base_ms, cap_ms, retry, rng),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_backoff_retries_at_once_and_full_jitter_is_the_shared_rule() {
        let mut rng = stream(1, 0);
        assert_eq!(delay(Backoff::None, 10, 1000, 5, &mut rng), Duration::ZERO);
        let (mut a, mut b) = (stream(7, 3), stream(7, 3));
        for retry in 1..10 {
            assert_eq!(
                delay(Backoff::FullJitter, 10, 1000, retry, &mut a),
                eo_core::retry::delay(10, 1000, retry, &mut b)
            );
        }
    }
}
