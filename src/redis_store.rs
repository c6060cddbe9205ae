//! Session records in Redis (`--store redis://…`), for several gateways sharing sessions.
//!
//! What is in Redis is what the redb file holds, and no more readable: sealed records (the
//! ticket key never leaves the gateways) and keyed hashes. Layout, under the prefix `obff:`:
//! - `obff:s:{ID}`: a hash per session (ID: creation ms and SHA-256 of the cookie key, in
//!   hex): `t` sealed ticket, `i` sealed ID token, `la` last access, `dl` deadline, `ub` keyed
//!   hash of the subject, `sd` keyed hash of the provider session id, `ra` refresh due time.
//!   It expires in Redis at its deadline, so Redis removes what the eviction sweep removes from
//!   the file.
//! - `obff:sub:HASH`, `obff:sid:HASH`: the sessions of a subject and of a provider session
//!   (keyed hashes), for back-channel logout and the admin command; they expire after the
//!   longest session they can hold, and members whose session is gone are dropped on lookup.
//! - `obff:refresh`: sorted set of refreshable sessions by access-token expiry (the refresh
//!   sweep's index), pruned as the sweep meets sessions that are gone.
//! - `obff:jti:HASH`: seen back-channel logout tokens, until they could no longer be accepted.
//! - `obff:key-check`: a keyed hash of a constant under the ticket key: a gateway with another
//!   key refuses to start rather than read nothing and write what the others cannot read.
//! - channel `obff:invalidate`: the id of every session removed or replaced, so each gateway's
//!   cache drops it (see `tasks::invalidation_loop`).
//!
//! Index entries are written before the session and removed after it, so a session is never
//! live without being findable by a back-channel logout.

use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use fred::types::config::{ClusterDiscoveryPolicy, ReconnectPolicy, Server, ServerConfig};
use fred::types::{Expiration, SetOptions};

use crate::hex;
use crate::redis_url::{RedisTarget, Topology};
use crate::seal::Keyer;
use crate::session::{Secret, SessionId};
use crate::store::{DuePosition, Meta, Record, StoreError};

const PREFIX: &str = "obff:";
/// The channel that carries the ids of removed and replaced sessions.
pub(crate) const INVALIDATE_CHANNEL: &str = "obff:invalidate";
const REFRESH_INDEX: &str = "obff:refresh";
const KEY_CHECK: &str = "obff:key-check";

/// The fred configuration for `target`.
fn client_config(
    target: &RedisTarget,
    password: Option<&Secret>,
    tls: Option<&rustls::ClientConfig>,
) -> Config {
    let server = |(host, port): &(String, u16)| Server::new(host.as_str(), *port);
    let server = match &target.topology {
        Topology::Standalone(host, port) => ServerConfig::Centralized {
            server: Server::new(host.as_str(), *port),
        },
        Topology::Cluster(nodes) => ServerConfig::Clustered {
            hosts: nodes.iter().map(server).collect(),
            policy: ClusterDiscoveryPolicy::default(),
        },
        Topology::Sentinel { sentinels, service } => ServerConfig::Sentinel {
            hosts: sentinels.iter().map(server).collect(),
            service_name: service.clone(),
        },
    };
    Config {
        server,
        username: target.username.clone(),
        password: password.map(|password| password.expose().to_owned()),
        database: target.database,
        tls: tls.filter(|_| target.tls).map(|tls| tls.clone().into()),
        // The first connection's failures come back to `connect`, which retries and logs.
        fail_fast: true,
        ..Config::default()
    }
}

/// The session records in Redis.
pub struct RedisRecords {
    client: Client,
    /// Whether Redis answered the last health check (see `tasks::store_health_loop`).
    up: std::sync::atomic::AtomicBool,
    /// The absolute session lifetime: how long an identity set must outlive its newest entry.
    lifetime: Duration,
    /// The idle timeout: a touch or a refresh moves the deadline to last access plus this.
    idle: Duration,
    /// Sessions counted by the last [`RedisRecords::recount`]; `u64::MAX` before the first.
    counted: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RedisRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRecords").finish_non_exhaustive()
    }
}

