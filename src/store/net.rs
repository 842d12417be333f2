//! What the network stores (Redis, SQL, Memcached) share, written once: the
//! bound on every call, and the key prefix that lets one server hold other
//! data, or other apps' sessions, too.

#[cfg(any(feature = "redis-store", feature = "memcached-store"))]
use std::fmt;
use std::future::Future;
use std::time::Duration;

#[cfg(any(
    feature = "redis-store",
    feature = "memcached-store",
    feature = "postgres-store"
))]
use super::SessionId;
use crate::error::Error;

/// Runs `call`, failing with a store error when it takes longer than
/// `timeout`; the call's own error is kept as the source.
#[cfg_attr(
    not(any(
        feature = "redis-store",
        feature = "postgres-store",
        feature = "mysql-store",
        feature = "sqlite-store",
        feature = "mongodb-store"
    )),
    allow(dead_code)
)]
pub(super) async fn bounded<T, E>(
    timeout: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, Error>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(Error::store),
        Err(elapsed) => Err(Error::store(elapsed)),
    }
}

/// The prefix of every key a store writes (default `session:`).
#[cfg(any(feature = "redis-store", feature = "memcached-store"))]
#[derive(Clone)]
pub(super) struct KeyPrefix(Box<str>);

#[cfg(any(feature = "redis-store", feature = "memcached-store"))]
impl Default for KeyPrefix {
    fn default() -> Self {
        Self("session:".into())
    }
}

#[cfg(any(feature = "redis-store", feature = "memcached-store"))]
impl fmt::Debug for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(any(feature = "redis-store", feature = "memcached-store"))]
impl KeyPrefix {
    pub(super) fn new(prefix: impl Into<String>) -> Self {
        Self(prefix.into().into_boxed_str())
    }

    #[cfg_attr(
        not(any(feature = "redis-store", feature = "memcached-store")),
        allow(dead_code)
    )]
    pub(super) fn as_str(&self) -> &str {
        &self.0
    }

    /// The key of the session `id`.
    pub(super) fn key(&self, id: &SessionId) -> String {
        let mut key = String::with_capacity(self.0.len() + 43);
        key.push_str(&self.0);
        key.push_str(id.as_str());
        key
    }
}

/// The `prefix` and `timeout` builder methods of a store with a key prefix,
/// expanded into its `impl`; `$timeout_doc` says what the timeout bounds.
#[cfg(any(feature = "redis-store", feature = "memcached-store"))]
macro_rules! prefix_and_timeout {
    ($timeout_doc:literal) => {
        /// The prefix of every key (default `session:`), so the server can
        /// hold other data, or other apps' sessions, too.
        #[must_use]
        pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
            self.prefix = super::net::KeyPrefix::new(prefix);
            self
        }

        #[doc = $timeout_doc]
        #[must_use]
        pub fn timeout(mut self, timeout: Duration) -> Self {
            self.timeout = timeout;
            self
        }
    };
}
#[cfg(any(feature = "redis-store", feature = "memcached-store"))]
pub(super) use prefix_and_timeout;

/// The message a write publishes on a change channel (Redis, PostgreSQL):
/// `ORIGIN:ID`, the origin of the store value that wrote (in hex) and the
/// session id.
#[cfg(any(feature = "redis-store", feature = "postgres-store"))]
pub(super) fn change_message(origin: u64, id: &SessionId) -> String {
    format!("{origin:x}:{}", id.as_str())
}

/// Reports a change message to a cache: as its own when the origin `own`
/// wrote it, as another's otherwise. Anything else is ignored.
#[cfg(all(
    feature = "caching-store",
    any(feature = "redis-store", feature = "postgres-store")
))]
pub(super) fn report(message: &str, own: u64, to: &super::Invalidations) {
    let Some((origin, id)) = message.split_once(':') else {
        return;
    };
    match u64::from_str_radix(origin, 16) {
        Ok(origin) if origin == own => to.changed_here(id),
        Ok(_) => to.changed(id),
        Err(_) => {}
    }
}

/// Before an optimistic retry (a compare-and-swap, a version-checked
/// rewrite): a jittered pause, so the losers of a race do not collide
/// again.
#[cfg(any(
    feature = "memcached-store",
    feature = "mongodb-store",
    feature = "flask-session"
))]
pub(super) async fn backoff(attempt: u32) {
    if attempt > 0 {
        let jitter = getrandom::u32().unwrap_or(attempt) % (200 * attempt.min(50));
        tokio::time::sleep(std::time::Duration::from_micros(u64::from(jitter))).await;
    }
}
