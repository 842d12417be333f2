//! `Session`: the change-tracking map handlers read and write, and the
//! per-request handle that loads it lazily.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::data::SessionData;
use crate::error::{Error, ErrorKind};
use crate::store::{Changes, Merge, OWNER_KEY, OWNER_META_KEY};

/// The session of the current request.
///
/// Values go in and out through serde (as JSON), so a handler always works
/// on a copy: changing a value means writing it back with
/// [`insert`](Self::insert) or [`update`](Self::update), and every write is
/// seen. Every method is synchronous and holds an internal lock only for
/// its own duration, never across an `.await`.
///
/// `Session` is a cheap handle: clones share the same data. Changes made
/// after the response has left the layer (from a spawned task, say) are not
/// saved.
///
/// Every read marks the session *accessed* (the response gets
/// `Vary: Cookie`); every write that changes something marks it *modified*
/// (the response carries the new cookie).
///
/// # Concurrent requests
/// With a store, a key this request read (through [`get`](Self::get),
/// [`get_value`](Self::get_value), [`update`](Self::update),
/// [`contains_key`](Self::contains_key), [`remove`](Self::remove), or
/// [`to_map`](Self::to_map) for every key) and then writes is saved only if
/// no other request changed it meanwhile; otherwise nothing of this
/// request is saved and the response is a 409
/// ([`ErrorKind::Conflict`]), so the client can retry. A key written
/// without being read is saved as it comes (the last write wins).
/// [`increment`](Self::increment), [`push`](Self::push),
/// [`map_insert`](Self::map_insert) and [`map_remove`](Self::map_remove)
/// are made by the store on what it holds and never conflict. Client-side
/// sessions cannot tell: the browser keeps the last cookie it receives.
#[derive(Clone)]
pub struct Session {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) data: SessionData,
    pub(crate) permanent: bool,
    pub(crate) accessed: bool,
    pub(crate) modified: bool,
    /// Per-key changes, for stores (see `Changes`).
    pub(crate) changed: BTreeSet<String>,
    pub(crate) removed: BTreeSet<String>,
    pub(crate) cleared: bool,
    pub(crate) permanent_changed: bool,
    /// `cycle_id` was called.
    pub(crate) cycle: bool,
    /// `flush` was called.
    pub(crate) flushed: bool,
    /// Whether per-key changes are kept (server-side sessions only).
    pub(crate) track_changes: bool,
    /// The keys handlers read (server-side only).
    pub(crate) reads: Reads,
    /// What each key read and then changed held when it was first changed
    /// (`None`: absent): the store applies the changes only if it still
    /// does.
    pub(crate) expected: BTreeMap<String, Option<Value>>,
    /// Merge operations, in order, for the store to make on what it holds.
    pub(crate) merges: Vec<(String, Merge)>,
    /// What each merged key held before this request's first merge of it
    /// (`None`: absent): a read after the merge sees that value merged, so
    /// a write made from it expects that value, not the merged one.
    pub(crate) merged_from: BTreeMap<String, Option<Value>>,
    /// Server-side: the record's id, and the keys and cookie name that
    /// make its handle; `None` once `cycle_id` or `flush` ends that id.
    pub(crate) stored_as: Option<(
        crate::id::SessionId,
        crate::key::Keyring,
        std::sync::Arc<str>,
    )>,
}

/// The keys a request read, for the expectations of the keys it then
/// writes. Kept as keyed 64-bit hashes, the first eight inline, so that
/// reading costs no allocation; a handler that reads thousands of keys
/// looks each up in a set, not a list.
#[derive(Debug, Default)]
pub(crate) struct Reads {
    inline: [u64; 8],
    len: usize,
    spill: std::collections::HashSet<u64>,
    /// The whole session was read (`to_map`).
    all: bool,
}

impl Reads {
    fn mark(&mut self, key: &str) {
        let hash = read_hash(key);
        if self.has(hash) {
            return;
        }
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                *slot = hash;
                self.len += 1;
            }
            None => {
                self.spill.insert(hash);
            }
        }
    }

    fn has(&self, hash: u64) -> bool {
        self.inline[..self.len].contains(&hash) || self.spill.contains(&hash)
    }

    fn contains(&self, key: &str) -> bool {
        self.all || ((self.len > 0) && self.has(read_hash(key)))
    }
}

/// A key's hash under a key drawn at random once per process: two keys of
/// one request share a hash once in 2^64 pairs, and no one can choose keys
/// that do (a shared hash would make a blind write carry an expectation).
fn read_hash(key: &str) -> u64 {
    static STATE: OnceLock<RandomState> = OnceLock::new();
    STATE.get_or_init(RandomState::new).hash_one(key)
}

impl State {
    fn set(&mut self, key: String, value: Value) -> Option<Value> {
        self.modified = true;
        if self.track_changes {
            self.before_change(&key);
            self.merges.retain(|(k, _)| *k != key);
            self.removed.remove(&key);
            self.changed.insert(key.clone());
        }
        self.data.insert(key, value)
    }

    fn unset(&mut self, key: &str) -> Option<Value> {
        if self.track_changes && self.data.contains_key(key) {
            self.before_change(key);
            self.merges.retain(|(k, _)| k != key);
        }
        let removed = self.data.remove(key)?;
        self.modified = true;
        if self.track_changes {
            self.changed.remove(key);
            self.removed.insert(key.to_owned());
        }
        Some(removed)
    }

