//! The redb file: sessions with their activity, and the indexes that sweeps and logout need.
//!
//! This layer stores opaque sealed tickets and fixed-size metadata; it neither encrypts nor
//! decides expiry (see `tickets.rs` and `session.rs`). Every method blocks on disk I/O: writes
//! run on the blocking pool; single-row reads are short enough to run inline, since redb readers
//! never wait for the writer. Write transactions stay short: one session, or one batch.
//!
//! Tables (the layout is documented in docs/design.md). A session id is (created ms, hash), so
//! new sessions are appended at the end of `sessions` and its pages stay full.
//! - `sessions`:    (created ms, hash) → metadata (89 bytes) ‖ sealed ticket record
//! - `by_deadline`: (deadline, created ms, hash) → ()   — sweeps read only what is due
//! - `by_sid_day`:  (UTC day of creation, keyed hash of provider sid, created ms, hash) → ()
//! - `by_sub_day`:  (UTC day of creation, keyed hash of subject, created ms, hash) → ()
//! - `by_refresh`:  (access-token expiry, created ms, hash) → ()  — refreshable sessions only
//!
//! The two identity indexes (by provider sid, by subject) are not updated when a sweep evicts a
//! session (logouts and revocations do remove their entries): their keys are random hashes, so
//! evicting 100,000 sessions would rewrite nearly every page of both. A lookup checks each entry
//! against the session's own metadata instead, and whole days of entries are dropped once no
//! session created on them is left (a contiguous range, since the day comes first). Removal therefore costs in proportion to the sessions
//! removed, and the indexes hold at most the sessions created within the oldest live one's age.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use crate::session::SessionId;
use crate::sync::Locked;

type IdKey = (u64, [u8; 32]);
type LegacyIndexKey = ([u8; 32], u64, [u8; 32]);
/// (UTC day of creation, keyed hash, created ms, hash).
type IdentityKey = (u64, [u8; 32], u64, [u8; 32]);

const SESSIONS: TableDefinition<IdKey, &[u8]> = TableDefinition::new("sessions");
/// Sealed ID tokens, apart from the sessions they belong to: only `/api/user`, logout and the
/// admin command read them, and kept out of `sessions` they leave its rows half as long, so a
/// cold read of a session touches half the pages.
const ID_TOKENS: TableDefinition<IdKey, &[u8]> = TableDefinition::new("id_tokens");
const BY_DEADLINE: TableDefinition<(u64, u64, [u8; 32]), ()> = TableDefinition::new("by_deadline");
const BY_SID: TableDefinition<IdentityKey, ()> = TableDefinition::new("by_sid_day");
const BY_SUB: TableDefinition<IdentityKey, ()> = TableDefinition::new("by_sub_day");
const BY_REFRESH: TableDefinition<(u64, u64, [u8; 32]), ()> = TableDefinition::new("by_refresh");
/// Back-channel logout tokens seen: keyed hash of the `jti` → the Unix second after which it
/// may be forgotten (the token is then too old to be accepted anyway).
const LOGOUT_JTIS: TableDefinition<[u8; 32], u64> = TableDefinition::new("logout_jtis");
/// The identity indexes of files written before they were keyed by day: migrated on open.
const LEGACY_BY_SID: TableDefinition<LegacyIndexKey, ()> = TableDefinition::new("by_sid");
const LEGACY_BY_SUB: TableDefinition<LegacyIndexKey, ()> = TableDefinition::new("by_sub");

const DAY_MS: u64 = 86_400_000;

fn day_of(created_ms: u64) -> u64 {
    created_ms / DAY_MS
}

fn identity_key(hash: [u8; 32], id: SessionId) -> IdentityKey {
    (day_of(id.created_ms), hash, id.created_ms, id.hash)
}

fn key(id: SessionId) -> IdKey {
    (id.created_ms, id.hash)
}

fn id_of(created_ms: u64, hash: [u8; 32]) -> SessionId {
    SessionId { created_ms, hash }
}

/// A storage failure. Carries redb's description, never record contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb reported an error.
    #[error("session database: {0}")]
    Database(#[from] redb::Error),
    /// A row is shorter than its metadata: the file was written by something else.
    #[error("session database: malformed row for session {0}")]
    MalformedRow(SessionId),
    /// The commit a new session went out in, together with others, failed.
    #[error("session database: the commit failed: {0}")]
    GroupCommit(String),
    /// The blocking task running a database operation panicked or was cancelled.
    #[error("session database: the database task did not complete")]
    TaskFailed,
    /// Redis failed or could not be reached (`--store redis://…`).
    #[error("session store (Redis): {0}")]
    Redis(String),
    /// The store does not answer its health checks: refused before trying (a login).
    #[error("session store: not answering")]
    Unavailable,
    /// The Redis store was claimed by gateways with another ticket key.
    #[error(
        "session store (Redis): its sessions were written under another ticket key; every \
         gateway sharing a store needs the same --ticket-key-file"
    )]
    OtherKey,
}

fn db_error(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Database(error.into())
}

/// Per-session metadata stored in front of the sealed ticket, readable without the ticket key,
/// so that touches and sweeps never need to decrypt anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Last time the session was used (seconds since the epoch), at touch granularity.
    pub last_access: u64,
    /// When the session ends unless used again: min(absolute expiry, last access + idle timeout).
    pub deadline: u64,
    /// Keyed hash of the subject.
    pub subject: [u8; 32],
    /// Keyed hash of the provider's session id, when it sent one.
    pub provider_sid: Option<[u8; 32]>,
    /// When the access token expires, for sessions that have a refresh token (the refresh
    /// sweep's index).
    pub refresh_at: Option<u64>,
}

impl Meta {
    /// Encoded length.
    pub const LEN: usize = 8 + 8 + 32 + 1 + 32 + 8;

