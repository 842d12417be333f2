//! The coherent near cache against real servers: two caches on separate
//! connections to one Redis (a server of the test's own, so cutting its
//! clients or restarting it disturbs nothing else) or one PostgreSQL.
//!
//! What each step proves:
//! - a record written *behind the caches' backs* (a raw write that tells
//!   no one) is not seen while a cache holds the session: the cache really
//!   answers from memory, with no round trip;
//! - a write through the other cache is seen: the channel told this one
//!   (there is no time-to-live that could explain it);
//! - a cut channel makes the cache read through, and caching resumes when
//!   the channel is back.
#![cfg(all(
    feature = "caching-store",
    any(feature = "redis-store", feature = "postgres-store")
))]

mod common;

use std::future::Future;
use std::time::Duration;

use serde_json::json;
use session_layer::store::{CachingStore, Changes, Notifying, Record, SessionId, SessionStore};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn record(v: i64) -> Record {
    let data = json!({ "v": v }).as_object().unwrap().clone();
    Record::new(data, false, now(), now() + 600)
}

fn set(v: i64) -> Changes {
    let mut changes = Changes::expiry(now(), now() + 600);
    changes.set.push(("v".into(), json!(v)));
    changes
}

async fn v(store: &impl SessionStore, id: &SessionId) -> Option<i64> {
    let record = store.load(id, now()).await.unwrap()?;
    record.data["v"].as_i64()
}

/// Polls `check` until it holds, for at most 10 s: the wait for a message
/// to cross the channel, or for a reconnection.
async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What a test does to the server behind the caches' backs.
trait Backdoor {
    /// Sets `v` in the stored record without telling any cache.
    async fn write_silently(&self, id: &SessionId, v: i64);
    /// Cuts every cache's change channel (the server drops the listening
    /// connections).
    async fn cut_channel(&self);
}

/// The coherence checks, on two caches in front of `a` and `b` (separate
/// connections to one server).
async fn coherence_holds<S: Notifying>(a: S, b: S, backdoor: &impl Backdoor) {
    let a = CachingStore::coherent(a).unwrap();
    let b = CachingStore::coherent(b).unwrap();
    assert_eq!(a.ttl(), None, "records stay until they change");
    assert!(a.wait_caching(Duration::from_secs(10)).await);
    assert!(b.wait_caching(Duration::from_secs(10)).await);

    // Cached on both sides, and served from memory. (Each write's message
    // is let in before b's cache is put to the test, since a message still
    // on its way would rightly make b read through.)
    let id = SessionId::generate();
    let heard = b.changes_heard();
    assert!(a.create(&id, &record(1)).await.unwrap());
    eventually("b hears of the create", || async {
        b.changes_heard() > heard
    })
    .await;
    assert_eq!(v(&b, &id).await, Some(1));
    backdoor.write_silently(&id, 100).await;
    assert_eq!(v(&a, &id).await, Some(1), "a kept its own create");
    assert_eq!(v(&b, &id).await, Some(1), "b answers from its cache");

    // A write through a: a reads it at once, b once the message is in.
    assert!(a.apply(&id, &set(2)).await.unwrap());
    assert_eq!(v(&a, &id).await, Some(2), "read-your-writes on the writer");
    eventually("b sees a's write", || async { v(&b, &id).await == Some(2) }).await;
    // The writer updated its copy in place: still no round trip.
    backdoor.write_silently(&id, 101).await;
    assert_eq!(v(&a, &id).await, Some(2), "a answers its write from memory");
    assert_eq!(v(&b, &id).await, Some(2), "b cached the new record");
    // And the other way round.
    assert!(b.apply(&id, &set(3)).await.unwrap());
    eventually("a sees b's write", || async { v(&a, &id).await == Some(3) }).await;

    // A logout never comes back from either cache.
    a.delete(&id).await.unwrap();
    assert_eq!(v(&a, &id).await, None);
    eventually("b drops the deleted session", || async {
        v(&b, &id).await.is_none()
    })
    .await;

    // Nor does a cycled id (taken, its data moved to a new id).
    let old = SessionId::generate();
    assert!(a.create(&old, &record(4)).await.unwrap());
    assert_eq!(v(&b, &old).await, Some(4));
    let taken = b.take(&old, now()).await.unwrap().unwrap();
    let new = SessionId::generate();
    assert!(b.create(&new, &taken).await.unwrap());
    assert_eq!(v(&b, &old).await, None);
    eventually("a drops the cycled id", || async {
        v(&a, &old).await.is_none()
    })
    .await;
    assert_eq!(v(&a, &new).await, Some(4));

    // A cut channel: b reads through, so a write nobody reported is seen;
    // then b listens again and caches again.
    let id = SessionId::generate();
    let heard = b.changes_heard();
    assert!(a.create(&id, &record(5)).await.unwrap());
    eventually("b hears of the create", || async {
        b.changes_heard() > heard
    })
    .await;
    assert_eq!(v(&b, &id).await, Some(5));
    let losses = b.channel_losses();
    backdoor.cut_channel().await;
    eventually("b notices the cut", || async {
        b.channel_losses() > losses
    })
    .await;
    backdoor.write_silently(&id, 6).await;
    assert_eq!(v(&b, &id).await, Some(6), "no stale read while cut");
    assert!(
        b.wait_caching(Duration::from_secs(10)).await,
        "b listens again"
    );
    assert!(
        a.wait_caching(Duration::from_secs(10)).await,
        "a listens again"
    );
    backdoor.write_silently(&id, 7).await;
    assert_eq!(
        v(&b, &id).await,
        Some(7),
        "what b held before the cut is gone"
    );
    backdoor.write_silently(&id, 8).await;
    assert_eq!(v(&b, &id).await, Some(7), "b caches again");
    assert!(a.apply(&id, &set(9)).await.unwrap());
    eventually("the channel works again", || async {
        v(&b, &id).await == Some(9)
    })
    .await;
}

