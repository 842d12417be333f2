//! Flask-Session 0.8's server-side sessions, on the servers the other
//! stores connect to: the same keys, tables and documents, the same
//! serialized dict, so a Flask app and an Axum app share one login.

#[cfg(feature = "memcached-store")]
mod memcached;
#[cfg(feature = "mongodb-store")]
mod mongo;
#[cfg(feature = "redis-store")]
mod redis;
#[cfg(any(
    feature = "postgres-store",
    feature = "mysql-store",
    feature = "sqlite-store"
))]
mod sql;

use std::fmt;

use async_trait::async_trait;

use crate::codec::flask_session as record;
pub use crate::codec::flask_session::Serialization;

use super::net::backoff;
use super::{Changes, IdCookie, Record, SessionId, SessionStore};
use crate::codec::FlaskSessionIds;
use crate::error::Error;

/// Tries of a compare-and-swap before `apply` gives up: as many as the
/// Memcached store's, enough for a hundred concurrent writers to one
/// session.
const CAS_ATTEMPTS: u32 = 128;

/// The expiry given to a record read without one (a Memcached item set
/// to never expire): a year from the read.
const NO_EXPIRY: u64 = 365 * 24 * 60 * 60;

/// Sessions kept as Flask-Session 0.8 keeps them, so that a Flask app
/// with Flask-Session and an Axum app behind this crate's layer read and
/// write the same sessions on the same server: Redis (one server or a
/// cluster), Memcached, the SQLAlchemy backend's table on PostgreSQL,
/// MariaDB/MySQL or SQLite, or MongoDB.
///
/// ```no_run
/// # #[cfg(feature = "redis-store")]
/// # async fn run() -> Result<(), session_layer::Error> {
/// use session_layer::{Key, SessionLayer};
/// use session_layer::codec::FlaskSessionIds;
/// use session_layer::store::{FlaskSessionStore, RedisStore};
///
/// // Flask: SESSION_TYPE = "redis", SESSION_KEY_PREFIX = "session:" (the defaults).
/// let store = FlaskSessionStore::redis(RedisStore::connect("redis://127.0.0.1/").await?)
///     .ids(FlaskSessionIds::unsigned());
/// // The layer's own key (32 bytes or more) only makes session handles
/// // here; the Flask `SECRET_KEY` goes to `FlaskSessionIds::signed`.
/// let layer = SessionLayer::new(Key::from_env("SESSION_SECRET")?)
///     .with_store(store)
///     .lifetime(std::time::Duration::from_secs(31 * 24 * 60 * 60)); // PERMANENT_SESSION_LIFETIME
/// # Ok(()) }
/// ```
///
/// **The record.** The key is the prefix (`session:` by default, as
/// Flask-Session's `SESSION_KEY_PREFIX`) and the id; the value is the
/// session's dict serialized by msgspec, MessagePack by default, JSON
/// with [`Serialization::Json`] (both are read, as Flask-Session reads
/// both; a pickle from Flask-Session before 0.7 is never loaded: that
/// session reads as none). A permanent session carries `"_permanent":
/// true` in the dict. Bytes, datetimes, tuples and sets read as the flask
/// codec reads them from Flask's cookie (see its table), and keep their
/// MessagePack type when a handler writes them back. The record expires
/// with the layer's [`lifetime`](crate::SessionLayer::lifetime), which
/// should equal Flask's `PERMANENT_SESSION_LIFETIME`. An empty session is
/// not stored and an emptied one is deleted, as in Flask-Session.
///
/// **The cookie.** Flask-Session's own: the raw id (its default) or the
/// id signed by itsdangerous with the Flask `SECRET_KEY`
/// (`SESSION_USE_SIGNER`): see [`FlaskSessionIds`]. The layer's key still
/// makes [handles](crate::Session::handle); ids have the 43-character
/// shape of `secrets.token_urlsafe(32)` (`SESSION_ID_LENGTH = 32`, the
/// default), and any other cookie is refused before any I/O, so a Flask
/// app configured with another length makes sessions this layer cannot
/// read.
///
/// **Concurrent writes.** Flask-Session rewrites the whole record on
/// every save, so a Flask request that saves overwrites whatever a
/// concurrent request wrote to other keys (the last writer wins). This
/// store's own saves keep the per-key guarantee of every store of this
/// crate: `apply` reads the record, applies the request's changes to it
/// and writes it back only if it is still what was read (Redis: a script
/// comparing the value's SHA-1; Memcached: its CAS token; SQL: an `UPDATE`
/// matching the old value; MongoDB: an update filtered on the old
/// `expiration`, which every Flask-Session write moves, and on a write
/// counter `v` of this store's own, which Flask-Session leaves alone),
/// retrying otherwise. Two round trips per save, more under contention;
/// one per load. A Flask request with `SESSION_REFRESH_EACH_REQUEST =
/// True` (the default) rewrites the whole record even when it only read
/// it, so a save of this store that lands while one runs is lost.
///
/// **What the format lacks.** The record holds no creation time: each load
/// counts as the session's creation, so an
/// [absolute timeout](crate::SessionLayer::absolute_timeout) never ends a
/// session and a [`not_before`](crate::SessionLayer::not_before) hook
/// never voids one (end sessions by deleting their records, or with
/// [`Sessions::end`](crate::Sessions::end)). Flask-Session keeps no owner
/// index, so [`Sessions::of`](crate::Sessions::of) answers
/// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported), while
/// [`Session::set_owner`](crate::Session::set_owner) still succeeds and
/// writes its value into the dict, where the Flask app sees it as a key
/// starting with U+10FFFF: leave it out here.
///
/// **Beside other settings.** It has no leases (the Flask app would not
/// honour them): with
/// [`serialize_requests`](crate::SessionLayer::serialize_requests), every
/// request that sends a session cookie answers 501. A
/// `CachingStore` in front of it (feature
/// `caching-store`) is time-bounded only, and cannot give a client its own
/// writes back on another server: Flask-Session's cookie has no room for
/// the write stamp, and the Flask app's writes (a logout included) reach
/// the cache only when its copy expires (5 s by default). Use it without a
/// cache.
#[derive(Clone)]
pub struct FlaskSessionStore {
    backend: Backend,
    prefix: String,
    serialization: Serialization,
    ids: FlaskSessionIds,
}

