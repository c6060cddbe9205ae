//! Back-channel logout: the provider ends sessions by sid or by sub; every malformed, forged or
//! replayed token is refused with 400 and `Cache-Control: no-store`, and ends nothing.

use serde_json::json;

use crate::support::{Browser, FakeProvider, LogoutSpec, TestGateway, setup};

async fn post_logout(gateway: &TestGateway, token: &str) -> crate::support::browser::Reply {
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
}

async fn two_sessions() -> (FakeProvider, TestGateway, Browser, String, Browser) {
    let (provider, gateway) = setup(&[]).await;
    let mut first = gateway.browser();
    first.login_ok().await;
    let first_sid = provider.last_sid();
    let mut second = gateway.browser();
    second.login_ok().await;
    (provider, gateway, first, first_sid, second)
}

#[tokio::test]
async fn a_logout_token_with_a_sid_ends_that_session_only() {
    let (provider, gateway, mut first, first_sid, mut second) = two_sessions().await;
    let token = provider.logout_token(&LogoutSpec {
        sid: Some(first_sid),
        ..LogoutSpec::default()
    });
    let reply = post_logout(&gateway, &token).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.headers["cache-control"], "no-store");
    assert!(!first.is_auth().await, "the named provider session ended");
    assert!(second.is_auth().await, "the user's other session lives on");
}

#[tokio::test]
async fn a_logout_token_with_only_a_sub_ends_all_of_that_users_sessions() {
    let (provider, gateway, mut first, _, mut second) = two_sessions().await;
    let reply = post_logout(&gateway, &provider.logout_token(&LogoutSpec::default())).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(!first.is_auth().await);
    assert!(!second.is_auth().await);
}

#[tokio::test]
async fn bad_logout_tokens_are_refused_and_end_nothing() {
    let (provider, gateway, mut first, _, mut second) = two_sessions().await;
    let cases = [
        (
            "bad signature",
            LogoutSpec {
                bad_signature: true,
                ..LogoutSpec::default()
            },
        ),
        (
            "wrong aud",
            LogoutSpec {
                aud: json!("another-client"),
                ..LogoutSpec::default()
            },
        ),
        (
            "wrong iss",
            LogoutSpec {
                iss: Some("https://evil.example".into()),
                ..LogoutSpec::default()
            },
        ),
        (
            "nonce present",
            LogoutSpec {
                with_nonce: true,
                ..LogoutSpec::default()
            },
        ),
        (
            "missing events",
            LogoutSpec {
                with_events: false,
                ..LogoutSpec::default()
            },
        ),
        (
            "neither sid nor sub",
            LogoutSpec {
                sub: None,
                ..LogoutSpec::default()
            },
        ),
        (
            "too old",
            LogoutSpec {
                iat_offset: -3_600,
                ..LogoutSpec::default()
            },
        ),
    ];
    for (what, spec) in cases {
        let reply = post_logout(&gateway, &provider.logout_token(&spec)).await;
        assert_eq!(reply.status, 400, "{what}: {}", reply.body);
        assert_eq!(reply.headers["cache-control"], "no-store", "{what}");
    }
    for garbage in ["", "not-a-jwt", "a.b.c", "e30.e30."] {
        assert_eq!(
            post_logout(&gateway, garbage).await.status,
            400,
            "{garbage:?}"
        );
    }
    assert!(
        first.is_auth().await && second.is_auth().await,
        "no session ended"
    );
}

#[tokio::test]
async fn a_replayed_logout_token_is_refused() {
    let (provider, gateway, mut first, first_sid, _) = two_sessions().await;
    let token = provider.logout_token(&LogoutSpec {
        sid: Some(first_sid),
        ..LogoutSpec::default()
    });
    assert_eq!(post_logout(&gateway, &token).await.status, 200);
    assert_eq!(
        post_logout(&gateway, &token).await.status,
        400,
        "same jti twice"
    );
    assert!(!first.is_auth().await);
}

#[tokio::test]
async fn only_post_with_one_token_is_accepted() {
    let (provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    assert_eq!(browser.get("/backchannel-logout", &[]).await.status, 405);
    let token = provider.logout_token(&LogoutSpec::default());
    let body = format!(
        "logout_token={token}&logout_token={token}",
        token = crate::support::browser::urlencode(&token)
    );
    let reply = browser
        .request(
            http::Method::POST,
            "/backchannel-logout",
            &[("content-type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        )
        .await;
    assert_eq!(reply.status, 400);
}

#[tokio::test]
async fn a_logout_token_replayed_after_a_restart_ends_no_new_session() {
    let (provider, mut gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    let token = provider.logout_token(&LogoutSpec::default());
    assert_eq!(post_logout(&gateway, &token).await.status, 200);
    assert!(!browser.is_auth().await);
    gateway.restart().await;
    // The same user signs in again after the logout.
    let mut again = gateway.browser();
    again.login_ok().await;
    let reply = post_logout(&gateway, &token).await;
    assert_eq!(reply.status, 400, "a captured token played after a restart");
    assert!(again.is_auth().await, "the replay ended a newer session");
}

#[tokio::test]
async fn a_typ_other_than_logout_jwt_is_refused() {
    let (provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    for typ in ["JWT", "at+jwt", ""] {
        let token = provider.logout_token(&LogoutSpec {
            typ: Some(typ.into()),
            ..LogoutSpec::default()
        });
        assert_eq!(post_logout(&gateway, &token).await.status, 400, "{typ:?}");
    }
    assert!(browser.is_auth().await);
    // Without typ (it is optional), or typed as the specification says, it is accepted.
    let untyped = provider.logout_token(&LogoutSpec {
        typ: None,
        ..LogoutSpec::default()
    });
    assert_eq!(post_logout(&gateway, &untyped).await.status, 200);
    assert!(!browser.is_auth().await);
    let typed = provider.logout_token(&LogoutSpec {
        typ: Some("application/logout+jwt".into()),
        ..LogoutSpec::default()
    });
    assert_eq!(post_logout(&gateway, &typed).await.status, 200);
}

#[tokio::test]
async fn a_slow_logout_form_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_provider, gateway) = setup(&["--header-timeout", "1s"]).await;
    let mut stream = crate::support::raw::tls_connect(&gateway).await;
    stream
        .write_all(
            b"POST /backchannel-logout HTTP/1.1\r\nhost: localhost\r\n\
              content-type: application/x-www-form-urlencoded\r\ncontent-length: 1000\r\n\r\n\
              logout_token=",
        )
        .await
        .expect("write");
    let started = tokio::time::Instant::now();
    // A byte every 300 ms: never silent long enough for the idle timeout.
    let mut answer = Vec::new();
    for _ in 0..20 {
        if stream.write_all(b"a").await.is_err() {
            break;
        }
        let mut buffer = [0u8; 512];
        match tokio::time::timeout(
            std::time::Duration::from_millis(300),
            stream.read(&mut buffer),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buffer[..n]),
            Err(_) => {}
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
}
