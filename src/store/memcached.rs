//! `MemcachedStore`: sessions in Memcached.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_memcached::{Client, Error as McError, MetaProtocol, Status};
use async_trait::async_trait;
use tokio::sync::Mutex;

use super::{Changes, Record, SessionId, SessionStore, now};
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
/// a connection that fails is replaced on its next use, so the store
/// recovers by itself when Memcached comes back. Every call is bounded by
/// [`timeout`](Self::timeout) (2 s by default).
pub struct MemcachedStore {
    dsn: String,
    pool: Box<[Mutex<Option<Client>>]>,
    next: AtomicUsize,
    prefix: String,
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
        let first = connect(&dsn, DEFAULT_TIMEOUT).await?;
        let store = Self {
            dsn,
            pool: (0..8).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            prefix: "session:".into(),
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

    /// The prefix of every key (default `session:`).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest a Memcached call may take before it fails (default 2 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn key(&self, id: &SessionId) -> String {
        format!("{}{}", self.prefix, id.as_str())
    }

    /// Runs `op` on a pooled connection, connecting first if needed; a
    /// connection that failed or timed out is dropped, to be replaced.
    async fn with_client<T, F>(&self, op: F) -> Result<T, Error>
    where
        F: for<'c> FnOnce(
            &'c mut Client,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = Result<T, McError>> + Send + 'c>,
        >,
    {
        let slot = &self.pool[self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len()];
        let mut guard = slot.lock().await;
        if guard.is_none() {
            *guard = Some(connect(&self.dsn, self.timeout).await?);
        }
        let client = guard.as_mut().expect("connected above");
        match tokio::time::timeout(self.timeout, op(client)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                if !matches!(error, McError::Protocol(_)) {
                    *guard = None;
                }
                Err(Error::store(McFailure(error)))
            }
            Err(elapsed) => {
                *guard = None;
                Err(Error::store(elapsed))
            }
        }
    }

    /// The item's record and CAS token.
    async fn get(&self, key: &str) -> Result<Option<(Record, u64)>, Error> {
        let key = key.to_owned();
        let value = self
            .with_client(move |c| {
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
        Ok((!record.is_expired(now())).then_some((record, cas)))
    }
}

async fn connect(dsn: &str, timeout: Duration) -> Result<Client, Error> {
    match tokio::time::timeout(timeout, Client::new(dsn)).await {
        Ok(result) => result.map_err(|e| Error::store(McFailure(e))),
        Err(elapsed) => Err(Error::store(elapsed)),
    }
}

/// async-memcached's error, made a `std::error::Error` to keep as a source.
#[derive(Debug)]
struct McFailure(McError);

impl fmt::Display for McFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "memcached: {:?}", self.0)
    }
}

impl std::error::Error for McFailure {}

fn is_status(error: &Error, status: &Status) -> bool {
    std::error::Error::source(error)
        .and_then(|s| s.downcast_ref::<McFailure>())
        .is_some_and(|McFailure(e)| matches!(e, McError::Protocol(s) if s == status))
}

#[async_trait]
impl SessionStore for MemcachedStore {
    async fn load(&self, id: &SessionId) -> Result<Option<Record>, Error> {
        Ok(self.get(&self.key(id)).await?.map(|(record, _)| record))
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error> {
        let (key, value) = (
            self.key(id),
            serde_json::to_vec(record).map_err(Error::store)?,
        );
        let ttl = format!("T{}", record.expires_at);
        let result = self
            .with_client(move |c| {
                Box::pin(async move {
                    c.meta_set(&key, value.as_slice(), false, None, Some(&["ME", &ttl]))
                        .await
                })
            })
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error) if is_status(&error, &Status::NotStored) => Ok(false),
            Err(error) => Err(error),
        }
    }

    async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
        let key = self.key(id);
        for attempt in 0..CAS_ATTEMPTS {
            if attempt > 0 {
                // Jittered backoff, so losers of a race do not collide again.
                let jitter = getrandom::u32().unwrap_or(attempt) % (200 * attempt.min(50));
                tokio::time::sleep(Duration::from_micros(u64::from(jitter))).await;
            }
            let Some((mut record, cas)) = self.get(&key).await? else {
                return Ok(false);
            };
            changes.apply_to(&mut record);
            let value = serde_json::to_vec(&record).map_err(Error::store)?;
            let (key, cas, ttl) = (
                key.clone(),
                format!("C{cas}"),
                format!("T{}", record.expires_at),
            );
            let result = self
                .with_client(move |c| {
                    Box::pin(async move {
                        c.meta_set(&key, value.as_slice(), false, None, Some(&[&cas, &ttl]))
                            .await
                    })
                })
                .await;
            match result {
                Ok(_) => return Ok(true),
                Err(error) if is_status(&error, &Status::Exists) => continue,
                Err(error) if is_status(&error, &Status::NotFound) => return Ok(false),
                Err(error) => return Err(error),
            }
        }
        Err(Error::store(
            "memcached: too many concurrent writes to one session",
        ))
    }

    async fn delete(&self, id: &SessionId) -> Result<(), Error> {
        let key = self.key(id);
        self.with_client(move |c| {
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
