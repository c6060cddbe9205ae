//! Route policies: who may call a route (`--policy`, `policy=`), which token its upstream gets
//! (`token=`), the identity headers, and what `/api/user` says about them.

use oidc_bff::clock::Clock;
use serde_json::{Value, json};

use crate::support::{Browser, FakeProvider, TestGateway, Upstream, setup};

const CSRF: (&str, &str) = ("x-csrf", "1");

/// A gateway with `route` (its `--route` value, `{upstream}` replaced) and `extra` flags.
async fn gateway_with(route: &str, extra: &[&str]) -> (FakeProvider, TestGateway, Upstream) {
    let upstream = Upstream::start().await;
    let route = route.replace("{upstream}", &upstream.url);
    let mut args = vec!["--route", route.as_str()];
    args.extend_from_slice(extra);
    let (provider, gateway) = setup(&args).await;
    (provider, gateway, upstream)
}

async fn signed_in(gateway: &TestGateway) -> Browser {
    let mut browser = gateway.browser();
    browser.login_ok().await;
    browser
}

fn json_body(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

#[tokio::test]
async fn a_policy_refuses_users_without_the_claim_before_anything_goes_upstream() {
    let (provider, gateway, upstream) = gateway_with(
        "/api/OtherApi1={upstream} policy=admins",
        &["--policy", "admins=groups:admin|owner"],
    )
    .await;
    provider.set_claims(json!({"groups": ["staff"]}));
    let mut staff = signed_in(&gateway).await;
    let refused = staff.get("/api/OtherApi1/products", &[CSRF]).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(
        json_body(&refused.body),
        json!({"error": "forbidden", "policy": "admins"})
    );
    assert!(upstream.seen().is_empty(), "nothing went upstream");

    provider.set_claims(json!({"groups": ["staff", "owner"]}));
    let mut owner = signed_in(&gateway).await;
    let allowed = owner.get("/api/OtherApi1/products", &[CSRF]).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(upstream.seen().len(), 1);

    // Without a session a policy route is a 401, as any user route, and the CSRF check still
    // comes first.
    let mut anonymous = gateway.browser();
    assert_eq!(
        anonymous
            .get("/api/OtherApi1/products", &[CSRF])
            .await
            .status,
        401
    );
    assert_eq!(
        owner.get("/api/OtherApi1/products", &[]).await.status,
        403,
        "missing X-CSRF"
    );
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test]
async fn api_user_lists_the_policies_the_user_satisfies() {
    let (provider, gateway, _upstream) = gateway_with(
        "/api/OtherApi1={upstream}",
        &[
            "--policy",
            "admins=groups:admin",
            "--policy",
            "staff=email-domain:example.com",
            "--policy",
            "gold=acr:gold",
        ],
    )
    .await;
    provider.set_claims(json!({"groups": ["admin"], "acr": "silver"}));
    let mut browser = signed_in(&gateway).await;
    let user = browser.get("/api/user", &[CSRF]).await;
    assert_eq!(user.status, 200, "{}", user.body);
    assert_eq!(
        json_body(&user.body)["policies"],
        json!(["admins", "staff"])
    );
}

#[tokio::test]
async fn optional_user_routes_send_the_token_only_when_signed_in() {
    let (provider, gateway, upstream) =
        gateway_with("/api/OtherApi1={upstream} token=optional-user", &[]).await;
    // Not signed in: no 401, no token, and no X-CSRF needed (nothing of a user's is sent).
    let mut visitor = gateway.browser();
    let public = visitor.get("/api/OtherApi1/products", &[]).await;
    assert_eq!(public.status, 200, "{}", public.body);
    assert!(!upstream.seen()[0].headers.contains_key("authorization"));

    let mut user = signed_in(&gateway).await;
    // Signed in, the user's token would go: the CSRF check applies.
    let forged = user.get("/api/OtherApi1/products", &[]).await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert_eq!(
        upstream.seen().len(),
        1,
        "the refused call did not go upstream"
    );
    let call = user.get("/api/OtherApi1/products", &[CSRF]).await;
    assert_eq!(call.status, 200, "{}", call.body);
    assert_eq!(
        upstream.seen()[1].headers["authorization"],
        format!("Bearer {}", provider.last_access_token()).as_str()
    );
}

#[tokio::test]
async fn token_none_routes_need_no_session_and_never_send_one() {
    let (_provider, gateway, upstream) =
        gateway_with("/api/OtherApi1={upstream} token=none", &[]).await;
    let mut user = signed_in(&gateway).await;
    let call = user
        .get(
            "/api/OtherApi1/products",
            &[("authorization", "Bearer forged")],
        )
        .await;
    assert_eq!(call.status, 200, "{}", call.body);
    let seen = upstream.seen();
    assert!(!seen[0].headers.contains_key("authorization"));
    let cookies = seen[0]
        .headers
        .get("cookie")
        .map(|value| value.to_str().expect("text").to_owned())
        .unwrap_or_default();
    assert!(!cookies.contains("__Host-bff"), "{cookies}");
}

#[tokio::test]
async fn identity_headers_carry_the_users_claims_and_spoofed_ones_never_pass() {
    let upstream = Upstream::start().await;
    let identity = format!("/api/Identity={} identity-headers=on", upstream.url);
    // No token, but the user's identity: still only with the CSRF header.
    let identity_only = format!("/api/Who={} token=none identity-headers=on", upstream.url);
    let plain = format!("/api/Plain={}", upstream.url);
    let (provider, gateway) = setup(&[
        "--route",
        &identity,
        "--route",
        &plain,
        "--route",
        &identity_only,
    ])
    .await;
    provider.set_claims(json!({
        "preferred_username": "alice",
        "groups": ["staff", "admin"],
    }));
    let mut browser = signed_in(&gateway).await;
    let spoofed = [
        CSRF,
        ("x-auth-request-user", "root"),
        ("x-auth-request-email", "root@example.com"),
        ("x-auth-request-groups", "admin"),
    ];
    assert_eq!(browser.get("/api/Identity/me", &spoofed).await.status, 200);
    assert_eq!(browser.get("/api/Plain/me", &spoofed).await.status, 200);
    let seen = upstream.seen();
    let header = |index: usize, name: &str| {
        seen[index]
            .headers
            .get(name)
            .map(|value| value.to_str().expect("text").to_owned())
    };
    let sub = header(0, "x-auth-request-user").expect("sub");
    assert_ne!(sub, "root");
    assert!(!sub.is_empty());
    assert_eq!(
        header(0, "x-auth-request-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        header(0, "x-auth-request-preferred-username").as_deref(),
        Some("alice")
    );
    assert_eq!(
        header(0, "x-auth-request-groups").as_deref(),
        Some("staff,admin")
    );
    for name in [
        "x-auth-request-user",
        "x-auth-request-email",
        "x-auth-request-groups",
    ] {
        assert_eq!(header(1, name), None, "{name} reached a plain route");
    }
    assert_eq!(
        browser.get("/api/Who/me", &[]).await.status,
        403,
        "no X-CSRF"
    );
    assert_eq!(browser.get("/api/Who/me", &[CSRF]).await.status, 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3, "the refused call did not go upstream");
    assert_eq!(
        seen[2].headers["x-auth-request-user"]
            .to_str()
            .expect("text"),
        sub
    );
    assert!(!seen[2].headers.contains_key("authorization"));
    let mut visitor = gateway.browser();
    assert_eq!(
        visitor.get("/api/Who/me", &[]).await.status,
        200,
        "no session: no identity"
    );
    assert!(
        !upstream.seen()[3]
            .headers
            .contains_key("x-auth-request-user")
    );
}

#[tokio::test]
async fn a_yarp_file_with_duende_metadata_and_its_own_policies_loads_and_applies() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("appsettings.json");
    let config = json!({
        "Logging": {"LogLevel": {"Default": "Information"}},
        "ReverseProxy": {
            "oidc-bff.Policies": {"admins": ["groups:admin"]},
            "Routes": {
                "public": {
                    "ClusterId": "api",
                    "Match": {"Path": "/api/public/{**rest}"},
                    "Metadata": {"Duende.Bff.Yarp.TokenType": "UserOrNone"},
                    "Transforms": [{"PathRemovePrefix": "/api/public"}]
                },
                "admin": {
                    "ClusterId": "api",
                    "Match": {"Path": "/api/admin/{**rest}"},
                    "AuthorizationPolicy": "admins",
                    "Metadata": {
                        "Duende.Bff.Yarp.TokenType": "User",
                        "Duende.Bff.Yarp.AntiforgeryCheck": "true"
                    },
                    "Transforms": [{"PathRemovePrefix": "/api/admin"}]
                }
            },
            "Clusters": {
                "api": {"Destinations": {"one": {"Address": upstream.url}}}
            }
        }
    });
    std::fs::write(&file, config.to_string()).expect("write");
    let (provider, gateway) = setup(&["--proxy-config", file.to_str().expect("utf-8")]).await;
    let mut visitor = gateway.browser();
    assert_eq!(visitor.get("/api/public/items", &[]).await.status, 200);
    provider.set_claims(json!({"groups": ["staff"]}));
    let mut staff = signed_in(&gateway).await;
    let refused = staff.get("/api/admin/items", &[CSRF]).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(json_body(&refused.body)["policy"], "admins");
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test]
async fn a_policy_that_needs_a_stronger_sign_in_asks_for_a_step_up_the_app_can_follow() {
    let (provider, gateway, upstream) = gateway_with(
        "/api/OtherApi1={upstream} policy=strong",
        &["--policy", "strong=acr:gold|platinum,auth-age:600s"],
    )
    .await;
    provider.set_claims(json!({"acr": "silver", "auth_time": provider.clock().unix_now()}));
    let mut browser = signed_in(&gateway).await;
    let asked = browser.get("/api/OtherApi1/orders", &[CSRF]).await;
    assert_eq!(asked.status, 401, "{}", asked.body);
    assert_eq!(
        asked.headers["www-authenticate"],
        r#"Bearer error="insufficient_user_authentication", acr_values="gold platinum""#
    );
    let body = json_body(&asked.body);
    assert_eq!(body["error"], "insufficient_user_authentication");
    assert_eq!(body["policy"], "strong");
    let login_url = body["loginUrl"].as_str().expect("loginUrl").to_owned();
    assert_eq!(login_url, "/login?returnUrl=%2F&acr_values=gold+platinum");
    assert!(upstream.seen().is_empty(), "nothing went upstream");

    // The app follows loginUrl; the provider is asked for gold or platinum and signs the user
    // in again, more strongly.
    let authorize = {
        let reply = browser.get(&login_url, &[]).await;
        assert_eq!(reply.status, 302, "{}", reply.body);
        reply.location()
    };
    assert_eq!(query_of(&authorize)["acr_values"], "gold platinum");
    provider.set_claims(json!({"acr": "gold", "auth_time": provider.clock().unix_now()}));
    let callback = browser.authorize(&authorize).await;
    assert_eq!(browser.get(&callback, &[]).await.status, 302);
    let allowed = browser.get("/api/OtherApi1/orders", &[CSRF]).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);

    // Ten minutes on, the sign-in is too old: a step-up asking for a fresh one.
    provider
        .clock()
        .advance(std::time::Duration::from_secs(601));
    let stale = browser.get("/api/OtherApi1/orders", &[CSRF]).await;
    assert_eq!(stale.status, 401, "{}", stale.body);
    assert_eq!(
        stale.headers["www-authenticate"],
        r#"Bearer error="insufficient_user_authentication", max_age=600"#
    );
}

