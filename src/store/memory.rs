//! `MemoryStore`: sessions in this process's memory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use super::{Changes, OWNER_KEY, Record, SessionId, SessionStore};
use crate::error::Error;

/// Shards of the map: requests for different sessions rarely wait on one
/// another's lock.
const SHARDS: usize = 16;

/// Sessions kept by default: room for every user of a busy single-process
/// app, in about 90 MB at the ~870 bytes a small session costs
/// (docs/benchmarks.md), where no bound let a flood of new sessions grow
/// the process until it ran out of memory.
const DEFAULT_MAX_SESSIONS: usize = 100_000;

/// Sessions in memory: the embedded default. Fast (no I/O; a parse of the
/// record's compact JSON per load) and gone when the process stops; one
/// process only.
///
/// - `apply` is atomic per key: it runs under the lock of the session's
///   shard, so concurrent requests never lose each other's writes.
/// - Expired records are never returned, and are removed when touched
///   and by [`delete_expired`](SessionStore::delete_expired) (run it with
///   [`spawn_cleanup`](super::spawn_cleanup)).
/// - Memory is bounded: at most [`max_sessions`](Self::max_sessions)
///   sessions (100,000 by default). A full store makes room for a new
///   session by evicting one, in the new session's shard, in constant
///   time, never by a scan:
///   1. while sessions never loaded again since their creation hold a
///      fifth of the shard or more, the oldest of them: a browser that
///      came back has loaded its session, a flood of requests that start
///      sessions and drop the cookie has not, so such a flood only pushes
///      out its own kind, and a new session (a login waiting for its
///      redirect) outlives the next fifth-of-a-shard new sessions;
///   2. otherwise the least recently used of the rest (a clock over the
///      order they were first loaded); an expired record the clock meets
///      goes whether used or not.
///
///   New sessions never fail. A flood that also sends every cookie back
///   once (two requests per session) competes with real users in step
///   2 and logs out those least recently seen: bound it at the proxy.
///   Each session costs its JSON data plus about 150 bytes of
///   bookkeeping.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    /// The owner index: each owner's session ids (their bytes). Entries
    /// are added and removed under the session's shard lock (then this
    /// one), so a write and its entry are one step; a record that leaves
    /// its shard for any reason (taken, deleted, evicted, found expired,
    /// swept) takes its entry with it before the shard's lock is released,
    /// so the index never holds more entries than the store holds records.
    owners: Mutex<HashMap<Box<str>, HashSet<IdBytes>>>,
    /// Leases of sessions ([`SessionStore::lease`]): holder and until when.
    /// An entry goes on release; one its request never released is swept
    /// once expired, whenever the map has grown past [`LEASE_SWEEP`].
    leases: Mutex<HashMap<IdBytes, (Box<str>, std::time::Instant)>>,
    hasher: RandomState,
    max_sessions: usize,
}

/// How many leases the map holds before a new lease sweeps expired ones.
const LEASE_SWEEP: usize = 1024;

/// Half of a session id's 32 bytes.
type Half = [u8; 16];

/// A session id's 32 bytes.
type IdBytes = [u8; 32];

/// The bytes of the id split into `head` and `tail`.
fn join(head: &Half, tail: &Half) -> IdBytes {
    let mut id = [0u8; 32];
    id[..16].copy_from_slice(head);
    id[16..].copy_from_slice(tail);
    id
}

/// A session id, split: the first half keys the map and the creation order
/// (so the order costs 16 bytes a session, not a copy of the id), the
/// second is kept in the slot and checked on every lookup, so a record is
/// only ever found by its whole id.
fn split(id: &SessionId) -> (Half, Half) {
    let bytes = id.to_bytes();
    let (head, tail) = bytes.split_at(16);
    (
        head.try_into().expect("16 bytes"),
        tail.try_into().expect("16 bytes"),
    )
}

