//! `MongoStore`: sessions in MongoDB, one document per session.

use std::fmt;
use std::future::IntoFuture;
use std::time::Duration;

use async_trait::async_trait;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};

use super::net::{backoff, bounded};
use super::{Changes, Record, SessionId, SessionStore, owner_digest};
use crate::data::SessionData;
use crate::error::Error;

/// The most fields one update unsets; a request that removes more rewrites
/// `data` whole, under a version check (some servers that speak MongoDB's
/// protocol drop an `$unset` of more than 126 fields without a word).
const MAX_UNSET: usize = 100;

/// How often an apply that rewrites `data` whole tries again when another
/// write came in between its read and its write.
const REWRITE_TRIES: u32 = 128;

/// The default bound on every MongoDB call.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The database used when the URL names none.
const DEFAULT_DATABASE: &str = "session_layer";

/// Sessions in MongoDB, one document per session in a collection
/// (`sessions` by default):
///
/// ```text
/// { _id: "<session id>",
///   data: { "k<key>": "<the value's JSON>", ... },
///   permanent: false, created_at: <secs>, expires_at: <secs>,
///   expires: ISODate(...),          // the TTL index's field
///   v: <n>,                         // write count: a rewrite of data checks it
///   owner: "<sha256 of the owner>" } // when the session has one
/// ```
///
/// - One round trip per load (`find`) and per save (one `update` with
///   `$set`/`$unset` on single fields of `data`), none for routes that do
///   not touch the session. MongoDB applies an update to one document
///   atomically, so two requests of one user that write different keys
///   both survive; `take` is one `findOneAndDelete`.
/// - Each key is a field of `data`, its value kept as its JSON text, so
///   every JSON value comes back exactly as written (integers past 2^63,
///   floats, key order inside objects). A key becomes a field name with
///   `k` in front and every byte but ASCII letters, digits, `_` and `-`
///   percent-escaped, so any string is a key (MongoDB gives `.` and `$`
///   meanings of their own).
/// - Expiry: a TTL index on `expires` (MongoDB removes dead documents about
///   once a minute) and the `expires_at` check on every read, so a record
///   is never served a second past its time. `delete_expired` removes them
///   at once where there is no TTL monitor.
/// - The owner index is an index on `owner`, kept in the same update as
///   the data: a listing is one `find`. The field holds the owner's
///   SHA-256 in hex rather than the owner itself: any string is an owner
///   (one holding U+0000, at which some servers that speak MongoDB's
///   protocol cut a query's string, so that a listing missed its sessions;
///   one of any length, past the index key limit of MongoDB before 4.2),
///   and the record's own `data` has the last word on whose session it is.
/// - Call [`migrate`](Self::migrate) once to create the indexes.
/// - Every call is bounded by [`timeout`](Self::timeout) (5 s by default);
///   a MongoDB that is down gives a 503, and the driver reconnects by
///   itself when it returns.
///
/// Connections: the driver's pool (up to 10 per server by default); clones
/// share it.
#[derive(Clone)]
pub struct MongoStore {
    pub(super) collection: Collection<Document>,
    pub(super) timeout: Duration,
}