#[tokio::test]
async fn login_passes_on_only_the_parameters_it_may_and_checks_each() {
    let (_provider, gateway, _upstream) = gateway_with(
        "/api/OtherApi1={upstream}",
        &[
            "--policy",
            "strong=acr:gold",
            "--auth-param",
            "prompt=consent",
        ],
    )
    .await;
    let mut browser = gateway.browser();
    let reply = browser
        .get(
            "/login?returnUrl=%2F&prompt=login&max_age=0&login_hint=alice%40example.com",
            &[],
        )
        .await;
    assert_eq!(reply.status, 302, "{}", reply.body);
    let asked = query_of(&reply.location());
    assert_eq!(
        asked["prompt"], "login",
        "the sign-in's prompt replaces --auth-param's"
    );
    assert_eq!(asked["max_age"], "0");
    assert_eq!(asked["login_hint"], "alice@example.com");
    for query in [
        "prompt=evil",
        "prompt=none%20login",
        "max_age=5m",
        "acr_values=platinum",
        "login_hint=a%0d%0aSet-Cookie:x",
        "redirect_uri=https%3A%2F%2Fevil.example",
        "scope=openid%20admin",
        "response_type=token",
        "max_age=1&max_age=2",
    ] {
        let refused = browser.get(&format!("/login?{query}"), &[]).await;
        assert_eq!(refused.status, 400, "{query}: {}", refused.body);
        assert!(
            !refused.headers.contains_key("location"),
            "{query}: no redirect to the provider"
        );
    }
}

