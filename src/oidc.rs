//! The provider client: discovery (retried until it works), the JWKS and its rotation, the
//! authorization URL, the code exchange, refresh, revocation and the end-session URL.
//!
//! openidconnect does the protocol work; this module adds what it leaves out and a gateway needs:
//! - ID tokens are checked with asymmetric algorithms only (`alg: none` and HMAC signed with a
//!   public key are refused), plus `azp`, a sane `iat`, and `at_hash` when present.
//! - An unknown `kid` refetches the JWKS once, so signing-key rotation needs no restart.
//! - A refreshed ID token must keep the session's issuer and subject.
//! - Token-endpoint failures are split into "the grant is dead" (end the session) and "try again
//!   later" (keep it), because deleting sessions on any failure was a defect of the seed.
//!
//! Time comes from the injected clock, including openidconnect's `exp` check.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod,
    CoreErrorResponseType, CoreGrantType, CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKey,
    CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType, CoreRevocableToken,
    CoreSubjectIdentifierType, CoreTokenResponse,
};
use openidconnect::{
    AccessTokenHash, AdditionalProviderMetadata, AuthType, AuthorizationCode,
    ClaimsVerificationError, ClientId, ClientSecret, HttpRequest, HttpResponse, IssuerUrl,
    JsonWebKeySet, Nonce, OAuth2TokenResponse, PkceCodeVerifier, ProviderMetadata, RedirectUrl,
    RefreshToken, RequestTokenError, Scope, SignatureVerificationError, TokenResponse,
};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::clock::Clock;
use crate::describe::error_chain;
use crate::http_client::{HttpClient, HttpClientError};
use crate::jwt::unverified_claims;
use crate::session::{AccessToken, ResourceToken, Secret, Tokens};
use crate::sync::RwLocked;
use crate::urls::is_loopback_host;

/// Discovery fields openidconnect's core metadata does not model.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExtraMetadata {
    /// RP-initiated logout endpoint.
    pub end_session_endpoint: Option<Url>,
    /// RFC 7009 token revocation endpoint.
    pub revocation_endpoint: Option<Url>,
    /// RFC 8414 §2: the PKCE methods the provider supports, when it says.
    pub code_challenge_methods_supported: Option<Vec<String>>,
    /// RFC 9207: the provider sends `iss` with every authorization response.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

impl AdditionalProviderMetadata for ExtraMetadata {}

/// Discovery document with the extra fields.
pub type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// Signature algorithms accepted for ID tokens: asymmetric only. HMAC would let anyone who
/// knows a "key" from the public JWKS forge tokens; `none` is not a signature.
pub(crate) const ACCEPTED_ALGS: [CoreJwsSigningAlgorithm; 9] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// How far in the future an ID token's `iat` may be (clock skew between provider and gateway).
const IAT_FUTURE_SKEW: i64 = 300;

/// What went wrong talking to the provider.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// Discovery has not succeeded yet.
    #[error("the provider's discovery document has not been loaded yet")]
    NotReady,
    /// Discovery failed.
    #[error("discovery failed: {0}")]
    Discovery(String),
    /// The provider could not be reached or answered with a server error.
    #[error("provider unreachable: {0}")]
    Unreachable(String),
    /// The token endpoint refused the request with an OAuth error code.
    #[error("token endpoint refused the request: {code}")]
    Refused {
        /// The OAuth error code, e.g. `invalid_grant`.
        code: String,
    },
    /// The token endpoint's answer was not a valid token response.
    #[error("token endpoint returned an unusable response: {0}")]
    BadResponse(String),
    /// The ID token failed validation.
    #[error("ID token rejected: {0}")]
    InvalidIdToken(String),
}

/// Why a refresh did not produce new tokens.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The grant is dead (`invalid_grant`, `unauthorized_client`) or the provider answered with
    /// tokens for another user: the session must end.
    #[error("refresh rejected: {0}")]
    SessionEnded(String),
    /// The provider is down, slow or misconfigured: keep the session and try again later.
    #[error("refresh failed for now: {0}")]
    Transient(String),
    /// The provider refused this grant alone (`invalid_target` for a resource it does not
    /// know, `invalid_scope`): the session and its other tokens go on.
    #[error("refused: {0}")]
    Refused(String),
}

/// A token for one resource, from a refresh-token grant.
#[derive(Debug)]
pub struct ResourceGrant {
    /// The token.
    pub token: ResourceToken,
    /// The new refresh token, when the provider rotated it.
    pub refresh_token: Option<Secret>,
}

