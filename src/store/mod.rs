//! Server-side sessions: the [`SessionStore`] trait and the stores that
//! come with the crate. Stores know nothing of HTTP or cookies; the layer
//! hands them validated ids, whole records and per-request changes.
//!
//! Writing a store means implementing five methods (and `delete_expired`
//! where the backend does not expire records itself); the conformance suite
//! (`session_layer::testing`, feature `testing`) checks one against
//! everything the layer relies on. `docs/stores.md` walks through it.

#[cfg(feature = "caching-store")]
mod caching;
#[cfg(feature = "file-store")]
mod file;
#[cfg(all(
    feature = "flask-session",
    any(
        feature = "redis-store",
        feature = "memcached-store",
        feature = "postgres-store",
        feature = "mysql-store",
        feature = "sqlite-store",
        feature = "mongodb-store"
    )
))]
mod flask_session;
#[cfg(feature = "memcached-store")]
mod memcached;
#[cfg(feature = "memory-store")]
mod memory;
#[cfg(feature = "mongodb-store")]
mod mongo;
#[cfg(any(
    feature = "redis-store",
    feature = "postgres-store",
    feature = "mysql-store",
    feature = "sqlite-store",
    feature = "memcached-store",
    feature = "mongodb-store"
))]
mod net;
#[cfg(feature = "redis-store")]
mod redis_store;
#[cfg(any(
    feature = "postgres-store",
    feature = "mysql-store",
    feature = "sqlite-store"
))]
mod sql;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The attribute `SessionStore` implementations put on their `impl`, so a
/// store of your own needs no dependency of its own for it.
pub use async_trait::async_trait;
use serde::{Deserialize, Serialize};
/// A session value, as [`Changes::set`] carries it (`serde_json`'s).
pub use serde_json::Value;

#[cfg(feature = "caching-store")]
pub use caching::{CachingStore, Invalidations, Notifying};
#[cfg(feature = "file-store")]
pub use file::FileStore;
#[cfg(all(
    feature = "flask-session",
    any(
        feature = "redis-store",
        feature = "memcached-store",
        feature = "postgres-store",
        feature = "mysql-store",
        feature = "sqlite-store",
        feature = "mongodb-store"
    )
))]
pub use flask_session::{FlaskSessionStore, Serialization};
#[cfg(feature = "memcached-store")]
pub use memcached::MemcachedStore;
#[cfg(feature = "memory-store")]
pub use memory::MemoryStore;
#[cfg(feature = "mongodb-store")]
pub use mongo::MongoStore;
#[cfg(feature = "redis-store")]
pub use redis_store::RedisStore;
#[cfg(any(
    feature = "postgres-store",
    feature = "mysql-store",
    feature = "sqlite-store"
))]
pub use sql::SqlStore;

use crate::data::SessionData;
use crate::error::Error;
pub use crate::id::SessionId;

/// A stored session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Record {
    /// The session's values.
    pub data: SessionData,
    /// Whether the session is permanent (its cookie outlives the browser).
    #[serde(default)]
    pub permanent: bool,
    /// When the session was created, in seconds since the Unix epoch: the
    /// start of its absolute timeout.
    pub created_at: u64,
    /// When the record expires, in seconds since the Unix epoch. Stores
    /// with native expiry (Redis, Memcached) use it as the TTL; the others
    /// treat an expired record as absent and remove it in
    /// [`SessionStore::delete_expired`].
    pub expires_at: u64,
}

impl Record {
    /// A record holding `data`, created at `created_at`, expiring at
    /// `expires_at`.
    pub fn new(data: SessionData, permanent: bool, created_at: u64, expires_at: u64) -> Self {
        Self {
            data,
            permanent,
            created_at,
            expires_at,
        }
    }

    /// The owner the layer recorded for the session
    /// ([`Session::set_owner`](crate::Session::set_owner)), under
    /// [`OWNER_KEY`].
    pub fn owner(&self) -> Option<&str> {
        self.data.get(OWNER_KEY).and_then(Value::as_str)
    }

    /// Whether the record has expired at `now`.
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at <= now
    }

    /// Whether the record is dead at `now`: expired, or older than an
    /// absolute timeout configured since it was written.
    pub(crate) fn outlived(&self, now: u64, absolute_timeout: Option<std::time::Duration>) -> bool {
        self.is_expired(now)
            || absolute_timeout.is_some_and(|a| self.created_at.saturating_add(a.as_secs()) <= now)
    }
}

