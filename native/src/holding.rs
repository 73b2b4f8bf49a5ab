//! What one source's poller holds, and what a companion's answer makes of
//! it: the stamp of the table in force and that table as read, which a
//! delta (SPEC "Delivery to many proxies") applies onto. No Envoy here:
//! `sync.rs` runs it on the main thread; the unit tests run it alone.
//!
//! The module has no size bar, so it always asks for deltas while it holds
//! a table as read; the delta is read, patched and validated by core, as
//! the wasm build's poller does it (`delta::read_onto`).

use isogroup_core::delta;
pub use isogroup_core::epoch::Held;
use isogroup_core::{CompanionSource, Limits, RawTable, Table, TableError};

/// The table a source's poller holds (nothing before the first).
#[derive(Debug, Default)]
pub struct Holding {
    held: Option<Held>,
    /// The table in force as read: what a delta applies onto. `None` once
    /// a delta that did not apply consumed it: the next poll asks for the
    /// whole table.
    raw: Option<RawTable>,
}

/// What an answer made of the table held.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per answer, its table moved into the published `Arc` at once
pub enum Taken {
    /// A newer valid table, now held: to publish.
    Newer { table: Table, unknown: Vec<String> },
    /// A valid table, but not newer than the one held (a lagging replica).
    NotNewer,
    /// A whole table that is not valid: the table held keeps serving.
    Rejected(TableError),
    /// A delta that does not apply onto the table held (an unknown key, a
    /// base not held) or makes an invalid table: the table held keeps
    /// serving, and the next poll asks for the whole table.
    Discarded(TableError),
}

impl Holding {
    pub fn held(&self) -> Option<&Held> {
        self.held.as_ref()
    }

    /// Whether `other` is newer than the table held (true while none is).
    pub fn is_newer(&self, other: &Held) -> bool {
        self.held.as_ref().is_none_or(|h| other.stamp().is_newer_than(&h.stamp()))
    }

    /// The next poll's path: the whole table while nothing is held, else a
    /// long poll after the table held, asking for a delta onto it when it
    /// is held as read and has an epoch (as the wasm build asks).
    pub fn poll_path(&self, source: &CompanionSource) -> String {
        let Some(held) = &self.held else { return source.path.clone() };
        let sep = if source.path.contains('?') { '&' } else { '?' };
        let mut path = format!("{}{sep}after={}", source.path, held.version);
        // Only a valid epoch is sent, and a valid one is URL-safe.
        let epoch = held.epoch.as_deref().filter(|_| held.stamp().epoch.is_some());
        if let Some(e) = epoch {
            path.push_str("&epoch=");
            path.push_str(e);
        }
        path.push_str(&format!("&wait={}", source.wait_s));
        if epoch.is_some() && self.raw.is_some() {
            path.push_str("&delta=1");
        }
        path
    }

    /// Takes a `200` answer's body: a whole table, or (`delta`, its
    /// `Content-Type` said so) a delta applied onto exactly the table held
    /// as read. Either is validated as a whole table is, compiled with the
    /// runtime rules kept (one table serves every configuration of the
    /// source, with or without `edge.runtime`).
    pub fn take(&mut self, body: &[u8], delta: bool, base_group: &str, limits: &Limits) -> Taken {
        let read = match delta {
            // The raw table goes into the patch: whatever is wrong with the
            // delta, it is gone, and the next poll asks for the whole.
            true => delta::read_onto(self.raw.take(), body, limits),
            false => RawTable::from_companion_json(body, limits),
        };
        let compiled =
            read.and_then(|(raw, unknown)| Ok((Table::compile_for(&raw, base_group, limits, true)?, raw, unknown)));
        let (table, raw, unknown) = match compiled {
            Ok(taken) => taken,
            Err(e) if delta => return Taken::Discarded(e),
            Err(e) => return Taken::Rejected(e),
        };
        let held = Held::of(&table);
        if !self.is_newer(&held) {
            return Taken::NotNewer;
        }
        self.held = Some(held);
        self.raw = Some(raw);
        Taken::Newer { table, unknown }
    }
}

#[cfg(test)]
mod tests;
