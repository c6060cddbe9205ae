//! The gateway's own endpoints for signing in and out: `/api/isAuth`, `/login`, the callback,
//! `/api/user` and `/logout`.
//!
//! Attacks each one is built against:
//! - login CSRF and code injection: the callback must find its `state` in the sealed flow cookie
//!   of the same browser, and the ID token must carry that login's nonce;
//! - open redirects: `returnUrl` must be a local path (`/x`, never `//host`, `/\host` or a URL);
//! - mix-up: RFC 9207 `iss` in the callback must be the configured issuer;
//! - session fixation: every login gets a new random key, and a previous session is removed;
//! - CSRF on the API: `/api/user` requires `X-CSRF: 1`, which a cross-site form cannot send;
//! - forced logout: `/logout` requires the session's logout id, which only the SPA can read.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{HeaderValue, SET_COOKIE};
use http::{HeaderMap, Request, Response, StatusCode};

use crate::access_log::AccessInfo;
use crate::clock::Clock;
use crate::cookies;
use crate::cookies::{CookieConfig, SameSite};
use crate::error::{AuthError, BackchannelError, HttpError, LoginError, RequestError};
use crate::flow::{FLOW_TTL, MAX_RETURN_PATH, PendingLogin, PendingLogins};
use crate::jwt::user_claims_of;
use crate::login_params::LoginParams;
use crate::oidc::Provider;
use crate::path::check_local_path;
use crate::policy::{Claims, Policies, Policy, Principal, Verdict};
use crate::refresh::{FreshnessError, Refresher};
use crate::reply::{self, Body};
use crate::seal::{Sealer, constant_time_eq};
use crate::session::{Secret, SessionId, SessionKey, Ticket};
use crate::store::StoreError;
use crate::tickets::{Activity, Session, TicketStore};

/// A session looked up from the request's cookies.
#[derive(Debug)]
pub(crate) struct Lookup {
    /// The live session, if any.
    pub session: Option<Session>,
    /// The request carried a session cookie that is not (or no longer) valid: clear it.
    pub stale_cookie: bool,
}

/// Handlers for the sign-in and sign-out endpoints.
pub(crate) struct Auth {
    provider: Arc<Provider>,
    tickets: Arc<TicketStore>,
    refresher: Arc<Refresher>,
    flow_sealer: Sealer,
    cookie: CookieConfig,
    clock: Arc<dyn Clock>,
    login_params: LoginParams,
    /// `--allow`: the policy a user must satisfy to get a session.
    allow: Option<String>,
    /// `--login-resources all`: name the routes' resources in the authorization request.
    login_resources: bool,
}

