//! One browser connection after its TLS handshake: HTTP/2 (ALPN `h2`) or HTTP/1.1, served by
//! hyper under the connection's deadlines ([`crate::deadlines`]), and on HTTP/1.1 *parked*
//! while idle.
//!
//! Parking: a hyper HTTP/1.1 connection keeps its read buffer (8 KiB, grown to 16 by the first
//! read) and its write buffer (8 KiB) for as long as it lives, keep-alive waits included: 29 KiB
//! per idle TLS connection in all, against nginx's 17. So an HTTP/1.1 connection that has had
//! no request for [`PARK_AFTER`] is taken back from hyper between two exchanges (hyper closes
//! an idle connection on a graceful shutdown without touching the stream, and the stream's
//! shutdown is withheld) and waits for its next request holding nothing but the TLS stream.
//! The next request's first byte wakes it, and a new hyper connection serves it with that byte
//! put back in front of the stream. A connection in steady use never parks, so the relay's hot
//! path is unchanged.
//!
//! hyper gives a connection back only when it is idle: no request being read, no response
//! being written, every byte flushed. The gateway checks what it can see (no exchange open, no
//! byte read since the last one ended, every write flushed, no shutdown begun), then asks hyper
//! to close gracefully and polls it once: an idle hyper closes in that one poll without reading
//! the stream. If it reads or does not finish, it was not idle (say, a request body was still
//! arriving after its response), and the connection closes after that exchange instead, as any
//! graceful close would: never is a stream taken back in the middle of a message.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

use crate::deadlines::{Activity, Due, ExchangeBody, Tracked};
use crate::pipeline::Gateway;
use crate::proxy::ConnectionHold;

/// An HTTP/1.1 connection without a request for this long is parked.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(250);

/// Limits against slow or hostile clients.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Concurrent connections.
    pub max_connections: usize,
    /// Concurrent connections from one address (an IPv6 /64).
    pub max_connections_per_ip: usize,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// Request-header deadline.
    pub header_timeout: Duration,
    /// Idle keep-alive deadline.
    pub keepalive_timeout: Duration,
    /// How long a shutdown waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// Header bytes per request.
    pub max_header_bytes: usize,
    /// Header fields per request.
    pub max_headers: usize,
    /// Request-target length.
    pub max_uri_bytes: usize,
    /// HTTP/2 streams per connection.
    pub max_h2_streams: u32,
}

/// hyper's two servers, configured once for every connection.
#[derive(Debug)]
pub(crate) struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    limits: ServerLimits,
}

impl Protocols {
    /// Both protocols under `limits`.
    pub(crate) fn new(limits: &ServerLimits) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            // The header deadline is the connection's own (crate::deadlines), not hyper's.
            .header_read_timeout(None)
            .max_headers(limits.max_headers)
            // hyper answers 431 when a request head does not fit the read buffer (8 KiB is its
            // smallest). Room for the longest target and the largest header fields both, so
            // that an overlong target reaches the router and gets 414, and too many header
            // bytes get 431 there; only a head past both limits together gets hyper's 431.
            .max_buf_size(
                limits
                    .max_header_bytes
                    .saturating_add(limits.max_uri_bytes)
                    .max(8192),
            )
            // Head and body into one buffer before TLS: one record and one write per small
            // response instead of two.
            .writev(false)
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_h2_streams)
            // The list counts `:path` too: room for the longest target, as over HTTP/1.1.
            .max_header_list_size(
                u32::try_from(limits.max_header_bytes.saturating_add(limits.max_uri_bytes))
                    .unwrap_or(u32::MAX),
            )
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        Self {
            http1,
            http2,
            limits: *limits,
        }
    }
}

