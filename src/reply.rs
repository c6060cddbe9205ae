//! Response building: the body type every handler returns, small constructors for the gateway's
//! own answers, and the headers every response carries.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// Errors a response body can fail with while streaming.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the gateway sends.
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// A whole body from bytes.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A response with a body of `content_type` that must not be cached.
fn uncached(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A JSON response that must not be cached (`Cache-Control: no-store`).
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    uncached(status, "application/json", value.to_string())
}

/// A short plain-text response that must not be cached.
pub(crate) fn text(status: StatusCode, message: &'static str) -> Response<Body> {
    uncached(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

/// A small HTML page that must not be cached.
pub(crate) fn html(status: StatusCode, page: String) -> Response<Body> {
    uncached(status, "text/html; charset=utf-8", page)
}

/// `text` safe inside HTML text and double-quoted attributes.
pub(crate) fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

/// A 302 redirect that must not be cached.
pub(crate) fn redirect(location: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::FOUND;
    let headers = response.headers_mut();
    match HeaderValue::from_str(location) {
        Ok(value) => {
            headers.insert(header::LOCATION, value);
        }
        Err(_) => {
            // Locations are built from URLs and checked local paths; never reached in practice,
            // and a redirect to the root is the safe fallback.
            headers.insert(header::LOCATION, HeaderValue::from_static("/"));
        }
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Adds the headers every response carries: HSTS (the gateway only speaks TLS) and nosniff.
pub(crate) fn add_security_headers(response: &mut Response<Body>) {
    let headers = response.headers_mut();
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    headers
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
}

/// The anti-framing and referrer headers of the gateway's own answers and the app's files
/// (`--frame-ancestors`): a page of another site cannot frame the login or the app to trick
/// clicks out of a signed-in user, and no page leaks its URL to the next site.
#[derive(Debug, Clone)]
pub(crate) struct Framing {
    frame_ancestors: HeaderValue,
    deny: bool,
}

impl Framing {
    /// `frame-ancestors 'none'` plus `X-Frame-Options: DENY` when `origins` is empty; else
    /// `frame-ancestors` with the origins (`X-Frame-Options` cannot name several, so it is left
    /// out for browsers that know CSP).
    pub(crate) fn new(origins: &[String]) -> Self {
        if origins.is_empty() {
            return Self {
                frame_ancestors: HeaderValue::from_static("frame-ancestors 'none'"),
                deny: true,
            };
        }
        let value = format!("frame-ancestors {}", origins.join(" "));
        Self {
            frame_ancestors: HeaderValue::from_str(&value)
                .unwrap_or_else(|_| HeaderValue::from_static("frame-ancestors 'none'")),
            deny: false,
        }
    }

    /// Adds the headers; a `Content-Security-Policy` already set (an SVG's) gets the
    /// `frame-ancestors` directive appended.
    pub(crate) fn apply(&self, response: &mut Response<Body>) {
        let headers = response.headers_mut();
        let csp = match headers.get(header::CONTENT_SECURITY_POLICY) {
            Some(existing) => {
                let mut combined = existing.as_bytes().to_vec();
                combined.extend_from_slice(b"; ");
                combined.extend_from_slice(self.frame_ancestors.as_bytes());
                HeaderValue::from_bytes(&combined).unwrap_or_else(|_| self.frame_ancestors.clone())
            }
            None => self.frame_ancestors.clone(),
        };
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
        if self.deny {
            headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        }
        headers
            .entry(header::REFERRER_POLICY)
            .or_insert(HeaderValue::from_static("no-referrer"));
    }
}

#[cfg(test)]
mod tests {
    use super::escape_html;

    #[test]
    fn html_escaping_leaves_no_markup_or_attribute_breakout() {
        assert_eq!(
            escape_html(r#"https://idp/x?a=1&b="2"<script>'"#),
            "https://idp/x?a=1&amp;b=&quot;2&quot;&lt;script&gt;&#39;"
        );
    }
}
