//! On-demand refresh of a session's access token, one flight per session.
//!
//! With rotating refresh tokens, two parallel refreshes of one session would present the same
//! refresh token twice, and providers answer that by revoking the whole grant. So whoever asks
//! first refreshes; everyone else waits on the same per-session lock and then reads the ticket
//! it stored.
//!
//! Outcomes: new tokens are stored (a rotated refresh token replaces the old one); a dead grant
//! (`invalid_grant`, `unauthorized_client`, or tokens for another subject) ends the session; a
//! provider outage keeps it, and the caller gets the old token while it is still valid.
//!
//! Load the provider cannot be made to bear: after a failed refresh a session backs off (one
//! `--refresh-interval`, then twice that, … at most five minutes), and neither its calls nor the
//! sweep try again before the step is over; meanwhile calls use the access token while it is
//! valid and get 503 after. At most [`MAX_IN_FLIGHT`] refreshes run at once, gateway-wide.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderValue;

use crate::clock::Clock;
use crate::metrics::{Metrics, RefreshOutcome, RefreshTrigger};
use crate::oidc::{Provider, RefreshError};
use crate::session::{SessionId, Ticket, expires_within};
use crate::store::StoreError;
use crate::sync::Locked;
use crate::tickets::{Activity, Session, TicketStore};

/// A session could not be made fresh.
#[derive(Debug, thiserror::Error)]
pub enum FreshnessError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The token expired and the provider could not refresh it right now.
    #[error("refresh failed for now: {0}")]
    ProviderUnavailable(String),
    /// The provider refused a token for this resource (`invalid_target`), or the session
    /// cannot ask for one; the session and its other routes go on.
    #[error("no token for resource {resource}: {reason}")]
    ResourceRefused {
        /// The resource indicator.
        resource: String,
        /// Why.
        reason: String,
    },
}

/// How long a resource the provider refused is answered 502 without asking again: the refusal
/// is about the resource or the client's registration, not one session.
const REFUSAL_MEMORY: Duration = Duration::from_secs(5);

/// How long a refresh waits for another gateway's refresh of the same session (sessions in
/// Redis) before it gives up for now.
const LEASE_WAIT: Duration = Duration::from_secs(20);

/// Most refresh calls to the provider at once, on demand and sweep together.
pub(crate) const MAX_IN_FLIGHT: usize = 64;

/// The longest backoff step.
const MAX_BACKOFF_SECONDS: u64 = 300;

/// Per-session backoff after failed refreshes: one `base` (at least a second), then two, four …
/// at most five minutes.
#[derive(Debug, Default)]
struct Backoff {
    failures: HashMap<SessionId, (u32, u64)>,
}

impl Backoff {
    /// Whether the session may try a refresh at `now` (Unix seconds).
    fn ready(&self, id: SessionId, now: u64) -> bool {
        self.failures.get(&id).is_none_or(|(_, next)| *next <= now)
    }

    fn failed(&mut self, id: SessionId, now: u64, base: Duration) {
        let entry = self.failures.entry(id).or_insert((0, now));
        let delay = base
            .as_secs()
            .max(1)
            .saturating_mul(1u64 << entry.0.min(12))
            .min(MAX_BACKOFF_SECONDS);
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now.saturating_add(delay);
    }

    fn done(&mut self, id: SessionId) {
        self.failures.remove(&id);
    }
}

/// Refreshes sessions on demand, one at a time per session.
pub(crate) struct Refresher {
    provider: Arc<Provider>,
    tickets: Arc<TicketStore>,
    clock: Arc<dyn Clock>,
    in_flight: Mutex<HashMap<SessionId, Arc<tokio::sync::Mutex<()>>>>,
    metrics: Arc<Metrics>,
    backoff: Mutex<Backoff>,
    backoff_base: Duration,
    calls: tokio::sync::Semaphore,
    /// Resources the provider refused lately: the reason, and until when it is remembered.
    refused_resources: Mutex<HashMap<String, (String, u64)>>,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher").finish_non_exhaustive()
    }
}