/// What one request did to a session, for [`SessionStore::apply`]: applied
/// in the order cleared, removed, set, merged, so that two requests of one
/// user that change different keys at the same time both survive.
///
/// Two requests that change the *same* key never lose a write silently
/// either: a key the request read and then set or removed carries the value
/// it read in [`expected`](Self::expected), and the store applies nothing of
/// the changes when one of those keys changed since (a conflict, answered
/// 409); a key changed through a merge operation ([`merges`](Self::merges):
/// add to a number, append to a list, insert into or remove from a map) is
/// changed by the store from the value it holds then, and never conflicts.
///
/// There is no `Default`: every `Changes` says when it was made
/// ([`Changes::expiry`], then set the fields), so that a store never judges
/// expiry at time zero and revives an expired record.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Changes {
    /// Every value was removed before `removed` and `set` apply.
    pub cleared: bool,
    /// Keys removed.
    pub removed: Vec<String>,
    /// Keys set, with their new values.
    pub set: Vec<(String, Value)>,
    /// The values the request read of keys it then set or removed (`None`:
    /// the key was absent). The store applies the changes only if every one
    /// of these keys still holds that value, atomically with the rest (see
    /// [`Changes::check`]); otherwise it applies nothing and
    /// [`SessionStore::apply`] returns an [`ErrorKind::Conflict`] error.
    /// Empty for blind writes, which apply as they come.
    ///
    /// [`ErrorKind::Conflict`]: crate::ErrorKind::Conflict
    pub expected: Vec<(String, Option<Value>)>,
    /// Merge operations, applied by the store to the value it holds, after
    /// `set`, in order ([`Merge`]). A key is never both in `set` or
    /// `removed` and here.
    pub merges: Vec<(String, Merge)>,
    /// The new permanent flag, if the request changed it.
    pub permanent: Option<bool>,
    /// The record's new expiry, in seconds since the Unix epoch.
    pub expires_at: u64,
    /// The layer's time of the request, in seconds since the Unix epoch: a
    /// record that expired by then is gone, and `apply` returns false.
    pub now: u64,
}

/// A change a store makes to a value from the value it holds when it
/// applies the request's changes, so that concurrent requests making it to
/// one key all survive (twenty "add to cart" at once keep twenty items).
///
/// [`Merge::apply`] is what it means; stores that apply [`Changes`] to a
/// whole record get it through [`Changes::apply_to`], the others do the
/// same on their server (a Lua script, a transaction).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Merge {
    /// Adds to an integer (an absent key counts as 0).
    Add(i64),
    /// Appends an item to a list (an absent key counts as `[]`).
    Push(Value),
    /// Sets a member of a map (an absent key counts as `{}`).
    Insert(String, Value),
    /// Removes a member of a map (an absent key stays absent).
    Remove(String),
}

impl Merge {
    /// The value under the key once the merge is made on `current` (`None`
    /// when the key stays absent: a [`Merge::Remove`] on an absent key).
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) when `current`
    /// is not of the merge's kind (another request replaced the list by a
    /// string, say) or the sum leaves `i64`: the store then applies none of
    /// the request's changes, as for a failed expectation.
    pub fn apply(&self, current: Option<&Value>) -> Result<Option<Value>, Error> {
        let mut value = current.cloned();
        self.make(&mut value)?;
        Ok(value)
    }

    /// [`apply`](Self::apply) in place, on the value under the key
    /// (`None`: absent), without copying it: a request that pushes
    /// thousands of items onto one list costs linear time, not quadratic.
    /// On an error `value` is unchanged.
    pub(crate) fn make(&self, value: &mut Option<Value>) -> Result<(), Error> {
        if let Some(wanted) = self.misfit(value.as_ref()) {
            return Err(merge_conflict(wanted));
        }
        match (self, value) {
            (Self::Add(by), value) => {
                let held = value.as_ref().and_then(Value::as_i64).unwrap_or(0);
                *value = held.checked_add(*by).map(Value::from);
            }
            (Self::Push(item), value @ None) => *value = Some(Value::Array(vec![item.clone()])),
            (Self::Push(item), Some(Value::Array(items))) => items.push(item.clone()),
            (Self::Insert(member, item), value @ None) => {
                let mut map = SessionData::new();
                map.insert(member.clone(), item.clone());
                *value = Some(Value::Object(map));
            }
            (Self::Insert(member, item), Some(Value::Object(map))) => {
                map.insert(member.clone(), item.clone());
            }
            (Self::Remove(member), Some(Value::Object(map))) => {
                map.remove(member);
            }
            (Self::Remove(_), None) | (_, Some(_)) => {}
        }
        Ok(())
    }

    /// What the merge needs under its key when `current` does not fit it
    /// (a value of another kind, or a sum that leaves `i64`).
    pub(crate) fn misfit(&self, current: Option<&Value>) -> Option<&'static str> {
        match (self, current) {
            (_, None) => None,
            (Self::Add(by), Some(Value::Number(n))) => n
                .as_i64()
                .and_then(|n| n.checked_add(*by))
                .is_none()
                .then_some("an integer that the sum fits"),
            (Self::Push(_), Some(Value::Array(_)))
            | (Self::Insert(..) | Self::Remove(_), Some(Value::Object(_))) => None,
            (Self::Add(_), Some(_)) => Some("an integer"),
            (Self::Push(_), Some(_)) => Some("a list"),
            (Self::Insert(..) | Self::Remove(_), Some(_)) => Some("a map"),
        }
    }
}

