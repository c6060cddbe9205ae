//! The YARP JSON loader: any text either loads or is refused with at least one message naming
//! what is wrong; loaded routes each have a cluster with at least one destination, and name
//! only policies the file defines.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match oidc_bff::proxy::yarp::parse(text, &oidc_bff::policy::Policies::default()) {
        Ok((routes, policies)) => {
            for route in &routes {
                assert!(!route.cluster.destinations().is_empty(), "{}", route.id);
                // A route's policy is one the file defines.
                if let Some(policy) = &route.access.policy {
                    assert!(policies.get(policy.name()).is_some(), "{}", route.id);
                }
            }
        }
        Err(problems) => assert!(!problems.is_empty(), "refused without a reason"),
    }
});
