//! A JSON API over the session, to poke at sessions with curl and to drive
//! black-box tests.
//!
//! ```sh
//! SESSION_SECURE=false cargo run --example kv
//! curl -c jar -b jar -X PUT localhost:3000/session/name -d '"ann"'
//! curl -c jar -b jar localhost:3000/session
//! ```
//!
//! Environment:
//! - `PORT`: port on 127.0.0.1 (default 3000; 0 picks a free one, printed);
//! - `SESSION_SECRET`: the key, at least 32 bytes (generated, with a
//!   warning, when unset);
//! - `SESSION_SECURE=false`: no `Secure` attribute, for plain http;
//! - `SESSION_CODEC`: `signed` (the default), `private` (encrypted) or
//!   `flask` (Flask's own cookies, `SESSION_SECRET` being the Flask app's
//!   `SECRET_KEY`; needs `--features flask`);
//! - `SESSION_STORE`: `cookie` (the default: the session is in the cookie),
//!   or server-side (the cookie holds a signed id): `memory`, `file:PATH`,
//!   `redis://..`, `postgres://..`, `mysql://..`, `sqlite:PATH`,
//!   `memcache://..`, `mongodb://..` (each with its store feature;
//!   `--all-features` has them all);
//! - `SESSION_TRANSPORT`: where the session token travels: `cookie` (the
//!   default), `header` (`x-session-token`, both ways, no cookie), `both`
//!   (the header when a request has it, the cookie otherwise) or `bearer`
//!   (`Authorization: Bearer` in, `x-session-token` out);
//! - `SESSION_CACHE=1`: a cache in this process in front of a server-side
//!   store (`--features caching-store`): coherent on Redis and PostgreSQL,
//!   which report every change, time-bounded (5 s) on the others;
//! - `SESSION_FORMAT=flask-session`: Flask-Session 0.8's records and
//!   cookie on the `SESSION_STORE` server (`redis://..`, `memcache://..`,
//!   `postgres://..`, `mysql://..`, `sqlite:PATH`, `mongodb://..`;
//!   `--features flask-session` and the store's), so a Flask app with
//!   Flask-Session shares the sessions; `SESSION_FLASK_SIGNER=1` signs the
//!   id as `SESSION_USE_SIGNER` does, with `SESSION_SECRET` as the Flask
//!   `SECRET_KEY`; `SESSION_FLASK_PREFIX` is `SESSION_KEY_PREFIX`
//!   (default `session:`), `SESSION_FLASK_TABLE` is
//!   `SESSION_SQLALCHEMY_TABLE` (default `sessions`, the name the
//!   non-Flask `SqlStore` uses too: on a database where `kv` already ran
//!   with that store, pick another); on MongoDB the URL's
//!   database (`mongodb://host/flask_session`) holds the `sessions`
//!   collection (`SESSION_FLASK_COLLECTION` for another). `SESSION_CACHE`
//!   is refused there (a cache would miss the Flask app's writes).
//!
//! Routes: `GET /session`, `PUT /session/{key}` (JSON body),
//! `DELETE /session/{key}`, `POST /session/clear`,
//! `POST /session/permanent` (body `true` or `false`),
//! `POST /session/cycle` (a new id, same data); each answers with the whole
//! session as a JSON object. `POST /session/{key}/append` (JSON body: the
//! item) appends to the list under the key with the merge operation
//! (`session.push`: concurrent appends all survive, on every store);
//! `POST /session/{key}/append?naive=1` reads the list, appends and writes
//! it back, so with a store a concurrent append to the same list answers
//! 409 (nothing saved, retry) instead of being lost. Both answer the list
//! as the handler saw it, or 422 when the key holds something else.
//! Without a store (`SESSION_STORE` unset) both are ordinary cookie
//! writes: concurrent requests each send back a whole cookie, the client
//! keeps the last, and neither answers 409. `PUT` is a blind write: the
//! last one wins. With a store, `GET /session/handle` answers the
//! session's public handle (a JSON string; `null` before its first
//! write) and `DELETE /sessions/{handle}` ends that session
//! (`{"ended": true}`). Owners ("sign out everywhere"): `POST
//! /session/owner` (a JSON string) records whose session it is;
//! `GET /owners/{owner}/sessions` lists that owner's live sessions (a JSON
//! array of `{"handle", "created_at", "last_used", "expires_at", "meta"}`);
//! `DELETE /owners/{owner}/sessions` ends them all (`{"ended": N}`);
//! `DELETE /owners/{owner}/sessions/{handle}` ends one of them
//! (`{"ended": true}`). A real app asks who is signed in before it lists
//! or ends anyone's sessions; this one is for poking at the store.