/// The server, through the connection of one of this crate's stores.
#[derive(Clone)]
enum Backend {
    #[cfg(feature = "redis-store")]
    Redis(super::RedisStore),
    #[cfg(feature = "memcached-store")]
    Memcached(std::sync::Arc<super::MemcachedStore>),
    #[cfg(any(
        feature = "postgres-store",
        feature = "mysql-store",
        feature = "sqlite-store"
    ))]
    Sql(sql::Table),
    #[cfg(feature = "mongodb-store")]
    Mongo(super::MongoStore),
}

impl fmt::Debug for FlaskSessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match &self.backend {
            #[cfg(feature = "redis-store")]
            Backend::Redis(_) => "redis",
            #[cfg(feature = "memcached-store")]
            Backend::Memcached(_) => "memcached",
            #[cfg(any(
                feature = "postgres-store",
                feature = "mysql-store",
                feature = "sqlite-store"
            ))]
            Backend::Sql(_) => "sql",
            #[cfg(feature = "mongodb-store")]
            Backend::Mongo(_) => "mongodb",
        };
        f.debug_struct("FlaskSessionStore")
            .field("backend", &backend)
            .field("prefix", &self.prefix)
            .field("serialization", &self.serialization)
            .field("ids", &self.ids)
            .finish()
    }
}

/// A record as read from the server.
pub(super) struct Raw {
    /// The serialized dict.
    bytes: Vec<u8>,
    /// When it expires, if the server says.
    expires_at: Option<u64>,
    /// Memcached's CAS token; on MongoDB, the document's write counter
    /// `v` (0: none yet).
    #[cfg_attr(
        not(any(feature = "memcached-store", feature = "mongodb-store")),
        allow(dead_code)
    )]
    cas: u64,
    /// MongoDB: `expiration` exactly as stored.
    #[cfg(feature = "mongodb-store")]
    expiration: Option<mongodb::bson::Bson>,
    /// MongoDB: `v` exactly as stored, whatever its type.
    #[cfg(feature = "mongodb-store")]
    version: Option<mongodb::bson::Bson>,
}

impl FlaskSessionStore {
    /// Flask-Session's `SESSION_TYPE = "redis"` (or a Redis Cluster):
    /// `SET prefix+id value EX lifetime`, through `store`'s connection
    /// (its own prefix is not used: see [`key_prefix`](Self::key_prefix)).
    #[cfg(feature = "redis-store")]
    pub fn redis(store: super::RedisStore) -> Self {
        Self::on(Backend::Redis(store))
    }