/// The query parameters of a URL.
fn query_of(url: &str) -> std::collections::HashMap<String, String> {
    url::Url::parse(url)
        .expect("url")
        .query_pairs()
        .into_owned()
        .collect()
}

#[tokio::test]
async fn scope_rules_follow_the_scope_granted_to_the_token_at_login_and_at_refresh() {
    let (provider, gateway, upstream) = gateway_with(
        "/api/OtherApi1={upstream} policy=orders",
        &[
            "--policy",
            "orders=scope:orders.read",
            "--scopes",
            "openid orders.read",
        ],
    )
    .await;
    // The provider says nothing about scope: the token has the scope asked for (RFC 6749 §5.1).
    let mut browser = signed_in(&gateway).await;
    let call = browser.get("/api/OtherApi1/products", &[CSRF]).await;
    assert_eq!(call.status, 200, "{}", call.body);
    // A `scope` claim in the ID token grants nothing.
    provider.set_claims(json!({"scope": "orders.read"}));
    provider.set_granted_scope(Some("openid"));
    let mut narrowed = signed_in(&gateway).await;
    let refused = narrowed.get("/api/OtherApi1/products", &[CSRF]).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(json_body(&refused.body)["policy"], "orders");
    // A refresh that narrows the scope narrows what the first session may call.
    provider
        .clock()
        .advance(std::time::Duration::from_secs(290));
    let after = browser.get("/api/OtherApi1/products", &[CSRF]).await;
    assert_eq!(after.status, 403, "{}", after.body);
    assert_eq!(provider.refresh_count(), 1);
    // One that names it again restores it.
    provider.set_granted_scope(Some("openid orders.read"));
    provider
        .clock()
        .advance(std::time::Duration::from_secs(290));
    let restored = browser.get("/api/OtherApi1/products", &[CSRF]).await;
    assert_eq!(restored.status, 200, "{}", restored.body);
    assert_eq!(upstream.seen().len(), 2);
}

