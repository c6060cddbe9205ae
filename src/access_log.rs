//! The access log: one line per request, and what the handlers add to it beyond method, path
//! and status.
//!
//! Lines are on when `--log-level` (or `RUST_LOG`) lets target `oidc_bff::access` through at
//! info, which the default does. The serving binary installs a [`Sink`]: each request formats
//! its line into a buffer of its worker thread (no allocation once warm) and appends it to a
//! shared buffer under a short lock; a writer thread of its own writes what gathered with one
//! `write` to standard error, about every [`GATHER`], or as soon as [`FLUSH_AT`] bytes wait. A
//! request never waits for the log: when the writer falls behind (a stalled journald, a full
//! pipe) and [`CAPACITY`] bytes wait, further lines are dropped and counted
//! (`oidc_bff_access_log_dropped_total`). [`flush`] writes what waits, at shutdown. Without a
//! sink (the library embedded, the tests), the lines go through `tracing` as events.
//!
//! Lines have the shape of the gateway's other log lines, in text or JSON; every value is
//! escaped (text: control characters; JSON: as JSON), so a request cannot forge a line. The path
//! is logged without its query, which carries codes and states.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::session::SessionId;
use crate::sync::Locked;

/// What a handler tells the access log beyond method, path and status: filled in by the handler
/// that served the request (the proxy, `/api/user`, `/logout`).
#[derive(Debug, Clone, Default)]
pub struct AccessInfo {
    /// The proxy route that took the request.
    pub route: Option<Arc<str>>,
    /// The destination it went to ([`crate::proxy::route::Destination::label`]).
    pub upstream: Option<Arc<str>>,
    /// The session (logged as a short hash of its id, 8 hex digits; never the key).
    pub session: Option<SessionId>,
}

/// Whether access-log lines are written (`--log-level` info or finer for `oidc_bff::access`):
/// when they are not, handlers skip gathering what only the log would show.
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: "oidc_bff::access", tracing::Level::INFO)
}

/// One request, as its line says it.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    pub method: &'a http::Method,
    /// The path as the request sent it (no query).
    pub path: &'a str,
    pub status: u16,
    pub latency: Duration,
    pub info: &'a AccessInfo,
}

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// `2026-12-06T01:02:03.456789Z  INFO oidc_bff::access: method=GET path=/ …`.
    Text {
        /// Whether each line starts with the time (not under journald, which stamps lines).
        time: bool,
    },
    /// One JSON object per line, the fields flattened, as the other JSON log lines.
    Json,
}

/// Logs one request: through the installed sink, else as a `tracing` event. Call only when
/// [`enabled`].
pub(crate) fn log(entry: &Entry<'_>) {
    if let Some(sink) = SINK.get() {
        sink.write(entry);
        return;
    }
    let latency_us = u64::try_from(entry.latency.as_micros()).unwrap_or(u64::MAX);
    tracing::info!(
        target: "oidc_bff::access",
        method = %entry.method,
        path = entry.path,
        status = entry.status,
        latency_us,
        route = entry.info.route.as_deref().unwrap_or("-"),
        upstream = entry.info.upstream.as_deref().unwrap_or("-"),
        session = %SessionLabel(entry.info.session),
    );
}

/// Writes the access log through `sink` from now on (once per process; later calls are
/// ignored). Returns whether it was installed.
pub fn install(sink: Sink) -> bool {
    SINK.set(sink).is_ok()
}

/// Writes every line that waits, now (at shutdown).
pub fn flush() {
    if let Some(sink) = SINK.get() {
        sink.flush();
    }
}

