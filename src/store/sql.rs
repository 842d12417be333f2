//! `SqlStore`: sessions in PostgreSQL, MySQL/MariaDB or SQLite, via sqlx.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use super::net::bounded;
use super::{Changes, Record, SessionId, SessionStore};
use crate::data::SessionData;
use crate::error::Error;

/// The default bound on every database call.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sessions in a SQL table, one row per session: `id`, `data` (the JSON
/// object), `permanent`, `created_at`, `expires_at` (seconds since the
/// epoch, indexed for [`delete_expired`](SessionStore::delete_expired)),
/// and `owner` (the session's owner as [`Record::owner`] reads it from
/// `data`, or `NULL`; indexed for [`owned`](SessionStore::owned)).
///
/// Every write that sets or removes the owner sets the column in the same
/// statement (or transaction) as the data; other writes leave it alone.
/// Owners are at most [`MAX_OWNER_CHARS`](Self::MAX_OWNER_CHARS) long.
///
/// The table is created by [`migrate`](Self::migrate), which you call,
/// never behind your back. How `apply` stays atomic per key:
///
/// | database | `apply` | round trips per save |
/// | --- | --- | --- |
/// | PostgreSQL | one `UPDATE`: the row's members (`json_each`) less the removed and set keys, plus the set ones, joined again (`json_object_agg`), under the row lock the statement takes; values keep their text | 1 |
/// | MySQL / MariaDB | one `UPDATE`: `JSON_REMOVE` and `JSON_SET` with a bound path per key, under the row lock | 1 |
/// | SQLite | `BEGIN IMMEDIATE` transaction (the database's write lock), `SELECT`, `UPDATE` | in-process |
///
/// `data` is stored as text. PostgreSQL's JSON types refuse strings holding
/// U+0000, which a session may legitimately hold, so on PostgreSQL the
/// text is kept free of it: U+10FFFF (a noncharacter) stands before `0`
/// for U+0000 and doubles itself, and loads undo it. Escaped rows carry a
/// marker member (U+10FFFF alone, which loads remove), so a row an earlier
/// version wrote is never unescaped; such a row is saved through a
/// transaction once, and comes out in the current form.
///
/// A load is one `SELECT` by primary key. Expired rows are never returned;
/// run [`spawn_cleanup`](super::spawn_cleanup) to delete them. On
/// PostgreSQL, `create` is one upsert (taking an id whose row expired) and
/// `take` one `DELETE ... RETURNING`; elsewhere they are two statements and
/// a transaction.
///
/// Connections come from the sqlx pool you pass (size it for your
/// concurrency), or one [`connect`](Self::connect) builds with sqlx's
/// defaults (10 connections, 30 s to acquire one). Every call is bounded by
/// [`timeout`](Self::timeout) (5 s by default).
#[derive(Clone)]
pub struct SqlStore {
    pub(super) pool: Pool,
    pub(super) sql: Sql,
    pub(super) timeout: Duration,
    /// The tag of this store value's writes on PostgreSQL's change
    /// channel (0: owned by no cache).
    #[cfg_attr(not(feature = "postgres-store"), allow(dead_code))]
    origin: u64,
}

#[derive(Clone)]
pub(super) enum Pool {
    #[cfg(feature = "postgres-store")]
    Postgres(sqlx::PgPool),
    #[cfg(feature = "mysql-store")]
    MySql(sqlx::MySqlPool),
    #[cfg(feature = "sqlite-store")]
    Sqlite(sqlx::SqlitePool),
}

/// The statements for one table, built once.
#[derive(Clone)]
pub(super) struct Sql {
    pub(super) table: String,
    load: String,
    #[cfg_attr(
        not(any(feature = "mysql-store", feature = "sqlite-store")),
        allow(dead_code)
    )]
    clear_expired_id: String,
    #[cfg_attr(
        not(any(feature = "mysql-store", feature = "sqlite-store")),
        allow(dead_code)
    )]
    insert: String,
    lock: String,
    #[cfg_attr(
        not(any(feature = "mysql-store", feature = "sqlite-store")),
        allow(dead_code)
    )]
    take: String,
    update: String,
    /// `update` that also sets the owner column, for the saves that set or
    /// remove the owner; the others leave the column out, and with it the
    /// owner index (SQLite rewrites the entries of every index on a column
    /// its `SET` names, whatever the value).
    update_owner: String,
    #[cfg_attr(
        not(any(feature = "mysql-store", feature = "sqlite-store")),
        allow(dead_code)
    )]
    delete: String,
    delete_expired: String,
    /// The live rows of one owner, by the owner column's index.
    owned: String,
    /// PostgreSQL's save: one `UPDATE` merging the changes member by
    /// member (`json_each`, `json_object_agg`) under the row lock the
    /// statement takes. `json`, not `jsonb`: it keeps each value's text as
    /// written (`jsonb` would spell `1e308` with 309 digits).
    #[cfg_attr(not(feature = "postgres-store"), allow(dead_code))]
    apply_json: String,
    /// PostgreSQL's create: one upsert that takes the id when it is free
    /// or its row expired.
    #[cfg_attr(not(feature = "postgres-store"), allow(dead_code))]
    create_upsert: String,
    /// PostgreSQL's take: one `DELETE ... RETURNING`.
    #[cfg_attr(not(feature = "postgres-store"), allow(dead_code))]
    take_returning: String,
    /// PostgreSQL's delete, which notifies when it removed a row.
    #[cfg_attr(not(feature = "postgres-store"), allow(dead_code))]
    delete_notify: String,
    /// PostgreSQL's change channel, `{table}_changes`: every write above
    /// notifies it with the id, in the same statement, so that a coherent
    /// cache on any process hears of it when the write commits.
    #[cfg_attr(not(feature = "postgres-store"), allow(dead_code))]
    channel: String,
    /// How a save's transaction starts: SQLite takes its write lock at
    /// once (`IMMEDIATE`), so two saves never deadlock upgrading a read lock.
    begin: &'static str,
    /// Whether the stored text is kept free of U+0000 (PostgreSQL).
    nul_free: bool,
}

/// Which SQL dialect. (Builds without every SQL feature leave variants
/// unused.)
#[derive(Clone, Copy, PartialEq)]
#[cfg_attr(
    not(all(
        feature = "postgres-store",
        feature = "mysql-store",
        feature = "sqlite-store"
    )),
    allow(dead_code)
)]
enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

