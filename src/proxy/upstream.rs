//! Connections to the upstream APIs: keep-alive HTTP/1.1 connections pooled per destination,
//! or one shared HTTP/2 connection when an https upstream offers `h2` by ALPN.
//!
//! Each connection runs in a task of its own (hyper's client connection); a request borrows an
//! idle one from its destination's pool, or opens a new one. The pool hangs off the destination
//! itself, so finding it costs no lookup, and a connection goes back when the upstream's
//! response has been read to the end. Rules that keep a reused connection safe:
//! - a connection is taken only while hyper says it is ready for a request (open, nothing left
//!   unread) and younger than the idle timeout; the most recently used goes first;
//! - a request that a reused connection could not even start sending (the upstream closed it
//!   meanwhile) is sent again on another connection, as nothing of it reached the upstream;
//! - a response body dropped before its end, an error, or a protocol switch (`101`) ends the
//!   connection instead of returning it;
//! - idle connections older than the idle timeout are closed by [`Connections::close_expired`],
//!   which the gateway runs periodically, so a quiet upstream is not held open forever.
//!
//! A new connection tries the addresses of the upstream's name in order, each but the last for
//! at most a second, so one address that drops packets (an IPv6 route that goes nowhere, say)
//! does not hold up the others until the upstream timeout.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use url::Url;

use crate::reply::Body;
use crate::sync::Locked;

/// Idle connections kept per destination; beyond this, a returned connection is closed.
const MAX_IDLE_PER_DESTINATION: usize = 1024;

