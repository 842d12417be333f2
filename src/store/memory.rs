//! `MemoryStore`: sessions in this process's memory.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use super::{Changes, Record, SessionId, SessionStore, now};
use crate::error::Error;

/// Shards of the map: requests for different sessions rarely wait on one
/// another's lock.
const SHARDS: usize = 16;

/// Sessions in memory: the embedded default. Fast (no I/O, no
/// serialization) and gone when the process stops; one process only.
///
/// - `apply` is atomic per key: it runs under the lock of the session's
///   shard, so concurrent requests never lose each other's writes.
/// - Expired records are never returned, and are removed when touched
///   and by [`delete_expired`](SessionStore::delete_expired) (run it with
///   [`spawn_cleanup`](super::spawn_cleanup)).
/// - Memory is bounded by [`max_sessions`](Self::max_sessions): past it,
///   new sessions are refused (the request gets a 503) until expired ones
///   are removed, rather than the process running out of memory under a
///   flood of new sessions. Each session costs its JSON data plus about
///   200 bytes of bookkeeping.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Mutex<HashMap<SessionId, Record>>]>,
    hasher: RandomState,
    max_sessions: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with no limit on the number of sessions.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            max_sessions: usize::MAX,
        }
    }

    /// Refuses new sessions beyond `max` live ones (expired ones are
    /// removed first to make room).
    #[must_use]
    pub fn max_sessions(mut self, max: usize) -> Self {
        self.max_sessions = max;
        self
    }

    /// How many records are held, expired ones not yet removed included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, id: &SessionId) -> MutexGuard<'_, HashMap<SessionId, Record>> {
        let index = self.hasher.hash_one(id) as usize % SHARDS;
        lock(&self.shards[index])
    }

    fn purge_expired(&self) -> u64 {
        let now = now();
        let mut removed = 0;
        for shard in &*self.shards {
            let mut shard = lock(shard);
            let before = shard.len();
            shard.retain(|_, record| !record.is_expired(now));
            removed += (before - shard.len()) as u64;
        }
        removed
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics under these locks; recover rather than poison the store.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load(&self, id: &SessionId) -> Result<Option<Record>, Error> {
        let mut shard = self.shard(id);
        match shard.get(id) {
            Some(record) if record.is_expired(now()) => {
                shard.remove(id);
                Ok(None)
            }
            record => Ok(record.cloned()),
        }
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error> {
        if self.max_sessions != usize::MAX && self.len() >= self.max_sessions {
            self.purge_expired();
            if self.len() >= self.max_sessions {
                return Err(Error::store(format!(
                    "the memory store holds its maximum of {} sessions",
                    self.max_sessions
                )));
            }
        }
        let mut shard = self.shard(id);
        match shard.get(id) {
            Some(existing) if !existing.is_expired(now()) => Ok(false),
            _ => {
                shard.insert(id.clone(), record.clone());
                Ok(true)
            }
        }
    }

    async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
        let mut shard = self.shard(id);
        match shard.get_mut(id) {
            Some(record) if !record.is_expired(now()) => {
                changes.apply_to(record);
                Ok(true)
            }
            Some(_) => {
                shard.remove(id);
                Ok(false)
            }
            None => Ok(false),
        }
    }

    async fn delete(&self, id: &SessionId) -> Result<(), Error> {
        self.shard(id).remove(id);
        Ok(())
    }

    async fn delete_expired(&self) -> Result<u64, Error> {
        Ok(self.purge_expired())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(expires_at: u64) -> Record {
        Record::new(
            json!({"a": 1}).as_object().unwrap().clone(),
            false,
            now(),
            expires_at,
        )
    }

    #[tokio::test]
    async fn max_sessions_bounds_memory() {
        let store = MemoryStore::new().max_sessions(3);
        for _ in 0..2 {
            assert!(
                store
                    .create(&SessionId::generate(), &record(now() + 60))
                    .await
                    .unwrap()
            );
        }
        // An expired record is purged to make room.
        assert!(
            store
                .create(&SessionId::generate(), &record(now() - 1))
                .await
                .unwrap()
        );
        assert!(
            store
                .create(&SessionId::generate(), &record(now() + 60))
                .await
                .unwrap()
        );
        assert_eq!(store.len(), 3);
        let error = store
            .create(&SessionId::generate(), &record(now() + 60))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), crate::ErrorKind::Store);
        assert_eq!(store.len(), 3);
    }

    #[tokio::test]
    async fn expired_records_are_evicted_on_access_and_by_the_sweep() {
        let store = MemoryStore::new();
        let (a, b) = (SessionId::generate(), SessionId::generate());
        store.create(&a, &record(now() - 1)).await.unwrap();
        store.create(&b, &record(now() - 1)).await.unwrap();
        assert_eq!(store.len(), 2);
        assert_eq!(store.load(&a).await.unwrap(), None);
        assert_eq!(store.len(), 1, "evicted on access");
        assert_eq!(store.delete_expired().await.unwrap(), 1);
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn spawn_cleanup_sweeps_on_its_interval() {
        let store = std::sync::Arc::new(MemoryStore::new());
        store
            .create(&SessionId::generate(), &record(now() - 1))
            .await
            .unwrap();
        let task = super::super::spawn_cleanup(store.clone(), std::time::Duration::from_millis(20));
        for _ in 0..100 {
            if store.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(store.is_empty(), "the sweep removed the expired record");
        task.abort();
    }
}
