//! Interop with the real Flask-Session 0.8.0 (the pinned venv scripts/test.sh
//! creates), on the real servers: a Flask app and a `FlaskSessionStore`
//! layer read and write the same sessions on Redis (one server and a
//! cluster), Memcached, PostgreSQL, MariaDB, SQLite and MongoDB
//! (nx-27017), with every Python type Flask-Session serializes, both
//! directions, logouts on either side, and Flask's lifetime.
#![cfg(all(
    feature = "flask-session",
    feature = "testing",
    feature = "axum",
    feature = "redis-store",
    feature = "memcached-store",
    feature = "postgres-store",
    feature = "mysql-store",
    feature = "sqlite-store",
    feature = "mongodb-store"
))]

mod common;

use std::process::Command;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use common::{TestClock, missing, set_cookies};
use http::Request;
use serde_json::{Value, json};
use session_layer::codec::FlaskSessionIds;
use session_layer::store::{
    FlaskSessionStore, MemcachedStore, MongoStore, RedisStore, Serialization, SqlStore,
};
use session_layer::{Error, Key, Session, SessionLayer};
use tower::ServiceExt;

const LIFETIME: u64 = 3600;
const SECRET: &str = "the Flask app's SECRET_KEY";

/// The Flask-Session app (tests/flask/flask_session_app.py), killed on drop.
struct FlaskApp(common::ExampleServer);

impl FlaskApp {
    fn start(env: &[(&str, &str)]) -> Option<Self> {
        let lifetime = LIFETIME.to_string();
        let mut env = env.to_vec();
        env.extend([("SECRET", SECRET), ("LIFETIME", lifetime.as_str())]);
        let script = "tests/flask/flask_session_app.py";
        common::start_python_app(script, &env, "flask_session, msgspec").map(Self)
    }

    /// Sends a request with the shared cookie and keeps what Flask sets.
    fn call(&self, method: &str, path: &str, body: &str, cookie: &mut String) -> String {
        let reply =
            common::http_request_as(&self.0.addr, method, path, body, cookie, "application/json");
        assert_eq!(reply.status, 200, "Flask {method} {path}: {}", reply.body);
        keep(&reply.set_cookies, cookie);
        reply.body
    }

    fn values(&self, cookie: &mut String) -> Value {
        serde_json::from_str(&self.call("GET", "/get", "", cookie)).unwrap()
    }
}

use common::keep_cookie as keep;

/// The Axum side: the same session through a `FlaskSessionStore`.
fn rust_app(store: FlaskSessionStore, clock: &TestClock) -> Router {
    async fn values(session: Session) -> String {
        json!({"data": session.to_map(), "permanent": session.is_permanent()}).to_string()
    }
    async fn set(session: Session, body: String) -> Result<&'static str, Error> {
        let Value::Object(values) = serde_json::from_str(&body).unwrap() else {
            panic!("an object")
        };
        for (key, value) in values {
            session.insert_value(key, value);
        }
        Ok("ok")
    }
    async fn login(session: Session, body: String) -> &'static str {
        session.cycle_id();
        session.set_permanent(true);
        session.insert_value("user", Value::String(body));
        "ok"
    }
    async fn logout(session: Session) -> &'static str {
        session.flush();
        "logged out"
    }
    Router::new()
        .route("/get", get(values))
        .route("/set", post(set))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .layer(
            SessionLayer::new(Key::generate())
                .with_store(store)
                .secure(false)
                .lifetime(std::time::Duration::from_secs(LIFETIME))
                .clock(clock.source()),
        )
}

fn call_rust(app: &Router, method: &str, path: &str, body: &str, cookie: &mut String) -> String {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("cookie", cookie.as_str())
        .body(Body::from(body.to_owned()))
        .unwrap();
    let (status, set, body) = rt().block_on(async {
        let response = app.clone().oneshot(request).await.unwrap();
        let set = set_cookies(&response);
        (response.status(), set, common::body_text(response).await)
    });
    assert_eq!(status, 200, "Axum {method} {path}: {body}");
    keep(&set, cookie);
    body
}

/// One runtime for every call, so connections made in one call serve the
/// next.
fn rt() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    });
    &RUNTIME
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Every type Flask-Session serializes, as the Flask app takes them.
fn every_type() -> Value {
    json!({
        "user": "ann",
        "n": 5,
        "big": 18_446_744_073_709_551_615u64,
        "neg": -7,
        "f": 1.5,
        "yes": true,
        "none": null,
        "list": [1, "x", [2]],
        "dict": {"k": [1, 2], "nested": {"a": null}},
        "bytes": {"$bytes": "AP8Q"},
        "at": {"$datetime": "2024-01-02T03:04:05.600000Z"},
        "tuple": {"$tuple": [1, "x"]},
        "set": {"$set": [3]},
        "unicode": "ü€😀",
    })
}

