//! Prometheus metrics: what is counted, and the `--metrics-listen` endpoint that serves them.
//!
//! Handlers, the refresher and the sweepers record into one [`Metrics`]; the ticket store is
//! read at scrape time (live sessions, cache hits and misses), so the hot path pays one atomic
//! add per counter and nothing for the store. Labels are bounded: route ids come from the
//! configuration, statuses are HTTP codes, outcomes are fixed words. No label ever carries a
//! path, a user, a session or a token.
//!
//! The endpoint is plain HTTP on its own listener (off by default), so it can be bound to an
//! internal interface while the gateway itself faces browsers. It answers `GET /metrics` in the
//! OpenMetrics text format, which Prometheus reads, and 404 to everything else.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::sync::{Locked, RwLocked};
use crate::tickets::TicketStore;

/// Labels of one request: which route or endpoint, and the status it got.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

/// A fixed outcome word.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// A refresh: who asked, and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabels {
    trigger: &'static str,
    outcome: &'static str,
}

/// An upstream failure: on which route, and what kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    route: String,
    kind: &'static str,
}

/// Which sweep.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SweepLabels {
    sweep: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 250 µs to about 65 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 19))
}

fn sweep_histogram() -> Histogram {
    // 1 ms to about 2 minutes.
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// Who asked for a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefreshTrigger {
    /// A request found the access token about to expire.
    OnDemand,
    /// The background refresh sweep.
    Sweep,
}

/// How a refresh ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefreshOutcome {
    /// New tokens were stored.
    Refreshed,
    /// The provider refused the grant (`invalid_grant`, …): the session ended.
    Ended,
    /// The provider could not be asked (network, timeout, 5xx): the session was kept.
    Failed,
}

/// A gateway-made answer for a proxied call that the upstream did not give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection or a broken exchange (502).
    Unreachable,
    /// No answer within the timeout (504).
    Timeout,
}

/// Per route id, each status seen with its request counter and latency histogram.
type RequestSeries = HashMap<String, Vec<(u16, Counter, Histogram)>>;

