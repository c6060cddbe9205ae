//! Every background loop the gateway runs, and [`Tasks`], the set that stops them together:
//! - the refresh sweep (tokens about to expire are refreshed before any request needs them)
//!   and the eviction sweep (sessions past their idle timeout or lifetime are removed);
//! - the flush of last-access times, the closing of idle upstream connections, the systemd
//!   watchdog, and the reloads on SIGHUP.
//!
//! Both sweeps read only what is due from an index, so a sweep costs what it removes or refreshes, not
//! what is stored. The refresh sweep shares the single flight of on-demand refreshes, limits
//! itself to `--refresh-concurrency` refreshes at a time, and backs off per session when the
//! provider fails, so an hour-long outage costs no session that is still inside its lifetime.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};

use crate::describe::error_chain;
use crate::metrics::Metrics;
use crate::proxy::{Proxy, ProxyConfig};
use crate::refresh::{Outcome, Refresher};
use crate::tickets::TicketStore;
use crate::tls::{ReloadableCert, TlsConfig};

/// Background tasks that end together when the set is stopped (or dropped).
#[derive(Debug, Default)]
pub(crate) struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    /// Runs `task` until the set stops.
    pub(crate) fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.0.push(tokio::spawn(task));
    }

    /// Ends every task.
    pub(crate) fn stop(&mut self) {
        for task in self.0.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every `interval` (the first tick at once, missed ticks not caught up), runs `tick` to its
/// end.
async fn every<F: Future<Output = ()>>(interval: Duration, mut tick: impl FnMut() -> F) {
    let mut interval = tokio::time::interval(interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        tick().await;
    }
}

/// Writes the sessions' pending last-access times every `--touch-interval`.
pub(crate) async fn flush_loop(tickets: Arc<TicketStore>) {
    every(tickets.touch_interval(), || async {
        if let Err(error) = tickets.flush_touches().await {
            tracing::error!(error = %error_chain(&error), "writing last-access times failed");
        }
    })
    .await;
}

/// With sessions in Redis: listens on the invalidation channel and forgets here every session
/// another gateway (or this one) removed or replaced, so no gateway's cache serves a session
/// after its logout or an old ticket after its refresh. After the channel reconnects, messages
/// may have been missed: every cached session is forgotten.
pub(crate) async fn invalidation_loop(
    tickets: Arc<TicketStore>,
    subscriber: fred::prelude::Client,
) {
    use fred::prelude::{ClientLike, EventInterface, PubsubInterface};
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    if let Err(error) = subscriber.init().await {
        tracing::error!(%error, "session invalidation channel: cannot connect");
        return;
    }
    if let Err(error) = subscriber
        .subscribe(crate::redis_store::INVALIDATE_CHANNEL)
        .await
    {
        tracing::error!(%error, "session invalidation channel: cannot subscribe");
        return;
    }
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Ok(message) => {
                    let bytes = message.value.as_bytes().unwrap_or_default();
                    if let Some((id, removed)) = crate::redis_store::invalidated(bytes) {
                        tickets.forget(id, removed);
                    }
                }
                // Fell behind: some messages are lost.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => tickets.forget_all(),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            reconnected = reconnects.recv() => {
                if reconnected.is_err() {
                    return;
                }
                tickets.forget_all();
                if let Err(error) = subscriber.subscribe(crate::redis_store::INVALIDATE_CHANNEL).await {
                    tracing::warn!(%error, "session invalidation channel: resubscribe failed");
                }
            }
        }
    }
}

/// With sessions in Redis: asks it for a PING every second (an answer within a second, so
/// `/healthz` turns 503 within about two), logging and counting each change of state. While it
/// is away, sessions in the cache keep working, logins wait (503), and last-access times wait
/// in memory; the client reconnects by itself, with backoff.
pub(crate) async fn store_health_loop(tickets: Arc<TicketStore>, metrics: Arc<Metrics>) {
    let Some(redis) = tickets.redis().cloned() else {
        return;
    };
    every(Duration::from_secs(1), || async {
        let (up, changed) = redis.check(Duration::from_secs(1)).await;
        match (up, changed) {
            (false, true) => {
                metrics.store_unreachable();
                tracing::error!(
                    "the session store (Redis) does not answer: logins wait, cached sessions go on"
                );
            }
            (true, true) => tracing::info!("the session store (Redis) answers again"),
            _ => {}
        }
    })
    .await;
}

