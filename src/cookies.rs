//! Reading the `Cookie` header and writing `Set-Cookie` values.
//!
//! Every cookie the gateway sets is `Secure; HttpOnly; Path=/` with no `Domain`, which the
//! `__Host-` prefix requires and which keeps it away from scripts and other hosts.

use http::HeaderMap;
use http::header::COOKIE;

/// Every value of cookie `name` in the request, in header order. Browsers send duplicates when
/// cookies with the same name exist for several paths; callers decide which they accept.
pub fn values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(pairs)
        .filter(move |pair| pair.name == name)
        .filter_map(|pair| Some(pair.value()?.trim_matches('"')))
}

/// One `name=value` pair of a `Cookie` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair<'a> {
    /// The name, trimmed (the whole pair when it has no `=`).
    pub name: &'a str,
    /// The whole pair, trimmed.
    pub text: &'a str,
}

impl<'a> Pair<'a> {
    /// The value as sent, quotes included, trimmed; `None` without `=`.
    pub fn value(&self) -> Option<&'a str> {
        let (_, value) = self.text.split_once('=')?;
        Some(value.trim())
    }
}

/// The pairs of one `Cookie` header line, in order, empty ones skipped. The one parser of the
/// header: the session lookup and the proxy (which removes the gateway's cookies before a
/// request goes upstream) must read the same names.
pub fn pairs(line: &str) -> impl Iterator<Item = Pair<'_>> {
    line.split(';')
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .map(|text| Pair {
            name: text
                .split_once('=')
                .map_or(text, |(name, _)| name.trim_end()),
            text,
        })
}

/// A `Set-Cookie` value for a gateway cookie. `max_age` `None` makes a session cookie.
pub fn set(name: &str, value: &str, same_site: SameSite, max_age: Option<u64>) -> String {
    let mut cookie = format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite={}",
        same_site.as_str()
    );
    if let Some(seconds) = max_age {
        cookie.push_str(&format!("; Max-Age={seconds}"));
    }
    cookie
}

/// A `Set-Cookie` value that deletes a gateway cookie.
pub fn expire(name: &str, same_site: SameSite) -> String {
    format!(
        "{name}=; Path=/; Secure; HttpOnly; SameSite={}; Max-Age=0",
        same_site.as_str()
    )
}

/// SameSite attribute of the session cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SameSite {
    /// Sent on same-site requests and top-level cross-site navigations.
    Lax,
    /// Sent on same-site requests only.
    Strict,
}

impl SameSite {
    /// The attribute value as it appears in `Set-Cookie`.
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
        }
    }
}

/// Cookie settings.
#[derive(Debug, Clone)]
pub struct CookieConfig {
    /// Session cookie name.
    pub name: String,
    /// SameSite of the session cookie (the login-flow cookie is always Lax).
    pub same_site: SameSite,
}

impl CookieConfig {
    const FLOW_SUFFIX: &'static str = "-flow";

    /// Name of the short-lived login-flow cookie.
    pub fn flow_name(&self) -> String {
        format!("{}{}", self.name, Self::FLOW_SUFFIX)
    }

    /// Whether `name` is one of the gateway's own cookies (the session or the login-flow one),
    /// without building the flow cookie's name.
    pub fn is_own(&self, name: &str) -> bool {
        name == self.name || name.strip_suffix(Self::FLOW_SUFFIX) == Some(self.name.as_str())
    }

    /// Whether `text` starts with the name of a gateway cookie, ASCII case ignored (browsers
    /// compare the `__Host-` prefix so): a nameless cookie with such a value would be sent back
    /// as that cookie.
    pub fn starts_with_own(&self, text: &str) -> bool {
        text.get(..self.name.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(&self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn finds_values_across_headers_and_pairs() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; __Host-bff=xyz; b=2"));
        headers.append(COOKIE, HeaderValue::from_static("__Host-bff=second"));
        let found: Vec<_> = values(&headers, "__Host-bff").collect();
        assert_eq!(found, ["xyz", "second"]);
        assert_eq!(values(&headers, "__Host-bf").count(), 0);
    }

    #[test]
    fn pairs_keep_their_text_and_tell_names_from_values() {
        let found: Vec<_> = pairs(" a=1;; b = \"2\" ;flag ").collect();
        let names: Vec<_> = found.iter().map(|pair| pair.name).collect();
        let values: Vec<_> = found.iter().map(Pair::value).collect();
        let texts: Vec<_> = found.iter().map(|pair| pair.text).collect();
        assert_eq!(names, ["a", "b", "flag"]);
        assert_eq!(values, [Some("1"), Some("\"2\""), None]);
        assert_eq!(texts, ["a=1", "b = \"2\"", "flag"]);
    }

    #[test]
    fn set_cookie_carries_the_required_attributes() {
        let cookie = set("__Host-bff", "v", SameSite::Strict, None);
        assert_eq!(
            cookie,
            "__Host-bff=v; Path=/; Secure; HttpOnly; SameSite=Strict"
        );
        assert!(!cookie.contains("Domain"));
        assert!(expire("x", SameSite::Lax).ends_with("Max-Age=0"));
    }
}
