//! `CachingStore`: an in-process cache in front of any store, kept
//! coherent by stores that report changes.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use moka::future::Cache;

use super::{Changes, Record, STAMP_KEY, SessionId, SessionStore};
use crate::error::Error;

/// A cache of loaded records (moka, a concurrent LRU) in front of another
/// store, so a session read on every request costs a backend round trip
/// only when the cache misses.
///
/// Two modes:
///
/// - **Coherent** ([`CachingStore::coherent`]), for stores that report
///   changes ([`Notifying`]: `RedisStore` on one server, `SqlStore` on
///   PostgreSQL). Every write made through any process publishes the id it
///   changed, in the same round trip as the write; each cache listens and
///   drops what changed. Records stay cached until they change, with no
///   time-to-live. If the channel is lost (connection dropped, killed,
///   server restarted), the cache drops everything and reads through until
///   the channel is back.
/// - **Time-bounded** ([`CachingStore::new`], [`with_cache`](Self::with_cache)),
///   for any store: a change made through another process is seen here at
///   most [`ttl`](Self::ttl) later (default 5 seconds), so a logout on one
///   server lets another still serve the session for up to that long.
///
/// In both modes this process never reads its own write stale, nor a
/// session it logged out. Writes go through (`create`, `apply`, `delete`
/// and `take` reach the backend first; per-key atomicity is the backend's),
/// every write counts a generation once it is done (or abandoned: the
/// count is taken when the write's future is dropped, so a request
/// cancelled mid-write counts too), and a cached record is served only
/// while the generation it was read under is current. In the coherent
/// mode, a record this process wrote is updated in place when no other
/// write came between, so a read-modify-write costs one round trip, not
/// two; a write that failed here but landed anyway (a timeout) is reported
/// by the channel like another server's.
///
/// **What coherent means here.** Another process's change reaches this
/// cache one message after the write: Redis or PostgreSQL sends it to every
/// listener as it answers the writer. A request this server handles after
/// it has read that message never sees the old record; one that arrives
/// in the instant between the writer's answer and this server reading the
/// message still can (`docs/stores.md` gives the measured delivery time).
/// A write abandoned by a timeout but still in flight at the backend can
/// land after its count: the channel reports it when it lands (the
/// time-bounded mode misses it for up to the TTL).
///
/// Every server's layer stamps its writes when its store is a cache, and
/// the client carries the stamp (docs/cookie-format.md): a cached copy is
/// served only to a client whose last write it holds, so a client reads
/// its own writes on any server, in either mode. Except in front of a
/// `FlaskSessionStore`, whose cookie (Flask-Session's) has no room for the
/// stamp and whose Flask app reports no writes: there the cache is
/// time-bounded for the client's own writes made through another server
/// too, and for the Flask app's (a logout included).
#[derive(Debug)]
pub struct CachingStore<S> {
    inner: S,
    /// Each record with the generation of its stripe when it was read.
    cache: Cache<SessionId, (Record, u64)>,
    state: Arc<State>,
    /// The task listening for changes (coherent mode), stopped on drop.
    watcher: Option<Watcher>,
}

/// Write counters, one per stripe of ids: a cached record is good while
/// its stripe's count is what it was before the record was read. Striped
/// rather than per id so the counters take fixed memory; a write to
/// another id of the same stripe only costs a cached record, never
/// correctness.
#[derive(Debug)]
struct State {
    stripes: Box<[AtomicU64]>,
    hasher: RandomState,
    /// Whether records may be cached: always in the time-bounded mode;
    /// while the change channel is up in the coherent mode.
    live: AtomicBool,
    /// Changes the channel reported.
    heard: AtomicU64,
    /// Times the channel was lost.
    losses: AtomicU64,
    /// Ids whose write through this cache failed or was abandoned: the
    /// write may still land, and its message (which carries this cache's
    /// own origin, and is otherwise ignored) must then count. An id leaves
    /// when such a message comes, or after `DOUBT`.
    doubtful: std::sync::Mutex<std::collections::HashMap<Box<str>, std::time::Instant>>,
}

impl State {
    const STRIPES: usize = 16_384;