/// How the Rust side sees them: plain JSON (bytes as numbers, datetimes as
/// RFC 3339, tuples and sets as arrays).
fn every_type_in_rust() -> Value {
    json!({
        "user": "ann",
        "n": 5,
        "big": 18_446_744_073_709_551_615u64,
        "neg": -7,
        "f": 1.5,
        "yes": true,
        "none": null,
        "list": [1, "x", [2]],
        "dict": {"k": [1, 2], "nested": {"a": null}},
        "bytes": [0, 255, 16],
        "at": "2024-01-02T03:04:05.6Z",
        "tuple": [1, "x"],
        "set": [3],
        "unicode": "ü€😀",
    })
}

/// The whole exchange between one Flask-Session app and one store.
fn both_directions(flask: &FlaskApp, store: FlaskSessionStore) {
    let clock = TestClock::at(now());
    let rust = rust_app(store, &clock);
    let mut cookie = String::new();

    // Flask writes every type; Rust reads them.
    flask.call("POST", "/set", &every_type().to_string(), &mut cookie);
    assert!(!cookie.is_empty(), "Flask set its cookie");
    let seen: Value =
        serde_json::from_str(&call_rust(&rust, "GET", "/get", "", &mut cookie)).unwrap();
    assert_eq!(seen["data"], every_type_in_rust());
    assert_eq!(
        seen["permanent"], true,
        "SESSION_PERMANENT is Flask-Session's default"
    );

    // Rust changes some (bytes and datetimes keep their Python type) and
    // adds new ones; Flask reads them, and the ones left alone as they were.
    let edit = json!({
        "bytes": [1, 2, 3],
        "at": "2030-01-01T00:00:00.25Z",
        "n": 6,
        "new": {"from": "rust", "list": [1.25, null]},
    });
    call_rust(&rust, "POST", "/set", &edit.to_string(), &mut cookie);
    let theirs = flask.values(&mut cookie);
    assert_eq!(theirs["bytes"], json!({"$bytes": "AQID"}));
    assert_eq!(
        theirs["at"],
        json!({"$datetime": "2030-01-01T00:00:00.250000Z"})
    );
    assert_eq!(theirs["n"], 6);
    assert_eq!(theirs["new"], json!({"from": "rust", "list": [1.25, null]}));
    assert_eq!(theirs["big"], json!(18_446_744_073_709_551_615u64));
    assert_eq!(
        theirs["tuple"],
        json!([1, "x"]),
        "msgspec reads a tuple back as a list"
    );
    assert_eq!(theirs["unicode"], "ü€😀");
    assert_eq!(theirs["_permanent"], true);

    // A logout on the Rust side ends the session for Flask too.
    call_rust(&rust, "POST", "/logout", "", &mut cookie);
    assert!(cookie.is_empty(), "the Rust logout deleted the cookie");
    assert_eq!(
        flask.values(&mut cookie),
        json!({"_permanent": true}),
        "a new, empty session"
    );

    // Rust logs in first; Flask reads it.
    call_rust(&rust, "POST", "/login", "bob", &mut cookie);
    assert!(!cookie.is_empty(), "the Rust login set the cookie");
    assert_eq!(
        flask.values(&mut cookie),
        json!({"_permanent": true, "user": "bob"})
    );
    // A write on either side after that keeps the other's keys.
    flask.call("POST", "/set", r#"{"cart": [1]}"#, &mut cookie);
    call_rust(&rust, "POST", "/set", r#"{"theme": "dark"}"#, &mut cookie);
    assert_eq!(
        flask.values(&mut cookie),
        json!({"_permanent": true, "user": "bob", "cart": [1], "theme": "dark"})
    );

    // A logout on the Flask side ends it for Rust.
    flask.call("POST", "/logout", "", &mut cookie);
    assert!(cookie.is_empty(), "Flask's logout deleted the cookie");
    let seen: Value =
        serde_json::from_str(&call_rust(&rust, "GET", "/get", "", &mut cookie)).unwrap();
    assert_eq!(seen["data"], json!({}));

    // A session Flask wrote is over for Rust once Flask's lifetime has
    // passed (the layer's clock moved past it).
    flask.call("POST", "/set", r#"{"user": "cy"}"#, &mut cookie);
    let mut same = cookie.clone();
    let seen: Value =
        serde_json::from_str(&call_rust(&rust, "GET", "/get", "", &mut same)).unwrap();
    assert_eq!(seen["data"], json!({"user": "cy"}));
    // A minute past the expiry Flask wrote (by the real clock, which ran on
    // while the layer's stood still), whatever the machine's speed.
    clock.advance(now() + LIFETIME + 60 - clock.now());
    let seen: Value =
        serde_json::from_str(&call_rust(&rust, "GET", "/get", "", &mut same)).unwrap();
    assert_eq!(seen["data"], json!({}), "expired by Flask's lifetime");
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn reachable(host_port: &str) -> bool {
    if std::net::TcpStream::connect(host_port).is_ok() {
        return true;
    }
    missing(&format!("{host_port} is unreachable"));
    false
}

#[test]
fn redis_both_directions() {
    if !reachable("127.0.0.1:6379") {
        return;
    }
    let Some(flask) = FlaskApp::start(&[("BACKEND", "redis"), ("URL", &redis_url())]) else {
        return;
    };
    let store = rt().block_on(RedisStore::connect(&redis_url())).unwrap();
    let store = FlaskSessionStore::redis(store);
    both_directions(&flask, store.clone());

    // An id nobody stored gets a new one on both sides, never adopted.
    let unknown = format!(
        "session={}",
        session_layer::store::SessionId::generate().as_str()
    );
    let rust = rust_app(store, &TestClock::at(now()));
    let mut cookie = unknown.clone();
    call_rust(&rust, "POST", "/set", r#"{"a": 1}"#, &mut cookie);
    assert!(
        !cookie.is_empty() && cookie != unknown,
        "Rust made a new id"
    );
    let mut cookie = unknown.clone();
    flask.call("POST", "/set", r#"{"a": 1}"#, &mut cookie);
    assert!(
        !cookie.is_empty() && cookie != unknown,
        "Flask made a new id"
    );
    // A cookie of another shape never reaches Redis, and is a new session.
    let mut cookie = "session=../../etc/passwd".to_owned();
    let seen: Value =
        serde_json::from_str(&call_rust(&rust, "GET", "/get", "", &mut cookie)).unwrap();
    assert_eq!(seen["data"], json!({}));
}

#[test]
fn redis_with_the_signer_json_and_a_prefix_of_its_own() {
    if !reachable("127.0.0.1:6379") {
        return;
    }
    let env = [
        ("BACKEND", "redis"),
        ("URL", &redis_url()),
        ("SIGNER", "1"),
        ("FORMAT", "json"),
        ("PREFIX", "app1:"),
    ];
    let Some(flask) = FlaskApp::start(&env) else {
        return;
    };
    let store = rt().block_on(RedisStore::connect(&redis_url())).unwrap();
    let store = FlaskSessionStore::redis(store)
        .key_prefix("app1:")
        .serialization(Serialization::Json)
        .ids(FlaskSessionIds::signed(SECRET).unwrap());
    // JSON has no bytes or datetimes: Flask-Session's JSON writes them as
    // strings, so the typed round trip is the msgpack tests'; the rest of
    // the exchange is the same.
    let clock = TestClock::at(now());
    let rust = rust_app(store, &clock);
    let mut cookie = String::new();
    flask.call(
        "POST",
        "/set",
        r#"{"user": "ann", "n": [1, 2.5]}"#,
        &mut cookie,
    );
    assert!(cookie.contains('.'), "a signed id: {cookie}");
    let seen: Value =
        serde_json::from_str(&call_rust(&rust, "GET", "/get", "", &mut cookie)).unwrap();
    assert_eq!(seen["data"], json!({"user": "ann", "n": [1, 2.5]}));
    call_rust(&rust, "POST", "/set", r#"{"theme": "dark"}"#, &mut cookie);
    assert_eq!(
        flask.values(&mut cookie),
        json!({"_permanent": true, "user": "ann", "n": [1, 2.5], "theme": "dark"})
    );
    // An int beyond 64 bits, which msgspec.json writes as digits, is still
    // an int for Flask after Rust rewrote the record for another key.
    flask.call(
        "POST",
        "/set",
        r#"{"big": 1180591620717411303424}"#,
        &mut cookie,
    );
    call_rust(&rust, "POST", "/set", r#"{"theme": "light"}"#, &mut cookie);
    let body = flask.call("GET", "/get", "", &mut cookie);
    assert!(
        body.contains(r#""big": 1180591620717411303424"#)
            || body.contains(r#""big":1180591620717411303424"#),
        "{body}"
    );
    let key = format!(
        "app1:{}",
        cookie
            .trim_start_matches("session=")
            .split('.')
            .next()
            .unwrap()
    );
    let raw: Vec<u8> = rt().block_on(async {
        let client = redis::Client::open(redis_url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap()
    });
    assert_eq!(raw.first(), Some(&b'{'), "stored as JSON under the prefix");

    // A forged signature is a new session on both sides. (The first
    // character of the signature, not the last: base64 readers that ignore
    // the last character's unused bits, as Python's does, would accept a
    // change there.)
    let (signed, signature) = cookie.rsplit_once('.').unwrap();
    let first = if signature.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{signed}.{first}{}", &signature[1..]);
    let mut forged_rust = forged.clone();
    let seen: Value =
        serde_json::from_str(&call_rust(&rust, "GET", "/get", "", &mut forged_rust)).unwrap();
    assert_eq!(seen["data"], json!({}));
    let mut forged_flask = forged;
    assert_eq!(flask.values(&mut forged_flask), json!({"_permanent": true}));

    call_rust(&rust, "POST", "/logout", "", &mut cookie);
    assert_eq!(flask.values(&mut cookie), json!({"_permanent": true}));
}

#[test]
fn redis_cluster_both_directions() {
    if !reachable("127.0.0.1:7001") {
        return;
    }
    let env = [
        ("BACKEND", "redis"),
        ("CLUSTER", "1"),
        ("URL", "redis://127.0.0.1:7001"),
    ];
    let Some(flask) = FlaskApp::start(&env) else {
        return;
    };
    let nodes = [
        "redis://127.0.0.1:7001",
        "redis://127.0.0.1:7002",
        "redis://127.0.0.1:7003",
    ];
    let store = rt().block_on(RedisStore::cluster(&nodes)).unwrap();
    both_directions(&flask, FlaskSessionStore::redis(store));
}

#[test]
fn memcached_both_directions() {
    if !reachable("127.0.0.1:11211") {
        return;
    }
    let env = [("BACKEND", "memcached"), ("URL", "127.0.0.1:11211")];
    let Some(flask) = FlaskApp::start(&env) else {
        return;
    };
    let store = rt()
        .block_on(MemcachedStore::connect("memcache://127.0.0.1:11211"))
        .unwrap();
    both_directions(&flask, FlaskSessionStore::memcached(store));
}

/// An SQL database: Flask-Session's table, made by `first` (the Rust
/// migration or Flask-Session's own `create`), then used by both.
fn sql_both_directions(rust_url: &str, flask_url: &str, table: &str, rust_first: bool) {
    let store = rt()
        .block_on(SqlStore::connect(rust_url))
        .unwrap()
        .table(table);
    let store = FlaskSessionStore::sql(store);
    drop_table(rust_url, table);
    if rust_first {
        rt().block_on(store.migrate()).unwrap();
    }
    let env = [
        ("BACKEND", "sqlalchemy"),
        ("URL", flask_url),
        ("TABLE", table),
    ];
    let Some(flask) = FlaskApp::start(&env) else {
        return;
    };
    // Either way, a second migration changes nothing.
    rt().block_on(store.migrate()).unwrap();
    both_directions(&flask, store.clone());
    // What expired goes in the cleanup, as Flask-Session's `session_cleanup`.
    let mut cookie = String::new();
    flask.call("POST", "/set", r#"{"user": "old"}"#, &mut cookie);
    use session_layer::store::SessionStore;
    let removed = rt()
        .block_on(store.delete_expired(now() + LIFETIME + 60))
        .unwrap();
    assert!(removed >= 1, "the expired row was removed");
    assert_eq!(flask.values(&mut cookie), json!({"_permanent": true}));
}

fn drop_table(url: &str, table: &str) {
    rt().block_on(async {
        use sqlx::Executor;
        let statement = format!("DROP TABLE IF EXISTS {table}");
        if url.starts_with("postgres") {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            pool.execute(statement.as_str()).await.unwrap();
        } else if url.starts_with("mysql") {
            let pool = sqlx::MySqlPool::connect(url).await.unwrap();
            pool.execute(statement.as_str()).await.unwrap();
        }
    });
}

#[test]
fn postgres_both_directions() {
    if !reachable("127.0.0.1:5432") {
        return;
    }
    sql_both_directions(
        "postgres://postgres@127.0.0.1:5432/test",
        "postgresql+psycopg2://postgres@127.0.0.1:5432/test",
        "flask_sessions_pg",
        true,
    );
}

#[test]
fn mariadb_both_directions() {
    if !reachable("127.0.0.1:3306") {
        return;
    }
    sql_both_directions(
        "mysql://root@127.0.0.1:3306/test",
        "mysql+pymysql://root@127.0.0.1:3306/test",
        "flask_sessions_my",
        false,
    );
}

#[test]
fn sqlite_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    sql_both_directions(
        &format!("sqlite:{}", path.display()),
        &format!("sqlite:///{}", path.display()),
        "sessions",
        true,
    );
}

#[test]
fn mongodb_both_directions() {
    let Some(server) = common::ServerProcess::start_mongo(common::free_port()) else {
        return;
    };
    let env = [("BACKEND", "mongodb"), ("URL", &server.url())];
    let Some(flask) = FlaskApp::start(&env) else {
        return;
    };
    let url = format!("{}/flask_session", server.url());
    let store = rt().block_on(MongoStore::connect(&url)).unwrap();
    let store = FlaskSessionStore::mongodb(store);
    rt().block_on(store.migrate()).unwrap();
    both_directions(&flask, store);
}

/// The store conformance suite on every server, through Flask-Session's
/// records.
mod conformance {
    use std::sync::Arc;

    use session_layer::store::{
        FlaskSessionStore, MemcachedStore, MongoStore, RedisStore, SqlStore,
    };
    use session_layer::testing::check_store;

    use super::{drop_table, reachable};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis() {
        if reachable("127.0.0.1:6379") {
            let store = RedisStore::connect(&super::redis_url()).await.unwrap();
            check_store(Arc::new(
                FlaskSessionStore::redis(store).key_prefix("fs-conformance:"),
            ))
            .await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_cluster() {
        if reachable("127.0.0.1:7001") {
            let nodes = [
                "redis://127.0.0.1:7001",
                "redis://127.0.0.1:7002",
                "redis://127.0.0.1:7003",
            ];
            let store = RedisStore::cluster(&nodes).await.unwrap();
            check_store(Arc::new(FlaskSessionStore::redis(store))).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memcached() {
        if reachable("127.0.0.1:11211") {
            let store = MemcachedStore::connect("memcache://127.0.0.1:11211")
                .await
                .unwrap();
            check_store(Arc::new(FlaskSessionStore::memcached(store))).await;
        }
    }

    async fn sql(url: &str, table: &str) {
        tokio::task::block_in_place(|| drop_table(url, table));
        let store = FlaskSessionStore::sql(SqlStore::connect(url).await.unwrap().table(table));
        store.migrate().await.unwrap();
        check_store(Arc::new(store)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        if reachable("127.0.0.1:5432") {
            sql(
                "postgres://postgres@127.0.0.1:5432/test",
                "flask_sessions_pg_conformance",
            )
            .await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn mariadb() {
        if reachable("127.0.0.1:3306") {
            sql(
                "mysql://root@127.0.0.1:3306/test",
                "flask_sessions_my_conformance",
            )
            .await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        let dir = tempfile::tempdir().unwrap();
        sql(
            &format!("sqlite:{}", dir.path().join("s.db").display()),
            "sessions",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn mongodb() {
        let Some(server) = crate::common::ServerProcess::start_mongo(crate::common::free_port())
        else {
            return;
        };
        let store = MongoStore::connect(&format!("{}/flask_session", server.url()))
            .await
            .unwrap();
        let store = FlaskSessionStore::mongodb(store);
        store.migrate().await.unwrap();
        check_store(Arc::new(store)).await;
    }
}

/// A request that only turns the session permanent (or back), changing no
/// value, writes `_permanent` into the record: it is in the dict, so a
/// refresh of the expiry alone would drop the change, for both apps.
#[tokio::test]
async fn a_flag_change_alone_reaches_the_record() {
    use session_layer::store::{Changes, Record, SessionId, SessionStore};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("flag.db").display());
    let mut stores = vec![FlaskSessionStore::sql(
        SqlStore::connect(&url).await.unwrap(),
    )];
    if reachable("127.0.0.1:6379") {
        stores.push(FlaskSessionStore::redis(
            RedisStore::connect(&redis_url()).await.unwrap(),
        ));
    }
    if reachable("127.0.0.1:11211") {
        stores.push(FlaskSessionStore::memcached(
            MemcachedStore::connect("memcache://127.0.0.1:11211")
                .await
                .unwrap(),
        ));
    }
    let mongo = common::ServerProcess::start_mongo(common::free_port());
    if let Some(server) = &mongo {
        let url = format!("{}/flask_session", server.url());
        stores.push(FlaskSessionStore::mongodb(
            MongoStore::connect(&url).await.unwrap(),
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for store in stores {
        store.migrate().await.unwrap();
        let id = SessionId::generate();
        let mut data = serde_json::Map::new();
        data.insert("user".into(), json!("ann"));
        let record = Record::new(data, false, now, now + 600);
        assert!(store.create(&id, &record).await.unwrap());
        for permanent in [true, false] {
            let mut changes = Changes::expiry(now, now + 900);
            changes.permanent = Some(permanent);
            assert!(store.apply(&id, &changes).await.unwrap(), "{store:?}");
            let loaded = store.load(&id, now).await.unwrap().unwrap();
            assert_eq!(loaded.permanent, permanent, "{store:?}");
            assert_eq!(loaded.data.get("user"), Some(&json!("ann")), "{store:?}");
        }
        store.delete(&id).await.unwrap();
    }
}

/// `SqlStore` and Flask-Session both default to a table named `sessions`:
/// `migrate` on a database where `SqlStore` made its own says which table
/// is in the way and what to do, not only the database's "no such column".
#[tokio::test]
async fn migrate_names_a_table_in_another_layout() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("both.db").display());
    let own = SqlStore::connect(&url).await.unwrap();
    own.migrate().await.unwrap();
    let error = FlaskSessionStore::sql(SqlStore::connect(&url).await.unwrap())
        .migrate()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), session_layer::ErrorKind::Store);
    let cause = std::error::Error::source(&error).unwrap().to_string();
    assert!(cause.contains("\"sessions\""), "{cause}");
    assert!(cause.contains("SqlStore::table"), "{cause}");
    assert!(cause.contains("session_id"), "{cause}");
    // Under another name, both live in one database.
    let flask = FlaskSessionStore::sql(
        SqlStore::connect(&url)
            .await
            .unwrap()
            .table("flask_sessions"),
    );
    flask.migrate().await.unwrap();
}

/// `examples/kv` with `SESSION_FORMAT=flask-session` shares sessions with
/// the Flask-Session app on every server.
#[test]
fn the_kv_example_speaks_flask_session_on_every_server() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("kv.db");
    let mongo = common::ServerProcess::start_mongo(common::free_port());
    let mut servers: Vec<(String, Vec<(&str, String)>)> = vec![
        (
            redis_url(),
            vec![("BACKEND", "redis".into()), ("URL", redis_url())],
        ),
        (
            "memcache://127.0.0.1:11211".into(),
            vec![
                ("BACKEND", "memcached".into()),
                ("URL", "127.0.0.1:11211".into()),
            ],
        ),
        (
            "postgres://postgres@127.0.0.1:5432/test".into(),
            vec![
                ("BACKEND", "sqlalchemy".into()),
                (
                    "URL",
                    "postgresql+psycopg2://postgres@127.0.0.1:5432/test".into(),
                ),
                ("TABLE", "flask_kv_sessions".into()),
            ],
        ),
        (
            "mysql://root@127.0.0.1:3306/test".into(),
            vec![
                ("BACKEND", "sqlalchemy".into()),
                ("URL", "mysql+pymysql://root@127.0.0.1:3306/test".into()),
                ("TABLE", "flask_kv_sessions".into()),
            ],
        ),
        (
            format!("sqlite:{}", sqlite.display()),
            vec![
                ("BACKEND", "sqlalchemy".into()),
                ("URL", format!("sqlite:///{}", sqlite.display())),
                ("TABLE", "flask_kv_sessions".into()),
            ],
        ),
    ];
    if let Some(mongo) = &mongo {
        servers.push((
            format!("{}/flask_session", mongo.url()),
            vec![("BACKEND", "mongodb".into()), ("URL", mongo.url())],
        ));
    }
    for (store, flask_env) in servers {
        let host = store
            .split("://")
            .nth(1)
            .unwrap_or("")
            .split(['/', '@'])
            .next_back();
        if let Some(host) = host.filter(|h| h.contains(':'))
            && !reachable(host.split('/').next().unwrap())
        {
            continue;
        }
        let env: Vec<(&str, &str)> = flask_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let Some(flask) = FlaskApp::start(&env) else {
            return;
        };
        let kv = common::start_example(
            "kv",
            &[
                ("SESSION_FORMAT", "flask-session"),
                ("SESSION_STORE", &store),
                ("SESSION_SECURE", "false"),
                ("SESSION_FLASK_TABLE", "flask_kv_sessions"),
            ],
        );
        let mut cookie = String::new();
        let reply = common::http_request(&kv.addr, "PUT", "/session/user", "\"ann\"", &cookie);
        assert_eq!(reply.status, 200, "{store}: {}", reply.body);
        keep(&reply.set_cookies, &mut cookie);
        assert_eq!(
            flask.values(&mut cookie),
            json!({"user": "ann"}),
            "{store}: Flask reads what kv wrote"
        );
        flask.call(
            "POST",
            "/set",
            r#"{"cart": {"$tuple": [1, 2]}}"#,
            &mut cookie,
        );
        let reply = common::http_request(&kv.addr, "GET", "/session", "", &cookie);
        assert_eq!(
            reply.body, r#"{"cart":[1,2],"user":"ann"}"#,
            "{store}: kv reads what Flask wrote"
        );
    }
}

/// The README's walk-through of `examples/flask_session_shared`: Flask
/// with Flask-Session and the Axum example share one login over Redis.
#[test]
fn a_login_on_one_app_is_seen_by_the_other_through_redis() {
    if !reachable("127.0.0.1:6379") {
        return;
    }
    let env = [("REDIS_URL", redis_url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let script = "examples/flask_session_shared/app.py";
    let Some(flask) = common::start_python_app(script, &env, "flask_session, redis") else {
        return;
    };
    let axum_app = common::start_example("flask_session_shared", &[("REDIS_URL", &redis_url())]);
    let axum = axum_app.addr.clone();
    let mut cookie = String::new();

    assert_eq!(
        visit(&flask.addr, "POST", "/login", "user=ann", &mut cookie),
        "logged in as ann (by Flask)\n"
    );
    assert_eq!(
        visit(&axum, "GET", "/whoami", "", &mut cookie),
        "ann (logged in by flask, seen by Axum, visit 1)\n"
    );
    assert_eq!(
        visit(&flask.addr, "GET", "/whoami", "", &mut cookie),
        "ann (logged in by flask, seen by Flask, visit 2)\n"
    );
    let before = cookie.clone();
    assert_eq!(
        visit(&axum, "POST", "/login", "user=bob", &mut cookie),
        "logged in as bob (by Axum)\n"
    );
    assert_ne!(cookie, before, "a new id at login");
    assert_eq!(
        visit(&flask.addr, "GET", "/whoami", "", &mut cookie),
        "bob (logged in by axum, seen by Flask, visit 1)\n"
    );
    assert_eq!(
        visit(&axum, "POST", "/logout", "", &mut cookie),
        "logged out (by Axum)\n"
    );
    assert!(cookie.is_empty(), "the Axum logout deleted the cookie");
    assert_eq!(
        visit(&flask.addr, "GET", "/whoami", "", &mut cookie),
        "anonymous (logged in by nobody, seen by Flask, visit 1)\n"
    );
    assert_eq!(
        visit(&flask.addr, "POST", "/logout", "", &mut cookie),
        "logged out (by Flask)\n"
    );
    assert!(cookie.is_empty(), "the Flask logout deleted the cookie");
    assert_eq!(
        visit(&axum, "GET", "/whoami", "", &mut cookie),
        "anonymous (logged in by nobody, seen by Axum, visit 1)\n"
    );
    // The old session, ended by the logout, stays ended for both.
    cookie = before;
    assert_eq!(
        visit(&flask.addr, "GET", "/whoami", "", &mut cookie),
        "anonymous (logged in by nobody, seen by Flask, visit 1)\n"
    );
}

/// One request of a browser whose cookie both apps share.
fn visit(addr: &str, method: &str, path: &str, body: &str, cookie: &mut String) -> String {
    let reply = common::http_request(addr, method, path, body, cookie);
    assert_eq!(reply.status, 200, "{method} {path}: {}", reply.body);
    keep(&reply.set_cookies, cookie);
    reply.body
}

/// Writes a document into the `sessions` collection of `flask_session` on
/// `server`, through pymongo, as another tool would.
fn insert_mongo_document(server: &common::ServerProcess, document: &str) {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    let inserted = Command::new(python)
        .args([
            "-c",
            "import sys, datetime, pymongo\n\
             c = pymongo.MongoClient(sys.argv[1])\n\
             c.flask_session.sessions.insert_one(eval(sys.argv[2]))",
            &server.url(),
            document,
        ])
        .status()
        .unwrap();
    assert!(inserted.success());
}

/// A document whose write counter `v` is not a counter this store wrote
/// (a double, a negative number: a corrupt or foreign document) still
/// takes a save: the compare-and-swap matches `v` as it was read, instead
/// of retrying until it gives up with a 503 on every request.
#[test]
fn a_mongodb_record_with_a_foreign_counter_takes_a_save() {
    use session_layer::store::{Changes, SessionId, SessionStore};

    let Some(server) = common::ServerProcess::start_mongo(common::free_port()) else {
        return;
    };
    let url = format!("{}/flask_session", server.url());
    let store = rt().block_on(MongoStore::connect(&url)).unwrap();
    let store = FlaskSessionStore::mongodb(store);
    let now = now();
    for (id, v) in [
        ("wQZ1yu7sOyzUA0mUCWU8SGHd5PyGb2DMwWbsoYdo_SA", "2.5"),
        ("xQZ1yu7sOyzUA0mUCWU8SGHd5PyGb2DMwWbsoYdo_SA", "-3"),
    ] {
        insert_mongo_document(
            &server,
            &format!(
                "{{'id': 'session:{id}', 'val': b'\\x81\\xa4user\\xa3ann', 'v': {v}, \
                 'expiration': datetime.datetime.utcfromtimestamp({})}}",
                now + LIFETIME
            ),
        );
        let id = SessionId::parse(id).unwrap();
        rt().block_on(async {
            let mut changes = Changes::expiry(now, now + LIFETIME);
            changes.set.push(("cart".into(), json!([1])));
            assert!(store.apply(&id, &changes).await.unwrap(), "v = {v}");
            let record = store.load(&id, now).await.unwrap().expect("live");
            assert_eq!(record.data["cart"], json!([1]));
            assert_eq!(record.data["user"], "ann");
        });
    }
}

/// A MongoDB document without `expiration` (written by another tool, or
/// by hand: Flask-Session loads it, and the TTL index never removes it)
/// is a live session; moving its expiry gives it one rather than
/// answering that the session ended.
#[test]
fn a_mongodb_record_without_expiration_takes_a_refresh() {
    use session_layer::store::{Changes, SessionId, SessionStore};

    let Some(server) = common::ServerProcess::start_mongo(common::free_port()) else {
        return;
    };
    let id = "wQZ1yu7sOyzUA0mUCWU8SGHd5PyGb2DMwWbsoYdo_SA";
    insert_mongo_document(
        &server,
        &format!("{{'id': 'session:{id}', 'val': b'\\x81\\xa4user\\xa3ann'}}"),
    );
    let url = format!("{}/flask_session", server.url());
    let store = rt().block_on(MongoStore::connect(&url)).unwrap();
    let store = FlaskSessionStore::mongodb(store);
    let id = SessionId::parse(id).unwrap();
    let now = now();
    rt().block_on(async {
        let record = store.load(&id, now).await.unwrap().expect("a live record");
        assert_eq!(record.data["user"], "ann");
        let refresh = Changes::expiry(now, now + LIFETIME);
        assert!(
            store.apply(&id, &refresh).await.unwrap(),
            "the record is there: the refresh must not end the session"
        );
        let record = store.load(&id, now).await.unwrap().expect("still live");
        assert_eq!(record.expires_at, now + LIFETIME);
        assert_eq!(record.data["user"], "ann");
    });
}

/// A session too large for this store to read back is refused when it is
/// saved, where the layer reports the failure, never stored and then read
/// as no session (the user logged out, the data gone, with no trace).
#[test]
fn a_record_too_large_to_read_back_is_not_saved() {
    use session_layer::store::{Record, SessionId, SessionStore};

    if !reachable("127.0.0.1:6379") {
        return;
    }
    let store = rt().block_on(RedisStore::connect(&redis_url())).unwrap();
    let store = FlaskSessionStore::redis(store).key_prefix("fs-too-large:");
    let now = now();
    let mut data = serde_json::Map::new();
    data.insert("blob".into(), Value::String("x".repeat(1 << 20)));
    let record = Record::new(data, true, now, now + LIFETIME);
    let id = SessionId::generate();
    rt().block_on(async {
        match store.create(&id, &record).await {
            Err(_) => {}
            Ok(created) => {
                assert!(created);
                let read = store.load(&id, now).await.unwrap();
                store.delete(&id).await.unwrap();
                assert!(read.is_some(), "saved, then read as no session");
            }
        }
    });
}

/// A save that rewrites the record as it was (a key set to the value it
/// holds, in the second of the last write) succeeds: on MySQL/MariaDB the
/// compare-and-swap `UPDATE` then changes no row, and only the matched-rows
/// count (the client's FOUND_ROWS flag, which sqlx sets) tells it apart
/// from a lost race.
#[test]
fn an_sql_save_that_changes_nothing_succeeds() {
    use session_layer::store::{Changes, Record, SessionId, SessionStore};

    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite:{}", dir.path().join("same.db").display());
    for (url, server) in [
        ("mysql://root@127.0.0.1:3306/test", Some("127.0.0.1:3306")),
        (
            "postgres://postgres@127.0.0.1:5432/test",
            Some("127.0.0.1:5432"),
        ),
        (sqlite.as_str(), None),
    ] {
        if server.is_some_and(|s| !reachable(s)) {
            continue;
        }
        let table = "flask_sessions_unchanged";
        drop_table(url, table);
        rt().block_on(async {
            let store = FlaskSessionStore::sql(SqlStore::connect(url).await.unwrap().table(table));
            store.migrate().await.unwrap();
            let now = now();
            let mut data = serde_json::Map::new();
            data.insert("a".into(), json!(1));
            let id = SessionId::generate();
            let record = Record::new(data, true, now, now + LIFETIME);
            assert!(store.create(&id, &record).await.unwrap());
            let mut same = Changes::expiry(now, now + LIFETIME);
            same.set.push(("a".into(), json!(1)));
            assert!(store.apply(&id, &same).await.unwrap(), "{url}");
        });
        drop_table(url, table);
    }
}
