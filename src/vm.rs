//! State shared by the root context and the HTTP contexts of one VM (one
//! worker thread): the host, settings, the compiled table in force, metrics.

#[allow(unused_imports)]
use isogroup_core::prelude::*;

use alloc::rc::Rc;
use core::cell::Cell;

use crate::proxy::LogLevel;
use isogroup_core::{regex, Settings, Table};

use crate::host::Host;
use crate::metrics::Metrics;
use crate::propagation::Reports;

pub struct Vm<H> {
    pub host: H,
    pub settings: Settings,
    /// Swapped whole when a new table compiles; requests in flight keep theirs.
    /// A `Cell`, not a `RefCell`: no borrow flag to check, no borrow panic.
    pub table: Cell<Option<Rc<Table>>>,
    pub metrics: Metrics,
    /// Names this VM in `x-isogroup-decision`, so tests can tell workers apart.
    pub id: String,
    /// Wall clock in ms, refreshed each tick: coarse, but costs no host call
    /// on the request path.
    pub clock_ms: Cell<u64>,
    /// When this VM was configured: the table's age counts from here until
    /// the companion first answers.
    pub configured_ms: u64,
    /// Where a response annotation's value is put together: one buffer per
    /// VM, reused, instead of a `String` per request (taken and put back: a
    /// `Cell` cannot be borrowed twice).
    pub scratch: Cell<Vec<u8>>,
    /// The rule regexes' thread sets: one per VM, grown to the largest
    /// program run, so a request allocates none (taken and put back).
    pub regex_scratch: Cell<regex::Scratch>,
    /// Propagation reports, when on (`propagation`, the assist and a workload).
    pub reports: Option<Reports>,
}

impl<H: Host> Vm<H> {
    pub fn table(&self) -> Option<Rc<Table>> {
        let table = self.table.take();
        self.table.set(table.clone());
        table
    }

    pub fn install(&self, table: Table) {
        self.table.set(Some(Rc::new(table)));
    }

    pub fn log(&self, level: LogLevel, message: &str) {
        self.host.log(level, &isogroup_core::cat!("isogroup: ", message));
    }
}
