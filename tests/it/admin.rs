//! `oidc-bff sessions …`: through the admin socket while the server runs, on the file when it
//! is stopped; never a token in the output.

use std::process::Command;

use crate::support::setup;

fn sessions(data_dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_oidc-bff"))
        .arg("sessions")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run the binary");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

#[tokio::test]
async fn sessions_are_listed_shown_and_revoked_while_the_server_runs() {
    let (provider, gateway) = setup(&[]).await;
    let mut first = gateway.browser();
    first.login_ok().await;
    let mut second = gateway.browser();
    second.login_ok().await;
    let dir = gateway.data_dir.path().to_owned();
    let socket = dir.join("admin.sock");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&socket).expect("socket").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let (code, out, err) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || sessions(&dir, &["list", "--json"])
    })
    .await
    .expect("task");
    assert_eq!(code, 0, "{err}");
    let list = json(&out);
    assert_eq!(list.as_array().expect("array").len(), 2);
    assert_eq!(list[0]["subject"], "alice");
    assert_eq!(list[0]["name"], "Alice Example");
    for secret in provider.issued_secrets() {
        assert!(!out.contains(&secret), "a token was printed");
    }
    let id = list[0]["id"].as_str().expect("id").to_owned();

    let (code, out, _) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        let id = id.clone();
        move || sessions(&dir, &["show", &id, "--json"])
    })
    .await
    .expect("task");
    assert_eq!(code, 0);
    let shown = json(&out);
    assert_eq!(shown["subject"], "alice");
    assert!(
        !out.contains("alice@example.com"),
        "personal claims without --claims: {out}"
    );
    let (code, out, _) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || sessions(&dir, &["show", &id, "--claims"])
    })
    .await
    .expect("task");
    assert_eq!(code, 0);
    assert_eq!(json(&out)["claims"]["email"], "alice@example.com");
    for secret in provider.issued_secrets() {
        assert!(!out.contains(&secret), "a token was printed");
    }

    let (code, out, _) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || sessions(&dir, &["stats", "--json"])
    })
    .await
    .expect("task");
    assert_eq!(code, 0);
    assert_eq!(json(&out)["sessions"], 2);

    let (code, out, _) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || sessions(&dir, &["revoke", "--sub", "alice"])
    })
    .await
    .expect("task");
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "revoked 2 session(s)");
    assert!(!first.is_auth().await, "revoked through the running server");
    assert!(!second.is_auth().await);
}

