//! The binary under a service manager: `READY=1`, watchdog pings and `STOPPING=1` over
//! `$NOTIFY_SOCKET`, and SIGTERM drains and exits 0 without losing a session.

use std::sync::Arc;
use std::time::Duration;

use oidc_bff::clock::ManualClock;

use crate::support::browser::Browser;
use crate::support::certs::TestCerts;
use crate::support::process::{Port, gateway_command, send_signal};
use crate::support::provider::FakeProvider;
use crate::support::upstream::Upstream;

/// What each test here starts from.
struct Setup {
    provider: FakeProvider,
    certs: TestCerts,
    /// Holds the temporary directory (and with it `data_dir`) for the test's lifetime.
    data: tempfile::TempDir,
    data_dir: std::path::PathBuf,
    port: Port,
}

async fn setup() -> Setup {
    let data = tempfile::tempdir().expect("dir");
    Setup {
        provider: FakeProvider::start(Arc::new(ManualClock::starting_now())).await,
        certs: TestCerts::new(),
        data_dir: data.path().join("data"),
        data,
        port: Port::bind(),
    }
}

struct Child {
    process: tokio::process::Child,
    /// Every notification the binary sent, read as they arrive (as systemd does: a manager
    /// that stops reading would fill the socket queue).
    notifications: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Setup {
    /// The gateway's public base URL.
    fn base(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// Starts the binary on this setup's data dir and port, with `extra` flags, under a
    /// notification socket that is read as systemd reads it.
    async fn spawn(&self, extra: &[&str]) -> Child {
        let socket = self.data_dir.with_extension("notify");
        let _ = std::fs::remove_file(&socket);
        let receiver = tokio::net::UnixDatagram::bind(&socket).expect("notify socket");
        let process = gateway_command(&self.provider, &self.certs, &self.data_dir, &self.port)
            .args(extra)
            .env("NOTIFY_SOCKET", &socket)
            .env("WATCHDOG_USEC", "200000")
            .spawn()
            .expect("start the binary");
        let (sender, notifications) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buffer = [0u8; 256];
            while let Ok(length) = receiver.recv(&mut buffer).await {
                let text = String::from_utf8_lossy(&buffer[..length]).into_owned();
                if sender.send(text).is_err() {
                    return;
                }
            }
        });
        Child {
            process,
            notifications,
        }
    }
}

impl Child {
    /// Waits (bounded) for a notification containing `state`.
    async fn expect(&mut self, state: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let received = tokio::time::timeout_at(deadline, self.notifications.recv()).await;
            let text = received
                .unwrap_or_else(|_| panic!("no {state} within 10 s"))
                .expect("the reader runs");
            if text.contains(state) {
                return;
            }
        }
    }

    fn terminate(&self) {
        send_signal(&self.process, "TERM");
    }
}

#[tokio::test]
async fn sigterm_notifies_drains_exits_zero_and_keeps_sessions() {
    let fixture = setup().await;
    let mut child = fixture.spawn(&[]).await;
    child.expect("READY=1").await;
    child.expect("WATCHDOG=1").await;

    let base = fixture.base();
    let mut browser = Browser::new(&base, &fixture.certs);
    browser.wait_healthy().await;
    browser.login_ok().await;

    child.terminate();
    child.expect("STOPPING=1").await;
    let status = tokio::time::timeout(Duration::from_secs(10), child.process.wait())
        .await
        .expect("exited in time")
        .expect("status");
    assert_eq!(status.code(), Some(0), "a clean stop exits 0");

    let mut restarted = fixture.spawn(&[]).await;
    restarted.expect("READY=1").await;
    let mut after = Browser::new(&base, &fixture.certs);
    after.jar = browser.jar.clone();
    after.wait_healthy().await;
    assert!(
        after.is_auth().await,
        "the session acknowledged before SIGTERM survived"
    );
}

/// Waits (bounded) until the upstream has received `count` requests.
async fn wait_for_upstream(upstream: &Upstream, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while upstream.seen().len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} calls reached the upstream",
            upstream.seen().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_under_load_finishes_in_flight_calls_and_loses_no_acknowledged_session() {
    drain_under_load(&[]).await;
}

#[tokio::test]
async fn the_single_threaded_scheduler_serves_and_drains_the_same_way() {
    // `--worker-threads 1` runs everything on the current-thread scheduler.
    drain_under_load(&["--worker-threads", "1"]).await;
}