/// Lines dropped because the writer fell behind, since start.
pub(crate) fn dropped() -> u64 {
    SINK.get().map_or(0, Sink::dropped)
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// A writer waits at most this long after the first line before it writes what gathered.
pub const GATHER: Duration = Duration::from_millis(50);

/// The writer is woken at once when this many bytes wait.
pub const FLUSH_AT: usize = 64 * 1024;

/// Bytes that may wait before lines are dropped (about 6,000 lines).
pub const CAPACITY: usize = 1024 * 1024;

/// The buffered, non-blocking writer of access lines.
pub struct Sink {
    shared: Arc<Shared>,
    format: LineFormat,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

struct Shared {
    waiting: Mutex<Vec<u8>>,
    /// Signalled when lines start waiting (the buffer was empty) or pass [`FLUSH_AT`].
    wake: Condvar,
    /// Held while a batch is written, so that [`Sink::flush`] returns after lines in flight.
    output: Mutex<Box<dyn Write + Send>>,
    dropped: AtomicU64,
    stopped: AtomicBool,
}

impl Sink {
    /// A sink writing lines in `format` to `output` from a thread of its own.
    pub fn start(output: Box<dyn Write + Send>, format: LineFormat) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Vec::with_capacity(FLUSH_AT)),
            wake: Condvar::new(),
            output: Mutex::new(output),
            dropped: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || writer.run())?;
        Ok(Self { shared, format })
    }

    /// Appends one request's line; never waits for the output.
    pub(crate) fn write(&self, entry: &Entry<'_>) {
        LINE.with_borrow_mut(|line| {
            line.text.clear();
            format_line(&mut line.text, &mut line.clock, self.format, entry);
            line.text.push('\n');
            self.append(line.text.as_bytes());
        });
    }

    fn append(&self, line: &[u8]) {
        let mut waiting = self.shared.waiting.locked();
        if waiting.len() + line.len() > CAPACITY {
            drop(waiting);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_empty = waiting.is_empty();
        let crossed = waiting.len() < FLUSH_AT && waiting.len() + line.len() >= FLUSH_AT;
        waiting.extend_from_slice(line);
        drop(waiting);
        // Waking costs a system call: only when the writer may be asleep with nothing to do.
        if was_empty || crossed {
            self.shared.wake.notify_one();
        }
    }

    /// Writes what waits and returns once it is written.
    pub fn flush(&self) {
        self.shared.write_waiting();
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
        self.shared.write_waiting();
    }
}

impl Shared {
    fn run(&self) {
        let mut batch = Vec::with_capacity(FLUSH_AT);
        loop {
            {
                let mut waiting = self.waiting.locked();
                while waiting.is_empty() && !self.stopped.load(Ordering::Relaxed) {
                    waiting = self.wake.wait(waiting).unwrap_or_else(|e| e.into_inner());
                }
                if self.stopped.load(Ordering::Relaxed) {
                    return;
                }
                // Let a batch gather, unless a full one already waits.
                if waiting.len() < FLUSH_AT {
                    drop(
                        self.wake
                            .wait_timeout(waiting, GATHER)
                            .unwrap_or_else(|e| e.into_inner()),
                    );
                }
            }
            self.write_waiting_into(&mut batch);
        }
    }

    /// Takes what waits and writes it.
    fn write_waiting(&self) {
        self.write_waiting_into(&mut Vec::new());
    }

    /// Takes what waits (swapped with `batch`, which must be empty) and writes it. The output
    /// is held from before the take to after the write, so batches go out in order.
    fn write_waiting_into(&self, batch: &mut Vec<u8>) {
        let mut output = self.output.locked();
        std::mem::swap(&mut *self.waiting.locked(), batch);
        if batch.is_empty() {
            return;
        }
        // Nowhere to report a failed write but the log itself: the lines are lost, counted.
        if output
            .write_all(batch)
            .and_then(|()| output.flush())
            .is_err()
        {
            let lines = batch.iter().filter(|&&byte| byte == b'\n').count();
            self.dropped
                .fetch_add(u64::try_from(lines).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        batch.clear();
        // Keep the buffer from growing for good after a burst.
        batch.shrink_to(4 * FLUSH_AT);
    }
}

/// Standard error, locked for each batch so that other log lines never land inside one.
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().lock().write(bytes)
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        std::io::stderr().lock().write_all(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().lock().flush()
    }
}

/// A worker thread's line buffer and its cached time of day.
#[derive(Default)]
struct Line {
    text: String,
    clock: SecondCache,
}

thread_local! {
    static LINE: RefCell<Line> = RefCell::new(Line::default());
}

/// `YYYY-MM-DDTHH:MM:SS` of the last second a line was written in.
#[derive(Default)]
struct SecondCache {
    second: u64,
    text: String,
}

impl SecondCache {
    /// Writes `time` as RFC 3339 UTC with microseconds.
    fn write(&mut self, out: &mut String, time: SystemTime) {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if self.text.is_empty() || second != self.second {
            self.second = second;
            self.text.clear();
            let (year, month, day) = civil_from_days(second / 86_400);
            let of_day = second % 86_400;
            let _ = write!(
                self.text,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
                of_day / 3_600,
                of_day % 3_600 / 60,
                of_day % 60
            );
        }
        out.push_str(&self.text);
        out.push('.');
        push_number(out, u64::from(since.subsec_micros()), 6);
        out.push('Z');
    }
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A session as the log names it: a short hash of its id (8 hex digits), or `-`.
/// (`SessionId`'s `Display`, without the formatting machinery.)
fn push_session(out: &mut String, session: Option<SessionId>) {
    match session {
        Some(id) => crate::hex::push(out, &id.hash[..4]),
        None => out.push('-'),
    }
}

/// A session as the log names it, for `tracing`'s formatting.
struct SessionLabel(Option<SessionId>);

impl std::fmt::Display for SessionLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => id.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Appends `value` in decimal, zero-padded to `width` digits.
fn push_number(out: &mut String, mut value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    let start = at.min(digits.len().saturating_sub(width));
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&digits[start..]).unwrap_or_default());
}