/// Tokens and identity from a completed login.
#[derive(Debug)]
pub struct LoginResult {
    /// Tokens to keep.
    pub tokens: Tokens,
    /// The verified subject.
    pub subject: String,
    /// The provider's session id, when the ID token carried one.
    pub provider_sid: Option<String>,
    /// The UserInfo response, with `--userinfo`.
    pub userinfo: Option<String>,
}

/// A token the gateway holds for itself, not for a user.
#[derive(Debug, Clone)]
pub struct ClientToken {
    /// The token.
    pub access_token: AccessToken,
    /// When it expires, if the provider said.
    pub expires_at: Option<u64>,
}

/// Tokens from a successful refresh.
#[derive(Debug)]
pub struct Refreshed {
    /// The new tokens (the old refresh token and ID token are kept when none came back).
    pub tokens: Tokens,
    /// The UserInfo response for the new token, with `--userinfo`; `None` when it could not
    /// be fetched now (the session keeps the one it has).
    pub userinfo: Option<String>,
}

struct Discovered {
    metadata: Metadata,
    jwks: RwLock<CoreJsonWebKeySet>,
}

/// The provider client.
pub struct Provider {
    config: OidcConfig,
    http: HttpClient,
    clock: Arc<dyn Clock>,
    discovered: RwLock<Option<Arc<Discovered>>>,
    jwks_refetch: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.config.issuer)
            .field("ready", &self.is_ready())
            .finish()
    }
}

