//! Back-channel logout tokens (OpenID Connect Back-Channel Logout 1.0 §2.4–2.6): validation
//! and replay protection. Which sessions then end is the caller's business.
//!
//! The token arrives from the network, unauthenticated until its signature checks out, so every
//! rule here is an attack stopped: a forged or re-signed token (signature with the provider's
//! keys, asymmetric algorithms only), a token for another client or from another issuer (`aud`,
//! `iss`), an ID token passed off as a logout token (`events` required, `nonce` forbidden, a
//! `typ` other than `logout+jwt` refused), a captured token played again (its `jti` is kept in
//! the session database by the caller, so a restart forgets nothing), and JWKS refetch floods
//! (an unknown `kid` refetches at most every 10 s).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::JsonWebKey;
use openidconnect::core::{CoreJsonWebKeySet, CoreJwsSigningAlgorithm};
use serde_json::Value;

use crate::clock::Clock;
use crate::oidc::Provider;
use crate::sync::Locked;

/// The event a logout token must carry.
const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// How old a logout token may be (by `iat`), and how long its `jti` is remembered.
const MAX_AGE: u64 = 600;
/// Clock skew tolerated for `iat` in the future.
const SKEW: u64 = 300;
/// Least time between JWKS refetches caused by logout tokens.
const REFETCH_EVERY: Duration = Duration::from_secs(10);

/// Why a logout token was refused. The text is for the log; the response says only "invalid".
#[derive(Debug, thiserror::Error)]
pub enum LogoutTokenError {
    /// Not a JWS, or unreadable parts.
    #[error("malformed logout token: {0}")]
    Malformed(&'static str),
    /// No provider key verifies it.
    #[error("logout token signature is not valid")]
    Signature,
    /// A claim is missing or wrong.
    #[error("logout token claims rejected: {0}")]
    Claims(String),
    /// The provider has not been discovered yet.
    #[error("the provider is not discovered yet")]
    NotReady,
}

/// Who a valid logout token logs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutTarget {
    /// The provider session id, when given.
    pub sid: Option<String>,
    /// The subject, when given.
    pub sub: Option<String>,
}

/// A logout token that passed every check but the replay check, which needs the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedLogout {
    /// Whom it logs out.
    pub target: LogoutTarget,
    /// Its `jti`: the caller refuses a token whose `jti` it has recorded before.
    pub jti: String,
    /// When the `jti` may be forgotten (Unix seconds): the token is too old to pass by then.
    pub forget_after: u64,
}

/// Validates logout tokens.
pub struct LogoutVerifier {
    provider: Arc<Provider>,
    clock: Arc<dyn Clock>,
    last_refetch: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for LogoutVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogoutVerifier").finish_non_exhaustive()
    }
}

fn decode_json(part: &str) -> Result<serde_json::Map<String, Value>, LogoutTokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| LogoutTokenError::Malformed("part is not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(LogoutTokenError::Malformed("part is not a JSON object")),
    }
}

impl LogoutVerifier {
    /// A verifier using the provider's keys.
    pub fn new(provider: Arc<Provider>, clock: Arc<dyn Clock>) -> Self {
        Self {
            provider,
            clock,
            last_refetch: Mutex::new(None),
        }
    }

    /// Checks a logout token's signature and claims. Whether its `jti` was seen before is the
    /// caller's check ([`VerifiedLogout::jti`]).
    pub async fn verify(&self, token: &str) -> Result<VerifiedLogout, LogoutTokenError> {
        let parsed = parse(token)?;
        let (kid, alg, signed, signature) = (
            parsed.kid.as_deref(),
            &parsed.alg,
            parsed.signed.as_bytes(),
            parsed.signature.as_slice(),
        );
        let keys = self
            .provider
            .signing_keys()
            .ok_or(LogoutTokenError::NotReady)?;
        if !verify_with(&keys, kid, alg, signed, signature) {
            // Perhaps the provider rotated its keys: look again, but not on every request, since
            // anyone can send a token with an unknown kid.
            let keys = self.refetch().await.ok_or(LogoutTokenError::Signature)?;
            if !verify_with(&keys, kid, alg, signed, signature) {
                return Err(LogoutTokenError::Signature);
            }
        }
        let claims = parsed.claims;
        let target = self.check_claims(&claims)?;
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let iat = claims.get("iat").and_then(Value::as_u64).unwrap_or(0);
        let now = self.clock.unix_now();
        Ok(VerifiedLogout {
            target,
            jti,
            forget_after: iat.saturating_add(MAX_AGE).max(now.saturating_add(SKEW)),
        })
    }

    async fn refetch(&self) -> Option<CoreJsonWebKeySet> {
        {
            let mut last = self.last_refetch.locked();
            if last.is_some_and(|at| at.elapsed() < REFETCH_EVERY) {
                return None;
            }
            *last = Some(Instant::now());
        }
        self.provider.refetch_signing_keys().await.ok()
    }