/// One shard's records, in two queues: sessions not yet loaded again
/// since their creation, and the rest.
#[derive(Default)]
struct Shard {
    records: HashMap<Half, Slot>,
    /// Keys in creation order, oldest first: evicted first while they
    /// were never loaded again. Keys loaded since (now in `order`) or
    /// removed meanwhile are skipped when met, or compacted away.
    fresh: VecDeque<Half>,
    /// Keys of sessions loaded at least once, in the order they first
    /// were; the clock's hand is the front.
    order: VecDeque<Half>,
    /// How many records are proven (loaded at least once).
    proven: usize,
    /// The owner index entries of records that left the shard (removed,
    /// evicted, replaced) since the store last dropped them: it does so
    /// before it releases the shard's lock.
    unowned: Vec<(String, IdBytes)>,
}

struct Slot {
    tail: Half,
    record: Compact,
    /// Loaded at least once since it was created (its key is in `order`).
    proven: bool,
    /// Used (loaded or changed) since the clock's hand last passed.
    used: bool,
}

impl Slot {
    fn new(tail: Half, record: &Record) -> Self {
        Self {
            tail,
            record: Compact::new(record),
            proven: false,
            used: false,
        }
    }
}

/// A record as the store keeps it: each value as compact JSON text, by key
/// in key order. A small session's parsed map (a B-tree node) costs several
/// hundred bytes, this a few dozen; a load parses the values, a save writes
/// only the values it sets.
struct Compact {
    entries: Vec<(Box<str>, Box<str>)>,
    created_at: u64,
    expires_at: u64,
    permanent: bool,
}

fn json_text(value: &serde_json::Value) -> Box<str> {
    value.to_string().into_boxed_str()
}

impl Compact {
    fn new(record: &Record) -> Self {
        // Sorted for the binary search: a map iterates in key order, unless
        // serde_json's `preserve_order` is on somewhere in the build.
        let mut entries: Vec<(Box<str>, Box<str>)> = Vec::with_capacity(record.data.len());
        entries.extend(
            (record.data.iter()).map(|(key, value)| (key.as_str().into(), json_text(value))),
        );
        entries.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        Self {
            entries,
            created_at: record.created_at,
            expires_at: record.expires_at,
            permanent: record.permanent,
        }
    }

    fn is_expired(&self, now: u64) -> bool {
        self.expires_at <= now
    }

    fn record(&self) -> Result<Record, Error> {
        let data = (self.entries.iter())
            .map(|(key, json)| Ok((key.to_string(), serde_json::from_str(json)?)))
            .collect::<Result<_, serde_json::Error>>()
            .map_err(Error::store)?;
        Ok(Record::new(
            data,
            self.permanent,
            self.created_at,
            self.expires_at,
        ))
    }

    /// [`Changes::apply_to`] on the compact form: cleared, removed, set.
    /// Changes that read the record (expectations, merges) go through
    /// `apply_to` itself on the parsed record, under the shard lock the
    /// caller holds; a conflict leaves the record as it was.
    fn apply(&mut self, changes: &Changes) -> Result<(), Error> {
        if changes.reads_the_record() {
            let mut record = self.record()?;
            changes.apply_to(&mut record)?;
            *self = Self::new(&record);
            return Ok(());
        }
        if changes.cleared {
            self.entries.clear();
        }
        for key in &changes.removed {
            if let Ok(at) = self.find(key) {
                self.entries.remove(at);
            }
        }
        for (key, value) in &changes.set {
            match self.find(key) {
                Ok(at) => self.entries[at].1 = json_text(value),
                Err(at) => self
                    .entries
                    .insert(at, (key.as_str().into(), json_text(value))),
            }
        }
        if let Some(permanent) = changes.permanent {
            self.permanent = permanent;
        }
        self.expires_at = changes.expires_at;
        self.entries.shrink_to_fit();
        Ok(())
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| (**k).cmp(key))
    }

    /// The owner the record holds under [`OWNER_KEY`].
    fn owner(&self) -> Option<String> {
        let at = self.find(OWNER_KEY).ok()?;
        serde_json::from_str(&self.entries[at].1).ok()
    }
}

impl Shard {
    /// The slot of the id split into `head` and `tail`, expired or not.
    fn find(&mut self, head: &Half, tail: &Half) -> Option<&mut Slot> {
        self.records.get_mut(head).filter(|slot| slot.tail == *tail)
    }