/// Whether `text` needs no escaping in a text line: no control character (C0, DEL, or C1,
/// which UTF-8 writes as 0xC2 0x80..=0x9F).
fn is_plain(text: &str) -> bool {
    let bytes = text.as_bytes();
    // Printable ASCII, the usual case, checked without branches per byte (it vectorizes).
    if bytes
        .iter()
        .fold(true, |plain, &byte| plain & (0x20..0x7f).contains(&byte))
    {
        return true;
    }
    !bytes.iter().enumerate().any(|(at, &byte)| {
        byte < 0x20
            || byte == 0x7f
            || (byte == 0xc2
                && bytes
                    .get(at + 1)
                    .is_some_and(|next| (0x80..0xa0).contains(next)))
    })
}

/// Appends `text` with its control characters escaped as the other text log lines do.
fn push_escaped(out: &mut String, text: &str) {
    if is_plain(text) {
        out.push_str(text);
    } else {
        let _ = crate::logging::write_escaped(out, text);
    }
}

fn format_line(out: &mut String, clock: &mut SecondCache, format: LineFormat, entry: &Entry<'_>) {
    // The one reader of the wall clock besides `crate::clock`: a log line's time is the real
    // time, whatever clock the gateway's expiry logic is given.
    #[allow(clippy::disallowed_methods)]
    let now = SystemTime::now();
    let latency_us = u64::try_from(entry.latency.as_micros()).unwrap_or(u64::MAX);
    let route = entry.info.route.as_deref().unwrap_or("-");
    let upstream = entry.info.upstream.as_deref().unwrap_or("-");
    match format {
        LineFormat::Text { time } => {
            if time {
                clock.write(out, now);
                out.push(' ');
            }
            out.push_str(" INFO oidc_bff::access: method=");
            push_escaped(out, entry.method.as_str());
            out.push_str(" path=");
            push_escaped(out, entry.path);
            out.push_str(" status=");
            push_number(out, u64::from(entry.status), 1);
            out.push_str(" latency_us=");
            push_number(out, latency_us, 1);
            out.push_str(" route=");
            push_escaped(out, route);
            out.push_str(" upstream=");
            push_escaped(out, upstream);
            out.push_str(" session=");
            push_session(out, entry.info.session);
        }
        LineFormat::Json => {
            out.push_str("{\"timestamp\":\"");
            clock.write(out, now);
            out.push_str("\",\"level\":\"INFO\",\"method\":");
            json_string(out, entry.method.as_str());
            out.push_str(",\"path\":");
            json_string(out, entry.path);
            out.push_str(",\"status\":");
            push_number(out, u64::from(entry.status), 1);
            out.push_str(",\"latency_us\":");
            push_number(out, latency_us, 1);
            out.push_str(",\"route\":");
            json_string(out, route);
            out.push_str(",\"upstream\":");
            json_string(out, upstream);
            out.push_str(",\"session\":\"");
            push_session(out, entry.info.session);
            out.push_str("\",\"target\":\"oidc_bff::access\"}");
        }
    }
}

