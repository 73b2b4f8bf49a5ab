//! A map from names to values kept as one `Vec` sorted by name: the raw
//! table's maps (`NameMap`) in the wasm build. `BTreeMap` costs the wasm its
//! insert, search, split and drop code once per value type (~14 KB for the
//! three); this is a binary search and a `Vec`. Iteration is in name order,
//! like `BTreeMap`'s, so the compiled table is the same either way.
//!
//! A map read from JSON is built whole (`push`, then `sort`): its members
//! in the order they came, sorted once. Inserting each in place would shift
//! the tail every time: n²/2 moves for names in reverse order.

#[allow(unused_imports)]
use crate::prelude::*;

use core::borrow::Borrow;
use core::fmt;

// Steps taken (names compared, entries moved), for the tests that bound
// the work of a hostile input without timing it.
#[cfg(test)]
std::thread_local! {
    static STEPS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

/// Steps taken on this thread so far (tests only).
#[cfg(test)]
pub(crate) fn steps() -> u64 {
    STEPS.with(core::cell::Cell::get)
}

#[inline(always)]
fn step(_n: usize) {
    #[cfg(test)]
    STEPS.with(|s| s.set(s.get() + _n as u64));
}

#[derive(Clone, PartialEq, Eq)]
pub struct VecMap<V> {
    entries: Vec<(String, V)>,
}

impl<V> Default for VecMap<V> {
    fn default() -> Self {
        VecMap { entries: Vec::new() }
    }
}

impl<V> VecMap<V> {
    pub const fn new() -> Self {
        VecMap { entries: Vec::new() }
    }

    /// Adds an entry at the end, in any order: a map built this way is
    /// `sort`ed once it is whole.
    #[inline(always)] // one move of the value, into the `Vec`
    pub(crate) fn push(&mut self, key: String, value: V) {
        self.entries.push((key, value));
    }

    /// Sorts the entries `push` added: nothing to do when the names came
    /// in order (a companion's table, serialised from a `BTreeMap`), else
    /// O(n log n) steps whatever the order. A name given twice is refused:
    /// `Err` holds it.
    pub(crate) fn sort(&mut self) -> Result<(), String> {
        match sort_once(&mut Entries(&mut self.entries)) {
            Ok(()) => Ok(()),
            Err(i) => Err(self.entries.get(i).map(|e| e.0.clone()).unwrap_or_default()),
        }
    }

    /// Takes the entry with the last name out, as `BTreeMap::pop_last`.
    pub fn pop_last(&mut self) -> Option<(String, V)> {
        self.entries.pop()
    }

    /// Moves every entry of `other` to the end of this map's, in any
    /// order (like `push`: `sort` once whole), as `BTreeMap::append` moves
    /// them into its own.
    pub fn append(&mut self, other: &mut Self) {
        self.entries.append(&mut other.entries);
    }

    /// Gives back spare capacity: a parsed table keeps its maps until it is
    /// compiled (and a wasm VM keeps its peak).
    pub fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
    }

    /// Generic over the key's borrowed form like `BTreeMap`'s, so callers
    /// read the same with either map (`NameMap`).
    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        String: Borrow<Q>,
    {
        self.entries.binary_search_by(|(k, _)| {
            step(1);
            k.borrow().cmp(key)
        })
    }

    /// Inserts or replaces; returns the value replaced. Names that come in
    /// order append; any other costs a shift of the entries after it (for
    /// many names, `push` them and `sort` once).
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        let in_order = match self.entries.last() {
            Some((last, _)) => last.as_str() < key.as_str(),
            None => true,
        };
        if in_order {
            self.entries.push((key, value));
            return None;
        }
        match self.find(key.as_str()) {
            Ok(i) => self.entries.get_mut(i).map(|e| core::mem::replace(&mut e.1, value)),
            Err(i) => {
                step(self.entries.len() - i);
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        String: Borrow<Q>,
    {
        let i = self.find(key).ok()?;
        Some(self.entries.remove(i).1)
    }

    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        String: Borrow<Q>,
    {
        let i = self.find(key).ok()?;
        self.entries.get(i).map(|(_, v)| v)
    }

    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        String: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// In name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }
}

impl<'a, V> IntoIterator for &'a VecMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = core::iter::Map<core::slice::Iter<'a, (String, V)>, fn(&'a (String, V)) -> (&'a String, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

impl<V> IntoIterator for VecMap<V> {
    type Item = (String, V);
    type IntoIter = alloc::vec::IntoIter<(String, V)>;

    /// In name order.
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

/// Sorted once; of a name given twice the last stays, as in `BTreeMap`.
/// (std's stable sort: for tests and the companion's conversions, not in
/// the wasm, which reads with `push` and `sort`.)
impl<V> FromIterator<(String, V)> for VecMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let mut all: Vec<(String, V)> = iter.into_iter().collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut entries: Vec<(String, V)> = Vec::with_capacity(all.len());
        for entry in all {
            match entries.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => entries.push(entry),
            }
        }
        VecMap { entries }
    }
}

