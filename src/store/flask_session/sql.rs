//! Flask-Session's records in SQL: the table its SQLAlchemy backend
//! creates, `id` (an integer key), `session_id` (prefix and id, unique),
//! `data` (the serialized dict) and `expiry` (a naive UTC datetime).
//! Every write is one statement; `apply` and `take` match the value they
//! read, so a write in between makes them read again.

use std::time::Duration;

use super::Raw;
use crate::error::Error;
use crate::store::SqlStore;
use crate::store::net::bounded;
use crate::store::sql::{Pool, by_backend};

/// Flask-Session's table on one database, with its statements.
#[derive(Clone)]
pub(super) struct Table {
    pool: Pool,
    timeout: Duration,
    sql: Statements,
    /// The table's name, for the error of a table in another layout.
    name: String,
}

#[derive(Clone)]
struct Statements {
    create: String,
    probe: String,
    get: String,
    swap: String,
    insert: String,
    touch: String,
    take: String,
    delete: String,
    delete_expired: String,
}

impl Table {
    pub(super) fn new(store: SqlStore) -> Self {
        let sql = Statements::new(&store.sql.table, &store.pool);
        Self {
            pool: store.pool,
            timeout: store.timeout,
            sql,
            name: store.sql.table.to_string(),
        }
    }

    /// Creates the table if missing, then checks that it has Flask-Session's
    /// columns: a table of the same name in another layout (this crate's
    /// own `SqlStore` also defaults to `sessions`) fails here, at start-up,
    /// rather than on every request.
    pub(super) async fn migrate(&self) -> Result<(), Error> {
        by_backend!(self, pool => bounded(self.timeout, sqlx::query(&self.sql.create).execute(pool))
            .await
            .map(drop))?;
        let probe = by_backend!(self, pool => bounded(
            self.timeout,
            sqlx::query(&self.sql.probe).execute(pool),
        )
        .await
        .map(drop));
        // The database's own words ("column session_id does not exist")
        // do not say what to do about it.
        probe.map_err(|error| match std::error::Error::source(&error) {
            Some(cause) if cause.is::<sqlx::Error>() => Error::store(WrongTable {
                table: self.name.clone(),
                cause: cause.to_string(),
            }),
            _ => error,
        })
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<Raw>, Error> {
        let row: Option<(Option<Vec<u8>>, Option<i64>)> = by_backend!(self, pool => bounded(
            self.timeout,
            sqlx::query_as(&self.sql.get).bind(key).fetch_optional(pool),
        )
        .await?);
        let Some((Some(bytes), expiry)) = row else {
            return Ok(None);
        };
        Ok(Some(Raw {
            bytes,
            // Flask-Session treats a row without expiry as expired.
            expires_at: Some(expiry.and_then(|at| u64::try_from(at).ok()).unwrap_or(0)),
            cas: 0,
            #[cfg(feature = "mongodb-store")]
            expiration: None,
            #[cfg(feature = "mongodb-store")]
            version: None,
        }))
    }

    pub(super) async fn swap(
        &self,
        key: &str,
        old: &Raw,
        bytes: Vec<u8>,
        expires_at: u64,
    ) -> Result<bool, Error> {
        let expires_at = seconds(expires_at);
        let rows = by_backend!(self, pool => bounded(
            self.timeout,
            sqlx::query(&self.sql.swap)
                .bind(bytes)
                .bind(expires_at)
                .bind(key)
                .bind(old.bytes.as_slice())
                .execute(pool),
        )
        .await?
        .rows_affected());
        Ok(rows == 1)
    }

    pub(super) async fn insert(
        &self,
        key: &str,
        bytes: Vec<u8>,
        expires_at: u64,
    ) -> Result<bool, Error> {
        let expires_at = seconds(expires_at);
        let result = by_backend!(self, pool => tokio::time::timeout(
            self.timeout,
            sqlx::query(&self.sql.insert)
                .bind(key)
                .bind(bytes)
                .bind(expires_at)
                .execute(pool),
        )
        .await
        .map(|done| done.map(drop)));
        match result {
            Ok(Ok(())) => Ok(true),
            // The id is taken: the layer draws another.
            Ok(Err(error))
                if error
                    .as_database_error()
                    .is_some_and(|e| e.is_unique_violation()) =>
            {
                Ok(false)
            }
            Ok(Err(error)) => Err(Error::store(error)),
            Err(elapsed) => Err(Error::store(elapsed)),
        }
    }

    pub(super) async fn touch(&self, key: &str, expires_at: u64, now: u64) -> Result<bool, Error> {
        let rows = by_backend!(self, pool => bounded(
            self.timeout,
            sqlx::query(&self.sql.touch)
                .bind(seconds(expires_at))
                .bind(key)
                .bind(seconds(now))
                .execute(pool),
        )
        .await?
        .rows_affected());
        Ok(rows == 1)
    }

    pub(super) async fn take(&self, key: &str, old: &Raw) -> Result<bool, Error> {
        let rows = by_backend!(self, pool => bounded(
            self.timeout,
            sqlx::query(&self.sql.take)
                .bind(key)
                .bind(old.bytes.as_slice())
                .execute(pool),
        )
        .await?
        .rows_affected());
        Ok(rows == 1)
    }

    pub(super) async fn delete(&self, key: &str) -> Result<(), Error> {
        by_backend!(self, pool => bounded(
            self.timeout,
            sqlx::query(&self.sql.delete).bind(key).execute(pool),
        )
        .await
        .map(drop))
    }

    pub(super) async fn delete_expired(&self, now: u64) -> Result<u64, Error> {
        by_backend!(self, pool => bounded(
            self.timeout,
            sqlx::query(&self.sql.delete_expired).bind(seconds(now)).execute(pool),
        )
        .await
        .map(|done| done.rows_affected()))
    }
}

/// A table of Flask-Session's name whose columns are not Flask-Session's.
#[derive(Debug)]
struct WrongTable {
    table: String,
    cause: String,
}

impl std::fmt::Display for WrongTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the table {:?} exists but lacks Flask-Session's columns (id, session_id, data, \
             expiry): {}; is it another store's (SqlStore's default table is `sessions` too)? \
             Give one of them another name (SqlStore::table, SESSION_SQLALCHEMY_TABLE)",
            self.table, self.cause
        )
    }
}