fn bearer_of(seen: &crate::support::upstream::Seen) -> Option<String> {
    seen.headers
        .get("authorization")
        .map(|value| value.to_str().expect("text").to_owned())
}

#[tokio::test]
async fn client_token_routes_send_the_gateways_own_token_fetched_once_and_shared() {
    let (provider, gateway, upstream) = gateway_with(
        "/api/OtherApi1={upstream} token=client scope=catalog.read",
        &["--client-scopes", "unused.default"],
    )
    .await;
    // No session, no X-CSRF: nothing of a user's is sent.
    let mut visitor = gateway.browser();
    let mut user = signed_in(&gateway).await;
    let mut concurrent = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut browser = gateway.browser();
        concurrent.spawn(async move { browser.get("/api/OtherApi1/products", &[]).await.status });
    }
    let calls = concurrent.join_all().await;
    assert!(calls.iter().all(|status| *status == 200), "{calls:?}");
    assert_eq!(
        visitor.get("/api/OtherApi1/products", &[]).await.status,
        200
    );
    // A signed-in user's call gets the same client token, never the user's.
    assert_eq!(
        user.get("/api/OtherApi1/products", &[CSRF]).await.status,
        200
    );
    let grants = provider.client_grants();
    assert_eq!(
        grants.len(),
        1,
        "one grant shared by every caller: {grants:?}"
    );
    assert_eq!(grants[0].0, "catalog.read", "the route's scope");
    let expected = format!("Bearer {}", grants[0].1);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 10);
    assert!(
        seen.iter()
            .all(|s| bearer_of(s).as_deref() == Some(expected.as_str()))
    );
    assert!(seen.iter().all(|s| !s.headers.contains_key("cookie")));
    // Renewed within the refresh skew of its expiry (300 s tokens, 30 s skew), once.
    provider
        .clock()
        .advance(std::time::Duration::from_secs(275));
    assert_eq!(
        visitor.get("/api/OtherApi1/products", &[]).await.status,
        200
    );
    assert_eq!(
        visitor.get("/api/OtherApi1/products", &[]).await.status,
        200
    );
    let grants = provider.client_grants();
    assert_eq!(grants.len(), 2, "{grants:?}");
    assert_eq!(
        bearer_of(&upstream.seen()[11]),
        Some(format!("Bearer {}", grants[1].1))
    );
    // The gateway's token never reaches a user: not in /api/user, not in any answer.
    let me = user.get("/api/user", &[CSRF]).await;
    assert!(!me.body.contains(&grants[1].1));
}

