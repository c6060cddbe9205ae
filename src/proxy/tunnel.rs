//! WebSocket tunnels: the bytes of an upgraded connection copied both ways between the browser
//! and the upstream, under the same limits as any other connection.
//!
//! Attacks each rule stops:
//! - a tunnel that outlives every limit: it keeps its browser connection's slot in
//!   `--max-connections` (and its address's share) until it ends, it is closed after
//!   `--websocket-idle-timeout` without a byte either way and after `--websocket-max-lifetime`
//!   in any case, and a server shutdown ends it;
//! - a tunnel that outlives its session: logout, back-channel logout, admin revoke and eviction
//!   close the session's tunnels at once (the ticket store announces every removal, including
//!   those made by other gateways sharing a Redis store), so a revoked user keeps no open
//!   channel carrying the old bearer's authority; a session Redis expired by itself is noticed
//!   at the next eviction sweep, when every tunnel looks at its session.
//!
//! Which requests may become tunnels (only `websocket`, only on GET, only on routes that allow
//! it) is decided by the proxy before anything is sent upstream.

use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::{broadcast, watch};

use crate::deadlines::{self, Tracked};
use crate::session::SessionId;
use crate::tickets::{Activity, TicketStore};

/// What a browser connection lends the tunnel made from it: its connection slot (the
/// server's permit and its address's share), held until the tunnel ends, and the server's
/// shutdown signal.
#[derive(Debug, Clone)]
pub struct ConnectionHold {
    slot: Arc<dyn std::any::Any + Send + Sync>,
    stopping: watch::Receiver<bool>,
}

impl ConnectionHold {
    /// The hold of a connection whose `slot` is released when the connection and every tunnel
    /// made from it have ended, for a server that says `true` on `stopping` when it shuts down.
    pub fn new(
        slot: Arc<dyn std::any::Any + Send + Sync>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self { slot, stopping }
    }
}

/// A tunnel's time limits.
#[derive(Debug, Clone, Copy)]
pub struct TunnelLimits {
    /// Closed after this long without a byte either way.
    pub idle: Duration,
    /// Closed after this long in any case.
    pub lifetime: Duration,
}

/// The session a tunnel belongs to.
pub(super) struct TunnelSession {
    /// Which session.
    pub id: SessionId,
    /// Where its removal is announced.
    pub tickets: Arc<TicketStore>,
}

/// Whether a request is a WebSocket opening handshake (RFC 6455 §4.1): an HTTP/1.1 GET with
/// `Connection: upgrade` and `Upgrade: websocket`. Only these become tunnels; any other
/// `Upgrade` (`h2c`, …) is dropped as the hop-by-hop header it is.
pub fn is_websocket_handshake<B>(request: &http::Request<B>) -> bool {
    let has = |name: &http::HeaderName, wanted: &str| {
        super::headers::list(request.headers(), name)
            .any(|token| token.eq_ignore_ascii_case(wanted))
    };
    request.method() == http::Method::GET
        && request.version() == http::Version::HTTP_11
        && has(&http::header::CONNECTION, "upgrade")
        && has(&http::header::UPGRADE, "websocket")
}

/// Copies bytes both ways between the browser's and the upstream's upgraded connections until
/// either side closes or a limit ends the tunnel.
pub(super) async fn run(
    client: OnUpgrade,
    upstream: OnUpgrade,
    limits: TunnelLimits,
    session: Option<TunnelSession>,
    mut hold: ConnectionHold,
    host: String,
) {
    // Subscribed before the last look at the session, so no removal can fall in between.
    let removals = session.as_ref().map(|session| {
        let watch = SessionWatch {
            removals: session.tickets.subscribe_removals(),
            expiry_checks: session.tickets.subscribe_expiry_checks(),
        };
        (watch, session)
    });
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(upstream = %host, %error, "upgrade did not complete");
            return;
        }
    };
    // Both sides report to one record of the last byte moved (no request heads to time).
    let activity = Arc::new(deadlines::Activity::new(false));
    let mut client = Tracked::new(TokioIo::new(client), Arc::clone(&activity));
    let mut upstream = Tracked::new(TokioIo::new(upstream), Arc::clone(&activity));
    let idle = async {
        loop {
            let quiet = activity.silent_for();
            if quiet >= limits.idle {
                return;
            }
            tokio::time::sleep(limits.idle - quiet).await;
        }
    };
    let ended = async {
        match removals {
            Some((receiver, session)) => session_ended(receiver, session).await,
            None => std::future::pending().await,
        }
    };
    let reason = tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match result {
            Ok(_) => "closed",
            Err(_) => "broken",
        },
        () = idle => "idle",
        () = tokio::time::sleep(limits.lifetime) => "lifetime reached",
        () = ended => "session ended",
        _ = hold.stopping.wait_for(|stop| *stop) => "server stopping",
    };
    tracing::debug!(upstream = %host, reason, "websocket tunnel ended");
    drop(hold.slot);
}

/// Where a tunnel learns that its session may have ended.
struct SessionWatch {
    /// Every removal this gateway makes or hears of.
    removals: broadcast::Receiver<SessionId>,
    /// Expiries nobody announces (Redis drops expired sessions itself).
    expiry_checks: watch::Receiver<()>,
}

/// Resolves when the session is removed, expires (or already had).
async fn session_ended(mut watch: SessionWatch, session: &TunnelSession) {
    let gone = || async {
        !matches!(
            session
                .tickets
                .retrieve_by_id(session.id, Activity::Peek)
                .await,
            Ok(Some(_))
        )
    };
    if gone().await {
        return;
    }
    loop {
        tokio::select! {
            removed = watch.removals.recv() => match removed {
                Ok(removed) if removed == session.id => return,
                Ok(_) => {}
                // Missed announcements (a mass eviction): look at the session itself.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if gone().await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            },
            checked = watch.expiry_checks.changed() => {
                if checked.is_err() {
                    std::future::pending::<()>().await;
                }
                if gone().await {
                    return;
                }
            }
        }
    }
}
