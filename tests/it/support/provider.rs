//! An in-process OpenID provider for fast integration tests of edge cases.
//!
//! It serves discovery, JWKS, authorize (the test user is signed in at once), token
//! (authorization_code with PKCE, refresh_token with optional rotation), revocation and
//! end-session, signs real RS256/ES256 ID tokens with the shared manual clock, and has knobs to
//! misbehave: tamper with the next ID tokens, rotate keys, fail refreshes, go down.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use oidc_bff::clock::{Clock, ManualClock};

use super::certs::TestCerts;
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "bff-client";
pub const CLIENT_SECRET: &str = "bff-secret";
pub const USER_SUB: &str = "alice";

/// Which algorithm a signing key uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Es256,
}

enum Material {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

struct SigningKey {
    kid: Option<String>,
    material: Material,
    published: bool,
}

impl SigningKey {
    fn generate(alg: Alg, kid: Option<String>) -> Self {
        let material = match alg {
            Alg::Rs256 => Material::Rsa(
                RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key"),
            ),
            Alg::Es256 => Material::Ec(
                EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("EC key"),
            ),
        };
        Self {
            kid,
            material,
            published: true,
        }
    }

    fn alg(&self) -> &'static str {
        match self.material {
            Material::Rsa(_) => "RS256",
            Material::Ec(_) => "ES256",
        }
    }

    fn jwk(&self) -> Value {
        let mut jwk = match &self.material {
            Material::Rsa(pair) => {
                let public = pair.public_key();
                json!({
                    "kty": "RSA", "use": "sig", "alg": "RS256",
                    "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                    "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
                })
            }
            Material::Ec(pair) => {
                let point = pair.public_key().as_ref();
                json!({
                    "kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                })
            }
        };
        if let Some(kid) = &self.kid {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.material {
            Material::Rsa(pair) => {
                let mut signature = vec![0u8; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, input, &mut signature)
                    .expect("RSA sign");
                signature
            }
            Material::Ec(pair) => pair.sign(&rng, input).expect("EC sign").as_ref().to_vec(),
        }
    }

    /// Bytes an attacker could use as an HMAC key: the public key as published.
    fn public_bytes(&self) -> Vec<u8> {
        self.jwk().to_string().into_bytes()
    }
}

/// Ways to spoil the ID tokens the provider issues.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Tamper {
    #[default]
    None,
    Issuer(String),
    Audience(Value),
    NoAudience,
    Expired,
    AlgNone,
    BadSignature,
    HmacWithPublicKey,
    NoSub,
    NoIat,
    Nonce(String),
    NoKid,
    Azp(String),
    AtHash(String),
    Subject(String),
    IssuedInFuture,
    /// Issue this access token instead of a random one.
    AccessToken(String),
}

/// A back-channel logout token to sign, and how to spoil it.
#[derive(Clone, Debug)]
pub struct LogoutSpec {
    pub sid: Option<String>,
    pub sub: Option<String>,
    pub aud: Value,
    pub iss: Option<String>,
    pub jti: String,
    pub with_events: bool,
    pub with_nonce: bool,
    pub bad_signature: bool,
    pub iat_offset: i64,
    /// The header's `typ`; `None` leaves it out.
    pub typ: Option<String>,
}

impl Default for LogoutSpec {
    fn default() -> Self {
        Self {
            sid: None,
            sub: Some(USER_SUB.into()),
            aud: json!(CLIENT_ID),
            iss: None,
            jti: random_token("jti-"),
            with_events: true,
            with_nonce: false,
            bad_signature: false,
            iat_offset: 0,
            typ: Some("logout+jwt".into()),
        }
    }
}

/// What the token endpoint does with the next refresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshFailure {
    InvalidGrant,
    Status(u16),
}

#[derive(Clone)]
struct CodeGrant {
    redirect_uri: String,
    nonce: String,
    challenge: String,
    sid: String,
    used: bool,
}

#[derive(Default)]
struct State {
    keys: Vec<SigningKey>,
    signing: usize,
    unusable_jwks: Vec<Value>,
    tamper: Tamper,
    refresh_tamper: Tamper,
    token_ttl: u64,
    /// Claims added to (or replacing) every ID token's from now on.
    extra_claims: serde_json::Map<String, Value>,
    /// When set, refresh tokens are JWTs carrying this lifetime as `exp` (as Keycloak's are).
    refresh_ttl: Option<u64>,
    rotate_refresh: bool,
    /// The `scope` every token response names from now on (none when `None`).
    granted_scope: Option<String>,
    /// Client-credentials grants: the scope each asked for, and the token it got.
    client_grants: Vec<(String, String)>,

