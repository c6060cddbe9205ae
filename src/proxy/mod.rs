//! The token-relay reverse proxy: picks the route for a request path, checks the session and the
//! CSRF header, puts the session's access token in `Authorization: Bearer`, cleans the headers
//! both ways, and streams the bodies to and from the upstream over pooled keep-alive
//! connections (`upstream`: hyper's client connections, one pool per destination).
//!
//! Attacks each rule stops:
//! - path tricks (`%2e%2e`, `%2f`, `//`, `/./`, `;`, `%252e`, backslashes) that would escape a
//!   route or reach another upstream path: the router normalises the path and refuses these
//!   before matching (`crate::path`), and the route and the upstream see the same normal path;
//! - TRACE, TRACK and CONNECT: refused by the router, never forwarded (an echoing upstream
//!   would hand the bearer token to the client);
//! - token or session leaks: the browser's `Authorization` is replaced, the gateway's own cookies
//!   are removed from what goes upstream, and an upstream's `Set-Cookie` for them is dropped;
//! - spoofed client addresses: `X-Forwarded-*` are set by the gateway, never passed through;
//! - request smuggling and connection-level confusion: hop-by-hop headers are removed;
//! - CSRF: a route that needs a session also needs `X-CSRF: 1`, checked before the session is
//!   looked up (a refused call does not keep a session alive) and before any byte goes upstream.

mod route;
mod tunnel;
mod upstream;
pub mod yarp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use url::Url;

use crate::auth::{Auth, require_csrf_header};
use crate::error::HttpError;
use crate::refresh::Refresher;
use crate::reply::{Body, BoxError};
use crate::sync::RwLocked;
use crate::tickets::Activity;

pub use tunnel::{ConnectionHold, TunnelLimits};

pub use route::{
    Cluster, Destination, HostPattern, Policy, RouteDef, RouteValues, Template, Transform, When,
    sort_routes,
};

/// One `--route PREFIX=URL[,URL…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Path prefix, matched on whole segments and removed before forwarding.
    pub prefix: String,
    /// Destinations of the route's cluster.
    pub destinations: Vec<Url>,
}

/// Parses `PREFIX=URL[,URL…]`.
pub fn parse_route(text: &str) -> Result<RouteSpec, String> {
    let (prefix, urls) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} must look like /prefix=http://host:port[,http://…]"))?;
    let prefix = prefix.trim_end_matches('/');
    if crate::path::normalize(prefix).ok().as_deref() != Some(prefix) {
        return Err(format!(
            "{prefix:?}: the prefix must be a plain path such as /api/orders"
        ));
    }
    let mut destinations = Vec::new();
    for url in urls.split(',') {
        let parsed = crate::urls::absolute(url.trim())?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(format!(
                "{url:?}: destinations must be http:// or https:// URLs"
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(format!("{url:?}: a destination has no query or fragment"));
        }
        destinations.push(parsed);
    }
    Ok(RouteSpec {
        prefix: prefix.to_owned(),
        destinations,
    })
}

/// Turns a `--route` flag into a route: everything below the prefix, prefix removed, a
/// round-robin cluster, session required.
pub fn route_from_flag(spec: &RouteSpec) -> RouteDef {
    let destinations = spec
        .destinations
        .iter()
        .enumerate()
        .map(|(index, url)| {
            // Named by place, which keeps the flag's order; logged by address.
            Destination::new(format!("{index:04}"), url.clone()).labelled_by_address()
        })
        .collect();
    RouteDef {
        id: spec.prefix.clone(),
        template: Template::prefix(&spec.prefix),
        methods: None,
        hosts: None,
        order: 0,
        anonymous: false,
        websockets: true,
        transforms: vec![Transform::PathRemovePrefix(spec.prefix.clone())],
        cluster: Arc::new(Cluster::new(
            spec.prefix.clone(),
            destinations,
            Policy::RoundRobin,
            None,
        )),
    }
}

