//! Serves the built single-page app (`--static-dir`, e.g. Angular's `dist/app/browser`).
//!
//! - Files by path, with a content type by extension and `nosniff` (set for every response).
//! - Client-side routing: a GET for an unknown path that is not an API path (case ignored) and
//!   does not name a file with an extension gets `index.html`.
//! - Caching: fingerprinted build assets (`main-5XHQ2UVJ.js`, a hash of 8 or more characters
//!   that is not all digits, so not a date) are immutable for a year; HTML and everything else
//!   is `no-cache` with an ETag and `Last-Modified`, so a new release is seen at once.
//! - Conditional and partial requests: `If-None-Match` and `If-Modified-Since` (304), one
//!   `Range` (206, or 416 when it cannot be met), `If-Range`.
//! - Precompressed `.br` / `.gz` siblings are sent when the browser accepts them (`br;q=0`
//!   refuses br).
//!
//! Path safety: the router has already normalised the path and refused dot segments, empty
//! segments, backslashes and encoded separators; here dotfiles are refused too, and every file
//! served, a precompressed sibling as much as the file asked for, must lie inside the directory
//! after following symlinks (a `main.js.br` symlink to `/etc/shadow` is not served).
//!
//! Memory: a file is streamed in chunks of [`CHUNK`] bytes as the client reads it, never read
//! whole; a download costs the same memory whatever the file's size. SVG files, which can carry
//! scripts, get `Content-Security-Policy: script-src 'none'`.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncSeekExt, ReadBuf};

use crate::error::{HttpError, RequestError};
use crate::reply::{Body, BoxError, full};

/// Bytes read from a file per body frame.
const CHUNK: usize = 64 * 1024;

/// The app's files.
#[derive(Debug)]
pub(crate) struct Spa {
    root: PathBuf,
}

/// The directory could not be used.
#[derive(Debug, thiserror::Error)]
#[error("--static-dir {path}: {reason}")]
pub struct SpaError {
    path: PathBuf,
    reason: String,
}

struct Found {
    path: PathBuf,
    encoding: Option<&'static str>,
    content_type: &'static str,
    cache: &'static str,
}

/// What a `Range` header asks of a representation of `length` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeAsk {
    /// No range, or one the server may ignore (several ranges, another unit, bad syntax).
    Whole,
    /// Bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// A range that lies past the end: 416.
    Unsatisfiable,
}

impl Spa {
    /// Serves `root`, which must be a directory with an `index.html`.
    pub(crate) fn new(root: &Path) -> Result<Self, SpaError> {
        let error = |reason: String| SpaError {
            path: root.to_owned(),
            reason,
        };
        let root = root.canonicalize().map_err(|io| error(io.to_string()))?;
        if !root.join("index.html").is_file() {
            return Err(error("has no index.html".into()));
        }
        Ok(Self { root })
    }