    /// When set, client-credentials grants are refused with this OAuth error code.
    refuse_client_grants: Option<String>,
    /// Claims the UserInfo endpoint adds to `sub`.
    userinfo_claims: serde_json::Map<String, Value>,
    /// When set, UserInfo names this subject instead of the user's.
    userinfo_sub: Option<String>,
    /// UserInfo requests answered.
    userinfo_calls: usize,
    /// Resources refused with `invalid_target`.
    refused_resources: Vec<String>,
    /// The audience of each access token issued for a resource.
    audiences: HashMap<String, String>,
    /// The resources each authorization request named.
    authorize_resources: Vec<Vec<String>>,
    fail_next_refresh: Option<RefreshFailure>,
    down: bool,
    discovery_issuer: Option<String>,
    discovery_fields: Vec<(String, Value)>,
    advertise_iss: bool,
    callback_iss: Option<String>,
    codes: HashMap<String, CodeGrant>,
    refresh_tokens: HashMap<String, String>,
    counter: u64,
    issued_access_tokens: Vec<String>,
    issued_secrets: Vec<String>,
    token_grants: Vec<String>,
    revoked: Vec<String>,
    authorize_params: Vec<HashMap<String, String>>,
    sid_counter: u64,
}

/// Token-endpoint load, measured outside the state lock.
#[derive(Default)]
struct Gauges {
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
    delay_ms: std::sync::atomic::AtomicU64,
}

/// The running provider.
pub struct FakeProvider {
    pub issuer: String,
    state: Arc<Mutex<State>>,
    gauges: Arc<Gauges>,
    clock: Arc<ManualClock>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProvider {
    /// Starts a provider signing with one RS256 key.
    pub async fn start(clock: Arc<ManualClock>) -> Self {
        Self::start_with(clock, Alg::Rs256).await
    }

    /// Starts a provider signing with one key of `alg`.
    pub async fn start_with(clock: Arc<ManualClock>, alg: Alg) -> Self {
        Self::launch(clock, alg, None).await
    }

    /// Starts a provider serving https with the test certificate (issuer `https://127.0.0.1:…`).
    pub async fn start_tls(clock: Arc<ManualClock>, certs: &TestCerts) -> Self {
        Self::launch(clock, Alg::Rs256, Some(certs.acceptor(&[]))).await
    }

    async fn launch(
        clock: Arc<ManualClock>,
        alg: Alg,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind provider");
        let addr = listener.local_addr().expect("addr");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let issuer = format!("{scheme}://127.0.0.1:{}", addr.port());
        let state = Arc::new(Mutex::new(State {
            keys: vec![SigningKey::generate(alg, Some("key-1".into()))],
            token_ttl: 300,
            refresh_ttl: None,
            ..State::default()
        }));
        let gauges: Arc<Gauges> = Arc::default();
        let task = tokio::spawn({
            let state = Arc::clone(&state);
            let gauges = Arc::clone(&gauges);
            let clock = Arc::clone(&clock);
            let issuer = issuer.clone();
            async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let _ = tcp.set_nodelay(true);
                    let state = Arc::clone(&state);
                    let gauges = Arc::clone(&gauges);
                    let clock = Arc::clone(&clock);
                    let issuer = issuer.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        match tls {
                            Some(acceptor) => {
                                if let Ok(stream) = acceptor.accept(tcp).await {
                                    serve_connection(stream, state, gauges, clock, issuer).await;
                                }
                            }
                            None => serve_connection(tcp, state, gauges, clock, issuer).await,
                        }
                    });
                }
            }
        });
        Self {
            issuer,
            state,
            gauges,
            clock,
            task,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("provider state"))
    }

    /// Spoils every ID token from the code exchange until reset with `Tamper::None`.
    pub fn tamper(&self, tamper: Tamper) {
        self.with(|s| s.tamper = tamper);
    }

    /// Spoils ID tokens in refresh responses.
    pub fn tamper_refresh(&self, tamper: Tamper) {
        self.with(|s| s.refresh_tamper = tamper);
    }

    /// Refresh tokens issued from now on are JWTs that expire after this long.
    pub fn set_refresh_token_ttl(&self, seconds: u64) {
        self.with(|s| s.refresh_ttl = Some(seconds));
    }

    /// Puts `claims` (a JSON object) into every ID token issued from now on: groups, acr,
    /// another email…
    pub fn set_claims(&self, claims: Value) {
        let Value::Object(claims) = claims else {
            panic!("claims must be a JSON object");
        };
        self.with(|s| s.extra_claims = claims);
    }

    /// The `scope` every token response names from now on; `None`: responses name none.
    pub fn set_granted_scope(&self, scope: Option<&str>) {
        self.with(|s| s.granted_scope = scope.map(str::to_owned));
    }

    /// The client-credentials grants so far: (scope asked for, token issued).
    pub fn client_grants(&self) -> Vec<(String, String)> {
        self.with(|s| s.client_grants.clone())
    }

    /// Refuses client-credentials grants with `code` from now on (`None`: grants them).
    pub fn refuse_client_grants(&self, code: Option<&str>) {
        self.with(|s| s.refuse_client_grants = code.map(str::to_owned));
    }

    /// Claims (a JSON object) the UserInfo endpoint returns besides `sub`, from now on.
    pub fn set_userinfo(&self, claims: Value) {
        let Value::Object(claims) = claims else {
            panic!("claims must be a JSON object");
        };
        self.with(|s| s.userinfo_claims = claims);
    }

    /// UserInfo names `sub` instead of the user from now on (`None`: the user).
    pub fn set_userinfo_subject(&self, sub: Option<&str>) {
        self.with(|s| s.userinfo_sub = sub.map(str::to_owned));
    }

    /// Refuses tokens for `resource` with `invalid_target` from now on.
    pub fn refuse_resource(&self, resource: &str) {
        self.with(|s| s.refused_resources.push(resource.to_owned()));
    }

    /// The resource an access token was issued for (`None`: a broad token, or unknown).
    pub fn audience_of(&self, access_token: &str) -> Option<String> {
        self.with(|s| s.audiences.get(access_token).cloned())
    }

    /// The `resource` parameters of each authorization request so far.
    pub fn authorize_resources(&self) -> Vec<Vec<String>> {
        self.with(|s| s.authorize_resources.clone())
    }

    /// How many UserInfo requests were answered.
    pub fn userinfo_calls(&self) -> usize {
        self.with(|s| s.userinfo_calls)
    }

    /// Lifetime of access tokens (`expires_in`).
    pub fn set_token_ttl(&self, seconds: u64) {
        self.with(|s| s.token_ttl = seconds);
    }

    /// Rotate refresh tokens on every use (the old one stops working).
    pub fn rotate_refresh_tokens(&self, rotate: bool) {
        self.with(|s| s.rotate_refresh = rotate);
    }

    /// Makes the next refresh fail.
    pub fn fail_next_refresh(&self, failure: RefreshFailure) {
        self.with(|s| s.fail_next_refresh = Some(failure));
    }

    /// Every endpoint answers 503 while down.
    pub fn set_down(&self, down: bool) {
        self.with(|s| s.down = down);
    }

    /// Publishes a new signing key (and keeps the old one published) and signs with it.
    pub fn rotate_signing_key(&self, alg: Alg) {
        self.with(|s| {
            let kid = format!("key-{}", s.keys.len() + 1);
            s.keys.push(SigningKey::generate(alg, Some(kid)));
            s.signing = s.keys.len() - 1;
        });
    }

    /// Signs with a new key that the JWKS never shows (an attacker's key).
    pub fn sign_with_unpublished_key(&self, alg: Alg) {
        self.with(|s| {
            let kid = format!("key-{}", s.keys.len() + 1);
            let mut key = SigningKey::generate(alg, Some(kid));
            key.published = false;
            s.keys.push(key);
            s.signing = s.keys.len() - 1;
        });
    }

    /// Publishes a second key without a kid next to the first (and strips all kids).
    pub fn add_second_key_without_kids(&self) {
        self.with(|s| {
            for key in &mut s.keys {
                key.kid = None;
            }
            s.keys.push(SigningKey::generate(Alg::Rs256, None));
        });
    }

    /// Removes the kid from every published key.
    pub fn strip_kids(&self) {
        self.with(|s| {
            for key in &mut s.keys {
                key.kid = None;
            }
        });
    }

    /// Adds keys the gateway cannot use (unknown kty, encryption use) to the JWKS.
    pub fn add_unusable_jwks(&self) {
        self.with(|s| {
            s.unusable_jwks
                .push(json!({"kty": "OKP-unknown", "kid": "weird", "x": "AAAA"}));
            s.unusable_jwks
                .push(json!({"kty": "oct", "kid": "secret", "k": "c2VjcmV0"}));
        });
    }

    /// Discovery reports this issuer instead of the real one.
    pub fn set_discovery_issuer(&self, issuer: &str) {
        self.with(|s| s.discovery_issuer = Some(issuer.to_owned()));
    }

    /// Discovery reports `value` for `field` (added or replaced).
    pub fn set_discovery_field(&self, field: &str, value: Value) {
        self.with(|s| s.discovery_fields.push((field.to_owned(), value)));
    }

    /// Advertise RFC 9207 and send `iss` (its value: `None` means the real issuer).
    pub fn advertise_iss_parameter(&self, advertise: bool, value: Option<&str>) {
        self.with(|s| {
            s.advertise_iss = advertise;
            s.callback_iss = value.map(str::to_owned);
        });
    }

    /// Every grant type the token endpoint was asked for, in order.
    pub fn token_grants(&self) -> Vec<String> {
        self.with(|s| s.token_grants.clone())
    }

    /// How many refresh grants the token endpoint has seen.
    pub fn refresh_count(&self) -> usize {
        self.with(|s| {
            s.token_grants
                .iter()
                .filter(|g| *g == "refresh_token")
                .count()
        })
    }

    /// Tokens revoked at the revocation endpoint.
    pub fn revoked(&self) -> Vec<String> {
        self.with(|s| s.revoked.clone())
    }

    /// Every access, refresh and ID token issued so far.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.with(|s| s.issued_secrets.clone())
    }

    /// Slows every token request down (so that concurrency can be observed).
    pub fn set_token_delay(&self, delay: std::time::Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.gauges
            .delay_ms
            .store(millis, std::sync::atomic::Ordering::SeqCst);
    }

    /// The most token requests that were in flight at once.
    pub fn max_concurrent_token_requests(&self) -> usize {
        self.gauges
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forgets the concurrency seen so far.
    pub fn reset_max_concurrency(&self) {
        self.gauges
            .max_in_flight
            .store(0, std::sync::atomic::Ordering::SeqCst);
    }

    /// The provider session id of the most recent login.
    pub fn last_sid(&self) -> String {
        self.with(|s| format!("sid-{}", s.sid_counter))
    }

    /// A logout token signed with the current signing key.
    pub fn logout_token(&self, spec: &LogoutSpec) -> String {
        let now = i64::try_from(self.clock.unix_now()).expect("time") + spec.iat_offset;
        let mut claims = json!({
            "iss": spec.iss.clone().unwrap_or_else(|| self.issuer.clone()),
            "aud": spec.aud,
            "iat": now,
            "exp": now + 120,
            "jti": spec.jti,
        });
        if spec.with_events {
            claims["events"] = json!({"http://schemas.openid.net/event/backchannel-logout": {}});
        }
        if spec.with_nonce {
            claims["nonce"] = json!("n-0S6_WzA2Mj");
        }
        if let Some(sid) = &spec.sid {
            claims["sid"] = json!(sid);
        }
        if let Some(sub) = &spec.sub {
            claims["sub"] = json!(sub);
        }
        self.with(|s| {
            let key = &s.keys[s.signing];
            let mut header = json!({"alg": key.alg()});
            if let Some(typ) = &spec.typ {
                header["typ"] = json!(typ);
            }
            if let Some(kid) = &key.kid {
                header["kid"] = json!(kid);
            }
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let mut signature = key.sign(input.as_bytes());
            if spec.bad_signature {
                signature[0] ^= 0x55;
            }
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
        })
    }

    /// The most recent access token issued.
    pub fn last_access_token(&self) -> String {
        self.with(|s| {
            s.issued_access_tokens
                .last()
                .cloned()
                .expect("a token was issued")
        })
    }

    /// The query parameters of every authorize request.
    pub fn authorize_requests(&self) -> Vec<HashMap<String, String>> {
        self.with(|s| s.authorize_params.clone())
    }

    /// The shared clock.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// The shared clock, to hand to the gateway.
    pub fn shared_clock(&self) -> Arc<ManualClock> {
        Arc::clone(&self.clock)
    }
}

