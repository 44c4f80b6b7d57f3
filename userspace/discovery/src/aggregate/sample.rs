//! A capped list of example values (an unknown domain's hosts, a user's devices and
//! addresses) whose content does not depend on the order the values came in.
//!
//! A report lists at most a few examples of each. Keeping the first few seen made the list
//! depend on the order of the records, and that order is not fixed: a capture imported on
//! several threads gives its records shard by shard, a log imported in parts gives them part
//! by part. The sample keeps the values with the smallest hashes under a fixed hash instead:
//! the same values, whatever the order, and a spread over the whole set (the first names in
//! sort order would all start alike).
//!
//! The hashes are held in place and sorted: once the sample is full, a value whose hash is
//! not below the largest costs one hash and one comparison, and no read of the values
//! themselves (a cache miss per record over a large log).

use std::borrow::Borrow;
use std::hash::Hash;

use arrayvec::ArrayVec;

/// Values listed at most.
pub(super) const SAMPLE_LEN: usize = super::MAX_LISTED;

/// The fixed hash of the samples: the same in every process and thread of this program.
/// (Nothing here is a hash table an attacker could fill: a sample holds 16 values.)
const FIXED_HASH: ahash::RandomState = ahash::RandomState::with_seeds(
    0x7461_6c6c_6761_7465,
    0x6578_616d_706c_6573,
    0x0000_0000_0000_0010,
    0x0000_0000_0000_0001,
);

#[derive(Debug, Clone)]
pub(super) struct Sample<T> {
    /// Sorted; `values[i]` has hash `hashes[i]`.
    hashes: ArrayVec<u64, SAMPLE_LEN>,
    values: Vec<T>,
}

impl<T> Default for Sample<T> {
    fn default() -> Self {
        Sample {
            hashes: ArrayVec::new(),
            values: Vec::new(),
        }
    }
}

impl<T> Sample<T> {
    /// Adds `v` if its hash is among the smallest [`SAMPLE_LEN`] seen.
    pub(super) fn add<Q>(&mut self, v: &Q)
    where
        T: Borrow<Q>,
        Q: Hash + ToOwned<Owned = T> + ?Sized,
    {
        let h = FIXED_HASH.hash_one(v);
        if self.hashes.is_full() && self.hashes.last().is_some_and(|&max| h >= max) {
            return;
        }
        self.insert(h, || v.to_owned());
    }

    /// Every value of `other` (merging parts of one import).
    pub(super) fn merge(&mut self, other: &Sample<T>)
    where
        T: Clone,
    {
        for (&h, v) in other.hashes.iter().zip(&other.values) {
            if self.hashes.is_full() && self.hashes.last().is_some_and(|&max| h >= max) {
                break;
            }
            self.insert(h, || v.clone());
        }
    }

    fn insert(&mut self, h: u64, value: impl FnOnce() -> T) {
        // Equal hashes: the same value (two values that share a 64-bit hash list one).
        let Err(i) = self.hashes.binary_search(&h) else {
            return;
        };
        if self.hashes.is_full() {
            self.hashes.pop();
            self.values.pop();
        }
        self.hashes.insert(i, h);
        self.values.insert(i, value());
    }

    /// The values, sorted.
    pub(super) fn sorted(&self) -> Vec<T>
    where
        T: Clone + Ord,
    {
        let mut v = self.values.clone();
        v.sort();
        v
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.values.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any order of the same values, and any split into merged parts, gives the same sample.
    #[test]
    fn the_same_values_in_any_order_give_the_same_sample() {
        let names: Vec<String> = (0..200).map(|i| format!("host{i}.example")).collect();
        let mut forward = Sample::<String>::default();
        for n in &names {
            forward.add(n.as_str());
        }
        assert_eq!(forward.len(), SAMPLE_LEN);
        let mut backward = Sample::<String>::default();
        for n in names.iter().rev() {
            backward.add(n.as_str());
            backward.add(n.as_str());
        }
        assert_eq!(forward.sorted(), backward.sorted());
        let (mut a, mut b) = (Sample::<String>::default(), Sample::<String>::default());
        for (i, n) in names.iter().enumerate() {
            if i % 3 == 0 { &mut a } else { &mut b }.add(n.as_str());
        }
        b.merge(&a);
        assert_eq!(b.sorted(), forward.sorted());
        // A short list keeps everything.
        let mut few = Sample::<std::net::IpAddr>::default();
        for ip in ["10.0.0.2", "10.0.0.1", "10.0.0.2"] {
            few.add(&ip.parse::<std::net::IpAddr>().expect("ip"));
        }
        assert_eq!(few.len(), 2);
    }
}