use std::process::ExitCode;

use axum::extract::{Path, State};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde_json::{Map, Value};
use session_layer::store::MemoryStore;
use session_layer::{DefaultErrorHandler, Key, Session, SessionLayer, Sessions, Transport};
use tracing_subscriber::EnvFilter;

type Reply = Result<Json<Map<String, Value>>, session_layer::Error>;

async fn show(session: Session) -> Reply {
    Ok(Json(session.to_map()))
}

/// A JSON request body, whatever its `Content-Type` says: `curl -d` sends
/// `application/x-www-form-urlencoded`, and the commands in the docs should
/// work as written. (A real API should insist on `application/json`: a
/// browser sends other types cross-site without a CORS preflight.)
struct JsonBody<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = (axum::http::StatusCode, String);

    async fn from_request(
        request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let bad = |e: &dyn std::fmt::Display| {
            (
                axum::http::StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {e}\n"),
            )
        };
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|e| bad(&e))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| bad(&e))
    }
}

async fn set(session: Session, Path(key): Path<String>, JsonBody(value): JsonBody<Value>) -> Reply {
    session.insert_value(key, value);
    Ok(Json(session.to_map()))
}

#[derive(serde::Deserialize)]
struct Append {
    /// `?naive=1`: read, append, write back (a read-then-write, which can
    /// conflict), rather than the merge operation.
    #[serde(default)]
    naive: Option<String>,
}

async fn append(
    session: Session,
    Path(key): Path<String>,
    axum::extract::Query(how): axum::extract::Query<Append>,
    JsonBody(item): JsonBody<Value>,
) -> Answer {
    let not_a_list = |e: &session_layer::Error| {
        (
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            format!("{e}\n"),
        )
    };
    if how.naive.as_deref() == Some("1") {
        let mut list: Vec<Value> = session
            .get(&key)
            .map_err(|e| not_a_list(&e))?
            .unwrap_or_default();
        list.push(item);
        session.insert(key, &list).map_err(|e| failed(&e))?;
        return Ok(Json(Value::Array(list)));
    }
    session.push(&key, item).map_err(|e| not_a_list(&e))?;
    Ok(Json(session.get_value(&key).unwrap_or_default()))
}

async fn remove(session: Session, Path(key): Path<String>) -> Reply {
    session.remove_value(&key);
    Ok(Json(session.to_map()))
}

async fn clear(session: Session) -> Reply {
    session.clear();
    Ok(Json(session.to_map()))
}

async fn cycle(session: Session) -> Reply {
    session.cycle_id();
    Ok(Json(session.to_map()))
}

/// The session's public handle (a JSON string), or `null` when it has no
/// stored record yet (or lives in the cookie).
async fn handle(session: Session) -> Json<Option<String>> {
    Json(session.handle())
}

/// Ends the session a handle names: `{"ended": true}`, or false for a
/// string that is no handle of this server's. (A real app checks first
/// that the handle is one of the signed-in user's sessions.)
async fn end(State(sessions): State<Option<Sessions>>, Path(handle): Path<String>) -> Answer {
    let ended = (stored(sessions)?.end(&handle).await).map_err(|e| failed(&e))?;
    Ok(Json(serde_json::json!({ "ended": ended })))
}

async fn set_owner(session: Session, JsonBody(owner): JsonBody<String>) -> Reply {
    session.set_owner(owner)?;
    Ok(Json(session.to_map()))
}

type Answer = Result<Json<Value>, (axum::http::StatusCode, String)>;

/// The layer's `Sessions`, or the answer for a layer without a store.
fn stored(sessions: Option<Sessions>) -> Result<Sessions, (axum::http::StatusCode, String)> {
    sessions.ok_or_else(|| {
        (
            axum::http::StatusCode::NOT_FOUND,
            "sessions in cookies cannot be listed or ended by handle: use a SESSION_STORE\n".into(),
        )
    })
}

fn failed(e: &session_layer::Error) -> (axum::http::StatusCode, String) {
    (e.status(), format!("{e}\n"))
}

/// The owner's live sessions, most recently used first.
async fn owned(State(sessions): State<Option<Sessions>>, Path(owner): Path<String>) -> Answer {
    let listed = stored(sessions)?.of(&owner).await.map_err(|e| failed(&e))?;
    Ok(Json(serde_json::to_value(listed).expect("plain fields")))
}