/// What `heap_sort` orders, by index: behind `dyn`, so the sort is one
/// copy in the wasm whatever the element type.
pub(crate) trait Sortable {
    fn count(&self) -> usize;
    fn less(&self, i: usize, j: usize) -> bool;
    /// Only with `i < j` (a parent before its child, the root before the
    /// heap's end).
    fn swap_up(&mut self, i: usize, j: usize);
}

/// `v[i]` and `v[j]` swapped, `i < j`; no panic path.
pub(crate) fn swap_up<T>(v: &mut [T], i: usize, j: usize) {
    if let Some((first, rest)) = v.get_mut(i..=j).and_then(|s| s.split_first_mut()) {
        if let Some(last) = rest.last_mut() {
            core::mem::swap(first, last);
        }
    }
}

fn less(v: &dyn Sortable, i: usize, j: usize) -> bool {
    step(1);
    v.less(i, j)
}

/// A map's entries as `Sortable`: a borrow, so nothing to drop behind `dyn`.
struct Entries<'e, V>(&'e mut [(String, V)]);

impl<V> Sortable for Entries<'_, V> {
    fn count(&self) -> usize {
        self.0.len()
    }

    fn less(&self, i: usize, j: usize) -> bool {
        match (self.0.get(i), self.0.get(j)) {
            (Some(a), Some(b)) => a.0 < b.0,
            _ => false,
        }
    }

    fn swap_up(&mut self, i: usize, j: usize) {
        step(1);
        swap_up(self.0, i, j);
    }
}

/// Sorts unless already strictly increasing; `Err` holds the index of an
/// element equal to the next one (a name given twice).
fn sort_once(v: &mut dyn Sortable) -> Result<(), usize> {
    if first_unordered(v).is_some() {
        heap_sort(v);
        // Sorted: a pair out of order now is two equal elements.
        if let Some(i) = first_unordered(v) {
            return Err(i);
        }
    }
    Ok(())
}

/// The first `i` not below the next element; `None` when the elements
/// strictly increase.
fn first_unordered(v: &dyn Sortable) -> Option<usize> {
    (1..v.count()).find(|&i| !less(v, i - 1, i)).map(|i| i - 1)
}

/// Heapsort: O(n log n) compares and swaps whatever the order, in place.
/// Hand-written: std's sort is kilobytes of wasm per instance.
pub(crate) fn heap_sort(v: &mut dyn Sortable) {
    fn sift_down(v: &mut dyn Sortable, mut root: usize, end: usize) {
        loop {
            let mut child = 2 * root + 1;
            if child >= end {
                return;
            }
            if child + 1 < end && less(v, child, child + 1) {
                child += 1;
            }
            if !less(v, root, child) {
                return;
            }
            v.swap_up(root, child);
            root = child;
        }
    }
    let n = v.count();
    for root in (0..n / 2).rev() {
        sift_down(v, root, n);
    }
    for end in (1..n).rev() {
        v.swap_up(0, end);
        sift_down(v, 0, end);
    }
}

