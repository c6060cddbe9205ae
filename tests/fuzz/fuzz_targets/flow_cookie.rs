//! The sealed login-flow cookie: arbitrary cookie values open to nothing, and a real cookie
//! altered at any byte opens to nothing either (never to another login).
#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc_bff::flow::{PendingLogin, PendingLogins};
use oidc_bff::seal::MasterKey;

fuzz_target!(|data: &[u8]| {
    let sealer = MasterKey::from_bytes([7; 32]).flow_sealer();
    let now = 1_000;
    if let Ok(text) = std::str::from_utf8(data) {
        let found = PendingLogins::from_cookies(&sealer, std::iter::once(text), now);
        assert!(found.is_empty(), "a cookie not sealed by the gateway opened");
    }
    let Some((&position, rest)) = data.split_first() else {
        return;
    };
    let return_path = format!("/{}", String::from_utf8_lossy(rest));
    let mut logins = PendingLogins::default();
    logins.push(PendingLogin::start(return_path, now));
    let Some(cookie) = logins.to_cookie(&sealer) else {
        return;
    };
    let opened = PendingLogins::from_cookies(&sealer, std::iter::once(cookie.as_str()), now);
    assert_eq!(opened, logins, "a cookie the gateway wrote did not open");
    let mut altered = cookie.into_bytes();
    let at = usize::from(position) % altered.len();
    altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
    if let Ok(altered) = String::from_utf8(altered) {
        let opened = PendingLogins::from_cookies(&sealer, std::iter::once(altered.as_str()), now);
        assert!(
            opened.is_empty() || opened == logins,
            "an altered cookie opened to another login"
        );
    }
});
