//! The token-relay proxy: bearer injection, header hygiene, the checks before anything goes
//! upstream, failures, and path tricks.

use std::time::Duration;

use http::Method;

use crate::support::certs::TestCerts;
use crate::support::{Browser, FakeProvider, TestGateway, Upstream, setup};

const CSRF: (&str, &str) = ("x-csrf", "1");

async fn proxied(extra: &[&str]) -> (FakeProvider, TestGateway, Upstream, Browser) {
    let upstream = Upstream::start().await;
    let (provider, gateway, browser) = signed_in_with_route_to(&upstream.url, extra).await;
    (provider, gateway, upstream, browser)
}

/// A gateway routing `/api/OtherApi1` to `url`, and a browser signed in to it.
async fn signed_in_with_route_to(
    url: &str,
    extra: &[&str],
) -> (FakeProvider, TestGateway, Browser) {
    let route = format!("/api/OtherApi1={url}");
    let mut args = vec!["--route", route.as_str()];
    args.extend_from_slice(extra);
    let (provider, gateway) = setup(&args).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    (provider, gateway, browser)
}

#[tokio::test]
async fn the_bearer_is_the_sessions_access_token_and_the_path_is_rewritten() {
    let (provider, _gateway, upstream, mut browser) = proxied(&[]).await;
    let reply = browser.get("/api/OtherApi1/products?x=1", &[CSRF]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/products?x=1");
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {}", provider.last_access_token()).as_str()
    );
    assert_eq!(
        reply.headers["x-upstream"], "echo",
        "upstream headers reach the browser"
    );
    assert!(
        !reply.headers.contains_key("keep-alive"),
        "hop-by-hop headers are removed"
    );
    assert!(reply.headers.contains_key("strict-transport-security"));
    assert!(
        !reply.headers.contains_key("x-frame-options"),
        "an upstream's answer keeps its own framing policy"
    );
    for secret in provider.issued_secrets() {
        assert!(!reply.body.contains(&secret));
    }
}

