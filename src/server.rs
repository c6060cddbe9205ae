//! The accept loop and each connection's life: connection cap, TLS handshake deadline, HTTP/1.1
//! and HTTP/2 (by ALPN) with header limits and timeouts, idle keep-alive close, and graceful
//! shutdown that lets in-flight requests finish.
//!
//! Hostile clients this stops: slowloris (header deadline; the handshake deadline for those that
//! never finish TLS; the connection cap bounds memory), oversized heads (431/414 from hyper and
//! the router), stream floods (HTTP/2 stream cap), connections parked forever (idle close) and
//! clients that stop reading a response (dropped after a second idle timeout), HTTP/2 spoken
//! without ALPN `h2` (refused). The deadlines and that check are in [`crate::deadlines`].

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::config::ServerLimits;
use crate::deadlines::{Activity, Due, ExchangeBody, Tracked};
use crate::proxy::ConnectionHold;
use crate::routes::Gateway;

/// Serves until `shutdown` completes, then drains open connections for at most
/// `limits.shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    gateway: Arc<Gateway>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let addresses = Arc::new(AddressShares::new(limits.max_connections_per_ip));
    // Tells every connection to finish its in-flight requests and close.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let builder = Arc::new(http_builder(&limits));
    tokio::pin!(shutdown);
    loop {
        // Take a permit before accepting: past the cap, connections wait in the kernel backlog
        // instead of costing memory here.
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // One address (an IPv6 /64) gets at most its share of the slots: past it, the
        // connection is closed at once, before any TLS work.
        let Some(address_share) = addresses.take(peer.ip()) else {
            tracing::debug!(%peer, "too many connections from this address; closing");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let gateway = Arc::clone(&gateway);
        let builder = Arc::clone(&builder);
        let mut stopping = stopping.clone();
        let hold = Arc::new(ConnectionHold::new(
            Arc::new((permit, address_share)),
            stopping.clone(),
        ));
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            // HTTP/2 over TLS is negotiated by ALPN (RFC 9113, section 3.2); anything else is
            // HTTP/1.1, timed as such, and `Tracked` ends it if it opens with HTTP/2's preface.
            let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            let activity = Arc::new(Activity::new(!http2));
            let io = TokioIo::new(Tracked::new(tls, Arc::clone(&activity)));
            let exchanges = Arc::clone(&activity);
            // The connection's slot lives as long as the connection, or as a WebSocket tunnel
            // made from it (which takes its own clone).
            let service = service_fn(move |request: hyper::Request<Incoming>| {
                let open = exchanges.exchange();
                let gateway = Arc::clone(&gateway);
                let hold = Arc::clone(&hold);
                // Both framings in one head (request smuggling): hyper kept one of them, an
                // upstream might believe the other. Refused before routing; the connection
                // closes after the answer.
                let smuggling = exchanges.framing_conflict();
                async move {
                    let response = if smuggling {
                        tracing::debug!(%peer, "request with both Content-Length and Transfer-Encoding");
                        crate::error::HttpError::client(
                            hyper::StatusCode::BAD_REQUEST,
                            "both content-length and transfer-encoding",
                        )
                        .close_connection()
                        .into_response()
                    } else {
                        gateway.handle(request, peer, &hold).await
                    };
                    Ok::<_, std::convert::Infallible>(
                        response.map(|body| ExchangeBody::new(body, open)),
                    )
                }
            });
            let connection = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(connection);
            let (idle, header) = (limits.keepalive_timeout, limits.header_timeout);
            let mut wait = Duration::ZERO;
            let mut closing = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%peer, error = %error, "connection ended with an error");
                        }
                        break;
                    }
                    _ = stopping.wait_for(|stop| *stop), if !closing => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    // Still watched while closing: a head being dribbled would hold the drain.
                    () = tokio::time::sleep(wait) => match activity.due(idle, header) {
                        Due::LookAgainIn(next) => wait = next,
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
                            break;
                        }
                        Due::HeadTooSlow => {
                            tracing::debug!(%peer, "request head not received in time; closing");
                            break;
                        }
                    },
                }
            }
        });
    }
    drop(listener);
    tracing::info!("no longer accepting connections; draining");
    let _ = stop.send(true);
    // Every connection holds a permit until it ends: all permits back means all closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_timeout, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open after the drain timeout");
    }
}

/// Connections open per client address, capped. IPv6 clients count by their /64, which one
/// host usually has whole.
#[derive(Debug)]
struct AddressShares {
    limit: usize,
    open: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// One connection's share of its address's count, given back when dropped.
#[derive(Debug)]
struct AddressShare {
    shares: Arc<AddressShares>,
    address: IpAddr,
}

impl AddressShares {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            open: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn counted(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mut octets = v6.octets();
                    octets[8..].fill(0);
                    IpAddr::V6(octets.into())
                }
            },
        }
    }

    fn open(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<IpAddr, usize>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A share for one more connection from `ip`, unless its address has all it may have.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressShare> {
        let address = Self::counted(ip);
        let mut open = self.open();
        let count = open.entry(address).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressShare {
            shares: Arc::clone(self),
            address,
        })
    }
}

impl Drop for AddressShare {
    fn drop(&mut self) {
        let mut open = self.shares.open();
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

fn http_builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The header deadline is the connection's own (crate::deadlines), not hyper's.
        .header_read_timeout(None)
        .max_headers(limits.max_headers)
        // hyper answers 431 when a request head does not fit the read buffer (8 KiB is its
        // smallest). Room for the longest target and the largest header fields both, so that
        // an overlong target reaches the router and gets 414, and too many header bytes get 431
        // there; only a head past both limits together gets hyper's 431.
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
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_h2_streams)
        // The list counts `:path` too: room for the longest target, as over HTTP/1.1.
        .max_header_list_size(
            u32::try_from(limits.max_header_bytes.saturating_add(limits.max_uri_bytes))
                .unwrap_or(u32::MAX),
        )
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_share_and_gets_it_back() {
        let shares = Arc::new(AddressShares::new(2));
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let first = shares.take(ip).expect("first");
        let _second = shares.take(ip).expect("second");
        assert!(shares.take(ip).is_none(), "third over the share");
        assert!(shares.take("192.0.2.2".parse().expect("ip")).is_some());
        drop(first);
        assert!(shares.take(ip).is_some(), "a share given back");
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let shares = Arc::new(AddressShares::new(1));
        let _one = shares
            .take("2001:db8:1:2::1".parse().expect("ip"))
            .expect("one");
        assert!(
            shares
                .take("2001:db8:1:2:ffff::9".parse().expect("ip"))
                .is_none(),
            "same /64"
        );
        assert!(
            shares
                .take("2001:db8:1:3::1".parse().expect("ip"))
                .is_some()
        );
        let _v4 = shares.take("192.0.2.7".parse().expect("ip")).expect("v4");
        assert!(
            shares
                .take("::ffff:192.0.2.7".parse().expect("ip"))
                .is_none()
        );
    }
}
