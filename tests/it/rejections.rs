use crate::support::{Tamper, setup};

/// Asserts a callback was refused with a plain 400 and left no session behind.
async fn assert_refused(browser: &mut crate::support::Browser, callback: &str) {
    let reply = browser.get(callback, &[]).await;
    assert_eq!(
        reply.status, 400,
        "callback {callback} answered {}",
        reply.body
    );
    assert!(
        reply.headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain")
    );
    assert!(
        !reply
            .set_cookies()
            .iter()
            .any(|c| c.starts_with("__Host-bff=") && !c.contains("Max-Age=0"))
    );
    assert!(
        !browser.is_auth().await,
        "no session after a refused callback"
    );
}

fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("url");
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .into_owned()
        .filter(|(key, _)| key != name)
        .collect();
    parsed
        .query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair(name, value);
    parsed.to_string()
}

#[tokio::test]
async fn a_wrong_or_missing_state_is_refused() {
    let (_provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    let authorize = browser.start_login("/").await;
    let callback = browser.authorize(&authorize).await;
    assert_refused(&mut browser, &with_param(&callback, "state", "forged")).await;
    let mut no_state = url::Url::parse(&callback).expect("url");
    let code_only: Vec<(String, String)> = no_state
        .query_pairs()
        .into_owned()
        .filter(|(key, _)| key == "code")
        .collect();
    no_state.query_pairs_mut().clear().extend_pairs(code_only);
    assert_refused(&mut browser, no_state.as_str()).await;
}

#[tokio::test]
async fn a_callback_replayed_in_another_browser_is_refused() {
    let (_provider, gateway) = setup(&[]).await;
    let mut victim = gateway.browser();
    let mut attacker = gateway.browser();
    // The attacker starts a login and makes the victim's browser finish it (login CSRF), or
    // steals a victim's callback URL and replays it: either way the flow cookie is missing.
    let authorize = attacker.start_login("/").await;
    let callback = attacker.authorize(&authorize).await;
    assert_refused(&mut victim, &callback).await;
}

#[tokio::test]
async fn a_tampered_flow_cookie_is_refused() {
    let (_provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    let authorize = browser.start_login("/").await;
    let callback = browser.authorize(&authorize).await;
    let flow = browser.jar.get_mut("__Host-bff-flow").expect("flow cookie");
    let mut bytes = flow.clone().into_bytes();
    bytes[20] = if bytes[20] == b'A' { b'B' } else { b'A' };
    *flow = String::from_utf8(bytes).expect("ascii");
    assert_refused(&mut browser, &callback).await;
}

#[tokio::test]
async fn a_callback_cannot_be_used_twice() {
    let (_provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    let authorize = browser.start_login("/").await;
    let callback = browser.authorize(&authorize).await;
    let first = browser.get(&callback, &[]).await;
    assert_eq!(first.status, 302);
    let mut other = gateway.browser();
    assert_refused(&mut other, &callback).await;
    // Same browser, same URL again: the login was consumed.
    let again = browser.get(&callback, &[]).await;
    assert_eq!(again.status, 400);
}

#[tokio::test]
async fn a_reused_code_is_refused_by_the_exchange() {
    let (_provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    let first_authorize = browser.start_login("/").await;
    let first_callback = browser.authorize(&first_authorize).await;
    assert_eq!(browser.get(&first_callback, &[]).await.status, 302);
    // A fresh login in the same browser, fed the already redeemed code.
    let mut fresh = gateway.browser();
    let authorize = fresh.start_login("/").await;
    let callback = fresh.authorize(&authorize).await;
    let old_code = url::Url::parse(&first_callback)
        .expect("url")
        .query_pairs()
        .find(|(key, _)| key == "code")
        .expect("code")
        .1
        .into_owned();
    assert_refused(&mut fresh, &with_param(&callback, "code", &old_code)).await;
}

#[tokio::test]
async fn an_access_token_that_cannot_be_a_bearer_header_is_refused_at_login() {
    let (provider, gateway) = setup(&[]).await;
    // Relayed as is, this would inject a header into every upstream request.
    provider.tamper(Tamper::AccessToken("at\r\nX-Injected: 1".into()));
    let mut browser = gateway.browser();
    let reply = browser.login("/").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(!reply.body.contains("X-Injected"), "{}", reply.body);
    assert!(!browser.is_auth().await);
    // Every character RFC 6750 allows in a bearer token still logs in.
    provider.tamper(Tamper::AccessToken("aZ09-._~+/==".into()));
    let mut browser = gateway.browser();
    assert_eq!(browser.login("/").await.status, 302);
    assert!(browser.is_auth().await);
}

#[tokio::test]
async fn a_nonce_mismatch_is_refused() {
    let (provider, gateway) = setup(&[]).await;
    provider.tamper(Tamper::Nonce("not-the-login-nonce".into()));
    let mut browser = gateway.browser();
    let reply = browser.login("/").await;
    assert_eq!(reply.status, 400);
    assert!(!browser.is_auth().await);
}

#[tokio::test]
async fn a_provider_error_response_is_refused() {
    let (_provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    let authorize = browser.start_login("/").await;
    let state = url::Url::parse(&authorize)
        .expect("url")
        .query_pairs()
        .find(|(key, _)| key == "state")
        .expect("state")
        .1
        .into_owned();
    let callback = format!(
        "{}/signin-oidc?error=access_denied&state={state}",
        gateway.base
    );
    assert_refused(&mut browser, &callback).await;
}

#[tokio::test]
async fn open_redirect_return_urls_are_refused() {
    let (_provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    for bad in [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example",
        "\\\\evil.example",
        "evil.example",
        "javascript:alert(1)",
        "/%0d%0aSet-Cookie:x=1",
    ] {
        let encoded: String = url::form_urlencoded::byte_serialize(bad.as_bytes()).collect();
        let reply = browser
            .get(&format!("/login?returnUrl={encoded}"), &[])
            .await;
        if bad.starts_with("/%") {
            // Percent-escapes stay escaped in a local path: harmless, and accepted.
            assert_eq!(reply.status, 302, "{bad}");
            continue;
        }
        assert_eq!(reply.status, 400, "{bad} must be refused");
        assert!(reply.set_cookies().is_empty(), "no flow started for {bad}");
    }
    let reply = browser
        .get("/login?returnUrl=%2Fa&returnUrl=//evil", &[])
        .await;
    assert_eq!(reply.status, 400, "repeated returnUrl");
}

#[tokio::test]
async fn the_return_url_cannot_inject_headers() {
    let (_provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    let reply = browser
        .get("/login?returnUrl=/a%0d%0aX-Injected:1", &[])
        .await;
    assert_eq!(reply.status, 400, "control characters are refused");
}

#[tokio::test]
async fn an_iss_parameter_from_another_issuer_is_refused() {
    let (provider, gateway) = setup(&[]).await;
    provider.advertise_iss_parameter(false, Some("https://evil.example"));
    let mut browser = gateway.browser();
    assert_eq!(browser.login("/").await.status, 400);
    assert!(!browser.is_auth().await);
}

#[tokio::test]
async fn an_advertised_iss_parameter_is_required_and_accepted_when_right() {
    let clock = std::sync::Arc::new(oidc_bff::clock::ManualClock::starting_now());
    let provider = crate::support::FakeProvider::start(clock).await;
    // Advertised in discovery, which the gateway reads at start.
    provider.advertise_iss_parameter(true, None);
    let gateway = crate::support::TestGateway::start(&provider, &[]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;

    // A response that drops `iss` although the provider promised it (a mix-up attempt).
    let mut other = gateway.browser();
    let authorize = other.start_login("/").await;
    let callback = other.authorize(&authorize).await;
    let mut stripped = url::Url::parse(&callback).expect("url");
    let kept: Vec<(String, String)> = stripped
        .query_pairs()
        .into_owned()
        .filter(|(key, _)| key != "iss")
        .collect();
    stripped.query_pairs_mut().clear().extend_pairs(kept);
    assert_refused(&mut other, stripped.as_str()).await;
}

#[tokio::test]
async fn many_abandoned_logins_do_not_grow_the_cookie_header() {
    let (_provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    let long_path = format!("/{}", "p".repeat(1_000));
    for _ in 0..40 {
        browser.start_login(&long_path).await;
    }
    let cookie_bytes: usize = browser.jar.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    assert!(
        cookie_bytes < 4_096,
        "cookie header stays bounded: {cookie_bytes} bytes"
    );
    // The newest login still completes.
    let authorize = browser.start_login("/done").await;
    let callback = browser.authorize(&authorize).await;
    let reply = browser.get(&callback, &[]).await;
    assert_eq!(reply.status, 302);
    assert_eq!(reply.location(), "/done");
}

#[tokio::test]
async fn a_login_flow_expires_after_ten_minutes() {
    let (provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    let authorize = browser.start_login("/").await;
    let callback = browser.authorize(&authorize).await;
    provider
        .clock()
        .advance(std::time::Duration::from_secs(601));
    assert_refused(&mut browser, &callback).await;
}
