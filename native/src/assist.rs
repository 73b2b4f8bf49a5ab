//! Propagation assist, native host side: the wasm build's (src/assist.rs)
//! trace id → group slots, kept in one process-wide store instead of
//! proxy-wasm shared data. The slot keys, the entry format and their
//! bounds are core's (`isogroup_core::assist`): at most 65 536 keys (the
//! largest `slots`), one entry each, a newer trace overwriting an older one
//! in its slot, so memory stays bounded whatever the load.
//!
//! Every worker reads and writes it: the slots are spread over a few
//! locks so that two workers rarely wait for each other, and a lock is held
//! only for one map lookup or insert.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use isogroup_core::assist::{self, Assist, Side};
use isogroup_core::request::{GroupSource, Incoming};

use crate::abi::StreamHandle;

/// Envoy's `traffic_direction` values (`xds.listener_direction`).
const INBOUND: u64 = 1;
const OUTBOUND: u64 = 2;

const SHARDS: usize = 16;

/// Slot key → entry (`<expiry ms> <group> <trace id>`), sharded by key.
static STORE: [Mutex<BTreeMap<String, Vec<u8>>>; SHARDS] = [const { Mutex::new(BTreeMap::new()) }; SHARDS];

fn shard(key: &str) -> &'static Mutex<BTreeMap<String, Vec<u8>>> {
    let h = key.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)));
    &STORE[h % SHARDS]
}

fn store(key: String, entry: Vec<u8>) {
    // A panic elsewhere while the lock was held leaves the map whole (an
    // insert or a lookup): keep using it.
    shard(&key).lock().unwrap_or_else(PoisonError::into_inner).insert(key, entry);
}

fn load(key: &str) -> Option<Vec<u8>> {
    shard(key).lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned()
}

/// On an inbound listener, remembers the request's trace id → group; on an
/// outbound one, restores the group of a request that has none.
pub fn apply(incoming: &mut Incoming<'_>, a: &Assist, envoy: &StreamHandle, now_ms: u64) {
    let Some(trace_id) = incoming.trace_id else { return };
    let side = match a.side {
        Side::Auto => match envoy.listener_direction() {
            Some(INBOUND) => Side::Inbound,
            Some(OUTBOUND) => Side::Outbound,
            _ => return,
        },
        side => side,
    };
    match side {
        Side::Inbound => {
            if let (Some((trace, group)), false) = (incoming.remember(), incoming.source == GroupSource::Assist) {
                store(a.slot_key(trace), assist::encode_entry(trace, Some(&group), now_ms.saturating_add(a.ttl_ms)));
            }
        }
        Side::Outbound | Side::Auto => {
            if incoming.group.is_some() {
                return;
            }
            // A slot recorded for a request without a group (reports) heals nothing.
            if let Some(group) =
                load(&a.slot_key(trace_id)).and_then(|e| assist::decode_entry(&e, trace_id, now_ms)).flatten()
            {
                incoming.adopt(group, GroupSource::Assist);
            }
        }
    }
}
