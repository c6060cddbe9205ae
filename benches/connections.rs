//! Memory the gateway spends on connections, two ways:
//!
//! 1. Idle keep-alive connections (default 5,000; `IDLE_CONNECTIONS`; opened as fast as the
//!    client can, or `IDLE_RATE` a second, as clients arriving over time): each gets one
//!    `GET /healthz` over TLS 1.3 (HTTP/1.1 by ALPN) and is then left open; the cost per
//!    connection is the RSS growth divided by their number. No provider is needed: `/healthz`
//!    answers 503 until discovery, which is all a keep-alive exchange needs. For comparison, the
//!    review measured nginx at 17 KB per connection (96 MB for 5,000) in the same kind of test.
//! 2. Slow downloads of a large static file (default 10 readers of a 200 MiB file;
//!    `DOWNLOADS`, `DOWNLOAD_MIB`): each reads the head and 1 MiB, then stops reading; the RSS
//!    growth must not depend on the file's size (the gateway streams files; reading them whole,
//!    ten such readers took it to 2 GB).
//!
//! The release binary runs on loopback with a test certificate; RSS is read from
//! `/proc/<pid>/status`. Run: `cargo bench --bench connections` (raise `ulimit -n` first for
//! many connections: two descriptors each, one in each process).

// A benchmark measures real time (clippy.toml bans the real clocks in the crate).
#![allow(clippy::disallowed_methods)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Kills the server when the benchmark ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn open(
    port: u16,
    connector: &TlsConnector,
    buffer: &mut [u8],
) -> Option<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.ok()?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .ok()?;
    // The whole answer: a head and a short body, in one TLS record.
    let n = tls.read(buffer).await.ok()?;
    (n > 0 && buffer.starts_with(b"HTTP/1.1 ")).then_some(tls)
}

fn number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let count = number("IDLE_CONNECTIONS", 5_000);
    let rate = number("IDLE_RATE", 0);
    let downloads = number("DOWNLOADS", 10);
    let file_mib = number("DOWNLOAD_MIB", 200);
    let dir = tempfile::tempdir().expect("dir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("key");
    let site = dir.path().join("site");
    std::fs::create_dir(&site).expect("site");
    std::fs::write(site.join("index.html"), b"<!doctype html>").expect("index");
    // Sparse: the size is what matters, not the disk.
    std::fs::File::create(site.join("big.bin"))
        .and_then(|file| file.set_len(file_mib as u64 * 1024 * 1024))
        .expect("big file");
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
        probe.local_addr().expect("addr").port()
    };
    let limit = (count + downloads + 200).to_string();
    // `IDLE_WRAP="heaptrack -o /tmp/idle"` runs the server under a profiler (the RSS figures
    // are then the profiler's).
    let wrap = std::env::var("IDLE_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(env!("CARGO_BIN_EXE_oidc-bff"));
            command
        }
        None => Command::new(env!("CARGO_BIN_EXE_oidc-bff")),
    };
    let server = command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--issuer", "http://127.0.0.1:9", "--client-id", "bench"])
        .args(["--public-url", &format!("https://localhost:{port}")])
        .args(["--tls-cert", cert.to_str().expect("utf-8")])
        .args(["--tls-key", key.to_str().expect("utf-8")])
        .args(["--static-dir", site.to_str().expect("utf-8")])
        .args([
            "--data-dir",
            dir.path().join("data").to_str().expect("utf-8"),
        ])
        .args([
            "--max-connections",
            &limit,
            "--max-connections-per-ip",
            &limit,
        ])
        .args(["--keepalive-timeout", "10m"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway");
    let server = Server(server);
    let pid = server.0.id();

    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(certified.cert.der().to_vec()))
        .expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut buffer = vec![0u8; 64 * 1024];
        let started = Instant::now();
        while open(port, &connector, &mut buffer).await.is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the gateway did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Warm: the first connections allocate what every later one shares.
        let mut warm = Vec::new();
        for _ in 0..100 {
            warm.push(open(port, &connector, &mut buffer).await.expect("warm-up"));
        }
        drop(warm);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = rss_kib(pid);
        let mut idle = Vec::with_capacity(count);
        let pace = (rate > 0).then(|| Duration::from_secs(1) / u32::try_from(rate).unwrap_or(1));
        let opening = Instant::now();
        for opened in 0..count {
            idle.push(
                open(port, &connector, &mut buffer)
                    .await
                    .expect("connection"),
            );
            if let Some(pace) = pace {
                let due = pace * u32::try_from(opened + 1).unwrap_or(u32::MAX);
                tokio::time::sleep(due.saturating_sub(opening.elapsed())).await;
            }
        }
        // Long enough for every connection to be parked (a second without a request).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = rss_kib(pid);
        let per = (after.saturating_sub(before)) as f64 * 1024.0 / count as f64;
        println!(
            "idle keep-alive connections: {count}; gateway RSS {:.1} MiB before, {:.1} MiB with \
             them open; {:.1} KiB per connection",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            per / 1024.0
        );
        drop(idle);
        tokio::time::sleep(Duration::from_secs(1)).await;

        let before = rss_kib(pid);
        let mut readers = Vec::with_capacity(downloads);
        for _ in 0..downloads {
            let tcp = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            let name = ServerName::try_from("localhost").expect("name");
            let mut tls = connector.connect(name, tcp).await.expect("handshake");
            tls.write_all(b"GET /big.bin HTTP/1.1\r\nhost: localhost\r\n\r\n")
                .await
                .expect("request");
            // The head and about a mebibyte, then the reader stops reading.
            let mut received = 0;
            while received < 1 << 20 {
                let n = tls.read(&mut buffer).await.expect("read");
                assert!(n > 0, "the download ended early");
                received += n;
            }
            readers.push(tls);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = rss_kib(pid);
        println!(
            "slow downloads: {downloads} readers of a {file_mib} MiB file, stalled after 1 MiB; \
             gateway RSS {:.1} MiB before, {:.1} MiB during (+{:.1} MiB)",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            after.saturating_sub(before) as f64 / 1024.0
        );
        drop(readers);
    });
}