#[tokio::test]
async fn user_or_client_routes_send_the_users_token_when_signed_in_else_the_clients() {
    let (provider, gateway, upstream) = gateway_with(
        "/api/OtherApi1={upstream} token=user-or-client",
        &["--client-scopes", "catalog.read catalog.list"],
    )
    .await;
    let mut visitor = gateway.browser();
    assert_eq!(
        visitor.get("/api/OtherApi1/products", &[]).await.status,
        200
    );
    let grants = provider.client_grants();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].0, "catalog.list catalog.read", "--client-scopes");
    assert_eq!(
        bearer_of(&upstream.seen()[0]),
        Some(format!("Bearer {}", grants[0].1))
    );
    let mut user = signed_in(&gateway).await;
    // Signed in, the user's token would go: X-CSRF is required.
    assert_eq!(user.get("/api/OtherApi1/products", &[]).await.status, 403);
    assert_eq!(
        user.get("/api/OtherApi1/products", &[CSRF]).await.status,
        200
    );
    assert_eq!(
        bearer_of(&upstream.seen()[1]),
        Some(format!("Bearer {}", provider.last_access_token()))
    );
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test]
async fn a_refused_or_unreachable_client_grant_fails_the_call_clearly_and_is_not_retried_per_call()
{
    let (provider, gateway, upstream) =
        gateway_with("/api/OtherApi1={upstream} token=client", &[]).await;
    provider.refuse_client_grants(Some("unauthorized_client"));
    let mut visitor = gateway.browser();
    let refused = visitor.get("/api/OtherApi1/products", &[]).await;
    assert_eq!(refused.status, 502, "{}", refused.body);
    assert!(
        !refused.body.contains("unauthorized_client"),
        "{}",
        refused.body
    );
    // The next calls within the retry delay do not ask the provider again.
    assert_eq!(
        visitor.get("/api/OtherApi1/products", &[]).await.status,
        502
    );
    let asked = || {
        provider
            .token_grants()
            .iter()
            .filter(|grant| *grant == "client_credentials")
            .count()
    };
    assert_eq!(asked(), 1);
    provider.refuse_client_grants(None);
    provider.clock().advance(std::time::Duration::from_secs(6));
    assert_eq!(
        visitor.get("/api/OtherApi1/products", &[]).await.status,
        200
    );
    // With a token in hand, a provider outage keeps using it while it is valid.
    provider
        .clock()
        .advance(std::time::Duration::from_secs(280));
    provider.set_down(true);
    assert_eq!(
        visitor.get("/api/OtherApi1/products", &[]).await.status,
        200
    );
    provider.clock().advance(std::time::Duration::from_secs(30));
    let down = visitor.get("/api/OtherApi1/products", &[]).await;
    assert_eq!(down.status, 503, "{}", down.body);
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test]
async fn allow_gates_the_whole_gateway_at_the_callback() {
    let (provider, gateway, upstream) = gateway_with(
        "/api/OtherApi1={upstream}",
        &[
            "--policy",
            "staff=email-domain:example.com",
            "--allow",
            "staff",
        ],
    )
    .await;
    provider.set_claims(json!({"email": "mallory@elsewhere.test"}));
    let mut outsider = gateway.browser();
    let refused = outsider.login("/orders").await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.headers["content-type"]
            .to_str()
            .expect("text")
            .starts_with("text/html")
    );
    assert!(
        refused.body.contains("not allowed here"),
        "{}",
        refused.body
    );
    // A link to sign out at the provider, without any token in it.
    let end_session = format!("{}/end-session?", provider.issuer);
    assert!(refused.body.contains(&end_session), "{}", refused.body);
    assert!(!refused.body.contains("id_token_hint"), "{}", refused.body);
    for secret in provider.issued_secrets() {
        assert!(!refused.body.contains(&secret), "a token in the page");
    }
    // No session: no cookie for one, nothing signed in, and the unused grant revoked.
    assert!(
        refused
            .set_cookies()
            .iter()
            .all(|cookie| !cookie.starts_with("__Host-bff=")),
        "{:?}",
        refused.set_cookies()
    );
    assert!(!outsider.is_auth().await);
    assert_eq!(outsider.get("/api/OtherApi1/x", &[CSRF]).await.status, 401);
    assert_eq!(provider.revoked().len(), 1, "the refresh token is revoked");
    assert!(upstream.seen().is_empty());

    provider.set_claims(json!({"email": "ann@example.com"}));
    let mut staff = gateway.browser();
    staff.login_ok().await;
    assert_eq!(staff.get("/api/OtherApi1/x", &[CSRF]).await.status, 200);
}

