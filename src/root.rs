//! The root context of one VM: configure (parse → compile → install), ticks
//! (flush metrics, sync the table), and one HTTP context per request.

#[allow(unused_imports)]
use isogroup_core::prelude::*;

use alloc::rc::Rc;
use core::cell::Cell;
use core::time::Duration;

use crate::proxy::{Context, ContextType, HttpContext, LogLevel, RootContext};
use isogroup_core::text::text_of;
use isogroup_core::{cat, GroupName, Settings, Source};

use crate::host::Host;
use crate::http::Request;
use crate::metrics::Metrics;
use crate::propagation::Reports;
use crate::sync::TableSync;
use crate::vm::Vm;

/// Ticks flush request counters and check for a new table.
pub const TICK: Duration = Duration::from_millis(200);
const VM_SEQ_KEY: &str = "isogroup/vm-seq";

pub struct Root<H> {
    /// Moved into the VM state at configure.
    host: Option<H>,
    vm: Option<Rc<Vm<H>>>,
    sync: Option<TableSync>,
}

impl<H: Host> Root<H> {
    pub fn new(host: H) -> Self {
        Root { host: Some(host), vm: None, sync: None }
    }

    /// The VM state, once configured (tests inspect it).
    #[cfg(test)]
    pub fn vm(&self) -> Option<&Rc<Vm<H>>> {
        self.vm.as_ref()
    }
}

impl<H: Host> Context for Root<H> {
    fn on_http_call_response(&mut self, token_id: u32, _headers: usize, body_size: usize, _trailers: usize) {
        if let (Some(vm), Some(sync)) = (&self.vm, &mut self.sync) {
            sync.on_http_call_response(vm, token_id, body_size);
        }
    }
}

impl<H: Host> RootContext for Root<H> {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(host) = self.host.take() else {
            // Envoy configures a root context once; a second call changes nothing.
            return self.vm.is_some();
        };
        let bytes = match host.plugin_configuration() {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                host.log(LogLevel::Error, &cat!("isogroup: cannot read the plugin configuration: ", e));
                return false;
            }
        };
        let mut settings = match Settings::from_json_vec(bytes) {
            Ok(s) => s,
            Err(e) => {
                host.log(LogLevel::Error, &cat!("isogroup: invalid plugin configuration: ", e));
                return false;
            }
        };
        if let Err(e) = host.set_tick_period(TICK) {
            host.log(LogLevel::Error, &cat!("isogroup: ", e));
            return false;
        }
        let source = core::mem::replace(&mut settings.source, Source::None);
        if settings.workload_group.is_none() {
            settings.workload_group = node_label_group(&host);
        }
        if settings.namespace.is_none() {
            settings.namespace = node_metadata(&host, "NAMESPACE", false);
        }
        if settings.workload.is_none() {
            settings.workload = node_metadata(&host, "WORKLOAD_NAME", true);
        }
        let now = host.now_ms().unwrap_or(0);
        let reports = reports(&host, &mut settings, now);
        let metrics = Metrics::define(&host);
        let id = next_vm_id(&host);
        let vm = Rc::new(Vm {
            host,
            settings,
            table: Default::default(),
            metrics,
            id,
            clock_ms: Cell::new(now),
            configured_ms: now,
            scratch: Cell::default(),
            regex_scratch: Cell::default(),
            reports,
        });
        self.sync = Some(TableSync::start(source, &vm));
        let version = vm.table().map_or("none".to_owned(), |t| text_of(&t.version()));
        vm.log(LogLevel::Info, &cat!("configured vm ", vm.id, " (table version ", version, ")"));
        self.vm = Some(vm);
        true
    }

    fn on_tick(&mut self) {
        if let (Some(vm), Some(sync)) = (&self.vm, &mut self.sync) {
            if let Ok(now) = vm.host.now_ms() {
                vm.clock_ms.set(now);
            }
            if let (Some(r), Some(a)) = (&vm.reports, &vm.settings.assist) {
                r.on_tick(vm, a);
            }
            vm.metrics.flush(&vm.host);
            sync.on_tick(vm);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&mut self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let vm = self.vm.clone()?;
        if let (Some(TableSync::Companion(sync)), None) = (&mut self.sync, vm.table()) {
            // The first table reaches one VM's poller at once and every other
            // VM on its next tick: until then a VM with none would refuse
            // joins of known lanes and skip lane cookies. A VM without a table
            // looks for the process's before each stream (one small
            // shared-data read, only until it has one).
            sync.follow(&vm);
        }
        Some(Box::new(Request::new(vm)))
    }
}

/// The workload's group from its pod label `isogroup.io/group` (Istio puts
/// pod labels in the node metadata). Read once per VM.
fn node_label_group(host: &impl Host) -> Option<String> {
    let value = host.property(&["xds", "node", "metadata", "LABELS", "isogroup.io/group"]).ok()??;
    if GroupName::new(&value).is_some() {
        let group = isogroup_core::text::lossy(&value);
        host.log(
            LogLevel::Info,
            &cat!(
                "isogroup: workload group ",
                isogroup_core::Quoted(group.as_str()),
                " from the node label isogroup.io/group"
            ),
        );
        Some(group)
    } else {
        host.log(LogLevel::Warn, "isogroup: node label isogroup.io/group is not a valid group name; ignored");
        None
    }
}

/// A name from the node metadata (Istio sets `NAMESPACE` and `WORKLOAD_NAME`).
/// A flag, not a `fn` to check it with: an indirect call of that type would
/// keep integer formatting (the same wasm signature) in the module.
fn node_metadata(host: &impl Host, key: &str, workload: bool) -> Option<String> {
    let value = host.property(&["xds", "node", "metadata", key]).ok()??;
    let valid = |v: &str| {
        if workload {
            isogroup_core::table::is_valid_service(v)
        } else {
            isogroup_core::config::is_namespace(v)
        }
    };
    match core::str::from_utf8(&value).ok().filter(|v| valid(v)) {
        Some(v) => Some(v.to_owned()),
        None => {
            host.log(LogLevel::Warn, &cat!("isogroup: node metadata ", key, " is not a valid name; ignored"));
            None
        }
    }
}

/// Per workload: the assist's slots, and the reports when they are on.
fn reports(host: &impl Host, settings: &mut Settings, now: u64) -> Option<Reports> {
    let workload = settings.workload.as_deref();
    if let (Some(a), Some(w)) = (&mut settings.assist, workload) {
        a.prefix = cat!("isogroup/assist/", w, "/");
    }
    let sample = settings.propagation?;
    if workload.is_some() && settings.namespace.is_some() && settings.assist.is_some() {
        return Some(Reports::new(sample, now));
    }
    host.log(LogLevel::Warn, "isogroup: propagation reports off: no workload, namespace or propagation_assist");
    None
}

/// A process-unique VM number from a shared-data counter (seeded first: a
/// CAS on a missing key always succeeds).
fn next_vm_id(host: &impl Host) -> String {
    if let Ok((None, _)) = host.shared_get(VM_SEQ_KEY) {
        let _ = host.shared_set(VM_SEQ_KEY, b"0", None);
    }
    for _ in 0..16 {
        let Ok((Some(value), cas)) = host.shared_get(VM_SEQ_KEY) else {
            break;
        };
        let next = isogroup_core::text::parse_u64(&value).unwrap_or(0).saturating_add(1);
        let next = text_of(&next);
        if host.shared_set(VM_SEQ_KEY, next.as_bytes(), cas).is_ok() {
            return next;
        }
    }
    "?".to_owned()
}
