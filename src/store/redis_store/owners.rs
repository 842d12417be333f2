//! [`RedisStore`]'s owner index: which sessions each owner has, for
//! [`SessionStore::owned`](crate::store::SessionStore::owned).
//!
//! Each owner has a sorted set `{prefix}owner:{digest}` (the digest is the
//! SHA-256 of the owner in hex, so no owner can name another key or a hash
//! tag) of its session ids, each scored by when it was last added, in
//! milliseconds of the Redis server's clock. An owned record names its
//! index in its hash: `m:o` holds the digest, `m:x` a time (in seconds)
//! until which that index is sure to live. The index expires a day after
//! the last expiry a record asked it to outlive.
//!
//! **One server.** The record scripts keep the index in the same step as
//! the record: an owner set adds the entry, an owner removed or changed, a
//! take or a delete removes it, and a write that moves a record's expiry
//! past `m:x` extends the index. A listing is a script per 256 entries
//! that reads the index and the records and drops the entries of records
//! gone (expired) meanwhile; an add to an index of more than 64 entries checks its 4
//! oldest the same way. An APPLY that leaves the owner alone runs the
//! commands it ran before (one `HMGET` reads `m:o` and `m:x` with the
//! expiry), save when it moves the expiry past `m:x`, about once a day of a
//! session's activity; TAKE and DELETE read `m:o` once more.
//!
//! **Cluster.** The index is in another slot than the record, so no one
//! script can write both. A write that sets an owner first adds the entry
//! with a script of its own on the index (one round trip more, on logins
//! only), then sends the record script, which refuses to write if it runs
//! more than [`WRITE_WINDOW`] after that add (by the server clocks). A
//! listing reads the index, then the records (concurrently), and answers
//! from the records; an entry whose record is gone or names another index
//! is dropped only if it was added more than [`GRACE`] before the listing
//! began, and only if its score is still the one the listing read.
//!
//! Why no live session loses its entry: a listing drops an entry only when
//! (a) the score `s` it read for it is over [`GRACE`] older than the index
//! server's clock at that read, and (b) the record, read after (a), does
//! not name the index. Every write that sets the owner follows an add of
//! its own. Those whose add came before (a) added at a time `≤ s`, so they
//! ran, if ever, by `s + WRITE_WINDOW` on their own server's clock: while
//! the clocks of the two servers differ by less than `GRACE -
//! WRITE_WINDOW` (five minutes), that is before (a), and the record read
//! in (b) shows their effect (or a later move away). Those whose add came
//! after (a) raised the score (scores only grow, even within one
//! millisecond), and the drop happens only if the score is still `s`: it
//! ran before their add, which puts the entry back, or not at all. No
//! client-side timeout or retry enters the argument: a record script that
//! arrives late refuses itself.
//!
//! The scripts read the server's clock (`TIME`) before they write, which
//! Redis allows since 5.0 (scripts replicate their effects, not their
//! text).
//!
//! A write that moves a record's expiry past its `m:x` stops before
//! writing and names the index; the store extends the index (the same add)
//! and writes again, so the index always outlives its records. On a
//! cluster that is two round trips more, once a day of a session's
//! activity. An add to an index of more than 64 entries checks the 16
//! oldest entries every 8th add, as a listing does, moving those in place
//! to the back.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Conn, RedisStore, bounded};
use crate::error::Error;
use crate::store::{SessionId, owner_digest};

/// How long after its index entry's add a cluster write that sets an owner
/// may still run; later, it refuses to write. Five minutes: the write's own
/// time (its store timeout) plus room for the record's server clock to run
/// ahead of the index's; [`GRACE`] is as much again, so skews up to five
/// minutes either way neither refuse logins nor let a drop race a write.
pub(super) const WRITE_WINDOW: Duration = Duration::from_secs(300);

/// How old an index entry of a cluster must be before a listing may drop
/// it for a record that does not name its owner: [`WRITE_WINDOW`] and as
/// much again, so that clocks of the cluster's servers up to five minutes
/// apart still cannot make a drop race a write.
pub(super) const GRACE: Duration = Duration::from_secs(600);

