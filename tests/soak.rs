//! Concurrency soak: many clients over many sessions, every request writing
//! its own key, against every store. At the end every write is present (per
//! key atomicity held), no request failed, and resident memory stayed flat
//! (no leak). Bounded in count (and by each store's timeouts), loopback only.
#![cfg(all(
    feature = "axum",
    feature = "memory-store",
    feature = "file-store",
    feature = "caching-store"
))]

mod common;

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::routing::{get, put};
use common::{Jar, missing, with_cookie};
use http::StatusCode;
use session_layer::store::SessionStore;
use session_layer::{Error, Key, Session, SessionLayer};
use tower::ServiceExt;

const SESSIONS: usize = 20;
const WRITERS: usize = 25;
const ROUNDS: usize = 8;
/// Growth of resident memory tolerated between the first and the last
/// round: allocator noise, not a leak of 20 × 25 × 7 requests.
const RSS_SLACK: u64 = 32 << 20;

async fn set(session: Session, Path(key): Path<String>) -> Result<&'static str, Error> {
    session.insert(key, true)?;
    Ok("ok")
}

async fn count(session: Session) -> String {
    session.len().to_string()
}

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

async fn soak(name: &str, store: Arc<dyn SessionStore>) {
    let app: Router = Router::new()
        .route("/set/{key}", put(set))
        .route("/count", get(count))
        .layer(SessionLayer::new(Key::from_bytes(&[4; 32]).unwrap()).with_store(store));
    let mut cookies = Vec::new();
    for _ in 0..SESSIONS {
        let mut jar = Jar::new();
        let response = jar
            .send(
                &app,
                http::Request::put("/set/start")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        cookies.push(jar.header().unwrap());
    }
    let mut baseline = 0;
    for round in 0..ROUNDS {
        let mut tasks = tokio::task::JoinSet::new();
        for cookie in &cookies {
            for writer in 0..WRITERS {
                let (app, cookie) = (app.clone(), cookie.clone());
                tasks.spawn(async move {
                    let request = http::Request::put(format!("/set/r{round}w{writer}"))
                        .header(http::header::COOKIE, cookie)
                        .body(axum::body::Body::empty())
                        .unwrap();
                    app.oneshot(request).await.unwrap().status()
                });
            }
        }
        while let Some(status) = tasks.join_next().await {
            assert_eq!(
                status.unwrap(),
                StatusCode::OK,
                "{name}: a request failed in round {round}"
            );
        }
        if round == 0 {
            baseline = rss();
        }
    }
    for cookie in &cookies {
        let response = app
            .clone()
            .oneshot(with_cookie("/count", cookie))
            .await
            .unwrap();
        let body = common::body_text(response).await;
        assert_eq!(
            body,
            (1 + ROUNDS * WRITERS).to_string(),
            "{name}: writes were lost"
        );
    }
    let grown = rss().saturating_sub(baseline);
    println!(
        "{name}: {} requests, every write present, resident memory grew {} KiB after the first round",
        SESSIONS * (1 + ROUNDS * WRITERS),
        grown / 1024
    );
    assert!(
        grown < RSS_SLACK,
        "{name}: resident memory grew {grown} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_store_keeps_every_concurrent_write_without_leaking() {
    use session_layer::store::{CachingStore, FileStore, MemoryStore};
    soak("memory", Arc::new(MemoryStore::new())).await;
    let dir = tempfile::tempdir().unwrap();
    soak("file", Arc::new(FileStore::new(dir.path()).unwrap())).await;
    soak(
        "caching over memory",
        Arc::new(CachingStore::new(MemoryStore::new())),
    )
    .await;

    #[cfg(feature = "redis-store")]
    match session_layer::store::RedisStore::connect("redis://127.0.0.1:6379").await {
        Ok(store) => {
            soak(
                "redis",
                Arc::new(store.prefix(format!("soak:{}:", std::process::id()))),
            )
            .await
        }
        Err(e) => {
            missing(&format!("Redis is unreachable ({e})"));
        }
    }
    #[cfg(any(
        feature = "postgres-store",
        feature = "mysql-store",
        feature = "sqlite-store"
    ))]
    {
        let sqlite = format!("sqlite:{}", dir.path().join("soak.db").display());
        for (name, url) in [
            ("postgres", "postgres://postgres@127.0.0.1:5432/test"),
            ("mysql", "mysql://root@127.0.0.1:3306/test"),
            ("sqlite", sqlite.as_str()),
        ] {
            match session_layer::store::SqlStore::connect(url).await {
                Ok(store) => {
                    let table = format!("sessions_soak_{}", std::process::id());
                    let store = store.table(&table);
                    store.migrate().await.unwrap();
                    soak(name, Arc::new(store)).await;
                    if name != "sqlite" {
                        drop_table(url, &table).await;
                    }
                }
                Err(e) => {
                    missing(&format!("{name} at {url} is unreachable ({e})"));
                }
            }
        }
    }
    #[cfg(feature = "mongodb-store")]
    if let Some(server) = common::ServerProcess::start_mongo(common::free_port()) {
        let store = session_layer::store::MongoStore::connect(&format!("{}/soak", server.url()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        soak("mongodb", Arc::new(store)).await;
    }
    #[cfg(feature = "memcached-store")]
    match session_layer::store::MemcachedStore::connect("memcache://127.0.0.1:11211").await {
        Ok(store) => {
            soak(
                "memcached",
                Arc::new(store.prefix(format!("soak:{}:", std::process::id()))),
            )
            .await
        }
        Err(e) => {
            missing(&format!("Memcached is unreachable ({e})"));
        }
    }
}

#[cfg(any(feature = "postgres-store", feature = "mysql-store"))]
async fn drop_table(url: &str, table: &str) {
    let statement = format!("DROP TABLE {table}");
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
}
