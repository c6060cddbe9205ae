//! The hot cache in front of the session database: an LRU of decrypted tickets with the seed's
//! sliding and absolute expiry.
//!
//! A hit costs a hash lookup under a short lock, no disk and no decryption. Entries expire
//! `sliding` after their last hit or `absolute` after insertion, whichever is first, so a ticket
//! changed by another path (renew, remove) is never served stale for long even if an
//! invalidation were missed; renew and remove invalidate explicitly anyway. The lock is never
//! held across an `.await`.
//!
//! Removal (logout, back-channel logout, admin revoke) leaves a *tombstone* for the session, set
//! before the row's delete is committed: a request that missed the cache may have read the row
//! from a snapshot taken before that commit, and without the tombstone it would put the session
//! back in the cache, where it lived on (relaying its bearer token) after the logout had
//! returned. No entry is ever inserted over a tombstone, by a cold read or by a refresh's renew.
//! Tombstones sit in a bounded LRU of their own, so a mass revocation cannot push live sessions
//! out; a session id is never reused, so a tombstone is never wrong.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use lru::LruCache;

use crate::session::{IdHashing, SessionId, Ticket};
use crate::sync::Locked;

/// A cached session: its ticket and what is known of its activity.
#[derive(Debug, Clone)]
pub struct Cached {
    /// The decrypted ticket.
    pub ticket: Arc<Ticket>,
    /// Last access as the database (or a pending touch) knows it.
    pub last_access: u64,
}

#[derive(Debug)]
struct Entry {
    cached: Cached,
    inserted: SystemTime,
    last_hit: SystemTime,
}

/// Expiry settings of the cache.
#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    /// Maximum number of sessions held.
    pub capacity: NonZeroUsize,
    /// An entry not hit for this long is dropped.
    pub sliding: Duration,
    /// An entry older than this is dropped, however often it is hit.
    pub absolute: Duration,
}

/// Counters for hits and misses since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to go to the database.
    pub misses: u64,
}

/// The LRU ticket cache.
#[derive(Debug)]
pub struct TicketCache {
    policy: CachePolicy,
    inner: Mutex<Inner>,
}

/// Most tombstones kept. A tombstone only has to outlive the reads that were under way when its
/// removal committed (milliseconds); this many removals within that time is far past any load.
const TOMBSTONES: usize = 65_536;

#[derive(Debug)]
struct Inner {
    entries: LruCache<SessionId, Entry, IdHashing>,
    /// Sessions removed (or being removed): never cached again. Grown as needed, never
    /// allocated up front.
    removed: LruCache<SessionId, (), IdHashing>,
    stats: CacheStats,
    /// Bumped whenever another gateway changed a session (a shared store): a read that began
    /// before may hold the old ticket, and must not be cached.
    generation: u64,
}

impl Inner {
    /// Caches `cached` unless the session was removed (false), and only if the generation is
    /// still `generation`.
    fn put_unless_removed(
        &mut self,
        id: SessionId,
        cached: Cached,
        now: SystemTime,
        generation: u64,
    ) -> bool {
        if self.removed.contains(&id) {
            return false;
        }
        if self.generation == generation {
            self.entries.put(
                id,
                Entry {
                    cached,
                    inserted: now,
                    last_hit: now,
                },
            );
        }
        true
    }
}

fn elapsed(since: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(since).unwrap_or(Duration::ZERO)
}