impl Sql {
    fn new(table: &str, dialect: Dialect) -> Self {
        let p = |n: usize| {
            if dialect == Dialect::Postgres {
                format!("${n}")
            } else {
                "?".to_owned()
            }
        };
        let for_update = if dialect == Dialect::Sqlite {
            ""
        } else {
            " FOR UPDATE"
        };
        Self {
            table: table.to_owned(),
            load: format!(
                "SELECT data, permanent, created_at, expires_at FROM {table} WHERE id = {} AND expires_at > {}",
                p(1),
                p(2)
            ),
            clear_expired_id: format!(
                "DELETE FROM {table} WHERE id = {} AND expires_at <= {}",
                p(1),
                p(2)
            ),
            insert: format!(
                "INSERT INTO {table} (id, data, permanent, created_at, expires_at, owner) VALUES ({}, {}, {}, {}, {}, {})",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5),
                p(6)
            ),
            lock: format!(
                "SELECT data, permanent FROM {table} WHERE id = {} AND expires_at > {}{for_update}",
                p(1),
                p(2)
            ),
            take: format!(
                "SELECT data, permanent, created_at, expires_at FROM {table} WHERE id = {} AND expires_at > {}{for_update}",
                p(1),
                p(2)
            ),
            update: format!(
                "UPDATE {table} SET data = {}, permanent = {}, expires_at = {} WHERE id = {}",
                p(1),
                p(2),
                p(3),
                p(4)
            ),
            update_owner: format!(
                "UPDATE {table} SET data = {}, permanent = {}, expires_at = {}, owner = {} WHERE id = {}",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5)
            ),
            delete: format!("DELETE FROM {table} WHERE id = {}", p(1)),
            delete_expired: format!("DELETE FROM {table} WHERE expires_at <= {}", p(1)),
            owned: format!(
                "SELECT {id}, data, permanent, created_at, expires_at FROM {table} WHERE owner = {} AND expires_at > {}",
                p(1),
                p(2),
                // sqlx reads a column of a binary collation (MySQL's id is
                // ascii_bin) as bytes.
                id = if dialect == Dialect::MySql {
                    "CAST(id AS CHAR)"
                } else {
                    "id"
                }
            ),
            create_upsert: format!(
                "WITH created AS (INSERT INTO {table} (id, data, permanent, created_at, expires_at, owner) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data, \
                 permanent = EXCLUDED.permanent, created_at = EXCLUDED.created_at, \
                 expires_at = EXCLUDED.expires_at, owner = EXCLUDED.owner \
                 WHERE {table}.expires_at <= $4 RETURNING 1) \
                 SELECT pg_notify($7, $8)::text FROM created"
            ),
            take_returning: format!(
                "WITH taken AS (DELETE FROM {table} WHERE id = $1 \
                 RETURNING data, permanent, created_at, expires_at) \
                 SELECT data, permanent, created_at, expires_at FROM taken \
                 WHERE pg_notify($2, $3)::text = ''"
            ),
            delete_notify: format!(
                "WITH deleted AS (DELETE FROM {table} WHERE id = $1 RETURNING 1) \
                 SELECT pg_notify($2, $3)::text FROM deleted"
            ),
            channel: derived_name(table, "changes"),
            apply_json: format!(
                "WITH applied AS (UPDATE {table} SET data = (SELECT COALESCE(json_object_agg(merged.k, merged.v), '{{}}'::json)::text \
                 FROM (SELECT old.key AS k, old.value AS v \
                 FROM json_each(CASE WHEN $1 THEN '{{}}'::json ELSE {table}.data::json END) AS old \
                 WHERE NOT (old.key = ANY($2::text[])) \
                 UNION ALL SELECT new.key, new.value FROM json_each($3::json) AS new) AS merged), \
                 permanent = COALESCE($4, permanent), expires_at = $5, \
                 owner = CASE WHEN $11 THEN $12 ELSE owner END \
                 WHERE id = $6 AND expires_at > $7 AND (data::json -> $8) IS NOT NULL RETURNING 1) \
                 SELECT pg_notify($9, $10)::text FROM applied"
            ),
            begin: if dialect == Dialect::Sqlite {
                "BEGIN IMMEDIATE"
            } else {
                "BEGIN"
            },
            nul_free: dialect == Dialect::Postgres,
        }
    }
}

impl fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match &self.pool {
            #[cfg(feature = "postgres-store")]
            Pool::Postgres(_) => "postgres",
            #[cfg(feature = "mysql-store")]
            Pool::MySql(_) => "mysql",
            #[cfg(feature = "sqlite-store")]
            Pool::Sqlite(_) => "sqlite",
        };
        f.debug_struct("SqlStore")
            .field("backend", &backend)
            .field("table", &self.sql.table)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// PostgreSQL's JSON types refuse U+0000 in a string, and a session may
/// hold one; so that a save can be one `json` statement, the stored text
/// keeps it out by an escape: U+10FFFF, a noncharacter no text needs,
/// stands before `0` for U+0000 and doubles itself. Other databases store
/// the JSON as it is.
mod nul_free {
    use serde_json::{Map, Value};

    const MARK: char = '\u{10FFFF}';

    /// The member that marks a document written with the escape: the mark
    /// alone, a key no escaped key can be (a key's own mark is doubled).
    pub(super) const MARKER: &str = "\u{10FFFF}";

    /// Whether any string of `map`, keys included, needs the escape.
    pub(super) fn needed(map: &Map<String, Value>) -> bool {
        fn any(value: &Value) -> bool {
            match value {
                Value::String(s) => s.contains(['\0', MARK]),
                Value::Array(items) => items.iter().any(any),
                Value::Object(map) => needed(map),
                _ => false,
            }
        }
        map.iter().any(|(k, v)| k.contains(['\0', MARK]) || any(v))
    }

    pub(super) fn escape(map: &Map<String, Value>) -> Map<String, Value> {
        map_object(map, &|s| s.contains(['\0', MARK]).then(|| escape_str(s)))
    }

    pub(super) fn unescape(map: &Map<String, Value>) -> Map<String, Value> {
        map_object(map, &|s| s.contains(MARK).then(|| unescape_str(s)))
    }

    pub(super) fn escape_str(s: &str) -> String {
        let mut out = String::with_capacity(s.len() + 4);
        for c in s.chars() {
            match c {
                '\0' => out.extend([MARK, '0']),
                MARK => out.extend([MARK, MARK]),
                c => out.push(c),
            }
        }
        out
    }

    fn unescape_str(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match (c, c == MARK) {
                (_, true) => match chars.next() {
                    Some('0') => out.push('\0'),
                    Some(MARK) => out.push(MARK),
                    // Not written by the escape: kept as it is.
                    Some(other) => out.extend([MARK, other]),
                    None => out.push(MARK),
                },
                (c, false) => out.push(c),
            }
        }
        out
    }

    /// `value` with every string (keys included) `f` rewrites rewritten.
    fn map_strings(value: &Value, f: &impl Fn(&str) -> Option<String>) -> Value {
        match value {
            Value::String(s) => Value::String(f(s).unwrap_or_else(|| s.clone())),
            Value::Array(items) => Value::Array(items.iter().map(|v| map_strings(v, f)).collect()),
            Value::Object(map) => Value::Object(map_object(map, f)),
            other => other.clone(),
        }
    }

    fn map_object(
        map: &Map<String, Value>,
        f: &impl Fn(&str) -> Option<String>,
    ) -> Map<String, Value> {
        map.iter()
            .map(|(k, v)| (f(k).unwrap_or_else(|| k.clone()), map_strings(v, f)))
            .collect()
    }
}

impl Sql {
    /// The text stored for `data`. On PostgreSQL it is escaped and carries
    /// the escape's marker member, so that rows an earlier version wrote
    /// (raw, unmarked) are never unescaped.
    fn write_data(&self, data: &SessionData) -> String {
        let json =
            |data: &SessionData| serde_json::to_string(data).expect("a JSON map always serializes");
        if !self.nul_free {
            return json(data);
        }
        // Escaped only when a string needs it; the marker is written ahead
        // of the members rather than inserted into a copy of the map.
        let text = if nul_free::needed(data) {
            json(&nul_free::escape(data))
        } else {
            json(data)
        };
        let members = &text[1..text.len() - 1];
        let separator = if members.is_empty() { "" } else { "," };
        format!("{{\"{}\":1{separator}{members}}}", nul_free::MARKER)
    }

    /// A row's data; a corrupt row is a store error, not an empty session.
    fn read_data(&self, text: &str) -> Result<SessionData, serde_json::Error> {
        let mut data: SessionData = serde_json::from_str(text)?;
        if self.nul_free && data.remove(nul_free::MARKER).is_some() && text.contains('\u{10FFFF}') {
            return Ok(nul_free::unescape(&data));
        }
        Ok(data)
    }
}

/// A whole row: data, permanent, created_at, expires_at.
type Row = (String, bool, i64, i64);

impl Sql {
    fn record_from_row(&self, row: Option<Row>) -> Result<Option<Record>, Error> {
        row.map(|row| self.record(row)).transpose()
    }