fn unix_to_chrono(seconds: u64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(i64::try_from(seconds).unwrap_or(i64::MAX), 0)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

impl Provider {
    /// A client that has not discovered the provider yet.
    pub fn new(config: OidcConfig, http: HttpClient, clock: Arc<dyn Clock>) -> Self {
        Self {
            config,
            http,
            clock,
            discovered: RwLock::new(None),
            jwks_refetch: tokio::sync::Mutex::new(()),
        }
    }

    /// The configured provider settings.
    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// Whether discovery has succeeded.
    pub fn is_ready(&self) -> bool {
        self.discovered().is_some()
    }

    fn discovered(&self) -> Option<Arc<Discovered>> {
        self.discovered.read_locked().clone()
    }

    fn ready(&self) -> Result<Arc<Discovered>, OidcError> {
        self.discovered().ok_or(OidcError::NotReady)
    }

    fn http_fn(
        &self,
    ) -> impl Fn(
        HttpRequest,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<HttpResponse, HttpClientError>> + Send>,
    > + use<> {
        let client = self.http.clone();
        move |request: HttpRequest| {
            let client = client.clone();
            Box::pin(async move {
                let response = client.execute(request).await?;
                // A 5xx is an outage, not an OAuth answer: surface it as a transport error so
                // callers keep the session and retry.
                if response.status().is_server_error() {
                    return Err(HttpClientError::ServerError {
                        status: response.status().as_u16(),
                    });
                }
                Ok(response)
            })
        }
    }

    /// Fetches the discovery document and JWKS once.
    pub async fn discover(&self) -> Result<(), OidcError> {
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .map_err(|error| OidcError::Discovery(error.to_string()))?;
        let http = self.http_fn();
        // openidconnect refuses a document whose `issuer` differs from the configured one
        // (OpenID Connect Discovery §4.3): a mix-up defence.
        let metadata = Metadata::discover_async(issuer, &http)
            .await
            .map_err(|error| OidcError::Discovery(error_chain(&error)))?;
        let token_endpoint = metadata
            .token_endpoint()
            .ok_or_else(|| OidcError::Discovery("the provider has no token_endpoint".into()))?;
        let extra = metadata.additional_metadata();
        check_endpoints(
            &self.config.issuer,
            &[
                (
                    "authorization_endpoint",
                    Some(metadata.authorization_endpoint().url()),
                ),
                ("token_endpoint", Some(token_endpoint.url())),
                ("jwks_uri", Some(metadata.jwks_uri().url())),
                (
                    "userinfo_endpoint",
                    metadata.userinfo_endpoint().map(|url| url.url()),
                ),
                ("revocation_endpoint", extra.revocation_endpoint.as_ref()),
                ("end_session_endpoint", extra.end_session_endpoint.as_ref()),
            ],
        )?;
        check_pkce(extra.code_challenge_methods_supported.as_deref())?;
        let jwks = metadata.jwks().clone();
        *self.discovered.write_locked() = Some(Arc::new(Discovered {
            metadata,
            jwks: RwLock::new(jwks),
        }));
        Ok(())
    }

    /// Retries discovery with exponential backoff (1 s doubling to 60 s) until it succeeds.
    pub async fn discover_until_ready(&self) {
        let mut delay = Duration::from_secs(1);
        loop {
            match self.discover().await {
                Ok(()) => {
                    tracing::info!(issuer = %self.config.issuer, "provider discovered");
                    return;
                }
                Err(error) => {
                    tracing::warn!(issuer = %self.config.issuer, %error, retry_in = ?delay,
                        "provider discovery failed; /login answers 503 until it succeeds");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    }

    /// Whether the provider promised RFC 9207 `iss` in authorization responses.
    pub fn sends_iss_parameter(&self) -> bool {
        self.discovered().is_some_and(|d| {
            d.metadata
                .additional_metadata()
                .authorization_response_iss_parameter_supported
        })
    }

    /// The authorization-request URL for one login attempt.
    pub fn authorization_url(
        &self,
        state: &str,
        nonce: &str,
        code_challenge: &str,
        login_params: &[(&str, String)],
        resources: &[String],
    ) -> Result<Url, OidcError> {
        let discovered = self.ready()?;
        let mut url = discovered.metadata.authorization_endpoint().url().clone();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &self.config.client_id)
                .append_pair("redirect_uri", self.config.redirect_uri.as_str())
                .append_pair("scope", &self.config.scopes.join(" "))
                .append_pair("state", state)
                .append_pair("nonce", nonce)
                .append_pair("code_challenge", code_challenge)
                .append_pair("code_challenge_method", "S256");
            // A parameter of this sign-in (`/login?prompt=login`) replaces the configured one.
            for (key, value) in &self.config.auth_params {
                if !login_params.iter().any(|(name, _)| name == key) {
                    query.append_pair(key, value);
                }
            }
            for (key, value) in login_params {
                query.append_pair(key, value);
            }
            // RFC 8707 §2.1: every resource the session's tokens will be asked for, since
            // some providers grant only resources named here.
            for resource in resources {
                query.append_pair("resource", resource);
            }
        }
        Ok(url)
    }

    fn client(&self, discovered: &Discovered) -> Result<LoginClient, OidcError> {
        let client = CoreClient::from_provider_metadata(
            discovered.metadata.clone(),
            ClientId::new(self.config.client_id.clone()),
            self.config
                .client_secret
                .as_ref()
                .map(|secret| ClientSecret::new(secret.expose().to_owned())),
        )
        .set_redirect_uri(RedirectUrl::from_url(self.config.redirect_uri.clone()));
        // client_secret_basic unless the provider only offers client_secret_post.
        let methods = discovered.metadata.token_endpoint_auth_methods_supported();
        let post_only = methods.is_some_and(|methods| {
            methods.contains(&CoreClientAuthMethod::ClientSecretPost)
                && !methods.contains(&CoreClientAuthMethod::ClientSecretBasic)
        });
        Ok(if post_only {
            client.set_auth_type(AuthType::RequestBody)
        } else {
            client
        })
    }

    fn verifier(&self, jwks: CoreJsonWebKeySet) -> CoreIdTokenVerifier<'static> {
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .expect("the issuer parsed as a URL at start-up");
        let clock = Arc::clone(&self.clock);
        let iat_clock = Arc::clone(&self.clock);
        CoreIdTokenVerifier::new_public_client(
            ClientId::new(self.config.client_id.clone()),
            issuer,
            jwks,
        )
        .set_allowed_algs(ACCEPTED_ALGS)
        .set_time_fn(move || unix_to_chrono(clock.unix_now()))
        .set_issue_time_verifier_fn(move |iat| {
            let now = i64::try_from(iat_clock.unix_now()).unwrap_or(i64::MAX);
            if iat.timestamp() > now + IAT_FUTURE_SKEW {
                Err(format!("issued in the future ({iat})"))
            } else {
                Ok(())
            }
        })
    }

    /// Verifies an ID token; on an unknown `kid` refetches the JWKS once and tries again.
    async fn verify_id_token(
        &self,
        discovered: &Discovered,
        id_token: &CoreIdToken,
        expected_nonce: Option<&Nonce>,
    ) -> Result<CoreJsonWebKeySet, OidcError> {
        let attempt =
            |jwks: CoreJsonWebKeySet| -> Result<CoreJsonWebKeySet, ClaimsVerificationError> {
                let verifier = self.verifier(jwks.clone());
                match expected_nonce {
                    Some(nonce) => id_token.claims(&verifier, nonce).map(|_| ()),
                    None => id_token
                        .claims(&verifier, |_: Option<&Nonce>| Ok(()))
                        .map(|_| ()),
                }?;
                Ok(jwks)
            };
        let current = discovered.jwks.read_locked().clone();
        match attempt(current.clone()) {
            Ok(jwks) => Ok(jwks),
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                let refreshed = self.refetch_jwks(discovered, &current).await?;
                attempt(refreshed).map_err(|error| OidcError::InvalidIdToken(error_chain(&error)))
            }
            Err(error) => Err(OidcError::InvalidIdToken(error_chain(&error))),
        }
    }

    async fn refetch_jwks(
        &self,
        discovered: &Discovered,
        seen: &CoreJsonWebKeySet,
    ) -> Result<CoreJsonWebKeySet, OidcError> {
        // One refetch at a time; a caller that waited gets the set the other one fetched.
        let _guard = self.jwks_refetch.lock().await;
        let latest = discovered.jwks.read_locked().clone();
        if latest.keys() != seen.keys() {
            return Ok(latest);
        }
        let http = self.http_fn();
        let jwks: CoreJsonWebKeySet =
            JsonWebKeySet::fetch_async(discovered.metadata.jwks_uri(), &http)
                .await
                .map_err(|error| {
                    OidcError::Unreachable(format!("JWKS: {}", error_chain(&error)))
                })?;
        tracing::info!(keys = jwks.keys().len(), "provider signing keys refetched");
        *discovered.jwks.write_locked() = jwks.clone();
        Ok(jwks)
    }

    /// Exchanges an authorization code (with its PKCE verifier) and validates the ID token
    /// against the login's nonce.
    pub async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<LoginResult, OidcError> {
        let discovered = self.ready()?;
        let client = self.client(&discovered)?;
        let http = self.http_fn();
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|error| OidcError::Discovery(error.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&http)
            .await
            .map_err(token_error)?;
        let id_token = response
            .id_token()
            .ok_or_else(|| OidcError::BadResponse("no id_token in the token response".into()))?;
        let nonce = Nonce::new(nonce.to_owned());
        let jwks = self
            .verify_id_token(&discovered, id_token, Some(&nonce))
            .await?;
        let claims = self.extra_checks(id_token, &jwks, &response)?;
        let access_token = AccessToken::new(response.access_token().secret().clone())
            .map_err(|error| OidcError::BadResponse(error.to_string()))?;
        let userinfo = if self.config.userinfo {
            Some(self.userinfo(&access_token, &claims.subject).await?)
        } else {
            None
        };
        let now = self.clock.unix_now();
        Ok(LoginResult {
            userinfo,
            tokens: Tokens {
                access_token,
                access_expires_at: access_expiry(&response, now),
                refresh_token: response
                    .refresh_token()
                    .map(|token| Secret::new(token.secret().clone())),
                id_token: Some(Secret::new(id_token.to_string())),
                // RFC 6749 §5.1: a response without `scope` granted what was asked for.
                scope: Some(
                    granted_scope(&response).unwrap_or_else(|| self.config.scopes.join(" ")),
                ),
            },
            subject: claims.subject,
            provider_sid: claims.sid,
        })
    }

    /// Checks `azp` and `at_hash` (openidconnect checks neither) and extracts the claims.
    fn extra_checks(
        &self,
        id_token: &CoreIdToken,
        jwks: &CoreJsonWebKeySet,
        response: &CoreTokenResponse,
    ) -> Result<PayloadClaims, OidcError> {
        let payload = PayloadClaims::from_verified(&id_token.to_string())?;
        if let Some(azp) = payload
            .azp
            .as_ref()
            .filter(|azp| **azp != self.config.client_id)
        {
            return Err(OidcError::InvalidIdToken(format!(
                "azp {azp:?} is not this client"
            )));
        }
        if let Some(expected) = &payload.at_hash {
            let verifier = self.verifier(jwks.clone());
            let alg = id_token
                .signing_alg()
                .map_err(|error| OidcError::InvalidIdToken(error.to_string()))?;
            let key = id_token
                .signing_key(&verifier)
                .map_err(|error| OidcError::InvalidIdToken(error.to_string()))?;
            let actual = AccessTokenHash::from_token(response.access_token(), alg, key)
                .map_err(|error| OidcError::InvalidIdToken(error.to_string()))?;
            if actual.as_str() != expected {
                return Err(OidcError::InvalidIdToken(
                    "at_hash does not match the access token".into(),
                ));
            }
        }
        Ok(payload)
    }

    /// Uses a refresh token. A new ID token must name the same issuer and subject.
    pub async fn refresh(
        &self,
        refresh_token: &Secret,
        subject: &str,
        previous: &Tokens,
    ) -> Result<Refreshed, RefreshError> {
        let (discovered, response) = self
            .refresh_grant(refresh_token, None)
            .await
            // Any other refusal of the session's own refresh: keep the session, try later.
            .map_err(|error| match error {
                RefreshError::Refused(code) => RefreshError::Transient(code),
                other => other,
            })?;
        let mut id_token_text = previous.id_token.clone();
        if let Some(id_token) = response.id_token() {
            let jwks = self
                .verify_id_token(&discovered, id_token, None)
                .await
                .map_err(|error| match error {
                    OidcError::Unreachable(reason) => RefreshError::Transient(reason),
                    other => RefreshError::SessionEnded(other.to_string()),
                })?;
            let claims = self
                .extra_checks(id_token, &jwks, &response)
                .map_err(|error| RefreshError::SessionEnded(error.to_string()))?;
            if claims.subject != subject {
                return Err(RefreshError::SessionEnded(
                    "the refreshed ID token names another subject".into(),
                ));
            }
            id_token_text = Some(Secret::new(id_token.to_string()));
        }
        // Nothing to relay: the session cannot go on (its old refresh token may be spent).
        let access_token = AccessToken::new(response.access_token().secret().clone())
            .map_err(|error| RefreshError::SessionEnded(error.to_string()))?;
        let userinfo = if self.config.userinfo {
            match self.userinfo(&access_token, subject).await {
                Ok(userinfo) => Some(userinfo),
                Err(OidcError::InvalidIdToken(reason)) => {
                    return Err(RefreshError::SessionEnded(reason));
                }
                Err(error) => {
                    tracing::warn!(%error, "UserInfo not fetched after a refresh; the claims the session has are kept");
                    None
                }
            }
        } else {
            None
        };
        let now = self.clock.unix_now();
        Ok(Refreshed {
            userinfo,
            tokens: Tokens {
                access_token,
                access_expires_at: access_expiry(&response, now),
                refresh_token: response
                    .refresh_token()
                    .map(|token| Secret::new(token.secret().clone()))
                    .or_else(|| previous.refresh_token.clone()),
                id_token: id_token_text,
                // RFC 6749 §6: without `scope`, the refreshed token has the scope it had.
                scope: granted_scope(&response).or_else(|| previous.scope.clone()),
            },
        })
    }

    /// The UserInfo response (OIDC Core §5.3) for `access_token`, as JSON object text. Its
    /// `sub` must be `subject` (§5.3.2), else it is refused; a signed or encrypted response
    /// (`application/jwt`) is refused too: only plain JSON over TLS is read.
    pub async fn userinfo(
        &self,
        access_token: &AccessToken,
        subject: &str,
    ) -> Result<String, OidcError> {
        let discovered = self.ready()?;
        let endpoint = discovered.metadata.userinfo_endpoint().ok_or_else(|| {
            OidcError::BadResponse(
                "--userinfo: the provider's discovery document has no userinfo_endpoint".into(),
            )
        })?;
        let request = http::Request::get(endpoint.url().as_str())
            .header(http::header::AUTHORIZATION, access_token.bearer())
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|error| OidcError::BadResponse(error.to_string()))?;
        let response = self.http.execute(request).await.map_err(|error| {
            OidcError::Unreachable(format!("UserInfo: {}", error_chain(&error)))
        })?;
        let status = response.status();
        if status.is_server_error() {
            return Err(OidcError::Unreachable(format!(
                "UserInfo answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(OidcError::Refused {
                code: format!("UserInfo answered {status}"),
            });
        }
        let is_json = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.trim_start().starts_with("application/json"));
        if !is_json {
            return Err(OidcError::BadResponse(
                "UserInfo is not application/json (signed or encrypted UserInfo is not read)"
                    .into(),
            ));
        }
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(response.body())
                .map_err(|_| OidcError::BadResponse("UserInfo is not a JSON object".into()))?;
        if claims.get("sub").and_then(serde_json::Value::as_str) != Some(subject) {
            return Err(OidcError::InvalidIdToken(
                "UserInfo names another subject than the ID token".into(),
            ));
        }
        Ok(serde_json::Value::Object(claims).to_string())
    }

    /// A token of the gateway itself (client-credentials grant, RFC 6749 §4.4) with `scope`
    /// (space-separated; none asked for when empty).
    /// With `resource`, the token's audience is that resource (RFC 8707).
    pub async fn client_credentials(
        &self,
        scope: &str,
        resource: Option<&str>,
    ) -> Result<ClientToken, OidcError> {
        let discovered = self.ready()?;
        let client = self.client(&discovered)?;
        let http = self.http_fn();
        let mut request = client
            .exchange_client_credentials()
            .map_err(|error| OidcError::Discovery(error.to_string()))?;
        for scope in scope.split_ascii_whitespace() {
            request = request.add_scope(Scope::new(scope.to_owned()));
        }
        if let Some(resource) = resource {
            request = request.add_extra_param("resource", resource.to_owned());
        }
        let response = request.request_async(&http).await.map_err(token_error)?;
        let access_token = AccessToken::new(response.access_token().secret().clone())
            .map_err(|error| OidcError::BadResponse(error.to_string()))?;
        Ok(ClientToken {
            access_token,
            expires_at: access_expiry(&response, self.clock.unix_now()),
        })
    }

    /// A refresh-token grant, with `resource` when given (RFC 8707). A dead grant
    /// (`invalid_grant`, `unauthorized_client`) ends the session; any other refusal is
    /// [`RefreshError::Refused`]; the provider away is [`RefreshError::Transient`].
    async fn refresh_grant(
        &self,
        refresh_token: &Secret,
        resource: Option<&str>,
    ) -> Result<(Arc<Discovered>, CoreTokenResponse), RefreshError> {
        let discovered = self
            .ready()
            .map_err(|error| RefreshError::Transient(error.to_string()))?;
        let client = self
            .client(&discovered)
            .map_err(|error| RefreshError::Transient(error.to_string()))?;
        let http = self.http_fn();
        let token = RefreshToken::new(refresh_token.expose().to_owned());
        let mut request = client
            .exchange_refresh_token(&token)
            .map_err(|error| RefreshError::Transient(error.to_string()))?;
        if let Some(resource) = resource {
            request = request.add_extra_param("resource", resource.to_owned());
        }
        let response =
            request
                .request_async(&http)
                .await
                .map_err(|error| match token_error(error) {
                    OidcError::Refused { code }
                        if code == "invalid_grant" || code == "unauthorized_client" =>
                    {
                        RefreshError::SessionEnded(code)
                    }
                    OidcError::Refused { code } => RefreshError::Refused(code),
                    other => RefreshError::Transient(other.to_string()),
                })?;
        Ok((discovered, response))
    }

    /// An access token whose audience is `resource` alone (RFC 8707 §2.2: a refresh-token
    /// grant with `resource`), and the rotated refresh token when the provider rotated it.
    /// The ID token such a response may carry is not kept: the session's stays as it is.
    pub async fn resource_token(
        &self,
        refresh_token: &Secret,
        resource: &str,
    ) -> Result<ResourceGrant, RefreshError> {
        let (_, response) = self.refresh_grant(refresh_token, Some(resource)).await?;
        let access_token = AccessToken::new(response.access_token().secret().clone())
            .map_err(|error| RefreshError::Refused(error.to_string()))?;
        Ok(ResourceGrant {
            token: ResourceToken {
                resource: resource.to_owned(),
                access_token,
                expires_at: access_expiry(&response, self.clock.unix_now()),
            },
            refresh_token: response
                .refresh_token()
                .map(|token| Secret::new(token.secret().clone())),
        })
    }

    /// Revokes a refresh token at the provider's RFC 7009 revocation endpoint, if it has one.
    /// Best effort: failures are logged and otherwise ignored.
    ///
    /// Sent by hand rather than through oauth2's revocation request, which refuses plain-http
    /// endpoints even on loopback, where this gateway accepts them.
    pub async fn revoke(&self, refresh_token: &Secret) {
        let Some(discovered) = self.discovered() else {
            return;
        };
        let Some(endpoint) = discovered
            .metadata
            .additional_metadata()
            .revocation_endpoint
            .clone()
        else {
            return;
        };
        let Some(request) = self.revocation_request(&endpoint, refresh_token) else {
            return;
        };
        match self.http.execute(request).await {
            Ok(response) if response.status().is_success() => {
                tracing::debug!("refresh token revoked at the provider");
            }
            Ok(response) => tracing::warn!(
                status = response.status().as_u16(),
                "refresh token revocation refused; the local logout went ahead"
            ),
            Err(error) => tracing::warn!(
                error = %error_chain(&error),
                "refresh token revocation failed; the local logout went ahead"
            ),
        }
    }

    fn revocation_request(
        &self,
        endpoint: &Url,
        refresh_token: &Secret,
    ) -> Option<http::Request<Vec<u8>>> {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", refresh_token.expose())
            .append_pair("token_type_hint", "refresh_token");
        let mut request = http::Request::post(endpoint.as_str())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json");
        match &self.config.client_secret {
            Some(secret) => {
                // RFC 6749 §2.3.1: form-encode both parts before base64.
                let encode = |text: &str| -> String {
                    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
                };
                let credentials = format!(
                    "{}:{}",
                    encode(&self.config.client_id),
                    encode(secret.expose())
                );
                request = request.header(
                    http::header::AUTHORIZATION,
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(credentials)
                    ),
                );
            }
            None => {
                form.append_pair("client_id", &self.config.client_id);
            }
        }
        request.body(form.finish().into_bytes()).ok()
    }

    /// The provider's current signing keys, once discovered.
    pub fn signing_keys(&self) -> Option<CoreJsonWebKeySet> {
        let discovered = self.discovered()?;
        let keys = discovered.jwks.read_locked().clone();
        Some(keys)
    }

    /// Fetches the signing keys again (after a rotation), sharing one fetch between callers.
    pub async fn refetch_signing_keys(&self) -> Result<CoreJsonWebKeySet, OidcError> {
        let discovered = self.ready()?;
        let seen = discovered.jwks.read_locked().clone();
        self.refetch_jwks(&discovered, &seen).await
    }

    /// The provider's end-session URL for RP-initiated logout, when it has one.
    pub fn end_session_url(&self, id_token_hint: Option<&Secret>) -> Option<Url> {
        let discovered = self.discovered()?;
        let mut url = discovered
            .metadata
            .additional_metadata()
            .end_session_endpoint
            .clone()?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(hint) = id_token_hint {
                query.append_pair("id_token_hint", hint.expose());
            }
            query
                .append_pair(
                    "post_logout_redirect_uri",
                    self.config.post_logout_redirect_uri.as_str(),
                )
                .append_pair("client_id", &self.config.client_id);
        }
        Some(url)
    }
}