    /// Answers a GET or HEAD for `path` (already normalised and checked by the router).
    pub(crate) async fn serve(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Response<Body>, HttpError> {
        if method != Method::GET && method != Method::HEAD {
            return Err(RequestError::NotFound { json: true }.into());
        }
        let not_found = || HttpError::from(RequestError::NotFound { json: false });
        let found = self.find(path, headers).await.ok_or_else(not_found)?;
        let mut file = tokio::fs::File::open(&found.path)
            .await
            .map_err(|_| not_found())?;
        // The metadata of the file opened, not of the path (which could be swapped meanwhile).
        let metadata = file.metadata().await.map_err(|_| not_found())?;
        if !metadata.is_file() {
            return Err(not_found());
        }
        let length = metadata.len();
        let modified = metadata.modified().ok();
        let modified_nanos = modified
            .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |elapsed| elapsed.as_nanos());
        let etag = format!(
            "\"{length:x}-{modified_nanos:x}{}\"",
            found
                .encoding
                .map_or("", |encoding| if encoding == "br" { "-br" } else { "-gz" })
        );

        let mut response = Response::new(full(Bytes::new()));
        let out = response.headers_mut();
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(found.content_type),
        );
        out.insert(header::CACHE_CONTROL, HeaderValue::from_static(found.cache));
        out.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Ok(value) = HeaderValue::from_str(&etag) {
            out.insert(header::ETAG, value);
        }
        if let Some(modified) = modified
            && let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(modified))
        {
            out.insert(header::LAST_MODIFIED, value);
        }
        if let Some(encoding) = found.encoding {
            out.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        if found.content_type.starts_with("image/svg+xml") {
            // An SVG opened on its own is a document that can run scripts on this origin.
            out.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("script-src 'none'"),
            );
        }

        if not_modified(headers, &etag, modified) {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            return Ok(response);
        }
        let (start, count) = match range_ask(headers, &etag, length) {
            RangeAsk::Whole => (0, length),
            RangeAsk::Part { start, end } => {
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                let value = format!("bytes {start}-{end}/{length}");
                if let Ok(value) = HeaderValue::from_str(&value) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                (start, end - start + 1)
            }
            RangeAsk::Unsatisfiable => {
                *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{length}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                return Ok(response);
            }
        };
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(count));
        if method == Method::GET && count > 0 {
            if start > 0 {
                file.seek(SeekFrom::Start(start)).await.map_err(|error| {
                    HttpError::Internal(format!("seeking {}: {error}", found.path.display()))
                })?;
            }
            *response.body_mut() = FileBody::new(file, count).boxed();
        }
        Ok(response)
    }

    async fn find(&self, path: &str, headers: &HeaderMap) -> Option<Found> {
        let relative = decode(path)?;
        let candidate = self.root.join(&relative);
        let file = match self.inside(&candidate).await {
            Some(file) if file.is_file() => file,
            Some(dir) if dir.is_dir() => self.inside(&dir.join("index.html")).await?,
            _ if is_client_route(path) => self.root.join("index.html"),
            _ => return None,
        };
        let name = file.file_name()?.to_str()?.to_owned();
        let content_type = content_type(&name);
        let cache = if !content_type.starts_with("text/html") && is_hashed(&name) {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        };
        for (coding, suffix) in [("br", "br"), ("gzip", "gz")] {
            if !accepts(headers, coding) {
                continue;
            }
            // The sibling passes the same check as the file: inside the root once resolved.
            let sibling = PathBuf::from(format!("{}.{suffix}", file.display()));
            if let Some(compressed) = self.inside(&sibling).await.filter(|path| path.is_file()) {
                return Some(Found {
                    path: compressed,
                    encoding: Some(coding),
                    content_type,
                    cache,
                });
            }
        }
        Some(Found {
            path: file,
            encoding: None,
            content_type,
            cache,
        })
    }

    /// The canonical form of `candidate` when it exists inside the root (symlinks followed).
    async fn inside(&self, candidate: &Path) -> Option<PathBuf> {
        let resolved = tokio::fs::canonicalize(candidate).await.ok()?;
        resolved.starts_with(&self.root).then_some(resolved)
    }
}

/// Whether `Accept-Encoding` accepts `coding` with a weight above zero (`br;q=0` refuses).
fn accepts(headers: &HeaderMap, coding: &str) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let weight = parts
                .filter_map(|param| param.trim().split_once('='))
                .find(|(key, _)| key.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, value)| value.trim().parse::<f32>().ok());
            name.eq_ignore_ascii_case(coding) && weight.is_some_and(|weight| weight > 0.0)
        })
}

/// Whether the client's copy is current: `If-None-Match` when sent, else `If-Modified-Since`
/// (RFC 9110 §13.2.2), to the second.
fn not_modified(headers: &HeaderMap, etag: &str, modified: Option<SystemTime>) -> bool {
    if let Some(tags) = headers.get(header::IF_NONE_MATCH) {
        return tags.to_str().is_ok_and(|tags| {
            tags.split(',')
                .map(|tag| tag.trim().trim_start_matches("W/"))
                .any(|tag| tag == etag || tag == "*")
        });
    }
    let since = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| httpdate::parse_http_date(value).ok());
    match (since, modified) {
        (Some(since), Some(modified)) => {
            let seconds = |time: SystemTime| {
                time.duration_since(UNIX_EPOCH)
                    .unwrap_or(Duration::ZERO)
                    .as_secs()
            };
            seconds(modified) <= seconds(since)
        }
        _ => false,
    }
}

