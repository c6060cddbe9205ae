//! Header hygiene both ways: what a request may carry to an upstream, what the gateway adds
//! (the bearer token, the forwarding headers), and what an upstream's answer may carry back.
//!
//! Attacks each rule stops:
//! - token or session leaks: the browser's `Authorization` is replaced, the gateway's own
//!   cookies are removed from what goes upstream, and an upstream's `Set-Cookie` for them is
//!   dropped;
//! - spoofed client addresses: `X-Forwarded-*`, `Forwarded` and their look-alikes are set by
//!   the gateway, never passed through;
//! - request smuggling and connection-level confusion: hop-by-hop headers are removed, and
//!   those `Connection` names.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request;

use super::Transform;
use crate::cookies::{self, CookieConfig};

/// What the gateway tells an upstream about a request, beyond the request's own headers.
pub(super) struct Forwarding<'a> {
    /// The session's access token for `Authorization`; none on routes that send none.
    pub bearer: Option<HeaderValue>,
    /// The user's identity headers (`X-Auth-Request-*`), on routes that send them.
    pub identity: Vec<(HeaderName, HeaderValue)>,
    /// The browser's address.
    pub peer: IpAddr,
    /// The public URL's `host[:port]`, for `X-Forwarded-Host`.
    pub public_host: &'a HeaderValue,
    /// The end of every `Forwarded` value ([`forwarded_suffix`]).
    pub forwarded_suffix: &'a [u8],
    /// The route's transforms.
    pub transforms: &'a [Transform],
    /// The gateway's cookies, removed from `Cookie`.
    pub cookie: &'a CookieConfig,
    /// A WebSocket handshake: `Connection: upgrade` and `Upgrade: websocket` go upstream.
    pub websocket: bool,
}

/// Cleans a request's headers for the upstream and adds the gateway's own. The route's
/// header transforms run between the two, so that what the gateway guarantees (the bearer,
/// the forwarding headers) always has the last word.
pub(super) fn to_upstream(parts: &mut request::Parts, forwarding: Forwarding<'_>) {
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
    });
    let headers = &mut parts.headers;
    // Room for what is added below, so the map grows once, not several times.
    headers.reserve(6);
    strip_hop_by_hop(headers);
    remove_untrusted(headers);
    remove_gateway_cookies(headers, forwarding.cookie);
    let mut keep_original_host = false;
    for transform in forwarding.transforms {
        match transform {
            Transform::RequestHeaderSet(name, value) => {
                headers.insert(name.clone(), value.clone());
            }
            Transform::RequestHeaderAppend(name, value) => {
                headers.append(name.clone(), value.clone());
            }
            Transform::RequestHeaderRemove(name) => {
                headers.remove(name);
            }
            Transform::RequestHeaderOriginalHost(keep) => keep_original_host = *keep,
            _ => {}
        }
    }
    // `insert` replaces whatever a transform put there.
    for (name, value) in forwarding.identity {
        headers.insert(name, value);
    }
    // Moved, not cloned: a clone of the value's bytes would allocate on every call.
    match forwarding.bearer {
        Some(bearer) => headers.insert(header::AUTHORIZATION, bearer),
        None => headers.remove(header::AUTHORIZATION),
    };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    // The public URL's host, never the browser's `Host`: a client can send any `Host`
    // (`evil.example`), and upstreams build links and redirects from this header.
    headers.insert(X_FORWARDED_HOST, forwarding.public_host.clone());
    if let Some(address) = address_header(forwarding.peer) {
        if let Some(value) =
            forwarded_header(forwarding.peer, &address, forwarding.forwarded_suffix)
        {
            headers.insert(header::FORWARDED, value);
        }
        headers.insert(X_FORWARDED_FOR, address);
    }
    if keep_original_host && let Some(host) = original_host {
        headers.insert(header::HOST, host);
    }
    if forwarding.websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
}

/// The elements of a comma-separated list header (`Connection`, `Upgrade`), trimmed, across
/// all its fields. The one reader of these lists: the hop-by-hop removal and the WebSocket
/// check must see the same names.
pub(super) fn list<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|element| !element.is_empty())
}

