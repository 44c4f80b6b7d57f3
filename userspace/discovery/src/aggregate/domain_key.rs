//! The key of the unknown-domain table: a registrable domain, held in place when it is short.
//!
//! Most registrable domains are under 24 bytes. A `String` key keeps its bytes on the heap, so
//! every lookup that lands on its bucket reads one more cache line, somewhere else in memory,
//! to compare them; over a large log with tens of thousands of unknown domains that line is
//! rarely cached. A short key is compared where the bucket already is.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use arrayvec::ArrayString;

/// Names this long or shorter are kept in place.
const INLINE: usize = 23;

#[derive(Debug, Clone)]
pub(super) enum DomainKey {
    Inline(ArrayString<INLINE>),
    Heap(Box<str>),
}

impl DomainKey {
    pub(super) fn new(s: &str) -> DomainKey {
        match ArrayString::from(s) {
            Ok(a) => DomainKey::Inline(a),
            Err(_) => DomainKey::Heap(s.into()),
        }
    }

    pub(super) fn as_str(&self) -> &str {
        match self {
            DomainKey::Inline(a) => a.as_str(),
            DomainKey::Heap(b) => b,
        }
    }
}

// Hash and equality are the string's, so that a `&str` finds its key (`Borrow<str>`).
impl Hash for DomainKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq for DomainKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for DomainKey {}

impl Borrow<str> for DomainKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn short_and_long_names_are_found_by_their_text() {
        let long = "a-registrable-domain-longer-than-the-inline-part.example";
        let mut m: HashMap<DomainKey, u32> = HashMap::new();
        m.insert(DomainKey::new("example.com"), 1);
        m.insert(DomainKey::new(long), 2);
        m.insert(DomainKey::new(""), 3);
        m.insert(DomainKey::new("abcdefghijklmnopqrstuvw"), 4); // exactly INLINE bytes
        assert!(matches!(
            DomainKey::new("example.com"),
            DomainKey::Inline(_)
        ));
        assert!(matches!(DomainKey::new(long), DomainKey::Heap(_)));
        assert_eq!(m.get("example.com"), Some(&1));
        assert_eq!(m.get(long), Some(&2));
        assert_eq!(m.get(""), Some(&3));
        assert_eq!(m.get("abcdefghijklmnopqrstuvw"), Some(&4));
        assert_eq!(m.get("example.co"), None);
        assert_eq!(DomainKey::new(long).as_str(), long);
        // A multi-byte name that does not fit is kept whole, not cut mid-character.
        let wide = "ü".repeat(20);
        assert_eq!(DomainKey::new(&wide).as_str(), wide);
    }
}