/// Reads a `Range` header (RFC 9110 §14.2): one byte range, honoured only when `If-Range`
/// (if sent) names the current ETag.
fn range_ask(headers: &HeaderMap, etag: &str, length: u64) -> RangeAsk {
    let Some(range) = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
    else {
        return RangeAsk::Whole;
    };
    if let Some(if_range) = headers.get(header::IF_RANGE)
        && if_range.as_bytes() != etag.as_bytes()
    {
        return RangeAsk::Whole;
    }
    let Some(spec) = range.trim().strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        // Several ranges: the whole file, which RFC 9110 allows, instead of a multipart body.
        return RangeAsk::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |text: &str| {
        (!text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()))
            .then(|| text.parse::<u64>().ok())
            .flatten()
    };
    match (parse(first), parse(last)) {
        // `-N`: the last N bytes.
        (None, Some(suffix)) if first.is_empty() => {
            if suffix == 0 || length == 0 {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Part {
                    start: length.saturating_sub(suffix),
                    end: length - 1,
                }
            }
        }
        (Some(start), None) if last.is_empty() => {
            if start >= length {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Part {
                    start,
                    end: length - 1,
                }
            }
        }
        (Some(start), Some(end)) if start <= end => {
            if start >= length {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Part {
                    start,
                    end: end.min(length - 1),
                }
            }
        }
        _ => RangeAsk::Whole,
    }
}

/// A file streamed as a response body, [`CHUNK`] bytes at a time, only as fast as the client
/// takes them (hyper polls for the next frame when it has written the last).
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buffer: Vec<u8>,
}

