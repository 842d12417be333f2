//! `CachingStore`: an in-process cache in front of any store.

use std::time::Duration;

use async_trait::async_trait;
use moka::future::Cache;

use super::{Changes, Record, SessionId, SessionStore, now};
use crate::error::Error;

/// A cache of loaded records (moka, a concurrent LRU with time-to-live) in
/// front of another store, so a session read on every request costs a
/// backend round trip only when the cache misses.
///
/// Writes go through: `create`, `apply` and `delete` reach the backend
/// first, then drop the cached copy, so this process never reads its own
/// write stale and per-key atomicity is the backend's.
///
/// **Staleness bound.** When several processes share the backend, a change
/// made through another process is seen here at most [`ttl`](Self::ttl)
/// later (default 5 seconds): a logout on one server lets another still
/// serve the session for up to that long. Keep the TTL short, or use no
/// cache where revocation must be instant.
#[derive(Debug)]
pub struct CachingStore<S> {
    inner: S,
    cache: Cache<SessionId, Record>,
}

impl<S: SessionStore> CachingStore<S> {
    /// Caches up to 10,000 records of `inner` for 5 seconds each.
    pub fn new(inner: S) -> Self {
        Self::with_cache(inner, 10_000, Duration::from_secs(5))
    }

    /// Caches up to `capacity` records of `inner` for `ttl` each.
    pub fn with_cache(inner: S, capacity: u64, ttl: Duration) -> Self {
        Self {
            inner,
            cache: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// How long a record may be served from the cache: the bound on how
    /// stale a change made by another process can look here.
    pub fn ttl(&self) -> Option<Duration> {
        self.cache.policy().time_to_live()
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for CachingStore<S> {
    async fn load(&self, id: &SessionId) -> Result<Option<Record>, Error> {
        if let Some(record) = self.cache.get(id).await {
            if !record.is_expired(now()) {
                return Ok(Some(record));
            }
            self.cache.invalidate(id).await;
        }
        let record = self.inner.load(id).await?;
        if let Some(record) = &record {
            self.cache.insert(id.clone(), record.clone()).await;
        }
        Ok(record)
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error> {
        let created = self.inner.create(id, record).await;
        self.cache.invalidate(id).await;
        created
    }

    async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
        let applied = self.inner.apply(id, changes).await;
        self.cache.invalidate(id).await;
        applied
    }

    async fn delete(&self, id: &SessionId) -> Result<(), Error> {
        let deleted = self.inner.delete(id).await;
        self.cache.invalidate(id).await;
        deleted
    }

    async fn delete_expired(&self) -> Result<u64, Error> {
        self.inner.delete_expired().await
    }
}

#[cfg(all(test, feature = "memory-store"))]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::MemoryStore;
    use serde_json::json;

    /// Two processes sharing one backend, each with its own cache.
    #[tokio::test]
    async fn another_instance_sees_a_change_within_the_ttl() {
        let backend = Arc::new(MemoryStore::new());
        let ttl = Duration::from_millis(300);
        let a = CachingStore::with_cache(backend.clone(), 100, ttl);
        let b = CachingStore::with_cache(backend.clone(), 100, ttl);
        let id = SessionId::generate();
        let record = Record::new(
            json!({"v": 1}).as_object().unwrap().clone(),
            false,
            now(),
            now() + 60,
        );
        assert!(a.create(&id, &record).await.unwrap());
        assert_eq!(b.load(&id).await.unwrap().unwrap().data["v"], 1);

        let change = Changes {
            set: vec![("v".into(), json!(2))],
            expires_at: now() + 60,
            ..Changes::default()
        };
        assert!(a.apply(&id, &change).await.unwrap());
        assert_eq!(
            a.load(&id).await.unwrap().unwrap().data["v"],
            2,
            "own writes are never stale"
        );
        assert_eq!(
            b.load(&id).await.unwrap().unwrap().data["v"],
            1,
            "b may be stale..."
        );
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        assert_eq!(
            b.load(&id).await.unwrap().unwrap().data["v"],
            2,
            "...but not past the TTL"
        );

        a.delete(&id).await.unwrap();
        assert_eq!(a.load(&id).await.unwrap(), None);
        assert_eq!(a.ttl(), Some(ttl));
    }
}