/// The development route of `--frontend-url`: every path no other route takes goes to the dev
/// server (e.g. `ng serve`), anonymous, without any token.
pub fn frontend_route(url: Url) -> RouteDef {
    RouteDef {
        id: "frontend".into(),
        template: Template::prefix("/"),
        methods: None,
        hosts: None,
        order: i32::MAX,
        anonymous: true,
        // The dev server's live reload is a WebSocket.
        websockets: true,
        transforms: Vec::new(),
        cluster: Arc::new(Cluster::new(
            "frontend".into(),
            vec![Destination::new("dev-server".into(), url)],
            Policy::FirstAlphabetical,
            None,
        )),
    }
}

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Every route, from `--route` flags and the `--proxy-config` file, in matching order.
    pub routes: Arc<Vec<RouteDef>>,
    /// The YARP file the routes came from, if any.
    pub file: Option<std::path::PathBuf>,
    /// The `--route` flags.
    pub flag_routes: Vec<RouteSpec>,
    /// The `--frontend-url` dev server.
    pub frontend: Option<Url>,
    /// Time allowed for the upstream to answer (headers), unless a cluster says otherwise.
    pub upstream_timeout: Duration,
    /// Largest request body forwarded.
    pub max_request_body: usize,
    /// The gateway's public origin: the only `Origin` accepted for upgrade requests.
    pub public_origin: String,
    /// WebSocket tunnels' idle timeout and longest life.
    pub tunnel_limits: TunnelLimits,
}

impl ProxyConfig {
    /// Combines flag routes, the routes of a YARP file and the dev-server route, ordered for
    /// matching.
    pub fn assemble(
        flags: &[RouteSpec],
        file_routes: Vec<RouteDef>,
        frontend: Option<&Url>,
    ) -> Vec<RouteDef> {
        let mut routes: Vec<RouteDef> = flags.iter().map(route_from_flag).collect();
        routes.extend(file_routes);
        routes.extend(frontend.cloned().map(frontend_route));
        sort_routes(&mut routes);
        routes
    }

    /// Reads the YARP file again and assembles the routes anew (SIGHUP).
    pub fn reload(&self) -> Result<Vec<RouteDef>, Vec<String>> {
        let file_routes = match &self.file {
            Some(path) => yarp::load(path)?,
            None => Vec::new(),
        };
        Ok(Self::assemble(
            &self.flag_routes,
            file_routes,
            self.frontend.as_ref(),
        ))
    }
}

/// The route a request matched: a snapshot of the routes (a reload does not disturb it), the
/// route's place in it and the values its template captured.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    routes: Arc<Vec<RouteDef>>,
    index: usize,
    values: RouteValues,
}

impl RouteMatch {
    /// The route.
    pub fn route(&self) -> &RouteDef {
        &self.routes[self.index]
    }

    /// The route's id (the metrics and the access log name it so).
    pub fn id(&self) -> &str {
        &self.route().id
    }
}

/// The proxy.
pub struct Proxy {
    routes: std::sync::RwLock<Arc<Vec<RouteDef>>>,
    connector: upstream::Connector,
    upstream_timeout: Duration,
    max_request_body: usize,
    public_origin: String,
    tunnel_limits: TunnelLimits,
    /// The public URL's `host[:port]`, for `X-Forwarded-Host`.
    public_host: HeaderValue,
    /// The end of every `Forwarded` value ([`forwarded_suffix`]).
    forwarded_suffix: Vec<u8>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("routes", &self.routes().len())
            .finish_non_exhaustive()
    }
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

