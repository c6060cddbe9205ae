//! Hosting the built SPA: files, client-side routes, caching, precompression, traversal.

use crate::support::setup;

fn app_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, body: &[u8]| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, body).expect("write");
    };
    write("index.html", b"<!doctype html><app-root></app-root>");
    write("main-5XHQ2UVJ.js", b"console.log('app')");
    write("main-5XHQ2UVJ.js.br", b"BROTLI-BYTES");
    write("favicon.ico", b"ICO");
    write("assets/logo.svg", b"<svg/>");
    write(".env", b"SECRET=1");
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join("escape.txt")).expect("symlink");
    dir
}

#[tokio::test]
async fn the_app_its_routes_and_its_assets_are_served_with_the_right_headers() {
    let dir = app_dir();
    let (_provider, gateway) = setup(&["--static-dir", dir.path().to_str().expect("utf-8")]).await;
    let mut browser = gateway.browser();

    let index = browser.get("/", &[]).await;
    assert_eq!(index.status, 200);
    assert_eq!(index.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(index.headers["cache-control"], "no-cache");
    assert!(index.body.contains("app-root"));

    let deep = browser.get("/orders/42", &[]).await;
    assert_eq!(deep.status, 200, "client-side route gets the app");
    assert!(deep.body.contains("app-root"));

    let script = browser.get("/main-5XHQ2UVJ.js", &[]).await;
    assert_eq!(
        script.headers["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        script.headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(script.body, "console.log('app')");
    let brotli = browser
        .get("/main-5XHQ2UVJ.js", &[("accept-encoding", "gzip, br")])
        .await;
    assert_eq!(brotli.headers["content-encoding"], "br");
    assert_eq!(brotli.body, "BROTLI-BYTES");

    assert_eq!(
        browser.get("/assets/logo.svg", &[]).await.headers["content-type"],
        "image/svg+xml"
    );
    assert_eq!(browser.get("/missing.js", &[]).await.status, 404);
    assert_eq!(browser.get("/api/unknown", &[]).await.status, 404);
    assert_eq!(
        browser.get("/api/isAuth", &[]).await.body,
        "false",
        "own paths win"
    );
}

#[tokio::test]
async fn revalidation_answers_304() {
    let dir = app_dir();
    let (_provider, gateway) = setup(&["--static-dir", dir.path().to_str().expect("utf-8")]).await;
    let mut browser = gateway.browser();
    let first = browser.get("/", &[]).await;
    let etag = first.headers["etag"].to_str().expect("ascii").to_owned();
    let again = browser.get("/", &[("if-none-match", &etag)]).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
}

#[tokio::test]
async fn nothing_outside_the_app_or_hidden_is_served() {
    let dir = app_dir();
    let (_provider, gateway) = setup(&["--static-dir", dir.path().to_str().expect("utf-8")]).await;
    let mut browser = gateway.browser();
    assert_eq!(browser.get("/.env", &[]).await.status, 404);
    assert_eq!(
        browser.get("/escape.txt", &[]).await.status,
        404,
        "symlink out of the root"
    );
    for path in [
        "/%2e%2e/%2e%2e/etc/hostname",
        "/assets/../.env",
        "/assets%2f..%2f.env",
    ] {
        let reply = browser.get(path, &[]).await;
        assert_eq!(reply.status, 400, "{path}");
    }
    let post = browser
        .request(http::Method::POST, "/index.html", &[], b"x")
        .await;
    assert_eq!(post.status, 404);
}

#[tokio::test]
async fn a_dev_server_gets_the_app_paths_without_tokens() {
    let dev = crate::support::Upstream::start().await;
    let (_provider, gateway) = setup(&["--frontend-url", &dev.url]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    browser.jar.insert("theme".into(), "dark".into());
    let reply = browser.get("/orders/42", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        browser.get("/api/isAuth", &[]).await.body,
        "true",
        "own paths still win"
    );
    let seen = dev.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/orders/42");
    assert!(!seen[0].headers.contains_key("authorization"));
    assert_eq!(seen[0].headers["cookie"], "theme=dark");
}

#[tokio::test]
async fn a_client_that_stops_reading_a_response_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SIZE: usize = 64 << 20; // far more than the socket buffers hold
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("index.html"), b"<!doctype html>").expect("index");
    std::fs::write(dir.path().join("big.bin"), vec![7u8; SIZE]).expect("big file");
    let (_provider, gateway) = setup(&[
        "--static-dir",
        dir.path().to_str().expect("utf-8"),
        "--keepalive-timeout",
        "1s",
    ])
    .await;
    let mut stream = crate::support::raw::tls_connect(&gateway).await;
    stream
        .write_all(b"GET /big.bin HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("request");
    // Not a byte read for longer than twice the idle timeout.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let mut received = 0usize;
    let mut buffer = vec![0u8; 1 << 16];
    let drained = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the connection ended");
    assert!(
        received < SIZE,
        "the stalled response was cut off, not finished ({received} bytes)"
    );
}