    fn record(&self, (data, permanent, created_at, expires_at): Row) -> Result<Record, Error> {
        Ok(Record::new(
            self.read_data(&data).map_err(Error::store)?,
            permanent,
            to_u64(created_at),
            to_u64(expires_at),
        ))
    }
}

/// The owner column: kept beside `data` by every write, so that
/// [`owned`](SessionStore::owned) is one indexed `SELECT`.
impl Sql {
    /// The column's text for `owner`: the owner as it is, except that on
    /// PostgreSQL, whose text types refuse U+0000 too, a string holding it
    /// (or the mark) takes the escape `data` takes; equal owners still
    /// have equal text.
    fn owner_text<'a>(&self, owner: &'a str) -> Cow<'a, str> {
        if self.nul_free && owner.contains(['\0', '\u{10FFFF}']) {
            Cow::Owned(nul_free::escape_str(owner))
        } else {
            Cow::Borrowed(owner)
        }
    }

    /// The column's text for a write that sets `owner`; an owner longer
    /// than [`SqlStore::MAX_OWNER_CHARS`] is refused, never cut short.
    fn owner_written<'a>(&self, owner: &'a str) -> Result<Cow<'a, str>, Error> {
        let chars = owner.chars().count();
        if chars > SqlStore::MAX_OWNER_CHARS {
            return Err(Error::store(format!(
                "SqlStore keeps owners of up to {} characters; this one has {chars}",
                SqlStore::MAX_OWNER_CHARS
            )));
        }
        Ok(self.owner_text(owner))
    }

    /// What a save does to the column, as [`Changes::owner_change`] says:
    /// `None` leaves it, `Some(None)` empties it, `Some(Some(text))` sets it.
    fn owner_change<'a>(
        &self,
        changes: &'a Changes,
    ) -> Result<Option<Option<Cow<'a, str>>>, Error> {
        changes
            .owner_change()
            .map(|owner| owner.map(|owner| self.owner_written(owner)).transpose())
            .transpose()
    }
}

#[cfg(any(feature = "mysql-store", feature = "sqlite-store"))]
fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

/// The same body for every backend, on its own pool type (`Pool` must be
/// in scope where it expands).
macro_rules! by_backend {
    ($self:ident, $pool:ident => $body:expr) => {
        match &$self.pool {
            #[cfg(feature = "postgres-store")]
            Pool::Postgres($pool) => $body,
            #[cfg(feature = "mysql-store")]
            Pool::MySql($pool) => $body,
            #[cfg(feature = "sqlite-store")]
            Pool::Sqlite($pool) => $body,
        }
    };
}
#[cfg(feature = "flask-session")]
pub(super) use by_backend;