#[tokio::test]
async fn userinfo_claims_are_merged_over_the_id_tokens_and_follow_refreshes() {
    let (provider, gateway, upstream) = gateway_with(
        "/api/OtherApi1={upstream} policy=admins identity-headers=on",
        &["--policy", "admins=groups:admin", "--userinfo"],
    )
    .await;
    // The groups are only in UserInfo (Entra ID and Okta keep large groups out of ID tokens).
    provider.set_userinfo(json!({"groups": ["admin"], "email": "ann@corp.example"}));
    let mut browser = signed_in(&gateway).await;
    let call = browser.get("/api/OtherApi1/x", &[CSRF]).await;
    assert_eq!(call.status, 200, "{}", call.body);
    assert_eq!(upstream.seen()[0].headers["x-auth-request-groups"], "admin");
    assert_eq!(
        upstream.seen()[0].headers["x-auth-request-email"],
        "ann@corp.example",
        "UserInfo's claim wins over the ID token's"
    );
    let user = browser.user().await.json();
    assert_eq!(user["policies"], json!(["admins"]));
    assert_eq!(provider.userinfo_calls(), 1);
    // A refresh fetches it again: the group removed at the provider is gone here too.
    provider.set_userinfo(json!({"groups": ["staff"]}));
    provider
        .clock()
        .advance(std::time::Duration::from_secs(290));
    let after = browser.get("/api/OtherApi1/x", &[CSRF]).await;
    assert_eq!(after.status, 403, "{}", after.body);
    assert_eq!(provider.userinfo_calls(), 2);
    // UserInfo for another subject ends the session at the next refresh (OIDC Core §5.3.2).
    provider.set_userinfo_subject(Some("mallory"));
    provider
        .clock()
        .advance(std::time::Duration::from_secs(290));
    assert_eq!(browser.get("/api/OtherApi1/x", &[CSRF]).await.status, 401);
    // And fails a login outright.
    let mut other = gateway.browser();
    assert_eq!(other.login("/").await.status, 400);
    assert!(!other.is_auth().await);
}

