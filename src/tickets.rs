//! The ticket store: the seed's four operations (store, renew, retrieve, remove) over the LRU
//! cache and the redb file, done right.
//!
//! - A new random cookie key for every stored session; the database sees only its SHA-256.
//! - Records are `format byte || AES-256-GCM(postcard(ticket))`, the AEAD bound to the format
//!   byte and the session id, so a record moved to another row, sealed under another key or
//!   altered on disk is refused rather than trusted (or panicked on).
//! - Retrieve never writes on the hot path: last access is recorded at most once per session per
//!   touch interval, queued in memory and written in one batched transaction by
//!   [`TicketStore::flush_touches`].
//! - Renew and remove keep the cache in step with the file.
//!
//! Refreshing tokens is not done here (see `refresh.rs`); this module only stores what it is given.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::cache::{CachePolicy, CacheStats, Cached, TicketCache};
use crate::clock::{Clock, unix_seconds};
use crate::records::Records;
use crate::redis_store::RedisRecords;
use crate::seal::{KeyFileError, Keyer, MasterKey, Sealer};
use crate::session::{
    AccessToken, IdHashing, KeyIds, Secret, SessionId, SessionKey, SessionPolicy, Ticket, Tokens,
};
use crate::store::StorageConfig;
use crate::store::{Meta, NewRow, Removal, SessionDb, StoreError, Touch};
use crate::sync::Locked;

/// Version byte in front of every stored record. Bump it (and keep a decoder for the old one)
/// when the ticket layout changes, so old sessions keep working across an upgrade.
/// V1: tokens without their granted scope, no audience-bound tokens, no UserInfo claims.
const FORMAT_V1: u8 = 1;
/// V2: the granted scope, the audience-bound tokens and the UserInfo claims.
const FORMAT_V2: u8 = 2;

/// A ticket as format V1 stored it (read, never written).
#[derive(serde::Deserialize)]
struct TicketV1 {
    tokens: TokensV1,
    subject: String,
    provider_sid: Option<String>,
    created_at: u64,
    expires_at: u64,
}

/// The tokens of a [`TicketV1`].
#[derive(serde::Deserialize)]
struct TokensV1 {
    access_token: AccessToken,
    access_expires_at: Option<u64>,
    refresh_token: Option<Secret>,
    id_token: Option<Secret>,
}

impl From<TicketV1> for Ticket {
    /// A V1 session has no recorded scope (`scope:` rules deny it until the user signs in
    /// again or its token is refreshed with a scope), no audience-bound tokens yet (they are
    /// fetched on first use) and no UserInfo claims (fetched at its next refresh).
    fn from(old: TicketV1) -> Self {
        Ticket {
            tokens: Tokens {
                access_token: old.tokens.access_token,
                access_expires_at: old.tokens.access_expires_at,
                refresh_token: old.tokens.refresh_token,
                id_token: old.tokens.id_token,
                scope: None,
            },
            subject: old.subject,
            provider_sid: old.provider_sid,
            created_at: old.created_at,
            expires_at: old.expires_at,
            resource_tokens: Vec::new(),
            userinfo: None,
            principal: Default::default(),
        }
    }
}

/// Version byte of a stored ID token. The ID token is sealed on its own, in a table of its own
/// (read by `/api/user`, logout and the admin command, not by every cold retrieve); its AAD
/// starts with this byte, so a session record and an ID-token record can never stand in for
/// each other. A V1 session record written before the split still carries the ID token
/// inside, and is read as it is.
const ID_TOKEN_V1: u8 = 0x49;

/// Whether a retrieve counts as activity that slides the idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// A use of the session (an API call through the proxy): slides the idle timeout.
    Use,
    /// A look at the session (`/api/isAuth`, `/api/user`): a polling page must not keep a
    /// session alive forever.
    Peek,
}

/// A live session as retrieve returns it.
#[derive(Debug, Clone)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// Its ticket.
    pub ticket: Arc<Ticket>,
    /// Its last recorded access.
    pub last_access: u64,
}

/// The data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenStoreError {
    /// The directory could not be created.
    #[error("--data-dir {}: {}", path.display(), crate::describe::io_reason(error))]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What the operating system said (in the message, so not a source as well).
        error: std::io::Error,
    },
    /// The ticket key could not be loaded or created.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to do when the ticket key file is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingKey {
    /// Create a new key (the server's first start).
    Create,
    /// Fail: a tool that reads an existing file must not make a key that opens nothing and
    /// that the next server start would then use.
    Refuse,
}

/// Opens the store of a data directory: creates the directory (mode 0700) and, if `missing`
/// says so, the key file, opens `sessions.redb`. Blocking; returns the store and the master key
/// (whose other derived keys the caller may need).
pub fn open_data_dir(
    storage: &StorageConfig,
    cache: CachePolicy,
    policy: SessionPolicy,
    clock: Arc<dyn Clock>,
    missing: MissingKey,
) -> Result<(TicketStore, MasterKey), OpenStoreError> {
    let master = data_dir_key(storage, missing)?;
    let db = SessionDb::open(&storage.database_path(), storage.db_cache_bytes)?;
    let store = TicketStore::keyed(Records::File(Arc::new(db)), &master, cache, policy, clock);
    Ok((store, master))
}

/// Creates the data directory (mode 0700) and loads its ticket key (or, if `missing` says so,
/// creates it). Blocking.
fn data_dir_key(storage: &StorageConfig, missing: MissingKey) -> Result<MasterKey, OpenStoreError> {
    use std::os::unix::fs::DirBuilderExt;
    // A tool that only reads (`MissingKey::Refuse`) leaves no directory behind.
    if missing == MissingKey::Create {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&storage.data_dir)
            .map_err(|error| OpenStoreError::DataDir {
                path: storage.data_dir.clone(),
                error,
            })?;
    }
    Ok(match missing {
        MissingKey::Create => MasterKey::load_or_create(&storage.ticket_key_file)?,
        MissingKey::Refuse => MasterKey::load(&storage.ticket_key_file)?,
    })
}

