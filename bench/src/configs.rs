//! One Axum Router per configuration, each with the same three routes:
//! `/rmw` (read-modify-write a counter), `/read` (read it) and
//! `/untouched` (never look at the session).

use axum::Router;
use axum::extract::FromRef;
use axum::routing::get;
use axum_extra::extract::cookie::{Cookie, Key as CookieKey, SignedCookieJar};
use session_layer::codec::FlaskCodec;
use std::time::Duration;

use session_layer::store::{CachingStore, SessionStore};
use session_layer::{DefaultErrorHandler, Key, Session, SessionLayer};

/// A configuration under test.
pub struct Config {
    pub name: &'static str,
    pub router: Router,
}

fn key() -> Key {
    Key::from_bytes(b"benchmark key, not a secret: 0123456789abcdef").unwrap()
}

async fn ours_rmw(session: Session) -> String {
    let n = session
        .update("count", |n: Option<u64>| n.unwrap_or(0) + 1)
        .unwrap();
    n.to_string()
}

async fn ours_read(session: Session) -> String {
    session
        .get::<u64>("count")
        .unwrap()
        .unwrap_or(0)
        .to_string()
}

async fn untouched() -> &'static str {
    "untouched"
}

pub fn ours_router(layer: SessionLayer) -> Router {
    ours(layer)
}

fn ours<K: Clone + Send + Sync + 'static>(layer: SessionLayer<DefaultErrorHandler, K>) -> Router {
    Router::new()
        .route("/rmw", get(ours_rmw))
        .route("/read", get(ours_read))
        .route("/untouched", get(untouched))
        .layer(layer.secure(false))
}

fn ours_with(store: impl SessionStore) -> Router {
    ours(SessionLayer::new(key()).with_store(store))
}

async fn ts_rmw(session: tower_sessions::Session) -> String {
    let n: u64 = session.get("count").await.unwrap().unwrap_or(0) + 1;
    session.insert("count", n).await.unwrap();
    n.to_string()
}

async fn ts_read(session: tower_sessions::Session) -> String {
    let n: u64 = session.get("count").await.unwrap().unwrap_or(0);
    n.to_string()
}

pub fn tower_sessions_router<S: tower_sessions::SessionStore + Clone>(store: S) -> Router {
    Router::new()
        .route("/rmw", get(ts_rmw))
        .route("/read", get(ts_read))
        .route("/untouched", get(untouched))
        .layer(tower_sessions::SessionManagerLayer::new(store).with_secure(false))
}

#[derive(Clone)]
struct JarState {
    key: CookieKey,
}

impl FromRef<JarState> for CookieKey {
    fn from_ref(state: &JarState) -> Self {
        state.key.clone()
    }
}

fn jar_count(jar: &SignedCookieJar) -> u64 {
    jar.get("session")
        .and_then(|c| serde_json::from_str::<serde_json::Value>(c.value()).ok())
        .and_then(|v| v["count"].as_u64())
        .unwrap_or(0)
}

async fn jar_rmw(jar: SignedCookieJar) -> (SignedCookieJar, String) {
    let n = jar_count(&jar) + 1;
    let value = serde_json::json!({ "count": n }).to_string();
    let mut cookie = Cookie::new("session", value);
    cookie.set_http_only(true);
    cookie.set_path("/");
    (jar.add(cookie), n.to_string())
}

async fn jar_read(jar: SignedCookieJar) -> String {
    jar_count(&jar).to_string()
}

fn axum_extra_router() -> Router {
    let state = JarState {
        key: CookieKey::from(&[7u8; 64]),
    };
    Router::new()
        .route("/rmw", get(jar_rmw))
        .route("/read", get(jar_read))
        .route("/untouched", get(untouched))
        .with_state(state)
}

/// The floor of any layer that writes a cookie: bare Axum answering the
/// read-modify-write route with a fixed 120-byte Set-Cookie, so the
/// harness's own cookie bookkeeping shows.
fn bare_with_cookie() -> Router {
    let line = format!(
        "session={}; HttpOnly; SameSite=Lax; Path=/",
        "x".repeat(120)
    );
    Router::new()
        .route(
            "/rmw",
            get(move || {
                let line = line.clone();
                async move { ([(http::header::SET_COOKIE, line)], "1") }
            }),
        )
        .route("/read", get(|| async { "0" }))
        .route("/untouched", get(untouched))
}

fn bare() -> Router {
    Router::new()
        .route("/rmw", get(|| async { "1" }))
        .route("/read", get(|| async { "0" }))
        .route("/untouched", get(untouched))
}

