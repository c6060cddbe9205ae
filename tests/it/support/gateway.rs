//! Runs the real gateway in-process on an ephemeral port, with real TLS (a test CA), a real redb
//! file in a temp dir, and the shared manual clock.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use oidc_bff::clock::ManualClock;
use oidc_bff::config::{Cli, Command, Config, Environment};
use tokio::sync::oneshot;

use super::browser::Browser;
use super::certs::TestCerts;
use super::provider::{CLIENT_SECRET, FakeProvider};

struct TestEnvironment;

impl Environment for TestEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        (name == "OIDC_BFF_CLIENT_SECRET").then(|| CLIENT_SECRET.to_owned())
    }
}

/// A running gateway.
pub struct TestGateway {
    pub addr: SocketAddr,
    /// The Prometheus endpoint (`--metrics-listen`, always on in tests).
    pub metrics_addr: SocketAddr,
    pub base: String,
    pub clock: Arc<ManualClock>,
    pub certs: Arc<TestCerts>,
    pub data_dir: Arc<tempfile::TempDir>,
    issuer: String,
    extra: Vec<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), oidc_bff::RunError>>>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl TestGateway {
    /// Starts a gateway for `provider` and waits until it is ready.
    pub async fn start(provider: &FakeProvider, extra: &[&str]) -> Self {
        let gateway = Self::start_unready(provider, extra).await;
        gateway.wait_ready().await;
        gateway
    }

    /// Starts a gateway without waiting for provider discovery.
    pub async fn start_unready(provider: &FakeProvider, extra: &[&str]) -> Self {
        let certs = Arc::new(TestCerts::new());
        let data_dir = Arc::new(tempfile::tempdir().expect("data dir"));
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::launch(
            provider.issuer.clone(),
            provider.shared_clock(),
            certs,
            data_dir,
            extra,
        )
        .await
    }

    async fn launch(
        issuer: String,
        clock: Arc<ManualClock>,
        certs: Arc<TestCerts>,
        data_dir: Arc<tempfile::TempDir>,
        extra: Vec<String>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway");
        let addr = listener.local_addr().expect("addr");
        let base = format!("https://localhost:{}", addr.port());
        let config = config(&issuer, &base, &certs, data_dir.path(), &extra);
        let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind metrics");
        let metrics_addr = metrics_listener.local_addr().expect("metrics addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let deps = oidc_bff::Deps {
            clock: clock.clone(),
            reload: None,
            metrics_listener: Some(metrics_listener),
        };
        let task = tokio::spawn(oidc_bff::run(config, listener, deps, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            metrics_addr,
            base,
            clock,
            certs,
            data_dir,
            issuer,
            extra,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Polls /healthz until it answers 200 (bounded).
    pub async fn wait_ready(&self) {
        let mut browser = self.browser();
        for _ in 0..100 {
            if browser.get("/healthz", &[]).await.status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway did not become ready");
    }

    /// The Prometheus text from `/metrics` (plain HTTP/1.1, one request).
    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .expect("connect to the metrics listener");
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: m\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut raw = String::new();
        tcp.read_to_string(&mut raw).await.expect("read");
        raw.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }

    /// A new browser with an empty cookie jar.
    pub fn browser(&self) -> Browser {
        Browser::new(&self.base, &self.certs)
    }

    /// Stops the gateway cleanly and waits for it.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("gateway task").expect("gateway run");
        }
    }

    /// Waits for a gateway that stopped by itself (a failed start), and returns how it ended.
    pub async fn finished(mut self) -> Result<(), oidc_bff::RunError> {
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the gateway stopped within 10 s")
            .expect("gateway task")
    }

    /// Stops and starts again on the same data dir and the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        let restarted = Self::launch(
            self.issuer.clone(),
            self.clock.clone(),
            self.certs.clone(),
            self.data_dir.clone(),
            self.extra.clone(),
        )
        .await;
        restarted.wait_ready().await;
        *self = restarted;
    }
}

fn config(
    issuer: &str,
    base: &str,
    certs: &TestCerts,
    data_dir: &Path,
    extra: &[String],
) -> Config {
    let mut argv: Vec<String> = vec!["oidc-bff".into(), "serve".into()];
    argv.extend(super::process::serve_args(issuer, base, certs, data_dir));
    argv.extend(["--db-cache".into(), "4MiB".into()]);
    argv.extend(extra.iter().cloned());
    let Command::Serve(args) = Cli::try_parse_from(argv).expect("flags").command else {
        panic!("serve expected");
    };
    args.resolve(&TestEnvironment).expect("config")
}