/// Ends every session of the owner: `{"ended": N}`.
async fn end_owned(State(sessions): State<Option<Sessions>>, Path(owner): Path<String>) -> Answer {
    let ended = (stored(sessions)?.end_all(&owner).await).map_err(|e| failed(&e))?;
    Ok(Json(serde_json::json!({ "ended": ended })))
}

/// Ends one session of the owner's: `{"ended": bool}` (false for a handle
/// of someone else's session).
async fn end_one_owned(
    State(sessions): State<Option<Sessions>>,
    Path((owner, handle)): Path<(String, String)>,
) -> Answer {
    let ended = (stored(sessions)?.end_of(&owner, &handle).await).map_err(|e| failed(&e))?;
    Ok(Json(serde_json::json!({ "ended": ended })))
}

async fn permanent(session: Session, JsonBody(permanent): JsonBody<bool>) -> Reply {
    session.set_permanent(permanent);
    Ok(Json(session.to_map()))
}

/// The app with the layer the environment asks for.
async fn router() -> Result<Router, String> {
    let secure = match std::env::var("SESSION_SECURE").as_deref() {
        Err(_) | Ok("true") => true,
        Ok("false") => false,
        Ok(other) => return Err(format!("SESSION_SECURE={other:?}: use true or false")),
    };
    let codec = std::env::var("SESSION_CODEC").unwrap_or_else(|_| "signed".into());
    let layer = match codec.as_str() {
        // Flask-Session's cookie carries a raw (or Flask-signed) id; the
        // layer's key then only makes handles, and SESSION_SECRET may be a
        // short Flask key.
        "signed" if std::env::var_os("SESSION_FORMAT").is_some() => {
            let secret = std::env::var("SESSION_SECRET").unwrap_or_default();
            SessionLayer::signed(
                Key::from_bytes(secret.as_bytes()).unwrap_or_else(|_| Key::generate()),
            )
        }
        "signed" => SessionLayer::signed(key()?),
        "private" => SessionLayer::private(key()?),
        "flask" => {
            if std::env::var_os("SESSION_FORMAT").is_some() {
                return Err(
                    "SESSION_CODEC=flask is Flask's cookie sessions, SESSION_FORMAT=flask-session \
                     Flask-Session's server-side ones (with the default codec): set one of them"
                        .into(),
                );
            }
            if std::env::var("SESSION_STORE").is_ok_and(|store| store != "cookie") {
                return Err(
                    "SESSION_CODEC=flask keeps sessions in Flask's cookie; unset SESSION_STORE"
                        .into(),
                );
            }
            return flask_router(secure);
        }
        other => {
            return Err(format!(
                "SESSION_CODEC={other:?} is not supported; use signed, private or flask"
            ));
        }
    };
    if let Some(format) = std::env::var_os("SESSION_FORMAT") {
        if format != "flask-session" {
            return Err(format!(
                "SESSION_FORMAT={format:?} is not supported; use flask-session"
            ));
        }
        let layer = flask_session(layer)
            .await?
            .secure(secure)
            .transport(transport()?);
        let sessions = layer.sessions();
        return Ok(app(layer, sessions));
    }
    let layer = match std::env::var("SESSION_STORE").as_deref() {
        Err(_) | Ok("cookie") => layer,
        Ok("memory") => layer.with_store(MemoryStore::new()),
        Ok(spec) if spec.starts_with("file:") => {
            layer.with_store(file_store(&spec["file:".len()..])?)
        }
        Ok(spec) => network_store(layer, spec).await?,
    };
    let layer = layer.secure(secure).transport(transport()?);
    // From the finished layer: `Sessions` keeps the settings it has now.
    let sessions = layer.sessions();
    Ok(app(layer, sessions))
}

/// `SESSION_TRANSPORT`: where the token travels.
fn transport() -> Result<Transport, String> {
    const TOKEN: axum::http::HeaderName = axum::http::HeaderName::from_static("x-session-token");
    match std::env::var("SESSION_TRANSPORT").as_deref() {
        Err(_) | Ok("cookie") => Ok(Transport::Cookie),
        Ok("header") => Ok(Transport::Header(TOKEN)),
        Ok("both") => Ok(Transport::HeaderOrCookie(TOKEN)),
        Ok("bearer") => Ok(Transport::Bearer(TOKEN)),
        Ok(other) => Err(format!(
            "SESSION_TRANSPORT={other:?}: use cookie, header, both or bearer"
        )),
    }
}