impl Refresher {
    /// A refresher over a provider and a store, counting its grants in `metrics`.
    /// A failed refresh backs its session off for `backoff_base` (the refresh interval), then
    /// twice that, and so on.
    pub(crate) fn new(
        provider: Arc<Provider>,
        tickets: Arc<TicketStore>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        backoff_base: Duration,
    ) -> Self {
        Self {
            provider,
            tickets,
            clock,
            in_flight: Mutex::new(HashMap::new()),
            metrics,
            backoff: Mutex::new(Backoff::default()),
            backoff_base,
            calls: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            refused_resources: Mutex::default(),
        }
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.backoff.locked()
    }

    /// Whether the session may try a refresh now (it is not backing off after a failure).
    pub(crate) fn ready(&self, id: SessionId) -> bool {
        self.backoff().ready(id, self.clock.unix_now())
    }

    /// Returns the session with an access token that is valid beyond the refresh skew,
    /// refreshing it first when needed. `None` when the refresh ended the session.
    pub(crate) async fn fresh(&self, session: Session) -> Result<Option<Session>, FreshnessError> {
        let window = self.tickets.policy().refresh_skew;
        if !self
            .tickets
            .policy()
            .expires_within(&session.ticket, self.clock.unix_now(), window)
        {
            return Ok(Some(session));
        }
        // Boxed: the refresh's future (the provider call) is kilobytes, and every proxied
        // call's future would otherwise carry room for it.
        match Box::pin(self.refresh_single_flight(session.id, window, RefreshTrigger::OnDemand))
            .await?
        {
            Outcome::Current(session) | Outcome::Refreshed(session) => Ok(Some(session)),
            Outcome::Ended => Ok(None),
            Outcome::Failed { session, reason } => {
                let policy = self.tickets.policy();
                if policy.access_token_valid(&session.ticket, self.clock.unix_now()) {
                    Ok(Some(session))
                } else {
                    Err(FreshnessError::ProviderUnavailable(reason))
                }
            }
        }
    }

    /// Refreshes a session whose access token expires within `window` (the background sweep),
    /// sharing the single flight with on-demand refreshes.
    pub(crate) async fn refresh_ahead(
        &self,
        id: SessionId,
        window: Duration,
    ) -> Result<Outcome, StoreError> {
        self.refresh_single_flight(id, window, RefreshTrigger::Sweep)
            .await
    }

    async fn refresh_single_flight(
        &self,
        id: SessionId,
        window: Duration,
        trigger: RefreshTrigger,
    ) -> Result<Outcome, StoreError> {
        self.single_flight(id, self.refresh_locked(id, window, trigger))
            .await
    }

    /// Runs `work` holding the session's flight lock: one grant at a time per session.
    async fn single_flight<T>(&self, id: SessionId, work: impl Future<Output = T>) -> T {
        let lock = {
            let mut in_flight = self.in_flight.locked();
            Arc::clone(in_flight.entry(id).or_default())
        };
        let result = {
            let _flight = lock.lock().await;
            work.await
        };
        {
            let mut in_flight = self.in_flight.locked();
            // Only the map and this call hold the lock now: nobody else is waiting on it.
            if Arc::strong_count(&lock) == 2 {
                in_flight.remove(&id);
            }
        }
        result
    }

    /// The `Authorization` value of the session's token for `resource` alone (RFC 8707),
    /// asked for with its refresh token when it has none or it expires within the refresh
    /// skew; one grant at a time per session, sharing the refresh's flight (a rotated refresh
    /// token is stored before anyone else uses the old one). `None`: the session is gone.
    pub(crate) async fn resource_bearer(
        &self,
        session: Session,
        resource: &str,
    ) -> Result<Option<HeaderValue>, FreshnessError> {
        let window = self.tickets.policy().refresh_skew;
        if let Some(token) = session.ticket.resource_token(resource)
            && !expires_within(token.expires_at, self.clock.unix_now(), window)
        {
            return Ok(Some(token.access_token.bearer()));
        }
        if let Some(reason) = self.refused_recently(resource) {
            return Err(FreshnessError::ResourceRefused {
                resource: resource.to_owned(),
                reason,
            });
        }
        let id = session.id;
        Box::pin(self.single_flight(id, self.resource_locked(id, resource, window))).await
    }

