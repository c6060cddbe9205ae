//! The real `oidc-bff` binary as a child process, for tests of what only a process shows
//! (signals, sd_notify, SIGKILL).

use std::path::Path;
use std::process::Stdio;

use super::certs::TestCerts;
use super::provider::{CLIENT_ID, CLIENT_SECRET, FakeProvider};

/// The `serve` flags every test gateway shares: the provider, the client, the public origin,
/// the test certificate and the data directory.
pub fn serve_args(issuer: &str, base: &str, certs: &TestCerts, data_dir: &Path) -> Vec<String> {
    [
        "--issuer",
        issuer,
        "--client-id",
        CLIENT_ID,
        "--public-url",
        base,
        "--tls-cert",
        certs.cert.to_str().expect("utf-8"),
        "--tls-key",
        certs.key.to_str().expect("utf-8"),
        "--data-dir",
        data_dir.to_str().expect("utf-8"),
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect()
}

/// A loopback port the test holds bound for its whole life: each gateway it starts gets the
/// listening socket as standard input (`--listen-stdin`, as systemd socket activation passes
/// it), so no other process can take the port between a probe and a bind, nor between a stop
/// and a restart.
#[derive(Debug)]
pub struct Port {
    listener: std::net::TcpListener,
    /// The port number.
    pub number: u16,
}

impl Port {
    /// A new port on 127.0.0.1.
    pub fn bind() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let number = listener.local_addr().expect("addr").port();
        Self { listener, number }
    }

    /// The listening socket, for a child's standard input.
    pub fn stdin(&self) -> Stdio {
        let socket = self.listener.try_clone().expect("clone the listener");
        Stdio::from(std::os::fd::OwnedFd::from(socket))
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.number)
    }
}

/// `oidc-bff serve` for `provider` on `port` with the test certificate and `data_dir`; quiet,
/// killed when dropped. Callers add environment and spawn it.
pub fn gateway_command(
    provider: &FakeProvider,
    certs: &TestCerts,
    data_dir: &Path,
    port: &Port,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_oidc-bff"));
    command
        .args(["serve", "--listen-stdin"])
        .stdin(port.stdin())
        .args(serve_args(
            &provider.issuer,
            &format!("https://localhost:{port}"),
            certs,
            data_dir,
        ))
        .env("OIDC_BFF_CLIENT_SECRET", CLIENT_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
}

/// A loopback port nobody listens on (bound and released): for "connection refused".
pub fn closed_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
    probe.local_addr().expect("addr").port()
}

/// Sends a signal (`"TERM"`, `"HUP"`, …) to a child process.
pub fn send_signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("running");
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}");
}
