//! MemoryStore at scale: memory per session and cost per request with
//! 1k, 100k and 1M live sessions, beside tower-sessions' MemoryStore. Each
//! measurement runs in a fresh process so resident memory is its own.

use std::time::Instant;

use axum::Router;

use crate::inprocess::User;

/// This process's resident memory, in bytes.
pub fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 4096
}

/// Fills a store with `sessions` sessions, then times read-modify-write
/// requests of one more; prints `bytes_per_session ns_per_request`.
pub async fn measure(which: &str, sessions: usize) {
    let before = rss();
    let router: Router = match which {
        "ours" => {
            use session_layer::store::{MemoryStore, Record, SessionId, SessionStore};
            // Room for all of them: the default bound is 100,000.
            let store = MemoryStore::new().max_sessions(sessions.max(1));
            let far = 4_000_000_000;
            for _ in 0..sessions {
                let data = serde_json::json!({"count": 1}).as_object().unwrap().clone();
                store
                    .create(&SessionId::generate(), &Record::new(data, false, 0, far))
                    .await
                    .unwrap();
            }
            let key = session_layer::Key::from_bytes(&[1; 32]).unwrap();
            crate::configs::ours_router(session_layer::SessionLayer::new(key).with_store(store))
        }
        "tower-sessions" => {
            use tower_sessions::SessionStore;
            use tower_sessions::session::{Id, Record};
            let store = tower_sessions::MemoryStore::default();
            let expiry = time::OffsetDateTime::now_utc() + time::Duration::days(1);
            for _ in 0..sessions {
                let mut data = std::collections::HashMap::new();
                data.insert("count".to_owned(), serde_json::json!(1));
                let mut record = Record {
                    id: Id::default(),
                    data,
                    expiry_date: expiry,
                };
                store.create(&mut record).await.unwrap();
            }
            crate::configs::tower_sessions_router(store)
        }
        other => panic!("unknown store {other}"),
    };
    let after = rss();
    let mut user = User::new();
    user.request(&router, "/rmw").await;
    for _ in 0..2_000 {
        user.request(&router, "/rmw").await;
    }
    let n = 20_000;
    let started = Instant::now();
    for _ in 0..n {
        user.request(&router, "/rmw").await;
    }
    let per_request = started.elapsed().as_nanos() as f64 / f64::from(n);
    let per_session = after.saturating_sub(before) as f64 / sessions.max(1) as f64;
    println!("{per_session:.0} {per_request:.0}");
}
