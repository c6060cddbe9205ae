//! The one request pipeline. Every request is
//! 1. **classified** once ([`Gateway::classify`]): its path put in normal form, then which of
//!    the gateway's own endpoints, proxy routes or the SPA takes it;
//! 2. **admitted** ([`Gateway::admit`]): the checks every request passes before any handler
//!    runs (target and header sizes, methods no endpoint takes, bodies where none belongs);
//! 3. **authenticated** when its route needs a session ([`Gateway::authenticate`]): the CSRF
//!    header (or the Origin of a WebSocket handshake), the session, a fresh access token;
//! 4. **dispatched** to an own endpoint (`auth`), the proxy (`proxy`) or the app's files
//!    (`spa`);
//!
//! and then logged and counted. Errors become responses in one place (`error`'s table).
//! (The callback path is a flag, `config.rs`; the SPA's fallback rules are `spa.rs`'s.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONTENT_LENGTH, HeaderName, HeaderValue, ORIGIN, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::auth::{Auth, require_csrf_header};
use crate::client_tokens::ClientTokens;
use crate::error::{AuthError, BackchannelError, HttpError, RequestError};
use crate::metrics::{Metrics, UpstreamError};
use crate::oidc::Provider;
use crate::path::{PathError, normalize};
use crate::policy::Claims;
use crate::proxy::{Access, ConnectionHold, Credentials, Proxy, RouteDef, RouteMatch, TokenType};
use crate::refresh::Refresher;
use crate::reply::{self, Body, add_security_headers};
use crate::spa::Spa;
use crate::tickets::Activity;

/// Where the provider posts logout tokens (register public URL + this path).
pub(crate) const BACKCHANNEL_LOGOUT: &str = "/backchannel-logout";

/// Largest logout-token form accepted.
const MAX_LOGOUT_FORM: usize = 64 * 1024;

/// What the gateway's proxy forwards: every method but TRACE, TRACK and CONNECT.
const PROXIED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Everything a request can reach.
#[derive(Debug)]
pub(crate) struct Gateway {
    /// Sign-in and sign-out handlers.
    pub(crate) auth: Auth,
    /// The provider client (for readiness).
    pub(crate) provider: Arc<Provider>,
    /// On-demand refresh for proxied calls.
    pub(crate) refresher: Arc<Refresher>,
    /// The gateway's own client-credentials tokens.
    pub(crate) client_tokens: Arc<ClientTokens>,
    /// The token-relay proxy.
    pub(crate) proxy: Arc<Proxy>,
    /// The SPA's files, when served.
    pub(crate) spa: Option<Spa>,
    /// Back-channel logout token checks.
    pub(crate) logout: crate::logout::LogoutVerifier,
    /// The configured callback path.
    pub(crate) callback_path: String,
    /// The gateway's public origin: the only `Origin` accepted for WebSocket handshakes.
    pub(crate) public_origin: String,
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

/// The gateway's own endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Own {
    IsAuth,
    User,
    Login,
    Logout,
    Healthz,
    BackchannelLogout,
    Callback,
}

impl Own {
    /// The endpoint's name in the metrics.
    fn name(self) -> &'static str {
        match self {
            Self::IsAuth => "isAuth",
            Self::User => "user",
            Self::Login => "login",
            Self::Logout => "logout",
            Self::Healthz => "healthz",
            Self::BackchannelLogout => "backchannel-logout",
            Self::Callback => "callback",
        }
    }
}

/// What a request is for, decided once per request: it picks the handler and names the
/// request in the metrics.
enum Endpoint {
    /// One of the gateway's own endpoints.
    Own(Own),
    /// A proxy route, matched once. `websocket`: a handshake the route lets become a tunnel.
    Route {
        matched: RouteMatch,
        websocket: bool,
    },
    /// A path trick (`..`, `%2f`, `//`, `;`, `%252e`, …), refused before any route is chosen.
    BadPath(PathError),
    /// Anything else: the SPA's files, or 404 without one.
    Rest,
}