/// Who may sign in, and with which parameters.
#[derive(Debug, Clone)]
pub(crate) struct SignIn {
    /// `--login-params`: what `/login` passes on to the provider.
    pub(crate) params: LoginParams,
    /// `--allow`: the policy a user must satisfy to get a session.
    pub(crate) allow: Option<String>,
    /// `--login-resources all`: name the routes' resources in the authorization request.
    pub(crate) resources: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

fn query_pairs(request: &Request<impl Sized>) -> Vec<(String, String)> {
    request
        .uri()
        .query()
        .map(|query| {
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

/// The single value of a query parameter; a repeated parameter is an error (parameter
/// pollution would let an attacker hide a second value from one of two parsers).
fn single<'a>(pairs: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, HttpError> {
    let mut found = pairs.iter().filter(|(key, _)| key == name);
    let first = found.next().map(|(_, value)| value.as_str());
    if found.next().is_some() {
        return Err(RequestError::RepeatedParameter.into());
    }
    Ok(first)
}

fn append_cookie(response: &mut Response<Body>, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(SET_COOKIE, value);
    }
}

impl Auth {
    /// Handlers over the shared services.
    pub(crate) fn new(
        provider: Arc<Provider>,
        tickets: Arc<TicketStore>,
        refresher: Arc<Refresher>,
        flow_sealer: Sealer,
        cookie: CookieConfig,
        clock: Arc<dyn Clock>,
        sign_in: SignIn,
    ) -> Self {
        Self {
            provider,
            tickets,
            refresher,
            flow_sealer,
            cookie,
            clock,
            login_params: sign_in.params,
            allow: sign_in.allow,
            login_resources: sign_in.resources,
        }
    }

    /// The ticket store.
    pub(crate) fn tickets(&self) -> &Arc<TicketStore> {
        &self.tickets
    }

    /// What policies judge about the session: the claims of its ID token (every claim,
    /// protocol ones too: policies read `acr` and `auth_time`), with the UserInfo claims it
    /// holds over them (`--userinfo`), and its token's granted scope.
    ///
    /// Worked out once per ticket and kept with it (the cache holds the ticket, so a busy
    /// session's policy checks parse nothing); a refresh makes a new ticket, and a new one.
    pub(crate) async fn principal(&self, session: &Session) -> Result<Arc<Principal>, HttpError> {
        if let Some(principal) = session.ticket.principal.get() {
            return Ok(Arc::clone(principal));
        }
        let id_token = self.tickets.id_token(session).await?;
        let principal = Arc::new(principal_of(&session.ticket, id_token.as_ref()));
        session.ticket.principal.keep(Arc::clone(&principal));
        Ok(principal)
    }

    /// Checks `policy` for the signed-in `session`; returns what it judged when a policy or
    /// `want_claims` needed it, or the refusal that names the policy.
    pub(crate) async fn authorize(
        &self,
        session: &Session,
        policy: Option<&Policy>,
        want_claims: bool,
    ) -> Result<Option<Arc<Principal>>, HttpError> {
        if policy.is_none() && !want_claims {
            return Ok(None);
        }
        let principal = self.principal(session).await?;
        if let Some(policy) = policy {
            match policy.check(&principal, self.clock.unix_now()) {
                Verdict::Allowed => {}
                Verdict::Denied => {
                    return Err(AuthError::Forbidden {
                        policy: policy.name().to_owned(),
                    }
                    .into());
                }
                // Only `acr` or `auth-age` failed: a new sign-in that asks for them can do.
                Verdict::StepUp(step_up) => {
                    return Err(AuthError::StepUp {
                        policy: policy.name().to_owned(),
                        step_up,
                    }
                    .into());
                }
            }
        }
        Ok(Some(principal))
    }

    /// Finds the live session named by the request's session cookie.
    pub(crate) async fn lookup(
        &self,
        headers: &HeaderMap,
        activity: Activity,
    ) -> Result<Lookup, HttpError> {
        // Only the first value: a `__Host-` cookie exists once per host, so more values are
        // forged, and each would cost a database read (250 fake values were 250 reads).
        let Some(value) = cookies::values(headers, &self.cookie.name).next() else {
            return Ok(Lookup {
                session: None,
                stale_cookie: false,
            });
        };
        let session = match SessionKey::parse(value) {
            Some(key) => self.tickets.retrieve(&key, activity).await?,
            None => None,
        };
        Ok(Lookup {
            stale_cookie: session.is_none(),
            session,
        })
    }

    fn expire_session_cookie(&self, response: &mut Response<Body>) {
        append_cookie(
            response,
            &cookies::expire(&self.cookie.name, self.cookie.same_site),
        );
    }

    /// The id `/logout?sid=` must carry for this session: derived from the session id under a
    /// server key, so it reveals nothing and cannot be guessed from outside.
    pub(crate) fn logout_id(&self, id: SessionId) -> String {
        URL_SAFE_NO_PAD.encode(&self.tickets.keyer().hash("logout", &id.to_bytes())[..16])
    }

    /// `GET /api/isAuth`: `true` or `false`, never 401, never cached. Does not slide the idle
    /// timeout.
    pub(crate) async fn is_auth(
        &self,
        request: &Request<impl Sized>,
    ) -> Result<Response<Body>, HttpError> {
        let lookup = self.lookup(request.headers(), Activity::Peek).await?;
        let mut response = reply::json(
            StatusCode::OK,
            &serde_json::Value::Bool(lookup.session.is_some()),
        );
        if lookup.stale_cookie {
            self.expire_session_cookie(&mut response);
        }
        Ok(response)
    }

    /// `GET /login?returnUrl=/path[&prompt=…&max_age=…&acr_values=…&login_hint=…]`: starts an
    /// authorization-code flow with PKCE, passing on the `--login-params` the query holds (each
    /// checked; `acr_values` only values some policy of `policies` accepts).
    /// `resources`: every route's resource indicator, named in the request unless
    /// `--login-resources none`.
    pub(crate) async fn login(
        &self,
        request: &Request<impl Sized>,
        policies: &Policies,
        resources: &[String],
    ) -> Result<Response<Body>, HttpError> {
        // A sign-in that could not be stored is one the user would have to repeat.
        if !self.tickets.is_up() {
            return Err(StoreError::Unavailable.into());
        }
        let pairs = query_pairs(request);
        let return_path = single(&pairs, "returnUrl")?.unwrap_or("/").to_owned();
        if return_path.len() > MAX_RETURN_PATH || check_local_path(&return_path).is_err() {
            return Err(AuthError::BadReturnUrl.into());
        }
        let known_acr: Vec<&str> = policies.acr_values().collect();
        let login_params = self
            .login_params
            .select(&pairs, &known_acr)
            .map_err(AuthError::BadLoginParameter)?;
        let now = self.clock.unix_now();
        let login = PendingLogin::start(return_path, now);
        let location = self.provider.authorization_url(
            &login.state,
            &login.nonce,
            &login.code_challenge(),
            &login_params,
            if self.login_resources { resources } else { &[] },
        )?;
        let flow_name = self.cookie.flow_name();
        let mut pending = PendingLogins::from_cookies(
            &self.flow_sealer,
            cookies::values(request.headers(), &flow_name),
            now,
        );
        pending.push(login);
        let mut response = reply::redirect(location.as_str());
        if let Some(value) = pending.to_cookie(&self.flow_sealer) {
            append_cookie(
                &mut response,
                &cookies::set(&flow_name, &value, SameSite::Lax, Some(FLOW_TTL)),
            );
        }
        Ok(response)
    }

    /// The callback: checks the response against the pending login, exchanges the code,
    /// creates the session and sets the cookie. Every failure is a plain 400 and no session.
    pub(crate) async fn callback(
        &self,
        request: &Request<impl Sized>,
        policies: &Policies,
    ) -> Result<Response<Body>, HttpError> {
        let now = self.clock.unix_now();
        let flow_name = self.cookie.flow_name();
        let mut pending = PendingLogins::from_cookies(
            &self.flow_sealer,
            cookies::values(request.headers(), &flow_name),
            now,
        );
        let pairs = query_pairs(request);
        let state = single(&pairs, "state")?.ok_or(LoginError::NoState)?;
        let login = pending.take(state).ok_or(LoginError::UnknownLogin)?;
        // From here the login is consumed whatever happens: write the remaining ones back.
        let flow_cookie = match pending.to_cookie(&self.flow_sealer) {
            Some(value) => cookies::set(&flow_name, &value, SameSite::Lax, Some(FLOW_TTL)),
            None => cookies::expire(&flow_name, SameSite::Lax),
        };
        let result = self.finish_login(request, &pairs, login, policies).await;
        let mut response = result.unwrap_or_else(HttpError::into_response);
        append_cookie(&mut response, &flow_cookie);
        Ok(response)
    }

    async fn finish_login(
        &self,
        request: &Request<impl Sized>,
        pairs: &[(String, String)],
        login: PendingLogin,
        policies: &Policies,
    ) -> Result<Response<Body>, HttpError> {
        if let Some(code) = single(pairs, "error")? {
            return Err(LoginError::ProviderRefused {
                code: code.to_owned(),
            }
            .into());
        }
        // RFC 9207: a provider that sends `iss` must send ours; one that promised it must send it.
        match single(pairs, "iss")? {
            Some(iss) if iss != self.provider.config().issuer => {
                return Err(LoginError::UnexpectedIssuer.into());
            }
            None if self.provider.sends_iss_parameter() => {
                return Err(LoginError::MissingIssuer.into());
            }
            _ => {}
        }
        let code = single(pairs, "code")?
            .filter(|code| !code.is_empty())
            .ok_or(LoginError::NoCode)?;
        let result = self
            .provider
            .exchange_code(code, &login.pkce_verifier, &login.nonce)
            .await?;
        let now = self.clock.unix_now();
        let ticket = Ticket {
            expires_at: self.tickets.policy().end_of(now, &result.tokens),
            tokens: result.tokens,
            subject: result.subject,
            provider_sid: result.provider_sid,
            created_at: now,
            resource_tokens: Vec::new(),
            userinfo: result.userinfo,
            principal: Default::default(),
        };
        if let Some(refused) = self.gate(&ticket, policies).await {
            return Ok(refused);
        }
        // A session the browser held before this login is replaced, not left behind.
        let previous = self.lookup(request.headers(), Activity::Peek).await?;
        if let Some(previous) = previous.session {
            self.tickets.remove(previous.id).await?;
        }
        let key = self.tickets.store(ticket).await?;
        tracing::info!(session = %key.id(), "login completed; session created");
        let mut response = reply::redirect(&login.return_path);
        append_cookie(
            &mut response,
            &cookies::set(
                &self.cookie.name,
                &key.encode(),
                self.cookie.same_site,
                Some(self.tickets.policy().lifetime.as_secs()),
            ),
        );
        Ok(response)
    }

    /// `--allow`: `None` when the new session's user satisfies the policy (or there is none);
    /// else the page that refuses them. Nothing is stored, the refresh token is revoked (best
    /// effort: it would never be used), and the provider session is left alone: the page links
    /// to the provider's sign-out for a user who wants to try another account.
    async fn gate(&self, ticket: &Ticket, policies: &Policies) -> Option<Response<Body>> {
        let name = self.allow.as_deref()?;
        let principal = principal_of(ticket, ticket.tokens.id_token.as_ref());
        // A policy the configuration no longer has refuses everyone: fail closed.
        let verdict = policies
            .get(name)
            .map(|policy| policy.check(&principal, self.clock.unix_now()));
        if verdict == Some(Verdict::Allowed) {
            return None;
        }
        tracing::info!(
            policy = name,
            "login refused: the user does not satisfy --allow"
        );
        if let Some(refresh_token) = &ticket.tokens.refresh_token {
            let revoke = self.provider.revoke(refresh_token);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), revoke).await;
        }
        let sign_out = self
            .provider
            .end_session_url(None)
            .map(|url| {
                format!(
                    "<p><a href=\"{}\">Sign out at the identity provider</a> to use another \
                     account.</p>",
                    reply::escape_html(url.as_str())
                )
            })
            .unwrap_or_default();
        Some(reply::html(
            StatusCode::FORBIDDEN,
            format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
                 <title>Not allowed</title></head><body><h1>This account is not allowed here</h1>\
                 <p>You signed in, but this application is not open to your account.</p>\
                 {sign_out}</body></html>\n"
            ),
        ))
    }

    /// `GET /api/user` (with `X-CSRF: 1`): the user's claims, the logout URL and the time left.
    /// Does not slide the idle timeout.
    pub(crate) async fn user(
        &self,
        request: &Request<impl Sized>,
        policies: &Policies,
        logged: &mut AccessInfo,
    ) -> Result<Response<Body>, HttpError> {
        let lookup = self.lookup(request.headers(), Activity::Peek).await?;
        let Some(session) = lookup.session else {
            let mut response = HttpError::from(AuthError::NoSession).into_response();
            if lookup.stale_cookie {
                self.expire_session_cookie(&mut response);
            }
            return Ok(response);
        };
        require_csrf_header(request.headers())?;
        let session = match self.refresher.fresh(session.clone()).await {
            Ok(Some(session)) => session,
            Ok(None) => {
                let mut response = HttpError::from(AuthError::NoSession).into_response();
                self.expire_session_cookie(&mut response);
                return Ok(response);
            }
            // The claims do not need a live access token: answer with what is known; the
            // session is kept and the refresh is retried on the next use.
            Err(FreshnessError::ProviderUnavailable(_)) => session,
            Err(error) => return Err(error.into()),
        };
        // The claims come from the newest validated ID token the session holds (and UserInfo).
        let principal = self.principal(&session).await?;
        // The policies the user satisfies now, for the app to hide what it cannot use.
        let satisfied = policies.satisfied(&principal, self.clock.unix_now());
        let mut body = user_claims_of(principal.claims.clone());
        body.insert("policies".into(), satisfied.into());
        body.entry("sub")
            .or_insert_with(|| session.ticket.subject.clone().into());
        let deadline = self
            .tickets
            .policy()
            .deadline(&session.ticket, session.last_access);
        body.insert(
            "logoutUrl".into(),
            format!("/logout?sid={}", self.logout_id(session.id)).into(),
        );
        body.insert(
            "sessionExpiresIn".into(),
            deadline.saturating_sub(self.clock.unix_now()).into(),
        );
        let response = reply::json(StatusCode::OK, &serde_json::Value::Object(body));
        logged.session = Some(session.id);
        Ok(response)
    }

    /// `GET /logout?sid=…`: ends the session here and at the provider.
    pub(crate) async fn logout(
        &self,
        request: &Request<impl Sized>,
        logged: &mut AccessInfo,
    ) -> Result<Response<Body>, HttpError> {
        let lookup = self.lookup(request.headers(), Activity::Peek).await?;
        let Some(session) = lookup.session else {
            // Nothing to end; make sure the browser forgets any stale cookie.
            let mut response = reply::redirect("/");
            self.expire_session_cookie(&mut response);
            return Ok(response);
        };
        let pairs = query_pairs(request);
        let given = single(&pairs, "sid")?.unwrap_or("");
        // Constant-time: the sid is attacker-supplied and guards the session.
        if !constant_time_eq(given.as_bytes(), self.logout_id(session.id).as_bytes()) {
            return Err(AuthError::WrongLogoutSid.into());
        }
        // Read before the session (and its stored ID token) is removed. Without it the
        // provider is still sent to its end-session page, just without the hint.
        let id_token = self.tickets.id_token(&session).await.unwrap_or_else(|error| {
            tracing::warn!(session = %session.id, %error, "ID token unreadable; logout without id_token_hint");
            None
        });
        self.tickets.remove(session.id).await?;
        tracing::info!(session = %session.id, "logout; session removed");
        if let Some(refresh_token) = &session.ticket.tokens.refresh_token {
            let revoke = self.provider.revoke(refresh_token);
            if tokio::time::timeout(std::time::Duration::from_secs(5), revoke)
                .await
                .is_err()
            {
                tracing::warn!("refresh token revocation timed out; the local logout went ahead");
            }
        }
        let location = self
            .provider
            .end_session_url(id_token.as_ref())
            .map(|url| url.to_string())
            .unwrap_or_else(|| "/".to_owned());
        let mut response = reply::redirect(&location);
        self.expire_session_cookie(&mut response);
        logged.session = Some(session.id);
        Ok(response)
    }
}