#[tokio::test]
async fn with_the_server_stopped_the_file_is_used_directly() {
    let (_provider, mut gateway) = setup(&[]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    gateway.stop().await;
    let dir = gateway.data_dir.path().to_owned();
    assert!(
        !dir.join("admin.sock").exists(),
        "the socket is removed at shutdown"
    );
    let (code, out, err) = sessions(&dir, &["stats", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["sessions"], 1);
    // Without --json, lines for a person.
    let (code, out, err) = sessions(&dir, &["stats"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("sessions:       1\n"), "{out}");
    assert!(out.contains("oldest created: 20"), "a date: {out}");
    assert!(!out.contains('{'), "not JSON: {out}");
    let (code, out, _) = sessions(&dir, &["revoke", "--all", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["revoked"], 1);
    let (_, out, _) = sessions(&dir, &["stats", "--json"]);
    assert_eq!(json(&out)["sessions"], 0);
    let (code, _, err) = sessions(&dir.join("missing"), &["stats"]);
    assert_ne!(code, 0);
    assert!(err.contains("no session database"), "{err}");
}

#[tokio::test]
async fn the_file_is_opened_with_the_servers_key_file_and_no_key_is_ever_made() {
    let keys = tempfile::tempdir().expect("key dir");
    let key = keys.path().join("gateway.key");
    let key_arg = key.to_str().expect("utf-8").to_owned();
    let (_provider, mut gateway) = setup(&["--ticket-key-file", &key_arg]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    gateway.stop().await;
    let dir = gateway.data_dir.path().to_owned();
    assert!(!dir.join("ticket.key").exists());

    // Without the server's key file: refused, and no new key in the data directory.
    let (code, _, err) = sessions(&dir, &["stats", "--json"]);
    assert_ne!(code, 0, "opened without the key");
    assert!(err.contains("ticket.key"), "{err}");
    assert!(
        !dir.join("ticket.key").exists(),
        "a key was created that the next start would use"
    );
    // With it, the same sessions as the server sees.
    let (code, out, err) = sessions(&dir, &["stats", "--json", "--ticket-key-file", &key_arg]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["sessions"], 1);
}

#[tokio::test]
async fn a_silent_admin_client_is_cut_off() {
    use tokio::io::AsyncReadExt;
    let (_provider, gateway) = setup(&[]).await;
    let socket = gateway.data_dir.path().join("admin.sock");
    let mut stream = tokio::net::UnixStream::connect(&socket)
        .await
        .expect("connect");
    let mut buffer = [0u8; 64];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .expect("the server closed a connection that sent nothing");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // The socket still answers.
    let (code, out, err) = tokio::task::spawn_blocking({
        let dir = gateway.data_dir.path().to_owned();
        move || sessions(&dir, &["stats", "--json"])
    })
    .await
    .expect("task");
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["sessions"], 0);
}

#[tokio::test]
async fn running_out_of_descriptors_does_not_close_the_admin_socket() {
    use crate::support::process::{Port, serve_args};
    let provider = crate::support::FakeProvider::start(std::sync::Arc::new(
        oidc_bff::clock::ManualClock::starting_now(),
    ))
    .await;
    let certs = crate::support::certs::TestCerts::new();
    let data = tempfile::tempdir().expect("dir");
    let dir = data.path().join("data");
    let port = Port::bind();
    // A gateway allowed few descriptors, so that admin clients can exhaust them.
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_oidc-bff"))
        .args(["serve", "--listen-stdin"])
        .stdin(port.stdin())
        .args(serve_args(
            &provider.issuer,
            &format!("https://localhost:{port}"),
            &certs,
            &dir,
        ))
        .env(
            "OIDC_BFF_CLIENT_SECRET",
            crate::support::provider::CLIENT_SECRET,
        )
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the binary");
    let socket = dir.join("admin.sock");
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // More silent clients than the gateway has descriptors: accept() fails for some.
    let mut clients = Vec::new();
    for _ in 0..120 {
        if let Ok(stream) = tokio::net::UnixStream::connect(&socket).await {
            clients.push(stream);
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(clients);
    // Past the request deadline the server has let go of them; the socket still answers.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let (code, out, err) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || sessions(&dir, &["stats", "--json"])
    })
    .await
    .expect("task");
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["sessions"], 0);
    child.kill().await.expect("kill");
}

#[tokio::test]
async fn show_lists_a_sessions_resources_and_scope_but_never_their_tokens() {
    let upstream = crate::support::Upstream::start().await;
    let route = format!(
        "/api/OtherApi1={} resource=https://orders.example",
        upstream.url
    );
    let (provider, gateway) = setup(&["--route", &route]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    let call = browser.get("/api/OtherApi1/x", &[("x-csrf", "1")]).await;
    assert_eq!(call.status, 200, "{}", call.body);
    let dir = gateway.data_dir.path().to_owned();
    let (code, out, err) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || sessions(&dir, &["list", "--json"])
    })
    .await
    .expect("task");
    assert_eq!(code, 0, "{err}");
    let id = json(&out)[0]["id"].as_str().expect("id").to_owned();
    let (code, out, err) = tokio::task::spawn_blocking(move || sessions(&dir, &["show", &id]))
        .await
        .expect("task");
    assert_eq!(code, 0, "{err}");
    let shown = json(&out);
    assert_eq!(shown["resources"][0]["resource"], "https://orders.example");
    assert!(shown["resources"][0]["expires"].is_u64(), "{out}");
    assert_eq!(shown["scope"], "openid profile offline_access");
    for secret in provider.issued_secrets() {
        assert!(!out.contains(&secret), "a token was printed: {out}");
    }
}
