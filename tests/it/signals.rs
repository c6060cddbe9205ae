//! The binary under a service manager: `READY=1`, watchdog pings and `STOPPING=1` over
//! `$NOTIFY_SOCKET`, and SIGTERM drains and exits 0 without losing a session.

use std::sync::Arc;
use std::time::Duration;

use oidc_bff::clock::ManualClock;

use crate::support::browser::Browser;
use crate::support::certs::TestCerts;
use crate::support::process::{free_port, gateway_command, send_signal};
use crate::support::provider::FakeProvider;

struct Child {
    process: tokio::process::Child,
    notifications: tokio::net::UnixDatagram,
}

async fn spawn(
    provider: &FakeProvider,
    certs: &TestCerts,
    data: &std::path::Path,
    port: u16,
) -> Child {
    let socket = data.with_extension("notify");
    let _ = std::fs::remove_file(&socket);
    let notifications = tokio::net::UnixDatagram::bind(&socket).expect("notify socket");
    let process = gateway_command(provider, certs, data, port)
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "200000")
        .spawn()
        .expect("start the binary");
    Child {
        process,
        notifications,
    }
}

impl Child {
    /// Waits (bounded) for a notification containing `state`.
    async fn expect(&self, state: &str) {
        let mut buffer = [0u8; 256];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let received =
                tokio::time::timeout_at(deadline, self.notifications.recv(&mut buffer)).await;
            let length = received
                .unwrap_or_else(|_| panic!("no {state} within 10 s"))
                .expect("recv");
            if String::from_utf8_lossy(&buffer[..length]).contains(state) {
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
    let provider = FakeProvider::start(Arc::new(ManualClock::starting_now())).await;
    let certs = TestCerts::new();
    let data = tempfile::tempdir().expect("dir");
    let data_dir = data.path().join("data");
    let port = free_port();
    let mut child = spawn(&provider, &certs, &data_dir, port).await;
    child.expect("READY=1").await;
    child.expect("WATCHDOG=1").await;

    let base = format!("https://localhost:{port}");
    let mut browser = Browser::new(&base, &certs);
    browser.wait_healthy().await;
    browser.login_ok().await;

    child.terminate();
    child.expect("STOPPING=1").await;
    let status = tokio::time::timeout(Duration::from_secs(10), child.process.wait())
        .await
        .expect("exited in time")
        .expect("status");
    assert_eq!(status.code(), Some(0), "a clean stop exits 0");

    let restarted = spawn(&provider, &certs, &data_dir, port).await;
    restarted.expect("READY=1").await;
    let mut after = Browser::new(&base, &certs);
    after.jar = browser.jar.clone();
    after.wait_healthy().await;
    assert!(
        after.is_auth().await,
        "the session acknowledged before SIGTERM survived"
    );
}

#[tokio::test]
async fn json_logs_parse_and_carry_one_access_line_per_request_without_secrets() {
    use tokio::io::AsyncReadExt;

    let provider = FakeProvider::start(Arc::new(ManualClock::starting_now())).await;
    let certs = TestCerts::new();
    let data = tempfile::tempdir().expect("dir");
    let port = free_port();
    let mut child = gateway_command(&provider, &certs, data.path(), port)
        .args(["--log-format", "json"])
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
    for secret in provider.issued_secrets() {
        assert!(!stderr.contains(&secret), "a token reached the log");
    }
    for secret in [
        "SECRET-CODE-123",
        "STATE-456",
        browser.jar["__Host-bff"].as_str(),
    ] {
        assert!(!stderr.contains(secret), "{secret} reached the log");
    }
}

/// The leaf certificate a fresh TLS connection is served.
async fn served_certificate(port: u16, cas: &[&TestCerts]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for certs in cas {
        roots.add(certs.ca_der.clone()).expect("CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("handshake");
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
    let port = free_port();
    let mut command = gateway_command(&provider, &first, &data.path().join("data"), port);
    command.args(["--proxy-config", routes.to_str().expect("utf-8")]);
    let child = command.spawn().expect("start");
    let base = format!("https://localhost:{port}");
    let mut browser = Browser::with_cas(&base, vec![first.ca_der.clone(), second.ca_der.clone()]);
    browser.wait_healthy().await;
    assert_eq!(
        served_certificate(port, &[&first, &second]).await,
        first_leaf
    );
    assert_eq!(browser.get("/old/x", &[]).await.status, 200);

    std::fs::copy(&second.cert, &first.cert).expect("copy");
    std::fs::copy(&second.key, &first.key).expect("copy");
    std::fs::write(&routes, route("new")).expect("write");
    send_signal(&child, "HUP");
    let mut reloaded = false;
    for _ in 0..100 {
        if served_certificate(port, &[&first, &second]).await == second_leaf {
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
        served_certificate(port, &[&first, &second]).await,
        second_leaf
    );
    assert_eq!(fresh.get("/new/x", &[]).await.status, 200);
}