    /// The live record of the id split into `head` and `tail`, marked
    /// used and (the first time) proven, out of the fresh queue's reach; an
    /// expired one is removed.
    fn load(&mut self, head: Half, tail: &Half, now: u64) -> Result<Option<Record>, Error> {
        let found = self.records.get_mut(&head);
        let Some(slot) = found.filter(|slot| slot.tail == *tail) else {
            return Ok(None);
        };
        if slot.record.is_expired(now) {
            self.remove(&head);
            return Ok(None);
        }
        slot.used = true;
        if !slot.proven {
            slot.proven = true;
            self.proven += 1;
            self.order.push_back(head);
        }
        slot.record.record().map(Some)
    }

    /// Stores a new session under `head` (replacing an expired record).
    fn insert(&mut self, head: Half, slot: Slot) {
        if let Some(old) = self.records.insert(head, slot) {
            self.proven -= usize::from(old.proven);
            self.unown(&head, &old);
        }
        self.fresh.push_back(head);
    }

    /// Removes the record under `head`.
    fn remove(&mut self, head: &Half) -> Option<Slot> {
        let slot = self.records.remove(head)?;
        self.proven -= usize::from(slot.proven);
        self.unown(head, &slot);
        Some(slot)
    }

    /// Notes the index entry of a record leaving the shard, if it has an
    /// owner.
    fn unown(&mut self, head: &Half, slot: &Slot) {
        if let Some(owner) = slot.record.owner() {
            self.unowned.push((owner, join(head, &slot.tail)));
        }
    }

    /// Evicts records until one more fits under `capacity`. New sessions
    /// never loaded again may hold a fifth of the shard: past that, the
    /// oldest of them goes, so a flood of sessions that never come back
    /// only pushes out its own kind, while a new user's session (a login
    /// waiting for its redirect) outlives the next fifth-of-a-shard new
    /// sessions. Below that, the clock picks among the rest: a record used
    /// since the hand last passed is spared once and goes to the back; the
    /// first one that was not, or that expired, is evicted. Constant time
    /// amortized: a key is met at most once in `fresh`, and spared at most
    /// once per use in `order`.
    fn make_room(&mut self, capacity: usize, now: u64) {
        let fresh_budget = capacity.div_ceil(5);
        while self.records.len() >= capacity {
            let fresh = self.records.len() - self.proven;
            if fresh >= fresh_budget || self.proven == 0 {
                let Some(key) = self.fresh.pop_front() else {
                    return;
                };
                if self.records.get(&key).is_some_and(|slot| !slot.proven) {
                    self.remove(&key);
                }
                continue;
            }
            let Some(key) = self.order.pop_front() else {
                return;
            };
            match self.records.get_mut(&key) {
                // Removed, or a fresh session reusing an expired one's id.
                None => {}
                Some(slot) if !slot.proven => {}
                Some(slot) if slot.used && !slot.record.is_expired(now) => {
                    slot.used = false;
                    self.order.push_back(key);
                }
                Some(_) => {
                    self.remove(&key);
                }
            }
        }
    }

    /// Drops the queues' keys of removed (or, in `fresh`, since loaded)
    /// records once they outnumber the live ones, so that they cannot grow
    /// without bound (constant time amortized).
    fn compact(&mut self) {
        let records = &self.records;
        if self.fresh.len() + self.order.len() > 2 * records.len() + 64 {
            self.fresh
                .retain(|key| records.get(key).is_some_and(|slot| !slot.proven));
            self.order
                .retain(|key| records.get(key).is_some_and(|slot| slot.proven));
        }
    }
}

