//! The wasm side of `proxy`: the `proxy_on_*` exports Envoy calls (only
//! those the filter answers; the host skips a callback a module does not
//! export, so each one left out is a VM entry less per request: no
//! `proxy_on_done`, whose absence the host reads as "done", no `proxy_on_log`,
//! no body callbacks) and the host imports the filter uses, each returning the host's
//! status instead of panicking on an unexpected one.

#[allow(unused_imports)]
use isogroup_core::prelude::*;

use core::cell::RefCell;
use core::ptr::{null, null_mut};

use crate::proxy::{Action, GrpcStatusCode, HttpContext, LogLevel, MetricType, RootContext, Status};
use crate::root::Root;
use crate::wasm_host::WasmHost;

/// Buffers the host reads from.
#[repr(u32)]
#[derive(Clone, Copy)]
pub enum BufferType {
    HttpCallResponseBody = 4,
    PluginConfiguration = 7,
}

/// Header maps the filter reads or edits (the ABI's names).
#[allow(clippy::enum_variant_names)]
#[repr(u32)]
#[derive(Clone, Copy)]
pub enum MapType {
    HttpRequestHeaders = 0,
    HttpResponseHeaders = 2,
    HttpCallResponseHeaders = 6,
}

const STREAM_HTTP_REQUEST: u32 = 0;

// Natively (unit tests) the same imports come from an Envoy double.
#[cfg(not(target_arch = "wasm32"))]
use crate::tests::envoy::*;

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
    fn proxy_get_buffer_bytes(kind: u32, start: usize, max: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(map: u32, key: *const u8, key_size: usize, value: *const u8, size: usize) -> u32;
    fn proxy_add_header_map_value(map: u32, key: *const u8, key_size: usize, value: *const u8, size: usize) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_close_stream(stream: u32) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(key: *const u8, key_size: usize, value: *const u8, size: usize, cas: u32) -> u32;
    fn proxy_get_property(path: *const u8, path_size: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_http_call(
        upstream: *const u8,
        upstream_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
}

fn status(code: u32) -> Result<(), Status> {
    match Status::from_raw(code) {
        Status::Ok => Ok(()),
        s => Err(s),
    }
}

/// A buffer the host allocated through `proxy_on_memory_allocate` (a boxed
/// slice of exactly `size` bytes): this VM owns it.
fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    // SAFETY: see above; `Vec::from_raw_parts(data, size, size)` frees it as
    // `proxy_on_memory_allocate` allocated it.
    (!data.is_null()).then(|| unsafe { Vec::from_raw_parts(data, size, size) })
}

/// A host call returning a buffer: `None` for an absent one (`NotFound`).
fn fetch(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0);
    match Status::from_raw(call(&mut data, &mut size)) {
        Status::Ok => Ok(owned(data, size)),
        Status::NotFound => Ok(None),
        s => Err(s),
    }
}

pub fn log(level: LogLevel, message: &str) {
    // SAFETY (every import below): plain host calls on pointers and lengths
    // of live Rust slices, or out-parameters on this stack frame.
    unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
}

pub fn get_buffer(kind: BufferType, max: usize) -> Result<Option<Vec<u8>>, Status> {
    fetch(|data, size| unsafe { proxy_get_buffer_bytes(kind as u32, 0, max, data, size) })
}

pub fn now_ns() -> Result<u64, Status> {
    let mut t = 0;
    status(unsafe { proxy_get_current_time_nanoseconds(&mut t) })?;
    Ok(t)
}

pub fn set_tick_period_ms(ms: u32) -> Result<(), Status> {
    status(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

/// All pairs of a header map, serialised as the host sends them.
pub fn header_map_pairs(map: MapType) -> Result<Vec<u8>, Status> {
    let (mut data, mut size) = (null_mut(), 0);
    status(unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) })?;
    Ok(owned(data, size).unwrap_or_default())
}

