//! The two background tasks of the session lifecycle: the refresh sweep (tokens about to expire
//! are refreshed before any request needs them) and the eviction sweep (sessions past their
//! idle timeout or lifetime are removed).
//!
//! Both read only what is due from an index, so a sweep costs what it removes or refreshes, not
//! what is stored. The refresh sweep shares the single flight of on-demand refreshes, limits
//! itself to `--refresh-concurrency` refreshes at a time, and backs off per session when the
//! provider fails, so an hour-long outage costs no session that is still inside its lifetime.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::oidc::error_chain;
use crate::refresh::{Outcome, Refresher};
use crate::session::SessionId;
use crate::tickets::TicketStore;

/// Sessions removed per eviction transaction: large enough that the random pages of the sid and
/// sub indexes are shared between removals, small enough to keep the write lock briefly.
const BATCH: usize = 10_000;

/// Settings of the sweeps.
#[derive(Debug, Clone, Copy)]
pub struct SweepConfig {
    /// Time between refresh sweeps (±10 % jitter).
    pub refresh_interval: Duration,
    /// Refresh access tokens expiring within this.
    pub refresh_ahead: Duration,
    /// Most refreshes at once.
    pub refresh_concurrency: usize,
    /// Time between eviction sweeps.
    pub sweep_interval: Duration,
}

/// What one refresh sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RefreshReport {
    /// Sessions that got new tokens.
    pub refreshed: usize,
    /// Sessions the provider ended.
    pub ended: usize,
    /// Sessions kept after a failed attempt (retried later with backoff).
    pub failed: usize,
    /// Sessions skipped because they are backing off.
    pub backing_off: usize,
}

/// Per-session backoff after failed refreshes: 1, 2, 4 … intervals, at most an hour.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: HashMap<SessionId, (u32, u64)>,
}

impl Backoff {
    fn ready(&self, id: SessionId, now: u64) -> bool {
        self.failures.get(&id).is_none_or(|(_, next)| *next <= now)
    }

    fn failed(&mut self, id: SessionId, now: u64, interval: Duration) {
        let entry = self.failures.entry(id).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        let delay = interval
            .as_secs()
            .max(1)
            .saturating_mul(1u64 << entry.0.min(12))
            .min(3_600);
        entry.1 = now.saturating_add(delay);
    }

    fn done(&mut self, id: SessionId) {
        self.failures.remove(&id);
    }
}

/// One refresh sweep: every refreshable session whose token expires within `refresh_ahead`,
/// at most `refresh_concurrency` at a time.
pub async fn refresh_once(
    tickets: &Arc<TicketStore>,
    refresher: &Arc<Refresher>,
    clock: &Arc<dyn Clock>,
    config: &SweepConfig,
    backoff: &mut Backoff,
) -> RefreshReport {
    let mut report = RefreshReport::default();
    let candidates = match tickets
        .refresh_candidates(config.refresh_ahead, usize::MAX)
        .await
    {
        Ok(candidates) => candidates,
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "refresh sweep could not read the index");
            return report;
        }
    };
    let now = clock.unix_now();
    let mut queue = candidates.into_iter();
    let mut running = JoinSet::new();
    loop {
        while running.len() < config.refresh_concurrency.max(1) {
            let Some(id) = queue.next() else { break };
            if !backoff.ready(id, now) {
                report.backing_off += 1;
                continue;
            }
            let refresher = Arc::clone(refresher);
            let window = config.refresh_ahead;
            running.spawn(async move { (id, refresher.refresh_ahead(id, window).await) });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let Ok((id, outcome)) = joined else { continue };
        match outcome {
            Ok(Outcome::Refreshed(_)) => {
                report.refreshed += 1;
                backoff.done(id);
            }
            Ok(Outcome::Ended) => {
                report.ended += 1;
                backoff.done(id);
            }
            Ok(Outcome::Current(_)) => backoff.done(id),
            Ok(Outcome::Failed { .. }) => {
                report.failed += 1;
                backoff.failed(id, now, config.refresh_interval);
            }
            Err(error) => {
                report.failed += 1;
                backoff.failed(id, now, config.refresh_interval);
                tracing::error!(session = %id, error = %error_chain(&error), "refresh sweep failed");
            }
        }
    }
    report
}

/// Runs refresh sweeps forever, every `refresh_interval` with jitter.
pub async fn refresh_loop(
    tickets: Arc<TicketStore>,
    refresher: Arc<Refresher>,
    clock: Arc<dyn Clock>,
    config: SweepConfig,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Backoff::default();
    loop {
        tokio::time::sleep(jittered(config.refresh_interval)).await;
        let started = std::time::Instant::now();
        let report = refresh_once(&tickets, &refresher, &clock, &config, &mut backoff).await;
        metrics.refresh_sweep(started.elapsed());
        if report != RefreshReport::default() {
            tracing::info!(?report, "refresh sweep");
        }
    }
}

/// Runs eviction sweeps forever, every `sweep_interval`.
pub async fn eviction_loop(tickets: Arc<TicketStore>, config: SweepConfig, metrics: Arc<Metrics>) {
    loop {
        tokio::time::sleep(config.sweep_interval).await;
        let started = std::time::Instant::now();
        match tickets.evict_expired(BATCH).await {
            Ok(removed) => {
                metrics.eviction_sweep(started.elapsed(), removed);
                if removed > 0 {
                    tracing::info!(removed, took = ?started.elapsed(), "eviction sweep");
                }
            }
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "eviction sweep failed");
            }
        }
    }
}

/// `interval` ± 10 %, so that many gateways (or restarts) do not sweep in lockstep.
fn jittered(interval: Duration) -> Duration {
    let bytes: [u8; 2] = crate::seal::random_bytes();
    let permille = u64::from(u16::from_le_bytes(bytes) % 201); // 0..=200
    let millis = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    // Multiplied before dividing: `millis / 1000 * …` made every sub-second interval zero, and
    // the sweep spun without pause. Never below a millisecond either.
    Duration::from_millis((millis.saturating_mul(900 + permille) / 1000).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour_and_clears_on_success() {
        let id = SessionId {
            created_ms: 1,
            hash: [1; 32],
        };
        let mut backoff = Backoff::default();
        assert!(backoff.ready(id, 0));
        backoff.failed(id, 0, Duration::from_secs(60));
        assert!(!backoff.ready(id, 119));
        assert!(backoff.ready(id, 120));
        for _ in 0..20 {
            backoff.failed(id, 0, Duration::from_secs(60));
        }
        assert!(!backoff.ready(id, 3_599));
        assert!(backoff.ready(id, 3_600));
        backoff.done(id);
        assert!(backoff.ready(id, 0));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let jittered = jittered(Duration::from_secs(60));
            assert!(jittered >= Duration::from_secs(54) && jittered <= Duration::from_secs(66));
            let short = super::jittered(Duration::from_millis(500));
            assert!(
                short >= Duration::from_millis(450) && short <= Duration::from_millis(550),
                "{short:?}"
            );
            assert!(super::jittered(Duration::from_millis(1)) >= Duration::from_millis(1));
        }
    }
}
