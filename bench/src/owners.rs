//! What the owner index costs a RedisStore, on one server and on a
//! cluster: round trips (commands the store sends) and commands run inside
//! its scripts, per write with and without an owner and per listing, as
//! the servers themselves saw them (`MONITOR`, which shows script commands
//! apart from the clients').

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use session_layer::store::{Changes, OWNER_KEY, Record, RedisStore, SessionId, SessionStore};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const PREFIX: &str = "bench:owners:";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn record(owner: Option<&str>) -> Record {
    let mut data = json!({"count": 1}).as_object().unwrap().clone();
    if let Some(owner) = owner {
        data.insert(OWNER_KEY.into(), json!(owner));
    }
    Record::new(data, false, now(), now() + 3600)
}

fn set(key: &str, value: serde_json::Value) -> Changes {
    let mut changes = Changes::expiry(now(), now() + 3600);
    changes.set.push((key.into(), value));
    changes
}

/// Counts, on the servers at `ports`, the commands on this bench's keys:
/// those a client sent, and those scripts ran.
#[derive(Clone, Default)]
struct Monitor {
    sent: Arc<AtomicU64>,
    scripted: Arc<AtomicU64>,
}

impl Monitor {
    async fn start(ports: &[u16]) -> Self {
        let monitor = Self::default();
        for &port in ports {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            stream.write_all(b"MONITOR\r\n").await.unwrap();
            let mut lines = BufReader::new(stream).lines();
            let counts = monitor.clone();
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    if !line.contains(PREFIX) {
                        continue;
                    }
                    let by_script = line.contains(" lua] ");
                    let count = if by_script {
                        &counts.scripted
                    } else {
                        &counts.sent
                    };
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        monitor
    }

    /// The counts since the last call, per operation of `n`, once the
    /// servers have reported them all.
    async fn per(&self, n: u64) -> (f64, f64) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = self.sent.swap(0, Ordering::Relaxed);
        let scripted = self.scripted.swap(0, Ordering::Relaxed);
        (sent as f64 / n as f64, scripted as f64 / n as f64)
    }
}

/// Prints a row per operation: `n` of each, on `store`.
async fn measure(name: &str, store: RedisStore, ports: &[u16], n: u64) {
    let store = store.prefix(PREFIX);
    let owner = format!("bench owner {}", &SessionId::generate().as_str()[..8]);
    let anonymous = SessionId::generate();
    let owned = SessionId::generate();
    assert!(store.create(&anonymous, &record(None)).await.unwrap());
    assert!(store.create(&owned, &record(Some(&owner))).await.unwrap());
    // Every script once, so that no NOSCRIPT retry is counted.
    store.owned(&owner, now()).await.unwrap();
    store.delete(&SessionId::generate()).await.unwrap();
    store.take(&SessionId::generate(), now()).await.unwrap();
    let monitor = Monitor::start(ports).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    monitor.per(1).await;
    let row = async |what: &str| {
        let (sent, scripted) = monitor.per(n).await;
        println!("| {name} | {what} | {sent:.2} | {scripted:.2} |");
    };

    let mut anonymous_ones = Vec::new();
    for _ in 0..n {
        let id = SessionId::generate();
        assert!(store.create(&id, &record(None)).await.unwrap());
        anonymous_ones.push(id);
    }
    row("create, no owner").await;
    for i in 0..n {
        let changes = set("count", json!(i));
        assert!(store.apply(&anonymous, &changes).await.unwrap());
    }
    row("apply, no owner").await;
    for i in 0..n {
        let changes = set("count", json!(i));
        assert!(store.apply(&owned, &changes).await.unwrap());
    }
    row("apply to an owned session, owner untouched").await;
    let mut logins = Vec::new();
    for i in 0..n {
        let id = SessionId::generate();
        let owner = format!("{owner} {i}");
        assert!(store.create(&id, &record(Some(&owner))).await.unwrap());
        logins.push(id);
    }
    row("create with an owner (a login)").await;
    for (i, id) in logins.iter().enumerate() {
        let changes = set(OWNER_KEY, json!(format!("{owner} moved {i}")));
        assert!(store.apply(id, &changes).await.unwrap());
    }
    row("apply that sets the owner").await;
    for _ in 0..n {
        let id = SessionId::generate();
        assert!(store.create(&id, &record(Some(&owner))).await.unwrap());
        logins.push(id);
    }
    row(&format!("a login of an owner with {} sessions", n + 1)).await;
    for id in &logins[10..] {
        store.delete(id).await.unwrap();
    }
    monitor.per(1).await;
    let (listed, mut mine) = (format!("{owner} listed"), Vec::new());
    for _ in 0..10 {
        let id = SessionId::generate();
        assert!(store.create(&id, &record(Some(&listed))).await.unwrap());
        mine.push(id);
    }
    monitor.per(1).await;
    for _ in 0..n {
        assert_eq!(store.owned(&listed, now()).await.unwrap().len(), 10);
    }
    row("listing of an owner's 10 sessions").await;
    let all = (logins[..10].iter().chain(&mine).chain(&anonymous_ones)).chain([&anonymous, &owned]);
    for id in all {
        store.delete(id).await.unwrap();
    }
}

/// The owner index's cost per operation on the Redis at 6379 and the
/// cluster at 7001-7003.
pub async fn calls(n: u64) {
    println!("| Redis | operation | round trips | commands in scripts |");
    println!("| --- | --- | ---: | ---: |");
    match RedisStore::connect("redis://127.0.0.1:6379").await {
        Ok(store) => measure("one server", store, &[6379], n).await,
        Err(e) => eprintln!("left out one server: {e}"),
    }
    let nodes = [
        "redis://127.0.0.1:7001",
        "redis://127.0.0.1:7002",
        "redis://127.0.0.1:7003",
    ];
    match RedisStore::cluster(&nodes).await {
        Ok(store) => measure("cluster", store, &[7001, 7002, 7003], n).await,
        Err(e) => eprintln!("left out the cluster: {e}"),
    }
}
