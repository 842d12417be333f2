//! `RedisStore`: sessions in Redis or Redis Cluster.

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, Script, Value};

use super::net::{KeyPrefix, bounded, prefix_and_timeout};
use super::{Changes, Record, SessionId, SessionStore};
use crate::error::Error;

/// Stores a record if its key is free, or holds a record expired by the
/// layer's clock: one round trip. ARGV: expires_at, now, then field/value
/// pairs.
const CREATE: &str = r"
local expires = redis.call('HGET', KEYS[1], 'm:e')
if expires and tonumber(expires) > tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIREAT', KEYS[1], ARGV[1])
return 1
";

/// Applies a request's changes field by field, atomically: one round trip.
/// A record expired by the layer's clock (`now`) counts as gone, as in
/// every store. ARGV: expires_at, now, cleared (0/1), permanent ('' for
/// unchanged, 0, 1), the number of removed fields, the removed fields,
/// then field/value pairs.
const APPLY: &str = r"
local expires = redis.call('HGET', KEYS[1], 'm:e')
if not expires or tonumber(expires) <= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '1' then
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(field, 1, 2) == 'd:' then redis.call('HDEL', KEYS[1], field) end
  end
end
local removed = tonumber(ARGV[5])
for i = 6, 5 + removed do redis.call('HDEL', KEYS[1], ARGV[i]) end
for i = 6 + removed, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'm:p', ARGV[4]) end
redis.call('HSET', KEYS[1], 'm:e', ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[1])
return 1
";

/// Removes a record and returns its fields, atomically with `APPLY`: one
/// round trip.
const TAKE: &str = r"
local fields = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return fields
";

/// The scripts with their SHA1 computed once, for `EVALSHA`.
static CREATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CREATE));
static APPLY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(APPLY));
static TAKE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(TAKE));

/// The default bound on every Redis call.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Sessions in Redis, one hash per session: field `d:KEY` holds the JSON of
/// each value, `m:c`, `m:p` and `m:e` the creation time, permanent flag and
/// expiry; the key expires natively (`EXPIREAT`) with the record.
///
/// - One round trip per load (`HGETALL`) and per save (a Lua script run
///   with `EVALSHA`), none for routes that do not touch the session.
/// - `apply` is atomic per key: the script sets and deletes single fields,
///   so two requests of one user that write different keys both survive.
/// - Redis Cluster: [`RedisStore::cluster`]. A session is one key, so every
///   command of a session goes to one slot and the scripts are cluster-safe.
/// - Every call is bounded by [`timeout`](Self::timeout) (2 s by default);
///   a Redis that is down or slow gives a 503, and the connection is
///   re-established by itself when Redis comes back.
///
/// Connections: one multiplexed connection (redis' `ConnectionManager`),
/// which pipelines the requests of every task; Redis serves them in order,
/// so no pool is needed. Clones share it.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: KeyPrefix,
    timeout: Duration,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &matches!(self.conn, Conn::Cluster(_)))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://[user:password@]host[:port][/db]`,
    /// `rediss://` for TLS where the redis crate is built with it).
    ///
    /// Waits at most 2 s for Redis: [`connect_within`](Self::connect_within)
    /// sets another bound.
    ///
    /// # Errors
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when the URL is
    /// invalid or Redis cannot be reached; the source says why (connection
    /// refused, unknown host, authentication), not merely that time ran
    /// out.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_within(url, DEFAULT_TIMEOUT).await
    }

    /// [`connect`](Self::connect), waiting at most `timeout` for Redis to
    /// answer.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn connect_within(url: &str, timeout: Duration) -> Result<Self, Error> {
        let client = redis::Client::open(url).map_err(Error::store)?;
        let deadline = tokio::time::Instant::now() + timeout;
        // One plain connection first: the manager retries a failed connect
        // until the bound runs out, which would hide why it failed.
        let probe = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let probe = client.get_multiplexed_async_connection_with_config(&probe);
        bounded(timeout, probe).await?;
        // The manager's own response timeout (500 ms in redis 1.x) would
        // fail calls well inside the store's documented bound: switch it
        // off, so that `timeout` is the only bound on a call.
        let config = ConnectionManagerConfig::new().set_response_timeout(None);
        // One bound for the whole connect, the probe included.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let manager = bounded(left, client.get_connection_manager_with_config(config)).await?;
        Ok(Self::with_connection(Conn::Single(manager)))
    }

    /// A store on a connection manager of your own (TLS, a custom
    /// resolver, settings of your choice; `redis` 1.x with its
    /// `connection-manager` feature as your own dependency).
    ///
    /// Build it with
    /// `ConnectionManagerConfig::new().set_response_timeout(None)`: the
    /// manager's default response timeout (500 ms) applies on top of the
    /// store's [`timeout`](Self::timeout) and fails calls well inside it
    /// under load.
    pub fn from_manager(manager: ConnectionManager) -> Self {
        Self::with_connection(Conn::Single(manager))
    }

    /// A store on a cluster connection of your own.
    pub fn from_cluster(connection: ClusterConnection) -> Self {
        Self::with_connection(Conn::Cluster(connection))
    }

    /// Connects to a Redis Cluster through any of its nodes' URLs.
    ///
    /// # Errors
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when no node can be
    /// reached or the cluster is not ready.
    pub async fn cluster(nodes: &[&str]) -> Result<Self, Error> {
        // The cluster client sets no response timeout unless asked to, and
        // none is asked for: `timeout` is the only bound on a call.
        let client = redis::cluster::ClusterClient::new(nodes.to_vec()).map_err(Error::store)?;
        let conn = bounded(DEFAULT_TIMEOUT, client.get_async_connection()).await?;
        Ok(Self::with_connection(Conn::Cluster(conn)))
    }

    fn with_connection(conn: Conn) -> Self {
        Self {
            conn,
            prefix: KeyPrefix::default(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    prefix_and_timeout!(
        "The longest a Redis call may take before it fails (default 2 s). It \
         is the only bound on a call: the redis crate's own response timeout \
         is switched off, so a slow reply within this bound still succeeds."
    );

    fn key(&self, id: &SessionId) -> String {
        self.prefix.key(id)
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, Error> {
        let mut conn = self.conn.clone();
        bounded(self.timeout, cmd.query_async(&mut conn)).await
    }

    async fn script<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        key: &str,
        args: Vec<Vec<u8>>,
    ) -> Result<T, Error> {
        let mut conn = self.conn.clone();
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(arg);
        }
        bounded(self.timeout, invocation.invoke_async(&mut conn)).await
    }
}

fn value(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value always serializes")
}

fn field(key: &str) -> Vec<u8> {
    format!("d:{key}").into_bytes()
}

/// A record from the fields `HGETALL` returned.
fn parse(fields: HashMap<String, Vec<u8>>, now: u64) -> Result<Option<Record>, Error> {
    if fields.is_empty() {
        return Ok(None);
    }
    let number = |name: &str| -> Result<u64, Error> {
        let text = fields
            .get(name)
            .ok_or_else(|| Error::store(format!("session hash lacks {name}")))?;
        std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| Error::store(format!("session hash field {name} is not a number")))
    };
    let mut record = Record::new(
        Default::default(),
        number("m:p")? == 1,
        number("m:c")?,
        number("m:e")?,
    );
    for (name, json) in &fields {
        if let Some(key) = name.strip_prefix("d:") {
            let value = serde_json::from_slice(json).map_err(Error::store)?;
            record.data.insert(key.to_owned(), value);
        }
    }
    Ok((!record.is_expired(now)).then_some(record))
}