impl fmt::Debug for MemoryStore {
    // Neither ids nor values: both are secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.len())
            .field("max_sessions", &self.max_sessions)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store keeping at most 100,000 sessions.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            owners: Mutex::default(),
            leases: Mutex::default(),
            hasher: RandomState::new(),
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }

    /// Keeps about `max` sessions (default 100,000), evicting one when a
    /// new one needs room (the order is on [`MemoryStore`]). The bound is
    /// kept per shard, a 16th of `max` each, rounded up: eviction can begin
    /// a little before the total reaches `max`, and the total can exceed
    /// `max` by at most 15 (a `max` below 16 still keeps one session per
    /// shard). `usize::MAX` takes the bound away.
    ///
    /// # Security
    /// Without a bound that fits the machine, anyone can grow the process
    /// until it runs out of memory by sending requests that start sessions.
    ///
    /// # Panics
    /// When `max` is 0.
    #[must_use]
    pub fn max_sessions(mut self, max: usize) -> Self {
        assert!(max > 0, "a memory store needs room for one session");
        self.max_sessions = max;
        self
    }

    /// How many records are held, expired ones not yet removed included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).records.len()).sum()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_index(&self, id: &SessionId) -> usize {
        self.hasher.hash_one(id) as usize % SHARDS
    }

    fn shard(&self, id: &SessionId) -> MutexGuard<'_, Shard> {
        lock(&self.shards[self.shard_index(id)])
    }

    /// Adds `id` to `owner`'s entry; call under the id's shard lock.
    fn index(&self, owner: &str, id: &SessionId) {
        let mut owners = lock(&self.owners);
        match owners.get_mut(owner) {
            Some(ids) => {
                ids.insert(id.to_bytes());
            }
            None => {
                owners.insert(owner.into(), HashSet::from([id.to_bytes()]));
            }
        }
    }

    /// Removes `id` from `owner`'s entry; call under the id's shard lock.
    fn unindex(&self, owner: &str, id: &IdBytes) {
        unindex_in(&mut lock(&self.owners), owner, id);
    }

    /// Drops the index entries of the records that left `shard`; call
    /// before its lock is released.
    fn settle(&self, shard: &mut Shard) {
        if shard.unowned.is_empty() {
            return;
        }
        let mut owners = lock(&self.owners);
        for (owner, id) in shard.unowned.drain(..) {
            unindex_in(&mut owners, &owner, &id);
        }
    }

    /// The live records of `ids` that `owner` holds; the others' entries
    /// go, each under its shard's lock (a write that re-adds one cannot
    /// slip between the check and the removal).
    fn verify(
        &self,
        owner: &str,
        ids: Vec<IdBytes>,
        now: u64,
    ) -> Result<Vec<(SessionId, Record)>, Error> {
        let mut live = Vec::with_capacity(ids.len());
        for bytes in ids {
            let id = SessionId::from_bytes(bytes);
            let (head, tail) = split(&id);
            let mut shard = self.shard(&id);
            let found = shard.find(&head, &tail);
            match found {
                // Expired at this listing's time: the record goes with its
                // entry, as a load would take it. Dropping only the entry
                // left the record to a write that started earlier (its
                // `now` before the expiry), which renewed it unlisted.
                Some(slot) if slot.record.is_expired(now) => {
                    shard.remove(&head);
                    self.settle(&mut shard);
                }
                Some(slot) if slot.record.owner().as_deref() == Some(owner) => {
                    let record = slot.record.record()?;
                    live.push((id, record));
                }
                _ => self.unindex(owner, &bytes),
            }
        }
        Ok(live)
    }

    fn purge_expired(&self, now: u64) -> u64 {
        let mut removed = 0;
        for shard in &*self.shards {
            let mut shard = lock(shard);
            let expired: Vec<Half> = (shard.records.iter())
                .filter(|(_, slot)| slot.record.is_expired(now))
                .map(|(head, _)| *head)
                .collect();
            for head in &expired {
                shard.remove(head);
            }
            removed += expired.len() as u64;
            self.settle(&mut shard);
        }
        removed
    }
}

