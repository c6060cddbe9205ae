//! `--metrics-listen`: the endpoint parses as Prometheus text and counts what happened, with
//! bounded labels and nothing secret in it.

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Upstream, setup};

const CSRF: (&str, &str) = ("x-csrf", "1");

/// A raw HTTP/1.1 exchange with the metrics listener: (status, content type, body).
async fn scrape(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("{method} {path} HTTP/1.1\r\nhost: metrics\r\nconnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.expect("read");
    let raw = String::from_utf8(raw).expect("utf-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head");
    let status = head[9..12].parse().expect("status");
    let content_type = head
        .lines()
        .find_map(|line| line.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_owned();
    (status, content_type, body.to_owned())
}

/// Parses the exposition text strictly: every line is a comment Prometheus knows or a sample
/// `name{labels} value`, and the text ends with `# EOF`. Returns samples by name and labels.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split(' ').next().unwrap_or_default();
            assert!(
                ["HELP", "TYPE", "UNIT"].contains(&kind),
                "unexpected comment: {line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && name.starts_with("oidc_bff_"),
            "bad metric name in {line}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(
                labels.starts_with('{') && labels.ends_with('}'),
                "bad labels in {line}"
            );
            for pair in labels[1..labels.len() - 1].split("\",") {
                let (key, value) = pair.split_once("=\"").expect("key=\"value\"");
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(!value.trim_end_matches('"').contains('"'), "{line}");
            }
        }
        samples.insert(series.to_owned(), value);
    }
    samples
}

fn sample(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no sample {series} in {samples:#?}"))
}

#[tokio::test]
async fn metrics_parse_and_count_requests_logins_upstream_errors_and_sessions() {
    let upstream = Upstream::start().await;
    let up = format!("/api/up={}", upstream.url);
    let (_provider, gateway) =
        setup(&["--route", &up, "--route", "/api/down=http://127.0.0.1:9"]).await;
    let metrics_addr = gateway.metrics_addr;
    let mut browser = gateway.browser();

    browser.login_ok().await;
    let before = parse(&scrape(metrics_addr, "GET", "/metrics").await.2);
    let is_auth_ok = r#"oidc_bff_http_requests_total{route="isAuth",status="200"}"#;
    let is_auth_before = before.get(is_auth_ok).copied().unwrap_or(0.0);
    assert!(browser.is_auth().await);
    assert!(browser.is_auth().await);
    assert_eq!(browser.get("/api/up/products", &[CSRF]).await.status, 200);
    assert_eq!(browser.get("/api/down/products", &[CSRF]).await.status, 502);
    assert_eq!(
        browser.get("/signin-oidc?code=x&state=y", &[]).await.status,
        400
    );

    let (status, content_type, text) = scrape(metrics_addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let samples = parse(&text);
    assert_eq!(sample(&samples, is_auth_ok) - is_auth_before, 2.0);
    assert_eq!(
        sample(
            &samples,
            r#"oidc_bff_http_requests_total{route="/api/up",status="200"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            r#"oidc_bff_http_requests_total{route="/api/down",status="502"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            r#"oidc_bff_http_request_duration_seconds_count{route="/api/up",status="200"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&samples, r#"oidc_bff_logins_total{outcome="success"}"#),
        1.0
    );
    assert_eq!(
        sample(&samples, r#"oidc_bff_logins_total{outcome="failure"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            r#"oidc_bff_upstream_errors_total{route="/api/down",kind="unreachable"}"#
        ),
        1.0
    );
    assert_eq!(sample(&samples, "oidc_bff_sessions"), 1.0);
    assert!(sample(&samples, "oidc_bff_session_cache_hits_total") >= 1.0);
    assert_eq!(sample(&samples, "oidc_bff_access_log_dropped_total"), 0.0);

    // Nothing that identifies a user or a session is in there.
    for value in browser.jar.values() {
        assert!(
            !text.contains(value.as_str()),
            "a cookie value in the metrics"
        );
    }
    for label in ["sub=", "session=", "user=", "path="] {
        assert!(!text.contains(label), "no {label} label");
    }

    // Only GET /metrics.
    assert_eq!(scrape(metrics_addr, "GET", "/").await.0, 404);
    assert_eq!(scrape(metrics_addr, "POST", "/metrics").await.0, 405);
}

#[tokio::test]
async fn idle_connections_do_not_starve_a_scrape() {
    let (_provider, gateway) = setup(&[]).await;
    // Connections that never send a request, more than the listener serves at once.
    let mut idle = Vec::new();
    for _ in 0..80 {
        idle.push(
            tokio::net::TcpStream::connect(gateway.metrics_addr)
                .await
                .expect("connect"),
        );
    }
    let started = tokio::time::Instant::now();
    let text = tokio::time::timeout(std::time::Duration::from_secs(5), gateway.metrics())
        .await
        .expect("a scrape within 5 s");
    assert!(text.contains("oidc_bff_"), "{text}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "the scrape waited {:?}",
        started.elapsed()
    );
    drop(idle);
}