type LoginClient = openidconnect::Client<
    openidconnect::EmptyAdditionalClaims,
    CoreAuthDisplay,
    openidconnect::core::CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    openidconnect::core::CoreAuthPrompt,
    openidconnect::StandardErrorResponse<CoreErrorResponseType>,
    CoreTokenResponse,
    openidconnect::core::CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    openidconnect::core::CoreRevocationErrorResponse,
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// Every endpoint the discovery document names must use https. Plain http is accepted only on
/// loopback, and only when the issuer itself is a loopback (development) one: behind an https
/// issuer, an `http://127.0.0.1:…` token endpoint would receive the client secret and the codes
/// in clear from whatever listens on that port.
fn check_endpoints(issuer: &str, endpoints: &[(&str, Option<&Url>)]) -> Result<(), OidcError> {
    let development = Url::parse(issuer).is_ok_and(|issuer| is_loopback_host(&issuer));
    for (name, url) in endpoints {
        let Some(url) = url else {
            continue;
        };
        let allowed = match url.scheme() {
            "https" => true,
            "http" => development && is_loopback_host(url),
            _ => false,
        };
        if !allowed {
            return Err(OidcError::Discovery(format!(
                "{name} {url} must use https (plain http only on loopback, with a loopback issuer)"
            )));
        }
    }
    Ok(())
}