/// A store on a server, by URL; each kind needs its cargo feature.
async fn network_store(layer: SessionLayer, spec: &str) -> Result<SessionLayer, String> {
    let scheme = spec.split(':').next().unwrap_or("");
    let failed = |e: session_layer::Error| format!("SESSION_STORE={spec}: {}", with_cause(&e));
    match scheme {
        #[cfg(feature = "redis-store")]
        "redis" | "rediss" => {
            let store = session_layer::store::RedisStore::connect(spec)
                .await
                .map_err(failed)?;
            coherent(layer, store).await
        }
        #[cfg(any(
            feature = "postgres-store",
            feature = "mysql-store",
            feature = "sqlite-store"
        ))]
        "postgres" | "postgresql" | "mysql" | "mariadb" | "sqlite" => {
            let store = session_layer::store::SqlStore::connect(spec)
                .await
                .map_err(failed)?;
            // The example creates its table; a real app runs this in its
            // own migrations.
            store.migrate().await.map_err(failed)?;
            // Only PostgreSQL reports changes (a coherent cache); a build
            // without postgres-store has no `coherent` for SqlStore.
            #[cfg(feature = "postgres-store")]
            if scheme.starts_with("postgres") {
                return coherent(layer, store).await;
            }
            time_bounded(layer, store)
        }
        #[cfg(feature = "memcached-store")]
        "memcache" | "memcached" => {
            let store = session_layer::store::MemcachedStore::connect(spec)
                .await
                .map_err(failed)?;
            time_bounded(layer, store)
        }
        #[cfg(feature = "mongodb-store")]
        "mongodb" | "mongodb+srv" => {
            let store = session_layer::store::MongoStore::connect(spec)
                .await
                .map_err(failed)?;
            // The indexes; a real app runs this at deploy time.
            store.migrate().await.map_err(failed)?;
            time_bounded(layer, store)
        }
        _ => {
            drop((layer, failed));
            let known = [
                "redis",
                "rediss",
                "postgres",
                "postgresql",
                "mysql",
                "mariadb",
                "sqlite",
                "memcache",
                "memcached",
                "mongodb",
                "mongodb+srv",
            ];
            Err(if known.contains(&scheme) {
                format!(
                    "SESSION_STORE={spec} needs its store feature (redis-store, postgres-store, mysql-store, sqlite-store, memcached-store, mongodb-store)"
                )
            } else {
                format!(
                    "SESSION_STORE={spec:?} is not supported; use cookie, memory, file:PATH, redis://.., \
                     postgres://.., mysql://.., sqlite:PATH, memcache://.. or mongodb://.."
                )
            })
        }
    }
}

