//! Tokens of the gateway itself (client credentials), for routes whose upstream gets the
//! gateway's token rather than a user's (`token=client`, `token=user-or-client` without a
//! session).
//!
//! One token per scope set (and resource, for audience-bound ones), shared by every caller, never stored in a user's ticket and never
//! written to disk. A token is fetched on first use and again once it is within the refresh
//! skew of its expiry; one fetch at a time per scope set (the callers that arrive meanwhile
//! wait for it). When a fetch fails the token in hand is used while it is still valid; the
//! next attempt waits [`RETRY_AFTER`], so a provider that refuses is not asked on every call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::HeaderValue;

use crate::clock::Clock;
use crate::oidc::{OidcError, Provider};
use crate::sync::{Locked, RwLocked};

/// How long after a failed fetch the next one may start.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How long a token whose expiry the provider did not say is used before it is fetched again.
const UNKNOWN_EXPIRY_REUSE: u64 = 300;

/// Why no client token could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientTokenError {
    /// The provider could not be asked now (down, slow, not discovered yet).
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider refused the grant (`invalid_scope`, `unauthorized_client`, …): a setting
    /// at the provider or here is wrong.
    #[error("the provider refused the client-credentials grant: {0}")]
    Refused(String),
}

impl From<OidcError> for ClientTokenError {
    fn from(error: OidcError) -> Self {
        match error {
            OidcError::Refused { code } => Self::Refused(code),
            OidcError::BadResponse(detail) => Self::Refused(detail),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// A token in hand.
#[derive(Debug, Clone)]
struct Held {
    bearer: HeaderValue,
    /// When it stops working, if known.
    expires_at: Option<u64>,
    /// When to fetch the next one: the refresh skew before expiry.
    renew_at: u64,
}

/// One scope set's token and its single flight.
#[derive(Debug, Default)]
struct Slot {
    held: RwLock<Option<Held>>,
    /// The last failure and when the next attempt may start.
    failure: Mutex<Option<(ClientTokenError, u64)>>,
    flight: tokio::sync::Mutex<()>,
}

/// The gateway's client-credentials tokens, by scope set.
pub(crate) struct ClientTokens {
    provider: Arc<Provider>,
    clock: Arc<dyn Clock>,
    refresh_skew: Duration,
    /// `--client-scopes`: the scope of routes that name none.
    default_scope: String,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl std::fmt::Debug for ClientTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTokens")
            .field("default_scope", &self.default_scope)
            .finish_non_exhaustive()
    }
}

/// A scope set's key: its scopes sorted, without repeats, space-separated.
fn scope_key(scope: &str) -> String {
    let mut scopes: Vec<&str> = scope.split_ascii_whitespace().collect();
    scopes.sort_unstable();
    scopes.dedup();
    scopes.join(" ")
}

impl ClientTokens {
    /// Tokens from `provider`, renewed `refresh_skew` before they expire; `default_scope` for
    /// routes that name no scope of their own.
    pub(crate) fn new(
        provider: Arc<Provider>,
        clock: Arc<dyn Clock>,
        refresh_skew: Duration,
        default_scope: &str,
    ) -> Self {
        Self {
            provider,
            clock,
            refresh_skew,
            default_scope: scope_key(default_scope),
            slots: Mutex::default(),
        }
    }

    /// The `Authorization` value for a route with `scope` (`None`: `--client-scopes`) and,
    /// when it names one, the token's audience `resource`.
    pub(crate) async fn bearer(
        &self,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> Result<HeaderValue, ClientTokenError> {
        let scope = scope.map_or_else(|| self.default_scope.clone(), scope_key);
        // Neither a scope nor a resource indicator holds a control character.
        let key = match resource {
            Some(resource) => format!("{scope}\n{resource}"),
            None => scope.clone(),
        };
        let slot = {
            let mut slots = self.slots.locked();
            // The keys come from the configuration (routes' scopes), never from requests.
            Arc::clone(slots.entry(key.clone()).or_default())
        };
        let now = self.clock.unix_now();
        if let Some(held) = slot
            .held
            .read_locked()
            .as_ref()
            .filter(|h| now < h.renew_at)
        {
            return Ok(held.bearer.clone());
        }
        let _flight = slot.flight.lock().await;
        // Whoever held the flight before may have fetched one.
        let now = self.clock.unix_now();
        let in_hand = slot.held.read_locked().clone();
        if let Some(held) = in_hand.as_ref().filter(|h| now < h.renew_at) {
            return Ok(held.bearer.clone());
        }
        let still_valid = in_hand.filter(|held| held.expires_at.is_none_or(|exp| now < exp));
        let recent_failure = slot
            .failure
            .locked()
            .clone()
            .filter(|(_, retry_at)| now < *retry_at);
        if let Some((error, _)) = recent_failure {
            return still_valid.map(|held| held.bearer).ok_or(error);
        }
        match self.provider.client_credentials(&scope, resource).await {
            Ok(token) => {
                let now = self.clock.unix_now();
                let renew_at = match token.expires_at {
                    Some(expiry) => expiry.saturating_sub(self.refresh_skew.as_secs()).max(now),
                    None => now.saturating_add(UNKNOWN_EXPIRY_REUSE),
                };
                let bearer = token.access_token.bearer();
                *slot.held.write_locked() = Some(Held {
                    bearer: bearer.clone(),
                    expires_at: token.expires_at,
                    renew_at,
                });
                *slot.failure.locked() = None;
                tracing::debug!(%scope, resource = resource.unwrap_or("-"), "client-credentials token fetched");
                Ok(bearer)
            }
            Err(error) => {
                let error = ClientTokenError::from(error);
                tracing::warn!(
                    %scope,
                    resource = resource.unwrap_or("-"),
                    %error,
                    retry_in_s = RETRY_AFTER.as_secs(),
                    "client-credentials token not obtained"
                );
                let retry_at = self.clock.unix_now().saturating_add(RETRY_AFTER.as_secs());
                *slot.failure.locked() = Some((error.clone(), retry_at));
                still_valid.map(|held| held.bearer).ok_or(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::scope_key;

    #[test]
    fn scope_sets_are_keyed_whatever_their_order_or_repeats() {
        assert_eq!(scope_key("b a  b"), "a b");
        assert_eq!(scope_key("a b"), scope_key("b a"));
        assert_eq!(scope_key(""), "");
    }
}
