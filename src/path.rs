//! The request path, normalised once before anything looks at it: the gateway's own endpoints,
//! the proxy's route matching, the path forwarded upstream and the static files all see the one
//! string [`normalize`] returns, so no two of them can read a path differently.
//!
//! Normalising (RFC 3986 §6.2.2): percent-escaped unreserved characters (`%61` → `a`, `%2E` →
//! `.`) are decoded and every other escape is written with upper-case hex digits. The result is
//! a fixed point: normalising it again gives it back.
//!
//! Attacks refused here, each with 400, before any route is chosen:
//! - dot segments, plain or encoded (`/../`, `/%2e%2e/`), which an upstream would resolve into
//!   another path than the one the gateway matched;
//! - path parameters (`/admin;/x`, `/..;/secret`): Tomcat and Jetty drop what follows `;` in a
//!   segment, so `/pub/admin;/users` would reach `/pub/admin/users` behind a route that did not
//!   match `admin`;
//! - double encoding (`%252e`): an upstream that decodes twice would see `%2e`, then `.`;
//! - encoded separators and NUL (`%2f`, `%5c`, `%00`), backslashes, control characters, empty
//!   segments (`//`), and malformed escapes (`%`, `%zz`);
//! - invalid or overlong UTF-8 (`%c0%ae`, an overlong `.`) and the characters that Unicode
//!   normalisation turns into dots or slashes (full-width `．`, `／`, the one-dot leader, …),
//!   which a Unicode-normalising upstream would read as a dot segment or a separator.
//!
//! Nothing here does I/O; the function is pure and fuzzed (`fuzz/fuzz_targets/path.rs`).

use std::borrow::Cow;

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the path must start with /")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-escape")]
    BadEscape,
    /// `%25` followed by two hex digits: an escape of an escape.
    #[error("double-encoded percent-escape")]
    DoubleEncoded,
    /// An escaped `/`, `\` or NUL, or a literal backslash.
    #[error("encoded separator or backslash")]
    Separator,
    /// A `;` (path parameters are read differently by different servers).
    #[error("path parameters (;) are not accepted")]
    Parameters,
    /// A `.`, `..` or empty segment.
    #[error("dot or empty segment")]
    DotSegment,
    /// Escapes that decode to invalid (or overlong) UTF-8.
    #[error("escapes that are not UTF-8")]
    BadUtf8,
    /// A control character, or a character that Unicode normalisation turns into a dot, slash
    /// or backslash.
    #[error("control character or dot or slash look-alike")]
    LookAlike,
}

impl PathError {
    /// The public message of the 400 answer (no request text in it).
    pub fn message(self) -> &'static str {
        match self {
            Self::NotAbsolute => "invalid path: it must start with /",
            Self::BadEscape => "invalid path: malformed percent-escape",
            Self::DoubleEncoded => "invalid path: double-encoded percent-escape",
            Self::Separator => "invalid path: encoded separator or backslash",
            Self::Parameters => "invalid path: path parameters (;) are not accepted",
            Self::DotSegment => "invalid path: dot or empty segment",
            Self::BadUtf8 => "invalid path: escapes that are not UTF-8",
            Self::LookAlike => "invalid path: control character or dot or slash look-alike",
        }
    }
}

/// Characters that NFKC normalisation maps to `.`, `/` or `\` (or to a run of dots).
const LOOK_ALIKES: [char; 9] = [
    '\u{2024}', // ONE DOT LEADER → .
    '\u{2025}', // TWO DOT LEADER → ..
    '\u{2026}', // HORIZONTAL ELLIPSIS → ...
    '\u{FE52}', // SMALL FULL STOP → .
    '\u{FF0E}', // FULLWIDTH FULL STOP → .
    '\u{FF0F}', // FULLWIDTH SOLIDUS → /
    '\u{FF3C}', // FULLWIDTH REVERSE SOLIDUS → \
    '\u{FE68}', // SMALL REVERSE SOLIDUS → \
    '\u{2215}', // DIVISION SLASH (read as / by some decoders)
];

