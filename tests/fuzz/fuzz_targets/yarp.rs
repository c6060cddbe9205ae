//! The YARP JSON loader: any text either loads or is refused with at least one message naming
//! what is wrong; loaded routes each have a cluster with at least one destination.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match oidc_bff::proxy::yarp::parse(text) {
        Ok(routes) => {
            for route in &routes {
                assert!(!route.cluster.destinations().is_empty(), "{}", route.id);
            }
        }
        Err(problems) => assert!(!problems.is_empty(), "refused without a reason"),
    }
});