    const HAS_SID: u8 = 1;
    const HAS_REFRESH: u8 = 2;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0..8].copy_from_slice(&self.last_access.to_be_bytes());
        out[8..16].copy_from_slice(&self.deadline.to_be_bytes());
        out[16..48].copy_from_slice(&self.subject);
        if let Some(sid) = self.provider_sid {
            out[48] |= Self::HAS_SID;
            out[49..81].copy_from_slice(&sid);
        }
        if let Some(refresh_at) = self.refresh_at {
            out[48] |= Self::HAS_REFRESH;
            out[81..89].copy_from_slice(&refresh_at.to_be_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes = bytes.get(..Self::LEN)?;
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(word)
        };
        let hash_at = |at: usize| {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&bytes[at..at + 32]);
            hash
        };
        Some(Self {
            last_access: u64_at(0),
            deadline: u64_at(8),
            subject: hash_at(16),
            provider_sid: (bytes[48] & Self::HAS_SID != 0).then(|| hash_at(49)),
            refresh_at: (bytes[48] & Self::HAS_REFRESH != 0).then(|| u64_at(81)),
        })
    }
}

fn row(meta: &Meta, sealed: &[u8]) -> Vec<u8> {
    let mut row = Vec::with_capacity(Meta::LEN + sealed.len());
    row.extend_from_slice(&meta.encode());
    row.extend_from_slice(sealed);
    row
}

fn split_row(id: SessionId, row: &[u8]) -> Result<(Meta, &[u8]), StoreError> {
    let meta = Meta::decode(row).ok_or(StoreError::MalformedRow(id))?;
    Ok((meta, &row[Meta::LEN..]))
}

/// A new session for [`SessionDb::insert_batch`].
#[derive(Debug, Clone)]
pub struct NewRow {
    /// The session.
    pub id: SessionId,
    /// Its sealed ticket record.
    pub sealed: Vec<u8>,
    /// Its sealed ID token, if it has one.
    pub id_token: Option<Vec<u8>>,
    /// Its metadata.
    pub meta: Meta,
}

/// One stored session: its sealed ticket record and its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The sealed ticket, as written by `tickets.rs`.
    pub sealed: Vec<u8>,
    /// Activity and index data.
    pub meta: Meta,
}

/// A session's place in the deadline index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuePosition {
    /// Its deadline.
    pub deadline: u64,
    /// The session.
    pub id: SessionId,
}

/// Why sessions are removed, which decides how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Logout, back-channel logout, revocation: synced before returning, and gone from every
    /// index at once.
    Logout,
    /// An eviction sweep: not synced (a later durable commit, or [`SessionDb::sync`], makes it
    /// so; a crash merely postpones the work), and the identity-index entries are left for
    /// [`SessionDb::prune_identity_indexes`] (see the module notes).
    Eviction,
}

/// A last-access update for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touch {
    /// The session.
    pub id: SessionId,
    /// The new last-access time.
    pub last_access: u64,
    /// The new deadline that follows from it.
    pub deadline: u64,
}

/// The session database.
pub struct SessionDb {
    db: Database,
    /// A read snapshot of `sessions` that single-row reads share until the next commit: a
    /// cold read then costs one B-tree lookup, not a transaction and a table opening as well.
    /// Every commit drops it, so a read that starts after a write returns sees that write.
    reader: std::sync::Mutex<Option<Arc<SessionsTable>>>,
    /// Logins waiting for, or part of, the commit under way.
    group: GroupCommit,
}

/// Logins committed together ([`SessionDb::insert_row`]).
#[derive(Default)]
struct GroupCommit {
    state: std::sync::Mutex<GroupState>,
    /// Signalled after each commit.
    committed: std::sync::Condvar,
}

#[derive(Default)]
struct GroupState {
    /// Rows for the next commit.
    waiting: Vec<NewRow>,
    /// The number of the commit `waiting` will go out in.
    next_batch: u64,
    /// Commits numbered below this are done.
    done_through: u64,
    /// Whether a call is committing now.
    leading: bool,
    /// The latest failed commits and why (a waiter reads its own once woken).
    failures: std::collections::VecDeque<(u64, String)>,
    /// Commits made.
    commits: u64,
}

impl GroupState {
    /// Failed commits remembered: far more than can finish while a waiter wakes up.
    const FAILURES_KEPT: usize = 64;

    fn remember_failure(&mut self, batch: u64, reason: String) {
        if self.failures.len() == Self::FAILURES_KEPT {
            self.failures.pop_front();
        }
        self.failures.push_back((batch, reason));
    }

    /// How commit `batch` (done) went for a row that waited for it.
    fn outcome(&self, batch: u64) -> Result<(), StoreError> {
        match self.failures.iter().find(|(failed, _)| *failed == batch) {
            Some((_, reason)) => Err(StoreError::GroupCommit(reason.clone())),
            None => Ok(()),
        }
    }
}

type SessionsTable = redb::ReadOnlyTable<IdKey, &'static [u8]>;

impl std::fmt::Debug for SessionDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionDb").finish_non_exhaustive()
    }
}

