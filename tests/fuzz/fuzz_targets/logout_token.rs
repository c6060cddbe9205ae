//! The back-channel logout token before its signature is checked: never a panic, and what is
//! accepted is a three-part JWS whose signed part is the token's own first two parts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = oidc_bff::logout::parse(token) {
        assert_eq!(token.matches('.').count(), 2);
        assert!(token.starts_with(parsed.signed));
        assert_eq!(parsed.signed.matches('.').count(), 1);
    }
});
