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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Clock;
use crate::metrics::{Metrics, RefreshOutcome, RefreshTrigger};
use crate::oidc::{Provider, RefreshError};
use crate::session::{SessionId, Ticket};
use crate::store::StoreError;
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
}

/// Refreshes sessions on demand, one at a time per session.
pub struct Refresher {
    provider: Arc<Provider>,
    tickets: Arc<TicketStore>,
    clock: Arc<dyn Clock>,
    in_flight: Mutex<HashMap<SessionId, Arc<tokio::sync::Mutex<()>>>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher").finish_non_exhaustive()
    }
}

impl Refresher {
    /// A refresher over a provider and a store, counting its grants in `metrics`.
    pub fn new(
        provider: Arc<Provider>,
        tickets: Arc<TicketStore>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            provider,
            tickets,
            clock,
            in_flight: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Returns the session with an access token that is valid beyond the refresh skew,
    /// refreshing it first when needed. `None` when the refresh ended the session.
    pub async fn fresh(&self, session: Session) -> Result<Option<Session>, FreshnessError> {
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
                let still_valid = session
                    .ticket
                    .tokens
                    .access_expires_at
                    .is_some_and(|expiry| self.clock.unix_now() < expiry);
                if still_valid {
                    Ok(Some(session))
                } else {
                    Err(FreshnessError::ProviderUnavailable(reason))
                }
            }
        }
    }

    /// Refreshes a session whose access token expires within `window` (the background sweep),
    /// sharing the single flight with on-demand refreshes.
    pub async fn refresh_ahead(
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
        let lock = {
            let mut in_flight = self
                .in_flight
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            Arc::clone(in_flight.entry(id).or_default())
        };
        let result = {
            let _flight = lock.lock().await;
            self.refresh_locked(id, window, trigger).await
        };
        {
            let mut in_flight = self
                .in_flight
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // Only the map and this call hold the lock now: nobody else is waiting on it.
            if Arc::strong_count(&lock) == 2 {
                in_flight.remove(&id);
            }
        }
        result
    }

    async fn refresh_locked(
        &self,
        id: SessionId,
        window: Duration,
        trigger: RefreshTrigger,
    ) -> Result<Outcome, StoreError> {
        // Re-read under the lock: whoever held it before may have refreshed already.
        let Some(current) = self.tickets.retrieve_by_id(id, Activity::Peek).await? else {
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
        match self
            .provider
            .refresh(
                &refresh_token,
                &current.ticket.subject,
                &current.ticket.tokens,
            )
            .await
        {
            Ok(refreshed) => {
                self.metrics.refresh(trigger, RefreshOutcome::Refreshed);
                let ticket = Ticket {
                    expires_at: policy.end_of(current.ticket.created_at, &refreshed.tokens),
                    tokens: refreshed.tokens,
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
            Err(RefreshError::Transient(reason)) => {
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
pub enum Outcome {
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