#[cfg(feature = "redis-store")]
mod redis_cache {
    use super::*;
    use common::{RedisServer, free_port};
    use session_layer::store::RedisStore;

    struct Redis {
        url: String,
        prefix: String,
    }

    impl Backdoor for Redis {
        async fn write_silently(&self, id: &SessionId, v: i64) {
            let client = redis::Client::open(self.url.as_str()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let key = format!("{}{}", self.prefix, id.as_str());
            let _: () = redis::cmd("HSET")
                .arg(key)
                .arg("d:v")
                .arg(v.to_string())
                .query_async(&mut conn)
                .await
                .unwrap();
        }

        async fn cut_channel(&self) {
            let client = redis::Client::open(self.url.as_str()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let killed: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(killed >= 2, "both caches were listening");
        }
    }

    async fn store(url: &str) -> RedisStore {
        RedisStore::connect(url).await.unwrap().prefix("coherent:")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_caches_on_one_redis_stay_coherent() {
        let Some(server) = RedisServer::start(free_port()) else {
            return;
        };
        let url = server.url();
        let backdoor = Redis {
            url: url.clone(),
            prefix: "coherent:".into(),
        };
        coherence_holds(store(&url).await, store(&url).await, &backdoor).await;
    }

    /// A restarted Redis (which keeps nothing here) must not leave a
    /// session served from the cache.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_redis_leaves_nothing_stale() {
        let port = free_port();
        let Some(server) = RedisServer::start(port) else {
            return;
        };
        let cache = CachingStore::coherent(store(&server.url()).await).unwrap();
        assert!(cache.wait_caching(Duration::from_secs(10)).await);
        let id = SessionId::generate();
        assert!(cache.create(&id, &record(1)).await.unwrap());
        assert_eq!(v(&cache, &id).await, Some(1));

        let losses = cache.channel_losses();
        server.stop();
        eventually("the cache notices", || async {
            cache.channel_losses() > losses
        })
        .await;
        assert!(
            cache.load(&id, now()).await.is_err(),
            "a Redis that is down is an error, not the cached copy"
        );
        let _server = RedisServer::start(port).unwrap();
        assert!(cache.wait_caching(Duration::from_secs(15)).await);
        eventually("the store reconnects", || async {
            cache.load(&id, now()).await.is_ok()
        })
        .await;
        assert_eq!(v(&cache, &id).await, None, "the restart lost the session");
    }

    /// Stores that cannot tell a cache of changes say so.
    #[tokio::test]
    async fn a_cluster_store_cannot_be_coherent() {
        let nodes = [
            "redis://127.0.0.1:7001",
            "redis://127.0.0.1:7002",
            "redis://127.0.0.1:7003",
        ];
        let Ok(store) = RedisStore::cluster(&nodes).await else {
            common::missing("the Redis Cluster on 127.0.0.1:7001-7003 is unreachable");
            return;
        };
        let error = CachingStore::coherent(store).unwrap_err();
        assert!(
            std::error::Error::source(&error)
                .unwrap()
                .to_string()
                .contains("time-bounded"),
            "{error:?}"
        );
    }
}

#[cfg(feature = "postgres-store")]
mod postgres_cache {
    use super::*;
    use session_layer::store::SqlStore;