    /// The reason the provider refused `resource` within the last [`REFUSAL_MEMORY`].
    fn refused_recently(&self, resource: &str) -> Option<String> {
        let now = self.clock.unix_now();
        let mut refused = self.refused_resources.locked();
        refused.retain(|_, (_, until)| now < *until);
        refused.get(resource).map(|(reason, _)| reason.clone())
    }

    async fn resource_locked(
        &self,
        id: SessionId,
        resource: &str,
        window: Duration,
    ) -> Result<Option<HeaderValue>, FreshnessError> {
        // A grant with the refresh token: one at a time cluster-wide, like a refresh.
        let Some(_lease) = self.tickets.renewal_lease(id, LEASE_WAIT).await? else {
            return Err(FreshnessError::ProviderUnavailable(
                "another gateway is still renewing this session's tokens".into(),
            ));
        };
        let Some(current) = self.tickets.reread(id).await? else {
            return Ok(None);
        };
        let now = self.clock.unix_now();
        let held = current.ticket.resource_token(resource).cloned();
        if let Some(token) = held
            .as_ref()
            .filter(|token| !expires_within(token.expires_at, now, window))
        {
            return Ok(Some(token.access_token.bearer()));
        }
        // What a failure leaves to send: the token in hand while it is valid, nothing broader.
        let still_valid = held
            .filter(|token| token.expires_at.is_none_or(|expiry| now < expiry))
            .map(|token| token.access_token.bearer());
        let unavailable = |reason: String| match &still_valid {
            Some(bearer) => Ok(Some(bearer.clone())),
            None => Err(FreshnessError::ProviderUnavailable(reason)),
        };
        let Some(refresh_token) = current.ticket.tokens.refresh_token.clone() else {
            return Err(FreshnessError::ResourceRefused {
                resource: resource.to_owned(),
                reason: "the session has no refresh token to ask for it with (offline_access)"
                    .into(),
            });
        };
        if !self.backoff().ready(id, now) {
            return unavailable("backing off after a failed grant".into());
        }
        let _call = self.calls.acquire().await.ok();
        match self.provider.resource_token(&refresh_token, resource).await {
            Ok(grant) => {
                self.backoff().done(id);
                let bearer = grant.token.access_token.bearer();
                let mut ticket = (*current.ticket).clone();
                ticket
                    .resource_tokens
                    .retain(|token| token.resource != resource);
                ticket.resource_tokens.push(grant.token);
                if let Some(rotated) = grant.refresh_token {
                    ticket.tokens.refresh_token = Some(rotated);
                    ticket.expires_at = self
                        .tickets
                        .policy()
                        .end_of(ticket.created_at, &ticket.tokens);
                }
                if !self.tickets.renew(id, ticket).await? {
                    return Ok(None);
                }
                tracing::debug!(session = %id, %resource, "audience-bound token obtained");
                Ok(Some(bearer))
            }
            Err(RefreshError::SessionEnded(reason)) => {
                tracing::info!(session = %id, %resource, %reason, "grant rejected; session ended");
                self.tickets.remove(id).await?;
                Ok(None)
            }
            Err(RefreshError::Refused(reason)) => {
                tracing::warn!(
                    session = %id,
                    %resource,
                    %reason,
                    "the provider refused a token for this resource; its routes answer 502 \
                     (is the resource registered for this client?)"
                );
                let until = self
                    .clock
                    .unix_now()
                    .saturating_add(REFUSAL_MEMORY.as_secs());
                self.refused_resources
                    .locked()
                    .insert(resource.to_owned(), (reason.clone(), until));
                Err(FreshnessError::ResourceRefused {
                    resource: resource.to_owned(),
                    reason,
                })
            }
            Err(RefreshError::Transient(reason)) => {
                self.backoff()
                    .failed(id, self.clock.unix_now(), self.backoff_base);
                tracing::warn!(session = %id, %resource, %reason, "audience-bound token not obtained for now");
                unavailable(reason)
            }
        }
    }

