//! Raw TLS connections to the gateway, for tests that write HTTP by hand.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::TestGateway;

/// A raw TLS connection to the gateway offering the given ALPN protocols.
pub async fn tls_connect_alpn(gateway: &TestGateway, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    tls_connect_to(gateway.addr, &[&gateway.certs.ca_der], alpn).await
}

/// A raw TLS connection to `addr` as `localhost`, trusting `cas`, offering `alpn`.
pub async fn tls_connect_to(
    addr: SocketAddr,
    cas: &[&CertificateDer<'static>],
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add((*ca).clone()).expect("CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake")
}

pub async fn tls_connect(gateway: &TestGateway) -> TlsStream<TcpStream> {
    tls_connect_alpn(gateway, &[b"http/1.1"]).await
}

/// Whether the server closes `stream` within `limit` (what it sends meanwhile is read and
/// dropped).
pub async fn closes_within(stream: &mut TlsStream<TcpStream>, limit: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Sends raw bytes on a new connection and reads until the server closes (bounded by `limit`):
/// what came back, and whether the server closed in time.
pub async fn exchange(
    gateway: &TestGateway,
    request: &[u8],
    limit: std::time::Duration,
) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tls_connect(gateway).await;
    stream.write_all(request).await.expect("write");
    let mut received = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&received).into_owned(), closed)
}
