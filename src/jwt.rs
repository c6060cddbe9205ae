//! Compact JWS/JWT text, taken apart without verifying anything: the one place that splits a
//! token into its parts and reads its claims. Signatures are checked by openidconnect (ID
//! tokens) and [`crate::logout`] (logout tokens); what is read here unverified is used only to
//! end something sooner (an expiry) or from a token the provider just handed over on a
//! back-channel (TLS) answer.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The header, payload and signature of a compact JWS, if `token` has exactly three parts.
pub(crate) fn compact_parts(token: &str) -> Option<[&str; 3]> {
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    parts
        .next()
        .is_none()
        .then_some([header, payload, signature])
}

/// The claims of a compact JWS/JWT, read without checking anything.
pub(crate) fn unverified_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let [_, payload, _] = compact_parts(token)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The `exp` claim of a compact JWS/JWT (seconds since the epoch), read without checking
/// anything.
pub(crate) fn unverified_exp(token: &str) -> Option<u64> {
    unverified_claims(token)?.get("exp")?.as_u64()
}

/// Claims that describe the protocol rather than the user; left out of `/api/user`.
const PROTOCOL_CLAIMS: &[&str] = &[
    "iss",
    "aud",
    "exp",
    "iat",
    "nbf",
    "nonce",
    "at_hash",
    "c_hash",
    "s_hash",
    "azp",
    "jti",
    "auth_time",
    "acr",
    "amr",
    "sid",
    "session_state",
    "typ",
    "sub",
];

/// The user claims of an ID token that was validated when it was stored: everything but the
/// protocol claims (`iss`, `aud`, `nonce`, hashes, times…), with `sub` first. Empty when the
/// token does not decode.
pub(crate) fn user_claims(id_token: &str) -> serde_json::Map<String, serde_json::Value> {
    user_claims_of(unverified_claims(id_token).unwrap_or_default())
}

/// [`user_claims`] of claims already taken out of their token.
pub(crate) fn user_claims_of(
    payload: serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut user = serde_json::Map::new();
    if let Some(sub) = payload.get("sub") {
        user.insert("sub".into(), sub.clone());
    }
    for (name, value) in payload {
        if !PROTOCOL_CLAIMS.contains(&name.as_str()) {
            user.insert(name, value);
        }
    }
    user
}

/// A token with `payload` as its claims and no real signature, for tests.
#[cfg(test)]
pub(crate) fn unsigned(payload: &str) -> String {
    format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#),
        URL_SAFE_NO_PAD.encode(payload)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        unsigned(payload)
    }

    #[test]
    fn a_token_has_exactly_three_parts() {
        assert_eq!(compact_parts("a.b.c"), Some(["a", "b", "c"]));
        assert_eq!(compact_parts("a.b"), None);
        assert_eq!(compact_parts("a.b.c.d"), None);
        assert_eq!(compact_parts("opaque-token"), None);
    }

    #[test]
    fn claims_and_exp_are_read_from_the_payload() {
        assert_eq!(unverified_exp(&jwt(r#"{"exp":5,"sub":"a"}"#)), Some(5));
        assert_eq!(unverified_exp(&jwt(r#"{"sub":"a"}"#)), None);
        assert_eq!(unverified_exp(&jwt(r#"{"exp":"soon"}"#)), None);
        assert!(unverified_claims(&jwt("not json")).is_none());
        assert!(unverified_claims("a.b.c.d").is_none());
    }
}