    /// Flask-Session's `SESSION_TYPE = "memcached"`, through `store`'s
    /// connections (its own prefix is not used: see
    /// [`key_prefix`](Self::key_prefix)). Items are written with flags 0,
    /// as pymemcache, python-memcached and pylibmc write bytes.
    #[cfg(feature = "memcached-store")]
    pub fn memcached(store: super::MemcachedStore) -> Self {
        Self::on(Backend::Memcached(std::sync::Arc::new(store)))
    }

    /// Flask-Session's `SESSION_TYPE = "sqlalchemy"`: the table `store`
    /// names ([`SqlStore::table`](super::SqlStore::table), `sessions` by
    /// default as `SESSION_SQLALCHEMY_TABLE`), with SQLAlchemy's columns
    /// `id`, `session_id` (prefix and id), `data` and `expiry` (naive UTC).
    /// [`migrate`](Self::migrate) creates it as Flask-Session does, if
    /// missing, and refuses a table of that name in another layout (a
    /// [`SqlStore`](super::SqlStore)'s own, also `sessions` by default).
    #[cfg(any(
        feature = "postgres-store",
        feature = "mysql-store",
        feature = "sqlite-store"
    ))]
    pub fn sql(store: super::SqlStore) -> Self {
        Self::on(Backend::Sql(sql::Table::new(store)))
    }

    /// Flask-Session's `SESSION_TYPE = "mongodb"`: documents `{id, val,
    /// expiration}` in `store`'s collection (for Flask-Session's defaults,
    /// connect to `mongodb://host/flask_session`: the collection is
    /// `sessions`).
    #[cfg(feature = "mongodb-store")]
    pub fn mongodb(store: super::MongoStore) -> Self {
        Self::on(Backend::Mongo(store))
    }

    fn on(backend: Backend) -> Self {
        Self {
            backend,
            prefix: "session:".to_owned(),
            serialization: Serialization::default(),
            ids: FlaskSessionIds::unsigned(),
        }
    }

    /// The prefix of every key (`SESSION_KEY_PREFIX`, default `session:`).
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How records are written (`SESSION_SERIALIZATION_FORMAT`, default
    /// MessagePack); both forms are read.
    #[must_use]
    pub fn serialization(mut self, serialization: Serialization) -> Self {
        self.serialization = serialization;
        self
    }

    /// How the cookie carries the id (default unsigned, as Flask-Session's
    /// `SESSION_USE_SIGNER = False`).
    #[must_use]
    pub fn ids(mut self, ids: FlaskSessionIds) -> Self {
        self.ids = ids;
        self
    }

    /// SQL: creates Flask-Session's table if it does not exist, as
    /// Flask-Session does at start-up. MongoDB: the TTL index on
    /// `expiration` Flask-Session creates, and a unique index on `id` (so
    /// loads do not scan the collection). Redis and Memcached: nothing.
    ///
    /// # Errors
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when the server
    /// refuses or cannot be reached, or when the SQL table exists without
    /// Flask-Session's columns (its cause names the table).
    pub async fn migrate(&self) -> Result<(), Error> {
        match &self.backend {
            #[cfg(any(
                feature = "postgres-store",
                feature = "mysql-store",
                feature = "sqlite-store"
            ))]
            Backend::Sql(table) => table.migrate().await,
            #[cfg(feature = "mongodb-store")]
            Backend::Mongo(store) => mongo::migrate(store).await,
            #[allow(unreachable_patterns)]
            _ => Ok(()),
        }
    }

    fn key(&self, id: &SessionId) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 43);
        key.push_str(&self.prefix);
        key.push_str(id.as_str());
        key
    }

    /// The record's bytes; an error for one too large for [`record::decode`]
    /// to read back, which would otherwise be stored and then read as no
    /// session.
    fn encode(&self, record: &Record, read: Option<&record::Decoded>) -> Result<Vec<u8>, Error> {
        let bytes = record::encode(self.serialization, &record.data, record.permanent, read);
        if bytes.len() > record::MAX_RECORD {
            return Err(Error::store(format!(
                "the session is {} bytes serialized; Flask-Session records are read up to {}",
                bytes.len(),
                record::MAX_RECORD
            )));
        }
        Ok(bytes)
    }

    /// The live record under `key` at `now`, as read and decoded.
    async fn read(&self, key: &str, now: u64) -> Result<Option<(Raw, record::Decoded)>, Error> {
        let Some(raw) = self.backend.get(key).await? else {
            return Ok(None);
        };
        if raw.expires_at.is_some_and(|at| at <= now) {
            return Ok(None);
        }
        let Some(decoded) = record::decode(&raw.bytes) else {
            tracing::debug!("a Flask-Session record could not be read; it counts as no session");
            return Ok(None);
        };
        Ok(Some((raw, decoded)))
    }
}

