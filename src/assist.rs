//! Propagation assist, host side: remember trace id → group on a workload's
//! inbound listener, restore it on the outbound one. The store's format and
//! bounds live in core (`isogroup_core::assist`).

#[allow(unused_imports)]
use isogroup_core::prelude::*;

use isogroup_core::assist::{self, Assist, Side};
use isogroup_core::request::{GroupSource, Incoming};

use crate::host::Host;
use crate::vm::Vm;

/// Envoy's `xds.listener_direction`: the listener's `traffic_direction`.
const INBOUND: i64 = 1;
const OUTBOUND: i64 = 2;

pub fn apply<H: Host>(incoming: &mut Incoming<'_>, a: &Assist, vm: &Vm<H>) {
    let Some(trace_id) = incoming.trace_id else { return };
    let side = match a.side {
        Side::Auto => match listener_direction(&vm.host) {
            Some(INBOUND) => Side::Inbound,
            Some(OUTBOUND) => Side::Outbound,
            _ => return,
        },
        side => side,
    };
    let now = vm.clock_ms.get();
    match side {
        Side::Inbound => {
            if let (Some((trace, group)), false) = (incoming.remember(), incoming.source == GroupSource::Assist) {
                let entry = assist::encode_entry(trace, &group, now.saturating_add(a.ttl_ms));
                let _ = vm.host.shared_set(&a.slot_key(trace), &entry, None);
            }
        }
        Side::Outbound | Side::Auto => {
            if incoming.group.is_some() {
                return;
            }
            if let Ok((Some(entry), _)) = vm.host.shared_get(&a.slot_key(trace_id)) {
                if let Some(group) = assist::decode_entry(&entry, trace_id, now) {
                    incoming.adopt(group, GroupSource::Assist);
                }
            }
        }
    }
}

fn listener_direction(host: &impl Host) -> Option<i64> {
    let bytes = host.property(&["xds", "listener_direction"]).ok()??;
    Some(i64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}
