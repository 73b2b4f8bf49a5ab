//! The distinct pollers seen lately (`x-isogroup-poller`), for the
//! `pollers` gauge. Every poll, from anyone, lands here, so each one costs
//! O(1) and the whole is bounded: ids longer than `MAX_ID` or beyond
//! `MAX_POLLERS` are not counted (the poll is still served), and ids are
//! kept in last-seen order so expiry pops from the front instead of
//! scanning.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashlink::LinkedHashMap;

/// A poller counts as live this long after its last poll (longer than a
/// long-poll hold).
pub const POLLER_WINDOW: Duration = Duration::from_secs(120);
/// Bound on remembered poller ids.
pub const MAX_POLLERS: usize = 100_000;
/// SPEC: an instance id is at most 128 bytes.
pub const MAX_ID: usize = 128;

#[derive(Default)]
pub struct Pollers {
    seen: Mutex<LinkedHashMap<Box<str>, Instant>>,
}

impl Pollers {
    /// Records a poll from `id` at `now`; answers the live count.
    pub fn saw(&self, id: &str, now: Instant) -> usize {
        let Ok(mut seen) = self.seen.lock() else { return 0 };
        expire(&mut seen, now);
        if id.len() <= MAX_ID {
            if let Some(last) = seen.to_back(id) {
                *last = now;
            } else if seen.len() < MAX_POLLERS {
                seen.insert(id.into(), now);
            }
        }
        seen.len()
    }

    /// The live count at `now`.
    pub fn live(&self, now: Instant) -> usize {
        let Ok(mut seen) = self.seen.lock() else { return 0 };
        expire(&mut seen, now);
        seen.len()
    }
}

/// Drops the ids not seen within the window: they are at the front, and
/// each is popped once, so a poll's share of this is O(1) amortised.
fn expire(seen: &mut LinkedHashMap<Box<str>, Instant>, now: Instant) {
    while let Some((_, last)) = seen.front() {
        if now.saturating_duration_since(*last) < POLLER_WINDOW {
            break;
        }
        seen.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_distinct_ids_and_forgets_them_after_the_window() {
        let p = Pollers::default();
        let t0 = Instant::now();
        assert_eq!(p.saw("a", t0), 1);
        assert_eq!(p.saw("b", t0 + Duration::from_secs(60)), 2);
        assert_eq!(p.saw("a", t0 + Duration::from_secs(100)), 2, "a poll again is the same poller");
        // b was last seen at 60 s, a at 100 s: at 181 s only a is live
        assert_eq!(p.live(t0 + Duration::from_secs(181)), 1);
        assert_eq!(p.live(t0 + Duration::from_secs(221)), 0);
    }

    #[test]
    fn over_long_and_excess_ids_are_not_counted() {
        let p = Pollers::default();
        let t0 = Instant::now();
        assert_eq!(p.saw(&"x".repeat(MAX_ID + 1), t0), 0, "an over-long id is not counted");
        assert_eq!(p.saw(&"x".repeat(MAX_ID), t0), 1, "an id of exactly the bound is");
        for i in 0..MAX_POLLERS + 500 {
            p.saw(&format!("id-{i}"), t0);
        }
        assert_eq!(p.live(t0), MAX_POLLERS, "ids beyond the cap are not kept");
        // once the window passes, room again
        let later = t0 + POLLER_WINDOW;
        assert_eq!(p.saw("new", later), 1);
    }

    #[test]
    fn a_refreshed_id_outlives_older_ones() {
        // the order is last seen, not first seen: a refreshed id moves back
        let p = Pollers::default();
        let t0 = Instant::now();
        p.saw("old", t0);
        p.saw("other", t0 + Duration::from_secs(10));
        p.saw("old", t0 + Duration::from_secs(20));
        assert_eq!(p.live(t0 + Duration::from_secs(131)), 1, "other expired at 130 s, old lives to 140 s");
        assert_eq!(p.live(t0 + Duration::from_secs(139)), 1);
        assert_eq!(p.live(t0 + Duration::from_secs(140)), 0);
    }
}
