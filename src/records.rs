//! Where sealed session records live: the redb file of the data directory (the default, one
//! machine), or Redis (several gateways sharing sessions, `redis_store.rs`). The ticket store
//! (`tickets.rs`) seals and caches; this is the one place that says where the bytes go.
//!
//! Every Redis call is boxed: its future is large, and unboxed it would sit in every request's
//! future (a cache hit too), costing copies on every call of a gateway that uses the file.
//!
//! Both keep the same things: per session its sealed ticket, its sealed ID token and its
//! metadata (activity, deadline, keyed hashes of its subject and provider session id, refresh
//! due time); the indexes sweeps and logouts need; the seen back-channel logout `jti`s.

use std::sync::Arc;

use crate::redis_store::RedisRecords;
use crate::session::SessionId;
use crate::store::{DuePosition, Meta, NewRow, Record, Removal, SessionDb, StoreError, Touch};

/// The session records, in the file or in Redis.
#[derive(Debug, Clone)]
pub enum Records {
    /// The redb file (blocking: writes run on the blocking pool, single-row reads inline).
    File(Arc<SessionDb>),
    /// Redis (`--store redis://…`).
    Redis(Arc<RedisRecords>),
}

/// Runs a file operation on the blocking pool.
async fn blocking<T, F>(db: &Arc<SessionDb>, operation: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&SessionDb) -> Result<T, StoreError> + Send + 'static,
{
    let db = Arc::clone(db);
    tokio::task::spawn_blocking(move || operation(&db))
        .await
        .map_err(|_| StoreError::TaskFailed)?
}

impl Records {
    /// The redb file, when the records are there (tools that read it directly).
    pub fn file(&self) -> Option<&Arc<SessionDb>> {
        match self {
            Self::File(db) => Some(db),
            Self::Redis(_) => None,
        }
    }

    /// Stores a new session durably.
    pub async fn insert(
        &self,
        id: SessionId,
        sealed: Vec<u8>,
        id_token: Option<Vec<u8>>,
        meta: Meta,
    ) -> Result<(), StoreError> {
        match self {
            Self::File(db) => {
                blocking(db, move |db| {
                    db.insert_row(NewRow {
                        id,
                        sealed,
                        id_token,
                        meta,
                    })
                })
                .await
            }
            Self::Redis(redis) => {
                Box::pin(redis.insert(id, &sealed, id_token.as_deref(), meta)).await
            }
        }
    }

    /// Stores many new sessions (bulk import, benchmarks).
    pub async fn insert_batch(&self, rows: Vec<NewRow>) -> Result<(), StoreError> {
        match self {
            Self::File(db) => blocking(db, move |db| db.insert_batch(&rows)).await,
            Self::Redis(redis) => {
                for row in rows {
                    Box::pin(redis.insert(row.id, &row.sealed, row.id_token.as_deref(), row.meta))
                        .await?;
                }
                Ok(())
            }
        }
    }

    /// One session's record. From the file: inline, a single B-tree lookup (redb readers never
    /// wait for the writer, and two thread hand-offs would cost more than the read).
    pub async fn get(&self, id: SessionId) -> Result<Option<Record>, StoreError> {
        match self {
            Self::File(db) => db.get(id),
            Self::Redis(redis) => Box::pin(redis.get(id)).await,
        }
    }