impl std::error::Error for WrongTable {}

/// Seconds since the epoch as the databases bind them.
fn seconds(at: u64) -> i64 {
    i64::try_from(at).unwrap_or(i64::MAX)
}

impl Statements {
    fn new(table: &str, pool: &Pool) -> Self {
        let dialect = Dialect::of(pool);
        let p = |n: usize| dialect.placeholder(n);
        let expiry = dialect.epoch_seconds("expiry");
        Self {
            create: dialect.create(table),
            probe: format!("SELECT id, session_id, data, expiry FROM {table} WHERE 1 = 0"),
            get: format!(
                "SELECT data, {expiry} FROM {table} WHERE session_id = {}",
                p(1)
            ),
            swap: format!(
                "UPDATE {table} SET data = {}, expiry = {} WHERE session_id = {} AND data = {}",
                p(1),
                dialect.datetime(&p(2)),
                p(3),
                p(4)
            ),
            insert: format!(
                "INSERT INTO {table} (session_id, data, expiry) VALUES ({}, {}, {})",
                p(1),
                p(2),
                dialect.datetime(&p(3))
            ),
            touch: format!(
                "UPDATE {table} SET expiry = {} WHERE session_id = {} AND expiry > {}",
                dialect.datetime(&p(1)),
                p(2),
                dialect.datetime(&p(3))
            ),
            take: format!(
                "DELETE FROM {table} WHERE session_id = {} AND data = {}",
                p(1),
                p(2)
            ),
            delete: format!("DELETE FROM {table} WHERE session_id = {}", p(1)),
            delete_expired: format!(
                "DELETE FROM {table} WHERE expiry <= {}",
                dialect.datetime(&p(1))
            ),
        }
    }
}

