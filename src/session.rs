//! The session domain, free of I/O: the cookie key, the id it is stored under, the ticket that
//! holds a session's tokens and claims, and the policy deciding when a session ends and when its
//! access token needs a refresh.
//!
//! Every token is a [`Secret`], whose `Debug` is redacted, so no log line can print one by
//! accident. Times are whole seconds since the Unix epoch; callers pass `now`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::seal::random_bytes;
use crate::sync::Locked;

/// A token, code or other secret string. `Debug` never shows the value.
///
/// Serialized compactly: a JWS compact serialization (`header.payload.signature`, what most
/// access and ID tokens are) is stored as its three base64url-decoded parts, a quarter smaller,
/// which lets two typical tickets share one 4 KiB database page. Anything else is stored as is.
/// Decoding re-encodes the parts, and only canonical base64url is ever split, so every token
/// round-trips byte for byte.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// How a [`Secret`] is written: as text, or as the three decoded parts of a JWS. The parts are
/// byte strings, which postcard reads without copying (a `Vec<u8>` would go byte by byte).
#[derive(Serialize)]
enum StoredSecretRef<'a> {
    Text(&'a str),
    Jws(&'a [u8], &'a [u8], &'a [u8]),
}

/// The reading side of [`StoredSecretRef`]: same variants, same order.
#[derive(Deserialize)]
enum StoredSecret<'a> {
    Text(String),
    Jws(&'a [u8], &'a [u8], &'a [u8]),
}

fn jws_parts(token: &str) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let [header, payload, signature] = crate::jwt::compact_parts(token)?;
    // The strict decoder rejects padding and non-canonical trailing bits, so re-encoding the
    // decoded bytes gives back exactly these strings.
    Some((
        URL_SAFE_NO_PAD.decode(header).ok()?,
        URL_SAFE_NO_PAD.decode(payload).ok()?,
        URL_SAFE_NO_PAD.decode(signature).ok()?,
    ))
}

fn serialize_token<S: serde::Serializer>(token: &str, serializer: S) -> Result<S::Ok, S::Error> {
    match jws_parts(token) {
        Some((header, payload, signature)) => {
            StoredSecretRef::Jws(&header, &payload, &signature).serialize(serializer)
        }
        None => StoredSecretRef::Text(token).serialize(serializer),
    }
}

/// Reads a token written by [`serialize_token`], appending it to `prefix`.
fn deserialize_token<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
    prefix: &str,
) -> Result<String, D::Error> {
    Ok(match StoredSecret::deserialize(deserializer)? {
        StoredSecret::Text(text) if prefix.is_empty() => text,
        StoredSecret::Text(text) => format!("{prefix}{text}"),
        StoredSecret::Jws(header, payload, signature) => {
            let mut text = String::with_capacity(
                prefix.len() + (header.len() + payload.len() + signature.len()) * 4 / 3 + 6,
            );
            text.push_str(prefix);
            // Every cold read of a session comes through here: the SIMD encoder (same alphabet,
            // same canonical output) takes a microsecond off each.
            let encoder = base64_simd::URL_SAFE_NO_PAD;
            encoder.encode_append(header, &mut text);
            text.push('.');
            encoder.encode_append(payload, &mut text);
            text.push('.');
            encoder.encode_append(signature, &mut text);
            text
        }
    })
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_token(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_token(deserializer, "").map(Secret)
    }
}

/// The access token, held as the `Authorization` header value it is relayed in
/// (`Bearer <token>`), so that relaying it costs a reference count instead of a formatted copy
/// and a validation per request. The value is marked sensitive: HTTP/2 never puts it in a
/// compression table. `Debug` never shows it; it is stored exactly like a [`Secret`].
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(http::HeaderValue);

/// An access token that cannot be relayed as a bearer token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the access token is empty or has characters a bearer token cannot carry")]
pub struct InvalidAccessToken;