impl SqlStore {
    /// The longest owner ([`Session::set_owner`](crate::Session::set_owner))
    /// a `SqlStore` keeps, in characters (Unicode scalar values): MySQL's
    /// indexed `owner` column is a `VARCHAR(255)` (in `utf8mb4`, within
    /// InnoDB's index key limit), and the limit is the same on every
    /// database, so that a table's sessions move between them.
    ///
    /// A write that would store a longer owner fails with
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) and changes nothing:
    /// an owner is never cut short, which could make two owners one.
    pub const MAX_OWNER_CHARS: usize = crate::MAX_OWNER_CHARS;

    /// Connects by URL: `postgres://…`, `mysql://…` (MariaDB too) or
    /// `sqlite:PATH` (the file is created if missing), each when its
    /// feature is on. Call [`migrate`](Self::migrate) before first use.
    ///
    /// # Errors
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when the URL names no
    /// enabled backend or the database cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        #[cfg(feature = "postgres-store")]
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = bounded(DEFAULT_TIMEOUT, sqlx::PgPool::connect(url)).await?;
            return Ok(Self::postgres(pool));
        }
        #[cfg(feature = "mysql-store")]
        if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            let url = url.replacen("mariadb://", "mysql://", 1);
            let pool = bounded(DEFAULT_TIMEOUT, sqlx::MySqlPool::connect(&url)).await?;
            return Ok(Self::mysql(pool));
        }
        #[cfg(feature = "sqlite-store")]
        if url.starts_with("sqlite:") {
            use std::str::FromStr;
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .map_err(Error::store)?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(DEFAULT_TIMEOUT);
            let pool = bounded(DEFAULT_TIMEOUT, sqlx::SqlitePool::connect_with(options)).await?;
            return Ok(Self::sqlite(pool));
        }
        Err(Error::store(format!(
            "no enabled SQL store for this URL scheme: {}",
            url.split(':').next().unwrap_or("")
        )))
    }

    /// A store on a PostgreSQL pool.
    #[cfg(feature = "postgres-store")]
    pub fn postgres(pool: sqlx::PgPool) -> Self {
        Self::with_pool(Pool::Postgres(pool))
    }

    /// A store on a MySQL or MariaDB pool.
    #[cfg(feature = "mysql-store")]
    pub fn mysql(pool: sqlx::MySqlPool) -> Self {
        Self::with_pool(Pool::MySql(pool))
    }

    /// A store on a SQLite pool: the embedded persistent option.
    #[cfg(feature = "sqlite-store")]
    pub fn sqlite(pool: sqlx::SqlitePool) -> Self {
        Self::with_pool(Pool::Sqlite(pool))
    }

    fn with_pool(pool: Pool) -> Self {
        Self {
            sql: Sql::new("sessions", dialect(&pool)),
            pool,
            timeout: DEFAULT_TIMEOUT,
            origin: 0,
        }
    }

    /// The table's name (default `sessions`).
    ///
    /// # Panics
    /// When `table` is not a plain SQL identifier (letters, digits and `_`,
    /// not starting with a digit, at most 63 characters): it is written
    /// into the statements, so nothing else is accepted.
    #[must_use]
    pub fn table(mut self, table: &str) -> Self {
        let valid = !table.is_empty()
            && table.len() <= 63
            && !table.as_bytes()[0].is_ascii_digit()
            && table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        assert!(valid, "{table:?} is not a plain SQL identifier");
        self.sql = Sql::new(table, dialect(&self.pool));
        self
    }

    /// The longest a database call may take before it fails (default 5 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Creates the table and its indexes (expiry, owner) if they do not
    /// exist, and gives a table an earlier version made the owner column
    /// and its index. Call it once at start-up (or run the same statements
    /// in your own migrations: `migration_sql` returns them).
    ///
    /// Running it again changes nothing, and processes that start at once
    /// take turns: the migration holds a lock of the table's own (on
    /// PostgreSQL an advisory lock, in one transaction; on MySQL a named
    /// lock, `GET_LOCK`; on SQLite the database's write lock, in one
    /// transaction). It asks the catalog (`pg_attribute`,
    /// `information_schema`, `pragma_table_info`) before it adds the owner
    /// column or its MySQL index, rather than run `ALTER TABLE ... IF NOT
    /// EXISTS` at every start: `ALTER TABLE` waits for the table's
    /// strongest lock even when there is nothing to add, and every session
    /// query would queue behind it while a long transaction reads the
    /// table.
    ///
    /// Each statement is bounded by [`timeout`](Self::timeout), on the
    /// server too where it can be (PostgreSQL's `lock_timeout` and
    /// `statement_timeout`, MySQL's `lock_wait_timeout`), so that a
    /// statement given up on does not hold the table. Indexing the owner
    /// column of a large table takes a while (on MySQL, seconds per
    /// million rows): give `migrate` a longer timeout for it
    /// (`store.clone().timeout(..).migrate()`).
    ///
    /// # Errors
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when the statements fail.
    ///
    /// On MySQL/MariaDB it also checks that an existing table's `data`
    /// column is `utf8mb4` (a table an earlier version created on a
    /// `latin1` database is not), and fails with the statement that fixes
    /// it, before changing anything, rather than let sessions be refused
    /// or mangled.
    pub async fn migrate(&self) -> Result<(), Error> {
        match &self.pool {
            // DDL is transactional here: the migration commits as one, under
            // an advisory lock of the table's own.
            #[cfg(feature = "postgres-store")]
            Pool::Postgres(pool) => {
                let mut tx = bounded(self.timeout, pool.begin()).await?;
                let bound = format!("{}ms", self.timeout.as_millis().max(1));
                let server_bound = sqlx::query(
                    "SELECT set_config('lock_timeout', $1, true), \
                     set_config('statement_timeout', $1, true)",
                )
                .bind(bound);
                bounded(self.timeout, server_bound.execute(&mut *tx)).await?;
                let lock = sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(migration_lock_key(&self.sql.table));
                bounded(self.timeout, lock.execute(&mut *tx)).await?;
                self.migration_steps::<sqlx::Postgres>(&mut *tx).await?;
                bounded(self.timeout, tx.commit()).await
            }
            // MySQL commits every DDL statement: the lock is a connection's,
            // one of the migration's own, which releases it when it closes
            // (even if this future is dropped halfway).
            #[cfg(feature = "mysql-store")]
            Pool::MySql(pool) => {
                self.check_mysql_charset(pool).await?;
                let mut connection = bounded(self.timeout, pool.acquire()).await?.detach();
                let server_bound = sqlx::query("SET SESSION lock_wait_timeout = ?")
                    .bind(self.timeout.as_secs().max(1));
                bounded(self.timeout, server_bound.execute(&mut connection)).await?;
                // The server stops waiting after the timeout (and answers
                // 0); the call's own bound leaves it the time to say so.
                let lock = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
                    .bind(derived_name(&self.sql.table, "migration"))
                    .bind(self.timeout.as_secs().max(1));
                let locked: Option<i64> =
                    bounded(self.timeout * 2, lock.fetch_one(&mut connection)).await?;
                let done = match locked {
                    Some(1) => self.migration_steps::<sqlx::MySql>(&mut connection).await,
                    _ => Err(Error::store(
                        "another process's migration of the table held its lock past the timeout",
                    )),
                };
                let _ = bounded(self.timeout, sqlx::Connection::close(connection)).await;
                done
            }
            // One transaction, holding the database's write lock from the start.
            #[cfg(feature = "sqlite-store")]
            Pool::Sqlite(pool) => {
                let mut tx = bounded(self.timeout, pool.begin_with("BEGIN IMMEDIATE")).await?;
                self.migration_steps::<sqlx::Sqlite>(&mut *tx).await?;
                bounded(self.timeout, tx.commit()).await
            }
        }
    }

    /// The migration, on a connection that holds the table's migration
    /// lock: the table, then what a table made before owners lacks, then
    /// the indexes (the owner's needs its column).
    async fn migration_steps<DB>(&self, connection: &mut DB::Connection) -> Result<(), Error>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
        for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'r> (i64,): sqlx::FromRow<'r, DB::Row>,
    {
        let mut statements = self.migration_sql().into_iter();
        if let Some(create_table) = statements.next() {
            let create_table = sqlx::query(&create_table).execute(&mut *connection);
            bounded(self.timeout, create_table).await?;
        }
        for (count, add) in self.owner_upgrade_sql() {
            let count = sqlx::query_scalar(count).bind(self.sql.table.as_str());
            let present: i64 = bounded(self.timeout, count.fetch_one(&mut *connection)).await?;
            if present == 0 {
                bounded(self.timeout, sqlx::query(&add).execute(&mut *connection)).await?;
            }
        }
        for statement in statements {
            bounded(
                self.timeout,
                sqlx::query(&statement).execute(&mut *connection),
            )
            .await?;
        }
        Ok(())
    }

    /// What a table made before owners needs: each a query counting what
    /// is there (the table's name bound) and the statement that adds it
    /// when nothing is.
    fn owner_upgrade_sql(&self) -> Vec<(&'static str, String)> {
        let t = &self.sql.table;
        match &self.pool {
            // to_regclass finds the table as the statements do, by the
            // search path.
            #[cfg(feature = "postgres-store")]
            Pool::Postgres(_) => vec![(
                "SELECT COUNT(*) FROM pg_attribute \
                 WHERE attrelid = to_regclass($1) AND attname = 'owner' AND NOT attisdropped",
                format!("ALTER TABLE {t} ADD COLUMN owner {POSTGRES_OWNER_TYPE}"),
            )],
            // (MariaDB has ADD COLUMN and CREATE INDEX IF NOT EXISTS; MySQL 8
            // has neither.) Two statements: a nullable column is added in
            // place at once, where one ALTER adding the index too would
            // copy the table.
            #[cfg(feature = "mysql-store")]
            Pool::MySql(_) => vec![
                (
                    "SELECT COUNT(*) FROM information_schema.COLUMNS \
                     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = 'owner'",
                    format!("ALTER TABLE {t} ADD COLUMN {}", mysql_owner_column()),
                ),
                (
                    "SELECT COUNT(*) FROM information_schema.STATISTICS \
                     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = 'owner' \
                     AND SEQ_IN_INDEX = 1",
                    format!(
                        "ALTER TABLE {t} ADD INDEX {} (owner)",
                        derived_name(t, "owner")
                    ),
                ),
            ],
            #[cfg(feature = "sqlite-store")]
            Pool::Sqlite(_) => vec![(
                "SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = 'owner'",
                format!("ALTER TABLE {t} ADD COLUMN owner TEXT"),
            )],
        }
    }

    #[cfg(feature = "mysql-store")]
    async fn check_mysql_charset(&self, pool: &sqlx::MySqlPool) -> Result<(), Error> {
        let query = sqlx::query_scalar(
            "SELECT CHARACTER_SET_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = 'data'",
        )
        .bind(&self.sql.table);
        let charset: Option<Option<String>> =
            bounded(self.timeout, query.fetch_optional(pool)).await?;
        match charset.flatten() {
            Some(charset) if charset != "utf8mb4" => Err(Error::store(format!(
                "the data column of {t} is {charset}, which cannot hold every character a \
                 session may; run: ALTER TABLE {t} MODIFY data LONGTEXT CHARACTER SET utf8mb4 NOT NULL",
                t = self.sql.table
            ))),
            _ => Ok(()),
        }
    }

    /// The statements [`migrate`](Self::migrate) runs, for your own
    /// migration tool: they create the table and its indexes, and the
    /// table of leases (`{table}_leases`, for
    /// [`serialize_requests`](crate::SessionLayer::serialize_requests)).
    ///
    /// A table made before owners needs the `owner` column first, which
    /// `migrate` adds when it is missing; in a tool of your own, run once
    /// before them (`sessions` being the table's name): on PostgreSQL
    /// `ALTER TABLE sessions ADD COLUMN IF NOT EXISTS owner TEXT COLLATE
    /// "C"`; on MySQL/MariaDB `ALTER TABLE sessions ADD COLUMN owner
    /// VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL`, then
    /// `ALTER TABLE sessions ADD INDEX sessions_owner (owner)`; on SQLite
    /// `ALTER TABLE sessions ADD COLUMN owner TEXT`.
    pub fn migration_sql(&self) -> Vec<String> {
        let t = &self.sql.table;
        let owner_index = derived_name(t, "owner");
        match &self.pool {
            // The owner index leaves out sessions without one, so that
            // their writes never touch it.
            #[cfg(feature = "postgres-store")]
            Pool::Postgres(_) => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (id VARCHAR(43) COLLATE \"C\" PRIMARY KEY, data TEXT NOT NULL, \
                     permanent BOOLEAN NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, \
                     owner {POSTGRES_OWNER_TYPE})"
                ),
                format!("CREATE INDEX IF NOT EXISTS {t}_expires_at ON {t} (expires_at)"),
                format!(
                    "CREATE INDEX IF NOT EXISTS {owner_index} ON {t} (owner) WHERE owner IS NOT NULL"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (id VARCHAR(43) COLLATE \"C\" PRIMARY KEY, \
                     holder TEXT NOT NULL, held_until BIGINT NOT NULL)",
                    derived_name(t, "leases")
                ),
            ],
            // ascii_bin: ids are case-sensitive; the default collation is not.
            // utf8mb4 for the data whatever the database's default: latin1
            // or the 3-byte utf8 would refuse or mangle emoji and CJK text.
            // (No _bin collation: sqlx would read the column as bytes.)
            #[cfg(feature = "mysql-store")]
            Pool::MySql(_) => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (id VARCHAR(43) CHARACTER SET ascii COLLATE ascii_bin PRIMARY KEY, \
                     data LONGTEXT CHARACTER SET utf8mb4 NOT NULL, permanent BOOLEAN NOT NULL, created_at BIGINT NOT NULL, \
                     expires_at BIGINT NOT NULL, {}, INDEX {t}_expires_at (expires_at), INDEX {owner_index} (owner))",
                    mysql_owner_column()
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (id VARCHAR(43) CHARACTER SET ascii COLLATE ascii_bin PRIMARY KEY, \
                     holder VARCHAR(64) CHARACTER SET ascii NOT NULL, held_until BIGINT NOT NULL)",
                    derived_name(t, "leases")
                ),
            ],
            #[cfg(feature = "sqlite-store")]
            Pool::Sqlite(_) => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (id TEXT PRIMARY KEY, data TEXT NOT NULL, \
                     permanent INTEGER NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, \
                     owner TEXT)"
                ),
                format!("CREATE INDEX IF NOT EXISTS {t}_expires_at ON {t} (expires_at)"),
                format!(
                    "CREATE INDEX IF NOT EXISTS {owner_index} ON {t} (owner) WHERE owner IS NOT NULL"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (id TEXT PRIMARY KEY, holder TEXT NOT NULL, \
                     held_until INTEGER NOT NULL)",
                    derived_name(t, "leases")
                ),
            ],
        }
    }

    /// The statements of a lease ([`SessionStore::lease`]) on the table
    /// `{table}_leases`: an insert that does nothing when the session has
    /// a lease row, an update that takes over a row past its time, and the
    /// release; times in milliseconds of the database's clock.
    fn lease_sql(&self) -> [String; 3] {
        let leases = derived_name(&self.sql.table, "leases");
        let (insert, now, [a, b, c]) = match dialect(&self.pool) {
            Dialect::Postgres => (
                "INSERT INTO {leases} (id, holder, held_until) VALUES ({a}, {b}, {now} + {c}) ON CONFLICT DO NOTHING",
                "(extract(epoch from clock_timestamp()) * 1000)::bigint",
                ["$1", "$2", "$3"],
            ),
            Dialect::MySql => (
                "INSERT IGNORE INTO {leases} (id, holder, held_until) VALUES ({a}, {b}, {now} + {c})",
                "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
                ["?", "?", "?"],
            ),
            Dialect::Sqlite => (
                "INSERT OR IGNORE INTO {leases} (id, holder, held_until) VALUES ({a}, {b}, {now} + {c})",
                "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
                ["?", "?", "?"],
            ),
        };
        let fill = |text: &str| {
            text.replace("{leases}", &leases)
                .replace("{now}", now)
                .replace("{a}", a)
                .replace("{b}", b)
                .replace("{c}", c)
        };
        [
            fill(insert),
            // Placeholders in the order they appear, for `?`.
            fill(
                "UPDATE {leases} SET holder = {a}, held_until = {now} + {b} WHERE id = {c} AND held_until <= {now}",
            ),
            fill("DELETE FROM {leases} WHERE id = {a} AND holder = {b}"),
        ]
    }
}