impl fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoStore")
            .field("namespace", &self.collection.namespace().to_string())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl MongoStore {
    /// Connects to the MongoDB at `url` (`mongodb://host[:port]/[database]`
    /// or `mongodb+srv://`); sessions go to the collection `sessions` of the
    /// URL's database (`session_layer` when it names none). Call
    /// [`migrate`](Self::migrate) before first use.
    ///
    /// The driver connects lazily: a server that is down shows at the
    /// first call (or `migrate`), as a store error.
    ///
    /// # Errors
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when the URL is
    /// invalid.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let mut options = bounded(DEFAULT_TIMEOUT, ClientOptions::parse(url).into_future()).await?;
        // Fail within the call's bound when no server answers, rather than
        // after the driver's 30 s.
        options.server_selection_timeout = Some(DEFAULT_TIMEOUT);
        options.connect_timeout = Some(DEFAULT_TIMEOUT);
        let client = Client::with_options(options).map_err(Error::store)?;
        let database = client
            .default_database()
            .unwrap_or_else(|| client.database(DEFAULT_DATABASE));
        Ok(Self::new(database.collection("sessions")))
    }

    /// A store on a collection of your own client.
    pub fn new(collection: Collection<Document>) -> Self {
        Self {
            collection,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Keeps the sessions in the collection `name` of the same database
    /// (default `sessions`).
    #[must_use]
    pub fn collection(mut self, name: &str) -> Self {
        let database = self
            .collection
            .client()
            .database(self.collection.namespace().db.as_str());
        self.collection = database.collection(name);
        self
    }

    /// The longest a MongoDB call may take before it fails (default 5 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Creates the indexes if they do not exist: the TTL index on
    /// `expires` (MongoDB then removes dead sessions by itself) and the
    /// owner index. Call it once at start-up.
    ///
    /// # Errors
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when MongoDB refuses
    /// or cannot be reached.
    pub async fn migrate(&self) -> Result<(), Error> {
        let ttl = IndexModel::builder()
            .keys(doc! { "expires": 1 })
            .options(
                IndexOptions::builder()
                    .name("expires_ttl".to_owned())
                    .expire_after(Duration::ZERO)
                    .build(),
            )
            .build();
        let owner = IndexModel::builder()
            .keys(doc! { "owner": 1 })
            .options(
                IndexOptions::builder()
                    .name("owner".to_owned())
                    .sparse(true)
                    .build(),
            )
            .build();
        bounded(
            self.timeout,
            self.collection.create_indexes([ttl, owner]).into_future(),
        )
        .await?;
        Ok(())
    }
}

impl MongoStore {
    /// `apply` for changes that remove many keys or merge: the record
    /// read, changed ([`Changes::apply_to`], which judges expectations and
    /// makes merges on the record as read) and written back whole if its
    /// version (`v`, which every write increments) is still the one read;
    /// else again, after a jittered pause.
    async fn rewrite(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
        let live = doc! { "_id": id.as_str(), "expires_at": { "$gt": to_i64(changes.now) } };
        for attempt in 0..REWRITE_TRIES {
            backoff(attempt).await;
            let found = bounded(
                self.timeout,
                self.collection.find_one(live.clone()).into_future(),
            )
            .await?;
            let Some(found) = found else {
                return Ok(false);
            };
            let version = match found.get("v") {
                Some(Bson::Int64(v)) => *v,
                Some(Bson::Int32(v)) => i64::from(*v),
                _ => 0,
            };
            let mut changed = record(&found)?;
            changes.apply_to(&mut changed)?;
            let mut whole = document(id, &changed);
            whole.insert("v", version + 1);
            let mut same = live.clone();
            same.insert("v", version);
            let replaced = bounded(
                self.timeout,
                self.collection.replace_one(same, whole).into_future(),
            )
            .await?;
            if replaced.matched_count == 1 {
                return Ok(true);
            }
        }
        Err(Error::store(
            "too many concurrent writes to one session to apply a large change",
        ))
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The `expires` field: a date, for the TTL index.
fn expiry_date(expires_at: u64) -> DateTime {
    DateTime::from_millis(to_i64(expires_at).saturating_mul(1000))
}

/// The field name of a session key: `k`, then the key's UTF-8 with every
/// byte but ASCII letters, digits, `_` and `-` written `%XX`. Never empty,
/// never starting with `$`, never a path (`.`), and nothing a server's own
/// path syntax reads (`[0]`, quotes, `*`).
fn field(key: &str) -> String {
    use std::fmt::Write;
    let mut name = String::with_capacity(key.len() + 1);
    name.push('k');
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            name.push(char::from(byte));
        } else {
            let _ = write!(name, "%{byte:02X}");
        }
    }
    name
}

/// The key of a field name [`field`] wrote.
fn key_of(name: &str) -> Option<String> {
    let escaped = name.strip_prefix('k')?.as_bytes();
    let mut key = Vec::with_capacity(escaped.len());
    let mut at = 0;
    while at < escaped.len() {
        if escaped[at] == b'%' {
            let hex = std::str::from_utf8(escaped.get(at + 1..at + 3)?).ok()?;
            key.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            key.push(escaped[at]);
            at += 1;
        }
    }
    String::from_utf8(key).ok()
}

fn data_path(key: &str) -> String {
    format!("data.{}", field(key))
}

fn json_text(value: &serde_json::Value) -> Bson {
    Bson::String(value.to_string())
}

/// The whole document of a new record under `id` (the `_id` written out:
/// an upsert on MongoDB takes it from the filter, on some servers that
/// speak its protocol only from the document).
fn document(id: &SessionId, record: &Record) -> Document {
    let data: Document = (record.data.iter())
        .map(|(key, value)| (field(key), json_text(value)))
        .collect();
    let mut document = doc! {
        "_id": id.as_str(),
        "data": data,
        "permanent": record.permanent,
        "created_at": to_i64(record.created_at),
        "expires_at": to_i64(record.expires_at),
        "expires": expiry_date(record.expires_at),
        "v": 0_i64,
    };
    if let Some(owner) = record.owner() {
        document.insert("owner", owner_digest(owner));
    }
    document
}

/// The one update that applies `changes`: single fields of `data` set and
/// unset (or `data` replaced, when cleared), the flag, the expiry and the
/// owner.
fn update(changes: &Changes) -> Document {
    let mut set = Document::new();
    let mut unset = Document::new();
    if changes.cleared {
        let data: Document = (changes.set.iter())
            .map(|(key, value)| (field(key), json_text(value)))
            .collect();
        set.insert("data", data);
    } else {
        for key in &changes.removed {
            // A key removed then set again is set: one path, one operator.
            if !changes.set.iter().any(|(k, _)| k == key) {
                unset.insert(data_path(key), "");
            }
        }
        for (key, value) in &changes.set {
            set.insert(data_path(key), json_text(value));
        }
    }
    if let Some(permanent) = changes.permanent {
        set.insert("permanent", permanent);
    }
    set.insert("expires_at", to_i64(changes.expires_at));
    set.insert("expires", expiry_date(changes.expires_at));
    match changes.owner_change() {
        Some(Some(owner)) => {
            set.insert("owner", owner_digest(owner));
        }
        Some(None) => {
            unset.insert("owner", "");
        }
        None => {}
    }
    let mut update = doc! { "$set": set, "$inc": { "v": 1_i64 } };
    if !unset.is_empty() {
        update.insert("$unset", unset);
    }
    update
}

/// How many fields of `data` an update for `changes` would unset.
fn unsets(changes: &Changes) -> usize {
    if changes.cleared {
        return 0;
    }
    let set = |key: &String| changes.set.iter().any(|(k, _)| k == key);
    changes.removed.iter().filter(|key| !set(key)).count()
}

/// A record read back from its document.
fn record(document: &Document) -> Result<Record, Error> {
    let broken = |what: &str| Error::store(format!("a session document has no valid {what}"));
    let data = document.get_document("data").map_err(|_| broken("data"))?;
    let mut values = SessionData::new();
    for (name, value) in data {
        let key = key_of(name).ok_or_else(|| broken("field name"))?;
        let text = value.as_str().ok_or_else(|| broken("value"))?;
        values.insert(key, serde_json::from_str(text).map_err(Error::store)?);
    }
    let time = |name: &str| match document.get(name) {
        Some(Bson::Int64(n)) => Ok(u64::try_from(*n).unwrap_or(0)),
        Some(Bson::Int32(n)) => Ok(u64::try_from(*n).unwrap_or(0)),
        _ => Err(broken(name)),
    };
    Ok(Record::new(
        values,
        // A boolean; some servers that speak MongoDB's protocol answer 1.
        match document.get("permanent") {
            Some(Bson::Boolean(permanent)) => *permanent,
            Some(Bson::Int32(n)) => *n != 0,
            Some(Bson::Int64(n)) => *n != 0,
            _ => false,
        },
        time("created_at")?,
        time("expires_at")?,
    ))
}

/// A duplicate `_id`: the insert of an upsert met a live record.
/// The `_id` of a session's lease document.
fn lease_id(id: &SessionId) -> String {
    format!("lease:{}", id.as_str())
}

fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match &*error.kind {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::Command(e) => e.code == 11000,
        _ => false,
    }
}

