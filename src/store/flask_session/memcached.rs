//! Flask-Session's records on Memcached: an item under `prefix+id`, flags
//! 0, expiring with the session. Written through the meta protocol: CAS
//! tokens make `apply` and `take` compare-and-swap.

use async_memcached::{MetaProtocol, Status};

use super::Raw;
use crate::error::Error;
use crate::store::MemcachedStore;
use crate::store::memcached::{is_status, lost_race};

pub(super) async fn get(store: &MemcachedStore, key: &str) -> Result<Option<Raw>, Error> {
    let owned = key.to_owned();
    let found = store
        .with_client(store.deadline(), move |c| {
            Box::pin(async move {
                c.meta_get(&owned, false, None, Some(&["v", "c", "t"]))
                    .await
            })
        })
        .await?;
    let Some(found) = found else { return Ok(None) };
    let (Some(bytes), Some(cas)) = (found.data, found.cas) else {
        return Err(Error::store(
            "memcached answered without value or CAS token",
        ));
    };
    let expires_at = found
        .ttl_remaining
        .and_then(|ttl| u64::try_from(ttl).ok())
        .map(|ttl| crate::store::now() + ttl);
    Ok(Some(Raw {
        bytes,
        expires_at,
        cas,
        #[cfg(feature = "mongodb-store")]
        expiration: None,
        #[cfg(feature = "mongodb-store")]
        version: None,
    }))
}

pub(super) async fn swap(
    store: &MemcachedStore,
    key: &str,
    old: &Raw,
    bytes: Vec<u8>,
    expires_at: u64,
) -> Result<bool, Error> {
    let flags = [format!("C{}", old.cas), format!("T{expires_at}")];
    match store.set(store.deadline(), key, bytes, flags).await {
        Ok(()) => Ok(true),
        Err(error) if lost_race(&error) => Ok(false),
        Err(error) => Err(error),
    }
}

pub(super) async fn insert(
    store: &MemcachedStore,
    key: &str,
    bytes: Vec<u8>,
    expires_at: u64,
) -> Result<bool, Error> {
    let flags = [String::from("ME"), format!("T{expires_at}")];
    match store.set(store.deadline(), key, bytes, flags).await {
        Ok(()) => Ok(true),
        Err(error) if is_status(&error, &Status::NotStored) => Ok(false),
        Err(error) => Err(error),
    }
}

pub(super) async fn take(store: &MemcachedStore, key: &str, old: &Raw) -> Result<bool, Error> {
    let (key, cas) = (key.to_owned(), format!("C{}", old.cas));
    let result = store
        .with_client(store.deadline(), move |c| {
            Box::pin(async move { c.meta_delete(&key, false, None, Some(&[&cas])).await })
        })
        .await;
    match result {
        Ok(_) => Ok(true),
        Err(error) if lost_race(&error) => Ok(false),
        Err(error) => Err(error),
    }
}

pub(super) async fn delete(store: &MemcachedStore, key: &str) -> Result<(), Error> {
    let key = key.to_owned();
    let result = store
        .with_client(store.deadline(), move |c| {
            Box::pin(async move { c.meta_delete(&key, false, None, None).await })
        })
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(error) if is_status(&error, &Status::NotFound) => Ok(()),
        Err(error) => Err(error),
    }
}