/// Why a request did not reach the upstream or got no answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamError {
    /// No TCP connection (refused, unreachable, name not resolved).
    #[error("connecting to {authority}: {source}")]
    Connect {
        /// `host:port`.
        authority: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (untrusted certificate, wrong name, protocol).
    #[error("TLS with {authority}: {source}")]
    Tls {
        /// `host:port`.
        authority: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Where a destination lives, parsed once from its URL.
#[derive(Debug)]
pub(crate) struct Address {
    scheme: Scheme,
    authority: Authority,
    /// `Host` for HTTP/1.1 requests: the host, and the port when it is not the default.
    host_header: HeaderValue,
    /// Host for connecting (no brackets around IPv6) and port.
    host: String,
    port: u16,
    /// Name checked against the certificate of an https upstream.
    server_name: Option<ServerName<'static>>,
}

impl Address {
    /// The address of an `http://` or `https://` URL with a host (checked by the caller).
    pub(crate) fn new(url: &Url) -> Self {
        let https = url.scheme() == "https";
        let host_text = url.host_str().unwrap_or_default();
        let authority_text = match url.port() {
            Some(port) => format!("{host_text}:{port}"),
            None => host_text.to_owned(),
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(address)) => address.to_string(),
            _ => host_text.to_owned(),
        };
        Self {
            scheme: if https { Scheme::HTTPS } else { Scheme::HTTP },
            authority: authority_text
                .parse()
                .unwrap_or_else(|_| Authority::from_static("invalid.invalid")),
            host_header: HeaderValue::from_str(&authority_text)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid.invalid")),
            port: url.port_or_known_default().unwrap_or(80),
            server_name: https
                .then(|| ServerName::try_from(host.clone()).ok())
                .flatten(),
            host,
        }
    }

    fn authority_text(&self) -> String {
        self.authority.as_str().to_owned()
    }
}

/// The connections of one destination.
#[derive(Default)]
pub(crate) struct Connections {
    idle: Mutex<Vec<Idle>>,
    /// The shared HTTP/2 connection, once the upstream chose `h2`.
    h2: Mutex<Option<http2::SendRequest<Body>>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("idle", &self.idle().len())
            .finish_non_exhaustive()
    }
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

impl Connections {
    fn idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle.locked()
    }

    fn h2(&self) -> MutexGuard<'_, Option<http2::SendRequest<Body>>> {
        self.h2.locked()
    }

    /// The most recently used idle connection that can take a request now.
    fn checkout(&self, max_idle_time: Duration) -> Option<http1::SendRequest<Body>> {
        let now = Instant::now();
        let mut idle = self.idle();
        while let Some(entry) = idle.pop() {
            if now.duration_since(entry.since) < max_idle_time && entry.sender.is_ready() {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Keeps a connection that is ready for another request (callers check).
    fn checkin(&self, sender: http1::SendRequest<Body>) {
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE_PER_DESTINATION {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes idle connections unused for `max_idle_time` or already closed by the upstream.
    pub(crate) fn close_expired(&self, max_idle_time: Duration) {
        let now = Instant::now();
        self.idle().retain(|entry| {
            now.duration_since(entry.since) < max_idle_time && !entry.sender.is_closed()
        });
        let mut h2 = self.h2();
        if h2.as_ref().is_some_and(http2::SendRequest::is_closed) {
            *h2 = None;
        }
    }
}

/// Opens connections to upstreams and sends requests over them.
pub(super) struct Connector {
    tls: tokio_rustls::TlsConnector,
    max_idle_time: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("max_idle_time", &self.max_idle_time)
            .finish_non_exhaustive()
    }
}

/// A connection fresh from [`Connector::connect`].
enum Fresh {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

impl Connector {
    /// A connector trusting what `tls` trusts, offering `h2` and `http/1.1` to https upstreams,
    /// keeping idle connections for `max_idle_time`.
    pub(super) fn new(mut tls: rustls::ClientConfig, max_idle_time: Duration) -> Self {
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            max_idle_time,
        }
    }

    /// How long an idle connection is kept.
    pub(super) fn max_idle_time(&self) -> Duration {
        self.max_idle_time
    }

    /// Sends `request` (its URI in origin form: path and query) to the destination at
    /// `address`, over a pooled connection when one is ready. The response body hands the
    /// connection back when it has been read to the end.
    pub(super) async fn send(
        &self,
        address: &Address,
        connections: &Arc<Connections>,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let shared_h2 = connections
            .h2()
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .cloned();
        // HTTP/2 exchanges are boxed: their state would otherwise enlarge every request's
        // future, HTTP/1.1 ones included.
        if let Some(sender) = shared_h2 {
            return Box::pin(send_h2(sender, address, request)).await;
        }
        loop {
            let (mut sender, reused) = match connections.checkout(self.max_idle_time) {
                Some(sender) => (sender, true),
                // Boxed: the connect and handshake state is large and rarely needed; inline,
                // every request's future would carry (and copy) it.
                None => match Box::pin(self.connect(address)).await? {
                    Fresh::Http1(sender) => (sender, false),
                    Fresh::Http2(sender) => {
                        *connections.h2() = Some(sender.clone());
                        return Box::pin(send_h2(sender, address, request)).await;
                    }
                },
            };
            request
                .headers_mut()
                .entry(header::HOST)
                .or_insert_with(|| address.host_header.clone());
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(hand_back_at_end(response, sender, connections)),
                Err(mut error) => match error.take_message() {
                    // Nothing was sent: the upstream closed the idle connection first. Safe to
                    // send again, on another connection.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(error.into_error().into()),
                },
            }
        }
    }

    async fn connect(&self, address: &Address) -> Result<Fresh, UpstreamError> {
        let tcp = connect_tcp(address)
            .await
            .map_err(|source| UpstreamError::Connect {
                authority: address.authority_text(),
                source,
            })?;
        // No Nagle delay: a request head and a short body go out at once, as nginx's
        // `tcp_nodelay on` does towards upstreams.
        let _ = tcp.set_nodelay(true);
        let Some(server_name) = &address.server_name else {
            return handshake_h1(TokioIo::new(tcp)).await;
        };
        let tls = self
            .tls
            .connect(server_name.clone(), tcp)
            .await
            .map_err(|source| UpstreamError::Tls {
                authority: address.authority_text(),
                source,
            })?;
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .handshake(TokioIo::new(tls))
                .await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream HTTP/2 connection ended");
                }
            });
            return Ok(Fresh::Http2(sender));
        }
        handshake_h1(TokioIo::new(tls)).await
    }
}

/// How long a connection attempt to one address may take while other addresses of the same name
/// are left to try (a name with an IPv6 and an IPv4 address, one of them unreachable).
const CONNECT_ATTEMPT: Duration = Duration::from_secs(1);

async fn connect_tcp(address: &Address) -> std::io::Result<TcpStream> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((address.host.as_str(), address.port))
        .await?
        .collect();
    connect_first(&addresses, CONNECT_ATTEMPT).await
}

/// Connects to the first address that answers, in order. Every address but the last gets at
/// most `attempt`: one that drops packets must not hold up the others until the upstream
/// timeout (a refused one fails at once anyway).
async fn connect_first(addresses: &[SocketAddr], attempt: Duration) -> std::io::Result<TcpStream> {
    let mut last_error = None;
    for (index, address) in addresses.iter().enumerate() {
        let connecting = TcpStream::connect(address);
        let result = if index + 1 < addresses.len() {
            tokio::time::timeout(attempt, connecting)
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer from {address} within {attempt:?}"),
                    ))
                })
        } else {
            connecting.await
        };
        match result {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address")
    }))
}

