use std::time::Duration;

use crate::support::{RefreshFailure, Tamper, setup};

const EXPIRED: Duration = Duration::from_secs(301);

#[tokio::test]
async fn an_expired_access_token_is_refreshed_before_answering() {
    let (provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    assert_eq!(provider.refresh_count(), 0);
    assert_eq!(browser.user().await.status, 200);
    assert_eq!(
        provider.refresh_count(),
        0,
        "a fresh token is not refreshed"
    );

    provider.clock().advance(EXPIRED);
    assert_eq!(browser.user().await.status, 200);
    assert_eq!(provider.refresh_count(), 1);
    assert_eq!(browser.user().await.status, 200);
    assert_eq!(
        provider.refresh_count(),
        1,
        "the new token is stored and reused"
    );
}

#[tokio::test]
async fn a_token_within_the_skew_is_refreshed_early() {
    let (provider, gateway) = setup(&["--refresh-skew", "60s"]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    provider.clock().advance(Duration::from_secs(239));
    browser.user().await;
    assert_eq!(provider.refresh_count(), 0);
    provider.clock().advance(Duration::from_secs(2));
    browser.user().await;
    assert_eq!(provider.refresh_count(), 1);
}

#[tokio::test]
async fn rotated_refresh_tokens_replace_the_old_ones() {
    let (provider, gateway) = setup(&[]).await;
    provider.rotate_refresh_tokens(true);
    let mut browser = gateway.browser();
    browser.login_ok().await;
    for round in 1..=3 {
        provider.clock().advance(EXPIRED);
        assert_eq!(browser.user().await.status, 200, "round {round}");
        assert!(
            browser.is_auth().await,
            "round {round}: the rotated token worked"
        );
    }
    assert_eq!(provider.refresh_count(), 3);
}

#[tokio::test]
async fn invalid_grant_ends_the_session() {
    let (provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    provider.fail_next_refresh(RefreshFailure::InvalidGrant);
    provider.clock().advance(EXPIRED);
    let reply = browser.user().await;
    assert_eq!(reply.status, 401);
    assert!(!browser.is_auth().await);
}

#[tokio::test]
async fn a_provider_outage_keeps_the_session_and_a_later_refresh_succeeds() {
    let (provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    provider.clock().advance(EXPIRED);
    for status in [500, 502, 503] {
        provider.fail_next_refresh(RefreshFailure::Status(status));
        let reply = browser.user().await;
        assert_eq!(reply.status, 200, "claims still served during a {status}");
        assert!(browser.is_auth().await, "session kept after a {status}");
        // Past the session's backoff step (60 s, 120 s, 240 s with the default interval).
        provider.clock().advance(Duration::from_secs(300));
    }
    let before = provider.refresh_count();
    assert_eq!(browser.user().await.status, 200);
    assert_eq!(provider.refresh_count(), before + 1);
    let grants_before = provider.refresh_count();
    browser.user().await;
    assert_eq!(
        provider.refresh_count(),
        grants_before,
        "refreshed once, then fresh"
    );
}

#[tokio::test]
async fn a_failed_refresh_backs_off_instead_of_retrying_on_every_call() {
    let (provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    provider.clock().advance(EXPIRED);
    provider.fail_next_refresh(RefreshFailure::Status(503));
    assert_eq!(browser.user().await.status, 200);
    let after_failure = provider.refresh_count();
    assert_eq!(after_failure, 1, "one attempt");
    // Twenty calls within the backoff step: none reaches the provider.
    for _ in 0..20 {
        browser.user().await;
    }
    assert_eq!(
        provider.refresh_count(),
        after_failure,
        "calls during the backoff retried the refresh"
    );
    // The step is over: the next call tries again, and succeeds.
    provider.clock().advance(Duration::from_secs(61));
    assert_eq!(browser.user().await.status, 200);
    assert_eq!(provider.refresh_count(), after_failure + 1);
}

#[tokio::test]
async fn a_refreshed_id_token_for_another_subject_ends_the_session() {
    let (provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    provider.tamper_refresh(Tamper::Subject("mallory".into()));
    provider.clock().advance(EXPIRED);
    assert_eq!(browser.user().await.status, 401);
    assert!(!browser.is_auth().await);
}

#[tokio::test]
async fn a_refreshed_access_token_that_cannot_be_a_bearer_header_ends_the_session() {
    let (provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    // Relayed, it would inject a header into every upstream request.
    provider.tamper_refresh(Tamper::AccessToken("at\r\nX-Injected: 1".into()));
    provider.clock().advance(EXPIRED);
    let reply = browser.user().await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert!(!reply.body.contains("X-Injected"));
    assert!(!browser.is_auth().await);
}

#[tokio::test]
async fn a_refreshed_id_token_from_another_issuer_ends_the_session() {
    let (provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    provider.tamper_refresh(Tamper::Issuer("https://evil.example".into()));
    provider.clock().advance(EXPIRED);
    assert_eq!(browser.user().await.status, 401);
    assert!(!browser.is_auth().await);
}

#[tokio::test]
async fn concurrent_requests_share_one_refresh() {
    let (provider, gateway) = setup(&[]).await;
    provider.rotate_refresh_tokens(true);
    let mut browser = gateway.browser();
    browser.login_ok().await;
    provider.clock().advance(EXPIRED);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut clone = gateway.browser();
        clone.jar = browser.jar.clone();
        tasks.push(tokio::spawn(async move { clone.user().await.status }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), 200);
    }
    assert_eq!(
        provider.refresh_count(),
        1,
        "50 concurrent requests, one refresh (a second would reuse a rotated token)"
    );
    assert!(browser.is_auth().await);
}

#[tokio::test]
async fn the_access_token_expiry_comes_from_expires_in() {
    let (provider, gateway) = setup(&[]).await;
    provider.set_token_ttl(60);
    let mut browser = gateway.browser();
    browser.login_ok().await;
    provider.clock().advance(Duration::from_secs(29));
    browser.user().await;
    assert_eq!(provider.refresh_count(), 0);
    provider.clock().advance(Duration::from_secs(2));
    browser.user().await;
    assert_eq!(
        provider.refresh_count(),
        1,
        "60 s token, refreshed 30 s before it ends"
    );
}
