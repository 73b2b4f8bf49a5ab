//! What a 10 000-service table costs in memory, counted by a global
//! allocator: the JSON, the parsed table, the compiled table, and the peak
//! while each step runs (a wasm VM's linear memory keeps its peak). Prints
//! the figures (`cargo test -p isogroup-core --release --test table_memory
//! -- --nocapture`); asserts only sizes, never time. Native and 64-bit: the
//! wasm32 build's pointers and lengths are half as wide.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use isogroup_core::table::RawTable;
use isogroup_core::{synth, Limits, Table};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static BLOCKS: AtomicUsize = AtomicUsize::new(0);

fn grow(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::SeqCst) + by;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BLOCKS.fetch_add(1, Ordering::SeqCst);
        grow(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        BLOCKS.fetch_sub(1, Ordering::SeqCst);
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Growing counts the moment both blocks exist, as a moving realloc
        // has them; shrinking is in place (dlmalloc's, the wasm's allocator).
        if new_size > layout.size() {
            grow(new_size);
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live bytes and blocks now.
fn live() -> (usize, usize) {
    (LIVE.load(Ordering::SeqCst), BLOCKS.load(Ordering::SeqCst))
}

/// Runs `f`, returning its result and the peak of live bytes while it ran.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.store(LIVE.load(Ordering::SeqCst), Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst))
}

fn mb(bytes: usize) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

/// One test: the counters are process-wide, and a second test running
/// beside it would count its own allocations here.
#[test]
fn ten_thousand_service_table() {
    let limits = Limits::default();
    let (zero, zero_blocks) = live();
    let json = serde_json::to_vec(&synth::table(10_000, 100)).unwrap();
    let over = |(bytes, blocks): (usize, usize)| (bytes - zero, blocks - zero_blocks);
    let json_bytes = json.len();

    let (raw, parse_peak) = peak_of(|| RawTable::from_companion_json(&json, &limits).unwrap().0);
    drop(json);
    let (raw_bytes, raw_blocks) = over(live());
    let (table, compile_peak) = peak_of(|| Table::compile(&raw, "base", &limits).unwrap());
    drop(raw);
    let (table_bytes, table_blocks) = over(live());
    assert_eq!(table.service_count(), 10_000);
    drop(table);

    // The filter's path for a companion's table: the JSON freed before compiling.
    let json = serde_json::to_vec(&synth::table(10_000, 100)).unwrap();
    let (filter, filter_peak) = peak_of(|| Table::from_companion_vec(json, "base", &limits, true).unwrap().0);
    let (filter_bytes, _) = over(live());
    assert_eq!(filter.service_count(), 10_000);
    assert_eq!(filter_bytes, table_bytes, "the same table either way");

    println!("10 000-service table (synth::table(10 000, 100)), 64-bit native, bytes allocated:");
    println!("  JSON                           {}", mb(json_bytes));
    println!("  peak while parsing (JSON held) {}", mb(parse_peak - zero));
    println!("  parsed table (RawTable)        {} in {raw_blocks} blocks", mb(raw_bytes));
    println!("  peak while compiling           {}", mb(compile_peak - zero));
    println!("  compiled table (Table)         {} in {table_blocks} blocks", mb(table_bytes));
    println!("  peak of from_companion_vec     {}", mb(filter_peak - zero));
    assert!(table_bytes < json_bytes, "compiled table {table_bytes} bytes, JSON {json_bytes}");
}