/// Above this many entries, an add to a cluster index is followed, every
/// [`PRUNE_EVERY`]th time, by a check of its [`PRUNE_BATCH`] oldest.
const PRUNE_AT: u64 = 64;
const PRUNE_EVERY: u64 = 8;
const PRUNE_BATCH: usize = 16;

/// A record's fields, as `HGETALL` returns them.
pub(super) type Fields = HashMap<String, Vec<u8>>;

/// The Lua every script of the index shares.
pub(super) const INDEX_LUA: &str = r"
local function int(x) return string.format('%.0f', x) end

local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Adds `id` to the index `key`, scored above any earlier score of it (so a
-- listing's conditional drop never takes an entry added again since), and
-- keeps the index a day past `expires` (s), plus a second for PTTL and
-- TIME reading the clock apart. Returns the server's time (ms) and the
-- `m:x` the entry's record may count on.
local function index_add(key, id, expires)
  local now = server_ms()
  local last = tonumber(redis.call('ZSCORE', key, id))
  redis.call('ZADD', key, int(math.max(now, (last or 0) + 1)), id)
  local lives = tonumber(expires) + 86400
  local ttl = redis.call('PTTL', key)
  if ttl < 0 or now + ttl < (lives + 1) * 1000 then
    redis.call('EXPIREAT', key, int(lives + 1))
  end
  return now, lives
end
";

/// The Lua the record scripts (CREATE, APPLY, TAKE, DELETE) share, after
/// [`INDEX_LUA`]. Their `ARGV[3]` is the key prefix, `ARGV[4]` the session
/// id, `ARGV[5]` `here` when the script keeps the index (one server), else
/// the digest of the index the caller added the session to before the
/// write ('' for none: a cluster, where the index is in another slot).
/// CREATE and APPLY add `ARGV[6]`, the owner change ('-' none, '' removed,
/// else the new owner's digest, whose index is `KEYS[2]` on one server),
/// `ARGV[7]`, the time (ms) after which the write is refused ('' for none),
/// and `ARGV[8]`, the `m:x` the caller's index entry gives.
pub(super) const RECORD_INDEX_LUA: &str = r"
local function index_of(digest) return ARGV[3] .. 'owner:' .. digest end

-- One server: once the index `key` of the owner `digest` holds over 64
-- entries, checks its four oldest: those whose record is gone or names
-- another owner go, the others move to the back. Run on every add, it
-- keeps the entries of expired sessions from piling up. The back is past
-- the last entry, never below it: scores only grow, so a paged listing's
-- cursor never passes an entry it has not read (with a clock stepped
-- back, the server's time is below the entries').
local function index_prune(key, digest)
  if redis.call('ZCARD', key) <= 64 then return end
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local back = int(math.max(server_ms(), tonumber(last[2]) + 1))
  for _, id in ipairs(redis.call('ZRANGE', key, 0, 3)) do
    if redis.call('HGET', ARGV[3] .. id, 'm:o') == digest then
      redis.call('ZADD', key, back, id)
    else
      redis.call('ZREM', key, id)
    end
  end
end

-- One server: the record `key`, about to go, leaves its owner's index.
local function unindex(key)
  if ARGV[5] ~= 'here' then return end
  local owner = redis.call('HGET', key, 'm:o')
  if owner then redis.call('ZREM', index_of(owner), ARGV[4]) end
end

-- Whether the write runs too late after the index entry the caller added
-- for it: a listing may have dropped the entry by now.
local function late()
  return ARGV[7] ~= '' and server_ms() > tonumber(ARGV[7])
end

-- Before an APPLY that leaves the owner alone: the record `key` (of the
-- index `owner`, sure to live until `lives`) must not outlive its index
-- once it expires at `expires`. One server extends the index here; on a
-- cluster, the digest is returned for the caller to extend the index and
-- write again (ARGV[5] then names it and ARGV[8] gives the new `m:x`).
local function keep_index(key, owner, lives, expires)
  if ARGV[6] ~= '-' or not owner then return end
  if ARGV[5] == owner then
    redis.call('HSET', key, 'm:x', ARGV[8])
  elseif not lives or tonumber(lives) < tonumber(expires) then
    if ARGV[5] ~= 'here' then return owner end
    local _, extended = index_add(index_of(owner), ARGV[4], expires)
    redis.call('HSET', key, 'm:x', int(extended))
  end
end

-- After CREATE or APPLY wrote the record `key` (of the index `old` before,
-- false for none), expiring at `expires`: records the owner change, and on
-- one server moves the session's entry to the new owner's index.
local function own(key, old, expires)
  local owner = ARGV[6]
  if owner == '-' or (owner == '' and not old) then return end
  local here = ARGV[5] == 'here'
  if here and old and old ~= owner then
    redis.call('ZREM', index_of(old), ARGV[4])
  end
  if owner == '' then
    redis.call('HDEL', key, 'm:o', 'm:x')
    return
  end
  local lives = ARGV[8]
  if here then
    local _
    _, lives = index_add(KEYS[2], ARGV[4], expires)
    lives = int(lives)
  end
  redis.call('HSET', key, 'm:o', owner, 'm:x', lives)
  -- Only now that the record names the index: the new entry may be among
  -- the oldest the prune checks (entries added in the same millisecond, a
  -- clock stepped back), and must pass the check.
  if here then index_prune(KEYS[2], owner) end
end
";

/// Cluster: adds a session to an index before the write that sets its
/// owner, or makes the index outlive a record's new expiry. ARGV: the
/// session id, the record's expiry. Returns the server's time (ms), the
/// `m:x` for the record, and the index's size.
const INDEX_ADD: &str = r"
local now, lives = index_add(KEYS[1], ARGV[1], ARGV[2])
return {now, lives, redis.call('ZCARD', KEYS[1])}
";

/// Cluster: the server's time (ms) and the index's entries with their
/// scores, oldest first, up to the rank `ARGV[1]` (-1 for all).
const INDEX_READ: &str = r"
return {server_ms(), redis.call('ZRANGE', KEYS[1], 0, ARGV[1], 'WITHSCORES')}
";

/// Cluster: what a check decided, entry by entry, applied only to entries
/// whose score is still the one read: ARGV holds triples of session id,
/// score read, and `drop` (the entry goes) or `keep` (it moves to the
/// back).
const INDEX_SETTLE: &str = r"
local now = server_ms()
for i = 1, #ARGV, 3 do
  local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]))
  if score and score == tonumber(ARGV[i + 1]) then
    if ARGV[i + 2] == 'drop' then
      redis.call('ZREM', KEYS[1], ARGV[i])
    elseif now > score then
      redis.call('ZADD', KEYS[1], int(now), ARGV[i])
    end
  end