/// `text` as a JSON string (RFC 8259 §7).
fn json_string(out: &mut String, text: &str) {
    out.push('"');
    if !text
        .bytes()
        .any(|byte| byte < 0x20 || byte == b'"' || byte == b'\\' || byte == 0x7f)
    {
        out.push_str(text);
        out.push('"');
        return;
    }
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                out.push_str("\\u00");
                crate::hex::push(out, &[u32::from(c) as u8]);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(method: &'a http::Method, path: &'a str, info: &'a AccessInfo) -> Entry<'a> {
        Entry {
            method,
            path,
            status: 200,
            latency: Duration::from_micros(1_234),
            info,
        }
    }

    fn line(format: LineFormat, entry: &Entry<'_>) -> String {
        let mut out = String::new();
        format_line(&mut out, &mut SecondCache::default(), format, entry);
        out
    }

    #[test]
    fn dates_are_the_calendars() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_793), (2026, 12, 6));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
        let mut cache = SecondCache::default();
        let mut out = String::new();
        cache.write(
            &mut out,
            UNIX_EPOCH + Duration::from_micros(1_796_519_971_000_042),
        );
        assert_eq!(out, "2026-12-06T01:19:31.000042Z");
    }

    #[test]
    fn text_lines_have_every_field_and_escape_what_the_request_sent() {
        let info = AccessInfo {
            route: Some("api".into()),
            upstream: Some("10.0.0.1:8080".into()),
            session: None,
        };
        let text = line(
            LineFormat::Text { time: false },
            &entry(&http::Method::GET, "/a\nb\x1b", &info),
        );
        assert_eq!(
            text,
            " INFO oidc_bff::access: method=GET path=/a\\nb\\u{1b} status=200 latency_us=1234 \
             route=api upstream=10.0.0.1:8080 session=-"
        );
        let stamped = line(
            LineFormat::Text { time: true },
            &entry(&http::Method::GET, "/", &info),
        );
        assert!(stamped.contains("Z  INFO oidc_bff::access: "), "{stamped}");
    }

    #[test]
    fn the_fast_paths_write_what_the_formatting_machinery_would() {
        for (value, width) in [
            (0, 1),
            (7, 1),
            (1_234, 1),
            (u64::MAX, 1),
            (42, 6),
            (999_999, 6),
        ] {
            let mut out = String::new();
            push_number(&mut out, value, width);
            assert_eq!(out, format!("{value:0width$}"));
        }
        let id = SessionId {
            created_ms: 1,
            hash: [0xa5; 32],
        };
        let mut out = String::new();
        push_session(&mut out, Some(id));
        assert_eq!(out, id.to_string());
        for text in [
            "/plain/path",
            "/é/ü",
            "/a\u{85}b",
            "/a\u{9f}",
            "/a\u{7f}",
            "/tab\t",
            "/\u{a0}",
        ] {
            let mut fast = String::new();
            push_escaped(&mut fast, text);
            let mut slow = String::new();
            crate::logging::write_escaped(&mut slow, text).expect("write");
            assert_eq!(fast, slow, "{text:?}");
            let mut json = String::new();
            json_string(&mut json, text);
            assert_eq!(
                serde_json::from_str::<String>(&json).expect(&json),
                text,
                "{json}"
            );
        }
    }

    #[test]
    fn json_lines_parse_and_keep_what_the_request_sent() {
        let info = AccessInfo::default();
        let hostile = "/x\"},\"status\":500\n\u{1}\\";
        let text = line(
            LineFormat::Json,
            &entry(&http::Method::POST, hostile, &info),
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).expect(&text);
        assert_eq!(parsed["path"], hostile);
        assert_eq!(parsed["status"], 200);
        assert_eq!(parsed["method"], "POST");
        assert_eq!(parsed["latency_us"], 1234);
        assert_eq!(parsed["session"], "-");
        assert_eq!(parsed["target"], "oidc_bff::access");
        assert!(!text.contains('\n'));
    }

    /// An output that takes nothing until it is let go.
    struct Stalled {
        open: Arc<(Mutex<bool>, Condvar)>,
        taken: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stalled {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let (open, opened) = &*self.open;
            let mut is_open = open.locked();
            while !*is_open {
                is_open = opened.wait(is_open).expect("lock");
            }
            self.taken.locked().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_output_drops_and_counts_lines_and_never_blocks_a_request() {
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let taken = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink::start(
            Box::new(Stalled {
                open: Arc::clone(&open),
                taken: Arc::clone(&taken),
            }),
            LineFormat::Text { time: false },
        )
        .expect("thread");
        let info = AccessInfo::default();
        let method = http::Method::GET;
        // Far more than fits while the output takes nothing: every call returns, the excess is
        // dropped and counted.
        let lines = 3 * CAPACITY / 100;
        for _ in 0..lines {
            sink.write(&entry(&method, "/api/isAuth", &info));
        }
        let dropped = sink.dropped();
        assert!(dropped > 0, "nothing dropped");
        assert!(dropped < lines as u64, "everything dropped");
        *open.0.locked() = true;
        open.1.notify_all();
        sink.flush();
        let written = taken.locked().iter().filter(|&&b| b == b'\n').count() as u64;
        assert_eq!(written + dropped, lines as u64);
    }

    #[test]
    fn lines_are_written_within_the_gathering_time_and_all_at_a_flush() {
        let taken = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new((Mutex::new(true), Condvar::new()));
        let sink = Sink::start(
            Box::new(Stalled {
                open,
                taken: Arc::clone(&taken),
            }),
            LineFormat::Json,
        )
        .expect("thread");
        let info = AccessInfo::default();
        let method = http::Method::GET;
        sink.write(&entry(&method, "/first", &info));
        // The writer's own thread writes it without a flush.
        let mut waited = 0;
        while taken.locked().is_empty() {
            assert!(waited < 200, "not written after 2 s");
            std::thread::sleep(Duration::from_millis(10));
            waited += 1;
        }
        for index in 0..1_000 {
            sink.write(&entry(&method, &format!("/{index}"), &info));
        }
        sink.flush();
        let text = String::from_utf8(taken.locked().clone()).expect("utf-8");
        assert_eq!(text.lines().count(), 1_001, "{text}");
        assert!(
            text.lines()
                .all(|line| serde_json::from_str::<serde_json::Value>(line).is_ok())
        );
        assert_eq!(sink.dropped(), 0);
    }
}