async fn drain_under_load(extra: &[&str]) {
    let fixture = setup().await;
    let upstream = Upstream::start().await;
    upstream.set_delay(Duration::from_millis(1500));
    let route = format!("/api/slow={}", upstream.url);
    let mut args = vec!["--route", &route];
    args.extend_from_slice(extra);
    let mut child = fixture.spawn(&args).await;
    child.expect("READY=1").await;
    let base = fixture.base();

    // Sessions acknowledged to their browsers before the signal.
    let mut browsers = Vec::new();
    for _ in 0..8 {
        let mut browser = Browser::new(&base, &fixture.certs);
        browser.wait_healthy().await;
        browser.login_ok().await;
        browsers.push(browser);
    }
    // Slow API calls in flight when the signal arrives, each on its own connection.
    let mut calls = Vec::new();
    for browser in &browsers {
        for _ in 0..2 {
            let mut caller = Browser::new(&base, &fixture.certs);
            caller.jar = browser.jar.clone();
            let url = format!("{base}/api/slow/work");
            calls.push(tokio::spawn(async move {
                caller.get(&url, &[("x-csrf", "1")]).await.status
            }));
        }
    }
    wait_for_upstream(&upstream, calls.len()).await;

    child.terminate();
    child.expect("STOPPING=1").await;
    for call in calls {
        assert_eq!(
            call.await.expect("call task"),
            200,
            "a call in flight at SIGTERM was finished, not cut"
        );
    }
    let status = tokio::time::timeout(Duration::from_secs(10), child.process.wait())
        .await
        .expect("exited in time")
        .expect("status");
    assert_eq!(status.code(), Some(0));

    let mut restarted = fixture.spawn(extra).await;
    restarted.expect("READY=1").await;
    for browser in &browsers {
        let mut after = Browser::new(&base, &fixture.certs);
        after.jar = browser.jar.clone();
        after.wait_healthy().await;
        assert!(after.is_auth().await, "an acknowledged session was lost");
    }
}

#[tokio::test]
async fn a_notify_socket_nobody_reads_never_stalls_the_gateway() {
    let fixture = setup().await;
    let socket = fixture.data.path().join("unread.notify");
    // Bound, never read: its queue fills after a few watchdog pings.
    let _unread = std::os::unix::net::UnixDatagram::bind(&socket).expect("notify socket");
    let mut process = gateway_command(
        &fixture.provider,
        &fixture.certs,
        &fixture.data_dir,
        &fixture.port,
    )
    .env("NOTIFY_SOCKET", &socket)
    .env("WATCHDOG_USEC", "10000")
    .spawn()
    .expect("start the binary");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let served = tokio::time::timeout(Duration::from_secs(20), async {
        let mut browser = Browser::new(&fixture.base(), &fixture.certs);
        browser.wait_healthy().await;
        browser.login_ok().await;
        browser.is_auth().await
    })
    .await;
    if served.is_err() {
        let _ = process.start_kill();
    }
    assert!(
        served.expect("logins are served while the notify socket is full"),
        "signed in"
    );
    send_signal(&process, "TERM");
    let Ok(status) = tokio::time::timeout(Duration::from_secs(10), process.wait()).await else {
        let _ = process.start_kill();
        panic!("a full notify socket blocked the stop");
    };
    assert_eq!(status.expect("status").code(), Some(0));
}

#[tokio::test]
async fn shutdown_timeout_bounds_the_drain() {
    let fixture = setup().await;
    let upstream = Upstream::start().await;
    upstream.set_delay(Duration::from_secs(60));
    let route = format!("/api/stuck={}", upstream.url);
    let mut child = fixture
        .spawn(&[
            "--route",
            &route,
            "--shutdown-timeout",
            "1s",
            "--upstream-timeout",
            "120s",
        ])
        .await;
    child.expect("READY=1").await;
    let base = fixture.base();
    let mut browser = Browser::new(&base, &fixture.certs);
    browser.wait_healthy().await;
    browser.login_ok().await;
    let mut caller = Browser::new(&base, &fixture.certs);
    caller.jar = browser.jar.clone();
    let url = format!("{base}/api/stuck/forever");
    let stuck = tokio::spawn(async move { caller.get(&url, &[("x-csrf", "1")]).await.status });
    wait_for_upstream(&upstream, 1).await;

    child.terminate();
    let status = tokio::time::timeout(Duration::from_secs(15), child.process.wait())
        .await
        .expect("the drain is bounded by --shutdown-timeout, not by the stuck call")
        .expect("status");
    assert_eq!(
        status.code(),
        Some(0),
        "a bounded drain is still a clean stop"
    );
    stuck.abort();
}