impl AccessToken {
    const SCHEME: &'static str = "Bearer ";

    /// Wraps a token. It must be non-empty visible ASCII (RFC 6750's `b64token` is a subset):
    /// anything else could not be sent in a header, so it is refused when it arrives, not on
    /// every relayed request.
    pub fn new(token: impl Into<String>) -> Result<Self, InvalidAccessToken> {
        Self::from_header_text(format!("{}{}", Self::SCHEME, token.into()))
    }

    /// `Bearer <token>`, checked: a token of at least one byte, every one visible ASCII.
    fn from_header_text(text: String) -> Result<Self, InvalidAccessToken> {
        // No early exit, so the loop vectorizes: this runs on every cold session read.
        let mut invalid = text.len() == Self::SCHEME.len();
        for &byte in &text.as_bytes()[Self::SCHEME.len()..] {
            invalid |= byte.wrapping_sub(0x21) > 0x7e - 0x21;
        }
        if invalid {
            return Err(InvalidAccessToken);
        }
        let mut value = http::HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
            .map_err(|_| InvalidAccessToken)?;
        value.set_sensitive(true);
        Ok(Self(value))
    }

    /// The token itself, for the few places that must send it somewhere else.
    pub fn expose(&self) -> &str {
        // Checked to be ASCII when constructed, so this never falls back.
        std::str::from_utf8(&self.0.as_bytes()[Self::SCHEME.len()..]).unwrap_or_default()
    }

    /// The `Authorization` header value that relays it.
    pub fn bearer(&self) -> http::HeaderValue {
        self.0.clone()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for AccessToken {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_token(self.expose(), serializer)
    }
}

impl<'de> Deserialize<'de> for AccessToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::from_header_text(deserialize_token(deserializer, Self::SCHEME)?)
            .map_err(serde::de::Error::custom)
    }
}

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the few places that must send it somewhere.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The value in the browser's session cookie: its creation time in milliseconds and 256
/// random bits, shown as 54 base64url characters.
///
/// It is the only thing the browser holds. The server stores only the creation time and the
/// SHA-256 of the random part ([`SessionId`]), so a copy of the database yields no usable
/// cookie. The time prefix makes new sessions sort after old ones in the database, so they are
/// appended and pages stay full instead of being split at random places; it tells the holder
/// only when they logged in.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey {
    created_ms: u64,
    random: [u8; 32],
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey(<redacted>, id {})", self.id())
    }
}

impl SessionKey {
    /// Length of the cookie form.
    pub const ENCODED_LEN: usize = 54;

    /// A fresh random key for a session created at `created_ms` (milliseconds since the epoch);
    /// a new one for every login, so a key planted before login is useless.
    pub fn generate(created_ms: u64) -> Self {
        Self {
            created_ms,
            random: random_bytes(),
        }
    }

    /// Parses a cookie value. Anything but exactly 54 base64url characters is not a key.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != Self::ENCODED_LEN {
            return None;
        }
        // Decoded on the stack: every request with a cookie passes here.
        let mut decoded = [0u8; 42];
        let length = URL_SAFE_NO_PAD.decode_slice(text, &mut decoded).ok()?;
        let bytes: [u8; 40] = decoded.get(..length)?.try_into().ok()?;
        let mut created = [0u8; 8];
        created.copy_from_slice(&bytes[..8]);
        let mut random = [0u8; 32];
        random.copy_from_slice(&bytes[8..]);
        Some(Self {
            created_ms: u64::from_be_bytes(created),
            random,
        })
    }

    /// The cookie form.
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; 40];
        bytes[..8].copy_from_slice(&self.created_ms.to_be_bytes());
        bytes[8..].copy_from_slice(&self.random);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The id the session is stored under.
    pub fn id(&self) -> SessionId {
        let hash = digest::digest(&digest::SHA256, &self.random);
        let mut id = [0u8; 32];
        id.copy_from_slice(hash.as_ref());
        SessionId {
            created_ms: self.created_ms,
            hash: id,
        }
    }
}

