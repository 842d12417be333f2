//! The coherent cache: how long after a writer's acknowledgement another
//! process's cache hears of the write, on Redis and PostgreSQL, and what a
//! cached session costs in memory.

use std::time::{Duration, Instant};

use session_layer::store::{
    CachingStore, Changes, MemoryStore, Notifying, Record, SessionId, SessionStore,
};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn record() -> Record {
    let data = serde_json::json!({"count": 1}).as_object().unwrap().clone();
    Record::new(data, false, now(), now() + 3600)
}

/// Writes through one cache `writes` times and, after each acknowledged
/// write, waits for the other cache to hear of it; prints the wait.
async fn lag<S: Notifying>(name: &str, a: S, b: S, writes: usize) {
    let a = CachingStore::coherent(a).unwrap();
    let b = CachingStore::coherent(b).unwrap();
    assert!(a.wait_caching(Duration::from_secs(5)).await);
    assert!(b.wait_caching(Duration::from_secs(5)).await);
    let id = SessionId::generate();
    assert!(a.create(&id, &record()).await.unwrap());
    let mut after_ack = Vec::with_capacity(writes);
    let mut write = Vec::with_capacity(writes);
    for n in 0..writes {
        let heard = b.changes_heard();
        let mut changes = Changes::expiry(now(), now() + 3600);
        changes.set.push(("count".into(), serde_json::json!(n)));
        let started = Instant::now();
        assert!(a.apply(&id, &changes).await.unwrap());
        let acked = Instant::now();
        while b.changes_heard() == heard {
            tokio::task::yield_now().await;
        }
        after_ack.push(acked.elapsed().as_secs_f64() * 1e6);
        write.push((acked - started).as_secs_f64() * 1e6);
    }
    a.delete(&id).await.unwrap();
    for v in [&mut after_ack, &mut write] {
        v.sort_by(f64::total_cmp);
    }
    let q = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    println!(
        "| {name} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs |",
        q(&write, 0.5),
        q(&after_ack, 0.5),
        q(&after_ack, 0.99),
        after_ack[after_ack.len() - 1]
    );
}

/// Memory per cached one-key session: the records are first stored (in a
/// MemoryStore), then loaded once through a cache; the growth of the
/// process is the cache's.
async fn cache_memory(sessions: usize) {
    let store = std::sync::Arc::new(MemoryStore::new().max_sessions(sessions * 2));
    let mut ids = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let id = SessionId::generate();
        store.create(&id, &record()).await.unwrap();
        ids.push(id);
    }
    let cache = CachingStore::with_cache(store, sessions as u64 * 2, Duration::from_secs(3600));
    let before = crate::scale::rss();
    for id in &ids {
        assert!(cache.load(id, now()).await.unwrap().is_some());
    }
    let after = crate::scale::rss();
    println!(
        "cache memory per cached one-key session ({sessions} cached): {:.0} B",
        after.saturating_sub(before) as f64 / sessions as f64
    );
}