    /// The first change of `key` in this request: if a handler read it,
    /// what it holds now is what was read, and the store must still hold
    /// it for the change to apply.
    fn before_change(&mut self, key: &str) {
        let first = !self.cleared
            && !self.changed.contains(key)
            && !self.removed.contains(key)
            && !self.expected.contains_key(key);
        if first && self.reads.contains(key) {
            // A read after this request's own merges saw them made on what
            // was loaded: what was loaded is what the store must still hold.
            let read = match self.merged_from.get(key) {
                Some(loaded) => loaded.clone(),
                None => self.data.get(key).cloned(),
            };
            self.expected.insert(key.to_owned(), read);
        }
    }

    /// Makes `merge` on the value under `key` here, and (server-side)
    /// queues it for the store, which makes it again on what it holds.
    fn merge(&mut self, key: &str, merge: Merge) -> Result<(), Error> {
        if key.starts_with(RESERVED) {
            return Err(Error::with_message(
                ErrorKind::Serialize,
                "merge operations on the layer's reserved keys are refused",
            ));
        }
        if merge.misfit(self.data.get(key)).is_some() {
            let found = self.data.get(key).map_or("nothing", json_type);
            return Err(Error::with_message(
                ErrorKind::Deserialize,
                format!("the value under {key:?} is {found}, which the merge does not fit"),
            ));
        }
        // Client-side, after a clear, or on a key this request set or
        // removed: the request's own value is the whole truth, an ordinary
        // write (of which nothing is expected: see `before_change`).
        let queued = self.track_changes
            && !self.cleared
            && !self.changed.contains(key)
            && !self.removed.contains(key);
        if queued {
            self.before_change(key);
            if !self.merged_from.contains_key(key) {
                let loaded = self.data.get(key).cloned();
                self.merged_from.insert(key.to_owned(), loaded);
            }
        }
        // Made in place, so that a thousand pushes onto one list do not
        // copy it a thousand times.
        let mut value = self.data.remove(key);
        let made = merge.make(&mut value);
        if let Some(value) = value {
            self.data.insert(key.to_owned(), value);
        }
        made?;
        if queued {
            // Even a member removed from a map this request found absent:
            // another request may have made the map meanwhile.
            self.merges.push((key.to_owned(), merge));
            self.modified = true;
        } else if self.data.contains_key(key) {
            self.modified = true;
            if self.track_changes {
                self.removed.remove(key);
                self.changed.insert(key.to_owned());
            }
        }
        Ok(())
    }

    fn clear(&mut self) {
        self.data.clear();
        self.changed.clear();
        self.removed.clear();
        self.merges.clear();
        self.merged_from.clear();
        self.expected.clear();
        self.cleared = true;
        if self.permanent {
            self.permanent = false;
            self.permanent_changed = true;
        }
        self.modified = true;
    }

    /// The request's changes, for [`SessionStore::apply`](crate::store::SessionStore::apply).
    pub(crate) fn changes(&self, now: u64, expires_at: u64) -> Changes {
        let mut changes = Changes::expiry(now, expires_at);
        changes.cleared = self.cleared;
        changes.removed = self.removed.iter().cloned().collect();
        changes.set = self
            .changed
            .iter()
            .filter_map(|key| Some((key.clone(), self.data.get(key)?.clone())))
            .collect();
        if !self.expected.is_empty() {
            changes.expected = (self.expected.iter())
                .filter(|(key, _)| self.changed.contains(*key) || self.removed.contains(*key))
                .map(|(key, read)| (key.clone(), read.clone()))
                .collect();
        }
        changes.merges.clone_from(&self.merges);
        changes.permanent = self.permanent_changed.then_some(self.permanent);
        changes
    }

    /// Nothing worth a cookie: no data and not permanent (a permanent flag
    /// alone is kept, as Flask keeps a session holding only `_permanent`).
    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty() && !self.permanent
    }
}

impl Session {
    pub(crate) fn from_state(state: State) -> Self {
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code of ours panics under the lock; a user's code run under it
        // might (`Deserialize` in `get`, the closure and `Serialize` in
        // `update`). The data is still consistent then: reads do not mutate
        // it, and `update` writes only after all of those returned.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        state.accessed = true;
        state
    }