/// A Redis failure, for the log (never a record's contents).
fn redis_error(error: Error) -> StoreError {
    StoreError::Redis(error.to_string())
}

/// What `obff:key-check` holds for a ticket key: a keyed hash of a constant.
fn key_fingerprint(keyer: &Keyer) -> String {
    hex::encode(&keyer.hash("store-key-check", b"oidc-bff session store"))
}

fn session_key(id: SessionId) -> String {
    format!("{PREFIX}s:{{{}}}", id.to_hex())
}

fn identity_key(kind: &str, hash: [u8; 32]) -> String {
    format!("{PREFIX}{kind}:{}", hex::encode(&hash))
}

fn id_from_bytes(bytes: &[u8]) -> Option<SessionId> {
    Some(SessionId::from_bytes(bytes.try_into().ok()?))
}

fn id_from_key(key: &str) -> Option<SessionId> {
    SessionId::from_hex(key.strip_prefix("obff:s:{")?.strip_suffix('}')?)
}

/// Writes a session's hash and its expiry in one step (one key, so a cluster takes it too).
/// KEYS[1] the session; ARGV: deadline, then field, value pairs. A field with an empty value
/// is deleted instead (a session without an ID token).
const WRITE_SESSION: &str = r"
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] ~= '' then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('EXPIREAT', KEYS[1], ARGV[1])
return 1";

/// Adds a session to an identity set and makes the set outlive it: its expiry moves later,
/// never earlier (a set without one gets one). KEYS[1] the set; ARGV: the session id, the
/// Unix second to keep the set until.
const ADD_IDENTITY: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('EXPIRETIME', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('EXPIREAT', KEYS[1], ARGV[2])
end
return 1";

/// Replaces a live session's ticket after a refresh; 0 when it is gone (never resurrect it).
/// KEYS[1] the session; ARGV: expires_at, idle seconds, ticket, ID token ('' keeps the old
/// one), refresh due ('' for none). The deadline follows from the last access recorded there.
const REPLACE_TICKET: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local last = tonumber(redis.call('HGET', KEYS[1], 'la'))
local deadline = math.min(tonumber(ARGV[1]), last + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 't', ARGV[3], 'dl', deadline)
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'i', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'ra', ARGV[5]) else redis.call('HDEL', KEYS[1], 'ra') end
redis.call('EXPIREAT', KEYS[1], deadline)
return 1";

/// Records a last access on a live session; nothing for a gone one. KEYS[1] the session;
/// ARGV: last access, deadline.
const TOUCH: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'la', ARGV[1], 'dl', ARGV[2])
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return 1";

fn number(value: Option<Bytes>) -> Option<u64> {
    std::str::from_utf8(value.as_deref()?).ok()?.parse().ok()
}

fn hash32(value: Option<Bytes>) -> Option<[u8; 32]> {
    value.as_deref()?.try_into().ok()
}