fn merge_conflict(wanted: &str) -> Error {
    Error::with_message(
        crate::error::ErrorKind::Conflict,
        format!("a merge found something other than {wanted} under its key"),
    )
}

/// Whether two values are the same JSON: as `==`, except that floats
/// compare bit for bit, so that `-0.0` is not `0.0` (the JSON texts differ,
/// and the stores that compare texts see a change there too).
fn identical(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() && y.is_f64() => {
            x.as_f64().map(f64::to_bits) == y.as_f64().map(f64::to_bits)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| identical(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, x)| y.get(key).is_some_and(|y| identical(x, y)))
        }
        _ => a == b,
    }
}

impl Changes {
    /// Changes made at `now` that only move the expiry (a refresh).
    pub fn expiry(now: u64, expires_at: u64) -> Self {
        Self {
            cleared: false,
            removed: Vec::new(),
            set: Vec::new(),
            expected: Vec::new(),
            merges: Vec::new(),
            permanent: None,
            expires_at,
            now,
        }
    }

    /// Whether the store must look at what it holds to apply the changes:
    /// they carry expectations or merges. Changes without either (blind
    /// writes) apply field by field as they come.
    pub fn reads_the_record(&self) -> bool {
        !self.expected.is_empty() || !self.merges.is_empty()
    }

    /// Checks the expectations against `data`, the values the store holds:
    /// the one test of whether a request's read-then-written keys changed
    /// since it read them.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`](crate::ErrorKind::Conflict), naming the key
    /// (never its value), when a key no longer holds what the request read.
    pub fn check(&self, data: &SessionData) -> Result<(), Error> {
        for (key, read) in &self.expected {
            let same = match (data.get(key), read) {
                (Some(held), Some(read)) => identical(held, read),
                (held, read) => held.is_none() && read.is_none(),
            };
            if !same {
                return Err(Error::with_message(
                    crate::error::ErrorKind::Conflict,
                    format!("{key:?} changed since the request read it"),
                ));
            }
        }
        Ok(())
    }

    /// Applies the changes to `record`: the read-modify-write step of
    /// stores that keep a record as one blob, and the one place that says
    /// what expectations and merges mean. Run it under the lock,
    /// transaction or compare-and-swap that makes the write atomic.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) when an
    /// expectation fails ([`check`](Self::check)) or a merge does not fit
    /// the value it meets ([`Merge::apply`]); `record` is then unchanged
    /// and the store must write nothing.
    pub fn apply_to(&self, record: &mut Record) -> Result<(), Error> {
        self.check(&record.data)?;
        let merged = self.merged(record)?;
        if self.cleared {
            record.data.clear();
        }
        for key in &self.removed {
            record.data.remove(key);
        }
        for (key, value) in &self.set {
            record.data.insert(key.clone(), value.clone());
        }
        for (key, value) in merged {
            match value {
                Some(value) => record.data.insert(key.to_owned(), value),
                None => record.data.remove(key),
            };
        }
        if let Some(permanent) = self.permanent {
            record.permanent = permanent;
        }
        record.expires_at = self.expires_at;
        Ok(())
    }