/// As a JSON object in name order, as serde writes a `BTreeMap` (the
/// companion's and the tests' serialised tables read the same either way).
#[cfg(feature = "serde")]
impl<V: serde::Serialize> serde::Serialize for VecMap<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<V: fmt::Debug> fmt::Debug for VecMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::VecMap;
    use alloc::collections::BTreeMap;

    /// Every operation against `BTreeMap`, in key orders that append, insert
    /// in the middle and replace.
    #[test]
    fn behaves_like_btree_map() {
        let orders: &[&[&str]] = &[
            &[],
            &["a", "b", "c"],
            &["c", "b", "a"],
            &["b", "a", "c", "a", "b"],
            &["m", "a", "z", "m", "", "zz", "aa"],
        ];
        for keys in orders {
            let (mut ours, mut std) = (VecMap::new(), BTreeMap::new());
            for (i, k) in keys.iter().enumerate() {
                assert_eq!(ours.insert(k.to_string(), i), std.insert(k.to_string(), i), "{keys:?} at {k}");
            }
            assert_eq!(ours.len(), std.len(), "{keys:?}");
            assert_eq!(ours.is_empty(), std.is_empty(), "{keys:?}");
            assert!(ours.iter().eq(std.iter()), "{keys:?}");
            assert!((&ours).into_iter().eq(&std), "{keys:?}");
            assert!(ours.keys().eq(std.keys()), "{keys:?}");
            assert!(ours.values().eq(std.values()), "{keys:?}");
            for probe in ["", "a", "b", "c", "m", "q", "zz", "zzz"] {
                assert_eq!(ours.get(probe), std.get(probe), "{keys:?} get {probe}");
                assert_eq!(ours.contains_key(probe), std.contains_key(probe), "{keys:?} contains {probe}");
            }
            let collected: VecMap<usize> = keys.iter().enumerate().map(|(i, k)| (k.to_string(), i)).collect();
            assert!(collected.iter().eq(std.iter()), "{keys:?} collected");
            // As the reader builds a map: pushed in any order, sorted once;
            // a name given twice refused.
            let mut pushed = VecMap::new();
            for (i, k) in keys.iter().enumerate() {
                pushed.push(k.to_string(), i);
            }
            let twice = keys.iter().enumerate().find(|(i, k)| keys[..*i].contains(k));
            match twice {
                None => {
                    assert_eq!(pushed.sort(), Ok(()), "{keys:?}");
                    assert!(pushed.iter().eq(std.iter()), "{keys:?} pushed and sorted");
                }
                Some(_) => assert!(pushed.sort().is_err(), "{keys:?}"),
            }
            assert_eq!(format!("{ours:?}"), format!("{std:?}"), "{keys:?}");
        }
    }

    /// `append` then `sort` makes what `BTreeMap::append` makes of two
    /// maps with no name in common (and `pop_last` takes what it takes); a
    /// name in both is refused by the sort.
    #[test]
    fn append_sort_and_pop_last_are_btree_maps() {
        let (mut ours, mut std) = (VecMap::new(), BTreeMap::new());
        let (mut more, mut std_more) = (VecMap::new(), BTreeMap::new());
        for (i, k) in ["m", "c", "x"].iter().enumerate() {
            ours.insert(k.to_string(), i);
            std.insert(k.to_string(), i);
        }
        for (i, k) in ["a", "q", "b"].iter().enumerate() {
            more.insert(k.to_string(), 10 + i);
            std_more.insert(k.to_string(), 10 + i);
        }
        ours.append(&mut more);
        std.append(&mut std_more);
        assert!(more.is_empty());
        assert_eq!(ours.sort(), Ok(()));
        assert!(ours.iter().eq(std.iter()));
        assert_eq!(ours.pop_last(), std.pop_last());
        assert!(ours.iter().eq(std.iter()));
        let mut twice = VecMap::new();
        twice.insert("c".to_owned(), 0);
        ours.append(&mut twice);
        assert_eq!(ours.sort(), Err("c".to_owned()));
    }

    /// The sort against `BTreeMap` on shuffled names of every length up to
    /// 300, and the name a duplicate is reported by.
    #[test]
    fn sort_orders_any_permutation() {
        let mut seed: u64 = 7;
        for n in 0..300usize {
            let mut names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
            for i in (1..names.len()).rev() {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                names.swap(i, (seed >> 33) as usize % (i + 1));
            }
            let mut map = VecMap::new();
            let mut std = BTreeMap::new();
            for (i, name) in names.iter().enumerate() {
                map.push(name.clone(), i);
                std.insert(name.clone(), i);
            }
            assert_eq!(map.sort(), Ok(()), "{n}");
            assert!(map.iter().eq(std.iter()), "{n}");
        }
        let mut map = VecMap::new();
        for name in ["c", "b", "x", "b", "a"] {
            map.push(name.to_owned(), ());
        }
        assert_eq!(map.sort(), Err("b".to_owned()));
    }
}