    fn new(live: bool) -> Self {
        Self {
            stripes: (0..Self::STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
            live: AtomicBool::new(live),
            heard: AtomicU64::new(0),
            losses: AtomicU64::new(0),
            doubtful: std::sync::Mutex::default(),
        }
    }

    /// How long a failed write is watched for a late landing.
    const DOUBT: Duration = Duration::from_secs(600);

    fn doubt(&self, id: &str) {
        let now = std::time::Instant::now();
        let mut doubtful = self.doubtful.lock().unwrap_or_else(|e| e.into_inner());
        doubtful.retain(|_, since| now.duration_since(*since) < Self::DOUBT);
        doubtful.insert(id.into(), now);
    }

    /// Whether a message of this cache's own origin about `id` counts: the
    /// write behind it was not acknowledged here.
    fn resolve_doubt(&self, id: &str) -> bool {
        let mut doubtful = self.doubtful.lock().unwrap_or_else(|e| e.into_inner());
        doubtful.remove(id).is_some()
    }

    fn stripe(&self, id: &str) -> &AtomicU64 {
        let hash = self.hasher.hash_one(id);
        // The modulo keeps the index below STRIPES, so it fits a usize.
        #[allow(clippy::cast_possible_truncation)]
        &self.stripes[(hash % Self::STRIPES as u64) as usize]
    }

    fn current(&self, id: &str) -> u64 {
        self.stripe(id).load(Ordering::SeqCst)
    }

    fn bump(&self, id: &str) {
        self.stripe(id).fetch_add(1, Ordering::SeqCst);
    }

    /// Makes every cached record stale.
    fn bump_all(&self) {
        for stripe in &*self.stripes {
            stripe.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }
}

/// Counts a write when dropped: after the write returns, or when its
/// future is dropped mid-way (a cancelled request), whichever comes first.
/// A write that did not succeed here may still land at the backend: its id
/// is watched for that.
struct Counted<'a> {
    state: &'a State,
    id: &'a SessionId,
    succeeded: bool,
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if !self.succeeded {
            self.state.doubt(self.id.as_str());
        }
        self.state.bump(self.id.as_str());
    }
}

/// Stops the listening task with the cache.
#[derive(Debug)]
struct Watcher(tokio::task::AbortHandle);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A store that reports the changes made to it, so that a
/// [`CachingStore::coherent`] in front of it can keep records until they
/// change.
///
/// Each write publishes the id it changed, tagged with the origin of the
/// store value that wrote it, in the same round trip as the write;
/// [`watch`](Self::watch) listens and reports the changes of every other
/// origin.
#[async_trait]
pub trait Notifying: SessionStore + Sized {
    /// This store with its writes tagged as `origin` (never 0, the tag of
    /// stores no cache owns), so that a cache is not told of its own
    /// writes, which it applies itself.
    ///
    /// # Errors
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when this store cannot
    /// report changes (a Redis Cluster, MySQL, SQLite, a connection handed
    /// in without the means to open another).
    fn with_origin(&self, origin: u64) -> Result<Self, Error>;

    /// Listens for changes made under any origin but this store's and
    /// reports them to `to`: [`Invalidations::connected`] once listening,
    /// [`Invalidations::changed`] for each change,
    /// [`Invalidations::lost`] when the channel breaks (then reconnects).
    /// Returns once [`Invalidations::is_closed`].
    async fn watch(&self, to: Invalidations);
}

/// Where a [`Notifying`] store reports changes: a handle on one
/// [`CachingStore`]'s state that does not keep the cache alive.
#[derive(Debug, Clone)]
pub struct Invalidations(Weak<State>);

