//! `RedisStore`: sessions in Redis or Redis Cluster.

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, Script, Value};

mod owners;

use super::net::{KeyPrefix, bounded, prefix_and_timeout};
use super::{Changes, Merge, Record, SessionId, SessionStore};
use crate::error::Error;

/// Stores a record if its key is free, or holds a record expired by the
/// layer's clock: one round trip. ARGV: the change channel ('' for none)
/// and message, the owner index's part (`ARGV[3]` to `ARGV[8]`,
/// `owners::RECORD_INDEX_LUA` says what), expires_at, now, then
/// field/value pairs.
const CREATE: &str = r"
local expires = redis.call('HGET', KEYS[1], 'm:e')
if expires and tonumber(expires) > tonumber(ARGV[10]) then return 0 end
if late() then return -1 end
if expires then unindex(KEYS[1]) end
redis.call('DEL', KEYS[1])
for i = 11, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
own(KEYS[1], false, ARGV[9])
redis.call('EXPIREAT', KEYS[1], ARGV[9])
if ARGV[1] ~= '' then redis.pcall('PUBLISH', ARGV[1], ARGV[2]) end
return 1
";

/// Applies a request's changes field by field, atomically: one round trip.
/// A record expired by the layer's clock (`now`) counts as gone, as in
/// every store. ARGV: the change channel ('' for none) and message, the
/// owner index's part (`ARGV[3]` to `ARGV[8]`), expires_at, now, cleared
/// (0/1), permanent ('' for unchanged, 0, 1), the number of removed
/// fields, of expectations and of merges, the removed fields, the
/// expectations (field, the JSON text read or '' for absent), the merges
/// (field, op, two operands: see `MERGE_LUA`), then field/value pairs.
/// Fields go in a few `HDEL`/`HSET` calls of up to 100 fields each (Lua's
/// `unpack` has a bound), not one call per field. Expectations and merges
/// are judged before anything is written. Returns 1 when applied, 0 for no
/// record, -1 when too late for its index entry, -2 for a conflict (an
/// expectation failed, a merge met a value of another kind; nothing
/// written), or (on a cluster) the digest of an index to extend before the
/// write can go.
const APPLY: &str = r"
local record = redis.call('HMGET', KEYS[1], 'm:e', 'm:o', 'm:x')
if not record[1] or tonumber(record[1]) <= tonumber(ARGV[10]) then return 0 end
if late() then return -1 end
local extend = keep_index(KEYS[1], record[2], record[3], ARGV[9])
if extend then return extend end
local removed = tonumber(ARGV[13])
local checks = 16 + removed
local ops = checks + 2 * tonumber(ARGV[14])
local sets = ops + 4 * tonumber(ARGV[15])
for i = checks, ops - 1, 2 do
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  if ARGV[i + 1] == '' then
    if held then return -2 end
  elseif held ~= ARGV[i + 1] then return -2 end
