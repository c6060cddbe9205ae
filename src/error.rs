//! The one table from errors to HTTP responses, by whose fault they are.
//!
//! - Client faults (400/401/403/404/405/414): logged at debug, since anyone can cause them.
//! - Provider faults (502/503/504): logged at warn, naming what failed.
//! - Internal faults (500): logged at error with the whole `source()` chain.
//!
//! Bodies carry only a fixed short message chosen here; never internal text, tokens or secrets.

use http::header::{CONNECTION, HeaderValue};
use http::{Response, StatusCode};

use crate::describe::error_chain;
use crate::oidc::OidcError;
use crate::refresh::FreshnessError;
use crate::reply::{self, Body};
use crate::store::StoreError;

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

/// An error on its way to becoming a response.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    message: &'static str,
    blame: Blame,
    format: Format,
    close: bool,
    detail: Option<String>,
}

impl HttpError {
    /// A client error with a fixed public message.
    pub fn client(status: StatusCode, message: &'static str) -> Self {
        Self {
            status,
            message,
            blame: Blame::Client,
            format: Format::Plain,
            close: false,
            detail: None,
        }
    }

    /// A provider failure.
    pub fn provider(status: StatusCode, message: &'static str, detail: String) -> Self {
        Self {
            status,
            message,
            blame: Blame::Provider,
            format: Format::Plain,
            close: false,
            detail: Some(detail),
        }
    }

    /// An internal failure; the detail goes to the log only.
    pub fn internal(detail: String) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "internal error",
            blame: Blame::Internal,
            format: Format::Plain,
            close: false,
            detail: Some(detail),
        }
    }

    /// Answers in JSON.
    pub fn json(mut self) -> Self {
        self.format = Format::Json;
        self
    }

    /// Closes the connection after the response (framing errors).
    pub fn close_connection(mut self) -> Self {
        self.close = true;
        self
    }

    /// Adds a log-only detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Logs the error at the level its blame calls for and builds the response.
    pub fn into_response(self) -> Response<Body> {
        let detail = self.detail.as_deref().unwrap_or("");
        match self.blame {
            Blame::Client => {
                tracing::debug!(
                    status = self.status.as_u16(),
                    message = self.message,
                    detail
                )
            }
            Blame::Provider => {
                tracing::warn!(
                    status = self.status.as_u16(),
                    message = self.message,
                    detail
                )
            }
            Blame::Internal => {
                tracing::error!(
                    status = self.status.as_u16(),
                    message = self.message,
                    detail
                )
            }
        }
        let mut response = match self.format {
            Format::Plain => reply::text(self.status, self.message),
            Format::Json => reply::json(self.status, &serde_json::json!({ "error": self.message })),
        };
        if self.close {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<StoreError> for HttpError {
    fn from(error: StoreError) -> Self {
        HttpError::internal(error_chain(&error))
    }
}

impl From<OidcError> for HttpError {
    fn from(error: OidcError) -> Self {
        let detail = error_chain(&error);
        match error {
            OidcError::NotReady | OidcError::Discovery(_) => HttpError::provider(
                StatusCode::SERVICE_UNAVAILABLE,
                "the identity provider is not available yet",
                detail,
            ),
            OidcError::Unreachable(_) => HttpError::provider(
                StatusCode::BAD_GATEWAY,
                "the identity provider could not be reached",
                detail,
            ),
            // A token response that does not parse (an ID token without sub or iat, say) fails
            // the login like any invalid token, but it is logged as the provider's fault.
            OidcError::BadResponse(_) => {
                HttpError::provider(StatusCode::BAD_REQUEST, "login failed", detail)
            }
            // A reused or forged code, or a token that fails validation: the request's fault
            // (or an attacker's), never a reason to create a session.
            OidcError::Refused { .. } | OidcError::InvalidIdToken(_) => {
                HttpError::client(StatusCode::BAD_REQUEST, "login failed").with_detail(detail)
            }
        }
    }
}

impl From<FreshnessError> for HttpError {
    fn from(error: FreshnessError) -> Self {
        match error {
            FreshnessError::Store(error) => error.into(),
            FreshnessError::ProviderUnavailable(detail) => HttpError::provider(
                StatusCode::SERVICE_UNAVAILABLE,
                "the session's tokens could not be refreshed right now",
                detail,
            )
            .json(),
        }
    }
}
