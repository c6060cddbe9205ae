//! Reading the `Cookie` header and writing `Set-Cookie` values.
//!
//! Every cookie the gateway sets is `Secure; HttpOnly; Path=/` with no `Domain`, which the
//! `__Host-` prefix requires and which keeps it away from scripts and other hosts.

use http::HeaderMap;
use http::header::COOKIE;

use crate::config::SameSite;

/// Every value of cookie `name` in the request, in header order. Browsers send duplicates when
/// cookies with the same name exist for several paths; callers decide which they accept.
pub fn values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(move |pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value.trim_matches('"'))
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