/// Opens the session store `storage` names: the data directory's redb file
/// ([`open_data_dir`]), or Redis (waiting for it, then checking that its sessions were written
/// under this ticket key). `tls` is for `rediss://`.
pub async fn open_store(
    storage: &StorageConfig,
    cache: CachePolicy,
    policy: SessionPolicy,
    clock: Arc<dyn Clock>,
    missing: MissingKey,
    tls: &rustls::ClientConfig,
) -> Result<(TicketStore, MasterKey), OpenStoreError> {
    let storage = storage.clone();
    let Some(redis) = storage.redis.clone() else {
        return tokio::task::spawn_blocking(move || {
            open_data_dir(&storage, cache, policy, clock, missing)
        })
        .await
        .map_err(|_| StoreError::TaskFailed)?;
    };
    let master = tokio::task::spawn_blocking(move || data_dir_key(&storage, missing))
        .await
        .map_err(|_| StoreError::TaskFailed)??;
    tracing::info!(store = %redis.target.display(), "connecting to the session store");
    let records = RedisRecords::connect(
        &redis.target,
        redis.password.as_ref(),
        Some(tls),
        &master.keyer(),
        policy.lifetime,
        policy.idle_timeout,
    )
    .await?;
    let store = TicketStore::keyed(
        Records::Redis(Arc::new(records)),
        &master,
        cache,
        policy,
        clock,
    );
    Ok((store, master))
}

/// For `check-config` with `--store redis://…`: whether Redis can be reached now and whose
/// ticket key its sessions are sealed with, checked without writing anything. `None` for the
/// redb file (see [`check_data_dir`]).
pub async fn check_store(
    storage: &StorageConfig,
    tls: &rustls::ClientConfig,
) -> Result<Option<String>, OpenStoreError> {
    let Some(redis) = &storage.redis else {
        return Ok(None);
    };
    let key = storage
        .ticket_key_file
        .exists()
        .then(|| MasterKey::load(&storage.ticket_key_file))
        .transpose()?;
    let keyer = key.as_ref().map(MasterKey::keyer);
    let line = RedisRecords::probe(
        &redis.target,
        redis.password.as_ref(),
        Some(tls),
        keyer.as_ref(),
    )
    .await?;
    Ok(Some(line))
}

/// What `serve` would do with a data directory, checked without changing anything a server
/// uses (for `check-config`): the directory is, or can be made, a writable directory; an
/// existing key file holds a key and is private; an existing database file is writable. Each
/// line of the answer says what was found.
pub fn check_data_dir(storage: &StorageConfig) -> Result<Vec<String>, OpenStoreError> {
    let dir = &storage.data_dir;
    let dir_error = |error: std::io::Error| OpenStoreError::DataDir {
        path: dir.clone(),
        error,
    };
    let mut found = Vec::new();
    // The directory, or the nearest ancestor it would be made in.
    let mut existing = dir.as_path();
    while !existing.exists() {
        match existing.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => existing = parent,
            _ => {
                existing = std::path::Path::new(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        return Err(dir_error(std::io::ErrorKind::NotADirectory.into()));
    }
    // Writable is what the kernel says when asked to write, not what the mode bits suggest.
    let probe = existing.join(format!(".oidc-bff-check-{}", std::process::id()));
    std::fs::File::create(&probe).map_err(dir_error)?;
    let _ = std::fs::remove_file(&probe);
    if existing == dir.as_path() {
        found.push(format!(
            "--data-dir {}: a writable directory",
            dir.display()
        ));
    } else {
        found.push(format!(
            "--data-dir {}: will be made (mode 0700) in {}",
            dir.display(),
            existing.display()
        ));
    }
    let key = &storage.ticket_key_file;
    if key.exists() {
        MasterKey::load(key)?;
        found.push(format!(
            "--ticket-key-file {}: a private 256-bit key",
            key.display()
        ));
    } else {
        found.push(format!(
            "--ticket-key-file {}: none yet; the first start makes one",
            key.display()
        ));
    }
    let database = storage.database_path();
    if database.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&database)
            .map_err(dir_error)?;
        found.push(format!("session database {}: writable", database.display()));
    }
    Ok(found)
}

/// Removals a slow listener may fall behind by before it must look at its session itself.
const REMOVAL_BACKLOG: usize = 1024;

/// The ticket store.
pub struct TicketStore {
    records: Records,
    cache: TicketCache,
    sealer: Sealer,
    keyer: Keyer,
    policy: SessionPolicy,
    clock: Arc<dyn Clock>,
    touch_interval: u64,
    pending: Mutex<HashMap<SessionId, Touch, IdHashing>>,
    key_ids: KeyIds,
    /// Every removed session's id, announced for whatever belongs to it (a WebSocket tunnel).
    removals: tokio::sync::broadcast::Sender<SessionId>,
    /// Ticks after every eviction sweep of a store that expires sessions itself (Redis) and so
    /// cannot announce those: whatever belongs to a session looks at it then.
    expiry_checks: tokio::sync::watch::Sender<()>,
}