impl Invalidations {
    /// The session `id` changed (written, deleted or taken) elsewhere.
    pub fn changed(&self, id: &str) {
        if let Some(state) = self.0.upgrade() {
            state.bump(id);
            state.heard.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The session `id` was changed by a write of this cache's own origin.
    /// Ignored, since the cache applied that write itself, unless the
    /// write failed or was abandoned here and landed after all (a
    /// timeout): then it counts as a change.
    pub fn changed_here(&self, id: &str) {
        if let Some(state) = self.0.upgrade()
            && state.resolve_doubt(id)
        {
            state.bump(id);
            state.heard.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The channel is down: changes may be missed until
    /// [`connected`](Self::connected), so the cache drops what it holds
    /// and reads through.
    pub fn lost(&self) {
        if let Some(state) = self.0.upgrade() {
            state.live.store(false, Ordering::SeqCst);
            state.bump_all();
            state.losses.fetch_add(1, Ordering::SeqCst);
            tracing::warn!("session cache: change channel lost, reading through");
        }
    }

    /// The channel is listening: every change from now on is reported, so
    /// records read from now on may be cached.
    pub fn connected(&self) {
        if let Some(state) = self.0.upgrade() {
            // Records read while the channel was down may have missed a
            // change: none of them is served.
            state.bump_all();
            state.live.store(true, Ordering::SeqCst);
            tracing::debug!("session cache: change channel listening");
        }
    }

    /// Whether the cache is gone, so the listener can stop.
    pub fn is_closed(&self) -> bool {
        self.0.strong_count() == 0
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
            state: Arc::new(State::new(true)),
            watcher: None,
        }
    }

    /// How long a record may be served from the cache in the
    /// time-bounded mode (`None` in the coherent mode, where records stay
    /// until they change).
    pub fn ttl(&self) -> Option<Duration> {
        self.cache.policy().time_to_live()
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Whether records are being served from the cache: always in the
    /// time-bounded mode; in the coherent mode, while the change channel
    /// is listening (a health check can report it).
    pub fn is_caching(&self) -> bool {
        self.state.live()
    }

    /// How many changes made elsewhere the channel has reported (coherent
    /// mode), for metrics.
    pub fn changes_heard(&self) -> u64 {
        self.state.heard.load(Ordering::SeqCst)
    }

    /// How many times the change channel was lost (coherent mode), for
    /// metrics.
    pub fn channel_losses(&self) -> u64 {
        self.state.losses.load(Ordering::SeqCst)
    }

    /// Waits up to `within` for [`is_caching`](Self::is_caching): in the
    /// coherent mode, for the change channel to listen (at start-up, say,
    /// before a health check reports ready). Returns whether it does.
    pub async fn wait_caching(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.is_caching() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

impl<S: Notifying> CachingStore<S> {
    /// Caches up to 10,000 records of `inner` until they change, told of
    /// changes by `inner`. Starts the listening task (stopped with the
    /// cache); records are cached once it listens, and read through
    /// until then.
    ///
    /// Must be called within a Tokio runtime.
    ///
    /// # Errors
    /// As [`Notifying::with_origin`]: the store cannot report changes (use
    /// [`CachingStore::new`], time-bounded, for it).
    pub fn coherent(inner: S) -> Result<Self, Error> {
        Self::coherent_with_capacity(inner, 10_000)
    }

    /// [`coherent`](Self::coherent), with up to `capacity` records.
    ///
    /// # Errors
    /// As [`coherent`](Self::coherent).
    pub fn coherent_with_capacity(inner: S, capacity: u64) -> Result<Self, Error> {
        // Nonzero and unpredictable: another process's cache must never
        // share it.
        let origin = loop {
            let mut bytes = [0; 8];
            getrandom::fill(&mut bytes).expect("the OS random number generator failed");
            let origin = u64::from_le_bytes(bytes);
            if origin != 0 {
                break origin;
            }
        };
        let inner = inner.with_origin(origin)?;
        let state = Arc::new(State::new(false));
        let listener = inner.with_origin(origin)?;
        let to = Invalidations(Arc::downgrade(&state));
        let task = tokio::spawn(async move { listener.watch(to).await });
        Ok(Self {
            inner,
            cache: Cache::builder().max_capacity(capacity).build(),
            state,
            watcher: Some(Watcher(task.abort_handle())),
        })
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for CachingStore<S> {
    async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        self.load_where(id, now, |_| true).await
    }

    /// Every server behind the cache stamps its writes and hands the
    /// client the stamp, so a copy is served only to a client whose last
    /// write it holds: read-your-writes across servers, whatever the
    /// channel's delay (or the TTL).
    fn stamps_writes(&self) -> bool {
        true
    }

    async fn load_seen(
        &self,
        id: &SessionId,
        now: u64,
        seen: &str,
    ) -> Result<Option<Record>, Error> {
        self.load_where(id, now, |record| {
            record.data.get(STAMP_KEY).and_then(|v| v.as_str()) == Some(seen)
        })
        .await
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error> {
        let before = self.state.current(id.as_str());
        let created = self.write(id, self.inner.create(id, record)).await;
        if matches!(created, Ok(true)) {
            self.keep(id, before, record.clone()).await;
        } else {
            self.cache.invalidate(id).await;
        }
        created
    }

    async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
        let before = self.state.current(id.as_str());
        // Only a coherent cache keeps its writes (see `keep`): a
        // time-bounded one need not copy the record out here.
        let cached = match self.watcher {
            Some(_) => self.cache.get(id).await,
            None => None,
        }
        .filter(|(_, read_under)| *read_under == before);
        let applied = self.write(id, self.inner.apply(id, changes)).await;
        // Changes that read the record (expectations, merges) were judged
        // against what the store holds, which a copy may trail: the copy
        // goes, and the next load reads what the store made of them.
        let cached = cached.filter(|_| !changes.reads_the_record());
        let kept = match (&applied, cached) {
            (Ok(true), Some((mut record, _))) => {
                changes.apply_to(&mut record).ok().map(|()| record)
            }
            _ => None,
        };
        match kept {
            Some(record) => self.keep(id, before, record).await,
            None => self.cache.invalidate(id).await,
        }
        applied
    }

    async fn delete(&self, id: &SessionId) -> Result<(), Error> {
        let deleted = self.write(id, self.inner.delete(id)).await;
        self.cache.invalidate(id).await;
        deleted
    }

    async fn lease(
        &self,
        id: &SessionId,
        holder: &str,
        hold: std::time::Duration,
    ) -> Result<bool, Error> {
        self.inner.lease(id, holder, hold).await
    }

    async fn release(&self, id: &SessionId, holder: &str) -> Result<(), Error> {
        self.inner.release(id, holder).await
    }

    async fn take(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let taken = self.write(id, self.inner.take(id, now)).await;
        self.cache.invalidate(id).await;
        taken
    }

    async fn delete_expired(&self, now: u64) -> Result<u64, Error> {
        self.inner.delete_expired(now).await
    }

    /// Always from the store behind: a listing is rare, and must not miss
    /// a session another server created.
    async fn owned(&self, owner: &str, now: u64) -> Result<Vec<(SessionId, Record)>, Error> {
        self.inner.owned(owner, now).await
    }

    fn id_cookie(&self) -> super::IdCookie {
        self.inner.id_cookie()
    }
}

impl<S: SessionStore> CachingStore<S> {
    /// A load that serves a cached copy only if `fresh_enough` says so.
    async fn load_where(
        &self,
        id: &SessionId,
        now: u64,
        fresh_enough: impl Fn(&Record) -> bool,
    ) -> Result<Option<Record>, Error> {
        let live = self.state.live();
        let generation = self.state.current(id.as_str());
        if live && let Some((record, read_under)) = self.cache.get(id).await {
            if read_under == generation && !record.is_expired(now) && fresh_enough(&record) {
                return Ok(Some(record));
            }
            self.cache.invalidate(id).await;
        }
        // Read under `generation`, taken before the backend is asked: a
        // write that lands after this read counts after it, so the copy
        // below is never served once that write has counted.
        let record = self.inner.load(id, now).await?;
        if live && let Some(record) = &record {
            self.cache
                .insert(id.clone(), (record.clone(), generation))
                .await;
        }
        Ok(record)
    }
}

impl<S> CachingStore<S> {
    /// Runs a backend write and counts it, even if this future is dropped
    /// before the write returns. (Dropping the cached copy afterwards only
    /// frees memory: a copy read under an older count is never served.)
    async fn write<T>(
        &self,
        id: &SessionId,
        write: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let mut counted = Counted {
            state: &self.state,
            id,
            succeeded: false,
        };
        let result = write.await;
        counted.succeeded = result.is_ok();
        result
    }

    /// Caches `record` as this process just wrote it, if no other write
    /// or reported change to its stripe came between (the count moved by
    /// exactly this write since `before`); otherwise the next load reads
    /// it back.
    async fn keep(&self, id: &SessionId, before: u64, record: Record) {
        let after = before + 1;
        // Only a coherent cache hears of other servers' writes: a
        // time-bounded one that kept its own writes would refresh the TTL
        // of a copy that misses them, for as long as it keeps writing.
        let coherent = self.watcher.is_some();
        if coherent && self.state.live() && self.state.current(id.as_str()) == after {
            self.cache.insert(id.clone(), (record, after)).await;
        } else {
            self.cache.invalidate(id).await;
        }
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
        // Created behind the cache, so the load below reaches the backend.
        assert!(store.inner().create(&id, &record).await.unwrap());
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

    /// A store whose change channel the test drives by hand: `watch`
    /// hands the test its `Invalidations`.
    #[derive(Debug, Clone, Default)]
    struct Reporting {
        inner: Arc<MemoryStore>,
        channel: Arc<std::sync::Mutex<Option<Invalidations>>>,
        /// Applies land, then answer an error (a timeout after the fact).
        fail_after_applying: Arc<std::sync::atomic::AtomicBool>,
    }

    #[async_trait]
    impl SessionStore for Reporting {
        async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
            self.inner.load(id, now).await
        }
        async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error> {
            self.inner.create(id, record).await
        }
        async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
            let applied = self.inner.apply(id, changes).await;
            if self.fail_after_applying.load(Ordering::SeqCst) {
                return Err(Error::store("timed out"));
            }
            applied
        }
        async fn delete(&self, id: &SessionId) -> Result<(), Error> {
            self.inner.delete(id).await
        }
        async fn take(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
            self.inner.take(id, now).await
        }
    }

    #[async_trait]
    impl Notifying for Reporting {
        fn with_origin(&self, _origin: u64) -> Result<Self, Error> {
            Ok(self.clone())
        }
        async fn watch(&self, to: Invalidations) {
            *self.channel.lock().unwrap() = Some(to);
            std::future::pending::<()>().await;
        }
    }

    impl Reporting {
        async fn channel(&self) -> Invalidations {
            loop {
                if let Some(to) = self.channel.lock().unwrap().clone() {
                    return to;
                }
                tokio::task::yield_now().await;
            }
        }

        /// Sets `v` behind every cache's back.
        async fn write_silently(&self, id: &SessionId, v: i64) {
            let mut changes = Changes::expiry(now(), now() + 60);
            changes.set.push(("v".into(), json!(v)));
            assert!(self.inner.apply(id, &changes).await.unwrap());
        }
    }

    /// A coherent cache whose channel listens, and the channel.
    async fn listening() -> (Reporting, CachingStore<Reporting>, Invalidations) {
        let backend = Reporting::default();
        let cache = CachingStore::coherent(backend.clone()).unwrap();
        let channel = backend.channel().await;
        channel.connected();
        (backend, cache, channel)
    }

    async fn v(store: &impl SessionStore, id: &SessionId) -> Option<i64> {
        store.load(id, now()).await.unwrap()?.data["v"].as_i64()
    }

    fn record(v: i64) -> Record {
        Record::new(
            json!({ "v": v }).as_object().unwrap().clone(),
            false,
            now(),
            now() + 60,
        )
    }

    fn set(v: i64) -> Changes {
        let mut changes = Changes::expiry(now(), now() + 60);
        changes.set.push(("v".into(), json!(v)));
        changes
    }

    #[tokio::test]
    async fn nothing_is_cached_until_the_channel_listens() {
        let backend = Reporting::default();
        let cache = CachingStore::coherent(backend.clone()).unwrap();
        assert!(!cache.is_caching());
        let id = SessionId::generate();
        assert!(cache.create(&id, &record(1)).await.unwrap());
        assert_eq!(v(&cache, &id).await, Some(1));
        backend.write_silently(&id, 2).await;
        assert_eq!(v(&cache, &id).await, Some(2), "read through");

        let channel = backend.channel().await;
        channel.connected();
        assert!(cache.is_caching());
        assert_eq!(v(&cache, &id).await, Some(2));
        backend.write_silently(&id, 3).await;
        assert_eq!(v(&cache, &id).await, Some(2), "cached now");
        channel.changed(id.as_str());
        assert_eq!(v(&cache, &id).await, Some(3), "a reported change");
        assert_eq!(cache.changes_heard(), 1);
    }

    #[tokio::test]
    async fn a_lost_channel_drops_everything_until_it_is_back() {
        let (backend, cache, channel) = listening().await;
        let id = SessionId::generate();
        assert!(cache.create(&id, &record(1)).await.unwrap());
        assert_eq!(v(&cache, &id).await, Some(1));

        channel.lost();
        assert!(!cache.is_caching());
        assert_eq!(cache.channel_losses(), 1);
        backend.write_silently(&id, 2).await;
        assert_eq!(v(&cache, &id).await, Some(2), "read through while lost");
        backend.write_silently(&id, 3).await;
        assert_eq!(v(&cache, &id).await, Some(3), "and nothing kept");

        channel.connected();
        backend.write_silently(&id, 4).await;
        assert_eq!(v(&cache, &id).await, Some(4), "nothing read before served");
        backend.write_silently(&id, 5).await;
        assert_eq!(v(&cache, &id).await, Some(4), "caching again");
    }

    #[tokio::test]
    async fn own_writes_are_kept_in_place_unless_another_came_between() {
        let (backend, cache, channel) = listening().await;
        let id = SessionId::generate();
        assert!(cache.create(&id, &record(1)).await.unwrap());
        backend.write_silently(&id, 100).await;
        assert_eq!(v(&cache, &id).await, Some(1), "the create was kept");

        // The backend holds 100: the apply below writes 2 there, and the
        // cache applies the same change to its copy.
        assert!(cache.apply(&id, &set(2)).await.unwrap());
        backend.write_silently(&id, 101).await;
        assert_eq!(v(&cache, &id).await, Some(2), "kept in place");

        // A change reported from elsewhere makes the copy stale: the next
        // apply has no copy to update, and the load after it reads through.
        channel.changed(id.as_str());
        assert!(cache.apply(&id, &set(3)).await.unwrap());
        backend.write_silently(&id, 102).await;
        assert_eq!(v(&cache, &id).await, Some(102), "read through");

        // A failed write keeps nothing.
        let gone = SessionId::generate();
        assert!(!cache.apply(&gone, &set(4)).await.unwrap());
        assert_eq!(v(&cache, &gone).await, None);
    }

    #[tokio::test]
    async fn its_own_messages_count_only_for_writes_that_failed_here() {
        let (backend, cache, channel) = listening().await;
        let id = SessionId::generate();
        assert!(cache.create(&id, &record(1)).await.unwrap());
        assert!(cache.apply(&id, &set(2)).await.unwrap());
        backend.write_silently(&id, 100).await;
        channel.changed_here(id.as_str());
        assert_eq!(v(&cache, &id).await, Some(2), "its own write: ignored");

        // A write that failed here but landed: its message counts, once.
        backend.fail_after_applying.store(true, Ordering::SeqCst);
        assert!(cache.apply(&id, &set(3)).await.is_err());
        backend.fail_after_applying.store(false, Ordering::SeqCst);
        assert_eq!(v(&cache, &id).await, Some(3), "read back after the failure");
        backend.write_silently(&id, 101).await;
        assert_eq!(v(&cache, &id).await, Some(3), "cached again");
        channel.changed_here(id.as_str());
        assert_eq!(v(&cache, &id).await, Some(101), "the late landing counts");
        backend.write_silently(&id, 102).await;
        channel.changed_here(id.as_str());
        assert_eq!(v(&cache, &id).await, Some(101), "and only once");
    }

    /// A time-bounded cache hears of no other server's writes: it must not
    /// keep its own write in place, which would renew the TTL of a copy
    /// that misses them for as long as it keeps writing.
    #[tokio::test]
    async fn a_time_bounded_cache_reads_back_after_its_own_writes() {
        let backend = Arc::new(MemoryStore::new());
        let cache = CachingStore::with_cache(backend.clone(), 100, Duration::from_secs(3600));
        let id = SessionId::generate();
        assert!(cache.create(&id, &record(1)).await.unwrap());
        let mut elsewhere = Changes::expiry(now(), now() + 60);
        elsewhere.set.push(("x".into(), json!(1)));
        assert!(backend.apply(&id, &elsewhere).await.unwrap());
        assert!(cache.apply(&id, &set(2)).await.unwrap());
        let record = cache.load(&id, now()).await.unwrap().unwrap();
        assert_eq!(record.data["x"], 1, "another server's write is not lost");
        assert_eq!(record.data["v"], 2);
    }

    #[tokio::test]
    async fn the_listener_stops_with_the_cache() {
        let backend = Reporting::default();
        let cache = CachingStore::coherent(backend.clone()).unwrap();
        let channel = backend.channel().await;
        assert!(!channel.is_closed());
        drop(cache);
        assert!(channel.is_closed());
        // Reports to a cache that is gone are ignored.
        channel.changed("whatever");
        channel.lost();
        channel.connected();
    }
}
