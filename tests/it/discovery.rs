use std::sync::Arc;
use std::time::Duration;

use oidc_bff::clock::ManualClock;

use crate::support::certs::TestCerts;
use crate::support::{Browser, FakeProvider, TestGateway};

#[tokio::test]
async fn the_gateway_starts_while_the_provider_is_down_and_recovers() {
    let provider = FakeProvider::start(Arc::new(ManualClock::starting_now())).await;
    provider.set_down(true);
    let gateway = TestGateway::start_unready(&provider, &[]).await;
    let mut browser = gateway.browser();
    let mut health = browser.get("/healthz", &[]).await;
    for _ in 0..20 {
        if health.status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        health = browser.get("/healthz", &[]).await;
    }
    assert_eq!(health.status, 503);
    assert_eq!(browser.get("/login", &[]).await.status, 503);
    assert!(!browser.is_auth().await, "isAuth still answers");

    provider.set_down(false);
    gateway.wait_ready().await;
    browser.login_ok().await;
}

#[tokio::test]
async fn a_discovery_document_for_another_issuer_is_refused() {
    let provider = FakeProvider::start(Arc::new(ManualClock::starting_now())).await;
    provider.set_discovery_issuer("https://evil.example");
    let gateway = TestGateway::start_unready(&provider, &[]).await;
    let mut browser = gateway.browser();
    // Give discovery time for a first attempt and a retry.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(browser.get("/healthz", &[]).await.status, 503);
    assert_eq!(browser.get("/login", &[]).await.status, 503);
}

#[tokio::test]
async fn an_https_provider_is_trusted_through_ca_file_and_only_then() {
    let provider_certs = TestCerts::new();
    let provider =
        FakeProvider::start_tls(Arc::new(ManualClock::starting_now()), &provider_certs).await;
    assert!(provider.issuer.starts_with("https://"));
    let ca = provider_certs.ca_pem.to_str().expect("utf-8");
    let gateway = TestGateway::start(&provider, &["--ca-file", ca]).await;
    let mut browser = Browser::with_cas(
        &gateway.base,
        vec![gateway.certs.ca_der.clone(), provider_certs.ca_der.clone()],
    );
    browser.login_ok().await;

    let untrusting = TestGateway::start_unready(&provider, &[]).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let mut browser = untrusting.browser();
    assert_eq!(
        browser.get("/healthz", &[]).await.status,
        503,
        "a provider certificate from an unknown CA is not trusted"
    );
}

/// Starts a gateway against a provider whose discovery document has `field` set to `value`,
/// and says whether it became ready.
async fn ready_with_discovery_field(field: &str, value: serde_json::Value) -> bool {
    let provider = FakeProvider::start(Arc::new(ManualClock::starting_now())).await;
    provider.set_discovery_field(field, value);
    let gateway = TestGateway::start_unready(&provider, &[]).await;
    let mut browser = gateway.browser();
    // Give discovery time for a first attempt and a retry.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    browser.get("/healthz", &[]).await.status == 200
}

#[tokio::test]
async fn discovery_without_s256_or_with_a_plain_http_endpoint_is_refused() {
    assert!(
        !ready_with_discovery_field(
            "code_challenge_methods_supported",
            serde_json::json!(["plain"])
        )
        .await,
        "a provider without S256"
    );
    assert!(
        !ready_with_discovery_field(
            "end_session_endpoint",
            serde_json::json!("http://idp.example/logout")
        )
        .await,
        "an end-session endpoint in clear"
    );
    assert!(
        !ready_with_discovery_field(
            "userinfo_endpoint",
            serde_json::json!("http://idp.example/userinfo")
        )
        .await,
        "a userinfo endpoint in clear"
    );
    assert!(
        ready_with_discovery_field(
            "code_challenge_methods_supported",
            serde_json::json!(["plain", "S256"])
        )
        .await,
        "S256 among others"
    );
}

#[tokio::test]
async fn provider_text_cannot_forge_a_log_line() {
    use tokio::io::AsyncReadExt;
    let provider = FakeProvider::start(Arc::new(ManualClock::starting_now())).await;
    // An issuer that parses as a URL (which drops the newline) but is quoted as it came in the
    // mismatch error.
    provider.set_discovery_issuer(
        "https://evil.example/\n2026-12-05 ERROR oidc_bff forged line\r\x1b[2J",
    );
    let certs = TestCerts::new();
    let data = tempfile::tempdir().expect("data dir");
    let port = crate::support::process::Port::bind();
    let mut child = crate::support::process::gateway_command(&provider, &certs, data.path(), &port)
        .env("RUST_LOG", "info")
        .env("OIDC_BFF_LOG_FORMAT", "text")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the binary");
    let mut stderr = child.stderr.take().expect("stderr");
    let mut log = Vec::new();
    // Discovery fails at once and is retried after a second: read about two seconds of log.
    let _ = tokio::time::timeout(Duration::from_millis(2_500), async {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            log.extend_from_slice(&buffer[..n]);
        }
    })
    .await;
    child.kill().await.expect("kill");
    let log = String::from_utf8_lossy(&log);
    assert!(
        log.contains("evil"),
        "the discovery error was logged: {log}"
    );
    assert!(
        !log.lines().any(|line| line.starts_with("2026-12-05 ERROR")),
        "a forged line: {log}"
    );
    assert!(!log.contains('\x1b') && !log.contains('\r'), "{log:?}");
}