    /// [`read`](Self::read), remembering that a handler read `key`: a write
    /// of it later in the request then carries what was read.
    fn read_key(&self, key: &str) -> MutexGuard<'_, State> {
        let mut state = self.read();
        if state.track_changes {
            state.reads.mark(key);
        }
        state
    }

    /// The value under `key`, deserialized as `T`.
    ///
    /// # Errors
    /// [`ErrorKind::Deserialize`] when the stored value is not a `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        self.read_key(key)
            .data
            .get(key)
            .map(|value| T::deserialize(value).map_err(|_| mismatch::<T>(key, value)))
            .transpose()
    }

    /// The value under `key` as `T`, or `None` when there is none *or it
    /// does not deserialize as `T`*, with a `tracing` warning that names
    /// the key and the types, never the value.
    ///
    /// For values whose shape may change between deploys (a cart type
    /// gains a field): an old session then degrades to "cart emptied"
    /// rather than an error page, and the next write replaces the old
    /// value. Use [`get`](Self::get) where a mismatch must not pass
    /// unnoticed.
    ///
    /// ```
    /// # fn handler(session: session_layer::Session) -> Result<(), session_layer::Error> {
    /// #[derive(serde::Serialize, serde::Deserialize, Default)]
    /// struct Cart { items: Vec<u32>, coupon: Option<String> }
    /// let mut cart: Cart = session.get_lenient("cart").unwrap_or_default();
    /// cart.items.push(7);
    /// session.insert("cart", cart)?;
    /// # Ok(()) }
    /// ```
    pub fn get_lenient<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        match self.get(key) {
            Ok(value) => value,
            Err(error) => {
                tracing::warn!(%error, "session value of an older shape read as absent");
                None
            }
        }
    }

    /// The raw JSON value under `key`.
    pub fn get_value(&self, key: &str) -> Option<Value> {
        self.read_key(key).data.get(key).cloned()
    }

    /// Stores `value` under `key`. Writing a value equal to the one already
    /// stored changes nothing and does not mark the session modified.
    ///
    /// # Errors
    /// [`ErrorKind::Serialize`] when `value` cannot be represented as JSON
    /// (a map with non-string keys, say); the session is then unchanged.
    pub fn insert<T: Serialize>(&self, key: impl Into<String>, value: T) -> Result<(), Error> {
        // Serialize before taking the lock: it runs the caller's code.
        let value =
            serde_json::to_value(value).map_err(|e| Error::with_source(ErrorKind::Serialize, e))?;
        self.insert_value(key, value);
        Ok(())
    }

    /// Stores a raw JSON value under `key`, returning the previous one.
    /// Unless this request read the key before, it is a blind write (the
    /// value returned is this request's own, not a read that the store
    /// checks): the last such write wins.
    pub fn insert_value(&self, key: impl Into<String>, value: Value) -> Option<Value> {
        let key = key.into();
        let mut state = self.read();
        if state.data.get(&key) == Some(&value) {
            return Some(value);
        }
        state.set(key, value)
    }

    /// Reads the value under `key` as `T`, passes it to `f` and stores what
    /// `f` returns, under one lock, so code sharing this request's session
    /// (two extractors, a spawned task) cannot interleave. Returns the
    /// stored value.
    ///
    /// The lock is this request's. Two *requests* of one user that update
    /// the same key on a server-side store each start from the value they
    /// loaded; the first save wins and the other answers 409
    /// ([`ErrorKind::Conflict`]), saving nothing, so the client can retry.
    /// For counters, lists and maps, [`increment`](Self::increment),
    /// [`push`](Self::push), [`map_insert`](Self::map_insert) and
    /// [`map_remove`](Self::map_remove) never conflict. (Client-side
    /// sessions cannot tell: the browser keeps the last cookie.)
    ///
    /// ```
    /// # fn handler(session: session_layer::Session) -> Result<(), session_layer::Error> {
    /// let visits = session.update("visits", |n: Option<u64>| n.unwrap_or(0) + 1)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Deserialize`] when the stored value is not a `T`,
    /// [`ErrorKind::Serialize`] when the new one is not JSON; the session is
    /// unchanged then.
    pub fn update<T, F>(&self, key: &str, f: F) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(Option<T>) -> T,
    {
        let mut state = self.read_key(key);
        let old = state
            .data
            .get(key)
            .map(|value| T::deserialize(value).map_err(|_| mismatch::<T>(key, value)))
            .transpose()?;
        let new = f(old);
        let value =
            serde_json::to_value(&new).map_err(|e| Error::with_source(ErrorKind::Serialize, e))?;
        if state.data.get(key) != Some(&value) {
            state.set(key.to_owned(), value);
        }
        Ok(new)
    }

    /// Adds `by` to the integer under `key` (an absent key counts as 0) and
    /// returns the sum, as this request sees it.
    ///
    /// A merge operation: on a server-side store, the store adds `by` to
    /// the number it holds when it saves the session, so concurrent
    /// requests adding to one key all count and none conflicts (the stored
    /// sum then includes theirs). Client-side, it is an ordinary write.
    ///
    /// ```
    /// # fn handler(session: session_layer::Session) -> Result<(), session_layer::Error> {
    /// let views = session.increment("views", 1)?;
    /// # let _ = views; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Deserialize`] when the value under `key` is not an
    /// integer, or the sum leaves `i64`; the session is unchanged then. On
    /// saving, a store that finds something else than an integer under the
    /// key (another request replaced it) answers [`ErrorKind::Conflict`].
    pub fn increment(&self, key: &str, by: i64) -> Result<i64, Error> {
        let mut state = self.read();
        state.merge(key, Merge::Add(by))?;
        Ok(state
            .data
            .get(key)
            .and_then(Value::as_i64)
            .unwrap_or_default())
    }

    /// Appends `item` to the list under `key` (an absent key counts as an
    /// empty list): "add to cart".
    ///
    /// A merge operation: on a server-side store, the store appends to the
    /// list it holds when it saves the session, so twenty concurrent
    /// requests appending to one list keep twenty items and none conflicts.
    /// [`get`](Self::get) shows the list as this request sees it.
    /// Client-side, it is an ordinary write.
    ///
    /// ```
    /// # fn handler(session: session_layer::Session) -> Result<(), session_layer::Error> {
    /// session.push("cart", "sku-42")?;
    /// let cart: Vec<String> = session.get("cart")?.unwrap_or_default();
    /// # let _ = cart; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Serialize`] when `item` is not JSON,
    /// [`ErrorKind::Deserialize`] when the value under `key` is not a list;
    /// the session is unchanged then. On saving, a store that finds
    /// something else than a list under the key answers
    /// [`ErrorKind::Conflict`].
    pub fn push<T: Serialize>(&self, key: &str, item: T) -> Result<(), Error> {
        let item =
            serde_json::to_value(item).map_err(|e| Error::with_source(ErrorKind::Serialize, e))?;
        self.read().merge(key, Merge::Push(item))
    }

    /// Sets `member` of the map (a JSON object) under `key` to `value` (an
    /// absent key counts as an empty map). A map of members to `true` is a
    /// set.
    ///
    /// A merge operation: on a server-side store, the store sets the member
    /// in the map it holds when it saves the session, so concurrent
    /// requests changing different members (or the same one: the last
    /// wins, as one value) never conflict. Client-side, it is an ordinary
    /// write.
    ///
    /// # Errors
    /// [`ErrorKind::Serialize`] when `value` is not JSON,
    /// [`ErrorKind::Deserialize`] when the value under `key` is not a map;
    /// the session is unchanged then. On saving, a store that finds
    /// something else than a map under the key answers
    /// [`ErrorKind::Conflict`].
    pub fn map_insert<T: Serialize>(
        &self,
        key: &str,
        member: impl Into<String>,
        value: T,
    ) -> Result<(), Error> {
        let value =
            serde_json::to_value(value).map_err(|e| Error::with_source(ErrorKind::Serialize, e))?;
        let merge = Merge::Insert(member.into(), value);
        self.read().merge(key, merge)
    }

    /// Removes `member` from the map under `key`, a merge operation like
    /// [`map_insert`](Self::map_insert): concurrent requests never
    /// conflict over it.
    ///
    /// # Errors
    /// [`ErrorKind::Deserialize`] when the value under `key` is not a map;
    /// the session is unchanged then. On saving, a store that finds
    /// something else than a map under the key answers
    /// [`ErrorKind::Conflict`].
    pub fn map_remove(&self, key: &str, member: &str) -> Result<(), Error> {
        let merge = Merge::Remove(member.to_owned());
        self.read().merge(key, merge)
    }

    /// Removes the value under `key` and returns it as `T`.
    ///
    /// # Errors
    /// [`ErrorKind::Deserialize`] when the removed value is not a `T`; it
    /// is removed all the same.
    pub fn remove<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        self.remove_value(key)
            .map(|value| T::deserialize(&value).map_err(|_| mismatch::<T>(key, &value)))
            .transpose()
    }

    /// Removes the raw JSON value under `key` and returns it.
    pub fn remove_value(&self, key: &str) -> Option<Value> {
        let mut state = self.read_key(key);
        state.unset(key)
    }

    /// Whether a value is stored under `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.read_key(key).data.contains_key(key)
    }

    /// The keys, in sorted order.
    pub fn keys(&self) -> Vec<String> {
        self.read().data.keys().cloned().collect()
    }

    /// How many values are stored.
    pub fn len(&self) -> usize {
        self.read().data.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.read().data.is_empty()
    }

    /// A copy of the whole session as a JSON object.
    pub fn to_map(&self) -> SessionData {
        let mut state = self.read();
        if state.track_changes {
            state.reads.all = true;
        }
        state.data.clone()
    }

    /// Removes every value and the permanent flag (as Flask's
    /// `session.clear()`, where the flag is a key); the response deletes
    /// the cookie.
    pub fn clear(&self) {
        let mut state = self.read();
        if state.is_empty() {
            // Nothing to delete, but a later write starts from nothing:
            // the store clears what others may have written meanwhile, and
            // `cycle_id` carries none of it.
            state.cleared = true;
        } else {
            state.clear();
        }
    }

    /// Ends the session (logout): like [`clear`](Self::clear), and the
    /// response deletes the cookie even if the session was already empty
    /// (a stale or refused cookie goes too).
    pub fn flush(&self) {
        let mut state = self.read();
        state.clear();
        state.flushed = true;
        state.stored_as = None;
    }

    /// The session's public handle: a name for its stored record that
    /// is safe to show, log or put in a URL (the id itself is a bearer
    /// secret; the handle is the id encrypted under the layer's key, so it
    /// cannot be used as a cookie). It stays the same for the life of the
    /// id while the layer's current key does (after a key rotation it
    /// changes; the old one still works while the old key is a fallback).
    /// [`Sessions::end`](crate::Sessions::end) ends a session by its handle
    /// ("sign out that device").
    ///
    /// `None` for a session with no stored record yet, and after
    /// [`cycle_id`](Self::cycle_id) or [`flush`](Self::flush) in this
    /// request: the new id exists once the response is written, so its
    /// handle shows from the next request on (record it then, not in the
    /// login request). `None` too for client-side sessions, which the
    /// server cannot end one by one (see `not_before` in
    /// docs/security.md).
    pub fn handle(&self) -> Option<String> {
        let state = self.read();
        let (id, keys, name) = state.stored_as.as_ref()?;
        Some(crate::id::handle(keys, name, id))
    }

    /// Gives the session a new id, keeping its data, and removes the old
    /// record: call it at login (and at any change of privilege) so that an
    /// id an attacker planted before login is worthless after it
    /// (session fixation). With client-side sessions there is no id; the
    /// cookie is re-issued.
    ///
    /// What other requests wrote to the old record while this one ran moves
    /// to the new id with it (their merges beside this request's). If one of
    /// them changed a key this request read and then wrote, nothing of this
    /// request is saved: the old record stays under the old id, as they
    /// left it, and the response is a 409 ([`ErrorKind::Conflict`]).
    pub fn cycle_id(&self) {
        let mut state = self.read();
        state.cycle = true;
        state.modified = true;
        state.stored_as = None;
    }

    /// Records whose session this is (a user id): call it at login,
    /// beside [`cycle_id`](Self::cycle_id). A server-side store then lists
    /// the user's sessions and ends them one by one, all at once, or all
    /// but the current one ([`Sessions`](crate::Sessions): "your devices",
    /// "sign out everywhere" after a password change). Stores without an
    /// owner index (`MemcachedStore`, `FlaskSessionStore`) keep the value
    /// but cannot list by it: [`Sessions::of`](crate::Sessions::of)
    /// answers [`ErrorKind::Unsupported`]; under `FlaskSessionStore` the
    /// Flask app sees the value as a key of its dict.
    ///
    /// The owner is a session value like any other, under
    /// [`OWNER_KEY`] (it shows in
    /// [`keys`](Self::keys)); [`clear`](Self::clear) and
    /// [`flush`](Self::flush) remove it with the rest, and the store's
    /// index with it. Client-side sessions carry it in the cookie, where
    /// the `not_before` hook can read it ([`owner_of`](Self::owner_of)).
    ///
    /// # Errors
    /// [`ErrorKind::Serialize`] when `owner` is longer than
    /// [`MAX_OWNER_CHARS`] characters (every store takes that much, so a
    /// login that works on one works on all); the session is unchanged
    /// then.
    pub fn set_owner(&self, owner: impl Into<String>) -> Result<(), Error> {
        let owner = owner.into();
        if owner.chars().count() > MAX_OWNER_CHARS {
            return Err(Error::with_message(
                ErrorKind::Serialize,
                "the session's owner is over MAX_OWNER_CHARS characters",
            ));
        }
        self.insert_value(OWNER_KEY, Value::String(owner));
        Ok(())
    }

    /// Whose session this is, as [`set_owner`](Self::set_owner) recorded.
    pub fn owner(&self) -> Option<String> {
        Self::owner_of(&self.read().data).map(str::to_owned)
    }

    /// The owner recorded in a session's data: for the `not_before` hook,
    /// which gets the data.
    pub fn owner_of(data: &SessionData) -> Option<&str> {
        data.get(OWNER_KEY).and_then(Value::as_str)
    }

    /// Records what a sessions page shows of this session (a device name,
    /// the user agent, where it signed in), returned with it by
    /// [`Sessions::of`](crate::Sessions::of). Kept small: at most
    /// [`MAX_OWNER_META`] bytes of JSON. Stored under
    /// [`OWNER_META_KEY`].
    ///
    /// # Errors
    /// [`ErrorKind::Serialize`] when `meta` is not JSON or is larger than
    /// [`MAX_OWNER_META`] bytes; the session is unchanged then.
    pub fn set_owner_meta<T: Serialize>(&self, meta: T) -> Result<(), Error> {
        let value =
            serde_json::to_value(meta).map_err(|e| Error::with_source(ErrorKind::Serialize, e))?;
        if value.to_string().len() > MAX_OWNER_META {
            return Err(Error::with_message(
                ErrorKind::Serialize,
                "the session's owner metadata is over MAX_OWNER_META bytes",
            ));
        }
        self.insert_value(OWNER_META_KEY, value);
        Ok(())
    }

    /// Queues a message for the next page the user sees, as Flask's
    /// `flash(message, category)`: stored under `_flashes` as
    /// `[category, message]` pairs, the format Flask reads, so a message
    /// flashed here is shown by a Flask app sharing the session and the
    /// other way round.
    ///
    /// # Errors
    /// [`ErrorKind::Deserialize`] when `_flashes` holds something else.
    pub fn flash(&self, category: &str, message: &str) -> Result<(), Error> {
        // A merge: two requests flashing at once both keep their message.
        self.push(FLASHES, (category, message))
    }

    /// Takes every queued message as `(category, message)`, oldest first,
    /// removing them, as Flask's `get_flashed_messages(with_categories=True)`.
    ///
    /// # Errors
    /// [`ErrorKind::Deserialize`] when `_flashes` holds something else; it
    /// is removed all the same.
    pub fn take_flashes(&self) -> Result<Vec<(String, String)>, Error> {
        Ok(self.remove(FLASHES)?.unwrap_or_default())
    }

    /// Makes the session permanent (the cookie outlives the browser session
    /// and expires after the layer's lifetime) or a browser-session one.
    ///
    /// A permanent session holding no value is still a session, as in
    /// Flask (where the flag is the `_permanent` key): a "remember me" set
    /// before any value is kept, and its cookie is refreshed like any
    /// permanent one. [`clear`](Self::clear) and [`flush`](Self::flush)
    /// drop the flag with the values, and the cookie is deleted.
    pub fn set_permanent(&self, permanent: bool) {
        let mut state = self.read();
        if state.permanent != permanent {
            state.permanent = permanent;
            state.permanent_changed = true;
            state.modified = true;
        }
    }

    /// Whether the session is permanent.
    pub fn is_permanent(&self) -> bool {
        self.read().permanent
    }

    /// Marks the session modified so the response writes it again, as
    /// Flask's `session.modified = True` does.
    pub fn mark_modified(&self) {
        self.read().modified = true;
    }

    /// Whether anything was changed during this request.
    pub fn is_modified(&self) -> bool {
        self.lock().modified
    }

    /// Whether anything was read or written during this request.
    pub fn is_accessed(&self) -> bool {
        self.lock().accessed
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.lock()
    }
}