impl SessionDb {
    /// Opens (or creates) the file with a page cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        let io_error = |error: std::io::Error| db_error(redb::StorageError::Io(error));
        // Tickets are sealed, but metadata and file size are nobody else's business either:
        // created 0600, and an older file is narrowed to it.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_error)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_error)?;
        // Sessions are read at random: read-ahead would only fetch pages nobody asked for and
        // push useful ones out of the page cache.
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Random)
            .map_err(|error| io_error(error.into()))?;
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create_with_backend(redb::backends::FileBackend::new(file).map_err(db_error)?)
            .map_err(db_error)?;
        let txn = db.begin_write().map_err(db_error)?;
        Tables::open(&txn)?;
        txn.open_table(LOGOUT_JTIS).map_err(db_error)?;
        migrate_identity_indexes(&txn)?;
        txn.commit().map_err(db_error)?;
        Ok(Self {
            db,
            reader: std::sync::Mutex::new(None),
            group: GroupCommit::default(),
        })
    }

    fn reader_slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<SessionsTable>>> {
        self.reader.locked()
    }

    /// The shared snapshot of `sessions`, opened if a commit dropped it. The lock is held while
    /// opening, so a commit that lands meanwhile drops the new snapshot only after it is stored.
    fn sessions_snapshot(&self) -> Result<Arc<SessionsTable>, StoreError> {
        let mut slot = self.reader_slot();
        if let Some(table) = slot.as_ref() {
            return Ok(Arc::clone(table));
        }
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = Arc::new(txn.open_table(SESSIONS).map_err(db_error)?);
        *slot = Some(Arc::clone(&table));
        Ok(table)
    }

    /// Commits a write transaction and drops the read snapshot it made stale.
    fn commit(&self, txn: redb::WriteTransaction) -> Result<(), StoreError> {
        let committed = txn.commit().map_err(db_error);
        *self.reader_slot() = None;
        committed
    }

    /// Records a back-channel logout token's `jti` (its keyed hash) until `forget_after`,
    /// durably, so that a restart does not make a captured token playable again. False when it
    /// was recorded before and not yet forgotten: a replay. Forgotten entries are dropped here.
    pub fn remember_logout_jti(
        &self,
        jti: [u8; 32],
        forget_after: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        {
            let mut table = txn.open_table(LOGOUT_JTIS).map_err(db_error)?;
            let seen = table
                .get(jti)
                .map_err(db_error)?
                .is_some_and(|until| until.value() > now);
            if seen {
                return Ok(false);
            }
            // Only tokens with a valid provider signature get here: a handful per logout, so
            // the scan stays short.
            table.retain(|_, until| until > now).map_err(db_error)?;
            table.insert(jti, forget_after).map_err(db_error)?;
        }
        txn.commit().map_err(db_error)?;
        Ok(true)
    }

    /// Stores a new session durably (the commit is on disk when this returns), or replaces one
    /// with the same id.
    ///
    /// Group commit: logins that arrive while a commit is on its way to the disk wait, and go
    /// out together in the next transaction, with one `fsync` for all of them; each call still
    /// returns only once its own row is durable. One login alone commits at once, as before.
    pub fn insert_row(&self, row: NewRow) -> Result<(), StoreError> {
        let mut group = self.group.state.locked();
        let batch = group.next_batch;
        group.waiting.push(row);
        loop {
            if group.done_through > batch {
                return group.outcome(batch);
            }
            if !group.leading {
                break;
            }
            group = self
                .group
                .committed
                .wait(group)
                .unwrap_or_else(|e| e.into_inner());
        }
        // No commit is under way: this call commits everything that waits, its own row included.
        group.leading = true;
        let rows = std::mem::take(&mut group.waiting);
        let taken = group.next_batch;
        group.next_batch += 1;
        drop(group);
        let result = self.insert_rows(&rows);
        drop(rows);
        let mut group = self.group.state.locked();
        group.done_through = taken + 1;
        group.commits += 1;
        if let Err(error) = &result {
            group.remember_failure(taken, error.to_string());
        }
        // Whoever waits next (rows that came during this commit) takes the lead.
        group.leading = false;
        drop(group);
        self.group.committed.notify_all();
        result
    }

    /// [`SessionDb::insert_row`] from borrowed parts.
    pub fn insert(
        &self,
        id: SessionId,
        sealed: &[u8],
        id_token: Option<&[u8]>,
        meta: Meta,
    ) -> Result<(), StoreError> {
        self.insert_row(NewRow {
            id,
            sealed: sealed.to_vec(),
            id_token: id_token.map(<[u8]>::to_vec),
            meta,
        })
    }

    /// Transactions [`SessionDb::insert_row`] has committed (each one `fsync`).
    pub fn login_commits(&self) -> u64 {
        self.group.state.locked().commits
    }

    /// Writes rows, each replacing any session with its id, in one durable transaction.
    fn insert_rows(&self, rows: &[NewRow]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        {
            let mut tables = Tables::open(&txn)?;
            for row in rows {
                tables.delete(row.id)?;
                tables.put(row.id, &row.sealed, &row.meta)?;
                if let Some(id_token) = &row.id_token {
                    tables.put_id_token(row.id, id_token)?;
                }
            }
        }
        self.commit(txn)
    }

    /// Stores many new sessions in one durable transaction (bulk import and benchmarks).
    pub fn insert_batch(&self, rows: &[NewRow]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        {
            let mut tables = Tables::open(&txn)?;
            for row in rows {
                tables.put(row.id, &row.sealed, &row.meta)?;
            }
            // The ID tokens after, in their own table's key order (the rows come sorted).
            for row in rows {
                if let Some(id_token) = &row.id_token {
                    tables.put_id_token(row.id, id_token)?;
                }
            }
        }
        self.commit(txn)
    }

    /// The sealed ID token of a session, if it has one stored.
    pub fn get_id_token(&self, id: SessionId) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(ID_TOKENS).map_err(db_error)?;
        Ok(table
            .get(key(id))
            .map_err(db_error)?
            .map(|value| value.value().to_vec()))
    }

    /// Reads one session: a single B-tree lookup.
    pub fn get(&self, id: SessionId) -> Result<Option<Record>, StoreError> {
        let sessions = self.sessions_snapshot()?;
        let Some(value) = sessions.get(key(id)).map_err(db_error)? else {
            return Ok(None);
        };
        let (meta, sealed) = split_row(id, value.value())?;
        Ok(Some(Record {
            sealed: sealed.to_vec(),
            meta,
        }))
    }

    /// Replaces the sealed ticket of an existing session (after a refresh), durably, with its
    /// new access-token expiry. Returns false when the session no longer exists (it was removed
    /// meanwhile: do not resurrect it).
    pub fn replace_ticket(
        &self,
        id: SessionId,
        sealed: &[u8],
        id_token: Option<&[u8]>,
        refresh_at: Option<u64>,
        deadline: impl FnOnce(u64) -> u64,
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        let replaced = {
            let mut tables = Tables::open(&txn)?;
            let old = match tables.sessions.get(key(id)).map_err(db_error)? {
                Some(value) => Some(split_row(id, value.value())?.0),
                None => None,
            };
            if let Some(old) = old {
                if let Some(at) = old.refresh_at {
                    tables
                        .by_refresh
                        .remove((at, id.created_ms, id.hash))
                        .map_err(db_error)?;
                }
                let deadline = deadline(old.last_access);
                if deadline != old.deadline {
                    tables
                        .by_deadline
                        .remove((old.deadline, id.created_ms, id.hash))
                        .map_err(db_error)?;
                    tables
                        .by_deadline
                        .insert((deadline, id.created_ms, id.hash), ())
                        .map_err(db_error)?;
                }
                let meta = Meta {
                    refresh_at,
                    deadline,
                    ..old
                };
                if let Some(at) = refresh_at {
                    tables
                        .by_refresh
                        .insert((at, id.created_ms, id.hash), ())
                        .map_err(db_error)?;
                }
                tables
                    .sessions
                    .insert(key(id), row(&meta, sealed).as_slice())
                    .map_err(db_error)?;
                // A refresh without a new ID token keeps the stored one.
                if let Some(id_token) = id_token {
                    tables.put_id_token(id, id_token)?;
                }
            }
            old.is_some()
        };
        self.commit(txn)?;
        Ok(replaced)
    }

    /// Records last-access times for many sessions in one transaction. Sessions that no longer
    /// exist are skipped. Not synced on its own: losing the last few touches in a crash only
    /// makes sessions look idle slightly earlier.
    pub fn touch(&self, touches: &[Touch]) -> Result<(), StoreError> {
        if touches.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(db_error)?;
        txn.set_durability(Durability::None).map_err(db_error)?;
        {
            let mut sessions = txn.open_table(SESSIONS).map_err(db_error)?;
            let mut by_deadline = txn.open_table(BY_DEADLINE).map_err(db_error)?;
            for touch in touches {
                let id = touch.id;
                let updated = match sessions.get(key(id)).map_err(db_error)? {
                    Some(value) => {
                        let (old, sealed) = split_row(id, value.value())?;
                        (touch.last_access > old.last_access).then(|| {
                            let new = Meta {
                                last_access: touch.last_access,
                                deadline: touch.deadline,
                                ..old
                            };
                            (old, row(&new, sealed))
                        })
                    }
                    None => None,
                };
                let Some((old, new_row)) = updated else {
                    continue;
                };
                by_deadline
                    .remove((old.deadline, id.created_ms, id.hash))
                    .map_err(db_error)?;
                by_deadline
                    .insert((touch.deadline, id.created_ms, id.hash), ())
                    .map_err(db_error)?;
                sessions
                    .insert(key(id), new_row.as_slice())
                    .map_err(db_error)?;
            }
        }
        self.commit(txn)
    }

    /// Removes a session and its index entries, durably. A missing session is not an error
    /// (the seed's RemoveAsync threw); returns whether anything was removed.
    pub fn remove(&self, id: SessionId) -> Result<bool, StoreError> {
        let removed = self.remove_many(&[id], Removal::Logout)?;
        Ok(removed == 1)
    }

    /// Removes several sessions in one transaction; returns how many existed.
    pub fn remove_many(&self, ids: &[SessionId], removal: Removal) -> Result<usize, StoreError> {
        let mut txn = self.db.begin_write().map_err(db_error)?;
        if removal == Removal::Eviction {
            txn.set_durability(Durability::None).map_err(db_error)?;
        }
        let mut removed = 0;
        {
            let mut tables = Tables::open(&txn)?;
            // Rows first, in key order; then each index in its own key order, so that every
            // B-tree is walked once front to back instead of jumping between trees.
            let mut sorted = ids.to_vec();
            sorted.sort_unstable();
            let mut deadlines = Vec::with_capacity(sorted.len());
            let mut refreshes = Vec::new();
            let mut subjects = Vec::new();
            let mut sids = Vec::new();
            let mut id_tokens = Vec::with_capacity(sorted.len());
            for id in sorted {
                let Some(value) = tables.sessions.remove(key(id)).map_err(db_error)? else {
                    continue;
                };
                let meta = split_row(id, value.value())?.0;
                removed += 1;
                id_tokens.push(id);
                deadlines.push((meta.deadline, id.created_ms, id.hash));
                if let Some(at) = meta.refresh_at {
                    refreshes.push((at, id.created_ms, id.hash));
                }
                if removal == Removal::Logout {
                    subjects.push(identity_key(meta.subject, id));
                    sids.extend(meta.provider_sid.map(|sid| identity_key(sid, id)));
                }
            }
            for list in [&mut deadlines, &mut refreshes] {
                list.sort_unstable();
            }
            for list in [&mut subjects, &mut sids] {
                list.sort_unstable();
            }
            for id in id_tokens {
                tables.id_tokens.remove(key(id)).map_err(db_error)?;
            }
            for entry in deadlines {
                tables.by_deadline.remove(entry).map_err(db_error)?;
            }
            for entry in refreshes {
                tables.by_refresh.remove(entry).map_err(db_error)?;
            }
            for entry in subjects {
                tables.by_sub.remove(entry).map_err(db_error)?;
            }
            for entry in sids {
                tables.by_sid.remove(entry).map_err(db_error)?;
            }
        }
        self.commit(txn)?;
        Ok(removed)
    }

    /// Makes every earlier lazy commit durable (an empty durable commit).
    pub fn sync(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        self.commit(txn)
    }

    /// Up to `limit` sessions whose deadline is at or before `now`, earliest first, starting
    /// after `after` (a position a previous call returned). Reads only the due part of the
    /// deadline index.
    pub fn due(
        &self,
        now: u64,
        after: Option<DuePosition>,
        limit: usize,
    ) -> Result<Vec<DuePosition>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let by_deadline = txn.open_table(BY_DEADLINE).map_err(db_error)?;
        let start = after.map_or((0, 0, [0u8; 32]), |position| {
            (position.deadline, position.id.created_ms, position.id.hash)
        });
        let mut due = Vec::new();
        for entry in by_deadline
            .range(start..=(now, u64::MAX, [0xff; 32]))
            .map_err(db_error)?
        {
            let (entry, _) = entry.map_err(db_error)?;
            let (deadline, created_ms, hash) = entry.value();
            let position = DuePosition {
                deadline,
                id: id_of(created_ms, hash),
            };
            if Some(position) == after {
                continue;
            }
            due.push(position);
            if due.len() == limit {
                break;
            }
        }
        Ok(due)
    }

    /// Up to `limit` sessions in creation order, starting after `after`: id, metadata and the
    /// sealed record (for the admin listing).
    pub fn list(
        &self,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<Vec<(SessionId, Record)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let sessions = txn.open_table(SESSIONS).map_err(db_error)?;
        let start = after.map_or((0, [0u8; 32]), key);
        let mut rows = Vec::new();
        for entry in sessions.range(start..).map_err(db_error)? {
            let (entry_key, value) = entry.map_err(db_error)?;
            let (created_ms, hash) = entry_key.value();
            let id = id_of(created_ms, hash);
            if Some(id) == after {
                continue;
            }
            let (meta, sealed) = split_row(id, value.value())?;
            rows.push((
                id,
                Record {
                    sealed: sealed.to_vec(),
                    meta,
                },
            ));
            if rows.len() == limit {
                break;
            }
        }
        Ok(rows)
    }

    /// Up to `limit` refreshable sessions whose access token expires at or before `until`,
    /// soonest first.
    pub fn refresh_due(&self, until: u64, limit: usize) -> Result<Vec<SessionId>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let by_refresh = txn.open_table(BY_REFRESH).map_err(db_error)?;
        let mut due = Vec::new();
        for entry in by_refresh
            .range((0, 0, [0u8; 32])..=(until, u64::MAX, [0xff; 32]))
            .map_err(db_error)?
            .take(limit)
        {
            let (entry, _) = entry.map_err(db_error)?;
            let (_, created_ms, hash) = entry.value();
            due.push(id_of(created_ms, hash));
        }
        Ok(due)
    }

    /// Sessions whose provider `sid` has this keyed hash.
    pub fn by_provider_sid(&self, sid: [u8; 32]) -> Result<Vec<SessionId>, StoreError> {
        self.identity_lookup(BY_SID, sid, |meta| meta.provider_sid == Some(sid))
    }

    /// Sessions whose subject has this keyed hash.
    pub fn by_subject(&self, subject: [u8; 32]) -> Result<Vec<SessionId>, StoreError> {
        self.identity_lookup(BY_SUB, subject, |meta| meta.subject == subject)
    }

    /// One range per day between the oldest and the newest session, each candidate checked
    /// against the session's own metadata: the index may still name removed sessions.
    fn identity_lookup(
        &self,
        table: TableDefinition<IdentityKey, ()>,
        hash: [u8; 32],
        matches: impl Fn(&Meta) -> bool,
    ) -> Result<Vec<SessionId>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let sessions = txn.open_table(SESSIONS).map_err(db_error)?;
        let index = txn.open_table(table).map_err(db_error)?;
        let (Some(first), Some(last)) = (
            sessions.first().map_err(db_error)?,
            sessions.last().map_err(db_error)?,
        ) else {
            return Ok(Vec::new());
        };
        let days = day_of(first.0.value().0)..=day_of(last.0.value().0);
        let mut ids = Vec::new();
        for day in days {
            for entry in index
                .range((day, hash, 0, [0u8; 32])..=(day, hash, u64::MAX, [0xff; 32]))
                .map_err(db_error)?
            {
                let (entry, _) = entry.map_err(db_error)?;
                let (_, _, created_ms, session) = entry.value();
                let id = id_of(created_ms, session);
                if let Some(row) = sessions.get(key(id)).map_err(db_error)?
                    && matches(&split_row(id, row.value())?.0)
                {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }

    /// Drops up to `limit` identity-index entries of days before the oldest session's (all of
    /// them name removed sessions), in a lazy commit; returns how many. Sweeps call it until it
    /// returns less than `limit`.
    pub fn prune_identity_indexes(&self, limit: usize) -> Result<usize, StoreError> {
        let mut txn = self.db.begin_write().map_err(db_error)?;
        txn.set_durability(Durability::None).map_err(db_error)?;
        let mut pruned = 0;
        {
            let sessions = txn.open_table(SESSIONS).map_err(db_error)?;
            let first_day = match sessions.first().map_err(db_error)? {
                Some((first, _)) => day_of(first.value().0),
                None => u64::MAX,
            };
            drop(sessions);
            for definition in [BY_SID, BY_SUB] {
                let mut index = txn.open_table(definition).map_err(db_error)?;
                let stale = ..(first_day, [0u8; 32], 0, [0u8; 32]);
                let mut last = None;
                let mut count = 0;
                for entry in index.range(stale).map_err(db_error)?.take(limit - pruned) {
                    let (entry, _) = entry.map_err(db_error)?;
                    last = Some(entry.value());
                    count += 1;
                }
                if let Some(last) = last {
                    index.retain_in(..=last, |_, ()| false).map_err(db_error)?;
                    pruned += count;
                }
                if pruned == limit {
                    break;
                }
            }
        }
        self.commit(txn)?;
        Ok(pruned)
    }

    /// Rewrites the file to return free pages to the operating system (needs exclusive
    /// access: no other transaction may be open). Returns whether anything was compacted.
    pub fn compact(&mut self) -> Result<bool, StoreError> {
        // Compaction needs every read transaction closed, the shared snapshot's included.
        *self.reader_slot() = None;
        let mut compacted = false;
        while self.db.compact().map_err(db_error)? {
            compacted = true;
        }
        Ok(compacted)
    }

    /// Space accounting of the file: (allocated pages × page size, bytes of stored leaves,
    /// fragmented bytes).
    pub fn space(&self) -> Result<(u64, u64, u64), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        let stats = txn.stats().map_err(db_error)?;
        txn.abort().map_err(db_error)?;
        Ok((
            stats.allocated_pages() * stats.page_size() as u64,
            stats.stored_bytes(),
            stats.fragmented_bytes(),
        ))
    }

    /// How many entries the two identity indexes hold together, stale ones included.
    pub fn identity_entries(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let mut entries = 0;
        for table in [BY_SID, BY_SUB] {
            entries += txn
                .open_table(table)
                .map_err(db_error)?
                .len()
                .map_err(db_error)?;
        }
        Ok(entries)
    }

    /// How many sessions are stored.
    pub fn count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let sessions = txn.open_table(SESSIONS).map_err(db_error)?;
        sessions.len().map_err(db_error)
    }
}

