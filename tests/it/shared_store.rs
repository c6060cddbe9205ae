//! Several gateways sharing sessions in Redis (`--store redis://…`): a real `redis-server`
//! started by the test, gateways with one ticket key.

use std::time::Duration;

use tokio::time::Instant;

use crate::support::redis::{RedisCluster, RedisServer};
use crate::support::{FakeProvider, TestGateway};

const CSRF: (&str, &str) = ("x-csrf", "1");

/// A provider, a Redis and `count` gateways on it sharing one ticket key file.
async fn cluster(
    count: usize,
    extra: &[&str],
) -> (
    FakeProvider,
    RedisServer,
    Vec<TestGateway>,
    tempfile::TempDir,
) {
    let redis = RedisServer::start();
    let keys = tempfile::tempdir().expect("dir");
    let key_file = keys.path().join("ticket.key");
    let provider = FakeProvider::start(std::sync::Arc::new(
        oidc_bff::clock::ManualClock::starting_now(),
    ))
    .await;
    let url = redis.url();
    let mut gateways = Vec::new();
    for _ in 0..count {
        let mut args = vec![
            "--store",
            url.as_str(),
            "--ticket-key-file",
            key_file.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        gateways.push(TestGateway::start(&provider, &args).await);
    }
    (provider, redis, gateways, keys)
}

#[tokio::test]
async fn a_login_on_one_gateway_is_signed_in_on_the_others_and_a_logout_ends_it_everywhere() {
    let (_provider, redis, gateways, _keys) = cluster(3, &[]).await;
    let mut first = gateways[0].browser();
    first.login_ok().await;
    let cookie = first.cookies();
    let headers = [CSRF, ("cookie", cookie.as_str())];
    for gateway in &gateways[1..] {
        let mut other = gateway.browser();
        let user = other.get("/api/user", &headers).await;
        assert_eq!(user.status, 200, "{}", user.body);
        assert_eq!(user.json()["sub"], "alice");
    }
    // Nothing readable in Redis: no subject, no token, no provider sid.
    let keys = redis.command("KEYS *").expect("keys");
    assert!(keys.contains("obff:s:{"), "{keys}");
    assert!(!keys.contains("alice") && !keys.contains("sid-"), "{keys}");

    // Every gateway has the session cached; a logout on the third ends it on all of them.
    let logout_url = {
        let mut third = gateways[2].browser();
        third.get("/api/user", &headers).await.json()["logoutUrl"]
            .as_str()
            .expect("logoutUrl")
            .to_owned()
    };
    let mut third = gateways[2].browser();
    let logout = third.get(&logout_url, &[("cookie", cookie.as_str())]).await;
    assert_eq!(logout.status, 302, "{}", logout.body);
    let deadline = Instant::now() + Duration::from_secs(1);
    for gateway in &gateways[..2] {
        let mut browser = gateway.browser();
        loop {
            let status = browser.get("/api/user", &headers).await.status;
            if status == 401 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still signed in on another gateway 1 s after the logout ({status})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn a_gateway_with_another_ticket_key_refuses_to_start_on_the_store() {
    let (provider, redis, _gateways, _keys) = cluster(1, &[]).await;
    let other_keys = tempfile::tempdir().expect("dir");
    let other_key = other_keys.path().join("other.key");
    let url = redis.url();
    let gateway = TestGateway::start_unready(
        &provider,
        &[
            "--store",
            url.as_str(),
            "--ticket-key-file",
            other_key.to_str().expect("utf-8"),
        ],
    )
    .await;
    let error = gateway.finished().await.expect_err("refused");
    assert!(error.to_string().contains("another ticket key"), "{error}");
}

#[tokio::test]
async fn calls_spread_over_the_gateways_refresh_a_session_once_per_token_lifetime() {
    let upstream = crate::support::Upstream::start().await;
    let route = format!("/api/OtherApi1={}", upstream.url);
    let (provider, _redis, gateways, _keys) = cluster(3, &["--route", route.as_str()]).await;
    // Rotating refresh tokens: a second refresh with the same token would end the session.
    provider.rotate_refresh_tokens(true);
    let mut first = gateways[0].browser();
    first.login_ok().await;
    let cookie = first.cookies();
    for round in 1..=3 {
        // 300 s tokens, refreshed within 30 s of their expiry: due now on every gateway.
        provider.clock().advance(Duration::from_secs(280));
        let mut calls = tokio::task::JoinSet::new();
        for index in 0..12 {
            let mut browser = gateways[index % gateways.len()].browser();
            let cookie = cookie.clone();
            calls.spawn(async move {
                browser
                    .get("/api/OtherApi1/x", &[CSRF, ("cookie", cookie.as_str())])
                    .await
                    .status
            });
        }
        let statuses = calls.join_all().await;
        assert!(
            statuses.iter().all(|status| *status == 200),
            "round {round}: {statuses:?}"
        );
        assert_eq!(
            provider.refresh_count(),
            round,
            "one refresh-token grant per token lifetime, cluster-wide"
        );
    }
    // Every call carried the newest token.
    let newest = format!("Bearer {}", provider.last_access_token());
    let seen = upstream.seen();
    assert_eq!(
        seen.last().expect("calls").headers["authorization"],
        newest.as_str()
    );
}

#[tokio::test]
async fn while_redis_is_away_cached_sessions_go_on_logins_wait_and_nothing_is_lost() {
    let upstream = crate::support::Upstream::start().await;
    let route = format!("/api/OtherApi1={}", upstream.url);
    let (provider, mut redis, gateways, _keys) = cluster(1, &["--route", route.as_str()]).await;
    let gateway = &gateways[0];
    let mut user = gateway.browser();
    user.login_ok().await;
    assert_eq!(user.get("/api/OtherApi1/x", &[CSRF]).await.status, 200);

    redis.stop();
    let mut probe = gateway.browser();
    let stopped = Instant::now();
    loop {
        let status = probe.get("/healthz", &[]).await.status;
        if status == 503 {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(3),
            "/healthz still {status} 3 s after Redis went away"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The session in this gateway's cache keeps working; a new sign-in waits.
    assert_eq!(user.get("/api/OtherApi1/x", &[CSRF]).await.status, 200);
    let mut newcomer = gateway.browser();
    let login = newcomer.get("/login?returnUrl=%2F", &[]).await;
    assert_eq!(login.status, 503, "{}", login.body);
    assert!(
        gateway
            .metrics()
            .await
            .contains("oidc_bff_session_store_up 0")
    );

    redis.start_again();
    let restarted = Instant::now();
    while probe.get("/healthz", &[]).await.status != 200 {
        assert!(
            restarted.elapsed() < Duration::from_secs(15),
            "the gateway did not find Redis again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing was lost: the session is still there for a gateway that never cached it.
    let other = TestGateway::start(
        &provider,
        &[
            "--store",
            redis.url().as_str(),
            "--ticket-key-file",
            _keys.path().join("ticket.key").to_str().expect("utf-8"),
        ],
    )
    .await;
    let cookie = user.cookies();
    let mut elsewhere = other.browser();
    let me = elsewhere
        .get("/api/user", &[CSRF, ("cookie", cookie.as_str())])
        .await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert!(
        gateway
            .metrics()
            .await
            .contains("oidc_bff_session_store_unreachable_total 1")
    );
    newcomer.login_ok().await;
}

fn sessions_command(args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_oidc-bff"))
        .arg("sessions")
        .args(args)
        .env_remove("OIDC_BFF_STORE")
        .output()
        .expect("run the binary");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn an_appliance_migrates_to_redis_without_signing_anyone_out() {
    let redis = RedisServer::start();
    let (provider, mut appliance) = crate::support::setup(&[]).await;
    let mut alice = appliance.browser();
    alice.login_ok().await;
    let mut again = appliance.browser();
    again.login_ok().await;
    appliance.stop().await;
    let data_dir = appliance.data_dir.path().to_owned();
    let key_file = data_dir.join("ticket.key");
    let url = redis.url();
    let (code, out, err) = tokio::task::spawn_blocking({
        let (data_dir, url) = (data_dir.clone(), url.clone());
        move || {
            sessions_command(&[
                "migrate",
                "--to",
                url.as_str(),
                "--data-dir",
                data_dir.to_str().expect("utf-8"),
            ])
        }
    })
    .await
    .expect("task");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "copied 2 session(s); 0 already expired and left out"
    );
    // Each key expires at its session's deadline (8 h idle by default).
    let keys = redis.command("KEYS obff:s:*").expect("keys");
    let key = keys
        .lines()
        .find(|line| line.starts_with("obff:s:"))
        .expect("a session key")
        .to_owned();
    let ttl: i64 = redis
        .command(&format!("TTL {key}"))
        .expect("ttl")
        .trim()
        .trim_start_matches(':')
        .parse()
        .expect("seconds");
    assert!((28_000..=28_800).contains(&ttl), "TTL {ttl}");

    // The grown gateway, on Redis with the same key: both users are still signed in.
    let grown = TestGateway::start(
        &provider,
        &[
            "--store",
            url.as_str(),
            "--ticket-key-file",
            key_file.to_str().expect("utf-8"),
        ],
    )
    .await;
    for browser in [&alice, &again] {
        let cookie = browser.cookies();
        let mut there = grown.browser();
        let me = there
            .get("/api/user", &[CSRF, ("cookie", cookie.as_str())])
            .await;
        assert_eq!(me.status, 200, "{}", me.body);
    }

    // The session commands work on Redis directly, and a revocation reaches the gateway.
    let (code, out, err) = tokio::task::spawn_blocking({
        let (data_dir, url) = (data_dir.clone(), url.clone());
        move || {
            sessions_command(&[
                "list",
                "--json",
                "--store",
                url.as_str(),
                "--data-dir",
                data_dir.to_str().expect("utf-8"),
            ])
        }
    })
    .await
    .expect("task");
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(listed.as_array().expect("array").len(), 2);
    for secret in provider.issued_secrets() {
        assert!(!out.contains(&secret), "a token was printed");
    }
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        sessions_command(&[
            "revoke",
            "--sub",
            "alice",
            "--store",
            url.as_str(),
            "--data-dir",
            data_dir.to_str().expect("utf-8"),
        ])
    })
    .await
    .expect("task");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "revoked 2 session(s)");
    let cookie = alice.cookies();
    let mut there = grown.browser();
    let deadline = Instant::now() + Duration::from_secs(1);
    while there
        .get("/api/user", &[CSRF, ("cookie", cookie.as_str())])
        .await
        .status
        != 401
    {
        assert!(
            Instant::now() < deadline,
            "the revocation did not reach the gateway"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_three_master_redis_cluster_serves_the_same_guarantees() {
    let redis = RedisCluster::start();
    let upstream = crate::support::Upstream::start().await;
    let route = format!("/api/OtherApi1={}", upstream.url);
    let keys = tempfile::tempdir().expect("dir");
    let key_file = keys.path().join("ticket.key");
    let provider = FakeProvider::start(std::sync::Arc::new(
        oidc_bff::clock::ManualClock::starting_now(),
    ))
    .await;
    provider.rotate_refresh_tokens(true);
    let url = redis.url();
    let args = [
        "--store",
        url.as_str(),
        "--ticket-key-file",
        key_file.to_str().expect("utf-8"),
        "--route",
        route.as_str(),
    ];
    let gateways = [
        TestGateway::start(&provider, &args).await,
        TestGateway::start(&provider, &args).await,
    ];
    // Sessions land on every master (their keys hash to different slots), and each is seen by
    // both gateways.
    let mut cookies = Vec::new();
    for _ in 0..6 {
        let mut browser = gateways[0].browser();
        browser.login_ok().await;
        cookies.push(browser.cookies());
    }
    let holding: Vec<bool> = redis
        .nodes
        .iter()
        .map(|node| {
            node.command("DBSIZE")
                .is_some_and(|size| size.trim() != ":0")
        })
        .collect();
    assert!(
        holding.iter().filter(|held| **held).count() >= 2,
        "{holding:?}"
    );
    for cookie in &cookies {
        let mut other = gateways[1].browser();
        let call = other
            .get("/api/OtherApi1/x", &[CSRF, ("cookie", cookie.as_str())])
            .await;
        assert_eq!(call.status, 200, "{}", call.body);
    }
    // One refresh per session across both gateways, under rotation.
    provider.clock().advance(Duration::from_secs(280));
    let mut calls = tokio::task::JoinSet::new();
    for (index, cookie) in cookies.iter().cycle().take(24).enumerate() {
        let mut browser = gateways[index % 2].browser();
        let cookie = cookie.clone();
        calls.spawn(async move {
            browser
                .get("/api/OtherApi1/x", &[CSRF, ("cookie", cookie.as_str())])
                .await
                .status
        });
    }
    let statuses = calls.join_all().await;
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert_eq!(provider.refresh_count(), cookies.len());
    // A revocation by subject on the cluster reaches both gateways.
    let revoked = tokio::task::spawn_blocking({
        let url = url.clone();
        let dir = keys.path().to_owned();
        let key_file = key_file.clone();
        move || {
            sessions_command(&[
                "revoke",
                "--sub",
                "alice",
                "--store",
                url.as_str(),
                "--data-dir",
                dir.to_str().expect("utf-8"),
                "--ticket-key-file",
                key_file.to_str().expect("utf-8"),
            ])
        }
    })
    .await
    .expect("task");
    assert_eq!(revoked.0, 0, "{}", revoked.2);
    assert_eq!(revoked.1.trim(), "revoked 6 session(s)");
    let deadline = Instant::now() + Duration::from_secs(1);
    for gateway in &gateways {
        let mut browser = gateway.browser();
        while browser
            .get("/api/user", &[CSRF, ("cookie", cookies[0].as_str())])
            .await
            .status
            != 401
        {
            assert!(
                Instant::now() < deadline,
                "still signed in after the revocation"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn a_gateway_killed_mid_load_loses_no_session_and_the_others_answer_every_call() {
    let upstream = crate::support::Upstream::start().await;
    let route = format!("/api/OtherApi1={}", upstream.url);
    let (_provider, _redis, mut gateways, _keys) = cluster(3, &["--route", route.as_str()]).await;
    let mut cookies = Vec::new();
    for gateway in &gateways {
        let mut browser = gateway.browser();
        browser.login_ok().await;
        cookies.push(browser.cookies());
    }
    let doomed = gateways.pop().expect("three");
    let load = |gateway: &TestGateway, cookies: Vec<String>| {
        let mut browser = gateway.browser();
        async move {
            let mut statuses = Vec::new();
            for round in 0..60 {
                let cookie = &cookies[round % cookies.len()];
                statuses.push(
                    browser
                        .get("/api/OtherApi1/x", &[CSRF, ("cookie", cookie.as_str())])
                        .await
                        .status,
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        }
    };
    let first = tokio::spawn(load(&gateways[0], cookies.clone()));
    let second = tokio::spawn(load(&gateways[1], cookies.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // No clean stop: the task is aborted mid-flight, its connections and caches gone.
    drop(doomed);
    for statuses in [first.await.expect("load"), second.await.expect("load")] {
        assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    }
    // Every session, the dead gateway's included, lives on.
    for cookie in &cookies {
        let mut browser = gateways[0].browser();
        let me = browser
            .get("/api/user", &[CSRF, ("cookie", cookie.as_str())])
            .await;
        assert_eq!(me.status, 200, "{}", me.body);
    }
}

async fn post_logout_token(gateway: &TestGateway, token: &str) -> u16 {
    let body = format!("logout_token={}", crate::support::browser::urlencode(token));
    gateway
        .browser()
        .request(
            http::Method::POST,
            "/backchannel-logout",
            &[("content-type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        )
        .await
        .status
}

#[tokio::test]
async fn a_back_channel_logout_at_one_gateway_ends_the_session_on_all_and_cannot_be_replayed_at_another()
 {
    let upstream = crate::support::Upstream::start().await;
    let route = format!("/api/OtherApi1={}", upstream.url);
    let (provider, _redis, gateways, _keys) = cluster(2, &["--route", route.as_str()]).await;
    let mut first = gateways[0].browser();
    first.login_ok().await;
    let sid = provider.last_sid();
    let mut second = gateways[0].browser();
    second.login_ok().await;
    let (first_cookie, second_cookie) = (first.cookies(), second.cookies());
    // Both sessions are in use on the other gateway, under load, when the logout comes.
    let load = {
        let mut browser = gateways[1].browser();
        let cookie = first_cookie.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..40 {
                statuses.push(
                    browser
                        .get("/api/OtherApi1/x", &[CSRF, ("cookie", cookie.as_str())])
                        .await
                        .status,
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let token = provider.logout_token(&crate::support::LogoutSpec {
        sid: Some(sid),
        ..crate::support::LogoutSpec::default()
    });
    assert_eq!(post_logout_token(&gateways[0], &token).await, 200);
    let logged_out = Instant::now();
    let statuses = load.await.expect("load");
    // Once 401, always 401: the session is never served again after the logout reached it.
    let first_refusal = statuses
        .iter()
        .position(|status| *status == 401)
        .expect("the logout reached the other gateway");
    assert!(
        statuses[first_refusal..]
            .iter()
            .all(|status| *status == 401),
        "{statuses:?}"
    );
    assert!(
        statuses[..first_refusal]
            .iter()
            .all(|status| *status == 200)
    );
    assert!(logged_out.elapsed() < Duration::from_secs(2));
    let mut other = gateways[1].browser();
    assert_eq!(
        other
            .get("/api/user", &[CSRF, ("cookie", second_cookie.as_str())])
            .await
            .status,
        200,
        "the user's other session lives on"
    );
    // The same token played again at the other gateway is refused: the seen jti is shared.
    assert_eq!(post_logout_token(&gateways[1], &token).await, 400);
}

#[tokio::test]
async fn behind_sentinel_sessions_survive_a_failover_and_the_gateway_follows_the_new_primary() {
    let redis = crate::support::redis::RedisSentinel::start();
    let keys = tempfile::tempdir().expect("dir");
    let key_file = keys.path().join("ticket.key");
    let provider = FakeProvider::start(std::sync::Arc::new(
        oidc_bff::clock::ManualClock::starting_now(),
    ))
    .await;
    let url = redis.url();
    let args = [
        "--store",
        url.as_str(),
        "--ticket-key-file",
        key_file.to_str().expect("utf-8"),
    ];
    let gateway = TestGateway::start(&provider, &args).await;
    let mut user = gateway.browser();
    user.login_ok().await;
    // The replica has it before the primary goes.
    let replicated = redis.primary.command("WAIT 1 2000").expect("wait");
    assert!(replicated.contains(":1"), "{replicated}");
    let failover = redis
        .sentinel_command("SENTINEL FAILOVER sessions")
        .expect("failover");
    assert!(failover.contains("OK"), "{failover}");
    // A gateway that never cached the session reads it from the new primary.
    let fresh = TestGateway::start(&provider, &args).await;
    let cookie = user.cookies();
    let started = Instant::now();
    loop {
        let mut browser = fresh.browser();
        let status = browser
            .get("/api/user", &[CSRF, ("cookie", cookie.as_str())])
            .await
            .status;
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the session is not served after the failover ({status})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The first gateway writes to the new primary: a new sign-in and a logout work there.
    let mut newcomer = gateway.browser();
    let started = Instant::now();
    loop {
        let reply = newcomer.login("/").await;
        if reply.status == 302 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no sign-in after the failover: {} {}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(newcomer.is_auth().await);
}

#[tokio::test]
async fn over_tls_the_store_is_reached_trusting_the_ca_file() {
    let certs = crate::support::certs::TestCerts::new();
    let redis = RedisServer::start_tls(&certs);
    let keys = tempfile::tempdir().expect("dir");
    let key_file = keys.path().join("ticket.key");
    let provider = FakeProvider::start(std::sync::Arc::new(
        oidc_bff::clock::ManualClock::starting_now(),
    ))
    .await;
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let args = [
        "--store",
        url.as_str(),
        "--ticket-key-file",
        key_file.to_str().expect("utf-8"),
        "--ca-file",
        certs.ca_pem.to_str().expect("utf-8"),
    ];
    let first = TestGateway::start(&provider, &args).await;
    let second = TestGateway::start(&provider, &args).await;
    let mut user = first.browser();
    user.login_ok().await;
    let cookie = user.cookies();
    let mut elsewhere = second.browser();
    let me = elsewhere
        .get("/api/user", &[CSRF, ("cookie", cookie.as_str())])
        .await;
    assert_eq!(me.status, 200, "{}", me.body);
}

#[tokio::test]
async fn check_config_reaches_the_store_and_names_a_ticket_key_mismatch_without_writing() {
    let (provider, redis, _gateways, keys) = cluster(0, &[]).await;
    let url = redis.url();
    let check = |key_file: std::path::PathBuf, url: String, issuer: String| {
        let data = tempfile::tempdir().expect("dir");
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_oidc-bff"))
            .args([
                "check-config",
                "--issuer",
                issuer.as_str(),
                "--client-id",
                "spa",
                "--store",
                url.as_str(),
                "--ticket-key-file",
                key_file.to_str().expect("utf-8"),
                "--data-dir",
                data.path().to_str().expect("utf-8"),
            ])
            .env_remove("OIDC_BFF_CLIENT_SECRET")
            .output()
            .expect("run");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let key_file = keys.path().join("ticket.key");
    let run = |key_file: std::path::PathBuf| {
        let (url, issuer) = (url.clone(), provider.issuer.clone());
        tokio::task::spawn_blocking(move || check(key_file, url, issuer))
    };
    let (code, out, err) = run(key_file.clone()).await.expect("task");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("reachable, no sessions yet"), "{out}");
    assert_eq!(
        redis
            .command("EXISTS obff:key-check")
            .expect("exists")
            .trim(),
        ":0",
        "check-config wrote nothing"
    );
    // A gateway claims the store with its key.
    let gateway = TestGateway::start(
        &provider,
        &[
            "--store",
            url.as_str(),
            "--ticket-key-file",
            key_file.to_str().expect("utf-8"),
        ],
    )
    .await;
    let (code, out, err) = run(key_file.clone()).await.expect("task");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sealed with this ticket key"), "{out}");
    let other = keys.path().join("other.key");
    std::fs::write(&other, "A".repeat(43)).expect("write");
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("mode");
    let (code, _, err) = run(other).await.expect("task");
    assert_ne!(code, 0);
    assert!(err.contains("another ticket key"), "{err}");
    drop(gateway);
}

#[tokio::test]
async fn a_session_in_use_on_another_gateway_is_not_taken_for_idle_from_a_stale_cache() {
    // A short idle timeout and a cache that keeps entries longer than it: the first gateway's
    // copy of the session grows old while the second one keeps the session in use.
    let upstream = crate::support::Upstream::start().await;
    let route = format!("/api/OtherApi1={}", upstream.url);
    let (provider, _redis, gateways, _keys) = cluster(
        2,
        &[
            "--route",
            route.as_str(),
            "--idle-timeout",
            "20s",
            "--cache-sliding",
            "100s",
        ],
    )
    .await;
    let mut first = gateways[0].browser();
    first.login_ok().await;
    let cookie = first.cookies();
    let headers = [CSRF, ("cookie", cookie.as_str())];
    provider.clock().advance(Duration::from_secs(15));
    let mut second = gateways[1].browser();
    // A proxied call is a use (it slides the idle timeout); `/api/user` only looks.
    assert_eq!(
        second.get("/api/OtherApi1/products", &headers).await.status,
        200
    );
    // The second gateway writes its last-access time within a touch interval (1 s here).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    provider.clock().advance(Duration::from_secs(10));
    // 25 s after the first gateway last saw it, 10 s after its last use.
    let again = first.get("/api/user", &headers).await;
    assert_eq!(
        again.status, 200,
        "a session in use was ended: {}",
        again.body
    );
    assert_eq!(second.get("/api/user", &headers).await.status, 200);
    // Idle for real now: both gateways agree it is over.
    provider.clock().advance(Duration::from_secs(21));
    assert_eq!(first.get("/api/user", &headers).await.status, 401);
    assert_eq!(second.get("/api/user", &headers).await.status, 401);
}

#[tokio::test]
async fn a_session_redis_expires_ends_its_tunnels_at_the_next_sweep_which_counts_the_sessions() {
    let upstream = crate::support::Upstream::start().await;
    let route = format!("/api/OtherApi1={}", upstream.url);
    let (provider, _redis, gateways, _keys) = cluster(
        1,
        &[
            "--route",
            route.as_str(),
            "--idle-timeout",
            "20s",
            "--sweep-interval",
            "1s",
        ],
    )
    .await;
    let gateway = &gateways[0];
    let mut browser = gateway.browser();
    browser.login_ok().await;
    let (mut tunnel, head) = crate::proxy::raw_exchange(
        gateway,
        &crate::proxy::handshake(gateway, &browser, "GET", "websocket"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The sweep counts what Redis holds.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = gateway.metrics().await;
        if metrics.lines().any(|line| line == "oidc_bff_sessions 1") {
            break;
        }
        assert!(Instant::now() < deadline, "no session count: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Sweeps come and go while the session lives: the tunnel stays.
    assert!(!crate::support::raw::closes_within(&mut tunnel, Duration::from_secs(2)).await);
    provider.clock().advance(Duration::from_secs(25));
    assert!(
        crate::support::raw::closes_within(&mut tunnel, Duration::from_secs(3)).await,
        "the tunnel outlived its session's expiry"
    );
    assert!(!browser.is_auth().await);
}
