//! The root context of one VM: configure (parse → compile → install), ticks
//! (flush metrics, sync the table), and one HTTP context per request.

use std::rc::Rc;
use std::time::Duration;

use isogroup_core::{Settings, Source};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

use crate::host;
use crate::http::Request;
use crate::metrics::Metrics;
use crate::sync::TableSync;
use crate::vm::Vm;

/// Ticks flush request counters and check for a new table.
const TICK: Duration = Duration::from_millis(200);
const VM_SEQ_KEY: &str = "isogroup/vm-seq";

#[derive(Default)]
pub struct Root {
    vm: Option<Rc<Vm>>,
    sync: Option<TableSync>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, _headers: usize, body_size: usize, _trailers: usize) {
        if let (Some(vm), Some(sync)) = (&self.vm, &mut self.sync) {
            sync.on_http_call_response(vm, token_id, body_size);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match host::plugin_configuration() {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                host::log(LogLevel::Error, &format!("isogroup: cannot read the plugin configuration: {e}"));
                return false;
            }
        };
        let mut settings = match Settings::from_json(&bytes) {
            Ok(s) => s,
            Err(e) => {
                host::log(LogLevel::Error, &format!("isogroup: invalid plugin configuration: {e}"));
                return false;
            }
        };
        let source = std::mem::replace(&mut settings.source, Source::None);
        let vm = Rc::new(Vm { settings, table: Default::default(), metrics: Metrics::define(), id: next_vm_id() });
        self.sync = Some(TableSync::start(source, &vm));
        if let Err(e) = host::set_tick_period(TICK) {
            host::log(LogLevel::Error, &format!("isogroup: {e}"));
            return false;
        }
        let version = vm.table().map_or("none".to_owned(), |t| t.version().to_string());
        host::log(LogLevel::Info, &format!("isogroup: configured vm {} (table version {version})", vm.id));
        self.vm = Some(vm);
        true
    }

    fn on_tick(&mut self) {
        if let (Some(vm), Some(sync)) = (&self.vm, &mut self.sync) {
            vm.metrics.flush();
            sync.on_tick(vm);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let vm = self.vm.clone()?;
        Some(Box::new(Request::new(vm)))
    }
}

/// A process-unique VM number from a shared-data counter (seeded first: a
/// CAS on a missing key always succeeds).
fn next_vm_id() -> String {
    if let Ok((None, _)) = host::shared_get(VM_SEQ_KEY) {
        let _ = host::shared_set(VM_SEQ_KEY, b"0", None);
    }
    for _ in 0..16 {
        let Ok((Some(value), cas)) = host::shared_get(VM_SEQ_KEY) else {
            break;
        };
        let next = std::str::from_utf8(&value).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
        if host::shared_set(VM_SEQ_KEY, next.to_string().as_bytes(), cas).is_ok() {
            return next.to_string();
        }
    }
    "?".to_owned()
}