    /// The merged values, computed before anything is written so that a
    /// merge that does not fit leaves the record as it was: each merged
    /// key's value copied once, then every merge made on it in place.
    fn merged(&self, record: &Record) -> Result<BTreeMap<&str, Option<Value>>, Error> {
        let mut merged: BTreeMap<&str, Option<Value>> = BTreeMap::new();
        for (key, merge) in &self.merges {
            let value = merged.entry(key).or_insert_with(|| match self.cleared {
                true => None,
                false => record.data.get(key).cloned(),
            });
            merge.make(value)?;
        }
        Ok(merged)
    }

    /// What the changes do to the session's owner ([`OWNER_KEY`]):
    /// `None` when they leave it as it was, `Some(None)` when they remove
    /// it (a removal or a clear), `Some(Some(owner))` when they set it.
    /// Stores that index sessions by owner update the index from it.
    pub fn owner_change(&self) -> Option<Option<&str>> {
        let set = self.set.iter().rev().find(|(key, _)| key == OWNER_KEY);
        match set {
            Some((_, value)) => Some(value.as_str()),
            None if self.cleared || self.removed.iter().any(|key| key == OWNER_KEY) => Some(None),
            None => None,
        }
    }

    /// Whether the changes touch no value (only expiry or the flag).
    pub fn is_expiry_only(&self) -> bool {
        !self.cleared && self.removed.is_empty() && self.set.is_empty() && self.merges.is_empty()
    }
}