/// Hashes the first eight bytes of the key's random part: random already, and only keys of
/// sessions that exist are ever stored in a map (see [`KeyIds`]).
impl std::hash::Hash for SessionKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.random[..8]);
        state.write_u64(u64::from_le_bytes(prefix));
    }
}

/// The ids of recently seen cookie keys, so that a busy session's requests skip the SHA-256
/// that turns its key into its id. Only keys of sessions that were found are remembered (made-up
/// cookies cannot fill it); at capacity it starts over. An entry can outlive its session, which
/// is harmless: the id is the one [`SessionKey::id`] gives, and then finds nothing. The keys
/// held here add nothing for someone able to read the process's memory, which holds the ticket
/// key and the tokens themselves; they never reach the file.
#[derive(Debug)]
pub struct KeyIds {
    ids: std::sync::Mutex<std::collections::HashMap<SessionKey, SessionId, IdHashing>>,
    capacity: usize,
}

impl KeyIds {
    /// Remembers at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            ids: std::sync::Mutex::default(),
            capacity,
        }
    }

    fn ids(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<SessionKey, SessionId, IdHashing>>
    {
        self.ids.locked()
    }

    /// The id of `key` if it was remembered.
    pub fn get(&self, key: &SessionKey) -> Option<SessionId> {
        self.ids().get(key).copied()
    }

    /// Remembers the id of the key of a session that was found.
    pub fn remember(&self, key: &SessionKey, id: SessionId) {
        let mut ids = self.ids();
        if ids.len() >= self.capacity {
            ids.clear();
        }
        ids.insert(key.clone(), id);
    }
}

/// Where a session is stored: its creation time and the SHA-256 of its key's random part. Its
/// `Debug` and `Display` show an 8-hex-digit prefix of the hash, enough to correlate log lines
/// and useless for anything else.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionId {
    /// Creation time, milliseconds since the epoch.
    pub created_ms: u64,
    /// SHA-256 of the key's random part.
    pub hash: [u8; 32],
}

impl SessionId {
    /// The 40-byte form: creation time (big-endian) then hash.
    pub fn to_bytes(&self) -> [u8; 40] {
        let mut bytes = [0u8; 40];
        bytes[..8].copy_from_slice(&self.created_ms.to_be_bytes());
        bytes[8..].copy_from_slice(&self.hash);
        bytes
    }

    /// The id of a 40-byte form ([`SessionId::to_bytes`]).
    pub fn from_bytes(bytes: &[u8; 40]) -> Self {
        let mut created = [0u8; 8];
        created.copy_from_slice(&bytes[..8]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&bytes[8..]);
        Self {
            created_ms: u64::from_be_bytes(created),
            hash,
        }
    }

    /// The whole id as 80 hex digits (Redis keys, the admin command).
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.to_bytes())
    }

    /// The id of 80 hex digits ([`SessionId::to_hex`]); `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        crate::hex::decode::<40>(text).map(|bytes| Self::from_bytes(&bytes))
    }
}

/// Hashes the first eight bytes of the SHA-256: already uniform, so maps need no more (equality
/// still compares everything). With [`IdHasher`], a lookup hashes nothing at all.
impl std::hash::Hash for SessionId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.hash[..8]);
        state.write_u64(u64::from_le_bytes(prefix));
    }
}

/// A hasher for maps keyed by [`SessionId`] that takes the id's hash prefix as it is. Only for
/// maps whose keys are ids of sessions the gateway created: no one can choose SHA-256 outputs
/// to make them collide. (Other writes are folded FNV-1a style, for completeness.)
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 ^= value;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds [`IdHasher`]s.
pub type IdHashing = std::hash::BuildHasherDefault<IdHasher>;

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.hash[..4] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// Tokens the provider issued for a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    /// The access token relayed to APIs.
    pub access_token: AccessToken,
    /// When the access token expires, if the provider said.
    pub access_expires_at: Option<u64>,
    /// The refresh token, if the provider issued one.
    pub refresh_token: Option<Secret>,
    /// The raw ID token, kept for `id_token_hint` at logout.
    pub id_token: Option<Secret>,
    /// The scope granted with the access token (space-separated): what the token response
    /// said, or at login the scope asked for when it said nothing (RFC 6749 §5.1). `None` for
    /// sessions stored before the gateway kept it.
    pub scope: Option<String>,
}

