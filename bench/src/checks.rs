//! What the checks against lost updates cost on read-modify-write: per
//! store, three routes on one session each, in short slices interleaved
//! round by round (as `inprocess`):
//!
//! - `/blind`: sets the counter without reading it, so its save carries no
//!   expectation (what every read-modify-write cost before the checks: one
//!   load, a one-key save);
//! - `/checked`: `session.update` reads the counter and writes it back plus
//!   one, so its save carries what it read and the store compares it;
//! - `/merge`: `session.increment` adds one, a merge the store makes on what
//!   it holds.
//!
//! The added time of the last two is paired with `/blind`'s in the same
//! round.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use session_layer::store::SessionStore;
use session_layer::{Key, Session, SessionLayer};

use crate::inprocess::User;

const ROUTES: [&str; 3] = ["/blind", "/checked", "/merge"];

fn router(layer: SessionLayer) -> Router {
    let counter = Arc::new(AtomicU64::new(0));
    Router::new()
        .route(
            "/blind",
            get(move |session: Session| {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                async move {
                    session.insert("count", n).unwrap();
                    n.to_string()
                }
            }),
        )
        .route(
            "/checked",
            get(|session: Session| async move {
                let n = session
                    .update("count", |n: Option<u64>| n.unwrap_or(0) + 1)
                    .unwrap();
                n.to_string()
            }),
        )
        .route(
            "/merge",
            get(|session: Session| async move {
                session.increment("count", 1).unwrap().to_string()
            }),
        )
        .layer(layer.secure(false))
}

fn key() -> Key {
    Key::from_bytes(b"benchmark key, not a secret: 0123456789abcdef").unwrap()
}

fn with(store: impl SessionStore) -> Router {
    router(SessionLayer::new(key()).with_store(store))
}

/// The configurations whose server answers.
async fn configs(dir: &std::path::Path) -> Vec<(&'static str, Router)> {
    use session_layer::store::{FileStore, MemcachedStore, MemoryStore, RedisStore, SqlStore};
    let mut configs = vec![
        ("signed cookie", router(SessionLayer::signed(key()))),
        ("MemoryStore", with(MemoryStore::new())),
        (
            "FileStore",
            with(FileStore::new(dir.join("files")).unwrap()),
        ),
    ];
    match RedisStore::connect("redis://127.0.0.1:6379").await {
        Ok(store) => configs.push(("RedisStore", with(store.prefix("bench:checks:")))),
        Err(e) => eprintln!("left out Redis: {e}"),
    }
    let sqlite = format!("sqlite:{}", dir.join("checks.db").display());
    for (name, url) in [
        (
            "SqlStore (PostgreSQL)",
            "postgres://postgres@127.0.0.1:5432/test",
        ),
        ("SqlStore (MariaDB)", "mysql://root@127.0.0.1:3306/test"),
        ("SqlStore (SQLite)", sqlite.as_str()),
    ] {
        match SqlStore::connect(url).await {
            Ok(store) => {
                let store = store.table("sessions_bench");
                match store.migrate().await {
                    Ok(()) => configs.push((name, with(store))),
                    Err(e) => eprintln!("left out {name}: {e}"),
                }
            }
            Err(e) => eprintln!("left out {name}: {e}"),
        }
    }
    match MemcachedStore::connect("memcache://127.0.0.1:11211").await {
        Ok(store) => configs.push(("MemcachedStore", with(store.prefix("bench:checks:")))),
        Err(e) => eprintln!("left out Memcached: {e}"),
    }
    configs
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let at = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64)
}

fn stats(mut values: Vec<f64>) -> [f64; 3] {
    values.sort_by(f64::total_cmp);
    [0.25, 0.5, 0.75].map(|q| quantile(&values, q) / 1000.0)
}

/// Runs `rounds` interleaved rounds and prints the table.
pub async fn run(rounds: usize, slice: Duration) {
    let dir = std::env::temp_dir().join(format!("session-layer-checks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let configs = configs(&dir).await;
    // One user (one session) per configuration and route, each started
    // with the counter, and a slice size that fills about `slice`.
    let mut users = Vec::new();
    let mut sizes = Vec::new();
    for (_, router) in &configs {
        let mut row = Vec::new();
        let mut row_sizes = Vec::new();
        for route in ROUTES {
            let mut user = User::new();
            user.request(router, "/blind").await;
            let started = Instant::now();
            for _ in 0..20 {
                user.request(router, route).await;
            }
            let each = started.elapsed().as_secs_f64() / 20.0;
            row_sizes.push(((slice.as_secs_f64() / each) as usize).clamp(10, 20_000));
            row.push(user);
        }
        users.push(row);
        sizes.push(row_sizes);
    }
    let mut times = vec![vec![Vec::with_capacity(rounds); ROUTES.len()]; configs.len()];
    for round in 0..rounds {
        for (c, (_, router)) in configs.iter().enumerate() {
            for k in 0..ROUTES.len() {
                let r = (k + round) % ROUTES.len();
                let started = Instant::now();
                for _ in 0..sizes[c][r] {
                    users[c][r].request(router, ROUTES[r]).await;
                }
                times[c][r].push(started.elapsed().as_nanos() as f64 / sizes[c][r] as f64);
            }
        }
    }
    println!(
        "| configuration | blind write, µs | read-modify-write (checked), added | merge (increment), added |"
    );
    println!("| --- | ---: | ---: | ---: |");
    for (c, (name, _)) in configs.iter().enumerate() {
        let paired = |r: usize| -> Vec<f64> {
            (times[c][r].iter().zip(&times[c][0]))
                .map(|(t, b)| t - b)
                .collect()
        };
        let blind = stats(times[c][0].clone());
        let cell = |[p25, median, p75]: [f64; 3]| format!("{median:+.2} [{p25:+.2}, {p75:+.2}]");
        println!(
            "| {name} | {:.2} | {} | {} |",
            blind[1],
            cell(stats(paired(1))),
            cell(stats(paired(2)))
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
