//! Every way a request can fail, by area, and the one table ([`HttpError::entry`]) that maps
//! each to its status, its public message, the body's format, its log level and its metric.
//!
//! - Client faults (400/401/403/404/405/408/413/414/431): logged at debug, since anyone can
//!   cause them.
//! - Provider and upstream faults (502/503/504): logged at warn, naming what failed.
//! - Internal faults (500): logged at error with the whole `source()` chain.
//!
//! Bodies carry only the fixed message of the table; never internal text, tokens or secrets.
//! The details (a provider's error code, an upstream's address and cause) go to the log only.

use std::time::Duration;

use http::header::{ALLOW, CONNECTION, HeaderValue, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::client_tokens::ClientTokenError;
use crate::describe::error_chain;
use crate::logout::LogoutTokenError;
use crate::metrics::UpstreamError;
use crate::oidc::OidcError;
use crate::path::PathError;
use crate::refresh::FreshnessError;
use crate::reply::{self, Body, BoxError};
use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The request itself: its framing, size, method, path or body.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Sessions and the checks that guard them.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The login callback.
    #[error(transparent)]
    Login(#[from] LoginError),
    /// A back-channel logout request.
    #[error(transparent)]
    Backchannel(#[from] BackchannelError),
    /// A proxied exchange the upstream did not complete.
    #[error(transparent)]
    Upstream(#[from] UpstreamFailure),
    /// The identity provider.
    #[error(transparent)]
    Provider(#[from] OidcError),
    /// The ticket store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An internal failure that is none of the above.
    #[error("{0}")]
    Internal(String),
}

/// The request is malformed or asks for something no endpoint offers.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.message())]
pub enum RequestError {
    /// The path and query are longer than `--max-uri-bytes`.
    TargetTooLong,
    /// The header fields are larger than `--max-header-bytes`.
    HeadersTooLarge,
    /// Both `Content-Length` and `Transfer-Encoding` (request smuggling).
    ConflictingFraming,
    /// A method the endpoint does not take; `allow` lists the ones it does.
    MethodNotAllowed {
        /// The `Allow` header's value.
        allow: &'static str,
    },
    /// A path trick (`..`, `%2f`, `//`, `;`, `%252e`, …).
    BadPath(PathError),
    /// Nothing serves this path (`json`: the caller is an API client).
    NotFound {
        /// Answer in JSON.
        json: bool,
    },
    /// A body on an endpoint that takes none.
    UnexpectedBody,
    /// The body did not arrive within `--header-timeout`.
    BodyTooSlow,
    /// The body is larger than `--max-request-body`.
    BodyTooLarge,
    /// The path cannot be written as an upstream target.
    BadTarget,
    /// A query parameter given twice (parameter pollution).
    RepeatedParameter,
}

/// A session is missing, or a check that guards one failed.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.message())]
pub enum AuthError {
    /// No live session.
    NoSession,
    /// The session ended while the request was served (its refresh was refused).
    SessionEnded,
    /// An API call without `X-CSRF: 1`.
    MissingCsrf,
    /// A WebSocket handshake from another origin.
    ForeignOrigin,
    /// `/login?returnUrl=` that is not a local path.
    BadReturnUrl,
    /// `/logout` without the session's logout id.
    WrongLogoutSid,
    /// The signed-in user does not satisfy the route's policy.
    #[error("policy {policy} refused the user")]
    Forbidden {
        /// The policy's name (public: the app may show it).
        policy: String,
    },
    /// The user satisfies the route's policy only after signing in again with `acr_values` or
    /// `max_age` (RFC 9470 step-up).
    #[error("policy {policy} needs a stronger or fresher sign-in")]
    StepUp {
        /// The policy's name.
        policy: String,
        /// What the new sign-in asks for.
        step_up: crate::policy::StepUp,
    },
    /// A `/login` parameter that is not passed on, or a bad value.
    #[error("{0}")]
    BadLoginParameter(String),
    /// The session's access token expired and the provider cannot refresh it now; the session
    /// is kept.
    #[error("the session's tokens could not be refreshed right now: {0}")]
    RefreshUnavailable(String),
    /// The route sends the gateway's own token, and none could be had.
    #[error("no client-credentials token: {0}")]
    ClientToken(crate::client_tokens::ClientTokenError),
    /// The route sends a token for its resource alone, and the provider refused one.
    #[error("the provider refused a token for resource {resource}: {reason}")]
    ResourceRefused {
        /// The resource indicator.
        resource: String,
        /// The provider's error code, or why none could be asked for.
        reason: String,
    },
}

/// The login callback's query does not complete a login this browser started.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.message())]
pub enum LoginError {
    /// No `state`.
    NoState,
    /// A `state` no pending login of this browser has.
    UnknownLogin,
    /// The provider answered with `error=`.
    #[error("provider error {code:?}")]
    ProviderRefused {
        /// The provider's error code.
        code: String,
    },
    /// `iss` names another issuer (mix-up).
    UnexpectedIssuer,
    /// `iss` missing although the provider promised it.
    MissingIssuer,
    /// No `code`.
    NoCode,
}

/// A back-channel logout request that ends nothing.
#[derive(Debug, thiserror::Error)]
pub enum BackchannelError {
    /// The form is too large or broke off.
    #[error("logout form too large or broken off")]
    BrokenForm,
    /// Not exactly one `logout_token` field.
    #[error("exactly one logout_token form field is required")]
    FieldCount,
    /// The token failed verification.
    #[error(transparent)]
    Invalid(#[from] LogoutTokenError),
    /// The token's `jti` was seen before.
    #[error("logout token replayed")]
    Replayed,
}

/// A proxied exchange the upstream did not complete. Each names the route and the upstream
/// for the log.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamFailure {
    /// No answer within the route's timeout.
    #[error("route {route} upstream {upstream} timed out after {after:?}")]
    TimedOut {
        /// The route's id.
        route: String,
        /// The upstream's host and destination name.
        upstream: String,
        /// The timeout.
        after: Duration,
    },
    /// No connection, or the exchange broke.
    #[error("route {route} upstream {upstream}")]
    Unreachable {
        /// The route's id.
        route: String,
        /// The upstream's host and destination name.
        upstream: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// `101 Switching Protocols` to a request that asked for no switch.
    #[error("route {route} upstream {upstream}: 101 to a plain request")]
    UnexpectedSwitch {
        /// The route's id.
        route: String,
        /// The upstream's host.
        upstream: String,
    },
}

impl RequestError {
    /// The public message: the body's text, and the log's unless a variant says more.
    pub fn message(&self) -> &'static str {
        match self {
            Self::TargetTooLong => "request target too long",
            Self::HeadersTooLarge => "request header fields too large",
            Self::ConflictingFraming => "both content-length and transfer-encoding",
            Self::MethodNotAllowed { .. } => "method not allowed",
            Self::BadPath(error) => error.message(),
            Self::NotFound { .. } => "not found",
            Self::UnexpectedBody => "unexpected request body",
            Self::BodyTooSlow => "request body too slow",
            Self::BodyTooLarge => "request body too large",
            Self::BadTarget => "invalid request target",
            Self::RepeatedParameter => "repeated query parameter",
        }
    }
}

impl AuthError {
    /// The public message: the body's text, and the log's unless a variant says more.
    pub fn message(&self) -> &'static str {
        match self {
            Self::NoSession => "no session",
            Self::SessionEnded => "session ended",
            Self::MissingCsrf => "missing X-CSRF: 1 header",
            Self::ForeignOrigin => "upgrade requests must come from the application's origin",
            Self::BadReturnUrl => "returnUrl must be a local path such as /orders",
            Self::WrongLogoutSid => "logout requires the sid from /api/user",
            Self::Forbidden { .. } => "forbidden",
            Self::StepUp { .. } => "insufficient_user_authentication",
            Self::BadLoginParameter(_) => "invalid login parameter",
            Self::RefreshUnavailable(_) => "the session's tokens could not be refreshed right now",
            Self::ClientToken(ClientTokenError::Unavailable(_)) => {
                "a token for this API could not be obtained right now"
            }
            Self::ClientToken(ClientTokenError::Refused(_)) | Self::ResourceRefused { .. } => {
                "the identity provider refused a token for this API"
            }
        }
    }
}

impl LoginError {
    /// The public message: the body's text, and the log's unless a variant says more.
    pub fn message(&self) -> &'static str {
        match self {
            Self::NoState => "invalid login response: no state",
            Self::UnknownLogin => {
                "login not recognised: it expired, was already used, or began in another browser"
            }
            Self::ProviderRefused { .. } => "the provider did not sign you in",
            Self::UnexpectedIssuer => "login response from an unexpected issuer",
            Self::MissingIssuer => "login response without the issuer parameter",
            Self::NoCode => "invalid login response: no code",
        }
    }
}

impl From<FreshnessError> for HttpError {
    fn from(error: FreshnessError) -> Self {
        match error {
            FreshnessError::Store(error) => error.into(),
            FreshnessError::ProviderUnavailable(detail) => {
                AuthError::RefreshUnavailable(detail).into()
            }
            FreshnessError::ResourceRefused { resource, reason } => {
                AuthError::ResourceRefused { resource, reason }.into()
            }
        }
    }
}

/// Whose fault an error is; decides the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The request was wrong.
    Client,
    /// The provider (or an upstream) failed.
    Provider,
    /// The gateway itself failed.
    Internal,
}

/// How the body is written: plain text for browser navigations, JSON for API calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain`.
    Plain,
    /// `application/json` as `{"error": "..."}`.
    Json,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The response's status.
    pub status: StatusCode,
    /// The body's message: fixed, public, never a detail.
    pub message: &'static str,
    /// Whose fault: the log level.
    pub blame: Blame,
    /// The body's format.
    pub format: Format,
    /// Close the connection after the answer (framing errors, slow bodies).
    pub close: bool,
}

