//! The Cookie header and the session key in it: values never contain `;`, and a value that
//! parses as a session key encodes back to itself (one key, one cookie).
#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc_bff::cookies::values;
use oidc_bff::session::SessionKey;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.append(http::header::COOKIE, value);
    for found in values(&headers, "__Host-bff") {
        assert!(!found.contains(';'));
        if let Some(key) = SessionKey::parse(found) {
            assert_eq!(key.encode(), found, "two cookies for one key");
        }
    }
});
