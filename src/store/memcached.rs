//! `MemcachedStore`: sessions in Memcached.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_memcached::{Client, Error as McError, MetaProtocol, Status};
use async_trait::async_trait;
use tokio::sync::{Mutex, MutexGuard};
use tokio::time::Instant;

use super::net::{KeyPrefix, backoff, prefix_and_timeout};
use super::{Changes, Record, SessionId, SessionStore};
use crate::error::Error;

/// The default bound on every Memcached call.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often `apply` tries before giving up on a compare-and-swap race:
/// enough for a hundred concurrent writers to one session.
const CAS_ATTEMPTS: u32 = 128;

/// Sessions in Memcached, one item per session holding the record's JSON,
/// expiring natively at the record's expiry.
///
/// Memcached cannot merge fields of an item, so `apply` is a
/// compare-and-swap loop (meta protocol: `mg` with a CAS token, `ms` with
/// `C<token>`): read, apply the request's changes, write only if nobody
/// wrote in between, else retry. Two requests of one user that write
/// different keys therefore both survive, at the price of a retry under
/// contention. `create` uses the add mode (`ME`), so it never overwrites.
///
/// Round trips: one per load; two per save (three or more when a CAS race
/// is lost). Memcached may evict any item under memory pressure: a session
/// can end early, which the layer treats like an expired one. Needs
/// Memcached 1.6 or later (the meta protocol).
///
/// Connections: a small pool (8 by default, [`connections`](Self::connections));
/// a connection that fails, times out, or whose call was cancelled (its
/// future dropped mid-protocol) is dropped and replaced on next use, so
/// the store recovers by itself when Memcached comes back. Every store
/// call is bounded as a whole by [`timeout`](Self::timeout) (2 s by
/// default): the wait for a free connection, connecting, and `apply`'s
/// retries included. async-memcached has no timeout of its own, not even
/// when connecting, so this is the only bound.
pub struct MemcachedStore {
    dsn: String,
    pool: Box<[Mutex<Option<Client>>]>,
    next: AtomicUsize,
    prefix: KeyPrefix,
    timeout: Duration,
}