    fn url() -> String {
        std::env::var("POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    fn table() -> String {
        format!("coherent_test_{}", std::process::id())
    }

    struct Postgres {
        pool: sqlx::PgPool,
    }

    impl Backdoor for Postgres {
        async fn write_silently(&self, id: &SessionId, v: i64) {
            let statement = format!(
                "UPDATE {} SET data = json_build_object('v', $1::bigint, chr(1114111), 1)::text WHERE id = $2",
                table()
            );
            let done = sqlx::query(&statement)
                .bind(v)
                .bind(id.as_str())
                .execute(&self.pool)
                .await
                .unwrap();
            assert_eq!(done.rows_affected(), 1);
        }

        async fn cut_channel(&self) {
            let listening = format!("LISTEN \"{}_changes\"", table());
            let killed: Vec<(bool,)> = sqlx::query_as(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1",
            )
            .bind(listening)
            .fetch_all(&self.pool)
            .await
            .unwrap();
            assert!(killed.len() >= 2, "both caches were listening: {killed:?}");
        }
    }

    async fn store() -> Option<SqlStore> {
        match SqlStore::connect(&url()).await {
            Ok(store) => Some(store.table(&table())),
            Err(e) => {
                common::missing(&format!("PostgreSQL is unreachable ({e})"));
                None
            }
        }
    }

    /// A table name at PostgreSQL's length limit still gets a change
    /// channel (a shorter derived name) and its writes still work.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_table_name_still_notifies() {
        let Ok(store) = SqlStore::connect(&url()).await else {
            common::missing("PostgreSQL is unreachable");
            return;
        };
        let table = format!("coherent_long_{}_{}", std::process::id(), "t".repeat(60));
        let table = &table[..63];
        let store = store.table(table);
        store.migrate().await.unwrap();
        let (a, b) = (
            CachingStore::coherent(store.clone()).unwrap(),
            CachingStore::coherent(store.clone()).unwrap(),
        );
        assert!(a.wait_caching(Duration::from_secs(10)).await);
        assert!(b.wait_caching(Duration::from_secs(10)).await);
        let id = SessionId::generate();
        assert!(a.create(&id, &record(1)).await.unwrap());
        assert_eq!(v(&b, &id).await, Some(1));
        assert!(a.apply(&id, &set(2)).await.unwrap());
        eventually("b hears of it", || async { v(&b, &id).await == Some(2) }).await;
        a.delete(&id).await.unwrap();
        let pool = sqlx::PgPool::connect(&url()).await.unwrap();
        sqlx::query(&format!("DROP TABLE {table}"))
            .execute(&pool)
            .await
            .unwrap();
    }

    /// A delete that times out here but lands at the server afterwards (a
    /// row lock held elsewhere) is reported back to the cache that sent it,
    /// which otherwise ignores its own writes' messages.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_timed_out_but_landed_is_not_served_from_the_cache() {
        let Some(store) = store().await else { return };
        let store = store.table(&format!("{}_late", table()));
        store.migrate().await.unwrap();
        let cache =
            CachingStore::coherent(store.clone().timeout(Duration::from_millis(300))).unwrap();
        assert!(cache.wait_caching(Duration::from_secs(10)).await);
        let id = SessionId::generate();
        assert!(cache.create(&id, &record(1)).await.unwrap());

        // Another transaction holds the row; the delete waits past its
        // timeout, then lands when the lock goes.
        let pool = sqlx::PgPool::connect(&url()).await.unwrap();
        let mut holder = pool.begin().await.unwrap();
        sqlx::query(&format!(
            "SELECT 1 FROM {}_late WHERE id = $1 FOR UPDATE",
            table()
        ))
        .bind(id.as_str())
        .execute(&mut *holder)
        .await
        .unwrap();
        assert!(cache.delete(&id).await.is_err(), "timed out");
        assert_eq!(v(&cache, &id).await, Some(1), "the delete has not landed");
        holder.commit().await.unwrap();
        eventually("the late delete reaches the cache", || async {
            v(&cache, &id).await.is_none()
        })
        .await;
        sqlx::query(&format!("DROP TABLE {}_late", table()))
            .execute(&pool)
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_caches_on_one_postgres_stay_coherent() {
        let (Some(a), Some(b)) = (store().await, store().await) else {
            return;
        };
        a.migrate().await.unwrap();
        let pool = sqlx::PgPool::connect(&url()).await.unwrap();
        coherence_holds(a, b, &Postgres { pool: pool.clone() }).await;
        sqlx::query(&format!("DROP TABLE {}", table()))
            .execute(&pool)
            .await
            .unwrap();
    }
}