/// An access token whose audience is one resource (RFC 8707), sent only to the routes of that
/// resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceToken {
    /// The resource indicator (an absolute URI) the token was asked for.
    pub resource: String,
    /// The token.
    pub access_token: AccessToken,
    /// When it expires, if the provider said.
    pub expires_at: Option<u64>,
}

impl Tokens {
    /// Whether `scope` is one of the granted scopes.
    pub fn grants(&self, scope: &str) -> bool {
        crate::policy::scope_granted(self.scope.as_deref(), scope)
    }

    /// When these tokens can no longer be used or renewed: the later of the refresh token's
    /// expiry and the access token's. Known only when the refresh token carries its own `exp`
    /// (Keycloak's are JWTs); `None` otherwise, and for sessions without a refresh token.
    ///
    /// The refresh token is read without checking a signature: it came from the provider over
    /// TLS and the value is only ever used to end a session sooner, never to keep one longer.
    pub fn usable_until(&self) -> Option<u64> {
        let refresh_expiry = crate::jwt::unverified_exp(self.refresh_token.as_ref()?.expose())?;
        Some(refresh_expiry.max(self.access_expires_at.unwrap_or(0)))
    }
}

/// Everything the server keeps about one session (the seed's AuthenticationTicket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The provider's tokens.
    pub tokens: Tokens,
    /// The subject (`sub`) the provider authenticated.
    pub subject: String,
    /// The provider's session id (`sid`), used by back-channel logout.
    pub provider_sid: Option<String>,
    /// When the session was created.
    pub created_at: u64,
    /// The absolute end of the session, whatever its activity.
    pub expires_at: u64,
    /// Audience-bound access tokens, at most one per resource.
    pub resource_tokens: Vec<ResourceToken>,
    /// The UserInfo response (a JSON object) when `--userinfo` is on, merged over the ID
    /// token's claims.
    pub userinfo: Option<String>,
    /// What policies judge (claims and scope), worked out on first use and kept with this
    /// version of the ticket; never stored.
    #[serde(skip)]
    pub principal: Derived<Arc<crate::policy::Principal>>,
}

/// A value derived from a ticket, worked out at most once per ticket. A clone starts empty
/// (a changed ticket is a clone of the old one, so nothing derived can outlive what it came
/// from), and it takes no part in comparisons.
pub struct Derived<T>(std::sync::OnceLock<T>);

impl<T> Derived<T> {
    /// The value, once worked out.
    pub fn get(&self) -> Option<&T> {
        self.0.get()
    }

    /// Keeps `value` unless one is kept already (two requests may work it out at once; they
    /// derive the same value).
    pub fn keep(&self, value: T) {
        let _ = self.0.set(value);
    }
}

impl<T> Default for Derived<T> {
    fn default() -> Self {
        Self(std::sync::OnceLock::new())
    }
}

impl<T> Clone for Derived<T> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<T> PartialEq for Derived<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> Eq for Derived<T> {}

impl<T> fmt::Debug for Derived<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Derived(kept)"
        } else {
            "Derived(-)"
        })
    }
}

impl Ticket {
    /// The audience-bound token for `resource`, if the session holds one.
    pub fn resource_token(&self, resource: &str) -> Option<&ResourceToken> {
        self.resource_tokens
            .iter()
            .find(|token| token.resource == resource)
    }
}