async fn serve_connection<I>(
    io: I,
    state: Arc<Mutex<State>>,
    gauges: Arc<Gauges>,
    clock: Arc<ManualClock>,
    issuer: String,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let state = Arc::clone(&state);
        let gauges = Arc::clone(&gauges);
        let clock = Arc::clone(&clock);
        let issuer = issuer.clone();
        async move {
            use std::sync::atomic::Ordering;
            let is_token = request.uri().path() == "/token";
            if is_token {
                let now = gauges.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                gauges.max_in_flight.fetch_max(now, Ordering::SeqCst);
                let delay = gauges.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                }
            }
            let response = handle(request, &state, &clock, &issuer).await;
            if is_token {
                gauges.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            Ok::<_, Infallible>(response)
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(body.into()))
        .expect("response")
}

fn json_response(status: u16, value: &Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", value.to_string())
}

fn oauth_error(code: &str) -> Response<Full<Bytes>> {
    json_response(400, &json!({"error": code}))
}

fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 24];
    aws_lc_rs::rand::fill(&mut bytes).expect("random");
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn s256(verifier: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

async fn handle(
    request: Request<Incoming>,
    state: &Mutex<State>,
    clock: &ManualClock,
    issuer: &str,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut state = state.lock().expect("provider state");
    if state.down {
        return respond(503, "text/plain", "down");
    }
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    match parts.uri.path() {
        "/.well-known/openid-configuration" => {
            let reported = state
                .discovery_issuer
                .clone()
                .unwrap_or_else(|| issuer.to_owned());
            let mut document = json!({
                    "issuer": reported,
                    "authorization_endpoint": format!("{issuer}/authorize"),
                    "token_endpoint": format!("{issuer}/token"),
                    "jwks_uri": format!("{issuer}/jwks"),
                    "end_session_endpoint": format!("{issuer}/end-session"),
                    "revocation_endpoint": format!("{issuer}/revoke"),
                    "userinfo_endpoint": format!("{issuer}/userinfo"),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                    "authorization_response_iss_parameter_supported": state.advertise_iss,
            });
            for (field, value) in &state.discovery_fields {
                document[field.as_str()] = value.clone();
            }
            json_response(200, &document)
        }
        "/jwks" => {
            let mut keys: Vec<Value> = state
                .keys
                .iter()
                .filter(|key| key.published)
                .map(SigningKey::jwk)
                .collect();
            keys.extend(state.unusable_jwks.iter().cloned());
            json_response(200, &json!({ "keys": keys }))
        }
        "/authorize" => {
            state.authorize_params.push(query.clone());
            let resources = parts
                .uri
                .query()
                .map(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .filter(|(key, _)| key == "resource")
                        .map(|(_, value)| value.into_owned())
                        .collect()
                })
                .unwrap_or_default();
            state.authorize_resources.push(resources);
            let (Some(redirect_uri), Some(state_param), Some(nonce), Some(challenge)) = (
                query.get("redirect_uri"),
                query.get("state"),
                query.get("nonce"),
                query.get("code_challenge"),
            ) else {
                return respond(400, "text/plain", "missing parameters");
            };
            if query.get("client_id").map(String::as_str) != Some(CLIENT_ID)
                || query.get("response_type").map(String::as_str) != Some("code")
                || query.get("code_challenge_method").map(String::as_str) != Some("S256")
            {
                return respond(400, "text/plain", "bad request");
            }
            let code = random_token("code-");
            state.sid_counter += 1;
            let sid = format!("sid-{}", state.sid_counter);
            state.codes.insert(
                code.clone(),
                CodeGrant {
                    redirect_uri: redirect_uri.clone(),
                    nonce: nonce.clone(),
                    challenge: challenge.clone(),
                    sid,
                    used: false,
                },
            );
            let mut location = url::Url::parse(redirect_uri).expect("redirect uri");
            location
                .query_pairs_mut()
                .append_pair("code", &code)
                .append_pair("state", state_param);
            if state.advertise_iss || state.callback_iss.is_some() {
                let iss = state
                    .callback_iss
                    .clone()
                    .unwrap_or_else(|| issuer.to_owned());
                location.query_pairs_mut().append_pair("iss", &iss);
            }
            Response::builder()
                .status(StatusCode::FOUND)
                .header("location", location.as_str())
                .body(Full::new(Bytes::new()))
                .expect("redirect")
        }
        "/token" => token(&mut state, &parts.headers, &body, clock, issuer),
        "/revoke" => {
            let form: HashMap<String, String> =
                url::form_urlencoded::parse(&body).into_owned().collect();
            if let Some(token) = form.get("token") {
                state.revoked.push(token.clone());
                state.refresh_tokens.remove(token);
            }
            respond(200, "text/plain", "")
        }
        "/end-session" => respond(200, "text/html", "<p>signed out</p>"),
        "/userinfo" => {
            let presented = parts
                .headers
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .unwrap_or_default();
            if !state.issued_access_tokens.iter().any(|t| t == presented) {
                return json_response(401, &json!({"error": "invalid_token"}));
            }
            state.userinfo_calls += 1;
            let mut claims = state.userinfo_claims.clone();
            let sub = state
                .userinfo_sub
                .clone()
                .unwrap_or_else(|| USER_SUB.to_owned());
            claims.insert("sub".into(), json!(sub));
            json_response(200, &Value::Object(claims))
        }
        _ => respond(404, "text/plain", "not found"),
    }
}

