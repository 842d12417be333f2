//! A store that goes down, comes back, or stalls: clear error responses,
//! no panic, and recovery without restarting the app. Runs its own
//! redis-server on a free port, so stopping it disturbs nothing else.
#![cfg(all(feature = "axum", feature = "redis-store"))]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use common::{Jar, RedisServer, free_port, get as get_req, missing};
use http::StatusCode;
use session_layer::store::RedisStore;
use session_layer::{Error, ErrorKind, Key, Session, SessionLayer};

async fn count(session: Session) -> Result<String, Error> {
    Ok(session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)?
        .to_string())
}

/// A redis-server of the test's own on a free port, and the app on it
/// with a store bounded by `timeout`.
async fn own_redis(timeout: Duration) -> Option<(RedisServer, Router)> {
    let server = RedisServer::start(free_port())?;
    let store = RedisStore::connect(&server.url())
        .await
        .unwrap()
        .timeout(timeout);
    Some((server, app(store)))
}

fn app(store: RedisStore) -> Router {
    Router::new()
        .route("/", get(count))
        .route("/untouched", get(|| async { "fine" }))
        .layer(SessionLayer::new(Key::from_bytes(&[8; 32]).unwrap()).with_store(store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_down_and_coming_back() {
    let Some((server, app)) = own_redis(Duration::from_millis(500)).await else {
        return;
    };
    let mut jar = Jar::new();
    assert_eq!(jar.get_text(&app, "/").await, (StatusCode::OK, "1".into()));
    assert_eq!(jar.get_text(&app, "/").await, (StatusCode::OK, "2".into()));

    let server_port = server.port;
    server.stop();
    answers_503_while_down(&app, &mut jar).await;
    // Redis comes back (empty: it keeps nothing on disk); the same app
    // object serves again without a restart.
    let _server = RedisServer::start(server_port).unwrap();
    serves_again(&app, &mut jar, Duration::from_secs(10)).await;
}

/// With the store down: a load answers 503 through the hook with the error
/// in the extensions; a new visitor gets a 503 and no cookie; routes that
/// do not touch the session do not notice.
async fn answers_503_while_down(app: &Router, jar: &mut Jar) {
    let response = jar.send(app, get_req("/")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.extensions().get::<Error>().unwrap().kind(),
        ErrorKind::Store
    );
    let response = Jar::new().send(app, get_req("/")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(common::set_cookies(&response).is_empty());
    assert_eq!(
        jar.get_text(app, "/untouched").await,
        (StatusCode::OK, "fine".into())
    );
}

/// With the store back (empty), within `within`: the same app serves a
/// fresh session, and keeps it.
async fn serves_again(app: &Router, jar: &mut Jar, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = jar.get_text(app, "/").await;
        if status == StatusCode::OK {
            assert_eq!(
                body, "1",
                "a fresh session: the old record went with the old server"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store did not recover: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(jar.get_text(app, "/").await, (StatusCode::OK, "2".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_times_out_quickly() {
    let Some((server, app)) = own_redis(Duration::from_millis(200)).await else {
        return;
    };
    let mut jar = Jar::new();
    assert_eq!(jar.get_text(&app, "/").await.0, StatusCode::OK);

    // Stall every client for ten seconds. Without the timeout the request
    // would wait the stall out and succeed: the 503 is the timeout's, and
    // it comes well before the stall ends, however busy the machine.
    pause(&server.url(), 10_000).await;
    let started = Instant::now();
    let response = jar.send(&app, get_req("/")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the timeout bounded the wait"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while jar.get_text(&app, "/").await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "did not recover after the stall");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Redis that is down at start-up: the error says why (the connection
/// was refused), not merely that the time ran out.
#[tokio::test]
async fn connecting_to_a_redis_that_is_down_says_why() {
    let closed = free_port();
    let url = format!("redis://127.0.0.1:{closed}");
    let error = RedisStore::connect_within(&url, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Store);
    let source = format!("{:?}", std::error::Error::source(&error));
    assert!(
        source.to_lowercase().contains("refused"),
        "the cause, not a timeout: {source}"
    );
}

/// Pauses every client of the Redis at `url` for `millis`.
async fn pause(url: &str, millis: u64) {
    let admin = redis::Client::open(url).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(millis)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
}

/// The redis crate's connection manager fails a reply after 500 ms of its
/// own; a reply slower than that but within the store's timeout must
/// still succeed, so the store's timeout is the only bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_within_the_timeout_still_answers() {
    let Some((server, app)) = own_redis(Duration::from_secs(20)).await else {
        return;
    };
    let mut jar = Jar::new();
    assert_eq!(jar.get_text(&app, "/").await, (StatusCode::OK, "1".into()));
    pause(&server.url(), 6000).await;
    let started = Instant::now();
    assert_eq!(jar.get_text(&app, "/").await, (StatusCode::OK, "2".into()));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the pause was in force, so the call outlived the client's default"
    );
}

/// The same for the cluster client, on the shared three-node cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_cluster_within_the_timeout_still_answers() {
    let nodes = [
        "redis://127.0.0.1:7001",
        "redis://127.0.0.1:7002",
        "redis://127.0.0.1:7003",
    ];
    if nodes
        .iter()
        .any(|url| std::net::TcpStream::connect(&url["redis://".len()..]).is_err())
    {
        missing("the Redis Cluster on 127.0.0.1:7001-7003 is unreachable");
        return;
    }
    let store = RedisStore::cluster(&nodes)
        .await
        .unwrap()
        .prefix(format!("slow-{}:", free_port()))
        .timeout(Duration::from_secs(20));
    let app = app(store);
    let mut jar = Jar::new();
    assert_eq!(jar.get_text(&app, "/").await, (StatusCode::OK, "1".into()));
    for url in nodes {
        pause(url, 6000).await;
    }
    let started = Instant::now();
    assert_eq!(jar.get_text(&app, "/").await, (StatusCode::OK, "2".into()));
    assert!(started.elapsed() >= Duration::from_secs(1));
}

/// A TCP proxy in front of a server that the test can cut: while down,
/// open connections are severed and new ones are refused at once, which
/// is what a client sees when the server stops.
struct Proxy {
    addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Default::default();
        let accept = {
            let (up, links) = (up.clone(), links.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    if !up.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let link = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    links.lock().unwrap().push(link);
                }
            })
        };
        Self {
            addr,
            up,
            links,
            accept,
        }
    }

    fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.down();
    }
}

#[cfg(feature = "postgres-store")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_flapping() {
    use session_layer::store::SqlStore;
    let upstream: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    if tokio::net::TcpStream::connect(upstream).await.is_err() {
        missing("PostgreSQL on 127.0.0.1:5432 is unreachable");
        return;
    }
    let proxy = Proxy::start(upstream).await;
    let url = format!("postgres://postgres@{}/test", proxy.addr);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_millis(800))
        .connect(&url)
        .await
        .unwrap();
    let table = format!("sessions_faults_{}", std::process::id());
    let store = SqlStore::postgres(pool.clone())
        .table(&table)
        .timeout(Duration::from_secs(1));
    store.migrate().await.unwrap();
    let app = Router::new()
        .route("/", get(count))
        .layer(SessionLayer::new(Key::from_bytes(&[8; 32]).unwrap()).with_store(store));
    let mut jar = Jar::new();
    assert_eq!(jar.get_text(&app, "/").await, (StatusCode::OK, "1".into()));

    for round in 0..3 {
        proxy.down();
        let response = jar.send(&app, get_req("/")).await;
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "round {round}: load while down"
        );
        let response = Jar::new().send(&app, get_req("/")).await;
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "round {round}: save while down"
        );
        proxy.up();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, body) = jar.get_text(&app, "/").await;
            if status == StatusCode::OK {
                // PostgreSQL kept the data: the count goes on.
                assert_eq!(body, (round + 2).to_string(), "round {round}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no recovery ({status})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&pool)
        .await
        .unwrap();
}

/// A file store whose directory turns read-only (`chattr +i`, which binds
/// root too): saves answer 503, the previous record stays intact, and the
/// store works again once the directory is writable.
#[cfg(feature = "file-store")]
#[tokio::test]
async fn a_read_only_file_store_directory() {
    use session_layer::store::FileStore;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = FileStore::new(dir.path()).unwrap();
    let app = Router::new()
        .route("/", get(count))
        .layer(SessionLayer::new(Key::from_bytes(&[8; 32]).unwrap()).with_store(store));
    let mut jar = Jar::new();
    assert_eq!(jar.get_text(&app, "/").await, (StatusCode::OK, "1".into()));
    // The record's shard: the one two-letter directory (beside `owners`).
    let shard = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.file_name().is_some_and(|name| name.len() == 2))
        .unwrap();
    let chattr = |flag: &str| {
        Command::new("chattr")
            .arg(flag)
            .arg(&shard)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !chattr("+i") {
        eprintln!("NOT RUN: chattr +i is not supported here (needs root on ext4/xfs/btrfs)");
        return;
    }
    let response = jar.send(&app, get_req("/")).await;
    let status = response.status();
    assert!(chattr("-i"), "restoring the directory");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.extensions().get::<Error>().unwrap().kind(),
        ErrorKind::Store
    );
    // The record from before is intact and the store works again.
    assert_eq!(jar.get_text(&app, "/").await, (StatusCode::OK, "2".into()));
}

/// A file store on a full disk (a 256 KiB tmpfs filled to the brim):
/// saves answer 503, the previous record stays intact, and the store works
/// again once there is room.
#[cfg(feature = "file-store")]
#[tokio::test]
async fn a_full_file_store_disk() {
    use session_layer::store::FileStore;
    use std::io::Write;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("NOT RUN: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(dir.path());
    let store = FileStore::new(dir.path()).unwrap();
    let app = Router::new()
        .route("/", get(count))
        .layer(SessionLayer::new(Key::from_bytes(&[8; 32]).unwrap()).with_store(store));
    let mut jar = Jar::new();
    assert_eq!(jar.get_text(&app, "/").await, (StatusCode::OK, "1".into()));

    // Fill every remaining byte.
    let filler = dir.path().join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = [0u8; 4096];
    while file
        .write_all(&block)
        .and_then(|()| file.sync_all())
        .is_ok()
    {}
    drop(file);

    let response = jar.send(&app, get_req("/")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.extensions().get::<Error>().unwrap().kind(),
        ErrorKind::Store
    );
    let stray = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .flat_map(|shard| std::fs::read_dir(shard.path()).unwrap().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .count();
    assert_eq!(stray, 0, "a failed write leaves no temporary file behind");

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(
        jar.get_text(&app, "/").await,
        (StatusCode::OK, "2".into()),
        "the old record was intact"
    );
}

/// MongoDB (the nx-27017 test server) stopped and started again: 503s
/// while it is down, untouched routes unaffected, and the same app serves
/// again once it is back, without a restart.
#[cfg(feature = "mongodb-store")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_going_down_and_coming_back() {
    use session_layer::store::MongoStore;
    let Some(server) = common::ServerProcess::start_mongo(free_port()) else {
        return;
    };
    let port = server.port;
    let url = format!("{}/faults", server.url());
    let store = MongoStore::connect(&url)
        .await
        .unwrap()
        .timeout(Duration::from_millis(1500));
    store.migrate().await.unwrap();
    let app = Router::new()
        .route("/", get(count))
        .route("/untouched", get(|| async { "fine" }))
        .layer(SessionLayer::new(Key::from_bytes(&[8; 32]).unwrap()).with_store(store));
    let mut jar = Jar::new();
    assert_eq!(jar.get_text(&app, "/").await, (StatusCode::OK, "1".into()));
    assert_eq!(jar.get_text(&app, "/").await, (StatusCode::OK, "2".into()));

    server.stop();
    answers_503_while_down(&app, &mut jar).await;
    // Back, empty (it kept everything in memory).
    let _server = common::ServerProcess::start_mongo(port).unwrap();
    serves_again(&app, &mut jar, Duration::from_secs(30)).await;
}