/// The gateway's counters and histograms. One per running gateway.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily<RequestLabels>,
    logins: Family<OutcomeLabels, Counter>,
    refreshes: Family<RefreshLabels, Counter>,
    upstream_errors: Family<UpstreamLabels, Counter>,
    backchannel_logouts: Family<OutcomeLabels, Counter>,
    sweeps: HistogramFamily<SweepLabels>,
    evicted: Counter,
    store_unreachable: Counter,
    store: Arc<StoreCollector>,
    /// The request counter and histogram of each route and status seen so far (handles to the
    /// same series as the families'): a request finds both with one small lookup instead of two
    /// label hashes, allocations and family locks.
    request_series: std::sync::RwLock<RequestSeries>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics, registered under the `oidc_bff_` prefix.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("oidc_bff");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Requests answered, by route (or the gateway's own endpoint) and status",
            requests.clone(),
        );
        let latency: HistogramFamily<RequestLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time to the response head, by route and status",
            latency.clone(),
        );
        let logins = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "logins",
            "Login callbacks: success (a session was created) or failure",
            logins.clone(),
        );
        let refreshes = Family::<RefreshLabels, Counter>::default();
        registry.register(
            "token_refreshes",
            "Refresh-token grants by trigger (on_demand, sweep) and outcome (refreshed, ended, failed)",
            refreshes.clone(),
        );
        let upstream_errors = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Proxied calls the gateway answered itself: unreachable (502) or timeout (504)",
            upstream_errors.clone(),
        );
        let backchannel_logouts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "backchannel_logouts",
            "Back-channel logout requests: accepted or rejected",
            backchannel_logouts.clone(),
        );
        let sweeps: HistogramFamily<SweepLabels> = Family::new_with_constructor(sweep_histogram);
        registry.register(
            "sweep_duration_seconds",
            "Duration of each background sweep (refresh, eviction)",
            sweeps.clone(),
        );
        let evicted = Counter::default();
        registry.register(
            "sessions_evicted",
            "Sessions removed by the eviction sweep (idle or expired)",
            evicted.clone(),
        );
        let store_unreachable = Counter::default();
        registry.register(
            "session_store_unreachable",
            "Times the session store (Redis) stopped answering",
            store_unreachable.clone(),
        );
        let store = Arc::new(StoreCollector::default());
        registry.register_collector(Box::new(Arc::clone(&store)));
        Self {
            registry,
            requests,
            latency,
            logins,
            refreshes,
            upstream_errors,
            backchannel_logouts,
            sweeps,
            evicted,
            store_unreachable,
            store,
            request_series: std::sync::RwLock::default(),
        }
    }

    /// The session store stopped answering.
    pub(crate) fn store_unreachable(&self) {
        self.store_unreachable.inc();
    }

    /// One answered request.
    pub(crate) fn request(&self, route: &str, status: StatusCode, elapsed: Duration) {
        let status = status.as_u16();
        let seconds = elapsed.as_secs_f64();
        {
            let series = self.request_series.read_locked();
            if let Some((_, counter, histogram)) = series
                .get(route)
                .and_then(|statuses| statuses.iter().find(|(code, ..)| *code == status))
            {
                counter.inc();
                histogram.observe(seconds);
                return;
            }
        }
        // First request of this route and status: create the series, remember the handles.
        let labels = RequestLabels {
            route: route.to_owned(),
            status,
        };
        let counter = self.requests.get_or_create(&labels).clone();
        let histogram = self.latency.get_or_create(&labels).clone();
        counter.inc();
        histogram.observe(seconds);
        let mut series = self.request_series.write_locked();
        let statuses = series.entry(labels.route).or_default();
        if !statuses.iter().any(|(code, ..)| *code == status) {
            statuses.push((status, counter, histogram));
        }
    }

    /// One login callback.
    pub(crate) fn login(&self, success: bool) {
        let outcome = if success { "success" } else { "failure" };
        self.logins.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// One refresh-token grant.
    pub(crate) fn refresh(&self, trigger: RefreshTrigger, outcome: RefreshOutcome) {
        let labels = RefreshLabels {
            trigger: match trigger {
                RefreshTrigger::OnDemand => "on_demand",
                RefreshTrigger::Sweep => "sweep",
            },
            outcome: match outcome {
                RefreshOutcome::Refreshed => "refreshed",
                RefreshOutcome::Ended => "ended",
                RefreshOutcome::Failed => "failed",
            },
        };
        self.refreshes.get_or_create(&labels).inc();
    }

    /// One proxied call that got a gateway-made 502 or 504.
    pub(crate) fn upstream_error(&self, route: &str, error: UpstreamError) {
        let kind = match error {
            UpstreamError::Unreachable => "unreachable",
            UpstreamError::Timeout => "timeout",
        };
        self.upstream_errors
            .get_or_create(&UpstreamLabels {
                route: route.to_owned(),
                kind,
            })
            .inc();
    }

    /// One back-channel logout request.
    pub(crate) fn backchannel_logout(&self, accepted: bool) {
        let outcome = if accepted { "accepted" } else { "rejected" };
        self.backchannel_logouts
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// One refresh sweep finished.
    pub(crate) fn refresh_sweep(&self, elapsed: Duration) {
        self.sweeps
            .get_or_create(&SweepLabels { sweep: "refresh" })
            .observe(elapsed.as_secs_f64());
    }

    /// One eviction sweep finished, having removed `evicted` sessions.
    pub(crate) fn eviction_sweep(&self, elapsed: Duration, evicted: usize) {
        self.sweeps
            .get_or_create(&SweepLabels { sweep: "eviction" })
            .observe(elapsed.as_secs_f64());
        self.evicted
            .inc_by(u64::try_from(evicted).unwrap_or(u64::MAX));
    }

    /// The metrics in the OpenMetrics text format, with the store read now.
    pub(crate) async fn render(&self, tickets: &TicketStore) -> String {
        let sessions = match tickets.count_if_cheap().await {
            Ok(count) => count,
            Err(error) => {
                tracing::warn!(%error, "metrics: counting sessions failed");
                None
            }
        };
        let cache = tickets.cache_stats();
        *self.store.lock() = StoreSnapshot {
            up: tickets.is_up(),
            sessions,
            cache_hits: cache.hits,
            cache_misses: cache.misses,
        };
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "metrics: encoding failed");
        }
        text
    }
}

/// The store's numbers as of the current scrape.
#[derive(Debug, Default, Clone, Copy)]
struct StoreSnapshot {
    up: bool,
    sessions: Option<u64>,
    cache_hits: u64,
    cache_misses: u64,
}

/// Emits the numbers that live elsewhere (the store's, the access log's), not in counters of ours.
#[derive(Debug, Default)]
struct StoreCollector(Mutex<StoreSnapshot>);