#[derive(Clone, Copy)]
enum Dialect {
    #[cfg(feature = "postgres-store")]
    Postgres,
    #[cfg(feature = "mysql-store")]
    MySql,
    #[cfg(feature = "sqlite-store")]
    Sqlite,
}

impl Dialect {
    fn of(pool: &Pool) -> Self {
        match pool {
            #[cfg(feature = "postgres-store")]
            Pool::Postgres(_) => Self::Postgres,
            #[cfg(feature = "mysql-store")]
            Pool::MySql(_) => Self::MySql,
            #[cfg(feature = "sqlite-store")]
            Pool::Sqlite(_) => Self::Sqlite,
        }
    }

    fn placeholder(self, n: usize) -> String {
        match self {
            #[cfg(feature = "postgres-store")]
            Self::Postgres => format!("${n}"),
            #[allow(unreachable_patterns)]
            _ => {
                let _ = n;
                "?".to_owned()
            }
        }
    }

    /// The naive UTC datetime `seconds` after the epoch, written as
    /// SQLAlchemy writes `DateTime` on each database (on SQLite, text with
    /// microseconds), whatever the connection's time zone.
    fn datetime(self, seconds: &str) -> String {
        match self {
            #[cfg(feature = "postgres-store")]
            Self::Postgres => {
                format!("(to_timestamp(CAST({seconds} AS DOUBLE PRECISION)) AT TIME ZONE 'UTC')")
            }
            #[cfg(feature = "mysql-store")]
            Self::MySql => format!("DATE_ADD('1970-01-01 00:00:00', INTERVAL {seconds} SECOND)"),
            #[cfg(feature = "sqlite-store")]
            Self::Sqlite => {
                format!("(strftime('%Y-%m-%d %H:%M:%S', {seconds}, 'unixepoch') || '.000000')")
            }
        }
    }

    /// The seconds since the epoch of the naive UTC datetime `column`.
    fn epoch_seconds(self, column: &str) -> String {
        match self {
            #[cfg(feature = "postgres-store")]
            Self::Postgres => format!("CAST(EXTRACT(EPOCH FROM {column}) AS BIGINT)"),
            #[cfg(feature = "mysql-store")]
            Self::MySql => format!("TIMESTAMPDIFF(SECOND, '1970-01-01 00:00:00', {column})"),
            #[cfg(feature = "sqlite-store")]
            Self::Sqlite => format!("CAST(strftime('%s', {column}) AS INTEGER)"),
        }
    }

    /// The table as Flask-Session's SQLAlchemy model creates it.
    fn create(self, table: &str) -> String {
        let columns = match self {
            #[cfg(feature = "postgres-store")]
            Self::Postgres => {
                "id SERIAL NOT NULL, session_id VARCHAR(255), data BYTEA, \
                               expiry TIMESTAMP WITHOUT TIME ZONE"
            }
            #[cfg(feature = "mysql-store")]
            // SQLAlchemy makes `data` a BLOB, at most 64 KiB; MEDIUMBLOB
            // (16 MiB) holds what the other databases hold, and Flask reads
            // it alike.
            Self::MySql => {
                "id INTEGER NOT NULL AUTO_INCREMENT, session_id VARCHAR(255), data MEDIUMBLOB, \
                 expiry DATETIME"
            }
            #[cfg(feature = "sqlite-store")]
            Self::Sqlite => {
                "id INTEGER NOT NULL, session_id VARCHAR(255), data BLOB, expiry DATETIME"
            }
        };
        format!(
            "CREATE TABLE IF NOT EXISTS {table} ({columns}, PRIMARY KEY (id), UNIQUE (session_id))"
        )
    }
}
