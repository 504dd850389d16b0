//! [`CardFingerprint`]: the hash a payment carries in place of its card.
//!
//! Every payment has one, and the common ones are 32 hex digits (a 128-bit hash): one
//! character too many for [`SmolStr`]'s inline 23 bytes, so each decoded payment cost a
//! heap allocation and its free (about 4 % of the pipeline thread's time on the peers'
//! 10 M input, docs/benchmarks.md). Up to [`CardFingerprint::INLINE`] bytes are kept in
//! the value itself; longer ones (a SHA-256 in hex, 64 digits) go to the heap as
//! before. Which of the two holds a text depends on its length alone, so equality,
//! ordering and hashing are those of the text.
use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use arrayvec::ArrayString;
use smol_str::SmolStr;

/// A card's fingerprint, as text. [`crate::decode`] accepts only lowercase hex of 16 to
/// 128 digits here, never a card number; constructing one by hand does not check.
#[derive(Clone)]
pub struct CardFingerprint(Repr);

#[derive(Clone)]
enum Repr {
    Inline(ArrayString<{ CardFingerprint::INLINE }>),
    Heap(SmolStr),
}

impl CardFingerprint {
    /// The longest text kept inline, in bytes.
    pub const INLINE: usize = 32;

    pub fn new(text: &str) -> CardFingerprint {
        CardFingerprint(match ArrayString::from(text) {
            Ok(inline) => Repr::Inline(inline),
            Err(_) => Repr::Heap(SmolStr::new(text)),
        })
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline(s) => s.as_str(),
            Repr::Heap(s) => s.as_str(),
        }
    }
}

impl Deref for CardFingerprint {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for CardFingerprint {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for CardFingerprint {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for CardFingerprint {
    fn from(text: &str) -> CardFingerprint {
        CardFingerprint::new(text)
    }
}

impl From<String> for CardFingerprint {
    fn from(text: String) -> CardFingerprint {
        CardFingerprint::new(&text)
    }
}

impl PartialEq for CardFingerprint {
    fn eq(&self, other: &CardFingerprint) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for CardFingerprint {}

impl PartialEq<str> for CardFingerprint {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for CardFingerprint {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialOrd for CardFingerprint {
    fn partial_cmp(&self, other: &CardFingerprint) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CardFingerprint {
    fn cmp(&self, other: &CardFingerprint) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// As the text's, so a map keyed by fingerprints can be asked with a `&str`.
impl Hash for CardFingerprint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Debug for CardFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for CardFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;
    use std::collections::HashMap;

    fn hash_of<T: Hash + ?Sized>(v: &T) -> u64 {
        let mut h = DefaultHasher::new();
        v.hash(&mut h);
        h.finish()
    }

    #[test]
    fn up_to_32_bytes_inline_longer_on_the_heap_same_text_either_way() {
        for len in [0, 16, 23, 24, 31, 32, 33, 64, 128] {
            let text: String = "0123456789abcdef".chars().cycle().take(len).collect();
            let f = CardFingerprint::new(&text);
            assert_eq!(f.as_str(), text);
            assert_eq!(&*f, text.as_str());
            assert_eq!(
                matches!(f.0, Repr::Inline(_)),
                len <= CardFingerprint::INLINE,
                "{len} bytes"
            );
            assert_eq!(f, f.clone());
            assert_eq!(hash_of(&f), hash_of(text.as_str()), "{len} bytes");
            assert_eq!(format!("{f}"), text);
            assert_eq!(format!("{f:?}"), format!("{text:?}"));
        }
    }

    #[test]
    fn equality_order_and_lookup_are_the_texts() {
        let short = CardFingerprint::new(&"a".repeat(32));
        let long = CardFingerprint::new(&"a".repeat(33));
        assert_ne!(short, long);
        assert!(short < long);
        assert_eq!(short, "a".repeat(32).as_str());
        let mut by_card = HashMap::new();
        by_card.insert(long.clone(), 1);
        by_card.insert(short.clone(), 2);
        assert_eq!(by_card.get("a".repeat(33).as_str()), Some(&1));
        assert_eq!(by_card.get("a".repeat(32).as_str()), Some(&2));
    }
}