/// Normalises a request path (the path of the request target, without the query). Borrowed when
/// the path was already normal, the usual case.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast path: plain ASCII without escapes is checked in one pass and returned as it is.
    match check_plain(path, Escapes::Decode) {
        Ok(Plain::Yes) => return Ok(Cow::Borrowed(path)),
        Ok(Plain::NeedsDecoding) => {}
        Err(error) => return Err(error),
    }
    let mut out = String::with_capacity(path.len());
    // The fully decoded bytes, to check the UTF-8 and the characters they spell.
    let mut decoded: Vec<u8> = Vec::with_capacity(path.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte != b'%' {
            // Multi-byte UTF-8 characters pass through whole: `bytes` came from a `str`.
            out.push_str(&path[index..index + utf8_width(byte)]);
            decoded.extend_from_slice(&bytes[index..index + utf8_width(byte)]);
            index += utf8_width(byte);
            continue;
        }
        let value = bytes
            .get(index + 1..index + 3)
            .and_then(|hex| Some((hex_value(hex[0])? << 4) | hex_value(hex[1])?))
            .ok_or(PathError::BadEscape)?;
        match value {
            b'/' | b'\\' | 0 => return Err(PathError::Separator),
            _ if is_unreserved(value) => out.push(char::from(value)),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(value >> 4)]));
                out.push(char::from(HEX[usize::from(value & 0xf)]));
            }
        }
        decoded.push(value);
        index += 3;
    }
    // Checked on the output, so that `%25%34%31` (which becomes `%2541`) is caught too.
    if out
        .as_bytes()
        .windows(5)
        .any(|w| w.starts_with(b"%25") && hex_value(w[3]).is_some() && hex_value(w[4]).is_some())
    {
        return Err(PathError::DoubleEncoded);
    }
    let text = std::str::from_utf8(&decoded).map_err(|_| PathError::BadUtf8)?;
    if text
        .chars()
        .any(|c| c.is_control() || LOOK_ALIKES.contains(&c))
    {
        return Err(PathError::LookAlike);
    }
    check_plain(&out, Escapes::Keep)?;
    Ok(Cow::Owned(out))
}

/// What [`check_plain`] does on a `%` or a non-ASCII byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escapes {
    /// Stop: the path needs the decoding pass.
    Decode,
    /// Go on: the decoding pass is done, what is left stays escaped.
    Keep,
}

/// What [`check_plain`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plain {
    /// The path follows every rule as it is.
    Yes,
    /// It holds escapes or non-ASCII characters (only with [`Escapes::Decode`]).
    NeedsDecoding,
}

/// The segment rules, in one pass: no empty, `.` or `..` segment (a trailing slash is allowed),
/// no `;`, no backslash, no ASCII control character.
fn check_plain(path: &str, escapes: Escapes) -> Result<Plain, PathError> {
    let bytes = path.as_bytes();
    let mut segment_start = 1;
    for (index, &byte) in bytes.iter().enumerate().skip(1) {
        match byte {
            b'/' => {
                plain_segment(&bytes[segment_start..index])?;
                segment_start = index + 1;
            }
            b'\\' => return Err(PathError::Separator),
            b';' => return Err(PathError::Parameters),
            b'%' if escapes == Escapes::Decode => return Ok(Plain::NeedsDecoding),
            0x80.. if escapes == Escapes::Decode => return Ok(Plain::NeedsDecoding),
            byte if byte.is_ascii_control() => return Err(PathError::LookAlike),
            _ => {}
        }
    }
    let last = &bytes[segment_start..];
    if !last.is_empty() {
        plain_segment(last)?;
    }
    Ok(Plain::Yes)
}