/// Removes `id` from `owner`'s entry of the index `owners`, and the entry
/// with its last id.
fn unindex_in(owners: &mut HashMap<Box<str>, HashSet<IdBytes>>, owner: &str, id: &IdBytes) {
    if let Some(ids) = owners.get_mut(owner) {
        ids.remove(id);
        if ids.is_empty() {
            owners.remove(owner);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics under these locks; recover rather than poison the store.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let (head, tail) = split(id);
        let mut shard = self.shard(id);
        let loaded = shard.load(head, &tail, now);
        self.settle(&mut shard);
        loaded
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error> {
        let ((head, tail), now) = (split(id), record.created_at);
        let capacity = self.max_sessions.div_ceil(SHARDS);
        let mut shard = self.shard(id);
        match shard.records.get(&head) {
            // Taken: by this id, or (one chance in 2^128 for random ids) by
            // another sharing its first half; the layer then draws anew.
            Some(slot) if !slot.record.is_expired(now) => return Ok(false),
            // An expired record's id is free again; the new session starts
            // fresh (a key of the old one left in `order` is skipped).
            Some(_) => shard.insert(head, Slot::new(tail, record)),
            None => {
                shard.make_room(capacity, now);
                shard.compact();
                shard.insert(head, Slot::new(tail, record));
            }
        }
        // The entries of the records that made room (or that this one
        // replaced) go first: a replaced record may be this id's, of this
        // owner.
        self.settle(&mut shard);
        if let Some(owner) = record.owner() {
            self.index(owner, id);
        }
        Ok(true)
    }

    async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
        let (head, tail) = split(id);
        let mut shard = self.shard(id);
        match shard.find(&head, &tail) {
            Some(slot) if !slot.record.is_expired(changes.now) => {
                let change = changes.owner_change();
                let old = change.and_then(|_| slot.record.owner());
                slot.record.apply(changes)?;
                slot.used = true;
                if let Some(new) = change
                    && old.as_deref() != new
                {
                    if let Some(old) = old {
                        self.unindex(&old, &id.to_bytes());
                    }
                    if let Some(new) = new {
                        self.index(new, id);
                    }
                }
                Ok(true)
            }
            Some(_) => {
                shard.remove(&head);
                self.settle(&mut shard);
                Ok(false)
            }
            None => Ok(false),
        }
    }

    async fn lease(
        &self,
        id: &SessionId,
        holder: &str,
        hold: std::time::Duration,
    ) -> Result<bool, Error> {
        let now = std::time::Instant::now();
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        if leases.len() >= LEASE_SWEEP {
            leases.retain(|_, (_, until)| *until > now);
        }
        let entry = leases.entry(id.to_bytes());
        match entry {
            std::collections::hash_map::Entry::Occupied(mut held) => {
                if held.get().1 > now && *held.get().0 != *holder {
                    return Ok(false);
                }
                held.insert((holder.into(), now + hold));
            }
            std::collections::hash_map::Entry::Vacant(free) => {
                free.insert((holder.into(), now + hold));
            }
        }
        Ok(true)
    }

    async fn release(&self, id: &SessionId, holder: &str) -> Result<(), Error> {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        let key = id.to_bytes();
        if leases.get(&key).is_some_and(|(held, _)| **held == *holder) {
            leases.remove(&key);
        }
        Ok(())
    }

    async fn delete(&self, id: &SessionId) -> Result<(), Error> {
        let (head, tail) = split(id);
        let mut shard = self.shard(id);
        if shard.find(&head, &tail).is_some() {
            shard.remove(&head);
            self.settle(&mut shard);
        }
        Ok(())
    }

    /// Under the shard's lock, as `apply` is: atomic with it.
    async fn take(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let (head, tail) = split(id);
        let mut shard = self.shard(id);
        if shard.find(&head, &tail).is_none() {
            return Ok(None);
        }
        let slot = shard.remove(&head).expect("found just now");
        self.settle(&mut shard);
        if slot.record.is_expired(now) {
            return Ok(None);
        }
        slot.record.record().map(Some)
    }

    async fn delete_expired(&self, now: u64) -> Result<u64, Error> {
        Ok(self.purge_expired(now))
    }

    /// From the index, each entry checked under its session's lock.
    async fn owned(&self, owner: &str, now: u64) -> Result<Vec<(SessionId, Record)>, Error> {
        let ids = (lock(&self.owners).get(owner))
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
        self.verify(owner, ids, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::now;
    use serde_json::json;

    fn record(expires_at: u64) -> Record {
        Record::new(
            json!({"a": 1}).as_object().unwrap().clone(),
            false,
            now(),
            expires_at,
        )
    }

    fn live() -> Record {
        record(now() + 60)
    }

    /// `count` fresh ids that fall in shard 0, to watch one shard at work.
    fn ids_in_one_shard(store: &MemoryStore, count: usize) -> Vec<SessionId> {
        std::iter::repeat_with(SessionId::generate)
            .filter(|id| store.shard_index(id) == 0)
            .take(count)
            .collect()
    }

    #[tokio::test]
    async fn a_flood_evicts_the_oldest_sessions_and_every_new_one_is_kept() {
        // 4 sessions a shard.
        let store = MemoryStore::new().max_sessions(4 * SHARDS);
        let ids: Vec<SessionId> = (0..40 * SHARDS).map(|_| SessionId::generate()).collect();
        for id in &ids {
            assert!(
                store.create(id, &live()).await.unwrap(),
                "a new session is kept"
            );
        }
        assert_eq!(store.len(), 4 * SHARDS, "the count stays at the bound");
        // Eviction is per shard: what is left of each is its 4 newest.
        let mut newest: Vec<Vec<&SessionId>> = vec![Vec::new(); SHARDS];
        for id in ids.iter().rev() {
            let shard = &mut newest[store.shard_index(id)];
            if shard.len() < 4 {
                shard.push(id);
            }
        }
        for id in &ids {
            let kept = newest[store.shard_index(id)].contains(&id);
            assert_eq!(store.load(id, now()).await.unwrap().is_some(), kept);
        }
    }

    #[tokio::test]
    async fn a_session_in_use_outlives_older_idle_ones() {
        let store = MemoryStore::new().max_sessions(4 * SHARDS);
        let ids = ids_in_one_shard(&store, 7);
        for id in &ids[..4] {
            store.create(id, &live()).await.unwrap();
        }
        // The oldest one is used; three more sessions then push the three
        // idle ones out.
        assert!(store.load(&ids[0], now()).await.unwrap().is_some());
        for id in &ids[4..] {
            assert!(store.create(id, &live()).await.unwrap());
        }
        let mut kept = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if store.load(id, now()).await.unwrap().is_some() {
                kept.push(i);
            }
        }
        assert_eq!(kept, [0, 4, 5, 6]);
    }

    /// A flood of sessions that are created and never come back (requests
    /// that drop the cookie) pushes out only its own kind: a user whose
    /// browser came back once keeps the session, however long the flood.
    #[tokio::test]
    async fn a_flood_of_sessions_never_loaded_again_logs_nobody_out() {
        let store = MemoryStore::new().max_sessions(4 * SHARDS);
        let ann = SessionId::generate();
        store.create(&ann, &live()).await.unwrap();
        assert!(
            store.load(&ann, now()).await.unwrap().is_some(),
            "ann came back"
        );
        for _ in 0..200 * SHARDS {
            assert!(store.create(&SessionId::generate(), &live()).await.unwrap());
        }
        assert!(
            store.load(&ann, now()).await.unwrap().is_some(),
            "ann is still in"
        );
        assert!(store.len() <= 4 * SHARDS);
    }

    /// A store full of users who came back still keeps a new session (a
    /// login waiting for its redirect) while the next ones arrive.
    #[tokio::test]
    async fn a_new_session_outlives_the_next_ones_in_a_full_store() {
        let store = MemoryStore::new().max_sessions(10 * SHARDS);
        let users = ids_in_one_shard(&store, 12);
        for id in &users[..10] {
            store.create(id, &live()).await.unwrap();
            assert!(store.load(id, now()).await.unwrap().is_some());
        }
        // The shard is full of returning users; a login comes in, then
        // one more new session.
        let (login, next) = (&users[10], &users[11]);
        assert!(store.create(login, &live()).await.unwrap());
        assert!(store.create(next, &live()).await.unwrap());
        assert!(
            store.load(login, now()).await.unwrap().is_some(),
            "the login survived the next new session"
        );
        assert_eq!(store.len(), 10, "the shard kept its bound");
    }

    #[tokio::test]
    async fn the_default_store_is_bounded() {
        let store = MemoryStore::new();
        for _ in 0..DEFAULT_MAX_SESSIONS + 1000 {
            assert!(store.create(&SessionId::generate(), &live()).await.unwrap());
        }
        assert!(store.len() <= DEFAULT_MAX_SESSIONS, "{}", store.len());
    }

    #[tokio::test]
    async fn expired_records_are_evicted_on_access_and_by_the_sweep() {
        let store = MemoryStore::new();
        let (a, b) = (SessionId::generate(), SessionId::generate());
        store.create(&a, &record(now() - 1)).await.unwrap();
        store.create(&b, &record(now() - 1)).await.unwrap();
        assert_eq!(store.len(), 2);
        assert_eq!(store.load(&a, now()).await.unwrap(), None);
        assert_eq!(store.len(), 1, "evicted on access");
        assert_eq!(store.delete_expired(now()).await.unwrap(), 1);
        assert!(store.is_empty());
    }

    fn owned_by(owner: &str, expires_at: u64) -> Record {
        let mut record = record(expires_at);
        record.data.insert(OWNER_KEY.into(), json!(owner));
        record
    }

    /// How many ids the owner index holds, and for how many owners.
    fn indexed(store: &MemoryStore) -> (usize, usize) {
        let owners = lock(&store.owners);
        (owners.values().map(|ids| ids.len()).sum(), owners.len())
    }

    /// A flood of logins (sessions created with an owner, the cookie
    /// dropped) on a store nobody sweeps: the sessions evicted to make room
    /// leave the owner index with their records, so it stays within the
    /// store's bound instead of growing with every login (each add used to
    /// scan the owner's whole list, under a lock every create takes).
    #[tokio::test]
    async fn evicted_sessions_leave_the_owner_index() {
        let store = MemoryStore::new().max_sessions(4 * SHARDS);
        for i in 0..50 * SHARDS {
            // One owner logging in again and again, and many owners once.
            let owner = if i % 2 == 0 {
                "ann".to_owned()
            } else {
                format!("user {i}")
            };
            assert!(
                store
                    .create(&SessionId::generate(), &owned_by(&owner, now() + 60))
                    .await
                    .unwrap()
            );
        }
        let (ids, owners) = indexed(&store);
        assert!(
            ids <= store.len(),
            "{ids} index entries for {} sessions",
            store.len()
        );
        assert!(
            owners <= store.len(),
            "{owners} owners for {} sessions",
            store.len()
        );
    }

    /// Records dropped when found expired (by a load, an apply, a create
    /// reusing the id) or by the sweep leave the index with them.
    #[tokio::test]
    async fn expired_sessions_leave_the_owner_index() {
        let store = MemoryStore::new();
        let (a, b, c) = (
            SessionId::generate(),
            SessionId::generate(),
            SessionId::generate(),
        );
        for id in [&a, &b, &c] {
            store.create(id, &owned_by("ann", now() - 1)).await.unwrap();
        }
        assert_eq!(indexed(&store), (3, 1));
        assert_eq!(store.load(&a, now()).await.unwrap(), None);
        assert!(
            !store
                .apply(&b, &Changes::expiry(now(), now() + 60))
                .await
                .unwrap()
        );
        assert_eq!(indexed(&store), (1, 1), "dropped on access");
        assert_eq!(store.delete_expired(now()).await.unwrap(), 1);
        assert_eq!(indexed(&store), (0, 0), "and by the sweep");
        // A new owner on an id whose expired record named another.
        store.create(&a, &owned_by("ann", now() - 1)).await.unwrap();
        store
            .create(&a, &owned_by("bob", now() + 60))
            .await
            .unwrap();
        assert_eq!(indexed(&store), (1, 1), "only bob's entry");
        assert_eq!(store.owned("bob", now()).await.unwrap().len(), 1);
    }

    /// A listing that finds a record expired at its time, racing a write
    /// that began before the expiry (its `now` earlier): the write must not
    /// renew a session the index no longer lists, which sign out
    /// everywhere would then miss.
    #[tokio::test]
    async fn a_listing_never_leaves_a_renewable_record_unlisted() {
        let store = MemoryStore::new();
        let (id, t) = (SessionId::generate(), now());
        store.create(&id, &owned_by("ann", t + 10)).await.unwrap();
        assert!(store.owned("ann", t + 10).await.unwrap().is_empty());
        let renewed = store
            .apply(&id, &Changes::expiry(t + 9, t + 60))
            .await
            .unwrap();
        let listed = store.owned("ann", t + 10).await.unwrap();
        assert_eq!(
            listed.len(),
            usize::from(renewed),
            "a session renewed after the listing is listed (renewed: {renewed})"
        );
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