#[async_trait]
impl SessionStore for MongoStore {
    async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let filter = doc! { "_id": id.as_str(), "expires_at": { "$gt": to_i64(now) } };
        let found = bounded(self.timeout, self.collection.find_one(filter).into_future()).await?;
        found.as_ref().map(record).transpose()
    }

    /// An upsert that matches only an expired record: a live one makes the
    /// insert fail on its `_id`, and the answer is false.
    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error> {
        let filter =
            doc! { "_id": id.as_str(), "expires_at": { "$lte": to_i64(record.created_at) } };
        let replace = self
            .collection
            .replace_one(filter, document(id, record))
            .upsert(true);
        match tokio::time::timeout(self.timeout, replace.into_future()).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(error)) if is_duplicate_key(&error) => Ok(false),
            Ok(Err(error)) => Err(Error::store(error)),
            Err(elapsed) => Err(Error::store(elapsed)),
        }
    }

    async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
        if unsets(changes) > MAX_UNSET || !changes.merges.is_empty() {
            return self.rewrite(id, changes).await;
        }
        let live = || doc! { "_id": id.as_str(), "expires_at": { "$gt": to_i64(changes.now) } };
        // What the request read is part of the filter: the update matches
        // only a document whose fields still hold it, atomically. (A blind
        // write builds the filter once, as before the checks.)
        let mut filter = live();
        for (key, read) in &changes.expected {
            match read {
                Some(value) => filter.insert(data_path(key), json_text(value)),
                None => filter.insert(data_path(key), doc! { "$exists": false }),
            };
        }
        let updated = bounded(
            self.timeout,
            self.collection
                .update_one(filter, update(changes))
                .into_future(),
        )
        .await?;
        if updated.matched_count == 1 || changes.expected.is_empty() {
            return Ok(updated.matched_count == 1);
        }
        // Nothing matched: no live record, or one whose fields moved on.
        let found = self
            .collection
            .find_one(live())
            .projection(doc! { "_id": 1 });
        match bounded(self.timeout, found.into_future()).await? {
            Some(_) => Err(Error::conflict(
                "a session value changed since the request read it",
            )),
            None => Ok(false),
        }
    }

    async fn delete(&self, id: &SessionId) -> Result<(), Error> {
        bounded(
            self.timeout,
            self.collection
                .delete_one(doc! { "_id": id.as_str() })
                .into_future(),
        )
        .await?;
        Ok(())
    }

    async fn take(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let taken = bounded(
            self.timeout,
            self.collection
                .find_one_and_delete(doc! { "_id": id.as_str() })
                .into_future(),
        )
        .await?;
        let taken = taken.as_ref().map(record).transpose()?;
        Ok(taken.filter(|record| !record.is_expired(now)))
    }

    async fn delete_expired(&self, now: u64) -> Result<u64, Error> {
        let filter = doc! { "expires_at": { "$lte": to_i64(now) } };
        let deleted = bounded(
            self.timeout,
            self.collection.delete_many(filter).into_future(),
        )
        .await?;
        Ok(deleted.deleted_count)
    }

    /// One upsert of a document `_id: "lease:{id}"` (no session id holds
    /// a `:`) that matches only a lease past its time: taken when it
    /// matched or was inserted, held by another when the insert meets the
    /// live lease's `_id` (a duplicate key). Times in milliseconds of this
    /// process's clock; `expires` lets the TTL index drop leases a dead
    /// request left behind.
    async fn lease(&self, id: &SessionId, holder: &str, hold: Duration) -> Result<bool, Error> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let until = now.saturating_add(i64::try_from(hold.as_millis()).unwrap_or(i64::MAX));
        let filter = doc! { "_id": lease_id(id), "until": { "$lte": now } };
        let take = doc! { "$set": {
            "holder": holder,
            "until": until,
            "expires": DateTime::from_millis(until),
        } };
        let upsert = self.collection.update_one(filter, take).upsert(true);
        match tokio::time::timeout(self.timeout, upsert.into_future()).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(error)) if is_duplicate_key(&error) => Ok(false),
            Ok(Err(error)) => Err(Error::store(error)),
            Err(elapsed) => Err(Error::store(elapsed)),
        }
    }

    /// One `delete` of the lease, if `holder` still holds it.
    async fn release(&self, id: &SessionId, holder: &str) -> Result<(), Error> {
        let filter = doc! { "_id": lease_id(id), "holder": holder };
        bounded(
            self.timeout,
            self.collection.delete_one(filter).into_future(),
        )
        .await?;
        Ok(())
    }

    /// One `find` on the owner index.
    async fn owned(&self, owner: &str, now: u64) -> Result<Vec<(SessionId, Record)>, Error> {
        let filter = doc! { "owner": owner_digest(owner), "expires_at": { "$gt": to_i64(now) } };
        let list = async {
            let mut cursor = self.collection.find(filter).await?;
            let mut documents = Vec::new();
            while cursor.advance().await? {
                documents.push(cursor.deserialize_current()?);
            }
            Ok::<_, mongodb::error::Error>(documents)
        };
        let mut owned = Vec::new();
        for document in bounded(self.timeout, list).await? {
            let id = (document.get_str("_id").ok())
                .and_then(SessionId::parse)
                .ok_or_else(|| Error::store("a session document has no valid _id"))?;
            let record = record(&document)?;
            if record.owner() == Some(owner) {
                owned.push((id, record));
            }
        }
        Ok(owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OWNER_KEY;
    use serde_json::json;

    #[test]
    fn any_key_is_a_field_name_and_back() {
        for key in [
            "",
            "a",
            "a.b",
            "$set",
            "%",
            "%2E",
            "\0",
            "k",
            OWNER_KEY,
            "日本.$%",
        ] {
            let name = field(key);
            assert!(name.starts_with('k') && !name.contains('.') && !name.contains('$'));
            assert!(!name.contains('\0'));
            assert_eq!(key_of(&name).as_deref(), Some(key), "{key:?}");
        }
        assert_eq!(key_of("k%zz"), None);
        assert_eq!(key_of("x"), None);
        assert_eq!(key_of("k%2"), None);
        assert_eq!(key_of("k%FF"), None, "not UTF-8");
    }

    #[test]
    fn an_update_sets_and_unsets_single_fields() {
        let changes = Changes {
            removed: vec!["gone".into(), "again".into()],
            set: vec![
                ("again".into(), json!(1)),
                ("a.b".into(), json!({"x": [1]})),
            ],
            permanent: Some(true),
            ..Changes::expiry(10, 20)
        };
        let update = update(&changes);
        let set = update.get_document("$set").unwrap();
        assert_eq!(set.get_str("data.kagain").unwrap(), "1");
        assert_eq!(set.get_str("data.ka%2Eb").unwrap(), r#"{"x":[1]}"#);
        assert_eq!(field("日"), "k%E6%97%A5");
        assert_eq!(set.get_i64("expires_at").unwrap(), 20);
        assert!(set.get_bool("permanent").unwrap());
        let unset = update.get_document("$unset").unwrap();
        assert_eq!(unset.keys().collect::<Vec<_>>(), ["data.kgone"]);
    }

    #[test]
    fn a_record_round_trips_through_its_document() {
        let mut data = SessionData::new();
        data.insert("big".into(), json!(u64::MAX));
        data.insert("f".into(), json!(0.1));
        data.insert(OWNER_KEY.into(), json!("ann"));
        let original = Record::new(data, true, 5, 50);
        let id = SessionId::generate();
        let document = document(&id, &original);
        assert_eq!(document.get_str("_id").unwrap(), id.as_str());
        assert_eq!(document.get_str("owner").unwrap(), owner_digest("ann"));
        assert_eq!(record(&document).unwrap(), original);
    }
}
