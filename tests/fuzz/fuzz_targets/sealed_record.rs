//! A sealed ticket record: what is sealed opens to itself under its own associated data, and a
//! record altered anywhere (or opened for another session) never opens.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc_bff::seal::MasterKey;

fuzz_target!(|data: &[u8]| {
    let sealer = MasterKey::from_bytes([9; 32]).ticket_sealer();
    let aad = b"\x01session-id-40-bytes-long-aaaaaaaaaaaaaaaaa";
    // Bytes from outside (a tampered file) never open.
    assert!(sealer.open(aad, data).is_err(), "foreign bytes opened");
    let Some((&position, plaintext)) = data.split_first() else {
        return;
    };
    let sealed = sealer.seal(aad, plaintext);
    assert_eq!(sealer.open(aad, &sealed).ok().as_deref(), Some(plaintext));
    let mut other_aad = aad.to_vec();
    other_aad[1] ^= 1;
    assert!(sealer.open(&other_aad, &sealed).is_err(), "opened for another row");
    let mut altered = sealed;
    let at = usize::from(position) % altered.len();
    altered[at] ^= 1 << (position % 8);
    assert!(sealer.open(aad, &altered).is_err(), "altered at byte {at}");
});
