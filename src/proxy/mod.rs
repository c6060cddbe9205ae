//! The token-relay reverse proxy: finds the route for a request, and forwards a request the
//! gateway's pipeline has admitted (`crate::pipeline`: path, session, CSRF) to the route's
//! upstream with the session's access token in `Authorization: Bearer`, streaming the bodies
//! over pooled keep-alive connections.
//!
//! Its parts: `route` (templates, clusters, transforms), `config` (the flags and files routes
//! come from), `headers` (what may cross in each direction), `tunnel` (WebSocket upgrades),
//! `upstream` (hyper's client connections, one pool per destination), `yarp` (the YARP file).
//!
//! Path tricks, TRACE/TRACK/CONNECT and the session checks are the pipeline's: by the time a
//! request reaches [`Proxy::forward`] its path is normal and its credentials are known.

mod config;
mod headers;
mod route;
mod tunnel;
mod upstream;
pub mod yarp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::cookies::CookieConfig;
use crate::error::{HttpError, RequestError, UpstreamFailure};
use crate::policy::Policies;
use crate::reply::{Body, BoxError};
use crate::session::SessionId;
use crate::sync::RwLocked;
use crate::tickets::TicketStore;

pub use config::{
    ProxyConfig, RoutePiece, RouteSpec, client_scope, frontend_route, group_routes, parse_route,
    parse_route_piece, route_from_flag,
};
pub use route::{
    Access, Cluster, Destination, HostPattern, Policy, RouteDef, RouteValues, Template, TokenType,
    Transform, When, sort_routes,
};
pub use tunnel::{ConnectionHold, TunnelLimits, is_websocket_handshake};

/// How long an idle upstream connection is kept for reuse.
const UPSTREAM_IDLE_TIME: Duration = Duration::from_secs(90);

/// What a request that passed the session checks carries upstream.
#[derive(Debug)]
pub struct Credentials {
    /// `Bearer <access token>`; none on routes that send no token.
    pub bearer: Option<HeaderValue>,
    /// The session, for the access log and for closing its tunnels when it ends; none when
    /// the gateway's own token goes.
    pub session: Option<SessionId>,
    /// `X-Auth-Request-*` headers, on routes that send them.
    pub identity: Vec<(http::HeaderName, HeaderValue)>,
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
    /// Every authorization policy in force (replaced with the routes).
    policies: std::sync::RwLock<Arc<Policies>>,
    connector: upstream::Connector,
    upstream_timeout: Duration,
    max_request_body: usize,
    tunnel_limits: TunnelLimits,
    /// The public URL's `host[:port]`, for `X-Forwarded-Host`.
    public_host: HeaderValue,
    /// The end of every `Forwarded` value (`headers::forwarded_suffix`).
    forwarded_suffix: Vec<u8>,
    /// The gateway's cookies, which never go upstream and which no upstream may set.
    cookie: CookieConfig,
    /// Where a tunnel's session is watched for its end.
    tickets: Arc<TicketStore>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("routes", &self.routes().len())
            .finish_non_exhaustive()
    }
}

/// The connection a call comes in on: the peer's address (for the forwarding headers) and the
/// hold a WebSocket tunnel made from the call keeps.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The browser's address.
    pub peer: SocketAddr,
    /// The connection's slot and shutdown signal.
    pub hold: &'a ConnectionHold,
}