/// A gateway with two audience-bound routes and a plain one, rotating refresh tokens.
async fn audience_gateway(extra: &[&str]) -> (FakeProvider, TestGateway, Upstream, Upstream) {
    let orders = Upstream::start().await;
    let billing = Upstream::start().await;
    let orders_route = format!(
        "/api/OtherApi1={} resource=https://orders.example",
        orders.url
    );
    let billing_route = format!(
        "/api/OtherApi2={} resource=https://billing.example/",
        billing.url
    );
    let plain_route = format!("/api/Plain={}", orders.url);
    let mut args = vec![
        "--route",
        orders_route.as_str(),
        "--route",
        billing_route.as_str(),
        "--route",
        plain_route.as_str(),
    ];
    args.extend_from_slice(extra);
    let (provider, gateway) = setup(&args).await;
    provider.rotate_refresh_tokens(true);
    (provider, gateway, orders, billing)
}

fn token_of(seen: &crate::support::upstream::Seen) -> String {
    bearer_of(seen)
        .and_then(|bearer| bearer.strip_prefix("Bearer ").map(str::to_owned))
        .expect("a bearer token")
}

#[tokio::test]
async fn resource_routes_get_a_token_for_their_audience_alone() {
    let (provider, gateway, orders, billing) = audience_gateway(&[]).await;
    let mut browser = signed_in(&gateway).await;
    assert_eq!(
        provider.authorize_resources(),
        [["https://orders.example", "https://billing.example/"]],
        "the sign-in names every route's resource"
    );
    let broad = provider.last_access_token();
    assert_eq!(browser.get("/api/OtherApi1/a", &[CSRF]).await.status, 200);
    assert_eq!(browser.get("/api/OtherApi1/b", &[CSRF]).await.status, 200);
    assert_eq!(browser.get("/api/OtherApi2/c", &[CSRF]).await.status, 200);
    assert_eq!(browser.get("/api/Plain/d", &[CSRF]).await.status, 200);
    let seen = orders.seen();
    let (orders_token, plain_token) = (token_of(&seen[0]), token_of(&seen[2]));
    assert_eq!(token_of(&seen[1]), orders_token, "kept and reused");
    assert_eq!(
        provider.audience_of(&orders_token).as_deref(),
        Some("https://orders.example")
    );
    let billing_token = token_of(&billing.seen()[0]);
    assert_eq!(
        provider.audience_of(&billing_token).as_deref(),
        Some("https://billing.example/")
    );
    assert_ne!(orders_token, billing_token);
    assert_eq!(
        plain_token, broad,
        "a route without resource gets the broad token"
    );
    assert!(provider.audience_of(&broad).is_none());
    assert_eq!(provider.refresh_count(), 2, "one grant per resource");

    // Expiring within the skew, each is asked for again, once, with the rotated refresh token.
    provider
        .clock()
        .advance(std::time::Duration::from_secs(285));
    assert_eq!(browser.get("/api/OtherApi1/e", &[CSRF]).await.status, 200);
    assert_eq!(browser.get("/api/OtherApi1/f", &[CSRF]).await.status, 200);
    let renewed = token_of(&orders.seen()[3]);
    assert_ne!(renewed, orders_token);
    assert_eq!(token_of(&orders.seen()[4]), renewed);
    assert_eq!(provider.refresh_count(), 3);
    // The session (and its broad token) lives on: a rotated refresh token was stored.
    assert_eq!(browser.get("/api/Plain/g", &[CSRF]).await.status, 200);
    assert_eq!(browser.get("/api/OtherApi2/h", &[CSRF]).await.status, 200);
    assert_eq!(
        provider.refresh_count(),
        5,
        "billing's and the broad token's renewals"
    );
}

