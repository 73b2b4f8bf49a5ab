//! Who reported when: one report per instance (`x-isogroup-poller`) per
//! `EVERY`. At most `MAX_INSTANCES` ids, the least recently seen evicted;
//! each report costs O(1) (an LRU map).

use std::time::{Duration, Instant};

use hashlink::LruCache;

/// SPEC: more than one report per instance per 5 s is refused `429`.
pub const EVERY: Duration = Duration::from_secs(5);
pub const MAX_INSTANCES: usize = 10_000;

pub struct Instances {
    last: LruCache<Box<str>, Instant>,
}

impl Default for Instances {
    fn default() -> Self {
        Instances { last: LruCache::new(MAX_INSTANCES) }
    }
}

impl Instances {
    /// Takes `id`'s turn at `now`, or answers how long until it has one.
    pub fn admit(&mut self, id: &str, now: Instant) -> Result<(), Duration> {
        if let Some(last) = self.last.get_mut(id) {
            let since = now.saturating_duration_since(*last);
            if since < EVERY {
                return Err(EVERY - since);
            }
            *last = now;
        } else {
            self.last.insert(id.into(), now);
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn one_report_per_instance_per_five_seconds() {
        let mut i = Instances::default();
        let t0 = Instant::now();
        assert_eq!(i.admit("a", t0), Ok(()));
        assert_eq!(i.admit("b", t0), Ok(()), "another instance has its own turn");
        assert_eq!(i.admit("a", t0 + Duration::from_secs(2)), Err(Duration::from_secs(3)));
        assert_eq!(i.admit("a", t0 + EVERY), Ok(()));
        assert_eq!(i.admit("a", t0 + EVERY + Duration::from_millis(4_999)), Err(Duration::from_millis(1)));
    }

    #[test]
    fn ids_past_the_cap_evict_the_least_recently_seen() {
        let mut i = Instances::default();
        let t0 = Instant::now();
        for n in 0..MAX_INSTANCES + 2_500 {
            assert_eq!(i.admit(&format!("id-{n}"), t0), Ok(()));
        }
        assert_eq!(i.len(), MAX_INSTANCES);
        // The newest are still held (refused again), the oldest forgotten.
        let newest = format!("id-{}", MAX_INSTANCES + 2_499);
        assert!(i.admit(&newest, t0).is_err());
        assert_eq!(i.admit("id-0", t0), Ok(()), "evicted: a new turn");
        assert_eq!(i.len(), MAX_INSTANCES);
    }
}
