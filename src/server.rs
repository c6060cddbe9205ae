//! The accept loop: the connection caps (in all and per address), the TLS handshake and its
//! deadline, and graceful shutdown that lets in-flight requests finish. Each connection's life
//! after its handshake (HTTP/1.1 or HTTP/2 by ALPN, idle parking) is in [`crate::connection`].
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

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::connection::{Protocols, ServerLimits};
use crate::pipeline::Gateway;
use crate::proxy::ConnectionHold;
use crate::sync::Locked;

/// Serves until `shutdown` completes, then drains open connections for at most
/// `limits.shutdown_timeout`.
pub(crate) async fn serve(
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
    let protocols = Arc::new(Protocols::new(&limits));
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
        let protocols = Arc::clone(&protocols);
        let stopping = stopping.clone();
        let hold = Arc::new(ConnectionHold::new(
            Arc::new((permit, address_share)),
            stopping.clone(),
        ));
        tokio::spawn(async move {
            // Boxed: the handshake's state is freed once it is done, not kept in the task.
            let handshake = Box::pin(acceptor.accept(tcp));
            let tls = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
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
            // A task of its own: the connection's task holds the connection and nothing else.
            tokio::spawn(crate::connection::serve(
                tls, peer, gateway, hold, protocols, stopping,
            ));
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
        self.open.locked()
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