/// Where server-side sessions live.
///
/// Implementations must be safe to call concurrently for the same id:
/// [`apply`](Self::apply) is atomic per key, so that two requests of one
/// user that write different keys both survive. Every method gets an id
/// that is already validated ([`SessionId`] can hold nothing else).
///
/// Errors keep their cause: build them with [`Error::store`].
///
/// A whole store, with nothing but this crate (one lock over a map: correct,
/// if not fast; run `session_layer::testing::check_store` on yours):
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use session_layer::Error;
/// use session_layer::store::{async_trait, Changes, Record, SessionId, SessionStore};
///
/// #[derive(Debug, Default)]
/// struct MapStore(Mutex<HashMap<SessionId, Record>>);
///
/// impl MapStore {
///     fn live(&self, id: &SessionId, now: u64) -> Option<Record> {
///         let map = self.0.lock().unwrap();
///         map.get(id).filter(|r| !r.is_expired(now)).cloned()
///     }
/// }
///
/// #[async_trait]
/// impl SessionStore for MapStore {
///     async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
///         Ok(self.live(id, now))
///     }
///     async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error> {
///         let mut map = self.0.lock().unwrap();
///         if map.get(id).is_some_and(|r| !r.is_expired(record.created_at)) {
///             return Ok(false);
///         }
///         map.insert(id.clone(), record.clone());
///         Ok(true)
///     }
///     async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
///         let mut map = self.0.lock().unwrap();
///         match map.get_mut(id).filter(|r| !r.is_expired(changes.now)) {
///             Some(record) => {
///                 // Checks what the request read, makes its merges; a
///                 // conflict changes nothing and is the caller's 409.
///                 changes.apply_to(record)?;
///                 Ok(true)
///             }
///             None => Ok(false),
///         }
///     }
///     async fn delete(&self, id: &SessionId) -> Result<(), Error> {
///         self.0.lock().unwrap().remove(id);
///         Ok(())
///     }
///     async fn take(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
///         let taken = self.0.lock().unwrap().remove(id);
///         Ok(taken.filter(|r| !r.is_expired(now)))
///     }
/// }
///
/// let layer = session_layer::SessionLayer::new(session_layer::Key::generate())
///     .with_store(MapStore::default());
/// ```
#[async_trait]
pub trait SessionStore: Debug + Send + Sync + 'static {
    /// The record under `id`, or `None` when there is none or it has
    /// expired at `now` (the layer's clock, in seconds since the Unix
    /// epoch).
    async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error>;

    /// Stores `record` under `id` if no live record has that id; returns
    /// false, changing nothing, if one does (the layer then draws another
    /// id). A record expired at `record.created_at` (the layer's now) no
    /// longer counts.
    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error>;

    /// Applies `changes` to the record under `id`, atomically per key.
    /// Returns false, changing nothing, when there is no such record (it
    /// expired by `changes.now` or was deleted meanwhile).
    async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error>;

    /// Removes the record under `id`; removing a missing record is not an
    /// error.
    async fn delete(&self, id: &SessionId) -> Result<(), Error>;

    /// Removes the record under `id` and returns it as it was at that
    /// moment (`None` when there was none, or it had expired at `now`):
    /// what `cycle_id` moves to the new id.
    ///
    /// It must be atomic with [`apply`](Self::apply): an apply that
    /// returned true before the take is in the returned record, and one
    /// that comes after it returns false. Then a write racing a login is
    /// either carried to the new id or answered with an error, never
    /// acknowledged and then lost. (There is no default: a load followed by
    /// a delete would quietly lose such writes. The conformance suite
    /// checks it.)
    async fn take(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error>;

    /// Removes the records expired at `now`, returning how many; stores
    /// whose backend expires records itself need not override it.
    async fn delete_expired(&self, now: u64) -> Result<u64, Error> {
        let _ = now;
        Ok(0)
    }

    /// Whether this store may answer a load from a copy that trails a
    /// write made through another server (a cache). If so, the layer
    /// stamps every write (a random value under [`STAMP_KEY`], written with
    /// the changes), gives the client the stamp beside the id, and loads
    /// with [`load_seen`](Self::load_seen). `false` by default.
    fn stamps_writes(&self) -> bool {
        false
    }

    /// [`load`](Self::load) for a client whose last acknowledged write was
    /// stamped `seen`: a store that answers from a copy answers only from
    /// one that holds that write (a copy whose [`STAMP_KEY`] is `seen`),
    /// and asks the backend otherwise. By default, `load`.
    async fn load_seen(
        &self,
        id: &SessionId,
        now: u64,
        seen: &str,
    ) -> Result<Option<Record>, Error> {
        let _ = seen;
        self.load(id, now).await
    }

    /// Takes the lease of session `id` for `holder` (a random token of
    /// one request) for `hold`, if no one else holds it: true when taken,
    /// false when another holder's lease is still running. A lease past its
    /// `hold` is free again (its request died, or runs too long), so a
    /// crashed server never locks a session out for longer. Measured by the
    /// store's own clock, as native TTLs are.
    ///
    /// What [`SessionLayer::serialize_requests`](crate::SessionLayer::serialize_requests)
    /// uses to run the requests of one session one at a time. By default
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported).
    ///
    /// # Errors
    /// The store's own failures, and `Unsupported` for stores without
    /// leases.
    async fn lease(
        &self,
        id: &SessionId,
        holder: &str,
        hold: std::time::Duration,
    ) -> Result<bool, Error> {
        let _ = (id, holder, hold);
        Err(Error::unsupported(
            "this store has no leases to serialize requests with",
        ))
    }

    /// Ends `holder`'s lease of session `id`; a lease that expired, or that
    /// another holder took since, is left alone.
    ///
    /// # Errors
    /// The store's own failures, and `Unsupported` for stores without
    /// leases.
    async fn release(&self, id: &SessionId, holder: &str) -> Result<(), Error> {
        let _ = (id, holder);
        Err(Error::unsupported(
            "this store has no leases to serialize requests with",
        ))
    }

    /// How the cookie carries this store's session ids: signed with the
    /// layer's key ([`IdCookie::Signed`], the default), or in a foreign
    /// format the store's records belong to.
    fn id_cookie(&self) -> IdCookie {
        IdCookie::Signed
    }

    /// The live sessions of `owner` at `now` (those whose record holds
    /// `owner` under [`OWNER_KEY`]), with their ids: what
    /// [`Sessions`](crate::Sessions) lists and ends.
    ///
    /// A store that answers it keeps an index from owner to sessions that
    /// never misses a live session: an entry is in place before the write
    /// that sets the owner is acknowledged, and a session whose owner
    /// changed, or that ended or expired, is left out of the answer (and
    /// its entry dropped, then or later). The conformance suite checks it.
    ///
    /// By default [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported):
    /// a store that cannot enumerate (Memcached) says so.
    async fn owned(&self, owner: &str, now: u64) -> Result<Vec<(SessionId, Record)>, Error> {
        let _ = (owner, now);
        Err(Error::unsupported(
            "this store cannot list sessions by owner",
        ))
    }
}