async fn handshake_h1<T>(io: TokioIo<T>) -> Result<Fresh, UpstreamError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::Builder::new().handshake(io).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "upstream connection ended");
        }
    });
    Ok(Fresh::Http1(sender))
}

async fn send_h2(
    mut sender: http2::SendRequest<Body>,
    address: &Address,
    request: Request<Body>,
) -> Result<Response<Body>, UpstreamError> {
    // HTTP/2 carries the scheme and authority as pseudo-headers: the URI must be absolute.
    let (mut parts, body) = request.into_parts();
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.scheme = Some(address.scheme.clone());
    uri.authority = Some(address.authority.clone());
    uri.path_and_query = uri
        .path_and_query
        .or_else(|| Some(PathAndQuery::from_static("/")));
    parts.uri = Uri::from_parts(uri).unwrap_or_default();
    parts.version = http::Version::HTTP_2;
    sender.ready().await?;
    let response = sender
        .send_request(Request::from_parts(parts, body))
        .await?;
    Ok(response.map(boxed))
}

/// A response body from upstream as the gateway's body type.
fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes, Error = hyper::Error> + Send + Sync + 'static,
{
    use http_body_util::BodyExt;
    body.map_err(|error| -> crate::reply::BoxError { Box::new(error) })
        .boxed()
}

/// Returns the connection to the pool now when hyper has already read the whole response (a
/// short body arrives with the head), else when the body has been read to its end.
fn hand_back_at_end(
    response: Response<Incoming>,
    sender: http1::SendRequest<Body>,
    connections: &Arc<Connections>,
) -> Response<Body> {
    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        // The connection becomes the tunnel; it never carries another request.
        return response.map(boxed);
    }
    if sender.is_ready() {
        connections.checkin(sender);
        return response.map(boxed);
    }
    let connections = Arc::clone(connections);
    response.map(|body| {
        boxed(HandBack {
            body,
            sender: Some(sender),
            connections,
        })
    })
}

/// A response body that returns its connection to the pool once read to the end.
struct HandBack {
    body: Incoming,
    sender: Option<http1::SendRequest<Body>>,
    connections: Arc<Connections>,
}

impl HandBack {
    fn finish(&mut self) {
        let Some(mut sender) = self.sender.take() else {
            return;
        };
        if sender.is_ready() {
            self.connections.checkin(sender);
            return;
        }
        // hyper marks the connection ready once it has seen the end of the message, which can
        // be a moment after the body's last bytes were handed over.
        let connections = Arc::clone(&self.connections);
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                connections.checkin(sender);
            }
        });
    }
}