    /// One session's sealed ID token.
    pub async fn get_id_token(&self, id: SessionId) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Self::File(db) => db.get_id_token(id),
            Self::Redis(redis) => Box::pin(redis.get_id_token(id)).await,
        }
    }

    /// Replaces an existing session's sealed ticket (after a refresh); false when the session
    /// is gone (never resurrect it). `deadline` gives the new deadline from the last access.
    pub async fn replace_ticket(
        &self,
        id: SessionId,
        sealed: Vec<u8>,
        id_token: Option<Vec<u8>>,
        refresh_at: Option<u64>,
        deadline: impl FnOnce(u64) -> u64 + Send + 'static,
    ) -> Result<bool, StoreError> {
        match self {
            Self::File(db) => {
                blocking(db, move |db| {
                    db.replace_ticket(id, &sealed, id_token.as_deref(), refresh_at, deadline)
                })
                .await
            }
            Self::Redis(redis) => {
                Box::pin(redis.replace_ticket(
                    id,
                    &sealed,
                    id_token.as_deref(),
                    refresh_at,
                    deadline,
                ))
                .await
            }
        }
    }

    /// Writes last-access times (and the deadlines that follow) in one batch.
    pub async fn touch(&self, touches: Vec<Touch>) -> Result<(), StoreError> {
        match self {
            Self::File(db) => blocking(db, move |db| db.touch(&touches)).await,
            Self::Redis(redis) => Box::pin(redis.touch(&touches)).await,
        }
    }

    /// Removes one session; whether it existed.
    pub async fn remove(&self, id: SessionId) -> Result<bool, StoreError> {
        match self {
            Self::File(db) => blocking(db, move |db| db.remove(id)).await,
            Self::Redis(redis) => Ok(Box::pin(redis.remove_many(&[id])).await? > 0),
        }
    }

    /// Removes sessions; how many existed.
    pub async fn remove_many(
        &self,
        ids: Vec<SessionId>,
        removal: Removal,
    ) -> Result<usize, StoreError> {
        match self {
            Self::File(db) => blocking(db, move |db| db.remove_many(&ids, removal)).await,
            Self::Redis(redis) => Box::pin(redis.remove_many(&ids)).await,
        }
    }

    /// The sessions of a provider session id (its keyed hash).
    pub async fn by_provider_sid(&self, sid: [u8; 32]) -> Result<Vec<SessionId>, StoreError> {
        match self {
            Self::File(db) => blocking(db, move |db| db.by_provider_sid(sid)).await,
            Self::Redis(redis) => Box::pin(redis.by_identity("sid", sid)).await,
        }
    }

    /// The sessions of a subject (its keyed hash).
    pub async fn by_subject(&self, subject: [u8; 32]) -> Result<Vec<SessionId>, StoreError> {
        match self {
            Self::File(db) => blocking(db, move |db| db.by_subject(subject)).await,
            Self::Redis(redis) => Box::pin(redis.by_identity("sub", subject)).await,
        }
    }

    /// Up to `limit` sessions whose deadline is before `now`, after `after`.
    pub async fn due(
        &self,
        now: u64,
        after: Option<DuePosition>,
        limit: usize,
    ) -> Result<Vec<DuePosition>, StoreError> {
        match self {
            Self::File(db) => blocking(db, move |db| db.due(now, after, limit)).await,
            Self::Redis(redis) => Box::pin(redis.due(now, after, limit)).await,
        }
    }

    /// Drops identity-index entries no live session can have (at most `limit`); how many.
    pub async fn prune_identity_indexes(&self, limit: usize) -> Result<usize, StoreError> {
        match self {
            Self::File(db) => blocking(db, move |db| db.prune_identity_indexes(limit)).await,
            // Redis expires index sets with their last session.
            Self::Redis(_) => Ok(0),
        }
    }

    /// Makes lazy commits durable.
    pub async fn sync(&self) -> Result<(), StoreError> {
        match self {
            Self::File(db) => blocking(db, |db| db.sync()).await,
            Self::Redis(_) => Ok(()),
        }
    }

    /// Up to `limit` refreshable sessions whose access token expires by `until`.
    pub async fn refresh_due(
        &self,
        until: u64,
        limit: usize,
    ) -> Result<Vec<SessionId>, StoreError> {
        match self {
            Self::File(db) => blocking(db, move |db| db.refresh_due(until, limit)).await,
            Self::Redis(redis) => Box::pin(redis.refresh_due(until, limit)).await,
        }
    }

    /// Up to `limit` sessions in creation order after `after`, with their sealed ID tokens.
    pub async fn list(
        &self,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<Vec<(SessionId, Record, Option<Vec<u8>>)>, StoreError> {
        match self {
            Self::File(db) => {
                blocking(db, move |db| {
                    db.list(after, limit)?
                        .into_iter()
                        .map(|(id, record)| Ok((id, record, db.get_id_token(id)?)))
                        .collect()
                })
                .await
            }
            Self::Redis(redis) => Box::pin(redis.list(after, limit)).await,
        }
    }

    /// Records a logout token's `jti` (keyed hash) until `forget_after`; false when seen.
    pub async fn remember_logout_jti(
        &self,
        jti: [u8; 32],
        forget_after: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        match self {
            Self::File(db) => {
                blocking(db, move |db| db.remember_logout_jti(jti, forget_after, now)).await
            }
            Self::Redis(redis) => Box::pin(redis.remember_logout_jti(jti, forget_after, now)).await,
        }
    }

    /// Number of sessions.
    pub async fn count(&self) -> Result<u64, StoreError> {
        match self {
            Self::File(db) => blocking(db, |db| db.count()).await,
            Self::Redis(redis) => Box::pin(redis.count()).await,
        }
    }
}
