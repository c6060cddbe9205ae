//! A browser connection's two deadlines: the idle keep-alive timeout and, on HTTP/1.1, the
//! header deadline (a request head must arrive whole within `--header-timeout` of its first
//! byte).
//!
//! hyper has a header timer of its own, but it starts as soon as a response is sent, so an idle
//! keep-alive connection was closed after the header timeout instead of `--keepalive-timeout`,
//! and it arms, boxes and drops a timer for every request (3 % of a proxied call's
//! instructions). Here one timer per connection serves both deadlines: the bytes read and the
//! exchanges in progress are recorded as they happen (two relaxed atomics), and the
//! connection's timer, when it fires, decides from them.
//!
//! The rules, for HTTP/1.1: a head starts with the first byte read while no exchange is open;
//! an exchange is open from its head (the service is called) until hyper drops its response
//! body (written to the end, or the connection gone). Bytes read while an exchange is open are
//! its body and start nothing, so slow uploads and long responses are bounded only by the idle
//! timeout and `--upstream-timeout`. HTTP/2 (by ALPN) has no header deadline; its limits are
//! its stream cap, header-list size and keep-alive pings.
//!
//! A connection is idle when no exchange is open and none has started for the idle timeout
//! (HTTP/2: no open stream and no new HEADERS; PINGs, SETTINGS and WINDOW_UPDATEs either way
//! do not count), or when an exchange is open but no byte has moved either way for as long.
//! An idle connection is closed gracefully (a request in flight finishes first, HTTP/2 says
//! GOAWAY); one that is still there a second idle timeout later is dropped: a client that
//! stops reading a response stalls it with nothing in flight but the gateway's own writes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::reply::{Body, BoxError};

/// `head_since` when no head is being read.
const NO_HEAD: u64 = u64::MAX;

/// The shortest wait between two looks at a connection's deadlines.
const MIN_WAIT: Duration = Duration::from_millis(10);

/// What a connection has been doing, in milliseconds since it was accepted.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    /// The last byte read or written.
    last: AtomicU64,
    /// The first byte of the request head being read, or [`NO_HEAD`].
    head_since: AtomicU64,
    /// Exchanges between their head and the end of their response.
    open: AtomicUsize,
    /// The last time an exchange opened or ended.
    last_exchange: AtomicU64,
    /// Whether heads are timed (HTTP/1.1).
    heads: bool,
    /// A request head carried both `Content-Length` and `Transfer-Encoding`.
    framing_conflict: AtomicBool,
    /// Every byte written has been flushed, and no shutdown has begun.
    written_out: AtomicBool,
    /// A hand-back in progress ([`Activity::begin_hand_back`]): one of the `HAND_BACK_*`.
    hand_back: AtomicU8,
}

/// No hand-back in progress.
const HAND_BACK_OFF: u8 = 0;
/// hyper is being asked to give the stream back.
const HAND_BACK_ASKED: u8 = 1;
/// ...and read from it meanwhile: it was not idle.
const HAND_BACK_DISTURBED: u8 = 2;

/// What a look at the deadlines found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Nothing yet: look again after this long.
    LookAgainIn(Duration),
    /// No byte either way for at least the idle timeout (for this long): close once in-flight
    /// work is done, and look again after [`Due::until_stalled`].
    Idle(Duration),
    /// Still no byte a whole idle timeout after that: drop the connection (a client that
    /// stopped reading what it asked for).
    Stalled,
    /// A request head has taken longer than the header timeout: close now.
    HeadTooSlow,
}