fn plain_segment(segment: &[u8]) -> Result<(), PathError> {
    match segment {
        b"" | b"." | b".." => Err(PathError::DotSegment),
        _ => Ok(()),
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3: `ALPHA / DIGIT / "-" / "." / "_" / "~"`.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// The length of the UTF-8 sequence that starts with `first` (a valid `str`'s lead byte).
fn utf8_width(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Whether `path` starts with `prefix` on a segment boundary, ignoring ASCII case (as route
/// matching does); returns what follows the prefix.
pub fn strip_prefix_ignore_case<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let head = path.get(..prefix.len())?;
    // The same case, the usual one, is a plain comparison.
    if head != prefix && !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = &path[prefix.len()..];
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Checks that `path` is an absolute local path: one leading `/`, no scheme, no `//` or `/\`
/// authority trick, no control characters.
pub fn check_local_path(path: &str) -> Result<(), String> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(format!("{path:?} must start with /"));
    }
    if matches!(bytes.get(1), Some(b'/') | Some(b'\\')) {
        return Err(format!("{path:?} must not start with // or /\\"));
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Err(format!(
            "{path:?} contains a backslash or a control character"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(
            normalize("/pub/%61dmin/users").as_deref(),
            Ok("/pub/admin/users")
        );
        assert_eq!(normalize("/a/%7euser").as_deref(), Ok("/a/~user"));
        assert_eq!(normalize("/a/b%20c").as_deref(), Ok("/a/b%20c"));
        assert_eq!(normalize("/a/%c3%a9").as_deref(), Ok("/a/%C3%A9"));
        assert_eq!(normalize("/a/100%25").as_deref(), Ok("/a/100%25"));
        assert_eq!(normalize("/a/%3b").as_deref(), Ok("/a/%3B"));
        assert!(matches!(
            normalize("/api/a/b"),
            Ok(Cow::Borrowed("/api/a/b"))
        ));
        assert_eq!(normalize("/").as_deref(), Ok("/"));
        assert_eq!(normalize("/a/").as_deref(), Ok("/a/"));
        assert_eq!(normalize("/a/x.y").as_deref(), Ok("/a/x.y"));
        assert_eq!(normalize("/a/é").as_deref(), Ok("/a/é"));
    }

    #[test]
    fn every_trick_of_the_review_is_refused() {
        let refused = [
            ("/pub/admin;/users", PathError::Parameters),
            ("/pub/..;/secret", PathError::Parameters),
            ("/api/OtherApi1/..;/..;/api/user", PathError::Parameters),
            ("/pub/%2e%2e/secret", PathError::DotSegment),
            ("/pub/%2E/secret", PathError::DotSegment),
            ("/pub/.%2e/secret", PathError::DotSegment),
            ("/pub/%252e%252e/secret", PathError::DoubleEncoded),
            ("/pub/%25%32%65", PathError::DoubleEncoded),
            ("/pub/%c0%ae%c0%ae/secret", PathError::BadUtf8),
            ("/pub/%ef%bc%8e%ef%bc%8e/secret", PathError::LookAlike),
            ("/pub/\u{ff0e}\u{ff0e}/secret", PathError::LookAlike),
            ("/pub/a\u{ff0f}b", PathError::LookAlike),
            ("/pub/\u{2025}/secret", PathError::LookAlike),
            ("/pub/%0a", PathError::LookAlike),
            ("/a/%2f", PathError::Separator),
            ("/a/%5C", PathError::Separator),
            ("/a/%00", PathError::Separator),
            ("/a\\b", PathError::Separator),
            ("/a/%", PathError::BadEscape),
            ("/a/%2", PathError::BadEscape),
            ("/a/%zz", PathError::BadEscape),
            ("/a//b", PathError::DotSegment),
            ("//a", PathError::DotSegment),
            ("/..", PathError::DotSegment),
            ("/a/.", PathError::DotSegment),
            ("", PathError::NotAbsolute),
            ("a/b", PathError::NotAbsolute),
        ];
        for (path, error) in refused {
            assert_eq!(normalize(path), Err(error), "{path:?}");
        }
    }

    #[test]
    fn the_normal_form_is_a_fixed_point() {
        for path in ["/pub/%61dmin", "/a/%c3%a9/%7E", "/a/100%25", "/x/%3b%3D"] {
            let once = normalize(path).expect("normal").into_owned();
            assert_eq!(normalize(&once).as_deref(), Ok(once.as_str()), "{path}");
        }
    }

    #[test]
    fn prefixes_are_removed_ignoring_case_on_segment_boundaries() {
        assert_eq!(
            strip_prefix_ignore_case("/API/OTHERAPI1/x", "/api/OtherApi1"),
            Some("/x")
        );
        assert_eq!(strip_prefix_ignore_case("/api/a", "/api/a"), Some(""));
        assert_eq!(strip_prefix_ignore_case("/api/ab", "/api/a"), None);
        assert_eq!(strip_prefix_ignore_case("/ap", "/api"), None);
        assert_eq!(strip_prefix_ignore_case("/é", "/\u{e9}x"), None);
    }
}