/// Closes upstream connections idle too long, every [`Proxy::IDLE_CHECK`].
pub(crate) async fn idle_upstreams_loop(proxy: Arc<Proxy>) {
    every(Proxy::IDLE_CHECK, || async {
        proxy.close_idle_connections()
    })
    .await;
}

/// Reads the certificate and the proxy configuration again each time `reload` changes
/// (SIGHUP); keeps the old ones on any error.
pub(crate) async fn reload_loop(
    mut reload: tokio::sync::watch::Receiver<u64>,
    tls_config: TlsConfig,
    proxy_config: ProxyConfig,
    certificates: Arc<ReloadableCert>,
    proxy: Arc<Proxy>,
) {
    while reload.changed().await.is_ok() {
        if matches!(tls_config, TlsConfig::Files { .. }) {
            match crate::tls::certified_key(&tls_config) {
                Ok((key, _)) => {
                    certificates.replace(key);
                    tracing::info!("reload: TLS certificate replaced for new connections");
                }
                Err(error) => tracing::error!(
                    error = %error_chain(&error),
                    "reload: new TLS certificate refused; the old one stays"
                ),
            }
        }
        if let Some(file) = &proxy_config.file {
            match proxy_config.reload() {
                Ok((routes, policies)) => {
                    let count = routes.len();
                    proxy.replace_routes(routes, policies);
                    tracing::info!(routes = count, file = %file.display(), "reload: proxy routes replaced");
                }
                Err(problems) => tracing::error!(
                    file = %file.display(),
                    problems = %problems.join("; "),
                    "reload: proxy configuration refused; the old routes stay"
                ),
            }
        }
    }
}

/// Tells systemd the gateway is alive every `interval` (half of `WATCHDOG_USEC`).
pub(crate) async fn watchdog_loop(interval: Duration) {
    every(interval, || async {
        crate::notify::notify("WATCHDOG=1");
    })
    .await;
}

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
pub(crate) struct RefreshReport {
    /// Sessions that got new tokens.
    pub refreshed: usize,
    /// Sessions the provider ended.
    pub ended: usize,
    /// Sessions kept after a failed attempt (retried later with backoff).
    pub failed: usize,
    /// Sessions skipped because they are backing off.
    pub backing_off: usize,
}

/// One refresh sweep: every refreshable session whose token expires within `refresh_ahead`,
/// at most `refresh_concurrency` at a time.
pub(crate) async fn refresh_once(
    tickets: &Arc<TicketStore>,
    refresher: &Arc<Refresher>,
    config: &SweepConfig,
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
    let mut queue = candidates.into_iter();
    let mut running = JoinSet::new();
    loop {
        while running.len() < config.refresh_concurrency.max(1) {
            let Some(id) = queue.next() else { break };
            // The refresher's backoff, shared with on-demand refreshes.
            if !refresher.ready(id) {
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
            Ok(Outcome::Refreshed(_)) => report.refreshed += 1,
            Ok(Outcome::Ended) => report.ended += 1,
            Ok(Outcome::Current(_)) => {}
            Ok(Outcome::Failed { .. }) => report.failed += 1,
            Err(error) => {
                report.failed += 1;
                tracing::error!(session = %id, error = %error_chain(&error), "refresh sweep failed");
            }
        }
    }
    report
}

/// Runs refresh sweeps forever, every `refresh_interval` with jitter.
pub(crate) async fn refresh_loop(
    tickets: Arc<TicketStore>,
    refresher: Arc<Refresher>,
    config: SweepConfig,
    metrics: Arc<Metrics>,
) {
    loop {
        tokio::time::sleep(jittered(config.refresh_interval)).await;
        let started = tokio::time::Instant::now();
        let report = refresh_once(&tickets, &refresher, &config).await;
        metrics.refresh_sweep(started.elapsed());
        if report != RefreshReport::default() {
            tracing::info!(
                refreshed = report.refreshed,
                ended = report.ended,
                failed = report.failed,
                backing_off = report.backing_off,
                "refresh sweep"
            );
        }
    }
}

/// Runs eviction sweeps forever, every `sweep_interval`.
pub(crate) async fn eviction_loop(
    tickets: Arc<TicketStore>,
    config: SweepConfig,
    metrics: Arc<Metrics>,
) {
    loop {
        tokio::time::sleep(config.sweep_interval).await;
        let started = tokio::time::Instant::now();
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