impl RedisRecords {
    /// Connects to `target` (waiting for it, retrying with backoff) and checks that the store
    /// was written under the same ticket key, or claims it for this key when it is new.
    pub async fn connect(
        target: &RedisTarget,
        password: Option<&Secret>,
        tls: Option<&rustls::ClientConfig>,
        keyer: &Keyer,
        lifetime: Duration,
        idle: Duration,
    ) -> Result<Self, StoreError> {
        // The first connection is retried here, saying so, rather than inside the client: an
        // operator starting a node while Redis is away sees why it does not serve yet.
        let mut delay = Duration::from_millis(250);
        let client = loop {
            let client = Builder::from_config(client_config(target, password, tls))
                .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
                .with_connection_config(|config| {
                    config.connection_timeout = Duration::from_secs(3);
                    config.internal_command_timeout = Duration::from_secs(3);
                })
                .with_performance_config(|config| {
                    config.default_command_timeout = Duration::from_secs(3);
                })
                .build()
                .map_err(redis_error)?;
            match client.init().await {
                Ok(_) => break client,
                Err(error) => {
                    tracing::warn!(
                        store = %target.display(),
                        %error,
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        "the session store does not answer; the gateway serves once it does"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let records = Self {
            client,
            up: std::sync::atomic::AtomicBool::new(true),
            lifetime,
            idle,
            counted: std::sync::atomic::AtomicU64::new(u64::MAX),
        };
        records.check_key(keyer).await?;
        Ok(records)
    }

    /// For `check-config`: connects once (no retry) and reads, without writing anything,
    /// whether the store is new, or was claimed by this ticket key (`keyer`, when the key file
    /// exists yet) or another. The answer is a line for the operator.
    pub(crate) async fn probe(
        target: &RedisTarget,
        password: Option<&Secret>,
        tls: Option<&rustls::ClientConfig>,
        keyer: Option<&Keyer>,
    ) -> Result<String, StoreError> {
        let client = Builder::from_config(client_config(target, password, tls))
            .with_connection_config(|config| {
                config.connection_timeout = Duration::from_secs(5);
            })
            .with_performance_config(|config| {
                config.default_command_timeout = Duration::from_secs(5);
            })
            .build()
            .map_err(redis_error)?;
        client.init().await.map_err(redis_error)?;
        let stored: Option<String> = client.get(KEY_CHECK).await.map_err(redis_error)?;
        let _ = client.quit().await;
        let store = target.display();
        Ok(match (stored, keyer) {
            (None, _) => format!("--store {store}: reachable, no sessions yet"),
            (Some(_), None) => format!(
                "--store {store}: reachable, holds sessions; the first start checks the ticket key"
            ),
            (Some(stored), Some(keyer)) if stored == key_fingerprint(keyer) => {
                format!("--store {store}: reachable, its sessions are sealed with this ticket key")
            }
            (Some(_), Some(_)) => return Err(StoreError::OtherKey),
        })
    }

    /// Whether Redis answered the last health check.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fails at once while Redis is known to be away, instead of after a command timeout.
    fn ensure_up(&self) -> Result<(), StoreError> {
        if self.is_up() {
            Ok(())
        } else {
            Err(StoreError::Unavailable)
        }
    }

    /// Asks Redis for a PING within `within`; records and returns whether it answered, and
    /// whether that changed.
    pub(crate) async fn check(&self, within: Duration) -> (bool, bool) {
        let answered = matches!(
            tokio::time::timeout(within, self.client.ping::<String>(None)).await,
            Ok(Ok(_))
        );
        let before = self.up.swap(answered, std::sync::atomic::Ordering::Relaxed);
        (answered, before != answered)
    }

    /// A second connection for the invalidation channel (a subscribed connection can send
    /// nothing else).
    pub fn subscriber(&self) -> Client {
        self.client.clone_new()
    }

    /// The client, for connection events and health checks.
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn check_key(&self, keyer: &Keyer) -> Result<(), StoreError> {
        let fingerprint = key_fingerprint(keyer);
        let _: Option<String> = self
            .client
            .set(
                KEY_CHECK,
                fingerprint.as_str(),
                None,
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(redis_error)?;
        let stored: Option<String> = self.client.get(KEY_CHECK).await.map_err(redis_error)?;
        if stored.as_deref() != Some(fingerprint.as_str()) {
            return Err(StoreError::OtherKey);
        }
        Ok(())
    }

    /// Tells every gateway (this one too) that a session was removed or replaced.
    async fn announce(&self, id: SessionId, removed: bool) {
        let mut message = Vec::with_capacity(41);
        message.push(if removed { b'r' } else { b'u' });
        message.extend_from_slice(&id.to_bytes());
        let sent: Result<i64, Error> = self.client.publish(INVALIDATE_CHANNEL, message).await;
        if let Err(error) = sent {
            // The other gateways' caches keep the session until their entries expire.
            tracing::warn!(session = %id, %error, "session invalidation not published");
        }
    }

    /// Stores a session (its identity entries first, so it is findable as soon as it exists).
    pub async fn insert(
        &self,
        id: SessionId,
        sealed: &[u8],
        id_token: Option<&[u8]>,
        meta: Meta,
    ) -> Result<(), StoreError> {
        self.ensure_up()?;
        let member = id.to_bytes().to_vec();
        let keep_until = meta
            .deadline
            .max(meta.last_access)
            .saturating_add(self.lifetime.as_secs());
        let mut identities = vec![identity_key("sub", meta.subject)];
        identities.extend(meta.provider_sid.map(|sid| identity_key("sid", sid)));
        for key in identities {
            let _: i64 = self
                .client
                .eval(
                    ADD_IDENTITY,
                    vec![key],
                    vec![member.clone(), keep_until.to_string().into_bytes()],
                )
                .await
                .map_err(redis_error)?;
        }
        if let Some(at) = meta.refresh_at {
            let _: i64 = self
                .client
                .zadd(REFRESH_INDEX, None, None, false, false, (at as f64, member))
                .await
                .map_err(redis_error)?;
        }
        let fields: Vec<Value> = vec![
            Value::from(meta.deadline.to_string()),
            "t".into(),
            Value::Bytes(Bytes::copy_from_slice(sealed)),
            "i".into(),
            Value::Bytes(Bytes::copy_from_slice(id_token.unwrap_or_default())),
            "la".into(),
            meta.last_access.to_string().into(),
            "dl".into(),
            meta.deadline.to_string().into(),
            "ub".into(),
            Value::Bytes(Bytes::copy_from_slice(&meta.subject)),
            "sd".into(),
            Value::Bytes(Bytes::copy_from_slice(
                meta.provider_sid.as_ref().map_or(&[][..], |sid| &sid[..]),
            )),
            "ra".into(),
            meta.refresh_at
                .map_or_else(String::new, |at| at.to_string())
                .into(),
        ];
        let _: i64 = self
            .client
            .eval(WRITE_SESSION, vec![session_key(id)], fields)
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    /// One session's record.
    pub async fn get(&self, id: SessionId) -> Result<Option<Record>, StoreError> {
        self.ensure_up()?;
        let values: Vec<Option<Bytes>> = self
            .client
            .hmget(session_key(id), vec!["t", "la", "dl", "ub", "sd", "ra"])
            .await
            .map_err(redis_error)?;
        let mut values = values.into_iter();
        let mut next = || values.next().flatten();
        let Some(sealed) = next() else {
            return Ok(None);
        };
        let (last_access, deadline, subject, provider_sid, refresh_at) =
            (next(), next(), next(), next(), next());
        let meta = Meta {
            last_access: number(last_access).ok_or(StoreError::MalformedRow(id))?,
            deadline: number(deadline).ok_or(StoreError::MalformedRow(id))?,
            subject: hash32(subject).ok_or(StoreError::MalformedRow(id))?,
            provider_sid: hash32(provider_sid),
            refresh_at: number(refresh_at),
        };
        Ok(Some(Record {
            sealed: sealed.to_vec(),
            meta,
        }))
    }

    /// One session's sealed ID token.
    pub async fn get_id_token(&self, id: SessionId) -> Result<Option<Vec<u8>>, StoreError> {
        self.ensure_up()?;
        let token: Option<Bytes> = self
            .client
            .hget(session_key(id), "i")
            .await
            .map_err(redis_error)?;
        Ok(token.map(|token| token.to_vec()))
    }

    /// Replaces a live session's ticket; false when it is gone.
    pub async fn replace_ticket(
        &self,
        id: SessionId,
        sealed: &[u8],
        id_token: Option<&[u8]>,
        refresh_at: Option<u64>,
        deadline: impl FnOnce(u64) -> u64,
    ) -> Result<bool, StoreError> {
        // The script works the deadline out from the last access stored in Redis, which
        // another gateway may have moved: `deadline` is min(expires_at, last + idle), and its
        // value at "no idle limit" is the absolute end.
        let expires_at = deadline(u64::MAX - self.idle.as_secs());
        let args: Vec<Value> = vec![
            expires_at.to_string().into(),
            self.idle.as_secs().to_string().into(),
            Value::Bytes(Bytes::copy_from_slice(sealed)),
            Value::Bytes(Bytes::copy_from_slice(id_token.unwrap_or_default())),
            refresh_at
                .map_or_else(String::new, |at| at.to_string())
                .into(),
        ];
        let replaced: i64 = self
            .client
            .eval(REPLACE_TICKET, vec![session_key(id)], args)
            .await
            .map_err(redis_error)?;
        let member = id.to_bytes().to_vec();
        match refresh_at {
            Some(at) if replaced == 1 => {
                let _: i64 = self
                    .client
                    .zadd(REFRESH_INDEX, None, None, false, false, (at as f64, member))
                    .await
                    .map_err(redis_error)?;
            }
            _ => {
                let _: i64 = self
                    .client
                    .zrem(REFRESH_INDEX, member)
                    .await
                    .map_err(redis_error)?;
            }
        }
        self.announce(id, false).await;
        Ok(replaced == 1)
    }

    /// Records last accesses (one script per session, sent together).
    pub async fn touch(&self, touches: &[crate::store::Touch]) -> Result<(), StoreError> {
        self.ensure_up()?;
        // Sent together: the client writes concurrent commands back to back on its connection.
        let scripts = touches.iter().map(|touch| {
            self.client.eval::<i64, _, _, _>(
                TOUCH,
                vec![session_key(touch.id)],
                vec![touch.last_access.to_string(), touch.deadline.to_string()],
            )
        });
        futures_util::future::try_join_all(scripts)
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    /// Removes sessions (then their refresh entries); how many existed. Every gateway's cache
    /// is told.
    pub async fn remove_many(&self, ids: &[SessionId]) -> Result<usize, StoreError> {
        self.ensure_up()?;
        let mut removed = 0;
        for id in ids {
            let deleted: i64 = self
                .client
                .del(session_key(*id))
                .await
                .map_err(redis_error)?;
            removed += usize::from(deleted > 0);
            let _: i64 = self
                .client
                .zrem(REFRESH_INDEX, id.to_bytes().to_vec())
                .await
                .map_err(redis_error)?;
            self.announce(*id, true).await;
        }
        Ok(removed)
    }

    /// The live sessions of an identity (`kind` is `sub` or `sid`); entries whose session is
    /// gone are dropped.
    pub async fn by_identity(
        &self,
        kind: &str,
        hash: [u8; 32],
    ) -> Result<Vec<SessionId>, StoreError> {
        let key = identity_key(kind, hash);
        let members: Vec<Bytes> = self.client.smembers(&key).await.map_err(redis_error)?;
        self.live_members(members, |member| {
            let key = key.clone();
            async move {
                let _: i64 = self.client.srem(key, member).await.map_err(redis_error)?;
                Ok(())
            }
        })
        .await
    }

    /// Redis expires sessions itself: nothing is ever due here.
    pub async fn due(
        &self,
        _now: u64,
        _after: Option<DuePosition>,
        _limit: usize,
    ) -> Result<Vec<DuePosition>, StoreError> {
        Ok(Vec::new())
    }

    /// Up to `limit` live refreshable sessions whose access token expires by `until`; entries
    /// of sessions that are gone are dropped on the way.
    pub async fn refresh_due(
        &self,
        until: u64,
        limit: usize,
    ) -> Result<Vec<SessionId>, StoreError> {
        let members: Vec<Bytes> = self
            .client
            .zrangebyscore(
                REFRESH_INDEX,
                f64::NEG_INFINITY,
                until as f64,
                false,
                Some((0, i64::try_from(limit).unwrap_or(i64::MAX))),
            )
            .await
            .map_err(redis_error)?;
        self.live_members(members, |member| async move {
            let _: i64 = self
                .client
                .zrem(REFRESH_INDEX, member)
                .await
                .map_err(redis_error)?;
            Ok(())
        })
        .await
    }

    /// The sessions that still exist among index `members`; each member whose session is gone
    /// is handed to `drop_member`, which takes it out of its index.
    async fn live_members<F, Fut>(
        &self,
        members: Vec<Bytes>,
        drop_member: F,
    ) -> Result<Vec<SessionId>, StoreError>
    where
        F: Fn(Bytes) -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        let mut live = Vec::new();
        for member in members {
            let Some(id) = id_from_bytes(&member) else {
                continue;
            };
            let exists: i64 = self
                .client
                .exists(session_key(id))
                .await
                .map_err(redis_error)?;
            if exists > 0 {
                live.push(id);
            } else {
                drop_member(member).await?;
            }
        }
        Ok(live)
    }

    /// Every session key, page by page (on every master of a cluster); a key may come twice.
    fn session_keys(&self) -> impl futures_util::Stream<Item = Result<Key, Error>> + use<> {
        use futures_util::StreamExt;
        let pattern = format!("{PREFIX}s:*");
        if self.client.is_clustered() {
            self.client
                .scan_cluster_buffered(pattern, Some(1_000), None)
                .boxed()
        } else {
            self.client
                .scan_buffered(pattern, Some(1_000), None)
                .boxed()
        }
    }

    async fn session_ids(&self) -> Result<Vec<SessionId>, StoreError> {
        use futures_util::TryStreamExt;
        let keys: Vec<Key> = self
            .session_keys()
            .try_collect()
            .await
            .map_err(redis_error)?;
        let mut ids: Vec<SessionId> = keys
            .iter()
            .filter_map(|key| key.as_str().and_then(id_from_key))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Counts the sessions (a scan of every key, holding none of them: a key the scan meets
    /// twice, which only a rehash mid-scan causes, counts twice) for
    /// [`RedisRecords::last_count`].
    pub async fn recount(&self) -> Result<u64, StoreError> {
        use futures_util::TryStreamExt;
        let count = self
            .session_keys()
            .try_fold(0u64, |count, key| async move {
                Ok(count + u64::from(key.as_str().and_then(id_from_key).is_some()))
            })
            .await
            .map_err(redis_error)?;
        self.counted
            .store(count, std::sync::atomic::Ordering::Relaxed);
        Ok(count)
    }

    /// The sessions the last [`RedisRecords::recount`] found; `None` before it.
    pub fn last_count(&self) -> Option<u64> {
        let count = self.counted.load(std::sync::atomic::Ordering::Relaxed);
        (count != u64::MAX).then_some(count)
    }

    /// Up to `limit` sessions in creation order after `after` (the admin command: scans every
    /// session key, so it costs in proportion to the sessions stored).
    pub async fn list(
        &self,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<Vec<(SessionId, Record, Option<Vec<u8>>)>, StoreError> {
        let mut rows = Vec::new();
        for id in self
            .session_ids()
            .await?
            .into_iter()
            .filter(|id| after.is_none_or(|after| *id > after))
        {
            if rows.len() == limit {
                break;
            }
            if let Some(record) = self.get(id).await? {
                let id_token = self.get_id_token(id).await?;
                rows.push((id, record, id_token));
            }
        }
        Ok(rows)
    }

    /// Records a logout token's `jti` until `forget_after`; false when it was seen.
    pub async fn remember_logout_jti(
        &self,
        jti: [u8; 32],
        forget_after: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let until = forget_after.max(now.saturating_add(1));
        let set: Option<String> = self
            .client
            .set(
                identity_key("jti", jti),
                "1",
                Some(Expiration::EXAT(i64::try_from(until).unwrap_or(i64::MAX))),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(redis_error)?;
        Ok(set.is_some())
    }

    /// Number of sessions (scans every session key).
    pub async fn count(&self) -> Result<u64, StoreError> {
        Ok(self.session_ids().await?.len() as u64)
    }
}

/// How long a refresh lease lasts unless renewed: longer than one provider call (10 s).
const LEASE_TTL: Duration = Duration::from_secs(15);

/// How often a held lease is renewed.
const LEASE_RENEWAL: Duration = Duration::from_secs(5);

/// Extends a lease only for its owner. KEYS[1] the lease; ARGV: owner token, milliseconds.
const RENEW_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0";

/// Releases a lease only for its owner (an expired lease may have passed to another gateway).
const RELEASE_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// The right to refresh one session, held by one gateway at a time across the cluster: with
/// rotating refresh tokens, two gateways presenting the same one would end the session.
/// Renewed in the background while held; released when dropped.
pub(crate) struct Lease {
    client: Client,
    key: String,
    owner: String,
    renewal: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
        let (client, key, owner) = (self.client.clone(), self.key.clone(), self.owner.clone());
        // Released in the background: dropping cannot wait. Until then (or the lease's expiry)
        // the other gateways wait a little longer. Without a runtime (the process is ending)
        // the lease simply expires.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let released: Result<i64, Error> =
                client.eval(RELEASE_LEASE, vec![key], vec![owner]).await;
            if let Err(error) = released {
                tracing::debug!(%error, "refresh lease not released; it expires by itself");
            }
        });
    }
}

impl RedisRecords {
    /// Takes the refresh lease of a session, waiting (at most `wait`) while another gateway
    /// holds it. `None` when it could not be had in time.
    pub(crate) async fn lease(
        &self,
        id: SessionId,
        wait: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let key = format!("{PREFIX}lease:{{{}}}", id.to_hex());
        let owner = hex::encode(&crate::seal::random_bytes::<16>());
        let give_up = tokio::time::Instant::now() + wait;
        loop {
            let set: Option<String> = self
                .client
                .set(
                    &key,
                    owner.as_str(),
                    Some(Expiration::PX(
                        i64::try_from(LEASE_TTL.as_millis()).unwrap_or(i64::MAX),
                    )),
                    Some(SetOptions::NX),
                    false,
                )
                .await
                .map_err(redis_error)?;
            if set.is_some() {
                let renewal = tokio::spawn({
                    let (client, key, owner) = (self.client.clone(), key.clone(), owner.clone());
                    async move {
                        let mut ticks = tokio::time::interval(LEASE_RENEWAL);
                        ticks.tick().await;
                        loop {
                            ticks.tick().await;
                            let millis = LEASE_TTL.as_millis().to_string();
                            let renewed: Result<i64, Error> = client
                                .eval(RENEW_LEASE, vec![key.clone()], vec![owner.clone(), millis])
                                .await;
                            if !matches!(renewed, Ok(1)) {
                                tracing::warn!(
                                    "a refresh lease could not be renewed; another gateway may \
                                     start the same refresh"
                                );
                                return;
                            }
                        }
                    }
                });
                return Ok(Some(Lease {
                    client: self.client.clone(),
                    key,
                    owner,
                    renewal,
                }));
            }
            if tokio::time::Instant::now() >= give_up {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The session an invalidation message names, and whether it was removed (else replaced).
pub(crate) fn invalidated(message: &[u8]) -> Option<(SessionId, bool)> {
    let (&kind, id) = message.split_first()?;
    let removed = match kind {
        b'r' => true,
        b'u' => false,
        _ => return None,
    };
    Some((id_from_bytes(id)?, removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_carry_the_id_and_read_back() {
        let id = SessionId {
            created_ms: 1_700_000_000_123,
            hash: [0xab; 32],
        };
        let key = session_key(id);
        assert!(key.starts_with("obff:s:{0000018bcfe56"), "{key}");
        assert_eq!(id_from_key(&key), Some(id));
        assert_eq!(id_from_key("obff:s:{00}"), None);
        let message = |kind: u8| [&[kind][..], &id.to_bytes()].concat();
        assert_eq!(invalidated(&message(b'r')), Some((id, true)));
        assert_eq!(invalidated(&message(b'u')), Some((id, false)));
        assert_eq!(invalidated(&message(b'x')), None);
        assert_eq!(invalidated(b"rshort"), None);
    }
}