/// `POST /backchannel-logout` (form field `logout_token`): ends the sessions the provider names.
/// 200 on success; 400 with `Cache-Control: no-store` for anything else (spec §2.8).
pub(crate) async fn backchannel_logout(
    verifier: &crate::logout::LogoutVerifier,
    tickets: &TicketStore,
    form: &[u8],
) -> Result<Response<Body>, HttpError> {
    let tokens: Vec<String> = url::form_urlencoded::parse(form)
        .filter(|(key, _)| key == "logout_token")
        .map(|(_, value)| value.into_owned())
        .collect();
    let [token] = tokens.as_slice() else {
        return Err(BackchannelError::FieldCount.into());
    };
    let verified = verifier
        .verify(token)
        .await
        .map_err(BackchannelError::Invalid)?;
    // Recorded durably before any session ends: a token captured and played again, even after
    // a restart, ends nothing (it could end a session created after the logout).
    if !tickets
        .remember_logout_jti(&verified.jti, verified.forget_after)
        .await?
    {
        return Err(BackchannelError::Replayed.into());
    }
    let target = verified.target;
    let removed = match (&target.sid, &target.sub) {
        (Some(sid), _) => tickets.remove_by_provider_sid(sid).await?,
        (None, Some(sub)) => tickets.remove_by_subject(sub).await?,
        (None, None) => 0,
    };
    tracing::info!(
        removed,
        by_sid = target.sid.is_some(),
        "back-channel logout"
    );
    let mut response = reply::text(StatusCode::OK, "");
    *response.body_mut() = reply::full(bytes::Bytes::new());
    Ok(response)
}