impl StoreCollector {
    fn lock(&self) -> std::sync::MutexGuard<'_, StoreSnapshot> {
        self.0.locked()
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = *self.lock();
        let up = ConstGauge::new(i64::from(snapshot.up));
        let metric = encoder.encode_descriptor(
            "session_store_up",
            "Whether the session store answers (the redb file always; Redis as last checked)",
            None,
            up.metric_type(),
        )?;
        up.encode(metric)?;
        if let Some(sessions) = snapshot.sessions {
            let gauge = ConstGauge::new(i64::try_from(sessions).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(
                "sessions",
                "Sessions in the store (the file: live until the eviction sweep removes them; Redis: as the last eviction sweep counted them)",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        for (name, help, value) in [
            (
                "session_cache_hits",
                "Session lookups answered by the in-memory LRU cache",
                snapshot.cache_hits,
            ),
            (
                "session_cache_misses",
                "Session lookups that had to read the redb file",
                snapshot.cache_misses,
            ),
            (
                "access_log_dropped",
                "Access-log lines dropped because the log's writer fell behind (a stalled journald or pipe)",
                crate::access_log::dropped(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// Most concurrent scrape connections; more wait in the kernel backlog, in arrival order.
const MAX_CONNECTIONS: usize = 64;

/// Time a scrape connection has to send its request. Short, and one request per connection:
/// idle connections cannot hold every slot for long, so a real scrape waits about this long at
/// most behind them (16 idle connections used to delay one by 10 s).
const REQUEST_DEADLINE: Duration = Duration::from_secs(1);

/// Serves `GET /metrics` on `listener` (plain HTTP/1.1) until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<Metrics>, tickets: Arc<TicketStore>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (metrics, tickets) = (Arc::clone(&metrics), Arc::clone(&tickets));
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request: Request<Incoming>| {
                let (metrics, tickets) = (Arc::clone(&metrics), Arc::clone(&tickets));
                async move { Ok::<_, Infallible>(answer(&request, &metrics, &tickets).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_DEADLINE)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service);
            // A scrape is quick; a connection that lingers (a client that reads slowly) is cut.
            let _ = tokio::time::timeout(Duration::from_secs(10), connection).await;
        });
    }
}

async fn answer(
    request: &Request<Incoming>,
    metrics: &Metrics,
    tickets: &TicketStore,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".into(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n".into(),
        );
    }
    reply(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        metrics.render(tickets).await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(metrics: &Metrics) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).expect("encode");
        text
    }

    #[test]
    fn requests_are_counted_by_route_and_status() {
        let metrics = Metrics::new();
        metrics.request("isAuth", StatusCode::OK, Duration::from_millis(1));
        metrics.request("isAuth", StatusCode::OK, Duration::from_millis(2));
        metrics.request(
            "OtherApi1",
            StatusCode::BAD_GATEWAY,
            Duration::from_millis(3),
        );
        let text = encode(&metrics);
        assert!(text.contains(r#"oidc_bff_http_requests_total{route="isAuth",status="200"} 2"#));
        assert!(text.contains(r#"oidc_bff_http_requests_total{route="OtherApi1",status="502"} 1"#));
        assert!(text.contains(
            r#"oidc_bff_http_request_duration_seconds_count{route="isAuth",status="200"} 2"#
        ));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn outcomes_use_fixed_words() {
        let metrics = Metrics::new();
        metrics.login(true);
        metrics.login(false);
        metrics.refresh(RefreshTrigger::Sweep, RefreshOutcome::Ended);
        metrics.upstream_error("a", UpstreamError::Timeout);
        metrics.eviction_sweep(Duration::from_millis(5), 7);
        let text = encode(&metrics);
        assert!(text.contains(r#"oidc_bff_logins_total{outcome="success"} 1"#));
        assert!(text.contains(r#"oidc_bff_logins_total{outcome="failure"} 1"#));
        assert!(
            text.contains(r#"oidc_bff_token_refreshes_total{trigger="sweep",outcome="ended"} 1"#)
        );
        assert!(text.contains(r#"oidc_bff_upstream_errors_total{route="a",kind="timeout"} 1"#));
        assert!(text.contains("oidc_bff_sessions_evicted_total 7"));
        assert!(text.contains(r#"oidc_bff_sweep_duration_seconds_count{sweep="eviction"} 1"#));
    }
}