impl Activity {
    /// A connection accepted now; `heads` times request heads (HTTP/1.1).
    pub(crate) fn new(heads: bool) -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
            head_since: AtomicU64::new(NO_HEAD),
            open: AtomicUsize::new(0),
            last_exchange: AtomicU64::new(0),
            heads,
            framing_conflict: AtomicBool::new(false),
            written_out: AtomicBool::new(true),
            hand_back: AtomicU8::new(HAND_BACK_OFF),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NO_HEAD - 1)
    }

    /// Bytes were written.
    pub(crate) fn wrote(&self) {
        self.wrote_at(self.now());
    }

    fn wrote_at(&self, now: u64) {
        self.last.store(now, Ordering::Relaxed);
    }

    /// How long no byte has moved either way.
    pub(crate) fn silent_for(&self) -> Duration {
        Duration::from_millis(self.now().saturating_sub(self.last.load(Ordering::Relaxed)))
    }

    /// Bytes were read.
    pub(crate) fn read(&self) {
        self.read_at(self.now());
    }

    fn read_at(&self, now: u64) {
        self.last.store(now, Ordering::Relaxed);
        if self.heads
            && self.open.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == NO_HEAD
        {
            self.head_since.store(now, Ordering::Relaxed);
        }
    }

    /// Whether a request head read on this connection carried both `Content-Length` and
    /// `Transfer-Encoding` (RFC 9112 §6.3: a request-smuggling shape). hyper lets
    /// `Transfer-Encoding` win and drops `Content-Length` from the request it hands over, so
    /// only the bytes show it; the server refuses such a request and closes the connection.
    pub(crate) fn framing_conflict(&self) -> bool {
        self.framing_conflict.load(Ordering::Relaxed)
    }

    /// A request head arrived whole: its exchange is open until the returned guard is dropped.
    pub(crate) fn exchange(self: &Arc<Self>) -> OpenExchange {
        self.exchange_at(self.now())
    }

    fn exchange_at(self: &Arc<Self>, now: u64) -> OpenExchange {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.last_exchange.fetch_max(now, Ordering::Relaxed);
        self.head_since.store(NO_HEAD, Ordering::Relaxed);
        OpenExchange(Arc::clone(self))
    }

    /// When an HTTP/1.1 connection could be handed back by hyper and parked
    /// ([`crate::connection`]): `None` if now (no exchange open, no byte read since the last one
    /// ended, every write flushed, and none of that for `after`), else how long until it is
    /// worth another look.
    pub(crate) fn parkable_in(&self, after: Duration) -> Option<Duration> {
        self.parkable_in_at(self.now(), after)
    }

    fn parkable_in_at(&self, now: u64, after: Duration) -> Option<Duration> {
        if self.open.load(Ordering::Relaxed) > 0
            || self.head_since.load(Ordering::Relaxed) != NO_HEAD
            || !self.written_out.load(Ordering::Relaxed)
        {
            return Some(after);
        }
        let quiet =
            Duration::from_millis(now.saturating_sub(self.last_exchange.load(Ordering::Relaxed)));
        let left = after.saturating_sub(quiet);
        (!left.is_zero()).then_some(left)
    }

    /// A hand-back begins: until [`Activity::end_hand_back`], the stream's shutdown is
    /// withheld from it and any read is noted.
    pub(crate) fn begin_hand_back(&self) {
        self.hand_back.store(HAND_BACK_ASKED, Ordering::Relaxed);
    }

    /// The hand-back is over; true if nothing read from the stream meanwhile.
    pub(crate) fn end_hand_back(&self) -> bool {
        self.hand_back.swap(HAND_BACK_OFF, Ordering::Relaxed) == HAND_BACK_ASKED
    }

    /// Looks at both deadlines.
    pub(crate) fn due(&self, idle: Duration, header: Duration) -> Due {
        self.due_at(self.now(), idle, header)
    }

    fn due_at(&self, now: u64, idle: Duration, header: Duration) -> Due {
        let since = |then: u64| Duration::from_millis(now.saturating_sub(then));
        let head_since = self.head_since.load(Ordering::Relaxed);
        if head_since != NO_HEAD && since(head_since) >= header {
            return Due::HeadTooSlow;
        }
        // With an exchange open, silence is what counts: no byte either way. With none open,
        // only requests count: the gateway's own HTTP/2 PINGs, a client's PINGs, SETTINGS and
        // WINDOW_UPDATEs move bytes but ask for nothing, and must not keep a connection (and
        // its slot) forever. A head being read counts from its first byte.
        let idle_for = if self.open.load(Ordering::Relaxed) > 0 {
            since(self.last.load(Ordering::Relaxed))
        } else {
            let head = if head_since == NO_HEAD { 0 } else { head_since };
            since(self.last_exchange.load(Ordering::Relaxed).max(head))
        };
        if idle_for >= Due::stalled_after(idle) {
            return Due::Stalled;
        }
        let idle_left = idle.saturating_sub(idle_for);
        if idle_left.is_zero() {
            return Due::Idle(idle_for);
        }
        let head_left = match (self.heads, head_since) {
            (false, _) => idle_left,
            (true, NO_HEAD) => header, // a head may start at any moment: look within `header`
            (true, head_since) => header.saturating_sub(since(head_since)),
        };
        Due::LookAgainIn(idle_left.min(head_left).max(MIN_WAIT))
    }
}