fn create_args(record: &Record) -> Vec<Vec<u8>> {
    let mut args = vec![
        record.expires_at.to_string().into_bytes(),
        record.created_at.to_string().into_bytes(),
        b"m:c".to_vec(),
        record.created_at.to_string().into_bytes(),
        b"m:p".to_vec(),
        if record.permanent {
            b"1".to_vec()
        } else {
            b"0".to_vec()
        },
        b"m:e".to_vec(),
        record.expires_at.to_string().into_bytes(),
    ];
    for (key, json) in &record.data {
        args.push(field(key));
        args.push(value(json));
    }
    args
}

fn apply_args(changes: &Changes) -> Vec<Vec<u8>> {
    let mut args = vec![
        changes.expires_at.to_string().into_bytes(),
        changes.now.to_string().into_bytes(),
        if changes.cleared {
            b"1".to_vec()
        } else {
            b"0".to_vec()
        },
        match changes.permanent {
            None => Vec::new(),
            Some(true) => b"1".to_vec(),
            Some(false) => b"0".to_vec(),
        },
        changes.removed.len().to_string().into_bytes(),
    ];
    args.extend(changes.removed.iter().map(|key| field(key)));
    for (key, json) in &changes.set {
        args.push(field(key));
        args.push(value(json));
    }
    args
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let fields: HashMap<String, Vec<u8>> =
            self.run(redis::cmd("HGETALL").arg(self.key(id))).await?;
        parse(fields, now)
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error> {
        Ok(self
            .script::<i64>(&CREATE_SCRIPT, &self.key(id), create_args(record))
            .await?
            == 1)
    }

    async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
        Ok(self
            .script::<i64>(&APPLY_SCRIPT, &self.key(id), apply_args(changes))
            .await?
            == 1)
    }

    async fn delete(&self, id: &SessionId) -> Result<(), Error> {
        self.run::<i64>(redis::cmd("DEL").arg(self.key(id)))
            .await
            .map(drop)
    }

    async fn take(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let fields: HashMap<String, Vec<u8>> =
            self.script(&TAKE_SCRIPT, &self.key(id), Vec::new()).await?;
        parse(fields, now)
    }
}

/// A single server or a cluster, behind one connection type.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}
