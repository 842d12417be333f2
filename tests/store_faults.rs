//! A store that goes down, comes back, or stalls: clear error responses,
//! no panic, and recovery without restarting the app. Runs its own
//! redis-server on a free port, so stopping it disturbs nothing else.
#![cfg(feature = "redis-store")]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use common::{Jar, get as get_req, missing};
use http::StatusCode;
use session_layer::store::RedisStore;
use session_layer::{Error, ErrorKind, Key, Session, SessionLayer};

struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start(port: u16) -> Option<Self> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            missing("redis-server is not installed");
            return None;
        };
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn count(session: Session) -> Result<String, Error> {
    Ok(session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)?
        .to_string())
}

fn app(store: RedisStore) -> Router {
    Router::new()
        .route("/", get(count))
        .route("/untouched", get(|| async { "fine" }))
        .layer(SessionLayer::new(Key::from_bytes(&[8; 32]).unwrap()).with_store(store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_down_and_coming_back() {
    let port = free_port();
    let Some(server) = RedisServer::start(port) else {
        return;
    };
    let store = RedisStore::connect(&server.url())
        .await
        .unwrap()
        .timeout(Duration::from_millis(500));
    let app = app(store);
    let mut jar = Jar::new();
    assert_eq!(jar.get_text(&app, "/").await, (StatusCode::OK, "1".into()));
    assert_eq!(jar.get_text(&app, "/").await, (StatusCode::OK, "2".into()));

    server.stop();
    // Load fails: 503 through the hook, the error in the extensions.
    let response = jar.send(&app, get_req("/")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.extensions().get::<Error>().unwrap().kind(),
        ErrorKind::Store
    );
    // A new visitor cannot be saved: 503 too, and no cookie.
    let response = Jar::new().send(&app, get_req("/")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(common::set_cookies(&response).is_empty());
    // Routes that do not touch the session do not notice.
    assert_eq!(
        jar.get_text(&app, "/untouched").await,
        (StatusCode::OK, "fine".into())
    );

    // Redis comes back (empty: it keeps nothing on disk); the same app
    // object serves again without a restart.
    let _server = RedisServer::start(port).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = jar.get_text(&app, "/").await;
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
    assert_eq!(jar.get_text(&app, "/").await, (StatusCode::OK, "2".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_times_out_quickly() {
    let port = free_port();
    let Some(server) = RedisServer::start(port) else {
        return;
    };
    let store = RedisStore::connect(&server.url())
        .await
        .unwrap()
        .timeout(Duration::from_millis(200));
    let app = app(store);
    let mut jar = Jar::new();
    assert_eq!(jar.get_text(&app, "/").await.0, StatusCode::OK);

    // Stall every client for two seconds.
    let admin = redis::Client::open(server.url()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2000)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let started = Instant::now();
    let response = jar.send(&app, get_req("/")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the timeout bounded the wait"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while jar.get_text(&app, "/").await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "did not recover after the stall");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