/// The login uses PKCE with S256: a provider that lists its methods without S256 would ignore
/// or refuse the challenge, leaving stolen codes redeemable.
fn check_pkce(methods: Option<&[String]>) -> Result<(), OidcError> {
    match methods {
        Some(methods) if !methods.iter().any(|method| method == "S256") => {
            Err(OidcError::Discovery(
                "code_challenge_methods_supported does not list S256, which the gateway's PKCE \
                 needs"
                    .into(),
            ))
        }
        _ => Ok(()),
    }
}

fn token_error(
    error: RequestTokenError<
        HttpClientError,
        openidconnect::StandardErrorResponse<CoreErrorResponseType>,
    >,
) -> OidcError {
    match error {
        RequestTokenError::ServerResponse(response) => OidcError::Refused {
            code: response.error().as_ref().to_owned(),
        },
        RequestTokenError::Request(error) => OidcError::Unreachable(error_chain(&error)),
        RequestTokenError::Parse(error, _body) => OidcError::BadResponse(error.to_string()),
        RequestTokenError::Other(reason) => OidcError::BadResponse(reason),
    }
}

fn access_expiry(response: &CoreTokenResponse, now: u64) -> Option<u64> {
    if let Some(expires_in) = response.expires_in() {
        return Some(now.saturating_add(expires_in.as_secs()));
    }
    // No expires_in: use the access token's own `exp` when it is a JWT. Unverified, and only
    // used to decide when to refresh, never to trust anything.
    crate::jwt::unverified_exp(response.access_token().secret())
}