/// Moves the entries of the pre-day identity indexes into the day-keyed ones, once.
fn migrate_identity_indexes(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    use redb::TableHandle;
    let names: Vec<String> = txn
        .list_tables()
        .map_err(db_error)?
        .map(|table| table.name().to_owned())
        .collect();
    for (legacy, current) in [(LEGACY_BY_SID, BY_SID), (LEGACY_BY_SUB, BY_SUB)] {
        if !names.iter().any(|name| name == legacy.name()) {
            continue;
        }
        {
            let old = txn.open_table(legacy).map_err(db_error)?;
            let mut new = txn.open_table(current).map_err(db_error)?;
            for entry in old.iter().map_err(db_error)? {
                let (entry, _) = entry.map_err(db_error)?;
                let (hash, created_ms, session) = entry.value();
                new.insert(identity_key(hash, id_of(created_ms, session)), ())
                    .map_err(db_error)?;
            }
        }
        txn.delete_table(legacy).map_err(db_error)?;
    }
    Ok(())
}

/// The tables of one write transaction, opened together.
struct Tables<'txn> {
    sessions: redb::Table<'txn, IdKey, &'static [u8]>,
    id_tokens: redb::Table<'txn, IdKey, &'static [u8]>,
    by_deadline: redb::Table<'txn, (u64, u64, [u8; 32]), ()>,
    by_sid: redb::Table<'txn, IdentityKey, ()>,
    by_sub: redb::Table<'txn, IdentityKey, ()>,
    by_refresh: redb::Table<'txn, (u64, u64, [u8; 32]), ()>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            sessions: txn.open_table(SESSIONS).map_err(db_error)?,
            id_tokens: txn.open_table(ID_TOKENS).map_err(db_error)?,
            by_deadline: txn.open_table(BY_DEADLINE).map_err(db_error)?,
            by_sid: txn.open_table(BY_SID).map_err(db_error)?,
            by_sub: txn.open_table(BY_SUB).map_err(db_error)?,
            by_refresh: txn.open_table(BY_REFRESH).map_err(db_error)?,
        })
    }

    /// Writes a session row and its index entries.
    fn put(&mut self, id: SessionId, sealed: &[u8], meta: &Meta) -> Result<(), StoreError> {
        self.sessions
            .insert(key(id), row(meta, sealed).as_slice())
            .map_err(db_error)?;
        self.by_deadline
            .insert((meta.deadline, id.created_ms, id.hash), ())
            .map_err(db_error)?;
        self.by_sub
            .insert(identity_key(meta.subject, id), ())
            .map_err(db_error)?;
        if let Some(sid) = meta.provider_sid {
            self.by_sid
                .insert(identity_key(sid, id), ())
                .map_err(db_error)?;
        }
        if let Some(at) = meta.refresh_at {
            self.by_refresh
                .insert((at, id.created_ms, id.hash), ())
                .map_err(db_error)?;
        }
        Ok(())
    }

    /// Writes (or replaces) a session's sealed ID token.
    fn put_id_token(&mut self, id: SessionId, sealed: &[u8]) -> Result<(), StoreError> {
        self.id_tokens.insert(key(id), sealed).map_err(db_error)?;
        Ok(())
    }

    /// Removes a session row, its ID token and the index entries its metadata names; false
    /// when absent.
    fn delete(&mut self, id: SessionId) -> Result<bool, StoreError> {
        self.id_tokens.remove(key(id)).map_err(db_error)?;
        let meta = match self.sessions.remove(key(id)).map_err(db_error)? {
            Some(value) => split_row(id, value.value())?.0,
            None => return Ok(false),
        };
        self.by_deadline
            .remove((meta.deadline, id.created_ms, id.hash))
            .map_err(db_error)?;
        self.by_sub
            .remove(identity_key(meta.subject, id))
            .map_err(db_error)?;
        if let Some(sid) = meta.provider_sid {
            self.by_sid
                .remove(identity_key(sid, id))
                .map_err(db_error)?;
        }
        if let Some(at) = meta.refresh_at {
            self.by_refresh
                .remove((at, id.created_ms, id.hash))
                .map_err(db_error)?;
        }
        Ok(true)
    }
}

