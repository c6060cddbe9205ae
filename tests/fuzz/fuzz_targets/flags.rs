//! Duration and size flags: a value that parses means what it says, written back in the
//! smallest unit (`ms`, bytes) it parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc_bff::config::{parse_duration, parse_size};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(duration) = parse_duration(text) {
        let millis = duration.as_millis();
        if let Ok(millis) = u64::try_from(millis) {
            assert_eq!(parse_duration(&format!("{millis}ms")), Ok(duration), "{text:?}");
        }
    }
    if let Ok(size) = parse_size(text) {
        assert_eq!(parse_size(&size.to_string()), Ok(size), "{text:?}");
    }
});