impl Gateway {
    /// Answers one request. Never panics and never fails: errors become responses here.
    pub(crate) async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        hold: &ConnectionHold,
    ) -> Response<Body> {
        let started = tokio::time::Instant::now();
        let method = request.method().clone();
        // The target as sent (shared, not copied), when the access log is on; only its path is
        // logged: queries carry codes and states, which never go to a log.
        let logged_target = crate::access_log::enabled().then(|| request.uri().clone());
        let mut request = request;
        let endpoint = self.classify(&mut request);
        // What the handlers tell the access log beyond method, path and status.
        let mut logged = crate::access_log::AccessInfo::default();
        let result = match self.admit(&request, &endpoint) {
            Ok(()) => {
                self.dispatch(request, peer, hold, &endpoint, &mut logged)
                    .await
            }
            Err(error) => Err(error),
        };
        // `Some` when the gateway answered with an error; inside, the upstream error it counts
        // as, if any.
        let (mut response, failure) = match result {
            Ok(response) => (response, None),
            Err(error) => {
                let metric = error.upstream_metric();
                (error.into_response(), Some(metric))
            }
        };
        add_security_headers(&mut response);
        // An upstream's answer is its own; everything the gateway wrote, and the app's files,
        // refuse to be framed.
        if failure.is_some() || !matches!(endpoint, Endpoint::Route { .. }) {
            self.framing.apply(&mut response);
        }
        let status = response.status();
        let elapsed = started.elapsed();
        if let Some(target) = &logged_target {
            crate::access_log::log(&crate::access_log::Entry {
                method: &method,
                path: target.path(),
                status: status.as_u16(),
                latency: elapsed,
                info: &logged,
            });
        }
        self.count(&endpoint, status, elapsed, failure.flatten());
        response
    }

    /// Step 1: puts the path in normal form ([`normalize_target`]) and finds what the request
    /// is for.
    fn classify(&self, request: &mut Request<Incoming>) -> Endpoint {
        if let Err(error) = normalize_target(request) {
            return Endpoint::BadPath(error);
        }
        let path = request.uri().path();
        let own = match path {
            "/api/isAuth" => Some(Own::IsAuth),
            "/api/user" => Some(Own::User),
            "/login" => Some(Own::Login),
            "/logout" => Some(Own::Logout),
            "/healthz" => Some(Own::Healthz),
            BACKCHANNEL_LOGOUT => Some(Own::BackchannelLogout),
            _ if path == self.callback_path => Some(Own::Callback),
            _ => None,
        };
        if let Some(own) = own {
            return Endpoint::Own(own);
        }
        match self.proxy.route_for(request) {
            Some(matched) => {
                // Only a WebSocket handshake on a route that allows it becomes a tunnel; any
                // other `Upgrade` goes upstream as the plain request it also is.
                let websocket =
                    matched.route().websockets && crate::proxy::is_websocket_handshake(request);
                Endpoint::Route { matched, websocket }
            }
            None => Endpoint::Rest,
        }
    }

    /// Step 2: the checks every request passes before any handler runs.
    fn admit(&self, request: &Request<Incoming>, endpoint: &Endpoint) -> Result<(), HttpError> {
        let uri_len = request
            .uri()
            .path_and_query()
            .map_or(0, |path| path.as_str().len());
        if uri_len > self.max_uri_bytes {
            return Err(RequestError::TargetTooLong.into());
        }
        // The header fields' own limit (the read buffer also holds the target): name, value
        // and the `: ` and CRLF around them, as they came on the wire.
        let header_bytes: usize = request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if header_bytes > self.max_header_bytes {
            return Err(RequestError::HeadersTooLarge.into());
        }
        // TRACE (and Microsoft's TRACK) echo the request, bearer token included, when an
        // upstream answers them; CONNECT would open a tunnel. None is ever forwarded.
        let method = request.method();
        if method == Method::TRACE || method == Method::CONNECT || method.as_str() == "TRACK" {
            return Err(RequestError::MethodNotAllowed {
                allow: PROXIED_METHODS,
            }
            .into());
        }
        match endpoint {
            Endpoint::BadPath(error) => Err(RequestError::BadPath(*error).into()),
            Endpoint::Own(Own::BackchannelLogout) if method != Method::POST => {
                Err(RequestError::MethodNotAllowed { allow: "POST" }.into())
            }
            Endpoint::Own(Own::BackchannelLogout) => Ok(()),
            Endpoint::Own(_) if method != Method::GET => {
                Err(RequestError::MethodNotAllowed { allow: "GET" }.into())
            }
            // The gateway's own GET endpoints take no body. A GET with body framing is either
            // a broken client or a request-smuggling probe: refuse it and close the connection.
            Endpoint::Own(_)
                if request.headers().contains_key(TRANSFER_ENCODING)
                    || request
                        .headers()
                        .get(CONTENT_LENGTH)
                        .is_some_and(|length| length != "0") =>
            {
                Err(RequestError::UnexpectedBody.into())
            }
            _ => Ok(()),
        }
    }

    /// Step 3, for a proxy route: what of the user's its upstream gets, checked before any
    /// byte goes upstream. Whenever a user's token would be sent, the CSRF header (or, for a
    /// handshake, the Origin) is required, and checked before the session lookup, so that a
    /// refused request neither reads the store nor slides the session's idle timeout.
    async fn authenticate(
        &self,
        request: &Request<Incoming>,
        route: &RouteDef,
        websocket: bool,
    ) -> Result<Option<Credentials>, HttpError> {
        let access = &route.access;
        if !access.reads_session() {
            // Nothing of the user's goes: `token=none`, or the gateway's own token.
            return self.without_session(access).await;
        }
        let guard = if websocket {
            // A browser cannot add a header to a WebSocket handshake, but it always sends
            // the page's Origin: a cross-site page cannot open a socket with the session.
            let origin = request.headers().get(ORIGIN);
            if origin.is_none_or(|origin| origin.as_bytes() != self.public_origin.as_bytes()) {
                Err(HttpError::from(AuthError::ForeignOrigin))
            } else {
                Ok(())
            }
        } else {
            require_csrf_header(request.headers())
        };
        if let Err(refused) = guard {
            if access.needs_session() {
                return Err(refused);
            }
            // A route a caller may use signed out: one who is not signed in goes on as such;
            // a signed-in one would send the user's token or identity, and needs the header.
            let lookup = self.auth.lookup(request.headers(), Activity::Peek).await?;
            return match lookup.session {
                Some(_) => Err(refused),
                None => self.without_session(access).await,
            };
        }
        let lookup = self.auth.lookup(request.headers(), Activity::Use).await?;
        let Some(session) = lookup.session else {
            return if access.needs_session() {
                Err(AuthError::NoSession.into())
            } else {
                self.without_session(access).await
            };
        };
        // A token to send is made fresh first, so that the policy judges the token that goes
        // (a refresh can narrow its scope). It expired and the provider cannot refresh it
        // now: 503, session kept.
        // A route with a resource sends the session's token for that resource alone, never
        // the broad one, which then needs no refresh here.
        let session = if access.token.sends_user_token() && access.resource.is_none() {
            self.refresher
                .fresh(session)
                .await?
                .ok_or(AuthError::SessionEnded)?
        } else {
            session
        };
        let principal = self
            .auth
            .authorize(&session, access.policy.as_deref(), access.identity_headers)
            .await?;
        let identity = match (&principal, access.identity_headers) {
            (Some(principal), true) => identity_headers(&principal.claims),
            _ => Vec::new(),
        };
        let bearer = match (access.token, &access.resource) {
            (token, Some(resource)) if token.sends_user_token() => Some(
                self.refresher
                    .resource_bearer(session.clone(), resource)
                    .await?
                    .ok_or(AuthError::SessionEnded)?,
            ),
            (token, None) if token.sends_user_token() => {
                Some(session.ticket.tokens.access_token.bearer())
            }
            (TokenType::Client, _) => Some(self.client_bearer(access).await?),
            _ => None,
        };
        Ok(Some(Credentials {
            bearer,
            session: Some(session.id),
            identity,
        }))
    }

    /// The credentials of a call without a session: the gateway's own token on routes that
    /// send one, else none.
    async fn without_session(&self, access: &Access) -> Result<Option<Credentials>, HttpError> {
        if !access.token.sends_client_token() {
            return Ok(None);
        }
        Ok(Some(Credentials {
            bearer: Some(self.client_bearer(access).await?),
            session: None,
            identity: Vec::new(),
        }))
    }

    /// The gateway's own token for a route of `access`.
    async fn client_bearer(&self, access: &Access) -> Result<HeaderValue, HttpError> {
        self.client_tokens
            .bearer(access.client_scope.as_deref(), access.resource.as_deref())
            .await
            .map_err(|error| AuthError::ClientToken(error).into())
    }

    /// Step 4: the handler.
    async fn dispatch(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        hold: &ConnectionHold,
        endpoint: &Endpoint,
        logged: &mut crate::access_log::AccessInfo,
    ) -> Result<Response<Body>, HttpError> {
        match endpoint {
            Endpoint::Own(own) => self.own(*own, request, logged).await,
            Endpoint::Route { matched, websocket } => {
                let credentials = self
                    .authenticate(&request, matched.route(), *websocket)
                    .await?;
                self.proxy
                    .forward(
                        request,
                        matched,
                        *websocket,
                        credentials,
                        crate::proxy::Caller { peer, hold },
                        logged,
                    )
                    .await
            }
            Endpoint::Rest => match &self.spa {
                Some(spa) => {
                    Box::pin(spa.serve(request.method(), request.uri().path(), request.headers()))
                        .await
                }
                None => Err(RequestError::NotFound { json: false }.into()),
            },
            Endpoint::BadPath(error) => Err(RequestError::BadPath(*error).into()),
        }
    }

    /// The gateway's own endpoints.
    async fn own(
        &self,
        own: Own,
        request: Request<Incoming>,
        logged: &mut crate::access_log::AccessInfo,
    ) -> Result<Response<Body>, HttpError> {
        match own {
            Own::IsAuth => self.auth.is_auth(&request).await,
            Own::User => {
                self.auth
                    .user(&request, &self.proxy.policies(), logged)
                    .await
            }
            // Boxed: these talk to the provider, and their futures, kilobytes each, would
            // otherwise be reserved and moved in every request's future, proxied calls included.
            Own::Login => {
                let resources = self.proxy.resources();
                Box::pin(
                    self.auth
                        .login(&request, &self.proxy.policies(), &resources),
                )
                .await
            }
            Own::Logout => Box::pin(self.auth.logout(&request, logged)).await,
            Own::Callback => Box::pin(self.auth.callback(&request, &self.proxy.policies())).await,
            Own::BackchannelLogout => Box::pin(self.backchannel_logout(request)).await,
            Own::Healthz => Ok(self.health()),
        }
    }

    fn count(
        &self,
        endpoint: &Endpoint,
        status: StatusCode,
        elapsed: Duration,
        upstream_error: Option<UpstreamError>,
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
            Endpoint::Own(own) => {
                metrics.request(own.name(), status, elapsed);
                match own {
                    // The callback answers 302 with a session, or 400 and none.
                    Own::Callback => metrics.login(status.is_redirection()),
                    Own::BackchannelLogout => metrics.backchannel_logout(status == StatusCode::OK),
                    _ => {}
                }
            }
            Endpoint::Route { matched, .. } => {
                let route = matched.id();
                metrics.request(route, status, elapsed);
                // A 502 or 504 the upstream sent itself is its answer, passed through; only the
                // ones the gateway made count as upstream errors.
                if let Some(kind) = upstream_error {
                    metrics.upstream_error(route, kind);
                }
            }
        }
    }

    async fn backchannel_logout(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, HttpError> {
        let reading = Limited::new(request.into_body(), MAX_LOGOUT_FORM).collect();
        let form = tokio::time::timeout(self.body_timeout, reading)
            .await
            .map_err(|_| RequestError::BodyTooSlow)?
            .map_err(|_| BackchannelError::BrokenForm)?
            .to_bytes();
        crate::auth::backchannel_logout(&self.logout, self.auth.tickets(), &form).await
    }

    fn health(&self) -> Response<Body> {
        if !self.auth.tickets().is_up() {
            reply::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the session store does not answer",
            )
        } else if self.provider.is_ready() {
            reply::text(StatusCode::OK, "ok")
        } else {
            reply::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: provider discovery pending",
            )
        }
    }
}

/// The identity headers oauth2-proxy sends, from the user's claims: each only when its claim
/// is there and fits in a header (`X-Auth-Request-Groups`: the string groups, comma-joined).
fn identity_headers(claims: &Claims) -> Vec<(HeaderName, HeaderValue)> {
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let groups = claims.get("groups").and_then(|groups| match groups {
        serde_json::Value::Array(items) => Some(
            items
                .iter()
                .filter_map(serde_json::Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
        ),
        serde_json::Value::String(group) => Some(group.clone()),
        _ => None,
    });
    [
        ("x-auth-request-user", text("sub")),
        ("x-auth-request-email", text("email")),
        (
            "x-auth-request-preferred-username",
            text("preferred_username"),
        ),
        ("x-auth-request-groups", groups),
    ]
    .into_iter()
    .filter_map(|(name, value)| {
        let value = HeaderValue::from_str(&value?).ok()?;
        Some((HeaderName::from_static(name), value))
    })
    .collect()
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
