//! Bytes as lowercase hexadecimal: session ids in Redis keys and the admin command, keyed
//! hashes, the access log's session label. Written without the formatting machinery (the
//! access log writes one per request).

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` as hex digits.
pub(crate) fn push(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
}

/// `bytes` as hex digits.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    push(&mut out, bytes);
    out
}

/// Exactly `N` bytes from `2 × N` hex digits (either case); `None` for anything else.
pub(crate) fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let value = |digit: u8| char::from(digit).to_digit(16);
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = u8::try_from(value(pair[0])? << 4 | value(pair[1])?).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_anything_else_is_refused() {
        let bytes = [0x00, 0x01, 0x7f, 0x80, 0xa5, 0xff];
        let text = encode(&bytes);
        assert_eq!(text, "00017f80a5ff");
        assert_eq!(decode::<6>(&text), Some(bytes));
        assert_eq!(decode::<6>("00017F80A5FF"), Some(bytes));
        assert_eq!(decode::<6>("00017f80a5f"), None);
        assert_eq!(decode::<6>("00017f80a5fg"), None);
        assert_eq!(decode::<6>("+0017f80a5ff"), None);
        assert_eq!(decode::<2>("é0"), None);
    }
}
