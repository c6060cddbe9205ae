//! The background refresh sweep, against the fake provider. The sweep runs on a short real
//! interval; token expiry follows the shared manual clock. Each wait is bounded.

use std::time::Duration;

use crate::support::{FakeProvider, RefreshFailure, TestGateway, setup};

const SWEEP: [&str; 4] = ["--refresh-interval", "100ms", "--refresh-ahead", "2m"];

/// Polls `check` every 20 ms for up to 5 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..250 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn started() -> (FakeProvider, TestGateway) {
    setup(&SWEEP).await
}

#[tokio::test]
async fn tokens_near_expiry_are_refreshed_before_a_request_needs_them() {
    let (provider, gateway) = started().await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        provider.refresh_count(),
        0,
        "a token with 300 s left is not due"
    );
    provider.clock().advance(Duration::from_secs(200));
    eventually("the sweep refreshed the token", || {
        provider.refresh_count() == 1
    })
    .await;
    assert_eq!(browser.user().await.status, 200);
    assert_eq!(
        provider.refresh_count(),
        1,
        "the request found a fresh token"
    );
}

#[tokio::test]
async fn the_sweep_follows_rotating_refresh_tokens() {
    let (provider, gateway) = started().await;
    provider.rotate_refresh_tokens(true);
    let mut browser = gateway.browser();
    browser.login_ok().await;
    for round in 1..=3 {
        provider.clock().advance(Duration::from_secs(200));
        eventually("another sweep refresh", || {
            provider.refresh_count() == round
        })
        .await;
    }
    assert!(
        browser.is_auth().await,
        "each rotated token was used for the next refresh"
    );
}

#[tokio::test]
async fn a_dead_grant_found_by_the_sweep_ends_the_session() {
    let (provider, gateway) = started().await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    provider.fail_next_refresh(RefreshFailure::InvalidGrant);
    provider.clock().advance(Duration::from_secs(200));
    eventually("the sweep tried", || provider.refresh_count() == 1).await;
    for _ in 0..50 {
        if !browser.is_auth().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the session survived invalid_grant");
}

#[tokio::test]
async fn a_provider_outage_keeps_sessions_and_a_later_sweep_succeeds() {
    let (provider, gateway) = started().await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    provider.set_down(true);
    provider.clock().advance(Duration::from_secs(200));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(browser.is_auth().await, "an outage ends no session");
    assert_eq!(provider.refresh_count(), 0, "the provider was down");
    provider.set_down(false);
    // Past the per-session backoff (2 s after the first failure), still before expiry.
    provider.clock().advance(Duration::from_secs(60));
    eventually("a sweep after the outage refreshed", || {
        provider.refresh_count() == 1
    })
    .await;
    assert!(browser.is_auth().await);
}

#[tokio::test]
async fn many_due_sessions_are_refreshed_with_bounded_concurrency() {
    let (provider, gateway) = setup(&[
        "--refresh-interval",
        "100ms",
        "--refresh-ahead",
        "2m",
        "--refresh-concurrency",
        "4",
    ])
    .await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let mut browser = gateway.browser();
        tasks.push(tokio::spawn(async move { browser.login_ok().await }));
    }
    for task in tasks {
        task.await.expect("login");
    }
    provider.set_token_delay(Duration::from_millis(20));
    provider.reset_max_concurrency();
    provider.clock().advance(Duration::from_secs(200));
    eventually("all 100 refreshed", || provider.refresh_count() == 100).await;
    let max = provider.max_concurrent_token_requests();
    assert!(max <= 4, "at most 4 refreshes at once, saw {max}");
    assert!(max >= 2, "refreshes ran in parallel, saw {max}");
}

/// The value of an unlabelled sample in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn a_session_ends_once_its_refresh_token_has_expired_and_the_sweep_removes_it() {
    let (provider, gateway) =
        setup(&["--sweep-interval", "100ms", "--refresh-interval", "1h"]).await;
    provider.set_token_ttl(60);
    provider.set_refresh_token_ttl(600);
    provider.rotate_refresh_tokens(true);
    let mut browser = gateway.browser();
    browser.login_ok().await;

    // Used often (never idle), far inside the 7-day lifetime: what ends it is the refresh token.
    provider.clock().advance(Duration::from_secs(50));
    assert_eq!(browser.user().await.status, 200, "refreshed on demand");
    assert_eq!(provider.refresh_count(), 1);
    // The rotated refresh token expires 600 s after that refresh, not after the login.
    provider.clock().advance(Duration::from_secs(570));
    assert!(
        browser.is_auth().await,
        "the new refresh token is still valid"
    );
    assert_eq!(
        sample(&gateway.metrics().await, "oidc_bff_sessions"),
        Some(1.0)
    );

    // Refresh token expired and access token gone. Nothing touches the session now: the
    // eviction sweep alone finds and removes it.
    provider.clock().advance(Duration::from_secs(40));
    let mut evicted = false;
    for _ in 0..250 {
        let text = gateway.metrics().await;
        if sample(&text, "oidc_bff_sessions") == Some(0.0)
            && sample(&text, "oidc_bff_sessions_evicted_total") == Some(1.0)
        {
            evicted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        evicted,
        "the eviction sweep removed the session from the store"
    );
}
