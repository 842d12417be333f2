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
        if let Some(store) = cluster().await {
            session_layer::testing::check_store(Arc::new(store)).await;
        }
    }

    fn cluster_nodes() -> Vec<String> {
        let nodes = env_or(
            "REDIS_CLUSTER_NODES",
            "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003",
        );
        nodes.split(',').map(str::to_owned).collect()
    }

    async fn cluster() -> Option<RedisStore> {
        let nodes = cluster_nodes();
        let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
        match RedisStore::cluster(&nodes).await {
            Ok(store) => Some(store),
            Err(e) => {
                missing(&format!(
                    "a Redis Cluster at {nodes:?} is unreachable ({e})"
                ));
                None
            }
        }
    }

    /// The owner index, as `RedisStore` documents its keys, checked from
    /// behind the store's back.
    mod owners {
        use super::*;
        use ::redis::aio::ConnectionLike;
        use ::redis::cmd;
        use serde_json::json;
        use session_layer::store::{Changes, OWNER_KEY, Record, SessionId, SessionStore};

        fn now() -> u64 {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        }

        /// A prefix of this test's own, so that listing the index of a
        /// store shows only its entries.
        fn prefix(test: &str) -> String {
            format!("test-owners:{}:{test}:", std::process::id())
        }

        /// An owner no other test shares, with a hash tag in it.
        fn owner() -> String {
            format!("ann {{{}}}", &SessionId::generate().as_str()[..12])
        }

        /// The key of the sorted set indexing `owner`'s sessions.
        fn index_key(prefix: &str, owner: &str) -> String {
            use sha2::Digest;
            let digest: String = (sha2::Sha256::digest(owner.as_bytes()).iter())
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("{prefix}owner:{digest}")
        }

        fn owned(owner: &str, expires_at: u64) -> Record {
            let mut data = json!({"user": 1}).as_object().unwrap().clone();
            data.insert(OWNER_KEY.into(), json!(owner));
            Record::new(data, false, now(), expires_at)
        }

        async fn logins(store: &RedisStore, owner: &str, n: usize) -> Vec<SessionId> {
            let mut ids = Vec::new();
            for _ in 0..n {
                let id = SessionId::generate();
                assert!(
                    store
                        .create(&id, &owned(owner, now() + 3600))
                        .await
                        .unwrap()
                );
                ids.push(id);
            }
            ids
        }

        async fn listed(store: &RedisStore, owner: &str, at: u64) -> Vec<SessionId> {
            let mut ids: Vec<SessionId> = (store.owned(owner, at).await.unwrap().into_iter())
                .map(|(id, _)| id)
                .collect();
            ids.sort();
            ids
        }

        fn sorted(mut ids: Vec<SessionId>) -> Vec<SessionId> {
            ids.sort();
            ids
        }

        /// The session ids in the index, sorted.
        async fn entries(raw: &mut impl ConnectionLike, index: &str) -> Vec<SessionId> {
            let mut range = cmd("ZRANGE");
            range.arg(index).arg(0).arg(-1);
            let ids: Vec<String> = range.query_async(raw).await.unwrap();
            sorted(ids.iter().map(|id| SessionId::parse(id).unwrap()).collect())
        }

        async fn ttl(raw: &mut impl ConnectionLike, key: &str) -> i64 {
            cmd("TTL").arg(key).query_async(raw).await.unwrap()
        }

        /// Ages every entry of the index by 20 minutes, past any grace
        /// period a cluster listing allows an entry whose write may still
        /// be under way.
        async fn age(raw: &mut impl ConnectionLike, index: &str) {
            let entries: Vec<(String, f64)> = cmd("ZRANGE")
                .arg(index)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(raw)
                .await
                .unwrap();
            for (id, score) in entries {
                let aged = score as u64 - 20 * 60 * 1000;
                let _: i64 = cmd("ZADD")
                    .arg(index)
                    .arg("XX")
                    .arg(aged)
                    .arg(id)
                    .query_async(raw)
                    .await
                    .unwrap();
            }
        }

        async fn single() -> Option<(RedisStore, ::redis::aio::MultiplexedConnection, String)> {
            let store = super::store().await?;
            let url = env_or("REDIS_URL", "redis://127.0.0.1:6379");
            let raw = ::redis::Client::open(url).unwrap();
            let raw = raw.get_multiplexed_async_connection().await.unwrap();
            Some((store, raw, String::new()))
        }

        async fn cluster() -> Option<(RedisStore, ::redis::cluster_async::ClusterConnection)> {
            let store = super::cluster().await?;
            let raw = ::redis::cluster::ClusterClient::new(cluster_nodes()).unwrap();
            Some((store, raw.get_async_connection().await.unwrap()))
        }

        /// A session refreshed past the expiry its index was given when the
        /// owner was set (three days on, here) extends the index: an index
        /// never expires before a session it lists.
        async fn indexes_outlive_refreshed_sessions(
            store: RedisStore,
            raw: &mut impl ConnectionLike,
            prefix: &str,
        ) {
            let store = store.prefix(prefix);
            let owner = owner();
            let index = index_key(prefix, &owner);
            let (id, now) = (SessionId::generate(), now());
            assert!(store.create(&id, &owned(&owner, now + 60)).await.unwrap());
            let day: u64 = 86_400;
            let ttl_now = ttl(raw, &index).await;
            assert!(
                (day as i64..=day as i64 + 62).contains(&ttl_now),
                "the index lives a day past the session: {ttl_now} s"
            );
            let refresh = Changes::expiry(now, now + 3 * day);
            assert!(store.apply(&id, &refresh).await.unwrap());
            let ttl_later = ttl(raw, &index).await;
            assert!(
                ttl_later >= 4 * day as i64 - 5,
                "the index outlives the refreshed session: {ttl_later} s"
            );
            let mut unrelated = Changes::expiry(now, now + 3 * day + 60);
            unrelated.set.push(("x".into(), json!(1)));
            assert!(store.apply(&id, &unrelated).await.unwrap());
            assert_eq!(ttl(raw, &index).await, ttl_later, "no extension needed");
            assert_eq!(
                listed(&store, &owner, now + 2 * day).await,
                vec![id.clone()]
            );
            store.delete(&id).await.unwrap();
        }

        #[tokio::test]
        async fn redis_indexes_outlive_refreshed_sessions() {
            if let Some((store, mut raw, _)) = single().await {
                let prefix = prefix("outlive");
                indexes_outlive_refreshed_sessions(store, &mut raw, &prefix).await;
            }
        }

        #[tokio::test]
        async fn redis_cluster_indexes_outlive_refreshed_sessions() {
            if let Some((store, mut raw)) = cluster().await {
                let prefix = prefix("outlive");
                indexes_outlive_refreshed_sessions(store, &mut raw, &prefix).await;
            }
        }

        /// On one server the index is exact, save for sessions Redis
        /// expired (or evicted) itself: a listing drops their entries.
        #[tokio::test]
        async fn redis_listings_drop_the_entries_of_expired_sessions() {
            let Some((store, mut raw, _)) = single().await else {
                return;
            };
            let prefix = prefix("expired");
            let (store, owner) = (store.prefix(&prefix), owner());
            let index = index_key(&prefix, &owner);
            let ids = logins(&store, &owner, 2).await;
            assert_eq!(entries(&mut raw, &index).await, sorted(ids.clone()));
            // As Redis does when the key's time comes.
            let gone = format!("{prefix}{}", ids[1].as_str());
            let _: i64 = cmd("DEL").arg(gone).query_async(&mut raw).await.unwrap();
            assert_eq!(listed(&store, &owner, now()).await, [ids[0].clone()]);
            assert_eq!(entries(&mut raw, &index).await, [ids[0].clone()]);
            store.delete(&ids[0]).await.unwrap();
            assert_eq!(ttl(&mut raw, &index).await, -2, "an empty index is gone");
        }

        /// An owner who signs in again and again while old sessions expire
        /// unseen (no listing) keeps an index of bounded size: each add to
        /// a large index checks its oldest entries.
        #[tokio::test]
        async fn redis_indexes_stay_bounded_without_listings() {
            let Some((store, mut raw, _)) = single().await else {
                return;
            };
            let prefix = prefix("bounded");
            let (store, owner) = (store.prefix(&prefix), owner());
            let index = index_key(&prefix, &owner);
            let mut live = Vec::new();
            for (i, id) in logins(&store, &owner, 100).await.into_iter().enumerate() {
                if i % 10 == 0 {
                    live.push(id);
                } else {
                    let gone = format!("{prefix}{}", id.as_str());
                    let _: i64 = cmd("DEL").arg(gone).query_async(&mut raw).await.unwrap();
                }
            }
            live.extend(logins(&store, &owner, 40).await);
            let size = entries(&mut raw, &index).await.len();
            assert!(size <= 64 + 4, "{size} entries for 50 live sessions");
            assert_eq!(listed(&store, &owner, now()).await, sorted(live.clone()));
            for id in &live {
                store.delete(id).await.unwrap();
            }
        }

        /// A login to an owner of many sessions is never pruned from the
        /// index by its own write: the add to a large index checks its
        /// oldest entries, and the new one is among them when the others
        /// were added or checked in the same millisecond (a burst of
        /// logins) or the server's clock stepped back. The check ran
        /// before the write named the owner in the record, dropped the
        /// new entry, and "sign out everywhere" missed that session.
        #[tokio::test]
        async fn redis_a_login_is_never_pruned_by_its_own_write() {
            let Some((store, mut raw, _)) = single().await else {
                return;
            };
            let prefix = prefix("own-prune");
            let (store, other, owner) = (store.prefix(&prefix), owner(), owner());
            let index = index_key(&prefix, &owner);
            let mut ids = logins(&store, &owner, 70).await;
            // Every entry later than the next add: a clock an hour behind,
            // as after a step back (or ties within one millisecond).
            let later = (now() + 3600) * 1000;
            for id in &ids {
                let _: i64 = (cmd("ZADD")
                    .arg(&index)
                    .arg("XX")
                    .arg(later)
                    .arg(id.as_str()))
                .query_async(&mut raw)
                .await
                .unwrap();
            }
            let login = logins(&store, &owner, 1).await;
            ids.extend(login.clone());
            assert!(
                entries(&mut raw, &index).await.contains(&login[0]),
                "the new login's entry survived its own write"
            );
            assert_eq!(listed(&store, &owner, now()).await, sorted(ids.clone()));
            // A session moved in from another owner, the same way.
            let moved = logins(&store, &other, 1).await;
            let mut move_in = Changes::expiry(now(), now() + 3600);
            move_in.set.push((OWNER_KEY.into(), json!(owner)));
            assert!(store.apply(&moved[0], &move_in).await.unwrap());
            ids.extend(moved);
            assert_eq!(listed(&store, &owner, now()).await, sorted(ids.clone()));
            for id in &ids {
                store.delete(id).await.unwrap();
            }
        }

        /// A listing on one server reads the index a page at a time (so a
        /// long list never holds Redis for long): 700 sessions, with ties
        /// of equal scores across page boundaries, entries of ended
        /// sessions between them, and entries moved to the back between
        /// pages, are all listed, once each.
        #[tokio::test]
        async fn redis_a_long_listing_comes_whole_a_page_at_a_time() {
            let Some((store, mut raw, _)) = single().await else {
                return;
            };
            let prefix = prefix("own-pages");
            let (store, owner) = (store.prefix(&prefix), owner());
            let index = index_key(&prefix, &owner);
            let mut ids = logins(&store, &owner, 700).await;
            // Ties: groups of 300 share one score, across the 256-entry
            // pages.
            for (i, id) in ids.iter().enumerate() {
                let _: i64 = (cmd("ZADD")
                    .arg(&index)
                    .arg("XX")
                    .arg(1_000 + (i / 300) as u64)
                    .arg(id.as_str()))
                .query_async(&mut raw)
                .await
                .unwrap();
            }
            // Some ended behind the index's back: their entries stay, and
            // the listing drops them.
            let ended: Vec<SessionId> = ids.drain(..50).collect();
            for id in &ended {
                let _: i64 = cmd("DEL")
                    .arg(format!("{prefix}{}", id.as_str()))
                    .query_async(&mut raw)
                    .await
                    .unwrap();
            }
            assert_eq!(listed(&store, &owner, now()).await, sorted(ids.clone()));
            assert_eq!(
                entries(&mut raw, &index).await,
                sorted(ids.clone()),
                "dropped"
            );
            for id in &ids {
                store.delete(id).await.unwrap();
            }
            assert_eq!(listed(&store, &owner, now()).await, vec![]);
        }

        /// On a cluster the index is written before the session, so a
        /// listing meets entries whose write is still under way: it drops
        /// an entry whose session does not name the owner only once the
        /// entry is old enough that no such write can still land.
        #[tokio::test]
        async fn redis_cluster_listings_drop_stale_entries_once_old() {
            let Some((store, mut raw)) = cluster().await else {
                return;
            };
            let prefix = prefix("grace");
            let (store, owner) = (store.prefix(&prefix), owner());
            let index = index_key(&prefix, &owner);
            let ids = logins(&store, &owner, 3).await;
            let (live, ended, moved) = (&ids[0], &ids[1], &ids[2]);
            store.delete(ended).await.unwrap();
            let mut move_away = Changes::expiry(now(), now() + 3600);
            move_away.set.push((OWNER_KEY.into(), json!("bob")));
            assert!(store.apply(moved, &move_away).await.unwrap());
            // A login whose session write has not landed yet.
            let coming = SessionId::generate();
            let score = now() * 1000;
            let _: i64 = (cmd("ZADD").arg(&index).arg(score).arg(coming.as_str()))
                .query_async(&mut raw)
                .await
                .unwrap();
            assert_eq!(listed(&store, &owner, now()).await, vec![live.clone()]);
            assert_eq!(
                entries(&mut raw, &index).await,
                sorted(vec![
                    live.clone(),
                    ended.clone(),
                    moved.clone(),
                    coming.clone()
                ]),
                "young entries stay"
            );
            // The write lands, and the session is listed.
            assert!(
                store
                    .create(&coming, &owned(&owner, now() + 3600))
                    .await
                    .unwrap()
            );
            assert_eq!(
                listed(&store, &owner, now()).await,
                sorted(vec![live.clone(), coming.clone()])
            );
            age(&mut raw, &index).await;
            assert_eq!(
                listed(&store, &owner, now()).await,
                sorted(vec![live.clone(), coming.clone()])
            );
            assert_eq!(
                entries(&mut raw, &index).await,
                sorted(vec![live.clone(), coming.clone()]),
                "old entries of sessions ended or moved go"
            );
            for id in [live, moved, &coming] {
                store.delete(id).await.unwrap();
            }
        }

        /// On a cluster too, an owner who signs in again and again keeps a
        /// bounded index without listings: adds to a large index check its
        /// oldest entries, dropping those that are old and stale.
        #[tokio::test]
        async fn redis_cluster_indexes_stay_bounded_without_listings() {
            let Some((store, mut raw)) = cluster().await else {
                return;
            };
            let prefix = prefix("bounded");
            let (store, owner) = (store.prefix(&prefix), owner());
            let index = index_key(&prefix, &owner);
            let mut live = Vec::new();
            for (i, id) in logins(&store, &owner, 70).await.into_iter().enumerate() {
                if i % 7 == 0 {
                    live.push(id);
                } else {
                    store.delete(&id).await.unwrap();
                }
            }
            assert_eq!(
                entries(&mut raw, &index).await.len(),
                70,
                "ended, not dropped"
            );
            age(&mut raw, &index).await;
            live.extend(logins(&store, &owner, 10).await);
            let size = entries(&mut raw, &index).await.len();
            assert!(size < 70, "{size} entries for 20 live sessions");
            assert_eq!(listed(&store, &owner, now()).await, sorted(live.clone()));
            for id in &live {
                store.delete(id).await.unwrap();
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
    use std::time::Duration;

    use super::*;
    use session_layer::store::SqlStore;

    /// A connection pool for a test's own statements, beside the store.
    #[derive(Clone)]
    enum Db {
        #[cfg(feature = "postgres-store")]
        Postgres(sqlx::PgPool),
        #[cfg(feature = "mysql-store")]
        MySql(sqlx::MySqlPool),
        #[cfg(feature = "sqlite-store")]
        Sqlite(sqlx::SqlitePool),
    }

    /// The same body for every database, on its own pool type.
    macro_rules! on_db {
        ($db:expr, $pool:ident => $body:expr) => {
            match $db {
                #[cfg(feature = "postgres-store")]
                Db::Postgres($pool) => $body,
                #[cfg(feature = "mysql-store")]
                Db::MySql($pool) => $body,
                #[cfg(feature = "sqlite-store")]
                Db::Sqlite($pool) => $body,
            }
        };
    }

    impl Db {
        async fn connect(url: &str) -> Db {
            #[cfg(feature = "postgres-store")]
            if url.starts_with("postgres") {
                return Db::Postgres(sqlx::PgPool::connect(url).await.unwrap());
            }
            #[cfg(feature = "mysql-store")]
            if url.starts_with("mysql") {
                return Db::MySql(sqlx::MySqlPool::connect(url).await.unwrap());
            }
            #[cfg(feature = "sqlite-store")]
            if url.starts_with("sqlite") {
                return Db::Sqlite(sqlx::SqlitePool::connect(url).await.unwrap());
            }
            unreachable!("no SQL feature for {url}")
        }

        async fn run(&self, statement: &str) {
            on_db!(self, pool => {
                sqlx::query(statement).execute(pool).await.unwrap();
            })
        }

        async fn count(&self, query: &str) -> i64 {
            on_db!(self, pool => sqlx::query_scalar(query).fetch_one(pool).await.unwrap())
        }

        /// The statements the migration before owners ran.
        fn migration_before_owners(&self, t: &str) -> Vec<String> {
            match self {
                #[cfg(feature = "postgres-store")]
                Db::Postgres(_) => vec![
                    format!(
                        "CREATE TABLE IF NOT EXISTS {t} (id VARCHAR(43) COLLATE \"C\" PRIMARY KEY, data TEXT NOT NULL, \
                         permanent BOOLEAN NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL)"
                    ),
                    format!("CREATE INDEX IF NOT EXISTS {t}_expires_at ON {t} (expires_at)"),
                ],
                #[cfg(feature = "mysql-store")]
                Db::MySql(_) => vec![format!(
                    "CREATE TABLE IF NOT EXISTS {t} (id VARCHAR(43) CHARACTER SET ascii COLLATE ascii_bin PRIMARY KEY, \
                     data LONGTEXT CHARACTER SET utf8mb4 NOT NULL, permanent BOOLEAN NOT NULL, created_at BIGINT NOT NULL, \
                     expires_at BIGINT NOT NULL, INDEX {t}_expires_at (expires_at))"
                )],
                #[cfg(feature = "sqlite-store")]
                Db::Sqlite(_) => vec![
                    format!(
                        "CREATE TABLE IF NOT EXISTS {t} (id TEXT PRIMARY KEY, data TEXT NOT NULL, \
                         permanent INTEGER NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL)"
                    ),
                    format!("CREATE INDEX IF NOT EXISTS {t}_expires_at ON {t} (expires_at)"),
                ],
            }
        }

        /// A query counting the indexes of `t` that lead with `owner`.
        fn owner_indexes(&self, t: &str) -> String {
            match self {
                #[cfg(feature = "postgres-store")]
                Db::Postgres(_) => format!(
                    "SELECT COUNT(*) FROM pg_index i JOIN pg_attribute a \
                     ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                     WHERE i.indrelid = '{t}'::regclass AND a.attname = 'owner'"
                ),
                #[cfg(feature = "mysql-store")]
                Db::MySql(_) => format!(
                    "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
                     AND TABLE_NAME = '{t}' AND COLUMN_NAME = 'owner' AND SEQ_IN_INDEX = 1"
                ),
                #[cfg(feature = "sqlite-store")]
                Db::Sqlite(_) => format!(
                    "SELECT COUNT(*) FROM pragma_index_list('{t}') AS l, pragma_index_info(l.name) AS i \
                     WHERE i.seqno = 0 AND i.name = 'owner'"
                ),
            }
        }
    }

    /// Runs `check` on a store on a table of this run's own,
    /// `sessions_{name}_{pid}` (not migrated), with a pool for statements
    /// of its own, and drops the table whatever the outcome; skips when
    /// the server cannot be reached (a failure under CI=true).
    async fn with_table<F, Fut>(url: &str, what: &str, name: &str, check: F)
    where
        F: FnOnce(SqlStore, Db, String) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let store = match SqlStore::connect(url).await {
            Ok(store) => store,
            Err(e) => {
                missing(&format!("{what} at {url} is unreachable ({e})"));
                return;
            }
        };
        let table = format!("sessions_{name}_{}", std::process::id());
        let db = Db::connect(url).await;
        let outcome = tokio::spawn(check(store.table(&table), db.clone(), table.clone())).await;
        db.run(&format!("DROP TABLE IF EXISTS {table}")).await;
        if let Err(failed) = outcome {
            std::panic::resume_unwind(failed.into_panic());
        }
    }

    async fn conforms(url: &str, what: &str) {
        with_table(url, what, "test", |store, _, _| async move {
            // Processes starting at once take turns.
            let (a, b, c) = tokio::join!(store.migrate(), store.migrate(), store.migrate());
            for migrated in [a, b, c] {
                migrated.expect("migrate");
            }
            store.migrate().await.expect("migrate is idempotent");
            session_layer::testing::check_store(Arc::new(store.clone())).await;
            let swept = session_layer::store::SessionStore::delete_expired(&store, u64::MAX).await;
            assert!(swept.is_ok(), "{swept:?}");
        })
        .await;
    }

    /// A table the migration before owners made, holding a session:
    /// `migrate` adds the owner column and its index (run by several at
    /// once, and again after), the session still loads and saves, and
    /// owners are listed, that session among them once it has one.
    async fn upgrades_a_table_made_before_owners(url: &str, what: &str) {
        use session_layer::store::{Changes, OWNER_KEY, Record, SessionId, SessionStore};
        with_table(url, what, "upgrade", |store, db, table| async move {
            for statement in db.migration_before_owners(&table) {
                db.run(&statement).await;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let old = SessionId::generate();
            let insert = format!(
                "INSERT INTO {table} (id, data, permanent, created_at, expires_at) \
                 VALUES ('{}', '{{\"user\":\"old\"}}', false, {now}, {})",
                old.as_str(),
                now + 600
            );
            db.run(&insert).await;

            // Processes starting at once: one upgrades the table, the
            // others wait for it, then find nothing to do.
            let (a, b, c) = tokio::join!(store.migrate(), store.migrate(), store.migrate());
            for migrated in [a, b, c] {
                migrated.expect("migrate upgrades the table");
            }
            store
                .migrate()
                .await
                .expect("and changes nothing run again");
            let owner_indexes = db.count(&db.owner_indexes(&table)).await;
            assert_eq!(owner_indexes, 1, "one index on the owner column");
            let loaded = store.load(&old, now).await.unwrap();
            assert_eq!(loaded.expect("the old session loads").data["user"], "old");
            assert!(store.owned("ann", now).await.unwrap().is_empty());

            let mut owned = Changes::expiry(now, now + 600);
            owned.set = vec![(OWNER_KEY.into(), serde_json::json!("ann"))];
            assert!(
                store.apply(&old, &owned).await.unwrap(),
                "the old session saves"
            );
            let mut data = serde_json::Map::new();
            data.insert(OWNER_KEY.into(), serde_json::json!("ann"));
            let new = SessionId::generate();
            let record = Record::new(data, false, now, now + 600);
            assert!(store.create(&new, &record).await.unwrap());
            let listed = store.owned("ann", now).await.unwrap();
            let mut ids: Vec<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
            ids.sort_unstable();
            let mut expected = vec![old.as_str(), new.as_str()];
            expected.sort_unstable();
            assert_eq!(ids, expected, "both sessions listed");
            let (_, listed_old) = listed.iter().find(|(id, _)| *id == old).unwrap();
            assert_eq!(listed_old.data["user"], "old", "with their data");
        })
        .await;
    }

    /// Owners are matched exactly, whatever the database's string
    /// comparison (MySQL's ignores trailing spaces), those holding U+0000
    /// or the escape's mark included (PostgreSQL's text refuses U+0000);
    /// an owner over `MAX_OWNER_CHARS` is refused, never cut short.
    async fn owners_match_exactly(url: &str, what: &str) {
        use session_layer::store::{Changes, OWNER_KEY, Record, SessionId, SessionStore};
        with_table(url, what, "exact", |store, _, _| async move {
            store.migrate().await.unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let longest = "ü".repeat(SqlStore::MAX_OWNER_CHARS);
            let owners = [
                "ann",
                "ann ",
                "Ann",
                "änn",
                "a\0b",
                "a\u{10FFFF}0b",
                &longest,
            ];
            let record = |owner: &str| {
                let mut data = serde_json::Map::new();
                data.insert(OWNER_KEY.into(), serde_json::json!(owner));
                Record::new(data, false, now, now + 600)
            };
            let mut ids = Vec::new();
            for owner in owners {
                let id = SessionId::generate();
                assert!(
                    store.create(&id, &record(owner)).await.unwrap(),
                    "{owner:?}"
                );
                ids.push(id);
            }
            for (owner, id) in owners.iter().zip(&ids) {
                let listed = store.owned(owner, now).await.unwrap();
                let listed: Vec<&SessionId> = listed.iter().map(|(id, _)| id).collect();
                assert_eq!(listed, vec![id], "{owner:?} has its session only");
            }

            let too_long = "x".repeat(SqlStore::MAX_OWNER_CHARS + 1);
            let refused = store
                .create(&SessionId::generate(), &record(&too_long))
                .await;
            assert_eq!(refused.unwrap_err().kind(), session_layer::ErrorKind::Store);
            let mut moved = Changes::expiry(now, now + 600);
            moved.set = vec![(OWNER_KEY.into(), serde_json::json!(too_long))];
            let refused = store.apply(&ids[0], &moved).await;
            assert_eq!(refused.unwrap_err().kind(), session_layer::ErrorKind::Store);
            let kept = store.load(&ids[0], now).await.unwrap().unwrap();
            assert_eq!(
                kept.owner(),
                Some("ann"),
                "the refused save changed nothing"
            );
            assert!(store.owned(&too_long, now).await.unwrap().is_empty());
        })
        .await;
    }

    /// `migrate` at a start, on a table already up to date, waits for no
    /// reader of the table: an `ALTER TABLE` would (even one with nothing
    /// to add), and every session query would queue behind it.
    async fn migrating_again_waits_for_no_reader(url: &str, what: &str) {
        with_table(url, what, "readers", |store, db, table| async move {
            store.migrate().await.unwrap();
            let read = format!("SELECT COUNT(*) FROM {table}");
            on_db!(&db, pool => {
                let mut reading = pool.begin().await.unwrap();
                sqlx::query(&read).execute(&mut *reading).await.unwrap();
                let migrated = store.clone().timeout(Duration::from_secs(2)).migrate().await;
                reading.rollback().await.unwrap();
                migrated.expect("migrate waits for no reader");
            });
        })
        .await;
    }

    #[cfg(feature = "postgres-store")]
    fn postgres_url() -> String {
        env_or("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
    }

    #[cfg(feature = "mysql-store")]
    fn mysql_url() -> String {
        env_or("MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
    }

    #[cfg(feature = "postgres-store")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_store_conforms() {
        conforms(&postgres_url(), "PostgreSQL").await;
    }

    #[cfg(feature = "postgres-store")]
    #[tokio::test]
    async fn postgres_upgrades_a_table_made_before_owners() {
        upgrades_a_table_made_before_owners(&postgres_url(), "PostgreSQL").await;
    }

    #[cfg(feature = "postgres-store")]
    #[tokio::test]
    async fn postgres_owners_match_exactly() {
        owners_match_exactly(&postgres_url(), "PostgreSQL").await;
    }

    #[cfg(feature = "mysql-store")]
    #[tokio::test]
    async fn mysql_owners_match_exactly() {
        owners_match_exactly(&mysql_url(), "MariaDB/MySQL").await;
    }

    #[cfg(feature = "sqlite-store")]
    #[tokio::test]
    async fn sqlite_owners_match_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("sessions.db").display());
        owners_match_exactly(&url, "SQLite").await;
    }

    #[cfg(feature = "postgres-store")]
    #[tokio::test]
    async fn postgres_migrating_again_waits_for_no_reader() {
        migrating_again_waits_for_no_reader(&postgres_url(), "PostgreSQL").await;
    }

    #[cfg(feature = "mysql-store")]
    #[tokio::test]
    async fn mysql_migrating_again_waits_for_no_reader() {
        migrating_again_waits_for_no_reader(&mysql_url(), "MariaDB/MySQL").await;
    }

    #[cfg(feature = "sqlite-store")]
    #[tokio::test]
    async fn sqlite_migrating_again_waits_for_no_reader() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("sessions.db").display());
        migrating_again_waits_for_no_reader(&url, "SQLite").await;
    }

    #[cfg(feature = "mysql-store")]
    #[tokio::test]
    async fn mysql_upgrades_a_table_made_before_owners() {
        upgrades_a_table_made_before_owners(&mysql_url(), "MariaDB/MySQL").await;
    }

    #[cfg(feature = "sqlite-store")]
    #[tokio::test]
    async fn sqlite_upgrades_a_table_made_before_owners() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("sessions.db").display());
        upgrades_a_table_made_before_owners(&url, "SQLite").await;
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
        conforms(&mysql_url(), "MariaDB/MySQL").await;
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
    use session_layer::store::{MemcachedStore, SessionId, SessionStore};
    use std::time::Duration;

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

    /// Memcached reads a TTL past thirty days as a Unix time (one in 1970
    /// for a hold of 31 days): a lease held that long must still exclude
    /// another holder, not be gone at once.
    #[tokio::test]
    async fn memcached_a_lease_longer_than_thirty_days_holds() {
        let url = env_or("MEMCACHED_URL", "memcache://127.0.0.1:11211");
        let Ok(store) = MemcachedStore::connect(&url).await else {
            missing(&format!("Memcached at {url} is unreachable"));
            return;
        };
        let store = store.prefix(format!("test-lease:{}:", std::process::id()));
        let id = SessionId::generate();
        let month = Duration::from_secs(31 * 24 * 3600);
        assert!(store.lease(&id, "first", month).await.unwrap());
        assert!(
            !store.lease(&id, "second", month).await.unwrap(),
            "the first holder's lease vanished"
        );
        store.release(&id, "first").await.unwrap();
        assert!(store.lease(&id, "second", month).await.unwrap());
        store.release(&id, "second").await.unwrap();
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
