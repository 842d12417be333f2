//! `CachingStore`: an in-process cache in front of any store.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use moka::future::Cache;

use super::{Changes, Record, SessionId, SessionStore};
use crate::error::Error;

/// A cache of loaded records (moka, a concurrent LRU with time-to-live) in
/// front of another store, so a session read on every request costs a
/// backend round trip only when the cache misses.
///
/// Writes go through: `create`, `apply`, `delete` and `take` reach the
/// backend first, and per-key atomicity is the backend's. This process
/// never reads its own write stale, nor a session it logged out: every
/// write counts a generation once it is done (or abandoned: the count is
/// taken when the write's future is dropped, so a request cancelled
/// mid-write counts too), and a cached record is served only while the
/// generation it was read under is still current. A load that raced a
/// write therefore never serves what it read once the write has counted.
/// (A write abandoned by a timeout but still in flight at the backend can
/// land after its count: such a late write may be missed here for up to
/// the TTL.)
///
/// **Staleness bound.** When several processes share the backend, a change
/// made through another process is seen here at most [`ttl`](Self::ttl)
/// later (default 5 seconds): a logout on one server lets another still
/// serve the session for up to that long. Keep the TTL short, or use no
/// cache where revocation must be instant.
#[derive(Debug)]
pub struct CachingStore<S> {
    inner: S,
    /// Each record with the generation of its stripe when it was read.
    cache: Cache<SessionId, (Record, u64)>,
    generations: Generations,
}

/// Write counters, one per stripe of ids: a cached record is good while
/// its stripe's count is what it was before the record was read. Striped
/// rather than per id so the counters take fixed memory; a write to
/// another id of the same stripe only costs a cached record, never
/// correctness.
#[derive(Debug)]
struct Generations {
    stripes: Box<[AtomicU64]>,
    hasher: RandomState,
}

impl Generations {
    const STRIPES: usize = 256;

    fn new() -> Self {
        Self {
            stripes: (0..Self::STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
        }
    }

    fn stripe(&self, id: &SessionId) -> &AtomicU64 {
        let hash = self.hasher.hash_one(id.as_str());
        // The modulo keeps the index below STRIPES, so it fits a usize.
        #[allow(clippy::cast_possible_truncation)]
        &self.stripes[(hash % Self::STRIPES as u64) as usize]
    }

    fn current(&self, id: &SessionId) -> u64 {
        self.stripe(id).load(Ordering::SeqCst)
    }

    fn bump(&self, id: &SessionId) {
        self.stripe(id).fetch_add(1, Ordering::SeqCst);
    }
}

/// Counts a write when dropped: after the write returns, or when its
/// future is dropped mid-way (a cancelled request), whichever comes first.
struct Counted<'a> {
    generations: &'a Generations,
    id: &'a SessionId,
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.generations.bump(self.id);
    }
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
            generations: Generations::new(),
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
    async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let generation = self.generations.current(id);
        if let Some((record, read_under)) = self.cache.get(id).await {
            if read_under == generation && !record.is_expired(now) {
                return Ok(Some(record));
            }
            self.cache.invalidate(id).await;
        }
        // Read under `generation`, taken before the backend is asked: a
        // write that lands after this read counts after it, so the copy
        // below is never served once that write has counted.
        let record = self.inner.load(id, now).await?;
        if let Some(record) = &record {
            self.cache
                .insert(id.clone(), (record.clone(), generation))
                .await;
        }
        Ok(record)
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error> {
        let created = self.write(id, self.inner.create(id, record)).await;
        self.cache.invalidate(id).await;
        created
    }

    async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
        let applied = self.write(id, self.inner.apply(id, changes)).await;
        self.cache.invalidate(id).await;
        applied
    }

    async fn delete(&self, id: &SessionId) -> Result<(), Error> {
        let deleted = self.write(id, self.inner.delete(id)).await;
        self.cache.invalidate(id).await;
        deleted
    }

    async fn take(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let taken = self.write(id, self.inner.take(id, now)).await;
        self.cache.invalidate(id).await;
        taken
    }

    async fn delete_expired(&self, now: u64) -> Result<u64, Error> {
        self.inner.delete_expired(now).await
    }
}

impl<S> CachingStore<S> {
    /// Runs a backend write and counts it, even if this future is dropped
    /// before the write returns. (Dropping the cached copy afterwards only
    /// frees memory: a copy read under an older count is never served.)
    async fn write<T>(&self, id: &SessionId, write: impl Future<Output = T>) -> T {
        let _counted = Counted {
            generations: &self.generations,
            id,
        };
        write.await
    }
}