impl HttpBody for HandBack {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => self.finish(),
            Some(Ok(_)) if self.body.is_end_stream() => self.finish(),
            // An error: the connection is dropped with the sender.
            Some(Err(_)) => self.sender = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};

    use super::*;

    /// A plain HTTP/1.1 upstream counting the connections it accepted and those that ended.
    /// `/big` answers 4 MiB, anything else a few bytes.
    struct Counted {
        url: Url,
        opened: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
    }

    async fn counted_upstream() -> Counted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = Url::parse(&format!(
            "http://127.0.0.1:{}",
            listener.local_addr().expect("addr").port()
        ))
        .expect("url");
        let opened = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (accepted, ended) = (Arc::clone(&opened), Arc::clone(&closed));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let ended = Arc::clone(&ended);
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(|request: Request<Incoming>| async move {
                            let size = if request.uri().path() == "/big" {
                                4 << 20
                            } else {
                                5
                            };
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from(vec![b'x'; size]),
                            )))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Counted {
            url,
            opened,
            closed,
        }
    }

    fn client_tls() -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
    }

    /// A connector and the pool of one destination.
    struct Client {
        address: Address,
        connections: Arc<Connections>,
        connector: Connector,
    }

    impl Client {
        fn to(url: &Url) -> Self {
            Self {
                address: Address::new(url),
                connections: Arc::new(Connections::default()),
                connector: Connector::new(client_tls(), Duration::from_secs(60)),
            }
        }

        /// `GET path`, the response body not yet read.
        async fn get(&self, path: &str) -> Body {
            let request = Request::get(path)
                .body(crate::reply::full(Bytes::new()))
                .expect("request");
            self.connector
                .send(&self.address, &self.connections, request)
                .await
                .expect("response")
                .into_body()
        }

        /// `GET path`, the whole body read.
        async fn read(&self, path: &str) -> Bytes {
            self.get(path)
                .await
                .collect()
                .await
                .expect("body")
                .to_bytes()
        }
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting until {what}");
    }

    #[tokio::test]
    async fn a_connection_read_to_the_end_is_reused_and_one_dropped_early_is_not() {
        let upstream = counted_upstream().await;
        let client = Client::to(&upstream.url);
        for _ in 0..3 {
            assert_eq!(client.read("/small").await.as_ref(), b"xxxxx");
        }
        assert_eq!(
            upstream.opened.load(Ordering::SeqCst),
            1,
            "one connection, reused"
        );

        // A large body abandoned after its first bytes: its connection still has unread bytes
        // and must not carry another request.
        let mut big = client.get("/big").await;
        big.frame().await.expect("a frame").expect("data");
        drop(big);
        assert_eq!(client.read("/small").await.as_ref(), b"xxxxx");
        assert_eq!(upstream.opened.load(Ordering::SeqCst), 2);
        let closed = Arc::clone(&upstream.closed);
        eventually("the abandoned connection is closed", || {
            closed.load(Ordering::SeqCst) == 1
        })
        .await;
    }

    #[tokio::test]
    async fn an_address_that_does_not_answer_is_given_up_for_the_next() {
        // A listener whose accept queue is full drops new connection attempts: they hang, as
        // towards an address whose packets are dropped.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let silent = socket.listen(1).expect("listen");
        let silent_address = silent.local_addr().expect("addr");
        let mut held = Vec::new();
        loop {
            match tokio::time::timeout(
                Duration::from_millis(300),
                TcpStream::connect(silent_address),
            )
            .await
            {
                Ok(stream) => held.push(stream.expect("queued connection")),
                Err(_) => break,
            }
            assert!(held.len() < 64, "the accept queue never filled");
        }
        let answering = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let answering_address = answering.local_addr().expect("addr");

        let started = Instant::now();
        let stream = connect_first(
            &[silent_address, answering_address],
            Duration::from_millis(200),
        )
        .await
        .expect("the second address answers");
        assert_eq!(stream.peer_addr().expect("peer"), answering_address);
        assert!(started.elapsed() < Duration::from_secs(5));

        let refused = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr")
        };
        let stream = connect_first(&[refused, answering_address], Duration::from_secs(60))
            .await
            .expect("a refused address falls through at once");
        assert_eq!(stream.peer_addr().expect("peer"), answering_address);
        assert!(connect_first(&[], Duration::from_secs(1)).await.is_err());
    }

    #[tokio::test]
    async fn idle_connections_past_the_idle_time_are_closed() {
        let upstream = counted_upstream().await;
        let client = Client::to(&upstream.url);
        client.read("/small").await;
        let connections = &client.connections;
        assert_eq!(connections.idle().len(), 1);

        connections.close_expired(Duration::from_secs(60));
        assert_eq!(connections.idle().len(), 1, "still young: kept");
        connections.close_expired(Duration::ZERO);
        assert_eq!(connections.idle().len(), 0);
        let closed = Arc::clone(&upstream.closed);
        eventually("the upstream sees the connection closed", || {
            closed.load(Ordering::SeqCst) == 1
        })
        .await;
    }

    #[test]
    fn addresses_know_their_host_header_and_where_to_connect() {
        let address = |url: &str| Address::new(&Url::parse(url).expect("url"));
        let plain = address("http://api.internal:7002/v1");
        assert_eq!(plain.host_header, "api.internal:7002");
        assert_eq!((plain.host.as_str(), plain.port), ("api.internal", 7002));
        assert!(plain.server_name.is_none());

        let default_port = address("https://api.example/");
        assert_eq!(default_port.host_header, "api.example");
        assert_eq!(default_port.port, 443);
        assert!(default_port.server_name.is_some());

        let ipv6 = address("https://[::1]:8443");
        assert_eq!(ipv6.host_header, "[::1]:8443");
        assert_eq!(ipv6.host, "::1");
        assert_eq!(ipv6.authority.as_str(), "[::1]:8443");
        assert!(matches!(ipv6.server_name, Some(ServerName::IpAddress(_))));
    }
}