impl std::fmt::Debug for TicketStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketStore")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl TicketStore {
    /// A store over the session records (the redb file, or Redis).
    pub fn new(
        records: Records,
        cache: CachePolicy,
        sealer: Sealer,
        keyer: Keyer,
        policy: SessionPolicy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        // Touch often enough that idle expiry is accurate to a small fraction of the timeout,
        // rarely enough that a busy session costs one small write a minute at most.
        let touch_interval = (policy.idle_timeout.as_secs() / 16).clamp(1, 60);
        Self {
            records,
            key_ids: KeyIds::new(cache.capacity.get()),
            cache: TicketCache::new(cache),
            sealer,
            keyer,
            policy,
            clock,
            touch_interval,
            pending: Mutex::new(HashMap::default()),
            removals: tokio::sync::broadcast::channel(REMOVAL_BACKLOG).0,
            expiry_checks: tokio::sync::watch::Sender::new(()),
        }
    }

    /// A store over `records`, sealing with the keys derived from `master`.
    fn keyed(
        records: Records,
        master: &MasterKey,
        cache: CachePolicy,
        policy: SessionPolicy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self::new(
            records,
            cache,
            master.ticket_sealer(),
            master.keyer(),
            policy,
            clock,
        )
    }

    /// The Redis records, when the store is Redis (for the invalidation channel).
    pub(crate) fn redis(&self) -> Option<&Arc<RedisRecords>> {
        match &self.records {
            Records::Redis(redis) => Some(redis),
            Records::File(_) => None,
        }
    }

    /// The database underneath (for tools that read it directly).
    pub fn database(&self) -> Option<Arc<SessionDb>> {
        self.records.file().cloned()
    }

    /// Gives back the database when nothing else holds it (to compact it, say).
    pub fn into_db(self) -> Option<SessionDb> {
        match self.records {
            Records::File(db) => Arc::into_inner(db),
            Records::Redis(_) => None,
        }
    }

    /// The session policy in force.
    pub fn policy(&self) -> &SessionPolicy {
        &self.policy
    }

    /// The keyed hash used for indexes and logout ids.
    pub fn keyer(&self) -> &Keyer {
        &self.keyer
    }

    /// How often pending touches should be flushed.
    pub fn touch_interval(&self) -> Duration {
        Duration::from_secs(self.touch_interval)
    }

    /// Announces every session removed from now on (logout, back-channel logout, admin revoke,
    /// eviction). A receiver that falls behind gets `Lagged` and must check its session.
    pub fn subscribe_removals(&self) -> tokio::sync::broadcast::Receiver<SessionId> {
        self.removals.subscribe()
    }

    /// Ticks when sessions may have expired unannounced (with Redis, which expires them itself,
    /// after every eviction sweep); a listener then looks at its session. Never ticks for the
    /// file, whose sweep announces every eviction.
    pub fn subscribe_expiry_checks(&self) -> tokio::sync::watch::Receiver<()> {
        self.expiry_checks.subscribe()
    }

    /// Tells the listeners, if any, that these sessions are gone.
    fn announce_removed(&self, ids: &[SessionId]) {
        if self.removals.receiver_count() == 0 {
            return;
        }
        for id in ids {
            // An error only means that nobody listens any more.
            let _ = self.removals.send(*id);
        }
    }

    /// Cache hit and miss counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<SessionId, Touch, IdHashing>> {
        self.pending.locked()
    }

    /// Seals a ticket as two records: the session without its ID token, and the ID token (if
    /// any) on its own.
    fn seal(&self, id: SessionId, ticket: &Ticket) -> Sealed {
        let mut without_id_token = ticket.clone();
        let id_token = without_id_token.tokens.id_token.take();
        let plaintext = postcard::to_stdvec(&without_id_token)
            .expect("a Ticket holds only strings and integers");
        let id_token = id_token.map(|token| {
            let plaintext =
                postcard::to_stdvec(&token).expect("a token is a string or binary parts");
            self.seal_record(ID_TOKEN_V1, id, &plaintext)
        });
        Sealed {
            ticket: self.seal_record(FORMAT_V2, id, &plaintext),
            id_token,
        }
    }

    fn seal_record(&self, format: u8, id: SessionId, plaintext: &[u8]) -> Vec<u8> {
        let mut record = Vec::with_capacity(1 + plaintext.len() + Sealer::OVERHEAD);
        record.push(format);
        record.extend_from_slice(&self.sealer.seal(&aad(format, id), plaintext));
        record
    }

    /// Decrypts and decodes a stored ID token.
    fn open_id_token(&self, id: SessionId, record: Vec<u8>) -> Option<Secret> {
        self.open_record(ID_TOKEN_V1, "ID token", id, record)
    }

    /// The session's ID token: from its ticket when that holds it (a session stored or
    /// refreshed by this process, or a record written before ID tokens had a table of their
    /// own), else from the file. `None` when the provider never issued one, or the stored one
    /// cannot be read (the caller goes on without it: no claims, no `id_token_hint`).
    pub async fn id_token(&self, session: &Session) -> Result<Option<Secret>, StoreError> {
        if let Some(id_token) = &session.ticket.tokens.id_token {
            return Ok(Some(id_token.clone()));
        }
        let id = session.id;
        // Inline, like a cold retrieve: one B-tree lookup.
        Ok(self
            .records
            .get_id_token(id)
            .await?
            .and_then(|record| self.open_id_token(id, record)))
    }

    /// Decrypts (in place, the record is consumed) and decodes a stored ticket.
    fn open(&self, id: SessionId, record: Vec<u8>) -> Option<Ticket> {
        if record.first() == Some(&FORMAT_V1) {
            return self
                .open_record::<TicketV1>(FORMAT_V1, "session", id, record)
                .map(Ticket::from);
        }
        self.open_record(FORMAT_V2, "session", id, record)
    }

    /// Decrypts (in place, the record is consumed) and decodes a record sealed by
    /// [`TicketStore::seal_record`] with `format`. Anything else is logged and ignored.
    fn open_record<T: serde::de::DeserializeOwned>(
        &self,
        format: u8,
        what: &str,
        id: SessionId,
        mut record: Vec<u8>,
    ) -> Option<T> {
        let (&mut found, sealed) = record.split_first_mut()?;
        if found != format {
            tracing::warn!(session = %id, format = found, "{what} record has an unknown format; ignored");
            return None;
        }
        let Ok(plaintext) = self.sealer.open_in_place(&aad(format, id), sealed) else {
            // Tampered with, moved between rows, or sealed under another ticket key.
            tracing::warn!(session = %id, "{what} record failed authentication; ignored");
            return None;
        };
        match postcard::from_bytes(plaintext) {
            Ok(value) => Some(value),
            Err(_) => {
                tracing::warn!(session = %id, "{what} record does not decode; ignored");
                None
            }
        }
    }

    fn meta(&self, ticket: &Ticket, last_access: u64) -> Meta {
        Meta {
            last_access,
            deadline: self.policy.deadline(ticket, last_access),
            subject: self.keyer.hash("sub", ticket.subject.as_bytes()),
            provider_sid: ticket
                .provider_sid
                .as_ref()
                .map(|sid| self.keyer.hash("sid", sid.as_bytes())),
            refresh_at: refresh_at(ticket),
        }
    }

    /// Stores a new session durably and returns its cookie key (always a fresh one).
    pub async fn store(&self, ticket: Ticket) -> Result<SessionKey, StoreError> {
        let key = SessionKey::generate(unix_millis(self.clock.now()));
        let id = key.id();
        let now = self.clock.unix_now();
        let sealed = self.seal(id, &ticket);
        let meta = self.meta(&ticket, now);
        self.records
            .insert(id, sealed.ticket, sealed.id_token, meta)
            .await?;
        // A fresh id has no tombstone: this always caches.
        let _fresh_id = self.cache.insert(
            id,
            Cached {
                ticket: Arc::new(ticket),
                last_access: now,
            },
            self.clock.now(),
        );
        Ok(key)
    }

    /// Stores many new sessions in one durable transaction and returns their keys (bulk import
    /// and benchmarks; a login uses [`TicketStore::store`]). The cache is not filled.
    pub async fn store_batch(&self, tickets: Vec<Ticket>) -> Result<Vec<SessionKey>, StoreError> {
        let now = self.clock.unix_now();
        let mut keys = Vec::with_capacity(tickets.len());
        let mut rows = Vec::with_capacity(tickets.len());
        let created_ms = unix_millis(self.clock.now());
        for ticket in &tickets {
            let key = SessionKey::generate(created_ms);
            let id = key.id();
            let sealed = self.seal(id, ticket);
            rows.push(NewRow {
                id,
                sealed: sealed.ticket,
                id_token: sealed.id_token,
                meta: self.meta(ticket, now),
            });
            keys.push(key);
        }
        // Sorted, the rows append to the B-tree instead of splitting pages at random.
        rows.sort_by_key(|row| row.id);
        self.records.insert_batch(rows).await?;
        Ok(keys)
    }

    /// The live session for a cookie key, or `None` for unknown, expired or unreadable ones.
    /// An expired session found here is removed.
    pub async fn retrieve(
        &self,
        key: &SessionKey,
        activity: Activity,
    ) -> Result<Option<Session>, StoreError> {
        if let Some(id) = self.key_ids.get(key) {
            return self.retrieve_by_id(id, activity).await;
        }
        let id = key.id();
        let session = self.retrieve_by_id(id, activity).await?;
        if session.is_some() {
            self.key_ids.remember(key, id);
        }
        Ok(session)
    }

    /// Like [`TicketStore::retrieve`], by session id.
    pub async fn retrieve_by_id(
        &self,
        id: SessionId,
        activity: Activity,
    ) -> Result<Option<Session>, StoreError> {
        let now_time = self.clock.now();
        let now = unix_seconds(now_time);
        let pending_access = self.pending().get(&id).map(|touch| touch.last_access);
        let shared = matches!(self.records, Records::Redis(_));
        let cached = match self.cache.get(id, now_time) {
            // With a shared store, another gateway may have used the session since this one
            // cached it: a cached copy that looks expired is checked against the store before
            // anything is removed on its word.
            Some(cached)
                if !shared
                    || self.policy.is_live(
                        &cached.ticket,
                        cached.last_access.max(pending_access.unwrap_or(0)),
                        now,
                    ) =>
            {
                cached
            }
            hit => {
                if hit.is_some() {
                    self.cache.forget_changed(id);
                }
                // Read inline rather than on the blocking pool: redb readers never wait for
                // writers (MVCC), so this is a lookup of a few KiB, mostly from the page cache,
                // and two thread hand-offs would cost five times the read itself.
                let generation = self.cache.generation();
                let Some(record) = self.records.get(id).await? else {
                    return Ok(None);
                };
                let Some(ticket) = self.open(id, record.sealed) else {
                    return Ok(None);
                };
                let cached = Cached {
                    ticket: Arc::new(ticket),
                    last_access: record.meta.last_access,
                };
                // The row may come from a snapshot taken before a removal committed: a removed
                // session is gone, whatever the read found.
                if !self
                    .cache
                    .insert_read(id, cached.clone(), now_time, generation)
                {
                    return Ok(None);
                }
                cached
            }
        };
        let last_access = cached.last_access.max(pending_access.unwrap_or(0));
        if !self.policy.is_live(&cached.ticket, last_access, now) {
            self.remove(id).await?;
            return Ok(None);
        }
        if activity == Activity::Use && now >= last_access.saturating_add(self.touch_interval) {
            let touch = Touch {
                id,
                last_access: now,
                deadline: self.policy.deadline(&cached.ticket, now),
            };
            self.pending().insert(id, touch);
            self.cache.set_last_access(id, now);
        }
        Ok(Some(Session {
            id,
            ticket: cached.ticket,
            last_access,
        }))
    }

    /// Replaces the ticket of an existing session (after a refresh), durably, and refreshes the
    /// cache. Returns false when the session was removed meanwhile; it is not recreated.
    pub async fn renew(&self, id: SessionId, ticket: Ticket) -> Result<bool, StoreError> {
        let sealed = self.seal(id, &ticket);
        let refresh_at = refresh_at(&ticket);
        // A refresh can move the session's end (a new refresh-token expiry): its place in the
        // eviction index follows.
        let (policy, expires_at) = (*self.policy(), ticket.expires_at);
        let deadline = move |last_access: u64| policy.deadline_from(expires_at, last_access);
        let replaced = self
            .records
            .replace_ticket(id, sealed.ticket, sealed.id_token, refresh_at, deadline)
            .await?;
        if replaced {
            let last_access = self
                .cache
                .get(id, self.clock.now())
                .map(|cached| cached.last_access);
            // A removal that started meanwhile wins: `insert` refuses a removed session.
            let cached = match last_access {
                Some(last_access) => self.cache.insert(
                    id,
                    Cached {
                        ticket: Arc::new(ticket),
                        last_access,
                    },
                    self.clock.now(),
                ),
                None => false,
            };
            if !cached {
                self.cache.invalidate(id);
            }
        } else {
            self.cache.invalidate(id);
        }
        Ok(replaced)
    }

    /// Removes a session from the cache, the pending touches and the file. A missing session is
    /// not an error; returns whether it existed in the file.
    pub async fn remove(&self, id: SessionId) -> Result<bool, StoreError> {
        // The tombstone goes first, before the delete commits: see `cache`.
        self.cache.mark_removed(id);
        self.pending().remove(&id);
        let existed = self.records.remove(id).await;
        self.announce_removed(&[id]);
        existed
    }

    /// Whether the store can be reached: the file always; Redis as its last health check
    /// found it.
    pub fn is_up(&self) -> bool {
        match &self.records {
            Records::File(_) => true,
            Records::Redis(redis) => redis.is_up(),
        }
    }

    /// The number of sessions when it is cheap to know: the file's count; for Redis, where a
    /// count is a scan of every key, the count of the last eviction sweep (`None` before it).
    pub async fn count_if_cheap(&self) -> Result<Option<u64>, StoreError> {
        match &self.records {
            Records::File(_) => self.count().await.map(Some),
            Records::Redis(redis) => Ok(redis.last_count()),
        }
    }

    /// The right to renew a session's tokens: with a shared store (Redis), one gateway at a
    /// time cluster-wide, waiting at most `wait` for another to finish; in the file, the
    /// refresher's own per-session lock is all there is to it. `None`: not had in time.
    pub async fn renewal_lease(
        &self,
        id: SessionId,
        wait: Duration,
    ) -> Result<Option<RenewalLease>, StoreError> {
        match &self.records {
            Records::File(_) => Ok(Some(RenewalLease { _held: Held::Local })),
            Records::Redis(redis) => Ok(redis.lease(id, wait).await?.map(|lease| RenewalLease {
                _held: Held::Shared { _lease: lease },
            })),
        }
    }

    /// The session as the store has it now: with a shared store another gateway may have
    /// renewed it a moment ago, so the cache is not asked.
    pub async fn reread(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        if let Records::Redis(_) = &self.records {
            self.cache.forget_changed(id);
        }
        self.retrieve_by_id(id, Activity::Peek).await
    }

    /// Another gateway sharing the store removed (`removed`) or replaced a session: forget it
    /// here (a removal leaves a tombstone, as a local one does).
    pub fn forget(&self, id: SessionId, removed: bool) {
        if removed {
            self.cache.mark_removed(id);
            self.pending().remove(&id);
            self.announce_removed(&[id]);
        } else {
            self.cache.forget_changed(id);
        }
    }

    /// Messages from the other gateways may have been missed (the channel reconnected): forget
    /// every cached session.
    pub fn forget_all(&self) {
        self.cache.forget_all();
    }

    /// Writes all pending last-access times in one transaction; returns how many.
    pub async fn flush_touches(&self) -> Result<usize, StoreError> {
        let batch: Vec<Touch> = self.pending().drain().map(|(_, touch)| touch).collect();
        let count = batch.len();
        if count > 0
            && let Err(error) = self.records.touch(batch.clone()).await
        {
            // Nothing is lost while the store is away: the touches wait for the next flush
            // (a newer one queued meanwhile wins).
            let mut pending = self.pending();
            for touch in batch {
                pending.entry(touch.id).or_insert(touch);
            }
            return Err(error);
        }
        Ok(count)
    }

    /// Removes every session of a provider session id (back-channel logout by `sid`); returns
    /// how many.
    pub async fn remove_by_provider_sid(&self, sid: &str) -> Result<usize, StoreError> {
        let hash = self.keyer.hash("sid", sid.as_bytes());
        let ids = self.records.by_provider_sid(hash).await?;
        self.remove_all(ids).await
    }

    /// Removes every session of a subject (back-channel logout by `sub`); returns how many.
    pub async fn remove_by_subject(&self, subject: &str) -> Result<usize, StoreError> {
        let hash = self.keyer.hash("sub", subject.as_bytes());
        let ids = self.records.by_subject(hash).await?;
        self.remove_all(ids).await
    }

    async fn remove_all(&self, ids: Vec<SessionId>) -> Result<usize, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        {
            let mut pending = self.pending();
            for id in &ids {
                self.cache.mark_removed(*id);
                pending.remove(id);
            }
        }
        let announced = ids.clone();
        let removed = self.records.remove_many(ids, Removal::Logout).await;
        self.announce_removed(&announced);
        removed
    }

    /// Removes every session past its deadline, in batches of `batch` (one transaction each),
    /// reading only the due part of the deadline index; returns how many were removed.
    pub async fn evict_expired(&self, batch: usize) -> Result<usize, StoreError> {
        // Pending touches first: a session used since the last flush has a stale deadline on
        // disk and must not be taken for idle.
        self.flush_touches().await?;
        let now = self.clock.unix_now();
        let mut removed = 0;
        let mut after = None;
        loop {
            let due = self.records.due(now, after, batch).await?;
            let Some(last) = due.last().copied() else {
                break;
            };
            // Deletes happen behind the cursor, so the next page starts after this one.
            after = Some(last);
            let ids: Vec<SessionId> = {
                let pending = self.pending();
                due.iter()
                    .map(|position| position.id)
                    .filter(|id| !pending.contains_key(id))
                    .collect()
            };
            for id in &ids {
                self.cache.invalidate(*id);
            }
            self.announce_removed(&ids);
            if !ids.is_empty() {
                // Lazy commits, one sync at the end: a crash mid-sweep only leaves some expired
                // sessions for the next sweep, and the sweep writes far less.
                removed += self.records.remove_many(ids, Removal::Eviction).await?;
            }
            if due.len() < batch {
                break;
            }
        }
        // Identity-index entries of days no session is left from, in bounded batches too.
        let mut pruned = 0;
        loop {
            let count = self.records.prune_identity_indexes(batch).await?;
            pruned += count;
            if count < batch {
                break;
            }
        }
        if removed > 0 || pruned > 0 {
            self.records.sync().await?;
        }
        if let Records::Redis(redis) = &self.records {
            // Redis dropped whatever expired on its own, unannounced.
            self.expiry_checks.send_replace(());
            redis.recount().await?;
        }
        Ok(removed)
    }

    /// Up to `limit` refreshable sessions whose access token expires within `ahead`.
    pub async fn refresh_candidates(
        &self,
        ahead: Duration,
        limit: usize,
    ) -> Result<Vec<SessionId>, StoreError> {
        let until = self.clock.unix_now().saturating_add(ahead.as_secs());
        self.records.refresh_due(until, limit).await
    }

    /// Up to `limit` sessions in creation order after `after`, opened (for the admin commands).
    /// Records that do not open are listed without a ticket.
    pub async fn list(
        &self,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<Vec<(SessionId, Meta, Option<Ticket>)>, StoreError> {
        let rows = self.records.list(after, limit).await?;
        Ok(rows
            .into_iter()
            .map(|(id, record, id_token)| {
                let ticket = self.open(id, record.sealed).map(|mut ticket| {
                    if ticket.tokens.id_token.is_none() {
                        ticket.tokens.id_token =
                            id_token.and_then(|record| self.open_id_token(id, record));
                    }
                    ticket
                });
                (id, record.meta, ticket)
            })
            .collect())
    }

    /// Copies every live session into `target` as it is stored (sealed records, metadata and
    /// deadline: both stores must use the same ticket key), page by page; returns how many were
    /// copied and how many were skipped as already expired (`oidc-bff sessions migrate`).
    pub async fn copy_into(&self, target: &TicketStore) -> Result<(usize, usize), StoreError> {
        let now = self.clock.unix_now();
        let (mut copied, mut expired) = (0, 0);
        let mut after = None;
        loop {
            let page = self.records.list(after, 1_000).await?;
            let Some((last, _, _)) = page.last() else {
                break;
            };
            after = Some(*last);
            for (id, record, id_token) in page {
                if record.meta.deadline <= now {
                    expired += 1;
                    continue;
                }
                target
                    .records
                    .insert(id, record.sealed, id_token, record.meta)
                    .await?;
                copied += 1;
            }
        }
        Ok((copied, expired))
    }

    /// Removes these sessions (admin revocation); returns how many existed.
    pub async fn remove_ids(&self, ids: Vec<SessionId>) -> Result<usize, StoreError> {
        self.remove_all(ids).await
    }

    /// Records a back-channel logout token's `jti` until `forget_after` (Unix seconds),
    /// durably; false when the token was seen before (a replay, even across restarts).
    pub async fn remember_logout_jti(
        &self,
        jti: &str,
        forget_after: u64,
    ) -> Result<bool, StoreError> {
        let hash = self.keyer.hash("jti", jti.as_bytes());
        let now = self.clock.unix_now();
        self.records
            .remember_logout_jti(hash, forget_after, now)
            .await
    }

    /// Number of sessions in the file.
    pub async fn count(&self) -> Result<u64, StoreError> {
        self.records.count().await
    }
}