    async fn refresh_locked(
        &self,
        id: SessionId,
        window: Duration,
        trigger: RefreshTrigger,
    ) -> Result<Outcome, StoreError> {
        // One refresh per session cluster-wide (with sessions in Redis), then re-read: whoever
        // held the lock or the lease before may have refreshed already.
        let Some(_lease) = self.tickets.renewal_lease(id, LEASE_WAIT).await? else {
            return Ok(
                match self.tickets.retrieve_by_id(id, Activity::Peek).await? {
                    Some(session) => Outcome::Failed {
                        session,
                        reason: "another gateway is still refreshing this session".into(),
                    },
                    None => Outcome::Ended,
                },
            );
        };
        let Some(current) = self.tickets.reread(id).await? else {
            return Ok(Outcome::Ended);
        };
        let policy = *self.tickets.policy();
        let now = self.clock.unix_now();
        if !policy.expires_within(&current.ticket, now, window) {
            return Ok(Outcome::Current(current));
        }
        let Some(refresh_token) = current.ticket.tokens.refresh_token.clone() else {
            // Nothing to refresh with: the token is used as long as it lasts; the API's 401
            // then sends the SPA through login again.
            return Ok(Outcome::Current(current));
        };
        if !self.backoff().ready(id, now) {
            return Ok(Outcome::Failed {
                session: current,
                reason: "backing off after a failed refresh".into(),
            });
        }
        // The semaphore is never closed; a closed one would only mean no cap.
        let _call = self.calls.acquire().await.ok();
        let result = self
            .provider
            .refresh(
                &refresh_token,
                &current.ticket.subject,
                &current.ticket.tokens,
            )
            .await;
        match &result {
            Err(RefreshError::Transient(_)) => {
                self.backoff()
                    .failed(id, self.clock.unix_now(), self.backoff_base);
            }
            _ => self.backoff().done(id),
        }
        match result {
            Ok(refreshed) => {
                self.metrics.refresh(trigger, RefreshOutcome::Refreshed);
                let ticket = Ticket {
                    expires_at: policy.end_of(current.ticket.created_at, &refreshed.tokens),
                    tokens: refreshed.tokens,
                    userinfo: refreshed
                        .userinfo
                        .or_else(|| current.ticket.userinfo.clone()),
                    ..(*current.ticket).clone()
                };
                if !self.tickets.renew(id, ticket.clone()).await? {
                    return Ok(Outcome::Ended);
                }
                tracing::debug!(session = %id, "access token refreshed");
                Ok(Outcome::Refreshed(Session {
                    ticket: Arc::new(ticket),
                    ..current
                }))
            }
            Err(RefreshError::SessionEnded(reason)) => {
                self.metrics.refresh(trigger, RefreshOutcome::Ended);
                tracing::info!(session = %id, %reason, "refresh rejected; session ended");
                self.tickets.remove(id).await?;
                Ok(Outcome::Ended)
            }
            Err(RefreshError::Transient(reason) | RefreshError::Refused(reason)) => {
                self.metrics.refresh(trigger, RefreshOutcome::Failed);
                tracing::warn!(session = %id, %reason, "refresh failed; session kept");
                Ok(Outcome::Failed {
                    session: current,
                    reason,
                })
            }
        }
    }
}

/// What an attempt to make a session fresh came to.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The token did not need a refresh (or cannot be refreshed): the session as it is.
    Current(Session),
    /// New tokens were stored.
    Refreshed(Session),
    /// The session is gone: removed meanwhile, or the provider said the grant is dead.
    Ended,
    /// The provider could not refresh now; the session is kept.
    Failed {
        /// The session, unchanged.
        session: Session,
        /// Why, for the log.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes_and_clears_on_success() {
        let id = SessionId {
            created_ms: 1,
            hash: [1; 32],
        };
        let mut backoff = Backoff::default();
        assert!(backoff.ready(id, 0));
        backoff.failed(id, 0, Duration::from_secs(60));
        assert!(!backoff.ready(id, 59));
        assert!(backoff.ready(id, 60));
        backoff.failed(id, 60, Duration::from_secs(60));
        assert!(!backoff.ready(id, 179));
        assert!(backoff.ready(id, 180));
        for _ in 0..20 {
            backoff.failed(id, 0, Duration::from_secs(60));
        }
        assert!(!backoff.ready(id, 299));
        assert!(backoff.ready(id, 300));
        backoff.done(id);
        assert!(backoff.ready(id, 0));
        // A sub-second interval still waits a second.
        backoff.failed(id, 10, Duration::from_millis(100));
        assert!(!backoff.ready(id, 10));
        assert!(backoff.ready(id, 11));
    }
}
