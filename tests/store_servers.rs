//! The conformance suite against real servers: Redis, Redis Cluster,
//! PostgreSQL, MariaDB/MySQL, SQLite and Memcached. scripts/test.sh starts
//! (or installs) each server; with CI=true a server that cannot be reached
//! fails its test instead of skipping it.
#![cfg(any(
    feature = "redis-store",
    feature = "postgres-store",
    feature = "mysql-store",
    feature = "sqlite-store",
    feature = "memcached-store",
    feature = "mongodb-store"
))]

mod common;

use std::sync::Arc;

use common::missing;

/// An address from the environment, or the local default.
fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[cfg(feature = "redis-store")]
mod redis {
    use super::*;
    use session_layer::store::RedisStore;

    pub(super) async fn store() -> Option<RedisStore> {
        let url = env_or("REDIS_URL", "redis://127.0.0.1:6379");
        match RedisStore::connect(&url).await {
            Ok(store) => Some(store.prefix(format!("test-session:{}:", std::process::id()))),
            Err(e) => {
                missing(&format!("Redis at {url} is unreachable ({e})"));
                None
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_store_conforms() {
        if let Some(store) = store().await {
            session_layer::testing::check_store(Arc::new(store)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_cluster_store_conforms() {
        let nodes = env_or(
            "REDIS_CLUSTER_NODES",
            "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003",
        );
        let nodes: Vec<&str> = nodes.split(',').collect();
        match RedisStore::cluster(&nodes).await {
            Ok(store) => session_layer::testing::check_store(Arc::new(store)).await,
            Err(e) => {
                missing(&format!(
                    "a Redis Cluster at {nodes:?} is unreachable ({e})"
                ));
            }
        }
    }
}

#[cfg(any(
    feature = "postgres-store",
    feature = "mysql-store",
    feature = "sqlite-store"
))]
mod sql {
    use super::*;
    use session_layer::store::SqlStore;

    /// A table of this run's own, migrated; dropped by the caller.
    async fn store(url: &str, what: &str) -> Option<SqlStore> {
        match SqlStore::connect(url).await {
            Ok(store) => {
                let store = store.table(&format!("sessions_test_{}", std::process::id()));
                store.migrate().await.expect("migrate");
                store.migrate().await.expect("migrate is idempotent");
                Some(store)
            }
            Err(e) => {
                missing(&format!("{what} at {url} is unreachable ({e})"));
                None
            }
        }
    }

    async fn conforms(url: &str, what: &str) {
        if let Some(store) = store(url, what).await {
            session_layer::testing::check_store(Arc::new(store.clone())).await;
            let swept = session_layer::store::SessionStore::delete_expired(&store, u64::MAX).await;
            assert!(swept.is_ok(), "{swept:?}");
            drop_table(url).await;
        }
    }

    /// Leaves the test database as it was.
    async fn drop_table(url: &str) {
        let statement = format!("DROP TABLE sessions_test_{}", std::process::id());
        #[cfg(feature = "postgres-store")]
        if url.starts_with("postgres") {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query(&statement).execute(&pool).await.unwrap();
        }
        #[cfg(feature = "mysql-store")]
        if url.starts_with("mysql") {
            let pool = sqlx::MySqlPool::connect(url).await.unwrap();
            sqlx::query(&statement).execute(&pool).await.unwrap();
        }
        let _ = (url, statement);
    }

    #[cfg(feature = "postgres-store")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_store_conforms() {
        conforms(
            &env_or("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"),
            "PostgreSQL",
        )
        .await;
    }

    /// A pool, and a store on a migrated table of this run's own
    /// (`sessions_NAME_PID`, dropped by the caller); `None` when the server
    /// cannot be reached (a failure under CI=true).
    #[cfg(feature = "postgres-store")]
    async fn postgres_table(name: &str) -> Option<(sqlx::PgPool, SqlStore, String)> {
        let url = env_or("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test");
        let Ok(pool) = sqlx::PgPool::connect(&url).await else {
            missing(&format!("PostgreSQL at {url} is unreachable"));
            return None;
        };
        let table = format!("sessions_{name}_{}", std::process::id());
        let store = SqlStore::postgres(pool.clone()).table(&table);
        store.migrate().await.unwrap();
        Some((pool, store, table))
    }

    /// A row an earlier version stored with a raw U+0000 (which PostgreSQL's
    /// JSON types cannot read) still takes a save: the store falls back to
    /// a transaction for it, and writes it back in the escaped form.
    #[cfg(feature = "postgres-store")]
    #[tokio::test]
    async fn postgres_rows_stored_before_the_escape_still_save() {
        use session_layer::store::{Changes, SessionId, SessionStore};
        let Some((pool, store, table)) = postgres_table("nul").await else {
            return;
        };
        let id = SessionId::generate();
        let insert = format!("INSERT INTO {table} VALUES ($1, $2, false, 0, 4000000000)");
        sqlx::query(&insert)
            .bind(id.as_str())
            .bind(r#"{"old":"a\u0000b"}"#)
            .execute(&pool)
            .await
            .unwrap();
        let mut changes = Changes::expiry(1, 4_000_000_000);
        changes.set = vec![("new".into(), serde_json::json!("c\u{0}d"))];
        let applied = store.apply(&id, &changes).await;
        let loaded = store.load(&id, 1).await;
        sqlx::query(&format!("DROP TABLE {table}"))
            .execute(&pool)
            .await
            .unwrap();
        assert!(applied.unwrap(), "the save went through");
        let data = loaded.unwrap().unwrap().data;
        assert_eq!(data["old"], "a\u{0}b");
        assert_eq!(data["new"], "c\u{0}d");
    }

    /// Saves keep each value's JSON as written: `jsonb` would spell `1e308`
    /// with 309 digits (a client could grow a row a hundredfold) and lose
    /// `-0.0`'s sign; a row an earlier version wrote holding U+10FFFF (the
    /// escape's mark) is read as it is.
    #[cfg(feature = "postgres-store")]
    #[tokio::test]
    async fn postgres_saves_keep_values_as_written() {
        use session_layer::store::{Changes, Record, SessionId, SessionStore};
        let Some((pool, store, table)) = postgres_table("values").await else {
            return;
        };
        let big = serde_json::json!([1e308, 1e308, 1e308, 5e-324, -0.0]);
        let id = SessionId::generate();
        let record = Record::new(
            serde_json::json!({"big": big}).as_object().unwrap().clone(),
            false,
            1,
            4_000_000_000,
        );
        assert!(store.create(&id, &record).await.unwrap());
        let mut changes = Changes::expiry(1, 4_000_000_000);
        changes.set = vec![("x".into(), serde_json::json!(1))];
        assert!(store.apply(&id, &changes).await.unwrap());
        let length: i32 =
            sqlx::query_scalar(&format!("SELECT length(data) FROM {table} WHERE id = $1"))
                .bind(id.as_str())
                .fetch_one(&pool)
                .await
                .unwrap();
        let loaded = store.load(&id, 1).await.unwrap().unwrap().data;
        // An earlier version's row: no marker, a raw mark in a value.
        let old = SessionId::generate();
        let insert = format!("INSERT INTO {table} VALUES ($1, $2, false, 0, 4000000000)");
        sqlx::query(&insert)
            .bind(old.as_str())
            .bind("{\"v\":\"\u{10FFFF}0 and \u{10FFFF}\u{10FFFF}\"}")
            .execute(&pool)
            .await
            .unwrap();
        let old_loaded = store.load(&old, 1).await.unwrap().unwrap().data;
        assert!(
            store.apply(&old, &changes).await.unwrap(),
            "an old row saves"
        );
        let old_saved = store.load(&old, 1).await.unwrap().unwrap().data;
        sqlx::query(&format!("DROP TABLE {table}"))
            .execute(&pool)
            .await
            .unwrap();
        assert!(length < 200, "the row stayed small: {length} characters");
        assert_eq!(loaded["big"], big);
        assert!(
            loaded["big"][4].as_f64().unwrap().is_sign_negative(),
            "-0.0 kept"
        );
        assert_eq!(old_loaded["v"], "\u{10FFFF}0 and \u{10FFFF}\u{10FFFF}");
        assert_eq!(old_saved["v"], old_loaded["v"], "and keeps it once saved");
        assert_eq!(old_saved["x"], 1);
    }

    /// A value nested deeper than MariaDB's JSON functions go (32 levels)
    /// still saves, and a session holding one can still be changed.
    #[cfg(feature = "mysql-store")]
    #[tokio::test]
    async fn mysql_saves_deeply_nested_values() {
        use session_layer::store::{Changes, Record, SessionId, SessionStore};
        let url = env_or("MYSQL_URL", "mysql://root@127.0.0.1:3306/test");
        let Ok(store) = SqlStore::connect(&url).await else {
            missing(&format!("MariaDB/MySQL at {url} is unreachable"));
            return;
        };
        let table = format!("sessions_deep_{}", std::process::id());
        let store = store.table(&table);
        store.migrate().await.unwrap();
        let mut deep = serde_json::json!(1);
        for _ in 0..60 {
            deep = serde_json::json!([deep]);
        }
        let id = SessionId::generate();
        let record = Record::new(
            serde_json::json!({"deep": deep})
                .as_object()
                .unwrap()
                .clone(),
            false,
            1,
            4_000_000_000,
        );
        assert!(store.create(&id, &record).await.unwrap());
        let mut changes = Changes::expiry(1, 4_000_000_000);
        changes.set = vec![("x".into(), serde_json::json!(1))];
        let applied = store.apply(&id, &changes).await;
        let mut changes = Changes::expiry(1, 4_000_000_000);
        changes.set = vec![("deeper".into(), serde_json::json!([deep]))];
        let applied_deep = store.apply(&id, &changes).await;
        let loaded = store.load(&id, 1).await;
        let pool = sqlx::MySqlPool::connect(&url).await.unwrap();
        sqlx::query(&format!("DROP TABLE {table}"))
            .execute(&pool)
            .await
            .unwrap();
        assert!(applied.unwrap(), "a session holding a deep value saves");
        assert!(applied_deep.unwrap(), "a deep value saves");
        let loaded = loaded.unwrap().unwrap().data;
        assert_eq!(loaded["deep"], deep);
        assert_eq!(loaded["x"], 1);
    }

    #[cfg(feature = "mysql-store")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn mysql_store_conforms() {
        conforms(
            &env_or("MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
            "MariaDB/MySQL",
        )
        .await;
    }

    /// A database whose default character set is latin1 still keeps emoji
    /// and CJK text: the migration pins utf8mb4 on the data column.
    #[cfg(feature = "mysql-store")]
    #[tokio::test]
    async fn mysql_on_a_latin1_database_keeps_any_text() {
        use session_layer::store::{Record, SessionId, SessionStore};
        let url = env_or("MYSQL_URL", "mysql://root@127.0.0.1:3306/test");
        let Ok(admin) = sqlx::MySqlPool::connect(&url).await else {
            missing(&format!("MariaDB/MySQL at {url} is unreachable"));
            return;
        };
        let database = format!("session_latin1_{}", std::process::id());
        let create =
            format!("CREATE DATABASE {database} CHARACTER SET latin1 COLLATE latin1_swedish_ci");
        sqlx::query(&create).execute(&admin).await.unwrap();
        let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
        let url = format!("{base}/{database}");
        // A table an earlier version made there: migrate says how to fix it.
        let pool = sqlx::MySqlPool::connect(&url).await.unwrap();
        let create_old = "CREATE TABLE old_sessions (id VARCHAR(43) PRIMARY KEY, \
                          data LONGTEXT NOT NULL, permanent BOOLEAN NOT NULL, \
                          created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL)";
        sqlx::query(create_old).execute(&pool).await.unwrap();
        let old = SqlStore::connect(&url).await.unwrap().table("old_sessions");
        let refused = old.migrate().await.unwrap_err();
        let refused = format!("{refused} {:?}", std::error::Error::source(&refused));
        assert!(
            refused.contains("ALTER TABLE old_sessions MODIFY data"),
            "{refused}"
        );
        let store = SqlStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let text = "😀 日本語 zoë \u{0}";
        let data = serde_json::json!({"text": text})
            .as_object()
            .unwrap()
            .clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let id = SessionId::generate();
        let record = Record::new(data, false, now, now + 600);
        let created = store.create(&id, &record).await;
        let loaded = store.load(&id, now).await;
        sqlx::query(&format!("DROP DATABASE {database}"))
            .execute(&admin)
            .await
            .unwrap();
        assert!(created.unwrap(), "the record was stored");
        assert_eq!(loaded.unwrap().unwrap().data["text"], text);
    }

    #[cfg(feature = "sqlite-store")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("sessions.db").display());
        conforms(&url, "SQLite").await;
    }

    #[cfg(feature = "sqlite-store")]
    #[tokio::test]
    async fn table_names_are_checked_and_migration_is_explicit() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("s.db").display());
        let store = SqlStore::connect(&url).await.unwrap();
        // Nothing was created behind our back: using it before migrate fails.
        let id = session_layer::store::SessionId::generate();
        assert!(
            session_layer::store::SessionStore::load(&store, &id, 0)
                .await
                .is_err()
        );
        for bad in ["", "1abc", "a-b", "a;drop table x", "a b"] {
            let store = store.clone();
            let attempt = std::panic::AssertUnwindSafe(move || store.table(bad));
            assert!(std::panic::catch_unwind(attempt).is_err(), "{bad:?}");
        }
        assert!(store.migration_sql()[0].starts_with("CREATE TABLE IF NOT EXISTS sessions "));
    }
}

