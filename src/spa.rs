//! Serves the built single-page app (`--static-dir`, e.g. Angular's `dist/app/browser`).
//!
//! - Files by path, with a content type by extension and `nosniff` (set for every response).
//! - Client-side routing: a GET for an unknown path that is not an API path and does not name a
//!   file with an extension gets `index.html`.
//! - Caching: hashed build assets (`main-5XHQ2UVJ.js`) are immutable for a year; everything else,
//!   `index.html` first, is `no-cache` with an ETag, so a new release is seen at once.
//! - Precompressed `.br` / `.gz` siblings are sent when the browser accepts them.
//!
//! Path safety: the router has already refused dot segments, empty segments, backslashes and
//! encoded separators; here dotfiles are refused too, and the resolved file must lie inside the
//! directory after following symlinks.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::error::HttpError;
use crate::reply::{Body, full};

/// The app's files.
#[derive(Debug)]
pub struct Spa {
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

impl Spa {
    /// Serves `root`, which must be a directory with an `index.html`.
    pub fn new(root: &Path) -> Result<Self, SpaError> {
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

    /// Answers a GET or HEAD for `path` (already checked by the router).
    pub async fn serve(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Response<Body>, HttpError> {
        if method != Method::GET && method != Method::HEAD {
            return Err(HttpError::client(StatusCode::NOT_FOUND, "not found").json());
        }
        let found = self
            .find(path, headers)
            .await
            .ok_or_else(|| HttpError::client(StatusCode::NOT_FOUND, "not found"))?;
        let metadata = tokio::fs::metadata(&found.path)
            .await
            .map_err(|_| HttpError::client(StatusCode::NOT_FOUND, "not found"))?;
        let modified = metadata
            .modified()
            .ok()
            .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |elapsed| elapsed.as_nanos());
        let etag = format!(
            "\"{:x}-{:x}{}\"",
            metadata.len(),
            modified,
            found
                .encoding
                .map_or("", |encoding| if encoding == "br" { "-br" } else { "-gz" })
        );
        let mut response = Response::new(full(bytes::Bytes::new()));
        let not_modified = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.split(',').any(|tag| tag.trim() == etag));
        if not_modified {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
        } else if method == Method::GET {
            let bytes = tokio::fs::read(&found.path).await.map_err(|error| {
                HttpError::internal(format!("reading {}: {error}", found.path.display()))
            })?;
            *response.body_mut() = full(bytes);
        }
        let out = response.headers_mut();
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(found.content_type),
        );
        out.insert(header::CACHE_CONTROL, HeaderValue::from_static(found.cache));
        out.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        if let Ok(value) = HeaderValue::from_str(&etag) {
            out.insert(header::ETAG, value);
        }
        if let Some(encoding) = found.encoding {
            out.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        if method == Method::HEAD && !not_modified {
            out.insert(header::CONTENT_LENGTH, HeaderValue::from(metadata.len()));
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
        let cache = if name != "index.html" && is_hashed(&name) {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        };
        let accepts = |coding: &str| {
            headers
                .get_all(header::ACCEPT_ENCODING)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .any(|item| {
                    item.split(';')
                        .next()
                        .is_some_and(|name| name.trim() == coding)
                })
        };
        for (coding, suffix) in [("br", "br"), ("gzip", "gz")] {
            let compressed = PathBuf::from(format!("{}.{suffix}", file.display()));
            if accepts(coding) && compressed.is_file() {
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
/// `chunk-ABCD1234.js`, `styles.3f2a9c1b.css`.
fn is_hashed(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or_default();
    let dotted = name.split('.').nth(1).unwrap_or_default();
    let looks_like_hash = |token: &str| {
        token.len() >= 8
            && token.chars().all(|c| c.is_ascii_alphanumeric())
            && token.chars().any(|c| c.is_ascii_digit())
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
    fn dotfiles_and_encoded_separators_are_refused() {
        assert_eq!(decode("/a/b%20c.js"), Some(PathBuf::from("a/b c.js")));
        assert_eq!(decode("/.env"), None);
        assert_eq!(decode("/a/.git/config"), None);
        assert_eq!(decode("/a%2fb"), None);
        assert_eq!(decode("/a%00b"), None);
    }
}