/// Whether a token expiring at `expiry` (unknown: never) expires within `window` of `now`.
pub fn expires_within(expiry: Option<u64>, now: u64, window: Duration) -> bool {
    expiry.is_some_and(|expiry| now.saturating_add(window.as_secs()) >= expiry)
}

/// How long sessions live and when their tokens are refreshed.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    /// A session not used for this long ends.
    pub idle_timeout: Duration,
    /// A session ends this long after login, whatever its activity.
    pub lifetime: Duration,
    /// An access token expiring within this is refreshed before use.
    pub refresh_skew: Duration,
}

impl SessionPolicy {
    /// The absolute end of a session created at `now`.
    pub fn expires_at(&self, now: u64) -> u64 {
        now.saturating_add(self.lifetime.as_secs())
    }

    /// The absolute end of a session created at `created_at` that holds `tokens`: its lifetime,
    /// or sooner once its refresh token has expired and its access token is gone (a session that
    /// can no longer reach any API is ended rather than kept until the lifetime runs out).
    /// Recomputed at every refresh: a rotated refresh token may move it, never past the lifetime.
    pub fn end_of(&self, created_at: u64, tokens: &Tokens) -> u64 {
        let lifetime_end = self.expires_at(created_at);
        tokens
            .usable_until()
            .map_or(lifetime_end, |until| lifetime_end.min(until))
    }

    /// The moment a session ends: its absolute expiry or the end of its idle window, whichever
    /// comes first.
    pub fn deadline(&self, ticket: &Ticket, last_access: u64) -> u64 {
        self.deadline_from(ticket.expires_at, last_access)
    }

    /// [`SessionPolicy::deadline`] from a ticket's absolute expiry alone.
    pub fn deadline_from(&self, expires_at: u64, last_access: u64) -> u64 {
        expires_at.min(last_access.saturating_add(self.idle_timeout.as_secs()))
    }

    /// Whether the session is still valid at `now`.
    pub fn is_live(&self, ticket: &Ticket, last_access: u64, now: u64) -> bool {
        now < self.deadline(ticket, last_access)
    }

    /// Whether the access token must be refreshed before it is used at `now`.
    pub fn needs_refresh(&self, ticket: &Ticket, now: u64) -> bool {
        self.expires_within(ticket, now, self.refresh_skew)
    }

    /// Whether the access token is known to be valid at `now` (unknown expiry: not known).
    /// A failed refresh may still send such a token.
    pub fn access_token_valid(&self, ticket: &Ticket, now: u64) -> bool {
        ticket
            .tokens
            .access_expires_at
            .is_some_and(|expiry| now < expiry)
    }

    /// Whether the access token expires within `window` of `now` (unknown expiry: never).
    pub fn expires_within(&self, ticket: &Ticket, now: u64, window: Duration) -> bool {
        expires_within(ticket.tokens.access_expires_at, now, window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_key_ids_are_the_keys_own_and_bounded() {
        let memo = KeyIds::new(2);
        let keys: Vec<SessionKey> = (0..3).map(|n| SessionKey::generate(1_000 + n)).collect();
        assert_eq!(memo.get(&keys[0]), None);
        memo.remember(&keys[0], keys[0].id());
        memo.remember(&keys[1], keys[1].id());
        assert_eq!(memo.get(&keys[0]), Some(keys[0].id()));
        assert_eq!(memo.get(&keys[1]), Some(keys[1].id()));
        // Same random part, other creation time: another key, not found.
        let mut other = keys[0].clone();
        other.created_ms += 1;
        assert_eq!(memo.get(&other), None);
        // At capacity it starts over.
        memo.remember(&keys[2], keys[2].id());
        assert_eq!(memo.get(&keys[0]), None);
        assert_eq!(memo.get(&keys[2]), Some(keys[2].id()));
    }

    fn ticket(expires_at: u64, access_expires_at: Option<u64>) -> Ticket {
        Ticket {
            tokens: Tokens {
                access_token: AccessToken::new("at").expect("token"),
                access_expires_at,
                refresh_token: Some(Secret::new("rt")),
                id_token: None,
                scope: None,
            },
            subject: "alice".into(),
            provider_sid: None,
            created_at: 0,
            expires_at,
            resource_tokens: Vec::new(),
            userinfo: None,
            principal: Default::default(),
        }
    }

    /// A JWS-shaped token about as long as a real access token.
    fn sample_jws() -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode([7u8; 700]),
            URL_SAFE_NO_PAD.encode([9u8; 256])
        )
    }