impl TicketCache {
    /// An empty cache.
    pub fn new(policy: CachePolicy) -> Self {
        Self {
            policy,
            inner: Mutex::new(Inner {
                entries: LruCache::with_hasher(policy.capacity, IdHashing::default()),
                removed: LruCache::unbounded_with_hasher(IdHashing::default()),
                stats: CacheStats::default(),
                generation: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the LRU half-updated in a way that matters here: the
        // worst case is a stale entry, which expiry bounds. So keep serving.
        self.inner.locked()
    }

    /// The cached session, if present and not expired at `now`; a hit slides its expiry.
    pub fn get(&self, id: SessionId, now: SystemTime) -> Option<Cached> {
        let mut inner = self.lock();
        let fresh = match inner.entries.get_mut(&id) {
            Some(entry)
                if elapsed(entry.last_hit, now) < self.policy.sliding
                    && elapsed(entry.inserted, now) < self.policy.absolute =>
            {
                entry.last_hit = now;
                Some(entry.cached.clone())
            }
            Some(_) => None,
            None => {
                inner.stats.misses += 1;
                return None;
            }
        };
        match fresh {
            Some(cached) => {
                inner.stats.hits += 1;
                Some(cached)
            }
            None => {
                inner.entries.pop(&id);
                inner.stats.misses += 1;
                None
            }
        }
    }

    /// Caches a session, replacing any older entry, unless the session was removed: then nothing
    /// is cached and the answer is false (the caller must treat the session as gone).
    #[must_use = "false means the session was removed: it must not be served"]
    pub fn insert(&self, id: SessionId, cached: Cached, now: SystemTime) -> bool {
        let mut inner = self.lock();
        let generation = inner.generation;
        inner.put_unless_removed(id, cached, now, generation)
    }

    /// The current generation: take it before a read, and give it to
    /// [`TicketCache::insert_read`].
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Caches what a read found, unless the session was removed (false: it must not be
    /// served), and only when no session changed elsewhere since `generation` was taken (the
    /// read may predate that change; it is served once, not kept).
    #[must_use = "false means the session was removed: it must not be served"]
    pub fn insert_read(
        &self,
        id: SessionId,
        cached: Cached,
        now: SystemTime,
        generation: u64,
    ) -> bool {
        self.lock().put_unless_removed(id, cached, now, generation)
    }

    /// Another gateway replaced a session's ticket: drop it here, and keep reads under way
    /// from caching the old one.
    pub fn forget_changed(&self, id: SessionId) {
        let mut inner = self.lock();
        inner.entries.pop(&id);
        inner.generation += 1;
    }

    /// Messages about changes elsewhere may have been missed: drop every entry.
    pub fn forget_all(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.generation += 1;
    }

    /// Marks a session removed before its row is deleted: it is dropped from the cache and can
    /// never be cached again ([`TicketCache::insert`] refuses it).
    pub fn mark_removed(&self, id: SessionId) {
        let mut inner = self.lock();
        inner.entries.pop(&id);
        inner.removed.put(id, ());
        if inner.removed.len() > TOMBSTONES {
            inner.removed.pop_lru();
        }
    }

    /// Whether the session was removed.
    pub fn is_removed(&self, id: SessionId) -> bool {
        self.lock().removed.contains(&id)
    }

    /// Updates the last-access time of a cached session, if it is cached.
    pub fn set_last_access(&self, id: SessionId, last_access: u64) {
        if let Some(entry) = self.lock().entries.peek_mut(&id) {
            entry.cached.last_access = entry.cached.last_access.max(last_access);
        }
    }

    /// Drops a session from the cache.
    pub fn invalidate(&self, id: SessionId) {
        self.lock().entries.pop(&id);
    }

    /// Number of cached sessions.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hit and miss counters.
    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{AccessToken, Tokens};
    use std::time::UNIX_EPOCH;

    fn cached(subject: &str) -> Cached {
        Cached {
            ticket: Arc::new(Ticket {
                tokens: Tokens {
                    access_token: AccessToken::new("at").expect("token"),
                    access_expires_at: None,
                    refresh_token: None,
                    id_token: None,
                    scope: None,
                },
                subject: subject.into(),
                provider_sid: None,
                created_at: 0,
                expires_at: 0,
                resource_tokens: Vec::new(),
                userinfo: None,
                principal: Default::default(),
            }),
            last_access: 0,
        }
    }

    fn cache(capacity: usize) -> TicketCache {
        TicketCache::new(CachePolicy {
            capacity: NonZeroUsize::new(capacity).expect("non-zero"),
            sliding: Duration::from_secs(15),
            absolute: Duration::from_secs(100),
        })
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn entries_slide_on_hits_but_not_past_the_absolute_limit() {
        let cache = cache(4);
        let id = SessionId {
            created_ms: 1,
            hash: [1; 32],
        };
        assert!(cache.insert(id, cached("a"), at(0)));
        for second in (10..=90).step_by(10) {
            assert!(cache.get(id, at(second)).is_some(), "hit at {second}s");
        }
        assert!(cache.get(id, at(100)).is_none(), "absolute expiry");
        assert!(cache.insert(id, cached("a"), at(200)));
        assert!(cache.get(id, at(215)).is_none(), "sliding expiry");
        assert_eq!(cache.stats(), CacheStats { hits: 9, misses: 2 });
    }

    #[test]
    fn a_read_that_began_before_a_change_elsewhere_is_served_but_not_cached() {
        let cache = cache(4);
        let id = SessionId {
            created_ms: 1,
            hash: [1; 32],
        };
        let before = cache.generation();
        cache.forget_changed(id);
        assert!(cache.insert_read(id, cached("old"), at(0), before));
        assert!(
            cache.get(id, at(1)).is_none(),
            "the stale read was not kept"
        );
        let now = cache.generation();
        assert!(cache.insert_read(id, cached("new"), at(2), now));
        assert_eq!(cache.get(id, at(3)).expect("kept").ticket.subject, "new");
        cache.forget_all();
        assert!(cache.get(id, at(4)).is_none());
        cache.mark_removed(id);
        assert!(!cache.insert_read(id, cached("x"), at(5), cache.generation()));
    }

    #[test]
    fn least_recently_used_entry_is_evicted_at_capacity() {
        let cache = cache(2);
        let (a, b, c) = (
            SessionId {
                created_ms: 1,
                hash: [1; 32],
            },
            SessionId {
                created_ms: 2,
                hash: [2; 32],
            },
            SessionId {
                created_ms: 3,
                hash: [3; 32],
            },
        );
        assert!(cache.insert(a, cached("a"), at(0)));
        assert!(cache.insert(b, cached("b"), at(0)));
        assert!(cache.get(a, at(1)).is_some());
        assert!(cache.insert(c, cached("c"), at(1)));
        assert!(cache.get(b, at(1)).is_none());
        assert!(cache.get(a, at(1)).is_some());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn invalidation_removes_the_entry() {
        let cache = cache(2);
        let a = SessionId {
            created_ms: 1,
            hash: [1; 32],
        };
        assert!(cache.insert(a, cached("a"), at(0)));
        cache.invalidate(a);
        assert!(cache.get(a, at(0)).is_none());
        assert!(
            cache.insert(a, cached("a"), at(0)),
            "invalidated, not removed"
        );
    }

    #[test]
    fn a_removed_session_is_never_cached_again() {
        let cache = cache(2);
        let a = SessionId {
            created_ms: 1,
            hash: [1; 32],
        };
        assert!(cache.insert(a, cached("a"), at(0)));
        cache.mark_removed(a);
        assert!(cache.get(a, at(0)).is_none());
        // A cold read from a snapshot before the delete, or a refresh's renew, comes late.
        assert!(!cache.insert(a, cached("a"), at(1)));
        cache.invalidate(a);
        assert!(
            !cache.insert(a, cached("a"), at(2)),
            "invalidate keeps tombstones"
        );
        assert!(cache.get(a, at(2)).is_none());
        assert!(cache.is_removed(a));
    }

    #[test]
    fn tombstones_are_bounded_and_do_not_take_live_entries_room() {
        let cache = cache(2);
        let live = SessionId {
            created_ms: 0,
            hash: [0; 32],
        };
        assert!(cache.insert(live, cached("live"), at(0)));
        for n in 0..(TOMBSTONES as u64 + 10) {
            let mut hash = [7; 32];
            hash[..8].copy_from_slice(&n.to_le_bytes());
            cache.mark_removed(SessionId {
                created_ms: n + 1,
                hash,
            });
        }
        assert!(cache.get(live, at(1)).is_some());
        assert_eq!(cache.lock().removed.len(), TOMBSTONES);
    }
}
