//! The access log: one line per request (target `oidc_bff::access`, level info), and what the
//! handlers add to it beyond method, path and status.

/// What a handler tells the access log beyond method, path and status, carried in the
/// response's extensions.
#[derive(Debug, Clone, Default)]
pub(crate) struct AccessInfo {
    /// The proxy route that took the request.
    pub route: Option<String>,
    /// The destination it went to ([`crate::proxy::route::Destination::label`]).
    pub upstream: Option<String>,
    /// The session (logged as a short hash of its id, 8 hex digits; never the key).
    pub session: Option<crate::session::SessionId>,
}

/// Whether access-log lines are written (`--log-level` info or finer for `oidc_bff::access`):
/// when they are not, handlers skip gathering what only the log would show.
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: "oidc_bff::access", tracing::Level::INFO)
}

/// Tags `response` with the session it acted for, when the access log is on.
pub(crate) fn tag_session<B>(response: &mut http::Response<B>, session: crate::session::SessionId) {
    if enabled() {
        response.extensions_mut().insert(AccessInfo {
            session: Some(session),
            ..AccessInfo::default()
        });
    }
}