impl fmt::Debug for MemcachedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemcachedStore")
            .field("dsn", &self.dsn)
            .field("connections", &self.pool.len())
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl MemcachedStore {
    /// Connects to the Memcached at `url` (`memcache://host:port`,
    /// `tcp://host:port` or `host:port`).
    ///
    /// # Errors
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when Memcached cannot
    /// be reached.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let host = url
            .strip_prefix("memcache://")
            .or_else(|| url.strip_prefix("memcached://"))
            .or_else(|| url.strip_prefix("tcp://"))
            .unwrap_or(url);
        let dsn = format!("tcp://{host}");
        let first = match tokio::time::timeout(DEFAULT_TIMEOUT, Client::new(&dsn)).await {
            Ok(client) => client.map_err(|e| Error::store(McFailure(e)))?,
            Err(elapsed) => return Err(Error::store(elapsed)),
        };
        let store = Self {
            dsn,
            pool: (0..8).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            prefix: KeyPrefix::default(),
            timeout: DEFAULT_TIMEOUT,
        };
        *store.pool[0].lock().await = Some(first);
        Ok(store)
    }

    /// How many connections to keep (default 8).
    ///
    /// # Panics
    /// When `count` is 0.
    #[must_use]
    pub fn connections(mut self, count: usize) -> Self {
        assert!(count > 0, "a Memcached store needs at least one connection");
        self.pool = (0..count).map(|_| Mutex::new(None)).collect();
        self
    }

    prefix_and_timeout!(
        "The longest a store call may take before it fails (default 2 s), \
         waiting for a free connection and reconnecting included."
    );

    fn key(&self, id: &SessionId) -> String {
        self.prefix.key(id)
    }

    /// The key of the session's lease (`:` never occurs in an id, so it
    /// names no session).
    fn lease_key(&self, id: &SessionId) -> String {
        format!("{}lease:{}", self.prefix.as_str(), id.as_str())
    }

    /// Runs `op` on a pooled connection, connecting first if needed. All
    /// of it, the wait for a free connection included, must end by
    /// `deadline`.
    pub(super) async fn with_client<T, F>(&self, deadline: Instant, op: F) -> Result<T, Error>
    where
        F: for<'c> FnOnce(
            &'c mut Client,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = Result<T, McError>> + Send + 'c>,
        >,
    {
        match tokio::time::timeout_at(deadline, self.call(op)).await {
            Ok(result) => result,
            Err(elapsed) => Err(Error::store(elapsed)),
        }
    }

    async fn call<T, F>(&self, op: F) -> Result<T, Error>
    where
        F: for<'c> FnOnce(
            &'c mut Client,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = Result<T, McError>> + Send + 'c>,
        >,
    {
        let mut slot = self.free_slot().await;
        // The connection leaves its slot for the call and goes back only
        // when the call ends with the reply read. A call cut short (timed
        // out, or its future dropped by a client that went away) takes the
        // connection down with it, so one left mid-protocol never serves
        // the next call.
        let mut client = match slot.take() {
            Some(client) if !client.is_closed() => client,
            _ => Client::new(&self.dsn)
                .await
                .map_err(|e| Error::store(McFailure(e)))?,
        };
        let result = op(&mut client).await;
        // A status the server answered (not stored, exists...) leaves the
        // connection in step; any other failure may not have.
        if matches!(result, Ok(_) | Err(McError::Protocol(_))) && !client.is_closed() {
            *slot = Some(client);
        }
        result.map_err(|e| Error::store(McFailure(e)))
    }

    /// An idle connection's slot if there is one, else the next one in
    /// turn once it is free.
    async fn free_slot(&self) -> MutexGuard<'_, Option<Client>> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let slots = self.pool.len();
        for i in 0..slots {
            if let Ok(slot) = self.pool[(first + i) % slots].try_lock() {
                return slot;
            }
        }
        self.pool[first % slots].lock().await
    }

    pub(super) fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// The item's record and CAS token.
    async fn get(
        &self,
        deadline: Instant,
        key: &str,
        now: u64,
    ) -> Result<Option<(Record, u64)>, Error> {
        let found = self.get_any(deadline, key).await?;
        Ok(found.filter(|(record, _)| !record.is_expired(now)))
    }

    /// The item's record and CAS token, expired by the layer's clock or not.
    async fn get_any(&self, deadline: Instant, key: &str) -> Result<Option<(Record, u64)>, Error> {
        let key = key.to_owned();
        let value = self
            .with_client(deadline, move |c| {
                Box::pin(async move { c.meta_get(&key, false, None, Some(&["v", "c"])).await })
            })
            .await?;
        let Some(value) = value else { return Ok(None) };
        let (Some(data), Some(cas)) = (value.data, value.cas) else {
            return Err(Error::store(
                "memcached answered without value or CAS token",
            ));
        };
        let record: Record = serde_json::from_slice(&data).map_err(Error::store)?;
        Ok(Some((record, cas)))
    }

    /// Stores `value` under `key` with the meta-set `flags` (mode, CAS
    /// token, expiry).
    pub(super) async fn set(
        &self,
        deadline: Instant,
        key: &str,
        value: Vec<u8>,
        flags: [String; 2],
    ) -> Result<(), Error> {
        let key = key.to_owned();
        self.with_client(deadline, move |c| {
            Box::pin(async move {
                let flags = flags.each_ref().map(String::as_str);
                c.meta_set(&key, value.as_slice(), false, None, Some(&flags))
                    .await
                    .map(drop)
            })
        })
        .await
    }
}

/// The longest TTL Memcached takes as seconds from now (thirty days);
/// past it, a TTL is a Unix time.
const MAX_RELATIVE_TTL: u64 = 30 * 24 * 3600;

/// async-memcached's error, made a `std::error::Error` to keep as a source.
#[derive(Debug)]
struct McFailure(McError);

impl fmt::Display for McFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "memcached: {:?}", self.0)
    }
}

impl std::error::Error for McFailure {}

/// A compare-and-swap lost to another writer: the item changed (`EX`) or
/// went (`NF`) since it was read.
pub(super) fn lost_race(error: &Error) -> bool {
    is_status(error, &Status::Exists) || is_status(error, &Status::NotFound)
}

fn too_many_writers() -> Error {
    Error::store("memcached: too many concurrent writes to one session")
}

pub(super) fn is_status(error: &Error, status: &Status) -> bool {
    std::error::Error::source(error)
        .and_then(|s| s.downcast_ref::<McFailure>())
        .is_some_and(|McFailure(e)| matches!(e, McError::Protocol(s) if s == status))
}