#[cfg(all(test, feature = "memory-store"))]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::MemoryStore;
    use crate::store::now;
    use serde_json::json;

    /// Two processes sharing one backend, each with its own cache.
    #[tokio::test]
    async fn another_instance_sees_a_change_within_the_ttl() {
        let backend = Arc::new(MemoryStore::new());
        // Long enough that a busy machine still reads the stale copy
        // within it.
        let ttl = Duration::from_secs(2);
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
        assert_eq!(b.load(&id, now()).await.unwrap().unwrap().data["v"], 1);

        let change = Changes {
            set: vec![("v".into(), json!(2))],
            ..Changes::expiry(now(), now() + 60)
        };
        assert!(a.apply(&id, &change).await.unwrap());
        assert_eq!(
            a.load(&id, now()).await.unwrap().unwrap().data["v"],
            2,
            "own writes are never stale"
        );
        assert_eq!(
            b.load(&id, now()).await.unwrap().unwrap().data["v"],
            1,
            "b may be stale..."
        );
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        assert_eq!(
            b.load(&id, now()).await.unwrap().unwrap().data["v"],
            2,
            "...but not past the TTL"
        );

        a.delete(&id).await.unwrap();
        assert_eq!(a.load(&id, now()).await.unwrap(), None);
        assert_eq!(a.ttl(), Some(ttl));
    }

    /// A backend with two faults on demand: its next load stops, after
    /// reading, until released (the window in which a delete can overtake
    /// it); its deletes land at once and then never answer (a request
    /// dropped in between, by a client gone or a tower timeout).
    #[derive(Debug, Default)]
    struct Gated {
        inner: MemoryStore,
        hold: std::sync::atomic::AtomicBool,
        read: tokio::sync::Notify,
        release: tokio::sync::Notify,
        hang_deletes: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl SessionStore for Gated {
        async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
            let record = self.inner.load(id, now).await;
            if self.hold.swap(false, Ordering::SeqCst) {
                self.read.notify_one();
                self.release.notified().await;
            }
            record
        }
        async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error> {
            self.inner.create(id, record).await
        }
        async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
            self.inner.apply(id, changes).await
        }
        async fn delete(&self, id: &SessionId) -> Result<(), Error> {
            self.inner.delete(id).await?;
            if self.hang_deletes.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Ok(())
        }
        async fn take(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
            self.inner.take(id, now).await
        }
    }

    fn ann() -> Record {
        Record::new(
            json!({"user": "ann"}).as_object().unwrap().clone(),
            false,
            now(),
            now() + 60,
        )
    }

    #[tokio::test]
    async fn a_delete_cancelled_after_it_landed_never_leaves_the_session_cached() {
        let store = CachingStore::new(Gated::default());
        store.inner().hang_deletes.store(true, Ordering::SeqCst);
        let (id, record) = (SessionId::generate(), ann());
        assert!(store.create(&id, &record).await.unwrap());
        assert_eq!(
            store.load(&id, now()).await.unwrap(),
            Some(record),
            "cached"
        );
        let cancelled = tokio::time::timeout(Duration::from_millis(20), store.delete(&id)).await;
        assert!(cancelled.is_err(), "the delete never answered");
        assert_eq!(store.inner().inner.load(&id, now()).await.unwrap(), None);
        assert_eq!(
            store.load(&id, now()).await.unwrap(),
            None,
            "the logged-out session came back from the cache"
        );
    }

    /// A load that read the record before a logout deleted it must not put
    /// it back in the cache afterwards.
    #[tokio::test]
    async fn a_load_racing_a_delete_never_caches_the_old_record() {
        let store = Arc::new(CachingStore::new(Gated::default()));
        let (id, record) = (SessionId::generate(), ann());
        assert!(store.create(&id, &record).await.unwrap());
        store.inner().hold.store(true, Ordering::SeqCst);
        let slow_load = tokio::spawn({
            let (store, id) = (store.clone(), id.clone());
            async move { store.load(&id, now()).await.unwrap() }
        });
        store.inner().read.notified().await;
        store.delete(&id).await.unwrap();
        store.inner().release.notify_one();
        assert_eq!(
            slow_load.await.unwrap(),
            Some(record),
            "the racing load read before the delete"
        );
        assert_eq!(
            store.load(&id, now()).await.unwrap(),
            None,
            "the deleted session came back from the cache"
        );
    }
}