#[tokio::test]
async fn concurrent_first_calls_share_one_grant_per_resource_under_rotation() {
    let (provider, gateway, orders, billing) = audience_gateway(&[]).await;
    let browser = signed_in(&gateway).await;
    let cookies = browser.cookies();
    let mut calls = tokio::task::JoinSet::new();
    for index in 0..12 {
        let mut caller = gateway.browser();
        let cookie = cookies.clone();
        calls.spawn(async move {
            let path = if index % 2 == 0 {
                "/api/OtherApi1/x"
            } else {
                "/api/OtherApi2/x"
            };
            caller
                .get(path, &[CSRF, ("cookie", cookie.as_str())])
                .await
                .status
        });
    }
    let statuses = calls.join_all().await;
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    // A second grant with a spent refresh token would have ended the session.
    assert_eq!(provider.refresh_count(), 2);
    assert_eq!(orders.seen().len() + billing.seen().len(), 12);
}

#[tokio::test]
async fn a_refused_resource_answers_502_and_never_falls_back_to_the_broad_token() {
    let (provider, gateway, orders, billing) =
        audience_gateway(&["--login-resources", "none"]).await;
    provider.refuse_resource("https://billing.example/");
    let mut browser = signed_in(&gateway).await;
    assert_eq!(provider.authorize_resources(), [Vec::<String>::new()]);
    let refused = browser.get("/api/OtherApi2/x", &[CSRF]).await;
    assert_eq!(refused.status, 502, "{}", refused.body);
    assert!(!refused.body.contains("invalid_target"), "{}", refused.body);
    assert!(billing.seen().is_empty(), "nothing went upstream");
    // Not asked again for every call.
    assert_eq!(browser.get("/api/OtherApi2/x", &[CSRF]).await.status, 502);
    assert_eq!(provider.refresh_count(), 1);
    // The session and its other routes go on.
    assert_eq!(browser.get("/api/OtherApi1/x", &[CSRF]).await.status, 200);
    assert_eq!(browser.get("/api/Plain/x", &[CSRF]).await.status, 200);
    assert!(browser.is_auth().await);
    assert_eq!(orders.seen().len(), 2);
}

#[tokio::test]
async fn claims_a_refresh_brings_apply_at_once_even_while_the_session_is_cached() {
    let (provider, gateway, upstream) = gateway_with(
        "/api/OtherApi1={upstream} policy=admins",
        &[
            "--policy",
            "admins=groups:admin",
            "--userinfo",
            "--cache-sliding",
            "10m",
        ],
    )
    .await;
    // Tokens due for a refresh after 10 s (40 s lifetime, 30 s skew): within the cache's
    // sliding window, so the refreshed ticket replaces a warm one.
    provider.set_token_ttl(40);
    provider.set_userinfo(json!({"groups": ["admin"]}));
    let mut browser = signed_in(&gateway).await;
    assert_eq!(browser.get("/api/OtherApi1/x", &[CSRF]).await.status, 200);
    assert_eq!(browser.get("/api/OtherApi1/x", &[CSRF]).await.status, 200);
    provider.set_userinfo(json!({"groups": ["staff"]}));
    provider.clock().advance(std::time::Duration::from_secs(12));
    let after = browser.get("/api/OtherApi1/x", &[CSRF]).await;
    assert_eq!(after.status, 403, "{}", after.body);
    assert_eq!(provider.refresh_count(), 1);
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test]
async fn a_client_token_for_a_resource_is_asked_for_that_audience_and_kept_apart() {
    let (provider, gateway, upstream) = gateway_with(
        "/api/OtherApi1={upstream} token=user-or-client resource=https://catalog.example",
        &[],
    )
    .await;
    let mut visitor = gateway.browser();
    assert_eq!(visitor.get("/api/OtherApi1/x", &[]).await.status, 200);
    let grants = provider.client_grants();
    assert_eq!(grants.len(), 1);
    let client_token = &grants[0].1;
    assert_eq!(
        provider.audience_of(client_token).as_deref(),
        Some("https://catalog.example")
    );
    assert_eq!(token_of(&upstream.seen()[0]), *client_token);
    // Signed in, the user's token for that resource goes instead.
    let mut user = signed_in(&gateway).await;
    assert_eq!(user.get("/api/OtherApi1/x", &[CSRF]).await.status, 200);
    let user_token = token_of(&upstream.seen()[1]);
    assert_ne!(user_token, *client_token);
    assert_eq!(
        provider.audience_of(&user_token).as_deref(),
        Some("https://catalog.example")
    );
}
