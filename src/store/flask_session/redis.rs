//! Flask-Session's records on Redis: a string under `prefix+id` with a
//! TTL. Flask-Session writes `SET key value EX seconds`; this store gives
//! the TTL as an absolute time (`EXPIREAT`), so that it reads back to the
//! second.

use std::sync::LazyLock;

use redis::Script;
use sha1::{Digest, Sha1};

use super::Raw;
use crate::error::Error;
use crate::store::RedisStore;

/// The value and when it expires, in milliseconds since the epoch by the
/// server's clock (-1: never), in one round trip.
static GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local value = redis.call('GET', KEYS[1])
if not value then return false end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then return {value, -1} end
local now = redis.call('TIME')
return {value, tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + ttl}
",
    )
});

/// Writes ARGV[2], expiring at ARGV[3] (seconds since the epoch), if the
/// value's SHA-1 is still ARGV[1] (what the caller read): the
/// compare-and-swap of `apply`.
static SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local value = redis.call('GET', KEYS[1])
if not value or redis.sha1hex(value) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return 1
",
    )
});

/// Adds ARGV[1], expiring at ARGV[2], unless the key exists.
static INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return 1
",
    )
});

/// Moves the expiry to ARGV[1] if the record is live at ARGV[2] (the
/// layer's clock, in seconds since the epoch).
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return 0 end
if ttl >= 0 then
    local now = redis.call('TIME')
    if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + ttl <= tonumber(ARGV[2]) * 1000 then
        return 0
    end
end
return redis.call('EXPIREAT', KEYS[1], ARGV[1])
",
    )
});

/// Deletes the value if its SHA-1 is still ARGV[1].
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local value = redis.call('GET', KEYS[1])
if not value or redis.sha1hex(value) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
",
    )
});

pub(super) async fn get(store: &RedisStore, key: &str) -> Result<Option<Raw>, Error> {
    let found: Option<(Vec<u8>, i64)> = store.script(&GET, &[key], &[]).await?;
    Ok(found.map(|(bytes, expires_ms)| Raw {
        bytes,
        // To the nearest second: this store's own expiries are whole.
        expires_at: u64::try_from(expires_ms).ok().map(|ms| (ms + 500) / 1000),
        cas: 0,
        #[cfg(feature = "mongodb-store")]
        expiration: None,
        #[cfg(feature = "mongodb-store")]
        version: None,
    }))
}

pub(super) async fn swap(
    store: &RedisStore,
    key: &str,
    old: &Raw,
    bytes: Vec<u8>,
    expires_at: u64,
) -> Result<bool, Error> {
    let digest = sha1_hex(&old.bytes);
    let at = expires_at.to_string();
    let args: [&[u8]; 3] = [digest.as_bytes(), &bytes, at.as_bytes()];
    let swapped: i64 = store.script(&SWAP, &[key], &args).await?;
    Ok(swapped == 1)
}

pub(super) async fn insert(
    store: &RedisStore,
    key: &str,
    bytes: Vec<u8>,
    expires_at: u64,
) -> Result<bool, Error> {
    let at = expires_at.to_string();
    let added: i64 = store
        .script(&INSERT, &[key], &[&bytes, at.as_bytes()])
        .await?;
    Ok(added == 1)
}

pub(super) async fn touch(
    store: &RedisStore,
    key: &str,
    expires_at: u64,
    now: u64,
) -> Result<bool, Error> {
    let (at, now) = (expires_at.to_string(), now.to_string());
    let touched: i64 = store
        .script(&TOUCH, &[key], &[at.as_bytes(), now.as_bytes()])
        .await?;
    Ok(touched == 1)
}

pub(super) async fn take(store: &RedisStore, key: &str, old: &Raw) -> Result<bool, Error> {
    let digest = sha1_hex(&old.bytes);
    let taken: i64 = store.script(&TAKE, &[key], &[digest.as_bytes()]).await?;
    Ok(taken == 1)
}

/// The SHA-1 of `bytes` in lowercase hex, as Lua's `redis.sha1hex` gives it.
fn sha1_hex(bytes: &[u8]) -> String {
    Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
