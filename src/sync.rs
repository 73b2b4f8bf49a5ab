//! The table source seam: where a VM's table comes from after configure.

use isogroup_core::Source;

use crate::metrics::Gauge;
use crate::vm::Vm;

pub enum TableSync {
    /// Inline table (or none): installed once at configure, never changes.
    Static,
}

impl TableSync {
    /// Installs what the source has at configure time.
    pub fn start(source: Source, vm: &Vm) -> TableSync {
        match source {
            Source::None => TableSync::Static,
            Source::Inline(table) => {
                vm.metrics.set(Gauge::TableVersion, table.version());
                vm.install(table);
                TableSync::Static
            }
            Source::Companion(_) => TableSync::Static,
        }
    }

    pub fn on_tick(&mut self, _vm: &Vm) {}
}