pub fn replace_header(map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
    status(unsafe {
        proxy_replace_header_map_value(map as u32, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

pub fn add_header(map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
    status(unsafe { proxy_add_header_map_value(map as u32, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

pub fn remove_header(map: MapType, name: &str) -> Result<(), Status> {
    status(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// Pairs serialised as the host reads them: a count, each name's and
/// value's length, then each name and value NUL-terminated (all u32 LE).
fn serialize_pairs(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + pairs.iter().map(|(n, v)| n.len() + v.len() + 10).sum::<usize>());
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

pub fn send_local_response(code: u32, headers: &[(&str, &[u8])], body: &[u8]) -> Result<(), Status> {
    let headers = serialize_pairs(headers);
    status(unsafe {
        proxy_send_local_response(code, null(), 0, body.as_ptr(), body.len(), headers.as_ptr(), headers.len(), -1)
    })
}

pub fn send_grpc_response(code: GrpcStatusCode, message: &str, metadata: &[(&str, &[u8])]) -> Result<(), Status> {
    let metadata = serialize_pairs(metadata);
    status(unsafe {
        proxy_send_local_response(
            200,
            null(),
            0,
            message.as_ptr(),
            message.len(),
            metadata.as_ptr(),
            metadata.len(),
            code as i32,
        )
    })
}

pub fn close_request_stream() -> Result<(), Status> {
    status(unsafe { proxy_close_stream(STREAM_HTTP_REQUEST) })
}

pub fn define_metric(kind: MetricType, name: &str) -> Result<u32, Status> {
    let mut id = 0;
    status(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, by: i64) -> Result<(), Status> {
    status(unsafe { proxy_increment_metric(id, by) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    status(unsafe { proxy_record_metric(id, value) })
}

/// A value and its CAS (`None` for 0); `(None, None)` for a missing key.
pub fn get_shared_data(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
    let (mut data, mut size, mut cas) = (null_mut(), 0, 0);
    match Status::from_raw(unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) }) {
        Status::Ok => Ok((owned(data, size), (cas != 0).then_some(cas))),
        Status::NotFound => Ok((None, None)),
        s => Err(s),
    }
}

pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    status(unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas.unwrap_or(0)) })
}

/// A property by its path, segments joined with NUL as the host expects.
pub fn get_property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    let joined = isogroup_core::text::join_str(path, "\0");
    fetch(|data, size| unsafe { proxy_get_property(joined.as_ptr(), joined.len(), data, size) })
}

pub fn http_call(upstream: &str, headers: &[(&str, &[u8])], body: &[u8], timeout_ms: u32) -> Result<u32, Status> {
    let headers = serialize_pairs(headers);
    let trailers = serialize_pairs(&[]);
    let mut token = 0;
    status(unsafe {
        proxy_http_call(
            upstream.as_ptr(),
            upstream.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// A context of this VM: a root context (one per plugin instance sharing
/// the VM) or an HTTP stream one created.
enum Ctx {
    Root(Box<Root<WasmHost>>),
    Stream(Box<dyn HttpContext>),
}

/// The live contexts, sorted by id: a `Vec` and a binary search instead of
/// a hash map type in the wasm. Envoy numbers contexts from a counter, so a
/// new one appends; the live ones are the VM's roots and its in-flight
/// streams.
#[derive(Default)]
struct Contexts {
    by_id: Vec<(u32, Ctx)>,
}

impl Contexts {
    fn get_mut(&mut self, id: u32) -> Option<&mut Ctx> {
        let i = self.by_id.binary_search_by_key(&id, |(k, _)| *k).ok()?;
        self.by_id.get_mut(i).map(|(_, c)| c)
    }

    fn insert(&mut self, id: u32, ctx: Ctx) {
        match self.by_id.binary_search_by_key(&id, |(k, _)| *k) {
            Ok(i) => {
                if let Some(slot) = self.by_id.get_mut(i) {
                    slot.1 = ctx;
                }
            }
            Err(i) => self.by_id.insert(i, (id, ctx)),
        }
    }

    fn remove(&mut self, id: u32) {
        if let Ok(i) = self.by_id.binary_search_by_key(&id, |(k, _)| *k) {
            self.by_id.remove(i);
        }
    }

    fn root(&mut self, id: u32) -> Option<&mut Root<WasmHost>> {
        match self.get_mut(id) {
            Some(Ctx::Root(r)) => Some(r),
            _ => None,
        }
    }

    fn stream(&mut self, id: u32) -> Option<&mut Box<dyn HttpContext>> {
        match self.get_mut(id) {
            Some(Ctx::Stream(s)) => Some(s),
            _ => None,
        }
    }
}

/// A VM's state: a wasm32 VM runs one thread (this module is built without
/// the threads feature: `./build.sh test` refuses a module with shared
/// memory or an atomic instruction), so a plain static is enough.
struct OneThread(RefCell<Option<Contexts>>);

// SAFETY: wasm32 without the threads feature has exactly one thread.
#[cfg(target_arch = "wasm32")]
unsafe impl Sync for OneThread {}

#[cfg(target_arch = "wasm32")]
static CONTEXTS: OneThread = OneThread(RefCell::new(None));

// Natively, one VM per test thread.
#[cfg(not(target_arch = "wasm32"))]
std::thread_local! {
    static CONTEXTS: OneThread = const { OneThread(RefCell::new(None)) };
}

/// Runs `f` on the contexts; a re-entrant call (the host calling back while
/// a callback runs, which Envoy does not do) is dropped, not a panic.
fn with_contexts(f: &mut dyn FnMut(&mut Contexts)) {
    #[cfg(target_arch = "wasm32")]
    run_on(&CONTEXTS, f);
    #[cfg(not(target_arch = "wasm32"))]
    CONTEXTS.with(|contexts| run_on(contexts, f));
}

fn run_on(contexts: &OneThread, f: &mut dyn FnMut(&mut Contexts)) {
    if let Ok(mut c) = contexts.0.try_borrow_mut() {
        f(c.get_or_insert_with(Contexts::default));
    }
}

/// A panic (none is expected: clippy denies unwrap, expect and panic) traps
/// the VM, as `panic = "abort"` did with std.
#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn on_panic(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}

/// The dlmalloc crate (std's allocator on wasm32-unknown-unknown; it grows
/// linear memory itself). Measured against wasi-libc's malloc in the same
/// no_std build: Envoy holds ~4 MiB less malloc heap after start-up with it
/// (docs/benchmarks-history.md, Memory), and the module is ~4.5 KB smaller.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

// wasi-libc (shipped with the target, self-contained) for the memcmp that
// core's slice comparisons call; without it memcmp becomes an "env" import
// Envoy does not provide. Only what is called is linked (not its malloc).
#[cfg(target_arch = "wasm32")]
#[link(name = "c")]
extern "C" {}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// The reactor entry point Envoy calls once after instantiating the module.
#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: runs the module's static constructors once, as wasi-libc's
    // reactor start does.
    #[cfg(target_os = "wasi")]
    unsafe {
        __wasm_call_ctors();
    }
}

/// Memory for buffers the host hands over (a boxed slice of `size` bytes,
/// freed by `owned`). Not zeroed: the host writes every byte before the
/// filter reads one (a memset less per header read).
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let slice: Box<[core::mem::MaybeUninit<u8>]> = Box::new_uninit_slice(size);
    Box::into_raw(slice).cast::<u8>()
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, root_context_id: u32) {
    with_contexts(&mut |c| {
        if root_context_id == 0 {
            c.insert(context_id, Ctx::Root(Box::new(Root::new(WasmHost))));
        } else if let Some(stream) = c.root(root_context_id).and_then(|r| r.create_http_context(context_id)) {
            c.insert(context_id, Ctx::Stream(stream));
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_context_id: u32, _size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(context_id: u32, size: usize) -> bool {
    let mut ok = false;
    with_contexts(&mut |c| {
        if let Some(root) = c.root(context_id) {
            ok = root.on_configure(size);
        }
    });
    ok
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(context_id: u32) {
    with_contexts(&mut |c| {
        if let Some(root) = c.root(context_id) {
            root.on_tick();
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    context_id: u32,
    token: u32,
    headers: usize,
    body: usize,
    trailers: usize,
) {
    with_contexts(&mut |c| {
        if let Some(root) = c.root(context_id) {
            crate::proxy::Context::on_http_call_response(root, token, headers, body, trailers);
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(context_id: u32, headers: usize, end_of_stream: bool) -> u32 {
    let mut action = None;
    with_contexts(&mut |c| {
        action = Some(match c.stream(context_id) {
            Some(stream) => stream.on_http_request_headers(headers, end_of_stream),
            None => sanitise_unknown_stream(),
        });
    });
    action.unwrap_or_else(sanitise_unknown_stream) as u32
}

/// A stream with no context here (its plugin was never configured, so no
/// settings name its headers): not routed, but a client's routing headers,
/// under their default names, never pass; if they cannot be removed, the
/// stream is closed.
fn sanitise_unknown_stream() -> Action {
    use isogroup_core::config::{DEFAULT_CLUSTER_HEADER, DEFAULT_TARGET_HEADER};
    let map = MapType::HttpRequestHeaders;
    match remove_header(map, DEFAULT_CLUSTER_HEADER).and(remove_header(map, DEFAULT_TARGET_HEADER)) {
        Ok(()) => Action::Continue,
        Err(_) => {
            let _ = close_request_stream();
            Action::Pause
        }
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(context_id: u32, headers: usize, end_of_stream: bool) -> u32 {
    let mut action = Action::Continue;
    with_contexts(&mut |c| {
        if let Some(stream) = c.stream(context_id) {
            action = stream.on_http_response_headers(headers, end_of_stream);
        }
    });
    action as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    with_contexts(&mut |c| {
        c.remove(context_id);
    });
}
