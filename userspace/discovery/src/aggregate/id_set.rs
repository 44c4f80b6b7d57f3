//! A set of interned ids (the aggregator's small, dense numbers for users and sources).

type HashSet<T> = std::collections::HashSet<T, ahash::RandomState>;

/// Sparse sets stay hash sets until they hold this many ids.
const DENSE_FROM: usize = 256;
/// Bits a hash set spends per id, about (4 bytes of key and 1 of control, at 7/8 load).
const HASH_BITS_PER_ID: usize = 48;

/// Ids held in place before a set moves to the heap (fits in the hash set's own size).
const INLINE: usize = 12;
/// Words of the in-place bitmap: ids below `64 * BITS_WORDS` (as many bytes as `INLINE` ids).
const BITS_WORDS: usize = 6;

/// A few ids in place, then an in-place bitmap while every id is small, else a hash set
/// while it is sparse, then a bitmap once the bitmap would be no larger. Most sets are small (a source address's apps, an unknown domain's
/// users) and cost neither an allocation nor a hash; the big ones (an app's users and
/// source addresses over a large log) cost a bit test per record instead of a hash probe
/// into a table that no longer fits the cache, and never more memory than a hash set. Sets
/// of small ids that outgrow the inline list (a source address that used more than 12 of
/// the first few hundred apps) stay in place as a bitmap: no allocation, no hash, and no
/// second cache line to read per record.
#[derive(Debug, Clone)]
pub(super) enum IdSet {
    Inline { len: u8, ids: [u32; INLINE] },
    InlineBits { len: u16, bits: [u64; BITS_WORDS] },
    Sparse(HashSet<u32>),
    Dense { bits: Vec<u64>, len: usize },
}

impl Default for IdSet {
    fn default() -> Self {
        IdSet::Inline {
            len: 0,
            ids: [0; INLINE],
        }
    }
}

impl IdSet {
    pub(super) fn len(&self) -> usize {
        match self {
            IdSet::Inline { len, .. } => usize::from(*len),
            IdSet::InlineBits { len, .. } => usize::from(*len),
            IdSet::Sparse(s) => s.len(),
            IdSet::Dense { len, .. } => *len,
        }
    }

    pub(super) fn insert(&mut self, id: u32) -> bool {
        match self {
            IdSet::Inline { len, ids } => {
                let n = usize::from(*len);
                if ids.iter().take(n).any(|&x| x == id) {
                    return false;
                }
                if n < INLINE {
                    if let Some(slot) = ids.get_mut(n) {
                        *slot = id;
                        *len += 1;
                    }
                } else if ids.iter().chain([&id]).all(|&x| in_bits(x)) {
                    let mut bits = [0u64; BITS_WORDS];
                    for &x in ids.iter().chain([&id]) {
                        set_bit(&mut bits, x);
                    }
                    *self = IdSet::InlineBits {
                        len: (INLINE + 1) as u16,
                        bits,
                    };
                } else {
                    let mut set: HashSet<u32> = ids.iter().copied().collect();
                    set.insert(id);
                    *self = IdSet::Sparse(set);
                }
                true
            }
            IdSet::InlineBits { len, bits } => {
                if in_bits(id) {
                    if !set_bit(bits, id) {
                        return false;
                    }
                    *len += 1;
                } else {
                    let mut set: HashSet<u32> = bit_ids(bits).collect();
                    set.insert(id);
                    *self = IdSet::Sparse(set);
                }
                true
            }
            IdSet::Dense { bits, len } => {
                let word = (id / 64) as usize;
                if word >= bits.len() {
                    bits.resize(word + 1, 0);
                }
                let mask = 1u64 << (id % 64);
                match bits.get_mut(word) {
                    Some(w) if *w & mask == 0 => {
                        *w |= mask;
                        *len += 1;
                        true
                    }
                    _ => false,
                }
            }
            IdSet::Sparse(s) => {
                let new = s.insert(id);
                // Looked at each time the set doubles: amortised O(1).
                if new && s.len() >= DENSE_FROM && s.len().is_power_of_two() {
                    let max = s.iter().copied().max().unwrap_or(0) as usize;
                    if max < s.len() * HASH_BITS_PER_ID {
                        let mut bits = vec![0u64; max / 64 + 1];
                        for &i in s.iter() {
                            if let Some(w) = bits.get_mut((i / 64) as usize) {
                                *w |= 1u64 << (i % 64);
                            }
                        }
                        *self = IdSet::Dense { bits, len: s.len() };
                    }
                }
                new
            }
        }
    }

