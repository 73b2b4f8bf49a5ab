//! Propagation assist, host side: remember trace id → group on a workload's
//! inbound listener, restore it on the outbound one. The store's format and
//! bounds live in core (`isogroup_core::assist`). With propagation reports
//! on, the inbound side also records sampled traces without a group, and
//! what the outbound side sees is handed to the reports (`Seen`).

#[allow(unused_imports)]
use isogroup_core::prelude::*;

use isogroup_core::assist::{self, Assist, Side};
use isogroup_core::edge::fnv1a;
use isogroup_core::propagation::{carried_none, sampled_hash, Class};
use isogroup_core::request::{GroupSource, Incoming};
use isogroup_core::GroupName;

use crate::host::Host;
use crate::propagation::Seen;
use crate::vm::Vm;

/// Envoy's `xds.listener_direction`: the listener's `traffic_direction`.
const INBOUND: i64 = 1;
const OUTBOUND: i64 = 2;

pub fn apply<H: Host>(incoming: &mut Incoming<'_>, a: &Assist, vm: &Vm<H>) -> Seen {
    let now = vm.clock_ms.get();
    let reports = vm.reports.as_ref();
    let mut is_sampled = false;
    let mut untraced = false;
    // A sampled trace's FNV-1a: the VM's records place it by the hash the
    // sampling took (`None`: not taken, made where needed).
    let mut hash = None;
    if let Some(r) = reports {
        if incoming.group.as_ref().is_some_and(|g| g.as_bytes() != vm.settings.base_group.as_bytes()) {
            r.saw_lane(now);
        }
        if let (true, Some(t)) = (incoming.traced, incoming.trace_id) {
            let h = fnv1a(t);
            hash = Some(h);
            is_sampled = sampled_hash(h, r.sample);
        }
        // No trace the reports follow and no group of its own: counted as
        // untraced (outbound, while the workload served lanes).
        untraced = !incoming.traced && incoming.group.is_none() && r.lanes_recent(now);
    }
    if incoming.trace_id.is_none() && !untraced {
        return Seen::Nothing;
    }
    let side = match a.side {
        Side::Auto => match listener_direction(&vm.host) {
            Some(INBOUND) => Side::Inbound,
            Some(OUTBOUND) => Side::Outbound,
            _ => return Seen::Nothing,
        },
        side => side,
    };
    let hash_of = |trace| hash.unwrap_or_else(|| fnv1a(trace));
    match (side, incoming.trace_id) {
        (Side::Inbound, Some(trace)) => {
            // A group to restore, or a sampled trace (base requests too).
            if incoming.group.is_some() || is_sampled {
                let entry = assist::encode_entry(trace, incoming.group.as_ref(), now.saturating_add(a.ttl_ms));
                let (hash, mut key) = (hash_of(trace), String::new());
                a.slot_key_to(hash, &mut key);
                let written = vm.host.shared_set(&key, &entry, None).is_ok();
                if let (Some(r), true) = (reports, written && is_sampled) {
                    r.remember(hash, &entry);
                }
            }
            Seen::Nothing
        }
        (Side::Inbound, None) => Seen::Nothing,
        (_, trace) if incoming.group.is_some() => match (reports, trace, &incoming.group) {
            // Classified on a tick, without a host call now.
            (Some(_), Some(trace), Some(_)) if is_sampled => Seen::Carried(hash_of(trace), now),
            _ => Seen::Nothing,
        },
        (_, None) => Seen::Class(Class::Untraced),
        (_, Some(trace)) => {
            let recorded = read_record(&vm.host, a, trace, hash_of(trace), now);
            let mut healed = false;
            if let (Some(Some(group)), true) = (recorded, a.heal) {
                incoming.adopt(group, GroupSource::Assist);
                healed = true;
            }
            match recorded {
                _ if untraced => Seen::Class(Class::Untraced),
                Some(r) if is_sampled => Seen::Class(carried_none(r, healed)),
                _ => Seen::Nothing,
            }
        }
    }
}

/// What the inbound side recorded for `trace` (one shared-data read; `hash`:
/// its FNV-1a): the group, or `Some(None)` for a sampled request without one.
pub fn read_record(host: &impl Host, a: &Assist, trace: &[u8], hash: u64, now: u64) -> Option<Option<GroupName>> {
    let mut key = String::new();
    a.slot_key_to(hash, &mut key);
    assist::decode_entry(&crate::host::shared_value(host, &key), trace, now)
}

fn listener_direction(host: &impl Host) -> Option<i64> {
    let bytes = host.property(&["xds", "listener_direction"]).ok()??;
    Some(i64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}
