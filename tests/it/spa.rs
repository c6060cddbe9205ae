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
    write("report-20240101.js", b"dated");
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
    assert_eq!(
        index.headers["content-security-policy"],
        "frame-ancestors 'none'"
    );
    assert_eq!(index.headers["x-frame-options"], "DENY");

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
        "400ms",
    ])
    .await;
    let mut stream = crate::support::raw::tls_connect(&gateway).await;
    stream
        .write_all(b"GET /big.bin HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("request");
    // Not a byte read for four times the idle timeout.
    tokio::time::sleep(std::time::Duration::from_millis(1_600)).await;
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

#[tokio::test]
async fn a_precompressed_sibling_must_lie_inside_the_directory_too() {
    let outside = tempfile::tempdir().expect("outside");
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, b"OUTSIDE-SECRET").expect("secret");
    let dir = app_dir();
    std::fs::write(dir.path().join("main.js"), b"inside").expect("main");
    std::os::unix::fs::symlink(&secret, dir.path().join("main.js.br")).expect("symlink br");
    std::os::unix::fs::symlink(&secret, dir.path().join("main.js.gz")).expect("symlink gz");
    let (_provider, gateway) = setup(&["--static-dir", dir.path().to_str().expect("utf-8")]).await;
    let mut browser = gateway.browser();
    let reply = browser
        .get("/main.js", &[("accept-encoding", "br, gzip")])
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "inside", "the outside file was served");
    assert!(!reply.headers.contains_key("content-encoding"));

    // `br;q=0` means "not br".
    let reply = browser
        .get("/main-5XHQ2UVJ.js", &[("accept-encoding", "br;q=0, gzip")])
        .await;
    assert_eq!(reply.body, "console.log('app')");
    assert!(!reply.headers.contains_key("content-encoding"));
}

#[tokio::test]
async fn ranges_and_dates_are_answered() {
    let dir = app_dir();
    let (_provider, gateway) = setup(&["--static-dir", dir.path().to_str().expect("utf-8")]).await;
    let mut browser = gateway.browser();
    let whole = browser.get("/main-5XHQ2UVJ.js", &[]).await;
    assert_eq!(whole.headers["accept-ranges"], "bytes");
    let part = browser
        .get("/main-5XHQ2UVJ.js", &[("range", "bytes=0-6")])
        .await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, "console");
    assert_eq!(part.headers["content-range"], "bytes 0-6/18");
    let tail = browser
        .get("/main-5XHQ2UVJ.js", &[("range", "bytes=-5")])
        .await;
    assert_eq!((tail.status, tail.body.as_str()), (206, "app')"));
    let past = browser
        .get("/main-5XHQ2UVJ.js", &[("range", "bytes=18-")])
        .await;
    assert_eq!(past.status, 416);
    assert_eq!(past.headers["content-range"], "bytes */18");
    let etag = whole.headers["etag"].to_str().expect("ascii").to_owned();
    let stale = browser
        .get(
            "/main-5XHQ2UVJ.js",
            &[("range", "bytes=0-6"), ("if-range", "\"stale\"")],
        )
        .await;
    assert_eq!((stale.status, stale.body.len()), (200, 18));
    let fresh = browser
        .get(
            "/main-5XHQ2UVJ.js",
            &[("range", "bytes=0-6"), ("if-range", &etag)],
        )
        .await;
    assert_eq!(fresh.status, 206);

    let modified = whole.headers["last-modified"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let again = browser
        .get("/main-5XHQ2UVJ.js", &[("if-modified-since", &modified)])
        .await;
    assert_eq!(again.status, 304);
    let old = browser
        .get(
            "/main-5XHQ2UVJ.js",
            &[("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT")],
        )
        .await;
    assert_eq!(old.status, 200);

    // Only fingerprints are immutable: not HTML, not a date in a name.
    let dated = browser.get("/report-20240101.js", &[]).await;
    assert_eq!(dated.headers["cache-control"], "no-cache");
    // SVG cannot run scripts when opened on its own.
    let svg = browser.get("/assets/logo.svg", &[]).await;
    assert_eq!(
        svg.headers["content-security-policy"],
        "script-src 'none'; frame-ancestors 'none'"
    );
    // Client routes are decided on the normal path, case as the routes see it.
    assert_eq!(browser.get("/API/x", &[]).await.status, 404);
    assert_eq!(browser.get("/%61pi/x", &[]).await.status, 404);
}

#[tokio::test]
async fn a_large_file_is_streamed_whole_and_in_parts() {
    const SIZE: usize = 8 << 20;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("index.html"), b"<!doctype html>").expect("index");
    let content: Vec<u8> = (0..SIZE).map(|index| (index % 251) as u8).collect();
    std::fs::write(dir.path().join("big.bin"), &content).expect("big file");
    let (_provider, gateway) = setup(&["--static-dir", dir.path().to_str().expect("utf-8")]).await;
    let mut browser = gateway.browser();
    let whole = browser.get("/big.bin", &[]).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.headers["content-length"], SIZE.to_string().as_str());
    // The body is read as text (lossy), so compare a part that is plain ASCII instead.
    let start = 1_000_003usize;
    let range = format!("bytes={start}-{}", start + 99_999);
    let part = browser.get("/big.bin", &[("range", &range)]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.headers["content-length"], "100000");
    let expected = String::from_utf8_lossy(&content[start..start + 100_000]).into_owned();
    assert_eq!(part.body, expected);
}
