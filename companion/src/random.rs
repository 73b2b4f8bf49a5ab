//! Randomness from the operating system, for epochs, temp file names and
//! retry jitter. Never for secrets.

use isogroup_core::epoch::{self, RANDOM_BYTES};

/// Random bytes; falls back to the clock's nanoseconds mixed with the process
/// id if the OS has none to give (uniqueness, not secrecy, is what we need).
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    if getrandom::fill(&mut out).is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let seed = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
        for (i, b) in out.iter_mut().enumerate() {
            *b = (seed.rotate_left(8 * (i as u32 % 8)) & 0xff) as u8;
        }
    }
    out
}

pub fn u64() -> u64 {
    u64::from_le_bytes(bytes::<8>())
}

/// A new epoch above `previous` (the epoch it replaces, when known).
pub fn new_epoch(previous: Option<&str>) -> String {
    let previous = previous.and_then(epoch::Epoch::parse).map(|e| e.number);
    epoch::generate(crate::store::now_ms(), previous, bytes::<RANDOM_BYTES>())
}

/// `base` scaled by a random factor in [0.5, 1.5): retries from many
/// replicas spread out instead of arriving together.
pub fn jitter(base: std::time::Duration) -> std::time::Duration {
    let factor = 0.5 + (u64() % 1000) as f64 / 1000.0;
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use isogroup_core::epoch::Epoch;

    #[test]
    fn epochs_are_valid_distinct_and_above_the_previous() {
        let a = super::new_epoch(None);
        let b = super::new_epoch(None);
        assert_ne!(a, b);
        let far = "99999999999999-abc";
        let c = super::new_epoch(Some(far));
        assert!(Epoch::parse(&c).unwrap() > Epoch::parse(far).unwrap(), "{c}");
        assert!(Epoch::parse(&a).is_some(), "{a}");
    }

    #[test]
    fn jitter_stays_within_half_either_side() {
        for _ in 0..200 {
            let j = super::jitter(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(500) && j < Duration::from_millis(1500), "{j:?}");
        }
    }
}