end
local merged, order, pending, waiting = {}, {}, {}, {}
local function current_of(field)
  local current = merged[field]
  if current == nil then
    order[#order + 1] = field
    current = ARGV[11] ~= '1' and redis.call('HGET', KEYS[1], field)
  end
  return current
end
-- A field's map ops so far, made at once on its text (see map_batch).
local function flush(field)
  local batch = pending[field]
  if not batch then return true end
  pending[field] = nil
  local current = map_batch(current_of(field), batch)
  if current == nil then return false end
  merged[field] = current
  return true
end
for i = ops, sets - 1, 4 do
  local field, op = ARGV[i], ARGV[i + 1]
  if op == 'i' or op == 'r' then
    if not pending[field] then
      pending[field] = {}
      waiting[#waiting + 1] = field
    end
    local batch = pending[field]
    batch[#batch + 1] = {op, ARGV[i + 2], ARGV[i + 3]}
  else
    if not flush(field) then return -2 end
    local current = merge(current_of(field), op, ARGV[i + 2], ARGV[i + 3])
    if current == nil then return -2 end
    merged[field] = current
  end
end
for _, field in ipairs(waiting) do
  if not flush(field) then return -2 end
end
if ARGV[11] == '1' then
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(field, 1, 2) == 'd:' then redis.call('HDEL', KEYS[1], field) end
  end
end
for i = 16, 15 + removed, 100 do
  redis.call('HDEL', KEYS[1], unpack(ARGV, i, math.min(i + 99, 15 + removed)))
end
local fields = {'m:e', ARGV[9]}
if ARGV[12] ~= '' then fields[3] = 'm:p'; fields[4] = ARGV[12] end
for i = sets, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  if #fields >= 200 then redis.call('HSET', KEYS[1], unpack(fields)); fields = {} end
end
for _, field in ipairs(order) do
  if merged[field] then
    fields[#fields + 1] = field
    fields[#fields + 1] = merged[field]
    if #fields >= 200 then redis.call('HSET', KEYS[1], unpack(fields)); fields = {} end
  else
    redis.call('HDEL', KEYS[1], field)
  end
end
if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
own(KEYS[1], record[2], ARGV[9])
redis.call('EXPIREAT', KEYS[1], ARGV[9])
if ARGV[1] ~= '' then redis.pcall('PUBLISH', ARGV[1], ARGV[2]) end
return 1
";

/// `merge(current, op, a, b)`: what a merge makes of a field's JSON text
/// (`false` when absent), as `Merge::apply` says: the new text, `false`
/// for absent, or nil when the merge does not fit the value (a conflict).
/// Ops: `a` adds the integer `a` (exactly, in 64 bits: Redis' own `HINCRBY`
/// on a scratch field `m:t`, removed at once, so a non-integer or an
/// overflow is refused as it is in Rust); `p` appends the item `a` to a
/// list. `map_batch(current, ops)` makes a field's map ops in a row at
/// once: `i` sets member `a` (its JSON string) of a map to `b`, `r`
/// removes member `a`. The text is the crate's compact JSON (serde_json's),
/// and stays so: a map's members stay in the byte order of their keys, so
/// that the text of a value is the same whichever store or path wrote it,
/// and expectations can compare texts.
const MERGE_LUA: &str = r#"
local function value_end(s, i)
  local c = string.sub(s, i, i)
  if c == '"' then
    local j = i + 1
    while true do
      local q = string.find(s, '["\\]', j)
      if not q then error('a session value is not JSON') end
      if string.sub(s, q, q) == '"' then return q end
      j = q + 2
    end
  elseif c == '{' or c == '[' then
    local depth, j = 0, i
    while true do
      local q = string.find(s, '[%[%]{}"]', j)
      if not q then error('a session value is not JSON') end
      local d = string.sub(s, q, q)
      if d == '"' then
        j = value_end(s, q) + 1
      else
        if d == '{' or d == '[' then depth = depth + 1 else depth = depth - 1 end
        if depth == 0 then return q end
        j = q + 1
      end
    end
  end
  local q = string.find(s, '[,%]}]', i)
  return (q or (#s + 1)) - 1
end
local function bytes_before(a, b)
  for k = 1, math.min(#a, #b) do
    local x, y = string.byte(a, k), string.byte(b, k)
    if x ~= y then return x < y end
  end
  return #a < #b
end
-- The map ops of one field in a row ({op, member, value}), made on its
-- text at once: the members parsed once, changed in a table, written back
-- in the byte order of their names (a thousand members set in one
-- request cost one pass, not a thousand). False when the field stays
-- absent, nil when it holds something other than a map.
local function map_batch(current, batch)
  if not current then
    for _, o in ipairs(batch) do
      if o[1] == 'i' then current = '{}' end
    end
    if not current then return false end
  end
  if string.sub(current, 1, 1) ~= '{' then return nil end
  local texts, names = {}, {}
  if string.sub(current, 2, 2) ~= '}' then
    local i = 2
    while true do
      local key_end = value_end(current, i)
      local value_last = value_end(current, key_end + 2)
      local name = cjson.decode(string.sub(current, i, key_end))
      texts[name] = string.sub(current, i, value_last)
      names[#names + 1] = name
      if string.sub(current, value_last + 1, value_last + 1) ~= ',' then break end
      i = value_last + 2
    end
  end
  for _, o in ipairs(batch) do
    local name = cjson.decode(o[2])
    if texts[name] == nil then names[#names + 1] = name end
    if o[1] == 'i' then texts[name] = o[2] .. ':' .. o[3] else texts[name] = false end
  end
  table.sort(names, bytes_before)
  local out = {}
  for _, name in ipairs(names) do
    if texts[name] then out[#out + 1] = texts[name] end
  end
  return '{' .. table.concat(out, ',') .. '}'
end
local function merge(current, op, a, b)
  if op == 'a' then
    if current and not string.match(current, '^%-?%d+$') then return nil end
    redis.call('HSET', KEYS[1], 'm:t', current or '0')
    local sum = redis.pcall('HINCRBY', KEYS[1], 'm:t', a)
    local text = redis.call('HGET', KEYS[1], 'm:t')
    redis.call('HDEL', KEYS[1], 'm:t')
    if type(sum) == 'table' and sum.err then return nil end
    return text
  elseif op == 'p' then
    if not current then return '[' .. a .. ']' end
    if string.sub(current, 1, 1) ~= '[' then return nil end
    if current == '[]' then return '[' .. a .. ']' end
    return string.sub(current, 1, -2) .. ',' .. a .. ']'
  end
  return nil
end
"#;

/// Removes a record and returns its fields, atomically with `APPLY`: one
/// round trip. ARGV: the change channel ('' for none) and message, the
/// owner index's part (`ARGV[3]` to `ARGV[5]`).
const TAKE: &str = r"
local fields = redis.call('HGETALL', KEYS[1])
unindex(KEYS[1])
redis.call('DEL', KEYS[1])
if #fields > 0 and ARGV[1] ~= '' then redis.pcall('PUBLISH', ARGV[1], ARGV[2]) end
return fields
";

/// Removes a record: one round trip. ARGV: the change channel ('' for
/// none) and message, the owner index's part (`ARGV[3]` to `ARGV[5]`).
const DELETE: &str = r"
unindex(KEYS[1])
local removed = redis.call('DEL', KEYS[1])
if removed > 0 and ARGV[1] ~= '' then redis.pcall('PUBLISH', ARGV[1], ARGV[2]) end
return removed
";

// The scripts publish with `redis.pcall`: a user whose ACL allows no
// channels (Redis 7's default for new users) still writes; only a coherent
// cache, which could not subscribe either, goes without.

/// Ends a lease if its holder (ARGV[1]) still holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The scripts with their SHA1 computed once, for `EVALSHA`.
static CREATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| record_script(CREATE));
static APPLY_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| record_script(&[MERGE_LUA, APPLY].concat()));
static TAKE_SCRIPT: LazyLock<Script> = LazyLock::new(|| record_script(TAKE));
static DELETE_SCRIPT: LazyLock<Script> = LazyLock::new(|| record_script(DELETE));
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));

/// A record script, after the owner index's Lua it calls.
fn record_script(body: &str) -> Script {
    Script::new(&[owners::INDEX_LUA, owners::RECORD_INDEX_LUA, body].concat())
}

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
/// - Every write on one server also publishes the id it changed on the
///   channel `{prefix}changes`, in the same script, so that a
///   [`CachingStore::coherent`](super::CachingStore::coherent) on any
///   process keeps records until they change. (A cluster store does not
///   publish: a cluster broadcasts every message to every node.)
///
/// - Sessions are indexed by owner ([`SessionStore::owned`]): a sorted set
///   `{prefix}owner:{digest}` per owner (the SHA-256 of the owner in hex)
///   holds its session ids; an owned session's hash adds `m:o` (the
///   digest) and `m:x` (until when its index is sure to live). On one
///   server the write scripts keep the index in the same step, and a
///   listing is one round trip. On a cluster the index is in another slot:
///   a write that sets an owner adds the entry first (one round trip more,
///   at logins only), and a listing reads the index and then the records
///   (concurrently), dropping entries whose record moved on once they are
///   old enough; a write that sets an owner must reach its server within
///   60 s of that add, or it refuses itself. Writes that leave the owner
///   alone cost what they did. An index expires a day after the last
///   expiry of its sessions, and is extended when a session is refreshed
///   past it.
///
/// # Security
/// Run Redis with `maxmemory-policy noeviction` (the default) where
/// "sign out everywhere" must reach every session: a Redis that evicts
/// keys may evict an owner's index as readily as a session, and the
/// owner's other sessions are then missing from the list (and survive
/// [`Sessions::end_all`](crate::Sessions::end_all)) until each signs in
/// again or is refreshed a day further.
///
/// Connections: one multiplexed connection (redis' `ConnectionManager`),
/// which pipelines the requests of every task; Redis serves them in order,
/// so no pool is needed. Clones share it. A coherent cache adds one
/// subscriber connection per process.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: KeyPrefix,
    timeout: Duration,
    /// The client behind `conn`, to open the subscriber connection a
    /// coherent cache listens on (`None` for a connection handed in).
    client: Option<redis::Client>,
    /// The tag of this store value's writes on the change channel (0:
    /// owned by no cache).
    origin: u64,
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
        Self::from_client(client, timeout).await
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
    ///
    /// Its writes publish changes, but a coherent cache cannot listen
    /// through it: use [`from_client`](Self::from_client) for that.
    pub fn from_manager(manager: ConnectionManager) -> Self {
        Self::with_connection(Conn::Single(manager))
    }

    /// A store on a client of your own (TLS, credentials, settings of your
    /// choice), connected as [`connect`](Self::connect) does; a
    /// coherent cache opens its subscriber connection from it too.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn from_client(client: redis::Client, timeout: Duration) -> Result<Self, Error> {
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
        let mut store = Self::with_connection(Conn::Single(manager));
        store.client = Some(client);
        Ok(store)
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
            client: None,
            origin: 0,
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

    /// The key of the session's lease (`:` never occurs in an id, so it
    /// names no session).
    fn lease_key(&self, id: &SessionId) -> String {
        format!("{}lease:{}", self.prefix.as_str(), id.as_str())
    }

    /// The channel every write publishes its id on.
    fn channel(&self) -> String {
        format!("{}changes", self.prefix.as_str())
    }

    /// The change channel and message that lead a script's arguments:
    /// none on a cluster.
    fn notice(&self, id: &SessionId) -> Vec<Vec<u8>> {
        match self.conn {
            Conn::Single(_) => vec![
                self.channel().into_bytes(),
                super::net::change_message(self.origin, id).into_bytes(),
            ],
            Conn::Cluster(_) => vec![Vec::new(), Vec::new()],
        }
    }

    pub(super) async fn run<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, Error> {
        let mut conn = self.conn.clone();
        bounded(self.timeout, cmd.query_async(&mut conn)).await
    }

    /// Runs `script` on `keys` (the first decides the server) with `args`.
    pub(super) async fn script<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<T, Error> {
        let mut conn = self.conn.clone();
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        bounded(self.timeout, invocation.invoke_async(&mut conn)).await
    }

    /// Runs a record-writing script (CREATE, APPLY) for a record expiring
    /// at `expires_at`, with the owner index's part of its arguments
    /// (`owner`, from [`owner_write`](Self::owner_write)) between the
    /// change notice and `tail`. On a cluster, a record about to outlive
    /// its index has the index extended and is written again. True when
    /// written, false when there was no record to write to (APPLY) or the
    /// id was taken (CREATE).
    async fn write_record(
        &self,
        script: &Script,
        id: &SessionId,
        mut owner: owners::OwnerWrite,
        expires_at: u64,
        tail: &[Vec<u8>],
    ) -> Result<bool, Error> {
        // More than one extension only when other writes keep moving the
        // session to another owner meanwhile.
        for _ in 0..3 {
            let (index, owner_args) = self.owner_args(id, &owner);
            let key = self.key(id);
            let keys: Vec<&str> = std::iter::once(key.as_str())
                .chain(index.as_deref())
                .collect();
            let notice = self.notice(id);
            let args: Vec<&[u8]> = (notice.iter().chain(&owner_args).chain(tail))
                .map(Vec::as_slice)
                .collect();
            match self.script(script, &keys, &args).await? {
                Value::Int(1) => {
                    self.after_write(&owner).await;
                    return Ok(true);
                }
                Value::Int(0) => return Ok(false),
                Value::Int(-2) => {
                    return Err(Error::conflict(
                        "a session value changed since the request read it, or no longer \
                         fits a merge",
                    ));
                }
                Value::Int(-1) => {
                    return Err(Error::store(format!(
                        "a session write that sets its owner reached Redis over {} s after \
                         the owner index entry it needs, and was refused",
                        owners::WRITE_WINDOW.as_secs()
                    )));
                }
                Value::BulkString(digest) => {
                    let digest = String::from_utf8(digest).map_err(Error::store)?;
                    self.reindex(&mut owner, digest, id, expires_at).await?;
                }
                other => {
                    return Err(Error::store(format!(
                        "unexpected reply of a session write script: {other:?}"
                    )));
                }
            }
        }
        Err(Error::store(
            "the session's owner kept changing while its owner index was extended: write refused",
        ))
    }
}

fn value(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value always serializes")
}

/// A map member's name as the JSON string it is in the map's text.
fn member_text(member: &str) -> Vec<u8> {
    value(&serde_json::Value::from(member))
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

/// CREATE's arguments after the owner index's part.
fn create_tail(record: &Record) -> Vec<Vec<u8>> {
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

/// APPLY's arguments after the owner index's part.
fn apply_tail(changes: &Changes) -> Vec<Vec<u8>> {
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
        changes.expected.len().to_string().into_bytes(),
        changes.merges.len().to_string().into_bytes(),
    ];
    args.extend(changes.removed.iter().map(|key| field(key)));
    for (key, read) in &changes.expected {
        args.push(field(key));
        args.push(read.as_ref().map(value).unwrap_or_default());
    }
    let mut ops = 0_usize;
    let mut last_push: Option<(&str, usize)> = None;
    for (key, merge) in &changes.merges {
        // Pushes in a row onto one list go as one op whose item text is
        // theirs joined by commas (`MERGE_LUA` splices it in as it is):
        // the script then copies the list once, not once per item.
        if let Merge::Push(item) = merge {
            if let Some((pushed, at)) = last_push
                && pushed == key
            {
                args[at].push(b',');
                args[at].extend(value(item));
                continue;
            }
            last_push = Some((key, args.len() + 2));
        } else {
            last_push = None;
        }
        ops += 1;
        args.push(field(key));
        let (op, a, b) = match merge {
            Merge::Add(by) => ("a", by.to_string().into_bytes(), Vec::new()),
            Merge::Push(item) => ("p", value(item), Vec::new()),
            Merge::Insert(member, item) => ("i", member_text(member), value(item)),
            Merge::Remove(member) => ("r", member_text(member), Vec::new()),
        };
        args.extend([op.as_bytes().to_vec(), a, b]);
    }
    args[6] = ops.to_string().into_bytes();
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
        let expires_at = record.expires_at;
        let owner = self.owner_write(id, Some(record.owner()), expires_at);
        let owner = owner.await?;
        let tail = create_tail(record);
        self.write_record(&CREATE_SCRIPT, id, owner, expires_at, &tail)
            .await
    }

    async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
        let expires_at = changes.expires_at;
        let owner = self.owner_write(id, changes.owner_change(), expires_at);
        let owner = owner.await?;
        let tail = apply_tail(changes);
        self.write_record(&APPLY_SCRIPT, id, owner, expires_at, &tail)
            .await
    }

    /// `SET {prefix}lease:{id} holder NX PX hold`: one round trip; the key
    /// expires by itself after `hold`.
    async fn lease(&self, id: &SessionId, holder: &str, hold: Duration) -> Result<bool, Error> {
        let millis = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(1);
        let set = redis::cmd("SET")
            .arg(self.lease_key(id))
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(millis)
            .clone();
        let taken: Option<String> = self.run(&set).await?;
        Ok(taken.is_some())
    }

    /// Deletes the lease key if `holder` still holds it: one round trip.
    async fn release(&self, id: &SessionId, holder: &str) -> Result<(), Error> {
        let key = self.lease_key(id);
        let _: i64 = (self.script(&RELEASE_SCRIPT, &[&key], &[holder.as_bytes()])).await?;
        Ok(())
    }

    async fn delete(&self, id: &SessionId) -> Result<(), Error> {
        self.end(&DELETE_SCRIPT, id).await.map(|_: i64| ())
    }

    async fn take(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        parse(self.end(&TAKE_SCRIPT, id).await?, now)
    }

    /// One server: one round trip (a script reads the index and the
    /// records). A cluster: one to read the index, the records read
    /// concurrently, and one more when stale entries go.
    async fn owned(&self, owner: &str, now: u64) -> Result<Vec<(SessionId, Record)>, Error> {
        let mut owned = Vec::new();
        for (id, fields) in self.indexed_records(owner).await? {
            if let Some(record) = parse(fields, now)?
                && record.owner() == Some(owner)
            {
                owned.push((id, record));
            }
        }
        Ok(owned)
    }
}

impl RedisStore {
    /// Runs TAKE or DELETE on the record of `id`.
    async fn end<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        id: &SessionId,
    ) -> Result<T, Error> {
        let (notice, index) = (self.notice(id), self.unindex_args(id));
        let args: Vec<&[u8]> = notice.iter().chain(&index).map(Vec::as_slice).collect();
        self.script(script, &[&self.key(id)], &args).await
    }
}

/// Listens on the change channel over a RESP3 connection of its own.
#[cfg(feature = "caching-store")]
#[async_trait]
impl super::Notifying for RedisStore {
    fn with_origin(&self, origin: u64) -> Result<Self, Error> {
        if matches!(self.conn, Conn::Cluster(_)) {
            return Err(Error::store(
                "a Redis Cluster store does not publish changes: use a time-bounded cache",
            ));
        }
        if self.client.is_none() {
            return Err(Error::store(
                "a store from a connection manager cannot open a subscriber connection: \
                 build it with RedisStore::connect or from_client",
            ));
        }
        Ok(Self {
            origin,
            ..self.clone()
        })
    }

    async fn watch(&self, to: super::Invalidations) {
        const PING_EVERY: Duration = Duration::from_secs(1);
        let Some(client) = &self.client else { return };
        let mut backoff = Duration::from_millis(50);
        while !to.is_closed() {
            match self.subscribe(client).await {
                Ok((mut conn, mut pushes)) => {
                    to.connected();
                    backoff = Duration::from_millis(50);
                    loop {
                        tokio::select! {
                            push = pushes.recv() => match push {
                                Some(push) if push.kind == redis::PushKind::Message => {
                                    if let Some(message) = message(&push.data) {
                                        super::net::report(message, self.origin, &to);
                                    }
                                }
                                Some(push) if push.kind == redis::PushKind::Disconnection => break,
                                Some(_) => {}
                                None => break,
                            },
                            () = tokio::time::sleep(PING_EVERY) => {
                                if to.is_closed() {
                                    return;
                                }
                                // A peer gone without a word (no reset)
                                // shows as a ping that does not answer.
                                let ping = redis::cmd("PING");
                                let ping = ping.query_async::<()>(&mut conn);
                                if bounded(self.timeout, ping).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    to.lost();
                }
                Err(error) => {
                    tracing::warn!(error = %error, "session cache: cannot listen for changes, retrying");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

#[cfg(feature = "caching-store")]
impl RedisStore {
    /// A RESP3 connection subscribed to the change channel, and the
    /// messages it receives.
    async fn subscribe(
        &self,
        client: &redis::Client,
    ) -> Result<
        (
            redis::aio::MultiplexedConnection,
            tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
        ),
        Error,
    > {
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client =
            redis::Client::open(info.set_redis_settings(settings)).map_err(Error::store)?;
        let (sender, pushes) = tokio::sync::mpsc::unbounded_channel();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_push_sender(sender);
        let connect = client.get_multiplexed_async_connection_with_config(&config);
        let mut conn = bounded(self.timeout, connect).await?;
        bounded(self.timeout, conn.subscribe(self.channel())).await?;
        Ok((conn, pushes))
    }
}

/// The message of a message push (the channel, then the message).
#[cfg(feature = "caching-store")]
fn message(data: &[Value]) -> Option<&str> {
    let Some(Value::BulkString(message)) = data.get(1) else {
        return None;
    };
    std::str::from_utf8(message).ok()
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