fn client_authenticated(headers: &http::HeaderMap) -> bool {
    let expected = format!(
        "Basic {}",
        STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    headers
        .get("authorization")
        .is_some_and(|value| value.as_bytes() == expected.as_bytes())
}

fn token(
    state: &mut State,
    headers: &http::HeaderMap,
    body: &[u8],
    clock: &ManualClock,
    issuer: &str,
) -> Response<Full<Bytes>> {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    state.token_grants.push(grant.clone());
    if !client_authenticated(headers) {
        return json_response(401, &json!({"error": "invalid_client"}));
    }
    let now = clock.unix_now();
    match grant.as_str() {
        "authorization_code" => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some(grant) = state.codes.get_mut(&code) else {
                return oauth_error("invalid_grant");
            };
            if grant.used {
                return oauth_error("invalid_grant");
            }
            grant.used = true;
            let grant = grant.clone();
            if form.get("redirect_uri") != Some(&grant.redirect_uri) {
                return oauth_error("invalid_grant");
            }
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            if s256(&verifier) != grant.challenge {
                return oauth_error("invalid_grant");
            }
            let tamper = state.tamper.clone();
            issue(
                state,
                now,
                issuer,
                Some(&grant.nonce),
                &grant.sid,
                &tamper,
                true,
            )
        }
        "refresh_token" => {
            if let Some(failure) = state.fail_next_refresh.take() {
                return match failure {
                    RefreshFailure::InvalidGrant => oauth_error("invalid_grant"),
                    RefreshFailure::Status(status) => respond(status, "text/plain", "failure"),
                };
            }
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            let Some(sid) = state.refresh_tokens.get(&presented).cloned() else {
                return oauth_error("invalid_grant");
            };
            let resource = form.get("resource").cloned();
            if let Some(resource) = &resource
                && state.refused_resources.contains(resource)
            {
                return oauth_error("invalid_target");
            }
            let rotate = state.rotate_refresh;
            if rotate {
                state.refresh_tokens.remove(&presented);
            }
            let tamper = state.refresh_tamper.clone();
            let response = issue(state, now, issuer, None, &sid, &tamper, rotate);
            if let Some(resource) = resource {
                let token = state
                    .issued_access_tokens
                    .last()
                    .cloned()
                    .expect("just issued");
                state.audiences.insert(token, resource);
            }
            response
        }
        "client_credentials" => {
            if let Some(code) = state.refuse_client_grants.clone() {
                return oauth_error(&code);
            }
            let scope = form.get("scope").cloned().unwrap_or_default();
            let token = random_token("cc-");
            state.client_grants.push((scope.clone(), token.clone()));
            if let Some(resource) = form.get("resource") {
                state.audiences.insert(token.clone(), resource.clone());
            }
            state.issued_secrets.push(token.clone());
            let mut body = json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": state.token_ttl,
            });
            if !scope.is_empty() {
                body["scope"] = json!(scope);
            }
            json_response(200, &body)
        }
        _ => oauth_error("unsupported_grant_type"),
    }
}