impl FileBody {
    fn new(file: tokio::fs::File, length: u64) -> Self {
        Self {
            file,
            remaining: length,
            buffer: Vec::new(),
        }
    }
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(this.remaining).map_or(CHUNK, |left| left.min(CHUNK));
        if this.buffer.len() != want {
            this.buffer.resize(want, 0);
        }
        let mut read = ReadBuf::new(&mut this.buffer);
        match Pin::new(&mut this.file).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(error)) => Poll::Ready(Some(Err(Box::new(error)))),
            Poll::Ready(Ok(())) => {
                let filled = read.filled().len();
                if filled == 0 {
                    // The file shrank after its length was sent: end the response short, so
                    // the client sees a broken download rather than a wrong one.
                    this.remaining = 0;
                    return Poll::Ready(Some(Err("file shorter than its length".into())));
                }
                this.remaining -= filled as u64;
                let chunk = Bytes::copy_from_slice(&this.buffer[..filled]);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Percent-decodes a checked request path into a relative file path; refuses dotfiles and
/// anything that decodes to a separator or NUL.
fn decode(path: &str) -> Option<PathBuf> {
    let mut relative = PathBuf::new();
    for segment in path.split('/').filter(|segment| !segment.is_empty()) {
        let decoded = percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .ok()?;
        if decoded.starts_with('.') || decoded.contains(['/', '\\', '\0']) {
            return None;
        }
        relative.push(decoded.as_ref());
    }
    Some(relative)
}

/// Whether a missing path should get `index.html`: not an API path, and not a file name with an
/// extension (a missing `/main.js` is a 404, not the app).
fn is_client_route(path: &str) -> bool {
    // Case ignored, as route matching ignores it: `/API/x` is an API path too. The router has
    // already decoded escapes, so `/%61pi/x` arrives here as `/api/x`.
    let api = crate::path::strip_prefix_ignore_case(path, "/api").is_some();
    let last = path.rsplit('/').next().unwrap_or_default();
    !api && !last.contains('.')
}

/// Whether a build tool put a content hash in the name: `main-5XHQ2UVJ.js`,
/// `chunk-ABCD1234.js`, `styles.3f2a9c1b.css`. A run of digits (`report-20240101.js`) is a
/// date or a version, not a hash: such a file can change under the same name.
fn is_hashed(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or_default();
    let dotted = name.split('.').nth(1).unwrap_or_default();
    let looks_like_hash = |token: &str| {
        token.len() >= 8
            && token.chars().all(|c| c.is_ascii_alphanumeric())
            && token.chars().any(|c| c.is_ascii_digit())
            && token.chars().any(|c| c.is_ascii_alphabetic())
            && (token.chars().all(|c| !c.is_ascii_lowercase())
                || token.chars().all(|c| c.is_ascii_hexdigit()))
    };
    stem.rsplit('-')
        .next()
        .is_some_and(|token| stem.contains('-') && looks_like_hash(token))
        || (name.matches('.').count() >= 2 && looks_like_hash(dotted))
}

fn content_type(name: &str) -> &'static str {
    let extension = name
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match extension.as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_hashes_are_recognised() {
        for hashed in [
            "main-5XHQ2UVJ.js",
            "chunk-ABCD1234.js",
            "styles-5INURTSO.css",
            "styles.3f2a9c1b.css",
            "polyfills-FFHMD2TL.js",
        ] {
            assert!(is_hashed(hashed), "{hashed}");
        }
        for plain in [
            "index.html",
            "favicon.ico",
            "main.js",
            "my-component.js",
            "logo-dark.svg",
            "report-20240101.js",
            "data.20241231.json",
        ] {
            assert!(!is_hashed(plain), "{plain}");
        }
    }

    #[test]
    fn client_routes_get_the_app_but_apis_and_files_do_not() {
        assert!(is_client_route("/orders/42"));
        assert!(is_client_route("/"));
        assert!(!is_client_route("/api/unknown"));
        assert!(!is_client_route("/API/unknown"));
        assert!(!is_client_route("/Api"));
        assert!(is_client_route("/apis"));
        assert!(!is_client_route("/missing.js"));
    }

    #[test]
    fn zero_weight_refuses_a_coding() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(value));
            headers
        };
        assert!(accepts(&with("gzip, br"), "br"));
        assert!(accepts(&with("br;q=0.5"), "br"));
        assert!(!accepts(&with("br;q=0, gzip"), "br"));
        assert!(!accepts(&with("br; q=0.0"), "br"));
        assert!(!accepts(&with("brotli"), "br"));
        assert!(accepts(&with("BR"), "br"));
    }

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        let ask = |range: &'static str, length| {
            let mut headers = HeaderMap::new();
            headers.insert(header::RANGE, HeaderValue::from_static(range));
            range_ask(&headers, "\"e\"", length)
        };
        assert_eq!(ask("bytes=0-9", 100), RangeAsk::Part { start: 0, end: 9 });
        assert_eq!(ask("bytes=90-", 100), RangeAsk::Part { start: 90, end: 99 });
        assert_eq!(ask("bytes=-10", 100), RangeAsk::Part { start: 90, end: 99 });
        assert_eq!(ask("bytes=-500", 100), RangeAsk::Part { start: 0, end: 99 });
        assert_eq!(
            ask("bytes=50-500", 100),
            RangeAsk::Part { start: 50, end: 99 }
        );
        assert_eq!(ask("bytes=100-", 100), RangeAsk::Unsatisfiable);
        assert_eq!(ask("bytes=-0", 100), RangeAsk::Unsatisfiable);
        assert_eq!(ask("bytes=0-1,5-6", 100), RangeAsk::Whole);
        assert_eq!(ask("bytes=9-0", 100), RangeAsk::Whole);
        assert_eq!(ask("items=0-1", 100), RangeAsk::Whole);
        assert_eq!(ask("bytes=x-1", 100), RangeAsk::Whole);
        assert_eq!(ask("bytes=+1-2", 100), RangeAsk::Whole);
        let mut stale = HeaderMap::new();
        stale.insert(header::RANGE, HeaderValue::from_static("bytes=0-1"));
        stale.insert(header::IF_RANGE, HeaderValue::from_static("\"old\""));
        assert_eq!(range_ask(&stale, "\"e\"", 100), RangeAsk::Whole);
    }

    #[test]
    fn dotfiles_and_encoded_separators_are_refused() {
        assert_eq!(decode("/a/b%20c.js"), Some(PathBuf::from("a/b c.js")));
        assert_eq!(decode("/.env"), None);
        assert_eq!(decode("/a/.git/config"), None);
        assert_eq!(decode("/a%2fb"), None);
        assert_eq!(decode("/a%00b"), None);
    }
}