fn too_many_writers() -> Error {
    Error::store("too many concurrent writers to one session: the compare-and-swap kept losing")
}

/// The record the layer sees.
fn to_record(raw: &Raw, decoded: record::Decoded, now: u64) -> Record {
    let expires_at = raw.expires_at.unwrap_or(now.saturating_add(NO_EXPIRY));
    Record::new(decoded.data, decoded.permanent, now, expires_at)
}

#[async_trait]
impl SessionStore for FlaskSessionStore {
    async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let found = self.read(&self.key(id), now).await?;
        Ok(found.map(|(raw, decoded)| to_record(&raw, decoded, now)))
    }

    /// Added if the key is free; a record the layer's clock says expired
    /// (the server has not dropped it yet) is replaced by
    /// compare-and-swap, since its id is free again.
    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error> {
        let (key, bytes) = (self.key(id), self.encode(record, None)?);
        let (now, expires_at) = (record.created_at, record.expires_at);
        for attempt in 0..CAS_ATTEMPTS {
            backoff(attempt).await;
            if self.backend.insert(&key, bytes.clone(), expires_at).await? {
                return Ok(true);
            }
            let old = match self.backend.get(&key).await? {
                Some(old) if old.expires_at.is_none_or(|at| at > now) => return Ok(false),
                Some(old) => old,
                // Gone since the insert: insert again.
                None => continue,
            };
            if self
                .backend
                .swap(&key, &old, bytes.clone(), expires_at)
                .await?
            {
                return Ok(true);
            }
        }
        Err(too_many_writers())
    }

    async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
        let key = self.key(id);
        let (now, expires_at) = (changes.now, changes.expires_at);
        // A touch that misses is not the end of the session: the record
        // may be live without an expiry the server can compare (a MongoDB
        // document without `expiration`). The compare-and-swap below reads
        // it and decides. A change of the permanent flag is no touch: the
        // flag is `_permanent` in the dict.
        if changes.is_expiry_only()
            && changes.permanent.is_none()
            && self.backend.touch(&key, expires_at, now).await? == Some(true)
        {
            return Ok(true);
        }
        for attempt in 0..CAS_ATTEMPTS {
            backoff(attempt).await;
            let Some((raw, decoded)) = self.read(&key, now).await? else {
                return Ok(false);
            };
            let mut record = Record::new(decoded.data.clone(), decoded.permanent, now, expires_at);
            changes.apply_to(&mut record)?;
            let bytes = self.encode(&record, Some(&decoded))?;
            if self
                .backend
                .swap(&key, &raw, bytes, record.expires_at)
                .await?
            {
                return Ok(true);
            }
        }
        Err(too_many_writers())
    }

    async fn delete(&self, id: &SessionId) -> Result<(), Error> {
        self.backend.delete(&self.key(id)).await
    }

    async fn take(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let key = self.key(id);
        for attempt in 0..CAS_ATTEMPTS {
            backoff(attempt).await;
            let Some((raw, decoded)) = self.read(&key, now).await? else {
                return Ok(None);
            };
            if self.backend.take(&key, &raw).await? {
                return Ok(Some(to_record(&raw, decoded, now)));
            }
        }
        Err(too_many_writers())
    }

    async fn delete_expired(&self, now: u64) -> Result<u64, Error> {
        self.backend.delete_expired(now).await
    }

    fn id_cookie(&self) -> IdCookie {
        IdCookie::FlaskSession(self.ids.clone())
    }
}

