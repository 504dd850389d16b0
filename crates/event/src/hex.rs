//! Lowercase hex digits, the text of every id this pipeline packs: card fingerprints,
//! transaction and device ids. Packing two digits to a byte is on the hot path (a
//! card's state key per payment, an outbox row's strings), so a digit's value is one
//! table load, not a pair of range checks and a subtraction.

/// A byte's value as a lowercase hex digit (`0`–`9`, `a`–`f`), or [`NOT_HEX`].
pub const LOWER_HEX_VALUE: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = match b as u8 {
            d @ b'0'..=b'9' => d - b'0',
            d @ b'a'..=b'f' => d - b'a' + 10,
            _ => NOT_HEX,
        };
        b += 1;
    }
    t
};

/// What [`LOWER_HEX_VALUE`] holds for a byte that is not a lowercase hex digit.
pub const NOT_HEX: u8 = 0xff;

/// Whether `b` is a lowercase hex digit (`0`–`9`, `a`–`f`): two range checks without a
/// branch, so that a loop checking a whole id vectorises (a table load per byte does
/// not).
pub fn is_lower_hex(b: u8) -> bool {
    (b.wrapping_sub(b'0') < 10) | (b.wrapping_sub(b'a') < 6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lowercase_hex_digits_have_a_value() {
        for b in 0..=255u8 {
            let expected = char::from(b)
                .to_digit(16)
                .filter(|_| !b.is_ascii_uppercase())
                .map_or(NOT_HEX, |d| d as u8);
            assert_eq!(LOWER_HEX_VALUE[usize::from(b)], expected, "{b:#x}");
            assert_eq!(is_lower_hex(b), expected != NOT_HEX, "{b:#x}");
        }
    }
}
