//! An Envoy double for `proxy_abi`'s native tests: the host imports with
//! their wasm signatures, answering as proxy-wasm-cpp-host and Envoy do. A
//! value is handed over as the host's `copyToPointerSize` does: memory from
//! the module's `proxy_on_memory_allocate`, and a null pointer (no
//! allocation) for an empty one; a missing buffer, shared-data key or
//! property is `NotFound`; the CAS of a missing key is ignored.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::header_map::{encode, HeaderMap};

pub const OK: u32 = 0;
pub const NOT_FOUND: u32 = 1;
pub const BAD_ARGUMENT: u32 = 2;
pub const CAS_MISMATCH: u32 = 8;

/// Header pairs, owned.
pub type Pairs = Vec<(String, Vec<u8>)>;

#[derive(Default)]
pub struct Envoy {
    /// Buffers by the ABI's buffer type.
    pub buffers: HashMap<u32, Vec<u8>>,
    /// Header maps by the ABI's map type.
    pub maps: HashMap<u32, Pairs>,
    pub shared: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    cas: u32,
    /// Properties by their NUL-joined path.
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    pub log: Vec<(u32, String)>,
    /// `(status, body, headers, grpc status)` of each local reply.
    pub replies: Vec<(u32, Vec<u8>, Pairs, i32)>,
    pub closed: Vec<u32>,
    /// `(cluster, headers)` of each HTTP call.
    pub calls: Vec<(String, Pairs)>,
    pub metrics: Vec<(String, i64)>,
    /// Imports that fail, with the status they return.
    pub fail: HashMap<&'static str, u32>,
    /// Bytes handed to the module through `proxy_on_memory_allocate`.
    pub handed_over: usize,
}

std::thread_local! {
    pub static ENVOY: RefCell<Envoy> = RefCell::new(Envoy::default());
}

pub fn with<T>(f: impl FnOnce(&mut Envoy) -> T) -> T {
    ENVOY.with(|e| f(&mut e.borrow_mut()))
}

fn failing(call: &str) -> Option<u32> {
    with(|e| e.fail.get(call).copied())
}

/// What the module passed: a pointer and a length (a null pointer only
/// with length 0).
fn read(data: *const u8, size: usize) -> Vec<u8> {
    if size == 0 {
        return Vec::new();
    }
    // SAFETY: the module passes pointers and lengths of live slices.
    unsafe { std::slice::from_raw_parts(data, size) }.to_vec()
}

fn text(data: *const u8, size: usize) -> String {
    String::from_utf8(read(data, size)).expect("the module passes UTF-8 here")
}

/// The host's `copyToPointerSize`: an empty value is a null pointer.
fn hand_over(value: &[u8], data: *mut *mut u8, size: *mut usize) {
    let pointer = if value.is_empty() {
        std::ptr::null_mut()
    } else {
        let p = crate::proxy_abi::proxy_on_memory_allocate(value.len());
        // SAFETY: `p` is a fresh allocation of `value.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(value.as_ptr(), p, value.len()) };
        with(|e| e.handed_over += value.len());
        p
    };
    // SAFETY: out-parameters on the module's stack.
    unsafe {
        *data = pointer;
        *size = value.len();
    }
}

fn pairs(data: *const u8, size: usize) -> Pairs {
    let map = HeaderMap::from_bytes(read(data, size));
    map.pairs().into_iter().map(|(k, v)| (k.to_owned(), v.to_vec())).collect()
}

pub unsafe fn proxy_log(level: u32, data: *const u8, size: usize) -> u32 {
    let line = text(data, size);
    with(|e| e.log.push((level, line)));
    OK
}

pub unsafe fn proxy_get_buffer_bytes(kind: u32, start: usize, max: usize, data: *mut *mut u8, size: *mut usize) -> u32 {
    if let Some(status) = failing("get_buffer_bytes") {
        return status;
    }
    let Some(buffer) = with(|e| e.buffers.get(&kind).cloned()) else { return NOT_FOUND };
    let Some(end) = start.checked_add(max) else { return BAD_ARGUMENT };
    let end = end.min(buffer.len());
    // Nothing to copy: Ok, and the out-parameters are left as they were.
    if end > start {
        hand_over(&buffer[start..end], data, size);
    }
    OK
}

pub unsafe fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32 {
    *time = 1_700_000_000_000_000_000;
    OK
}

pub unsafe fn proxy_set_tick_period_milliseconds(_period: u32) -> u32 {
    failing("set_tick_period_milliseconds").unwrap_or(OK)
}

pub unsafe fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32 {
    if let Some(status) = failing("get_header_map_pairs") {
        return status;
    }
    let Some(pairs) = with(|e| e.maps.get(&map).cloned()) else { return NOT_FOUND };
    // The host sends an empty map as an empty value.
    let bytes = if pairs.is_empty() { Vec::new() } else { encode(&pairs) };
    hand_over(&bytes, data, size);
    OK
}

