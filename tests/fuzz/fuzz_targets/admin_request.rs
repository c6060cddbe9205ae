//! The admin socket's request line: a request that parses writes back to JSON that parses to
//! the same request (nothing is read differently the second time).
#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc_bff::admin::AdminRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<AdminRequest>(data) else {
        return;
    };
    let written = serde_json::to_string(&request).expect("serialise");
    let again: AdminRequest = serde_json::from_str(&written).expect("parse back");
    assert_eq!(again, request);
});