impl Entry {
    const fn new(status: StatusCode, message: &'static str, blame: Blame, format: Format) -> Self {
        Self {
            status,
            message,
            blame,
            format,
            close: false,
        }
    }

    const fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

impl HttpError {
    /// The table: every error's status, message, log level, format and connection fate.
    pub fn entry(&self) -> Entry {
        use Blame::{Client, Internal, Provider};
        use Format::{Json, Plain};
        const LOGIN_FAILED: &str = "login failed";
        let row = Entry::new;
        match self {
            Self::Request(error) => {
                let (status, format) = match error {
                    RequestError::TargetTooLong => (StatusCode::URI_TOO_LONG, Plain),
                    RequestError::HeadersTooLarge => {
                        (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, Plain)
                    }
                    RequestError::ConflictingFraming | RequestError::UnexpectedBody => {
                        (StatusCode::BAD_REQUEST, Plain)
                    }
                    RequestError::MethodNotAllowed { .. } => {
                        (StatusCode::METHOD_NOT_ALLOWED, Plain)
                    }
                    RequestError::BadPath(_) | RequestError::BadTarget => {
                        (StatusCode::BAD_REQUEST, Json)
                    }
                    RequestError::NotFound { json } => {
                        (StatusCode::NOT_FOUND, if *json { Json } else { Plain })
                    }
                    RequestError::BodyTooSlow => (StatusCode::REQUEST_TIMEOUT, Json),
                    RequestError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, Json),
                    RequestError::RepeatedParameter => (StatusCode::BAD_REQUEST, Plain),
                };
                let entry = row(status, error.message(), Client, format);
                // Framing errors and slow bodies leave the connection in a state not worth
                // keeping.
                match error {
                    RequestError::HeadersTooLarge
                    | RequestError::ConflictingFraming
                    | RequestError::UnexpectedBody
                    | RequestError::BodyTooSlow => entry.closing(),
                    _ => entry,
                }
            }
            Self::Auth(error) => {
                let (status, blame, format) = match error {
                    AuthError::NoSession | AuthError::SessionEnded | AuthError::StepUp { .. } => {
                        (StatusCode::UNAUTHORIZED, Client, Json)
                    }
                    AuthError::MissingCsrf
                    | AuthError::ForeignOrigin
                    | AuthError::Forbidden { .. } => (StatusCode::FORBIDDEN, Client, Json),
                    AuthError::BadLoginParameter(_)
                    | AuthError::BadReturnUrl
                    | AuthError::WrongLogoutSid => (StatusCode::BAD_REQUEST, Client, Plain),
                    AuthError::RefreshUnavailable(_)
                    | AuthError::ClientToken(ClientTokenError::Unavailable(_)) => {
                        (StatusCode::SERVICE_UNAVAILABLE, Provider, Json)
                    }
                    // The provider refused the gateway's grant: its settings or ours are wrong.
                    AuthError::ClientToken(ClientTokenError::Refused(_))
                    | AuthError::ResourceRefused { .. } => {
                        (StatusCode::BAD_GATEWAY, Provider, Json)
                    }
                };
                row(status, error.message(), blame, format)
            }
            Self::Login(error) => row(StatusCode::BAD_REQUEST, error.message(), Client, Plain),
            Self::Backchannel(_) => row(StatusCode::BAD_REQUEST, "invalid_request", Client, Json),
            Self::Upstream(error) => match error {
                UpstreamFailure::TimedOut { .. } => row(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the upstream did not answer in time",
                    Provider,
                    Json,
                ),
                UpstreamFailure::Unreachable { .. } | UpstreamFailure::UnexpectedSwitch { .. } => {
                    row(
                        StatusCode::BAD_GATEWAY,
                        "the upstream could not be reached",
                        Provider,
                        Json,
                    )
                }
            },
            Self::Provider(error) => match error {
                OidcError::NotReady | OidcError::Discovery(_) => row(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the identity provider is not available yet",
                    Provider,
                    Plain,
                ),
                OidcError::Unreachable(_) => row(
                    StatusCode::BAD_GATEWAY,
                    "the identity provider could not be reached",
                    Provider,
                    Plain,
                ),
                // A token response that does not parse (an ID token without sub or iat, say)
                // fails the login like any invalid token, but it is logged as the provider's
                // fault.
                OidcError::BadResponse(_) => {
                    row(StatusCode::BAD_REQUEST, LOGIN_FAILED, Provider, Plain)
                }
                // A reused or forged code, or a token that fails validation: the request's
                // fault (or an attacker's), never a reason to create a session.
                OidcError::Refused { .. } | OidcError::InvalidIdToken(_) => {
                    row(StatusCode::BAD_REQUEST, LOGIN_FAILED, Client, Plain)
                }
            },
            // Redis away: the gateway is fine, its store is not (sessions in the cache go on).
            Self::Store(StoreError::Redis(_) | StoreError::Unavailable) => row(
                StatusCode::SERVICE_UNAVAILABLE,
                "the session store is unavailable; try again shortly",
                Provider,
                Plain,
            ),
            Self::Store(_) | Self::Internal(_) => row(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
                Internal,
                Plain,
            ),
        }
    }