/// `SESSION_FORMAT=flask-session`: Flask-Session's records on the
/// `SESSION_STORE` server.
#[cfg(all(
    feature = "flask-session",
    any(
        feature = "redis-store",
        feature = "postgres-store",
        feature = "mysql-store",
        feature = "sqlite-store",
        feature = "memcached-store",
        feature = "mongodb-store"
    )
))]
async fn flask_session(layer: SessionLayer) -> Result<SessionLayer, String> {
    use session_layer::store::FlaskSessionStore;
    // Not silently ignored: a cache cannot carry its write stamp in
    // Flask-Session's cookie, nor hear of the Flask app's writes.
    if std::env::var("SESSION_CACHE").is_ok_and(|cache| cache != "0") {
        return Err(
            "SESSION_CACHE is not offered with SESSION_FORMAT=flask-session: a cache would \
             miss the Flask app's writes (a logout included) for its TTL"
                .into(),
        );
    }
    let spec = std::env::var("SESSION_STORE")
        .map_err(|_| "SESSION_FORMAT=flask-session needs a SESSION_STORE server URL".to_owned())?;
    let failed = |e: session_layer::Error| format!("SESSION_STORE={spec}: {}", with_cause(&e));
    let scheme = spec.split(':').next().unwrap_or("");
    let store = match scheme {
        #[cfg(feature = "redis-store")]
        "redis" | "rediss" => {
            let store = session_layer::store::RedisStore::connect(&spec).await;
            FlaskSessionStore::redis(store.map_err(failed)?)
        }
        #[cfg(any(
            feature = "postgres-store",
            feature = "mysql-store",
            feature = "sqlite-store"
        ))]
        "postgres" | "postgresql" | "mysql" | "mariadb" | "sqlite" => {
            let store = session_layer::store::SqlStore::connect(&spec).await;
            let table = std::env::var("SESSION_FLASK_TABLE").unwrap_or_else(|_| "sessions".into());
            let valid = !table.is_empty()
                && table.len() <= 63
                && !table.starts_with(|c: char| c.is_ascii_digit())
                && table
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(format!(
                    "SESSION_FLASK_TABLE={table:?} is not a plain SQL name"
                ));
            }
            FlaskSessionStore::sql(store.map_err(failed)?.table(&table))
        }
        #[cfg(feature = "memcached-store")]
        "memcache" | "memcached" => {
            let store = session_layer::store::MemcachedStore::connect(&spec).await;
            FlaskSessionStore::memcached(store.map_err(failed)?)
        }
        #[cfg(feature = "mongodb-store")]
        "mongodb" | "mongodb+srv" => {
            let store = session_layer::store::MongoStore::connect(&spec).await;
            let collection =
                std::env::var("SESSION_FLASK_COLLECTION").unwrap_or_else(|_| "sessions".into());
            FlaskSessionStore::mongodb(store.map_err(failed)?.collection(&collection))
        }
        _ => {
            return Err(format!(
                "SESSION_FORMAT=flask-session: SESSION_STORE={spec:?} is no server this build \
                 has a store for (redis://, memcache://, postgres://, mysql://, sqlite:, mongodb://, \
                 each with its store feature)"
            ));
        }
    };
    let mut store = store
        .key_prefix(std::env::var("SESSION_FLASK_PREFIX").unwrap_or_else(|_| "session:".into()));
    match std::env::var("SESSION_FLASK_SIGNER").as_deref() {
        Err(_) | Ok("0") => {}
        Ok("1") => {
            let secret = std::env::var("SESSION_SECRET").map_err(|_| {
                "SESSION_FLASK_SIGNER=1 needs SESSION_SECRET, the Flask app's SECRET_KEY".to_owned()
            })?;
            let ids = session_layer::codec::FlaskSessionIds::signed(secret);
            store = store.ids(ids.map_err(|e| e.to_string())?);
        }
        Ok(other) => return Err(format!("SESSION_FLASK_SIGNER={other:?}: use 1 or 0")),
    }
    // Flask-Session's table or indexes, as Flask-Session makes them at
    // start-up (nothing on Redis and Memcached).
    store.migrate().await.map_err(failed)?;
    Ok(layer.with_store(store))
}

#[cfg(not(all(
    feature = "flask-session",
    any(
        feature = "redis-store",
        feature = "postgres-store",
        feature = "mysql-store",
        feature = "sqlite-store",
        feature = "memcached-store",
        feature = "mongodb-store"
    )
)))]
async fn flask_session(_: SessionLayer) -> Result<SessionLayer, String> {
    Err(
        "SESSION_FORMAT=flask-session needs the flask-session feature and a store's: \
         cargo run --features flask-session,redis-store --example kv"
            .into(),
    )
}

#[cfg(feature = "file-store")]
fn file_store(path: &str) -> Result<session_layer::store::FileStore, String> {
    session_layer::store::FileStore::new(path)
        .map_err(|e| format!("SESSION_STORE=file:{path}: {}", with_cause(&e)))
}

#[cfg(not(feature = "file-store"))]
fn file_store(_: &str) -> Result<MemoryStore, String> {
    Err("SESSION_STORE=file:PATH needs the file-store feature: cargo run --features file-store --example kv".into())
}

/// Whether `SESSION_CACHE` asks for a cache in front of the store.
#[cfg(any(
    feature = "redis-store",
    feature = "postgres-store",
    feature = "mysql-store",
    feature = "sqlite-store",
    feature = "memcached-store",
    feature = "mongodb-store"
))]
fn cache_wanted() -> Result<bool, String> {
    match std::env::var("SESSION_CACHE").as_deref() {
        Err(_) | Ok("0") => Ok(false),
        Ok("1") if cfg!(feature = "caching-store") => Ok(true),
        Ok("1") => Err("SESSION_CACHE=1 needs the caching-store feature".into()),
        Ok(other) => Err(format!("SESSION_CACHE={other:?}: use 1 or 0")),
    }
}

