//! WebSocket tunnels: the bytes of an upgraded connection copied both ways between the browser
//! and the upstream, under the same limits as any other connection.
//!
//! Attacks each rule stops:
//! - a tunnel that outlives every limit: it keeps its browser connection's slot in
//!   `--max-connections` (and its address's share) until it ends, it is closed after
//!   `--websocket-idle-timeout` without a byte either way and after `--websocket-max-lifetime`
//!   in any case, and a server shutdown ends it;
//! - a tunnel that outlives its session: logout, back-channel logout, admin revoke and eviction
//!   close the session's tunnels at once (the ticket store announces every removal), so a
//!   revoked user keeps no open channel carrying the old bearer's authority.
//!
//! Which requests may become tunnels (only `websocket`, only on GET, only on routes that allow
//! it) is decided by the proxy before anything is sent upstream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{broadcast, watch};

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
pub struct TunnelSession {
    /// Which session.
    pub id: SessionId,
    /// Where its removal is announced.
    pub tickets: Arc<TicketStore>,
}

/// Copies bytes both ways between the browser's and the upstream's upgraded connections until
/// either side closes or a limit ends the tunnel.
pub async fn run(
    client: OnUpgrade,
    upstream: OnUpgrade,
    limits: TunnelLimits,
    session: Option<TunnelSession>,
    mut hold: ConnectionHold,
    host: String,
) {
    // Subscribed before the last look at the session, so no removal can fall in between.
    let removals = session
        .as_ref()
        .map(|session| (session.tickets.subscribe_removals(), session));
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(upstream = %host, %error, "upgrade did not complete");
            return;
        }
    };
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Watched::new(TokioIo::new(client), started, Arc::clone(&last));
    let mut upstream = Watched::new(TokioIo::new(upstream), started, Arc::clone(&last));
    let idle = async {
        loop {
            let quiet = started
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
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

/// Resolves when the session is removed (or already was).
async fn session_ended(mut removals: broadcast::Receiver<SessionId>, session: &TunnelSession) {
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
        match removals.recv().await {
            Ok(removed) if removed == session.id => return,
            Ok(_) => {}
            // Missed announcements (a mass eviction): look at the session itself.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if gone().await {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// An I/O object that records when it last moved a byte (milliseconds since `started`).
struct Watched<T> {
    inner: T,
    started: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Watched<T> {
    fn new(inner: T, started: Instant, last: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            started,
            last,
        }
    }

    fn moved(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.moved();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(written)) if written > 0) {
            self.moved();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