    /// The metric a gateway-made upstream answer counts under; `None` for every other error.
    pub fn upstream_metric(&self) -> Option<UpstreamError> {
        match self {
            Self::Upstream(UpstreamFailure::TimedOut { .. }) => Some(UpstreamError::Timeout),
            Self::Upstream(_) => Some(UpstreamError::Unreachable),
            _ => None,
        }
    }

    /// Logs the error at the level its row calls for and builds the response.
    pub fn into_response(self) -> Response<Body> {
        let entry = self.entry();
        // The whole chain, for the log only: the body carries the row's fixed message.
        let detail = error_chain(&self);
        let status = entry.status.as_u16();
        let message = entry.message;
        match entry.blame {
            Blame::Client => tracing::debug!(status, message, detail),
            Blame::Provider => tracing::warn!(status, message, detail),
            Blame::Internal => tracing::error!(status, message, detail),
        }
        let mut response = match (entry.format, &self) {
            (Format::Plain, _) => reply::text(entry.status, message),
            // The app learns which policy refused, to say so (names are configuration, not
            // secrets).
            (Format::Json, Self::Auth(AuthError::Forbidden { policy })) => reply::json(
                entry.status,
                &serde_json::json!({ "error": message, "policy": policy }),
            ),
            (Format::Json, Self::Auth(AuthError::StepUp { policy, step_up })) => {
                let mut response = reply::json(
                    entry.status,
                    &serde_json::json!({
                        "error": message,
                        "policy": policy,
                        "loginUrl": step_up_login_url(step_up),
                    }),
                );
                if let Ok(value) = HeaderValue::from_str(&step_up_challenge(step_up)) {
                    response.headers_mut().insert(WWW_AUTHENTICATE, value);
                }
                response
            }
            (Format::Json, _) => {
                reply::json(entry.status, &serde_json::json!({ "error": message }))
            }
        };
        if entry.close {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if let Self::Request(RequestError::MethodNotAllowed { allow }) = self {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// Where the app sends the browser for a step-up: `/login` asking for what the policy needs;
/// back to `/` afterwards (the app may replace `returnUrl` with its current path).
fn step_up_login_url(step_up: &crate::policy::StepUp) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("returnUrl", "/");
    if let Some(acr_values) = &step_up.acr_values {
        query.append_pair("acr_values", acr_values);
    }
    if let Some(max_age) = step_up.max_age {
        query.append_pair("max_age", &max_age.to_string());
    }
    format!("/login?{}", query.finish())
}

/// The RFC 9470 challenge: `Bearer error="insufficient_user_authentication", …`.
fn step_up_challenge(step_up: &crate::policy::StepUp) -> String {
    let mut challenge = String::from(r#"Bearer error="insufficient_user_authentication""#);
    if let Some(acr_values) = &step_up.acr_values {
        challenge.push_str(&format!(r#", acr_values="{acr_values}""#));
    }
    if let Some(max_age) = step_up.max_age {
        challenge.push_str(&format!(", max_age={max_age}"));
    }
    challenge
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_failures_count_by_kind_not_by_status() {
        let timed_out = HttpError::from(UpstreamFailure::TimedOut {
            route: "r".into(),
            upstream: "h".into(),
            after: Duration::from_secs(1),
        });
        assert_eq!(timed_out.entry().status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(timed_out.upstream_metric(), Some(UpstreamError::Timeout));
        let switched = HttpError::from(UpstreamFailure::UnexpectedSwitch {
            route: "r".into(),
            upstream: "h".into(),
        });
        assert_eq!(switched.upstream_metric(), Some(UpstreamError::Unreachable));
        // A 503 of the provider is no upstream error.
        let provider = HttpError::from(OidcError::NotReady);
        assert_eq!(provider.entry().status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(provider.upstream_metric(), None);
    }

    #[tokio::test]
    async fn details_stay_out_of_the_body() {
        use http_body_util::BodyExt;
        let error = HttpError::from(UpstreamFailure::Unreachable {
            route: "orders".into(),
            upstream: "10.0.0.7 (0000)".into(),
            source: "connection refused by 10.0.0.7".into(),
        });
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(
            &body[..],
            br#"{"error":"the upstream could not be reached"}"#
        );
    }

    #[test]
    fn a_refused_method_names_the_allowed_ones() {
        let response =
            HttpError::from(RequestError::MethodNotAllowed { allow: "POST" }).into_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[ALLOW], "POST");
    }

    #[test]
    fn framing_errors_and_slow_bodies_close_the_connection() {
        for error in [
            RequestError::HeadersTooLarge,
            RequestError::ConflictingFraming,
            RequestError::UnexpectedBody,
            RequestError::BodyTooSlow,
        ] {
            assert!(HttpError::from(error).entry().close);
        }
        assert!(!HttpError::from(AuthError::NoSession).entry().close);
    }
}