fn edit_map(call: &str, map: u32, edit: impl FnOnce(&mut Pairs)) -> u32 {
    if let Some(status) = failing(call) {
        return status;
    }
    with(|e| match e.maps.get_mut(&map) {
        Some(pairs) => {
            edit(pairs);
            OK
        }
        None => NOT_FOUND,
    })
}

pub unsafe fn proxy_replace_header_map_value(map: u32, key: *const u8, ks: usize, value: *const u8, vs: usize) -> u32 {
    let (key, value) = (text(key, ks), read(value, vs));
    edit_map("replace_header_map_value", map, |pairs| {
        pairs.retain(|(k, _)| *k != key);
        pairs.push((key, value));
    })
}

pub unsafe fn proxy_add_header_map_value(map: u32, key: *const u8, ks: usize, value: *const u8, vs: usize) -> u32 {
    let (key, value) = (text(key, ks), read(value, vs));
    edit_map("add_header_map_value", map, |pairs| pairs.push((key, value)))
}

pub unsafe fn proxy_remove_header_map_value(map: u32, key: *const u8, ks: usize) -> u32 {
    let key = text(key, ks);
    edit_map("remove_header_map_value", map, |pairs| pairs.retain(|(k, _)| *k != key))
}

#[allow(clippy::too_many_arguments)]
pub unsafe fn proxy_send_local_response(
    status: u32,
    details: *const u8,
    details_size: usize,
    body: *const u8,
    body_size: usize,
    headers: *const u8,
    headers_size: usize,
    grpc_status: i32,
) -> u32 {
    let _ = read(details, details_size);
    let reply = (status, read(body, body_size), pairs(headers, headers_size), grpc_status);
    with(|e| e.replies.push(reply));
    OK
}

pub unsafe fn proxy_close_stream(stream: u32) -> u32 {
    with(|e| e.closed.push(stream));
    OK
}

pub unsafe fn proxy_define_metric(_kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32 {
    let name = text(name, name_size);
    *id = with(|e| {
        e.metrics.push((name, 0));
        e.metrics.len() as u32 - 1
    });
    OK
}

pub unsafe fn proxy_increment_metric(id: u32, offset: i64) -> u32 {
    with(|e| {
        e.metrics.get_mut(id as usize).map_or(NOT_FOUND, |m| {
            m.1 += offset;
            OK
        })
    })
}

pub unsafe fn proxy_record_metric(id: u32, value: u64) -> u32 {
    with(|e| {
        e.metrics.get_mut(id as usize).map_or(NOT_FOUND, |m| {
            m.1 = value as i64;
            OK
        })
    })
}

pub unsafe fn proxy_get_shared_data(
    key: *const u8,
    key_size: usize,
    data: *mut *mut u8,
    size: *mut usize,
    cas: *mut u32,
) -> u32 {
    let key = read(key, key_size);
    let Some((value, token)) = with(|e| e.shared.get(&key).cloned()) else { return NOT_FOUND };
    hand_over(&value, data, size);
    *cas = token;
    OK
}

pub unsafe fn proxy_set_shared_data(key: *const u8, key_size: usize, value: *const u8, size: usize, cas: u32) -> u32 {
    if let Some(status) = failing("set_shared_data") {
        return status;
    }
    let (key, value) = (read(key, key_size), read(value, size));
    with(|e| {
        if let Some((_, current)) = e.shared.get(&key) {
            if cas != 0 && cas != *current {
                return CAS_MISMATCH;
            }
        }
        e.cas += 1;
        e.shared.insert(key, (value, e.cas));
        OK
    })
}

pub unsafe fn proxy_get_property(path: *const u8, path_size: usize, data: *mut *mut u8, size: *mut usize) -> u32 {
    if let Some(status) = failing("get_property") {
        return status;
    }
    let path = read(path, path_size);
    let Some(value) = with(|e| e.properties.get(&path).cloned()) else { return NOT_FOUND };
    hand_over(&value, data, size);
    OK
}

#[allow(clippy::too_many_arguments)]
pub unsafe fn proxy_http_call(
    upstream: *const u8,
    upstream_size: usize,
    headers: *const u8,
    headers_size: usize,
    body: *const u8,
    body_size: usize,
    trailers: *const u8,
    trailers_size: usize,
    _timeout_ms: u32,
    token: *mut u32,
) -> u32 {
    let (cluster, headers) = (text(upstream, upstream_size), pairs(headers, headers_size));
    let _ = (read(body, body_size), pairs(trailers, trailers_size));
    // Envoy refuses a call without these (BadArgument).
    if [":method", ":path", ":authority"].iter().any(|n| !headers.iter().any(|(k, _)| k == n)) {
        return BAD_ARGUMENT;
    }
    *token = with(|e| {
        e.calls.push((cluster, headers));
        e.calls.len() as u32
    });
    OK
}