/// PostgreSQL's owner column: compared byte for byte (`C`), as the id is.
#[cfg(feature = "postgres-store")]
const POSTGRES_OWNER_TYPE: &str = "TEXT COLLATE \"C\"";

/// MySQL's owner column: `VARCHAR` short enough for an index in `utf8mb4`
/// (four bytes a character), any owner text, and matched exactly
/// (`utf8mb4_bin`: case and accents count; it is never read back, so
/// sqlx's reading of `_bin` columns as bytes does not matter).
#[cfg(feature = "mysql-store")]
fn mysql_owner_column() -> String {
    format!(
        "owner VARCHAR({}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL",
        SqlStore::MAX_OWNER_CHARS
    )
}

/// A name for something of `table`'s (`what`: `changes`, its PostgreSQL
/// change channel; `owner`, its owner index): `{table}_{what}`, or, where
/// that would pass PostgreSQL's 63-byte limit on names (which would cut it
/// short, maybe to a name already taken), `{what}_` and 16 hex digits of
/// the table name's SHA-256.
fn derived_name(table: &str, what: &str) -> String {
    let name = format!("{table}_{what}");
    if name.len() <= 63 {
        return name;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(table.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{what}_{hex}")
}

/// PostgreSQL's advisory lock for migrating `table`: 64 bits of a SHA-256
/// naming the crate and the table.
#[cfg(feature = "postgres-store")]
fn migration_lock_key(table: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("session-layer migration of {table}"));
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// PostgreSQL's change channel.
#[cfg(feature = "postgres-store")]
impl SqlStore {
    /// The message a write notifies.
    fn notice(&self, id: &SessionId) -> String {
        super::net::change_message(self.origin, id)
    }
}

/// Listens with `LISTEN` on a connection of its own from the pool.
#[cfg(all(feature = "postgres-store", feature = "caching-store"))]
#[async_trait]
impl super::Notifying for SqlStore {
    fn with_origin(&self, origin: u64) -> Result<Self, Error> {
        match &self.pool {
            Pool::Postgres(_) => Ok(Self {
                origin,
                ..self.clone()
            }),
            #[allow(unreachable_patterns)]
            _ => Err(Error::store(
                "only PostgreSQL reports changes; use a time-bounded cache on this database",
            )),
        }
    }

    async fn watch(&self, to: super::Invalidations) {
        #[allow(irrefutable_let_patterns)]
        let Pool::Postgres(pool) = &self.pool else {
            return;
        };
        // Connections of the listener's own, outside the pool requests
        // use: a busy pool must not look like a lost channel, nor the
        // listener take a connection a request is waiting for.
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy_with(pool.connect_options().as_ref().clone());
        let mut backoff = Duration::from_millis(50);
        while !to.is_closed() {
            match self.listen(&own).await {
                Ok(mut listener) => {
                    to.connected();
                    backoff = Duration::from_millis(50);
                    self.relay(&own, &mut listener, &to).await;
                    drop(listener);
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

/// A `LISTEN`ing connection's notifications, read by a task of their own
/// (so that waiting on them can be abandoned without cutting a message
/// in half).
#[cfg(all(feature = "postgres-store", feature = "caching-store"))]
struct Listening {
    notifications: tokio::sync::mpsc::Receiver<String>,
    task: tokio::task::AbortHandle,
}

#[cfg(all(feature = "postgres-store", feature = "caching-store"))]
impl Drop for Listening {
    /// The reading task holds the connection: it ends with the watcher,
    /// not at the next notification.
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(all(feature = "postgres-store", feature = "caching-store"))]
impl SqlStore {
    async fn listen(&self, pool: &sqlx::PgPool) -> Result<Listening, Error> {
        let mut listener =
            bounded(self.timeout, sqlx::postgres::PgListener::connect_with(pool)).await?;
        // A lost connection is reported at once (`None`), not after a
        // reconnection inside `try_recv`.
        listener.eager_reconnect(false);
        bounded(self.timeout, listener.listen(&self.sql.channel)).await?;
        let (sender, notifications) = tokio::sync::mpsc::channel(1024);
        let task = tokio::spawn(async move {
            // Any loss (`None`, an error) ends the task, and with it the
            // channel: the watcher then reports the loss.
            while let Ok(Some(notification)) = listener.try_recv().await {
                if sender
                    .send(notification.payload().to_owned())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Listening {
            notifications,
            task: task.abort_handle(),
        })
    }

    /// Reports what `listener` hears until the connection is lost. Every
    /// second without a message, a probe notification goes round through
    /// the server: one that does not come back within the timeout counts
    /// as a loss (a peer gone without a word).
    async fn relay(
        &self,
        pool: &sqlx::PgPool,
        listener: &mut Listening,
        to: &super::Invalidations,
    ) {
        const PROBE_EVERY: Duration = Duration::from_secs(1);
        let mut awaiting: Option<(String, tokio::time::Instant)> = None;
        loop {
            let wake = match &awaiting {
                Some((_, deadline)) => *deadline,
                None => tokio::time::Instant::now() + PROBE_EVERY,
            };
            tokio::select! {
                message = listener.notifications.recv() => {
                    let Some(message) = message else { return };
                    if awaiting.as_ref().is_some_and(|(probe, _)| *probe == message) {
                        awaiting = None;
                    } else {
                        super::net::report(&message, self.origin, to);
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    if to.is_closed() || awaiting.is_some() {
                        return;
                    }
                    let probe = format!("probe:{}", SessionId::generate().as_str());
                    let notify = sqlx::query("SELECT pg_notify($1, $2)::text")
                        .bind(&self.sql.channel)
                        .bind(&probe);
                    if bounded(self.timeout, notify.execute(pool)).await.is_err() {
                        return;
                    }
                    awaiting = Some((probe, tokio::time::Instant::now() + self.timeout));
                }
            }
        }
    }
}

/// The ways a save is carried out.
impl SqlStore {
    /// Read, apply and write inside a transaction that holds the row (or
    /// the database): SQLite's save, and the others' when their one
    /// statement cannot take the row (an older row on PostgreSQL, a
    /// document MariaDB's JSON functions refuse).
    /// `owner`: the owner column's change ([`Sql::owner_change`]);
    /// `notice`: the channel and message to notify in the transaction when
    /// it applied (PostgreSQL).
    async fn apply_in_transaction<DB>(
        &self,
        pool: &sqlx::Pool<DB>,
        id: &SessionId,
        changes: &Changes,
        owner: Option<Option<&str>>,
        notice: Option<(String, String)>,
    ) -> Result<bool, Error>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
        for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'r> (String, bool): sqlx::FromRow<'r, DB::Row>,
    {
        bounded(self.timeout, async {
            let mut tx = pool.begin_with(self.sql.begin).await?;
            let applied = read_modify_write!(tx, self.sql, id, changes, owner);
            if let (Ok(true), Some((channel, message))) = (&applied, notice) {
                sqlx::query("SELECT pg_notify($1, $2)::text")
                    .bind(channel)
                    .bind(message)
                    .execute(&mut *tx)
                    .await?;
            }
            // A conflict commits nothing: the transaction rolls back when
            // dropped.
            if applied.is_ok() {
                tx.commit().await?;
            }
            Ok::<_, sqlx::Error>(applied)
        })
        .await?
    }

    #[cfg(feature = "postgres-store")]
    async fn apply_postgres(
        &self,
        pool: &sqlx::PgPool,
        id: &SessionId,
        changes: &Changes,
        owner: Option<Option<&str>>,
    ) -> Result<bool, Error> {
        let escape = |key: &String| {
            if self.sql.nul_free && key.contains(['\0', '\u{10FFFF}']) {
                nul_free::escape_str(key)
            } else {
                key.clone()
            }
        };
        // Every key the old document gives up: the removed ones, the set
        // ones (their new members follow) and the marker (likewise).
        let replaced = changes.set.iter().map(|(key, _)| key);
        let mut dropped: Vec<String> = changes.removed.iter().chain(replaced).map(escape).collect();
        dropped.push(nul_free::MARKER.to_owned());
        let set: SessionData = changes.set.iter().cloned().collect();
        // The set members carry the marker, so a cleared document keeps it.
        let statement = sqlx::query(&self.sql.apply_json)
            .bind(changes.cleared)
            .bind(dropped)
            .bind(self.sql.write_data(&set))
            .bind(changes.permanent)
            .bind(to_i64(changes.expires_at))
            .bind(id.as_str())
            .bind(to_i64(changes.now))
            .bind(nul_free::MARKER)
            .bind(&self.sql.channel)
            .bind(self.notice(id))
            .bind(owner.is_some())
            .bind(owner.flatten());
        let notice = Some((self.sql.channel.clone(), self.notice(id)));
        match tokio::time::timeout(self.timeout, statement.fetch_optional(pool)).await {
            Ok(Ok(Some(_))) => Ok(true),
            // No live row, or one an earlier version wrote (no marker, maybe
            // a raw U+0000 `json` refuses): the transaction tells which,
            // and rewrites such a row in the current form.
            Ok(Ok(None) | Err(sqlx::Error::Database(_))) => {
                (self.apply_in_transaction(pool, id, changes, owner, notice)).await
            }
            Ok(Err(error)) => Err(Error::store(error)),
            Err(elapsed) => Err(Error::store(elapsed)),
        }
    }

    #[cfg(feature = "mysql-store")]
    async fn apply_mysql(
        &self,
        pool: &sqlx::MySqlPool,
        id: &SessionId,
        changes: &Changes,
        owner: Option<Option<&str>>,
    ) -> Result<bool, Error> {
        let statement = mysql_apply_sql(&self.sql.table, changes, owner.is_some());
        let mut query = sqlx::query(&statement);
        for key in &changes.removed {
            query = query.bind(json_path(key));
        }
        for (key, value) in &changes.set {
            query = query.bind(json_path(key)).bind(value.to_string());
        }
        query = query
            .bind(changes.permanent)
            .bind(to_i64(changes.expires_at));
        if let Some(owner) = owner {
            query = query.bind(owner);
        }
        let query = query.bind(id.as_str()).bind(to_i64(changes.now));
        match tokio::time::timeout(self.timeout, query.execute(pool)).await {
            Ok(Ok(done)) => Ok(done.rows_affected() == 1),
            // The server refused the JSON functions on this document (say
            // MariaDB's limit of 32 nested levels): a transaction does the
            // merge here instead, so valid data never fails to save.
            Ok(Err(sqlx::Error::Database(_))) => {
                (self.apply_in_transaction(pool, id, changes, owner, None)).await
            }
            Ok(Err(error)) => Err(Error::store(error)),
            Err(elapsed) => Err(Error::store(elapsed)),
        }
    }
}

/// MySQL/MariaDB's save as one statement: `JSON_REMOVE` and `JSON_SET` on
/// the row's document (or `{}` when the request cleared it), with a path
/// and, for a set, a JSON value bound per key; and the owner column, bound
/// too, when `owner` says the changes set or remove the owner.
#[cfg(feature = "mysql-store")]
fn mysql_apply_sql(table: &str, changes: &Changes, owner: bool) -> String {
    let mut document = if changes.cleared { "'{}'" } else { "data" }.to_owned();
    if !changes.removed.is_empty() {
        document = format!(
            "JSON_REMOVE({document}{})",
            ", ?".repeat(changes.removed.len())
        );
    }
    if !changes.set.is_empty() {
        let pairs = ", ?, JSON_EXTRACT(?, '$')".repeat(changes.set.len());
        document = format!("JSON_SET({document}{pairs})");
    }
    let owner = if owner { ", owner = ?" } else { "" };
    format!(
        "UPDATE {table} SET data = {document}, permanent = COALESCE(?, permanent), \
         expires_at = ?{owner} WHERE id = ? AND expires_at > ?"
    )
}

/// The JSON path of the top-level member `key`: `$."key"`, the key quoted
/// and escaped as a JSON string, so any key is one member.
#[cfg(feature = "mysql-store")]
fn json_path(key: &str) -> String {
    format!("$.{}", serde_json::Value::from(key))
}

fn dialect(pool: &Pool) -> Dialect {
    match pool {
        #[cfg(feature = "postgres-store")]
        Pool::Postgres(_) => Dialect::Postgres,
        #[cfg(feature = "mysql-store")]
        Pool::MySql(_) => Dialect::MySql,
        #[cfg(feature = "sqlite-store")]
        Pool::Sqlite(_) => Dialect::Sqlite,
    }
}

#[async_trait]
impl SessionStore for SqlStore {
    async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let row: Option<Row> = by_backend!(self, pool => {
            let query = sqlx::query_as(&self.sql.load).bind(id.as_str()).bind(to_i64(now));
            bounded(self.timeout, query.fetch_optional(pool)).await?
        });
        self.sql.record_from_row(row)
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error> {
        let data = self.sql.write_data(&record.data);
        let owner = (record.owner())
            .map(|owner| self.sql.owner_written(owner))
            .transpose()?;
        let owner = owner.as_deref();
        match &self.pool {
            // One statement: inserted, or an expired row replaced.
            #[cfg(feature = "postgres-store")]
            Pool::Postgres(pool) => {
                let upsert = sqlx::query(&self.sql.create_upsert)
                    .bind(id.as_str())
                    .bind(&data)
                    .bind(record.permanent)
                    .bind(to_i64(record.created_at))
                    .bind(to_i64(record.expires_at))
                    .bind(owner)
                    .bind(&self.sql.channel)
                    .bind(self.notice(id));
                Ok(bounded(self.timeout, upsert.fetch_optional(pool))
                    .await?
                    .is_some())
            }
            #[cfg(feature = "mysql-store")]
            Pool::MySql(pool) => insert_unless_live!(self, pool, id, record, data, owner),
            #[cfg(feature = "sqlite-store")]
            Pool::Sqlite(pool) => insert_unless_live!(self, pool, id, record, data, owner),
        }
    }

    /// One statement on PostgreSQL and MySQL/MariaDB (one round trip, per
    /// key atomic under the row lock the statement takes); a transaction on
    /// SQLite, in process. Changes that read the record (expectations,
    /// merges) take a transaction everywhere: the row locked and read
    /// (`SELECT ... FOR UPDATE`), checked and changed here, written back. The owner column changes in the same write,
    /// when the changes set or remove the owner.
    async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
        let owner = self.sql.owner_change(changes)?;
        let owner = owner.as_ref().map(Option::as_deref);
        match &self.pool {
            // Expectations and merges are judged on the row as read under
            // its lock, in the same transaction as the write.
            #[cfg(feature = "postgres-store")]
            Pool::Postgres(pool) if changes.reads_the_record() => {
                let notice = Some((self.sql.channel.clone(), self.notice(id)));
                (self.apply_in_transaction(pool, id, changes, owner, notice)).await
            }
            #[cfg(feature = "mysql-store")]
            Pool::MySql(pool) if changes.reads_the_record() => {
                (self.apply_in_transaction(pool, id, changes, owner, None)).await
            }
            #[cfg(feature = "postgres-store")]
            Pool::Postgres(pool) => self.apply_postgres(pool, id, changes, owner).await,
            #[cfg(feature = "mysql-store")]
            Pool::MySql(pool) => self.apply_mysql(pool, id, changes, owner).await,
            #[cfg(feature = "sqlite-store")]
            Pool::Sqlite(pool) => (self.apply_in_transaction(pool, id, changes, owner, None)).await,
        }
    }

    async fn delete(&self, id: &SessionId) -> Result<(), Error> {
        match &self.pool {
            #[cfg(feature = "postgres-store")]
            Pool::Postgres(pool) => {
                let delete = sqlx::query(&self.sql.delete_notify)
                    .bind(id.as_str())
                    .bind(&self.sql.channel)
                    .bind(self.notice(id));
                bounded(self.timeout, delete.execute(pool)).await?;
            }
            #[cfg(feature = "mysql-store")]
            Pool::MySql(pool) => {
                let delete = sqlx::query(&self.sql.delete).bind(id.as_str());
                bounded(self.timeout, delete.execute(pool)).await?;
            }
            #[cfg(feature = "sqlite-store")]
            Pool::Sqlite(pool) => {
                let delete = sqlx::query(&self.sql.delete).bind(id.as_str());
                bounded(self.timeout, delete.execute(pool)).await?;
            }
        }
        Ok(())
    }

    /// One transaction: the row locked and read, then deleted, so an
    /// `apply` waiting on the lock finds no row afterwards.
    async fn take(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let row: Option<Row> = match &self.pool {
            // One statement: the row lock it takes makes it atomic with
            // `apply`, whose UPDATE then finds no row. An expired row goes
            // too, and is not returned.
            #[cfg(feature = "postgres-store")]
            Pool::Postgres(pool) => {
                let delete = sqlx::query_as(&self.sql.take_returning)
                    .bind(id.as_str())
                    .bind(&self.sql.channel)
                    .bind(self.notice(id));
                let row: Option<Row> = bounded(self.timeout, delete.fetch_optional(pool)).await?;
                row.filter(|&(_, _, _, expires_at)| to_u64(expires_at) > now)
            }
            #[cfg(feature = "mysql-store")]
            Pool::MySql(pool) => take_in_transaction!(self, pool, id, now),
            #[cfg(feature = "sqlite-store")]
            Pool::Sqlite(pool) => take_in_transaction!(self, pool, id, now),
        };
        self.sql.record_from_row(row)
    }

    /// A row of `{table}_leases` (created by `migrate`): an insert when the
    /// session has none (one round trip), else an update that takes over
    /// a lease past its time (two). The database's clock judges the hold.
    async fn lease(
        &self,
        id: &SessionId,
        holder: &str,
        hold: std::time::Duration,
    ) -> Result<bool, Error> {
        let [insert, take_over, _] = self.lease_sql();
        let hold = i64::try_from(hold.as_millis()).unwrap_or(i64::MAX);
        let taken = by_backend!(self, pool => {
            let query = sqlx::query(&insert).bind(id.as_str()).bind(holder).bind(hold);
            let inserted = bounded(self.timeout, query.execute(pool)).await?;
            if inserted.rows_affected() == 1 {
                true
            } else {
                let query = sqlx::query(&take_over).bind(holder).bind(hold).bind(id.as_str());
                bounded(self.timeout, query.execute(pool)).await?.rows_affected() == 1
            }
        });
        Ok(taken)
    }

    /// One `DELETE` of the lease row, if `holder` still holds it.
    async fn release(&self, id: &SessionId, holder: &str) -> Result<(), Error> {
        let [_, _, release] = self.lease_sql();
        by_backend!(self, pool => {
            let query = sqlx::query(&release).bind(id.as_str()).bind(holder);
            bounded(self.timeout, query.execute(pool)).await?;
        });
        Ok(())
    }

    async fn delete_expired(&self, now: u64) -> Result<u64, Error> {
        let done = by_backend!(self, pool => {
            let query = sqlx::query(&self.sql.delete_expired).bind(to_i64(now));
            bounded(self.timeout, query.execute(pool)).await?.rows_affected()
        });
        Ok(done)
    }

    /// One `SELECT` by the owner column's index. The records have the last
    /// word: MySQL compares strings padded with spaces (`'a' = 'a '`), so
    /// a row whose record names another owner is left out.
    async fn owned(&self, owner: &str, now: u64) -> Result<Vec<(SessionId, Record)>, Error> {
        let text = self.sql.owner_text(owner);
        let rows: Vec<(String, String, bool, i64, i64)> = by_backend!(self, pool => {
            let query = sqlx::query_as(&self.sql.owned).bind(&*text).bind(to_i64(now));
            bounded(self.timeout, query.fetch_all(pool)).await?
        });
        let mut owned = Vec::with_capacity(rows.len());
        for (id, data, permanent, created_at, expires_at) in rows {
            let id = SessionId::parse(&id)
                .ok_or_else(|| Error::store("a row's id is not a session id"))?;
            let record = self.sql.record((data, permanent, created_at, expires_at))?;
            if record.owner() == Some(owner) {
                owned.push((id, record));
            }
        }
        Ok(owned)
    }
}

/// MySQL's and SQLite's create: an expired row with the id no longer counts
/// as taken, then an insert that a live row refuses.
#[cfg(any(feature = "mysql-store", feature = "sqlite-store"))]
macro_rules! insert_unless_live {
    ($store:ident, $pool:ident, $id:expr, $record:expr, $data:expr, $owner:expr) => {{
        let clear = sqlx::query(&$store.sql.clear_expired_id)
            .bind($id.as_str())
            .bind(to_i64($record.created_at));
        bounded($store.timeout, clear.execute($pool)).await?;
        let insert = sqlx::query(&$store.sql.insert)
            .bind($id.as_str())
            .bind(&$data)
            .bind($record.permanent)
            .bind(to_i64($record.created_at))
            .bind(to_i64($record.expires_at))
            .bind($owner);
        match tokio::time::timeout($store.timeout, insert.execute($pool)).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) if is_unique_violation(&e) => Ok(false),
            Ok(Err(e)) => Err(Error::store(e)),
            Err(elapsed) => Err(Error::store(elapsed)),
        }
    }};
}
#[cfg(any(feature = "mysql-store", feature = "sqlite-store"))]
use insert_unless_live;

/// MySQL's and SQLite's take: the row read under its lock (or the
/// database's), then deleted, in one transaction.
#[cfg(any(feature = "mysql-store", feature = "sqlite-store"))]
macro_rules! take_in_transaction {
    ($store:ident, $pool:ident, $id:expr, $now:expr) => {
        bounded($store.timeout, async {
            let mut tx = $pool.begin_with($store.sql.begin).await?;
            let row = sqlx::query_as(&$store.sql.take)
                .bind($id.as_str())
                .bind(to_i64($now))
                .fetch_optional(&mut *tx)
                .await?;
            sqlx::query(&$store.sql.delete)
                .bind($id.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(row)
        })
        .await?
    };
}
#[cfg(any(feature = "mysql-store", feature = "sqlite-store"))]
use take_in_transaction;

/// Inside a transaction that holds the row (`SELECT ... FOR UPDATE`) or the
/// database (SQLite's `BEGIN IMMEDIATE`): read, apply, write (the owner
/// column too when `$owner`, the column's change, says so). `Ok(false)`
/// when there is no live row, `Err` (a conflict, nothing written) when the
/// changes' expectations or merges do not hold on the row as read.
macro_rules! read_modify_write {
    ($tx:ident, $sql:expr, $id:expr, $changes:expr, $owner:expr) => {{
        let row: Option<(String, bool)> = sqlx::query_as(&$sql.lock)
            .bind($id.as_str())
            .bind(to_i64($changes.now))
            .fetch_optional(&mut *$tx)
            .await?;
        match row {
            None => Ok(false),
            Some((data, permanent)) => 'row: {
                let data = $sql
                    .read_data(&data)
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                let mut record = Record::new(data, permanent, 0, 0);
                if let Err(conflict) = $changes.apply_to(&mut record) {
                    break 'row Err(conflict);
                }
                let owner: Option<Option<&str>> = $owner;
                let update = if owner.is_some() {
                    &$sql.update_owner
                } else {
                    &$sql.update
                };
                let mut update = sqlx::query(update)
                    .bind($sql.write_data(&record.data))
                    .bind(record.permanent)
                    .bind(to_i64(record.expires_at));
                if let Some(owner) = owner {
                    update = update.bind(owner.map(str::to_owned));
                }
                update.bind($id.as_str()).execute(&mut *$tx).await?;
                Ok(true)
            }
        }
    }};
}
use read_modify_write;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::ErrorKind;
    use crate::store::OWNER_KEY;

    fn setting_owner(owner: &str) -> Changes {
        Changes {
            set: vec![(OWNER_KEY.into(), json!(owner))],
            ..Changes::expiry(1, 2)
        }
    }

    #[test]
    fn owners_over_the_limit_are_refused_not_cut_short() {
        let sql = Sql::new("sessions", Dialect::MySql);
        // Characters, not bytes: 255 two-byte characters fit.
        let longest = "ü".repeat(SqlStore::MAX_OWNER_CHARS);
        assert_eq!(sql.owner_written(&longest).unwrap(), longest);
        let too_long = "a".repeat(SqlStore::MAX_OWNER_CHARS + 1);
        let refused = sql.owner_change(&setting_owner(&too_long)).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Store);
        let cause = std::error::Error::source(&refused).unwrap().to_string();
        assert!(cause.contains("up to 255 characters"), "{cause}");
        // Removing an owner, however long the old one was, is no write of one.
        let removed = Changes {
            removed: vec![OWNER_KEY.into()],
            ..Changes::expiry(1, 2)
        };
        assert_eq!(sql.owner_change(&removed).unwrap(), Some(None));
    }

    #[test]
    fn postgres_owner_text_holds_no_nul_and_keeps_owners_apart() {
        let postgres = Sql::new("sessions", Dialect::Postgres);
        let nul = postgres.owner_text("a\0b");
        assert!(!nul.contains('\0'), "PostgreSQL's text refuses U+0000");
        assert_ne!(
            nul,
            postgres.owner_text("a\u{10FFFF}0b"),
            "nor do two owners meet"
        );
        assert_eq!(postgres.owner_text("ann"), "ann");
        for dialect in [Dialect::MySql, Dialect::Sqlite] {
            assert_eq!(Sql::new("sessions", dialect).owner_text("a\0b"), "a\0b");
        }
    }

    /// A save that leaves the owner names no owner column, so that it costs
    /// what it did before owners.
    #[cfg(feature = "mysql-store")]
    #[test]
    fn mysql_saves_name_the_owner_column_only_when_the_owner_changes() {
        let other = Changes {
            set: vec![("cart".into(), json!(3))],
            ..Changes::expiry(1, 2)
        };
        assert_eq!(other.owner_change(), None);
        assert!(!mysql_apply_sql("sessions", &other, false).contains("owner"));
        let moved = setting_owner("ann");
        let statement = mysql_apply_sql("sessions", &moved, true);
        assert!(statement.contains(", owner = ? WHERE"), "{statement}");
    }

    #[test]
    fn derived_names_stay_within_63_bytes_and_apart() {
        assert_eq!(derived_name("sessions", "owner"), "sessions_owner");
        let long = "t".repeat(63);
        let names = [
            derived_name(&long, "owner"),
            derived_name(&long, "changes"),
            derived_name(&"t".repeat(62), "owner"),
        ];
        for name in &names {
            assert!(name.len() <= 63, "{name}");
            assert_ne!(*name, long, "an index never takes the table's name");
        }
        assert_ne!(names[0], names[1]);
        assert_ne!(names[0], names[2]);
    }
}