/// The longest owner [`Session::set_owner`] takes, in characters: what
/// every store indexes (SQL's owner column is this wide).
pub const MAX_OWNER_CHARS: usize = 255;

/// The most JSON [`Session::set_owner_meta`] keeps, in bytes: a listing of
/// a user's sessions reads it for each of them.
pub const MAX_OWNER_META: usize = 1024;

/// Where flashed messages live: Flask's key.
const FLASHES: &str = "_flashes";

/// The first character of the layer's own keys ([`OWNER_KEY`] and the
/// like), which merge operations do not touch.
const RESERVED: char = '\u{10FFFF}';

/// The JSON type of `value`, to name in errors instead of the value.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value that is not the type asked for. serde's own message quotes the
/// value (`invalid type: string "tok_live_..."`), and errors end up in logs:
/// this one names the key, the type asked for and the JSON type found,
/// never the value.
fn mismatch<T>(key: &str, value: &Value) -> Error {
    let found = json_type(value);
    Error::with_message(
        ErrorKind::Deserialize,
        format!(
            "the value under {key:?} is {found} that does not deserialize as {}",
            std::any::type_name::<T>()
        ),
    )
}

impl fmt::Debug for Session {
    /// Prints the keys and flags, never the values: sessions hold secrets
    /// (tokens, user data) that have no place in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Session")
            .field("keys", &state.data.keys().collect::<Vec<_>>())
            .field("permanent", &state.permanent)
            .field("accessed", &state.accessed)
            .field("modified", &state.modified)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn session() -> Session {
        Session::from_state(State::default())
    }