pub async fn run(writes: usize) {
    println!("| store | write (ack) p50 | heard after ack p50 | p99 | max |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let redis = "redis://127.0.0.1:6379";
    match (
        session_layer::store::RedisStore::connect(redis).await,
        session_layer::store::RedisStore::connect(redis).await,
    ) {
        (Ok(a), Ok(b)) => {
            lag(
                "Redis",
                a.prefix("bench:lag:"),
                b.prefix("bench:lag:"),
                writes,
            )
            .await
        }
        _ => eprintln!("left out Redis"),
    }
    let pg = "postgres://postgres@127.0.0.1:5432/test";
    match (
        session_layer::store::SqlStore::connect(pg).await,
        session_layer::store::SqlStore::connect(pg).await,
    ) {
        (Ok(a), Ok(b)) => {
            let (a, b) = (a.table("sessions_bench"), b.table("sessions_bench"));
            a.migrate().await.unwrap();
            lag("PostgreSQL", a, b, writes).await;
        }
        _ => eprintln!("left out PostgreSQL"),
    }
    cache_memory(100_000).await;
}

/// Every command's call count on the Redis at 127.0.0.1:6379.
async fn redis_calls() -> std::collections::BTreeMap<String, u64> {
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.strip_prefix("calls=")?.split(',').next()?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// Committed transactions (each autocommit statement is one) of the
/// PostgreSQL database `test`.
async fn postgres_commits(pool: &sqlx::PgPool) -> i64 {
    let (n,): (i64,) =
        sqlx::query_as("SELECT xact_commit FROM pg_stat_database WHERE datname = 'test'")
            .fetch_one(pool)
            .await
            .unwrap();
    n
}

/// Round trips per request counted by the servers themselves: Redis'
/// `INFO commandstats` (commands run inside a script are listed too, under
/// their own names) and PostgreSQL's committed statements.
pub async fn round_trips(requests: u32) {
    println!("| configuration | route | server-side count per request |");
    println!("| --- | --- | --- |");
    let configs = crate::configs::all(true).await;
    let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .unwrap();
    for config in configs
        .iter()
        .filter(|c| c.name.contains("Redis") || c.name.contains("PostgreSQL"))
    {
        for route in ["/rmw", "/read"] {
            let mut user = crate::inprocess::User::new();
            user.request(&config.router, "/rmw").await;
            user.request(&config.router, route).await;
            // An idle PostgreSQL backend reports its statistics within 10 s
            // (PGSTAT_IDLE_INTERVAL).
            let settle = if config.name.contains("PostgreSQL") {
                Duration::from_secs(11)
            } else {
                Duration::from_millis(100)
            };
            tokio::time::sleep(settle).await;
            let (calls, commits) = (redis_calls().await, postgres_commits(&pool).await);
            for _ in 0..requests {
                user.request(&config.router, route).await;
            }
            tokio::time::sleep(settle).await;
            let count = if config.name.contains("PostgreSQL") {
                // Two of the commits are the counting queries'.
                let n = postgres_commits(&pool).await - commits - 1;
                format!("{:.2} statements", n as f64 / f64::from(requests))
            } else {
                let after = redis_calls().await;
                after
                    .iter()
                    .filter(|(name, _)| name.as_str() != "info")
                    .filter_map(|(name, n)| {
                        let per = (n - calls.get(name).copied().unwrap_or(0)) as f64
                            / f64::from(requests);
                        (per >= 0.01).then(|| format!("{name} {per:.2}"))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!("| {} | {route} | {count} |", config.name);
        }
    }
}

/// What a Redis load and a save cost alone, and a save with a cache's
/// subscriber connection in the same process: p50 over `n` calls each.
pub async fn redis_call_costs(n: usize) {
    use session_layer::store::RedisStore;
    let url = "redis://127.0.0.1:6379";
    let store = RedisStore::connect(url)
        .await
        .unwrap()
        .prefix("bench:calls:");
    let id = SessionId::generate();
    assert!(store.create(&id, &record()).await.unwrap());
    let p50 = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut timed = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        store.load(&id, now()).await.unwrap();
        timed.push(started.elapsed().as_secs_f64() * 1e6);
    }
    println!("load (HGETALL): {:.0} µs", p50(std::mem::take(&mut timed)));
    let mut changes = Changes::expiry(now(), now() + 3600);
    changes.set.push(("count".into(), serde_json::json!(2)));
    for _ in 0..n {
        let started = Instant::now();
        assert!(store.apply(&id, &changes).await.unwrap());
        timed.push(started.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "save (EVALSHA), no listener: {:.0} µs",
        p50(std::mem::take(&mut timed))
    );
    let cache = CachingStore::coherent(store.clone()).unwrap();
    assert!(cache.wait_caching(Duration::from_secs(5)).await);
    for _ in 0..n {
        let started = Instant::now();
        assert!(cache.apply(&id, &changes).await.unwrap());
        timed.push(started.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "save through a coherent cache (its own listener hears it): {:.0} µs",
        p50(std::mem::take(&mut timed))
    );
    for _ in 0..n {
        let started = Instant::now();
        assert!(store.apply(&id, &changes).await.unwrap());
        timed.push(started.elapsed().as_secs_f64() * 1e6);
    }
    println!("save beside a listening cache: {:.0} µs", p50(timed));
}