/// The data key under which the layer keeps a session's owner
/// ([`Session::set_owner`](crate::Session::set_owner)) as a JSON string.
/// Stores that index by owner read it from [`Record::owner`] and
/// [`Changes::owner_change`].
pub const OWNER_KEY: &str = "\u{10FFFF}owner";

/// The name under which stores that index sessions by owner keep an
/// owner's index (a Redis key, a directory): the SHA-256 of the owner, in
/// lowercase hex. An owner is any string (separators, `{}` of Redis hash
/// tags, `..`, non-ASCII, any length); its digest is 64 characters that are
/// safe in every key and file name, and no two owners share one.
#[cfg(any(
    feature = "redis-store",
    feature = "file-store",
    feature = "mongodb-store"
))]
pub(crate) fn owner_digest(owner: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(owner.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The data key under which the layer keeps what an application recorded
/// to describe a session on a sessions page
/// ([`Session::set_owner_meta`](crate::Session::set_owner_meta)).
pub const OWNER_META_KEY: &str = "\u{10FFFF}owner_meta";

/// The data key under which the layer keeps the stamp of a session's last
/// write, for stores that ask for it ([`SessionStore::stamps_writes`]).
/// Stores keep it like any other key; the layer takes it out before a
/// handler sees the session. Keys starting with U+10FFFF are the layer's.
pub const STAMP_KEY: &str = "\u{10FFFF}stamp";

#[async_trait]
impl<S: SessionStore + ?Sized> SessionStore for Arc<S> {
    async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        (**self).load(id, now).await
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error> {
        (**self).create(id, record).await
    }

    async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
        (**self).apply(id, changes).await
    }

    async fn delete(&self, id: &SessionId) -> Result<(), Error> {
        (**self).delete(id).await
    }

    async fn take(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        (**self).take(id, now).await
    }

    async fn delete_expired(&self, now: u64) -> Result<u64, Error> {
        (**self).delete_expired(now).await
    }

    fn stamps_writes(&self) -> bool {
        (**self).stamps_writes()
    }

    async fn load_seen(
        &self,
        id: &SessionId,
        now: u64,
        seen: &str,
    ) -> Result<Option<Record>, Error> {
        (**self).load_seen(id, now, seen).await
    }

    async fn owned(&self, owner: &str, now: u64) -> Result<Vec<(SessionId, Record)>, Error> {
        (**self).owned(owner, now).await
    }

    async fn lease(
        &self,
        id: &SessionId,
        holder: &str,
        hold: std::time::Duration,
    ) -> Result<bool, Error> {
        (**self).lease(id, holder, hold).await
    }

    async fn release(&self, id: &SessionId, holder: &str) -> Result<(), Error> {
        (**self).release(id, holder).await
    }

    fn id_cookie(&self) -> IdCookie {
        (**self).id_cookie()
    }
}

/// How a session's id travels in its cookie (or header).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum IdCookie {
    /// The id and a MAC under the layer's key: forged ids never reach the
    /// store.
    #[default]
    Signed,
    /// Flask-Session's cookie, so that a Flask app reads it: the raw id,
    /// or the id signed by itsdangerous (`FlaskSessionStore`).
    #[cfg(feature = "flask-session")]
    FlaskSession(crate::codec::FlaskSessionIds),
}