#[tokio::test]
async fn json_logs_parse_and_carry_one_access_line_per_request_without_secrets() {
    use tokio::io::AsyncReadExt;

    let provider = FakeProvider::start(Arc::new(ManualClock::starting_now())).await;
    let certs = TestCerts::new();
    let data = tempfile::tempdir().expect("dir");
    let port = Port::bind();
    let upstream = crate::support::upstream::Upstream::start().await;
    let mut child = gateway_command(&provider, &certs, data.path(), &port)
        .args(["--log-format", "json"])
        .args(["--route", &format!("/api/up={}", upstream.url)])
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the binary");
    let base = format!("https://localhost:{port}");
    let mut browser = Browser::new(&base, &certs);
    browser.wait_healthy().await;
    browser.login_ok().await;
    let callback = browser
        .get("/signin-oidc?code=SECRET-CODE-123&state=STATE-456", &[])
        .await;
    assert_eq!(callback.status, 400);
    let cookie = browser.jar["__Host-bff"].clone();
    let proxied = browser.get("/api/up/products", &[("X-CSRF", "1")]).await;
    assert_eq!(proxied.status, 200, "{}", proxied.body);
    let user = browser.user().await;
    assert_eq!(user.status, 200);
    let logout_url = user.json()["logoutUrl"]
        .as_str()
        .expect("logoutUrl")
        .to_owned();
    assert_eq!(browser.get(&logout_url, &[]).await.status, 302);
    send_signal(&child, "TERM");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .await
        .expect("read logs");
    child.wait().await.expect("exit");

    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let access: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|line| line["target"] == "oidc_bff::access")
        .collect();
    assert!(
        access
            .iter()
            .any(|line| line["path"] == "/api/isAuth" && line["status"] == 200),
        "{stderr}"
    );
    assert!(
        access
            .iter()
            .any(|line| line["path"] == "/signin-oidc" && line["status"] == 400)
    );
    // Every line that acted for the session names it (a short hash), the proxied one its
    // upstream by address, not by the --route destination's place in the flag.
    for path in ["/api/user", "/logout", "/api/up/products"] {
        let line = access
            .iter()
            .find(|line| line["path"] == path)
            .unwrap_or_else(|| panic!("no access line for {path}: {stderr}"));
        let session = line["session"].as_str().unwrap_or("-");
        assert!(
            session.len() == 8 && session != "-",
            "{path} names the session: {line}"
        );
    }
    let proxied = access
        .iter()
        .find(|line| line["path"] == "/api/up/products")
        .expect("proxied line");
    let authority = upstream
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/');
    assert_eq!(proxied["upstream"], authority, "{proxied}");
    for secret in provider.issued_secrets() {
        assert!(!stderr.contains(&secret), "a token reached the log");
    }
    for secret in ["SECRET-CODE-123", "STATE-456", cookie.as_str()] {
        assert!(!stderr.contains(secret), "{secret} reached the log");
    }
}

/// A fresh TLS connection to the gateway on `port`, trusting `cas`.
async fn tls_to(
    port: u16,
    cas: &[&TestCerts],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let cas: Vec<_> = cas.iter().map(|certs| &certs.ca_der).collect();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    crate::support::raw::tls_connect_to(addr, &cas, &[]).await
}

/// The leaf certificate a fresh TLS connection is served.
async fn served_certificate(port: u16, cas: &[&TestCerts]) -> Vec<u8> {
    let stream = tls_to(port, cas).await;
    stream.get_ref().1.peer_certificates().expect("certificate")[0].to_vec()
}