impl Due {
    /// Silence that makes a connection [`Due::Stalled`]: two idle timeouts.
    fn stalled_after(idle: Duration) -> Duration {
        idle.saturating_mul(2)
    }

    /// After [`Due::Idle`] (idle for `idle_for`): when to look again, so that a stall is seen
    /// when it is due and a head dribbled during the graceful close within `header`.
    pub(crate) fn until_stalled(idle: Duration, idle_for: Duration, header: Duration) -> Duration {
        Self::stalled_after(idle)
            .saturating_sub(idle_for)
            .min(header)
            .max(MIN_WAIT)
    }
}

/// An exchange in progress; dropping it ends the exchange.
#[derive(Debug)]
pub(crate) struct OpenExchange(Arc<Activity>);

impl Drop for OpenExchange {
    fn drop(&mut self) {
        self.0
            .last_exchange
            .fetch_max(self.0.now(), Ordering::Relaxed);
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its exchange open until hyper drops it.
pub(crate) struct ExchangeBody {
    body: Body,
    _open: OpenExchange,
}

impl ExchangeBody {
    /// `body`, ending `open` when dropped.
    pub(crate) fn new(body: Body, open: OpenExchange) -> Self {
        Self { body, _open: open }
    }
}

impl hyper::body::Body for ExchangeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `Tracked::preface` once the first bytes read are known not to be the HTTP/2 preface.
const NOT_H2: usize = usize::MAX;

/// An I/O wrapper that records the bytes read and written.
///
/// On a connection timed as HTTP/1.1 it also refuses the HTTP/2 preface: over TLS, HTTP/2 is
/// chosen by ALPN only (RFC 9113, section 3.3), and hyper-util's server would otherwise speak
/// HTTP/2 on a connection whose ALPN said `http/1.1` (or nothing), with HTTP/1.1's deadlines.
pub(crate) struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
    /// Bytes of [`H2_PREFACE`] matched by the first bytes read, or [`NOT_H2`].
    preface: usize,
    /// The framing headers of the HTTP/1.1 head being read.
    framing: FramingScan,
}

fn starts_with_ignore_case(line: &[u8], prefix: &[u8]) -> bool {
    line.get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

/// Finds `Content-Length` and `Transfer-Encoding` lines in request heads as they are read,
/// a line at a time, across reads. Bytes read while an exchange is open are a body and are not
/// looked at; after a head without either header (no body) the next bytes are the next head.
#[derive(Debug, Default)]
struct FramingScan {
    /// Scanning a head now.
    active: bool,
    /// The start of the current line, lower-cased (only as much as the names need).
    line: [u8; 18],
    line_len: usize,
    content_length: bool,
    transfer_encoding: bool,
}

impl FramingScan {
    /// Reads head bytes; true when a head with both framing headers has ended. Runs on every
    /// request head: the line ends are found with `memchr`, and only the few bytes at the start
    /// of each line are looked at.
    fn scan(&mut self, mut bytes: &[u8]) -> bool {
        while self.active && !bytes.is_empty() {
            let (line, rest, complete) = match memchr::memchr(b'\n', bytes) {
                Some(end) => (&bytes[..end], &bytes[end + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if complete && self.line_len == 0 {
                // A whole line in this read, the usual case: looked at in place. Only the
                // two names matter, so most lines are passed over on their first byte.
                let first = line.first().map(u8::to_ascii_lowercase);
                if line.len() <= 1 && matches!(first, None | Some(b'\r')) {
                    if self.head_ended() {
                        return true;
                    }
                } else if first == Some(b'c') && starts_with_ignore_case(line, b"content-length:") {
                    self.content_length = true;
                } else if first == Some(b't')
                    && starts_with_ignore_case(line, b"transfer-encoding:")
                {
                    self.transfer_encoding = true;
                }
                continue;
            }
            // A line split across reads: its start is kept until the line is complete.
            let stored = self.line_len.min(self.line.len());
            let take = line.len().min(self.line.len() - stored);
            self.line[stored..stored + take].copy_from_slice(&line[..take]);
            self.line_len = self.line_len.saturating_add(line.len());
            if !complete {
                continue;
            }
            let seen = self.line_len;
            let stored = seen.min(self.line.len());
            let start = &mut self.line[..stored];
            start.make_ascii_lowercase();
            if seen <= 1 && start.iter().all(|&byte| byte == b'\r') {
                if self.head_ended() {
                    return true;
                }
            } else if start.starts_with(b"content-length:") {
                self.content_length = true;
            } else if start.starts_with(b"transfer-encoding:") {
                self.transfer_encoding = true;
            }
            self.line_len = 0;
        }
        false
    }

    /// The blank line that ends a head: true when it had both framing headers. A body follows
    /// a head with either, and its bytes are not a head; without one, the next head does.
    fn head_ended(&mut self) -> bool {
        if self.content_length && self.transfer_encoding {
            return true;
        }
        self.active = !(self.content_length || self.transfer_encoding);
        self.content_length = false;
        self.transfer_encoding = false;
        false
    }

    /// A new head may start (no exchange is open).
    fn start(&mut self) {
        if !self.active {
            *self = Self {
                active: true,
                ..Self::default()
            };
        }
    }
}

impl<T> Tracked<T> {
    /// `inner`, reporting to `activity`.
    pub(crate) fn new(inner: T, activity: Arc<Activity>) -> Self {
        let preface = if activity.heads { 0 } else { NOT_H2 };
        Self {
            inner,
            activity,
            preface,
            framing: FramingScan::default(),
        }
    }

    /// Matches newly read bytes against the HTTP/2 preface; an error once it is complete.
    fn check_preface(&mut self, read: &[u8]) -> std::io::Result<()> {
        let matched = self.preface;
        let expected = &H2_PREFACE[matched..];
        let n = read.len().min(expected.len());
        if read[..n] != expected[..n] {
            self.preface = NOT_H2;
            return Ok(());
        }
        self.preface = matched + n;
        if self.preface == H2_PREFACE.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "an HTTP/2 preface without ALPN h2 (RFC 9113, section 3.3)",
            ));
        }
        Ok(())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.activity.hand_back.load(Ordering::Relaxed) != HAND_BACK_OFF {
            self.activity
                .hand_back
                .store(HAND_BACK_DISTURBED, Ordering::Relaxed);
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
            if self.activity.heads {
                if self.activity.open.load(Ordering::Relaxed) == 0 {
                    self.framing.start();
                }
                let this = &mut *self;
                if this.framing.scan(&buf.filled()[before..]) {
                    this.activity
                        .framing_conflict
                        .store(true, Ordering::Relaxed);
                }
            }
            if self.preface != NOT_H2
                && let Err(error) = self.check_preface(&buf.filled()[before..])
            {
                buf.set_filled(before); // an error reads nothing
                return Poll::Ready(Err(error));
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.wrote();
            self.activity.written_out.store(false, Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // hyper flushes the stream only once its own write buffer is empty.
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(result, Poll::Ready(Ok(()))) {
            self.activity.written_out.store(true, Ordering::Relaxed);
        }
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.activity.hand_back.load(Ordering::Relaxed) != HAND_BACK_OFF {
            // hyper is giving the stream back, not closing it.
            return Poll::Ready(Ok(()));
        }
        self.activity.written_out.store(false, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);
    const HEADER: Duration = Duration::from_secs(10);

    fn seconds(s: u64) -> u64 {
        s * 1000
    }

    #[test]
    fn an_idle_connection_lives_for_the_idle_timeout_not_the_header_timeout() {
        let activity = Arc::new(Activity::new(true));
        activity.read_at(0);
        let exchange = activity.exchange_at(0);
        activity.wrote_at(seconds(1)); // the response written
        ended_at(exchange, seconds(1));
        assert_eq!(
            activity.due_at(seconds(30), IDLE, HEADER),
            Due::LookAgainIn(HEADER)
        );
        assert_eq!(
            activity.due_at(seconds(61), IDLE, HEADER),
            Due::Idle(Duration::from_secs(60))
        );
    }

    #[test]
    fn a_head_must_arrive_within_the_header_timeout_of_its_first_byte() {
        let activity = Arc::new(Activity::new(true));
        activity.read_at(seconds(20)); // after 20 idle seconds, a first byte
        activity.read_at(seconds(25)); // dribbled bytes do not move the start
        assert_eq!(
            activity.due_at(seconds(26), IDLE, HEADER),
            Due::LookAgainIn(Duration::from_secs(4))
        );
        assert_eq!(activity.due_at(seconds(30), IDLE, HEADER), Due::HeadTooSlow);
    }

    #[test]
    fn bytes_read_during_an_exchange_are_its_body_not_a_head() {
        let activity = Arc::new(Activity::new(true));
        activity.read_at(0);
        let exchange = activity.exchange();
        for second in 1..=40 {
            activity.read_at(seconds(second)); // a slow upload
        }
        assert_eq!(
            activity.due_at(seconds(45), IDLE, HEADER),
            Due::LookAgainIn(HEADER)
        );
        drop(exchange);
        // The next byte after the exchange starts the next head.
        activity.read_at(seconds(50));
        assert_eq!(activity.due_at(seconds(60), IDLE, HEADER), Due::HeadTooSlow);
        // And its arrival stops the clock.
        let _next = activity.exchange();
        assert_eq!(
            activity.due_at(seconds(60), IDLE, HEADER),
            Due::LookAgainIn(HEADER)
        );
    }

    #[test]
    fn a_connection_is_parkable_only_when_quiet_with_nothing_in_flight() {
        let after = Duration::from_millis(250);
        let activity = Arc::new(Activity::new(true));
        activity.read_at(0);
        let exchange = activity.exchange_at(0);
        assert_eq!(
            activity.parkable_in_at(seconds(5), after),
            Some(after),
            "open"
        );
        activity.written_out.store(false, Ordering::Relaxed); // the response, not yet flushed
        ended_at(exchange, seconds(5));
        assert_eq!(
            activity.parkable_in_at(seconds(6), after),
            Some(after),
            "unflushed"
        );
        activity.written_out.store(true, Ordering::Relaxed);
        assert_eq!(
            activity.parkable_in_at(seconds(5) + 100, after),
            Some(Duration::from_millis(150)),
            "quiet for 100 ms of 250"
        );
        assert_eq!(activity.parkable_in_at(seconds(5) + 250, after), None);
        activity.read_at(seconds(6)); // the next head begins
        assert_eq!(
            activity.parkable_in_at(seconds(7), after),
            Some(after),
            "a head"
        );
    }

    /// An exchange ended at `now` (the drop itself records the real time, which is earlier).
    fn ended_at(exchange: OpenExchange, now: u64) {
        exchange.0.last_exchange.fetch_max(now, Ordering::Relaxed);
        drop(exchange);
    }

    #[test]
    fn both_framing_headers_in_one_head_are_seen_across_reads() {
        let mut scan = FramingScan::default();
        scan.start();
        let head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (first, second) = head.split_at(40);
        assert!(!scan.scan(first));
        assert!(scan.scan(second));
        // Byte by byte, as a slow client sends it.
        let mut scan = FramingScan::default();
        scan.start();
        assert!(
            head.iter()
                .any(|byte| scan.scan(std::slice::from_ref(byte)))
        );

        // One of them is fine; a body's bytes are not a head.
        let mut scan = FramingScan::default();
        scan.start();
        assert!(!scan.scan(
            b"POST /x HTTP/1.1\r\ncontent-length: 40\r\n\r\ntransfer-encoding: x\r\ncontent-length: 1\r\n\r\n"
        ));
        // After a head without a body, the next head (pipelined) is looked at too.
        let mut scan = FramingScan::default();
        scan.start();
        assert!(scan.scan(
            b"GET / HTTP/1.1\r\nhost: a\r\n\r\nPOST / HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\nContent-Length: 3\r\n\r\n"
        ));
        // A value that only mentions the names is not the header.
        let mut scan = FramingScan::default();
        scan.start();
        assert!(!scan.scan(
            b"GET / HTTP/1.1\r\nx-note: content-length: 1\r\nx-other: transfer-encoding: chunked\r\n\r\n"
        ));
    }

    #[test]
    fn heads_are_not_timed_on_http2() {
        let activity = Arc::new(Activity::new(false));
        activity.read_at(seconds(1));
        assert_eq!(
            activity.due_at(seconds(30), IDLE, HEADER),
            Due::LookAgainIn(Duration::from_secs(30))
        );
    }

    #[test]
    fn pings_and_settings_do_not_keep_a_connection_without_requests_open() {
        for http2 in [true, false] {
            let activity = Arc::new(Activity::new(!http2));
            ended_at(activity.exchange_at(seconds(5)), seconds(10));
            // Frames either way every few seconds (PING, its ACK, WINDOW_UPDATE) and no stream.
            for second in (11..=69).step_by(3) {
                activity.read_at(seconds(second));
                activity.wrote_at(seconds(second));
                activity.head_since.store(NO_HEAD, Ordering::Relaxed);
            }
            assert_eq!(
                activity.due_at(seconds(70), IDLE, HEADER),
                Due::Idle(Duration::from_secs(60)),
                "http2: {http2}"
            );
            // Still there (a client that ignores GOAWAY): dropped after a second idle timeout.
            assert_eq!(
                activity.due_at(seconds(130), IDLE, HEADER),
                Due::Stalled,
                "http2: {http2}"
            );
        }
    }

    #[test]
    fn an_open_stream_keeps_the_connection_while_bytes_move() {
        let activity = Arc::new(Activity::new(false));
        let _stream = activity.exchange_at(0);
        for second in 1..=100 {
            activity.wrote_at(seconds(second)); // a long download
        }
        assert_eq!(
            activity.due_at(seconds(101), IDLE, HEADER),
            Due::LookAgainIn(Duration::from_secs(59))
        );
    }

    #[test]
    fn a_connection_silent_for_two_idle_timeouts_is_stalled() {
        let activity = Arc::new(Activity::new(true));
        activity.read_at(0);
        let _exchange = activity.exchange(); // a response the client stopped reading
        activity.wrote_at(seconds(1));
        assert_eq!(
            activity.due_at(seconds(61), IDLE, HEADER),
            Due::Idle(Duration::from_secs(60))
        );
        assert_eq!(
            Due::until_stalled(IDLE, Duration::from_secs(60), HEADER),
            HEADER
        );
        assert_eq!(
            Due::until_stalled(IDLE, Duration::from_secs(115), HEADER),
            Duration::from_secs(5)
        );
        assert_eq!(activity.due_at(seconds(121), IDLE, HEADER), Due::Stalled);
    }

    #[test]
    fn exchanges_end_when_their_response_body_is_dropped() {
        let activity = Arc::new(Activity::new(true));
        let body = ExchangeBody::new(crate::reply::full(Bytes::new()), activity.exchange());
        assert_eq!(activity.open.load(Ordering::Relaxed), 1);
        drop(body);
        assert_eq!(activity.open.load(Ordering::Relaxed), 0);
    }

    /// Reads `chunks`, each written on its own, through a [`Tracked`] wrapper to the end; the
    /// error, if any.
    async fn read_through(heads: bool, chunks: &[&[u8]]) -> Option<std::io::Error> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|chunk| chunk.to_vec()).collect();
        tokio::spawn(async move {
            for chunk in chunks {
                client.write_all(&chunk).await.expect("write");
                tokio::task::yield_now().await; // the reader takes each chunk on its own
            }
        });
        let mut tracked = Tracked::new(server, Arc::new(Activity::new(heads)));
        tracked.read_to_end(&mut Vec::new()).await.err()
    }

    #[tokio::test]
    async fn the_http2_preface_is_refused_on_an_http1_connection_even_byte_by_byte() {
        let whole = read_through(true, &[H2_PREFACE]).await;
        assert_eq!(
            whole.map(|error| error.kind()),
            Some(std::io::ErrorKind::InvalidData)
        );
        let bytes: Vec<&[u8]> = H2_PREFACE.chunks(1).collect();
        let dribbled = read_through(true, &bytes).await;
        assert_eq!(
            dribbled.map(|error| error.kind()),
            Some(std::io::ErrorKind::InvalidData)
        );
    }

    #[tokio::test]
    async fn http1_requests_and_http2_by_alpn_pass() {
        // A request that starts like the preface (`PRI`) is not refused, nor is the preface
        // after a request: only a connection's first bytes are looked at.
        let request = b"PRIVATE / HTTP/1.1\r\nhost: x\r\n\r\n";
        assert!(read_through(true, &[request, H2_PREFACE]).await.is_none());
        assert!(read_through(true, &[b"POST", H2_PREFACE]).await.is_none());
        assert!(read_through(false, &[H2_PREFACE]).await.is_none());
    }
}