impl Proxy {
    /// A proxy over `tls` for https upstreams that keeps the gateway's `cookie` to itself.
    pub fn new(
        config: &ProxyConfig,
        tls: rustls::ClientConfig,
        cookie: CookieConfig,
        tickets: Arc<TicketStore>,
    ) -> Self {
        // The origin is `https://host[:port]`, checked when the configuration was read.
        let public_host = config
            .public_origin
            .split_once("://")
            .map_or(config.public_origin.as_str(), |(_, host)| host)
            .to_owned();
        Self {
            routes: std::sync::RwLock::new(Arc::clone(&config.routes)),
            policies: std::sync::RwLock::new(Arc::clone(&config.policies)),
            connector: upstream::Connector::new(tls, UPSTREAM_IDLE_TIME),
            upstream_timeout: config.upstream_timeout,
            max_request_body: config.max_request_body,
            tunnel_limits: config.tunnel_limits,
            public_host: HeaderValue::from_str(&public_host)
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            forwarded_suffix: headers::forwarded_suffix(&public_host),
            cookie,
            tickets,
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

    /// Replaces the routes and the policies (SIGHUP reload of the proxy configuration).
    pub fn replace_routes(&self, routes: Vec<RouteDef>, policies: Policies) {
        *self.routes.write_locked() = Arc::new(routes);
        *self.policies.write_locked() = Arc::new(policies);
    }

    /// Every authorization policy in force.
    pub fn policies(&self) -> Arc<Policies> {
        Arc::clone(&self.policies.read_locked())
    }

    /// Every route's resource indicator (RFC 8707), each once, in route order.
    pub fn resources(&self) -> Vec<String> {
        let mut resources: Vec<String> = Vec::new();
        for route in self.routes().iter() {
            if let Some(resource) = &route.access.resource
                && !resources.contains(resource)
            {
                resources.push(resource.clone());
            }
        }
        resources
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

    /// Forwards a request along the route [`Proxy::route_for`] found for it, with the
    /// `credentials` the pipeline found (none on anonymous routes). `websocket`: the request
    /// is a handshake ([`is_websocket_handshake`]) on a route that allows tunnels.
    pub async fn forward(
        &self,
        mut request: Request<Incoming>,
        matched: &RouteMatch,
        websocket: bool,
        credentials: Option<Credentials>,
        caller: Caller<'_>,
        logged: &mut crate::access_log::AccessInfo,
    ) -> Result<Response<Body>, HttpError> {
        let Caller { peer, hold } = caller;
        let route = matched.route();
        if request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<usize>().ok())
            .is_some_and(|length| length > self.max_request_body)
        {
            return Err(RequestError::BodyTooLarge.into());
        }
        let cluster = &route.cluster;
        let (destination, _in_flight) = cluster.pick();
        let path =
            Transform::rewrite_path(&route.transforms, request.uri().path(), &matched.values);
        let upstream_uri = destination
            .uri_for(&path, request.uri().query())
            .map_err(|_| RequestError::BadTarget)?;
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut request));
        let (session, bearer, identity) = match credentials {
            Some(credentials) => (
                credentials.session,
                credentials.bearer,
                credentials.identity,
            ),
            None => (None, None, Vec::new()),
        };
        let (mut parts, body) = request.into_parts();
        headers::to_upstream(
            &mut parts,
            headers::Forwarding {
                bearer,
                identity,
                peer: peer.ip(),
                public_host: &self.public_host,
                forwarded_suffix: &self.forwarded_suffix,
                transforms: &route.transforms,
                cookie: &self.cookie,
                websocket,
            },
        );
        parts.uri = upstream_uri;
        parts.version = http::Version::HTTP_11;
        let limited: Body = Limited::new(body, self.max_request_body)
            .map_err(|error| -> BoxError { error })
            .boxed();
        let upstream_request = Request::from_parts(parts, limited);
        let host = destination.url.host_str().unwrap_or("?");
        let timeout = cluster.timeout.unwrap_or(self.upstream_timeout);
        let upstream = || format!("{host} ({})", destination.name);
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
                return Err(UpstreamFailure::TimedOut {
                    route: route.id.to_string(),
                    upstream: upstream(),
                    after: timeout,
                }
                .into());
            }
            Ok(Err(error)) => {
                cluster.mark_failed(destination);
                return Err(UpstreamFailure::Unreachable {
                    route: route.id.to_string(),
                    upstream: upstream(),
                    source: Box::new(error),
                }
                .into());
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let switched = status == StatusCode::SWITCHING_PROTOCOLS;
        let client_upgrade = match (client_upgrade, switched) {
            // The upstream switched protocols on a request that asked for no switch: nothing
            // the browser could be handed.
            (None, true) => {
                return Err(UpstreamFailure::UnexpectedSwitch {
                    route: route.id.to_string(),
                    upstream: host.to_owned(),
                }
                .into());
            }
            (Some(client_upgrade), true) => Some(client_upgrade),
            _ => None,
        };
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let tunnel_session = session.map(|id| tunnel::TunnelSession {
                id,
                tickets: Arc::clone(&self.tickets),
            });
            tokio::spawn(tunnel::run(
                client_upgrade,
                upstream_upgrade,
                self.tunnel_limits,
                tunnel_session,
                hold.clone(),
                host.to_owned(),
            ));
        }
        let (mut parts, body) = response.into_parts();
        let protocol = parts.headers.get(header::UPGRADE).cloned();
        headers::from_upstream(
            &mut parts.headers,
            status.as_u16(),
            &route.transforms,
            &self.cookie,
        );
        if switched {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(protocol) = protocol {
                parts.headers.insert(header::UPGRADE, protocol);
            }
        }
        if crate::access_log::enabled() {
            *logged = crate::access_log::AccessInfo {
                route: Some(route.id.clone()),
                upstream: Some(destination.label.clone()),
                session,
            };
        }
        let body = if switched {
            crate::reply::full(bytes::Bytes::new())
        } else {
            body
        };
        Ok(Response::from_parts(parts, body))
    }
}