/// Cleans an upstream's response headers: hop-by-hop headers go, the route's response
/// transforms run, and then every `Set-Cookie` that could replace the gateway's cookies goes.
pub(super) fn from_upstream(
    headers: &mut HeaderMap,
    status: u16,
    transforms: &[Transform],
    cookie: &CookieConfig,
) {
    strip_hop_by_hop(headers);
    Transform::rewrite_response(transforms, status, headers);
    drop_gateway_set_cookies(headers, cookie);
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1). `Connection`
/// comes first (bit 0 of [`strip_hop_by_hop`]'s mask): it also reads the names it lists.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Whether a request header must not reach an upstream because only the gateway may say what
/// it says: the client's address, the scheme and host it used, the original URL or method, or
/// credentials. Whatever the browser sent under such a name is dropped, never trusted; the
/// gateway sets `Authorization`, `X-Forwarded-For/Proto/Host` and `Forwarded` itself, and the
/// `X-Auth-Request-*` identity headers on the routes that ask for them (an upstream written for
/// oauth2-proxy trusts those as the user's identity).
///
/// Names with `_` are dropped too: several servers (nginx's `underscores_in_headers`, CGI,
/// WSGI, PHP) read `X_Forwarded_For` as `X-Forwarded-For`.
fn untrusted(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "forwarded"
            | "x-real-ip"
            | "true-client-ip"
            | "x-client-ip"
            | "cf-connecting-ip"
            | "x-cluster-client-ip"
            | "x-rewrite-url"
            | "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
    ) || name.starts_with("x-forwarded-")
        || name.starts_with("x-original-")
        || name.starts_with("x-auth-request-")
        || name.contains('_')
}

/// Removes the browser's `Host` and every [`untrusted`] header. One pass over the names; the
/// usual request has none to remove and allocates nothing.
fn remove_untrusted(headers: &mut HeaderMap) {
    headers.remove(header::HOST);
    if !headers.keys().any(|name| untrusted(name.as_str())) {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| untrusted(name.as_str()))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// The RFC 7239 `Forwarded` value: the client's address (an IPv6 one quoted and bracketed, as
/// §6 requires), then `suffix`, the scheme and the public host ([`forwarded_suffix`]). Built
/// from bytes: every proxied call writes one.
fn forwarded_header(
    ip: std::net::IpAddr,
    address: &HeaderValue,
    suffix: &[u8],
) -> Option<HeaderValue> {
    let mut value = Vec::with_capacity(address.len() + suffix.len() + 8);
    value.extend_from_slice(b"for=");
    if ip.is_ipv6() {
        value.extend_from_slice(b"\"[");
        value.extend_from_slice(address.as_bytes());
        value.extend_from_slice(b"]\"");
    } else {
        value.extend_from_slice(address.as_bytes());
    }
    value.extend_from_slice(suffix);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).ok()
}

/// What follows the address in every `Forwarded` value: `;proto=https;host="HOST"`.
pub(super) fn forwarded_suffix(public_host: &str) -> Vec<u8> {
    format!(";proto=https;host=\"{public_host}\"").into_bytes()
}

