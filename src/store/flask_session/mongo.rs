//! Flask-Session's records in MongoDB: documents `{id, val, expiration}`
//! (the key, the serialized dict as binary, a UTC date), which the TTL
//! index on `expiration` removes once they expire.

use std::future::IntoFuture;
use std::time::Duration;

use mongodb::IndexModel;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, Bson, DateTime, Document, doc};
use mongodb::options::IndexOptions;

use super::Raw;
use crate::error::Error;
use crate::store::MongoStore;
use crate::store::net::bounded;

pub(super) async fn migrate(store: &MongoStore) -> Result<(), Error> {
    // Flask-Session's own index (same keys and options, so creating it
    // where Flask-Session already did is no conflict), and one on `id`:
    // Flask-Session finds records by scanning the collection.
    let ttl = IndexModel::builder()
        .keys(doc! { "expiration": 1 })
        .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
        .build();
    let id = IndexModel::builder()
        .keys(doc! { "id": 1 })
        .options(IndexOptions::builder().unique(true).build())
        .build();
    let create = store.collection.create_indexes([ttl, id]);
    bounded(store.timeout, create.into_future()).await?;
    Ok(())
}

pub(super) async fn get(store: &MongoStore, key: &str) -> Result<Option<Raw>, Error> {
    let find = store.collection.find_one(doc! { "id": key });
    let Some(found) = bounded(store.timeout, find.into_future()).await? else {
        return Ok(None);
    };
    Ok(raw(&found))
}

/// The record a document holds; `None` for a document without `val`.
fn raw(document: &Document) -> Option<Raw> {
    let bytes = match document.get("val")? {
        Bson::Binary(binary) => binary.bytes.clone(),
        // pymongo stores `bytes` as binary; a string only comes from
        // elsewhere, and reads as its UTF-8.
        Bson::String(text) => text.clone().into_bytes(),
        _ => return None,
    };
    let expiration = document.get("expiration").cloned();
    let expires_at = match &expiration {
        Some(Bson::DateTime(at)) => Some(u64::try_from(at.timestamp_millis() / 1000).unwrap_or(0)),
        // nx-27017 hands dates written by this driver back as text.
        Some(Bson::String(text)) => parse_date(text),
        // Without a date the TTL index never removes it; the layer's
        // refresh gives it one.
        _ => None,
    };
    // The next write's counter; the filter matches `v` as stored, so a
    // counter of a type or sign this store never writes (a corrupt or
    // foreign document) is replaced rather than never matched.
    let version = document.get("v").cloned();
    let count = match &version {
        Some(Bson::Int64(v)) => u64::try_from(*v).unwrap_or(0),
        Some(Bson::Int32(v)) => u64::try_from(*v).unwrap_or(0),
        _ => 0,
    };
    Some(Raw {
        bytes,
        expires_at,
        cas: count,
        expiration,
        version,
    })
}

/// Seconds since the epoch of `2026-11-26 09:08:30[.fff]` (UTC).
fn parse_date(text: &str) -> Option<u64> {
    use time::macros::format_description;
    let seconds = text.get(..19)?;
    let format = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let at = time::PrimitiveDateTime::parse(seconds, &format).ok()?;
    u64::try_from(at.assume_utc().unix_timestamp()).ok()
}

/// The document exactly as `old` was read: same `expiration` (every
/// Flask-Session write moves it, to the millisecond) and same write
/// counter `v`, as stored (every write of this store moves it). The value itself is
/// not compared: nx-27017, the test server, matches no binary value.
fn as_read(key: &str, old: &Raw) -> Document {
    let mut filter = doc! { "id": key };
    match &old.expiration {
        Some(expiration) => filter.insert("expiration", expiration.clone()),
        None => filter.insert("expiration", doc! { "$exists": false }),
    };
    match &old.version {
        Some(version) => filter.insert("v", version.clone()),
        None => filter.insert("v", doc! { "$exists": false }),
    };
    filter
}

fn binary(bytes: Vec<u8>) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    })
}

fn date(seconds: u64) -> DateTime {
    DateTime::from_millis(i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX))
}

pub(super) async fn swap(
    store: &MongoStore,
    key: &str,
    old: &Raw,
    bytes: Vec<u8>,
    expires_at: u64,
) -> Result<bool, Error> {
    // Wrapping, so the counter always moves.
    let next = i64::try_from(old.cas).map_or(1, |v| v.wrapping_add(1).max(1));
    let filter = as_read(key, old);
    let update =
        doc! { "$set": { "val": binary(bytes), "expiration": date(expires_at), "v": next } };
    let update = store.collection.update_one(filter, update);
    let done = bounded(store.timeout, update.into_future()).await?;
    Ok(done.matched_count == 1)
}

pub(super) async fn insert(
    store: &MongoStore,
    key: &str,
    bytes: Vec<u8>,
    expires_at: u64,
) -> Result<bool, Error> {
    let set = doc! { "id": key, "val": binary(bytes), "expiration": date(expires_at) };
    let upsert = store
        .collection
        .update_one(doc! { "id": key }, doc! { "$setOnInsert": set })
        .upsert(true);
    let done = bounded(store.timeout, upsert.into_future()).await?;
    Ok(done.upserted_id.is_some())
}

pub(super) async fn touch(
    store: &MongoStore,
    key: &str,
    expires_at: u64,
    now: u64,
) -> Result<bool, Error> {
    let filter = doc! { "id": key, "expiration": { "$gt": date(now) } };
    let update = doc! { "$set": { "expiration": date(expires_at) } };
    let update = store.collection.update_one(filter, update);
    let done = bounded(store.timeout, update.into_future()).await?;
    Ok(done.matched_count == 1)
}

pub(super) async fn take(store: &MongoStore, key: &str, old: &Raw) -> Result<bool, Error> {
    let delete = store.collection.delete_one(as_read(key, old));
    let done = bounded(store.timeout, delete.into_future()).await?;
    Ok(done.deleted_count == 1)
}

pub(super) async fn delete(store: &MongoStore, key: &str) -> Result<(), Error> {
    let delete = store.collection.delete_many(doc! { "id": key });
    bounded(store.timeout, delete.into_future()).await?;
    Ok(())
}