/// Serves one connection whose TLS handshake is done, until it closes. `hold` is its slot in
/// the connection caps; `stopping` turns true when the server shuts down.
///
/// The future is what an idle connection costs, so it is built here, not by an `async fn`:
/// it holds the stream once, not once more for each name the stream had on its way in.
pub(crate) fn serve(
    tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    gateway: Arc<Gateway>,
    hold: Arc<ConnectionHold>,
    protocols: Arc<Protocols>,
    mut stopping: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send {
    // HTTP/2 over TLS is negotiated by ALPN (RFC 9113, section 3.2); anything else is
    // HTTP/1.1, timed as such, and `Tracked` ends it if it opens with HTTP/2's preface.
    let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    let activity = Arc::new(Activity::new(!http2));
    let mut io = Rewind::new(Tracked::new(tls, Arc::clone(&activity)));
    let exchanges = Arc::clone(&activity);
    // The connection's slot lives as long as the connection, or as a WebSocket tunnel made
    // from it (which takes its own clone).
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let open = exchanges.exchange();
        let gateway = Arc::clone(&gateway);
        let hold = Arc::clone(&hold);
        // Both framings in one head (request smuggling): hyper kept one of them, an upstream
        // might believe the other. Refused before routing; the connection closes after the
        // answer.
        let smuggling = exchanges.framing_conflict();
        async move {
            let response = if smuggling {
                tracing::debug!(%peer, "request with both Content-Length and Transfer-Encoding");
                crate::error::HttpError::from(crate::error::RequestError::ConflictingFraming)
                    .into_response()
            } else {
                gateway.handle(request, peer, &hold).await
            };
            Ok::<_, Infallible>(response.map(|body| ExchangeBody::new(body, open)))
        }
    });
    async move {
        let mut connection = Watched {
            activity: &activity,
            limits: &protocols.limits,
            stopping: &mut stopping,
            peer,
        };
        if http2 {
            // Boxed, as below: the task keeps only what is alive, not room for every state.
            let mut served = Box::pin(
                protocols
                    .http2
                    .serve_connection(TokioIo::new(io.inner), service),
            );
            connection.drive(served.as_mut(), false).await;
            return;
        }
        loop {
            if io.prefix.is_empty() {
                match connection.park(&mut io).await {
                    Some(first) => io.prefix = first,
                    None => return,
                }
            }
            let mut served = Box::pin(
                protocols
                    .http1
                    .serve_connection(TokioIo::new(io), service.clone())
                    .with_upgrades(),
            );
            if connection.drive(served.as_mut(), true).await == Ended::Closed {
                return;
            }
            tracing::trace!(%peer, "idle; parked");
            // Idle: hyper's state goes; the stream, and bytes hyper had read but not used, stay.
            let Some(parts) = Pin::into_inner(served).into_parts() else {
                return; // upgraded: the tunnel has the stream
            };
            io = parts.io.into_inner();
            if !parts.read_buf.is_empty() {
                // A pipelined head read with the last exchange, and not whole: its clock starts
                // now (bytes read during an exchange start none), so it cannot wait for the idle
                // timeout.
                io.prefix = Bytes::copy_from_slice(&parts.read_buf); // not the whole read buffer
                activity.read();
            }
        }
    }
}

/// How a hyper connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The connection is over.
    Closed,
    /// hyper gave the stream back between two exchanges.
    Idle,
}

/// A hyper connection that can be asked to close once in-flight work is done.
trait Graceful: Future<Output = hyper::Result<()>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, B, E> Graceful for http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

/// A connection's deadlines and the server's stop signal, watched while hyper serves it or
/// while it is parked.
struct Watched<'a> {
    activity: &'a Arc<Activity>,
    limits: &'a ServerLimits,
    stopping: &'a mut watch::Receiver<bool>,
    peer: SocketAddr,
}

impl Watched<'_> {
    /// Runs hyper's `connection` until it ends or, when `park` allows, until it is idle and
    /// hands the stream back.
    async fn drive<C: Graceful>(&mut self, mut connection: Pin<&mut C>, park: bool) -> Ended {
        let peer = self.peer;
        let (idle, header) = (self.limits.keepalive_timeout, self.limits.header_timeout);
        let mut wait = Duration::ZERO;
        let mut closing = false;
        loop {
            let mut hand_back_now = false;
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, error = %error, "connection ended with an error");
                    }
                    return Ended::Closed;
                }
                _ = self.stopping.wait_for(|stop| *stop), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                // Still watched while closing: a head being dribbled would hold the drain.
                () = tokio::time::sleep(wait) => match self.activity.due(idle, header) {
                    Due::LookAgainIn(next) => {
                        wait = next;
                        if park && !closing {
                            match self.activity.parkable_in(PARK_AFTER) {
                                Some(left) => wait = wait.min(left),
                                None => hand_back_now = true,
                            }
                        }
                    }
                    Due::Idle(idle_for) => {
                        if !closing {
                            // Graceful: a request still in flight finishes first.
                            tracing::trace!(%peer, "closing idle connection");
                            connection.as_mut().graceful_shutdown();
                            closing = true;
                        }
                        wait = Due::until_stalled(idle, idle_for, header);
                    }
                    Due::Stalled => {
                        tracing::debug!(%peer, "connection stalled; dropping it");
                        return Ended::Closed;
                    }
                    Due::HeadTooSlow => {
                        tracing::debug!(%peer, "request head not received in time; closing");
                        return Ended::Closed;
                    }
                },
            }
            if hand_back_now {
                match hand_back(connection.as_mut(), self.activity).await {
                    Some(ended) => return ended,
                    None => closing = true,
                }
            }
        }
    }

    /// Waits, holding nothing but the stream, for the first byte of the next request. `None`
    /// when the connection is over instead: the client closed it, it stayed idle for the
    /// keep-alive timeout, or the server is stopping (then the stream is shut down here).
    async fn park<T: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut T) -> Option<Bytes> {
        let (idle, header) = (self.limits.keepalive_timeout, self.limits.header_timeout);
        let mut wait = Duration::ZERO;
        let mut first = [0u8; 1];
        loop {
            tokio::select! {
                read = io.read(&mut first) => {
                    return match read {
                        Ok(1) => Some(one_byte(first[0])),
                        _ => None, // closed by the client, or broken
                    };
                }
                _ = self.stopping.wait_for(|stop| *stop) => break,
                () = tokio::time::sleep(wait) => match self.activity.due(idle, header) {
                    Due::LookAgainIn(next) => wait = next,
                    _ => {
                        tracing::trace!(peer = %self.peer, "closing idle connection");
                        break;
                    }
                },
            }
        }
        // Nothing in flight: TLS close_notify, then FIN, as hyper closes an idle connection.
        let _ = tokio::time::timeout(header, io.shutdown()).await;
        None
    }
}