/// What policies judge about a ticket whose ID token is `id_token`: its claims, the UserInfo
/// claims over them, and the granted scope.
fn principal_of(ticket: &Ticket, id_token: Option<&Secret>) -> Principal {
    let mut claims: Claims = id_token
        .and_then(|id_token| crate::jwt::unverified_claims(id_token.expose()))
        .unwrap_or_default();
    if let Some(userinfo) = ticket.userinfo.as_deref() {
        merge_userinfo(&mut claims, userinfo);
    }
    Principal {
        claims,
        scope: ticket.tokens.scope.clone(),
    }
}

/// Lays the UserInfo claims (a JSON object) over the ID token's. `sub` is never replaced:
/// OIDC Core §5.3.2 requires UserInfo's to match, and the refresh that fetched it checked so.
fn merge_userinfo(claims: &mut Claims, userinfo: &str) {
    if let Ok(serde_json::Value::Object(extra)) = serde_json::from_str(userinfo) {
        for (name, value) in extra {
            if name != "sub" {
                claims.insert(name, value);
            }
        }
    }
}

/// Requires `X-CSRF: 1`: a custom header forces a CORS preflight, which cross-site pages fail.
pub(crate) fn require_csrf_header(headers: &HeaderMap) -> Result<(), HttpError> {
    // A name parsed once, not at every call.
    static X_CSRF: http::HeaderName = http::HeaderName::from_static("x-csrf");
    match headers.get(&X_CSRF) {
        Some(value) if value == "1" => Ok(()),
        _ => Err(AuthError::MissingCsrf.into()),
    }
}