    const POLICY: SessionPolicy = SessionPolicy {
        idle_timeout: Duration::from_secs(100),
        lifetime: Duration::from_secs(1_000),
        refresh_skew: Duration::from_secs(30),
    };

    #[test]
    fn tokens_round_trip_exactly_and_jws_tokens_are_stored_smaller() {
        let jws = sample_jws();
        for token in [
            jws.as_str(),
            "opaque-refresh-token",
            "a.b.c.d",
            "eyJh.Zm9v.",
            "x.y=.z",
            "Zm9=.Zm9v.Zm9v",
            "Zm9w.Zm9v.Zm9v",
            "",
        ] {
            let secret = Secret::new(token);
            let bytes = postcard::to_stdvec(&secret).expect("encode");
            let back: Secret = postcard::from_bytes(&bytes).expect("decode");
            assert_eq!(back.expose(), token, "round trip of {token:?}");
        }
        let stored = postcard::to_stdvec(&Secret::new(jws.clone())).expect("encode");
        assert!(
            stored.len() * 4 < jws.len() * 3 + 64,
            "{} vs {}",
            stored.len(),
            jws.len()
        );
    }

    #[test]
    fn access_tokens_round_trip_and_are_relayed_as_sensitive_bearer_values() {
        let jws = sample_jws();
        for token in [jws.as_str(), "opaque~token+/=", "a.b.c.d", "x.y=.z"] {
            let access = AccessToken::new(token).expect("valid");
            assert_eq!(access.expose(), token);
            let bearer = access.bearer();
            assert_eq!(bearer.as_bytes(), format!("Bearer {token}").as_bytes());
            assert!(bearer.is_sensitive(), "HTTP/2 must never index it");
            let bytes = postcard::to_stdvec(&access).expect("encode");
            // Stored exactly like any other secret: no prefix on disk.
            assert_eq!(
                bytes,
                postcard::to_stdvec(&Secret::new(token)).expect("encode")
            );
            let back: AccessToken = postcard::from_bytes(&bytes).expect("decode");
            assert_eq!(back.bearer(), bearer);
            assert!(back.bearer().is_sensitive());
            assert_eq!(format!("{back:?}"), "<redacted>");
        }
        // Header injection and unsendable values are refused when they arrive.
        for bad in [
            "",
            "a b",
            "a\r\nX-Evil: 1",
            "tab\there",
            "caf\u{e9}",
            "nul\0",
        ] {
            assert_eq!(AccessToken::new(bad), Err(InvalidAccessToken), "{bad:?}");
            let stored = postcard::to_stdvec(&Secret::new(bad)).expect("encode");
            assert!(
                postcard::from_bytes::<AccessToken>(&stored).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn session_key_round_trips_and_rejects_malformed_values() {
        let key = SessionKey::generate(1_700_000_000_000);
        let text = key.encode();
        assert_eq!(text.len(), SessionKey::ENCODED_LEN);
        assert_eq!(SessionKey::parse(&text), Some(key.clone()));
        assert_eq!(SessionKey::parse(&text[1..]), None);
        assert_eq!(SessionKey::parse(&format!("{text}A")), None);
        assert_eq!(SessionKey::parse(&"!".repeat(54)), None);
        assert_ne!(SessionKey::generate(1_700_000_000_000), key);
        assert_eq!(key.id().created_ms, 1_700_000_000_000);
    }

    #[test]
    fn later_sessions_sort_after_earlier_ones() {
        let early = SessionKey::generate(1_000).id();
        let late = SessionKey::generate(2_000).id();
        assert!(early < late);
        assert!(early.to_bytes() < late.to_bytes());
    }

    #[test]
    fn secrets_and_keys_are_redacted_in_debug_output() {
        let key = SessionKey::generate(5);
        assert!(!format!("{key:?}").contains(&key.encode()));
        let ticket = ticket(10, None);
        let printed = format!("{ticket:?}");
        assert!(!printed.contains("\"at\"") && !printed.contains("\"rt\""));
    }

    #[test]
    fn an_access_token_is_valid_only_before_a_known_expiry() {
        assert!(POLICY.access_token_valid(&ticket(1_000, Some(500)), 499));
        assert!(!POLICY.access_token_valid(&ticket(1_000, Some(500)), 500));
        assert!(
            !POLICY.access_token_valid(&ticket(1_000, None), 0),
            "an unknown expiry is not known to be valid"
        );
    }

    #[test]
    fn a_session_ends_at_idle_or_absolute_expiry_whichever_is_first() {
        let t = ticket(1_000, None);
        assert!(POLICY.is_live(&t, 0, 99));
        assert!(!POLICY.is_live(&t, 0, 100));
        assert!(POLICY.is_live(&t, 950, 999));
        assert!(!POLICY.is_live(&t, 950, 1_000));
    }

    #[test]
    fn refresh_is_due_within_the_skew() {
        assert!(!POLICY.needs_refresh(&ticket(1_000, Some(100)), 69));
        assert!(POLICY.needs_refresh(&ticket(1_000, Some(100)), 70));
        assert!(!POLICY.needs_refresh(&ticket(1_000, None), 10_000));
    }

    fn jwt(claims: &serde_json::Value) -> Secret {
        Secret::new(format!(
            "eyJhbGciOiJIUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        ))
    }

    #[test]
    fn a_session_ends_when_its_refresh_token_and_access_token_are_both_gone() {
        let policy = SessionPolicy {
            idle_timeout: Duration::from_secs(3_600),
            lifetime: Duration::from_secs(86_400),
            refresh_skew: Duration::from_secs(30),
        };
        let tokens = |refresh: Option<Secret>, access_expires_at| Tokens {
            access_token: AccessToken::new(String::from("at")).expect("token"),
            access_expires_at,
            refresh_token: refresh,
            id_token: None,
            scope: None,
        };
        let created = 1_000;
        // Refresh token valid until 5,000, access token until 1,300: ends at 5,000.
        let keycloak = tokens(Some(jwt(&serde_json::json!({"exp": 5_000}))), Some(1_300));
        assert_eq!(policy.end_of(created, &keycloak), 5_000);
        // The access token outlives the refresh token: the later one counts.
        let late_access = tokens(Some(jwt(&serde_json::json!({"exp": 5_000}))), Some(6_000));
        assert_eq!(policy.end_of(created, &late_access), 6_000);
        // Never past the lifetime.
        let long = tokens(Some(jwt(&serde_json::json!({"exp": 999_999}))), Some(1_300));
        assert_eq!(policy.end_of(created, &long), created + 86_400);
        // Unknown refresh expiry (opaque token, offline token without exp) or none: the lifetime.
        let opaque = tokens(
            Some(Secret::new(String::from("opaque-refresh"))),
            Some(1_300),
        );
        assert_eq!(policy.end_of(created, &opaque), created + 86_400);
        let no_exp = tokens(
            Some(jwt(&serde_json::json!({"typ": "Offline"}))),
            Some(1_300),
        );
        assert_eq!(policy.end_of(created, &no_exp), created + 86_400);
        assert_eq!(
            policy.end_of(created, &tokens(None, Some(1_300))),
            created + 86_400
        );
    }
}