/// Every configuration whose server is reachable; the others are named
/// on stderr and left out.
pub async fn all(include_remote: bool) -> Vec<Config> {
    let mut configs = vec![
        Config {
            name: "bare axum",
            router: bare(),
        },
        Config {
            name: "control: bare axum + fixed Set-Cookie",
            router: bare_with_cookie(),
        },
        Config {
            name: "control: bare axum + a no-op layer",
            router: bare().layer(tower::util::MapRequestLayer::new(
                |request: http::Request<axum::body::Body>| request,
            )),
        },
        Config {
            name: "session-layer signed",
            router: ours(SessionLayer::signed(key())),
        },
        Config {
            name: "session-layer private",
            router: ours(SessionLayer::private(key())),
        },
        Config {
            name: "session-layer flask",
            router: ours(SessionLayer::flask(
                FlaskCodec::new("benchmark secret").unwrap(),
            )),
        },
        Config {
            name: "session-layer MemoryStore",
            router: ours_with(session_layer::store::MemoryStore::new()),
        },
        Config {
            name: "axum-extra SignedCookieJar",
            router: axum_extra_router(),
        },
        Config {
            name: "tower-sessions MemoryStore",
            router: tower_sessions_router(tower_sessions::MemoryStore::default()),
        },
    ];
    if !include_remote {
        return configs;
    }
    match session_layer::store::RedisStore::connect("redis://127.0.0.1:6379").await {
        Ok(store) => configs.push(Config {
            name: "session-layer RedisStore",
            router: ours_with(store.prefix("bench:ours:")),
        }),
        Err(e) => eprintln!("left out session-layer RedisStore: {e}"),
    }
    match coherent_redis().await {
        Ok(store) => configs.push(Config {
            name: "session-layer RedisStore + coherent cache",
            router: ours_with(store),
        }),
        Err(e) => eprintln!("left out session-layer RedisStore + coherent cache: {e}"),
    }
    match tower_sessions_redis().await {
        Ok(store) => configs.push(Config {
            name: "tower-sessions RedisStore",
            router: tower_sessions_router(store),
        }),
        Err(e) => eprintln!("left out tower-sessions RedisStore: {e}"),
    }
    match session_layer::store::SqlStore::connect("postgres://postgres@127.0.0.1:5432/test").await {
        Ok(store) => {
            let store = store.table("sessions_bench");
            if store.migrate().await.is_ok() {
                configs.push(Config {
                    name: "session-layer SqlStore (PostgreSQL)",
                    router: ours_with(store.clone()),
                });
                let cache = CachingStore::coherent(store).unwrap();
                if cache.wait_caching(Duration::from_secs(5)).await {
                    configs.push(Config {
                        name: "session-layer SqlStore (PostgreSQL) + coherent cache",
                        router: ours_with(cache),
                    });
                }
            }
        }
        Err(e) => eprintln!("left out PostgreSQL: {e}"),
    }
    match session_layer::store::SqlStore::connect("mysql://root@127.0.0.1:3306/test").await {
        Ok(store) => {
            let store = store.table("sessions_bench");
            if store.migrate().await.is_ok() {
                configs.push(Config {
                    name: "session-layer SqlStore (MariaDB)",
                    router: ours_with(store),
                });
            }
        }
        Err(e) => eprintln!(
            "left out MariaDB: {e} ({:?})",
            std::error::Error::source(&e)
        ),
    }
    match session_layer::store::MemcachedStore::connect("memcache://127.0.0.1:11211").await {
        Ok(store) => configs.push(Config {
            name: "session-layer MemcachedStore",
            router: ours_with(store.prefix("bench:")),
        }),
        Err(e) => eprintln!("left out Memcached: {e}"),
    }
    configs
}

/// A RedisStore behind a coherent cache, once the cache listens.
async fn coherent_redis() -> Result<CachingStore<session_layer::store::RedisStore>, String> {
    let store = session_layer::store::RedisStore::connect("redis://127.0.0.1:6379")
        .await
        .map_err(|e| e.to_string())?
        .prefix("bench:cached:");
    let cache = CachingStore::coherent(store).map_err(|e| e.to_string())?;
    if !cache.wait_caching(Duration::from_secs(5)).await {
        return Err("the cache did not start listening".into());
    }
    Ok(cache)
}

async fn tower_sessions_redis() -> Result<
    tower_sessions_redis_store::RedisStore<tower_sessions_redis_store::fred::prelude::Pool>,
    String,
> {
    use tower_sessions_redis_store::fred::prelude::*;
    let config = Config::from_url("redis://127.0.0.1:6379").map_err(|e| e.to_string())?;
    let pool = Pool::new(config, None, None, None, 2).map_err(|e| e.to_string())?;
    pool.init().await.map_err(|e| e.to_string())?;
    Ok(tower_sessions_redis_store::RedisStore::new(pool))
}