/// The store, behind a coherent cache if `SESSION_CACHE=1`.
#[cfg(all(
    feature = "caching-store",
    any(feature = "redis-store", feature = "postgres-store")
))]
async fn coherent<S: session_layer::store::Notifying>(
    layer: SessionLayer,
    store: S,
) -> Result<SessionLayer, String> {
    if !cache_wanted()? {
        return Ok(layer.with_store(store));
    }
    let cache = session_layer::store::CachingStore::coherent(store).map_err(|e| with_cause(&e))?;
    // Serve once the cache hears of changes (it reads through until then).
    if !cache.wait_caching(std::time::Duration::from_secs(5)).await {
        eprintln!("warning: the session cache is not listening for changes yet; reading through");
    }
    Ok(layer.with_store(cache))
}

#[cfg(all(
    not(feature = "caching-store"),
    any(feature = "redis-store", feature = "postgres-store")
))]
async fn coherent<S: session_layer::store::SessionStore>(
    layer: SessionLayer,
    store: S,
) -> Result<SessionLayer, String> {
    time_bounded(layer, store)
}

/// The store, behind a time-bounded cache if `SESSION_CACHE=1`.
#[cfg(any(
    feature = "redis-store",
    feature = "postgres-store",
    feature = "mysql-store",
    feature = "sqlite-store",
    feature = "memcached-store",
    feature = "mongodb-store"
))]
fn time_bounded<S: session_layer::store::SessionStore>(
    layer: SessionLayer,
    store: S,
) -> Result<SessionLayer, String> {
    if !cache_wanted()? {
        return Ok(layer.with_store(store));
    }
    #[cfg(feature = "caching-store")]
    let layer = layer.with_store(session_layer::store::CachingStore::new(store));
    #[cfg(not(feature = "caching-store"))]
    let layer = {
        drop(store);
        layer
    };
    Ok(layer)
}

/// An error and its cause: `Error`'s text says what failed (a store
/// call), its `source()` why (the server refused the connection, the
/// directory cannot be written).
fn with_cause(error: &session_layer::Error) -> String {
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

/// The key from `SESSION_SECRET`, or a random one with a warning.
fn key() -> Result<Key, String> {
    if std::env::var_os("SESSION_SECRET").is_none() {
        eprintln!(
            "warning: SESSION_SECRET is unset; using a random key, sessions end with the process"
        );
        return Ok(Key::generate());
    }
    Key::from_env("SESSION_SECRET").map_err(|e| e.to_string())
}

/// Flask's cookies, signed with the Flask app's `SECRET_KEY` from
/// `SESSION_SECRET` (any length: Flask keys are often short).
#[cfg(feature = "flask")]
fn flask_router(secure: bool) -> Result<Router, String> {
    let secret = std::env::var("SESSION_SECRET").map_err(|_| {
        "SESSION_CODEC=flask needs SESSION_SECRET, the Flask app's SECRET_KEY".to_owned()
    })?;
    let codec = session_layer::codec::FlaskCodec::new(secret).map_err(|e| e.to_string())?;
    Ok(app(
        SessionLayer::flask(codec)
            .secure(secure)
            .transport(transport()?),
        None,
    ))
}

#[cfg(not(feature = "flask"))]
fn flask_router(_secure: bool) -> Result<Router, String> {
    Err(
        "SESSION_CODEC=flask needs the flask feature: cargo run --features flask --example kv"
            .into(),
    )
}

/// The routes, behind either kind of layer (keyed, or Flask's).
fn app<K: Clone + Send + Sync + 'static>(
    layer: SessionLayer<DefaultErrorHandler, K>,
    sessions: Option<Sessions>,
) -> Router {
    Router::new()
        .route("/session", get(show))
        .route("/session/handle", get(handle))
        .route("/session/{key}", put(set).delete(remove))
        .route("/session/{key}/append", post(append))
        .route("/session/clear", post(clear))
        .route("/session/permanent", post(permanent))
        .route("/session/cycle", post(cycle))
        .route("/sessions/{handle}", delete(end))
        .route("/session/owner", post(set_owner))
        .route("/owners/{owner}/sessions", get(owned).delete(end_owned))
        .route("/owners/{owner}/sessions/{handle}", delete(end_one_owned))
        .with_state(sessions)
        .layer(layer)
}

#[tokio::main]
async fn main() -> ExitCode {
    // Warnings (a short key) and errors show without RUST_LOG.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let router = match router().await {
        Ok(router) => router,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = match tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("listening on http://{addr}"),
        Err(e) => eprintln!("warning: cannot read the bound address: {e}"),
    }
    if let Err(e) = axum::serve(listener, router).await {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
