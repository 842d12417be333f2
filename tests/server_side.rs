//! Server-side sessions end to end: the layer with a store behind it.
#![cfg(all(feature = "axum", feature = "memory-store"))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::Path;
use axum::routing::{get, post, put};
use common::{Jar, TestClock, body_text, get as get_req, set_cookies, with_cookie};
use http::StatusCode;
use session_layer::store::{Changes, MemoryStore, Record, SessionId, SessionStore};
use session_layer::{Error, ErrorKind, Key, Session, SessionLayer};
use tower::ServiceExt;

/// The test clock's start (2033). The stores judge expiry by the layer's
/// clock, so any time would do for them; the test's cookie jar judges
/// `Expires` by the system clock, so cookies must not be dated in its past.
const T0: u64 = 2_000_000_000;

/// A store that counts calls and fails on demand, around a MemoryStore.
#[derive(Debug, Default)]
struct Probe {
    inner: MemoryStore,
    loads: AtomicUsize,
    creates: AtomicUsize,
    applies: AtomicUsize,
    deletes: AtomicUsize,
    fail_loads: AtomicBool,
    fail_saves: AtomicBool,
    fail_deletes: AtomicBool,
    fail_applies: AtomicBool,
    lose_records: AtomicBool,
}

impl Probe {
    fn counts(&self) -> [usize; 4] {
        [&self.loads, &self.creates, &self.applies, &self.deletes].map(|c| c.load(Ordering::SeqCst))
    }

    fn down(&self) -> Error {
        Error::store(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "store is down",
        ))
    }
}

#[async_trait]
impl SessionStore for Probe {
    async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        if self.fail_loads.load(Ordering::SeqCst) {
            return Err(self.down());
        }
        self.inner.load(id, now).await
    }
    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        if self.fail_saves.load(Ordering::SeqCst) {
            return Err(self.down());
        }
        self.inner.create(id, record).await
    }
    async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
        self.applies.fetch_add(1, Ordering::SeqCst);
        if self.fail_saves.load(Ordering::SeqCst) || self.fail_applies.load(Ordering::SeqCst) {
            return Err(self.down());
        }
        if self.lose_records.load(Ordering::SeqCst) {
            self.inner.delete(id).await?;
        }
        self.inner.apply(id, changes).await
    }
    async fn delete(&self, id: &SessionId) -> Result<(), Error> {
        self.deletes.fetch_add(1, Ordering::SeqCst);
        if self.fail_deletes.load(Ordering::SeqCst) {
            return Err(self.down());
        }
        self.inner.delete(id).await
    }
    async fn take(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        self.deletes.fetch_add(1, Ordering::SeqCst);
        self.inner.take(id, now).await
    }
}

async fn read(session: Session) -> Result<String, Error> {
    Ok(serde_json::to_string(&session.to_map()).unwrap())
}

async fn set(
    session: Session,
    Path((key, value)): Path<(String, String)>,
) -> Result<String, Error> {
    session.insert(key, value)?;
    Ok("set".into())
}

async fn cycle(session: Session) -> &'static str {
    session.cycle_id();
    "cycled"
}

async fn flush(session: Session) -> &'static str {
    session.flush();
    "flushed"
}

async fn permanent(session: Session) -> &'static str {
    session.set_permanent(true);
    "permanent"
}

async fn twice(a: Session, b: Session) -> Result<String, Error> {
    a.insert("via", "a")?;
    Ok(b.get::<String>("via")?.unwrap_or_default())
}

fn app(
    store: Arc<Probe>,
    clock: &TestClock,
    configure: impl FnOnce(SessionLayer) -> SessionLayer,
) -> Router {
    let layer =
        configure(SessionLayer::new(Key::from_bytes(&[5; 32]).unwrap()).clock(clock.source()));
    Router::new()
        .route("/", get(read))
        .route("/untouched", get(|| async { "hi" }))
        .route("/set/{key}/{value}", put(set).get(set))
        .route("/cycle", post(cycle))
        .route("/flush", post(flush))
        .route("/permanent", post(permanent))
        .route("/twice", get(twice))
        .route(
            "/extract-only",
            get(|_session: Session| async { "took it" }),
        )
        .layer(layer.with_store(store))
}

fn setup() -> (Arc<Probe>, TestClock, Router) {
    let store = Arc::new(Probe::default());
    let clock = TestClock::at(T0);
    let router = app(store.clone(), &clock, |l| l);
    (store, clock, router)
}

async fn show(jar: &mut Jar, app: &Router) -> String {
    jar.get_text(app, "/").await.1
}