#[async_trait]
impl SessionStore for MemcachedStore {
    async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let found = self.get(self.deadline(), &self.key(id), now).await?;
        Ok(found.map(|(record, _)| record))
    }

    /// Added if the key is free; an item the layer's clock says expired
    /// (Memcached's own clock has not dropped it yet) is replaced by
    /// compare-and-swap, since its id is free again.
    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error> {
        let (key, value) = (
            self.key(id),
            serde_json::to_vec(record).map_err(Error::store)?,
        );
        let ttl = format!("T{}", record.expires_at);
        let deadline = self.deadline();
        for attempt in 0..CAS_ATTEMPTS {
            backoff(attempt).await;
            let add = [String::from("ME"), ttl.clone()];
            match self.set(deadline, &key, value.clone(), add).await {
                Ok(()) => return Ok(true),
                Err(error) if is_status(&error, &Status::NotStored) => {}
                Err(error) => return Err(error),
            }
            let cas = match self.get_any(deadline, &key).await? {
                Some((existing, _)) if !existing.is_expired(record.created_at) => return Ok(false),
                Some((_, cas)) => cas,
                // Gone since the add: add again.
                None => continue,
            };
            let replace = [format!("C{cas}"), ttl.clone()];
            match self.set(deadline, &key, value.clone(), replace).await {
                Ok(()) => return Ok(true),
                Err(error) if lost_race(&error) => {}
                Err(error) => return Err(error),
            }
        }
        Err(too_many_writers())
    }

    async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
        let key = self.key(id);
        // One bound for every attempt: the caller waits `timeout` at most.
        let deadline = self.deadline();
        for attempt in 0..CAS_ATTEMPTS {
            backoff(attempt).await;
            let Some((mut record, cas)) = self.get(deadline, &key, changes.now).await? else {
                return Ok(false);
            };
            // Judged against the item as read: the CAS below makes the
            // write land only on that very item, or read again.
            changes.apply_to(&mut record)?;
            let value = serde_json::to_vec(&record).map_err(Error::store)?;
            let flags = [format!("C{cas}"), format!("T{}", record.expires_at)];
            match self.set(deadline, &key, value, flags).await {
                Ok(()) => return Ok(true),
                Err(error) if is_status(&error, &Status::Exists) => continue,
                Err(error) if is_status(&error, &Status::NotFound) => return Ok(false),
                Err(error) => return Err(error),
            }
        }
        Err(too_many_writers())
    }

    /// An add (meta set mode `E`) of the holder under the lease key, with
    /// `hold` as its TTL in whole seconds (rounded up: Memcached counts in
    /// seconds): one round trip.
    async fn lease(&self, id: &SessionId, holder: &str, hold: Duration) -> Result<bool, Error> {
        let seconds = (hold.as_secs() + u64::from(hold.subsec_nanos() > 0)).max(1);
        // Memcached reads a TTL past thirty days as a Unix time: a longer
        // hold goes as the time it ends.
        let ttl = match seconds > MAX_RELATIVE_TTL {
            true => super::now().saturating_add(seconds),
            false => seconds,
        };
        let add = [String::from("ME"), format!("T{ttl}")];
        let value = holder.as_bytes().to_vec();
        match self
            .set(self.deadline(), &self.lease_key(id), value, add)
            .await
        {
            Ok(()) => Ok(true),
            Err(error) if is_status(&error, &Status::NotStored) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The lease read with its CAS token, and deleted by that token if the
    /// holder still holds it: two round trips.
    async fn release(&self, id: &SessionId, holder: &str) -> Result<(), Error> {
        let deadline = self.deadline();
        let key = self.lease_key(id);
        let read = key.clone();
        let found = self
            .with_client(deadline, move |c| {
                Box::pin(async move { c.meta_get(&read, false, None, Some(&["v", "c"])).await })
            })
            .await?;
        let Some((data, Some(cas))) = found.map(|value| (value.data, value.cas)) else {
            return Ok(());
        };
        if data.as_deref() != Some(holder.as_bytes()) {
            return Ok(());
        }
        let cas = format!("C{cas}");
        let deleted = self
            .with_client(deadline, move |c| {
                Box::pin(async move { c.meta_delete(&key, false, None, Some(&[&cas])).await })
            })
            .await;
        match deleted {
            Err(error) if !lost_race(&error) => Err(error),
            _ => Ok(()),
        }
    }

    /// Read, then deleted only if the item is still what was read (its CAS
    /// token): atomic with `apply`, whose writes change the token.
    async fn take(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let key = self.key(id);
        let deadline = self.deadline();
        for attempt in 0..CAS_ATTEMPTS {
            backoff(attempt).await;
            let Some((record, cas)) = self.get(deadline, &key, now).await? else {
                return Ok(None);
            };
            let (key, cas) = (key.clone(), format!("C{cas}"));
            let result = self
                .with_client(deadline, move |c| {
                    Box::pin(async move { c.meta_delete(&key, false, None, Some(&[&cas])).await })
                })
                .await;
            match result {
                Ok(_) => return Ok(Some(record)),
                // Changed or gone since the read: read again.
                Err(error) if lost_race(&error) => {}
                Err(error) => return Err(error),
            }
        }
        Err(too_many_writers())
    }

    async fn delete(&self, id: &SessionId) -> Result<(), Error> {
        let key = self.key(id);
        self.with_client(self.deadline(), move |c| {
            Box::pin(async move { c.meta_delete(&key, false, None, None).await })
        })
        .await
        .map(drop)
        .or_else(|error| {
            if is_status(&error, &Status::NotFound) {
                Ok(())
            } else {
                Err(error)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;
    use tokio::sync::Notify;

    use super::*;
    use crate::store::now;

    /// A stand-in for Memcached that answers every `mg` with a miss (`EN`),
    /// but only while `answering` is set; until then it holds requests
    /// unanswered, as a stalled server does.
    struct FakeServer {
        url: String,
        answering: Arc<AtomicBool>,
        resume: Arc<Notify>,
        /// Requests read so far, answered or not.
        received: Arc<AtomicUsize>,
    }

    impl FakeServer {
        async fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("memcache://{}", listener.local_addr().unwrap());
            let answering = Arc::new(AtomicBool::new(true));
            let resume = Arc::new(Notify::new());
            let received = Arc::new(AtomicUsize::new(0));
            let (a, r, n) = (answering.clone(), resume.clone(), received.clone());
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let (a, r, n) = (a.clone(), r.clone(), n.clone());
                    tokio::spawn(async move {
                        let mut socket = BufReader::new(socket);
                        let mut line = String::new();
                        while socket.read_line(&mut line).await.is_ok_and(|read| read > 0) {
                            n.fetch_add(1, Ordering::SeqCst);
                            while !a.load(Ordering::SeqCst) {
                                r.notified().await;
                            }
                            if socket.get_mut().write_all(b"EN\r\n").await.is_err() {
                                return;
                            }
                            line.clear();
                        }
                    });
                }
            });
            Self {
                url,
                answering,
                resume,
                received,
            }
        }

        fn stall(&self) {
            self.answering.store(false, Ordering::SeqCst);
        }

        fn answer(&self) {
            self.answering.store(true, Ordering::SeqCst);
            self.resume.notify_waiters();
        }
    }

    fn id() -> SessionId {
        SessionId::generate()
    }

    /// With a stalled server, 80 loads on 8 connections each fail within the
    /// timeout: the wait for a free connection is part of the bound. The
    /// clock is Tokio's paused one, so the figures are exact, not timings.
    #[tokio::test]
    async fn the_timeout_bounds_the_whole_call_slot_wait_included() {
        let server = FakeServer::start().await;
        let timeout = Duration::from_millis(200);
        let store = Arc::new(
            MemcachedStore::connect(&server.url)
                .await
                .unwrap()
                .connections(8)
                .timeout(timeout),
        );
        server.stall();
        tokio::time::pause();
        let started = tokio::time::Instant::now();
        let mut loads = tokio::task::JoinSet::new();
        for _ in 0..80 {
            let store = store.clone();
            loads.spawn(async move { (store.load(&id(), now()).await, started.elapsed()) });
        }
        let mut slowest = Duration::ZERO;
        while let Some(joined) = loads.join_next().await {
            let (result, elapsed) = joined.unwrap();
            assert_eq!(result.unwrap_err().kind(), crate::ErrorKind::Store);
            slowest = slowest.max(elapsed);
        }
        assert!(
            slowest <= timeout + Duration::from_millis(1),
            "the slowest load took {slowest:?} with a timeout of {timeout:?}"
        );
    }

    /// Calls dropped mid-flight (a client gone, a tower timeout) leave no
    /// broken connection behind: every later call, on every connection,
    /// succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_calls_leave_every_connection_usable() {
        let server = FakeServer::start().await;
        let store = Arc::new(
            MemcachedStore::connect(&server.url)
                .await
                .unwrap()
                .connections(4),
        );
        // Open every connection first, so the calls below are cut in the
        // middle of the protocol rather than while connecting.
        for _ in 0..8 {
            assert_eq!(store.load(&id(), now()).await.unwrap(), None);
        }
        server.stall();
        let before = server.received.load(Ordering::SeqCst);
        let mut cancelled = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let store = store.clone();
            cancelled.spawn(async move { store.load(&id(), now()).await });
        }
        // Cut them once the server holds all four requests unanswered.
        tokio::time::timeout(Duration::from_secs(30), async {
            while server.received.load(Ordering::SeqCst) < before + 4 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the four requests reach the server");
        cancelled.abort_all();
        while cancelled.join_next().await.is_some() {}
        server.answer();
        for call in 0..8 {
            let loaded = store.load(&id(), now()).await;
            assert!(
                loaded.is_ok(),
                "call {call} after the cancellations: {loaded:?}"
            );
        }
    }
}