/// How long an idle upstream connection is kept for reuse.
const UPSTREAM_IDLE_TIME: Duration = Duration::from_secs(90);

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Whether a request header must not reach an upstream because only the gateway may say what
/// it says: the client's address, the scheme and host it used, the original URL or method, or
/// credentials. Whatever the browser sent under such a name is dropped, never trusted; the
/// gateway sets `Authorization`, `X-Forwarded-For/Proto/Host` and `Forwarded` itself.
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
fn forwarded_suffix(public_host: &str) -> Vec<u8> {
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
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
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

impl Proxy {
    /// A proxy over `tls` for https upstreams.
    pub fn new(config: &ProxyConfig, tls: rustls::ClientConfig) -> Self {
        // The origin is `https://host[:port]`, checked when the configuration was read.
        let public_host = config
            .public_origin
            .split_once("://")
            .map_or(config.public_origin.as_str(), |(_, host)| host)
            .to_owned();
        Self {
            routes: std::sync::RwLock::new(Arc::clone(&config.routes)),
            connector: upstream::Connector::new(tls, UPSTREAM_IDLE_TIME),
            upstream_timeout: config.upstream_timeout,
            max_request_body: config.max_request_body,
            public_origin: config.public_origin.clone(),
            tunnel_limits: config.tunnel_limits,
            public_host: HeaderValue::from_str(&public_host)
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            forwarded_suffix: forwarded_suffix(&public_host),
        }
    }

    /// Closes upstream connections idle for longer than they are kept. The gateway calls this
    /// periodically (every [`Proxy::IDLE_CHECK`]).
    pub fn close_idle_connections(&self) {
        let max_idle_time = self.connector.max_idle_time();
        for route in self.routes().iter() {
            for destination in route.cluster.destinations() {
                destination.connections.close_expired(max_idle_time);
            }
        }
    }

    /// How often [`Proxy::close_idle_connections`] runs.
    pub const IDLE_CHECK: Duration = Duration::from_secs(10);

    /// The routes in force (a snapshot: a reload does not disturb requests under way).
    fn routes(&self) -> Arc<Vec<RouteDef>> {
        Arc::clone(&self.routes.read_locked())
    }

    /// Replaces the routes (SIGHUP reload of the proxy configuration).
    pub fn replace_routes(&self, routes: Vec<RouteDef>) {
        *self.routes.write_locked() = Arc::new(routes);
    }

    /// The first route that takes this request, with its route values.
    pub fn route_for(&self, request: &Request<Incoming>) -> Option<RouteMatch> {
        let routes = self.routes();
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .or_else(|| {
                request
                    .uri()
                    .authority()
                    .map(|authority| authority.as_str())
            });
        let path = request.uri().path();
        let (index, values) = routes.iter().enumerate().find_map(|(index, route)| {
            route
                .matches(request.method(), host, path)
                .map(|values| (index, values))
        })?;
        Some(RouteMatch {
            routes,
            index,
            values,
        })
    }

    /// Forwards one request along the route [`Proxy::route_for`] found for it.
    pub async fn forward(
        &self,
        mut request: Request<Incoming>,
        matched: &RouteMatch,
        peer: SocketAddr,
        hold: &ConnectionHold,
        auth: &Auth,
        refresher: &Refresher,
    ) -> Result<Response<Body>, HttpError> {
        let route = matched.route();
        let values = &matched.values;
        // Only a WebSocket handshake (GET, `Upgrade: websocket`) on a route that allows it
        // becomes a tunnel; any other `Upgrade` (`h2c`, …) is dropped as the hop-by-hop header
        // it is, and the request goes upstream as a plain one.
        let upgrade = (route.websockets && is_websocket_handshake(&request))
            .then(|| HeaderValue::from_static("websocket"));

        // Session and CSRF checks come before any byte goes upstream; the CSRF check (or, for
        // an upgrade, the Origin check) before the session lookup, so that a refused request
        // neither reads the store nor slides the session's idle timeout.
        let mut session_tag = None;
        let bearer = if route.anonymous {
            None
        } else {
            if upgrade.is_some() {
                // A browser cannot add a header to a WebSocket handshake, but it always sends
                // the page's Origin: a cross-site page cannot open a socket with the session.
                let origin = request.headers().get(header::ORIGIN);
                if origin.is_none_or(|origin| origin.as_bytes() != self.public_origin.as_bytes()) {
                    return Err(HttpError::client(
                        StatusCode::FORBIDDEN,
                        "upgrade requests must come from the application's origin",
                    )
                    .json());
                }
            } else {
                require_csrf_header(request.headers())?;
            }
            let lookup = auth.lookup(request.headers(), Activity::Use).await?;
            let Some(session) = lookup.session else {
                return Err(HttpError::client(StatusCode::UNAUTHORIZED, "no session").json());
            };
            let session = match refresher.fresh(session).await {
                Ok(Some(session)) => session,
                Ok(None) => {
                    return Err(HttpError::client(StatusCode::UNAUTHORIZED, "session ended").json());
                }
                // The token expired and the provider cannot refresh it now: 503, session kept.
                Err(error) => return Err(error.into()),
            };
            session_tag = Some(session.id);
            Some(session.ticket.tokens.access_token.bearer())
        };
        if request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<usize>().ok())
            .is_some_and(|length| length > self.max_request_body)
        {
            return Err(
                HttpError::client(StatusCode::PAYLOAD_TOO_LARGE, "request body too large").json(),
            );
        }

        let cluster = &route.cluster;
        let (destination, _in_flight) = cluster.pick();
        let path = Transform::rewrite_path(&route.transforms, request.uri().path(), values);
        let upstream_uri = destination
            .uri_for(&path, request.uri().query())
            .map_err(|_| {
                HttpError::client(StatusCode::BAD_REQUEST, "invalid request target").json()
            })?;
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
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
        remove_gateway_cookies(headers, auth);
        // Configured header transforms first, so that what the gateway guarantees (bearer,
        // forwarding headers) always has the last word.
        let mut keep_original_host = false;
        for transform in &route.transforms {
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
        match bearer {
            Some(bearer) => headers.insert(header::AUTHORIZATION, bearer),
            None => headers.remove(header::AUTHORIZATION),
        };
        let address = address_header(peer.ip());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        // The public URL's host, never the browser's `Host`: a client can send any `Host`
        // (`evil.example`), and upstreams build links and redirects from this header.
        headers.insert(X_FORWARDED_HOST, self.public_host.clone());
        if let Some(address) = address {
            if let Some(value) = forwarded_header(peer.ip(), &address, &self.forwarded_suffix) {
                headers.insert(header::FORWARDED, value);
            }
            headers.insert(X_FORWARDED_FOR, address);
        }
        if keep_original_host && let Some(host) = original_host {
            headers.insert(header::HOST, host);
        }
        if let Some(protocol) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        parts.uri = upstream_uri;
        parts.version = http::Version::HTTP_11;

        let limited: Body = Limited::new(body, self.max_request_body)
            .map_err(|error| -> BoxError { error })
            .boxed();
        let upstream_request = Request::from_parts(parts, limited);
        let host = destination.url.host_str().unwrap_or("?");
        let timeout = cluster.timeout.unwrap_or(self.upstream_timeout);
        // The exchange is built inside the `timeout` call: bound to a local first, it would take
        // room in this future twice (the local and the timeout's copy).
        let mut response = match tokio::time::timeout(
            timeout,
            self.connector.send(
                &destination.address,
                &destination.connections,
                upstream_request,
            ),
        )
        .await
        {
            Err(_) => {
                cluster.mark_failed(destination);
                return Err(HttpError::provider(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the upstream did not answer in time",
                    format!(
                        "route {} upstream {host} ({}) timed out after {timeout:?}",
                        route.id, destination.name
                    ),
                )
                .json());
            }
            Ok(Err(error)) => {
                cluster.mark_failed(destination);
                return Err(HttpError::provider(
                    StatusCode::BAD_GATEWAY,
                    "the upstream could not be reached",
                    format!(
                        "route {} upstream {host} ({}): {}",
                        route.id,
                        destination.name,
                        crate::describe::error_chain(&error)
                    ),
                )
                .json());
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        if response.status() == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_none() {
            // The upstream switched protocols on a request that asked for no switch: nothing
            // the browser could be handed.
            return Err(HttpError::provider(
                StatusCode::BAD_GATEWAY,
                "the upstream could not be reached",
                format!("route {} upstream {host}: 101 to a plain request", route.id),
            )
            .json());
        }
        if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) =
            (client_upgrade, response.status())
        {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let session = session_tag.map(|id| tunnel::TunnelSession {
                id,
                tickets: Arc::clone(auth.tickets()),
            });
            tokio::spawn(tunnel::run(
                client_upgrade,
                upstream_upgrade,
                self.tunnel_limits,
                session,
                hold.clone(),
                host.to_owned(),
            ));
            let (mut parts, _) = response.into_parts();
            let protocol = parts.headers.get(header::UPGRADE).cloned();
            strip_hop_by_hop(&mut parts.headers);
            drop_gateway_set_cookies(&mut parts.headers, auth);
            Transform::rewrite_response(&route.transforms, status, &mut parts.headers);
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(protocol) = protocol {
                parts.headers.insert(header::UPGRADE, protocol);
            }
            parts.extensions.insert(crate::access_log::AccessInfo {
                route: Some(route.id.clone()),
                upstream: Some(destination.label.clone()),
                session: session_tag,
            });
            return Ok(Response::from_parts(
                parts,
                crate::reply::full(bytes::Bytes::new()),
            ));
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Transform::rewrite_response(&route.transforms, status, &mut parts.headers);
        drop_gateway_set_cookies(&mut parts.headers, auth);
        if crate::access_log::enabled() {
            parts.extensions.insert(crate::access_log::AccessInfo {
                route: Some(route.id.clone()),
                upstream: Some(destination.label.clone()),
                session: session_tag,
            });
        }
        Ok(Response::from_parts(parts, body))
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

/// Whether a request is a WebSocket opening handshake (RFC 6455 §4.1): a GET with
/// `Connection: upgrade` and `Upgrade: websocket`.
fn is_websocket_handshake<B>(request: &Request<B>) -> bool {
    let tokens = |name: header::HeaderName, wanted: &str| {
        request
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case(wanted))
    };
    request.method() == http::Method::GET
        && request.version() == http::Version::HTTP_11
        && tokens(header::CONNECTION, "upgrade")
        && tokens(header::UPGRADE, "websocket")
}

/// Removes the gateway's own cookies from the `Cookie` header, keeping the others.
fn remove_gateway_cookies(headers: &mut HeaderMap, auth: &Auth) {
    let mut own = false;
    let mut kept: Vec<String> = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        // A header that is not valid text cannot be split safely: it is dropped.
        let Ok(line) = value.to_str() else {
            own = true;
            continue;
        };
        for pair in line
            .split(';')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
        {
            if auth
                .cookie()
                .is_own(pair.split('=').next().unwrap_or_default().trim())
            {
                own = true;
            } else {
                kept.push(pair.to_owned());
            }
        }
    }
    if !own {
        return;
    }
    headers.remove(header::COOKIE);
    if let Some(value) = (!kept.is_empty())
        .then(|| HeaderValue::from_str(&kept.join("; ")).ok())
        .flatten()
    {
        headers.insert(header::COOKIE, value);
    }
}

/// Drops an upstream's `Set-Cookie` for the gateway's own cookie names (an upstream must not be
/// able to replace or delete the session), and every one that browsers could read as one: a
/// cookie without a name (`=__Host-bff=x` or `__Host-bff` alone is stored with an empty name
/// and sent back as `__Host-bff=x`), or one whose value starts with a gateway cookie's name.
fn drop_gateway_set_cookies(headers: &mut HeaderMap, auth: &Auth) {
    let own = |value: &HeaderValue| {
        let Ok(text) = value.to_str() else {
            return true;
        };
        let pair = text.split(';').next().unwrap_or_default();
        let Some((name, value)) = pair.split_once('=') else {
            return true;
        };
        let (name, value) = (name.trim(), value.trim().trim_start_matches('"'));
        name.is_empty() || auth.cookie().is_own(name) || auth.cookie().starts_with_own(value)
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
    fn routes_parse_and_reject_bad_values() {
        let spec = parse_route("/api/OtherApi1=http://127.0.0.1:7002,http://127.0.0.1:7003/v1")
            .expect("route");
        assert_eq!(spec.prefix, "/api/OtherApi1");
        assert_eq!(spec.destinations.len(), 2);
        assert_eq!(
            parse_route("/api/x/=http://h").expect("route").prefix,
            "/api/x"
        );
        for bad in [
            "api=http://h",
            "/api",
            "/api=ftp://h",
            "/api=http://h?x=1",
            "/a/../b=http://h",
            "/api=not a url",
        ] {
            assert!(parse_route(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flag_routes_match_whole_segments_and_drop_the_prefix() {
        let route = route_from_flag(&parse_route("/api/OtherApi1=http://h").expect("route"));
        let rewrite = |path: &str| {
            route.matches(&http::Method::GET, None, path).map(|values| {
                Transform::rewrite_path(&route.transforms, path, &values).into_owned()
            })
        };
        assert_eq!(
            rewrite("/api/OtherApi1/products").as_deref(),
            Some("/products")
        );
        assert_eq!(rewrite("/api/OtherApi1").as_deref(), Some(""));
        assert_eq!(rewrite("/api/OtherApi10"), None);
        assert_eq!(rewrite("/api/OtherApi"), None);
    }

    #[test]
    fn the_destination_base_path_is_kept_and_the_query_passed() {
        let join = |destination: &str, rest: &str| {
            Destination::new("d".into(), Url::parse(destination).expect("url"))
                .uri_for(rest, Some("x=1"))
                .expect("uri")
                .to_string()
        };
        assert_eq!(join("http://h:7002", "/products"), "/products?x=1");
        assert_eq!(join("http://h:7002/v1", "/products"), "/v1/products?x=1");
        assert_eq!(join("http://h:7002/v1/", "/products"), "/v1/products?x=1");
        assert_eq!(join("http://h:7002", ""), "/?x=1");
        assert_eq!(join("http://h:7002/v1", ""), "/v1?x=1");
        assert_eq!(join("https://[::1]:8443", "/a"), "/a?x=1");
    }

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
