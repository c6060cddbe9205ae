//! `match (method, path)`: which of the gateway's own endpoints, proxy routes or the SPA takes a
//! request, and the checks every request passes before any handler runs. (The callback path is
//! a flag, `config.rs`; the SPA's fallback rules are `spa.rs`'s.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{ALLOW, CONTENT_LENGTH, HeaderValue, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::auth::Auth;
use crate::error::HttpError;
use crate::metrics::{Metrics, UpstreamError};
use crate::oidc::Provider;
use crate::path::{PathError, normalize};
use crate::proxy::{ConnectionHold, Proxy};
use crate::refresh::Refresher;
use crate::reply::{self, Body, add_security_headers};
use crate::spa::Spa;

/// Where the provider posts logout tokens (register public URL + this path).
pub const BACKCHANNEL_LOGOUT: &str = "/backchannel-logout";

/// Largest logout-token form accepted.
const MAX_LOGOUT_FORM: usize = 64 * 1024;

/// Everything a request can reach.
#[derive(Debug)]
pub struct Gateway {
    /// Sign-in and sign-out handlers.
    pub(crate) auth: Auth,
    /// The provider client (for readiness).
    pub(crate) provider: Arc<Provider>,
    /// On-demand refresh for proxied calls.
    pub(crate) refresher: Arc<Refresher>,
    /// The token-relay proxy.
    pub(crate) proxy: Proxy,
    /// The SPA's files, when served.
    pub(crate) spa: Option<Spa>,
    /// Back-channel logout token checks.
    pub(crate) logout: crate::logout::LogoutVerifier,
    /// The configured callback path.
    pub(crate) callback_path: String,
    /// Longest request target.
    pub(crate) max_uri_bytes: usize,
    /// Most header bytes in a request.
    pub(crate) max_header_bytes: usize,
    /// Time allowed to read a body the gateway reads itself (`--header-timeout`): a slow
    /// sender cannot hold a connection slot with a trickle.
    pub(crate) body_timeout: Duration,
    /// Request, login and upstream counters.
    pub(crate) metrics: Arc<Metrics>,
    /// Anti-framing and referrer headers for the gateway's own answers and the app's files.
    pub(crate) framing: crate::reply::Framing,
}

/// What a request is for, decided once per request: it picks the handler and names the
/// request in the metrics.
enum Endpoint {
    /// One of the gateway's own endpoints, by its metrics name.
    Own(&'static str),
    /// A proxy route, matched once: the handler forwards with this match.
    Route(crate::proxy::RouteMatch),
    /// A path trick (`..`, `%2f`, `//`, `;`, `%252e`, …), refused before any route is chosen.
    BadPath(PathError),
    /// Anything else: the SPA's files, or 404 without one.
    Rest,
}

impl Gateway {
    /// Answers one request. Never panics and never fails: errors become responses here.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        hold: &ConnectionHold,
    ) -> Response<Body> {
        let started = std::time::Instant::now();
        let method = request.method().clone();
        // The path only: queries carry codes and states, which never go to a log. Copied only
        // when the access log is on.
        let path = crate::access_log::enabled().then(|| request.uri().path().to_owned());
        let mut request = request;
        let endpoint = match normalize_target(&mut request) {
            Ok(()) => self.endpoint(&request),
            Err(error) => Endpoint::BadPath(error),
        };
        let (mut response, gateway_error) = match self.route(request, peer, hold, &endpoint).await {
            Ok(response) => (response, false),
            Err(error) => (error.into_response(), true),
        };
        add_security_headers(&mut response);
        // An upstream's answer is its own; everything the gateway wrote, and the app's files,
        // refuse to be framed.
        if gateway_error || !matches!(endpoint, Endpoint::Route(_)) {
            self.framing.apply(&mut response);
        }
        let info = response
            .extensions_mut()
            .remove::<crate::access_log::AccessInfo>()
            .unwrap_or_default();
        let status = response.status();
        let elapsed = started.elapsed();
        tracing::info!(
            target: "oidc_bff::access",
            method = %method,
            path = path.as_deref().unwrap_or("-"),
            status = status.as_u16(),
            latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            route = info.route.as_deref().unwrap_or("-"),
            upstream = info.upstream.as_deref().unwrap_or("-"),
            session = %info.session.map_or_else(|| "-".to_owned(), |id| id.to_string()),
        );
        self.count(&endpoint, status, elapsed, gateway_error);
        response
    }

    /// What a request is for, as the metrics name it (bounded: own endpoints, route ids). The
    /// request's path is already normal ([`normalize_target`]).
    fn endpoint(&self, request: &Request<Incoming>) -> Endpoint {
        let path = request.uri().path();
        let own = match path {
            "/api/isAuth" => Some("isAuth"),
            "/api/user" => Some("user"),
            "/login" => Some("login"),
            "/logout" => Some("logout"),
            "/healthz" => Some("healthz"),
            BACKCHANNEL_LOGOUT => Some("backchannel-logout"),
            _ if path == self.callback_path => Some("callback"),
            _ => None,
        };
        if let Some(name) = own {
            return Endpoint::Own(name);
        }
        self.proxy
            .route_for(request)
            .map_or(Endpoint::Rest, Endpoint::Route)
    }