/// Files on disk.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The data directory.
    pub data_dir: std::path::PathBuf,
    /// The ticket key file.
    pub ticket_key_file: std::path::PathBuf,
    /// redb page cache in bytes.
    pub db_cache_bytes: usize,
    /// Redis instead of the redb file (`--store redis://…`); the key file stays in the data
    /// directory (or `--ticket-key-file`).
    pub redis: Option<crate::redis_url::RedisStore>,
}

/// The data directory's layout, in one place: `sessions.redb`, `ticket.key` (unless
/// `--ticket-key-file` says otherwise) and `admin.sock` (unless `--admin-socket` does).
impl StorageConfig {
    /// Path of the session database.
    pub fn database_path(&self) -> std::path::PathBuf {
        self.data_dir.join("sessions.redb")
    }

    /// The ticket key file of `data_dir` when no other is named.
    pub fn default_ticket_key_file(data_dir: &std::path::Path) -> std::path::PathBuf {
        data_dir.join("ticket.key")
    }

    /// The admin socket of `data_dir` when no other is named.
    pub fn default_admin_socket(data_dir: &std::path::Path) -> std::path::PathBuf {
        data_dir.join("admin.sock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sid(n: u8) -> SessionId {
        SessionId {
            created_ms: u64::from(n),
            hash: [n; 32],
        }
    }

    fn meta(last_access: u64, deadline: u64, subject: u8, sid: Option<u8>) -> Meta {
        Meta {
            last_access,
            deadline,
            subject: [subject; 32],
            provider_sid: sid.map(|s| [s; 32]),
            refresh_at: Some(deadline / 2),
        }
    }

    fn open() -> (tempfile::TempDir, SessionDb) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = SessionDb::open(&dir.path().join("sessions.redb"), 1 << 20).expect("open");
        (dir, db)
    }

