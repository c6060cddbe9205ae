//! Authorization policies and `/login` parameters: any `--policy` text either parses or is
//! refused with a reason; a parsed policy judges any claims without panicking, and asks for a
//! step-up only with something to ask for; `/login` passes on only checked parameters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc_bff::login_params::LoginParams;
use oidc_bff::policy::{Policy, Principal, Verdict};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // First line: the policy; second: a query; the rest: the claims.
    let mut lines = text.splitn(3, '\n');
    let policy_text = lines.next().unwrap_or_default();
    let query = lines.next().unwrap_or_default();
    let claims = lines.next().unwrap_or_default();
    let policy = match Policy::parse(policy_text) {
        Ok(policy) => Some(policy),
        Err(reason) => {
            assert!(!reason.is_empty(), "refused without a reason");
            None
        }
    };
    if let (Some(policy), Ok(serde_json::Value::Object(claims))) =
        (&policy, serde_json::from_str::<serde_json::Value>(claims))
    {
        // The granted scope: the claims' `scope` string, when they have one.
        let scope = claims.get("scope").and_then(|s| s.as_str()).map(str::to_owned);
        let principal = Principal { claims, scope };
        for now in [0, 1_700_000_000, u64::MAX] {
            if let Verdict::StepUp(step_up) = policy.check(&principal, now) {
                assert!(step_up.acr_values.is_some() || step_up.max_age.is_some());
            }
        }
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let known: Vec<&str> = policy.iter().flat_map(Policy::acr_values).collect();
    if let Ok(chosen) = LoginParams::default().select(&pairs, &known) {
        for (name, value) in chosen {
            assert!(["prompt", "login_hint", "acr_values", "max_age"].contains(&name));
            assert!(!value.chars().any(char::is_control), "{name}={value:?}");
        }
    }
});