#[tokio::test]
async fn the_cookie_holds_only_a_signed_id_and_the_data_lives_in_the_store() {
    let (store, _, app) = setup();
    let mut jar = Jar::new();
    jar.send(&app, get_req("/set/secret/hunter2")).await;
    let cookie = jar.get("session").unwrap().to_owned();
    assert!(!cookie.contains("hunter2"));
    let (id, tag) = cookie.split_once('.').unwrap();
    assert_eq!((id.len(), tag.len()), (43, 22));
    assert_eq!(store.inner.len(), 1);
    assert_eq!(show(&mut jar, &app).await, r#"{"secret":"hunter2"}"#);
}

#[tokio::test]
async fn the_store_is_read_only_by_routes_that_take_the_session_and_only_once() {
    let (store, _, app) = setup();
    let mut jar = Jar::new();
    jar.send(&app, get_req("/set/a/1")).await;
    let before = store.counts();
    jar.send(&app, get_req("/untouched")).await;
    assert_eq!(
        store.counts(),
        before,
        "an untouched route costs no store call"
    );
    let response = jar.send(&app, get_req("/twice")).await;
    assert_eq!(
        body_text(response).await,
        "a",
        "two extractors share one session"
    );
    assert_eq!(
        store.counts()[0],
        before[0] + 1,
        "one load for two extractors"
    );
}

#[tokio::test]
async fn anonymous_traffic_writes_nothing() {
    let (store, _, app) = setup();
    for _ in 0..10 {
        let response = app.clone().oneshot(get_req("/")).await.unwrap();
        assert!(set_cookies(&response).is_empty());
    }
    assert_eq!(store.counts(), [0, 0, 0, 0], "no cookie: no load, no write");
    assert!(store.inner.is_empty());
}

#[tokio::test]
async fn forged_and_malformed_ids_never_reach_the_store() {
    let (store, _, app) = setup();
    let mut jar = Jar::new();
    jar.send(&app, get_req("/set/a/1")).await;
    let good = jar.get("session").unwrap().to_owned();
    let (id, tag) = good.split_once('.').unwrap();
    let other_key =
        SessionLayer::new(Key::from_bytes(&[6; 32]).unwrap()).with_store(MemoryStore::new());
    let foreign = Router::new()
        .route("/set/{k}/{v}", get(set))
        .layer(other_key);
    let foreign_cookie = Jar::new().send(&foreign, get_req("/set/a/1")).await;
    let foreign_cookie = set_cookies(&foreign_cookie)[0]
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let before = store.counts()[0];
    for bad in [
        format!("session={id}"),
        format!("session={id}.AAAAAAAAAAAAAAAAAAAAAA"),
        format!("session=../../etc/passwd.{tag}"),
        format!("session={}.{tag}", "A".repeat(43)),
        foreign_cookie,
        "session=".into(),
        format!("session={}", "x".repeat(5000)),
    ] {
        let response = app.clone().oneshot(with_cookie("/", &bad)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{bad:.50}");
        assert_eq!(body_text(response).await, "{}", "{bad:.50}");
    }
    assert_eq!(store.counts()[0], before, "no forged id was looked up");
}

#[tokio::test]
async fn an_unknown_id_is_never_adopted() {
    let (store, _, app) = setup();
    let mut jar = Jar::new();
    jar.send(&app, get_req("/set/a/1")).await;
    let planted = jar.get("session").unwrap().to_owned();
    // The record disappears (expired, or an attacker's id from another
    // deployment with the same key): the id must not be reused.
    let id = SessionId::parse(planted.split_once('.').unwrap().0).unwrap();
    store.inner.delete(&id).await.unwrap();
    assert_eq!(show(&mut jar, &app).await, "{}");
    jar.send(&app, get_req("/set/b/2")).await;
    let issued = jar.get("session").unwrap();
    assert_ne!(issued, planted, "a fresh id is issued");
    assert!(
        store.inner.load(&id, T0).await.unwrap().is_none(),
        "the planted id stays unknown"
    );
}

#[tokio::test]
async fn cycle_id_moves_the_data_to_a_new_id_and_kills_the_old() {
    let (store, _, app) = setup();
    let mut jar = Jar::new();
    jar.send(&app, get_req("/set/user/ann")).await;
    let before = jar.get("session").unwrap().to_owned();
    jar.send(
        &app,
        http::Request::post("/cycle")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    let after = jar.get("session").unwrap().to_owned();
    assert_ne!(before, after);
    assert_eq!(show(&mut jar, &app).await, r#"{"user":"ann"}"#);
    assert_eq!(store.inner.len(), 1, "the old record is gone");
    let response = app
        .clone()
        .oneshot(with_cookie("/", &format!("session={before}")))
        .await
        .unwrap();
    assert_eq!(body_text(response).await, "{}", "the old id is worthless");
}

/// A login (`cycle_id`) that loaded the session before another request of
/// the same user wrote to it: the write was answered 200, so it must be
/// under the new id, not lost with the old one.
#[tokio::test]
async fn a_write_racing_cycle_id_is_carried_to_the_new_id() {
    let store = Arc::new(Probe::default());
    let clock = TestClock::at(T0);
    let loaded = Arc::new(tokio::sync::Notify::new());
    let go = Arc::new(tokio::sync::Notify::new());
    let login = {
        let (loaded, go) = (loaded.clone(), go.clone());
        move |session: Session| async move {
            loaded.notify_one();
            go.notified().await;
            session.cycle_id();
            session.insert("user", "ann").unwrap();
            "signed in"
        }
    };
    let layer = SessionLayer::new(Key::from_bytes(&[5; 32]).unwrap())
        .clock(clock.source())
        .with_store(store.clone());
    let app = Router::new()
        .route("/", get(read))
        .route("/set/{key}/{value}", get(set))
        .route("/login", post(login))
        .layer(layer);
    let mut jar = Jar::new();
    jar.send(&app, get_req("/set/cart/apple")).await;
    let old = jar.header().unwrap();
    let signing_in = login_in_background(&app, &old);
    loaded.notified().await;
    let write = app
        .clone()
        .oneshot(with_cookie("/set/note/hi", &old))
        .await
        .unwrap();
    assert_eq!(
        write.status(),
        StatusCode::OK,
        "the racing write was acknowledged"
    );
    go.notify_one();
    let response = signing_in.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    jar.store(&response);
    assert_ne!(jar.header().unwrap(), old, "a new id");
    assert_eq!(
        show(&mut jar, &app).await,
        r#"{"cart":"apple","note":"hi","user":"ann"}"#,
        "the acknowledged write moved with the session"
    );
    assert_eq!(store.inner.len(), 1, "the old record is gone");
}

#[tokio::test]
async fn flush_deletes_the_record_and_the_cookie_and_the_id_cannot_come_back() {
    let (store, _, app) = setup();
    let mut jar = Jar::new();
    jar.send(&app, get_req("/set/user/ann")).await;
    let old = jar.get("session").unwrap().to_owned();
    let response = jar
        .send(
            &app,
            http::Request::post("/flush")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert!(set_cookies(&response)[0].contains("Max-Age=0"));
    assert!(jar.get("session").is_none());
    assert!(store.inner.is_empty());
    // Replaying the old cookie and writing gets a new id, not the old one.
    let mut replay = Jar::new();
    replay.cookies.insert("session".into(), old.clone());
    assert_eq!(show(&mut replay, &app).await, "{}");
    replay.send(&app, get_req("/set/x/1")).await;
    assert_ne!(replay.get("session").unwrap(), old);
}

#[tokio::test]
async fn a_store_that_cannot_load_answers_503_through_the_hook_not_an_empty_session() {
    let (store, _, app) = setup();
    let mut jar = Jar::new();
    jar.send(&app, get_req("/set/user/ann")).await;
    store.fail_loads.store(true, Ordering::SeqCst);
    let response = jar.send(&app, get_req("/set/other/1")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let error = response
        .extensions()
        .get::<Error>()
        .expect("error in extensions");
    assert_eq!(error.kind(), ErrorKind::Store);
    assert!(body_text(response).await.is_empty(), "nothing leaks");
    assert_eq!(
        store.counts()[2],
        0,
        "nothing was written over the user's data"
    );

    store.fail_loads.store(false, Ordering::SeqCst);
    assert_eq!(
        show(&mut jar, &app).await,
        r#"{"user":"ann"}"#,
        "recovers by itself"
    );

    // A custom hook answers load failures too.
    store.fail_loads.store(true, Ordering::SeqCst);
    let custom = Router::new().route("/", get(read)).layer(
        SessionLayer::new(Key::from_bytes(&[5; 32]).unwrap())
            .with_store(store.clone())
            .with_error_handler(|e: &Error| {
                http::Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(axum::body::Body::from(format!("{:?}", e.kind())))
                    .unwrap()
            }),
    );
    let response = jar.send(&custom, get_req("/")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(body_text(response).await, "Store");
}

#[tokio::test]
async fn a_store_that_cannot_save_is_an_error_response() {
    let (store, _, app) = setup();
    let mut jar = Jar::new();
    store.fail_saves.store(true, Ordering::SeqCst);
    let response = jar.send(&app, get_req("/set/user/ann")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(set_cookies(&response).is_empty());
    store.fail_saves.store(false, Ordering::SeqCst);
    jar.send(&app, get_req("/set/user/ann")).await;
    store.fail_saves.store(true, Ordering::SeqCst);
    let response = jar.send(&app, get_req("/set/user/bob")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    store.fail_saves.store(false, Ordering::SeqCst);
    assert_eq!(show(&mut jar, &app).await, r#"{"user":"ann"}"#);
}

#[tokio::test]
async fn a_session_that_ends_during_the_request_is_not_brought_back() {
    let (store, _, app) = setup();
    let mut jar = Jar::new();
    jar.send(&app, get_req("/set/user/ann")).await;
    store.lose_records.store(true, Ordering::SeqCst);
    let response = jar.send(&app, get_req("/set/user/mallory")).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(
        response.extensions().get::<Error>().unwrap().kind(),
        ErrorKind::SessionEnded
    );
    assert!(store.inner.is_empty());
}

#[tokio::test]
async fn concurrent_requests_of_one_user_writing_different_keys_all_survive() {
    let (_, _, app) = setup();
    let mut jar = Jar::new();
    jar.send(&app, get_req("/set/start/0")).await;
    let cookie = jar.header().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (app, cookie) = (app.clone(), cookie.clone());
        tasks.spawn(async move {
            let response = app
                .oneshot(with_cookie(&format!("/set/k{i}/{i}"), &cookie))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let all: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&show(&mut jar, &app).await).unwrap();
    assert_eq!(all.len(), 51, "every concurrent write survived: {all:?}");
}

#[tokio::test]
async fn idle_and_absolute_timeouts_are_enforced_from_the_record() {
    let store = Arc::new(Probe::default());
    let clock = TestClock::at(T0);
    let app = app(store.clone(), &clock, |l| {
        l.idle_timeout(Duration::from_secs(600))
            .absolute_timeout(Duration::from_secs(3600))
            .refresh_interval(Duration::from_secs(60))
    });
    let mut jar = Jar::new();
    jar.send(&app, get_req("/set/user/ann")).await;
    // Active every 5 minutes: the idle timeout keeps moving...
    for _ in 0..6 {
        clock.advance(300);
        assert_eq!(show(&mut jar, &app).await, r#"{"user":"ann"}"#);
    }
    // ...until the absolute timeout, 60 minutes after creation.
    clock.advance(1800);
    assert_eq!(show(&mut jar, &app).await, "{}", "absolute timeout");

    let mut idle = Jar::new();
    idle.send(&app, get_req("/set/user/bob")).await;
    clock.advance(599);
    assert_eq!(show(&mut idle, &app).await, r#"{"user":"bob"}"#);
    clock.advance(600);
    assert_eq!(show(&mut idle, &app).await, "{}", "idle timeout");
}

#[tokio::test]
async fn refreshing_the_expiry_is_throttled() {
    let store = Arc::new(Probe::default());
    let clock = TestClock::at(T0);
    let app = app(store.clone(), &clock, |l| {
        l.refresh_interval(Duration::from_secs(60))
    });
    let mut jar = Jar::new();
    jar.send(&app, get_req("/set/user/ann")).await;
    let applies = || store.counts()[2];
    for _ in 0..5 {
        clock.advance(10);
        show(&mut jar, &app).await;
    }
    assert_eq!(applies(), 0, "reads within the interval write nothing");
    clock.advance(20);
    show(&mut jar, &app).await;
    assert_eq!(applies(), 1, "one refresh once the interval passed");
    show(&mut jar, &app).await;
    assert_eq!(applies(), 1);
}

/// A permanent session's refresh rewrites the id cookie though the handler
/// called no `Session` method: the response varies on `Cookie` all the same.
#[tokio::test]
async fn a_refresh_of_a_stored_session_varies_on_cookie() {
    let (_, clock, app) = setup();
    let mut jar = Jar::new();
    jar.send(&app, get_req("/set/user/ann")).await;
    jar.send(
        &app,
        http::Request::post("/permanent")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    clock.advance(3600);
    let response = jar.send(&app, get_req("/extract-only")).await;
    assert_eq!(set_cookies(&response).len(), 1, "the cookie was refreshed");
    let vary: Vec<_> = response
        .headers()
        .get_all(http::header::VARY)
        .iter()
        .collect();
    assert_eq!(vary, ["Cookie"]);
}

#[tokio::test]
async fn permanent_sessions_get_a_cookie_expiring_with_the_record() {
    let store = Arc::new(Probe::default());
    let clock = TestClock::at(T0);
    let app = app(store.clone(), &clock, |l| {
        l.lifetime(Duration::from_secs(7200))
    });
    let mut jar = Jar::new();
    jar.send(&app, get_req("/set/user/ann")).await;
    let response = jar
        .send(
            &app,
            http::Request::post("/permanent")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    let line = &set_cookies(&response)[0];
    assert!(line.contains("Max-Age=7200"), "{line}");
    let id = SessionId::parse(jar.get("session").unwrap().split_once('.').unwrap().0).unwrap();
    let record = store.inner.load(&id, T0).await.unwrap().unwrap();
    assert!(record.permanent);
    assert_eq!(record.expires_at, T0 + 7200);
}

#[tokio::test]
async fn ids_signed_with_a_fallback_key_still_work_and_are_re_signed() {
    let store = Arc::new(MemoryStore::new());
    let old = Key::from_bytes(&[1; 32]).unwrap();
    let new = Key::from_bytes(&[2; 32]).unwrap();
    let before = Router::new()
        .route("/set/{k}/{v}", get(set))
        .route("/", get(read))
        .layer(SessionLayer::new(old.clone()).with_store(store.clone()));
    let after = Router::new().route("/", get(read)).layer(
        SessionLayer::new(session_layer::Keyring::new(new).fallback(old)).with_store(store.clone()),
    );
    let mut jar = Jar::new();
    jar.send(&before, get_req("/set/user/ann")).await;
    let old_cookie = jar.get("session").unwrap().to_owned();
    assert_eq!(show(&mut jar, &after).await, r#"{"user":"ann"}"#);
    let new_cookie = jar.get("session").unwrap();
    assert_ne!(new_cookie, old_cookie, "re-signed with the current key");
    assert_eq!(
        new_cookie.split_once('.').unwrap().0,
        old_cookie.split_once('.').unwrap().0,
        "same id"
    );
}

#[tokio::test]
async fn not_before_revokes_stored_sessions_created_earlier() {
    let store = Arc::new(Probe::default());
    let clock = TestClock::at(T0);
    let cutoff = std::time::UNIX_EPOCH + Duration::from_secs(T0 + 5);
    let app = app(store.clone(), &clock, move |l| {
        l.not_before(move |_| Some(cutoff))
    });
    let mut old = Jar::new();
    old.send(&app, get_req("/set/user/ann")).await;
    clock.advance(10);
    assert_eq!(
        show(&mut old, &app).await,
        "{}",
        "created before the cutoff"
    );
    let mut new = Jar::new();
    new.send(&app, get_req("/set/user/bob")).await;
    assert_eq!(show(&mut new, &app).await, r#"{"user":"bob"}"#);
}

/// Two servers, each with a cache that could serve the other's old copy
/// for an hour: the client's own writes are still never read stale, since
/// each write is stamped and the client carries the stamp to the next
/// server (whose copy lacks it, so it reads through). The handler never
/// sees the stamp.
#[cfg(feature = "caching-store")]
#[tokio::test]
async fn a_client_reads_its_own_writes_through_any_servers_cache() {
    use session_layer::store::CachingStore;
    let backend = Arc::new(MemoryStore::new());
    let server = || {
        let cache = CachingStore::with_cache(backend.clone(), 100, Duration::from_secs(3600));
        Router::new()
            .route("/", get(read))
            .route("/set/{key}/{value}", put(set))
            .route("/cycle", post(cycle))
            .layer(SessionLayer::new(Key::from_bytes(&[5; 32]).unwrap()).with_store(cache))
    };
    let (a, b) = (server(), server());
    let mut jar = Jar::new();
    let put_req = |uri: &str| {
        http::Request::put(uri)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    jar.send(&a, put_req("/set/n/0")).await;
    for round in 1..20 {
        let (writer, reader) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        assert_eq!(
            show(&mut jar, reader).await,
            format!(r#"{{"n":"{}"}}"#, round - 1)
        );
        let response = jar.send(writer, put_req(&format!("/set/n/{round}"))).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            set_cookies(&response).len(),
            1,
            "each write hands the client its stamp"
        );
    }
    // a holds round 18's record (its own write, then read back in round
    // 19); b wrote 19 since: not served to this client.
    assert_eq!(show(&mut jar, &a).await, r#"{"n":"19"}"#);
    // A new id from a cycle on one server reads through on the other.
    let mut old = jar.clone();
    jar.send(
        &a,
        http::Request::post("/cycle")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(show(&mut jar, &b).await, r#"{"n":"19"}"#);
    assert_eq!(show(&mut old, &a).await, "{}", "the old id is gone");
}

/// A handle names the stored record: none before it exists, none once the
/// request ends its id (`cycle_id`, `flush`), and the new id's from the
/// next request on; `Sessions::end` says whether a live session ended.
#[tokio::test]
async fn a_handle_names_the_record_the_next_request_will_use() {
    let layer =
        SessionLayer::new(Key::from_bytes(&[5; 32]).unwrap()).with_store(MemoryStore::new());
    let sessions = layer.sessions().unwrap();
    let handle = |session: Session| async move { session.handle().unwrap_or_default() };
    let app = Router::new()
        .route("/", get(read))
        .route("/handle", get(handle))
        .route("/set/{key}/{value}", put(set))
        .route(
            "/login",
            post(|session: Session| async move {
                session.cycle_id();
                session.handle().unwrap_or_default()
            }),
        )
        .route(
            "/logout",
            post(|session: Session| async move {
                session.flush();
                session.handle().unwrap_or_default()
            }),
        )
        .layer(layer);
    let mut jar = Jar::new();
    let put_req = |uri: &str| {
        http::Request::put(uri)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let post_req = |uri: &str| {
        http::Request::post(uri)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    assert_eq!(jar.get_text(&app, "/handle").await.1, "", "no record yet");
    jar.send(&app, put_req("/set/user/ann")).await;
    let before = jar.get_text(&app, "/handle").await.1;
    assert_eq!(before.len(), 96);
    let during = body_text(jar.send(&app, post_req("/login")).await).await;
    assert_eq!(during, "", "the old id is ending");
    let after = jar.get_text(&app, "/handle").await.1;
    assert_eq!(after.len(), 96);
    assert_ne!(after, before, "the new id's");
    assert!(
        !sessions.end(&before).await.unwrap(),
        "the old id had ended"
    );
    assert!(sessions.end(&after).await.unwrap());
    assert_eq!(show(&mut jar, &app).await, "{}", "signed out");

    jar.send(&app, put_req("/set/user/bob")).await;
    assert_eq!(
        body_text(jar.send(&app, post_req("/logout")).await).await,
        ""
    );
}

/// A cart route of each kind, whose handlers all wait at `barrier` after
/// reading, so that every request has read the session before any saves.
fn cart_app(store: Arc<MemoryStore>, barrier: Arc<tokio::sync::Barrier>) -> Router {
    let naive = {
        let barrier = barrier.clone();
        move |session: Session, Path(item): Path<u32>| async move {
            let mut cart: Vec<u32> = session.get("cart")?.unwrap_or_default();
            barrier.wait().await;
            cart.push(item);
            session.insert("cart", &cart)?;
            session.insert(format!("by{item}"), true)?;
            Ok::<_, Error>(serde_json::to_string(&cart).unwrap())
        }
    };
    let blind = {
        let barrier = barrier.clone();
        move |session: Session, Path(item): Path<u32>| async move {
            barrier.wait().await;
            session.insert("cart", [item])?;
            Ok::<_, Error>("set")
        }
    };
    let merge = move |session: Session, Path(item): Path<u32>| async move {
        let _ = session.get_value("cart");
        barrier.wait().await;
        session.push("cart", item)?;
        session.increment("count", 1)?;
        Ok::<_, Error>(serde_json::to_string(&session.get_value("cart")).unwrap())
    };
    let start = |session: Session| async move { session.insert("cart", Vec::<u32>::new()) };
    Router::new()
        .route("/start", post(start))
        .route("/", get(read))
        .route("/naive/{item}", post(naive))
        .route("/push/{item}", post(merge))
        .route("/blind/{item}", post(blind))
        .layer(SessionLayer::new(Key::from_bytes(&[5; 32]).unwrap()).with_store(store))
}

async fn twenty_at_once(
    app: &Router,
    cookie: &str,
    route: &str,
) -> Vec<(u32, http::Response<axum::body::Body>)> {
    let mut tasks = tokio::task::JoinSet::new();
    for item in 0..20 {
        let (app, cookie) = (app.clone(), cookie.to_owned());
        let uri = format!("{route}/{item}");
        tasks.spawn(async move {
            let request = http::Request::post(uri)
                .header(http::header::COOKIE, cookie)
                .body(axum::body::Body::empty())
                .unwrap();
            (item, app.oneshot(request).await.unwrap())
        });
    }
    let mut responses = Vec::new();
    while let Some(done) = tasks.join_next().await {
        responses.push(done.unwrap());
    }
    responses
}

/// Twenty requests that each read the cart, add an item and write it back,
/// at once (a double click, twenty times over): one is saved, and every
/// other answers 409 with nothing of it saved. None answers 200 for an item
/// that is not in the cart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_read_modify_writes_of_one_key_answer_409_never_a_lost_200() {
    let store = Arc::new(MemoryStore::new());
    let app = cart_app(store, Arc::new(tokio::sync::Barrier::new(20)));
    let mut jar = Jar::new();
    jar.send(
        &app,
        http::Request::post("/start")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    let cookie = jar.header().unwrap();
    let responses = twenty_at_once(&app, &cookie, "/naive").await;
    let stored: serde_json::Value = serde_json::from_str(&show(&mut jar, &app).await).unwrap();
    let mut saved = Vec::new();
    for (item, response) in &responses {
        match response.status() {
            StatusCode::OK => saved.push(*item),
            StatusCode::CONFLICT => {
                let error = response
                    .extensions()
                    .get::<Error>()
                    .expect("the error rides along");
                assert_eq!(error.kind(), ErrorKind::Conflict);
                assert!(
                    stored.get(format!("by{item}")).is_none(),
                    "a refused request left a key"
                );
            }
            other => panic!("item {item}: {other}"),
        }
    }
    assert_eq!(
        saved.len(),
        1,
        "all read the same cart: the first save wins"
    );
    assert_eq!(
        stored["cart"],
        serde_json::json!(saved),
        "the saved item, and no other"
    );
}

/// The same twenty requests appending with `push` (a merge operation): all
/// answer 200 and the cart keeps twenty items; each handler saw the cart as
/// it would have alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_of_one_key_all_survive() {
    let store = Arc::new(MemoryStore::new());
    let app = cart_app(store, Arc::new(tokio::sync::Barrier::new(20)));
    let mut jar = Jar::new();
    jar.send(
        &app,
        http::Request::post("/start")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    let cookie = jar.header().unwrap();
    for (item, response) in twenty_at_once(&app, &cookie, "/push").await {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            body_text(response).await,
            format!("[{item}]"),
            "as if alone"
        );
    }
    let stored: serde_json::Value = serde_json::from_str(&show(&mut jar, &app).await).unwrap();
    let mut cart: Vec<u32> = serde_json::from_value(stored["cart"].clone()).unwrap();
    cart.sort_unstable();
    assert_eq!(cart, (0..20).collect::<Vec<_>>());
    assert_eq!(stored["count"], 20);
}

/// `serialize_requests`: a request holds the session's lease from its load
/// to its save, so twenty read-modify-writes at once all answer 200 and all
/// are kept; a request that finds the lease held past its wait answers 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serialized_requests_run_one_at_a_time() {
    let store = Arc::new(MemoryStore::new());
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel::<()>();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let naive = {
        let gate = gate.clone();
        move |session: Session, Path(item): Path<u32>| async move {
            let mut cart: Vec<u32> = session.get("cart")?.unwrap_or_default();
            let _ = entered_tx.send(());
            gate.acquire().await.unwrap().forget();
            cart.push(item);
            session.insert("cart", &cart)?;
            Ok::<_, Error>("added")
        }
    };
    let app = Router::new()
        .route("/", get(read))
        .route(
            "/start",
            post(|session: Session| async move { session.insert("cart", Vec::<u32>::new()) }),
        )
        .route("/naive/{item}", post(naive))
        .layer(
            SessionLayer::new(Key::from_bytes(&[5; 32]).unwrap())
                .serialize_requests(Duration::from_secs(30))
                .with_store(store.clone()),
        );
    let mut jar = Jar::new();
    let start = http::Request::post("/start").body(axum::body::Body::empty());
    jar.send(&app, start.unwrap()).await;
    let cookie = jar.header().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for item in 0..20u32 {
        let (app, cookie) = (app.clone(), cookie.clone());
        tasks.spawn(async move {
            let request = http::Request::post(format!("/naive/{item}"))
                .header(http::header::COOKIE, cookie)
                .body(axum::body::Body::empty())
                .unwrap();
            app.oneshot(request).await.unwrap().status()
        });
    }
    // One handler at a time: each is let through only once it is in, and
    // no other is in before it has saved.
    let id = cookie.split('=').nth(1).unwrap().split('.').next().unwrap();
    let id = SessionId::parse(id).unwrap();
    for _ in 0..20 {
        entered.recv().await.unwrap();
        assert!(
            !store
                .lease(&id, "probe", Duration::from_secs(1))
                .await
                .unwrap(),
            "the running request holds the lease"
        );
        assert!(
            entered.try_recv().is_err(),
            "two handlers of one session at once"
        );
        gate.add_permits(1);
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    let stored: serde_json::Value = serde_json::from_str(&show(&mut jar, &app).await).unwrap();
    assert_eq!(
        stored["cart"].as_array().map(Vec::len),
        Some(20),
        "{stored}"
    );
    assert!(
        store
            .lease(&id, "probe", Duration::from_secs(1))
            .await
            .unwrap(),
        "released"
    );
    // Held by someone else past the wait: 409, nothing read or saved.
    let app = Router::new()
        .route(
            "/naive/{item}",
            post(|session: Session| async move { session.insert("x", 1) }),
        )
        .layer(
            SessionLayer::new(Key::from_bytes(&[5; 32]).unwrap())
                .serialize_requests(Duration::from_millis(50))
                .with_store(store.clone()),
        );
    let response = jar
        .send(
            &app,
            http::Request::post("/naive/1")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(
        response.extensions().get::<Error>().unwrap().kind(),
        ErrorKind::Conflict
    );
    store.release(&id, "probe").await.unwrap();
    let response = jar
        .send(
            &app,
            http::Request::post("/naive/1")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK, "free again");
}

/// A login (`cycle_id`) racing other requests of the session: what they
/// merged meanwhile is kept beside the login's own merges; a key the login
/// read and wrote that another request changed meanwhile makes the login
/// answer 409, and the old session is left as the other request made it.
#[tokio::test]
async fn a_cycle_keeps_racing_merges_and_refuses_a_stale_read() {
    for stale in [false, true] {
        let store = Arc::new(Probe::default());
        let loaded = Arc::new(tokio::sync::Notify::new());
        let go = Arc::new(tokio::sync::Notify::new());
        let login = {
            let (loaded, go) = (loaded.clone(), go.clone());
            move |session: Session| async move {
                let note: Option<String> = session.get("note")?;
                loaded.notify_one();
                go.notified().await;
                session.cycle_id();
                session.push("cart", "pear")?;
                session.increment("n", 1)?;
                if stale {
                    session.insert("note", format!("{note:?} and signed in"))?;
                }
                Ok::<_, Error>("signed in")
            }
        };
        let push = |session: Session| async move {
            session.push("cart", "plum")?;
            session.increment("n", 10)?;
            session.insert("note", "changed")?;
            Ok::<_, Error>("pushed")
        };
        let app = Router::new()
            .route("/", get(read))
            .route("/set/{key}/{value}", get(set))
            .route("/push", post(push))
            .route("/login", post(login))
            .layer(SessionLayer::new(Key::from_bytes(&[5; 32]).unwrap()).with_store(store.clone()));
        let mut jar = Jar::new();
        jar.send(&app, get_req("/set/note/first")).await;
        let old = jar.header().unwrap();
        let signing_in = login_in_background(&app, &old);
        loaded.notified().await;
        let request = http::Request::post("/push")
            .header(http::header::COOKIE, old.clone())
            .body(axum::body::Body::empty())
            .unwrap();
        let pushed = app.clone().oneshot(request).await.unwrap();
        assert_eq!(
            pushed.status(),
            StatusCode::OK,
            "the racing write was acknowledged"
        );
        go.notify_one();
        let response = signing_in.await.unwrap();
        let shown: serde_json::Value = if stale {
            assert_eq!(response.status(), StatusCode::CONFLICT);
            let error = response.extensions().get::<Error>().unwrap();
            assert_eq!(error.kind(), ErrorKind::Conflict);
            jar.store(&response);
            assert_eq!(jar.header().unwrap(), old, "the old id is kept");
            serde_json::from_str(&show(&mut jar, &app).await).unwrap()
        } else {
            assert_eq!(response.status(), StatusCode::OK);
            jar.store(&response);
            assert_ne!(jar.header().unwrap(), old, "a new id");
            serde_json::from_str(&show(&mut jar, &app).await).unwrap()
        };
        if stale {
            assert_eq!(
                shown,
                serde_json::json!({"cart": ["plum"], "n": 10, "note": "changed"}),
                "the old session as the racing request left it, nothing of the login"
            );
        } else {
            let mut cart: Vec<String> = serde_json::from_value(shown["cart"].clone()).unwrap();
            cart.sort();
            assert_eq!(cart, ["pear", "plum"], "both merges kept: {shown}");
            assert_eq!(shown["n"], 11);
            assert_eq!(shown["note"], "changed");
        }
        assert_eq!(store.inner.len(), 1, "one record");
    }
}

/// Twenty blind writes of one key at once (set without being read): all
/// answer 200 and the last one saved wins, as before the checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_blind_writes_of_one_key_apply_as_they_come() {
    let store = Arc::new(MemoryStore::new());
    let app = cart_app(store, Arc::new(tokio::sync::Barrier::new(20)));
    let mut jar = Jar::new();
    let start = http::Request::post("/start").body(axum::body::Body::empty());
    jar.send(&app, start.unwrap()).await;
    let cookie = jar.header().unwrap();
    for (item, response) in twenty_at_once(&app, &cookie, "/blind").await {
        assert_eq!(response.status(), StatusCode::OK, "blind write {item}");
    }
    let stored: serde_json::Value = serde_json::from_str(&show(&mut jar, &app).await).unwrap();
    let cart: Vec<u32> = serde_json::from_value(stored["cart"].clone()).unwrap();
    assert!(cart.len() == 1 && cart[0] < 20, "one of them: {cart:?}");
}

/// Takes the lease of `id` as "probe" within a few seconds (a release the
/// layer left to a task of its own has run by then), then gives it back.
async fn lease_comes_free(store: &MemoryStore, id: &SessionId) -> bool {
    for _ in 0..500 {
        if store
            .lease(id, "probe", Duration::from_secs(1))
            .await
            .unwrap()
        {
            store.release(id, "probe").await.unwrap();
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A request that never finishes its save (the client went away and its
/// future was dropped, or its handler panicked) gives the session's lease
/// back: the user's next requests must not wait out the whole hold (an
/// hour here) behind a request that is no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_or_panicking_request_gives_its_lease_back() {
    let store = Arc::new(MemoryStore::new());
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel::<()>();
    let hang = move |session: Session| async move {
        let _ = session.get_value("n");
        let _ = entered_tx.send(());
        std::future::pending::<()>().await;
        "never"
    };
    let app = Router::new()
        .route(
            "/start",
            post(|session: Session| async move { session.insert("n", 1) }),
        )
        .route("/hang", post(hang))
        .route(
            "/panic",
            post(|session: Session| async move {
                let _ = session.get_value("n");
                if session.contains_key("n") {
                    panic!("the handler failed");
                }
                "unreachable"
            }),
        )
        .layer(
            SessionLayer::new(Key::from_bytes(&[5; 32]).unwrap())
                .serialize_requests(Duration::from_secs(3600))
                .with_store(store.clone()),
        );
    let mut jar = Jar::new();
    let start = http::Request::post("/start").body(axum::body::Body::empty());
    jar.send(&app, start.unwrap()).await;
    let cookie = jar.header().unwrap();
    let id = cookie.split('=').nth(1).unwrap().split('.').next().unwrap();
    let id = SessionId::parse(id).unwrap();
    let request = |uri: &str| {
        http::Request::post(uri)
            .header(http::header::COOKIE, cookie.clone())
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let hanging = tokio::spawn(app.clone().oneshot(request("/hang")));
    entered.recv().await.unwrap();
    assert!(
        !store
            .lease(&id, "probe", Duration::from_secs(1))
            .await
            .unwrap(),
        "the running request holds the lease"
    );
    hanging.abort();
    assert!(hanging.await.unwrap_err().is_cancelled());
    assert!(
        lease_comes_free(&store, &id).await,
        "a dropped request kept the lease for its whole hold"
    );
    let panicking = tokio::spawn(app.clone().oneshot(request("/panic")));
    assert!(panicking.await.unwrap_err().is_panic());
    assert!(
        lease_comes_free(&store, &id).await,
        "a panicking handler kept the lease for its whole hold"
    );
}

/// A login refused for a stale read puts the old record back before it
/// cleans up the new one: a store that fails that clean-up must not leave
/// the session, and every write acknowledged to it, gone.
#[tokio::test]
async fn a_refused_login_keeps_the_old_session_when_the_clean_up_fails() {
    let store = Arc::new(Probe::default());
    let (loaded, go) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let login = {
        let (loaded, go) = (loaded.clone(), go.clone());
        move |session: Session| async move {
            let note: Option<String> = session.get("note")?;
            loaded.notify_one();
            go.notified().await;
            session.cycle_id();
            session.insert("note", format!("{note:?} and signed in"))?;
            Ok::<_, Error>("signed in")
        }
    };
    let app = Router::new()
        .route("/", get(read))
        .route("/set/{key}/{value}", get(set))
        .route("/login", post(login))
        .layer(SessionLayer::new(Key::from_bytes(&[5; 32]).unwrap()).with_store(store.clone()));
    let mut jar = Jar::new();
    jar.send(&app, get_req("/set/note/first")).await;
    let old = jar.header().unwrap();
    let signing_in = login_in_background(&app, &old);
    loaded.notified().await;
    let changed = jar.send(&app, get_req("/set/note/changed")).await;
    assert_eq!(changed.status(), StatusCode::OK, "acknowledged");
    store.fail_deletes.store(true, Ordering::SeqCst);
    go.notify_one();
    let response = signing_in.await.unwrap();
    assert!(response.status().is_client_error() || response.status().is_server_error());
    store.fail_deletes.store(false, Ordering::SeqCst);
    assert_eq!(jar.header().unwrap(), old, "the old id is kept");
    let shown: serde_json::Value = serde_json::from_str(&show(&mut jar, &app).await).unwrap();
    assert_eq!(
        shown,
        serde_json::json!({"note": "changed"}),
        "the old session, with the write acknowledged to it"
    );
}

/// A handler that increments a counter, reads it back and writes a value
/// made from it, while another request's increment lands: the write
/// depends on the value loaded, so it answers 409 and the other increment
/// stays, rather than a 200 that overwrites it.
#[tokio::test]
async fn a_write_made_from_a_merged_value_does_not_overwrite_another_merge() {
    let store = Arc::new(MemoryStore::new());
    let (loaded, go) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let scale = {
        let (loaded, go) = (loaded.clone(), go.clone());
        move |session: Session| async move {
            session.increment("n", 1)?;
            let n: i64 = session.get("n")?.unwrap_or(0);
            loaded.notify_one();
            go.notified().await;
            session.insert("n", n * 100)?;
            Ok::<_, Error>("scaled")
        }
    };
    let bump = |session: Session| async move { session.increment("n", 1).map(|n| n.to_string()) };
    let app = Router::new()
        .route("/", get(read))
        .route("/set/{key}/{value}", get(set))
        .route("/scale", post(scale))
        .route("/bump", post(bump))
        .layer(SessionLayer::new(Key::from_bytes(&[5; 32]).unwrap()).with_store(store));
    let mut jar = Jar::new();
    jar.send(&app, get_req("/set/other/1")).await;
    let cookie = jar.header().unwrap();
    let post_with = |uri: &str| {
        http::Request::post(uri)
            .header(http::header::COOKIE, cookie.clone())
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let scaling = tokio::spawn(app.clone().oneshot(post_with("/scale")));
    loaded.notified().await;
    let bumped = app.clone().oneshot(post_with("/bump")).await.unwrap();
    assert_eq!(bumped.status(), StatusCode::OK);
    go.notify_one();
    let scaled = scaling.await.unwrap().unwrap();
    let shown: serde_json::Value = serde_json::from_str(&show(&mut jar, &app).await).unwrap();
    assert_eq!(scaled.status(), StatusCode::CONFLICT, "stored: {shown}");
    assert_eq!(shown["n"], 1, "the other request's increment is kept");
}

/// A login whose carry-over of what other requests wrote meanwhile fails
/// (the store timed out on that one write) puts the old record back: the
/// request answers the store's error, and the session, with the write
/// acknowledged to the other request, is still there under the old id.
#[tokio::test]
async fn a_login_whose_carry_over_fails_keeps_the_old_session() {
    let store = Arc::new(Probe::default());
    let (loaded, go) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let login = {
        let (loaded, go) = (loaded.clone(), go.clone());
        move |session: Session| async move {
            let _ = session.get_value("note");
            loaded.notify_one();
            go.notified().await;
            session.cycle_id();
            session.insert("user", "ann")?;
            Ok::<_, Error>("signed in")
        }
    };
    let app = Router::new()
        .route("/", get(read))
        .route("/set/{key}/{value}", get(set))
        .route("/login", post(login))
        .layer(SessionLayer::new(Key::from_bytes(&[5; 32]).unwrap()).with_store(store.clone()));
    let mut jar = Jar::new();
    jar.send(&app, get_req("/set/note/first")).await;
    let old = jar.header().unwrap();
    let signing_in = login_in_background(&app, &old);
    loaded.notified().await;
    let changed = jar.send(&app, get_req("/set/cart/pear")).await;
    assert_eq!(changed.status(), StatusCode::OK, "acknowledged");
    store.fail_applies.store(true, Ordering::SeqCst);
    go.notify_one();
    let response = signing_in.await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    store.fail_applies.store(false, Ordering::SeqCst);
    assert_eq!(jar.header().unwrap(), old, "the old id is kept");
    let shown: serde_json::Value = serde_json::from_str(&show(&mut jar, &app).await).unwrap();
    assert_eq!(
        shown,
        serde_json::json!({"cart": "pear", "note": "first"}),
        "the old session, with the write acknowledged to it"
    );
    assert_eq!(store.inner.len(), 1, "the new record went");
}

/// Sends `POST /login` with the cookie `old` from a task of its own, for a
/// login handler that pauses midway while the test races it.
fn login_in_background(
    app: &Router,
    old: &str,
) -> tokio::task::JoinHandle<http::Response<axum::body::Body>> {
    let (app, old) = (app.clone(), old.to_owned());
    tokio::spawn(async move {
        let request = http::Request::post("/login")
            .header(http::header::COOKIE, old)
            .body(axum::body::Body::empty())
            .unwrap();
        app.oneshot(request).await.unwrap()
    })
}