/// Each server's half of the store, written in its own file.
impl Backend {
    /// The record under `key`, expired or not.
    async fn get(&self, key: &str) -> Result<Option<Raw>, Error> {
        match self {
            #[cfg(feature = "redis-store")]
            Self::Redis(store) => redis::get(store, key).await,
            #[cfg(feature = "memcached-store")]
            Self::Memcached(store) => memcached::get(store, key).await,
            #[cfg(any(
                feature = "postgres-store",
                feature = "mysql-store",
                feature = "sqlite-store"
            ))]
            Self::Sql(table) => table.get(key).await,
            #[cfg(feature = "mongodb-store")]
            Self::Mongo(store) => mongo::get(store, key).await,
        }
    }

    /// Replaces the record under `key` if it is still `old`.
    async fn swap(
        &self,
        key: &str,
        old: &Raw,
        bytes: Vec<u8>,
        expires_at: u64,
    ) -> Result<bool, Error> {
        match self {
            #[cfg(feature = "redis-store")]
            Self::Redis(store) => redis::swap(store, key, old, bytes, expires_at).await,
            #[cfg(feature = "memcached-store")]
            Self::Memcached(store) => memcached::swap(store, key, old, bytes, expires_at).await,
            #[cfg(any(
                feature = "postgres-store",
                feature = "mysql-store",
                feature = "sqlite-store"
            ))]
            Self::Sql(table) => table.swap(key, old, bytes, expires_at).await,
            #[cfg(feature = "mongodb-store")]
            Self::Mongo(store) => mongo::swap(store, key, old, bytes, expires_at).await,
        }
    }

    /// Adds a record under `key` unless one is there.
    async fn insert(&self, key: &str, bytes: Vec<u8>, expires_at: u64) -> Result<bool, Error> {
        match self {
            #[cfg(feature = "redis-store")]
            Self::Redis(store) => redis::insert(store, key, bytes, expires_at).await,
            #[cfg(feature = "memcached-store")]
            Self::Memcached(store) => memcached::insert(store, key, bytes, expires_at).await,
            #[cfg(any(
                feature = "postgres-store",
                feature = "mysql-store",
                feature = "sqlite-store"
            ))]
            Self::Sql(table) => table.insert(key, bytes, expires_at).await,
            #[cfg(feature = "mongodb-store")]
            Self::Mongo(store) => mongo::insert(store, key, bytes, expires_at).await,
        }
    }

    /// Moves the expiry of the record under `key` if it is live at `now`
    /// and has an expiry: `None` where the server cannot do that in one
    /// call (Memcached). `apply` takes its compare-and-swap path unless
    /// this says `Some(true)`.
    async fn touch(&self, key: &str, expires_at: u64, now: u64) -> Result<Option<bool>, Error> {
        match self {
            #[cfg(feature = "redis-store")]
            Self::Redis(store) => redis::touch(store, key, expires_at, now).await.map(Some),
            #[cfg(any(
                feature = "postgres-store",
                feature = "mysql-store",
                feature = "sqlite-store"
            ))]
            Self::Sql(table) => table.touch(key, expires_at, now).await.map(Some),
            #[cfg(feature = "mongodb-store")]
            Self::Mongo(store) => mongo::touch(store, key, expires_at, now).await.map(Some),
            #[cfg(feature = "memcached-store")]
            Self::Memcached(_) => {
                let _ = (key, expires_at, now);
                Ok(None)
            }
        }
    }

    /// Deletes the record under `key` if it is still `old`.
    async fn take(&self, key: &str, old: &Raw) -> Result<bool, Error> {
        match self {
            #[cfg(feature = "redis-store")]
            Self::Redis(store) => redis::take(store, key, old).await,
            #[cfg(feature = "memcached-store")]
            Self::Memcached(store) => memcached::take(store, key, old).await,
            #[cfg(any(
                feature = "postgres-store",
                feature = "mysql-store",
                feature = "sqlite-store"
            ))]
            Self::Sql(table) => table.take(key, old).await,
            #[cfg(feature = "mongodb-store")]
            Self::Mongo(store) => mongo::take(store, key, old).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        match self {
            #[cfg(feature = "redis-store")]
            Self::Redis(store) => store
                .run(::redis::cmd("DEL").arg(key))
                .await
                .map(|_: i64| ()),
            #[cfg(feature = "memcached-store")]
            Self::Memcached(store) => memcached::delete(store, key).await,
            #[cfg(any(
                feature = "postgres-store",
                feature = "mysql-store",
                feature = "sqlite-store"
            ))]
            Self::Sql(table) => table.delete(key).await,
            #[cfg(feature = "mongodb-store")]
            Self::Mongo(store) => mongo::delete(store, key).await,
        }
    }

    /// SQL only (the others expire records natively, MongoDB by its TTL
    /// index), as Flask-Session's `session_cleanup` command.
    async fn delete_expired(&self, now: u64) -> Result<u64, Error> {
        match self {
            #[cfg(any(
                feature = "postgres-store",
                feature = "mysql-store",
                feature = "sqlite-store"
            ))]
            Self::Sql(table) => table.delete_expired(now).await,
            #[allow(unreachable_patterns)]
            _ => {
                let _ = now;
                Ok(0)
            }
        }
    }
}