    pub(super) fn iter(&self) -> Box<dyn Iterator<Item = u32> + '_> {
        match self {
            IdSet::Inline { len, ids } => Box::new(ids.iter().take(usize::from(*len)).copied()),
            IdSet::InlineBits { bits, .. } => Box::new(bit_ids(bits)),
            IdSet::Sparse(s) => Box::new(s.iter().copied()),
            IdSet::Dense { bits, .. } => Box::new(bits.iter().enumerate().flat_map(|(w, &b)| {
                (0..64u32)
                    .filter(move |i| b & (1u64 << i) != 0)
                    .map(move |i| (w as u32) * 64 + i)
            })),
        }
    }
}

fn in_bits(id: u32) -> bool {
    (id as usize) < 64 * BITS_WORDS
}

/// Sets bit `id` (below `64 * BITS_WORDS`); false when it was set already.
fn set_bit(bits: &mut [u64; BITS_WORDS], id: u32) -> bool {
    let mask = 1u64 << (id % 64);
    match bits.get_mut((id / 64) as usize) {
        Some(w) if *w & mask == 0 => {
            *w |= mask;
            true
        }
        _ => false,
    }
}

fn bit_ids(bits: &[u64; BITS_WORDS]) -> impl Iterator<Item = u32> + '_ {
    bits.iter().enumerate().flat_map(|(w, &b)| {
        (0..64u32)
            .filter(move |i| b & (1u64 << i) != 0)
            .map(move |i| (w as u32) * 64 + i)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_and_dense_sets_agree_with_a_reference() {
        let mut set = IdSet::default();
        let mut reference = std::collections::BTreeSet::new();
        // Dense ids first (the set turns into a bitmap), then repeats and far ids.
        let ids = (0..5000u32)
            .map(|i| (i * 7919) % 3000)
            .chain([2999, 0, 70_000, 70_000, 64, 63]);
        for id in ids {
            assert_eq!(set.insert(id), reference.insert(id), "insert {id}");
            assert_eq!(set.len(), reference.len());
        }
        assert!(
            matches!(set, IdSet::Dense { .. }),
            "3000 dense ids make a bitmap"
        );
        let mut got: Vec<u32> = set.iter().collect();
        got.sort_unstable();
        assert_eq!(got, reference.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn small_ids_past_the_inline_list_stay_in_place() {
        let mut set = IdSet::default();
        let mut reference = std::collections::BTreeSet::new();
        for id in (0..200u32).map(|i| (i * 37) % 300).chain([0, 383, 5]) {
            assert_eq!(set.insert(id), reference.insert(id), "insert {id}");
            assert_eq!(set.len(), reference.len());
        }
        assert!(matches!(set, IdSet::InlineBits { .. }), "ids below 384");
        // A larger id moves it to the heap, with every id it held.
        assert!(set.insert(384));
        reference.insert(384);
        assert!(matches!(set, IdSet::Sparse(_)));
        let mut got: Vec<u32> = set.iter().collect();
        got.sort_unstable();
        assert_eq!(got, reference.into_iter().collect::<Vec<_>>());
        // An id too large for the bitmap when the inline list overflows: a hash set at once.
        let mut far = IdSet::default();
        for i in 0..12 {
            far.insert(i);
        }
        far.insert(10_000);
        assert!(matches!(far, IdSet::Sparse(_)));
        assert_eq!(far.len(), 13);
    }

    #[test]
    fn a_sparse_set_of_far_apart_ids_stays_a_hash_set() {
        let mut set = IdSet::default();
        for i in 0..1024u32 {
            set.insert(i * 100_000);
            if i < 12 {
                assert!(
                    matches!(set, IdSet::Inline { .. }),
                    "a few ids stay in place"
                );
            }
        }
        assert!(matches!(set, IdSet::Sparse(_)));
        assert_eq!(set.len(), 1024);
    }
}
