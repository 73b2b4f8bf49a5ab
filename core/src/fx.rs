//! The Fx hash of `rustc-hash` 2 (same algorithm, same output; checked
//! against the crate in the tests), written so that no path can panic: the
//! crate reads byte chunks with `try_into().unwrap()`, whose panic path
//! links `Debug` formatting (`TryFromSliceError`, `PadAdapter`, `core::fmt`'s
//! writer) into the wasm. Not collision-resistant: keys are our own names.

use core::hash::{BuildHasher, Hasher};

#[cfg(target_pointer_width = "64")]
const K: usize = 0xf135_7aea_2e62_a9c5;
#[cfg(target_pointer_width = "32")]
const K: usize = 0x93d7_65dd;

// rustc-hash's constants (digits of pi).
const SEED1: u64 = 0x243f_6a88_85a3_08d3;
const SEED2: u64 = 0x1319_8a2e_0370_7344;
const PREVENT_TRIVIAL_ZERO_COLLAPSE: u64 = 0xa409_3822_299f_31d0;

/// `hashbrown` maps keyed by our names use it (see `prelude`).
#[derive(Clone, Copy, Default, Debug)]
pub struct FxBuildHasher;

impl BuildHasher for FxBuildHasher {
    type Hasher = FxHasher;
    fn build_hasher(&self) -> FxHasher {
        FxHasher::default()
    }
}

#[derive(Clone, Default, Debug)]
pub struct FxHasher {
    hash: usize,
}

impl FxHasher {
    fn add_to_hash(&mut self, i: usize) {
        self.hash = self.hash.wrapping_add(i).wrapping_mul(K);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.write_u64(hash_bytes(bytes));
    }

    fn write_u8(&mut self, i: u8) {
        self.add_to_hash(i as usize);
    }

    fn write_u16(&mut self, i: u16) {
        self.add_to_hash(i as usize);
    }

    fn write_u32(&mut self, i: u32) {
        self.add_to_hash(i as usize);
    }

    fn write_u64(&mut self, i: u64) {
        self.add_to_hash(i as usize);
        #[cfg(target_pointer_width = "32")]
        self.add_to_hash((i >> 32) as usize);
    }

    fn write_u128(&mut self, i: u128) {
        self.write_u64(i as u64);
        self.write_u64((i >> 64) as u64);
    }

    fn write_usize(&mut self, i: usize) {
        self.add_to_hash(i);
    }

    fn finish(&self) -> u64 {
        #[cfg(target_pointer_width = "64")]
        const ROTATE: u32 = 26;
        #[cfg(target_pointer_width = "32")]
        const ROTATE: u32 = 15;
        self.hash.rotate_left(ROTATE) as u64
    }
}

fn multiply_mix(x: u64, y: u64) -> u64 {
    if cfg!(any(
        all(target_pointer_width = "64", not(any(target_arch = "sparc64", target_arch = "wasm64"))),
        target_arch = "aarch64",
        target_arch = "x86_64",
        all(target_family = "wasm", target_feature = "wide-arithmetic"),
    )) {
        let full = u128::from(x).wrapping_mul(u128::from(y));
        (full as u64) ^ ((full >> 64) as u64)
    } else {
        let (lx, ly, hx, hy) = (x as u32, y as u32, (x >> 32) as u32, (y >> 32) as u32);
        let afull = u64::from(lx).wrapping_mul(u64::from(hy));
        let bfull = u64::from(hx).wrapping_mul(u64::from(ly));
        afull ^ bfull.rotate_right(32)
    }
}

/// rustc-hash's string hash, chunks read with `first_chunk`/`last_chunk`.
fn hash_bytes(bytes: &[u8]) -> u64 {
    let len = bytes.len();
    let (mut s0, mut s1) = (SEED1, SEED2);
    if len <= 16 {
        if let (Some(a), Some(b)) = (bytes.first_chunk::<8>(), bytes.last_chunk::<8>()) {
            s0 ^= u64::from_le_bytes(*a);
            s1 ^= u64::from_le_bytes(*b);
        } else if let (Some(a), Some(b)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
            s0 ^= u64::from(u32::from_le_bytes(*a));
            s1 ^= u64::from(u32::from_le_bytes(*b));
        } else if let (Some(&lo), Some(&mid), Some(&hi)) = (bytes.first(), bytes.get(len / 2), bytes.last()) {
            s0 ^= u64::from(lo);
            s1 ^= (u64::from(hi) << 8) | u64::from(mid);
        }
    } else {
        // The bulk leaves out the last byte, so at least one byte is left
        // for the suffix, which can overlap it.
        let mut bulk = bytes.split_last().map_or(&[][..], |(_, b)| b);
        while let Some((chunk, rest)) = bulk.split_first_chunk::<16>() {
            let v = u128::from_le_bytes(*chunk);
            let t = multiply_mix(s0 ^ v as u64, PREVENT_TRIVIAL_ZERO_COLLAPSE ^ (v >> 64) as u64);
            s0 = s1;
            s1 = t;
            bulk = rest;
        }
        if let Some(suffix) = bytes.last_chunk::<16>() {
            let v = u128::from_le_bytes(*suffix);
            s0 ^= v as u64;
            s1 ^= (v >> 64) as u64;
        }
    }
    multiply_mix(s0, s1) ^ (len as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec::Vec;

    /// Every length up to 70 (each branch and chunk boundary), two fills.
    #[test]
    fn same_hashes_as_rustc_hash() {
        for len in 0..70usize {
            for seed in [0u8, 0x9b] {
                let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
                let mut ours = FxHasher::default();
                let mut theirs = rustc_hash::FxHasher::default();
                ours.write(&bytes);
                theirs.write(&bytes);
                assert_eq!(ours.finish(), theirs.finish(), "write, len {len}");
                let key: Box<[u8]> = bytes.into();
                assert_eq!(
                    FxBuildHasher.hash_one(&key),
                    rustc_hash::FxBuildHasher.hash_one(&key),
                    "hash_one, len {len}"
                );
            }
        }
        for n in [0u64, 1, 0xffff_ffff, u64::MAX] {
            let (mut ours, mut theirs) = (FxHasher::default(), rustc_hash::FxHasher::default());
            ours.write_u64(n);
            theirs.write_u64(n);
            ours.write_u32(n as u32);
            theirs.write_u32(n as u32);
            ours.write_usize(n as usize);
            theirs.write_usize(n as usize);
            ours.write_u128(u128::from(n) << 3);
            theirs.write_u128(u128::from(n) << 3);
            assert_eq!(ours.finish(), theirs.finish(), "integers, {n}");
        }
    }
}