fn leaf(certs: &TestCerts) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(&certs.cert)
        .expect("pem")
        .to_vec()
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_routes_and_keeps_them_when_new_files_are_bad() {
    let provider = FakeProvider::start(Arc::new(ManualClock::starting_now())).await;
    let first = TestCerts::new();
    let second = TestCerts::new();
    let upstream = crate::support::Upstream::start().await;
    let data = tempfile::tempdir().expect("dir");
    let routes = data.path().join("proxy.json");
    let route = |prefix: &str| {
        format!(
            r#"{{"Routes": {{"r": {{"ClusterId": "c", "AuthorizationPolicy": "anonymous",
                 "Match": {{"Path": "/{prefix}/{{**rest}}"}}}}}},
                "Clusters": {{"c": {{"Destinations": {{"d": {{"Address": "{}"}}}}}}}}}}"#,
            upstream.url
        )
    };
    std::fs::write(&routes, route("old")).expect("write");
    // The gateway reads `first`'s files, which the test then overwrites with `second`'s.
    let (first_leaf, second_leaf) = (leaf(&first), leaf(&second));
    let port = Port::bind();
    let mut command = gateway_command(&provider, &first, &data.path().join("data"), &port);
    command.args(["--proxy-config", routes.to_str().expect("utf-8")]);
    let child = command.spawn().expect("start");
    let base = format!("https://localhost:{port}");
    let mut browser = Browser::with_cas(&base, vec![first.ca_der.clone(), second.ca_der.clone()]);
    browser.wait_healthy().await;
    assert_eq!(
        served_certificate(port.number, &[&first, &second]).await,
        first_leaf
    );
    assert_eq!(browser.get("/old/x", &[]).await.status, 200);

    std::fs::copy(&second.cert, &first.cert).expect("copy");
    std::fs::copy(&second.key, &first.key).expect("copy");
    std::fs::write(&routes, route("new")).expect("write");
    send_signal(&child, "HUP");
    let mut reloaded = false;
    for _ in 0..100 {
        if served_certificate(port.number, &[&first, &second]).await == second_leaf {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "new connections get the new certificate");
    let mut fresh = Browser::with_cas(&base, vec![first.ca_der.clone(), second.ca_der.clone()]);
    assert_eq!(fresh.get("/new/x", &[]).await.status, 200);
    assert_eq!(fresh.get("/old/x", &[]).await.status, 404);

    // Broken files: logged, and the running configuration stays.
    std::fs::write(&first.cert, "not a certificate").expect("write");
    std::fs::write(&routes, "{ not json").expect("write");
    send_signal(&child, "HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        served_certificate(port.number, &[&first, &second]).await,
        second_leaf
    );
    assert_eq!(fresh.get("/new/x", &[]).await.status, 200);
}

#[tokio::test]
async fn a_head_dribbled_during_the_drain_does_not_hold_it() {
    use tokio::io::AsyncWriteExt;

    let fixture = setup().await;
    let mut child = fixture
        .spawn(&["--header-timeout", "1s", "--shutdown-timeout", "60s"])
        .await;
    child.expect("READY=1").await;
    Browser::new(&fixture.base(), &fixture.certs)
        .wait_healthy()
        .await;
    let mut stream = tls_to(fixture.port.number, &[&fixture.certs]).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .expect("first line");
    child.terminate();
    // One more header line every 300 ms, for as long as the connection takes them.
    let dribble = tokio::spawn(async move {
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if stream.write_all(b"x-slow: 1\r\n").await.is_err() {
                return;
            }
        }
    });
    let status = tokio::time::timeout(Duration::from_secs(15), child.process.wait())
        .await
        .expect("the drain is bounded by the header deadline, not by --shutdown-timeout")
        .expect("status");
    assert_eq!(status.code(), Some(0));
    dribble.abort();
}

#[tokio::test]
async fn a_client_secret_from_the_environment_leaves_the_process_environment() {
    let fixture = setup().await;
    let mut child = fixture.spawn(&[]).await;
    child.expect("READY=1").await;
    let pid = child.process.id().expect("running");
    // What any process of the same user can read for as long as the gateway runs.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains(crate::support::provider::CLIENT_SECRET),
        "the secret is still in /proc/{pid}/environ"
    );
    assert!(environ.contains("NOTIFY_SOCKET="), "the rest is kept");
    // The gateway still has the secret: the code exchange authenticates with it.
    let mut browser = Browser::new(&fixture.base(), &fixture.certs);
    browser.wait_healthy().await;
    browser.login_ok().await;
    child.terminate();
}