/// Asks an idle-looking hyper connection to close and polls it once. `Some(Ended::Idle)`: it
/// was idle, and closed without reading or shutting down the stream (the stream is the
/// caller's again). `Some(Ended::Closed)`: it ended otherwise. `None`: it was not idle; it
/// finishes its exchange and then closes.
async fn hand_back<C: Graceful>(mut connection: Pin<&mut C>, activity: &Activity) -> Option<Ended> {
    activity.begin_hand_back();
    connection.as_mut().graceful_shutdown();
    let polled =
        std::future::poll_fn(|cx: &mut Context<'_>| Poll::Ready(connection.as_mut().poll(cx)))
            .await;
    let undisturbed = activity.end_hand_back();
    match polled {
        Poll::Ready(Ok(())) if undisturbed => Some(Ended::Idle),
        Poll::Ready(_) => Some(Ended::Closed),
        Poll::Pending => None,
    }
}

/// Every byte value, so that a parked connection's first byte goes back without an allocation.
static EVERY_BYTE: [u8; 256] = {
    let mut all = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        all[i] = i as u8;
        i += 1;
    }
    all
};

fn one_byte(byte: u8) -> Bytes {
    let at = usize::from(byte);
    Bytes::from_static(&EVERY_BYTE[at..=at])
}

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    fn new(inner: T) -> Self {
        Self {
            prefix: Bytes::new(),
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rewound_bytes_come_first_then_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"ET / HTTP/1.1\r\n").await.expect("write");
        let mut io = Rewind::new(server);
        io.prefix = one_byte(b'G');
        let mut line = [0u8; 16];
        io.read_exact(&mut line).await.expect("read");
        assert_eq!(&line, b"GET / HTTP/1.1\r\n");
        assert!(io.prefix.is_empty());
    }

    /// A stand-in for a hyper connection being asked to close while it looks idle.
    enum Fake {
        /// Closes without reading, as an idle hyper connection does.
        Idle,
        /// Reads the stream first (a request body still arriving), then finishes.
        Reads(Tracked<tokio::io::DuplexStream>),
        /// Has work left.
        Busy,
    }

    impl Future for Fake {
        type Output = hyper::Result<()>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            match self.get_mut() {
                Fake::Idle => Poll::Ready(Ok(())),
                Fake::Reads(io) => {
                    let mut byte = [0u8; 1];
                    let _ = Pin::new(io).poll_read(cx, &mut ReadBuf::new(&mut byte));
                    Poll::Ready(Ok(()))
                }
                Fake::Busy => Poll::Pending,
            }
        }
    }

    impl Graceful for Fake {
        fn graceful_shutdown(self: Pin<&mut Self>) {}
    }

    #[tokio::test]
    async fn only_a_connection_that_closes_without_reading_is_handed_back() {
        let activity = Arc::new(Activity::new(true));
        let mut idle = Fake::Idle;
        assert_eq!(
            hand_back(Pin::new(&mut idle), &activity).await,
            Some(Ended::Idle)
        );
        let (_client, server) = tokio::io::duplex(64);
        let mut reads = Fake::Reads(Tracked::new(server, Arc::clone(&activity)));
        assert_eq!(
            hand_back(Pin::new(&mut reads), &activity).await,
            Some(Ended::Closed),
            "it read: it was mid-message"
        );
        let mut busy = Fake::Busy;
        assert_eq!(hand_back(Pin::new(&mut busy), &activity).await, None);
    }

    #[tokio::test]
    async fn a_stream_being_handed_back_is_not_shut_down() {
        let activity = Arc::new(Activity::new(true));
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = Tracked::new(server, Arc::clone(&activity));
        activity.begin_hand_back();
        io.shutdown().await.expect("withheld");
        assert!(activity.end_hand_back());
        io.write_all(b"still open").await.expect("write");
        let mut text = [0u8; 10];
        client.read_exact(&mut text).await.expect("read");
        assert_eq!(&text, b"still open");
    }

    #[test]
    fn every_byte_goes_back_as_itself() {
        for byte in 0..=u8::MAX {
            assert_eq!(one_byte(byte).as_ref(), [byte]);
        }
    }
}
