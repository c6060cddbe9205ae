use std::time::Duration;

use crate::support::{Browser, setup};

#[tokio::test]
async fn login_turns_is_auth_from_false_to_true_and_logout_back() {
    let (provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    assert!(!browser.is_auth().await);

    let callback = browser.login("/orders/42?tab=2").await;
    assert_eq!(callback.status, 302, "{}", callback.body);
    assert_eq!(
        callback.location(),
        "/orders/42?tab=2",
        "back to the deep link"
    );
    assert!(browser.is_auth().await);

    let user = browser.user().await;
    assert_eq!(user.status, 200, "{}", user.body);
    let user = user.json();
    assert_eq!(user["sub"], "alice");
    assert_eq!(user["name"], "Alice Example");
    assert_eq!(user["email"], "alice@example.com");
    assert!(user["sessionExpiresIn"].as_u64().expect("seconds") > 0);
    let logout_url = user["logoutUrl"].as_str().expect("logoutUrl").to_owned();
    assert!(logout_url.starts_with("/logout?sid="));

    let logout = browser.get(&logout_url, &[]).await;
    assert_eq!(logout.status, 302);
    let location = url::Url::parse(&logout.location()).expect("end-session URL");
    assert_eq!(location.path(), "/end-session");
    let params: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert!(params.contains_key("id_token_hint"));
    assert_eq!(
        params["post_logout_redirect_uri"],
        format!("{}/", gateway.base)
    );
    assert_eq!(
        provider.revoked().len(),
        1,
        "refresh token revoked at the provider"
    );
    assert!(!browser.is_auth().await);
    assert_eq!(browser.user().await.status, 401);
}

#[tokio::test]
async fn the_authorization_request_uses_pkce_state_nonce_and_the_configured_scopes() {
    let (provider, gateway) = setup(&["--scopes", "email", "--auth-param", "prompt=consent"]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    browser.login_ok().await;
    let requests = provider.authorize_requests();
    let (first, second) = (&requests[0], &requests[1]);
    assert_eq!(first["response_type"], "code");
    assert_eq!(first["code_challenge_method"], "S256");
    assert_eq!(first["scope"], "openid email");
    assert_eq!(first["prompt"], "consent");
    assert_eq!(
        first["redirect_uri"],
        format!("{}/signin-oidc", gateway.base)
    );
    assert!(first["state"].len() >= 43 && first["nonce"].len() >= 43);
    assert_ne!(first["state"], second["state"]);
    assert_ne!(first["nonce"], second["nonce"]);
    assert_ne!(first["code_challenge"], second["code_challenge"]);
}

#[tokio::test]
async fn cookies_carry_the_attributes_a_bff_needs() {
    let (_provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    let login = browser.get("/login", &[]).await;
    let flow = login.set_cookies();
    assert_eq!(flow.len(), 1);
    assert!(flow[0].starts_with("__Host-bff-flow="));
    for attribute in [
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Max-Age=600",
    ] {
        assert!(flow[0].contains(attribute), "{attribute} in {}", flow[0]);
    }

    let authorize = login.location();
    let callback_url = browser.authorize(&authorize).await;
    let callback = browser.get(&callback_url, &[]).await;
    let session = callback
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-bff="))
        .expect("session cookie");
    for attribute in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(session.contains(attribute), "{attribute} in {session}");
    }
    assert!(!session.to_ascii_lowercase().contains("domain"));
    let value = session["__Host-bff=".len()..]
        .split(';')
        .next()
        .expect("value");
    assert_eq!(
        value.len(),
        54,
        "creation time and 256 random bits in base64url"
    );
    assert!(
        callback
            .set_cookies()
            .iter()
            .any(|c| c.starts_with("__Host-bff-flow=") && c.contains("Max-Age=0")),
        "the used login flow is cleared"
    );
}

#[tokio::test]
async fn cookie_name_and_same_site_can_be_changed() {
    let (_provider, gateway) =
        setup(&["--cookie-name", "__Host-app", "--cookie-same-site", "lax"]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    let session = browser.jar.get("__Host-app").expect("renamed cookie");
    assert_eq!(session.len(), 54);
    let callback_cookies: Vec<String> = browser.seen.iter().flat_map(|r| r.set_cookies()).collect();
    assert!(
        callback_cookies
            .iter()
            .any(|c| c.starts_with("__Host-app=") && c.contains("SameSite=Lax"))
    );
}

#[tokio::test]
async fn every_login_gets_a_new_session_key_and_the_old_session_ends() {
    let (_provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    let first = browser.jar["__Host-bff"].clone();
    browser.login_ok().await;
    let second = browser.jar["__Host-bff"].clone();
    assert_ne!(first, second);
    let mut stale = gateway.browser();
    stale.jar.insert("__Host-bff".into(), first);
    assert!(!stale.is_auth().await, "the replaced session is gone");
}

#[tokio::test]
async fn no_token_reaches_the_browser() {
    let (provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    browser.user().await;
    let logout_url = browser.user().await.json()["logoutUrl"]
        .as_str()
        .expect("logoutUrl")
        .to_owned();
    let secrets = provider.issued_secrets();
    assert!(secrets.len() >= 3);
    // The logout redirect carries the ID token to the provider as id_token_hint, by design of
    // RP-initiated logout; every other response must be free of tokens.
    for reply in &browser.seen {
        let mut visible = reply.body.clone();
        for (name, value) in &reply.headers {
            visible.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or_default()));
        }
        for secret in &secrets {
            assert!(
                !visible.contains(secret.as_str()),
                "token leaked in {visible}"
            );
        }
    }
    let logout = browser.get(&logout_url, &[]).await;
    for secret in &secrets {
        assert!(!logout.body.contains(secret.as_str()));
        assert!(
            !logout
                .set_cookies()
                .iter()
                .any(|c| c.contains(secret.as_str()))
        );
    }
}

#[tokio::test]
async fn user_needs_a_session_and_the_csrf_header() {
    let (_provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    let anonymous = browser.get("/api/user", &[("x-csrf", "1")]).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json()["error"], "no session");
    browser.login_ok().await;
    assert_eq!(browser.get("/api/user", &[]).await.status, 403);
    assert_eq!(
        browser.get("/api/user", &[("x-csrf", "0")]).await.status,
        403
    );
    assert_eq!(browser.user().await.status, 200);
}

#[tokio::test]
async fn logout_with_a_wrong_sid_is_refused_and_keeps_the_session() {
    let (provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    for url in [
        "/logout",
        "/logout?sid=wrong",
        "/logout?sid=AAAAAAAAAAAAAAAAAAAAAA",
    ] {
        assert_eq!(browser.get(url, &[]).await.status, 400, "{url}");
    }
    assert!(browser.is_auth().await);
    assert!(provider.revoked().is_empty());
}

#[tokio::test]
async fn unknown_and_malformed_session_cookies_are_no_session_and_get_cleared() {
    let (_provider, gateway) = setup(&[]).await;
    for value in ["garbage", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", ""] {
        let mut browser = gateway.browser();
        browser.jar.insert("__Host-bff".into(), value.into());
        let reply = browser.get("/api/isAuth", &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "false");
        assert!(
            reply
                .set_cookies()
                .iter()
                .any(|c| c.starts_with("__Host-bff=;") && c.contains("Max-Age=0")),
            "cookie {value:?} cleared"
        );
    }
}

#[tokio::test]
async fn is_auth_is_never_cached_and_never_401() {
    let (_provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    let reply = browser.get("/api/isAuth", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.headers["cache-control"], "no-store");
    assert!(reply.headers.contains_key("strict-transport-security"));
}

#[tokio::test]
async fn a_session_survives_a_restart_of_the_gateway() {
    let (_provider, mut gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    let jar = browser.jar.clone();
    gateway.restart().await;
    let mut after = Browser::new(&gateway.base, &gateway.certs);
    after.jar = jar;
    assert!(after.is_auth().await, "session read back from redb");
    // The ID token is stored apart from the session: after the restart, the claims and the
    // logout hint come from it.
    let user = after.user().await.json();
    assert_eq!(user["sub"], "alice");
    assert_eq!(user["name"], "Alice Example");
    assert_eq!(user["email"], "alice@example.com");
    let logout_url = user["logoutUrl"].as_str().expect("logoutUrl").to_owned();
    let logout = after.get(&logout_url, &[]).await;
    assert_eq!(logout.status, 302);
    let location = url::Url::parse(&logout.location()).expect("end-session URL");
    let params: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert!(params.contains_key("id_token_hint"));
    assert!(!after.is_auth().await);
}

#[tokio::test]
async fn idle_sessions_end_but_is_auth_polling_does_not_keep_them_alive() {
    let (provider, gateway) = setup(&["--idle-timeout", "30m"]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    for _ in 0..5 {
        provider.clock().advance(Duration::from_secs(5 * 60));
        assert!(browser.is_auth().await);
    }
    provider.clock().advance(Duration::from_secs(6 * 60));
    assert!(
        !browser.is_auth().await,
        "polling isAuth did not slide the idle timeout"
    );
}

#[tokio::test]
async fn sessions_end_at_their_absolute_lifetime() {
    let (provider, gateway) = setup(&["--session-lifetime", "1h"]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    provider.clock().advance(Duration::from_secs(3_599));
    assert!(browser.is_auth().await);
    provider.clock().advance(Duration::from_secs(1));
    assert!(!browser.is_auth().await);
}

#[tokio::test]
async fn the_gateways_own_pages_cannot_be_framed_and_leak_no_referrer() {
    let (_provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    let callback = browser
        .seen
        .iter()
        .find(|reply| {
            reply
                .set_cookies()
                .iter()
                .any(|cookie| cookie.starts_with("__Host-bff="))
        })
        .expect("the callback's answer");
    assert_eq!(callback.headers["cache-control"], "no-store");
    assert_eq!(callback.headers["referrer-policy"], "no-referrer");
    for reply in [
        browser.get("/api/isAuth", &[]).await,
        browser.get("/healthz", &[]).await,
        browser.get("/missing", &[]).await,
        browser.get("/a/%2e%2e/b", &[]).await,
    ] {
        assert_eq!(
            reply.headers["content-security-policy"],
            "frame-ancestors 'none'"
        );
        assert_eq!(reply.headers["x-frame-options"], "DENY");
        assert_eq!(reply.headers["referrer-policy"], "no-referrer");
    }

    let (_provider, gateway) = setup(&[
        "--frame-ancestors",
        "https://portal.example.com/",
        "--frame-ancestors",
        "'self'",
    ])
    .await;
    let reply = gateway.browser().get("/api/isAuth", &[]).await;
    assert_eq!(
        reply.headers["content-security-policy"],
        "frame-ancestors https://portal.example.com 'self'"
    );
    assert!(!reply.headers.contains_key("x-frame-options"));
}