    fn check_claims(
        &self,
        claims: &serde_json::Map<String, Value>,
    ) -> Result<LogoutTarget, LogoutTokenError> {
        let config = self.provider.config();
        let reject = |why: &str| Err(LogoutTokenError::Claims(why.to_owned()));
        if claims.get("iss").and_then(Value::as_str) != Some(config.issuer.as_str()) {
            return reject("iss is not the provider");
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => *aud == config.client_id,
            Some(Value::Array(auds)) => auds
                .iter()
                .any(|aud| aud.as_str() == Some(config.client_id.as_str())),
            _ => false,
        };
        if !audience_ok {
            return reject("aud does not name this client");
        }
        let now = self.clock.unix_now();
        let Some(iat) = claims.get("iat").and_then(Value::as_u64) else {
            return reject("iat missing");
        };
        if iat > now.saturating_add(SKEW) || iat.saturating_add(MAX_AGE) < now {
            return reject("iat outside the accepted window");
        }
        if claims
            .get("exp")
            .is_some_and(|exp| exp.as_u64().is_none_or(|exp| exp <= now))
        {
            return reject("expired");
        }
        let event_ok = claims
            .get("events")
            .and_then(Value::as_object)
            .and_then(|events| events.get(LOGOUT_EVENT))
            .is_some_and(Value::is_object);
        if !event_ok {
            return reject("events lacks the back-channel logout event");
        }
        if claims.contains_key("nonce") {
            return reject("a logout token must not carry a nonce");
        }
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
        };
        let target = LogoutTarget {
            sid: text("sid"),
            sub: text("sub"),
        };
        if target.sid.is_none() && target.sub.is_none() {
            return reject("neither sid nor sub");
        }
        if text("jti").is_none() {
            return reject("jti missing");
        }
        Ok(target)
    }
}

/// A logout token taken apart, before its signature is checked: nothing in it is trusted yet.
#[derive(Debug)]
pub struct ParsedToken<'a> {
    /// The signing algorithm the header names (an accepted asymmetric one).
    pub alg: CoreJwsSigningAlgorithm,
    /// The key id the header names, if any.
    pub kid: Option<String>,
    /// The signed part: `header.payload` as sent.
    pub signed: &'a str,
    /// The signature, decoded.
    pub signature: Vec<u8>,
    /// The payload's claims.
    pub claims: serde_json::Map<String, Value>,
}

/// Takes a compact JWS apart: three base64url parts, a JSON object header with an accepted
/// `alg` and, if typed, `typ: logout+jwt`, and a JSON object payload. Pure (fuzzed).
pub fn parse(token: &str) -> Result<ParsedToken<'_>, LogoutTokenError> {
    let Some([header, payload, signature]) = crate::jwt::compact_parts(token) else {
        return Err(LogoutTokenError::Malformed("not a compact JWS"));
    };
    let header_json = decode_json(header)?;
    // OpenID Back-Channel Logout 1.0 §2.4: explicit typing, when present, must say this is a
    // logout token (not an ID token or an access token signed by the same keys).
    if let Some(typ) = header_json.get("typ") {
        let typ = typ.as_str().unwrap_or_default().to_ascii_lowercase();
        if typ != "logout+jwt" && typ != "application/logout+jwt" {
            return Err(LogoutTokenError::Claims(format!(
                "typ {typ:?} is not logout+jwt"
            )));
        }
    }
    let alg: CoreJwsSigningAlgorithm = header_json
        .get("alg")
        .cloned()
        .and_then(|alg| serde_json::from_value(alg).ok())
        .ok_or(LogoutTokenError::Malformed("no usable alg"))?;
    if !crate::oidc::ACCEPTED_ALGS.contains(&alg) {
        return Err(LogoutTokenError::Signature);
    }
    let kid = header_json
        .get("kid")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| LogoutTokenError::Malformed("signature is not base64url"))?;
    let claims = decode_json(payload)?;
    Ok(ParsedToken {
        alg,
        kid,
        signed: &token[..header.len() + 1 + payload.len()],
        signature,
        claims,
    })
}

/// Whether a key of the set (the one named by `kid`, or any compatible one without a kid)
/// verifies the signature.
fn verify_with(
    keys: &CoreJsonWebKeySet,
    kid: Option<&str>,
    alg: &CoreJwsSigningAlgorithm,
    message: &[u8],
    signature: &[u8],
) -> bool {
    keys.keys()
        .iter()
        .filter(|key| match kid {
            Some(kid) => key.key_id().is_some_and(|id| id.as_str() == kid),
            None => true,
        })
        .any(|key| key.verify_signature(alg, message, signature).is_ok())
}