    #[test]
    fn logins_that_arrive_during_a_commit_go_out_together_and_each_is_durable_on_return() {
        let (dir, db) = open();
        let db = Arc::new(db);
        // Holding the writer: the first login becomes the leader and waits for it; the eight
        // after it queue behind the leader.
        let held = db.db.begin_write().expect("writer");
        let insert = |n: u8| {
            let db = Arc::clone(&db);
            std::thread::spawn(move || {
                db.insert(sid(n), &[n; 40], Some(&[n; 8]), meta(1, 100, n, None))
            })
        };
        let first = insert(1);
        let wait_until = |what: &dyn Fn(&GroupState) -> bool| {
            for _ in 0..1_000 {
                if what(&db.group.state.locked()) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            panic!("the logins never queued");
        };
        wait_until(&|state| state.leading && state.waiting.is_empty());
        let others: Vec<_> = (2..=9).map(insert).collect();
        wait_until(&|state| state.waiting.len() == 8);
        drop(held);
        first.join().expect("thread").expect("first login");
        for other in others {
            other.join().expect("thread").expect("a later login");
        }
        // Nine logins, two commits: the leader's, then the eight that queued meanwhile.
        assert_eq!(db.login_commits(), 2);
        let db = Arc::into_inner(db).expect("one owner");
        drop(db);
        let db = SessionDb::open(&dir.path().join("sessions.redb"), 1 << 20).expect("reopen");
        for n in 1..=9 {
            let record = db.get(sid(n)).expect("read").expect("stored");
            assert_eq!(record.sealed, vec![n; 40]);
            assert_eq!(db.get_id_token(sid(n)).expect("read"), Some(vec![n; 8]));
        }
    }

    #[test]
    fn id_tokens_follow_their_session() {
        let (_dir, db) = open();
        let (a, b, c) = (sid(1), sid(2), sid(3));
        for id in [a, b, c] {
            db.insert(id, b"sealed", Some(b"idt"), meta(10, 100, 7, None))
                .expect("insert");
        }
        let stored = |id| db.get_id_token(id).expect("read");
        assert_eq!(stored(a).as_deref(), Some(&b"idt"[..]));
        // A refresh without a new ID token keeps it; with one, replaces it.
        assert!(
            db.replace_ticket(a, b"new", None, None, |_| 100)
                .expect("replace")
        );
        assert_eq!(stored(a).as_deref(), Some(&b"idt"[..]));
        assert!(
            db.replace_ticket(a, b"newer", Some(b"idt-2"), None, |_| 100)
                .expect("replace")
        );
        assert_eq!(stored(a).as_deref(), Some(&b"idt-2"[..]));
        // A replaced session starts without the old one's.
        db.insert(b, b"again", None, meta(10, 100, 7, None))
            .expect("insert");
        assert!(stored(b).is_none());
        // Logout, and an eviction sweep, remove it with the session.
        assert!(db.remove(a).expect("remove"));
        assert!(stored(a).is_none());
        assert_eq!(db.remove_many(&[c], Removal::Eviction).expect("evict"), 1);
        assert!(stored(c).is_none());
    }

    #[test]
    fn insert_get_remove_keeps_indexes_in_step() {
        let (_dir, db) = open();
        let a = sid(1);
        let b = sid(2);
        db.insert(a, b"sealed-a", None, meta(10, 100, 7, Some(9)))
            .expect("insert");
        db.insert(b, b"sealed-b", None, meta(10, 200, 7, None))
            .expect("insert");
        assert_eq!(
            db.get(a).expect("get").map(|r| r.sealed),
            Some(b"sealed-a".to_vec())
        );
        assert_eq!(db.by_subject([7; 32]).expect("sub"), vec![a, b]);
        assert_eq!(db.by_provider_sid([9; 32]).expect("sid"), vec![a]);
        assert_eq!(
            db.due(150, None, 10)
                .expect("due")
                .iter()
                .map(|p| p.id)
                .collect::<Vec<_>>(),
            vec![a]
        );

        assert!(db.remove(a).expect("remove"));
        assert!(!db.remove(a).expect("second remove is not an error"));
        assert_eq!(db.get(a).expect("get"), None);
        assert_eq!(db.by_subject([7; 32]).expect("sub"), vec![b]);
        assert!(db.by_provider_sid([9; 32]).expect("sid").is_empty());
        assert!(
            db.due(150, None, 10)
                .expect("due")
                .iter()
                .map(|p| p.id)
                .collect::<Vec<_>>()
                .is_empty()
        );
        assert_eq!(db.count().expect("count"), 1);
    }

    #[test]
    fn touches_move_the_deadline_index_and_never_go_back() {
        let (_dir, db) = open();
        let a = sid(1);
        db.insert(a, b"x", None, meta(10, 100, 1, None))
            .expect("insert");
        db.touch(&[Touch {
            id: a,
            last_access: 50,
            deadline: 140,
        }])
        .expect("touch");
        db.touch(&[Touch {
            id: a,
            last_access: 40,
            deadline: 130,
        }])
        .expect("stale touch");
        db.touch(&[Touch {
            id: sid(9),
            last_access: 1,
            deadline: 1,
        }])
        .expect("missing session is skipped");
        let record = db.get(a).expect("get").expect("present");
        assert_eq!((record.meta.last_access, record.meta.deadline), (50, 140));
        assert!(
            db.due(139, None, 10)
                .expect("due")
                .iter()
                .map(|p| p.id)
                .collect::<Vec<_>>()
                .is_empty()
        );
        assert_eq!(
            db.due(140, None, 10)
                .expect("due")
                .iter()
                .map(|p| p.id)
                .collect::<Vec<_>>(),
            vec![a]
        );
    }

    #[test]
    fn replace_ticket_does_not_resurrect_a_removed_session() {
        let (_dir, db) = open();
        let a = sid(1);
        assert!(
            !db.replace_ticket(a, b"new", None, Some(7), |_| 2)
                .expect("replace")
        );
        assert_eq!(db.get(a).expect("get"), None);
        db.insert(a, b"old", None, meta(1, 2, 3, None))
            .expect("insert");
        assert!(
            db.replace_ticket(a, b"new", None, Some(7), |_| 2)
                .expect("replace")
        );
        assert_eq!(
            db.get(a).expect("get").map(|r| r.sealed),
            Some(b"new".to_vec())
        );
    }

    #[test]
    fn replace_ticket_moves_the_session_in_the_eviction_index() {
        let (_dir, db) = open();
        let a = sid(1);
        db.insert(a, b"old", None, meta(10, 500, 3, None))
            .expect("insert");
        // The new ticket ends sooner (its refresh token expires at 120); the deadline is
        // computed from the stored last access.
        let moved = db
            .replace_ticket(a, b"new", None, Some(7), |last_access| {
                assert_eq!(last_access, 10);
                120
            })
            .expect("replace");
        assert!(moved);
        let due = |now| {
            db.due(now, None, 10)
                .expect("due")
                .iter()
                .map(|p| p.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(due(121), vec![a], "due at the new deadline");
        assert_eq!(db.get(a).expect("get").map(|r| r.meta.deadline), Some(120));
        db.replace_ticket(a, b"newer", None, Some(7), |_| 900)
            .expect("replace");
        assert!(due(500).is_empty(), "the old index entry is gone");
    }

    #[test]
    fn data_survives_reopening_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sessions.redb");
        let a = sid(5);
        {
            let db = SessionDb::open(&path, 1 << 20).expect("open");
            db.insert(a, b"kept", None, meta(1, 2, 3, Some(4)))
                .expect("insert");
        }
        let db = SessionDb::open(&path, 1 << 20).expect("reopen");
        assert_eq!(
            db.get(a).expect("get").map(|r| r.sealed),
            Some(b"kept".to_vec())
        );
    }

    fn on_day(day: u64, n: u8) -> SessionId {
        SessionId {
            created_ms: day * DAY_MS + u64::from(n),
            hash: [n; 32],
        }
    }

    fn identity_entries(db: &SessionDb) -> u64 {
        db.identity_entries().expect("entries")
    }

    #[test]
    fn removed_sessions_leave_the_identity_lookups_at_once_and_the_index_with_their_day() {
        let (_dir, db) = open();
        let old = on_day(100, 1);
        let older = on_day(100, 2);
        let new = on_day(102, 3);
        db.insert(old, b"a", None, meta(1, 10, 7, Some(9)))
            .expect("insert");
        db.insert(older, b"b", None, meta(1, 10, 7, Some(9)))
            .expect("insert");
        db.insert(new, b"c", None, meta(1, 10, 7, Some(9)))
            .expect("insert");
        assert_eq!(identity_entries(&db), 6);

        assert_eq!(
            db.remove_many(&[old], Removal::Eviction).expect("remove"),
            1
        );
        assert_eq!(db.by_subject([7; 32]).expect("sub"), vec![older, new]);
        assert_eq!(db.by_provider_sid([9; 32]).expect("sid"), vec![older, new]);
        // Day 100 still has a session: its entries stay.
        assert_eq!(db.prune_identity_indexes(100).expect("prune"), 0);
        assert_eq!(identity_entries(&db), 6);

        assert_eq!(
            db.remove_many(&[older], Removal::Eviction).expect("remove"),
            1
        );
        // Bounded batches: one entry at a time, then the rest, then nothing.
        assert_eq!(db.prune_identity_indexes(1).expect("prune"), 1);
        assert_eq!(db.prune_identity_indexes(100).expect("prune"), 3);
        assert_eq!(db.prune_identity_indexes(100).expect("prune"), 0);
        assert_eq!(identity_entries(&db), 2);
        assert_eq!(db.by_subject([7; 32]).expect("sub"), vec![new]);

        // A logout takes the entries with it at once.
        assert!(db.remove(new).expect("remove"));
        assert!(db.by_subject([7; 32]).expect("sub").is_empty());
        assert_eq!(identity_entries(&db), 0);
        assert_eq!(db.prune_identity_indexes(100).expect("prune"), 0);
    }

    #[test]
    fn an_identity_lookup_checks_the_session_it_finds() {
        // A stale entry must not name a session that now belongs to someone else.
        let (_dir, db) = open();
        let a = sid(1);
        db.insert(a, b"x", None, meta(1, 10, 7, Some(9)))
            .expect("insert");
        db.insert(a, b"y", None, meta(1, 10, 8, None))
            .expect("replace");
        assert!(db.by_subject([7; 32]).expect("sub").is_empty());
        assert!(db.by_provider_sid([9; 32]).expect("sid").is_empty());
        assert_eq!(db.by_subject([8; 32]).expect("sub"), vec![a]);
    }

    #[test]
    fn identity_indexes_of_an_older_file_are_migrated_on_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sessions.redb");
        let a = on_day(200, 1);
        {
            let db = SessionDb::open(&path, 1 << 20).expect("open");
            db.insert(a, b"kept", None, meta(1, 2, 3, Some(4)))
                .expect("insert");
            // Rewrite the file's identity indexes the way the first release kept them.
            let txn = db.db.begin_write().expect("write");
            txn.delete_table(BY_SID).expect("drop");
            txn.delete_table(BY_SUB).expect("drop");
            txn.open_table(LEGACY_BY_SID)
                .expect("legacy")
                .insert(([4; 32], a.created_ms, a.hash), ())
                .expect("legacy sid");
            txn.open_table(LEGACY_BY_SUB)
                .expect("legacy")
                .insert(([3; 32], a.created_ms, a.hash), ())
                .expect("legacy sub");
            txn.commit().expect("commit");
        }
        let db = SessionDb::open(&path, 1 << 20).expect("reopen");
        assert_eq!(db.by_provider_sid([4; 32]).expect("sid"), vec![a]);
        assert_eq!(db.by_subject([3; 32]).expect("sub"), vec![a]);
        let txn = db.db.begin_read().expect("read");
        use redb::TableHandle;
        let names: Vec<String> = txn
            .list_tables()
            .expect("tables")
            .map(|table| table.name().to_owned())
            .collect();
        assert!(
            !names
                .iter()
                .any(|name| name == "by_sid" || name == "by_sub")
        );
    }
}