#[cfg(feature = "memcached-store")]
mod memcached {
    use super::*;
    use session_layer::store::MemcachedStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memcached_store_conforms() {
        let url = env_or("MEMCACHED_URL", "memcache://127.0.0.1:11211");
        match MemcachedStore::connect(&url).await {
            Ok(store) => {
                let store = store.prefix(format!("test-session:{}:", std::process::id()));
                session_layer::testing::check_store(Arc::new(store)).await;
            }
            Err(e) => {
                missing(&format!("Memcached at {url} is unreachable ({e})"));
            }
        }
    }
}

#[cfg(feature = "mongodb-store")]
mod mongo {
    use super::*;
    use session_layer::store::MongoStore;

    /// A MongoDB-wire server of the test's own (nx-27017), and a store on
    /// it with its indexes.
    pub(super) async fn store() -> Option<(common::ServerProcess, MongoStore)> {
        let server = common::ServerProcess::start_mongo(common::free_port())?;
        let store = MongoStore::connect(&format!("{}/test", server.url()))
            .await
            .unwrap();
        store.migrate().await.expect("indexes");
        Some((server, store))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn mongodb_store_conforms() {
        if let Some((_server, store)) = store().await {
            session_layer::testing::check_store(Arc::new(store.clone())).await;
            // Past the conformance suite's records: the sweep finds the
            // expired ones (nx-27017 has no TTL monitor).
            session_layer::store::SessionStore::delete_expired(&store, u64::MAX / 2)
                .await
                .unwrap();
        }
    }
}