    #[test]
    fn owners_and_their_metadata_are_bounded_the_same_on_every_store() {
        let s = session();
        let longest = "ü".repeat(MAX_OWNER_CHARS);
        s.set_owner(longest.clone()).unwrap();
        assert_eq!(s.owner(), Some(longest));
        let error = s.set_owner("x".repeat(MAX_OWNER_CHARS + 1)).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Serialize);
        assert_eq!(
            s.owner().map(|o| o.chars().count()),
            Some(MAX_OWNER_CHARS),
            "unchanged"
        );
        s.set_owner_meta(json!({"browser": "x".repeat(1000)}))
            .unwrap();
        let error = s
            .set_owner_meta(json!({"browser": "x".repeat(MAX_OWNER_META)}))
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Serialize);
        assert_eq!(
            Session::owner_of(&s.to_map()).map(str::len),
            Some(2 * MAX_OWNER_CHARS)
        );
    }

    fn stored(data: serde_json::Value) -> Session {
        Session::from_state(State {
            data: data.as_object().unwrap().clone(),
            track_changes: true,
            ..State::default()
        })
    }

    fn changes(s: &Session) -> Changes {
        s.state().changes(1, 2)
    }

    #[test]
    fn a_key_read_then_written_carries_what_was_read() {
        let s = stored(json!({"n": 1, "cart": [1], "gone": "x", "other": 0}));
        s.update("n", |n: Option<i64>| n.unwrap_or(0) + 1).unwrap();
        let cart: Vec<i64> = s.get("cart").unwrap().unwrap();
        s.insert("cart", [cart, vec![2]].concat()).unwrap();
        s.insert("cart", [9]).unwrap();
        assert!(!s.contains_key("absent"));
        s.insert("absent", 1).unwrap();
        s.remove_value("gone");
        s.insert("blind", 1).unwrap();
        s.insert("other", 5).unwrap();
        let changes = changes(&s);
        assert_eq!(
            changes.expected,
            [
                ("absent".to_owned(), None),
                ("cart".to_owned(), Some(json!([1]))),
                ("gone".to_owned(), Some(json!("x"))),
                ("n".to_owned(), Some(json!(1))),
            ],
            "the loaded values, once per key; blind writes carry none"
        );
        assert!(changes.merges.is_empty());
    }

    #[test]
    fn blind_writes_and_reads_alone_carry_nothing() {
        let s = stored(json!({"a": 1}));
        for i in 0..20 {
            let _ = s.get_value(&format!("k{i}"));
        }
        s.insert("a", 2).unwrap();
        s.insert("b", 2).unwrap();
        let changes = changes(&s);
        assert!(changes.expected.is_empty() && !changes.reads_the_record());
        // Past the inline reads too.
        let s = stored(json!({}));
        for i in 0..20 {
            let _ = s.get_value(&format!("k{i}"));
        }
        s.insert("k19", 1).unwrap();
        assert_eq!(changes_of(&s), [("k19".to_owned(), None)]);
    }

    fn changes_of(s: &Session) -> Vec<(String, Option<Value>)> {
        changes(s).expected
    }

    #[test]
    fn a_whole_read_makes_every_write_carry_its_value() {
        let s = stored(json!({"a": 1}));
        let _ = s.to_map();
        s.insert("a", 2).unwrap();
        s.insert("b", 2).unwrap();
        assert_eq!(
            changes_of(&s),
            [("a".to_owned(), Some(json!(1))), ("b".to_owned(), None)]
        );
    }

    #[test]
    fn after_a_clear_nothing_is_expected() {
        let s = stored(json!({"a": 1}));
        let _ = s.get_value("a");
        s.clear();
        s.insert("a", 2).unwrap();
        assert!(changes(&s).expected.is_empty());
    }

    #[test]
    fn merges_go_to_the_store_and_show_here() {
        let s = stored(json!({"n": 1, "cart": ["a"], "map": {"x": 1}}));
        assert_eq!(s.increment("n", 2).unwrap(), 3);
        assert_eq!(s.increment("n", -1).unwrap(), 2);
        s.push("cart", "b").unwrap();
        s.map_insert("map", "y", 2).unwrap();
        s.map_remove("map", "x").unwrap();
        assert_eq!(s.get_value("cart"), Some(json!(["a", "b"])));
        assert_eq!(s.get_value("map"), Some(json!({"y": 2})));
        let changes = changes(&s);
        assert!(changes.set.is_empty() && changes.expected.is_empty());
        assert_eq!(
            changes.merges,
            [
                ("n".to_owned(), Merge::Add(2)),
                ("n".to_owned(), Merge::Add(-1)),
                ("cart".to_owned(), Merge::Push(json!("b"))),
                ("map".to_owned(), Merge::Insert("y".into(), json!(2))),
                ("map".to_owned(), Merge::Remove("x".into())),
            ]
        );
        assert!(s.is_modified());
    }

    #[test]
    fn a_merge_on_a_key_the_request_wrote_is_a_write() {
        let s = stored(json!({"n": 1}));
        s.insert("n", 10).unwrap();
        s.increment("n", 1).unwrap();
        let after_set = changes(&s);
        assert_eq!(after_set.set, [("n".to_owned(), json!(11))]);
        assert!(after_set.merges.is_empty());
        // A write after merges replaces them, and carries what was read
        // before the first merge.
        let s = stored(json!({"n": 1}));
        let _ = s.get_value("n");
        s.increment("n", 1).unwrap();
        s.insert("n", 7).unwrap();
        let changes = changes(&s);
        assert!(changes.merges.is_empty());
        assert_eq!(changes.expected, [("n".to_owned(), Some(json!(1)))]);
    }

    /// A handler that merges, then reads the merged value and writes a
    /// value made from it (trims the cart it just pushed to, doubles the
    /// counter it just incremented) depends on what it loaded: the write
    /// carries the loaded value, or a concurrent merge by another request
    /// would be overwritten and lost behind a 200.
    #[test]
    fn a_write_of_a_value_read_after_a_merge_carries_what_was_loaded() {
        let s = stored(json!({"cart": ["a"], "n": 1, "_flashes": [["m", "old"]]}));
        s.push("cart", "b").unwrap();
        let cart: Vec<String> = s.get("cart").unwrap().unwrap();
        s.insert("cart", &cart[1..]).unwrap();
        s.increment("n", 1).unwrap();
        s.update("n", |n: Option<i64>| n.unwrap_or(0) * 2).unwrap();
        s.flash("m", "new").unwrap();
        s.take_flashes().unwrap();
        let changes = changes(&s);
        assert!(changes.merges.is_empty(), "{changes:?}");
        assert_eq!(
            changes.expected,
            [
                ("_flashes".to_owned(), Some(json!([["m", "old"]]))),
                ("cart".to_owned(), Some(json!(["a"]))),
                ("n".to_owned(), Some(json!(1))),
            ],
            "what was loaded, before this request's merges"
        );
        // A write after a merge that read nothing stays blind.
        let s = stored(json!({"n": 1}));
        s.increment("n", 1).unwrap();
        s.insert("n", 7).unwrap();
        assert!(changes_of(&s).is_empty());
    }

    #[test]
    fn merges_that_do_not_fit_leave_the_session_unchanged() {
        let s = stored(json!({"s": "text", "n": i64::MAX}));
        let error = s.push("s", 1).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Deserialize);
        assert!(error.to_string().contains("\"s\"") && !error.to_string().contains("text"));
        assert_eq!(
            s.increment("n", 1).unwrap_err().kind(),
            ErrorKind::Deserialize
        );
        assert_eq!(
            s.map_insert(OWNER_KEY, "x", 1).unwrap_err().kind(),
            ErrorKind::Serialize
        );
        assert!(!s.is_modified() && changes(&s).merges.is_empty());
    }

    #[test]
    fn client_side_merges_are_ordinary_writes() {
        let s = session();
        s.push("cart", 1).unwrap();
        s.increment("n", 5).unwrap();
        assert_eq!(
            s.to_map(),
            *json!({"cart": [1], "n": 5}).as_object().unwrap()
        );
        let state = s.state();
        assert!(state.merges.is_empty() && state.expected.is_empty() && state.modified);
    }

    #[test]
    fn typed_round_trip() {
        let s = session();
        s.insert("n", 5u32).unwrap();
        s.insert("name", "ann").unwrap();
        assert_eq!(s.get::<u32>("n").unwrap(), Some(5));
        assert_eq!(s.get::<String>("name").unwrap().as_deref(), Some("ann"));
        assert_eq!(s.get::<u32>("missing").unwrap(), None);
        assert_eq!(s.keys(), ["n", "name"]);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn wrong_type_is_an_error_not_a_panic() {
        let s = session();
        s.insert("n", "five").unwrap();
        assert_eq!(
            s.get::<u32>("n").unwrap_err().kind(),
            ErrorKind::Deserialize
        );
        assert_eq!(
            s.remove::<u32>("n").unwrap_err().kind(),
            ErrorKind::Deserialize
        );
        assert!(!s.contains_key("n"), "removed all the same");
    }

    #[test]
    fn unserializable_values_leave_the_session_unchanged() {
        let s = session();
        let mut bad = std::collections::HashMap::new();
        bad.insert((1, 2), 3);
        assert_eq!(
            s.insert("bad", bad).unwrap_err().kind(),
            ErrorKind::Serialize
        );
        assert!(!s.is_modified());
        assert!(s.is_empty());
    }

    #[test]
    fn reads_mark_accessed_and_writes_mark_modified() {
        let s = session();
        assert!(!s.is_accessed());
        assert!(!s.contains_key("x"));
        assert!(s.is_accessed());
        assert!(!s.is_modified());
        s.insert("x", 1).unwrap();
        assert!(s.is_modified());
    }

    #[test]
    fn writes_that_change_nothing_are_not_modifications() {
        let s = Session::from_state(State {
            data: json!({"x": 1}).as_object().unwrap().clone(),
            ..State::default()
        });
        s.insert("x", 1).unwrap();
        assert_eq!(s.remove_value("absent"), None);
        s.set_permanent(false);
        s.update("x", |x: Option<i32>| x.unwrap()).unwrap();
        assert!(!s.is_modified());
        s.update("x", |x: Option<i32>| x.unwrap() + 1).unwrap();
        assert!(s.is_modified());
        assert_eq!(s.get::<i32>("x").unwrap(), Some(2));
    }

    /// Errors are logged: a value read as the wrong type must not put the
    /// value (a token, say) into the error.
    #[test]
    fn type_errors_name_the_key_but_never_carry_the_value() {
        let s = session();
        s.insert("token", "tok_live_SECRET").unwrap();
        let errors = [
            s.get::<u64>("token").unwrap_err(),
            s.update("token", |n: Option<u64>| n.unwrap_or(0))
                .unwrap_err(),
            s.remove::<u64>("token").unwrap_err(),
        ];
        for error in errors {
            let text = format!("{error} {error:?} {:?}", std::error::Error::source(&error));
            assert!(!text.contains("SECRET"), "{text}");
            assert!(text.contains("\"token\"") && text.contains("u64"), "{text}");
            assert_eq!(error.kind(), ErrorKind::Deserialize);
        }
    }

    /// A value of an older shape reads as absent through `get_lenient`,
    /// and as an error (naming the key) through `get`.
    #[test]
    fn a_value_of_an_older_shape_is_absent_to_the_lenient_read() {
        let s = session();
        s.insert("cart", "a list, once").unwrap();
        assert_eq!(s.get_lenient::<Vec<u32>>("cart"), None);
        assert_eq!(s.get_lenient::<Vec<u32>>("missing"), None);
        assert_eq!(
            s.get_lenient::<String>("cart").as_deref(),
            Some("a list, once")
        );
        assert!(
            s.get::<Vec<u32>>("cart")
                .unwrap_err()
                .to_string()
                .contains("\"cart\"")
        );
        assert!(s.contains_key("cart"), "nothing is removed by a read");
    }

    #[test]
    fn clear_and_flush_drop_the_permanent_flag() {
        let s = session();
        s.insert("x", 1).unwrap();
        s.set_permanent(true);
        s.clear();
        assert!(s.is_empty() && !s.is_permanent() && s.is_modified());
        let s = session();
        s.set_permanent(true);
        s.flush();
        assert!(s.is_empty() && !s.is_permanent() && s.is_modified());
        let s = session();
        s.clear();
        assert!(!s.is_modified(), "clearing nothing changes nothing");
    }

    #[test]
    fn flashes_queue_and_drain_in_flask_format() {
        let s = session();
        assert!(s.take_flashes().unwrap().is_empty());
        s.flash("message", "hello").unwrap();
        s.flash("error", "oops").unwrap();
        assert_eq!(
            s.get_value("_flashes"),
            Some(json!([["message", "hello"], ["error", "oops"]]))
        );
        assert_eq!(
            s.take_flashes().unwrap(),
            [
                ("message".to_owned(), "hello".to_owned()),
                ("error".to_owned(), "oops".to_owned())
            ]
        );
        assert!(!s.contains_key("_flashes"));
    }

    #[test]
    fn clones_share_state() {
        let s = session();
        let t = s.clone();
        t.insert("x", [1, 2]).unwrap();
        assert_eq!(s.get::<Vec<u8>>("x").unwrap(), Some(vec![1, 2]));
        assert_eq!(s.to_map(), *json!({"x": [1, 2]}).as_object().unwrap());
    }

    #[test]
    fn debug_shows_keys_not_values() {
        let s = session();
        s.insert("token", "hunter2").unwrap();
        let text = format!("{s:?}");
        assert!(
            text.contains("token") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn update_is_atomic_across_threads() {
        let s = session();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                let s = s.clone();
                scope.spawn(move || {
                    for _ in 0..1000 {
                        s.update("n", |n: Option<u64>| n.unwrap_or(0) + 1).unwrap();
                    }
                });
            }
        });
        assert_eq!(s.get::<u64>("n").unwrap(), Some(8000));
    }
}
