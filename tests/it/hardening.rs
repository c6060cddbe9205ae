//! Hostile clients: oversized heads, smuggling probes, slow and idle connections.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::raw::{closes_within, exchange, tls_connect, tls_connect_alpn};
use crate::support::setup;

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or_default()
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let (_provider, gateway) = setup(&[]).await;
    let big = format!(
        "GET /api/isAuth HTTP/1.1\r\nhost: localhost\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let (response, _) = exchange(&gateway, big.as_bytes(), Duration::from_secs(5)).await;
    assert!(status_line(&response).contains("431"), "{response}");

    let mut many = String::from("GET /api/isAuth HTTP/1.1\r\nhost: localhost\r\n");
    for index in 0..150 {
        many.push_str(&format!("x-h{index}: v\r\n"));
    }
    many.push_str("\r\n");
    let (response, _) = exchange(&gateway, many.as_bytes(), Duration::from_secs(5)).await;
    assert!(status_line(&response).contains("431"), "{response}");
}

#[tokio::test]
async fn an_overlong_request_target_gets_414() {
    let (_provider, gateway) = setup(&[]).await;
    let request = format!(
        "GET /api/isAuth?pad={} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        "a".repeat(9_000)
    );
    let (response, _) = exchange(&gateway, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(status_line(&response).contains("414"), "{response}");
    // Longer than the header limit too (16 KiB): still 414, not hyper's 431.
    for length in [17_000, 20_000] {
        let request = format!(
            "GET /api/isAuth?pad={} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
            "a".repeat(length)
        );
        let (response, _) = exchange(&gateway, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(
            status_line(&response).contains("414"),
            "{length}: {response}"
        );
    }
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_and_the_connection_closed() {
    let (_provider, gateway) = setup(&[]).await;
    let smuggle = b"GET /api/isAuth HTTP/1.1\r\nhost: localhost\r\ncontent-length: 5\r\n\
transfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /api/user HTTP/1.1\r\nhost: localhost\r\n\r\n";
    let (response, closed) = exchange(&gateway, smuggle, Duration::from_secs(5)).await;
    assert!(status_line(&response).contains("400"), "{response}");
    assert!(closed, "connection closed after the framing error");
    assert_eq!(
        response.matches("HTTP/1.1").count(),
        1,
        "the smuggled second request was not answered: {response}"
    );
}

#[tokio::test]
async fn malformed_request_heads_get_400() {
    let (_provider, gateway) = setup(&[]).await;
    let (response, closed) = exchange(
        &gateway,
        b"GET /api/isAuth HTTP/1.1\r\nhost localhost\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(status_line(&response).contains("400"), "{response}");
    assert!(closed);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let (_provider, gateway) = setup(&["--header-timeout", "1s"]).await;
    let started = tokio::time::Instant::now();
    let (_, closed) = exchange(
        &gateway,
        b"GET /api/isAuth HTTP/1.1\r\nhost: local",
        Duration::from_secs(5),
    )
    .await;
    assert!(closed, "connection closed by the header deadline");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Reads one response head (and the small body after it) from a kept-alive connection.
async fn read_response(stream: &mut TlsStream<TcpStream>) -> String {
    let mut buffer = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .expect("a response in time")
        .expect("read");
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

/// Sends `GET /healthz` on a kept-alive connection; whether it was answered 200.
async fn healthz_answered(stream: &mut TlsStream<TcpStream>) -> bool {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("write");
    read_response(stream).await.starts_with("HTTP/1.1 200")
}

#[tokio::test]
async fn a_kept_alive_connection_waits_for_the_idle_timeout_not_the_header_timeout() {
    let (_provider, gateway) =
        setup(&["--header-timeout", "1s", "--keepalive-timeout", "30s"]).await;
    let mut stream = tls_connect(&gateway).await;
    assert!(healthz_answered(&mut stream).await);
    // Idle for longer than the header timeout, then the next request on the same connection.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(
        healthz_answered(&mut stream).await,
        "the idle connection was still open"
    );
}

/// Reads from a kept-alive connection until `count` responses have arrived.
async fn read_responses(stream: &mut TlsStream<TcpStream>, count: usize) -> String {
    let mut text = String::new();
    while text.matches("HTTP/1.1 ").count() < count {
        text.push_str(&read_response(stream).await);
    }
    text
}

#[tokio::test]
async fn pipelined_requests_go_on_after_an_idle_pause() {
    // An idle HTTP/1.1 connection is handed back by hyper and parked (crate::connection):
    // bytes hyper had read but not used must come back in front of the stream.
    let (_provider, gateway) =
        setup(&["--header-timeout", "5s", "--keepalive-timeout", "30s"]).await;
    let mut stream = tls_connect(&gateway).await;
    stream
        .write_all(
            b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n\
GET /api/isAuth HTTP/1.1\r\nhost: localhost\r\n\r\nGET /healthz HT",
        )
        .await
        .expect("write");
    let first = read_responses(&mut stream, 2).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        first.contains("\r\n\r\nfalse"),
        "isAuth answered second: {first}"
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stream
        .write_all(b"TP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("write");
    let third = read_responses(&mut stream, 1).await;
    assert!(
        third.starts_with("HTTP/1.1 200"),
        "the split head answered: {third}"
    );
    // And once more after a pause with nothing buffered.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(healthz_answered(&mut stream).await);
}

#[tokio::test]
async fn a_pipelined_head_left_unfinished_is_cut_off_by_the_header_deadline() {
    let (_provider, gateway) =
        setup(&["--header-timeout", "1s", "--keepalive-timeout", "30s"]).await;
    let mut stream = tls_connect(&gateway).await;
    // A whole request and, in the same write, the start of a head that never ends.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\nGET /healthz HTTP/1.1\r\n")
        .await
        .expect("write");
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    assert!(
        closes_within(&mut stream, Duration::from_secs(5)).await,
        "closed by the header deadline, not after the 30 s idle timeout"
    );
}

#[tokio::test]
async fn a_slow_head_on_a_kept_alive_connection_is_cut_off() {
    let (_provider, gateway) =
        setup(&["--header-timeout", "1s", "--keepalive-timeout", "30s"]).await;
    let mut stream = tls_connect(&gateway).await;
    assert!(healthz_answered(&mut stream).await);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // The second head starts, one line at a time, and never ends.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .expect("write");
    let dribble = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if stream.write_all(b"x-slow: 1\r\n").await.is_err() {
                return;
            }
        }
    };
    let started = tokio::time::Instant::now();
    dribble.await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the server stopped taking the dribbled head"
    );
    assert!(closes_within(&mut stream, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_cut_off() {
    let (_provider, gateway) = setup(&["--handshake-timeout", "1s"]).await;
    let mut tcp = TcpStream::connect(gateway.addr).await.expect("connect");
    let mut buffer = [0u8; 64];
    let result = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buffer)).await;
    assert!(
        matches!(result, Ok(Ok(0)) | Ok(Err(_))),
        "closed by the handshake deadline: {result:?}"
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let (_provider, gateway) = setup(&["--keepalive-timeout", "1s"]).await;
    let mut stream = tls_connect(&gateway).await;
    assert!(healthz_answered(&mut stream).await);
    assert!(
        closes_within(&mut stream, Duration::from_secs(5)).await,
        "idle connection closed by the server"
    );
}

#[tokio::test]
async fn every_response_carries_hsts_even_errors() {
    let (_provider, gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    for path in ["/nope", "/api/isAuth", "/login?returnUrl=//x"] {
        let reply = browser.get(path, &[]).await;
        assert!(
            reply.headers.contains_key("strict-transport-security"),
            "{path} ({})",
            reply.status
        );
    }
    let reply = browser
        .request(http::Method::POST, "/api/isAuth", &[], b"")
        .await;
    assert_eq!(reply.status, 405);
}

#[tokio::test]
async fn a_thousand_half_open_connections_do_not_stop_a_login() {
    // All from 127.0.0.1 here, as if from many addresses: the per-address cap is lifted.
    let (_provider, gateway) = setup(&[
        "--handshake-timeout",
        "30s",
        "--header-timeout",
        "30s",
        "--max-connections-per-ip",
        "2000",
    ])
    .await;
    let mut parked = Vec::new();
    // Half of them never start TLS; the other half finish TLS and dribble one header line.
    for index in 0..1_000 {
        if index % 2 == 0 {
            parked.push(Parked::Tcp(
                TcpStream::connect(gateway.addr).await.expect("connect"),
            ));
        } else {
            let mut stream = tls_connect(&gateway).await;
            stream
                .write_all(b"GET /api/isAuth HTTP/1.1\r\nhost: localhost\r\n")
                .await
                .expect("write");
            parked.push(Parked::Tls(Box::new(stream)));
        }
    }
    let mut browser = gateway.browser();
    let login = tokio::time::timeout(Duration::from_secs(20), browser.login_ok()).await;
    assert!(
        login.is_ok(),
        "a normal client logged in next to 1,000 slow ones"
    );
    assert_eq!(parked.len(), 1_000);
}

enum Parked {
    Tcp(#[allow(dead_code)] TcpStream), // held open only
    Tls(#[allow(dead_code)] Box<TlsStream<TcpStream>>), // held open only
}

#[tokio::test]
async fn http2_is_offered_by_alpn() {
    let (_provider, gateway) = setup(&[]).await;
    let stream = tls_connect_alpn(&gateway, &[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const H2_PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

#[tokio::test]
async fn http2_without_alpn_h2_is_refused() {
    let (_provider, gateway) = setup(&[]).await;
    // ALPN said http/1.1, or nothing was offered: HTTP/2 over TLS needs ALPN h2 (RFC 9113,
    // section 3.3), so the connection ends at once, without a SETTINGS frame in answer.
    let (received, closed) =
        exchange(&gateway, H2_PREFACE_AND_SETTINGS, Duration::from_secs(3)).await;
    assert!(closed, "closed at once, not by the header deadline");
    assert!(received.is_empty(), "no HTTP/2 answer: {received:?}");
    let mut stream = tls_connect_alpn(&gateway, &[]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    stream
        .write_all(H2_PREFACE_AND_SETTINGS)
        .await
        .expect("write");
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer))
        .await
        .is_ok();
    assert!(
        closed && answer.is_empty(),
        "no HTTP/2 without ALPN: {answer:?}"
    );
    // The same preface with ALPN h2 is served.
    let mut stream = tls_connect_alpn(&gateway, &[b"h2"]).await;
    stream
        .write_all(H2_PREFACE_AND_SETTINGS)
        .await
        .expect("write");
    let mut frame_head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(3), stream.read_exact(&mut frame_head))
        .await
        .expect("an answer in time")
        .expect("the server's SETTINGS frame");
    assert_eq!(frame_head[3], 0x04, "a SETTINGS frame first");
}

#[tokio::test]
async fn connect_is_refused_with_405() {
    let upstream = crate::support::Upstream::start().await;
    let route = format!("/api/OtherApi1={}", upstream.url);
    let (_provider, gateway) = setup(&["--route", &route]).await;
    let (response, _) = exchange(
        &gateway,
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nhost: 127.0.0.1:22\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(status_line(&response).contains("405"), "{response}");
    assert!(upstream.seen().is_empty());
}

/// The number on the first metrics line whose name contains `name`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|n| n.contains(name))
        })
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test]
async fn only_the_first_session_cookie_value_is_looked_up() {
    let (_provider, gateway) = setup(&[]).await;
    let before = metric(&gateway.metrics().await, "session_cache_misses");
    // 200 values that each parse as a session key (250 would pass the header size limit).
    let cookie = (0..200)
        .map(|index| format!("__Host-bff={index:0>6}{}", "A".repeat(48)))
        .collect::<Vec<_>>()
        .join("; ");
    let reply = gateway
        .browser()
        .get("/api/isAuth", &[("cookie", &cookie)])
        .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "false"));
    let after = metric(&gateway.metrics().await, "session_cache_misses");
    assert!(after - before <= 1.0, "{} lookups", after - before);
}

/// An HTTP/2 PING frame (8 bytes of opaque data) and a SETTINGS acknowledgement.
const H2_PING: &[u8] = b"\0\0\x08\x06\0\0\0\0\0pingpong";
const H2_SETTINGS_ACK: &[u8] = b"\0\0\0\x04\x01\0\0\0\0";

#[tokio::test]
async fn http2_connections_without_streams_close_even_when_they_ping() {
    let (_provider, gateway) =
        setup(&["--keepalive-timeout", "1s", "--max-connections", "2"]).await;
    let started = tokio::time::Instant::now();
    let mut pingers = Vec::new();
    for _ in 0..2 {
        let mut stream = tls_connect_alpn(&gateway, &[b"h2"]).await;
        stream
            .write_all(H2_PREFACE_AND_SETTINGS)
            .await
            .expect("preface");
        stream.write_all(H2_SETTINGS_ACK).await.expect("ack");
        // Never a stream: only PINGs every 200 ms for at most 8 s, reading what comes back.
        pingers.push(tokio::spawn(async move {
            let (mut reader, mut writer) = tokio::io::split(stream);
            let reading = tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                loop {
                    match reader.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
            for _ in 0..40 {
                if reading.is_finished() || writer.write_all(H2_PING).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let closed = reading.is_finished();
            reading.abort();
            closed
        }));
    }
    for pinger in pingers {
        assert!(
            pinger.await.expect("pinger"),
            "a pinging connection without streams stayed open"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(8));
    let mut third = tls_connect(&gateway).await;
    assert!(healthz_answered(&mut third).await, "the slots came back");
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let (_provider, gateway) = setup(&["--max-connections-per-ip", "2"]).await;
    let mut first = tls_connect(&gateway).await;
    let mut second = tls_connect(&gateway).await;
    assert!(healthz_answered(&mut first).await);
    assert!(healthz_answered(&mut second).await);
    // The third from the same address is closed before any TLS.
    let mut tcp = TcpStream::connect(gateway.addr).await.expect("connect");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut byte))
        .await
        .expect("closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = tls_connect(&gateway).await;
    assert!(healthz_answered(&mut again).await, "a share given back");
}