/// Seconds since the Unix epoch by the system clock: for the sweep, which
/// runs outside any layer, and the conformance suite.
#[cfg_attr(not(any(feature = "tokio", feature = "testing")), allow(dead_code))]
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs [`SessionStore::delete_expired`] every `period` in a Tokio task,
/// for stores without native expiry (memory, file, SQL). Failures are
/// logged and retried at the next tick. Abort the returned handle to stop.
///
/// The sweep runs outside any layer, so it judges expiry by the system
/// clock: with a layer on a clock of its own (a test clock), run
/// `delete_expired` yourself with that clock's time instead.
///
/// # Panics
/// When called outside a Tokio runtime.
#[cfg(feature = "tokio")]
pub fn spawn_cleanup<S: SessionStore + ?Sized>(
    store: Arc<S>,
    period: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match store.delete_expired(now()).await {
                Ok(0) => {}
                Ok(removed) => tracing::debug!(removed, "expired sessions removed"),
                Err(error) => tracing::warn!(%error, "removing expired sessions failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `Session::keys` promises sorted keys, the kv example's answers and
    /// Flask's cookies rely on it: a dependency that turns on serde_json's
    /// `preserve_order` (bson 2 does) would break that for the whole build.
    #[test]
    fn session_data_keeps_its_keys_sorted_in_every_build() {
        let mut data = SessionData::new();
        data.insert("b".into(), Value::from(1));
        data.insert("a".into(), Value::from(2));
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["a", "b"],
            "a dependency turned on serde_json's preserve_order"
        );
    }

    #[test]
    fn changes_apply_in_order_cleared_removed_set() {
        let mut record = Record::new(
            json!({"a": 1, "b": 2}).as_object().unwrap().clone(),
            false,
            10,
            20,
        );
        let changes = Changes {
            removed: vec!["a".into()],
            set: vec![("c".into(), json!(3)), ("a".into(), json!(4))],
            permanent: Some(true),
            ..Changes::expiry(20, 30)
        };
        changes.apply_to(&mut record).unwrap();
        assert_eq!(
            Value::Object(record.data.clone()),
            json!({"a": 4, "b": 2, "c": 3})
        );
        assert!(record.permanent);
        assert_eq!(record.expires_at, 30);
        let cleared = Changes {
            cleared: true,
            set: vec![("z".into(), json!(0))],
            ..Changes::expiry(20, 40)
        };
        cleared.apply_to(&mut record).unwrap();
        assert_eq!(Value::Object(record.data), json!({"z": 0}));
        assert!(Changes::expiry(1, 5).is_expiry_only());
    }

    /// Expectations compare values exactly: `-0.0` is not `0.0` (another
    /// request wrote it), as the stores that compare JSON text (Redis,
    /// MongoDB) already see it; `1` is not `1.0`; nested maps compare
    /// member by member whatever order they were written in.
    #[test]
    fn expectations_compare_values_exactly() {
        let record = |value: Value| {
            let data = json!({ "x": value }).as_object().unwrap().clone();
            Record::new(data, false, 10, 20)
        };
        let expecting = |value: Value| Changes {
            expected: vec![("x".into(), Some(value))],
            set: vec![("x".into(), json!(5))],
            ..Changes::expiry(20, 30)
        };
        let negative_zero = Value::from(-0.0_f64);
        for (held, read) in [
            (negative_zero.clone(), json!(0.0)),
            (json!(0.0), negative_zero.clone()),
            (json!([1, {"z": negative_zero}]), json!([1, {"z": 0.0}])),
            (json!(1.0), json!(1)),
        ] {
            let error = expecting(read.clone())
                .apply_to(&mut record(held.clone()))
                .unwrap_err();
            assert_eq!(
                error.kind(),
                crate::ErrorKind::Conflict,
                "{held} read as {read}"
            );
        }
        let nested: Value =
            serde_json::from_str(r#"{"b": [1.5, -0.0], "a": {"d": 1, "c": null}}"#).unwrap();
        let same: Value =
            serde_json::from_str(r#"{"a": {"c": null, "d": 1}, "b": [1.5, -0.0]}"#).unwrap();
        expecting(same).apply_to(&mut record(nested)).unwrap();
    }

    #[test]
    fn a_conflict_leaves_the_record_as_it_was() {
        let original = Record::new(
            json!({"n": 1, "list": "not a list"})
                .as_object()
                .unwrap()
                .clone(),
            false,
            10,
            20,
        );
        let stale = Changes {
            expected: vec![("n".into(), Some(json!(0)))],
            set: vec![("x".into(), json!(1))],
            ..Changes::expiry(20, 30)
        };
        let misfit = Changes {
            merges: vec![
                ("n".into(), Merge::Add(1)),
                ("list".into(), Merge::Push(json!(1))),
            ],
            removed: vec!["n".into()],
            ..Changes::expiry(20, 30)
        };
        for changes in [stale, misfit] {
            let mut record = original.clone();
            let error = changes.apply_to(&mut record).unwrap_err();
            assert_eq!(error.kind(), crate::ErrorKind::Conflict);
            assert_eq!(record, original, "{changes:?} changed the record");
        }
        let mut record = original;
        let fits = Changes {
            expected: vec![("n".into(), Some(json!(1))), ("absent".into(), None)],
            merges: vec![("n".into(), Merge::Add(1)), ("n".into(), Merge::Add(1))],
            ..Changes::expiry(20, 30)
        };
        fits.apply_to(&mut record).unwrap();
        assert_eq!(record.data["n"], json!(3), "merges on one key add up");
    }
}