end
return 0
";

/// One server, one page of a listing: the records of the index `KEYS[1]`
/// (the digest `ARGV[2]`, records under the key prefix `ARGV[1]`) after
/// the cursor (score `ARGV[3]`, id `ARGV[4]`, '' for the start: entries
/// come in score order, ties in id order), at most `ARGV[5]` of them, as
/// pairs of session id and fields; entries whose record is gone (expired)
/// or names another index go. Returns the page, the cursor after it, and 1
/// when the index ends there. A page at a time, so that a long list never
/// holds Redis for long; an entry's score only grows, so an entry moved to
/// the back between pages is met again later, never skipped.
const OWNED: &str = r"
-- Whether the id `a` comes after `b` in the order the sorted set gives
-- ties: byte by byte. Lua's `>` on strings asks strcoll, which follows
-- the server's locale (Redis sets LC_COLLATE from its environment): under
-- en_US.UTF-8 'aa' < 'Ab', where the set puts 'Ab' first.
local function after(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end

local first, cursor_score, cursor_id = ARGV[4] == '', tonumber(ARGV[3]), ARGV[4]
local page = tonumber(ARGV[5])
local listed, gone = {}, {}
local seen, offset, done = 0, 0, 0
local last_score, last_id = ARGV[3], cursor_id
while seen < page do
  local batch = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[3], '+inf', 'WITHSCORES', 'LIMIT', offset, 128)
  if #batch == 0 then done = 1 break end
  offset = offset + #batch / 2
  for i = 1, #batch, 2 do
    local id, score = batch[i], tonumber(batch[i + 1])
    -- Every score is at least the cursor's: past it, or a tie after its id.
    if first or score > cursor_score or after(id, cursor_id) then
      local key = ARGV[1] .. id
      if redis.call('HGET', key, 'm:o') == ARGV[2] then
        listed[#listed + 1] = {id, redis.call('HGETALL', key)}
      else
        gone[#gone + 1] = id
      end
      seen = seen + 1
      last_score, last_id = batch[i + 1], id
      if seen >= page then break end
    end
  end
end
-- After the walk: removing while walking would move the offsets.
for _, id in ipairs(gone) do redis.call('ZREM', KEYS[1], id) end
return {listed, last_score, last_id, done}
";

/// Entries one page of a one-server listing reads.
const OWNED_PAGE: usize = 256;

static INDEX_ADD_SCRIPT: LazyLock<Script> = LazyLock::new(|| index_script(INDEX_ADD));
static INDEX_READ_SCRIPT: LazyLock<Script> = LazyLock::new(|| index_script(INDEX_READ));
static INDEX_SETTLE_SCRIPT: LazyLock<Script> = LazyLock::new(|| index_script(INDEX_SETTLE));
static OWNED_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(OWNED));

fn index_script(body: &str) -> Script {
    Script::new(&[INDEX_LUA, body].concat())
}

/// What a record write (CREATE, APPLY) does to the owner index: its
/// `ARGV[3]` to `ARGV[8]`, and `KEYS[2]`.
pub(super) struct OwnerWrite {
    /// The owner change: `None` leaves the owner alone, `Some(None)`
    /// removes it, `Some(Some(digest))` sets it.
    change: Option<Option<String>>,
    /// Cluster: the index entry added before the write.
    indexed: Option<Indexed>,
}

/// An index entry a cluster write added before it ran.
struct Indexed {
    digest: String,
    /// The server's time (ms) at the add.
    added_ms: u64,
    /// The `m:x` the record may count on.
    lives: u64,
    /// The index's size after the add.
    size: u64,
}

impl RedisStore {
    /// The key of the index of the owner whose digest is `digest`.
    fn index_key(&self, digest: &str) -> String {
        format!("{}owner:{digest}", self.prefix.as_str())
    }

    fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// What a write that makes the record of `id` expire at `expires_at`
    /// does to the owner ([`Changes::owner_change`](crate::store::Changes::owner_change));
    /// on a cluster, an owner being set is added to its index first.
    pub(super) async fn owner_write(
        &self,
        id: &SessionId,
        change: Option<Option<&str>>,
        expires_at: u64,
    ) -> Result<OwnerWrite, Error> {
        let change = change.map(|owner| owner.map(owner_digest));
        let indexed = match &change {
            Some(Some(digest)) if self.is_cluster() => {
                Some(self.index_add(digest, id, expires_at).await?)
            }
            _ => None,
        };
        Ok(OwnerWrite { change, indexed })
    }

    /// Cluster: adds `id` to the index `digest`, which then outlives a
    /// record expiring at `expires_at` (when APPLY asked for it, the
    /// change stays as it was).
    pub(super) async fn reindex(
        &self,
        write: &mut OwnerWrite,
        digest: String,
        id: &SessionId,
        expires_at: u64,
    ) -> Result<(), Error> {
        write.indexed = Some(self.index_add(&digest, id, expires_at).await?);
        Ok(())
    }

    async fn index_add(
        &self,
        digest: &str,
        id: &SessionId,
        expires_at: u64,
    ) -> Result<Indexed, Error> {
        let expires_at = expires_at.to_string();
        let args = [id.as_str().as_bytes(), expires_at.as_bytes()];
        let (added_ms, lives, size): (u64, u64, u64) = self
            .script(&INDEX_ADD_SCRIPT, &[&self.index_key(digest)], &args)
            .await?;
        Ok(Indexed {
            digest: digest.to_owned(),
            added_ms,
            lives,
            size,
        })
    }

    /// The keys (the record's, and on one server the new owner's index)
    /// and `ARGV[3]` to `ARGV[8]` of a record write.
    pub(super) fn owner_args(
        &self,
        id: &SessionId,
        write: &OwnerWrite,
    ) -> (Option<String>, [Vec<u8>; 6]) {
        let here = !self.is_cluster();
        let index = match &write.change {
            Some(Some(digest)) if here => Some(self.index_key(digest)),
            _ => None,
        };
        let mode = match (&write.indexed, here) {
            (_, true) => b"here".to_vec(),
            (Some(indexed), false) => indexed.digest.clone().into_bytes(),
            (None, false) => Vec::new(),
        };
        let change = match &write.change {
            None => b"-".to_vec(),
            Some(None) => Vec::new(),
            Some(Some(digest)) => digest.clone().into_bytes(),
        };
        let (deadline, lives) = match &write.indexed {
            Some(indexed) => (
                (indexed.added_ms + WRITE_WINDOW.as_millis() as u64).to_string(),
                indexed.lives.to_string(),
            ),
            None => (String::new(), String::new()),
        };
        let args = [
            self.prefix.as_str().as_bytes().to_vec(),
            id.as_str().as_bytes().to_vec(),
            mode,
            change,
            deadline.into_bytes(),
            lives.into_bytes(),
        ];
        (index, args)
    }

    /// `ARGV[3]` to `ARGV[5]` of TAKE and DELETE.
    pub(super) fn unindex_args(&self, id: &SessionId) -> [Vec<u8>; 3] {
        let mode: &[u8] = if self.is_cluster() { b"" } else { b"here" };
        [
            self.prefix.as_str().as_bytes().to_vec(),
            id.as_str().as_bytes().to_vec(),
            mode.to_vec(),
        ]
    }

    /// After a cluster write that added to a large index: every
    /// [`PRUNE_EVERY`]th add checks its oldest entries. A failure is only
    /// logged: the write itself succeeded.
    pub(super) async fn after_write(&self, write: &OwnerWrite) {
        let Some(indexed) = &write.indexed else {
            return;
        };
        if indexed.size <= PRUNE_AT || indexed.size % PRUNE_EVERY != 0 {
            return;
        }
        if let Err(error) = self
            .check_entries(&indexed.digest, Some(PRUNE_BATCH), true)
            .await
        {
            tracing::debug!(%error, "pruning an owner index of the session store failed");
        }
    }

    /// The records that name the index of `owner`, with their ids (they
    /// may have expired, or hold another owner's name with the same
    /// digest: the caller checks).
    pub(super) async fn indexed_records(
        &self,
        owner: &str,
    ) -> Result<Vec<(SessionId, Fields)>, Error> {
        let digest = owner_digest(owner);
        if self.is_cluster() {
            return self.check_entries(&digest, None, false).await;
        }
        let index = self.index_key(&digest);
        let page = OWNED_PAGE.to_string();
        let (mut score, mut after) = ("-inf".to_owned(), String::new());
        let mut records: HashMap<String, Fields> = HashMap::new();
        loop {
            let args = [
                self.prefix.as_str().as_bytes(),
                digest.as_bytes(),
                score.as_bytes(),
                after.as_bytes(),
                page.as_bytes(),
            ];
            type Page = (Vec<(String, Fields)>, String, String, u8);
            let (listed, last_score, last_id, done): Page =
                self.script(&OWNED_SCRIPT, &[&index], &args).await?;
            // An entry moved to the back between pages comes twice.
            records.extend(listed);
            if done == 1 {
                break;
            }
            (score, after) = (last_score, last_id);
        }
        Ok((records.into_iter())
            .filter_map(|(id, fields)| Some((SessionId::parse(&id)?, fields)))
            .collect())
    }

    /// Cluster: reads the `oldest` entries of the index `digest` (all for
    /// `None`), then their records, and returns those that name the index.
    /// Entries whose record is gone or names another index are dropped if
    /// they were added over [`GRACE`] before the read (the module docs say
    /// why that is safe); with `bump`, entries found in place move to the
    /// back.
    async fn check_entries(
        &self,
        digest: &str,
        oldest: Option<usize>,
        bump: bool,
    ) -> Result<Vec<(SessionId, Fields)>, Error> {
        let index = self.index_key(digest);
        let last = oldest.map_or(-1, |n| n as i64 - 1).to_string();
        let (read_ms, entries): (u64, Vec<(String, String)>) = self
            .script(&INDEX_READ_SCRIPT, &[&index], &[last.as_bytes()])
            .await?;
        let entries: Vec<(SessionId, String)> = (entries.into_iter())
            .filter_map(|(id, score)| Some((SessionId::parse(&id)?, score)))
            .collect();
        let records = self.records(entries.iter().map(|(id, _)| id)).await?;
        let old_before = read_ms.saturating_sub(GRACE.as_millis() as u64) as f64;
        let mut held = Vec::new();
        let mut settle: Vec<Vec<u8>> = Vec::new();
        for ((id, score), fields) in entries.into_iter().zip(records) {
            let named = fields.get("m:o").is_some_and(|o| o == digest.as_bytes());
            let verdict: &[u8] = if named { b"keep" } else { b"drop" };
            let old = score.parse::<f64>().is_ok_and(|s| s < old_before);
            if (named && bump) || (!named && old) {
                settle.extend([id.as_str().into(), score.into_bytes(), verdict.to_vec()]);
            }
            if named {
                held.push((id, fields));
            }
        }
        if !settle.is_empty() {
            let args: Vec<&[u8]> = settle.iter().map(Vec::as_slice).collect();
            self.script::<i64>(&INDEX_SETTLE_SCRIPT, &[&index], &args)
                .await?;
        }
        Ok(held)
    }

    /// The fields of the records of `ids`, in order, read concurrently (on
    /// a cluster they are in as many slots).
    async fn records(&self, ids: impl Iterator<Item = &SessionId>) -> Result<Vec<Fields>, Error> {
        let mut reads = tokio::task::JoinSet::new();
        for (at, id) in ids.enumerate() {
            let (mut conn, key, timeout) = (self.conn.clone(), self.key(id), self.timeout);
            reads.spawn(async move {
                let mut read = redis::cmd("HGETALL");
                read.arg(key);
                (at, bounded(timeout, read.query_async(&mut conn)).await)
            });
        }
        let mut records = vec![Fields::new(); reads.len()];
        while let Some(read) = reads.join_next().await {
            let (at, fields) = read.map_err(Error::store)?;
            records[at] = fields?;
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CREATE_SCRIPT, create_tail};
    use super::*;
    use crate::store::{OWNER_KEY, Record, SessionStore, now};

    /// The cluster of scripts/test.sh, or `None` (a failure under CI=true).
    async fn cluster() -> Option<RedisStore> {
        let nodes = std::env::var("REDIS_CLUSTER_NODES").unwrap_or_else(|_| {
            "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003".into()
        });
        let nodes: Vec<&str> = nodes.split(',').collect();
        match RedisStore::cluster(&nodes).await {
            Ok(store) => Some(store.prefix(format!("test-late:{}:", std::process::id()))),
            Err(error) => {
                let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
                assert!(!ci, "CI=true and no Redis Cluster at {nodes:?}: {error}");
                eprintln!("SKIPPED: no Redis Cluster at {nodes:?} ({error})");
                None
            }
        }
    }

    /// A listing under way on one server, with the index's scores ahead
    /// of the clock (a clock stepped back): between two pages, sessions it
    /// listed end and a login's prune checks the oldest entries left,
    /// which it has not listed yet. The prune moved them "to the back" at
    /// the server's time, which was below the listing's cursor, so the
    /// listing skipped live sessions.
    #[tokio::test]
    async fn a_prune_between_pages_never_hides_an_entry() {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let store = match RedisStore::connect(&url).await {
            Ok(store) => store.prefix(format!("test-page-prune:{}:", std::process::id())),
            Err(error) => {
                let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
                assert!(!ci, "CI=true and no Redis at {url}: {error}");
                return;
            }
        };
        let owner = format!("pages {}", SessionId::generate().as_str());
        let digest = owner_digest(&owner);
        let index = store.index_key(&digest);
        let mut record = Record::new(Default::default(), false, now(), now() + 600);
        record.data.insert(OWNER_KEY.into(), owner.as_str().into());
        let mut ids = Vec::new();
        for _ in 0..400 {
            let id = SessionId::generate();
            assert!(store.create(&id, &record).await.unwrap());
            ids.push(id);
        }
        // Scores an hour ahead of the server's clock, in the order of ids.
        let later = (now() + 3600) * 1000;
        let mut conn = store.conn.clone();
        for (i, id) in ids.iter().enumerate() {
            let _: i64 = redis::cmd("ZADD")
                .arg(&index)
                .arg(later + i as u64)
                .arg(id.as_str())
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let page = |score: String, after: String| {
            let (store, index, digest) = (&store, &index, &digest);
            async move {
                let args = [
                    store.prefix.as_str().as_bytes(),
                    digest.as_bytes(),
                    score.as_bytes(),
                    after.as_bytes(),
                    b"256",
                ];
                type Page = (Vec<(String, Fields)>, String, String, u8);
                let page: Page = store.script(&OWNED_SCRIPT, &[index], &args).await.unwrap();
                page
            }
        };
        let (first, score, after, _) = page("-inf".into(), String::new()).await;
        assert_eq!(first.len(), 256);
        // Between the pages: the sessions listed end, and a login comes.
        for id in &ids[..256] {
            store.delete(id).await.unwrap();
        }
        let login = SessionId::generate();
        assert!(store.create(&login, &record).await.unwrap());
        let mut rest: Vec<String> = Vec::new();
        let (mut score, mut after) = (score, after);
        loop {
            let (listed, last_score, last_id, done) = page(score, after).await;
            rest.extend(listed.into_iter().map(|(id, _)| id));
            if done == 1 {
                break;
            }
            (score, after) = (last_score, last_id);
        }
        let missed: Vec<&SessionId> = (ids[256..].iter())
            .filter(|id| !rest.iter().any(|listed| listed == id.as_str()))
            .collect();
        for id in ids[256..].iter().chain([&login]) {
            store.delete(id).await.unwrap();
        }
        assert!(missed.is_empty(), "{} live sessions skipped", missed.len());
    }

    /// A cluster write that sets an owner and reaches its server long
    /// after its index entry was added (a request queued behind a slow
    /// server, a client's retry after it gave up) refuses itself: a
    /// listing may have dropped the entry by then, and the session would
    /// be missing from its owner's list.
    #[tokio::test]
    async fn a_late_cluster_write_refuses_itself() {
        let Some(store) = cluster().await else {
            return;
        };
        let (id, owner) = (SessionId::generate(), "late {owner}");
        let mut record = Record::new(Default::default(), false, now(), now() + 60);
        record.data.insert(OWNER_KEY.into(), owner.into());
        let late = |mut write: OwnerWrite| {
            let indexed = write.indexed.as_mut().expect("a cluster indexes first");
            indexed.added_ms -= WRITE_WINDOW.as_millis() as u64 + 1000;
            write
        };
        let write = store.owner_write(&id, Some(Some(owner)), record.expires_at);
        let write = late(write.await.unwrap());
        let tail = create_tail(&record);
        let refused = store
            .write_record(&CREATE_SCRIPT, &id, write, record.expires_at, &tail)
            .await;
        assert_eq!(
            refused.unwrap_err().kind(),
            crate::ErrorKind::Store,
            "a late write is an error"
        );
        assert_eq!(
            store.load(&id, now()).await.unwrap(),
            None,
            "nothing written"
        );

        let write = store.owner_write(&id, Some(Some(owner)), record.expires_at);
        let written = store
            .write_record(
                &CREATE_SCRIPT,
                &id,
                write.await.unwrap(),
                record.expires_at,
                &tail,
            )
            .await;
        assert!(written.unwrap(), "in time, the same write goes");
        let owned = store.owned(owner, now()).await.unwrap();
        assert_eq!(owned.len(), 1);
        assert_eq!(owned[0].0, id);
        store.delete(&id).await.unwrap();
    }
}
