//! What a compiled rule regex holds and what matching allocates, counted by
//! a global allocator per thread.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use isogroup_core::regex::{Regex, Scratch};

struct Counting;

thread_local! {
    /// This thread's (allocations, live bytes): the test harness's other
    /// threads allocate too.
    static COUNTS: Cell<(usize, isize)> = const { Cell::new((0, 0)) };
}

fn note(allocations: usize, bytes: isize) {
    let _ = COUNTS.try_with(|c| {
        let (a, b) = c.get();
        c.set((a + allocations, b + bytes));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(1, layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(0, -(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(1, new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn counts() -> (usize, isize) {
    COUNTS.with(Cell::get)
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live bytes `f`'s result holds.
fn held<T>(f: impl FnOnce() -> T) -> (T, isize) {
    let before = counts().1;
    let value = f();
    (value, counts().1 - before)
}

#[test]
fn a_repeated_class_is_held_once() {
    // 15 ranges, 99 times: one copy of the ranges, 99 instructions naming them.
    let class: String = ('a'..='o').map(|c| format!("{c}{c}")).map(|s| format!("{}-{}", &s[..1], &s[1..])).collect();
    let pattern = format!("^(?:[{class}]){{99}}$");
    let (re, bytes) = held(|| Regex::new(&pattern).unwrap());
    assert!(re.is_match(&"b".repeat(99)));
    assert!(bytes < 2_000, "{bytes} bytes for {pattern:?}");
}

/// A VM's scratch grows to the largest program once; after that a match
/// allocates nothing.
#[test]
fn matching_with_a_scratch_allocates_nothing() {
    let small = Regex::new("^dev-[a-z]+$").unwrap();
    let large = Regex::new("(?:[a-z0-9-]{0,61}\\.){1,3}[a-z]{2,}$").unwrap();
    let value = format!("x-{}.example.com", "a".repeat(500));
    let mut scratch = Scratch::default();
    assert!(large.is_match_with(&value, &mut scratch));
    let before = counts().0;
    for _ in 0..100 {
        assert!(large.is_match_with(&value, &mut scratch));
        assert!(!small.is_match_with(&value, &mut scratch));
        assert!(small.is_match_with("dev-joe", &mut scratch));
    }
    assert_eq!(counts().0 - before, 0);
}