#[tokio::test]
async fn no_session_is_401_and_no_csrf_header_is_403_before_the_upstream_sees_anything() {
    let (_provider, gateway, upstream, mut browser) = proxied(&[]).await;
    let mut anonymous = gateway.browser();
    let reply = anonymous.get("/api/OtherApi1/products", &[CSRF]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"], "no session");
    let reply = browser.get("/api/OtherApi1/products", &[]).await;
    assert_eq!(reply.status, 403);
    let reply = browser
        .request(Method::POST, "/api/OtherApi1/orders", &[], b"{}")
        .await;
    assert_eq!(reply.status, 403);
    assert!(upstream.seen().is_empty(), "nothing went upstream");
}

#[tokio::test]
async fn gateway_cookies_and_spoofed_headers_never_reach_the_upstream() {
    let (provider, gateway, upstream, mut browser) = proxied(&[]).await;
    browser.jar.insert("theme".into(), "dark".into());
    let reply = browser
        .get(
            "/api/OtherApi1/products",
            &[
                CSRF,
                ("authorization", "Bearer forged"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-host", "evil.example"),
                ("forwarded", "for=203.0.113.9"),
                ("proxy-authorization", "Basic x"),
                ("host", "evil.example"),
                ("x-real-ip", "203.0.113.9"),
                ("true-client-ip", "203.0.113.9"),
                ("x_forwarded_for", "203.0.113.9"),
                ("x-forwarded-uri", "/admin"),
                ("x-forwarded-email", "admin@example.com"),
                ("x-forwarded-prefix", "/admin"),
                ("x-original-url", "/admin"),
                ("x-rewrite-url", "/admin"),
                ("x-http-method-override", "DELETE"),
                ("x-method-override", "DELETE"),
                ("x-user_id", "1"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200);
    let headers = &upstream.seen()[0].headers;
    for name in [
        "x-real-ip",
        "true-client-ip",
        "x_forwarded_for",
        "x-forwarded-uri",
        "x-forwarded-email",
        "x-forwarded-prefix",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-method-override",
        "x-user_id",
    ] {
        assert!(!headers.contains_key(name), "{name} reached the upstream");
    }
    let public_host = gateway.base.trim_start_matches("https://");
    assert_eq!(
        headers["x-forwarded-host"], public_host,
        "the public host, not the client's Host"
    );
    assert_eq!(
        headers["forwarded"],
        format!("for=127.0.0.1;proto=https;host=\"{public_host}\"").as_str()
    );
    let headers = &upstream.seen()[0].headers;
    assert_eq!(
        headers["cookie"], "theme=dark",
        "only the SPA's own cookies go upstream"
    );
    assert_eq!(
        headers["authorization"],
        format!("Bearer {}", provider.last_access_token()).as_str()
    );
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert!(!headers.contains_key("proxy-authorization"));
    assert!(
        headers["host"]
            .to_str()
            .expect("ascii")
            .starts_with("127.0.0.1:")
    );
}

#[tokio::test]
async fn prefixes_match_whole_segments_and_the_destination_base_path_is_kept() {
    let upstream = Upstream::start().await;
    let route = format!("/api/OtherApi1={}/v1", upstream.url);
    let (_provider, gateway) = setup(&["--route", &route]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    assert_eq!(
        browser
            .get("/api/OtherApi10/products", &[CSRF])
            .await
            .status,
        404
    );
    assert_eq!(
        browser.get("/api/OtherApi1/products", &[CSRF]).await.status,
        200
    );
    assert_eq!(upstream.seen()[0].target, "/v1/products");
}

#[tokio::test]
async fn path_tricks_do_not_reach_any_route() {
    let (_provider, _gateway, upstream, mut browser) = proxied(&[]).await;
    for path in [
        "/api/OtherApi1/../admin",
        "/api/OtherApi1/./products",
        "/api/OtherApi1//products",
        "/api/OtherApi1/%2e%2e/admin",
        "/api/OtherApi1/%2E%2e/admin",
        "/api/OtherApi1%2fproducts",
        "/api/OtherApi1/%5c..%5cadmin",
        "/api/OtherApi1/..;/..;/api/user",
        "/api/OtherApi1/%252e%252e/admin",
        "/api/OtherApi1/%c0%ae%c0%ae/admin",
    ] {
        let reply = browser.get(path, &[CSRF]).await;
        assert_eq!(reply.status, 400, "{path}");
    }
    assert!(upstream.seen().is_empty());

    // The prefix is removed whatever its case, as it was matched.
    let reply = browser.get("/API/OTHERAPI1/x", &[CSRF]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(upstream.seen()[0].target, "/x");
    // An escaped own endpoint is the endpoint itself, not a route or a file.
    let reply = browser.get("/api/%69sAuth", &[]).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "true"));
}

#[tokio::test]
async fn trace_track_and_connect_are_never_forwarded() {
    let (_provider, _gateway, upstream, mut browser) = proxied(&[]).await;
    for method in ["TRACE", "TRACK"] {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let reply = browser
            .request(method.clone(), "/api/OtherApi1/echo", &[CSRF], b"")
            .await;
        assert_eq!(reply.status, 405, "{method}");
        assert!(reply.headers.contains_key("allow"), "{method}");
    }
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
}

#[tokio::test]
async fn an_unreachable_upstream_is_502_and_a_slow_one_504() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
        listener.local_addr().expect("addr").port()
    };
    let slow = Upstream::start().await;
    slow.set_delay(Duration::from_secs(3));
    let dead_route = format!("/api/dead=http://127.0.0.1:{dead}");
    let slow_route = format!("/api/slow={}", slow.url);
    let (_provider, gateway) = setup(&[
        "--route",
        &dead_route,
        "--route",
        &slow_route,
        "--upstream-timeout",
        "1s",
    ])
    .await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    let reply = browser.get("/api/dead/x", &[CSRF]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"], "the upstream could not be reached");
    let reply = browser.get("/api/slow/x", &[CSRF]).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["error"], "the upstream did not answer in time");
}

#[tokio::test]
async fn an_upstream_401_passes_through_for_the_spa_to_log_in_again() {
    let (_provider, _gateway, upstream, mut browser) = proxied(&[]).await;
    upstream.set_status(401);
    let reply = browser.get("/api/OtherApi1/products", &[CSRF]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.headers["x-upstream"], "echo");
    assert!(
        browser.is_auth().await,
        "an upstream 401 does not end the session"
    );
}

#[tokio::test]
async fn an_upstream_cannot_set_the_gateway_cookies() {
    let (_provider, _gateway, upstream, mut browser) = proxied(&[]).await;
    upstream.set_cookies(&[
        "__Host-bff=stolen; Path=/",
        "__Host-bff-flow=x; Path=/",
        "pref=1; Path=/",
        // Browsers store these with an empty name and send them back as `__Host-bff=…`.
        "=__Host-bff=planted; Path=/",
        "__Host-bff",
        " = x",
        "theme=__host-bff=planted",
    ]);
    let before = browser.jar["__Host-bff"].clone();
    let reply = browser.get("/api/OtherApi1/products", &[CSRF]).await;
    assert_eq!(reply.set_cookies(), ["pref=1; Path=/"]);
    assert_eq!(browser.jar["__Host-bff"], before);
    assert!(browser.is_auth().await);
}

#[tokio::test]
async fn concurrent_proxied_calls_share_one_refresh() {
    let (provider, gateway, upstream, browser) = proxied(&[]).await;
    provider.rotate_refresh_tokens(true);
    provider.clock().advance(Duration::from_secs(301));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut clone = gateway.browser();
        clone.jar = browser.jar.clone();
        tasks.push(tokio::spawn(async move {
            clone.get("/api/OtherApi1/products", &[CSRF]).await.status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), 200);
    }
    assert_eq!(provider.refresh_count(), 1);
    let fresh = format!("Bearer {}", provider.last_access_token());
    assert!(
        upstream
            .seen()
            .iter()
            .all(|seen| seen.headers["authorization"] == fresh.as_str()),
        "every call carried the refreshed token"
    );
}

#[tokio::test]
async fn a_dead_grant_at_refresh_is_401_and_ends_the_session() {
    let (provider, _gateway, upstream, mut browser) = proxied(&[]).await;
    provider.fail_next_refresh(crate::support::RefreshFailure::InvalidGrant);
    provider.clock().advance(Duration::from_secs(301));
    let reply = browser.get("/api/OtherApi1/products", &[CSRF]).await;
    assert_eq!(reply.status, 401);
    assert!(upstream.seen().is_empty());
    assert!(!browser.is_auth().await);
}

#[tokio::test]
async fn proxied_calls_slide_the_idle_timeout() {
    let (provider, _gateway, _upstream, mut browser) = proxied(&["--idle-timeout", "30m"]).await;
    for _ in 0..4 {
        provider.clock().advance(Duration::from_secs(20 * 60));
        assert_eq!(
            browser.get("/api/OtherApi1/products", &[CSRF]).await.status,
            200
        );
    }
    assert!(
        browser.is_auth().await,
        "80 minutes of use with a 30-minute idle timeout"
    );
}

#[tokio::test]
async fn bodies_stream_through_and_oversized_ones_are_refused() {
    let (_provider, _gateway, upstream, mut browser) =
        proxied(&["--max-request-body", "32MiB"]).await;
    let body = vec![b'x'; 24 << 20];
    let reply = browser
        .request(Method::POST, "/api/OtherApi1/upload", &[CSRF], &body)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(upstream.seen()[0].method, "POST");
    assert_eq!(upstream.seen()[0].body_bytes, 24 << 20);
    let too_big = vec![b'x'; 33 << 20];
    let reply = browser
        .request(Method::POST, "/api/OtherApi1/upload", &[CSRF], &too_big)
        .await;
    assert_eq!(reply.status, 413);
    assert_eq!(
        upstream.seen().len(),
        1,
        "the oversized body never went upstream"
    );
}

#[tokio::test]
async fn several_destinations_take_turns() {
    let first = Upstream::start().await;
    let second = Upstream::start().await;
    let route = format!("/api/OtherApi1={},{}", first.url, second.url);
    let (_provider, gateway) = setup(&["--route", &route]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    for _ in 0..4 {
        assert_eq!(browser.get("/api/OtherApi1/x", &[CSRF]).await.status, 200);
    }
    assert_eq!((first.seen().len(), second.seen().len()), (2, 2));
}

#[tokio::test]
async fn upgrades_are_tunnelled_for_the_apps_own_origin_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (_provider, gateway, upstream, browser) = proxied(&[]).await;
    let cookie = format!("__Host-bff={}", browser.jar["__Host-bff"]);
    let handshake = |origin: &str| {
        format!(
            "GET /api/OtherApi1/socket HTTP/1.1\r\nhost: localhost\r\nconnection: upgrade\r\n\
             upgrade: websocket\r\norigin: {origin}\r\ncookie: {cookie}\r\n\r\n"
        )
    };

    let mut refused = crate::support::raw::tls_connect(&gateway).await;
    refused
        .write_all(handshake("https://evil.example").as_bytes())
        .await
        .expect("write");
    let mut buffer = vec![0u8; 4096];
    let n = refused.read(&mut buffer).await.expect("read");
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 403"));
    assert!(
        upstream.seen().is_empty(),
        "a cross-site handshake never went upstream"
    );

    let mut stream = crate::support::raw::tls_connect(&gateway).await;
    stream
        .write_all(handshake(&gateway.base).as_bytes())
        .await
        .expect("write");
    let n = stream.read(&mut buffer).await.expect("read");
    let head = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    stream
        .write_all(b"ping over the tunnel")
        .await
        .expect("write");
    let mut echoed = vec![0u8; 20];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echoed, b"ping over the tunnel");
    let seen = upstream.seen();
    assert!(
        seen[0].headers["authorization"]
            .to_str()
            .expect("ascii")
            .starts_with("Bearer ")
    );
    assert!(
        !seen[0].headers.contains_key("cookie"),
        "the session cookie stayed at the gateway"
    );
}

/// A bare HTTP/1.1 upstream on raw TCP: answers each request on a connection with a small
/// keep-alive response, then, if `close_after` is set, closes the connection after that many
/// responses without saying so (as an upstream whose idle timeout fired does). Counts the
/// connections it accepted.
async fn raw_upstream(
    close_after: Option<usize>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut answered = 0;
                loop {
                    let mut chunk = [0u8; 4096];
                    let Ok(read) = tcp.read(&mut chunk).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..read]);
                    while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        buffer.drain(..end + 4);
                        let body = format!("answer {answered}");
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tcp.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                        answered += 1;
                        if close_after == Some(answered) {
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let (url, accepted) = raw_upstream(None).await;
    let (_provider, _gateway, mut browser) = signed_in_with_route_to(&url, &[]).await;
    for round in 0..5 {
        let reply = browser.get("/api/OtherApi1/products", &[CSRF]).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(
            reply.body,
            format!("answer {round}"),
            "same connection, in order"
        );
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used_again() {
    // Every connection serves one request, then the upstream closes it without a word.
    let (url, accepted) = raw_upstream(Some(1)).await;
    let (_provider, _gateway, mut browser) = signed_in_with_route_to(&url, &[]).await;
    for _ in 0..4 {
        let reply = browser.get("/api/OtherApi1/products", &[CSRF]).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body, "answer 0");
        // Let the close arrive, as it would between two calls of a real client.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 4);
    // Back to back, the close may race the next call: it is retried on a new connection
    // instead of failing (the request was never written).
    for _ in 0..20 {
        let reply = browser.get("/api/OtherApi1/products", &[CSRF]).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
}

#[tokio::test]
async fn https_upstreams_are_trusted_through_ca_file_over_http2_or_http1() {
    let certs = TestCerts::new();
    let ca = certs.ca_pem.to_str().expect("utf-8");
    for (alpn, version) in [
        (&[&b"h2"[..], b"http/1.1"][..], http::Version::HTTP_2),
        (&[&b"http/1.1"[..]][..], http::Version::HTTP_11),
    ] {
        let upstream = Upstream::start_tls(&certs, alpn).await;
        let (provider, _gateway, mut browser) =
            signed_in_with_route_to(&upstream.url, &["--ca-file", ca]).await;
        for _ in 0..3 {
            let reply = browser.get("/api/OtherApi1/products?x=1", &[CSRF]).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
        let seen = upstream.seen();
        assert_eq!(seen.len(), 3);
        for call in &seen {
            assert_eq!(call.version, version);
            assert!(call.target.ends_with("/products?x=1"), "{}", call.target);
            assert_eq!(
                call.headers.get("authorization").expect("bearer"),
                format!("Bearer {}", provider.last_access_token()).as_str()
            );
        }
    }

    // Without the CA, the upstream's certificate is not trusted: 502, nothing relayed.
    let upstream = Upstream::start_tls(&certs, &[b"h2", b"http/1.1"]).await;
    let (_provider, _gateway, mut browser) = signed_in_with_route_to(&upstream.url, &[]).await;
    let reply = browser.get("/api/OtherApi1/products", &[CSRF]).await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn a_slow_upload_and_a_slow_answer_outlast_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (_provider, gateway, upstream, browser) =
        proxied(&["--header-timeout", "1s", "--upstream-timeout", "10s"]).await;
    let cookie = browser.cookies();
    let mut stream = crate::support::raw::tls_connect(&gateway).await;
    let head = format!(
        "POST /api/OtherApi1/upload HTTP/1.1\r\nhost: localhost\r\ncookie: {cookie}\r\n\
x-csrf: 1\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    // A body in ten chunks over about 2.5 s, then an answer that takes 1.5 s more.
    upstream.set_delay(Duration::from_millis(1_500));
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        stream.write_all(b"5\r\nhello\r\n").await.expect("chunk");
    }
    stream.write_all(b"0\r\n\r\n").await.expect("last chunk");
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        while !String::from_utf8_lossy(&received).contains("bodyBytes") {
            let n = stream.read(&mut buffer).await.expect("read");
            assert!(
                n > 0,
                "closed before the answer: {}",
                String::from_utf8_lossy(&received)
            );
            received.extend_from_slice(&buffer[..n]);
        }
    })
    .await;
    assert!(answered.is_ok(), "no answer in time");
    let response = String::from_utf8_lossy(&received);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"bodyBytes\":50"), "{response}");
    assert_eq!(upstream.seen()[0].body_bytes, 50);
}

#[tokio::test]
async fn logout_under_concurrent_api_calls_ends_the_session_for_good() {
    // The cache was invalidated before the delete committed: a call that missed the cache read
    // the row from the older snapshot and cached the session again, which then kept relaying
    // its bearer token after the logout. Many rounds, three callers each, as the review did.
    let (_provider, gateway, upstream, _browser) = proxied(&[]).await;
    for round in 0..12 {
        let mut browser = gateway.browser();
        browser.login_ok().await;
        let logout_url = browser.user().await.json()["logoutUrl"]
            .as_str()
            .expect("logoutUrl")
            .to_owned();
        // The cookie as it was before the logout deleted it from the browser.
        let jar = browser.jar.clone();
        assert!(jar.contains_key("__Host-bff"));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let callers: Vec<_> = (0..3)
            .map(|_| {
                let mut caller = gateway.browser();
                caller.jar = jar.clone();
                let stop = std::sync::Arc::clone(&stop);
                tokio::spawn(async move {
                    // Bounded: at most 2,000 calls, stopped as soon as the logout returned.
                    for _ in 0..2_000 {
                        if stop.load(std::sync::atomic::Ordering::SeqCst) {
                            break;
                        }
                        caller.get("/api/OtherApi1/x", &[CSRF]).await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(browser.get(&logout_url, &[]).await.status, 302);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for caller in callers {
            caller.await.expect("caller");
        }
        let relayed = upstream.seen().len();
        let mut caller = gateway.browser();
        caller.jar = jar.clone();
        for _ in 0..3 {
            let reply = caller.get("/api/OtherApi1/x", &[CSRF]).await;
            assert_eq!(reply.status, 401, "round {round}: the session came back");
        }
        assert_eq!(upstream.seen().len(), relayed, "round {round}");
        let mut fresh = gateway.browser();
        fresh.jar = jar;
        assert!(!fresh.is_auth().await, "round {round}");
    }
}

#[tokio::test]
async fn calls_refused_for_csrf_do_not_keep_a_session_alive() {
    let (provider, _gateway, upstream, mut browser) = proxied(&["--idle-timeout", "30m"]).await;
    for _ in 0..3 {
        provider.clock().advance(Duration::from_secs(20 * 60));
        assert_eq!(
            browser.get("/api/OtherApi1/products", &[]).await.status,
            403
        );
    }
    assert!(
        !browser.is_auth().await,
        "60 minutes of refused calls with a 30-minute idle timeout"
    );
    assert!(upstream.seen().is_empty());
}

/// Sends `request` on a new TLS connection and returns the connection and the answer's head.
pub(crate) async fn raw_exchange(
    gateway: &TestGateway,
    request: &str,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    String,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = crate::support::raw::tls_connect(gateway).await;
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buffer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .expect("an answer in time")
        .expect("read");
    (stream, String::from_utf8_lossy(&buffer[..n]).into_owned())
}

/// A WebSocket handshake (as a browser sends it) for the signed-in `browser`, with `method` and
/// `upgrade` as given.
pub(crate) fn handshake(
    gateway: &TestGateway,
    browser: &Browser,
    method: &str,
    upgrade: &str,
) -> String {
    handshake_with(gateway, &browser.jar["__Host-bff"], method, upgrade)
}

fn handshake_with(gateway: &TestGateway, session: &str, method: &str, upgrade: &str) -> String {
    format!(
        "{method} /api/OtherApi1/socket HTTP/1.1\r\nhost: localhost\r\nconnection: upgrade\r\n\
         upgrade: {upgrade}\r\norigin: {}\r\nx-csrf: 1\r\ncontent-length: 0\r\n\
         cookie: __Host-bff={session}\r\n\r\n",
        gateway.base
    )
}

#[tokio::test]
async fn only_websocket_handshakes_on_get_become_tunnels() {
    let (_provider, gateway, upstream, browser) = proxied(&[]).await;
    for (method, protocol) in [("GET", "h2c"), ("GET", "echo"), ("POST", "websocket")] {
        let (_stream, head) =
            raw_exchange(&gateway, &handshake(&gateway, &browser, method, protocol)).await;
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "{method} upgrade {protocol}: {head}"
        );
    }
    for seen in upstream.seen() {
        assert!(
            !seen.headers.contains_key("upgrade"),
            "{} asked the upstream to switch",
            seen.method
        );
    }
    let (_stream, head) =
        raw_exchange(&gateway, &handshake(&gateway, &browser, "GET", "websocket")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

#[tokio::test]
async fn a_tunnel_keeps_its_connection_slot_until_it_idles_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_provider, gateway, _upstream, browser) =
        proxied(&["--max-connections", "2", "--websocket-idle-timeout", "2s"]).await;
    // The browser's pooled connections would take slots: only its cookie is kept.
    let session = browser.jar["__Host-bff"].clone();
    drop(browser);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let (stream, head) = raw_exchange(
            &gateway,
            &handshake_with(&gateway, &session, "GET", "websocket"),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        tunnels.push(stream);
    }
    // Traffic keeps a tunnel open past its idle timeout.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        for tunnel in &mut tunnels {
            tunnel.write_all(b"ping").await.expect("write");
            let mut echoed = [0u8; 4];
            tunnel.read_exact(&mut echoed).await.expect("echo");
        }
    }
    // Both slots are taken by the tunnels: a third connection waits.
    let third = tokio::spawn({
        let gateway_addr = gateway.addr;
        let ca = gateway.certs.ca_der.clone();
        async move {
            let mut stream =
                crate::support::raw::tls_connect_to(gateway_addr, &[&ca], &[b"http/1.1"]).await;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
                .await
                .expect("write");
            let mut buffer = [0u8; 64];
            let n = stream.read(&mut buffer).await.expect("read");
            String::from_utf8_lossy(&buffer[..n]).into_owned()
        }
    });
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(!third.is_finished(), "a tunnel gave up its connection slot");
    // Silent for the idle timeout: both close, and the third connection gets its answer.
    for tunnel in &mut tunnels {
        assert!(
            crate::support::raw::closes_within(tunnel, Duration::from_secs(5)).await,
            "an idle tunnel stayed open"
        );
    }
    let answer = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third connection is served once the tunnels closed")
        .expect("task");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn logout_closes_the_sessions_tunnels_and_lifetime_ends_them() {
    let (_provider, gateway, _upstream, mut browser) =
        proxied(&["--websocket-max-lifetime", "3s"]).await;
    let (mut tunnel, head) =
        raw_exchange(&gateway, &handshake(&gateway, &browser, "GET", "websocket")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let logout_url = browser.user().await.json()["logoutUrl"]
        .as_str()
        .expect("logoutUrl")
        .to_owned();
    assert_eq!(browser.get(&logout_url, &[]).await.status, 302);
    assert!(
        crate::support::raw::closes_within(&mut tunnel, Duration::from_secs(1)).await,
        "the tunnel outlived its session's logout"
    );

    let mut browser = gateway.browser();
    browser.login_ok().await;
    let (mut tunnel, head) =
        raw_exchange(&gateway, &handshake(&gateway, &browser, "GET", "websocket")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(!crate::support::raw::closes_within(&mut tunnel, Duration::from_secs(2)).await);
    assert!(
        crate::support::raw::closes_within(&mut tunnel, Duration::from_secs(3)).await,
        "the tunnel outlived --websocket-max-lifetime"
    );
}

#[tokio::test]
async fn a_proxied_request_with_both_framings_never_reaches_the_upstream() {
    let (_provider, gateway, upstream, browser) = proxied(&[]).await;
    for order in [
        "content-length: 4\r\ntransfer-encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
    ] {
        let smuggle = format!(
            "POST /api/OtherApi1/orders HTTP/1.1\r\nhost: localhost\r\ncookie: {}\r\nx-csrf: 1\r\n\
             {order}\r\n\r\n0\r\n\r\nGET /api/OtherApi1/admin HTTP/1.1\r\nhost: localhost\r\n\r\n",
            browser.cookies()
        );
        let (response, closed) =
            crate::support::raw::exchange(&gateway, smuggle.as_bytes(), Duration::from_secs(5))
                .await;
        assert!(response.starts_with("HTTP/1.1 400"), "{order}: {response}");
        assert_eq!(response.matches("HTTP/1.1").count(), 1, "{response}");
        assert!(closed, "the connection is closed after a framing error");
    }
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
    // A plain request on a new connection still goes through.
    let mut browser = browser;
    assert_eq!(
        browser.get("/api/OtherApi1/products", &[CSRF]).await.status,
        200
    );
}
