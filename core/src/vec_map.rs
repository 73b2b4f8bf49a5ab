//! A map from names to values kept as one `Vec` sorted by name: the raw
//! table's maps (`NameMap`) in the wasm build. `BTreeMap` costs the wasm its
//! insert, search, split and drop code once per value type (~14 KB for the
//! three); this is a binary search and a `Vec`. Iteration is in name order,
//! like `BTreeMap`'s, so the compiled table is the same either way.

#[allow(unused_imports)]
use crate::prelude::*;

use core::borrow::Borrow;
use core::fmt;

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
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    /// Inserts or replaces; returns the value replaced. Names that come in
    /// order (a companion's table, serialised from a `BTreeMap`) append.
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

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<V> FromIterator<(String, V)> for VecMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let mut map = VecMap::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
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
            assert_eq!(format!("{ours:?}"), format!("{std:?}"), "{keys:?}");
        }
    }
}