    fn count(
        &self,
        endpoint: &Endpoint,
        status: StatusCode,
        elapsed: Duration,
        gateway_error: bool,
    ) {
        let metrics = &self.metrics;
        match endpoint {
            Endpoint::BadPath(_) | Endpoint::Rest => {
                let name = if self.spa.is_some() {
                    "static"
                } else {
                    "other"
                };
                metrics.request(name, status, elapsed);
            }
            Endpoint::Own(name) => {
                metrics.request(name, status, elapsed);
                match *name {
                    // The callback answers 302 with a session, or 400 and none.
                    "callback" => metrics.login(status.is_redirection()),
                    "backchannel-logout" => metrics.backchannel_logout(status == StatusCode::OK),
                    _ => {}
                }
            }
            Endpoint::Route(matched) => {
                let route = matched.id();
                metrics.request(route, status, elapsed);
                // A 502 or 504 the upstream sent itself is its answer, passed through; only the
                // ones the gateway made count as upstream errors.
                if gateway_error {
                    match status {
                        StatusCode::BAD_GATEWAY => {
                            metrics.upstream_error(route, UpstreamError::Unreachable);
                        }
                        StatusCode::GATEWAY_TIMEOUT => {
                            metrics.upstream_error(route, UpstreamError::Timeout);
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    async fn route(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        hold: &ConnectionHold,
        endpoint: &Endpoint,
    ) -> Result<Response<Body>, HttpError> {
        let uri_len = request
            .uri()
            .path_and_query()
            .map_or(0, |path| path.as_str().len());
        if uri_len > self.max_uri_bytes {
            return Err(HttpError::client(
                StatusCode::URI_TOO_LONG,
                "request target too long",
            ));
        }
        // The header fields' own limit (the read buffer also holds the target): name, value
        // and the `: ` and CRLF around them, as they came on the wire.
        let header_bytes: usize = request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if header_bytes > self.max_header_bytes {
            return Err(HttpError::client(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request header fields too large",
            )
            .close_connection());
        }
        // TRACE (and Microsoft's TRACK) echo the request, bearer token included, when an
        // upstream answers them; CONNECT would open a tunnel. None is ever forwarded.
        if request.method() == Method::TRACE
            || request.method() == Method::CONNECT
            || request.method().as_str() == "TRACK"
        {
            let mut response =
                HttpError::client(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
                    .into_response();
            response.headers_mut().insert(
                ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            return Ok(response);
        }
        let own = match endpoint {
            Endpoint::Own(name) => *name,
            Endpoint::BadPath(error) => {
                return Err(HttpError::client(StatusCode::BAD_REQUEST, error.message()).json());
            }
            Endpoint::Route(matched) => {
                return self
                    .proxy
                    .forward(request, matched, peer, hold, &self.auth, &self.refresher)
                    .await;
            }
            Endpoint::Rest => {
                return match &self.spa {
                    Some(spa) => {
                        Box::pin(spa.serve(
                            request.method(),
                            request.uri().path(),
                            request.headers(),
                        ))
                        .await
                    }
                    None => Err(HttpError::client(StatusCode::NOT_FOUND, "not found")),
                };
            }
        };
        if own == "backchannel-logout" {
            return Box::pin(self.backchannel_logout(request)).await;
        }
        if request.method() != Method::GET {
            let mut response =
                HttpError::client(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
                    .into_response();
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
            return Ok(response);
        }
        // The gateway's own endpoints take no body. A GET with body framing is either a broken
        // client or a request-smuggling probe: refuse it and close the connection.
        if request.headers().contains_key(TRANSFER_ENCODING)
            || request
                .headers()
                .get(CONTENT_LENGTH)
                .is_some_and(|length| length != "0")
        {
            return Err(
                HttpError::client(StatusCode::BAD_REQUEST, "unexpected request body")
                    .close_connection(),
            );
        }
        let request = &request;
        match own {
            "isAuth" => self.auth.is_auth(request).await,
            "user" => self.auth.user(request).await,
            // Boxed: these talk to the provider, and their futures, kilobytes each, would
            // otherwise be reserved and moved in every request's future, proxied calls included.
            "login" => Box::pin(self.auth.login(request)).await,
            "logout" => Box::pin(self.auth.logout(request)).await,
            "healthz" => Ok(self.health()),
            _ => Box::pin(self.auth.callback(request)).await,
        }
    }

    async fn backchannel_logout(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, HttpError> {
        if request.method() != Method::POST {
            let mut response =
                HttpError::client(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
                    .into_response();
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return Ok(response);
        }
        let reading = Limited::new(request.into_body(), MAX_LOGOUT_FORM).collect();
        let form = tokio::time::timeout(self.body_timeout, reading)
            .await
            .map_err(|_| {
                HttpError::client(StatusCode::REQUEST_TIMEOUT, "request body too slow")
                    .json()
                    .close_connection()
            })?
            .map_err(|_| {
                HttpError::client(StatusCode::BAD_REQUEST, "invalid_request")
                    .json()
                    .with_detail("logout form too large or broken off")
            })?
            .to_bytes();
        crate::auth::backchannel_logout(&self.logout, self.auth.tickets(), &form).await
    }

    fn health(&self) -> Response<Body> {
        if self.provider.is_ready() {
            reply::text(StatusCode::OK, "ok")
        } else {
            reply::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: provider discovery pending",
            )
        }
    }
}

/// Puts the request's path in its normal form ([`crate::path::normalize`]), so that the
/// endpoint choice, route matching, the path forwarded upstream and the static files all read
/// the same string. The request is left untouched when its path is refused.
fn normalize_target(request: &mut Request<Incoming>) -> Result<(), PathError> {
    let normal = match normalize(request.uri().path())? {
        std::borrow::Cow::Borrowed(_) => return Ok(()),
        std::borrow::Cow::Owned(normal) => normal,
    };
    let target = match request.uri().query() {
        Some(query) => format!("{normal}?{query}"),
        None => normal,
    };
    let mut parts = request.uri().clone().into_parts();
    // The normal form only holds characters the original target held, or unreserved ones.
    parts.path_and_query = Some(target.parse().map_err(|_| PathError::BadEscape)?);
    *request.uri_mut() = http::Uri::from_parts(parts).map_err(|_| PathError::BadEscape)?;
    Ok(())
}