/// Removes the headers of `names` whose bits `mask` sets.
fn remove_present(headers: &mut HeaderMap, names: &[HeaderName], mut mask: u32) {
    while mask != 0 {
        headers.remove(&names[mask.trailing_zeros() as usize]);
        mask &= mask - 1;
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names: the fixed hop-by-hop ones, and any other `Proxy-*`.
    let mut mask = 0u32;
    let mut other_proxy_headers = false;
    for name in headers.keys() {
        // The order of `HOP_BY_HOP`.
        let index = match name.as_str() {
            "connection" => 0,
            "keep-alive" => 1,
            "proxy-authenticate" => 2,
            "proxy-authorization" => 3,
            "te" => 4,
            "trailer" => 5,
            "transfer-encoding" => 6,
            "upgrade" => 7,
            other => {
                other_proxy_headers |= other.starts_with("proxy-");
                continue;
            }
        };
        mask |= 1 << index;
    }
    if mask == 0 && !other_proxy_headers {
        return;
    }
    // Names that `Connection` (bit 0) lists are hop-by-hop too. The usual values (`keep-alive`,
    // `close`) name none beyond the fixed list: nothing to parse.
    let plain_connection = |value: &HeaderValue| {
        let value = value.as_bytes();
        value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close")
    };
    if mask & 1 != 0
        && !headers
            .get_all(header::CONNECTION)
            .iter()
            .all(plain_connection)
    {
        let named: Vec<HeaderName> = list(headers, &header::CONNECTION)
            .filter(|name| {
                !name.eq_ignore_ascii_case("close")
                    && !HOP_BY_HOP
                        .iter()
                        .any(|known| name.eq_ignore_ascii_case(known.as_str()))
            })
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    remove_present(headers, &HOP_BY_HOP, mask);
    if other_proxy_headers {
        let proxy_headers: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy_headers {
            headers.remove(name);
        }
    }
}

/// The client's address as a header value, formatted on the stack (an IPv6 address is at most
/// 45 characters); IPv4, the usual case, without the formatting machinery.
fn address_header(ip: std::net::IpAddr) -> Option<HeaderValue> {
    let mut text = [0u8; 45];
    let length = match ip {
        std::net::IpAddr::V4(v4) => {
            let mut at = 0;
            for (index, octet) in v4.octets().into_iter().enumerate() {
                if index > 0 {
                    text[at] = b'.';
                    at += 1;
                }
                if octet >= 100 {
                    text[at] = b'0' + octet / 100;
                    at += 1;
                }
                if octet >= 10 {
                    text[at] = b'0' + octet / 10 % 10;
                    at += 1;
                }
                text[at] = b'0' + octet % 10;
                at += 1;
            }
            at
        }
        std::net::IpAddr::V6(v6) => {
            let mut cursor = std::io::Cursor::new(&mut text[..]);
            std::io::Write::write_fmt(&mut cursor, format_args!("{v6}")).ok()?;
            usize::try_from(cursor.position()).ok()?
        }
    };
    HeaderValue::from_bytes(&text[..length]).ok()
}

/// Removes the gateway's own cookies from the `Cookie` header, keeping the others.
fn remove_gateway_cookies(headers: &mut HeaderMap, cookie: &CookieConfig) {
    let mut own = false;
    let mut kept: Vec<&str> = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        // A header that is not valid text cannot be split safely: it is dropped.
        let Ok(line) = value.to_str() else {
            own = true;
            continue;
        };
        for pair in cookies::pairs(line) {
            if cookie.is_own(pair.name) {
                own = true;
            } else {
                kept.push(pair.text);
            }
        }
    }
    if !own {
        return;
    }
    let value = (!kept.is_empty())
        .then(|| HeaderValue::from_str(&kept.join("; ")).ok())
        .flatten();
    headers.remove(header::COOKIE);
    if let Some(value) = value {
        headers.insert(header::COOKIE, value);
    }
}

/// Drops an upstream's `Set-Cookie` for the gateway's own cookie names (an upstream must not be
/// able to replace or delete the session), and every one that browsers could read as one: a
/// cookie without a name (`=__Host-bff=x` or `__Host-bff` alone is stored with an empty name
/// and sent back as `__Host-bff=x`), or one whose value starts with a gateway cookie's name.
fn drop_gateway_set_cookies(headers: &mut HeaderMap, cookie: &CookieConfig) {
    let own = |value: &HeaderValue| {
        let Ok(text) = value.to_str() else {
            return true;
        };
        let pair = text.split(';').next().unwrap_or_default();
        let Some((name, value)) = pair.split_once('=') else {
            return true;
        };
        let (name, value) = (name.trim(), value.trim().trim_start_matches('"'));
        name.is_empty() || cookie.is_own(name) || cookie.starts_with_own(value)
    };
    if !headers.get_all(header::SET_COOKIE).iter().any(own) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|value| !own(value))
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for value in kept {
        headers.append(header::SET_COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_only_the_gateway_may_set_are_removed() {
        for name in [
            "host",
            "authorization",
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-forwarded-uri",
            "x-forwarded-email",
            "x-forwarded-prefix",
            "x-real-ip",
            "true-client-ip",
            "x-original-url",
            "x-original-method",
            "x-rewrite-url",
            "x-http-method-override",
            "x-method-override",
            "x_forwarded_for",
            "x-auth_request_user",
            "x-auth-request-user",
            "x-auth-request-email",
            "x-auth-request-groups",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_static("spoofed"),
            );
            headers.insert("x-kept", HeaderValue::from_static("1"));
            headers.insert("x-forwarded", HeaderValue::from_static("1"));
            remove_untrusted(&mut headers);
            assert_eq!(headers.len(), 2, "{name}");
        }
    }

    #[test]
    fn forwarded_quotes_ipv6_addresses() {
        let forwarded = |ip: std::net::IpAddr, host: &str| {
            forwarded_header(
                ip,
                &address_header(ip).expect("address"),
                &forwarded_suffix(host),
            )
        };
        let v4 = forwarded("192.0.2.1".parse().expect("ip"), "app.example:8443");
        assert_eq!(
            v4.expect("value"),
            "for=192.0.2.1;proto=https;host=\"app.example:8443\""
        );
        let v6 = forwarded("2001:db8::1".parse().expect("ip"), "app.example");
        assert_eq!(
            v6.expect("value"),
            "for=\"[2001:db8::1]\";proto=https;host=\"app.example\""
        );
    }

    #[test]
    fn hop_by_hop_headers_each_go_by_their_own_bit() {
        for name in &HOP_BY_HOP {
            let mut headers = HeaderMap::new();
            headers.insert(name.clone(), HeaderValue::from_static("close"));
            headers.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut headers);
            assert_eq!(headers.len(), 1, "{name}");
            assert!(headers.contains_key("x-kept"));
        }
    }

    #[test]
    fn client_addresses_are_written_as_usual() {
        for address in [
            "127.0.0.1",
            "0.0.0.0",
            "10.20.30.40",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
        ] {
            let ip: std::net::IpAddr = address.parse().expect("ip");
            assert_eq!(
                address_header(ip).expect("header").to_str().expect("text"),
                ip.to_string()
            );
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("proxy-foo", HeaderValue::from_static("1"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));

        // Without a Connection header, each kind is still found on its own.
        for name in [
            "proxy-authorization",
            "proxy-connection",
            "upgrade",
            "trailer",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_static("1"));
            headers.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut headers);
            assert_eq!(headers.len(), 1, "{name}");
            assert!(headers.contains_key("x-kept"));
        }
    }
}