/// Held while a session's tokens are renewed ([`TicketStore::renewal_lease`]); released when
/// dropped.
pub struct RenewalLease {
    _held: Held,
}

enum Held {
    /// One process: the refresher's per-session lock is the lease.
    Local,
    /// A lease in Redis, kept for as long as this is held and released when dropped.
    Shared { _lease: crate::redis_store::Lease },
}

impl std::fmt::Debug for RenewalLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RenewalLease")
    }
}

/// A ticket sealed for the file: the session record, and its ID token on its own.
struct Sealed {
    ticket: Vec<u8>,
    id_token: Option<Vec<u8>>,
}

/// The refresh index entry of a ticket: its access-token expiry, when it can be refreshed.
fn refresh_at(ticket: &Ticket) -> Option<u64> {
    ticket
        .tokens
        .refresh_token
        .as_ref()
        .and(ticket.tokens.access_expires_at)
}

fn aad(format: u8, id: SessionId) -> [u8; 41] {
    let mut aad = [0u8; 41];
    aad[0] = format;
    aad[1..].copy_from_slice(&id.to_bytes());
    aad
}

fn unix_millis(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::seal::MasterKey;
    use std::num::NonZeroUsize;

    struct Fixture {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        clock: Arc<ManualClock>,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("sessions.redb");
            Self {
                _dir: dir,
                path,
                clock: Arc::new(ManualClock::starting_now()),
            }
        }

        fn store(&self, key_byte: u8) -> TicketStore {
            let master = MasterKey::from_bytes([key_byte; 32]);
            let db = Arc::new(SessionDb::open(&self.path, 1 << 20).expect("open db"));
            TicketStore::new(
                Records::File(db),
                CachePolicy {
                    capacity: NonZeroUsize::new(16).expect("non-zero"),
                    sliding: Duration::from_secs(15),
                    absolute: Duration::from_secs(100),
                },
                master.ticket_sealer(),
                master.keyer(),
                SessionPolicy {
                    idle_timeout: Duration::from_secs(3_600),
                    lifetime: Duration::from_secs(86_400),
                    refresh_skew: Duration::from_secs(30),
                },
                self.clock.clone(),
            )
        }

        fn ticket(&self, access: &str) -> Ticket {
            let now = self.clock.unix_now();
            Ticket {
                tokens: Tokens {
                    access_token: AccessToken::new(access).expect("token"),
                    access_expires_at: Some(now + 300),
                    refresh_token: Some(Secret::new("refresh")),
                    id_token: Some(Secret::new("id")),
                    scope: Some("openid profile".into()),
                },
                subject: "alice".into(),
                provider_sid: Some("sid-1".into()),
                created_at: now,
                expires_at: now + 86_400,
                resource_tokens: Vec::new(),
                userinfo: None,
                principal: Default::default(),
            }
        }
    }

    async fn peek(store: &TicketStore, key: &SessionKey) -> Option<Session> {
        store.retrieve(key, Activity::Peek).await.expect("retrieve")
    }

    #[tokio::test]
    async fn stored_tickets_come_back_and_keys_are_never_reused() {
        let fixture = Fixture::new();
        let store = fixture.store(1);
        let first = store.store(fixture.ticket("a1")).await.expect("store");
        let second = store.store(fixture.ticket("a1")).await.expect("store");
        assert_ne!(first, second);
        let session = store
            .retrieve(&first, Activity::Peek)
            .await
            .expect("retrieve")
            .expect("live");
        assert_eq!(session.ticket.tokens.access_token.expose(), "a1");
        assert!(
            store
                .retrieve(&SessionKey::generate(0), Activity::Peek)
                .await
                .expect("retrieve")
                .is_none()
        );
    }

    #[tokio::test]
    async fn sessions_survive_a_restart_and_need_the_same_key() {
        let fixture = Fixture::new();
        let key = {
            let store = fixture.store(1);
            store.store(fixture.ticket("a1")).await.expect("store")
        };
        let wrong = fixture.store(2);
        assert!(peek(&wrong, &key).await.is_none());
        drop(wrong);
        let right = fixture.store(1);
        let session = right
            .retrieve(&key, Activity::Peek)
            .await
            .expect("retrieve");
        assert_eq!(session.expect("live").ticket.subject, "alice");
    }

    #[tokio::test]
    async fn a_tampered_record_is_refused_not_trusted() {
        let fixture = Fixture::new();
        let store = fixture.store(1);
        let key = store.store(fixture.ticket("a1")).await.expect("store");
        let id = key.id();
        let mut record = store
            .database()
            .expect("file")
            .get(id)
            .expect("get")
            .expect("present");
        let last = record.sealed.len() - 1;
        record.sealed[last] ^= 1;
        store
            .database()
            .expect("file")
            .insert(id, &record.sealed, None, record.meta)
            .expect("rewrite");
        store.cache.invalidate(id);
        assert!(peek(&store, &key).await.is_none());
        // A valid record copied under another session's id is refused too.
        let other = store.store(fixture.ticket("a2")).await.expect("store");
        let copied = store
            .database()
            .expect("file")
            .get(other.id())
            .expect("get")
            .expect("present");
        store
            .database()
            .expect("file")
            .insert(id, &copied.sealed, None, copied.meta)
            .expect("copy");
        assert!(peek(&store, &key).await.is_none());
    }

    /// What format V1 wrote, for the test below (the gateway only reads it).
    #[derive(serde::Serialize)]
    struct WrittenV1<'a> {
        tokens: (
            &'a AccessToken,
            Option<u64>,
            Option<&'a Secret>,
            Option<&'a Secret>,
        ),
        subject: &'a str,
        provider_sid: Option<&'a str>,
        created_at: u64,
        expires_at: u64,
    }

    #[tokio::test]
    async fn sessions_stored_in_format_v1_are_read_after_an_upgrade() {
        let fixture = Fixture::new();
        let store = fixture.store(1);
        let key = store.store(fixture.ticket("a1")).await.expect("store");
        let id = key.id();
        let ticket = fixture.ticket("old-token");
        let plaintext = postcard::to_stdvec(&WrittenV1 {
            tokens: (
                &ticket.tokens.access_token,
                ticket.tokens.access_expires_at,
                ticket.tokens.refresh_token.as_ref(),
                None,
            ),
            subject: "bob",
            provider_sid: Some("sid-9"),
            created_at: ticket.created_at,
            expires_at: ticket.expires_at,
        })
        .expect("encode");
        let record = store
            .database()
            .expect("file")
            .get(id)
            .expect("get")
            .expect("present");
        let v1 = store.seal_record(FORMAT_V1, id, &plaintext);
        store
            .database()
            .expect("file")
            .insert(id, &v1, None, record.meta)
            .expect("rewrite");
        store.cache.invalidate(id);
        let session = peek(&store, &key).await.expect("a V1 session is live");
        assert_eq!(session.ticket.tokens.access_token.expose(), "old-token");
        assert_eq!(session.ticket.subject, "bob");
        assert_eq!(session.ticket.provider_sid.as_deref(), Some("sid-9"));
        assert_eq!(session.ticket.tokens.scope, None, "V1 kept no scope");
        assert!(session.ticket.resource_tokens.is_empty());
        // A V1 record under the V2 byte (or the reverse) fails authentication.
        let mut relabelled = v1.clone();
        relabelled[0] = FORMAT_V2;
        store
            .database()
            .expect("file")
            .insert(id, &relabelled, None, record.meta)
            .expect("rewrite");
        store.cache.invalidate(id);
        assert!(peek(&store, &key).await.is_none());
    }

    #[tokio::test]
    async fn scope_resource_tokens_and_userinfo_survive_a_restart() {
        let fixture = Fixture::new();
        let mut ticket = fixture.ticket("a1");
        ticket.resource_tokens.push(crate::session::ResourceToken {
            resource: "https://orders.example".into(),
            access_token: AccessToken::new("orders-token").expect("token"),
            expires_at: Some(42),
        });
        ticket.userinfo = Some(r#"{"groups":["admin"]}"#.into());
        let key = fixture.store(1).store(ticket.clone()).await.expect("store");
        let session = peek(&fixture.store(1), &key).await.expect("live");
        assert!(session.ticket.tokens.grants("profile"));
        assert!(!session.ticket.tokens.grants("prof"));
        let orders = session
            .ticket
            .resource_token("https://orders.example")
            .expect("kept");
        assert_eq!(orders.access_token.expose(), "orders-token");
        assert_eq!(orders.expires_at, Some(42));
        assert_eq!(session.ticket.userinfo, ticket.userinfo);
    }

    fn exposed(token: Option<Secret>) -> Option<String> {
        token.map(|token| token.expose().to_owned())
    }

    #[tokio::test]
    async fn the_id_token_is_stored_apart_and_read_back_when_asked_for() {
        let fixture = Fixture::new();
        let key = {
            let store = fixture.store(1);
            let key = store.store(fixture.ticket("a1")).await.expect("store");
            // Fresh from the login, the cached ticket holds it.
            let session = peek(&store, &key).await.expect("live");
            assert_eq!(
                exposed(store.id_token(&session).await.expect("read")).as_deref(),
                Some("id")
            );
            // The session record in the file does not.
            let record = store
                .database()
                .expect("file")
                .get(key.id())
                .expect("get")
                .expect("present");
            let ticket = store.open(key.id(), record.sealed).expect("opens");
            assert!(ticket.tokens.id_token.is_none());
            assert_eq!(ticket.tokens.access_token.expose(), "a1");
            key
        };
        // After a restart the ticket comes without it; it is read from its own table.
        let store = fixture.store(1);
        let session = peek(&store, &key).await.expect("live");
        assert!(session.ticket.tokens.id_token.is_none());
        assert_eq!(
            exposed(store.id_token(&session).await.expect("read")).as_deref(),
            Some("id")
        );
        // A refresh that brings no ID token keeps the stored one; one that does replaces it.
        let mut refreshed = fixture.ticket("a2");
        refreshed.tokens.id_token = None;
        assert!(store.renew(key.id(), refreshed).await.expect("renew"));
        let session = peek(&store, &key).await.expect("live");
        assert_eq!(
            exposed(store.id_token(&session).await.expect("read")).as_deref(),
            Some("id")
        );
        let mut newer = fixture.ticket("a3");
        newer.tokens.id_token = Some(Secret::new("id-2"));
        assert!(store.renew(key.id(), newer).await.expect("renew"));
        store.cache.invalidate(key.id());
        let session = peek(&store, &key).await.expect("live");
        assert!(session.ticket.tokens.id_token.is_none());
        assert_eq!(
            exposed(store.id_token(&session).await.expect("read")).as_deref(),
            Some("id-2")
        );
        // Ending the session takes its ID token with it.
        assert!(store.remove(key.id()).await.expect("remove"));
        assert!(
            store
                .database()
                .expect("file")
                .get_id_token(key.id())
                .expect("read")
                .is_none()
        );
    }

    #[tokio::test]
    async fn an_id_token_record_cannot_be_altered_or_stand_in_for_another() {
        let fixture = Fixture::new();
        let store = fixture.store(1);
        let key = store.store(fixture.ticket("a1")).await.expect("store");
        let other = store.store(fixture.ticket("a2")).await.expect("store");
        let id = key.id();
        let record = store
            .database()
            .expect("file")
            .get(id)
            .expect("get")
            .expect("present");
        let cold = |store: &TicketStore| {
            store.cache.invalidate(id);
        };
        let read = async |store: &TicketStore| {
            let session = peek(store, &key).await.expect("the session itself is fine");
            store.id_token(&session).await.expect("read")
        };
        // Altered on disk.
        let mut altered = store
            .database()
            .expect("file")
            .get_id_token(id)
            .expect("read")
            .expect("present");
        let last = altered.len() - 1;
        altered[last] ^= 1;
        store
            .database()
            .expect("file")
            .insert(id, &record.sealed, Some(&altered), record.meta)
            .expect("rewrite");
        cold(&store);
        assert!(read(&store).await.is_none());
        // Another session's ID token copied under this id.
        let theirs = store
            .database()
            .expect("file")
            .get_id_token(other.id())
            .expect("read")
            .expect("present");
        store
            .database()
            .expect("file")
            .insert(id, &record.sealed, Some(&theirs), record.meta)
            .expect("copy");
        cold(&store);
        assert!(read(&store).await.is_none());
        // The session record itself put where the ID token goes.
        store
            .database()
            .expect("file")
            .insert(id, &record.sealed, Some(&record.sealed), record.meta)
            .expect("copy");
        cold(&store);
        assert!(read(&store).await.is_none());
    }

    #[tokio::test]
    async fn renew_updates_the_cache_and_remove_clears_everything() {
        let fixture = Fixture::new();
        let store = fixture.store(1);
        let key = store.store(fixture.ticket("old")).await.expect("store");
        let id = key.id();
        // Warm the cache, then renew: the next retrieve must see the new token, not the cached one.
        store
            .retrieve(&key, Activity::Peek)
            .await
            .expect("retrieve");
        assert!(store.renew(id, fixture.ticket("new")).await.expect("renew"));
        let session = store
            .retrieve(&key, Activity::Peek)
            .await
            .expect("retrieve");
        assert_eq!(
            session.expect("live").ticket.tokens.access_token.expose(),
            "new"
        );

        assert!(store.remove(id).await.expect("remove"));
        assert!(!store.remove(id).await.expect("removing twice is fine"));
        assert!(peek(&store, &key).await.is_none());
        assert!(
            !store
                .renew(id, fixture.ticket("late"))
                .await
                .expect("renew")
        );
        assert!(peek(&store, &key).await.is_none());
    }

    #[tokio::test]
    async fn idle_sessions_end_and_use_slides_the_timeout_but_peeks_do_not() {
        let fixture = Fixture::new();
        let store = fixture.store(1);
        let used = store.store(fixture.ticket("u")).await.expect("store");
        let peeked = store.store(fixture.ticket("p")).await.expect("store");
        for _ in 0..3 {
            fixture.clock.advance(Duration::from_secs(1_800));
            assert!(
                store
                    .retrieve(&used, Activity::Use)
                    .await
                    .expect("retrieve")
                    .is_some()
            );
            store.flush_touches().await.expect("flush");
        }
        assert!(peek(&store, &peeked).await.is_none());
        // The slid deadline was written to the file: a fresh process sees it too.
        let record = store
            .database()
            .expect("file")
            .get(used.id())
            .expect("get")
            .expect("present");
        assert_eq!(record.meta.last_access, fixture.clock.unix_now());
    }

    #[tokio::test]
    async fn sessions_end_at_their_absolute_lifetime_even_when_used() {
        let fixture = Fixture::new();
        let store = fixture.store(1);
        let key = store.store(fixture.ticket("a")).await.expect("store");
        for _ in 0..48 {
            fixture.clock.advance(Duration::from_secs(1_800));
            let _ = store.retrieve(&key, Activity::Use).await.expect("retrieve");
        }
        assert!(
            store
                .retrieve(&key, Activity::Use)
                .await
                .expect("retrieve")
                .is_none()
        );
        assert_eq!(
            store.count().await.expect("count"),
            0,
            "expired session removed"
        );
    }

    #[tokio::test]
    async fn hot_retrieves_do_not_queue_a_write_per_request() {
        let fixture = Fixture::new();
        let store = fixture.store(1);
        let key = store.store(fixture.ticket("a")).await.expect("store");
        for _ in 0..100 {
            store.retrieve(&key, Activity::Use).await.expect("retrieve");
        }
        assert_eq!(store.flush_touches().await.expect("flush"), 0);
        fixture.clock.advance(store.touch_interval());
        for _ in 0..100 {
            store.retrieve(&key, Activity::Use).await.expect("retrieve");
        }
        assert_eq!(store.flush_touches().await.expect("flush"), 1);
    }

    #[tokio::test]
    async fn eviction_removes_idle_and_expired_sessions_but_not_recently_used_ones() {
        let fixture = Fixture::new();
        let store = fixture.store(1);
        let idle = store.store(fixture.ticket("idle")).await.expect("store");
        let used = store.store(fixture.ticket("used")).await.expect("store");
        fixture.clock.advance(Duration::from_secs(3_000));
        // Used just now: the touch is still pending in memory when the sweep starts.
        assert!(
            store
                .retrieve(&used, Activity::Use)
                .await
                .expect("retrieve")
                .is_some()
        );
        fixture.clock.advance(Duration::from_secs(700));
        assert_eq!(store.evict_expired(1).await.expect("evict"), 1);
        assert_eq!(store.count().await.expect("count"), 1);
        assert!(peek(&store, &idle).await.is_none());
        assert!(peek(&store, &used).await.is_some());
        // Past the absolute lifetime, use does not help.
        for _ in 0..30 {
            fixture.clock.advance(Duration::from_secs(3_000));
            let _ = store
                .retrieve(&used, Activity::Use)
                .await
                .expect("retrieve");
        }
        assert_eq!(
            store.evict_expired(100).await.expect("evict"),
            0,
            "removed on lookup"
        );
        assert_eq!(store.count().await.expect("count"), 0);
    }

    #[tokio::test]
    async fn eviction_works_through_many_batches() {
        let fixture = Fixture::new();
        let store = fixture.store(1);
        let tickets: Vec<Ticket> = (0..25).map(|_| fixture.ticket("t")).collect();
        store.store_batch(tickets).await.expect("batch");
        fixture.clock.advance(Duration::from_secs(3_601));
        assert_eq!(store.evict_expired(4).await.expect("evict"), 25);
        assert_eq!(store.count().await.expect("count"), 0);
    }

    #[tokio::test]
    async fn refresh_candidates_follow_the_access_token_expiry() {
        let fixture = Fixture::new();
        let store = fixture.store(1);
        let key = store.store(fixture.ticket("a")).await.expect("store");
        let soon = store
            .refresh_candidates(Duration::from_secs(120), 10)
            .await
            .expect("candidates");
        assert!(soon.is_empty(), "expires in 300 s");
        let later = store
            .refresh_candidates(Duration::from_secs(300), 10)
            .await
            .expect("candidates");
        assert_eq!(later, vec![key.id()]);
        let mut renewed = fixture.ticket("b");
        renewed.tokens.access_expires_at = Some(fixture.clock.unix_now() + 3_600);
        assert!(store.renew(key.id(), renewed).await.expect("renew"));
        let after = store
            .refresh_candidates(Duration::from_secs(300), 10)
            .await
            .expect("candidates");
        assert!(after.is_empty(), "the index moved with the renewed expiry");
    }
}