#[allow(clippy::too_many_arguments)] // test support: each argument is one knob of the token
fn issue(
    state: &mut State,
    now: u64,
    issuer: &str,
    nonce: Option<&str>,
    sid: &str,
    tamper: &Tamper,
    new_refresh_token: bool,
) -> Response<Full<Bytes>> {
    state.counter += 1;
    let subject = USER_SUB;
    let access_token = match tamper {
        Tamper::AccessToken(token) => token.clone(),
        _ => random_token("at-"),
    };
    let refresh_token = new_refresh_token.then(|| match state.refresh_ttl {
        // Keycloak-style: a JWT whose `exp` tells when it stops working.
        Some(ttl) => format!(
            "eyJhbGciOiJIUzI1NiJ9.{}.{}",
            URL_SAFE_NO_PAD.encode(json!({"exp": now + ttl, "jti": random_token("")}).to_string()),
            URL_SAFE_NO_PAD.encode(random_token("sig-"))
        ),
        None => random_token("rt-"),
    });
    if let Some(token) = &refresh_token {
        state.refresh_tokens.insert(token.clone(), sid.to_owned());
        state.issued_secrets.push(token.clone());
    }
    let at_hash = {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, access_token.as_bytes());
        URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16])
    };
    let mut claims = json!({
        "iss": issuer,
        "sub": subject,
        "aud": CLIENT_ID,
        "exp": now + 600,
        "iat": now,
        "sid": sid,
        "name": "Alice Example",
        "email": "alice@example.com",
        "at_hash": at_hash,
    });
    if let Some(nonce) = nonce {
        claims["nonce"] = json!(nonce);
    }
    for (name, value) in &state.extra_claims {
        claims[name.as_str()] = value.clone();
    }
    let key = &state.keys[state.signing];
    let mut header = json!({"alg": key.alg(), "typ": "JWT"});
    if let Some(kid) = &key.kid {
        header["kid"] = json!(kid);
    }
    match tamper {
        Tamper::None => {}
        Tamper::Issuer(iss) => claims["iss"] = json!(iss),
        Tamper::Audience(aud) => claims["aud"] = aud.clone(),
        Tamper::NoAudience => {
            claims.as_object_mut().expect("object").remove("aud");
        }
        Tamper::Expired => {
            claims["exp"] = json!(now - 10);
            claims["iat"] = json!(now - 700);
        }
        Tamper::NoSub => {
            claims.as_object_mut().expect("object").remove("sub");
        }
        Tamper::NoIat => {
            claims.as_object_mut().expect("object").remove("iat");
        }
        Tamper::Nonce(nonce) => claims["nonce"] = json!(nonce),
        Tamper::NoKid => {
            header.as_object_mut().expect("object").remove("kid");
        }
        Tamper::Azp(azp) => claims["azp"] = json!(azp),
        Tamper::AtHash(hash) => claims["at_hash"] = json!(hash),
        Tamper::Subject(sub) => claims["sub"] = json!(sub),
        Tamper::IssuedInFuture => claims["iat"] = json!(now + 3_600),
        Tamper::AlgNone => header["alg"] = json!("none"),
        Tamper::HmacWithPublicKey => header["alg"] = json!("HS256"),
        Tamper::BadSignature | Tamper::AccessToken(_) => {}
    }
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = match tamper {
        Tamper::AlgNone => Vec::new(),
        Tamper::HmacWithPublicKey => {
            let hmac_key =
                aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key.public_bytes());
            aws_lc_rs::hmac::sign(&hmac_key, signing_input.as_bytes())
                .as_ref()
                .to_vec()
        }
        Tamper::BadSignature => {
            let mut signature = key.sign(signing_input.as_bytes());
            signature[0] ^= 0x55;
            signature
        }
        _ => key.sign(signing_input.as_bytes()),
    };
    let id_token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature));
    state.issued_access_tokens.push(access_token.clone());
    state
        .issued_secrets
        .extend([access_token.clone(), id_token.clone()]);
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": state.token_ttl,
        "id_token": id_token,
    });
    if let Some(token) = refresh_token {
        body["refresh_token"] = json!(token);
    }
    if let Some(scope) = &state.granted_scope {
        body["scope"] = json!(scope);
    }
    json_response(200, &body)
}