/// Claims read from an ID token whose signature has already been verified.
struct PayloadClaims {
    subject: String,
    sid: Option<String>,
    azp: Option<String>,
    at_hash: Option<String>,
}

impl PayloadClaims {
    fn from_verified(id_token: &str) -> Result<Self, OidcError> {
        let payload = unverified_claims(id_token)
            .ok_or_else(|| OidcError::InvalidIdToken("payload is not a JSON object".into()))?;
        let text = |name: &str| {
            payload
                .get(name)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let subject = text("sub")
            .filter(|sub| !sub.is_empty())
            .ok_or_else(|| OidcError::InvalidIdToken("missing sub".into()))?;
        Ok(Self {
            sid: text("sid"),
            azp: text("azp"),
            at_hash: text("at_hash"),
            subject,
        })
    }
}

/// The scope a token response names, space-separated, if it names one.
fn granted_scope(response: &CoreTokenResponse) -> Option<String> {
    let scopes = response.scopes()?;
    Some(
        scopes
            .iter()
            .map(|scope| scope.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Provider settings.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// Issuer URL exactly as configured (discovery must report the same string).
    pub issuer: String,
    /// Client id.
    pub client_id: String,
    /// Client secret; `None` for a public client.
    pub client_secret: Option<Secret>,
    /// Scopes, `openid` first.
    pub scopes: Vec<String>,
    /// Scopes of the gateway's own client-credentials token (`--client-scopes`).
    pub client_scopes: Vec<String>,
    /// Fetch UserInfo at login and at every refresh, and merge its claims (`--userinfo`).
    pub userinfo: bool,
    /// Extra authorization-request parameters.
    pub auth_params: Vec<(String, String)>,
    /// The callback path.
    pub callback_path: String,
    /// Public origin + callback path.
    pub redirect_uri: Url,
    /// Where the provider sends the browser after logout: public origin + `/`.
    pub post_logout_redirect_uri: Url,
    /// Extra CA certificates for outbound TLS.
    pub ca_file: Option<std::path::PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::{check_endpoints, check_pkce};

    #[test]
    fn an_untrusted_provider_certificate_points_to_ca_file() {
        let error = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        let text = error_chain(&error);
        assert!(
            text.starts_with("invalid peer certificate: UnknownIssuer"),
            "{text}"
        );
        assert!(text.contains("--ca-file"), "{text}");
        let other = error_chain(&std::io::Error::other("connection refused"));
        assert!(!other.contains("--ca-file"), "{other}");
    }

    #[test]
    fn endpoints_behind_an_https_issuer_must_all_be_https() {
        let url = |text: &str| url::Url::parse(text).expect("url");
        let (https, loopback, remote_http) = (
            url("https://idp.example/token"),
            url("http://127.0.0.1:9/token"),
            url("http://idp.example/token"),
        );
        assert!(check_endpoints("https://idp.example", &[("t", Some(&https))]).is_ok());
        assert!(check_endpoints("https://idp.example", &[("t", Some(&loopback))]).is_err());
        assert!(check_endpoints("https://idp.example", &[("t", Some(&remote_http))]).is_err());
        assert!(check_endpoints("http://127.0.0.1:8080", &[("t", Some(&loopback))]).is_ok());
        assert!(check_endpoints("http://127.0.0.1:8080", &[("t", Some(&remote_http))]).is_err());
        assert!(check_endpoints("https://idp.example", &[("t", None)]).is_ok());
        let message = check_endpoints(
            "https://idp.example",
            &[("end_session_endpoint", Some(&remote_http))],
        )
        .expect_err("refused")
        .to_string();
        assert!(message.contains("end_session_endpoint"), "{message}");
    }

    #[test]
    fn pkce_needs_s256_when_the_methods_are_listed() {
        assert!(check_pkce(None).is_ok());
        assert!(check_pkce(Some(&["S256".to_owned()])).is_ok());
        assert!(check_pkce(Some(&["plain".to_owned()])).is_err());
        assert!(check_pkce(Some(&[])).is_err());
    }

    use super::*;
    use crate::jwt::{unsigned as jwt, user_claims};

    #[test]
    fn user_claims_leave_protocol_claims_out() {
        let token =
            jwt(r#"{"sub":"u1","iss":"x","nonce":"n","sid":"s1","name":"Ann","roles":["a"]}"#);
        let claims = PayloadClaims::from_verified(&token).expect("claims");
        assert_eq!(claims.subject, "u1");
        assert_eq!(claims.sid.as_deref(), Some("s1"));
        let user = serde_json::Value::Object(user_claims(&token));
        assert_eq!(
            user,
            serde_json::json!({"sub":"u1","name":"Ann","roles":["a"]})
        );
    }

    #[test]
    fn a_token_without_sub_is_refused() {
        assert!(PayloadClaims::from_verified(&jwt(r#"{"name":"x"}"#)).is_err());
        assert!(PayloadClaims::from_verified(&jwt(r#"{"sub":""}"#)).is_err());
    }
}
